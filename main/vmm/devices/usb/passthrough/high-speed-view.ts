// A SuperSpeed host device shown on a USB 2 port (allowed only without isochronous endpoints
// and streams: host/usb-speed-compat.ts). The guest enumerates it at high speed, so the
// descriptors it reads are made those of a high-speed device:
// - the device descriptor: bcdUSB 3.x becomes 2.10, and bMaxPacketSize0 9 (SuperSpeed's
//   2^9 = 512) becomes 64, which a high-speed host requires (Linux refuses 9 there);
// - configuration descriptors: bulk wMaxPacketSize becomes 512, the only high-speed value.
// SuperSpeed endpoint companions stay: a high-speed host skips descriptors it does not use.
// Nothing moves or changes length, so a partial read sees the same bytes as a full one.
// Runs on the machine thread, on the bytes the VM host sent back; every index is checked
// against the length that arrived.
import type { UsbSetup } from '../usb-device';

const GET_DESCRIPTOR = 6;
const DT_DEVICE = 1;
const DT_CONFIG = 2;
const DT_ENDPOINT = 5;
const XFER_BULK = 2;

/** Rewrites, in place, the first `length` bytes of a GET_DESCRIPTOR answer for a high-speed view. */
export function patchDescriptorForHighSpeed(setup: UsbSetup, data: Uint8Array, length: number): void {
  if (setup.requestType !== 0x80 || setup.request !== GET_DESCRIPTOR) return;
  const n = Math.min(length, data.length);
  const type = setup.value >>> 8;
  if (type === DT_DEVICE) {
    if (n >= 4 && (data[2] | (data[3] << 8)) >= 0x0300) {
      data[2] = 0x10;
      data[3] = 0x02;
    }
    if (n >= 8 && data[7] === 9) data[7] = 64;
    return;
  }
  if (type !== DT_CONFIG) return;
  for (let at = 0; at + 2 <= n;) {
    const len = data[at];
    if (len < 2) return;
    if (data[at + 1] === DT_ENDPOINT && len >= 7 && at + 6 <= n && (data[at + 3] & 3) === XFER_BULK) {
      data[at + 4] = 0x00;
      data[at + 5] = 0x02;
    }
    at += len;
  }
}
