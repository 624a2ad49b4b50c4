// The Performance tab's pure parts (renderer/src/perf.ts, renderer/src/stats-feed.ts): the
// ring buffer keeps exactly the last 10 minutes at any resolution, the charts are picked from
// the counters a VM reports, the CSV and JSON exports hold what the buffer holds, and the
// shared feed opens one API stream per VM and pace.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { VmStatsCounter, VmStatsEvent, VmStatsSample } from '../../main/api/contract';
import { loadRendererModule } from '../helpers/renderer-module';

const perf = loadRendererModule<typeof import('../../renderer/src/perf')>('perf.ts');
const feedModule = loadRendererModule<typeof import('../../renderer/src/stats-feed')>('stats-feed.ts');

function reading(group: string, name: string, perSecond: number, total = 1, unit: VmStatsCounter['unit'] = 'count'): VmStatsCounter {
  return { group, name, unit, total, perSecond };
}

function sample(atMs: number, counters: VmStatsCounter[], intervalMs = 1000): VmStatsSample {
  return { atMs, intervalMs, counters };
}

test('the ring buffer keeps the last 10 minutes: 600 points at 1 s, 6000 at 10 Hz, oldest dropped first', () => {
  assert.equal(new perf.StatsHistory(1000).capacity, 600);
  assert.equal(new perf.StatsHistory(100).capacity, 6000);
  const h = new perf.StatsHistory(1000, 5000); // 5 points
  for (let i = 1; i <= 8; i++) h.push(sample(i * 1000, [reading('exits', 'io', i * 10)]));
  assert.equal(h.length, 5);
  assert.deepEqual(h.timesMs(), [4000, 5000, 6000, 7000, 8000]);
  assert.deepEqual(h.rates('exits/io'), [40, 50, 60, 70, 80]);
  assert.deepEqual(h.rates('no/such'), [null, null, null, null, null]);
});

test('a counter that appears later, or skips a sample, reads null there; a sample without an interval is left out', () => {
  const h = new perf.StatsHistory(1000);
  h.push(sample(0, [reading('exits', 'io', 0)], 0)); // a VM's first sample: no rates
  h.push(sample(1000, [reading('exits', 'io', 5)]));
  h.push(sample(2000, [reading('exits', 'io', 6), reading('COM1', 'tx-bytes', 100, 100, 'bytes')]));
  h.push(sample(3000, [reading('COM1', 'tx-bytes', 200, 300, 'bytes')]));
  assert.deepEqual(h.timesMs(), [1000, 2000, 3000]);
  assert.deepEqual(h.rates('exits/io'), [5, 6, null]);
  assert.deepEqual(h.rates('COM1/tx-bytes'), [null, 100, 200]);
  assert.deepEqual(h.counters, [{ group: 'exits', name: 'io', unit: 'count' }, { group: 'COM1', name: 'tx-bytes', unit: 'bytes' }]);
});

test('charts are picked from the reported counters, grouped by the registry naming convention; idle counters are left out', () => {
  const counters = [
    reading('exits', 'io', 1), reading('exits', 'hlt', 1), reading('exits', 'mmio', 0, 0),
    reading('COM1', 'pio-reads', 1), reading('COM1', 'pio-writes', 1), reading('COM1', 'tx-bytes', 1, 5, 'bytes'),
    reading('xhci', 'mmio-reads', 1), reading('xhci', 'mmio-writes', 1), reading('xhci', 'msix-0', 1), reading('xhci', 'msix-1', 1),
    reading('irq', 'gsi-4', 1), reading('irq', 'msi', 1),
    reading('disk0', 'read-bytes', 1, 9, 'bytes'), reading('disk0', 'reads', 1), reading('i8042', 'resets', 0, 0),
  ];
  const charts = perf.pickCharts(counters);
  const shape = charts.map((c) => [c.id, c.unit, c.series.map((s) => `${s.label}=${s.keys.join('+')}`)]);
  assert.deepEqual(shape, [
    ['exits', 'count', ['hlt=exits/hlt', 'io=exits/io']],
    ['accesses', 'count', ['COM1=COM1/pio-reads+COM1/pio-writes', 'xhci=xhci/mmio-reads+xhci/mmio-writes']],
    ['interrupts', 'count', ['GSI 4=irq/gsi-4', 'MSI=irq/msi', 'xhci MSI-X=xhci/msix-0+xhci/msix-1']],
    ['bytes', 'bytes', ['COM1 tx-bytes=COM1/tx-bytes', 'disk0 read-bytes=disk0/read-bytes']],
    ['operations', 'count', ['disk0 reads=disk0/reads']],
  ]);
  assert.deepEqual(perf.pickCharts([reading('exits', 'io', 0, 0)]), [], 'nothing moved: no charts');
  assert.notEqual(perf.chartSignature(charts[0]), perf.chartSignature(perf.pickCharts(counters.slice(1))[0]), 'a new series changes the signature');
});

test('a series of several counters is their sum, null only where none had a reading', () => {
  const h = new perf.StatsHistory(1000);
  h.push(sample(1000, [reading('COM1', 'pio-reads', 2), reading('COM1', 'pio-writes', 3)]));
  h.push(sample(2000, [reading('COM1', 'pio-writes', 4)]));
  h.push(sample(3000, []));
  const series = { label: 'COM1', keys: ['COM1/pio-reads', 'COM1/pio-writes'] };
  assert.deepEqual(perf.seriesRates(h, series), [5, 4, null]);
  const chart = { id: 'accesses', title: 't', unit: 'count', series: [series] } as const;
  assert.deepEqual(perf.chartData(h, { ...chart, series: [...chart.series] }), [[1, 2, 3], [5, 4, null]]);
});

test('a history longer than a chart has points is drawn as bucket means, ending at the newest sample', () => {
  const h = new perf.StatsHistory(1000);
  for (let i = 1; i <= 7; i++) h.push(sample(i * 1000, i === 3 ? [] : [reading('exits', 'io', i * 10)]));
  const chart = { id: 'exits' as const, title: 't', unit: 'count' as const, series: [{ label: 'io', keys: ['exits/io'] }] };
  assert.deepEqual(perf.chartData(h, chart, 3), [[1, 4, 7], [10, 30, 60]], 'buckets [1] [2,3,4] [5,6,7]; sample 3 had no reading');
  assert.deepEqual(perf.chartData(h, chart, 7), perf.chartData(h, chart), 'short enough: every sample');
  const empty = new perf.StatsHistory(1000);
  assert.deepEqual(perf.chartData(empty, chart, 3), [[], []]);
});

test('chart data read in place from a wrapped ring equals bucket means of seriesRates (sums, gaps and latency means)', () => {
  const h = new perf.StatsHistory(1000, 50_000); // 50 slots, 137 samples: the ring wraps twice
  for (let i = 1; i <= 137; i++) {
    const counters = [reading('usb1-storage', 'ep1-in-transfers', i % 4), reading('usb1-storage', 'ep1-in-latency-us', (i % 4) * 250 + i)];
    if (i % 3 !== 0) counters.push(reading('COM1', 'pio-reads', i));
    if (i % 5 !== 0) counters.push(reading('COM1', 'pio-writes', 2 * i));
    h.push(sample(i * 1000, counters));
  }
  const chart = {
    id: 'accesses' as const, title: 't', unit: 'count' as const,
    series: [
      { label: 'COM1', keys: ['COM1/pio-reads', 'COM1/pio-writes', 'never/seen'] },
      { label: 'ep1-in', keys: ['usb1-storage/ep1-in-latency-us'], per: ['usb1-storage/ep1-in-transfers'] },
    ],
  };
  const times = h.timesMs().map((t) => t / 1000);
  const rates = chart.series.map((s) => perf.seriesRates(h, s));
  for (const points of [Infinity, 50, 17, 7, 1]) {
    const bucket = Math.max(1, Math.ceil(times.length / points));
    const expected: (number | null)[][] = [[], [], []];
    for (let end = times.length; end > 0; end -= bucket) {
      expected[0].unshift(times[end - 1]);
      rates.forEach((r, k) => {
        const values = r.slice(Math.max(0, end - bucket), end).filter((v): v is number => v !== null);
        expected[k + 1].unshift(values.length ? values.reduce((a, b) => a + b, 0) / values.length : null);
      });
    }
    assert.deepEqual(perf.chartData(h, chart, points), expected, `${points} points`);
  }
});

test('CSV: a header of counters with units, one row per sample, empty cells for no reading, quoting where needed', () => {
  const h = new perf.StatsHistory(1000);
  h.push(sample(Date.UTC(2026, 0, 2, 3, 4, 5), [reading('exits', 'io', 1234.56789)]));
  h.push(sample(Date.UTC(2026, 0, 2, 3, 4, 6), [reading('exits', 'io', 10), reading('disk,"a"', 'read-bytes', 4096, 4096, 'bytes')]));
  assert.equal(perf.historyCsv(h), [
    'time,time_ms,exits/io (count/s),"disk,""a""/read-bytes (bytes/s)"',
    `2026-01-02T03:04:05.000Z,${Date.UTC(2026, 0, 2, 3, 4, 5)},1234.568,`,
    `2026-01-02T03:04:06.000Z,${Date.UTC(2026, 0, 2, 3, 4, 6)},10,4096`,
    '',
  ].join('\r\n'));
});

test('JSON: the VM, the resolution, the times and every counter with its rates', () => {
  const h = new perf.StatsHistory(100);
  h.push(sample(1000, [reading('exits', 'io', 1)], 100));
  h.push(sample(1100, [reading('exits', 'io', 2), reading('irq', 'msi', 3)], 100));
  const json = JSON.parse(JSON.stringify(perf.historyJson(h, { id: 'vm-1', name: 'Flood' })));
  assert.deepEqual(json, {
    vm: { id: 'vm-1', name: 'Flood' }, intervalMs: 100, timesMs: [1000, 1100],
    counters: [
      { group: 'exits', name: 'io', unit: 'count', perSecond: [1, 2] },
      { group: 'irq', name: 'msi', unit: 'count', perSecond: [null, 3] },
    ],
  });
  assert.equal(perf.exportFileName('My VM: test/1', Date.UTC(2026, 10, 28, 5, 6, 7, 123), 'json'), 'My-VM-test-1-perf-2026-11-28T05-06-07Z.json');
  assert.equal(perf.exportFileName('///', 0, 'csv'), 'vm-perf-1970-01-01T00-00-00Z.csv');
});

test('rates are formatted with SI prefixes for counts and binary ones for bytes', () => {
  assert.equal(perf.formatRate(950, 'count'), '950');
  assert.equal(perf.formatRate(12345, 'count'), '12.3k');
  assert.equal(perf.formatRate(2.5, 'count'), '2.5');
  assert.equal(perf.formatRate(1536, 'bytes'), '1.5 KiB');
  assert.equal(perf.formatRate(null, 'bytes'), '–');
});

test('the shared feed opens one stream per VM and pace, delivers to every listener, and closes it with the last', async () => {
  const opened: { id: string; intervalMs: number; listener: (e: VmStatsEvent) => void; stopped: boolean }[] = [];
  const api = {
    watchVmStatsEvery: async (id: string, intervalMs: number, listener: (e: VmStatsEvent) => void) => {
      const s = { id, intervalMs, listener, stopped: false };
      opened.push(s);
      return () => { s.stopped = true; };
    },
  };
  const feeds = new feedModule.StatsFeeds(api);
  const a: number[] = [];
  const b: number[] = [];
  const stopA = feeds.subscribe('vm-1', 1000, (s) => a.push(s.atMs));
  const stopB = feeds.subscribe('vm-1', 1000, (s) => b.push(s.atMs));
  const stopFast = feeds.subscribe('vm-1', 100, () => undefined);
  assert.deepEqual(opened.map((o) => `${o.id}@${o.intervalMs}`), ['vm-1@1000', 'vm-1@100']);
  opened[0].listener({ type: 'vm-stats', id: 'vm-1', sample: sample(7, [reading('exits', 'io', 3), reading('exits', 'hlt', 4), reading('COM1', 'tx-bytes', 9)]) });
  assert.deepEqual([a, b], [[7], [7]]);
  assert.equal(feedModule.exitsPerSecond(sample(0, [reading('exits', 'io', 3), reading('exits', 'hlt', 4), reading('COM1', 'tx-bytes', 9)])), 7);
  stopA();
  await new Promise((r) => setImmediate(r));
  assert.equal(opened[0].stopped, false, 'b still listens');
  stopB();
  stopFast();
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(opened.map((o) => o.stopped), [true, true]);
  assert.equal(feeds.openCount, 0);

  const errors: string[] = [];
  const failing = new feedModule.StatsFeeds({ watchVmStatsEvery: async () => { throw new Error('not-found'); } }, (id, e) => errors.push(`${id}: ${(e as Error).message}`));
  const stop = failing.subscribe('gone', 1000, () => undefined);
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(errors, ['gone: not-found']);
  stop();
});

test('USB endpoint counters make a section per device: bytes/s and transfers/s per endpoint, and the mean latency', () => {
  const counters = [
    reading('usb5-keyboard', 'ep0-bytes', 1, 18, 'bytes'), reading('usb5-keyboard', 'ep0-transfers', 1), reading('usb5-keyboard', 'ep0-latency-us', 1),
    reading('usb1-storage', 'ep2-out-bytes', 1, 31, 'bytes'), reading('usb1-storage', 'ep1-in-bytes', 1, 512, 'bytes'), reading('usb1-storage', 'ep0-bytes', 1, 18, 'bytes'),
    reading('usb1-storage', 'ep1-in-transfers', 1), reading('usb1-storage', 'ep1-in-latency-us', 1),
    reading('usb1-storage', 'ep2-out-transfers', 0, 0), reading('xhci', 'transfers', 1),
  ];
  const shape = perf.pickCharts(counters).map((c) => [c.id, c.unit, c.series.map((s) => `${s.label}=${s.keys.join('+')}${s.per ? `/${s.per.join('+')}` : ''}`)]);
  assert.deepEqual(shape, [
    ['operations', 'count', ['xhci transfers=xhci/transfers']],
    ['usb:usb1-storage:bytes', 'bytes', ['ep0=usb1-storage/ep0-bytes', 'ep1-in=usb1-storage/ep1-in-bytes', 'ep2-out=usb1-storage/ep2-out-bytes']],
    ['usb:usb1-storage:transfers', 'count', ['ep1-in=usb1-storage/ep1-in-transfers']],
    ['usb:usb1-storage:latency', 'microseconds', ['ep1-in=usb1-storage/ep1-in-latency-us/usb1-storage/ep1-in-transfers']],
    ['usb:usb5-keyboard:bytes', 'bytes', ['ep0=usb5-keyboard/ep0-bytes']],
    ['usb:usb5-keyboard:transfers', 'count', ['ep0=usb5-keyboard/ep0-transfers']],
    ['usb:usb5-keyboard:latency', 'microseconds', ['ep0=usb5-keyboard/ep0-latency-us/usb5-keyboard/ep0-transfers']],
  ]);
});

test('a latency series is latency-us per second over transfers per second: null where no transfer completed', () => {
  const h = new perf.StatsHistory(1000);
  h.push(sample(1000, [reading('usb1-storage', 'ep1-in-latency-us', 3000), reading('usb1-storage', 'ep1-in-transfers', 2)]));
  h.push(sample(2000, [reading('usb1-storage', 'ep1-in-latency-us', 0), reading('usb1-storage', 'ep1-in-transfers', 0)]));
  h.push(sample(3000, [reading('usb1-storage', 'ep1-in-latency-us', 4_000_000), reading('usb1-storage', 'ep1-in-transfers', 1)]));
  const series = { label: 'ep1-in', keys: ['usb1-storage/ep1-in-latency-us'], per: ['usb1-storage/ep1-in-transfers'] };
  assert.deepEqual(perf.seriesRates(h, series), [1500, null, 4_000_000]);
  assert.equal(perf.latestRate(h, series), 4_000_000);
  assert.deepEqual([850, 1500, 4_000_000, null].map((v) => perf.formatValue(v, 'microseconds')), ['850 µs', '1.5 ms', '4.0 s', '–']);
  assert.equal(perf.formatValue(1200, 'count'), '1.2k/s');
  assert.equal(perf.formatValue(2048, 'bytes'), '2.0 KiB/s');
});
