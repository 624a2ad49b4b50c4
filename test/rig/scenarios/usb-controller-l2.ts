// A whole USB controller assigned by Porthole's own choice (main/host/usb-controller-choice.ts):
// L1's second qemu-xhci (xhci1) carries only stick1 and sits alone in its IOMMU group, so a VM
// whose USB rule takes stick1 (usbPassthroughPath left at "auto") gets that controller through
// VFIO at start. L2's xhci_hcd drives it at 00:18.0, enumerates stick1 and reads all of it (md5 of
// the known pattern). After the VM powers off, L1's xhci_hcd has the controller again, stick1 is
// back on usb-storage, and the journal is empty.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { chooseUsbPath, usbControllerOf } from '../../../main/host/usb-controller-choice';
import { SerialConsole } from '../console';
import { driverOf, exitOf, powerOff } from '../l1-pci';
import { consoleLogger, scenario } from '../scenario';
import { SECTOR, STICKS, stickSector } from '../sticks';
import { l1PortholeCli, PASSTHROUGH_KIT_MODULES, stickBoundInL1 } from '../usb-passthrough-l1';

const GUEST_ADDRESS = '0000:00:18.0';
const DATA_DIR = '/tmp/usb-controller-data';
const CONFIG = '/tmp/usb-controller-vm.json';

scenario('usb-controller-l2', async (ctx) => {
  const stick = STICKS.stick1;
  const sysStick = await stickBoundInL1(stick);
  const xhci = usbControllerOf(sysStick.name);
  if (xhci === null) throw new Error(`L1's stick1 (${sysStick.name}) sits on no PCI controller`);
  if (driverOf(xhci) !== 'xhci_hcd') throw new Error(`L1's ${xhci} is on ${driverOf(xhci) ?? 'no driver'} before the VM, not xhci_hcd`);
  const choice = chooseUsbPath(sysStick.name);
  ctx.log(`L1: stick1 is ${sysStick.name} on ${xhci}; choice: ${choice.path}: ${choice.reason}`);
  if (choice.path !== 'controller') throw new Error(`the choice for stick1 is ${choice.path}, expected controller: ${choice.reason}`);
  const pattern = crypto.createHash('md5');
  for (let i = 0; i < (stick.sizeMiB * 1048576) / SECTOR; i++) pattern.update(stickSector(stick.label, i));
  const want = pattern.digest('hex');

  fs.writeFileSync(CONFIG, JSON.stringify({ name: 'controller-vm', usb: { controller: 'xhci', rules: [{ match: { serial: stick.serial } }] } }));
  fs.rmSync(DATA_DIR, { recursive: true, force: true });
  const args = [l1PortholeCli(), 'run', '--config', CONFIG, '--kernel', ctx.kit.vmlinuz, '--initrd', ctx.kit.initrd,
    '--append', `console=ttyS0 quiet panic=-1 kit.modules=${PASSTHROUGH_KIT_MODULES}`, '--mem', '256M', '--cpus', '1',
    '--serial', 'stdio', '--verbose'];
  ctx.log(`node ${args.join(' ')}`);
  const vm = ctx.spawn(process.execPath, args, { env: { ...process.env, PORTHOLE_FORBID_KOFFI_VIEW: '1', XDG_DATA_HOME: DATA_DIR } });
  const exited = exitOf(vm);
  const vmLog: string[] = [];
  vm.stderr!.on('data', (d: Buffer) => {
    for (const l of d.toString().split('\n')) if (l.trim()) { vmLog.push(l); ctx.log(`porthole: ${l}`); }
  });
  const failures: string[] = [];
  const found: string[] = [];
  const fail = (why: string) => { ctx.log(`CHECK FAILED: ${why}`); failures.push(why); };
  try {
    const con = SerialConsole.fromChild(vm, { name: 'L2 on Porthole\'s COM1', onOutput: consoleLogger('L2| ') });
    await con.waitForShell(420000);
    if (driverOf(xhci) !== 'vfio-pci') fail(`while the VM runs, L1's ${xhci} is on ${driverOf(xhci) ?? 'no driver'}, not vfio-pci`);
    const logged = vmLog.find((l) => l.includes(`host device ${sysStick.name} goes by the controller path`));
    if (logged === undefined) fail('the VM log does not say stick1 goes by the controller path');
    else found.push(`VM log: ${logged.replace(/^.*USB: /, '')}`);
    const disk = await con.run(`for i in $(seq 120); do for b in /sys/block/sd*; do [ -e "$b" ] && readlink -f $b | grep -q ${GUEST_ADDRESS} && echo "DISK $(basename $b)"; done | grep -q DISK && break; sleep 0.5; done; ` +
      `for b in /sys/block/sd*; do readlink -f $b | grep -q ${GUEST_ADDRESS} && echo "DISK $(basename $b)"; done; echo "driver $(basename $(readlink /sys/bus/pci/devices/${GUEST_ADDRESS}/driver))"`, 90000);
    ctx.log(`L2:\n${disk.output}`);
    if (!/^driver xhci_hcd$/m.test(disk.output)) fail(`L2's xhci_hcd did not bind ${GUEST_ADDRESS}`);
    const sd = /^DISK (sd[a-z]+)$/m.exec(disk.output)?.[1];
    if (sd === undefined) fail(`no disk below ${GUEST_ADDRESS} in L2`);
    else {
      const read = await con.run(`dd if=/dev/${sd} bs=65536 2>/dev/null | md5sum; dd if=/dev/${sd} bs=512 skip=100 count=1 2>/dev/null | head -c 32`, 180000);
      const got = /^([0-9a-f]{32})/m.exec(read.output)?.[1];
      if (got !== want) fail(`L2 read md5 ${got ?? read.output.trim()} from ${sd}, stick1's pattern has ${want}`);
      else if (!read.output.includes('PORTHOLE-RIG stick1 SECTOR 100')) fail(`sector 100 of ${sd} in L2 starts "${read.output.split('\n')[1] ?? ''}"`);
      else found.push(`L2's xhci_hcd drives ${GUEST_ADDRESS}; stick1 is its ${sd}, all ${stick.sizeMiB} MiB read with the pattern's md5 ${want}`);
    }
    const end = await powerOff(con, exited);
    if (end !== 'code 0') fail(`after "poweroff -f" in L2, porthole ended with ${end}, expected exit code 0`);
  } finally {
    vm.kill('SIGKILL');
  }
  const back = driverOf(xhci);
  if (back !== 'xhci_hcd') fail(`after the VM, L1's ${xhci} is on ${back ?? 'no driver'}, not xhci_hcd`);
  else {
    try {
      const again = await stickBoundInL1(stick);
      found.push(`${xhci} back on L1's xhci_hcd, stick1 back as ${again.name} on usb-storage`);
    } catch (e) {
      fail(`stick1 did not come back to L1: ${(e as Error).message}`);
    }
  }
  const journal = path.join(DATA_DIR, 'porthole', 'usb-taken');
  const left = fs.existsSync(journal) ? fs.readdirSync(journal) : [];
  if (left.length > 0) fail(`the journal still holds ${left.join(', ')}`);
  if (failures.length > 0) throw new Error(`${failures.length} check(s) failed: ${failures.join('; ')} (passed: ${found.join('; ')})`);
  return found.join('; ');
});
