// The Performance tab's drawing cost: the real manager, browser-mode server and renderer in
// Debian's Chromium, with a scripted VM process (no KVM) that streams 40 moving counters at
// the rate the page asks for. Opens the tab at 10 Hz and counts requestAnimationFrame
// callbacks (Chromium's performance.now clock) over a few seconds, and the page's main-thread
// time per second from the Performance API's long-task entries.
//
//   node dist/test/bench/perf-ui.js [--seconds 5] [--series 40] [--hz 10] [--fill 3]
//
// --fill: seconds of samples the charts collect before the count starts. --prefill: at the
// switch to 10 Hz the scripted VM first sends 10 minutes of past samples at once, so the
// ring buffer is full from the start (what --fill 600 gives, without the wait). --profile: also
// record a CPU profile of the page while it counts (build/bench/perf-ui.cpuprofile) and print
// the functions with the most self time. --trace: record a Chromium trace while it counts and print
// the page's main-thread time per second by timeline event (script, style, layout, paint).
//
// Prints one line per run and writes build/bench/perf-ui.json. No QEMU column: this measures
// the UI, not the VMM. Headless Chromium without a GPU draws in software, so the number is a
// floor for a desktop session.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import type { VmSpec, VmStatsCounter } from '../../main/api/contract';
import { RENDERER_DIR } from '../../main/manager/app-paths';
import { VmManager } from '../../main/manager/manager';
import type { StatsSample } from '../../main/vmm/shared/stats';
import { startWebServer } from '../../main/web/server';
import { ScriptedProcess } from '../helpers/scripted-process';

const CHROMIUM = '/usr/bin/chromium';

function option(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? Number(process.argv[i + 1]) : fallback;
  if (!Number.isFinite(v) || v <= 0) throw new Error(`--${name} takes a positive number`);
  return v;
}

/** 40 counters over the five charts: 8 exit reasons, 8 devices' accesses, 8 IRQ lines, 8 byte and 8 operation counters. */
function counterSpecs(series: number): Pick<VmStatsCounter, 'group' | 'name' | 'unit'>[] {
  const specs: Pick<VmStatsCounter, 'group' | 'name' | 'unit'>[] = [];
  for (let i = 0; specs.length < series; i++) {
    const k = i % 5;
    const n = Math.floor(i / 5);
    if (k === 0) specs.push({ group: 'exits', name: `reason-${n}`, unit: 'count' });
    else if (k === 1) specs.push({ group: `dev${n}`, name: 'pio-writes', unit: 'count' });
    else if (k === 2) specs.push({ group: 'irq', name: `gsi-${n}`, unit: 'count' });
    else if (k === 3) specs.push({ group: `disk${n}`, name: 'read-bytes', unit: 'bytes' });
    else specs.push({ group: `disk${n}`, name: 'reads', unit: 'count' });
  }
  return specs;
}

async function main(): Promise<void> {
  const seconds = option('seconds', 5);
  const seriesWanted = option('series', 40);
  const hz = option('hz', 10);
  const fillSeconds = option('fill', 3);
  if (!fs.existsSync(path.join(RENDERER_DIR, 'index.html'))) throw new Error('the UI is not built: run npm run build:renderer');
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-perf-ui-'));
  const library = path.join(scratch, 'vms');
  fs.mkdirSync(library, { recursive: true });
  const spec: VmSpec = {
    name: 'Bench', memoryMiB: 16, cpus: 1, boot: { kind: 'flat', path: path.join(scratch, 'x.bin') }, serial: ['ui', 'none', 'none', 'none'], debugExit: false,
  };
  fs.writeFileSync(spec.boot.kind === 'flat' ? spec.boot.path : '', 'x');
  const at = new Date().toISOString();
  fs.writeFileSync(path.join(library, 'bench.json'), JSON.stringify({ version: 1, id: 'bench', createdAt: at, updatedAt: at, spec }));

  const specs = counterSpecs(seriesWanted);
  const totals = new Float64Array(specs.length);
  let timer: NodeJS.Timeout | null = null;
  const sampleAt = (now: number, interval: number): StatsSample => {
    const counters = specs.map((s, i) => {
      const rate = 1000 * (1 + i) * (1.2 + Math.sin(now / 1500 + i));
      const delta = Math.round((rate * interval) / 1000);
      totals[i] += delta;
      return { ...s, total: totals[i], perSecond: (delta * 1000) / interval };
    });
    return { atMs: now, intervalMs: interval, counters };
  };
  const prefill = process.argv.includes('--prefill');
  let prefilled = false;
  let livePeriod = 250;
  const proc = new ScriptedProcess();
  proc.onKill = () => { if (timer) clearInterval(timer); proc.exit(null, 'SIGKILL'); };
  const origSend = proc.send.bind(proc);
  let last = Date.now();
  // The VM process's side: sample every periodMs while the manager wants samples.
  proc.send = (m) => {
    origSend(m);
    if (m.type !== 'stats-stream') return;
    if (timer) clearInterval(timer);
    timer = null;
    if (!m.on) return;
    const period = m.periodMs ?? 250;
    livePeriod = period;
    if (prefill && period <= 100 && !prefilled) {
      prefilled = true;
      const count = Math.floor(600_000 / period);
      const start = Date.now() - count * period;
      // In chunks, so the page's WebSocket never falls far enough behind to be dropped.
      let i = 0;
      const chunk = () => {
        for (const end = Math.min(count, i + 100); i < end; i++) proc.message({ type: 'stats', sample: sampleAt(start + i * period, period) });
        if (i < count) setTimeout(chunk, 50);
        else startLive();
      };
      chunk();
      return;
    }
    startLive();
  };
  const startLive = () => {
    last = Date.now();
    timer = setInterval(() => {
      const now = Date.now();
      const interval = now - last;
      last = now;
      const sample = sampleAt(now, interval);
      proc.message({ type: 'stats', sample });
    }, livePeriod);
  };

  const manager = new VmManager({
    libraryDir: library, mode: 'browser', appVersion: 'bench', stopTimeoutMs: 200, startTimeoutMs: 5000,
    launcher: () => proc, log: () => undefined,
  });
  manager.load();
  const server = await startWebServer({ backend: manager, rendererDir: RENDERER_DIR, log: () => undefined });
  const starting = manager.startVm('bench');
  proc.boot();
  await starting;
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-gpu', '--no-first-run'] });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    await page.goto(`${server.url.replace(/#.*$/, '')}#/vm/bench/perf`);
    await page.locator('.perf-chart canvas').first().waitFor({ timeout: 30_000 });
    const intervalMs = Math.round(1000 / hz);
    await page.getByLabel('Resolution').selectOption(String(intervalMs));
    // Let the charts fill and settle (uPlot builds each once per series set).
    if (prefill) {
      // The burst of past samples must be through the WebSocket before the count starts: wait
      // until the count grows at the live rate only. (A page that falls too far behind is
      // dropped by the server and reconnects, missing part of the burst: the count printed
      // says how full the buffer was.)
      const count = async () => Number(/(\d+) samples/.exec(await page.locator('.perf-status').innerText())?.[1] ?? 0);
      const deadline = Date.now() + 180_000;
      let before = await count();
      for (;;) {
        await page.waitForTimeout(1000);
        const now = await count();
        if (now - before <= 2 * hz || Date.now() > deadline) break;
        before = now;
      }
    }
    await page.waitForTimeout(fillSeconds * 1000);
    // Series drawn: the parts of each chart's "Now: a 1/s · b 2/s" line.
    const drawn = (await page.locator('.perf-now').allInnerTexts()).reduce((n, t) => n + t.split(' · ').length, 0);
    const measure = async () => await page.evaluate(`new Promise((resolve) => {
      let frames = 0;
      let longTaskMs = 0;
      const observer = new PerformanceObserver((list) => { for (const e of list.getEntries()) longTaskMs += e.duration; });
      try { observer.observe({ type: 'longtask' }); } catch {}
      const start = performance.now();
      const tick = () => {
        frames++;
        const elapsed = performance.now() - start;
        if (elapsed < ${seconds * 1000}) requestAnimationFrame(tick);
        else { observer.disconnect(); resolve({ fps: frames * 1000 / elapsed, longTaskMsPerSecond: longTaskMs * 1000 / elapsed }); }
      };
      requestAnimationFrame(tick);
    })`) as { fps: number; longTaskMsPerSecond: number };
    const profiling = process.argv.includes('--profile');
    const cdp = profiling ? await page.context().newCDPSession(page) : null;
    if (cdp) {
      await cdp.send('Profiler.enable');
      await cdp.send('Profiler.start');
    }
    const tracing = process.argv.includes('--trace');
    if (tracing) await browser.startTracing(page, { categories: ['devtools.timeline', 'disabled-by-default-devtools.timeline'] });
    const result = await measure();
    if (tracing) printTraceSummary(JSON.parse((await browser.stopTracing()).toString('utf8')) as TraceFile, seconds);
    if (cdp) {
      const { profile } = await cdp.send('Profiler.stop');
      fs.mkdirSync(path.join(__dirname, '..', '..', '..', 'build', 'bench'), { recursive: true });
      fs.writeFileSync(path.join(__dirname, '..', '..', '..', 'build', 'bench', 'perf-ui.cpuprofile'), JSON.stringify(profile));
      printHotFunctions(profile);
    }
    const samples = await page.locator('.perf-status').innerText();
    // The reference: the same page with the graphs paused (samples still arrive and are kept).
    await page.getByRole('button', { name: 'Pause graphs' }).click();
    const paused = await measure();
    await page.getByRole('button', { name: 'Resume graphs' }).click();
    const line = `perf-ui: ${drawn} series at ${hz} Hz: ${result.fps.toFixed(1)} frames/s over ${seconds} s after ${fillSeconds} s of samples, long tasks ${result.longTaskMsPerSecond.toFixed(0)} ms/s (${samples.trim()}); paused graphs (reference) ${paused.fps.toFixed(1)} frames/s, long tasks ${paused.longTaskMsPerSecond.toFixed(0)} ms/s, ratio ${(result.fps / paused.fps).toFixed(2)}; load average ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`;
    console.log(line);
    const outDir = path.join(__dirname, '..', '..', '..', 'build', 'bench');
    fs.mkdirSync(outDir, { recursive: true });
    fs.writeFileSync(path.join(outDir, 'perf-ui.json'), `${JSON.stringify({ at: new Date().toISOString(), series: drawn, hz, seconds, fillSeconds, ...result, paused, loadavg: os.loadavg() }, null, 1)}\n`);
    await page.screenshot({ path: path.join(outDir, 'perf-ui.png'), fullPage: true });
  } finally {
    if (timer) clearInterval(timer);
    await browser.close();
    await manager.shutdownAll('force-off').catch(() => undefined);
    await server.close();
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}

interface CpuProfile {
  nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number } }[];
  samples?: number[];
  timeDeltas?: number[];
}

/** The 15 functions with the most self time in a CDP CPU profile. */
function printHotFunctions(profile: CpuProfile): void {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  (profile.samples ?? []).forEach((id, i) => {
    const f = byId.get(id)?.callFrame;
    const name = f ? `${f.functionName || '(anonymous)'} ${path.basename(f.url)}:${f.lineNumber + 1}` : '?';
    self.set(name, (self.get(name) ?? 0) + (profile.timeDeltas?.[i] ?? 0) / 1000);
  });
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  for (const [name, ms] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 15)) {
    console.log(`  ${ms.toFixed(0).padStart(6)} ms ${((ms * 100) / total).toFixed(1).padStart(5)}%  ${name}`);
  }
}

interface TraceEvent { name: string; ph: string; ts: number; dur?: number; tid: number; pid: number; args?: { name?: string } }
interface TraceFile { traceEvents: TraceEvent[] }

/** Main-thread time per second of the page's renderer by timeline event (nested events overlap: e.g. Paint holds PaintImage). */
function printTraceSummary(trace: TraceFile, seconds: number): void {
  const mains = new Set(trace.traceEvents.filter((e) => e.ph === 'M' && e.name === 'thread_name' && e.args?.name === 'CrRendererMain').map((e) => `${e.pid}:${e.tid}`));
  const byName = new Map<string, number>();
  for (const e of trace.traceEvents) {
    if (e.ph !== 'X' || !e.dur || !mains.has(`${e.pid}:${e.tid}`)) continue;
    byName.set(e.name, (byName.get(e.name) ?? 0) + e.dur / 1000);
  }
  for (const [name, ms] of [...byName].sort((a, b) => b[1] - a[1]).slice(0, 20)) {
    console.log(`  ${(ms / seconds).toFixed(1).padStart(7)} ms/s  ${name}`);
  }
  // The longest tasks (what drops frames), with what took over 3 ms inside each.
  const onMain = trace.traceEvents.filter((e) => e.ph === 'X' && e.dur && mains.has(`${e.pid}:${e.tid}`));
  for (const task of onMain.filter((e) => e.name === 'RunTask').sort((a, b) => (b.dur ?? 0) - (a.dur ?? 0)).slice(0, 3)) {
    const inside = onMain.filter((e) => e !== task && e.ts >= task.ts && e.ts < task.ts + (task.dur ?? 0) && (e.dur ?? 0) > 3000);
    console.log(`  longest task ${((task.dur ?? 0) / 1000).toFixed(1)} ms: ${inside.map((e) => `${e.name} ${((e.dur ?? 0) / 1000).toFixed(1)}`).join(', ')}`);
  }
}

main().catch((e: unknown) => {
  console.error(`perf-ui: ${(e as Error).message}`);
  process.exitCode = 1;
});
