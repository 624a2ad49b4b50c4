// The Performance tab's data: a ring buffer of vm-stats samples (the last 10 minutes at
// any resolution), the charts and series picked from the counters a VM reports, and the
// CSV and JSON exports. Pure: type-only imports, so unit tests load this file on its own
// (test/helpers/renderer-module.ts).
import type { VmStatsCounter, VmStatsSample } from '../../main/api/contract';

/** How much history the tab keeps. */
export const HISTORY_MS = 10 * 60 * 1000;

/** The resolutions offered: 1 s by default, up to 10 Hz. */
export const RESOLUTIONS: readonly { intervalMs: number; label: string }[] = [
  { intervalMs: 1000, label: '1 s' },
  { intervalMs: 500, label: '2 Hz' },
  { intervalMs: 250, label: '4 Hz' },
  { intervalMs: 100, label: '10 Hz' },
];
export const DEFAULT_INTERVAL_MS = 1000;

export interface CounterInfo {
  group: string;
  name: string;
  unit: VmStatsCounter['unit'];
}

export function counterKey(group: string, name: string): string {
  return `${group}/${name}`;
}

interface Column {
  info: CounterInfo;
  /** Per-second rates by ring slot; NaN where the counter had no reading. */
  values: Float64Array;
}

/** One point per sample, for as many samples as `HISTORY_MS` holds at `intervalMs`; the oldest go first. */
export class StatsHistory {
  readonly capacity: number;
  private readonly times: Float64Array;
  private readonly columns = new Map<string, Column>();
  private start = 0;
  private count = 0;

  constructor(readonly intervalMs: number, historyMs = HISTORY_MS) {
    this.capacity = Math.max(2, Math.ceil(historyMs / intervalMs));
    this.times = new Float64Array(this.capacity);
  }

  get length(): number {
    return this.count;
  }

  /** The counters seen so far, in the order they first appeared. */
  get counters(): CounterInfo[] {
    return [...this.columns.values()].map((c) => c.info);
  }

  /** Adds a sample. One without an interval (a VM's first) carries no rates and is left out. */
  push(sample: VmStatsSample): void {
    if (!(sample.intervalMs > 0)) return;
    let slot: number;
    if (this.count < this.capacity) {
      slot = (this.start + this.count) % this.capacity;
      this.count++;
    } else {
      slot = this.start;
      this.start = (this.start + 1) % this.capacity;
    }
    this.times[slot] = sample.atMs;
    for (const c of this.columns.values()) c.values[slot] = NaN;
    for (const reading of sample.counters) {
      const key = counterKey(reading.group, reading.name);
      let column = this.columns.get(key);
      if (!column) {
        column = { info: { group: reading.group, name: reading.name, unit: reading.unit }, values: new Float64Array(this.capacity).fill(NaN) };
        this.columns.set(key, column);
      }
      column.values[slot] = reading.perSecond;
    }
  }

  /** Sample times (wall-clock ms), oldest first. */
  timesMs(): number[] {
    const out = new Array<number>(this.count);
    for (let i = 0; i < this.count; i++) out[i] = this.times[(this.start + i) % this.capacity];
    return out;
  }

  /** The ring slot of each sample, oldest first (for readers that walk columns in place). */
  slots(): Int32Array {
    const out = new Int32Array(this.count);
    for (let i = 0; i < this.count; i++) out[i] = (this.start + i) % this.capacity;
    return out;
  }

  timeAtSlot(slot: number): number {
    return this.times[slot];
  }

  /** The rate columns of the counters among `keys` that were ever seen, by ring slot (NaN: no reading). Read only. */
  columnsOf(keys: readonly string[]): Float64Array[] {
    const out: Float64Array[] = [];
    for (const key of keys) {
      const column = this.columns.get(key);
      if (column) out.push(column.values);
    }
    return out;
  }

  /** Counter `key`'s newest rate, or null when the newest sample had no reading of it. */
  latest(key: string): number | null {
    const column = this.columns.get(key);
    if (!column || this.count === 0) return null;
    const v = column.values[(this.start + this.count - 1) % this.capacity];
    return Number.isNaN(v) ? null : v;
  }

  /** Counter `key`'s rates, oldest first; null where it had no reading (or for a counter never seen). */
  rates(key: string): (number | null)[] {
    const column = this.columns.get(key);
    const out = new Array<number | null>(this.count);
    for (let i = 0; i < this.count; i++) {
      const v = column ? column.values[(this.start + i) % this.capacity] : NaN;
      out[i] = Number.isNaN(v) ? null : v;
    }
    return out;
  }
}

/** One line on a chart: the sum of some counters' rates (divided by the sum of `per`'s, when given). */
export interface SeriesSpec {
  label: string;
  keys: string[];
  /** A mean: e.g. latency-us per second over transfers per second is microseconds per transfer. */
  per?: string[];
}

/** What a chart's values are: per second rates of counts or bytes, or a mean in microseconds. */
export type ChartUnit = 'count' | 'bytes' | 'microseconds';

export interface ChartSpec {
  /** exits, accesses, interrupts, bytes, operations; a USB device's: usb:<group>:bytes|transfers|latency. */
  id: 'exits' | 'accesses' | 'interrupts' | 'bytes' | 'operations' | `usb:${string}`;
  title: string;
  unit: ChartUnit;
  series: SeriesSpec[];
}

/** A USB device's endpoint counter (main/vmm/shared/stats.ts): usb<port>-<kind> / ep<n>[-in|-out]-<what>. */
const USB_GROUP = /^usb\d+-/;
const USB_ENDPOINT_COUNTER = /^(ep\d+(?:-in|-out)?)-(bytes|transfers|latency-us)$/;

/** "ep0" < "ep1-in" < "ep1-out" < "ep2-in" ... (numerically). */
function byEndpoint(a: SeriesSpec, b: SeriesSpec): number {
  const na = Number(/^ep(\d+)/.exec(a.label)?.[1] ?? 0);
  const nb = Number(/^ep(\d+)/.exec(b.label)?.[1] ?? 0);
  return na - nb || a.label.localeCompare(b.label);
}

const ACCESS_NAMES = new Set(['pio-reads', 'pio-writes', 'mmio-reads', 'mmio-writes']);

/**
 * The charts for the counters a VM reports (naming convention of main/vmm/shared/stats.ts):
 * exits by reason; PIO/MMIO accesses per device (reads and writes added up); interrupts
 * (IRQ lines, MSIs, each device's MSI-X vectors added up); bytes per device or backend; and
 * every other counter (backend operations, device events) per second. Counters that never
 * moved (total 0) are left out until they do; a chart with no series is left out.
 */
export function pickCharts(counters: readonly (CounterInfo & { total?: number })[]): ChartSpec[] {
  const moved = counters.filter((c) => c.total === undefined || c.total > 0);
  const exits: SeriesSpec[] = [];
  const accesses = new Map<string, string[]>();
  const interrupts: SeriesSpec[] = [];
  const msix = new Map<string, string[]>();
  const bytes: SeriesSpec[] = [];
  const operations: SeriesSpec[] = [];
  const usb = new Map<string, { bytes: SeriesSpec[]; transfers: SeriesSpec[]; latency: SeriesSpec[] }>();
  for (const c of moved) {
    const key = counterKey(c.group, c.name);
    const endpoint = USB_GROUP.test(c.group) ? USB_ENDPOINT_COUNTER.exec(c.name) : null;
    if (endpoint !== null) {
      let device = usb.get(c.group);
      if (!device) usb.set(c.group, device = { bytes: [], transfers: [], latency: [] });
      const [, ep, what] = endpoint;
      if (what === 'bytes') device.bytes.push({ label: ep, keys: [key] });
      else if (what === 'transfers') device.transfers.push({ label: ep, keys: [key] });
      else device.latency.push({ label: ep, keys: [key], per: [counterKey(c.group, `${ep}-transfers`)] });
    } else if (c.group === 'exits') exits.push({ label: c.name, keys: [key] });
    else if (ACCESS_NAMES.has(c.name)) accesses.set(c.group, [...(accesses.get(c.group) ?? []), key]);
    else if (c.group === 'irq') interrupts.push({ label: c.name === 'msi' ? 'MSI' : c.name.replace(/^gsi-/, 'GSI '), keys: [key] });
    else if (c.name.startsWith('msix-')) msix.set(c.group, [...(msix.get(c.group) ?? []), key]);
    else if (c.unit === 'bytes') bytes.push({ label: `${c.group} ${c.name}`, keys: [key] });
    else operations.push({ label: `${c.group} ${c.name}`, keys: [key] });
  }
  for (const [device, keys] of msix) interrupts.push({ label: `${device} MSI-X`, keys });
  const byLabel = (a: SeriesSpec, b: SeriesSpec) => a.label.localeCompare(b.label);
  const charts: ChartSpec[] = [
    { id: 'exits', title: 'VM exits/s by reason', unit: 'count', series: exits.sort(byLabel) },
    {
      id: 'accesses', title: 'PIO/MMIO accesses/s by device', unit: 'count',
      series: [...accesses].map(([device, keys]) => ({ label: device, keys })).sort(byLabel),
    },
    { id: 'interrupts', title: 'Interrupts/s', unit: 'count', series: interrupts.sort(byLabel) },
    { id: 'bytes', title: 'Bytes/s by device and backend', unit: 'bytes', series: bytes.sort(byLabel) },
    { id: 'operations', title: 'Operations and events/s', unit: 'count', series: operations.sort(byLabel) },
  ];
  // A section per USB device: its endpoints' bytes/s, transfers/s and mean completion latency.
  for (const [group, device] of [...usb].sort((a, b) => a[0].localeCompare(b[0], undefined, { numeric: true }))) {
    charts.push(
      { id: `usb:${group}:bytes`, title: `USB ${group}: bytes/s by endpoint`, unit: 'bytes', series: device.bytes.sort(byEndpoint) },
      { id: `usb:${group}:transfers`, title: `USB ${group}: transfers/s by endpoint`, unit: 'count', series: device.transfers.sort(byEndpoint) },
      { id: `usb:${group}:latency`, title: `USB ${group}: mean transfer latency by endpoint`, unit: 'microseconds', series: device.latency.sort(byEndpoint) },
    );
  }
  return charts.filter((c) => c.series.length > 0);
}

function sumRates(history: StatsHistory, keys: string[]): (number | null)[] {
  if (keys.length === 1) return history.rates(keys[0]);
  const parts = keys.map((k) => history.rates(k));
  const out = new Array<number | null>(history.length);
  for (let i = 0; i < history.length; i++) {
    let sum: number | null = null;
    for (const p of parts) {
      const v = p[i];
      if (v !== null) sum = (sum ?? 0) + v;
    }
    out[i] = sum;
  }
  return out;
}

/** A mean where the divisor moved; null where nothing was counted (no transfer, no latency). */
function ratio(value: number | null, per: number | null): number | null {
  return value === null || per === null || !(per > 0) ? null : value / per;
}

/**
 * A chart's series, oldest first: the sum of each series' counters (null where none had a
 * reading), divided by the sum of its `per` counters for a mean.
 */
export function seriesRates(history: StatsHistory, series: SeriesSpec): (number | null)[] {
  const values = sumRates(history, series.keys);
  if (!series.per) return values;
  const per = sumRates(history, series.per);
  return values.map((v, i) => ratio(v, per[i]));
}

function latestSum(history: StatsHistory, keys: string[]): number | null {
  let sum: number | null = null;
  for (const key of keys) {
    const v = history.latest(key);
    if (v !== null) sum = (sum ?? 0) + v;
  }
  return sum;
}

/** A series' newest value: the sum of its counters' newest rates (null when none had one), or its mean. */
export function latestRate(history: StatsHistory, series: SeriesSpec): number | null {
  const sum = latestSum(history, series.keys);
  return series.per ? ratio(sum, latestSum(history, series.per)) : sum;
}

/** The sum of `columns` at a ring slot (NaN when none had a reading). */
function sumAt(columns: readonly Float64Array[], slot: number): number {
  let sum = NaN;
  for (const c of columns) {
    const v = c[slot];
    if (!Number.isNaN(v)) sum = Number.isNaN(sum) ? v : sum + v;
  }
  return sum;
}

/**
 * The data uPlot draws for a chart: times in seconds, then one array per series. With
 * `maxPoints`, a longer history is cut into that many buckets of consecutive samples, each
 * drawn as its mean at its last sample's time: a 10-minute history at 10 Hz is 6000 samples,
 * more than a chart has pixels, and drawing them all costs frames for nothing. Runs once per
 * chart per drawn frame, so it reads the ring buffer in place (no per-series copies).
 */
export function chartData(history: StatsHistory, chart: ChartSpec, maxPoints = Infinity): [number[], ...(number | null)[][]] {
  const n = history.length;
  const bucket = Math.max(1, Math.ceil(n / Math.max(1, maxPoints)));
  const points = Math.ceil(n / bucket);
  const slots = history.slots();
  const xs = new Array<number>(points);
  // Buckets end at the newest sample, so the newest point is always a real sample time.
  const endOf = (k: number) => n - (points - 1 - k) * bucket;
  for (let k = 0; k < points; k++) xs[k] = history.timeAtSlot(slots[endOf(k) - 1]) / 1000;
  const ys = chart.series.map((s) => {
    const columns = history.columnsOf(s.keys);
    const per = s.per ? history.columnsOf(s.per) : null;
    const out = new Array<number | null>(points);
    for (let k = 0; k < points; k++) {
      const end = endOf(k);
      let sum = 0;
      let count = 0;
      for (let i = Math.max(0, end - bucket); i < end; i++) {
        let v = sumAt(columns, slots[i]);
        if (per) {
          const d = sumAt(per, slots[i]);
          v = Number.isNaN(v) || !(d > 0) ? NaN : v / d;
        }
        if (!Number.isNaN(v)) { sum += v; count++; }
      }
      out[k] = count > 0 ? sum / count : null;
    }
    return out;
  });
  return [xs, ...ys];
}

/** A string that changes when a chart's series change (uPlot is rebuilt then). */
export function chartSignature(chart: ChartSpec): string {
  return `${chart.id}:${chart.series.map((s) => `${s.label}=${s.keys.join('+')}`).join('|')}`;
}

function csvField(text: string): string {
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

/**
 * The history as CSV: one row per sample, `time` (ISO 8601) and `time_ms`, then one column
 * per counter, "group/name (unit/s)", holding its per-second rate (empty without a reading).
 */
export function historyCsv(history: StatsHistory): string {
  const counters = history.counters;
  const columns = counters.map((c) => history.rates(counterKey(c.group, c.name)));
  const lines = [['time', 'time_ms', ...counters.map((c) => `${counterKey(c.group, c.name)} (${c.unit === 'bytes' ? 'bytes' : 'count'}/s)`)].map(csvField).join(',')];
  history.timesMs().forEach((t, i) => {
    const cells = [new Date(t).toISOString(), String(t), ...columns.map((col) => (col[i] === null ? '' : String(roundRate(col[i] as number))))];
    lines.push(cells.map(csvField).join(','));
  });
  return `${lines.join('\r\n')}\r\n`;
}

export interface HistoryJson {
  vm: { id: string; name: string };
  intervalMs: number;
  /** Sample times, wall-clock milliseconds. */
  timesMs: number[];
  /** Per-second rates per counter, one per sample (null without a reading). */
  counters: { group: string; name: string; unit: CounterInfo['unit']; perSecond: (number | null)[] }[];
}

export function historyJson(history: StatsHistory, vm: { id: string; name: string }): HistoryJson {
  return {
    vm: { id: vm.id, name: vm.name },
    intervalMs: history.intervalMs,
    timesMs: history.timesMs(),
    counters: history.counters.map((c) => ({
      ...c, perSecond: history.rates(counterKey(c.group, c.name)).map((v) => (v === null ? null : roundRate(v))),
    })),
  };
}

/** Rates to a thousandth: enough for counts per second, and files stay readable. */
function roundRate(v: number): number {
  return Math.round(v * 1000) / 1000;
}

/** A download name: the VM's name made file-safe, and the time. */
export function exportFileName(vmName: string, atMs: number, extension: 'csv' | 'json'): string {
  const safe = vmName.replace(/[^A-Za-z0-9._-]+/g, '-').replace(/^-+|-+$/g, '') || 'vm';
  const stamp = new Date(atMs).toISOString().replace(/\.\d+Z$/, 'Z').replace(/:/g, '-');
  return `${safe}-perf-${stamp}.${extension}`;
}

/** A chart's newest value in words: "13.1k/s", "4.5 MiB/s", or a mean latency, "1.3 ms". */
export function formatValue(value: number | null, unit: ChartUnit): string {
  const text = formatRate(value, unit);
  return unit === 'microseconds' || text === '–' ? text : `${text}/s`;
}

/** "12.3k", "4.5 MiB" style axis and legend numbers; microseconds as "850 µs", "1.3 ms", "2.1 s". */
export function formatRate(value: number | null, unit: ChartUnit): string {
  if (value === null || !Number.isFinite(value)) return '–';
  if (unit === 'microseconds') {
    if (Math.abs(value) < 1000) return `${value.toFixed(value < 10 ? 1 : 0)} µs`;
    if (Math.abs(value) < 1e6) return `${(value / 1000).toFixed(1)} ms`;
    return `${(value / 1e6).toFixed(1)} s`;
  }
  const base = unit === 'bytes' ? 1024 : 1000;
  const names = unit === 'bytes' ? ['B', 'KiB', 'MiB', 'GiB', 'TiB'] : ['', 'k', 'M', 'G', 'T'];
  let v = Math.abs(value);
  let i = 0;
  while (v >= base && i < names.length - 1) {
    v /= base;
    i++;
  }
  const digits = v >= 100 || i === 0 && unit === 'count' && Number.isInteger(v) ? 0 : 1;
  const text = `${value < 0 ? '-' : ''}${v.toFixed(digits)}`;
  return unit === 'bytes' ? `${text} ${names[i]}` : `${text}${names[i]}`;
}
