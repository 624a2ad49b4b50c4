// From the UI's VmSpec to the VMM's MachineConfig, and the checks that need the host's
// file system (done in main, never trusted from the UI).
import fs from 'node:fs';
import { ApiError, type FieldProblem, type SerialForward, type VmNicSpec, type VmSpec } from '../api/contract';
import { hostForwardRules } from '../api/nic-choices';
import { fieldLabel } from '../api/schema';
import { usbDeviceChoice } from '../api/usb-input';
import {
  checkDisks, checkNics, ConfigError, defaultConfig, type DiskConfig, type NicConfig, nicConfigFromJson, parseSerialBackend, type MachineConfig, type SerialBackend,
} from '../vmm/config';

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
  spec.disks?.forEach((d, i) => add(`disks.${i}.path`, d.path, true));
  if (spec.cdrom !== undefined) add('cdrom.path', spec.cdrom.path, true);
  return files;
}

/** Why an ISO to insert cannot be used (with the API error code), or null. */
export function isoFileProblem(file: string): { code: 'not-found' | 'invalid-argument'; message: string } | null {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch {
    return { code: 'not-found', message: `The ISO image ${file} does not exist.` };
  }
  if (!st.isFile() && !st.isBlockDevice()) return { code: 'invalid-argument', message: `The ISO image ${file} is not a file.` };
  try {
    fs.accessSync(file, fs.constants.R_OK);
  } catch {
    return { code: 'invalid-argument', message: `The ISO image ${file} cannot be read by this user.` };
  }
  if (st.isFile() && (st.size === 0 || st.size % 2048 !== 0)) {
    return { code: 'invalid-argument', message: `The ISO image ${file} is not a CD image: its size (${st.size} bytes) is not a whole number of 2048-byte blocks.` };
  }
  return null;
}

/** A VMM ConfigError's text as a sentence for a field ("nics[0].backend.ifname: ..." → "...."). */
function configSentence(field: string, e: unknown): FieldProblem {
  const text = e instanceof ConfigError ? e.message.replace(/^[^:]*\]\S*:?\s*/, '').replace(/^[^:\s]+:\s*/, '') : String(e);
  const s = text.trim();
  return { field, message: `${fieldLabel(field)}: ${s}${/[.!?]$/.test(s) ? '' : '.'}` };
}

/** A spec NIC as the VMM's JSON: the user backend's port-forward text becomes its hostfwd list. */
function vmmNicJson(n: VmNicSpec): unknown {
  const json = structuredClone(n) as { backend: Record<string, unknown> };
  if (json.backend.kind === 'user') {
    const rules = hostForwardRules(n.backend.hostfwd);
    if (rules.length > 0) json.backend.hostfwd = rules;
    else delete json.backend.hostfwd;
  }
  return json;
}

/** The spec's disks as the VMM takes them: boot.disks first (virtio, writable), then `disks`, then the CD-ROM drive. */
function vmmDisks(spec: VmSpec): DiskConfig[] {
  const disks: DiskConfig[] = [];
  if (spec.boot.kind === 'firmware') for (const path of spec.boot.disks) disks.push({ path, readOnly: false });
  for (const d of spec.disks ?? []) {
    disks.push({
      path: d.path, readOnly: d.readOnly === true, ...(d.bus === undefined ? {} : { bus: d.bus }), ...(d.format === undefined ? {} : { format: d.format }),
    });
  }
  const iso = spec.cdrom?.path ?? (spec.boot.kind === 'firmware' && spec.boot.cdrom !== '' ? spec.boot.cdrom : undefined);
  if (iso !== undefined) disks.push({ readOnly: true, bus: 'sata', media: 'cdrom', ...(iso === '' ? {} : { path: iso }) });
  return disks;
}

/**
 * The VMM's own checks of a spec's disks and NICs (counts, names, interface names, HOST:PORT,
 * MACs), as field problems; the shapes were checked by vmSpecProblems before.
 */
export function specDeviceProblems(spec: VmSpec): FieldProblem[] {
  const out: FieldProblem[] = [];
  const nics: NicConfig[] = [];
  (spec.nics ?? []).forEach((n, i) => {
    try {
      nics.push(nicConfigFromJson(vmmNicJson(n), `nics[${i}]`));
    } catch (e) {
      out.push(configSentence(`nics.${i}`, e));
    }
  });
  if (out.length === 0) {
    try {
      checkNics(nics, 'nics');
    } catch (e) {
      out.push(configSentence('nics', e));
    }
  }
  try {
    checkDisks(vmmDisks(spec), 'disks');
  } catch (e) {
    out.push(configSentence('disks', e));
  }
  return out;
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
      c.boot = { kind: 'firmware', path: b.firmware === '' ? undefined : b.firmware };
      // An ISO as the firmware's own (boot.cdrom) is a CD to boot from, as is a CD-ROM marked so.
      if (spec.cdrom?.boot === true || (spec.cdrom === undefined && b.cdrom !== '')) c.boot.bootFrom = 'cdrom';
      c.optionRoms = [...b.optionRoms];
      break;
    case 'linux':
      c.boot = { kind: 'linux', kernel: b.kernel, initrd: b.initrd === '' ? undefined : b.initrd, append: b.cmdline };
      break;
    case 'flat':
      c.boot = { kind: 'flat', path: b.path, address: FLAT_LOAD_ADDRESS };
      break;
  }
  const problems = specDeviceProblems(spec);
  if (problems.length > 0) throw new ApiError('invalid-argument', problems[0].message);
  // Disk images: boot.disks as virtio-blk disks, writable, in boot order (SeaBIOS boots the
  // first), then the spec's disks, then the CD-ROM drive.
  const disks = vmmDisks(spec);
  if (disks.length > 0) c.disks = disks;
  // PCI assignment (issue 11 item 6): bound to vfio-pci by the VM host at start.
  if (spec.pciAssign !== undefined && spec.pciAssign.length > 0) c.pciAssign = spec.pciAssign.map((a) => ({ address: a.address, ...(a.force === true ? { force: true } : {}) }));
  if (spec.nics !== undefined && spec.nics.length > 0) c.nics = spec.nics.map((n, i) => nicConfigFromJson(vmmNicJson(n), `nics[${i}]`));
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
    if (spec.usb.passthroughPath !== undefined) c.usbPassthroughPath = spec.usb.passthroughPath;
  }
  return c;
}
