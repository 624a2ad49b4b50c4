// `porthole stats VM`: the command line and its errors, rates from two readings of totals, the
// table's sections (exits, device accesses, interrupts, USB endpoints, disks, the rest), --json
// lines, --once, and the round trip through a real monitor socket to a registry's counters.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { parseArgs, parseInterval, UsageError } from '../../main/cli/args';
import { runStatsCommand } from '../../main/cli/main';
import { startMonitor, type UsbControl } from '../../main/cli/monitor';
import { formatStatsTable, ratesBetween, statsJsonLine } from '../../main/cli/stats-table';
import { type CounterReading, type StatsSample, StatsRegistry, StatsSampler } from '../../main/vmm/shared/stats';

const noConfig = (): unknown => { throw new Error('no config file here'); };

function c(group: string, name: string, total: number, unit: 'count' | 'bytes' = 'count'): CounterReading {
  return { group, name, unit, total, perSecond: 0 };
}

test('porthole stats: arguments, defaults and clear errors', () => {
  assert.deepEqual(parseArgs(['stats', '/tmp/vm.sock'], noConfig), { command: 'stats', socket: '/tmp/vm.sock', intervalMs: 1000, once: false, json: false });
  assert.deepEqual(parseArgs(['stats', '--monitor', 'unix:/tmp/vm.sock', '--interval', '100ms', '--once', '--json'], noConfig),
    { command: 'stats', socket: '/tmp/vm.sock', intervalMs: 100, once: true, json: true });
  assert.equal((parseArgs(['stats', 'vm.sock', '--interval=2.5s'], noConfig) as { intervalMs: number }).intervalMs, 2500);
  assert.deepEqual([parseInterval('100ms'), parseInterval('1s'), parseInterval('250'), parseInterval('60s')], [100, 1000, 250, 60000]);
  for (const bad of ['50ms', '0', '61s', '1m', 'fast', '', '-1s']) {
    assert.throws(() => parseInterval(bad), (e: Error) => e instanceof UsageError && /--interval takes 100ms to 60s/.test(e.message), bad);
  }
  assert.throws(() => parseArgs(['stats'], noConfig), /porthole stats needs a VM/);
  assert.throws(() => parseArgs(['stats', 'a.sock', 'b.sock'], noConfig), /takes one VM/);
  assert.throws(() => parseArgs(['stats', 'a.sock', '--bogus'], noConfig), /unknown option --bogus/);
  assert.throws(() => parseArgs(['stats', 'a.sock', '--interval'], noConfig), /--interval needs a value/);
  assert.throws(() => parseArgs(['stats', 'a.sock', '--interval', '10ms'], noConfig), /not "10ms"/);
});

test('rates come from two readings of totals; a counter that was not there starts from 0', () => {
  const first: StatsSample = { atMs: 1000, intervalMs: 0, counters: [c('exits', 'io', 100)] };
  const second: StatsSample = { atMs: 1500, intervalMs: 0, counters: [c('exits', 'io', 600), c('COM1', 'tx-bytes', 50, 'bytes')] };
  const r = ratesBetween(first, second);
  assert.equal(r.intervalMs, 500);
  assert.deepEqual(r.counters.map((x) => [x.group, x.name, x.perSecond, x.total]), [['exits', 'io', 1000, 600], ['COM1', 'tx-bytes', 100, 50]]);
  assert.deepEqual(ratesBetween(null, second).counters.map((x) => x.perSecond), [0, 0]);
});

test('the table: sections per kind of counter, rates per second, idle counters left out', () => {
  const before: StatsSample = { atMs: 0, intervalMs: 0, counters: [] };
  const after: StatsSample = {
    atMs: Date.UTC(2026, 10, 28, 9, 0, 1), intervalMs: 0, counters: [
      c('exits', 'io', 12000), c('exits', 'hlt', 3000), c('exits', 'mmio', 0),
      c('COM1', 'pio-reads', 2000), c('COM1', 'pio-writes', 9000), c('COM1', 'tx-bytes', 9000, 'bytes'),
      c('irq', 'gsi-4', 400), c('irq', 'msi', 20), c('xhci', 'msix-0', 30), c('xhci', 'msix-1', 5),
      c('disk0', 'reads', 10), c('disk0', 'read-bytes', 40960, 'bytes'), c('disk0', 'writes', 0), c('disk0', 'write-bytes', 0, 'bytes'),
      c('usb1-storage', 'ep1-in-bytes', 1048576, 'bytes'), c('usb1-storage', 'ep1-in-transfers', 64), c('usb1-storage', 'ep1-in-latency-us', 64000),
      c('usb5-keyboard', 'ep0-bytes', 18, 'bytes'), c('usb5-keyboard', 'ep0-transfers', 1), c('usb5-keyboard', 'ep0-latency-us', 30),
      c('xhci', 'transfers', 65),
    ],
  };
  const sample = ratesBetween({ ...before, atMs: after.atMs - 2000 }, after);
  const text = formatStatsTable(sample, 'porthole stats vm.sock');
  const lines = text.split('\n');
  assert.match(lines[0], /^porthole stats vm\.sock {3}09:00:01\.000 {3}per second over 2\.0 s$/);
  const section = (title: string) => {
    const at = lines.indexOf(title);
    assert.ok(at >= 0, `${title} in:\n${text}`);
    const out: string[] = [];
    for (let i = at + 2; i < lines.length && lines[i].startsWith('  '); i++) out.push(lines[i].trim().split(/ {2,}/).join(' | '));
    return out;
  };
  assert.deepEqual(section('Exits/s by reason'), ['io | 6000 | 12.0k', 'hlt | 1500 | 3000', 'all | 7500 | 15.0k']);
  assert.deepEqual(section('Device accesses/s (PIO and MMIO)'), ['COM1 | 1000 | 4500']);
  assert.deepEqual(section('Interrupts/s'), ['GSI 4 | 200', 'MSI | 10', 'xhci MSI-X | 18']);
  assert.deepEqual(section('USB endpoints'), ['usb1-storage ep1-in | 512.0 KiB | 32 | 1.0 ms', 'usb5-keyboard ep0 | 9 B | 0.5 | 30 µs']);
  assert.deepEqual(section('Disks'), ['disk0 | 5 | 0 | 20.0 KiB | 0 | 0']);
  assert.deepEqual(section('Other counters'), ['COM1/tx-bytes | 4.4 KiB | 8.8 KiB', 'xhci/transfers | 33 | 65']);
  assert.ok(!/mmio\b/.test(section('Exits/s by reason').join()), 'an exit reason that never moved is left out');
  assert.match(formatStatsTable(ratesBetween(null, before), 't'), /no counter has moved yet/);

  const json = JSON.parse(statsJsonLine(sample)) as StatsSample;
  assert.equal(json.intervalMs, 2000);
  assert.deepEqual(json.counters.find((x) => x.name === 'ep1-in-bytes'), { group: 'usb1-storage', name: 'ep1-in-bytes', unit: 'bytes', total: 1048576, perSecond: 524288 });
});

test('--once prints one table after one interval; --json prints lines; a VM that goes away ends it', async () => {
  let total = 0;
  let at = 0;
  const read = async (): Promise<StatsSample> => {
    total += 500;
    at += 100;
    return { atMs: at, intervalMs: 0, counters: [c('exits', 'io', total)] };
  };
  const out: string[] = [];
  const err: string[] = [];
  const io = { out: (t: string) => out.push(t), err: (t: string) => err.push(t), isTty: false };
  assert.equal(await runStatsCommand({ socket: 'vm.sock', intervalMs: 100, once: true, json: false }, io, read), 0);
  assert.equal(out.length, 1);
  assert.match(out[0], /io +5000 +1000/);

  out.length = 0;
  let reads = 0;
  const dying = async (): Promise<StatsSample> => {
    if (++reads > 3) throw new (await import('../../main/cli/monitor')).MonitorError('no VM is listening on vm.sock');
    return read();
  };
  assert.equal(await runStatsCommand({ socket: 'vm.sock', intervalMs: 100, once: false, json: true }, io, dying), 0);
  assert.equal(out.length, 2, out.join(''));
  assert.deepEqual(out.map((l) => (JSON.parse(l) as StatsSample).counters[0].perSecond), [5000, 5000]);
  assert.match(err.join(''), /the VM at vm\.sock is gone/);
});

test('porthole stats through a monitor socket reads the registry; a socket nobody listens on is a clear error', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-stats-'));
  try {
    const registry = new StatsRegistry();
    const io = registry.counter('exits', 'io');
    const sampler = new StatsSampler(registry.buffer);
    const control = {
      readStats: () => {
        sampler.setSchema(registry.schema);
        return sampler.sample();
      },
    } as unknown as UsbControl;
    const socket = path.join(dir, 'vm.sock');
    const server = await startMonitor(socket, control);
    const timer = setInterval(() => registry.add(io, 100), 10);
    const out: string[] = [];
    const err: string[] = [];
    try {
      assert.equal(await runStatsCommand({ socket, intervalMs: 200, once: true, json: true }, { out: (t) => out.push(t), err: (t) => err.push(t) }), 0, err.join(''));
    } finally {
      clearInterval(timer);
      server.close();
    }
    const line = JSON.parse(out[0]) as StatsSample;
    const reading = line.counters.find((x) => x.group === 'exits' && x.name === 'io');
    assert.ok(reading && reading.total > 0 && reading.perSecond > 0, out[0]);

    const errors: string[] = [];
    const code = await runStatsCommand({ socket: path.join(dir, 'none.sock'), intervalMs: 100, once: true, json: false }, { out: () => undefined, err: (t) => errors.push(t) });
    assert.equal(code, 1);
    assert.match(errors.join(''), /^porthole: no VM is listening on .*none\.sock/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
