// Network throughput through user-mode NAT: the rig's L2 kit on a virtio-net card whose
// backend is libslirp with two TCP port forwards, under Porthole (`--nic virtio,user,hostfwd=…`)
// and under QEMU (`-netdev user,hostfwd=… -device virtio-net-pci`), alternating in one run.
// L2 gets its address by DHCP (busybox udhcpc), then:
//   to-guest    this process connects to the first forward and writes BYTES; L2's busybox nc
//               writes them to a file, and the time is until L2 reports the file complete;
//   from-guest  L2's nc streams BYTES of zeros into the second forward; the time is from the
//               connect until the last byte arrived here.
// Both sides use the same libslirp (Debian's libslirp0) and the same card features: QEMU's
// virtio-net withdraws its checksum and segmentation offloads when its peer has no virtio-net
// header (virtio_net_get_features: -netdev user has none), and Porthole's never offers them.
//
// It needs a KVM that boots Linux: in practice the rig's L1 (npm run bench -- net).
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { SerialConsole } from '../rig/console';
import { kitDhcp } from '../rig/kit-net';
import { median, reapKitVm, spawnKitVm, unpackKitKernel, type BootVmm, type KitPaths } from './boot';
import { writeBenchResult } from './paths';

/** Target from issue 13: Porthole's MB/s at least QEMU's. */
export const NET_TARGET = 1.0;
const LABELS: Record<BootVmm, string> = { porthole: 'Porthole', qemu: 'QEMU' };
const KIT_MODULES = 'kit.modules=virtio_pci,virtio_net';
const TO_GUEST_HOST_PORT = 40101;
const FROM_GUEST_HOST_PORT = 40102;
const TO_GUEST_PORT = 5001;
const FROM_GUEST_PORT = 5002;
const CHUNK = 65536;

type Measure = 'to-guest' | 'from-guest';
const MEASURES: Measure[] = ['to-guest', 'from-guest'];

export interface NetSample {
  vmm: BootVmm;
  round: number;
  /** MB/s (10^6 bytes per second). */
  rates: Partial<Record<Measure, number>>;
  failure?: string;
  /** L2 reset (Porthole: a guest reset, QEMU with -no-reboot: it exited) during the round. */
  lostL2?: boolean;
}

export interface NetBenchOptions {
  kit: KitPaths;
  rounds: number;
  /** Bytes per direction per boot (default 32 MiB). */
  bytes?: number;
  retries?: number;
  log?: (line: string) => void;
  /** A folder for a pcap of each boot's card (Porthole pcap=, QEMU filter-dump): where time goes. */
  pcapDir?: string;
}

export interface NetBenchResult {
  bytes: number;
  rounds: number;
  samples: NetSample[];
  ratios: Partial<Record<Measure, number>>;
  met: boolean;
}

const forwards = `hostfwd=tcp:127.0.0.1:${TO_GUEST_HOST_PORT}-:${TO_GUEST_PORT},hostfwd=tcp:127.0.0.1:${FROM_GUEST_HOST_PORT}-:${FROM_GUEST_PORT}`;

/** Connects to a forwarded port, retrying while slirp's guest side is not listening yet. */
function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => resolve(s));
    s.once('error', reject);
  });
}

export async function toGuest(con: SerialConsole, bytes: number): Promise<number> {
  // nc's stdin stays open and empty: at EOF on its stdin busybox nc may close the connection early.
  await con.runOk(`rm -f /tmp/rx; (sleep 100000 | nc -l -p ${TO_GUEST_PORT} > /tmp/rx &) ; sleep 1`);
  const chunk = Buffer.alloc(CHUNK, 0x5a);
  const started = performance.now();
  const s = await connect(TO_GUEST_HOST_PORT);
  s.on('error', () => {});
  const wrote = (async () => {
    for (let sent = 0; sent < bytes; sent += CHUNK) {
      if (!s.write(chunk)) await new Promise((r) => s.once('drain', r));
    }
  })();
  const done = await con.run(`while [ "$(stat -c %s /tmp/rx)" -lt ${bytes} ]; do usleep 20000; done; echo RX-DONE; rm -f /tmp/rx`, 600000);
  const ms = performance.now() - started;
  await wrote;
  s.destroy();
  if (done.status !== 0 || !done.output.includes('RX-DONE')) throw new Error(`to-guest: L2 did not receive ${bytes} bytes: ${done.output.trim()}`);
  return bytes / 1e6 / (ms / 1000);
}

export async function fromGuest(con: SerialConsole, bytes: number): Promise<number> {
  await con.runOk(`(dd if=/dev/zero bs=${CHUNK} count=${bytes / CHUNK} 2>/dev/null | nc -l -p ${FROM_GUEST_PORT} &) ; sleep 1`);
  const started = performance.now();
  const s = await connect(FROM_GUEST_HOST_PORT);
  let got = 0;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`from-guest: ${got} of ${bytes} bytes in 600 s`)), 600000);
    s.on('data', (d: Buffer) => {
      got += d.length;
      if (got >= bytes) { clearTimeout(timer); resolve(); }
    });
    s.once('close', () => { clearTimeout(timer); if (got < bytes) reject(new Error(`from-guest: the stream ended after ${got} of ${bytes} bytes`)); });
    s.once('error', (e) => { clearTimeout(timer); reject(e); });
  });
  const ms = performance.now() - started;
  s.destroy();
  return bytes / 1e6 / (ms / 1000);
}

/** Races `step` against the loss of L2: the promise `lost` rejects with why. */
function unlessLost<T>(step: Promise<T>, lost: Promise<never>): Promise<T> {
  return Promise.race([step, lost]);
}

async function runOnce(vmm: BootVmm, kit: KitPaths, bytes: number, round: number, log: (l: string) => void, pcapDir?: string): Promise<NetSample> {
  const sample: NetSample = { vmm, round, rates: {} };
  const pcap = pcapDir ? `${pcapDir}/net-${vmm}-round${round}-${Date.now()}.pcap${vmm === 'porthole' ? 'ng' : ''}` : null;
  if (pcap) log(`  round ${round}, ${LABELS[vmm]}: the card's frames go to ${pcap}`);
  // --verbose: Porthole logs "guest reset" (a triple fault) and relaunches; QEMU has -no-reboot
  // and exits. Either way L2 is lost and the round fails at once instead of at a 600 s timeout.
  const vm = spawnKitVm(vmm, kit, 1, {
    append: KIT_MODULES,
    porthole: ['--verbose', '--nic', `virtio,user,${forwards}${pcap ? `,pcap=${pcap}` : ''}`],
    qemu: ['-netdev', `user,id=net0,${forwards}`, '-device', 'virtio-net-pci,netdev=net0', ...(pcap ? ['-object', `filter-dump,id=dump0,netdev=net0,file=${pcap}`] : [])],
  });
  let errText = '';
  let errPartial = '';
  let loseL2: (why: Error) => void = () => {};
  const lost = new Promise<never>((_, reject) => { loseL2 = reject; });
  lost.catch(() => {});
  vm.child.stderr!.setEncoding('utf8');
  vm.child.stderr!.on('data', (chunk: string) => {
    const lines = (errPartial + chunk).split('\n');
    errPartial = lines.pop() ?? '';
    for (const line of lines) {
      if (line.startsWith('porthole: guest reset')) { sample.lostL2 = true; loseL2(new Error(`L2 lost: ${line.slice('porthole: '.length)}`)); }
      if (/frames were dropped/.test(line)) log(`  ${LABELS[vmm]}: ${line}`);
      if (line.trim()) errText = (errText + line + '\n').slice(-2000);
    }
  });
  let reaping = false;
  void vm.exited.then(() => { if (reaping) return; sample.lostL2 = true; loseL2(new Error(`L2 lost: ${LABELS[vmm]} exited (exit code ${vm.child.exitCode}, signal ${vm.child.signalCode})`)); });
  const con = SerialConsole.fromChild(vm.child, { name: `L2 on ${LABELS[vmm]}` });
  try {
    await unlessLost(con.waitForShell(300000), lost);
    await unlessLost(con.run('for i in $(seq 60); do [ -e /sys/class/net/eth0 ] && break; sleep 0.5; done'), lost);
    const { lease } = await unlessLost(kitDhcp(con), lost);
    if (lease.ip !== '10.0.2.15') throw new Error(`the lease is ${lease.ip}, not 10.0.2.15`);
    sample.rates['to-guest'] = await unlessLost(toGuest(con, bytes), lost);
    sample.rates['from-guest'] = await unlessLost(fromGuest(con, bytes), lost);
  } catch (e) {
    sample.failure = (e as Error).message.split('\n')[0];
    if (errText.trim()) sample.failure += `; stderr: ${errText.trim().split('\n').filter((l) => !l.startsWith('porthole: timing')).slice(-3).join(' | ')}`;
  } finally {
    con.close();
    reaping = true;
    await reapKitVm(vm);
  }
  log(`  round ${round}, ${LABELS[vmm].padEnd(8)} ${MEASURES.filter((m) => sample.rates[m] !== undefined).map((m) => `${m} ${sample.rates[m]!.toFixed(2)} MB/s`).join(', ')}${sample.failure ? ` FAILED${sample.lostL2 ? ' (L2 lost)' : ''} (${sample.failure})` : ''}`);
  return sample;
}

export async function runNetBench(o: NetBenchOptions): Promise<NetBenchResult> {
  const log = o.log ?? ((line: string) => console.log(line));
  const bytes = o.bytes ?? 32 * 1048576;
  const retries = o.retries ?? 1;
  for (const f of [o.kit.vmlinuz, o.kit.initrd]) if (!fs.existsSync(f)) throw new Error(`the L2 kit file ${f} is missing`);
  log(`network through user-mode NAT: the L2 kit, 1 vCPU, virtio-net on libslirp with TCP port forwards: Porthole (--nic virtio,user) against QEMU -accel kvm (-netdev user + virtio-net-pci), ${o.rounds} rounds alternating`);
  log(`  per boot: udhcpc, then ${bytes / 1048576} MiB host→guest (127.0.0.1:${TO_GUEST_HOST_PORT} → nc in L2) and ${bytes / 1048576} MiB guest→host (nc in L2 → 127.0.0.1:${FROM_GUEST_HOST_PORT})`);
  log(`load average at start: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')} on ${os.cpus().length} CPUs`);
  unpackKitKernel(o.kit, log);
  const samples: NetSample[] = [];
  for (let round = 1; round <= o.rounds; round++) {
    const order: BootVmm[] = round % 2 === 1 ? ['porthole', 'qemu'] : ['qemu', 'porthole'];
    for (const vmm of order) {
      for (let attempt = 0; attempt <= retries; attempt++) {
        const s = await runOnce(vmm, o.kit, bytes, round, log, o.pcapDir);
        samples.push(s);
        if (!s.failure) break;
      }
    }
  }
  const ok = (vmm: BootVmm) => samples.filter((s) => s.vmm === vmm && !s.failure);
  const ratios: Partial<Record<Measure, number>> = {};
  let met = true;
  log(`\n${'medians'.padEnd(10)}${MEASURES.map((m) => m.padStart(14)).join('')}   (MB/s)   boots ok, failed (of which L2 lost)`);
  for (const vmm of ['porthole', 'qemu'] as BootVmm[]) {
    const cells = MEASURES.map((m) => {
      const v = median(ok(vmm).map((s) => s.rates[m]!));
      return (Number.isFinite(v) ? v.toFixed(2) : '-').padStart(14);
    });
    log(`${LABELS[vmm].padEnd(10)}${cells.join('')}   ${String(ok(vmm).length).padStart(5)} ${String(samples.filter((s) => s.vmm === vmm && s.failure).length).padStart(6)} (${samples.filter((s) => s.vmm === vmm && s.lostL2).length})`);
  }
  for (const m of MEASURES) {
    const ratio = median(ok('porthole').map((s) => s.rates[m]!)) / median(ok('qemu').map((s) => s.rates[m]!));
    ratios[m] = ratio;
    met &&= ratio >= NET_TARGET;
    log(`Porthole / QEMU ${m.padEnd(10)} ${Number.isFinite(ratio) ? ratio.toFixed(2) : '-'}x   target >= ${NET_TARGET.toFixed(1)}x: ${ratio >= NET_TARGET ? 'met' : 'MISSED'}`);
  }
  for (const s of samples.filter((x) => x.failure)) log(`  failed boot: ${LABELS[s.vmm]} round ${s.round}: ${s.failure}`);
  log(`load average at end: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  const result: NetBenchResult = { bytes, rounds: o.rounds, samples, ratios, met };
  writeBenchResult('net.json', result);
  return result;
}
