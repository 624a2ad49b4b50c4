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

/** What a thread started ahead posts once its modules are loaded (before its launch). */
export const AWAITING_LAUNCH = 'awaiting-launch';

/** How long an exit waits for a thread started ahead to finish loading. */
export const PREWARM_SETTLE_MS = 30_000;

interface Warm {
  worker: Worker;
  failed: boolean;
  /** Settles when the thread has loaded its modules, or has ended. */
  loaded: Promise<void>;
}

let warm: Warm | undefined;

/** Starts a machine thread now, for the first launchMachineThread of this process. */
export function prewarmMachineThread(): void {
  if (warm) return;
  const workerData: MachineThreadAwaitingLaunch = { awaitLaunch: true };
  const worker = new Worker(MACHINE_THREAD_ENTRY, { workerData });
  let settle = () => {};
  const loaded = new Promise<void>((resolve) => { settle = resolve; });
  const w: Warm = { worker, failed: false, loaded };
  const onMessage = (m: { type?: string }) => {
    if (m?.type !== AWAITING_LAUNCH) return;
    worker.off('message', onMessage);
    settle();
  };
  worker.on('message', onMessage);
  // A thread that failed to load is replaced at launch by a fresh one, whose failure is reported.
  worker.once('error', () => { w.failed = true; settle(); });
  worker.once('exit', () => { w.failed = true; settle(); });
  // It must not keep a process alive that never launches a machine (a config error, say).
  w.worker.unref();
  warm = w;
}

/**
 * Ends a thread started ahead that no machine took (the CLI exits on a config error, say).
 * It first waits until the thread has loaded its modules: a process that exits while a
 * worker is inside koffi's loading aborts (node-addon-api cannot throw into an ending
 * thread), which printed a fatal-error dump after the user's one-line error.
 */
export async function releasePrewarmedThread(): Promise<void> {
  const w = warm;
  if (!w) return;
  warm = undefined;
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([w.loaded, new Promise<void>((resolve) => { timer = setTimeout(resolve, PREWARM_SETTLE_MS); })]);
  clearTimeout(timer);
  await w.worker.terminate();
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
