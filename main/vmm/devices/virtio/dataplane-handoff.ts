// The machine thread's end of a virtio device's data plane (shared/dataplane-block.ts): hands
// the device's rings to the thread that runs them with an ioeventfd per notify address, and
// takes them back (ring indices included) before anything the guest does could make that
// thread's work wrong: a reset, the error state, a BAR move, bus mastering or MSI-X turned off.
import type { Doorbell, DoorbellRegistry } from '../interrupts';
import { DATAPLANE_STATE, DataPlaneBlock, type DataPlaneLayout, type DataPlaneQueue } from '../../shared/dataplane-block';
import type { SplitVirtqueue } from '../../shared/virtqueue';

/** How long a stop waits for the runner to hand the rings back before going on without it. */
const STOP_WAIT_MS = 2000;

export interface HandoffQueue {
  queue: SplitVirtqueue;
  /** Guest-physical address of the queue's notify register. */
  notifyAddress: number;
  irqFd: number;
  irqCounter: number;
}

export class DataPlaneHandoff {
  readonly block: DataPlaneBlock;
  private doorbells: Doorbell[] | null = null;
  private queues: SplitVirtqueue[] = [];
  private epoch = 0;
  private refusalLogged = false;
  /** Set once the runner could not take a run: the rings stay here from then on. */
  private refused = false;

  /** `runner` names the thread the rings go to, for the log ("VM host thread"). */
  constructor(
    layout: DataPlaneLayout, buffer: SharedArrayBuffer, private readonly registry: DoorbellRegistry,
    private readonly runner: string, private readonly log: (text: string) => void,
  ) {
    this.block = new DataPlaneBlock(layout, buffer);
  }

  /** Whether the runner has (or is taking) the rings. */
  get active(): boolean {
    return this.doorbells !== null;
  }

  /**
   * Hands the queues over; false (the machine keeps them) if the doorbells cannot be
   * registered or the runner has no control eventfd.
   */
  start(queues: HandoffQueue[], flags: number, counters: Readonly<Record<string, number>>, deviceWords: readonly number[] = []): boolean {
    if (this.active) return true;
    const block = this.block;
    if (this.refused || block.controlFd < 0 || block.state !== DATAPLANE_STATE.IDLE) return false;
    const bells: Doorbell[] = [];
    try {
      for (const q of queues) bells.push(this.registry.register({ space: 'mmio', address: q.notifyAddress, length: 2 }));
    } catch (e) {
      for (const b of bells) b.release();
      if (!this.refusalLogged) this.log(`the rings stay on the machine thread: ${(e as Error).message}`);
      this.refusalLogged = true;
      return false;
    }
    queues.forEach((q, i) => {
      const v: DataPlaneQueue = {
        size: q.queue.size, descAddress: q.queue.descAddress, driverAddress: q.queue.driverAddress, deviceAddress: q.queue.deviceAddress,
        ...q.queue.ringIndices, notifyFd: bells[i].eventFd, irqFd: q.irqFd, irqCounter: q.irqCounter,
      };
      block.setQueue(q.queue.index, v);
    });
    block.flags = flags;
    for (const [name, slot] of Object.entries(counters)) block.setCounterSlot(name, slot);
    deviceWords.forEach((v, i) => block.setDeviceWord(i, v));
    block.epoch = ++this.epoch;
    if (!block.move(DATAPLANE_STATE.IDLE, DATAPLANE_STATE.START)) {
      for (const b of bells) b.release();
      return false;
    }
    this.doorbells = bells;
    this.queues = queues.map((q) => q.queue);
    this.registry.signal(block.controlFd);
    this.log(`rings handed to the ${this.runner} (run ${this.epoch}): notifies are ioeventfds, interrupts irqfds`);
    return true;
  }

  /**
   * The runner reported run `epoch` failed. 'refused': it never took the rings, which are back
   * here untouched, and no run is tried again; 'broken': the guest broke a ring in it (the
   * device's error state follows); 'stale': the report is of another run.
   */
  failed(epoch: number): 'refused' | 'broken' | 'stale' {
    if (!this.active || this.runEpoch !== epoch) return 'stale';
    if (this.block.refusedEpoch !== epoch) return 'broken';
    this.refused = true;
    this.log(`the ${this.runner} could not take the rings: they stay on the machine thread`);
    this.stop();
    return 'refused';
  }

  /** The current run's epoch (a host failure report names it). */
  get runEpoch(): number {
    return this.active ? this.epoch : -1;
  }

  /** A notify that exited anyway (another width than the doorbell's): the runner's doorbell rings. */
  forwardNotify(index: number): void {
    this.doorbells?.[this.queues.findIndex((q) => q.index === index)]?.ring();
  }

  /**
   * Takes the rings back: the queues get the runner's ring indices. Returns at once if not
   * active. False when the runner did not hand them back in time and they were taken anyway.
   */
  stop(): boolean {
    if (!this.active) return true;
    let handedBack = true;
    const block = this.block;
    // Still only requested: the runner never touched the rings.
    if (!block.move(DATAPLANE_STATE.START, DATAPLANE_STATE.IDLE)) {
      if (block.move(DATAPLANE_STATE.RUNNING, DATAPLANE_STATE.STOP)) {
        this.registry.signal(block.controlFd);
        const state = block.waitWhile(DATAPLANE_STATE.STOP, STOP_WAIT_MS);
        // Taken back anyway: IDLE tells the runner the rings are no longer its to touch.
        if (state !== DATAPLANE_STATE.IDLE && block.move(DATAPLANE_STATE.STOP, DATAPLANE_STATE.IDLE)) {
          this.log(`the ${this.runner} did not hand the rings back within ${STOP_WAIT_MS} ms`);
          handedBack = false;
        }
      }
      // IDLE: handed back (or the runner stopped on its own, after a broken ring).
      for (const q of this.queues) q.setRingIndices(block.queue(q.index));
    }
    for (const b of this.doorbells ?? []) b.release();
    this.doorbells = null;
    this.queues = [];
    return handedBack;
  }
}
