import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Segment, Sregs } from '../../native';
import {
  BOOT_CS, BOOT_DS, BOOT_MSRS, BOOT_TSS, bootSregs, buildBootGdt, buildIdentityPageTables, CPUID_FEATURES, encodeDescriptor, MSR,
  withFpuDefaults, withLegacyLints, withoutCpuidFeatures,
} from '../../main/vmm/boot/x86-setup';

function resetSegment(selector: number): Segment {
  return { base: 0xf0000n, limit: 0xffff, selector, type: 3, present: 1, dpl: 0, db: 0, s: 1, l: 0, g: 0, avl: 0, unusable: 0 };
}

/** What KVM reports for a freshly created vCPU (real mode, BSP APIC base). */
function resetSregs(): Sregs {
  return {
    cs: resetSegment(0xf000), ds: resetSegment(0), es: resetSegment(0), fs: resetSegment(0), gs: resetSegment(0), ss: resetSegment(0),
    tr: { ...resetSegment(0), type: 11, s: 0 }, ldt: { ...resetSegment(0), type: 2, s: 0 },
    gdt: { base: 0n, limit: 0xffff }, idt: { base: 0n, limit: 0xffff },
    cr0: 0x60000010n, cr2: 0n, cr3: 0n, cr4: 0n, cr8: 0n, efer: 0n, apicBase: 0xfee00900n, interruptBitmap: [0n, 0n, 0n, 0n],
  };
}

test('GDT descriptors encode flat segments exactly as the CPU expects', () => {
  const gdt = Buffer.from(buildBootGdt('long'));
  assert.equal(gdt.length, 40);
  assert.equal(gdt.readBigUInt64LE(0), 0n);
  assert.equal(gdt.readBigUInt64LE(8), 0n);
  assert.equal(gdt.readBigUInt64LE(BOOT_CS), 0x00af9b000000ffffn); // G, L, P, code exec/read accessed
  assert.equal(gdt.readBigUInt64LE(BOOT_DS), 0x00cf93000000ffffn); // G, D/B, P, data read/write accessed
  assert.equal(gdt.readBigUInt64LE(BOOT_TSS), 0x00008b0000000067n); // busy 32-bit TSS, 104 bytes
  assert.equal(Buffer.from(buildBootGdt('protected')).readBigUInt64LE(BOOT_CS), 0x00cf9b000000ffffn);
  assert.equal(encodeDescriptor({ base: 0x12345678, limit: 0xabcde, type: 3, codeOrData: true, long: false, defaultSize32: true, granularity4k: false }),
    0x124a93345678bcden);
});

test('long-mode state: paging with PAE and LME/LMA, 64-bit CS, flat data segments, APIC base kept', () => {
  const s = bootSregs(resetSregs(), { mode: 'long', gdtBase: 0x500, cr3: 0x9000 });
  assert.equal(s.cr0, 0x80000031n); // PG | NE | ET | PE (caches enabled)
  assert.equal(s.cr3, 0x9000n);
  assert.equal(s.cr4, 0x20n);
  assert.equal(s.efer, 0x500n);
  assert.deepEqual([s.cs.selector, s.cs.l, s.cs.db, s.cs.type, s.cs.s, s.cs.present, s.cs.g], [BOOT_CS, 1, 0, 0xb, 1, 1, 1]);
  for (const seg of [s.ds, s.es, s.fs, s.gs, s.ss]) {
    assert.deepEqual([seg.selector, seg.base, seg.limit, seg.type, seg.db, seg.l], [BOOT_DS, 0n, 0xffffffff, 3, 1, 0]);
  }
  assert.deepEqual([s.tr.selector, s.tr.type, s.tr.s, s.tr.limit], [BOOT_TSS, 0xb, 0, 0x67]);
  assert.equal(s.ldt.unusable, 1);
  assert.deepEqual(s.gdt, { base: 0x500n, limit: 39 });
  assert.equal(s.apicBase, 0xfee00900n);
  assert.throws(() => bootSregs(resetSregs(), { mode: 'long', gdtBase: 0x500 }), /page tables/);
});

test('32-bit protected-mode state: no paging, 32-bit flat CS', () => {
  const s = bootSregs(resetSregs(), { mode: 'protected', gdtBase: 0x500 });
  assert.equal(s.cr0, 0x31n);
  assert.equal(s.efer, 0n);
  assert.equal(s.cr4, 0n);
  assert.deepEqual([s.cs.selector, s.cs.l, s.cs.db, s.cs.limit], [BOOT_CS, 0, 1, 0xffffffff]);
});

test('identity page tables map each 2 MiB page of the first N GiB to itself', () => {
  const { address, bytes } = buildIdentityPageTables(0x9000, 4);
  assert.equal(address, 0x9000);
  assert.equal(bytes.length, 6 * 4096);
  const b = Buffer.from(bytes);
  assert.equal(b.readBigUInt64LE(0), 0xa003n);
  for (let g = 0; g < 4; g++) assert.equal(b.readBigUInt64LE(4096 + g * 8), BigInt(0xb000 + g * 0x1000) | 3n);
  assert.equal(b.readBigUInt64LE(4096 + 4 * 8), 0n, 'nothing past 4 GiB');
  assert.equal(b.readBigUInt64LE(2 * 4096), 0x83n);
  assert.equal(b.readBigUInt64LE(5 * 4096 + 511 * 8), 0xffe00083n);
  assert.throws(() => buildIdentityPageTables(0x9001), /not page aligned/);
  assert.throws(() => buildIdentityPageTables(0x9000, 0), /out of range/);
});

test('LAPIC: LINT0 becomes ExtINT and LINT1 NMI, both unmasked; other registers untouched', () => {
  const state = Buffer.alloc(1024, 0x11);
  state.writeUInt32LE(0x10000, 0x350);
  state.writeUInt32LE(0x10000, 0x360);
  const out = withLegacyLints(state);
  assert.equal(out.readUInt32LE(0x350), 0x700);
  assert.equal(out.readUInt32LE(0x360), 0x400);
  assert.equal(out[0x20], 0x11);
  assert.equal(state.readUInt32LE(0x350), 0x10000, 'input not modified');
});

test('FPU defaults and boot MSRs', () => {
  const fpu = withFpuDefaults(Buffer.alloc(416));
  assert.equal(fpu.readUInt16LE(128), 0x37f);
  assert.equal(fpu.readUInt32LE(408), 0x1f80);
  const mtrr = BOOT_MSRS.find((m) => m.index === MSR.MTRR_DEF_TYPE);
  assert.equal(mtrr?.data, 0x806n, 'MTRRs enabled, default write-back');
  assert.equal(BOOT_MSRS.find((m) => m.index === MSR.IA32_MISC_ENABLE)?.data, 1n, 'fast strings');
});

test('CPUID features are cleared only in their own leaf and register', () => {
  const entries = [
    { function: 1, index: 0, flags: 0, eax: 1, ebx: 2, ecx: 0xffffffff, edx: 0xffffffff },
    { function: 7, index: 0, flags: 1, eax: 0, ebx: 0xffffffff, ecx: 0xffffffff, edx: 0 },
  ];
  const out = withoutCpuidFeatures(entries, [CPUID_FEATURES.CX16]);
  assert.equal(out[0].ecx, 0xffffdfff);
  assert.equal(out[0].edx, 0xffffffff);
  assert.deepEqual(out[1], entries[1]);
  assert.equal(entries[0].ecx, 0xffffffff, 'input not modified');
});
