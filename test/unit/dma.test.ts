import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MmioBus, PioBus } from '../../main/vmm/devices/bus';
import { PCI_CFG, PCI_COMMAND, PciBus, PciDevice } from '../../main/vmm/devices/pci';
import {
  DMA_DISABLED, DMA_INVALID, DMA_OK, DMA_OUTSIDE, DMA_READ_ONLY, DmaMemory, dmaErrorText, type DmaSegment,
} from '../../main/vmm/memory/dma';
import { FOUR_GIB, GuestMemory, type MemoryRegion, PCI_HOLE_START } from '../../main/vmm/memory/guest-memory';
import { Prng } from '../helpers/prng';

const K64 = 0x10000;

function region(guestBase: number, size: number, name: string, readonly = false): MemoryRegion {
  return { guestBase, size, buffer: new SharedArrayBuffer(size), offset: 0, readonly, name };
}

/**
 * The edges of a guest with more than 3 GiB of RAM, over small buffers: the start of RAM,
 * the last 64 KiB below the PCI hole, a ROM window below 4 GiB (not touching it), and RAM
 * above 4 GiB in two adjacent blocks (as allocateRam splits high RAM).
 */
function bigGuest() {
  const low = region(0, K64, 'ram-low');
  const lowTop = region(PCI_HOLE_START - K64, K64, 'ram-low-top');
  const rom = region(0xfffe0000, K64, 'firmware', true);
  const high0 = region(FOUR_GIB, K64, 'ram-high-0');
  const high1 = region(FOUR_GIB + K64, K64, 'ram-high-1');
  new Uint8Array(rom.buffer).fill(0xa5);
  const memory = new GuestMemory([low, lowTop, rom, high0, high1]);
  return { memory, dma: new DmaMemory(memory), low, lowTop, rom, high0, high1 };
}

function bytesOf(r: MemoryRegion, at: number, n: number): number[] {
  return [...new Uint8Array(r.buffer, r.offset + at, n)];
}

test('scalars and bytes round-trip little-endian inside RAM, below and above 4 GiB', () => {
  const { dma, low, high0 } = bigGuest();
  assert.equal(dma.writeU32(0x100, 0x11223344), DMA_OK);
  assert.deepEqual(bytesOf(low, 0x100, 4), [0x44, 0x33, 0x22, 0x11]);
  assert.equal(dma.readU32(0x100), 0x11223344);
  assert.equal(dma.readU16(0x102), 0x1122);
  assert.equal(dma.readU8(0x103), 0x11);
  assert.equal(dma.writeU16(0x200, 0xbeef), DMA_OK);
  assert.equal(dma.writeU8(0x202, 0x7f), DMA_OK);
  assert.deepEqual(bytesOf(low, 0x200, 3), [0xef, 0xbe, 0x7f]);
  assert.equal(dma.writeU32(FOUR_GIB + 8, 0xfedcba98), DMA_OK);
  assert.equal(dma.readU32(FOUR_GIB + 8), 0xfedcba98);
  assert.equal(dma.writeU64(FOUR_GIB + 16, 2 ** 53 - 1), DMA_OK);
  assert.deepEqual(bytesOf(high0, 16, 8), [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0]);
  assert.equal(dma.readU64(FOUR_GIB + 16), 2 ** 53 - 1);
  const into = new Uint8Array(6);
  assert.equal(dma.read(0x100, into), DMA_OK);
  assert.deepEqual([...into], [0x44, 0x33, 0x22, 0x11, 0, 0]);
  assert.equal(dma.write(FOUR_GIB + 0x40, new Uint8Array([1, 2, 3])), DMA_OK);
  assert.deepEqual(bytesOf(high0, 0x40, 3), [1, 2, 3]);
  assert.equal(dma.fill(FOUR_GIB + 0x40, 2, 9), DMA_OK);
  assert.deepEqual(bytesOf(high0, 0x40, 3), [9, 9, 3]);
});

test('u64 above 2^53: both halves exactly, the number rounded, unsafe numbers refused', () => {
  const { dma } = bigGuest();
  assert.equal(dma.writeU64Halves(0x300, 0x89abcdef, 0xffffffff), DMA_OK);
  const halves = new Uint32Array(2);
  assert.equal(dma.readU64Halves(0x300, halves), DMA_OK);
  assert.deepEqual([...halves], [0x89abcdef, 0xffffffff]);
  assert.equal(dma.readU64(0x300), 0xffffffff * 2 ** 32 + 0x89abcdef);
  assert.equal(dma.readU32(0x304), 0xffffffff);
  assert.equal(dma.writeU64(0x300, 2 ** 53), DMA_INVALID);
  assert.equal(dma.writeU64(0x300, -1), DMA_INVALID);
  assert.equal(dma.writeU64(0x300, 1.5), DMA_INVALID);
  assert.deepEqual([...halves.fill(0)], [0, 0]);
  assert.equal(dma.readU64Halves(0x300, halves), DMA_OK, 'the refused writes changed nothing');
  assert.deepEqual([...halves], [0x89abcdef, 0xffffffff]);
});

test('accesses straddling the end of RAM below the PCI hole fail and touch nothing', () => {
  const { dma, lowTop } = bigGuest();
  const last = PCI_HOLE_START - 1;
  assert.equal(dma.writeU8(last, 0x5a), DMA_OK);
  assert.equal(dma.readU8(last), 0x5a);
  for (const [gpa, size] of [[last, 2], [last - 2, 4], [last - 6, 8], [PCI_HOLE_START - 4, 5]]) {
    assert.equal(dma.write(gpa, new Uint8Array(size).fill(0xee)), DMA_OUTSIDE, `write 0x${gpa.toString(16)}+${size}`);
    const into = new Uint8Array(size).fill(0x11);
    assert.equal(dma.read(gpa, into), DMA_OUTSIDE);
    assert.ok(into.every((b) => b === 0x11), 'a failed read leaves the buffer alone');
  }
  assert.equal(dma.readU16(last), DMA_OUTSIDE);
  assert.equal(dma.readU32(last - 2), DMA_OUTSIDE);
  assert.equal(dma.readU64(last - 6), DMA_OUTSIDE);
  assert.equal(dma.readU64Halves(last - 6, [0, 0]), DMA_OUTSIDE);
  assert.equal(dma.writeU16(last, 0xffff), DMA_OUTSIDE);
  assert.equal(dma.writeU32(last - 2, 0xffffffff), DMA_OUTSIDE);
  assert.equal(dma.writeU64Halves(last - 6, 0xffffffff, 0xffffffff), DMA_OUTSIDE);
  assert.equal(dma.fill(last - 1, 3, 0xff), DMA_OUTSIDE);
  assert.deepEqual(bytesOf(lowTop, K64 - 8, 8), [0, 0, 0, 0, 0, 0, 0, 0x5a]);
  // Also the end of the first low region, where a gap follows.
  assert.equal(dma.readU32(K64 - 2), DMA_OUTSIDE);
  assert.equal(dma.view(K64 - 2, 4), null);
});

test('the PCI hole and unbacked space are outside guest memory', () => {
  const { dma } = bigGuest();
  for (const gpa of [PCI_HOLE_START, PCI_HOLE_START + 0x1000, 0xd0000000, 0xfee00000, 0xfffdffff, FOUR_GIB + 2 * K64, 2 ** 52]) {
    assert.equal(dma.readU8(gpa), DMA_OUTSIDE, `0x${gpa.toString(16)}`);
    assert.equal(dma.writeU32(gpa, 1), DMA_OUTSIDE);
    assert.equal(dma.read(gpa, new Uint8Array(16)), DMA_OUTSIDE);
    assert.equal(dma.check(gpa, 1), DMA_OUTSIDE);
  }
  assert.equal(dma.read(PCI_HOLE_START - 4, new Uint8Array(0x1000)), DMA_OUTSIDE);
});

test('the 4 GiB boundary: ROM below it is not RAM, RAM above it starts exactly there', () => {
  const { dma, high0 } = bigGuest();
  assert.equal(dma.readU32(FOUR_GIB - 4), DMA_OUTSIDE);
  assert.equal(dma.readU64(FOUR_GIB - 4), DMA_OUTSIDE);
  assert.equal(dma.writeU64Halves(FOUR_GIB - 4, 1, 2), DMA_OUTSIDE);
  assert.equal(dma.read(FOUR_GIB - 16, new Uint8Array(32)), DMA_OUTSIDE);
  assert.equal(dma.write(FOUR_GIB - 1, new Uint8Array(2).fill(1)), DMA_OUTSIDE);
  assert.deepEqual(bytesOf(high0, 0, 4), [0, 0, 0, 0]);
  assert.equal(dma.writeU32(FOUR_GIB, 0xcafef00d), DMA_OK);
  assert.equal(dma.readU32(FOUR_GIB), 0xcafef00d);
});

test('adjacent RAM blocks above 4 GiB are one range: accesses may span them', () => {
  const { dma, high0, high1 } = bigGuest();
  const edge = FOUR_GIB + K64;
  assert.equal(dma.writeU64Halves(edge - 4, 0x04030201, 0x08070605), DMA_OK);
  assert.deepEqual(bytesOf(high0, K64 - 4, 4), [1, 2, 3, 4]);
  assert.deepEqual(bytesOf(high1, 0, 4), [5, 6, 7, 8]);
  assert.equal(dma.readU64(edge - 4), 0x08070605 * 2 ** 32 + 0x04030201);
  const halves = [0, 0];
  assert.equal(dma.readU64Halves(edge - 4, halves), DMA_OK);
  assert.deepEqual(halves, [0x04030201, 0x08070605]);
  assert.equal(dma.readU32(edge - 2), 0x06050403);
  assert.equal(dma.readU16(edge - 1), 0x0504);
  assert.equal(dma.writeU32(edge - 1, 0xa1b2c3d4), DMA_OK);
  assert.deepEqual(bytesOf(high0, K64 - 1, 1), [0xd4]);
  assert.deepEqual(bytesOf(high1, 0, 3), [0xc3, 0xb2, 0xa1]);
  const big = new Uint8Array(3 * 0x1000).map((_, i) => i & 0xff);
  assert.equal(dma.write(edge - 0x1000, big.subarray(0, 0x2000)), DMA_OK);
  const back = new Uint8Array(0x2000);
  assert.equal(dma.read(edge - 0x1000, back), DMA_OK);
  assert.deepEqual(back, big.subarray(0, 0x2000));
  // A zero-copy view exists only inside one region.
  assert.equal(dma.view(edge - 2, 4), null);
  assert.equal(dma.view(edge - 4, 4)?.length, 4);
  // Past the second block is outside again.
  assert.equal(dma.read(edge + K64 - 4, new Uint8Array(8)), DMA_OUTSIDE);
});

test('ROM can be read by DMA but never written', () => {
  const { dma, rom } = bigGuest();
  const base = rom.guestBase;
  assert.equal(dma.readU32(base), 0xa5a5a5a5);
  assert.equal(dma.readU8(base + K64 - 1), 0xa5);
  assert.equal(dma.writeU8(base, 0), DMA_READ_ONLY);
  assert.equal(dma.writeU32(base + 4, 0), DMA_READ_ONLY);
  assert.equal(dma.writeU64(base + 8, 0), DMA_READ_ONLY);
  assert.equal(dma.write(base, new Uint8Array(4)), DMA_READ_ONLY);
  assert.equal(dma.fill(base, 16, 0), DMA_READ_ONLY);
  assert.equal(dma.view(base, 4, true), null);
  assert.equal(dma.view(base, 4)?.[0], 0xa5);
  assert.equal(dma.check(base, 4, true), DMA_READ_ONLY);
  assert.equal(dma.check(base, 4, false), DMA_OK);
  assert.ok(new Uint8Array(rom.buffer).every((b) => b === 0xa5));
});

test('bad addresses and lengths are error values, and a zero-length access touches nothing', () => {
  const { dma } = bigGuest();
  for (const gpa of [-1, 0.5, Number.NaN, Infinity, 2 ** 53, Number.MAX_SAFE_INTEGER]) {
    assert.equal(dma.readU8(gpa), DMA_INVALID, `${gpa}`);
    assert.ok(dma.readU64(gpa) < 0);
    assert.ok(dma.writeU32(gpa, 0) < 0);
  }
  assert.equal(dma.check(0, -1), DMA_INVALID);
  assert.equal(dma.check(Number.MAX_SAFE_INTEGER, 2), DMA_INVALID);
  assert.equal(dma.fill(0, 2 ** 53, 0), DMA_INVALID);
  assert.equal(dma.read(PCI_HOLE_START, new Uint8Array(0)), DMA_OK);
  assert.equal(dma.check(0x10, 0, true), DMA_OK);
  assert.equal(dmaErrorText(DMA_OUTSIDE), 'outside guest memory');
  assert.equal(dmaErrorText(DMA_DISABLED), 'DMA disabled (bus mastering off)');
});

test('fuzz: random accesses never throw, and succeed exactly when inside memory', () => {
  const { memory, dma } = bigGuest();
  const rng = new Prng(808);
  const edges = [0, K64, PCI_HOLE_START - K64, PCI_HOLE_START, 0xfffe0000, 0xffff0000, FOUR_GIB, FOUR_GIB + K64, FOUR_GIB + 2 * K64, 2 ** 53];
  const inside = (gpa: number, n: number, write: boolean): boolean => {
    for (let a = gpa; a < gpa + n; a++) {
      const r = memory.regions.find((x) => a >= x.guestBase && a < x.guestBase + x.size);
      if (!r || (write && r.readonly)) return false;
    }
    return true;
  };
  for (let i = 0; i < 20000; i++) {
    const gpa = rng.pick(edges) + rng.below(17) - 8;
    const size = rng.pick([1, 2, 4, 8]);
    const write = rng.below(2) === 0;
    let status: number;
    if (write) {
      status = size === 1 ? dma.writeU8(gpa, 1) : size === 2 ? dma.writeU16(gpa, 1) : size === 4 ? dma.writeU32(gpa, 1) : dma.writeU64(gpa, 1);
    } else {
      status = size === 1 ? dma.readU8(gpa) : size === 2 ? dma.readU16(gpa) : size === 4 ? dma.readU32(gpa) : dma.readU64(gpa);
    }
    const ok = Number.isSafeInteger(gpa) && gpa >= 0 && inside(gpa, size, write);
    assert.equal(status >= 0, ok, `${write ? 'write' : 'read'} ${size} at 0x${gpa.toString(16)}: ${status}`);
  }
});

test('scatter-gather lists: in order, partial at the buffer end, all or nothing on a bad segment', () => {
  const { dma, low, high0, high1 } = bigGuest();
  const data = new Uint8Array(40).map((_, i) => i + 1);
  const list: DmaSegment[] = [
    { address: 0x1000, length: 8 },
    { address: 0x2000, length: 0 },
    { address: FOUR_GIB + K64 - 4, length: 12 }, // spans the two high blocks
    { address: PCI_HOLE_START - 16, length: 16 },
  ];
  assert.equal(DmaMemory.totalLength(list), 36);
  assert.equal(dma.scatter(list, data), 36);
  assert.deepEqual(bytesOf(low, 0x1000, 8), [1, 2, 3, 4, 5, 6, 7, 8]);
  assert.deepEqual(bytesOf(high0, K64 - 4, 4), [9, 10, 11, 12]);
  assert.deepEqual(bytesOf(high1, 0, 8), [13, 14, 15, 16, 17, 18, 19, 20]);
  const back = new Uint8Array(36);
  assert.equal(dma.gather(list, back), 36);
  assert.deepEqual(back, data.subarray(0, 36));
  // A short buffer: only what fits is moved.
  const short = new Uint8Array(10);
  assert.equal(dma.gather(list, short), 10);
  assert.deepEqual([...short], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  assert.equal(dma.scatter(list, new Uint8Array([0xf0, 0xf1, 0xf2]), 1), 2);
  assert.deepEqual(bytesOf(low, 0x1000, 3), [0xf1, 0xf2, 3]);
  // Into the middle of a buffer.
  const mid = new Uint8Array(6);
  assert.equal(dma.gather([{ address: 0x1000, length: 8 }], mid, 4), 2);
  assert.deepEqual([...mid], [0, 0, 0, 0, 0xf1, 0xf2]);
  // One bad segment anywhere: an error, and no guest byte written.
  for (const [bad, code] of [
    [{ address: PCI_HOLE_START - 8, length: 9 }, DMA_OUTSIDE], // straddles the end of RAM
    [{ address: FOUR_GIB - 4, length: 8 }, DMA_OUTSIDE], // straddles 4 GiB from the ROM side
    [{ address: 0xfffe0000, length: 4 }, DMA_READ_ONLY],
    [{ address: -4, length: 4 }, DMA_INVALID],
    [{ address: 0, length: 2 ** 53 }, DMA_INVALID],
  ] as [DmaSegment, number][]) {
    const before = bytesOf(low, 0x3000, 4);
    assert.equal(dma.scatter([{ address: 0x3000, length: 4 }, bad], new Uint8Array([9, 9, 9, 9, 9, 9, 9, 9])), code, JSON.stringify(bad));
    assert.deepEqual(bytesOf(low, 0x3000, 4), before);
    if (code !== DMA_READ_ONLY) assert.equal(dma.gather([{ address: 0x3000, length: 4 }, bad], new Uint8Array(8)), code);
  }
  assert.equal(dma.gather([{ address: 0xfffe0000, length: 4 }], new Uint8Array(4)), 4, 'ROM is readable');
  assert.equal(dma.gather(list, new Uint8Array(4), 5), DMA_INVALID);
});

test('the region list can change under a DmaMemory: a BAR or ROM added later is seen, a removed one is not', () => {
  const { memory, dma } = bigGuest();
  const bar = region(0xe0000000, 0x1000, 'bar');
  assert.equal(dma.readU32(0xe0000000), DMA_OUTSIDE);
  memory.add(bar);
  assert.equal(dma.writeU32(0xe0000010, 77), DMA_OK);
  assert.equal(dma.readU32(0xe0000010), 77);
  memory.remove(bar);
  assert.equal(dma.readU32(0xe0000010), DMA_OUTSIDE);
  assert.equal(dma.writeU32(0xe0000010, 1), DMA_OUTSIDE);
});

test("a PCI function's DMA is refused while its bus-master bit is clear", () => {
  const { memory, low } = bigGuest();
  const bus = new PciBus({ pio: new PioBus(), mmio: new MmioBus(), memory, log: () => {}, signalMsi: () => {} });
  const device = new PciDevice('dma-test', { vendorId: 0x1234, deviceId: 0x5678, classCode: 0xff0000 });
  assert.equal(device.dma.readU32(0x100), DMA_DISABLED, 'refused before it is even on a bus');
  bus.attach(device, 3);
  const dma = device.dma;
  new Uint8Array(low.buffer).set([1, 2, 3, 4], 0x100);
  assert.equal(dma.readU32(0x100), DMA_DISABLED);
  assert.equal(dma.writeU32(0x100, 0xffffffff), DMA_DISABLED);
  assert.equal(dma.read(0x100, new Uint8Array(4)), DMA_DISABLED);
  assert.equal(dma.scatter([{ address: 0x100, length: 4 }], new Uint8Array(4)), DMA_DISABLED);
  assert.equal(dma.gather([{ address: 0x100, length: 4 }], new Uint8Array(4)), DMA_DISABLED);
  assert.equal(dma.view(0x100, 4), null);
  assert.deepEqual(bytesOf(low, 0x100, 4), [1, 2, 3, 4]);
  // Memory decoding alone is not bus mastering.
  device.writeConfig(PCI_CFG.COMMAND, 2, PCI_COMMAND.MEMORY | PCI_COMMAND.IO);
  assert.equal(dma.readU32(0x100), DMA_DISABLED);
  device.writeConfig(PCI_CFG.COMMAND, 2, PCI_COMMAND.MASTER);
  assert.equal(dma.readU32(0x100), 0x04030201);
  assert.equal(dma.writeU16(0x100, 0xaabb), DMA_OK);
  assert.equal(dma.readU32(PCI_HOLE_START), DMA_OUTSIDE, 'bus mastering does not widen the bounds');
  device.writeConfig(PCI_CFG.COMMAND, 2, 0);
  assert.equal(dma.writeU16(0x100, 0), DMA_DISABLED);
  assert.deepEqual(bytesOf(low, 0x100, 4), [0xbb, 0xaa, 3, 4]);
  assert.equal(device.dma, dma, 'one accessor per function');
});

test('readU32s reads consecutive dwords inside a region and across adjacent ones, and refuses what read refuses', () => {
  const { dma, high0 } = bigGuest();
  const out = new Uint32Array(4);
  for (let i = 0; i < 4; i++) assert.equal(dma.writeU32(0x200 + 4 * i, 0x01020304 * (i + 1)), DMA_OK);
  assert.equal(dma.readU32s(0x200, out, 4), DMA_OK);
  assert.deepEqual([...out], [1, 2, 3, 4].map((k) => (0x01020304 * k) >>> 0));
  // A 16-byte record whose halves lie in the two high RAM blocks.
  const edge = FOUR_GIB + K64 - 8;
  for (let i = 0; i < 4; i++) assert.equal(dma.writeU32(edge + 4 * i, 0xa0000000 + i), DMA_OK);
  assert.equal(dma.readU32s(edge, out, 4), DMA_OK);
  assert.deepEqual([...out], [0xa0000000, 0xa0000001, 0xa0000002, 0xa0000003]);
  assert.equal(new Uint32Array(high0.buffer)[K64 / 4 - 1], 0xa0000001, 'the first two dwords sit in the first block');
  assert.equal(dma.readU32s(PCI_HOLE_START - 8, out, 4), DMA_OUTSIDE, 'running into the PCI hole');
  assert.equal(dma.readU32s(-4, out, 1), DMA_INVALID);
  const off = new DmaMemory(bigGuest().memory, () => false);
  assert.equal(off.readU32s(0x200, out, 4), DMA_DISABLED);
});
