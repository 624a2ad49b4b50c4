// The rig's runner against a guest that never answers: it must stop at its timeout with a
// clear message, and no QEMU it started may outlive it, also when it is interrupted or killed.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { QEMU_PID_RE, processesWith, rigSkipReason, startRunner } from '../rig/runner-process';

const skip = rigSkipReason();
// The image build (first run only) and L1's boot under TCG on a loaded machine come first.
const TEST_TIMEOUT_MS = 10 * 60 * 1000;

async function gone(token: string, withinMs: number): Promise<number[]> {
  const deadline = Date.now() + withinMs;
  for (;;) {
    const left = processesWith(token);
    if (left.length === 0 || Date.now() > deadline) return left;
    await new Promise((r) => setTimeout(r, 200));
  }
}

test('a scenario that never answers ends at the runner\'s timeout and leaves no QEMU', { skip, timeout: TEST_TIMEOUT_MS }, async () => {
  const run = startRunner(['broken', '--timeout', '8', '--boot-timeout', '400']);
  const [, pid, token] = await run.waitFor(QEMU_PID_RE);
  assert.ok(processesWith(token).includes(Number(pid)), 'QEMU runs while the scenario waits');
  const { code, output } = await run.ended;
  assert.equal(code, 2, output);
  assert.match(output, /RIG-SCENARIO-START: broken/);
  assert.match(output, /rig: TIMEOUT: scenario broken gave no result within 8 s of starting; stopping QEMU/);
  assert.doesNotMatch(output, /RIG-RESULT/);
  assert.deepEqual(processesWith(token), [], 'no process with the QEMU token remains');
});

test('SIGTERM to the runner stops QEMU and exits 143', { skip, timeout: TEST_TIMEOUT_MS }, async () => {
  const run = startRunner(['broken', '--timeout', '600']);
  const [, pid, token] = await run.waitFor(QEMU_PID_RE);
  await run.waitFor(/RIG-STAGE: \/init started/);
  assert.ok(processesWith(token).includes(Number(pid)));
  run.child.kill('SIGTERM');
  const { code, output } = await run.ended;
  assert.equal(code, 143, output);
  assert.match(output, /interrupted by SIGTERM/);
  assert.deepEqual(processesWith(token), []);
});

test('a runner killed with SIGKILL takes QEMU with it (parent-death signal)', { skip, timeout: TEST_TIMEOUT_MS }, async () => {
  const run = startRunner(['broken', '--timeout', '600']);
  const [, pid, token] = await run.waitFor(QEMU_PID_RE);
  assert.ok(processesWith(token).includes(Number(pid)));
  run.child.kill('SIGKILL');
  await run.ended;
  // The kernel delivers the parent-death signal at once; allow for a loaded machine.
  assert.deepEqual(await gone(token, 30000), []);
});
