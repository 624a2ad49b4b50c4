// Serial throughput, guest → PTY: the same real-mode loop (test/guests/serial-flood.inc)
// writes N bytes to COM1 as fast as LSR allows, first one byte per LSR poll, then 16
// bytes (`rep outsb`) per LSR poll, with COM1 on a PTY that a reader drains. Porthole
// runs it as a flat guest with the pty backend, QEMU (-accel kvm) as an option ROM with
// -serial pty, in one run. Bytes/s are measured at the reader, from each phase's marker
// to its last byte, and every byte is checked.
//
// Usage: node dist/test/bench/serial-throughput.js [--bytes N] [--no-qemu]
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { defaultConfig, type MachineConfig } from '../../main/vmm/config';
import { VmHost } from '../../main/vmm/host/vm-host';
import { benchOutputDir, guestsSrc, writeBenchResult } from './paths';

export type FloodPhase = 'byte' | 'fifo';
const PHASES: FloodPhase[] = ['byte', 'fifo'];

export interface SerialThroughputResult {
  vmm: 'porthole' | 'qemu';
  phase: FloodPhase;
  bytes: number;
  seconds: number;
  bytesPerSecond: number;
  /** Bytes that differed from the expected pattern (must be 0). */
  corrupt: number;
}

export interface SerialThroughputOptions {
  /** Bytes per phase (a multiple of 16); 1 MiB by default. */
  bytes?: number;
  /** Also run QEMU when it is installed (default true). */
  qemu?: boolean;
  /** Give up on one VMM after this long (default 10 minutes). */
  timeoutMs?: number;
  log?: (line: string) => void;
}

class BenchError extends Error {}

function run(command: string, args: string[], what: string): void {
  const r = spawnSync(command, args, { encoding: 'utf8' });
  if (r.error) throw new BenchError(`${what}: cannot run ${command} (${(r.error as NodeJS.ErrnoException).code ?? r.error.message})`);
  if (r.status !== 0) throw new BenchError(`${what} failed: ${(r.stderr || r.stdout).trim()}`);
}

function buildGuests(bytes: number): { flat: string; rom: string } {
  const benchBuild = benchOutputDir();
  const flat = path.join(benchBuild, 'serial-flood.bin');
  const rom = path.join(benchBuild, 'serial-flood-rom.bin');
  const common = ['-f', 'bin', '-I', `${guestsSrc}/`, `-DSERIAL_FLOOD_BYTES=${bytes}`];
  run('nasm', [...common, path.join(guestsSrc, 'serial-flood.asm'), '-o', flat], 'assembling serial-flood.asm');
  run('nasm', [...common, path.join(guestsSrc, 'serial-flood-rom.asm'), '-o', rom], 'assembling serial-flood-rom.asm');
  const image = fs.readFileSync(rom);
  let sum = 0;
  for (let i = 0; i < image.length - 1; i++) sum = (sum + image[i]) & 0xff;
  image[image.length - 1] = (0x100 - sum) & 0xff;
  fs.writeFileSync(rom, image);
  return { flat, rom };
}

/**
 * Reads a PTY slave without blocking and follows the flood: marker, N pattern bytes,
 * marker, N pattern bytes. Records when each phase's marker and last byte arrived.
 */
class FloodReader {
  private readonly fd: number;
  private readonly timer: NodeJS.Timeout;
  private readonly buf = Buffer.alloc(1 << 16);
  private text = '';
  private phase = -1; // -1: waiting for the first marker
  private count = 0;
  private started = 0;
  readonly results: { phase: FloodPhase; seconds: number; corrupt: number }[] = [];
  private corrupt = 0;
  private resolveDone!: () => void;
  readonly done = new Promise<void>((resolve) => { this.resolveDone = resolve; });

  constructor(file: string, private readonly bytes: number) {
    this.fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_NOCTTY | fs.constants.O_NONBLOCK);
    this.timer = setInterval(() => this.poll(), 1);
  }

  private poll(): void {
    for (;;) {
      let n: number;
      try {
        n = fs.readSync(this.fd, this.buf, 0, this.buf.length, null);
      } catch {
        return;
      }
      if (n <= 0) return;
      this.consume(this.buf.subarray(0, n), performance.now());
    }
  }

  private consume(chunk: Buffer, now: number): void {
    let i = 0;
    while (i < chunk.length && this.results.length < PHASES.length) {
      if (this.phase < 0 || this.count === this.bytes) {
        // Looking for the next phase's marker line.
        const marker = `serial-flood:${PHASES[this.results.length]}\n`;
        this.text += String.fromCharCode(chunk[i++]);
        if (this.text.endsWith(marker)) {
          this.text = '';
          this.phase = this.results.length;
          this.count = 0;
          this.corrupt = 0;
          this.started = now;
        } else if (this.text.length > 4096) {
          this.text = this.text.slice(-64);
        }
        continue;
      }
      const take = Math.min(chunk.length - i, this.bytes - this.count);
      for (let k = 0; k < take; k++) if (chunk[i + k] !== ((this.count + k) & 0xff)) this.corrupt++;
      this.count += take;
      i += take;
      if (this.count === this.bytes) {
        this.results.push({ phase: PHASES[this.phase], seconds: (now - this.started) / 1000, corrupt: this.corrupt });
        if (this.results.length === PHASES.length) this.resolveDone();
      }
    }
  }

  get progress(): string {
    return `${this.results.length} phases done, ${this.count} bytes into phase ${this.phase}`;
  }

  close(): void {
    clearInterval(this.timer);
    fs.closeSync(this.fd);
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: () => string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new BenchError(what())), ms); }),
  ]);
}

async function runPorthole(guest: string, bytes: number, timeoutMs: number): Promise<FloodReader> {
  const config: MachineConfig = {
    ...defaultConfig(), name: 'serial-bench', boot: { kind: 'flat', path: guest, address: 0x1000 },
    serial: [{ kind: 'pty' }, { kind: 'none' }, { kind: 'none' }, { kind: 'none' }],
  };
  const host = new VmHost(config);
  let reader: FloodReader | null = null;
  host.on('endpoint', (port, description) => {
    if (port === 0) reader = new FloodReader(description, bytes);
  });
  const ended = new Promise<never>((_, reject) => host.once('ended', (end) => reject(new BenchError(`Porthole: the VM ended early: ${JSON.stringify(end)}`))));
  await host.start();
  const r = reader as FloodReader | null;
  if (!r) throw new BenchError('Porthole: COM1 got no pty endpoint');
  try {
    await withTimeout(Promise.race([r.done, ended]), timeoutMs, () => `Porthole: timed out (${r.progress})`);
  } finally {
    await host.stop();
    r.close();
  }
  return r;
}

async function runQemu(rom: string, bytes: number, timeoutMs: number): Promise<FloodReader> {
  const qemu = spawn('qemu-system-x86_64', [
    '-accel', 'kvm', '-display', 'none', '-nodefaults', '-M', 'pc', '-m', '256', '-no-reboot',
    '-monitor', 'none', '-serial', 'pty', '-option-rom', rom,
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  let said = '';
  const exited = new Promise<never>((_, reject) => qemu.once('exit', (code, signal) => reject(new BenchError(`QEMU exited early (${signal ?? code}): ${said.trim()}`))));
  exited.catch(() => { /* reported where awaited */ });
  const ptyPath = await withTimeout(Promise.race([exited, new Promise<string>((resolve) => {
    const onData = (d: Buffer) => {
      said += d.toString();
      const m = /char device redirected to (\/dev\/pts\/\d+)/.exec(said);
      if (m) resolve(m[1]);
    };
    qemu.stdout.on('data', onData);
    qemu.stderr.on('data', onData);
  })]), 30000, () => `QEMU did not say where its pty is: ${said.trim()}`);
  const reader = new FloodReader(ptyPath, bytes);
  try {
    await withTimeout(Promise.race([reader.done, exited]), timeoutMs, () => `QEMU: timed out (${reader.progress})`);
  } finally {
    reader.close();
    qemu.kill('SIGKILL');
  }
  return reader;
}

function hasCommand(command: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${command}`]).status === 0;
}

function rate(bytesPerSecond: number): string {
  return bytesPerSecond >= 1e6 ? `${(bytesPerSecond / 1e6).toFixed(2)} MB/s` : `${(bytesPerSecond / 1e3).toFixed(1)} kB/s`;
}

/** Runs the bench and prints a table; the bench runner (test/bench/run.ts) calls this. */
export async function runSerialThroughputBench(opts: SerialThroughputOptions = {}): Promise<SerialThroughputResult[]> {
  const log = opts.log ?? ((line: string) => console.log(line));
  const bytes = opts.bytes ?? 1 << 20;
  const timeoutMs = opts.timeoutMs ?? 600000;
  if (bytes <= 0 || bytes % 16 !== 0) throw new BenchError('the byte count must be a positive multiple of 16');
  if (!fs.existsSync('/dev/kvm')) throw new BenchError('/dev/kvm is not available: the serial bench needs KVM');
  if (!hasCommand('nasm')) throw new BenchError('nasm is missing (run npm run fixtures)');
  const { flat, rom } = buildGuests(bytes);
  const withQemu = (opts.qemu ?? true) && hasCommand('qemu-system-x86_64');
  if ((opts.qemu ?? true) && !withQemu) log('QEMU is not installed: its column is skipped.');

  log(`serial throughput, guest COM1 -> PTY reader: ${bytes} bytes per phase`);
  const results: SerialThroughputResult[] = [];
  const record = (vmm: SerialThroughputResult['vmm'], reader: FloodReader) => {
    for (const r of reader.results) {
      results.push({ vmm, phase: r.phase, bytes, seconds: r.seconds, bytesPerSecond: bytes / r.seconds, corrupt: r.corrupt });
    }
  };
  record('porthole', await runPorthole(flat, bytes, timeoutMs));
  if (withQemu) record('qemu', await runQemu(rom, bytes, timeoutMs));

  const describe: Record<FloodPhase, string> = { byte: 'LSR poll + 1 byte', fifo: 'LSR poll + 16 bytes (rep outsb)' };
  for (const phase of PHASES) {
    const p = results.find((r) => r.vmm === 'porthole' && r.phase === phase);
    const q = results.find((r) => r.vmm === 'qemu' && r.phase === phase);
    let line = `  ${describe[phase].padEnd(32)} Porthole ${p ? rate(p.bytesPerSecond).padStart(11) : '-'}`;
    if (q) line += `   QEMU ${rate(q.bytesPerSecond).padStart(11)}   Porthole/QEMU ${(p ? p.bytesPerSecond / q.bytesPerSecond : NaN).toFixed(2)}x`;
    log(line);
  }
  const corrupt = results.filter((r) => r.corrupt > 0);
  if (corrupt.length > 0) throw new BenchError(`corrupted bytes: ${corrupt.map((r) => `${r.vmm} ${r.phase}: ${r.corrupt}`).join(', ')}`);
  writeBenchResult('serial-throughput.json', results);
  return results;
}

function parseArgs(argv: string[]): SerialThroughputOptions {
  const o: SerialThroughputOptions = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--bytes') {
      const text = argv[++i] ?? '';
      const n = Number(text);
      if (!/^\d+$/.test(text) || n < 16 || n % 16 !== 0 || n > 0x7fffffff) throw new BenchError('--bytes must be a multiple of 16 from 16 to 2^31-16');
      o.bytes = n;
    } else if (a === '--no-qemu') {
      o.qemu = false;
    } else {
      throw new BenchError(`unknown option "${a}" (use --bytes N, --no-qemu)`);
    }
  }
  return o;
}

if (require.main === module) {
  (async () => {
    await runSerialThroughputBench(parseArgs(process.argv.slice(2)));
  })().catch((e: Error) => {
    console.error(e instanceof BenchError ? `serial bench: ${e.message}` : e.stack ?? e.message);
    process.exitCode = 2;
  });
}
