// Rings: reading TRBs at a cursor (following Link TRBs, bounded), and the event ring of an
// interrupter with its segment table (ERST).
import { DMA_OK, type DmaMemory } from '../../../memory/dma';
import {
  CC_EVENT_RING_FULL, ERDP_EHB, ERST_MAX_LOG2, MAX_LINKS_IN_A_ROW, TRB_CYCLE, TRB_HOST_CONTROLLER_EVENT, TRB_LINK, TRB_TC,
} from './constants';
import { pointer, type Trb, trbType } from './core';

const trbWords = new Uint32Array(4);

/** Reads the TRB at `addr` into `out`; returns a DMA status. Allocates nothing. */
export function readTrb(dma: DmaMemory, addr: number, out: Trb): number {
  const status = dma.readU32s(addr, trbWords, 4);
  if (status !== DMA_OK) return status;
  out.addr = addr;
  out.p0 = trbWords[0];
  out.p1 = trbWords[1];
  out.status = trbWords[2];
  out.control = trbWords[3];
  return DMA_OK;
}

export function newTrb(): Trb {
  return { addr: 0, p0: 0, p1: 0, status: 0, control: 0 };
}

export interface RingCursor {
  ptr: number;
  cycle: number;
}

export const FETCH_OK = 0;
/** The TRB at the cursor still belongs to software (cycle bit mismatch). */
export const FETCH_EMPTY = 1;
/** The TRB could not be read (DMA error). */
export const FETCH_DMA_ERROR = 2;
/** Too many Link TRBs in a row: a loop (CVE-2020-14394). */
export const FETCH_LINK_LOOP = 3;

/**
 * Reads the next non-Link TRB at the cursor into `out`, following Link TRBs (and their
 * Toggle Cycle) but at most MAX_LINKS_IN_A_ROW of them. The cursor is left on the TRB read:
 * the caller moves it on (cursor.ptr += 16) once it consumes it.
 */
export function fetchTrb(dma: DmaMemory, cursor: RingCursor, out: Trb): number {
  for (let links = 0; links <= MAX_LINKS_IN_A_ROW; links++) {
    if (readTrb(dma, cursor.ptr, out) !== DMA_OK) return FETCH_DMA_ERROR;
    if ((out.control & TRB_CYCLE) !== cursor.cycle) return FETCH_EMPTY;
    if (trbType(out.control) !== TRB_LINK) return FETCH_OK;
    cursor.ptr = pointer(out.p0 & ~0xf, out.p1);
    if (out.control & TRB_TC) cursor.cycle ^= 1;
  }
  return FETCH_LINK_LOOP;
}

interface Segment {
  base: number;
  size: number;
}

/** An interrupter's register set: 8 dwords (xHCI 5.5.2), in the order of the register map. */
export const INTERRUPTER_WORDS = 8;
const W_IMAN = 0;
const W_IMOD = 1;
const W_ERSTSZ = 2;
const W_ERSTBA_LO = 4;
const W_ERSTBA_HI = 5;
const W_ERDP_LO = 6;
const W_ERDP_HI = 7;

/**
 * The event ring of one interrupter, and its interrupter registers. The registers live in
 * `words` exactly as the guest reads them (ERDP's low dword carries EHB), so the PCI function
 * can map that memory into the guest read-only and the driver's register reads take no exit.
 */
export class EventRing {
  constructor(private readonly words: Uint32Array = new Uint32Array(INTERRUPTER_WORDS)) {
    if (words.length < INTERRUPTER_WORDS) throw new Error('an interrupter needs 8 register words');
  }

  get iman(): number { return this.words[W_IMAN]; }
  set iman(v: number) { this.words[W_IMAN] = v; }
  get imod(): number { return this.words[W_IMOD]; }
  set imod(v: number) { this.words[W_IMOD] = v; }
  get erstsz(): number { return this.words[W_ERSTSZ]; }
  set erstsz(v: number) { this.words[W_ERSTSZ] = v; }
  get erstbaLow(): number { return this.words[W_ERSTBA_LO]; }
  set erstbaLow(v: number) { this.words[W_ERSTBA_LO] = v; }
  get erstbaHigh(): number { return this.words[W_ERSTBA_HI]; }
  set erstbaHigh(v: number) { this.words[W_ERSTBA_HI] = v; }
  /** ERDP's pointer and DESI, without EHB. */
  get erdpLow(): number { return this.words[W_ERDP_LO] & ~ERDP_EHB; }
  set erdpLow(v: number) { this.words[W_ERDP_LO] = (v & ~ERDP_EHB) | (this.words[W_ERDP_LO] & ERDP_EHB); }
  get erdpHigh(): number { return this.words[W_ERDP_HI]; }
  set erdpHigh(v: number) { this.words[W_ERDP_HI] = v; }
  /** ERDP.EHB: an interrupt was signalled and software has not yet cleared it. */
  get busy(): boolean { return (this.words[W_ERDP_LO] & ERDP_EHB) !== 0; }
  set busy(v: boolean) { this.words[W_ERDP_LO] = v ? this.words[W_ERDP_LO] | ERDP_EHB : this.words[W_ERDP_LO] & ~ERDP_EHB; }

  /** The register a read of dword `reg` (byte offset in the set) returns. */
  register(reg: number): number {
    return reg >= 0 && reg < 4 * INTERRUPTER_WORDS && (reg & 3) === 0 ? this.words[reg >>> 2] : 0;
  }

  /** Events were posted that software may not have seen yet. */
  pending = false;
  /** Set up by a valid ERSTBA write. */
  valid = false;
  private segments: Segment[] = [];
  private segment = 0;
  private index = 0;
  private cycle = 1;
  /** Event Ring Full Error was written; nothing more until software moves ERDP. */
  private full = false;
  /** Interrupt moderation: when the last interrupt fired, and a deferred one. */
  lastInterrupt = -Infinity;
  moderationTimer: (() => void) | null = null;
  /** The sink's line for this interrupter is up. */
  asserted = false;

  reset(): void {
    this.words.fill(0, 0, INTERRUPTER_WORDS);
    this.iman = 0;
    this.imod = 4000; // 1 ms, the spec's default
    this.erstsz = 0;
    this.erstbaLow = this.erstbaHigh = this.erdpLow = this.erdpHigh = 0;
    this.busy = this.pending = this.valid = this.full = false;
    this.segments = [];
    this.segment = this.index = 0;
    this.cycle = 1;
    this.lastInterrupt = -Infinity;
    this.moderationTimer?.();
    this.moderationTimer = null;
    this.asserted = false;
  }

  get dequeue(): number {
    return pointer(this.erdpLow & ~0xf, this.erdpHigh);
  }

  get enqueue(): number {
    const s = this.segments[this.segment];
    return s === undefined ? 0 : s.base + this.index * 16;
  }

  get cycleState(): number {
    return this.cycle;
  }

  /**
   * (Re)initializes the ring from ERSTSZ/ERSTBA (xHCI 4.9.4). Returns null, or why the table
   * is unusable (the caller raises Host System Error). ERSTSZ 0 disables the ring.
   */
  setup(dma: DmaMemory): string | null {
    this.valid = false;
    this.segments = [];
    this.segment = this.index = 0;
    this.cycle = 1;
    this.full = false;
    this.pending = false;
    const count = this.erstsz & 0xffff;
    if (count === 0) return null;
    if (count > 1 << ERST_MAX_LOG2) return `ERSTSZ ${count} is above ERST Max`;
    const table = pointer(this.erstbaLow & ~0x3f, this.erstbaHigh);
    const entry = new Uint8Array(16);
    const view = new DataView(entry.buffer);
    for (let i = 0; i < count; i++) {
      if (dma.read(table + i * 16, entry) !== DMA_OK) return `ERST entry ${i} at 0x${(table + i * 16).toString(16)} is not readable`;
      const lo = view.getUint32(0, true);
      const base = pointer(lo, view.getUint32(4, true));
      const size = view.getUint32(8, true) & 0xffff;
      if ((lo & 0x3f) !== 0) return `ERST entry ${i}: segment base is not 64-byte aligned`;
      if (size < 16 || size > 4096) return `ERST entry ${i}: segment size ${size} is outside 16..4096`;
      if (dma.check(base, size * 16, true) !== DMA_OK) return `ERST entry ${i}: segment 0x${base.toString(16)}+${size * 16} is not guest RAM`;
      this.segments.push({ base, size });
    }
    this.valid = true;
    return null;
  }

  /** Software moved ERDP: a full ring takes events again once there is room. */
  dequeueMoved(): void {
    if (this.full && this.valid && this.after(1) !== this.dequeue) this.full = false;
  }

  /** Whether events are waiting past ERDP (one slot always stays empty, so enqueue = dequeue means none). */
  hasUnread(): boolean {
    return this.valid && this.dequeue !== this.enqueue;
  }

  /**
   * Writes an event TRB. Returns 'ok', 'dropped' (ring full: Event Ring Full Error was, or is
   * now, the last event), or 'dma' (the segment could not be written). One slot always stays
   * empty so that enqueue = dequeue means "empty" (xHCI 4.9.4).
   */
  post(dma: DmaMemory, p0: number, p1: number, status: number, control: number): 'ok' | 'dropped' | 'dma' {
    if (this.full) {
      if (this.after(1) === this.dequeue) return 'dropped';
      this.full = false;
    }
    const deq = this.dequeue;
    if (this.after(1) === deq) {
      this.full = true;
      return 'dropped';
    }
    const at = this.enqueue;
    if (this.after(2) === deq) {
      // Room for one more: it gets Event Ring Full Error, the event is lost.
      if (this.write(dma, at, 0, 0, CC_EVENT_RING_FULL << 24, TRB_HOST_CONTROLLER_EVENT << 10) !== DMA_OK) return 'dma';
      this.step();
      this.full = true;
      this.pending = true;
      return 'dropped';
    }
    if (this.write(dma, at, p0, p1, status, control) !== DMA_OK) return 'dma';
    this.step();
    this.pending = true;
    return 'ok';
  }

  private write(dma: DmaMemory, at: number, p0: number, p1: number, status: number, control: number): number {
    // The cycle bit goes last: the guest may be reading the ring on another vCPU.
    const c = (control & ~TRB_CYCLE) | this.cycle;
    let s = dma.writeU32(at, p0);
    if (s === DMA_OK) s = dma.writeU32(at + 4, p1);
    if (s === DMA_OK) s = dma.writeU32(at + 8, status);
    if (s === DMA_OK) s = dma.writeU32(at + 12, c);
    return s;
  }

  /** The enqueue address `steps` (1 or 2) TRBs on. */
  private after(steps: number): number {
    let segment = this.segment;
    let index = this.index;
    for (let i = 0; i < steps; i++) {
      index++;
      if (index >= this.segments[segment].size) {
        index = 0;
        segment = (segment + 1) % this.segments.length;
      }
    }
    return this.segments[segment].base + index * 16;
  }

  private step(): void {
    this.index++;
    if (this.index >= this.segments[this.segment].size) {
      this.index = 0;
      this.segment++;
      if (this.segment >= this.segments.length) {
        this.segment = 0;
        this.cycle ^= 1;
      }
    }
  }
}
