// Whether a SuperSpeed host device may be shown to the guest on a USB 2 port, at high speed:
// only if it has no isochronous endpoints and no bulk streams (QEMU's usb-host has the same
// rule). At high speed an isochronous endpoint's bandwidth (bursts, Mult) cannot be described,
// and streams do not exist below SuperSpeed, so a guest driver would ask for what the device
// cannot give. The facts come from the device's raw descriptors, which sysfs keeps
// (`descriptors`: the device descriptor, then every configuration's full descriptor set), so
// nothing needs to open the device.
import fs from 'node:fs';
import path from 'node:path';
import { SYSFS_USB_DEVICES } from './usb-inventory';

const DT_CONFIG = 2;
const DT_INTERFACE = 4;
const DT_ENDPOINT = 5;
const DT_SS_ENDPOINT_COMPANION = 0x30;
const XFER_ISOC = 1;
const XFER_BULK = 2;

export interface DescribedEndpoint {
  address: number;
  /** bmAttributes bits 1:0: 0 control, 1 isochronous, 2 bulk, 3 interrupt. */
  transfer: number;
  configuration: number;
  interface: number;
  alternate: number;
  /** From the SuperSpeed endpoint companion of a bulk endpoint: 2^maxStreams streams (0: none). */
  maxStreams: number;
}

/**
 * Every endpoint in `raw` (a device descriptor followed by configuration descriptor sets, as
 * sysfs gives them). Throws with a sentence if the bytes are not a descriptor chain: a
 * descriptor shorter than 2 bytes or running past the end.
 */
export function endpointsOf(raw: Uint8Array): DescribedEndpoint[] {
  const out: DescribedEndpoint[] = [];
  let configuration = 0;
  let itf = 0;
  let alternate = 0;
  let last: DescribedEndpoint | null = null;
  for (let at = 0; at < raw.length;) {
    const length = raw[at];
    if (length < 2 || at + length > raw.length) {
      throw new Error(`its descriptors are malformed (a ${length}-byte descriptor at byte ${at} of ${raw.length})`);
    }
    const type = raw[at + 1];
    if (type === DT_CONFIG && length >= 9) {
      configuration = raw[at + 5];
      last = null;
    } else if (type === DT_INTERFACE && length >= 9) {
      itf = raw[at + 2];
      alternate = raw[at + 3];
      last = null;
    } else if (type === DT_ENDPOINT && length >= 7) {
      last = { address: raw[at + 2], transfer: raw[at + 3] & 3, configuration, interface: itf, alternate, maxStreams: 0 };
      out.push(last);
    } else if (type === DT_SS_ENDPOINT_COMPANION && length >= 6 && last !== null) {
      // bmAttributes: MaxStreams in bits 4:0 for a bulk endpoint (Mult for isochronous ones).
      if (last.transfer === XFER_BULK) last.maxStreams = raw[at + 3] & 0x1f;
      last = null;
    }
    at += length;
  }
  return out;
}

function where(e: DescribedEndpoint): string {
  return `configuration ${e.configuration}, interface ${e.interface}, alternate setting ${e.alternate}`;
}

const hex = (n: number) => `0x${n.toString(16).padStart(2, '0')}`;

/**
 * Null if a SuperSpeed device with these descriptors may go on a USB 2 port (at high speed),
 * else why not, as a clause: "it has isochronous endpoint 0x81 (configuration 1, ...)".
 */
export function usb2RefusalOf(raw: Uint8Array): string | null {
  let endpoints: DescribedEndpoint[];
  try {
    endpoints = endpointsOf(raw);
  } catch (e) {
    return (e as Error).message;
  }
  const iso = endpoints.find((e) => e.transfer === XFER_ISOC);
  if (iso) return `it has isochronous endpoint ${hex(iso.address)} (${where(iso)})`;
  const streams = endpoints.find((e) => e.maxStreams > 0);
  if (streams) return `its bulk endpoint ${hex(streams.address)} (${where(streams)}) has streams (MaxStreams ${streams.maxStreams})`;
  return null;
}

/** The same for a host device by its sysfs name: its raw descriptors read from sysfs. */
export function usb2RefusalOfHostDevice(name: string, root = SYSFS_USB_DEVICES): string | null {
  let raw: Buffer;
  try {
    raw = fs.readFileSync(path.join(root, name, 'descriptors'));
  } catch (e) {
    return `its descriptors could not be read from sysfs (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`;
  }
  if (raw.length < 18) return `its descriptors in sysfs are ${raw.length} bytes, too short to check`;
  return usb2RefusalOf(raw);
}
