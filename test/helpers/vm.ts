// Test helpers: run a VM to completion (or until a pattern appears) and collect output.
import fs from 'node:fs';
import path from 'node:path';
import { defaultConfig, type MachineConfig } from '../../main/vmm/config';
import type { MachineEnd, MachineStats } from '../../main/vmm/machine/machine';
import { VmHost } from '../../main/vmm/host/vm-host';

export const repoRoot = path.resolve(__dirname, '..', '..', '..');
export const guestsDir = path.join(repoRoot, 'build', 'guests');

export function guest(name: string): string {
  return path.join(guestsDir, `${name}.bin`);
}

/** Set by hand to skip the KVM tests; CI never sets it (scripts/run-tests.mjs). */
export const KVM_OPT_OUT_ENV = 'PORTHOLE_SKIP_KVM_TESTS';

/**
 * Why a KVM-backed test must skip, or null if it runs. It skips only when the user opted
 * out by hand; without /dev/kvm, scripts/run-tests.mjs runs these files in the rig's L1
 * instead, and a KVM test run anywhere else without it fails on opening /dev/kvm.
 */
export function kvmSkipReason(): string | null {
  if (process.env[KVM_OPT_OUT_ENV] === '1') return `${KVM_OPT_OUT_ENV}=1: KVM tests skipped by hand`;
  return null;
}

export interface RunResult {
  end: MachineEnd;
  stats: MachineStats;
  /** Output per ring: COM1..COM4, then the debug console. */
  output: string[];
  host: VmHost;
}

export function flatConfig(name: string, patch: Partial<MachineConfig> = {}): MachineConfig {
  return { ...defaultConfig(), boot: { kind: 'flat', path: guest(name), address: 0x1000 }, debugExit: true, ...patch };
}

/**
 * Starts a VM and resolves when it ends, or when `until` matches the output of ring
 * `untilRing` (then the VM is stopped). Rejects after timeoutMs with the output so far.
 */
export async function runVm(
  config: MachineConfig,
  opts: { timeoutMs?: number; until?: RegExp; untilRing?: number; onStart?: (h: VmHost, output: readonly string[]) => void } = {},
): Promise<RunResult> {
  const host = new VmHost(config);
  const output = ['', '', '', '', ''];
  const timeoutMs = opts.timeoutMs ?? 30000;
  return new Promise<RunResult>((resolve, reject) => {
    let matched = false;
    const timer = setTimeout(() => {
      void host.stop().finally(() =>
        reject(new Error(`VM did not finish in ${timeoutMs} ms; output so far:\n${output.map((o, i) => `[${i}] ${o}`).join('\n')}`)));
    }, timeoutMs);
    host.on('output', (ring, data) => {
      output[ring] += Buffer.from(data).toString('latin1');
      if (!matched && opts.until && opts.until.test(output[opts.untilRing ?? 0])) {
        matched = true;
        void host.stop();
      }
    });
    host.on('ended', (end, stats) => {
      clearTimeout(timer);
      resolve({ end, stats, output, host });
    });
    host.start().then(() => opts.onStart?.(host, output), (e: Error) => { clearTimeout(timer); reject(e); });
  });
}
