// The library and settings in Chromium: a malformed library file is reported while the
// others load; editing, serial port forwards (with a real pty while running), errors from
// main shown as sentences, the details tab and keyboard navigation.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { VmSpec } from '../../main/api/contract';
import { guest } from '../helpers/vm';
import {
  browserSkipReason, fitsWidth, fixtureSkipReason, libraryItem, unnamedControls, screenshot, startE2eApp, waitForBadge, waitForConsole, waitUntil,
  type E2eApp,
  withDiagnostics,
} from './harness';

const skip = browserSkipReason() ?? fixtureSkipReason('echo');

function record(id: string, spec: VmSpec): string {
  const at = '2025-01-02T03:04:05.000Z';
  return JSON.stringify({ version: 1, id, createdAt: at, updatedAt: at, spec }, null, 2);
}

const echoSpec = (name: string): VmSpec => ({
  name, memoryMiB: 32, cpus: 1, boot: { kind: 'flat', path: guest('echo') }, serial: ['ui', 'none', 'none', 'none'], debugExit: false,
});

describe('Porthole library and settings in Chromium', { skip: skip ?? false }, () => {
  let app: E2eApp;

  before(async () => {
    app = await startE2eApp({
      prepareLibrary: (dir) => {
        fs.writeFileSync(path.join(dir, 'alpha.json'), record('alpha', echoSpec('Alpha')));
        fs.writeFileSync(path.join(dir, 'beta.json'), record('beta', {
          ...echoSpec('Beta'), boot: { kind: 'firmware', firmware: '', disks: [], cdrom: '', optionRoms: [] }, cdrom: { path: '/nonexistent/beta.iso' },
        }));
        fs.writeFileSync(path.join(dir, 'broken.json'), '{"version": 1, "id": "broken", ');
      },
    });
  });

  after(async () => {
    await app?.close();
  });

  it('lists the good VMs and reports the malformed file; arrow keys move through the library', () => withDiagnostics(app, async () => {
    const { page } = app;
    await libraryItem(page, 'Alpha').waitFor();
    await libraryItem(page, 'Beta').waitFor();
    const problems = page.locator('.library-problems');
    await problems.getByText('One library file could not be loaded:').waitFor();
    assert.match(await problems.innerText(), /broken\.json: it is not valid JSON/);
    await screenshot(page, 'library');

    await libraryItem(page, 'Alpha').click();
    await page.getByRole('heading', { level: 2, name: 'Alpha' }).waitFor();
    await page.keyboard.press('ArrowDown');
    await page.getByRole('heading', { level: 2, name: 'Beta' }).waitFor();
    assert.equal(await libraryItem(page, 'Beta').getAttribute('aria-selected'), 'true');
    await page.keyboard.press('ArrowUp');
    await page.getByRole('heading', { level: 2, name: 'Alpha' }).waitFor();

    // "?" opens the shortcut list; Escape closes it and focus comes back.
    await page.keyboard.press('?');
    const help = page.getByRole('dialog', { name: 'Keyboard shortcuts' });
    await help.waitFor();
    assert.match(await help.innerText(), /Ctrl\+Shift\+S/);
    await screenshot(page, 'shortcuts');
    await page.keyboard.press('Escape');
    await help.waitFor({ state: 'detached' });
    assert.equal(await libraryItem(page, 'Alpha').evaluate((el) => el === el.ownerDocument.activeElement), true);
  }));

  it('shows why a VM cannot start as a sentence', () => withDiagnostics(app, async () => {
    const { page } = app;
    await libraryItem(page, 'Beta').click();
    await page.getByRole('tab', { name: 'Disks & network' }).click();
    await page.getByText('/nonexistent/beta.iso').first().waitFor();
    await page.getByRole('button', { name: 'Start', exact: true }).click();
    const notice = page.locator('.notice-error');
    await notice.waitFor();
    assert.equal(
      (await notice.locator('span').innerText()).trim(),
      'Beta: CD-ROM ISO image: /nonexistent/beta.iso does not exist.',
    );
    await waitForBadge(page, 'Stopped');
    await notice.getByRole('button', { name: 'Dismiss' }).click();
    await notice.waitFor({ state: 'detached' });
  }));

  it('edits a stopped VM and forwards a COM port to a pty while running', () => withDiagnostics(app, async () => {
    const { page } = app;
    await libraryItem(page, 'Alpha').click();

    await page.getByRole('button', { name: 'Edit…' }).click();
    const dialog = page.getByRole('dialog', { name: 'Edit Alpha' });
    await dialog.waitFor();
    assert.equal(await dialog.getByLabel('Memory').inputValue(), '32M');
    await dialog.getByLabel('Memory').fill('48M');
    await dialog.getByRole('button', { name: 'Save' }).click();
    await dialog.waitFor({ state: 'detached' });
    await page.locator('.vm-summary', { hasText: '48 MiB' }).waitFor();
    assert.equal((await app.manager.getVm('alpha')).spec.memoryMiB, 48);

    await page.getByRole('tab', { name: 'Serial ports' }).click();
    const com2 = page.getByRole('combobox', { name: 'COM2 forward' });
    await com2.selectOption('tcp-listen');
    const detail = page.getByRole('textbox', { name: /^COM2 port/ });
    await detail.fill('99999');
    await page.getByText('COM2 "99999" is not a TCP port (1 to 65535).').waitFor();
    assert.equal(await page.getByRole('button', { name: 'Save serial ports' }).isDisabled(), true);
    await com2.selectOption('pty');
    await page.getByRole('button', { name: 'Save serial ports' }).click();
    await waitUntil('COM2 saved as pty', async () => (await app.manager.getVm('alpha')).spec.serial[1], (v) => v === 'pty');

    await page.getByRole('button', { name: 'Start', exact: true }).click();
    await waitForBadge(page, 'Running');
    // While running the forwards cannot change, and the pty's path is shown.
    assert.equal(await com2.isDisabled(), true);
    const endpoint = await waitUntil('the COM2 pty path', () => page.locator('.serial-table tbody tr').nth(1).locator('.endpoint').innerText(),
      (t) => /^\/dev\/pts\/\d+$/.test(t.trim()));
    assert.ok(fs.existsSync(endpoint.trim()), `${endpoint} exists`);
    await screenshot(page, 'serial-ports');

    await page.getByRole('tab', { name: 'Console' }).click();
    await waitForConsole(page, /porthole echo ready/);
    await page.getByRole('tab', { name: 'Details' }).click();
    const log = page.getByLabel('VM log');
    await waitUntil('the VM log', () => log.innerText(), (t) => /starting \(VM process \d+\)/.test(t));
    await screenshot(page, 'details');

    // Every control on each view has an accessible name, and the views fit 1280x720 and 1920x1080.
    for (const tab of ['Console', 'Serial ports', 'Details']) {
      await page.getByRole('tab', { name: tab }).click();
      assert.deepEqual(await unnamedControls(page), [], `unnamed controls on the ${tab} tab`);
      assert.equal(await fitsWidth(page), true, `the ${tab} tab fits 1280 pixels`);
    }
    await page.setViewportSize({ width: 1920, height: 1080 });
    await page.getByRole('tab', { name: 'Console' }).click();
    assert.equal(await fitsWidth(page), true);
    await screenshot(page, 'console-1920x1080');
    await page.setViewportSize({ width: 1280, height: 720 });
    await page.emulateMedia({ colorScheme: 'dark' });
    await screenshot(page, 'console-dark');
    await page.emulateMedia({ colorScheme: 'light' });

    await page.getByRole('button', { name: 'Stop', exact: true }).click();
    await waitForBadge(page, 'Stopped');
    await page.getByRole('tab', { name: 'Serial ports' }).click();
    assert.equal(await page.getByRole('combobox', { name: 'COM2 forward' }).isDisabled(), false);
  }));
});
