// The browser-mode implementation of PortholeApi: calls over HTTP (fetch), events and
// console bytes over one WebSocket. DOM APIs only (no Node imports), so the renderer can
// import it: `window.porthole = createWebClient()` when no preload provided one.
// Node tests pass their own fetch/WebSocket and the token. Its methods are derived from
// the method table (methods.ts).
import { ApiError, isApiErrorShape, type HostUsbDevicesEvent, type PortholeApi, type PortholeEvent, type UsbTransfersEvent, type VmStatsEvent } from './contract';
import { methodEntries, type StreamEntry } from './methods';
import {
  ConsoleCursor, HTTP_CALL_PATH, SESSION_HEADER, TOKEN_QUERY, WS_EVENTS_PATH, base64ToBytes,
  type ServerMessage, type WireMethod,
} from './wire';

/** The part of the WebSocket interface this client uses (DOM's WebSocket and the ws package fit). */
export interface SocketLike {
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: unknown) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  close(): void;
}

export interface ResponseLike {
  status: number;
  json(): Promise<unknown>;
}

export type FetchLike = (url: string, init: {
  method: string;
  headers: Record<string, string>;
  body: string;
  credentials?: 'same-origin';
}) => Promise<ResponseLike>;

export interface WebClientOptions {
  /** "http://127.0.0.1:PORT"; default: the page's own origin. */
  baseUrl?: string;
  /** Sent as ?token= on every request; default none (the page's cookie carries it). */
  token?: string;
  fetch?: FetchLike;
  openSocket?: (url: string) => SocketLike;
  /** Delay before reconnecting a lost event socket. */
  reconnectMs?: number;
}

export interface WebClient extends PortholeApi {
  /** Closes the event socket for good (tests; a page simply unloads). */
  close(): void;
}

interface BrowserGlobals {
  fetch?: FetchLike;
  WebSocket?: new (url: string) => SocketLike;
  location?: { origin: string };
}

interface OpenStream {
  method: WireMethod;
  args: unknown[];
  message: StreamEntry['message'];
  deliver(m: ServerMessage<string>): void;
}

const NOT_CONNECTED = 'Porthole is not reachable; check that it is still running and reload the page.';

export function createWebClient(options: WebClientOptions = {}): WebClient {
  const g = globalThis as unknown as BrowserGlobals;
  const baseUrl = options.baseUrl ?? g.location?.origin ?? '';
  const doFetch: FetchLike | undefined = options.fetch ?? (g.fetch ? g.fetch.bind(globalThis) : undefined);
  const openSocket = options.openSocket ?? (g.WebSocket ? (url: string) => new g.WebSocket!(url) : undefined);
  if (!doFetch || !openSocket) throw new Error('createWebClient needs fetch and WebSocket');
  const reconnectMs = options.reconnectMs ?? 1000;
  const query = options.token === undefined ? '' : `?${TOKEN_QUERY}=${encodeURIComponent(options.token)}`;

  const eventListeners = new Set<(e: PortholeEvent) => void>();
  /** Open streams by subscription id: how to re-open one after a reconnect, and where its items go. */
  const streams = new Map<string, OpenStream>();
  let session: string | null = null;
  const sessionWaiters: ((s: string | null) => void)[] = [];
  let socket: SocketLike | null = null;
  let closed = false;
  let subscriptionCounter = 0;

  function emit(e: PortholeEvent): void {
    for (const l of [...eventListeners]) {
      try {
        l(e);
      } catch (err) {
        console.error('porthole event listener failed', err);
      }
    }
  }

  async function rawCall(method: WireMethod, args: unknown[], withSession: string | null): Promise<unknown> {
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (withSession) headers[SESSION_HEADER] = withSession;
    let response: ResponseLike;
    try {
      response = await doFetch!(baseUrl + HTTP_CALL_PATH + query, {
        method: 'POST', headers, body: JSON.stringify({ method, args }), credentials: 'same-origin',
      });
    } catch {
      throw new ApiError('internal', NOT_CONNECTED);
    }
    let body: unknown;
    try {
      body = await response.json();
    } catch {
      throw new ApiError('internal', `Porthole answered with HTTP ${response.status} and no readable body.`);
    }
    const r = body as { ok?: unknown; value?: unknown; error?: unknown };
    if (r && r.ok === true) return r.value;
    if (r && r.ok === false && isApiErrorShape(r.error)) throw new ApiError(r.error.code, r.error.message);
    throw new ApiError('internal', `Porthole answered with HTTP ${response.status} and an unexpected body.`);
  }

  /** The event connection's session; null if it does not come up within `timeoutMs`. */
  function waitForSession(timeoutMs = 10000): Promise<string | null> {
    if (session || closed) return Promise.resolve(session);
    return new Promise((resolve) => {
      const waiter = (s: string | null) => { clearTimeout(timer); resolve(s); };
      const timer = setTimeout(() => {
        const i = sessionWaiters.indexOf(waiter);
        if (i >= 0) sessionWaiters.splice(i, 1);
        resolve(null);
      }, timeoutMs);
      sessionWaiters.push(waiter);
    });
  }

  function onMessage(text: unknown): void {
    if (typeof text !== 'string') return;
    let m: ServerMessage<string>;
    try {
      m = JSON.parse(text) as ServerMessage<string>;
    } catch {
      return;
    }
    if (m.type === 'hello') {
      session = m.session;
      sessionWaiters.splice(0).forEach((w) => w(session));
      emit({ type: 'connection', status: 'connected' });
      // After a reconnect the new session has no subscriptions: open them again; the
      // cursors drop the part of the scroll-back that was already delivered.
      for (const [sub, c] of streams) void rawCall(c.method, [...c.args, sub], session).catch(() => undefined);
    } else if (m.type === 'event') {
      emit(m.event);
    } else if (m.type === 'console' || m.type === 'vm-stats' || m.type === 'usb-transfers' || m.type === 'host-usb-devices') {
      const c = streams.get(m.subscription);
      if (c && c.message === m.type) c.deliver(m);
    }
  }

  function connect(): void {
    if (closed) return;
    const wsUrl = baseUrl.replace(/^http/, 'ws') + WS_EVENTS_PATH + query;
    const s = openSocket!(wsUrl);
    socket = s;
    s.onmessage = (ev) => onMessage(ev.data);
    s.onerror = () => undefined;
    s.onclose = () => {
      if (socket !== s) return;
      socket = null;
      const hadSession = session !== null;
      session = null;
      if (hadSession) emit({ type: 'connection', status: 'disconnected' });
      if (closed) {
        sessionWaiters.splice(0).forEach((w) => w(null));
        return;
      }
      setTimeout(connect, reconnectMs);
    };
  }

  function call(method: WireMethod, args: unknown[]): Promise<unknown> {
    return rawCall(method, args, session);
  }

  /** The item handler of a new stream of kind `message`, calling the user's `listener`. */
  function streamDeliverer(message: StreamEntry['message'], listener: (item: never) => void): (m: ServerMessage<string>) => void {
    switch (message) {
      case 'console': {
        const cursor = new ConsoleCursor();
        return (m) => {
          if (m.type !== 'console') return;
          const bytes = typeof m.data === 'string' ? base64ToBytes(m.data) : null;
          if (!bytes || typeof m.offset !== 'number') return;
          const fresh = cursor.accept(m.offset, bytes);
          if (fresh) (listener as (data: Uint8Array) => void)(fresh);
        };
      }
      case 'vm-stats':
        return (m) => {
          if (m.type === 'vm-stats') (listener as (event: VmStatsEvent) => void)(m.event);
        };
      case 'usb-transfers':
        return (m) => {
          if (m.type === 'usb-transfers') (listener as (event: UsbTransfersEvent) => void)(m.event);
        };
      case 'host-usb-devices':
        return (m) => {
          if (m.type === 'host-usb-devices') (listener as (event: HostUsbDevicesEvent) => void)(m.event);
        };
    }
  }

  async function openStream(method: WireMethod, entry: StreamEntry, args: unknown[], listener: unknown): Promise<() => void> {
    if (typeof listener !== 'function') throw new ApiError('invalid-argument', `${method} needs a listener function.`);
    const sub = `c${++subscriptionCounter}`;
    const current = await waitForSession();
    if (!current) throw new ApiError('internal', NOT_CONNECTED);
    streams.set(sub, { method, args, message: entry.message, deliver: streamDeliverer(entry.message, listener as (item: never) => void) });
    try {
      await rawCall(method, [...args, sub], current);
    } catch (e) {
      streams.delete(sub);
      throw e;
    }
    return () => {
      if (!streams.delete(sub)) return;
      if (session) void rawCall(entry.close as WireMethod, [sub], session).catch(() => undefined);
    };
  }

  connect();

  const api: Record<string, unknown> = {};
  for (const [name, entry] of methodEntries()) {
    if (entry.kind === 'call') {
      api[name] = (...args: unknown[]) => call(name as WireMethod, args.slice(0, entry.args.length));
    } else if (entry.kind === 'stream') {
      api[name] = (...args: unknown[]) => openStream(name as WireMethod, entry, args.slice(0, entry.args.length), args[entry.args.length]);
    }
  }

  return {
    ...(api as unknown as Omit<PortholeApi, 'onEvent'>),

    onEvent(listener) {
      eventListeners.add(listener);
      return () => { eventListeners.delete(listener); };
    },

    close() {
      closed = true;
      const s = socket;
      socket = null;
      s?.close();
      sessionWaiters.splice(0).forEach((w) => w(null));
    },
  };
}
