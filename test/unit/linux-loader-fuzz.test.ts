// Fuzz: mutated bzImage headers and ELF program headers must give either a load whose
// results stay inside guest RAM or a KernelImageError, never a RangeError/TypeError
// from reading past a buffer, and never a write outside RAM.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KernelImageError, loadLinux } from '../../main/vmm/boot/linux';
import { makeBzImage, makeElfKernel, ramOf } from './linux-loader-images';
import { fuzzCases } from '../helpers/prng';

const MiB = 0x100000;
const ITERATIONS = fuzzCases(1500);

/** mulberry32: small, seeded, reproducible. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Rng = () => number;
const int = (rng: Rng, n: number) => Math.floor(rng() * n);

/** Interesting values for header fields: boundaries, powers of two, huge, zero. */
function interesting(rng: Rng): number {
  const picks = [0, 1, 0xff, 0x100, 0x1000, 0x200000, 0x1000000, 0x7fffffff, 0x80000000, 0xffffffff, 0xfffffff0, int(rng, 2 ** 32)];
  return picks[int(rng, picks.length)] >>> 0;
}

function mutate(rng: Rng, image: Buffer, from: number, to: number): Buffer {
  const out = Buffer.from(image);
  const edits = 1 + int(rng, 6);
  for (let i = 0; i < edits; i++) {
    const at = from + int(rng, Math.max(1, Math.min(to, out.length) - from));
    switch (int(rng, 4)) {
      case 0: out[at] = int(rng, 256); break;
      case 1: if (at + 4 <= out.length) out.writeUInt32LE(interesting(rng), at); break;
      case 2: if (at + 8 <= out.length) out.writeBigUInt64LE(BigInt(interesting(rng)) * BigInt(1 + int(rng, 3) * 0x10000000), at); break;
      default: out[at] ^= 1 << int(rng, 8);
    }
  }
  // Sometimes truncate.
  return rng() < 0.15 ? out.subarray(0, int(rng, out.length + 1)) : out;
}

const memorySize = 32 * MiB;
/** One guest RAM reused by every iteration (each load rewrites what it reads back). */
const memory = ramOf(memorySize);

function check(image: Uint8Array, rng: Rng, iteration: number): 'ok' | 'refused' {
  memory.writeU32(0x7000 + 0x202, 0);
  const initrd = rng() < 0.3 ? Buffer.alloc(int(rng, 3 * MiB), 0x99) : undefined;
  const cmdline = 'x'.repeat(int(rng, 3000));
  try {
    const r = loadLinux(memory, { kernel: image, kernelName: 'fuzz', initrd, initrdName: 'fuzz.img', cmdline, cpus: 1 + int(rng, 8) });
    assert.ok(memory.contains(r.entry, 1), `iteration ${iteration}: entry 0x${r.entry.toString(16)} outside RAM`);
    assert.ok(r.kernelStart >= MiB, `iteration ${iteration}: kernel below 1 MiB`);
    assert.ok(r.kernelEnd <= memorySize, `iteration ${iteration}: kernel past RAM`);
    if (r.initrd) {
      assert.ok(r.initrd.address >= r.kernelEnd && r.initrd.address + r.initrd.size <= memorySize, `iteration ${iteration}: initrd misplaced`);
    }
    assert.equal(memory.readU32(r.zeroPage + 0x202), 0x53726448, 'zero page header magic');
    return 'ok';
  } catch (e) {
    if (e instanceof assert.AssertionError) throw e;
    assert.ok(e instanceof KernelImageError, `iteration ${iteration}: ${(e as Error).constructor.name}: ${(e as Error).message}`);
    assert.ok(e.message.length > 0 && !e.message.includes('\n'), 'one-line message');
    return 'refused';
  }
}

test('fuzzed bzImage setup headers load cleanly or are refused with a KernelImageError', () => {
  const rng = prng(0x5eed0001);
  const base = makeBzImage({ pref: 16 * MiB, initSize: 4 * MiB, payload: Buffer.alloc(0x2000, 0xcc) });
  const seen = { ok: 0, refused: 0 };
  for (let i = 0; i < ITERATIONS; i++) {
    seen[check(mutate(rng, base, 0x1f0, 0x270), rng, i)]++;
  }
  // Both outcomes must occur, or the fuzzer is not exercising the loader.
  assert.ok(seen.ok > 50 && seen.refused > 50, JSON.stringify(seen));
});

test('fuzzed ELF headers and program headers load cleanly or are refused with a KernelImageError', () => {
  const rng = prng(0x5eed0002);
  const base = makeElfKernel({
    entry: 0xffffffff81000000n,
    segments: [
      { vaddr: 0xffffffff81000000n, paddr: 2 * MiB, data: Buffer.alloc(0x2000, 0x11), memsz: 0x3000 },
      { vaddr: 0xffffffff82000000n, paddr: 8 * MiB, data: Buffer.alloc(0x1000, 0x22), memsz: 0x1000 },
      { vaddr: 0n, paddr: 0, data: Buffer.alloc(0x10), memsz: 0x10, type: 4 /* PT_NOTE: ignored */ },
    ],
  });
  const seen = { ok: 0, refused: 0 };
  for (let i = 0; i < ITERATIONS; i++) {
    // Header (0..0x40) and program headers (0x40..0xe8).
    seen[check(mutate(rng, base, 0, 0x40 + 3 * 56), rng, i)]++;
  }
  assert.ok(seen.ok > 50 && seen.refused > 50, JSON.stringify(seen));
});
