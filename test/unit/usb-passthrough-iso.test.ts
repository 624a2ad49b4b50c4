// Isochronous passthrough at register level: a driver puts Isoch TRBs on an xHCI endpoint ring,
// the machine's PassthroughDevice sends them to the VM host's HostUsbPassthrough, which submits
// usbfs iso URBs on a fake host handle; the fake completes them with per-packet lengths and
// statuses, and the Transfer Events come out in TD order. (The fuzz: usb-passthrough-iso-fuzz.)
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DATA, DB, Driver, trb } from '../helpers/xhci-driver';
import { Prng } from '../helpers/prng';
import { rig } from '../helpers/usb-passthrough';
import { ISO_OUT_AHEAD } from '../../main/vmm/host/usb-passthrough';
import { EPT_ISOCH_OUT, isoPassthroughRig } from '../helpers/usb-passthrough-iso';

const CC = { SUCCESS: 1, TRANSACTION: 4, TRB: 5, SHORT: 13 };
const ISOCH = 5;
const IOC = 1 << 5;
const ISP = 1 << 2;


/** Lets the VM host's end-of-drain flush run (isoch OUT TDs that came together share one URB). */
const drained = () => new Promise<void>((resolve) => setImmediate(resolve));

test('isoch OUT TDs that arrive together go out as one multi-packet usbfs URB and complete to the guest before the device takes them', async () => {
  const { r, d, slot } = isoPassthroughRig();
  const ring = d.ring(slot, 2);
  const tds: number[] = [];
  for (let i = 0; i < 4; i++) {
    d.dma.fill(DATA + 0x200 * i, 192, 0x10 + i);
    // SIA set: "as soon as possible" (Frame ID ignored); IOC on each TD, as Linux queues them.
    tds.push(ring.push(DATA + 0x200 * i, 0, 192, trb(ISOCH, (1 << 31) | IOC)));
  }
  d.w32(DB + 4 * slot, 2);
  r.pump();
  await drained();
  r.pump();
  assert.equal(r.usb.isoUrbs.length, 1, 'one URB for the four packets');
  const urb = r.usb.isoUrbs[0];
  assert.deepEqual([urb.address, urb.packets], [0x01, [192, 192, 192, 192]]);
  assert.deepEqual([0, 191, 192, 383, 576, 767].map((i) => urb.buffer[i]), [0x10, 0x10, 0x11, 0x11, 0x13, 0x13]);
  // The guest does not wait for the device's frames: its TDs complete while the URB is on the host.
  assert.deepEqual(d.events().map((e) => [e.code, e.param]), tds.map((td) => [CC.SUCCESS, td]));
  assert.equal(r.device.inFlight, 0);
  // The device's late answer (one packet missed its frame) changes nothing for the guest.
  r.usb.completeIso([{ actual: 192, status: 'ok' }, { actual: 0, status: 'error' }, { actual: 192, status: 'ok' }, { actual: 192, status: 'ok' }]);
  r.pump();
  assert.deepEqual(d.events(), []);
  assert.equal(r.host.inFlight, 0);
  assert.equal(d.epState(slot, 2), 1, 'running');
});

test(`isoch OUT: at most ${ISO_OUT_AHEAD} packets complete ahead of the device; the rest complete as it takes them, with its statuses`, async () => {
  const { r, d, slot } = isoPassthroughRig();
  const ring = d.ring(slot, 2);
  const tds: number[] = [];
  const n = ISO_OUT_AHEAD + 4;
  for (let i = 0; i < n; i++) tds.push(ring.push(DATA + 0x10 * i, 0, 16, trb(ISOCH, (1 << 31) | IOC)));
  d.w32(DB + 4 * slot, 2);
  r.pump();
  await drained();
  r.pump();
  assert.deepEqual(r.usb.isoUrbs.map((u) => u.packets.length), [n], 'one URB');
  assert.deepEqual(d.events().map((e) => e.param), tds.slice(0, ISO_OUT_AHEAD), 'only the first ones ahead of the device');
  assert.equal(r.host.inFlight, 4);
  const packets = tds.map((_, i) => ({ actual: i === ISO_OUT_AHEAD + 1 ? 0 : 16, status: (i === ISO_OUT_AHEAD + 1 ? 'error' : 'ok') as 'ok' | 'error' }));
  r.usb.completeIso(packets);
  r.pump();
  assert.deepEqual(d.events().map((e) => [e.code, e.param]), tds.slice(ISO_OUT_AHEAD).map((td, i) => [i === 1 ? CC.TRANSACTION : CC.SUCCESS, td]),
    'the held TDs complete with what the device said, in order');
  assert.equal(r.host.inFlight, 0);
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
