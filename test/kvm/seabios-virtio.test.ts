// rig-tcg: multi (SeaBIOS boots: single-threaded TCG re-enters its interrupt handlers; test/rig/README.md)
// SeaBIOS's virtio-blk driver (a client we did not write) on our modern virtio-pci transport:
// with a virtio disk as the only disk, SeaBIOS boots the test boot sector from it; the boot
// sector reads the disk's second sector and writes itself to the third through int 13h, and
// the write is in the image once the VM has ended.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { defaultConfig, type DiskConfig, type MachineConfig } from '../../main/vmm/config';
import { guest, kvmSkipReason, runVm } from '../helpers/vm';

const SEABIOS = '/usr/share/seabios/bios-256k.bin';
const skip = kvmSkipReason() ?? (fs.existsSync(SEABIOS) ? false : `${SEABIOS} is missing (run scripts/fixtures.sh)`);
const DEBUGCON = 4;
const MARKER = 'PORTHOLE-DISK-LBA1';
/** A good boot takes about 5 s in L1. */
const BOOT_MS = 45_000;

function diskImage(dir: string): string {
  const image = Buffer.alloc(4 * 1024 * 1024);
  fs.readFileSync(guest('disk-boot')).copy(image, 0);
  image.write(MARKER, 512, 'latin1');
  const file = path.join(dir, 'disk.img');
  fs.writeFileSync(file, image);
  return file;
}

function diskConfig(disks: DiskConfig[]): MachineConfig {
  return { ...defaultConfig(), boot: { kind: 'firmware' }, memoryBytes: 256 * 1024 * 1024, debugExit: true, debugcon: { kind: 'none' }, disks };
}

test('SeaBIOS boots from a virtio-blk disk (its only disk), reads its second sector and writes its third', { skip }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-virtio-boot-'));
  try {
    const disk = diskImage(dir);
    const r = await runVm(diskConfig([{ path: disk, readOnly: false }]), { timeoutMs: BOOT_MS });
    const log = r.output[DEBUGCON];
    assert.deepEqual(r.end, { reason: 'poweroff', exitCode: 0x55 }, log);
    assert.match(log, /found virtio-blk at 00:08\.0/);
    assert.match(log, /Booting from Hard Disk/);
    assert.match(log, /disk-boot: running from the disk\ndisk-boot: sector 1 holds the marker\ndisk-boot: wrote sector 2\n/);
    const sector2 = fs.readFileSync(disk).subarray(1024, 1536);
    assert.ok(sector2.includes('disk-boot: running from the disk'), 'the boot sector is in sector 2 of the image');
    assert.equal(sector2.readUInt16LE(510), 0xaa55);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a read-only virtio-blk disk boots, and SeaBIOS\'s write fails without touching the image', { skip }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-virtio-boot-'));
  try {
    const disk = diskImage(dir);
    const before = fs.readFileSync(disk);
    const r = await runVm(diskConfig([{ path: disk, readOnly: true }]), { timeoutMs: BOOT_MS });
    const log = r.output[DEBUGCON];
    assert.deepEqual(r.end, { reason: 'poweroff', exitCode: 0x47 }, log);
    assert.match(log, /disk-boot: sector 1 holds the marker\ndisk-boot: int 13h write failed\n/);
    assert.ok(fs.readFileSync(disk).equals(before));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a missing virtio-blk image is one clear error before boot', { skip }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-virtio-boot-'));
  try {
    const missing = path.join(dir, 'nope.img');
    const outcome = await runVm(diskConfig([{ path: missing, readOnly: false }]), { timeoutMs: 30_000 }).then(
      (end) => (end.end.reason === 'error' ? end.end.message : `ended: ${end.end.reason}`), (e: Error) => e.message);
    assert.equal(outcome, `disk image ${missing}: it does not exist`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
