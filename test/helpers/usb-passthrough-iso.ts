// An xHCI driver with a passthrough device on port 2 over a FakeIsoHandle, with an isoch OUT
// (DCI 2) and an isoch IN (DCI 3) endpoint configured: the isochronous passthrough tests' rig.
import assert from 'node:assert/strict';
import { Driver } from './xhci-driver';
import { FakeIsoHandle, rig } from './usb-passthrough';

export const EPT_ISOCH_OUT = 1;
export const EPT_ISOCH_IN = 5;

export function isoPassthroughRig() {
  const r = rig({ handle: new FakeIsoHandle() });
  r.host.take();
  const d = new Driver();
  d.start();
  d.hc.attach(2, r.device);
  const slot = d.enumerate(2, 4);
  // EP1 OUT isoch (DCI 2), EP1 IN isoch (DCI 3); the helper gives wMaxPacketSize 512, burst 0, mult 0.
  assert.equal(d.configure(slot, [[2, EPT_ISOCH_OUT], [3, EPT_ISOCH_IN]]).code, 1);
  d.events();
  return { r, d, slot };
}
