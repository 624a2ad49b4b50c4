// A VM process starts its machine thread before it has its config (machine-prewarm.ts): the first
// launch must hand that thread its data and get its answer, on any host. Where /dev/kvm is
// missing the answer is the error ending the machine; where it works, the missing kernel is.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
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

test('the VM host side (porthole run, the VM process) does not load the machine\'s device models: the machine thread does', () => {
  const code = `require(${JSON.stringify(path.join(__dirname, '..', '..', 'main', 'manager', 'vm-process-prewarm.js'))});
    require(${JSON.stringify(path.join(__dirname, '..', '..', 'main', 'cli', 'main.js'))});
    process.stdout.write(JSON.stringify(Object.keys(require.cache)));
    process.exit(0);`;
  const loaded = JSON.parse(execFileSync(process.execPath, ['-e', code], { encoding: 'utf8' })) as string[];
  const machineSide = loaded.filter((f) => /[/\\]main[/\\]vmm[/\\](platform[/\\]pc|machine[/\\]machine|devices[/\\](pci|virtio|ahci|net)[/\\])/.test(f));
  assert.deepEqual(machineSide, []);
  assert.ok(loaded.some((f) => f.endsWith(path.join('host', 'vm-host.js'))), 'the VM host itself was loaded');
});
