// The PCI tab (issue 11 item 6) in Chromium against the real manager, on a fake sysfs tree (this
// host and the rig's kvm-tests L1 have no IOMMU groups to show): the host's devices grouped by
// IOMMU group with the reason each blocked one cannot be assigned; a free NIC assigned to a
// stopped VM and a boot display the host needs forced in after a confirm, each seen in the
// library file; then both returned, and the file has no pciAssign again. On a running VM (its
// process scripted, so no KVM is needed) the tab says PCI hot-plug is not supported and an
// assignment waits for the next start.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { VmSpec } from '../../main/api/contract';
import { samplePciHost, type FakePciSysfs } from '../helpers/fake-pci-sysfs';
import { ScriptedProcess } from '../helpers/scripted-process';
import { chromiumSkipReason, fitsWidth, libraryItem, screenshot, startE2eApp, unnamedControls, waitForBadge, waitUntil, withDiagnostics, type E2eApp } from './harness';

const skip = chromiumSkipReason();

function record(id: string, spec: VmSpec): string {
  const at = '2025-01-02T03:04:05.000Z';
  return JSON.stringify({ version: 1, id, createdAt: at, updatedAt: at, spec }, null, 2);
}

describe('the PCI tab in Chromium', { skip: skip ?? false }, () => {
  let app: E2eApp;
  let host: FakePciSysfs;
  /** The running VM's process is scripted (no KVM): it only has to say it runs. */
  const processes: ScriptedProcess[] = [];

  before(async () => {
    host = samplePciHost();
    app = await startE2eApp({
      hostRoots: host.roots,
      launcher: () => { const p = new ScriptedProcess(); processes.push(p); return p; },
      prepareLibrary: (dir) => {
        fs.writeFileSync(path.join(dir, 'program.bin'), Buffer.alloc(16));
        fs.writeFileSync(path.join(dir, 'runvm.json'), record('runvm', {
          name: 'Running VM', memoryMiB: 32, cpus: 1, boot: { kind: 'flat', path: path.join(dir, 'program.bin') }, serial: ['ui', 'none', 'none', 'none'], debugExit: false,
        }));
        fs.writeFileSync(path.join(dir, 'pcivm.json'), record('pcivm', {
          name: 'PCI VM', memoryMiB: 32, cpus: 1, boot: { kind: 'flat', path: '/nonexistent/echo.bin' }, serial: ['ui', 'none', 'none', 'none'], debugExit: false,
        }));
      },
    });
  });

  after(async () => {
    await app?.close();
    host?.cleanup();
  });

  const savedPci = () => {
    const file = path.join(app.manager.getInfo().libraryDir, 'pcivm.json');
    return (JSON.parse(fs.readFileSync(file, 'utf8')) as { spec: VmSpec }).spec.pciAssign;
  };

  it('shows the groups and reasons, assigns a NIC and forces a needed display into a stopped VM, then returns both', () => withDiagnostics(app, async () => {
    const { page } = app;
    await libraryItem(page, 'PCI VM').click();
    await page.getByRole('tab', { name: 'PCI' }).click();
    const panel = page.locator('.pci-panel');
    await panel.getByRole('heading', { name: 'IOMMU group 4: not viable (more than one member on a host driver)' }).waitFor();
    await panel.getByText('Cannot be assigned: Its IOMMU group 4 is not viable: it also holds 0000:00:04.1 (snd_hda_intel), which would have to leave the host too.').waitFor();
    await panel.getByText('Cannot be assigned: It is a bridge; Porthole assigns the devices behind it, not the bridge.').waitFor();
    await panel.getByText('The host needs it: It is enp0s3, which carries the default route.').waitFor();
    await panel.getByText('0 of 4 assigned to this VM').waitFor();
    // A blocked device offers no button; the stopped VM gets no hot-plug note.
    assert.equal(await panel.getByRole('button', { name: 'Assign 0000:00:04.0 to this VM' }).count(), 0);
    assert.equal(await panel.getByRole('note').count(), 0);

    await panel.getByRole('button', { name: 'Assign 0000:00:02.0 to this VM' }).click();
    await panel.getByRole('button', { name: 'Return 0000:00:02.0 to the host' }).waitFor();
    await panel.getByText('Assigned to this VM: it takes it at start').waitFor();
    assert.deepEqual(savedPci(), [{ address: '0000:00:02.0' }]);

    // A device the host needs: only after the confirm, and saved with force.
    await panel.getByRole('button', { name: 'Force 0000:00:01.0 into this VM' }).click();
    const confirm = page.getByRole('alertdialog', { name: 'Assign a device the host needs?' });
    await confirm.getByText(/0000:00:01\.0 \(VGA controller\) is needed by the host: it is the boot display \(boot_vga\)\./).waitFor();
    await confirm.getByRole('button', { name: 'Cancel' }).click();
    await confirm.waitFor({ state: 'detached' });
    assert.deepEqual(savedPci(), [{ address: '0000:00:02.0' }], 'Cancel assigns nothing');
    await panel.getByRole('button', { name: 'Force 0000:00:01.0 into this VM' }).click();
    await confirm.getByRole('button', { name: 'Assign it' }).click();
    await confirm.waitFor({ state: 'detached' });
    await panel.getByText('Assigned to this VM (forced): it takes it at start').waitFor();
    await panel.getByText('2 of 4 assigned to this VM').waitFor();
    assert.deepEqual(savedPci(), [{ address: '0000:00:02.0' }, { address: '0000:00:01.0', force: true }]);
    assert.deepEqual(await unnamedControls(page), []);
    assert.ok(await fitsWidth(page), 'the PCI tab needs no horizontal scrolling at 1280 px');
    const shot = await screenshot(page, 'pci-panel-assigned');
    assert.ok(fs.statSync(shot).size > 0);
    await panel.getByText(/^Members: 0000:00:1c\.0, 0000:01:00\.0\./).scrollIntoViewIfNeeded();
    await screenshot(page, 'pci-panel-groups');

    await page.getByRole('tab', { name: 'Details' }).click();
    await page.locator('.details-list dd', { hasText: 'Host devices taken at start' }).getByText('(forced)').waitFor();
    await page.getByRole('tab', { name: 'PCI' }).click();
    await panel.getByRole('button', { name: 'Return 0000:00:02.0 to the host' }).click();
    await panel.getByRole('button', { name: 'Assign 0000:00:02.0 to this VM' }).waitFor();
    await panel.getByRole('button', { name: 'Return 0000:00:01.0 to the host' }).click();
    await panel.getByRole('button', { name: 'Force 0000:00:01.0 into this VM' }).waitFor();
    await waitUntil('the library file to have no pciAssign', async () => savedPci(), (v) => v === undefined, 5000);
    assert.deepEqual(app.manager.getVm('pcivm').spec.pciAssign, undefined);
  }));

  it('on a running VM says PCI hot-plug is not supported, and an assignment waits for the next start', () => withDiagnostics(app, async () => {
    const { page } = app;
    await libraryItem(page, 'Running VM').click();
    await page.getByRole('button', { name: 'Start', exact: true }).click();
    await waitUntil('the VM process to start', async () => processes.length, (n) => n === 1);
    processes[0].boot();
    await waitForBadge(page, 'Running');
    await page.getByRole('tab', { name: 'PCI' }).click();
    const panel = page.locator('.pci-panel');
    await panel.getByRole('note').getByText('PCI hot-plug is not supported: what you assign or return here takes effect when the VM next starts.').waitFor();
    await panel.getByRole('button', { name: 'Assign 0000:01:00.0 to this VM' }).click();
    await page.getByText('Running VM: 0000:01:00.0 assigned; it takes effect at the next start.').waitFor();
    await panel.getByText('Assigned to this VM: it takes it at start').waitFor();
    assert.deepEqual(app.manager.getVm('runvm').spec.pciAssign, [{ address: '0000:01:00.0' }]);
    await panel.getByRole('note').scrollIntoViewIfNeeded();
    await screenshot(page, 'pci-panel-running');
    await panel.getByRole('button', { name: 'Return 0000:01:00.0 to the host' }).click();
    await page.getByText('Running VM: 0000:01:00.0 returned; the VM keeps it until it stops.').waitFor();
    assert.equal(app.manager.getVm('runvm').spec.pciAssign, undefined);
    await page.getByRole('button', { name: 'Force off', exact: true }).click();
    await waitForBadge(page, 'Stopped');
  }));
});
