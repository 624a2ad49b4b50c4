// Disk throughput: the rig's L2 kit reads and writes a virtio-blk disk and a SATA disk (AHCI)
// under Porthole (`porthole run --disk IMG --disk IMG,bus=sata`) and under QEMU -accel kvm
// (`-device virtio-blk-pci` and an `ide-hd` on q35's AHCI, the same kind of raw images: fresh
// files per boot) in one run. Each round boots both, and every measure runs under one VMM and
// at once under the other, so a pair sees the same load on the (shared) rig host. Per disk: sequential dd with O_DIRECT in 1 MiB blocks (MB/s),
// then random 4 KiB reads and writes at queue depth 1 with O_DIRECT (IOPS), done by
// test/bench/disk-rio.c: the kit's busybox has no fio, and a dd process per block would time
// L2's fork and exec, not the disk. The helper is compiled static here and travels to L2 in the
// first sectors of the virtio image; L2 copies it out before any write.
//
// It needs a KVM that boots Linux: in practice the rig's L1 (npm run bench -- disk).
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { SerialConsole } from '../rig/console';
import { ddRate, type DdRate } from '../rig/dd-rate';
import { median, reapKitVm, spawnKitVm, unpackKitKernel, type BootVmm, type KitPaths } from './boot';
import { benchOutputDir, keepFailureTranscript, repoRoot, writeBenchResult } from './paths';

/** Target from issue 13: Porthole at least QEMU's rate on every measure. */
export const DISK_TARGET = 1.0;
const LABELS: Record<BootVmm, string> = { porthole: 'Porthole', qemu: 'QEMU' };
const KIT_MODULES = 'kit.modules=virtio_pci,virtio_blk,ahci,sd_mod';
/** Random 4 KiB operations per direction and disk. */
const RANDOM_OPS = 2000;
const RANDOM_BLOCK = 4096;
/** The same offsets under both VMMs. */
const RANDOM_SEED = 0x13d15c;

export type DiskBus = 'virtio' | 'sata';
export const DISK_BUSES: DiskBus[] = ['virtio', 'sata'];
type Measure = 'read' | 'write' | 'randread' | 'randwrite';
const MEASURES: Measure[] = ['read', 'write', 'randread', 'randwrite'];
/** L2's name for each disk: virtio_blk's vda, sd_mod's sda (the only SCSI disk). */
const DEVICE: Record<DiskBus, string> = { virtio: 'vda', sata: 'sda' };

export interface RandomRate {
  ops: number;
  seconds: number;
  iops: number;
  mbPerSec: number;
}

/** One measure on one disk, taken back to back under both VMMs (order alternating). */
export interface DiskSample {
  round: number;
  bus: DiskBus;
  measure: Measure;
  /** MB/s for read and write, IOPS for randread and randwrite. */
  porthole: number;
  qemu: number;
  /** Which ran first. */
  first: BootVmm;
}

export interface DiskBenchOptions {
  kit: KitPaths;
  rounds: number;
  /** Disk size and sequential dd length in MiB (default 64). */
  mib?: number;
  randomOps?: number;
  /** A boot that resets or fails is tried again this many times. */
  retries?: number;
  log?: (line: string) => void;
}

export interface DiskBenchResult {
  mib: number;
  randomOps: number;
  rounds: number;
  samples: DiskSample[];
  failures: string[];
  /** Per disk and measure: the median over rounds of Porthole / QEMU (back-to-back pairs; higher is better for Porthole). */
  ratios: Partial<Record<`${DiskBus}-${Measure}`, number>>;
  met: boolean;
}

/** Compiles the random-I/O helper (static: L2 has no libc of this build). */
export function buildRandomIoHelper(): string {
  const src = path.join(repoRoot, 'test', 'bench', 'disk-rio.c');
  const bin = path.join(benchOutputDir(), 'disk-rio');
  if (!fs.existsSync(bin) || fs.statSync(src).mtimeMs > fs.statSync(bin).mtimeMs) {
    const r = spawnSync('gcc', ['-O2', '-Wall', '-static', '-o', bin, src], { encoding: 'utf8' });
    if (r.error || r.status !== 0) throw new Error(`compiling disk-rio.c failed: ${r.error?.message ?? (r.stderr || r.stdout).trim()}`);
  }
  return bin;
}

/** A fresh image of `mib` MiB; `head` (the helper) in its first bytes, zeros after. */
function freshImage(file: string, mib: number, head?: Buffer): void {
  fs.rmSync(file, { force: true });
  fs.writeFileSync(file, head ?? '');
  fs.truncateSync(file, mib * 1048576);
}

/** Parses disk-rio's line; throws with its output when it failed. */
export function parseRandomIo(output: string, ops: number): RandomRate {
  const m = /rio dir=\w+ ops=(\d+) bytes=(\d+) ns=(\d+)/.exec(output);
  if (!m || Number(m[1]) !== ops || !(Number(m[3]) > 0)) throw new Error(`disk-rio failed: ${output.trim().slice(-500)}`);
  const seconds = Number(m[3]) / 1e9;
  return { ops, seconds, iops: ops / seconds, mbPerSec: Number(m[2]) / 1e6 / seconds };
}

type Settings = Required<Omit<DiskBenchOptions, 'log'>>;

interface KitVm {
  vmm: BootVmm;
  con: SerialConsole;
  reap: () => Promise<void>;
  /** What went wrong, with the VMM's last stderr lines and whether the guest reset. */
  why: (e: unknown) => string;
}

function imagePaths(vmm: BootVmm): Record<DiskBus, string> {
  const dir = benchOutputDir();
  return { virtio: path.join(dir, `disk-bench-${vmm}-virtio.img`), sata: path.join(dir, `disk-bench-${vmm}-sata.img`) };
}

/** Boots the kit under one VMM with fresh images, waits for vda and sda and copies the helper out of vda. */
async function bootKit(vmm: BootVmm, o: Settings, helper: Buffer): Promise<KitVm> {
  const image = imagePaths(vmm);
  freshImage(image.virtio, o.mib, helper);
  freshImage(image.sata, o.mib);
  const vm = spawnKitVm(vmm, o.kit, 1, {
    append: KIT_MODULES,
    porthole: ['--disk', image.virtio, '--disk', `${image.sata},bus=sata`],
    // q35's own AHCI (ICH9) holds the SATA disk on its first port.
    qemu: [
      '-drive', `if=none,id=vd,format=raw,file=${image.virtio}`, '-device', 'virtio-blk-pci,drive=vd',
      '-drive', `if=none,id=sd,format=raw,file=${image.sata}`, '-device', 'ide-hd,drive=sd,bus=ide.0',
    ],
  });
  let guestReset = false;
  let errText = '';
  vm.child.stderr!.setEncoding('utf8');
  vm.child.stderr!.on('data', (chunk: string) => {
    if (chunk.includes('porthole: guest reset')) guestReset = true;
    errText = (errText + chunk).slice(-2000);
  });
  const con = SerialConsole.fromChild(vm.child, { name: `L2 on ${LABELS[vmm]}` });
  const kit: KitVm = {
    vmm, con,
    reap: async () => {
      con.close();
      await reapKitVm(vm);
    },
    why: (e) => {
      const first = (e as Error).message.split('\n')[0];
      let text = `${LABELS[vmm]}: ${guestReset ? `the guest reset by itself (${first})` : first}`;
      if (errText.trim()) text += `; stderr: ${errText.trim().split('\n').slice(-3).join(' | ')}`;
      const kept = keepFailureTranscript(`disk ${vmm}`, con.transcript(), errText);
      if (kept) text += `; console kept in ${kept}`;
      return text;
    },
  };
  try {
    await con.waitForShell(300000);
    const sectors = o.mib * 2048;
    const seen = await con.run(`for i in $(seq 120); do [ "$(cat /sys/block/vda/size 2>/dev/null)" = ${sectors} ] && [ "$(cat /sys/block/sda/size 2>/dev/null)" = ${sectors} ] && break; sleep 0.5; done; ls /sys/block`, 120000);
    if (!/\bvda\b/.test(seen.output) || !/\bsda\b/.test(seen.output)) throw new Error(`L2 did not show vda and sda of ${o.mib} MiB (it has: ${seen.output.trim()})`);
    const md5 = crypto.createHash('md5').update(helper).digest('hex');
    const copied = await con.run(`head -c ${helper.length} /dev/vda > /tmp/rio && chmod +x /tmp/rio && md5sum /tmp/rio`, 120000);
    if (!copied.output.includes(md5)) throw new Error(`the helper copied from vda in L2 does not match (md5 ${md5}): ${copied.output.trim()}`);
    return kit;
  } catch (e) {
    const text = kit.why(e);
    await kit.reap();
    throw new Error(text);
  }
}

async function bootWithRetries(vmm: BootVmm, o: Settings, helper: Buffer, failures: string[], round: number, log: (l: string) => void): Promise<KitVm | null> {
  for (let attempt = 0; attempt <= o.retries; attempt++) {
    try {
      return await bootKit(vmm, o, helper);
    } catch (e) {
      const text = `round ${round}: boot ${attempt + 1}: ${(e as Error).message}`;
      failures.push(text);
      log(`  ${text}`);
    }
  }
  return null;
}

/** One measure in one L2: MB/s (sequential dd) or IOPS (random helper). */
async function measureOnce(con: SerialConsole, bus: DiskBus, m: Measure, o: Settings): Promise<number> {
  const dev = `/dev/${DEVICE[bus]}`;
  if (m === 'read' || m === 'write') return (await ddRate(con, dev, m, 1048576, o.mib)).mbPerSec;
  const dir = m === 'randread' ? 'read' : 'write';
  const r = await con.run(`sync; echo 3 > /proc/sys/vm/drop_caches; /tmp/rio ${dev} ${dir} ${o.randomOps} ${RANDOM_BLOCK} ${RANDOM_SEED} 0 ${o.mib * 1048576} 2>&1`, 900000);
  return parseRandomIo(r.output, o.randomOps).iops;
}

/**
 * One round: both VMMs boot and stay up (idle L2s cost L1 little), then every measure runs
 * under one and at once under the other, the order alternating: the two numbers of a pair
 * see the same load on the rig host, which drifts over minutes.
 */
async function runRound(round: number, o: Settings, helper: Buffer, samples: DiskSample[], failures: string[], log: (l: string) => void): Promise<void> {
  const vms: Partial<Record<BootVmm, KitVm>> = {};
  try {
    for (const vmm of round % 2 === 1 ? ['porthole', 'qemu'] as BootVmm[] : ['qemu', 'porthole'] as BootVmm[]) {
      const vm = await bootWithRetries(vmm, o, helper, failures, round, log);
      if (!vm) return;
      vms[vmm] = vm;
    }
    let n = round;
    for (const bus of DISK_BUSES) {
      for (const measure of MEASURES) {
        const order: BootVmm[] = n++ % 2 === 1 ? ['porthole', 'qemu'] : ['qemu', 'porthole'];
        const rate: Partial<Record<BootVmm, number>> = {};
        for (const vmm of order) {
          try {
            rate[vmm] = await measureOnce(vms[vmm]!.con, bus, measure, o);
          } catch (e) {
            const text = `round ${round}: ${bus} ${measure}: ${vms[vmm]!.why(e)}`;
            failures.push(text);
            log(`  ${text}`);
            return;
          }
        }
        const sample: DiskSample = { round, bus, measure, porthole: rate.porthole!, qemu: rate.qemu!, first: order[0] };
        samples.push(sample);
        log(`  round ${round}, ${bus.padEnd(6)} ${measure.padEnd(9)} Porthole ${cell(measure, sample.porthole).padStart(10)}  QEMU ${cell(measure, sample.qemu).padStart(10)}  ${(sample.porthole / sample.qemu).toFixed(2)}x`);
      }
    }
  } finally {
    for (const vm of Object.values(vms)) await vm.reap();
  }
}

function cell(m: Measure, v: number): string {
  return Number.isFinite(v) ? (m.startsWith('rand') ? `${v.toFixed(0)}/s` : `${v.toFixed(1)} MB/s`) : '-';
}

export async function runDiskBench(opts: DiskBenchOptions): Promise<DiskBenchResult> {
  const log = opts.log ?? ((line: string) => console.log(line));
  const o = { kit: opts.kit, rounds: opts.rounds, mib: opts.mib ?? 64, randomOps: opts.randomOps ?? RANDOM_OPS, retries: opts.retries ?? 2 };
  for (const f of [o.kit.vmlinuz, o.kit.initrd]) if (!fs.existsSync(f)) throw new Error(`the L2 kit file ${f} is missing`);
  const helper = fs.readFileSync(buildRandomIoHelper());
  if (helper.length > o.mib * 1048576) throw new Error('the random-I/O helper does not fit on the disk');
  log(`disk: the L2 kit, 1 vCPU, a virtio-blk disk and a SATA (AHCI) disk of ${o.mib} MiB each (raw, fresh per boot): Porthole against QEMU -accel kvm (virtio-blk-pci, q35's AHCI), ${o.rounds} rounds`);
  log(`  per round both VMMs boot and stay up; each measure runs under one and then the other (order alternating): ${o.mib} x 1 MiB dd read and write`);
  log(`  (O_DIRECT; write with conv=fsync), ${o.randomOps} random 4 KiB reads and writes (O_DIRECT, queue depth 1, fsync after the writes)`);
  log(`load average at start: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')} on ${os.cpus().length} CPUs`);
  unpackKitKernel(o.kit, log);
  const samples: DiskSample[] = [];
  const failures: string[] = [];
  for (let round = 1; round <= o.rounds; round++) await runRound(round, o, helper, samples, failures, log);
  for (const vmm of ['porthole', 'qemu'] as BootVmm[]) for (const f of Object.values(imagePaths(vmm))) fs.rmSync(f, { force: true });

  const ratios: DiskBenchResult['ratios'] = {};
  let met = true;
  for (const bus of DISK_BUSES) {
    log(`\n${(bus === 'virtio' ? 'virtio-blk' : 'SATA (AHCI)').padEnd(20)}${MEASURES.map((m) => m.padStart(14)).join('')}   (medians; rand*: 4 KiB IOPS)`);
    const of = (m: Measure) => samples.filter((s) => s.bus === bus && s.measure === m);
    for (const vmm of ['porthole', 'qemu'] as BootVmm[]) {
      log(`  ${LABELS[vmm].padEnd(18)}${MEASURES.map((m) => cell(m, median(of(m).map((s) => s[vmm]))).padStart(14)).join('')}`);
    }
    const line = MEASURES.map((m) => {
      const ratio = median(of(m).map((s) => s.porthole / s.qemu));
      ratios[`${bus}-${m}`] = ratio;
      met &&= ratio >= DISK_TARGET;
      return `${Number.isFinite(ratio) ? ratio.toFixed(2) : '-'}x`.padStart(14);
    });
    log(`  ${'Porthole / QEMU'.padEnd(18)}${line.join('')}   (median of back-to-back pairs; target >= ${DISK_TARGET.toFixed(1)}x each)`);
  }
  const rounds = new Set(samples.map((s) => s.round)).size;
  log(`\ndisk target (Porthole >= ${DISK_TARGET.toFixed(1)}x QEMU on every measure): ${met ? 'met' : 'MISSED'}; ${rounds} of ${o.rounds} rounds measured, ${failures.length} failures`);
  for (const f of failures) log(`  failure: ${f}`);
  log(`load average at end: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  const result: DiskBenchResult = { mib: o.mib, randomOps: o.randomOps, rounds: o.rounds, samples, failures, ratios, met };
  writeBenchResult('disk.json', result);
  return result;
}
