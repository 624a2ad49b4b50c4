// MSI-X (PCI Local Bus 3.0 §6.8.2, PCIe Base §7.7.2): the capability in configuration
// space, and the vector table and pending bit array (PBA) that live in a memory BAR. The
// device's MMIO handler for that BAR forwards table and PBA accesses here (readBar /
// writeBar, or MsixMmio for a BAR of their own).
//
// Each vector is in one of three states, from the capability's Enable and Function Mask
// bits, the vector's Mask bit and the function's Bus Master Enable:
//   off:    MSI-X disabled or bus mastering off: messages are dropped;
//   masked: a message sets the vector's pending bit;
//   live:   a message is sent, through the vector's MSI route (a KVM GSI + irqfd).
// A live vector's eventfd is bound to KVM, so a write from any thread (vectorEventFd) is an
// interrupt with no JavaScript on the way. Masking unbinds it: writes then wait in the
// eventfd's counter, and become the pending bit when the PBA is read or the vector is
// unmasked (then sent once).
import type { IoDevice } from '../io-device';
import { createMsiRouteOrNull, type MsiMessage, type MsiRoute, type MsiRouter } from '../interrupts';
import type { StatsRegistry } from '../../shared/stats';
import { PCI_CAP_ID, PCI_CFG, PCI_COMMAND, type PciDevice } from './pci-device';

export const MSIX_MAX_VECTORS = 2048;
export const MSIX_ENTRY_SIZE = 16;
/** Message Control bits. */
export const MSIX_CONTROL = { TABLE_SIZE: 0x07ff, FUNCTION_MASK: 0x4000, ENABLE: 0x8000 } as const;
/** Vector Control: the entry's Mask bit (set at reset). */
export const MSIX_VECTOR_MASKED = 1;
/** The capability's length in configuration space. */
export const MSIX_CAP_LENGTH = 12;

const OFF = 0;
const MASKED = 1;
const LIVE = 2;
export type MsixVectorState = 'off' | 'masked' | 'live';
const STATE_NAMES: MsixVectorState[] = ['off', 'masked', 'live'];

export interface MsixLayout {
  /** Table entries: 1..2048. */
  vectors: number;
  /** BAR (0..5, a memory BAR already defined) and byte offset (8-aligned) of the table. */
  tableBar: number;
  tableOffset: number;
  /** BAR and byte offset (8-aligned) of the PBA. */
  pbaBar: number;
  pbaOffset: number;
}

export interface MsixOptions {
  /** Where vectors get MSI routes; without one, messages go through the bus (KVM_SIGNAL_MSI). */
  router?: MsiRouter | null;
  /** Counts messages sent per vector: group = device name, name = msix-<vector>. */
  statistics?: StatsRegistry | null;
  /** Where the capability goes in configuration space (default: the next free place). */
  capabilityOffset?: number;
}

export class MsixCapability {
  readonly offset: number;
  readonly vectors: number;
  readonly tableBar: number;
  readonly tableOffset: number;
  /** Table bytes in the BAR (16 per vector). */
  readonly tableSize: number;
  readonly pbaBar: number;
  readonly pbaOffset: number;
  /** PBA bytes in the BAR (a 64-bit word per 64 vectors). */
  readonly pbaSize: number;
  /** Address low, address high, data, vector control: four dwords per vector. */
  private readonly entries: Uint32Array;
  private readonly pending: Uint32Array;
  private readonly routes: (MsiRoute | null)[];
  /** The state each vector was last put in (routes bound or not accordingly). */
  private readonly applied: Uint8Array;
  /** Statistics slot per vector: -1 until its first message, -2 when the registry is full. */
  private readonly counters: Int32Array;
  private readonly router: MsiRouter | null;
  private readonly statistics: StatsRegistry | null;
  private routesRefused = false;

  constructor(private readonly device: PciDevice, layout: MsixLayout, opts: MsixOptions = {}) {
    const { vectors, tableBar, tableOffset, pbaBar, pbaOffset } = layout;
    const fail = (why: string): never => { throw new Error(`${device.name}: MSI-X ${why}`); };
    if (!Number.isInteger(vectors) || vectors < 1 || vectors > MSIX_MAX_VECTORS) fail(`vector count ${vectors} is not 1..${MSIX_MAX_VECTORS}`);
    this.vectors = vectors;
    this.tableSize = vectors * MSIX_ENTRY_SIZE;
    this.pbaSize = Math.ceil(vectors / 64) * 8;
    const checkRegion = (what: string, bar: number, offset: number, size: number) => {
      const spec = Number.isInteger(bar) && bar >= 0 && bar < 6 ? device.barSpec(bar) : null;
      if (!spec || spec.kind === 'io') fail(`${what} BAR ${bar} is not a defined memory BAR`);
      if (!Number.isInteger(offset) || offset < 0 || offset % 8 !== 0 || offset >= 2 ** 32) fail(`${what} offset ${offset} is not 8-byte aligned`);
      if (offset + size > (spec as { size: number }).size) fail(`${what} (${size} bytes at 0x${offset.toString(16)}) does not fit BAR ${bar}`);
    };
    checkRegion('table', tableBar, tableOffset, this.tableSize);
    checkRegion('PBA', pbaBar, pbaOffset, this.pbaSize);
    if (tableBar === pbaBar && tableOffset < pbaOffset + this.pbaSize && pbaOffset < tableOffset + this.tableSize) {
      fail('table and PBA overlap');
    }
    this.tableBar = tableBar;
    this.tableOffset = tableOffset;
    this.pbaBar = pbaBar;
    this.pbaOffset = pbaOffset;
    this.entries = new Uint32Array(vectors * 4);
    for (let v = 0; v < vectors; v++) this.entries[v * 4 + 3] = MSIX_VECTOR_MASKED;
    this.pending = new Uint32Array(this.pbaSize / 4);
    this.routes = new Array<MsiRoute | null>(vectors).fill(null);
    this.applied = new Uint8Array(vectors);
    this.counters = new Int32Array(vectors).fill(-1);
    this.router = opts.router ?? null;
    this.statistics = opts.statistics ?? null;

    const o = device.addCapability(PCI_CAP_ID.MSIX, MSIX_CAP_LENGTH, opts.capabilityOffset);
    this.offset = o;
    device.initCapability(o + 2, 2, vectors - 1, MSIX_CONTROL.FUNCTION_MASK | MSIX_CONTROL.ENABLE);
    device.initCapability(o + 4, 4, (tableOffset | tableBar) >>> 0, 0);
    device.initCapability(o + 8, 4, (pbaOffset | pbaBar) >>> 0, 0);
    device.addConfigListener((at, size) => {
      const touches = (start: number, end: number) => at < end && at + size > start;
      if (touches(PCI_CFG.COMMAND, PCI_CFG.COMMAND + 2) || touches(o + 2, o + 4)) this.updateAll();
    });
  }

  get enabled(): boolean {
    return (this.control & MSIX_CONTROL.ENABLE) !== 0;
  }

  get functionMasked(): boolean {
    return (this.control & MSIX_CONTROL.FUNCTION_MASK) !== 0;
  }

  private get control(): number {
    return this.device.getU16(this.offset + 2);
  }

  /** The vector's Mask bit (not counting the function mask). */
  vectorMasked(vector: number): boolean {
    return (this.entries[this.checkVector(vector) * 4 + 3] & MSIX_VECTOR_MASKED) !== 0;
  }

  vectorState(vector: number): MsixVectorState {
    return STATE_NAMES[this.stateOf(this.checkVector(vector))];
  }

  /** The address and data the guest programmed for `vector`. */
  message(vector: number): MsiMessage {
    const i = this.checkVector(vector) * 4;
    return { addressLo: this.entries[i], addressHi: this.entries[i + 1], data: this.entries[i + 2] };
  }

  /** The pending bit (writes made to a masked vector's eventfd count too). */
  isPending(vector: number): boolean {
    const v = this.checkVector(vector);
    this.collectPending(v, v + 1);
    return this.pendingBit(v);
  }

  /**
   * Sends `vector`'s message from the machine thread. Returns true if it was sent now;
   * false if it was left pending (masked) or dropped (MSI-X off, no bus mastering, no
   * such vector).
   */
  notify(vector: number): boolean {
    if (!Number.isInteger(vector) || vector < 0 || vector >= this.vectors) return false;
    const state = this.stateOf(vector);
    if (state === OFF) return false;
    if (state === MASKED) {
      this.setPendingBit(vector, true);
      return false;
    }
    return this.send(vector);
  }

  /** Clears a pending bit whose cause the device saw go away (PCI: function-specific). */
  clearPending(vector: number): void {
    const v = this.checkVector(vector);
    this.collectPending(v, v + 1);
    this.setPendingBit(v, false);
  }

  /**
   * The eventfd that fires `vector` when any thread writes it: sent while the vector is
   * live, pending while masked, dropped while off. Needs a router. Valid until the machine
   * ends. Whoever writes it may count into vectorCounter(vector).
   */
  vectorEventFd(vector: number): number {
    const route = this.routeOf(this.checkVector(vector));
    if (!route) throw new Error(`${this.device.name}: MSI-X vector ${vector} has no irqfd route`);
    return route.eventFd;
  }

  /** The statistics slot of `vector` (msix-<vector>), or -1 without a registry. */
  vectorCounter(vector: number): number {
    return this.counterOf(this.checkVector(vector));
  }

  // --- the table and PBA in the BAR ----------------------------------------------------

  /**
   * Reads `size` (1, 2 or 4) bytes at `offset` of BAR `bar` if they are the table's or the
   * PBA's; null if the access is elsewhere in the BAR (the device's own registers).
   * 8-byte accesses are two 4-byte ones (MsixMmio splits them).
   */
  readBar(bar: number, offset: number, size: number): number | null {
    if (bar === this.tableBar && offset >= this.tableOffset && offset < this.tableOffset + this.tableSize) {
      return this.readTable(offset - this.tableOffset, size);
    }
    if (bar === this.pbaBar && offset >= this.pbaOffset && offset < this.pbaOffset + this.pbaSize) {
      return this.readPba(offset - this.pbaOffset, size);
    }
    return null;
  }

  /** Writes to the table or PBA of BAR `bar`; false if the access is elsewhere in the BAR. */
  writeBar(bar: number, offset: number, size: number, value: number): boolean {
    if (bar === this.tableBar && offset >= this.tableOffset && offset < this.tableOffset + this.tableSize) {
      this.writeTable(offset - this.tableOffset, size, value);
      return true;
    }
    if (bar === this.pbaBar && offset >= this.pbaOffset && offset < this.pbaOffset + this.pbaSize) {
      this.writePba(offset - this.pbaOffset, size, value);
      return true;
    }
    return false;
  }

  /**
   * A read inside the table (`offset` from its start). Naturally aligned 1, 2 and 4-byte
   * reads return the entry's bytes; anything else (unaligned, straddling the end, another
   * size) reads 0.
   */
  readTable(offset: number, size: number): number {
    if (!alignedInside(offset, size, this.tableSize)) return 0;
    return pick(this.entries[offset >>> 2], offset, size);
  }

  /**
   * A write inside the table. Software must write whole aligned dwords (PCI 6.8.2); other
   * writes are ignored. Address bits 1:0 and the reserved Vector Control bits read as 0.
   */
  writeTable(offset: number, size: number, value: number): void {
    if (size !== 4 || !alignedInside(offset, size, this.tableSize)) return;
    const i = offset >>> 2;
    const vector = i >>> 2;
    const field = i & 3;
    if (field === 3) {
      const before = this.entries[i];
      this.entries[i] = value & MSIX_VECTOR_MASKED;
      if (before !== this.entries[i]) this.update(vector);
      return;
    }
    this.entries[i] = field === 0 ? (value & ~3) >>> 0 : value >>> 0;
    // A live vector's route follows at once (the guest should mask first; Linux may not).
    if (this.applied[vector] === LIVE) this.routes[vector]?.attach(this.message(vector));
  }

  /** A read inside the PBA: as readTable, over the pending bits. */
  readPba(offset: number, size: number): number {
    if (!alignedInside(offset, size, this.pbaSize)) return 0;
    const first = (offset >>> 2) * 32;
    this.collectPending(first, Math.min(first + 32, this.vectors));
    return pick(this.pending[offset >>> 2], offset, size);
  }

  /** The PBA is read-only: guest writes are ignored. */
  writePba(_offset: number, _size: number, _value: number): void {}

  // --- vector state ----------------------------------------------------------------------

  private checkVector(vector: number): number {
    if (!Number.isInteger(vector) || vector < 0 || vector >= this.vectors) {
      throw new RangeError(`${this.device.name}: no MSI-X vector ${vector} (table of ${this.vectors})`);
    }
    return vector;
  }

  private stateOf(vector: number): number {
    const control = this.control;
    if (!(control & MSIX_CONTROL.ENABLE) || !(this.device.command & PCI_COMMAND.MASTER)) return OFF;
    if (control & MSIX_CONTROL.FUNCTION_MASK || this.entries[vector * 4 + 3] & MSIX_VECTOR_MASKED) return MASKED;
    return LIVE;
  }

  private pendingBit(vector: number): boolean {
    return (this.pending[vector >>> 5] & (1 << (vector & 31))) !== 0;
  }

  private setPendingBit(vector: number, on: boolean): void {
    const bit = 1 << (vector & 31);
    if (on) this.pending[vector >>> 5] |= bit;
    else this.pending[vector >>> 5] &= ~bit;
  }

  /** Turns writes that reached masked vectors' eventfds into pending bits. */
  private collectPending(from: number, to: number): void {
    for (let v = from; v < to; v++) {
      if (this.applied[v] === MASKED && this.routes[v]?.takePending()) this.setPendingBit(v, true);
    }
  }

  private updateAll(): void {
    const run = () => { for (let v = 0; v < this.vectors; v++) this.update(v); };
    if (this.router) this.router.batch(run);
    else run();
  }

  /** Brings vector `v`'s route in line with its state; a vector that goes live sends its pending message. */
  private update(v: number): void {
    const before = this.applied[v];
    const after = this.stateOf(v);
    this.applied[v] = after;
    if (after !== LIVE) {
      const route = this.routes[v];
      if (!route) return;
      route.detach();
      // What was written while off is dropped; from now on writes are pending.
      if (before === OFF && after === MASKED) route.takePending();
      return;
    }
    let pending = this.pendingBit(v);
    const route = this.routes[v];
    if (route && !route.attached) {
      const written = route.takePending();
      if (before === MASKED && written) pending = true;
    }
    route?.attach(this.message(v));
    if (pending) {
      this.setPendingBit(v, false);
      this.send(v);
    }
  }

  /** Sends a live vector's message: through its route, else through the bus. */
  private send(v: number): boolean {
    const route = this.routeOf(v);
    if (route) {
      route.trigger();
    } else {
      const m = this.message(v);
      if (!this.device.sendMsi(m.addressLo, m.addressHi, m.data)) return false;
    }
    const counter = this.counterOf(v);
    if (counter >= 0) this.statistics?.add(counter);
    return true;
  }

  /** The route of `v`, made on first use and bound if live; null without a router or when KVM's table is full. */
  private routeOf(v: number): MsiRoute | null {
    const known = this.routes[v];
    if (known) return known;
    if (!this.router || this.routesRefused) return null;
    const route = createMsiRouteOrNull(this.router);
    if (route === null) {
      // KVM's table is full: this function's vectors without a route use KVM_SIGNAL_MSI.
      this.routesRefused = true;
      return null;
    }
    this.routes[v] = route;
    if (this.applied[v] === LIVE) route.attach(this.message(v));
    return route;
  }

  private counterOf(v: number): number {
    const known = this.counters[v];
    if (known !== -1 || !this.statistics) return known === -2 ? -1 : known;
    try {
      this.counters[v] = this.statistics.counter(this.device.name, `msix-${v}`);
    } catch {
      this.counters[v] = -2; // the registry is full: this vector goes uncounted
      return -1;
    }
    return this.counters[v];
  }
}

/** `size` bytes at `offset` are a naturally aligned 1, 2 or 4-byte access inside `limit`. */
function alignedInside(offset: number, size: number, limit: number): boolean {
  return (size === 1 || size === 2 || size === 4) && Number.isInteger(offset) && offset >= 0
    && offset + size <= limit && offset % size === 0;
}

/** The `size` bytes at `offset` within their dword `dword`. */
function pick(dword: number, offset: number, size: number): number {
  if (size === 4) return dword >>> 0;
  const shifted = dword >>> ((offset & 3) * 8);
  return size === 2 ? shifted & 0xffff : shifted & 0xff;
}

/**
 * The MMIO handler of a BAR that holds only the MSI-X table and PBA (as virtio-pci lays
 * it out). Aligned 8-byte accesses are split into two dword accesses, low first; the rest
 * of the BAR reads 0 and ignores writes. The BAR is defined before the capability that
 * checks it, so the handler reaches the capability through `msix`, called at each access:
 *   this.defineBar(2, { kind: 'mem32', size: 0x1000, mmio: new MsixMmio('x-msix', 2, () => this.msix) });
 */
export class MsixMmio implements IoDevice {
  constructor(readonly name: string, private readonly bar: number, private readonly msix: () => MsixCapability | undefined) {}

  read(offset: number, size: number): number {
    return this.msix()?.readBar(this.bar, offset, size) ?? 0;
  }

  write(offset: number, size: number, value: number): void {
    this.msix()?.writeBar(this.bar, offset, size, value >>> 0);
  }

  /** An aligned 8-byte read: the low dword, then the high one; unaligned reads 0. */
  read64(offset: number, halves: Uint32Array): void {
    const msix = this.msix();
    halves[0] = 0;
    halves[1] = 0;
    if (!msix || offset % 8 !== 0) return;
    halves[0] = msix.readBar(this.bar, offset, 4) ?? 0;
    halves[1] = msix.readBar(this.bar, offset + 4, 4) ?? 0;
  }

  /** An aligned 8-byte write: the low dword first (the address before the data); unaligned is ignored. */
  write64(offset: number, low: number, high: number): void {
    const msix = this.msix();
    if (!msix || offset % 8 !== 0) return;
    msix.writeBar(this.bar, offset, 4, low);
    msix.writeBar(this.bar, offset + 4, 4, high);
  }
}
