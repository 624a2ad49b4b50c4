// The CPUID each vCPU gets: what KVM supports, plus the bits only the VMM can decide.
import type { CpuidEntry } from '../../../native/kvm';

/** CPUID leaf 1 ECX bits KVM_GET_SUPPORTED_CPUID leaves for the VMM to decide. */
const CPUID1_ECX_TSC_DEADLINE = 1 << 24;
const CPUID1_ECX_HYPERVISOR = 1 << 31;

export interface CpuidChoices {
  /**
   * The LAPIC's TSC-deadline timer (KVM_CAP_TSC_DEADLINE_TIMER with the in-kernel LAPIC).
   * KVM_GET_SUPPORTED_CPUID never reports it. Without it, Linux cannot skip the PIT: it
   * ticks from IRQ 0 of the in-kernel PIT until the LAPIC timer is calibrated. On nested
   * SVM under single-threaded TCG that tick was delivered again inside its own handler
   * (IF clear, IRQ 0's descriptor lock held), and the guest spun on that lock for good.
   */
  tscDeadline: boolean;
}

/** Per-vCPU CPUID: KVM's supported set with this vCPU's APIC id, the hypervisor bit and `choices`. */
export function cpuidFor(supported: CpuidEntry[], cpu: number, count: number, choices: CpuidChoices): CpuidEntry[] {
  return supported.map((e) => {
    const entry = { ...e };
    if (e.function === 1) {
      entry.ebx = ((e.ebx & 0x0000ffff) | ((count & 0xff) << 16) | (cpu << 24)) >>> 0;
      entry.ecx = (e.ecx | CPUID1_ECX_HYPERVISOR | (choices.tscDeadline ? CPUID1_ECX_TSC_DEADLINE : 0)) >>> 0;
      if (count > 1) entry.edx = (e.edx | (1 << 28)) >>> 0; // HTT: the count in EBX[23:16] is valid
    } else if (e.function === 0xb || e.function === 0x1f) {
      entry.edx = cpu;
    }
    return entry;
  });
}
