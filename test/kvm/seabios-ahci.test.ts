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
import { assertDiskBootWroteSector2, DEBUGCON, DISK_BOOT_MS, DISK_BOOT_WROTE, diskBootImage, elToritoIso, firmwareWithDisks, SEABIOS } from '../helpers/disk-boot';
import { guest, kvmSkipReason, runVm } from '../helpers/vm';

const skip = kvmSkipReason() ?? (fs.existsSync(SEABIOS) ? false : `${SEABIOS} is missing (run scripts/fixtures.sh)`);

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
