// USB capture on the VM host thread: the records the xHCI's tap sends (devices/usb/xhci/capture.ts)
// become Enhanced Packet Blocks of a pcapng file with LINKTYPE_USB_LINUX_MMAPPED, which
// Wireshark and tshark decode, and decoded transfer records for the API's live list.
import fs from 'node:fs';
import { CAPTURE_PREFIX_BYTES } from '../devices/usb/xhci/capture';
import { decodeUsbmonHeader, USBMON_HEADER_BYTES, usbmonStatusName, type UsbmonPacket } from '../shared/usbmon';
import {
  enhancedPacketBlock, interfaceDescriptionBlock, LINKTYPE_USB_LINUX_MMAPPED, sectionHeaderBlock,
} from './pcapng';

/** Buffered file bytes written out at once past this size, or after FLUSH_MS. */
const FLUSH_BYTES = 256 * 1024;
const FLUSH_MS = 200;
const ISO_DESCRIPTOR_BYTES = 16;

/** One Submit or Complete of a transfer, decoded (a transfer list's row). */
export interface UsbTransferRecord {
  /** The same for a transfer's submit and complete. */
  id: number;
  event: 'submit' | 'complete' | 'error';
  /** Milliseconds since the epoch, with microseconds. */
  atMs: number;
  /** Root-hub port, and the device's name there (null if it left). */
  port: number;
  device: string | null;
  /** USB address. */
  address: number;
  endpoint: number;
  direction: 'in' | 'out';
  type: 'control' | 'isochronous' | 'bulk' | 'interrupt';
  /** Bytes asked for (submit) or moved (complete). */
  length: number;
  /** "submitted", "ok", "stall", "babble", "no-device", "cancelled", "error". */
  status: string;
  /** Control submits: the setup packet, with a reading of it. */
  setup: { requestType: number; request: number; value: number; index: number; length: number; text: string } | null;
  /** The first captured data bytes, in hex. */
  data: string;
}

/** One record from the machine, split into its parts. */
export interface CaptureRecord {
  port: number;
  header: UsbmonPacket;
  /** The usbmon header, descriptors and data: one packet of the capture file. */
  packet: Uint8Array;
  /** The captured data bytes. */
  data: Uint8Array;
}

/** Splits a record from the channel; null when it is not one (a record is never trusted blindly). */
export function parseCaptureRecord(payload: Uint8Array): CaptureRecord | null {
  const header = decodeUsbmonHeader(payload, CAPTURE_PREFIX_BYTES);
  if (header === null) return null;
  const dataAt = CAPTURE_PREFIX_BYTES + USBMON_HEADER_BYTES + header.isoDescriptors * ISO_DESCRIPTOR_BYTES;
  if (header.isoDescriptors < 0 || dataAt + header.captured !== payload.length) return null;
  return { port: payload[0], header, packet: payload.subarray(CAPTURE_PREFIX_BYTES), data: payload.subarray(dataAt) };
}

const STANDARD_REQUESTS = [
  'GET_STATUS', 'CLEAR_FEATURE', null, 'SET_FEATURE', null, 'SET_ADDRESS', 'GET_DESCRIPTOR', 'SET_DESCRIPTOR',
  'GET_CONFIGURATION', 'SET_CONFIGURATION', 'GET_INTERFACE', 'SET_INTERFACE', 'SYNCH_FRAME',
];
const DESCRIPTOR_TYPES: Record<number, string> = {
  1: 'device', 2: 'configuration', 3: 'string', 4: 'interface', 5: 'endpoint', 6: 'device qualifier',
  0x0f: 'BOS', 0x21: 'HID', 0x22: 'HID report',
};
const CLASS_REQUESTS: Record<number, string> = {
  0xfe: 'Get Max LUN', 0xff: 'Bulk-Only Mass Storage Reset', 0x01: 'GET_REPORT', 0x09: 'SET_REPORT', 0x0a: 'SET_IDLE',
  0x0b: 'SET_PROTOCOL', 0x20: 'SET_LINE_CODING', 0x21: 'GET_LINE_CODING', 0x22: 'SET_CONTROL_LINE_STATE',
};

/** A setup packet in words: "GET_DESCRIPTOR configuration 0 (9 bytes)". */
export function describeSetup(s: { requestType: number; request: number; value: number; index: number; length: number }): string {
  const kind = (s.requestType >>> 5) & 3;
  let name: string;
  if (kind === 0 && STANDARD_REQUESTS[s.request]) {
    name = STANDARD_REQUESTS[s.request] as string;
    if (s.request === 6 || s.request === 7) name += ` ${DESCRIPTOR_TYPES[s.value >>> 8] ?? `type 0x${(s.value >>> 8).toString(16)}`} ${s.value & 0xff}`;
    else if (s.request === 9 || s.request === 5) name += ` ${s.value}`;
  } else if (kind === 1 && CLASS_REQUESTS[s.request]) {
    name = `class ${CLASS_REQUESTS[s.request]}`;
  } else {
    name = `${['standard', 'class', 'vendor', 'reserved'][kind]} request 0x${s.request.toString(16).padStart(2, '0')}`;
  }
  return `${name} (${s.length} bytes)`;
}

/** A record in the API's words. */
export function transferRecord(r: CaptureRecord, portNames: (port: number) => string | null): UsbTransferRecord {
  const h = r.header;
  const setup = h.setup === null ? null : {
    requestType: h.setup[0], request: h.setup[1], value: h.setup[2] | (h.setup[3] << 8), index: h.setup[4] | (h.setup[5] << 8),
    length: h.setup[6] | (h.setup[7] << 8),
  };
  return {
    id: h.id,
    event: h.type === 'S' ? 'submit' : h.type === 'C' ? 'complete' : 'error',
    atMs: h.tsSec * 1000 + h.tsUsec / 1000,
    port: r.port,
    device: portNames(r.port),
    address: h.device,
    endpoint: h.endpoint,
    direction: h.in ? 'in' : 'out',
    type: h.transferType,
    length: h.length,
    status: usbmonStatusName(h.status),
    setup: setup === null ? null : { ...setup, text: describeSetup(setup) },
    data: Array.from(r.data.subarray(0, 16), (b) => b.toString(16).padStart(2, '0')).join(''),
  };
}

/**
 * A pcapng file being written: the section header and one interface (the controller's bus)
 * at once, then a packet per record. Writes are buffered and made on the VM host thread;
 * close() writes what is left and syncs, so a stopped capture is a complete file.
 */
export class PcapngCaptureFile {
  packets = 0;
  bytes = 0;
  private fd: number;
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  private timer: NodeJS.Timeout | null = null;
  private failed: Error | null = null;

  /** Creates (or truncates) `path`; throws a clear error when it cannot be written. */
  constructor(readonly path: string, snapLength: number, interfaceName = 'porthole-xhci') {
    try {
      this.fd = fs.openSync(path, 'w', 0o644);
    } catch (e) {
      throw new Error(`cannot write the capture file ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    this.queue(sectionHeaderBlock('Porthole'));
    this.queue(interfaceDescriptionBlock(LINKTYPE_USB_LINUX_MMAPPED, USBMON_HEADER_BYTES + snapLength, interfaceName));
    this.flush();
  }

  /** Appends one record as a packet. */
  add(r: CaptureRecord): void {
    if (this.fd < 0) return;
    const h = r.header;
    const timestampUs = h.tsSec * 1e6 + h.tsUsec;
    // As libpcap reports usbmon: the header, descriptors and the URB's data length when data belongs to the event.
    const original = r.packet.length - r.data.length + (h.flagData === 0 ? h.length : 0);
    this.queue(enhancedPacketBlock(0, timestampUs, r.packet, original));
    this.packets++;
    if (this.pendingBytes >= FLUSH_BYTES) this.flush();
    else if (this.timer === null) this.timer = setTimeout(() => this.flush(), FLUSH_MS);
  }

  /** Writes what is buffered; the first write error is kept and reported by close(). */
  flush(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (this.fd < 0 || this.pending.length === 0) return;
    const chunk = Buffer.concat(this.pending);
    this.pending = [];
    this.pendingBytes = 0;
    if (this.failed !== null) return;
    try {
      let at = 0;
      while (at < chunk.length) at += fs.writeSync(this.fd, chunk, at);
      this.bytes += chunk.length;
    } catch (e) {
      this.failed = new Error(`writing the capture file ${this.path} failed: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  }

  /** Writes the rest, syncs and closes; throws the first write error, if any. */
  close(): void {
    if (this.fd < 0) return;
    this.flush();
    const fd = this.fd;
    this.fd = -1;
    try {
      if (this.failed === null) fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    if (this.failed !== null) throw this.failed;
  }

  private queue(block: Uint8Array): void {
    this.pending.push(block);
    this.pendingBytes += block.length;
  }
}
