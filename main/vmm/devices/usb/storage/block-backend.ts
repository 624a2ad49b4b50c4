// Where a block device's bytes live. The device models (SCSI over USB mass storage) see only
// the asynchronous BlockBackend interface, so the lead can move the file onto the VM host
// thread behind the host channel without touching them: a completion may arrive before the
// call returns or much later.
//
// RawImageFile is a raw image on the host's file system. Opening it checks everything that
// can be checked before a device appears (exists, is a regular file, can be opened the way
// asked, is not in use, has a usable size) and throws an ImageError that names the path and
// the problem in plain words.
//
// Locking: flock(2) on the image itself (native/libc.ts), shared for a read-only device and
// exclusive for a writable one, never waiting. An flock belongs to the open file description,
// so it also keeps two devices of this process off one image, and the kernel drops it when
// the process dies: a crashed VM leaves nothing stale behind, which an O_EXCL lock file would.
// It is advisory: programs that do not take flock locks are not kept out (QEMU takes byte-range
// OFD locks instead, which Linux keeps separate from flock locks on local file systems).
import fs from 'node:fs';
import path from 'node:path';
import { libc } from '../../../../../native';

export type BlockReadCallback = (error: Error | null, data: Uint8Array | null) => void;
export type BlockDoneCallback = (error: Error | null) => void;

export interface BlockBackend {
  /** Bytes; fixed while the backend is open. */
  readonly size: number;
  readonly readOnly: boolean;
  /** Reads `length` bytes at `offset`; the data is the caller's to keep. */
  read(offset: number, length: number, done: BlockReadCallback): void;
  /** Writes `data` at `offset`; the caller may reuse `data` as soon as the call returns. */
  write(offset: number, data: Uint8Array, done: BlockDoneCallback): void;
  /** Makes every completed write durable (fdatasync for a file). */
  flush(done: BlockDoneCallback): void;
  /**
   * Lets the storage under `length` bytes at `offset` go (a hole punched in a file); what they
   * read afterwards is unspecified. Absent: the backend cannot discard.
   */
  discard?(offset: number, length: number, done: BlockDoneCallback): void;
  /**
   * Makes `length` bytes at `offset` read zeros; `unmap` lets the storage under them go (a
   * hole) where the backend can. Absent: the backend cannot.
   */
  writeZeroes?(offset: number, length: number, unmap: boolean, done: BlockDoneCallback): void;
  /**
   * Synchronous scatter-gather I/O between the image and the caller's buffers (guest memory,
   * with no copy in between): all of the buffers' bytes at `offset`, or an error. Present only
   * on a backend that completes everything inline (RawImageFile's `synchronous`).
   */
  readonly readvNow?: (offset: number, targets: readonly Uint8Array[]) => Error | null;
  readonly writevNow?: (offset: number, sources: readonly Uint8Array[]) => Error | null;
  /**
   * The open image as another thread may adopt it (adoptBlockImage on a dup of `fd`) while this
   * object leaves it alone, or null when it cannot be lent now; absent: never. A format that
   * caches metadata writes it back first.
   */
  readonly lendable?: () => LendableImage | null;
  /**
   * The image lent out (lendable) is back; `handedBack` is false when it was taken back by force
   * (the other thread did not answer in time). A format that caches metadata reads it again.
   */
  reclaimed?(handedBack: boolean): void;
  /** Releases the image once the operations in flight have completed. */
  close(): void;
}

export interface LendableImage {
  fd: number;
  guardProbedFormat: boolean;
  format: 'raw' | 'qcow2';
}

export type ImageProblem =
  | 'missing' | 'not-a-file' | 'permission' | 'read-only-file-system' | 'locked' | 'empty' | 'size' | 'unreadable'
  | 'corrupt' | 'unsupported' | 'backing' | 'format';

/** An image that cannot back a device; the message says which file and why. */
export class ImageError extends Error {
  constructor(readonly path: string, readonly problem: ImageProblem, detail: string) {
    super(`disk image ${path}: ${detail}`);
    this.name = 'ImageError';
  }
}

export interface RawImageOptions {
  readOnly?: boolean;
  /**
   * Complete every operation before the call returns (readSync/writeSync/fdatasyncSync).
   * The machine thread needs this while the image lives there: it sits in KVM_RUN, so an
   * asynchronous completion (or a microtask) would wait for the guest's next exit, and a
   * guest halted waiting for its disk would never make one.
   */
  synchronous?: boolean;
  /** Skip the size checks (a container format such as qcow2 opens its file through this). */
  anySize?: boolean;
  /**
   * Refuse a write that would put an image format's magic (qcow2's) at the start of the file:
   * set when the format was probed, so a guest cannot turn its raw disk into a qcow2 image
   * whose backing file names a host file the next time it is probed (QEMU does the same).
   */
  guardProbedFormat?: boolean;
}

const BLOCK = 512;

/** The path a descriptor was opened with (for messages), or a name for the descriptor itself. */
export function descriptorPath(fd: number): string {
  try {
    return fs.readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return `descriptor ${fd}`;
  }
}

function describeOpenError(file: string, code: string | undefined, readOnly: boolean): ImageError {
  const mode = readOnly ? 'reading' : 'reading and writing';
  switch (code) {
    case 'ENOENT': {
      const folder = path.dirname(file);
      if (!fs.existsSync(folder)) return new ImageError(file, 'missing', `it does not exist (nor does the folder ${folder})`);
      return new ImageError(file, 'missing', 'it does not exist');
    }
    case 'ENOTDIR':
      return new ImageError(file, 'missing', 'it does not exist (a part of its path is a file, not a folder)');
    case 'EISDIR':
      return new ImageError(file, 'not-a-file', 'it is a folder, not an image file');
    case 'EACCES':
    case 'EPERM':
      return new ImageError(file, 'permission', `permission denied: it cannot be opened for ${mode}` +
        (readOnly ? '' : ' (attach it read-only, or change its permissions)'));
    case 'EROFS':
      return new ImageError(file, 'read-only-file-system', 'it is on a read-only file system; attach it read-only');
    case 'ETXTBSY':
    case 'EBUSY':
      return new ImageError(file, 'locked', 'it is in use by another program');
    default:
      return new ImageError(file, 'unreadable', `it cannot be opened for ${mode} (${code ?? 'unknown error'})`);
  }
}

/** Reads or writes all of `length` bytes, looping over short transfers; 0 bytes means end of file. */
function transferAll(
  op: 'read' | 'write', fd: number, buffer: Uint8Array, position: number, done: BlockDoneCallback,
): void {
  let moved = 0;
  const step = (error: NodeJS.ErrnoException | null, count: number): void => {
    if (error) {
      done(error);
      return;
    }
    moved += count;
    if (moved >= buffer.length) {
      done(null);
      return;
    }
    if (count === 0) {
      done(new Error(op === 'read' ? `end of file at offset ${position + moved}` : `nothing written at offset ${position + moved}`));
      return;
    }
    next();
  };
  const next = (): void => {
    if (op === 'read') fs.read(fd, buffer, moved, buffer.length - moved, position + moved, step);
    else fs.write(fd, buffer, moved, buffer.length - moved, position + moved, step);
  };
  next();
}

export class RawImageFile implements BlockBackend {
  readonly size: number;
  readonly readOnly: boolean;
  readonly readvNow?: (offset: number, targets: readonly Uint8Array[]) => Error | null;
  readonly writevNow?: (offset: number, sources: readonly Uint8Array[]) => Error | null;
  private fd: number;
  private inFlight = 0;
  private closing = false;

  /** Opens and locks the image; throws ImageError when it cannot back a device. */
  static open(file: string, options: RawImageOptions = {}): RawImageFile {
    const image = new RawImageFile(path.resolve(file), options.readOnly ?? false, options.synchronous ?? false, options.anySize ?? false);
    image.guardProbedFormat = options.guardProbedFormat ?? false;
    return image;
  }

  /**
   * A synchronous image on `fd`, a descriptor of an image another thread opened, checked and
   * locked (see lendable); this object owns `fd` and closes it (also when this throws).
   */
  static adopt(fd: number, options: { readOnly: boolean; guardProbedFormat: boolean }): RawImageFile {
    const image = new RawImageFile(descriptorPath(fd), options.readOnly, true, true, fd);
    image.guardProbedFormat = options.guardProbedFormat;
    return image;
  }

  private guardProbedFormat = false;
  private readonly adopted: boolean;

  readonly lendable = (): LendableImage | null =>
    this.closing || this.inFlight > 0 ? null : { fd: this.fd, guardProbedFormat: this.guardProbedFormat, format: 'raw' };

  private constructor(readonly path: string, readOnly: boolean, readonly synchronous: boolean, anySize: boolean, adoptedFd = -1) {
    this.readOnly = readOnly;
    this.adopted = adoptedFd >= 0;
    if (adoptedFd >= 0) {
      this.fd = adoptedFd;
      try {
        this.size = fs.fstatSync(adoptedFd).size;
      } catch (error) {
        libc.close(adoptedFd);
        throw error;
      }
      this.readvNow = (offset, targets) => this.vectorNow('read', targets, offset);
      this.writevNow = (offset, sources) => this.vectorNow('write', sources, offset);
      return;
    }
    let fd: number;
    try {
      fd = fs.openSync(path,
        // O_NONBLOCK: opening a FIFO or a device must not hang; a regular file ignores it.
        (readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR) | fs.constants.O_NOCTTY | fs.constants.O_NONBLOCK);
    } catch (error) {
      throw describeOpenError(path, (error as NodeJS.ErrnoException).code, readOnly);
    }
    try {
      const stat = fs.fstatSync(fd);
      if (stat.isDirectory()) throw new ImageError(path, 'not-a-file', 'it is a folder, not an image file');
      if (!stat.isFile()) throw new ImageError(path, 'not-a-file', 'it is not a regular file (a device, pipe or socket cannot be an image here)');
      const locked = libc.flock(fd, (readOnly ? libc.LOCK_SH : libc.LOCK_EX) | libc.LOCK_NB);
      if (locked !== 0) {
        const code = libc.errnoName(-locked);
        if (code === 'EWOULDBLOCK' || code === 'EAGAIN') {
          throw new ImageError(path, 'locked', readOnly
            ? 'it is in use: another program or device is writing to it'
            : 'it is in use: another program or device has it open');
        }
        throw new ImageError(path, 'locked', `it cannot be locked (${code})`);
      }
      if (anySize) {
        this.size = stat.size;
        this.fd = fd;
        return;
      }
      if (stat.size === 0) throw new ImageError(path, 'empty', 'it is empty (0 bytes)');
      if (stat.size % BLOCK !== 0) {
        throw new ImageError(path, 'size', `it is ${stat.size} bytes, which is not a whole number of ${BLOCK}-byte blocks`);
      }
      if (!Number.isSafeInteger(stat.size)) throw new ImageError(path, 'size', `it is too large (${stat.size} bytes)`);
      // One read proves the data can be read (an image on a failing disk, or a FUSE file).
      const probe = new Uint8Array(BLOCK);
      try {
        if (fs.readSync(fd, probe, 0, BLOCK, 0) !== BLOCK) throw new Error('short read');
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
        throw new ImageError(path, 'unreadable', `its first block cannot be read (${code})`);
      }
      this.size = stat.size;
    } catch (error) {
      fs.closeSync(fd);
      throw error;
    }
    this.fd = fd;
    if (synchronous) {
      this.readvNow = (offset, targets) => this.vectorNow('read', targets, offset);
      this.writevNow = (offset, sources) => this.vectorNow('write', sources, offset);
    }
  }

  read(offset: number, length: number, done: BlockReadCallback): void {
    const refused = this.refuse(offset, length, false);
    if (refused) {
      this.later(() => done(refused, null));
      return;
    }
    const buffer = new Uint8Array(length);
    if (this.synchronous) {
      const error = this.transferNow('read', buffer, offset);
      done(error, error ? null : buffer);
      return;
    }
    this.begin();
    transferAll('read', this.fd, buffer, offset, (error) => {
      this.end();
      done(error, error ? null : buffer);
    });
  }

  write(offset: number, data: Uint8Array, done: BlockDoneCallback): void {
    const refused = this.refuse(offset, data.length, true) ?? this.refuseMagic(offset, data);
    if (refused) {
      this.later(() => done(refused));
      return;
    }
    if (this.synchronous) {
      done(this.transferNow('write', data, offset));
      return;
    }
    // The caller may reuse its buffer once this returns.
    const copy = data.slice();
    this.begin();
    transferAll('write', this.fd, copy, offset, (error) => {
      this.end();
      done(error);
    });
  }

  flush(done: BlockDoneCallback): void {
    if (this.closing) {
      this.later(() => done(new Error(`${this.path} is closed`)));
      return;
    }
    if (this.readOnly) {
      this.later(() => done(null));
      return;
    }
    if (this.synchronous) {
      try {
        fs.fdatasyncSync(this.fd);
        done(null);
      } catch (error) {
        done(error as Error);
      }
      return;
    }
    this.begin();
    fs.fdatasync(this.fd, (error) => {
      this.end();
      done(error);
    });
  }

  discard(offset: number, length: number, done: BlockDoneCallback): void {
    const refused = this.refuse(offset, length, true);
    if (refused) {
      this.later(() => done(refused));
      return;
    }
    // One quick system call: done at once, even without `synchronous`.
    const r = libc.fallocate(this.fd, libc.FALLOC_FL_PUNCH_HOLE | libc.FALLOC_FL_KEEP_SIZE, offset, length);
    this.later(() => done(r === 0 ? null : new Error(`discarding ${length} bytes at ${offset} of ${this.path}: ${libc.errnoName(-r)}`)));
  }

  /**
   * Zeros without writing them where the file system can: a punched hole when `unmap` allows
   * (it reads zeros), else an allocated zeroed range (FALLOC_FL_ZERO_RANGE); failing both, zeros
   * written in 1 MiB pieces. Done inline, as discard.
   */
  writeZeroes(offset: number, length: number, unmap: boolean, done: BlockDoneCallback): void {
    const refused = this.refuse(offset, length, true);
    if (refused) {
      this.later(() => done(refused));
      return;
    }
    let error: Error | null = null;
    const punched = unmap && libc.fallocate(this.fd, libc.FALLOC_FL_PUNCH_HOLE | libc.FALLOC_FL_KEEP_SIZE, offset, length) === 0;
    if (!punched && libc.fallocate(this.fd, libc.FALLOC_FL_ZERO_RANGE | libc.FALLOC_FL_KEEP_SIZE, offset, length) !== 0) {
      const zeros = new Uint8Array(Math.min(length, 1048576));
      for (let at = 0; at < length && !error; at += zeros.length) {
        error = this.transferNow('write', zeros.subarray(0, Math.min(zeros.length, length - at)), offset + at);
      }
    }
    this.later(() => done(error));
  }

  /** Hands the open, locked descriptor to a format layer (qcow2); this object is done with. */
  detachFd(): number {
    const fd = this.fd;
    this.fd = -1;
    this.closing = true;
    return fd;
  }

  close(): void {
    if (this.closing) return;
    this.closing = true;
    if (this.inFlight === 0) this.release();
  }

  /** A completion that has no I/O behind it: inline when synchronous, else a microtask. */
  private later(fn: () => void): void {
    if (this.synchronous) fn();
    else queueMicrotask(fn);
  }

  private transferNow(op: 'read' | 'write', buffer: Uint8Array, position: number): Error | null {
    try {
      for (let moved = 0; moved < buffer.length;) {
        const count = op === 'read'
          ? fs.readSync(this.fd, buffer, moved, buffer.length - moved, position + moved)
          : fs.writeSync(this.fd, buffer, moved, buffer.length - moved, position + moved);
        if (count === 0) return new Error(`${op === 'read' ? 'end of file' : 'nothing written'} at offset ${position + moved}`);
        moved += count;
      }
      return null;
    } catch (error) {
      return error as Error;
    }
  }

  /** preadv/pwritev of whole buffers, looping over short transfers. */
  private vectorNow(op: 'read' | 'write', buffers: readonly Uint8Array[], position: number): Error | null {
    let length = 0;
    for (const b of buffers) length += b.length;
    const refused = this.refuse(position, length, op === 'write')
      ?? (op === 'write' && position === 0 ? this.refuseMagic(0, firstBytesOf(buffers, 4)) : null);
    if (refused) return refused;
    // One buffer (a 4 KiB command, or pages that follow each other): pread/pwrite, which
    // costs Node less than its readv/writev wrappers.
    if (buffers.length === 1) return this.transferNow(op, buffers[0], position);
    try {
      let rest: Uint8Array[] = buffers as Uint8Array[];
      for (let moved = 0; moved < length;) {
        const count = op === 'read' ? fs.readvSync(this.fd, rest, position + moved) : fs.writevSync(this.fd, rest, position + moved);
        if (count === 0) return new Error(`${op === 'read' ? 'end of file' : 'nothing written'} at offset ${position + moved}`);
        moved += count;
        if (moved < length) rest = skipBytes(rest, count);
      }
      return null;
    } catch (error) {
      return error as Error;
    }
  }

  private refuse(offset: number, length: number, write: boolean): Error | null {
    if (this.closing) return new Error(`${this.path} is closed`);
    if (write && this.readOnly) return new Error(`${this.path} is open read-only`);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      return new RangeError(`${length} bytes at offset ${offset} lie outside ${this.path} (${this.size} bytes)`);
    }
    return null;
  }

  private refuseMagic(offset: number, data: Uint8Array): Error | null {
    return this.writesFormatMagic(offset, data)
      ? new Error(`${this.path}: refusing to write a qcow2 header into a raw image whose format was probed (give format=raw)`) : null;
  }

  /** True when a write of `data` at `offset` would make a probed raw image look like qcow2. */
  private writesFormatMagic(offset: number, data: Uint8Array): boolean {
    return this.guardProbedFormat && offset === 0 && data.length >= 4
      && data[0] === 0x51 && data[1] === 0x46 && data[2] === 0x49 && data[3] === 0xfb;
  }

  private begin(): void {
    this.inFlight++;
  }

  private end(): void {
    this.inFlight--;
    if (this.closing && this.inFlight === 0) this.release();
  }

  private release(): void {
    if (this.fd < 0) return;
    // An adopted descriptor was not opened through fs (whose bookkeeping warns of a stranger).
    if (this.adopted) libc.close(this.fd);
    else fs.closeSync(this.fd);
    this.fd = -1;
  }
}

/** The buffers after their first `n` bytes (what a short readv/writev left). */
function skipBytes(buffers: readonly Uint8Array[], n: number): Uint8Array[] {
  let i = 0;
  while (i < buffers.length && n >= buffers[i].length) n -= buffers[i++].length;
  const rest = buffers.slice(i);
  if (rest.length > 0 && n > 0) rest[0] = rest[0].subarray(n);
  return rest;
}

/** The first `n` bytes of the buffers' concatenation (fewer if they hold fewer). */
function firstBytesOf(buffers: readonly Uint8Array[], n: number): Uint8Array {
  const out = new Uint8Array(n);
  let at = 0;
  for (const b of buffers) {
    if (at >= n) break;
    const k = Math.min(b.length, n - at);
    out.set(b.subarray(0, k), at);
    at += k;
  }
  return out.subarray(0, at);
}
