// x86 CPU state for entering a loaded program directly (no firmware): a flat GDT,
// identity-mapped page tables, 32-bit protected or 64-bit long mode segment and
// control registers, the LAPIC's LINT pins, boot MSRs and FPU defaults.
// Table builders are pure (bytes + address); the vCPU helpers apply them through KVM.
import type { CpuidEntry, KvmVcpu, MsrEntry, Segment, Sregs } from '../../../native';

/** Selectors the Linux boot protocol names __BOOT_CS and __BOOT_DS, and our TSS. */
export const BOOT_CS = 0x10;
export const BOOT_DS = 0x18;
export const BOOT_TSS = 0x20;

export type CpuMode = 'long' | 'protected';

const CR0_PE = 1n;
const CR0_ET = 1n << 4n;
const CR0_NE = 1n << 5n;
const CR0_PG = 1n << 31n;
const CR4_PAE = 1n << 5n;
const EFER_LME = 1n << 8n;
const EFER_LMA = 1n << 10n;

/** Fields of one segment descriptor, as the CPU reads them. */
export interface Descriptor {
  base: number;
  /** 20-bit limit, in pages when `granularity4k`. */
  limit: number;
  /** Type nibble: 0xb = execute/read code (accessed) or busy TSS, 0x3 = read/write data (accessed). */
  type: number;
  /** 1 for code/data, 0 for system descriptors (TSS). */
  codeOrData: boolean;
  long: boolean;
  defaultSize32: boolean;
  granularity4k: boolean;
}

const FLAT_CODE64: Descriptor = { base: 0, limit: 0xfffff, type: 0xb, codeOrData: true, long: true, defaultSize32: false, granularity4k: true };
const FLAT_CODE32: Descriptor = { base: 0, limit: 0xfffff, type: 0xb, codeOrData: true, long: false, defaultSize32: true, granularity4k: true };
const FLAT_DATA: Descriptor = { base: 0, limit: 0xfffff, type: 0x3, codeOrData: true, long: false, defaultSize32: true, granularity4k: true };
const BOOT_TSS_DESC: Descriptor = { base: 0, limit: 0x67, type: 0xb, codeOrData: false, long: false, defaultSize32: false, granularity4k: false };

/** Encodes a present, DPL 0 descriptor as the 8 bytes the GDT holds. */
export function encodeDescriptor(d: Descriptor): bigint {
  const base = BigInt(d.base >>> 0);
  const limit = BigInt(d.limit & 0xfffff);
  const access = BigInt((d.type & 0xf) | (d.codeOrData ? 0x10 : 0) | 0x80);
  const flags = BigInt((d.long ? 0x2 : 0) | (d.defaultSize32 ? 0x4 : 0) | (d.granularity4k ? 0x8 : 0));
  return (limit & 0xffffn)
    | ((base & 0xffffffn) << 16n)
    | (access << 40n)
    | ((limit >> 16n) << 48n)
    | (flags << 52n)
    | ((base >> 24n) << 56n);
}

/** The KVM segment register matching a GDT descriptor, so the hidden state equals what a far jump would load. */
export function segmentFor(selector: number, d: Descriptor): Segment {
  return {
    base: BigInt(d.base >>> 0),
    limit: d.granularity4k ? ((d.limit << 12) | 0xfff) >>> 0 : d.limit,
    selector,
    type: d.type,
    present: 1,
    dpl: 0,
    db: d.defaultSize32 ? 1 : 0,
    s: d.codeOrData ? 1 : 0,
    l: d.long ? 1 : 0,
    g: d.granularity4k ? 1 : 0,
    avl: 0,
    unusable: 0,
  };
}

function descriptorsFor(mode: CpuMode): Descriptor[] {
  return [mode === 'long' ? FLAT_CODE64 : FLAT_CODE32, FLAT_DATA, BOOT_TSS_DESC];
}

/** GDT: two null entries, then __BOOT_CS (0x10), __BOOT_DS (0x18) and a TSS (0x20). */
export function buildBootGdt(mode: CpuMode): Uint8Array {
  const gdt = Buffer.alloc(5 * 8);
  descriptorsFor(mode).forEach((d, i) => gdt.writeBigUInt64LE(encodeDescriptor(d), (i + 2) * 8));
  return new Uint8Array(gdt.buffer, gdt.byteOffset, gdt.length);
}

/**
 * Identity-mapped 4-level page tables with 2 MiB pages covering [0, gib GiB):
 * PML4 at `base`, the PDPT at base+4 KiB, then one page directory per GiB.
 */
export function buildIdentityPageTables(base: number, gib = 4): { address: number; bytes: Uint8Array } {
  if (base % 4096 !== 0) throw new Error(`page tables at 0x${base.toString(16)} are not page aligned`);
  if (!Number.isInteger(gib) || gib < 1 || gib > 512) throw new Error(`identity map of ${gib} GiB is out of range`);
  const PRESENT_RW = 0x3n;
  const PAGE_2M = 0x80n;
  const b = Buffer.alloc((2 + gib) * 4096);
  b.writeBigUInt64LE(BigInt(base + 4096) | PRESENT_RW, 0);
  for (let g = 0; g < gib; g++) {
    const pd = base + (2 + g) * 4096;
    b.writeBigUInt64LE(BigInt(pd) | PRESENT_RW, 4096 + g * 8);
    for (let e = 0; e < 512; e++) {
      const phys = (BigInt(g) << 30n) | (BigInt(e) << 21n);
      b.writeBigUInt64LE(phys | PAGE_2M | PRESENT_RW, (2 + g) * 4096 + e * 8);
    }
  }
  return { address: base, bytes: new Uint8Array(b.buffer, b.byteOffset, b.length) };
}

/**
 * Special registers for a flat 32-bit protected-mode (paging off) or 64-bit long-mode
 * entry. Starts from the vCPU's current state so KVM-owned fields (APIC base) stay.
 */
export function bootSregs(current: Sregs, opts: { mode: CpuMode; gdtBase: number; cr3?: number }): Sregs {
  const [code, data, tss] = descriptorsFor(opts.mode);
  const dataSeg = segmentFor(BOOT_DS, data);
  const s: Sregs = {
    ...current,
    cs: segmentFor(BOOT_CS, code),
    ds: dataSeg, es: { ...dataSeg }, fs: { ...dataSeg }, gs: { ...dataSeg }, ss: { ...dataSeg },
    tr: segmentFor(BOOT_TSS, tss),
    ldt: { ...current.ldt, selector: 0, base: 0n, limit: 0, type: 2, present: 0, s: 0, unusable: 1 },
    gdt: { base: BigInt(opts.gdtBase), limit: 5 * 8 - 1 },
    idt: { base: 0n, limit: 0 },
    cr0: CR0_PE | CR0_ET | CR0_NE,
    cr2: 0n,
    cr4: 0n,
    efer: 0n,
  };
  if (opts.mode === 'long') {
    if (opts.cr3 === undefined) throw new Error('long mode needs page tables');
    s.cr3 = BigInt(opts.cr3);
    s.cr4 = CR4_PAE;
    s.cr0 |= CR0_PG;
    s.efer = EFER_LME | EFER_LMA;
  } else {
    s.cr3 = 0n;
  }
  return s;
}

/** LVT entries inside struct kvm_lapic_state (the APIC register page). */
const LAPIC_LVT_LINT0 = 0x350;
const LAPIC_LVT_LINT1 = 0x360;
const DELIVERY_NMI = 4;
const DELIVERY_EXTINT = 7;

/** LINT0 = ExtINT (the 8259's output, virtual wire mode) and LINT1 = NMI, both unmasked. */
export function withLegacyLints(lapicState: Buffer): Buffer {
  const out = Buffer.from(lapicState);
  out.writeUInt32LE(DELIVERY_EXTINT << 8, LAPIC_LVT_LINT0);
  out.writeUInt32LE(DELIVERY_NMI << 8, LAPIC_LVT_LINT1);
  return out;
}

export const MSR = {
  IA32_SYSENTER_CS: 0x174,
  IA32_SYSENTER_ESP: 0x175,
  IA32_SYSENTER_EIP: 0x176,
  IA32_MISC_ENABLE: 0x1a0,
  MTRR_DEF_TYPE: 0x2ff,
  STAR: 0xc0000081,
  LSTAR: 0xc0000082,
  CSTAR: 0xc0000083,
  SYSCALL_MASK: 0xc0000084,
  KERNEL_GS_BASE: 0xc0000102,
} as const;

/**
 * MSRs a firmware would leave set: syscall MSRs cleared, fast strings on, and MTRRs
 * enabled with write-back as the default type (without it Linux maps RAM uncached).
 */
export const BOOT_MSRS: readonly MsrEntry[] = [
  { index: MSR.IA32_SYSENTER_CS, data: 0n },
  { index: MSR.IA32_SYSENTER_ESP, data: 0n },
  { index: MSR.IA32_SYSENTER_EIP, data: 0n },
  { index: MSR.STAR, data: 0n },
  { index: MSR.LSTAR, data: 0n },
  { index: MSR.CSTAR, data: 0n },
  { index: MSR.SYSCALL_MASK, data: 0n },
  { index: MSR.KERNEL_GS_BASE, data: 0n },
  { index: MSR.IA32_MISC_ENABLE, data: 1n },
  { index: MSR.MTRR_DEF_TYPE, data: (1n << 11n) | 6n },
];

/** Offsets in struct kvm_fpu. */
const FPU_FCW = 128;
const FPU_MXCSR = 408;

/** x87 control word and MXCSR as after FNINIT/reset: all exceptions masked. */
export function withFpuDefaults(fpu: Buffer): Buffer {
  const out = Buffer.from(fpu);
  out.writeUInt16LE(0x37f, FPU_FCW);
  out.writeUInt32LE(0x1f80, FPU_MXCSR);
  return out;
}

/**
 * Sets boot MSRs one by one; returns the indices KVM refused (a nested or unusual KVM
 * may not have every MSR), so the caller can log them instead of failing the boot.
 */
export function setBootMsrs(vcpu: KvmVcpu): number[] {
  const refused: number[] = [];
  for (const entry of BOOT_MSRS) {
    if (vcpu.setMsrs([entry]) !== 1) refused.push(entry.index);
  }
  return refused;
}

/** The BSP's LAPIC set up for legacy interrupts (as firmware leaves it). */
export function setupLegacyLapic(vcpu: KvmVcpu): void {
  vcpu.setLapic(withLegacyLints(vcpu.getLapic()));
}

/** Puts the vCPU at `entry` in the given mode with general registers `regs`. */
export function enterAt(vcpu: KvmVcpu, opts: {
  mode: CpuMode; gdtBase: number; cr3?: number; entry: number; stack: number; rsi: number;
}): void {
  vcpu.setSregs(bootSregs(vcpu.getSregs(), opts));
  vcpu.setFpu(withFpuDefaults(vcpu.getFpu()));
  // Boot protocol: rsi = boot_params; rbx, rdi, rbp zero; interrupts off (IF clear).
  vcpu.setRegs({ rip: BigInt(opts.entry), rsi: BigInt(opts.rsi), rsp: BigInt(opts.stack), rflags: 2n });
}

/** A CPUID feature bit: leaf (sub-leaf 0 unless given), register and bit. */
export interface CpuidFeature {
  name: string;
  leaf: number;
  subleaf?: number;
  register: 'eax' | 'ebx' | 'ecx' | 'edx';
  bit: number;
}

export const CPUID_FEATURES = {
  CX16: { name: 'cx16', leaf: 1, register: 'ecx', bit: 13 },
} as const satisfies Record<string, CpuidFeature>;

/** A copy of `entries` with `features` cleared. */
export function withoutCpuidFeatures(entries: CpuidEntry[], features: readonly CpuidFeature[]): CpuidEntry[] {
  return entries.map((e) => {
    const out = { ...e };
    for (const f of features) {
      if (e.function === f.leaf && e.index === (f.subleaf ?? 0)) out[f.register] = (out[f.register] & ~(1 << f.bit)) >>> 0;
    }
    return out;
  });
}
