// The stats-stream cost bench (`npm run bench -- stats-stream`): what a 10 Hz vm-stats
// subscriber costs a guest that floods exits. One VM runs a guest that writes port 0x80 (the
// POST port, a cheap device) forever (test/guests/pio-loop-forever.asm). The bench switches the
// subscriber on and off in short windows within that one run (ABBA pairs, so a steady drift in
// host load hits both states alike) and counts the guest's exits per window from the
// statistics registry. "Off" is the VM host's own 4 Hz sampling, which always runs; "on" is what
// a watcher at watchVmStatsEvery's fastest pace adds: 10 Hz sampling, the VM process's
// SampleForwarder sending every sample over child-process IPC (advanced serialization) to a
// subscriber process in the manager's place, which makes the API's vm-stats event text.
// The cost is the median over pairs of 1 - rate(on) / rate(off). QEMU -accel kvm runs the
// batched PIO loop (test/guests/pio-loop.inc) as an option ROM before and after, as the reference.
import { fork, type ChildProcess } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { defaultConfig, type MachineConfig } from '../../main/vmm/config';
import type { MachineEnd } from '../../main/vmm/machine/machine';
import { VmHost } from '../../main/vmm/host/vm-host';
import { SampleForwarder } from '../../main/manager/sample-forwarder';
import { STATS_DEFAULT_PERIOD_MS, STATS_MIN_INTERVAL_MS } from '../../main/manager/vm-process-protocol';
import { writeBenchResult } from './paths';

/** The target: a subscriber costs under 2% of the guest's exit rate. */
export const STATS_STREAM_TARGET_PERCENT = 2;

export interface LoopReport {
  exits: number;
  cycles: number;
}

export interface StatsStreamDeps {
  /** The endless port 0x80 loop, a flat guest for Porthole. */
  forever: string;
  /** The batched PIO loop as an option ROM, for QEMU. */
  rom: string;
  /** On/off window pairs. */
  pairs: number;
  windowMs: number;
  /** Exits QEMU's ROM loop makes per run. */
  qemuExits: number;
  tscKhz: () => number;
  parseLoop: (text: string, who: string) => LoopReport;
  /** QEMU's debug console output of the ROM, or null when QEMU is not installed. */
  runQemuText: ((rom: string) => string) | null;
}

export interface StatsStreamResult {
  met: boolean;
  costPercent: number;
}

interface Window {
  on: boolean;
  exits: number;
  ms: number;
  /** The VM host thread's busy time in the window, ms per second (event loop utilization). */
  hostBusyMsPerSecond: number;
}

interface SubscriberReport {
  events: number;
  bytes: number;
  cpuUs: { user: number; system: number };
}

function quantile(values: number[], q: number): number {
  const s = [...values].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const at = (s.length - 1) * q;
  const lo = Math.floor(at);
  return s[lo] + (s[Math.min(lo + 1, s.length - 1)] - s[lo]) * (at - lo);
}

/** A distribution-free ~95% confidence interval of the median (order statistics). */
function medianInterval(values: number[]): [number, number] {
  const s = [...values].sort((a, b) => a - b);
  const n = s.length;
  const k = Math.max(0, Math.floor(n / 2 - 0.98 * Math.sqrt(n)));
  return [s[k], s[n - 1 - k]];
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function ioExits(host: VmHost): number {
  const c = host.readStats().counters.find((r) => r.group === 'exits' && r.name === 'io');
  return c ? c.total : 0;
}

function askSubscriber(child: ChildProcess): Promise<SubscriberReport> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the subscriber process did not answer')), 10000);
    const onMessage = (m: { type: string } & SubscriberReport) => {
      if (m.type !== 'report') return;
      clearTimeout(timer);
      child.off('message', onMessage);
      resolve(m);
    };
    child.on('message', onMessage);
    child.send({ type: 'report' });
  });
}

/** One VM run with the subscriber switched on and off in `pairs` ABBA window pairs. */
async function runPortholeWindows(d: StatsStreamDeps, log: (line: string) => void): Promise<{ windows: Window[]; subscriber: SubscriberReport }> {
  const config: MachineConfig = { ...defaultConfig(), name: 'bench', boot: { kind: 'flat', path: d.forever, address: 0x1000 } };
  const host = new VmHost(config);
  host.statsIntervalMs = STATS_DEFAULT_PERIOD_MS;
  const child = fork(path.join(__dirname, 'stats-subscriber.js'), [], { serialization: 'advanced', stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const forwarder = new SampleForwarder((sample) => child.send({ type: 'stats', sample }));
  host.on('stats', (sample) => forwarder.offer(sample, performance.now()));
  let ended: MachineEnd | null = null;
  host.once('ended', (end) => { ended = end; });
  const windows: Window[] = [];
  const setSubscriber = (on: boolean) => {
    forwarder.setStreaming(on);
    host.setStatsInterval(on ? STATS_MIN_INTERVAL_MS : STATS_DEFAULT_PERIOD_MS);
  };
  try {
    await host.start();
    // Warm up: the guest's first exits fault pages in; V8 compiles the exit path.
    await sleep(2000);
    for (let pair = 0; pair < d.pairs; pair++) {
      const order = pair % 2 === 0 ? [false, true] : [true, false];
      for (const on of order) {
        setSubscriber(on);
        // Let the switch settle (a timer re-armed, a sample in flight) before counting.
        await sleep(Math.min(200, d.windowMs / 4));
        const exits0 = ioExits(host);
        const elu0 = performance.eventLoopUtilization();
        const t0 = performance.now();
        await sleep(d.windowMs);
        const exits1 = ioExits(host);
        const ms = performance.now() - t0;
        const elu = performance.eventLoopUtilization(elu0);
        if (ended) throw new Error(`Porthole: the VM ended early with ${JSON.stringify(ended)}`);
        windows.push({ on, exits: exits1 - exits0, ms, hostBusyMsPerSecond: (elu.active * 1000) / ms });
      }
      if ((pair + 1) % 10 === 0) log(`  ${pair + 1} of ${d.pairs} pairs`);
    }
    setSubscriber(false);
    const subscriber = await askSubscriber(child);
    return { windows, subscriber };
  } finally {
    await host.stop();
    child.send({ type: 'quit' });
    child.kill();
  }
}

export async function runStatsStreamBench(d: StatsStreamDeps, log: (line: string) => void = (l) => console.log(l)): Promise<StatsStreamResult> {
  log(`\nstats-stream bench: one VM flooding port 0x80, a ${1000 / STATS_MIN_INTERVAL_MS} Hz subscriber switched on and off in`
    + ` ${d.pairs} ABBA pairs of ${d.windowMs} ms windows; QEMU -accel kvm on the same port loop (${d.qemuExits} exits) before and after`);
  log(`host load average: ${os.loadavg()[0].toFixed(1)} on ${os.cpus().length} CPUs`);
  if (!d.runQemuText) log('QEMU is not installed: its column is skipped.');
  const tscKhz = d.tscKhz();
  const qemuRates: number[] = [];
  const runQemu = () => {
    if (!d.runQemuText) return;
    const loop = d.parseLoop(d.runQemuText(d.rom), 'QEMU');
    if (loop.exits !== d.qemuExits) throw new Error(`QEMU: the guest ran ${loop.exits} exits, expected ${d.qemuExits}`);
    qemuRates.push((loop.exits * tscKhz * 1000) / loop.cycles);
  };
  runQemu();
  const { windows, subscriber } = await runPortholeWindows(d, log);
  runQemu();

  const rate = (w: Window) => (w.exits * 1000) / w.ms;
  const pairCosts: number[] = [];
  for (let i = 0; i + 1 < windows.length; i += 2) {
    const [a, b] = [windows[i], windows[i + 1]];
    const on = a.on ? a : b;
    const off = a.on ? b : a;
    pairCosts.push((1 - rate(on) / rate(off)) * 100);
  }
  const onRates = windows.filter((w) => w.on).map(rate);
  const offRates = windows.filter((w) => !w.on).map(rate);
  const costPercent = quantile(pairCosts, 0.5);
  const [ciLow, ciHigh] = medianInterval(pairCosts);
  const met = costPercent < STATS_STREAM_TARGET_PERCENT;
  const busyOn = quantile(windows.filter((w) => w.on).map((w) => w.hostBusyMsPerSecond), 0.5);
  const busyOff = quantile(windows.filter((w) => !w.on).map((w) => w.hostBusyMsPerSecond), 0.5);
  const fmt = (v: number) => v.toFixed(0).padStart(9);
  log(`  Porthole, no subscriber:   ${fmt(quantile(offRates, 0.5))} exits/s  (median window; quartiles ${quantile(offRates, 0.25).toFixed(0)}..${quantile(offRates, 0.75).toFixed(0)})`);
  log(`  Porthole, 10 Hz subscriber:${fmt(quantile(onRates, 0.5))} exits/s  (median window; quartiles ${quantile(onRates, 0.25).toFixed(0)}..${quantile(onRates, 0.75).toFixed(0)})`);
  let qemu: number | null = null;
  if (qemuRates.length > 0) {
    qemu = quantile(qemuRates, 0.5);
    log(`  QEMU -accel kvm:           ${fmt(qemu)} exits/s  (runs: ${qemuRates.map((r) => r.toFixed(0)).join(', ')}; guest TSC ${(tscKhz / 1000).toFixed(1)} MHz)`);
    log(`  Porthole / QEMU exit rate: no subscriber ${(quantile(offRates, 0.5) / qemu).toFixed(3)}x, with it ${(quantile(onRates, 0.5) / qemu).toFixed(3)}x`);
  }
  log(`  subscriber cost: median of ${pairCosts.length} paired ratios ${costPercent.toFixed(2)}% of the exit rate`
    + ` (95% interval of the median ${ciLow.toFixed(2)}..${ciHigh.toFixed(2)}%, quartiles ${quantile(pairCosts, 0.25).toFixed(2)}..${quantile(pairCosts, 0.75).toFixed(2)}%),`
    + ` target < ${STATS_STREAM_TARGET_PERCENT}%: ${met ? 'met' : 'MISSED'}`);
  log(`  VM host thread busy: ${busyOff.toFixed(1)} ms/s without, ${busyOn.toFixed(1)} ms/s with the subscriber;`
    + ` subscriber got ${subscriber.events} events, ${(subscriber.bytes / Math.max(1, subscriber.events)).toFixed(0)} bytes each`);
  writeBenchResult('stats-stream.json', {
    pairs: d.pairs, windowMs: d.windowMs, tscKhz, loadAverage: os.loadavg()[0], subscriberIntervalMs: STATS_MIN_INTERVAL_MS,
    windows, pairCostPercent: pairCosts, costPercent, medianInterval: [ciLow, ciHigh],
    exitsPerSecond: { none: quantile(offRates, 0.5), subscriber: quantile(onRates, 0.5), qemu }, qemuRuns: qemuRates,
    hostBusyMsPerSecond: { none: busyOff, subscriber: busyOn }, subscriber, target: STATS_STREAM_TARGET_PERCENT, met,
  });
  return { met, costPercent };
}
