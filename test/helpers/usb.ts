// Test helpers for USB device models: a recording port, transfers, and the control requests a
// host sends while it enumerates a device.
import type { UsbDevice, UsbPortHost, UsbSetup, UsbTransfer, UsbTransferType } from '../../main/vmm/devices/usb/usb-device';

export class RecordingPort implements UsbPortHost {
  wakeups = 0;
  readonly lines: string[] = [];
  wakeup(): void {
    this.wakeups++;
  }
  log(text: string): void {
    this.lines.push(text);
  }
}

export function makeTransfer(
  endpoint: number,
  dirIn: boolean,
  type: UsbTransferType,
  data: Uint8Array,
  setup: UsbSetup | null = null,
): UsbTransfer {
  return { endpoint, in: dirIn, type, setup, data, status: 'pending', actualLength: 0 };
}

/** A submitted transfer and how often `done` was called for it. */
export interface Submitted {
  transfer: UsbTransfer;
  completions: number;
}

export function submit(device: UsbDevice, transfer: UsbTransfer, order?: UsbTransfer[]): Submitted {
  const s: Submitted = { transfer, completions: 0 };
  device.submit(transfer, (t) => {
    if (t !== transfer) throw new Error('done called with another transfer');
    s.completions++;
    order?.push(t);
  });
  return s;
}

/** A control transfer: IN with a buffer of setup.length bytes, or OUT with `out` (zeros by default). */
export function control(device: UsbDevice, setup: UsbSetup, out?: Uint8Array): Submitted {
  const dirIn = (setup.requestType & 0x80) !== 0;
  const data = dirIn ? new Uint8Array(setup.length) : (out ?? new Uint8Array(setup.length));
  return submit(device, makeTransfer(0, dirIn, 'control', data, setup));
}

/** Runs a control request that must complete at once; returns the bytes an IN request got. */
export function request(
  device: UsbDevice,
  requestType: number,
  req: number,
  value: number,
  index: number,
  length: number,
  out?: Uint8Array,
): { status: string; data: Uint8Array } {
  const s = control(device, { requestType, request: req, value, index, length }, out);
  if (s.completions !== 1) throw new Error(`control request completed ${s.completions} times`);
  return { status: s.transfer.status, data: s.transfer.data.subarray(0, s.transfer.actualLength) };
}

export function getDescriptor(device: UsbDevice, type: number, index: number, length: number, language = 0) {
  return request(device, 0x80, 0x06, (type << 8) | index, language, length);
}

/** Enumerates like Linux's hub driver: 8 bytes of device descriptor, SET_ADDRESS, the whole thing, config 9 then all. */
export function enumerate(device: UsbDevice, address = 5): { device: Uint8Array; config: Uint8Array } {
  const first = getDescriptor(device, 1, 0, 64);
  if (first.status !== 'ok') throw new Error('GET_DESCRIPTOR(device) failed');
  if (request(device, 0x00, 0x05, address, 0, 0).status !== 'ok') throw new Error('SET_ADDRESS failed');
  const dev = getDescriptor(device, 1, 0, 18);
  const head = getDescriptor(device, 2, 0, 9);
  const total = head.data[2] | (head.data[3] << 8);
  const config = getDescriptor(device, 2, 0, total);
  if (request(device, 0x00, 0x09, config.data[5], 0, 0).status !== 'ok') throw new Error('SET_CONFIGURATION failed');
  return { device: Uint8Array.from(dev.data), config: Uint8Array.from(config.data) };
}

/** Splits a configuration descriptor into its descriptors. */
export function splitDescriptors(bytes: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  let at = 0;
  while (at < bytes.length) {
    const len = bytes[at];
    if (len < 2 || at + len > bytes.length) throw new Error(`bad descriptor length ${len} at ${at}`);
    out.push(bytes.subarray(at, at + len));
    at += len;
  }
  return out;
}
