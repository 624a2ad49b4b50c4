// Runtime validators for everything that crosses the contract. Pure functions with no
// Node or DOM imports: main validates every call with them, and the renderer may use
// them to show problems while the user types. Messages are sentences for the UI.
import {
  ApiError, CONSOLE_PORTS, LIMITS, VM_ID_PATTERN,
  type BootSpec, type ConsolePort, type FieldProblem, type FileChoice, type FilePurpose, type SerialForward, type UsbDeviceSpec,
  type VmCdromSpec, type VmDiskSpec, type VmNicSpec, type VmSpec, type VmUsbSpec,
} from './contract';
import { NIC_BACKEND_CHOICES, NIC_MODEL_CHOICES, nicBackendChoice } from './nic-choices';
import { USB_MAX_RULES, usbRuleFromJson } from './usb-rule';
import { USB_PORT_COUNT, usbDeviceChoice, usbDeviceProblems } from './usb-input';
import { copyPciAssign, pciAssignListProblems } from './pci-input';

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

const FILE_PURPOSES: readonly FilePurpose[] = ['disk', 'cdrom', 'kernel', 'initrd', 'firmware', 'option-rom', 'flat'];

/** Why `text` is not a COM port forward (see SerialForward), or null if it is one. */
export function serialForwardProblem(text: unknown): string | null {
  if (typeof text !== 'string') return 'must be text such as "ui", "pty" or "tcp-listen:4555"';
  const t = text.trim();
  if (t !== text || t === '') return 'must not be empty or start or end with spaces';
  if (t.length > LIMITS.pathMaxLength) return `must be at most ${LIMITS.pathMaxLength} characters`;
  if (/[\0\r\n]/.test(t)) return 'must not contain control characters';
  if (t === 'ui' || t === 'none' || t === 'pty') return null;
  if (t.startsWith('/dev/')) return t.length > 5 ? null : 'needs a device name after /dev/';
  const colon = t.indexOf(':');
  const scheme = colon < 0 ? t : t.slice(0, colon);
  const rest = colon < 0 ? '' : t.slice(colon + 1);
  switch (scheme) {
    case 'file':
    case 'unix':
    case 'unix-listen':
      if (!rest.startsWith('/')) return `"${scheme}:" needs an absolute path, e.g. ${scheme}:/tmp/com1`;
      return null;
    case 'tcp':
    case 'tcp-listen': {
      const i = rest.lastIndexOf(':');
      const portText = i < 0 ? rest : rest.slice(i + 1);
      const port = Number(portText);
      if (!/^\d{1,5}$/.test(portText) || port < 1 || port > 65535) return `"${portText}" is not a TCP port (1 to 65535)`;
      if (scheme === 'tcp' && (i <= 0)) return '"tcp:" needs HOST:PORT, e.g. tcp:127.0.0.1:4555';
      return null;
    }
    default:
      return 'is not understood: use ui, none, pty, tcp-listen:PORT, tcp:HOST:PORT, unix:PATH, unix-listen:PATH, file:PATH or a /dev path';
  }
}

function pathProblem(v: unknown, optional: boolean): string | null {
  if (typeof v !== 'string') return 'must be a file path';
  if (v === '') return optional ? null : 'is required';
  if (v.length > LIMITS.pathMaxLength) return `must be at most ${LIMITS.pathMaxLength} characters`;
  if (v.includes('\0')) return 'must not contain NUL characters';
  if (!v.startsWith('/')) return 'must be an absolute path (starting with /)';
  return null;
}

const FIELD_LABELS: Record<string, string> = {
  name: 'Name',
  memoryMiB: 'Memory',
  cpus: 'vCPUs',
  boot: 'Boot source',
  'boot.kind': 'Boot source',
  'boot.firmware': 'Firmware',
  'boot.disks': 'Disk images',
  'boot.cdrom': 'ISO image',
  'boot.optionRoms': 'Option ROMs',
  'boot.kernel': 'Kernel',
  'boot.initrd': 'Initrd',
  'boot.cmdline': 'Kernel command line',
  'boot.path': 'Test program',
  serial: 'Serial ports',
  debugExit: 'Debug exit',
  usb: 'USB',
  'usb.controller': 'USB controller',
  'usb.devices': 'USB devices',
  disks: 'Disks',
  cdrom: 'CD-ROM',
  'cdrom.path': 'CD-ROM ISO image',
  'cdrom.boot': 'Boot from CD',
  nics: 'Network cards',
  pciAssign: 'PCI devices',
};

/** Disks and NICs a spec may list (as the VMM: 8 virtio disks, 6 SATA ports, 4 NICs). */
export const DEVICE_LIMITS = { disks: 14, nics: 4 } as const;

/** "boot.disks.1" → "Disk image 2", "serial.0" → "COM1", else the label of the field. */
export function fieldLabel(field: string): string {
  const disk = /^boot\.disks\.(\d+)$/.exec(field);
  if (disk) return `Disk image ${Number(disk[1]) + 1}`;
  const rom = /^boot\.optionRoms\.(\d+)$/.exec(field);
  if (rom) return `Option ROM ${Number(rom[1]) + 1}`;
  const com = /^serial\.(\d)$/.exec(field);
  if (com) return `COM${Number(com[1]) + 1}`;
  const rule = /^usb\.rules\.(\d+)$/.exec(field);
  if (rule) return `USB rule ${Number(rule[1]) + 1}`;
  const vmDisk = /^disks\.(\d+)(?:\.(\w+))?$/.exec(field);
  if (vmDisk) return `Disk ${Number(vmDisk[1]) + 1}${vmDisk[2] === undefined ? '' : ` ${{ path: 'image', bus: 'bus', format: 'format', readOnly: 'read-only setting' }[vmDisk[2]] ?? vmDisk[2]}`}`;
  const nic = /^nics\.(\d+)(?:\.(.+))?$/.exec(field);
  if (nic) {
    const part = nic[2] === undefined ? '' : nic[2] === 'mac' ? ' MAC address' : nic[2] === 'pcap' ? ' capture file' : nic[2] === 'model' ? ' model' : nic[2] === 'backend.kind' ? ' backend' : ` ${nicFieldLabel(nic[2])}`;
    return `NIC ${Number(nic[1]) + 1}${part}`;
  }
  const pci = /^pciAssign\.(\d+)$/.exec(field);
  if (pci) return `PCI device ${Number(pci[1]) + 1}`;
  const usb = /^usb\.devices\.(\d+)(\.path)?$/.exec(field);
  if (usb) return `USB device ${Number(usb[1]) + 1}${usb[2] ? ' image' : ''}`;
  return FIELD_LABELS[field] ?? field;
}

function nicFieldLabel(sub: string): string {
  const key = sub.replace(/^backend\./, '');
  for (const b of NIC_BACKEND_CHOICES) {
    const f = b.fields.find((x) => x.key === key);
    if (f) return f.label.charAt(0).toLowerCase() + f.label.slice(1);
  }
  return key;
}

function problem(field: string, what: string): FieldProblem {
  return { field, message: `${fieldLabel(field)} ${what}.` };
}

function unknownKeys(r: Record<string, unknown>, allowed: readonly string[], prefix: string, out: FieldProblem[]): void {
  for (const k of Object.keys(r)) {
    if (!allowed.includes(k)) out.push({ field: prefix + k, message: `"${prefix}${k}" is not a setting Porthole knows.` });
  }
}

function pathListProblems(v: unknown, field: string, max: number, out: FieldProblem[]): void {
  if (!Array.isArray(v)) {
    out.push(problem(field, 'must be a list of file paths'));
    return;
  }
  if (v.length > max) out.push(problem(field, `may have at most ${max} entries`));
  v.slice(0, max).forEach((p, i) => {
    const why = pathProblem(p, false);
    if (why) out.push(problem(`${field}.${i}`, why));
  });
}

function bootProblems(b: unknown, out: FieldProblem[]): void {
  if (!isRecord(b)) {
    out.push(problem('boot', 'must be chosen'));
    return;
  }
  const check = (key: string, optional: boolean) => {
    const why = pathProblem(b[key], optional);
    if (why) out.push(problem(`boot.${key}`, why));
  };
  switch (b.kind) {
    case 'firmware':
      unknownKeys(b, ['kind', 'firmware', 'disks', 'cdrom', 'optionRoms'], 'boot.', out);
      check('firmware', true);
      pathListProblems(b.disks, 'boot.disks', LIMITS.disksMax, out);
      check('cdrom', true);
      pathListProblems(b.optionRoms, 'boot.optionRoms', LIMITS.optionRomsMax, out);
      break;
    case 'linux':
      unknownKeys(b, ['kind', 'kernel', 'initrd', 'cmdline'], 'boot.', out);
      check('kernel', false);
      check('initrd', true);
      if (typeof b.cmdline !== 'string') out.push(problem('boot.cmdline', 'must be text'));
      else if (b.cmdline.length > LIMITS.cmdlineMaxLength) out.push(problem('boot.cmdline', `must be at most ${LIMITS.cmdlineMaxLength} characters`));
      else if (/[\0\r\n]/.test(b.cmdline)) out.push(problem('boot.cmdline', 'must be a single line'));
      break;
    case 'flat':
      unknownKeys(b, ['kind', 'path'], 'boot.', out);
      check('path', false);
      break;
    default:
      out.push(problem('boot.kind', 'must be "firmware", "linux" or "flat"'));
  }
}

function usbProblems(u: unknown, out: FieldProblem[]): void {
  if (!isRecord(u)) {
    out.push(problem('usb', 'must be { controller, devices } or left out'));
    return;
  }
  unknownKeys(u, ['controller', 'devices', 'rules', 'passthroughPath'], 'usb.', out);
  if (u.passthroughPath !== undefined && u.passthroughPath !== 'auto' && u.passthroughPath !== 'controller' && u.passthroughPath !== 'emulated') {
    out.push(problem('usb.passthroughPath', 'must be "auto", "controller" or "emulated"'));
  }
  if (u.rules !== undefined) {
    if (!Array.isArray(u.rules)) out.push(problem('usb.rules', 'must be a list'));
    else if (u.rules.length > USB_MAX_RULES) out.push(problem('usb.rules', `may have at most ${USB_MAX_RULES} entries`));
    else {
      if (u.controller === 'none' && u.rules.length > 0) out.push(problem('usb.rules', 'need a USB controller'));
      u.rules.forEach((r, i) => {
        try {
          usbRuleFromJson(r, 'rule');
        } catch (e) {
          out.push(problem(`usb.rules.${i}`, (e as Error).message.replace(/^rule\.?/, '').replace(/^:\s*/, '').trim()));
        }
      });
    }
  }
  if (u.controller !== 'xhci' && u.controller !== 'none') out.push(problem('usb.controller', 'must be "xhci" or "none"'));
  if (!Array.isArray(u.devices)) {
    out.push(problem('usb.devices', 'must be a list'));
    return;
  }
  if (u.devices.length > USB_PORT_COUNT) out.push(problem('usb.devices', `may have at most ${USB_PORT_COUNT} entries (the controller has ${USB_PORT_COUNT} ports)`));
  if (u.controller === 'none' && u.devices.length > 0) out.push(problem('usb.devices', 'need a USB controller'));
  const ports = new Map<number, number>();
  u.devices.slice(0, USB_PORT_COUNT).forEach((d, i) => {
    const field = `usb.devices.${i}`;
    const problems = usbDeviceProblems(d);
    for (const p of problems) {
      if (p.field === 'path') out.push(problem(`${field}.path`, p.what));
      else out.push(problem(field, p.field === '' ? p.what : `${p.field} ${p.what}`));
    }
    const port = problems.length === 0 ? (d as { port?: number }).port : undefined;
    if (port !== undefined) {
      const other = ports.get(port);
      if (other !== undefined) out.push(problem(field, `is on port ${port}, as USB device ${other + 1} is`));
      ports.set(port, i);
    }
  });
}

function copyUsb(u: VmUsbSpec): VmUsbSpec {
  return {
    controller: u.controller,
    devices: u.devices.map((d): UsbDeviceSpec => {
      const port = d.port === undefined ? {} : { port: d.port };
      return { ...usbDeviceChoice(d), ...port };
    }),
    ...(u.rules === undefined ? {} : { rules: u.rules.map((r) => usbRuleFromJson(r, 'rule')) }),
    ...(u.passthroughPath === undefined ? {} : { passthroughPath: u.passthroughPath }),
  };
}

/**
 * Every shape and range problem of a VM spec, in field order; [] when it is good.
 * File existence is checked by main (checkVmSpec), not here.
 */
export function vmSpecProblems(input: unknown): FieldProblem[] {
  const out: FieldProblem[] = [];
  if (!isRecord(input)) return [{ field: '', message: 'The VM settings must be an object.' }];
  unknownKeys(input, ['name', 'memoryMiB', 'cpus', 'boot', 'serial', 'debugExit', 'usb', 'disks', 'cdrom', 'nics', 'pciAssign'], '', out);
  const name = input.name;
  if (typeof name !== 'string' || name.trim() === '') out.push(problem('name', 'is required'));
  else if (name.length > LIMITS.nameMaxLength) out.push(problem('name', `must be at most ${LIMITS.nameMaxLength} characters`));
  else if (/[\u0000-\u001f\u007f]/.test(name)) out.push(problem('name', 'must not contain control characters'));
  const mem = input.memoryMiB;
  if (typeof mem !== 'number' || !Number.isInteger(mem) || mem < LIMITS.memoryMiBMin || mem > LIMITS.memoryMiBMax) {
    out.push(problem('memoryMiB', `must be a whole number of MiB from ${LIMITS.memoryMiBMin} to ${LIMITS.memoryMiBMax}`));
  }
  const cpus = input.cpus;
  if (typeof cpus !== 'number' || !Number.isInteger(cpus) || cpus < LIMITS.cpusMin || cpus > LIMITS.cpusMax) {
    out.push(problem('cpus', `must be a whole number from ${LIMITS.cpusMin} to ${LIMITS.cpusMax}`));
  }
  bootProblems(input.boot, out);
  if (!Array.isArray(input.serial) || input.serial.length !== 4) {
    out.push(problem('serial', 'must list exactly four ports (COM1 to COM4)'));
  } else {
    input.serial.forEach((s, i) => {
      const why = serialForwardProblem(s);
      if (why) out.push(problem(`serial.${i}`, why));
    });
  }
  if (typeof input.debugExit !== 'boolean') out.push(problem('debugExit', 'must be true or false'));
  if (input.usb !== undefined) usbProblems(input.usb, out);
  if (input.disks !== undefined) diskProblems(input.disks, out);
  if (input.cdrom !== undefined) cdromProblems(input.cdrom, input.boot, out);
  if (input.nics !== undefined) nicProblems(input.nics, out);
  // PCI assignment (issue 11 item 6)
  if (input.pciAssign !== undefined) {
    for (const p of pciAssignListProblems(input.pciAssign)) out.push(problem(p.index === null ? 'pciAssign' : `pciAssign.${p.index}`, p.what));
  }
  return out;
}

function diskProblems(v: unknown, out: FieldProblem[]): void {
  if (!Array.isArray(v)) {
    out.push(problem('disks', 'must be a list'));
    return;
  }
  if (v.length > DEVICE_LIMITS.disks) out.push(problem('disks', `may have at most ${DEVICE_LIMITS.disks} entries`));
  v.slice(0, DEVICE_LIMITS.disks).forEach((d, i) => {
    const at = `disks.${i}`;
    if (!isRecord(d)) {
      out.push(problem(at, 'must be { path, bus, format, readOnly }'));
      return;
    }
    unknownKeys(d, ['path', 'bus', 'format', 'readOnly'], `${at}.`, out);
    const why = pathProblem(d.path, false);
    if (why) out.push(problem(`${at}.path`, why));
    if (d.bus !== undefined && d.bus !== 'virtio' && d.bus !== 'sata') out.push(problem(`${at}.bus`, 'must be "virtio" or "sata"'));
    if (d.format !== undefined && d.format !== 'raw' && d.format !== 'qcow2') out.push(problem(`${at}.format`, 'must be "raw" or "qcow2" (or left out to detect it)'));
    if (d.readOnly !== undefined && typeof d.readOnly !== 'boolean') out.push(problem(`${at}.readOnly`, 'must be true or false'));
  });
}

function cdromProblems(v: unknown, boot: unknown, out: FieldProblem[]): void {
  if (!isRecord(v)) {
    out.push(problem('cdrom', 'must be { path, boot } or left out'));
    return;
  }
  unknownKeys(v, ['path', 'boot'], 'cdrom.', out);
  const why = pathProblem(v.path, true);
  if (why) out.push(problem('cdrom.path', why));
  if (v.boot !== undefined && typeof v.boot !== 'boolean') out.push(problem('cdrom.boot', 'must be true or false'));
  if (isRecord(boot)) {
    if (v.boot === true && boot.kind !== 'firmware') out.push(problem('cdrom.boot', 'needs the firmware (SeaBIOS) boot source'));
    if (boot.kind === 'firmware' && typeof boot.cdrom === 'string' && boot.cdrom !== '') {
      out.push(problem('cdrom', 'is given twice: leave the firmware\'s ISO image empty and use the CD-ROM drive'));
    }
  }
}

const MAC_PATTERN = /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/;

function nicProblems(v: unknown, out: FieldProblem[]): void {
  if (!Array.isArray(v)) {
    out.push(problem('nics', 'must be a list'));
    return;
  }
  if (v.length > DEVICE_LIMITS.nics) out.push(problem('nics', `may have at most ${DEVICE_LIMITS.nics} entries`));
  v.slice(0, DEVICE_LIMITS.nics).forEach((n, i) => {
    const at = `nics.${i}`;
    if (!isRecord(n)) {
      out.push(problem(at, 'must be { model, backend, mac, pcap }'));
      return;
    }
    unknownKeys(n, ['model', 'mac', 'backend', 'pcap'], `${at}.`, out);
    if (!NIC_MODEL_CHOICES.some((m) => m.model === n.model)) {
      out.push(problem(`${at}.model`, `must be one of ${NIC_MODEL_CHOICES.map((m) => m.model).join(', ')}`));
    }
    if (n.mac !== undefined) {
      if (typeof n.mac !== 'string' || !MAC_PATTERN.test(n.mac)) out.push(problem(`${at}.mac`, 'must look like 52:54:00:12:34:56'));
      else if (parseInt(n.mac.slice(0, 2), 16) & 1) out.push(problem(`${at}.mac`, 'must be a unicast address (its first byte even)'));
    }
    if (n.pcap !== undefined) {
      const why = pathProblem(n.pcap, false);
      if (why) out.push(problem(`${at}.pcap`, why));
    }
    const b = n.backend;
    if (!isRecord(b)) {
      out.push(problem(`${at}.backend.kind`, 'must be chosen'));
      return;
    }
    const choice = typeof b.kind === 'string' ? nicBackendChoice(b.kind) : undefined;
    if (choice === undefined) {
      out.push(problem(`${at}.backend.kind`, `must be one of ${NIC_BACKEND_CHOICES.map((c) => c.kind).join(', ')}`));
      return;
    }
    unknownKeys(b, ['kind', ...choice.fields.map((f) => f.key)], `${at}.backend.`, out);
    for (const f of choice.fields) {
      const value = b[f.key];
      const field = `${at}.backend.${f.key}`;
      if (f.optional && (value === undefined || value === '')) continue;
      if (typeof value !== 'string' || value.trim() === '') out.push(problem(field, 'is required'));
      else if (f.options !== undefined && !f.options.includes(value)) out.push(problem(field, `must be ${f.options.map((o) => `"${o}"`).join(' or ')}`));
      else if (f.path) {
        const why = pathProblem(value, false);
        if (why) out.push(problem(field, why));
      } else if (value.length > 255 || /[\u0000-\u001f\u007f]/.test(value)) out.push(problem(field, 'must be short text without control characters'));
    }
  });
}

function copyDisks(d: VmDiskSpec[]): VmDiskSpec[] {
  return d.map((x) => ({
    path: x.path, ...(x.bus === undefined ? {} : { bus: x.bus }), ...(x.format === undefined ? {} : { format: x.format }),
    ...(x.readOnly === undefined ? {} : { readOnly: x.readOnly }),
  }));
}

function copyCdrom(c: VmCdromSpec): VmCdromSpec {
  return { path: c.path, ...(c.boot === undefined ? {} : { boot: c.boot }) };
}

function copyNics(n: VmNicSpec[]): VmNicSpec[] {
  return n.map((x) => {
    const choice = nicBackendChoice(x.backend.kind);
    const backend: VmNicSpec['backend'] = { kind: x.backend.kind };
    for (const f of choice?.fields ?? []) {
      const v = x.backend[f.key];
      if (!(f.optional && (v === undefined || v === ''))) backend[f.key] = v;
    }
    return { model: x.model, ...(x.mac === undefined ? {} : { mac: x.mac }), backend, ...(x.pcap === undefined ? {} : { pcap: x.pcap }) };
  });
}

function copyBoot(b: BootSpec): BootSpec {
  switch (b.kind) {
    case 'firmware':
      return { kind: 'firmware', firmware: b.firmware, disks: [...b.disks], cdrom: b.cdrom, optionRoms: [...b.optionRoms] };
    case 'linux':
      return { kind: 'linux', kernel: b.kernel, initrd: b.initrd, cmdline: b.cmdline };
    case 'flat':
      return { kind: 'flat', path: b.path };
  }
}

/** A validated copy of `input` (no extra fields survive), or ApiError naming the first problem. */
export function parseVmSpec(input: unknown): VmSpec {
  const problems = vmSpecProblems(input);
  if (problems.length > 0) throw new ApiError('invalid-argument', problems[0].message);
  const s = input as VmSpec;
  return {
    name: s.name,
    memoryMiB: s.memoryMiB,
    cpus: s.cpus,
    boot: copyBoot(s.boot),
    serial: [s.serial[0], s.serial[1], s.serial[2], s.serial[3]],
    debugExit: s.debugExit,
    ...(s.usb === undefined ? {} : { usb: copyUsb(s.usb) }),
    ...(s.disks === undefined ? {} : { disks: copyDisks(s.disks) }),
    ...(s.cdrom === undefined ? {} : { cdrom: copyCdrom(s.cdrom) }),
    ...(s.nics === undefined ? {} : { nics: copyNics(s.nics) }),
    ...(s.pciAssign === undefined ? {} : { pciAssign: copyPciAssign(s.pciAssign) }),
  };
}

export function parseVmId(input: unknown): string {
  if (typeof input !== 'string' || !VM_ID_PATTERN.test(input)) {
    throw new ApiError('invalid-argument', 'That is not a VM id.');
  }
  return input;
}

export function parseConsolePort(input: unknown): ConsolePort {
  if (typeof input !== 'string' || !(CONSOLE_PORTS as readonly string[]).includes(input)) {
    throw new ApiError('invalid-argument', 'The console port must be com1, com2, com3, com4 or debugcon.');
  }
  return input as ConsolePort;
}

/** COM port index 0..3 of a console port, or null for the debug console. */
export function comIndex(port: ConsolePort): number | null {
  const i = CONSOLE_PORTS.indexOf(port);
  return i < 4 ? i : null;
}

export function parseConsoleInput(input: unknown): string {
  if (typeof input !== 'string') throw new ApiError('invalid-argument', 'Console input must be text.');
  // UTF-8 needs at most 3 bytes per UTF-16 unit; the exact limit is checked after encoding.
  if (input.length > LIMITS.consoleInputMaxBytes) {
    throw new ApiError('invalid-argument', `Console input is limited to ${LIMITS.consoleInputMaxBytes} bytes per call.`);
  }
  return input;
}

export function parseFileChoice(input: unknown): FileChoice {
  if (!isRecord(input) || typeof input.purpose !== 'string' || !(FILE_PURPOSES as readonly string[]).includes(input.purpose)) {
    throw new ApiError('invalid-argument', `The file choice needs a purpose: ${FILE_PURPOSES.join(', ')}.`);
  }
  for (const k of Object.keys(input)) {
    if (k !== 'purpose' && k !== 'title') throw new ApiError('invalid-argument', `"${k}" is not a file choice setting.`);
  }
  if (input.title !== undefined && (typeof input.title !== 'string' || input.title.length > 200)) {
    throw new ApiError('invalid-argument', 'The dialog title must be text of at most 200 characters.');
  }
  return { purpose: input.purpose as FilePurpose, title: input.title as string | undefined };
}

/** The subscription id a client picks for a stream (console, vm-stats; wire protocol only). */
export function parseSubscriptionId(input: unknown): string {
  if (typeof input !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(input)) {
    throw new ApiError('invalid-argument', 'That is not a subscription id.');
  }
  return input;
}

/** The shortest and longest interval of watchVmStatsEvery (10 Hz to one a minute). */
export const STATS_INTERVAL_MIN_MS = 100;
export const STATS_INTERVAL_MAX_MS = 60000;

export function parseStatsInterval(input: unknown): number {
  if (typeof input !== 'number' || !Number.isInteger(input) || input < STATS_INTERVAL_MIN_MS || input > STATS_INTERVAL_MAX_MS) {
    throw new ApiError('invalid-argument', `The interval must be a whole number of milliseconds from ${STATS_INTERVAL_MIN_MS} to ${STATS_INTERVAL_MAX_MS}.`);
  }
  return input;
}

export function isSerialForward(v: unknown): v is SerialForward {
  return serialForwardProblem(v) === null;
}
