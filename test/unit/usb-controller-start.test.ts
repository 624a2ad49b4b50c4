// The PCI functions a VM takes at start (main/vmm/host/start-pci.ts) on a fake host: a pinned
// "controller" path refuses the start with a sentence when the group is not viable, the host
// needs the controller, or taking it fails; "auto" falls back to the emulated path with the
// failure as the reason, keeping the config's own functions. Then the VM host itself refuses a
// pinned start before any machine runs, and a pinned VM refuses a device while it runs.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, test } from 'node:test';
import { usbAttachRefusal } from '../../main/host/usb-controller-choice';
import { listSysfsUsbDevices } from '../../main/host/usb-inventory';
import type { UsbRule } from '../../main/host/usb-rules';
import { defaultConfig } from '../../main/vmm/config';
import type { DmaContainer, PciAssignDeps, RamMapping } from '../../main/vmm/host/pci-assign';
import { takeStartPci, type StartPciInput } from '../../main/vmm/host/start-pci';
import { VmHost } from '../../main/vmm/host/vm-host';
import { FakeUsbHost } from '../helpers/fake-usb-host';

const hosts: FakeUsbHost[] = [];
afterEach(() => { for (const h of hosts.splice(0)) h.cleanup(); });
function fakeHost(): FakeUsbHost {
  const h = new FakeUsbHost();
  hosts.push(h);
  return h;
}

/** The stick 1-1 on controller A (0000:00:05.0). */
const STICK_RULE: UsbRule = { match: { vendorId: 0x46f4, productId: 0x0001 } };
const RAM: RamMapping[] = [{ guestBase: 0, size: 1 << 20, hostAddr: 0x7f0000000000n, name: 'low' }];
const NO_DMA: DmaContainer = { mapDma: () => {}, unmapDma: (_iova, size) => size };

/** VFIO and sysfs binding faked: what was taken, opened and given back, in order. */
function fakeDeps(failTake?: string) {
  const calls: string[] = [];
  const deps: PciAssignDeps = {
    take: (address) => {
      if (address === failTake) throw new Error(`cannot bind ${address} to vfio-pci: Permission denied`);
      calls.push(`take ${address}`);
      return { address, iommuGroup: 5, driver: 'xhci_hcd', driverOverride: null, moved: true };
    },
    giveBack: (taken) => { calls.push(`give back ${taken.address}`); return taken.driver; },
    open: (_group, address) => { calls.push(`open ${address}`); return { deviceFd: 30, container: NO_DMA, close: () => calls.push(`close ${address}`) }; },
  };
  return { deps, calls };
}

function input(h: FakeUsbHost, over: Partial<StartPciInput> & { deps: PciAssignDeps }): StartPciInput & { lines: string[] } {
  const lines: string[] = [];
  return {
    vm: 'vm1', pciAssign: [], rules: [STICK_RULE], setting: 'auto',
    hostUsb: listSysfsUsbDevices(h.usbDevices), roots: h.usbRoots, ram: () => RAM, journal: null,
    log: (l) => lines.push(l), lines, ...over,
  };
}

test('auto: a qualifying controller is taken for the run, its choice logged', () => {
  const h = fakeHost();
  const { deps, calls } = fakeDeps();
  const i = input(h, { deps, pciAssign: [{ address: '0000:00:02.0' }] });
  const r = takeStartPci(i);
  assert.deepEqual(r.pciAssign, [{ address: '0000:00:02.0' }, { address: '0000:00:05.0' }]);
  assert.deepEqual(calls, ['take 0000:00:02.0', 'open 0000:00:02.0', 'take 0000:00:05.0', 'open 0000:00:05.0']);
  assert.deepEqual(r.choices.map((c) => [c.sysfsName, c.choice.path, c.choice.controller]), [['1-1', 'controller', '0000:00:05.0']]);
  assert.match(i.lines[0], /^USB: host device 1-1 goes by the controller path: its controller 0000:00:05\.0 .* is alone in IOMMU group 5/);
  r.assigned!.close();
});

test('auto: taking the chosen controller fails, so the VM starts on the emulated path with the failure as the reason', () => {
  const h = fakeHost();
  const { deps, calls } = fakeDeps('0000:00:05.0');
  const i = input(h, { deps, pciAssign: [{ address: '0000:00:02.0' }] });
  const r = takeStartPci(i);
  // The config's own function is given back with the rest when the controller fails, then taken again alone.
  assert.deepEqual(calls, ['take 0000:00:02.0', 'open 0000:00:02.0', 'close 0000:00:02.0', 'give back 0000:00:02.0', 'take 0000:00:02.0', 'open 0000:00:02.0']);
  assert.deepEqual(r.pciAssign, [{ address: '0000:00:02.0' }]);
  assert.notEqual(r.assigned, null);
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].choice.path, 'emulated');
  assert.equal(r.choices[0].choice.controller, '0000:00:05.0');
  assert.equal(r.choices[0].choice.reason, 'the controller path was chosen but failed: cannot bind 0000:00:05.0 to vfio-pci: Permission denied');
  assert.ok(i.lines.includes('USB: the controller path failed (cannot bind 0000:00:05.0 to vfio-pci: Permission denied); the rules\' devices take the emulated path'), i.lines.join('\n'));
  r.assigned!.close();
  // Without functions of its own the VM holds nothing.
  const alone = takeStartPci(input(h, { deps: fakeDeps('0000:00:05.0').deps }));
  assert.equal(alone.assigned, null);
  assert.deepEqual(alone.pciAssign, []);
  assert.equal(alone.choices[0].choice.path, 'emulated');
});

test('auto: a controller that does not qualify is never taken; "emulated" takes nothing and chooses nothing', () => {
  const h = fakeHost();
  h.pci({ address: '0000:00:05.1', cls: 0x040300, driver: 'snd_hda_intel' });
  h.group('0000:00:05.1', 5);
  const { deps, calls } = fakeDeps();
  const r = takeStartPci(input(h, { deps }));
  assert.deepEqual(calls, []);
  assert.equal(r.assigned, null);
  assert.equal(r.choices[0].choice.path, 'emulated');
  assert.match(r.choices[0].choice.reason, /shares IOMMU group 5 with 0000:00:05\.1/);
  assert.deepEqual(takeStartPci(input(h, { deps, setting: 'emulated' })), { assigned: null, pciAssign: [], choices: [] });
});

test('pinned "controller": a group that is not viable refuses the start with a sentence, nothing taken', () => {
  const h = fakeHost();
  h.pci({ address: '0000:00:05.1', cls: 0x040300, driver: 'snd_hda_intel' });
  h.group('0000:00:05.1', 5);
  const { deps, calls } = fakeDeps();
  assert.throws(() => takeStartPci(input(h, { deps, setting: 'controller', pciAssign: [{ address: '0000:00:02.0' }] })), {
    message: 'the VM\'s usbPassthroughPath is "controller", but the device\'s controller 0000:00:05.0 shares IOMMU group 5 with 0000:00:05.1, which would have to leave the host too',
  });
  assert.deepEqual(calls, []);
});

test('pinned "controller": the host needs the controller (a mounted disk on it) refuses the start', () => {
  const h = fakeHost();
  const sda = path.join(h.pciDir('0000:00:05.0'), 'usb1', '1-1', '1-1:1.0', 'host2', 'target2:0:0', '2:0:0:0', 'block', 'sda');
  fs.mkdirSync(path.join(h.sys, 'block'), { recursive: true });
  fs.symlinkSync(sda, path.join(h.sys, 'block', 'sda'));
  h.mount('8:1', '/home', '/dev/sda1');
  const { deps, calls } = fakeDeps();
  assert.throws(() => takeStartPci(input(h, { deps, setting: 'controller' })), {
    message: 'the VM\'s usbPassthroughPath is "controller", but the host needs its controller 0000:00:05.0: it holds /dev/sda1, which has a mounted file system',
  });
  assert.deepEqual(calls, []);
});

test('pinned "controller": a controller that cannot be taken refuses the start, naming it; what was taken goes back', () => {
  const h = fakeHost();
  const { deps, calls } = fakeDeps('0000:00:05.0');
  assert.throws(() => takeStartPci(input(h, { deps, setting: 'controller', pciAssign: [{ address: '0000:00:02.0' }] })), {
    message: 'the VM\'s usbPassthroughPath is "controller", but taking USB controller 0000:00:05.0 failed: cannot bind 0000:00:05.0 to vfio-pci: Permission denied',
  });
  assert.deepEqual(calls, ['take 0000:00:02.0', 'open 0000:00:02.0', 'close 0000:00:02.0', 'give back 0000:00:02.0']);
  // A function of the config's own that fails is its own error, under any setting.
  const own = fakeDeps('0000:00:02.0');
  assert.throws(() => takeStartPci(input(h, { deps: own.deps, setting: 'controller', pciAssign: [{ address: '0000:00:02.0' }] })), {
    message: 'cannot bind 0000:00:02.0 to vfio-pci: Permission denied',
  });
  assert.throws(() => takeStartPci(input(h, { deps: own.deps, pciAssign: [{ address: '0000:00:02.0' }] })), {
    message: 'cannot bind 0000:00:02.0 to vfio-pci: Permission denied',
  });
});

test('the VM host refuses a pinned start before any machine runs, and ends stopped', async () => {
  const h = fakeHost();
  h.pci({ address: '0000:00:05.1', cls: 0x040300, driver: 'snd_hda_intel' });
  h.group('0000:00:05.1', 5);
  const host = new VmHost({ ...defaultConfig(), memoryBytes: 16 << 20, usb: { controller: 'xhci', devices: [], rules: [STICK_RULE] }, usbPassthroughPath: 'controller' });
  host.hostUsbSource = {
    list: () => listSysfsUsbDevices(h.usbDevices),
    open: () => { throw new Error('not in this test'); },
    journal: null, sysfsRoot: h.usbDevices, procRoot: h.proc,
  };
  const logs: string[] = [];
  host.on('log', (l: string) => logs.push(l));
  await assert.rejects(host.start(), {
    message: 'the VM\'s usbPassthroughPath is "controller", but the device\'s controller 0000:00:05.0 shares IOMMU group 5 with 0000:00:05.1, which would have to leave the host too',
  });
  assert.equal(host.state, 'stopped');
  assert.deepEqual(host.usbPathChoicesAtStart, []);
});

test('a pinned "controller" VM refuses host devices while it runs; auto and emulated take them by the emulated path', () => {
  assert.equal(usbAttachRefusal('controller'),
    'this VM\'s usbPassthroughPath is "controller", and a USB controller can be assigned only at start (PCI is not hot-plugged): stop the VM, or set it to "auto"');
  assert.equal(usbAttachRefusal('auto'), null);
  assert.equal(usbAttachRefusal('emulated'), null);
});
