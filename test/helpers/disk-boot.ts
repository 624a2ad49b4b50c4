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

const CD_BLOCK = 2048;

/**
 * A minimal El Torito ISO (ECMA-119 volume descriptors, El Torito 1.0 boot catalog): the
 * primary volume descriptor at block 16, the boot record at 17 pointing at the catalog in
 * block 19, the terminator at 18, and the boot sector as a no-emulation image at block 20.
 * Block 1 (in the system area, which ISO 9660 leaves to us) holds the marker.
 */
export function elToritoIso(bootSector: Buffer): Buffer {
  const iso = Buffer.alloc(32 * CD_BLOCK);
  const descriptor = (block: number, type: number): number => {
    const at = block * CD_BLOCK;
    iso[at] = type;
    iso.write('CD001', at + 1, 'latin1');
    iso[at + 6] = 1;
    return at;
  };
  const pvd = descriptor(16, 1);
  iso.write('PORTHOLE-TEST'.padEnd(32, ' '), pvd + 40, 'latin1');
  iso.writeUInt32LE(iso.length / CD_BLOCK, pvd + 80);
  iso.writeUInt32BE(iso.length / CD_BLOCK, pvd + 84);
  iso.writeUInt16LE(1, pvd + 120); iso.writeUInt16BE(1, pvd + 122);
  iso.writeUInt16LE(1, pvd + 124); iso.writeUInt16BE(1, pvd + 126);
  iso.writeUInt16LE(CD_BLOCK, pvd + 128); iso.writeUInt16BE(CD_BLOCK, pvd + 130);
  const boot = descriptor(17, 0);
  iso.write('EL TORITO SPECIFICATION', boot + 7, 'latin1');
  iso.writeUInt32LE(19, boot + 0x47);
  descriptor(18, 255);
  const catalog = 19 * CD_BLOCK;
  iso[catalog] = 1; // validation entry, platform 0 (80x86)
  iso.write('PORTHOLE', catalog + 4, 'latin1');
  iso[catalog + 30] = 0x55;
  iso[catalog + 31] = 0xaa;
  let sum = 0;
  for (let i = 0; i < 32; i += 2) sum += iso.readUInt16LE(catalog + i);
  iso.writeUInt16LE((0x10000 - (sum & 0xffff)) & 0xffff, catalog + 28);
  iso[catalog + 32] = 0x88; // bootable
  iso[catalog + 33] = 0; // no emulation
  iso.writeUInt16LE(0, catalog + 34); // load segment: the default, 0x7c0
  iso.writeUInt16LE(4, catalog + 38); // four 512-byte sectors: one block
  iso.writeUInt32LE(20, catalog + 40);
  bootSector.copy(iso, 20 * CD_BLOCK);
  iso.write(DISK_BOOT_MARKER, CD_BLOCK, 'latin1');
  return iso;
}
