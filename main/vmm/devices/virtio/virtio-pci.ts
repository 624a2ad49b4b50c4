// The modern virtio over PCI transport (virtio 1.x §4.1), no legacy interface. BAR 0 (32-bit
// memory, 16 KiB) holds the four structures the vendor capabilities point at:
//   0x0000 common configuration   0x1000 ISR status   0x2000 device configuration
//   0x3000 notifications (queue n at 0x3000 + 4n: notify_off n, multiplier 4)
// BAR 1 holds the MSI-X table (one vector per queue plus one for configuration changes) and
// PBA. The PCI configuration access capability reaches BAR 0 through configuration space.
// Without MSI-X the function interrupts on INTx A, and reading the ISR lowers it.
//
// A device type (virtio-blk) extends VirtioPciDevice: its features, its configuration bytes,
// and what a notify makes it do. A guest that breaks the rings gets DEVICE_NEEDS_RESET (and a
// configuration interrupt if it was running), never an exception out of the BAR handlers.
//
// A device given a data plane (dataplane-handoff.ts) lends its rings to another thread once
// the driver runs them with MSI-X and bus mastering on: notifies become ioeventfds and
// interrupts irqfds, so a queue kick never exits to JavaScript. It takes them back for a
// reset, the error state, a BAR move, bus mastering off, MSI-X off and its close.
import type { IoDevice } from '../io-device';
import { MsixCapability, MsixMmio } from '../pci/msix';
import { ConfigWriteResult, PCI_CAP_ID, PCI_COMMAND, PciDevice } from '../pci/pci-device';
import type { MsiRouter } from '../interrupts';
import { DATAPLANE_FLAG } from '../../shared/dataplane-block';
import type { DataPlaneHandoff } from './dataplane-handoff';
import type { StatsRegistry } from '../../shared/stats';
import { SplitVirtqueue, VIRTIO_NO_VECTOR, VIRTQ_MAX_SIZE, VIRTQ_SPEC_MAX_SIZE, VirtqueueError } from '../../shared/virtqueue';

export const VIRTIO_PCI_VENDOR = 0x1af4;
/** Modern device IDs are 0x1040 + the virtio device type. */
export const VIRTIO_PCI_DEVICE_BASE = 0x1040;

export const VIRTIO_STATUS = {
  ACKNOWLEDGE: 1, DRIVER: 2, DRIVER_OK: 4, FEATURES_OK: 8, NEEDS_RESET: 0x40, FAILED: 0x80,
} as const;

/** Feature bits of the transport (device-type bits are below 24). */
export const VIRTIO_F = { INDIRECT_DESC: 28, EVENT_IDX: 29, VERSION_1: 32 } as const;

export const VIRTIO_PCI_CAP = { COMMON: 1, NOTIFY: 2, ISR: 3, DEVICE: 4, PCI_CFG: 5 } as const;

/** Where the structures sit in BAR 0. */
export const VIRTIO_BAR_LAYOUT = {
  bar: 0, size: 0x4000, common: 0x0000, commonSize: 0x38, isr: 0x1000, device: 0x2000, notify: 0x3000, notifyMultiplier: 4,
} as const;
export const VIRTIO_MSIX_BAR = 1;

/** Common configuration registers (§4.1.4.3). */
export const COMMON = {
  DEVICE_FEATURE_SELECT: 0x00, DEVICE_FEATURE: 0x04, DRIVER_FEATURE_SELECT: 0x08, DRIVER_FEATURE: 0x0c,
  CONFIG_MSIX_VECTOR: 0x10, NUM_QUEUES: 0x12, DEVICE_STATUS: 0x14, CONFIG_GENERATION: 0x15,
  QUEUE_SELECT: 0x16, QUEUE_SIZE: 0x18, QUEUE_MSIX_VECTOR: 0x1a, QUEUE_ENABLE: 0x1c, QUEUE_NOTIFY_OFF: 0x1e,
  QUEUE_DESC: 0x20, QUEUE_DRIVER: 0x28, QUEUE_DEVICE: 0x30,
} as const;

/** Field widths by offset; the 64-bit queue addresses are written as two 32-bit halves. */
const COMMON_WIDTH: Record<number, number> = {
  0x00: 4, 0x04: 4, 0x08: 4, 0x0c: 4, 0x10: 2, 0x12: 2, 0x14: 1, 0x15: 1, 0x16: 2, 0x18: 2, 0x1a: 2, 0x1c: 2, 0x1e: 2,
  0x20: 4, 0x24: 4, 0x28: 4, 0x2c: 4, 0x30: 4, 0x34: 4,
};

/** Where a queue address past 2^52 goes: 16-aligned, no guest memory. */
const UNREACHABLE_ADDRESS = 2 ** 53 - 16;
const COMMON_FIELD_STARTS = Object.keys(COMMON_WIDTH).map(Number).sort((a, b) => a - b);
const ISR_QUEUE = 1;
const ISR_CONFIG = 2;

export interface VirtioPciOptions {
  /** Virtio device type (2: block). */
  deviceType: number;
  /** PCI class code (class << 16 | subclass << 8 | prog-if). */
  classCode: number;
  queues: number;
  /** The largest size of each queue (a power of two, VIRTQ_MAX_SIZE unless given). */
  queueSize?: number;
  /** Device-type feature bits (0..23), as a bit mask. */
  deviceFeatures: number;
  /** Bytes of the device configuration structure. */
  configSize: number;
  router?: MsiRouter | null;
  statistics?: StatsRegistry | null;
  log?: (text: string) => void;
}

export interface LendTerms {
  counters: Readonly<Record<string, number>>;
  deviceWords?: readonly number[];
  /** The device's own DATAPLANE_FLAG bits (from FIRST_DEVICE up). */
  flags?: number;
}

export abstract class VirtioPciDevice extends PciDevice {
  readonly queues: SplitVirtqueue[];
  readonly msix: MsixCapability;
  /** Offered features: bits 0..31 and 32..63. */
  protected readonly offered: [number, number];
  /** What the driver accepted (the same halves). */
  protected readonly accepted: [number, number] = [0, 0];
  private deviceFeatureSelect = 0;
  private driverFeatureSelect = 0;
  private queueSelect = 0;
  private configVector = VIRTIO_NO_VECTOR;
  status = 0;
  private isr = 0;
  /** Bumped by every reset: completions of requests from before a reset are dropped. */
  protected generation = 0;
  /** Set while notifications are processed: interrupts wait for the end of the batch. */
  private batching = false;
  protected readonly log: (text: string) => void;
  private readonly pciCfgCap: number;
  readonly bar0: IoDevice;

  constructor(name: string, private readonly options: VirtioPciOptions) {
    super(name, {
      vendorId: VIRTIO_PCI_VENDOR, deviceId: VIRTIO_PCI_DEVICE_BASE + options.deviceType, classCode: options.classCode,
      revision: 1, subsystemVendorId: VIRTIO_PCI_VENDOR, subsystemId: 0x1100, interruptPin: 1,
    });
    if (options.queues < 1 || options.queues > 64) throw new Error(`${name}: ${options.queues} queues is not 1..64`);
    const queueSize = options.queueSize ?? VIRTQ_MAX_SIZE;
    if (queueSize < 1 || queueSize > VIRTQ_SPEC_MAX_SIZE || (queueSize & (queueSize - 1)) !== 0) throw new Error(`${name}: queue size ${queueSize} is not a power of two up to 32768`);
    if (options.configSize > 0x1000) throw new Error(`${name}: device configuration too large`);
    this.log = options.log ?? (() => {});
    this.queues = Array.from({ length: options.queues }, (_, i) => new SplitVirtqueue(i, options.queueSize ?? VIRTQ_MAX_SIZE));
    this.offered = [
      (options.deviceFeatures | (1 << VIRTIO_F.INDIRECT_DESC) | (1 << VIRTIO_F.EVENT_IDX)) >>> 0,
      1 << (VIRTIO_F.VERSION_1 - 32),
    ];
    this.bar0 = {
      name,
      read: (offset, size) => this.readBar0(offset, size),
      write: (offset, size, value) => this.writeBar0(offset, size, value >>> 0),
    };
    const L = VIRTIO_BAR_LAYOUT;
    this.defineBar(L.bar, { kind: 'mem32', size: L.size, mmio: this.bar0 });
    this.defineBar(VIRTIO_MSIX_BAR, { kind: 'mem32', size: 0x1000, mmio: new MsixMmio(`${name}-msix`, VIRTIO_MSIX_BAR, () => this.msix) });
    this.msix = new MsixCapability(this, {
      vectors: options.queues + 1, tableBar: VIRTIO_MSIX_BAR, tableOffset: 0, pbaBar: VIRTIO_MSIX_BAR, pbaOffset: 0x800,
    }, { router: options.router ?? null, statistics: options.statistics ?? null });
    this.addVirtioCap(VIRTIO_PCI_CAP.COMMON, L.common, L.commonSize);
    const notify = this.addVirtioCap(VIRTIO_PCI_CAP.NOTIFY, L.notify, L.notifyMultiplier * options.queues, 20);
    this.initCapability(notify + 16, 4, L.notifyMultiplier, 0);
    this.addVirtioCap(VIRTIO_PCI_CAP.ISR, L.isr, 1);
    this.addVirtioCap(VIRTIO_PCI_CAP.DEVICE, L.device, options.configSize);
    // The configuration access window: bar, offset, length and data are the driver's.
    this.pciCfgCap = this.addVirtioCap(VIRTIO_PCI_CAP.PCI_CFG, 0, 0, 20);
    this.initCapability(this.pciCfgCap + 4, 1, 0, 0xff);
    this.initCapability(this.pciCfgCap + 8, 4, 0, 0xffffffff);
    this.initCapability(this.pciCfgCap + 12, 4, 0, 0xffffffff);
    this.initCapability(this.pciCfgCap + 16, 4, 0, 0xffffffff);
  }

  // --- what a device type provides --------------------------------------------------------

  /** Reads the device configuration structure (little-endian fields). */
  protected abstract readDeviceConfig(offset: number, size: number): number;
  /** Writes to it (most device types ignore them). */
  protected writeDeviceConfig(_offset: number, _size: number, _value: number): void {}
  /** Takes and processes the available buffers of `queue`; throws VirtqueueError on a bad ring. */
  protected abstract processQueue(queue: SplitVirtqueue): void;
  /** The device was reset: forget requests (their completions are dropped by generation). */
  protected deviceReset(): void {}
  /**
   * What a run of the data plane needs besides the rings (counter slots, device words, the
   * device's own flags), or null: the rings stay here this time. Called just before lending.
   */
  protected lendTerms(): LendTerms | null {
    return null;
  }

  /** Where this device's rings may be lent; null: they always stay on the machine thread. */
  protected dataPlane: DataPlaneHandoff | null = null;

  /** Whether another thread runs the rings now. */
  get ringsLent(): boolean {
    return this.dataPlane?.active ?? false;
  }

  /**
   * The runner reported run `epoch` failed: a broken ring is the error state; a run it could
   * not take leaves the rings here, so what the guest queued meanwhile is served now.
   */
  dataPlaneFailed(epoch: number, why: string): void {
    const outcome = this.dataPlane?.failed(epoch) ?? 'stale';
    if (outcome === 'broken') this.fail(why);
    else if (outcome === 'refused' && this.running) for (const q of this.queues) if (q.enabled) this.batch(q, () => this.processQueue(q));
  }

  /** A reset or the error state is coming: rings lent out come back, with their indices. */
  protected reclaimQueues(): void {
    const lent = this.dataPlane?.active ?? false;
    const handedBack = this.dataPlane?.stop() ?? true;
    if (lent) this.queuesReclaimed(handedBack);
  }

  /** Lent rings came back (`handedBack` false: taken by force, the runner did not answer in time). */
  protected queuesReclaimed(_handedBack: boolean): void {}

  /** Lends the rings when the driver runs them with MSI-X and DMA on, every queue with a vector. */
  private lendQueues(): void {
    const handoff = this.dataPlane;
    if (!handoff || handoff.active || !this.running || !this.msix.enabled || !(this.command & PCI_COMMAND.MASTER)) return;
    const bar = this.barAddress(VIRTIO_BAR_LAYOUT.bar);
    if (bar === null || this.queues.some((q) => !q.enabled || q.msixVector === VIRTIO_NO_VECTOR)) return;
    let irqFds: number[];
    try {
      irqFds = this.queues.map((q) => this.msix.vectorEventFd(q.msixVector));
    } catch {
      return; // no irqfd route for a vector (KVM's table was full): the rings stay here
    }
    const terms = this.lendTerms();
    if (!terms) return;
    const flags = (this.negotiated(VIRTIO_F.EVENT_IDX) ? DATAPLANE_FLAG.EVENT_IDX : 0) | (this.negotiated(VIRTIO_F.INDIRECT_DESC) ? DATAPLANE_FLAG.INDIRECT : 0);
    handoff.start(this.queues.map((queue, i) => ({
      queue, irqFd: irqFds[i], irqCounter: this.msix.vectorCounter(queue.msixVector),
      notifyAddress: bar + VIRTIO_BAR_LAYOUT.notify + VIRTIO_BAR_LAYOUT.notifyMultiplier * queue.index,
    })), flags | (terms.flags ?? 0), terms.counters, terms.deviceWords);
  }

  protected override barMoved(index: number, address: number | null, previous: number | null): void {
    super.barMoved(index, address, previous);
    if (index !== VIRTIO_BAR_LAYOUT.bar || !this.dataPlane) return;
    this.reclaimQueues(); // the doorbells are at the old address
    this.lendQueues();
  }

  /** Whether the driver accepted feature `bit`. */
  negotiated(bit: number): boolean {
    return bit < 32 ? ((this.accepted[0] >>> bit) & 1) === 1 : ((this.accepted[1] >>> (bit - 32)) & 1) === 1;
  }

  get needsReset(): boolean {
    return (this.status & VIRTIO_STATUS.NEEDS_RESET) !== 0;
  }

  // --- the BAR ----------------------------------------------------------------------------

  readBar0(offset: number, size: number): number {
    const L = VIRTIO_BAR_LAYOUT;
    if (offset >= L.common && offset + size <= L.common + L.commonSize) return this.readCommon(offset - L.common, size);
    if (offset === L.isr) return this.readIsr();
    if (offset >= L.device && offset + size <= L.device + this.options.configSize) return this.readDeviceConfig(offset - L.device, size);
    return 0;
  }

  writeBar0(offset: number, size: number, value: number): void {
    const L = VIRTIO_BAR_LAYOUT;
    if (offset >= L.common && offset + size <= L.common + L.commonSize) this.writeCommon(offset - L.common, size, value);
    else if (offset >= L.device && offset + size <= L.device + this.options.configSize) this.writeDeviceConfig(offset - L.device, size, value);
    else if (offset >= L.notify && offset < L.notify + L.notifyMultiplier * this.queues.length && (offset - L.notify) % L.notifyMultiplier === 0) {
      this.notify((offset - L.notify) / L.notifyMultiplier);
    }
  }

  private readCommon(offset: number, size: number): number {
    // Compose from the bytes, so any width at any offset reads what the fields hold.
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + this.commonByte(offset + i);
    return v;
  }

  private commonByte(at: number): number {
    let start = 0;
    for (const s of COMMON_FIELD_STARTS) if (s <= at) start = s;
    const field = this.commonField(start);
    return Math.floor(field / 2 ** (8 * (at - start))) & 0xff;
  }

  private commonField(at: number): number {
    const q = this.queues[this.queueSelect] as SplitVirtqueue | undefined;
    const lo = (a: number) => a % 0x100000000;
    const hi = (a: number) => Math.floor(a / 0x100000000);
    switch (at) {
      case COMMON.DEVICE_FEATURE_SELECT: return this.deviceFeatureSelect;
      case COMMON.DEVICE_FEATURE: return this.deviceFeatureSelect < 2 ? this.offered[this.deviceFeatureSelect] : 0;
      case COMMON.DRIVER_FEATURE_SELECT: return this.driverFeatureSelect;
      case COMMON.DRIVER_FEATURE: return this.driverFeatureSelect < 2 ? this.accepted[this.driverFeatureSelect] : 0;
      case COMMON.CONFIG_MSIX_VECTOR: return this.configVector;
      case COMMON.NUM_QUEUES: return this.queues.length;
      case COMMON.DEVICE_STATUS: return this.status;
      case COMMON.CONFIG_GENERATION: return 0;
      case COMMON.QUEUE_SELECT: return this.queueSelect;
      // A queue that does not exist reads size 0 (§4.1.4.3.2).
      case COMMON.QUEUE_SIZE: return q ? q.size : 0;
      case COMMON.QUEUE_MSIX_VECTOR: return q ? q.msixVector : VIRTIO_NO_VECTOR;
      case COMMON.QUEUE_ENABLE: return q?.enabled ? 1 : 0;
      case COMMON.QUEUE_NOTIFY_OFF: return q ? q.index : 0;
      case COMMON.QUEUE_DESC: return q ? lo(q.descAddress) : 0;
      case COMMON.QUEUE_DESC + 4: return q ? hi(q.descAddress) : 0;
      case COMMON.QUEUE_DRIVER: return q ? lo(q.driverAddress) : 0;
      case COMMON.QUEUE_DRIVER + 4: return q ? hi(q.driverAddress) : 0;
      case COMMON.QUEUE_DEVICE: return q ? lo(q.deviceAddress) : 0;
      case COMMON.QUEUE_DEVICE + 4: return q ? hi(q.deviceAddress) : 0;
      default: return 0;
    }
  }

  private writeCommon(at: number, size: number, value: number): void {
    // Drivers write each field with its own width (§4.1.3.1); other writes are ignored.
    if (COMMON_WIDTH[at] !== size) return;
    const q = this.queues[this.queueSelect] as SplitVirtqueue | undefined;
    // A queue's settings are fixed once it is enabled (§4.1.4.3.2).
    const settable = q !== undefined && !q.enabled;
    const setHalf = (old: number, high: boolean): number => {
      const lo = old % 0x100000000;
      const hi = Math.floor(old / 0x100000000);
      if (!high) return hi * 0x100000000 + value;
      // Beyond x86's 52 physical address bits: an address no DMA reaches (the ring then fails).
      return value > 0xfffff ? UNREACHABLE_ADDRESS : value * 0x100000000 + lo;
    };
    switch (at) {
      case COMMON.DEVICE_FEATURE_SELECT: this.deviceFeatureSelect = value; break;
      case COMMON.DRIVER_FEATURE_SELECT: this.driverFeatureSelect = value; break;
      case COMMON.DRIVER_FEATURE:
        if (this.driverFeatureSelect < 2 && !(this.status & VIRTIO_STATUS.FEATURES_OK)) this.accepted[this.driverFeatureSelect] = value;
        break;
      case COMMON.CONFIG_MSIX_VECTOR: this.configVector = value < this.msix.vectors ? value : VIRTIO_NO_VECTOR; break;
      case COMMON.DEVICE_STATUS: this.writeStatus(value & 0xff); break;
      case COMMON.QUEUE_SELECT: this.queueSelect = value; break;
      case COMMON.QUEUE_SIZE: if (settable) q.size = value; break;
      case COMMON.QUEUE_MSIX_VECTOR: if (q) q.msixVector = value < this.msix.vectors ? value : VIRTIO_NO_VECTOR; break;
      case COMMON.QUEUE_ENABLE: if (settable && value === 1) this.enableQueue(q); break;
      case COMMON.QUEUE_DESC: case COMMON.QUEUE_DESC + 4: if (settable) q.descAddress = setHalf(q.descAddress, at !== COMMON.QUEUE_DESC); break;
      case COMMON.QUEUE_DRIVER: case COMMON.QUEUE_DRIVER + 4: if (settable) q.driverAddress = setHalf(q.driverAddress, at !== COMMON.QUEUE_DRIVER); break;
      case COMMON.QUEUE_DEVICE: case COMMON.QUEUE_DEVICE + 4: if (settable) q.deviceAddress = setHalf(q.deviceAddress, at !== COMMON.QUEUE_DEVICE); break;
      default: break;
    }
  }

  private writeStatus(value: number): void {
    if (value === 0) {
      this.reset();
      return;
    }
    let next = value | (this.status & VIRTIO_STATUS.NEEDS_RESET);
    if ((next & VIRTIO_STATUS.FEATURES_OK) && !(this.status & VIRTIO_STATUS.FEATURES_OK)) {
      // FEATURES_OK only for a subset of what we offer that includes VERSION_1 (§2.2.1).
      const subset = (this.accepted[0] & ~this.offered[0]) === 0 && (this.accepted[1] & ~this.offered[1]) === 0;
      if (!subset || !this.negotiated(VIRTIO_F.VERSION_1)) next &= ~VIRTIO_STATUS.FEATURES_OK;
      else {
        for (const q of this.queues) {
          q.eventIdx = this.negotiated(VIRTIO_F.EVENT_IDX);
          q.indirect = this.negotiated(VIRTIO_F.INDIRECT_DESC);
        }
      }
    }
    this.status = next;
    this.lendQueues();
  }

  private enableQueue(q: SplitVirtqueue): void {
    const error = q.enableError();
    if (error) {
      this.fail(error);
      return;
    }
    q.enabled = true;
  }

  /** Device reset (status 0 written): queues, features, status, ISR and interrupt all go back. */
  reset(): void {
    this.reclaimQueues();
    this.generation++;
    for (const q of this.queues) q.reset();
    this.accepted[0] = 0;
    this.accepted[1] = 0;
    this.deviceFeatureSelect = 0;
    this.driverFeatureSelect = 0;
    this.queueSelect = 0;
    this.configVector = VIRTIO_NO_VECTOR;
    this.status = 0;
    this.isr = 0;
    this.setIntx(false);
    this.deviceReset();
  }

  private readIsr(): number {
    const v = this.isr;
    this.isr = 0;
    this.setIntx(false);
    return v;
  }

  // --- notifications and interrupts ---------------------------------------------------------

  /** The driver notified queue `index` (a write to its notify address). */
  notify(index: number): void {
    if (this.dataPlane?.active) {
      this.dataPlane.forwardNotify(index);
      return;
    }
    const q = this.queues[index];
    if (!q || !q.enabled || !this.running) return;
    this.batch(q, () => this.processQueue(q));
  }

  /** The driver is running (DRIVER_OK) and the device is not in its error state. */
  get running(): boolean {
    return (this.status & VIRTIO_STATUS.DRIVER_OK) !== 0 && !this.needsReset;
  }

  /**
   * Runs `work` (which may complete chains of `q`) with interrupts held until it is done, then
   * interrupts once if the driver wants it. A VirtqueueError from `work` is the device error state.
   */
  protected batch(q: SplitVirtqueue, work: () => void): void {
    const outer = this.batching;
    this.batching = true;
    try {
      work();
    } catch (error) {
      if (!(error instanceof VirtqueueError)) throw error;
      this.fail(error.message);
    } finally {
      this.batching = outer;
    }
    if (!this.needsReset) this.interruptIfWanted(q);
  }

  /**
   * Puts a finished chain on its used ring and interrupts if the driver wants it. Used by
   * completions, which may come later (asynchronous backends): `generation` is the one the
   * request was taken in; a completion from before a reset is dropped.
   */
  protected complete(q: SplitVirtqueue, head: number, written: number, generation: number): void {
    if (generation !== this.generation || this.needsReset || !q.enabled) return;
    try {
      q.push(this.dma, head, written);
    } catch (error) {
      if (!(error instanceof VirtqueueError)) throw error;
      this.fail(error.message);
      return;
    }
    if (!this.batching) this.interruptIfWanted(q);
  }

  private interruptIfWanted(q: SplitVirtqueue): void {
    if (!q.needsInterrupt(this.dma)) return;
    this.isr |= ISR_QUEUE;
    this.raise(q.msixVector);
  }

  private raise(vector: number): void {
    if (this.msix.enabled) {
      if (vector !== VIRTIO_NO_VECTOR) this.msix.notify(vector);
      return;
    }
    this.setIntx(true);
  }

  /** The device error state (§2.1.2): NEEDS_RESET, and a configuration interrupt if the driver is running. */
  protected fail(why: string): void {
    if (this.needsReset) return;
    this.reclaimQueues();
    this.log(`${this.name}: device error, needs reset: ${why}`);
    this.status |= VIRTIO_STATUS.NEEDS_RESET;
    if (this.status & VIRTIO_STATUS.DRIVER_OK) {
      this.isr |= ISR_CONFIG;
      this.raise(this.configVector);
    }
  }

  // --- the PCI configuration access capability --------------------------------------------

  private addVirtioCap(type: number, offset: number, length: number, capLength = 16): number {
    const at = this.addCapability(PCI_CAP_ID.VENDOR, capLength);
    this.config[at + 2] = capLength;
    this.config[at + 3] = type;
    this.config[at + 4] = type === VIRTIO_PCI_CAP.PCI_CFG ? 0 : VIRTIO_BAR_LAYOUT.bar;
    this.setU32(at + 8, offset);
    this.setU32(at + 12, length);
    return at;
  }

  /** The window the capability describes, or null if it is not a usable BAR 0 access. */
  private cfgWindow(): { offset: number; length: number } | null {
    const c = this.pciCfgCap;
    const bar = this.config[c + 4];
    const offset = this.getU32(c + 8);
    const length = this.getU32(c + 12);
    if (bar !== VIRTIO_BAR_LAYOUT.bar || ![1, 2, 4].includes(length) || offset % length !== 0 || offset + length > VIRTIO_BAR_LAYOUT.size) return null;
    return { offset, length };
  }

  protected override beforeConfigRead(offset: number, size: number): void {
    const data = this.pciCfgCap + 16;
    if (offset >= data + 4 || offset + size <= data) return;
    const w = this.cfgWindow();
    if (!w) return;
    this.setU32(data, this.readBar0(w.offset, w.length));
  }

  protected override configWritten(offset: number, size: number, _changes: ConfigWriteResult): void {
    this.configWindowWritten(offset, size);
    if (!this.dataPlane) return;
    // Bus mastering or MSI-X turned off: the runner must not touch guest memory or signal.
    if (this.dataPlane.active && (!(this.command & PCI_COMMAND.MASTER) || !this.msix.enabled)) this.reclaimQueues();
    else this.lendQueues();
  }

  /** A write to the configuration access capability's data reaches BAR 0. */
  private configWindowWritten(offset: number, size: number): void {
    const data = this.pciCfgCap + 16;
    if (offset >= data + 4 || offset + size <= data) return;
    const w = this.cfgWindow();
    if (!w) return;
    const value = this.getU32(data);
    this.writeBar0(w.offset, w.length, w.length === 4 ? value : value & (2 ** (8 * w.length) - 1));
  }
}
