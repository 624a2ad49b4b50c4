// A virtio-net card's rings, run on the VM host thread (shared/dataplane-block.ts says how the
// machine hands them over). Guest notifies arrive as ioeventfds this loop polls, interrupts
// leave as writes to the MSI-X vectors' irqfds, and frames go straight between guest memory
// and the backend: the vCPU neither exits to JavaScript for a notify nor is kicked to take a
// frame, and it runs on while this thread works (QEMU's I/O thread does the same).
// The guest's rings are checked exactly as on the machine thread (SplitVirtqueue,
// net-frames.ts); a broken ring stops the data plane and the machine puts the card in its
// error state.
import { libc } from '../../../native';
import { DmaMemory } from '../memory/dma';
import { GuestMemory, type MemoryRegion } from '../memory/guest-memory';
import { NET_RX_WINDOW } from '../shared/net-messages';
import { DATAPLANE_STATE, DataPlaneBlock } from '../shared/dataplane-block';
import { type SplitVirtqueue, VirtqueueError } from '../shared/virtqueue';
import {
  NET_DATAPLANE, NET_DATAPLANE_COUNTERS, NET_DATAPLANE_RX, NET_DATAPLANE_TX, type NetDataPlaneCounter, readTransmittedFrame, receiveHeader, transmitLength, VIRTIO_NET_HDR_BYTES, writeReceivedFrame,
} from '../shared/virtio-net-frames';

/** A poll's longest wait: the control eventfd ends it sooner; this only bounds a lost wake-up. */
const POLL_MS = 1000;

export interface DataPlaneHost {
  /** A guest frame (a buffer of its own) for the backend. */
  transmit(frame: Uint8Array): void;
  /** Whether the backend's queue has room for another frame. */
  canTransmit(): boolean;
  /** Frames for the guest wait here: the backend should stop (true) or go on (false) reading. */
  pauseReceive(paused: boolean): void;
  /** The guest broke a ring in run `epoch`: the machine puts the card in its error state. */
  failed(epoch: number, why: string): void;
  log(text: string): void;
}

interface Run {
  epoch: number;
  dma: DmaMemory;
  queues: [SplitVirtqueue, SplitVirtqueue];
  /** Our own descriptors (dup) of the queues' notify and irq eventfds: the machine may close its own. */
  notifyFds: [number, number];
  irqFds: [number, number];
  irqCounters: [number, number];
}

export class HostNetDataPlane {
  readonly block: DataPlaneBlock;
  private readonly controlFd: number;
  private run: Run | null = null;
  /** Frames from the backend waiting for receive buffers. */
  private readonly waiting: Uint8Array[] = [];
  private receivePaused = false;
  private transmitting = false;
  private deliverQueued = false;
  /** The VM is paused: the rings are left alone (frames for the guest wait) until it resumes. */
  private held = false;
  private closed = false;
  /** Descriptors of ended runs, closed by the loop once no poll uses them. */
  private retired: number[] = [];
  private readonly header = new Uint8Array(VIRTIO_NET_HDR_BYTES);
  private readonly rxHeader = receiveHeader();
  private readonly counterSlots = new Map<NetDataPlaneCounter, number>();
  private readonly done: Promise<void>;
  /** Drops by reason (tests read them). */
  readonly drops = { rxNoRoom: 0, rxFault: 0, rxStopped: 0, txBadLength: 0, txOffload: 0, txFault: 0 };

  constructor(
    buffer: SharedArrayBuffer,
    private readonly ram: () => readonly MemoryRegion[] | null,
    private readonly stats: Uint32Array | null,
    private readonly host: DataPlaneHost,
  ) {
    this.block = new DataPlaneBlock(NET_DATAPLANE, buffer);
    for (const name of NET_DATAPLANE_COUNTERS) this.block.setCounterSlot(name, -1);
    this.controlFd = libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
    this.block.controlFd = this.controlFd;
    this.done = this.loop();
  }

  get running(): boolean {
    return this.run !== null;
  }

  /** A frame from the backend: false if no run has the rings (the frame goes the channel's way). */
  receive(frame: Uint8Array): boolean {
    if (this.run === null) return false;
    this.waiting.push(frame);
    // A backend hands over a burst in one go (slirp calls back once per frame inside one poll):
    // the burst goes into the ring with one interrupt check once the backend's call returns.
    if (!this.deliverQueued) {
      this.deliverQueued = true;
      queueMicrotask(() => {
        this.deliverQueued = false;
        this.deliver();
      });
    }
    return true;
  }

  /** The backend's queue has room again. */
  transmitReady(): void {
    if (this.run !== null) this.transmit();
  }

  /** The VM was paused (true) or resumed: a paused guest's memory does not change under it. */
  hold(held: boolean): void {
    if (held === this.held) return;
    this.held = held;
    if (!held) {
      this.transmit();
      this.deliver();
    }
  }

  /** The machine thread ended (a reset or the end): its rings and eventfds are gone with it. */
  machineEnded(): void {
    this.held = false; // the next machine starts running
    if (this.run !== null) this.endRun();
    // The next machine starts from an idle block, whatever this one left.
    this.block.forceIdle();
    this.wake();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.machineEnded();
    this.closed = true;
    this.wake();
    await this.done;
  }

  private wake(): void {
    libc.eventfdWrite(this.controlFd);
  }

  private async loop(): Promise<void> {
    while (!this.closed) {
      const run = this.run;
      const fds = [{ fd: this.controlFd, events: libc.POLLIN }];
      if (run) fds.push({ fd: run.notifyFds[NET_DATAPLANE_RX], events: libc.POLLIN }, { fd: run.notifyFds[NET_DATAPLANE_TX], events: libc.POLLIN });
      let revents: number[];
      try {
        revents = await libc.pollAsync(fds, POLL_MS);
      } catch (e) {
        this.host.log(`data plane: poll failed: ${(e as Error).message}`);
        break;
      }
      if (revents[0]) libc.eventfdRead(this.controlFd);
      for (const fd of this.retired) libc.close(fd);
      this.retired = [];
      if (this.closed) break;
      try {
        this.control();
        // Only the run that was polled: a stop and a new start may have come in between.
        if (run !== null && this.run === run) {
          if (revents[1]) libc.eventfdRead(run.notifyFds[NET_DATAPLANE_RX]);
          if (revents[2]) libc.eventfdRead(run.notifyFds[NET_DATAPLANE_TX]);
          if (revents[2]) this.transmit();
          if (revents[1]) this.deliver();
        }
      } catch (e) {
        const failure = this.failure(e);
        if (this.run !== null) this.fail(this.run, failure);
      }
    }
    for (const fd of this.retired) libc.close(fd);
    this.retired = [];
    libc.close(this.controlFd);
  }

  /** Follows the machine's requests: start a run, or stop one and hand the ring indices back. */
  private control(): void {
    const state = this.block.state;
    if (this.run !== null && state === DATAPLANE_STATE.IDLE) {
      this.endRun(); // the machine took the rings back without waiting for us
    } else if (this.run !== null && state === DATAPLANE_STATE.STOP) {
      this.saveIndices(this.run);
      this.endRun();
      this.block.move(DATAPLANE_STATE.STOP, DATAPLANE_STATE.IDLE);
    } else if (this.run === null && state === DATAPLANE_STATE.START) {
      this.start();
    }
  }

  private start(): void {
    const block = this.block;
    const regions = this.ram();
    const queues = [NET_DATAPLANE_RX, NET_DATAPLANE_TX].map((index) => ({ q: block.runQueue(index), v: block.queue(index) }));
    const refusal = regions === null ? 'the VM has no guest memory' : queues.map(({ q }) => q.enableError()).find((e) => e !== null);
    if (refusal) {
      // The machine checked these already: a mismatch is ours, so say so and leave the rings alone.
      this.refuse(refusal);
      return;
    }
    const notifyFds: number[] = [];
    const irqFds: number[] = [];
    const dups = () => [...notifyFds, ...irqFds];
    try {
      for (const { v } of queues) {
        notifyFds.push(libc.dup(v.notifyFd));
        irqFds.push(libc.dup(v.irqFd));
      }
    } catch (e) {
      for (const fd of dups()) libc.close(fd);
      this.refuse((e as Error).message);
      return;
    }
    for (const name of NET_DATAPLANE_COUNTERS) this.counterSlots.set(name, block.counterSlot(name));
    const run: Run = {
      epoch: block.epoch,
      dma: new DmaMemory(new GuestMemory([...(regions ?? [])])),
      queues: [queues[0].q, queues[1].q],
      notifyFds: [notifyFds[NET_DATAPLANE_RX], notifyFds[NET_DATAPLANE_TX]],
      irqFds: [irqFds[NET_DATAPLANE_RX], irqFds[NET_DATAPLANE_TX]],
      irqCounters: [queues[0].v.irqCounter, queues[1].v.irqCounter],
    };
    if (!block.move(DATAPLANE_STATE.START, DATAPLANE_STATE.RUNNING)) {
      for (const fd of dups()) libc.close(fd); // the machine withdrew the request meanwhile
      return;
    }
    this.run = run;
    // Buffers the guest made available before the hand-over.
    this.transmit();
    this.deliver();
  }

  /** Leaves the rings to the machine (which keeps them from then on), telling it why. */
  private refuse(why: string): void {
    const epoch = this.block.epoch;
    this.host.log(`data plane: cannot start: ${why}`);
    this.block.refuse(epoch);
    this.host.failed(epoch, `the VM host cannot run the rings: ${why}`);
  }

  private endRun(): void {
    const run = this.run;
    if (run === null) return;
    this.run = null;
    this.retired.push(...run.notifyFds, ...run.irqFds);
    if (this.waiting.length > 0) {
      this.drops.rxStopped += this.waiting.length;
      this.count('rxDropped', this.waiting.length);
      this.waiting.length = 0;
    }
    this.setReceivePaused(false);
  }

  private saveIndices(run: Run): void {
    for (const q of run.queues) this.block.setIndices(q.index, q.ringIndices);
  }

  /** The guest broke a ring: stop, hand the indices back, and have the machine fail the card. */
  private fail(run: Run, why: string): void {
    this.saveIndices(run);
    this.endRun();
    if (!this.block.move(DATAPLANE_STATE.RUNNING, DATAPLANE_STATE.IDLE)) this.block.move(DATAPLANE_STATE.STOP, DATAPLANE_STATE.IDLE);
    this.host.failed(run.epoch, why);
  }

  private transmit(): void {
    const run = this.run;
    // The backend taking a frame calls transmitReady() from inside this loop, which goes on anyway.
    if (run === null || this.transmitting || this.held) return;
    this.transmitting = true;
    const tx = run.queues[NET_DATAPLANE_TX];
    try {
      while (this.run === run && this.host.canTransmit()) {
        const chain = tx.pop(run.dma);
        if (chain === null) break;
        const length = transmitLength(NET_DATAPLANE_TX, chain);
        let frame: Uint8Array | null = null;
        const drop = readTransmittedFrame(run.dma, chain.readable, length, this.header, (n) => {
          frame = new Uint8Array(n);
          return { into: frame, offset: 0 };
        });
        tx.push(run.dma, chain.head, 0);
        if (drop === null && frame !== null) {
          this.host.transmit(frame);
          this.count('txPackets', 1);
          this.count('txBytes', length);
        } else if (drop !== null) {
          this.drops[drop]++;
          this.count('txDropped', 1);
        }
      }
      this.interruptIfWanted(run, NET_DATAPLANE_TX);
    } catch (e) {
      this.fail(run, this.failure(e));
    } finally {
      this.transmitting = false;
    }
  }

  private deliver(): void {
    const run = this.run;
    if (run === null) return;
    if (this.held) {
      this.setReceivePaused(this.waiting.length >= NET_RX_WINDOW);
      return;
    }
    const rx = run.queues[NET_DATAPLANE_RX];
    try {
      while (this.waiting.length > 0) {
        const chain = rx.pop(run.dma);
        if (chain === null) break; // no buffer: the frames wait for the guest's next notify
        const frame = this.waiting.shift() as Uint8Array;
        const result = writeReceivedFrame(run.dma, NET_DATAPLANE_RX, chain, this.rxHeader, frame);
        rx.push(run.dma, chain.head, result === 'delivered' ? VIRTIO_NET_HDR_BYTES + frame.length : 0);
        if (result === 'delivered') {
          this.count('rxPackets', 1);
          this.count('rxBytes', frame.length);
        } else {
          this.drops[result === 'no-room' ? 'rxNoRoom' : 'rxFault']++;
          this.count('rxDropped', 1);
        }
      }
      this.interruptIfWanted(run, NET_DATAPLANE_RX);
    } catch (e) {
      this.fail(run, this.failure(e));
      return;
    }
    this.setReceivePaused(this.waiting.length >= NET_RX_WINDOW);
  }

  /** A guest's broken ring, or (logged with its stack) our own bug: either way the card fails, the VM goes on. */
  private failure(e: unknown): string {
    if (e instanceof VirtqueueError) return e.message;
    this.host.log(`data plane: internal error: ${(e as Error).stack ?? String(e)}`);
    return `internal error: ${(e as Error).message}`;
  }

  private interruptIfWanted(run: Run, q: number): void {
    if (!run.queues[q].needsInterrupt(run.dma)) return;
    libc.eventfdWrite(run.irqFds[q]);
    if (this.stats && run.irqCounters[q] >= 0) Atomics.add(this.stats, run.irqCounters[q], 1);
  }

  private setReceivePaused(paused: boolean): void {
    if (paused === this.receivePaused) return;
    this.receivePaused = paused;
    this.host.pauseReceive(paused);
  }

  private count(name: NetDataPlaneCounter, n: number): void {
    const slot = this.counterSlots.get(name) ?? -1;
    if (this.stats && slot >= 0) Atomics.add(this.stats, slot, n);
  }
}
