import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { StatsSample } from '../../main/vmm/shared/stats';
import { flatConfig, kvmSkipReason, runVm } from '../helpers/vm';

const skip = kvmSkipReason() ?? false;

test('a flat guest writes to the debug console and exits through isa-debug-exit', { skip }, async () => {
  const r = await runVm(flatConfig('hello'));
  assert.deepEqual(r.end, { reason: 'poweroff', exitCode: 0x21 });
  assert.equal(r.output[4], 'hello from the guest\n');
  assert.equal(r.stats.exits.io, 22);
  assert.deepEqual(r.stats.devices.find((d) => d.name === 'debugcon'), { name: 'debugcon', reads: 0, writes: 21 });
});

test('stopping a VM whose APs sit idle in KVM_RUN returns promptly', { skip }, async () => {
  const r = await runVm(flatConfig('hello', { cpus: 4 }));
  assert.equal(r.end.reason, 'poweroff');
});

test('the statistics registry counts exits by reason and accesses by device, as the VM host samples it', { skip }, async () => {
  let last: StatsSample | undefined;
  const r = await runVm(flatConfig('hello'), { onStart: (h) => h.on('stats', (s) => { last = s; }) });
  assert.equal(r.end.reason, 'poweroff');
  const total = (group: string, name: string) => last?.counters.find((c) => c.group === group && c.name === name)?.total;
  // The final sample, taken when the VM ended: the same counts as the machine's own stats.
  assert.equal(total('exits', 'io'), 22);
  assert.equal(total('debugcon', 'pio-writes'), 21);
  assert.equal(total('debug-exit', 'pio-writes'), 1);
  assert.equal(total('debugcon', 'dropped-bytes'), 0);
  assert.equal(total('COM1', 'tx-bytes'), 0);
});
