import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { allocateRam, allocateRom, dumpRam, FOUR_GIB, GuestMemory, GuestMemoryError, MiB, PCI_HOLE_START } from '../../main/vmm/memory/guest-memory';
import { GuestRamBlock, OWN_MAPPING_BYTES } from '../../native/kvm';
import { Prng } from '../helpers/prng';

test('small guests get one low RAM region', () => {
  const regions = allocateRam(64 * MiB);
  assert.deepEqual(regions.map((r) => [r.guestBase, r.size, r.name]), [[0, 64 * MiB, 'ram-low']]);
});

test('RAM beyond the PCI hole is placed above 4 GiB', () => {
  const regions = allocateRam(PCI_HOLE_START + 64 * MiB);
  assert.deepEqual(regions.map((r) => [r.guestBase, r.size]), [[0, PCI_HOLE_START], [FOUR_GIB, 64 * MiB]]);
  const mem = new GuestMemory(regions);
  assert.equal(mem.ramSize, PCI_HOLE_START + 64 * MiB);
  mem.writeU32(FOUR_GIB + 8, 0xdeadbeef);
  assert.equal(mem.readU32(FOUR_GIB + 8), 0xdeadbeef);
  assert.equal(mem.contains(PCI_HOLE_START, 1), false);
  assert.throws(() => mem.readU32(PCI_HOLE_START - 2), GuestMemoryError);
});

test('bad sizes are refused', () => {
  assert.throws(() => allocateRam(1 * MiB), /at least 2 MiB/);
  assert.throws(() => allocateRam(3 * MiB + 5), /multiple of 4 KiB/);
});

test('guest memory views are bounds checked and ROM is read-only', () => {
  const mem = new GuestMemory([...allocateRam(4 * MiB), allocateRom(0xfffff000, new Uint8Array([1, 2, 3]), 'rom')]);
  assert.deepEqual([...mem.read(0xfffffffd, 3)], [1, 2, 3]);
  assert.throws(() => mem.write(0xfffffffd, new Uint8Array(1)), /read-only/);
  assert.throws(() => mem.slice(4 * MiB - 2, 4), /outside guest memory/);
  assert.throws(() => mem.slice(-1, 1), /invalid/);
  assert.throws(() => mem.slice(0, -1), /invalid/);
  assert.throws(() => mem.slice(1.5, 1), /invalid/);
  assert.throws(() => mem.slice(2 ** 60, 1), /invalid/);
  assert.equal(mem.slice(4 * MiB, 0).length, 0);
});

test('fuzz: any address and length either maps inside one region or throws GuestMemoryError', () => {
  const mem = new GuestMemory(allocateRam(4 * MiB));
  const rng = new Prng(1234);
  const edges = [0, 1, 4095, 4096, 4 * MiB - 1, 4 * MiB, 4 * MiB + 1, 0xffffffff, 2 ** 32, 2 ** 53];
  for (let i = 0; i < 20000; i++) {
    const gpa = rng.below(3) === 0 ? rng.pick(edges) - rng.below(8) : rng.next() % (8 * MiB);
    const len = rng.below(4) === 0 ? rng.pick([0, 1, 8, 4096, 4 * MiB, 2 ** 31]) : rng.below(9000);
    try {
      const view = mem.slice(gpa, len);
      assert.ok(gpa >= 0 && gpa + len <= 4 * MiB, `mapped out-of-range ${gpa}+${len}`);
      assert.equal(view.length, len);
    } catch (e) {
      assert.ok(e instanceof GuestMemoryError, `unexpected ${(e as Error).name} for ${gpa}+${len}`);
      assert.ok(!(gpa >= 0 && Number.isSafeInteger(gpa) && gpa + len <= 4 * MiB && len >= 0));
    }
  }
});

test('guest RAM blocks of 2 MiB or more start on a 2 MiB boundary (so KVM can map huge pages)', () => {
  for (const size of [2 * MiB, 6 * MiB + 4096, 64 * MiB]) {
    const block = new GuestRamBlock(size);
    assert.equal(block.hostAddr % BigInt(2 * MiB), 0n, `${size} bytes`);
    assert.equal(block.bytes.length, size);
    assert.equal(block.offset + size <= block.buffer.byteLength, true);
  }
  const small = new GuestRamBlock(64 * 1024);
  assert.equal(small.hostAddr % 4096n, 0n);
  assert.equal(small.hugePages, false);
});

test('guest RAM of 64 MiB or more is kept out of forked children (MADV_DONTFORK: Node\'s spawn forks the VM process)', () => {
  const flagsOf = (addr: bigint): string[] => {
    // /proc/self/smaps: a mapping's "start-end ..." line, then its fields, VmFlags last (dc: not copied on fork).
    let inside = false;
    for (const line of fs.readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
      const m = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
      if (m) inside = BigInt(`0x${m[1]}`) <= addr && addr < BigInt(`0x${m[2]}`);
      else if (inside && line.startsWith('VmFlags:')) return line.slice(8).trim().split(/\s+/);
    }
    throw new Error(`no mapping holds 0x${addr.toString(16)}`);
  };
  const big = new GuestRamBlock(OWN_MAPPING_BYTES);
  assert.equal(big.keptFromChildren, true);
  for (const at of [big.hostAddr, big.hostAddr + BigInt(OWN_MAPPING_BYTES - 4096)]) assert.ok(flagsOf(at).includes('dc'), `VmFlags at 0x${at.toString(16)}`);
  const small = new GuestRamBlock(2 * MiB);
  assert.equal(small.keptFromChildren, false);
});

test('dumpRam writes each region to FILE.<base> once, with the guest bytes', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ramdump-'));
  try {
    const regions = allocateRam(4 * MiB);
    const mem = new GuestMemory(regions);
    mem.writeU32(0x1234, 0xcafef00d);
    const file = path.join(dir, 'ram');
    const lines = dumpRam(file, regions);
    assert.match(lines[0], /guest RAM at 0x0 \(4194304 bytes\) written to .*ram\.0$/);
    const bytes = fs.readFileSync(`${file}.0`);
    assert.equal(bytes.length, 4 * MiB);
    assert.equal(bytes.readUInt32LE(0x1234), 0xcafef00d);
    // A second triple fault keeps the first dump.
    mem.writeU32(0x1234, 0);
    assert.match(dumpRam(file, regions)[0], /exists already/);
    assert.equal(fs.readFileSync(`${file}.0`).readUInt32LE(0x1234), 0xcafef00d);
    // An unwritable place is a log line, not a throw.
    assert.match(dumpRam(path.join(dir, 'missing', 'ram'), regions)[0], /could not write guest RAM/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
