// The USB capture tap: while a capture runs, every transfer the controller hands a device
// gives a Submit record, and its end a Complete record, each a usbmon binary header plus the
// data (shared/usbmon.ts), sent to the VM host, which writes the pcapng file. The transfer
// engine holds a tap only while a capture runs: with none it checks one null and does
// nothing else. A record that finds the channel full is dropped and counted (the guest
// never waits for a capture). Runs on the machine thread.
import { encodeUsbmonHeader, USBMON_HEADER_BYTES, USBMON_STATUS, type UsbmonPacket } from '../../../shared/usbmon';
import { transferLength, type UsbStatus, type UsbTransfer } from '../usb-device';

/**
 * What travels to the VM host: this prefix (the root-hub port, the rest reserved), the usbmon
 * header, isochronous descriptors (16 bytes each), then the captured data.
 */
export const CAPTURE_PREFIX_BYTES = 8;
const ISO_DESCRIPTOR_BYTES = 16;
/** Linux's URB_DIR_IN transfer flag, which usbmon copies into xfer_flags. */
const URB_DIR_IN = 0x200;
/** The bus number records carry: the controller is one bus. */
export const CAPTURE_BUS = 1;

export interface CaptureOptions {
  /** Bit n set: capture the device on root-hub port n. */
  portMask: number;
  /** Most data bytes kept per record. */
  snapLength: number;
}

export interface CaptureSink {
  /** Hands a record to the VM host; false when there was no room (the record is dropped). */
  send(record: Uint8Array): boolean;
}

function statusCode(status: UsbStatus): number {
  switch (status) {
    case 'ok': return USBMON_STATUS.ok;
    case 'stall': return USBMON_STATUS.stall;
    case 'babble': return USBMON_STATUS.babble;
    case 'no-device': return USBMON_STATUS.noDevice;
    case 'cancelled': return USBMON_STATUS.cancelled;
    case 'pending': return USBMON_STATUS.inProgress;
    default: return USBMON_STATUS.error;
  }
}

/** A transfer's first `n` bytes: from data, or gathered from its guest segments (one started before the capture). */
function bytesOf(t: UsbTransfer, n: number): Uint8Array {
  if (t.guest === undefined) return t.data.subarray(0, n);
  const out = new Uint8Array(n);
  let at = 0;
  for (const s of t.guest) {
    if (at >= n) break;
    const k = Math.min(s.length, n - at);
    out.set(s.subarray(0, k), at);
    at += k;
  }
  return out;
}

function wallClockUs(): number {
  return Math.floor((performance.timeOrigin + performance.now()) * 1000);
}

export class UsbCaptureTap {
  /** Records that found the channel full. */
  dropped = 0;
  sent = 0;
  private nextId = 1;
  private readonly ids = new WeakMap<UsbTransfer, number>();
  private readonly packet: UsbmonPacket = {
    id: 0, type: 'S', transferType: 'bulk', endpoint: 0, in: false, device: 0, bus: CAPTURE_BUS, setup: null, flagData: 0,
    tsSec: 0, tsUsec: 0, status: 0, length: 0, captured: 0, interval: 0, startFrame: 0, xferFlags: 0, isoErrorCount: 0,
    isoDescriptors: 0,
  };
  private readonly setup = new Uint8Array(8);

  constructor(private options: CaptureOptions, private readonly sink: CaptureSink) {}

  /**
   * New ports or snap length for the running tap (another capture started or stopped). The
   * tap stays, so transfers in flight still get their Complete. Returns what was sent and
   * dropped since the last change, and counts afresh.
   */
  reconfigure(options: CaptureOptions): { sent: number; dropped: number } {
    const counts = { sent: this.sent, dropped: this.dropped };
    this.options = options;
    this.sent = this.dropped = 0;
    return counts;
  }

  wants(port: number): boolean {
    return port >= 1 && port < 32 && (this.options.portMask & (1 << port)) !== 0;
  }

  /** A transfer handed to the device on `port` (USB address `address`). */
  submit(port: number, address: number, transfer: UsbTransfer): void {
    if (!this.wants(port)) return;
    const id = this.nextId++;
    this.ids.set(transfer, id);
    const length = transferLength(transfer);
    const data = transfer.in ? null : bytesOf(transfer, Math.min(length, this.options.snapLength));
    this.emit(port, address, transfer, 'S', id, USBMON_STATUS.inProgress, length, data, transfer.in ? 0x3c : 0x3d);
  }

  /**
   * The end of a transfer; `status` overrides the transfer's (a cancel). One submitted before
   * the capture started (a keyboard's waiting interrupt TD) still gets its Complete, under a
   * new id, as usbmon does: its data is what the user started watching for.
   */
  complete(port: number, address: number, transfer: UsbTransfer, status: UsbStatus = transfer.status): void {
    let id = this.ids.get(transfer);
    if (id === undefined) {
      if (!this.wants(port)) return;
      id = this.nextId++;
    }
    this.ids.delete(transfer);
    const moved = Math.max(0, Math.min(transferLength(transfer), Number.isInteger(transfer.actualLength) ? transfer.actualLength : 0));
    const data = transfer.in ? bytesOf(transfer, Math.min(moved, this.options.snapLength)) : null;
    this.emit(port, address, transfer, 'C', id, statusCode(status), moved, data, transfer.in ? 0x3d : 0x3e);
  }

  private emit(
    port: number, address: number, t: UsbTransfer, type: 'S' | 'C', id: number, status: number, length: number,
    data: Uint8Array | null, noDataTag: number,
  ): void {
    const captured = data === null ? 0 : Math.min(data.length, this.options.snapLength);
    const iso = t.type === 'isochronous' ? (t.isoPackets ?? [transferLength(t)]) : null;
    const descriptors = iso === null ? 0 : iso.length;
    const record = new Uint8Array(CAPTURE_PREFIX_BYTES + USBMON_HEADER_BYTES + descriptors * ISO_DESCRIPTOR_BYTES + captured);
    record[0] = port;
    const us = wallClockUs();
    const p = this.packet;
    p.id = id;
    p.type = type;
    p.transferType = t.type;
    p.endpoint = t.endpoint;
    p.in = t.in;
    p.device = address;
    p.tsSec = Math.floor(us / 1e6);
    p.tsUsec = us % 1e6;
    p.status = status;
    p.length = length;
    p.captured = captured;
    p.flagData = captured > 0 ? 0 : length === 0 ? 0x3d : noDataTag;
    p.xferFlags = t.in ? URB_DIR_IN : 0;
    p.isoDescriptors = descriptors;
    p.isoErrorCount = 0;
    p.setup = null;
    if (type === 'S' && t.setup !== null) {
      const s = t.setup;
      const b = this.setup;
      b[0] = s.requestType; b[1] = s.request;
      b[2] = s.value & 0xff; b[3] = s.value >>> 8;
      b[4] = s.index & 0xff; b[5] = s.index >>> 8;
      b[6] = s.length & 0xff; b[7] = s.length >>> 8;
      p.setup = b;
    }
    encodeUsbmonHeader(p, record, CAPTURE_PREFIX_BYTES);
    let at = CAPTURE_PREFIX_BYTES + USBMON_HEADER_BYTES;
    if (iso !== null) {
      // struct mon_bin_isodesc: status, offset, length, padding.
      const v = new DataView(record.buffer, at, descriptors * ISO_DESCRIPTOR_BYTES);
      let offset = 0;
      for (let i = 0; i < descriptors; i++) {
        v.setInt32(i * 16, type === 'S' ? USBMON_STATUS.inProgress : status, true);
        v.setUint32(i * 16 + 4, offset, true);
        v.setUint32(i * 16 + 8, iso[i], true);
        offset += iso[i];
      }
      at += descriptors * ISO_DESCRIPTOR_BYTES;
    }
    if (data !== null && captured > 0) record.set(data.subarray(0, captured), at);
    if (this.sink.send(record)) this.sent++;
    else this.dropped++;
  }
}
