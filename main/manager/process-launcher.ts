// Starting VM processes: child_process.fork under Node; main/app/ supplies the
// utilityProcess version under Electron. The manager sees only VmProcessHandle.
import { fork } from 'node:child_process';
import path from 'node:path';
import type { ManagerToVm, VmToManager } from './vm-process-protocol';

export interface VmProcessHandle {
  readonly pid: number | undefined;
  send(message: ManagerToVm): void;
  /** Signals the process (SIGKILL for force-off). */
  kill(signal: NodeJS.Signals): void;
  onMessage(listener: (message: VmToManager) => void): void;
  /** Text the process wrote to stdout or stderr. */
  onOutputText(listener: (text: string) => void): void;
  /** Exactly once: the process is gone. `signal` is a name like "SIGKILL". */
  onExit(listener: (code: number | null, signal: string | null) => void): void;
}

export type VmProcessLauncher = (label: string) => VmProcessHandle;

/** The compiled entry of a VM process. */
export const VM_PROCESS_ENTRY = path.join(__dirname, 'vm-process.js');

export function nodeVmProcessLauncher(entry = VM_PROCESS_ENTRY): VmProcessLauncher {
  return (label) => {
    const child = fork(entry, [label], {
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      serialization: 'advanced',
      // The manager's own flags (e.g. node --test) must not leak into the VM process.
      execArgv: [],
    });
    let exited = false;
    const exitListeners: ((code: number | null, signal: string | null) => void)[] = [];
    // 'close' comes after stdio is drained, so the last stderr lines are in the log first.
    child.on('close', (code, signal) => {
      if (exited) return;
      exited = true;
      exitListeners.forEach((l) => l(code, signal));
    });
    // fork and send failures are followed by 'close', which reports them.
    child.on('error', () => undefined);
    return {
      get pid() { return child.pid; },
      send(message) {
        // A failed send surfaces as the child's 'error' and then its exit, which the manager reports.
        if (child.connected) child.send(message);
      },
      kill(signal) {
        if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      },
      onMessage(listener) {
        child.on('message', (m) => listener(m as VmToManager));
      },
      onOutputText(listener) {
        child.stdout?.setEncoding('utf8').on('data', listener);
        child.stderr?.setEncoding('utf8').on('data', listener);
      },
      onExit(listener) {
        exitListeners.push(listener);
      },
    };
  };
}
