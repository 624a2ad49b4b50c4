// qcow2 images (QEMU's docs/interop/qcow2.txt), versions 2 and 3, as a BlockBackend.
//
// What is covered: L1/L2 tables, refcount tables and blocks of any refcount width (v3
// refcount_order 0..6), allocation on write, backing files (raw or qcow2, read-only, a
// relative name resolved against the image's folder), v3 zero clusters, discard, reading
// zlib-compressed clusters (a write over one copies it to a plain cluster). Refused with an
// ImageError before boot: encryption, external data files, extended L2 entries, compression
// types other than zlib, unknown incompatible features; for writing also: internal snapshots,
// the dirty bit (lazy refcounts left inconsistent) and the corrupt bit.
//
// Consistency without a dirty bit: refcounts are always exact. Metadata is cached and written
// back on flush (and on close) in an order that keeps the file consistent after a crash:
// guest data and refcount increases go to disk first (fdatasync), then the L2/L1 entries that
// point at the new clusters (fdatasync), and only then the refcount decreases of clusters that
// a discard or copy-on-write let go. A cluster waiting for its decrease is not reused, so no
// on-disk L2 entry ever points at a cluster that holds someone else's data.
//
// The image is read and written with synchronous calls (the machine thread needs that, see
// RawImageOptions.synchronous); without `synchronous` the completion comes in a microtask.
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { libc } from '../../../../native';
import {
  ImageError, RawImageFile,
  type BlockBackend, type BlockDoneCallback, type BlockReadCallback, type LendableImage,
} from '../usb/storage/block-backend';

export const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"

const INCOMPAT_DIRTY = 1;
const INCOMPAT_CORRUPT = 2;
const INCOMPAT_DATA_FILE = 4;
const INCOMPAT_COMPRESSION = 8;
const INCOMPAT_EXTL2 = 16;
const EXT_BACKING_FORMAT = 0xe2792aca;
const EXT_DATA_FILE = 0x44415441;
const EXT_CRYPTO = 0x0537be77;

const TWO32 = 0x100000000;
/** Bits 9..55 of an L1/L2 entry's high word. */
const OFFSET_HI_MASK = 0x00ffffff;
const COPIED_HI = 0x80000000;
const COMPRESSED_HI = 0x40000000;
const ZERO_LO = 1;

/** QEMU's own ceilings: L1 at most 32 MiB, the refcount table at most 8 MiB. */
const MAX_L1_BYTES = 32 * 1024 * 1024;
const MAX_REFTABLE_BYTES = 8 * 1024 * 1024;
const MAX_BACKING_DEPTH = 16;
/** Dirty metadata above this is written back (in the safe order) without waiting for a flush. */
const MAX_DIRTY_METADATA = 32 * 1024 * 1024;
/** Clean cached tables above this are dropped. */
const MAX_CLEAN_CACHE = 64 * 1024 * 1024;

export interface Qcow2Options {
  readOnly?: boolean;
  synchronous?: boolean;
  /** Set by the factory: opens a backing file (raw or qcow2), read-only. */
  openBacking?: (file: string, format: 'raw' | 'qcow2' | undefined, depth: number) => BlockBackend;
  /** How many images lie above this one (backing chains are bounded). */
  depth?: number;
  /** An open, locked descriptor of the image to use instead of opening `path` (see lendable); it is closed with the image. */
  fd?: number;
}

interface Header {
  version: number;
  backingOffset: number;
  backingSize: number;
  clusterBits: number;
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1Offset: number;
  refTableOffset: number;
  refTableClusters: number;
  snapshots: number;
  incompatible: number;
  compatible: number;
  autoclear: number;
  refcountOrder: number;
  headerLength: number;
  compressionType: number;
}

/** A request-level failure: the guest gets an I/O error, the image stays open. */
class Qcow2IoError extends Error {}

function u64(buf: Uint8Array, at: number): number {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const hi = view.getUint32(at), lo = view.getUint32(at + 4);
  // Above 2^53 it is not a usable offset or size anyway; callers check against the file.
  return hi >= 0x200000 ? Infinity : hi * TWO32 + lo;
}

export class Qcow2Image implements BlockBackend {
  readonly size: number;
  readonly readOnly: boolean;
  readonly synchronous: boolean;
  readonly version: number;
  readonly clusterSize: number;
  /** The backing image's path, if any. */
  readonly backingFile: string | null = null;

  private fd: number;
  private fileSize: number;
  private header: Header;
  private readonly clusterBits: number;
  private readonly l2Bits: number;
  private l1 = new Float64Array(0); // offsets; flags kept apart
  private l1Raw: Uint8Array = new Uint8Array(0);
  private l1Dirty = false;
  private refTable = new Float64Array(0);
  private refTableDirty = false;
  private readonly refBits: number;
  private readonly refsPerBlock: number;
  private readonly refMax: number;
  private backing: BlockBackend | null = null;
  /** Cached L2 tables and refcount blocks by host offset. */
  private readonly l2Cache = new Map<number, Uint8Array>();
  private readonly refCache = new Map<number, Uint8Array>();
  private readonly dirtyL2 = new Set<number>();
  private readonly dirtyRef = new Set<number>();
  /** Clusters (by index) whose refcount drops by one once the L2 entries that let them go are on disk. */
  private pendingFree: number[] = [];
  private readonly pendingFreeSet = new Map<number, number>();
  private freeHint = 0;
  /** Clusters being made into a new refcount table, not yet counted: findFree passes them by. */
  private reserved = { from: 0, to: 0 };
  private closing = false;
  private broken: Error | null = null;
  private readonly adopted: boolean;

  /** Opens and locks a qcow2 image; throws ImageError naming the file and the problem. */
  static open(file: string, options: Qcow2Options = {}): Qcow2Image {
    return new Qcow2Image(path.resolve(file), options);
  }

  /**
   * The image as another thread may run it meanwhile: the cached metadata is written back
   * first (the other thread reads it from the file), and taken up again from the file when it
   * comes back (reclaimed). Null when it cannot be lent (closed or broken).
   */
  readonly lendable = (): LendableImage | null => {
    if (this.closing || this.broken) return null;
    try {
      if (!this.readOnly) this.flushNow();
    } catch (e) {
      this.broken = this.requestError(e, 'handing over');
      return null;
    }
    return { fd: this.fd, guardProbedFormat: false, format: 'qcow2' };
  };

  /** Back from another thread: its metadata is read again (a takeover by force leaves the image read-only). */
  reclaimed(handedBack: boolean): void {
    this.l2Cache.clear();
    this.refCache.clear();
    this.dirtyL2.clear();
    this.dirtyRef.clear();
    this.l1Dirty = false;
    this.refTableDirty = false;
    this.pendingFree = [];
    this.pendingFreeSet.clear();
    this.freeHint = 0;
    this.reserved = { from: 0, to: 0 };
    try {
      this.fileSize = fs.fstatSync(this.fd).size;
      this.header = this.readHeader();
      this.readTables();
    } catch (e) {
      this.broken = new Error(`${this.path}: its metadata cannot be read back after the disk I/O thread wrote it (${(e as Error).message})`);
      return;
    }
    if (!handedBack && !this.readOnly) {
      this.broken = new Error(`${this.path}: the disk I/O thread did not hand it back in time; writes are refused to keep it consistent`);
    }
  }

  private constructor(readonly path: string, options: Qcow2Options) {
    this.readOnly = options.readOnly ?? false;
    this.synchronous = options.synchronous ?? false;
    const readOnly = this.readOnly;
    this.adopted = options.fd !== undefined;
    this.fd = options.fd ?? openLocked(path, readOnly);
    try {
      this.fileSize = fs.fstatSync(this.fd).size;
      const h = this.header = this.readHeader();
      this.version = h.version;
      this.clusterBits = h.clusterBits;
      this.clusterSize = 2 ** h.clusterBits;
      this.l2Bits = h.clusterBits - 3;
      this.size = h.size;
      this.refBits = 2 ** h.refcountOrder;
      this.refsPerBlock = this.clusterSize * 8 / this.refBits;
      this.refMax = this.refBits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** this.refBits - 1;
      this.readTables();
      this.readExtensionsAndBacking(options);
      if (!readOnly && h.autoclear !== 0) {
        // Autoclear bits describe extensions (bitmaps, raw data file) we do not keep up to date.
        const buf = new Uint8Array(8);
        this.pwrite(buf, 88);
        fs.fdatasyncSync(this.fd);
      }
    } catch (error) {
      this.backing?.close();
      this.closeFd();
      if (error instanceof ImageError) throw error;
      throw new ImageError(path, 'corrupt', `it cannot be read as qcow2 (${(error as Error).message})`);
    }
  }

  /** The L1 and refcount tables, read and checked against the file. */
  private readTables(): void {
    const h = this.header;
    // L1: inside the file, clear of the header, entries aligned and inside the file.
    this.l1Raw = this.readChecked(h.l1Offset, h.l1Size * 8, 'its L1 table');
    this.l1 = new Float64Array(h.l1Size);
    for (let i = 0; i < h.l1Size; i++) {
      const off = this.entryOffset(this.l1Raw, i);
      if (off !== 0) {
        if (off % this.clusterSize !== 0 || off < this.clusterSize || off + this.clusterSize > this.fileSize) {
          throw this.corrupt(`L1 entry ${i} points at ${off}, ${off % this.clusterSize ? 'not at a cluster boundary' : 'outside the file or into the header'}`);
        }
      }
      this.l1[i] = off;
    }
    const refTableBytes = h.refTableClusters * this.clusterSize;
    const rawRefTable = this.readChecked(h.refTableOffset, refTableBytes, 'its refcount table');
    this.refTable = new Float64Array(refTableBytes / 8);
    for (let i = 0; i < this.refTable.length; i++) {
      const off = this.entryOffset(rawRefTable, i, true);
      if (off !== 0 && (off % this.clusterSize !== 0 || off < this.clusterSize || off + this.clusterSize > this.fileSize)) {
        throw this.corrupt(`refcount table entry ${i} points at ${off}, outside the file, into the header or off a cluster boundary`);
      }
      this.refTable[i] = off;
    }
  }

  private corrupt(detail: string): ImageError {
    return new ImageError(this.path, 'corrupt', `it is a damaged qcow2 image: ${detail}`);
  }

  private unsupported(detail: string): ImageError {
    return new ImageError(this.path, 'unsupported', `it uses a qcow2 feature Porthole does not support: ${detail}`);
  }

  private readHeader(): Header {
    if (this.fileSize < 72) throw this.corrupt(`it is ${this.fileSize} bytes, shorter than a qcow2 header`);
    const buf = new Uint8Array(Math.min(this.fileSize, 4096));
    this.preadExact(buf, 0);
    const view = new DataView(buf.buffer);
    if (view.getUint32(0) !== QCOW2_MAGIC) throw new ImageError(this.path, 'corrupt', 'it is not a qcow2 image (no "QFI\\xfb" magic)');
    const version = view.getUint32(4);
    if (version !== 2 && version !== 3) throw this.unsupported(`version ${version} (only 2 and 3 exist)`);
    const h: Header = {
      version,
      backingOffset: u64(buf, 8), backingSize: view.getUint32(16), clusterBits: view.getUint32(20),
      size: u64(buf, 24), cryptMethod: view.getUint32(32), l1Size: view.getUint32(36), l1Offset: u64(buf, 40),
      refTableOffset: u64(buf, 48), refTableClusters: view.getUint32(56), snapshots: view.getUint32(60),
      incompatible: 0, compatible: 0, autoclear: 0, refcountOrder: 4, headerLength: 72, compressionType: 0,
    };
    if (version === 3) {
      if (this.fileSize < 104) throw this.corrupt('its version 3 header is cut short');
      const incompatHi = view.getUint32(72), compatHi = view.getUint32(80);
      h.incompatible = view.getUint32(76);
      h.compatible = view.getUint32(84);
      h.autoclear = view.getUint32(92) || view.getUint32(88);
      h.refcountOrder = view.getUint32(96);
      h.headerLength = view.getUint32(100);
      if (h.headerLength < 104 || h.headerLength > buf.length || h.headerLength % 8 !== 0) {
        throw this.corrupt(`header length ${h.headerLength} is not a multiple of 8 between 104 and ${buf.length}`);
      }
      if (h.headerLength > 104) h.compressionType = buf[104];
      if (incompatHi !== 0) throw this.unsupported(`unknown incompatible feature bits 0x${incompatHi.toString(16)}00000000`);
      void compatHi;
    }
    const c = h.clusterBits;
    if (!Number.isInteger(c) || c < 9 || c > 21) throw this.corrupt(`cluster_bits is ${c}; qcow2 clusters are 512 bytes (9) to 2 MiB (21)`);
    const cluster = 2 ** c;
    if (h.cryptMethod !== 0) throw this.unsupported(`encryption (method ${h.cryptMethod === 1 ? 'AES' : h.cryptMethod === 2 ? 'LUKS' : h.cryptMethod})`);
    const known = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
    if (h.incompatible & ~known) throw this.unsupported(`unknown incompatible feature bits 0x${(h.incompatible & ~known).toString(16)}`);
    if (h.incompatible & INCOMPAT_DATA_FILE) throw this.unsupported('an external data file');
    if (h.incompatible & INCOMPAT_EXTL2) throw this.unsupported('extended L2 entries (subclusters)');
    if ((h.incompatible & INCOMPAT_COMPRESSION) && h.compressionType !== 0) throw this.unsupported(`compression type ${h.compressionType} (only zlib is read)`);
    if (h.refcountOrder > 6) throw this.corrupt(`refcount_order is ${h.refcountOrder} (at most 6)`);
    if (!this.readOnly) {
      if (h.incompatible & INCOMPAT_CORRUPT) throw this.corrupt('QEMU marked it corrupt; repair it with qemu-img check -r all, or attach it read-only');
      if (h.incompatible & INCOMPAT_DIRTY) throw new ImageError(this.path, 'corrupt', 'its dirty bit is set (lazy refcounts left unfinished); run qemu-img check -r all on it, or attach it read-only');
      if (h.snapshots !== 0) throw this.unsupported(`${h.snapshots} internal snapshot(s) for writing; attach it read-only or remove them with qemu-img snapshot -d`);
    }
    if (!Number.isSafeInteger(h.size) || h.size > 2 ** 50) throw this.corrupt(`its virtual size (${h.size}) is absurd`);
    if (h.size % 512 !== 0) throw new ImageError(this.path, 'size', `its virtual size ${h.size} is not a whole number of 512-byte blocks`);
    const l2Covers = cluster * (cluster / 8);
    if (h.l1Size * 8 > MAX_L1_BYTES) throw this.corrupt(`its L1 table has ${h.l1Size} entries (more than QEMU's 32 MiB)`);
    if (h.l1Size * l2Covers < h.size) throw this.corrupt(`its L1 table (${h.l1Size} entries) does not cover its virtual size`);
    if (h.refTableClusters === 0 || h.refTableClusters * cluster > MAX_REFTABLE_BYTES) throw this.corrupt(`its refcount table is ${h.refTableClusters} clusters`);
    const overlaps = (off: number, len: number) => off < cluster && len > 0;
    if (overlaps(h.refTableOffset, h.refTableClusters * cluster)) throw this.corrupt('its refcount table overlaps the header');
    if (h.l1Size > 0 && overlaps(h.l1Offset, h.l1Size * 8)) throw this.corrupt('its L1 table overlaps the header');
    if (h.refTableOffset % cluster) throw this.corrupt('its refcount table is not cluster-aligned');
    if (h.l1Offset % cluster) throw this.corrupt('its L1 table is not cluster-aligned');
    if (h.backingOffset !== 0 && (h.backingSize === 0 || h.backingSize > 1023 || h.backingOffset + h.backingSize > Math.min(cluster, this.fileSize))) {
      throw this.corrupt('its backing file name lies outside the first cluster or is longer than 1023 bytes');
    }
    return h;
  }

  private readExtensionsAndBacking(options: Qcow2Options): void {
    const h = this.header;
    let backingFormat: 'raw' | 'qcow2' | undefined;
    // Extensions follow the header, up to the backing file name or the end of cluster 0.
    const end = Math.min(this.clusterSize, this.fileSize, h.backingOffset || Infinity);
    let at = h.headerLength;
    const head = new Uint8Array(8);
    while (at + 8 <= end) {
      this.preadExact(head, at);
      const view = new DataView(head.buffer);
      const type = view.getUint32(0), length = view.getUint32(4);
      if (type === 0) break;
      if (at + 8 + length > end) throw this.corrupt(`header extension 0x${type.toString(16)} runs past the end of the header cluster`);
      if (type === EXT_BACKING_FORMAT) {
        const name = Buffer.from(this.readChecked(at + 8, length, 'its backing format name')).toString('latin1');
        if (name !== 'raw' && name !== 'qcow2') throw this.unsupported(`a backing file in format "${name}" (raw and qcow2 are)`);
        backingFormat = name;
      } else if (type === EXT_DATA_FILE) {
        throw this.unsupported('an external data file');
      } else if (type === EXT_CRYPTO) {
        throw this.unsupported('encryption');
      }
      at += 8 + Math.ceil(length / 8) * 8;
    }
    if (h.backingOffset === 0) return;
    const name = Buffer.from(this.readChecked(h.backingOffset, h.backingSize, 'its backing file name')).toString('utf8');
    // QEMU also takes protocols (nbd://, http://) and json: descriptions; we take files only.
    if (name.includes('\0') || /^[a-z][a-z0-9+.-]*:\/\//i.test(name) || name.startsWith('json:')) {
      throw this.unsupported(`a backing file that is not a plain file ("${name}")`);
    }
    const file = path.resolve(path.dirname(this.path), name);
    (this as { backingFile: string | null }).backingFile = file;
    const depth = (options.depth ?? 0) + 1;
    if (depth > MAX_BACKING_DEPTH) throw new ImageError(this.path, 'backing', `its chain of backing files is deeper than ${MAX_BACKING_DEPTH} (a loop?)`);
    if (!options.openBacking) throw new ImageError(this.path, 'backing', 'it has a backing file, which this opener cannot open');
    try {
      this.backing = options.openBacking(file, backingFormat, depth);
    } catch (error) {
      const why = error instanceof ImageError ? error.message : (error as Error).message;
      throw new ImageError(this.path, 'backing', `its backing file ${name} cannot be used: ${why}`);
    }
  }

  // ---- file access ----------------------------------------------------------------------

  private preadExact(buf: Uint8Array, position: number): void {
    for (let moved = 0; moved < buf.length;) {
      const n = fs.readSync(this.fd, buf, moved, buf.length - moved, position + moved);
      if (n === 0) throw new Qcow2IoError(`end of file at ${position + moved}`);
      moved += n;
    }
  }

  private pwrite(buf: Uint8Array, position: number): void {
    for (let moved = 0; moved < buf.length;) {
      const n = fs.writeSync(this.fd, buf, moved, buf.length - moved, position + moved);
      if (n === 0) throw new Qcow2IoError(`nothing written at ${position + moved}`);
      moved += n;
    }
    if (position + buf.length > this.fileSize) this.fileSize = position + buf.length;
  }

  /** Reads a table at open, checking it lies inside the file and clear of the header. */
  private readChecked(offset: number, length: number, what: string): Uint8Array {
    if (!Number.isSafeInteger(offset) || offset + length > this.fileSize) {
      throw this.corrupt(`${what} (${length} bytes at ${offset}) lies outside the file (${this.fileSize} bytes)`);
    }
    const buf = new Uint8Array(length);
    if (length) this.preadExact(buf, offset);
    return buf;
  }

  /** The host offset in a table entry (bits 9..55); a refcount table entry has no flags. */
  private entryOffset(table: Uint8Array, index: number, wholeWord = false): number {
    const view = new DataView(table.buffer, table.byteOffset + index * 8, 8);
    const hi = view.getUint32(0), lo = view.getUint32(4);
    if (wholeWord) return hi >= 0x200000 ? Infinity : hi * TWO32 + (lo & 0xfffffe00 >>> 0) + (lo & 0x1ff);
    return (hi & OFFSET_HI_MASK) * TWO32 + ((lo & 0xfffffe00) >>> 0);
  }

  private setEntry(table: Uint8Array, index: number, offset: number, hiFlags: number, loFlags: number): void {
    const view = new DataView(table.buffer, table.byteOffset + index * 8, 8);
    view.setUint32(0, (Math.floor(offset / TWO32) | hiFlags) >>> 0);
    view.setUint32(4, ((offset % TWO32) | loFlags) >>> 0);
  }

  // ---- metadata caches --------------------------------------------------------------------

  private checkTableOffset(offset: number, what: string): void {
    if (offset % this.clusterSize !== 0 || offset < this.clusterSize || offset + this.clusterSize > this.fileSize) {
      throw new Qcow2IoError(`${what} at ${offset} lies outside ${this.path} or in its header`);
    }
  }

  private l2Table(offset: number): Uint8Array {
    let table = this.l2Cache.get(offset);
    if (!table) {
      this.checkTableOffset(offset, 'an L2 table');
      table = new Uint8Array(this.clusterSize);
      this.preadExact(table, offset);
      this.trimCache(this.l2Cache, this.dirtyL2);
      this.l2Cache.set(offset, table);
    }
    return table;
  }

  private refBlock(offset: number): Uint8Array {
    let block = this.refCache.get(offset);
    if (!block) {
      this.checkTableOffset(offset, 'a refcount block');
      block = new Uint8Array(this.clusterSize);
      this.preadExact(block, offset);
      this.trimCache(this.refCache, this.dirtyRef);
      this.refCache.set(offset, block);
    }
    return block;
  }

  private trimCache(cache: Map<number, Uint8Array>, dirty: Set<number>): void {
    if (cache.size * this.clusterSize < MAX_CLEAN_CACHE) return;
    for (const key of cache.keys()) if (!dirty.has(key)) cache.delete(key);
  }

  private getRefcount(cluster: number): number {
    const ti = Math.floor(cluster / this.refsPerBlock);
    if (ti >= this.refTable.length || this.refTable[ti] === 0) return 0;
    const block = this.refBlock(this.refTable[ti]);
    return readRef(block, cluster % this.refsPerBlock, this.refBits);
  }

  private setRefcount(cluster: number, value: number): void {
    if (value < 0 || value > this.refMax) throw new Qcow2IoError(`refcount of cluster ${cluster} would leave its range`);
    const ti = Math.floor(cluster / this.refsPerBlock);
    const blockOffset = this.refBlockFor(ti, cluster);
    writeRef(this.refBlock(blockOffset), cluster % this.refsPerBlock, this.refBits, value);
    this.dirtyRef.add(blockOffset);
    if (value === 0 && cluster < this.freeHint) this.freeHint = cluster;
  }

  /** The refcount block for table index `ti`, made (and counted) when missing. */
  private refBlockFor(ti: number, forCluster: number): number {
    if (ti >= this.refTable.length) this.growRefTable(ti + 1);
    const existing = this.refTable[ti];
    if (existing !== 0) return existing;
    // The new block goes at the first free cluster that is not the one being counted.
    const b = this.findFree(forCluster);
    const offset = b * this.clusterSize;
    const block = new Uint8Array(this.clusterSize);
    this.pwrite(block, offset);
    this.refCache.set(offset, block);
    this.dirtyRef.add(offset);
    this.refTable[ti] = offset;
    this.refTableDirty = true;
    this.setRefcount(b, 1); // in this block, or (rarely) in the next one
    return offset;
  }

  /** Makes the refcount table cover `entries` blocks: a new, larger table at the end of the file. */
  private growRefTable(entries: number): void {
    const perCluster = this.clusterSize / 8;
    let clusters = Math.max(Math.ceil(entries * 1.5 / perCluster), this.header.refTableClusters + 1);
    if (clusters * this.clusterSize > MAX_REFTABLE_BYTES) throw new Qcow2IoError(`${this.path} would outgrow the largest refcount table`);
    const start = Math.ceil(this.fileSize / this.clusterSize);
    // The new table and the blocks that count it go at the end; grow until they fit.
    for (;;) {
      const needEntries = Math.ceil((start + clusters + 2) / this.refsPerBlock) + 1;
      if (clusters * perCluster >= Math.max(entries, needEntries)) break;
      clusters++;
    }
    const table = new Float64Array(clusters * perCluster);
    table.set(this.refTable);
    const oldOffset = this.header.refTableOffset, oldClusters = this.header.refTableClusters;
    // Reserve the clusters by extending the file first, so findFree looks past them.
    const tableOffset = start * this.clusterSize;
    this.pwrite(new Uint8Array(clusters * this.clusterSize), tableOffset);
    this.refTable = table;
    this.refTableDirty = true;
    this.header.refTableOffset = tableOffset;
    this.header.refTableClusters = clusters;
    this.reserved = { from: start, to: start + clusters };
    for (let i = 0; i < clusters; i++) this.setRefcount(start + i, 1);
    this.reserved = { from: 0, to: 0 };
    // The new table, its blocks and the header reach the disk before the old table is let go.
    this.writeRefcounts();
    fs.fdatasyncSync(this.fd);
    const hdr = new Uint8Array(12);
    const view = new DataView(hdr.buffer);
    view.setUint32(0, Math.floor(tableOffset / TWO32));
    view.setUint32(4, tableOffset % TWO32);
    view.setUint32(8, clusters);
    this.pwrite(hdr, 48);
    fs.fdatasyncSync(this.fd);
    const oldFirst = oldOffset / this.clusterSize;
    for (let i = 0; i < oldClusters; i++) this.setRefcount(oldFirst + i, this.getRefcount(oldFirst + i) - 1);
  }

  /** The lowest cluster with refcount 0 that is past the file's metadata, never `except`. */
  private findFree(except = -1): number {
    const fileClusters = Math.ceil(this.fileSize / this.clusterSize);
    for (let c = Math.max(this.freeHint, 1); c < fileClusters; c++) {
      if (c === except || this.pendingFreeSet.has(c) || (c >= this.reserved.from && c < this.reserved.to)) continue;
      if (this.getRefcount(c) === 0) {
        this.freeHint = c + 1;
        return c;
      }
    }
    const c = Math.max(fileClusters, except + 1);
    this.freeHint = c + 1;
    return c;
  }

  /** A new data or table cluster, counted; its bytes are the caller's to write. */
  private allocCluster(): number {
    const c = this.findFree();
    if ((c + 1) * this.clusterSize > this.fileSize) {
      // Extend first: a refcount block or table that counting `c` may need then goes past it.
      fs.ftruncateSync(this.fd, (c + 1) * this.clusterSize);
      this.fileSize = (c + 1) * this.clusterSize;
    }
    this.setRefcount(c, 1);
    return c * this.clusterSize;
  }

  private releaseLater(cluster: number): void {
    this.pendingFree.push(cluster);
    this.pendingFreeSet.set(cluster, (this.pendingFreeSet.get(cluster) ?? 0) + 1);
  }

  /** The host clusters a compressed cluster's bytes touch. */
  private compressedSpan(hi: number, lo: number): { offset: number; length: number; clusters: number[] } {
    const x = 62 - (this.clusterBits - 8);
    const word = (BigInt(hi & 0x3fffffff) << 32n) | BigInt(lo >>> 0);
    const offset = Number(word & ((1n << BigInt(x)) - 1n));
    const sectors = Number(word >> BigInt(x));
    const length = (sectors + 1) * 512 - (offset % 512);
    const clusters: number[] = [];
    const first = Math.floor(offset / this.clusterSize), last = Math.floor((offset + length - 1) / this.clusterSize);
    for (let c = first; c <= last; c++) clusters.push(c);
    return { offset, length, clusters };
  }

  // ---- guest-visible operations --------------------------------------------------------------

  /** The state of the guest cluster holding `offset`. */
  private lookup(vcluster: number): { kind: 'unallocated' | 'zero' | 'data' | 'compressed'; host: number; hi: number; lo: number; l2: Uint8Array | null; l2Index: number } {
    const l1Index = Math.floor(vcluster / 2 ** this.l2Bits);
    const l2Index = vcluster % 2 ** this.l2Bits;
    const l2Offset = this.l1[l1Index];
    if (!l2Offset) return { kind: 'unallocated', host: 0, hi: 0, lo: 0, l2: null, l2Index };
    const l2 = this.l2Table(l2Offset);
    const view = new DataView(l2.buffer, l2Index * 8, 8);
    const hi = view.getUint32(0), lo = view.getUint32(4);
    if (hi & COMPRESSED_HI) return { kind: 'compressed', host: 0, hi, lo, l2, l2Index };
    const host = (hi & OFFSET_HI_MASK) * TWO32 + ((lo & 0xfffffe00) >>> 0);
    if (this.version >= 3 && (lo & ZERO_LO)) return { kind: 'zero', host, hi, lo, l2, l2Index };
    if (host === 0) return { kind: 'unallocated', host: 0, hi, lo, l2, l2Index };
    if (host % this.clusterSize !== 0 || host < this.clusterSize || host + this.clusterSize > this.fileSize) {
      throw new Qcow2IoError(`guest cluster ${vcluster} points at ${host}, outside ${this.path} or off a cluster boundary`);
    }
    return { kind: 'data', host, hi, lo, l2, l2Index };
  }

  private readCompressed(hi: number, lo: number): Uint8Array {
    const span = this.compressedSpan(hi, lo);
    if (span.offset < this.clusterSize || span.offset + span.length > this.fileSize + 512) {
      throw new Qcow2IoError(`a compressed cluster at ${span.offset} lies outside ${this.path}`);
    }
    const raw = new Uint8Array(Math.min(span.length, this.fileSize - span.offset));
    this.preadExact(raw, span.offset);
    let data: Buffer;
    try {
      data = zlib.inflateRawSync(raw, { finishFlush: zlib.constants.Z_SYNC_FLUSH, maxOutputLength: this.clusterSize });
    } catch (error) {
      throw new Qcow2IoError(`a compressed cluster at ${span.offset} does not decompress (${(error as Error).message})`);
    }
    const out = new Uint8Array(this.clusterSize);
    out.set(data.subarray(0, this.clusterSize));
    return out;
  }

  /** Reads from the backing image, zeros past its end. */
  private readBacking(offset: number, into: Uint8Array, at: number, length: number): void {
    const b = this.backing;
    if (!b) return;
    const avail = Math.max(0, Math.min(length, b.size - offset));
    if (avail === 0) return;
    let result: Uint8Array | null = null;
    let failure: Error | null = null;
    let called = false;
    b.read(offset, avail, (error, data) => {
      called = true;
      failure = error;
      result = data;
    });
    // Backing images are opened synchronous by our own factory.
    if (!called) throw new Qcow2IoError('the backing image did not complete a read at once');
    if (failure) throw new Qcow2IoError(`backing file ${this.backingFile}: ${(failure as Error).message}`);
    into.set(result!, at);
  }

  private readNow(offset: number, length: number): Uint8Array {
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const pos = offset + done;
      const vcluster = Math.floor(pos / this.clusterSize);
      const within = pos % this.clusterSize;
      const n = Math.min(length - done, this.clusterSize - within);
      const e = this.lookup(vcluster);
      if (e.kind === 'data') {
        this.preadExact(out.subarray(done, done + n), e.host + within);
      } else if (e.kind === 'compressed') {
        out.set(this.readCompressed(e.hi, e.lo).subarray(within, within + n), done);
      } else if (e.kind === 'unallocated') {
        this.readBacking(pos, out, done, n);
      } // zero: already zeros
      done += n;
    }
    return out;
  }

  /** The L2 table for guest cluster `vcluster`, made when missing. */
  private l2For(vcluster: number): { offset: number; table: Uint8Array } {
    const l1Index = Math.floor(vcluster / 2 ** this.l2Bits);
    let offset = this.l1[l1Index];
    if (offset) return { offset, table: this.l2Table(offset) };
    offset = this.allocCluster();
    const table = new Uint8Array(this.clusterSize);
    this.pwrite(table, offset); // zeros on disk before the L1 entry can point at it
    this.l2Cache.set(offset, table);
    this.dirtyL2.add(offset);
    this.l1[l1Index] = offset;
    this.setEntry(this.l1Raw, l1Index, offset, COPIED_HI, 0);
    this.l1Dirty = true;
    return { offset, table };
  }

  private writeNow(offset: number, data: Uint8Array): void {
    let done = 0;
    while (done < data.length) {
      const pos = offset + done;
      const vcluster = Math.floor(pos / this.clusterSize);
      const within = pos % this.clusterSize;
      const n = Math.min(data.length - done, this.clusterSize - within);
      const piece = data.subarray(done, done + n);
      const e = this.lookup(vcluster);
      if (e.kind === 'data' && (e.hi & COPIED_HI || this.getRefcount(e.host / this.clusterSize) === 1)) {
        this.pwrite(piece, e.host + within);
      } else {
        // Copy on write: the whole cluster is written at a place of its own before an L2
        // entry points at it.
        let full: Uint8Array;
        let reuse = 0;
        if (n === this.clusterSize) full = piece;
        else {
          full = new Uint8Array(this.clusterSize);
          if (e.kind === 'data') this.preadExact(full, e.host);
          else if (e.kind === 'compressed') full = this.readCompressed(e.hi, e.lo);
          else if (e.kind === 'unallocated') this.readBacking(vcluster * this.clusterSize, full, 0, this.clusterSize);
          full.set(piece, within);
        }
        // A zero cluster with a preallocated place keeps it (its refcount is ours alone).
        if (e.kind === 'zero' && e.host && e.host % this.clusterSize === 0 && e.host >= this.clusterSize
          && e.host + this.clusterSize <= this.fileSize && this.getRefcount(e.host / this.clusterSize) === 1) reuse = e.host;
        const { offset: l2Offset, table } = this.l2For(vcluster);
        const host = reuse || this.allocCluster();
        this.pwrite(full, host);
        if (e.kind === 'data') this.releaseLater(e.host / this.clusterSize);
        else if (e.kind === 'compressed') for (const c of this.compressedSpan(e.hi, e.lo).clusters) this.releaseLater(c);
        this.setEntry(table, vcluster % 2 ** this.l2Bits, host, COPIED_HI, 0);
        this.dirtyL2.add(l2Offset);
      }
      done += n;
    }
    if ((this.dirtyL2.size + this.dirtyRef.size) * this.clusterSize > MAX_DIRTY_METADATA) this.flushNow();
  }

  private discardNow(offset: number, length: number): void {
    // Whole clusters only; the rest of the range keeps its bytes (a discard may leave data).
    const first = Math.ceil(offset / this.clusterSize);
    const end = Math.floor((offset + length) / this.clusterSize);
    for (let vcluster = first; vcluster < end; vcluster++) {
      const e = this.lookup(vcluster);
      if (!e.l2) continue; // no L2 table: nothing allocated here
      // With a backing file an empty entry would show the backing data: v3 says zero instead.
      const zero = this.version >= 3 && this.backing !== null;
      if (e.kind === 'unallocated' && !zero) continue;
      if (e.kind === 'zero' && e.host === 0) continue;
      if (e.kind === 'data' || (e.kind === 'zero' && e.host)) this.releaseLater(e.host / this.clusterSize);
      else if (e.kind === 'compressed') for (const c of this.compressedSpan(e.hi, e.lo).clusters) this.releaseLater(c);
      this.setEntry(e.l2, e.l2Index, 0, 0, zero ? ZERO_LO : 0);
      this.dirtyL2.add(this.l1[Math.floor(vcluster / 2 ** this.l2Bits)]);
    }
  }

  private writeRefcounts(): void {
    for (const offset of this.dirtyRef) this.pwrite(this.refCache.get(offset)!, offset);
    this.dirtyRef.clear();
    if (this.refTableDirty) {
      const raw = new Uint8Array(this.header.refTableClusters * this.clusterSize);
      for (let i = 0; i < this.refTable.length; i++) this.setEntry(raw, i, this.refTable[i], 0, 0);
      this.pwrite(raw, this.header.refTableOffset);
      this.refTableDirty = false;
    }
  }

  /** Writes the cached metadata back in the crash-safe order (see the top of the file). */
  private flushNow(): void {
    const hasFrees = this.pendingFree.length > 0;
    const hasPointers = this.dirtyL2.size > 0 || this.l1Dirty;
    // 1. Data (already written) and refcount increases.
    this.writeRefcounts();
    fs.fdatasyncSync(this.fd);
    if (!hasPointers && !hasFrees) return;
    // 2. The L2 and L1 entries that point at them.
    for (const offset of this.dirtyL2) this.pwrite(this.l2Cache.get(offset)!, offset);
    this.dirtyL2.clear();
    if (this.l1Dirty) {
      this.pwrite(this.l1Raw, this.header.l1Offset);
      this.l1Dirty = false;
    }
    fs.fdatasyncSync(this.fd);
    if (!hasFrees) return;
    // 3. The clusters let go, now that nothing on disk points at them.
    const frees = this.pendingFree;
    this.pendingFree = [];
    this.pendingFreeSet.clear();
    for (const c of frees) this.setRefcount(c, this.getRefcount(c) - 1);
    this.writeRefcounts();
    fs.fdatasyncSync(this.fd);
  }

  // ---- BlockBackend -------------------------------------------------------------------------

  read(offset: number, length: number, done: BlockReadCallback): void {
    const refused = this.refuse(offset, length, false);
    if (refused) return this.complete(() => done(refused, null));
    let result: Uint8Array | null = null;
    let error: Error | null = null;
    try {
      result = this.readNow(offset, length);
    } catch (e) {
      error = this.requestError(e, 'reading');
    }
    this.complete(() => done(error, error ? null : result));
  }

  write(offset: number, data: Uint8Array, done: BlockDoneCallback): void {
    const refused = this.refuse(offset, data.length, true);
    if (refused) return this.complete(() => done(refused));
    let error: Error | null = null;
    try {
      this.writeNow(offset, data);
    } catch (e) {
      error = this.requestError(e, 'writing');
    }
    this.complete(() => done(error));
  }

  flush(done: BlockDoneCallback): void {
    if (this.closing) return this.complete(() => done(new Error(`${this.path} is closed`)));
    if (this.readOnly) return this.complete(() => done(null));
    let error: Error | null = this.broken;
    if (!error) {
      try {
        this.flushNow();
      } catch (e) {
        error = this.requestError(e, 'flushing');
      }
    }
    this.complete(() => done(error));
  }

  discard(offset: number, length: number, done: BlockDoneCallback): void {
    const refused = this.refuse(offset, length, true);
    if (refused) return this.complete(() => done(refused));
    let error: Error | null = null;
    try {
      this.discardNow(offset, length);
    } catch (e) {
      error = this.requestError(e, 'discarding');
    }
    this.complete(() => done(error));
  }

  close(): void {
    if (this.closing) return;
    this.closing = true;
    try {
      if (!this.readOnly && !this.broken) this.flushNow();
    } finally {
      this.backing?.close();
      this.closeFd();
    }
  }

  private closeFd(): void {
    if (this.fd < 0) return;
    // An adopted descriptor was not opened through fs (whose bookkeeping warns of a stranger).
    if (this.adopted) libc.close(this.fd);
    else fs.closeSync(this.fd);
    this.fd = -1;
  }

  private complete(fn: () => void): void {
    if (this.synchronous) fn();
    else queueMicrotask(fn);
  }

  /**
   * A failed request. A failure inside the metadata (a host write error half way) leaves the
   * cached tables unknown: the image then refuses further writes and flushes rather than
   * write back something inconsistent.
   */
  private requestError(e: unknown, what: string): Error {
    if (e instanceof Qcow2IoError) return new Error(`${what} ${this.path}: ${e.message}`);
    const error = new Error(`${what} ${this.path}: ${(e as Error).message}`);
    if (what !== 'reading') this.broken = error;
    return error;
  }

  private refuse(offset: number, length: number, write: boolean): Error | null {
    if (this.closing) return new Error(`${this.path} is closed`);
    if (write && this.readOnly) return new Error(`${this.path} is open read-only`);
    if (write && this.broken) return this.broken;
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      return new RangeError(`${length} bytes at offset ${offset} lie outside ${this.path} (${this.size} bytes)`);
    }
    return null;
  }
}

function readRef(block: Uint8Array, index: number, bits: number): number {
  if (bits < 8) {
    const perByte = 8 / bits;
    return (block[Math.floor(index / perByte)] >> ((index % perByte) * bits)) & ((1 << bits) - 1);
  }
  const bytes = bits / 8;
  let v = 0;
  for (let i = 0; i < bytes; i++) v = v * 256 + block[index * bytes + i];
  return v;
}

function writeRef(block: Uint8Array, index: number, bits: number, value: number): void {
  if (bits < 8) {
    const perByte = 8 / bits;
    const at = Math.floor(index / perByte), shift = (index % perByte) * bits, mask = ((1 << bits) - 1) << shift;
    block[at] = (block[at] & ~mask) | ((value << shift) & mask);
    return;
  }
  const bytes = bits / 8;
  let v = value;
  for (let i = bytes - 1; i >= 0; i--) {
    block[index * bytes + i] = v % 256;
    v = Math.floor(v / 256);
  }
}

/** Opens an image file and takes the same flock as RawImageFile (shared read-only, else exclusive). */
function openLocked(file: string, readOnly: boolean): number {
  // RawImageFile's checks give the same words for missing, folder, permission and lock errors.
  return RawImageFile.open(file, { readOnly, synchronous: true, anySize: true }).detachFd();
}
