// The USB tab in Chromium against the real manager and VM process: a running VM's xHCI root
// hub is listed (the keyboard from its config on a USB 2 port), a USB stick made by the test
// is plugged in from the panel and listed on a USB 3 port with its image, refusals (a missing
// image, an image in use) are shown as sentences, and the stick is unplugged again, also while
// the VM is paused. A VM without a USB controller says so. The guest is the flat echo program:
// the controller answers the host's plug and unplug whether or not a guest drives it.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Locator, Page } from 'playwright-core';
import type { UsbPortInfo, VmSpec } from '../../main/api/contract';
import { guest } from '../helpers/vm';
import {
  browserSkipReason, fitsWidth, fixtureSkipReason, libraryItem, screenshot, startE2eApp, unnamedControls, waitForBadge, waitForConsole, waitUntil,
  type E2eApp,
  withDiagnostics,
} from './harness';

const skip = browserSkipReason() ?? fixtureSkipReason('echo');

function record(id: string, spec: VmSpec): string {
  const at = '2025-01-02T03:04:05.000Z';
  return JSON.stringify({ version: 1, id, createdAt: at, updatedAt: at, spec }, null, 2);
}

const echoSpec = (name: string, usb?: VmSpec['usb']): VmSpec => ({
  name, memoryMiB: 32, cpus: 1, boot: { kind: 'flat', path: guest('echo') }, serial: ['ui', 'none', 'none', 'none'], debugExit: false,
  ...(usb ? { usb } : {}),
});

/** The table row of root-hub port `n`. */
function portRow(page: Page, n: number): Locator {
  return page.locator('.usb-table tbody tr').filter({ has: page.getByRole('rowheader', { name: `Port ${n}`, exact: true }) });
}

/** A row's cells as text, header cell first, whitespace folded. */
async function rowText(row: Locator): Promise<string[]> {
  return (await row.locator('th, td').allInnerTexts()).map((t) => t.replace(/\s+/g, ' ').trim());
}

/** What the manager (not the page) says sits on each port. */
async function occupied(app: E2eApp, id: string): Promise<string[]> {
  const ports: UsbPortInfo[] = await app.manager.listUsbPorts(id);
  return ports.filter((p) => p.device).map((p) => `${p.port} ${p.device!.kind} ${p.device!.path ?? '-'} ${p.device!.readOnly ?? '-'}`);
}

/** The newest error notice's text, then dismisses it. */
async function takeErrorNotice(page: Page): Promise<string> {
  const notice = page.locator('.notice-error').last();
  await notice.waitFor();
  const text = (await notice.locator('span').innerText()).trim();
  await notice.getByRole('button', { name: 'Dismiss' }).click();
  await notice.waitFor({ state: 'detached' });
  return text;
}

describe('the USB panel in Chromium', { skip: skip ?? false }, () => {
  let app: E2eApp;
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-e2e-usb-'));
  const stick = path.join(scratch, 'stick.img');

  before(async () => {
    fs.writeFileSync(stick, Buffer.alloc(4 * 1024 * 1024));
    app = await startE2eApp({
      prepareLibrary: (dir) => {
        fs.writeFileSync(path.join(dir, 'usbvm.json'), record('usbvm', echoSpec('USB VM', { controller: 'xhci', devices: [{ kind: 'keyboard' }] })));
        fs.writeFileSync(path.join(dir, 'plain.json'), record('plain', echoSpec('Plain VM')));
      },
    });
  });

  after(async () => {
    await app?.close();
    fs.rmSync(scratch, { recursive: true, force: true });
  });

  it('says when a VM has no USB controller, and what a stopped VM will have', () => withDiagnostics(app, async () => {
    const { page } = app;
    await libraryItem(page, 'Plain VM').click();
    await page.getByRole('tab', { name: 'USB' }).click();
    await page.getByText(/^This VM has no USB controller\./).waitFor();
    assert.equal(await page.locator('.usb-table').count(), 0);

    // The settings turn the controller on (and the USB VM's dialog shows it on).
    await page.getByRole('button', { name: 'Edit…' }).click();
    const dialog = page.getByRole('dialog', { name: 'Edit Plain VM' });
    // Advanced is open already for a test program (its settings live there).
    if (!(await dialog.getByLabel(/^USB controller/).isVisible())) await dialog.locator('summary', { hasText: 'Advanced' }).click();
    await dialog.getByLabel(/^USB controller/).check();
    await dialog.getByRole('button', { name: 'Save' }).click();
    await dialog.waitFor({ state: 'detached' });
    assert.deepEqual((await app.manager.getVm('plain')).spec.usb, { controller: 'xhci', devices: [] });
    await page.getByText(/^The USB ports can be seen and changed while the VM runs/).waitFor();

    await libraryItem(page, 'USB VM').click();
    await page.getByRole('button', { name: 'Edit…' }).click();
    const usbDialog = page.getByRole('dialog', { name: 'Edit USB VM' });
    assert.equal(await usbDialog.getByLabel(/^USB controller/).isChecked(), true);
    await usbDialog.getByRole('button', { name: 'Cancel' }).click();
    await usbDialog.waitFor({ state: 'detached' });
    await page.getByText(/^The USB ports can be seen and changed while the VM runs/).waitFor();
    await page.getByText('Plugged in at start: Keyboard.').waitFor();
    assert.equal(await page.getByRole('button', { name: 'Plug in' }).count(), 0, 'nothing to plug into a stopped VM');
  }));

  it('plugs a USB stick into a running VM from the panel, lists it on a USB 3 port with its image, and unplugs it', () => withDiagnostics(app, async () => {
    const { page } = app;
    await libraryItem(page, 'USB VM').click();
    await page.getByRole('button', { name: 'Start', exact: true }).click();
    await waitForBadge(page, 'Running');
    await page.getByRole('tab', { name: 'Console' }).click();
    await waitForConsole(page, /porthole echo ready/);

    await page.getByRole('tab', { name: 'USB' }).click();
    const table = page.locator('.usb-table');
    await table.waitFor();
    // The root hub: ports 1-4 USB 3, 5-8 USB 2; the configured keyboard took the first USB 2 port.
    assert.equal(await table.locator('tbody tr').count(), 8);
    for (const n of [1, 2, 3, 4]) assert.deepEqual((await rowText(portRow(page, n))).slice(0, 3), [`Port ${n}`, 'USB 3', 'Empty']);
    assert.deepEqual((await rowText(portRow(page, 5))).slice(0, 5),
      ['Port 5', 'USB 2', 'Porthole USB Keyboard Keyboard', '1d6b:0101', 'Full speed (12 Mbit/s)']);
    await page.getByText('1 of 8 ports in use').waitFor();

    // A missing image is refused with a sentence, and nothing is plugged in.
    const missing = path.join(scratch, 'missing.img');
    await page.getByLabel('Disk image').fill(missing);
    await page.getByRole('button', { name: 'Plug in' }).click();
    const missingText = await takeErrorNotice(page);
    assert.match(missingText, new RegExp(`^USB VM: .*${missing.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}.*does not exist`));
    assert.doesNotMatch(missingText, /\n|\bat \S+:\d+/, 'a sentence, not a stack trace');
    assert.deepEqual(await occupied(app, 'usbvm'), ['5 keyboard - -']);

    // A relative path is caught in the form before anything is sent.
    await page.getByLabel('Disk image').fill('stick.img');
    await page.getByRole('button', { name: 'Plug in' }).click();
    await page.getByText('The disk image must be an absolute path (starting with /).').waitFor();
    assert.equal(await page.getByLabel('Disk image').getAttribute('aria-invalid'), 'true');

    // The stick, read-write, on the first free port: storage goes to USB 3, so port 1.
    await page.getByLabel('Disk image').fill(stick);
    await page.getByRole('button', { name: 'Plug in' }).click();
    const port1 = portRow(page, 1);
    await waitUntil('the stick on port 1', () => rowText(port1), (cells) => cells[2] !== 'Empty');
    assert.deepEqual(await rowText(port1),
      ['Port 1', 'USB 3', 'USB Disk USB stick', '1209:0001', 'SuperSpeed (5 Gbit/s)', `${stick} read-write`, 'Unplug']);
    await page.getByText('2 of 8 ports in use').waitFor();
    await page.locator('.notice-info', { hasText: 'USB VM: USB Disk plugged into port 1 (USB 3).' }).waitFor();
    assert.deepEqual(await occupied(app, 'usbvm'), [`1 storage ${stick} false`, '5 keyboard - -']);
    assert.deepEqual(await unnamedControls(page), [], 'unnamed controls on the USB tab');
    assert.equal(await fitsWidth(page), true, 'the USB tab fits 1280 pixels');
    await page.locator('.usb-table').scrollIntoViewIfNeeded();
    await screenshot(page, 'usb-panel-stick');

    // The same image again is in use (locked by the stick on port 1).
    await page.getByRole('button', { name: 'Plug in' }).click();
    assert.match(await takeErrorNotice(page), /^USB VM: .*in use/);
    assert.deepEqual(await occupied(app, 'usbvm'), [`1 storage ${stick} false`, '5 keyboard - -']);

    // Unplugged from the keyboard: the Unplug button of port 1, then Enter.
    await port1.getByRole('button', { name: 'Unplug USB Disk from port 1' }).focus();
    await page.keyboard.press('Enter');
    await waitUntil('port 1 empty', () => rowText(port1), (cells) => cells[2] === 'Empty');
    await page.getByText('1 of 8 ports in use').waitFor();
    assert.deepEqual(await occupied(app, 'usbvm'), ['5 keyboard - -']);
  }));

  it('plugs a read-only stick into a chosen port and unplugs it while the VM is paused', () => withDiagnostics(app, async () => {
    const { page } = app;
    await libraryItem(page, 'USB VM').click();
    await waitForBadge(page, 'Running');
    await page.getByRole('tab', { name: 'USB' }).click();
    await page.locator('.usb-table').waitFor();

    await page.getByLabel('Port', { exact: true }).selectOption({ label: 'Port 3 (USB 3)' });
    await page.getByLabel('Disk image').fill(stick);
    await page.getByLabel(/^Read-only/).check();
    await page.getByRole('button', { name: 'Plug in' }).click();
    const port3 = portRow(page, 3);
    await waitUntil('the stick on port 3', () => rowText(port3), (cells) => cells[2] !== 'Empty');
    assert.equal((await rowText(port3))[5], `${stick} read-only`);
    assert.deepEqual(await occupied(app, 'usbvm'), [`3 storage ${stick} true`, '5 keyboard - -']);

    await page.getByRole('button', { name: 'Pause', exact: true }).click();
    await waitForBadge(page, 'Paused');
    await port3.getByRole('button', { name: 'Unplug USB Disk from port 3' }).click();
    await waitUntil('port 3 empty', () => rowText(port3), (cells) => cells[2] === 'Empty');
    assert.deepEqual(await occupied(app, 'usbvm'), ['5 keyboard - -']);

    await page.getByRole('button', { name: 'Force off' }).click();
    await waitForBadge(page, 'Stopped');
    await page.getByText(/^The USB ports can be seen and changed while the VM runs/).waitFor();
  }));
});
