// Disks, the CD-ROM drive and NICs in Chromium against the real manager: a VM made in the New VM
// dialog with a SATA disk, a CD-ROM drive booted first and a TAP NIC is saved with exactly those
// settings (the library file is read back), a bad interface name is a sentence from main's
// check; and on a running VM's "Disks & network" tab an ISO is inserted, a missing one refused
// with a sentence, and the disc ejected, each as the manager and the VM process report it. The
// guest is the flat echo program: the drive answers the host whether or not a guest drives it.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { VmSpec } from '../../main/api/contract';
import { guest } from '../helpers/vm';
import {
  browserSkipReason, fixtureSkipReason, libraryItem, screenshot, startE2eApp, unnamedControls, waitForBadge, waitForConsole, waitUntil,
  type E2eApp, withDiagnostics,
} from './harness';

const skip = browserSkipReason() ?? fixtureSkipReason('echo');

function record(id: string, spec: VmSpec): string {
  const at = '2025-01-02T03:04:05.000Z';
  return JSON.stringify({ version: 1, id, createdAt: at, updatedAt: at, spec }, null, 2);
}

describe('disks, the CD-ROM and NICs in Chromium', { skip: skip ?? false }, () => {
  let app: E2eApp;
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-e2e-devices-'));
  const disk = path.join(scratch, 'system.img');
  const iso = path.join(scratch, 'install.iso');
  const iso2 = path.join(scratch, 'drivers.iso');

  before(async () => {
    fs.writeFileSync(disk, Buffer.alloc(1024 * 1024));
    fs.writeFileSync(iso, Buffer.alloc(64 * 2048));
    fs.writeFileSync(iso2, Buffer.alloc(32 * 2048));
    app = await startE2eApp({
      prepareLibrary: (dir) => {
        fs.writeFileSync(path.join(dir, 'cdvm.json'), record('cdvm', {
          name: 'CD VM', memoryMiB: 32, cpus: 1, boot: { kind: 'flat', path: guest('echo') }, serial: ['ui', 'none', 'none', 'none'], debugExit: false,
          cdrom: { path: '' },
        }));
      },
    });
  });

  after(async () => {
    await app?.close();
    fs.rmSync(scratch, { recursive: true, force: true });
  });

  it('creates a VM with a disk, a CD-ROM and a NIC from the dialog and saves exactly that', () => withDiagnostics(app, async () => {
    const { page } = app;
    await page.getByRole('button', { name: 'New VM', exact: true }).click();
    const dialog = page.getByRole('dialog', { name: 'New VM' });
    await dialog.waitFor();
    await dialog.getByLabel('Name', { exact: true }).fill('Installer');

    await dialog.getByRole('button', { name: 'Add disk' }).click();
    await dialog.getByLabel('Disk 1 image', { exact: true }).fill(path.join(scratch, 'nope.img'));
    await dialog.getByLabel('Disk 1 bus', { exact: true }).selectOption('sata');
    await dialog.getByLabel('Disk 1 format', { exact: true }).selectOption('raw');
    await dialog.getByLabel('Name', { exact: true }).click(); // leave the field: its problem shows
    await dialog.getByText(`Disk 1 image: ${path.join(scratch, 'nope.img')} does not exist.`).waitFor();
    await dialog.getByLabel('Disk 1 image', { exact: true }).fill(disk);
    await dialog.getByLabel('Read-only', { exact: true }).check();

    await dialog.getByLabel(/^CD-ROM drive/).check();
    await dialog.getByLabel('ISO image', { exact: true }).fill(iso);
    await dialog.getByLabel(/^Boot from CD/).check();

    await dialog.getByRole('button', { name: 'Add network card' }).click();
    await dialog.getByLabel('NIC 1 backend', { exact: true }).selectOption('tap');
    await dialog.getByLabel('NIC 1 interface', { exact: true }).fill('tap/0');
    await dialog.getByLabel('Name', { exact: true }).click();
    // Main's check (the VMM's own validator), as a sentence naming the card.
    await dialog.getByText(/^NIC 1: "tap\/0" is not an interface name/).first().waitFor();
    await dialog.getByLabel('NIC 1 interface', { exact: true }).fill('tap0');
    await dialog.getByLabel('NIC 1 MAC address (optional)', { exact: true }).fill('52:54:00:12:34:56');
    assert.deepEqual(await unnamedControls(page), []);
    await screenshot(page, 'devices-dialog');
    await dialog.getByRole('button', { name: 'Create' }).click();
    await dialog.waitFor({ state: 'detached' });

    const vm = (await app.manager.listVms()).vms.find((v) => v.spec.name === 'Installer');
    assert.ok(vm, 'the VM was created');
    const saved = JSON.parse(fs.readFileSync(path.join(app.manager.getInfo().libraryDir, `${vm.id}.json`), 'utf8')) as { spec: VmSpec };
    assert.deepEqual(saved.spec.disks, [{ path: disk, bus: 'sata', format: 'raw', readOnly: true }]);
    assert.deepEqual(saved.spec.cdrom, { path: iso, boot: true });
    assert.deepEqual(saved.spec.nics, [{ model: 'virtio', backend: { kind: 'tap', ifname: 'tap0' }, mac: '52:54:00:12:34:56' }]);
    assert.deepEqual(saved.spec.boot, { kind: 'firmware', firmware: '', disks: [], cdrom: '', optionRoms: [] });

    await page.getByRole('tab', { name: 'Disks & network' }).click();
    await page.getByText('Boots from CD first.').waitFor();
    await page.getByText('NIC 1: virtio-net (virtio 1.0), TAP interface tap0, MAC 52:54:00:12:34:56').waitFor();
  }));

  it('inserts an ISO into a running VM\'s drive, refuses a missing one with a sentence, and ejects it', () => withDiagnostics(app, async () => {
    const { page } = app;
    await libraryItem(page, 'CD VM').click();
    await page.getByRole('button', { name: 'Start', exact: true }).click();
    await waitForBadge(page, 'Running');
    await page.getByRole('tab', { name: 'Console' }).click();
    await waitForConsole(page, /porthole echo ready/);
    await page.getByRole('tab', { name: 'Disks & network' }).click();
    const drive = page.getByRole('group', { name: 'CD-ROM drive' });
    await drive.getByText('no disc', { exact: true }).waitFor();

    await drive.getByLabel('ISO image to insert', { exact: true }).fill(iso);
    await drive.getByRole('button', { name: 'Insert ISO…' }).click();
    await drive.locator('.cdrom-state code', { hasText: iso }).waitFor();
    assert.deepEqual(await app.manager.listCdromDrives('cdvm'), [{ drive: 'disk0', port: 0, path: iso, locked: false, trayOpen: false }]);

    await drive.getByLabel('ISO image to insert', { exact: true }).fill(path.join(scratch, 'missing.iso'));
    await drive.getByRole('button', { name: 'Insert ISO…' }).click();
    await drive.getByRole('alert').getByText(`The ISO image ${path.join(scratch, 'missing.iso')} does not exist.`).waitFor();

    // A swap, then an eject.
    await drive.getByLabel('ISO image to insert', { exact: true }).fill(iso2);
    await drive.getByRole('button', { name: 'Insert ISO…' }).click();
    await drive.locator('.cdrom-state code', { hasText: iso2 }).waitFor();
    await screenshot(page, 'devices-cdrom');
    await drive.getByRole('button', { name: 'Eject' }).click();
    await drive.getByText('no disc (tray open)').waitFor();
    await waitUntil('the drive to be empty', () => app.manager.listCdromDrives('cdvm'), (d) => d[0]?.path === null && d[0]?.trayOpen === true);
    assert.deepEqual(await unnamedControls(page), []);
    await page.getByRole('button', { name: 'Stop', exact: true }).click();
    await waitForBadge(page, 'Stopped');
  }));
});
