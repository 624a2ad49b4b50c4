// USB capture of a real guest: Porthole boots the L2 kit with a stick on its xHCI and a
// monitor socket; `porthole capture` writes a pcapng file from before Linux enumerates the
// stick until Ctrl-C (SIGINT), while L2 reads a known sector range with dd. Debian's tshark
// (the host's, through L1's /usr) must decode SCSI READ(10) inside USB Mass Storage, one
// of them covering the sectors dd read. The file lands on the rig host (build/rig/out/<run>/).
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { SerialConsole } from '../console';
import { l1ProjectDir } from '../paths';
import { consoleLogger, scenario, type ScenarioContext } from '../scenario';
import { ensureStickImage, type StickSpec } from '../sticks';

const WORK_DIR = '/tmp/usb-capture';
const STICK: StickSpec = { label: 'capstick', sizeMiB: 16, serial: '' };
const KIT_MODULES = 'xhci_pci,usb_storage,sd_mod';
/** dd reads 8 sectors here: a page-aligned LBA past what the partition scan reads. */
const READ_LBA = 4096;
const READ_SECTORS = 8;

scenario('usb-capture', async (ctx) => {
  const cli = `${l1ProjectDir}/bin/porthole`;
  if (!fs.existsSync(`${l1ProjectDir}/dist/main/cli/main.js`)) throw new Error('Porthole is not built (dist/main/cli/main.js is missing): run npm run build');
  if (!fs.existsSync('/usr/bin/tshark')) throw new Error('tshark is not installed on the rig host (scripts/fixtures.sh installs it)');
  fs.mkdirSync(WORK_DIR, { recursive: true });
  const stick = path.join(WORK_DIR, 'stick.img');
  fs.copyFileSync(ensureStickImage(path.join(WORK_DIR, 'cache'), STICK), stick);
  const socket = path.join(WORK_DIR, 'vm.sock');
  const capture = path.join(ctx.outDir, 'usb-capture.pcapng');
  fs.rmSync(capture, { force: true });
  const args = [
    cli, 'run', '--kernel', ctx.kit.vmlinuz, '--initrd', ctx.kit.initrd,
    '--append', `console=ttyS0 quiet panic=-1 kit.modules=${KIT_MODULES}`, '--mem', '256M', '--cpus', '1',
    '--serial', 'stdio', '--verbose', '--usb', `storage:${stick}`, '--monitor', socket,
  ];
  ctx.log(`node ${args.join(' ')}`);
  const vm = ctx.spawn(process.execPath, args, { env: { ...process.env, PORTHOLE_FORBID_KOFFI_VIEW: '1' } });
  vm.stderr!.on('data', (d: Buffer) => { for (const l of d.toString().split('\n')) if (l.trim()) ctx.log(`porthole: ${l}`); });
  try {
    return await captureWhileReading(ctx, cli, vm, socket, capture);
  } finally {
    vm.kill('SIGKILL');
  }
});

async function captureWhileReading(ctx: ScenarioContext, cli: string, vm: ChildProcess, socket: string, capture: string): Promise<string> {
  // The capture starts as soon as the monitor listens: before the guest's xhci_hcd runs.
  for (let i = 0; !fs.existsSync(socket); i++) {
    if (i > 600 || vm.exitCode !== null) throw new Error('porthole run never opened its monitor socket');
    await new Promise((r) => setTimeout(r, 100));
  }
  const cap = ctx.spawn(process.execPath, [cli, 'capture', socket, '-w', capture]);
  let capErr = '';
  cap.stderr!.on('data', (d: Buffer) => { capErr += d.toString(); ctx.log(`capture: ${d.toString().trim()}`); });
  const capExit = new Promise<number | null>((resolve) => cap.once('exit', (code) => resolve(code)));
  for (let i = 0; !capErr.includes('Ctrl-C'); i++) {
    if (i > 300 || cap.exitCode !== null) throw new Error(`porthole capture did not start: ${capErr.trim()}`);
    await new Promise((r) => setTimeout(r, 100));
  }

  const con = SerialConsole.fromChild(vm, { name: 'L2 on Porthole\'s COM1', onOutput: consoleLogger('L2| ') });
  await con.waitForShell(420000);
  const disk = async () => (await con.run('for b in /sys/block/sd*; do [ -e $b ] && echo ${b##*/}; done')).output.trim().split('\n')[0] ?? '';
  let sd = '';
  for (let i = 0; i < 120 && !/^sd[a-z]$/.test(sd); i++) {
    sd = await disk();
    if (!/^sd[a-z]$/.test(sd)) await con.run('sleep 1');
  }
  if (!/^sd[a-z]$/.test(sd)) throw new Error('L2 never saw the stick as a SCSI disk');
  const dd = await con.run(`echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/${sd} of=/dev/null bs=512 skip=${READ_LBA} count=${READ_SECTORS} 2>&1`);
  ctx.log(`dd: ${dd.output.trim()}`);
  if (dd.status !== 0) throw new Error(`dd from /dev/${sd} failed: ${dd.output.trim()}`);
  await con.run('sync');

  cap.kill('SIGINT');
  const code = await capExit;
  if (code !== 0) throw new Error(`porthole capture exited with ${code} after SIGINT: ${capErr.trim()}`);
  const summary = /(\d+) packets, (\d+) bytes written/.exec(capErr);
  if (summary === null) throw new Error(`porthole capture printed no summary: ${capErr.trim()}`);
  const size = fs.statSync(capture).size;
  if (size !== Number(summary[2])) throw new Error(`the file has ${size} bytes, the capture said ${summary[2]}`);

  // Debian's tshark from the rig host's /usr: READ(10) in USB Mass Storage, and the one dd made.
  const fields = ctx.exec('/usr/bin/tshark', [
    '-r', capture, '-Y', 'usbms.dCBWSignature && scsi_sbc.opcode == 0x28', '-T', 'fields', '-e', 'scsi_sbc.rdwr10.lba', '-e', 'scsi_sbc.rdwr10.xferlen',
  ]).trim().split('\n').filter((l) => l !== '').map((l) => l.split('\t').map(Number));
  if (fields.length === 0) throw new Error('tshark finds no SCSI READ(10) inside USB Mass Storage in the capture');
  const covering = fields.find(([lba, n]) => lba <= READ_LBA && READ_LBA < lba + n);
  ctx.log(`tshark: ${fields.length} READ(10) commands; LBAs ${fields.slice(0, 12).map(([l, n]) => `${l}+${n}`).join(', ')}${fields.length > 12 ? ', ...' : ''}`);
  if (covering === undefined) throw new Error(`no READ(10) in the capture covers LBA ${READ_LBA}, which dd read`);
  const malformed = ctx.exec('/usr/bin/tshark', ['-r', capture, '-Y', '_ws.malformed']).trim();
  if (malformed !== '') throw new Error(`tshark finds malformed packets:\n${malformed.split('\n').slice(0, 10).join('\n')}`);
  return `${summary[1]} packets (${size} bytes) captured while L2 read /dev/${sd}; tshark decodes ${fields.length} SCSI READ(10) in USB Mass Storage, one at LBA ${covering[0]} (${covering[1]} blocks) covering dd's read; file: usb-capture.pcapng`;
}
