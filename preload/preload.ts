// The only bridge from the renderer to main: exposes `window.porthole` (PortholeApi)
// and nothing else. Sandboxed preloads can require only "electron", so this file has no
// other runtime imports (contract types are erased); the channel names are checked
// against main/api/wire.ts by a unit test.
import { contextBridge, ipcRenderer } from 'electron';
import type { ConsoleListener, PortholeApi, PortholeEvent } from '../main/api/contract';
import type { DirectMethod, ServerMessage, WireMethod, WireResult } from '../main/api/wire';

const PRELOAD_CALL_CHANNEL = 'porthole:call';
const PRELOAD_EVENT_CHANNEL = 'porthole:event';

const eventListeners = new Set<(e: PortholeEvent) => void>();
const consoles = new Map<string, ConsoleListener>();
let subscriptionCounter = 0;

ipcRenderer.on(PRELOAD_EVENT_CHANNEL, (_event, message: ServerMessage<Uint8Array>) => {
  if (message.type === 'event') {
    for (const l of [...eventListeners]) {
      try {
        l(message.event);
      } catch (e) {
        console.error('porthole event listener failed', e);
      }
    }
  } else if (message.type === 'console') {
    // IPC keeps order and never reconnects, so offsets need no checking here.
    consoles.get(message.subscription)?.(message.data);
  }
});

/** Rejects with a plain { code, message } (what crosses contextBridge intact). */
async function rawCall(method: WireMethod, args: unknown[]): Promise<unknown> {
  const result = (await ipcRenderer.invoke(PRELOAD_CALL_CHANNEL, method, args)) as WireResult;
  if (result.ok) return result.value;
  throw { code: result.error.code, message: result.error.message };
}

function call<T>(method: DirectMethod, ...args: unknown[]): Promise<T> {
  return rawCall(method, args) as Promise<T>;
}

const api: PortholeApi = {
  getInfo: () => call('getInfo'),
  listVms: () => call('listVms'),
  getVm: (id) => call('getVm', id),
  checkVmSpec: (spec) => call('checkVmSpec', spec),
  createVm: (spec) => call('createVm', spec),
  updateVm: (id, spec) => call('updateVm', id, spec),
  deleteVm: (id) => call('deleteVm', id),
  startVm: (id) => call('startVm', id),
  stopVm: (id) => call('stopVm', id),
  forceOffVm: (id) => call('forceOffVm', id),
  pauseVm: (id) => call('pauseVm', id),
  resumeVm: (id) => call('resumeVm', id),
  resetVm: (id) => call('resetVm', id),
  getVmLog: (id) => call('getVmLog', id),
  getVmStats: (id) => call('getVmStats', id),
  sendConsoleInput: (id, port, data) => call('sendConsoleInput', id, port, data),
  chooseFile: (choice) => call('chooseFile', choice),

  async openConsole(id, port, listener) {
    if (typeof listener !== 'function') throw { code: 'invalid-argument', message: 'openConsole needs a listener function.' };
    const sub = `e${++subscriptionCounter}`;
    consoles.set(sub, listener);
    try {
      await rawCall('openConsole', [id, port, sub]);
    } catch (e) {
      consoles.delete(sub);
      throw e;
    }
    return () => {
      if (consoles.delete(sub)) void rawCall('closeConsole', [sub]).catch(() => undefined);
    };
  },

  onEvent(listener) {
    if (typeof listener !== 'function') return () => undefined;
    eventListeners.add(listener);
    return () => { eventListeners.delete(listener); };
  },
};

contextBridge.exposeInMainWorld('porthole', api);
