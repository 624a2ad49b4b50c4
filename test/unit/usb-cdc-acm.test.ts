// The USB CDC-ACM serial device: descriptors as cdc_acm reads them, line coding and control
// lines, bytes both ways with backpressure, SERIAL_STATE notifications, and a fuzz.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { UsbSerialAcm, type LineCoding } from '../../main/vmm/devices/usb/cdc-acm';
import type { UsbTransfer, UsbTransferType } from '../../main/vmm/devices/usb/usb-device';
import { Prng } from '../helpers/prng';
import { enumerate, makeTransfer, RecordingPort, request, splitDescriptors, submit } from '../helpers/usb';

function configured(options: ConstructorParameters<typeof UsbSerialAcm>[0] = {}) {
  const dev = new UsbSerialAcm(options);
  dev.attach(new RecordingPort());
  const desc = enumerate(dev);
  return { dev, ...desc };
}

const bulkIn = (len: number) => makeTransfer(1, true, 'bulk', new Uint8Array(len));
const bulkOut = (bytes: number[]) => makeTransfer(2, false, 'bulk', Uint8Array.from(bytes));

test('CDC-ACM descriptors: device class 2, ACM + data interfaces, functional descriptors, endpoints', () => {
  const { device, config } = configured();
  assert.equal(device[4], 0x02, 'bDeviceClass CDC');
  const parts = splitDescriptors(config);
  assert.equal(config[2] | (config[3] << 8), config.length);
  assert.equal(config[4], 2);
  assert.deepEqual(parts.map((p) => p[1]), [2, 4, 0x24, 0x24, 0x24, 0x24, 5, 4, 5, 5]);
  assert.deepEqual([...parts[1]].slice(0, 8), [9, 4, 0, 0, 1, 2, 2, 1]);
  assert.deepEqual([...parts[2]], [5, 0x24, 0, 0x10, 0x01]);
  assert.deepEqual([...parts[5]], [5, 0x24, 6, 0, 1], 'union: control 0, data 1');
  assert.deepEqual([...parts[6]].slice(0, 4), [7, 5, 0x83, 3]);
  assert.deepEqual([...parts[7]].slice(0, 8), [9, 4, 1, 0, 2, 0x0a, 0, 0]);
  assert.deepEqual([...parts[8]], [7, 5, 0x81, 2, 64, 0, 0]);
  assert.deepEqual([...parts[9]], [7, 5, 0x02, 2, 64, 0, 0]);
  const sup = configured({ speed: 'super' });
  const sparts = splitDescriptors(sup.config);
  assert.deepEqual(sparts.map((p) => p[1]), [2, 4, 0x24, 0x24, 0x24, 0x24, 5, 0x30, 4, 5, 0x30, 5, 0x30]);
  assert.equal(sparts[9][4] | (sparts[9][5] << 8), 1024);
});

test('CDC-ACM line coding, control lines and break', () => {
  const codings: LineCoding[] = [];
  const lines: Array<{ dtr: boolean; rts: boolean }> = [];
  const breaks: number[] = [];
  const { dev } = configured({ onLineCoding: (c) => codings.push(c), onControlLines: (l) => lines.push(l), onBreak: (ms) => breaks.push(ms) });
  assert.deepEqual([...request(dev, 0xa1, 0x21, 0, 0, 7).data], [0x80, 0x25, 0, 0, 0, 0, 8], '9600 8N1');
  // 115200 baud, 2 stop bits, even parity, 7 data bits.
  assert.equal(request(dev, 0x21, 0x20, 0, 0, 7, Uint8Array.of(0x00, 0xc2, 0x01, 0x00, 2, 2, 7)).status, 'ok');
  assert.deepEqual(codings, [{ baud: 115200, stopBits: 2, parity: 2, dataBits: 7 }]);
  assert.deepEqual([...request(dev, 0xa1, 0x21, 0, 0, 7).data], [0x00, 0xc2, 0x01, 0x00, 2, 2, 7]);
  assert.equal(request(dev, 0x21, 0x20, 0, 0, 7, Uint8Array.of(0, 0, 0, 0, 0, 0, 8)).status, 'stall', 'baud 0');
  assert.equal(request(dev, 0x21, 0x20, 0, 0, 7, Uint8Array.of(1, 0, 0, 0, 3, 0, 8)).status, 'stall', 'stop bits');
  assert.equal(request(dev, 0x21, 0x20, 0, 0, 7, Uint8Array.of(1, 0, 0, 0, 0, 5, 8)).status, 'stall', 'parity');
  assert.equal(request(dev, 0x21, 0x20, 0, 0, 7, Uint8Array.of(1, 0, 0, 0, 0, 0, 9)).status, 'stall', 'data bits');
  assert.equal(request(dev, 0x21, 0x20, 0, 0, 6, new Uint8Array(6)).status, 'stall', 'short');
  assert.equal(codings.length, 1);
  assert.equal(request(dev, 0x21, 0x22, 3, 0, 0).status, 'ok');
  assert.equal(request(dev, 0x21, 0x22, 1, 0, 0).status, 'ok');
  assert.deepEqual(lines, [{ dtr: true, rts: true }, { dtr: true, rts: false }]);
  assert.deepEqual(dev.controlLines, { dtr: true, rts: false });
  assert.equal(request(dev, 0x21, 0x23, 250, 0, 0).status, 'ok');
  assert.deepEqual(breaks, [250]);
  assert.equal(request(dev, 0x21, 0x22, 3, 1, 0).status, 'stall', 'the data interface takes no requests');
  assert.equal(request(dev, 0xa1, 0x01, 0, 0, 16).status, 'stall', 'no encapsulated responses');
  dev.reset();
  enumerate(dev);
  assert.deepEqual(dev.lineCoding, { baud: 9600, stopBits: 0, parity: 0, dataBits: 8 });
  assert.deepEqual(dev.controlLines, { dtr: false, rts: false });
});

test('CDC-ACM bytes guest to host, with backpressure from the backend', () => {
  const out: number[][] = [];
  let accept = true;
  const { dev } = configured({ onOutput: (b) => { if (!accept) return false; out.push([...b]); return true; } });
  const a = submit(dev, bulkOut([0x41, 0x42]));
  assert.equal(a.transfer.status, 'ok');
  assert.equal(a.transfer.actualLength, 2);
  accept = false;
  const order: UsbTransfer[] = [];
  const b = submit(dev, bulkOut([0x43]), order);
  const c = submit(dev, bulkOut([0x44]), order);
  assert.equal(b.transfer.status, 'pending');
  dev.outputReady();
  assert.equal(b.transfer.status, 'pending', 'still refused');
  accept = true;
  dev.outputReady();
  assert.deepEqual(order, [b.transfer, c.transfer]);
  assert.deepEqual(out, [[0x41, 0x42], [0x43], [0x44]]);
});

test('CDC-ACM bytes host to guest: buffered, short packets, bounded with a space callback', () => {
  let spaceCalls = 0;
  const { dev } = configured({ rxBufferSize: 8, onReceiveSpace: () => spaceCalls++ });
  const waiting = submit(dev, bulkIn(64));
  assert.equal(waiting.transfer.status, 'pending');
  assert.equal(dev.receive(Uint8Array.of(1, 2, 3)), 3);
  assert.deepEqual([...waiting.transfer.data.subarray(0, waiting.transfer.actualLength)], [1, 2, 3]);
  assert.equal(dev.receive(Uint8Array.from({ length: 12 }, (_, i) => 10 + i)), 8, 'the buffer holds 8');
  assert.equal(dev.receiveSpace, 0);
  assert.equal(spaceCalls, 0);
  const small = submit(dev, bulkIn(5));
  assert.deepEqual([...small.transfer.data], [10, 11, 12, 13, 14]);
  assert.equal(spaceCalls, 1);
  assert.equal(dev.receive(Uint8Array.of(18, 19, 20, 21)), 4, 'wraps around the ring');
  const rest = submit(dev, bulkIn(64));
  assert.deepEqual([...rest.transfer.data.subarray(0, rest.transfer.actualLength)], [15, 16, 17, 18, 19, 20, 21]);
  assert.equal(spaceCalls, 1, 'only after the buffer refused bytes');
});

test('CDC-ACM SERIAL_STATE notifications on the interrupt endpoint, on change only', () => {
  const { dev } = configured();
  const n = submit(dev, makeTransfer(3, true, 'interrupt', new Uint8Array(16)));
  assert.equal(n.transfer.status, 'pending');
  dev.setSerialState({ dcd: true, dsr: true });
  assert.deepEqual([...n.transfer.data.subarray(0, n.transfer.actualLength)], [0xa1, 0x20, 0, 0, 0, 0, 2, 0, 3, 0]);
  dev.setSerialState({ dcd: true, dsr: true });
  const none = submit(dev, makeTransfer(3, true, 'interrupt', new Uint8Array(16)));
  assert.equal(none.transfer.status, 'pending', 'no change, no notification');
  dev.setSerialState({ ring: true });
  assert.equal(none.transfer.data[8], 8);
  dev.setSerialState({});
  assert.equal(submit(dev, makeTransfer(3, true, 'interrupt', new Uint8Array(4))).transfer.status, 'babble');
});

const TYPES: UsbTransferType[] = ['control', 'bulk', 'bulk', 'interrupt', 'isochronous'];

test('fuzz: CDC-ACM survives 10000 random sessions; every transfer completes exactly once', () => {
  const rng = new Prng(0xacacac);
  let accept = true;
  let okCount = 0;
  const statusCounts: Record<string, number> = {};
  for (let c = 0; c < 10_000; c++) {
    const dev = new UsbSerialAcm({ rxBufferSize: 1 + rng.below(64), onOutput: () => accept, onReceiveSpace: () => dev.receive(Uint8Array.of(7)) });
    dev.attach(new RecordingPort());
    if (rng.below(4) !== 0) enumerate(dev);
    const tracked: Array<{ t: UsbTransfer; n: number }> = [];
    for (let op = 0; op < 12; op++) {
      const k = rng.below(12);
      if (k < 4) {
        const requestType = rng.pick([0x21, 0xa1, 0x21, 0xa1, 0x00, 0x80, 0x01, 0x02, rng.below(256)]);
        const req = rng.pick([0x20, 0x21, 0x22, 0x23, 0x00, 0x01, 0x03, 0x06, 0x09, rng.below(256)]);
        const length = rng.pick([0, 7, 7, 2, rng.below(300)]);
        const dirIn = (requestType & 0x80) !== 0;
        const data = Uint8Array.from({ length: Math.min(length, 512) }, () => rng.below(256));
        const setup = { requestType, request: req, value: rng.pick([0, 1, 3, 0x200, rng.below(0x10000)]), index: rng.pick([0, 0, 1, rng.below(0x10000)]), length };
        const s = { t: makeTransfer(0, dirIn, 'control', data, setup), n: 0 };
        tracked.push(s);
        dev.submit(s.t, () => s.n++);
      } else if (k < 8) {
        // Mostly the endpoints that exist, as the controller would address them; sometimes anything.
        const [ep, dirIn, type] = rng.below(4) !== 0
          ? rng.pick<[number, boolean, UsbTransferType]>([[1, true, 'bulk'], [2, false, 'bulk'], [3, true, 'interrupt']])
          : [rng.below(17), rng.below(2) === 0, rng.pick(TYPES)];
        const s = { t: makeTransfer(ep, dirIn, type, new Uint8Array(rng.below(80))), n: 0 };
        tracked.push(s);
        dev.submit(s.t, () => s.n++);
      } else if (k === 8) {
        dev.receive(Uint8Array.from({ length: rng.below(100) }, () => rng.below(256)));
      } else if (k === 9) {
        accept = rng.below(2) === 0;
        dev.outputReady();
        dev.setSerialState({ dcd: rng.below(2) === 0, ring: rng.below(2) === 0 });
      } else if (k === 10) {
        const v = tracked[rng.below(tracked.length + 1)];
        if (v) dev.cancel(v.t);
      } else {
        dev.reset();
        if (rng.below(2) === 0) enumerate(dev);
      }
      for (const s of tracked) assert.ok(s.n <= 1, 'completed twice');
    }
    for (const s of tracked) {
      if (s.n === 0) {
        assert.equal(s.t.type === 'bulk' || s.t.type === 'interrupt', true);
        assert.ok([0x81, 0x02, 0x83].includes(s.t.endpoint | (s.t.in ? 0x80 : 0)), 'only a data or notification endpoint waits');
        dev.cancel(s.t);
      }
      assert.equal(s.n, 1);
      if (s.t.status === "ok") okCount++;
      statusCounts[s.t.status] = (statusCounts[s.t.status] ?? 0) + 1;
    }
    dev.detach();
  }
  assert.ok(okCount > 5_000 && (statusCounts.cancelled ?? 0) > 1_000, JSON.stringify(statusCounts));
});
