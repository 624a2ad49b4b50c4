// MSI-X and DMA of an assigned function under L2 Linux's own driver: an SR-IOV VF of L1's NVMe
// controller (brought online with nvme-cli, as vfio-l1 does) given to a Porthole VM with
// --pci-assign; L2's nvme driver binds it at 00:18.0 on MSI-X vectors (VFIO eventfds that are
// KVM irqfd routes; the table page trapped, the rest of BAR0 a KVM memory slot), reads the
// shared namespace by DMA into guest RAM (its first MiB has the random data L1 wrote through the
// PF) and writes its second MiB by DMA from guest RAM (L1 reads it back through the PF). After the
// VM, the VF is on what it had before (no driver: its PF has autoprobe off) and the journal is empty.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setSriovVfs } from '../../../main/host/pci-binding';
import { listPciDevices } from '../../../main/host/pci-inventory';
import { SerialConsole } from '../console';
import { driverOf } from '../l1-pci';
import { onlineNvmeVf } from '../l1-nvme';
import { readTrim, until } from '../l1-usb';
import { l1ProjectDir } from '../paths';
import { consoleLogger, scenario } from '../scenario';

const GUEST_ADDRESS = '0000:00:18.0';

scenario('vfio-msix-l2', async (ctx) => {
  const cli = `${l1ProjectDir}/bin/porthole`;
  if (!fs.existsSync(`${l1ProjectDir}/dist/main/cli/main.js`)) throw new Error('Porthole is not built (dist/main/cli/main.js is missing): run npm run build');
  const pf = listPciDevices().find((d) => d.classCode >>> 8 === 0x0108 && d.sriov !== null);
  if (!pf) throw new Error('no NVMe controller with SR-IOV in L1');
  const pfCtrl = await until('the NVMe PF\'s controller', 30000, () => {
    try {
      const c = fs.readdirSync(`/sys/bus/pci/devices/${pf.address}/nvme`)[0];
      return c !== undefined && readTrim(`/sys/bus/pci/devices/${pf.address}/nvme/${c}/state`) === 'live' ? c : null;
    } catch { return null; }
  });
  const ns = await until('the PF\'s namespace', 30000, () => fs.readdirSync('/dev').find((d) => new RegExp(`^${pfCtrl}n1$`).test(d)) ?? null);
  ctx.exec('sh', ['-c', `/usr/bin/dd if=/dev/urandom of=/tmp/pattern bs=65536 count=16 2>/dev/null && /usr/bin/dd if=/tmp/pattern of=/dev/${ns} bs=65536 count=16 oflag=direct conv=fsync 2>&1`]);
  const l1Md5 = ctx.exec('sh', ['-c', `/usr/bin/dd if=/dev/${ns} bs=65536 count=16 iflag=direct 2>/dev/null | md5sum`]).trim().split(/\s+/)[0];
  ctx.log(`PF ${pf.address} /dev/${ns}: first MiB written with random data, md5 ${l1Md5}`);
  const [vf] = setSriovVfs(pf.address, 1, { autoprobe: false });
  const scid = onlineNvmeVf(ctx, pfCtrl, vf, 1);
  // QEMU attaches a shared namespace to the VF's controller itself; attach it where it did not.
  const attach = spawnSync('nvme', ['attach-ns', `/dev/${pfCtrl}`, '-n', '1', '-c', String(scid)], { encoding: 'utf8' });
  const attachOut = `${attach.stdout ?? ''}${attach.stderr ?? ''}`.trim();
  ctx.log(`nvme attach-ns -n 1 -c ${scid}: ${attachOut}`);
  if (attach.status !== 0 && !/Already Attached/i.test(attachOut)) throw new Error(`nvme attach-ns for the VF's controller ${scid} failed: ${attachOut}`);
  const before = driverOf(vf);
  ctx.log(`VF ${vf} online, on ${before ?? 'no driver'}`);
  const dataDir = '/tmp/vfio-msix-l2-data';
  fs.rmSync(dataDir, { recursive: true, force: true });
  const args = [
    cli, 'run', '--kernel', ctx.kit.vmlinuz, '--initrd', ctx.kit.initrd,
    '--append', 'console=ttyS0 quiet panic=-1 kit.modules=nvme', '--mem', '256M', '--cpus', '1',
    '--serial', 'stdio', '--verbose', '--stats', '--pci-assign', vf,
  ];
  ctx.log(`node ${args.join(' ')}`);
  const vm = ctx.spawn(process.execPath, args, { env: { ...process.env, PORTHOLE_FORBID_KOFFI_VIEW: '1', XDG_DATA_HOME: dataDir } });
  const exited = new Promise<string>((resolve) => vm.once('exit', (code, sig) => resolve(sig ?? `code ${code}`)));
  vm.stderr!.on('data', (d: Buffer) => {
    for (const l of d.toString().split('\n')) if (l.trim()) ctx.log(`porthole: ${l}`);
  });
  let l2WroteMd5: string | null = null;
  const failures: string[] = [];
  const found: string[] = [];
  const fail = (why: string) => { ctx.log(`CHECK FAILED: ${why}`); failures.push(why); };
  try {
    const con = SerialConsole.fromChild(vm, { name: 'L2 on Porthole\'s COM1', onOutput: consoleLogger('L2| ') });
    await con.waitForShell(420000);
    if (driverOf(vf) !== 'vfio-pci') fail(`while the VM runs, L1's ${vf} is on ${driverOf(vf) ?? 'no driver'}, not vfio-pci`);
    await con.run('for i in $(seq 60); do [ -e /dev/nvme0n1 ] && break; sleep 0.5; done', 60000);
    const dev = await con.run(`d=/sys/bus/pci/devices/${GUEST_ADDRESS}; echo "driver $(basename $(readlink $d/driver))"; ls $d/msi_irqs 2>/dev/null | wc -l; ls /dev/nvme*; dmesg | grep -i nvme | tail -5`);
    ctx.log(`${GUEST_ADDRESS} in L2:\n${dev.output}`);
    if (!/^driver nvme$/m.test(dev.output)) fail(`L2's nvme driver did not bind ${GUEST_ADDRESS}`);
    const read = await con.run('dd if=/dev/nvme0n1 bs=65536 count=16 2>/dev/null | md5sum', 120000);
    const l2Md5 = /^([0-9a-f]{32})/m.exec(read.output)?.[1];
    if (l2Md5 !== l1Md5) fail(`L2 read md5 ${l2Md5 ?? read.output.trim()} from nvme0n1, L1 wrote ${l1Md5} through the PF`);
    else found.push(`L2's nvme bound ${GUEST_ADDRESS} and read the MiB L1 wrote (md5 matches)`);
    const wrote = await con.run('dd if=/dev/urandom of=/tmp/w bs=65536 count=16 2>/dev/null; dd if=/tmp/w of=/dev/nvme0n1 bs=65536 seek=16 count=16 conv=fsync 2>/dev/null; md5sum /tmp/w', 120000);
    l2WroteMd5 = /^([0-9a-f]{32})/m.exec(wrote.output)?.[1] ?? null;
    const irq = await con.run('grep -i nvme /proc/interrupts');
    ctx.log(`L2 /proc/interrupts:\n${irq.output}`);
    const msix = irq.output.split('\n').filter((l) => /PCI-MSI/i.test(l) && /nvme/.test(l));
    const count = msix.reduce((n, l) => n + Number(/^\s*\d+:\s+(\d+)/.exec(l)?.[1] ?? 0), 0);
    if (msix.length === 0 || count === 0) fail(`no nvme MSI-X interrupts counted in L2: ${irq.output.trim()}`);
    else found.push(`${count} interrupts on ${msix.length} MSI-X vectors`);
    con.send('poweroff -f\n');
    let timer: NodeJS.Timeout | undefined;
    const end = await Promise.race([exited, new Promise<string>((resolve) => { timer = setTimeout(() => resolve('timeout'), 120000); })]);
    clearTimeout(timer);
    if (end !== 'code 0') fail(`after "poweroff -f" in L2, porthole ended with ${end}, expected exit code 0`);
  } finally {
    vm.kill('SIGKILL');
  }
  const back = ctx.exec('sh', ['-c', `/usr/bin/dd if=/dev/${ns} bs=65536 skip=16 count=16 iflag=direct 2>/dev/null | md5sum`]).trim().split(/\s+/)[0];
  if (l2WroteMd5 === null || back !== l2WroteMd5) fail(`L1 reads md5 ${back} through the PF where L2 wrote ${l2WroteMd5 ?? 'nothing'}`);
  else found.push('L1 reads back through the PF the MiB L2 wrote (md5 matches)');
  const after = driverOf(vf);
  if (after !== before) fail(`after the VM, ${vf} is on ${after ?? 'no driver'}, before it was on ${before ?? 'no driver'}`);
  else found.push(`${vf} back on ${after ?? 'no driver'} as before`);
  const journal = path.join(dataDir, 'porthole', 'usb-taken');
  const left = fs.existsSync(journal) ? fs.readdirSync(journal) : [];
  if (left.length > 0) fail(`the journal still holds ${left.join(', ')}`);
  if (failures.length > 0) throw new Error(`${failures.length} check(s) failed: ${failures.join('; ')} (passed: ${found.join('; ')})`);
  return found.join('; ');
});
