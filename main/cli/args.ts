// Command-line parsing for `porthole`. Pure: returns what to do or throws UsageError.
import path from 'node:path';
import { ApiError } from '../api/contract';
import { parseCdromEjectSpec, parseCdromInsertSpec } from '../api/media-input';
import { parseHostUsbAttachSpec, parseUsbDeviceSpec, parseUsbKeys, parseUsbPort } from '../api/usb-input';
import type { MonitorMethod } from './monitor';
import type { RulesAction } from './usb-rules-file';
import type { PciAssignAction } from './pci-assign-file';
import { pciAddressOf } from '../api/pci-input';
import { usbRuleFromJson, UsbRuleError } from '../host/usb-rules';
import { USB_CAPTURE_MAX_SNAP } from '../vmm/shared/usb-messages';
import {
  checkDisks, checkNics, ConfigError, type NicConfig, parseNic, parseCdrom, defaultConfig, type DiskConfig, machineConfigFromJson, parseDisk, parseCpus, parseMemorySize, parseSerialBackend, parseUsbDevice, type MachineConfig,
  type UsbDeviceConfig, USB_MAX_DEVICES, checkPciAssign, parsePciAssign, type PciAssignConfig,
} from '../vmm/config';

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export type CliCommand =
  | { command: 'help' }
  | { command: 'version' }
  | {
    command: 'run'; config: MachineConfig;
    /** Print the end-of-run counter table. */
    stats: boolean;
    /** Print a line of the busiest counters every this many ms while the VM runs, or null. */
    liveStatsMs: number | null;
    verbose: boolean; timings: boolean;
    /** Boot a bzImage's kernel unpacked ahead (main/vmm/boot/kernel-unpack.ts); off with --no-unpack-kernel. */
    unpackKernel: boolean;
    /** --monitor: the control socket to listen on, or null. */
    monitor: string | null;
    /** --no-reboot: a guest reset ends the run. */
    noReboot: boolean;
  }
  /** usb list/add/remove and keys: one request to a running VM's control socket. */
  | { command: 'monitor'; socket: string; method: MonitorMethod; args: unknown[] }
  /** usb host: the host's USB devices (no VM needed). */
  | { command: 'usb-host' }
  /** pci: the host's PCI devices with IOMMU groups (no VM needed). */
  | { command: 'pci'; json: boolean }
  /** pci assign CONFIG ADDR [--force], pci return CONFIG ADDR: a VM config file's pciAssign. */
  | { command: 'pci-assign'; file: string; action: PciAssignAction }
  /** usb rules FILE, usb rule add|rm FILE ...: the auto-attach rules of a VM config file. */
  | { command: 'usb-rules'; file: string; action: RulesAction }
  /** capture: a pcapng file of a running VM's USB transfers until Ctrl-C. */
  | { command: 'capture'; socket: string; path: string; port: number | null; snapLength: number | null }
  /** stats: a live table of a running VM's counters per second. */
  | { command: 'stats'; socket: string; intervalMs: number; once: boolean; json: boolean };

/** Bounds of --stats-interval (the VM host samples at most every 100 ms). */
export const LIVE_STATS_MIN_MS = 100;
export const LIVE_STATS_MAX_MS = 60000;
const LIVE_STATS_DEFAULT_MS = 1000;

export const USAGE = `Usage: porthole run [options]
       porthole usb list --monitor PATH
       porthole usb add DEVICE [--port N] [--force] --monitor PATH (DEVICE: keyboard, tablet, storage:IMAGE, storage-ro:IMAGE, host:1-1.4)
       porthole usb host                      (the host's USB devices, for usb add host:NAME)
       porthole usb remove PORT --monitor PATH
       porthole cdrom VM list|insert ISO|eject [--drive NAME] [--force]   (VM: the --monitor socket)
       porthole pci [list] [--json]            (the host's PCI devices, IOMMU groups, whether each can be assigned)
       porthole pci assign CONFIG ADDR [--force]   (add a host PCI device to a VM config file's pciAssign)
       porthole pci return CONFIG ADDR          (take it out again)
       porthole usb rules CONFIG               (the auto-attach rules of a VM config file)
       porthole usb rule add CONFIG [--vid ID] [--pid ID] [--serial TEXT] [--class CODE]
                                    [--port-path 1-1.4] [--port N] [--force]
       porthole usb rule rm CONFIG N
       porthole keys KEY... --monitor PATH      (KEY: a, Enter, F5, ctrl+alt+Delete, ...)
       porthole keys --text TEXT --monitor PATH
       porthole capture VM -w FILE.pcapng [--port N] [--snaplen BYTES]
                                               (VM: the socket of run --monitor; Ctrl-C stops)
       porthole stats VM [--interval 1s] [--once] [--json]
                                               (a live table of the VM's counters per second)
       porthole --help | --version

Boot source (one of):
  --firmware PATH        SeaBIOS image (default: /usr/share/seabios/bios-256k.bin)
  --kernel PATH          Linux bzImage or vmlinux ELF, booted directly
    --initrd PATH        initial ramdisk for --kernel
    --append "ARGS"      kernel command line for --kernel
    --no-unpack-kernel   always run the bzImage's own decompressor (by default the
                         host unpacks a bzImage once, into ~/.cache/porthole/kernels,
                         and later boots enter the unpacked kernel: faster, no KASLR)
  --config FILE          a VM config file (JSON, version 1); other options override it

Machine:
  --mem SIZE             memory: 256 (MiB), 512M, 2G                (default 256)
  --cpus N               virtual CPUs                                (default 1)
  --name NAME            a name for logs
  --serial SPEC          connect the next COM port (COM1 first), or COMn=SPEC;
                         SPEC: stdio, pty, none, file:PATH, unix:PATH, unix-listen:PATH,
                         tcp:HOST:PORT, tcp-listen:[HOST:]PORT, /dev/ttyUSB0
  --debugcon SPEC        where the debug console (port 0x402, SeaBIOS log) goes
  --option-rom PATH      an extra option ROM for the firmware (repeatable)
  --usb DEVICE           an emulated USB device on an xHCI controller (repeatable):
                         keyboard, tablet, storage:IMAGE, storage-ro:IMAGE,
                         serial (a USB serial port on a pty) or serial:SPEC
                         (SPEC as for --serial)
  --nic [MODEL,][model=MODEL,][mac=52:54:00:XX:XX:XX][,BACKEND][,pcap=FILE]
                         a network card (repeatable); MODEL: virtio (virtio-net, the
                         default) or ne2k_pci (NE2000 PCI, RTL8029); BACKEND: tap=IFNAME (an
                         existing TAP), bridge=BR (a new TAP on bridge BR; needs
                         CAP_NET_ADMIN), socket=listen:PATH / socket=connect:PATH
                         (joins two VMs), udp=LHOST:LPORT/RHOST:RPORT; none: link down
  --pci-assign ADDR[,force]
                         give the VM a host PCI function through VFIO (repeatable;
                         bound to vfio-pci while the VM runs, given back after)
  --disk IMAGE[,ro][,bus=virtio|sata][,serial=TEXT][,name=NAME][,queues=N][,format=raw|qcow2]
                         a disk on a raw or qcow2 image (repeatable; locked while
                         the VM runs; ro: read-only; format: default detects qcow2
                         by its magic): virtio-blk (the default) or, with bus=sata,
                         a SATA disk on the AHCI controller
  --cdrom ISO[,name=NAME]
                         a CD/DVD-ROM drive on the AHCI controller with ISO in it
                         (repeatable); --cdrom empty: a drive with no disc
  --boot-from disk|cdrom what SeaBIOS boots first (default disk: hard disk, then CD)
  --monitor PATH         listen on a Unix socket (unix:PATH also works) where
                         "porthole usb" and "porthole keys" reach this VM
  --no-reboot            a guest reset ends the run (exit status 0), as QEMU's
                         -no-reboot; without it the VM restarts

Diagnostics:
  --stats                print VM exits by reason and by device when the VM ends
  --stats=live           that, and a line of the busiest counters per second on
                         stderr every second while the VM runs
  --stats-interval MS    print the live line every MS ms (100..60000)
  --verbose              print the VM's log lines
  --timings              print start-up milestones on stderr, in ms since process
                         start (e.g. first-kvm-run, first-console-byte)
  --debug-exit           QEMU-compatible isa-debug-exit device on port 0xf4 (tests)
  --flat PATH[@ADDR]     run a raw real-mode test program at ADDR (default 0x1000)
`;

/** An option's value: after "=" in the same argument (`inline`), else the next argument; with the index of the last argument used. */
function optionValue(argv: string[], i: number, flag: string, inline: string | undefined): [string, number] {
  if (inline !== undefined) return [inline, i];
  if (i + 1 >= argv.length) throw new UsageError(`${flag} needs a value`);
  return [argv[i + 1], i + 1];
}

const VALUE_FLAGS = new Set([
  '--firmware', '--kernel', '--initrd', '--append', '--config', '--mem', '--cpus', '--name', '--serial', '--debugcon',
  '--option-rom', '--flat', '--stats-interval', '--usb', '--monitor', '--disk', '--nic', '--cdrom', '--boot-from',
  '--pci-assign',
]);
/** Flags that stand alone or take a value after "=" (never the next argument). */
const OPTIONAL_VALUE_FLAGS = new Set(['--stats']);
const BOOL_FLAGS = new Set(['--verbose', '--timings', '--debug-exit', '--no-unpack-kernel', '--no-reboot']);

/** Splits argv into [flag, value] pairs, accepting --flag=value and --flag value. */
function tokenize(argv: string[]): [string, string | null][] {
  const out: [string, string | null][] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new UsageError(`unexpected argument "${a}"`);
    const eq = a.indexOf('=');
    const flag = eq < 0 ? a : a.slice(0, eq);
    if (OPTIONAL_VALUE_FLAGS.has(flag)) {
      out.push([flag, eq >= 0 ? a.slice(eq + 1) : null]);
    } else if (BOOL_FLAGS.has(flag)) {
      if (eq >= 0) throw new UsageError(`${flag} takes no value`);
      out.push([flag, null]);
    } else if (VALUE_FLAGS.has(flag)) {
      let value: string;
      [value, i] = optionValue(argv, i, flag, eq >= 0 ? a.slice(eq + 1) : undefined);
      out.push([flag, value]);
    } else {
      throw new UsageError(`unknown option ${flag} (see porthole --help)`);
    }
  }
  return out;
}

/**
 * Parses the command line. `readConfig` loads a config file (injected so tests need no files).
 */
export function parseArgs(argv: string[], readConfig: (file: string) => unknown): CliCommand {
  if (argv.length === 0 || argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help') return { command: 'help' };
  if (argv[0] === '--version' || argv[0] === '-V') return { command: 'version' };
  if (argv[0] === 'usb' && argv[1] === 'host') {
    if (argv.length > 2) throw new UsageError('porthole usb host takes no arguments (it lists the host\'s USB devices)');
    return { command: 'usb-host' };
  }
  if (argv[0] === 'pci' && (argv[1] === 'assign' || argv[1] === 'return')) return parsePciAssignCommand(argv);
  if (argv[0] === 'pci') {
    const rest = argv.slice(argv[1] === 'list' ? 2 : 1);
    const bad = rest.find((a) => a !== '--json');
    if (bad !== undefined) throw new UsageError(`porthole pci takes list, assign or return, and --json, not "${bad}"`);
    return { command: 'pci', json: rest.length > 0 };
  }
  if (argv[0] === 'usb' && (argv[1] === 'rules' || argv[1] === 'rule')) return parseRulesCommand(argv);
  if (argv[0] === 'usb' || argv[0] === 'keys') return parseMonitorCommand(argv);
  if (argv[0] === 'capture') return parseCaptureCommand(argv);
  if (argv[0] === 'stats') return parseStatsCommand(argv);
  if (argv[0] === 'cdrom') return parseCdromCommand(argv);
  if (argv[0] !== 'run') throw new UsageError(`unknown command "${argv[0]}" (try: porthole run --help)`);
  const rest = argv.slice(1);
  if (rest.includes('--help') || rest.includes('-h')) return { command: 'help' };
  const pairs = tokenize(rest);

  let config: MachineConfig = defaultConfig();
  const configFlag = pairs.filter(([f]) => f === '--config');
  if (configFlag.length > 1) throw new UsageError('--config may be given once');
  if (configFlag.length === 1) {
    const file = configFlag[0][1] as string;
    config = machineConfigFromJson(readConfig(file), file);
  }

  let stats = false;
  let liveStatsMs: number | null = null;
  let liveStatsInterval: number | null = null;
  let verbose = false;
  let timings = false;
  let unpackKernel = true;
  let noReboot = false;
  let nextSerial = 0;
  let kernel: string | undefined;
  let initrd: string | undefined;
  let append: string | undefined;
  let firmware: string | undefined;
  let bootFrom: 'disk' | 'cdrom' | undefined;
  let flat: { path: string; address: number } | undefined;
  const optionRoms: string[] = [];
  const usbDevices: UsbDeviceConfig[] = [];
  const disks: DiskConfig[] = [];
  const nics: NicConfig[] = [];
  const pciAssign: PciAssignConfig[] = [];
  let monitor: string | null = null;

  for (const [flag, value] of pairs) {
    const v = value as string;
    switch (flag) {
      case '--config': break;
      case '--stats':
        if (value === null || value === 'end') stats = true;
        else if (value === 'live') {
          stats = true;
          liveStatsMs = LIVE_STATS_DEFAULT_MS;
        } else throw new UsageError(`--stats takes no value except "live" or "end" (got "${value}")`);
        break;
      case '--stats-interval': {
        const ms = Number(v);
        if (!Number.isInteger(ms) || ms < LIVE_STATS_MIN_MS || ms > LIVE_STATS_MAX_MS) {
          throw new UsageError(`--stats-interval: "${v}" is not a whole number of ms from ${LIVE_STATS_MIN_MS} to ${LIVE_STATS_MAX_MS}`);
        }
        liveStatsInterval = ms;
        break;
      }
      case '--verbose': verbose = true; break;
      case '--timings': timings = true; break;
      case '--no-unpack-kernel': unpackKernel = false; break;
      case '--no-reboot': noReboot = true; break;
      case '--debug-exit': config.debugExit = true; break;
      case '--mem': config.memoryBytes = parseMemorySize(v); break;
      case '--cpus': config.cpus = parseCpus(v, '--cpus'); break;
      case '--name':
        if (!v.trim()) throw new UsageError('--name must not be empty');
        config.name = v;
        break;
      case '--firmware': firmware = nonEmpty(flag, v); break;
      case '--kernel': kernel = nonEmpty(flag, v); break;
      case '--initrd': initrd = nonEmpty(flag, v); break;
      case '--append': append = v; break;
      case '--option-rom': optionRoms.push(nonEmpty(flag, v)); break;
      case '--usb': usbDevices.push(parseUsbDevice(v)); break;
      case '--disk': disks.push(parseDisk(v)); break;
      case '--nic': nics.push(parseNic(v)); break;
      case '--pci-assign': pciAssign.push(parsePciAssign(v)); break;
      case '--cdrom': disks.push(parseCdrom(v === 'empty' ? '' : v)); break;
      case '--boot-from':
        if (v !== 'disk' && v !== 'cdrom') throw new UsageError(`--boot-from takes disk or cdrom, not "${v}"`);
        bootFrom = v;
        break;
      case '--monitor': monitor = socketPath(v); break;
      case '--debugcon': config.debugcon = parseSerialBackend(v); break;
      case '--flat': flat = parseFlat(v); break;
      case '--serial': {
        const m = /^com([1-4])=(.*)$/i.exec(v);
        if (m) {
          const index = Number(m[1]) - 1;
          config.serial[index] = parseSerialBackend(m[2]);
          nextSerial = Math.max(nextSerial, index + 1);
        } else {
          if (nextSerial >= 4) throw new UsageError('at most four --serial ports (COM1..COM4)');
          config.serial[nextSerial++] = parseSerialBackend(v);
        }
        break;
      }
    }
  }

  const sources = [kernel && '--kernel', firmware && '--firmware', flat && '--flat'].filter(Boolean);
  if (sources.length > 1) throw new UsageError(`choose one boot source, not ${sources.join(' and ')}`);
  if ((initrd !== undefined || append !== undefined) && !kernel && config.boot.kind !== 'linux') {
    throw new UsageError('--initrd and --append need --kernel');
  }
  if (kernel) config.boot = { kind: 'linux', kernel, initrd, append: append ?? '' };
  else if (config.boot.kind === 'linux') {
    if (initrd !== undefined) config.boot.initrd = initrd;
    if (append !== undefined) config.boot.append = append;
  }
  if (firmware) config.boot = { kind: 'firmware', path: firmware };
  if (bootFrom !== undefined) {
    if (config.boot.kind !== 'firmware') throw new UsageError('--boot-from is for firmware boots (SeaBIOS), not --kernel or --flat');
    config.boot.bootFrom = bootFrom;
  }
  if (flat) config.boot = { kind: 'flat', ...flat };
  if (optionRoms.length) config.optionRoms = [...config.optionRoms, ...optionRoms];
  if (usbDevices.length) {
    const devices = [...(config.usb?.devices ?? []), ...usbDevices];
    if (devices.length > USB_MAX_DEVICES) throw new UsageError(`at most ${USB_MAX_DEVICES} USB devices (the controller has 8 ports)`);
    config.usb = { controller: 'xhci', devices };
  }

  if (disks.length) config.disks = checkDisks([...(config.disks ?? []), ...disks], '--disk/--cdrom');
  if (nics.length) config.nics = checkNics([...(config.nics ?? []), ...nics], '--nic');
  if (pciAssign.length) config.pciAssign = checkPciAssign([...(config.pciAssign ?? []), ...pciAssign], '--pci-assign');

  const stdioPorts = [...config.serial, config.debugcon].filter((s) => s.kind === 'stdio').length;
  if (stdioPorts > 1) throw new UsageError('only one port can be connected to stdio');
  if (liveStatsInterval !== null) liveStatsMs = liveStatsInterval;
  return { command: 'run', config, stats, liveStatsMs, verbose, timings, unpackKernel, monitor, noReboot };
}

/** "unix:PATH" or PATH. */
function socketPath(v: string): string {
  const p = v.startsWith('unix:') ? v.slice(5) : v;
  if (p.trim() === '') throw new UsageError('--monitor needs a socket path, e.g. --monitor unix:/tmp/vm.sock');
  return p;
}

/** The API validators' refusal as a usage error (the same words the API gives). */
function checked<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof ApiError) throw new UsageError(e.message.replace(/\.$/, ''));
    throw e;
  }
}

/** porthole stats' refresh period: 100 ms (10 Hz) to 60 s, 1 s by default. */
export const STATS_MIN_MS = 100;
export const STATS_MAX_MS = 60000;
const STATS_DEFAULT_MS = 1000;

/** "100ms", "1s", "2.5s" or plain milliseconds ("250") → milliseconds; refuses the rest. */
export function parseInterval(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s)?$/.exec(text.trim());
  const ms = m ? Number(m[1]) * (m[2] === 's' ? 1000 : 1) : NaN;
  if (!Number.isFinite(ms) || ms < STATS_MIN_MS || ms > STATS_MAX_MS) {
    throw new UsageError(`--interval takes ${STATS_MIN_MS}ms to ${STATS_MAX_MS / 1000}s (e.g. 100ms, 500ms, 2s), not "${text}"`);
  }
  return Math.round(ms);
}

/**
 * `porthole cdrom VM list`, `cdrom VM insert ISO [--drive NAME] [--force]`, `cdrom VM eject
 * [--drive NAME] [--force]`; VM is a monitor socket (or --monitor PATH).
 */
function parseCdromCommand(argv: string[]): CliCommand {
  let socket: string | null = null;
  let drive: string | undefined;
  let force = false;
  const words: string[] = [];
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--help') return { command: 'help' };
    if (!a.startsWith('--')) {
      words.push(a);
      continue;
    }
    if (a === '--force') { force = true; continue; }
    const eq = a.indexOf('=');
    const flag = eq >= 0 ? a.slice(0, eq) : a;
    if (flag !== '--drive' && flag !== '--monitor') throw new UsageError(`unknown option ${flag} (porthole cdrom takes --drive, --force, --monitor)`);
    let value: string;
    [value, i] = optionValue(argv, i, flag, eq >= 0 ? a.slice(eq + 1) : undefined);
    if (flag === '--monitor') socket = socketPath(value);
    else drive = value;
  }
  // The VM comes first unless --monitor named it.
  if (socket === null) {
    const vm = words.shift();
    if (vm === undefined) throw new UsageError('porthole cdrom needs a VM: the socket of porthole run --monitor PATH');
    socket = socketPath(vm);
  }
  const [sub, ...rest] = words;
  const options = { ...(drive === undefined ? {} : { drive }), ...(force ? { force } : {}) };
  switch (sub) {
    case 'list':
      if (rest.length > 0 || drive !== undefined || force) throw new UsageError('porthole cdrom VM list takes no arguments');
      return { command: 'monitor', socket, method: 'listCdromDrives', args: [] };
    case 'insert':
      if (rest.length !== 1) throw new UsageError('porthole cdrom VM insert takes one ISO image');
      // The VM process may run elsewhere in the file system: send an absolute path.
      return { command: 'monitor', socket, method: 'insertCdrom', args: [checked(() => parseCdromInsertSpec({ path: path.resolve(rest[0]), ...options }))] };
    case 'eject':
      if (rest.length > 0) throw new UsageError('porthole cdrom VM eject takes no arguments but --drive NAME and --force');
      return { command: 'monitor', socket, method: 'ejectCdrom', args: [checked(() => parseCdromEjectSpec(options))] };
    case undefined:
      throw new UsageError('porthole cdrom VM needs list, insert ISO or eject');
    default:
      throw new UsageError(`porthole cdrom VM ${sub}: use list, insert ISO or eject`);
  }
}

/** `porthole stats VM [--interval T] [--once] [--json]`; VM is a monitor socket (or --monitor PATH). */
function parseStatsCommand(argv: string[]): CliCommand {
  let socket: string | null = null;
  let intervalMs = STATS_DEFAULT_MS;
  let once = false;
  let json = false;
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--help') return { command: 'help' };
    if (!a.startsWith('-')) {
      if (socket !== null) throw new UsageError(`porthole stats takes one VM (its monitor socket), not also ${a}`);
      socket = socketPath(a);
      continue;
    }
    if (a === '--once') { once = true; continue; }
    if (a === '--json') { json = true; continue; }
    const eq = a.indexOf('=');
    const flag = a.startsWith('--') && eq >= 0 ? a.slice(0, eq) : a;
    if (!['--interval', '--monitor'].includes(flag)) throw new UsageError(`unknown option ${flag} (porthole stats takes --interval, --once, --json, --monitor)`);
    let value: string;
    [value, i] = optionValue(argv, i, flag, a.startsWith('--') && eq >= 0 ? a.slice(eq + 1) : undefined);
    if (flag === '--monitor') socket = socketPath(value);
    else intervalMs = parseInterval(value);
  }
  if (socket === null) throw new UsageError('porthole stats needs a VM: the socket of porthole run --monitor PATH');
  return { command: 'stats', socket, intervalMs, once, json };
}

/** `porthole capture VM -w FILE [--port N] [--snaplen BYTES]`; VM is a monitor socket (or --monitor PATH). */
function parseCaptureCommand(argv: string[]): CliCommand {
  let socket: string | null = null;
  let file: string | null = null;
  let port: number | null = null;
  let snapLength: number | null = null;
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--help') return { command: 'help' };
    if (!a.startsWith('-')) {
      if (socket !== null) throw new UsageError(`porthole capture takes one VM (its monitor socket), not also ${a}`);
      socket = socketPath(a);
      continue;
    }
    const eq = a.indexOf('=');
    const flag = a.startsWith('--') && eq >= 0 ? a.slice(0, eq) : a;
    if (!['-w', '--write', '--port', '--snaplen', '--monitor'].includes(flag)) throw new UsageError(`unknown option ${flag} (see porthole --help)`);
    let value: string;
    [value, i] = optionValue(argv, i, flag, a.startsWith('--') && eq >= 0 ? a.slice(eq + 1) : undefined);
    if (flag === '-w' || flag === '--write') file = nonEmpty(flag, value);
    else if (flag === '--monitor') socket = socketPath(value);
    else if (flag === '--port') port = checked(() => parseUsbPort(/^\d+$/.test(value) ? Number(value) : NaN));
    else {
      if (!/^\d+$/.test(value) || Number(value) > USB_CAPTURE_MAX_SNAP) throw new UsageError(`--snaplen takes 0 to ${USB_CAPTURE_MAX_SNAP} bytes`);
      snapLength = Number(value);
    }
  }
  if (socket === null) throw new UsageError('porthole capture needs a VM: the socket of porthole run --monitor PATH');
  if (file === null) throw new UsageError('porthole capture needs -w FILE.pcapng');
  // The VM process writes the file: give it an absolute path.
  return { command: 'capture', socket, path: path.resolve(file), port, snapLength };
}

/**
 * `porthole usb list|add|remove` and `porthole keys`: positional words plus --monitor PATH
 * (and --port N for add, --text TEXT for keys). Arguments are checked here with the API's
 * validators, and again by the VM.
 */
function parseMonitorCommand(argv: string[]): CliCommand {
  const words: string[] = [];
  let socket: string | null = null;
  let port: string | null = null;
  let text: string | null = null;
  let force = false;
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i];
    const eq = a.indexOf('=');
    const flag = a.startsWith('--') ? (eq < 0 ? a : a.slice(0, eq)) : null;
    if (flag === null || a === '--') {
      words.push(...(a === '--' ? argv.slice(i + 1) : [a]));
      if (a === '--') break;
      continue;
    }
    if (flag === '--help') return { command: 'help' };
    if (a === '--force') {
      force = true;
      continue;
    }
    if (flag !== '--monitor' && flag !== '--port' && flag !== '--text') throw new UsageError(`unknown option ${flag} (see porthole --help)`);
    let value: string;
    [value, i] = optionValue(argv, i, flag, eq >= 0 ? a.slice(eq + 1) : undefined);
    if (flag === '--monitor') socket = socketPath(value);
    else if (flag === '--port') port = value;
    else text = value;
  }
  if (socket === null) throw new UsageError(`porthole ${argv[0]} needs --monitor PATH (the socket of porthole run --monitor PATH)`);
  if (force && !(argv[0] === 'usb' && words[0] === 'add' && words[1]?.startsWith('host:'))) {
    throw new UsageError('--force is for porthole usb add host:DEVICE');
  }
  if (argv[0] === 'keys') {
    if (port !== null) throw new UsageError('--port is for porthole usb add');
    if (text !== null && words.length > 0) throw new UsageError('give key names or --text, not both');
    if (text === null && words.length === 0) throw new UsageError('porthole keys needs key names (a, Enter, ctrl+alt+Delete) or --text TEXT');
    const keys = text !== null ? { text } : words;
    checked(() => parseUsbKeys(keys));
    return { command: 'monitor', socket, method: 'sendUsbKeys', args: [keys] };
  }
  if (text !== null) throw new UsageError('--text is for porthole keys');
  const [sub, ...rest] = words;
  const expect = (n: number, what: string) => {
    if (rest.length !== n) throw new UsageError(`porthole usb ${sub} takes ${what}`);
  };
  switch (sub) {
    case 'list':
      expect(0, 'no arguments');
      if (port !== null) throw new UsageError('--port is for porthole usb add');
      return { command: 'monitor', socket, method: 'listUsbPorts', args: [] };
    case 'add': {
      expect(1, 'one device: keyboard, tablet, storage:IMAGE, storage-ro:IMAGE, serial, serial:SPEC or host:DEVICE');
      if (rest[0].startsWith('host:')) {
        const spec: Record<string, unknown> = { device: rest[0].slice(5) };
        if (port !== null) spec.port = /^\d+$/.test(port) ? Number(port) : port;
        if (force) spec.force = true;
        return { command: 'monitor', socket, method: 'attachHostUsbDevice', args: [checked(() => parseHostUsbAttachSpec(spec))] };
      }
      const device: Record<string, unknown> = { ...parseUsbDevice(rest[0]) };
      // The VM process may run elsewhere in the file system: send an absolute path.
      if (device.kind === 'storage') device.path = path.resolve(device.path as string);
      if (device.kind === 'serial') device.backend = absoluteSerialBackend(device.backend as string);
      if (port !== null) {
        const n = Number(port);
        device.port = /^\d+$/.test(port) ? n : port;
      }
      return { command: 'monitor', socket, method: 'attachUsbDevice', args: [checked(() => parseUsbDeviceSpec(device))] };
    }
    case 'remove': {
      expect(1, 'one port number (see porthole usb list)');
      if (port !== null) throw new UsageError('--port is for porthole usb add');
      const n = /^\d+$/.test(rest[0]) ? Number(rest[0]) : NaN;
      return { command: 'monitor', socket, method: 'detachUsbDevice', args: [checked(() => parseUsbPort(n))] };
    }
    case undefined:
      throw new UsageError('porthole usb needs list, add or remove');
    default:
      throw new UsageError(`porthole usb ${sub}: use list, add or remove`);
  }
}

const RULE_FLAGS: Record<string, string> = {
  '--vid': 'vendorId', '--pid': 'productId', '--serial': 'serial', '--class': 'classCode', '--port-path': 'portPath', '--port': 'port',
};

/** `porthole usb rules FILE`, `usb rule add FILE --vid ID ...`, `usb rule rm FILE N`. */
function parseRulesCommand(argv: string[]): CliCommand {
  const words: string[] = [];
  const values = new Map<string, string>();
  let force = false;
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--help') return { command: 'help' };
    if (!a.startsWith('--')) {
      words.push(a);
      continue;
    }
    if (a === '--force') {
      force = true;
      continue;
    }
    const eq = a.indexOf('=');
    const flag = eq < 0 ? a : a.slice(0, eq);
    if (!(flag in RULE_FLAGS)) throw new UsageError(`unknown option ${flag} for porthole usb rule (use --vid, --pid, --serial, --class, --port-path, --port, --force)`);
    let value: string;
    [value, i] = optionValue(argv, i, flag, eq >= 0 ? a.slice(eq + 1) : undefined);
    if (values.has(flag)) throw new UsageError(`${flag} may be given once`);
    values.set(flag, value);
  }
  if (argv[1] === 'rules') {
    if (words.length !== 1 || values.size > 0 || force) throw new UsageError('porthole usb rules takes one VM config file');
    return { command: 'usb-rules', file: words[0], action: { op: 'list' } };
  }
  const [sub, file, ...rest] = words;
  if (sub === 'add') {
    if (file === undefined || rest.length > 0) throw new UsageError('porthole usb rule add takes one VM config file and --vid, --pid, --serial, --class or --port-path');
    const match: Record<string, unknown> = {};
    const rule: Record<string, unknown> = { match };
    for (const [flag, value] of values) {
      if (flag === '--port') rule.port = /^\d+$/.test(value) ? Number(value) : value;
      else match[RULE_FLAGS[flag]] = value;
    }
    if (force) rule.force = true;
    try {
      return { command: 'usb-rules', file, action: { op: 'add', rule: usbRuleFromJson(rule, 'the rule') } };
    } catch (e) {
      if (e instanceof UsbRuleError) throw new UsageError(e.message.replace(/the rule\.match\.(\w+)/, (_, f: string) => `--${ruleFlagOf(f)}`).replace(/the rule\.port/, '--port'));
      throw e;
    }
  }
  if (sub === 'rm' || sub === 'remove') {
    if (file === undefined || rest.length !== 1 || !/^\d+$/.test(rest[0]) || values.size > 0 || force) {
      throw new UsageError('porthole usb rule rm takes one VM config file and a rule number (see porthole usb rules FILE)');
    }
    return { command: 'usb-rules', file, action: { op: 'remove', index: Number(rest[0]) } };
  }
  throw new UsageError('porthole usb rule needs add or rm');
}

function ruleFlagOf(field: string): string {
  const flag = Object.entries(RULE_FLAGS).find(([, f]) => f === field)?.[0];
  return flag === undefined ? field : flag.slice(2);
}

function nonEmpty(flag: string, v: string): string {
  if (!v.trim()) throw new UsageError(`${flag} needs a path`);
  return v;
}

function parseFlat(v: string): { path: string; address: number } {
  const at = v.lastIndexOf('@');
  if (at < 0) return { path: nonEmpty('--flat', v), address: 0x1000 };
  const addressText = v.slice(at + 1);
  const address = Number(addressText);
  if (!Number.isInteger(address) || address < 0) throw new UsageError(`--flat: "${addressText}" is not an address`);
  return { path: nonEmpty('--flat', v.slice(0, at)), address };
}

export function isUserError(e: unknown): e is Error {
  return e instanceof UsageError || e instanceof ConfigError;
}

/** A serial backend whose file or socket path is absolute (the VM process may have another working directory). */
function absoluteSerialBackend(text: string): string {
  const m = /^(file|unix|unix-listen):(.+)$/.exec(text);
  return m ? `${m[1]}:${path.resolve(m[2])}` : text;
}

/** porthole pci assign CONFIG ADDR [--force] / pci return CONFIG ADDR (PCI assignment, issue 11 item 6). */
function parsePciAssignCommand(argv: string[]): CliCommand {
  const op = argv[1] as 'assign' | 'return';
  const words = argv.slice(2).filter((a) => a !== '--force');
  const force = argv.length - 2 !== words.length;
  const flag = words.find((a) => a.startsWith('-'));
  if (flag !== undefined) throw new UsageError(`unknown option ${flag} for porthole pci ${op}${op === 'assign' ? ' (only --force)' : ''}`);
  if (words.length !== 2) throw new UsageError(`porthole pci ${op} takes a VM config file and a PCI address, e.g. porthole pci ${op} vm.json 0000:01:00.0`);
  if (op === 'return' && force) throw new UsageError('porthole pci return takes no --force');
  const address = pciAddressOf(words[1]);
  if (address === null) throw new UsageError(`"${words[1]}" is not a PCI address like 0000:01:00.0 or 01:00.0 (see porthole pci list)`);
  return { command: 'pci-assign', file: words[0], action: op === 'assign' ? { op, address, force } : { op, address } };
}
