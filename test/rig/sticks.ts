// USB stick images with known contents. Every 512-byte sector starts with a text header
// naming the stick and the sector, followed by bytes computed from both, so a reader in
// L1 or L2 can check any sector it reads without a copy of the image.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

export interface StickSpec {
  /** QEMU drive id and the label in every sector header. */
  label: string;
  sizeMiB: number;
  /** The USB serial number QEMU reports for the stick. */
  serial: string;
}

export const STICKS: Record<'stick0' | 'stick1', StickSpec> = {
  stick0: { label: 'stick0', sizeMiB: 16, serial: 'RIGSTICK0' },
  stick1: { label: 'stick1', sizeMiB: 8, serial: 'RIGSTICK1' },
};

export const SECTOR = 512;
/** Bump when stickSector changes, so old images are not reused. */
const PATTERN_VERSION = 1;

export function stickSector(label: string, index: number): Buffer {
  const b = Buffer.alloc(SECTOR);
  const header = `PORTHOLE-RIG ${label} SECTOR ${index}\n`;
  b.write(header, 0, 'ascii');
  let seed = index * 2654435761 >>> 0;
  for (const c of label) seed = (seed * 31 + c.charCodeAt(0)) >>> 0;
  for (let i = 64; i < SECTOR; i++) {
    seed = (seed * 1103515245 + 12345) >>> 0;
    b[i] = seed >>> 24;
  }
  return b;
}

/** Checks one sector read back from a stick; returns null when it is right, else why not. */
export function checkStickSector(label: string, index: number, data: Buffer): string | null {
  if (data.length !== SECTOR) return `sector ${index} of ${label} is ${data.length} bytes`;
  const want = stickSector(label, index);
  if (data.equals(want)) return null;
  return `sector ${index} of ${label} differs (starts "${data.subarray(0, 40).toString('latin1').replace(/[^\x20-\x7e]/g, '.')}")`;
}

/** Writes the image when it is missing or has the wrong size; returns its path. */
export function ensureStickImage(dir: string, spec: StickSpec): string {
  const file = path.join(dir, `${spec.label}-v${PATTERN_VERSION}.img`);
  const size = spec.sizeMiB * 1048576;
  try {
    if (fs.statSync(file).size === size) return file;
  } catch { /* absent: write it */ }
  fs.mkdirSync(dir, { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  const fd = fs.openSync(tmp, 'w');
  try {
    const chunk = Buffer.alloc(SECTOR * 256);
    for (let s = 0; s < size / SECTOR; s += 256) {
      for (let i = 0; i < 256; i++) stickSector(spec.label, s + i).copy(chunk, i * SECTOR);
      fs.writeSync(fd, chunk);
    }
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  return file;
}

/** A fresh copy of `spec`'s pattern image in `dir` (the pattern is cached in dir/cache), for a guest to write to. */
export function freshStickCopy(dir: string, spec: StickSpec): string {
  const target = path.join(dir, `${spec.label}.img`);
  fs.copyFileSync(ensureStickImage(path.join(dir, 'cache'), spec), target);
  return target;
}

/** The md5 of a file or block device, in hex. */
export function md5File(file: string): string {
  return crypto.createHash('md5').update(fs.readFileSync(file)).digest('hex');
}
