// qcow2 images against QEMU's own tools: images qemu-img made and qemu-io filled read back
// through Qcow2Image, and what Qcow2Image wrote (random writes, overwrites, discards, over
// backing files) reads back through `qemu-img convert` exactly like a raw model, with
// `qemu-img check` finding no errors and no leaks. Plus the refusals: bad, unsupported,
// missing and locked images get an ImageError naming the file before any device exists.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { adoptBlockImage, openBlockImage, probeImageFormat, type OpenImageOptions } from '../../main/vmm/devices/block/open-image';
import { libc } from '../../native';
import { Qcow2Image } from '../../main/vmm/devices/block/qcow2';
import { ImageError, type BlockBackend } from '../../main/vmm/devices/usb/storage/block-backend';
import { parseDisk, diskConfigFromJson, ConfigError } from '../../main/vmm/config';
import { Prng } from '../helpers/prng';
import { defaultConfig } from '../../main/vmm/config';
import { privateStatistics, type DeviceContext } from '../../main/vmm/devices/device';
import { VIRTIO_BLK_S, VIRTIO_BLK_T, VirtioBlk, virtioBlkDevices } from '../../main/vmm/devices/virtio/blk';
import { VIRTIO_F, VIRTIO_STATUS } from '../../main/vmm/devices/virtio/virtio-pci';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../main/vmm/shared/virtqueue';
import { VirtioTestDriver, writeBlkHeader } from '../helpers/virtio-driver';

const MiB = 1024 * 1024;

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-'));
}

function qemuImg(...args: string[]): string {
  return execFileSync('qemu-img', args, { encoding: 'utf8' });
}

function qemuIo(file: string, ...commands: string[]): void {
  const args = ['-f', 'qcow2'];
  for (const c of commands) args.push('-c', c);
  const out = execFileSync('qemu-io', [...args, file], { encoding: 'utf8' });
  assert.doesNotMatch(out, /fail|error/i, out);
}

/** qemu-img check: no corruptions, no leaks. */
function assertClean(file: string): void {
  let out: string;
  try {
    out = qemuImg('check', '--output=json', file);
  } catch (error) {
    throw new Error(`qemu-img check ${file} failed: ${(error as { stdout?: string }).stdout ?? (error as Error).message}`);
  }
  const report = JSON.parse(out) as { corruptions?: number; leaks?: number; 'check-errors'?: number };
  assert.equal(report['check-errors'] ?? 0, 0, out);
  assert.equal(report.corruptions ?? 0, 0, out);
  assert.equal(report.leaks ?? 0, 0, out);
}

/** The guest-visible bytes according to QEMU. */
function qemuBytes(file: string): Buffer {
  const out = path.join(tmp(), 'out.raw');
  qemuImg('convert', '-O', 'raw', file, out);
  return fs.readFileSync(out);
}

function readSync(b: BlockBackend, offset: number, length: number): Uint8Array {
  let result: Uint8Array | null = null;
  let failure: Error | null = null;
  let called = false;
  b.read(offset, length, (e, d) => { called = true; failure = e; result = d; });
  assert.ok(called, 'a synchronous image completes at once');
  if (failure) throw failure;
  return result!;
}

function writeSync(b: BlockBackend, offset: number, data: Uint8Array): void {
  let failure: Error | null | undefined;
  b.write(offset, data, (e) => { failure = e; });
  assert.notEqual(failure, undefined, 'a synchronous image completes at once');
  if (failure) throw failure;
}

function discardSync(b: BlockBackend, offset: number, length: number): void {
  let failure: Error | null | undefined;
  b.discard!(offset, length, (e) => { failure = e; });
  if (failure) throw failure;
}

function flushSync(b: BlockBackend): void {
  let failure: Error | null | undefined;
  b.flush((e) => { failure = e; });
  if (failure) throw failure;
}

function open(file: string, options: OpenImageOptions = {}): BlockBackend {
  return openBlockImage(file, { synchronous: true, ...options });
}

function pattern(length: number, seed: number): Uint8Array {
  const rng = new Prng(seed);
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i += 4) {
    const v = rng.next();
    out[i] = v; out[i + 1] = v >> 8; out[i + 2] = v >> 16; out[i + 3] = v >> 24;
  }
  return out;
}

test('images qemu-img made and qemu-io filled read back (v2 and v3, 4K/64K/2M clusters, with and without a backing file)', () => {
  for (const compat of ['0.10', '1.1']) {
    for (const cluster of ['4k', '64k', '2M']) {
      const dir = tmp();
      const base = path.join(dir, 'base.qcow2');
      qemuImg('create', '-q', '-f', 'qcow2', '-o', `compat=${compat},cluster_size=${cluster}`, base, '8M');
      qemuIo(base, 'write -P 0xab 0 1M', 'write -P 0x5a 3M 12k', 'write -P 0x11 7M 4k');
      const image = open(base, { readOnly: true });
      assert.ok(image instanceof Qcow2Image);
      assert.equal(image.size, 8 * MiB);
      assert.equal((image as Qcow2Image).version, compat === '0.10' ? 2 : 3);
      const expected = Buffer.alloc(8 * MiB);
      expected.fill(0xab, 0, MiB);
      expected.fill(0x5a, 3 * MiB, 3 * MiB + 12288);
      expected.fill(0x11, 7 * MiB, 7 * MiB + 4096);
      assert.ok(Buffer.from(readSync(image, 0, 8 * MiB)).equals(expected), `${compat} ${cluster}: whole image`);
      assert.ok(Buffer.from(readSync(image, 3 * MiB - 100, 300)).equals(expected.subarray(3 * MiB - 100, 3 * MiB + 200)));
      image.close();

      // An overlay with a relative backing name; qemu-io writes some of it, zeroes some (v3).
      const overlay = path.join(dir, 'overlay.qcow2');
      qemuImg('create', '-q', '-f', 'qcow2', '-o', `compat=${compat},cluster_size=${cluster}`, '-b', 'base.qcow2', '-F', 'qcow2', overlay);
      const ops = ['write -P 0xcd 512k 8k'];
      if (compat === '1.1') ops.push('write -z 7M 4k');
      qemuIo(overlay, ...ops);
      expected.fill(0xcd, 512 * 1024, 512 * 1024 + 8192);
      if (compat === '1.1') expected.fill(0, 7 * MiB, 7 * MiB + 4096);
      const top = open(overlay, { readOnly: true }) as Qcow2Image;
      assert.equal(top.backingFile, base);
      assert.ok(Buffer.from(readSync(top, 0, 8 * MiB)).equals(expected), `${compat} ${cluster}: overlay`);
      top.close();
    }
  }
});

/** Random writes, overwrites and discards on our image and on a raw model; QEMU must agree. */
function exercise(file: string, model: Buffer, seed: number, operations: number, discardZeroes: boolean): void {
  const rng = new Prng(seed);
  const image = open(file);
  for (let i = 0; i < operations; i++) {
    const sectors = model.length / 512;
    const kind = rng.below(10);
    const start = rng.below(sectors);
    const count = 1 + rng.below(Math.min(sectors - start, kind < 2 ? 4096 : 300));
    if (kind < 7) {
      const data = pattern(count * 512, seed * 1000 + i);
      writeSync(image, start * 512, data);
      model.set(data, start * 512);
    } else if (kind < 9) {
      // Discards: the clusters wholly inside read zeros (v3 over a backing file marks them zero;
      // without one they are unallocated), the partial ends keep their bytes.
      const cluster = (image as Qcow2Image).clusterSize;
      discardSync(image, start * 512, count * 512);
      const first = Math.ceil(start * 512 / cluster) * cluster;
      const end = Math.floor((start + count) * 512 / cluster) * cluster;
      if (end > first) {
        if (discardZeroes) model.fill(0, first, end);
        else throw new Error('this exercise needs discards that read zeros');
      }
    } else {
      flushSync(image);
    }
    if (i % 50 === 0) {
      const at = rng.below(sectors) * 512, len = Math.min(model.length - at, 512 * (1 + rng.below(200)));
      assert.ok(Buffer.from(readSync(image, at, len)).equals(model.subarray(at, at + len)), `read-back after op ${i}`);
    }
  }
  assert.ok(Buffer.from(readSync(image, 0, model.length)).equals(model), 'our own read-back');
  image.close();
}

test('what we write reads back through qemu-img convert like a raw model, and qemu-img check is clean', () => {
  const cases: Array<{ compat: string; cluster: string; extra?: string; size: number }> = [
    { compat: '1.1', cluster: '64k', size: 32 * MiB },
    { compat: '0.10', cluster: '4k', size: 16 * MiB },
    { compat: '1.1', cluster: '2M', size: 32 * MiB },
    { compat: '1.1', cluster: '4k', extra: ',refcount_bits=1', size: 8 * MiB },
    { compat: '1.1', cluster: '4k', extra: ',refcount_bits=64', size: 8 * MiB },
    // 512-byte clusters: a one-cluster refcount table covers 8 MiB, so writing grows it.
    { compat: '1.1', cluster: '512', size: 24 * MiB },
  ];
  let seed = 1;
  for (const c of cases) {
    const dir = tmp();
    const file = path.join(dir, 'disk.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', '-o', `compat=${c.compat},cluster_size=${c.cluster}${c.extra ?? ''}`, file, String(c.size));
    const model = Buffer.alloc(c.size);
    exercise(file, model, seed++, 300, true);
    assertClean(file);
    assert.ok(qemuBytes(file).equals(model), `${JSON.stringify(c)}: QEMU reads what we wrote`);
    // Reopened: the same bytes (the metadata reached the file).
    const again = open(file, { readOnly: true });
    assert.ok(Buffer.from(readSync(again, 0, c.size)).equals(model));
    again.close();
  }
  // The 512-byte-cluster image really grew its refcount table.
  const dir = tmp();
  const file = path.join(dir, 'grow.qcow2');
  qemuImg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', file, '16M');
  const image = open(file);
  writeSync(image, 0, pattern(12 * MiB, 99));
  image.close();
  const info = JSON.parse(qemuImg('info', '--output=json', file)) as { 'actual-size': number };
  assert.ok(info['actual-size'] > 12 * MiB);
  assertClean(file);
  assert.ok(qemuBytes(file).subarray(0, 12 * MiB).equals(Buffer.from(pattern(12 * MiB, 99))));
});

test('writes over a backing file (raw and qcow2, relative names) copy on write and leave the backing file alone', () => {
  for (const backingFormat of ['raw', 'qcow2'] as const) {
    for (const compat of ['0.10', '1.1']) {
      const dir = tmp();
      const sub = path.join(dir, 'images');
      fs.mkdirSync(sub);
      const base = path.join(sub, `base.${backingFormat}`);
      qemuImg('create', '-q', '-f', backingFormat, base, '4M');
      const model = Buffer.from(pattern(4 * MiB, 7));
      fs.writeFileSync(path.join(dir, 'fill.raw'), model);
      qemuImg('convert', '-n', '-f', 'raw', '-O', backingFormat, path.join(dir, 'fill.raw'), base);
      const before = fs.readFileSync(base);
      const overlay = path.join(sub, 'top.qcow2');
      qemuImg('create', '-q', '-f', 'qcow2', '-o', `compat=${compat},cluster_size=4k`, '-b', `base.${backingFormat}`, '-F', backingFormat, overlay);
      // v2 cannot mark a cluster zero: a discard there shows the backing data again.
      const image = open(overlay);
      const rng = new Prng(compat === '1.1' ? 3 : 4);
      for (let i = 0; i < 200; i++) {
        const at = rng.below(8192) * 512, len = Math.min(4 * MiB - at, 512 * (1 + rng.below(40)));
        const data = pattern(len, i + 500);
        writeSync(image, at, data);
        model.set(data, at);
        if (compat === '1.1' && i % 20 === 19) {
          const d = rng.below(1024) * 4096;
          discardSync(image, d, 8192);
          model.fill(0, d, d + 8192);
        }
      }
      assert.ok(Buffer.from(readSync(image, 0, 4 * MiB)).equals(model));
      image.close();
      assertClean(overlay);
      assert.ok(qemuBytes(overlay).equals(model), `${backingFormat} ${compat}: QEMU sees our writes over the backing file`);
      assert.ok(fs.readFileSync(base).equals(before), 'the backing file is untouched');
    }
  }
});

test('an image compressed by qemu-img reads back, and writes over compressed clusters stay consistent', () => {
  const dir = tmp();
  const raw = path.join(dir, 'src.raw');
  const model = Buffer.alloc(4 * MiB);
  for (let i = 0; i < model.length; i += 4096) model.fill(i / 4096 & 0xff, i, i + 2048);
  fs.writeFileSync(raw, model);
  const file = path.join(dir, 'c.qcow2');
  qemuImg('convert', '-c', '-f', 'raw', '-O', 'qcow2', raw, file);
  const image = open(file);
  assert.ok(Buffer.from(readSync(image, 0, model.length)).equals(model));
  const data = pattern(70000, 5);
  writeSync(image, 100000, data);
  model.set(data, 100000);
  discardSync(image, MiB, MiB);
  model.fill(0, MiB, 2 * MiB);
  image.close();
  assertClean(file);
  assert.ok(qemuBytes(file).equals(model));
});

test('flush and close write the metadata: a second process (qemu-img) sees the data after a flush', () => {
  const dir = tmp();
  const file = path.join(dir, 'f.qcow2');
  qemuImg('create', '-q', '-f', 'qcow2', file, '4M');
  const image = open(file, { readOnly: false });
  const data = pattern(200000, 77);
  writeSync(image, 4096, data);
  flushSync(image);
  // The image is still open (and locked by flock, which qemu-img does not look at).
  const seen = qemuBytes(file);
  assert.ok(seen.subarray(4096, 4096 + data.length).equals(Buffer.from(data)));
  image.close();
  assertClean(file);
});

test('read-only images refuse writes and discards; the file is not changed', () => {
  const dir = tmp();
  const file = path.join(dir, 'ro.qcow2');
  qemuImg('create', '-q', '-f', 'qcow2', file, '1M');
  const before = fs.readFileSync(file);
  const image = open(file, { readOnly: true });
  assert.equal(image.readOnly, true);
  assert.throws(() => writeSync(image, 0, new Uint8Array(512)), /read-only/);
  assert.throws(() => discardSync(image, 0, 4096), /read-only/);
  image.close();
  assert.ok(fs.readFileSync(file).equals(before));
});

test('format: probed by magic, given explicitly, and checked', () => {
  const dir = tmp();
  const q = path.join(dir, 'a.qcow2');
  qemuImg('create', '-q', '-f', 'qcow2', q, '1M');
  fs.truncateSync(q, MiB); // whole 512-byte blocks, so it can also be opened as raw
  const r = path.join(dir, 'a.img');
  fs.writeFileSync(r, Buffer.alloc(MiB));
  assert.equal(probeImageFormat(q), 'qcow2');
  assert.equal(probeImageFormat(r), 'raw');
  const asRaw = open(q, { format: 'raw' });
  assert.ok(!(asRaw instanceof Qcow2Image));
  asRaw.close();
  assert.throws(() => open(r, { format: 'qcow2' }), (e: unknown) => e instanceof ImageError && e.problem === 'format' && e.message.includes(r));
  // A probed raw image cannot be turned into a qcow2 one by its guest.
  const probed = open(r);
  const magic = new Uint8Array(512);
  magic.set([0x51, 0x46, 0x49, 0xfb]);
  assert.throws(() => writeSync(probed, 0, magic), /format=raw/);
  writeSync(probed, 512, magic);
  probed.close();
  const explicit = open(r, { format: 'raw' });
  writeSync(explicit, 0, magic);
  explicit.close();
  // Config: --disk ...,format= and disks[].format.
  assert.equal(parseDisk('x.img,format=qcow2').format, 'qcow2');
  assert.equal(parseDisk('x.img').format, undefined);
  assert.throws(() => parseDisk('x.img,format=vmdk'), (e: unknown) => e instanceof ConfigError && /format must be "raw" or "qcow2"/.test(e.message));
  assert.throws(() => diskConfigFromJson({ path: 'x', format: 3 }, 'disks[0]'), /disks\[0\]\.format/);
});

test('locks: a qcow2 image (or its backing file, for writing) in use by another VM is refused', () => {
  const dir = tmp();
  const base = path.join(dir, 'base.qcow2');
  qemuImg('create', '-q', '-f', 'qcow2', base, '1M');
  const top = path.join(dir, 'top.qcow2');
  qemuImg('create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', top);
  const a = open(top);
  assert.throws(() => open(top), (e: unknown) => e instanceof ImageError && e.problem === 'locked' && e.message.includes(top));
  assert.throws(() => open(top, { readOnly: true }), /in use/);
  // The backing file is shared read-only: another reader may use it, a writer may not.
  const reader = open(base, { readOnly: true });
  reader.close();
  assert.throws(() => open(base), /in use/);
  a.close();
  open(top).close();
});

test('bad images: one ImageError naming the file and the problem, before any device', () => {
  const dir = tmp();
  const good = path.join(dir, 'good.qcow2');
  qemuImg('create', '-q', '-f', 'qcow2', good, '4M');
  qemuIo(good, 'write -P 1 0 64k');
  const bytes = fs.readFileSync(good);
  const variant = (name: string, edit: (b: Buffer) => Buffer | void): string => {
    const copy = Buffer.from(bytes);
    const file = path.join(dir, name);
    fs.writeFileSync(file, edit(copy) ?? copy);
    return file;
  };
  const cases: Array<[string, string, RegExp]> = [
    [path.join(dir, 'missing.qcow2'), 'missing', /does not exist/],
    [variant('truncated.qcow2', (b) => b.subarray(0, 40)), 'corrupt', /shorter than a qcow2 header/],
    [variant('short.qcow2', (b) => b.subarray(0, 65536 + 100)), 'corrupt', /outside the file/],
    [variant('cluster.qcow2', (b) => { b.writeUInt32BE(30, 20); }), 'corrupt', /cluster_bits is 30/],
    [variant('size.qcow2', (b) => { b.writeUInt32BE(0x7fffffff, 24); }), 'corrupt', /absurd/],
    [variant('l1.qcow2', (b) => { b.writeUInt32BE(0x10, 40); }), 'corrupt', /L1 table .*outside the file/],
    [variant('reftable.qcow2', (b) => { b.writeUInt32BE(0, 48); b.writeUInt32BE(0, 52); }), 'corrupt', /refcount table overlaps the header/],
    [variant('version.qcow2', (b) => { b.writeUInt32BE(4, 4); }), 'unsupported', /version 4/],
    [variant('crypt.qcow2', (b) => { b.writeUInt32BE(2, 32); }), 'unsupported', /encryption \(method LUKS\)/],
    [variant('datafile.qcow2', (b) => { b.writeUInt32BE(4, 76); }), 'unsupported', /external data file/],
    [variant('extl2.qcow2', (b) => { b.writeUInt32BE(16, 76); }), 'unsupported', /extended L2/],
    [variant('unknown.qcow2', (b) => { b.writeUInt32BE(0x100, 76); }), 'unsupported', /unknown incompatible feature/],
    [variant('dirty.qcow2', (b) => { b.writeUInt32BE(1, 76); }), 'corrupt', /dirty bit/],
    [variant('l1entry.qcow2', (b) => {
      const l1 = Number(b.readBigUInt64BE(40));
      b.writeBigUInt64BE(0x8000000000000000n | 0x7fff0000n, l1);
    }), 'corrupt', /L1 entry 0 points at/],
  ];
  for (const [file, problem, words] of cases) {
    assert.throws(() => open(file, { format: 'qcow2' }), (e: unknown) => {
      assert.ok(e instanceof ImageError, `${file}: ${String(e)}`);
      assert.equal(e.problem, problem, e.message);
      assert.match(e.message, words);
      assert.ok(e.message.includes(file), e.message);
      return true;
    });
  }
  // A dirty image may still be read.
  open(path.join(dir, 'dirty.qcow2'), { readOnly: true }).close();
  // A missing backing file names both files.
  const orphan = path.join(dir, 'orphan.qcow2');
  qemuImg('create', '-q', '-f', 'qcow2', '-u', '-b', 'gone.qcow2', '-F', 'qcow2', orphan, '1M');
  assert.throws(() => open(orphan), (e: unknown) => e instanceof ImageError && e.problem === 'backing'
    && e.message.includes(orphan) && e.message.includes(path.join(dir, 'gone.qcow2')) && /does not exist/.test(e.message));
  // A backing file that is its own backing file is a loop, not a hang.
  const loop = path.join(dir, 'loop.qcow2');
  qemuImg('create', '-q', '-f', 'qcow2', '-u', '-b', 'loop.qcow2', '-F', 'qcow2', loop, '1M');
  assert.throws(() => open(loop, { readOnly: true }), (e: unknown) => e instanceof ImageError && /deeper than|in use/.test(e.message));
});

test('a guest cluster that points outside the file fails that request only', () => {
  const dir = tmp();
  const file = path.join(dir, 'bad-l2.qcow2');
  qemuImg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', file, '4M');
  qemuIo(file, 'write -P 0x22 0 8k');
  const bytes = fs.readFileSync(file);
  const l1 = Number(bytes.readBigUInt64BE(40));
  const l2 = Number(bytes.readBigUInt64BE(l1) & 0x00fffffffffffe00n);
  bytes.writeBigUInt64BE(0x8000000000000000n | 0x40000000n, l2 + 8); // cluster 1 -> 1 GiB
  fs.writeFileSync(file, bytes);
  const image = open(file);
  assert.deepEqual(Array.from(readSync(image, 0, 4)), [0x22, 0x22, 0x22, 0x22]);
  assert.throws(() => readSync(image, 4096, 512), /outside/);
  assert.throws(() => readSync(image, 0, 8192), /outside/);
  assert.throws(() => writeSync(image, 4096, new Uint8Array(512)), /outside/);
  assert.equal(readSync(image, 8192, 512).length, 512, 'other clusters still work');
  image.close();
});

test('asynchronous completions come after the call returns', async () => {
  const dir = tmp();
  const file = path.join(dir, 'async.qcow2');
  qemuImg('create', '-q', '-f', 'qcow2', file, '1M');
  const image = openBlockImage(file, {});
  let returned = false;
  const done = new Promise<void>((resolve, reject) => image.write(0, new Uint8Array(512).fill(9), (e) => {
    if (!returned) reject(new Error('completed inline'));
    else if (e) reject(e);
    else resolve();
  }));
  returned = true;
  await done;
  const data = await new Promise<Uint8Array>((resolve, reject) => image.read(0, 512, (e, d) => (e ? reject(e) : resolve(d!))));
  assert.equal(data[511], 9);
  image.close();
  assertClean(file);
});

test('virtio-blk on a qcow2 disk from the config: the guest reads and writes it; a cluster outside the file is IOERR for that request only', () => {
  const dir = tmp();
  const file = path.join(dir, 'guest.qcow2');
  qemuImg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', file, '1M');
  qemuIo(file, 'write -P 0x22 0 8k');
  const bytes = fs.readFileSync(file);
  const l1 = Number(bytes.readBigUInt64BE(40));
  const l2 = Number(bytes.readBigUInt64BE(l1) & 0x00fffffffffffe00n);
  bytes.writeBigUInt64BE(0x8000000000000000n | 0x40000000n, l2 + 8); // guest cluster 1 -> 1 GiB
  fs.writeFileSync(file, bytes);
  const ctx = { config: { ...defaultConfig(), disks: [parseDisk(`${file},format=qcow2`)] }, statistics: privateStatistics(), interrupts: null, log: () => {} } as unknown as DeviceContext;
  const model = virtioBlkDevices(ctx)!;
  const device = (model.instance as VirtioBlk[])[0];
  const driver = new VirtioTestDriver(device);
  assert.ok(driver.negotiate(0, 1 << (VIRTIO_F.VERSION_1 - 32)));
  driver.setupQueue(0, 16, 0x10000);
  driver.driverOk();
  const HDR = 0x40000, DATA = 0x50000, STATUS = 0x60000;
  const request = (type: number, sector: number, length: number, writable: boolean): number => {
    const q = driver.queue(0);
    writeBlkHeader(driver.bus, HDR, type, sector);
    driver.bus.ram[STATUS] = 0xee;
    driver.writeDesc(q.desc, 0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
    if (length) {
      driver.writeDesc(q.desc, 1, DATA, length, VIRTQ_DESC_F_NEXT | (writable ? VIRTQ_DESC_F_WRITE : 0), 2);
      driver.writeDesc(q.desc, 2, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
    } else driver.writeDesc(q.desc, 1, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
    driver.submit(0, 0);
    return driver.bus.ram[STATUS];
  };
  assert.equal(request(VIRTIO_BLK_T.IN, 0, 4096, true), VIRTIO_BLK_S.OK);
  assert.ok(driver.bus.ram.subarray(DATA, DATA + 4096).every((b) => b === 0x22));
  assert.equal(request(VIRTIO_BLK_T.IN, 8, 512, true), VIRTIO_BLK_S.IOERR);
  driver.bus.ram.fill(0x6b, DATA, DATA + 8192);
  assert.equal(request(VIRTIO_BLK_T.OUT, 100, 8192, false), VIRTIO_BLK_S.OK);
  assert.equal(request(VIRTIO_BLK_T.FLUSH, 0, 0, false), VIRTIO_BLK_S.OK);
  driver.bus.ram.fill(0, DATA, DATA + 8192);
  assert.equal(request(VIRTIO_BLK_T.IN, 100, 8192, true), VIRTIO_BLK_S.OK);
  assert.ok(driver.bus.ram.subarray(DATA, DATA + 8192).every((b) => b === 0x6b));
  assert.equal(driver.status & VIRTIO_STATUS.NEEDS_RESET, 0);
  model.close?.();
  // QEMU sees the guest's write (qemu-io reads it back through its own qcow2 driver).
  qemuIo(file, 'read -P 0x6b 51200 8k');
});

test('lent to another thread and back (the disk I/O thread\'s way): metadata written back before, read again after; qemu-img check stays clean', () => {
  const dir = tmp();
  const base = path.join(dir, 'base.raw');
  const model = Buffer.from(pattern(4 * MiB, 11));
  fs.writeFileSync(base, model);
  const overlay = path.join(dir, 'top.qcow2');
  qemuImg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', '-b', 'base.raw', '-F', 'raw', overlay);
  const machine = open(overlay, { synchronous: true });
  const rng = new Prng(21);
  const scribble = (image: BlockBackend, seed: number) => {
    for (let i = 0; i < 60; i++) {
      const at = rng.below(8192) * 512, len = Math.min(4 * MiB - at, 512 * (1 + rng.below(24)));
      const data = pattern(len, seed + i);
      writeSync(image, at, data);
      model.set(data, at);
    }
  };
  for (let round = 0; round < 3; round++) {
    scribble(machine, 1000 * round); // dirty metadata cached here
    const lent = machine.lendable?.();
    assert.ok(lent && lent.format === 'qcow2');
    const runner = adoptBlockImage(libc.dup(lent.fd), { format: 'qcow2', readOnly: false, guardProbedFormat: false });
    assert.ok(Buffer.from(readSync(runner, 0, 4 * MiB)).equals(model), `round ${round}: the runner sees the machine's writes`);
    scribble(runner, 1000 * round + 500); // new clusters, L2 tables and refcounts from the other side
    runner.close(); // writes its metadata back, and closes its descriptor only
    machine.reclaimed?.(true);
    assert.ok(Buffer.from(readSync(machine, 0, 4 * MiB)).equals(model), `round ${round}: the machine sees the runner's writes`);
  }
  scribble(machine, 9000);
  machine.close();
  assertClean(overlay);
  assert.ok(qemuBytes(overlay).equals(model), 'QEMU reads what both sides wrote');

  // Taken back by force (the runner did not answer): reads go on, writes are refused.
  const again = open(overlay, { synchronous: true });
  assert.ok(again.lendable?.());
  again.reclaimed?.(false);
  assert.ok(Buffer.from(readSync(again, 0, 4 * MiB)).equals(model));
  assert.throws(() => writeSync(again, 0, new Uint8Array(512)), /did not hand it back in time/);
  again.close();
  assertClean(overlay);
});
