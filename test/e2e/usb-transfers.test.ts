// rig-tcg: multi (SeaBIOS boots: single-threaded TCG re-enters its interrupt handlers; test/rig/README.md)
// The USB tab's transfer list in Chromium against the real manager and VM process: SeaBIOS
// (its xHCI and USB keyboard drivers, clients we did not write) polls a USB keyboard; keys sent
// to it become interrupt IN transfers that the list shows live, filtered by device and
// endpoint; a capture to a file from the same tab holds them, and tshark reads the file.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Page } from 'playwright-core';
import type { VmSpec } from '../../main/api/contract';
import { parseUsbKeys } from '../../main/api/usb-input';
import { browserSkipReason, fitsWidth, libraryItem, screenshot, startE2eApp, unnamedControls, waitForBadge, waitUntil, type E2eApp, withDiagnostics } from './harness';

const SEABIOS = '/usr/share/seabios/bios-256k.bin';
const skip = browserSkipReason() ?? (fs.existsSync(SEABIOS) ? null : `${SEABIOS} is missing (run scripts/fixtures.sh)`);

function record(id: string, spec: VmSpec): string {
  const at = '2025-01-02T03:04:05.000Z';
  return JSON.stringify({ version: 1, id, createdAt: at, updatedAt: at, spec }, null, 2);
}

/** The transfer list's rows as cell texts. */
async function transferRows(page: Page): Promise<string[][]> {
  const rows = page.locator('.usb-transfer-table tbody tr');
  const out: string[][] = [];
  for (let i = 0; i < await rows.count(); i++) out.push((await rows.nth(i).locator('td').allInnerTexts()).map((t) => t.replace(/\s+/g, ' ').trim()));
  return out;
}

describe('the USB transfer list in Chromium', { skip: skip ?? false }, () => {
  let app: E2eApp;
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-e2e-usbx-'));
  const stick = path.join(scratch, 'blank.img');
  const capture = path.join(scratch, 'keys.pcapng');

  before(async () => {
    // A blank stick: SeaBIOS finds nothing to boot and waits, polling the keyboard.
    fs.writeFileSync(stick, Buffer.alloc(4 * 1024 * 1024));
    const spec: VmSpec = {
      name: 'SeaBIOS USB', memoryMiB: 64, cpus: 1, boot: { kind: 'firmware', firmware: '', disks: [], cdrom: '', optionRoms: [] },
      serial: ['ui', 'none', 'none', 'none'], debugExit: false,
      usb: { controller: 'xhci', devices: [{ kind: 'keyboard' }, { kind: 'storage', path: stick, readOnly: true }] },
    };
    app = await startE2eApp({ prepareLibrary: (dir) => fs.writeFileSync(path.join(dir, 'seausb.json'), record('seausb', spec)) });
  });

  after(async () => {
    await app?.close();
    fs.rmSync(scratch, { recursive: true, force: true });
  });

  it('lists the keyboard\'s interrupt transfers live, filters by device and endpoint, and captures them to a file', () => withDiagnostics(app, async () => {
    const { page } = app;
    await libraryItem(page, 'SeaBIOS USB').click();
    await page.getByRole('button', { name: 'Start', exact: true }).click();
    await waitForBadge(page, 'Running');
    await page.getByRole('tab', { name: 'USB' }).click();
    await page.locator('.usb-table').waitFor();
    await page.getByText('Watch transfers to list what crosses the bus.').waitFor();
    await page.getByRole('button', { name: 'Watch transfers' }).click();

    // SeaBIOS sets the keyboard up in its first seconds; keys wait until it has.
    const keys = parseUsbKeys(['a', 'b', 'Enter']);
    await waitUntil('SeaBIOS has configured the USB keyboard', () => app.manager.sendUsbKeys('seausb', keys).then(() => true, () => false), (ok) => ok, 60_000);
    const keyRows = await waitUntil('the keyboard\'s reports in the list', () => transferRows(page),
      (rows) => rows.filter((r) => r[1].startsWith('5') && r[2] === 'EP 1 IN' && r[3] === 'interrupt' && r[5].startsWith('ok')).length >= 2);
    const report = keyRows.find((r) => r[2] === 'EP 1 IN' && r[6] === '0000040000000000');
    assert.ok(report, `the key "a" report (usage 4) is listed: ${JSON.stringify(keyRows.slice(-8))}`);
    assert.equal(report[4], '8', 'an 8-byte boot keyboard report');

    // The device filter offers the ports seen; the endpoint filter that device's endpoints.
    await page.getByLabel('Filter by device').selectOption({ label: 'Port 5: usb-kbd' });
    await page.getByLabel('Filter by endpoint').selectOption({ label: 'EP 1 IN' });
    const filtered = await transferRows(page);
    assert.ok(filtered.length > 0 && filtered.every((r) => r[1].startsWith('5') && r[2] === 'EP 1 IN'), JSON.stringify(filtered.slice(0, 4)));
    assert.deepEqual(await unnamedControls(page), [], 'unnamed controls on the USB tab');
    assert.equal(await fitsWidth(page), true, 'the USB tab fits 1280 pixels');
    await page.locator('.usb-transfer-table').scrollIntoViewIfNeeded();
    await screenshot(page, 'usb-transfers-keyboard');

    // A capture of port 5 (the filter's device) to a file, from the tab.
    await page.getByLabel(/^pcapng file/).fill(capture);
    await page.getByRole('button', { name: 'Start capture' }).click();
    await page.getByText(`Capturing port 5 to ${capture}.`).waitFor();
    await app.manager.sendUsbKeys('seausb', parseUsbKeys(['z']));
    await waitUntil('the key "z" report in the list', () => transferRows(page), (rows) => rows.some((r) => r[6] === '00001d0000000000'));
    await page.getByRole('button', { name: 'Stop capture' }).click();
    const notice = page.locator('.notice-info', { hasText: `USB packets` });
    await notice.waitFor();
    assert.match(await notice.innerText(), new RegExp(`SeaBIOS USB: \\d+ USB packets \\(\\d+ bytes\\) written to ${capture.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\.`));
    // tshark finds the "z" report in a completed interrupt IN transfer of the capture.
    const frames = execFileSync('tshark', ['-r', capture, '-Y',
      "usb.urb_type == 'C' && usb.endpoint_address == 0x81 && usb.transfer_type == 0x01 && frame contains 00:00:1d:00:00:00:00:00",
      '-T', 'fields', '-e', 'frame.number'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
    assert.notEqual(frames, '', `tshark reads the "z" report from the capture:\n${execFileSync('tshark', ['-r', capture], { encoding: 'utf8' })}`);

    await page.getByRole('button', { name: 'Force off' }).click();
    await waitForBadge(page, 'Stopped');
  }));
});
