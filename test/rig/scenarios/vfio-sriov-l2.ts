// One NVMe controller shared by two VMs at once through SR-IOV, then VM processes SIGKILLed while
// they hold assigned devices.
//
// Part 1: L1's NVMe PF makes 2 VFs (nvme-cli gives each its flexible queue and interrupt); the
// PF's namespace 1 stays attached to VF1 only, namespace 2 (detached at QEMU start) is attached to
// VF2 only (and to the PF, so L1 can check it). Two Porthole VMs run at the same time, each with
// one VF (--pci-assign); each L2's nvme driver binds its VF on MSI-X, sees exactly one namespace
// with its own nsid, reads by DMA the MiB L1 wrote there through the PF, and writes the next MiB
// by DMA (L1 reads it back through the PF). After both VMs the VFs are as before and the shared
// journal is empty.
// Part 2: both VFs on L1's nvme driver; 20 times a Porthole VM with both VFs is SIGKILLed once it
// has them open through VFIO (at a point that moves through the following 1.5 s). Both must go
// back to nvme: after odd runs and the last through the repair the manager runs for a dead VM
// process (repairUsbJournal; controllers live again, journal empty), after the other even runs
// through the next `porthole run --pci-assign`, whose start repairs the dead holder's devices
// (it says so, and journals nvme as the driver to give back) before taking them again.
import { spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setSriovVfs } from '../../../main/host/pci-binding';
import { listPciDevices } from '../../../main/host/pci-inventory';
import { repairUsbJournal, UsbJournal } from '../../../main/host/usb-journal';
import { SerialConsole } from '../console';
import { onlineNvmeVf } from '../l1-nvme';
import { readTrim, until } from '../l1-usb';
import { l1ProjectDir } from '../paths';
import { consoleLogger, scenario, type ScenarioContext } from '../scenario';

const GUEST_ADDRESS = '0000:00:18.0';
const KILL_RUNS = 20;
const MIB_BLOCKS = 'bs=65536 count=16';

function driverOf(address: string): string | null {
  try { return path.basename(fs.readlinkSync(`/sys/bus/pci/devices/${address}/driver`)); } catch { return null; }
}

function liveController(address: string): string | null {
  try {
    const c = fs.readdirSync(`/sys/bus/pci/devices/${address}/nvme`)[0];
    return c !== undefined && readTrim(`/sys/bus/pci/devices/${address}/nvme/${c}/state`) === 'live' ? c : null;
  } catch { return null; }
}

/** nvme-cli; `tolerate` is output that counts as success (an attachment that is there already). */
function nvme(ctx: ScenarioContext, args: string[], tolerate?: RegExp, quiet = false): string {
  const r = spawnSync('nvme', args, { encoding: 'utf8' });
  const out = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim();
  ctx.log(`$ nvme ${args.join(' ')}${out && !quiet ? `\n${out}` : ''}`);
  if (r.error) throw new Error(`nvme: ${r.error.message}`);
  if (r.status !== 0 && !(tolerate?.test(out) ?? false)) throw new Error(`nvme ${args.join(' ')} exited with ${r.status}: ${out}`);
  return r.stdout ?? '';
}

/** L1's block device for namespace `nsid` (only the PF's controller is on nvme in part 1). */
function namespaceDevice(nsid: number): string | null {
  for (const d of fs.readdirSync('/sys/block').filter((n) => /^nvme\d+n\d+$/.test(n))) {
    try { if (Number(readTrim(`/sys/block/${d}/nsid`)) === nsid) return d; } catch { /* going away */ }
  }
  return null;
}

function l1Md5(ctx: ScenarioContext, dev: string, skipMib: number): string {
  return ctx.exec('sh', ['-c', `/usr/bin/dd if=/dev/${dev} ${MIB_BLOCKS} skip=${skipMib * 16} iflag=direct 2>/dev/null | md5sum`]).trim().split(/\s+/)[0];
}

function porthole(ctx: ScenarioContext, vfs: string[], dataDir: string): ChildProcess {
  const args = [
    `${l1ProjectDir}/bin/porthole`, 'run', '--kernel', ctx.kit.vmlinuz, '--initrd', ctx.kit.initrd,
    '--append', 'console=ttyS0 quiet panic=-1 kit.modules=nvme', '--mem', '192M', '--cpus', '1',
    '--serial', 'stdio', '--verbose', ...vfs.flatMap((vf) => ['--pci-assign', vf]),
  ];
  return ctx.spawn(process.execPath, args, { env: { ...process.env, PORTHOLE_FORBID_KOFFI_VIEW: '1', XDG_DATA_HOME: dataDir } });
}

interface Share {
  label: string;
  vf: string;
  nsid: number;
  /** L1's block device for the namespace, through the PF. */
  l1Dev: string;
  /** md5 of the first MiB L1 wrote. */
  pattern: string;
}

/** Part 1 for one VM, alongside the other; returns the md5 of the MiB its L2 wrote. */
async function sharedVm(ctx: ScenarioContext, s: Share, vm: ChildProcess, con: SerialConsole, peer: ChildProcess, fail: (w: string) => void, found: string[]): Promise<string | null> {
  const t = `${s.label} (VF ${s.vf}, nsid ${s.nsid})`;
  if (driverOf(s.vf) !== 'vfio-pci') fail(`while ${s.label} runs, L1's ${s.vf} is on ${driverOf(s.vf) ?? 'no driver'}, not vfio-pci`);
  await con.run('for i in $(seq 60); do [ -e /dev/nvme0n1 ] && break; sleep 0.5; done', 60000);
  const dev = await con.run(`d=/sys/bus/pci/devices/${GUEST_ADDRESS}; echo "driver $(basename $(readlink $d/driver))"; echo "namespaces $(ls /sys/block | grep '^nvme' | tr '\\n' ' ')"; echo "nsid $(cat /sys/block/nvme0n1/nsid)"`);
  ctx.log(`${t}: ${GUEST_ADDRESS} in L2:\n${dev.output}`);
  if (!/^driver nvme$/m.test(dev.output)) fail(`${s.label}: L2's nvme driver did not bind ${GUEST_ADDRESS}`);
  // Multipath path nodes (nvme0c0n1) are not namespaces of their own.
  const names = (/^namespaces (.*)$/m.exec(dev.output)?.[1].trim().split(/\s+/) ?? []).filter((n) => /^nvme\d+n\d+$/.test(n));
  const nsid = Number(/^nsid (\d+)$/m.exec(dev.output)?.[1] ?? NaN);
  if (names.join(' ') !== 'nvme0n1' || nsid !== s.nsid) fail(`${s.label}: L2 sees namespaces [${names.join(' ')}] with nvme0n1 nsid ${nsid}, expected only nvme0n1 = nsid ${s.nsid}`);
  else found.push(`${s.label} sees one namespace, nsid ${nsid}`);
  const read = await con.run(`dd if=/dev/nvme0n1 ${MIB_BLOCKS} 2>/dev/null | md5sum`, 120000);
  const l2Md5 = /^([0-9a-f]{32})/m.exec(read.output)?.[1];
  ctx.log(`${t}: L2 read md5 ${l2Md5 ?? '?'}, L1 wrote ${s.pattern}`);
  if (l2Md5 !== s.pattern) fail(`${s.label} read md5 ${l2Md5 ?? read.output.trim()} from nsid ${s.nsid}, L1 wrote ${s.pattern} there through the PF`);
  else found.push(`${s.label} read L1's MiB of nsid ${s.nsid} (md5 ${l2Md5})`);
  const wrote = await con.run(`dd if=/dev/urandom of=/tmp/w ${MIB_BLOCKS} 2>/dev/null; dd if=/tmp/w of=/dev/nvme0n1 ${MIB_BLOCKS} seek=16 conv=fsync 2>/dev/null; md5sum /tmp/w`, 120000);
  const l2Wrote = /^([0-9a-f]{32})/m.exec(wrote.output)?.[1] ?? null;
  ctx.log(`${t}: L2 wrote a MiB with md5 ${l2Wrote ?? '?'}`);
  const irq = await con.run('grep -i nvme /proc/interrupts');
  const msix = irq.output.split('\n').filter((l) => /PCI-MSI/i.test(l) && /nvme/.test(l));
  const count = msix.reduce((n, l) => n + Number(/^\s*\d+:\s+(\d+)/.exec(l)?.[1] ?? 0), 0);
  if (msix.length === 0 || count === 0) fail(`${s.label}: no nvme MSI-X interrupts counted in L2: ${irq.output.trim()}`);
  else found.push(`${s.label}: ${count} interrupts on ${msix.length} MSI-X vector(s)`);
  // The two VMs overlap: the other one is still running when this one has done its I/O.
  if (vm.exitCode !== null || peer.exitCode !== null) fail(`${s.label}: a VM ended before both had done their I/O`);
  return l2Wrote;
}

async function partShare(ctx: ScenarioContext, pfCtrl: string, vfs: string[], scids: number[]): Promise<string[]> {
  const pfCntlid = (JSON.parse(nvme(ctx, ['id-ctrl', `/dev/${pfCtrl}`, '-o', 'json'], undefined, true)) as { cntlid?: number }).cntlid;
  if (pfCntlid === undefined) throw new Error('nvme id-ctrl names no cntlid for the PF');
  const already = /Already Attached|already attached/i;
  const notThere = /not attached|Namespace Not Attached/i;
  // Namespace 1 is shared (QEMU attached it to every controller): VF2 loses it.
  nvme(ctx, ['attach-ns', `/dev/${pfCtrl}`, '-n', '1', '-c', String(scids[0])], already);
  nvme(ctx, ['detach-ns', `/dev/${pfCtrl}`, '-n', '1', '-c', String(scids[1])], notThere);
  nvme(ctx, ['attach-ns', `/dev/${pfCtrl}`, '-n', '2', '-c', `${pfCntlid},${scids[1]}`], already);
  nvme(ctx, ['ns-rescan', `/dev/${pfCtrl}`]);
  // Which controllers have each namespace, for the log (L2 proves it below).
  for (const n of [1, 2]) nvme(ctx, ['list-ctrl', `/dev/${pfCtrl}`, '-n', String(n)], /[\s\S]*/);
  const dev1 = await until('L1\'s block device for nsid 1', 30000, () => namespaceDevice(1));
  const dev2 = await until('L1\'s block device for nsid 2', 30000, () => namespaceDevice(2));
  const shares: Share[] = [];
  for (const [i, l1Dev] of [dev1, dev2].entries()) {
    ctx.exec('sh', ['-c', `/usr/bin/dd if=/dev/urandom of=/tmp/pattern ${MIB_BLOCKS} 2>/dev/null && /usr/bin/dd if=/tmp/pattern of=/dev/${l1Dev} ${MIB_BLOCKS} oflag=direct conv=fsync 2>&1`]);
    shares.push({ label: `VM${i + 1}`, vf: vfs[i], nsid: i + 1, l1Dev, pattern: l1Md5(ctx, l1Dev, 0) });
  }
  if (shares[0].pattern === shares[1].pattern) throw new Error('L1 reads the same MiB from nsid 1 and nsid 2: they are not two namespaces');
  ctx.log(`L1 wrote ${shares.map((s) => `nsid ${s.nsid} (/dev/${s.l1Dev}) md5 ${s.pattern}`).join(', ')}`);
  const before = vfs.map(driverOf);
  const dataDir = '/tmp/vfio-sriov-l2-data';
  fs.rmSync(dataDir, { recursive: true, force: true });
  const failures: string[] = [];
  const found: string[] = [];
  const fail = (why: string) => { ctx.log(`CHECK FAILED: ${why}`); failures.push(why); };
  const vms = shares.map((s) => {
    const vm = porthole(ctx, [s.vf], dataDir);
    const exited = new Promise<string>((resolve) => vm.once('exit', (code, sig) => resolve(sig ?? `code ${code}`)));
    vm.stderr!.on('data', (d: Buffer) => {
      for (const l of d.toString().split('\n')) if (l.trim()) ctx.log(`${s.label} porthole: ${l}`);
    });
    const con = SerialConsole.fromChild(vm, { name: `${s.label} COM1`, onOutput: consoleLogger(`${s.label}| `) });
    return { s, vm, exited, con };
  });
  const wrote: (string | null)[] = [null, null];
  try {
    await Promise.all(vms.map((v) => v.con.waitForShell(600000)));
    found.push('both L2s booted at once');
    const results = await Promise.all(vms.map((v, i) => sharedVm(ctx, v.s, v.vm, v.con, vms[1 - i].vm, fail, found)));
    results.forEach((r, i) => { wrote[i] = r; });
    for (const v of vms) v.con.send('poweroff -f\n');
    for (const v of vms) {
      let timer: NodeJS.Timeout | undefined;
      const end = await Promise.race([v.exited, new Promise<string>((resolve) => { timer = setTimeout(() => resolve('timeout'), 120000); })]);
      clearTimeout(timer);
      if (end !== 'code 0') fail(`after "poweroff -f" in ${v.s.label}, porthole ended with ${end}, expected exit code 0`);
    }
  } finally {
    for (const v of vms) v.vm.kill('SIGKILL');
  }
  for (const [i, s] of shares.entries()) {
    const back = l1Md5(ctx, s.l1Dev, 1);
    ctx.log(`L1 reads md5 ${back} from nsid ${s.nsid}'s second MiB; ${s.label} wrote ${wrote[i] ?? 'nothing'}`);
    if (wrote[i] === null || back !== wrote[i]) fail(`L1 reads md5 ${back} from nsid ${s.nsid} where ${s.label} wrote ${wrote[i] ?? 'nothing'}`);
    else found.push(`L1 reads back through the PF the MiB ${s.label} wrote to nsid ${s.nsid} (md5 ${back})`);
    const after = driverOf(s.vf);
    if (after !== before[i]) fail(`after ${s.label}, ${s.vf} is on ${after ?? 'no driver'}, before it was on ${before[i] ?? 'no driver'}`);
    else found.push(`${s.vf} back on ${after ?? 'no driver'} as before`);
  }
  const left = new UsbJournal(path.join(dataDir, 'porthole')).read();
  if (left.pci.length + left.entries.length > 0) fail(`the journal still holds ${left.pci.map((e) => e.address).join(', ')}`);
  if (failures.length > 0) throw new Error(`${failures.length} check(s) failed: ${failures.join('; ')} (passed: ${found.join('; ')})`);
  return found;
}

function vfioGroup(address: string): string {
  return path.basename(fs.readlinkSync(`/sys/bus/pci/devices/${address}/iommu_group`));
}

/** Whether process `pid` has /dev/vfio/GROUP open for every group. */
function holdsGroups(pid: number, groups: string[]): boolean {
  let links: string[];
  try {
    links = fs.readdirSync(`/proc/${pid}/fd`).map((fd) => { try { return fs.readlinkSync(`/proc/${pid}/fd/${fd}`); } catch { return ''; } });
  } catch { return false; }
  return groups.every((g) => links.includes(`/dev/vfio/${g}`));
}

async function partKill(ctx: ScenarioContext, vfs: string[]): Promise<string> {
  for (const vf of vfs) {
    // With autoprobe off a VF binds only to the driver its driver_override names.
    fs.writeFileSync(`/sys/bus/pci/devices/${vf}/driver_override`, 'nvme');
    if (driverOf(vf) === null) fs.writeFileSync('/sys/bus/pci/drivers/nvme/bind', vf);
  }
  for (const vf of vfs) await until(`nvme to bring ${vf} up in L1`, 60000, () => liveController(vf));
  const groups = vfs.map(vfioGroup);
  ctx.log(`kill runs: ${vfs.join(', ')} on nvme (IOMMU groups ${groups.join(', ')})`);
  const dataDir = '/tmp/vfio-sriov-l2-kill';
  fs.rmSync(dataDir, { recursive: true, force: true });
  const journal = new UsbJournal(path.join(dataDir, 'porthole'));
  // Per run, what went wrong (empty: both VFs went back to nvme).
  const outcome = new Map<number, string[]>();
  // An even run's orphans are given back by the next `porthole run --pci-assign` (its start
  // repairs a dead holder's devices before taking them); the others, and the last, by the
  // repair the manager runs when a VM process dies.
  let left: number | null = null;
  for (let run = 1; run <= KILL_RUNS; run++) {
    const byNextRun = run % 2 === 0 && run < KILL_RUNS;
    const vm = porthole(ctx, vfs, dataDir);
    let err = '';
    vm.stdout!.on('data', () => { /* L2's console: drained, not needed */ });
    vm.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
    const pid = vm.pid!;
    const exited = new Promise<void>((resolve) => vm.once('exit', () => resolve()));
    const why: string[] = [];
    outcome.set(run, why);
    try {
      const t0 = Date.now();
      // Journaled with nvme as the driver to give back: for a run after an even one, that also
      // shows this start gave the dead holder's VFs back to nvme before taking them.
      await until(`run ${run}: the VM process to hold both VFs through VFIO`, 90000, () => {
        if (vm.exitCode !== null) throw new Error(`run ${run}: porthole ended (${vm.exitCode}) before it held the VFs: ${err.trim().split('\n').slice(-5).join(' | ')}`);
        const entries = journal.read().pci;
        return vfs.every((vf) => driverOf(vf) === 'vfio-pci' && entries.some((e) => e.address === vf && e.pid === pid && e.driver === 'nvme'))
          && holdsGroups(pid, groups) ? true : null;
      });
      if (left !== null) {
        const missing = vfs.filter((vf) => !err.includes(`PCI: gave ${vf} back to nvme`));
        if (missing.length > 0) outcome.get(left)!.push(`run ${run}'s start did not say it gave ${missing.join(', ')} back to nvme: ${err.trim().split('\n').filter((l) => /PCI/.test(l)).join(' | ')}`);
        ctx.log(`kill run ${left}: ${missing.length === 0 ? `run ${run}'s porthole start gave both back to nvme, then took them again` : 'FAILED'}`);
        left = null;
      }
      const delay = (run * 389) % 1500;
      await new Promise((r) => setTimeout(r, delay));
      vm.kill('SIGKILL');
      await exited;
      const orphans = vfs.map((vf) => driverOf(vf) ?? 'no driver');
      const timing = `assigned after ${Date.now() - t0 - delay} ms, SIGKILL ${delay} ms later; left on ${orphans.join(', ')}`;
      if (byNextRun) {
        const held = journal.read().pci;
        if (!vfs.every((vf) => held.some((e) => e.address === vf && e.pid === pid))) why.push(`the journal does not hold both VFs for dead process ${pid}`);
        left = run;
        ctx.log(`kill run ${run}: ${timing}; left for the next porthole run to repair`);
        continue;
      }
      const lines = repairUsbJournal(journal);
      await until(`run ${run}: nvme to bring both VFs up again`, 60000, () => (vfs.every((vf) => liveController(vf) !== null) ? true : null))
        .catch((e: Error) => { why.push(`${e.message} (drivers: ${vfs.map((vf) => driverOf(vf) ?? 'none').join(', ')})`); });
      const still = journal.read().pci;
      if (still.length > 0) why.push(`the journal still holds ${still.map((e) => e.address).join(', ')}`);
      if (!vfs.every((vf) => lines.some((l) => l.startsWith(`PCI: gave ${vf} back to nvme`)))) why.push(`repair said: ${lines.join('; ')}`);
      ctx.log(`kill run ${run}: ${timing}; ${why.length === 0 ? `the manager's repair gave both back to nvme (${vfs.map(liveController).join(', ')})` : `FAILED: ${why.join('; ')}`}`);
    } catch (e) {
      why.push((e as Error).message);
      if (left !== null) { outcome.get(left)!.push(`run ${run} did not get to take the VFs back: ${(e as Error).message}`); left = null; }
      ctx.log(`kill run ${run}: FAILED: ${(e as Error).message}`);
      vm.kill('SIGKILL');
      await exited;
      for (const l of repairUsbJournal(journal)) ctx.log(`repair: ${l}`);
    }
  }
  const problems = [...outcome].filter(([, w]) => w.length > 0).map(([r, w]) => `run ${r}: ${w.join('; ')}`);
  const passed = KILL_RUNS - problems.length;
  const viaNextRun = Array.from({ length: KILL_RUNS }, (_, i) => i + 1).filter((r) => r % 2 === 0 && r < KILL_RUNS).length;
  const summary = `SIGKILL during assignment: both VFs back on nvme in ${passed} of ${KILL_RUNS} runs (${KILL_RUNS - viaNextRun} through the manager's journal repair, ${viaNextRun} through the next porthole run's, seen as it took them again)`;
  ctx.log(summary);
  if (passed !== KILL_RUNS) throw new Error(`${summary}; ${problems.join(' / ')}`);
  return summary;
}

scenario('vfio-sriov-l2', async (ctx) => {
  if (!fs.existsSync(`${l1ProjectDir}/dist/main/cli/main.js`)) throw new Error('Porthole is not built (dist/main/cli/main.js is missing): run npm run build');
  const pf = listPciDevices().find((d) => d.classCode >>> 8 === 0x0108 && d.sriov !== null);
  if (!pf) throw new Error('no NVMe controller with SR-IOV in L1');
  const pfCtrl = await until('the NVMe PF\'s controller', 30000, () => liveController(pf.address));
  const vfs = setSriovVfs(pf.address, 2, { autoprobe: false });
  const scids = vfs.map((vf, i) => onlineNvmeVf(ctx, pfCtrl, vf, i + 1));
  ctx.log(`PF ${pf.address} (/dev/${pfCtrl}): VFs ${vfs.join(', ')}, secondary controllers ${scids.join(', ')}`);
  const found = await partShare(ctx, pfCtrl, vfs, scids);
  found.push(await partKill(ctx, vfs));
  return found.join('; ');
});
