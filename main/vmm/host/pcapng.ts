// pcapng (draft-ietf-opsawg-pcapng): the blocks a USB capture needs — a Section Header, one
// Interface Description per link, and an Enhanced Packet per packet — built little-endian
// as byte arrays. Pure; the file writer (usb-capture.ts) appends them in order. A file cut
// after any whole block is still a valid capture, which is why a stop mid-stream is safe.

export const PCAPNG_SHB = 0x0a0d0d0a;
export const PCAPNG_IDB = 0x00000001;
export const PCAPNG_EPB = 0x00000006;
export const PCAPNG_BYTE_ORDER_MAGIC = 0x1a2b3c4d;
/** Linux usbmon's binary header, 64 bytes, in front of each packet's data. */
export const LINKTYPE_USB_LINUX_MMAPPED = 220;

const OPT_ENDOFOPT = 0;
const OPT_SHB_USERAPPL = 4;
const OPT_IF_NAME = 2;
const OPT_IF_TSRESOL = 9;

const encoder = new TextEncoder();

function pad4(n: number): number {
  return (n + 3) & ~3;
}

/** Options as pcapng lays them out (code, length, value padded to 4), ending with opt_endofopt. */
function options(list: [code: number, value: Uint8Array][]): Uint8Array {
  if (list.length === 0) return new Uint8Array(0);
  const size = list.reduce((n, [, value]) => n + 4 + pad4(value.length), 0) + 4;
  const out = new Uint8Array(size);
  const v = new DataView(out.buffer);
  let at = 0;
  for (const [code, value] of list) {
    if (value.length > 0xffff) throw new RangeError(`a pcapng option of ${value.length} bytes is too long`);
    v.setUint16(at, code, true);
    v.setUint16(at + 2, value.length, true);
    out.set(value, at + 4);
    at += 4 + pad4(value.length);
  }
  v.setUint16(at, OPT_ENDOFOPT, true);
  v.setUint16(at + 2, 0, true);
  return out;
}

/** A block: type, total length, body, options, total length again. */
function block(type: number, body: Uint8Array, opts: Uint8Array): Uint8Array {
  const total = 12 + pad4(body.length) + opts.length;
  const out = new Uint8Array(total);
  const v = new DataView(out.buffer);
  v.setUint32(0, type, true);
  v.setUint32(4, total, true);
  out.set(body, 8);
  out.set(opts, 8 + pad4(body.length));
  v.setUint32(total - 4, total, true);
  return out;
}

/** Section Header Block: version 1.0, section length unknown (-1), and the writing application. */
export function sectionHeaderBlock(application?: string): Uint8Array {
  const body = new Uint8Array(16);
  const v = new DataView(body.buffer);
  v.setUint32(0, PCAPNG_BYTE_ORDER_MAGIC, true);
  v.setUint16(4, 1, true);
  v.setUint16(6, 0, true);
  v.setUint32(8, 0xffffffff, true);
  v.setUint32(12, 0xffffffff, true);
  return block(PCAPNG_SHB, body, options(application === undefined ? [] : [[OPT_SHB_USERAPPL, encoder.encode(application)]]));
}

/**
 * Interface Description Block. Timestamps are in microseconds (if_tsresol 6, which is also
 * pcapng's default; written out so a reader need not assume it).
 */
export function interfaceDescriptionBlock(linkType: number, snapLength: number, name?: string): Uint8Array {
  const body = new Uint8Array(8);
  const v = new DataView(body.buffer);
  v.setUint16(0, linkType, true);
  v.setUint16(2, 0, true);
  v.setUint32(4, snapLength >>> 0, true);
  const opts: [number, Uint8Array][] = [];
  if (name !== undefined) opts.push([OPT_IF_NAME, encoder.encode(name)]);
  opts.push([OPT_IF_TSRESOL, Uint8Array.of(6)]);
  return block(PCAPNG_IDB, body, options(opts));
}

/**
 * Enhanced Packet Block on interface `interfaceId`, at `timestampUs` microseconds since the
 * epoch (an integer below 2^53), with `data` captured of `originalLength` bytes.
 */
export function enhancedPacketBlock(interfaceId: number, timestampUs: number, data: Uint8Array, originalLength: number): Uint8Array {
  const body = new Uint8Array(20 + pad4(data.length));
  const v = new DataView(body.buffer);
  v.setUint32(0, interfaceId >>> 0, true);
  v.setUint32(4, Math.floor(timestampUs / 0x100000000), true);
  v.setUint32(8, timestampUs % 0x100000000, true);
  v.setUint32(12, data.length, true);
  v.setUint32(16, Math.max(originalLength, data.length) >>> 0, true);
  body.set(data, 20);
  return block(PCAPNG_EPB, body, new Uint8Array(0));
}
