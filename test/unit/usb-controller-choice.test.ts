// Controller or emulated path for a host USB device (main/host/usb-controller-choice.ts), against
// fake sysfs and /proc trees: every reason for each outcome.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, test } from 'node:test';
import { applyUsbPathSetting, chooseUsbPath, planUsbControllers, usbControllerOf } from '../../main/host/usb-controller-choice';
import { listSysfsUsbDevices } from '../../main/host/usb-inventory';
import { ConfigError, machineConfigFromJson } from '../../main/vmm/config';
import { defaultVmSpec } from '../../main/api/contract';
import { parseVmSpec, vmSpecProblems } from '../../main/api/schema';
import { machineConfigOf } from '../../main/manager/machine-config';
import { FakeUsbHost } from '../helpers/fake-usb-host';

function write(file: string, text: string): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, text);
}

/** The fake host of each test, removed after it. */
const hosts: FakeUsbHost[] = [];
afterEach(() => { for (const h of hosts.splice(0)) h.cleanup(); });

class FakeHost extends FakeUsbHost {
  constructor() {
    super();
    hosts.push(this);
  }
}

test('the controller path: alone in its group (a bridge aside), nothing the host needs on it', () => {
  const h = new FakeHost();
  h.pci({ address: '0000:00:1e.0', cls: 0x060400, header: 1 });
  h.group('0000:00:1e.0', 5);
  assert.equal(usbControllerOf('1-3.1', h.sys), '0000:00:05.0');
  const c = chooseUsbPath('1-1', h.roots);
  assert.equal(c.path, 'controller', c.reason);
  assert.equal(c.controller, '0000:00:05.0');
  assert.deepEqual(c.alsoOnController, ['1-2', '1-3.1']);
  assert.equal(c.reason, 'its controller 0000:00:05.0 (USB controller (xHCI)) is alone in IOMMU group 5, the host needs nothing on it, and 1-2, 1-3.1 go with it');
});

test('emulated: no such device, or no PCI controller above it', () => {
  const h = new FakeHost();
  assert.deepEqual(chooseUsbPath('9-9', h.roots), {
    path: 'emulated', controller: null, alsoOnController: [],
    reason: 'there is no host USB device 9-9 in sysfs, so it has no controller to assign',
  });
  // dummy_hcd: a platform device, no PCI function above usb3.
  h.usb(path.join(h.sys, 'devices', 'platform', 'dummy_hcd.0', 'usb3'), '3-1', { busnum: '3', devnum: '2', idVendor: '46f4', idProduct: '0001', bDeviceClass: '00' }, []);
  const c = chooseUsbPath('3-1', h.roots);
  assert.equal(c.path, 'emulated');
  assert.equal(c.reason, '3-1 sits on no PCI USB controller that could be assigned');
});

test('emulated: the controller is unreadable or in no IOMMU group', () => {
  const h = new FakeHost();
  fs.rmSync(path.join(h.pciDir('0000:00:04.0'), 'iommu_group'));
  assert.equal(chooseUsbPath('2-1', h.roots).reason, 'its controller 0000:00:04.0 is in no IOMMU group (the IOMMU is off or VFIO is unavailable)');
  fs.rmSync(path.join(h.pciDir('0000:00:04.0'), 'class'));
  const c = chooseUsbPath('2-1', h.roots);
  assert.equal(c.path, 'emulated');
  assert.equal(c.reason, 'its controller 0000:00:04.0 could not be read from sysfs');
});

test('emulated: the IOMMU group holds another function', () => {
  const h = new FakeHost();
  h.pci({ address: '0000:00:05.1', cls: 0x040300, driver: 'xhci_hcd' });
  h.group('0000:00:05.1', 5);
  const c = chooseUsbPath('1-1', h.roots);
  assert.equal(c.path, 'emulated');
  assert.equal(c.reason, 'its controller 0000:00:05.0 shares IOMMU group 5 with 0000:00:05.1, which would have to leave the host too');
});

test('emulated: the host needs the controller itself (a mounted disk below it, by /sys/block)', () => {
  const h = new FakeHost();
  const sda = path.join(h.pciDir('0000:00:05.0'), 'usb1', '1-1', '1-1:1.0', 'host2', 'target2:0:0', '2:0:0:0', 'block', 'sda');
  fs.mkdirSync(path.join(h.sys, 'block'), { recursive: true });
  fs.symlinkSync(sda, path.join(h.sys, 'block', 'sda'));
  h.mount('8:1', '/', '/dev/sda1');
  const c = chooseUsbPath('1-2', h.roots);
  assert.equal(c.path, 'emulated');
  assert.equal(c.reason, 'the host needs its controller 0000:00:05.0: it holds /dev/sda1, which has a mounted file system');
});

test('emulated: another device on the controller is one the host needs (its root disk, its only mouse)', () => {
  const h = new FakeHost();
  h.mount('8:1', '/', '/dev/sda1');
  assert.equal(chooseUsbPath('1-2', h.roots).reason,
    'its controller 0000:00:05.0 also carries 1-1 (Stick), which the host needs: the host uses this disk: the root file system / is mounted from its sda1');
  const g = new FakeHost();
  // /proc/bus/input/devices: keyboards on 1-2 and 2-1, the only mouse behind hub 1-3.
  const input = (sysfs: string, handlers: string, ev: string) => `I: Bus=0003\nS: Sysfs=${sysfs}\nH: Handlers=${handlers}\nB: EV=${ev}\n`;
  write(path.join(g.proc, 'bus', 'input', 'devices'), [
    input('/devices/pci0000:00/0000:00:05.0/usb1/1-2/1-2:1.0/input/input1', 'sysrq kbd event1', '120013'),
    input('/devices/pci0000:00/0000:00:04.0/usb2/2-1/2-1:1.0/input/input2', 'sysrq kbd event2', '120013'),
    input('/devices/pci0000:00/0000:00:05.0/usb1/1-3/1-3.1/1-3.1:1.0/input/input3', 'mouse0 event3', '17'),
  ].join('\n'));
  assert.equal(chooseUsbPath('1-1', g.roots).reason,
    'its controller 0000:00:05.0 also carries 1-3.1, which the host needs: it is the host\'s only mouse: you would lose your pointer');
});

test('emulated: the host needs the device itself', () => {
  const h = new FakeHost();
  // Without /proc/bus/input/devices only USB boot keyboards count; remove 2-1 so 1-2 is the only one.
  fs.rmSync(path.join(h.sys, 'bus', 'usb', 'devices', '2-1'));
  const c = chooseUsbPath('1-2', h.roots);
  assert.equal(c.path, 'emulated');
  assert.equal(c.reason, 'the host needs 1-2 itself: it is the host\'s only keyboard: you would lose your typing');
});

test('a pinned path overrides or refuses the choice', () => {
  const h = new FakeHost();
  const yes = chooseUsbPath('1-1', h.roots);
  assert.equal(applyUsbPathSetting('auto', yes), yes);
  assert.equal(applyUsbPathSetting('controller', yes), yes);
  assert.deepEqual(applyUsbPathSetting('emulated', yes), { ...yes, path: 'emulated', reason: 'the VM\'s usbPassthroughPath is "emulated"' });
  h.pci({ address: '0000:00:05.1', cls: 0x040300, driver: 'xhci_hcd' });
  h.group('0000:00:05.1', 5);
  const no = chooseUsbPath('1-1', h.roots);
  assert.equal(applyUsbPathSetting('auto', no), no);
  assert.throws(() => applyUsbPathSetting('controller', no), /usbPassthroughPath is "controller", but the device's controller 0000:00:05.0 shares IOMMU group 5/);
});

test('at start: the controllers of devices the rules take, once each; a pinned "emulated" assigns none', () => {
  const h = new FakeHost();
  const usbRoot = path.join(h.sys, 'bus', 'usb', 'devices');
  const on = (names: string[]) => listSysfsUsbDevices(usbRoot).filter((d) => names.includes(d.sysfsName));
  const both = planUsbControllers('auto', on(['1-1', '1-2']), h.roots);
  assert.deepEqual(both.controllers, ['0000:00:05.0']);
  assert.deepEqual(both.choices.map((c) => [c.sysfsName, c.choice.path]), [['1-1', 'controller'], ['1-2', 'controller']]);
  assert.deepEqual(planUsbControllers('emulated', on(['1-1']), h.roots), { controllers: [], choices: [] });
  // Controller B carries the host's only mouse (2-2) once 1-3.1 is gone: emulated under auto, refused when pinned.
  fs.rmSync(path.join(usbRoot, '1-3.1'));
  const b = planUsbControllers('auto', on(['2-1']), h.roots);
  assert.deepEqual(b.controllers, []);
  assert.match(b.choices[0].choice.reason, /also carries 2-2, which the host needs: it is the host's only mouse/);
  assert.throws(() => planUsbControllers('controller', on(['2-1']), h.roots), /usbPassthroughPath is "controller", but the device's controller 0000:00:04\.0 also carries 2-2/);
});

test('config: usbPassthroughPath is "auto", "controller" or "emulated"', () => {
  assert.equal(machineConfigFromJson({}).usbPassthroughPath, undefined);
  for (const v of ['auto', 'controller', 'emulated'] as const) assert.equal(machineConfigFromJson({ usbPassthroughPath: v }).usbPassthroughPath, v);
  assert.throws(() => machineConfigFromJson({ usbPassthroughPath: 'pci' }, 'vm.json'), /vm\.json: usbPassthroughPath must be "auto", "controller" or "emulated"/);
  assert.throws(() => machineConfigFromJson({ usbPassthroughPath: 1 }, 'vm.json'), ConfigError);
});

test('a library VM spec: usb.passthroughPath is checked and reaches the machine config', () => {
  const withPath = (p: unknown) => ({ ...defaultVmSpec(), usb: { controller: 'xhci', devices: [], passthroughPath: p } });
  assert.deepEqual(vmSpecProblems(withPath('pci')).map((p) => [p.field, p.message]), [['usb.passthroughPath', 'usb.passthroughPath must be "auto", "controller" or "emulated".']]);
  const parsed = parseVmSpec(withPath('emulated'));
  assert.equal(parsed.usb?.passthroughPath, 'emulated');
  assert.equal(machineConfigOf(parsed).usbPassthroughPath, 'emulated');
  assert.equal(machineConfigOf(parseVmSpec({ ...defaultVmSpec(), usb: { controller: 'xhci', devices: [] } })).usbPassthroughPath, undefined);
});
