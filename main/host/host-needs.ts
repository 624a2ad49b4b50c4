// Whether the host depends on one of its USB devices, as a sentence saying why; passing such
// a device through is refused unless forced. The rules:
//  - storage: any block device below the USB device (a disk, its partitions, or a
//    device-mapper/md device holding one of them) is mounted (/proc/self/mountinfo) or is
//    active swap (/proc/swaps);
//  - input: the device is a boot keyboard or boot mouse bound to usbhid (interface class 3,
//    subclass 1, protocol 1/2) and the host has no other keyboard (mouse) — counted in
//    /proc/bus/input/devices, so a laptop's built-in keyboard counts; when that file cannot be
//    read, only the other USB boot keyboards (mice) count;
//  - hubs: every device behind it would leave with it (hubs are never passed through).
import fs from 'node:fs';
import path from 'node:path';
import { SYSFS_USB_DEVICES, type HostUsbDeviceInfo } from './usb-inventory';

/** Where the rules read the host's state (tests give a fake tree). */
export interface HostNeedsPaths {
  sysfsRoot: string;
  mountinfo: string;
  swaps: string;
  inputDevices: string;
}

export const HOST_NEEDS_PATHS: HostNeedsPaths = {
  sysfsRoot: SYSFS_USB_DEVICES,
  mountinfo: '/proc/self/mountinfo',
  swaps: '/proc/swaps',
  inputDevices: '/proc/bus/input/devices',
};

interface BlockDevice {
  name: string;
  /** "MAJOR:MINOR", or null if sysfs did not say. */
  dev: string | null;
}

function readTrim(file: string): string | null {
  try {
    return fs.readFileSync(file, 'latin1').trim();
  } catch {
    return null;
  }
}

function subdirs(dir: string): string[] {
  try {
    // Real directories only: sysfs's symlinks (subsystem, driver, port) lead back up the tree.
    return fs.readdirSync(dir, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name);
  } catch {
    return [];
  }
}

/** A disk or partition and whatever sits on it (holders: dm-N, mdN), depth-limited. */
function addBlock(dir: string, name: string, out: BlockDevice[], depth: number): void {
  if (depth > 3 || out.some((b) => b.name === name)) return;
  out.push({ name, dev: readTrim(path.join(dir, 'dev')) });
  const holders = path.join(dir, 'holders');
  let names: string[] = [];
  try {
    names = fs.readdirSync(holders);
  } catch {
    // No holders.
  }
  for (const h of names) {
    // holders/dm-0 links to the holder's own sysfs folder; realpath makes "dev" readable in both trees.
    let target: string;
    try {
      target = fs.realpathSync(path.join(holders, h));
    } catch {
      continue;
    }
    addBlock(target, h, out, depth + 1);
  }
}

/** Every block device (sdX, its partitions, their holders) below a USB device's sysfs folder. */
export function blockDevicesOf(sysfsName: string, sysfsRoot = SYSFS_USB_DEVICES): BlockDevice[] {
  const out: BlockDevice[] = [];
  const walk = (dir: string, depth: number) => {
    if (depth > 8) return;
    for (const e of subdirs(dir)) {
      const child = path.join(dir, e);
      if (e === 'block') {
        for (const disk of subdirs(child)) {
          const diskDir = path.join(child, disk);
          addBlock(diskDir, disk, out, 0);
          for (const part of subdirs(diskDir)) if (part.startsWith(disk)) addBlock(path.join(diskDir, part), part, out, 0);
        }
      } else {
        walk(child, depth + 1);
      }
    }
  };
  walk(path.join(sysfsRoot, sysfsName), 0);
  return out;
}

/** Unescapes mountinfo's octal escapes ("\040" for a space). */
function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** What a block device is used for: "/ is mounted from sda2", "sda3 is active swap", or null. */
export function blockUse(blocks: BlockDevice[], paths: Pick<HostNeedsPaths, 'mountinfo' | 'swaps'>): string | null {
  if (blocks.length === 0) return null;
  const byName = new Map(blocks.map((b) => [b.name, b]));
  const byDev = new Map(blocks.filter((b) => b.dev !== null).map((b) => [b.dev as string, b]));
  const mounts: { point: string; block: string }[] = [];
  for (const line of (readTrim(paths.mountinfo) ?? '').split('\n')) {
    // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
    const f = line.split(' ');
    const dash = f.indexOf('-', 6);
    if (f.length < 7 || dash < 0) continue;
    const source = unescapeMount(f[dash + 2] ?? '');
    const hit = byDev.get(f[2]) ?? (source.startsWith('/dev/') ? byName.get(path.basename(source)) : undefined);
    if (hit !== undefined) mounts.push({ point: unescapeMount(f[4]), block: hit.name });
  }
  if (mounts.length > 0) {
    const root = mounts.find((m) => m.point === '/');
    const first = root ?? mounts.sort((a, b) => a.point.length - b.point.length)[0];
    const more = mounts.length > 1 ? ` (and ${mounts.length - 1} more mount${mounts.length > 2 ? 's' : ''})` : '';
    return `${first.point === '/' ? 'the root file system /' : first.point} is mounted from its ${first.block}${more}`;
  }
  for (const line of (readTrim(paths.swaps) ?? '').split('\n').slice(1)) {
    const file = unescapeMount(line.split(/\s+/)[0] ?? '');
    if (file.startsWith('/dev/') && byName.has(path.basename(file))) return `its ${path.basename(file)} is active swap`;
  }
  return null;
}

type InputKind = 'keyboard' | 'mouse';

/** The boot keyboard / mouse interfaces of a device that usbhid drives. */
function bootInputKinds(d: HostUsbDeviceInfo): Set<InputKind> {
  const kinds = new Set<InputKind>();
  for (const i of d.interfaces) {
    if (i.classCode !== 3 || i.subclass !== 1 || i.driver !== 'usbhid') continue;
    if (i.protocol === 1) kinds.add('keyboard');
    if (i.protocol === 2) kinds.add('mouse');
  }
  return kinds;
}

interface InputDevice {
  sysfs: string;
  kinds: Set<InputKind>;
}

/**
 * /proc/bus/input/devices: a keyboard has the kbd handler and LEDs (EV_LED, which power
 * buttons and hotkey devices lack); a mouse has a mouseN handler. Null if unreadable.
 */
export function readInputDevices(file: string): InputDevice[] | null {
  const text = readTrim(file);
  if (text === null) return null;
  const out: InputDevice[] = [];
  for (const block of text.split(/\n\s*\n/)) {
    let sysfs = '';
    let handlers: string[] = [];
    let ev = 0;
    for (const line of block.split('\n')) {
      if (line.startsWith('S: Sysfs=')) sysfs = line.slice(9);
      else if (line.startsWith('H: Handlers=')) handlers = line.slice(12).trim().split(/\s+/);
      else if (line.startsWith('B: EV=')) ev = parseInt(line.slice(6), 16) || 0;
    }
    const kinds = new Set<InputKind>();
    if (handlers.includes('kbd') && (ev & (1 << 0x11)) !== 0) kinds.add('keyboard');
    if (handlers.some((h) => /^mouse\d+$/.test(h))) kinds.add('mouse');
    if (kinds.size > 0) out.push({ sysfs, kinds });
  }
  return out;
}

/** Whether an input device's sysfs path lies below USB device `sysfsName`. */
function inputIsOn(input: InputDevice, sysfsName: string): boolean {
  return input.sysfs.split('/').includes(sysfsName);
}

/** Why the host needs `device`, as a sentence, or null if it may go to a VM. */
export function hostNeeds(device: HostUsbDeviceInfo, all: HostUsbDeviceInfo[], paths: HostNeedsPaths = HOST_NEEDS_PATHS): string | null {
  if (device.isHub) return 'it is a hub: the devices behind it would leave the host too, and hubs are not passed through';
  if (device.interfaces.some((i) => i.classCode === 8) || device.classCode === 8) {
    const use = blockUse(blockDevicesOf(device.sysfsName, paths.sysfsRoot), paths);
    if (use !== null) return `the host uses this disk: ${use}`;
  }
  const kinds = bootInputKinds(device);
  if (kinds.size > 0) {
    const inputs = readInputDevices(paths.inputDevices);
    for (const kind of (['keyboard', 'mouse'] as InputKind[]).filter((k) => kinds.has(k))) {
      const others = inputs !== null
        ? inputs.filter((i) => i.kinds.has(kind) && !inputIsOn(i, device.sysfsName)).length
        : all.filter((d) => d.sysfsName !== device.sysfsName && bootInputKinds(d).has(kind)).length;
      if (others === 0) return `it is the host's only ${kind}: you would lose your ${kind === 'keyboard' ? 'typing' : 'pointer'}`;
    }
  }
  return null;
}
