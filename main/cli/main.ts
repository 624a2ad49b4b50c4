// `porthole`: runs one VM in this process. Errors a user can fix are one line on
// stderr and a non-zero exit; nothing here prints a stack trace for them.
import fs from 'node:fs';
import path from 'node:path';
import { ConfigError } from '../vmm/config';
import type { MachineEnd, MachineStats } from '../vmm/machine/machine';
import { epochMs } from '../vmm/shared/control';
import { VmHost } from '../vmm/host/vm-host';
import { isUserError, parseArgs, USAGE } from './args';
import { formatStats, printLiveStats } from './stats';
import { formatStatsTable, ratesBetween, statsJsonLine } from './stats-table';
import { formatUsbPorts, MonitorError, monitorCall, monitorCapture, type MonitorServer, startMonitor } from './monitor';
import type { UsbPortState } from '../vmm/shared/usb-messages';
import type { CdromDriveInfo } from '../api/contract';
import type { StatsSample } from '../vmm/shared/stats';
import { formatHostUsbDevices, listSysfsUsbDevices } from '../host/usb-inventory';
import { formatPciDevices, listPciDevices, pciSummary } from '../host/pci-inventory';
import { UsbJournal } from '../host/usb-journal';
import { dataDir } from '../manager/app-paths';
import { runUsbRulesAction } from './usb-rules-file';
import { runPciAssignAction } from './pci-assign-file';

const RING_NAMES = ['COM1', 'COM2', 'COM3', 'COM4', 'debugcon'];

function readConfigFile(file: string): unknown {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(`cannot read config file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`config file ${file} is not valid JSON: ${(e as Error).message}`);
  }
}

/** Why /dev/kvm cannot be used, as a sentence with the fix, or null. */
export function kvmAccessProblem(device = '/dev/kvm'): string | null {
  try {
    fs.accessSync(device, fs.constants.R_OK | fs.constants.W_OK);
    return null;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      return `${device} does not exist: enable virtualization (VT-x/AMD-V) in the firmware settings and load kvm_intel or kvm_amd`;
    }
    if (code === 'EACCES' || code === 'EPERM') {
      return `cannot open ${device}: ${code} (permission denied); add yourself to the kvm group (sudo usermod -aG kvm $USER) and log in again`;
    }
    return `cannot open ${device}: ${code ?? (e as Error).message}`;
  }
}

function packageVersion(): string {
  try {
    const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', '..', 'package.json'), 'utf8')) as { version: string };
    return pkg.version;
  } catch {
    return 'unknown';
  }
}

/**
 * One start-up milestone: ms since this process started, and the wall clock, so a caller
 * that spawned us can line it up with its own clock (npm run bench -- boot does).
 */
export function formatTiming(label: string, at: number, processStart = performance.timeOrigin): string {
  return `porthole: timing: ${label} +${(at - processStart).toFixed(1)} ms (epoch ${at.toFixed(1)})\n`;
}

function printTiming(label: string, at: number): void {
  process.stderr.write(formatTiming(label, at));
}

function exitCodeFor(end: MachineEnd): number {
  switch (end.reason) {
    case 'poweroff': return end.exitCode;
    case 'stopped': return 0;
    case 'reset': return 0;
    case 'error': return 1;
  }
}

/** What bin/porthole saw before this module loaded. */
export interface LaunchInfo {
  /** Wall clock (epoch ms) when node had started, before Porthole's modules were loaded. */
  nodeReadyAt?: number;
}

export async function main(argv: string[], launch: LaunchInfo = {}): Promise<number> {
  let command;
  try {
    command = parseArgs(argv, readConfigFile);
  } catch (e) {
    if (isUserError(e)) {
      process.stderr.write(`porthole: ${e.message}\n`);
      return 2;
    }
    throw e;
  }
  if (command.command === 'help') {
    process.stdout.write(USAGE);
    return 0;
  }
  if (command.command === 'version') {
    process.stdout.write(`porthole ${packageVersion()}\n`);
    return 0;
  }
  if (command.command === 'monitor') return runMonitorCommand(command.socket, command.method, command.args);
  if (command.command === 'usb-host') {
    process.stdout.write(formatHostUsbDevices(listSysfsUsbDevices()));
    return 0;
  }
  if (command.command === 'pci') {
    const held = new Map(new UsbJournal(dataDir()).read().pci.map((e) => [e.address, `${e.vm} (process ${e.pid})`]));
    const list = listPciDevices().map((d) => pciSummary(d, held.get(d.address) ?? null));
    process.stdout.write(command.json ? `${JSON.stringify(list, null, 2)}\n` : formatPciDevices(list));
    return 0;
  }
  if (command.command === 'pci-assign') {
    try {
      process.stdout.write(runPciAssignAction(command.file, command.action));
      return 0;
    } catch (e) {
      if (!isUserError(e)) throw e;
      process.stderr.write(`porthole: ${e.message}\n`);
      return 1;
    }
  }
  if (command.command === 'usb-rules') {
    try {
      process.stdout.write(runUsbRulesAction(command.file, command.action));
      return 0;
    } catch (e) {
      if (!isUserError(e)) throw e;
      process.stderr.write(`porthole: ${e.message}\n`);
      return 1;
    }
  }
  if (command.command === 'capture') return runCaptureCommand(command);
  if (command.command === 'stats') return runStatsCommand(command);
  const problem = kvmAccessProblem();
  if (problem) {
    process.stderr.write(`porthole: ${problem}\n`);
    return 1;
  }
  const { config, stats, liveStatsMs, verbose, timings, unpackKernel, monitor, noReboot } = command;
  if (timings) {
    if (launch.nodeReadyAt !== undefined) printTiming('node-ready', launch.nodeReadyAt);
    printTiming('cli', epochMs());
  }
  const host = new VmHost(config, { unpackKernel, noReboot });
  if (timings) host.on('timing', (t) => printTiming(t.label, t.epochMs));
  host.on('endpoint', (ring, description) => {
    if (description !== 'stdio') process.stderr.write(`porthole: ${RING_NAMES[ring]} is ${description}\n`);
  });
  host.on('usbSerialEndpoint', (index, description) => {
    if (description !== 'stdio') process.stderr.write(`porthole: ${index >= 0 ? `usb.devices[${index}] (serial)` : 'a USB serial port'} is ${description}\n`);
  });
  if (verbose) host.on('log', (line) => process.stderr.write(`porthole: ${line}\n`));
  // The registry's samples (no vCPU is kicked for them); the last one feeds the end table.
  let lastSample: StatsSample | null = null;
  host.on('stats', (sample) => { lastSample = sample; });
  if (liveStatsMs !== null) {
    host.statsIntervalMs = liveStatsMs;
    printLiveStats(host, (line) => process.stderr.write(line));
  }

  const ended = new Promise<[MachineEnd, MachineStats]>((resolve) => host.once('ended', (end, s) => resolve([end, s])));
  const onSignal = () => void host.stop();
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('SIGHUP', onSignal);
  // SIGUSR2 logs where vCPU 0 is (with --verbose): for a guest that stops making progress.
  process.on('SIGUSR2', () => host.dumpVcpus());
  // The control socket comes first: a path that cannot be used stops us before the VM starts.
  let monitorServer: MonitorServer | null = null;
  if (monitor !== null) {
    try {
      monitorServer = await startMonitor(monitor, host, (line) => { if (verbose) process.stderr.write(`porthole: ${line}\n`); });
    } catch (e) {
      process.stderr.write(`porthole: ${(e as Error).message}\n`);
      return 1;
    }
  }
  try {
    await host.start();
  } catch (e) {
    monitorServer?.close();
    process.stderr.write(`porthole: ${(e as Error).message}\n`);
    return 1;
  }
  const [end, machineStats] = await ended;
  await host.hostUsbReleased;
  monitorServer?.close();
  if (end.reason === 'error') process.stderr.write(`porthole: the VM stopped with an error: ${end.message}\n`);
  if (end.reason === 'reset' && noReboot) process.stderr.write(`porthole: guest reset${end.cause ? ` (${end.cause})` : ''}; --no-reboot ends the run\n`);
  if (stats) process.stderr.write(formatStats(machineStats, lastSample));
  return exitCodeFor(end);
}

export interface CliOutput {
  out(text: string): void;
  err(text: string): void;
}

const STDIO: CliOutput = { out: (t) => process.stdout.write(t), err: (t) => process.stderr.write(t) };

/** One request to a running VM's control socket (porthole usb, porthole keys); prints its answer. */
/** One line per CD-ROM drive: name, SATA port, the disc (or none), lock and tray. */
export function formatCdromDrives(drives: CdromDriveInfo[]): string {
  return drives.map((d) => `${d.drive}  sata port ${d.port}  ${d.path ?? (d.trayOpen ? '(no disc, tray open)' : '(no disc)')}${d.locked ? '  locked by the guest' : ''}\n`).join('');
}

export async function runMonitorCommand(
  socket: string, method: Parameters<typeof monitorCall>[1], args: unknown[], io: CliOutput = STDIO,
): Promise<number> {
  let value: unknown;
  try {
    value = await monitorCall(socket, method, args);
  } catch (e) {
    if (e instanceof MonitorError) {
      io.err(`porthole: ${e.message}\n`);
      return 1;
    }
    throw e;
  }
  if (method === 'listUsbPorts') io.out(formatUsbPorts(value as UsbPortState[]));
  else if (method === 'attachUsbDevice' || method === 'attachHostUsbDevice') io.out(formatUsbPorts([value as UsbPortState]));
  else if (method === 'listCdromDrives' || method === 'insertCdrom' || method === 'ejectCdrom') io.out(formatCdromDrives(value as CdromDriveInfo[]));
  return 0;
}

/** `porthole capture`: the VM writes the file; Ctrl-C (or SIGTERM) stops the capture cleanly. */
export async function runCaptureCommand(
  command: { socket: string; path: string; port: number | null; snapLength: number | null }, io: CliOutput = STDIO,
): Promise<number> {
  let stop = (): void => {};
  const stopped = new Promise<void>((resolve) => { stop = resolve; });
  const onSignal = (): void => stop();
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const spec = { path: command.path, port: command.port, ...(command.snapLength === null ? {} : { snapLength: command.snapLength }) };
    const { summary, vmGone } = await monitorCapture(command.socket, spec, stopped, (s) => {
      io.err(`porthole: capturing USB${s.port === null ? '' : ` port ${s.port}`} to ${s.path} (Ctrl-C stops)\n`);
    });
    if (summary !== null) {
      const dropped = summary.dropped > 0 ? `, ${summary.dropped} records dropped (the VM's channel was full)` : '';
      io.err(vmGone
        ? `porthole: the VM ended; ${summary.path} is complete\n`
        : `porthole: ${summary.packets} packets, ${summary.bytes} bytes written to ${summary.path}${dropped}\n`);
    }
    return 0;
  } catch (e) {
    if (e instanceof MonitorError) {
      io.err(`porthole: ${e.message}\n`);
      return 1;
    }
    throw e;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/**
 * `porthole stats VM`: reads the VM's counter totals every interval through its monitor socket
 * and prints the rates: a table redrawn in place on a terminal (one after another otherwise),
 * one table with --once, JSON lines with --json. Ends on Ctrl-C or when the VM does.
 */
export async function runStatsCommand(
  command: { socket: string; intervalMs: number; once: boolean; json: boolean },
  io: CliOutput & { isTty?: boolean } = { ...STDIO, isTty: process.stdout.isTTY === true },
  read: () => Promise<StatsSample> = async () => await monitorCall(command.socket, 'getVmStats', []) as StatsSample,
): Promise<number> {
  let stopped = false;
  let wake = (): void => {};
  const onSignal = (): void => {
    stopped = true;
    wake();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const pause = (ms: number) => new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    wake = () => {
      clearTimeout(timer);
      resolve();
    };
  });
  try {
    let previous: StatsSample;
    try {
      previous = await read();
    } catch (e) {
      if (e instanceof MonitorError) {
        io.err(`porthole: ${e.message}
`);
        return 1;
      }
      throw e;
    }
    const title = `porthole stats ${command.socket}`;
    let next = Date.now() + command.intervalMs;
    while (!stopped) {
      await pause(Math.max(0, next - Date.now()));
      if (stopped) break;
      next += command.intervalMs;
      let reading: StatsSample;
      try {
        reading = await read();
      } catch (e) {
        if (!(e instanceof MonitorError)) throw e;
        io.err(`porthole: the VM at ${command.socket} is gone (${e.message})
`);
        return 0;
      }
      const sample = ratesBetween(previous, reading);
      previous = reading;
      if (command.json) io.out(statsJsonLine(sample));
      else io.out(`${io.isTty === true && !command.once ? '\x1b[H\x1b[2J' : ''}${formatStatsTable(sample, title)}${io.isTty === true || command.once ? '' : '\n'}`);
      if (command.once) break;
    }
    return 0;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e: Error) => {
      process.stderr.write(`porthole: internal error: ${e.stack ?? e.message}\n`);
      process.exit(70);
    },
  );
}
