// The contract over Electron IPC: one ApiSession per window, calls only from our own
// window's main frame showing the app (checked on every call). The preload builds
// window.porthole from the method table it gets here (IPC_METHODS_CHANNEL).
import { ipcMain, type IpcMainEvent, type IpcMainInvokeEvent, type WebContents } from 'electron';
import type { ApiErrorShape } from '../api/contract';
import { ApiSession, type ApiBackend } from '../api/session';
import { describeMethods } from '../api/methods';
import { IPC_CALL_CHANNEL, IPC_EVENT_CHANNEL, IPC_METHODS_CHANNEL, type WireResult } from '../api/wire';
import { isTrustedSender } from './policy';

const UNTRUSTED: ApiErrorShape = { code: 'unauthorized', message: 'This page may not use Porthole.' };

export class IpcAdapter {
  private readonly sessions = new Map<number, ApiSession<Uint8Array>>();
  // The table is public (it only names the calls); every call is still checked in onCall.
  private readonly answerMethods = (event: IpcMainEvent) => { event.returnValue = describeMethods(); };

  constructor(private readonly backend: ApiBackend, private readonly log: (line: string) => void) {
    ipcMain.handle(IPC_CALL_CHANNEL, (event, method: unknown, args: unknown) => this.onCall(event, method, args));
    ipcMain.on(IPC_METHODS_CHANNEL, this.answerMethods);
  }

  /** Serves `contents` (an app window); a new page load gets a fresh session. */
  attach(contents: WebContents): void {
    const open = () => {
      this.sessions.get(contents.id)?.close();
      this.sessions.set(contents.id, new ApiSession<Uint8Array>(
        this.backend,
        (m) => { if (!contents.isDestroyed()) contents.send(IPC_EVENT_CHANNEL, m); },
        (data) => data,
        (e) => this.log(`call failed: ${(e as Error).stack ?? String(e)}`),
      ));
    };
    open();
    // A reload drops the page's console subscriptions with it.
    contents.on('did-start-navigation', (details) => { if (details.isMainFrame && !details.isSameDocument) open(); });
    contents.once('destroyed', () => {
      this.sessions.get(contents.id)?.close();
      this.sessions.delete(contents.id);
    });
  }

  private async onCall(event: IpcMainInvokeEvent, method: unknown, args: unknown): Promise<WireResult> {
    const frame = event.senderFrame;
    const trusted = isTrustedSender({
      webContentsId: event.sender.id,
      frameUrl: frame ? frame.url : null,
      isMainFrame: frame !== null && frame === event.sender.mainFrame,
    }, new Set(this.sessions.keys()));
    const session = this.sessions.get(event.sender.id);
    if (!trusted || !session) {
      this.log(`refused an IPC call from ${frame?.url ?? 'a destroyed frame'}`);
      return { ok: false, error: UNTRUSTED };
    }
    return session.call(method, args);
  }

  dispose(): void {
    ipcMain.removeHandler(IPC_CALL_CHANNEL);
    ipcMain.off(IPC_METHODS_CHANNEL, this.answerMethods);
    for (const s of this.sessions.values()) s.close();
    this.sessions.clear();
  }
}
