// Serial test helpers: a UART on a test bench (a bounded fake output ring, a recorded IRQ
// line, recorded host notifications and a manual retry scheduler), a terminal on a PTY
// slave, and waiting for a condition.
import fs from 'node:fs';
import type { HostNotification } from '../../main/vmm/devices/context';
import { IER, Uart16550, type TransmitSink } from '../../main/vmm/devices/uart16550';
import { IrqLines, type IrqPin, type SharedIrqLine } from '../../main/vmm/platform/irq';

export class FakeRing implements TransmitSink {
  bytes: number[] = [];
  constructor(public capacity = Number.POSITIVE_INFINITY) {}
  push(byte: number): boolean {
    if (this.bytes.length >= this.capacity) return false;
    this.bytes.push(byte);
    return true;
  }
  get free(): number {
    return this.capacity - this.bytes.length;
  }
  drain(): number[] {
    return this.bytes.splice(0);
  }
}

export const REG = { DATA: 0, IER: 1, IIR: 2, FCR: 2, LCR: 3, MCR: 4, LSR: 5, MSR: 6, SCR: 7 } as const;

export interface UartBench {
  uart: Uart16550;
  ring: FakeRing;
  pin: IrqPin;
  line: SharedIrqLine;
  /** Every setIrq call the irqchip received. */
  irqCalls: [number, boolean][];
  notes: HostNotification[];
  /** Pending retries; run them with runRetries(). */
  retries: (() => void)[];
  runRetries(): void;
  rd(reg: number): number;
  wr(reg: number, value: number): void;
  /** 8N1 at 115200 with FIFOs on, as Linux and SeaBIOS set a port up. */
  init(opts?: { fcr?: number; ier?: number; mcr?: number }): void;
}

export function uartBench(opts: { ringCapacity?: number; port?: number; gsi?: number } = {}): UartBench {
  const ring = new FakeRing(opts.ringCapacity);
  const irqCalls: [number, boolean][] = [];
  const lines = new IrqLines((gsi, level) => irqCalls.push([gsi, level]));
  const gsi = opts.gsi ?? 4;
  const pin = lines.pin(gsi, 'COM1');
  const notes: HostNotification[] = [];
  const retries: (() => void)[] = [];
  const uart = new Uart16550({
    port: opts.port ?? 0, output: ring, irq: pin,
    notifyHost: (n) => notes.push(n), scheduleRetry: (fn) => retries.push(fn),
  });
  const bench: UartBench = {
    uart, ring, pin, line: lines.line(gsi), irqCalls, notes, retries,
    runRetries: () => { for (const fn of retries.splice(0)) fn(); },
    rd: (reg) => uart.read(reg, 1),
    wr: (reg, value) => uart.write(reg, 1, value),
    init: (o = {}) => {
      bench.wr(REG.LCR, 0x80);
      bench.wr(REG.DATA, 1);
      bench.wr(REG.IER, 0);
      bench.wr(REG.LCR, 0x03);
      bench.wr(REG.FCR, o.fcr ?? 0xc7);
      bench.wr(REG.MCR, o.mcr ?? 0x0b);
      bench.wr(REG.IER, o.ier ?? 0);
    },
  };
  return bench;
}

export { IER };

/** Resolves once `check()` holds; rejects naming `what` after `ms` (a hang guard, not a timing assertion). */
export function waitFor(check: () => boolean, what: string | (() => string), ms = 5000): Promise<void> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const poll = () => {
      if (check()) return resolve();
      if (Date.now() - started > ms) return reject(new Error(`timed out waiting for ${typeof what === 'string' ? what : what()}`));
      setTimeout(poll, 2);
    };
    poll();
  });
}

export interface Terminal {
  readonly fd: number;
  readonly received: Buffer;
  /** Total bytes read (also counted when `keep` is false). */
  readonly count: number;
  write(data: Uint8Array): number;
  close(): void;
}

/**
 * The terminal side of a PTY (what `screen /dev/pts/N` would be), read without blocking.
 * With `keep: false` bytes are only counted (for throughput runs).
 */
export function openTerminal(file: string, opts: { keep?: boolean; intervalMs?: number } = {}): Terminal {
  const keep = opts.keep ?? true;
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_NOCTTY | fs.constants.O_NONBLOCK);
  const parts: Buffer[] = [];
  let count = 0;
  const buf = Buffer.alloc(65536);
  const drain = () => {
    for (;;) {
      let n: number;
      try {
        n = fs.readSync(fd, buf, 0, buf.length, null);
      } catch {
        return; // EAGAIN, or EIO once the master is gone
      }
      if (n <= 0) return;
      count += n;
      if (keep) parts.push(Buffer.from(buf.subarray(0, n)));
    }
  };
  const timer = setInterval(drain, opts.intervalMs ?? 2);
  return {
    fd,
    get received() {
      if (parts.length > 1) parts.splice(0, parts.length, Buffer.concat(parts));
      return parts[0] ?? Buffer.alloc(0);
    },
    get count() { return count; },
    write: (data) => fs.writeSync(fd, data),
    close: () => { clearInterval(timer); drain(); fs.closeSync(fd); },
  };
}
