// A split virtqueue (virtio 1.x §2.7): the descriptor table, the driver (available) ring and
// the device (used) ring in guest memory, read and written through the function's DMA
// accessor. Everything the guest wrote is checked: a head or next index outside the table, a
// chain longer than the table (a loop), a nested or malformed indirect table, a readable
// descriptor after a writable one, an available index that jumps more than the queue size,
// or a ring outside guest memory is a VirtqueueError, which the transport turns into the
// device error state (DEVICE_NEEDS_RESET). Data buffers are not checked here: their
// addresses are the request's business (an I/O error in its status).
import { DMA_DISABLED, DMA_OK, type DmaMemory, type DmaSegment, dmaErrorText } from '../memory/dma';

export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
/** Driver ring flag: the driver does not want interrupts (without EVENT_IDX). */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;

/** The largest queue this implementation offers (a power of two, at most 32768 by the spec). */
export const VIRTQ_MAX_SIZE = 256;
/** The largest queue the split layout allows (virtio 1.x §2.7). */
export const VIRTQ_SPEC_MAX_SIZE = 32768;
/** An indirect table's entries, at most (QEMU's VIRTQUEUE_MAX_SIZE). */
export const VIRTQ_MAX_INDIRECT = 1024;
export const VIRTIO_NO_VECTOR = 0xffff;

const TWO_32 = 0x100000000;

/**
 * A full barrier between our ring stores and the loads after them (x86 lets a load pass an
 * earlier store; virtio §2.7.7 needs them ordered when another vCPU runs the driver). A
 * sequentially consistent Atomics store is a locked instruction.
 */
const FENCE = new Int32Array(new SharedArrayBuffer(4));
function fence(): void {
  Atomics.store(FENCE, 0, 0);
}

export class VirtqueueError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'VirtqueueError';
  }
}

/** One available buffer: its head index and its device-readable and device-writable parts. */
export interface DescriptorChain {
  head: number;
  readable: DmaSegment[];
  writable: DmaSegment[];
  readableBytes: number;
  writableBytes: number;
}

export class SplitVirtqueue {
  /** Registers the driver programs through the common configuration. */
  size: number;
  descAddress = 0;
  driverAddress = 0;
  deviceAddress = 0;
  msixVector = VIRTIO_NO_VECTOR;
  enabled = false;
  /** Negotiated features that change the ring layout and descriptor rules. */
  eventIdx = false;
  indirect = false;
  /** The next available entry to take, and the device's used index (both mod 2^16). */
  private lastAvail = 0;
  private usedIdx = 0;
  /** The used index when the driver was last interrupted (or told it was not needed). */
  private signalledUsed = 0;
  private readonly halves = new Uint32Array(2);

  constructor(readonly index: number, readonly maxSize = VIRTQ_MAX_SIZE) {
    this.size = maxSize;
  }

  reset(): void {
    this.size = this.maxSize;
    this.descAddress = 0;
    this.driverAddress = 0;
    this.deviceAddress = 0;
    this.msixVector = VIRTIO_NO_VECTOR;
    this.enabled = false;
    this.eventIdx = false;
    this.indirect = false;
    this.lastAvail = 0;
    this.usedIdx = 0;
    this.signalledUsed = 0;
  }

  /** The ring positions, for handing the queue to another thread (net-dataplane). */
  get ringIndices(): { lastAvail: number; usedIdx: number; signalledUsed: number } {
    return { lastAvail: this.lastAvail, usedIdx: this.usedIdx, signalledUsed: this.signalledUsed };
  }

  setRingIndices(v: { lastAvail: number; usedIdx: number; signalledUsed: number }): void {
    this.lastAvail = v.lastAvail & 0xffff;
    this.usedIdx = v.usedIdx & 0xffff;
    this.signalledUsed = v.signalledUsed & 0xffff;
  }

  /** Why the driver's settings cannot be enabled, or null (checked on queue_enable). */
  enableError(): string | null {
    const n = this.size;
    if (!Number.isInteger(n) || n < 1 || n > this.maxSize || (n & (n - 1)) !== 0) {
      return `queue ${this.index}: size ${n} is not a power of two from 1 to ${this.maxSize}`;
    }
    if (this.descAddress % 16 !== 0) return `queue ${this.index}: descriptor table at 0x${this.descAddress.toString(16)} is not 16-byte aligned`;
    if (this.driverAddress % 2 !== 0) return `queue ${this.index}: driver ring at 0x${this.driverAddress.toString(16)} is not 2-byte aligned`;
    if (this.deviceAddress % 4 !== 0) return `queue ${this.index}: device ring at 0x${this.deviceAddress.toString(16)} is not 4-byte aligned`;
    return null;
  }

  /**
   * Takes the next available chain; null when there is none or DMA is off (bus mastering
   * cleared: the buffers wait for the next notify). Throws VirtqueueError on a bad ring.
   */
  pop(dma: DmaMemory): DescriptorChain | null {
    if (!this.enabled) return null;
    const availIdx = dma.readU16(this.driverAddress + 2);
    if (availIdx === DMA_DISABLED) return null;
    if (availIdx < 0) throw this.ringError('driver ring index', availIdx);
    const pending = (availIdx - this.lastAvail) & 0xffff;
    if (pending === 0) return null;
    if (pending > this.size) {
      throw new VirtqueueError(`queue ${this.index}: the driver's index moved ${pending} entries ahead of the device (queue of ${this.size})`);
    }
    const head = dma.readU16(this.driverAddress + 4 + 2 * (this.lastAvail % this.size));
    if (head < 0) throw this.ringError('driver ring entry', head);
    if (head >= this.size) throw new VirtqueueError(`queue ${this.index}: head index ${head} is outside the table of ${this.size}`);
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    if (this.eventIdx) {
      // avail_event: ask to be notified of every new buffer from here on.
      const status = dma.writeU16(this.deviceAddress + 4 + 8 * this.size, this.lastAvail);
      if (status !== DMA_OK) throw this.ringError('avail_event', status);
      fence();
    }
    return this.walk(dma, head);
  }

  /** Puts a finished chain on the device ring with the bytes written into its buffers. */
  push(dma: DmaMemory, head: number, written: number): void {
    const slot = this.deviceAddress + 4 + 8 * (this.usedIdx % this.size);
    let status = dma.writeU32(slot, head);
    if (status === DMA_OK) status = dma.writeU32(slot + 4, written >>> 0);
    if (status !== DMA_OK) throw this.ringError('device ring entry', status);
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    status = dma.writeU16(this.deviceAddress + 2, this.usedIdx);
    if (status !== DMA_OK) throw this.ringError('device ring index', status);
  }

  /**
   * Whether the driver wants an interrupt for what was pushed since the last call (virtio
   * §2.7.7 and §2.7.10: its used_event with EVENT_IDX, else the NO_INTERRUPT flag).
   */
  needsInterrupt(dma: DmaMemory): boolean {
    const now = this.usedIdx;
    const old = this.signalledUsed;
    if (now === old) return false;
    this.signalledUsed = now;
    fence();
    if (this.eventIdx) {
      const event = dma.readU16(this.driverAddress + 4 + 2 * this.size);
      if (event < 0) return true;
      return ((now - event - 1) & 0xffff) < ((now - old) & 0xffff);
    }
    const flags = dma.readU16(this.driverAddress);
    return flags < 0 || (flags & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
  }

  private walk(dma: DmaMemory, head: number): DescriptorChain {
    const chain: DescriptorChain = { head, readable: [], writable: [], readableBytes: 0, writableBytes: 0 };
    let table = this.descAddress;
    let tableSize = this.size;
    // The whole table at once when it lies in one region (a 1 MiB request is ~258 descriptors);
    // else each field through the checked accessors.
    let view = tableView(dma, table, tableSize);
    let index = head;
    let seen = 0;
    let inIndirect = false;
    for (;;) {
      if (index >= tableSize) {
        throw new VirtqueueError(`queue ${this.index}: descriptor ${index} is outside its table of ${tableSize} (chain from ${head})`);
      }
      if (++seen > tableSize) throw new VirtqueueError(`queue ${this.index}: the chain from ${head} is longer than its table (a loop)`);
      let len: number;
      let flags: number;
      let next: number;
      if (view) {
        const o = 16 * index;
        this.halves[0] = view.getUint32(o, true);
        this.halves[1] = view.getUint32(o + 4, true);
        len = view.getUint32(o + 8, true);
        flags = view.getUint16(o + 12, true);
        next = view.getUint16(o + 14, true);
      } else {
        const at = table + 16 * index;
        const status = dma.readU64Halves(at, this.halves);
        if (status !== DMA_OK) throw this.ringError('descriptor', status);
        len = dma.readU32(at + 8);
        flags = dma.readU16(at + 12);
        next = dma.readU16(at + 14);
        if (len < 0 || flags < 0 || next < 0) throw this.ringError('descriptor', Math.min(len, flags, next));
      }
      // Addresses past 2^53 cannot be guest memory; -1 makes their DMA fail as invalid.
      const address = this.halves[1] >= 0x200000 ? -1 : this.halves[1] * TWO_32 + this.halves[0];
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (!this.indirect) throw new VirtqueueError(`queue ${this.index}: indirect descriptor without VIRTIO_F_INDIRECT_DESC`);
        if (inIndirect) throw new VirtqueueError(`queue ${this.index}: an indirect table points to another indirect table`);
        if (flags & VIRTQ_DESC_F_NEXT) throw new VirtqueueError(`queue ${this.index}: a descriptor is both indirect and chained`);
        if (len === 0 || len % 16 !== 0 || len / 16 > VIRTQ_MAX_INDIRECT || address < 0 || address % 16 !== 0) {
          throw new VirtqueueError(`queue ${this.index}: indirect table of ${len} bytes at 0x${address.toString(16)} is malformed`);
        }
        table = address;
        tableSize = len / 16;
        view = tableView(dma, table, tableSize);
        index = 0;
        seen = 0;
        inIndirect = true;
        continue;
      }
      if (flags & VIRTQ_DESC_F_WRITE) {
        chain.writable.push({ address, length: len });
        chain.writableBytes += len;
      } else {
        if (chain.writable.length > 0) throw new VirtqueueError(`queue ${this.index}: a device-readable descriptor follows a device-writable one`);
        chain.readable.push({ address, length: len });
        chain.readableBytes += len;
      }
      if (!(flags & VIRTQ_DESC_F_NEXT)) return chain;
      index = next;
    }
  }

  private ringError(what: string, status: number): VirtqueueError {
    return new VirtqueueError(`queue ${this.index}: ${what} cannot be accessed (${dmaErrorText(status)})`);
  }
}

/** A descriptor table of `size` entries as one view of guest memory, or null (not in one region, or DMA refused). */
function tableView(dma: DmaMemory, table: number, size: number): DataView | null {
  const bytes = dma.view(table, 16 * size);
  return bytes ? new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength) : null;
}

/** The part of `segments` from byte `skip` on, `length` bytes long (clipped to what is there). */
export function sliceSegments(segments: readonly DmaSegment[], skip: number, length: number): DmaSegment[] {
  const out: DmaSegment[] = [];
  let left = length;
  for (const s of segments) {
    if (left <= 0) break;
    if (skip >= s.length) {
      skip -= s.length;
      continue;
    }
    const n = Math.min(s.length - skip, left);
    out.push({ address: s.address < 0 ? s.address : s.address + skip, length: n });
    left -= n;
    skip = 0;
  }
  return out;
}
