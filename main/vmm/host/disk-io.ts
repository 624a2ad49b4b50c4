// The VM host's side of the disk I/O thread (disk-io-thread.ts): one data plane block per
// virtio disk, made once per VM and kept across resets; the thread that runs what the disks
// lend it; failure reports relayed to the machine thread.
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { libc } from '../../../native';
import type { MachineConfig } from '../config';
import type { MemoryRegion } from '../memory/guest-memory';
import { DATAPLANE_STATE, dataPlaneBlockBytes, DataPlaneBlock, encodeDataPlaneFailure } from '../shared/dataplane-block';
import { blkDataPlaneLayout } from '../shared/virtio-blk-requests';
import { DISK_IO_SWITCH, type DiskIoThreadData, type DiskIoThreadMessage } from './disk-io-thread';

export const DISK_IO_THREAD_ENTRY = path.join(__dirname, 'disk-io-thread.js');

export interface DiskIoHost {
  /** Sends a DATAPLANE_FAILED record (encodeDataPlaneFailure) to the machine's disks. */
  sendFailure(record: Uint8Array): void;
  log(text: string): void;
}

export class DiskIoThread {
  private readonly blocks: { index: number; block: DataPlaneBlock }[];
  /** Int32 words: CLOSING, HELD (see DiskIoThreadData.switches). */
  private readonly switches = new SharedArrayBuffer(8);
  private readonly controlFd: number;
  private readonly worker: Worker;
  private readonly exited: Promise<void>;

  /** The thread for `config`'s virtio disks, or null when it has none. */
  static open(config: MachineConfig, ram: readonly MemoryRegion[], stats: SharedArrayBuffer | null, host: DiskIoHost): DiskIoThread | null {
    const disks = (config.disks ?? []).map((disk, index) => ({ disk, index })).filter(({ disk }) => (disk.bus ?? 'virtio') === 'virtio');
    if (disks.length === 0) return null;
    return new DiskIoThread(disks.map(({ disk, index }) => ({ index, queues: disk.queues ?? 1 })), ram, stats, host);
  }

  private constructor(disks: { index: number; queues: number }[], ram: readonly MemoryRegion[], stats: SharedArrayBuffer | null, host: DiskIoHost) {
    this.blocks = disks.map((d) => {
      const layout = blkDataPlaneLayout(d.queues);
      return { index: d.index, block: new DataPlaneBlock(layout, new SharedArrayBuffer(dataPlaneBlockBytes(layout))) };
    });
    this.controlFd = libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
    // A lend before the thread has loaded waits in the eventfd's count for its first poll.
    for (const { block } of this.blocks) block.controlFd = this.controlFd;
    const data: DiskIoThreadData = {
      disks: this.blocks.map(({ index, block }) => ({ index, buffer: block.buffer, queues: block.layout.queues })),
      ram: [...ram], stats, controlFd: this.controlFd, switches: this.switches,
    };
    this.worker = new Worker(DISK_IO_THREAD_ENTRY, { workerData: { diskIo: data } });
    this.worker.on('message', (m: DiskIoThreadMessage) => {
      if (m.type === 'failed') host.sendFailure(encodeDataPlaneFailure(m.disk, m.epoch, m.why));
      else if (m.type === 'log') host.log(m.text);
    });
    this.exited = new Promise((resolve) => {
      this.worker.once('error', (e) => {
        host.log(`disk I/O thread failed; the disks run on the machine thread from their next reset: ${e.stack ?? e.message}`);
        for (const { index, block } of this.blocks) {
          block.controlFd = -1;
          // A lent disk's notifies have no reader now: its error state makes the driver reset it.
          if (block.state !== DATAPLANE_STATE.IDLE) host.sendFailure(encodeDataPlaneFailure(index, block.epoch, 'the disk I/O thread failed'));
        }
      });
      this.worker.once('exit', () => resolve());
    });
  }

  /** Per disk of the config, its data plane block (null for a SATA disk). */
  blockBuffers(diskCount: number): (SharedArrayBuffer | null)[] {
    return Array.from({ length: diskCount }, (_, i) => this.blocks.find((b) => b.index === i)?.block.buffer ?? null);
  }

  /** The machine thread ended: its rings and eventfds are gone with it; a run on them ends. */
  machineEnded(): void {
    for (const { block } of this.blocks) block.forceIdle();
    libc.eventfdWrite(this.controlFd);
  }

  /** The VM was paused (true) or resumed: a paused guest's memory does not change under it. */
  hold(held: boolean): void {
    Atomics.store(new Int32Array(this.switches), DISK_IO_SWITCH.HELD, held ? 1 : 0);
    libc.eventfdWrite(this.controlFd);
  }

  async close(): Promise<void> {
    Atomics.store(new Int32Array(this.switches), DISK_IO_SWITCH.CLOSING, 1);
    libc.eventfdWrite(this.controlFd);
    await this.exited;
    libc.close(this.controlFd);
  }
}
