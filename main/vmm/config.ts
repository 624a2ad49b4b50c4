// The machine configuration: what the CLI, the config file and the manager all produce.
// Parsing and validation live here so every entry point gives the same clear errors.
import { ipv6Bytes, ipv6InPrefix } from '../../native/inet';
import { USB_PASSTHROUGH_PATHS, type UsbPassthroughSetting } from '../host/usb-controller-choice';
import { reenumerationWindowFromJson, type UsbRule, UsbRuleError, usbRulesFromJson } from '../host/usb-rules';

export type SerialBackend =
  | { kind: 'none' }
  | { kind: 'stdio' }
  | { kind: 'pty' }
  | { kind: 'tcp'; host: string; port: number; listen: boolean }
  | { kind: 'unix'; path: string; listen: boolean }
  | { kind: 'file'; path: string }
  | { kind: 'device'; path: string };

export type BootFrom = 'disk' | 'cdrom';

export type BootSource =
  /** `bootFrom`: what SeaBIOS tries first, 'disk' (the default: hard disk, then CD) or 'cdrom' (CD, then hard disk). */
  | { kind: 'firmware'; path?: string; bootFrom?: BootFrom }
  | { kind: 'linux'; kernel: string; initrd?: string; append: string }
  /** A raw real-mode program loaded at `address` and entered at its first byte (test guests). */
  | { kind: 'flat'; path: string; address: number };

/** An emulated USB device on the VM's xHCI controller. */
export type UsbDeviceConfig = (
  /** USB mass storage (Bulk-Only Transport) backed by a raw image file. */
  | { kind: 'storage'; path: string; readOnly: boolean }
  | { kind: 'keyboard' }
  /** An absolute pointer (a tablet), as a desktop VM's mouse. */
  | { kind: 'tablet' }
  /**
   * A CDC-ACM serial port (Linux: /dev/ttyACM0) whose bytes go to a host serial backend, as a
   * COM port's do: `backend` in --serial's words ("pty", "tcp-listen:4555", "unix:PATH", ...).
   * `link` is set by the VM host: it names the opened backend to the machine thread.
   */
  | { kind: 'serial'; backend: string; link?: number }
  /**
   * A host USB device passed through. Attached at run time only (the API, `porthole usb add
   * host:…`): the VM host holds the device as `handle`; configs and --usb do not take it.
   */
  | {
    kind: 'host'; handle: number; hostName: string; product: string; speed: 'low' | 'full' | 'high' | 'super'; vendorId: number; productId: number;
    /**
     * The VM host's usbfs descriptor of the device (it claimed the interfaces on it) and its
     * node: the machine thread then submits and reaps control, bulk and interrupt URBs on a dup
     * of it itself, with no channel hop (devices/usb/passthrough/direct-urbs.ts).
     */
    usbfs?: { fd: number; path: string };
    /**
     * A SuperSpeed device: null if it may go on a USB 2 port, shown at high speed (no
     * isochronous endpoints, no streams), else why not; absent: it may not (unchecked).
     */
    usb2Refusal?: string | null;
  }
) & {
  /**
   * The root-hub port (1..4 USB 3, 5..8 USB 2); absent: the first free port of its speed.
   * Storage on a USB 3 port runs at SuperSpeed; a keyboard, tablet or serial port needs a USB 2 port.
   */
  port?: number;
};

/** Root-hub ports of the xHCI: 1..USB3 are USB 3, the rest USB 2. */
export const USB_PORTS = 8;
export const USB3_PORT_COUNT = 4;

export interface UsbConfig {
  /** 'xhci': a USB 3 controller on PCI (4 USB 3 and 4 USB 2 ports); 'none': no USB. */
  controller: 'none' | 'xhci';
  /** Plugged in at start, in order, each on the first free port of its speed. */
  devices: UsbDeviceConfig[];
  /** Host USB devices this VM takes whenever they are there while it runs (host/usb-rules.ts); absent: none. */
  rules?: UsbRule[];
  /** How long a passed-through device that left may take to come back on the same host port and stay with this VM (ms; default 5000, 0: off). */
  reenumerationWindowMs?: number;
}

export const USB_MAX_DEVICES = 8;

/**
 * A disk on a raw image file (locked while the VM runs): a virtio-blk disk (bus 'virtio', the
 * default), or a SATA disk or CD/DVD-ROM drive on the AHCI controller (bus 'sata').
 */
export interface DiskConfig {
  /** The image (an ISO for a CD-ROM); absent only for an empty CD-ROM drive. */
  path?: string;
  readOnly: boolean;
  /** Where it sits: 'virtio' (virtio-blk, the default) or 'sata' (AHCI). */
  bus?: DiskBus;
  /** 'disk' (the default) or 'cdrom': an ATAPI CD/DVD-ROM drive on SATA, read-only, media changeable. */
  media?: DiskMedia;
  /** What the guest reads as the disk's serial (VIRTIO_BLK_T_GET_ID), up to 20 ASCII characters. */
  serial?: string;
  /** Its statistics group and log name (default disk0, disk1, ...). */
  name?: string;
  /** Request queues (VIRTIO_BLK_F_MQ above 1), 1..MAX_DISK_QUEUES; default 1. */
  queues?: number;
  /** The image's format; absent: qcow2 when the file starts with qcow2's magic, else raw. */
  format?: 'raw' | 'qcow2';
}

export type DiskBus = 'virtio' | 'sata';
export type DiskMedia = 'disk' | 'cdrom';

export const MAX_DISKS = 8;

/** Where a NIC's frames go (on the VM host thread). */
export type NetBackendConfig =
  | { kind: 'none' }
  /** An existing TAP interface, opened through /dev/net/tun (IFF_TAP | IFF_NO_PI). */
  | { kind: 'tap'; ifname: string }
  /** A new TAP (tapN) Porthole makes and adds to an existing bridge; needs CAP_NET_ADMIN. */
  | { kind: 'bridge'; bridge: string }
  /** A Unix stream socket to another VM: frames with a 4-byte big-endian length (QEMU's -netdev stream framing). */
  | { kind: 'socket'; mode: 'listen' | 'connect'; path: string }
  /** One UDP datagram per frame, from local to remote (host:port each). */
  | { kind: 'udp'; local: string; remote: string }
  /**
   * User-mode NAT through libslirp (QEMU's -netdev user): the guest gets 10.0.2.15 by DHCP,
   * gateway 10.0.2.2 (the host's loopback as well), DNS 10.0.2.3. hostfwd: QEMU-style
   * "tcp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT" (or udp:) forwards.
   */
  | { kind: 'user'; hostfwd: string[] };

/** virtio-net (the default), or an NE2000 PCI card (RTL8029) for guests without virtio. */
export const NIC_MODELS = ['virtio', 'ne2k_pci'] as const;
export type NicModel = (typeof NIC_MODELS)[number];

export interface NicConfig {
  model: NicModel;
  /** "52:54:00:12:34:56"; absent: one made from the VM's name and the NIC's index (stable). */
  mac?: string;
  backend: NetBackendConfig;
  /** A pcapng file (LINKTYPE_ETHERNET) of every frame the NIC sends and receives. */
  pcap?: string;
}

export const MAX_NICS = 4;
/** Ports of the AHCI controller: SATA disks and CD-ROM drives together. */
export const MAX_SATA_DEVICES = 6;
export const MAX_DISK_QUEUES = 16;

export interface MachineConfig {
  name: string;
  memoryBytes: number;
  cpus: number;
  boot: BootSource;
  /** Where SeaBIOS is looked for when boot.kind is 'linux' or firmware path is not given. */
  firmwarePath?: string;
  /** COM1..COM4 */
  serial: SerialBackend[];
  /** Debug console on port 0x402 (SeaBIOS log): where its bytes go. */
  debugcon: SerialBackend;
  /** Extra option ROMs handed to firmware as fw_cfg genroms/ files. */
  optionRoms: string[];
  /** QEMU-compatible isa-debug-exit on port 0xf4 (tests and benchmarks only). */
  debugExit: boolean;
  /** The USB controller and its emulated devices (absent: none). */
  usb?: UsbConfig;
  /** virtio-blk disks, PCI 00:08.0 on (absent or empty: none). */
  disks?: DiskConfig[];
  /** Network cards, PCI 00:10.0 on (absent or empty: none). */
  nics?: NicConfig[];
  /** Host PCI functions assigned through VFIO, PCI 00:18.0 on (absent or empty: none). */
  pciAssign?: PciAssignConfig[];
  /**
   * How host USB devices the usb.rules take reach the guest: 'auto' (the default) assigns a
   * device's whole USB controller at start when it qualifies (host/usb-controller-choice.ts), else
   * the emulated xHCI; 'controller' requires the controller path at start; 'emulated' never assigns one.
   */
  usbPassthroughPath?: UsbPassthroughSetting;
}

/** A host PCI function the VM takes (bound to vfio-pci while it runs, given back afterwards). */
export interface PciAssignConfig {
  /** "0000:01:00.0" */
  address: string;
  /** Take it even though the host seems to need it (a boot disk, the display). */
  force?: boolean;
  /** Set by the VM host for the machine thread: the open VFIO device fd. */
  fd?: number;
}

export const MAX_PCI_ASSIGN = 4;
const PCI_ADDRESS = /^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$/;

/** Parses a --pci-assign value: "0000:01:00.0" or "01:00.0" (domain 0), optionally ",force". */
export function parsePciAssign(text: string, where = '--pci-assign'): PciAssignConfig {
  const [addr, ...opts] = text.split(',');
  let address = addr.trim().toLowerCase();
  if (/^[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$/.test(address)) address = `0000:${address}`;
  if (!PCI_ADDRESS.test(address)) throw new ConfigError(`${where}: "${addr}" is not a PCI address like 0000:01:00.0 (see porthole pci)`);
  const c: PciAssignConfig = { address };
  for (const o of opts) {
    if (o === 'force') c.force = true;
    else throw new ConfigError(`${where}: unknown option "${o}" (only "force")`);
  }
  return c;
}

function pciAssignFromJson(v: unknown, at: string): PciAssignConfig {
  if (typeof v === 'string') return parsePciAssign(v, at);
  if (!isRecord(v)) throw new ConfigError(`${at} must be a PCI address string or {"address": "0000:01:00.0", "force": false}`);
  for (const k of Object.keys(v)) if (k !== 'address' && k !== 'force') throw new ConfigError(`${at}: unknown field "${k}"`);
  if (typeof v.address !== 'string') throw new ConfigError(`${at}.address must be a PCI address string like "0000:01:00.0"`);
  const c = parsePciAssign(v.address, `${at}.address`);
  if (v.force !== undefined) {
    if (typeof v.force !== 'boolean') throw new ConfigError(`${at}.force must be true or false`);
    if (v.force) c.force = true;
  }
  return c;
}

/** At most MAX_PCI_ASSIGN functions, each once. */
export function checkPciAssign(list: PciAssignConfig[], where: string): PciAssignConfig[] {
  if (list.length > MAX_PCI_ASSIGN) throw new ConfigError(`${where}: at most ${MAX_PCI_ASSIGN} assigned PCI functions`);
  const seen = new Set<string>();
  for (const c of list) {
    if (seen.has(c.address)) throw new ConfigError(`${where}: ${c.address} is assigned twice`);
    seen.add(c.address);
  }
  return list;
}

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

export const MAX_CPUS = 64;
const MiB = 1024 * 1024;

/** "256" means MiB; "512M", "2G", "1024K" and "1T" also work. */
export function parseMemorySize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*$/.exec(text);
  if (!m) throw new ConfigError(`memory size "${text}" is not a number with an optional K, M, G or T suffix`);
  const n = Number(m[1]);
  const unit = { '': MiB, k: 1024, m: MiB, g: 1024 * MiB, t: 1024 * 1024 * MiB }[m[2].toLowerCase()] as number;
  const bytes = Math.round(n * unit);
  if (bytes < 2 * MiB) throw new ConfigError(`memory size "${text}" is too small: a guest needs at least 2 MiB`);
  if (bytes > 1024 * 1024 * MiB) throw new ConfigError(`memory size "${text}" is larger than 1 TiB`);
  if (bytes % 4096 !== 0) throw new ConfigError(`memory size "${text}" is not a whole number of 4 KiB pages`);
  return bytes;
}

/** Parses a --serial value: stdio, pty, none, file:PATH, unix:PATH, unix-listen:PATH,
 *  tcp:HOST:PORT, tcp-listen:[HOST:]PORT, or a device path like /dev/ttyUSB0. */
export function parseSerialBackend(text: string): SerialBackend {
  const t = text.trim();
  if (t === 'none' || t === 'off') return { kind: 'none' };
  if (t === 'stdio') return { kind: 'stdio' };
  if (t === 'pty') return { kind: 'pty' };
  if (t.startsWith('/dev/')) return { kind: 'device', path: t };
  const colon = t.indexOf(':');
  const scheme = colon < 0 ? t : t.slice(0, colon);
  const rest = colon < 0 ? '' : t.slice(colon + 1);
  switch (scheme) {
    case 'file':
      if (!rest) throw new ConfigError('serial "file:" needs a path');
      return { kind: 'file', path: rest };
    case 'device':
      if (!rest) throw new ConfigError('serial "device:" needs a path');
      return { kind: 'device', path: rest };
    case 'unix':
    case 'unix-listen':
      if (!rest) throw new ConfigError(`serial "${scheme}:" needs a socket path`);
      return { kind: 'unix', path: rest, listen: scheme === 'unix-listen' };
    case 'tcp':
    case 'tcp-listen': {
      const listen = scheme === 'tcp-listen';
      const i = rest.lastIndexOf(':');
      const host = i < 0 ? '127.0.0.1' : rest.slice(0, i) || '127.0.0.1';
      const portText = i < 0 ? rest : rest.slice(i + 1);
      const port = Number(portText);
      if (!/^\d+$/.test(portText) || port < 1 || port > 65535) {
        throw new ConfigError(`serial "${t}": "${portText}" is not a TCP port (1-65535)`);
      }
      if (!listen && i < 0) throw new ConfigError(`serial "${t}": tcp needs HOST:PORT`);
      return { kind: 'tcp', host, port, listen };
    }
    default:
      throw new ConfigError(
        `serial "${t}" is not understood: use stdio, pty, none, file:PATH, unix:PATH, unix-listen:PATH, tcp:HOST:PORT, tcp-listen:PORT or a /dev path`,
      );
  }
}

export function describeSerialBackend(b: SerialBackend): string {
  switch (b.kind) {
    case 'none': case 'stdio': case 'pty': return b.kind;
    case 'tcp': return `${b.listen ? 'tcp-listen' : 'tcp'}:${b.host}:${b.port}`;
    case 'unix': return `${b.listen ? 'unix-listen' : 'unix'}:${b.path}`;
    case 'file': return `file:${b.path}`;
    case 'device': return b.path;
  }
}

export function defaultConfig(): MachineConfig {
  return {
    name: 'vm',
    memoryBytes: 256 * MiB,
    cpus: 1,
    boot: { kind: 'firmware' },
    serial: [{ kind: 'none' }, { kind: 'none' }, { kind: 'none' }, { kind: 'none' }],
    debugcon: { kind: 'none' },
    optionRoms: [],
    debugExit: false,
  };
}

/** Parses a --usb value: keyboard, tablet, storage:PATH, storage-ro:PATH, serial or serial:BACKEND. */
export function parseUsbDevice(text: string): UsbDeviceConfig {
  const t = text.trim();
  if (t === 'keyboard' || t === 'tablet') return { kind: t };
  if (t === 'serial') return { kind: 'serial', backend: 'pty' };
  const m = /^(storage|storage-ro):(.+)$/.exec(t);
  if (m) return { kind: 'storage', path: m[2], readOnly: m[1] === 'storage-ro' };
  const s = /^serial:(.+)$/.exec(t);
  if (s) return { kind: 'serial', backend: usbSerialBackend(s[1], `USB device "${t}"`) };
  throw new ConfigError(`USB device "${t}" is not understood: use keyboard, tablet, storage:PATH, storage-ro:PATH, serial or serial:BACKEND`);
}

/** A USB serial port's backend, checked as --serial checks a COM port's; returns the text. */
function usbSerialBackend(text: string, where: string): string {
  if (text.length > 4096 || text.includes('\0')) throw new ConfigError(`${where}: the serial backend must be at most 4096 characters`);
  try {
    parseSerialBackend(text);
  } catch (e) {
    throw new ConfigError(`${where}: ${(e as Error).message}`);
  }
  return text.trim();
}

/** Parses a --disk value: PATH, then optional ,ro ,serial=TEXT ,name=NAME ,queues=N ,bus=virtio|sata. */
export function parseDisk(text: string): DiskConfig {
  const parts = text.split(',');
  const path = parts[0].trim();
  if (!path) throw new ConfigError(`disk "${text}" needs an image path (PATH[,ro][,bus=sata][,serial=TEXT][,name=NAME])`);
  const disk: DiskConfig = { path, readOnly: false };
  for (const option of parts.slice(1)) {
    const [key, ...rest] = option.split('=');
    const value = rest.join('=');
    if (key === 'ro' && rest.length === 0) disk.readOnly = true;
    else if (key === 'serial' && rest.length > 0) disk.serial = value;
    else if (key === 'name' && rest.length > 0) disk.name = value;
    else if (key === 'queues' && /^\d+$/.test(value)) disk.queues = Number(value);
    else if (key === 'bus' && rest.length > 0) disk.bus = value as DiskBus;
    else if (key === 'format' && rest.length > 0) (disk as { format?: unknown }).format = value;
    else throw new ConfigError(`disk "${text}": option "${option}" is not understood (use ro, bus=virtio|sata, serial=TEXT, name=NAME, queues=N or format=raw|qcow2)`);
  }
  return diskConfigFromJson(disk, `disk "${text}"`);
}

/** Parses a --cdrom value: an ISO path (with optional ,name=NAME), or '' for an empty drive. */
export function parseCdrom(text: string): DiskConfig {
  const parts = text.split(',');
  const path = parts[0].trim();
  const cdrom: DiskConfig = { readOnly: true, bus: 'sata', media: 'cdrom' };
  if (path) cdrom.path = path;
  for (const option of parts.slice(1)) {
    const [key, ...rest] = option.split('=');
    if (key === 'name' && rest.length > 0) cdrom.name = rest.join('=');
    else throw new ConfigError(`cdrom "${text}": option "${option}" is not understood (use name=NAME)`);
  }
  return diskConfigFromJson(cdrom, `cdrom "${text}"`);
}

/** One disk from JSON (a config file's disks entry); errors name the field. */
export function diskConfigFromJson(d: unknown, at: string): DiskConfig {
  if (!isRecord(d)) throw new ConfigError(`${at} must be an object with a "path"`);
  for (const k of Object.keys(d)) if (!['path', 'readOnly', 'serial', 'name', 'queues', 'bus', 'media', 'format'].includes(k)) throw new ConfigError(`${at}: unknown field "${k}"`);
  if (d.media !== undefined && d.media !== 'disk' && d.media !== 'cdrom') throw new ConfigError(`${at}.media must be "disk" or "cdrom"`);
  const media: DiskMedia = d.media ?? 'disk';
  if (d.bus !== undefined && d.bus !== 'virtio' && d.bus !== 'sata') throw new ConfigError(`${at}.bus must be "virtio" or "sata"`);
  const bus: DiskBus = d.bus ?? (media === 'cdrom' ? 'sata' : 'virtio');
  if (media === 'cdrom' && bus !== 'sata') throw new ConfigError(`${at}: a CD-ROM drive sits on the SATA bus ("bus": "sata"), not on ${bus}`);
  if (d.readOnly !== undefined && typeof d.readOnly !== 'boolean') throw new ConfigError(`${at}.readOnly must be true or false`);
  if (media === 'cdrom' && d.readOnly === false) throw new ConfigError(`${at}: a CD-ROM is read-only ("readOnly": false is not possible)`);
  const disk: DiskConfig = { readOnly: media === 'cdrom' || d.readOnly === true };
  if (d.path !== undefined || media === 'disk') {
    const path = str(d.path, `${at}.path`);
    if (path.length > 4096 || path.includes('\0')) throw new ConfigError(`${at}.path must be a file path of at most 4096 characters`);
    disk.path = path;
  }
  if (d.bus !== undefined || bus === 'sata') disk.bus = bus;
  if (media === 'cdrom') disk.media = 'cdrom';
  if (d.serial !== undefined) {
    if (typeof d.serial !== 'string' || !/^[\x20-\x7e]{0,20}$/.test(d.serial)) throw new ConfigError(`${at}.serial must be at most 20 printable ASCII characters`);
    disk.serial = d.serial;
  }
  if (d.name !== undefined) {
    if (typeof d.name !== 'string' || !/^[A-Za-z0-9_.-]{1,32}$/.test(d.name)) throw new ConfigError(`${at}.name must be 1 to 32 letters, digits, "_", "." or "-"`);
    disk.name = d.name;
  }
  if (d.queues !== undefined) {
    if (typeof d.queues !== 'number' || !Number.isInteger(d.queues) || d.queues < 1 || d.queues > MAX_DISK_QUEUES) {
      throw new ConfigError(`${at}.queues must be a whole number from 1 to ${MAX_DISK_QUEUES}`);
    }
    if (bus === 'sata') throw new ConfigError(`${at}.queues: a SATA disk has one queue (queues is for virtio disks)`);
    disk.queues = d.queues;
  }
  if (d.format !== undefined) {
    if (d.format !== 'raw' && d.format !== 'qcow2') throw new ConfigError(`${at}.format must be "raw" or "qcow2" (leave it out to detect qcow2 by its magic)`);
    disk.format = d.format;
  }
  return disk;
}

/** Checks a list of disks (count, unique names); returns it. */
export function checkDisks(disks: DiskConfig[], where: string): DiskConfig[] {
  if (disks.filter((d) => (d.bus ?? 'virtio') === 'virtio').length > MAX_DISKS) throw new ConfigError(`${where}: at most ${MAX_DISKS} disks on virtio`);
  if (disks.filter((d) => d.bus === 'sata').length > MAX_SATA_DEVICES) {
    throw new ConfigError(`${where}: at most ${MAX_SATA_DEVICES} SATA disks and CD-ROM drives (the AHCI controller has ${MAX_SATA_DEVICES} ports)`);
  }
  const names = new Set<string>();
  disks.forEach((d, i) => {
    const name = d.name ?? `disk${i}`;
    if (names.has(name)) throw new ConfigError(`${where}[${i}]: the name "${name}" is taken by another disk`);
    names.add(name);
  });
  return disks;
}

/**
 * One emulated USB device from JSON (a config file's usb.devices entry, an API or control
 * socket call): errors name the field, e.g. `usb.devices[1].path must be a non-empty string`.
 */
export function usbDeviceConfigFromJson(d: unknown, at: string): UsbDeviceConfig {
  if (!isRecord(d)) throw new ConfigError(`${at} must be an object with a "kind"`);
  const allowed = d.kind === 'storage' ? ['kind', 'path', 'readOnly', 'port'] : d.kind === 'serial' ? ['kind', 'backend', 'port'] : ['kind', 'port'];
  for (const k of Object.keys(d)) if (!allowed.includes(k)) throw new ConfigError(`${at}: unknown field "${k}"`);
  let device: UsbDeviceConfig;
  if (d.kind === 'keyboard' || d.kind === 'tablet') device = { kind: d.kind };
  else if (d.kind === 'storage') {
    if (d.readOnly !== undefined && typeof d.readOnly !== 'boolean') throw new ConfigError(`${at}.readOnly must be true or false`);
    const path = str(d.path, `${at}.path`);
    if (path.length > 4096 || path.includes('\0')) throw new ConfigError(`${at}.path must be a file path of at most 4096 characters`);
    device = { kind: 'storage', path, readOnly: d.readOnly === true };
  } else if (d.kind === 'serial') {
    device = { kind: 'serial', backend: d.backend === undefined ? 'pty' : usbSerialBackend(str(d.backend, `${at}.backend`), `${at}.backend`) };
  } else {
    throw new ConfigError(`${at}.kind must be "storage", "keyboard", "tablet" or "serial"`);
  }
  if (d.port !== undefined) {
    const port = d.port;
    if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > USB_PORTS) {
      throw new ConfigError(`${at}.port must be a whole number from 1 to ${USB_PORTS}`);
    }
    if (device.kind !== 'storage' && port <= USB3_PORT_COUNT) {
      throw new ConfigError(`${at}.port: a ${device.kind} needs a USB 2 port (${USB3_PORT_COUNT + 1} to ${USB_PORTS}); ${port} is a USB 3 port`);
    }
    device.port = port;
  }
  return device;
}

function usbConfigFromJson(v: unknown, where: string): UsbConfig {
  if (!isRecord(v)) throw new ConfigError(`${where} must be an object like {"controller": "xhci", "devices": [...]}`);
  for (const k of Object.keys(v)) {
    if (!['controller', 'devices', 'rules', 'reenumerationWindowMs'].includes(k)) throw new ConfigError(`${where}: unknown field "${k}"`);
  }
  const devicesIn = v.devices ?? [];
  if (!Array.isArray(devicesIn)) throw new ConfigError(`${where}.devices must be a list`);
  if (devicesIn.length > USB_MAX_DEVICES) throw new ConfigError(`${where}.devices: at most ${USB_MAX_DEVICES} devices (the controller has 8 ports)`);
  const devices = devicesIn.map((d, i): UsbDeviceConfig => usbDeviceConfigFromJson(d, `${where}.devices[${i}]`));
  const taken = new Map<number, number>();
  devices.forEach((d, i) => {
    if (d.port === undefined) return;
    const other = taken.get(d.port);
    if (other !== undefined) throw new ConfigError(`${where}.devices[${i}].port: port ${d.port} is taken by devices[${other}]`);
    taken.set(d.port, i);
  });
  const controller = v.controller ?? 'xhci';
  if (controller !== 'xhci' && controller !== 'none') throw new ConfigError(`${where}.controller must be "xhci" or "none"`);
  if (controller === 'none' && devices.length > 0) throw new ConfigError(`${where}: devices need a controller ("controller": "xhci")`);
  const usb: UsbConfig = { controller, devices };
  try {
    if (v.rules !== undefined) usb.rules = usbRulesFromJson(v.rules, `${where}.rules`);
    if (v.reenumerationWindowMs !== undefined) usb.reenumerationWindowMs = reenumerationWindowFromJson(v.reenumerationWindowMs, `${where}.reenumerationWindowMs`);
  } catch (e) {
    throw e instanceof UsbRuleError ? new ConfigError(e.message) : e;
  }
  if (controller === 'none' && (usb.rules?.length ?? 0) > 0) throw new ConfigError(`${where}: rules need a controller ("controller": "xhci")`);
  return usb;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function str(v: unknown, where: string): string {
  if (typeof v !== 'string' || v.length === 0) throw new ConfigError(`${where} must be a non-empty string`);
  return v;
}

/** The JSON config file format (version 1). Later issues add fields; unknown fields are errors. */
export function machineConfigFromJson(input: unknown, source = 'config'): MachineConfig {
  if (!isRecord(input)) throw new ConfigError(`${source}: the top level must be a JSON object`);
  const allowed = new Set(['version', 'name', 'memory', 'cpus', 'boot', 'firmware', 'serial', 'debugcon', 'optionRoms', 'debugExit', 'usb', 'disks', 'nics', 'pciAssign', 'usbPassthroughPath']);
  for (const k of Object.keys(input)) {
    if (!allowed.has(k)) throw new ConfigError(`${source}: unknown field "${k}"`);
  }
  if (input.version !== undefined && input.version !== 1) {
    throw new ConfigError(`${source}: version ${String(input.version)} is not supported (this Porthole reads version 1)`);
  }
  const c = defaultConfig();
  if (input.name !== undefined) c.name = str(input.name, `${source}: name`);
  if (input.memory !== undefined) {
    const m = input.memory;
    if (typeof m === 'number') c.memoryBytes = parseMemorySize(String(m));
    else if (typeof m === 'string') c.memoryBytes = parseMemorySize(m);
    else throw new ConfigError(`${source}: memory must be a number of MiB or a string like "512M"`);
  }
  if (input.cpus !== undefined) c.cpus = parseCpus(input.cpus, `${source}: cpus`);
  if (input.firmware !== undefined) c.firmwarePath = str(input.firmware, `${source}: firmware`);
  if (input.boot !== undefined) {
    const b = input.boot;
    if (!isRecord(b)) throw new ConfigError(`${source}: boot must be an object`);
    if (b.kind === 'firmware') {
      c.boot = { kind: 'firmware', path: b.path === undefined ? undefined : str(b.path, `${source}: boot.path`) };
      if (b.bootFrom !== undefined) {
        if (b.bootFrom !== 'disk' && b.bootFrom !== 'cdrom') throw new ConfigError(`${source}: boot.bootFrom must be "disk" or "cdrom"`);
        c.boot.bootFrom = b.bootFrom;
      }
    }
    else if (b.kind === 'linux') {
      c.boot = {
        kind: 'linux',
        kernel: str(b.kernel, `${source}: boot.kernel`),
        initrd: b.initrd === undefined ? undefined : str(b.initrd, `${source}: boot.initrd`),
        append: b.append === undefined ? '' : typeof b.append === 'string' ? b.append : (() => { throw new ConfigError(`${source}: boot.append must be a string`); })(),
      };
    } else throw new ConfigError(`${source}: boot.kind must be "firmware" or "linux"`);
  }
  if (input.serial !== undefined) {
    if (!Array.isArray(input.serial) || input.serial.length > 4) throw new ConfigError(`${source}: serial must be a list of up to 4 ports`);
    input.serial.forEach((s, i) => {
      c.serial[i] = parseSerialBackend(str(s, `${source}: serial[${i}]`));
    });
  }
  if (input.debugcon !== undefined) c.debugcon = parseSerialBackend(str(input.debugcon, `${source}: debugcon`));
  if (input.optionRoms !== undefined) {
    if (!Array.isArray(input.optionRoms)) throw new ConfigError(`${source}: optionRoms must be a list of paths`);
    c.optionRoms = input.optionRoms.map((p, i) => str(p, `${source}: optionRoms[${i}]`));
  }
  if (input.usb !== undefined) c.usb = usbConfigFromJson(input.usb, `${source}: usb`);
  if (input.disks !== undefined) {
    if (!Array.isArray(input.disks)) throw new ConfigError(`${source}: disks must be a list like [{"path": "disk.img"}]`);
    c.disks = checkDisks(input.disks.map((d, i) => diskConfigFromJson(d, `${source}: disks[${i}]`)), `${source}: disks`);
  }
  if (input.nics !== undefined) {
    if (!Array.isArray(input.nics)) throw new ConfigError(`${source}: nics must be a list like [{"model": "virtio", "backend": {"kind": "tap", "ifname": "tap0"}}]`);
    c.nics = checkNics(input.nics.map((n, i) => nicConfigFromJson(n, `${source}: nics[${i}]`)), `${source}: nics`);
  }
  if (input.pciAssign !== undefined) {
    if (!Array.isArray(input.pciAssign)) throw new ConfigError(`${source}: pciAssign must be a list like ["0000:01:00.0"]`);
    c.pciAssign = checkPciAssign(input.pciAssign.map((v, i) => pciAssignFromJson(v, `${source}: pciAssign[${i}]`)), `${source}: pciAssign`);
  }
  if (input.usbPassthroughPath !== undefined) {
    const v = input.usbPassthroughPath;
    if (typeof v !== 'string' || !(USB_PASSTHROUGH_PATHS as readonly string[]).includes(v)) {
      throw new ConfigError(`${source}: usbPassthroughPath must be "auto", "controller" or "emulated"`);
    }
    c.usbPassthroughPath = v as UsbPassthroughSetting;
  }
  if (input.debugExit !== undefined) {
    if (typeof input.debugExit !== 'boolean') throw new ConfigError(`${source}: debugExit must be true or false`);
    c.debugExit = input.debugExit;
  }
  return c;
}

/** Parses "52:54:00:12:34:56" into six bytes; throws ConfigError naming `where`. */
export function parseMac(text: string, where: string): Uint8Array {
  const m = /^([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2})$/i.exec(text);
  if (!m) throw new ConfigError(`${where}: "${text}" is not a MAC address like 52:54:00:12:34:56`);
  const bytes = Uint8Array.from(m.slice(1, 7).map((h) => parseInt(h, 16)));
  if (bytes[0] & 1) throw new ConfigError(`${where}: ${text} is a multicast address (its first byte is odd); a NIC needs a unicast one`);
  return bytes;
}

/** The MAC of NIC `index` without one configured: 52:54:00 (QEMU's prefix) and a hash of the VM's name, so it stays put. */
export function defaultMac(vmName: string, index: number): Uint8Array {
  let h = 0x811c9dc5;
  for (const byte of new TextEncoder().encode(`${vmName}\0${index}`)) h = Math.imul(h ^ byte, 0x01000193) >>> 0;
  return Uint8Array.of(0x52, 0x54, 0x00, (h >>> 16) & 0xff, (h >>> 8) & 0xff, ((h & 0xfc) | index) & 0xff);
}

export function formatMac(mac: Uint8Array): string {
  return [...mac].map((b) => b.toString(16).padStart(2, '0')).join(':');
}

const NIC_HELP = '[MODEL|model=MODEL][,mac=52:54:00:XX:XX:XX][,tap=IFNAME|bridge=BRIDGE|socket=listen:PATH|socket=connect:PATH|udp=LHOST:LPORT/RHOST:RPORT|user[,hostfwd=tcp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT]...][,pcap=FILE]';

/** The user backend's network (QEMU's defaults). */
export const USER_NET = {
  network: '10.0.2.0', netmask: '255.255.255.0', host: '10.0.2.2', dhcpStart: '10.0.2.15', dns: '10.0.2.3',
  // QEMU's defaults: the guest takes a SLAAC address in fec0::/64 from slirp's router advertisements.
  ipv6: { prefix: 'fec0::', prefixLength: 64, host: 'fec0::2', dns: 'fec0::3' },
} as const;

/** The default name of disk `index` in statistics and logs. */
export function diskName(disk: DiskConfig, index: number): string {
  return disk.name ?? `disk${index}`;
}

export interface HostForward {
  protocol: 'tcp' | 'udp';
  /** Empty: every address of the host (0.0.0.0), as in QEMU. */
  hostAddr: string;
  hostPort: number;
  guestAddr: string;
  guestPort: number;
}

const HOSTFWD_FORM = '"tcp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT" (or udp:; IPv6 addresses in brackets), e.g. "tcp:127.0.0.1:8022-:22" or "tcp:[::1]:8022-[fec0::15]:22"';

function isIpv4(text: string): boolean {
  const parts = text.split('.');
  return parts.length === 4 && parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255);
}

function isIpv6(text: string): boolean {
  return ipv6Bytes(text) !== undefined;
}

/** Parses a hostfwd rule; a bad one is a ConfigError saying what is wrong with it. */
export function parseHostForward(text: string, where: string): HostForward {
  const bad = (why: string) => new ConfigError(`${where}: hostfwd "${text}" ${why} (the form is ${HOSTFWD_FORM})`);
  let rest = text;
  let protocol: 'tcp' | 'udp' = 'tcp';
  const m = /^(tcp|udp)?:/.exec(rest);
  if (m) {
    protocol = (m[1] ?? 'tcp') as 'tcp' | 'udp';
    rest = rest.slice(m[0].length);
  } else if (/^[a-z]+:/i.test(rest)) {
    throw bad(`has protocol "${rest.slice(0, rest.indexOf(':'))}"; only tcp and udp are forwarded`);
  }
  const dash = rest.indexOf('-');
  if (dash < 0) throw bad('has no "-" between the host side and the guest side');
  const side = (part: string, name: string): [string, number] => {
    let addr: string;
    let portText: string;
    if (part.startsWith('[')) {
      const close = part.indexOf(']');
      if (close < 0 || part[close + 1] !== ':') throw bad(`has ${name} side "${part}"; an IPv6 address goes as [ADDR]:PORT`);
      addr = part.slice(1, close);
      portText = part.slice(close + 2);
      if (!isIpv6(addr)) throw bad(`has ${name} address "${addr}", which is not an IPv6 address`);
    } else {
      const colon = part.lastIndexOf(':');
      if (colon < 0) throw bad(`has no port on the ${name} side ("${part}" needs ADDR:PORT or :PORT)`);
      addr = part.slice(0, colon);
      portText = part.slice(colon + 1);
      if (addr.includes(':')) throw bad(`has ${name} address "${addr}"; an IPv6 address goes in brackets, as [${addr}]:PORT`);
      if (addr && !isIpv4(addr)) throw bad(`has ${name} address "${addr}", which is not an IPv4 address`);
    }
    if (!/^\d{1,5}$/.test(portText) || Number(portText) < 1 || Number(portText) > 65535) throw bad(`has ${name} port "${portText}"; a port is a number from 1 to 65535`);
    return [addr, Number(portText)];
  };
  const [hostAddr, hostPort] = side(rest.slice(0, dash), 'host');
  const [guestGiven, guestPort] = side(rest.slice(dash + 1), 'guest');
  const hostV6 = hostAddr.includes(':');
  if (hostV6 && !guestGiven) throw bad(`forwards IPv6 but names no guest address; give the guest's, e.g. [${USER_NET.ipv6.prefix}15] (a SLAAC guest's address is its ${USER_NET.ipv6.prefix}/64 address from its MAC)`);
  const guestAddr = guestGiven || USER_NET.dhcpStart;
  const guestV6 = guestAddr.includes(':');
  if (hostAddr && hostV6 !== guestV6) throw bad(`mixes ${hostV6 ? 'IPv6' : 'IPv4'} on the host side with ${guestV6 ? 'IPv6' : 'IPv4'} on the guest side; both sides take the same kind`);
  if (guestV6) {
    if (!ipv6InPrefix(guestAddr, USER_NET.ipv6.prefix, USER_NET.ipv6.prefixLength)) throw bad(`sends to ${guestAddr}, which is outside the guest network ${USER_NET.ipv6.prefix}/${USER_NET.ipv6.prefixLength}`);
  } else if (!guestAddr.startsWith('10.0.2.')) throw bad(`sends to ${guestAddr}, which is outside the guest network 10.0.2.0/24`);
  return { protocol, hostAddr, hostPort, guestAddr, guestPort };
}

/**
 * Parses a --nic value, e.g. "virtio,tap=tap0", "tap=tap0,model=ne2k_pci" or
 * "virtio,mac=52:54:00:00:00:01,socket=listen:/tmp/net.sock,pcap=net.pcapng". The model is the
 * first word or model=MODEL (default virtio).
 */
export function parseNic(text: string): NicConfig {
  const parts = text.split(',');
  let first = parts[0].includes('=') ? undefined : parts.shift();
  // "--nic user,..." is a virtio card on the user backend (QEMU's -nic user).
  if (first === 'user') {
    parts.unshift('user');
    first = undefined;
  }
  const nic: Record<string, unknown> = { model: first ?? 'virtio', backend: { kind: 'none' } };
  let backends = 0;
  let modelOption: string | undefined;
  const hostfwd: string[] = [];
  for (const option of parts) {
    const eq = option.indexOf('=');
    const key = eq < 0 ? option : option.slice(0, eq);
    const value = eq < 0 ? '' : option.slice(eq + 1);
    if (key === 'model') {
      if ((first !== undefined && first !== value) || (modelOption !== undefined && modelOption !== value)) throw new ConfigError(`nic "${text}": two models given (${first ?? modelOption} and ${value})`);
      modelOption = value;
      nic.model = value;
    } else if (key === 'mac') nic.mac = value;
    else if (key === 'pcap' && value) nic.pcap = value;
    else if (key === 'tap') { nic.backend = { kind: 'tap', ifname: value }; backends++; }
    else if (key === 'bridge') { nic.backend = { kind: 'bridge', bridge: value }; backends++; }
    else if (key === 'socket') {
      const colon = value.indexOf(':');
      nic.backend = { kind: 'socket', mode: value.slice(0, colon < 0 ? value.length : colon), path: colon < 0 ? '' : value.slice(colon + 1) };
      backends++;
    } else if (key === 'udp') {
      const slash = value.indexOf('/');
      nic.backend = { kind: 'udp', local: slash < 0 ? value : value.slice(0, slash), remote: slash < 0 ? '' : value.slice(slash + 1) };
      backends++;
    } else if (option === 'user') {
      nic.backend = { kind: 'user', hostfwd };
      backends++;
    } else if (key === 'hostfwd') hostfwd.push(value);
    else throw new ConfigError(`nic "${text}": option "${option}" is not understood (${NIC_HELP})`);
  }
  if (backends > 1) throw new ConfigError(`nic "${text}": one backend per NIC (tap=, bridge=, socket=, udp= or user)`);
  if (hostfwd.length > 0 && (nic.backend as NetBackendConfig).kind !== 'user') throw new ConfigError(`nic "${text}": hostfwd= goes with the user backend (e.g. "user,hostfwd=tcp::8022-:22")`);
  return nicConfigFromJson(nic, `nic "${text}"`);
}

/** "HOST:PORT" with a port from 1 to 65535 (an IPv6 host in brackets); throws ConfigError. */
function checkHostPort(v: unknown, where: string): string {
  const text = str(v, where);
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:\s]+):(\d{1,5})$/.exec(text);
  if (!m || Number(m[2]) < 1 || Number(m[2]) > 65535) throw new ConfigError(`${where}: "${text}" is not HOST:PORT (e.g. 127.0.0.1:5000)`);
  return text;
}

function netBackendFromJson(b: unknown, where: string): NetBackendConfig {
  if (!isRecord(b)) throw new ConfigError(`${where} must be an object like {"kind": "tap", "ifname": "tap0"}`);
  const only = (keys: string[]) => {
    for (const k of Object.keys(b)) if (!keys.includes(k)) throw new ConfigError(`${where}: unknown field "${k}" for kind "${String(b.kind)}"`);
  };
  switch (b.kind) {
    case 'none':
      only(['kind']);
      return { kind: 'none' };
    case 'tap': {
      only(['kind', 'ifname']);
      const ifname = str(b.ifname, `${where}.ifname`);
      // IFNAMSIZ is 16 with the terminating zero; '/' and whitespace are refused by the kernel.
      if (ifname.length > 15 || !/^[A-Za-z0-9_.-]+$/.test(ifname)) throw new ConfigError(`${where}.ifname: "${ifname}" is not an interface name (up to 15 letters, digits, "_", "-", ".")`);
      return { kind: 'tap', ifname };
    }
    case 'bridge': {
      only(['kind', 'bridge']);
      const bridge = str(b.bridge, `${where}.bridge`);
      if (bridge.length > 15 || !/^[A-Za-z0-9_.-]+$/.test(bridge)) throw new ConfigError(`${where}.bridge: "${bridge}" is not an interface name (up to 15 letters, digits, "_", "-", ".")`);
      return { kind: 'bridge', bridge };
    }
    case 'socket':
      only(['kind', 'mode', 'path']);
      if (b.mode !== 'listen' && b.mode !== 'connect') throw new ConfigError(`${where}.mode must be "listen" or "connect" (socket=listen:PATH or socket=connect:PATH)`);
      return { kind: 'socket', mode: b.mode, path: str(b.path, `${where}.path`) };
    case 'udp':
      only(['kind', 'local', 'remote']);
      return { kind: 'udp', local: checkHostPort(b.local, `${where}.local`), remote: checkHostPort(b.remote, `${where}.remote`) };
    case 'user': {
      only(['kind', 'hostfwd']);
      if (b.hostfwd !== undefined && !(Array.isArray(b.hostfwd) && b.hostfwd.every((h) => typeof h === 'string'))) {
        throw new ConfigError(`${where}.hostfwd must be a list of strings like ["tcp:127.0.0.1:8022-:22"]`);
      }
      const hostfwd = (b.hostfwd ?? []) as string[];
      const taken = new Map<string, number>();
      hostfwd.forEach((h, i) => {
        const f = parseHostForward(h, `${where}.hostfwd[${i}]`);
        const key = `${f.protocol}:${f.hostAddr || (f.guestAddr.includes(':') ? '::' : '0.0.0.0')}:${f.hostPort}`;
        if (taken.has(key)) throw new ConfigError(`${where}.hostfwd[${i}]: host ${f.protocol} port ${f.hostPort} is forwarded by hostfwd[${taken.get(key)}] already`);
        taken.set(key, i);
      });
      return { kind: 'user', hostfwd: [...hostfwd] };
    }
    default:
      throw new ConfigError(`${where}.kind must be "tap", "bridge", "socket", "udp", "user" or "none"`);
  }
}

/** One NIC from JSON (a config file's nics entry); errors name the field. */
export function nicConfigFromJson(n: unknown, at: string): NicConfig {
  if (!isRecord(n)) throw new ConfigError(`${at} must be an object like {"model": "virtio", "backend": {"kind": "tap", "ifname": "tap0"}}`);
  for (const k of Object.keys(n)) if (!['model', 'mac', 'backend', 'pcap'].includes(k)) throw new ConfigError(`${at}: unknown field "${k}"`);
  const model = n.model ?? 'virtio';
  if (!NIC_MODELS.includes(model as NicModel)) throw new ConfigError(`${at}.model: "${String(model)}" is not a NIC model (${NIC_MODELS.join(', ')})`);
  const nic: NicConfig = { model: model as NicModel, backend: n.backend === undefined ? { kind: 'none' } : netBackendFromJson(n.backend, `${at}.backend`) };
  if (n.mac !== undefined) {
    parseMac(str(n.mac, `${at}.mac`), `${at}.mac`);
    nic.mac = (n.mac as string).toLowerCase();
  }
  if (n.pcap !== undefined) nic.pcap = str(n.pcap, `${at}.pcap`);
  return nic;
}

/** Checks a list of NICs (count, distinct MACs, one pcap file each); returns it. */
export function checkNics(nics: NicConfig[], where: string): NicConfig[] {
  if (nics.length > MAX_NICS) throw new ConfigError(`${where}: at most ${MAX_NICS} NICs`);
  const macs = new Map<string, number>();
  const pcaps = new Map<string, number>();
  nics.forEach((n, i) => {
    if (n.mac !== undefined) {
      if (macs.has(n.mac)) throw new ConfigError(`${where}[${i}]: MAC ${n.mac} is taken by NIC ${macs.get(n.mac)}`);
      macs.set(n.mac, i);
    }
    if (n.pcap !== undefined) {
      if (pcaps.has(n.pcap)) throw new ConfigError(`${where}[${i}]: the pcap file ${n.pcap} is written by NIC ${pcaps.get(n.pcap)} already`);
      pcaps.set(n.pcap, i);
    }
  });
  return nics;
}

export function parseCpus(v: unknown, where = 'cpus'): number {
  const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > MAX_CPUS) {
    throw new ConfigError(`${where} must be a whole number from 1 to ${MAX_CPUS}`);
  }
  return n;
}
