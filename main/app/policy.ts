// Security and quit decisions of the Electron app, as pure functions (no Electron
// import) so they are unit-tested without an Electron binary.
import type { FileChoice, FilePurpose, VmSummary } from '../api/contract';
import { contentSecurityPolicy } from '../web/csp';

/** The renderer is served from this privileged scheme (see electron-main.ts). */
export const APP_SCHEME = 'porthole';
export const APP_ORIGIN = `${APP_SCHEME}://app`;
export const APP_INDEX_URL = `${APP_ORIGIN}/index.html`;

/** The CSP header on every app response (the app talks to main only over IPC). */
export const APP_CSP = contentSecurityPolicy();

function originOf(url: string): string | null {
  try {
    const u = new URL(url);
    // Non-special schemes have an opaque origin ("null"); build it from the parts.
    return `${u.protocol}//${u.host}`;
  } catch {
    return null;
  }
}

/** The window's webPreferences: the renderer gets no Node, no Electron, only the preload's bridge. */
export function appWebPreferences(preload: string) {
  return {
    preload,
    contextIsolation: true,
    sandbox: true,
    nodeIntegration: false,
    nodeIntegrationInWorker: false,
    nodeIntegrationInSubFrames: false,
    webSecurity: true,
    allowRunningInsecureContent: false,
    webviewTag: false,
    navigateOnDragDrop: false,
    spellcheck: false,
  } as const;
}

export function isAppUrl(url: string): boolean {
  return originOf(url) === APP_ORIGIN;
}

export interface SenderInfo {
  /** webContents id of the sender. */
  webContentsId: number;
  /** URL of the sending frame, or null when it is gone. */
  frameUrl: string | null;
  /** The sending frame is its page's main frame (not an iframe). */
  isMainFrame: boolean;
}

/** An IPC call is served only from our own window's main frame showing our own page. */
export function isTrustedSender(sender: SenderInfo, trustedWebContents: ReadonlySet<number>): boolean {
  return trustedWebContents.has(sender.webContentsId)
    && sender.isMainFrame
    && sender.frameUrl !== null
    && isAppUrl(sender.frameUrl);
}

/** In-window navigation: only within the app (the renderer is a single page). */
export function navigationDecision(url: string): 'allow' | 'deny' {
  return isAppUrl(url) ? 'allow' : 'deny';
}

/** window.open and target=_blank: never a new app window; web links go to the system browser. */
export function windowOpenDecision(url: string): 'deny' | 'open-externally' {
  try {
    const u = new URL(url);
    return u.protocol === 'https:' || u.protocol === 'http:' ? 'open-externally' : 'deny';
  } catch {
    return 'deny';
  }
}

/** Permissions a page may get: only writing to the clipboard (console "Copy"). */
export function permissionDecision(permission: string, requestingUrl: string): boolean {
  return permission === 'clipboard-sanitized-write' && isAppUrl(requestingUrl);
}

export type QuitAction = 'stop' | 'force-off' | 'cancel';

export interface QuitPrompt {
  message: string;
  detail: string;
  buttons: string[];
  actions: QuitAction[];
  defaultId: number;
  cancelId: number;
}

/** What to ask when quitting while VMs run; null when nothing runs. */
export function quitPrompt(active: readonly VmSummary[]): QuitPrompt | null {
  if (active.length === 0) return null;
  const names = active.slice(0, 5).map((vm) => `• ${vm.spec.name} (${vm.state})`);
  if (active.length > 5) names.push(`• and ${active.length - 5} more`);
  const one = active.length === 1;
  return {
    message: one ? `"${active[0].spec.name}" is still running.` : `${active.length} VMs are still running.`,
    detail: `${names.join('\n')}\n\nStopping ends ${one ? 'it' : 'them'} cleanly; forcing off ends ${one ? 'it' : 'them'} at once, like pulling the plug. Either way, unsaved work in the guest is lost.`,
    buttons: [one ? 'Stop VM and Quit' : 'Stop VMs and Quit', 'Force Off and Quit', 'Cancel'],
    actions: ['stop', 'force-off', 'cancel'],
    defaultId: 0,
    cancelId: 2,
  };
}

const DIALOG_TITLES: Record<FilePurpose, string> = {
  disk: 'Choose a disk image',
  cdrom: 'Choose an ISO image',
  kernel: 'Choose a Linux kernel',
  initrd: 'Choose an initrd',
  firmware: 'Choose a firmware image',
  'option-rom': 'Choose an option ROM',
  flat: 'Choose a test program',
};

const DIALOG_FILTERS: Record<FilePurpose, { name: string; extensions: string[] }[]> = {
  disk: [{ name: 'Disk images', extensions: ['img', 'raw', 'qcow2', 'bin'] }],
  cdrom: [{ name: 'ISO images', extensions: ['iso'] }],
  kernel: [],
  initrd: [],
  firmware: [{ name: 'Firmware', extensions: ['bin', 'rom', 'fd'] }],
  'option-rom': [{ name: 'Option ROMs', extensions: ['rom', 'bin'] }],
  flat: [{ name: 'Programs', extensions: ['bin'] }],
};

/** Options for Electron's dialog.showOpenDialog. */
export function openDialogOptions(choice: FileChoice): {
  title: string;
  properties: ('openFile' | 'showHiddenFiles' | 'dontAddToRecent')[];
  filters: { name: string; extensions: string[] }[];
} {
  const filters = DIALOG_FILTERS[choice.purpose];
  return {
    title: choice.title ?? DIALOG_TITLES[choice.purpose],
    properties: ['openFile', 'dontAddToRecent'],
    filters: filters.length > 0 ? [...filters, { name: 'All files', extensions: ['*'] }] : [],
  };
}

/**
 * Under Electron a utility process killed by a signal reports the signal number as its
 * exit code (Chromium's termination status). The VM process itself only exits with 0
 * or 70, so 1..31 are read as signals.
 */
export function utilityExitReason(code: number, signalNames: Readonly<Record<string, number>>): { code: number | null; signal: string | null } {
  if (code >= 1 && code <= 31) {
    const name = Object.keys(signalNames).find((n) => signalNames[n] === code);
    if (name) return { code: null, signal: name };
  }
  return { code, signal: null };
}
