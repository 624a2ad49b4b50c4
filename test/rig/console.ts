// Drives a shell on a serial console: send one command, wait for a unique end marker that
// carries its exit status, return its output. The markers are printed with printf and a
// %s argument, so the shell's echo of the typed command line never matches them.
import crypto from 'node:crypto';
import net from 'node:net';
import type { ChildProcess } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';

export interface ConsoleTransport {
  write(data: string): void;
  onData(listener: (chunk: Buffer) => void): void;
  onClose(listener: (why: string) => void): void;
  close(): void;
}

export class ConsoleTimeoutError extends Error {}
export class ConsoleClosedError extends Error {}

export interface CommandResult {
  output: string;
  status: number;
}

export interface SerialConsoleOptions {
  /** Names the console in errors ("L2 on porthole stdio"). */
  name?: string;
  /** Sees everything the guest sends, for streaming it to a log. */
  onOutput?: (text: string) => void;
  /** How much of the transcript an error quotes. */
  tailChars?: number;
}

interface Waiter {
  pattern: RegExp;
  from: number;
  resolve: (m: RegExpExecArray) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout | null;
}

export class SerialConsole {
  private text = '';
  private readonly waiters = new Set<Waiter>();
  private closedWhy: string | null = null;
  private readonly tag = crypto.randomBytes(3).toString('hex');
  private seq = 0;
  readonly name: string;

  constructor(private readonly transport: ConsoleTransport, private readonly opts: SerialConsoleOptions = {}) {
    this.name = opts.name ?? 'console';
    transport.onData((chunk) => {
      const s = chunk.toString('latin1');
      this.text += s;
      opts.onOutput?.(s);
      for (const w of [...this.waiters]) this.check(w);
    });
    transport.onClose((why) => {
      this.closedWhy = why;
      for (const w of [...this.waiters]) this.settle(w, new ConsoleClosedError(`${this.name} closed (${why}) while waiting for ${w.pattern}${this.tail()}`));
    });
  }

  /** A child's stdin/stdout, e.g. `porthole run --serial stdio`. */
  static fromChild(child: ChildProcess, opts?: SerialConsoleOptions): SerialConsole {
    if (!child.stdin || !child.stdout) throw new Error('the child needs piped stdin and stdout');
    return new SerialConsole(streamTransport(child.stdout, child.stdin, () => child.stdin?.end(), child), opts);
  }

  /** A unix or TCP socket that a VM's serial port listens on or connects to. */
  static async connect(target: { path: string } | { host: string; port: number }, opts?: SerialConsoleOptions): Promise<SerialConsole> {
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect(target as net.NetConnectOpts);
      s.once('connect', () => resolve(s));
      s.once('error', reject);
    });
    return new SerialConsole(streamTransport(socket, socket, () => socket.destroy()), opts);
  }

  /** Everything received so far. */
  transcript(): string {
    return this.text;
  }

  /** Resolves when `pattern` appears in output received after offset `from`. */
  waitFor(pattern: RegExp, timeoutMs: number, from = 0): Promise<RegExpExecArray> {
    return new Promise((resolve, reject) => {
      const w: Waiter = { pattern, from, resolve, reject, timer: null };
      if (this.closedWhy !== null && !this.match(w)) {
        reject(new ConsoleClosedError(`${this.name} is closed (${this.closedWhy}); never saw ${pattern}${this.tail()}`));
        return;
      }
      if (Number.isFinite(timeoutMs)) {
        w.timer = setTimeout(() => this.settle(w, new ConsoleTimeoutError(
          `${this.name}: no ${pattern} within ${timeoutMs / 1000} s${this.tail()}`)), timeoutMs);
      }
      this.waiters.add(w);
      this.check(w);
    });
  }

  /**
   * Waits until a shell answers: asks it to print a marker every `probeMs`. The guest may
   * still be booting, and its UART driver flushes whatever arrived before the port was
   * opened, so a probe can lose its head and leave the shell inside an open quote. Each
   * probe therefore starts with Ctrl-C, which makes a shell on a tty drop a partial
   * command, and a newline, which ends the line where ^C is just a byte (a pipe); the
   * probe itself follows after a pause.
   */
  async waitForShell(timeoutMs: number, probeMs = 3000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      await this.probeForShell(deadline - Date.now(), probeMs);
      // Probes still in flight carry a Ctrl-C that would cancel the next command: repeat a
      // plain marker until the shell prints it, which means it has consumed all of them. A
      // shell that never prints it is inside an open quote (the guest reset and its new shell
      // got half a line): probe again, whose Ctrl-C ends the quote.
      const syncId = this.nextId();
      const syncFrom = this.text.length;
      const sync = () => { if (this.closedWhy === null) this.send(`printf '@@S%s@@\\n' ${syncId}\n`); };
      sync();
      const again = setInterval(sync, probeMs);
      try {
        await this.waitFor(new RegExp(`@@S${syncId}@@`), probeMs * 4, syncFrom);
        return;
      } catch (e) {
        if (!(e instanceof ConsoleTimeoutError) || Date.now() >= deadline) throw e;
      } finally {
        clearInterval(again);
      }
    }
  }

  private async probeForShell(timeoutMs: number, probeMs: number): Promise<void> {
    const id = this.nextId();
    const from = this.text.length;
    let pause: NodeJS.Timeout | null = null;
    const probe = () => {
      this.send('\x03\n');
      pause = setTimeout(() => { if (this.closedWhy === null) this.send(`printf '@@R%s@@\\n' ${id}\n`); }, 300);
    };
    probe();
    const interval = setInterval(probe, probeMs);
    try {
      await this.waitFor(new RegExp(`@@R${id}@@`), Math.max(1, timeoutMs), from);
    } finally {
      clearInterval(interval);
      if (pause) clearTimeout(pause);
    }
  }

  /**
   * Runs one shell command line (which must not read the console) and resolves with its
   * output, CR LF folded and one trailing newline dropped, and its exit status.
   */
  async run(command: string, timeoutMs = 60000): Promise<CommandResult> {
    if (/[\r\n]/.test(command)) throw new Error('a console command must be a single line');
    const id = this.nextId();
    const from = this.text.length;
    this.send(`printf '\\n@@B%s@@\\n' ${id}; ${command}; printf '\\n@@E%s:%d@@\\n' ${id} $?\n`);
    const end = await this.waitFor(new RegExp(`@@B${id}@@\\r?\\n([\\s\\S]*?)\\r?\\n@@E${id}:(\\d+)@@`), timeoutMs, from)
      .catch((e: Error) => { throw e instanceof ConsoleTimeoutError ? new ConsoleTimeoutError(`${this.name}: "${command}" did not finish within ${timeoutMs / 1000} s${this.tail()}`) : e; });
    // The end marker starts on a fresh line; the newline that ended the command's own last
    // line is not part of what it printed, as with $(...) in a shell.
    const output = end[1].replace(/\r\n/g, '\n').replace(/\r/g, '').replace(/\n$/, '');
    return { output, status: Number(end[2]) };
  }

  /** Like run, but a non-zero status is an error naming the command. */
  async runOk(command: string, timeoutMs = 60000): Promise<string> {
    const r = await this.run(command, timeoutMs);
    if (r.status !== 0) throw new Error(`${this.name}: "${command}" exited with status ${r.status}: ${r.output.slice(-400)}`);
    return r.output;
  }

  send(data: string): void {
    if (this.closedWhy !== null) throw new ConsoleClosedError(`${this.name} is closed (${this.closedWhy})`);
    this.transport.write(data);
  }

  close(): void {
    for (const w of [...this.waiters]) this.settle(w, new ConsoleClosedError(`${this.name} was closed by the test`));
    this.transport.close();
  }

  private nextId(): string {
    return `${this.tag}x${++this.seq}`;
  }

  private match(w: Waiter): RegExpExecArray | null {
    return w.pattern.exec(this.text.slice(w.from));
  }

  private check(w: Waiter): void {
    const m = this.match(w);
    if (m) this.settle(w, null, m);
  }

  private settle(w: Waiter, err: Error | null, m?: RegExpExecArray): void {
    if (!this.waiters.has(w)) return;
    this.waiters.delete(w);
    if (w.timer) clearTimeout(w.timer);
    w.timer = null;
    if (err) w.reject(err);
    else w.resolve(m!);
  }

  private tail(): string {
    const n = this.opts.tailChars ?? 1500;
    const t = this.text.slice(-n).replace(/\r/g, '');
    return t ? `; last output:\n${t}` : '; no output at all';
  }
}

function streamTransport(input: Readable, output: Writable, close: () => void, child?: ChildProcess): ConsoleTransport {
  const closeListeners: ((why: string) => void)[] = [];
  let closed = false;
  const closeWith = (why: string) => {
    if (closed) return;
    closed = true;
    for (const l of closeListeners) l(why);
  };
  input.on('end', () => closeWith('end of output'));
  input.on('error', (e) => closeWith(e.message));
  output.on('error', (e) => closeWith(e.message));
  child?.on('exit', (code, sig) => closeWith(sig ? `process killed by ${sig}` : `process exited with code ${code}`));
  return {
    write: (data) => { output.write(data); },
    onData: (l) => input.on('data', (c: Buffer | string) => l(typeof c === 'string' ? Buffer.from(c, 'latin1') : c)),
    onClose: (l) => closeListeners.push(l),
    close,
  };
}
