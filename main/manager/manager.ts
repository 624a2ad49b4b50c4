// The VM manager: the contract's backend (api/session.ts). Holds every VM of the library
// and what it has between runs (log, console scroll-back, last exit), starts one run per
// VM (vm-run.ts: the per-run state machine over the process link, vm-process-link.ts),
// and hands statistics samples to their watchers (stats-fanout.ts). Runs in Electron's
// main process or in plain Node (browser mode).
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import {
  ApiError, CONSOLE_PORTS, LIMITS,
  type AppInfo, type CdromDriveInfo, type CdromEjectSpec, type CdromInsertSpec, type ConsolePort, type FieldProblem, type FileChoice, type LibraryProblem, type VmExitInfo,
  type HostUsbAttachSpec, type HostUsbDeviceSummary, type UsbRuleSpec, type HostUsbDevicesEvent, type PciAssignRequest, type PciDeviceSummary, type VmPciAssignSpec, type UsbCaptureInfo, type UsbCaptureOptions, type UsbPortInfo, type UsbPathChoiceInfo, type UsbTransfersEvent, type VmList, type VmSpec, type VmState, type VmStats, type VmStatsEvent, type VmSummary,
} from '../api/contract';
import type { UsbKeyEvent } from '../api/usb-input';
import type { UsbDeviceConfig } from '../vmm/config';
import type { UsbPortState } from '../vmm/shared/usb-messages';
import { comIndex, vmSpecProblems } from '../api/schema';
import type { ApiBackend } from '../api/session';
import type { ServerEvent } from '../api/wire';
import { LogBuffer } from './buffers';
import { VmLibrary, type VmRecord, LIBRARY_FORMAT_VERSION } from './library';
import { isoFileProblem, machineConfigOf, specDeviceProblems, specFileProblems } from './machine-config';
import type { VmProcessLauncher } from './process-launcher';
import { StatsFanout, vmStatsOfSample } from './stats-fanout';
import { TransferFanout } from './transfer-fanout';
import { VmConsoles } from './vm-consoles';
import { VmProcessLink } from './vm-process-link';
import { VmRun, seconds } from './vm-run';
import { repairUsbJournal, type UsbJournal } from '../host/usb-journal';
import { listSysfsUsbDevices, udevRule, type HostUsbDeviceInfo } from '../host/usb-inventory';
import { hostNeeds } from '../host/host-needs';
import { HostUsbWatch } from '../host/host-usb-watch';
import { listPciDevices, pciSummary, readPciDevice, type HostRoots } from '../host/pci-inventory';
import { usbPathChoiceInfo } from '../host/usb-controller-choice';
import { pciAssignEntry, pciAssignRefusal } from '../host/pci-assignment';
import { describeUsbRule, firstMatchingRule, USB_MAX_RULES } from '../host/usb-rules';

export function hostUsbSummary(d: HostUsbDeviceInfo, heldBy: string | null, all?: HostUsbDeviceInfo[]): HostUsbDeviceSummary {
  return {
    name: d.sysfsName, busNumber: d.busNumber, deviceAddress: d.deviceAddress, vendorId: d.vendorId, productId: d.productId,
    manufacturer: d.manufacturer, product: d.product, serial: d.serial, speed: d.speed, classCode: d.classCode,
    interfaces: d.interfaces.map((i) => ({ number: i.number, classCode: i.classCode, driver: i.driver })),
    isHub: d.isHub, accessible: d.accessible,
    permissionHint: d.accessible ? null : `Install the udev rule ${udevRule(d.vendorId, d.productId)} (e.g. in /etc/udev/rules.d/70-porthole.rules), reload udev and replug the device.`,
    heldBy,
    hostNeeds: all === undefined ? null : hostNeeds(d, all),
  };
}

export interface ManagerOptions {
  libraryDir: string;
  launcher: VmProcessLauncher;
  mode: 'electron' | 'browser';
  appVersion: string;
  /** The native file dialog (Electron); absent in browser mode. */
  chooseFile?: (choice: FileChoice) => Promise<string | null>;
  /** How long a clean stop may take before stopVm gives up with "timeout". */
  stopTimeoutMs?: number;
  /** How long a VM process may take to start its machine. */
  startTimeoutMs?: number;
  /** Where the manager's own diagnostics go. */
  log?: (line: string) => void;
  /**
   * The journal of host USB devices VM processes took: repaired at load and whenever a VM
   * process ends (a VM killed with its device gives it back). Absent: no repair (tests).
   */
  usbJournal?: UsbJournal;
  /** PCI assignment: where the host's sysfs and /proc are ("/sys", "/proc" by default; tests give a fake tree). */
  hostRoots?: HostRoots;
}

/** One VM of the library and what it keeps between runs. */
interface VmEntry {
  record: VmRecord;
  /** The state while no run is under way. */
  restingState: 'stopped' | 'crashed';
  endpoints: Partial<Record<ConsolePort, string>>;
  lastExit: VmExitInfo | null;
  log: LogBuffer;
  consoles: VmConsoles;
  run: VmRun | null;
}

function stateOf(vm: VmEntry): VmState {
  return vm.run ? vm.run.state : vm.restingState;
}

export class VmManager extends EventEmitter<{ event: [ServerEvent] }> implements ApiBackend {
  readonly library: VmLibrary;
  private readonly vms = new Map<string, VmEntry>();
  private problems: LibraryProblem[] = [];
  private readonly stopTimeoutMs: number;
  private readonly startTimeoutMs: number;
  private readonly diag: (line: string) => void;
  private readonly stats: StatsFanout;
  private readonly transfers: TransferFanout;

  constructor(private readonly options: ManagerOptions) {
    super();
    this.setMaxListeners(0);
    this.library = new VmLibrary(options.libraryDir);
    this.stopTimeoutMs = options.stopTimeoutMs ?? 15000;
    this.startTimeoutMs = options.startTimeoutMs ?? 60000;
    this.diag = options.log ?? ((line) => console.error(`porthole: ${line}`));
    // A VM's process sends samples only while somebody watches it.
    this.stats = new StatsFanout((id, periodMs) => this.vms.get(id)?.run?.streamStats(periodMs), this.diag);
    this.transfers = new TransferFanout((id, wanted) => this.vms.get(id)?.run?.streamTransfers(wanted), this.diag);
  }

  /** Loads the library; a bad file becomes a problem and is skipped. */
  load(): void {
    const { records, problems } = this.library.load();
    this.problems = problems;
    for (const p of problems) this.diag(`skipped ${p.file}: ${p.reason}`);
    for (const record of records) this.vms.set(record.id, this.newEntry(record));
    this.repairHostUsb();
  }

  /** Gives host USB devices back that dead VM processes still hold (all of them, or `pid`'s). */
  private repairHostUsb(pid?: number): void {
    if (!this.options.usbJournal) return;
    try {
      for (const line of repairUsbJournal(this.options.usbJournal, pid === undefined ? {} : { pid })) this.diag(line);
    } catch (e) {
      this.diag(`USB journal: ${(e as Error).message}`);
    }
  }

  private newEntry(record: VmRecord): VmEntry {
    return {
      record,
      restingState: 'stopped',
      endpoints: {},
      lastExit: null,
      log: new LogBuffer(LIMITS.logLines),
      consoles: new VmConsoles(this.diag),
      run: null,
    };
  }

  // ---- queries -----------------------------------------------------------------

  getInfo(): AppInfo {
    let kvmProblem: string | null = null;
    try {
      fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
    } catch (e) {
      kvmProblem = (e as NodeJS.ErrnoException).code === 'ENOENT'
        ? 'This computer has no /dev/kvm: enable virtualization in the firmware settings and load the kvm module.'
        : 'This user cannot open /dev/kvm: add the user to the "kvm" group and log in again.';
    }
    return {
      appVersion: this.options.appVersion,
      apiVersion: 1,
      mode: this.options.mode,
      capabilities: { nativeFileDialogs: this.options.chooseFile !== undefined },
      libraryDir: this.library.dir,
      kvmAvailable: kvmProblem === null,
      kvmProblem,
    };
  }

  listVms(): VmList {
    const vms = [...this.vms.values()]
      .sort((a, b) => a.record.createdAt.localeCompare(b.record.createdAt) || a.record.id.localeCompare(b.record.id))
      .map((vm) => this.summary(vm));
    return { vms, problems: this.problems.map((p) => ({ ...p })) };
  }

  getVm(id: string): VmSummary {
    return this.summary(this.entry(id));
  }

  checkVmSpec(spec: unknown): FieldProblem[] {
    const shape = vmSpecProblems(spec);
    if (shape.length > 0) return shape;
    return [...specDeviceProblems(spec as VmSpec), ...specFileProblems(spec as VmSpec)];
  }

  /** The VMM's checks of a spec's disks and NICs, before it is saved. */
  private requireGoodDevices(spec: VmSpec): void {
    const problems = specDeviceProblems(spec);
    if (problems.length > 0) throw new ApiError('invalid-argument', problems[0].message);
  }

  getVmLog(id: string): string[] {
    return this.entry(id).log.tail();
  }

  /** Names of VMs whose process is alive (for the quit prompt). */
  activeVms(): VmSummary[] {
    return [...this.vms.values()].filter((vm) => vm.run !== null).map((vm) => this.summary(vm));
  }

  private entry(id: string): VmEntry {
    const vm = this.vms.get(id);
    if (!vm) throw new ApiError('not-found', 'There is no VM with that id; it may have been deleted.');
    return vm;
  }

  private summary(vm: VmEntry): VmSummary {
    const r = vm.record;
    return {
      id: r.id,
      spec: structuredClone(r.spec),
      state: stateOf(vm),
      createdAt: r.createdAt,
      updatedAt: r.updatedAt,
      endpoints: { ...vm.endpoints },
      lastExit: vm.lastExit ? { ...vm.lastExit, logTail: [...vm.lastExit.logTail] } : null,
    };
  }

  private changed(vm: VmEntry): void {
    this.emit('event', { type: 'vm-updated', vm: this.summary(vm) });
  }

  onEvent(listener: (event: ServerEvent) => void): () => void {
    this.on('event', listener);
    return () => { this.off('event', listener); };
  }

  // ---- library edits -----------------------------------------------------------

  createVm(spec: VmSpec): VmSummary {
    this.requireGoodDevices(spec);
    const now = new Date().toISOString();
    const record: VmRecord = { version: LIBRARY_FORMAT_VERSION, id: this.library.newId(), createdAt: now, updatedAt: now, spec };
    this.library.save(record);
    const vm = this.newEntry(record);
    this.vms.set(record.id, vm);
    vm.log.addLine(`created "${spec.name}"`);
    this.changed(vm);
    return this.summary(vm);
  }

  private requireIdle(vm: VmEntry, action: string): void {
    if (vm.run !== null) {
      throw new ApiError('invalid-state', `Stop the VM before you ${action} it (it is ${stateOf(vm)}).`);
    }
  }

  updateVm(id: string, spec: VmSpec): VmSummary {
    const vm = this.entry(id);
    this.requireIdle(vm, 'edit');
    this.requireGoodDevices(spec);
    const record: VmRecord = { ...vm.record, spec, updatedAt: new Date().toISOString() };
    this.library.save(record);
    vm.record = record;
    this.changed(vm);
    return this.summary(vm);
  }

  deleteVm(id: string): void {
    const vm = this.entry(id);
    this.requireIdle(vm, 'delete');
    this.library.remove(id);
    this.vms.delete(id);
    vm.consoles.clear();
    this.stats.forget(id);
    this.transfers.forget(id);
    this.emit('event', { type: 'vm-removed', id });
  }

  // ---- lifecycle ---------------------------------------------------------------

  async startVm(id: string): Promise<VmSummary> {
    const vm = this.entry(id);
    if (vm.run !== null) throw new ApiError('invalid-state', `The VM is already ${stateOf(vm)}.`);
    const config = machineConfigOf(vm.record.spec);
    const link = new VmProcessLink(this.options.launcher(vm.record.spec.name));
    vm.endpoints = {};
    vm.log.addLine(`starting (VM process ${link.pid ?? '?'})`);
    const run: VmRun = new VmRun(link, config, {
      stateChanged: () => { if (vm.run === run) this.changed(vm); },
      output: (ring, data) => {
        if (ring < 4 && vm.record.spec.serial[ring] === 'none') return;
        vm.consoles.deliver(ring, data);
      },
      endpoint: (ring, description) => {
        vm.endpoints[CONSOLE_PORTS[ring]] = description;
        vm.log.addLine(`${CONSOLE_PORTS[ring].toUpperCase()} is at ${description}`);
        this.changed(vm);
      },
      log: (line) => vm.log.addLine(line),
      logText: (text) => vm.log.addText(text),
      flushLogText: () => vm.log.flushText(),
      logTail: (lines) => vm.log.tail(lines),
      sample: (sample) => this.stats.publish(id, sample),
      transfers: (records, dropped) => this.transfers.publish(id, records, dropped),
      exited: (info) => this.onRunExited(vm, run, info),
    }, { statsPeriod: () => this.stats.periodMs(id), transfersWanted: () => this.transfers.wanted(id), startTimeoutMs: this.startTimeoutMs });
    vm.run = run;
    this.changed(vm);
    await run.started();
    return this.summary(vm);
  }

  private onRunExited(vm: VmEntry, run: VmRun, info: VmExitInfo): void {
    if (info.kind === 'crashed') this.diag(`VM "${vm.record.spec.name}" (${vm.record.id}) crashed: ${info.message}`);
    if (run.pid !== undefined) this.repairHostUsb(run.pid);
    if (vm.run !== run) return;
    vm.run = null;
    vm.lastExit = info;
    vm.endpoints = {};
    vm.restingState = info.kind === 'crashed' ? 'crashed' : 'stopped';
    if (this.vms.get(vm.record.id) === vm) this.changed(vm);
  }

  private activeRun(vm: VmEntry, action: string, allowed: VmState[]): VmRun {
    if (vm.run === null || !allowed.includes(vm.run.state)) {
      throw new ApiError('invalid-state', `Cannot ${action} the VM while it is ${stateOf(vm)}.`);
    }
    return vm.run;
  }

  async stopVm(id: string): Promise<VmSummary> {
    const vm = this.entry(id);
    const run = this.activeRun(vm, 'stop', ['starting', 'running', 'paused', 'stopping']);
    run.stop();
    if (!(await run.waitForExit(this.stopTimeoutMs))) {
      throw new ApiError('timeout', `The VM did not stop within ${seconds(this.stopTimeoutMs)}; use Force off to end it.`);
    }
    return this.summary(vm);
  }

  async forceOffVm(id: string): Promise<VmSummary> {
    const vm = this.entry(id);
    const run = this.activeRun(vm, 'force off', ['starting', 'running', 'paused', 'stopping']);
    run.forceOff();
    await run.waitForExit(60000);
    return this.summary(vm);
  }

  async pauseVm(id: string): Promise<VmSummary> {
    const vm = this.entry(id);
    await this.activeRun(vm, 'pause', ['running']).command('pause');
    return this.summary(vm);
  }

  async resumeVm(id: string): Promise<VmSummary> {
    const vm = this.entry(id);
    await this.activeRun(vm, 'resume', ['paused']).command('resume');
    return this.summary(vm);
  }

  async resetVm(id: string): Promise<VmSummary> {
    const vm = this.entry(id);
    await this.activeRun(vm, 'reset', ['running', 'paused']).command('reset');
    return this.summary(vm);
  }

  /** The registry's totals now when it has counters (no kick), else the machine's own counts. */
  async getVmStats(id: string): Promise<VmStats> {
    const vm = this.entry(id);
    const answer = await this.activeRun(vm, 'read the counters of', ['running', 'paused']).command('stats');
    if (answer.sample && answer.sample.counters.length > 0) return vmStatsOfSample(answer.sample);
    const stats = answer.stats;
    return { exits: { ...stats?.exits }, devices: (stats?.devices ?? []).map((d) => ({ ...d })) };
  }

  subscribeVmStats(id: string, listener: (event: VmStatsEvent) => void): () => void {
    this.entry(id);
    return this.stats.watch(id, listener);
  }

  subscribeVmStatsEvery(id: string, intervalMs: number, listener: (event: VmStatsEvent) => void): () => void {
    this.entry(id);
    return this.stats.watch(id, listener, intervalMs);
  }

  // ---- USB -------------------------------------------------------------------

  async listUsbPorts(id: string): Promise<UsbPortInfo[]> {
    const run = this.activeRun(this.entry(id), 'list the USB ports of', ['running', 'paused']);
    return ((await run.usb({ op: 'list' })).usb?.ports ?? []).map(usbPortInfo);
  }

  async listUsbPathChoices(id: string): Promise<UsbPathChoiceInfo[]> {
    const run = this.activeRun(this.entry(id), 'list the USB path choices of', ['running', 'paused']);
    return ((await run.usb({ op: 'usb-paths' })).usbPaths ?? []).map(usbPathChoiceInfo);
  }

  async attachUsbDevice(id: string, device: UsbDeviceConfig): Promise<UsbPortInfo> {
    const vm = this.entry(id);
    const run = this.activeRun(vm, 'plug a USB device into', ['running', 'paused']);
    const answer = (await run.usb({ op: 'attach', device })).usb;
    const port = answer?.ports.find((p) => p.port === answer.port);
    if (!port) throw new ApiError('internal', 'The VM did not say which port the device got.');
    vm.log.addLine(`USB: ${port.device?.name ?? device.kind} plugged into port ${port.port}`);
    return usbPortInfo(port);
  }

  // ---- CD-ROM media -------------------------------------------------------------

  async listCdromDrives(id: string): Promise<CdromDriveInfo[]> {
    const run = this.activeRun(this.entry(id), 'list the CD-ROM drives of', ['running', 'paused']);
    return (await run.usb({ op: 'cdrom-list' })).cdrom ?? [];
  }

  async insertCdrom(id: string, media: CdromInsertSpec): Promise<CdromDriveInfo[]> {
    const vm = this.entry(id);
    const run = this.activeRun(vm, 'change the CD of', ['running', 'paused']);
    const problem = isoFileProblem(media.path);
    if (problem !== null) throw new ApiError(problem.code, problem.message);
    const drives = (await run.usb({ op: 'cdrom-insert', path: media.path, drive: media.drive, force: media.force })).cdrom ?? [];
    vm.log.addLine(`CD-ROM: ${media.path} inserted${media.drive === undefined ? '' : ` in ${media.drive}`}`);
    return drives;
  }

  async ejectCdrom(id: string, options: CdromEjectSpec): Promise<CdromDriveInfo[]> {
    const vm = this.entry(id);
    const run = this.activeRun(vm, 'eject the CD of', ['running', 'paused']);
    const drives = (await run.usb({ op: 'cdrom-eject', drive: options.drive, force: options.force })).cdrom ?? [];
    vm.log.addLine(`CD-ROM: ejected${options.drive === undefined ? '' : ` from ${options.drive}`}${options.force === true ? ' (forced)' : ''}`);
    return drives;
  }

  async detachUsbDevice(id: string, port: number): Promise<void> {
    const vm = this.entry(id);
    const run = this.activeRun(vm, 'unplug a USB device from', ['running', 'paused']);
    await run.usb({ op: 'detach', port });
    vm.log.addLine(`USB: port ${port} unplugged`);
    this.hostUsbWatch.refresh();
  }

  async listHostUsbDevices(): Promise<HostUsbDeviceSummary[]> {
    return this.hostUsbList();
  }

  private hostUsbList(): HostUsbDeviceSummary[] {
    const held = new Map((this.options.usbJournal?.read().entries ?? []).map((e) => [e.sysfsName, `${e.vm} (process ${e.pid})`]));
    const all = listSysfsUsbDevices();
    const withRules = [...this.vms.values()]
      .filter((vm) => (vm.record.spec.usb?.rules?.length ?? 0) > 0)
      .sort((a, b) => a.record.createdAt.localeCompare(b.record.createdAt) || a.record.id.localeCompare(b.record.id));
    return all.map((d) => {
      const wantedBy: NonNullable<HostUsbDeviceSummary['wantedBy']> = [];
      for (const vm of withRules) {
        const rules = vm.record.spec.usb?.rules ?? [];
        const r = firstMatchingRule(rules, d);
        if (r >= 0) wantedBy.push({ vm: vm.record.id, vmName: vm.record.spec.name, rule: r, text: describeUsbRule(rules[r]) });
      }
      return { ...hostUsbSummary(d, held.get(d.sysfsName) ?? null, all), wantedBy };
    });
  }

  // ---- auto-attach rules ---------------------------------------------------------

  async listUsbRules(id: string): Promise<UsbRuleSpec[]> {
    return structuredClone(this.entry(id).record.spec.usb?.rules ?? []);
  }

  async addUsbRule(id: string, rule: UsbRuleSpec): Promise<UsbRuleSpec[]> {
    const vm = this.entry(id);
    const rules = vm.record.spec.usb?.rules ?? [];
    if (rules.length >= USB_MAX_RULES) throw new ApiError('invalid-argument', `A VM has at most ${USB_MAX_RULES} USB rules.`);
    const next = [...rules, structuredClone(rule)];
    await this.saveUsbRules(vm, next);
    vm.log.addLine(`USB: rule ${next.length} added: ${describeUsbRule(rule)}`);
    return structuredClone(next);
  }

  async removeUsbRule(id: string, index: number): Promise<UsbRuleSpec[]> {
    const vm = this.entry(id);
    const rules = vm.record.spec.usb?.rules ?? [];
    if (index >= rules.length) throw new ApiError('not-found', rules.length === 0 ? 'This VM has no USB rules.' : `This VM has USB rules 0 to ${rules.length - 1}; there is no rule ${index}.`);
    const next = rules.filter((_, i) => i !== index);
    await this.saveUsbRules(vm, next);
    vm.log.addLine(`USB: rule ${index + 1} removed: ${describeUsbRule(rules[index])}`);
    return structuredClone(next);
  }

  /** Saves a VM's rules (atomically, with the rest of its settings) and hands them to its running process. */
  private async saveUsbRules(vm: VmEntry, rules: UsbRuleSpec[]): Promise<void> {
    const usb = vm.record.spec.usb;
    if (usb === undefined || usb.controller !== 'xhci') {
      throw new ApiError('invalid-state', 'This VM has no USB controller: turn it on in the VM\'s settings (Advanced) first.');
    }
    const { rules: _old, ...rest } = usb;
    const spec: VmSpec = { ...vm.record.spec, usb: rules.length === 0 ? rest : { ...rest, rules } };
    const record: VmRecord = { ...vm.record, spec, updatedAt: new Date().toISOString() };
    this.library.save(record);
    vm.record = record;
    this.changed(vm);
    this.hostUsbWatch.refresh();
    const run = vm.run;
    if (run !== null && (run.state === 'running' || run.state === 'paused')) {
      try {
        await run.usb({ op: 'set-rules', rules });
      } catch (e) {
        vm.log.addLine(`USB: the running VM did not take the new rules (${(e as Error).message}); they apply from its next start`);
      }
    }
  }

  /** The live host device list (host-usb-watch.ts), shared by every watcher. */
  private readonly hostUsbWatch = new HostUsbWatch<HostUsbDeviceSummary>(() => this.hostUsbList(), undefined, undefined,
    (line) => this.options.log?.(line));

  subscribeHostUsbDevices(listener: (event: HostUsbDevicesEvent) => void): () => void {
    return this.hostUsbWatch.watch((devices) => listener({ type: 'host-usb-devices', devices }));
  }

  async listPciDevices(): Promise<PciDeviceSummary[]> {
    const held = new Map((this.options.usbJournal?.read().pci ?? []).map((e) => [e.address, `${e.vm} (process ${e.pid})`]));
    // PCI assignment (issue 11 item 6): which VMs' configs list each device.
    const assigned = new Map<string, NonNullable<PciDeviceSummary['assignedTo']>>();
    for (const vm of this.libraryOrder()) {
      for (const a of vm.record.spec.pciAssign ?? []) {
        const list = assigned.get(a.address) ?? [];
        list.push({ vm: vm.record.id, vmName: vm.record.spec.name, force: a.force === true });
        assigned.set(a.address, list);
      }
    }
    return listPciDevices(this.options.hostRoots).map((d) => ({ ...pciSummary(d, held.get(d.address) ?? null), assignedTo: assigned.get(d.address) ?? [] }));
  }

  // ---- PCI assignment (issue 11 item 6) ------------------------------------------

  private libraryOrder(): VmEntry[] {
    return [...this.vms.values()].sort((a, b) => a.record.createdAt.localeCompare(b.record.createdAt) || a.record.id.localeCompare(b.record.id));
  }

  /** Adds a host PCI function to the VM's pciAssign (saved atomically); it takes effect at the next start. */
  async assignPciDevice(id: string, request: PciAssignRequest): Promise<VmPciAssignSpec[]> {
    const vm = this.entry(id);
    const current = vm.record.spec.pciAssign ?? [];
    const device = readPciDevice(request.address, this.options.hostRoots);
    const refusal = pciAssignRefusal(request.address, device, current, request.force === true);
    if (refusal !== null || device === null) throw new ApiError(refusal?.code ?? 'not-found', refusal?.message ?? `The host has no PCI device at ${request.address}.`);
    const entry = pciAssignEntry(request.address, device, request.force === true);
    const next = [...current, entry];
    this.savePciAssign(vm, next);
    const running = vm.run !== null;
    vm.log.addLine(`PCI: ${entry.address} (${device.className}) assigned${entry.force ? ' (forced: the host needs it)' : ''}; ` +
      `${running ? 'the VM gets it at its next start (PCI hot-plug is not supported)' : 'the VM takes it at start'}`);
    return structuredClone(next);
  }

  /** Removes a PCI address from the VM's pciAssign (saved atomically); a running VM keeps it until it stops. */
  async returnPciDevice(id: string, address: string): Promise<VmPciAssignSpec[]> {
    const vm = this.entry(id);
    const current = vm.record.spec.pciAssign ?? [];
    if (!current.some((c) => c.address === address)) {
      throw new ApiError('not-found', current.length === 0 ? 'This VM has no PCI devices assigned.' : `This VM has no PCI device ${address} assigned.`);
    }
    const next = current.filter((c) => c.address !== address);
    this.savePciAssign(vm, next);
    vm.log.addLine(`PCI: ${address} returned${vm.run !== null ? '; the running VM keeps it until it stops, then it goes back to its host driver' : ''}`);
    return structuredClone(next);
  }

  private savePciAssign(vm: VmEntry, list: VmPciAssignSpec[]): void {
    const { pciAssign: _old, ...rest } = vm.record.spec;
    const spec: VmSpec = list.length === 0 ? rest : { ...rest, pciAssign: list };
    const record: VmRecord = { ...vm.record, spec, updatedAt: new Date().toISOString() };
    this.library.save(record);
    vm.record = record;
    this.changed(vm);
  }

  // ---- end of PCI assignment ------------------------------------------------------

  async attachHostUsbDevice(id: string, spec: HostUsbAttachSpec): Promise<UsbPortInfo> {
    const vm = this.entry(id);
    const run = this.activeRun(vm, 'pass a host USB device through to', ['running', 'paused']);
    const answer = (await run.usb({
      op: 'attach-host', device: spec.device, ...(spec.port === undefined ? {} : { port: spec.port }), ...(spec.force === true ? { force: true } : {}),
    })).usb;
    const port = answer?.ports.find((p) => p.port === answer.port);
    if (!port) throw new ApiError('internal', 'The VM did not say which port the device got.');
    vm.log.addLine(`USB: host device ${spec.device} (${port.device?.product ?? '?'}) passed through on port ${port.port}${port.device?.pathReason ? ` by the emulated path: ${port.device.pathReason}` : ''}`);
    this.hostUsbWatch.refresh();
    return usbPortInfo(port);
  }

  /** `keys` arrives parsed (parseUsbKeys): key events, not names. */
  async sendUsbKeys(id: string, keys: UsbKeyEvent[]): Promise<void> {
    const run = this.activeRun(this.entry(id), 'type into', ['running']);
    await run.usb({ op: 'keys', events: keys });
  }

  async startUsbCapture(id: string, options: UsbCaptureOptions): Promise<UsbCaptureInfo> {
    const vm = this.entry(id);
    const run = this.activeRun(vm, 'capture the USB of', ['running', 'paused']);
    const capture = (await run.usb({ op: 'capture-start', options })).capture;
    if (!capture) throw new ApiError('internal', 'The VM did not describe the capture it started.');
    vm.log.addLine(`USB: capture ${capture.id} started${capture.port === null ? '' : ` on port ${capture.port}`}${capture.path === null ? '' : ` into ${capture.path}`}`);
    return capture;
  }

  async stopUsbCapture(id: string, capture: number): Promise<UsbCaptureInfo> {
    const vm = this.entry(id);
    const run = this.activeRun(vm, 'stop a USB capture of', ['running', 'paused']);
    const info = (await run.usb({ op: 'capture-stop', capture })).capture;
    if (!info) throw new ApiError('internal', 'The VM did not describe the capture it stopped.');
    vm.log.addLine(`USB: capture ${info.id} stopped: ${info.packets} packets${info.dropped > 0 ? `, ${info.dropped} dropped` : ''}`);
    return info;
  }

  subscribeUsbTransfers(id: string, listener: (event: UsbTransfersEvent) => void): () => void {
    this.entry(id);
    return this.transfers.watch(id, listener);
  }

  // ---- consoles ----------------------------------------------------------------

  subscribeConsole(id: string, port: ConsolePort, listener: (offset: number, data: Uint8Array) => void): () => void {
    return this.entry(id).consoles.subscribe(port, listener);
  }

  sendConsoleInput(id: string, port: ConsolePort, text: string): void {
    const vm = this.entry(id);
    const index = comIndex(port);
    if (index === null) throw new ApiError('invalid-argument', 'The debug console only shows output; type into a COM port instead.');
    if (vm.record.spec.serial[index] === 'none') {
      throw new ApiError('invalid-state', `${port.toUpperCase()} is not connected in this VM's settings.`);
    }
    const run = this.activeRun(vm, 'type into', ['running', 'paused']);
    const data = new TextEncoder().encode(text);
    if (data.length > LIMITS.consoleInputMaxBytes) {
      throw new ApiError('invalid-argument', `Console input is limited to ${LIMITS.consoleInputMaxBytes} bytes per call.`);
    }
    if (data.length > 0) run.input(index, data);
  }

  chooseFile(choice: FileChoice): Promise<string | null> {
    if (!this.options.chooseFile) {
      return Promise.reject(new ApiError('unsupported', 'File dialogs are only available in the desktop app; type the path instead.'));
    }
    return this.options.chooseFile(choice);
  }

  // ---- shutdown ----------------------------------------------------------------

  /** Ends every VM process: a clean stop (force-off if it does not stop in time), or force-off. */
  async shutdownAll(how: 'stop' | 'force-off'): Promise<void> {
    await Promise.all([...this.vms.values()].filter((vm) => vm.run !== null).map(async (vm) => {
      const id = vm.record.id;
      try {
        if (how === 'stop') {
          await this.stopVm(id);
          return;
        }
      } catch (e) {
        this.diag(`stopping ${id} failed (${(e as Error).message}); forcing it off`);
      }
      if (vm.run !== null) await this.forceOffVm(id).catch(() => undefined);
    }));
  }
}

/** A port as the contract shows it (a copy: nothing of the VM process's message is kept). */
function usbPortInfo(p: UsbPortState): UsbPortInfo {
  const d = p.device;
  return {
    port: p.port,
    protocol: p.protocol,
    device: d === null ? null : {
      kind: d.kind, name: d.name, product: d.product, speed: d.speed, vendorId: d.vendorId, productId: d.productId,
      path: d.path, readOnly: d.readOnly,
      ...(d.endpoint === undefined ? {} : { endpoint: d.endpoint }),
      ...(d.hostDevice === undefined ? {} : { hostDevice: d.hostDevice }),
      ...(d.passthroughPath === undefined ? {} : { passthroughPath: d.passthroughPath }),
      ...(d.pathReason === undefined ? {} : { pathReason: d.pathReason }),
    },
  };
}
