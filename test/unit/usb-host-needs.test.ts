// Devices the host depends on (main/host/host-needs.ts), against fake sysfs and /proc trees.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { blockDevicesOf, hostNeeds, readInputDevices, type HostNeedsPaths } from '../../main/host/host-needs';
import { listSysfsUsbDevices } from '../../main/host/usb-inventory';
import { parseHostUsbAttachSpec } from '../../main/api/usb-input';
import { parseArgs } from '../../main/cli/args';

function write(file: string, text: string): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, text);
}

/**
 * Two sticks (1-1 with sda: sda1, sda2 and dm-0 on sda2; 1-5 with sdb), a keyboard (1-2), a
 * mouse (1-6), a second keyboard (1-7), a hub (1-3). /proc files empty until a test writes them.
 */
function fakeHost(): HostNeedsPaths {
  const top = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-hostneeds-'));
  const bus = path.join(top, 'sys', 'bus', 'usb');
  const root = path.join(bus, 'devices');
  fs.mkdirSync(path.join(bus, 'drivers', 'usbhid'), { recursive: true });
  fs.mkdirSync(path.join(bus, 'drivers', 'usb-storage'), { recursive: true });
  const device = (name: string, attrs: Record<string, string>) => {
    for (const [k, v] of Object.entries(attrs)) write(path.join(root, name, k), `${v}\n`);
  };
  const itf = (name: string, attrs: Record<string, string>, driver: string) => {
    device(name, attrs);
    fs.symlinkSync(path.join(bus, 'drivers', driver), path.join(root, name, 'driver'));
  };
  const stick = (name: string, addr: string, disk: string, major: number, parts: string[]) => {
    device(name, { busnum: '1', devnum: addr, idVendor: '46f4', idProduct: '0001', speed: '5000', bDeviceClass: '00', bConfigurationValue: '1' });
    itf(`${name}:1.0`, { bInterfaceNumber: '00', bInterfaceClass: '08', bInterfaceSubClass: '06', bInterfaceProtocol: '50' }, 'usb-storage');
    // Inside the interface, as the kernel nests it (here, not under /sys/bus/usb/devices/<itf>).
    const blockDir = path.join(root, name, `${name}:1.0`, 'host2', 'target2:0:0', '2:0:0:0', 'block', disk);
    write(path.join(blockDir, 'dev'), `${major}:0\n`);
    parts.forEach((p, i) => write(path.join(blockDir, p, 'dev'), `${major}:${i + 1}\n`));
    return blockDir;
  };
  const sda = stick('1-1', '2', 'sda', 8, ['sda1', 'sda2']);
  // dm-0 (LVM) sits on sda2: holders/dm-0 links to the holder's own folder.
  write(path.join(top, 'sys', 'devices', 'virtual', 'block', 'dm-0', 'dev'), '253:0\n');
  fs.mkdirSync(path.join(sda, 'sda2', 'holders'), { recursive: true });
  fs.symlinkSync(path.join(top, 'sys', 'devices', 'virtual', 'block', 'dm-0'), path.join(sda, 'sda2', 'holders', 'dm-0'));
  stick('1-5', '7', 'sdb', 8, []);
  const hid = (name: string, addr: string, protocol: string) => {
    device(name, { busnum: '1', devnum: addr, idVendor: '0627', idProduct: '0001', speed: '12', bDeviceClass: '00', bConfigurationValue: '1' });
    itf(`${name}:1.0`, { bInterfaceNumber: '00', bInterfaceClass: '03', bInterfaceSubClass: '01', bInterfaceProtocol: protocol }, 'usbhid');
  };
  hid('1-2', '3', '01');
  hid('1-6', '8', '02');
  hid('1-7', '9', '01');
  device('1-3', { busnum: '1', devnum: '4', idVendor: '0409', idProduct: '55aa', speed: '480', bDeviceClass: '09', bConfigurationValue: '1' });
  const proc = path.join(top, 'proc');
  write(path.join(proc, 'mountinfo'), '');
  write(path.join(proc, 'swaps'), 'Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n');
  return { sysfsRoot: root, mountinfo: path.join(proc, 'mountinfo'), swaps: path.join(proc, 'swaps'), inputDevices: path.join(proc, 'input-devices') };
}

const ROOT_ON_SDA2 = '22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw\n';
const BOOT_ON_SDA1 = '23 22 8:1 / /boot/efi rw,relatime shared:2 - vfat /dev/sda1 rw\n';
const PROC_ON_PROC = '24 22 0:5 / /proc rw shared:3 - proc proc rw\n';

function needs(paths: HostNeedsPaths, name: string): string | null {
  const all = listSysfsUsbDevices(paths.sysfsRoot);
  const d = all.find((x) => x.sysfsName === name);
  assert.ok(d, name);
  return hostNeeds(d, all, paths);
}

test('a stick\'s block devices are found below its interface: the disk, its partitions and their holders', () => {
  const paths = fakeHost();
  assert.deepEqual(blockDevicesOf('1-1', paths.sysfsRoot).map((b) => [b.name, b.dev]).sort(),
    [['dm-0', '253:0'], ['sda', '8:0'], ['sda1', '8:1'], ['sda2', '8:2']]);
  assert.deepEqual(blockDevicesOf('1-2', paths.sysfsRoot), []);
  assert.deepEqual(blockDevicesOf('9-9', paths.sysfsRoot), [], 'a device that left: nothing');
});

test('storage: refused while a file system on it is mounted (/ named first) or it holds active swap', () => {
  const paths = fakeHost();
  assert.equal(needs(paths, '1-1'), null, 'nothing mounted');
  fs.writeFileSync(paths.mountinfo, PROC_ON_PROC + BOOT_ON_SDA1 + ROOT_ON_SDA2);
  assert.equal(needs(paths, '1-1'), 'the host uses this disk: the root file system / is mounted from its sda2 (and 1 more mount)');
  assert.equal(needs(paths, '1-5'), null, 'the other stick is free');
  fs.writeFileSync(paths.mountinfo, PROC_ON_PROC + BOOT_ON_SDA1);
  assert.equal(needs(paths, '1-1'), 'the host uses this disk: /boot/efi is mounted from its sda1');
  // By major:minor alone (the source may be a /dev/disk/by-* name), and an escaped mount point.
  fs.writeFileSync(paths.mountinfo, '30 22 8:0 / /media/my\\040stick rw - vfat /dev/disk/by-label/X rw\n');
  assert.equal(needs(paths, '1-1'), 'the host uses this disk: /media/my stick is mounted from its sda');
  // Through LVM: dm-0 on sda2.
  fs.writeFileSync(paths.mountinfo, '31 22 253:0 / /home rw - xfs /dev/mapper/vg-home rw\n');
  assert.equal(needs(paths, '1-1'), 'the host uses this disk: /home is mounted from its dm-0');
  fs.writeFileSync(paths.mountinfo, PROC_ON_PROC);
  fs.appendFileSync(paths.swaps, '/dev/sdb                                partition\t8388604\t\t0\t\t-2\n');
  assert.equal(needs(paths, '1-5'), 'the host uses this disk: its sdb is active swap');
  assert.equal(needs(paths, '1-1'), null);
  fs.rmSync(paths.mountinfo);
  fs.rmSync(paths.swaps);
  assert.equal(needs(paths, '1-5'), null, 'unreadable /proc files: no mounts known');
});

const INPUT = (name: string, sysfs: string, handlers: string, ev: string) =>
  `I: Bus=0003 Vendor=0627 Product=0001 Version=0111\nN: Name="${name}"\nP: Phys=x\nS: Sysfs=${sysfs}\nU: Uniq=\nH: Handlers=${handlers}\nB: PROP=0\nB: EV=${ev}\n\n`;
const USB_KBD = INPUT('QEMU Keyboard', '/devices/pci0000:00/0000:00:04.0/usb1/1-2/1-2:1.0/0003:0627:0001.0001/input/input4', 'sysrq kbd leds event4', '120013');
const USB_KBD2 = INPUT('QEMU Keyboard 2', '/devices/pci0000:00/0000:00:04.0/usb1/1-7/1-7:1.0/0003:0627:0001.0003/input/input6', 'sysrq kbd leds event6', '120013');
const USB_MOUSE = INPUT('QEMU Mouse', '/devices/pci0000:00/0000:00:04.0/usb1/1-6/1-6:1.0/0003:0627:0001.0002/input/input5', 'mouse0 event5', '17');
const AT_KBD = INPUT('AT Translated Set 2 keyboard', '/devices/platform/i8042/serio0/input/input3', 'sysrq kbd event3 leds', '120013');
const POWER = INPUT('Power Button', '/devices/LNXSYSTM:00/LNXPWRBN:00/input/input0', 'kbd event0', '3');

test('input: the only keyboard or mouse is refused; a second one (USB or not) frees it; power buttons do not count', () => {
  const paths = fakeHost();
  assert.equal(readInputDevices(paths.inputDevices), null);
  // No /proc/bus/input/devices: only USB boot devices count. Two keyboards, one mouse.
  assert.equal(needs(paths, '1-2'), null);
  assert.equal(needs(paths, '1-6'), 'it is the host\'s only mouse: you would lose your pointer');
  write(paths.inputDevices, POWER + USB_KBD + USB_MOUSE);
  assert.deepEqual(readInputDevices(paths.inputDevices)?.map((i) => [...i.kinds]), [['keyboard'], ['mouse']]);
  assert.equal(needs(paths, '1-2'), 'it is the host\'s only keyboard: you would lose your typing');
  assert.equal(needs(paths, '1-6'), 'it is the host\'s only mouse: you would lose your pointer');
  write(paths.inputDevices, POWER + USB_KBD + USB_MOUSE + AT_KBD);
  assert.equal(needs(paths, '1-2'), null, 'the built-in keyboard stays');
  write(paths.inputDevices, USB_KBD + USB_KBD2 + USB_MOUSE);
  assert.equal(needs(paths, '1-2'), null);
  assert.equal(needs(paths, '1-7'), null);
  assert.equal(needs(paths, '1-5'), null, 'a stick is no input device');
});

test('a hub is always needed; the attach spec and the CLI take force', () => {
  const paths = fakeHost();
  assert.match(needs(paths, '1-3') ?? '', /^it is a hub/);
  assert.deepEqual(parseHostUsbAttachSpec({ device: '1-2', force: true }), { device: '1-2', force: true });
  assert.deepEqual(parseHostUsbAttachSpec({ device: '1-2', force: false, port: 5 }), { device: '1-2', port: 5 });
  assert.throws(() => parseHostUsbAttachSpec({ device: '1-2', force: 'yes' }), /"force" is true or false/);
  const cmd = parseArgs(['usb', 'add', 'host:1-2', '--force', '--monitor', '/tmp/m.sock'], () => ({})) as { method: string; args: unknown[] };
  assert.equal(cmd.method, 'attachHostUsbDevice');
  assert.deepEqual(cmd.args, [{ device: '1-2', force: true }]);
  assert.throws(() => parseArgs(['usb', 'add', 'keyboard', '--force', '--monitor', '/tmp/m.sock'], () => ({})), /--force is for porthole usb add host:DEVICE/);
});
