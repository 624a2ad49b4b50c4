// One virtio-blk request (virtio 1.x §5.2.6), served the same way by the disk on the machine
// thread (devices/virtio/blk.ts) and by its data plane on the disk I/O thread
// (host/blk-dataplane.ts), so both check the guest's buffers alike.
//
// A request is framed by bytes, not descriptors (§2.6.4): the first 16 readable bytes are the
// header, the last writable byte the status, the rest the data. What the guest can get wrong
// in a request (a data buffer outside guest memory, a length that is not whole sectors or is
// too large, sectors past the end) is VIRTIO_BLK_S_IOERR; a request with no room for a header
// or a status byte breaks the protocol (VirtqueueError: the device error state).
import { DMA_OK, type DmaMemory, type DmaSegment } from '../memory/dma';
import type { BlockBackend } from '../devices/usb/storage/block-backend';
import { type DescriptorChain, sliceSegments, VirtqueueError } from './virtqueue';
import { DATAPLANE_FLAG, type DataPlaneBlock, type DataPlaneLayout } from './dataplane-block';
import { CHANNEL_TARGET } from './channel';

/** The disks' host channel target: the disk I/O thread's failure reports (encodeDataPlaneFailure, the config's disk index). */
export const DISK_CHANNEL_TARGET = CHANNEL_TARGET.FIRST_FREE + 5;
export const DISK_KIND = { DATAPLANE_FAILED: 1 } as const;

export const VIRTIO_BLK_T = { IN: 0, OUT: 1, FLUSH: 4, GET_ID: 8, DISCARD: 11, WRITE_ZEROES: 13 } as const;
export const VIRTIO_BLK_S = { OK: 0, IOERR: 1, UNSUPP: 2 } as const;
export const VIRTIO_BLK_ID_BYTES = 20;
const SECTOR = 512;
/** The most data one request may move (Linux sends at most max_sectors_kb, 1280 KiB by default). */
export const VIRTIO_BLK_MAX_REQUEST = 32 * 1024 * 1024;
/** Discard: ranges per request, sectors per range, and the granularity (4 KiB) we tell the driver. */
export const VIRTIO_BLK_MAX_DISCARD_SEGMENTS = 32;
export const VIRTIO_BLK_MAX_DISCARD_SECTORS = 0x400000;
export const VIRTIO_BLK_DISCARD_ALIGNMENT_SECTORS = 8;
const DISCARD_FLAG_UNMAP = 1;
/** Write zeroes: one range per request (as QEMU), of at most 32 MiB (a zero-write fallback stays short). */
export const VIRTIO_BLK_MAX_WRITE_ZEROES_SEGMENTS = 1;
export const VIRTIO_BLK_MAX_WRITE_ZEROES_SECTORS = 0x10000;

/**
 * A disk's counters, by name (the statistics group's entries). `ioThreadUs` is the disk I/O
 * thread's time serving the disk's requests, in microseconds.
 */
export const BLK_COUNTERS = ['reads', 'writes', 'readBytes', 'writeBytes', 'flushes', 'discards', 'zeroWrites', 'errors', 'ioThreadUs'] as const;
export type BlkCounter = (typeof BLK_COUNTERS)[number];

/**
 * A disk's data plane block: its queues, its counters, and the image it runs on: the image's
 * descriptor (the runner dups it), BLK_IMAGE flags, then the serial (VIRTIO_BLK_ID_BYTES).
 */
export function blkDataPlaneLayout(queues: number): DataPlaneLayout {
  return { queues, counters: BLK_COUNTERS, deviceWords: BLK_WORD.SERIAL + VIRTIO_BLK_ID_BYTES / 4 };
}
const BLK_WORD = { IMAGE_FD: 0, IMAGE_FLAGS: 1, SERIAL: 2 } as const;
export const BLK_IMAGE = { READ_ONLY: 1, GUARD_FORMAT: 2, QCOW2: 4 } as const;
/** What the driver negotiated, in the block's flags. */
export const BLK_DATAPLANE_FLAG = { DISCARD: DATAPLANE_FLAG.FIRST_DEVICE, WRITE_ZEROES: DATAPLANE_FLAG.FIRST_DEVICE << 1 } as const;

export interface LentImageWords {
  fd: number;
  /** BLK_IMAGE bits. */
  flags: number;
}

/** The device words of a run on `image` for a disk with `serial`. */
export function blkDeviceWords(image: LentImageWords, serial: Uint8Array): number[] {
  const words = [image.fd, image.flags];
  const view = new DataView(serial.buffer, serial.byteOffset, VIRTIO_BLK_ID_BYTES);
  for (let at = 0; at < VIRTIO_BLK_ID_BYTES; at += 4) words.push(view.getInt32(at, true));
  return words;
}

/** The image and serial a block's current run describes. */
export function blkRunImage(block: DataPlaneBlock): LentImageWords & { serial: Uint8Array } {
  const serial = new Uint8Array(VIRTIO_BLK_ID_BYTES);
  const view = new DataView(serial.buffer);
  for (let i = 0; i < VIRTIO_BLK_ID_BYTES / 4; i++) view.setInt32(i * 4, block.deviceWord(BLK_WORD.SERIAL + i), true);
  return { fd: block.deviceWord(BLK_WORD.IMAGE_FD), flags: block.deviceWord(BLK_WORD.IMAGE_FLAGS), serial };
}

/** The disk a request is served on. */
export interface BlkDisk {
  readonly backend: BlockBackend;
  /** VIRTIO_BLK_ID_BYTES of ASCII, zero-padded. */
  readonly serial: Uint8Array;
  /** Whether the driver negotiated discard and write zeroes (and the backend has them). */
  readonly discard: boolean;
  readonly writeZeroes: boolean;
  count(counter: BlkCounter, n: number): void;
}

/** Where a request's end goes. */
export interface BlkRequestSink {
  /** Whether the request still belongs to the running device (no reset since it was taken). */
  current(): boolean;
  /** Puts the chain on the used ring with `written` bytes written into it. */
  complete(written: number): void;
  /** The guest broke the protocol: the device error state. */
  fail(why: string): void;
}

/** Serves one request; the sink hears of its end, at once or when the backend completes it. */
export function serveBlkRequest(disk: BlkDisk, dma: DmaMemory, queue: number, chain: DescriptorChain, sink: BlkRequestSink): void {
  if (chain.readableBytes < 16 || chain.writableBytes < 1) {
    throw new VirtqueueError(`queue ${queue}: request ${chain.head} has no room for its header or status byte`);
  }
  const backend = disk.backend;
  const statusAt = sliceSegments(chain.writable, chain.writableBytes - 1, 1);
  const finish = (status: number, dataWritten: number): void => {
    if (!sink.current()) return;
    if (status !== VIRTIO_BLK_S.OK) disk.count('errors', 1);
    if (dma.scatter(statusAt, Uint8Array.of(status)) < 0) {
      sink.fail(`queue ${queue}: the status byte of request ${chain.head} is outside guest memory`);
      return;
    }
    sink.complete((status === VIRTIO_BLK_S.OK ? dataWritten : 0) + 1);
  };
  const header = new Uint8Array(16);
  if (dma.gather(chain.readable, header) < 0) {
    finish(VIRTIO_BLK_S.IOERR, 0);
    return;
  }
  const h = new DataView(header.buffer);
  const type = h.getUint32(0, true);
  const sectorHigh = h.getUint32(12, true);
  const sector = sectorHigh * 0x100000000 + h.getUint32(8, true);
  switch (type) {
    case VIRTIO_BLK_T.IN: {
      const length = chain.writableBytes - 1;
      const offset = checkedOffset(backend, sector, sectorHigh, length);
      const data = sliceSegments(chain.writable, 0, length);
      if (offset < 0 || !reachable(dma, data, true)) {
        finish(VIRTIO_BLK_S.IOERR, 0);
        return;
      }
      const done = (failed: boolean) => {
        if (failed) {
          finish(VIRTIO_BLK_S.IOERR, 0);
          return;
        }
        disk.count('reads', 1);
        disk.count('readBytes', length);
        finish(VIRTIO_BLK_S.OK, length);
      };
      // Straight into guest memory when the image completes inline: no buffer, no copy.
      const readvNow = backend.readvNow;
      const targets = readvNow ? dma.views(data, true) : null;
      if (readvNow && targets) {
        done(!!readvNow(offset, targets));
        return;
      }
      backend.read(offset, length, (error, bytes) => {
        if (!sink.current()) return;
        done(!!error || !bytes || dma.scatter(data, bytes) !== length);
      });
      return;
    }
    case VIRTIO_BLK_T.OUT: {
      const length = chain.readableBytes - 16;
      const offset = checkedOffset(backend, sector, sectorHigh, length);
      if (offset < 0 || backend.readOnly) {
        finish(VIRTIO_BLK_S.IOERR, 0);
        return;
      }
      const data = sliceSegments(chain.readable, 16, length);
      const done = (failed: boolean) => {
        if (failed) {
          finish(VIRTIO_BLK_S.IOERR, 0);
          return;
        }
        disk.count('writes', 1);
        disk.count('writeBytes', length);
        finish(VIRTIO_BLK_S.OK, 0);
      };
      const writevNow = backend.writevNow;
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
      backend.write(offset, bytes, (error) => done(!!error));
      return;
    }
    case VIRTIO_BLK_T.FLUSH:
      backend.flush((error) => {
        if (!error) disk.count('flushes', 1);
        finish(error ? VIRTIO_BLK_S.IOERR : VIRTIO_BLK_S.OK, 0);
      });
      return;
    case VIRTIO_BLK_T.DISCARD:
    case VIRTIO_BLK_T.WRITE_ZEROES:
      serveRanges(type === VIRTIO_BLK_T.DISCARD, disk, dma, chain, finish);
      return;
    case VIRTIO_BLK_T.GET_ID: {
      const n = Math.min(VIRTIO_BLK_ID_BYTES, chain.writableBytes - 1);
      if (dma.scatter(sliceSegments(chain.writable, 0, n), disk.serial.subarray(0, n)) !== n) {
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
function serveRanges(isDiscard: boolean, disk: BlkDisk, dma: DmaMemory, chain: DescriptorChain, finish: (status: number, written: number) => void): void {
  const backend = disk.backend;
  const length = chain.readableBytes - 16;
  const maxSegments = isDiscard ? VIRTIO_BLK_MAX_DISCARD_SEGMENTS : VIRTIO_BLK_MAX_WRITE_ZEROES_SEGMENTS;
  const maxSectors = isDiscard ? VIRTIO_BLK_MAX_DISCARD_SECTORS : VIRTIO_BLK_MAX_WRITE_ZEROES_SECTORS;
  const supported = isDiscard ? disk.discard && backend.discard !== undefined : disk.writeZeroes && backend.writeZeroes !== undefined;
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
    const offset = sectors > maxSectors ? -1 : checkedOffset(backend, high * 0x100000000 + view.getUint32(at, true), high, 0);
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
    if (!failed) disk.count(isDiscard ? 'discards' : 'zeroWrites', 1);
    finish(failed ? VIRTIO_BLK_S.IOERR : VIRTIO_BLK_S.OK, 0);
  };
  for (const r of ranges) {
    if (isDiscard) backend.discard!(r.offset, r.length, done);
    else backend.writeZeroes!(r.offset, r.length, r.unmap, done);
  }
}

/** The byte offset of a transfer, or -1 if it is not whole sectors inside the disk or too large. */
function checkedOffset(backend: BlockBackend, sector: number, sectorHigh: number, length: number): number {
  if (length % SECTOR !== 0 || length > VIRTIO_BLK_MAX_REQUEST || sectorHigh >= 0x200000) return -1;
  const offset = sector * SECTOR;
  if (!Number.isSafeInteger(offset + length) || offset + length > backend.size) return -1;
  return offset;
}

function reachable(dma: DmaMemory, segments: readonly DmaSegment[], forWrite: boolean): boolean {
  for (const s of segments) if (dma.check(s.address, s.length, forWrite) !== DMA_OK) return false;
  return true;
}
