// A SCSI direct-access block device (SBC) over a BlockBackend: the commands Linux, SeaBIOS
// and Windows send to a USB stick. Runs on the machine thread. The transport (Bulk-Only
// Transport) parses nothing: it hands the CDB here, then moves the data phase through
// `ScsiCommand.read` / `write` and asks `finish` for the status. Every backend call is
// asynchronous; a command never touches bytes outside the image.
import type { BlockBackend } from './block-backend';

export const BLOCK_SIZE = 512;

/** SCSI status bytes (SAM). */
export const STATUS_GOOD = 0x00;
export const STATUS_CHECK_CONDITION = 0x02;
export type ScsiStatus = typeof STATUS_GOOD | typeof STATUS_CHECK_CONDITION;

/** Sense keys (SPC-4 table 54). */
export const SenseKey = {
  NO_SENSE: 0x0,
  NOT_READY: 0x2,
  MEDIUM_ERROR: 0x3,
  HARDWARE_ERROR: 0x4,
  ILLEGAL_REQUEST: 0x5,
  UNIT_ATTENTION: 0x6,
  DATA_PROTECT: 0x7,
  ABORTED_COMMAND: 0xb,
} as const;

export interface Sense {
  key: number;
  /** Additional sense code and qualifier. */
  asc: number;
  ascq: number;
}

export const SENSE_NONE: Sense = { key: SenseKey.NO_SENSE, asc: 0, ascq: 0 };
export const SENSE_INVALID_OPCODE: Sense = { key: SenseKey.ILLEGAL_REQUEST, asc: 0x20, ascq: 0x00 };
export const SENSE_LBA_OUT_OF_RANGE: Sense = { key: SenseKey.ILLEGAL_REQUEST, asc: 0x21, ascq: 0x00 };
export const SENSE_INVALID_FIELD_IN_CDB: Sense = { key: SenseKey.ILLEGAL_REQUEST, asc: 0x24, ascq: 0x00 };
export const SENSE_LUN_NOT_SUPPORTED: Sense = { key: SenseKey.ILLEGAL_REQUEST, asc: 0x25, ascq: 0x00 };
export const SENSE_SAVING_NOT_SUPPORTED: Sense = { key: SenseKey.ILLEGAL_REQUEST, asc: 0x39, ascq: 0x00 };
export const SENSE_WRITE_PROTECTED: Sense = { key: SenseKey.DATA_PROTECT, asc: 0x27, ascq: 0x00 };
export const SENSE_READ_ERROR: Sense = { key: SenseKey.MEDIUM_ERROR, asc: 0x11, ascq: 0x00 };
export const SENSE_WRITE_ERROR: Sense = { key: SenseKey.MEDIUM_ERROR, asc: 0x0c, ascq: 0x00 };

/** Operation codes this device knows. */
export const Op = {
  TEST_UNIT_READY: 0x00,
  REQUEST_SENSE: 0x03,
  READ_6: 0x08,
  WRITE_6: 0x0a,
  INQUIRY: 0x12,
  MODE_SENSE_6: 0x1a,
  START_STOP_UNIT: 0x1b,
  PREVENT_ALLOW_MEDIUM_REMOVAL: 0x1e,
  READ_FORMAT_CAPACITIES: 0x23,
  READ_CAPACITY_10: 0x25,
  READ_10: 0x28,
  WRITE_10: 0x2a,
  SYNCHRONIZE_CACHE_10: 0x35,
  MODE_SENSE_10: 0x5a,
  READ_16: 0x88,
  WRITE_16: 0x8a,
  SYNCHRONIZE_CACHE_16: 0x91,
  SERVICE_ACTION_IN_16: 0x9e,
  REPORT_LUNS: 0xa0,
} as const;

const SAI_READ_CAPACITY_16 = 0x10;

export type ScsiDirection = 'none' | 'in' | 'out';

/**
 * One command, from its CDB to its status. The transport drives it:
 * - `direction` and `length` are the device's intent (Di / Do in the BOT spec);
 * - data-in: `read(n)` produces the next n bytes, in order, until `length` (or the transport
 *   stops asking: the host wanted less);
 * - data-out: `write(bytes)` consumes the next bytes, in order, up to `length`;
 * - `finish` then reports the status (and does the work of a command without data, such as a
 *   cache flush). Nothing is changed in the disk (sense data included) unless a command's
 *   data phase or `finish` runs, so a transport may drop a command it refuses (phase error).
 * Callbacks may run before the call returns or later.
 */
export interface ScsiCommand {
  readonly opcode: number;
  readonly direction: ScsiDirection;
  readonly length: number;
  /** Produces the next `n` bytes (1 <= n <= what is left); null when the backend failed. */
  read(n: number, done: (data: Uint8Array | null) => void): void;
  /** Consumes the next bytes (at most what is left); false when the backend failed. */
  write(data: Uint8Array, done: (ok: boolean) => void): void;
  /**
   * read/write done inline, straight between the backend and `buffers` (guest memory): the
   * next bytes, as many as the buffers hold (at most what is left). False when the backend
   * failed. Present only on READ/WRITE over a backend with readvNow/writevNow.
   */
  readInto?(buffers: readonly Uint8Array[]): boolean;
  writeFrom?(buffers: readonly Uint8Array[]): boolean;
  finish(done: (status: ScsiStatus) => void): void;
}

export interface ScsiDiskOptions {
  /** INQUIRY strings; truncated and space-padded to 8, 16 and 4 bytes. */
  vendor?: string;
  product?: string;
  revision?: string;
  /** Unit serial number (VPD page 0x80), printable ASCII. */
  serial?: string;
  /** The medium is removable (RMB): what USB sticks report. */
  removable?: boolean;
}

/** Whole bytes of a CDB, big-endian; `cdb` is always 16 bytes long here. */
function be16(cdb: Uint8Array, at: number): number {
  return (cdb[at] << 8) | cdb[at + 1];
}
function be32(cdb: Uint8Array, at: number): number {
  return ((cdb[at] << 24) | (cdb[at + 1] << 16) | (cdb[at + 2] << 8) | cdb[at + 3]) >>> 0;
}
/** A 64-bit LBA as a number; values above 2^53 become Infinity (always out of range). */
function be64(cdb: Uint8Array, at: number): number {
  const high = be32(cdb, at);
  if (high >= 0x200000) return Infinity;
  return high * 0x100000000 + be32(cdb, at + 4);
}

function ascii(text: string, length: number): Uint8Array {
  const out = new Uint8Array(length).fill(0x20);
  for (let i = 0; i < Math.min(length, text.length); i++) {
    const c = text.charCodeAt(i);
    out[i] = c >= 0x20 && c < 0x7f ? c : 0x3f;
  }
  return out;
}

/** A command whose data (if any) is known when it starts: every command but READ and WRITE. */
class FixedCommand implements ScsiCommand {
  readonly direction: ScsiDirection;
  readonly length: number;
  private position = 0;
  constructor(
    readonly opcode: number,
    private readonly disk: ScsiDisk,
    private readonly sense: Sense | null,
    private readonly data: Uint8Array | null = null,
    /** Work that runs in `finish` (a flush); reports the sense it ends with. */
    private readonly work: ((done: (sense: Sense | null) => void) => void) | null = null,
  ) {
    this.direction = data && data.length > 0 ? 'in' : 'none';
    this.length = data ? data.length : 0;
  }
  read(n: number, done: (data: Uint8Array | null) => void): void {
    const data = this.data ?? new Uint8Array(0);
    const chunk = data.subarray(this.position, Math.min(data.length, this.position + n));
    this.position += chunk.length;
    done(chunk);
  }
  write(_data: Uint8Array, done: (ok: boolean) => void): void {
    done(false);
  }
  finish(done: (status: ScsiStatus) => void): void {
    if (this.sense || !this.work) {
      done(this.disk.complete(this.opcode, this.sense));
      return;
    }
    this.work((sense) => done(this.disk.complete(this.opcode, sense)));
  }
}

/** READ or WRITE of `blocks` blocks at `lba` (already checked against the capacity). */
class TransferCommand implements ScsiCommand {
  readonly direction: ScsiDirection;
  readonly length: number;
  private position = 0;
  private failed: Sense | null = null;
  constructor(
    readonly opcode: number,
    private readonly disk: ScsiDisk,
    private readonly backend: BlockBackend,
    write: boolean,
    private readonly offset: number,
    blocks: number,
  ) {
    this.length = blocks * BLOCK_SIZE;
    this.direction = this.length === 0 ? 'none' : write ? 'out' : 'in';
    const { readvNow, writevNow } = backend;
    if (!write && readvNow) this.readInto = (buffers) => this.vector(false, buffers, readvNow);
    if (write && writevNow) this.writeFrom = (buffers) => this.vector(true, buffers, writevNow);
  }
  read(n: number, done: (data: Uint8Array | null) => void): void {
    const length = Math.max(0, Math.min(n, this.length - this.position));
    if (this.direction !== 'in' || this.failed || length === 0) {
      done(this.failed ? null : new Uint8Array(0));
      return;
    }
    const at = this.offset + this.position;
    this.position += length;
    this.backend.read(at, length, (error, data) => {
      if (error || !data || data.length !== length) {
        this.failed = SENSE_READ_ERROR;
        this.disk.ioError('read', at, length, error);
        done(null);
        return;
      }
      done(data);
    });
  }
  write(data: Uint8Array, done: (ok: boolean) => void): void {
    const length = Math.max(0, Math.min(data.length, this.length - this.position));
    if (this.direction !== 'out' || this.failed || length === 0) {
      done(!this.failed);
      return;
    }
    const at = this.offset + this.position;
    this.position += length;
    this.backend.write(at, data.subarray(0, length), (error) => {
      if (error) {
        this.failed = SENSE_WRITE_ERROR;
        this.disk.ioError('write', at, length, error);
        done(false);
        return;
      }
      done(true);
    });
  }
  readonly readInto?: (buffers: readonly Uint8Array[]) => boolean;
  readonly writeFrom?: (buffers: readonly Uint8Array[]) => boolean;
  finish(done: (status: ScsiStatus) => void): void {
    done(this.disk.complete(this.opcode, this.failed));
  }

  /** The next `buffers` of the command straight to or from the backend (readvNow/writevNow). */
  private vector(write: boolean, buffers: readonly Uint8Array[], now: (offset: number, buffers: readonly Uint8Array[]) => Error | null): boolean {
    if (this.failed) return false;
    let length = 0;
    for (const b of buffers) length += b.length;
    if (this.direction !== (write ? 'out' : 'in') || length > this.length - this.position) return false;
    if (length === 0) return true;
    const at = this.offset + this.position;
    this.position += length;
    const error = now(at, buffers);
    if (error) {
      this.failed = write ? SENSE_WRITE_ERROR : SENSE_READ_ERROR;
      this.disk.ioError(write ? 'write' : 'read', at, length, error);
      return false;
    }
    return true;
  }
}

/**
 * The logical unit. Holds the sense data of the last command (for REQUEST SENSE and the
 * transport's auto-sense) and the medium-removal lock.
 */
export class ScsiDisk {
  private readonly vendor: Uint8Array;
  private readonly product: Uint8Array;
  private readonly revision: Uint8Array;
  private readonly serial: Uint8Array;
  private readonly removable: boolean;
  private sense: Sense = SENSE_NONE;
  /** PREVENT ALLOW MEDIUM REMOVAL: the guest asked that the medium stay in. */
  removalPrevented = false;
  /** Called on a backend failure, for the VM's log. */
  onIoError: ((text: string) => void) | null = null;

  constructor(private readonly backend: BlockBackend, options: ScsiDiskOptions = {}) {
    if (backend.size <= 0 || backend.size % BLOCK_SIZE !== 0) {
      throw new RangeError(`a SCSI disk needs a whole number of ${BLOCK_SIZE}-byte blocks, not ${backend.size} bytes`);
    }
    this.vendor = ascii(options.vendor ?? 'Porthole', 8);
    this.product = ascii(options.product ?? 'USB Disk', 16);
    this.revision = ascii(options.revision ?? '1.0', 4);
    const serial = (options.serial ?? '0000000000000001').replace(/[^\x21-\x7e]/g, '').slice(0, 32);
    this.serial = ascii(serial.length > 0 ? serial : '0', Math.max(1, serial.length));
    this.removable = options.removable ?? true;
  }

  get blocks(): number {
    return this.backend.size / BLOCK_SIZE;
  }

  get readOnly(): boolean {
    return this.backend.readOnly;
  }

  /** The sense data REQUEST SENSE would return now. */
  get currentSense(): Sense {
    return { ...this.sense };
  }

  /** Drops the sense data (a bus or transport reset). */
  resetSense(): void {
    this.sense = SENSE_NONE;
  }

  /**
   * Parses a CDB into a command. `cdb` may be any length up to 16; missing bytes read as
   * zero. Throws nothing: a bad CDB becomes a command that ends in CHECK CONDITION.
   */
  command(cdbBytes: Uint8Array, lun = 0): ScsiCommand {
    const cdb = new Uint8Array(16);
    cdb.set(cdbBytes.subarray(0, 16));
    const op = cdb[0];
    if (lun !== 0) return this.otherLun(op, cdb);
    switch (op) {
      case Op.TEST_UNIT_READY:
        return this.fixed(op, null);
      case Op.REQUEST_SENSE: {
        if (cdb[1] & 0x01) return this.fixed(op, SENSE_INVALID_FIELD_IN_CDB); // descriptor format
        return this.fixed(op, null, fixedSense(this.sense).subarray(0, cdb[4]));
      }
      case Op.INQUIRY:
        return this.inquiry(cdb);
      case Op.MODE_SENSE_6:
        return this.modeSense(cdb, false);
      case Op.MODE_SENSE_10:
        return this.modeSense(cdb, true);
      case Op.START_STOP_UNIT:
        // A stick has no motor, and the image stays attached until the user removes it from
        // the VM, so stop and eject are accepted and change nothing.
        return this.fixed(op, null);
      case Op.PREVENT_ALLOW_MEDIUM_REMOVAL: {
        const prevent = (cdb[4] & 0x03) !== 0;
        return this.fixed(op, null, null, (done) => {
          this.removalPrevented = prevent;
          done(null);
        });
      }
      case Op.READ_FORMAT_CAPACITIES:
        return this.fixed(op, null, this.formatCapacities().subarray(0, be16(cdb, 7)));
      case Op.READ_CAPACITY_10: {
        const data = new Uint8Array(8);
        const view = new DataView(data.buffer);
        view.setUint32(0, Math.min(this.blocks - 1, 0xffffffff));
        view.setUint32(4, BLOCK_SIZE);
        return this.fixed(op, null, data);
      }
      case Op.SERVICE_ACTION_IN_16: {
        if ((cdb[1] & 0x1f) !== SAI_READ_CAPACITY_16) return this.fixed(op, SENSE_INVALID_FIELD_IN_CDB);
        const data = new Uint8Array(32);
        const view = new DataView(data.buffer);
        view.setBigUint64(0, BigInt(this.blocks - 1));
        view.setUint32(8, BLOCK_SIZE);
        return this.fixed(op, null, data.subarray(0, be32(cdb, 10)));
      }
      case Op.READ_6:
      case Op.WRITE_6: {
        const lba = ((cdb[1] & 0x1f) << 16) | be16(cdb, 2);
        return this.transfer(op, op === Op.WRITE_6, lba, cdb[4] === 0 ? 256 : cdb[4]);
      }
      case Op.READ_10:
      case Op.WRITE_10:
        return this.transfer(op, op === Op.WRITE_10, be32(cdb, 2), be16(cdb, 7));
      case Op.READ_16:
      case Op.WRITE_16:
        return this.transfer(op, op === Op.WRITE_16, be64(cdb, 2), be32(cdb, 10));
      case Op.SYNCHRONIZE_CACHE_10:
      case Op.SYNCHRONIZE_CACHE_16: {
        const [lba, blocks] = op === Op.SYNCHRONIZE_CACHE_10 ? [be32(cdb, 2), be16(cdb, 7)] : [be64(cdb, 2), be32(cdb, 10)];
        if (lba > this.blocks || (blocks !== 0 && lba + blocks > this.blocks)) return this.fixed(op, SENSE_LBA_OUT_OF_RANGE);
        return this.fixed(op, null, null, (done) => this.flush(done));
      }
      case Op.REPORT_LUNS: {
        const data = new Uint8Array(16);
        data[3] = 8; // one LUN (0), eight bytes
        return this.fixed(op, null, data.subarray(0, be32(cdb, 6)));
      }
      default:
        return this.fixed(op, SENSE_INVALID_OPCODE);
    }
  }

  /** Records how a command ended and returns its status. */
  complete(_opcode: number, sense: Sense | null): ScsiStatus {
    this.sense = sense ?? SENSE_NONE;
    return sense ? STATUS_CHECK_CONDITION : STATUS_GOOD;
  }

  ioError(what: 'read' | 'write' | 'flush', offset: number, length: number, error: Error | null): void {
    const where = what === 'flush' ? '' : ` of ${length} bytes at offset ${offset}`;
    this.onIoError?.(`${what}${where} failed: ${error ? error.message : 'short transfer'}`);
  }

  private fixed(
    op: number, sense: Sense | null, data: Uint8Array | null = null,
    work: ((done: (sense: Sense | null) => void) => void) | null = null,
  ): ScsiCommand {
    return new FixedCommand(op, this, sense, sense ? null : data, work);
  }

  private transfer(op: number, write: boolean, lba: number, blocks: number): ScsiCommand {
    if (write && this.readOnly) return this.fixed(op, SENSE_WRITE_PROTECTED);
    if (lba + blocks > this.blocks || (blocks === 0 && lba > this.blocks)) return this.fixed(op, SENSE_LBA_OUT_OF_RANGE);
    return new TransferCommand(op, this, this.backend, write, lba * BLOCK_SIZE, blocks);
  }

  private flush(done: (sense: Sense | null) => void): void {
    if (this.readOnly) {
      done(null);
      return;
    }
    this.backend.flush((error) => {
      if (error) this.ioError('flush', 0, 0, error);
      done(error ? SENSE_WRITE_ERROR : null);
    });
  }

  /** A LUN other than 0: INQUIRY says nobody is there, REQUEST SENSE explains, the rest fail. */
  private otherLun(op: number, cdb: Uint8Array): ScsiCommand {
    if (op === Op.INQUIRY && (cdb[1] & 0x01) === 0) {
      const data = new Uint8Array(36);
      data[0] = 0x7f; // peripheral qualifier 3: no logical unit here
      data[4] = 31;
      return this.fixed(op, null, data.subarray(0, be16(cdb, 3)));
    }
    if (op === Op.REQUEST_SENSE) return this.fixed(op, null, fixedSense(SENSE_LUN_NOT_SUPPORTED).subarray(0, cdb[4]));
    if (op === Op.REPORT_LUNS) return this.command(cdb, 0);
    return this.fixed(op, SENSE_LUN_NOT_SUPPORTED);
  }

  private inquiry(cdb: Uint8Array): ScsiCommand {
    const op = cdb[0];
    const allocation = be16(cdb, 3);
    const evpd = (cdb[1] & 0x01) !== 0;
    const page = cdb[2];
    if (!evpd) {
      if (page !== 0) return this.fixed(op, SENSE_INVALID_FIELD_IN_CDB);
      const data = new Uint8Array(36);
      data[0] = 0x00; // direct-access block device
      data[1] = this.removable ? 0x80 : 0x00;
      data[2] = 0x05; // SPC-3
      data[3] = 0x02; // response data format 2
      data[4] = data.length - 5;
      data.set(this.vendor, 8);
      data.set(this.product, 16);
      data.set(this.revision, 32);
      return this.fixed(op, null, data.subarray(0, allocation));
    }
    let body: Uint8Array;
    switch (page) {
      case 0x00:
        body = Uint8Array.of(0x00, 0x80, 0x83);
        break;
      case 0x80:
        body = this.serial;
        break;
      case 0x83: {
        // One designator: T10 vendor ID based (type 1), ASCII: the vendor then the serial.
        const id = new Uint8Array(8 + this.serial.length);
        id.set(this.vendor, 0);
        id.set(this.serial, 8);
        body = new Uint8Array(4 + id.length);
        body[0] = 0x02; // code set: ASCII
        body[1] = 0x01; // association: logical unit; designator type: T10 vendor ID
        body[3] = id.length;
        body.set(id, 4);
        break;
      }
      default:
        return this.fixed(op, SENSE_INVALID_FIELD_IN_CDB);
    }
    const data = new Uint8Array(4 + body.length);
    data[1] = page;
    data[2] = body.length >> 8;
    data[3] = body.length & 0xff;
    data.set(body, 4);
    return this.fixed(op, null, data.subarray(0, allocation));
  }

  private modeSense(cdb: Uint8Array, ten: boolean): ScsiCommand {
    const op = cdb[0];
    const control = cdb[2] >> 6; // 0 current, 1 changeable, 2 default, 3 saved
    const page = cdb[2] & 0x3f;
    const subpage = cdb[3];
    const allocation = ten ? be16(cdb, 7) : cdb[4];
    if (control === 3) return this.fixed(op, SENSE_SAVING_NOT_SUPPORTED);
    const changeable = control === 1;
    const pages: Uint8Array[] = [];
    if (page === 0x3f && (subpage === 0x00 || subpage === 0xff)) {
      pages.push(cachingPage(changeable), controlPage(changeable));
    } else if (page === 0x08 && subpage === 0) {
      pages.push(cachingPage(changeable));
    } else if (page === 0x0a && subpage === 0) {
      pages.push(controlPage(changeable));
    } else {
      return this.fixed(op, SENSE_INVALID_FIELD_IN_CDB);
    }
    // No block descriptors: SBC lets a device return none, whatever DBD says.
    const headerLength = ten ? 8 : 4;
    const total = headerLength + pages.reduce((n, p) => n + p.length, 0);
    const data = new Uint8Array(total);
    const writeProtect = this.readOnly ? 0x80 : 0x00;
    if (ten) {
      data[0] = (total - 2) >> 8;
      data[1] = (total - 2) & 0xff;
      data[3] = writeProtect;
    } else {
      data[0] = total - 1;
      data[2] = writeProtect;
    }
    let at = headerLength;
    for (const p of pages) {
      data.set(p, at);
      at += p.length;
    }
    return this.fixed(op, null, data.subarray(0, allocation));
  }

  private formatCapacities(): Uint8Array {
    const data = new Uint8Array(12);
    const view = new DataView(data.buffer);
    data[3] = 8; // one capacity descriptor
    view.setUint32(4, Math.min(this.blocks, 0xffffffff));
    view.setUint32(8, BLOCK_SIZE); // byte 8 (descriptor code) is overwritten below
    data[8] = 0x02; // formatted medium
    return data;
  }
}

/** Fixed-format sense data (SPC-4 4.5.3), 18 bytes. */
export function fixedSense(sense: Sense): Uint8Array {
  const data = new Uint8Array(18);
  data[0] = 0x70; // current error, fixed format, information field not valid
  data[2] = sense.key & 0x0f;
  data[7] = 10; // additional sense length
  data[12] = sense.asc;
  data[13] = sense.ascq;
  return data;
}

/** Caching mode page (SBC-3 6.4.5): write-back cache on, so guests send SYNCHRONIZE CACHE. */
function cachingPage(changeable: boolean): Uint8Array {
  const page = new Uint8Array(20);
  page[0] = 0x08;
  page[1] = page.length - 2;
  if (!changeable) page[2] = 0x04; // WCE
  return page;
}

/** Control mode page (SPC-4 7.5.8), all defaults. */
function controlPage(_changeable: boolean): Uint8Array {
  const page = new Uint8Array(12);
  page[0] = 0x0a;
  page[1] = page.length - 2;
  return page;
}
