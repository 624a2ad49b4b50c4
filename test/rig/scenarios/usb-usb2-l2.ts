// A SuperSpeed host device on a USB 2 port, as Linux in L2 sees it: L1's stick0 (QEMU
// usb-storage at SuperSpeed, bulk only, no streams: allowed by host/usb-speed-compat.ts) is
// passed through with `porthole usb add host:… --port 6`, a USB 2 port of our xHCI. L2's
// xhci_hcd must enumerate it at high speed (480 Mbit/s, bcdUSB 2.10 and a 64-byte EP0 from the
// high-speed view of its descriptors), with no complaint about its descriptors in L2's kernel
// log, and usb-storage must read the whole stick with L1's md5. After `porthole usb remove`
// L1's usb-storage has it again.
import fs from 'node:fs';
import { SerialConsole } from '../console';
import { waitForDiskOfSize } from '../dd-rate';
import { blockDeviceWithSerial, sysfsUsbDevices, until } from '../l1-usb';
import { l1ProjectDir } from '../paths';
import { consoleLogger, scenario } from '../scenario';
import { md5File, STICKS } from '../sticks';
import { l1PortholeCli, PASSTHROUGH_KIT_MODULES as KIT_MODULES, runPortholeCli, stickBoundInL1 } from '../usb-passthrough-l1';

const SOCKET = '/tmp/usb-usb2.sock';
const DATA_DIR = '/tmp/usb-usb2-data';
// The VM's xHCI comes with `--usb keyboard`, which takes port 5 (the first USB 2 port).
const USB2_PORT = 6;

scenario('usb-usb2-l2', async (ctx) => {
  if (!fs.existsSync(`${l1ProjectDir}/dist/main/cli/main.js`)) throw new Error('Porthole is not built: run npm run build');
  const stick = STICKS.stick0;
  const sys = await stickBoundInL1(stick);
  const l1Disk = await until('stick0\'s disk in L1', 60000, () => blockDeviceWithSerial(stick.serial));
  const speed = fs.readFileSync(`/sys/bus/usb/devices/${sys.name}/speed`, 'utf8').trim();
  if (speed !== '5000') throw new Error(`stick0 runs at ${speed} Mbit/s in L1, not SuperSpeed: this checks a SuperSpeed device`);
  const md5Before = md5File(`/dev/${l1Disk}`);
  ctx.log(`L1: stick0 is ${sys.name} (${sys.id}) at ${speed} Mbit/s, /dev/${l1Disk}, md5 ${md5Before}`);
  fs.rmSync(DATA_DIR, { recursive: true, force: true });
  const env = { ...process.env, XDG_DATA_HOME: DATA_DIR, PORTHOLE_FORBID_KOFFI_VIEW: '1' };
  const vm = ctx.spawn(process.execPath, [l1PortholeCli(), 'run', '--kernel', ctx.kit.vmlinuz, '--initrd', ctx.kit.initrd,
    '--append', `console=ttyS0 quiet panic=-1 kit.modules=${KIT_MODULES}`, '--mem', '256M', '--cpus', '1',
    '--serial', 'stdio', '--verbose', '--usb', 'keyboard', '--monitor', SOCKET], { env });
  vm.stderr!.on('data', (d: Buffer) => {
    for (const l of d.toString().split('\n')) if (l.trim()) ctx.log(`porthole: ${l}`);
  });
  const con = SerialConsole.fromChild(vm, { name: 'L2 on Porthole\'s COM1', onOutput: consoleLogger('L2| ') });
  await con.waitForShell(240000);
  const added = runPortholeCli(['usb', 'add', `host:${sys.name}`, '--port', String(USB2_PORT), '--monitor', SOCKET], env, ctx.log);
  ctx.log(`porthole usb add host:${sys.name} --port ${USB2_PORT}: ${added.trim()}`);
  const found: string[] = [];
  const l2Disk = await waitForDiskOfSize(con, stick.sizeMiB, 120000);
  const info = await con.runOk(`for d in /sys/bus/usb/devices/*; do [ "$(cat $d/serial 2>/dev/null)" = ${stick.serial} ] && echo "$(cat $d/speed) $(cat $d/version) $(cat $d/bMaxPacketSize0)"; done; true`);
  ctx.log(`L2: stick0 speed, version, bMaxPacketSize0: ${info.trim()}`);
  const [l2Speed, version, ep0] = info.trim().split(/\s+/);
  if (l2Speed !== '480') throw new Error(`L2 sees stick0 at ${l2Speed} Mbit/s, not high speed (480) on USB 2 port ${USB2_PORT}`);
  if (version !== '2.10' || ep0 !== '64') throw new Error(`L2 reads bcdUSB ${version} and bMaxPacketSize0 ${ep0}, not the high-speed view (2.10, 64)`);
  found.push(`L2 enumerated the SuperSpeed stick on USB 2 port ${USB2_PORT} at 480 Mbit/s, bcdUSB ${version}, EP0 ${ep0} bytes`);
  const complaints = await con.run('dmesg | grep -iE "invalid (ep0 )?maxpacket|bulk endpoint .* invalid|device descriptor read.*error|not accepting address" || true');
  if (complaints.output.trim()) throw new Error(`L2's kernel complains about the descriptors: ${complaints.output.trim()}`);
  const sum = await con.run(`dd if=/dev/${l2Disk} bs=1M iflag=direct 2>/dev/null | md5sum`, 600000);
  if (!sum.output.includes(md5Before)) throw new Error(`md5 of the stick in L2 is "${sum.output.trim()}", L1 read ${md5Before}`);
  found.push(`L2's usb-storage read all ${stick.sizeMiB} MiB (md5 matches L1's), no descriptor complaints in L2's kernel log`);
  runPortholeCli(['usb', 'remove', String(USB2_PORT), '--monitor', SOCKET], env, ctx.log);
  const back = await until('L1\'s usb-storage bound to stick0 again', 30000, () =>
    sysfsUsbDevices().find((d) => d.name === sys.name && d.drivers.includes('usb-storage')) ?? null);
  await until('stick0\'s /dev/sdX back in L1', 30000, () => blockDeviceWithSerial(stick.serial));
  found.push(`after the detach L1's ${back.drivers.join(',')} has it again`);
  return found.join('; ');
});
