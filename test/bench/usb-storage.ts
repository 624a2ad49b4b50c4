// USB storage throughput: the rig's L2 kit reads and writes an emulated USB stick with dd
// (O_DIRECT, sequential) under Porthole's xHCI + usb-storage (`porthole run --usb storage:IMG`)
// and under QEMU's (`-device qemu-xhci -device usb-storage`, same kind of image: a fresh
// file of zeros per boot), alternating in one run. 1 MiB blocks give MB/s; 4 KiB blocks give
// transfers per second (each dd block is one SCSI READ/WRITE, one Bulk-Only round trip).
//
// It needs a KVM that boots Linux: in practice the rig's L1 (npm run bench -- usb-storage).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ConsoleTimeoutError, SerialConsole } from '../rig/console';
import { ddRate, diskOfSize, type DdRate } from '../rig/dd-rate';
import { askStuckPortholeForState, median, reapKitVm, spawnKitVm, unpackKitKernel, type BootVmm, type KitPaths } from './boot';
import { benchOutputDir, keepFailureTranscript, writeBenchResult } from './paths';
import { monitorCall } from '../../main/cli/monitor';
import type { StatsSample } from '../../main/vmm/shared/stats';

/** Target from issue 9: Porthole's MB/s at least this multiple of QEMU's. */
export const USB_STORAGE_TARGET = 1.2;
const LABELS: Record<BootVmm, string> = { porthole: 'Porthole', qemu: 'QEMU' };
const KIT_MODULES = 'kit.modules=xhci_pci,usb_storage,sd_mod';
/** 4 KiB transfers per small-block phase. */
export const SMALL_COUNT = 1024;

type Measure = 'read' | 'write' | 'read4k' | 'write4k';
const MEASURES: Measure[] = ['read', 'write', 'read4k', 'write4k'];

export interface UsbStorageSample {
  vmm: BootVmm;
  round: number;
  /** The stick's speed as L2's sysfs says (Mb/s). */
  speed?: string;
  /** L2's clocksource (a port-I/O one, acpi_pm, costs an exit per clock read). */
  clocksource?: string;
  /** The xHCI's interrupt lines in L2's /proc/interrupts (MSI-X or INTx), after the dd phases. */
  xhciIrq?: string;
  rates: Partial<Record<Measure, DdRate>>;
  /** Porthole: where each measure's time went, per dd block (one SCSI command). */
  perCommand?: Partial<Record<Measure, PerCommand>>;
  failure?: string;
}

/** Porthole's counters over one dd phase, divided by its blocks (statistics registry deltas). */
export interface PerCommand {
  ms: number;
  exits: Record<string, number>;
  interrupts: number;
  transfers: number;
  /** Machine thread time in endpoint doorbells (ring walk + the stick's synchronous work), ms. */
  doorbellMs: number;
  /** Mean time from an xHCI interrupt to the guest handler's USBSTS read (a halted guest's wake-up included), ms. */
  irqToHandlerMs: number;
  /** The stick's submit-to-completion time summed over its transfers, ms. */
  deviceMs: number;
  /** Port I/O per device (bus counters, "<device> r/w"), per command. */
  pio: Record<string, number>;
  /** The xHCI's MMIO accesses per register ("r iman", "w doorbell", ...), per command. */
  xhciMmio: Record<string, number>;
}

type Totals = Map<string, number>;

/** A VM whose monitor has not answered a stats request by then is stuck: the round fails. */
const MONITOR_TIMEOUT_MS = 30_000;
/**
 * A dd phase that has not finished by then is stuck (the slowest phase takes well under a
 * minute in the rig): the round fails, after a stuck Porthole is asked for its state.
 */
const DD_TIMEOUT_MS = 240_000;

async function totals(socket: string): Promise<Totals> {
  const sample = await monitorCall(socket, 'getVmStats', [], MONITOR_TIMEOUT_MS) as StatsSample;
  return new Map(sample.counters.map((c) => [`${c.group}/${c.name}`, c.total]));
}

function perCommand(before: Totals, after: Totals, rate: DdRate): PerCommand {
  const n = Math.max(1, rate.transfers);
  const delta = (key: string) => ((after.get(key) ?? 0) - (before.get(key) ?? 0)) / n;
  const exits: Record<string, number> = {};
  const pio: Record<string, number> = {};
  const xhciMmio: Record<string, number> = {};
  let deviceUs = 0;
  for (const key of after.keys()) {
    if (key.startsWith('exits/')) {
      const d = delta(key);
      if (d > 0) exits[key.slice(6)] = d;
    } else if (/\/pio-(reads|writes)$/.test(key)) {
      const d = delta(key);
      if (d > 0) pio[key.replace('/pio-reads', ' r').replace('/pio-writes', ' w')] = d;
    } else if (/^usb\d+-storage\/.*-latency-us$/.test(key)) deviceUs += delta(key);
    else if (/^xhci\/mmio-(reads|writes)-/.test(key)) {
      const d = delta(key);
      if (d > 0) xhciMmio[key.replace(/^xhci\/mmio-(r)eads-|^xhci\/mmio-(w)rites-/, '$1$2 ')] = d;
    }
  }
  return {
    ms: (rate.seconds * 1000) / n, exits, interrupts: delta('xhci/interrupts'), transfers: delta('xhci/transfers'),
    doorbellMs: delta('xhci/doorbell-us') / 1000, deviceMs: deviceUs / 1000, pio, xhciMmio,
    irqToHandlerMs: delta('xhci/irq-to-handler-us') / 1000 / Math.max(1e-9, delta('xhci/irq-to-handler')),
  };
}

/** The dd phases both USB benches time: `mib` blocks of 1 MiB each way, then SMALL_COUNT of 4 KiB. */
export function ddPhases(mib: number): [Measure, 'read' | 'write', number, number][] {
  return [['read', 'read', 1048576, mib], ['write', 'write', 1048576, mib], ['read4k', 'read', 4096, SMALL_COUNT], ['write4k', 'write', 4096, SMALL_COUNT]];
}

/**
 * Times each phase with dd into `into.rates`; with Porthole's monitor `socket`, also where each
 * phase's time went, per dd block, into `into.perCommand`.
 */
export async function timeDdPhases(
  con: SerialConsole, dev: string, phases: [Measure, 'read' | 'write', number, number][], socket: string | null,
  into: { rates: Partial<Record<Measure, DdRate>>; perCommand?: Partial<Record<Measure, PerCommand>> },
): Promise<void> {
  for (const [measure, op, block, count] of phases) {
    const before = socket !== null ? await totals(socket) : null;
    const rate = await ddRate(con, dev, op, block, count, DD_TIMEOUT_MS);
    into.rates[measure] = rate;
    if (before !== null && socket !== null) (into.perCommand ??= {})[measure] = perCommand(before, await totals(socket), rate);
  }
}

export function describeCommand(m: string, c: PerCommand): string {
  const exits = Object.entries(c.exits).sort((a, b) => b[1] - a[1]);
  const all = exits.reduce((sum, [, v]) => sum + v, 0);
  return `    ${m}: ${c.ms.toFixed(2)} ms per command; ${all.toFixed(1)} exits (${exits.slice(0, 4).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ')}),`
    + ` ${c.transfers.toFixed(1)} transfers, ${c.interrupts.toFixed(1)} interrupts (${c.irqToHandlerMs.toFixed(2)} ms each to the handler's first exit); doorbells ${c.doorbellMs.toFixed(2)} ms${c.deviceMs > 0 ? `, stick ${c.deviceMs.toFixed(2)} ms` : ''}`
    + `; port I/O: ${Object.entries(c.pio).sort((a, b) => b[1] - a[1]).slice(0, 5).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ') || 'none'}`
    + `; xHCI MMIO: ${Object.entries(c.xhciMmio).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(', ') || 'none'}`;
}

export interface UsbStorageBenchOptions {
  kit: KitPaths;
  rounds: number;
  /** Image size and 1 MiB-block dd length (default 64). */
  mib?: number;
  /** A boot that resets or fails is tried again this many times. */
  retries?: number;
  log?: (line: string) => void;
}

export interface UsbStorageBenchResult {
  mib: number;
  rounds: number;
  samples: UsbStorageSample[];
  /** Per measure: median Porthole / median QEMU (MB/s; higher is better for Porthole). */
  ratios: Partial<Record<Measure, number>>;
  met: boolean;
}

function freshImage(dir: string, mib: number): string {
  const file = path.join(dir, 'usb-storage-bench.img');
  fs.rmSync(file, { force: true });
  fs.writeFileSync(file, '');
  fs.truncateSync(file, mib * 1048576);
  return file;
}

async function runOnce(vmm: BootVmm, kit: KitPaths, image: string, mib: number, round: number, log: (l: string) => void): Promise<UsbStorageSample> {
  const sample: UsbStorageSample = { vmm, round, rates: {} };
  const socket = path.join(os.tmpdir(), `porthole-usb-bench-${process.pid}.sock`);
  fs.rmSync(socket, { force: true });
  const vm = spawnKitVm(vmm, kit, 1, {
    append: KIT_MODULES,
    porthole: ['--usb', `storage:${image}`, '--monitor', socket, '--verbose'],
    qemu: ['-device', 'qemu-xhci,id=xhci', '-drive', `if=none,id=stick,format=raw,file=${image}`, '-device', 'usb-storage,bus=xhci.0,drive=stick'],
  });
  let guestReset = false;
  let errText = '';
  vm.child.stderr!.setEncoding('utf8');
  vm.child.stderr!.on('data', (chunk: string) => {
    if (chunk.includes('porthole: guest reset')) guestReset = true;
    errText = (errText + chunk).slice(-30000);
  });
  const con = SerialConsole.fromChild(vm.child, { name: `L2 on ${LABELS[vmm]}` });
  try {
    await con.waitForShell(300000);
    const ok = await con.run(`for i in $(seq 120); do for b in /sys/block/sd*; do [ "$(cat $b/size 2>/dev/null)" = ${mib * 2048} ] && break 2; done; sleep 0.5; done`, 120000);
    const disk = ok.status === 0 ? await diskOfSize(con, mib) : null;
    if (!disk) throw new Error(`no ${mib} MiB disk appeared in L2`);
    // The stick's USB device is the last "bus-port" element of the disk's sysfs path.
    sample.clocksource = (await con.runOk('cat /sys/devices/system/clocksource/clocksource0/current_clocksource')).trim();
    sample.speed = (await con.runOk(`u=$(readlink -f /sys/block/${disk}/device | grep -o '/[0-9]*-[0-9.]*/' | tail -1 | tr -d /); cat /sys/bus/usb/devices/$u/speed`)).trim();
    const dev = `/dev/${disk}`;
    const phases = ddPhases(mib);
    // Untimed warm-up, the same for both VMMs: one pass of every phase's kind, so the timed
    // phases measure the steady state rather than V8 compiling Porthole's device models (in L1
    // that compile work ran inside the first seconds of the timed phases).
    for (const [, op, block, count] of phases) await ddRate(con, dev, op, block, Math.max(1, Math.ceil(count / 4)), DD_TIMEOUT_MS);
    await timeDdPhases(con, dev, phases, vmm === 'porthole' ? socket : null, sample);
    sample.xhciIrq = (await con.run("grep -i xhci /proc/interrupts | tr -s ' '")).output.trim().split('\n').join(' | ');
  } catch (e) {
    const why = (e as Error).message.split('\n')[0];
    if (vmm === 'porthole' && e instanceof ConsoleTimeoutError) await askStuckPortholeForState(vm);
    sample.failure = guestReset ? `the guest reset by itself (${why})` : why;
    if (errText.trim()) sample.failure += `; stderr: ${errText.trim().split('\n').slice(-3).join(' | ')}`;
    const kept = keepFailureTranscript(`usb-storage ${vmm} round ${round}`, con.transcript(), errText);
    if (kept) sample.failure += `; console kept in ${kept}`;
  } finally {
    con.close();
    await reapKitVm(vm);
    fs.rmSync(socket, { force: true });
  }
  log(`  round ${round}, ${LABELS[vmm].padEnd(8)} ${describe(sample)}`);
  if (sample.xhciIrq) log(`    L2 /proc/interrupts: ${sample.xhciIrq}`);
  for (const m of MEASURES) if (sample.perCommand?.[m]) log(describeCommand(m, sample.perCommand[m]!));
  return sample;
}

function describe(s: UsbStorageSample): string {
  const rates = MEASURES.filter((m) => s.rates[m]).map((m) => {
    const r = s.rates[m]!;
    return m.endsWith('4k') ? `${m} ${r.iops.toFixed(0)}/s` : `${m} ${r.mbPerSec.toFixed(1)} MB/s`;
  });
  return `${s.speed ? `${s.speed} Mb/s stick; ` : ''}${s.clocksource ? `clocksource ${s.clocksource}; ` : ''}${rates.join(', ')}${s.failure ? ` FAILED (${s.failure})` : ''}`;
}

export async function runUsbStorageBench(o: UsbStorageBenchOptions): Promise<UsbStorageBenchResult> {
  const log = o.log ?? ((line: string) => console.log(line));
  const mib = o.mib ?? 64;
  const retries = o.retries ?? 2;
  for (const f of [o.kit.vmlinuz, o.kit.initrd]) if (!fs.existsSync(f)) throw new Error(`the L2 kit file ${f} is missing`);
  log(`USB storage: the L2 kit, 1 vCPU, dd O_DIRECT on a ${mib} MiB stick: Porthole (xHCI + usb-storage) against QEMU -accel kvm (qemu-xhci + usb-storage), ${o.rounds} rounds alternating`);
  log(`  per boot, after an untimed warm-up of each phase (a quarter of its blocks): ${mib} x 1 MiB read, ${mib} x 1 MiB write (conv=fsync), ${SMALL_COUNT} x 4 KiB read, ${SMALL_COUNT} x 4 KiB write`);
  log(`load average at start: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')} on ${os.cpus().length} CPUs`);
  unpackKitKernel(o.kit, log);
  const dir = benchOutputDir();
  const samples: UsbStorageSample[] = [];
  for (let round = 1; round <= o.rounds; round++) {
    const order: BootVmm[] = round % 2 === 1 ? ['porthole', 'qemu'] : ['qemu', 'porthole'];
    for (const vmm of order) {
      for (let attempt = 0; attempt <= retries; attempt++) {
        const s = await runOnce(vmm, o.kit, freshImage(dir, mib), mib, round, log);
        samples.push(s);
        if (!s.failure) break;
      }
    }
  }
  fs.rmSync(path.join(dir, 'usb-storage-bench.img'), { force: true });

  const ok = (vmm: BootVmm) => samples.filter((s) => s.vmm === vmm && !s.failure);
  const ratios: Partial<Record<Measure, number>> = {};
  let met = true;
  log(`\n${'medians'.padEnd(10)}${MEASURES.map((m) => m.padStart(14)).join('')}   (MB/s; 4k: transfers/s)   boots failed`);
  for (const vmm of ['porthole', 'qemu'] as BootVmm[]) {
    const cells = MEASURES.map((m) => {
      const v = median(ok(vmm).map((s) => (m.endsWith('4k') ? s.rates[m]!.iops : s.rates[m]!.mbPerSec)));
      return (Number.isFinite(v) ? v.toFixed(m.endsWith('4k') ? 0 : 1) : '-').padStart(14);
    });
    log(`${LABELS[vmm].padEnd(10)}${cells.join('')}   ${String(ok(vmm).length).padStart(5)} ${String(samples.filter((s) => s.vmm === vmm && s.failure).length).padStart(6)}`);
  }
  for (const m of MEASURES) {
    const value = (s: UsbStorageSample) => s.rates[m]!.mbPerSec;
    const ratio = median(ok('porthole').map(value)) / median(ok('qemu').map(value));
    ratios[m] = ratio;
    const judged = m === 'read' || m === 'write';
    if (judged) met &&= ratio >= USB_STORAGE_TARGET;
    log(`Porthole / QEMU ${m.padEnd(8)} ${Number.isFinite(ratio) ? ratio.toFixed(2) : '-'}x${judged ? `   target >= ${USB_STORAGE_TARGET.toFixed(1)}x: ${ratio >= USB_STORAGE_TARGET ? 'met' : 'MISSED'}` : ''}`);
  }
  for (const s of samples.filter((x) => x.failure)) log(`  failed boot: ${LABELS[s.vmm]} round ${s.round}: ${s.failure}`);
  log(`load average at end: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  const result: UsbStorageBenchResult = { mib, rounds: o.rounds, samples, ratios, met };
  writeBenchResult('usb-storage.json', result);
  return result;
}
