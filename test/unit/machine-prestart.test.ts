import assert from 'node:assert/strict';
import { test } from 'node:test';
import { defaultConfig } from '../../main/vmm/config';
import type { MachineToHost } from '../../main/vmm/machine';
import { prestartMachineThread, takePrestartedMachineThread } from '../../main/vmm/machine-prestart';
import type { MachineThreadInit } from '../../main/vmm/machine-thread';
import { ByteRing, ControlBlock } from '../../main/vmm/shared';

test('a prestarted machine thread is taken once and runs the machine from its init message', async () => {
  assert.equal(takePrestartedMachineThread(), null);
  prestartMachineThread();
  const worker = takePrestartedMachineThread();
  assert.ok(worker);
  assert.equal(takePrestartedMachineThread(), null);
  // A boot file that does not exist: the machine ends with an error whether or not this
  // host has /dev/kvm, which shows the thread took its configuration from the message.
  const config = { ...defaultConfig(), boot: { kind: 'flat' as const, path: '/nonexistent/porthole-prestart-test.bin', address: 0x1000 } };
  const ended = new Promise<MachineToHost>((resolve) => worker.on('message', (m: MachineToHost) => { if (m.type === 'ended') resolve(m); }));
  worker.postMessage({
    type: 'init', data: { config, control: new ControlBlock().buffer, rings: Array.from({ length: 5 }, () => new ByteRing().buffer) },
  } satisfies MachineThreadInit);
  const m = await ended;
  assert.equal(m.type === 'ended' && m.end.reason, 'error');
  await worker.terminate();
});
