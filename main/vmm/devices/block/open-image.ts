// The one way device models (virtio-blk, USB sticks, AHCI) open a disk image: raw or qcow2,
// given or probed. Every error is an ImageError naming the file and the problem, thrown
// before a device exists.
import fs from 'node:fs';
import path from 'node:path';
import { descriptorPath, ImageError, RawImageFile, type BlockBackend, type LendableImage } from '../usb/storage/block-backend';
import { QCOW2_MAGIC, Qcow2Image } from './qcow2';

export type ImageFormat = 'raw' | 'qcow2';
export const IMAGE_FORMATS: readonly ImageFormat[] = ['raw', 'qcow2'];

export interface OpenImageOptions {
  readOnly?: boolean;
  /** Complete each operation before the call returns (see RawImageOptions.synchronous). */
  synchronous?: boolean;
  /** Absent: qcow2 when the file starts with qcow2's magic, else raw. */
  format?: ImageFormat;
}

export type BlockImage = BlockBackend & { readonly path: string };

/** What the first bytes of `file` say it is; null when it cannot be read (the open will say why). */
export function probeImageFormat(file: string): ImageFormat | null {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK | fs.constants.O_NOCTTY);
  } catch {
    return null;
  }
  try {
    if (!fs.fstatSync(fd).isFile()) return null;
    const head = Buffer.alloc(4);
    const n = fs.readSync(fd, head, 0, 4, 0);
    return n === 4 && head.readUInt32BE(0) === QCOW2_MAGIC ? 'qcow2' : 'raw';
  } catch {
    return null;
  } finally {
    fs.closeSync(fd);
  }
}

/** Opens and locks a disk image; throws ImageError when it cannot back a device. */
export function openBlockImage(file: string, options: OpenImageOptions = {}): BlockImage {
  return openAt(path.resolve(file), options, 0);
}

function openAt(file: string, options: OpenImageOptions, depth: number): BlockImage {
  const probed = options.format === undefined;
  const format = options.format ?? probeImageFormat(file) ?? 'raw';
  if (format === 'raw') {
    return RawImageFile.open(file, { readOnly: options.readOnly, synchronous: options.synchronous, guardProbedFormat: probed });
  }
  if (!probed && probeImageFormat(file) === 'raw') {
    throw new ImageError(file, 'format', 'it was given as qcow2 but is not a qcow2 image (no "QFI\\xfb" magic at its start)');
  }
  return Qcow2Image.open(file, {
    readOnly: options.readOnly,
    synchronous: options.synchronous,
    depth,
    // Backing files are read only and complete at once (the qcow2 layer reads through them inline).
    openBacking: (backing, backingFormat, d) => openAt(backing, { readOnly: true, synchronous: true, format: backingFormat }, d),
  });
}

/**
 * A synchronous image on `fd`, a descriptor of an image another thread opened, checked and
 * locked, and lends (BlockBackend.lendable): a qcow2 image reads its metadata from the file and
 * opens its backing files itself (read-only, their shared lock beside the lender's). The image
 * owns `fd` and closes it, also when this throws.
 */
export function adoptBlockImage(fd: number, image: Pick<LendableImage, 'format' | 'guardProbedFormat'> & { readOnly: boolean }): BlockImage {
  if (image.format === 'raw') return RawImageFile.adopt(fd, image);
  return Qcow2Image.open(descriptorPath(fd), {
    fd, readOnly: image.readOnly, synchronous: true,
    openBacking: (backing, backingFormat, d) => openAt(backing, { readOnly: true, synchronous: true, format: backingFormat }, d),
  });
}
