import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MemorySlotError, MemorySlots, MIN_KVM_SLOTS, SLOT_READONLY } from '../../main/vmm/memory/slots';
import { GuestMemory, GuestMemoryError, type MemoryRegion } from '../../main/vmm/memory/guest-memory';

type Call = [slot: number, flags: number, guestBase: number, size: number, hostAddr: bigint];

/** A slot table over a recorded (fake) KVM_SET_USER_MEMORY_REGION. */
function setup(limit = 8) {
  const calls: Call[] = [];
  let failNext: Error | null = null;
  const slots = new MemorySlots((slot, flags, guestBase, size, hostAddr) => {
    if (failNext) {
      const e = failNext;
      failNext = null;
      throw e;
    }
    calls.push([slot, flags, guestBase, size, hostAddr]);
  }, limit);
  return { slots, calls, failOnce: (e: Error) => { failNext = e; } };
}

const PAGE = 0x1000;
const HOST = 0x7f0000000000n;

test('add hands out slot numbers from 0 and passes the range, host address and read-only flag to KVM', () => {
  const { slots, calls } = setup();
  assert.equal(slots.add(0, 0xc0000000, HOST, { name: 'ram-low' }), 0);
  assert.equal(slots.add(0x100000000, 0x40000000, HOST + 0xc0000000n, { name: 'ram-high' }), 1);
  assert.equal(slots.add(0xfffc0000, 0x40000, HOST + 0x200000000n, { readonly: true, name: 'firmware' }), 2);
  assert.deepEqual(calls, [
    [0, 0, 0, 0xc0000000, HOST],
    [1, 0, 0x100000000, 0x40000000, HOST + 0xc0000000n],
    [2, SLOT_READONLY, 0xfffc0000, 0x40000, HOST + 0x200000000n],
  ]);
  assert.equal(slots.used, 3);
  assert.equal(slots.slotAt(0x100000000 + 5)?.name, 'ram-high');
  assert.equal(slots.slotAt(0xc0000000), undefined);
  assert.deepEqual(slots.slots.map((s) => s.slot), [0, 2, 1]);
});

test('remove sets the slot size to 0 (KVM deletes it) and the number is reused, lowest first', () => {
  const { slots, calls } = setup();
  for (let i = 0; i < 4; i++) slots.add(i * 0x10000, PAGE, HOST + BigInt(i * PAGE), { name: `r${i}` });
  calls.length = 0;
  slots.remove(2);
  slots.remove(1);
  assert.deepEqual(calls, [[2, 0, 0x20000, 0, HOST + 2n * BigInt(PAGE)], [1, 0, 0x10000, 0, HOST + BigInt(PAGE)]]);
  assert.equal(slots.used, 2);
  assert.equal(slots.slotAt(0x10000), undefined);
  // The guest range is free again, and the lowest free number comes back first.
  assert.equal(slots.add(0x10000, PAGE, HOST, { name: 'again' }), 1);
  assert.equal(slots.add(0x50000, PAGE, HOST, { name: 'next' }), 2);
  assert.equal(slots.add(0x60000, PAGE, HOST, { name: 'new' }), 4);
  assert.throws(() => slots.remove(2 + 100), (e: Error) => e instanceof MemorySlotError && /slot 102 is not in use/.test(e.message));
  slots.remove(4);
  assert.throws(() => slots.remove(4), /not in use/);
});

test('overlapping guest ranges are refused with a clear error and KVM is not called', () => {
  const { slots, calls } = setup();
  slots.add(0x100000, 0x100000, HOST, { name: 'ram' });
  calls.length = 0;
  const overlaps = [[0x100000, PAGE], [0x1ff000, 0x2000], [0xff000, 0x2000], [0, 0x400000], [0x180000, PAGE]];
  for (const [base, size] of overlaps) {
    assert.throws(() => slots.add(base, size, HOST, { name: 'bar' }),
      (e: Error) => e instanceof MemorySlotError && /memory slot for bar at 0x[0-9a-f]+\+0x[0-9a-f]+ overlaps slot 0 \(ram at 0x100000\+0x100000\)/.test(e.message),
      `0x${base.toString(16)}+0x${size.toString(16)}`);
  }
  assert.deepEqual(calls, []);
  // Touching ranges do not overlap.
  assert.equal(slots.add(0xff000, PAGE, HOST, { name: 'below' }), 1);
  assert.equal(slots.add(0x200000, PAGE, HOST, { name: 'above' }), 2);
});

test('exhaustion: beyond KVM_CAP_NR_MEMSLOTS slots, add fails clearly until one is removed', () => {
  const { slots, calls } = setup(3);
  for (let i = 0; i < 3; i++) slots.add(i * PAGE, PAGE, HOST, { name: `r${i}` });
  assert.throws(() => slots.add(0x10000, PAGE, HOST, { name: 'rom' }),
    (e: Error) => e instanceof MemorySlotError && /memory slot for rom at 0x10000\+0x1000: all 3 KVM memory slots are in use/.test(e.message));
  assert.equal(calls.length, 3);
  slots.remove(1);
  assert.equal(slots.add(0x10000, PAGE, HOST, { name: 'rom' }), 1);
  assert.equal(slots.limit, 3);
  // A kernel reporting no limit gets KVM's historic minimum.
  assert.equal(setup(0).slots.limit, MIN_KVM_SLOTS);
});

test('invalid or unaligned ranges are refused; a failed ioctl leaves the slot free', () => {
  const { slots, calls, failOnce } = setup();
  const bad: [number, number, bigint][] = [
    [0x800, PAGE, HOST], [0, 0x800, HOST], [0, PAGE, HOST + 8n], [-PAGE, PAGE, HOST], [0, 0, HOST],
    [2 ** 53, PAGE, HOST], [Number.NaN, PAGE, HOST], [0, 1.5 * PAGE, HOST],
  ];
  for (const [base, size, host] of bad) {
    assert.throws(() => slots.add(base, size, host, { name: 'x' }), MemorySlotError, `${base}+${size}`);
  }
  assert.deepEqual(calls, []);
  failOnce(new Error('KVM_SET_USER_MEMORY_REGION: File exists'));
  assert.throws(() => slots.add(0, PAGE, HOST, { name: 'x' }), /File exists/);
  assert.equal(slots.used, 0);
  assert.equal(slots.add(0, PAGE, HOST, { name: 'x' }), 0);
});

function region(guestBase: number, size: number, name: string, readonly = false): MemoryRegion {
  return { guestBase, size, buffer: new SharedArrayBuffer(size), offset: 0, readonly, name };
}

test('GuestMemory is one object whose region list changes; overlaps are refused', () => {
  const memory = new GuestMemory([region(0, 0x10000, 'ram')]);
  const rom = region(0xf0000000, 0x1000, 'rom', true);
  memory.add(rom);
  assert.deepEqual(memory.regions.map((r) => r.name), ['ram', 'rom']);
  assert.throws(() => memory.add(region(0xf000, 0x2000, 'bar')), (e: Error) => e instanceof GuestMemoryError && /bar .* overlaps ram/.test(e.message));
  assert.throws(() => memory.add(region(0x20000, 0, 'empty')), GuestMemoryError);
  assert.equal(memory.read(0xf0000000, 1).length, 1);
  assert.equal(memory.remove(rom), true);
  assert.equal(memory.remove(rom), false);
  assert.equal(memory.contains(0xf0000000, 1), false);
  assert.deepEqual(memory.regions.map((r) => r.name), ['ram']);
});
