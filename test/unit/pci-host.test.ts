// The PCI inventory (main/host/pci-inventory.ts), binding to vfio-pci and back
// (main/host/pci-binding.ts) and the journal's PCI entries (main/host/usb-journal.ts), against a
// fake sysfs tree in a temporary folder with a small fake kernel behind its writable files.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { givePciDeviceBack, restorePciDriver, setSriovVfs, takePciDevice, type SysfsWrite } from '../../main/host/pci-binding';
import { formatPciDevices, hostNeedsPciDevice, listPciDevices, normalizePciAddress, pciClassName, pciSummary, readPciDevice } from '../../main/host/pci-inventory';
import { parseArgs, UsageError } from '../../main/cli/args';
import { repairUsbJournal, UsbJournal, type JournalEntry } from '../../main/host/usb-journal';
import { writePciAttributes } from '../helpers/fake-pci-sysfs';

interface FakeDevice { address: string; vendor: number; device: number; cls: number; driver?: string; group: number; header?: number; bootVga?: boolean; totalVfs?: number }

class FakeSysfs {
  readonly root: string;
  readonly proc: string;
  readonly writes: string[] = [];
  /** The driver drivers_probe picks for a device without driver_override. */
  readonly nativeDriver = new Map<string, string>();

  constructor(devices: FakeDevice[]) {
    const top = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-pci-'));
    this.root = path.join(top, 'sys');
    this.proc = path.join(top, 'proc');
    fs.mkdirSync(path.join(this.root, 'bus', 'pci', 'devices'), { recursive: true });
    fs.mkdirSync(path.join(this.proc, 'self'), { recursive: true });
    fs.mkdirSync(path.join(this.proc, 'net'), { recursive: true });
    fs.writeFileSync(path.join(this.proc, 'self', 'mountinfo'), '');
    fs.writeFileSync(path.join(this.proc, 'net', 'route'), 'Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n');
    for (const d of ['pcieport', 'nvme', 'e1000', 'xhci_hcd', 'snd_hda_intel', 'ahci', 'bochs-drm']) this.addDriver(d);
    for (const d of devices) this.addDevice(d);
  }

  dev(address: string): string { return path.join(this.root, 'bus', 'pci', 'devices', address); }
  driverOf(address: string): string | null {
    try { return path.basename(fs.readlinkSync(path.join(this.dev(address), 'driver'))); } catch { return null; }
  }

  addDriver(name: string): void {
    fs.mkdirSync(path.join(this.root, 'bus', 'pci', 'drivers', name), { recursive: true });
  }

  addDevice(d: FakeDevice): void {
    const dir = this.dev(d.address);
    fs.mkdirSync(dir, { recursive: true });
    writePciAttributes(dir, d);
    const groupDir = path.join(this.root, 'kernel', 'iommu_groups', String(d.group), 'devices');
    fs.mkdirSync(groupDir, { recursive: true });
    fs.rmSync(path.join(groupDir, d.address), { force: true });
    fs.symlinkSync(dir, path.join(groupDir, d.address));
    fs.symlinkSync(path.dirname(groupDir), path.join(dir, 'iommu_group'));
    if (d.totalVfs !== undefined) {
      fs.writeFileSync(path.join(dir, 'sriov_totalvfs'), `${d.totalVfs}\n`);
      fs.writeFileSync(path.join(dir, 'sriov_numvfs'), '0\n');
      fs.writeFileSync(path.join(dir, 'sriov_drivers_autoprobe'), '1\n');
    }
    if (d.driver !== undefined) {
      this.nativeDriver.set(d.address, d.driver);
      this.bindLink(d.address, d.driver);
    }
  }

  private bindLink(address: string, driver: string): void {
    fs.symlinkSync(path.join(this.root, 'bus', 'pci', 'drivers', driver), path.join(this.dev(address), 'driver'));
  }

  private probe(address: string): void {
    const override = fs.readFileSync(path.join(this.dev(address), 'driver_override'), 'utf8').trim();
    const want = override !== '(null)' && override !== '' ? override : this.nativeDriver.get(address);
    if (want !== undefined && fs.existsSync(path.join(this.root, 'bus', 'pci', 'drivers', want))) this.bindLink(address, want);
  }

  /** The kernel's side of the attribute writes pci-binding makes. */
  readonly write: SysfsWrite = (file, value) => {
    const rel = path.relative(this.root, file);
    this.writes.push(`${rel}=${value.trim()}`);
    const parts = rel.split(path.sep);
    if (parts[0] === 'bus' && parts[2] === 'devices' && parts[4] === 'driver_override') {
      fs.writeFileSync(file, value.trim() === '' ? '(null)\n' : `${value.trim()}\n`);
    } else if (parts[0] === 'bus' && parts[2] === 'drivers' && parts[4] === 'unbind') {
      if (this.driverOf(value) !== parts[3]) throw Object.assign(new Error('ENODEV'), { code: 'ENODEV' });
      fs.unlinkSync(path.join(this.dev(value), 'driver'));
    } else if (parts[0] === 'bus' && parts[2] === 'drivers' && parts[4] === 'bind') {
      const override = fs.readFileSync(path.join(this.dev(value), 'driver_override'), 'utf8').trim();
      if (override !== '(null)' && override !== parts[3]) throw Object.assign(new Error('ENODEV'), { code: 'ENODEV' });
      this.bindLink(value, parts[3]);
    } else if (rel === path.join('bus', 'pci', 'drivers_probe')) {
      this.probe(value);
    } else if (parts[4] === 'sriov_numvfs') {
      const pf = parts[3];
      const n = Number(value);
      const old = Number(fs.readFileSync(file, 'utf8'));
      if (old !== 0 && n !== 0) throw Object.assign(new Error('EBUSY'), { code: 'EBUSY' });
      for (let i = 0; i < Math.max(old, n); i++) {
        const vf = `${pf.slice(0, 8)}${(i + 1).toString(16).padStart(2, '0')}.0`;
        if (i < n) {
          this.addDevice({ address: vf, vendor: 0x1b36, device: 0x0010, cls: 0x010802, group: 100 + i });
          fs.symlinkSync(this.dev(vf), path.join(this.dev(pf), `virtfn${i}`));
          fs.symlinkSync(this.dev(pf), path.join(this.dev(vf), 'physfn'));
        } else {
          fs.rmSync(this.dev(vf), { recursive: true });
          fs.unlinkSync(path.join(this.dev(pf), `virtfn${i}`));
        }
      }
      fs.writeFileSync(file, `${n}\n`);
    } else {
      fs.writeFileSync(file, value);
    }
  };
}

function rig(): FakeSysfs {
  const s = new FakeSysfs([
    { address: '0000:00:00.0', vendor: 0x8086, device: 0x29c0, cls: 0x060000, group: 0 },
    { address: '0000:00:02.0', vendor: 0x1234, device: 0x1111, cls: 0x030000, driver: 'bochs-drm', group: 1, bootVga: true },
    { address: '0000:00:03.0', vendor: 0x8086, device: 0x100e, cls: 0x020000, driver: 'e1000', group: 2 },
    { address: '0000:00:04.0', vendor: 0x1b36, device: 0x000d, cls: 0x0c0330, driver: 'xhci_hcd', group: 3 },
    { address: '0000:00:05.0', vendor: 0x8086, device: 0x293e, cls: 0x040300, driver: 'snd_hda_intel', group: 4 },
    { address: '0000:00:05.1', vendor: 0x1b36, device: 0x000d, cls: 0x0c0330, driver: 'xhci_hcd', group: 4 },
    { address: '0000:00:06.0', vendor: 0x1b36, device: 0x000c, cls: 0x060400, driver: 'pcieport', group: 5, header: 1 },
    { address: '0000:01:00.0', vendor: 0x1b36, device: 0x0010, cls: 0x010802, driver: 'nvme', group: 5, totalVfs: 2 },
    { address: '0000:00:07.0', vendor: 0x8086, device: 0x2922, cls: 0x010601, driver: 'ahci', group: 6 },
  ]);
  // eth0 (the e1000) carries the default route; nvme0n1p1 is mounted; sda (behind AHCI) is not.
  const net = path.join(s.root, 'class', 'net');
  fs.mkdirSync(net, { recursive: true });
  fs.mkdirSync(path.join(s.dev('0000:00:03.0'), 'net', 'eth0'), { recursive: true });
  fs.symlinkSync(path.join(s.dev('0000:00:03.0'), 'net', 'eth0'), path.join(net, 'eth0'));
  fs.appendFileSync(path.join(s.proc, 'net', 'route'), 'eth0\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n');
  const block = path.join(s.root, 'block');
  fs.mkdirSync(block, { recursive: true });
  const disk = (address: string, name: string, part: string, dev: string, partDev: string) => {
    const d = path.join(s.dev(address), 'host0', name);
    fs.mkdirSync(path.join(d, part), { recursive: true });
    fs.mkdirSync(path.join(d, 'holders'));
    fs.writeFileSync(path.join(d, 'dev'), `${dev}\n`);
    fs.writeFileSync(path.join(d, part, 'dev'), `${partDev}\n`);
    fs.symlinkSync(d, path.join(block, name));
  };
  disk('0000:01:00.0', 'nvme0n1', 'nvme0n1p1', '259:0', '259:1');
  disk('0000:00:07.0', 'sda', 'sda1', '8:0', '8:1');
  fs.writeFileSync(path.join(s.proc, 'self', 'mountinfo'), '22 1 259:1 / / rw,relatime - ext4 /dev/nvme0n1p1 rw\n25 22 0:21 / /proc rw - proc proc rw\n');
  return s;
}

test('pci inventory: bridges are judged by header type, as the kernel\'s viability check does', () => {
  const s = new FakeSysfs([
    { address: '0000:00:1f.0', vendor: 0x8086, device: 0x2918, cls: 0x060100, driver: 'lpc_ich', group: 8 },
    { address: '0000:00:1f.3', vendor: 0x8086, device: 0x2930, cls: 0x0c0500, group: 8 },
    { address: '0000:00:1c.0', vendor: 0x8086, device: 0x2940, cls: 0x060400, driver: 'pcieport', group: 9, header: 1 },
    { address: '0000:02:00.0', vendor: 0x1b36, device: 0x000d, cls: 0x0c0330, driver: 'xhci_hcd', group: 9 },
  ]);
  const by = new Map(listPciDevices({ sysfsRoot: s.root, procRoot: s.proc }).map((d) => [d.address, d]));
  assert.equal(by.get('0000:00:1f.0')!.isBridge, false, 'an ISA bridge has a normal header');
  assert.match(by.get('0000:00:1f.3')!.whyNot!, /IOMMU group 8 is not viable: it also holds 0000:00:1f.0 \(lpc_ich\)/);
  assert.equal(by.get('0000:00:1c.0')!.isBridge, true);
  assert.equal(by.get('0000:02:00.0')!.assignable, true, 'a PCIe port with pcieport does not hold its group');
});

test('pci inventory: the NIC under a bridge that carries the default route is needed', () => {
  const s = rig();
  const net = path.join(s.root, 'class', 'net');
  const br = path.join(s.root, 'devices', 'virtual', 'net', 'br0');
  fs.mkdirSync(br, { recursive: true });
  fs.symlinkSync(br, path.join(net, 'br0'));
  fs.mkdirSync(path.join(s.dev('0000:00:04.0'), 'net', 'eth1'), { recursive: true });
  fs.symlinkSync(path.join(s.dev('0000:00:04.0'), 'net', 'eth1'), path.join(net, 'eth1'));
  const roots = { sysfsRoot: s.root, procRoot: s.proc };
  fs.writeFileSync(path.join(s.proc, 'net', 'route'), 'Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\nbr0\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n');
  assert.equal(hostNeedsPciDevice('0000:00:04.0', roots), null, 'not enslaved yet');
  fs.symlinkSync(path.join(net, 'eth1'), path.join(br, 'lower_eth1'));
  assert.equal(hostNeedsPciDevice('0000:00:04.0', roots), 'it is eth1, which carries the default route under br0');
  assert.equal(hostNeedsPciDevice('0000:00:03.0', roots), null, 'eth0 no longer carries it');
});

test('pci inventory: an NVMe multipath disk (under its subsystem) is found through its paths', () => {
  const s = rig();
  fs.rmSync(path.join(s.root, 'block', 'nvme0n1'));
  const head = path.join(s.root, 'devices', 'virtual', 'nvme-subsystem', 'nvme-subsys0', 'nvme0n1');
  fs.mkdirSync(path.join(head, 'multipath'), { recursive: true });
  fs.mkdirSync(path.join(head, 'holders'));
  fs.writeFileSync(path.join(head, 'dev'), '259:0\n');
  const ctrlPath = path.join(s.dev('0000:01:00.0'), 'nvme', 'nvme0', 'nvme0c0n1');
  fs.mkdirSync(ctrlPath, { recursive: true });
  fs.symlinkSync(ctrlPath, path.join(head, 'multipath', 'nvme0c0n1'));
  fs.symlinkSync(head, path.join(s.root, 'block', 'nvme0n1'));
  const roots = { sysfsRoot: s.root, procRoot: s.proc };
  assert.equal(hostNeedsPciDevice('0000:01:00.0', roots), null, 'nothing of it is mounted yet');
  fs.writeFileSync(path.join(s.proc, 'self', 'mountinfo'), '22 1 259:0 / / rw,relatime - ext4 /dev/nvme0n1 rw\n');
  assert.equal(hostNeedsPciDevice('0000:01:00.0', roots), 'it holds /dev/nvme0n1, which has a mounted file system');
  assert.equal(hostNeedsPciDevice('0000:00:07.0', roots), null);
});

test('pci inventory: classes, drivers, IOMMU groups, viability, SR-IOV and what the host needs', () => {
  const s = rig();
  const roots = { sysfsRoot: s.root, procRoot: s.proc };
  const list = listPciDevices(roots);
  const by = new Map(list.map((d) => [d.address, d]));
  assert.equal(list.length, 9);
  const xhci = by.get('0000:00:04.0')!;
  assert.equal(xhci.className, 'USB controller (xHCI)');
  assert.deepEqual([xhci.vendorId, xhci.deviceId, xhci.classCode, xhci.driver], [0x1b36, 0x000d, 0x0c0330, 'xhci_hcd']);
  assert.deepEqual(xhci.iommuGroup, { id: 3, members: ['0000:00:04.0'], viable: false, heldByHost: [] });
  assert.deepEqual([xhci.assignable, xhci.whyNot, xhci.hostNeeds], [true, null, null]);

  const shared = by.get('0000:00:05.1')!;
  assert.equal(shared.assignable, false);
  assert.match(shared.whyNot!, /IOMMU group 4 is not viable: it also holds 0000:00:05.0 \(snd_hda_intel\)/);

  const nvme = by.get('0000:01:00.0')!;
  assert.deepEqual(nvme.iommuGroup?.heldByHost, [], 'the bridge in its group does not count');
  assert.equal(nvme.hostNeeds, 'it holds /dev/nvme0n1p1, which has a mounted file system');
  assert.match(nvme.whyNot!, /^the host needs it: it holds \/dev\/nvme0n1p1/);
  assert.deepEqual(nvme.sriov, { totalVfs: 2, numVfs: 0, virtualFunctions: [] });

  assert.equal(by.get('0000:00:02.0')!.hostNeeds, 'it is the boot display (boot_vga)');
  assert.equal(by.get('0000:00:03.0')!.hostNeeds, 'it is eth0, which carries the default route');
  assert.equal(by.get('0000:00:07.0')!.hostNeeds, null, 'an unmounted disk is not needed');
  assert.equal(by.get('0000:00:06.0')!.isBridge, true);
  assert.match(by.get('0000:00:06.0')!.whyNot!, /bridge/);
  assert.equal(by.get('0000:00:00.0')!.className, 'host bridge');
  assert.equal(by.get('0000:00:00.0')!.isBridge, false, 'a host bridge has a normal header');

  assert.equal(readPciDevice('0000:09:00.0', roots), null);
  assert.equal(hostNeedsPciDevice('0000:00:04.0', roots), null);
  assert.deepEqual(listPciDevices({ sysfsRoot: path.join(s.root, 'none') }), []);
  assert.equal(normalizePciAddress('01:00.0'), '0000:01:00.0');
  assert.equal(normalizePciAddress(' 0000:0A:1f.7 '), '0000:0a:1f.7');
  assert.throws(() => normalizePciAddress('1-1.4'), /"1-1.4" is not a PCI address/);
  assert.equal(pciClassName(0x0c0320), 'USB controller (EHCI)');
  assert.equal(pciClassName(0xff0000), 'class ff00');
});

test('pci binding: take to vfio-pci (loading it), journal first, give back to the old driver', () => {
  const s = rig();
  const journal = new UsbJournal(fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-pcij-')));
  const loaded: string[] = [];
  const opts = { sysfsRoot: s.root, procRoot: s.proc, write: s.write, loadModule: (m: string) => { loaded.push(m); s.addDriver(m); } };
  const taken = takePciDevice('0000:00:04.0', { ...opts, journal, vm: 'win', pid: 4242 });
  assert.deepEqual(loaded, ['vfio-pci']);
  assert.deepEqual(taken, { address: '0000:00:04.0', iommuGroup: 3, driver: 'xhci_hcd', driverOverride: null, moved: true });
  assert.equal(s.driverOf('0000:00:04.0'), 'vfio-pci');
  assert.deepEqual(s.writes, [
    'bus/pci/devices/0000:00:04.0/driver_override=vfio-pci', 'bus/pci/drivers/xhci_hcd/unbind=0000:00:04.0', 'bus/pci/drivers_probe=0000:00:04.0',
  ]);
  const { pci } = journal.read();
  assert.equal(pci.length, 1);
  assert.deepEqual({ ...pci[0], takenAt: '' }, {
    kind: 'pci', address: '0000:00:04.0', vendorId: 0x1b36, deviceId: 0x000d, driver: 'xhci_hcd', driverOverride: null, pid: 4242, vm: 'win', takenAt: '',
  });
  const group = readPciDevice('0000:00:04.0', { sysfsRoot: s.root, procRoot: s.proc })!.iommuGroup!;
  assert.equal(group.viable, true, 'the group is viable once its only member is on vfio-pci');

  // Taking it again is a no-op that gives nothing back later.
  const again = takePciDevice('0000:00:04.0', { ...opts, journal, vm: 'win' });
  assert.equal(again.moved, false);
  assert.equal(givePciDeviceBack(again, { ...opts, journal }), 'vfio-pci');

  s.writes.length = 0;
  assert.equal(givePciDeviceBack(taken, { ...opts, journal }), 'xhci_hcd');
  assert.equal(s.driverOf('0000:00:04.0'), 'xhci_hcd');
  assert.deepEqual(s.writes, [
    'bus/pci/devices/0000:00:04.0/driver_override=', 'bus/pci/drivers/vfio-pci/unbind=0000:00:04.0', 'bus/pci/drivers/xhci_hcd/bind=0000:00:04.0',
  ]);
  assert.deepEqual(journal.read().pci, []);
});

test('pci binding: refusals are sentences; force takes a device the host needs', () => {
  const s = rig();
  s.addDriver('vfio-pci');
  const opts = { sysfsRoot: s.root, procRoot: s.proc, write: s.write, journal: null, vm: 'vm1' };
  assert.throws(() => takePciDevice('0000:00:03.0', opts), /^Error: 0000:00:03.0 \(Ethernet controller\) stays with the host: it is eth0, which carries the default route. Force it to take it anyway.$/);
  assert.throws(() => takePciDevice('0000:00:02.0', opts), /stays with the host: it is the boot display/);
  assert.throws(() => takePciDevice('0000:00:05.1', opts), /0000:00:05.1 cannot be assigned: its IOMMU group 4 also holds 0000:00:05.0 \(snd_hda_intel\)/);
  assert.throws(() => takePciDevice('0000:00:06.0', opts), /is a bridge/);
  assert.throws(() => takePciDevice('0000:09:00.0', opts), /there is no PCI device 0000:09:00.0 on this host/);
  assert.throws(() => takePciDevice('nonsense', opts), /"nonsense" is not a PCI address/);
  assert.equal(s.writes.length, 0, 'nothing was written for a refused device');
  const forced = takePciDevice('0000:00:03.0', { ...opts, force: true });
  assert.equal(s.driverOf('0000:00:03.0'), 'vfio-pci');
  assert.equal(givePciDeviceBack(forced, { ...opts }), 'e1000');
  // A sysfs write the kernel refuses names the step.
  const denied: SysfsWrite = () => { throw Object.assign(new Error('EACCES'), { code: 'EACCES' }); };
  assert.throws(() => takePciDevice('0000:00:04.0', { ...opts, write: denied }), /writing 0000:00:04.0's driver_override: permission denied \(binding PCI drivers needs root\)/);
});

test('pci binding: a device that does not bind to vfio-pci is given back and its journal entry dropped', () => {
  const s = rig();
  s.addDriver('vfio-pci');
  const journal = new UsbJournal(fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-pcij-')));
  // A kernel whose drivers_probe binds nothing.
  const lazy: SysfsWrite = (file, value) => { if (!file.endsWith('drivers_probe')) s.write(file, value); };
  assert.throws(() => takePciDevice('0000:00:04.0', { sysfsRoot: s.root, procRoot: s.proc, write: lazy, journal, vm: 'vm1' }),
    /0000:00:04.0 did not bind to vfio-pci \(it is on no driver; given back to xhci_hcd\)/);
  assert.equal(s.driverOf('0000:00:04.0'), 'xhci_hcd');
  assert.deepEqual(journal.read().pci, []);
});

test('host device journal: a dead holder\'s PCI device goes back at repair; USB entries read as before', () => {
  const s = rig();
  s.addDriver('vfio-pci');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-pcij-'));
  const journal = new UsbJournal(dir);
  const usb: JournalEntry = {
    sysfsName: '1-1', busNumber: 1, deviceAddress: 2, vendorId: 0x46f4, productId: 1, pid: 1, vm: 'a', takenAt: 'x',
    interfaces: [{ sysfsName: '1-1:1.0', number: 0, driver: 'usb-storage' }],
  };
  journal.record(usb);
  const opts = { sysfsRoot: s.root, procRoot: s.proc, write: s.write };
  takePciDevice('0000:00:04.0', { ...opts, journal, vm: 'crashed', pid: 999999 });
  takePciDevice('0000:00:07.0', { ...opts, journal, vm: 'alive', pid: 1000000 });
  fs.writeFileSync(path.join(journal.dir, 'pci-0000:00:09.0.json'), '{"kind":"pci","address":"0000:00:08.0"}');
  const read = journal.read();
  assert.deepEqual(read.entries, [usb]);
  assert.deepEqual(read.pci.map((p) => p.address).sort(), ['0000:00:04.0', '0000:00:07.0']);
  assert.deepEqual(read.bad, [path.join(journal.dir, 'pci-0000:00:09.0.json')]);

  const lines = repairUsbJournal(journal, {
    isAlive: (pid) => pid !== 999999, sysfsRoot: path.join(s.root, 'bus', 'usb', 'devices'),
    restorePci: (e) => restorePciDriver(e, { sysfsRoot: s.root, write: s.write }),
  });
  assert.ok(lines.includes('PCI: gave 0000:00:04.0 back to xhci_hcd after VM crashed (process 999999) ended without doing so'), lines.join('\n'));
  assert.equal(s.driverOf('0000:00:04.0'), 'xhci_hcd');
  assert.equal(s.driverOf('0000:00:07.0'), 'vfio-pci', 'a live holder keeps its device');
  assert.deepEqual(journal.read().pci.map((p) => p.address), ['0000:00:07.0']);

  // A repair that fails keeps the entry for the next try.
  const failing = repairUsbJournal(journal, { pid: 1000000, restorePci: () => { throw new Error('EBUSY'); } });
  assert.ok(failing.includes('PCI: could not give 0000:00:07.0 back to ahci: EBUSY'), failing.join('\n'));
  assert.deepEqual(journal.read().pci.map((p) => p.address), ['0000:00:07.0']);
});

test('sr-iov: VFs are created through sriov_numvfs (through 0 for a new count) and listed', () => {
  const s = rig();
  const opts = { sysfsRoot: s.root, procRoot: s.proc, write: s.write };
  const vfs = setSriovVfs('0000:01:00.0', 2, { ...opts, autoprobe: false });
  assert.deepEqual(vfs, ['0000:01:01.0', '0000:01:02.0']);
  assert.equal(fs.readFileSync(path.join(s.dev('0000:01:00.0'), 'sriov_drivers_autoprobe'), 'utf8'), '0');
  const vf = readPciDevice('0000:01:02.0', { sysfsRoot: s.root, procRoot: s.proc })!;
  assert.equal(vf.physicalFunction, '0000:01:00.0');
  assert.equal(vf.iommuGroup?.id, 101);
  assert.deepEqual(setSriovVfs('0000:01:00.0', 1, opts), ['0000:01:01.0']);
  assert.ok(s.writes.includes('bus/pci/devices/0000:01:00.0/sriov_numvfs=0'));
  assert.deepEqual(setSriovVfs('0000:01:00.0', 0, opts), []);
  assert.throws(() => setSriovVfs('0000:01:00.0', 3, opts), /0000:01:00.0 offers 0 to 2 virtual functions, not 3/);
  assert.throws(() => setSriovVfs('0000:00:04.0', 1, opts), /0000:00:04.0 \(USB controller \(xHCI\)\) has no SR-IOV capability/);
});

test('porthole pci: the command line, the listing and the API summary', () => {
  assert.deepEqual(parseArgs(['pci'], () => ({})), { command: 'pci', json: false });
  assert.deepEqual(parseArgs(['pci', '--json'], () => ({})), { command: 'pci', json: true });
  assert.deepEqual(parseArgs(['pci', 'list', '--json'], () => ({})), { command: 'pci', json: true });
  assert.throws(() => parseArgs(['pci', '--all'], () => ({})), (e: Error) => e instanceof UsageError && /porthole pci takes list, assign or return, and --json, not "--all"/.test(e.message));
  const s = rig();
  const list = listPciDevices({ sysfsRoot: s.root, procRoot: s.proc }).map((d) => pciSummary(d, d.address === '0000:00:04.0' ? 'win (process 7)' : null));
  const xhci = list.find((d) => d.address === '0000:00:04.0')!;
  assert.deepEqual(xhci, {
    address: '0000:00:04.0', vendorId: 0x1b36, deviceId: 0x000d, classCode: 0x0c0330, className: 'USB controller (xHCI)', driver: 'xhci_hcd',
    isBridge: false, iommuGroup: { id: 3, members: ['0000:00:04.0'], viable: false }, sriov: null, physicalFunction: null, hostNeeds: null,
    assignable: true, whyNot: null, whyNotKind: null, heldBy: 'win (process 7)',
  });
  const text = formatPciDevices(list).split('\n');
  assert.match(text.find((l) => l.startsWith('0000:00:04.0'))!, /^0000:00:04.0 {2}1b36:000d {2}USB controller \(xHCI\) +driver xhci_hcd +group 3 not viable +\[in VM win \(process 7\)\] assignable$/);
  assert.match(text.find((l) => l.startsWith('0000:01:00.0'))!, /\[SR-IOV 0\/2 VFs\] not assignable: the host needs it: it holds \/dev\/nvme0n1p1/);
  assert.equal(formatPciDevices([]), 'no PCI devices (no /sys/bus/pci)\n');
});
