// `porthole run --stats`: the end-of-run table and the live line. Both read the VM's
// statistics registry through the VM host's 'stats' samples; where the registry has no
// counters of a kind yet, the machine's own tallies (MachineStats) fill in.
import type { MachineStats } from '../vmm/machine/machine';
import type { VmState } from '../vmm/host/vm-host';
import type { CounterReading, StatsSample } from '../vmm/shared/stats';

const ACCESS_NAMES = new Set(['pio-reads', 'pio-writes', 'mmio-reads', 'mmio-writes']);

/**
 * The --stats table: exits by reason, then by device, then the registry's other counters.
 * The headings and columns stay as they were (test/bench/boot.ts reads them).
 */
export function formatStats(s: MachineStats, sample: StatsSample | null = null): string {
  const registry = sample?.counters ?? [];
  const registryExits = registry.filter((c) => c.group === 'exits');
  const registryAccesses = registry.filter((c) => ACCESS_NAMES.has(c.name));

  const exits: [string, number][] = registryExits.length > 0
    ? registryExits.filter((c) => c.total > 0).map((c) => [c.name, c.total])
    : Object.entries(s.exits);
  const lines = ['VM exits by reason:'];
  const reasons = [...exits].sort((a, b) => b[1] - a[1]);
  const total = reasons.reduce((n, [, c]) => n + c, 0);
  for (const [reason, count] of reasons) lines.push(`  ${reason.padEnd(16)} ${String(count).padStart(12)}`);
  lines.push(`  ${'total'.padEnd(16)} ${String(total).padStart(12)}`);

  lines.push('Accesses by device:');
  lines.push(`  ${'device'.padEnd(16)} ${'reads'.padStart(12)} ${'writes'.padStart(12)}`);
  const devices = registryAccesses.length > 0 ? accessesByDevice(registryAccesses) : s.devices;
  for (const d of [...devices].sort((a, b) => b.reads + b.writes - a.reads - a.writes)) {
    lines.push(`  ${d.name.padEnd(16)} ${String(d.reads).padStart(12)} ${String(d.writes).padStart(12)}`);
  }
  lines.push(`vCPU kicks: ${s.kicks}, AP exits handled: ${s.apExits}`);

  const others = registry.filter((c) => c.group !== 'exits' && !ACCESS_NAMES.has(c.name) && c.total > 0);
  if (others.length > 0) {
    lines.push('Other counters:');
    for (const c of others) lines.push(`  ${`${c.group}/${c.name}`.padEnd(28)} ${formatAmount(c.total, c.unit === 'bytes')}`);
  }
  return lines.join('\n') + '\n';
}

function accessesByDevice(counters: CounterReading[]): { name: string; reads: number; writes: number }[] {
  const byDevice = new Map<string, { name: string; reads: number; writes: number }>();
  for (const c of counters) {
    if (c.total === 0) continue;
    const d = byDevice.get(c.group) ?? { name: c.group, reads: 0, writes: 0 };
    if (c.name.endsWith('-reads')) d.reads += c.total;
    else d.writes += c.total;
    byDevice.set(c.group, d);
  }
  return [...byDevice.values()];
}

/** 1234 → "1234", 12345 → "12.3k", 1.5e6 → "1.5M"; bytes in B, KiB, MiB. */
export function formatAmount(n: number, bytes = false): string {
  if (bytes) {
    if (n < 1024) return `${Math.round(n)} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
    if (n < 1024 ** 3) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
    return `${(n / 1024 ** 3).toFixed(1)} GiB`;
  }
  if (n < 10000) return String(Math.round(n));
  if (n < 1e6) return `${(n / 1000).toFixed(1)}k`;
  if (n < 1e9) return `${(n / 1e6).toFixed(1)}M`;
  return `${(n / 1e9).toFixed(1)}G`;
}

/** Counters shown on one live line. */
const LIVE_TOP = 6;

/**
 * One compact line of the busiest counters per second, e.g.
 * `porthole: stats 12.0s exits 13.2k/s: io 11.0k/s, hlt 2.1k/s | COM1/tx-bytes 9.8 KiB/s`.
 */
export function formatLiveStats(sample: StatsSample, elapsedMs: number): string {
  const exits = sample.counters.filter((c) => c.group === 'exits' && c.perSecond > 0).sort((a, b) => b.perSecond - a.perSecond);
  const others = sample.counters.filter((c) => c.group !== 'exits' && c.perSecond > 0).sort((a, b) => b.perSecond - a.perSecond);
  const parts: string[] = [];
  if (exits.length > 0) {
    const total = exits.reduce((n, c) => n + c.perSecond, 0);
    const top = exits.slice(0, 3).map((c) => `${c.name} ${formatAmount(c.perSecond)}/s`).join(', ');
    parts.push(`exits ${formatAmount(total)}/s: ${top}`);
  }
  const room = LIVE_TOP - Math.min(exits.length, 3);
  for (const c of others.slice(0, Math.max(1, room))) {
    parts.push(`${c.group}/${c.name} ${formatAmount(c.perSecond, c.unit === 'bytes')}/s`);
  }
  const body = parts.length > 0 ? parts.join(' | ') : 'idle';
  return `porthole: stats ${(elapsedMs / 1000).toFixed(1)}s ${body}\n`;
}

/**
 * Turns successive MachineStats (the machine's own tallies, one kick each) into samples
 * shaped like the registry's, for the live line while the registry holds no counters yet.
 */
export class MachineStatsRates {
  private last: Map<string, number> | null = null;
  private lastAt = 0;

  sample(s: MachineStats, nowMs: number): StatsSample {
    const totals = new Map<string, number>();
    for (const [reason, n] of Object.entries(s.exits)) totals.set(`exits\u0000${reason}`, n);
    for (const d of s.devices) {
      totals.set(`${d.name}\u0000reads`, d.reads);
      totals.set(`${d.name}\u0000writes`, d.writes);
    }
    totals.set('vcpu\u0000kicks', s.kicks);
    const intervalMs = this.last === null ? 0 : nowMs - this.lastAt;
    const counters: CounterReading[] = [];
    for (const [key, total] of totals) {
      const [group, name] = key.split('\u0000');
      // A machine rebuilt after a reset starts its tallies at 0 again: count from there.
      const before = this.last?.get(key) ?? 0;
      const delta = total >= before ? total - before : total;
      counters.push({ group, name, unit: 'count', total, perSecond: intervalMs > 0 ? (delta * 1000) / intervalMs : 0 });
    }
    this.last = totals;
    this.lastAt = nowMs;
    return { atMs: nowMs, intervalMs, counters };
  }
}

/** What the live line needs of a VmHost. */
export interface LiveStatsSource {
  readonly state: VmState;
  on(event: 'stats', listener: (sample: StatsSample) => void): unknown;
  stats(): Promise<MachineStats>;
}

/**
 * Writes a line of the busiest counters for each of the VM host's samples while the VM
 * runs. The statistics registry is read when it has counters; until then the machine's
 * tallies are asked for at each sample (one kick of vCPU 0 per line).
 */
export function printLiveStats(host: LiveStatsSource, write: (line: string) => void, startedAt = Date.now()): void {
  const rates = new MachineStatsRates();
  host.on('stats', (sample) => {
    if (host.state !== 'running' || sample.intervalMs === 0) return;
    if (sample.counters.length > 0) {
      write(formatLiveStats(sample, sample.atMs - startedAt));
      return;
    }
    void host.stats().then((machineStats) => {
      const now = Date.now();
      const fromMachine = rates.sample(machineStats, now);
      if (fromMachine.intervalMs > 0 && host.state === 'running') write(formatLiveStats(fromMachine, now - startedAt));
    });
  });
}
