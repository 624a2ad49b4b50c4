// usbdevfs (/dev/bus/usb/BBB/DDD) through ioctls: URBs (isochronous above all: node-usb 2.x
// has none), interface claims and alt settings, kernel driver detach/attach. Every failure
// throws a NativeError naming the ioctl and the errno.
//
// Layouts are Linux's uapi <linux/usbdevice_fs.h> on x86_64 (unit-tested in usbdevfs.test.ts):
//   struct usbdevfs_urb (56 bytes, then the iso packet descriptors):
//     0 u8 type, 1 u8 endpoint, 4 i32 status, 8 u32 flags, 16 void *buffer, 24 i32 buffer_length,
//     28 i32 actual_length, 32 i32 start_frame, 36 i32 number_of_packets, 40 i32 error_count,
//     44 u32 signr, 48 void *usercontext, 56 iso_frame_desc[]
//   struct usbdevfs_iso_packet_desc (12 bytes): 0 u32 length, 4 u32 actual_length, 8 u32 status
//
// Reaping: the kernel keeps the URB's user address and writes the results into it when it is
// reaped, so each URB's memory (struct and data) is a JavaScript-owned ArrayBuffer kept in
// `inFlight` until REAPURBNDELAY hands its address back. Completions are noticed by poll(2) on a
// worker thread (usbfs-poller.ts: POLLOUT means a URB waits to be reaped) and reaped with
// REAPURBNDELAY on this thread, so the event loop never blocks and no timer ticks while a URB
// (a usb-serial's ever-pending bulk IN) waits.
import fs from 'node:fs';
import { addressOf, close, dup, ioctl, ioctlBuffer, NativeError, open, O_CLOEXEC, O_RDWR, read } from './libc';
import koffi from 'koffi';
import { type PolledUsbfs, type UsbfsPoller, usbfsPoller } from './usbfs-poller';

export const URB_TYPE = { iso: 0, interrupt: 1, control: 2, bulk: 3 } as const;
export type UrbType = keyof typeof URB_TYPE;
export const URB_SHORT_NOT_OK = 0x01;
export const URB_ISO_ASAP = 0x02;

export const URB_BYTES = 56;
export const ISO_DESC_BYTES = 12;
export const URB_OFFSET = {
  type: 0, endpoint: 1, status: 4, flags: 8, buffer: 16, bufferLength: 24, actualLength: 28, startFrame: 32,
  numberOfPackets: 36, errorCount: 40, signr: 44, usercontext: 48, isoFrameDesc: 56,
} as const;

// _IOC(dir, 'U', nr, size): dir 1 write, 2 read; 'U' = 0x55.
function ioc(dir: number, nr: number, size: number): number {
  return ((dir << 30) | (size << 16) | (0x55 << 8) | nr) >>> 0;
}
/** struct usbdevfs_getdriver: u32 interface, char driver[USBDEVFS_MAXDRIVERNAME + 1]. */
export const GETDRIVER_BYTES = 4 + 256;
export const USBDEVFS = {
  SETINTERFACE: ioc(2, 4, 8),
  SETCONFIGURATION: ioc(2, 5, 4),
  GETDRIVER: ioc(1, 8, GETDRIVER_BYTES),
  SUBMITURB: ioc(2, 10, URB_BYTES),
  DISCARDURB: ioc(0, 11, 0),
  REAPURB: ioc(1, 12, 8),
  REAPURBNDELAY: ioc(1, 13, 8),
  CLAIMINTERFACE: ioc(2, 15, 4),
  RELEASEINTERFACE: ioc(2, 16, 4),
  IOCTL: ioc(3, 18, 16),
  RESET: ioc(0, 20, 0),
  CLEAR_HALT: ioc(2, 21, 4),
  DISCONNECT: ioc(0, 22, 0),
  CONNECT: ioc(0, 23, 0),
} as const;

/** Largest iso packet count per URB the kernel takes (USBFS_MAX_ISO_PACKETS... kept well below). */
export const MAX_ISO_PACKETS = 128;

export interface IsoPacketResult {
  actual: number;
  /** 0 or a negative errno (-EXDEV: not transferred in time, -EPROTO, -EOVERFLOW...). */
  status: number;
}

export interface UrbResult {
  /** 0 or a negative errno (-ENOENT/-ECONNRESET: discarded, -EPIPE: stalled, -ESHUTDOWN/-ENODEV: gone). */
  status: number;
  actual: number;
  /** IN data (the URB's own buffer; valid until the callback returns). */
  data: Uint8Array;
  packets: IsoPacketResult[];
}

export interface UrbRequest {
  type: UrbType;
  endpoint: number;
  /** OUT: the bytes to send; IN: a buffer of the length to read (copied: the caller's may move). */
  data: Uint8Array;
  /** Isochronous: each packet's length (their sum is data.length). */
  packetLengths?: number[];
  flags?: number;
  /** A signal usbfs sends the process when the URB completes (0: none); an RT signal, 32 to 64. */
  signal?: number;
  /**
   * The URB uses `data` itself, no copy either way: the caller gives an off-heap buffer (a
   * view over more than 64 bytes, which V8 never moves) and leaves it alone until done.
   */
  inPlace?: boolean;
}

/** Largest typed array V8 may keep on its (moving) heap; a bigger one has a fixed backing store. */
const ON_HEAP_MAX_BYTES = 64;

/** Writes a URB struct (and its iso descriptors) into `urb`; exported for the layout tests. */
export function packUrb(urb: Uint8Array, req: UrbRequest, bufferAddress: bigint): void {
  const v = new DataView(urb.buffer, urb.byteOffset, urb.byteLength);
  const packets = req.packetLengths ?? [];
  urb.fill(0, 0, URB_BYTES + ISO_DESC_BYTES * packets.length);
  v.setUint8(URB_OFFSET.type, URB_TYPE[req.type]);
  v.setUint8(URB_OFFSET.endpoint, req.endpoint & 0xff);
  v.setUint32(URB_OFFSET.flags, (req.flags ?? (req.type === 'iso' ? URB_ISO_ASAP : 0)) >>> 0, true);
  v.setBigUint64(URB_OFFSET.buffer, bufferAddress, true);
  v.setInt32(URB_OFFSET.bufferLength, req.data.length, true);
  v.setInt32(URB_OFFSET.numberOfPackets, req.type === 'iso' ? packets.length : 0, true);
  v.setUint32(URB_OFFSET.signr, (req.signal ?? 0) >>> 0, true);
  for (let i = 0; i < packets.length; i++) {
    v.setUint32(URB_OFFSET.isoFrameDesc + ISO_DESC_BYTES * i, packets[i] >>> 0, true);
  }
}

/** The NUL-terminated driver name of a struct usbdevfs_getdriver. */
export function parseDriverName(b: Uint8Array): string {
  const name = b.subarray(4, GETDRIVER_BYTES);
  const end = name.indexOf(0);
  return Buffer.from(name.subarray(0, end < 0 ? name.length : end)).toString('latin1');
}

/** Reads what the kernel wrote back into a reaped URB struct. */
export function unpackUrb(urb: Uint8Array, packetCount: number): { status: number; actual: number; packets: IsoPacketResult[] } {
  const v = new DataView(urb.buffer, urb.byteOffset, urb.byteLength);
  const packets: IsoPacketResult[] = [];
  for (let i = 0; i < packetCount; i++) {
    const at = URB_OFFSET.isoFrameDesc + ISO_DESC_BYTES * i;
    packets.push({ actual: v.getUint32(at + 4, true), status: v.getInt32(at + 8, true) });
  }
  return { status: v.getInt32(URB_OFFSET.status, true), actual: v.getInt32(URB_OFFSET.actualLength, true), packets };
}

/** A usbfs URB status (0 or -errno) by name (the passthrough's transfer statuses). */
export function statusOfUrb(status: number): 'ok' | 'stall' | 'babble' | 'no-device' | 'cancelled' | 'error' {
  switch (-status) {
    case 0: return 'ok';
    case 2: case 104: return 'cancelled'; // ENOENT, ECONNRESET: discarded
    case 32: return 'stall'; // EPIPE
    case 75: return 'babble'; // EOVERFLOW
    case 19: case 108: return 'no-device'; // ENODEV, ESHUTDOWN
    default: return 'error'; // EXDEV (missed its frame), EPROTO, EILSEQ, ETIME...
  }
}

/** Checks a URB request before it reaches the kernel; returns a sentence or null. */
export function urbProblem(req: UrbRequest): string | null {
  if (!Number.isInteger(req.endpoint) || req.endpoint < 0 || req.endpoint > 0xff) return `endpoint ${req.endpoint} is not an endpoint address`;
  if (req.signal !== undefined && req.signal !== 0 && (!Number.isInteger(req.signal) || req.signal < 32 || req.signal > 64)) return `signal ${req.signal} is not a real-time signal`;
  if (req.type === 'iso') {
    const p = req.packetLengths;
    if (p === undefined || p.length === 0 || p.length > MAX_ISO_PACKETS) return `an isochronous URB needs 1 to ${MAX_ISO_PACKETS} packets`;
    let sum = 0;
    for (const n of p) {
      if (!Number.isInteger(n) || n < 0 || n > 0xffff) return `iso packet length ${n} is out of range`;
      sum += n;
    }
    if (sum !== req.data.length) return `iso packet lengths add up to ${sum}, not the buffer's ${req.data.length}`;
  }
  return null;
}

interface InFlightUrb {
  struct: Uint8Array;
  data: Uint8Array;
  packets: number;
  done: (r: UrbResult) => void;
}

/** One opened usbfs device node. */
export class UsbdevfsDevice implements PolledUsbfs {
  private _fd: number;
  private readonly inFlight = new Map<bigint, InFlightUrb>();
  private readonly reapSlot = new Uint8Array(new ArrayBuffer(8));

  private constructor(fd: number, readonly path: string, private readonly poller: UsbfsPoller | null) {
    this._fd = fd;
  }

  /**
   * A second descriptor (dup) of a usbfs node another part of the process opened and claimed
   * on (claims belong to the open file, so URBs on the dup may use them), whose URBs this
   * object's owner reaps itself (`reapAll`): no poller watches it. `path` must be what the
   * descriptor names in /proc/self/fd, so a number closed and reused meanwhile is refused.
   */
  static adopt(fd: number, path: string): UsbdevfsDevice {
    const own = dup(fd);
    let target = '';
    try {
      target = fs.readlinkSync(`/proc/self/fd/${own}`);
    } catch {
      // Unreadable: refused below.
    }
    if (target !== path) {
      close(own);
      throw new Error(`fd ${fd} is ${target === '' ? 'not open' : target}, not ${path}`);
    }
    return new UsbdevfsDevice(own, path, null);
  }

  static open(busNumber: number, deviceAddress: number, root = '/dev/bus/usb'): UsbdevfsDevice {
    const path = `${root}/${String(busNumber).padStart(3, '0')}/${String(deviceAddress).padStart(3, '0')}`;
    const poller = usbfsPoller();
    return new UsbdevfsDevice(open(path, O_RDWR | O_CLOEXEC), path, poller);
  }

  /** The node's fd, -1 once closed. */
  get fd(): number {
    return this._fd;
  }

  get urbsInFlight(): number {
    return this.inFlight.size;
  }

  private u32(value: number): Uint8Array {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, value >>> 0, true);
    return b;
  }

  claimInterface(itf: number): void {
    ioctlBuffer(this.fd, `USBDEVFS_CLAIMINTERFACE(${itf}) on ${this.path}`, USBDEVFS.CLAIMINTERFACE, this.u32(itf));
  }

  releaseInterface(itf: number): void {
    ioctlBuffer(this.fd, `USBDEVFS_RELEASEINTERFACE(${itf}) on ${this.path}`, USBDEVFS.RELEASEINTERFACE, this.u32(itf));
  }

  setInterface(itf: number, alternate: number): void {
    const b = new Uint8Array(8);
    const v = new DataView(b.buffer);
    v.setUint32(0, itf >>> 0, true);
    v.setUint32(4, alternate >>> 0, true);
    ioctlBuffer(this.fd, `USBDEVFS_SETINTERFACE(${itf}, alt ${alternate}) on ${this.path}`, USBDEVFS.SETINTERFACE, b);
  }

  /** USBDEVFS_SETCONFIGURATION (the kernel refuses it while another fd or driver holds an interface). */
  setConfiguration(value: number): void {
    ioctlBuffer(this.fd, `USBDEVFS_SETCONFIGURATION(${value}) on ${this.path}`, USBDEVFS.SETCONFIGURATION, this.u32(value));
  }

  /** USBDEVFS_RESET: a port reset of the device, which keeps its address. */
  reset(): void {
    ioctl(this.fd, `USBDEVFS_RESET on ${this.path}`, USBDEVFS.RESET, 0);
  }

  /** The kernel driver bound to interface `itf` ("usbfs" for a usbfs claim), or null for none. */
  driverOf(itf: number): string | null {
    const b = new Uint8Array(GETDRIVER_BYTES);
    new DataView(b.buffer).setUint32(0, itf >>> 0, true);
    const r = ioctlPtr(this.fd, USBDEVFS.GETDRIVER, b) as number;
    if (r < 0) {
      const errno = koffi.errno();
      if (errno === 61) return null; // ENODATA: no driver
      throw new NativeError(`USBDEVFS_GETDRIVER(${itf}) on ${this.path}`, errno);
    }
    return parseDriverName(b);
  }

  /** The device's descriptors as usbfs serves them: the device descriptor, then every configuration's. */
  readDescriptors(): Uint8Array {
    const out: Uint8Array[] = [];
    let total = 0;
    for (;;) {
      const chunk = new Uint8Array(4096);
      const n = read(this.fd, chunk);
      if (n <= 0) break;
      out.push(chunk.subarray(0, n));
      total += n;
      if (total > 1 << 20) break;
    }
    const all = new Uint8Array(total);
    let at = 0;
    for (const c of out) {
      all.set(c, at);
      at += c.length;
    }
    return all;
  }

  clearHalt(endpointAddress: number): void {
    ioctlBuffer(this.fd, `USBDEVFS_CLEAR_HALT(0x${endpointAddress.toString(16)}) on ${this.path}`, USBDEVFS.CLEAR_HALT, this.u32(endpointAddress));
  }

  /** Detaches interface `itf`'s kernel driver (USBDEVFS_IOCTL + USBDEVFS_DISCONNECT). */
  disconnectDriver(itf: number): void {
    this.driverIoctl(itf, USBDEVFS.DISCONNECT, 'USBDEVFS_DISCONNECT');
  }

  /** Lets the kernel bind a driver to interface `itf` again (USBDEVFS_IOCTL + USBDEVFS_CONNECT). */
  connectDriver(itf: number): void {
    this.driverIoctl(itf, USBDEVFS.CONNECT, 'USBDEVFS_CONNECT');
  }

  private driverIoctl(itf: number, code: number, name: string): void {
    const b = new Uint8Array(16);
    const v = new DataView(b.buffer);
    v.setInt32(0, itf, true);
    v.setInt32(4, code, true);
    ioctlBuffer(this.fd, `USBDEVFS_IOCTL(${name}, interface ${itf}) on ${this.path}`, USBDEVFS.IOCTL, b);
  }

  /**
   * Submits a URB; `done` runs on this thread once it is reaped. Returns a function that
   * discards it (done then comes with a negative status). Throws on a refused submit.
   */
  submit(req: UrbRequest, done: (r: UrbResult) => void): () => void {
    if (this.fd < 0) throw new Error(`${this.path} is closed`);
    const problem = urbProblem(req);
    if (problem !== null) throw new Error(`USBDEVFS_SUBMITURB on ${this.path}: ${problem}`);
    const packets = req.type === 'iso' ? (req.packetLengths as number[]).length : 0;
    // Own ArrayBuffers: off V8's heap, never moved while the kernel holds their addresses.
    const struct = new Uint8Array(new ArrayBuffer(URB_BYTES + ISO_DESC_BYTES * packets));
    let data: Uint8Array;
    if (req.inPlace === true && req.data.buffer.byteLength > ON_HEAP_MAX_BYTES) {
      data = req.data;
    } else {
      data = new Uint8Array(new ArrayBuffer(Math.max(1, req.data.length)), 0, req.data.length);
      // An IN URB's buffer is only written: a fresh (zeroed) one needs none of the caller's bytes.
      if (req.type === 'control' || (req.endpoint & 0x80) === 0) data.set(req.data);
    }
    packUrb(struct, req, req.data.length > 0 ? addressOf(data) : 0n);
    const key = addressOf(struct);
    ioctlBuffer(this.fd, `USBDEVFS_SUBMITURB(type ${req.type}, endpoint 0x${req.endpoint.toString(16)}) on ${this.path}`, USBDEVFS.SUBMITURB, struct);
    this.inFlight.set(key, { struct, data, packets, done });
    this.poller?.watch(this);
    return () => {
      if (this.fd < 0 || !this.inFlight.has(key)) return;
      // DISCARDURB takes the URB's user address as its argument; EINVAL means it already completed.
      discard(this.fd, key);
    };
  }

  /** Reaps every completed URB without blocking (the poller calls it when the fd says so); how many. */
  reapAll(): number {
    let reaped = 0;
    while (this.fd >= 0 && this.inFlight.size > 0) {
      const r = reapNoDelay(this.fd, this.reapSlot);
      if (r === -11) break; // EAGAIN: nothing completed yet
      if (r < 0) {
        // ENODEV: the device left; its URBs are gone with it.
        if (r === -19) this.failAll(-19);
        break;
      }
      const key = new DataView(this.reapSlot.buffer).getBigUint64(0, true);
      const urb = this.inFlight.get(key);
      if (urb === undefined) continue;
      this.inFlight.delete(key);
      reaped++;
      const out = unpackUrb(urb.struct, urb.packets);
      urb.done({ ...out, data: urb.data });
    }
    return reaped;
  }

  private failAll(status: number): void {
    const all = [...this.inFlight.values()];
    this.inFlight.clear();
    for (const u of all) u.done({ status, actual: 0, data: u.data, packets: [] });
  }

  /** Discards every URB, reaps them (bounded wait), and closes the node. */
  close(): void {
    if (this.fd < 0) return;
    this.poller?.forget(this);
    for (const key of this.inFlight.keys()) discard(this.fd, key);
    // Discarded URBs come back at once; a few looks are enough, and the kernel frees the rest on close.
    for (let i = 0; i < 100 && this.inFlight.size > 0; i++) {
      const r = reapNoDelay(this.fd, this.reapSlot);
      if (r < 0) break;
      const key = new DataView(this.reapSlot.buffer).getBigUint64(0, true);
      const urb = this.inFlight.get(key);
      if (urb === undefined) continue;
      this.inFlight.delete(key);
      urb.done({ ...unpackUrb(urb.struct, urb.packets), data: urb.data });
    }
    this.failAll(-108); // ESHUTDOWN
    close(this._fd);
    this._fd = -1;
  }
}

// ioctls that fail in ordinary ways (EAGAIN, EINVAL) return -errno instead of throwing.
const lib = koffi.load('libc.so.6');
const ioctlPtr = lib.func('int ioctl(int fd, unsigned long request, _Inout_ uint8_t *arg)');
const ioctlAddr = lib.func('int ioctl(int fd, unsigned long request, uint64_t arg)');

function reapNoDelay(fd: number, slot: Uint8Array): number {
  const r = ioctlPtr(fd, USBDEVFS.REAPURBNDELAY, slot) as number;
  return r < 0 ? -koffi.errno() : r;
}

function discard(fd: number, urbAddress: bigint): void {
  const r = ioctlAddr(fd, USBDEVFS.DISCARDURB, urbAddress) as number;
  if (r < 0) {
    const errno = koffi.errno();
    if (errno !== 22) throw new NativeError(`USBDEVFS_DISCARDURB on fd ${fd}`, errno); // EINVAL: already done
  }
}
