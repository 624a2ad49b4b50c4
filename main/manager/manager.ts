// The VM manager: the library on disk, one process per running VM, lifecycle, console
// streams with scroll-back, logs and crash reports. Runs in Electron's main process or
// in plain Node (browser mode). Implements the backend of the contract (api/session.ts).
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import {
  ApiError, CONSOLE_PORTS, LIMITS,
  type AppInfo, type ConsolePort, type FieldProblem, type FileChoice, type LibraryProblem, type VmExitInfo,
  type VmList, type VmSpec, type VmState, type VmStats, type VmSummary,
} from '../api/contract';
import { comIndex, vmSpecProblems } from '../api/schema';
import type { ApiBackend } from '../api/session';
import type { ServerEvent } from '../api/wire';
import type { MachineConfig } from '../vmm/config';
import type { MachineEnd, MachineStats } from '../vmm/machine/machine';
import { LogBuffer, ScrollbackBuffer } from './buffers';
import { VmLibrary, type VmRecord, LIBRARY_FORMAT_VERSION } from './library';
import { machineConfigOf, specFileProblems } from './machine-config';
import type { VmProcessHandle, VmProcessLauncher } from './process-launcher';
import type { VmCommand, VmToManager } from './vm-process-protocol';

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
}

/** Log lines included in a crash report. */
const CRASH_LOG_LINES = 20;

interface Waiter {
  resolve(): void;
  reject(e: ApiError): void;
}

/** One run of a VM: its process and what it reported. */
interface VmRun {
  handle: VmProcessHandle;
  ready: boolean;
  started: boolean;
  startWaiter: Waiter | null;
  ended: { end: MachineEnd; stats: MachineStats } | null;
  startFailure: string | null;
  stopRequested: boolean;
  forcedOff: boolean;
  exited: boolean;
  exitWaiters: (() => void)[];
  nextCommandId: number;
  commands: Map<number, { resolve(stats?: MachineStats): void; reject(e: ApiError): void }>;
}

interface ConsoleSubscriber {
  port: ConsolePort;
  listener(offset: number, data: Uint8Array): void;
}

interface VmEntry {
  record: VmRecord;
  state: VmState;
  endpoints: Partial<Record<ConsolePort, string>>;
  lastExit: VmExitInfo | null;
  log: LogBuffer;
  consoles: ScrollbackBuffer[];
  subscribers: Set<ConsoleSubscriber>;
  run: VmRun | null;
}

function sentence(text: string): string {
  const t = text.trim();
  if (t === '') return '';
  const s = t[0].toUpperCase() + t.slice(1);
  return /[.!?]$/.test(s) ? s : `${s}.`;
}

function seconds(ms: number): string {
  const n = Math.max(1, Math.round(ms / 1000));
  return `${n} second${n === 1 ? '' : 's'}`;
}

/** A message to continue a sentence with: "Cannot open" → "cannot open", "COM2: …" stays. */
function lowerFirst(text: string): string {
  const t = sentence(text).replace(/\.$/, '');
  return /^[A-Z][a-z]/.test(t) ? t[0].toLowerCase() + t.slice(1) : t;
}

export class VmManager extends EventEmitter<{ event: [ServerEvent] }> implements ApiBackend {
  readonly library: VmLibrary;
  private readonly vms = new Map<string, VmEntry>();
  private problems: LibraryProblem[] = [];
  private readonly stopTimeoutMs: number;
  private readonly startTimeoutMs: number;
  private readonly diag: (line: string) => void;

  constructor(private readonly options: ManagerOptions) {
    super();
    this.setMaxListeners(0);
    this.library = new VmLibrary(options.libraryDir);
    this.stopTimeoutMs = options.stopTimeoutMs ?? 15000;
    this.startTimeoutMs = options.startTimeoutMs ?? 60000;
    this.diag = options.log ?? ((line) => console.error(`porthole: ${line}`));
  }

  /** Loads the library; a bad file becomes a problem and is skipped. */
  load(): void {
    const { records, problems } = this.library.load();
    this.problems = problems;
    for (const p of problems) this.diag(`skipped ${p.file}: ${p.reason}`);
    for (const record of records) this.vms.set(record.id, this.newEntry(record));
  }

  private newEntry(record: VmRecord): VmEntry {
    return {
      record,
      state: 'stopped',
      endpoints: {},
      lastExit: null,
      log: new LogBuffer(LIMITS.logLines),
      consoles: CONSOLE_PORTS.map(() => new ScrollbackBuffer(LIMITS.consoleScrollbackBytes)),
      subscribers: new Set(),
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
    return shape.length > 0 ? shape : specFileProblems(spec as VmSpec);
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
      state: vm.state,
      createdAt: r.createdAt,
      updatedAt: r.updatedAt,
      endpoints: { ...vm.endpoints },
      lastExit: vm.lastExit ? { ...vm.lastExit, logTail: [...vm.lastExit.logTail] } : null,
    };
  }

  private changed(vm: VmEntry): void {
    this.emit('event', { type: 'vm-updated', vm: this.summary(vm) });
  }

  private setState(vm: VmEntry, state: VmState): void {
    if (vm.state === state) return;
    vm.state = state;
    this.changed(vm);
  }

  onEvent(listener: (event: ServerEvent) => void): () => void {
    this.on('event', listener);
    return () => { this.off('event', listener); };
  }

  // ---- library edits -----------------------------------------------------------

  createVm(spec: VmSpec): VmSummary {
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
      throw new ApiError('invalid-state', `Stop the VM before you ${action} it (it is ${vm.state}).`);
    }
  }

  updateVm(id: string, spec: VmSpec): VmSummary {
    const vm = this.entry(id);
    this.requireIdle(vm, 'edit');
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
    vm.subscribers.clear();
    this.emit('event', { type: 'vm-removed', id });
  }

  // ---- lifecycle ---------------------------------------------------------------

  async startVm(id: string): Promise<VmSummary> {
    const vm = this.entry(id);
    if (vm.run !== null) throw new ApiError('invalid-state', `The VM is already ${vm.state}.`);
    const config = machineConfigOf(vm.record.spec);
    const run: VmRun = {
      handle: this.options.launcher(vm.record.spec.name),
      ready: false, started: false, startWaiter: null, ended: null, startFailure: null,
      stopRequested: false, forcedOff: false, exited: false, exitWaiters: [], nextCommandId: 1, commands: new Map(),
    };
    vm.run = run;
    vm.endpoints = {};
    vm.log.addLine(`starting (VM process ${run.handle.pid ?? '?'})`);
    this.setState(vm, 'starting');
    const started = new Promise<void>((resolve, reject) => { run.startWaiter = { resolve, reject }; });
    run.handle.onMessage((m) => this.onProcessMessage(vm, run, m, config));
    run.handle.onOutputText((text) => vm.log.addText(text));
    run.handle.onExit((code, signal) => this.onProcessExit(vm, run, code, signal));
    const timer = setTimeout(() => {
      if (run.started || run.exited) return;
      vm.log.addLine(`the machine did not start within ${this.startTimeoutMs} ms; killing the VM process`);
      run.startWaiter?.reject(new ApiError('timeout', `The VM did not start within ${seconds(this.startTimeoutMs)}.`));
      run.startWaiter = null;
      run.stopRequested = true;
      run.handle.kill('SIGKILL');
    }, this.startTimeoutMs);
    try {
      await started;
    } finally {
      clearTimeout(timer);
    }
    return this.summary(vm);
  }

  private onProcessMessage(vm: VmEntry, run: VmRun, m: VmToManager, config: MachineConfig): void {
    if (vm.run !== run || typeof m !== 'object' || m === null) return;
    switch (m.type) {
      case 'ready':
        run.ready = true;
        run.handle.send({ type: 'start', config });
        break;
      case 'started':
        run.started = true;
        run.startWaiter?.resolve();
        run.startWaiter = null;
        break;
      case 'start-failed':
        run.startFailure = m.message;
        vm.log.addLine(`could not start: ${m.message}`);
        run.startWaiter?.reject(new ApiError('vm-failed', `The VM could not start: ${lowerFirst(m.message)}.`));
        run.startWaiter = null;
        break;
      case 'state':
        // "stopped" is only final once the process is gone (onProcessExit).
        if (m.state === 'stopped') this.setState(vm, 'stopping');
        else if (!(vm.state === 'stopping' && m.state === 'starting')) this.setState(vm, m.state);
        break;
      case 'output':
        if (m.ring >= 0 && m.ring < vm.consoles.length && m.data instanceof Uint8Array) this.deliverOutput(vm, m.ring, m.data);
        break;
      case 'endpoint':
        if (m.ring >= 0 && m.ring < CONSOLE_PORTS.length) {
          vm.endpoints[CONSOLE_PORTS[m.ring]] = m.description;
          vm.log.addLine(`${CONSOLE_PORTS[m.ring].toUpperCase()} is at ${m.description}`);
          this.changed(vm);
        }
        break;
      case 'log':
        vm.log.addLine(m.line);
        break;
      case 'reply': {
        const c = run.commands.get(m.id);
        if (!c) break;
        run.commands.delete(m.id);
        if (m.ok) c.resolve(m.stats);
        else c.reject(new ApiError('invalid-state', sentence(m.message)));
        break;
      }
      case 'ended':
        run.ended = { end: m.end, stats: m.stats };
        break;
    }
  }

  private deliverOutput(vm: VmEntry, ring: number, data: Uint8Array): void {
    if (ring < 4 && vm.record.spec.serial[ring] === 'none') return;
    const buffer = vm.consoles[ring];
    const offset = buffer.end;
    buffer.append(data);
    const port = CONSOLE_PORTS[ring];
    for (const s of vm.subscribers) {
      if (s.port !== port) continue;
      try {
        s.listener(offset, data);
      } catch (e) {
        this.diag(`console subscriber failed: ${(e as Error).message}`);
      }
    }
  }

  private exitInfo(vm: VmEntry, run: VmRun, code: number | null, signal: string | null): VmExitInfo {
    const at = new Date().toISOString();
    const logTail = vm.log.tail(CRASH_LOG_LINES);
    const base = { at, exitCode: null as number | null, signal: null as string | null, logTail };
    if (run.forcedOff) return { ...base, kind: 'forced-off', message: 'The VM was forced off.', signal };
    const ended = run.ended;
    if (ended && code === 0) {
      const end = ended.end;
      switch (end.reason) {
        case 'poweroff':
          return { ...base, kind: 'poweroff', message: `The guest powered off (exit status ${end.exitCode}).`, exitCode: end.exitCode };
        case 'stopped':
          return { ...base, kind: 'stopped', message: 'The VM was stopped.' };
        case 'reset':
          return { ...base, kind: 'error', message: 'The VM was stopped because the guest kept resetting.' };
        case 'error':
          return { ...base, kind: 'error', message: run.startFailure !== null
            ? `The VM could not start: ${lowerFirst(end.message)}.`
            : `The VM stopped because of an error: ${lowerFirst(end.message)}.` };
      }
    }
    if (run.stopRequested && !run.started) {
      return { ...base, kind: 'stopped', message: 'The VM was stopped before it started.', exitCode: code, signal };
    }
    const message = signal
      ? `The VM process was killed by signal ${signal}.`
      : code !== null ? `The VM process exited with code ${code}.` : 'The VM process ended unexpectedly.';
    return { ...base, kind: 'crashed', message, exitCode: code, signal };
  }

  private onProcessExit(vm: VmEntry, run: VmRun, code: number | null, signal: string | null): void {
    if (run.exited) return;
    run.exited = true;
    vm.log.flushText();
    const info = this.exitInfo(vm, run, code, signal);
    vm.log.addLine(`VM process ${run.handle.pid ?? '?'} ended: ${signal ? `signal ${signal}` : `exit code ${code}`}; ${info.message}`);
    if (info.kind === 'crashed') {
      info.logTail = vm.log.tail(CRASH_LOG_LINES);
      this.diag(`VM "${vm.record.spec.name}" (${vm.record.id}) crashed: ${info.message}`);
    }
    const failure = new ApiError(info.kind === 'crashed' ? 'vm-failed' : 'invalid-state', info.message);
    run.startWaiter?.reject(new ApiError('vm-failed', `The VM could not start: ${lowerFirst(info.message)}.`));
    run.startWaiter = null;
    for (const c of run.commands.values()) c.reject(failure);
    run.commands.clear();
    if (vm.run === run) {
      vm.run = null;
      vm.lastExit = info;
      vm.endpoints = {};
      vm.state = info.kind === 'crashed' ? 'crashed' : 'stopped';
      if (this.vms.get(vm.record.id) === vm) this.changed(vm);
    }
    run.exitWaiters.splice(0).forEach((w) => w());
  }

  private waitForExit(run: VmRun, timeoutMs: number): Promise<boolean> {
    if (run.exited) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      run.exitWaiters.push(() => { clearTimeout(timer); resolve(true); });
    });
  }

  private command(run: VmRun, command: VmCommand): Promise<MachineStats | undefined> {
    return new Promise((resolve, reject) => {
      const id = run.nextCommandId++;
      run.commands.set(id, { resolve, reject });
      run.handle.send({ type: 'command', id, command });
    });
  }

  private activeRun(vm: VmEntry, action: string, allowed: VmState[]): VmRun {
    if (vm.run === null || !allowed.includes(vm.state)) {
      throw new ApiError('invalid-state', `Cannot ${action} the VM while it is ${vm.state}.`);
    }
    return vm.run;
  }

  async stopVm(id: string): Promise<VmSummary> {
    const vm = this.entry(id);
    const run = this.activeRun(vm, 'stop', ['starting', 'running', 'paused', 'stopping']);
    run.stopRequested = true;
    if (!run.ready) {
      // Nothing runs in KVM yet, so the process can simply be ended.
      run.handle.kill('SIGKILL');
    } else {
      this.setState(vm, 'stopping');
      this.command(run, 'stop').catch(() => undefined);
    }
    if (!(await this.waitForExit(run, this.stopTimeoutMs))) {
      throw new ApiError('timeout', `The VM did not stop within ${seconds(this.stopTimeoutMs)}; use Force off to end it.`);
    }
    return this.summary(vm);
  }

  async forceOffVm(id: string): Promise<VmSummary> {
    const vm = this.entry(id);
    const run = this.activeRun(vm, 'force off', ['starting', 'running', 'paused', 'stopping']);
    run.forcedOff = true;
    run.handle.kill('SIGKILL');
    await this.waitForExit(run, 60000);
    return this.summary(vm);
  }

  async pauseVm(id: string): Promise<VmSummary> {
    const vm = this.entry(id);
    await this.command(this.activeRun(vm, 'pause', ['running']), 'pause');
    return this.summary(vm);
  }

  async resumeVm(id: string): Promise<VmSummary> {
    const vm = this.entry(id);
    await this.command(this.activeRun(vm, 'resume', ['paused']), 'resume');
    return this.summary(vm);
  }

  async resetVm(id: string): Promise<VmSummary> {
    const vm = this.entry(id);
    const run = this.activeRun(vm, 'reset', ['running', 'paused']);
    await this.command(run, 'reset');
    return this.summary(vm);
  }

  async getVmStats(id: string): Promise<VmStats> {
    const vm = this.entry(id);
    const stats = await this.command(this.activeRun(vm, 'read the counters of', ['running', 'paused']), 'stats');
    return { exits: { ...stats?.exits }, devices: (stats?.devices ?? []).map((d) => ({ ...d })) };
  }

  // ---- consoles ----------------------------------------------------------------

  subscribeConsole(id: string, port: ConsolePort, listener: (offset: number, data: Uint8Array) => void): () => void {
    const vm = this.entry(id);
    const { offset, data } = vm.consoles[CONSOLE_PORTS.indexOf(port)].snapshot();
    if (data.length > 0) listener(offset, data);
    const subscriber: ConsoleSubscriber = { port, listener };
    vm.subscribers.add(subscriber);
    return () => { vm.subscribers.delete(subscriber); };
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
    if (data.length > 0) run.handle.send({ type: 'input', port: index, data });
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
