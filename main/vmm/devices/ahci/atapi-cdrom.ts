// An ATAPI CD/DVD-ROM drive on a SATA port (ATA8-ACS PACKET feature set, MMC-6 commands), on a
// read-only BlockBackend holding an ISO (2048-byte blocks). Media can be inserted and ejected
// while the guest runs: after an insert the next command that is not exempt reports UNIT
// ATTENTION (6/28/00, medium may have changed); a disc swapped for another first reports NOT
// READY (2/3A/00) once, as a tray that opened and closed would, then the unit attention. GET
// EVENT STATUS NOTIFICATION reports each removal and new medium once, in order, and an eject
// the host asked for while the guest holds the lock (PREVENT ALLOW MEDIUM REMOVAL) is refused
// and becomes an eject request event instead (MMC-6 9.2.5), unless forced. With no medium the
// media commands report NOT READY, MEDIUM NOT PRESENT (2/3A/00). A CHECK CONDITION is an
// ATA error (ERR, sense key in the error register's high nibble) and the sense is kept for
// REQUEST SENSE, as SCSI over ATAPI works. Sense codes and fixed sense come from the USB
// stick's SCSI layer.
import type { BlockBackend } from '../usb/storage/block-backend';
import {
  fixedSense, type Sense, SENSE_INVALID_FIELD_IN_CDB, SENSE_INVALID_OPCODE, SENSE_LBA_OUT_OF_RANGE, SENSE_NONE,
  SENSE_READ_ERROR, SenseKey,
} from '../usb/storage/scsi';
import type { Counter } from '../device';
import {
  ATA_CMD, ATA_ERROR, ATA_STATUS, type AtaOutcome, type AtaTaskFile, type AtaTransfer, identifyBytes, putAtaString,
  type SataDrive, SIGNATURE_ATAPI, STATUS_OK, aborted,
} from './ata';

export const CD_BLOCK = 2048;
export const SENSE_MEDIUM_NOT_PRESENT: Sense = { key: SenseKey.NOT_READY, asc: 0x3a, ascq: 0x00 };
export const SENSE_MEDIUM_CHANGED: Sense = { key: SenseKey.UNIT_ATTENTION, asc: 0x28, ascq: 0x00 };
export const SENSE_REMOVAL_PREVENTED: Sense = { key: SenseKey.ILLEGAL_REQUEST, asc: 0x53, ascq: 0x02 };

export const ATAPI_OP = {
  TEST_UNIT_READY: 0x00,
  REQUEST_SENSE: 0x03,
  INQUIRY: 0x12,
  START_STOP_UNIT: 0x1b,
  PREVENT_ALLOW_MEDIUM_REMOVAL: 0x1e,
  READ_CAPACITY_10: 0x25,
  READ_10: 0x28,
  SEEK_10: 0x2b,
  READ_TOC: 0x43,
  GET_CONFIGURATION: 0x46,
  GET_EVENT_STATUS_NOTIFICATION: 0x4a,
  MODE_SENSE_10: 0x5a,
  READ_12: 0xa8,
  SET_CD_SPEED: 0xbb,
} as const;

/** Commands a pending unit attention does not fail (SPC-4 5.14, MMC-6 4.1.6.1). */
const UNIT_ATTENTION_EXEMPT = new Set<number>([
  ATAPI_OP.REQUEST_SENSE, ATAPI_OP.INQUIRY, ATAPI_OP.GET_CONFIGURATION, ATAPI_OP.GET_EVENT_STATUS_NOTIFICATION,
]);
/** Commands that need a medium. */
const NEEDS_MEDIUM = new Set<number>([
  ATAPI_OP.TEST_UNIT_READY, ATAPI_OP.READ_CAPACITY_10, ATAPI_OP.READ_10, ATAPI_OP.READ_12, ATAPI_OP.READ_TOC, ATAPI_OP.SEEK_10,
]);
/** ATAPI interrupt reason at completion: I/O and C/D set. */
const INTERRUPT_REASON_DONE = 0x03;
/** Above this a disc is a DVD (GET CONFIGURATION's current profile). */
const CD_MAX_BYTES = 900 * 1024 * 1024;
/** The most one READ may move (Linux's sr sends at most a few hundred KiB). */
const MAX_READ_BLOCKS = 16 * 1024;

const MEDIA_EVENT = { NONE: 0, EJECT_REQUEST: 1, NEW_MEDIA: 2, MEDIA_REMOVAL: 3 } as const;

export interface AtapiCdromCounters {
  reads: Counter;
  readBytes: Counter;
  errors: Counter;
  mediaChanges: Counter;
}

export interface AtapiCdromOptions {
  name: string;
  /** The inserted disc, or null: an empty drive. */
  medium: BlockBackend | null;
  serial?: string;
  counters?: AtapiCdromCounters | null;
  /** Called when the guest ejects the disc (START STOP UNIT): the drive has already let it go. */
  onEject?: () => void;
}

type Reply = { sense: Sense } | { data: Uint8Array } | { ok: true } | { later: true };

/** Media events waiting for GET EVENT STATUS NOTIFICATION, oldest first; more are not kept. */
const MAX_MEDIA_EVENTS = 4;

/** What a host eject did: 'ejected', 'empty' (nothing to eject), or 'locked' (refused; the guest got an eject request). */
export type HostEjectResult = 'ejected' | 'empty' | 'locked';

export class AtapiCdrom implements SataDrive {
  readonly kind = 'cdrom';
  readonly name: string;
  readonly signature = SIGNATURE_ATAPI;
  readonly resetStatus = 0;
  private mediumBackend: BlockBackend | null;
  private sense: Sense = SENSE_NONE;
  private unitAttention = false;
  /** A disc was swapped: the next command that is not exempt reports NOT READY once, then the unit attention. */
  private swapNotReady = false;
  private readonly mediaEvents: number[] = [];
  private locked = false;
  private trayOpenState = false;
  private readonly serial: string;
  private readonly counters: AtapiCdromCounters | null;
  private readonly onEject: () => void;

  constructor(options: AtapiCdromOptions) {
    this.name = options.name;
    this.mediumBackend = options.medium;
    this.serial = options.serial ?? `PH${options.name}`;
    this.counters = options.counters ?? null;
    this.onEject = options.onEject ?? (() => {});
  }

  get medium(): BlockBackend | null {
    return this.mediumBackend;
  }

  get blocks(): number {
    return this.mediumBackend ? Math.floor(this.mediumBackend.size / CD_BLOCK) : 0;
  }

  get preventRemoval(): boolean {
    return this.locked;
  }

  /** Whether the tray is open (after an eject, until a disc is inserted or the guest loads it). */
  get trayOpen(): boolean {
    return this.trayOpenState;
  }

  /**
   * Puts a disc in and closes the tray. A disc already there is swapped: closed, with a removal
   * event before the new-media one. Swapping a disc the guest locked in needs `force`: without
   * it this throws and the guest gets an eject request.
   */
  insert(medium: BlockBackend, force = true): void {
    const swap = this.mediumBackend !== null;
    if (swap && this.locked && !force) {
      this.postEvent(MEDIA_EVENT.EJECT_REQUEST);
      throw new MediumLockedError(this.name);
    }
    if (swap) {
      this.mediumBackend?.close();
      this.postEvent(MEDIA_EVENT.MEDIA_REMOVAL);
      this.locked = false;
      this.swapNotReady = true;
    }
    this.mediumBackend = medium;
    this.trayOpenState = false;
    this.unitAttention = true;
    this.postEvent(MEDIA_EVENT.NEW_MEDIA);
    this.counters?.mediaChanges.add();
  }

  /**
   * The host's eject: takes the disc out and leaves the tray open. While the guest holds the
   * lock it is refused ('locked') and the guest gets an eject request event, unless `force`
   * (which also drops the lock, as QEMU's forced eject does).
   */
  eject(force = true): HostEjectResult {
    if (!this.mediumBackend) {
      if (force) this.trayOpenState = true;
      return 'empty';
    }
    if (this.locked && !force) {
      this.postEvent(MEDIA_EVENT.EJECT_REQUEST);
      return 'locked';
    }
    this.takeOut();
    this.locked = false;
    return 'ejected';
  }

  /** The disc comes out (host or guest eject): removal event, tray open, no unit attention left. */
  private takeOut(): void {
    this.mediumBackend?.close();
    this.mediumBackend = null;
    this.trayOpenState = true;
    this.unitAttention = false;
    this.swapNotReady = false;
    this.postEvent(MEDIA_EVENT.MEDIA_REMOVAL);
    this.counters?.mediaChanges.add();
  }

  private postEvent(event: number): void {
    if (this.mediaEvents.length >= MAX_MEDIA_EVENTS) this.mediaEvents.shift();
    this.mediaEvents.push(event);
  }

  reset(): void {
    this.locked = false;
    this.sense = SENSE_NONE;
  }

  close(): void {
    this.mediumBackend?.close();
    this.mediumBackend = null;
  }

  execute(tf: AtaTaskFile, cdb: Uint8Array, transfer: AtaTransfer, done: (outcome: AtaOutcome) => void): void {
    switch (tf.command) {
      case ATA_CMD.IDENTIFY_PACKET_DEVICE: {
        const data = this.identify();
        if (transfer.capacity < data.length) return done(aborted());
        if (!transfer.toGuest(data)) return done({ ...aborted(), busError: true });
        return done({ status: STATUS_OK, error: 0, pioIn: true, transferred: data.length });
      }
      case ATA_CMD.PACKET:
        return this.packet(cdb, transfer, (tf.features & 1) === 0, done);
      case ATA_CMD.DEVICE_RESET: case ATA_CMD.EXECUTE_DEVICE_DIAGNOSTIC:
        this.reset();
        return done({ status: 0, error: 0x01, count: 1, lba: 0xeb1401 });
      case ATA_CMD.CHECK_POWER_MODE:
        return done({ status: STATUS_OK, error: 0, count: 0xff });
      case ATA_CMD.SET_FEATURES: case ATA_CMD.IDLE_IMMEDIATE: case ATA_CMD.STANDBY_IMMEDIATE: case ATA_CMD.FLUSH_CACHE:
        return done({ status: STATUS_OK, error: 0 });
      default:
        // IDENTIFY DEVICE included: a packet device aborts it and shows its signature (ATA8-ACS 7.16).
        return done({ ...aborted(), count: 1, lba: 0xeb1401 });
    }
  }

  private packet(cdb: Uint8Array, transfer: AtaTransfer, pio: boolean, done: (outcome: AtaOutcome) => void): void {
    const finish = (reply: Reply): void => {
      if ('later' in reply) return;
      if ('sense' in reply) {
        this.sense = reply.sense;
        this.counters?.errors.add();
        done({ status: STATUS_OK | ATA_STATUS.ERR, error: (reply.sense.key << 4) | ATA_ERROR.ABRT, count: INTERRUPT_REASON_DONE });
        return;
      }
      this.sense = SENSE_NONE;
      if ('ok' in reply) return done({ status: STATUS_OK, error: 0, count: INTERRUPT_REASON_DONE });
      const n = Math.min(reply.data.length, transfer.capacity);
      if (n > 0 && !transfer.toGuest(reply.data.subarray(0, n))) return done({ ...aborted(), busError: true });
      done({ status: STATUS_OK, error: 0, count: INTERRUPT_REASON_DONE, pioIn: pio && n > 0, transferred: n });
    };
    const op = cdb[0];
    if (this.swapNotReady && !UNIT_ATTENTION_EXEMPT.has(op)) {
      // A guest that only polls TEST UNIT READY sees the tray cycle of a swap.
      this.swapNotReady = false;
      return finish({ sense: SENSE_MEDIUM_NOT_PRESENT });
    }
    if (this.unitAttention && !UNIT_ATTENTION_EXEMPT.has(op)) {
      this.unitAttention = false;
      return finish({ sense: SENSE_MEDIUM_CHANGED });
    }
    if (NEEDS_MEDIUM.has(op) && !this.mediumBackend) return finish({ sense: SENSE_MEDIUM_NOT_PRESENT });
    const view = new DataView(cdb.buffer, cdb.byteOffset, cdb.byteLength);
    const alloc16 = view.getUint16(7);
    switch (op) {
      case ATAPI_OP.TEST_UNIT_READY: case ATAPI_OP.SEEK_10: case ATAPI_OP.SET_CD_SPEED:
        return finish({ ok: true });
      case ATAPI_OP.REQUEST_SENSE: {
        // The last failed command's sense first; else a pending swap or unit attention is
        // reported (and cleared) here.
        let sense = this.sense;
        if (sense === SENSE_NONE && this.swapNotReady) {
          sense = SENSE_MEDIUM_NOT_PRESENT;
          this.swapNotReady = false;
        } else if (sense === SENSE_NONE && this.unitAttention) {
          sense = SENSE_MEDIUM_CHANGED;
          this.unitAttention = false;
        }
        const data = fixedSense(sense);
        this.sense = SENSE_NONE;
        return finish({ data: data.subarray(0, Math.min(data.length, cdb[4])) });
      }
      case ATAPI_OP.INQUIRY: {
        if (cdb[1] & 1) return finish({ sense: SENSE_INVALID_FIELD_IN_CDB }); // no vital product data pages
        const data = new Uint8Array(36);
        data[0] = 0x05; // CD/DVD device
        data[1] = 0x80; // removable
        data[2] = 0x05; // SPC-3
        data[3] = 0x32; // response data format 2
        data[4] = data.length - 5;
        putAscii(data, 8, 8, 'PORTHOLE');
        putAscii(data, 16, 16, 'DVD-ROM');
        putAscii(data, 32, 4, '1.0');
        return finish({ data: data.subarray(0, Math.min(data.length, view.getUint16(3))) });
      }
      case ATAPI_OP.READ_CAPACITY_10: {
        const data = new Uint8Array(8);
        const d = new DataView(data.buffer);
        d.setUint32(0, Math.max(0, this.blocks - 1));
        d.setUint32(4, CD_BLOCK);
        return finish({ data });
      }
      case ATAPI_OP.READ_10:
        return this.read(view.getUint32(2), view.getUint16(7), transfer, finish);
      case ATAPI_OP.READ_12:
        return this.read(view.getUint32(2), view.getUint32(6), transfer, finish);
      case ATAPI_OP.START_STOP_UNIT: {
        const loej = (cdb[4] & 2) !== 0;
        const start = (cdb[4] & 1) !== 0;
        if (loej && !start) {
          if (this.locked) return finish({ sense: SENSE_REMOVAL_PREVENTED });
          if (this.mediumBackend) {
            this.takeOut();
            this.onEject();
          } else {
            this.trayOpenState = true;
          }
        } else if (loej && start) {
          this.trayOpenState = false; // load: the tray closes (on whatever is in it)
        }
        return finish({ ok: true });
      }
      case ATAPI_OP.PREVENT_ALLOW_MEDIUM_REMOVAL:
        this.locked = (cdb[4] & 1) !== 0;
        return finish({ ok: true });
      case ATAPI_OP.MODE_SENSE_10:
        return finish(this.modeSense(cdb[2] & 0x3f, (cdb[2] >> 6) & 3, alloc16));
      case ATAPI_OP.READ_TOC:
        return finish(this.readToc(cdb, alloc16));
      case ATAPI_OP.GET_CONFIGURATION:
        return finish(this.getConfiguration(cdb[1] & 3, view.getUint16(2), alloc16));
      case ATAPI_OP.GET_EVENT_STATUS_NOTIFICATION:
        return finish(this.eventStatus(cdb, alloc16));
      default:
        return finish({ sense: SENSE_INVALID_OPCODE });
    }
  }

  private read(lba: number, blocks: number, transfer: AtaTransfer, finish: (r: Reply) => void): void {
    const medium = this.mediumBackend;
    if (!medium) return finish({ sense: SENSE_MEDIUM_NOT_PRESENT });
    if (lba + blocks > this.blocks) return finish({ sense: SENSE_LBA_OUT_OF_RANGE });
    if (blocks === 0) return finish({ ok: true });
    if (blocks > MAX_READ_BLOCKS || blocks * CD_BLOCK > transfer.capacity) return finish({ sense: SENSE_INVALID_FIELD_IN_CDB });
    const length = blocks * CD_BLOCK;
    medium.read(lba * CD_BLOCK, length, (error, data) => {
      if (error || !data) return finish({ sense: SENSE_READ_ERROR });
      this.counters?.reads.add();
      this.counters?.readBytes.add(length);
      finish({ data });
    });
    finish({ later: true });
  }

  private modeSense(page: number, control: number, alloc: number): Reply {
    if (control === 3) return { sense: { key: SenseKey.ILLEGAL_REQUEST, asc: 0x39, ascq: 0 } };
    const pages: Uint8Array[] = [];
    if (page === 0x01 || page === 0x3f) {
      const p = new Uint8Array(12);
      p[0] = 0x01; p[1] = 10;
      pages.push(p);
    }
    if (page === 0x2a || page === 0x3f) {
      const p = new Uint8Array(22);
      const d = new DataView(p.buffer);
      p[0] = 0x2a; p[1] = 20;
      p[2] = 0x3b; // reads CD-R, CD-RW, method 2, DVD-ROM
      p[4] = 0x71; // multi-session, mode 2 forms, audio play
      p[5] = 0x1f;
      p[6] = 0x29 | (this.locked ? 0x02 : 0); // tray, eject, lock (and its state)
      d.setUint16(8, 706 * 4); // maximum speed, KB/s
      d.setUint16(12, 512); // buffer, KiB
      d.setUint16(14, 706 * 4);
      pages.push(p);
    }
    if (pages.length === 0) return { sense: SENSE_INVALID_FIELD_IN_CDB };
    const length = 8 + pages.reduce((n, p) => n + p.length, 0);
    const data = new Uint8Array(length);
    new DataView(data.buffer).setUint16(0, length - 2);
    data[2] = this.mediumBackend ? 0x01 : 0x70; // 120 mm data disc, or no disc
    let at = 8;
    for (const p of pages) {
      data.set(control === 1 ? new Uint8Array(p.length).fill(0, 0).map((_, i) => (i < 2 ? p[i] : 0)) : p, at);
      at += p.length;
    }
    return { data: data.subarray(0, Math.min(length, alloc)) };
  }

  private readToc(cdb: Uint8Array, alloc: number): Reply {
    const msf = (cdb[1] & 2) !== 0;
    const format = (cdb[2] & 0x0f) || (cdb[9] >> 6);
    const track = cdb[6];
    const address = (lba: number): number[] => {
      if (!msf) return [(lba >>> 24) & 0xff, (lba >>> 16) & 0xff, (lba >>> 8) & 0xff, lba & 0xff];
      const frames = lba + 150;
      return [0, Math.floor(frames / 4500) & 0xff, Math.floor(frames / 75) % 60, frames % 75];
    };
    const bytes: number[] = [0, 0, 1, 1];
    if (format === 0) {
      if (track > 1 && track !== 0xaa) return { sense: SENSE_INVALID_FIELD_IN_CDB };
      if (track <= 1) bytes.push(0, 0x14, 1, 0, ...address(0));
      bytes.push(0, 0x14, 0xaa, 0, ...address(this.blocks));
    } else if (format === 1) {
      bytes.push(0, 0x14, 1, 0, ...address(0));
    } else {
      return { sense: SENSE_INVALID_FIELD_IN_CDB };
    }
    const data = Uint8Array.from(bytes);
    new DataView(data.buffer).setUint16(0, data.length - 2);
    return { data: data.subarray(0, Math.min(data.length, alloc)) };
  }

  private getConfiguration(rt: number, start: number, alloc: number): Reply {
    if (rt === 3) return { sense: SENSE_INVALID_FIELD_IN_CDB };
    const medium = this.mediumBackend;
    const dvd = medium !== null && medium.size > CD_MAX_BYTES;
    const current = medium === null ? 0 : dvd ? 0x0010 : 0x0008;
    const features: { code: number; bytes: number[] }[] = [
      // Profile list: DVD-ROM, CD-ROM (the current one flagged).
      { code: 0x0000, bytes: [0x00, 0x10, current === 0x0010 ? 1 : 0, 0, 0x00, 0x08, current === 0x0008 ? 1 : 0, 0] },
      { code: 0x0001, bytes: [0, 0, 0, 2, 1, 0, 0, 0] }, // core: ATAPI, DBE
      { code: 0x0002, bytes: [0, 0, 0, 0] }, // morphing
      { code: 0x0003, bytes: [0x29, 0, 0, 0] }, // removable medium: tray, eject, lock
      { code: 0x0010, bytes: [0, 0, 0x08, 0, 1, 0, 0, 0] }, // random readable: 2048-byte blocks
    ];
    const out: number[] = [0, 0, 0, 0, 0, 0, current >> 8, current & 0xff];
    for (const f of features) {
      if (rt === 2 ? f.code !== start : f.code < start) continue;
      const persistent = f.code <= 0x0003 ? 0x02 : 0;
      const isCurrent = f.code <= 0x0003 || medium !== null ? 0x01 : 0;
      out.push(f.code >> 8, f.code & 0xff, persistent | isCurrent, f.bytes.length, ...f.bytes);
    }
    const data = Uint8Array.from(out);
    new DataView(data.buffer).setUint32(0, data.length - 4);
    return { data: data.subarray(0, Math.min(data.length, alloc)) };
  }

  private eventStatus(cdb: Uint8Array, alloc: number): Reply {
    if (!(cdb[1] & 1)) return { sense: SENSE_INVALID_FIELD_IN_CDB }; // only polled operation
    const MEDIA_CLASS = 0x10;
    if (!(cdb[4] & MEDIA_CLASS)) {
      return { data: Uint8Array.from([0, 2, 0x80, MEDIA_CLASS]).subarray(0, Math.min(4, alloc)) };
    }
    const event = this.mediaEvents.shift() ?? MEDIA_EVENT.NONE;
    // Media status: bit 0 tray open, bit 1 medium present.
    const status = (this.mediumBackend ? 0x02 : 0x00) | (this.trayOpenState ? 0x01 : 0x00);
    const data = Uint8Array.from([0, 6, 0x04, MEDIA_CLASS, event, status, 0, 0]);
    return { data: data.subarray(0, Math.min(data.length, alloc)) };
  }

  /** IDENTIFY PACKET DEVICE (ATA8-ACS 7.17): a removable CD-ROM, 12-byte packets, DMA. */
  identify(): Uint8Array {
    const w = new Uint16Array(256);
    w[0] = 0x85c0; // ATAPI, CD-ROM, removable, DRQ within 50 us, 12-byte packets
    putAtaString(w, 10, 10, this.serial);
    putAtaString(w, 23, 4, '1.0');
    putAtaString(w, 27, 20, 'Porthole DVD-ROM');
    w[49] = 0x0300; // LBA, DMA
    w[50] = 0x4000;
    w[53] = 0x0006;
    w[63] = 0x0007;
    w[64] = 0x0003;
    w[65] = 120; w[66] = 120; w[67] = 120; w[68] = 120;
    w[76] = 0x0002; // SATA Gen1
    w[80] = 0x01f0;
    w[82] = 0x4000 | 0x0200 | 0x0010; // NOP, DEVICE RESET, PACKET
    w[83] = 0x4000;
    w[84] = 0x4000;
    w[85] = w[82];
    w[86] = 0;
    w[87] = 0x4000;
    w[88] = 0x007f | 0x2000; // UDMA 0-6, mode 5 selected
    return identifyBytes(w);
  }
}

/** A host insert or eject refused because the guest locked the drive. */
export class MediumLockedError extends Error {
  constructor(readonly drive: string) {
    super(`the guest has locked ${drive} (PREVENT ALLOW MEDIUM REMOVAL); it was asked to eject the disc. Eject it in the guest, or force it`);
    this.name = 'MediumLockedError';
  }
}

function putAscii(data: Uint8Array, at: number, length: number, text: string): void {
  for (let i = 0; i < length; i++) data[at + i] = i < text.length ? text.charCodeAt(i) & 0x7f : 0x20;
}
