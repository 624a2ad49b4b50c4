// The stats fan-out: who watches which VM's `vm-stats` events, and the VM processes'
// samples handed to them. A VM process only sends samples while its VM has a watcher:
// `onDemand(id, periodMs)` tells the manager when the first watcher comes, the last goes
// (null), or the fastest watcher's sampling period changes. A watcher may ask for one
// event per interval (watchVmStatsEvery): its rates then cover that whole interval.
// Also turns a sample into the getVmStats answer, so both read the same registry.
import type { VmStats, VmStatsEvent } from '../api/contract';
import type { StatsSample } from '../vmm/shared/stats';
import { STATS_DEFAULT_PERIOD_MS, statsPeriodOf } from './vm-process-protocol';

type Watcher = (event: VmStatsEvent) => void;

/** One watcher: every sample (no interval), or one per `intervalMs` summed over the samples between. */
interface WatcherEntry {
  deliver: Watcher;
  intervalMs: number | null;
  /** The last sample this watcher got: its time and counter totals, by group\0name. */
  lastAtMs: number | null;
  lastTotals: Map<string, number>;
}

export class StatsFanout {
  private readonly watchers = new Map<string, Set<WatcherEntry>>();

  constructor(
    /** The sampling period VM `id` should stream at now (the fastest watcher's), or null when nobody watches. */
    private readonly onDemand: (id: string, periodMs: number | null) => void,
    private readonly diag: (line: string) => void,
  ) {}

  /** Whether anybody watches VM `id` (a new run of it turns its stream on). */
  wanted(id: string): boolean {
    return (this.watchers.get(id)?.size ?? 0) > 0;
  }

  /**
   * The VM host's sampling period for VM `id`'s watchers: the default unless one asks for a
   * shorter interval; null when nobody watches.
   */
  periodMs(id: string): number | null {
    const set = this.watchers.get(id);
    if (!set || set.size === 0) return null;
    let period = STATS_DEFAULT_PERIOD_MS;
    for (const w of set) if (w.intervalMs !== null) period = Math.min(period, w.intervalMs);
    return statsPeriodOf(period);
  }

  /**
   * `intervalMs` (STATS_MIN_INTERVAL_MS up): one event per interval, whose perSecond values
   * cover the whole interval; without it, every sample the VM process sends.
   */
  watch(id: string, watcher: Watcher, intervalMs: number | null = null): () => void {
    let set = this.watchers.get(id);
    if (!set) {
      set = new Set();
      this.watchers.set(id, set);
    }
    const own = set;
    const before = this.periodMs(id);
    // An entry per call, so the same function watching twice is two watchers.
    const entry: WatcherEntry = { deliver: watcher, intervalMs, lastAtMs: null, lastTotals: new Map() };
    own.add(entry);
    const after = this.periodMs(id);
    if (after !== before) this.onDemand(id, after);
    return () => {
      if (this.watchers.get(id) !== own) return;
      const was = this.periodMs(id);
      if (!own.delete(entry)) return;
      if (own.size === 0) this.watchers.delete(id);
      const now = this.periodMs(id);
      if (now !== was) this.onDemand(id, now);
    };
  }

  /** A sample from VM `id`'s process: to each of its watchers. */
  publish(id: string, sample: StatsSample): void {
    const set = this.watchers.get(id);
    if (!set) return;
    const every: VmStatsEvent = { type: 'vm-stats', id, sample };
    // Half the sampling period of slack, so a 1 s watcher on 250 ms samples gets every fourth.
    const slackMs = (this.periodMs(id) ?? STATS_DEFAULT_PERIOD_MS) / 2;
    for (const w of [...set]) {
      let event: VmStatsEvent | null = every;
      if (w.intervalMs !== null) {
        event = null;
        if (w.lastAtMs === null || sample.atMs < w.lastAtMs) {
          event = every; // the first sample, or a clock step back
        } else if (sample.atMs - w.lastAtMs >= w.intervalMs - slackMs) {
          event = { type: 'vm-stats', id, sample: sampleSince(sample, w.lastAtMs, w.lastTotals) };
        }
        if (event) {
          w.lastAtMs = sample.atMs;
          w.lastTotals = totalsOf(sample);
        }
      }
      if (!event) continue;
      try {
        w.deliver(event);
      } catch (e) {
        this.diag(`vm-stats watcher failed: ${(e as Error).message}`);
      }
    }
  }

  /** VM `id` was deleted: its watchers get nothing more. */
  forget(id: string): void {
    if (this.watchers.delete(id)) this.onDemand(id, null);
  }
}

function totalsOf(sample: StatsSample): Map<string, number> {
  const totals = new Map<string, number>();
  for (const c of sample.counters) totals.set(`${c.group}\u0000${c.name}`, c.total);
  return totals;
}

/**
 * `sample` with its rates taken over the time since `lastAtMs`, when the counters had
 * `lastTotals`. A counter that is new, or went back (a new run of the VM), keeps the
 * sample's own rate.
 */
export function sampleSince(sample: StatsSample, lastAtMs: number, lastTotals: Map<string, number>): StatsSample {
  const intervalMs = sample.atMs - lastAtMs;
  if (intervalMs <= 0) return sample;
  return {
    atMs: sample.atMs,
    intervalMs,
    counters: sample.counters.map((c) => {
      const before = lastTotals.get(`${c.group}\u0000${c.name}`);
      if (before === undefined || before > c.total) return { ...c };
      return { ...c, perSecond: ((c.total - before) * 1000) / intervalMs };
    }),
  };
}

/** Bus-access counter names of a device group (see main/vmm/shared/stats.ts). */
const READS = new Set(['pio-reads', 'mmio-reads']);
const WRITES = new Set(['pio-writes', 'mmio-writes']);

/**
 * The getVmStats answer from a registry sample: group "exits" becomes `exits`, and each
 * group with bus-access counters a device with PIO and MMIO reads and writes added up.
 * Zero counts are left out, as the machine's own answer does.
 */
export function vmStatsOfSample(sample: StatsSample): VmStats {
  const exits: Record<string, number> = {};
  const devices = new Map<string, { name: string; reads: number; writes: number }>();
  for (const c of sample.counters) {
    if (c.group === 'exits') {
      if (c.total > 0) exits[c.name] = c.total;
      continue;
    }
    const isRead = READS.has(c.name);
    if (!isRead && !WRITES.has(c.name)) continue;
    let d = devices.get(c.group);
    if (!d) {
      d = { name: c.group, reads: 0, writes: 0 };
      devices.set(c.group, d);
    }
    if (isRead) d.reads += c.total;
    else d.writes += c.total;
  }
  return { exits, devices: [...devices.values()].filter((d) => d.reads + d.writes > 0) };
}
