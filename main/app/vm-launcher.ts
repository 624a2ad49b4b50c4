// VM processes under Electron: utilityProcess.fork (a Node process without the
// renderer sandbox, able to open /dev/kvm), behind the manager's VmProcessHandle.
import os from 'node:os';
import { utilityProcess } from 'electron';
import { VM_PROCESS_ENTRY, type VmProcessLauncher } from '../manager/process-launcher';
import type { VmToManager } from '../manager/vm-process-protocol';
import { utilityExitReason } from './policy';

export function electronVmProcessLauncher(entry = VM_PROCESS_ENTRY): VmProcessLauncher {
  return (label) => {
    const child = utilityProcess.fork(entry, [label], { stdio: 'pipe', serviceName: `Porthole VM ${label}` });
    let exited = false;
    const exitListeners: ((code: number | null, signal: string | null) => void)[] = [];
    child.on('exit', (code) => {
      if (exited) return;
      exited = true;
      const reason = utilityExitReason(code, os.constants.signals);
      exitListeners.forEach((l) => l(reason.code, reason.signal));
    });
    return {
      get pid() { return child.pid; },
      send(message) {
        if (!exited) child.postMessage(message);
      },
      kill(signal) {
        if (exited) return;
        // UtilityProcess.kill() only sends SIGTERM; force-off needs SIGKILL.
        if (child.pid !== undefined) process.kill(child.pid, signal);
        else child.kill();
      },
      onMessage(listener) {
        child.on('message', (m) => listener(m as VmToManager));
      },
      onOutputText(listener) {
        child.stdout?.on('data', (d: Buffer | string) => listener(d.toString()));
        child.stderr?.on('data', (d: Buffer | string) => listener(d.toString()));
      },
      onExit(listener) {
        exitListeners.push(listener);
      },
    };
  };
}
