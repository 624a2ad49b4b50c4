// Fuzz of isochronous passthrough at register level (npm run fuzz runs it with more cases): hostile
// Isoch TDs (wrong TRB types, sizes over wMaxPacketSize, bad buffer pointers, random flags) with the
// host completing URBs at random never throw, never hand the host an oversized packet, and leave
// nothing in flight once the device leaves.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DATA, DB, trb } from '../helpers/xhci-driver';
import { Prng } from '../helpers/prng';
import { isoPassthroughRig } from '../helpers/usb-passthrough-iso';

const ISOCH = 5;
const IOC = 1 << 5;
const ISP = 1 << 2;

test('fuzz: hostile Isoch TDs never crash, never reach the host oversized, and every URB that completes gives one outcome', () => {
  const cases = 60 * Math.max(1, Number(process.env.PORTHOLE_FUZZ_SCALE ?? 1));
  const rng = new Prng(0x150c);
  for (let c = 0; c < cases; c++) {
    const { r, d, slot } = isoPassthroughRig();
    const dci = 2 + rng.below(2);
    const ring = d.ring(slot, dci);
    for (let i = 0; i < 1 + rng.below(12); i++) {
      const type = rng.pick([ISOCH, ISOCH, ISOCH, 1, 7, 0, 63]);
      const length = rng.pick([0, 1, 192, 512, 513, 0x1ffff, rng.below(0x20000)]);
      const bits = rng.below(0x10000) << 16 & ~(0x3f << 10) | rng.pick([0, IOC, ISP, 1 << 4, 1 << 6, 1 << 9]);
      ring.push(rng.pick([DATA, 0, 0xfffff000, DATA + 0x3ff00]), rng.pick([0, 0, 1, 0xffffffff]), length | rng.below(0x400) << 22, trb(type, bits));
    }
    d.w32(DB + 4 * slot, dci);
    for (let i = 0; i < 10; i++) {
      r.pump();
      for (const u of r.usb.isoUrbs) {
        assert.ok(u.buffer.length <= 512, `case ${c}: a ${u.buffer.length}-byte packet reached the host`);
        assert.deepEqual(u.packets, [u.buffer.length]);
      }
      if (r.usb.isoUrbs.length > 0) {
        const n = r.usb.isoUrbs[0].buffer.length;
        r.usb.completeIso([{ actual: rng.below(n + 20), status: rng.pick(['ok', 'error', 'babble'] as const) }], undefined, rng.pick(['ok', 'ok', 'no-device'] as const));
      }
      if (rng.below(5) === 0) d.w32(DB + 4 * slot, dci);
      d.events();
    }
    r.device.detach();
    r.pump();
    assert.equal(r.device.inFlight, 0);
  }
});
