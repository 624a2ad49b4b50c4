// USB capture on the VM host thread: the records the xHCI's tap sends (devices/usb/xhci/capture.ts)
// become Enhanced Packet Blocks of a pcapng file with LINKTYPE_USB_LINUX_MMAPPED, which
// Wireshark and tshark decode, and decoded transfer records for the API's live list.
import fs from 'node:fs';
import { CAPTURE_PREFIX_BYTES } from '../devices/usb/xhci/capture';
import { USB_CAPTURE_MAX_SNAP } from '../shared/usb-messages';
import type { UsbCaptureInfo, UsbTransferRecord } from '../../api/contract';
import { decodeUsbmonHeader, USBMON_HEADER_BYTES, usbmonStatusName, type UsbmonPacket } from '../shared/usbmon';
import {
  enhancedPacketBlock, interfaceDescriptionBlock, LINKTYPE_USB_LINUX_MMAPPED, sectionHeaderBlock,
} from './pcapng';

/** Buffered file bytes written out at once past this size, or after FLUSH_MS. */
const FLUSH_BYTES = 256 * 1024;
const FLUSH_MS = 200;
const ISO_DESCRIPTOR_BYTES = 16;

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
export type { UsbTransferRecord };

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

/** What a capture takes: a file to write (or none: records only), one port (or all). */
export interface UsbCaptureSpec {
  /** An absolute path for the pcapng file; null or absent: no file, only the record stream. */
  path?: string | null;
  /** Capture only the device on this root-hub port (1..31); null or absent: every port. */
  port?: number | null;
  /** Data bytes kept per record (0..USB_CAPTURE_MAX_SNAP, default DEFAULT_SNAP_LENGTH). */
  snapLength?: number;
}

/** A capture's state, as the API reports it. */
export type UsbCaptureSummary = UsbCaptureInfo;

export const DEFAULT_SNAP_LENGTH = 4096;
const ALL_PORTS = 0x7ffffffe;

interface ActiveCapture {
  id: number;
  port: number | null;
  snapLength: number;
  file: PcapngCaptureFile | null;
  listener: ((record: UsbTransferRecord) => void) | null;
  packets: number;
  droppedAtStart: number;
}

/** A capture request the VM host can refuse with a clear sentence (the API maps it). */
export class UsbCaptureError extends Error {
  constructor(readonly code: 'invalid-argument' | 'not-found' | 'invalid-state', message: string) {
    super(message);
    this.name = 'UsbCaptureError';
  }
}

/**
 * The VM host's captures: each has its own file and port filter; the machine's tap captures
 * the union of their ports (it runs only while at least one capture does).
 */
export class UsbCaptures {
  private readonly active = new Map<number, ActiveCapture>();
  private nextId = 1;
  private droppedTotal = 0;
  private portNames = new Map<number, string>();

  /** `apply` sets the machine's tap (mask 0 stops it) and resolves with what the tap before it sent. */
  constructor(private readonly apply: (portMask: number, snapLength: number) => Promise<{ sent: number; dropped: number } | undefined>) {}

  get running(): boolean {
    return this.active.size > 0;
  }

  /** Remembers the devices' names by port (from every USB reply) for the records. */
  setPorts(ports: readonly { port: number; device: { name: string } | null }[]): void {
    this.portNames = new Map(ports.filter((p) => p.device !== null).map((p) => [p.port, (p.device as { name: string }).name]));
  }

  async start(spec: UsbCaptureSpec, listener: ((record: UsbTransferRecord) => void) | null = null): Promise<UsbCaptureSummary> {
    const port = spec.port ?? null;
    if (port !== null && (!Number.isInteger(port) || port < 1 || port > 31)) {
      throw new UsbCaptureError('invalid-argument', `there is no USB port ${String(port)} to capture`);
    }
    const snapLength = spec.snapLength ?? DEFAULT_SNAP_LENGTH;
    if (!Number.isInteger(snapLength) || snapLength < 0 || snapLength > USB_CAPTURE_MAX_SNAP) {
      throw new UsbCaptureError('invalid-argument', `the snap length must be 0 to ${USB_CAPTURE_MAX_SNAP} bytes`);
    }
    const path = spec.path ?? null;
    if (path !== null && (typeof path !== 'string' || !path.startsWith('/'))) {
      throw new UsbCaptureError('invalid-argument', 'the capture file needs an absolute path');
    }
    let file: PcapngCaptureFile | null = null;
    if (path !== null) {
      try {
        file = new PcapngCaptureFile(path, snapLength);
      } catch (e) {
        throw new UsbCaptureError((e as Error).message.includes('ENOENT') ? 'not-found' : 'invalid-argument', (e as Error).message);
      }
    }
    const capture: ActiveCapture = { id: this.nextId++, port, snapLength, file, listener, packets: 0, droppedAtStart: this.droppedTotal };
    this.active.set(capture.id, capture);
    try {
      await this.update();
    } catch (e) {
      this.active.delete(capture.id);
      try { file?.close(); } catch { /* the request's error is the one to report */ }
      throw e;
    }
    return this.summary(capture);
  }

  /** Stops a capture: the machine stops sending its port's records and its file is complete. */
  async stop(id: number): Promise<UsbCaptureSummary> {
    const capture = this.active.get(id);
    if (capture === undefined) throw new UsbCaptureError('not-found', `there is no USB capture ${id}`);
    this.active.delete(id);
    // No record reaches it any more: the file is complete now, whatever the machine answers.
    let closeError: Error | null = null;
    try {
      capture.file?.close();
    } catch (e) {
      closeError = e as Error;
    }
    try {
      await this.update();
    } catch {
      // The machine may be gone (stopping): its tap went with it.
    }
    if (closeError !== null) throw new UsbCaptureError('invalid-state', closeError.message);
    return this.summary(capture);
  }

  list(): UsbCaptureSummary[] {
    return [...this.active.values()].map((c) => this.summary(c));
  }

  /** A record from the machine's tap. */
  record(payload: Uint8Array): void {
    const r = parseCaptureRecord(payload);
    if (r === null) return;
    for (const c of this.active.values()) {
      if (c.port !== null && c.port !== r.port) continue;
      c.packets++;
      c.file?.add(r);
      if (c.listener !== null) c.listener(transferRecord(r, (port) => this.portNames.get(port) ?? null));
    }
  }

  /** A new machine (a reset) has no tap: give it the running captures'. */
  relaunched(): void {
    if (this.active.size > 0) this.update().catch(() => { /* the next request tells */ });
  }

  /** The VM stopped: every file ends complete. */
  closeAll(): void {
    for (const c of this.active.values()) {
      try { c.file?.close(); } catch { /* reported to nobody: the VM is gone */ }
    }
    this.active.clear();
  }

  private async update(): Promise<void> {
    let mask = 0;
    let snap = 0;
    for (const c of this.active.values()) {
      mask |= c.port === null ? ALL_PORTS : 1 << c.port;
      snap = Math.max(snap, c.snapLength);
    }
    const before = await this.apply(mask, snap);
    this.droppedTotal += before?.dropped ?? 0;
  }

  private summary(c: ActiveCapture): UsbCaptureSummary {
    return {
      id: c.id, path: c.file?.path ?? null, port: c.port, packets: c.packets, bytes: c.file?.bytes ?? 0,
      dropped: this.droppedTotal - c.droppedAtStart,
    };
  }
}
