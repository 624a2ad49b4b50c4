// Electron's main process: one window showing the renderer from porthole://app/,
// isolated (contextIsolation, sandbox, no nodeIntegration, strict CSP, no navigation or
// new windows), the contract over IPC, native file dialogs, and a prompt when quitting
// with VMs running.
import fs from 'node:fs';
import path from 'node:path';
import { BrowserWindow, Menu, app, dialog, protocol, session, shell } from 'electron';
import { ApiError, type FileChoice } from '../api/contract';
import { RENDERER_DIR, dataDir } from '../manager/app-paths';
import { libraryDir } from '../manager/library';
import { VmManager } from '../manager/manager';
import { staticFilePath } from '../web/server';
import { IpcAdapter } from './ipc';
import {
  APP_CSP, APP_INDEX_URL, APP_SCHEME, appWebPreferences, navigationDecision, openDialogOptions, permissionDecision, quitPrompt,
  windowOpenDecision,
} from './policy';
import { electronVmProcessLauncher } from './vm-launcher';
import { UsbJournal } from '../host/usb-journal';

const PRELOAD = path.join(__dirname, '..', '..', 'preload', 'preload.js');

const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8',
  '.json': 'application/json', '.map': 'application/json', '.svg': 'image/svg+xml', '.png': 'image/png',
  '.woff2': 'font/woff2', '.woff': 'font/woff', '.ttf': 'font/ttf', '.ico': 'image/x-icon',
};

function log(line: string): void {
  console.error(`porthole: ${line}`);
}

// Must happen before "ready": porthole://app behaves like an https origin.
protocol.registerSchemesAsPrivileged([
  { scheme: APP_SCHEME, privileges: { standard: true, secure: true, supportFetchAPI: true, corsEnabled: true } },
]);

if (!app.requestSingleInstanceLock()) {
  // A second launch shows the first one's window instead.
  app.quit();
} else {
  let mainWindow: BrowserWindow | null = null;
  let quitConfirmed = false;
  let quitInProgress = false;

  const manager = new VmManager({
    libraryDir: libraryDir(),
    launcher: electronVmProcessLauncher(),
    mode: 'electron',
    usbJournal: new UsbJournal(dataDir()),
    appVersion: app.getVersion(),
    chooseFile: async (choice: FileChoice) => {
      if (!mainWindow) throw new ApiError('invalid-state', 'There is no window to show the file dialog on.');
      const result = await dialog.showOpenDialog(mainWindow, openDialogOptions(choice));
      return result.canceled || result.filePaths.length === 0 ? null : result.filePaths[0];
    },
    log,
  });

  function serveAppFile(request: Request): Response {
    const url = new URL(request.url);
    const file = url.host === 'app' ? staticFilePath(RENDERER_DIR, url.pathname === '/' ? '/index.html' : url.pathname) : null;
    const headers = { 'content-security-policy': APP_CSP, 'x-content-type-options': 'nosniff' };
    if (file === null || !fs.statSync(file, { throwIfNoEntry: false })?.isFile()) {
      if (url.pathname === '/index.html') {
        return new Response('<!doctype html><meta charset="utf-8"><p>The Porthole UI is not built: run npm run build.</p>', {
          status: 200, headers: { ...headers, 'content-type': 'text/html; charset=utf-8' },
        });
      }
      return new Response('Not found', { status: 404, headers });
    }
    const type = CONTENT_TYPES[path.extname(file).toLowerCase()] ?? 'application/octet-stream';
    return new Response(fs.readFileSync(file), { status: 200, headers: { ...headers, 'content-type': type } });
  }

  function createWindow(ipc: IpcAdapter): void {
    const win = new BrowserWindow({
      width: 1280,
      height: 800,
      minWidth: 960,
      minHeight: 600,
      title: 'Porthole',
      show: false,
      webPreferences: appWebPreferences(PRELOAD),
    });
    mainWindow = win;
    const contents = win.webContents;
    ipc.attach(contents);
    contents.on('will-navigate', (event, url) => { if (navigationDecision(url) === 'deny') event.preventDefault(); });
    contents.on('will-redirect', (event, url) => { if (navigationDecision(url) === 'deny') event.preventDefault(); });
    contents.on('will-attach-webview', (event) => event.preventDefault());
    contents.setWindowOpenHandler(({ url }) => {
      if (windowOpenDecision(url) === 'open-externally') void shell.openExternal(url);
      return { action: 'deny' };
    });
    win.once('ready-to-show', () => win.show());
    win.on('close', (event) => {
      if (quitConfirmed) return;
      if (manager.activeVms().length > 0) {
        event.preventDefault();
        void requestQuit();
      }
    });
    win.on('closed', () => { if (mainWindow === win) mainWindow = null; });
    void win.loadURL(APP_INDEX_URL);
  }

  /** Asks what to do with running VMs, does it, then quits. */
  async function requestQuit(): Promise<void> {
    if (quitInProgress) return;
    const prompt = quitPrompt(manager.activeVms());
    if (prompt) {
      const options = {
        type: 'question' as const, message: prompt.message, detail: prompt.detail, buttons: prompt.buttons,
        defaultId: prompt.defaultId, cancelId: prompt.cancelId, noLink: true,
      };
      const { response } = mainWindow ? await dialog.showMessageBox(mainWindow, options) : await dialog.showMessageBox(options);
      const action = prompt.actions[response] ?? 'cancel';
      if (action === 'cancel') return;
      quitInProgress = true;
      await manager.shutdownAll(action);
    }
    quitConfirmed = true;
    app.quit();
  }

  function buildMenu(): void {
    const template: Electron.MenuItemConstructorOptions[] = [
      { label: 'File', submenu: [{ label: 'Quit', accelerator: 'CmdOrCtrl+Q', click: () => void requestQuit() }] },
      { role: 'editMenu' },
      {
        label: 'View',
        submenu: [
          { role: 'resetZoom' }, { role: 'zoomIn' }, { role: 'zoomOut' }, { type: 'separator' }, { role: 'togglefullscreen' },
          ...(app.isPackaged ? [] : [{ type: 'separator' as const }, { role: 'toggleDevTools' as const }]),
        ],
      },
    ];
    Menu.setApplicationMenu(Menu.buildFromTemplate(template));
  }

  app.on('second-instance', () => {
    if (!mainWindow) return;
    if (mainWindow.isMinimized()) mainWindow.restore();
    mainWindow.focus();
  });

  app.on('before-quit', (event) => {
    if (quitConfirmed || manager.activeVms().length === 0) return;
    event.preventDefault();
    void requestQuit();
  });

  app.on('window-all-closed', () => app.quit());

  // Any web contents (there should be only ours) may not navigate away or open windows.
  app.on('web-contents-created', (_event, contents) => {
    contents.on('will-navigate', (event, url) => { if (navigationDecision(url) === 'deny') event.preventDefault(); });
    contents.setWindowOpenHandler(() => ({ action: 'deny' }));
  });

  app.whenReady().then(() => {
    try {
      manager.load();
    } catch (e) {
      dialog.showErrorBox('Porthole cannot start', (e as Error).message);
      app.exit(1);
      return;
    }
    protocol.handle(APP_SCHEME, (request) => serveAppFile(request));
    session.defaultSession.setPermissionRequestHandler((contents, permission, callback) => {
      callback(permissionDecision(permission, contents.getURL()));
    });
    session.defaultSession.setPermissionCheckHandler((_contents, permission, requestingOrigin) =>
      permissionDecision(permission, requestingOrigin));
    buildMenu();
    createWindow(new IpcAdapter(manager, log));
  }, (e: Error) => {
    log(`could not start: ${e.message}`);
    app.exit(1);
  });
}
