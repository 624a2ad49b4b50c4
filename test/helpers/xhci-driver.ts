// A host-side xHCI driver for tests: guest memory over a SharedArrayBuffer, a fake clock,
// an interrupt sink that records, and helpers that build rings, contexts and TRBs the way
// a guest driver does. Also a small fake USB device (loopback bulk + EP0 descriptors).
import type { StatsRegistry } from '../../main/vmm/shared/stats';
import { DmaMemory } from '../../main/vmm/memory/dma';
import { GuestMemory, type MemoryRegion } from '../../main/vmm/memory/guest-memory';
import type { UsbDevice, UsbPortHost, UsbSpeed, UsbTransfer } from '../../main/vmm/devices/usb/usb-device';
import { XhciController } from '../../main/vmm/devices/usb/xhci';
import type { XhciOptions } from '../../main/vmm/devices/usb/xhci/controller';

export const RAM_SIZE = 0x80000;
export const DCBAA = 0x1000;
export const CMD_RING = 0x2000;
export const CMD_RING_TRBS = 64;
export const ERST = 0x3000;
export const EVENT_RING = 0x4000;
export const EVENT_RING_TRBS = 64;
export const INPUT_CTX = 0x6000;
export const OUTPUT_CTX = 0x8000; // + 0x400 per slot
export const RINGS = 0x10000; // + 0x400 per (slot, dci) pair used
export const DATA = 0x40000;

export const OP = 0x40;
export const PORTSC = (port: number): number => 0x440 + 0x10 * (port - 1);
export const MFINDEX = 0x1fe0;
export const IR0 = 0x2000;
export const DB = 0x3000;

export class FakeClock {
  time = 0;
  private timers: { at: number; fn: () => void; live: boolean }[] = [];
  now = (): number => this.time;
  setTimer = (delayMs: number, fn: () => void): (() => void) => {
    const t = { at: this.time + Math.max(0, delayMs), fn, live: true };
    this.timers.push(t);
    return () => { t.live = false; };
  };
  /** Moves time on and runs the timers that are due; timers they set wait for the next advance. */
  advance(ms: number): void {
    this.time += ms;
    const due = this.timers.filter((t) => t.live && t.at <= this.time);
    this.timers = this.timers.filter((t) => !due.includes(t));
    for (const t of due) {
      if (!t.live) continue;
      t.live = false;
      t.fn();
    }
  }
  get pending(): number {
    return this.timers.filter((t) => t.live).length;
  }
}

export interface Event {
  type: number;
  code: number;
  slot: number;
  ep: number;
  /** Parameter (TRB pointer or port ID field) as a number. */
  param: number;
  length: number;
  ed: boolean;
  addr: number;
}

export function makeMemory(extra: MemoryRegion[] = []): GuestMemory {
  const ram: MemoryRegion = { guestBase: 0, size: RAM_SIZE, buffer: new SharedArrayBuffer(RAM_SIZE), offset: 0, readonly: false, name: 'ram' };
  return new GuestMemory([ram, ...extra]);
}

/** Writes TRBs into a ring (with a Link TRB at the end back to the start, toggling cycle). */
export class RingWriter {
  enqueue: number;
  cycle = 1;
  constructor(private readonly dma: DmaMemory, readonly base: number, readonly trbs: number) {
    this.enqueue = base;
    dma.fill(base, trbs * 16, 0);
  }
  /** Writes one TRB (cycle bit set by the writer) and returns its address. */
  push(p0: number, p1: number, status: number, control: number): number {
    const at = this.enqueue;
    this.dma.writeU32(at, p0);
    this.dma.writeU32(at + 4, p1);
    this.dma.writeU32(at + 8, status);
    this.dma.writeU32(at + 12, ((control & ~1) | this.cycle) >>> 0);
    this.enqueue += 16;
    if (this.enqueue === this.base + (this.trbs - 1) * 16) {
      // Link back with Toggle Cycle; its CH copies the TRB before it (chains continue across).
      const ch = control & (1 << 4);
      this.dma.writeU32(this.enqueue, this.base);
      this.dma.writeU32(this.enqueue + 4, 0);
      this.dma.writeU32(this.enqueue + 8, 0);
      this.dma.writeU32(this.enqueue + 12, ((6 << 10) | 2 | ch | this.cycle) >>> 0);
      this.enqueue = this.base;
      this.cycle ^= 1;
    }
    return at;
  }
}

export const trb = (type: number, bits = 0): number => ((type << 10) | bits) >>> 0;

export class Driver {
  readonly memory: GuestMemory;
  readonly dma: DmaMemory;
  readonly clock = new FakeClock();
  readonly raised: number[] = [];
  readonly lowered: number[] = [];
  readonly counters = new Map<string, number>();
  readonly logs: string[] = [];
  /** When true the sink acts like MSI-X (raise returns true). */
  msi = false;
  readonly hc: XhciController;
  cmd!: RingWriter;
  eventDeq = EVENT_RING;
  eventCycle = 1;
  eventTrbs = EVENT_RING_TRBS;
  readonly rings = new Map<string, RingWriter>();

  /**
   * `options` replaces parts of the controller's wiring (a bench gives it the machine's
   * counters, a real clock and an MSI sink that records nothing).
   */
  /** The interrupters' register page, as the PCI function maps it into the guest (IR0 is its start). */
  readonly interrupterPage = new Uint32Array(0x1000 / 4);
  /** BAR 0's first page (capability, operational and port registers), as the PCI function maps it. */
  readonly registerPage = new Uint32Array(0x1000 / 4);

  constructor(memory = makeMemory(), dma?: DmaMemory, statistics?: StatsRegistry, options: Partial<Pick<XhciOptions, 'clock' | 'interrupts' | 'count' | 'settleQueuedWrites'>> = {}) {
    this.memory = memory;
    this.dma = dma ?? new DmaMemory(memory);
    this.hc = new XhciController({
      dma: this.dma,
      clock: options.clock ?? this.clock,
      interrupts: options.interrupts ?? {
        raise: (i) => { this.raised.push(i); return this.msi; },
        lower: (i) => { this.lowered.push(i); },
      },
      count: options.count ?? ((name, n) => this.counters.set(name, (this.counters.get(name) ?? 0) + n)),
      statistics,
      log: (text) => this.logs.push(text),
      interrupterRegisters: this.interrupterPage,
      registerPage: this.registerPage,
      settleQueuedWrites: options.settleQueuedWrites,
    });
  }

  r32(off: number): number {
    return this.hc.read(off, 4);
  }
  w32(off: number, v: number): void {
    this.hc.write(off, 4, v >>> 0);
  }
  w64(off: number, v: number): void {
    this.w32(off, v % 0x100000000);
    this.w32(off + 4, Math.floor(v / 0x100000000));
  }
  get usbsts(): number {
    return this.r32(OP + 4);
  }

  /** What a driver does at start: reset, DCBAA, command ring, one-segment event ring, run. */
  start(eventTrbs = EVENT_RING_TRBS): void {
    this.w32(OP, 2); // HCRST
    this.w32(OP + 0x38, 8); // MaxSlotsEn
    this.dma.fill(DCBAA, 0x200, 0);
    for (let s = 1; s <= 8; s++) this.dma.writeU64(DCBAA + 8 * s, OUTPUT_CTX + 0x400 * s);
    this.w64(OP + 0x30, DCBAA);
    this.cmd = new RingWriter(this.dma, CMD_RING, CMD_RING_TRBS);
    this.w64(OP + 0x18, CMD_RING | 1);
    this.eventTrbs = eventTrbs;
    this.dma.fill(EVENT_RING, EVENT_RING_TRBS * 16, 0);
    this.dma.writeU64(ERST, EVENT_RING);
    this.dma.writeU32(ERST + 8, eventTrbs);
    this.w32(IR0 + 8, 1); // ERSTSZ
    this.w64(IR0 + 0x18, EVENT_RING); // ERDP
    this.w64(IR0 + 0x10, ERST); // ERSTBA
    this.eventDeq = EVENT_RING;
    this.eventCycle = 1;
    this.w32(IR0, 2); // IMAN.IE
    this.w32(IR0 + 4, 0); // no moderation
    this.w32(OP, 1 | 4); // RS | INTE
  }

  /** Reads the new events and acknowledges them (ERDP with EHB). */
  events(ack = true): Event[] {
    const out: Event[] = [];
    for (let n = 0; n < this.eventTrbs; n++) {
      const control = this.dma.readU32(this.eventDeq + 12);
      if ((control & 1) !== this.eventCycle) break;
      const status = this.dma.readU32(this.eventDeq + 8);
      out.push({
        type: (control >>> 10) & 0x3f, code: status >>> 24, slot: control >>> 24, ep: (control >>> 16) & 0x1f,
        param: this.dma.readU64(this.eventDeq), length: status & 0xffffff, ed: (control & 4) !== 0, addr: this.eventDeq,
      });
      this.eventDeq += 16;
      if (this.eventDeq === EVENT_RING + this.eventTrbs * 16) {
        this.eventDeq = EVENT_RING;
        this.eventCycle ^= 1;
      }
    }
    if (ack) this.w64(IR0 + 0x18, this.eventDeq | 8);
    return out;
  }

  /** Queues a command, rings DB0, returns its completion event (and checks there is exactly one new one for it). */
  command(p0: number, p1: number, status: number, control: number): Event {
    const at = this.cmd.push(p0, p1, status, control);
    this.w32(DB, 0);
    const ev = this.events().find((e) => e.type === 33 && e.param === at);
    if (ev === undefined) throw new Error(`no completion for the command at 0x${at.toString(16)}`);
    return ev;
  }

  enableSlot(): number {
    const ev = this.command(0, 0, 0, trb(9));
    if (ev.code !== 1) throw new Error(`Enable Slot: code ${ev.code}`);
    return ev.slot;
  }

  ring(slot: number, dci: number): RingWriter {
    const key = `${slot}/${dci}`;
    let r = this.rings.get(key);
    if (r === undefined) {
      r = new RingWriter(this.dma, RINGS + 0x400 * (this.rings.size), 64);
      this.rings.set(key, r);
    }
    return r;
  }

  /** Builds the input context for Address Device (slot + EP0) and runs it. */
  addressDevice(slot: number, port: number, speed: number, bsr = false, mps = 64): Event {
    this.dma.fill(INPUT_CTX, 33 * 32, 0);
    this.dma.writeU32(INPUT_CTX + 4, 3); // A0 A1
    this.dma.writeU32(INPUT_CTX + 32, (1 << 27) | (speed << 20));
    this.dma.writeU32(INPUT_CTX + 32 + 4, port << 16);
    const ring = this.ring(slot, 1);
    this.dma.writeU32(INPUT_CTX + 64 + 4, (mps << 16) | (4 << 3) | (3 << 1));
    this.dma.writeU64(INPUT_CTX + 64 + 8, ring.enqueue | ring.cycle);
    return this.command(INPUT_CTX, 0, 0, trb(11, (bsr ? 1 << 9 : 0) | (slot << 24)));
  }

  /** Configure Endpoint adding endpoints (dci → EP type). */
  configure(slot: number, eps: [dci: number, type: number][], drop = 0): Event {
    this.dma.fill(INPUT_CTX, 33 * 32, 0);
    let add = 1;
    for (const [dci, type] of eps) {
      add |= 1 << dci;
      const ring = this.ring(slot, dci);
      const base = INPUT_CTX + 32 * (dci + 1);
      this.dma.writeU32(base + 4, (512 << 16) | (type << 3) | (3 << 1));
      this.dma.writeU64(base + 8, ring.enqueue | ring.cycle);
    }
    this.dma.writeU32(INPUT_CTX, drop);
    this.dma.writeU32(INPUT_CTX + 4, add);
    return this.command(INPUT_CTX, 0, 0, trb(12, slot << 24));
  }

  /** Endpoint state from the output context. */
  epState(slot: number, dci: number): number {
    return this.dma.readU32(OUTPUT_CTX + 0x400 * slot + 32 * dci) & 7;
  }
  slotState(slot: number): number {
    return this.dma.readU32(OUTPUT_CTX + 0x400 * slot + 12) >>> 27;
  }
  epDequeue(slot: number, dci: number): number {
    return this.dma.readU64(OUTPUT_CTX + 0x400 * slot + 32 * dci + 8);
  }

  /** Queues a control transfer on EP0 (Setup, optional Data, Status with IOC). Returns the TRB addresses. */
  control(slot: number, setup: [number, number, number, number, number], dataAddr: number, dataIn: boolean): number[] {
    const [requestType, request, value, index, length] = setup;
    const r = this.ring(slot, 1);
    const addrs: number[] = [];
    const trt = length === 0 ? 0 : dataIn ? 3 : 2;
    addrs.push(r.push((requestType | (request << 8) | (value << 16)) >>> 0, (index | (length << 16)) >>> 0, 8, trb(2, (1 << 6) | (trt << 16))));
    if (length > 0) addrs.push(r.push(dataAddr, 0, length, trb(3, (1 << 2) | (dataIn ? 1 << 16 : 0))));
    addrs.push(r.push(0, 0, 0, trb(4, (1 << 5) | (dataIn && length > 0 ? 0 : 1 << 16))));
    this.w32(DB + 4 * slot, 1);
    return addrs;
  }

  /** Full bring-up of a device on `port`: connect seen, reset (USB 2), slot, address. */
  enumerate(port: number, speed: number): number {
    if (port > 4) this.w32(PORTSC(port), (1 << 4) | (1 << 9));
    this.events();
    const slot = this.enableSlot();
    const ev = this.addressDevice(slot, port, speed);
    if (ev.code !== 1) throw new Error(`Address Device: code ${ev.code}`);
    return slot;
  }
}

export const DEVICE_DESCRIPTOR = [18, 1, 0x00, 0x02, 0, 0, 0, 64, 0x34, 0x12, 0x78, 0x56, 0x00, 0x01, 1, 2, 0, 1];

/**
 * A loopback device: EP0 answers GET_DESCRIPTOR(device), SET_ADDRESS, SET_CONFIGURATION,
 * CLEAR_FEATURE; bulk OUT endpoint 1 appends to a buffer that bulk IN endpoint 1 returns
 * (short if less is buffered). IN transfers wait while nothing is buffered.
 */
export class LoopbackDevice implements UsbDevice {
  readonly name = 'loopback';
  readonly vendorId = 0x1234;
  readonly productId = 0x5678;
  host: UsbPortHost | null = null;
  address = 0;
  configured = 0;
  buffered: number[] = [];
  received: number[][] = [];
  requests: string[] = [];
  stallOut = false;
  resets = 0;
  detached = false;
  cancelled: UsbTransfer[] = [];
  private waiting: { t: UsbTransfer; done: (t: UsbTransfer) => void }[] = [];
  constructor(readonly speed: UsbSpeed = 'high') {}
  attach(port: UsbPortHost): void { this.host = port; }
  detach(): void {
    this.detached = true;
    for (const w of this.waiting.splice(0)) { w.t.status = 'no-device'; w.done(w.t); }
  }
  reset(): void {
    this.resets++;
    this.address = 0;
    this.configured = 0;
    for (const w of this.waiting.splice(0)) { w.t.status = 'cancelled'; w.done(w.t); }
  }
  submit(t: UsbTransfer, done: (t: UsbTransfer) => void): void {
    if (t.type === 'control' && t.setup !== null) {
      const s = t.setup;
      this.requests.push(`${s.requestType.toString(16)}:${s.request}:${s.value}`);
      if (s.request === 6 && s.value >>> 8 === 1) {
        const n = Math.min(t.data.length, DEVICE_DESCRIPTOR.length);
        t.data.set(DEVICE_DESCRIPTOR.slice(0, n));
        t.actualLength = n;
        t.status = 'ok';
      } else if (s.request === 5) {
        this.address = s.value;
        t.status = 'ok';
      } else if (s.request === 9) {
        this.configured = s.value;
        t.status = 'ok';
      } else if (s.request === 1) {
        t.status = 'ok';
      } else {
        t.status = 'stall';
      }
      return done(t);
    }
    if (!t.in) {
      if (this.stallOut) {
        t.status = 'stall';
        return done(t);
      }
      this.received.push([...t.data]);
      this.buffered.push(...t.data);
      t.actualLength = t.data.length;
      t.status = 'ok';
      done(t);
      this.flush();
      return;
    }
    this.waiting.push({ t, done });
    this.flush();
  }
  cancel(t: UsbTransfer): void {
    const i = this.waiting.findIndex((w) => w.t === t);
    if (i < 0) return;
    const [w] = this.waiting.splice(i, 1);
    this.cancelled.push(t);
    t.status = 'cancelled';
    w.done(t);
  }
  get pendingIn(): number {
    return this.waiting.length;
  }
  private flush(): void {
    while (this.waiting.length > 0 && this.buffered.length > 0) {
      const w = this.waiting.shift()!;
      const n = Math.min(w.t.data.length, this.buffered.length);
      w.t.data.set(this.buffered.splice(0, n));
      w.t.actualLength = n;
      w.t.status = 'ok';
      w.done(w.t);
    }
  }
}
