// The host's USB devices, from sysfs (/sys/bus/usb/devices): IDs, strings, bus and port
// path, speed, class and the kernel driver of each interface. sysfs needs no permission on
// the device nodes, so the list is complete even where /dev/bus/usb is not ours; node-usb is
// used to open a device (host/node-usb-handle.ts), and a refusal there becomes a sentence
// with the udev rule that fixes it (permissionAdvice).
import fs from 'node:fs';
import path from 'node:path';

export const SYSFS_USB_DEVICES = '/sys/bus/usb/devices';

export type HostUsbSpeed = 'low' | 'full' | 'high' | 'super' | 'super-plus';

export interface HostUsbInterface {
  /** sysfs name, e.g. "1-1.4:1.0" (bus-ports:config.interface). */
  sysfsName: string;
  number: number;
  alternate: number;
  classCode: number;
  subclass: number;
  protocol: number;
  /** The kernel driver bound now ("usb-storage", "usbhid", "usbfs" while a program holds it), or null. */
  driver: string | null;
}

export interface HostUsbDeviceInfo {
  /** sysfs name: bus-port path ("1-1", "3-2.4"); stable while the device stays in that port. */
  sysfsName: string;
  busNumber: number;
  deviceAddress: number;
  /** Port numbers from the root hub down. */
  portPath: number[];
  vendorId: number;
  productId: number;
  manufacturer: string | null;
  product: string | null;
  serial: string | null;
  speed: HostUsbSpeed | null;
  /** bDeviceClass (0: per interface). */
  classCode: number;
  /** bConfigurationValue (0: unconfigured). */
  configuration: number;
  /** The active configuration's interfaces. */
  interfaces: HostUsbInterface[];
  /** A hub (class 9); hubs are not passed through. */
  isHub: boolean;
  /** /dev/bus/usb/BBB/DDD */
  devicePath: string;
  /** Whether this user may open the device node (read and write); false: see permissionAdvice. */
  accessible: boolean;
  /**
   * The sysfs name a device in the same socket has on the other bus of its controller (an xHCI's
   * USB 2 and USB 3 root hubs are two buses; sysfs's port "peer" link), or null.
   */
  peerName: string | null;
}

function readText(dir: string, name: string): string | null {
  try {
    return fs.readFileSync(path.join(dir, name), 'latin1').replace(/\n$/, '');
  } catch {
    return null;
  }
}

function readHex(dir: string, name: string): number | null {
  const t = readText(dir, name);
  if (t === null || !/^[0-9a-fA-F]{1,8}$/.test(t.trim())) return null;
  return parseInt(t.trim(), 16);
}

function readDec(dir: string, name: string): number | null {
  const t = readText(dir, name);
  if (t === null || !/^\d{1,10}$/.test(t.trim())) return null;
  return parseInt(t.trim(), 10);
}

/** sysfs's "speed" (Mbit/s) as a USB speed name. */
export function speedOfMbps(text: string | null): HostUsbSpeed | null {
  switch (text?.trim()) {
    case '1.5': return 'low';
    case '12': return 'full';
    case '480': return 'high';
    case '5000': return 'super';
    case '10000': case '20000': return 'super-plus';
    default: return null;
  }
}

/** A device's sysfs name: "N-P[.P...]" (root hubs "usbN" are left out). */
const DEVICE_NAME = /^(\d+)-(\d+(?:\.\d+)*)$/;

function driverOf(dir: string): string | null {
  try {
    return path.basename(fs.readlinkSync(path.join(dir, 'driver')));
  } catch {
    return null;
  }
}

function readInterfaces(root: string, name: string, configuration: number): HostUsbInterface[] {
  const prefix = `${name}:${configuration}.`;
  let entries: string[];
  try {
    entries = fs.readdirSync(root);
  } catch {
    return [];
  }
  const out: HostUsbInterface[] = [];
  for (const e of entries) {
    if (!e.startsWith(prefix) || !/^\d+$/.test(e.slice(prefix.length))) continue;
    const dir = path.join(root, e);
    out.push({
      sysfsName: e,
      number: readHex(dir, 'bInterfaceNumber') ?? parseInt(e.slice(prefix.length), 10),
      alternate: readDec(dir, 'bAlternateSetting') ?? 0,
      classCode: readHex(dir, 'bInterfaceClass') ?? 0,
      subclass: readHex(dir, 'bInterfaceSubClass') ?? 0,
      protocol: readHex(dir, 'bInterfaceProtocol') ?? 0,
      driver: driverOf(dir),
    });
  }
  return out.sort((a, b) => a.number - b.number);
}

/** One device's sysfs entry, or null if `name` is not a USB device there (or it left meanwhile). */
export function readSysfsUsbDevice(name: string, root = SYSFS_USB_DEVICES): HostUsbDeviceInfo | null {
  const m = DEVICE_NAME.exec(name);
  if (m === null) return null;
  const dir = path.join(root, name);
  const busNumber = readDec(dir, 'busnum');
  const deviceAddress = readDec(dir, 'devnum');
  const vendorId = readHex(dir, 'idVendor');
  const productId = readHex(dir, 'idProduct');
  if (busNumber === null || deviceAddress === null || vendorId === null || productId === null) return null;
  const classCode = readHex(dir, 'bDeviceClass') ?? 0;
  const configuration = readDec(dir, 'bConfigurationValue') ?? 0;
  return {
    sysfsName: name,
    busNumber,
    deviceAddress,
    portPath: m[2].split('.').map((p) => parseInt(p, 10)),
    vendorId,
    productId,
    manufacturer: readText(dir, 'manufacturer'),
    product: readText(dir, 'product'),
    serial: readText(dir, 'serial'),
    speed: speedOfMbps(readText(dir, 'speed')),
    classCode,
    configuration,
    interfaces: configuration > 0 ? readInterfaces(root, name, configuration) : [],
    isHub: classCode === 9,
    devicePath: nodePath(busNumber, deviceAddress),
    accessible: canOpen(nodePath(busNumber, deviceAddress)),
    peerName: peerPortName(name, root),
  };
}

/**
 * The name a device on the peer of `name`'s port would have: the port's directory is
 * usbB/B-0:1.0/usbB-portP for a root port, else PARENT/PARENT:1.0/PARENT-portP, and its
 * "peer" link names the companion port ("usb2-port1" → "2-1", "2-1-port4" → "2-1.4").
 */
export function peerPortName(name: string, root = SYSFS_USB_DEVICES): string | null {
  const m = DEVICE_NAME.exec(name);
  if (m === null) return null;
  const ports = m[2].split('.');
  const last = ports[ports.length - 1];
  const parent = ports.length === 1 ? `usb${m[1]}` : `${m[1]}-${ports.slice(0, -1).join('.')}`;
  const hubInterface = ports.length === 1 ? `${m[1]}-0:1.0` : `${parent}:1.0`;
  let target: string;
  try {
    target = path.basename(fs.readlinkSync(path.join(root, parent, hubInterface, `${parent}-port${last}`, 'peer')));
  } catch {
    return null;
  }
  const rootPort = /^usb(\d+)-port(\d+)$/.exec(target);
  if (rootPort) return `${rootPort[1]}-${rootPort[2]}`;
  const hubPort = /^(\d+-\d+(?:\.\d+)*)-port(\d+)$/.exec(target);
  return hubPort ? `${hubPort[1]}.${hubPort[2]}` : null;
}

function nodePath(bus: number, address: number): string {
  return `/dev/bus/usb/${String(bus).padStart(3, '0')}/${String(address).padStart(3, '0')}`;
}

function canOpen(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.R_OK | fs.constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** Every USB device in sysfs (root hubs left out), by bus and port path. */
export function listSysfsUsbDevices(root = SYSFS_USB_DEVICES): HostUsbDeviceInfo[] {
  let names: string[];
  try {
    names = fs.readdirSync(root);
  } catch {
    return []; // no USB bus at all
  }
  const out: HostUsbDeviceInfo[] = [];
  for (const n of names) {
    const d = readSysfsUsbDevice(n, root);
    if (d !== null) out.push(d);
  }
  return out.sort((a, b) => a.busNumber - b.busNumber || comparePorts(a.portPath, b.portPath));
}

function comparePorts(a: number[], b: number[]): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

export function hex4(n: number): string {
  return n.toString(16).padStart(4, '0');
}

/**
 * Finds the device a user named: its sysfs name ("1-1.4"), "BUS:ADDR" ("1:3", decimal) or
 * "VID:PID" ("46f4:0001", hex, which must match exactly one device). Throws a sentence.
 */
export function findHostUsbDevice(selector: string, devices: HostUsbDeviceInfo[]): HostUsbDeviceInfo {
  const s = selector.trim();
  const byName = devices.find((d) => d.sysfsName === s);
  if (byName) return byName;
  let m = /^(\d{1,3}):(\d{1,3})$/.exec(s);
  if (m) {
    const d = devices.find((x) => x.busNumber === Number(m?.[1]) && x.deviceAddress === Number(m?.[2]));
    if (d) return d;
  }
  m = /^([0-9a-fA-F]{4}):([0-9a-fA-F]{4})$/.exec(s);
  if (m) {
    const vid = parseInt(m[1], 16);
    const pid = parseInt(m[2], 16);
    const all = devices.filter((d) => d.vendorId === vid && d.productId === pid);
    if (all.length === 1) return all[0];
    if (all.length > 1) {
      throw new Error(`${all.length} host USB devices are ${s} (${all.map((d) => d.sysfsName).join(', ')}); name one by its port path`);
    }
  }
  if (!/^[\w.:-]{1,40}$/.test(s)) throw new Error('a host USB device is named by its port path ("1-1.4"), BUS:ADDR ("1:3") or VID:PID ("46f4:0001")');
  return throwNotFound(s, devices);
}

function throwNotFound(s: string, devices: HostUsbDeviceInfo[]): never {
  const known = devices.filter((d) => !d.isHub).map((d) => `${d.sysfsName} (${hex4(d.vendorId)}:${hex4(d.productId)})`);
  throw new Error(`there is no host USB device ${s}` + (known.length > 0 ? `; there are ${known.join(', ')}` : '; this host has no USB devices'));
}

/** The udev rule that lets the logged-in user open a device. */
export function udevRule(vendorId: number, productId: number): string {
  return `SUBSYSTEM=="usb", ATTR{idVendor}=="${hex4(vendorId)}", ATTR{idProduct}=="${hex4(productId)}", TAG+="uaccess"`;
}

/**
 * Why a device could not be opened, as a sentence; a permission problem names the fix.
 * `error` is what node-usb (libusb) or the file system threw.
 */
export function openErrorSentence(device: Pick<HostUsbDeviceInfo, 'vendorId' | 'productId' | 'sysfsName' | 'devicePath'>, error: unknown): string {
  const e = error as { errno?: number; code?: string; message?: string };
  const text = `${e.code ?? ''} ${e.message ?? ''}`;
  const ids = `${hex4(device.vendorId)}:${hex4(device.productId)}`;
  // libusb: LIBUSB_ERROR_ACCESS is -3; the file system: EACCES / EPERM.
  if (e.errno === -3 || /EACCES|EPERM|LIBUSB_ERROR_ACCESS/.test(text)) {
    return `Permission denied opening host USB device ${device.sysfsName} (${ids}, ${device.devicePath}). ` +
      `To let your user pass it through, install the udev rule ` +
      `${udevRule(device.vendorId, device.productId)} in /etc/udev/rules.d/70-porthole.rules, ` +
      'then run "sudo udevadm control --reload && sudo udevadm trigger" and plug the device in again.';
  }
  if (e.errno === -4 || /NO_DEVICE|ENODEV|ENOENT/.test(text)) return `Host USB device ${device.sysfsName} (${ids}) is gone (unplugged?).`;
  if (e.errno === -6 || /BUSY|EBUSY/.test(text)) return `Host USB device ${device.sysfsName} (${ids}) is busy: another program holds it.`;
  return `Host USB device ${device.sysfsName} (${ids}) could not be opened: ${(e.message ?? String(error)).split('\n')[0]}.`;
}

/** One line per device, for `porthole usb host`. */
export function formatHostUsbDevices(devices: HostUsbDeviceInfo[], holders: Map<string, string> = new Map()): string {
  if (devices.length === 0) return 'no host USB devices\n';
  return devices.map((d) => {
    const drivers = [...new Set(d.interfaces.map((i) => i.driver ?? '-'))].join(',') || '-';
    const name = [d.manufacturer, d.product].filter((x) => x !== null && x !== '').join(' ') || '(no name)';
    const held = holders.get(d.sysfsName);
    return `${d.sysfsName.padEnd(8)} ${d.busNumber}:${d.deviceAddress}`.padEnd(16) +
      ` ${hex4(d.vendorId)}:${hex4(d.productId)} ${(d.speed ?? '?').padEnd(5)} class ${d.classCode.toString(16).padStart(2, '0')}` +
      ` drivers ${drivers}  ${name}${d.serial ? ` [${d.serial}]` : ''}${d.isHub ? ' (hub)' : ''}${d.accessible ? '' : ' (no permission)'}${held ? ` (in VM ${held})` : ''}`;
  }).join('\n') + '\n';
}
