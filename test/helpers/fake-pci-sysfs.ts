// A fake sysfs and /proc tree of PCI devices in a temporary folder, for the PCI inventory, PCI
// assignment (issue 11 item 6) and the whole-USB-controller choice (fake-usb-host.ts builds on
// it) without a real IOMMU: devices with IDs, class, driver link, header type, boot_vga and
// IOMMU group, and optionally the interface of the default route.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { HostRoots } from '../../main/host/pci-inventory';

export interface FakePciDevice {
  address: string;
  vendor: number;
  device: number;
  cls: number;
  driver?: string;
  /** Absent: the device is in no IOMMU group (the IOMMU is off). */
  group?: number;
  /** Config space byte 14 (1: a PCI bridge). */
  header?: number;
  bootVga?: boolean;
  /** A network interface below the device that carries the default route. */
  defaultRouteIface?: string;
}

/** A PCI function's sysfs attributes as the inventory reads them: IDs, class, driver_override, config header, boot_vga. */
export function writePciAttributes(dir: string, d: { vendor: number; device: number; cls: number; header?: number; bootVga?: boolean }): void {
  const hex = (n: number, w: number) => `0x${n.toString(16).padStart(w, '0')}\n`;
  fs.writeFileSync(path.join(dir, 'vendor'), hex(d.vendor, 4));
  fs.writeFileSync(path.join(dir, 'device'), hex(d.device, 4));
  fs.writeFileSync(path.join(dir, 'class'), hex(d.cls, 6));
  fs.writeFileSync(path.join(dir, 'driver_override'), '(null)\n');
  const config = Buffer.alloc(64);
  config[14] = d.header ?? 0;
  fs.writeFileSync(path.join(dir, 'config'), config);
  if (d.bootVga !== undefined) fs.writeFileSync(path.join(dir, 'boot_vga'), d.bootVga ? '1\n' : '0\n');
}

export class FakePciSysfs {
  readonly top: string;
  readonly roots: Required<HostRoots>;

  /** `prefix`: the temporary folder's name start. */
  constructor(devices: FakePciDevice[], prefix = 'porthole-fake-pci-') {
    this.top = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
    this.roots = { sysfsRoot: path.join(this.top, 'sys'), procRoot: path.join(this.top, 'proc') };
    const { sysfsRoot: sys, procRoot: proc } = this.roots;
    fs.mkdirSync(path.join(sys, 'bus', 'pci', 'devices'), { recursive: true });
    fs.mkdirSync(path.join(sys, 'class', 'net'), { recursive: true });
    fs.mkdirSync(path.join(proc, 'self'), { recursive: true });
    fs.mkdirSync(path.join(proc, 'net'), { recursive: true });
    fs.writeFileSync(path.join(proc, 'self', 'mountinfo'), '');
    fs.writeFileSync(path.join(proc, 'net', 'route'), 'Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n');
    for (const d of devices) this.add(d);
  }

  /** Where a device's sysfs folder is: /sys/devices/pci0000:00/ADDR, as on a real host. */
  deviceDir(address: string): string {
    return path.join(this.roots.sysfsRoot, 'devices', 'pci0000:00', address);
  }

  /** Adds a device (linked from /sys/bus/pci/devices). */
  add(d: FakePciDevice): void {
    const { sysfsRoot: sys, procRoot: proc } = this.roots;
    const dir = this.deviceDir(d.address);
    fs.mkdirSync(dir, { recursive: true });
    fs.symlinkSync(dir, path.join(sys, 'bus', 'pci', 'devices', d.address));
    writePciAttributes(dir, d);
    if (d.driver !== undefined) {
      const drv = path.join(sys, 'bus', 'pci', 'drivers', d.driver);
      fs.mkdirSync(drv, { recursive: true });
      fs.symlinkSync(drv, path.join(dir, 'driver'));
    }
    if (d.group !== undefined) this.group(d.address, d.group);
    if (d.defaultRouteIface !== undefined) {
      const netDir = path.join(dir, 'net', d.defaultRouteIface);
      fs.mkdirSync(netDir, { recursive: true });
      fs.symlinkSync(netDir, path.join(sys, 'class', 'net', d.defaultRouteIface));
      fs.appendFileSync(path.join(proc, 'net', 'route'), `${d.defaultRouteIface}\t00000000\t0102000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n`);
    }
  }

  /** Puts device `address` (added already) into IOMMU group `group`. */
  group(address: string, group: number): void {
    const groupDir = path.join(this.roots.sysfsRoot, 'kernel', 'iommu_groups', String(group), 'devices');
    fs.mkdirSync(groupDir, { recursive: true });
    fs.symlinkSync(this.deviceDir(address), path.join(groupDir, address));
    fs.symlinkSync(path.dirname(groupDir), path.join(this.deviceDir(address), 'iommu_group'));
  }

  cleanup(): void {
    fs.rmSync(this.top, { recursive: true, force: true });
  }
}

/**
 * A small PC: a boot display the host needs, a NIC that carries the default route, a free NIC,
 * an xHCI sharing its group with an audio device a host driver holds, and an NVMe behind a bridge.
 */
export function samplePciHost(): FakePciSysfs {
  return new FakePciSysfs([
    { address: '0000:00:01.0', vendor: 0x1234, device: 0x1111, cls: 0x030000, driver: 'bochs-drm', group: 1, bootVga: true },
    { address: '0000:00:02.0', vendor: 0x8086, device: 0x100e, cls: 0x020000, driver: 'e1000', group: 2 },
    { address: '0000:00:03.0', vendor: 0x8086, device: 0x10d3, cls: 0x020000, driver: 'e1000e', group: 3, defaultRouteIface: 'enp0s3' },
    { address: '0000:00:04.0', vendor: 0x1b36, device: 0x000d, cls: 0x0c0330, driver: 'xhci_hcd', group: 4 },
    { address: '0000:00:04.1', vendor: 0x8086, device: 0x293e, cls: 0x040300, driver: 'snd_hda_intel', group: 4 },
    { address: '0000:00:1c.0', vendor: 0x8086, device: 0x2448, cls: 0x060400, driver: 'pcieport', group: 5, header: 1 },
    { address: '0000:01:00.0', vendor: 0x1b36, device: 0x0010, cls: 0x010802, driver: 'nvme', group: 5 },
  ]);
}
