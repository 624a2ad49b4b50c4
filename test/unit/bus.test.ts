import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MmioBus, PioBus, type IoDevice, type MmioDevice } from '../../main/vmm/devices/bus';
import { ByteRing } from '../../main/vmm/shared/control';

class Latch implements IoDevice {
  last: [number, number, number] | null = null;
  constructor(readonly name: string) {}
  read(offset: number, size: number): number { return offset + size * 0x100; }
  write(offset: number, size: number, value: number): void { this.last = [offset, size, value]; }
}

test('PIO dispatch passes offsets relative to the base and counts accesses', () => {
  const bus = new PioBus();
  const d = new Latch('latch');
  bus.register(0x3f8, 8, d);
  assert.equal(bus.read(0x3fa, 1), 2 + 0x100);
  bus.write(0x3ff, 2, 0xbeef);
  assert.deepEqual(d.last, [7, 2, 0xbeef]);
  assert.deepEqual(bus.counters[1], { name: 'latch', reads: 1, writes: 1 });
});

test('unassigned ports read as all ones and are counted', () => {
  const bus = new PioBus();
  assert.equal(bus.read(0x1234, 1), 0xff);
  assert.equal(bus.read(0x1234, 2), 0xffff);
  assert.equal(bus.read(0x1234, 4), 0xffffffff);
  bus.write(0x1234, 1, 1);
  assert.deepEqual(bus.counters[0], { name: 'unassigned', reads: 3, writes: 1 });
});

test('overlapping port ranges are refused with both names', () => {
  const bus = new PioBus();
  bus.register(0x60, 1, new Latch('kbd'));
  assert.throws(() => bus.register(0x5f, 4, new Latch('other')), /port 0x60 already belongs to kbd/);
  assert.throws(() => bus.register(0xfffe, 4, new Latch('wrap')), /outside/);
});

class Mem implements MmioDevice {
  writes: [number, number, bigint][] = [];
  constructor(readonly name: string) {}
  readMmio(offset: number): number { return offset; }
  writeMmio(offset: number, size: number, value: bigint): void { this.writes.push([offset, size, value]); }
}

test('MMIO lookup finds the right range and rejects straddling accesses', () => {
  const bus = new MmioBus();
  const a = new Mem('a');
  const b = new Mem('b');
  bus.register(0xfee00000, 0x1000, a);
  bus.register(0xfec00000, 0x100, b);
  assert.equal(bus.read(0xfec00010, 4), 0x10n);
  bus.write(0xfee00ff0, 8, 5n);
  assert.deepEqual(a.writes, [[0xff0, 8, 5n]]);
  // 0xfec000fe + 4 crosses the end of b: treated as unassigned.
  assert.equal(bus.read(0xfec000fe, 4), 0xffffffffn);
  assert.equal(bus.read(0x1000, 8), 0xffffffffffffffffn);
  assert.throws(() => bus.register(0xfee00800, 0x1000, new Mem('c')), /overlaps a/);
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
