// A machine thread started before the VM's configuration is known (by bin/porthole, first
// thing): it loads its modules (koffi, the device models, the boot loaders) while the main
// thread loads its own, then takes its MachineThreadData from its first message. Only the
// first launch of a process can use it; a guest reset starts a fresh thread as before.
import path from 'node:path';
import { Worker } from 'node:worker_threads';

/** workerData of a prestarted machine thread: "wait for an init message". */
export const PRESTART_MARKER = 'porthole-prestarted-machine-thread';

let prestarted: { worker: Worker; dead: boolean } | null = null;

export function prestartMachineThread(): void {
  if (prestarted) return;
  const entry = { worker: new Worker(path.join(__dirname, 'machine-thread.js'), { workerData: PRESTART_MARKER }), dead: false };
  entry.worker.once('error', () => { entry.dead = true; });
  entry.worker.once('exit', () => { entry.dead = true; });
  // Never what keeps the process alive: a CLI that stops early (bad arguments) just exits.
  entry.worker.unref();
  prestarted = entry;
}

/** The prestarted machine thread (once), ready for its init message; null if none is alive. */
export function takePrestartedMachineThread(): Worker | null {
  const entry = prestarted;
  prestarted = null;
  if (!entry) return null;
  if (entry.dead) {
    void entry.worker.terminate();
    return null;
  }
  entry.worker.removeAllListeners();
  entry.worker.ref();
  return entry.worker;
}
