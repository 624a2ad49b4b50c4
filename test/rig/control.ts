// The rig's control channel: a virtio-serial port (org.porthole.rig) between a scenario in L1
// and the runner on the rig host, carrying one JSON object per line each way. L1 sends
// requests ({ t: 'req', id, op, ... }) and test events ({ t: 'event', ... }); the runner
// answers requests ({ t: 'reply', id, ok, value | error }). The serial console stays for
// humans and for the RIG-* markers.
import fs from 'node:fs';
import net from 'node:net';

export const CONTROL_PORT_NAME = 'org.porthole.rig';

export type ControlMessage = Record<string, unknown> & { t: string };

/** Splits a byte stream into JSON objects, one a line; a line that is not one is reported, not thrown. */
export function jsonLineSplitter(onObject: (m: Record<string, unknown>) => void, onGarbage: (line: string) => void): (chunk: Buffer) => void {
  let partial = '';
  return (chunk) => {
    partial += chunk.toString('utf8');
    let nl: number;
    while ((nl = partial.indexOf('\n')) >= 0) {
      const line = partial.slice(0, nl).trim();
      partial = partial.slice(nl + 1);
      if (!line) continue;
      let m: unknown;
      try { m = JSON.parse(line); } catch { onGarbage(line); continue; }
      if (m && typeof m === 'object' && !Array.isArray(m)) onObject(m as Record<string, unknown>);
      else onGarbage(line);
    }
  };
}

// ---- the runner's side (rig host) ----

export type RequestHandler = (op: string, msg: ControlMessage) => Promise<unknown>;

/**
 * Listens on a UNIX socket that QEMU connects its virtserialport chardev to. Requests go to
 * `handle`; everything else to `onMessage`.
 */
export class ControlServer {
  private readonly server: net.Server;
  private socket: net.Socket | null = null;

  private constructor(server: net.Server, private readonly handle: RequestHandler, private readonly onMessage: (m: ControlMessage) => void,
    private readonly onGarbage: (line: string) => void) {
    this.server = server;
    server.on('connection', (s) => {
      this.socket?.destroy();
      this.socket = s;
      s.on('data', jsonLineSplitter((m) => {
        if (typeof m.t === 'string') this.dispatch(m as ControlMessage);
        else this.onGarbage(JSON.stringify(m));
      }, this.onGarbage));
      s.on('error', () => { /* QEMU went away; the runner notices through QEMU's exit */ });
    });
  }

  static async listen(socketPath: string, handle: RequestHandler, onMessage: (m: ControlMessage) => void,
    onGarbage: (line: string) => void): Promise<ControlServer> {
    try { fs.unlinkSync(socketPath); } catch { /* not there */ }
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => { server.off('error', reject); resolve(); });
    });
    return new ControlServer(server, handle, onMessage, onGarbage);
  }

  private dispatch(m: ControlMessage): void {
    if (m.t === 'bye') { this.send({ t: 'bye' }); return; }
    if (m.t !== 'req') { this.onMessage(m); return; }
    const id = m.id;
    const op = typeof m.op === 'string' ? m.op : '';
    this.handle(op, m).then(
      (value) => this.send({ t: 'reply', id, ok: true, value: value ?? null }),
      (e: Error) => this.send({ t: 'reply', id, ok: false, error: e.message }),
    );
  }

  private send(m: ControlMessage): void {
    this.socket?.write(JSON.stringify(m) + '\n');
  }

  close(): void {
    this.socket?.destroy();
    this.server.close();
  }
}

// ---- the scenario's side (inside L1) ----

/** The /dev node of the rig's control port, or null when L1 has none (no virtio_console). */
export function findControlPort(): string | null {
  const dir = '/sys/class/virtio-ports';
  let ports: string[] = [];
  try { ports = fs.readdirSync(dir); } catch { return null; }
  for (const p of ports) {
    try {
      if (fs.readFileSync(`${dir}/${p}/name`, 'utf8').trim() === CONTROL_PORT_NAME) return `/dev/${p}`;
    } catch { /* next */ }
  }
  return null;
}

export class ControlClient {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private readonly fd: number;
  private readonly out: fs.WriteStream;
  private closing = false;
  private reading = true;
  private readLoopEnded: Promise<void>;

  constructor(devicePath: string) {
    // A virtio port opens once, so one fd serves both ways. Reads block in a thread-pool
    // thread; node cannot exit while one does, so close() has the runner answer a "bye"
    // and issues no read after it.
    this.fd = fs.openSync(devicePath, 'r+');
    this.out = fs.createWriteStream('', { fd: this.fd, autoClose: false });
    const split = jsonLineSplitter((m) => this.onMessage(m as ControlMessage), () => { /* nothing but replies comes this way */ });
    this.readLoopEnded = new Promise((resolve) => {
      const buf = Buffer.alloc(65536);
      const next = () => {
        fs.read(this.fd, buf, 0, buf.length, null, (err, n) => {
          if (err || n === 0) {
            this.failAll(err ?? new Error('the rig control channel closed'));
            this.reading = false;
            resolve();
            return;
          }
          split(buf.subarray(0, n));
          if (this.closing) { this.reading = false; resolve(); return; }
          next();
        });
      };
      next();
    });
  }

  private onMessage(m: ControlMessage): void {
    if (m.t === 'bye') { this.closing = true; return; }
    if (m.t !== 'reply' || typeof m.id !== 'number') return;
    const p = this.pending.get(m.id);
    if (!p) return;
    this.pending.delete(m.id);
    if (m.ok) p.resolve(m.value);
    else p.reject(new Error(String(m.error)));
  }

  private failAll(e: Error): void {
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }

  /** Sends a message that needs no answer (test events, progress). */
  send(m: ControlMessage): Promise<void> {
    return new Promise((resolve, reject) => this.out.write(JSON.stringify(m) + '\n', (e) => (e ? reject(e) : resolve())));
  }

  /** Asks the runner to do something on the rig host and waits for its answer. */
  request<T = unknown>(op: string, args: Record<string, unknown> = {}, timeoutMs = 60000): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`the rig runner did not answer "${op}" within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (v) => { clearTimeout(timer); resolve(v as T); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      });
      this.send({ ...args, t: 'req', id, op }).catch((e: Error) => { clearTimeout(timer); this.pending.delete(id); reject(e); });
    });
  }

  /** Ends the read loop (the runner answers "bye"), so the process can exit. */
  async close(): Promise<void> {
    if (this.reading) {
      await this.send({ t: 'bye' }).catch(() => { /* gone */ });
      await Promise.race([this.readLoopEnded, new Promise((r) => setTimeout(r, 3000))]);
    }
    this.failAll(new Error('the rig control channel was closed'));
    this.out.destroy();
  }
}
