// Host USB passthrough throughput and latency: L1's stick0 (QEMU usb-storage, high speed) is
// passed to the rig's L2 kit by Porthole (`porthole usb add host:NAME`: usbfs on the VM
// host, our xHCI in front) and by QEMU (`-device usb-host`, libusb, qemu-xhci), alternating
// in one L1 run. Per boot, dd O_DIRECT: the whole stick in 1 MiB blocks read and written
// (MB/s), then 1024 x 4 KiB read and written (transfers/s, shown as µs per transfer: each
// dd block is one SCSI command, three USB transfers of Bulk-Only).
//
// It needs L1 (the stick and a KVM that boots Linux): npm run bench -- usb-passthrough.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { repairUsbJournal, UsbJournal } from '../../main/host/usb-journal';
import { ConsoleTimeoutError, SerialConsole } from '../rig/console';
import { waitForDiskOfSize, type DdRate } from '../rig/dd-rate';
import { STICKS } from '../rig/sticks';
import {
  passStickThrough, PASSTHROUGH_KIT_MODULES, qemuUsbHostArgs, runPortholeCli, stickBoundInL1,
} from '../rig/usb-passthrough-l1';
import { askStuckPortholeForState, median, reapKitVm, spawnKitVm, type BootVmm, type KitPaths } from './boot';
import { benchOutputDir, keepFailureTranscript, writeBenchResult } from './paths';
import { ddPhases, describeCommand, type PerCommand, SMALL_COUNT, timeDdPhases } from './usb-storage';

/** Target from issue 10: Porthole's MB/s at least QEMU usb-host's. */
export const USB_PASSTHROUGH_TARGET = 1.0;
const LABELS: Record<BootVmm, string> = { porthole: 'Porthole', qemu: 'QEMU' };

type Measure = 'read' | 'write' | 'read4k' | 'write4k';
const MEASURES: Measure[] = ['read', 'write', 'read4k', 'write4k'];

export interface UsbPassthroughSample {
  vmm: BootVmm;
  /** Porthole with PORTHOLE_USB_DIRECT=0. */
  channel?: boolean;
  round: number;
  rates: Partial<Record<Measure, DdRate>>;
  /** Porthole's VM host's own account (--verbose log at the give-back): per transfer µs waiting, and in libusb. */
  host?: { transfers: number; waitUs: number; libusbUs: number };
  /** The machine thread's account: µs per transfer from the device's submit to the VM host's DONE. */
  machineUs?: number;
  /** Of machineUs, the DONE record's hop (VM host send → machine drain), µs. */
  doneHopUs?: number;
  /** The guest's turnaround: µs from a DONE that left nothing in flight to the next submit. */
  gapUs?: number;
  /**
   * Transfers the machine thread submitted to usbfs itself (direct URBs); of them reaped by its
   * backstop timer and after a kick (the completion signal); the big ones (≥ 64 KiB) and their µs each.
   */
  direct?: { urbs: number; byBackstop: number; byKick?: number; big?: number; bigUs?: number };
  /** Porthole: the machine's counters over each dd phase, per dd block (monitor statistics). */
  perCommand?: Partial<Record<Measure, PerCommand>>;
  failure?: string;
}

export interface UsbPassthroughBenchOptions {
  kit: KitPaths;
  rounds: number;
  /** A boot that fails is tried again this many times. */
  retries?: number;
  log?: (line: string) => void;
  /** Also boot Porthole with PORTHOLE_USB_DIRECT=0 (every transfer through the VM host, the old path): the same L1, for the direct URBs' gain. */
  channelToo?: boolean;
}

export interface UsbPassthroughBenchResult {
  mib: number;
  rounds: number;
  samples: UsbPassthroughSample[];
  /** Per measure: median Porthole / median QEMU of MB/s (higher is better for Porthole). */
  ratios: Partial<Record<Measure, number>>;
  met: boolean;
}

/** One boot and its dd phases; `extraEnv` goes to Porthole (a variant to compare, from an exec script). */
export async function runOnce(vmm: BootVmm, kit: KitPaths, round: number, log: (l: string) => void, channel = false, extraEnv: NodeJS.ProcessEnv = {}): Promise<UsbPassthroughSample> {
  const stick = STICKS.stick0;
  const sample: UsbPassthroughSample = { vmm, round, rates: {}, ...(channel ? { channel } : {}) };
  const held = await stickBoundInL1(stick);
  const dataDir = path.join(benchOutputDir(), 'usb-passthrough-data');
  const socket = path.join(benchOutputDir(), 'usb-passthrough.sock');
  const env = { ...process.env, ...extraEnv, XDG_DATA_HOME: dataDir, ...(channel ? { PORTHOLE_USB_DIRECT: '0' } : {}) };
  const append = `kit.modules=${PASSTHROUGH_KIT_MODULES}`;
  const vm = vmm === 'porthole'
    ? spawnKitVm('porthole', kit, 1, { append, porthole: ['--usb', 'keyboard', '--monitor', socket, '--verbose'], env })
    : spawnKitVm('qemu', kit, 1, { append, qemu: qemuUsbHostArgs(held.name) });
  let errText = '';
  vm.child.stderr!.setEncoding('utf8');
  vm.child.stderr!.on('data', (chunk: string) => {
    errText = (errText + chunk).slice(-30000);
    const m = /(\d+) transfers, per transfer (\d+) µs from SUBMIT record to libusb submit, (\d+) µs in libusb/.exec(chunk);
    if (m) sample.host = { transfers: Number(m[1]), waitUs: Number(m[2]), libusbUs: Number(m[3]) };
    const mm = /transfers, (\d+) µs per transfer from submit to the VM host's DONE/.exec(chunk);
    if (mm) sample.machineUs = Number(mm[1]);
    const mh = /([\d-]+) µs of it from the DONE's send to its drain; (\d+) µs per idle gap/.exec(chunk);
    if (mh) {
      if (mh[1] !== '-') sample.doneHopUs = Number(mh[1]);
      sample.gapUs = Number(mh[2]);
    }
    const md = /direct URBs (\d+), (\d+) of them reaped by the backstop timer(?:, (\d+) after a kick; (\d+) of \d+ bytes or more, ([\d-]+) µs each)?/.exec(chunk);
    if (md) {
      sample.direct = { urbs: Number(md[1]), byBackstop: Number(md[2]) };
      if (md[3] !== undefined) Object.assign(sample.direct, { byKick: Number(md[3]), big: Number(md[4]), ...(md[5] === '-' ? {} : { bigUs: Number(md[5]) }) });
    }
  });
  const con = SerialConsole.fromChild(vm.child, { name: `L2 on ${LABELS[vmm]}` });
  try {
    await con.waitForShell(300000);
    let port: string | null = null;
    if (vmm === 'porthole') port = passStickThrough(held.name, socket, env).port;
    const disk = await waitForDiskOfSize(con, stick.sizeMiB, 120000);
    await timeDdPhases(con, `/dev/${disk}`, ddPhases(stick.sizeMiB), vmm === 'porthole' ? socket : null, sample);
    if (port !== null) {
      runPortholeCli(['usb', 'remove', port, '--monitor', socket], env);
      // The give-back's log line carries the VM host's timing.
      for (let i = 0; i < 20 && sample.host === undefined; i++) await new Promise((res) => setTimeout(res, 250));
    }
  } catch (e) {
    sample.failure = (e as Error).message.split('\n')[0];
    if (vmm === 'porthole' && e instanceof ConsoleTimeoutError) await askStuckPortholeForState(vm);
    if (errText.trim()) sample.failure += `; stderr: ${errText.trim().split('\n').slice(-3).join(' | ')}`;
    const kept = keepFailureTranscript(`usb-passthrough ${channel ? 'porthole-channel' : vmm} round ${round}`, con.transcript(), errText);
    if (kept) sample.failure += `; console kept in ${kept}`;
  } finally {
    con.close();
    await reapKitVm(vm);
  }
  // A Porthole killed while it held the stick leaves a journal entry: give the stick back as the manager would.
  if (vmm === 'porthole') for (const line of repairUsbJournal(new UsbJournal(path.join(dataDir, 'porthole')))) log(`  repair: ${line}`);
  await giveStickBackToL1(held.name, log);
  log(`  round ${round}, ${(channel ? 'Porthole (channel)' : LABELS[vmm]).padEnd(8)} ${describe(sample)}`);
  for (const m of MEASURES) if (sample.perCommand?.[m]) log(describeCommand(m, sample.perCommand[m]!));
  return sample;
}

/** QEMU's usb-host leaves the stick without a driver when it exits: bind usb-storage again through sysfs. */
async function giveStickBackToL1(hostName: string, log: (l: string) => void): Promise<void> {
  const stick = STICKS.stick0;
  try {
    await stickBoundInL1(stick, 5000);
    return;
  } catch { /* unbound: bind it below */ }
  for (const entry of fs.readdirSync(`/sys/bus/usb/devices/${hostName}`).filter((n) => n.startsWith(`${hostName}:`))) {
    try {
      fs.writeFileSync('/sys/bus/usb/drivers/usb-storage/bind', entry);
      log(`  bound L1's usb-storage to ${entry} again`);
    } catch (e) {
      log(`  binding L1's usb-storage to ${entry} failed: ${(e as Error).message}`);
    }
  }
  await stickBoundInL1(stick, 30000);
}

function describe(s: UsbPassthroughSample): string {
  const rates = MEASURES.filter((m) => s.rates[m]).map((m) => {
    const r = s.rates[m]!;
    return m.endsWith('4k') ? `${m} ${r.iops.toFixed(0)}/s (${(1e6 / r.iops).toFixed(0)} µs)` : `${m} ${r.mbPerSec.toFixed(2)} MB/s`;
  });
  const host = (s.host ? `; VM host: ${s.host.transfers} transfers, ${s.host.libusbUs} µs in libusb, ${s.host.waitUs} µs before it` : '')
    + (s.machineUs === undefined ? '' : `; machine: ${s.machineUs} µs submit to DONE (DONE hop ${s.doneHopUs ?? '-'} µs), guest gap ${s.gapUs ?? '-'} µs`)
    + (s.direct === undefined ? '' : `; direct URBs ${s.direct.urbs} (${s.direct.byBackstop} reaped by the backstop timer, ${s.direct.byKick ?? '-'} after a kick;`
      + ` ${s.direct.big ?? '-'} of 64 KiB or more, ${s.direct.bigUs ?? '-'} µs each submit to reaped)`);
  return `${rates.join(', ')}${host}${s.failure ? ` FAILED (${s.failure})` : ''}`;
}

export async function runUsbPassthroughBench(o: UsbPassthroughBenchOptions): Promise<UsbPassthroughBenchResult> {
  const log = o.log ?? ((line: string) => console.log(line));
  const retries = o.retries ?? 1;
  const mib = STICKS.stick0.sizeMiB;
  for (const f of [o.kit.vmlinuz, o.kit.initrd]) if (!fs.existsSync(f)) throw new Error(`the L2 kit file ${f} is missing`);
  log(`USB passthrough: L1's stick0 (${mib} MiB) in the L2 kit, 1 vCPU, dd O_DIRECT: Porthole (porthole usb add host:, usbfs URBs from the machine thread) against QEMU -accel kvm (usb-host), ${o.rounds} rounds alternating`);
  log(`  per boot: ${mib} x 1 MiB read, ${mib} x 1 MiB write (conv=fsync), ${SMALL_COUNT} x 4 KiB read, ${SMALL_COUNT} x 4 KiB write`);
  log(`load average at start: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')} on ${os.cpus().length} CPUs`);
  const samples: UsbPassthroughSample[] = [];
  for (let round = 1; round <= o.rounds; round++) {
    const order: BootVmm[] = round % 2 === 1 ? ['porthole', 'qemu'] : ['qemu', 'porthole'];
    for (const vmm of order) {
      for (const channel of vmm === 'porthole' && o.channelToo === true ? [false, true] : [false]) {
        for (let attempt = 0; attempt <= retries; attempt++) {
          const s = await runOnce(vmm, o.kit, round, log, channel);
          samples.push(s);
          if (!s.failure) break;
        }
      }
    }
  }

  const ok = (vmm: BootVmm) => samples.filter((s) => s.vmm === vmm && !s.channel && !s.failure);
  const channelOk = samples.filter((s) => s.channel && !s.failure);
  const ratios: Partial<Record<Measure, number>> = {};
  let met = true;
  log(`\n${'medians'.padEnd(10)}${MEASURES.map((m) => m.padStart(16)).join('')}   (MB/s; 4k: µs per transfer)   boots failed`);
  for (const vmm of ['porthole', 'qemu'] as BootVmm[]) {
    const cells = MEASURES.map((m) => {
      const v = median(ok(vmm).map((s) => (m.endsWith('4k') ? 1e6 / s.rates[m]!.iops : s.rates[m]!.mbPerSec)));
      return (Number.isFinite(v) ? v.toFixed(m.endsWith('4k') ? 0 : 2) : '-').padStart(16);
    });
    log(`${LABELS[vmm].padEnd(10)}${cells.join('')}   ${String(ok(vmm).length).padStart(5)} ${String(samples.filter((s) => s.vmm === vmm && s.failure).length).padStart(6)}`);
  }
  for (const m of MEASURES) {
    const value = (s: UsbPassthroughSample) => s.rates[m]!.mbPerSec;
    const ratio = median(ok('porthole').map(value)) / median(ok('qemu').map(value));
    ratios[m] = ratio;
    const judged = m === 'read' || m === 'write';
    if (judged) met &&= ratio >= USB_PASSTHROUGH_TARGET;
    log(`Porthole / QEMU ${m.padEnd(8)} ${Number.isFinite(ratio) ? ratio.toFixed(2) : '-'}x${judged ? `   target >= ${USB_PASSTHROUGH_TARGET.toFixed(1)}x: ${ratio >= USB_PASSTHROUGH_TARGET ? 'met' : 'MISSED'}` : ''}`);
  }
  if (channelOk.length > 0) {
    for (const m of MEASURES) {
      const value = (s: UsbPassthroughSample) => s.rates[m]!.mbPerSec;
      const gain = median(ok('porthole').map(value)) / median(channelOk.map(value));
      log(`Porthole direct URBs / through the VM host (PORTHOLE_USB_DIRECT=0) ${m.padEnd(8)} ${Number.isFinite(gain) ? gain.toFixed(2) : '-'}x; channel / QEMU ${(median(channelOk.map(value)) / median(ok('qemu').map(value))).toFixed(2)}x`);
    }
  }
  for (const s of samples.filter((x) => x.failure)) log(`  failed boot: ${LABELS[s.vmm]} round ${s.round}: ${s.failure}`);
  log(`load average at end: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  const result: UsbPassthroughBenchResult = { mib, rounds: o.rounds, samples, ratios, met };
  writeBenchResult('usb-passthrough.json', result);
  return result;
}
