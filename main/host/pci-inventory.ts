// The host's PCI devices, from sysfs (/sys/bus/pci/devices): IDs, class, driver, IOMMU group
// and whether that group is viable for VFIO (every member on vfio-pci, pci-stub, no driver, or
// a bridge, as the kernel's own check), SR-IOV capacity, and whether the host needs the device
// (boot display, a disk with a mounted file system, the NIC of the default route): such a device
// is not taken without being forced (pci-binding.ts). Every function takes the sysfs root ("/sys")
// and /proc root, so tests run against a fake tree.
import fs from 'node:fs';
import path from 'node:path';
import type { PciDeviceSummary } from '../api/contract';

export const SYSFS_ROOT = '/sys';
export const PROC_ROOT = '/proc';

export interface HostRoots {
  /** "/sys" by default. */
  sysfsRoot?: string;
  /** "/proc" by default. */
  procRoot?: string;
}

export interface PciSriov {
  totalVfs: number;
  numVfs: number;
  /** The VFs' addresses, virtfn0 first. */
  virtualFunctions: string[];
}

export interface PciGroupInfo {
  id: number;
  /** Every device in the group (this one included). */
  members: string[];
  /** As the kernel sees it now: every member on vfio-pci, pci-stub, no driver, or a bridge. */
  viable: boolean;
  /** Members other than this device, and not bridges, that a host driver holds ("0000:00:1f.3 (snd_hda_intel)"). */
  heldByHost: string[];
}

export interface PciDeviceInfo {
  /** Domain:bus:device.function, "0000:01:00.0". */
  address: string;
  vendorId: number;
  deviceId: number;
  subsystemVendorId: number | null;
  subsystemId: number | null;
  /** 24-bit class code: base class, subclass, programming interface. */
  classCode: number;
  /** The class in words ("NVMe controller", "USB controller (xHCI)"). */
  className: string;
  /** The driver bound now, or null. */
  driver: string | null;
  /** driver_override, or null when none is set. */
  driverOverride: string | null;
  /** A bridge (header type 1 or 2, class 06): never assigned, and no obstacle to its group. */
  isBridge: boolean;
  iommuGroup: PciGroupInfo | null;
  bootVga: boolean;
  /** A physical function's SR-IOV capacity, or null. */
  sriov: PciSriov | null;
  /** A virtual function's physical function, or null. */
  physicalFunction: string | null;
  /** Why the host needs this device (it is refused unless forced), or null. */
  hostNeeds: string | null;
  /** Whether Porthole can take it for a VM now (group viable once this device is on vfio-pci, not needed by the host). */
  assignable: boolean;
  /** Why not, in a sentence; null when assignable. */
  whyNot: string | null;
  /** What `whyNot` is about (PCI assignment, issue 11 item 6); null when assignable. */
  whyNotKind: PciWhyNotKind | null;
}

export type PciWhyNotKind = 'bridge' | 'no-iommu' | 'group-not-viable' | 'host-needs';

const ADDRESS = /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/;

export function isPciAddress(s: string): boolean {
  return ADDRESS.test(s);
}

/** "01:00.0" → "0000:01:00.0"; a full address as is (lower case); anything else throws. */
export function normalizePciAddress(s: string): string {
  const t = s.trim().toLowerCase();
  const full = /^[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/.test(t) ? `0000:${t}` : t;
  if (!isPciAddress(full)) throw new Error(`"${s}" is not a PCI address (like 0000:01:00.0 or 01:00.0)`);
  return full;
}

export const pciDevicesDir = (sysfsRoot = SYSFS_ROOT) => path.join(sysfsRoot, 'bus', 'pci', 'devices');
export const pciDriversDir = (sysfsRoot = SYSFS_ROOT) => path.join(sysfsRoot, 'bus', 'pci', 'drivers');

function readText(file: string): string | null {
  try {
    return fs.readFileSync(file, 'latin1').trim();
  } catch {
    return null;
  }
}

function readHex(file: string): number | null {
  const t = readText(file);
  if (t === null || !/^(0x)?[0-9a-fA-F]{1,8}$/.test(t)) return null;
  return parseInt(t.replace(/^0x/, ''), 16);
}

function readInt(file: string): number | null {
  const t = readText(file);
  return t !== null && /^\d{1,9}$/.test(t) ? Number(t) : null;
}

function linkName(file: string): string | null {
  try {
    return path.basename(fs.readlinkSync(file));
  } catch {
    return null;
  }
}

const CLASS_NAMES: Record<number, string> = {
  0x0100: 'SCSI controller', 0x0101: 'IDE controller', 0x0104: 'RAID controller', 0x0106: 'SATA controller',
  0x0108: 'NVMe controller', 0x0180: 'storage controller', 0x0200: 'Ethernet controller', 0x0280: 'network controller',
  0x0300: 'VGA controller', 0x0302: '3D controller', 0x0380: 'display controller', 0x0401: 'audio device',
  0x0403: 'audio device (HDA)', 0x0600: 'host bridge', 0x0601: 'ISA bridge', 0x0604: 'PCI bridge', 0x0680: 'bridge',
  0x0700: 'serial controller', 0x0780: 'communication controller', 0x0880: 'system peripheral',
  0x0c03: 'USB controller', 0x0c05: 'SMBus controller', 0x0d80: 'wireless controller', 0x1080: 'encryption controller',
};
const USB_INTERFACES: Record<number, string> = { 0x00: 'UHCI', 0x10: 'OHCI', 0x20: 'EHCI', 0x30: 'xHCI' };

export function pciClassName(classCode: number): string {
  const sub = classCode >>> 8;
  const base = CLASS_NAMES[sub] ?? CLASS_NAMES[(sub & 0xff00) | 0x80] ?? `class ${sub.toString(16).padStart(4, '0')}`;
  if (sub === 0x0c03 && USB_INTERFACES[classCode & 0xff] !== undefined) return `${base} (${USB_INTERFACES[classCode & 0xff]})`;
  return base;
}

/** The drivers a viable group's members may have besides vfio-pci (the kernel's allow list). */
const VFIO_FRIENDLY = new Set(['vfio-pci', 'pci-stub']);

interface RawDevice {
  address: string; vendorId: number; deviceId: number; subsystemVendorId: number | null; subsystemId: number | null;
  classCode: number; driver: string | null; driverOverride: string | null; isBridge: boolean; group: number | null;
  bootVga: boolean; sriov: PciSriov | null; physicalFunction: string | null;
}

function readRaw(address: string, sysfsRoot: string): RawDevice | null {
  const dir = path.join(pciDevicesDir(sysfsRoot), address);
  const vendorId = readHex(path.join(dir, 'vendor'));
  const deviceId = readHex(path.join(dir, 'device'));
  const classCode = readHex(path.join(dir, 'class'));
  if (vendorId === null || deviceId === null || classCode === null) return null;
  const override = readText(path.join(dir, 'driver_override'));
  const group = linkName(path.join(dir, 'iommu_group'));
  const total = readInt(path.join(dir, 'sriov_totalvfs'));
  let sriov: PciSriov | null = null;
  if (total !== null && total > 0) {
    const vfs: string[] = [];
    for (let i = 0; i < total; i++) {
      const vf = linkName(path.join(dir, `virtfn${i}`));
      if (vf !== null) vfs.push(vf);
    }
    sriov = { totalVfs: total, numVfs: readInt(path.join(dir, 'sriov_numvfs')) ?? 0, virtualFunctions: vfs };
  }
  // A bridge by header type (config space byte 14), as the kernel's VFIO viability check;
  // by class (PCI or CardBus bridge) where the config file cannot be read.
  let headerType = -1;
  try {
    const fd = fs.openSync(path.join(dir, 'config'), 'r');
    try {
      const b = Buffer.alloc(1);
      if (fs.readSync(fd, b, 0, 1, 14) === 1) headerType = b[0] & 0x7f;
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    // No config file: judge by class alone.
  }
  return {
    address, vendorId, deviceId,
    subsystemVendorId: readHex(path.join(dir, 'subsystem_vendor')), subsystemId: readHex(path.join(dir, 'subsystem_device')),
    classCode, driver: linkName(path.join(dir, 'driver')),
    driverOverride: override === null || override === '' || override === '(null)' ? null : override,
    isBridge: headerType >= 0 ? headerType !== 0 : (classCode >>> 8) === 0x0604 || (classCode >>> 8) === 0x0607,
    group: group !== null && /^\d+$/.test(group) ? Number(group) : null,
    bootVga: readText(path.join(dir, 'boot_vga')) === '1', sriov,
    physicalFunction: linkName(path.join(dir, 'physfn')),
  };
}

function groupMembers(group: number, sysfsRoot: string): string[] {
  try {
    return fs.readdirSync(path.join(sysfsRoot, 'kernel', 'iommu_groups', String(group), 'devices')).filter(isPciAddress).sort();
  } catch {
    return [];
  }
}

function mountedDevices(procRoot: string): Set<string> {
  // mountinfo's third field is the major:minor of the mounted device.
  const out = new Set<string>();
  const text = readText(path.join(procRoot, 'self', 'mountinfo')) ?? '';
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    if (f.length > 2 && /^\d+:\d+$/.test(f[2])) out.add(f[2]);
  }
  return out;
}

function swapDevices(procRoot: string): Set<string> {
  const text = readText(path.join(procRoot, 'swaps')) ?? '';
  return new Set(text.split('\n').slice(1).map((l) => l.split(/\s+/)[0]).filter((n) => n.startsWith('/dev/')).map((n) => path.basename(n)));
}

/** Whether a sysfs entry (a block device, a net interface) sits below this PCI device. */
function below(entry: string, address: string): boolean {
  try {
    return fs.realpathSync(entry).split(path.sep).includes(address);
  } catch {
    return false;
  }
}

function blockNeeds(address: string, sysfsRoot: string, procRoot: string): string | null {
  let disks: string[];
  try {
    disks = fs.readdirSync(path.join(sysfsRoot, 'block'));
  } catch {
    return null;
  }
  const mounted = mountedDevices(procRoot);
  const swaps = swapDevices(procRoot);
  for (const disk of disks) {
    const dir = path.join(sysfsRoot, 'block', disk);
    // An NVMe multipath disk sits under its subsystem; its paths (multipath/) sit under the controllers.
    let paths: string[] = [];
    try { paths = fs.readdirSync(path.join(dir, 'multipath')); } catch { /* not multipath */ }
    if (!below(dir, address) && !paths.some((p) => below(path.join(dir, 'multipath', p), address))) continue;
    const parts = [disk, ...fs.readdirSync(dir).filter((n) => n.startsWith(disk) && fs.existsSync(path.join(dir, n, 'dev')))];
    for (const p of parts) {
      const pdir = p === disk ? dir : path.join(dir, p);
      const dev = readText(path.join(pdir, 'dev'));
      if (dev !== null && mounted.has(dev)) return `it holds /dev/${p}, which has a mounted file system`;
      if (swaps.has(p)) return `it holds /dev/${p}, which is in use as swap`;
      let holders: string[] = [];
      try { holders = fs.readdirSync(path.join(pdir, 'holders')); } catch { /* none */ }
      if (holders.length > 0) return `it holds /dev/${p}, which ${holders.join(', ')} is built on`;
    }
  }
  return null;
}

function defaultRouteInterfaces(procRoot: string): Set<string> {
  const out = new Set<string>();
  const v4 = (readText(path.join(procRoot, 'net', 'route')) ?? '').split('\n').slice(1);
  for (const l of v4) {
    const f = l.trim().split(/\s+/);
    if (f.length > 7 && f[1] === '00000000' && f[7] === '00000000') out.add(f[0]);
  }
  const v6 = (readText(path.join(procRoot, 'net', 'ipv6_route')) ?? '').split('\n');
  for (const l of v6) {
    const f = l.trim().split(/\s+/);
    if (f.length >= 10 && /^0{32}$/.test(f[0]) && f[1] === '00' && f[9] !== 'lo') out.add(f[9]);
  }
  return out;
}

function netNeeds(address: string, sysfsRoot: string, procRoot: string): string | null {
  const net = path.join(sysfsRoot, 'class', 'net');
  // A bridge, bond or VLAN carries the route on its lower devices (lower_<name> links).
  const check = (iface: string, via: string | null, depth: number): string | null => {
    if (below(path.join(net, iface), address)) return `it is ${iface}, which carries the default route${via ? ` under ${via}` : ''}`;
    if (depth > 4) return null;
    let lowers: string[] = [];
    try { lowers = fs.readdirSync(path.join(net, iface)).filter((n) => n.startsWith('lower_')).map((n) => n.slice(6)); } catch { /* none */ }
    for (const l of lowers) {
      const found = check(l, via ?? iface, depth + 1);
      if (found) return found;
    }
    return null;
  };
  for (const iface of defaultRouteInterfaces(procRoot)) {
    const found = check(iface, null, 0);
    if (found) return found;
  }
  return null;
}

/** Why the host needs this device, or null. */
export function hostNeedsPciDevice(address: string, roots: HostRoots = {}): string | null {
  const sysfsRoot = roots.sysfsRoot ?? SYSFS_ROOT;
  const procRoot = roots.procRoot ?? PROC_ROOT;
  if (readText(path.join(pciDevicesDir(sysfsRoot), address, 'boot_vga')) === '1') return 'it is the boot display (boot_vga)';
  return blockNeeds(address, sysfsRoot, procRoot) ?? netNeeds(address, sysfsRoot, procRoot);
}

function describe(raw: RawDevice, all: Map<string, RawDevice>, roots: Required<HostRoots>): PciDeviceInfo {
  let iommuGroup: PciGroupInfo | null = null;
  if (raw.group !== null) {
    const members = groupMembers(raw.group, roots.sysfsRoot);
    const others = members.map((m) => all.get(m) ?? readRaw(m, roots.sysfsRoot)).filter((m): m is RawDevice => m !== null);
    const hostHeld = (m: RawDevice) => !m.isBridge && m.driver !== null && !VFIO_FRIENDLY.has(m.driver);
    iommuGroup = {
      id: raw.group, members, viable: others.every((m) => !hostHeld(m)),
      heldByHost: others.filter((m) => m.address !== raw.address && hostHeld(m)).map((m) => `${m.address} (${m.driver})`),
    };
  }
  const hostNeeds = raw.isBridge ? null : hostNeedsPciDevice(raw.address, roots);
  let whyNot: string | null = null;
  let whyNotKind: PciWhyNotKind | null = null;
  if (raw.isBridge) {
    whyNot = 'it is a bridge; Porthole assigns the devices behind it, not the bridge';
    whyNotKind = 'bridge';
  } else if (iommuGroup === null) {
    whyNot = 'it is in no IOMMU group: the IOMMU is off (boot with intel_iommu=on or amd_iommu=on) or VFIO is unavailable';
    whyNotKind = 'no-iommu';
  } else if (iommuGroup.heldByHost.length > 0) {
    whyNot = `its IOMMU group ${iommuGroup.id} is not viable: it also holds ${iommuGroup.heldByHost.join(', ')}, which would have to leave the host too`;
    whyNotKind = 'group-not-viable';
  } else if (hostNeeds !== null) {
    whyNot = `the host needs it: ${hostNeeds}`;
    whyNotKind = 'host-needs';
  }
  return {
    address: raw.address, vendorId: raw.vendorId, deviceId: raw.deviceId, subsystemVendorId: raw.subsystemVendorId,
    subsystemId: raw.subsystemId, classCode: raw.classCode, className: pciClassName(raw.classCode), driver: raw.driver,
    driverOverride: raw.driverOverride, isBridge: raw.isBridge, iommuGroup, bootVga: raw.bootVga, sriov: raw.sriov,
    physicalFunction: raw.physicalFunction, hostNeeds, assignable: whyNot === null, whyNot, whyNotKind,
  };
}

/** Every PCI device, in address order. */
export function listPciDevices(roots: HostRoots = {}): PciDeviceInfo[] {
  const r = { sysfsRoot: roots.sysfsRoot ?? SYSFS_ROOT, procRoot: roots.procRoot ?? PROC_ROOT };
  let names: string[];
  try {
    names = fs.readdirSync(pciDevicesDir(r.sysfsRoot)).filter(isPciAddress).sort();
  } catch {
    return [];
  }
  const raws = new Map<string, RawDevice>();
  for (const n of names) {
    const raw = readRaw(n, r.sysfsRoot);
    if (raw !== null) raws.set(n, raw);
  }
  return [...raws.values()].map((raw) => describe(raw, raws, r));
}

/** One device by address, or null when the host has none there. */
export function readPciDevice(address: string, roots: HostRoots = {}): PciDeviceInfo | null {
  const r = { sysfsRoot: roots.sysfsRoot ?? SYSFS_ROOT, procRoot: roots.procRoot ?? PROC_ROOT };
  const raw = readRaw(address, r.sysfsRoot);
  return raw === null ? null : describe(raw, new Map([[address, raw]]), r);
}

/** The API's view of an inventory entry (listPciDevices, porthole pci --json). */
export function pciSummary(d: PciDeviceInfo, heldBy: string | null): PciDeviceSummary {
  return {
    address: d.address, vendorId: d.vendorId, deviceId: d.deviceId, classCode: d.classCode, className: d.className,
    driver: d.driver, isBridge: d.isBridge,
    iommuGroup: d.iommuGroup === null ? null : { id: d.iommuGroup.id, members: d.iommuGroup.members, viable: d.iommuGroup.viable },
    sriov: d.sriov, physicalFunction: d.physicalFunction, hostNeeds: d.hostNeeds, assignable: d.assignable, whyNot: d.whyNot, whyNotKind: d.whyNotKind, heldBy,
  };
}

const hex4 = (n: number) => n.toString(16).padStart(4, '0');

/** porthole pci: one line per device. */
export function formatPciDevices(devices: PciDeviceSummary[]): string {
  if (devices.length === 0) return 'no PCI devices (no /sys/bus/pci)\n';
  return devices.map((d) => {
    const group = d.iommuGroup === null ? 'no IOMMU group' : `group ${d.iommuGroup.id} ${d.iommuGroup.viable ? 'viable' : 'not viable'}`;
    const extra = [
      d.sriov ? `SR-IOV ${d.sriov.numVfs}/${d.sriov.totalVfs} VFs` : '',
      d.physicalFunction ? `VF of ${d.physicalFunction}` : '',
      d.heldBy ? `in VM ${d.heldBy}` : '',
    ].filter((x) => x !== '');
    const verdict = d.assignable ? 'assignable' : `not assignable: ${d.whyNot}`;
    return `${d.address}  ${hex4(d.vendorId)}:${hex4(d.deviceId)}  ${d.className.padEnd(24)} driver ${(d.driver ?? '-').padEnd(13)} ${group.padEnd(20)} ` +
      `${extra.length ? `[${extra.join(', ')}] ` : ''}${verdict}`;
  }).join('\n') + '\n';
}
