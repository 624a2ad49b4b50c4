// Boots the rig's L1 workstation in QEMU (TCG) for one scenario, streams its console with
// timestamps, and ends on the scenario's RIG-RESULT line or a timeout. QEMU runs in its own
// process group with a parent-death signal, and the group is killed on every way out:
// result, timeout, QEMU's own exit, SIGINT/SIGTERM, and exceptions in the runner.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ensureImage, type RigImage } from './build-image';
import { inL1, repoRoot, rigBuildDir } from './paths';
import type { ScenarioSpec } from './scenarios';
import { STICKS, ensureStickImage } from './sticks';

export type RigOutcome =
  | { kind: 'pass' | 'fail'; detail: string }
  | { kind: 'timeout'; detail: string }
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
}

export class RigError extends Error {}

const QEMU = 'qemu-system-x86_64';

function which(cmd: string): string | null {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':')) {
    const p = path.join(dir, cmd);
    try { fs.accessSync(p, fs.constants.X_OK); return p; } catch { /* next */ }
  }
  return null;
}

/** Shares and kernel arguments that let L1 run the host's own node binary. */
function hostShares(): { virtfs: [tag: string, hostPath: string][]; nodeInL1: string } {
  const virtfs: [string, string][] = [['hostusr', '/usr'], ['project', repoRoot]];
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

export function qemuArgs(spec: ScenarioSpec, image: RigImage, opts: RunOptions, token: string, debugLog: string): string[] {
  const shares = hostShares();
  const d = spec.devices;
  const append = [
    'console=ttyS0,115200', 'panic=-1', 'mitigations=off', opts.verbose ? 'loglevel=7' : 'quiet',
    `rig.scenario=${spec.name}`, `rig.kit=${inL1(image.dir)}`, `rig.node=${shares.nodeInL1}`,
    ...(opts.env ?? []).map((kv) => `rig.env=${kv}`),
    ...(opts.append ?? []),
  ];
  const args = [
    // PORTHOLE_RIG_ACCEL (e.g. tcg,thread=single) overrides TCG's threading for experiments.
    '-name', token, '-accel', process.env.PORTHOLE_RIG_ACCEL ?? 'tcg', '-M', 'q35', '-cpu', 'qemu64,+svm,+npt',
    '-m', opts.memory ?? '2G', '-smp', String(opts.cpus ?? 2),
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot', '-monitor', 'none', '-serial', 'stdio',
    // With -no-reboot a reset ends QEMU like a poweroff; this log tells a triple fault apart.
    '-d', 'cpu_reset', '-D', debugLog,
    '-kernel', image.vmlinuz, '-initrd', image.l1Initrd,
  ];
  // The IOMMU goes first: QEMU wants it before the PCI devices it translates for.
  if (d.iommu) {
    args.push('-device', 'intel-iommu,intremap=on');
    append.push('intel_iommu=on', 'iommu=pt');
  }
  for (const [tag, hostPath] of shares.virtfs) {
    args.push('-virtfs', `local,path=${hostPath},mount_tag=${tag},security_model=none,readonly=on`);
  }
  const stickDir = path.join(rigBuildDir, 'sticks');
  const stick = (bus: string, s: (typeof STICKS)[keyof typeof STICKS]) => {
    const file = ensureStickImage(stickDir, s);
    // snapshot=on: guests may write to the stick; the image on disk never changes.
    args.push('-drive', `if=none,id=${s.label},format=raw,file=${file},snapshot=on`);
    args.push('-device', `usb-storage,bus=${bus}.0,drive=${s.label},serial=${s.serial}`);
  };
  if (d.usb) {
    args.push('-device', 'qemu-xhci,id=xhci0');
    stick('xhci0', STICKS.stick0);
    args.push('-device', 'usb-kbd,bus=xhci0.0');
    // usb-serial attaches only once its chardev is open; a null chardev never is, a ringbuf always.
    args.push('-chardev', 'ringbuf,id=usbserial0', '-device', 'usb-serial,bus=xhci0.0,chardev=usbserial0');
  }
  if (d.extraXhci) {
    args.push('-device', 'qemu-xhci,id=xhci1');
    stick('xhci1', STICKS.stick1);
  }
  if (d.e1000) args.push('-netdev', 'user,id=net0', '-device', 'e1000,netdev=net0');
  args.push('-append', append.join(' '));
  return args;
}

const RESULT_RE = /^RIG-RESULT: (PASS|FAIL)\b ?(.*)$/;
const START_RE = /^RIG-SCENARIO-START: /;

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

/**
 * Runs one scenario to its end; never leaves QEMU running when it returns or throws. A run
 * whose L1 triple-faults (QEMU 7.2's TCG emulation of nested SVM does that now and then, in
 * L1's own kernel, whatever the scenario does) is repeated up to `opts.l1FaultRetries` times.
 */
export async function runScenario(spec: ScenarioSpec, opts: RunOptions = {}): Promise<RunReport> {
  const retries = opts.l1FaultRetries ?? 1;
  for (let attempt = 0; ; attempt++) {
    const report = await runAttempt(spec, opts);
    // L1's kernel under TCG also stalls now and then (seen inside KVM_CREATE_VM, before any
    // Porthole code runs): a scenario that should pass but timed out gets one more try too.
    // A real hang in Porthole times out again, and both runs are in the log.
    const stalled = report.outcome.kind === 'timeout' && spec.expect === 'pass';
    if (!(report.l1TripleFault || stalled) || report.interrupted || attempt >= retries) return report;
    (opts.print ?? ((l: string) => process.stdout.write(l + '\n')))(
      `rig: L1 ${stalled ? 'stalled' : 'triple-faulted'} (an emulation fault below the scenario, not its result); running ${spec.name} again`);
  }
}

async function runAttempt(spec: ScenarioSpec, opts: RunOptions): Promise<RunReport> {
  const print = opts.print ?? ((line: string) => process.stdout.write(line + '\n'));
  const t0 = Date.now();
  const stamp = () => `[${((Date.now() - t0) / 1000).toFixed(3).padStart(8)}]`;
  const say = (msg: string) => print(`${stamp()} rig: ${msg}`);

  const qemu = which(QEMU);
  if (!qemu) throw new RigError(`${QEMU} is not installed; run "npm run fixtures" (it installs qemu-system-x86 when run as root)`);
  const image = await ensureImage({ log: say });
  const token = `porthole-rig-${spec.name}-${crypto.randomBytes(4).toString('hex')}`;
  const logDir = path.join(rigBuildDir, 'logs');
  fs.mkdirSync(logDir, { recursive: true });
  pruneLogs(logDir, 40);
  const logFile = path.join(logDir, `${new Date().toISOString().replace(/[:.]/g, '-')}-${spec.name}.log`);
  const debugLog = logFile.replace(/\.log$/, '.qemu-debug.log');
  const args = qemuArgs(spec, image, opts, token, debugLog);
  const log = fs.openSync(logFile, 'w');
  fs.writeSync(log, `${QEMU} ${args.map((a) => (/[\s"']/.test(a) ? JSON.stringify(a) : a)).join(' ')}\n`);

  // setpriv makes the kernel kill QEMU if this runner dies without cleaning up (SIGKILL).
  const setpriv = which('setpriv');
  const [cmd, cmdArgs] = setpriv ? [setpriv, ['--pdeathsig', 'KILL', '--', qemu, ...args]] : [qemu, args];
  const timeoutSec = opts.timeoutSec ?? spec.timeoutSec;
  const bootTimeoutSec = opts.bootTimeoutSec ?? spec.bootTimeoutSec;
  say(`scenario ${spec.name}: ${spec.description}`);
  say(`starting ${QEMU} (TCG, ${opts.cpus ?? 2} CPUs, ${opts.memory ?? '2G'}); boot timeout ${bootTimeoutSec} s, scenario timeout ${timeoutSec} s; log ${path.relative(repoRoot, logFile)}`);

  let child: ChildProcess;
  try {
    child = spawn(cmd, cmdArgs, { detached: true, stdio: [opts.interactive ? 'inherit' : 'pipe', 'pipe', 'pipe'] });
  } catch (e) {
    fs.closeSync(log);
    throw new RigError(`cannot start ${QEMU}: ${(e as Error).message}`);
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
  let exitInfo: string | null = null;
  const outcome = await new Promise<RigOutcome>((resolve) => {
    let done = false;
    let timer: NodeJS.Timeout | null = null;
    finish = (o) => {
      if (done) return;
      done = true;
      if (timer) clearTimeout(timer);
      resolve(o);
    };
    const arm = (sec: number, what: string) => {
      if (timer) clearTimeout(timer);
      timer = setTimeout(() => finish?.({ kind: 'timeout', detail: what }), sec * 1000);
    };
    arm(bootTimeoutSec, `L1 did not start scenario ${spec.name} within ${bootTimeoutSec} s of starting QEMU`);

    if (pgid === null) { finish({ kind: 'error', detail: `cannot start ${QEMU}` }); return; }
    say(`QEMU pid ${pgid} (-name ${token})`);
    let partial = '';
    const onLine = (raw: string) => {
      const line = raw.replace(/\r$/, '').replace(/\r/g, '');
      fs.writeSync(log, line + '\n');
      if (!opts.interactive) print(`${stamp()} ${line}`);
      if (bootSeconds === null && START_RE.test(line)) {
        bootSeconds = (Date.now() - t0) / 1000;
        arm(timeoutSec, `scenario ${spec.name} gave no result within ${timeoutSec} s of starting`);
      }
      const m = RESULT_RE.exec(line);
      if (m) finish?.({ kind: m[1] === 'PASS' ? 'pass' : 'fail', detail: m[2] });
      else if (/Kernel panic - not syncing/.test(line)) finish?.({ kind: 'fail', detail: `L1 kernel panic: ${line}` });
    };
    child.stdout!.setEncoding('latin1');
    child.stdout!.on('data', (chunk: string) => {
      // Interactive: the terminal gets the bytes as they come (a prompt has no newline);
      // lines are still assembled to find the RIG-* markers.
      if (opts.interactive) process.stdout.write(Buffer.from(chunk, 'latin1'));
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
    child.on('error', (e) => finish?.({ kind: 'error', detail: `cannot start ${QEMU}: ${e.message}` }));
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
    if (outcome.kind === 'timeout') say(`TIMEOUT: ${outcome.detail}; stopping QEMU`);
    if ((outcome.kind === 'pass' || outcome.kind === 'fail') && child.exitCode === null && child.signalCode === null) {
      // L1 powers itself off right after its result; let it, rather than cut it short.
      await Promise.race([new Promise((r) => child.once('exit', r)), new Promise((r) => setTimeout(r, 3000))]);
    }
    if (pgid !== null) await stopGroup(pgid, child, say);
  } finally {
    process.off('exit', onExit);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    fs.closeSync(log);
  }
  const report: RunReport = {
    scenario: spec.name, outcome, bootSeconds, totalSeconds: (Date.now() - t0) / 1000, qemuPid: pgid, token, logFile, interrupted: signalled,
    l1TripleFault: outcome.kind === 'error' && tripleFault,
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
