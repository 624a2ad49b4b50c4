import assert from 'node:assert/strict';
import { test } from 'node:test';
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
