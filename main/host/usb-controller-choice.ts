// Which way a host USB device reaches a VM: its whole USB controller assigned through VFIO
// ("controller": the guest's own xhci driver runs the real hardware, no emulation on the path), or
// the device alone through Porthole's emulated xHCI ("emulated"). The controller path is chosen
// only when the controller is alone in its IOMMU group (bridges aside), the host does not need the
// controller itself (pci-inventory.ts), and no other device on its buses is one the host needs
// (host-needs.ts: a disk holding a mounted file system, the only keyboard or mouse). Either way
// the choice comes with one sentence saying why.
import fs from 'node:fs';
import path from 'node:path';
import { hostNeeds, type HostNeedsPaths } from './host-needs';
import { isPciAddress, readPciDevice, type HostRoots, PROC_ROOT, SYSFS_ROOT } from './pci-inventory';
import { listSysfsUsbDevices, readSysfsUsbDevice, type HostUsbDeviceInfo } from './usb-inventory';
import type { UsbPathChoiceInfo } from '../api/contract';

export type UsbPassthroughPath = 'controller' | 'emulated';
/** The per-VM setting: 'auto' lets chooseUsbPath decide. */
export const USB_PASSTHROUGH_PATHS = ['auto', 'controller', 'emulated'] as const;
export type UsbPassthroughSetting = (typeof USB_PASSTHROUGH_PATHS)[number];

export interface UsbPathChoice {
  path: UsbPassthroughPath;
  /** The device's USB controller ("0000:00:14.0"), or null when it has no PCI controller. */
  controller: string | null;
  /** One sentence: why this path. */
  reason: string;
  /** The other USB devices on the controller's buses (they go with it on the controller path). */
  alsoOnController: string[];
}

/** The sysfs and /proc roots (tests give fake trees); input devices list optional. */
export interface UsbChoiceRoots extends HostRoots {
  /** /proc/bus/input/devices by default (under procRoot). */
  inputDevices?: string;
}

/** The PCI function above a USB device in sysfs (its host controller), or null. */
export function usbControllerOf(sysfsName: string, sysfsRoot = SYSFS_ROOT): string | null {
  let real: string;
  try {
    real = fs.realpathSync(path.join(sysfsRoot, 'bus', 'usb', 'devices', sysfsName));
  } catch {
    return null;
  }
  // .../pci0000:00/0000:00:1c.0/0000:02:00.0/usb3/3-1: the nearest PCI function above usbN.
  const parts = real.split(path.sep);
  const bus = parts.findIndex((p) => /^usb\d+$/.test(p));
  if (bus <= 0 || !isPciAddress(parts[bus - 1])) return null;
  return parts[bus - 1];
}

function needsPaths(roots: Required<HostRoots>, inputDevices: string | undefined): HostNeedsPaths {
  return {
    sysfsRoot: path.join(roots.sysfsRoot, 'bus', 'usb', 'devices'),
    mountinfo: path.join(roots.procRoot, 'self', 'mountinfo'),
    swaps: path.join(roots.procRoot, 'swaps'),
    inputDevices: inputDevices ?? path.join(roots.procRoot, 'bus', 'input', 'devices'),
  };
}

function label(d: HostUsbDeviceInfo): string {
  const name = [d.manufacturer, d.product].filter((x) => x).join(' ');
  return name ? `${d.sysfsName} (${name})` : d.sysfsName;
}

/** Decides the path for host USB device `sysfsName` ("3-1"), with its reason. */
export function chooseUsbPath(sysfsName: string, roots: UsbChoiceRoots = {}): UsbPathChoice {
  const r = { sysfsRoot: roots.sysfsRoot ?? SYSFS_ROOT, procRoot: roots.procRoot ?? PROC_ROOT };
  const paths = needsPaths(r, roots.inputDevices);
  const emulated = (reason: string, controller: string | null = null, also: string[] = []): UsbPathChoice =>
    ({ path: 'emulated', controller, reason, alsoOnController: also });
  const device = readSysfsUsbDevice(sysfsName, paths.sysfsRoot);
  if (device === null) return emulated(`there is no host USB device ${sysfsName} in sysfs, so it has no controller to assign`);
  const controller = usbControllerOf(sysfsName, r.sysfsRoot);
  if (controller === null) return emulated(`${sysfsName} sits on no PCI USB controller that could be assigned`);
  const pci = readPciDevice(controller, r);
  if (pci === null) return emulated(`its controller ${controller} could not be read from sysfs`, controller);
  const all = listSysfsUsbDevices(paths.sysfsRoot);
  const others = all.filter((d) => d.sysfsName !== sysfsName && usbControllerOf(d.sysfsName, r.sysfsRoot) === controller);
  const also = others.filter((d) => !d.isHub).map(label);
  if (pci.iommuGroup === null) {
    return emulated(`its controller ${controller} is in no IOMMU group (the IOMMU is off or VFIO is unavailable)`, controller, also);
  }
  const mates = pci.iommuGroup.members.filter((m) => m !== controller).filter((m) => !(readPciDevice(m, r)?.isBridge ?? false));
  if (mates.length > 0) {
    return emulated(`its controller ${controller} shares IOMMU group ${pci.iommuGroup.id} with ${mates.join(', ')}, which would have to leave the host too`, controller, also);
  }
  if (pci.hostNeeds !== null) return emulated(`the host needs its controller ${controller}: ${pci.hostNeeds}`, controller, also);
  const own = hostNeeds(device, all, paths);
  if (own !== null) return emulated(`the host needs ${label(device)} itself: ${own}`, controller, also);
  for (const d of others) {
    // A hub is needed only for what sits behind it, and those are in `others` too.
    if (d.isHub) continue;
    const why = hostNeeds(d, all, paths);
    if (why !== null) return emulated(`its controller ${controller} also carries ${label(d)}, which the host needs: ${why}`, controller, also);
  }
  const extra = also.length > 0 ? `, and ${also.join(', ')} go${also.length === 1 ? 'es' : ''} with it` : ', and nothing else is on it';
  return {
    path: 'controller', controller, alsoOnController: also,
    reason: `its controller ${controller} (${pci.className}) is alone in IOMMU group ${pci.iommuGroup.id}, the host needs nothing on it${extra}`,
  };
}

/** The path a VM's setting gives a device: 'auto' follows the choice; a pinned path says so. */
export function applyUsbPathSetting(setting: UsbPassthroughSetting, choice: UsbPathChoice): UsbPathChoice {
  if (setting === 'auto') return choice;
  if (setting === 'emulated') return { ...choice, path: 'emulated', reason: 'the VM\'s usbPassthroughPath is "emulated"' };
  if (choice.path === 'controller') return choice;
  throw new Error(`the VM's usbPassthroughPath is "controller", but ${choice.reason.replace(/^its /, 'the device\'s ')}`);
}

/** A device a VM's rules take at start, and the path it goes by. */
export interface UsbStartChoice {
  sysfsName: string;
  choice: UsbPathChoice;
}

/**
 * At VM start: the path of every present host device `rules` match. The controllers of those on
 * the controller path are assigned for the run (PCI is not hot-plugged, so only at start); the
 * rest are left to the emulated path (the rules attach them once the VM runs). A pinned
 * "controller" setting that a device's controller does not satisfy throws, naming the reason.
 */
export function planUsbControllers(
  setting: UsbPassthroughSetting, matched: readonly HostUsbDeviceInfo[], roots: UsbChoiceRoots = {},
): { controllers: string[]; choices: UsbStartChoice[] } {
  const controllers: string[] = [];
  const choices: UsbStartChoice[] = [];
  if (setting === 'emulated') return { controllers, choices };
  for (const d of matched) {
    const choice = applyUsbPathSetting(setting, chooseUsbPath(d.sysfsName, roots));
    choices.push({ sysfsName: d.sysfsName, choice });
    if (choice.path === 'controller' && choice.controller !== null && !controllers.includes(choice.controller)) controllers.push(choice.controller);
  }
  return { controllers, choices };
}

/** A start choice as the API (listUsbPathChoices) and the monitor socket answer it. */
export function usbPathChoiceInfo(c: UsbStartChoice): UsbPathChoiceInfo {
  return { hostDevice: c.sysfsName, path: c.choice.path, controller: c.choice.controller, reason: c.choice.reason, alsoOnController: [...c.choice.alsoOnController] };
}

/** Why a device attached to a running VM goes by the emulated path. */
export const EMULATED_WHILE_RUNNING = 'the VM is running, and a whole USB controller can be assigned only at start (PCI is not hot-plugged)';

/** Why a VM with this setting refuses a host USB device while it runs, or null: a pinned controller path cannot take one then. */
export function usbAttachRefusal(setting: UsbPassthroughSetting): string | null {
  if (setting !== 'controller') return null;
  return 'this VM\'s usbPassthroughPath is "controller", and a USB controller can be assigned only at start (PCI is not hot-plugged): stop the VM, or set it to "auto"';
}
