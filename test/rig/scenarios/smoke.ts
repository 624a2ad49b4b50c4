// Porthole's CLI boots the L2 kit inside L1 (real nested SVM) and the test talks to the
// guest's shell over Porthole's emulated UART, exactly as a user on a workstation would.
import fs from 'node:fs';
import { SerialConsole } from '../console';
import { l1ProjectDir } from '../paths';
import { consoleLogger, kitChecks, scenario } from '../scenario';

scenario('smoke', async (ctx) => {
  // RIG_L2_CPUS (npm run rig -- smoke --env L2_CPUS=1) narrows a failure down.
  const cpus = Number(process.env.RIG_L2_CPUS ?? 2);
  const cli = `${l1ProjectDir}/bin/porthole`;
  if (!fs.existsSync(`${l1ProjectDir}/dist/main/cli/main.js`)) throw new Error('Porthole is not built (dist/main/cli/main.js is missing): run npm run build');
  const args = [
    cli, 'run', '--kernel', ctx.kit.vmlinuz, '--initrd', ctx.kit.initrd,
    '--append', 'console=ttyS0 quiet panic=-1', '--mem', '256M', '--cpus', String(cpus), '--serial', 'stdio',
  ];
  ctx.log(`node ${args.join(' ')}`);
  const vm = ctx.spawn(process.execPath, args, { env: { ...process.env, PORTHOLE_FORBID_KOFFI_VIEW: '1' } });
  vm.stderr!.on('data', (d: Buffer) => { for (const l of d.toString().split('\n')) if (l.trim()) ctx.log(`porthole: ${l}`); });
  vm.on('exit', (code, sig) => ctx.log(`porthole exited (${sig ?? `code ${code}`})`));
  const con = SerialConsole.fromChild(vm, { name: 'L2 on Porthole\'s COM1', onOutput: consoleLogger('L2| ') });
  return `Porthole in L1: ${await kitChecks(ctx, con, cpus, 420000)}`;
});
