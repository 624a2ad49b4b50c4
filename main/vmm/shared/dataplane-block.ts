// A virtio device's data plane block: how the machine thread hands a device's rings to another
// thread (the VM host for a NIC, the disk I/O thread for a disk) and takes them back. While
// that thread runs them, a guest notify is an ioeventfd it polls and an interrupt is the MSI-X
// vector's irqfd it writes: no exit reaches JavaScript and no vCPU is kicked.
//
// One SharedArrayBuffer per device, made by the VM host and kept across resets. The state word
// moves IDLE → START (machine, rings described) → RUNNING (runner) → STOP (machine) → IDLE
// (runner, ring indices written back), or RUNNING → IDLE when the runner found the guest broke
// a ring (it then tells the machine, which puts the device in its error state). Both sides
// change it with compareExchange only; the machine waits on it with Atomics.wait.

import { SplitVirtqueue, VIRTQ_SPEC_MAX_SIZE } from './virtqueue';

export const DATAPLANE_STATE = { IDLE: 0, START: 1, RUNNING: 2, STOP: 3 } as const;

/** What a kind of device keeps in its block besides the rings. */
export interface DataPlaneLayout {
  queues: number;
  /** Counter slots in the VM's statistics registry, by name (-1: not counted). */
  counters: readonly string[];
  /** Int32 words the device model describes its run with (a disk's image descriptor). */
  deviceWords: number;
}

/** Int32 words of the header. */
const W = {
  STATE: 0,
  /** The runner's control eventfd (the machine writes it after a state change), -1 if none. */
  CONTROL_FD: 1,
  FLAGS: 2,
  /** Bumped by the machine at each START: the runner reports errors against it. */
  EPOCH: 3,
  /** Bumped when the machine thread that used the block is gone (forceIdle). */
  MACHINES: 4,
  /** The epoch of a run the runner could not start (it then reports it failed). */
  REFUSED_EPOCH: 5,
  FIRST_QUEUE: 8,
} as const;
const QUEUE_WORDS = 8;
const Q = { SIZE: 0, LAST_AVAIL: 1, USED_IDX: 2, SIGNALLED_USED: 3, NOTIFY_FD: 4, IRQ_FD: 5, IRQ_COUNTER: 6 } as const;

/** Flags every kind knows; a kind's own flags start at DATAPLANE_FLAG.FIRST_DEVICE. */
export const DATAPLANE_FLAG = { EVENT_IDX: 1, INDIRECT: 2, FIRST_DEVICE: 0x100 } as const;

export interface DataPlaneQueue {
  size: number;
  descAddress: number;
  driverAddress: number;
  deviceAddress: number;
  lastAvail: number;
  usedIdx: number;
  signalledUsed: number;
  /** The ioeventfd of the queue's notify address. */
  notifyFd: number;
  /** The eventfd of the queue's MSI-X vector (its irqfd route). */
  irqFd: number;
  /** Statistics slot counting the vector's messages, -1 if none. */
  irqCounter: number;
}

export type RingIndices = Pick<DataPlaneQueue, 'lastAvail' | 'usedIdx' | 'signalledUsed'>;

function wordsOf(layout: DataPlaneLayout): { counters: number; device: number; addressBytes: number } {
  const counters = W.FIRST_QUEUE + layout.queues * QUEUE_WORDS;
  const device = counters + layout.counters.length;
  const end = device + layout.deviceWords;
  return { counters, device, addressBytes: Math.ceil(end / 2) * 8 };
}

/** The bytes of a block for `layout`. */
export function dataPlaneBlockBytes(layout: DataPlaneLayout): number {
  return wordsOf(layout).addressBytes + layout.queues * 3 * 8;
}

export class DataPlaneBlock {
  readonly words: Int32Array;
  private readonly addresses: Float64Array;
  private readonly counterAt: number;
  private readonly deviceAt: number;

  constructor(readonly layout: DataPlaneLayout, readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(dataPlaneBlockBytes(layout))) {
    const bytes = dataPlaneBlockBytes(layout);
    if (buffer.byteLength < bytes) throw new RangeError(`this data plane block has ${bytes} bytes, not ${buffer.byteLength}`);
    const at = wordsOf(layout);
    this.words = new Int32Array(buffer, 0, at.addressBytes / 4);
    this.addresses = new Float64Array(buffer, at.addressBytes, layout.queues * 3);
    this.counterAt = at.counters;
    this.deviceAt = at.device;
  }

  get state(): number {
    return Atomics.load(this.words, W.STATE);
  }

  /** Moves the state from `from` to `to`; false if it was not `from`. */
  move(from: number, to: number): boolean {
    if (Atomics.compareExchange(this.words, W.STATE, from, to) !== from) return false;
    Atomics.notify(this.words, W.STATE);
    return true;
  }

  /** The machine that used this block is gone: the next one starts from IDLE, whatever was left. */
  forceIdle(): void {
    Atomics.add(this.words, W.MACHINES, 1);
    Atomics.store(this.words, W.STATE, DATAPLANE_STATE.IDLE);
    Atomics.notify(this.words, W.STATE);
  }

  /** How many machines have ended (forceIdle): a runner's run belongs to the count it started under. */
  get machinesEnded(): number {
    return Atomics.load(this.words, W.MACHINES);
  }

  /** Waits up to `timeoutMs` while the state is `state`; returns the state then. */
  waitWhile(state: number, timeoutMs: number): number {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0 || Atomics.wait(this.words, W.STATE, state, left) === 'timed-out') return this.state;
      if (this.state !== state) return this.state;
    }
  }

  /** The runner could not take run `epoch` (its resources, not the guest): it left the rings alone. */
  refuse(epoch: number): void {
    Atomics.store(this.words, W.REFUSED_EPOCH, epoch);
    this.move(DATAPLANE_STATE.START, DATAPLANE_STATE.IDLE);
  }

  get refusedEpoch(): number {
    return Atomics.load(this.words, W.REFUSED_EPOCH);
  }

  get controlFd(): number {
    return Atomics.load(this.words, W.CONTROL_FD);
  }

  set controlFd(fd: number) {
    Atomics.store(this.words, W.CONTROL_FD, fd);
  }

  get flags(): number {
    return Atomics.load(this.words, W.FLAGS);
  }

  set flags(v: number) {
    Atomics.store(this.words, W.FLAGS, v);
  }

  get epoch(): number {
    return Atomics.load(this.words, W.EPOCH);
  }

  set epoch(v: number) {
    Atomics.store(this.words, W.EPOCH, v);
  }

  counterSlot(name: string): number {
    const i = this.layout.counters.indexOf(name);
    return i < 0 ? -1 : Atomics.load(this.words, this.counterAt + i);
  }

  setCounterSlot(name: string, slot: number): void {
    const i = this.layout.counters.indexOf(name);
    if (i >= 0) Atomics.store(this.words, this.counterAt + i, slot);
  }

  deviceWord(i: number): number {
    return Atomics.load(this.words, this.deviceAt + this.checkedDeviceWord(i));
  }

  setDeviceWord(i: number, v: number): void {
    Atomics.store(this.words, this.deviceAt + this.checkedDeviceWord(i), v);
  }

  private checkedDeviceWord(i: number): number {
    if (!Number.isInteger(i) || i < 0 || i >= this.layout.deviceWords) throw new RangeError(`device word ${i} is not in this block`);
    return i;
  }

  queue(q: number): DataPlaneQueue {
    const at = W.FIRST_QUEUE + q * QUEUE_WORDS;
    const w = (i: number) => Atomics.load(this.words, at + i);
    return {
      size: w(Q.SIZE), lastAvail: w(Q.LAST_AVAIL), usedIdx: w(Q.USED_IDX), signalledUsed: w(Q.SIGNALLED_USED),
      notifyFd: w(Q.NOTIFY_FD), irqFd: w(Q.IRQ_FD), irqCounter: w(Q.IRQ_COUNTER),
      descAddress: this.addresses[q * 3], driverAddress: this.addresses[q * 3 + 1], deviceAddress: this.addresses[q * 3 + 2],
    };
  }

  /**
   * Queue `q` as the machine described it, for the runner: enabled, at the machine's ring
   * indices; its enableError() says whether the description is usable.
   */
  runQueue(q: number): SplitVirtqueue {
    const v = this.queue(q);
    const flags = this.flags;
    const queue = new SplitVirtqueue(q, VIRTQ_SPEC_MAX_SIZE);
    queue.size = v.size;
    queue.descAddress = v.descAddress;
    queue.driverAddress = v.driverAddress;
    queue.deviceAddress = v.deviceAddress;
    queue.eventIdx = (flags & DATAPLANE_FLAG.EVENT_IDX) !== 0;
    queue.indirect = (flags & DATAPLANE_FLAG.INDIRECT) !== 0;
    queue.setRingIndices(v);
    queue.enabled = true;
    return queue;
  }

  setQueue(q: number, v: DataPlaneQueue): void {
    const at = W.FIRST_QUEUE + q * QUEUE_WORDS;
    const s = (i: number, x: number) => Atomics.store(this.words, at + i, x);
    s(Q.SIZE, v.size);
    s(Q.NOTIFY_FD, v.notifyFd);
    s(Q.IRQ_FD, v.irqFd);
    s(Q.IRQ_COUNTER, v.irqCounter);
    this.addresses[q * 3] = v.descAddress;
    this.addresses[q * 3 + 1] = v.driverAddress;
    this.addresses[q * 3 + 2] = v.deviceAddress;
    this.setIndices(q, v);
  }

  setIndices(q: number, v: RingIndices): void {
    const at = W.FIRST_QUEUE + q * QUEUE_WORDS;
    Atomics.store(this.words, at + Q.LAST_AVAIL, v.lastAvail);
    Atomics.store(this.words, at + Q.USED_IDX, v.usedIdx);
    Atomics.store(this.words, at + Q.SIGNALLED_USED, v.signalledUsed);
  }
}

/**
 * A run's failure, reported to the machine (a DATAPLANE_FAILED record): the device's index in
 * the first byte (a NIC record's layout), the run's epoch at byte 4, then why.
 */
export function encodeDataPlaneFailure(device: number, epoch: number, why: string): Uint8Array {
  const text = new TextEncoder().encode(why.slice(0, 512));
  const out = new Uint8Array(8 + text.length);
  out[0] = device;
  new DataView(out.buffer).setUint32(4, epoch >>> 0, true);
  out.set(text, 8);
  return out;
}

export function decodeDataPlaneFailure(payload: Uint8Array): { device: number; epoch: number; why: string } | null {
  if (payload.length < 8) return null;
  const epoch = new DataView(payload.buffer, payload.byteOffset, 8).getUint32(4, true);
  return { device: payload[0], epoch, why: new TextDecoder().decode(payload.subarray(8)) };
}
