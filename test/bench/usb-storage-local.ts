// Per-command cost of the xHCI + USB stick models on this machine, without KVM: a register-level
// driver runs Linux's usb-storage pattern (CBW TD on bulk OUT; one scatter-gather data TD of
// 4 KiB Normal TRBs on scattered pages, chained across 256-TRB ring segments; CSW TD on bulk
// IN; after each stage the interrupt handler's USBSTS/IMAN/ERDP accesses) against a stick on a
// synchronous raw image, wired as the machine wires it (statistics registry counters, MSI-X
// sink, performance clock). Prints per SCSI command: wall time, time inside the endpoint
// doorbells (the controller's xhci/doorbell-us counter), and bytes allocated on the JS heap
// (measured in a child with a young generation big enough that no GC runs in the window).
//
//   node dist/test/bench/usb-storage-local.js [--commands N] [--rounds N] [--only read4k,read1m,...] [--contiguous] [--null-io]
//
// --null-io puts the stick on an image that moves no bytes, so the models' own time shows
// without the system calls; --contiguous gives the data TD pages that follow each other.
//
// No KVM, no rig: it measures the JavaScript of the doorbell path (what an exit from L2 costs
// on the machine thread, less KVM), to compare before and after a change on one machine.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PerformanceObserver } from 'node:perf_hooks';
import v8 from 'node:v8';
import { counter, type Counter } from '../../main/vmm/devices/device';
import { openUsbStorage, UsbStorage } from '../../main/vmm/devices/usb/storage/usb-storage';
import type { BlockBackend } from '../../main/vmm/devices/usb/storage/block-backend';
import { StatsRegistry } from '../../main/vmm/shared/stats';
import { DATA, DB, Driver, IR0, makeMemory, OP, trb } from '../helpers/xhci-driver';

const PAGES = 0x1000000;
const PAGES_SIZE = 0x800000;
/** Transfer rings live here, Linux style: segments of 256 TRBs linked in a loop. */
const RINGS_AT = PAGES + 0x600000;
const SEGMENT_TRBS = 256;
const SEGMENTS = 4;
const DCI_IN = 3;
const DCI_OUT = 4;
const CBW_AT = DATA;
const CSW_AT = DATA + 0x1000;
const IMAGE_MIB = 64;

type Measure = 'read4k' | 'write4k' | 'read1m' | 'write1m';
const MEASURES: Measure[] = ['read4k', 'write4k', 'read1m', 'write1m'];
const BYTES: Record<Measure, number> = { read4k: 4096, write4k: 4096, read1m: 1 << 20, write1m: 1 << 20 };

/** A transfer ring of SEGMENTS segments; Link TRBs carry CH inside a TD, the last one TC. */
class SegmentedRing {
  enqueue: number;
  cycle = 1;
  constructor(private readonly d: Driver, readonly base: number) {
    this.enqueue = base;
    d.dma.fill(base, SEGMENTS * SEGMENT_TRBS * 16, 0);
  }

  get dequeuePointer(): number {
    return this.base | 1;
  }

  push(p0: number, p1: number, status: number, control: number): void {
    const dma = this.d.dma;
    const at = this.enqueue;
    dma.writeU32(at, p0);
    dma.writeU32(at + 4, p1);
    dma.writeU32(at + 8, status);
    dma.writeU32(at + 12, ((control & ~1) | this.cycle) >>> 0);
    this.enqueue += 16;
    const index = (this.enqueue - this.base) / 16;
    if (index % SEGMENT_TRBS === SEGMENT_TRBS - 1) {
      const last = index === SEGMENTS * SEGMENT_TRBS - 1;
      const next = last ? this.base : this.enqueue + 16;
      dma.writeU32(this.enqueue, next);
      dma.writeU32(this.enqueue + 4, 0);
      dma.writeU32(this.enqueue + 8, 0);
      dma.writeU32(this.enqueue + 12, ((6 << 10) | (last ? 2 : 0) | (control & (1 << 4)) | this.cycle) >>> 0);
      this.enqueue = next;
      if (last) this.cycle ^= 1;
    }
  }
}

export interface Bench {
  d: Driver;
  stick: UsbStorage;
  slot: number;
  rings: Record<number, SegmentedRing>;
  pages: number[];
  doorbellUs: Counter;
  timers: (() => void)[];
  lba: number;
  tag: number;
  image: string;
}

/**
 * An image that moves no bytes (inline, like a synchronous raw file): with it the bench times
 * the models alone, without the read/write system calls that dominate a 1 MiB command here.
 */
function nullImage(size: number): BlockBackend {
  return {
    size, readOnly: false,
    read: (_offset, length, done) => done(null, new Uint8Array(length)),
    write: (_offset, _data, done) => done(null),
    flush: (done) => done(null),
    readvNow: () => null,
    writevNow: () => null,
    close: () => {},
  };
}

export function setUp(contiguous: boolean, nullIo = false): Bench {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-usb-bench-'));
  const image = path.join(dir, 'stick.img');
  fs.writeFileSync(image, '');
  fs.truncateSync(image, IMAGE_MIB << 20); // as the rig bench's image: a fresh file of zeros
  const registry = new StatsRegistry();
  const counters = new Map<string, Counter>();
  const timers: (() => void)[] = [];
  const memory = makeMemory([{ guestBase: PAGES, size: PAGES_SIZE, buffer: new SharedArrayBuffer(PAGES_SIZE), offset: 0, readonly: false, name: 'pages' }]);
  const d = new Driver(memory, undefined, registry, {
    // As xhci-pci.ts wires it.
    count: (name, n) => {
      let c = counters.get(name);
      if (!c) {
        c = counter(registry, 'xhci', name);
        counters.set(name, c);
      }
      c.add(n);
    },
    clock: {
      now: () => performance.now(),
      setTimer: (_delay, fn) => {
        timers.push(fn);
        return () => {};
      },
    },
    interrupts: { raise: () => true },
  });
  const stick = nullIo ? new UsbStorage(nullImage(IMAGE_MIB << 20), { speed: 'super' }) : openUsbStorage(image, { synchronous: true, speed: 'super' });
  d.start();
  d.hc.attach(1, stick);
  const slot = d.enumerate(1, 4);
  d.control(slot, [0, 9, 1, 0, 0], 0, false);
  d.events();
  const rings: Record<number, SegmentedRing> = { [DCI_IN]: new SegmentedRing(d, RINGS_AT), [DCI_OUT]: new SegmentedRing(d, RINGS_AT + 0x10000) };
  // Configure Endpoint with the segmented rings (the helper's rings are single segments).
  const ctx = 0x6000;
  d.dma.fill(ctx, 33 * 32, 0);
  for (const [dci, type] of [[DCI_IN, 6], [DCI_OUT, 2]]) {
    const base = ctx + 32 * (dci + 1);
    d.dma.writeU32(base + 4, (1024 << 16) | (15 << 8) | (type << 3) | (3 << 1));
    d.dma.writeU64(base + 8, rings[dci].dequeuePointer);
  }
  d.dma.writeU32(ctx + 4, 1 | (1 << DCI_IN) | (1 << DCI_OUT));
  const ev = d.command(ctx, 0, 0, trb(12, slot << 24));
  if (ev.code !== 1) throw new Error(`Configure Endpoint: code ${ev.code}`);
  // The data buffer: 256 pages, shuffled (a user buffer's pages) unless asked otherwise.
  const pages: number[] = [];
  for (let i = 0; i < 256; i++) pages.push(PAGES + i * 4096);
  if (!contiguous) {
    let seed = 12345;
    for (let i = pages.length - 1; i > 0; i--) {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      const j = seed % (i + 1);
      [pages[i], pages[j]] = [pages[j], pages[i]];
    }
  }
  return { d, stick, slot, rings, pages, doorbellUs: counters.get('doorbell-us') ?? counter(registry, 'xhci', 'doorbell-us'), timers, lba: 0, tag: 1, image };
}

/** What Linux's xhci_irq does per interrupt: USBSTS read and EINT clear, IMAN, events, ERDP. */
function interrupt(b: Bench): void {
  const { d } = b;
  const sts = d.hc.read(OP + 4, 4);
  d.hc.write(OP + 4, 4, sts & 8);
  const iman = d.hc.read(IR0, 4);
  d.hc.write(IR0, 4, iman | 1);
  let events = 0;
  for (;;) {
    const control = d.dma.readU32(d.eventDeq + 12);
    if ((control & 1) !== d.eventCycle) break;
    const code = d.dma.readU32(d.eventDeq + 8) >>> 24;
    if (code !== 1 && code !== 13) throw new Error(`event with completion code ${code}`);
    events++;
    d.eventDeq += 16;
    if (d.eventDeq === 0x4000 + d.eventTrbs * 16) {
      d.eventDeq = 0x4000;
      d.eventCycle ^= 1;
    }
  }
  if (events === 0) throw new Error('an interrupt stage without events');
  d.hc.write(IR0 + 0x18, 4, d.eventDeq | 8);
  d.hc.write(IR0 + 0x1c, 4, 0);
}

function doorbell(b: Bench, dci: number): void {
  b.d.hc.write(DB + 4 * b.slot, 4, dci);
  while (b.timers.length > 0) b.timers.shift()!();
  interrupt(b);
}

function putCbw(b: Bench, write: boolean, bytes: number): void {
  const { dma } = b.d;
  const blocks = bytes / 512;
  if (b.lba + blocks > IMAGE_MIB * 2048) b.lba = 0;
  dma.writeU32(CBW_AT, 0x43425355);
  dma.writeU32(CBW_AT + 4, b.tag++);
  dma.writeU32(CBW_AT + 8, bytes);
  dma.writeU8(CBW_AT + 12, write ? 0 : 0x80);
  dma.writeU8(CBW_AT + 13, 0);
  dma.writeU8(CBW_AT + 14, 10);
  dma.writeU8(CBW_AT + 15, write ? 0x2a : 0x28);
  dma.writeU8(CBW_AT + 16, 0);
  dma.writeU32(CBW_AT + 17, ((b.lba >>> 24) | ((b.lba >>> 8) & 0xff00) | ((b.lba << 8) & 0xff0000) | (b.lba << 24)) >>> 0);
  dma.writeU8(CBW_AT + 21, 0);
  dma.writeU8(CBW_AT + 22, blocks >>> 8);
  dma.writeU8(CBW_AT + 23, blocks & 0xff);
  dma.writeU8(CBW_AT + 24, 0);
  b.lba += blocks;
}

/** One SCSI READ(10)/WRITE(10) of `bytes`, as Linux's usb-storage runs it. */
export function command(b: Bench, write: boolean, bytes: number): void {
  const out = b.rings[DCI_OUT];
  putCbw(b, write, bytes);
  out.push(CBW_AT, 0, 31, trb(1, (1 << 5) | (1 << 2)));
  doorbell(b, DCI_OUT);
  const data = b.rings[write ? DCI_OUT : DCI_IN];
  const n = bytes / 4096;
  for (let i = 0; i < n; i++) {
    const last = i === n - 1;
    data.push(b.pages[i], 0, (4096 | ((n - 1 - i > 31 ? 31 : n - 1 - i) << 17)) >>> 0, trb(1, last ? (1 << 5) | (1 << 2) : (1 << 4) | (1 << 2)));
  }
  doorbell(b, write ? DCI_OUT : DCI_IN);
  b.rings[DCI_IN].push(CSW_AT, 0, 13, trb(1, (1 << 5) | (1 << 2)));
  doorbell(b, DCI_IN);
  const { dma } = b.d;
  if (dma.readU32(CSW_AT) !== 0x53425355 || dma.readU8(CSW_AT + 12) !== 0) throw new Error(`the CSW did not say passed (${dma.readU32(CSW_AT).toString(16)} status ${dma.readU8(CSW_AT + 12)}; ${b.d.logs.join('; ')})`);
}

export interface LocalResult {
  measure: Measure;
  /** Wall time per command, µs (fastest round). */
  us: number;
  /** This process's CPU time (user + system) per command, µs: less hurt by a busy host than wall time. */
  cpuUs: number;
  /** Inside the endpoint doorbells, µs per command (fastest round). */
  doorbellUs: number;
  /** JS heap bytes allocated per command (null: a GC ran in the window, or not measured). */
  allocatedBytes: number | null;
}

function timeMeasure(b: Bench, m: Measure, commands: number, rounds: number): { us: number; cpuUs: number; doorbellUs: number } {
  const write = m.startsWith('write');
  for (let i = 0; i < Math.min(commands, 50); i++) command(b, write, BYTES[m]); // warm-up
  const wall: number[] = [];
  const cpu: number[] = [];
  const inDoorbells: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const db0 = b.doorbellUs.value;
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    for (let i = 0; i < commands; i++) command(b, write, BYTES[m]);
    wall.push(((performance.now() - t0) * 1000) / commands);
    const c = process.cpuUsage(c0);
    cpu.push((c.user + c.system) / commands);
    inDoorbells.push(((b.doorbellUs.value - db0) >>> 0) / commands);
  }
  // The fastest round: on a shared host the noise only ever adds.
  return { us: Math.min(...wall), cpuUs: Math.min(...cpu), doorbellUs: Math.min(...inDoorbells) };
}

/** Bytes allocated per command, or null when a GC ran inside the window. */
async function allocationOf(b: Bench, m: Measure, commands: number): Promise<number | null> {
  const write = m.startsWith('write');
  // Warm (optimized code, its feedback and code objects made) before the window.
  for (let i = 0; i < 2 * commands; i++) command(b, write, BYTES[m]);
  (globalThis as { gc?: () => void }).gc?.();
  let gcs = 0;
  const obs = new PerformanceObserver((list) => { gcs += list.getEntries().length; });
  obs.observe({ entryTypes: ['gc'] });
  const h0 = v8.getHeapStatistics().used_heap_size;
  for (let i = 0; i < commands; i++) command(b, write, BYTES[m]);
  const h1 = v8.getHeapStatistics().used_heap_size;
  // GC entries are delivered later: give them a turn of the event loop.
  await new Promise((resolve) => setTimeout(resolve, 20));
  obs.disconnect();
  return gcs > 0 ? null : (h1 - h0) / commands;
}

function parseArgs(argv: string[]): { commands: number; rounds: number; only: Measure[]; contiguous: boolean; nullIo: boolean; allocOnly: boolean } {
  const get = (name: string): string | undefined => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const only = (get('--only')?.split(',') ?? MEASURES) as Measure[];
  for (const m of only) if (!MEASURES.includes(m)) throw new Error(`--only: unknown measure ${m} (${MEASURES.join(', ')})`);
  return {
    commands: Number(get('--commands') ?? 400),
    rounds: Number(get('--rounds') ?? 7),
    only,
    contiguous: argv.includes('--contiguous'),
    nullIo: argv.includes('--null-io'),
    allocOnly: argv.includes('--alloc-only'),
  };
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const b = setUp(args.contiguous, args.nullIo);
  try {
    if (args.allocOnly) {
      const out: Record<string, number | null> = {};
      for (const m of args.only) out[m] = await allocationOf(b, m, m.endsWith('1m') ? Math.min(args.commands, 200) : args.commands);
      process.stdout.write(JSON.stringify(out));
      return;
    }
    // Allocation in a child whose young generation holds the whole window (no scavenge in it).
    const child = spawnSync(process.execPath, ['--expose-gc', '--min-semi-space-size=128', '--max-semi-space-size=128', process.argv[1], ...process.argv.slice(2), '--alloc-only'], { encoding: 'utf8' });
    let allocated: Record<string, number | null> = {};
    try {
      allocated = JSON.parse(child.stdout) as Record<string, number | null>;
    } catch {
      console.error(`allocation run failed: ${child.stderr.trim().split('\n').slice(-3).join(' | ')}`);
    }
    console.log(`xHCI + usb-storage on this host, Linux's pattern, ${args.contiguous ? 'contiguous' : 'shuffled'} 4 KiB pages, ${args.nullIo ? 'an image that moves no bytes (--null-io)' : 'a sparse raw image'}; ${args.commands} commands x ${args.rounds} rounds (fastest round); load ${os.loadavg()[0].toFixed(2)}`);
    console.log(`${'measure'.padEnd(9)}${'us/cmd'.padStart(10)}${'cpu us'.padStart(10)}${'doorbells'.padStart(11)}${'KB alloc'.padStart(10)}`);
    const results: LocalResult[] = [];
    for (const m of args.only) {
      const t = timeMeasure(b, m, m.endsWith('1m') ? Math.max(1, Math.floor(args.commands / 8)) : args.commands, args.rounds);
      const a = allocated[m] ?? null;
      results.push({ measure: m, us: t.us, cpuUs: t.cpuUs, doorbellUs: t.doorbellUs, allocatedBytes: a });
      console.log(`${m.padEnd(9)}${t.us.toFixed(1).padStart(10)}${t.cpuUs.toFixed(1).padStart(10)}${t.doorbellUs.toFixed(1).padStart(11)}${(a === null ? '-' : (a / 1024).toFixed(2)).padStart(10)}`);
    }
  } finally {
    b.stick.close();
    fs.rmSync(path.dirname(b.image), { recursive: true, force: true });
  }
}

if (require.main === module) void main();
