// The vm-stats stream between a VM process and the manager, packed: each sample's numbers go
// as two Float64Arrays (a copy when serialized) and the counters' names only when they changed,
// instead of one object per counter. A 10 Hz watcher made the VM process serialize ~120 objects
// a sample; the API's `vm-stats` event is rebuilt unchanged on the manager's side.
import type { CounterReading, CounterSpec, StatsSample } from '../vmm/shared/stats';

export interface PackedStatsSample {
  atMs: number;
  intervalMs: number;
  /** The counters, in order, when they differ from the previous packed sample's (else absent). */
  specs?: CounterSpec[];
  totals: Float64Array;
  perSecond: Float64Array;
}

/** The VM process's side: remembers the names it sent last. */
export class StatsPacker {
  private sent: CounterSpec[] | null = null;

  pack(sample: StatsSample): PackedStatsSample {
    const counters = sample.counters;
    const n = counters.length;
    const totals = new Float64Array(n);
    const perSecond = new Float64Array(n);
    let same = this.sent !== null && this.sent.length === n;
    for (let i = 0; i < n; i++) {
      const c = counters[i];
      totals[i] = c.total;
      perSecond[i] = c.perSecond;
      if (same) {
        const s = (this.sent as CounterSpec[])[i];
        same = s.group === c.group && s.name === c.name && s.unit === c.unit;
      }
    }
    const packed: PackedStatsSample = { atMs: sample.atMs, intervalMs: sample.intervalMs, totals, perSecond };
    if (!same) {
      this.sent = counters.map((c) => ({ group: c.group, name: c.name, unit: c.unit }));
      packed.specs = this.sent;
    }
    return packed;
  }

  /** The receiver starts afresh (a new link): the next sample carries the names again. */
  reset(): void {
    this.sent = null;
  }
}

/** The manager's side: null for a sample it cannot read (bad shape, or numbers without names). */
export class StatsUnpacker {
  private specs: CounterSpec[] | null = null;

  unpack(packed: unknown): StatsSample | null {
    if (typeof packed !== 'object' || packed === null) return null;
    const p = packed as Partial<PackedStatsSample>;
    if (typeof p.atMs !== 'number' || typeof p.intervalMs !== 'number' || !(p.totals instanceof Float64Array) || !(p.perSecond instanceof Float64Array)) return null;
    if (p.specs !== undefined) {
      if (!Array.isArray(p.specs) || !p.specs.every(isSpec)) return null;
      this.specs = p.specs.map((s) => ({ group: s.group, name: s.name, unit: s.unit }));
    }
    const specs = this.specs;
    if (specs === null || specs.length !== p.totals.length || specs.length !== p.perSecond.length) return null;
    const counters: CounterReading[] = new Array(specs.length);
    for (let i = 0; i < specs.length; i++) {
      const s = specs[i];
      counters[i] = { group: s.group, name: s.name, unit: s.unit, total: p.totals[i], perSecond: p.perSecond[i] };
    }
    return { atMs: p.atMs, intervalMs: p.intervalMs, counters };
  }
}

function isSpec(s: unknown): s is CounterSpec {
  if (typeof s !== 'object' || s === null) return false;
  const c = s as CounterSpec;
  return typeof c.group === 'string' && typeof c.name === 'string' && (c.unit === 'count' || c.unit === 'bytes');
}
