// Disk throughput: the rig's L2 kit reads and writes a virtio-blk disk and a SATA disk (AHCI)
// under Porthole (`porthole run --disk IMG --disk IMG,bus=sata`) and under QEMU -accel kvm
// (`-device virtio-blk-pci` and an `ide-hd` on q35's AHCI, the same raw images: fresh files per
// boot), alternating in one run. Per disk: sequential dd with O_DIRECT in 1 MiB blocks (MB/s),
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
import { median, reapKitVm, spawnKitVm, type BootVmm, type KitPaths } from './boot';
import { benchOutputDir, repoRoot, writeBenchResult } from './paths';

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

export interface DiskSample {
  vmm: BootVmm;
  round: number;
  rates: Partial<Record<DiskBus, { read?: DdRate; write?: DdRate; randread?: RandomRate; randwrite?: RandomRate }>>;
  failure?: string;
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
  /** Per disk and measure: median Porthole / median QEMU (MB/s or IOPS; higher is better for Porthole). */
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

async function runOnce(vmm: BootVmm, o: Required<Omit<DiskBenchOptions, 'log'>>, helper: Buffer, round: number, log: (l: string) => void): Promise<DiskSample> {
  const sample: DiskSample = { vmm, round, rates: {} };
  const dir = benchOutputDir();
  const image: Record<DiskBus, string> = { virtio: path.join(dir, 'disk-bench-virtio.img'), sata: path.join(dir, 'disk-bench-sata.img') };
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
  try {
    await con.waitForShell(300000);
    const sectors = o.mib * 2048;
    const seen = await con.run(`for i in $(seq 120); do [ "$(cat /sys/block/vda/size 2>/dev/null)" = ${sectors} ] && [ "$(cat /sys/block/sda/size 2>/dev/null)" = ${sectors} ] && break; sleep 0.5; done; ls /sys/block`, 120000);
    if (!/\bvda\b/.test(seen.output) || !/\bsda\b/.test(seen.output)) throw new Error(`L2 did not show vda and sda of ${o.mib} MiB (it has: ${seen.output.trim()})`);
    const md5 = crypto.createHash('md5').update(helper).digest('hex');
    const copied = await con.run(`head -c ${helper.length} /dev/vda > /tmp/rio && chmod +x /tmp/rio && md5sum /tmp/rio`, 120000);
    if (!copied.output.includes(md5)) throw new Error(`the helper copied from vda in L2 does not match (md5 ${md5}): ${copied.output.trim()}`);
    for (const bus of DISK_BUSES) {
      const dev = `/dev/${DEVICE[bus]}`;
      const rates: NonNullable<DiskSample['rates'][DiskBus]> = {};
      sample.rates[bus] = rates;
      rates.read = await ddRate(con, dev, 'read', 1048576, o.mib);
      rates.write = await ddRate(con, dev, 'write', 1048576, o.mib);
      for (const dir of ['read', 'write'] as const) {
        const r = await con.run(`sync; echo 3 > /proc/sys/vm/drop_caches; /tmp/rio ${dev} ${dir} ${o.randomOps} ${RANDOM_BLOCK} ${RANDOM_SEED} 0 ${o.mib * 1048576} 2>&1`, 900000);
        rates[dir === 'read' ? 'randread' : 'randwrite'] = parseRandomIo(r.output, o.randomOps);
      }
    }
  } catch (e) {
    const why = (e as Error).message.split('\n')[0];
    sample.failure = guestReset ? `the guest reset by itself (${why})` : why;
    if (errText.trim()) sample.failure += `; stderr: ${errText.trim().split('\n').slice(-3).join(' | ')}`;
  } finally {
    con.close();
    await reapKitVm(vm);
  }
  log(`  round ${round}, ${LABELS[vmm].padEnd(8)} ${describe(sample)}`);
  return sample;
}

function value(s: DiskSample, bus: DiskBus, m: Measure): number {
  const r = s.rates[bus]?.[m];
  if (!r) return NaN;
  return m.startsWith('rand') ? (r as RandomRate).iops : r.mbPerSec;
}

function cell(m: Measure, v: number): string {
  return Number.isFinite(v) ? (m.startsWith('rand') ? `${v.toFixed(0)}/s` : `${v.toFixed(1)} MB/s`) : '-';
}

function describe(s: DiskSample): string {
  const parts = DISK_BUSES.filter((b) => s.rates[b]).map((b) => `${b}: ${MEASURES.map((m) => `${m} ${cell(m, value(s, b, m))}`).join(', ')}`);
  return `${parts.join('; ')}${s.failure ? ` FAILED (${s.failure})` : ''}`;
}

export async function runDiskBench(opts: DiskBenchOptions): Promise<DiskBenchResult> {
  const log = opts.log ?? ((line: string) => console.log(line));
  const o = { kit: opts.kit, rounds: opts.rounds, mib: opts.mib ?? 64, randomOps: opts.randomOps ?? RANDOM_OPS, retries: opts.retries ?? 2 };
  for (const f of [o.kit.vmlinuz, o.kit.initrd]) if (!fs.existsSync(f)) throw new Error(`the L2 kit file ${f} is missing`);
  const helper = fs.readFileSync(buildRandomIoHelper());
  if (helper.length > o.mib * 1048576) throw new Error('the random-I/O helper does not fit on the disk');
  log(`disk: the L2 kit, 1 vCPU, a virtio-blk disk and a SATA (AHCI) disk of ${o.mib} MiB each (raw, fresh per boot): Porthole against QEMU -accel kvm (virtio-blk-pci, q35's AHCI), ${o.rounds} rounds alternating`);
  log(`  per disk: ${o.mib} x 1 MiB dd read and write (O_DIRECT; write with conv=fsync), ${o.randomOps} random 4 KiB reads and writes (O_DIRECT, queue depth 1, fsync after the writes)`);
  log(`load average at start: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')} on ${os.cpus().length} CPUs`);
  const samples: DiskSample[] = [];
  for (let round = 1; round <= o.rounds; round++) {
    const order: BootVmm[] = round % 2 === 1 ? ['porthole', 'qemu'] : ['qemu', 'porthole'];
    for (const vmm of order) {
      for (let attempt = 0; attempt <= o.retries; attempt++) {
        const s = await runOnce(vmm, o, helper, round, log);
        samples.push(s);
        if (!s.failure) break;
      }
    }
  }
  for (const bus of DISK_BUSES) fs.rmSync(path.join(benchOutputDir(), `disk-bench-${bus}.img`), { force: true });

  const ok = (vmm: BootVmm) => samples.filter((s) => s.vmm === vmm && !s.failure);
  const ratios: DiskBenchResult['ratios'] = {};
  let met = true;
  for (const bus of DISK_BUSES) {
    log(`\n${bus === 'virtio' ? 'virtio-blk' : 'SATA (AHCI)'} medians${MEASURES.map((m) => m.padStart(14)).join('')}   (rand*: 4 KiB IOPS)`);
    const medians: Record<BootVmm, number[]> = { porthole: [], qemu: [] };
    for (const vmm of ['porthole', 'qemu'] as BootVmm[]) {
      medians[vmm] = MEASURES.map((m) => median(ok(vmm).map((s) => value(s, bus, m)).filter(Number.isFinite)));
      log(`  ${LABELS[vmm].padEnd(18)}${medians[vmm].map((v, i) => cell(MEASURES[i], v).padStart(14)).join('')}`);
    }
    const line = MEASURES.map((m, i) => {
      const ratio = medians.porthole[i] / medians.qemu[i];
      ratios[`${bus}-${m}`] = ratio;
      met &&= ratio >= DISK_TARGET;
      return `${Number.isFinite(ratio) ? ratio.toFixed(2) : '-'}x`.padStart(14);
    });
    log(`  ${'Porthole / QEMU'.padEnd(18)}${line.join('')}   target >= ${DISK_TARGET.toFixed(1)}x each`);
  }
  log(`\ndisk target (Porthole >= ${DISK_TARGET.toFixed(1)}x QEMU on every measure): ${met ? 'met' : 'MISSED'}; boots: Porthole ${ok('porthole').length} ok, QEMU ${ok('qemu').length} ok, ${samples.filter((s) => s.failure).length} failed`);
  for (const s of samples.filter((x) => x.failure)) log(`  failed boot: ${LABELS[s.vmm]} round ${s.round}: ${s.failure}`);
  log(`load average at end: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  const result: DiskBenchResult = { mib: o.mib, randomOps: o.randomOps, rounds: o.rounds, samples, ratios, met };
  writeBenchResult('disk.json', result);
  return result;
}
