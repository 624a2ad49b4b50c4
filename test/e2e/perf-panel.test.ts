// The Performance tab and the library sparklines in Chromium against the real manager and VM
// process: while a guest floods COM1 without end, the graphs show rising, non-zero series
// (io exits, COM1's accesses and bytes), the library's sparkline draws exits/s, the
// resolution goes to 10 Hz, pause freezes the graphs, a drag zooms and Reset zoom undoes it,
// and the CSV and JSON exports hold the flood. The page's frame rate at 10 Hz is measured
// with requestAnimationFrame and printed (no timing assertion). Screenshots go to the
// artifacts folder.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Page } from 'playwright-core';
import type { VmSpec } from '../../main/api/contract';
import { guest } from '../helpers/vm';
import {
  ARTIFACTS_DIR, browserSkipReason, fitsWidth, fixtureSkipReason, libraryItem, screenshot, startE2eApp, unnamedControls, waitForBadge, waitUntil, withDiagnostics,
  type E2eApp,
} from './harness';

const skip = browserSkipReason() ?? fixtureSkipReason('serial-flood-forever');

function record(id: string, spec: VmSpec): string {
  const at = '2025-01-02T03:04:05.000Z';
  return JSON.stringify({ version: 1, id, createdAt: at, updatedAt: at, spec }, null, 2);
}

const floodSpec: VmSpec = {
  name: 'Flood', memoryMiB: 32, cpus: 1, boot: { kind: 'flat', path: guest('serial-flood-forever') },
  serial: ['ui', 'none', 'none', 'none'], debugExit: false,
};

/** A chart's "Now: a 1.2k/s · b 3/s" line as numbers per series (k/M and KiB/MiB expanded). */
async function nowValues(page: Page, chart: string): Promise<Record<string, number>> {
  const text = await page.locator(`.perf-chart[data-chart="${chart}"] .perf-now`).innerText().catch(() => '');
  const out: Record<string, number> = {};
  for (const part of text.replace(/^Now: /, '').split(' · ')) {
    const m = /^(.*) (-?[\d.]+) ?(k|M|G|B|KiB|MiB|GiB)?\/s$/.exec(part.trim());
    if (!m) continue;
    const scale = { k: 1e3, M: 1e6, G: 1e9, B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3 }[m[3] ?? 'B'] ?? 1;
    out[m[1]] = Number(m[2]) * scale;
  }
  return out;
}

async function sampleCount(page: Page): Promise<number> {
  const m = /(\d+) samples/.exec(await page.locator('.perf-status').innerText());
  return m ? Number(m[1]) : 0;
}

describe('the Performance tab and library sparklines in Chromium', { skip: skip ?? false }, () => {
  let app: E2eApp;
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-e2e-perf-'));

  before(async () => {
    app = await startE2eApp({
      prepareLibrary: (dir) => fs.writeFileSync(path.join(dir, 'flood.json'), record('flood', floodSpec)),
    });
  });

  after(async () => {
    await app?.close();
    fs.rmSync(scratch, { recursive: true, force: true });
  });

  it('graphs a flooding guest live: rising non-zero series, sparkline, 10 Hz, pause, zoom, CSV and JSON export', (t) => withDiagnostics(app, async () => {
    const t_log = (line: string) => t.diagnostic(`perf-panel: ${line}`);
    const { page } = app;
    await libraryItem(page, 'Flood').click();
    await page.getByRole('tab', { name: 'Performance' }).click();
    assert.match(page.url(), /#\/vm\/flood\/perf$/);
    await page.getByText('Start the VM to see its live performance graphs.').waitFor();
    await page.getByRole('button', { name: 'Start', exact: true }).click();
    await waitForBadge(page, 'Running');

    // 1 s resolution: the exits chart appears, and io exits and COM1's bytes are non-zero in
    // two successive samples.
    await page.locator('.perf-chart[data-chart="exits"] canvas').waitFor({ timeout: 60_000 });
    const firstSamples = await waitUntil('3 samples', () => sampleCount(page), (n) => n >= 3, 60_000);
    const exits1 = await waitUntil('io exits/s above zero', () => nowValues(page, 'exits'), (v) => (v.io ?? 0) > 0, 30_000);
    const bytes1 = await waitUntil('COM1 tx bytes/s above zero', () => nowValues(page, 'bytes'), (v) => (v['COM1 tx-bytes'] ?? 0) > 0, 30_000);
    const accesses = await nowValues(page, 'accesses');
    assert.ok((accesses.COM1 ?? 0) > 0, `COM1 accesses/s: ${JSON.stringify(accesses)}`);
    await waitUntil('more samples', () => sampleCount(page), (n) => n > firstSamples, 30_000);
    const exits2 = await nowValues(page, 'exits');
    assert.ok((exits2.io ?? 0) > 0, `io exits/s in the next sample: ${JSON.stringify(exits2)}`);
    const titles = await page.locator('.perf-chart .u-title').allInnerTexts();
    assert.ok(titles.includes('VM exits/s by reason') && titles.includes('PIO/MMIO accesses/s by device') && titles.includes('Bytes/s by device and backend'), titles.join(', '));

    // The library's sparkline draws the VM's exits/s.
    const spark = libraryItem(page, 'Flood').locator('canvas.sparkline-canvas');
    const sparkState = await waitUntil('a sparkline with 2 points', async () => ({ points: Number(await spark.getAttribute('data-points')), last: Number(await spark.getAttribute('data-last')) }), (s) => s.points >= 2 && s.last > 0, 30_000);
    assert.match(await libraryItem(page, 'Flood').locator('.sparkline-label').innerText(), /exits\/s$/);
    await screenshot(page, 'perf-tab-1s');
    assert.deepEqual(await unnamedControls(page), [], 'unnamed controls on the Performance tab');
    assert.equal(await fitsWidth(page), true, 'the Performance tab fits 1280 pixels');
    await page.emulateMedia({ colorScheme: 'dark' });
    await new Promise((r) => setTimeout(r, 1500)); // a sample or two drawn in the dark theme
    await screenshot(page, 'perf-tab-dark');
    await page.emulateMedia({ colorScheme: 'light' });
    t_log(`1 s: exits ${JSON.stringify(exits1)}; bytes ${JSON.stringify(bytes1)}; accesses ${JSON.stringify(accesses)}; sparkline ${JSON.stringify(sparkState)}`);

    // 10 Hz: a new history fills ten times as fast.
    await page.getByLabel('Resolution').selectOption({ label: '10 Hz' });
    await waitUntil('20 samples at 10 Hz', () => sampleCount(page), (n) => n >= 20, 60_000);
    const fast = await nowValues(page, 'exits');
    assert.ok((fast.io ?? 0) > 0, `io exits/s at 10 Hz: ${JSON.stringify(fast)}`);
    // Series drawn: the parts of each chart's "Now: a 1/s · b 2/s" line.
    const seriesCount = (await page.locator('.perf-now').allInnerTexts()).reduce((n, text) => n + text.split(' · ').length, 0);
    // Frames the page draws in 3 s while 10 samples a second arrive (Chromium's rAF count).
    const fps = await page.evaluate(`new Promise((resolve) => {
      let frames = 0;
      const start = performance.now();
      const tick = () => {
        frames++;
        if (performance.now() - start < 3000) requestAnimationFrame(tick);
        else resolve((frames * 1000) / (performance.now() - start));
      };
      requestAnimationFrame(tick);
    })`) as number;
    fs.mkdirSync(ARTIFACTS_DIR, { recursive: true });
    fs.writeFileSync(path.join(ARTIFACTS_DIR, 'perf-tab-fps.json'), `${JSON.stringify({ series: seriesCount, hz: 10, fps }, null, 1)}\n`);
    t_log(`10 Hz: ${seriesCount} series, ${fps.toFixed(1)} frames/s`);
    await screenshot(page, 'perf-tab-10hz');

    // Pause freezes the graphs while samples still arrive; Resume brings them up to date.
    await page.getByRole('button', { name: 'Pause graphs' }).click();
    const frozen = await page.locator('.perf-chart[data-chart="exits"] .perf-now').innerText();
    const frozenCount = await sampleCount(page);
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(await page.locator('.perf-chart[data-chart="exits"] .perf-now').innerText(), frozen, 'paused graphs do not move');
    assert.ok(await sampleCount(page) > frozenCount, 'samples keep arriving while paused');
    await page.getByRole('button', { name: 'Resume graphs' }).click();
    await waitUntil('the graphs to move again', () => page.locator('.perf-chart[data-chart="exits"] .perf-now').innerText(), (t) => t !== frozen, 10_000);

    // A drag on the exits chart zooms in; Reset zoom follows the newest samples again.
    const over = page.locator('.perf-chart[data-chart="exits"] .u-over');
    const box = (await over.boundingBox())!;
    await page.mouse.move(box.x + box.width * 0.3, box.y + box.height / 2);
    await page.mouse.down();
    await page.mouse.move(box.x + box.width * 0.6, box.y + box.height / 2, { steps: 5 });
    await page.mouse.up();
    const reset = page.getByRole('button', { name: 'Reset zoom' });
    await waitUntil('Reset zoom to be enabled', () => reset.isEnabled(), (e) => e, 5000);
    // The zoomed chart holds its span while the others keep following the newest samples
    // (uPlot draws axes and lines on the canvas: compare the canvases' pixels).
    await page.mouse.move(0, 0);
    const zoomedCanvas = page.locator('.perf-chart[data-chart="exits"] canvas');
    const followingCanvas = page.locator('.perf-chart[data-chart="accesses"] canvas');
    const [zoomedBefore, followingBefore] = [await zoomedCanvas.screenshot(), await followingCanvas.screenshot()];
    await new Promise((r) => setTimeout(r, 3000));
    assert.ok((await zoomedCanvas.screenshot()).equals(zoomedBefore), 'the zoomed chart keeps its time span');
    assert.ok(!(await followingCanvas.screenshot()).equals(followingBefore), 'the other charts move on');
    await screenshot(page, 'perf-tab-zoomed');
    await reset.click();
    assert.equal(await reset.isEnabled(), false);

    // Exports: what the ring buffer holds, with the flood in it.
    const [csvDownload] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Export CSV' }).click()]);
    assert.match(csvDownload.suggestedFilename(), /^Flood-perf-.*\.csv$/);
    const csvFile = path.join(scratch, 'export.csv');
    await csvDownload.saveAs(csvFile); // the browser may run on another machine (the rig host)
    const csv = fs.readFileSync(csvFile, 'utf8').trim().split('\r\n');
    const header = csv[0].split(',');
    const io = header.indexOf('exits/io (count/s)');
    assert.ok(io > 1, header.join(','));
    assert.ok(csv.length >= 21, `${csv.length - 1} rows`);
    assert.ok(csv.slice(1).some((row) => Number(row.split(',')[io]) > 0), 'io exits in the CSV');
    const [jsonDownload] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Export JSON' }).click()]);
    const jsonFile = path.join(scratch, 'export.json');
    await jsonDownload.saveAs(jsonFile);
    const json = JSON.parse(fs.readFileSync(jsonFile, 'utf8')) as { vm: { id: string }; intervalMs: number; timesMs: number[]; counters: { group: string; name: string; perSecond: (number | null)[] }[] };
    assert.equal(json.vm.id, 'flood');
    assert.equal(json.intervalMs, 100);
    const tx = json.counters.find((c) => c.group === 'COM1' && c.name === 'tx-bytes');
    assert.ok(tx && tx.perSecond.length === json.timesMs.length && tx.perSecond.some((v) => (v ?? 0) > 0), 'COM1 tx-bytes in the JSON');

    await page.getByRole('button', { name: 'Force off' }).click();
    await waitForBadge(page, 'Stopped');
    await page.getByText('Start the VM to see its live performance graphs.').waitFor();
    assert.equal(await libraryItem(page, 'Flood').locator('canvas.sparkline-canvas').count(), 0, 'no sparkline for a stopped VM');
  }));
});

