// Isochronous passthrough at register level: a driver puts Isoch TRBs on an xHCI endpoint ring,
// the machine's PassthroughDevice sends them to the VM host's HostUsbPassthrough, which submits
// usbfs iso URBs on a fake host handle; the fake completes them with per-packet lengths and
// statuses, and the Transfer Events come out in TD order. (The fuzz: usb-passthrough-iso-fuzz.)
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DATA, DB, Driver, trb } from '../helpers/xhci-driver';
import { Prng } from '../helpers/prng';
import { rig } from '../helpers/usb-passthrough';
import { EPT_ISOCH_OUT, isoPassthroughRig } from '../helpers/usb-passthrough-iso';

const CC = { SUCCESS: 1, TRANSACTION: 4, TRB: 5, SHORT: 13 };
const ISOCH = 5;
const IOC = 1 << 5;
const ISP = 1 << 2;


test('isoch OUT TDs become one-packet usbfs URBs, several in flight; events carry each packet\'s outcome in order', () => {
  const { r, d, slot } = isoPassthroughRig();
  const ring = d.ring(slot, 2);
  const tds: number[] = [];
  for (let i = 0; i < 4; i++) {
    d.dma.fill(DATA + 0x200 * i, 192, 0x10 + i);
    // SIA set: "as soon as possible" (Frame ID ignored); IOC only on the last, as Linux does per URB.
    tds.push(ring.push(DATA + 0x200 * i, 0, 192, trb(ISOCH, (1 << 31) | (i === 3 ? IOC : 0))));
  }
  d.w32(DB + 4 * slot, 2);
  r.pump();
  assert.equal(r.usb.isoUrbs.length, 4, 'all four packets are on the host at once');
  assert.deepEqual(r.usb.isoUrbs.map((u) => [u.address, u.packets, u.buffer[0], u.buffer[191]]),
    [[0x01, [192], 0x10, 0x10], [0x01, [192], 0x11, 0x11], [0x01, [192], 0x12, 0x12], [0x01, [192], 0x13, 0x13]]);
  // The second packet missed its frame (-EXDEV → error): a Transaction Error on that TD (IOC or not).
  r.usb.completeIso([{ actual: 192, status: 'ok' }]);
  r.usb.completeIso([{ actual: 0, status: 'error' }]);
  r.usb.completeIso([{ actual: 192, status: 'ok' }]);
  r.pump();
  assert.deepEqual(d.events().map((e) => [e.code, e.param]), [[CC.TRANSACTION, tds[1]]]);
  r.usb.completeIso([{ actual: 192, status: 'ok' }]);
  r.pump();
  assert.deepEqual(d.events().map((e) => [e.code, e.param, e.length]), [[CC.SUCCESS, tds[3], 0]]);
  assert.equal(d.epState(slot, 2), 1, 'an isoch error does not halt the endpoint');
  assert.equal(r.host.inFlight, 0);
  assert.equal(r.device.inFlight, 0);
});

test('isoch IN: each packet\'s actual length lands in guest memory; a short packet reports its residue', () => {
  const { r, d, slot } = isoPassthroughRig();
  const ring = d.ring(slot, 3);
  d.dma.fill(DATA, 0x400, 0xcc);
  const a = ring.push(DATA, 0, 100, trb(ISOCH, (1 << 31) | IOC | ISP));
  const b = ring.push(DATA + 0x200, 0, 100, trb(ISOCH, (1 << 31) | IOC | ISP));
  d.w32(DB + 4 * slot, 3);
  r.pump();
  assert.deepEqual(r.usb.isoUrbs.map((u) => [u.address, u.packets]), [[0x81, [100]], [0x81, [100]]]);
  r.usb.completeIso([{ actual: 100, status: 'ok' }], new Uint8Array(100).fill(0x5a));
  r.usb.completeIso([{ actual: 40, status: 'ok' }], new Uint8Array(100).fill(0xa5));
  r.pump();
  assert.deepEqual(d.events().map((e) => [e.code, e.param, e.length]), [[CC.SUCCESS, a, 0], [CC.SHORT, b, 60]]);
  const got = new Uint8Array(0x300);
  d.dma.read(DATA, got);
  assert.ok(got.subarray(0, 100).every((x) => x === 0x5a));
  assert.ok(got.subarray(100, 0x200).every((x) => x === 0xcc), 'nothing past the TD buffer');
  assert.ok(got.subarray(0x200, 0x228).every((x) => x === 0xa5));
  assert.ok(got.subarray(0x228, 0x300).every((x) => x === 0xcc), 'only the 40 bytes that came');
});

test('SET_INTERFACE (how audio opens its stream) goes to the host as set-interface; an isoch TD over wMaxPacketSize × mult is a TRB Error', () => {
  const { r, d, slot } = isoPassthroughRig();
  d.control(slot, [0x01, 0x0b, 1, 1, 0], 0, false); // SET_INTERFACE(interface 1, alt 1)
  r.pump();
  assert.ok(r.usb.calls.includes('set-interface 1 1'));
  assert.equal(d.events().at(-1)?.code, CC.SUCCESS);
  const bad = d.ring(slot, 2).push(DATA, 0, 513, trb(ISOCH, (1 << 31) | IOC));
  d.w32(DB + 4 * slot, 2);
  r.pump();
  assert.deepEqual(d.events().map((e) => [e.code, e.param]), [[CC.TRB, bad]]);
  assert.equal(r.usb.isoUrbs.length, 0, 'nothing reached the host');
});

test('without usbfs (no submitIso) an isoch TD completes as a Transaction Error, and the endpoint keeps running', () => {
  const r = rig();
  r.host.take();
  const d = new Driver();
  d.start();
  d.hc.attach(2, r.device);
  const slot = d.enumerate(2, 4);
  d.configure(slot, [[2, EPT_ISOCH_OUT]]);
  d.events();
  const td = d.ring(slot, 2).push(DATA, 0, 64, trb(ISOCH, IOC));
  d.w32(DB + 4 * slot, 2);
  r.pump();
  assert.deepEqual(d.events().map((e) => [e.code, e.param]), [[CC.TRANSACTION, td]]);
  assert.equal(d.epState(slot, 2), 1);
});
