// An application processor: runs KVM_RUN on its own thread and hands I/O exits to
// the machine thread, which owns the device models.
import { workerData } from 'node:worker_threads';
import * as libc from '../../../native/libc';
import { EXIT, KVM, RUN, RUN_AGAIN, RUN_KICKED } from '../../../native/kvm';
import { COMMAND, ControlBlock, kickVcpu, MAILBOX } from '../shared/control';

interface ApWorkerData {
  cpu: number;
  fd: number;
  runBuffer: SharedArrayBuffer;
  runOffset: number;
  runSize: number;
  control: SharedArrayBuffer;
  /** vCPU 0's kvm_run page, to set its immediate_exit when handing it an exit. */
  bspRunBuffer: SharedArrayBuffer;
  bspRunOffset: number;
}

const data = workerData as ApWorkerData;
const control = new ControlBlock(data.control);
const run = new DataView(data.runBuffer, data.runOffset, data.runSize);
const bytes = new Uint8Array(data.runBuffer, data.runOffset, data.runSize);
const KVM_RUN = KVM.RUN;
const kickBsp = () => kickVcpu(data.bspRunBuffer, data.bspRunOffset, control.tid(0));

libc.installKickHandler();
libc.setThreadName(`vcpu${data.cpu}`);
control.setTid(data.cpu, libc.gettid());
try {
  for (;;) {
    const command = control.command;
    if (command === COMMAND.STOP) break;
    if (command === COMMAND.PAUSE) {
      control.waitWhileCommand(COMMAND.PAUSE);
      continue;
    }
    const r = libc.ioctlHot(data.fd, KVM_RUN);
    if (r === RUN_KICKED) {
      bytes[RUN.IMMEDIATE_EXIT] = 0;
      continue;
    }
    // EAGAIN: INIT/SIPI changed this AP's state while it waited; run again.
    if (r === RUN_AGAIN) continue;
    if (r < 0) throw new libc.NativeError(`KVM_RUN (vCPU ${data.cpu})`, -r);
    if (run.getUint32(RUN.EXIT_REASON, true) === EXIT.INTR) continue;
    if (control.postApExit(data.cpu, kickBsp) === MAILBOX.CANCELLED) break;
  }
} finally {
  control.setTid(data.cpu, 0);
  // If this thread failed, vCPU 0 may be halted in KVM_RUN: wake it to see the error.
  kickBsp();
}
