// Unpacking a bzImage's kernel ahead (main/vmm/boot/kernel-unpack.ts): synthetic bzImages whose
// payload is an ELF vmlinux packed with xz, zstd or gzip, as the kernel's build packs it.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import zlib from 'node:zlib';
import { parseArgs } from '../../main/cli/args';
import { ConfigError } from '../../main/vmm/config';
import { KERNEL_CACHE_KEEP, kernelForBoot, KernelUnpackError, unpackedPathOf, unpackKernelToCache } from '../../main/vmm/boot/kernel-unpack';
import { makeBzImage, makeElfKernel } from './linux-loader-images';

const elf = makeElfKernel({ entry: 0x1000000n, segments: [{ vaddr: 0xffffffff81000000n, paddr: 0x1000000, data: Buffer.alloc(20000, 0x90), memsz: 0x10000 }] });
// The kernel's build appends the unpacked size (little-endian u32) to every format but gzip.
const sizeAppended = (packed: Buffer, size = elf.length) => { const s = Buffer.alloc(4); s.writeUInt32LE(size); return Buffer.concat([packed, s]); };
const xz = (b: Buffer) => execFileSync('xz', ['-c', '--check=crc32'], { input: b });
const zstd = (b: Buffer) => execFileSync('zstd', ['-c', '-q'], { input: b });

/** A 64-bit bzImage whose payload (payload_offset 0x100 into the protected-mode kernel) is `payload`. */
function bzImageWith(payload: Buffer, patch: { xloadflags?: number } = {}): Buffer {
  const body = Buffer.concat([Buffer.alloc(0x100, 0xcc), payload, Buffer.alloc(64)]);
  const image = makeBzImage({ payload: body, ...patch });
  image.writeUInt32LE(0x100, 0x248);
  image.writeUInt32LE(payload.length, 0x24c);
  return image;
}

function tempDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-kunpack-'));
}

test('xz, zstd and gzip payloads unpack into the cache as the very ELF that was packed', async () => {
  const dir = tempDir();
  for (const [name, payload] of [['xz', sizeAppended(xz(elf))], ['zstd', sizeAppended(zstd(elf))], ['gzip', zlib.gzipSync(elf)]] as const) {
    const kernel = path.join(dir, `bzImage-${name}`);
    fs.writeFileSync(kernel, bzImageWith(payload));
    const out = await unpackKernelToCache(kernel, path.join(dir, 'cache'));
    assert.equal(out, unpackedPathOf(kernel, path.join(dir, 'cache')));
    assert.ok(fs.readFileSync(out).equals(elf), name);
  }
  assert.deepEqual(fs.readdirSync(path.join(dir, 'cache')).filter((f) => f.includes('.tmp-')), [], 'no temporary file left');
  fs.rmSync(dir, { recursive: true });
});

test('bad payloads are refused with a sentence, and nothing lands in the cache', async () => {
  const dir = tempDir();
  const cache = path.join(dir, 'cache');
  const cases: [string, Buffer, RegExp][] = [
    ['short', bzImageWith(sizeAppended(xz(elf), elf.length - 1)), /unpacked to \d+ bytes, but the image says/],
    ['corrupt', bzImageWith(sizeAppended(Buffer.concat([xz(elf).subarray(0, 40), Buffer.alloc(200, 7)]))), /xz failed/],
    ['lz4', bzImageWith(Buffer.from([0x02, 0x21, 0x4c, 0x18, 1, 2, 3, 4])), /format Porthole does not unpack \(only gzip, xz and zstd\)/],
    ['not-elf', bzImageWith(sizeAppended(xz(Buffer.alloc(4096, 1)), 4096)), /unpacked/],
    ['32-bit', bzImageWith(zlib.gzipSync(elf), { xloadflags: 0 }), /not a 64-bit bzImage/],
  ];
  for (const [name, image, why] of cases) {
    const kernel = path.join(dir, name);
    fs.writeFileSync(kernel, image);
    await assert.rejects(unpackKernelToCache(kernel, cache), (e: Error) => (e instanceof KernelUnpackError || e.name === 'KernelImageError') && why.test(e.message), name);
  }
  assert.deepEqual(fs.existsSync(cache) ? fs.readdirSync(cache) : [], []);
  fs.rmSync(dir, { recursive: true });
});

test('a boot of a bzImage starts a detached unpack; the next boot takes the unpacked kernel; a changed file is unpacked again', async () => {
  const dir = tempDir();
  const cache = path.join(dir, 'cache');
  const kernel = path.join(dir, 'bzImage');
  fs.writeFileSync(kernel, bzImageWith(sizeAppended(xz(elf))));
  const first = kernelForBoot(kernel, cache);
  assert.equal(first.path, kernel);
  assert.match(first.note, /unpacking it .* in the background \(pid \d+\)/);
  const target = unpackedPathOf(kernel, cache);
  for (let waited = 0; !fs.existsSync(target); waited += 50) {
    assert.ok(waited < 30000, 'the detached unpacker wrote the cache within 30 s');
    await new Promise((r) => setTimeout(r, 50));
  }
  const second = kernelForBoot(kernel, cache);
  assert.equal(second.path, target);
  assert.ok(fs.readFileSync(second.path).equals(elf));
  // A new build of the kernel at the same path is not the cached one.
  fs.utimesSync(kernel, new Date(), new Date(Date.now() + 5000));
  assert.notEqual(unpackedPathOf(kernel, cache), target);
  assert.equal(kernelForBoot(path.join(dir, 'missing'), cache).path, path.join(dir, 'missing'), 'an unreadable kernel is passed on as given');
  const plainElf = path.join(dir, 'vmlinux');
  fs.writeFileSync(plainElf, elf);
  assert.deepEqual(kernelForBoot(plainElf, cache), { path: plainElf, note: 'kernel: not a bzImage, booted as given' });
  fs.rmSync(dir, { recursive: true });
});

test(`the cache keeps the ${KERNEL_CACHE_KEEP} most recently used kernels`, async () => {
  const dir = tempDir();
  const cache = path.join(dir, 'cache');
  const made: string[] = [];
  for (let i = 0; i < KERNEL_CACHE_KEEP + 2; i++) {
    const kernel = path.join(dir, `k${i}`);
    fs.writeFileSync(kernel, bzImageWith(zlib.gzipSync(elf)));
    made.push(await unpackKernelToCache(kernel, cache));
    const t = new Date(Date.now() - (100 - i) * 1000);
    fs.utimesSync(made[i], t, t);
  }
  const left = fs.readdirSync(cache).map((f) => path.join(cache, f)).sort();
  assert.deepEqual(left, made.slice(2).sort());
  fs.rmSync(dir, { recursive: true });
});

test('porthole run unpacks by default; --no-unpack-kernel turns it off', () => {
  const noFiles = (f: string): unknown => { throw new ConfigError(`no file ${f}`); };
  const on = parseArgs(['run', '--kernel', '/k'], noFiles);
  const off = parseArgs(['run', '--kernel', '/k', '--no-unpack-kernel'], noFiles);
  assert.equal(on.command === 'run' && on.unpackKernel, true);
  assert.equal(off.command === 'run' && off.unpackKernel, false);
});
