// virtio-blk (virtio 1.x §5.2) over the modern PCI transport, on a BlockBackend (a raw or
// qcow2 image, the same backends USB sticks and AHCI use). Requests: read, write, flush
// (fdatasync), discard, write zeroes, get-id (the serial); a read-only disk offers
// VIRTIO_BLK_F_RO and fails writes. Each request is served by shared/virtio-blk-requests.ts.
//
// Once the driver runs the disk with MSI-X, its rings go to the disk I/O thread
// (host/blk-dataplane.ts) with the image's descriptor: a queue kick no longer exits to
// JavaScript, and the guest's vCPU runs on while the I/O happens. A qcow2 image writes its
// cached metadata back before it goes and reads it again when it comes back.
import { ConfigError, diskName } from '../../config';
import { counter, type Counter, type DeviceContext, type DeviceFactory } from '../device';
import type { DoorbellRegistry } from '../interrupts';
import type { BlockBackend } from '../usb/storage/block-backend';
import { openBlockImage } from '../block/open-image';
import { DataPlaneHandoff } from './dataplane-handoff';
import { decodeDataPlaneFailure } from '../../shared/dataplane-block';
import { type LendTerms, VirtioPciDevice } from './virtio-pci';
import type { SplitVirtqueue } from '../../shared/virtqueue';
import {
  BLK_COUNTERS, BLK_DATAPLANE_FLAG, BLK_IMAGE, type BlkCounter, type BlkDisk, blkDataPlaneLayout, blkDeviceWords, DISK_CHANNEL_TARGET,
  DISK_KIND, serveBlkRequest,
  VIRTIO_BLK_DISCARD_ALIGNMENT_SECTORS, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_MAX_DISCARD_SECTORS, VIRTIO_BLK_MAX_DISCARD_SEGMENTS,
  VIRTIO_BLK_MAX_WRITE_ZEROES_SECTORS, VIRTIO_BLK_MAX_WRITE_ZEROES_SEGMENTS,
} from '../../shared/virtio-blk-requests';

export {
  VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_MAX_DISCARD_SECTORS, VIRTIO_BLK_MAX_DISCARD_SEGMENTS, VIRTIO_BLK_MAX_REQUEST,
  VIRTIO_BLK_MAX_WRITE_ZEROES_SECTORS, VIRTIO_BLK_MAX_WRITE_ZEROES_SEGMENTS, VIRTIO_BLK_S, VIRTIO_BLK_T,
} from '../../shared/virtio-blk-requests';

export const VIRTIO_BLK_DEVICE_TYPE = 2;
export const VIRTIO_BLK_F = { SIZE_MAX: 1, SEG_MAX: 2, GEOMETRY: 4, RO: 5, BLK_SIZE: 6, FLUSH: 9, TOPOLOGY: 10, MQ: 12, DISCARD: 13, WRITE_ZEROES: 14 } as const;
export const VIRTIO_BLK_CONFIG_SIZE = 60;
const SECTOR = 512;
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
  /** The disk I/O thread's data plane block for this disk and the doorbells to reach it; absent: rings stay here. */
  dataPlane?: { buffer: SharedArrayBuffer; doorbells: DoorbellRegistry } | null;
}

/** The statistics entries of a disk's counters. */
const COUNTER_ENTRIES: Record<BlkCounter, [string, 'bytes'?]> = {
  reads: ['reads'], writes: ['writes'], readBytes: ['read-bytes', 'bytes'], writeBytes: ['write-bytes', 'bytes'],
  flushes: ['flushes'], discards: ['discards'], zeroWrites: ['write-zeroes'], errors: ['errors'], ioThreadUs: ['io-thread-us'],
};

export class VirtioBlk extends VirtioPciDevice {
  readonly backend: BlockBackend;
  private readonly configBytes = new Uint8Array(VIRTIO_BLK_CONFIG_SIZE);
  private readonly serial: Uint8Array;
  private readonly counters: Record<BlkCounter, Counter> | null;
  private readonly disk: BlkDisk;
  private lendRefusalLogged = false;

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
    view.setUint32(44, VIRTIO_BLK_DISCARD_ALIGNMENT_SECTORS, true);
    view.setUint32(48, VIRTIO_BLK_MAX_WRITE_ZEROES_SECTORS, true);
    view.setUint32(52, VIRTIO_BLK_MAX_WRITE_ZEROES_SEGMENTS, true);
    this.configBytes[56] = options.backend.writeZeroes ? 1 : 0; // write_zeroes_may_unmap
    const stats = options.statistics ?? null;
    this.counters = stats ? Object.fromEntries(BLK_COUNTERS.map((name) => {
      const [entry, unit] = COUNTER_ENTRIES[name];
      return [name, counter(stats, options.name, entry, unit)];
    })) as Record<BlkCounter, Counter> : null;
    const device = this;
    this.disk = {
      backend: this.backend,
      serial: this.serial,
      get discard() { return device.negotiated(VIRTIO_BLK_F.DISCARD); },
      get writeZeroes() { return device.negotiated(VIRTIO_BLK_F.WRITE_ZEROES); },
      count: (name, n) => this.counters?.[name].add(n),
    };
    const plane = options.dataPlane;
    if (plane && options.router) {
      this.dataPlane = new DataPlaneHandoff(blkDataPlaneLayout(queues), plane.buffer, plane.doorbells, 'disk I/O thread',
        (text) => options.log?.(`${options.name}: ${text}`));
    }
  }

  protected readDeviceConfig(offset: number, size: number): number {
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + this.configBytes[offset + i];
    return v;
  }

  protected override lendTerms(): LendTerms | null {
    const image = this.backend.lendable?.() ?? null;
    if (image === null) {
      if (!this.lendRefusalLogged) this.log(`${this.name}: the rings stay on the machine thread: this image cannot be handed to another thread`);
      this.lendRefusalLogged = true;
      return null;
    }
    return {
      counters: Object.fromEntries(BLK_COUNTERS.map((name) => [name, this.counters?.[name].slot ?? -1])),
      deviceWords: blkDeviceWords({
        fd: image.fd,
        flags: (this.backend.readOnly ? BLK_IMAGE.READ_ONLY : 0) | (image.guardProbedFormat ? BLK_IMAGE.GUARD_FORMAT : 0) | (image.format === 'qcow2' ? BLK_IMAGE.QCOW2 : 0),
      }, this.serial),
      flags: (this.negotiated(VIRTIO_BLK_F.DISCARD) ? BLK_DATAPLANE_FLAG.DISCARD : 0) | (this.negotiated(VIRTIO_BLK_F.WRITE_ZEROES) ? BLK_DATAPLANE_FLAG.WRITE_ZEROES : 0),
    };
  }

  protected processQueue(q: SplitVirtqueue): void {
    for (let chain = q.pop(this.dma); chain !== null; chain = q.pop(this.dma)) {
      const generation = this.generation;
      const head = chain.head;
      serveBlkRequest(this.disk, this.dma, q.index, chain, {
        current: () => generation === this.generation,
        complete: (written) => this.complete(q, head, written, generation),
        fail: (why) => this.fail(why),
      });
    }
  }

  /** The image comes back from the disk I/O thread with them: a qcow2 image reads its metadata again. */
  protected override queuesReclaimed(handedBack: boolean): void {
    this.backend.reclaimed?.(handedBack);
  }

  /** Takes the rings back, then releases the image once requests in flight are done. */
  close(): void {
    this.reclaimQueues();
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
      const plane = ctx.diskDataPlanes?.[index] ?? null;
      try {
        opened.push(new VirtioBlk({
          name: diskName(disk, index), backend, serial: disk.serial, queues: disk.queues, router: ctx.interrupts, statistics: ctx.statistics,
          log: (text) => ctx.log(text), dataPlane: plane && { buffer: plane, doorbells: ctx.doorbells },
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
    hostMessages: {
      target: DISK_CHANNEL_TARGET,
      handle: (kind, payload) => {
        const failure = kind === DISK_KIND.DATAPLANE_FAILED ? decodeDataPlaneFailure(payload) : null;
        const at = failure ? disks.findIndex(({ index }) => index === failure.device) : -1;
        if (failure && at >= 0) opened[at].dataPlaneFailed(failure.epoch, failure.why);
      },
    },
    close: () => { for (const d of opened) d.close(); },
  };
};
