// The host USB inventory (main/host/usb-inventory.ts) and the journal of taken devices
// (main/host/usb-journal.ts), against a fake sysfs tree in a temporary folder.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import {
  findHostUsbDevice, formatHostUsbDevices, listSysfsUsbDevices, openErrorSentence, readSysfsUsbDevice, udevRule,
} from '../../main/host/usb-inventory';
import { entryFromJson, repairUsbJournal, sysfsBind, UsbJournal, type JournalEntry } from '../../main/host/usb-journal';
import { dataDir } from '../../main/manager/app-paths';

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-usbinv-'));
}

/** /sys/bus/usb/{devices,drivers} as the kernel lays them out (symlinks for drivers). */
function fakeSysfs(): { root: string; bus: string } {
  const bus = path.join(tmp(), 'bus', 'usb');
  const root = path.join(bus, 'devices');
  fs.mkdirSync(root, { recursive: true });
  for (const d of ['usb-storage', 'usbhid', 'hub']) {
    fs.mkdirSync(path.join(bus, 'drivers', d), { recursive: true });
    fs.writeFileSync(path.join(bus, 'drivers', d, 'bind'), '');
  }
  const device = (name: string, attrs: Record<string, string>) => {
    fs.mkdirSync(path.join(root, name), { recursive: true });
    for (const [k, v] of Object.entries(attrs)) fs.writeFileSync(path.join(root, name, k), `${v}\n`);
  };
  const itf = (name: string, attrs: Record<string, string>, driver: string | null) => {
    device(name, attrs);
    if (driver) fs.symlinkSync(path.join(bus, 'drivers', driver), path.join(root, name, 'driver'));
  };
  device('usb1', { busnum: '1', devnum: '1', idVendor: '1d6b', idProduct: '0003', speed: '5000', bDeviceClass: '09', bConfigurationValue: '1' });
  device('1-1', {
    busnum: '1', devnum: '2', idVendor: '46f4', idProduct: '0001', manufacturer: 'QEMU', product: 'QEMU USB HARDDRIVE',
    serial: 'RIGSTICK0', speed: '5000', bDeviceClass: '00', bConfigurationValue: '1',
  });
  itf('1-1:1.0', { bInterfaceNumber: '00', bAlternateSetting: ' 0', bInterfaceClass: '08', bInterfaceSubClass: '06', bInterfaceProtocol: '50' }, 'usb-storage');
  device('1-2', { busnum: '1', devnum: '3', idVendor: '0627', idProduct: '0001', product: 'QEMU USB Keyboard', speed: '12', bDeviceClass: '00', bConfigurationValue: '1' });
  itf('1-2:1.0', { bInterfaceNumber: '00', bInterfaceClass: '03' }, 'usbhid');
  itf('1-2:1.1', { bInterfaceNumber: '01', bInterfaceClass: '03' }, null);
  device('1-3', { busnum: '1', devnum: '4', idVendor: '0409', idProduct: '55aa', speed: '480', bDeviceClass: '09', bConfigurationValue: '1' });
  device('1-3.2', { busnum: '1', devnum: '5', idVendor: '0627', idProduct: '0001', speed: '1.5', bDeviceClass: '00', bConfigurationValue: '0' });
  // Half-registered: no IDs yet.
  device('1-4', { busnum: '1', devnum: '6' });
  return { root, bus };
}

test('sysfs: every device but root hubs, with IDs, strings, port path, speed, class and interface drivers', () => {
  const { root } = fakeSysfs();
  const all = listSysfsUsbDevices(root);
  assert.deepEqual(all.map((d) => d.sysfsName), ['1-1', '1-2', '1-3', '1-3.2']);
  const stick = all[0];
  assert.equal(stick.busNumber, 1);
  assert.equal(stick.deviceAddress, 2);
  assert.deepEqual(stick.portPath, [1]);
  assert.equal(stick.vendorId, 0x46f4);
  assert.equal(stick.productId, 0x0001);
  assert.equal(stick.manufacturer, 'QEMU');
  assert.equal(stick.product, 'QEMU USB HARDDRIVE');
  assert.equal(stick.serial, 'RIGSTICK0');
  assert.equal(stick.speed, 'super');
  assert.equal(stick.devicePath, '/dev/bus/usb/001/002');
  assert.equal(stick.isHub, false);
  assert.deepEqual(stick.interfaces, [{ sysfsName: '1-1:1.0', number: 0, alternate: 0, classCode: 8, subclass: 6, protocol: 0x50, driver: 'usb-storage' }]);
  const kbd = all[1];
  assert.equal(kbd.speed, 'full');
  assert.equal(kbd.serial, null);
  assert.deepEqual(kbd.interfaces.map((i) => [i.sysfsName, i.driver]), [['1-2:1.0', 'usbhid'], ['1-2:1.1', null]]);
  assert.equal(all[2].isHub, true);
  assert.equal(all[2].speed, 'high');
  assert.deepEqual(all[3].portPath, [3, 2]);
  assert.equal(all[3].speed, 'low');
  assert.deepEqual(all[3].interfaces, [], 'unconfigured: no interfaces');
  assert.equal(readSysfsUsbDevice('1-4', root), null);
  assert.equal(readSysfsUsbDevice('../etc', root), null);
  assert.deepEqual(listSysfsUsbDevices(path.join(root, 'missing')), [], 'no USB bus: an empty list');
  const text = formatHostUsbDevices(all, new Map([['1-1', 'vm-a']]));
  assert.match(text, /^1-1 +1:2 +46f4:0001 super class 00 drivers usb-storage {2}QEMU QEMU USB HARDDRIVE \[RIGSTICK0\].*\(in VM vm-a\)$/m);
  assert.match(text, /1-3 .*\(hub\)/);
});

test('a device is found by port path, BUS:ADDR or a unique VID:PID; anything else is a sentence', () => {
  const all = listSysfsUsbDevices(fakeSysfs().root);
  assert.equal(findHostUsbDevice('1-3.2', all).deviceAddress, 5);
  assert.equal(findHostUsbDevice('1:3', all).sysfsName, '1-2');
  assert.equal(findHostUsbDevice('46F4:0001', all).sysfsName, '1-1');
  assert.throws(() => findHostUsbDevice('0627:0001', all), /2 host USB devices are 0627:0001 \(1-2, 1-3\.2\); name one by its port path/);
  assert.throws(() => findHostUsbDevice('2-1', all), /there is no host USB device 2-1; there are 1-1 \(46f4:0001\), 1-2 \(0627:0001\), 1-3\.2/);
  assert.throws(() => findHostUsbDevice('$(rm -rf)', all), /is named by its port path/);
  assert.throws(() => findHostUsbDevice('1-1', []), /this host has no USB devices/);
});

test('a permission problem names the udev rule for that VID:PID; other failures are sentences too', () => {
  const dev = { vendorId: 0x46f4, productId: 1, sysfsName: '1-1', devicePath: '/dev/bus/usb/001/002' };
  assert.equal(udevRule(0x46f4, 1), 'SUBSYSTEM=="usb", ATTR{idVendor}=="46f4", ATTR{idProduct}=="0001", TAG+="uaccess"');
  const libusb = Object.assign(new Error('LIBUSB_ERROR_ACCESS'), { errno: -3 });
  const s = openErrorSentence(dev, libusb);
  assert.match(s, /^Permission denied opening host USB device 1-1 \(46f4:0001, \/dev\/bus\/usb\/001\/002\)\./);
  assert.ok(s.includes('SUBSYSTEM=="usb", ATTR{idVendor}=="46f4", ATTR{idProduct}=="0001", TAG+="uaccess"'));
  assert.ok(!s.includes('    at '), 'no stack trace');
  assert.match(openErrorSentence(dev, Object.assign(new Error('open'), { code: 'EACCES' })), /udev rule/);
  assert.match(openErrorSentence(dev, Object.assign(new Error('LIBUSB_ERROR_BUSY'), { errno: -6 })), /busy: another program holds it/);
  assert.match(openErrorSentence(dev, Object.assign(new Error('LIBUSB_ERROR_NO_DEVICE'), { errno: -4 })), /is gone/);
  assert.equal(openErrorSentence(dev, new Error('odd\n    at x')), 'Host USB device 1-1 (46f4:0001) could not be opened: odd.');
});

function entry(over: Partial<JournalEntry> = {}): JournalEntry {
  return {
    sysfsName: '1-1', busNumber: 1, deviceAddress: 2, vendorId: 0x46f4, productId: 1, pid: 999999, vm: 'vm-a',
    takenAt: new Date(0).toISOString(), interfaces: [{ sysfsName: '1-1:1.0', number: 0, driver: 'usb-storage' }], ...over,
  };
}

test('the journal: one file per device, written atomically, bad files reported and left alone', () => {
  const dir = tmp();
  const j = new UsbJournal(dir);
  j.record(entry());
  j.record(entry({ sysfsName: '1-2', interfaces: [] }));
  assert.deepEqual(fs.readdirSync(j.dir).sort(), ['1-1.json', '1-2.json'], 'no temporary files left');
  assert.equal((fs.statSync(path.join(j.dir, '1-1.json')).mode & 0o777), 0o600);
  fs.writeFileSync(path.join(j.dir, '3-1.json'), '{"sysfsName": "3-1"');
  fs.writeFileSync(path.join(j.dir, '4-1.json'), JSON.stringify(entry({ sysfsName: '5-1' })));
  const { entries, bad } = j.read();
  assert.deepEqual(entries.map((e) => e.sysfsName).sort(), ['1-1', '1-2']);
  assert.deepEqual(bad.map((f) => path.basename(f)).sort(), ['3-1.json', '4-1.json']);
  j.remove('1-2');
  j.remove('1-2');
  assert.deepEqual(j.read().entries.map((e) => e.sysfsName), ['1-1']);
  assert.throws(() => j.remove('../x'), /not a USB device name/);
  assert.equal(entryFromJson({ ...entry(), interfaces: [{ sysfsName: '2-1:1.0', number: 0, driver: 'usb-storage' }] }), null, 'an interface of another device');
  assert.equal(entryFromJson({ ...entry(), interfaces: [{ sysfsName: '1-1:1.0', number: 0, driver: '../../x' }] }), null, 'a driver name that is a path');
  assert.equal(dataDir({ XDG_DATA_HOME: '/d' }), '/d/porthole');
  assert.equal(dataDir({ XDG_DATA_HOME: 'rel', HOME: '/h' }), '/h/.local/share/porthole');
});

test('repair: a dead holder\'s drivers are bound again; live holders, moved devices and failures are handled', () => {
  const { root, bus } = fakeSysfs();
  // The holder was killed: the kernel released its claim, the interface has no driver.
  fs.unlinkSync(path.join(root, '1-1:1.0', 'driver'));
  const j = new UsbJournal(tmp());
  j.record(entry());
  j.record(entry({ sysfsName: '1-2', deviceAddress: 3, pid: 4242, interfaces: [{ sysfsName: '1-2:1.1', number: 1, driver: 'usbhid' }] }));
  j.record(entry({ sysfsName: '1-3.2', deviceAddress: 99, interfaces: [] }));
  const bound: string[] = [];
  const lines = repairUsbJournal(j, {
    sysfsRoot: root, isAlive: (pid) => pid === 4242, bind: (driver, itf) => { bound.push(`${driver} ${itf}`); },
  });
  assert.deepEqual(bound, ['usb-storage 1-1:1.0']);
  assert.deepEqual(j.read().entries.map((e) => e.sysfsName), ['1-2'], 'the live holder keeps its entry');
  assert.ok(lines.some((l) => /gave 1-1 back to the host after VM vm-a \(process 999999\).*1-1:1\.0 → usb-storage/.test(l)), lines.join('\n'));
  assert.ok(lines.some((l) => /1-3\.2 .* left the host meanwhile/.test(l)));
  // The manager saw 4242 die: only its entry; a bind that fails keeps the entry for the next try.
  const failing = repairUsbJournal(j, { sysfsRoot: root, pid: 4242, bind: () => { throw new Error('EACCES'); } });
  assert.match(failing.join('\n'), /could not give 1-2 back to the host: 1-2:1\.1 → usbhid: EACCES/);
  assert.deepEqual(j.read().entries.map((e) => e.sysfsName), ['1-2']);
  // The default bind writes the interface name to the driver's bind file.
  sysfsBind('usbhid', '1-2:1.1', root);
  assert.equal(fs.readFileSync(path.join(bus, 'drivers', 'usbhid', 'bind'), 'utf8'), '1-2:1.1');
  repairUsbJournal(j, { sysfsRoot: root, pid: 4242 });
  assert.deepEqual(j.read().entries, []);
});

test('sysfs: the peer port on the controller\'s other bus (root and hub ports), or null', () => {
  const { root } = fakeSysfs();
  // usb1/1-0:1.0/usb1-port1/peer -> usb2-port1; 1-3's hub port 2 -> 2-3-port2 (a USB 3 hub's companion).
  const portDir = (parent: string, itf: string, port: string) => {
    const d = path.join(root, parent, itf, port);
    fs.mkdirSync(d, { recursive: true });
    return d;
  };
  fs.symlinkSync('../../../usb2/2-0:1.0/usb2-port1', path.join(portDir('usb1', '1-0:1.0', 'usb1-port1'), 'peer'));
  fs.symlinkSync('../../../2-3/2-3:1.0/2-3-port2', path.join(portDir('1-3', '1-3:1.0', '1-3-port2'), 'peer'));
  const all = listSysfsUsbDevices(root);
  assert.equal(all.find((d) => d.sysfsName === '1-1')?.peerName, '2-1');
  assert.equal(all.find((d) => d.sysfsName === '1-3.2')?.peerName, '2-3.2');
  assert.equal(all.find((d) => d.sysfsName === '1-2')?.peerName, null, 'no peer link');
});
