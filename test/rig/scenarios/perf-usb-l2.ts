// The Performance tab's USB graphs on a real guest, end to end: the manager and the UI's
// server run in L1, Chromium on the rig host (as in kvm-tests' e2e files), and a VM from the
// library boots the L2 kit with an emulated stick on its xHCI. The graphs run at 2 Hz; once
// L2's shell is up and idle, the stick's bulk IN bytes/s are read from the chart's "Now"
// line, then L2 reads the whole stick with dd in a loop, and the same series must rise: at
// least three successive samples above zero and above the idle value, with transfers/s too.
// Screenshots of the USB section before and while dd reads go to build/rig/out/<run>/test-artifacts/.
import fs from 'node:fs';
import path from 'node:path';
import type { Page } from 'playwright-core';
import type { VmSpec } from '../../../main/api/contract';
import type { VmManager } from '../../../main/manager/manager';
import { libraryItem, startE2eApp, waitForBadge, waitUntil, type E2eApp } from '../../e2e/harness';
import { SerialConsole, type ConsoleTransport } from '../console';
import { RIG_NET_L1_ADDRESS } from '../devices';
import { consoleLogger, scenario, type ScenarioContext } from '../scenario';
import { freshStickCopy, type StickSpec } from '../sticks';

const WORK_DIR = '/tmp/perf-usb-l2';
const STICK: StickSpec = { label: 'perfstick', sizeMiB: 16, serial: '' };
const KIT_MODULES = 'xhci_pci,usb_storage,sd_mod';
/** The same ports kvm-tests forwards for the e2e tests' web servers. */
const E2E_PORTS = [47311, 47312, 47313, 47314, 47315, 47316];
const VM_ID = 'l2usb';
/** The chart of the stick's bytes/s by endpoint (group usb<port>-storage). */
const BYTES_CHART = '.perf-chart[data-chart^="usb:usb"][data-chart$="-storage:bytes"]';
const TRANSFERS_CHART = '.perf-chart[data-chart^="usb:usb"][data-chart$="-storage:transfers"]';

function record(spec: VmSpec): string {
  const at = new Date().toISOString();
  return JSON.stringify({ version: 1, id: VM_ID, createdAt: at, updatedAt: at, spec }, null, 2);
}

/** COM1 of a library VM as a serial console: the manager's scroll-back and live bytes, and typed input. */
function managerConsole(manager: VmManager, onOutput: (text: string) => void): SerialConsole {
  const dataListeners: ((chunk: Buffer) => void)[] = [];
  const closeListeners: ((why: string) => void)[] = [];
  let stop: (() => void) | null = null;
  const transport: ConsoleTransport = {
    write: (data) => manager.sendConsoleInput(VM_ID, 'com1', data),
    onData: (l) => { dataListeners.push(l); },
    onClose: (l) => { closeListeners.push(l); },
    close: () => { stop?.(); for (const l of closeListeners) l('closed by the scenario'); },
  };
  const con = new SerialConsole(transport, { name: 'L2 COM1 through the manager', onOutput });
  stop = manager.subscribeConsole(VM_ID, 'com1', (_offset, data) => { for (const l of dataListeners) l(Buffer.from(data)); });
  return con;
}

/** Sums of the "Now: ep1-in 1.2 MiB/s · ep2-out 0 B/s" line of a chart, by direction (k/M and KiB/MiB expanded). */
async function nowByDirection(page: Page, chart: string): Promise<{ in: number; out: number; text: string }> {
  const text = await page.locator(`${chart} .perf-now`).innerText({ timeout: 2000 }).catch(() => '');
  const sums = { in: 0, out: 0, text };
  for (const part of text.replace(/^Now: /, '').split(' · ')) {
    const m = /^(ep\d+)(-in|-out)? (-?[\d.]+) ?(k|M|G|B|KiB|MiB|GiB)?\/s$/.exec(part.trim());
    if (!m || !m[2]) continue;
    const scale = { k: 1e3, M: 1e6, G: 1e9, B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3 }[m[4] ?? 'B'] ?? 1;
    sums[m[2] === '-in' ? 'in' : 'out'] += Number(m[3]) * scale;
  }
  return sums;
}

async function sampleCount(page: Page): Promise<number> {
  const m = /(\d+) samples/.exec(await page.locator('.perf-status').innerText());
  return m ? Number(m[1]) : 0;
}

/** The USB section (bytes, transfers, latency) in view, then the page as shown and that section. */
async function shoot(page: Page, dir: string, name: string): Promise<string[]> {
  await page.evaluate(`document.querySelector(${JSON.stringify(BYTES_CHART)}).scrollIntoView({ block: 'start' })`);
  await page.waitForTimeout(600); // one 2 Hz sample drawn after the scroll
  const view = path.join(dir, `${name}.png`);
  await page.screenshot({ path: view });
  const section = path.join(dir, `${name}-usb-charts.png`);
  // Both charts fit in the viewport once the first is scrolled into view (190 px plots).
  const a = await page.locator(BYTES_CHART).boundingBox();
  const b = await page.locator(TRANSFERS_CHART).boundingBox();
  if (!a || !b) throw new Error('the USB charts are not on the page');
  const top = Math.max(0, Math.min(a.y, b.y));
  await page.screenshot({ path: section, clip: { x: Math.min(a.x, b.x), y: top, width: Math.max(a.width, b.width), height: Math.min(720, Math.max(a.y + a.height, b.y + b.height)) - top } });
  return [view, section];
}

scenario('perf-usb-l2', async (ctx) => {
  fs.mkdirSync(WORK_DIR, { recursive: true });
  const stick = freshStickCopy(WORK_DIR, STICK);
  const artifacts = path.join(ctx.outDir, 'test-artifacts');
  fs.mkdirSync(artifacts, { recursive: true });
  // The browser runs on the rig host; the UI's server in L1 is reached through forwarded ports.
  process.env.PORTHOLE_E2E_BROWSER_WS = await ctx.rig.browser();
  for (const p of E2E_PORTS) await ctx.rig.forward(p);
  process.env.PORTHOLE_E2E_PORTS = E2E_PORTS.join(',');
  process.env.PORTHOLE_E2E_LISTEN = RIG_NET_L1_ADDRESS;
  process.env.PORTHOLE_FORBID_KOFFI_VIEW = '1';
  const spec: VmSpec = {
    name: 'L2 USB reader', memoryMiB: 256, cpus: 1,
    boot: { kind: 'linux', kernel: ctx.kit.vmlinuz, initrd: ctx.kit.initrd, cmdline: `console=ttyS0 quiet panic=-1 kit.modules=${KIT_MODULES}` },
    serial: ['ui', 'none', 'none', 'none'], debugExit: false,
    usb: { controller: 'xhci', devices: [{ kind: 'storage', path: stick }] },
  };
  const app = await startE2eApp({ prepareLibrary: (dir) => fs.writeFileSync(path.join(dir, `${VM_ID}.json`), record(spec)) });
  try {
    return await graphWhileReading(ctx, app, artifacts);
  } catch (e) {
    if (e instanceof Error) e.message += `\n--- diagnostics ---\n${app.diagnostics.slice(-40).join('\n')}`;
    throw e;
  } finally {
    await app.close();
  }
});

async function graphWhileReading(ctx: ScenarioContext, app: E2eApp, artifacts: string): Promise<string> {
  const { page, manager } = app;
  await libraryItem(page, 'L2 USB reader').click();
  await page.getByRole('tab', { name: 'Performance' }).click();
  await page.getByRole('button', { name: 'Start', exact: true }).click();
  await waitForBadge(page, 'Running', 120_000);
  await page.getByLabel('Resolution').selectOption('500');
  const con = managerConsole(manager, consoleLogger('L2| '));
  await con.waitForShell(240_000);
  // The stick's disk: the only sd* (the kit has no other SCSI disk).
  const disk = await waitUntil('the stick as /dev/sd*', async () => (await con.run('ls /sys/block | grep ^sd || true')).output.trim(), (d) => /^sd[a-z]+$/.test(d), 120_000);
  ctx.log(`L2: the stick is /dev/${disk}`);
  // Idle: enumeration and the partition scan are over; a few samples of the quiet stick.
  await page.locator(BYTES_CHART).waitFor({ timeout: 60_000 });
  const idleFrom = await sampleCount(page);
  await waitUntil('4 idle samples', () => sampleCount(page), (n) => n >= idleFrom + 4, 60_000);
  const idle = await nowByDirection(page, BYTES_CHART);
  ctx.log(`idle: ${idle.text}`);
  const before = await shoot(page, artifacts, 'perf-usb-l2-idle');

  await con.runOk(`(while :; do dd if=/dev/${disk} of=/dev/null bs=64k iflag=direct 2>/dev/null; done) >/dev/null 2>&1 & true`); // "& ;" would be a syntax error: run() appends its marker after a ";"
  const risen: string[] = [];
  let last = await sampleCount(page);
  const deadline = Date.now() + 90_000;
  while (risen.length < 3) {
    if (Date.now() > deadline) throw new Error(`the stick's bulk IN bytes/s did not rise above the idle ${idle.in} B/s in 3 successive samples while dd read it (seen: ${risen.join(' | ') || 'none'})`);
    await page.waitForTimeout(200);
    const n = await sampleCount(page);
    if (n === last) continue;
    last = n;
    const now = await nowByDirection(page, BYTES_CHART);
    if (now.in > 0 && now.in > idle.in) risen.push(now.text);
    else risen.length = 0;
  }
  const transfers = await nowByDirection(page, TRANSFERS_CHART);
  if (!(transfers.in > 0)) throw new Error(`transfers/s stayed at zero while bytes/s rose: ${transfers.text}`);
  const during = await shoot(page, artifacts, 'perf-usb-l2-reading');
  await con.run('kill $!');
  const shots = [...before, ...during].map((f) => path.relative(ctx.outDir, f)).join(', ');
  return `idle ${idle.text || '(no reading)'}; while dd read /dev/${disk}: ${risen.join(' | ')}; transfers ${transfers.text}; screenshots ${shots}`;
}
