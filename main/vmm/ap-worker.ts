// An application processor: runs KVM_RUN on its own thread and hands I/O exits to
// the machine thread, which owns the device models.
import { workerData } from 'node:worker_threads';
import { EXIT, libc, RUN } from '../../native';
import { COMMAND, ControlBlock, MAILBOX } from './shared';

interface ApWorkerData {
  cpu: number;
  fd: number;
  runBuffer: SharedArrayBuffer;
  runOffset: number;
  runSize: number;
  control: SharedArrayBuffer;
}

const data = workerData as ApWorkerData;
const control = new ControlBlock(data.control);
const run = new DataView(data.runBuffer, data.runOffset, data.runSize);
const bytes = new Uint8Array(data.runBuffer, data.runOffset, data.runSize);
const KVM_RUN = 0xae80;

libc.installKickHandler();
control.setTid(data.cpu, libc.gettid());
try {
  for (;;) {
    const command = control.command;
    if (command === COMMAND.STOP) break;
    if (command === COMMAND.PAUSE) {
      control.waitWhileCommand(COMMAND.PAUSE);
      continue;
    }
    const r = libc.ioctlTry(data.fd, KVM_RUN);
    if (r === -4) {
      bytes[RUN.IMMEDIATE_EXIT] = 0;
      continue;
    }
    if (r < 0) throw new libc.NativeError(`KVM_RUN (vCPU ${data.cpu})`, -r);
    if (run.getUint32(RUN.EXIT_REASON, true) === EXIT.INTR) continue;
    if (control.postApExit(data.cpu) === MAILBOX.CANCELLED) break;
  }
} finally {
  control.setTid(data.cpu, 0);
}
