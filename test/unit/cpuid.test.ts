import assert from 'node:assert/strict';
import { test } from 'node:test';
import { cpuidFor } from '../../main/vmm/machine/cpuid';
import type { CpuidEntry } from '../../native/kvm';

const entry = (fn: number, index: number, regs: Partial<CpuidEntry> = {}): CpuidEntry =>
  ({ function: fn, index, flags: 0, eax: 0, ebx: 0, ecx: 0, edx: 0, ...regs });

/** What KVM_GET_SUPPORTED_CPUID gives: leaf 1 without TSC-deadline (bit 24) or the hypervisor bit. */
const supported = [entry(0, 0, { eax: 0xd }), entry(1, 0, { eax: 0x60fb1, ebx: 0x800, ecx: 0x80802001, edx: 0x178bfbff }), entry(6, 0, { eax: 4 }), entry(0xb, 0, { eax: 1 })];
const leaf = (entries: CpuidEntry[], fn: number) => entries.find((e) => e.function === fn)!;

test('leaf 1 advertises the TSC-deadline timer when KVM has it, so Linux needs no PIT tick', () => {
  const ecx = leaf(cpuidFor(supported, 0, 1, { tscDeadline: true }), 1).ecx;
  assert.equal((ecx >>> 24) & 1, 1, 'TSC-deadline');
  assert.equal((ecx >>> 31) & 1, 1, 'hypervisor');
  // Everything KVM reported stays.
  assert.equal((ecx & 0x80802001) >>> 0, 0x80802001);
});

test('leaf 1 leaves TSC-deadline clear when KVM lacks KVM_CAP_TSC_DEADLINE_TIMER', () => {
  const ecx = leaf(cpuidFor(supported, 0, 1, { tscDeadline: false }), 1).ecx;
  assert.equal((ecx >>> 24) & 1, 0);
  assert.equal((ecx >>> 31) & 1, 1);
});

test('each vCPU gets its APIC id and the logical processor count, and HTT with more than one', () => {
  const cpu2 = cpuidFor(supported, 2, 4, { tscDeadline: true });
  assert.equal(leaf(cpu2, 1).ebx >>> 24, 2);
  assert.equal((leaf(cpu2, 1).ebx >>> 16) & 0xff, 4);
  assert.equal((leaf(cpu2, 1).edx >>> 28) & 1, 1);
  assert.equal(leaf(cpu2, 0xb).edx, 2);
  // The input is not modified.
  assert.equal(leaf(supported, 1).ecx, 0x80802001);
});
