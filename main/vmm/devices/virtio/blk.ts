// virtio-blk (virtio 1.x §5.2) over the modern PCI transport, on a BlockBackend (a raw image,
// the same backend USB sticks use). Requests: read, write, flush (fdatasync), get-id (the
// serial); a read-only disk offers VIRTIO_BLK_F_RO and fails writes. Completions may come
// later than the request (an asynchronous backend): each goes on the used ring when it
// arrives, unless the device was reset in between.
//
// A request is framed by bytes, not descriptors (§2.6.4): the first 16 readable bytes are the
// header, the last writable byte the status, the rest the data. What the guest can get wrong
// in a request (a data buffer outside guest memory, a length that is not whole sectors or is
// too large, sectors past the end) is VIRTIO_BLK_S_IOERR; a request with no room for a
// header or a status byte breaks the protocol and puts the device in NEEDS_RESET.
import { ConfigError, type DiskConfig, diskName } from '../../config';
import { DMA_OK, DmaMemory } from '../../memory/dma';
import { type Counter, counter, type DeviceContext, type DeviceFactory } from '../device';
import type { BlockBackend } from '../usb/storage/block-backend';
import { openBlockImage } from '../block/open-image';
import { VirtioPciDevice } from './virtio-pci';
import { type DescriptorChain, sliceSegments, type SplitVirtqueue, VirtqueueError } from '../../shared/virtqueue';

export const VIRTIO_BLK_DEVICE_TYPE = 2;
export const VIRTIO_BLK_F = { SIZE_MAX: 1, SEG_MAX: 2, GEOMETRY: 4, RO: 5, BLK_SIZE: 6, FLUSH: 9, TOPOLOGY: 10, MQ: 12, DISCARD: 13, WRITE_ZEROES: 14 } as const;
export const VIRTIO_BLK_T = { IN: 0, OUT: 1, FLUSH: 4, GET_ID: 8, DISCARD: 11, WRITE_ZEROES: 13 } as const;
export const VIRTIO_BLK_S = { OK: 0, IOERR: 1, UNSUPP: 2 } as const;
export const VIRTIO_BLK_ID_BYTES = 20;
export const VIRTIO_BLK_CONFIG_SIZE = 60;
const SECTOR = 512;
/** The most data one request may move (Linux sends at most max_sectors_kb, 1280 KiB by default). */
export const VIRTIO_BLK_MAX_REQUEST = 32 * 1024 * 1024;
/** Discard: ranges per request, sectors per range, and the granularity (4 KiB) we tell the driver. */
export const VIRTIO_BLK_MAX_DISCARD_SEGMENTS = 32;
export const VIRTIO_BLK_MAX_DISCARD_SECTORS = 0x400000;
const DISCARD_ALIGNMENT_SECTORS = 8;
const DISCARD_FLAG_UNMAP = 1;
/** Write zeroes: one range per request (as QEMU), of at most 32 MiB (a zero-write fallback stays short). */
export const VIRTIO_BLK_MAX_WRITE_ZEROES_SEGMENTS = 1;
export const VIRTIO_BLK_MAX_WRITE_ZEROES_SECTORS = 0x10000;
/**
 * Each queue's size, and so seg_max (the size less header and status): with 256, as QEMU's
 * default, a 1 MiB transfer of 256 scattered pages is more segments than Linux may put in one
 * request, so it splits in two, each an exit and a round of the request path; 1024 keeps it whole.
 */
export const VIRTIO_BLK_QUEUE_SIZE = 1024;
/** Where the disks sit on bus 0: disk n at slot 8 + n. */
export const VIRTIO_BLK_FIRST_SLOT = 8;
export const VIRTIO_BLK_MAX_DISKS = 8;

export interface VirtioBlkOptions {
  /** The disk's name: its statistics group and the PCI function's name. */
  name: string;
  backend: BlockBackend;
  /** Up to 20 bytes of ASCII, answered to VIRTIO_BLK_T_GET_ID. */
  serial?: string;
  queues?: number;
  router?: DeviceContext['interrupts'] | null;
  statistics?: DeviceContext['statistics'] | null;
  log?: (text: string) => void;
}

interface BlkCounters {
  reads: Counter;
  writes: Counter;
  readBytes: Counter;
  writeBytes: Counter;
  flushes: Counter;
  discards: Counter;
  zeroWrites: Counter;
  errors: Counter;
}

export class VirtioBlk extends VirtioPciDevice {
  readonly backend: BlockBackend;
  private readonly configBytes = new Uint8Array(VIRTIO_BLK_CONFIG_SIZE);
  private readonly serial: Uint8Array;
  private readonly header = new Uint8Array(16);
  private readonly counters: BlkCounters | null;

  constructor(options: VirtioBlkOptions) {
    const queues = options.queues ?? 1;
    const features = (1 << VIRTIO_BLK_F.SEG_MAX) | (1 << VIRTIO_BLK_F.BLK_SIZE) | (1 << VIRTIO_BLK_F.FLUSH)
      | (options.backend.readOnly ? 1 << VIRTIO_BLK_F.RO : 0) | (queues > 1 ? 1 << VIRTIO_BLK_F.MQ : 0)
      | (options.backend.discard && !options.backend.readOnly ? 1 << VIRTIO_BLK_F.DISCARD : 0)
      | (options.backend.writeZeroes && !options.backend.readOnly ? 1 << VIRTIO_BLK_F.WRITE_ZEROES : 0);
    // Class 01/00 (SCSI-class mass storage), as QEMU's virtio-blk-pci.
    super(options.name, {
      deviceType: VIRTIO_BLK_DEVICE_TYPE, classCode: 0x010000, queues, queueSize: VIRTIO_BLK_QUEUE_SIZE, deviceFeatures: features,
      configSize: VIRTIO_BLK_CONFIG_SIZE, router: options.router, statistics: options.statistics, log: options.log,
    });
    this.backend = options.backend;
    this.serial = new Uint8Array(VIRTIO_BLK_ID_BYTES);
    const serial = options.serial ?? '';
    for (let i = 0; i < Math.min(serial.length, VIRTIO_BLK_ID_BYTES); i++) this.serial[i] = serial.charCodeAt(i) & 0x7f;
    const view = new DataView(this.configBytes.buffer);
    const sectors = Math.floor(options.backend.size / SECTOR);
    view.setUint32(0, sectors % 0x100000000, true);
    view.setUint32(4, Math.floor(sectors / 0x100000000), true);
    view.setUint32(12, this.queues[0].maxSize - 2, true); // seg_max: the queue less header and status
    view.setUint32(20, SECTOR, true); // blk_size
    view.setUint16(34, queues, true); // num_queues
    view.setUint32(36, VIRTIO_BLK_MAX_DISCARD_SECTORS, true);
    view.setUint32(40, VIRTIO_BLK_MAX_DISCARD_SEGMENTS, true);
    view.setUint32(44, DISCARD_ALIGNMENT_SECTORS, true);
    view.setUint32(48, VIRTIO_BLK_MAX_WRITE_ZEROES_SECTORS, true);
    view.setUint32(52, VIRTIO_BLK_MAX_WRITE_ZEROES_SEGMENTS, true);
    this.configBytes[56] = options.backend.writeZeroes ? 1 : 0; // write_zeroes_may_unmap
    const stats = options.statistics ?? null;
    this.counters = stats ? {
      reads: counter(stats, options.name, 'reads'),
      writes: counter(stats, options.name, 'writes'),
      readBytes: counter(stats, options.name, 'read-bytes', 'bytes'),
      writeBytes: counter(stats, options.name, 'write-bytes', 'bytes'),
      flushes: counter(stats, options.name, 'flushes'),
      discards: counter(stats, options.name, 'discards'),
      zeroWrites: counter(stats, options.name, 'write-zeroes'),
      errors: counter(stats, options.name, 'errors'),
    } : null;
  }

  protected readDeviceConfig(offset: number, size: number): number {
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + this.configBytes[offset + i];
    return v;
  }

  protected processQueue(q: SplitVirtqueue): void {
    for (let chain = q.pop(this.dma); chain !== null; chain = q.pop(this.dma)) this.request(q, chain);
  }

  private request(q: SplitVirtqueue, chain: DescriptorChain): void {
    if (chain.readableBytes < 16 || chain.writableBytes < 1) {
      throw new VirtqueueError(`queue ${q.index}: request ${chain.head} has no room for its header or status byte`);
    }
    const generation = this.generation;
    const dma = this.dma;
    const statusAt = sliceSegments(chain.writable, chain.writableBytes - 1, 1);
    const finish = (status: number, dataWritten: number): void => {
      if (generation !== this.generation) return;
      if (status !== VIRTIO_BLK_S.OK) this.counters?.errors.add();
      if (dma.scatter(statusAt, Uint8Array.of(status)) < 0) {
        this.fail(`queue ${q.index}: the status byte of request ${chain.head} is outside guest memory`);
        return;
      }
      this.complete(q, chain.head, (status === VIRTIO_BLK_S.OK ? dataWritten : 0) + 1, generation);
    };
    if (dma.gather(chain.readable, this.header) < 0) {
      finish(VIRTIO_BLK_S.IOERR, 0);
      return;
    }
    const h = new DataView(this.header.buffer);
    const type = h.getUint32(0, true);
    const sectorHigh = h.getUint32(12, true);
    const sector = sectorHigh * 0x100000000 + h.getUint32(8, true);
    switch (type) {
      case VIRTIO_BLK_T.IN: {
        const length = chain.writableBytes - 1;
        const offset = this.checkedOffset(sector, sectorHigh, length);
        const data = sliceSegments(chain.writable, 0, length);
        if (offset < 0 || !this.reachable(dma, data, true)) {
          finish(VIRTIO_BLK_S.IOERR, 0);
          return;
        }
        const done = (failed: boolean) => {
          if (failed) {
            finish(VIRTIO_BLK_S.IOERR, 0);
            return;
          }
          this.counters?.reads.add();
          this.counters?.readBytes.add(length);
          finish(VIRTIO_BLK_S.OK, length);
        };
        // Straight into guest memory when the image completes inline: no buffer, no copy.
        const readvNow = this.backend.readvNow;
        const targets = readvNow ? dma.views(data, true) : null;
        if (readvNow && targets) {
          done(!!readvNow(offset, targets));
          return;
        }
        this.backend.read(offset, length, (error, bytes) => {
          if (generation !== this.generation) return;
          done(!!error || !bytes || dma.scatter(data, bytes) !== length);
        });
        return;
      }
      case VIRTIO_BLK_T.OUT: {
        const length = chain.readableBytes - 16;
        const offset = this.checkedOffset(sector, sectorHigh, length);
        if (offset < 0 || this.backend.readOnly) {
          finish(VIRTIO_BLK_S.IOERR, 0);
          return;
        }
        const data = sliceSegments(chain.readable, 16, length);
        const done = (failed: boolean) => {
          if (failed) {
            finish(VIRTIO_BLK_S.IOERR, 0);
            return;
          }
          this.counters?.writes.add();
          this.counters?.writeBytes.add(length);
          finish(VIRTIO_BLK_S.OK, 0);
        };
        const writevNow = this.backend.writevNow;
        const sources = writevNow ? dma.views(data, false) : null;
        if (writevNow && sources) {
          done(!!writevNow(offset, sources));
          return;
        }
        const bytes = new Uint8Array(length);
        if (dma.gather(data, bytes) !== length) {
          finish(VIRTIO_BLK_S.IOERR, 0);
          return;
        }
        this.backend.write(offset, bytes, (error) => done(!!error));
        return;
      }
      case VIRTIO_BLK_T.FLUSH:
        this.backend.flush((error) => {
          if (!error) this.counters?.flushes.add();
          finish(error ? VIRTIO_BLK_S.IOERR : VIRTIO_BLK_S.OK, 0);
        });
        return;
      case VIRTIO_BLK_T.DISCARD:
      case VIRTIO_BLK_T.WRITE_ZEROES:
        this.ranges(type === VIRTIO_BLK_T.DISCARD, dma, chain, finish);
        return;
      case VIRTIO_BLK_T.GET_ID: {
        const n = Math.min(VIRTIO_BLK_ID_BYTES, chain.writableBytes - 1);
        if (dma.scatter(sliceSegments(chain.writable, 0, n), this.serial.subarray(0, n)) !== n) {
          finish(VIRTIO_BLK_S.IOERR, 0);
          return;
        }
        finish(VIRTIO_BLK_S.OK, n);
        return;
      }
      default:
        finish(VIRTIO_BLK_S.UNSUPP, 0);
    }
  }

  /**
   * Discard or write-zeroes ranges (§5.2.6: le64 sector, le32 num_sectors, le32 flags each), all
   * or nothing checked first. Discard takes no flags (unmap set is UNSUPP); write zeroes takes
   * unmap (the zeros may be a hole) and no other bit.
   */
  private ranges(isDiscard: boolean, dma: DmaMemory, chain: DescriptorChain, finish: (status: number, written: number) => void): void {
    const backend = this.backend;
    const length = chain.readableBytes - 16;
    const maxSegments = isDiscard ? VIRTIO_BLK_MAX_DISCARD_SEGMENTS : VIRTIO_BLK_MAX_WRITE_ZEROES_SEGMENTS;
    const maxSectors = isDiscard ? VIRTIO_BLK_MAX_DISCARD_SECTORS : VIRTIO_BLK_MAX_WRITE_ZEROES_SECTORS;
    const supported = isDiscard
      ? this.negotiated(VIRTIO_BLK_F.DISCARD) && backend.discard !== undefined
      : this.negotiated(VIRTIO_BLK_F.WRITE_ZEROES) && backend.writeZeroes !== undefined;
    if (!supported || backend.readOnly) {
      finish(VIRTIO_BLK_S.UNSUPP, 0);
      return;
    }
    if (length === 0 || length % 16 !== 0 || length / 16 > maxSegments) {
      finish(VIRTIO_BLK_S.IOERR, 0);
      return;
    }
    const bytes = new Uint8Array(length);
    if (dma.gather(sliceSegments(chain.readable, 16, length), bytes) !== length) {
      finish(VIRTIO_BLK_S.IOERR, 0);
      return;
    }
    const view = new DataView(bytes.buffer);
    const ranges: { offset: number; length: number; unmap: boolean }[] = [];
    for (let at = 0; at < length; at += 16) {
      const high = view.getUint32(at + 4, true);
      const sectors = view.getUint32(at + 8, true);
      const flags = view.getUint32(at + 12, true);
      if (flags & (isDiscard ? ~0 : ~DISCARD_FLAG_UNMAP)) {
        finish(VIRTIO_BLK_S.UNSUPP, 0);
        return;
      }
      const offset = sectors > maxSectors ? -1 : this.checkedOffset(high * 0x100000000 + view.getUint32(at, true), high, 0);
      if (offset < 0 || offset + sectors * SECTOR > backend.size) {
        finish(VIRTIO_BLK_S.IOERR, 0);
        return;
      }
      if (sectors > 0) ranges.push({ offset, length: sectors * SECTOR, unmap: (flags & DISCARD_FLAG_UNMAP) !== 0 });
    }
    let left = ranges.length;
    let failed = false;
    if (left === 0) {
      finish(VIRTIO_BLK_S.OK, 0);
      return;
    }
    const done = (error: Error | null): void => {
      failed ||= error !== null;
      if (--left > 0) return;
      if (!failed) (isDiscard ? this.counters?.discards : this.counters?.zeroWrites)?.add();
      finish(failed ? VIRTIO_BLK_S.IOERR : VIRTIO_BLK_S.OK, 0);
    };
    for (const r of ranges) {
      if (isDiscard) backend.discard!(r.offset, r.length, done);
      else backend.writeZeroes!(r.offset, r.length, r.unmap, done);
    }
  }

  /** The byte offset of a transfer, or -1 if it is not whole sectors inside the disk or too large. */
  private checkedOffset(sector: number, sectorHigh: number, length: number): number {
    if (length % SECTOR !== 0 || length > VIRTIO_BLK_MAX_REQUEST || sectorHigh >= 0x200000) return -1;
    const offset = sector * SECTOR;
    if (!Number.isSafeInteger(offset + length) || offset + length > this.backend.size) return -1;
    return offset;
  }

  private reachable(dma: DmaMemory, segments: readonly { address: number; length: number }[], forWrite: boolean): boolean {
    for (const s of segments) if (dma.check(s.address, s.length, forWrite) !== DMA_OK) return false;
    return true;
  }

  /** Releases the image once requests in flight are done. */
  close(): void {
    this.backend.close();
  }
}


/**
 * The VM's virtio-blk disks, one PCI function each (00:08.0 on). Every image is opened and
 * locked here, before the guest runs: a missing or locked one throws an ImageError naming it,
 * and the images opened before it are closed again.
 */
export const virtioBlkDevices: DeviceFactory = (ctx) => {
  // Disk names count every disk of the config (disk0, disk1...); slots count the virtio ones.
  const disks = (ctx.config.disks ?? []).map((disk, index) => ({ disk, index })).filter(({ disk }) => (disk.bus ?? 'virtio') === 'virtio');
  if (disks.length === 0) return null;
  if (disks.length > VIRTIO_BLK_MAX_DISKS) throw new ConfigError(`at most ${VIRTIO_BLK_MAX_DISKS} disks (${disks.length} given)`);
  const opened: VirtioBlk[] = [];
  try {
    for (const { disk, index } of disks) {
      if (disk.path === undefined) throw new ConfigError(`${diskName(disk, index)}: a virtio disk needs an image path`);
      // The machine thread sits in KVM_RUN, so the image completes each request before the
      // call returns (see RawImageOptions.synchronous), as USB sticks do.
      const backend = openBlockImage(disk.path, { readOnly: disk.readOnly, synchronous: true, format: disk.format });
      try {
        opened.push(new VirtioBlk({
          name: diskName(disk, index), backend, serial: disk.serial, queues: disk.queues, router: ctx.interrupts, statistics: ctx.statistics,
          log: (text) => ctx.log(text),
        }));
      } catch (error) {
        backend.close();
        throw error;
      }
    }
  } catch (error) {
    for (const d of opened) d.close();
    throw error;
  }
  return {
    name: 'virtio-blk',
    instance: opened,
    pci: opened.map((device, i) => ({ slot: VIRTIO_BLK_FIRST_SLOT + i, fn: 0, device })),
    close: () => { for (const d of opened) d.close(); },
  };
};
