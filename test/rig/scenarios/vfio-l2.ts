// A host PCI function assigned to a Porthole VM, driven by L2 Linux's own driver: L1's e1000
// (QEMU user networking, gateway 10.0.2.2) given with --pci-assign; L2's e1000 driver binds it
// at 00:18.0, gets the link, takes 10.0.2.15/24 and pings the gateway (its frames go by DMA
// into guest RAM through L1's IOMMU, its interrupts through VFIO eventfds and KVM irqfds).
// Then L2 reboots (a VM reset: the machine is rebuilt and the function's interrupts set up
// afresh) and does it all again. After the VM powers off, L1's e1000 driver owns the function
// again and Porthole's journal holds nothing for it. Last, a VM process SIGKILLed while it holds
// the function leaves it on vfio-pci (journaled); the next VM given it repairs that first (back
// to e1000, so it journals the real driver), runs, and gives it back to e1000 at its end.
import fs from 'node:fs';
import path from 'node:path';
import { listPciDevices } from '../../../main/host/pci-inventory';
import { SerialConsole } from '../console';
import { driverOf } from '../l1-pci';
import { l1ProjectDir } from '../paths';
import { consoleLogger, scenario } from '../scenario';

const KIT_MODULES = 'e1000';
const GUEST_ADDRESS = '0000:00:18.0';

scenario('vfio-l2', async (ctx) => {
  const cli = `${l1ProjectDir}/bin/porthole`;
  if (!fs.existsSync(`${l1ProjectDir}/dist/main/cli/main.js`)) throw new Error('Porthole is not built (dist/main/cli/main.js is missing): run npm run build');
  const nic = listPciDevices().find((d) => d.vendorId === 0x8086 && d.deviceId === 0x100e);
  if (!nic) throw new Error('no e1000 (8086:100e) in L1');
  ctx.log(`L1's e1000: ${nic.address} on ${nic.driver ?? 'no driver'}, IOMMU group ${nic.iommuGroup?.id ?? 'none'}`);
  if (nic.driver !== 'e1000') throw new Error(`L1's e1000 ${nic.address} is on ${nic.driver ?? 'no driver'} before the VM, not e1000`);
  const dataDir = '/tmp/vfio-l2-data';
  fs.rmSync(dataDir, { recursive: true, force: true });
  const args = [
    cli, 'run', '--kernel', ctx.kit.vmlinuz, '--initrd', ctx.kit.initrd,
    '--append', `console=ttyS0 quiet panic=-1 kit.modules=${KIT_MODULES}`, '--mem', '256M', '--cpus', '1',
    '--serial', 'stdio', '--verbose', '--stats', '--pci-assign', nic.address,
  ];
  ctx.log(`node ${args.join(' ')}`);
  const vm = ctx.spawn(process.execPath, args, { env: { ...process.env, PORTHOLE_FORBID_KOFFI_VIEW: '1', XDG_DATA_HOME: dataDir } });
  const exited = new Promise<string>((resolve) => vm.once('exit', (code, sig) => resolve(sig ?? `code ${code}`)));
  vm.stderr!.on('data', (d: Buffer) => {
    for (const l of d.toString().split('\n')) if (l.trim()) ctx.log(`porthole: ${l}`);
  });
  const failures: string[] = [];
  const found: string[] = [];
  const fail = (why: string) => { ctx.log(`CHECK FAILED: ${why}`); failures.push(why); };
  try {
    const con = SerialConsole.fromChild(vm, { name: 'L2 on Porthole\'s COM1', onOutput: consoleLogger('L2| ') });
    await con.waitForShell(420000);
    if (driverOf(nic.address) !== 'vfio-pci') fail(`while the VM runs, L1's ${nic.address} is on ${driverOf(nic.address) ?? 'no driver'}, not vfio-pci`);
    for (const round of ['first boot', 'after a VM reset']) {
      if (round !== 'first boot') {
        con.send('reboot -f\n');
        await con.waitForShell(420000);
      }
      await con.run('for i in $(seq 60); do [ -e /sys/class/net/eth0 ] && break; sleep 0.5; done', 60000);
      const dev = await con.run(`d=/sys/bus/pci/devices/${GUEST_ADDRESS}; echo "ids $(cat $d/vendor) $(cat $d/device)"; echo "driver $(basename $(readlink $d/driver))"; ls $d/net 2>&1; dmesg | grep -i e1000 | tail -3`);
      ctx.log(`${GUEST_ADDRESS} in L2 (${round}):\n${dev.output}`);
      if (!/^ids 0x8086 0x100e$/m.test(dev.output)) fail(`${round}: L2 does not see an 8086:100e at ${GUEST_ADDRESS}`);
      if (!/^driver e1000$/m.test(dev.output)) fail(`${round}: L2's e1000 driver did not bind ${GUEST_ADDRESS}`);
      const link = await con.run('ip link set eth0 up; ip addr add 10.0.2.15/24 dev eth0; for i in $(seq 40); do [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" = 1 ] && break; sleep 0.5; done; echo "carrier $(cat /sys/class/net/eth0/carrier)"', 60000);
      if (!/carrier 1/.test(link.output)) fail(`${round}: eth0 has no carrier in L2`);
      const ping = await con.run('ping -c 3 -W 10 10.0.2.2', 120000);
      ctx.log(`L2 ping 10.0.2.2 (${round}):\n${ping.output}`);
      const irq = await con.run('grep -i eth0 /proc/interrupts');
      ctx.log(`L2 /proc/interrupts (${round}): ${irq.output.trim()}`);
      if (ping.status !== 0) fail(`${round}: L2 could not ping the gateway 10.0.2.2: ${ping.output.trim().split('\n').slice(-2).join(' ')}`);
      else found.push(`${round}: L2's e1000 bound ${GUEST_ADDRESS}, link up, ${/(\d+ packets received)/.exec(ping.output)?.[1] ?? 'pings'} from 10.0.2.2, ${/^\s*\d+:\s+(\d+)/m.exec(irq.output)?.[1] ?? '?'} INTx interrupts (${/(IO-APIC\s+\S+)/.exec(irq.output)?.[1] ?? '?'})`);
    }
    con.send('poweroff -f\n');
    let timer: NodeJS.Timeout | undefined;
    const end = await Promise.race([exited, new Promise<string>((resolve) => { timer = setTimeout(() => resolve('timeout'), 120000); })]);
    clearTimeout(timer);
    if (end !== 'code 0') fail(`after "poweroff -f" in L2, porthole ended with ${end}, expected exit code 0`);
  } finally {
    vm.kill('SIGKILL');
  }
  const back = driverOf(nic.address);
  if (back !== 'e1000') fail(`after the VM, L1's ${nic.address} is on ${back ?? 'no driver'}, not e1000`);
  else found.push(`${nic.address} back on L1's e1000`);
  const journal = path.join(dataDir, 'porthole', 'usb-taken');
  const left = fs.existsSync(journal) ? fs.readdirSync(journal) : [];
  if (left.length > 0) fail(`the journal still holds ${left.join(', ')}`);

  // A VM process killed while it holds the function.
  const doomed = ctx.spawn(process.execPath, args, { env: { ...process.env, PORTHOLE_FORBID_KOFFI_VIEW: '1', XDG_DATA_HOME: dataDir } });
  const doomedCon = SerialConsole.fromChild(doomed, { name: 'L2 (to be killed)', onOutput: consoleLogger('L2k| ') });
  try {
    await doomedCon.waitForShell(420000);
  } finally {
    doomed.kill('SIGKILL');
  }
  await new Promise<void>((resolve) => { if (doomed.exitCode !== null || doomed.signalCode !== null) resolve(); else doomed.once('exit', () => resolve()); });
  const orphan = driverOf(nic.address);
  const held = fs.existsSync(journal) ? fs.readdirSync(journal) : [];
  ctx.log(`after SIGKILL of process ${doomed.pid}: ${nic.address} on ${orphan ?? 'no driver'}, journal ${held.join(', ') || 'empty'}`);
  if (orphan !== 'vfio-pci' || held.length !== 1) fail(`after the SIGKILL ${nic.address} is on ${orphan ?? 'no driver'} with journal [${held.join(', ')}], expected vfio-pci and one entry`);
  const next = ctx.spawn(process.execPath, args, { env: { ...process.env, PORTHOLE_FORBID_KOFFI_VIEW: '1', XDG_DATA_HOME: dataDir } });
  const nextLog: string[] = [];
  next.stderr!.on('data', (d: Buffer) => { for (const l of d.toString().split('\n')) if (l.trim()) { nextLog.push(l); ctx.log(`porthole (next): ${l}`); } });
  const nextExit = new Promise<string>((resolve) => next.once('exit', (code, sig) => resolve(sig ?? `code ${code}`)));
  try {
    const con = SerialConsole.fromChild(next, { name: 'L2 (next VM)', onOutput: consoleLogger('L2n| ') });
    await con.waitForShell(420000);
    const bound = await con.run('for i in $(seq 60); do [ -e /sys/class/net/eth0 ] && break; sleep 0.5; done; basename $(readlink /sys/bus/pci/devices/' + GUEST_ADDRESS + '/driver)', 60000);
    if (!/^e1000$/m.test(bound.output)) fail(`the next VM's L2 has ${bound.output.trim()} on ${GUEST_ADDRESS}, not e1000`);
    if (!nextLog.some((l) => l.includes(`PCI: gave ${nic.address} back to e1000`))) fail('the next VM did not repair what the killed one left');
    con.send('poweroff -f\n');
    let timer: NodeJS.Timeout | undefined;
    const end = await Promise.race([nextExit, new Promise<string>((resolve) => { timer = setTimeout(() => resolve('timeout'), 120000); })]);
    clearTimeout(timer);
    if (end !== 'code 0') fail(`the next VM ended with ${end}`);
  } finally {
    next.kill('SIGKILL');
  }
  const finalDriver = driverOf(nic.address);
  const finalJournal = fs.existsSync(journal) ? fs.readdirSync(journal) : [];
  if (finalDriver !== 'e1000' || finalJournal.length !== 0) fail(`after the next VM ${nic.address} is on ${finalDriver ?? 'no driver'}, journal [${finalJournal.join(', ')}]`);
  else found.push('a SIGKILLed VM left it on vfio-pci (journaled); the next VM repaired that, used it and gave it back to e1000');
  if (failures.length > 0) throw new Error(`${failures.length} check(s) failed: ${failures.join('; ')} (passed: ${found.join('; ')})`);
  return found.join('; ');
});
