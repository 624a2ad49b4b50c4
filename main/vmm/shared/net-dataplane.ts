// A virtio-net card's data plane block: how the machine thread hands the card's two rings to
// the VM host thread and takes them back (virtio-net.ts, host/net-dataplane.ts). While the
// host runs them, a guest notify is an ioeventfd the host polls and an interrupt is the
// MSI-X vector's irqfd the host writes: no exit reaches JavaScript and no vCPU is kicked.
//
// One SharedArrayBuffer per card, made by the VM host and kept across resets. The state word
// moves IDLE → START (machine, rings described) → RUNNING (host) → STOP (machine) → IDLE
// (host, ring indices written back), or RUNNING → IDLE when the host found the guest broke a
// ring (it then tells the machine, which puts the card in its error state). Both sides change
// it with compareExchange only; the machine waits on it with Atomics.wait.

export const DATAPLANE_STATE = { IDLE: 0, START: 1, RUNNING: 2, STOP: 3 } as const;

/** Int32 words. */
const W = {
  STATE: 0,
  /** The host's control eventfd (the machine writes it after a state change), -1 if none. */
  CONTROL_FD: 1,
  FLAGS: 2,
  /** Bumped by the machine at each START: the host reports errors against it. */
  EPOCH: 3,
  QUEUES: 4,
  COUNTERS: 24,
} as const;
const QUEUE_WORDS = 8;
const Q = { SIZE: 0, LAST_AVAIL: 1, USED_IDX: 2, SIGNALLED_USED: 3, NOTIFY_FD: 4, IRQ_FD: 5, IRQ_COUNTER: 6 } as const;
/** Float64 slots (byte offset 128): per queue the descriptor table, driver ring and device ring. */
const ADDRESS_BYTE_OFFSET = 128;
export const DATAPLANE_BLOCK_BYTES = 256;

export const DATAPLANE_FLAG = { EVENT_IDX: 1, INDIRECT: 2 } as const;
export const DATAPLANE_RX = 0;
export const DATAPLANE_TX = 1;
/** Counter slots in the VM's statistics registry, in this order (-1: not counted). */
export const DATAPLANE_COUNTERS = ['rxPackets', 'rxBytes', 'txPackets', 'txBytes', 'rxDropped', 'txDropped'] as const;
export type DataPlaneCounter = (typeof DATAPLANE_COUNTERS)[number];

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

export class NetDataPlaneBlock {
  readonly words: Int32Array;
  private readonly addresses: Float64Array;

  constructor(readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(DATAPLANE_BLOCK_BYTES)) {
    if (buffer.byteLength < DATAPLANE_BLOCK_BYTES) throw new RangeError(`a data plane block has ${DATAPLANE_BLOCK_BYTES} bytes, not ${buffer.byteLength}`);
    this.words = new Int32Array(buffer, 0, ADDRESS_BYTE_OFFSET / 4);
    this.addresses = new Float64Array(buffer, ADDRESS_BYTE_OFFSET, 6);
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
    Atomics.store(this.words, W.STATE, DATAPLANE_STATE.IDLE);
    Atomics.notify(this.words, W.STATE);
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

  counterSlot(name: DataPlaneCounter): number {
    return Atomics.load(this.words, W.COUNTERS + DATAPLANE_COUNTERS.indexOf(name));
  }

  setCounterSlot(name: DataPlaneCounter, slot: number): void {
    Atomics.store(this.words, W.COUNTERS + DATAPLANE_COUNTERS.indexOf(name), slot);
  }

  queue(q: number): DataPlaneQueue {
    const at = W.QUEUES + q * QUEUE_WORDS;
    const w = (i: number) => Atomics.load(this.words, at + i);
    return {
      size: w(Q.SIZE), lastAvail: w(Q.LAST_AVAIL), usedIdx: w(Q.USED_IDX), signalledUsed: w(Q.SIGNALLED_USED),
      notifyFd: w(Q.NOTIFY_FD), irqFd: w(Q.IRQ_FD), irqCounter: w(Q.IRQ_COUNTER),
      descAddress: this.addresses[q * 3], driverAddress: this.addresses[q * 3 + 1], deviceAddress: this.addresses[q * 3 + 2],
    };
  }

  setQueue(q: number, v: DataPlaneQueue): void {
    const at = W.QUEUES + q * QUEUE_WORDS;
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
    const at = W.QUEUES + q * QUEUE_WORDS;
    Atomics.store(this.words, at + Q.LAST_AVAIL, v.lastAvail);
    Atomics.store(this.words, at + Q.USED_IDX, v.usedIdx);
    Atomics.store(this.words, at + Q.SIGNALLED_USED, v.signalledUsed);
  }
}
