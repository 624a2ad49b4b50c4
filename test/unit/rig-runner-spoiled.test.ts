// The rig runner's judgement of runs L1 itself spoiled (run again) against the scenario's own
// outcome (reported as it is).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isL1KernelPanic, l1Spoiled, type RunReport } from '../rig/runner';

function report(outcome: RunReport['outcome'], flags: Partial<Pick<RunReport, 'l1TripleFault' | 'l1KernelPanic'>> = {}): RunReport {
  return {
    scenario: 's', outcome, bootSeconds: 10, totalSeconds: 20, qemuPid: 1, token: 't', logFile: 'l', interrupted: null,
    l1TripleFault: false, l1KernelPanic: false, retried: [], ...flags,
  };
}

test('an L1 that stalls, triple-faults or panics spoils the run; the scenario\'s own pass, fail or timeout stands', () => {
  assert.equal(l1Spoiled(report({ kind: 'stall', detail: 'no heartbeat' })), 'stalled');
  assert.equal(l1Spoiled(report({ kind: 'error', detail: 'QEMU ended' }, { l1TripleFault: true })), 'triple-faulted');
  assert.equal(l1Spoiled(report({ kind: 'error', detail: 'L1 kernel panic' }, { l1KernelPanic: true })), 'kernel panicked');
  for (const kind of ['pass', 'fail', 'timeout', 'error'] as const) assert.equal(l1Spoiled(report({ kind, detail: '' })), null, kind);
});

test('only L1\'s own console line counts as its kernel panic, not an L2 panic a scenario relays', () => {
  assert.ok(isL1KernelPanic('[   28.298600] Kernel panic - not syncing: Fatal exception in interrupt'));
  assert.ok(!isL1KernelPanic('[virtio-l2] L2| [    3.1] Kernel panic - not syncing: VFS: Unable to mount root fs'));
  assert.ok(!isL1KernelPanic('L2| [    3.100000] Kernel panic - not syncing: Attempted to kill init!'));
  assert.ok(!isL1KernelPanic('[   28.298600] Kernel Offset: 0x22c00000 from 0xffffffff81000000'));
});
