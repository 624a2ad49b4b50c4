import assert from 'node:assert/strict';
import { test } from 'node:test';
import { STATS_CAPACITY, StatsRegistry, StatsSampler } from '../../main/vmm/shared/stats';
import { runOnThread } from '../helpers/threads';

test('no count is lost when several threads increment the same counters', async () => {
  const registry = new StatsRegistry();
  const slots = [registry.counter('exits', 'io'), registry.counter('COM1', 'tx-bytes', 'bytes'), registry.counter('irq', 'gsi-4')];
  const threads = 4;
  const count = 200000;
  await Promise.all(Array.from({ length: threads }, () =>
    runOnThread({ role: 'stats-incrementer', buffer: registry.buffer, slots, count })));
  // Each thread adds 1 + (slot & 1) per round to every slot.
  for (const slot of slots) assert.equal(registry.counts[slot], threads * count * (1 + (slot & 1)), `slot ${slot}`);
  const sampler = new StatsSampler(registry.buffer);
  sampler.setSchema(registry.schema);
  const sample = sampler.sample(1000);
  assert.deepEqual(sample.counters.map((c) => c.total), slots.map((slot) => threads * count * (1 + (slot & 1))));
});

test('the sampler carries totals past the wrap of a 32-bit counter', () => {
  const registry = new StatsRegistry();
  const bytes = registry.counter('COM1', 'tx-bytes', 'bytes');
  const sampler = new StatsSampler(registry.buffer);
  sampler.setSchema(registry.schema);
  registry.add(bytes, 0xffffff00);
  assert.equal(sampler.sample(1000).counters[0].total, 0xffffff00);
  registry.add(bytes, 0x300); // wraps to 0x200
  assert.equal(registry.counts[bytes], 0x200);
  const after = sampler.sample(2000);
  assert.equal(after.counters[0].total, 0xffffff00 + 0x300);
  assert.equal(after.counters[0].perSecond, 0x300);
  assert.equal(after.intervalMs, 1000);
  registry.add(bytes, 0xffffffff);
  registry.add(bytes, 2); // two wraps' worth of adds within one interval still read as their sum modulo 2^32
  assert.equal(sampler.sample(3000).counters[0].total, 0xffffff00 + 0x300 + 1);
});

test('a rebuilt registry adopting the schema keeps every slot, so totals carry on across a reset', () => {
  const buffer = new SharedArrayBuffer(STATS_CAPACITY * 4);
  const first = new StatsRegistry(buffer);
  const io = first.counter('exits', 'io');
  const tx = first.counter('COM1', 'tx-bytes', 'bytes');
  first.add(io, 5);
  first.add(tx, 7);
  const sampler = new StatsSampler(buffer);
  sampler.setSchema(first.schema);
  sampler.sample(1000);

  const rebuilt = new StatsRegistry(buffer);
  rebuilt.adopt(first.schema);
  // The rebuilt machine registers in another order and adds a counter.
  assert.equal(rebuilt.counter('COM1', 'tx-bytes', 'bytes'), tx);
  const mmio = rebuilt.counter('exits', 'mmio');
  assert.equal(rebuilt.counter('exits', 'io'), io);
  assert.equal(mmio, 2);
  rebuilt.add(io, 1);
  rebuilt.add(mmio, 3);
  sampler.setSchema(rebuilt.schema);
  const sample = sampler.sample(2000);
  assert.deepEqual(sample.counters.map((c) => [c.group, c.name, c.unit, c.total]), [
    ['exits', 'io', 'count', 6], ['COM1', 'tx-bytes', 'bytes', 7], ['exits', 'mmio', 'count', 3],
  ]);
});

test('registering past the capacity throws instead of overwriting a slot', () => {
  const registry = new StatsRegistry(new SharedArrayBuffer(8));
  registry.counter('a', 'x');
  registry.counter('a', 'y');
  assert.throws(() => registry.counter('a', 'z'), /full/);
});

test('a retired group leaves samples but keeps its slots and total; registering it again brings it back; a rebuilt machine adopts the retirement', () => {
  const registry = new StatsRegistry(new SharedArrayBuffer(8 * 4));
  const io = registry.counter('exits', 'io');
  const bytes = registry.counter('usb1-storage', 'ep1-in-bytes', 'bytes');
  const sampler = new StatsSampler(registry.buffer);
  const names = () => {
    sampler.setSchema(registry.schema);
    return sampler.sample().counters.map((c) => `${c.group}/${c.name}=${c.total}`);
  };
  registry.add(io, 5);
  registry.add(bytes, 512);
  assert.deepEqual(names(), ['exits/io=5', 'usb1-storage/ep1-in-bytes=512']);
  const version = registry.version;
  registry.retireGroup('usb1-storage');
  assert.notEqual(registry.version, version);
  registry.add(bytes, 100); // counted while retired: it keeps the total right for later
  assert.deepEqual(names(), ['exits/io=5']);

  // A machine rebuilt after a reset adopts the schema, retirement included.
  const rebuilt = new StatsRegistry(registry.buffer);
  rebuilt.adopt(registry.schema);
  assert.deepEqual(rebuilt.schema.map((s) => [s.group, s.retired === true]), [['exits', false], ['usb1-storage', true]]);
  assert.equal(rebuilt.counter('usb1-storage', 'ep1-in-bytes', 'bytes'), bytes, 'the same slot');
  assert.equal(rebuilt.schema[bytes].retired, undefined);
  sampler.setSchema(rebuilt.schema);
  assert.deepEqual(sampler.sample().counters.map((c) => `${c.group}/${c.name}=${c.total}`), ['exits/io=5', 'usb1-storage/ep1-in-bytes=612']);

  // tryCounter refuses instead of throwing when the registry is full.
  for (let i = 0; i < 6; i++) assert.ok(rebuilt.tryCounter('fill', `c${i}`) >= 0);
  assert.equal(rebuilt.tryCounter('fill', 'one-too-many'), -1);
  assert.equal(rebuilt.tryCounter('fill', 'c0'), 2, 'a known counter is still found');
  assert.throws(() => rebuilt.counter('fill', 'one-too-many'), /registry is full/);
});
