// Fuzz of host USB passthrough's records and transfers (npm run fuzz runs it with more cases):
// malformed and hostile records from either side never throw, never write outside a transfer's
// buffer, and every transfer completes exactly once.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { UsbTransfer } from '../../main/vmm/devices/usb/usb-device';
import { encodeData, PASSTHROUGH_KIND } from '../../main/vmm/shared/usb-passthrough-messages';
import { Prng } from '../helpers/prng';
import { FakeDirectUrbs, rig, setupOf, transfer } from '../helpers/usb-passthrough';

test('fuzz: malformed and hostile records never throw, never write outside a buffer, and every transfer completes once', () => {
  const cases = 300 * Math.max(1, Number(process.env.PORTHOLE_FUZZ_SCALE ?? 1));
  const rng = new Prng(0x5eed);
  for (let c = 0; c < cases; c++) {
    const r = rig();
    r.host.take();
    const transfers: { t: UsbTransfer; count: number; guard: Uint8Array }[] = [];
    for (let i = 0; i < 4; i++) {
      const backing = new Uint8Array(96);
      const data = backing.subarray(16, 16 + rng.below(64));
      const t = transfer(rng.pick(['bulk', 'interrupt', 'control'] as const), rng.below(16), rng.below(2) === 1, data,
        rng.below(2) === 1 ? setupOf(rng.below(256), rng.below(256), rng.below(65536), rng.below(65536), data.length) : null);
      const entry = { t, count: 0, guard: backing };
      r.device.submit(t, () => { entry.count++; });
      transfers.push(entry);
    }
    r.pump();
    for (let i = 0; i < 20; i++) {
      const kind = 0x100 + rng.below(7);
      const bytes = new Uint8Array(rng.below(40)).map(() => rng.below(256));
      if (rng.below(2) === 1 && bytes.length >= 8) {
        new DataView(bytes.buffer).setUint32(0, 7, true);
        new DataView(bytes.buffer).setUint32(4, r.device.instance, true);
      }
      r.router.handle(kind, bytes);
      if (rng.below(3) === 0) {
        r.router.handle(PASSTHROUGH_KIND.DATA, encodeData({ handle: 7, instance: r.device.instance, id: rng.below(6), offset: rng.below(100), bytes: new Uint8Array(rng.below(80)).fill(0xee) }));
      }
      if (rng.below(4) === 0 && r.usb.urbs.length > 0) r.usb.complete(rng.pick(['ok', 'stall', 'babble', 'error', 'no-device'] as const), undefined, rng.below(200));
      if (rng.below(8) === 0) r.device.cancel(rng.pick(transfers).t);
      if (rng.below(10) === 0) r.device.reset();
      r.pump();
    }
    r.device.detach();
    r.pump();
    for (const e of transfers) {
      assert.equal(e.count, 1, `case ${c}: a transfer completed ${e.count} times`);
      assert.ok(e.t.actualLength <= e.t.data.length);
      assert.ok(e.guard.subarray(0, 16).every((b) => b === 0) && e.guard.subarray(16 + e.t.data.length).every((b) => b === 0), `case ${c}: bytes outside the buffer changed`);
    }
  }
});


test('fuzz, direct URBs: hostile usbfs results and records, resets and cancels never throw, stay inside buffers, complete each transfer once', () => {
  const cases = 300 * Math.max(1, Number(process.env.PORTHOLE_FUZZ_SCALE ?? 1));
  const rng = new Prng(0xd1ec7);
  for (let c = 0; c < cases; c++) {
    const urbs = new FakeDirectUrbs();
    const r = rig({ direct: urbs });
    r.host.take();
    const transfers: { t: UsbTransfer; count: number; guard: Uint8Array }[] = [];
    const add = () => {
      const backing = new Uint8Array(96);
      const data = backing.subarray(16, 16 + rng.below(64));
      const state = rng.below(6) === 0;
      const t = transfer(state ? 'control' : rng.pick(['bulk', 'interrupt', 'control'] as const), rng.below(16), rng.below(2) === 1, data,
        state ? setupOf(rng.pick([0x00, 0x01, 0x02]), rng.pick([0x09, 0x0b, 0x01]), rng.below(2), rng.below(256), 0)
          : setupOf(rng.below(256), rng.below(256), rng.below(65536), rng.below(65536), rng.below(2) === 1 ? data.length : rng.below(65536)));
      const entry = { t, count: 0, guard: backing };
      r.device.submit(t, () => { entry.count++; });
      transfers.push(entry);
    };
    for (let i = 0; i < 4; i++) add();
    for (let i = 0; i < 20; i++) {
      if (rng.below(3) === 0) add();
      const kind = 0x100 + rng.below(8);
      const bytes = new Uint8Array(rng.below(40)).map(() => rng.below(256));
      if (rng.below(2) === 1 && bytes.length >= 8) {
        new DataView(bytes.buffer).setUint32(0, 7, true);
        new DataView(bytes.buffer).setUint32(4, r.device.instance, true);
      }
      r.router.handle(kind, bytes);
      for (const u of urbs.urbs) {
        if (u.result !== null || rng.below(2) === 0) continue;
        const room = u.req.data.length - (u.req.type === 'control' ? 8 : 0);
        u.result = {
          status: rng.pick(['ok', 'stall', 'babble', 'error', 'no-device', 'cancelled'] as const),
          actual: rng.below(2) === 0 ? rng.below(room + 1) : rng.below(1 << 20) - 100,
          bytes: new Uint8Array(rng.below(room + 1)).fill(0xee),
        };
      }
      if (rng.below(2) === 0) r.kick();
      if (rng.below(4) === 0 && r.usb.urbs.length > 0) r.usb.complete(rng.pick(['ok', 'stall', 'error'] as const), undefined, rng.below(200));
      if (rng.below(4) === 0) r.usb.deferred.splice(0).forEach((f) => f());
      if (rng.below(8) === 0) r.device.cancel(rng.pick(transfers).t);
      if (rng.below(10) === 0) r.device.reset();
      if (rng.below(10) === 0) r.usb.deferCalls = !r.usb.deferCalls;
      if (rng.below(12) === 0 && r.timers.length > 0) (r.timers.shift() as () => void)();
      r.pump();
    }
    r.device.detach();
    r.pump();
    assert.equal(urbs.closed, true);
    for (const e of transfers) {
      assert.equal(e.count, 1, `case ${c}: a transfer completed ${e.count} times`);
      assert.ok(e.t.actualLength >= 0 && e.t.actualLength <= e.t.data.length);
      assert.ok(e.guard.subarray(0, 16).every((b) => b === 0) && e.guard.subarray(16 + e.t.data.length).every((b) => b === 0), `case ${c}: bytes outside the buffer changed`);
    }
  }
});
