// From the UI's VmSpec to the VMM's MachineConfig, and the checks that need the host's
// file system (done in main, never trusted from the UI).
import fs from 'node:fs';
import { ApiError, type FieldProblem, type SerialForward, type VmSpec } from '../api/contract';
import { fieldLabel } from '../api/schema';
import { usbDeviceChoice } from '../api/usb-input';
import { ConfigError, defaultConfig, parseSerialBackend, type MachineConfig, type SerialBackend } from '../vmm/config';

/** Where a flat test program is loaded and entered (as the CLI and test helpers do). */
export const FLAT_LOAD_ADDRESS = 0x1000;

/**
 * A COM port's forward as a VMM serial backend. "ui" is the app's console only: the
 * VmHost always reports a port's output and takes input from the manager, so it needs no
 * host endpoint of its own.
 */
export function serialBackendOf(forward: SerialForward): SerialBackend {
  if (forward === 'ui' || forward === 'none') return { kind: 'none' };
  try {
    return parseSerialBackend(forward);
  } catch (e) {
    throw new ApiError('invalid-argument', e instanceof ConfigError ? `${e.message}.` : `The serial forward "${forward}" is not understood.`);
  }
}

/** Every file a spec names, with its field, and whether a block device is acceptable. */
function specFiles(spec: VmSpec): { field: string; path: string; blockOk: boolean }[] {
  const b = spec.boot;
  const files: { field: string; path: string; blockOk: boolean }[] = [];
  const add = (field: string, p: string, blockOk = false) => { if (p !== '') files.push({ field, path: p, blockOk }); };
  switch (b.kind) {
    case 'firmware':
      add('boot.firmware', b.firmware);
      b.disks.forEach((d, i) => add(`boot.disks.${i}`, d, true));
      add('boot.cdrom', b.cdrom, true);
      b.optionRoms.forEach((r, i) => add(`boot.optionRoms.${i}`, r));
      break;
    case 'linux':
      add('boot.kernel', b.kernel);
      add('boot.initrd', b.initrd);
      break;
    case 'flat':
      add('boot.path', b.path);
      break;
  }
  spec.usb?.devices.forEach((d, i) => { if (d.kind === 'storage') add(`usb.devices.${i}.path`, d.path); });
  return files;
}

/** Files that do not exist, are not files, or cannot be read. */
export function specFileProblems(spec: VmSpec): FieldProblem[] {
  const out: FieldProblem[] = [];
  for (const f of specFiles(spec)) {
    let st: fs.Stats;
    try {
      st = fs.statSync(f.path);
    } catch {
      out.push({ field: f.field, message: `${fieldLabel(f.field)}: ${f.path} does not exist.` });
      continue;
    }
    if (!st.isFile() && !(f.blockOk && st.isBlockDevice())) {
      out.push({ field: f.field, message: `${fieldLabel(f.field)}: ${f.path} is not a file.` });
      continue;
    }
    try {
      fs.accessSync(f.path, fs.constants.R_OK);
    } catch {
      out.push({ field: f.field, message: `${fieldLabel(f.field)}: ${f.path} cannot be read by this user.` });
    }
  }
  return out;
}

/** The machine to run for a spec; ApiError when it cannot run as specified. */
export function machineConfigOf(spec: VmSpec): MachineConfig {
  const fileProblems = specFileProblems(spec);
  if (fileProblems.length > 0) throw new ApiError('not-found', fileProblems[0].message);
  const c = defaultConfig();
  c.name = spec.name;
  c.memoryBytes = spec.memoryMiB * 1024 * 1024;
  c.cpus = spec.cpus;
  c.serial = spec.serial.map(serialBackendOf);
  c.debugcon = { kind: 'none' };
  c.debugExit = spec.debugExit;
  const b = spec.boot;
  switch (b.kind) {
    case 'firmware':
      if (b.cdrom !== '') {
        throw new ApiError('unsupported', 'ISO images cannot be attached yet: this Porthole has no CD drive; remove it to start the VM.');
      }
      // Disk images are virtio-blk disks, writable, in boot order (SeaBIOS boots the first).
      if (b.disks.length > 0) c.disks = b.disks.map((path) => ({ path, readOnly: false }));
      c.boot = { kind: 'firmware', path: b.firmware === '' ? undefined : b.firmware };
      c.optionRoms = [...b.optionRoms];
      break;
    case 'linux':
      c.boot = { kind: 'linux', kernel: b.kernel, initrd: b.initrd === '' ? undefined : b.initrd, append: b.cmdline };
      break;
    case 'flat':
      c.boot = { kind: 'flat', path: b.path, address: FLAT_LOAD_ADDRESS };
      break;
  }
  if (spec.usb !== undefined) {
    c.usb = {
      controller: spec.usb.controller,
      devices: spec.usb.devices.map((d) => {
        const port = d.port === undefined ? {} : { port: d.port };
        // A USB serial port's backend is checked as a COM port's forward is.
        if (d.kind === 'serial' && d.backend !== undefined) serialBackendOf(d.backend);
        return { ...usbDeviceChoice(d), ...port };
      }),
      ...(spec.usb.rules === undefined || spec.usb.rules.length === 0 ? {} : { rules: structuredClone(spec.usb.rules) }),
    };
  }
  return c;
}
