// A VM process starts its machine thread before it has its config (machine-prewarm.ts): the first
// launch must hand that thread its data and get its answer, on any host. Where /dev/kvm is
// missing the answer is the error ending the machine; where it works, the missing kernel is.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { defaultConfig } from '../../main/vmm/config';
import { machineThreadWaiting, prewarmMachineThread } from '../../main/vmm/host/machine-prewarm';
import { VmHost } from '../../main/vmm/host/vm-host';

const config = () => ({ ...defaultConfig(), boot: { kind: 'linux' as const, kernel: '/nonexistent/porthole-test-bzImage', append: '' } });

test('the first launch takes the thread started ahead, which gets its data as a message and answers', async () => {
  prewarmMachineThread();
  assert.equal(machineThreadWaiting(), true, 'a thread waits for its launch');
  const host = new VmHost(config());
  await assert.rejects(host.start(), (e: Error) => /kvm|porthole-test-bzImage/i.test(e.message), 'the machine thread ran with the data and ended with an error');
  assert.equal(machineThreadWaiting(), false, 'the waiting thread was taken');
});

test('without a thread started ahead, a launch starts one as before', async () => {
  assert.equal(machineThreadWaiting(), false);
  const host = new VmHost(config());
  await assert.rejects(host.start(), (e: Error) => /kvm|porthole-test-bzImage/i.test(e.message));
});
