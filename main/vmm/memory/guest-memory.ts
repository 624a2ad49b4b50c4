// Guest physical memory: RAM below the PCI hole, RAM above 4 GiB for large guests,
// and read-only ROM windows. All of it is V8-owned SharedArrayBuffer memory.
import fs from 'node:fs';
import { GuestRamBlock, libc } from '../../../native';

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;
/** Start of the 32-bit PCI hole; RAM beyond this goes above 4 GiB. */
export const PCI_HOLE_START = 0xc0000000;
export const FOUR_GIB = 0x100000000;

export interface MemoryRegion {
  guestBase: number;
  size: number;
  buffer: SharedArrayBuffer;
  offset: number;
  readonly: boolean;
  name: string;
}

export class GuestMemoryError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GuestMemoryError';
  }
}

/**
 * The guest's physical memory map: one object per machine whose region list changes as
 * ROM windows and BARs come and go, so device models hold it directly (never a getter).
 * Usable on any thread. Every access is bounds-checked; guest addresses never reach
 * outside a region. Host-side helpers (loaders, tests) get a GuestMemoryError for a bad
 * address; device models use DmaMemory (dma.ts), which returns error values instead.
 */
export class GuestMemory {
  private list: MemoryRegion[] = [];
  private views: Uint8Array[] = [];

  constructor(regions: MemoryRegion[] = []) {
    for (const r of regions) this.add(r);
  }

  /** The regions, sorted by guest address. Replaced (not mutated) when the map changes. */
  get regions(): readonly MemoryRegion[] {
    return this.list;
  }

  /** Adds a region; refuses one that overlaps another. */
  add(region: MemoryRegion): void {
    const { guestBase, size } = region;
    if (!Number.isSafeInteger(guestBase) || !Number.isSafeInteger(size) || guestBase < 0 || size <= 0 || !Number.isSafeInteger(guestBase + size)) {
      throw new GuestMemoryError(`region ${region.name}: guest range 0x${guestBase.toString(16)}+0x${size.toString(16)} is invalid`);
    }
    if (region.offset < 0 || region.offset + size > region.buffer.byteLength) {
      throw new GuestMemoryError(`region ${region.name}: ${size} bytes at offset ${region.offset} do not fit its buffer`);
    }
    const clash = this.list.find((r) => guestBase < r.guestBase + r.size && r.guestBase < guestBase + size);
    if (clash) {
      throw new GuestMemoryError(`region ${region.name} (0x${guestBase.toString(16)}+0x${size.toString(16)}) overlaps ${clash.name} (0x${clash.guestBase.toString(16)}+0x${clash.size.toString(16)})`);
    }
    const list = [...this.list, region].sort((a, b) => a.guestBase - b.guestBase);
    this.views = list.map((r) => new Uint8Array(r.buffer, r.offset, r.size));
    this.list = list;
  }

  /** Removes a region added earlier (the same object); returns false if it was not there. */
  remove(region: MemoryRegion): boolean {
    const i = this.list.indexOf(region);
    if (i < 0) return false;
    this.list = this.list.filter((r) => r !== region);
    this.views = this.views.filter((_, j) => j !== i);
    return true;
  }

  /** Index of the region holding [gpa, gpa+length), or -1 (also for ranges crossing regions). */
  regionIndexOf(gpa: number, length: number): number {
    const list = this.list;
    for (let i = 0; i < list.length; i++) {
      const r = list[i];
      if (gpa >= r.guestBase && gpa + length <= r.guestBase + r.size) return i;
    }
    return -1;
  }

  /** The byte view of region `index` of `regions` (aliases guest memory). */
  viewOf(index: number): Uint8Array {
    return this.views[index];
  }

  get ramSize(): number {
    return this.regions.filter((r) => !r.readonly).reduce((n, r) => n + r.size, 0);
  }

  /** True if [gpa, gpa+length) lies entirely inside one region. */
  contains(gpa: number, length: number): boolean {
    return Number.isSafeInteger(gpa) && length >= 0 && gpa >= 0 && this.regionIndexOf(gpa, length) >= 0;
  }

  /**
   * A window onto guest memory, or a GuestMemoryError if any byte is outside RAM/ROM.
   * The window aliases guest memory: writes are seen by the guest.
   */
  slice(gpa: number, length: number, forWrite = false): Uint8Array {
    if (!Number.isSafeInteger(gpa) || !Number.isSafeInteger(length) || gpa < 0 || length < 0) {
      throw new GuestMemoryError(`guest address 0x${gpa.toString(16)}+${length} is invalid`);
    }
    const i = this.regionIndexOf(gpa, length);
    if (i < 0) throw new GuestMemoryError(`guest range 0x${gpa.toString(16)}+0x${length.toString(16)} is outside guest memory`);
    const r = this.list[i];
    if (forWrite && r.readonly) throw new GuestMemoryError(`guest range 0x${gpa.toString(16)} is read-only (${r.name})`);
    const start = gpa - r.guestBase;
    return this.views[i].subarray(start, start + length);
  }

  read(gpa: number, length: number): Uint8Array {
    return this.slice(gpa, length).slice();
  }

  write(gpa: number, data: Uint8Array): void {
    this.slice(gpa, data.length, true).set(data);
  }

  readU32(gpa: number): number {
    const b = this.slice(gpa, 4);
    return (b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)) >>> 0;
  }

  writeU32(gpa: number, value: number): void {
    const b = this.slice(gpa, 4, true);
    b[0] = value; b[1] = value >>> 8; b[2] = value >>> 16; b[3] = value >>> 24;
  }

  readU64(gpa: number): bigint {
    return BigInt(this.readU32(gpa)) | (BigInt(this.readU32(gpa + 4)) << 32n);
  }

  writeU64(gpa: number, value: bigint): void {
    this.writeU32(gpa, Number(value & 0xffffffffn));
    this.writeU32(gpa + 4, Number((value >> 32n) & 0xffffffffn));
  }

  /** RAM ranges for e820 (ROM windows excluded). */
  ramRanges(): { base: number; size: number }[] {
    return this.regions.filter((r) => !r.readonly).map((r) => ({ base: r.guestBase, size: r.size }));
  }
}

/** Allocates RAM for a guest of `ramBytes`, split around the PCI hole. */
export function allocateRam(ramBytes: number): MemoryRegion[] {
  if (!Number.isSafeInteger(ramBytes) || ramBytes < 2 * MiB || ramBytes % (4096) !== 0) {
    throw new Error(`memory size ${ramBytes} bytes must be a multiple of 4 KiB and at least 2 MiB`);
  }
  const low = Math.min(ramBytes, PCI_HOLE_START);
  const regions: MemoryRegion[] = [];
  const lowBlock = new GuestRamBlock(low);
  regions.push({ guestBase: 0, size: low, buffer: lowBlock.buffer, offset: lowBlock.offset, readonly: false, name: 'ram-low' });
  let rest = ramBytes - low;
  let base = FOUR_GIB;
  // One SharedArrayBuffer may not exceed what V8 allows; split high RAM into 2 GiB blocks.
  while (rest > 0) {
    const size = Math.min(rest, 2 * GiB);
    const block = new GuestRamBlock(size);
    regions.push({ guestBase: base, size, buffer: block.buffer, offset: block.offset, readonly: false, name: 'ram-high' });
    base += size;
    rest -= size;
  }
  return regions;
}

/** A ROM window: a private copy of `image` at guestBase, read-only to the guest. */
export function allocateRom(guestBase: number, image: Uint8Array, name: string): MemoryRegion {
  const size = Math.ceil(image.length / 4096) * 4096;
  const block = new GuestRamBlock(size);
  block.bytes.set(image, size - image.length);
  return { guestBase, size, buffer: block.buffer, offset: block.offset, readonly: true, name };
}

/** The host address of a region's first byte (for KVM_SET_USER_MEMORY_REGION). */
export function hostAddressOf(r: MemoryRegion): bigint {
  return libc.addressOf(new Uint8Array(r.buffer, r.offset, 1));
}

/**
 * Writes each RAM region to `${file}.${guest base in hex}` (a file already there is kept: the
 * first dump is the one to read). Returns one line per region for the VM's log.
 */
export function dumpRam(file: string, regions: readonly MemoryRegion[]): string[] {
  const lines: string[] = [];
  for (const r of regions) {
    const out = `${file}.${r.guestBase.toString(16)}`;
    if (fs.existsSync(out)) {
      lines.push(`${out} exists already; guest RAM at 0x${r.guestBase.toString(16)} not written`);
      continue;
    }
    try {
      fs.writeFileSync(out, new Uint8Array(r.buffer, r.offset, r.size));
      lines.push(`guest RAM at 0x${r.guestBase.toString(16)} (${r.size} bytes) written to ${out}`);
    } catch (e) {
      lines.push(`could not write guest RAM to ${out}: ${(e as Error).message}`);
    }
  }
  return lines;
}
