// rig-tcg: multi (SeaBIOS boots: single-threaded TCG re-enters its interrupt handlers; test/rig/README.md)
// SeaBIOS (a client we did not write) probes all four COM ports the way it does on
// real hardware and, with COM1 connected, runs its serial console (sercon) on our UART.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import { defaultConfig } from '../../main/vmm/config';
import { VmHost } from '../../main/vmm/host/vm-host';
import { waitFor } from '../helpers/uart';
import { kvmSkipReason } from '../helpers/vm';

const SEABIOS = '/usr/share/seabios/bios-256k.bin';
const skip = kvmSkipReason() ?? (fs.existsSync(SEABIOS) ? false : `${SEABIOS} is not installed (npm run fixtures)`);

test('SeaBIOS finds four serial ports and prints its banner through the COM1 serial console', { skip }, async () => {
  const config = { ...defaultConfig(), serial: [{ kind: 'pty' as const }, { kind: 'none' as const }, { kind: 'none' as const }, { kind: 'none' as const }] };
  const host = new VmHost(config);
  const output = ['', '', '', '', ''];
  host.on('output', (ring, data) => { output[ring] += Buffer.from(data).toString('latin1'); });
  await host.start();
  try {
    await waitFor(() => /Booting from /.test(output[0]), () => `SeaBIOS on COM1; got ${JSON.stringify(output[0])}; its log: ${output[4].slice(-500)}`, 120000);
    assert.match(output[4], /Found 4 serial ports/, 'SeaBIOS detected COM1..COM4 (IER write/read-back and IIR THRE probing)');
    assert.match(output[0], /SeaBIOS \(version [^)]+\)\r\n/, 'its screen output went out on COM1 unchanged, CR LF included');
  } finally {
    await host.stop();
  }
});
