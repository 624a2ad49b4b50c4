// A fake host with USB controllers and devices on them (sysfs and /proc in a temporary folder),
// for the whole-USB-controller choice (main/host/usb-controller-choice.ts) and the PCI functions
// a VM takes at start (main/vmm/host/start-pci.ts). The PCI side is FakePciSysfs.
import fs from 'node:fs';
import path from 'node:path';
import type { UsbChoiceRoots } from '../../main/host/usb-controller-choice';
import { FakePciSysfs } from './fake-pci-sysfs';

function write(file: string, text: string): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, text);
}

export interface FakeUsbController { address: string; cls: number; group?: number; header?: number; driver?: string }

/**
 * Controller A 0000:00:05.0 (bus 1: stick 1-1 with sda, keyboard 1-2, hub 1-3 with mouse 1-3.1) and
 * controller B 0000:00:04.0 (bus 2: keyboard 2-1, mouse 2-2). Each controller alone in its group
 * unless a test adds mates; /proc files empty until a test writes them.
 */
export class FakeUsbHost extends FakePciSysfs {
  readonly sys = this.roots.sysfsRoot;
  readonly proc = this.roots.procRoot;
  /** Where the USB devices are listed (/sys/bus/usb/devices). */
  readonly usbDevices = path.join(this.sys, 'bus', 'usb', 'devices');

  constructor() {
    super([], 'porthole-usbpath-');
    fs.mkdirSync(path.join(this.sys, 'bus', 'usb', 'drivers', 'usbhid'), { recursive: true });
    fs.mkdirSync(path.join(this.sys, 'bus', 'usb', 'drivers', 'usb-storage'), { recursive: true });
    write(path.join(this.proc, 'swaps'), 'Filename\tType\tSize\tUsed\tPriority\n');
    this.pci({ address: '0000:00:05.0', cls: 0x0c0330, group: 5, driver: 'xhci_hcd' });
    this.pci({ address: '0000:00:04.0', cls: 0x0c0330, group: 4, driver: 'xhci_hcd' });
    const a = path.join(this.pciDir('0000:00:05.0'), 'usb1');
    this.usb(a, '1-1', { busnum: '1', devnum: '2', idVendor: '46f4', idProduct: '0001', bDeviceClass: '00', product: 'Stick' }, [['08', '06', '50', 'usb-storage']]);
    write(path.join(a, '1-1', '1-1:1.0', 'host2', 'target2:0:0', '2:0:0:0', 'block', 'sda', 'dev'), '8:0\n');
    write(path.join(a, '1-1', '1-1:1.0', 'host2', 'target2:0:0', '2:0:0:0', 'block', 'sda', 'sda1', 'dev'), '8:1\n');
    this.usb(a, '1-2', { busnum: '1', devnum: '3', idVendor: '0627', idProduct: '0001', bDeviceClass: '00' }, [['03', '01', '01', 'usbhid']]);
    this.usb(a, '1-3', { busnum: '1', devnum: '4', idVendor: '0409', idProduct: '55aa', bDeviceClass: '09' }, []);
    this.usb(path.join(a, '1-3'), '1-3.1', { busnum: '1', devnum: '5', idVendor: '0627', idProduct: '0001', bDeviceClass: '00' }, [['03', '01', '02', 'usbhid']]);
    const b = path.join(this.pciDir('0000:00:04.0'), 'usb2');
    this.usb(b, '2-1', { busnum: '2', devnum: '2', idVendor: '0627', idProduct: '0001', bDeviceClass: '00' }, [['03', '01', '01', 'usbhid']]);
    this.usb(b, '2-2', { busnum: '2', devnum: '3', idVendor: '0627', idProduct: '0001', bDeviceClass: '00' }, [['03', '01', '02', 'usbhid']]);
  }

  get usbRoots(): UsbChoiceRoots {
    return this.roots;
  }

  pciDir(address: string): string {
    return this.deviceDir(address);
  }

  /** A PCI function with QEMU's xHCI IDs (tests only look at the class). */
  pci(d: FakeUsbController): void {
    this.add({ address: d.address, vendor: 0x1b36, device: 0x000d, cls: d.cls, header: d.header, driver: d.driver, group: d.group });
  }

  /** A USB device folder below `parent`, linked from /sys/bus/usb/devices, with its interfaces [class, subclass, protocol, driver]. */
  usb(parent: string, name: string, attrs: Record<string, string>, interfaces: [string, string, string, string][]): void {
    const dir = path.join(parent, name);
    for (const [k, v] of Object.entries({ ...attrs, speed: '480', bConfigurationValue: '1' })) write(path.join(dir, k), `${v}\n`);
    fs.mkdirSync(this.usbDevices, { recursive: true });
    fs.symlinkSync(dir, path.join(this.usbDevices, name));
    interfaces.forEach(([cls, sub, proto, driver], i) => {
      const itf = `${name}:1.${i}`;
      const idir = path.join(dir, itf);
      for (const [k, v] of Object.entries({ bInterfaceNumber: `0${i}`, bInterfaceClass: cls, bInterfaceSubClass: sub, bInterfaceProtocol: proto })) {
        write(path.join(idir, k), `${v}\n`);
      }
      fs.symlinkSync(path.join(this.sys, 'bus', 'usb', 'drivers', driver), path.join(idir, 'driver'));
      fs.symlinkSync(idir, path.join(this.usbDevices, itf));
    });
  }

  mount(majorMinor: string, point: string, source: string): void {
    fs.appendFileSync(path.join(this.proc, 'self', 'mountinfo'), `22 1 ${majorMinor} / ${point} rw - ext4 ${source} rw\n`);
  }
}
