// The rig scenarios fast enough for CI (ci: true in test/rig/scenarios.ts): each boots the
// L1 workstation under QEMU TCG and must end with RIG-RESULT: PASS. The others run behind
// npm run test:rig. The runner may run a scenario twice (an L1 triple fault, stall or kernel panic).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SCENARIOS } from '../rig/scenarios';
import { processesWith, QEMU_PID_RE, rigSkipReason, startRunner } from '../rig/runner-process';

const skip = rigSkipReason();

for (const s of SCENARIOS.filter((x) => x.ci && x.expect === 'pass')) {
  test(`rig scenario ${s.name}: ${s.description}`, { skip, timeout: (2 * (s.bootTimeoutSec + s.timeoutSec) + 300) * 1000 }, async () => {
    const run = startRunner([s.name]);
    const { code, output } = await run.ended;
    // The result and the runner's own lines first: a report that shows only the start of a
    // long message still names the cause.
    const verdict = output.split('\n').filter((l) => /RIG-RESULT|rig: (ok|FAIL) /.test(l)).join('\n');
    assert.equal(code, 0, `runner exit ${code}\n${verdict}\noutput:\n${output.slice(-6000)}`);
    assert.match(output, /RIG-RESULT: PASS /);
    const token = QEMU_PID_RE.exec(output)?.[2];
    assert.ok(token);
    assert.deepEqual(processesWith(token), []);
  });
}
