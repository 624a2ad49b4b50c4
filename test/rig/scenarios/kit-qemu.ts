// QEMU with KVM, inside L1, boots the L2 kit: proves the kit, the console helper and
// nested SVM without depending on Porthole. It is also the reference Porthole is compared with.
import { SerialConsole } from '../console';
import { consoleLogger, kitChecks, scenario } from '../scenario';

scenario('kit-qemu', async (ctx) => {
  const cpus = 2;
  const qemu = ctx.spawn('qemu-system-x86_64', [
    '-accel', 'kvm', '-M', 'q35', '-cpu', 'host', '-m', '256M', '-smp', String(cpus),
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot', '-monitor', 'none', '-serial', 'stdio',
    '-kernel', ctx.kit.vmlinuz, '-initrd', ctx.kit.initrd, '-append', 'console=ttyS0 quiet panic=-1 kit.modules=usb-storage,e1000',
  ]);
  qemu.stderr!.on('data', (d: Buffer) => ctx.log(`qemu: ${d.toString().trim()}`));
  const con = SerialConsole.fromChild(qemu, { name: 'L2 on QEMU\'s serial', onOutput: consoleLogger('L2| ') });
  const checks = await kitChecks(ctx, con, cpus, 240000);
  // kit.modules= loads the named modules and their dependencies, in order.
  const loaded = (await con.runOk('cut -d" " -f1 /proc/modules')).split('\n');
  ctx.log(`L2 modules: ${loaded.join(' ')}`);
  for (const m of ['usb_storage', 'usbcore', 'scsi_mod', 'e1000']) {
    if (!loaded.includes(m)) throw new Error(`kit.modules=usb-storage,e1000 did not load ${m}`);
  }
  return `QEMU/KVM in L1: ${checks}; kit.modules loaded ${loaded.length} modules`;
});
