import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { closeKernelInput, KernelImageError, loadLinux, readKernelInput } from '../../main/vmm/boot/linux';
import { makeBzImage, makeElfKernel, ramOf } from './linux-loader-images';

const MiB = 1024 * 1024;

function tempFile(bytes: Uint8Array): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-kernel-file-'));
  const file = path.join(dir, 'vmlinux');
  fs.writeFileSync(file, bytes);
  return file;
}

// Segments past the first 64 KiB are read from the file, not from the prefetched bytes.
const text = Buffer.alloc(0x30000);
for (let i = 0; i < text.length; i++) text[i] = (i * 7 + 3) & 0xff;
const data = Buffer.alloc(0x21000, 0x5c);
const elf = makeElfKernel({
  entry: 0xffffffff81000000n,
  segments: [
    { vaddr: 0xffffffff81000000n, paddr: 16 * MiB, data: text, memsz: text.length },
    { vaddr: 0xffffffff82000000n, paddr: 32 * MiB, data, memsz: data.length + 0x3000 },
  ],
});

test('an ELF vmlinux is read up to its headers, then its segments go from the file straight into guest RAM', async () => {
  const input = await readKernelInput(tempFile(elf));
  try {
    assert.ok(input.file, 'the ELF file is kept open');
    assert.equal(input.file.size, elf.length);
    assert.ok(input.bytes.length < elf.length, 'only the start is read ahead');
    const memory = ramOf(64 * MiB);
    memory.slice(0, 64 * MiB, true).fill(0xaa);
    loadLinux(memory, { kernel: input.bytes, kernelFile: input.file, kernelName: 'vmlinux', cmdline: '', cpus: 1 });
    assert.deepEqual(Buffer.from(memory.read(16 * MiB, text.length)), text);
    assert.deepEqual(Buffer.from(memory.read(32 * MiB, data.length)), data);
    assert.ok(memory.read(32 * MiB + data.length, 0x3000).every((b) => b === 0), 'bss is zeroed');
  } finally {
    closeKernelInput(input);
  }
});

test('a bzImage is read whole and keeps no file open', async () => {
  const image = makeBzImage({});
  const input = await readKernelInput(tempFile(image));
  assert.equal(input.file, undefined);
  assert.deepEqual(Buffer.from(input.bytes), image);
});

test('an ELF file cut short after its headers were read is a clear error, not a partial load', async () => {
  const file = tempFile(elf);
  const input = await readKernelInput(file);
  try {
    fs.truncateSync(file, elf.length - 0x1000);
    const memory = ramOf(64 * MiB);
    assert.throws(
      () => loadLinux(memory, { kernel: input.bytes, kernelFile: input.file, kernelName: 'vmlinux', cmdline: '', cpus: 1 }),
      (e: unknown) => e instanceof KernelImageError && /kernel vmlinux is truncated: it ended at 0x/.test(e.message),
    );
  } finally {
    closeKernelInput(input);
  }
});

test('an ELF file whose segment runs past its end is refused from its headers', async () => {
  const input = await readKernelInput(tempFile(elf.subarray(0, elf.length - 0x1000)));
  try {
    assert.throws(
      () => loadLinux(ramOf(64 * MiB), { kernel: input.bytes, kernelFile: input.file, kernelName: 'vmlinux', cmdline: '', cpus: 1 }),
      (e: unknown) => e instanceof KernelImageError && /kernel vmlinux is truncated: segment 1 needs bytes up to/.test(e.message),
    );
  } finally {
    closeKernelInput(input);
  }
});
