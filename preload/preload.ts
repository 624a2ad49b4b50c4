// The only bridge from the renderer to main: exposes `window.porthole` (PortholeApi)
// and nothing else. Sandboxed preloads can require only "electron", so this file has no
// other runtime imports (contract types are erased): it asks main for the method table
// (main/api/methods.ts, without validators) once, synchronously, and builds the API from
// it. The channel names are checked against main/api/wire.ts by a unit test.
import { contextBridge, ipcRenderer } from 'electron';
import type { PortholeApi, PortholeEvent } from '../main/api/contract';
import type { MethodDescription } from '../main/api/methods';
import type { ServerMessage, WireResult } from '../main/api/wire';

const PRELOAD_CALL_CHANNEL = 'porthole:call';
const PRELOAD_EVENT_CHANNEL = 'porthole:event';
const PRELOAD_METHODS_CHANNEL = 'porthole:methods';

type Listener = (item: unknown) => void;

const eventListeners = new Set<(e: PortholeEvent) => void>();
/** Open streams by subscription id: the message type that carries their items, and the listener. */
const streams = new Map<string, { message: string; listener: Listener }>();
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
  } else if (message.type === 'console' || message.type === 'vm-stats' || message.type === 'usb-transfers' || message.type === 'host-usb-devices') {
    // IPC keeps order and never reconnects, so console offsets need no checking here.
    const s = streams.get(message.subscription);
    if (!s || s.message !== message.type) return;
    s.listener(message.type === 'console' ? message.data : message.event);
  }
});

/** Rejects with a plain { code, message } (what crosses contextBridge intact). */
async function rawCall(method: string, args: unknown[]): Promise<unknown> {
  const result = (await ipcRenderer.invoke(PRELOAD_CALL_CHANNEL, method, args)) as WireResult;
  if (result.ok) return result.value;
  throw { code: result.error.code, message: result.error.message };
}

async function openStream(m: MethodDescription, args: unknown[], listener: unknown): Promise<() => void> {
  if (typeof listener !== 'function') throw { code: 'invalid-argument', message: `${m.name} needs a listener function.` };
  const sub = `e${++subscriptionCounter}`;
  streams.set(sub, { message: m.message ?? '', listener: listener as Listener });
  try {
    await rawCall(m.name, [...args, sub]);
  } catch (e) {
    streams.delete(sub);
    throw e;
  }
  return () => {
    if (streams.delete(sub) && m.close) void rawCall(m.close, [sub]).catch(() => undefined);
  };
}

const api: Record<string, unknown> = {};
const methods = ipcRenderer.sendSync(PRELOAD_METHODS_CHANNEL) as MethodDescription[];
for (const m of Array.isArray(methods) ? methods : []) {
  if (m.kind === 'call') {
    api[m.name] = (...args: unknown[]) => rawCall(m.name, args.slice(0, m.argCount));
  } else if (m.kind === 'stream') {
    api[m.name] = (...args: unknown[]) => openStream(m, args.slice(0, m.argCount), args[m.argCount]);
  } else if (m.kind === 'events') {
    api[m.name] = (listener: unknown) => {
      if (typeof listener !== 'function') return () => undefined;
      const l = listener as (e: PortholeEvent) => void;
      eventListeners.add(l);
      return () => { eventListeners.delete(l); };
    };
  }
}

contextBridge.exposeInMainWorld('porthole', api as unknown as PortholeApi);
