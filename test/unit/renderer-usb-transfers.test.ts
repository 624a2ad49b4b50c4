// The USB transfer list's logic (renderer/src/usb-transfers.ts): a submit and its complete
// become one row, rows stay bounded, and the device and endpoint filters choose rows.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { UsbTransferRecord } from '../../main/api/contract';
import { loadRendererModule } from '../helpers/renderer-module';

const ux = loadRendererModule<typeof import('../../renderer/src/usb-transfers')>('usb-transfers.ts');

function rec(p: Partial<UsbTransferRecord> & Pick<UsbTransferRecord, 'id' | 'event'>): UsbTransferRecord {
  return {
    atMs: 1000, port: 1, device: 'usb-storage stick.img', address: 1, endpoint: 1, direction: 'in', type: 'bulk', length: 0,
    status: p.event === 'submit' ? 'submitted' : 'ok', setup: null, data: '', ...p,
  };
}

test('a submit and its complete make one row with the bytes moved, status and latency', () => {
  const setup = { requestType: 0x80, request: 6, value: 0x100, index: 0, length: 18, text: 'GET_DESCRIPTOR device 0 (18 bytes)' };
  let rows = ux.applyTransfers([], [
    rec({ id: 1, event: 'submit', endpoint: 0, type: 'control', length: 18, setup, atMs: 1000 }),
    rec({ id: 2, event: 'submit', endpoint: 1, length: 512, atMs: 1000.5 }),
  ]);
  assert.equal(rows.length, 2);
  assert.equal(rows[0].moved, null);
  assert.equal(ux.transferLength(rows[1]), '512');
  rows = ux.applyTransfers(rows, [
    rec({ id: 1, event: 'complete', endpoint: 0, type: 'control', length: 18, atMs: 1001.25, data: '12010003' }),
    rec({ id: 2, event: 'complete', endpoint: 1, length: 13, atMs: 1002, status: 'ok' }),
    rec({ id: 9, event: 'complete', port: 5, device: 'usb-keyboard', endpoint: 1, length: 8, status: 'cancelled' }),
  ]);
  assert.equal(rows.length, 3, 'a complete without its submit is a row of its own');
  assert.deepEqual([rows[0].setup, rows[0].moved, rows[0].status, rows[0].latencyMs, rows[0].data], [setup.text, 18, 'ok', 1.25, '12010003']);
  assert.equal(ux.transferLength(rows[1]), '13 of 512');
  assert.equal(rows[2].status, 'cancelled');
  assert.equal(ux.endpointLabel(rows[0]), 'EP 0');
  assert.equal(ux.endpointLabel(rows[1]), 'EP 1 IN');
  assert.equal(ux.endpointLabel({ endpoint: 2, direction: 'out', type: 'bulk' }), 'EP 2 OUT');
  assert.equal(ux.transferTime(1002.5, 1000), '0.002500');
});

test('the list keeps the newest rows; the filters choose a device, then one of its endpoints', () => {
  const many = Array.from({ length: 30 }, (_, i) => rec({ id: i + 1, event: 'submit', port: i % 2 === 0 ? 1 : 5, endpoint: i % 3, direction: i % 3 === 2 ? 'out' : 'in', type: i % 3 === 0 ? 'control' : 'bulk' }));
  const rows = ux.applyTransfers([], many, 20);
  assert.equal(rows.length, 20);
  assert.equal(rows[0].id, 11, 'the oldest fell off');
  const choices = ux.filterChoices(rows, null);
  assert.deepEqual(choices.ports.map((p) => p.port), [1, 5]);
  assert.deepEqual(choices.endpoints, ['EP 0', 'EP 1 IN', 'EP 2 OUT']);
  const port5 = ux.filterTransfers(rows, { port: 5, endpoint: null });
  assert.ok(port5.length > 0 && port5.every((r) => r.port === 5));
  const ep = ux.filterTransfers(rows, { port: 1, endpoint: 'EP 2 OUT' });
  assert.ok(ep.length > 0 && ep.every((r) => r.port === 1 && r.endpoint === 2 && r.direction === 'out'));
  assert.deepEqual(ux.filterTransfers(rows, { port: 7, endpoint: null }), []);
});
