// USB capture records: Linux usbmon's binary ("mmapped") packet header, struct usbmon_packet
// of Documentation/usb/usbmon.rst, which LINKTYPE_USB_LINUX_MMAPPED (220) puts in front of
// each packet's data. 64 bytes, little-endian here (the capture's byte order is the
// writer's, and the section header says which). The machine thread encodes one per
// Submit and per Complete; the VM host writes them to pcapng and decodes them for the API.

/** The header's size; the captured data follows it. */
export const USBMON_HEADER_BYTES = 64;

/** usbmon's xfer_type values. */
export const USBMON_XFER = { isochronous: 0, interrupt: 1, control: 2, bulk: 3 } as const;
export type UsbmonTransferType = keyof typeof USBMON_XFER;

/** Linux errno values usbmon reports as a URB's status (negated). */
export const USBMON_STATUS = {
  inProgress: -115, // -EINPROGRESS: every Submit
  ok: 0,
  stall: -32, // -EPIPE
  babble: -75, // -EOVERFLOW
  noDevice: -19, // -ENODEV
  cancelled: -104, // -ECONNRESET: unlinked
  error: -71, // -EPROTO
} as const;

export interface UsbmonPacket {
  /** URB id: the same for a transfer's Submit and Complete. Below 2^53. */
  id: number;
  type: 'S' | 'C' | 'E';
  transferType: UsbmonTransferType;
  /** Endpoint number 0..15. */
  endpoint: number;
  in: boolean;
  /** USB device address. */
  device: number;
  bus: number;
  /** The 8 setup bytes (control Submit), or null. */
  setup: Uint8Array | null;
  /** flag_data: 0 when data follows, else usbmon's tag ('<' IN submit, '>' OUT completion, '=' none). */
  flagData: number;
  /** Seconds and microseconds since the epoch. */
  tsSec: number;
  tsUsec: number;
  status: number;
  /** Bytes asked for (Submit) or moved (Complete). */
  length: number;
  /** Bytes of data captured after the header (at most length). */
  captured: number;
  /** Interrupt and isochronous: the polling interval; else 0. */
  interval: number;
  startFrame: number;
  xferFlags: number;
  /** Isochronous: the packet descriptors (error count and number in the setup field's place). */
  isoErrorCount: number;
  isoDescriptors: number;
}

const TYPE_CODES: Record<UsbmonPacket['type'], number> = { S: 0x53, C: 0x43, E: 0x45 };
const TRANSFER_TYPES = Object.keys(USBMON_XFER) as UsbmonTransferType[];

/** Writes the 64-byte header into `out` at `offset` (every byte of it). */
export function encodeUsbmonHeader(p: UsbmonPacket, out: Uint8Array, offset = 0): void {
  const v = new DataView(out.buffer, out.byteOffset + offset, USBMON_HEADER_BYTES);
  v.setUint32(0, p.id % 0x100000000, true);
  v.setUint32(4, Math.floor(p.id / 0x100000000), true);
  v.setUint8(8, TYPE_CODES[p.type]);
  v.setUint8(9, USBMON_XFER[p.transferType]);
  v.setUint8(10, (p.endpoint & 0x7f) | (p.in ? 0x80 : 0));
  v.setUint8(11, p.device & 0xff);
  v.setUint16(12, p.bus & 0xffff, true);
  // flag_setup: 0 means the setup bytes are valid; '-' that there are none.
  v.setUint8(14, p.setup !== null ? 0 : 0x2d);
  v.setUint8(15, p.flagData & 0xff);
  v.setUint32(16, p.tsSec % 0x100000000, true);
  v.setUint32(20, Math.floor(p.tsSec / 0x100000000), true);
  v.setInt32(24, p.tsUsec, true);
  v.setInt32(28, p.status, true);
  v.setUint32(32, p.length >>> 0, true);
  v.setUint32(36, p.captured >>> 0, true);
  if (p.setup !== null) {
    for (let i = 0; i < 8; i++) v.setUint8(40 + i, p.setup[i] ?? 0);
  } else {
    v.setInt32(40, p.isoErrorCount, true);
    v.setInt32(44, p.isoDescriptors, true);
  }
  v.setInt32(48, p.interval, true);
  v.setInt32(52, p.startFrame, true);
  v.setUint32(56, p.xferFlags >>> 0, true);
  v.setUint32(60, p.transferType === 'isochronous' ? p.isoDescriptors >>> 0 : 0, true);
}

/** Reads a header back (for the API's transfer list); null when `bytes` cannot hold one. */
export function decodeUsbmonHeader(bytes: Uint8Array, offset = 0): UsbmonPacket | null {
  if (bytes.length - offset < USBMON_HEADER_BYTES) return null;
  const v = new DataView(bytes.buffer, bytes.byteOffset + offset, USBMON_HEADER_BYTES);
  const typeCode = v.getUint8(8);
  const type = typeCode === 0x53 ? 'S' : typeCode === 0x43 ? 'C' : typeCode === 0x45 ? 'E' : null;
  const transferType = TRANSFER_TYPES[v.getUint8(9)];
  if (type === null || transferType === undefined) return null;
  const hasSetup = v.getUint8(14) === 0;
  return {
    id: v.getUint32(0, true) + v.getUint32(4, true) * 0x100000000,
    type,
    transferType,
    endpoint: v.getUint8(10) & 0x7f,
    in: (v.getUint8(10) & 0x80) !== 0,
    device: v.getUint8(11),
    bus: v.getUint16(12, true),
    setup: hasSetup ? bytes.slice(offset + 40, offset + 48) : null,
    flagData: v.getUint8(15),
    tsSec: v.getUint32(16, true) + v.getInt32(20, true) * 0x100000000,
    tsUsec: v.getInt32(24, true),
    status: v.getInt32(28, true),
    length: v.getUint32(32, true),
    captured: v.getUint32(36, true),
    interval: v.getInt32(48, true),
    startFrame: v.getInt32(52, true),
    xferFlags: v.getUint32(56, true),
    isoErrorCount: hasSetup ? 0 : v.getInt32(40, true),
    isoDescriptors: hasSetup ? 0 : v.getInt32(44, true),
  };
}

/** A status as words for people (the API's transfer list). */
export function usbmonStatusName(status: number): string {
  switch (status) {
    case USBMON_STATUS.inProgress: return 'submitted';
    case USBMON_STATUS.ok: return 'ok';
    case USBMON_STATUS.stall: return 'stall';
    case USBMON_STATUS.babble: return 'babble';
    case USBMON_STATUS.noDevice: return 'no-device';
    case USBMON_STATUS.cancelled: return 'cancelled';
    case USBMON_STATUS.error: return 'error';
    default: return `errno ${-status}`;
  }
}
