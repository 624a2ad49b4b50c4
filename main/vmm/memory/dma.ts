// Guest memory as a device model sees it when it does DMA. Every access is bounds-checked
// against the machine's GuestMemory (RAM and ROM regions) and a bad one returns an error
// value: a guest hands devices addresses, and a bad address must become a device error
// state, never a host exception. No BigInt anywhere on these paths.
//
// Conventions:
// - Methods that move data return a DmaStatus: DMA_OK (0) or a negative DMA_* code.
// - Scalar reads return the value (always >= 0) or a negative DMA_* code: `v < 0` is an error.
// - Multi-byte values are little-endian (x86).
// - u64: readU64 returns a number that is exact below 2^53 (higher values are rounded);
//   readU64Halves gives both 32-bit halves exactly. writeU64 takes a safe integer,
//   writeU64Halves any 64-bit value as two halves.
// - Reads may come from RAM or ROM; writes to ROM are refused (DMA_READ_ONLY).
// - A range may span adjacent regions (high RAM comes in 2 GiB blocks); a gap anywhere in it
//   (the end of RAM, the PCI hole at 0xc0000000, unbacked space below or above 4 GiB) is
//   DMA_OUTSIDE, and nothing is read or written.
// - A zero-length access at any valid address succeeds and touches nothing.
import { GuestMemory, type MemoryRegion } from './guest-memory';

export const DMA_OK = 0;
/** Some byte of the range is not guest memory. */
export const DMA_OUTSIDE = -1;
/** A write would land in a read-only (ROM) region. */
export const DMA_READ_ONLY = -2;
/** The address or length is not a non-negative safe integer (or the range overflows). */
export const DMA_INVALID = -3;
/** The device may not do DMA now (a PCI function whose bus-master bit is clear). */
export const DMA_DISABLED = -4;

export type DmaStatus = number;

export function dmaErrorText(status: number): string {
  switch (status) {
    case DMA_OK: return 'ok';
    case DMA_OUTSIDE: return 'outside guest memory';
    case DMA_READ_ONLY: return 'read-only memory';
    case DMA_INVALID: return 'invalid address or length';
    case DMA_DISABLED: return 'DMA disabled (bus mastering off)';
    default: return status >= 0 ? 'ok' : `DMA error ${status}`;
  }
}

/** One element of a scatter-gather list. */
export interface DmaSegment {
  address: number;
  length: number;
}

const TWO_32 = 0x100000000;
const alwaysEnabled = (): boolean => true;

export class DmaMemory {
  private readonly scratch = new Uint8Array(8);
  /** The region the last access hit (the next one usually hits it too). */
  private lastRegion = 0;

  /**
   * `enabled` is asked on every access; while it returns false everything is DMA_DISABLED.
   * GuestMemory is one object per machine whose region list may change: nothing is cached
   * across accesses but a region index, which is re-checked each time.
   */
  constructor(readonly memory: GuestMemory, private readonly enabled: () => boolean = alwaysEnabled) {}

  /** Whether [gpa, gpa+length) may be read (or written, with forWrite) now. */
  check(gpa: number, length: number, forWrite = false): DmaStatus {
    if (!this.enabled()) return DMA_DISABLED;
    if (!validRange(gpa, length)) return DMA_INVALID;
    const regions = this.memory.regions;
    const end = gpa + length;
    let at = gpa;
    while (at < end) {
      const i = this.regionAt(regions, at);
      if (i < 0) return DMA_OUTSIDE;
      const r = regions[i];
      if (forWrite && r.readonly) return DMA_READ_ONLY;
      at = r.guestBase + r.size;
    }
    return DMA_OK;
  }

  /** Copies guest memory at `gpa` into all of `into`. */
  read(gpa: number, into: Uint8Array): DmaStatus {
    const status = this.check(gpa, into.length, false);
    if (status !== DMA_OK) return status;
    this.copy(gpa, into, false);
    return DMA_OK;
  }

  /** Copies all of `from` into guest memory at `gpa`. */
  write(gpa: number, from: Uint8Array): DmaStatus {
    const status = this.check(gpa, from.length, true);
    if (status !== DMA_OK) return status;
    this.copy(gpa, from, true);
    return DMA_OK;
  }

  /** Sets `length` bytes at `gpa` to `value`. */
  fill(gpa: number, length: number, value: number): DmaStatus {
    const status = this.check(gpa, length, true);
    if (status !== DMA_OK) return status;
    const regions = this.memory.regions;
    let at = gpa;
    const end = gpa + length;
    while (at < end) {
      const i = this.regionAt(regions, at);
      const r = regions[i];
      const offset = at - r.guestBase;
      const n = Math.min(end - at, r.size - offset);
      this.memory.viewOf(i).fill(value, offset, offset + n);
      at += n;
    }
    return DMA_OK;
  }

  /**
   * A window aliasing guest memory (zero copy), or null if the range is not inside one
   * region or the access is refused. Do not keep it past the current operation: the
   * region may be removed.
   */
  view(gpa: number, length: number, forWrite = false): Uint8Array | null {
    if (!this.enabled() || !validRange(gpa, length)) return null;
    const i = this.memory.regionIndexOf(gpa, length);
    if (i < 0) return null;
    const r = this.memory.regions[i];
    if (forWrite && r.readonly) return null;
    const offset = gpa - r.guestBase;
    return this.memory.viewOf(i).subarray(offset, offset + length);
  }

  /**
   * Windows aliasing guest memory for a whole scatter-gather list (zero copy: preadv/pwritev
   * straight into the guest), or null if some segment is refused or crosses a region edge
   * (the caller then copies through gather/scatter). Same lifetime rule as view().
   */
  views(segments: readonly DmaSegment[], forWrite = false): Uint8Array[] | null {
    const out: Uint8Array[] = [];
    for (const s of segments) {
      if (s.length === 0) continue;
      const v = this.view(s.address, s.length, forWrite);
      if (v === null) return null;
      out.push(v);
    }
    return out;
  }

  // --- scalars ------------------------------------------------------------------------

  readU8(gpa: number): number {
    const b = this.bytesAt(gpa, 1, false);
    if (b === null) return this.readError(gpa, 1);
    return b[this.at];
  }

  readU16(gpa: number): number {
    const b = this.bytesAt(gpa, 2, false);
    if (b === null) return this.readError(gpa, 2);
    const o = this.at;
    return b[o] | (b[o + 1] << 8);
  }

  readU32(gpa: number): number {
    const b = this.bytesAt(gpa, 4, false);
    if (b === null) return this.readError(gpa, 4);
    const o = this.at;
    return (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0;
  }

  /**
   * Reads `count` consecutive u32s at `gpa` into out[0..count) (a TRB, a descriptor) without
   * allocating. DMA_OK or the error of the first dword that failed (out is then partly filled).
   */
  readU32s(gpa: number, out: Uint32Array, count: number): DmaStatus {
    const b = this.bytesAt(gpa, 4 * count, false);
    if (b === null) {
      for (let i = 0; i < count; i++) {
        const v = this.readU32(gpa + 4 * i);
        if (v < 0) return v;
        out[i] = v;
      }
      return DMA_OK;
    }
    let o = this.at;
    for (let i = 0; i < count; i++, o += 4) out[i] = (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0;
    return DMA_OK;
  }

  /** The u64 at `gpa` as a number: exact below 2^53, rounded above (see readU64Halves). */
  readU64(gpa: number): number {
    const b = this.bytesAt(gpa, 8, false);
    if (b === null) return this.readError(gpa, 8);
    const o = this.at;
    const low = (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0;
    const high = (b[o + 4] | (b[o + 5] << 8) | (b[o + 6] << 16) | (b[o + 7] << 24)) >>> 0;
    return high * TWO_32 + low;
  }

  /** Reads the u64 at `gpa` exactly: out[at] = low 32 bits, out[at + 1] = high 32 bits. */
  readU64Halves(gpa: number, out: Uint32Array | number[], at = 0): DmaStatus {
    let b = this.bytesAt(gpa, 8, false);
    let o = this.at;
    if (b === null) {
      // Crossing regions, or refused.
      const status = this.read(gpa, this.scratch);
      if (status !== DMA_OK) return status;
      b = this.scratch;
      o = 0;
    }
    out[at] = (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0;
    out[at + 1] = (b[o + 4] | (b[o + 5] << 8) | (b[o + 6] << 16) | (b[o + 7] << 24)) >>> 0;
    return DMA_OK;
  }

  writeU8(gpa: number, value: number): DmaStatus {
    const b = this.bytesAt(gpa, 1, true);
    if (b === null) return this.writeSlow(gpa, 1, value, 0);
    b[this.at] = value;
    return DMA_OK;
  }

  writeU16(gpa: number, value: number): DmaStatus {
    const b = this.bytesAt(gpa, 2, true);
    if (b === null) return this.writeSlow(gpa, 2, value, 0);
    const o = this.at;
    b[o] = value;
    b[o + 1] = value >>> 8;
    return DMA_OK;
  }

  writeU32(gpa: number, value: number): DmaStatus {
    const b = this.bytesAt(gpa, 4, true);
    if (b === null) return this.writeSlow(gpa, 4, value, 0);
    const o = this.at;
    b[o] = value;
    b[o + 1] = value >>> 8;
    b[o + 2] = value >>> 16;
    b[o + 3] = value >>> 24;
    return DMA_OK;
  }

  /** Writes a u64 given as a non-negative safe integer (anything else is DMA_INVALID). */
  writeU64(gpa: number, value: number): DmaStatus {
    if (!Number.isSafeInteger(value) || value < 0) return DMA_INVALID;
    return this.writeU64Halves(gpa, value % TWO_32, Math.floor(value / TWO_32));
  }

  /** Writes the u64 whose low and high 32-bit halves are given. */
  writeU64Halves(gpa: number, low: number, high: number): DmaStatus {
    const b = this.bytesAt(gpa, 8, true);
    if (b === null) return this.writeSlow(gpa, 8, low, high);
    const o = this.at;
    b[o] = low; b[o + 1] = low >>> 8; b[o + 2] = low >>> 16; b[o + 3] = low >>> 24;
    b[o + 4] = high; b[o + 5] = high >>> 8; b[o + 6] = high >>> 16; b[o + 7] = high >>> 24;
    return DMA_OK;
  }

  // --- scatter-gather -----------------------------------------------------------------

  /**
   * Reads the segments, in order, into `into` from `intoOffset` on, until `into` is full or
   * the list ends. Returns the bytes copied, or a negative DMA_* code. Every segment is
   * checked first: on an error nothing is copied.
   */
  gather(segments: readonly DmaSegment[], into: Uint8Array, intoOffset = 0): number {
    return this.sg(segments, into, intoOffset, false);
  }

  /**
   * Writes `from` (from `fromOffset` on), in order, into the segments until `from` is used
   * up or the list ends. Returns the bytes written, or a negative DMA_* code. Every segment
   * is checked first: on an error no guest byte is written.
   */
  scatter(segments: readonly DmaSegment[], from: Uint8Array, fromOffset = 0): number {
    return this.sg(segments, from, fromOffset, true);
  }

  /** The total length of a list, or a negative DMA_* code if some segment is invalid. */
  static totalLength(segments: readonly DmaSegment[]): number {
    let total = 0;
    for (const s of segments) {
      if (!validRange(s.address, s.length)) return DMA_INVALID;
      total += s.length;
      if (!Number.isSafeInteger(total)) return DMA_INVALID;
    }
    return total;
  }

  // --- internals ------------------------------------------------------------------------

  /** Set by bytesAt: the offset of the access in the returned view. */
  private at = 0;

  /**
   * The fast path: the view of the one region holding [gpa, gpa+size) with `this.at` set,
   * or null (refused, crossing regions, or outside: the caller takes the slow path).
   */
  private bytesAt(gpa: number, size: number, forWrite: boolean): Uint8Array | null {
    if (!this.enabled() || !(gpa >= 0 && gpa <= Number.MAX_SAFE_INTEGER - size && Number.isInteger(gpa))) return null;
    const regions = this.memory.regions;
    let i = this.lastRegion;
    let r: MemoryRegion | undefined = regions[i];
    if (r === undefined || gpa < r.guestBase || gpa + size > r.guestBase + r.size) {
      i = this.memory.regionIndexOf(gpa, size);
      if (i < 0) return null;
      r = regions[i];
      this.lastRegion = i;
    }
    if (forWrite && r.readonly) return null;
    this.at = gpa - r.guestBase;
    return this.memory.viewOf(i);
  }

  /** A scalar read the fast path refused: read across regions, or report why it failed. */
  private readError(gpa: number, size: number): number {
    const b = this.scratch.subarray(0, size);
    const status = this.read(gpa, b);
    if (status !== DMA_OK) return status;
    let low = 0;
    let high = 0;
    for (let i = Math.min(size, 4) - 1; i >= 0; i--) low = low * 256 + b[i];
    for (let i = size - 1; i >= 4; i--) high = high * 256 + b[i];
    return high * TWO_32 + low;
  }

  private writeSlow(gpa: number, size: number, low: number, high: number): DmaStatus {
    const b = this.scratch;
    for (let i = 0; i < 4; i++) {
      b[i] = low >>> (8 * i);
      b[4 + i] = high >>> (8 * i);
    }
    return this.write(gpa, b.subarray(0, size));
  }

  private sg(segments: readonly DmaSegment[], buffer: Uint8Array, offset: number, toGuest: boolean): number {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset > buffer.length) return DMA_INVALID;
    for (const s of segments) {
      const status = this.check(s.address, s.length, toGuest);
      if (status !== DMA_OK) return status;
    }
    let done = 0;
    const room = buffer.length - offset;
    for (const s of segments) {
      if (done === room) break;
      const n = Math.min(s.length, room - done);
      this.copy(s.address, buffer.subarray(offset + done, offset + done + n), toGuest);
      done += n;
    }
    return done;
  }

  /** Moves bytes between a checked guest range and `buffer`, region by region. */
  private copy(gpa: number, buffer: Uint8Array, toGuest: boolean): void {
    const regions = this.memory.regions;
    let at = gpa;
    let done = 0;
    while (done < buffer.length) {
      const i = this.regionAt(regions, at);
      const r = regions[i];
      const offset = at - r.guestBase;
      const n = Math.min(buffer.length - done, r.size - offset);
      const view = this.memory.viewOf(i);
      if (toGuest) view.set(buffer.subarray(done, done + n), offset);
      else buffer.set(view.subarray(offset, offset + n), done);
      done += n;
      at += n;
    }
  }

  /** Index of the region holding byte `gpa`, or -1. */
  private regionAt(regions: readonly MemoryRegion[], gpa: number): number {
    const last = regions[this.lastRegion];
    if (last !== undefined && gpa >= last.guestBase && gpa < last.guestBase + last.size) return this.lastRegion;
    for (let i = 0; i < regions.length; i++) {
      const r = regions[i];
      if (gpa >= r.guestBase && gpa < r.guestBase + r.size) {
        this.lastRegion = i;
        return i;
      }
    }
    return -1;
  }
}

function validRange(gpa: number, length: number): boolean {
  return Number.isSafeInteger(gpa) && Number.isSafeInteger(length) && gpa >= 0 && length >= 0 && Number.isSafeInteger(gpa + length);
}

/** Shared by accessors of devices that are not (yet) attached to any memory: refuses everything. */
export const NO_MEMORY = new GuestMemory();
