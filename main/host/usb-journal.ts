// The journal of host USB devices taken from the host: which device, which process took it,
// and which kernel driver each of its interfaces had. The VM process that takes a device writes
// its entry BEFORE detaching a driver and removes it after giving the device back; an entry
// whose process is gone (SIGKILL, a crash) is repaired by the next manager start, or by the
// manager as soon as it sees a VM process die: the drivers are bound again. The kernel does not
// do that by itself when a usbfs file closes.
//
// One file per device (<dataDir>/usb-taken/<sysfs name>.json), written atomically (a temporary
// file, fsync, rename), so VM processes never write the same file and a crash leaves either the
// old entry or the new one.
//
// PCI devices taken for VFIO (pci-binding.ts) go in the same folder as pci-<address>.json,
// naming the driver and driver_override to restore; the same repair gives them back.
import fs from 'node:fs';
import path from 'node:path';
import { restorePciDriver, type PciJournalEntry } from './pci-binding';

export type { PciJournalEntry } from './pci-binding';
import { isPciAddress, SYSFS_ROOT } from './pci-inventory';
import { readSysfsUsbDevice, SYSFS_USB_DEVICES } from './usb-inventory';

export interface TakenInterface {
  /** sysfs name of the interface, e.g. "1-1:1.0". */
  sysfsName: string;
  number: number;
  /** The kernel driver it had ("usb-storage"). */
  driver: string;
}

export interface JournalEntry {
  sysfsName: string;
  busNumber: number;
  deviceAddress: number;
  vendorId: number;
  productId: number;
  /** The process holding the device (the VM process). */
  pid: number;
  /** The VM's name, for messages. */
  vm: string;
  takenAt: string;
  interfaces: TakenInterface[];
}

export const JOURNAL_FOLDER = 'usb-taken';
const PCI_PREFIX = 'pci-';

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

const NAME = /^\d+-\d+(\.\d+)*$/;
const DRIVER = /^[\w.+-]{1,64}$/;

/** A parsed entry, or null if the file is not one (it is then left alone and reported). */
export function entryFromJson(v: unknown): JournalEntry | null {
  if (!isRecord(v)) return null;
  const ints = ['busNumber', 'deviceAddress', 'vendorId', 'productId', 'pid'];
  if (typeof v.sysfsName !== 'string' || !NAME.test(v.sysfsName)) return null;
  if (!ints.every((k) => Number.isInteger(v[k]) && (v[k] as number) >= 0)) return null;
  if (typeof v.vm !== 'string' || typeof v.takenAt !== 'string' || !Array.isArray(v.interfaces)) return null;
  const interfaces: TakenInterface[] = [];
  for (const i of v.interfaces as unknown[]) {
    if (!isRecord(i) || typeof i.sysfsName !== 'string' || !i.sysfsName.startsWith(`${v.sysfsName}:`)
      || !/^\d+-\d+(\.\d+)*:\d+\.\d+$/.test(i.sysfsName) || !Number.isInteger(i.number)
      || typeof i.driver !== 'string' || !DRIVER.test(i.driver)) return null;
    interfaces.push({ sysfsName: i.sysfsName, number: i.number as number, driver: i.driver });
  }
  return {
    sysfsName: v.sysfsName, busNumber: v.busNumber as number, deviceAddress: v.deviceAddress as number,
    vendorId: v.vendorId as number, productId: v.productId as number, pid: v.pid as number, vm: v.vm,
    takenAt: v.takenAt, interfaces,
  };
}

/** A parsed PCI entry, or null. */
export function pciEntryFromJson(v: unknown): PciJournalEntry | null {
  if (!isRecord(v) || v.kind !== 'pci' || typeof v.address !== 'string' || !isPciAddress(v.address)) return null;
  if (!['vendorId', 'deviceId', 'pid'].every((k) => Number.isInteger(v[k]) && (v[k] as number) >= 0)) return null;
  const driverOk = (d: unknown) => d === null || (typeof d === 'string' && DRIVER.test(d));
  if (!driverOk(v.driver) || !driverOk(v.driverOverride) || typeof v.vm !== 'string' || typeof v.takenAt !== 'string') return null;
  return {
    kind: 'pci', address: v.address, vendorId: v.vendorId as number, deviceId: v.deviceId as number,
    driver: v.driver as string | null, driverOverride: v.driverOverride as string | null, pid: v.pid as number, vm: v.vm, takenAt: v.takenAt,
  };
}

/** Writes `data` to `file` atomically: a temporary file beside it, fsync, rename, fsync of the folder. */
export function writeFileAtomic(file: string, data: string): void {
  const dir = path.dirname(file);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.tmp`);
  const fd = fs.openSync(tmp, 'w', 0o600);
  try {
    fs.writeSync(fd, data);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  try {
    const dfd = fs.openSync(dir, 'r');
    try {
      fs.fsyncSync(dfd);
    } finally {
      fs.closeSync(dfd);
    }
  } catch {
    // Some file systems refuse fsync on a folder; the rename is still atomic.
  }
}

export class UsbJournal {
  readonly dir: string;

  /** `dataDir`: the app's data directory (main/manager/app-paths.ts dataDir()). */
  constructor(dataDir: string) {
    this.dir = path.join(dataDir, JOURNAL_FOLDER);
  }

  private fileOf(sysfsName: string): string {
    if (!NAME.test(sysfsName)) throw new Error(`"${sysfsName}" is not a USB device name`);
    return path.join(this.dir, `${sysfsName}.json`);
  }

  record(entry: JournalEntry): void {
    writeFileAtomic(this.fileOf(entry.sysfsName), `${JSON.stringify(entry, null, 2)}\n`);
  }

  remove(sysfsName: string): void {
    try {
      fs.unlinkSync(this.fileOf(sysfsName));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }

  private fileOfPci(address: string): string {
    if (!isPciAddress(address)) throw new Error(`"${address}" is not a PCI address`);
    return path.join(this.dir, `${PCI_PREFIX}${address}.json`);
  }

  recordPci(entry: PciJournalEntry): void {
    writeFileAtomic(this.fileOfPci(entry.address), `${JSON.stringify(entry, null, 2)}\n`);
  }

  removePci(address: string): void {
    try {
      fs.unlinkSync(this.fileOfPci(address));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }

  /** Every USB entry (`entries`), every PCI entry (`pci`), and the files that are not entries (named, for a warning). */
  read(): { entries: JournalEntry[]; pci: PciJournalEntry[]; bad: string[] } {
    let names: string[];
    try {
      names = fs.readdirSync(this.dir);
    } catch {
      return { entries: [], pci: [], bad: [] };
    }
    const entries: JournalEntry[] = [];
    const pci: PciJournalEntry[] = [];
    const bad: string[] = [];
    for (const n of names) {
      if (!n.endsWith('.json') || n.startsWith('.')) continue;
      const file = path.join(this.dir, n);
      try {
        const json: unknown = JSON.parse(fs.readFileSync(file, 'utf8'));
        if (n.startsWith(PCI_PREFIX)) {
          const p = pciEntryFromJson(json);
          if (p !== null && `${PCI_PREFIX}${p.address}.json` === n) pci.push(p);
          else bad.push(file);
          continue;
        }
        const e = entryFromJson(json);
        if (e !== null && `${e.sysfsName}.json` === n) entries.push(e);
        else bad.push(file);
      } catch {
        bad.push(file);
      }
    }
    return { entries, pci, bad };
  }
}

export interface RepairOptions {
  sysfsRoot?: string;
  /** Whether a process lives (default: signal 0). */
  isAlive?: (pid: number) => boolean;
  /** Binds `driver` to interface `sysfsName` (default: write it to /sys/bus/usb/drivers/DRIVER/bind). */
  bind?: (driver: string, sysfsName: string) => void;
  /** Only the entries of this process (the manager saw it die); default: every dead holder. */
  pid?: number;
  /** sysfs root for PCI entries ("/sys"). */
  pciSysfsRoot?: string;
  /** Gives a PCI device back (default: restorePciDriver through sysfs); returns the driver bound. */
  restorePci?: (entry: PciJournalEntry) => string | null;
}

export function processAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export function sysfsBind(driver: string, interfaceName: string, sysfsRoot = SYSFS_USB_DEVICES): void {
  // /sys/bus/usb/devices → /sys/bus/usb/drivers
  const drivers = path.join(path.dirname(sysfsRoot), 'drivers');
  fs.writeFileSync(path.join(drivers, driver, 'bind'), interfaceName);
}

/**
 * Gives back the devices of processes that are gone: each interface without a driver gets its
 * old one again. An entry whose device left (or came back at another address: the kernel bound
 * its drivers then) needs nothing. Returns one sentence per device handled; an entry that
 * could not be repaired stays for the next try.
 */
export function repairUsbJournal(journal: UsbJournal, options: RepairOptions = {}): string[] {
  const root = options.sysfsRoot ?? SYSFS_USB_DEVICES;
  const isAlive = options.isAlive ?? processAlive;
  const bind = options.bind ?? ((driver: string, itf: string) => sysfsBind(driver, itf, root));
  const out: string[] = [];
  const { entries, pci, bad } = journal.read();
  for (const f of bad) out.push(`USB journal: ${f} is not a journal entry; left alone`);
  for (const e of entries) {
    if (options.pid !== undefined ? e.pid !== options.pid : isAlive(e.pid)) continue;
    const now = readSysfsUsbDevice(e.sysfsName, root);
    if (now === null || now.busNumber !== e.busNumber || now.deviceAddress !== e.deviceAddress) {
      journal.remove(e.sysfsName);
      out.push(`USB: ${e.sysfsName} (taken by VM ${e.vm}) left the host meanwhile; nothing to give back`);
      continue;
    }
    const failed: string[] = [];
    const bound: string[] = [];
    for (const itf of e.interfaces) {
      const current = now.interfaces.find((i) => i.sysfsName === itf.sysfsName);
      if (current === undefined) continue; // another configuration now
      if (current.driver !== null && current.driver !== 'usbfs') continue;
      try {
        bind(itf.driver, itf.sysfsName);
        bound.push(`${itf.sysfsName} → ${itf.driver}`);
      } catch (err) {
        failed.push(`${itf.sysfsName} → ${itf.driver}: ${(err as Error).message}`);
      }
    }
    if (failed.length === 0) {
      journal.remove(e.sysfsName);
      out.push(`USB: gave ${e.sysfsName} back to the host after VM ${e.vm} (process ${e.pid}) ended without doing so` +
        (bound.length > 0 ? ` (${bound.join(', ')})` : ''));
    } else {
      out.push(`USB: could not give ${e.sysfsName} back to the host: ${failed.join('; ')}`);
    }
  }
  const restorePci = options.restorePci ?? ((e: PciJournalEntry) => restorePciDriver(e, { sysfsRoot: options.pciSysfsRoot ?? SYSFS_ROOT }));
  for (const e of pci) {
    if (options.pid !== undefined ? e.pid !== options.pid : isAlive(e.pid)) continue;
    try {
      const now = restorePci(e);
      journal.removePci(e.address);
      out.push(`PCI: gave ${e.address} back to ${now ?? 'the host (no driver)'} after VM ${e.vm} (process ${e.pid}) ended without doing so`);
    } catch (err) {
      out.push(`PCI: could not give ${e.address} back to ${e.driver ?? 'the host'}: ${(err as Error).message}`);
    }
  }
  return out;
}
