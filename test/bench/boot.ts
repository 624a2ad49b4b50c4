// Boot to shell: the rig's L2 kit (Debian kernel + busybox initramfs) booted by Porthole
// (`porthole run --kernel`) and by QEMU (-accel kvm, direct kernel boot through SeaBIOS),
// alternating in one run, for each vCPU count. Each boot is timed from process spawn until
// the kit's shell has answered a command. Porthole's boots are split into phases from its
// own `--timings` milestones and the kit's KIT-READY line (printed by its /init).
//
// It needs a KVM that boots Linux: in practice the rig's L1 (npm run bench -- boot).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { SerialConsole } from '../rig/console';
import { repoRoot, writeBenchResult } from './paths';
import { KERNEL_UNPACK_ENTRY, kernelCacheDir } from '../../main/vmm/boot/kernel-unpack';

export type BootVmm = 'porthole' | 'qemu';
const LABELS: Record<BootVmm, string> = { porthole: 'Porthole', qemu: 'QEMU' };

export const KIT_APPEND = 'console=ttyS0 quiet panic=-1';
/** Target from issue 7: Porthole's median boot at most this fraction of QEMU's. */
export const BOOT_TARGET = 0.8;

export interface KitPaths {
  vmlinuz: string;
  initrd: string;
}

export interface BootBenchOptions {
  kit: KitPaths;
  rounds: number;
  cpuCounts: number[];
  /** One boot may take this long before it counts as stalled. */
  bootTimeoutMs?: number;
  /** A boot that resets, stalls or exits is tried again this many times (and counted). */
  retries?: number;
  log?: (line: string) => void;
}

/** Milliseconds from spawn for each point a boot reached; absent if it did not. */
export interface BootSample {
  vmm: BootVmm;
  cpus: number;
  round: number;
  /** Porthole's own milestones (porthole run --timings), ms from spawn. */
  milestones: Record<string, number>;
  /** The first byte on the guest's serial console, as this bench received it. */
  firstOutput?: number;
  /** The KIT-READY line arrived. */
  kitReady?: number;
  /** Porthole: which kernel file it booted (its --verbose log): the bzImage or the unpacked kernel. */
  kernel?: 'bzImage' | 'unpacked';
  /** The guest's uptime printed in KIT-READY (kernel clock, seconds). */
  guestUptimeSec?: number;
  /** The shell answered a command: the boot's time. */
  shell?: number;
  /** Why the boot did not reach the shell: 'reset', 'stall' or how the process ended. */
  failure?: string;
  /** Porthole's userspace exits by reason and the busiest devices (--stats, taken on SIGTERM). */
  exits?: Record<string, number>;
  devices?: string[];
}

export interface BootBenchResult {
  rounds: number;
  cpuCounts: number[];
  loadAverage: { start: number[]; end: number[] };
  samples: BootSample[];
  /** Per vCPU count: median Porthole / median QEMU. */
  ratios: Record<string, number>;
}

const TIMING_RE = /^porthole: timing: (\S+) \+[\d.]+ ms \(epoch ([\d.]+)\)$/;
const KIT_READY_RE = /KIT-READY: [^\n]*uptime ([\d.]+) s/;

function epochMs(): number {
  return performance.timeOrigin + performance.now();
}

/** What a bench adds to a kit boot: kernel command-line words and each VMM's own arguments. */
export interface KitVmExtras {
  append?: string;
  porthole?: string[];
  qemu?: string[];
  /** The VMM process's environment (default: this process's). */
  env?: NodeJS.ProcessEnv;
  /** Without the kernel's `quiet`: every boot message on the console. */
  verbose?: boolean;
  /** A checkout (or a copy of another build's bin/ and dist/) whose bin/porthole runs (default: this one). */
  portholeRoot?: string;
}

/** The command line that boots the kit under one VMM (QEMU: q35, -accel kvm, direct kernel boot). */
export function kitVmCommand(vmm: BootVmm, kit: KitPaths, cpus: number, extras: KitVmExtras = {}): [string, string[]] {
  const base = extras.verbose ? KIT_APPEND.split(' ').filter((w) => w !== 'quiet').join(' ') : KIT_APPEND;
  const append = extras.append ? `${base} ${extras.append}` : base;
  if (vmm === 'porthole') {
    return [process.execPath, [
      path.join(extras.portholeRoot ?? repoRoot, 'bin', 'porthole'), 'run', '--kernel', kit.vmlinuz, '--initrd', kit.initrd, '--append', append,
      // A guest reset ends the run, as QEMU's -no-reboot below: the bench retries that boot.
      '--mem', '256M', '--cpus', String(cpus), '--serial', 'stdio', '--no-reboot', ...(extras.porthole ?? []),
    ]];
  }
  return ['qemu-system-x86_64', [
    '-accel', 'kvm', '-M', 'q35', '-cpu', 'host', '-m', '256M', '-smp', String(cpus),
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot', '-monitor', 'none', '-serial', 'stdio',
    '-kernel', kit.vmlinuz, '-initrd', kit.initrd, '-append', append, ...(extras.qemu ?? []),
  ]];
}

/** Every VM this bench started and has not reaped yet: killed if the bench itself ends. */
const live = new Set<ChildProcess>();
function killGroup(child: ChildProcess): void {
  try { if (child.pid) process.kill(-child.pid, 'SIGKILL'); } catch { /* already gone */ }
}
process.on('exit', () => { for (const c of live) killGroup(c); });

/** Starts a kit VM in its own process group (killed with the bench), stdio piped. */
export function spawnKitVm(vmm: BootVmm, kit: KitPaths, cpus: number, extras: KitVmExtras = {}): { child: ChildProcess; exited: Promise<void> } {
  const [command, args] = kitVmCommand(vmm, kit, cpus, extras);
  const child = spawn(command, args, { detached: true, stdio: ['pipe', 'pipe', 'pipe'], env: extras.env ?? process.env });
  live.add(child);
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  return { child, exited };
}

/**
 * A Porthole kit VM (run with --verbose) whose guest stopped answering a command: asks it for
 * vCPU 0's registers, the interrupt controllers, the UARTs and the serial rings (SIGUSR2, logged
 * on its stderr) and gives it a moment, so the failure's kept stderr holds the picture.
 */
export async function askStuckPortholeForState(vm: { child: ChildProcess }): Promise<void> {
  if (vm.child.exitCode !== null || vm.child.pid === undefined) return;
  try {
    process.kill(vm.child.pid, 'SIGUSR2');
  } catch {
    return; // gone meanwhile
  }
  await new Promise((resolve) => setTimeout(resolve, 3000));
}

/** How long a killed kit VM gets to go away before the bench goes on without it. */
const REAP_WAIT_MS = 30_000;

/**
 * Kills a kit VM's process group and waits until it is gone (its output closed), for at most
 * REAP_WAIT_MS: a VM process stuck in the kernel, or one whose output another process still
 * holds, is reported and left behind rather than holding up the rest of the bench.
 */
export async function reapKitVm(vm: { child: ChildProcess; exited: Promise<void> }): Promise<void> {
  killGroup(vm.child);
  let timer: NodeJS.Timeout | undefined;
  const gone = await Promise.race([
    vm.exited.then(() => true),
    new Promise<boolean>((resolve) => { timer = setTimeout(() => resolve(false), REAP_WAIT_MS); }),
  ]);
  clearTimeout(timer);
  live.delete(vm.child);
  if (!gone) {
    const state = vm.child.exitCode !== null || vm.child.signalCode !== null ? 'exited, but its output is still open' : 'has not exited';
    console.error(`bench: the VM process ${vm.child.pid} ${state} ${REAP_WAIT_MS / 1000} s after SIGKILL; going on without it`);
  }
}

async function bootOnce(vmm: BootVmm, kit: KitPaths, cpus: number, round: number, timeoutMs: number): Promise<BootSample> {
  const sample: BootSample = { vmm, cpus, round, milestones: {} };
  const spawnedAt = epochMs();
  const since = () => epochMs() - spawnedAt;
  const vm = spawnKitVm(vmm, kit, cpus, { porthole: ['--timings', '--verbose', '--stats'] });
  const { child, exited } = vm;
  let guestReset = false;
  const statsLines: string[] = [];
  let errText = '';
  let errPartial = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (chunk: string) => {
    const lines = (errPartial + chunk).split('\n');
    errPartial = lines.pop() ?? '';
    for (const line of lines) {
      const m = TIMING_RE.exec(line);
      // A launch after a guest reset stamps again; the first launch is the one measured.
      if (m) { if (!(m[1] in sample.milestones)) sample.milestones[m[1]] = Number(m[2]) - spawnedAt; continue; }
      if (line.includes('porthole: guest reset')) guestReset = true;
      if (line.startsWith('porthole: kernel: ')) sample.kernel = line.includes('booting the unpacked kernel') ? 'unpacked' : 'bzImage';
      if (!line.startsWith('porthole: ')) statsLines.push(line);
      if (line.trim()) errText = (errText + line + '\n').slice(-2000);
    }
  });
  child.stdout!.once('data', () => { sample.firstOutput = since(); });
  const con = SerialConsole.fromChild(child, { name: `L2 on ${LABELS[vmm]}` });
  const deadline = Date.now() + timeoutMs;
  const left = () => Math.max(1, deadline - Date.now());
  try {
    const ready = await con.waitFor(KIT_READY_RE, left());
    sample.kitReady = since();
    sample.guestUptimeSec = Number(ready[1]);
    // Nothing is typed before the prompt: the guest's UART driver would flush it.
    await con.waitFor(/kit# /, left(), ready.index);
    await con.runOk('true', left());
    sample.shell = since();
  } catch (e) {
    const why = (e as Error).message.split('\n')[0];
    sample.failure = guestReset ? 'reset' : child.exitCode !== null || child.signalCode !== null
      ? `exited (${child.signalCode ?? `code ${child.exitCode}`})` : /within|did not finish/.test(why) ? 'stall' : why;
    if (errText) sample.failure += `; stderr: ${errText.trim().split('\n').slice(-3).join(' | ')}`;
  } finally {
    // Porthole prints its exit counts (--stats) when it stops on SIGTERM; QEMU just goes.
    if (vmm === 'porthole' && !sample.failure) {
      child.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 10000))]);
    }
    await reapKitVm(vm);
  }
  if (vmm === 'porthole') parseStats(statsLines, sample);
  return sample;
}

/** Reads formatStats' table (main/cli/stats.ts) from Porthole's stderr. */
function parseStats(lines: string[], sample: BootSample): void {
  let section = '';
  const exits: Record<string, number> = {};
  const devices: string[] = [];
  for (const line of lines) {
    if (/^VM exits by reason:/.test(line)) { section = 'exits'; continue; }
    if (/^Accesses by device:/.test(line)) { section = 'devices'; continue; }
    const m = /^\s+(\S+)\s+(\d+)(?:\s+(\d+))?$/.exec(line);
    if (!m) continue;
    if (section === 'exits') exits[m[1]] = Number(m[2]);
    else if (section === 'devices' && m[3] !== undefined && devices.length < 4) devices.push(`${m[1]} ${Number(m[2]) + Number(m[3])}`);
  }
  if (Object.keys(exits).length > 0) {
    sample.exits = exits;
    sample.devices = devices;
  }
}

export function median(values: number[]): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

const sec = (ms: number) => (Number.isFinite(ms) ? (ms / 1000).toFixed(2) : '-');

/** A phase's duration per boot (ms), for boots that reached both of its ends. */
function phase(samples: BootSample[], from: (s: BootSample) => number | undefined, to: (s: BootSample) => number | undefined): number[] {
  const out: number[] = [];
  for (const s of samples) {
    const a = from(s);
    const b = to(s);
    if (a !== undefined && b !== undefined) out.push(b - a);
  }
  return out;
}

/** The later of two milestones (a prestarted thread loads its modules before it has a config). */
function latest(s: BootSample, a: string, b: string): number | undefined {
  const x = s.milestones[a];
  const y = s.milestones[b];
  return x === undefined ? y : y === undefined ? x : Math.max(x, y);
}

function describeSample(s: BootSample): string {
  if (s.failure) return `FAILED (${s.failure})`;
  const parts = [`shell ${sec(s.shell!)} s`];
  if (s.vmm === 'porthole') {
    if (s.kernel) parts.push(`kernel ${s.kernel}`);
    parts.push(`first KVM_RUN ${sec(s.milestones['first-kvm-run'])}`, `first console byte ${sec(s.milestones['first-console-byte'])}`);
  } else {
    parts.push(`first console byte ${sec(s.firstOutput ?? NaN)}`);
  }
  parts.push(`KIT-READY ${sec(s.kitReady!)} (guest uptime ${s.guestUptimeSec?.toFixed(2)} s)`);
  if (s.exits) parts.push(`exits to Porthole ${s.exits.total ?? '?'} (${Object.entries(s.exits).filter(([k]) => k !== 'total').map(([k, v]) => `${k} ${v}`).join(', ')}; ${s.devices?.join(', ')})`);
  return parts.join(', ');
}

/**
 * porthole run boots a bzImage's kernel unpacked on the host once the cache has it; a first boot
 * only starts the unpack (kernel-unpack.ts). A bench does it ahead, timed and outside its rounds,
 * so no round pays it or shares the CPU with it (and in the rig, a first boot from the bzImage
 * is the one most often lost to an L2 reset: test/rig/README.md).
 */
export function unpackKitKernel(kit: KitPaths, log: (line: string) => void): void {
  const unpackStart = Date.now();
  const unpack = spawnSync(process.execPath, [KERNEL_UNPACK_ENTRY, kit.vmlinuz, kernelCacheDir()], { encoding: 'utf8' });
  log(unpack.status === 0
    ? `Porthole: kernel unpacked ahead in ${((Date.now() - unpackStart) / 1000).toFixed(2)} s (once per kernel file, into ${kernelCacheDir()}); its boots enter the unpacked kernel`
    : `Porthole: kernel not unpacked ahead (${(unpack.stderr || unpack.error?.message || '').trim()}); its boots run the bzImage`);
}

export async function runBootBench(o: BootBenchOptions): Promise<BootBenchResult> {
  const log = o.log ?? ((line: string) => console.log(line));
  const timeoutMs = o.bootTimeoutMs ?? 180000;
  const retries = o.retries ?? 2;
  for (const f of [o.kit.vmlinuz, o.kit.initrd]) if (!fs.existsSync(f)) throw new Error(`the L2 kit file ${f} is missing`);
  const loadStart = os.loadavg();
  log(`boot to shell: the L2 kit under Porthole and QEMU (-accel kvm), ${o.rounds} rounds alternating, vCPUs ${o.cpuCounts.join(', ')}; 256 MiB; "${KIT_APPEND}"`);
  log(`load average at start: ${loadStart.map((l) => l.toFixed(2)).join(' ')} on ${os.cpus().length} CPUs`);
  unpackKitKernel(o.kit, log);
  const samples: BootSample[] = [];
  for (let round = 1; round <= o.rounds; round++) {
    // Alternate who goes first, so slow drift in the machine's load hits both alike.
    const order: BootVmm[] = round % 2 === 1 ? ['porthole', 'qemu'] : ['qemu', 'porthole'];
    for (const cpus of o.cpuCounts) {
      for (const vmm of order) {
        for (let attempt = 0; attempt <= retries; attempt++) {
          const s = await bootOnce(vmm, o.kit, cpus, round, timeoutMs);
          samples.push(s);
          log(`  round ${round}, ${cpus} vCPU, ${LABELS[vmm].padEnd(8)} ${describeSample(s)}${s.failure && attempt < retries ? '; trying again' : ''}`);
          if (!s.failure) break;
        }
      }
    }
  }
  const loadEnd = os.loadavg();

  const ratios: Record<string, number> = {};
  const pad = (t: string, n: number) => t.padStart(n);
  for (const cpus of o.cpuCounts) {
    const ok = (vmm: BootVmm) => samples.filter((s) => s.vmm === vmm && s.cpus === cpus && !s.failure);
    const failed = (vmm: BootVmm) => samples.filter((s) => s.vmm === vmm && s.cpus === cpus && s.failure);
    log(`\n${cpus} vCPU${cpus > 1 ? 's' : ''}: spawn to shell answering (s)   median     min     max  boots  failed`);
    for (const vmm of ['porthole', 'qemu'] as BootVmm[]) {
      const t = ok(vmm).map((s) => s.shell!);
      log(`  ${LABELS[vmm].padEnd(36)}${pad(sec(median(t)), 8)}${pad(sec(Math.min(...t)), 8)}${pad(sec(Math.max(...t)), 8)}${pad(String(t.length), 7)}${pad(String(failed(vmm).length), 8)}`);
    }
    const ratio = median(ok('porthole').map((s) => s.shell!)) / median(ok('qemu').map((s) => s.shell!));
    ratios[String(cpus)] = ratio;
    log(`  Porthole / QEMU (medians): ${Number.isFinite(ratio) ? ratio.toFixed(2) : '-'}x   target <= ${BOOT_TARGET.toFixed(2)}x: ${ratio <= BOOT_TARGET ? 'met' : 'MISSED'}`);

    const p = ok('porthole');
    const q = ok('qemu');
    const m = (label: string) => (s: BootSample) => s.milestones[label];
    const spawnAt = () => 0;
    const rows: [string, number[]][] = [
      ['Porthole: spawn -> first KVM_RUN', phase(p, spawnAt, m('first-kvm-run'))],
      ['  spawn -> node started', phase(p, spawnAt, m('node-ready'))],
      ['  node started -> CLI loaded and running', phase(p, m('node-ready'), m('cli'))],
      ['  CLI -> machine thread launched', phase(p, m('cli'), m('machine-launch'))],
      ['  launched -> machine thread has config and modules', phase(p, m('machine-launch'), (s) => latest(s, 'machine-config', 'machine-thread'))],
      ['  (machine thread\'s modules loaded, from spawn)', phase(p, spawnAt, m('machine-thread'))],
      ['  machine thread ready -> VM created', phase(p, (s) => latest(s, 'machine-config', 'machine-thread'), m('vm-created'))],
      ['  VM created -> RAM allocated', phase(p, m('vm-created'), m('ram-allocated'))],
      ['  RAM -> devices and vCPUs created', phase(p, m('ram-allocated'), m('vcpus-created'))],
      ['  vCPUs -> kernel, initrd, tables loaded', phase(p, m('vcpus-created'), m('boot-loaded'))],
      ['  loaded -> first KVM_RUN', phase(p, m('boot-loaded'), m('first-kvm-run'))],
      ['Porthole: kernel entry -> first console byte', phase(p, m('first-kvm-run'), m('first-console-byte'))],
      ['Porthole: first console byte -> KIT-READY', phase(p, m('first-console-byte'), (s) => s.kitReady)],
      ['Porthole: KIT-READY -> shell answered', phase(p, (s) => s.kitReady, (s) => s.shell)],
      ['Porthole: guest uptime at KIT-READY', p.map((s) => s.guestUptimeSec! * 1000)],
      ['QEMU: spawn -> first console byte', phase(q, spawnAt, (s) => s.firstOutput)],
      ['QEMU: first console byte -> KIT-READY', phase(q, (s) => s.firstOutput, (s) => s.kitReady)],
      ['QEMU: KIT-READY -> shell answered', phase(q, (s) => s.kitReady, (s) => s.shell)],
      ['QEMU: guest uptime at KIT-READY', q.map((s) => s.guestUptimeSec! * 1000)],
      ['QEMU: spawn - guest uptime (firmware, decompression)', q.map((s) => s.kitReady! - s.guestUptimeSec! * 1000)],
      ['Porthole: spawn - guest uptime', p.map((s) => s.kitReady! - s.guestUptimeSec! * 1000)],
    ];
    log(`  phases (s)${' '.repeat(44)}median     min     max`);
    for (const [label, values] of rows) {
      if (values.length === 0) continue;
      log(`  ${label.padEnd(52)}${pad(sec(median(values)), 8)}${pad(sec(Math.min(...values)), 8)}${pad(sec(Math.max(...values)), 8)}`);
    }
    for (const vmm of ['porthole', 'qemu'] as BootVmm[]) {
      for (const s of failed(vmm)) log(`  failed boot: ${LABELS[vmm]} round ${s.round}: ${s.failure}`);
    }
  }
  log(`\nload average at end: ${loadEnd.map((l) => l.toFixed(2)).join(' ')} (1, 5, 15 min) on ${os.cpus().length} CPUs`);
  const result: BootBenchResult = { rounds: o.rounds, cpuCounts: o.cpuCounts, loadAverage: { start: loadStart, end: loadEnd }, samples, ratios };
  writeBenchResult('boot.json', result);
  return result;
}
