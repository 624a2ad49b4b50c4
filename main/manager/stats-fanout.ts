// The stats fan-out: who watches which VM's `vm-stats` events, and the VM processes'
// samples handed to them. A VM process only sends samples while its VM has a watcher:
// `onDemand(id, wanted)` tells the manager when the first watcher comes or the last goes.
// Also turns a sample into the getVmStats answer, so both read the same registry.
import type { VmStats, VmStatsEvent } from '../api/contract';
import type { StatsSample } from '../vmm/shared/stats';

type Watcher = (event: VmStatsEvent) => void;

export class StatsFanout {
  private readonly watchers = new Map<string, Set<Watcher>>();

  constructor(
    private readonly onDemand: (id: string, wanted: boolean) => void,
    private readonly diag: (line: string) => void,
  ) {}

  /** Whether anybody watches VM `id` (a new run of it turns its stream on). */
  wanted(id: string): boolean {
    return (this.watchers.get(id)?.size ?? 0) > 0;
  }

  watch(id: string, watcher: Watcher): () => void {
    let set = this.watchers.get(id);
    if (!set) {
      set = new Set();
      this.watchers.set(id, set);
    }
    const own = set;
    // A wrapper, so the same function watching twice is two watchers.
    const entry: Watcher = (e) => watcher(e);
    own.add(entry);
    if (own.size === 1) this.onDemand(id, true);
    return () => {
      if (!own.delete(entry)) return;
      if (own.size === 0 && this.watchers.get(id) === own) {
        this.watchers.delete(id);
        this.onDemand(id, false);
      }
    };
  }

  /** A sample from VM `id`'s process: to each of its watchers. */
  publish(id: string, sample: StatsSample): void {
    const set = this.watchers.get(id);
    if (!set) return;
    const event: VmStatsEvent = { type: 'vm-stats', id, sample };
    for (const w of [...set]) {
      try {
        w(event);
      } catch (e) {
        this.diag(`vm-stats watcher failed: ${(e as Error).message}`);
      }
    }
  }

  /** VM `id` was deleted: its watchers get nothing more. */
  forget(id: string): void {
    if (this.watchers.delete(id)) this.onDemand(id, false);
  }
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
