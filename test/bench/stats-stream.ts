// The stats-stream cost bench (`npm run bench -- stats-stream`): what a 10 Hz vm-stats
// subscriber costs a guest that floods exits. One VM runs a guest that writes port 0x80 (the
// POST port, a cheap device) forever (test/guests/pio-loop-forever.asm). The bench switches the
// subscriber on and off in short windows within that one run (rotating order, so a drift in
// host load hits both states alike) and counts the guest's exits per window from the
// statistics registry. "Off" is the VM host's own 4 Hz sampling, which always runs; "on" is what
// a watcher at watchVmStatsEvery's fastest pace adds: 10 Hz sampling, the VM process's
// SampleForwarder sending every sample over child-process IPC (advanced serialization) to a
// subscriber process in the manager's place, which makes the API's vm-stats event text.
// "On" comes two ways: samples packed as the VM process sends them (stats-wire.ts), and, for
// comparison, as one object per counter (how it sent them before). Each round measures off and
// both on states in a rotating order; a state's cost is the median over rounds of
// 1 - rate(state) / rate(off in the same round). QEMU -accel kvm runs the batched PIO loop
// (test/guests/pio-loop.inc) as an option ROM before and after, as the reference.
import { fork, type ChildProcess } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { defaultConfig, type MachineConfig } from '../../main/vmm/config';
import type { MachineEnd } from '../../main/vmm/machine/machine';
import { VmHost } from '../../main/vmm/host/vm-host';
import { SampleForwarder } from '../../main/manager/sample-forwarder';
import { StatsPacker } from '../../main/manager/stats-wire';
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
  /** Rounds: each one window per state (off, packed, objects). */
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

type SubscriberState = 'off' | 'packed' | 'objects';
const STATES: SubscriberState[] = ['off', 'packed', 'objects'];

interface Window {
  state: SubscriberState;
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

/** One VM run with the subscriber switched between STATES, one window each per round. */
async function runPortholeWindows(d: StatsStreamDeps, log: (line: string) => void): Promise<{ windows: Window[]; subscriber: SubscriberReport }> {
  const config: MachineConfig = { ...defaultConfig(), name: 'bench', boot: { kind: 'flat', path: d.forever, address: 0x1000 } };
  const host = new VmHost(config);
  host.statsIntervalMs = STATS_DEFAULT_PERIOD_MS;
  const child = fork(path.join(__dirname, 'stats-subscriber.js'), [], { serialization: 'advanced', stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const packer = new StatsPacker();
  let packed = true;
  const forwarder = new SampleForwarder((sample) => {
    if (packed) child.send({ type: 'stats-packed', sample: packer.pack(sample) });
    else child.send({ type: 'stats', sample });
  });
  host.on('stats', (sample) => forwarder.offer(sample, performance.now()));
  let ended: MachineEnd | null = null;
  host.once('ended', (end) => { ended = end; });
  const windows: Window[] = [];
  const setState = (state: SubscriberState) => {
    packed = state === 'packed';
    forwarder.setStreaming(state !== 'off');
    host.setStatsInterval(state !== 'off' ? STATS_MIN_INTERVAL_MS : STATS_DEFAULT_PERIOD_MS);
  };
  try {
    await host.start();
    // Warm up: the guest's first exits fault pages in; V8 compiles the exit path.
    await sleep(2000);
    for (let round = 0; round < d.pairs; round++) {
      // Rotate the order, so a drift in host load within a round hits every state alike.
      for (let k = 0; k < STATES.length; k++) {
        const state = STATES[(round + k) % STATES.length];
        setState(state);
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
        windows.push({ state, exits: exits1 - exits0, ms, hostBusyMsPerSecond: (elu.active * 1000) / ms });
      }
      if ((round + 1) % 10 === 0) log(`  ${round + 1} of ${d.pairs} rounds`);
    }
    setState('off');
    const subscriber = await askSubscriber(child);
    return { windows, subscriber };
  } finally {
    await host.stop();
    child.send({ type: 'quit' });
    child.kill();
  }
}

export async function runStatsStreamBench(d: StatsStreamDeps, log: (line: string) => void = (l) => console.log(l)): Promise<StatsStreamResult> {
  log(`\nstats-stream bench: one VM flooding port 0x80, a ${1000 / STATS_MIN_INTERVAL_MS} Hz subscriber off, on (packed) and on`
    + ` (samples as objects) in ${d.pairs} rounds of ${d.windowMs} ms windows; QEMU -accel kvm on the same port loop (${d.qemuExits} exits) before and after`);
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
  const costs: Record<SubscriberState, number[]> = { off: [], packed: [], objects: [] };
  for (let i = 0; i + STATES.length <= windows.length; i += STATES.length) {
    const round = windows.slice(i, i + STATES.length);
    const off = round.find((w) => w.state === 'off') as Window;
    for (const w of round) if (w.state !== 'off') costs[w.state].push((1 - rate(w) / rate(off)) * 100);
  }
  const rates = (state: SubscriberState) => windows.filter((w) => w.state === state).map(rate);
  const busy = (state: SubscriberState) => quantile(windows.filter((w) => w.state === state).map((w) => w.hostBusyMsPerSecond), 0.5);
  const costPercent = quantile(costs.packed, 0.5);
  const [ciLow, ciHigh] = medianInterval(costs.packed);
  const met = costPercent < STATS_STREAM_TARGET_PERCENT;
  const fmt = (v: number) => v.toFixed(0).padStart(9);
  const label: Record<SubscriberState, string> = { off: 'no subscriber:          ', packed: '10 Hz subscriber:       ', objects: '10 Hz, samples as objects:' };
  for (const state of STATES) {
    const r = rates(state);
    log(`  Porthole, ${label[state]}${fmt(quantile(r, 0.5))} exits/s  (median window; quartiles ${quantile(r, 0.25).toFixed(0)}..${quantile(r, 0.75).toFixed(0)}; VM host thread busy ${busy(state).toFixed(1)} ms/s)`);
  }
  let qemu: number | null = null;
  if (qemuRates.length > 0) {
    qemu = quantile(qemuRates, 0.5);
    log(`  QEMU -accel kvm:           ${fmt(qemu)} exits/s  (runs: ${qemuRates.map((r) => r.toFixed(0)).join(', ')}; guest TSC ${(tscKhz / 1000).toFixed(1)} MHz)`);
    log(`  Porthole / QEMU exit rate: no subscriber ${(quantile(rates('off'), 0.5) / qemu).toFixed(3)}x, with it ${(quantile(rates('packed'), 0.5) / qemu).toFixed(3)}x`);
  }
  for (const state of ['objects', 'packed'] as const) {
    const [lo, hi] = medianInterval(costs[state]);
    log(`  subscriber cost${state === 'objects' ? ' (samples as objects, before)' : ''}: median of ${costs[state].length} paired ratios ${quantile(costs[state], 0.5).toFixed(2)}% of the exit rate`
      + ` (95% interval of the median ${lo.toFixed(2)}..${hi.toFixed(2)}%, quartiles ${quantile(costs[state], 0.25).toFixed(2)}..${quantile(costs[state], 0.75).toFixed(2)}%)`);
  }
  log(`  target < ${STATS_STREAM_TARGET_PERCENT}% (packed, as shipped): ${met ? 'met' : 'MISSED'}; subscriber got ${subscriber.events} events,`
    + ` ${(subscriber.bytes / Math.max(1, subscriber.events)).toFixed(0)} bytes of vm-stats JSON each`);
  writeBenchResult('stats-stream.json', {
    rounds: d.pairs, windowMs: d.windowMs, tscKhz, loadAverage: os.loadavg()[0], subscriberIntervalMs: STATS_MIN_INTERVAL_MS,
    windows, pairCostPercent: costs, costPercent, medianInterval: [ciLow, ciHigh],
    exitsPerSecond: { none: quantile(rates('off'), 0.5), packed: quantile(rates('packed'), 0.5), objects: quantile(rates('objects'), 0.5), qemu }, qemuRuns: qemuRates,
    hostBusyMsPerSecond: { none: busy('off'), packed: busy('packed'), objects: busy('objects') }, subscriber, target: STATS_STREAM_TARGET_PERCENT, met,
  });
  return { met, costPercent };
}
