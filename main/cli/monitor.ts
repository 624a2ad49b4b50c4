// The control socket of `porthole run --monitor PATH`: a Unix socket on which other
// `porthole` commands (usb list/add/remove, keys) reach the running VM. One JSON object per
// line each way:
//   → {"id": 1, "method": "attachUsbDevice", "args": [{"kind": "storage", "path": "/img", "readOnly": false}]}
//   ← {"id": 1, "ok": true, "value": {"port": 1, "protocol": "usb3", "device": {...}}}
//   ← {"id": 1, "ok": false, "error": {"code": "not-found", "message": "Disk image /img: it does not exist."}}
// Methods and arguments are the API's USB calls without the VM id (listUsbPorts,
// attachUsbDevice, detachUsbDevice, sendUsbKeys, listUsbPathChoices...), checked by the same validators
// (main/api/usb-input.ts). The socket is the user's own (mode 0600).
import fs from 'node:fs';
import net from 'node:net';
import { ApiError, type ApiErrorShape, type CdromDriveInfo, type UsbPortInfo } from '../api/contract';
import { parseCdromEjectSpec, parseCdromInsertSpec } from '../api/media-input';
import { parseHostUsbAttachSpec, parseUsbCaptureId, parseUsbCaptureOptions, parseUsbDeviceSpec, parseUsbKeys, parseUsbPort, type UsbKeyEvent } from '../api/usb-input';
import type { UsbDeviceConfig } from '../vmm/config';
import { UsbRequestError, type UsbPortState } from '../vmm/shared/usb-messages';
import { CdromRequestError } from '../vmm/shared/cdrom-messages';
import { UsbCaptureError, type UsbCaptureSpec, type UsbCaptureSummary } from '../vmm/host/usb-capture';
import type { StatsSample } from '../vmm/shared/stats';
import { usbPathChoiceInfo, type UsbStartChoice } from '../host/usb-controller-choice';

/** What the socket controls: the VM host's USB requests (VmHost implements it). */
export interface UsbControl {
  usbPorts(): Promise<UsbPortState[]>;
  attachUsb(device: UsbDeviceConfig): Promise<UsbPortState>;
  detachUsb(port: number): Promise<void>;
  sendUsbKeys(events: UsbKeyEvent[]): Promise<void>;
  attachHostUsb(selector: string, port?: number, force?: boolean): Promise<UsbPortState>;
  startUsbCapture?(spec: UsbCaptureSpec): Promise<UsbCaptureSummary>;
  stopUsbCapture?(id: number): Promise<UsbCaptureSummary>;
  /** The statistics registry's counters and their totals now (porthole stats). */
  readStats?(): StatsSample;
  /** CD-ROM media (VmHost): the drives, insert, eject. */
  cdromDrives?(): Promise<CdromDriveInfo[]>;
  insertCdrom?(path: string, drive?: string, force?: boolean): Promise<CdromDriveInfo[]>;
  ejectCdrom?(drive?: string, force?: boolean): Promise<CdromDriveInfo[]>;
  /** How the devices the rules took at start reach the guest (VmHost). */
  readonly usbPathChoicesAtStart?: readonly UsbStartChoice[];
}

export const MONITOR_METHODS = [
  'listUsbPorts', 'attachUsbDevice', 'detachUsbDevice', 'sendUsbKeys', 'attachHostUsbDevice', 'startUsbCapture', 'stopUsbCapture',
  'getVmStats', 'listCdromDrives', 'insertCdrom', 'ejectCdrom', 'listUsbPathChoices',
] as const;

/** What one connection started: its captures stop when it closes (a killed `porthole capture` leaves a whole file). */
export interface MonitorSession {
  captures: Set<number>;
}

export type MonitorMethod = (typeof MONITOR_METHODS)[number];

/** Longest request line; longer input closes the connection. */
export const MONITOR_MAX_LINE = 64 * 1024;

export type MonitorReply =
  | { id: number | null; ok: true; value: unknown }
  | { id: number | null; ok: false; error: ApiErrorShape };

function sentence(text: string): string {
  const t = text.trim();
  const s = t.length > 0 ? t[0].toUpperCase() + t.slice(1) : t;
  return /[.!?]$/.test(s) ? s : `${s}.`;
}

function arity(method: string, args: unknown[], count: number): void {
  if (args.length !== count) throw new ApiError('invalid-argument', `${method} takes ${count === 0 ? 'no arguments' : count === 1 ? 'one argument' : `${count} arguments`}.`);
}

/** Answers one request line; never throws. `onBug` gets failures that are not the caller's. */
export async function handleMonitorLine(
  control: UsbControl, line: string, onBug: (e: unknown) => void = () => {}, session: MonitorSession = { captures: new Set() },
): Promise<MonitorReply> {
  let id: number | null = null;
  try {
    let request: unknown;
    try {
      request = JSON.parse(line);
    } catch {
      throw new ApiError('invalid-argument', 'A request is one JSON object per line.');
    }
    if (typeof request !== 'object' || request === null || Array.isArray(request)) {
      throw new ApiError('invalid-argument', 'A request is a JSON object with "id", "method" and "args".');
    }
    const r = request as Record<string, unknown>;
    if (typeof r.id === 'number' && Number.isInteger(r.id)) id = r.id;
    const method = r.method;
    const args = r.args ?? [];
    if (typeof method !== 'string' || !(MONITOR_METHODS as readonly string[]).includes(method)) {
      throw new ApiError('invalid-argument', `The method must be one of ${MONITOR_METHODS.join(', ')}.`);
    }
    if (!Array.isArray(args)) throw new ApiError('invalid-argument', '"args" must be a list.');
    let value: unknown = null;
    switch (method as MonitorMethod) {
      case 'listUsbPorts':
        arity(method, args, 0);
        value = await control.usbPorts();
        break;
      case 'listUsbPathChoices':
        arity(method, args, 0);
        value = (control.usbPathChoicesAtStart ?? []).map(usbPathChoiceInfo);
        break;
      case 'attachUsbDevice':
        arity(method, args, 1);
        value = await control.attachUsb(parseUsbDeviceSpec(args[0]));
        break;
      case 'detachUsbDevice':
        arity(method, args, 1);
        await control.detachUsb(parseUsbPort(args[0]));
        break;
      case 'sendUsbKeys':
        arity(method, args, 1);
        await control.sendUsbKeys(parseUsbKeys(args[0]));
        break;
      case 'attachHostUsbDevice': {
        arity(method, args, 1);
        const spec = parseHostUsbAttachSpec(args[0]);
        value = await control.attachHostUsb(spec.device, spec.port, spec.force === true);
        break;
      }
      case 'startUsbCapture': {
        arity(method, args, 1);
        if (control.startUsbCapture === undefined) throw new ApiError('invalid-state', 'This VM cannot capture USB.');
        const summary = await control.startUsbCapture(parseUsbCaptureOptions(args[0]));
        session.captures.add(summary.id);
        value = summary;
        break;
      }
      case 'stopUsbCapture': {
        arity(method, args, 1);
        const id = parseUsbCaptureId(args[0]);
        if (control.stopUsbCapture === undefined) throw new ApiError('invalid-state', 'This VM cannot capture USB.');
        value = await control.stopUsbCapture(id);
        session.captures.delete(id);
        break;
      }
      case 'listCdromDrives':
        arity(method, args, 0);
        if (control.cdromDrives === undefined) throw new ApiError('invalid-state', 'This VM has no CD-ROM drive.');
        value = await control.cdromDrives();
        break;
      case 'insertCdrom': {
        arity(method, args, 1);
        const spec = parseCdromInsertSpec(args[0]);
        if (control.insertCdrom === undefined) throw new ApiError('invalid-state', 'This VM has no CD-ROM drive.');
        value = await control.insertCdrom(spec.path, spec.drive, spec.force === true);
        break;
      }
      case 'ejectCdrom': {
        arity(method, args, 1);
        const spec = parseCdromEjectSpec(args[0]);
        if (control.ejectCdrom === undefined) throw new ApiError('invalid-state', 'This VM has no CD-ROM drive.');
        value = await control.ejectCdrom(spec.drive, spec.force === true);
        break;
      }
      case 'getVmStats':
        arity(method, args, 0);
        if (control.readStats === undefined) throw new ApiError('invalid-state', 'This VM has no statistics.');
        value = control.readStats();
        break;
    }
    return { id, ok: true, value };
  } catch (e) {
    if (e instanceof ApiError) return { id, ok: false, error: e.toJSON() };
    if (e instanceof UsbRequestError || e instanceof UsbCaptureError || e instanceof CdromRequestError) return { id, ok: false, error: { code: e.code, message: sentence(e.message) } };
    onBug(e);
    return { id, ok: false, error: { code: 'internal', message: 'Something went wrong inside Porthole; run with --verbose for details.' } };
  }
}

export class MonitorError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MonitorError';
  }
}

/** Whether something listens on the Unix socket at `path`. */
function listening(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(path);
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

export interface MonitorServer {
  readonly path: string;
  close(): void;
}

/**
 * Listens on `path` (mode 0600). A socket left there by a VM that is gone is replaced; any
 * other file, or a socket somebody listens on, is an error.
 */
export async function startMonitor(path: string, control: UsbControl, log: (line: string) => void = () => {}): Promise<MonitorServer> {
  let stat: fs.Stats | null = null;
  try {
    stat = fs.lstatSync(path);
  } catch {
    // Nothing there: good.
  }
  if (stat !== null) {
    if (!stat.isSocket()) throw new MonitorError(`--monitor ${path}: that file exists and is not a socket`);
    if (await listening(path)) throw new MonitorError(`--monitor ${path}: another VM is listening there`);
    fs.unlinkSync(path);
  }
  const connections = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    connections.add(socket);
    const session: MonitorSession = { captures: new Set() };
    socket.on('close', () => {
      connections.delete(socket);
      for (const id of session.captures) control.stopUsbCapture?.(id).catch(() => { /* already stopped */ });
      session.captures.clear();
    });
    socket.on('error', () => socket.destroy());
    let buffered = '';
    // Requests of one connection are answered in order.
    let queue: Promise<void> = Promise.resolve();
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      buffered += chunk;
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        if (line.trim() === '') continue;
        queue = queue.then(async () => {
          const reply = await handleMonitorLine(control, line, (e) => log(`monitor: ${(e as Error).stack ?? String(e)}`), session);
          if (!socket.destroyed) socket.write(`${JSON.stringify(reply)}\n`);
        });
      }
      if (buffered.length > MONITOR_MAX_LINE) {
        socket.end(`${JSON.stringify({ id: null, ok: false, error: { code: 'invalid-argument', message: 'The request line is too long.' } })}\n`);
        buffered = '';
      }
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => reject(new MonitorError(`--monitor ${path}: cannot listen there (${e.code ?? e.message})`)));
    server.listen(path, () => resolve());
  });
  fs.chmodSync(path, 0o600);
  server.unref();
  return {
    path,
    close: () => {
      for (const c of connections) c.destroy();
      server.close();
      try {
        fs.unlinkSync(path);
      } catch {
        // Already gone.
      }
    },
  };
}

/**
 * Sends one request to the VM listening on `path`; resolves with its value or rejects with its
 * sentence. With `timeoutMs`, a VM that has not answered by then is given up on.
 */
export function monitorCall(path: string, method: MonitorMethod, args: unknown[], timeoutMs?: number): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(path);
    let buffered = '';
    let settled = false;
    const timer = timeoutMs === undefined ? null : setTimeout(() => settle(() => reject(new MonitorError(
      `the VM at ${path} did not answer ${method} within ${timeoutMs >= 1000 ? `${Math.round(timeoutMs / 1000)} s` : `${timeoutMs} ms`}`))), timeoutMs);
    const settle = (fn: () => void) => {
      if (settled) return;
      settled = true;
      if (timer !== null) clearTimeout(timer);
      socket.destroy();
      fn();
    };
    socket.setEncoding('utf8');
    socket.once('connect', () => socket.write(`${JSON.stringify({ id: 1, method, args })}\n`));
    socket.on('data', (chunk: string) => {
      buffered += chunk;
      const nl = buffered.indexOf('\n');
      if (nl < 0) return;
      let reply: MonitorReply;
      try {
        reply = JSON.parse(buffered.slice(0, nl)) as MonitorReply;
      } catch {
        settle(() => reject(new MonitorError(`the VM at ${path} answered something that is not JSON`)));
        return;
      }
      settle(() => (reply.ok ? resolve(reply.value) : reject(new MonitorError(reply.error?.message ?? 'the request failed'))));
    });
    socket.on('error', (e: NodeJS.ErrnoException) => settle(() => reject(new MonitorError(
      e.code === 'ENOENT' || e.code === 'ECONNREFUSED'
        ? `no VM is listening on ${path} (start one with porthole run --monitor ${path})`
        : `cannot reach the VM at ${path}: ${e.code ?? e.message}`))));
    socket.on('end', () => settle(() => reject(new MonitorError(`the VM at ${path} closed the connection without answering`))));
  });
}

/** A port list as lines for a terminal: "5  usb2  1d6b:0101  full   Porthole USB Keyboard". */
export function formatUsbPorts(ports: readonly (UsbPortInfo | UsbPortState)[]): string {
  const hex = (n: number) => n.toString(16).padStart(4, '0');
  return ports.map((p) => {
    const head = `${String(p.port).padEnd(2)} ${p.protocol}`;
    const d = p.device;
    if (d === null) return `${head}  -\n`;
    const image = d.path !== null ? `  ${d.path}${d.readOnly ? ' (read-only)' : ''}` : d.endpoint ? `  ${d.endpoint}` : 'hostDevice' in d && d.hostDevice ? `  host ${d.hostDevice}` : '';
    return `${head}  ${hex(d.vendorId)}:${hex(d.productId)}  ${d.speed.padEnd(5)}  ${d.product}${image}\n`;
  }).join('');
}

/**
 * `porthole capture`: starts a capture over one connection that stays open, and stops it when
 * `until` resolves (Ctrl-C) or the VM goes away. Resolves with the summary of the stopped capture.
 */
export function monitorCapture(path: string, spec: UsbCaptureSpec, until: Promise<void>, onStarted: (s: UsbCaptureSummary) => void): Promise<{ summary: UsbCaptureSummary | null; vmGone: boolean }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(path);
    let buffered = '';
    let started: UsbCaptureSummary | null = null;
    let done = false;
    const finish = (fn: () => void) => {
      if (done) return;
      done = true;
      socket.destroy();
      fn();
    };
    socket.setEncoding('utf8');
    socket.once('connect', () => socket.write(`${JSON.stringify({ id: 1, method: 'startUsbCapture', args: [spec] })}\n`));
    socket.on('data', (chunk: string) => {
      buffered += chunk;
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        let reply: MonitorReply;
        try {
          reply = JSON.parse(buffered.slice(0, nl)) as MonitorReply;
        } catch {
          finish(() => reject(new MonitorError(`the VM at ${path} answered something that is not JSON`)));
          return;
        }
        buffered = buffered.slice(nl + 1);
        if (!reply.ok) {
          finish(() => reject(new MonitorError(reply.error?.message ?? 'the request failed')));
          return;
        }
        if (reply.id === 1) {
          started = reply.value as UsbCaptureSummary;
          onStarted(started);
          void until.then(() => {
            if (!done) socket.write(`${JSON.stringify({ id: 2, method: 'stopUsbCapture', args: [(started as UsbCaptureSummary).id] })}\n`);
          });
        } else if (reply.id === 2) {
          const summary = reply.value as UsbCaptureSummary;
          finish(() => resolve({ summary, vmGone: false }));
        }
      }
    });
    socket.on('error', (e: NodeJS.ErrnoException) => finish(() => reject(new MonitorError(
      e.code === 'ENOENT' || e.code === 'ECONNREFUSED'
        ? `no VM is listening on ${path} (start one with porthole run --monitor ${path})`
        : `cannot reach the VM at ${path}: ${e.code ?? e.message}`))));
    // The VM ended: it closed the capture's file itself.
    socket.on('close', () => finish(() => (started === null
      ? reject(new MonitorError(`the VM at ${path} closed the connection without answering`))
      : resolve({ summary: started, vmGone: true }))));
  });
}
