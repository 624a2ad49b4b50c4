// Taking a PCI device from the host for VFIO and giving it back. A device is moved to vfio-pci
// with driver_override + drivers_probe (vfio-pci is loaded first if needed); what it had (its
// driver and driver_override) is written to the host device journal (usb-journal.ts, which
// journals PCI devices too) BEFORE anything changes, so a process that dies holding it is
// repaired by the manager (repairUsbJournal). Giving back restores driver_override and binds the
// old driver again. A device the host needs (pci-inventory.ts hostNeedsPciDevice) is refused
// with that reason unless forced. SR-IOV virtual functions are made with sriov_numvfs.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { hostNeedsPciDevice, isPciAddress, pciDevicesDir, pciDriversDir, readPciDevice, SYSFS_ROOT, type HostRoots } from './pci-inventory';

/** A PCI device moved to vfio-pci, as the host device journal (usb-journal.ts) records it. */
export interface PciJournalEntry {
  kind: 'pci';
  /** "0000:01:00.0" */
  address: string;
  vendorId: number;
  deviceId: number;
  /** The driver it had, or null. */
  driver: string | null;
  /** The driver_override it had, or null. */
  driverOverride: string | null;
  pid: number;
  vm: string;
  takenAt: string;
}

export const VFIO_PCI = 'vfio-pci';

/** Writes one sysfs attribute; tests put a fake kernel here. */
export type SysfsWrite = (file: string, value: string) => void;

export const writeSysfs: SysfsWrite = (file, value) => fs.writeFileSync(file, value);

/** What a taken device's journal needs: record before taking, remove once it is back. */
export interface PciJournal {
  recordPci(entry: PciJournalEntry): void;
  removePci(address: string): void;
}

export interface PciBindingOptions extends HostRoots {
  write?: SysfsWrite;
  /** Loads a kernel module (default: modprobe MODULE). */
  loadModule?: (name: string) => void;
}

export interface TakeOptions extends PciBindingOptions {
  /** Journal of taken devices (null: not journaled, for tools that give back themselves). */
  journal: PciJournal | null;
  /** Who holds it: this process by default. */
  pid?: number;
  /** The VM's name, for messages. */
  vm: string;
  /** Take it even though the host needs it. */
  force?: boolean;
}

function driverOf(address: string, sysfsRoot: string): string | null {
  try {
    return path.basename(fs.readlinkSync(path.join(pciDevicesDir(sysfsRoot), address, 'driver')));
  } catch {
    return null;
  }
}

function modprobe(name: string): void {
  const r = spawnSync('modprobe', [name], { encoding: 'utf8' });
  if (r.error) throw new Error(`modprobe ${name}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`modprobe ${name} failed: ${(r.stderr || r.stdout).trim() || `exit status ${r.status}`}`);
}

/** Makes sure the vfio-pci driver is there, loading the module when it is not. */
export function ensureVfioPci(options: PciBindingOptions = {}): void {
  const sysfsRoot = options.sysfsRoot ?? SYSFS_ROOT;
  const dir = path.join(pciDriversDir(sysfsRoot), VFIO_PCI);
  if (fs.existsSync(dir)) return;
  (options.loadModule ?? modprobe)('vfio-pci');
  if (!fs.existsSync(dir)) throw new Error(`the ${VFIO_PCI} driver is not there after loading its module (no ${dir})`);
}

function sysfsError(what: string, e: unknown): Error {
  const err = e as NodeJS.ErrnoException;
  const why = err.code === 'EACCES' || err.code === 'EPERM' ? 'permission denied (binding PCI drivers needs root)' : err.code ?? err.message;
  return new Error(`${what}: ${why}`);
}

/**
 * Moves a device to `driver` (or to none with null): driver_override first, then unbind from
 * the current driver, then bind (drivers_probe, or the driver's bind file for a named driver
 * when `explicitBind`). Returns the driver bound afterwards.
 */
function rebind(address: string, override: string | null, bindTo: string | null, options: PciBindingOptions): string | null {
  const sysfsRoot = options.sysfsRoot ?? SYSFS_ROOT;
  const write = options.write ?? writeSysfs;
  const dev = path.join(pciDevicesDir(sysfsRoot), address);
  try {
    // An empty line clears driver_override.
    write(path.join(dev, 'driver_override'), override ?? '\n');
  } catch (e) {
    throw sysfsError(`writing ${address}'s driver_override`, e);
  }
  const current = driverOf(address, sysfsRoot);
  if (current !== null && current !== bindTo) {
    try {
      write(path.join(pciDriversDir(sysfsRoot), current, 'unbind'), address);
    } catch (e) {
      throw sysfsError(`unbinding ${address} from ${current}`, e);
    }
  }
  if (driverOf(address, sysfsRoot) === null) {
    try {
      if (bindTo !== null) write(path.join(pciDriversDir(sysfsRoot), bindTo, 'bind'), address);
      else write(path.join(sysfsRoot, 'bus', 'pci', 'drivers_probe'), address);
    } catch (e) {
      throw sysfsError(bindTo !== null ? `binding ${address} to ${bindTo}` : `probing drivers for ${address}`, e);
    }
  }
  return driverOf(address, sysfsRoot);
}

export interface TakenPciDevice {
  address: string;
  iommuGroup: number;
  /** The driver it had, or null. */
  driver: string | null;
  /** The driver_override it had, or null. */
  driverOverride: string | null;
  /** Whether Porthole moved it (false: it was on vfio-pci already, and stays there afterwards). */
  moved: boolean;
}

/**
 * Takes a device for VFIO: refuses a bridge, a device in no IOMMU group, a group that another
 * host-held device keeps unviable, and (unless forced) one the host needs; journals it, then
 * binds it to vfio-pci. Errors are sentences naming the device.
 */
export function takePciDevice(address: string, options: TakeOptions): TakenPciDevice {
  const roots = { sysfsRoot: options.sysfsRoot ?? SYSFS_ROOT, procRoot: options.procRoot };
  if (!isPciAddress(address)) throw new Error(`"${address}" is not a PCI address (like 0000:01:00.0)`);
  const info = readPciDevice(address, roots);
  if (info === null) throw new Error(`there is no PCI device ${address} on this host`);
  if (info.isBridge) throw new Error(`${address} is a bridge; Porthole assigns the devices behind it, not the bridge`);
  if (info.iommuGroup === null) {
    throw new Error(`${address} is in no IOMMU group: the IOMMU is off (boot with intel_iommu=on or amd_iommu=on) or VFIO is unavailable`);
  }
  if (info.iommuGroup.heldByHost.length > 0) {
    throw new Error(`${address} cannot be assigned: its IOMMU group ${info.iommuGroup.id} also holds ${info.iommuGroup.heldByHost.join(', ')}`);
  }
  if (info.driver === VFIO_PCI) return { address, iommuGroup: info.iommuGroup.id, driver: VFIO_PCI, driverOverride: info.driverOverride, moved: false };
  const needs = hostNeedsPciDevice(address, roots);
  if (needs !== null && !options.force) {
    throw new Error(`${address} (${info.className}) stays with the host: ${needs}. Force it to take it anyway.`);
  }
  ensureVfioPci(options);
  const entry: PciJournalEntry = {
    kind: 'pci', address, vendorId: info.vendorId, deviceId: info.deviceId, driver: info.driver,
    driverOverride: info.driverOverride, pid: options.pid ?? process.pid, vm: options.vm, takenAt: new Date().toISOString(),
  };
  options.journal?.recordPci(entry);
  let now: string | null;
  try {
    now = rebind(address, VFIO_PCI, null, options);
  } catch (e) {
    restorePciDriver(entry, options);
    options.journal?.removePci(address);
    throw e;
  }
  if (now !== VFIO_PCI) {
    const back = restorePciDriver(entry, options);
    options.journal?.removePci(address);
    throw new Error(`${address} did not bind to ${VFIO_PCI} (it is on ${now ?? 'no driver'}; given back to ${back ?? 'no driver'})`);
  }
  return { address, iommuGroup: info.iommuGroup.id, driver: info.driver, driverOverride: info.driverOverride, moved: true };
}

/**
 * Puts a journaled device back: its old driver_override, then its old driver (bound by name,
 * or drivers_probe when it had none). Returns the driver bound afterwards. Throws when the old
 * driver could not be bound.
 */
export function restorePciDriver(entry: Pick<PciJournalEntry, 'address' | 'driver' | 'driverOverride'>, options: PciBindingOptions = {}): string | null {
  const sysfsRoot = options.sysfsRoot ?? SYSFS_ROOT;
  if (!fs.existsSync(path.join(pciDevicesDir(sysfsRoot), entry.address))) return null;
  const now = rebind(entry.address, entry.driverOverride, entry.driver, options);
  if (entry.driver !== null && now !== entry.driver) {
    throw new Error(`${entry.address} did not go back to ${entry.driver} (it is on ${now ?? 'no driver'})`);
  }
  return now;
}

/** Gives a taken device back to its driver and drops its journal entry. */
export function givePciDeviceBack(taken: TakenPciDevice, options: PciBindingOptions & { journal: PciJournal | null }): string | null {
  if (!taken.moved) return VFIO_PCI;
  const now = restorePciDriver(taken, options);
  options.journal?.removePci(taken.address);
  return now;
}

/**
 * Sets a physical function's number of SR-IOV virtual functions (0 removes them; a different
 * non-zero count goes through 0, as the kernel requires). `autoprobe` false creates VFs no
 * driver takes by itself. Returns the VFs' addresses.
 */
export function setSriovVfs(pf: string, count: number, options: PciBindingOptions & { autoprobe?: boolean } = {}): string[] {
  const sysfsRoot = options.sysfsRoot ?? SYSFS_ROOT;
  const write = options.write ?? writeSysfs;
  const info = readPciDevice(pf, { sysfsRoot, procRoot: options.procRoot });
  if (info === null) throw new Error(`there is no PCI device ${pf} on this host`);
  if (info.sriov === null) throw new Error(`${pf} (${info.className}) has no SR-IOV capability`);
  if (!Number.isInteger(count) || count < 0 || count > info.sriov.totalVfs) {
    throw new Error(`${pf} offers 0 to ${info.sriov.totalVfs} virtual functions, not ${count}`);
  }
  const dev = path.join(pciDevicesDir(sysfsRoot), pf);
  try {
    if (options.autoprobe !== undefined) write(path.join(dev, 'sriov_drivers_autoprobe'), options.autoprobe ? '1' : '0');
    if (info.sriov.numVfs !== count) {
      if (info.sriov.numVfs !== 0) write(path.join(dev, 'sriov_numvfs'), '0');
      if (count !== 0) write(path.join(dev, 'sriov_numvfs'), String(count));
    }
  } catch (e) {
    throw sysfsError(`setting ${pf}'s sriov_numvfs to ${count}`, e);
  }
  const after = readPciDevice(pf, { sysfsRoot, procRoot: options.procRoot });
  const vfs = after?.sriov?.virtualFunctions ?? [];
  if (vfs.length !== count) throw new Error(`${pf} shows ${vfs.length} virtual functions after asking for ${count}`);
  return vfs;
}
