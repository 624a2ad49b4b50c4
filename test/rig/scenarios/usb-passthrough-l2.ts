// Host USB passthrough with L1 as the host: L1's stick0 (QEMU usb-storage, serial RIGSTICK0,
// the known pattern of sticks.ts) is passed through by Porthole (node-usb on the VM host
// thread, our xHCI in front) to the L2 kit while it runs. Checked:
// - while attached, L1's usb-storage is unbound from the stick, /dev/sdX is gone, and the
//   journal names the driver to give back;
// - L2's usb-storage binds the stick, and dd of the whole stick in L2 has the md5 L1 read before;
// - a marker written from L2 (fsync) is on the stick when L1 reads it after the detach;
// - after the detach L1's usb-storage is bound again, /dev/sdX is back and the journal entry is gone;
// - the MB/s of a dd read of the whole stick in L2 (printed, not asserted).
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { SerialConsole } from '../console';
import { waitForDiskOfSize } from '../dd-rate';
import { blockDeviceWithSerial, sysfsUsbDevices, until } from '../l1-usb';
import { l1ProjectDir } from '../paths';
import { consoleLogger, scenario, type ScenarioContext } from '../scenario';
import { checkStickSector, md5File, SECTOR, STICKS } from '../sticks';
import {
  l1PortholeCli, passStickThrough, PASSTHROUGH_KIT_MODULES as KIT_MODULES, qemuUsbHostArgs, runPortholeCli, stickBoundInL1,
} from '../usb-passthrough-l1';

const SOCKET = '/tmp/usb-pt.sock';
const DATA_DIR = '/tmp/usb-pt-data';
const WRITE_SECTOR = 2000;

function md5OfDevice(dev: string): string {
  return md5File(`/dev/${dev}`);
}

function readSector(dev: string, sector: number): Buffer {
  const fd = fs.openSync(`/dev/${dev}`, 'r');
  try {
    const b = Buffer.alloc(SECTOR);
    fs.readSync(fd, b, 0, SECTOR, sector * SECTOR);
    return b;
  } finally {
    fs.closeSync(fd);
  }
}

scenario('usb-passthrough-l2', async (ctx) => {
  if (!fs.existsSync(`${l1ProjectDir}/dist/main/cli/main.js`)) throw new Error('Porthole is not built: run npm run build');
  const stick = STICKS.stick0;
  const sysStick = await stickBoundInL1(stick);
  const l1Disk = await until('stick0\'s disk in L1', 60000, () => blockDeviceWithSerial(stick.serial));
  const bad = checkStickSector(stick.label, 0, readSector(l1Disk, 0));
  if (bad) throw new Error(`L1 /dev/${l1Disk}: ${bad}`);
  const md5Before = md5OfDevice(l1Disk);
  // L1's own read of the stick (QEMU's usb-storage under TCG): the ceiling passthrough works under.
  const n0 = Date.now();
  const l1dd = spawnSync('dd', [`if=/dev/${l1Disk}`, 'of=/dev/null', 'bs=1M', 'iflag=direct'], { encoding: 'utf8' });
  const l1Rate = `L1's own dd read ${((stick.sizeMiB * 1.048576) / ((Date.now() - n0) / 1000)).toFixed(2)} MB/s`;
  ctx.log(`${l1Rate} (${(l1dd.stderr ?? '').replace(/\n/g, ' / ')})`);
  ctx.log(`L1: stick0 is USB device ${sysStick.name} (${sysStick.id}, drivers ${sysStick.drivers.join(',')}), /dev/${l1Disk}, md5 ${md5Before}`);
  const listed = runPortholeCli(['usb', 'host'], process.env, ctx.log);
  ctx.log(`porthole usb host:\n${listed}`);
  if (!listed.includes(sysStick.name) || !listed.includes('usb-storage')) throw new Error(`porthole usb host does not list ${sysStick.name} with usb-storage`);

  fs.rmSync(DATA_DIR, { recursive: true, force: true });
  const env = { ...process.env, XDG_DATA_HOME: DATA_DIR, PORTHOLE_FORBID_KOFFI_VIEW: '1' };
  const args = [l1PortholeCli(), 'run', '--kernel', ctx.kit.vmlinuz, '--initrd', ctx.kit.initrd,
    '--append', `console=ttyS0 quiet panic=-1 kit.modules=${KIT_MODULES}`, '--mem', '256M', '--cpus', '1',
    '--serial', 'stdio', '--verbose', '--usb', 'keyboard', '--monitor', SOCKET];
  ctx.log(`node ${args.join(' ')}`);
  const vm = ctx.spawn(process.execPath, args, { env });
  vm.stderr!.on('data', (d: Buffer) => {
    for (const l of d.toString().split('\n')) if (l.trim()) ctx.log(`porthole: ${l}`);
  });
  const exited = new Promise<string>((resolve) => vm.once('exit', (code, sig) => resolve(sig ?? `code ${code}`)));
  const con = SerialConsole.fromChild(vm, { name: 'L2 on Porthole\'s COM1', onOutput: consoleLogger('L2| ') });
  await con.waitForShell(240000);

  // Pass it through.
  const { port, printed: added } = passStickThrough(sysStick.name, SOCKET, env, ctx.log);
  ctx.log(`porthole usb add host:${sysStick.name}: ${added.trim()}`);
  const journalFile = path.join(DATA_DIR, 'porthole', 'usb-taken', `${sysStick.name}.json`);
  const journal = JSON.parse(fs.readFileSync(journalFile, 'utf8')) as { interfaces: { driver: string }[] };
  if (!journal.interfaces.some((i) => i.driver === 'usb-storage')) throw new Error(`the journal does not name usb-storage: ${JSON.stringify(journal)}`);
  await until('L1\'s /dev/sdX of stick0 to go away', 20000, () => (blockDeviceWithSerial(stick.serial) === null ? true : null));
  const held = sysfsUsbDevices().find((d) => d.name === sysStick.name);
  if (held?.drivers.includes('usb-storage')) throw new Error(`L1's usb-storage is still bound to ${sysStick.name}: ${held.drivers.join(',')}`);
  const found: string[] = [`L1 gave up stick0 (drivers now ${held?.drivers.join(',') ?? '?'})`];

  // L2 sees it.
  const l2Disk = await waitForDiskOfSize(con, stick.sizeMiB, 120000);
  const usbInfo = await con.runOk('for d in /sys/bus/usb/devices/*; do [ -f $d/idVendor ] && echo "${d##*/} $(cat $d/idVendor):$(cat $d/idProduct) $(cat $d/speed) $(cat $d/serial 2>/dev/null)"; done');
  ctx.log(`L2 USB devices: ${usbInfo.replace(/\n/g, ' / ')}`);
  if (!usbInfo.includes(stick.serial)) throw new Error(`L2 does not see serial ${stick.serial}: ${usbInfo}`);
  const sector0 = await con.runOk(`dd if=/dev/${l2Disk} bs=512 count=1 iflag=direct 2>/dev/null | head -c 40`);
  if (!sector0.includes(`PORTHOLE-RIG ${stick.label} SECTOR 0`)) throw new Error(`L2 /dev/${l2Disk} sector 0 reads "${sector0}"`);
  const t0 = await con.runOk("cut -d' ' -f1 /proc/uptime");
  const sum = await con.run(`dd if=/dev/${l2Disk} bs=1M iflag=direct 2>/dev/null | md5sum`, 600000);
  const t1 = await con.runOk("cut -d' ' -f1 /proc/uptime");
  if (!sum.output.includes(md5Before)) throw new Error(`md5 of the stick in L2 is "${sum.output.trim()}", L1 read ${md5Before}`);
  const seconds = Number(t1) - Number(t0);
  const mbs = (stick.sizeMiB * 1.048576) / seconds;
  found.push(`L2 /dev/${l2Disk}: md5 of the whole ${stick.sizeMiB} MiB matches L1's`);
  const rate = `dd read in L2 ${mbs.toFixed(2)} MB/s (${stick.sizeMiB} MiB in ${seconds.toFixed(1)} s, with md5sum)`;
  ctx.log(rate);
  const plain = await l2ReadRate(ctx, con, l2Disk, stick.sizeMiB, 'Porthole passthrough');
  ctx.log(`passthrough throughput in L2: ${plain}`);

  // A write from L2.
  const marker = `PASSTHROUGH-${Date.now()}`;
  const w = await con.run(`printf '%s' ${marker} > /tmp/m && dd if=/tmp/m of=/dev/${l2Disk} bs=512 seek=${WRITE_SECTOR} conv=sync,fsync 2>&1 && sync`, 120000);
  if (w.status !== 0) throw new Error(`the write in L2 failed: ${w.output}`);

  // Back to L1.
  const removed = runPortholeCli(['usb', 'remove', port, '--monitor', SOCKET], env, ctx.log);
  ctx.log(`porthole usb remove ${port}: ${removed.trim()}`);
  const back = await until('L1\'s usb-storage bound to stick0 again', 30000, () =>
    sysfsUsbDevices().find((d) => d.name === sysStick.name && d.drivers.includes('usb-storage')) ?? null);
  const l1Back = await until('stick0\'s /dev/sdX back in L1', 30000, () => blockDeviceWithSerial(stick.serial));
  found.push(`after the detach L1's drivers are ${back.drivers.join(',')} and /dev/${l1Back} is back`);
  const sector = readSector(l1Back, WRITE_SECTOR);
  if (sector.subarray(0, marker.length).toString('latin1') !== marker) {
    throw new Error(`L1 reads sector ${WRITE_SECTOR} as "${sector.subarray(0, 40).toString('latin1')}", not L2's marker ${marker}`);
  }
  found.push(`L2's write (sector ${WRITE_SECTOR}) reads back in L1`);
  if (fs.existsSync(journalFile)) throw new Error(`the journal entry ${journalFile} is still there after the detach`);
  found.push('the journal entry is gone');
  const l2After = await con.run('ls /sys/block');
  ctx.log(`L2 block devices after the detach: ${l2After.output.trim()}`);

  // A VM process killed while it holds the stick: the kernel binds nothing back; the journal
  // repair the manager runs (at start, or when it sees the process end) does.
  runPortholeCli(['usb', 'add', `host:${sysStick.name}`, '--monitor', SOCKET], env, ctx.log);
  await until('L1\'s /dev/sdX of stick0 to go away again', 20000, () => (blockDeviceWithSerial(stick.serial) === null ? true : null));
  vm.kill('SIGKILL');
  ctx.log(`porthole killed: ${await exited}`);
  await new Promise((res) => setTimeout(res, 3000));
  const orphan = sysfsUsbDevices().find((d) => d.name === sysStick.name);
  ctx.log(`3 s after SIGKILL, L1's drivers of ${sysStick.name}: ${orphan?.drivers.join(',') || 'none'}; /dev/sdX: ${blockDeviceWithSerial(stick.serial) ?? 'none'}`);
  if (!fs.existsSync(journalFile)) throw new Error('the journal entry is missing after the kill');
  const repair = spawnSync(process.execPath, ['-e', `const j = require('${l1ProjectDir}/dist/main/host/usb-journal.js');
    for (const l of j.repairUsbJournal(new j.UsbJournal(process.argv[1]))) console.log(l);`, path.join(DATA_DIR, 'porthole')], { encoding: 'utf8' });
  ctx.log(`repair: ${repair.stdout.trim()} ${repair.stderr.trim()}`);
  const repaired = await until('L1\'s usb-storage bound to stick0 after the repair', 30000, () =>
    sysfsUsbDevices().find((d) => d.name === sysStick.name && d.drivers.includes('usb-storage')) ?? null);
  const l1Again = await until('stick0\'s /dev/sdX back after the repair', 30000, () => blockDeviceWithSerial(stick.serial));
  if (fs.existsSync(journalFile)) throw new Error('the journal entry is still there after the repair');
  found.push(`after SIGKILL the journal repair bound ${repaired.drivers.join(',')} again and /dev/${l1Again} is back`);

  // The reference: QEMU's usb-host (libusb) passing the same stick to the same kit, same dd.
  const qemu = ctx.spawn('qemu-system-x86_64', [
    '-accel', 'kvm', '-m', '256M', '-smp', '1', '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
    '-monitor', 'none', '-serial', 'stdio', ...qemuUsbHostArgs(sysStick.name),
    '-kernel', ctx.kit.vmlinuz, '-initrd', ctx.kit.initrd, '-append', `console=ttyS0 quiet panic=-1 kit.modules=${KIT_MODULES}`,
  ]);
  qemu.stderr!.on('data', (d: Buffer) => ctx.log(`qemu: ${d.toString().trim()}`));
  const qemuExited = new Promise<string>((resolve) => qemu.once('exit', (code, sig) => resolve(sig ?? `code ${code}`)));
  const qcon = SerialConsole.fromChild(qemu, { name: 'L2 on QEMU\'s serial', onOutput: consoleLogger('QL2| ') });
  await qcon.waitForShell(240000);
  const qDisk = await waitForDiskOfSize(qcon, stick.sizeMiB, 120000);
  const qemuRate = await l2ReadRate(ctx, qcon, qDisk, stick.sizeMiB, 'QEMU usb-host');
  qemu.kill('SIGTERM');
  ctx.log(`qemu exited: ${await qemuExited}`);
  const ours = Number(/([\d.]+) MB\/s/.exec(plain)?.[1]);
  const theirs = Number(/([\d.]+) MB\/s/.exec(qemuRate)?.[1]);
  const ratio = `Porthole/QEMU ${(ours / theirs).toFixed(2)}x`;
  ctx.log(`USB passthrough dd read in L2: ${plain}; ${qemuRate}; ${ratio}`);
  return `${found.join('; ')}; ${rate}; ${plain}; ${qemuRate}; ${ratio}; ${l1Rate}`;
});


/** dd of the whole disk past the page cache, three times; the median MB/s (L2's uptime as the clock). */
async function l2ReadRate(ctx: ScenarioContext, con: SerialConsole, disk: string, sizeMiB: number, what: string): Promise<string> {
  const rates: number[] = [];
  for (let i = 0; i < 3; i++) {
    const r = await con.run(`sync; echo 3 > /proc/sys/vm/drop_caches; a=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/${disk} of=/dev/null bs=1M iflag=direct 2>&1; s=$?; b=$(cut -d' ' -f1 /proc/uptime); echo "elapsed $a $b"; [ $s = 0 ]`, 600000);
    const m = /elapsed ([\d.]+) ([\d.]+)/.exec(r.output);
    if (r.status !== 0 || m === null || !(Number(m[2]) > Number(m[1]))) throw new Error(`${what}: dd in L2 failed: ${r.output}`);
    rates.push((sizeMiB * 1.048576) / (Number(m[2]) - Number(m[1])));
  }
  ctx.log(`${what}: dd read runs ${rates.map((x) => x.toFixed(2)).join(', ')} MB/s`);
  return `${what} dd read ${rates.sort((a, b) => a - b)[1].toFixed(2)} MB/s (median of 3, ${sizeMiB} MiB each)`;
}
