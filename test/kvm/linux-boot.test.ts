// Linux direct boot of Debian's own kernel (build/kernel, from test/guests/kernel.fixture.sh)
// on real KVM. Guest kernel code is slow on this project's PVM host (DESIGN.md), so each
// test waits for early log lines only and stops the VM as soon as they are seen.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { defaultConfig, type MachineConfig } from '../../main/vmm/config';
import { guest, kvmSkipReason, repoRoot, runVm } from '../helpers/vm';

const kernelDir = path.join(repoRoot, 'build', 'kernel');
const vmlinux = path.join(kernelDir, 'vmlinux');
const vmlinuz = path.join(kernelDir, 'vmlinuz');
const fixtureMissing = fs.existsSync(vmlinux) && fs.existsSync(vmlinuz) ? null : 'build/kernel is missing: run scripts/fixtures.sh';
const skip = kvmSkipReason() ?? fixtureMissing ?? false;
/** Generous: the first lines take ~30 s here, several minutes when the machine is busy. */
const TIMEOUT_MS = 600_000;
const EARLY_CONSOLE = 'console=ttyS0 earlyprintk=serial,ttyS0,115200';
/** Stop once this whole line is out (output arrives in pieces; a partial line would race). */
const ALLOWING_CPUS_LINE = /smpboot: Allowing \d+ CPUs, \d+ hotplug CPUs\r?\n/;

function linuxConfig(kernel: string, cpus: number, append: string): MachineConfig {
  return { ...defaultConfig(), memoryBytes: 256 << 20, cpus, boot: { kind: 'linux', kernel, append } };
}

/** COM1 output as lines without timestamps. */
function logLines(output: string): string[] {
  return output.split(/\r?\n/).map((l) => l.replace(/^\[\s*\d+\.\d+\]\s/, ''));
}

test('Debian vmlinux (ELF) boots to its early log and finds 2 CPUs, the IOAPIC and overrides in our ACPI tables',
  { skip, timeout: TIMEOUT_MS + 30_000 }, async () => {
    const started = Date.now();
    const r = await runVm(linuxConfig(vmlinux, 2, `${EARLY_CONSOLE} porthole.test=acpi`), {
      timeoutMs: TIMEOUT_MS, until: ALLOWING_CPUS_LINE,
    });
    const seconds = (Date.now() - started) / 1000;
    const lines = logLines(r.output[0]);
    assert.ok(lines.some((l) => l.startsWith('Linux version ')), r.output[0]);
    assert.ok(lines.includes(`Command line: ${EARLY_CONSOLE} porthole.test=acpi`));
    // The e820 map from the zero page, as the kernel read it.
    assert.ok(lines.includes('BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable'));
    assert.ok(lines.includes('BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable'));
    assert.ok(lines.some((l) => l.startsWith('found SMP MP-table at [mem 0x000f0000-0x000f000f]')));
    assert.ok(lines.some((l) => l.startsWith('ACPI: RSDP 0x00000000000E0000 000024 (v02 PRTHLE)')));
    for (const sig of ['XSDT', 'FACP', 'DSDT', 'FACS', 'APIC']) {
      assert.ok(lines.some((l) => l.startsWith(`ACPI: ${sig} 0x00000000000E`)), `${sig} found`);
    }
    assert.ok(lines.includes('ACPI: PM-Timer IO Port: 0x608'));
    assert.ok(lines.some((l) => l.startsWith('IOAPIC[0]: apic_id 2, version 17, address 0xfec00000, GSI 0-23')));
    assert.ok(lines.includes('ACPI: INT_SRC_OVR (bus 0 bus_irq 0 global_irq 2 dfl dfl)'));
    assert.ok(lines.includes('ACPI: INT_SRC_OVR (bus 0 bus_irq 9 global_irq 9 high level)'));
    assert.ok(lines.includes('ACPI: Using ACPI (MADT) for SMP configuration information'));
    assert.ok(lines.includes('smpboot: Allowing 2 CPUs, 0 hotplug CPUs'));
    assert.ok(!r.output[0].includes('ACPI BIOS Error'), 'ACPICA found nothing wrong');
    console.log(`# vmlinux, 2 vCPUs: "smpboot: Allowing 2 CPUs" after ${seconds.toFixed(1)} s`);
  });

test('with acpi=off the same kernel finds both CPUs in our MP table', { skip, timeout: TIMEOUT_MS + 30_000 }, async () => {
  const r = await runVm(linuxConfig(vmlinux, 2, `${EARLY_CONSOLE} acpi=off`), {
    timeoutMs: TIMEOUT_MS, until: ALLOWING_CPUS_LINE,
  });
  const lines = logLines(r.output[0]);
  assert.ok(lines.some((l) => l.startsWith('Linux version ')), r.output[0]);
  assert.ok(lines.includes('Intel MultiProcessor Specification v1.4'), r.output[0]);
  assert.ok(lines.includes('MPTABLE: OEM ID: PORTHOLE'));
  assert.ok(lines.includes('MPTABLE: APIC at: 0xFEE00000'));
  assert.ok(lines.some((l) => l.startsWith('IOAPIC[0]: apic_id 2, version 17, address 0xfec00000, GSI 0-23')));
  assert.ok(lines.includes('Processors: 2'));
  assert.ok(lines.includes('smpboot: Allowing 2 CPUs, 0 hotplug CPUs'));
});

// Debian's decompressor prints nothing (no CONFIG_X86_VERBOSE_BOOTUP) and takes far longer
// than a test may here, but with earlyprintk on the command line its C code programs COM1
// (8 register writes: LCR, IER, FCR, MCR, then the divisor) before decompressing. Seeing
// them proves the 64-bit entry, the zero page in rsi and cmd_line_ptr all worked.
test('Debian bzImage: the decompressor runs from the 64-bit entry point and acts on our command line',
  { skip, timeout: TIMEOUT_MS + 30_000 }, async () => {
    let com1Writes = 0;
    const r = await runVm(linuxConfig(vmlinuz, 1, EARLY_CONSOLE), {
      timeoutMs: TIMEOUT_MS,
      onStart: (host) => {
        const poll = setInterval(() => {
          host.stats().then((stats) => {
            com1Writes = stats.devices.find((d) => d.name === 'COM1')?.writes ?? 0;
            if (com1Writes >= 8) {
              clearInterval(poll);
              void host.stop();
            }
          }, () => clearInterval(poll));
        }, 1000);
        host.once('ended', () => clearInterval(poll));
      },
    });
    assert.equal(r.end.reason, 'stopped', JSON.stringify(r.end));
    assert.ok(com1Writes >= 8, `COM1 writes: ${com1Writes}`);
    assert.equal(r.stats.exits.internal_error, undefined);
  });

/** The message a VM that cannot start ends with (as an 'error' end or a rejected start). */
async function startError(config: MachineConfig): Promise<string> {
  try {
    const r = await runVm(config, { timeoutMs: 60_000 });
    assert.equal(r.end.reason, 'error', JSON.stringify(r.end));
    return r.end.reason === 'error' ? r.end.message : '';
  } catch (e) {
    return (e as Error).message;
  }
}

test('unreadable or foreign kernel files give one clear sentence', { skip: kvmSkipReason() ?? false }, async () => {
  assert.equal(await startError(linuxConfig('/nonexistent/vmlinuz', 1, '')), 'cannot read kernel /nonexistent/vmlinuz: no such file');
  assert.equal(await startError(linuxConfig(guest('hello'), 1, '')), `kernel ${guest('hello')} is not a bzImage or ELF vmlinux`);
});

test('a kernel too big for the guest RAM is refused before the VM runs', { skip }, async () => {
  assert.match(await startError({ ...linuxConfig(vmlinux, 1, ''), memoryBytes: 32 << 20 }),
    /^kernel .*vmlinux: segment at 0x[0-9a-f]+ \(\d+ bytes\) is outside guest RAM above 1 MiB \(guest RAM ends at 0x2000000 below 4 GiB\)$/);
  assert.match(await startError({ ...linuxConfig(vmlinuz, 1, ''), memoryBytes: 32 << 20 }),
    /^kernel .*vmlinuz needs \d+ MiB from 0x1000000 but guest RAM ends at 0x2000000 below 4 GiB: give the VM more memory$/);
});
