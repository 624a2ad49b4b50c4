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
import { assertDiskBootWroteSector2, DEBUGCON, DISK_BOOT_MARKER, DISK_BOOT_MS, DISK_BOOT_WROTE, diskBootImage, firmwareWithDisks, SEABIOS } from '../helpers/disk-boot';
import { kvmSkipReason, runVm } from '../helpers/vm';

const skip = kvmSkipReason() ?? (fs.existsSync(SEABIOS) ? false : `${SEABIOS} is missing (run scripts/fixtures.sh)`);
/** A good boot takes about 5 s in L1. */

test('SeaBIOS boots from a virtio-blk disk (its only disk), reads its second sector and writes its third', { skip }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-virtio-boot-'));
  try {
    const disk = diskBootImage(dir);
    const r = await runVm(firmwareWithDisks([{ path: disk, readOnly: false }]), { timeoutMs: DISK_BOOT_MS });
    const log = r.output[DEBUGCON];
    assert.deepEqual(r.end, { reason: 'poweroff', exitCode: 0x55 }, log);
    assert.match(log, /found virtio-blk at 00:08\.0/);
    assert.match(log, /Booting from Hard Disk/);
    assert.match(log, DISK_BOOT_WROTE);
    assertDiskBootWroteSector2(disk);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a read-only virtio-blk disk boots, and SeaBIOS\'s write fails without touching the image', { skip }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-virtio-boot-'));
  try {
    const disk = diskBootImage(dir);
    const before = fs.readFileSync(disk);
    const r = await runVm(firmwareWithDisks([{ path: disk, readOnly: true }]), { timeoutMs: DISK_BOOT_MS });
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
    const outcome = await runVm(firmwareWithDisks([{ path: missing, readOnly: false }]), { timeoutMs: 30_000 }).then(
      (end) => (end.end.reason === 'error' ? end.end.message : `ended: ${end.end.reason}`), (e: Error) => e.message);
    assert.equal(outcome, `disk image ${missing}: it does not exist`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
