// A virtio-blk disk's rings, run on the disk I/O thread (disk-io-thread.ts; the hand-over is
// shared/dataplane-block.ts). A guest notify is an ioeventfd that thread polls, an interrupt a
// write to the MSI-X vector's irqfd, and data moves with preadv/pwritev straight between the
// image and guest memory: the vCPU neither exits to JavaScript for a notify nor waits for the
// I/O, and this thread may block on a flush without holding up anything else of the VM.
// Requests are served by the same code as on the machine thread (virtio-blk-requests.ts); a
// broken ring ends the run and the machine puts the disk in its error state.
import { libc } from '../../../native';
import { DmaMemory } from '../memory/dma';
import { GuestMemory, type MemoryRegion } from '../memory/guest-memory';
import type { BlockBackend } from '../devices/usb/storage/block-backend';
import { adoptBlockImage } from '../devices/block/open-image';
import { DATAPLANE_STATE, DataPlaneBlock } from '../shared/dataplane-block';
import { type SplitVirtqueue, VirtqueueError } from '../shared/virtqueue';
import {
  BLK_COUNTERS, BLK_DATAPLANE_FLAG, BLK_IMAGE, type BlkCounter, type BlkDisk, blkDataPlaneLayout, blkRunImage, serveBlkRequest,
} from '../shared/virtio-blk-requests';

export interface BlkRunnerHost {
  /** The guest broke a ring in run `epoch`: the machine puts the disk in its error state. */
  failed(epoch: number, why: string): void;
  log(text: string): void;
}

interface Run {
  epoch: number;
  /** The block's count of ended machines when the run began: a higher count means its machine is gone. */
  machines: number;
  dma: DmaMemory;
  queues: SplitVirtqueue[];
  /** Our own descriptors (dup) of the queues' notify and irq eventfds and of the image. */
  notifyFds: number[];
  irqFds: number[];
  irqCounters: number[];
  disk: BlkDisk & { backend: BlockBackend };
  /** Set by a request that broke the protocol mid-batch. */
  failure: string | null;
}

export class BlkDataPlane {
  readonly block: DataPlaneBlock;
  private run: Run | null = null;
  private readonly counterSlots = new Map<BlkCounter, number>();

  constructor(
    buffer: SharedArrayBuffer,
    queues: number,
    private readonly ram: readonly MemoryRegion[],
    private readonly stats: Uint32Array | null,
    private readonly host: BlkRunnerHost,
  ) {
    this.block = new DataPlaneBlock(blkDataPlaneLayout(queues), buffer);
  }

  get running(): boolean {
    return this.run !== null;
  }

  /** Which run has the rings: 0 for none, then a new number at each start. */
  get runNumber(): number {
    return this.run === null ? 0 : this.runs;
  }
  private runs = 0;

  /** The notify eventfds to poll, one per queue (none while no run has the rings). */
  get notifyFds(): readonly number[] {
    return this.run?.notifyFds ?? [];
  }

  /** Follows the machine: start a run, stop one (indices handed back), or drop one whose machine ended. */
  control(): void {
    const run = this.run;
    const state = this.block.state;
    if (run !== null && (this.block.machinesEnded !== run.machines || state === DATAPLANE_STATE.IDLE)) {
      // The machine ended, or took the rings back without waiting for us: they are not ours now.
      this.endRun();
    } else if (run !== null && state === DATAPLANE_STATE.STOP) {
      this.saveIndices(run);
      this.endRun();
      this.block.move(DATAPLANE_STATE.STOP, DATAPLANE_STATE.IDLE);
      return;
    }
    if (this.run === null && this.block.state === DATAPLANE_STATE.START) this.start();
  }

  /** Serves the queues whose notify fired (`notified[i]` for queue i). */
  serve(notified: readonly boolean[]): void {
    const run = this.run;
    if (run === null) return;
    notified.forEach((fired, i) => {
      if (fired && this.run === run) {
        libc.eventfdRead(run.notifyFds[i]);
        this.serveQueue(run, run.queues[i]);
      }
    });
  }

  /** The thread is ending: a run's descriptors are closed (the machine takes the rings back on its own). */
  close(): void {
    const run = this.run;
    if (run === null) return;
    this.saveIndices(run);
    this.endRun();
    this.block.move(DATAPLANE_STATE.STOP, DATAPLANE_STATE.IDLE);
  }

  private start(): void {
    const block = this.block;
    const flags = block.flags;
    const queues = Array.from({ length: block.layout.queues }, (_, index) => ({ q: block.runQueue(index), v: block.queue(index) }));
    const refusal = queues.map(({ q }) => q.enableError()).find((e) => e !== null);
    if (refusal) {
      // The machine checked these already: a mismatch is ours, so say so and leave the rings alone.
      this.refuse(refusal);
      return;
    }
    const image = blkRunImage(block);
    const owned: number[] = [];
    let run: Run;
    try {
      const dup = (fd: number) => {
        const copy = libc.dup(fd);
        owned.push(copy);
        return copy;
      };
      const notifyFds = queues.map(({ v }) => dup(v.notifyFd));
      const irqFds = queues.map(({ v }) => dup(v.irqFd));
      // The image owns its descriptor from here (closing it itself if it cannot be adopted).
      const backend = adoptBlockImage(libc.dup(image.fd), {
        format: image.flags & BLK_IMAGE.QCOW2 ? 'qcow2' : 'raw',
        readOnly: (image.flags & BLK_IMAGE.READ_ONLY) !== 0, guardProbedFormat: (image.flags & BLK_IMAGE.GUARD_FORMAT) !== 0,
      });
      run = {
        epoch: block.epoch, machines: block.machinesEnded, dma: new DmaMemory(new GuestMemory([...this.ram])),
        queues: queues.map(({ q }) => q), notifyFds, irqFds, irqCounters: queues.map(({ v }) => v.irqCounter), failure: null,
        disk: {
          backend, serial: image.serial,
          discard: (flags & BLK_DATAPLANE_FLAG.DISCARD) !== 0, writeZeroes: (flags & BLK_DATAPLANE_FLAG.WRITE_ZEROES) !== 0,
          count: (name, n) => this.count(name, n),
        },
      };
    } catch (e) {
      for (const fd of owned) libc.close(fd);
      this.refuse((e as Error).message);
      return;
    }
    for (const name of BLK_COUNTERS) this.counterSlots.set(name, block.counterSlot(name));
    if (!block.move(DATAPLANE_STATE.START, DATAPLANE_STATE.RUNNING)) {
      this.closeRun(run); // the machine withdrew the request meanwhile
      return;
    }
    this.run = run;
    this.runs++;
    // Requests the guest made available before the hand-over.
    for (const q of run.queues) if (this.run === run) this.serveQueue(run, q);
  }

  /** Leaves the rings to the machine (which keeps them from then on), telling it why. */
  private refuse(why: string): void {
    const epoch = this.block.epoch;
    this.host.log(`disk data plane: cannot start: ${why}`);
    this.block.refuse(epoch);
    this.host.failed(epoch, `the disk I/O thread cannot run the rings: ${why}`);
  }

  private serveQueue(run: Run, q: SplitVirtqueue): void {
    const startedAt = performance.now();
    try {
      for (let chain = q.pop(run.dma); chain !== null; chain = this.owns(run) ? q.pop(run.dma) : null) {
        const head = chain.head;
        serveBlkRequest(run.disk, run.dma, q.index, chain, {
          current: () => this.owns(run),
          complete: (written) => {
            q.push(run.dma, head, written);
            // Published at once: a machine that takes the rings by force (a stop left waiting
            // on a slow flush) carries on from here and serves again only what is unfinished.
            this.block.setIndices(q.index, q.ringIndices);
          },
          fail: (why) => {
            run.failure ??= why;
          },
        });
      }
      if (run.failure !== null) throw new VirtqueueError(run.failure);
      if (this.owns(run) && q.needsInterrupt(run.dma)) {
        // The bookkeeping goes first: the interrupt wakes the vCPU, which may take this CPU
        // (in a small VM, the same one) before this thread gets back to its poll.
        this.block.setIndices(q.index, q.ringIndices);
        if (this.stats && run.irqCounters[q.index] >= 0) Atomics.add(this.stats, run.irqCounters[q.index], 1);
        libc.eventfdWrite(run.irqFds[q.index]);
      }
    } catch (e) {
      this.fail(run, e);
    }
    this.count('ioThreadUs', Math.round((performance.now() - startedAt) * 1000));
  }

  /**
   * Whether `run` still has the rings: no broken request, and the machine has not taken them
   * back (it does so without us when a stop waits too long, e.g. on a slow flush).
   */
  private owns(run: Run): boolean {
    const state = this.block.state;
    return this.run === run && run.failure === null && (state === DATAPLANE_STATE.RUNNING || state === DATAPLANE_STATE.STOP);
  }

  /** The guest broke a ring (or, logged with its stack, we failed): stop, hand the indices back, have the machine fail the disk. */
  private fail(run: Run, e: unknown): void {
    let why: string;
    if (e instanceof VirtqueueError) why = e.message;
    else {
      this.host.log(`disk data plane: internal error: ${(e as Error).stack ?? String(e)}`);
      why = `internal error: ${(e as Error).message}`;
    }
    this.saveIndices(run);
    this.endRun();
    if (!this.block.move(DATAPLANE_STATE.RUNNING, DATAPLANE_STATE.IDLE)) this.block.move(DATAPLANE_STATE.STOP, DATAPLANE_STATE.IDLE);
    this.host.failed(run.epoch, why);
  }

  private saveIndices(run: Run): void {
    for (const q of run.queues) this.block.setIndices(q.index, q.ringIndices);
  }

  private endRun(): void {
    const run = this.run;
    if (run === null) return;
    this.run = null;
    this.closeRun(run);
  }

  /** Closes the run's descriptors; the image's last one drops its lock, so a new machine can take it. */
  private closeRun(run: Run): void {
    for (const fd of [...run.notifyFds, ...run.irqFds]) libc.close(fd);
    run.disk.backend.close();
  }

  private count(name: BlkCounter, n: number): void {
    const slot = this.counterSlots.get(name) ?? -1;
    if (this.stats && slot >= 0) Atomics.add(this.stats, slot, n);
  }
}
