// The vfio bench's other two parts (issue 11), beside the NVMe VF (vfio.ts):
// - e1000: L1's e1000 assigned to the L2 kit, under Porthole (--pci-assign) and under QEMU
//   (-device vfio-pci), one VM at a time (there is one e1000). In L2: the ping round trip to the
//   user network's gateway, then a TCP stream each way to services of the rig host's QEMU
//   (guestfwd commands, test/rig/devices.ts), timed in L2.
// - USB controller: stick1 read in L2 through the whole-controller path (L1's second xHCI
//   assigned through VFIO) and through the emulated xHCI with usbfs passthrough, both Porthole,
//   chosen by the VM config's usbPassthroughPath with one USB rule for stick1.
import fs from 'node:fs';
import path from 'node:path';
import { listPciDevices } from '../../main/host/pci-inventory';
import { repairUsbJournal, UsbJournal } from '../../main/host/usb-journal';
import { SerialConsole } from '../rig/console';
import { E1000_STREAM } from '../rig/devices';
import { driverOf } from '../rig/l1-pci';
import { STICKS } from '../rig/sticks';
import { PASSTHROUGH_KIT_MODULES, stickBoundInL1 } from '../rig/usb-passthrough-l1';
import { reapKitVm, spawnKitVm, type BootVmm, type KitPaths } from './boot';

const LABELS: Record<BootVmm, string> = { porthole: 'Porthole', qemu: 'QEMU' };
const GATEWAY = '10.0.2.2';
const PINGS = 20;

export interface NicSample {
  /** Mean ping round trip to the gateway, ms. */
  rttMs: number;
  /** MB/s from L2 to the rig host's sink, and from its source into L2. */
  sendMBps: number;
  receiveMBps: number;
}

export type UsbPathName = 'controller' | 'emulated';

/** busybox ping's summary: "round-trip min/avg/max = 0.421/0.610/1.020 ms"; the mean, or NaN. */
export function parsePingMean(text: string): number {
  const m = /min\/avg\/max = [\d.]+\/([\d.]+)\/[\d.]+ ms/.exec(text);
  return m ? Number(m[1]) : NaN;
}

/** "elapsed A B" (L2's /proc/uptime around a command) and "bytes N"; seconds and bytes, NaN if absent. */
export function parseTimedBytes(text: string): { seconds: number; bytes: number } {
  const t = /elapsed ([\d.]+) ([\d.]+)/.exec(text);
  const b = /^bytes (\d+)$/m.exec(text);
  return { seconds: t ? Number(t[2]) - Number(t[1]) : NaN, bytes: b ? Number(b[1]) : NaN };
}

/** The "VM exits by reason" block of porthole run --stats (main/cli/stats.ts), as reason -> count. */
export function parseExitTable(stderr: string): Record<string, number> | null {
  const at = stderr.lastIndexOf('VM exits by reason:');
  if (at < 0) return null;
  const exits: Record<string, number> = {};
  for (const line of stderr.slice(at).split('\n').slice(1)) {
    const m = /^\s+([\w-]+)\s+(\d+)\s*$/.exec(line);
    if (!m) break;
    exits[m[1]] = Number(m[2]);
  }
  return exits;
}

/** L1's e1000 (the rig device e1000), or an error naming what is missing. */
export function findL1E1000(): string {
  const nic = listPciDevices().find((d) => d.vendorId === 0x8086 && d.deviceId === 0x100e);
  if (!nic) throw new Error('no e1000 (8086:100e) in L1: the rig device e1000');
  if (nic.iommuGroup === null) throw new Error(`L1's e1000 ${nic.address} is in no IOMMU group: the rig device iommu`);
  return nic.address;
}

function sysfsWrite(file: string, value: string): void {
  fs.writeFileSync(file, value);
}

/** QEMU needs the function on vfio-pci beforehand (Porthole binds its own). */
export function bindToVfio(address: string): void {
  const dev = `/sys/bus/pci/devices/${address}`;
  if (driverOf(address) === 'vfio-pci') return;
  if (driverOf(address) !== null) sysfsWrite(`${dev}/driver/unbind`, address);
  sysfsWrite(`${dev}/driver_override`, 'vfio-pci');
  sysfsWrite('/sys/bus/pci/drivers_probe', address);
  if (driverOf(address) !== 'vfio-pci') throw new Error(`${address} did not bind to vfio-pci (it is on ${driverOf(address) ?? 'no driver'})`);
}

/** Off vfio-pci and, when `probe`, back to whatever driver L1 would give it. */
export function releaseFromVfio(address: string, probe: boolean): void {
  const dev = `/sys/bus/pci/devices/${address}`;
  try {
    if (driverOf(address) !== null) sysfsWrite(`${dev}/driver/unbind`, address);
    sysfsWrite(`${dev}/driver_override`, '\n');
    if (probe) sysfsWrite('/sys/bus/pci/drivers_probe', address);
  } catch { /* the next use binds it again */ }
}

export interface Booted {
  con: SerialConsole;
  /** The VMM's process id in L1. */
  pid: number;
  /** Powers L2 off, waits for the VMM and gives host devices back; answers the VMM's stderr. */
  end: () => Promise<string>;
  /** An error's first line with the VMM's last stderr lines. */
  why: (e: unknown) => string;
}

/**
 * Boots the kit (1 vCPU) under one VMM and waits for its shell. Porthole's journal is repaired
 * at the end (its lines to `log`): a kill leaves host devices to it.
 */
export async function bootKitWith(vmm: BootVmm, kit: KitPaths, dataDir: string, append: string, porthole: string[], qemu: string[], log?: (l: string) => void): Promise<Booted> {
  const vm = spawnKitVm(vmm, kit, 1, { append, porthole, qemu, env: { ...process.env, XDG_DATA_HOME: dataDir } });
  let errText = '';
  const resets: string[] = [];
  vm.child.stderr!.setEncoding('utf8');
  vm.child.stderr!.on('data', (chunk: string) => {
    errText = (errText + chunk).slice(-20000);
    for (const m of chunk.matchAll(/^porthole: (guest reset.*)$/gm)) resets.push(m[1]);
  });
  const con = SerialConsole.fromChild(vm.child, { name: `L2 on ${LABELS[vmm]}` });
  const booted: Booted = {
    con,
    pid: vm.child.pid ?? -1,
    end: async () => {
      // A clean poweroff lets Porthole give devices back itself; a kill leaves it to the journal.
      if (vm.child.exitCode === null && vm.child.signalCode === null) {
        con.send('poweroff -f\n');
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([vm.exited, new Promise((r) => { timer = setTimeout(r, 60000); })]);
        clearTimeout(timer);
      }
      con.close();
      await reapKitVm(vm);
      if (vmm === 'porthole') for (const l of repairUsbJournal(new UsbJournal(path.join(dataDir, 'porthole')))) log?.(`  repair: ${l}`);
      return errText;
    },
    why: (e) => {
      let text = `${LABELS[vmm]}: ${(e as Error).message.split('\n')[0]}`;
      // A guest that reset under the bench loses the command it was given: say why first.
      if (resets.length > 0) text += `; L2 reset under the bench (${resets.join('; ')})`;
      if (errText.trim()) text += `; stderr: ${errText.trim().split('\n').slice(-3).join(' | ')}`;
      return text;
    },
  };
  try {
    await con.waitForShell(300000);
  } catch (e) {
    const text = booted.why(e);
    await booted.end();
    throw new Error(text);
  }
  return booted;
}

/** Runs `body` on a booted VM; its error carries the VM's own account (resets, stderr). */
async function onVm<T>(vm: Booted, body: (con: SerialConsole) => Promise<T>): Promise<T> {
  try {
    return await body(vm.con);
  } catch (e) {
    throw new Error(vm.why(e));
  }
}

/** A command timed by L2's uptime; its output must print "bytes N". */
async function timedStream(con: SerialConsole, command: string, want: number, what: string): Promise<number> {
  const r = await con.run(`a=$(cut -d' ' -f1 /proc/uptime); n=$(${command}); b=$(cut -d' ' -f1 /proc/uptime); echo "elapsed $a $b"; echo bytes $n`, 600000);
  const { seconds, bytes } = parseTimedBytes(r.output);
  if (bytes !== want) throw new Error(`${what}: ${Number.isFinite(bytes) ? bytes : 'no'} bytes of ${want} (${r.output.trim().slice(-300)})`);
  if (!(seconds > 0)) throw new Error(`${what}: no time (${r.output.trim().slice(-300)})`);
  return bytes / 1e6 / seconds;
}

/** One boot with L1's e1000 assigned: ping and both streams. */
export async function measureE1000(vmm: BootVmm, kit: KitPaths, nic: string, dataDir: string, log: (l: string) => void): Promise<NicSample> {
  if (vmm === 'qemu') bindToVfio(nic);
  let vm: Booted | undefined;
  try {
    vm = await bootKitWith(vmm, kit, dataDir, 'kit.modules=e1000', ['--pci-assign', nic, '--verbose', '--stats'], ['-device', `vfio-pci,host=${nic}`]);
    return await onVm(vm, async (con) => {
      const link = await con.run('for i in $(seq 60); do [ -e /sys/class/net/eth0 ] && break; sleep 0.5; done; ip link set eth0 up; ip addr add 10.0.2.15/24 dev eth0; ' +
        'for i in $(seq 40); do [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" = 1 ] && break; sleep 0.5; done; echo "carrier $(cat /sys/class/net/eth0/carrier)"', 90000);
      if (!/carrier 1/.test(link.output)) throw new Error(`eth0 has no carrier in L2: ${link.output.trim().slice(-200)}`);
      // The first pings fill the ARP caches and wake the path: not counted.
      await con.run(`ping -c 5 -i 0.2 -W 10 ${GATEWAY}`, 60000);
      const ping = await con.run(`ping -c ${PINGS} -i 0.2 -W 10 ${GATEWAY}`, 120000);
      const rttMs = parsePingMean(ping.output);
      if (ping.status !== 0 || !Number.isFinite(rttMs)) throw new Error(`ping ${GATEWAY} failed: ${ping.output.trim().slice(-200)}`);
      const { address, sinkPort, sourcePort, bytes } = E1000_STREAM;
      // The sink reads `bytes` and answers how many it got (then closes, which ends nc); the
      // source sends `bytes` and closes, and wc counts what arrived.
      const sendMBps = await timedStream(con, `dd if=/dev/zero bs=65536 count=${bytes / 65536} 2>/dev/null | nc ${address} ${sinkPort}`, bytes, 'send');
      const receiveMBps = await timedStream(con, `nc ${address} ${sourcePort} </dev/null | wc -c`, bytes, 'receive');
      log(`  e1000 under ${LABELS[vmm]}: ping ${rttMs.toFixed(3)} ms, send ${sendMBps.toFixed(2)} MB/s, receive ${receiveMBps.toFixed(2)} MB/s`);
      return { rttMs, sendMBps, receiveMBps };
    });
  } finally {
    const stderr = await vm?.end();
    const exits = vmm === 'porthole' && stderr !== undefined ? parseExitTable(stderr) : null;
    if (exits) log(`  Porthole's VM exits by reason over the e1000 run (boot included): ${Object.entries(exits).map(([k, v]) => `${k} ${v}`).join(', ')}`);
    if (vmm === 'qemu') releaseFromVfio(nic, true);
  }
}

/** Where L2 sees the first function Porthole assigns. */
const ASSIGNED_ADDRESS = '0000:00:18.0';

/** Passes of stick1 read per boot (8 MiB each). */
const STICK_PASSES = 4;

/** One boot with a USB rule for stick1 and the path pinned: dd O_DIRECT reads of all of it, MB/s. */
export async function measureStick1(pathName: UsbPathName, kit: KitPaths, dataDir: string, log: (l: string) => void): Promise<number> {
  const stick = STICKS.stick1;
  await stickBoundInL1(stick);
  const config = path.join(dataDir, `stick1-${pathName}.json`);
  fs.mkdirSync(dataDir, { recursive: true });
  fs.writeFileSync(config, JSON.stringify({ name: `stick1-${pathName}`, usbPassthroughPath: pathName, usb: { controller: 'xhci', rules: [{ match: { serial: stick.serial } }] } }));
  let vm: Booted | undefined;
  try {
    vm = await bootKitWith('porthole', kit, dataDir, `kit.modules=${PASSTHROUGH_KIT_MODULES}`, ['--config', config, '--verbose'], []);
    return await onVm(vm, async (con) => {
      const found = await con.run(`for i in $(seq 120); do ls /sys/block | grep -q '^sd' && break; sleep 0.5; done; for d in /sys/block/sd*; do echo "DISK $(basename $d) $(cat $d/size) $(readlink -f $d)"; done`, 90000);
      const disk = /^DISK (sd[a-z]+) (\d+) (\S+)$/m.exec(found.output);
      if (!disk || Number(disk[2]) !== stick.sizeMiB * 2048) throw new Error(`no ${stick.sizeMiB} MiB disk in L2 (${found.output.trim().slice(-200)})`);
      // The assigned controller is the VM's first assigned function; the emulated xHCI is elsewhere.
      if (disk[3].includes(`/${ASSIGNED_ADDRESS}/`) !== (pathName === 'controller')) {
        throw new Error(`stick1 in L2 is ${disk[3]}: not the ${pathName} path`);
      }
      const bytes = STICK_PASSES * stick.sizeMiB * 1048576;
      const command = `for p in $(seq ${STICK_PASSES}); do dd if=/dev/${disk[1]} of=/dev/null bs=1048576 iflag=direct 2>/dev/null || exit 1; done; echo ${bytes}`;
      const rate = await timedStream(con, command, bytes, `stick1 read (${pathName} path)`);
      log(`  stick1 through the ${pathName} path: ${rate.toFixed(2)} MB/s (${STICK_PASSES} x ${stick.sizeMiB} MiB, O_DIRECT)`);
      return rate;
    });
  } finally {
    await vm?.end();
    await stickBoundInL1(stick).catch(() => undefined);
  }
}
