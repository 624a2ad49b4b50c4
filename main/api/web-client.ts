// The browser-mode implementation of PortholeApi: calls over HTTP (fetch), events and
// console bytes over one WebSocket. DOM APIs only (no Node imports), so the renderer can
// import it: `window.porthole = createWebClient()` when no preload provided one.
// Node tests pass their own fetch/WebSocket and the token.
import {
  ApiError, isApiErrorShape,
  type ConsoleListener, type ConsolePort, type PortholeApi, type PortholeEvent,
} from './contract';
import {
  ConsoleCursor, HTTP_CALL_PATH, SESSION_HEADER, TOKEN_QUERY, WS_EVENTS_PATH, base64ToBytes,
  type DirectMethod, type ServerMessage, type WireMethod,
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
  const consoles = new Map<string, { id: string; port: ConsolePort; listener: ConsoleListener; cursor: ConsoleCursor }>();
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
      for (const [sub, c] of consoles) void rawCall('openConsole', [c.id, c.port, sub], session).catch(() => undefined);
    } else if (m.type === 'event') {
      emit(m.event);
    } else if (m.type === 'console') {
      const c = consoles.get(m.subscription);
      const bytes = typeof m.data === 'string' ? base64ToBytes(m.data) : null;
      if (!c || !bytes || typeof m.offset !== 'number') return;
      const fresh = c.cursor.accept(m.offset, bytes);
      if (fresh) c.listener(fresh);
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

  function call<T>(method: DirectMethod, ...args: unknown[]): Promise<T> {
    return rawCall(method, args, session) as Promise<T>;
  }

  connect();

  return {
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
      const sub = `c${++subscriptionCounter}`;
      const current = await waitForSession();
      if (!current) throw new ApiError('internal', NOT_CONNECTED);
      consoles.set(sub, { id, port, listener, cursor: new ConsoleCursor() });
      try {
        await rawCall('openConsole', [id, port, sub], current);
      } catch (e) {
        consoles.delete(sub);
        throw e;
      }
      return () => {
        if (!consoles.delete(sub)) return;
        if (session) void rawCall('closeConsole', [sub], session).catch(() => undefined);
      };
    },

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
