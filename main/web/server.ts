// Browser mode: the contract over HTTP (calls) and a WebSocket (events, console bytes),
// plus the built renderer, on 127.0.0.1 only. Every request and WebSocket upgrade must
// carry the per-start token (?token= once, then an HttpOnly SameSite=Strict cookie) and
// name this server in Host (and Origin, when sent): other names are DNS rebinding.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket } from 'ws';
import type { ApiErrorShape } from '../api/contract';
import { ApiSession, type ApiBackend } from '../api/session';
import {
  HTTP_CALL_PATH, SESSION_HEADER, TOKEN_QUERY, WS_EVENTS_PATH, bytesToBase64, type ServerMessage, type WireResult,
} from '../api/wire';
import { contentSecurityPolicy } from './csp';

export interface WebServerOptions {
  backend: ApiBackend;
  /** Directory of the built renderer (index.html and assets). */
  rendererDir: string;
  /** 0 picks a free port. */
  port?: number;
  /** Fixed token (tests); a random one by default. */
  token?: string;
  log?: (line: string) => void;
}

export interface WebServer {
  readonly port: number;
  readonly token: string;
  /** The URL to open, token included. */
  readonly url: string;
  close(): Promise<void>;
}

const MAX_BODY_BYTES = 1024 * 1024;
/** A client this far behind on its WebSocket is dropped; it reconnects and gets the scroll-back. */
const MAX_WS_BACKLOG_BYTES = 8 * 1024 * 1024;

const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.map': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
  '.woff': 'font/woff',
  '.ttf': 'font/ttf',
  '.txt': 'text/plain; charset=utf-8',
};

const UNAUTHORIZED: ApiErrorShape = {
  code: 'unauthorized',
  message: 'This page is not authorized: open the address Porthole printed when it started, including its token.',
};

export function tokensEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && crypto.timingSafeEqual(x, y);
}

export function parseCookies(header: string | undefined): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of (header ?? '').split(';')) {
    const i = part.indexOf('=');
    if (i > 0) out.set(part.slice(0, i).trim(), part.slice(i + 1).trim());
  }
  return out;
}

/** The decisions about one request's headers, separate from any socket so they are easy to test. */
export interface RequestCheck {
  ok: boolean;
  status: 200 | 401 | 403;
  reason: string;
  /** The token came in the query (set the cookie, and for pages drop it from the address). */
  tokenFromQuery: boolean;
}

export function checkRequest(
  headers: http.IncomingHttpHeaders, url: URL, port: number, token: string,
): RequestCheck {
  const allowedHosts = [`127.0.0.1:${port}`, `localhost:${port}`];
  const host = headers.host ?? '';
  if (!allowedHosts.includes(host.toLowerCase())) {
    return { ok: false, status: 403, reason: `the Host header "${host.slice(0, 100)}" is not this server`, tokenFromQuery: false };
  }
  const origin = headers.origin;
  if (origin !== undefined && !allowedHosts.map((h) => `http://${h}`).includes(origin.toLowerCase())) {
    return { ok: false, status: 403, reason: `requests from ${origin.slice(0, 100)} are not allowed`, tokenFromQuery: false };
  }
  const queryToken = url.searchParams.get(TOKEN_QUERY);
  if (queryToken !== null && tokensEqual(queryToken, token)) return { ok: true, status: 200, reason: '', tokenFromQuery: true };
  const cookieToken = parseCookies(headers.cookie).get(cookieName(port));
  if (cookieToken !== undefined && tokensEqual(cookieToken, token)) return { ok: true, status: 200, reason: '', tokenFromQuery: false };
  return { ok: false, status: 401, reason: 'the token is missing or wrong', tokenFromQuery: false };
}

/** Cookies ignore ports, so the name carries it: two servers on one host keep apart. */
export function cookieName(port: number): string {
  return `porthole-${port}`;
}

/** The file under `root` a URL path names, or null if it would leave root or is odd. */
export function staticFilePath(root: string, urlPath: string): string | null {
  let decoded: string;
  try {
    decoded = decodeURIComponent(urlPath);
  } catch {
    return null;
  }
  if (decoded.includes('\0') || decoded.includes('\\')) return null;
  const segments = decoded.split('/').filter((s) => s !== '');
  if (segments.some((s) => s === '..' || s === '.' || s.startsWith('.'))) return null;
  const file = path.resolve(root, ...segments);
  const rootResolved = path.resolve(root);
  if (file !== rootResolved && !file.startsWith(rootResolved + path.sep)) return null;
  return file;
}

function securityHeaders(port: number): Record<string, string> {
  return {
    'content-security-policy': contentSecurityPolicy([`ws://127.0.0.1:${port}`, `ws://localhost:${port}`]),
    'x-content-type-options': 'nosniff',
    'x-frame-options': 'DENY',
    'referrer-policy': 'no-referrer',
    'cross-origin-opener-policy': 'same-origin',
    'cross-origin-resource-policy': 'same-origin',
  };
}

const UI_NOT_BUILT = `<!doctype html><meta charset="utf-8"><title>Porthole</title>
<p>The Porthole UI is not built: run <code>npm run build</code> and reload this page.</p>`;

export async function startWebServer(options: WebServerOptions): Promise<WebServer> {
  const token = options.token ?? crypto.randomBytes(32).toString('base64url');
  const log = options.log ?? ((line: string) => console.error(`porthole web: ${line}`));
  const backend = options.backend;
  const sessions = new Map<string, ApiSession<string>>();
  // Calls that arrive without a WebSocket session (they cannot open consoles).
  const sessionless = new ApiSession<string>(backend, () => undefined, bytesToBase64);
  let port = 0;

  function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
    const text = JSON.stringify(body);
    res.writeHead(status, {
      ...securityHeaders(port), 'content-type': 'application/json', 'cache-control': 'no-store', 'content-length': Buffer.byteLength(text),
    });
    res.end(text);
  }

  function sendText(res: http.ServerResponse, status: number, text: string, type = 'text/plain; charset=utf-8'): void {
    res.writeHead(status, { ...securityHeaders(port), 'content-type': type, 'cache-control': 'no-store' });
    res.end(text);
  }

  function readBody(req: http.IncomingMessage): Promise<Buffer | null> {
    return new Promise((resolve) => {
      const chunks: Buffer[] = [];
      let size = 0;
      let tooLarge = false;
      req.on('data', (c: Buffer) => {
        size += c.length;
        if (size > MAX_BODY_BYTES) tooLarge = true;
        else chunks.push(c);
      });
      req.on('end', () => resolve(tooLarge ? null : Buffer.concat(chunks)));
      req.on('error', () => resolve(null));
    });
  }

  async function handleCall(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (req.method !== 'POST') {
      sendJson(res, 405, { ok: false, error: { code: 'invalid-argument', message: 'Calls are POST requests.' } });
      return;
    }
    // A JSON content type cannot be sent cross-site without a CORS preflight, which we never grant.
    if (!(req.headers['content-type'] ?? '').toLowerCase().startsWith('application/json')) {
      sendJson(res, 415, { ok: false, error: { code: 'invalid-argument', message: 'Calls must be sent as application/json.' } });
      return;
    }
    const body = await readBody(req);
    if (body === null) {
      sendJson(res, 413, { ok: false, error: { code: 'invalid-argument', message: `A call may be at most ${MAX_BODY_BYTES} bytes.` } });
      return;
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(body.toString('utf8'));
    } catch {
      sendJson(res, 400, { ok: false, error: { code: 'invalid-argument', message: 'The call is not valid JSON.' } });
      return;
    }
    const call = (typeof parsed === 'object' && parsed !== null ? parsed : {}) as { method?: unknown; args?: unknown };
    const sessionId = req.headers[SESSION_HEADER];
    let session: ApiSession<string> = sessionless;
    if (typeof sessionId === 'string') {
      const s = sessions.get(sessionId);
      if (!s) {
        sendJson(res, 200, { ok: false, error: { code: 'invalid-state', message: 'The event connection was lost; reload the page.' } } satisfies WireResult);
        return;
      }
      session = s;
    } else if (call.method === 'openConsole' || call.method === 'closeConsole') {
      sendJson(res, 200, { ok: false, error: { code: 'invalid-state', message: 'Console streams need the event connection; reload the page.' } } satisfies WireResult);
      return;
    }
    const result = await session.call(call.method, call.args ?? []);
    sendJson(res, 200, result);
  }

  function serveStatic(req: http.IncomingMessage, res: http.ServerResponse, url: URL): void {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      sendText(res, 405, 'Method not allowed.');
      return;
    }
    const root = options.rendererDir;
    const index = path.join(root, 'index.html');
    let file = staticFilePath(root, url.pathname);
    if (file === null) {
      sendText(res, 404, 'Not found.');
      return;
    }
    let st = fs.statSync(file, { throwIfNoEntry: false });
    if (st?.isDirectory()) {
      file = path.join(file, 'index.html');
      st = fs.statSync(file, { throwIfNoEntry: false });
    }
    if (!st?.isFile()) {
      // Client-side routes (no extension) get the app; missing assets are 404.
      if (path.extname(url.pathname) !== '') {
        sendText(res, 404, 'Not found.');
        return;
      }
      file = index;
      st = fs.statSync(file, { throwIfNoEntry: false });
      if (!st?.isFile()) {
        sendText(res, 200, UI_NOT_BUILT, 'text/html; charset=utf-8');
        return;
      }
    }
    const type = CONTENT_TYPES[path.extname(file).toLowerCase()] ?? 'application/octet-stream';
    res.writeHead(200, {
      ...securityHeaders(port),
      'content-type': type,
      'content-length': st.size,
      'cache-control': type.startsWith('text/html') ? 'no-store' : 'no-cache',
    });
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    fs.createReadStream(file).on('error', () => res.destroy()).pipe(res);
  }

  function handleRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    let url: URL;
    try {
      url = new URL(req.url ?? '/', `http://127.0.0.1:${port}`);
    } catch {
      sendText(res, 400, 'Bad request.');
      return;
    }
    const check = checkRequest(req.headers, url, port, token);
    const isApi = url.pathname.startsWith('/api/');
    if (!check.ok) {
      log(`refused ${req.method} ${url.pathname}: ${check.reason}`);
      if (isApi) sendJson(res, check.status, { ok: false, error: UNAUTHORIZED });
      else sendText(res, check.status, `${UNAUTHORIZED.message}\n`);
      return;
    }
    if (check.tokenFromQuery) {
      res.setHeader('set-cookie', `${cookieName(port)}=${token}; Path=/; HttpOnly; SameSite=Strict`);
      if (!isApi && req.method === 'GET') {
        // Keep the token out of the address bar and history.
        url.searchParams.delete(TOKEN_QUERY);
        res.writeHead(303, { ...securityHeaders(port), location: url.pathname + url.search, 'cache-control': 'no-store' });
        res.end();
        return;
      }
    }
    if (url.pathname === HTTP_CALL_PATH) {
      handleCall(req, res).catch((e: unknown) => {
        log(`call failed: ${(e as Error).stack ?? String(e)}`);
        if (!res.headersSent) sendJson(res, 500, { ok: false, error: { code: 'internal', message: 'Something went wrong inside Porthole.' } });
      });
      return;
    }
    if (isApi) {
      sendJson(res, 404, { ok: false, error: { code: 'not-found', message: 'There is no such API path.' } });
      return;
    }
    serveStatic(req, res, url);
  }

  const wss = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024 });

  function refuseUpgrade(socket: Duplex, status: number, text: string): void {
    socket.end(`HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
  }

  function handleUpgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    let url: URL;
    try {
      url = new URL(req.url ?? '/', `http://127.0.0.1:${port}`);
    } catch {
      refuseUpgrade(socket, 400, 'Bad Request');
      return;
    }
    if (url.pathname !== WS_EVENTS_PATH) {
      refuseUpgrade(socket, 404, 'Not Found');
      return;
    }
    const check = checkRequest(req.headers, url, port, token);
    if (!check.ok) {
      log(`refused WebSocket: ${check.reason}`);
      refuseUpgrade(socket, check.status, check.status === 401 ? 'Unauthorized' : 'Forbidden');
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => onConnection(ws));
  }

  function onConnection(ws: WebSocket): void {
    const id = crypto.randomBytes(16).toString('base64url');
    const send = (m: ServerMessage<string>) => {
      if (ws.readyState !== ws.OPEN) return;
      if (ws.bufferedAmount > MAX_WS_BACKLOG_BYTES) {
        log('a browser fell too far behind; closing its event connection');
        ws.terminate();
        return;
      }
      ws.send(JSON.stringify(m));
    };
    const session = new ApiSession<string>(backend, send, bytesToBase64, (e) => log(`call failed: ${(e as Error).stack ?? String(e)}`));
    sessions.set(id, session);
    ws.on('close', () => {
      sessions.delete(id);
      session.close();
    });
    ws.on('error', () => ws.terminate());
    // The client sends nothing on this socket; anything it does send is ignored.
    ws.on('message', () => undefined);
    send({ type: 'hello', session: id });
  }

  const server = http.createServer(handleRequest);
  server.on('upgrade', handleUpgrade);
  server.on('clientError', (_e, socket) => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  port = (server.address() as AddressInfo).port;
  return {
    port,
    token,
    url: `http://127.0.0.1:${port}/?${TOKEN_QUERY}=${token}`,
    close: () => new Promise<void>((resolve) => {
      for (const ws of wss.clients) ws.terminate();
      for (const s of sessions.values()) s.close();
      sessions.clear();
      sessionless.close();
      wss.close();
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}
