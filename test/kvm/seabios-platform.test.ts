// The platform registers firmware and OSes use to end or restart a machine: ACPI S5
// through the PIIX4 PM1a control register and the PIIX reset control register (0xcf9).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { flatConfig, kvmSkipReason, runVm } from '../helpers/vm';

const skip = kvmSkipReason() ?? false;
const DEBUGCON = 4;

test('a guest writing SLP_TYP=S5 | SLP_EN to PM1a_CNT powers the VM off with exit code 0', { skip }, async () => {
  const r = await runVm(flatConfig('acpi-s5'));
  assert.deepEqual(r.end, { reason: 'poweroff', exitCode: 0 });
  assert.equal(r.output[DEBUGCON], 's5 guest\n');
  assert.ok(r.stats.devices.some((d) => d.name === 'acpi-pm' && d.writes === 1), JSON.stringify(r.stats.devices));
});

/** Runs a flat guest that prints "banner" and resets itself, until the banner shows twice; its VM log lines. */
async function resetsAndRunsAgain(guest: string): Promise<string[]> {
  const logs: string[] = [];
  const r = await runVm(flatConfig(guest), {
    until: /banner[\s\S]*banner/,
    untilRing: DEBUGCON,
    onStart: (host) => host.on('log', (line) => logs.push(line)),
  });
  // Stopping can overtake the next reset: either way the VM ends, not on an error.
  assert.ok(r.end.reason === 'stopped' || r.end.reason === 'reset', JSON.stringify(r.end));
  assert.match(r.output[DEBUGCON], /^banner\nbanner\n/);
  assert.ok(logs.includes('guest reset (a reset register (i8042, port 0x92 or 0xcf9))'), logs.join('\n'));
  return logs;
}

test('a guest writing 0x06 to 0xcf9 resets: the machine is rebuilt and runs again from the start', { skip }, async () => {
  await resetsAndRunsAgain('acpi-reset');
});

test('a reset byte to 0xcf9 followed by a halt with interrupts off still resets: KVM coalesces the write and no exit follows, so the VM host\'s look at the ring applies it', { skip }, async () => {
  const logs = await resetsAndRunsAgain('reset-cf9-halt');
  // The write really went through the ring (without coalescing it would exit at once).
  assert.ok(!logs.some((l) => l.includes('coalesced PIO refused')), logs.join('\n'));
});
