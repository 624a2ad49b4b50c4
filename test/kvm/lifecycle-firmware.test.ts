// rig-tcg: multi (SeaBIOS boots: single-threaded TCG re-enters its interrupt handlers; test/rig/README.md)
// The i8042 and port 0x92 as a client we did not write uses them: Debian's SeaBIOS
// probes the controller, resets and configures the PS/2 keyboard, and toggles A20
// through port 0x92 on every switch between its 16- and 32-bit code.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import { defaultConfig } from '../../main/vmm/config';
import { kvmSkipReason, runVm } from '../helpers/vm';

const SEABIOS = '/usr/share/seabios/bios-256k.bin';
const skip = kvmSkipReason() ?? (fs.existsSync(SEABIOS) ? false : `${SEABIOS} is missing (run scripts/fixtures.sh)`);
const DEBUGCON = 4;

test('SeaBIOS boot: the i8042 passes its probe and the PS/2 keyboard initializes without timeouts', { skip }, async () => {
  const r = await runVm({ ...defaultConfig(), boot: { kind: 'firmware' } },
    { until: /No bootable device|Booting from/, untilRing: DEBUGCON, timeoutMs: 120000 });
  const log = r.output[DEBUGCON];
  assert.equal(r.end.reason, 'stopped', `${JSON.stringify(r.end)}\n${log}`);
  // ps2port.c: flush, self test 0x55, keyboard test 0x00, reset FA AA, F5, F0 02, F4 all ACKed.
  assert.match(log, /PS2 keyboard initialized/, log);
  assert.doesNotMatch(log, /i8042 .*failed|ps2 command .* failed|self test failed|keyboard test failed/, log);
  assert.doesNotMatch(log, /WARNING - Timeout/, log);
  const device = (name: string) => r.stats.devices.find((d) => d.name === name);
  assert.ok((device('i8042 (0x64)')?.writes ?? 0) > 0, 'SeaBIOS sent controller commands');
  assert.ok((device('port92')?.reads ?? 0) > 0, 'SeaBIOS used port 0x92 for A20');
});
