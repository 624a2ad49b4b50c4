// rig-tcg: multi (SeaBIOS boots: single-threaded TCG re-enters its interrupt handlers; test/rig/README.md)
// Changing the CD while the VM runs, seen by SeaBIOS (a client we did not write): with an empty
// drive it finds nothing to boot; the host inserts an El Torito ISO through the VM host's
// media request (the AHCI model opens it on the machine thread), the drive reports it, and
// after a reset (the VM host rebuilds the machine with the disc now in the drive, not the
// config's empty one) SeaBIOS boots the CD. And "boot from CD" (CMOS boot order) puts a
// bootable CD before a bootable hard disk.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { DEBUGCON, DISK_BOOT_MS, diskBootImage, elToritoIso, firmwareWithDisks, SEABIOS } from '../helpers/disk-boot';
import { guest, kvmSkipReason, runVm } from '../helpers/vm';

const skip = kvmSkipReason() ?? (fs.existsSync(SEABIOS) ? false : `${SEABIOS} is missing (run scripts/fixtures.sh)`);

test('an ISO inserted into the running VM\'s empty drive is reported, kept across a reset, and SeaBIOS boots it', { skip }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-cd-change-'));
  try {
    const iso = path.join(dir, 'boot.iso');
    fs.writeFileSync(iso, elToritoIso(fs.readFileSync(guest('disk-boot'))));
    const steps: unknown[] = [];
    let inserted: Promise<void> | null = null;
    const r = await runVm({ ...firmwareWithDisks([{ readOnly: true, bus: 'sata', media: 'cdrom', name: 'cd' }]), boot: { kind: 'firmware', bootFrom: 'cdrom' } }, {
      timeoutMs: DISK_BOOT_MS * 2,
      onStart: (host, output) => {
        host.on('output', () => {
          if (inserted !== null || !/No bootable device/.test(output[DEBUGCON])) return;
          inserted = (async () => {
            steps.push(await host.cdromDrives());
            await assert.rejects(host.insertCdrom(path.join(dir, 'missing.iso')), /missing\.iso: it does not exist/);
            steps.push(await host.insertCdrom(iso));
            steps.push(await host.ejectCdrom());
            steps.push(await host.insertCdrom(iso, 'cd'));
            await host.reset();
          })().catch((e: Error) => { steps.push(`failed: ${e.message}`); void host.stop(); });
        });
      },
    });
    const log = r.output[DEBUGCON];
    assert.deepEqual(steps, [
      [{ drive: 'cd', port: 0, path: null, locked: false, trayOpen: false }],
      [{ drive: 'cd', port: 0, path: iso, locked: false, trayOpen: false }],
      [{ drive: 'cd', port: 0, path: null, locked: false, trayOpen: true }],
      [{ drive: 'cd', port: 0, path: iso, locked: false, trayOpen: false }],
    ], log);
    assert.deepEqual(r.end, { reason: 'poweroff', exitCode: 0x47 }, log);
    assert.match(log, /No bootable device/);
    assert.match(log, /Booting from DVD\/CD[\s\S]*disk-boot: sector 1 holds the marker/);
    const changes = r.host.readStats().counters.find((c) => c.group === 'cd' && c.name === 'media-changes');
    assert.equal(changes?.total, 3, 'insert, eject, insert');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('boot from CD: with a bootable hard disk and a bootable CD, SeaBIOS boots the CD first', { skip }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-cd-first-'));
  try {
    const disk = diskBootImage(dir);
    const iso = path.join(dir, 'boot.iso');
    fs.writeFileSync(iso, elToritoIso(fs.readFileSync(guest('disk-boot'))));
    const config = firmwareWithDisks([{ path: disk, readOnly: false }, { path: iso, readOnly: true, bus: 'sata', media: 'cdrom' }]);
    const r = await runVm({ ...config, boot: { kind: 'firmware', bootFrom: 'cdrom' } }, { timeoutMs: DISK_BOOT_MS });
    const log = r.output[DEBUGCON];
    assert.deepEqual(r.end, { reason: 'poweroff', exitCode: 0x47 }, log);
    assert.match(log, /Booting from DVD\/CD/);
    assert.doesNotMatch(log, /Booting from Hard Disk/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
