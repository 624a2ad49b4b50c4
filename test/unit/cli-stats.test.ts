import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EventEmitter } from 'node:events';
import { formatAmount, formatLiveStats, formatStats, MachineStatsRates, printLiveStats } from '../../main/cli/stats';
import type { MachineStats } from '../../main/vmm/machine/machine';
import type { CounterReading, StatsSample } from '../../main/vmm/shared/stats';

const machineStats: MachineStats = {
  exits: { io: 22, hlt: 3 }, devices: [{ name: 'debugcon', reads: 0, writes: 21 }, { name: 'COM1', reads: 4, writes: 5 }], kicks: 2, apExits: 0,
};

function reading(group: string, name: string, total: number, perSecond = 0, unit: 'count' | 'bytes' = 'count'): CounterReading {
  return { group, name, unit, total, perSecond };
}

test('the end table comes from the machine tallies while the registry has no counters', () => {
  const text = formatStats(machineStats, { atMs: 0, intervalMs: 0, counters: [] });
  assert.match(text, /VM exits by reason:\n\s+io\s+22\n\s+hlt\s+3\n\s+total\s+25\n/);
  assert.match(text, /debugcon\s+0\s+21/);
  assert.match(text, /vCPU kicks: 2, AP exits handled: 0/);
  assert.doesNotMatch(text, /Other counters/);
  assert.equal(formatStats(machineStats), text);
});

test('the end table prefers the registry for exits and device accesses, and lists its other counters', () => {
  const sample: StatsSample = {
    atMs: 0, intervalMs: 250, counters: [
      reading('exits', 'io', 1000), reading('exits', 'mmio', 10), reading('exits', 'hlt', 0),
      reading('COM1', 'pio-reads', 40), reading('COM1', 'pio-writes', 60), reading('hpet', 'mmio-reads', 7),
      reading('COM1', 'tx-bytes', 5000, 0, 'bytes'), reading('irq', 'gsi-4', 12),
    ],
  };
  const text = formatStats(machineStats, sample);
  assert.match(text, /VM exits by reason:\n\s+io\s+1000\n\s+mmio\s+10\n\s+total\s+1010\n/);
  assert.match(text, /COM1\s+40\s+60\n\s+hpet\s+7\s+0\n/);
  assert.doesNotMatch(text, /debugcon/);
  assert.match(text, /Other counters:\n\s+COM1\/tx-bytes\s+4\.9 KiB\n\s+irq\/gsi-4\s+12\n/);
});

test('the live line shows the exit rate and the busiest other counters', () => {
  const sample: StatsSample = {
    atMs: 0, intervalMs: 1000, counters: [
      reading('exits', 'io', 0, 11000), reading('exits', 'hlt', 0, 2100), reading('exits', 'mmio', 0, 0),
      reading('COM1', 'tx-bytes', 0, 10035, 'bytes'), reading('irq', 'gsi-4', 0, 50),
    ],
  };
  assert.equal(formatLiveStats(sample, 12000),
    'porthole: stats 12.0s exits 13.1k/s: io 11.0k/s, hlt 2100/s | COM1/tx-bytes 9.8 KiB/s | irq/gsi-4 50/s\n');
  assert.equal(formatLiveStats({ atMs: 0, intervalMs: 1000, counters: [] }, 500), 'porthole: stats 0.5s idle\n');
  assert.equal(formatAmount(1.5e6), '1.5M');
  assert.equal(formatAmount(3 * 1024 * 1024, true), '3.0 MiB');
});

test('machine tallies become per-second rates, and a reset that restarts them does not go negative', () => {
  const rates = new MachineStatsRates();
  assert.equal(rates.sample(machineStats, 1000).intervalMs, 0);
  const later = rates.sample({ ...machineStats, exits: { io: 522, hlt: 3 } }, 1500);
  const io = later.counters.find((c) => c.group === 'exits' && c.name === 'io');
  assert.equal(io?.perSecond, 1000);
  const afterReset = rates.sample({ ...machineStats, exits: { io: 10 } }, 2500);
  assert.equal(afterReset.counters.find((c) => c.name === 'io')?.perSecond, 10);
  assert.ok(afterReset.counters.every((c) => c.perSecond >= 0));
});

test('the live printer reads registry samples, and asks the machine while the registry is empty', async () => {
  const lines: string[] = [];
  let asked = 0;
  const tallies = [{ ...machineStats, exits: { io: 100 } }, { ...machineStats, exits: { io: 300 } }];
  const host = Object.assign(new EventEmitter(), {
    state: 'running' as const,
    stats: () => Promise.resolve(tallies[Math.min(asked++, 1)]),
  });
  printLiveStats(host, (line) => lines.push(line), 0);
  const registrySample: StatsSample = { atMs: 3000, intervalMs: 1000, counters: [reading('exits', 'io', 10, 500)] };
  host.emit('stats', { atMs: 1000, intervalMs: 0, counters: [] }); // the first sample has no interval
  host.emit('stats', registrySample);
  assert.deepEqual(lines, ['porthole: stats 3.0s exits 500/s: io 500/s\n']);
  host.emit('stats', { atMs: 4000, intervalMs: 1000, counters: [] });
  await new Promise((resolve) => setTimeout(resolve, 20));
  host.emit('stats', { atMs: 5000, intervalMs: 1000, counters: [] });
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(asked, 2);
  assert.equal(lines.length, 2, 'the first machine tally only starts the rates');
  // 200 more io exits over the ~20 ms between the two tallies (no kicks: vcpu/kicks stays out).
  assert.match(lines[1], /^porthole: stats \d+\.\ds exits \S+\/s: io \S+\/s\n$/);
});
