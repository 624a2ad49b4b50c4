import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MmioBus, PioBus, type IoDevice } from '../../main/vmm/devices/bus';
import { ByteRing } from '../../main/vmm/shared/control';
import { StatsRegistry } from '../../main/vmm/shared/stats';

/** A counter's value in a registry, by group and name (0 if never registered). */
function count(registry: StatsRegistry, group: string, name: string): number {
  const slot = registry.schema.findIndex((s) => s.group === group && s.name === name);
  return slot < 0 ? 0 : registry.counts[slot];
}

class Latch implements IoDevice {
  last: [number, number, number] | null = null;
  constructor(readonly name: string) {}
  read(offset: number, size: number): number { return offset + size * 0x100; }
  write(offset: number, size: number, value: number): void { this.last = [offset, size, value]; }
}

test('PIO dispatch passes offsets relative to the base and counts accesses in the registry', () => {
  const stats = new StatsRegistry();
  const bus = new PioBus(stats);
  const d = new Latch('latch');
  bus.register(0x3f8, 8, d);
  assert.equal(bus.read(0x3fa, 1), 2 + 0x100);
  bus.write(0x3ff, 2, 0xbeef);
  bus.write(0x3f8, 1, 1);
  assert.deepEqual(d.last, [0, 1, 1]);
  assert.equal(count(stats, 'latch', 'pio-reads'), 1);
  assert.equal(count(stats, 'latch', 'pio-writes'), 2);
  // A second range of the same device shares its counters.
  bus.register(0x2f8, 1, d);
  bus.read(0x2f8, 1);
  assert.equal(count(stats, 'latch', 'pio-reads'), 2);
});

test('unassigned ports read as all ones and are counted', () => {
  const stats = new StatsRegistry();
  const bus = new PioBus(stats);
  assert.equal(bus.read(0x1234, 1), 0xff);
  assert.equal(bus.read(0x1234, 2), 0xffff);
  assert.equal(bus.read(0x1234, 4), 0xffffffff);
  bus.write(0x1234, 1, 1);
  assert.equal(count(stats, 'unassigned', 'pio-reads'), 3);
  assert.equal(count(stats, 'unassigned', 'pio-writes'), 1);
});

test('unregister with a device frees only the ports that device owns', () => {
  const bus = new PioBus();
  const a = new Latch('a');
  const b = new Latch('b');
  bus.register(0x100, 4, a);
  bus.register(0x104, 4, b);
  bus.unregister(0x100, 8, a);
  assert.equal(bus.ownerOf(0x100), null);
  assert.equal(bus.ownerOf(0x104), 'b');
});

test('overlapping port ranges are refused with both names', () => {
  const bus = new PioBus();
  bus.register(0x60, 1, new Latch('kbd'));
  assert.throws(() => bus.register(0x5f, 4, new Latch('other')), /port 0x60 already belongs to kbd/);
  assert.throws(() => bus.register(0xfffe, 4, new Latch('wrap')), /outside/);
});

class Mem implements IoDevice {
  writes: [number, number, number][] = [];
  constructor(readonly name: string) {}
  read(offset: number, size: number): number { return offset + size * 0x1000; }
  write(offset: number, size: number, value: number): void { this.writes.push([offset, size, value]); }
}

/** A device with 64-bit registers: sees an 8-byte access as one, with both halves. */
class Wide extends Mem {
  wide: [number, number, number][] = [];
  read64(offset: number, halves: Uint32Array): void { halves[0] = 0x89abcdef; halves[1] = offset; }
  write64(offset: number, low: number, high: number): void { this.wide.push([offset, low, high]); }
}

test('MMIO lookup finds the right range and rejects straddling accesses', () => {
  const stats = new StatsRegistry();
  const bus = new MmioBus(stats);
  const a = new Mem('a');
  const b = new Mem('b');
  bus.register(0xfee00000, 0x1000, a);
  bus.register(0xfec00000, 0x100, b);
  assert.equal(bus.read(0xfec00010, 4), 0x10 + 0x4000);
  bus.write(0xfee00ff0, 2, 5);
  assert.deepEqual(a.writes, [[0xff0, 2, 5]]);
  // 0xfec000fe + 4 crosses the end of b: treated as unassigned.
  assert.equal(bus.read(0xfec000fe, 4), 0xffffffff);
  assert.equal(bus.read(0x1000, 2), 0xffff);
  assert.throws(() => bus.register(0xfee00800, 0x1000, new Mem('c')), /overlaps a/);
  assert.equal(count(stats, 'b', 'mmio-reads'), 1);
  assert.equal(count(stats, 'a', 'mmio-writes'), 1);
  assert.equal(count(stats, 'unassigned', 'mmio-reads'), 2);
  bus.unregister(b);
  assert.equal(bus.read(0xfec00010, 4), 0xffffffff);
});

test('8-byte MMIO: split low half then high half, or one access for a device with read64/write64', () => {
  const stats = new StatsRegistry();
  const bus = new MmioBus(stats);
  const narrow = new Mem('narrow');
  const wide = new Wide('wide');
  bus.register(0xd0000000, 0x100, narrow);
  bus.register(0xd0001000, 0x100, wide);
  const halves = new Uint32Array(2);
  bus.write64(0xd0000008, 0xdeadbeef, 0x01234567);
  assert.deepEqual(narrow.writes, [[8, 4, 0xdeadbeef], [12, 4, 0x01234567]]);
  bus.read64(0xd0000010, halves);
  assert.deepEqual([...halves], [0x10 + 0x4000, 0x14 + 0x4000]);
  bus.write64(0xd0001020, 1, 0xffffffff);
  assert.deepEqual(wide.wide, [[0x20, 1, 0xffffffff]]);
  assert.deepEqual(wide.writes, []);
  bus.read64(0xd0001018, halves);
  assert.deepEqual([...halves], [0x89abcdef, 0x18]);
  // One 8-byte access counts once, split or not.
  assert.equal(count(stats, 'narrow', 'mmio-writes'), 1);
  assert.equal(count(stats, 'wide', 'mmio-reads'), 1);
  // Past the end of a range: unassigned, all ones.
  bus.read64(0xd00000fc, halves);
  assert.deepEqual([...halves], [0xffffffff, 0xffffffff]);
});

test('ByteRing keeps order, reports fullness and survives index wrap', () => {
  const ring = new ByteRing();
  for (let i = 0; i < ring.capacity; i++) assert.equal(ring.push(i & 0xff), true);
  assert.equal(ring.push(1), false);
  const out = ring.drain();
  assert.equal(out.length, ring.capacity);
  assert.equal(out[300], 300 & 0xff);
  assert.equal(ring.used, 0);
  const header = new Int32Array(ring.buffer, 0, 2);
  header[0] = 0x7ffffffe; header[1] = 0x7ffffffe;
  for (let i = 0; i < 5; i++) ring.push(i);
  assert.deepEqual([...ring.drain()], [0, 1, 2, 3, 4]);
});
