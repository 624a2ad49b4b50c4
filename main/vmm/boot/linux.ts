// Linux direct boot (Documentation/arch/x86/boot.rst): a bzImage (boot protocol 2.06+)
// entered at its 64-bit entry point in long mode (or its 32-bit entry point in flat
// protected mode when it is not a 64-bit kernel), or an uncompressed ELF64 vmlinux
// entered at e_entry in long mode. The loader also writes the zero page, command line,
// initrd, e820 map, MP and ACPI tables. Everything read from the image is checked: a
// malformed kernel gives a KernelImageError naming the file, never a RangeError.
import { close, closeSync, existsSync, fstat, open, read, readSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import type { KvmVcpu } from '../../../native';
import { buildAcpiTables, IAPC_BOOT_ARCH, type AcpiOptions } from '../platform/acpi';
import { buildE820, type E820Entry } from '../platform/e820';
import type { BootSource } from '../config';
import type { BootTarget } from './boot-target';
import type { GuestMemory } from '../memory/guest-memory';
import { buildMpTable, type PciIrqWire } from '../platform/mptable';
import { ACPI_SCI_IRQ } from '../platform/layout';
import { pciIrqWiringOf } from '../devices/pci';
import {
  buildBootGdt, buildIdentityPageTables, CPUID_FEATURES, type CpuidFeature, type CpuMode, enterAt, setBootMsrs, setupLegacyLapic,
  withoutCpuidFeatures,
} from './x86-setup';

export class KernelImageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KernelImageError';
  }
}

const MiB = 0x100000;

/** Where the loader puts its own structures (all below 1 MiB, in e820 RAM or the BIOS area). */
export const LINUX_BOOT_LAYOUT = {
  GDT: 0x500,
  ZERO_PAGE: 0x7000,
  STACK_TOP: 0x8ff0,
  PAGE_TABLES: 0x9000,
  CMDLINE: 0x20000,
  /** Command lines end before the EBDA. */
  CMDLINE_LIMIT: 0x9fc00,
} as const;
/** Identity map size: at least the first 4 GiB (MMIO included). */
const IDENTITY_MAP_GIB = 4;

/** Offsets in struct setup_header, counted from the start of the image / zero page. */
const HDR = {
  SETUP_SECTS: 0x1f1,
  BOOT_FLAG: 0x1fe,
  JUMP: 0x200,
  HEADER: 0x202,
  VERSION: 0x206,
  TYPE_OF_LOADER: 0x210,
  LOADFLAGS: 0x211,
  CODE32_START: 0x214,
  RAMDISK_IMAGE: 0x218,
  RAMDISK_SIZE: 0x21c,
  HEAP_END_PTR: 0x224,
  CMD_LINE_PTR: 0x228,
  INITRD_ADDR_MAX: 0x22c,
  KERNEL_ALIGNMENT: 0x230,
  RELOCATABLE_KERNEL: 0x234,
  XLOADFLAGS: 0x236,
  CMDLINE_SIZE: 0x238,
  PREF_ADDRESS: 0x258,
  INIT_SIZE: 0x260,
} as const;
/** Offsets in struct boot_params outside the setup header. */
const BP = {
  ACPI_RSDP_ADDR: 0x070,
  EXT_RAMDISK_IMAGE: 0x0c0,
  EXT_RAMDISK_SIZE: 0x0c4,
  EXT_CMD_LINE_PTR: 0x0c8,
  E820_ENTRIES: 0x1e8,
  /** The setup header may not run past here (edd_mbr_sig_buffer). */
  SETUP_HEADER_LIMIT: 0x290,
  E820_TABLE: 0x2d0,
  E820_MAX: 128,
  SIZE: 0x1000,
} as const;

const HDRS_MAGIC = 0x53726448; // "HdrS"
const LOADED_HIGH = 0x01;
const CAN_USE_HEAP = 0x80;
const XLF_KERNEL_64 = 0x01;
const LOADER_TYPE_UNDEFINED = 0xff;
export const MIN_PROTOCOL = 0x206;
/** Protocol version written into the header synthesised for an ELF vmlinux. */
export const ELF_SYNTHETIC_PROTOCOL = 0x20f;
/** x86 COMMAND_LINE_SIZE is 2048; cmdline_size excludes the terminating NUL. */
const ELF_CMDLINE_SIZE = 2047;
const ELF_INITRD_ADDR_MAX = 0x7fffffff;

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

function protocolText(version: number): string {
  return `${version >> 8}.${(version & 0xff).toString().padStart(2, '0')}`;
}

/** Bounds-checked little-endian reads of an untrusted file. */
class ImageReader {
  constructor(readonly bytes: Uint8Array, private readonly what: string) {}
  private need(offset: number, size: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + size > this.bytes.length) {
      throw new KernelImageError(`${this.what} is truncated: needs ${size} bytes at offset ${hex(offset)} but has ${this.bytes.length}`);
    }
  }
  u8(o: number): number {
    this.need(o, 1);
    return this.bytes[o];
  }
  u16(o: number): number {
    this.need(o, 2);
    return this.bytes[o] | (this.bytes[o + 1] << 8);
  }
  u32(o: number): number {
    this.need(o, 4);
    return (this.bytes[o] | (this.bytes[o + 1] << 8) | (this.bytes[o + 2] << 16) | (this.bytes[o + 3] << 24)) >>> 0;
  }
  /** A 64-bit field that must fit a JS safe integer (no guest address needs more). */
  u64(o: number, field: string): number {
    const value = this.u32(o) + this.u32(o + 4) * 0x100000000;
    if (!Number.isSafeInteger(value)) throw new KernelImageError(`${this.what}: ${field} ${hex(value)} is out of range`);
    return value;
  }
  /** A 64-bit field that may be a kernel virtual address. */
  u64big(o: number): bigint {
    return BigInt(this.u32(o)) | (BigInt(this.u32(o + 4)) << 32n);
  }
  slice(offset: number, length: number): Uint8Array {
    this.need(offset, length);
    return this.bytes.subarray(offset, offset + length);
  }
}

export interface BzImage {
  format: 'bzImage';
  protocol: number;
  /** Setup header bytes from 0x1f1 to its end, copied into the zero page. */
  setupHeader: Uint8Array;
  /** The protected-mode kernel (everything after the setup sectors). */
  kernel: Uint8Array;
  is64: boolean;
  relocatable: boolean;
  alignment: number;
  prefAddress: number;
  /** Memory the kernel needs from its load address while decompressing. */
  initSize: number;
  cmdlineSize: number;
  initrdAddrMax: number;
}

export interface ElfSegment {
  paddr: number;
  /** Where the segment's file bytes start in the kernel file, and how many there are. */
  offset: number;
  filesz: number;
  /** The file bytes, when the parsed bytes hold them (else they are read from the file). */
  data?: Uint8Array;
  memsz: number;
}

export interface ElfKernel {
  format: 'elf';
  segments: ElfSegment[];
  /** Physical entry point. */
  entry: number;
}

export type KernelImage = BzImage | ElfKernel;

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

export function parseBzImage(bytes: Uint8Array, name: string): BzImage {
  const what = `kernel ${name}`;
  const r = new ImageReader(bytes, what);
  const protocol = r.u16(HDR.VERSION);
  if (protocol < MIN_PROTOCOL) {
    throw new KernelImageError(`${what} uses boot protocol ${protocolText(protocol)}; Porthole needs ${protocolText(MIN_PROTOCOL)} or newer`);
  }
  if (!(r.u8(HDR.LOADFLAGS) & LOADED_HIGH)) {
    throw new KernelImageError(`${what} is a zImage (loaded below 1 MiB); only bzImage kernels can be booted`);
  }
  const setupSects = r.u8(HDR.SETUP_SECTS) || 4;
  const kernelOffset = (setupSects + 1) * 512;
  if (kernelOffset >= bytes.length) {
    throw new KernelImageError(`${what} is truncated: its ${setupSects} setup sectors leave no protected-mode kernel`);
  }
  // The header ends at 0x202 + the jump offset in byte 0x201; never past boot_params' limit.
  const headerEnd = Math.min(HDR.HEADER + r.u8(HDR.JUMP + 1), BP.SETUP_HEADER_LIMIT, bytes.length);
  const setupHeader = bytes.slice(HDR.SETUP_SECTS, headerEnd);
  const relocatable = r.u8(HDR.RELOCATABLE_KERNEL) !== 0;
  const alignment = r.u32(HDR.KERNEL_ALIGNMENT);
  if (relocatable && !isPowerOfTwo(alignment)) {
    throw new KernelImageError(`${what} has an invalid kernel_alignment ${hex(alignment)}`);
  }
  const kernel = bytes.subarray(kernelOffset);
  const hasPref = protocol >= 0x20a;
  const prefAddress = hasPref ? r.u64(HDR.PREF_ADDRESS, 'pref_address') : MiB;
  // Before 2.10 the decompressor's needs are not stated; 4x the compressed size is generous.
  const initSize = hasPref ? r.u32(HDR.INIT_SIZE) : kernel.length * 4;
  return {
    format: 'bzImage',
    protocol,
    setupHeader,
    kernel,
    is64: protocol >= 0x20c && (r.u16(HDR.XLOADFLAGS) & XLF_KERNEL_64) !== 0,
    relocatable,
    alignment: relocatable ? alignment : MiB,
    prefAddress,
    initSize: Math.max(initSize, kernel.length),
    cmdlineSize: r.u32(HDR.CMDLINE_SIZE),
    initrdAddrMax: r.u32(HDR.INITRD_ADDR_MAX),
  };
}

const ELF_CLASS64 = 2;
const ELF_DATA_LE = 1;
const ELF_TYPE_EXEC = 2;
const ELF_MACHINE_X86_64 = 62;
const ELF_PHDR_SIZE = 56;
const PT_LOAD = 1;
const ELF_MAX_PHDRS = 256;

/**
 * Parses an ELF vmlinux from `bytes`, the file's start (its headers at least); `fileSize` is
 * the whole file's, so segments past `bytes` are checked against it and read later.
 */
export function parseElfKernel(bytes: Uint8Array, name: string, fileSize = bytes.length): ElfKernel {
  const what = `kernel ${name}`;
  const r = new ImageReader(bytes, what);
  const elfClass = r.u8(4);
  const machine = r.u16(18);
  if (elfClass !== ELF_CLASS64 || r.u8(5) !== ELF_DATA_LE || machine !== ELF_MACHINE_X86_64) {
    throw new KernelImageError(`${what} is an ELF file for another machine (class ${elfClass}, machine ${machine}); only x86_64 (ELF64) kernels can be booted`);
  }
  if (r.u16(16) !== ELF_TYPE_EXEC) throw new KernelImageError(`${what} is an ELF file but not an executable vmlinux`);
  const entry = r.u64big(0x18);
  const phoff = r.u64(0x20, 'e_phoff');
  const phentsize = r.u16(0x36);
  const phnum = r.u16(0x38);
  if (phentsize !== ELF_PHDR_SIZE || phnum === 0 || phnum > ELF_MAX_PHDRS) {
    throw new KernelImageError(`${what} has a malformed program header table (${phnum} entries of ${phentsize} bytes)`);
  }
  r.slice(phoff, phnum * ELF_PHDR_SIZE);
  const segments: (ElfSegment & { vaddr: bigint })[] = [];
  for (let i = 0; i < phnum; i++) {
    const p = phoff + i * ELF_PHDR_SIZE;
    if (r.u32(p) !== PT_LOAD) continue;
    const offset = r.u64(p + 8, `segment ${i} p_offset`);
    const vaddr = r.u64big(p + 16);
    const paddr = r.u64(p + 24, `segment ${i} p_paddr`);
    const filesz = r.u64(p + 32, `segment ${i} p_filesz`);
    const memsz = r.u64(p + 40, `segment ${i} p_memsz`);
    if (filesz > memsz) throw new KernelImageError(`${what}: segment ${i} has more file bytes (${filesz}) than memory bytes (${memsz})`);
    if (offset + filesz > fileSize) {
      throw new KernelImageError(`${what} is truncated: segment ${i} needs bytes up to ${hex(offset + filesz)} but the file has ${fileSize}`);
    }
    const data = offset + filesz <= bytes.length ? bytes.subarray(offset, offset + filesz) : undefined;
    segments.push({ paddr, vaddr, offset, filesz, data, memsz });
  }
  if (segments.length === 0) throw new KernelImageError(`${what} has no loadable segments`);
  // vmlinux's e_entry is physical already; a virtual one is translated through its segment.
  const inside = (a: bigint, base: bigint, size: number) => a >= base && a < base + BigInt(size);
  let physEntry = -1;
  const physical = segments.find((seg) => inside(entry, BigInt(seg.paddr), seg.memsz));
  const virtual = segments.find((seg) => inside(entry, seg.vaddr, seg.memsz));
  if (physical) physEntry = Number(entry);
  else if (virtual) physEntry = Number(entry - virtual.vaddr) + virtual.paddr;
  if (physEntry < 0) throw new KernelImageError(`${what}: entry point 0x${entry.toString(16)} is not inside any loadable segment`);
  return { format: 'elf', segments: segments.map(({ vaddr: _vaddr, ...seg }) => seg), entry: physEntry };
}

function isElf(bytes: Uint8Array): boolean {
  return bytes.length >= 4 && bytes[0] === 0x7f && bytes[1] === 0x45 && bytes[2] === 0x4c && bytes[3] === 0x46;
}

/** An open kernel file whose ELF segments are read straight into guest RAM. */
export interface KernelFile {
  fd: number;
  size: number;
}

/** Reads the whole of `into` from `fd` at `position`; a short file is a truncated kernel. */
function readSegment(fd: number, into: Uint8Array, position: number, what: string): void {
  let done = 0;
  while (done < into.length) {
    const n = readSync(fd, into, done, into.length - done, position + done);
    if (n === 0) throw new KernelImageError(`${what} is truncated: it ended at ${hex(position + done)} while its segments were read`);
    done += n;
  }
}

/** Recognises a bzImage ("HdrS" + 0xAA55) or an ELF vmlinux. */
export function parseKernelImage(bytes: Uint8Array, name: string, file?: KernelFile): KernelImage {
  const r = new ImageReader(bytes, `kernel ${name}`);
  if (isElf(bytes)) return parseElfKernel(bytes, name, file?.size);
  if (file !== undefined && file.size !== bytes.length) throw new KernelImageError(`kernel ${name}: only an ELF vmlinux is read in parts`);
  if (bytes.length >= HDR.VERSION + 2 && r.u16(HDR.BOOT_FLAG) === 0xaa55 && r.u32(HDR.HEADER) === HDRS_MAGIC) {
    return parseBzImage(bytes, name);
  }
  throw new KernelImageError(`kernel ${name} is not a bzImage or ELF vmlinux`);
}

export interface LinuxLoadOptions {
  /** The kernel file's bytes; with kernelFile only its start (an ELF's headers). */
  kernel: Uint8Array;
  kernelName: string;
  /** The open kernel file: an ELF's segments beyond `kernel` are read from it into guest RAM. */
  kernelFile?: KernelFile;
  initrd?: Uint8Array;
  initrdName?: string;
  cmdline: string;
  cpus: number;
  /** Extra ACPI inputs (8042 present, PCI wiring). */
  acpi?: Omit<AcpiOptions, 'cpus'>;
  /** ISA IRQs the MP table describes as level-triggered (default: the ACPI SCI). */
  levelIsaIrqs?: number[];
}

export interface LinuxLoadResult {
  format: KernelImage['format'];
  /** Boot protocol of the image (the synthesised one for ELF). */
  protocol: number;
  mode: CpuMode;
  entry: number;
  zeroPage: number;
  gdt: number;
  pageTables: number;
  stack: number;
  kernelStart: number;
  kernelEnd: number;
  cmdline: number;
  initrd: { address: number; size: number } | null;
  rsdp: number;
  mpTable: number;
  e820: E820Entry[];
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/** End of the RAM block that contains 1 MiB: where the kernel, initrd and low tables live. */
function lowRamEnd(memory: GuestMemory): number {
  const r = memory.ramRanges().find((x) => x.base <= MiB && x.base + x.size > MiB);
  return r ? r.base + r.size : 0;
}

function ramRangeText(memory: GuestMemory): string {
  return `guest RAM ends at ${hex(lowRamEnd(memory))} below 4 GiB`;
}

/** Chooses where a bzImage's protected-mode kernel goes. */
function bzImageLoadAddress(img: BzImage, memory: GuestMemory, name: string): number {
  const candidates = img.relocatable
    ? [img.prefAddress, alignUp(MiB, img.alignment)]
    : [img.prefAddress, MiB];
  for (const at of candidates) {
    if (at < MiB || (img.relocatable && at % img.alignment !== 0)) continue;
    if (memory.contains(at, img.initSize)) return at;
  }
  throw new KernelImageError(
    `kernel ${name} needs ${Math.ceil(img.initSize / MiB)} MiB from ${hex(candidates[0])} but ${ramRangeText(memory)}: give the VM more memory`,
  );
}

function writeE820(zeroPage: Buffer, entries: E820Entry[]): void {
  if (entries.length > BP.E820_MAX) throw new Error(`the memory map has ${entries.length} entries; the zero page holds ${BP.E820_MAX}`);
  zeroPage[BP.E820_ENTRIES] = entries.length;
  entries.forEach((e, i) => {
    const o = BP.E820_TABLE + i * 20;
    zeroPage.writeBigUInt64LE(BigInt(e.addr), o);
    zeroPage.writeBigUInt64LE(BigInt(e.size), o + 8);
    zeroPage.writeUInt32LE(e.type, o + 16);
  });
}

/** The setup header a bzImage would carry, for an ELF kernel that has none. */
function syntheticSetupHeader(): Uint8Array {
  const zp = Buffer.alloc(BP.SETUP_HEADER_LIMIT);
  zp.writeUInt16LE(0xaa55, HDR.BOOT_FLAG);
  zp.writeUInt32LE(HDRS_MAGIC, HDR.HEADER);
  zp.writeUInt16LE(ELF_SYNTHETIC_PROTOCOL, HDR.VERSION);
  zp.writeUInt32LE(0x1000000, HDR.KERNEL_ALIGNMENT);
  zp.writeUInt32LE(ELF_INITRD_ADDR_MAX, HDR.INITRD_ADDR_MAX);
  zp.writeUInt32LE(ELF_CMDLINE_SIZE, HDR.CMDLINE_SIZE);
  zp.writeUInt16LE(XLF_KERNEL_64, HDR.XLOADFLAGS);
  zp[HDR.LOADFLAGS] = LOADED_HIGH;
  return zp.subarray(HDR.SETUP_SECTS, HDR.INIT_SIZE + 4);
}

/**
 * Loads a kernel (and initrd) into guest memory with everything Linux reads at boot:
 * zero page, command line, e820, GDT, identity page tables, MP table and ACPI tables.
 * Pure with respect to KVM: only `memory` is touched.
 */
export function loadLinux(memory: GuestMemory, opts: LinuxLoadOptions): LinuxLoadResult {
  const L = LINUX_BOOT_LAYOUT;
  const image = parseKernelImage(opts.kernel, opts.kernelName, opts.kernelFile);
  const zp = Buffer.alloc(BP.SIZE);

  let mode: CpuMode;
  let entry: number;
  let kernelStart: number;
  let kernelEnd: number;
  let cmdlineSize: number;
  let initrdAddrMax: number;
  let protocol: number;
  if (image.format === 'bzImage') {
    const at = bzImageLoadAddress(image, memory, opts.kernelName);
    memory.write(at, image.kernel);
    zp.set(image.setupHeader, HDR.SETUP_SECTS);
    zp.writeUInt32LE(at, HDR.CODE32_START);
    mode = image.is64 ? 'long' : 'protected';
    // The 64-bit entry point is 0x200 past the 32-bit one.
    entry = image.is64 ? at + 0x200 : at;
    kernelStart = at;
    kernelEnd = at + image.initSize;
    cmdlineSize = image.cmdlineSize;
    initrdAddrMax = image.initrdAddrMax;
    protocol = image.protocol;
  } else {
    kernelStart = Infinity;
    kernelEnd = 0;
    for (const s of image.segments) {
      if (s.paddr < MiB || !memory.contains(s.paddr, s.memsz)) {
        throw new KernelImageError(
          `kernel ${opts.kernelName}: segment at ${hex(s.paddr)} (${s.memsz} bytes) is outside guest RAM above 1 MiB (${ramRangeText(memory)})`,
        );
      }
      kernelStart = Math.min(kernelStart, s.paddr);
      kernelEnd = Math.max(kernelEnd, s.paddr + s.memsz);
    }
    for (const s of image.segments) {
      const dest = memory.slice(s.paddr, s.filesz, true);
      if (s.data) dest.set(s.data);
      else if (opts.kernelFile) readSegment(opts.kernelFile.fd, dest, s.offset, `kernel ${opts.kernelName}`);
      else throw new KernelImageError(`kernel ${opts.kernelName} is truncated at segment ${hex(s.paddr)}`);
      memory.slice(s.paddr + s.filesz, s.memsz - s.filesz, true).fill(0);
    }
    zp.set(syntheticSetupHeader(), HDR.SETUP_SECTS);
    mode = 'long';
    entry = image.entry;
    cmdlineSize = ELF_CMDLINE_SIZE;
    initrdAddrMax = ELF_INITRD_ADDR_MAX;
    protocol = ELF_SYNTHETIC_PROTOCOL;
  }

  zp[HDR.TYPE_OF_LOADER] = LOADER_TYPE_UNDEFINED;
  zp[HDR.LOADFLAGS] |= LOADED_HIGH | CAN_USE_HEAP;
  zp.writeUInt16LE(0xfe00, HDR.HEAP_END_PTR);

  const cmdline = Buffer.from(opts.cmdline, 'utf8');
  if (cmdline.includes(0)) throw new KernelImageError('the kernel command line contains a NUL character');
  const cmdlineLimit = Math.min(cmdlineSize, L.CMDLINE_LIMIT - L.CMDLINE - 1);
  if (cmdline.length > cmdlineLimit) {
    throw new KernelImageError(`the kernel command line is ${cmdline.length} bytes; kernel ${opts.kernelName} accepts at most ${cmdlineLimit}`);
  }
  memory.write(L.CMDLINE, Buffer.concat([cmdline, Buffer.alloc(1)]));
  zp.writeUInt32LE(L.CMDLINE, HDR.CMD_LINE_PTR);
  zp.writeUInt32LE(0, BP.EXT_CMD_LINE_PTR);

  let initrd: LinuxLoadResult['initrd'] = null;
  if (opts.initrd) {
    const size = opts.initrd.length;
    const what = opts.initrdName ? `initrd ${opts.initrdName}` : 'the initrd';
    if (size === 0) throw new KernelImageError(`${what} is empty`);
    // initrd_addr_max is the highest address the initrd's last byte may have.
    const limit = Math.min(initrdAddrMax + 1, lowRamEnd(memory));
    const address = Math.floor((limit - size) / 4096) * 4096;
    const floor = alignUp(kernelEnd, 4096);
    if (address < floor) {
      throw new KernelImageError(
        `${what} (${size} bytes) does not fit below ${hex(limit)} above the kernel (which ends at ${hex(floor)}): give the VM more memory`,
      );
    }
    memory.write(address, opts.initrd);
    zp.writeUInt32LE(address, HDR.RAMDISK_IMAGE);
    zp.writeUInt32LE(size, HDR.RAMDISK_SIZE);
    zp.writeUInt32LE(0, BP.EXT_RAMDISK_IMAGE);
    zp.writeUInt32LE(0, BP.EXT_RAMDISK_SIZE);
    initrd = { address, size };
  }

  const e820 = buildE820(memory);
  writeE820(zp, e820);

  const acpi = buildAcpiTables({ cpus: opts.cpus, ...opts.acpi });
  for (const blob of acpi.blobs) memory.write(blob.address, blob.bytes);
  zp.writeBigUInt64LE(BigInt(acpi.rsdpAddress), BP.ACPI_RSDP_ADDR);
  const mp = buildMpTable({ cpus: opts.cpus, levelIsaIrqs: opts.levelIsaIrqs ?? [ACPI_SCI_IRQ], pciIrqs: opts.acpi?.pci?.irqs });
  memory.write(mp.address, mp.bytes);

  memory.write(L.GDT, buildBootGdt(mode));
  if (mode === 'long') {
    const pt = buildIdentityPageTables(L.PAGE_TABLES, IDENTITY_MAP_GIB);
    memory.write(pt.address, pt.bytes);
  }
  memory.write(L.ZERO_PAGE, zp);

  return {
    format: image.format, protocol, mode, entry, zeroPage: L.ZERO_PAGE, gdt: L.GDT, pageTables: L.PAGE_TABLES,
    stack: L.STACK_TOP, kernelStart, kernelEnd, cmdline: L.CMDLINE, initrd, rsdp: acpi.rsdpAddress, mpTable: mp.address, e820,
  };
}

/** A kernel as read for loading: all its bytes, or an open ELF file's headers and the file. */
export interface KernelInput {
  bytes: Uint8Array;
  file?: KernelFile;
}

/** How much of a kernel file is read first: an ELF vmlinux's headers fit in it. */
const KERNEL_HEAD_BYTES = 64 * 1024;

/**
 * Reads a kernel file. A bzImage is read whole; an ELF vmlinux (tens of MB) only up to its
 * program headers and kept open, so loadLinux reads its segments straight into guest RAM.
 */
export async function readKernelInput(file: string): Promise<KernelInput> {
  // A raw fd, not a FileHandle: one left to the garbage collector would be closed under us.
  const fd = await promisify(open)(file, 'r');
  let keepOpen = false;
  try {
    const size = (await promisify(fstat)(fd)).size;
    const readAt = async (length: number): Promise<Buffer> => {
      const buf = Buffer.alloc(length);
      const { bytesRead } = await promisify(read)(fd, buf, 0, length, 0);
      return buf.subarray(0, bytesRead);
    };
    const head = await readAt(Math.min(size, KERNEL_HEAD_BYTES));
    if (!isElf(head) || head.length < 0x40) return { bytes: await readFile(file) };
    const phEnd = Number(head.readBigUInt64LE(0x20)) + head.readUInt16LE(0x38) * head.readUInt16LE(0x36);
    const bytes = phEnd > head.length && phEnd <= size ? await readAt(phEnd) : head;
    keepOpen = true;
    return { bytes, file: { fd, size } };
  } finally {
    // An ELF kernel's fd is closed by closeKernelInput once its segments are read.
    if (!keepOpen) await promisify(close)(fd);
  }
}

export function closeKernelInput(input: KernelInput | undefined): void {
  if (input?.file) closeSync(input.file.fd);
}

/** Reads started by prefetchLinuxFiles, taken (once) by readInput. */
const prefetched = new Map<string, Promise<KernelInput>>();

/**
 * Starts reading a Linux boot's kernel and initrd, so the reads (slow from a network or 9p
 * filesystem) overlap with creating the VM and its vCPUs. A failed read is reported where
 * bootLinux takes it, with the same message as without prefetching.
 */
export function prefetchLinuxFiles(boot: BootSource): void {
  if (boot.kind !== 'linux') return;
  for (const [file, isKernel] of [[boot.kernel, true], [boot.initrd, false]] as const) {
    if (file === undefined || prefetched.has(file)) continue;
    const read = readWholeOrKernel(file, isKernel);
    read.catch(() => { /* handled in readInput */ });
    prefetched.set(file, read);
  }
}

async function readWholeOrKernel(file: string, isKernel: boolean): Promise<KernelInput> {
  return isKernel ? readKernelInput(file) : { bytes: await readFile(file) };
}

async function readInput(file: string, what: 'kernel' | 'initrd'): Promise<KernelInput> {
  try {
    const early = prefetched.get(file);
    prefetched.delete(file);
    return await (early ?? readWholeOrKernel(file, what === 'kernel'));
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const reason = err.code === 'ENOENT' ? 'no such file' : err.code === 'EACCES' ? 'permission denied'
      : err.code === 'EISDIR' ? 'it is a directory' : err.code ?? err.message;
    throw new KernelImageError(`cannot read ${what} ${file}: ${reason}`);
  }
}

/**
 * CPU features Linux uses when CPUID offers them but that a PVM host (KVM without
 * VMX/SVM, which emulates guest kernel code) refuses to emulate, so the guest would
 * stop with a KVM emulation error. Hidden only there; real VMX/SVM hosts keep them.
 */
export const PVM_HIDDEN_FEATURES: readonly CpuidFeature[] = [
  // SLUB's lockless fast path uses cmpxchg16b when CX16 is present.
  CPUID_FEATURES.CX16,
  // XSAVE, AVX, SSE4.2 and POPCNT cannot be hidden: PVM's KVM_SET_CPUID2 puts the host's
  // leaf 1 bits back. A guest can still avoid xsave with the `noxsave` parameter.
];

/** PIRQ A..D steering for guests booted without firmware: SeaBIOS's choice, so both boots look alike. */
export const DIRECT_BOOT_PIRQ_IRQS: readonly number[] = [10, 10, 11, 11];

/** Every INTx pin of slots 1..31 through the i440FX/PIIX swizzle to the IRQ its PIRQ is steered to. */
export function pciIrqWiring(pirqIrqs: readonly number[]): PciIrqWire[] {
  return pciIrqWiringOf(pirqIrqs);
}

/** True when /dev/kvm is PVM (the kvm_pvm module), whose instruction emulator is partial. */
export function hostIsPvm(): boolean {
  return existsSync('/sys/module/kvm_pvm');
}

/** Boots `boot.kernel` on `machine`: loads it and puts the BSP at its entry point. */
export async function bootLinux(
  machine: BootTarget, vcpus: KvmVcpu[], boot: { kernel: string; initrd?: string; append: string },
): Promise<LinuxLoadResult> {
  const [kernelRead, initrdRead] = await Promise.allSettled([
    readInput(boot.kernel, 'kernel'),
    boot.initrd === undefined ? Promise.resolve(undefined) : readInput(boot.initrd, 'initrd'),
  ]);
  if (kernelRead.status === 'rejected') throw kernelRead.reason;
  const kernel = kernelRead.value;
  if (initrdRead.status === 'rejected') {
    closeKernelInput(kernel);
    throw initrdRead.reason;
  }
  const initrd = initrdRead.value;
  // No firmware will program the PIIX3's PIRQ routing: do it here, as the tables say.
  machine.devices.pci?.isaBridge.routePirqs(DIRECT_BOOT_PIRQ_IRQS);
  // Each device describes itself (the PCI root bridge its INTx wiring as just routed).
  const tables = machine.devices.tables();
  let result: LinuxLoadResult;
  try {
    result = loadLinux(machine.memory, {
      kernel: kernel.bytes, kernelFile: kernel.file, kernelName: boot.kernel, initrd: initrd?.bytes, initrdName: boot.initrd,
      cmdline: boot.append, cpus: machine.cpuCount,
      acpi: { has8042: ((tables.bootArch ?? 0) & IAPC_BOOT_ARCH.I8042) !== 0, pci: tables.pciRoot },
      levelIsaIrqs: tables.levelIsaIrqs,
    });
  } finally {
    closeKernelInput(kernel);
  }
  const pvm = hostIsPvm();
  if (pvm) machine.log(`linux boot: PVM host, hiding ${PVM_HIDDEN_FEATURES.map((f) => f.name).join(', ')} from the guest`);
  for (const vcpu of vcpus) {
    if (pvm) vcpu.setCpuid2(withoutCpuidFeatures(vcpu.getCpuid2(), PVM_HIDDEN_FEATURES));
    const refused = setBootMsrs(vcpu);
    if (refused.length > 0) machine.log(`linux boot: KVM refused MSRs ${refused.map(hex).join(', ')}`);
  }
  // APs stay in KVM's wait-for-SIPI state; Linux starts them with INIT-SIPI-SIPI.
  setupLegacyLapic(vcpus[0]);
  enterAt(vcpus[0], {
    mode: result.mode, gdtBase: result.gdt, cr3: result.mode === 'long' ? result.pageTables : undefined,
    entry: result.entry, stack: result.stack, rsi: result.zeroPage,
  });
  machine.log(`linux boot: ${result.format} (protocol ${protocolText(result.protocol)}) at ${hex(result.kernelStart)}, `
    + `entry ${hex(result.entry)} in ${result.mode} mode${result.initrd ? `, initrd ${result.initrd.size} bytes at ${hex(result.initrd.address)}` : ''}`);
  return result;
}
