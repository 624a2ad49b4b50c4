// Register-level replays of what Linux's xhci_hcd does with Porthole's emulated devices, as
// seen in the rig's L2 (test/rig/scenarios/usb-l2.ts): the paths that a plain enumeration
// does not take. The register writes follow drivers/usb/host/xhci-hub.c (port state kept
// "neutral": change bits and PED written as 0).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { UsbTablet } from '../../main/vmm/devices/usb/hid-tablet';
import { DATA, DB, Driver, PORTSC, trb } from '../helpers/xhci-driver';

const CC = { SUCCESS: 1, SHORT: 13 };
const T = { TRANSFER: 32, COMMAND: 33, PORT: 34 };
const PLC = 1 << 22;
const LWS = 1 << 16;

/** xhci_port_state_to_neutral: read-only and read/write-preserve bits only. */
function neutral(portsc: number): number {
  return ((portsc & ((1 << 0) | (1 << 3) | (0xf << 10) | (1 << 30))) | (portsc & ((0xf << 5) | (1 << 9) | (3 << 14) | (7 << 25)))) >>> 0;
}

function setLinkState(d: Driver, port: number, pls: number): void {
  d.w32(PORTSC(port), ((neutral(d.r32(PORTSC(port))) & ~(0xf << 5)) | (pls << 5) | LWS) >>> 0);
}

test('runtime suspend and resume of a full-speed tablet as Linux does it: Stop Endpoint (SP) on a waiting interrupt TD, U3, Resume, U0, doorbells', () => {
  const d = new Driver();
  d.start();
  const tablet = new UsbTablet();
  d.hc.attach(5, tablet);
  const slot = d.enumerate(5, 1);
  d.control(slot, [0, 9, 1, 0, 0], 0, false); // SET_CONFIGURATION 1
  assert.deepEqual(d.events().map((e) => [e.type, e.code]), [[T.TRANSFER, CC.SUCCESS]]);
  assert.equal(d.configure(slot, [[3, 7]]).code, CC.SUCCESS); // EP1 IN, interrupt
  const ring = d.ring(slot, 3);
  const waiting = ring.push(DATA, 0, 8, trb(1, (1 << 5) | (1 << 2)));
  d.w32(DB + 4 * slot, 3);
  assert.equal(d.events().length, 0, 'no report yet: the TD waits (a NAK)');

  // xhci_stop_device(suspend): Stop Endpoint with SP on every running endpoint, EP0 last.
  const stopIn = d.command(0, 0, 0, trb(15, (slot << 24) | (3 << 16) | (1 << 23)));
  assert.equal(stopIn.code, CC.SUCCESS);
  assert.equal(d.command(0, 0, 0, trb(15, (slot << 24) | (1 << 16) | (1 << 23))).code, CC.SUCCESS);
  assert.equal(d.epState(slot, 3), 3, 'Stopped');
  assert.equal(d.epDequeue(slot, 3) & ~0xf, waiting, 'the waiting TD stays on the ring, to run again');

  setLinkState(d, 5, 3);
  let sc = d.r32(PORTSC(5));
  assert.equal((sc >>> 5) & 0xf, 3, 'U3');
  assert.equal(sc & PLC, 0, 'no Port Link State Change for a suspend software asked for');
  assert.equal(d.events().length, 0);

  // ClearPortFeature(SUSPEND) on a USB 2 port: Resume, 20 ms, then U0.
  setLinkState(d, 5, 15);
  assert.equal((d.r32(PORTSC(5)) >>> 5) & 0xf, 15, 'Resume');
  setLinkState(d, 5, 0);
  sc = d.r32(PORTSC(5));
  assert.equal((sc >>> 5) & 0xf, 0, 'U0');
  assert.ok(sc & PLC, 'PLC when the port is back in U0');
  assert.deepEqual(d.events().map((e) => [e.type, e.param / 2 ** 24]), [[T.PORT, 5]]);
  d.w32(PORTSC(5), (neutral(sc) | PLC) >>> 0);
  assert.equal(d.r32(PORTSC(5)) & PLC, 0);

  // xhci_ring_device: doorbells restart the stopped endpoints; the TD completes with a report.
  d.w32(DB + 4 * slot, 1);
  d.w32(DB + 4 * slot, 3);
  assert.equal(d.epState(slot, 3), 1, 'Running again');
  tablet.move(100, 200);
  const ev = d.events();
  // The report is shorter than the 8 bytes asked for: Short Packet (ISP), the rest untransferred.
  assert.deepEqual(ev.map((e) => [e.type, e.code, e.ep, e.param]), [[T.TRANSFER, CC.SHORT, 3, waiting]]);
  const report = 8 - ev[0].length;
  assert.ok(report > 0 && report < 8, `a report of ${report} bytes`);
  const bytes = new Uint8Array(report);
  d.dma.read(DATA, bytes);
  assert.deepEqual([...bytes.subarray(1, 5)], [100, 0, 200, 0], 'X and Y, little-endian, after the buttons');
});
