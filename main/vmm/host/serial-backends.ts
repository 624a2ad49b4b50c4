// Host ends of the guest's serial ports: stdio, files, PTYs, TCP and UNIX sockets and
// real serial devices. They run on the VM host thread and never block it: every
// descriptor is non-blocking, and output that cannot be delivered is either held
// back (the endpoint reports `congested`, so the guest's UART shows THR busy) or, when
// nobody is there to receive it, dropped and counted.
import fs from 'node:fs';
import net from 'node:net';
import tty from 'node:tty';
import { libc, NativeError } from '../../../native';
import type { SerialBackend } from '../config';
import type { LineSettings, ModemControl } from '../devices/context';

export interface SerialEndpoint {
  /** Human-readable: "stdio", "/dev/pts/5", "tcp 127.0.0.1:4555", … */
  readonly description: string;
  write(data: Uint8Array): void;
  close(): void;
  applyLineSettings?(settings: LineSettings): void;
  applyModemControl?(modem: ModemControl): void;
  /**
   * True while a receiver that is present cannot take more output. The VM host then
   * stops draining the port's ring, so the guest sees a busy transmitter and waits.
   */
  readonly congested?: boolean;
  /** Output bytes thrown away because nobody was there to receive them (or a buffer overflowed). */
  readonly dropped?: number;
}

export interface ModemStatusLines {
  cts: boolean;
  dsr: boolean;
  ri: boolean;
  dcd: boolean;
}

export interface SerialEndpointOptions {
  label: string;
  onInput(data: Uint8Array): void;
  /** CTS/DSR/RI/DCD of a real serial device changed (device backend). */
  onModemStatus?(lines: ModemStatusLines): void;
  /** Connection changes and problems worth a line in the VM's log. */
  onLog?(text: string): void;
  /** An endpoint that reported `congested` can take output again (the VM host drains the ring). */
  onWritable?(): void;
}

/** Output held for a present but slow receiver before the endpoint reports congestion. */
const CONGESTION_BYTES = 64 * 1024;
/** Output kept for a PTY reader that is not keeping up; beyond it bytes are dropped. */
const PTY_BACKLOG_BYTES = 1024 * 1024;
/** How often a detached PTY is checked for a new reader, and a real device for modem line changes. */
const PTY_ATTACH_POLL_MS = 200;
const MODEM_POLL_MS = 100;
const FLUSH_RETRY_MS = 5;

export async function openSerialBackend(spec: SerialBackend, opts: SerialEndpointOptions): Promise<SerialEndpoint> {
  switch (spec.kind) {
    case 'stdio':
      return openStdio(opts);
    case 'file':
      return openFile(spec.path, opts);
    case 'pty':
      return new PtyEndpoint(opts);
    case 'tcp':
      return spec.listen
        ? SocketEndpoint.listen({ host: spec.host, port: spec.port }, `tcp-listen ${spec.host}:${spec.port}`, opts)
        : SocketEndpoint.connect({ host: spec.host, port: spec.port }, `tcp ${spec.host}:${spec.port}`, opts);
    case 'unix':
      return spec.listen
        ? SocketEndpoint.listenUnix(spec.path, opts)
        : SocketEndpoint.connect({ path: spec.path }, `unix ${spec.path}`, opts);
    case 'device':
      return new DeviceEndpoint(spec.path, opts);
    case 'none':
      throw new Error(`${opts.label}: no backend`);
  }
}

function openStdio(opts: SerialEndpointOptions): SerialEndpoint {
  const stdin = process.stdin;
  const wasRaw = stdin.isTTY ? stdin.isRaw : false;
  const onData = (d: Buffer) => opts.onInput(d);
  if (stdin.isTTY) stdin.setRawMode(true);
  stdin.on('data', onData);
  stdin.resume();
  return {
    description: 'stdio',
    write: (data) => { process.stdout.write(data); },
    close: () => {
      stdin.off('data', onData);
      if (stdin.isTTY) stdin.setRawMode(wasRaw);
      stdin.pause();
    },
  };
}

function openFile(file: string, opts: SerialEndpointOptions): SerialEndpoint {
  let fd: number;
  try {
    fd = fs.openSync(file, 'a');
  } catch (e) {
    throw new Error(`${opts.label}: cannot open ${file} for writing: ${describeError(e)}`);
  }
  return {
    description: `file ${file}`,
    write: (data) => { fs.writeSync(fd, data); },
    close: () => { fs.fsyncSync(fd); fs.closeSync(fd); },
  };
}

// --- errors -------------------------------------------------------------------------

const ERROR_TEXT: Record<string, string> = {
  ENOENT: 'no such file or directory',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EBUSY: 'device or resource busy',
  ENXIO: 'no such device or address',
  ENODEV: 'no such device',
  ENOTTY: 'not a terminal',
  EIO: 'input/output error',
  EISDIR: 'is a directory',
  ENOTDIR: 'not a directory',
  ECONNREFUSED: 'connection refused',
  ECONNRESET: 'connection reset by peer',
  EADDRINUSE: 'address already in use',
  EADDRNOTAVAIL: 'address not available',
  ENOTSOCK: 'not a socket',
  ETIMEDOUT: 'timed out',
  EHOSTUNREACH: 'host unreachable',
  ENETUNREACH: 'network unreachable',
  ENOTFOUND: 'host name not found',
  EAI_AGAIN: 'host name lookup failed',
  ENAMETOOLONG: 'name too long',
};

/** "ENOENT (no such file or directory)" for an errno-carrying error, else its message. */
export function describeError(e: unknown): string {
  if (e instanceof NativeError) return e.message.slice(e.call.length + 2);
  const code = (e as NodeJS.ErrnoException | null)?.code;
  if (typeof code === 'string') return ERROR_TEXT[code] ? `${code} (${ERROR_TEXT[code]})` : code;
  return e instanceof Error ? e.message : String(e);
}

// --- reading a non-blocking tty descriptor --------------------------------------------

/**
 * Reads a tty fd through libuv (no polling, no blocked thread). The stream gets its own
 * duplicate of `fd` because it closes what it reads from when it ends; libuv may also
 * reopen a non-master tty by name and leave the duplicate to us, which we then close.
 */
class TtyReader {
  private stream: tty.ReadStream | null;
  private readonly spareFd: number | null;

  constructor(fd: number, onData: (data: Buffer) => void, onEnd: (error: Error | null) => void) {
    const readFd = libc.dup(fd);
    let stream: tty.ReadStream;
    try {
      stream = new tty.ReadStream(readFd);
    } catch (e) {
      libc.close(readFd);
      throw e;
    }
    const usedFd = (stream as unknown as { _handle?: { fd?: number } })._handle?.fd;
    this.spareFd = usedFd !== undefined && usedFd !== readFd ? readFd : null;
    this.stream = stream;
    stream.on('data', onData);
    stream.on('error', (e) => { this.stop(); onEnd(e); });
    stream.on('end', () => { this.stop(); onEnd(null); });
  }

  stop(): void {
    const stream = this.stream;
    if (!stream) return;
    this.stream = null;
    stream.removeAllListeners('data');
    stream.on('error', () => { /* ending anyway */ });
    stream.destroy();
    if (this.spareFd !== null) closeQuietly(this.spareFd);
  }
}

function closeQuietly(fd: number): void {
  try {
    libc.close(fd);
  } catch {
    // Already gone; nothing else holds it.
  }
}

/**
 * Output for a non-blocking fd: what the fd does not take now (EAGAIN) waits and is
 * retried from a short timer. The owner decides what a failed write means.
 */
class FdWriter {
  private chunks: Uint8Array[] = [];
  private retryTimer: NodeJS.Timeout | null = null;
  private stopped = false;
  bytes = 0;
  constructor(
    private readonly fd: number,
    private readonly events: { onError(): void; onDrained?(): void; onWritten?(): void },
  ) {}

  write(data: Uint8Array): void {
    this.chunks.push(data);
    this.bytes += data.length;
    this.flush();
  }

  private flush(): void {
    while (this.chunks.length > 0) {
      const chunk = this.chunks[0];
      let n: number;
      try {
        n = libc.write(this.fd, chunk);
      } catch {
        this.events.onError();
        return;
      }
      if (n < 0) break; // EAGAIN/EINTR: try again later
      this.bytes -= n;
      this.events.onWritten?.();
      if (n === chunk.length) this.chunks.shift();
      else this.chunks[0] = chunk.subarray(n);
    }
    if (this.bytes === 0) {
      this.events.onDrained?.();
    } else if (!this.retryTimer) {
      this.retryTimer = setTimeout(() => {
        this.retryTimer = null;
        if (!this.stopped) this.flush();
      }, FLUSH_RETRY_MS);
    }
  }

  /** Drops what is waiting (the caller counts it first if it wants to). */
  clear(): void {
    this.chunks = [];
    this.bytes = 0;
  }

  stop(): void {
    this.stopped = true;
    this.clear();
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
  }
}

// --- PTY ------------------------------------------------------------------------------

/**
 * A new pseudo-terminal; its slave path (/dev/pts/N) is what a terminal program opens.
 * The slave is in raw mode so bytes pass unchanged both ways. A slave that was never
 * opened buffers in the kernel; once a reader has come and gone the master reports
 * hang-up and output is dropped until someone opens the slave again.
 */
class PtyEndpoint implements SerialEndpoint {
  readonly description: string;
  dropped = 0;
  private readonly fd: number;
  private reader: TtyReader | null = null;
  private attached = true;
  private closed = false;
  private readonly pending: FdWriter;
  private attachTimer: NodeJS.Timeout | null = null;
  private dropping = false;

  constructor(private readonly opts: SerialEndpointOptions) {
    let pty: { fd: number; path: string };
    try {
      pty = libc.openPty(libc.O_NONBLOCK);
    } catch (e) {
      throw new Error(`${opts.label}: cannot create a pseudo-terminal: ${describeError(e)}`);
    }
    this.fd = pty.fd;
    this.description = pty.path;
    this.pending = new FdWriter(this.fd, {
      // EIO before the reader noticed the hang-up: count it and carry on.
      onError: () => { this.dropped += this.pending.bytes; this.pending.clear(); },
      onDrained: () => { this.dropping = false; },
    });
    try {
      // On Linux, termios calls on the master act on the slave.
      const termios = libc.tcgetattr(this.fd);
      libc.cfmakeraw(termios);
      libc.tcsetattr(this.fd, termios);
      this.startReader();
    } catch (e) {
      closeQuietly(this.fd);
      throw new Error(`${opts.label}: cannot set up pseudo-terminal ${pty.path}: ${describeError(e)}`);
    }
  }

  /** The slave path, e.g. /dev/pts/5. */
  get path(): string {
    return this.description;
  }

  private startReader(): void {
    this.reader = new TtyReader(this.fd, (data) => this.opts.onInput(data), () => {
      // EIO: the last process with the slave open closed it.
      this.reader = null;
      if (!this.closed) this.detach();
    });
  }

  private detach(): void {
    if (!this.attached) return;
    this.attached = false;
    this.pending.clear();
    this.opts.onLog?.(`${this.opts.label}: ${this.path} closed by its reader; output is dropped until it is opened again`);
    this.attachTimer = setInterval(() => this.checkAttached(), PTY_ATTACH_POLL_MS);
    this.attachTimer.unref();
  }

  private checkAttached(): void {
    const revents = libc.poll([{ fd: this.fd, events: libc.POLLIN }], 0)[0];
    if ((revents & libc.POLLHUP) !== 0) return;
    if (this.attachTimer) clearInterval(this.attachTimer);
    this.attachTimer = null;
    this.attached = true;
    this.dropping = false;
    this.startReader();
  }

  write(data: Uint8Array): void {
    if (this.closed) return;
    if (!this.attached) {
      this.dropped += data.length;
      return;
    }
    if (this.pending.bytes + data.length > PTY_BACKLOG_BYTES) {
      // A reader that does not keep up must not stall the guest: drop, and say so once.
      this.dropped += data.length;
      if (!this.dropping) this.opts.onLog?.(`${this.opts.label}: ${this.path} is not being read fast enough; dropping output`);
      this.dropping = true;
      return;
    }
    this.pending.write(data);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.pending.stop();
    if (this.attachTimer) clearInterval(this.attachTimer);
    this.reader?.stop();
    this.reader = null;
    closeQuietly(this.fd);
  }
}

// --- TCP and UNIX sockets ---------------------------------------------------------------

/** One connected peer at a time, either dialled out or accepted. */
class SocketEndpoint implements SerialEndpoint {
  dropped = 0;
  private client: net.Socket | null = null;
  private server: net.Server | null = null;
  private closed = false;

  private constructor(readonly description: string, private readonly opts: SerialEndpointOptions) {}

  static connect(target: { host: string; port: number } | { path: string }, description: string, opts: SerialEndpointOptions): Promise<SocketEndpoint> {
    const endpoint = new SocketEndpoint(description, opts);
    return new Promise((resolve, reject) => {
      const socket = net.connect(target);
      const fail = (e: Error) => {
        socket.destroy();
        reject(new Error(`${opts.label}: cannot connect to ${describeTarget(target)}: ${describeError(e)}`));
      };
      socket.once('error', fail);
      socket.once('connect', () => {
        socket.off('error', fail);
        endpoint.adopt(socket, 'connection');
        resolve(endpoint);
      });
    });
  }

  static listen(target: { host: string; port: number }, description: string, opts: SerialEndpointOptions): Promise<SocketEndpoint> {
    return new SocketEndpoint(description, opts).startServer(target);
  }

  static async listenUnix(path: string, opts: SerialEndpointOptions): Promise<SocketEndpoint> {
    await removeStaleSocket(path, opts.label);
    return new SocketEndpoint(`unix-listen ${path}`, opts).startServer({ path });
  }

  private startServer(target: { host: string; port: number } | { path: string }): Promise<SocketEndpoint> {
    const server = net.createServer((socket) => this.accept(socket));
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', (e) => reject(new Error(`${this.opts.label}: cannot listen on ${describeTarget(target)}: ${describeError(e)}`)));
      server.listen(target, () => {
        server.removeAllListeners('error');
        server.on('error', (e) => this.opts.onLog?.(`${this.opts.label}: ${describeError(e)}`));
        const address = server.address();
        if (address && typeof address === 'object') {
          // Show the port actually bound (port 0 picks a free one).
          (this as { description: string }).description = `tcp-listen ${address.address}:${address.port}`;
        }
        resolve(this);
      });
    });
  }

  /** The bound TCP port of a listening endpoint. */
  get port(): number | null {
    const address = this.server?.address();
    return address && typeof address === 'object' ? address.port : null;
  }

  private accept(socket: net.Socket): void {
    if (this.client || this.closed) {
      // One client at a time: a second one is turned away, the first keeps the port.
      socket.destroy();
      this.opts.onLog?.(`${this.opts.label}: refused a second client on ${this.description}`);
      return;
    }
    this.adopt(socket, 'client');
    this.opts.onLog?.(`${this.opts.label}: client connected to ${this.description}`);
  }

  private adopt(socket: net.Socket, what: string): void {
    this.client = socket;
    if (socket.setNoDelay) socket.setNoDelay(true);
    socket.on('data', (data: Buffer) => this.opts.onInput(data));
    // Congestion means write() returned false, so 'drain' follows once the queue empties.
    socket.on('drain', () => this.opts.onWritable?.());
    socket.on('error', () => { /* 'close' follows and says what happened */ });
    socket.on('close', () => {
      if (this.client === socket) {
        this.client = null;
        // A congested client is gone: its output is dropped now, so the ring drains again.
        this.opts.onWritable?.();
      }
      if (!this.closed) this.opts.onLog?.(`${this.opts.label}: ${what} on ${this.description} closed`);
    });
  }

  get congested(): boolean {
    return this.client !== null && this.client.writableLength > CONGESTION_BYTES;
  }

  write(data: Uint8Array): void {
    const client = this.client;
    if (!client || client.destroyed || !client.writable) {
      this.dropped += data.length; // nobody connected
      return;
    }
    client.write(data);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.client?.destroy();
    this.client = null;
    this.server?.close();
    this.server = null;
  }
}

function describeTarget(target: { host: string; port: number } | { path: string }): string {
  return 'path' in target ? target.path : `${target.host}:${target.port}`;
}

/** A socket file left by a VM that is gone is removed; anything else in the way is an error. */
async function removeStaleSocket(path: string, label: string): Promise<void> {
  let stat: fs.Stats;
  try {
    stat = fs.lstatSync(path);
  } catch {
    return; // nothing there
  }
  if (!stat.isSocket()) throw new Error(`${label}: cannot listen on ${path}: it exists and is not a socket`);
  const live = await new Promise<boolean>((resolve) => {
    const probe = net.connect({ path });
    probe.once('connect', () => { probe.destroy(); resolve(true); });
    probe.once('error', () => resolve(false));
  });
  if (live) throw new Error(`${label}: cannot listen on ${path}: another program is listening there`);
  fs.unlinkSync(path);
}

// --- real serial devices ------------------------------------------------------------------

// termios c_cflag bits and Bxxx speeds (asm-generic/termbits.h).
const TERMIOS_CFLAG = 8;
const TERMIOS_CC = 17;
const VTIME = 5;
const VMIN = 6;
const CBAUD = 0o10017;
const CSIZE = 0o60;
const CSTOPB = 0o100;
const CREAD = 0o200;
const PARENB = 0o400;
const PARODD = 0o1000;
const CLOCAL = 0o4000;
const CMSPAR = 0o10000000000;
const CRTSCTS = 0o20000000000;
const CHARACTER_SIZE: Record<LineSettings['dataBits'], number> = { 5: 0, 6: 0o20, 7: 0o40, 8: 0o60 };

export const BAUD_CONSTANTS: readonly [number, number][] = [
  [50, 1], [75, 2], [110, 3], [134, 4], [150, 5], [200, 6], [300, 7], [600, 8], [1200, 9], [1800, 10],
  [2400, 11], [4800, 12], [9600, 13], [19200, 14], [38400, 15], [57600, 0o10001], [115200, 0o10002],
  [230400, 0o10003], [460800, 0o10004], [500000, 0o10005], [576000, 0o10006], [921600, 0o10007],
  [1000000, 0o10010], [1152000, 0o10011], [1500000, 0o10012], [2000000, 0o10013], [2500000, 0o10014],
  [3000000, 0o10015], [3500000, 0o10016], [4000000, 0o10017],
];

/** The standard rate nearest to `baud` (by ratio, so 28800 picks 38400 over 19200) and its Bxxx constant. */
export function nearestBaud(baud: number): { baud: number; constant: number } {
  let best = BAUD_CONSTANTS[0];
  let bestDistance = Number.POSITIVE_INFINITY;
  for (const entry of BAUD_CONSTANTS) {
    const distance = Math.abs(Math.log(entry[0] / Math.max(baud, 1)));
    if (distance < bestDistance) {
      best = entry;
      bestDistance = distance;
    }
  }
  return { baud: best[0], constant: best[1] };
}

/** The c_cflag for `settings`, keeping the bits of `cflag` that the guest does not control. */
export function cflagFor(cflag: number, settings: LineSettings): number {
  let c = cflag & ~(CBAUD | CSIZE | CSTOPB | PARENB | PARODD | CMSPAR | CRTSCTS);
  c |= CHARACTER_SIZE[settings.dataBits] | CREAD | CLOCAL;
  if (settings.stopBits === 2) c |= CSTOPB;
  switch (settings.parity) {
    case 'none': break;
    case 'even': c |= PARENB; break;
    case 'odd': c |= PARENB | PARODD; break;
    case 'mark': c |= PARENB | CMSPAR | PARODD; break;
    case 'space': c |= PARENB | CMSPAR; break;
  }
  return (c | nearestBaud(settings.baud).constant) >>> 0;
}

/**
 * A host serial port (/dev/ttyS0, /dev/ttyUSB0, …). The guest's line settings and
 * DTR/RTS are applied to it; its CTS/DSR/RI/DCD are polled and forwarded to the guest.
 * Flow control is the guest's business (it sees CTS), so the host driver's is off.
 */
class DeviceEndpoint implements SerialEndpoint {
  readonly description: string;
  dropped = 0;
  private readonly fd: number;
  private reader: TtyReader | null = null;
  private readonly pending: FdWriter;
  private modemTimer: NodeJS.Timeout | null = null;
  private lastModemBits = -1;
  private hasModemLines = true;
  private failed = false;
  private closed = false;
  /** Output was held back as congested, and the VM host has not been told it may go on. */
  private wasCongested = false;

  constructor(readonly path: string, private readonly opts: SerialEndpointOptions) {
    this.description = path;
    try {
      this.fd = libc.open(path, libc.O_RDWR | libc.O_NOCTTY | libc.O_NONBLOCK);
    } catch (e) {
      throw new Error(`${opts.label}: cannot open ${path}: ${describeError(e)}`);
    }
    this.pending = new FdWriter(this.fd, {
      onError: () => { this.dropped += this.pending.bytes; this.fail('write failed'); },
      onWritten: () => { if (this.wasCongested && !this.congested) this.becameWritable(); },
    });
    try {
      let termios: Buffer;
      try {
        termios = libc.tcgetattr(this.fd);
      } catch (e) {
        throw new Error(`${opts.label}: ${path} is not a serial device: ${describeError(e)}`);
      }
      libc.cfmakeraw(termios);
      termios.writeUInt32LE(((termios.readUInt32LE(TERMIOS_CFLAG) | CREAD | CLOCAL) & ~CRTSCTS) >>> 0, TERMIOS_CFLAG);
      termios[TERMIOS_CC + VMIN] = 1;
      termios[TERMIOS_CC + VTIME] = 0;
      try {
        libc.tcsetattr(this.fd, termios);
      } catch (e) {
        throw new Error(`${opts.label}: cannot set raw mode on ${path}: ${describeError(e)}`);
      }
      this.reader = new TtyReader(this.fd, (data) => opts.onInput(data), (error) => {
        this.reader = null;
        if (!this.closed) this.fail(`reading stopped${error ? `: ${describeError(error)}` : ''}`);
      });
    } catch (e) {
      closeQuietly(this.fd);
      throw e;
    }
    this.pollModemLines();
    if (this.hasModemLines && !this.failed) {
      this.modemTimer = setInterval(() => this.pollModemLines(), MODEM_POLL_MS);
      this.modemTimer.unref();
    }
  }

  private becameWritable(): void {
    this.wasCongested = false;
    this.opts.onWritable?.();
  }

  private fail(why: string): void {
    if (this.failed) return;
    this.failed = true;
    this.pending.clear();
    // Output is dropped from now on: the VM host must drain the ring again.
    if (this.wasCongested) this.becameWritable();
    if (this.modemTimer) clearInterval(this.modemTimer);
    this.modemTimer = null;
    this.opts.onLog?.(`${this.opts.label}: ${this.path}: ${why}; its output is dropped from now on`);
  }

  get congested(): boolean {
    return !this.failed && this.pending.bytes > CONGESTION_BYTES;
  }

  write(data: Uint8Array): void {
    if (this.closed || this.failed) {
      this.dropped += data.length;
      return;
    }
    this.pending.write(data);
    if (this.congested) this.wasCongested = true;
  }

  applyLineSettings(settings: LineSettings): void {
    if (this.closed || this.failed) return;
    try {
      const termios = libc.tcgetattr(this.fd);
      const cflag = cflagFor(termios.readUInt32LE(TERMIOS_CFLAG), settings);
      termios.writeUInt32LE(cflag, TERMIOS_CFLAG);
      libc.cfsetspeed(termios, nearestBaud(settings.baud).constant);
      libc.tcsetattr(this.fd, termios);
    } catch (e) {
      this.opts.onLog?.(`${this.opts.label}: cannot apply ${settings.baud} baud ${settings.dataBits}${settings.parity[0].toUpperCase()}${settings.stopBits} to ${this.path}: ${describeError(e)}`);
    }
  }

  applyModemControl(modem: ModemControl): void {
    if (this.closed || this.failed || !this.hasModemLines) return;
    try {
      let bits = libc.tiocmget(this.fd);
      bits = modem.dtr ? bits | libc.TIOCM_DTR : bits & ~libc.TIOCM_DTR;
      bits = modem.rts ? bits | libc.TIOCM_RTS : bits & ~libc.TIOCM_RTS;
      libc.tiocmset(this.fd, bits);
    } catch (e) {
      this.noModemLines(e);
    }
  }

  private pollModemLines(): void {
    if (this.closed || this.failed || !this.hasModemLines) return;
    let bits: number;
    try {
      bits = libc.tiocmget(this.fd);
    } catch (e) {
      this.noModemLines(e);
      return;
    }
    const inputs = bits & (libc.TIOCM_CTS | libc.TIOCM_DSR | libc.TIOCM_RNG | libc.TIOCM_CAR);
    if (inputs === this.lastModemBits) return;
    this.lastModemBits = inputs;
    this.opts.onModemStatus?.({
      cts: (inputs & libc.TIOCM_CTS) !== 0,
      dsr: (inputs & libc.TIOCM_DSR) !== 0,
      ri: (inputs & libc.TIOCM_RNG) !== 0,
      dcd: (inputs & libc.TIOCM_CAR) !== 0,
    });
  }

  /** Devices without modem lines (PTYs, some adapters) answer ENOTTY/EINVAL: stop asking. */
  private noModemLines(e: unknown): void {
    this.hasModemLines = false;
    if (this.modemTimer) clearInterval(this.modemTimer);
    this.modemTimer = null;
    this.opts.onLog?.(`${this.opts.label}: ${this.path} has no modem control lines (${describeError(e)}); DTR/RTS/CTS/DSR/RI/DCD are not forwarded`);
  }

  /** Whether the device answers modem line ioctls. */
  get modemLines(): boolean {
    return this.hasModemLines;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.pending.stop();
    if (this.modemTimer) clearInterval(this.modemTimer);
    this.reader?.stop();
    this.reader = null;
    closeQuietly(this.fd);
  }
}
