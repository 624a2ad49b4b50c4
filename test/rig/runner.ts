// Boots the rig's L1 workstation in QEMU (TCG) for one scenario, streams its console with
// timestamps, and ends on the scenario's RIG-RESULT line or a timeout. QEMU runs in its own
// process group with a parent-death signal, and the group is killed on every way out:
// result, timeout, a stall, QEMU's own exit, SIGINT/SIGTERM, and exceptions in the runner.
// A scenario talks to the runner over a control channel (control.ts): test events, and
// requests the runner carries out on the rig host, such as plugging devices through QMP.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ensureImage, type RigImage } from './build-image';
import { CONTROL_PORT_NAME, ControlServer, type ControlMessage } from './control';
import { RIG_NET_HOST_ADDRESS, RIG_NET_L1_ADDRESS, deviceArgs, type PluggableDevice, type RigDevices } from './devices';
import { inL1, repoRoot, rigBuildDir } from './paths';
import { QmpServerClient } from './qmp';
import { rigQemu, which, type RigQemu } from './rig-qemu';
import type { ScenarioSpec, TcgMode } from './scenarios';

export type RigOutcome =
  | { kind: 'pass' | 'fail'; detail: string }
  | { kind: 'timeout'; detail: string }
  /** L1 itself stopped running: no console output (not even its heartbeat) for stallSec. */
  | { kind: 'stall'; detail: string }
  | { kind: 'error'; detail: string };

export interface RunReport {
  scenario: string;
  outcome: RigOutcome;
  /** Seconds from QEMU's start until the scenario started in L1 (null if it never did). */
  bootSeconds: number | null;
  totalSeconds: number;
  qemuPid: number | null;
  /** Unique token in QEMU's command line (-name), to find it in /proc. */
  token: string;
  logFile: string;
  /** Set when SIGINT/SIGTERM ended the run. */
  interrupted: NodeJS.Signals | null;
  /** QEMU ended because L1 triple-faulted. */
  l1TripleFault: boolean;
  /** L1's own kernel panicked (its console said so) before the scenario gave a result. */
  l1KernelPanic: boolean;
  /** Earlier attempts of this run that L1 spoiled (stall, triple fault, kernel panic), in order. */
  retried: { outcome: RigOutcome; logFile: string }[];
}

export interface RunOptions {
  /** Overrides the scenario's timeouts (seconds). */
  timeoutSec?: number;
  bootTimeoutSec?: number;
  /** Full kernel log instead of quiet. */
  verbose?: boolean;
  cpus?: number;
  memory?: string;
  /** Where console lines go; default stdout. */
  print?: (line: string) => void;
  /** NAME=VALUE pairs the scenario sees as environment variables RIG_NAME. */
  env?: string[];
  /** Extra arguments for L1's kernel command line. */
  append?: string[];
  /** How often to repeat a run whose L1 triple-faulted (default 1). */
  l1FaultRetries?: number;
  /** Pass the terminal through to L1's console (the "shell" scenario). */
  interactive?: boolean;
  /** TCG threading for L1 (default: the scenario's, else single). */
  tcg?: TcgMode;
  /** Devices instead of the scenario's own (npm run rig -- exec --devices). */
  devices?: RigDevices;
  /** A script outside the project for the exec scenario; its folder is shared read-only. */
  execScript?: string;
  /** Seconds without L1's heartbeat (printed every 5 s) that count as a stall. */
  stallSec?: number;
  /** Sees every message the scenario sends over the control channel that is not a request. */
  onMessage?: (m: ControlMessage) => void;
}

export class RigError extends Error {}

/** Shares and kernel arguments that let L1 run the host's own node binary. */
function hostShares(): { virtfs: [tag: string, hostPath: string][]; nodeInL1: string } {
  const virtfs: [string, string][] = [['hostusr', '/usr'], ['hostetc', '/etc'], ['project', repoRoot]];
  const merged = (p: string) => { try { return fs.lstatSync(p).isSymbolicLink(); } catch { return true; } };
  if (!merged('/lib')) virtfs.push(['hostlib', '/lib']);
  if (!merged('/lib64')) virtfs.push(['hostlib64', '/lib64']);
  const node = fs.realpathSync(process.execPath);
  if (node.startsWith('/usr/')) return { virtfs, nodeInL1: node };
  if (node.startsWith(repoRoot + path.sep)) return { virtfs, nodeInL1: inL1(node) };
  // A node outside /usr (nvm, a tarball): share its install prefix.
  const prefix = path.dirname(path.dirname(node));
  virtfs.push(['hostnode', prefix]);
  return { virtfs, nodeInL1: path.posix.join('/opt/node', path.relative(prefix, node)) };
}

/** Host-side files of one attempt: sockets, per-run stick copies, files L1 writes. */
export interface RunFiles {
  dir: string;
  controlSocket: string;
  qmpSocket: string;
  /** Shared read-write with L1 as /rig-out (mount tag rigout). */
  outDir: string;
}

export interface QemuCommand {
  args: string[];
  pluggable: Map<string, PluggableDevice>;
  hostFiles: Record<string, string>;
}

export function qemuArgs(spec: ScenarioSpec, image: RigImage, opts: RunOptions, token: string, debugLog: string, files: RunFiles, tcg: TcgMode): QemuCommand {
  const shares = hostShares();
  const devices = deviceArgs(opts.devices ?? spec.devices, path.join(rigBuildDir, 'sticks'), files.dir, files.outDir);
  const append = [
    'console=ttyS0,115200', 'panic=-1', 'mitigations=off', opts.verbose ? 'loglevel=7' : 'quiet',
    `rig.scenario=${spec.name}`, `rig.kit=${inL1(image.dir)}`, `rig.node=${shares.nodeInL1}`,
    ...(opts.env ?? []).map((kv) => `rig.env=${kv}`),
  ];
  const virtfs = [...shares.virtfs.map(([tag, p]) => [tag, p, true] as const), ['rigout', files.outDir, false] as const];
  if (opts.execScript) {
    virtfs.push(['rigexec', path.dirname(opts.execScript), true]);
    append.push(`rig.exec=${path.basename(opts.execScript)}`);
  }
  const args = [
    '-name', token, '-accel', tcg === 'single' ? 'tcg,thread=single' : 'tcg,thread=multi', '-M', 'q35', '-cpu', 'qemu64,+svm,+npt',
    '-m', opts.memory ?? '2G', '-smp', String(opts.cpus ?? 2),
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot', '-monitor', 'none', '-serial', 'stdio',
    // With -no-reboot a reset ends QEMU like a poweroff; this log tells a triple fault apart.
    '-d', 'cpu_reset', '-D', debugLog,
    '-kernel', image.vmlinuz, '-initrd', image.l1Initrd,
  ];
  // QEMU connects both chardevs to sockets the runner already listens on.
  args.push('-chardev', `socket,id=rigqmp,path=${files.qmpSocket}`, '-mon', 'chardev=rigqmp,mode=control');
  args.push(...devices.qemu);
  append.push(...devices.kernel, ...(opts.append ?? []));
  for (const [tag, hostPath, readonly] of virtfs) {
    args.push('-virtfs', `local,path=${hostPath},mount_tag=${tag},security_model=none${readonly ? ',readonly=on' : ''}`);
  }
  args.push('-device', 'virtio-serial-pci,id=rigvser', '-chardev', `socket,id=rigctl,path=${files.controlSocket}`,
    '-device', `virtserialport,bus=rigvser.0,chardev=rigctl,name=${CONTROL_PORT_NAME}`);
  args.push('-append', append.join(' '));
  return { args, pluggable: devices.pluggable, hostFiles: devices.hostFiles };
}

const RESULT_RE = /^RIG-RESULT: (PASS|FAIL)\b ?(.*)$/;
const START_RE = /^RIG-SCENARIO-START: /;
const STAGE_RE = /^RIG-STAGE: /;
const HEARTBEAT_RE = /^RIG-HEARTBEAT\b/;

function isAlive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch { return false; }
}

function groupAlive(pgid: number): boolean {
  try { process.kill(-pgid, 0); return true; } catch { return false; }
}

function killGroup(pgid: number, signal: NodeJS.Signals): void {
  try { process.kill(-pgid, signal); } catch { /* already gone */ }
}

function pruneLogs(dir: string, keep: number): void {
  const logs = fs.readdirSync(dir).filter((f) => f.endsWith('.log')).sort();
  for (const f of logs.slice(0, Math.max(0, logs.length - keep))) fs.rmSync(path.join(dir, f), { force: true });
}

/** Whether a console line is L1's own kernel panicking ("[   28.298600] Kernel panic - not syncing: …"), not an L2 line a scenario relays with its prefix. */
export function isL1KernelPanic(line: string): boolean {
  return /^\[\s*\d+\.\d+\] Kernel panic - not syncing/.test(line);
}

/**
 * How L1 itself spoiled a run, below the scenario ('stalled', 'triple-faulted', 'kernel
 * panicked'), or null when the scenario's own outcome stands.
 */
export function l1Spoiled(report: RunReport): string | null {
  if (report.outcome.kind === 'stall') return 'stalled';
  if (report.l1TripleFault) return 'triple-faulted';
  if (report.l1KernelPanic) return 'kernel panicked';
  return null;
}

/**
 * Runs one scenario to its end; never leaves QEMU running when it returns or throws. A run
 * whose L1 triple-faults, stalls or panics (QEMU 7.2's TCG emulation of nested SVM does that
 * now and then, in L1's own kernel, whatever the scenario does) is repeated up to
 * `opts.l1FaultRetries` times.
 */
export async function runScenario(spec: ScenarioSpec, opts: RunOptions = {}): Promise<RunReport> {
  const retries = opts.l1FaultRetries ?? 1;
  const retried: RunReport['retried'] = [];
  for (let attempt = 0; ; attempt++) {
    const report = await runAttempt(spec, opts);
    report.retried = retried.slice();
    // A stall is L1 itself stopping (its heartbeat stops), not the scenario hanging: the
    // scenario's own timeouts cannot fire. A scenario that hangs with L1 alive times out.
    const spoiled = l1Spoiled(report);
    if (spoiled === null || report.interrupted || attempt >= retries) return report;
    retried.push({ outcome: report.outcome, logFile: report.logFile });
    (opts.print ?? ((l: string) => process.stdout.write(l + '\n')))(
      `rig: RETRY ${retried.length}: L1 ${spoiled} (below the scenario, not its result); running ${spec.name} again`);
  }
}

async function runAttempt(spec: ScenarioSpec, opts: RunOptions): Promise<RunReport> {
  const print = opts.print ?? ((line: string) => process.stdout.write(line + '\n'));
  const t0 = Date.now();
  const stamp = () => `[${((Date.now() - t0) / 1000).toFixed(3).padStart(8)}]`;
  const say = (msg: string) => print(`${stamp()} rig: ${msg}`);

  let l1Qemu: RigQemu;
  try {
    l1Qemu = rigQemu(say);
  } catch (e) {
    throw new RigError((e as Error).message);
  }
  const qemu = l1Qemu.binary;
  const tcg = opts.tcg ?? spec.tcg ?? l1Qemu.defaultTcg;
  const image = await ensureImage({ log: say });
  const token = `porthole-rig-${spec.name}-${crypto.randomBytes(4).toString('hex')}`;
  const logDir = path.join(rigBuildDir, 'logs');
  fs.mkdirSync(logDir, { recursive: true });
  pruneLogs(logDir, 40);
  const logFile = path.join(logDir, `${new Date().toISOString().replace(/[:.]/g, '-')}-${spec.name}.log`);
  const debugLog = logFile.replace(/\.log$/, '.qemu-debug.log');
  const files = makeRunFiles(token);
  let command: QemuCommand;
  try {
    command = qemuArgs(spec, image, opts, token, debugLog, files, tcg);
  } catch (e) {
    removeRunFiles(files);
    throw new RigError(`cannot prepare L1's devices: ${(e as Error).message}`);
  }
  const args = command.args;
  const log = fs.openSync(logFile, 'w');
  fs.writeSync(log, `${qemu} ${args.map((a) => (/[\s"']/.test(a) ? JSON.stringify(a) : a)).join(' ')}\n`);

  const qmp = await QmpServerClient.listen(files.qmpSocket);
  const requests = new RigRequests(qmp, command, (m) => say(m));
  const control = await ControlServer.listen(files.controlSocket, (op, msg) => requests.handle(op, msg),
    (m) => opts.onMessage?.(m), (line) => say(`control channel: not a message: ${line.slice(0, 200)}`));

  // setpriv makes the kernel kill QEMU if this runner dies without cleaning up (SIGKILL).
  const setpriv = which('setpriv');
  const [cmd, cmdArgs] = setpriv ? [setpriv, ['--pdeathsig', 'KILL', '--', qemu, ...args]] : [qemu, args];
  const timeoutSec = opts.timeoutSec ?? spec.timeoutSec;
  const bootTimeoutSec = opts.bootTimeoutSec ?? spec.bootTimeoutSec;
  const stallSec = opts.stallSec ?? 30;
  say(`scenario ${spec.name}: ${spec.description}`);
  say(`starting QEMU ${l1Qemu.version} (${l1Qemu.origin}; TCG ${tcg}-threaded, ${opts.cpus ?? 2} CPUs, ${opts.memory ?? '2G'}); boot timeout ${bootTimeoutSec} s, scenario timeout ${timeoutSec} s, stall after ${stallSec} s without a heartbeat; log ${path.relative(repoRoot, logFile)}`);

  let child: ChildProcess;
  try {
    child = spawn(cmd, cmdArgs, { detached: true, env: { ...process.env, ...l1Qemu.env }, stdio: [opts.interactive ? 'inherit' : 'pipe', 'pipe', 'pipe'] });
  } catch (e) {
    fs.closeSync(log);
    control.close();
    qmp.close();
    removeRunFiles(files);
    throw new RigError(`cannot start ${qemu}: ${(e as Error).message}`);
  }
  const pgid = child.pid ?? null;

  // Kill on the way out, however the way out is taken.
  const killNow = () => { if (pgid !== null) killGroup(pgid, 'SIGKILL'); };
  const onExit = () => killNow();
  let signalled = null as NodeJS.Signals | null;
  let finish: ((o: RigOutcome) => void) | null = null;
  const onSignal = (sig: NodeJS.Signals) => {
    signalled = sig;
    finish?.({ kind: 'error', detail: `interrupted by ${sig}` });
  };
  process.on('exit', onExit);
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  // Assigned from event callbacks; the explicit type keeps TS from narrowing it to null.
  let bootSeconds = null as number | null;
  let tripleFault = false;
  let kernelPanic = false;
  let exitInfo: string | null = null;
  let heartbeats = 0;
  const outcome = await new Promise<RigOutcome>((resolve) => {
    let done = false;
    let timer: NodeJS.Timeout | null = null;
    // From L1's /init on, no heartbeat for stallSec means L1's user space stopped running.
    // Its kernel may still print (soft lockup reports every 30 s), so only the heartbeat counts.
    let lastHeartbeat = Date.now();
    let watching = false;
    const stallWatch = setInterval(() => {
      const quiet = (Date.now() - lastHeartbeat) / 1000;
      if (watching && !opts.interactive && quiet > stallSec) {
        finish?.({ kind: 'stall', detail: `L1 stalled: no heartbeat for ${quiet.toFixed(0)} s` });
      }
    }, 1000);
    finish = (o) => {
      if (done) return;
      done = true;
      if (timer) clearTimeout(timer);
      clearInterval(stallWatch);
      resolve(o);
    };
    const arm = (sec: number, what: string) => {
      if (timer) clearTimeout(timer);
      timer = setTimeout(() => finish?.({ kind: 'timeout', detail: what }), sec * 1000);
    };
    arm(bootTimeoutSec, `L1 did not start scenario ${spec.name} within ${bootTimeoutSec} s of starting QEMU`);

    if (pgid === null) { finish({ kind: 'error', detail: `cannot start ${qemu}` }); return; }
    say(`QEMU pid ${pgid} (-name ${token})`);
    let partial = '';
    const onLine = (raw: string) => {
      const line = raw.replace(/\r$/, '').replace(/\r/g, '');
      if (STAGE_RE.test(line) && !watching) { watching = true; lastHeartbeat = Date.now(); }
      if (HEARTBEAT_RE.test(line)) { heartbeats++; lastHeartbeat = Date.now(); return; }
      fs.writeSync(log, line + '\n');
      if (!opts.interactive) print(`${stamp()} ${line}`);
      if (bootSeconds === null && START_RE.test(line)) {
        bootSeconds = (Date.now() - t0) / 1000;
        arm(timeoutSec, `scenario ${spec.name} gave no result within ${timeoutSec} s of starting`);
      }
      const m = RESULT_RE.exec(line);
      if (m) finish?.({ kind: m[1] === 'PASS' ? 'pass' : 'fail', detail: m[2] });
      else if (isL1KernelPanic(line)) {
        kernelPanic = true;
        finish?.({ kind: 'error', detail: `L1 kernel panic: ${line}` });
      }
    };
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (chunk: string) => {
      // Interactive: the terminal gets the text as it comes (a prompt has no newline);
      // lines are still assembled to find the RIG-* markers.
      if (opts.interactive) process.stdout.write(chunk);
      partial += chunk;
      let nl: number;
      while ((nl = partial.indexOf('\n')) >= 0) {
        onLine(partial.slice(0, nl));
        partial = partial.slice(nl + 1);
      }
    });
    let errPartial = '';
    const onErrLine = (l: string) => { if (l.trim()) { fs.writeSync(log, `qemu: ${l}\n`); print(`${stamp()} qemu: ${l}`); } };
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (chunk: string) => {
      const lines = (errPartial + chunk).split('\n');
      errPartial = lines.pop() ?? '';
      lines.forEach(onErrLine);
    });
    child.stderr!.on('end', () => { onErrLine(errPartial); errPartial = ''; });
    child.on('error', (e) => finish?.({ kind: 'error', detail: `cannot start ${qemu}: ${e.message}` }));
    child.on('exit', (code, sig) => {
      exitInfo = sig ? `signal ${sig}` : `exit code ${code}`;
      if (partial) { onLine(partial); partial = ''; }
      // Let stdout drain: the result line may arrive in the same instant as the exit.
      setTimeout(() => {
        let why = '';
        try {
          tripleFault = fs.readFileSync(debugLog, 'latin1').includes('Triple fault');
          if (tripleFault) why = `; L1 triple-faulted (QEMU log: ${path.relative(repoRoot, debugLog)})`;
        } catch { /* no debug log */ }
        finish?.({ kind: 'error', detail: `QEMU ended (${exitInfo}) before the scenario gave a result${why}` });
      }, 200);
    });
  });

  try {
    if (outcome.kind === 'timeout' || outcome.kind === 'stall') say(`${outcome.kind.toUpperCase()}: ${outcome.detail}; stopping QEMU`);
    if ((outcome.kind === 'pass' || outcome.kind === 'fail') && child.exitCode === null && child.signalCode === null) {
      // L1 powers itself off right after its result; let it, rather than cut it short.
      await Promise.race([new Promise((r) => child.once('exit', r)), new Promise((r) => setTimeout(r, 3000))]);
    }
    if (pgid !== null) await stopGroup(pgid, child, say);
  } finally {
    process.off('exit', onExit);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    fs.writeSync(log, `rig: ${heartbeats} heartbeats from L1\n`);
    fs.closeSync(log);
    control.close();
    await requests.close();
    qmp.close();
    removeRunFiles(files);
  }
  const report: RunReport = {
    scenario: spec.name, outcome, bootSeconds, totalSeconds: (Date.now() - t0) / 1000, qemuPid: pgid, token, logFile, interrupted: signalled,
    l1TripleFault: outcome.kind === 'error' && tripleFault, l1KernelPanic: outcome.kind === 'error' && kernelPanic, retried: [],
  };
  say(`${outcome.kind.toUpperCase()}: ${outcome.detail} (L1 boot ${bootSeconds === null ? '-' : bootSeconds.toFixed(1)} s, total ${report.totalSeconds.toFixed(1)} s)`);
  return report;
}

/** Asks QEMU's process group to stop, then kills whatever is left of it. */
async function stopGroup(pgid: number, child: ChildProcess, say: (m: string) => void): Promise<void> {
  const exited = child.exitCode !== null || child.signalCode !== null
    ? Promise.resolve()
    : new Promise<void>((r) => child.once('exit', () => r()));
  if (isAlive(pgid)) killGroup(pgid, 'SIGTERM');
  const waited = await Promise.race([exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 5000))]);
  if (!waited || groupAlive(pgid)) {
    say('QEMU did not stop on SIGTERM; sending SIGKILL');
    killGroup(pgid, 'SIGKILL');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
  }
  if (groupAlive(pgid)) {
    // A zombie group member cannot be killed; anything else here is a bug worth a loud line.
    const left = spawnSync('ps', ['-o', 'pid,stat,args', '-g', String(pgid)], { encoding: 'utf8' }).stdout;
    say(`warning: processes of group ${pgid} remain:\n${left}`);
  }
}

/** A scratch folder per attempt, under /tmp so socket paths stay short. */
function makeRunFiles(token: string): RunFiles {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${token}-`));
  const outDir = path.join(rigBuildDir, 'out', token);
  fs.mkdirSync(outDir, { recursive: true });
  pruneOutDirs(path.dirname(outDir), 20);
  return { dir, controlSocket: path.join(dir, 'control.sock'), qmpSocket: path.join(dir, 'qmp.sock'), outDir };
}

function removeRunFiles(files: RunFiles): void {
  fs.rmSync(files.dir, { recursive: true, force: true });
}

function pruneOutDirs(dir: string, keep: number): void {
  const runs = fs.readdirSync(dir).map((f) => ({ f, t: fs.statSync(path.join(dir, f)).mtimeMs })).sort((a, b) => a.t - b.t);
  for (const r of runs.slice(0, Math.max(0, runs.length - keep))) fs.rmSync(path.join(dir, r.f), { recursive: true, force: true });
}

/**
 * What a scenario may ask of the rig host: raw QMP, unplugging and plugging the devices L1
 * was started with (the same port; another driver imitates a device that re-enumerates with
 * another product ID), adding PCI devices, and reading files QEMU writes on the host.
 */
class RigRequests {
  constructor(private readonly qmp: QmpServerClient, private readonly command: QemuCommand, private readonly say: (m: string) => void) {}

  async handle(op: string, m: ControlMessage): Promise<unknown> {
    const str = (k: string): string => {
      const v = m[k];
      if (typeof v !== 'string' || !v) throw new Error(`${op} needs a string "${k}"`);
      return v;
    };
    switch (op) {
      case 'qmp': {
        const args = m.arguments;
        if (args !== undefined && (typeof args !== 'object' || args === null)) throw new Error('qmp "arguments" must be an object');
        return this.qmp.execute(str('execute'), args as Record<string, unknown> | undefined);
      }
      case 'unplug': return this.unplug(str('device'));
      case 'plug': return this.plug(str('device'), typeof m.driver === 'string' ? m.driver : undefined, m.props);
      case 'devices': return [...this.command.pluggable.values()];
      // QEMU writes these into the run's shared folder, where L1 reads them under /rig-out.
      case 'host-files': return Object.fromEntries(Object.keys(this.command.hostFiles).map((k) => [k, `/rig-out/${k}`]));
      case 'browser': return this.browser();
      case 'forward': {
        const port = Number(m.port);
        if (!Number.isInteger(port) || port < 1024 || port > 65535) throw new Error('forward needs a "port" from 1024 to 65535');
        // Same number on both sides, so a page's Host header names the server it reached.
        const out = await this.qmp.execute('human-monitor-command', { 'command-line': `hostfwd_add rignet tcp:127.0.0.1:${port}-${RIG_NET_L1_ADDRESS}:${port}` });
        if (typeof out === 'string' && out.trim()) throw new Error(`hostfwd_add ${port}: ${out.trim()}`);
        return `127.0.0.1:${port} on the rig host reaches ${RIG_NET_L1_ADDRESS}:${port} in L1`;
      }
      default: throw new Error(`unknown request "${op}"`);
    }
  }

  private browserServer: { wsEndpoint(): string; close(): Promise<void> } | null = null;

  /** Debian's Chromium on the rig host, for Playwright in L1 (Chromium under TCG is far too slow). */
  private async browser(): Promise<string> {
    if (!this.browserServer) {
      const { chromium } = await import('playwright-core');
      this.browserServer = await chromium.launchServer({
        executablePath: '/usr/bin/chromium', headless: true, host: '127.0.0.1', port: 0,
        args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      });
      this.say(`Chromium on the rig host for L1: ${this.browserServer.wsEndpoint()}`);
    }
    return this.browserServer.wsEndpoint().replace('ws://127.0.0.1:', `ws://${RIG_NET_HOST_ADDRESS}:`);
  }

  async close(): Promise<void> {
    await this.browserServer?.close().catch(() => undefined);
    this.browserServer = null;
  }

  private async unplug(id: string): Promise<string> {
    const dev = this.command.pluggable.get(id);
    if (!dev) throw new Error(`no device "${id}" to unplug; this run has: ${[...this.command.pluggable.keys()].join(', ') || 'none'}`);
    const deleted = (e: { event: string; data?: Record<string, unknown> }) => e.event === 'DEVICE_DELETED' && e.data?.device === id;
    this.qmp.dropEvents(deleted);
    this.say(`QMP: device_del ${id}`);
    await this.qmp.execute('device_del', { id });
    await this.qmp.waitEvent(deleted, 30000, `QEMU did not report ${id} deleted`);
    return `${id} unplugged`;
  }

  private async plug(id: string, driver: string | undefined, extra: unknown): Promise<string> {
    const known = this.command.pluggable.get(id);
    if (extra !== undefined && (typeof extra !== 'object' || extra === null)) throw new Error('plug "props" must be an object');
    if (!known && !driver) throw new Error(`"${id}" is not one of this run's devices (${[...this.command.pluggable.keys()].join(', ')}): name a driver to add a new one`);
    const dev: PluggableDevice = {
      id, driver: driver ?? known!.driver,
      props: { ...(known?.props ?? {}), ...(extra as Record<string, string | number | boolean> | undefined) },
    };
    this.say(`QMP: device_add ${dev.driver} id=${id} ${JSON.stringify(dev.props)}`);
    await this.qmp.execute('device_add', { driver: dev.driver, id, ...dev.props });
    this.command.pluggable.set(id, dev);
    return `${id} plugged as ${dev.driver}`;
  }
}
