// Fuzz: qcow2 images with random damage in the header, the header extensions, the L1 and L2
// tables and the refcount structures. Opening one either gives an ImageError or an image;
// every read, write, discard and flush on an image that opened completes with a value or an
// error, never an exception, and never reads past the end of the file (the file is wrapped so
// a read there is caught).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { openBlockImage } from '../../main/vmm/devices/block/open-image';
import { ImageError, type BlockBackend } from '../../main/vmm/devices/usb/storage/block-backend';
import { Prng, fuzzCases } from '../helpers/prng';

function seedImages(dir: string): Buffer[] {
  const out: Buffer[] = [];
  const specs: Array<[string, string]> = [['compat=1.1,cluster_size=4k', 'write -P 0x5a 0 20k'], ['compat=0.10,cluster_size=512', 'write -P 0x33 4k 3k'], ['compat=1.1,cluster_size=64k,refcount_bits=1', 'write -P 0x77 64k 64k']];
  specs.forEach(([opts, io], i) => {
    const file = path.join(dir, `seed${i}.qcow2`);
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', opts, file, '2M']);
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', io, file]);
    out.push(fs.readFileSync(file));
  });
  return out;
}

/** Damages a few fields a parser trusts: header words, table entries, random bytes. */
function damage(rng: Prng, seed: Buffer): Buffer {
  const b = Buffer.from(seed);
  const l1 = Number(b.readBigUInt64BE(40) & 0xffffffffn);
  const rt = Number(b.readBigUInt64BE(48) & 0xffffffffn);
  const interesting = [0, 1, 0x1ff, 0x200, 0x1000, 0xffffffff, 0x7fffffff, 0x80000000, 0x10000, 9, 21, 22, 64];
  for (let n = 1 + rng.below(4); n > 0; n--) {
    const value = rng.below(3) === 0 ? rng.next() : rng.pick(interesting);
    switch (rng.below(6)) {
      case 0: b.writeUInt32BE(value >>> 0, 4 * rng.below(26)); break; // header words, v3 fields, extensions
      case 1: if (l1 + 16 <= b.length) b.writeUInt32BE(value >>> 0, l1 + 4 * rng.below(4)); break;
      case 2: if (rt + 16 <= b.length) b.writeUInt32BE(value >>> 0, rt + 4 * rng.below(4)); break;
      case 3: { const at = rng.below(b.length); b[at] = rng.below(256); break; } // anywhere: L2 tables, refcount blocks
      case 4: return b.subarray(0, rng.below(b.length));
      default: b.writeUInt32BE(value >>> 0, 104 + 4 * rng.below(8)); break; // header extensions
    }
  }
  return b;
}

function call(run: (done: (e: Error | null) => void) => void): Error | null {
  let result: Error | null | undefined;
  run((e) => { result = e; });
  assert.notEqual(result, undefined, 'completes at once');
  return result ?? null;
}

test('damaged qcow2 images: an ImageError or an image whose requests fail cleanly', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-fuzz-'));
  const seeds = seedImages(dir);
  const rng = new Prng(0x9c0f2);
  const file = path.join(dir, 'fuzz.qcow2');
  const readSync = fs.readSync;
  let opened = 0, refused = 0, failedRequests = 0;
  const cases = fuzzCases(150);
  try {
    // Every read of the image file is checked against its size.
    (fs as { readSync: typeof fs.readSync }).readSync = ((fd: number, buffer: NodeJS.ArrayBufferView, offset: number, length: number, position: number | null) => {
      const size = fs.fstatSync(fd).size;
      if (typeof position === 'number' && position + length > size && position >= size) {
        throw new Error(`READ-PAST-EOF: ${length} bytes at ${position} of a ${size}-byte file`);
      }
      return readSync(fd, buffer, offset, length, position);
    }) as typeof fs.readSync;
    for (let i = 0; i < cases; i++) {
      fs.writeFileSync(file, damage(rng, rng.pick(seeds)));
      let image: BlockBackend;
      try {
        image = openBlockImage(file, { synchronous: true, format: 'qcow2', readOnly: rng.below(4) === 0 });
      } catch (error) {
        assert.ok(error instanceof ImageError, `case ${i}: ${String((error as Error).stack)}`);
        assert.ok(error.message.includes(file), error.message);
        assert.doesNotMatch(error.message, /READ-PAST-EOF/, `case ${i}: ${error.message}`);
        refused++;
        continue;
      }
      opened++;
      for (let k = 0; k < 12; k++) {
        const at = rng.below(image.size / 512 + 2) * 512, len = 512 * (1 + rng.below(40));
        let e: Error | null;
        switch (rng.below(4)) {
          case 0: case 1: e = call((d) => image.read(at, len, (err) => d(err))); break;
          case 2: e = call((d) => image.write(at, new Uint8Array(len).fill(k), d)); break;
          default: e = call((d) => image.discard!(at, len, d)); break;
        }
        if (e) {
          failedRequests++;
          assert.doesNotMatch(e.message, /READ-PAST-EOF/, `case ${i}: ${e.message}`);
        }
      }
      const e = call((d) => image.flush(d));
      if (e) assert.doesNotMatch(e.message, /READ-PAST-EOF/);
      try {
        image.close();
      } catch (error) {
        // close writes back what flush could not; a damaged image may refuse, but as an Error.
        assert.ok(error instanceof Error);
      }
    }
  } finally {
    (fs as { readSync: typeof fs.readSync }).readSync = readSync;
  }
  assert.ok(opened > 0 && refused > 0, `both outcomes seen (${opened} opened, ${refused} refused, ${failedRequests} failed requests)`);
});
