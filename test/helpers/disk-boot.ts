// The disk-boot guest (test/guests) as SeaBIOS tests use it: an image with the boot sector at
// LBA 0 and a marker at LBA 1, the config that boots it, and what a run that wrote LBA 2 leaves.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { defaultConfig, type DiskConfig, type MachineConfig } from '../../main/vmm/config';
import { guest } from './vm';

export const SEABIOS = '/usr/share/seabios/bios-256k.bin';
/** The debugcon port's output index in runVm's result. */
export const DEBUGCON = 4;
export const DISK_BOOT_MARKER = 'PORTHOLE-DISK-LBA1';
export const DISK_BOOT_MS = 45_000;
/** What the guest prints when it booted from a writable disk. */
export const DISK_BOOT_WROTE = /disk-boot: running from the disk\ndisk-boot: sector 1 holds the marker\ndisk-boot: wrote sector 2\n/;

/** A 4 MiB image in `dir`: disk-boot at LBA 0, the marker at LBA 1. */
export function diskBootImage(dir: string): string {
  const image = Buffer.alloc(4 * 1024 * 1024);
  fs.readFileSync(guest('disk-boot')).copy(image, 0);
  image.write(DISK_BOOT_MARKER, 512, 'latin1');
  const file = path.join(dir, 'disk.img');
  fs.writeFileSync(file, image);
  return file;
}

/** SeaBIOS with these disks, 256 MiB, the debug exit on. */
export function firmwareWithDisks(disks: DiskConfig[]): MachineConfig {
  return { ...defaultConfig(), boot: { kind: 'firmware' }, memoryBytes: 256 * 1024 * 1024, debugExit: true, debugcon: { kind: 'none' }, disks };
}

/** The guest copied its boot sector to LBA 2 of the image. */
export function assertDiskBootWroteSector2(disk: string): void {
  const sector2 = fs.readFileSync(disk).subarray(1024, 1536);
  assert.ok(sector2.includes('disk-boot: running from the disk'), 'the boot sector is in sector 2 of the image');
  assert.equal(sector2.readUInt16LE(510), 0xaa55);
}
