import assert from 'node:assert/strict';
import { test } from 'node:test';
import { flatConfig, kvmSkipReason, runVm } from '../helpers/vm';

const skip = kvmSkipReason() ?? false;

// test/guests/smp.asm: the BSP sends INIT, SIPI, SIPI through its in-kernel LAPIC; each
// AP prints its APIC id (an I/O exit the machine thread handles for it), counts itself
// with a locked increment and parks. The BSP prints what the APs counted.
for (const cpus of [1, 2, 4]) {
  test(`smp guest with ${cpus} vCPU(s): every AP starts through INIT/SIPI and its exits reach the machine thread`, { skip }, async () => {
    const r = await runVm(flatConfig('smp', { cpus }), { timeoutMs: 60000 });
    const out = r.output[4];
    assert.deepEqual(r.end, { reason: 'poweroff', exitCode: 1 }, out);
    const m = /^smp: start\naps: ([0-9a-z]*)\ncpus: (\d+)\napic ids:((?: \d+)*)\n$/.exec(out);
    assert.ok(m, `unexpected guest output:\n${out}`);
    assert.equal(Number(m[2]), cpus, 'CPUs counted by the guest');
    const expectedIds = Array.from({ length: cpus }, (_, i) => i);
    assert.deepEqual(m[3].trim().split(' ').filter(Boolean).map(Number), expectedIds, 'APIC ids marked by each CPU');
    assert.deepEqual([...m[1]].map((c) => parseInt(c, 36)).sort((a, b) => a - b), expectedIds.slice(1), 'ids the APs printed');
    // Each AP made exactly one I/O exit (its id), handled through the AP mailbox.
    assert.equal(r.stats.apExits, cpus - 1);
  });
}
