import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KernelImageError, LINUX_BOOT_LAYOUT, loadLinux, parseKernelImage, type LinuxLoadOptions } from '../../main/vmm/boot/linux';
import { buildE820 } from '../../main/vmm/platform/e820';
import { GuestMemory } from '../../main/vmm/memory/guest-memory';
import { makeBzImage, makeElfKernel, ramOf } from './linux-loader-images';

const MiB = 0x100000;
const L = LINUX_BOOT_LAYOUT;

function load(memory: GuestMemory, kernel: Uint8Array, extra: Partial<LinuxLoadOptions> = {}) {
  return loadLinux(memory, { kernel, kernelName: 'vmlinuz-test', cmdline: 'console=ttyS0', cpus: 1, ...extra });
}

function zeroPage(memory: GuestMemory): Buffer {
  return Buffer.from(memory.read(L.ZERO_PAGE, 0x1000));
}

function cString(memory: GuestMemory, at: number): string {
  const bytes = memory.read(at, 4096);
  return Buffer.from(bytes.subarray(0, bytes.indexOf(0))).toString('utf8');
}

function throwsClean(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof KernelImageError, `expected KernelImageError, got ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
    assert.match(e.message, pattern);
    return true;
  });
}

test('a 64-bit bzImage lands at pref_address and is entered 0x200 past it in long mode', () => {
  const memory = ramOf(64 * MiB);
  const payload = Buffer.alloc(8192, 0x5a);
  const image = makeBzImage({ payload, pref: 16 * MiB, initSize: 4 * MiB });
  const r = load(memory, image);
  assert.equal(r.format, 'bzImage');
  assert.equal(r.mode, 'long');
  assert.equal(r.kernelStart, 16 * MiB);
  assert.equal(r.entry, 16 * MiB + 0x200);
  assert.deepEqual(Buffer.from(memory.read(16 * MiB, payload.length)), payload);
  // Nothing of the setup sectors is loaded: the byte before the kernel stays zero.
  assert.equal(memory.read(16 * MiB - 1, 1)[0], 0);
});

test('the zero page carries the image setup header and what the loader filled in', () => {
  const memory = ramOf(64 * MiB);
  const image = makeBzImage({ pref: 16 * MiB, initSize: 4 * MiB, cmdlineSize: 255 });
  // Garbage after the header must not be copied (the header ends at 0x202 + byte 0x201).
  image.fill(0xee, 0x270, 0x400);
  load(memory, image, { cmdline: 'console=ttyS0 root=/dev/vda' });
  const zp = zeroPage(memory);
  assert.equal(zp.readUInt16LE(0x1fe), 0xaa55);
  assert.equal(zp.toString('latin1', 0x202, 0x206), 'HdrS');
  assert.equal(zp.readUInt16LE(0x206), 0x20f);
  assert.equal(zp[0x1f1], 3, 'setup_sects copied');
  assert.equal(zp[0x210], 0xff, 'type_of_loader');
  assert.equal(zp[0x211] & 0x81, 0x81, 'LOADED_HIGH and CAN_USE_HEAP');
  assert.equal(zp.readUInt32LE(0x214), 16 * MiB, 'code32_start = load address');
  assert.equal(zp.readUInt32LE(0x228), L.CMDLINE, 'cmd_line_ptr');
  assert.equal(zp.readUInt32LE(0x0c8), 0, 'ext_cmd_line_ptr');
  assert.equal(cString(memory, L.CMDLINE), 'console=ttyS0 root=/dev/vda');
  assert.equal(zp.readUInt32LE(0x218), 0, 'no initrd');
  assert.equal(zp.readBigUInt64LE(0x070), 0xe0000n, 'acpi_rsdp_addr');
  assert.ok(zp.subarray(0x270, 0x290).every((b) => b === 0), 'bytes past the setup header are not copied');
  assert.equal(zp[0x1ef], 0, 'sentinel stays zero');
});

test('the e820 table in the zero page is the machine memory map', () => {
  const memory = ramOf(64 * MiB);
  load(memory, makeBzImage({ pref: 16 * MiB, initSize: 4 * MiB }));
  const zp = zeroPage(memory);
  const expected = buildE820(memory);
  assert.equal(zp[0x1e8], expected.length);
  const table = expected.map((_, i) => ({
    addr: Number(zp.readBigUInt64LE(0x2d0 + i * 20)),
    size: Number(zp.readBigUInt64LE(0x2d0 + i * 20 + 8)),
    type: zp.readUInt32LE(0x2d0 + i * 20 + 16),
  }));
  assert.deepEqual(table, expected);
  assert.deepEqual(table[0], { addr: 0, size: 0x9fc00, type: 1 });
  assert.ok(table.some((e) => e.addr === MiB && e.size === 63 * MiB && e.type === 1));
});

test('the initrd goes page aligned at the top of low RAM, below initrd_addr_max', () => {
  const memory = ramOf(64 * MiB);
  const initrd = Buffer.alloc(3 * 4096 + 100, 0x42);
  const r = load(memory, makeBzImage({ pref: 16 * MiB, initSize: 4 * MiB }), { initrd, initrdName: 'initrd.img' });
  const top = 64 * MiB;
  assert.ok(r.initrd);
  assert.equal(r.initrd.address % 4096, 0);
  assert.ok(r.initrd.address + initrd.length <= top);
  assert.ok(top - (r.initrd.address + initrd.length) < 4096, 'as high as possible');
  assert.deepEqual(Buffer.from(memory.read(r.initrd.address, initrd.length)), initrd);
  const zp = zeroPage(memory);
  assert.equal(zp.readUInt32LE(0x218), r.initrd.address);
  assert.equal(zp.readUInt32LE(0x21c), initrd.length);

  const capped = ramOf(64 * MiB);
  const r2 = load(capped, makeBzImage({ pref: 16 * MiB, initSize: 4 * MiB, initrdAddrMax: 32 * MiB - 1 }), { initrd });
  assert.ok(r2.initrd && r2.initrd.address + initrd.length <= 32 * MiB);
  assert.ok(r2.initrd.address > 31 * MiB);
});

test('a relocatable kernel whose pref_address does not fit goes at 1 MiB rounded up to its alignment', () => {
  const memory = ramOf(16 * MiB);
  const r = load(memory, makeBzImage({ pref: 16 * MiB, initSize: 6 * MiB, alignment: 2 * MiB }));
  assert.equal(r.kernelStart, 2 * MiB);
  assert.equal(r.entry, 2 * MiB + 0x200);
});

test('a kernel that is not 64-bit (no XLF_KERNEL_64, or protocol < 2.12) is entered at its 32-bit entry point', () => {
  for (const image of [makeBzImage({ xloadflags: 0 }), makeBzImage({ version: 0x20b, xloadflags: 1 })]) {
    const memory = ramOf(64 * MiB);
    const r = load(memory, image);
    assert.equal(r.mode, 'protected');
    assert.equal(r.entry, r.kernelStart);
    assert.equal(zeroPage(memory).readUInt32LE(0x214), r.kernelStart);
  }
});

test('protocol 2.06 is accepted (no pref_address: loaded at 1 MiB); older versions are refused by name', () => {
  const memory = ramOf(64 * MiB);
  const r = load(memory, makeBzImage({ version: 0x206, relocatable: false }));
  assert.equal(r.kernelStart, MiB);
  throwsClean(() => load(ramOf(64 * MiB), makeBzImage({ version: 0x205 })), /vmlinuz-test uses boot protocol 2\.05; Porthole needs 2\.06 or newer/);
  throwsClean(() => load(ramOf(64 * MiB), makeBzImage({ version: 0x200 })), /boot protocol 2\.00/);
});

test('bad bzImages give one clear sentence', () => {
  const memory = ramOf(32 * MiB);
  throwsClean(() => load(memory, Buffer.alloc(4096)), /^kernel vmlinuz-test is not a bzImage or ELF vmlinux$/);
  throwsClean(() => load(memory, Buffer.from('#!/bin/sh\necho hi\n')), /is not a bzImage or ELF vmlinux/);
  const noMagic = makeBzImage({});
  noMagic.write('HdrX', 0x202, 'latin1');
  throwsClean(() => load(memory, noMagic), /is not a bzImage or ELF vmlinux/);
  throwsClean(() => load(memory, makeBzImage({}).subarray(0, 0x20a)), /is truncated/);
  throwsClean(() => load(memory, makeBzImage({ setupSects: 60 }).subarray(0, 61 * 512)), /setup sectors leave no protected-mode kernel/);
  throwsClean(() => load(memory, makeBzImage({ loadflags: 0 })), /is a zImage/);
  throwsClean(() => load(memory, makeBzImage({ alignment: 3 * MiB })), /invalid kernel_alignment 0x300000/);
  throwsClean(() => load(memory, makeBzImage({ pref: 16 * MiB, initSize: 40 * MiB })), /needs 40 MiB .* give the VM more memory/);
});

test('command line and initrd limits are enforced with clear messages', () => {
  const image = makeBzImage({ pref: 16 * MiB, initSize: 4 * MiB, cmdlineSize: 16 });
  throwsClean(() => load(ramOf(64 * MiB), image, { cmdline: 'x'.repeat(17) }), /command line is 17 bytes; kernel vmlinuz-test accepts at most 16/);
  load(ramOf(64 * MiB), image, { cmdline: 'x'.repeat(16) });
  throwsClean(() => load(ramOf(64 * MiB), image, { cmdline: 'a\0b' }), /NUL/);
  throwsClean(() => load(ramOf(64 * MiB), image, { initrd: Buffer.alloc(45 * MiB), initrdName: 'big.img' }),
    /^initrd big\.img \(47185920 bytes\) does not fit below 0x4000000 above the kernel \(which ends at 0x1400000\)/);
  throwsClean(() => load(ramOf(64 * MiB), image, { initrd: Buffer.alloc(0), initrdName: 'empty.img' }), /initrd empty\.img is empty/);
});

test('an ELF vmlinux: segments at p_paddr, bss zeroed, virtual e_entry made physical, synthetic header', () => {
  const memory = ramOf(64 * MiB);
  memory.slice(0, 64 * MiB, true).fill(0xaa);
  const text = Buffer.alloc(0x3000, 0x11);
  const data = Buffer.alloc(0x1000, 0x22);
  const image = makeElfKernel({
    entry: 0xffffffff81000100n,
    segments: [
      { vaddr: 0xffffffff81000000n, paddr: 16 * MiB, data: text, memsz: text.length },
      { vaddr: 0xffffffff82000000n, paddr: 32 * MiB, data, memsz: data.length + 0x2000 },
    ],
  });
  const r = load(memory, image, { cmdline: 'quiet' });
  assert.equal(r.format, 'elf');
  assert.equal(r.mode, 'long');
  assert.equal(r.entry, 16 * MiB + 0x100);
  assert.equal(r.kernelStart, 16 * MiB);
  assert.equal(r.kernelEnd, 32 * MiB + 0x3000);
  assert.deepEqual(Buffer.from(memory.read(16 * MiB, text.length)), text);
  assert.deepEqual(Buffer.from(memory.read(32 * MiB, data.length)), data);
  assert.ok(memory.read(32 * MiB + 0x1000, 0x2000).every((b) => b === 0), 'bss is zeroed');
  assert.equal(memory.read(32 * MiB + 0x3000, 1)[0], 0xaa, 'nothing past the segment is touched');
  const zp = zeroPage(memory);
  assert.equal(zp.readUInt16LE(0x1fe), 0xaa55);
  assert.equal(zp.toString('latin1', 0x202, 0x206), 'HdrS');
  assert.equal(zp.readUInt16LE(0x206), 0x20f);
  assert.equal(zp[0x210], 0xff);
  assert.equal(zp.readUInt32LE(0x228), L.CMDLINE);
  assert.equal(zp.readUInt32LE(0x238), 2047, 'cmdline_size');
  assert.equal(cString(memory, L.CMDLINE), 'quiet');
  assert.ok(zp[0x1e8] > 0, 'e820 entries');
  // Fields the loader does not own are zero, not left-over guest memory.
  assert.ok(zp.subarray(0x000, 0x070).every((b) => b === 0));
});

test('an ELF whose e_entry is already physical keeps it', () => {
  const image = makeElfKernel({
    entry: BigInt(16 * MiB + 0x40),
    segments: [{ vaddr: 0xffffffff81000000n, paddr: 16 * MiB, data: Buffer.alloc(0x1000), memsz: 0x1000 }],
  });
  assert.equal(load(ramOf(64 * MiB), image).entry, 16 * MiB + 0x40);
});

test('bad ELF kernels give one clear sentence', () => {
  const seg = { vaddr: 0xffffffff81000000n, paddr: 16 * MiB, data: Buffer.alloc(0x1000), memsz: 0x1000 };
  const memory = ramOf(32 * MiB);
  throwsClean(() => load(memory, makeElfKernel({ entry: 0x1234n, segments: [seg] })), /entry point 0x1234 is not inside any loadable segment/);
  throwsClean(() => load(memory, makeElfKernel({ entry: seg.vaddr, segments: [{ ...seg, paddr: 31 * MiB, memsz: 2 * MiB }] })),
    /segment at 0x1f00000 \(2097152 bytes\) is outside guest RAM above 1 MiB/);
  throwsClean(() => load(memory, makeElfKernel({ entry: BigInt(0x8000), segments: [{ ...seg, paddr: 0x8000 }] })), /outside guest RAM above 1 MiB/);
  throwsClean(() => load(memory, makeElfKernel({ entry: seg.vaddr, segments: [{ ...seg, memsz: 0x10 }] })), /more file bytes \(4096\) than memory bytes \(16\)/);
  throwsClean(() => load(memory, makeElfKernel({ entry: seg.vaddr, segments: [seg], elfClass: 1 })), /ELF file for another machine \(class 1, machine 62\)/);
  throwsClean(() => load(memory, makeElfKernel({ entry: seg.vaddr, segments: [seg], machine: 183 })), /machine 183\); only x86_64/);
  throwsClean(() => load(memory, makeElfKernel({ entry: seg.vaddr, segments: [seg], type: 3 })), /not an executable vmlinux/);
  throwsClean(() => load(memory, makeElfKernel({ entry: seg.vaddr, segments: [] })), /malformed program header table|no loadable segments/);
  throwsClean(() => load(memory, makeElfKernel({ entry: seg.vaddr, segments: [seg] }).subarray(0, 0x800)), /is truncated: segment 0 needs bytes up to 0x2000/);
  throwsClean(() => load(memory, makeElfKernel({ entry: seg.vaddr, segments: [seg] }).subarray(0, 0x50)), /is truncated/);
});

test('loader structures: GDT, identity page tables, MP and ACPI tables are in low memory', () => {
  const memory = ramOf(64 * MiB);
  const r = load(memory, makeBzImage({ pref: 16 * MiB, initSize: 4 * MiB }), { cpus: 2 });
  const gdt = Buffer.from(memory.read(r.gdt, 40));
  assert.equal(gdt.readBigUInt64LE(0x10), 0x00af9b000000ffffn, '__BOOT_CS: flat 64-bit code');
  assert.equal(gdt.readBigUInt64LE(0x18), 0x00cf93000000ffffn, '__BOOT_DS: flat data');
  // Walk the page tables for a few addresses, including the LAPIC page.
  for (const addr of [0, 0x7000, 16 * MiB + 0x200, 0xfee00000, 0xfffff000]) {
    const pml4e = memory.readU64(r.pageTables) & ~0xfffn;
    const pdpte = memory.readU64(Number(pml4e) + Math.floor(addr / 2 ** 30) * 8);
    const pde = memory.readU64(Number(pdpte & ~0xfffn) + ((addr >>> 21) & 511) * 8);
    assert.equal(pde & 0x83n, 0x83n, 'present, writable, 2 MiB page');
    assert.equal(Number(pde & ~0x1fffffn) + (addr % (2 * MiB)), addr, `identity at 0x${addr.toString(16)}`);
  }
  assert.equal(Buffer.from(memory.read(r.mpTable, 4)).toString('latin1'), '_MP_');
  assert.equal(Buffer.from(memory.read(r.rsdp, 8)).toString('latin1'), 'RSD PTR ');
  // A 32-bit entry needs no page tables but gets a 32-bit code segment.
  const m32 = ramOf(64 * MiB);
  const r32 = load(m32, makeBzImage({ xloadflags: 0 }));
  assert.equal(Buffer.from(m32.read(r32.gdt, 40)).readBigUInt64LE(0x10), 0x00cf9b000000ffffn);
  assert.equal(m32.readU64(r32.pageTables), 0n);
});

test('parseKernelImage recognises both formats without loading', () => {
  assert.equal(parseKernelImage(makeBzImage({}), 'a').format, 'bzImage');
  const elf = makeElfKernel({ entry: BigInt(16 * MiB), segments: [{ vaddr: 0n, paddr: 16 * MiB, data: Buffer.alloc(16), memsz: 16 }] });
  assert.equal(parseKernelImage(elf, 'b').format, 'elf');
});
