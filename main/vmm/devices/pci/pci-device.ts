// A PCI function's type 0 configuration space: identity, command/status, BARs (with the
// write-all-ones sizing protocol), interrupt pin/line, a capability list, INTx and MSI.
// Device models (virtio, xHCI, ...) extend PciDevice and declare their BARs.
//
// A configuration write never maps anything itself: it returns what it changed (a
// ConfigWriteResult, after crosvm's) and the bus owner (PciBus) applies that once the
// write has returned, so no register block is re-registered while a bus dispatches to it.
import type { IoDevice } from '../io-device';
import { createMsiRouteOrNull, type MsiMessage, type MsiRoute, type MsiRouter } from '../interrupts';
import type { GuestMemory } from '../../memory/guest-memory';
import { DmaMemory, NO_MEMORY } from '../../memory/dma';

export const PCI_CFG = {
  VENDOR_ID: 0x00,
  DEVICE_ID: 0x02,
  COMMAND: 0x04,
  STATUS: 0x06,
  REVISION: 0x08,
  CLASS_PROG: 0x09,
  CACHE_LINE_SIZE: 0x0c,
  LATENCY_TIMER: 0x0d,
  HEADER_TYPE: 0x0e,
  BIST: 0x0f,
  BAR0: 0x10,
  SUBSYSTEM_VENDOR_ID: 0x2c,
  SUBSYSTEM_ID: 0x2e,
  ROM_ADDRESS: 0x30,
  CAPABILITY_LIST: 0x34,
  INTERRUPT_LINE: 0x3c,
  INTERRUPT_PIN: 0x3d,
} as const;

export const PCI_COMMAND = { IO: 0x1, MEMORY: 0x2, MASTER: 0x4, PARITY: 0x40, SERR: 0x100, INTX_DISABLE: 0x400 } as const;
export const PCI_STATUS = { INTERRUPT: 0x08, CAP_LIST: 0x10 } as const;
export const PCI_CAP_ID = { PM: 0x01, MSI: 0x05, VENDOR: 0x09, PCIE: 0x10, MSIX: 0x11 } as const;
export const PCI_HEADER_MULTIFUNCTION = 0x80;
export const PCI_BAR_COUNT = 6;
export const PCI_ROM_BAR = 6;

export type BarKind = 'io' | 'mem32' | 'mem64';

export interface BarSpec {
  kind: BarKind;
  /** A power of two: at least 4 for I/O, 16 for memory. */
  size: number;
  prefetchable?: boolean;
  /** Registered on the PIO bus while the BAR is mapped (I/O BARs). */
  io?: IoDevice;
  /** Registered on the MMIO bus while the BAR is mapped (memory BARs). */
  mmio?: IoDevice;
}

interface BarState {
  spec: BarSpec;
  /** Where the BAR decodes (null: nowhere), as last reported in a ConfigWriteResult. */
  mapped: number | null;
}

/** A register block a function decodes: a BAR, or a window a config register places (PIIX4's PM block). */
export interface PciMapping {
  space: 'io' | 'mmio';
  base: number;
  length: number;
  io: IoDevice;
  /** The BAR index, for BARs. */
  bar?: number;
}

/** What a configuration write changed: blocks to unmap, then blocks to map. */
export class ConfigWriteResult {
  readonly unmap: PciMapping[] = [];
  readonly map: PciMapping[] = [];

  get empty(): boolean {
    return this.unmap.length === 0 && this.map.length === 0;
  }

  /** Records that `io` moved from `from` to `to` (either may be null: not decoded). */
  move(space: PciMapping['space'], io: IoDevice, length: number, from: number | null, to: number | null, bar?: number): void {
    if (from === to) return;
    if (from !== null) this.unmap.push({ space, base: from, length, io, bar });
    if (to !== null) this.map.push({ space, base: to, length, io, bar });
  }
}

export interface PciIdentity {
  vendorId: number;
  deviceId: number;
  /** class << 16 | subclass << 8 | programming interface. */
  classCode: number;
  revision?: number;
  subsystemVendorId?: number;
  subsystemId?: number;
  multifunction?: boolean;
  /** 0: none, 1..4: INTA..INTD. */
  interruptPin?: number;
}

/** QEMU's default subsystem IDs; SeaBIOS checks them on the host bridge to detect QEMU. */
export const QEMU_SUBSYSTEM_VENDOR = 0x1af4;
export const QEMU_SUBSYSTEM_ID = 0x1100;

/** What a function needs of the bus it sits on (PciBus implements it). */
export interface PciFunctionBus {
  readonly memory?: GuestMemory;
  signalMsi(addressLo: number, addressHi: number, data: number): void;
  setIntx(device: PciDevice, pin: number, level: boolean): void;
  /** The GSI an INTx pin reaches now, for an irqfd (PciBus). */
  intxGsi?(device: PciDevice, pin: number): number | null;
  onIntxRouteChange?(listener: () => void): void;
}

export class PciDevice {
  readonly config = new Uint8Array(256);
  /** Bits the guest may change. */
  protected readonly writeMask = new Uint8Array(256);
  /** Bits a guest write of 1 clears (status error bits). */
  protected readonly clearMask = new Uint8Array(256);
  private readonly bars: (BarState | null)[] = new Array(PCI_BAR_COUNT + 1).fill(null);
  private nextCapability = 0x40;
  private lastCapability = -1;
  private intxAsserted = false;
  /** Capabilities that follow configuration writes (MSI, MSI-X). */
  private readonly configListeners: ((offset: number, size: number) => void)[] = [];
  /** The bus this function sits on (set by PciBus.attach). */
  bus: PciFunctionBus | null = null;
  slot = -1;
  function = -1;

  constructor(readonly name: string, id: PciIdentity) {
    this.setU16(PCI_CFG.VENDOR_ID, id.vendorId);
    this.setU16(PCI_CFG.DEVICE_ID, id.deviceId);
    this.config[PCI_CFG.REVISION] = id.revision ?? 0;
    this.config[PCI_CFG.CLASS_PROG] = id.classCode & 0xff;
    this.config[PCI_CFG.CLASS_PROG + 1] = (id.classCode >>> 8) & 0xff;
    this.config[PCI_CFG.CLASS_PROG + 2] = (id.classCode >>> 16) & 0xff;
    this.config[PCI_CFG.HEADER_TYPE] = id.multifunction ? PCI_HEADER_MULTIFUNCTION : 0;
    this.setU16(PCI_CFG.SUBSYSTEM_VENDOR_ID, id.subsystemVendorId ?? QEMU_SUBSYSTEM_VENDOR);
    this.setU16(PCI_CFG.SUBSYSTEM_ID, id.subsystemId ?? QEMU_SUBSYSTEM_ID);
    this.config[PCI_CFG.INTERRUPT_PIN] = id.interruptPin ?? 0;
    this.setWritable(PCI_CFG.COMMAND, 2, PCI_COMMAND.IO | PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER | PCI_COMMAND.PARITY | PCI_COMMAND.SERR | PCI_COMMAND.INTX_DISABLE);
    this.clearMask[PCI_CFG.STATUS + 1] = 0xf9; // parity, target/master abort, SERR, parity error
    this.writeMask[PCI_CFG.CACHE_LINE_SIZE] = 0xff;
    this.writeMask[PCI_CFG.LATENCY_TIMER] = 0xff;
    this.writeMask[PCI_CFG.INTERRUPT_LINE] = 0xff;
  }

  get vendorId(): number { return this.getU16(PCI_CFG.VENDOR_ID); }
  get deviceId(): number { return this.getU16(PCI_CFG.DEVICE_ID); }
  get command(): number { return this.getU16(PCI_CFG.COMMAND); }
  get interruptPin(): number { return this.config[PCI_CFG.INTERRUPT_PIN]; }

  // --- helpers for subclasses -----------------------------------------------------

  getU16(at: number): number {
    return this.config[at] | (this.config[at + 1] << 8);
  }
  getU32(at: number): number {
    return (this.config[at] | (this.config[at + 1] << 8) | (this.config[at + 2] << 16) | (this.config[at + 3] << 24)) >>> 0;
  }
  protected setU16(at: number, v: number): void {
    this.config[at] = v & 0xff;
    this.config[at + 1] = (v >>> 8) & 0xff;
  }
  protected setU32(at: number, v: number): void {
    for (let i = 0; i < 4; i++) this.config[at + i] = (v >>> (8 * i)) & 0xff;
  }
  /** Marks `mask` (little-endian, `size` bytes at `at`) as guest-writable. */
  protected setWritable(at: number, size: number, mask: number): void {
    for (let i = 0; i < size; i++) this.writeMask[at + i] = Math.floor(mask / 2 ** (8 * i)) & 0xff;
  }

  /** Declares BAR `index` (0..5, or PCI_ROM_BAR for the expansion ROM). A 64-bit BAR uses index+1 too. */
  defineBar(index: number, spec: BarSpec): void {
    const { size, kind } = spec;
    if (!Number.isInteger(index) || index < 0 || index > PCI_ROM_BAR) throw new Error(`${this.name}: BAR ${index} does not exist`);
    if (!isPowerOfTwo(size)) throw new Error(`${this.name}: BAR ${index} size ${size} is not a power of two`);
    if (kind === 'io' && (size < 4 || size > 256)) throw new Error(`${this.name}: I/O BAR ${index} must be 4..256 bytes`);
    if (kind !== 'io' && size < 16) throw new Error(`${this.name}: memory BAR ${index} must be at least 16 bytes`);
    if (kind === 'mem32' && size > 2 ** 31) throw new Error(`${this.name}: 32-bit BAR ${index} cannot be larger than 2 GiB`);
    if (kind === 'mem64' && index >= PCI_BAR_COUNT - 1) throw new Error(`${this.name}: 64-bit BAR ${index} needs two BAR slots`);
    if (index === PCI_ROM_BAR && (kind !== 'mem32' || size < 2048)) throw new Error(`${this.name}: the expansion ROM BAR is a 32-bit memory BAR of at least 2 KiB`);
    const upperHalfOf = index > 0 && this.bars[index - 1]?.spec.kind === 'mem64';
    if (upperHalfOf || (kind === 'mem64' && this.bars[index + 1])) throw new Error(`${this.name}: BAR ${index} overlaps a 64-bit BAR`);
    this.bars[index] = { spec, mapped: null };
    if (index === PCI_ROM_BAR) {
      this.setU32(PCI_CFG.ROM_ADDRESS, 0);
      this.setWritable(PCI_CFG.ROM_ADDRESS, 4, ((0xfffff800 & ~(size - 1)) | 1) >>> 0);
      return;
    }
    const at = PCI_CFG.BAR0 + index * 4;
    if (kind === 'io') {
      this.setU32(at, 0x1);
      this.setWritable(at, 4, (0xfffffffc & ~(size - 1)) >>> 0);
      return;
    }
    const flags = (kind === 'mem64' ? 0x4 : 0) | (spec.prefetchable ? 0x8 : 0);
    this.setU32(at, flags);
    const lowMask = size >= 2 ** 32 ? 0 : (0xfffffff0 & ~(size - 1)) >>> 0;
    this.setWritable(at, 4, lowMask);
    if (kind === 'mem64') {
      const highMask = size > 2 ** 32 ? (0xffffffff - (size / 2 ** 32 - 1)) >>> 0 : 0xffffffff;
      this.setU32(at + 4, 0);
      this.setWritable(at + 4, 4, highMask);
    }
  }

  /** The address BAR `index` decodes at now, or null if it does not decode. */
  barAddress(index: number): number | null {
    const bar = this.bars[index];
    if (!bar) return null;
    const { kind, size } = bar.spec;
    const command = this.command;
    if (index === PCI_ROM_BAR) {
      const v = this.getU32(PCI_CFG.ROM_ADDRESS);
      if (!(command & PCI_COMMAND.MEMORY) || !(v & 1)) return null;
      const addr = (v & 0xfffff800 & ~(size - 1)) >>> 0;
      return addr === 0 || addr + size > 2 ** 32 ? null : addr;
    }
    const at = PCI_CFG.BAR0 + index * 4;
    if (kind === 'io') {
      if (!(command & PCI_COMMAND.IO)) return null;
      const addr = (this.getU32(at) & 0xfffffffc & ~(size - 1)) >>> 0;
      // x86 has 64 KiB of port space.
      return addr === 0 || addr + size > 0x10000 ? null : addr;
    }
    if (!(command & PCI_COMMAND.MEMORY)) return null;
    let addr = (this.getU32(at) & 0xfffffff0) >>> 0;
    if (kind === 'mem64') addr += this.getU32(at + 4) * 2 ** 32;
    addr -= addr % size;
    const limit = kind === 'mem64' ? 2 ** 52 : 2 ** 32;
    return addr === 0 || addr + size > limit ? null : addr;
  }

  barSpec(index: number): BarSpec | null {
    return this.bars[index]?.spec ?? null;
  }

  /**
   * Adds a capability of `length` bytes (including the 2-byte header) and returns its
   * offset. Subclasses mark the capability's writable bits with setWritable.
   */
  addCapability(id: number, length: number, at?: number): number {
    const offset = at ?? this.nextCapability;
    if (offset < 0x40 || offset % 4 !== 0 || offset + length > 256 || length < 2) {
      throw new Error(`${this.name}: capability 0x${id.toString(16)} does not fit at 0x${offset.toString(16)}`);
    }
    this.config[offset] = id;
    this.config[offset + 1] = 0;
    if (this.lastCapability < 0) this.config[PCI_CFG.CAPABILITY_LIST] = offset;
    else this.config[this.lastCapability + 1] = offset;
    this.lastCapability = offset;
    this.nextCapability = Math.max(this.nextCapability, (offset + length + 3) & ~3);
    this.config[PCI_CFG.STATUS] |= PCI_STATUS.CAP_LIST;
    return offset;
  }

  /** Sets `size` bytes at `at` (inside a capability) and which of their bits the guest may write. */
  initCapability(at: number, size: number, value: number, writeMask: number): void {
    for (let i = 0; i < size; i++) this.config[at + i] = Math.floor(value / 2 ** (8 * i)) & 0xff;
    this.setWritable(at, size, writeMask);
  }

  private dmaAccessor: DmaMemory | null = null;

  /**
   * Guest memory as this function reaches it by DMA. Every access returns an error value
   * (DMA_DISABLED) while the command register's bus-master bit is clear, and DMA_OUTSIDE
   * while the function is not on a bus with guest memory.
   */
  get dma(): DmaMemory {
    let accessor = this.dmaAccessor;
    if (accessor === null || accessor.memory === NO_MEMORY) {
      accessor = new DmaMemory(this.bus?.memory ?? NO_MEMORY, () => (this.config[PCI_CFG.COMMAND] & PCI_COMMAND.MASTER) !== 0);
      this.dmaAccessor = accessor;
    }
    return accessor;
  }

  /** Sends an MSI as this function; dropped (false) unless the guest enabled bus mastering. */
  sendMsi(addressLo: number, addressHi: number, data: number): boolean {
    if (!this.bus || !(this.command & PCI_COMMAND.MASTER)) return false;
    this.bus.signalMsi(addressLo, addressHi, data);
    return true;
  }

  /** Offset of the first capability with this id, or -1. */
  findCapability(id: number): number {
    let at = this.config[PCI_CFG.CAPABILITY_LIST];
    for (let hops = 0; at !== 0 && hops < 48; hops++) {
      if (this.config[at] === id) return at;
      at = this.config[at + 1];
    }
    return -1;
  }

  // --- configuration access (from the host bridge) ----------------------------------

  /** `offset` + `size` stays inside the 256-byte space and within one dword. */
  readConfig(offset: number, size: number): number {
    this.beforeConfigRead(offset, size);
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + this.config[offset + i];
    return v;
  }

  /**
   * Stores a guest write (through the write and clear masks) and returns what it moved,
   * or null if nothing; the caller (the bus) maps and unmaps once this has returned.
   */
  writeConfig(offset: number, size: number, value: number): ConfigWriteResult | null {
    for (let i = 0; i < size; i++) {
      const at = offset + i;
      const byte = Math.floor(value / 2 ** (8 * i)) & 0xff;
      const w = this.writeMask[at];
      const c = this.clearMask[at];
      this.config[at] = ((this.config[at] & ~w) | (byte & w)) & ~(byte & c);
    }
    const changes = new ConfigWriteResult();
    const end = offset + size;
    if (offset < PCI_CFG.COMMAND + 2 && end > PCI_CFG.COMMAND) {
      this.updateIntx();
      this.updateBars(changes);
    } else if ((offset < PCI_CFG.BAR0 + 24 && end > PCI_CFG.BAR0) || (offset < PCI_CFG.ROM_ADDRESS + 4 && end > PCI_CFG.ROM_ADDRESS)) {
      this.updateBars(changes);
    }
    for (const listener of this.configListeners) listener(offset, size);
    this.configWritten(offset, size, changes);
    return changes.empty ? null : changes;
  }

  /** Calls `listener` after every configuration write (after BARs and INTx were updated). */
  addConfigListener(listener: (offset: number, size: number) => void): void {
    this.configListeners.push(listener);
  }

  /** Hook: refresh dynamic registers before a read. */
  protected beforeConfigRead(_offset: number, _size: number): void {}
  /**
   * Hook: react to a configuration write (after the bytes were stored). A window the
   * write moved goes into `changes`; the bus applies it.
   */
  protected configWritten(_offset: number, _size: number, _changes: ConfigWriteResult): void {}

  /** Called by the bus once the function has its address. */
  attached(): void {}

  /**
   * Everything that decodes now, as if the whole space had just been written: the bus
   * applies it when the function is attached.
   */
  mappingsAtAttach(): ConfigWriteResult {
    const changes = new ConfigWriteResult();
    this.updateBars(changes);
    this.configWritten(0, 256, changes);
    return changes;
  }

  // --- BAR mapping -------------------------------------------------------------------

  /** Reports every BAR whose decode state changed since the last report. */
  private updateBars(changes: ConfigWriteResult): void {
    for (let i = 0; i <= PCI_ROM_BAR; i++) {
      const bar = this.bars[i];
      if (!bar) continue;
      const address = this.barAddress(i);
      if (address === bar.mapped) continue;
      const previous = bar.mapped;
      bar.mapped = address;
      const { spec } = bar;
      const handler = spec.kind === 'io' ? spec.io : spec.mmio;
      if (handler) changes.move(spec.kind === 'io' ? 'io' : 'mmio', handler, spec.size, previous, address, i);
      this.barMoved(i, address, previous);
    }
  }

  /** Hook: a BAR started, stopped or moved decoding (the bus maps it once the write returns). */
  protected barMoved(_index: number, _address: number | null, _previous: number | null): void {}

  // --- interrupts --------------------------------------------------------------------

  /** Drives this function's INTx pin (as given by the interrupt pin register). */
  setIntx(level: boolean): void {
    this.intxAsserted = level;
    if (level) this.config[PCI_CFG.STATUS] |= PCI_STATUS.INTERRUPT;
    else this.config[PCI_CFG.STATUS] &= ~PCI_STATUS.INTERRUPT;
    this.updateIntx();
  }

  private updateIntx(): void {
    const pin = this.interruptPin;
    if (!this.bus || pin < 1 || pin > 4) return;
    const level = this.intxAsserted && !(this.command & PCI_COMMAND.INTX_DISABLE);
    this.bus.setIntx(this, pin, level);
  }
}

function isPowerOfTwo(n: number): boolean {
  return n >= 1 && 2 ** Math.round(Math.log2(n)) === n;
}

/** Bytes of the MSI capability MsiCapability makes (64-bit address, no masking). */
export const MSI_CAP_LENGTH = 0x0e;

/**
 * An MSI capability with a 64-bit address and 1..32 vectors (no per-vector masking).
 * `signal(vector)` delivers the message if the guest enabled MSI and bus mastering. With a
 * router, each vector used gets an MSI route whose eventfd (vectorEventFd) any thread may
 * write; the route follows the guest's address/data and is unbound while MSI is off.
 */
export class MsiCapability {
  readonly offset: number;
  private readonly routes: (MsiRoute | null)[] = [];
  private routesRefused = false;

  /** `at`: where the capability goes in configuration space (default: the next free place). */
  constructor(private readonly device: PciDevice, readonly vectors = 1, private readonly router: MsiRouter | null = null, at?: number) {
    if (![1, 2, 4, 8, 16, 32].includes(vectors)) throw new Error(`${device.name}: MSI vectors must be 1, 2, 4, 8, 16 or 32`);
    const o = device.addCapability(PCI_CAP_ID.MSI, MSI_CAP_LENGTH, at);
    this.offset = o;
    // Message control: 64-bit capable, Multiple Message Capable; enable and MME writable.
    device.initCapability(o + 2, 2, (Math.log2(vectors) << 1) | 0x80, 0x0071);
    device.initCapability(o + 4, 4, 0, 0xfffffffc);
    device.initCapability(o + 8, 4, 0, 0xffffffff);
    device.initCapability(o + 12, 2, 0, 0xffff);
    if (router) {
      device.addConfigListener((at, size) => {
        const touches = (start: number, end: number) => at < end && at + size > start;
        if (touches(PCI_CFG.COMMAND, PCI_CFG.COMMAND + 2) || touches(o, o + 0x0e)) this.updateRoutes();
      });
    }
  }

  get enabled(): boolean {
    return (this.device.getU16(this.offset + 2) & 1) !== 0;
  }

  /** Vectors the guest enabled (Multiple Message Enable, capped by what we offer). */
  get enabledVectors(): number {
    const mme = (this.device.getU16(this.offset + 2) >> 4) & 7;
    return Math.min(2 ** mme, this.vectors);
  }

  /** Returns true if a message was sent. */
  signal(vector = 0): boolean {
    if (!this.deliverable(vector)) return false;
    const route = this.routeOf(vector);
    if (route) {
      route.trigger();
      return true;
    }
    const m = this.messageOf(vector);
    return this.device.sendMsi(m.addressLo, m.addressHi, m.data);
  }

  /**
   * The eventfd that sends `vector` when written, from any thread (a VM host backend);
   * writes while the vector cannot be sent (MSI off, bus mastering off) are dropped.
   * Needs a router. Valid until the machine ends.
   */
  vectorEventFd(vector: number): number {
    if (!Number.isInteger(vector) || vector < 0 || vector >= this.vectors) throw new RangeError(`${this.device.name}: no MSI vector ${vector}`);
    const route = this.routeOf(vector);
    if (!route) throw new Error(`${this.device.name}: MSI vector ${vector} has no irqfd route`);
    return route.eventFd;
  }

  private deliverable(vector: number): boolean {
    return this.enabled && (this.device.command & PCI_COMMAND.MASTER) !== 0 && Number.isInteger(vector)
      && vector >= 0 && vector < this.enabledVectors;
  }

  private messageOf(vector: number): MsiMessage {
    const o = this.offset;
    // The low bits of the data select the vector within the enabled block.
    const data = (this.device.getU16(o + 12) & ~(this.enabledVectors - 1)) | vector;
    return { addressLo: this.device.getU32(o + 4), addressHi: this.device.getU32(o + 8), data };
  }

  /** The route of `vector`, made on first use and bound if the vector is deliverable; null without a router. */
  private routeOf(vector: number): MsiRoute | null {
    if (!this.router || this.routesRefused) return null;
    let route = this.routes[vector] ?? null;
    if (!route) {
      route = createMsiRouteOrNull(this.router);
      if (route === null) {
        // KVM's table is full: this function sends through KVM_SIGNAL_MSI instead.
        this.routesRefused = true;
        return null;
      }
      this.routes[vector] = route;
      this.updateRoute(vector, route);
    }
    return route;
  }

  private updateRoutes(): void {
    this.router?.batch(() => this.routes.forEach((route, vector) => { if (route) this.updateRoute(vector, route); }));
  }

  private updateRoute(vector: number, route: MsiRoute): void {
    if (!this.deliverable(vector)) {
      route.detach();
      return;
    }
    // Writes made while the vector could not be sent are dropped, not delivered late.
    if (!route.attached) route.takePending();
    route.attach(this.messageOf(vector));
  }
}
