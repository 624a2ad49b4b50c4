// The packed vm-stats wire between a VM process and the manager: what goes in comes out,
// names travel only when they change, and a sample the manager cannot name is refused.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { serialize, deserialize } from 'node:v8';
import { StatsPacker, StatsUnpacker } from '../../main/manager/stats-wire';
import type { StatsSample } from '../../main/vmm/shared/stats';

function sample(atMs: number, counters: [string, string, 'count' | 'bytes', number, number][]): StatsSample {
  return { atMs, intervalMs: 100, counters: counters.map(([group, name, unit, total, perSecond]) => ({ group, name, unit, total, perSecond })) };
}

test('samples survive packing, IPC serialization and unpacking; names are sent again only when they change', () => {
  const packer = new StatsPacker();
  const unpacker = new StatsUnpacker();
  const trip = (s: StatsSample) => {
    const packed = packer.pack(s);
    return { packed, back: unpacker.unpack(deserialize(serialize(packed))) };
  };
  const a = sample(1000, [['exits', 'io', 'count', 5, 50], ['COM1', 'tx-bytes', 'bytes', 2 ** 40 + 3, 0.5]]);
  const r1 = trip(a);
  assert.ok(r1.packed.specs);
  assert.deepEqual(r1.back, a);
  const b = sample(1100, [['exits', 'io', 'count', 9, 40], ['COM1', 'tx-bytes', 'bytes', 2 ** 40 + 4, 10]]);
  const r2 = trip(b);
  assert.equal(r2.packed.specs, undefined);
  assert.deepEqual(r2.back, b);
  // A device plugged in: a new counter, so the names go again.
  const c = sample(1200, [['exits', 'io', 'count', 9, 0], ['usb1-storage', 'ep1-in-bytes', 'bytes', 512, 5120], ['COM1', 'tx-bytes', 'bytes', 2 ** 40 + 4, 0]]);
  const r3 = trip(c);
  assert.equal(r3.packed.specs?.length, 3);
  assert.deepEqual(r3.back, c);
  // A unit that changed is a change too.
  const d = sample(1300, [['exits', 'io', 'count', 9, 0], ['usb1-storage', 'ep1-in-bytes', 'count', 512, 0], ['COM1', 'tx-bytes', 'bytes', 2 ** 40 + 4, 0]]);
  assert.ok(trip(d).packed.specs);
});

test('the manager refuses packed samples it cannot name or read', () => {
  const unpacker = new StatsUnpacker();
  const packer = new StatsPacker();
  const s = sample(1, [['exits', 'io', 'count', 1, 1]]);
  const first = packer.pack(s);
  const second = packer.pack(s);
  assert.equal(new StatsUnpacker().unpack(second), null, 'numbers before any names');
  assert.deepEqual(unpacker.unpack(first), s);
  assert.equal(unpacker.unpack({ ...second, totals: new Float64Array(2) }), null, 'a length that does not match the names');
  assert.equal(unpacker.unpack({ ...second, totals: [1] }), null, 'not a Float64Array');
  assert.equal(unpacker.unpack({ ...first, specs: [{ group: 1, name: 'x', unit: 'count' }] }), null, 'a bad name');
  assert.equal(unpacker.unpack({ ...first, specs: [{ group: 'g', name: 'x', unit: 'furlongs' }] }), null, 'a bad unit');
  assert.equal(unpacker.unpack(null), null);
  assert.equal(unpacker.unpack('stats'), null);
  assert.deepEqual(unpacker.unpack(second), s, 'the names known before still hold');
});
