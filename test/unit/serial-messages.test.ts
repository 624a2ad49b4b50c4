import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  decodeLineSettings, decodeModemControl, decodeModemStatus, encodeLineSettings, encodeModemControl, encodeModemStatus,
} from '../../main/vmm/shared/serial-messages';

test('serial channel payloads round-trip and reject malformed bytes', () => {
  for (const parity of ['none', 'odd', 'even', 'mark', 'space'] as const) {
    const s = { baud: 115200, dataBits: 7 as const, parity, stopBits: 2 as const };
    assert.deepEqual(decodeLineSettings(encodeLineSettings(s)), s);
  }
  assert.equal(decodeLineSettings(encodeLineSettings({ baud: 50, dataBits: 5, parity: 'none', stopBits: 1 }))?.baud, 50);
  assert.equal(decodeLineSettings(Uint8Array.of(0, 0, 0, 0, 9, 0, 1)), null);
  assert.equal(decodeLineSettings(Uint8Array.of(0, 0, 0, 0, 8, 5, 1)), null);
  assert.equal(decodeLineSettings(Uint8Array.of(0, 0, 0, 0, 8, 0, 3)), null);
  assert.equal(decodeLineSettings(new Uint8Array(6)), null);
  const lines = { cts: true, dsr: false, ri: true, dcd: false };
  assert.deepEqual(decodeModemStatus(encodeModemStatus(lines)), lines);
  assert.equal(decodeModemStatus(new Uint8Array(2)), null);
  assert.deepEqual(decodeModemControl(encodeModemControl({ dtr: false, rts: true })), { dtr: false, rts: true });
  assert.equal(decodeModemControl(new Uint8Array(0)), null);
});
