// VFIO throughput: an SR-IOV virtual function of the rig L1's NVMe controller assigned to the
// L2 kit, under Porthole (`porthole run --pci-assign VF`: L2's nvme drives the VF on MSI-X, its
// doorbells a KVM slot, its vectors irqfds) and under QEMU -accel kvm (`-device vfio-pci,host=VF`)
// in the same L1. Two VFs are brought up (nvme-cli gives each its flexible queues and interrupt),
// both with the PF's namespace 1 attached: VF1 goes to Porthole, VF2 to QEMU, so both VMs stay up
// and every measure runs under one and at once under the other (order alternating), as the disk
// bench does. In L2 on nvme0n1: dd O_DIRECT sequential read of the whole namespace and write of
// its upper half (1 MiB blocks, MB/s), then random 4 KiB O_DIRECT reads and writes at queue depth 1
// (test/bench/disk-rio.c, IOPS; writes only in the upper half). The helper travels to L2 in the
// namespace's first sectors, written there by L1 through the PF; L2 copies it out first.
// Under Porthole it also checks that the VF's MSI-X vectors count up in L2's /proc/interrupts
// over the measures (the completions reach the guest as MSI-X interrupts).
//
// It needs root, an IOMMU and an NVMe with SR-IOV: the rig's L1 (npm run bench -- vfio).
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setSriovVfs } from '../../main/host/pci-binding';
import { listPciDevices } from '../../main/host/pci-inventory';
import { SerialConsole } from '../rig/console';
import { onlineNvmeVf } from '../rig/l1-nvme';
import { readTrim, until } from '../rig/l1-usb';
import { median, type BootVmm, type KitPaths } from './boot';
import { buildRandomIoHelper, parseRandomIo } from './disk';
import { benchOutputDir, writeBenchResult } from './paths';
import {
  bindToVfio, bootKitWith, findL1E1000, measureE1000, measureStick1, parseExitTable, releaseFromVfio, type Booted, type NicSample, type UsbPathName,
} from './vfio-nic-usb';

export { parseExitTable };

/** Issue 11: within 5% of QEMU. */
export const VFIO_TARGET = 0.95;
const LABELS: Record<BootVmm, string> = { porthole: 'Porthole', qemu: 'QEMU' };
/** Where L2 sees the VF: Porthole's first assigned slot; QEMU's q35 puts it where it likes. */
const PORTHOLE_GUEST_ADDRESS = '0000:00:18.0';
const RANDOM_OPS = 2000;
const RANDOM_BLOCK = 4096;
const RANDOM_SEED = 0x11f10;

type Measure = 'read' | 'write' | 'randread' | 'randwrite';
const MEASURES: Measure[] = ['read', 'write', 'randread', 'randwrite'];

export interface VfioSample {
  round: number;
  measure: Measure;
  /** MB/s for read and write, IOPS for randread and randwrite. */
  porthole: number;
  qemu: number;
  first: BootVmm;
  /** CPU time (ms, user + system) each VMM's process used in L1 over its own run of the measure. */
  cpuMs: Record<BootVmm, number>;
}

/** L2's MSI-X interrupt counts for the VF under one VMM, before and after a round's measures. */
export interface MsixProof {
  round: number;
  vmm: BootVmm;
  /** The nvme lines of /proc/interrupts on PCI-MSI(X) chips. */
  before: string[];
  after: string[];
  vectors: number;
  delta: number;
  /** What sysfs says each vector of the function is in L2 (msi_irqs/N: "msix" or "msi"). */
  modes: string[];
}

/** The bench's parts: the NVMe VF, L1's e1000, stick1 through a whole xHCI against emulated passthrough. */
export const VFIO_PARTS = ['nvme', 'e1000', 'usb-controller'] as const;
export type VfioPart = typeof VFIO_PARTS[number];

/** One round of the e1000 part: each VMM's figures (one VM at a time: there is one e1000). */
export interface NicRound {
  round: number;
  first: BootVmm;
  porthole: NicSample;
  qemu: NicSample;
}

/** One round of the usb-controller part: stick1's read rate through each path (both Porthole). */
export interface UsbPathRound {
  round: number;
  first: UsbPathName;
  controller: number;
  emulated: number;
}

export interface VfioBenchOptions {
  kit: KitPaths;
  rounds: number;
  /** Default: every part. */
  parts?: readonly VfioPart[];
  randomOps?: number;
  retries?: number;
  log?: (line: string) => void;
}

export interface VfioBenchResult {
  /** null when the nvme part did not run. */
  namespaceMib: number | null;
  randomOps: number;
  rounds: number;
  vfs: Record<BootVmm, string> | null;
  samples: VfioSample[];
  msix: MsixProof[];
  failures: string[];
  /** Porthole's VM exits by reason over each round's whole run (boot included), from --stats. */
  portholeExits: { round: number; exits: Record<string, number> }[];
  ratios: Partial<Record<Measure, number>>;
  nic: NicRound[];
  /** Porthole / QEMU, median of pairs; for the round trip QEMU's time over Porthole's (higher is better). */
  nicRatios: Partial<Record<keyof NicSample, number>>;
  usbPaths: UsbPathRound[];
  /** stick1 read, whole controller / emulated passthrough, median of pairs (no target: a comparison). */
  controllerOverEmulated: number;
  met: boolean;
}

/** The nvme lines of /proc/interrupts whose chip is PCI-MSI or PCI-MSIX, and their total count on every CPU. */
export function parseNvmeMsix(text: string): { lines: string[]; total: number } {
  const lines = text.split('\n').map((l) => l.trimEnd()).filter((l) => /^\s*\d+:/.test(l) && /PCI-MSI/i.test(l) && /\bnvme/.test(l));
  let total = 0;
  for (const l of lines) {
    const counts = l.replace(/^\s*\d+:/, '').trim().split(/\s+/);
    for (const c of counts) {
      if (!/^\d+$/.test(c)) break;
      total += Number(c);
    }
  }
  return { lines, total };
}

function sh(command: string): string {
  const r = spawnSync('sh', ['-c', command], { encoding: 'utf8' });
  if (r.error || r.status !== 0) throw new Error(`${command}: ${r.error?.message ?? `${r.stdout ?? ''}${r.stderr ?? ''}`.trim()}`);
  return r.stdout;
}

function nvme(log: (l: string) => void, args: string[], tolerate?: RegExp): void {
  const r = spawnSync('nvme', args, { encoding: 'utf8' });
  const out = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim();
  log(`  $ nvme ${args.join(' ')}${out ? `: ${out.split('\n')[0]}` : ''}`);
  if (r.error) throw new Error(`nvme: ${r.error.message}`);
  if (r.status !== 0 && !(tolerate?.test(out) ?? false)) throw new Error(`nvme ${args.join(' ')} exited with ${r.status}: ${out}`);
}

interface Setup {
  vfs: Record<BootVmm, string>;
  /** L1's block device for namespace 1 through the PF. */
  l1Dev: string;
  mib: number;
}

/** Two VFs online, namespace 1 on both, the helper in the namespace's first sectors. */
async function setUp(helperFile: string, helper: Buffer, log: (l: string) => void): Promise<Setup> {
  const pf = listPciDevices().find((d) => d.classCode >>> 8 === 0x0108 && d.sriov !== null);
  if (!pf) throw new Error('no NVMe controller with SR-IOV here (the rig device nvme-sriov, with iommu)');
  const pfCtrl = await until('the NVMe PF\'s controller', 30000, () => {
    try {
      const c = fs.readdirSync(`/sys/bus/pci/devices/${pf.address}/nvme`)[0];
      return c !== undefined && readTrim(`/sys/bus/pci/devices/${pf.address}/nvme/${c}/state`) === 'live' ? c : null;
    } catch { return null; }
  });
  const l1Dev = await until('the PF\'s namespace 1', 30000, () => fs.readdirSync('/sys/block').find((d) => {
    try { return d.startsWith(`${pfCtrl}n`) && Number(readTrim(`/sys/block/${d}/nsid`)) === 1; } catch { return false; }
  }) ?? null);
  const mib = Math.floor(Number(readTrim(`/sys/block/${l1Dev}/size`)) / 2048);
  if (mib < 8 || helper.length > (mib / 2) * 1048576) throw new Error(`namespace 1 (/dev/${l1Dev}) is ${mib} MiB: too small for the bench`);
  sh(`/usr/bin/dd if=${helperFile} of=/dev/${l1Dev} bs=4096 conv=fsync,sync 2>&1`);
  const [vf1, vf2] = setSriovVfs(pf.address, 2, { autoprobe: false });
  const scids = [onlineNvmeVf({ log: (t) => log(`  ${t.split('\n')[0]}`) }, pfCtrl, vf1, 1), onlineNvmeVf({ log: (t) => log(`  ${t.split('\n')[0]}`) }, pfCtrl, vf2, 2)];
  for (const scid of scids) nvme(log, ['attach-ns', `/dev/${pfCtrl}`, '-n', '1', '-c', String(scid)], /already[ _]attached/i);
  log(`  PF ${pf.address} (/dev/${pfCtrl}), namespace 1 /dev/${l1Dev} (${mib} MiB) on both VFs: ${vf1} for Porthole, ${vf2} for QEMU`);
  return { vfs: { porthole: vf1, qemu: vf2 }, l1Dev, mib };
}

/** CPU time (ms) process `pid` has used so far, from /proc/PID/stat (utime + stime); NaN if it is gone. */
export function processCpuMs(pid: number, statText?: string): number {
  let text = statText;
  try { text ??= fs.readFileSync(`/proc/${pid}/stat`, 'utf8'); } catch { return NaN; }
  // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(rest[11]) + Number(rest[12]);
  return (ticks * 1000) / 100;
}

interface KitVm extends Omit<Booted, 'end'> {
  vmm: BootVmm;
  /** As Booted's, answering Porthole's exit table when it printed one. */
  end: () => Promise<Record<string, number> | null>;
}

const dataDir = () => path.join(benchOutputDir(), 'vfio-bench-data');

async function bootKit(vmm: BootVmm, kit: KitPaths, s: Setup, helper: Buffer, log: (l: string) => void): Promise<KitVm> {
  const vf = s.vfs[vmm];
  if (vmm === 'qemu') bindToVfio(vf);
  let booted: Booted;
  try {
    booted = await bootKitWith(vmm, kit, dataDir(), 'kit.modules=nvme', ['--pci-assign', vf, '--verbose', '--stats'], ['-device', `vfio-pci,host=${vf}`], log);
  } catch (e) {
    if (vmm === 'qemu') releaseFromVfio(vf, false);
    throw e;
  }
  const con = booted.con;
  const k: KitVm = {
    ...booted,
    vmm,
    end: async () => {
      const errText = await booted.end();
      if (vmm === 'qemu') releaseFromVfio(vf, false);
      return vmm === 'porthole' ? parseExitTable(errText) : null;
    },
  };
  try {
    const seen = await con.run(`for i in $(seq 120); do [ "$(cat /sys/block/nvme0n1/size 2>/dev/null)" = ${s.mib * 2048} ] && break; sleep 0.5; done; ls /sys/block; for d in /sys/bus/pci/drivers/nvme/0*; do echo "nvme-bound $(basename $d)"; done`, 120000);
    if (!/\bnvme0n1\b/.test(seen.output)) throw new Error(`L2 did not show nvme0n1 of ${s.mib} MiB (it has: ${seen.output.trim()})`);
    if (vmm === 'porthole' && !seen.output.includes(`nvme-bound ${PORTHOLE_GUEST_ADDRESS}`)) throw new Error(`L2's nvme did not bind ${PORTHOLE_GUEST_ADDRESS}: ${seen.output.trim()}`);
    // What the guest times its I/O with: a clocksource that exits (acpi_pm, hpet) costs every request.
    const clock = await con.run('cat /sys/devices/system/clocksource/clocksource0/current_clocksource');
    log(`  ${LABELS[vmm]}'s L2 clocksource: ${clock.output.trim()}`);
    const md5 = crypto.createHash('md5').update(helper).digest('hex');
    const copied = await con.run(`head -c ${helper.length} /dev/nvme0n1 > /tmp/rio && chmod +x /tmp/rio && md5sum /tmp/rio`, 120000);
    if (!copied.output.includes(md5)) throw new Error(`the helper copied from nvme0n1 in L2 does not match (md5 ${md5}): ${copied.output.trim()}`);
    return k;
  } catch (e) {
    const text = k.why(e);
    await k.end();
    throw new Error(text);
  }
}

async function measureOnce(con: SerialConsole, m: Measure, s: Setup, ops: number): Promise<number> {
  const half = s.mib / 2;
  if (m === 'read' || m === 'write') {
    const dd = m === 'read'
      ? `dd if=/dev/nvme0n1 of=/dev/null bs=1048576 count=${s.mib} iflag=direct`
      : `dd if=/dev/zero of=/dev/nvme0n1 bs=1048576 seek=${half} count=${half} oflag=direct conv=fsync`;
    const bytes = (m === 'read' ? s.mib : half) * 1048576;
    const r = await con.run(`sync; echo 3 > /proc/sys/vm/drop_caches; a=$(cut -d' ' -f1 /proc/uptime); ${dd} 2>&1; st=$?; b=$(cut -d' ' -f1 /proc/uptime); echo "elapsed $a $b"; [ $st = 0 ]`, 900000);
    const t = /elapsed ([\d.]+) ([\d.]+)/.exec(r.output);
    const seconds = t ? Number(t[2]) - Number(t[1]) : NaN;
    if (r.status !== 0 || !(seconds > 0)) throw new Error(`dd ${m} failed: ${r.output.trim().slice(-400)}`);
    return bytes / 1e6 / seconds;
  }
  const dir = m === 'randread' ? 'read' : 'write';
  const [first, span] = m === 'randread' ? [0, s.mib * 1048576] : [half * 1048576, half * 1048576];
  const r = await con.run(`sync; echo 3 > /proc/sys/vm/drop_caches; /tmp/rio /dev/nvme0n1 ${dir} ${ops} ${RANDOM_BLOCK} ${RANDOM_SEED} ${first} ${span} 2>&1`, 900000);
  return parseRandomIo(r.output, ops).iops;
}

async function interrupts(con: SerialConsole): Promise<{ lines: string[]; total: number }> {
  return parseNvmeMsix((await con.run('cat /proc/interrupts')).output);
}

/** The interrupt mode of each vector of the function L2's nvme drives ("24 msix"). */
async function vectorModes(con: SerialConsole): Promise<string[]> {
  const r = await con.run('for f in /sys/bus/pci/drivers/nvme/0*/msi_irqs/*; do [ -e "$f" ] && echo "vector ${f##*/} $(cat $f)"; done');
  return [...r.output.matchAll(/^vector (\d+) (\w+)$/gm)].map((m) => `${m[1]} ${m[2]}`);
}

function cell(m: Measure, v: number): string {
  return Number.isFinite(v) ? (m.startsWith('rand') ? `${v.toFixed(0)}/s` : `${v.toFixed(1)} MB/s`) : '-';
}

export async function runVfioBench(opts: VfioBenchOptions): Promise<VfioBenchResult> {
  const log = opts.log ?? ((line: string) => console.log(line));
  const parts = new Set<VfioPart>(opts.parts ?? VFIO_PARTS);
  for (const f of [opts.kit.vmlinuz, opts.kit.initrd]) if (!fs.existsSync(f)) throw new Error(`the L2 kit file ${f} is missing`);
  if (process.getuid?.() !== 0) throw new Error('the vfio bench binds PCI functions: it needs root (it runs in the rig\'s L1)');
  log(`vfio: ${[...parts].join(', ')}; ${opts.rounds} rounds each`);
  log(`load average at start: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')} on ${os.cpus().length} CPUs`);
  fs.rmSync(dataDir(), { recursive: true, force: true });
  const failures: string[] = [];
  const nvmePart = parts.has('nvme') ? await runNvmePart(opts, failures, log) : null;
  const nic = parts.has('e1000') ? await runE1000Part(opts, failures, log) : [];
  const usbPaths = parts.has('usb-controller') ? await runUsbPathPart(opts, failures, log) : [];
  fs.rmSync(dataDir(), { recursive: true, force: true });

  let met = true;
  const ratios: VfioBenchResult['ratios'] = {};
  if (nvmePart) {
    const { samples } = nvmePart;
    met &&= samples.length > 0;
    log(`\n${'NVMe VF'.padEnd(20)}${MEASURES.map((m) => m.padStart(14)).join('')}   (medians; rand*: 4 KiB IOPS at QD1)`);
    const of = (m: Measure) => samples.filter((x) => x.measure === m);
    for (const vmm of ['porthole', 'qemu'] as BootVmm[]) log(`  ${LABELS[vmm].padEnd(18)}${MEASURES.map((m) => cell(m, median(of(m).map((x) => x[vmm]))).padStart(14)).join('')}`);
    const line = MEASURES.map((m) => {
      const ratio = median(of(m).map((x) => x.porthole / x.qemu));
      ratios[m] = ratio;
      met &&= ratio >= VFIO_TARGET;
      return `${Number.isFinite(ratio) ? ratio.toFixed(2) : '-'}x`.padStart(14);
    });
    log(`  ${'Porthole / QEMU'.padEnd(18)}${line.join('')}   (median of back-to-back pairs; target >= ${VFIO_TARGET}x each)`);
    log(`  ${new Set(samples.map((x) => x.round)).size} of ${opts.rounds} rounds measured`);
  }
  const nicRatios: VfioBenchResult['nicRatios'] = {};
  if (parts.has('e1000')) {
    met &&= nic.length > 0;
    const keys: (keyof NicSample)[] = ['rttMs', 'sendMBps', 'receiveMBps'];
    const heads: Record<keyof NicSample, string> = { rttMs: 'ping ms', sendMBps: 'send MB/s', receiveMBps: 'receive MB/s' };
    log(`\n${'e1000 assigned'.padEnd(20)}${keys.map((k) => heads[k].padStart(14)).join('')}   (medians)`);
    for (const vmm of ['porthole', 'qemu'] as BootVmm[]) log(`  ${LABELS[vmm].padEnd(18)}${keys.map((k) => median(nic.map((r) => r[vmm][k])).toFixed(k === 'rttMs' ? 3 : 2).padStart(14)).join('')}`);
    const line = keys.map((k) => {
      // A shorter round trip is better: the ratio is QEMU's over Porthole's, as for rates the other way.
      const ratio = median(nic.map((r) => (k === 'rttMs' ? r.qemu[k] / r.porthole[k] : r.porthole[k] / r.qemu[k])));
      nicRatios[k] = ratio;
      met &&= ratio >= VFIO_TARGET;
      return `${Number.isFinite(ratio) ? ratio.toFixed(2) : '-'}x`.padStart(14);
    });
    log(`  ${'Porthole vs QEMU'.padEnd(18)}${line.join('')}   (median of pairs; ping: QEMU / Porthole; target >= ${VFIO_TARGET}x each)`);
    log(`  ${nic.length} of ${opts.rounds} rounds measured`);
  }
  const controllerOverEmulated = median(usbPaths.map((r) => r.controller / r.emulated));
  if (parts.has('usb-controller')) {
    log(`\nstick1 read (Porthole), whole controller ${median(usbPaths.map((r) => r.controller)).toFixed(2)} MB/s, emulated xHCI with passthrough ${median(usbPaths.map((r) => r.emulated)).toFixed(2)} MB/s: ` +
      `${Number.isFinite(controllerOverEmulated) ? controllerOverEmulated.toFixed(2) : '-'}x (median of pairs; ${usbPaths.length} of ${opts.rounds} rounds)`);
  }
  log(`\nvfio target (Porthole >= ${VFIO_TARGET}x QEMU on every measure): ${met ? 'met' : 'MISSED'}; ${failures.length} failures`);
  for (const f of failures) log(`  failure: ${f}`);
  log(`load average at end: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  const result: VfioBenchResult = {
    namespaceMib: nvmePart?.setup.mib ?? null, randomOps: opts.randomOps ?? RANDOM_OPS, rounds: opts.rounds, vfs: nvmePart?.setup.vfs ?? null,
    samples: nvmePart?.samples ?? [], msix: nvmePart?.msix ?? [], failures, portholeExits: nvmePart?.portholeExits ?? [], ratios,
    nic, nicRatios, usbPaths, controllerOverEmulated, met,
  };
  writeBenchResult('vfio.json', result);
  return result;
}

interface NvmePart {
  setup: Setup;
  samples: VfioSample[];
  msix: MsixProof[];
  portholeExits: VfioBenchResult['portholeExits'];
}

async function runNvmePart(opts: VfioBenchOptions, failures: string[], log: (l: string) => void): Promise<NvmePart> {
  const ops = opts.randomOps ?? RANDOM_OPS;
  const retries = opts.retries ?? 1;
  const helperFile = buildRandomIoHelper();
  const helper = fs.readFileSync(helperFile);
  log(`\nvfio nvme: an NVMe SR-IOV VF in the L2 kit (1 vCPU, 256 MiB): Porthole --pci-assign against QEMU -accel kvm -device vfio-pci`);
  const s = await setUp(helperFile, helper, log);
  log(`  both VMs stay up; each measure runs under one and then the other (order alternating): ${s.mib} x 1 MiB dd read, ${s.mib / 2} x 1 MiB dd write`);
  log(`  (O_DIRECT; write with conv=fsync), ${ops} random 4 KiB reads (whole namespace) and writes (upper half), O_DIRECT, queue depth 1`);
  const samples: VfioSample[] = [];
  const msix: MsixProof[] = [];
  const portholeExits: VfioBenchResult['portholeExits'] = [];
  for (let round = 1; round <= opts.rounds; round++) {
    const vms: Partial<Record<BootVmm, KitVm>> = {};
    try {
      for (const vmm of round % 2 === 1 ? ['porthole', 'qemu'] as BootVmm[] : ['qemu', 'porthole'] as BootVmm[]) {
        for (let attempt = 0; attempt <= retries && !vms[vmm]; attempt++) {
          try {
            vms[vmm] = await bootKit(vmm, opts.kit, s, helper, log);
          } catch (e) {
            const text = `nvme round ${round}: boot ${attempt + 1}: ${(e as Error).message}`;
            failures.push(text);
            log(`  ${text}`);
          }
        }
        if (!vms[vmm]) break;
      }
      if (!vms.porthole || !vms.qemu) continue;
      // A VM whose console is lost (its L2 died) fails the round; the bench goes on.
      const counted = async <T>(vmm: BootVmm, what: string, read: () => Promise<T>): Promise<T | null> => {
        try {
          return await read();
        } catch (e) {
          const text = `nvme round ${round}: ${what}: ${vms[vmm]!.why(e)}`;
          failures.push(text);
          log(`  ${text}`);
          return null;
        }
      };
      const before: Partial<Record<BootVmm, { lines: string[]; total: number }>> = {};
      for (const vmm of ['porthole', 'qemu'] as BootVmm[]) {
        const read = await counted(vmm, 'interrupts before', () => interrupts(vms[vmm]!.con));
        if (read === null) break;
        before[vmm] = read;
      }
      if (!before.porthole || !before.qemu) continue;
      let n = round;
      let broke = false;
      for (const measure of MEASURES) {
        const order: BootVmm[] = n++ % 2 === 1 ? ['porthole', 'qemu'] : ['qemu', 'porthole'];
        const rate: Partial<Record<BootVmm, number>> = {};
        const cpuMs: Partial<Record<BootVmm, number>> = {};
        for (const vmm of order) {
          const cpu0 = processCpuMs(vms[vmm]!.pid);
          const got = await counted(vmm, measure, () => measureOnce(vms[vmm]!.con, measure, s, ops));
          if (got === null) { broke = true; break; }
          rate[vmm] = got;
          cpuMs[vmm] = processCpuMs(vms[vmm]!.pid) - cpu0;
        }
        if (broke) break;
        const sample: VfioSample = { round, measure, porthole: rate.porthole!, qemu: rate.qemu!, first: order[0], cpuMs: { porthole: cpuMs.porthole!, qemu: cpuMs.qemu! } };
        samples.push(sample);
        log(`  round ${round}, ${measure.padEnd(9)} Porthole ${cell(measure, sample.porthole).padStart(11)}  QEMU ${cell(measure, sample.qemu).padStart(11)}  ${(sample.porthole / sample.qemu).toFixed(2)}x  (L1 CPU of the VMM process: Porthole ${sample.cpuMs.porthole} ms, QEMU ${sample.cpuMs.qemu} ms)`);
      }
      for (const vmm of ['porthole', 'qemu'] as BootVmm[]) {
        const after = await counted(vmm, 'interrupts after', () => interrupts(vms[vmm]!.con));
        const modes = after === null ? null : await counted(vmm, 'vector modes', () => vectorModes(vms[vmm]!.con));
        if (after === null || modes === null) continue;
        const proof: MsixProof = { round, vmm, before: before[vmm]!.lines, after: after.lines, vectors: after.lines.length, delta: after.total - before[vmm]!.total, modes };
        msix.push(proof);
        log(`  round ${round}, ${LABELS[vmm]}'s L2: ${proof.vectors} nvme vector(s) (msi_irqs: ${modes.join(', ') || 'none'}), ${proof.delta} interrupts over the measures`);
        for (const l of after.lines) log(`    ${l.trim()}`);
        const msixOnly = modes.length > 0 && modes.every((m) => m.endsWith(' msix'));
        if (vmm === 'porthole' && (proof.vectors === 0 || proof.delta <= 0 || !msixOnly)) {
          failures.push(`nvme round ${round}: Porthole's L2 did not count nvme MSI-X interrupts over the measures (vectors ${modes.join(', ') || 'none'}, ${proof.delta} interrupts)`);
        }
      }
    } finally {
      for (const vm of Object.values(vms)) {
        const exits = await vm.end();
        if (exits === null) continue;
        portholeExits.push({ round, exits });
        log(`  round ${round}, Porthole's VM exits by reason over the whole run (boot included): ${Object.entries(exits).map(([k, v]) => `${k} ${v}`).join(', ')}`);
      }
    }
  }
  return { setup: s, samples, msix, portholeExits };
}

async function runE1000Part(opts: VfioBenchOptions, failures: string[], log: (l: string) => void): Promise<NicRound[]> {
  const rounds: NicRound[] = [];
  let nic: string;
  try {
    nic = findL1E1000();
  } catch (e) {
    failures.push(`e1000: ${(e as Error).message}`);
    return rounds;
  }
  log(`\nvfio e1000: L1's e1000 ${nic} assigned to the L2 kit (1 vCPU), Porthole --pci-assign against QEMU -device vfio-pci, one VM at a time;`);
  log('  in L2: ping the user network\'s gateway (20 x 0.2 s), then 16 MiB by TCP to a sink and from a source of the rig host\'s QEMU (guestfwd), timed in L2');
  for (let round = 1; round <= opts.rounds; round++) {
    const order: BootVmm[] = round % 2 === 1 ? ['porthole', 'qemu'] : ['qemu', 'porthole'];
    const got: Partial<Record<BootVmm, NicSample>> = {};
    for (const vmm of order) {
      try {
        got[vmm] = await measureE1000(vmm, opts.kit, nic, dataDir(), log);
      } catch (e) {
        const text = `e1000 round ${round}: ${(e as Error).message}`;
        failures.push(text);
        log(`  ${text}`);
        break;
      }
    }
    if (!got.porthole || !got.qemu) continue;
    rounds.push({ round, first: order[0], porthole: got.porthole, qemu: got.qemu });
    log(`  round ${round}: ping ${(got.qemu.rttMs / got.porthole.rttMs).toFixed(2)}x, send ${(got.porthole.sendMBps / got.qemu.sendMBps).toFixed(2)}x, receive ${(got.porthole.receiveMBps / got.qemu.receiveMBps).toFixed(2)}x (Porthole vs QEMU)`);
  }
  return rounds;
}

async function runUsbPathPart(opts: VfioBenchOptions, failures: string[], log: (l: string) => void): Promise<UsbPathRound[]> {
  const rounds: UsbPathRound[] = [];
  log('\nvfio usb-controller: stick1 on L1\'s second xHCI, read in the L2 kit (Porthole, 1 vCPU) through the whole controller (VFIO) and through the emulated xHCI with usbfs passthrough');
  for (let round = 1; round <= opts.rounds; round++) {
    const order: UsbPathName[] = round % 2 === 1 ? ['controller', 'emulated'] : ['emulated', 'controller'];
    const got: Partial<Record<UsbPathName, number>> = {};
    for (const p of order) {
      try {
        got[p] = await measureStick1(p, opts.kit, dataDir(), log);
      } catch (e) {
        const text = `usb-controller round ${round}: ${(e as Error).message}`;
        failures.push(text);
        log(`  ${text}`);
        break;
      }
    }
    if (got.controller === undefined || got.emulated === undefined) continue;
    rounds.push({ round, first: order[0], controller: got.controller, emulated: got.emulated });
    log(`  round ${round}: whole controller / emulated ${(got.controller / got.emulated).toFixed(2)}x`);
  }
  return rounds;
}
