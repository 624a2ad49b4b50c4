// Entry point of the disk I/O thread (a worker of the VM process, one per VM with virtio
// disks): runs the disks' rings lent to it (blk-dataplane.ts). Everything here blocks, on
// purpose: a poll(2) on the control eventfd and the lent queues' notify eventfds, then
// synchronous I/O. So a flush that takes a second holds up this thread only, and nothing of
// it goes through libuv's small thread pool. It never returns to its event loop until the VM
// host ends it (the CLOSING word and the control eventfd).
import { parentPort, workerData } from 'node:worker_threads';
import { libc } from '../../../native';
import type { MemoryRegion } from '../memory/guest-memory';
import { BlkDataPlane } from './blk-dataplane';

export interface DiskIoThreadData {
  /** Per lent disk: its index in the config's disks, its block and its queue count. */
  disks: { index: number; buffer: SharedArrayBuffer; queues: number }[];
  ram: MemoryRegion[];
  stats: SharedArrayBuffer | null;
  /** The eventfd every block names as its control fd (the VM host made it and closes it). */
  controlFd: number;
  /** Int32 words set by the VM host (DISK_IO_SWITCH), each followed by a write to the control eventfd. */
  switches: SharedArrayBuffer;
}

/** CLOSING: the thread ends. HELD: the VM is paused, requests wait (their notifies stay counted). */
export const DISK_IO_SWITCH = { CLOSING: 0, HELD: 1 } as const;

export type DiskIoThreadMessage =
  | { type: 'failed'; disk: number; epoch: number; why: string }
  | { type: 'log'; text: string };

/** A poll's longest wait: the control eventfd ends it sooner; this only bounds a lost wake-up. */
const POLL_MS = 1000;
function runDiskIoThread(data: DiskIoThreadData, post: (m: DiskIoThreadMessage) => void): void {
  libc.setThreadName('disk-io');
  const stats = data.stats ? new Uint32Array(data.stats) : null;
  const switches = new Int32Array(data.switches);
  const planes = data.disks.map((d) => new BlkDataPlane(d.buffer, d.queues, data.ram, stats, {
    failed: (epoch, why) => post({ type: 'failed', disk: d.index, epoch, why }),
    log: (text) => post({ type: 'log', text: `disk${d.index}: ${text}` }),
  }));
  // The poll set is laid out again only when it changes (a run starts or ends, a hold): a
  // request's wake-up allocates nothing for it.
  let pollSet: libc.PollSet | null = null;
  let polledHeld = false;
  let first: number[] = [];
  let polledRuns: number[] = [];
  try {
    while (Atomics.load(switches, DISK_IO_SWITCH.CLOSING) === 0) {
      const held = Atomics.load(switches, DISK_IO_SWITCH.HELD) !== 0;
      if (pollSet === null || held !== polledHeld || planes.some((p, i) => p.runNumber !== polledRuns[i])) {
        // Each plane's notify fds follow from `first[i]`; held: none (they stay counted for the resume).
        const fds = [{ fd: data.controlFd, events: libc.POLLIN }];
        first = [];
        for (const p of planes) {
          first.push(fds.length);
          if (!held) for (const fd of p.notifyFds) fds.push({ fd, events: libc.POLLIN });
        }
        first.push(fds.length);
        polledRuns = planes.map((p) => p.runNumber);
        pollSet = new libc.PollSet(fds);
        polledHeld = held;
      }
      try {
        pollSet.wait(POLL_MS);
      } catch (e) {
        // The thread's end: the VM host fails the disks lent to it, and their drivers reset them.
        throw new Error(`disk I/O thread: poll failed: ${(e as Error).message}`);
      }
      if (pollSet.revents(0)) libc.eventfdRead(data.controlFd);
      for (const p of planes) p.control();
      // Held while this poll waited: the notifies it saw stay counted for the first poll after the resume.
      if (Atomics.load(switches, DISK_IO_SWITCH.HELD) !== 0) continue;
      // A run that started or stopped in control() is not the one polled: its turn is the next poll.
      for (let i = 0; i < planes.length; i++) {
        const p = planes[i];
        if (p.runNumber !== polledRuns[i] || first[i + 1] === first[i]) continue;
        const notified: boolean[] = [];
        for (let at = first[i]; at < first[i + 1]; at++) notified.push(pollSet.revents(at) !== 0);
        p.serve(notified);
      }
    }
  } finally {
    for (const p of planes) {
      p.block.controlFd = -1;
      p.close();
    }
  }
}

const port = parentPort;
if (port && (workerData as { diskIo?: DiskIoThreadData } | null)?.diskIo) {
  runDiskIoThread((workerData as { diskIo: DiskIoThreadData }).diskIo, (m) => port.postMessage(m));
}
