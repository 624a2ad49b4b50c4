// `porthole stats VM`: rates from two readings of a VM's counter totals, and the live table
// (exits by reason, device accesses, interrupts, disks, USB endpoints, the rest). Counter
// names follow main/vmm/shared/stats.ts.
import type { CounterReading, StatsSample } from '../vmm/shared/stats';
import { formatAmount } from './stats';

const ACCESS_NAMES = new Set(['pio-reads', 'pio-writes', 'mmio-reads', 'mmio-writes']);
const DISK_NAMES = new Set(['reads', 'writes', 'read-bytes', 'write-bytes', 'flushes', 'discards', 'errors']);
const USB_GROUP = /^usb\d+-/;
const USB_ENDPOINT_COUNTER = /^(ep\d+(?:-in|-out)?)-(bytes|transfers|latency-us)$/;

/**
 * `next` with per-second rates over the time since `previous` (both are readings of totals); a
 * counter `previous` did not have started from 0. Without `previous`, every rate is 0.
 */
export function ratesBetween(previous: StatsSample | null, next: StatsSample): StatsSample {
  const intervalMs = previous === null ? 0 : next.atMs - previous.atMs;
  const before = new Map<string, number>();
  for (const c of previous?.counters ?? []) before.set(`${c.group}\u0000${c.name}`, c.total);
  const counters = next.counters.map((c) => {
    const delta = Math.max(0, c.total - (before.get(`${c.group}\u0000${c.name}`) ?? 0));
    return { group: c.group, name: c.name, unit: c.unit, total: c.total, perSecond: intervalMs > 0 ? (delta * 1000) / intervalMs : 0 };
  });
  return { atMs: next.atMs, intervalMs, counters };
}

/** A rate in a table cell: "13.1k", "4.5 MiB"; 0 as "0". */
function rate(value: number, bytes = false): string {
  if (value === 0) return '0';
  if (!bytes && value < 10) return value.toFixed(1).replace(/\.0$/, '');
  return formatAmount(Math.round(value), bytes);
}

function microseconds(us: number | null): string {
  if (us === null) return '-';
  if (us < 1000) return `${us.toFixed(0)} µs`;
  if (us < 1e6) return `${(us / 1000).toFixed(1)} ms`;
  return `${(us / 1e6).toFixed(2)} s`;
}

function table(header: string[], rows: string[][], firstWidth = 22): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length), i === 0 ? firstWidth : 10));
  const line = (cells: string[]) => `  ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ')}`.trimEnd();
  return [line(header), ...rows.map(line)];
}

/**
 * The table for one interval. Only counters that ever moved appear; rates are per second over
 * the sample's interval.
 */
export function formatStatsTable(sample: StatsSample, title: string): string {
  const moved = sample.counters.filter((c) => c.total > 0);
  const used = new Set<CounterReading>();
  const lines = [`${title}   ${new Date(sample.atMs).toISOString().slice(11, 23)}   per second over ${(sample.intervalMs / 1000).toFixed(1)} s`];
  const take = (pick: (c: CounterReading) => boolean): CounterReading[] => {
    const out = moved.filter((c) => !used.has(c) && pick(c));
    for (const c of out) used.add(c);
    return out;
  };

  const exits = take((c) => c.group === 'exits').sort((a, b) => b.perSecond - a.perSecond || a.name.localeCompare(b.name));
  if (exits.length > 0) {
    const total = exits.reduce((n, c) => n + c.perSecond, 0);
    lines.push('Exits/s by reason');
    lines.push(...table(['reason', 'exits/s', 'total'], [
      ...exits.map((c) => [c.name, rate(c.perSecond), formatAmount(c.total)]),
      ['all', rate(total), formatAmount(exits.reduce((n, c) => n + c.total, 0))],
    ]));
  }

  const accesses = take((c) => ACCESS_NAMES.has(c.name));
  if (accesses.length > 0) {
    const byDevice = new Map<string, { reads: number; writes: number }>();
    for (const c of accesses) {
      const d = byDevice.get(c.group) ?? { reads: 0, writes: 0 };
      if (c.name.endsWith('-reads')) d.reads += c.perSecond;
      else d.writes += c.perSecond;
      byDevice.set(c.group, d);
    }
    lines.push('Device accesses/s (PIO and MMIO)');
    lines.push(...table(['device', 'reads/s', 'writes/s'], [...byDevice]
      .sort((a, b) => b[1].reads + b[1].writes - a[1].reads - a[1].writes || a[0].localeCompare(b[0]))
      .map(([device, d]) => [device, rate(d.reads), rate(d.writes)])));
  }

  const irqs = take((c) => c.group === 'irq' || c.name.startsWith('msix-'));
  if (irqs.length > 0) {
    const rows = new Map<string, number>();
    for (const c of irqs) {
      const label = c.group === 'irq' ? (c.name === 'msi' ? 'MSI' : c.name.replace(/^gsi-/, 'GSI ')) : `${c.group} MSI-X`;
      rows.set(label, (rows.get(label) ?? 0) + c.perSecond);
    }
    lines.push('Interrupts/s');
    lines.push(...table(['source', 'per second'], [...rows].sort((a, b) => a[0].localeCompare(b[0], undefined, { numeric: true }))
      .map(([label, v]) => [label, rate(v)])));
  }

  const usb = take((c) => USB_GROUP.test(c.group) && USB_ENDPOINT_COUNTER.test(c.name));
  if (usb.length > 0) {
    const endpoints = new Map<string, { bytes: number; transfers: number; latencyUs: number }>();
    for (const c of usb) {
      const [, ep, what] = USB_ENDPOINT_COUNTER.exec(c.name) as RegExpExecArray;
      const key = `${c.group}\u0000${ep}`;
      const e = endpoints.get(key) ?? { bytes: 0, transfers: 0, latencyUs: 0 };
      if (what === 'bytes') e.bytes = c.perSecond;
      else if (what === 'transfers') e.transfers = c.perSecond;
      else e.latencyUs = c.perSecond;
      endpoints.set(key, e);
    }
    lines.push('USB endpoints');
    lines.push(...table(['device endpoint', 'bytes/s', 'transfers/s', 'mean latency'], [...endpoints]
      .sort((a, b) => a[0].localeCompare(b[0], undefined, { numeric: true }))
      .map(([key, e]) => [key.replace('\u0000', ' '), rate(e.bytes, true), rate(e.transfers), microseconds(e.transfers > 0 ? e.latencyUs / e.transfers : null)])));
  }

  // Disks (and other block backends): the groups with read/write counters, outside USB.
  const diskGroups = new Set(moved.filter((c) => !used.has(c) && !USB_GROUP.test(c.group) && (c.name === 'read-bytes' || c.name === 'write-bytes')).map((c) => c.group));
  const disks = take((c) => diskGroups.has(c.group) && DISK_NAMES.has(c.name));
  if (disks.length > 0) {
    const get = (group: string, name: string) => disks.find((c) => c.group === group && c.name === name)?.perSecond ?? 0;
    lines.push('Disks');
    lines.push(...table(['disk', 'reads/s', 'writes/s', 'read/s', 'written/s', 'flushes/s'], [...diskGroups].sort()
      .map((g) => [g, rate(get(g, 'reads')), rate(get(g, 'writes')), rate(get(g, 'read-bytes'), true), rate(get(g, 'write-bytes'), true), rate(get(g, 'flushes'))])));
  }

  const rest = take(() => true).sort((a, b) => a.group.localeCompare(b.group) || a.name.localeCompare(b.name));
  if (rest.length > 0) {
    lines.push('Other counters');
    lines.push(...table(['counter', 'per second', 'total'], rest.map((c) => [`${c.group}/${c.name}`, rate(c.perSecond, c.unit === 'bytes'), formatAmount(c.total, c.unit === 'bytes')])));
  }
  if (moved.length === 0) lines.push('  (no counter has moved yet)');
  return `${lines.join('\n')}\n`;
}

/** One line of `porthole stats --json`: the interval's sample, every counter with its total and rate. */
export function statsJsonLine(sample: StatsSample): string {
  return `${JSON.stringify({
    atMs: sample.atMs, intervalMs: sample.intervalMs,
    counters: sample.counters.map((c) => ({ group: c.group, name: c.name, unit: c.unit, total: c.total, perSecond: Math.round(c.perSecond * 1000) / 1000 })),
  })}\n`;
}
