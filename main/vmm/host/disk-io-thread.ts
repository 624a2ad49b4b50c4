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
  /** Int32 word 0 becomes 1 when the thread should end. */
  closing: SharedArrayBuffer;
}

export type DiskIoThreadMessage =
  | { type: 'failed'; disk: number; epoch: number; why: string }
  | { type: 'log'; text: string };

/** A poll's longest wait: the control eventfd ends it sooner; this only bounds a lost wake-up. */
const POLL_MS = 1000;
/**
 * After serving a request the thread watches the rings itself for a while, with the guest's
 * notifies off (QEMU's iothreads do the same, poll-max-ns): the next request of a busy disk
 * then costs the guest no exit and this thread no wake-up. The spin doubles while the next
 * request keeps coming just after a spin gave up, and halves once the disks go idle.
 */
const SPIN_MIN_MS = 0.016;
const SPIN_MAX_MS = 1;

/** Serves the planes' rings without notifies until `ms` pass without a request. */
function spin(planes: readonly BlkDataPlane[], ms: number, closing: Int32Array): void {
  for (const p of planes) p.quiet(true);
  let deadline = performance.now() + ms;
  while (performance.now() < deadline && Atomics.load(closing, 0) === 0 && !planes.some((p) => p.controlPending)) {
    let served = false;
    for (const p of planes) served = p.serveAvailable() || served;
    if (served) deadline = performance.now() + ms;
  }
  for (const p of planes) p.quiet(false);
  // What came in before the notifies were back on has no notify of its own.
  for (const p of planes) p.serveAvailable();
}

function runDiskIoThread(data: DiskIoThreadData, post: (m: DiskIoThreadMessage) => void): void {
  const stats = data.stats ? new Uint32Array(data.stats) : null;
  const closing = new Int32Array(data.closing);
  const planes = data.disks.map((d) => new BlkDataPlane(d.buffer, d.queues, data.ram, stats, {
    failed: (epoch, why) => post({ type: 'failed', disk: d.index, epoch, why }),
    log: (text) => post({ type: 'log', text: `disk${d.index}: ${text}` }),
  }));
  let spinMs = SPIN_MIN_MS;
  while (Atomics.load(closing, 0) === 0) {
    const fds = [{ fd: data.controlFd, events: libc.POLLIN }];
    const owners: { plane: number; queue: number }[] = [];
    const polledRuns = planes.map((p) => p.runNumber);
    planes.forEach((p, plane) => p.notifyFds.forEach((fd, queue) => {
      fds.push({ fd, events: libc.POLLIN });
      owners.push({ plane, queue });
    }));
    let revents: number[];
    const waitStart = performance.now();
    try {
      revents = libc.poll(fds, POLL_MS);
    } catch (e) {
      post({ type: 'log', text: `disk I/O thread: poll failed, its disks go back to the machine thread: ${(e as Error).message}` });
      break;
    }
    if (revents[0]) libc.eventfdRead(data.controlFd);
    for (const p of planes) p.control();
    const notified = polledRuns.map((_, i) => owners.filter((o) => o.plane === i).map(() => false));
    owners.forEach((o, i) => {
      if (revents[i + 1]) notified[o.plane][o.queue] = true;
    });
    // A run that started or stopped in control() is not the one polled: its turn is the next poll.
    let served = false;
    planes.forEach((p, i) => {
      if (p.runNumber === polledRuns[i]) served = p.serve(notified[i]) || served;
    });
    if (served) {
      // A request that came soon after the last spin gave up: spin longer; one after an idle while: shorter.
      const waited = performance.now() - waitStart;
      spinMs = waited < SPIN_MAX_MS ? Math.min(spinMs * 2, SPIN_MAX_MS) : Math.max(spinMs / 2, SPIN_MIN_MS);
      spin(planes, spinMs, closing);
    }
  }
  for (const p of planes) {
    p.block.controlFd = -1;
    p.close();
  }
}

const port = parentPort;
if (port && (workerData as { diskIo?: DiskIoThreadData } | null)?.diskIo) {
  runDiskIoThread((workerData as { diskIo: DiskIoThreadData }).diskIo, (m) => port.postMessage(m));
}
