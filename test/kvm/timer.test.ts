import assert from 'node:assert/strict';
import { test } from 'node:test';
import { flatConfig, kvmSkipReason, runVm } from '../helpers/vm';

const skip = kvmSkipReason() ?? false;

// test/guests/timer.asm: periodic LAPIC timer, real-mode IVT handler with a 16-bit iret,
// the first ticks polled, the rest awaited with hlt; TSC read before, during and after.
test('the LAPIC timer interrupts a real-mode guest (also out of hlt) and the TSC advances', { skip }, async () => {
  const r = await runVm(flatConfig('timer'), { timeoutMs: 60000 });
  const out = r.output[4];
  assert.deepEqual(r.end, { reason: 'poweroff', exitCode: 1 }, out);
  const irqs = /timer irqs: (\d+)\n/.exec(out);
  assert.ok(irqs, `no interrupt count in:\n${out}`);
  assert.ok(Number(irqs[1]) >= 10, `only ${irqs[1]} timer interrupts arrived (the guest waits for 10)`);
  const tsc = /tsc: ([0-9a-f]{16}) ([0-9a-f]{16})\n/.exec(out);
  assert.ok(tsc, `no TSC readings in:\n${out}`);
  assert.ok(BigInt(`0x${tsc[2]}`) > BigInt(`0x${tsc[1]}`), `the TSC did not advance: ${tsc[1]} -> ${tsc[2]}`);
  const between = /tsc first to last tick: ([0-9a-f]{8})\n/.exec(out);
  assert.ok(between, `no per-tick TSC in:\n${out}`);
  assert.ok(parseInt(between[1], 16) > 0, 'the TSC did not advance between the first and last tick');
});
