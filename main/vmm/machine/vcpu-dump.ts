// A readable snapshot of one stopped vCPU, for finding out where a guest that makes no
// more exits is spinning: registers, control registers, the LAPIC's interrupt state and the
// words on its stack that look like kernel text addresses (a poor man's backtrace).
// Runs on the thread that owns the vCPU while it is outside KVM_RUN.
import type { KvmVcpu } from '../../../native/kvm';
import type { GuestMemory } from '../memory/guest-memory';

/** LAPIC register offsets inside struct kvm_lapic_state (the APIC page). */
const APIC_TPR = 0x80;
const APIC_PPR = 0xa0;
const APIC_ISR = 0x100;
const APIC_IRR = 0x200;
const APIC_LVT_TIMER = 0x320;
const APIC_LVT_LINT0 = 0x350;
const APIC_TIMER_CURRENT = 0x390;

const hex = (v: bigint | number) => `0x${v.toString(16)}`;
const CR0_PG = 1n << 31n;
const MP_STATE_NAMES = ['runnable', 'uninitialized', 'init-received', 'halted', 'sipi-received'];

/** The vectors set in a 256-bit LAPIC register (eight 32-bit words, 16 bytes apart). */
export function apicVectors(page: Buffer, offset: number): number[] {
  const vectors: number[] = [];
  for (let word = 0; word < 8; word++) {
    const bits = page.readUInt32LE(offset + word * 16);
    for (let bit = 0; bit < 32; bit++) if (bits & (1 << bit)) vectors.push(word * 32 + bit);
  }
  return vectors;
}

const PTE_PRESENT = 1n;
const PTE_LARGE = 1n << 7n;
const PTE_ADDR = 0x000ffffffffff000n;

/**
 * Translates a guest virtual address through 4-level paging rooted at `cr3`, or returns
 * null if a level is not present or the table lies outside guest RAM.
 */
export function translate(memory: GuestMemory, cr3: bigint, virt: bigint): number | null {
  let table = cr3 & PTE_ADDR;
  for (let level = 4; level >= 1; level--) {
    const shift = 12n + 9n * BigInt(level - 1);
    const index = (virt >> shift) & 0x1ffn;
    const entryAddr = Number(table + index * 8n);
    if (!memory.contains(entryAddr, 8)) return null;
    const entry = memory.readU64(entryAddr);
    if ((entry & PTE_PRESENT) === 0n) return null;
    if (level <= 3 && (entry & PTE_LARGE) !== 0n) {
      const pageMask = (1n << shift) - 1n;
      return Number((entry & PTE_ADDR & ~pageMask) | (virt & pageMask));
    }
    table = entry & PTE_ADDR;
  }
  return Number(table | (virt & 0xfffn));
}

/** Kernel text on x86-64 Linux lies in the top 2 GiB. */
const isKernelText = (v: bigint) => v >= 0xffffffff80000000n && v < 0xffffffffc0000000n;
/** Kernel text or a module's (the module area runs to the fixmap). */
const isKernelCode = (v: bigint) => v >= 0xffffffff80000000n && v < 0xffffffffff000000n;

/** struct kvm_irqchip for a PIC: chip id and padding, then struct kvm_pic_state. */
const PIC_IRR = 9;
const PIC_IMR = 10;
const PIC_ISR = 11;
const PIC_IRQ_BASE = 13;

/** One 8259's request, mask and in-service registers and vector base, from KVM_GET_IRQCHIP. */
export function describePic(name: string, state: Buffer): string {
  const h = (o: number) => hex(state[o]);
  return `${name}: irr ${h(PIC_IRR)} imr ${h(PIC_IMR)} isr ${h(PIC_ISR)} vector base ${h(PIC_IRQ_BASE)}`;
}

/** struct kvm_irqchip for the IOAPIC: chip id and padding, then struct kvm_ioapic_state. */
const IOAPIC_IRR = 8 + 16;
const IOAPIC_REDIRECTION = 8 + 24;

/**
 * The IOAPIC pins `pins` from KVM_GET_IRQCHIP (chip 2): vector, trigger, mask, remote IRR and
 * the pin's request bit, to tell a lost edge from a masked or unacknowledged line.
 */
export function describeIoapicPins(state: Buffer, pins: readonly number[]): string {
  const irr = state.readUInt32LE(IOAPIC_IRR);
  return pins.map((pin) => {
    const entry = state.readBigUInt64LE(IOAPIC_REDIRECTION + pin * 8);
    const bit = (n: number) => (entry >> BigInt(n)) & 1n;
    return `pin ${pin}: vector ${hex(entry & 0xffn)} ${bit(15) ? 'level' : 'edge'}${bit(16) ? ' masked' : ''}`
      + `${bit(14) ? ' remote-irr' : ''}${bit(12) ? ' send-pending' : ''} dest ${hex(entry >> 56n)} irr ${(irr >>> pin) & 1}`;
  }).join('; ');
}

/** A frame the CPU pushed when it took an interrupt or exception in the kernel (x86-64). */
export interface InterruptFrame {
  /** Stack address of the saved RIP. */
  at: bigint;
  rip: bigint;
  rflags: bigint;
}

/**
 * Interrupt frames among stack words read from `base` up: RIP in kernel or module code, the kernel's CS
 * (0x10), RFLAGS (bit 1 always set, nothing above bit 21), a kernel RSP and the kernel's SS
 * (0x18). The saved RFLAGS tell whether the interrupted code had interrupts enabled: a frame of
 * an external interrupt over IF 0 is one the guest could not have taken.
 */
export function interruptFrames(words: readonly bigint[], base: bigint): InterruptFrame[] {
  const frames: InterruptFrame[] = [];
  for (let i = 0; i + 4 < words.length; i++) {
    const [rip, cs, rflags, rsp, ss] = words.slice(i, i + 5);
    if (!isKernelCode(rip) || cs !== 0x10n || ss !== 0x18n) continue;
    if ((rflags & 2n) === 0n || rflags >= 1n << 22n || rsp < 0xffff800000000000n) continue;
    frames.push({ at: base + BigInt(i * 8), rip, rflags });
  }
  return frames;
}

export function describeVcpu(cpu: number, vcpu: KvmVcpu, memory: GuestMemory, stackWords = 96): string {
  const r = vcpu.getRegs();
  const s = vcpu.getSregs();
  const lapic = vcpu.getLapic();
  const lines = [
    `vCPU ${cpu}: ${MP_STATE_NAMES[vcpu.getMpState()] ?? 'unknown'} cs ${hex(s.cs.selector)} (base ${hex(s.cs.base)}) rip ${hex(r.rip)} ss ${hex(s.ss.selector)} rsp ${hex(r.rsp)} rflags ${hex(r.rflags)} (IF ${(r.rflags >> 9n) & 1n})`,
    `  rax ${hex(r.rax)} rbx ${hex(r.rbx)} rcx ${hex(r.rcx)} rdx ${hex(r.rdx)} rsi ${hex(r.rsi)} rdi ${hex(r.rdi)} rbp ${hex(r.rbp)}`,
    `  r8 ${hex(r.r8)} r9 ${hex(r.r9)} r10 ${hex(r.r10)} r11 ${hex(r.r11)} r12 ${hex(r.r12)} r13 ${hex(r.r13)} r14 ${hex(r.r14)} r15 ${hex(r.r15)}`,
    `  cr0 ${hex(s.cr0)} cr3 ${hex(s.cr3)} cr4 ${hex(s.cr4)} cr8 ${hex(s.cr8)} efer ${hex(s.efer)} apic base ${hex(s.apicBase)}`,
    `  lapic: tpr ${hex(lapic.readUInt32LE(APIC_TPR))} ppr ${hex(lapic.readUInt32LE(APIC_PPR))} isr [${apicVectors(lapic, APIC_ISR).map(hex).join(' ')}] irr [${apicVectors(lapic, APIC_IRR).map(hex).join(' ')}] lvt timer ${hex(lapic.readUInt32LE(APIC_LVT_TIMER))} lint0 ${hex(lapic.readUInt32LE(APIC_LVT_LINT0))} timer count ${lapic.readUInt32LE(APIC_TIMER_CURRENT)}`,
  ];
  if ((s.cr0 & CR0_PG) === 0n) {
    // Without paging (firmware), the top of the stack holds the last interrupt frame.
    const top = Number(s.ss.base + (r.rsp & 0xffffn));
    if (memory.contains(top, 16)) {
      const words = memory.read(top, 16);
      const u16 = (i: number) => hex(words[i * 2] | (words[i * 2 + 1] << 8));
      lines.push(`  stack at ss:sp: ${[0, 1, 2, 3, 4, 5, 6, 7].map(u16).join(' ')}`);
    }
    const pc = Number(s.cs.base + (r.rip & 0xffffn));
    if (memory.contains(pc, 16)) {
      lines.push(`  code at cs:ip: ${[...memory.read(pc, 16)].map((b) => b.toString(16).padStart(2, '0')).join(' ')}`);
    }
    if (memory.contains(0, 0x80)) {
      const ivt = memory.read(0, 0x80);
      const entry = (v: number) => `${hex(ivt[v * 4 + 2] | (ivt[v * 4 + 3] << 8))}:${hex(ivt[v * 4] | (ivt[v * 4 + 1] << 8))}`;
      lines.push(`  ivt: 0 ${entry(0)} 8 ${entry(8)} 0x10 ${entry(0x10)} 0x13 ${entry(0x13)} 0x1c ${entry(0x1c)}`);
    }
    return lines.join('\n');
  }
  const texts: string[] = [];
  const words: bigint[] = [];
  for (let i = 0; i < stackWords; i++) {
    const virt = r.rsp + BigInt(i * 8);
    const phys = translate(memory, s.cr3, virt);
    if (phys === null || !memory.contains(phys, 8)) break;
    const word = memory.readU64(phys);
    words.push(word);
    if (isKernelText(word)) texts.push(`${hex(virt)}: ${hex(word)}`);
  }
  lines.push(`  stack words in kernel text: ${texts.length ? texts.join(', ') : 'none'}`);
  const frames = interruptFrames(words, r.rsp);
  if (frames.length) {
    lines.push(`  interrupt frames on the stack: ${frames.map((f) => `${hex(f.at)}: rip ${hex(f.rip)} rflags ${hex(f.rflags)} (IF ${(f.rflags >> 9n) & 1n})`).join(', ')}`);
  }
  return lines.join('\n');
}
