// What the machine thread's passthrough device (devices/usb/passthrough/) and the VM host's
// node-usb side (host/usb-passthrough.ts) say to each other: transfers and their completions.
// This is a data path, so records are binary (little-endian), not JSON. They travel on the
// xHCI's channel target with kinds of their own (0x100 up), beside the hot-plug requests.
//
// Every record starts with the device's handle (which host device) and the instance (which
// machine-side object: a relaunch after a reset makes a new one, and the host side drops what
// an old instance had in flight). Buffers longer than one record travel as DATA records
// (offset + bytes) before SUBMIT's transfer starts (OUT) or before DONE (IN).

export const PASSTHROUGH_KIND = {
  /** Machine → host: a transfer; its OUT bytes follow as DATA records. */
  SUBMIT: 0x100,
  /** Either way: bytes of a transfer's buffer at an offset. */
  DATA: 0x101,
  /** Machine → host: forget a transfer (the machine completed it as cancelled). */
  CANCEL: 0x102,
  /** Machine → host: the guest reset the port; reset the device. */
  RESET: 0x103,
  /** Host → machine: a transfer ended. */
  DONE: 0x104,
  /** Machine → host: the device left its port (or the machine ended): drop everything in flight. */
  DETACHED: 0x105,
  /** Host → machine: the port reset RESET asked for is done (URBs the machine submits itself may go again). */
  RESET_DONE: 0x106,
  /** Machine → host: a URB the machine submitted itself found the device gone from the host. */
  GONE: 0x107,
} as const;

export function isPassthroughKind(kind: number): boolean {
  return kind >= PASSTHROUGH_KIND.SUBMIT && kind <= PASSTHROUGH_KIND.GONE;
}

/**
 * SET_CONFIGURATION, SET_INTERFACE and CLEAR_FEATURE(ENDPOINT_HALT): requests that change the
 * host device's state, which the VM host turns into host calls (never plain control URBs).
 */
export function isDeviceStateRequest(setup: Uint8Array): boolean {
  const [type, request] = [setup[0], setup[1]];
  return (type === 0x00 && request === 0x09) || (type === 0x01 && request === 0x0b)
    || (type === 0x02 && request === 0x01 && setup[2] === 0 && setup[3] === 0);
}

/** Bytes of buffer one DATA record carries at most (the VM host's channels hold 4 MiB). */
export const PASSTHROUGH_CHUNK = 256 * 1024;
/** Largest transfer the host side accepts (the xHCI's own TD limit). */
export const PASSTHROUGH_MAX_TRANSFER = 16 * 1024 * 1024;

export const TRANSFER_TYPE_CODE = { control: 0, isochronous: 1, bulk: 2, interrupt: 3 } as const;
export type TransferTypeName = keyof typeof TRANSFER_TYPE_CODE;
const TYPE_NAMES: TransferTypeName[] = ['control', 'isochronous', 'bulk', 'interrupt'];

export type PassthroughStatus = 'ok' | 'stall' | 'babble' | 'no-device' | 'cancelled' | 'error';
const STATUS_NAMES: PassthroughStatus[] = ['ok', 'stall', 'babble', 'no-device', 'cancelled', 'error'];

export interface Addressed {
  handle: number;
  instance: number;
}

export interface SubmitRecord extends Addressed {
  id: number;
  endpoint: number;
  in: boolean;
  type: TransferTypeName;
  /** The 8 SETUP bytes (control), else zeros. */
  setup: Uint8Array;
  length: number;
}

export interface DataRecord extends Addressed {
  id: number;
  offset: number;
  bytes: Uint8Array;
}

export interface DoneRecord extends Addressed {
  id: number;
  status: PassthroughStatus;
  actual: number;
  /** When the VM host sent it (epochMs, a clock both threads share): the machine times the hop. */
  sentAt?: number;
}

const ADDRESS_BYTES = 8;

function header(size: number, a: Addressed): { out: Uint8Array; view: DataView } {
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  view.setUint32(0, a.handle >>> 0, true);
  view.setUint32(4, a.instance >>> 0, true);
  return { out, view };
}

function viewOf(payload: Uint8Array): DataView {
  return new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
}

/** The handle and instance of any passthrough record, or null if it is too short. */
export function decodeAddress(payload: Uint8Array): Addressed | null {
  if (payload.length < ADDRESS_BYTES) return null;
  const v = viewOf(payload);
  return { handle: v.getUint32(0, true), instance: v.getUint32(4, true) };
}

export function encodeSubmit(r: SubmitRecord): Uint8Array {
  const { out, view } = header(32, r);
  view.setUint32(8, r.id >>> 0, true);
  out[12] = r.endpoint & 0x0f;
  out[13] = r.in ? 1 : 0;
  out[14] = TRANSFER_TYPE_CODE[r.type];
  out.set(r.setup.subarray(0, 8), 16);
  view.setUint32(24, r.length >>> 0, true);
  return out;
}

export function decodeSubmit(p: Uint8Array): SubmitRecord | null {
  if (p.length !== 32) return null;
  const v = viewOf(p);
  const type = TYPE_NAMES[p[14]];
  if (type === undefined || p[12] > 15 || p[13] > 1) return null;
  return {
    handle: v.getUint32(0, true), instance: v.getUint32(4, true), id: v.getUint32(8, true),
    endpoint: p[12], in: p[13] === 1, type, setup: p.slice(16, 24), length: v.getUint32(24, true),
  };
}

export function encodeData(r: DataRecord): Uint8Array {
  const { out, view } = header(16 + r.bytes.length, r);
  view.setUint32(8, r.id >>> 0, true);
  view.setUint32(12, r.offset >>> 0, true);
  out.set(r.bytes, 16);
  return out;
}

/** A DATA record; `bytes` is a view into the payload (copy it before the payload is reused). */
export function decodeData(p: Uint8Array): DataRecord | null {
  if (p.length < 16) return null;
  const v = viewOf(p);
  return {
    handle: v.getUint32(0, true), instance: v.getUint32(4, true), id: v.getUint32(8, true),
    offset: v.getUint32(12, true), bytes: p.subarray(16),
  };
}

export function encodeIdRecord(a: Addressed, id: number): Uint8Array {
  const { out, view } = header(12, a);
  view.setUint32(8, id >>> 0, true);
  return out;
}

export function decodeIdRecord(p: Uint8Array): (Addressed & { id: number }) | null {
  if (p.length !== 12) return null;
  const v = viewOf(p);
  return { handle: v.getUint32(0, true), instance: v.getUint32(4, true), id: v.getUint32(8, true) };
}

export function encodeAddressOnly(a: Addressed): Uint8Array {
  return header(ADDRESS_BYTES, a).out;
}

export function encodeDone(r: DoneRecord): Uint8Array {
  const { out, view } = header(r.sentAt === undefined ? 20 : 28, r);
  view.setUint32(8, r.id >>> 0, true);
  view.setUint32(12, STATUS_NAMES.indexOf(r.status), true);
  view.setUint32(16, r.actual >>> 0, true);
  if (r.sentAt !== undefined) view.setFloat64(20, r.sentAt, true);
  return out;
}

export function decodeDone(p: Uint8Array): DoneRecord | null {
  if (p.length !== 20 && p.length !== 28) return null;
  const v = viewOf(p);
  const status = STATUS_NAMES[v.getUint32(12, true)];
  if (status === undefined) return null;
  const r: DoneRecord = {
    handle: v.getUint32(0, true), instance: v.getUint32(4, true), id: v.getUint32(8, true),
    status, actual: v.getUint32(16, true),
  };
  if (p.length === 28) {
    const sentAt = v.getFloat64(20, true);
    if (Number.isFinite(sentAt)) r.sentAt = sentAt;
  }
  return r;
}
