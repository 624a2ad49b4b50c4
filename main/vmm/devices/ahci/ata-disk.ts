// An ATA hard disk on a SATA port (ATA8-ACS), on a BlockBackend (the raw images USB sticks and
// virtio-blk use). The commands SeaBIOS and Linux's libata send: IDENTIFY DEVICE, READ/WRITE
// DMA (EXT), READ/WRITE SECTORS and MULTIPLE (PIO, EXT), READ/WRITE FPDMA QUEUED (NCQ), FLUSH
// CACHE (EXT), SET FEATURES, READ VERIFY, power management, and the old CHS housekeeping.
// Anything else, a range past the end of the disk, or a PRD table too small for the transfer
// is aborted with an error in the task file; the backend never sees a byte outside the image.
import type { BlockBackend } from '../usb/storage/block-backend';
import type { Counter } from '../device';
import {
  aborted, ATA_CMD, ATA_ERROR, ATA_STATUS, type AtaOutcome, type AtaTaskFile, type AtaTransfer, identifyBytes,
  putAtaString, type SataDrive, SIGNATURE_ATA, STATUS_OK,
} from './ata';

const SECTOR = 512;
/** NCQ queue depth (IDENTIFY word 75 + 1); AHCI has 32 command slots. */
export const NCQ_DEPTH = 32;
const LBA28_LIMIT = 0x0fffffff;
const MULTIPLE_MAX = 16;

export interface AtaDiskCounters {
  reads: Counter;
  writes: Counter;
  readBytes: Counter;
  writeBytes: Counter;
  flushes: Counter;
  errors: Counter;
}

export interface AtaDiskOptions {
  name: string;
  backend: BlockBackend;
  serial?: string;
  counters?: AtaDiskCounters | null;
}

export class AtaDisk implements SataDrive {
  readonly kind = 'disk';
  readonly name: string;
  readonly signature = SIGNATURE_ATA;
  readonly resetStatus = STATUS_OK;
  readonly backend: BlockBackend;
  readonly sectors: number;
  private readonly serial: string;
  private readonly counters: AtaDiskCounters | null;
  private writeCache = true;
  private udmaMode = 5;
  private multiple = MULTIPLE_MAX;

  constructor(options: AtaDiskOptions) {
    this.name = options.name;
    this.backend = options.backend;
    this.sectors = Math.floor(options.backend.size / SECTOR);
    this.serial = options.serial ?? `PH${options.name}`;
    this.counters = options.counters ?? null;
  }

  reset(): void {
    this.multiple = MULTIPLE_MAX;
  }

  close(): void {
    this.backend.close();
  }

  execute(tf: AtaTaskFile, _cdb: Uint8Array, transfer: AtaTransfer, done: (outcome: AtaOutcome) => void): void {
    const finish = (outcome: AtaOutcome): void => {
      if (outcome.status & ATA_STATUS.ERR) this.counters?.errors.add();
      done(outcome);
    };
    const lba28 = (tf.device & 0x0f) * 0x1000000 + (tf.lba % 0x1000000);
    const count28 = (tf.count & 0xff) || 256;
    const count48 = tf.count || 65536;
    switch (tf.command) {
      case ATA_CMD.IDENTIFY_DEVICE: {
        const data = this.identify();
        if (transfer.capacity < data.length) return finish(aborted());
        if (!transfer.toGuest(data)) return finish({ ...aborted(), busError: true });
        return finish({ status: STATUS_OK, error: 0, pioIn: true, transferred: data.length });
      }
      case ATA_CMD.READ_DMA: case ATA_CMD.READ_SECTORS: case ATA_CMD.READ_MULTIPLE:
        return this.read(lba28, count28, transfer, tf.command !== ATA_CMD.READ_DMA, finish);
      case ATA_CMD.READ_DMA_EXT: case ATA_CMD.READ_SECTORS_EXT: case ATA_CMD.READ_MULTIPLE_EXT:
        return this.read(tf.lba, count48, transfer, tf.command !== ATA_CMD.READ_DMA_EXT, finish);
      case ATA_CMD.READ_FPDMA_QUEUED:
        return this.read(tf.lba, tf.features || 65536, transfer, false, finish);
      case ATA_CMD.WRITE_DMA: case ATA_CMD.WRITE_SECTORS: case ATA_CMD.WRITE_MULTIPLE:
        return this.write(lba28, count28, transfer, finish);
      case ATA_CMD.WRITE_DMA_EXT: case ATA_CMD.WRITE_SECTORS_EXT: case ATA_CMD.WRITE_MULTIPLE_EXT:
        return this.write(tf.lba, count48, transfer, finish);
      case ATA_CMD.WRITE_FPDMA_QUEUED:
        return this.write(tf.lba, tf.features || 65536, transfer, finish);
      case ATA_CMD.READ_VERIFY:
        return finish(this.inside(lba28, count28) ? { status: STATUS_OK, error: 0 } : outOfRange());
      case ATA_CMD.READ_VERIFY_EXT:
        return finish(this.inside(tf.lba, count48) ? { status: STATUS_OK, error: 0 } : outOfRange());
      case ATA_CMD.FLUSH_CACHE: case ATA_CMD.FLUSH_CACHE_EXT:
        this.backend.flush((error) => {
          if (error) return finish({ status: STATUS_OK | ATA_STATUS.ERR, error: ATA_ERROR.ABRT });
          this.counters?.flushes.add();
          finish({ status: STATUS_OK, error: 0 });
        });
        return;
      case ATA_CMD.SET_FEATURES:
        return finish(this.setFeatures(tf));
      case ATA_CMD.SET_MULTIPLE_MODE: {
        const n = tf.count & 0xff;
        if (n > MULTIPLE_MAX || (n & (n - 1)) !== 0) return finish(aborted());
        this.multiple = n;
        return finish({ status: STATUS_OK, error: 0 });
      }
      case ATA_CMD.CHECK_POWER_MODE:
        return finish({ status: STATUS_OK, error: 0, count: 0xff });
      case ATA_CMD.EXECUTE_DEVICE_DIAGNOSTIC:
        this.reset();
        return finish({ status: STATUS_OK, error: 0x01, count: 1, lba: 1 });
      case ATA_CMD.RECALIBRATE: case ATA_CMD.SEEK: case ATA_CMD.INITIALIZE_DEVICE_PARAMETERS:
      case ATA_CMD.STANDBY_IMMEDIATE: case ATA_CMD.IDLE_IMMEDIATE: case ATA_CMD.STANDBY: case ATA_CMD.IDLE:
      case ATA_CMD.SLEEP:
        return finish({ status: STATUS_OK, error: 0 });
      default:
        // IDENTIFY PACKET DEVICE and PACKET included: this is not a packet device (SeaBIOS asks first).
        return finish(aborted());
    }
  }

  private inside(lba: number, count: number): boolean {
    return Number.isSafeInteger(lba) && lba >= 0 && lba + count <= this.sectors;
  }

  private read(lba: number, count: number, transfer: AtaTransfer, pio: boolean, done: (o: AtaOutcome) => void): void {
    if (!this.inside(lba, count)) return done(outOfRange());
    const length = count * SECTOR;
    if (transfer.capacity < length) return done(aborted());
    // Straight into guest memory when the image completes inline: no buffer, no copy.
    const readvNow = this.backend.readvNow;
    const targets = readvNow ? transfer.guestViews?.(length, true) : null;
    if (readvNow && targets) {
      if (readvNow(lba * SECTOR, targets)) return done({ status: STATUS_OK | ATA_STATUS.ERR, error: ATA_ERROR.UNC, lba });
      this.counters?.reads.add();
      this.counters?.readBytes.add(length);
      return done({ status: STATUS_OK, error: 0, pioIn: pio, transferred: length });
    }
    this.backend.read(lba * SECTOR, length, (error, data) => {
      if (error || !data) return done({ status: STATUS_OK | ATA_STATUS.ERR, error: ATA_ERROR.UNC, lba });
      if (!transfer.toGuest(data)) return done({ ...aborted(), busError: true });
      this.counters?.reads.add();
      this.counters?.readBytes.add(length);
      done({ status: STATUS_OK, error: 0, pioIn: pio, transferred: length });
    });
  }

  private write(lba: number, count: number, transfer: AtaTransfer, done: (o: AtaOutcome) => void): void {
    if (!this.inside(lba, count)) return done(outOfRange());
    if (this.backend.readOnly) return done(aborted());
    const length = count * SECTOR;
    if (transfer.capacity < length) return done(aborted());
    const written = (error: Error | null): void => {
      if (error) return done({ status: STATUS_OK | ATA_STATUS.ERR, error: ATA_ERROR.ABRT, lba });
      this.counters?.writes.add();
      this.counters?.writeBytes.add(length);
      // Write cache off: every write is durable before it completes.
      if (this.writeCache) return done({ status: STATUS_OK, error: 0, transferred: length });
      this.backend.flush((flushError) => done(flushError ? aborted() : { status: STATUS_OK, error: 0, transferred: length }));
    };
    const writevNow = this.backend.writevNow;
    const sources = writevNow ? transfer.guestViews?.(length, false) : null;
    if (writevNow && sources) return written(writevNow(lba * SECTOR, sources));
    const data = transfer.fromGuest(length);
    if (!data) return done({ ...aborted(), busError: true });
    this.backend.write(lba * SECTOR, data, written);
  }

  private setFeatures(tf: AtaTaskFile): AtaOutcome {
    switch (tf.features & 0xff) {
      case 0x02: this.writeCache = true; return { status: STATUS_OK, error: 0 };
      case 0x82: this.writeCache = false; return { status: STATUS_OK, error: 0 };
      case 0x03: {
        // Transfer mode: PIO (0x08 | n), multiword DMA (0x20 | n), UDMA (0x40 | n).
        const mode = tf.count & 0xff;
        if (mode >> 3 === 1 || mode <= 1) return { status: STATUS_OK, error: 0 };
        if ((mode & 0xf8) === 0x20 && (mode & 7) <= 2) return { status: STATUS_OK, error: 0 };
        if ((mode & 0xf8) === 0x40 && (mode & 7) <= 6) {
          this.udmaMode = mode & 7;
          return { status: STATUS_OK, error: 0 };
        }
        return aborted();
      }
      // Read look-ahead on/off, power-on defaults: accepted, nothing to change.
      case 0x55: case 0xaa: case 0x66: case 0xcc: return { status: STATUS_OK, error: 0 };
      default: return aborted();
    }
  }

  /** IDENTIFY DEVICE (ATA8-ACS 7.16): an LBA48, NCQ-capable, non-rotating SATA disk. */
  identify(): Uint8Array {
    const w = new Uint16Array(256);
    const sectors = this.sectors;
    const heads = 16;
    const spt = 63;
    const cylinders = Math.max(1, Math.min(16383, Math.floor(sectors / (heads * spt))));
    w[0] = 0x0040; // fixed device
    w[1] = cylinders;
    w[3] = heads;
    w[6] = spt;
    putAtaString(w, 10, 10, this.serial);
    putAtaString(w, 23, 4, '1.0');
    putAtaString(w, 27, 20, 'Porthole SATA disk');
    w[47] = 0x8000 | MULTIPLE_MAX;
    w[49] = 0x0300; // LBA, DMA
    w[50] = 0x4000;
    w[53] = 0x0006; // words 64-70 and 88 valid
    w[54] = cylinders;
    w[55] = heads;
    w[56] = spt;
    const chs = cylinders * heads * spt;
    w[57] = chs & 0xffff;
    w[58] = chs >>> 16;
    w[59] = this.multiple ? 0x0100 | this.multiple : 0;
    const lba28 = Math.min(sectors, LBA28_LIMIT);
    w[60] = lba28 & 0xffff;
    w[61] = lba28 >>> 16;
    w[63] = 0x0007; // multiword DMA 0-2 supported
    w[64] = 0x0003; // PIO 3, 4
    w[65] = 120; w[66] = 120; w[67] = 120; w[68] = 120;
    w[75] = NCQ_DEPTH - 1;
    w[76] = 0x0100 | 0x0002; // NCQ, SATA Gen1
    w[80] = 0x01f0; // ATA/ATAPI-4 to ATA8-ACS
    w[82] = 0x4000 | 0x0020; // NOP, write cache
    w[83] = 0x4000 | 0x2000 | 0x1000 | 0x0400; // FLUSH CACHE EXT, FLUSH CACHE, 48-bit
    w[84] = 0x4000;
    w[85] = 0x4000 | (this.writeCache ? 0x0020 : 0);
    w[86] = 0x2000 | 0x1000 | 0x0400;
    w[87] = 0x4000;
    w[88] = 0x007f | (0x0100 << this.udmaMode);
    w[93] = 0;
    let rest = sectors;
    for (let i = 0; i < 4; i++) {
      w[100 + i] = rest % 0x10000;
      rest = Math.floor(rest / 0x10000);
    }
    w[106] = 0x4000; // one logical sector per physical sector, 512 bytes
    w[217] = 1; // non-rotating medium
    return identifyBytes(w);
  }
}

function outOfRange(): AtaOutcome {
  return { status: STATUS_OK | ATA_STATUS.ERR, error: ATA_ERROR.IDNF | ATA_ERROR.ABRT };
}
