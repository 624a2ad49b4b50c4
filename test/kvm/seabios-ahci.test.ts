// rig-tcg: multi (SeaBIOS boots: single-threaded TCG re-enters its interrupt handlers; test/rig/README.md)
// SeaBIOS's AHCI driver (a client we did not write) on our AHCI HBA. With a SATA disk as the
// only disk, SeaBIOS boots the test boot sector from it; the boot sector reads the disk's
// second sector and writes itself to the third through int 13h, and the write is in the image
// once the VM has ended. With an ISO on the AHCI CD-ROM, SeaBIOS boots the same boot sector as
// an El Torito no-emulation image (built here by hand); it reads the disc's second 2048-byte
// block and finds the marker, and its int 13h write to the CD fails.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { assertDiskBootWroteSector2, DEBUGCON, DISK_BOOT_MARKER, DISK_BOOT_MS, DISK_BOOT_WROTE, diskBootImage, firmwareWithDisks, SEABIOS } from '../helpers/disk-boot';
import { guest, kvmSkipReason, runVm } from '../helpers/vm';

const skip = kvmSkipReason() ?? (fs.existsSync(SEABIOS) ? false : `${SEABIOS} is missing (run scripts/fixtures.sh)`);
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

test('SeaBIOS boots from an AHCI SATA disk (its only disk), reads its second sector and writes its third', { skip }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-ahci-boot-'));
  try {
    const disk = diskBootImage(dir);
    const r = await runVm(firmwareWithDisks([{ path: disk, readOnly: false, bus: 'sata' }]), { timeoutMs: DISK_BOOT_MS });
    const log = r.output[DEBUGCON];
    assert.deepEqual(r.end, { reason: 'poweroff', exitCode: 0x55 }, log);
    assert.match(log, /AHCI controller at 00:05\.0/);
    assert.match(log, /AHCI\/0: registering: "AHCI\/0: Porthole SATA disk ATA-8 Hard-Disk/);
    assert.match(log, /Booting from Hard Disk/);
    assert.match(log, DISK_BOOT_WROTE);
    assertDiskBootWroteSector2(disk);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('SeaBIOS boots an El Torito ISO on the AHCI CD-ROM (beside an empty drive), reads block 1, and cannot write', { skip }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-ahci-cd-'));
  try {
    const file = path.join(dir, 'boot.iso');
    const iso = elToritoIso(fs.readFileSync(guest('disk-boot')));
    fs.writeFileSync(file, iso);
    const r = await runVm(firmwareWithDisks([
      { readOnly: true, bus: 'sata', media: 'cdrom' },
      { path: file, readOnly: true, bus: 'sata', media: 'cdrom' },
    ]), { timeoutMs: DISK_BOOT_MS });
    const log = r.output[DEBUGCON];
    assert.deepEqual(r.end, { reason: 'poweroff', exitCode: 0x47 }, log);
    assert.match(log, /AHCI\/1: registering: "DVD\/CD \[AHCI\/1: Porthole DVD-ROM ATAPI-8 DVD\/CD\]"/);
    assert.match(log, /Booting from DVD\/CD/);
    assert.match(log, /disk-boot: running from the disk\ndisk-boot: sector 1 holds the marker\ndisk-boot: int 13h write failed\n/);
    assert.deepEqual(fs.readFileSync(file), iso, 'the ISO is unchanged');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a missing ISO for the AHCI CD-ROM is one clear error before boot, naming the file', { skip }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-ahci-cd-'));
  try {
    const missing = path.join(dir, 'nope.iso');
    const outcome = await runVm(firmwareWithDisks([{ path: missing, readOnly: true, bus: 'sata', media: 'cdrom' }]), { timeoutMs: 30_000 }).then(
      (end) => (end.end.reason === 'error' ? end.end.message : `ended: ${end.end.reason}`), (e: Error) => e.message);
    assert.equal(outcome, `disk image ${missing}: it does not exist`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
