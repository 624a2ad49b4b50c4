// The machine thread's modules (koffi, the device models) take seconds to load on a slow host.
// A VM process starts its machine thread before it has loaded its own modules or received its
// config, so both load at once; the thread then waits for its MachineThreadData.
import path from 'node:path';
import { Worker } from 'node:worker_threads';

export const MACHINE_THREAD_ENTRY = path.join(__dirname, '..', 'machine', 'machine-thread.js');

/** workerData of a thread started ahead: its MachineThreadData comes as the first message. */
export interface MachineThreadAwaitingLaunch {
  awaitLaunch: true;
}

interface Warm {
  worker: Worker;
  failed: boolean;
}

let warm: Warm | undefined;

/** Starts a machine thread now, for the first launchMachineThread of this process. */
export function prewarmMachineThread(): void {
  if (warm) return;
  const workerData: MachineThreadAwaitingLaunch = { awaitLaunch: true };
  const w: Warm = { worker: new Worker(MACHINE_THREAD_ENTRY, { workerData }), failed: false };
  // A thread that failed to load is replaced at launch by a fresh one, whose failure is reported.
  w.worker.once('error', () => { w.failed = true; });
  w.worker.once('exit', () => { w.failed = true; });
  // It must not keep a process alive that never launches a machine (a config error, say).
  w.worker.unref();
  warm = w;
}

/** Whether a thread started ahead is waiting for its launch. */
export function machineThreadWaiting(): boolean {
  return warm !== undefined && !warm.failed;
}

/** The machine thread for `data`: the one started ahead if it is still good, else a new one. */
export function launchMachineThread(data: unknown): Worker {
  const w = warm;
  warm = undefined;
  if (w && !w.failed) {
    w.worker.ref();
    w.worker.postMessage({ type: 'launch', data });
    return w.worker;
  }
  if (w) void w.worker.terminate();
  return new Worker(MACHINE_THREAD_ENTRY, { workerData: data });
}
