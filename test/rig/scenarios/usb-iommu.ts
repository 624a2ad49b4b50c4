// The rig's USB devices and IOMMU as a workstation's Porthole would see them: node-usb
// (libusb) enumerates and opens the emulated devices, usb-storage serves stick0's known
// sectors, every PCI device sits in an IOMMU group, and an e1000 moves to vfio-pci and back
// with its VFIO group viable.
import fs from 'node:fs';
import path from 'node:path';
import { getDeviceList, type Device } from 'usb';
import { vfio } from '../../../native';
import { checkNvmeSriov } from '../l1-nvme';
import { blockDeviceWithSerial, checkFatStick, checkRawStick, checkUsbAudio, hotplugStick0, readTrim, until } from '../l1-usb';
import { type ScenarioContext, scenario } from '../scenario';
import { STICKS } from '../sticks';

const EXPECTED_USB = [
  { id: '46f4:0001', what: 'usb-storage' },
  { id: '0627:0001', what: 'usb-kbd' },
  { id: '0403:6001', what: 'usb-serial (FTDI)' },
];

const hex4 = (n: number) => n.toString(16).padStart(4, '0');

function stringDescriptor(dev: Device, index: number): Promise<string> {
  if (!index) return Promise.resolve('');
  return new Promise((resolve, reject) => dev.getStringDescriptor(index, (err, value) => (err ? reject(err) : resolve(value ?? ''))));
}

async function checkUsb(ctx: ScenarioContext): Promise<string> {
  // usb-storage waits delay_use (1 s) before scanning; all three devices exist long before that.
  let ids: string[] = [];
  const devices = await until('enumeration of the three rig USB devices', 60000, () => {
    const list = getDeviceList();
    ids = list.map((d) => `${hex4(d.deviceDescriptor.idVendor)}:${hex4(d.deviceDescriptor.idProduct)}`);
    return EXPECTED_USB.every((e) => ids.includes(e.id)) ? list : null;
  }).catch((e: Error) => {
    const sysfs = fs.readdirSync('/sys/bus/usb/devices').map((n) => {
      const p = `/sys/bus/usb/devices/${n}/idVendor`;
      return fs.existsSync(p) ? `${n}=${readTrim(p)}:${readTrim(`/sys/bus/usb/devices/${n}/idProduct`)}` : n;
    });
    throw new Error(`${e.message}; node-usb saw [${ids.join(' ')}], sysfs has [${sysfs.join(' ')}]`);
  });
  let opened = 0;
  for (const dev of devices) {
    const d = dev.deviceDescriptor;
    const id = `${hex4(d.idVendor)}:${hex4(d.idProduct)}`;
    let strings = '(hub, not opened)';
    if (d.bDeviceClass !== 9) {
      dev.open();
      try {
        strings = [await stringDescriptor(dev, d.iManufacturer), await stringDescriptor(dev, d.iProduct), await stringDescriptor(dev, d.iSerialNumber)]
          .map((s) => JSON.stringify(s)).join(' ');
        opened++;
      } finally {
        dev.close();
      }
    }
    ctx.log(`usb ${dev.busNumber}-${(dev.portNumbers ?? []).join('.') || 'root'} ${id} class ${d.bDeviceClass} ${strings}`);
  }
  return `node-usb saw ${devices.length} devices and read the strings of ${opened}`;
}

async function checkStick(ctx: ScenarioContext): Promise<string> {
  const spec = STICKS.stick0;
  const name = await until(`a block device for USB stick ${spec.serial}`, 60000, () => blockDeviceWithSerial(spec.serial));
  checkRawStick(name, spec.label, spec.sizeMiB);
  ctx.log(`stick0 is /dev/${name}: known contents read back`);
  return `stick0 is /dev/${name} with its known contents`;
}

interface PciDev { bdf: string; id: string; cls: string; driver: string; group: string }

function pciDevices(): PciDev[] {
  const base = '/sys/bus/pci/devices';
  return fs.readdirSync(base).map((bdf) => {
    const d = path.join(base, bdf);
    const link = (p: string) => { try { return path.basename(fs.readlinkSync(path.join(d, p))); } catch { return '-'; } };
    return {
      bdf, id: `${readTrim(`${d}/vendor`).slice(2)}:${readTrim(`${d}/device`).slice(2)}`,
      cls: readTrim(`${d}/class`).slice(2, 6), driver: link('driver'), group: link('iommu_group'),
    };
  });
}

function bind(bdf: string, driverOverride: string): void {
  const d = `/sys/bus/pci/devices/${bdf}`;
  fs.writeFileSync(`${d}/driver_override`, driverOverride === '' ? '\n' : driverOverride);
  if (fs.existsSync(`${d}/driver`)) fs.writeFileSync(`${d}/driver/unbind`, bdf);
  fs.writeFileSync('/sys/bus/pci/drivers_probe', bdf);
}

function checkVfio(ctx: ScenarioContext, devs: PciDev[]): string {
  const nic = devs.find((d) => d.id === '8086:100e');
  if (!nic) throw new Error('no e1000 (8086:100e) in L1');
  bind(nic.bdf, 'vfio-pci');
  const driver = path.basename(fs.readlinkSync(`/sys/bus/pci/devices/${nic.bdf}/driver`));
  if (driver !== 'vfio-pci') throw new Error(`e1000 ${nic.bdf} bound to ${driver}, not vfio-pci`);
  const groupDev = `/dev/vfio/${nic.group}`;
  let detail: string;
  const container = new vfio.VfioContainer();
  try {
    const type1 = container.checkExtension(vfio.VFIO_EXTENSION.TYPE1_IOMMU);
    const group = new vfio.VfioGroup(nic.group);
    try {
      const status = group.status();
      ctx.log(`vfio: API ${vfio.VFIO_API_VERSION}, type1 ${type1}, ${groupDev} flags ${status.flags}`);
      if (type1 !== 1) throw new Error(`VFIO type1 IOMMU ${type1}: not usable`);
      if (!status.viable) throw new Error(`${groupDev} is not viable (flags ${status.flags})`);
      detail = `e1000 ${nic.bdf} bound to vfio-pci, ${groupDev} viable`;
    } finally {
      group.close();
    }
  } finally {
    container.close();
  }
  bind(nic.bdf, '');
  const back = path.basename(fs.readlinkSync(`/sys/bus/pci/devices/${nic.bdf}/driver`));
  ctx.log(`e1000 ${nic.bdf} returned to ${back}`);
  if (back !== 'e1000') throw new Error(`e1000 ${nic.bdf} went back to ${back}, not e1000`);
  return `${detail}, then back to e1000`;
}

scenario('usb-iommu', async (ctx) => {
  const usb = await checkUsb(ctx);
  const stick = await checkStick(ctx);
  const devs = pciDevices();
  for (const d of devs) ctx.log(`pci ${d.bdf} [${d.cls}] ${d.id} driver ${d.driver} iommu group ${d.group}`);
  const ungrouped = devs.filter((d) => d.group === '-');
  if (ungrouped.length) throw new Error(`PCI devices without an IOMMU group: ${ungrouped.map((d) => d.bdf).join(', ')}`);
  const groups = new Set(devs.map((d) => d.group));
  const xhcis = devs.filter((d) => d.cls === '0c03');
  const alone = xhcis.filter((x) => devs.filter((d) => d.group === x.group).length === 1);
  ctx.log(`${groups.size} IOMMU groups; ${alone.length} of ${xhcis.length} xHCI controllers alone in their group`);
  if (xhcis.length < 2 || alone.length < 2) throw new Error('the two xHCI controllers are not each alone in an IOMMU group');
  const assigned = checkVfio(ctx, devs);
  const fat = await checkFatStick(ctx);
  const audio = await checkUsbAudio(ctx);
  const hotplug = await hotplugStick0(ctx);
  const nvme = await checkNvmeSriov(ctx);
  return `${usb}; ${stick}; ${groups.size} IOMMU groups, both xHCIs assignable; ${assigned}; ${fat}; ${audio}; ${hotplug}; ${nvme}`;
});
