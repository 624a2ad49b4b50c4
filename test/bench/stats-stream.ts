// The stats-stream cost bench (`npm run bench -- stats-stream`): what a 10 Hz vm-stats
// watcher costs a guest that floods exits. The PIO loop (test/guests/pio-loop.inc: `out 0x80,
// al` in timed batches) runs in a VM host with no watcher (the VM host's own 4 Hz sampling,
// which always runs) and with one watcher at 100 ms (watchVmStatsEvery's fastest pace: the VM
// host samples at 10 Hz and every sample is serialized as the VM process sends it to the
// manager), alternating; QEMU -accel kvm runs the same loop as an option ROM, as the reference.
// The guest times itself with rdtsc, so the exit rate is the guest's own view of the run.
import os from 'node:os';
import { defaultConfig, type MachineConfig } from '../../main/vmm/config';
import type { MachineEnd } from '../../main/vmm/machine/machine';
import { VmHost } from '../../main/vmm/host/vm-host';
import type { StatsSample } from '../../main/vmm/shared/stats';
import { writeBenchResult } from './paths';

/** The target: a watcher costs under 2% of the guest's exit rate. */
export const STATS_STREAM_TARGET_PERCENT = 2;
/** watchVmStatsEvery's fastest pace (10 Hz). */
const WATCHER_INTERVAL_MS = 100;

export interface LoopReport {
  exits: number;
  cycles: number;
}

export interface StatsStreamDeps {
  /** The assembled PIO loop: flat guest for Porthole, option ROM for QEMU. */
  flat: string;
  rom: string;
  runs: number;
  /** Exits expected per run (batches x batch). */
  exits: number;
  tscKhz: () => number;
  parseLoop: (text: string, who: string) => LoopReport;
  /** QEMU's debug console output of the ROM, or null when QEMU is not installed. */
  runQemuText: ((rom: string) => string) | null;
}

export interface StatsStreamResult {
  met: boolean;
  costPercent: number;
}

/** Runs the flat guest in a VM host; with `watch`, a 10 Hz watcher takes every sample. */
async function runPorthole(guest: string, watch: boolean): Promise<{ text: string; samples: number; hostBusyMsPerSecond: number; serializeUs: number }> {
  const config: MachineConfig = { ...defaultConfig(), name: 'bench', boot: { kind: 'flat', path: guest, address: 0x1000 }, debugExit: true };
  const host = new VmHost(config);
  let output = '';
  let samples = 0;
  let bytes = 0;
  let serializeMs = 0;
  host.on('output', (ring, data) => {
    if (ring === 4) output += Buffer.from(data).toString('latin1');
  });
  if (watch) {
    host.statsIntervalMs = WATCHER_INTERVAL_MS;
    host.on('stats', (sample: StatsSample) => {
      // What the VM process does with each sample for a watcher: one IPC message.
      const t0 = performance.now();
      bytes += JSON.stringify({ type: 'stats', sample }).length;
      serializeMs += performance.now() - t0;
      samples++;
    });
  }
  const ended = new Promise<MachineEnd>((resolve) => host.once('ended', (end) => resolve(end)));
  // The VM host thread's busy time (event loop utilization): where sampling and serializing
  // run. On a host whose CPUs are all taken, that time is what the watcher can take from the guest.
  const elu = performance.eventLoopUtilization();
  const started = performance.now();
  await host.start();
  const end = await ended;
  const busy = performance.eventLoopUtilization(elu);
  const hostBusyMsPerSecond = (busy.active * 1000) / (performance.now() - started);
  if (end.reason !== 'poweroff') throw new Error(`Porthole: the VM ended with ${JSON.stringify(end)}`);
  if (watch && bytes === 0) throw new Error('Porthole: the watcher got no samples');
  return { text: output, samples, hostBusyMsPerSecond, serializeUs: samples ? (serializeMs * 1000) / samples : 0 };
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** Exits per second from a run's mean cycles per exit. */
function exitsPerSecond(cyclesPerExit: number, tscKhz: number): number {
  return (tscKhz * 1000) / cyclesPerExit;
}

export async function runStatsStreamBench(d: StatsStreamDeps): Promise<StatsStreamResult> {
  const columns = ['none', 'watcher', ...(d.runQemuText ? ['qemu'] : [])] as const;
  const perExit: Record<string, number[]> = { none: [], watcher: [], qemu: [] };
  const samples: number[] = [];
  const hostBusy: Record<string, number[]> = { none: [], watcher: [] };
  const serializeUs: number[] = [];
  console.log(`\nstats-stream bench: the PIO loop (${d.exits} exits per run), no watcher against a ${1000 / WATCHER_INTERVAL_MS} Hz`
    + ` watcher, ${d.runs} runs alternating, QEMU -accel kvm as the reference`);
  console.log(`host load average: ${os.loadavg()[0].toFixed(1)} on ${os.cpus().length} CPUs`);
  if (!d.runQemuText) console.log('QEMU is not installed: its column is skipped.');
  for (let run = 1; run <= d.runs; run++) {
    const cells: string[] = [];
    // Alternate which Porthole case goes first, so a drift in host load hits both alike.
    const order = run % 2 === 1 ? ['none', 'watcher'] : ['watcher', 'none'];
    for (const column of [...order, ...(d.runQemuText ? ['qemu'] : [])]) {
      let text: string;
      if (column === 'qemu') text = (d.runQemuText as (rom: string) => string)(d.rom);
      else {
        const r = await runPorthole(d.flat, column === 'watcher');
        text = r.text;
        hostBusy[column].push(r.hostBusyMsPerSecond);
        if (column === 'watcher') {
          samples.push(r.samples);
          serializeUs.push(r.serializeUs);
        }
      }
      const loop = d.parseLoop(text, column === 'qemu' ? 'QEMU' : 'Porthole');
      if (loop.exits !== d.exits) throw new Error(`${column}: the guest ran ${loop.exits} exits, expected ${d.exits}`);
      perExit[column].push(loop.cycles / loop.exits);
      cells.push(`${column} ${(loop.cycles / loop.exits).toFixed(0)}`);
    }
    console.log(`  run ${run}: mean cycles/exit  ${cells.join('  ')}`);
  }
  const tscKhz = d.tscKhz();
  const rate = (column: string) => exitsPerSecond(median(perExit[column]), tscKhz);
  const none = rate('none');
  const watcher = rate('watcher');
  // The cost: how much of the exit rate the watcher takes (positive = slower with it).
  const costPercent = (1 - watcher / none) * 100;
  const perRunCost = perExit.none.map((n, i) => (1 - n / perExit.watcher[i]) * 100);
  const met = costPercent < STATS_STREAM_TARGET_PERCENT;
  console.log(`guest TSC ${(tscKhz / 1000).toFixed(1)} MHz; exits/s from the median over runs of each run's mean cycles per exit`);
  console.log(`  Porthole, no watcher:      ${none.toFixed(0).padStart(9)} exits/s`);
  console.log(`  Porthole, 10 Hz watcher:   ${watcher.toFixed(0).padStart(9)} exits/s   (${median(samples).toFixed(0)} samples per run)`);
  let qemu: number | null = null;
  if (d.runQemuText) {
    qemu = rate('qemu');
    console.log(`  QEMU -accel kvm:           ${qemu.toFixed(0).padStart(9)} exits/s`);
    console.log(`  Porthole / QEMU exit rate: no watcher ${(none / qemu).toFixed(3)}x, with the watcher ${(watcher / qemu).toFixed(3)}x`);
  }
  console.log(`  watcher cost: ${costPercent.toFixed(2)}% of the exit rate (per run: ${perRunCost.map((c) => c.toFixed(1)).join(', ')}%),`
    + ` target < ${STATS_STREAM_TARGET_PERCENT}%: ${met ? 'met' : 'MISSED'}`);
  const busyNone = median(hostBusy.none);
  const busyWatcher = median(hostBusy.watcher);
  console.log(`  VM host thread busy: ${busyNone.toFixed(1)} ms/s without, ${busyWatcher.toFixed(1)} ms/s with the watcher`
    + ` (+${(busyWatcher - busyNone).toFixed(1)} ms/s, ${((busyWatcher - busyNone) / 10).toFixed(2)}% of one CPU); serializing a sample ${median(serializeUs).toFixed(0)} µs`);
  writeBenchResult('stats-stream.json', {
    exits: d.exits, runs: d.runs, tscKhz, loadAverage: os.loadavg()[0], watcherIntervalMs: WATCHER_INTERVAL_MS,
    cyclesPerExit: perExit, exitsPerSecond: { none, watcher, qemu }, costPercent, perRunCostPercent: perRunCost,
    samplesPerRun: samples, hostBusyMsPerSecond: hostBusy, serializeUsPerSample: serializeUs, target: STATS_STREAM_TARGET_PERCENT, met,
    columns,
  });
  return { met, costPercent };
}
