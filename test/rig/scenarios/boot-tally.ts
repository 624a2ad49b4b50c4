// Boots the L2 kit N times under Porthole and N times under QEMU (-accel kvm) in one L1,
// alternating, with the same kernel, command line, 1 vCPU and 256M, and counts per VMM how
// often the guest reached its shell, reset by itself or stalled (no console output for a
// while). Options (npm run rig -- boot-tally --env NAME=VALUE): N (boots per VMM, default 20),
// VMMS (default porthole,qemu), APPEND (added to the kernel command line, '+' between arguments), STALL_SEC
// (default 60), SHELL_SEC (default 240), ECHO=1 (log the guests' consoles) and DIAG=1, which samples L1's KVM statistics and
// trace events for the stalled guest before it is killed.
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { SerialConsole } from '../console';
import { l1ProjectDir } from '../paths';
import { consoleLogger, scenario, type ScenarioContext } from '../scenario';

// qemu-nohpet: QEMU without an HPET, so Linux ticks from the PIT as it does on Porthole.
type Vmm = 'porthole' | 'qemu' | 'qemu-nohpet';
type Outcome = 'shell' | 'reset' | 'stall' | 'exit' | 'timeout';

interface Boot {
  vmm: Vmm;
  outcome: Outcome;
  seconds: number;
  detail: string;
}

const env = (name: string, fallback: string) => process.env[`RIG_${name}`] ?? fallback;

scenario('boot-tally', async (ctx) => {
  const n = Number(env('N', '20'));
  const vmms = env('VMMS', 'porthole,qemu').split(',') as Vmm[];
  // The runner's --env takes no spaces: '+' separates kernel arguments in APPEND.
  const append = `console=ttyS0 panic=-1 ${env('APPEND', 'quiet').replace(/\+/g, ' ')}`.trim();
  const stallSec = Number(env('STALL_SEC', '60'));
  const shellSec = Number(env('SHELL_SEC', '240'));
  const diag = env('DIAG', '') === '1';
  const boots: Boot[] = [];
  ctx.log(`${n} boots per VMM (${vmms.join(', ')}), command line "${append}", stall after ${stallSec} s of silence`);
  for (let i = 0; i < n; i++) {
    for (const vmm of vmms) {
      const boot = await bootOnce(ctx, vmm, append, stallSec, shellSec, diag);
      boots.push(boot);
      ctx.log(`boot ${i + 1}/${n} ${vmm}: ${boot.outcome} after ${boot.seconds.toFixed(1)} s${boot.detail ? ` (${boot.detail})` : ''}`);
    }
  }
  // RIPS=a,b names more guest addresses to look up (from an earlier run with nokaslr).
  for (const rip of env('RIPS', '').split(',').filter(Boolean)) stalledRips.add(rip.padStart(16, '0'));
  if (diag && stalledRips.size > 0) await resolveRips(ctx, append);
  const summary = vmms.map((vmm) => tallyLine(vmm, boots.filter((b) => b.vmm === vmm))).join('; ');
  ctx.log(`TALLY ${summary}`);
  // A tally is a measurement: it passes whatever the counts are, unless nothing booted at all.
  if (!boots.some((b) => b.outcome === 'shell')) throw new Error(`no boot reached the shell: ${summary}`);
  return summary;
});

function tallyLine(vmm: Vmm, boots: Boot[]): string {
  const count = (o: Outcome) => boots.filter((b) => b.outcome === o).length;
  const shellTimes = boots.filter((b) => b.outcome === 'shell').map((b) => b.seconds).sort((a, b) => a - b);
  const times = shellTimes.length ? ` (shell ${shellTimes[0].toFixed(1)}..${shellTimes[shellTimes.length - 1].toFixed(1)} s, median ${shellTimes[Math.floor(shellTimes.length / 2)].toFixed(1)} s)` : '';
  const other = (['exit', 'timeout'] as Outcome[]).filter((o) => count(o) > 0).map((o) => `, ${o} ${count(o)}`).join('');
  return `${vmm}: ${boots.length} boots, shell ${count('shell')}, reset ${count('reset')}, stall ${count('stall')}${other}${times}`;
}

function commandFor(ctx: ScenarioContext, vmm: Vmm, append: string): [string, string[]] {
  if (vmm === 'porthole') {
    return [process.execPath, [
      `${l1ProjectDir}/bin/porthole`, 'run', '--kernel', ctx.kit.vmlinuz, '--initrd', ctx.kit.initrd,
      '--append', append, '--mem', '256M', '--cpus', '1', '--serial', 'stdio', '--verbose', '--stats',
    ]];
  }
  // -no-reboot: a guest reset ends QEMU, which is how a reset is told apart here.
  return ['qemu-system-x86_64', [
    '-accel', 'kvm', '-M', vmm === 'qemu-nohpet' ? 'q35,hpet=off' : 'q35', '-cpu', 'host', '-m', '256M', '-smp', '1',
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot', '-monitor', 'none', '-serial', 'stdio',
    '-kernel', ctx.kit.vmlinuz, '-initrd', ctx.kit.initrd, '-append', append,
  ]];
}

async function bootOnce(ctx: ScenarioContext, vmm: Vmm, append: string, stallSec: number, shellSec: number, diag: boolean): Promise<Boot> {
  const [command, args] = commandFor(ctx, vmm, append);
  const t0 = Date.now();
  const seconds = () => (Date.now() - t0) / 1000;
  // --env PORTHOLE_X=v reaches the scenario as RIG_PORTHOLE_X: hand it to Porthole as PORTHOLE_X.
  const passed = Object.entries(process.env).filter(([k]) => k.startsWith('RIG_PORTHOLE_')).map(([k, v]) => [k.slice(4), v]);
  const child = ctx.spawn(command, args, { env: { ...process.env, ...Object.fromEntries(passed), PORTHOLE_FORBID_KOFFI_VIEW: '1' } });
  const echo = env('ECHO', '') === '1' ? consoleLogger(`L2/${vmm}| `) : null;
  let lastOutput = Date.now();
  let reset = false;
  let lastLine = '';
  const stderr: string[] = [];
  child.stderr!.on('data', (d: Buffer) => {
    for (const l of d.toString().split('\n')) {
      if (!l.trim()) continue;
      if (l.includes('porthole: guest reset')) reset = true;
      stderr.push(l);
    }
  });
  const con = SerialConsole.fromChild(child, {
    name: `L2 on ${vmm}`,
    onOutput: (text) => {
      lastOutput = Date.now();
      echo?.(text);
      const lines = text.split(/\r?\n/).filter((l) => l.trim());
      if (lines.length) lastLine = lines[lines.length - 1];
    },
  });
  const exited = new Promise<string>((resolve) => child.once('exit', (code, sig) => resolve(sig ?? `code ${code}`)));
  let stallTimer: NodeJS.Timeout | undefined;
  const stalled = new Promise<'stall'>((resolve) => {
    stallTimer = setInterval(() => { if (Date.now() - lastOutput > stallSec * 1000) resolve('stall'); }, 1000);
  });
  // DIAG: KVM's counters over the same early window of every boot, for both VMMs.
  let earlySample: NodeJS.Timeout | undefined;
  if (diag) earlySample = setTimeout(() => ctx.log(`${vmm} at 8 s: ${kvmStatDeltas(ctx, 3000)}`), 8000);
  // LATE_PROBE=1: type nothing until the kernel frees its init memory (needs a verbose log),
  // so no console input (and no vCPU kick for it) reaches the guest during early boot.
  const probeAfter = env('LATE_PROBE', '') === '1' ? con.waitFor(/Freeing unused kernel|Run \/init/, shellSec * 1000).then(() => undefined) : Promise.resolve();
  const shell = probeAfter.then(() => con.waitForShell(shellSec * 1000)).then(() => 'shell' as const, (e: Error) => (/closed/.test(e.message) ? 'closed' as const : 'timeout' as const));
  let outcome: Outcome;
  let detail = '';
  const first = await Promise.race([shell, stalled, exited.then(() => 'closed' as const)]);
  const at = seconds();
  clearInterval(stallTimer);
  clearTimeout(earlySample);
  if (first === 'shell') {
    outcome = 'shell';
    if (diag) {
      // Interrupts the guest counted against what L1's KVM says it injected: more in the guest
      // than injected would mean interrupts reach L2 past KVM (a nested-virtualization bug).
      const interrupts = await con.runOk("grep -E '^ *(0|4|LOC|TIMER|RES|CAL|ERR|SPU):' /proc/interrupts").catch((e: Error) => e.message);
      const injected = runShell(ctx, 'cat /sys/kernel/debug/kvm/*-*/irq_injections 2>/dev/null || (mount -t debugfs none /sys/kernel/debug && cat /sys/kernel/debug/kvm/*-*/irq_injections)').trim();
      ctx.log(`${vmm} at the shell: KVM irq_injections ${injected}; guest /proc/interrupts:\n${interrupts}`);
    }
  } else if (first === 'stall') {
    outcome = 'stall';
    detail = `last line: ${lastLine.trim().slice(0, 160)}`;
    if (diag && vmm === 'porthole') {
      // Porthole logs vCPU 0's registers, LAPIC and stack on SIGUSR2 (with --verbose).
      const from = stderr.length;
      try { process.kill(child.pid!, 'SIGUSR2'); } catch { /* gone */ }
      await new Promise((r) => setTimeout(r, 3000));
      const dump = stderr.slice(from).join('\n');
      ctx.log(`vCPU dump:\n${dump}`);
      for (const m of dump.matchAll(/0x(ffffffff[89a-f][0-9a-f]{7})\b/g)) stalledRips.add(m[1]);
    }
    if (diag) await sampleKvm(ctx, child);
  } else if (first === 'closed') {
    // QEMU with -no-reboot exits on a guest reset; Porthole says so on stderr first.
    const end = await exited;
    outcome = reset || (vmm !== 'porthole' && end === 'code 0') ? 'reset' : 'exit';
    detail = `${vmm} ended ${end}; last line: ${lastLine.trim().slice(0, 160)}`;
  } else {
    outcome = 'timeout';
    detail = `last line: ${lastLine.trim().slice(0, 160)}`;
  }
  if (reset && outcome !== 'shell') outcome = 'reset';
  if (outcome !== 'shell' && stderr.length) ctx.log(`${vmm} stderr (last lines):\n${stderr.slice(-12).join('\n')}`);
  await stop(child, exited);
  con.close();
  return { vmm, outcome, seconds: at, detail };
}

async function stop(child: ChildProcess, exited: Promise<string>): Promise<void> {
  try { if (child.pid) process.kill(-child.pid, 'SIGKILL'); } catch { /* already gone */ }
  await exited;
}

function runShell(ctx: ScenarioContext, cmd: string): string {
  try { return ctx.exec('sh', ['-c', cmd]); } catch (e) { return `(${(e as Error).message})`; }
}

/** The change of every non-zero KVM statistic of the (only) VM in L1 over `ms` (blocks). */
function kvmStatDeltas(ctx: ScenarioContext, ms: number): string {
  runShell(ctx, 'mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug');
  const vmDir = runShell(ctx, 'ls -d /sys/kernel/debug/kvm/*-*/ | head -1').trim();
  const read = () => runShell(ctx, `cd ${vmDir} && grep -H . * 2>/dev/null | grep -v ':0$'`);
  const parse = (s: string) => new Map(s.split('\n').map((l) => l.split(':')).filter((p) => p.length === 2).map(([k, v]) => [k, Number(v)]));
  const before = parse(read());
  runShell(ctx, `sleep ${ms / 1000}`);
  return [...parse(read())].map(([k, v]) => `${k}=${v}(+${v - (before.get(k) ?? 0)})`).join(' ');
}

/** Guest RIPs seen in the trace of a stalled Porthole guest (16 hex digits). */
const stalledRips = new Set<string>();

/**
 * Names the functions behind `stalledRips`: boots the kit under QEMU with the same command
 * line (which should have nokaslr) and looks them up in the guest's /proc/kallsyms.
 */
async function resolveRips(ctx: ScenarioContext, append: string): Promise<void> {
  const [command, args] = commandFor(ctx, 'qemu', append);
  const child = ctx.spawn(command, args);
  const exited = new Promise<string>((resolve) => child.once('exit', (code, sig) => resolve(sig ?? `code ${code}`)));
  const con = SerialConsole.fromChild(child, { name: 'L2 on qemu (kallsyms)' });
  try {
    await con.waitForShell(240000);
    for (const rip of stalledRips) {
      const sym = await con.runOk(`sort /proc/kallsyms | awk -v r=${rip} '$1 <= r { l = $0 } $1 > r { print l; exit }'`);
      ctx.log(`rip ${rip}: ${sym.trim()}`);
    }
  } catch (e) {
    ctx.log(`could not resolve rips: ${(e as Error).message.split('\n')[0]}`);
  }
  await stop(child, exited);
  con.close();
}

/** KVM's per-VM statistics twice, 5 s apart, and 2 s of KVM trace events, from L1's debugfs. */
async function sampleKvm(ctx: ScenarioContext, child: ChildProcess): Promise<void> {
  const sh = (cmd: string) => {
    try { return ctx.exec('sh', ['-c', cmd]); } catch (e) { return `(${(e as Error).message})`; }
  };
  sh('mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug');
  sh('mountpoint -q /sys/kernel/tracing || mount -t tracefs none /sys/kernel/tracing');
  ctx.log(`threads of pid ${child.pid}:\n${sh(`for t in /proc/${child.pid}/task/*; do echo "$(cat $t/comm) $(cut -d' ' -f3,14,15 $t/stat) $(cat $t/wchan)"; done`)}`);
  ctx.log(`KVM stats over 5 s: ${kvmStatDeltas(ctx, 5000)}`);
  const vmDir = sh('ls -d /sys/kernel/debug/kvm/*-*/ | head -1').trim();
  ctx.log(`vcpu0: ${sh(`cd ${vmDir}vcpu0 && grep -H . * 2>/dev/null | tr '\\n' ' '`)}`);
  const t = '/sys/kernel/tracing';
  sh(`echo 0 > ${t}/tracing_on; echo > ${t}/trace; echo 4096 > ${t}/buffer_size_kb; echo 1 > ${t}/events/kvm/enable; echo 1 > ${t}/tracing_on`);
  await new Promise((r) => setTimeout(r, 2000));
  sh(`echo 0 > ${t}/tracing_on`);
  ctx.log(`trace event counts:\n${sh(`grep -v '^#' ${t}/trace | awk '{print $5}' | sort | uniq -c | sort -rn | head -20`)}`);
  const rips = sh(`grep -o 'kvm_exit: .* rip 0x[0-9a-f]*' ${t}/trace | sed 's/.*rip 0x//' | sort | uniq -c | sort -rn | head -4`);
  for (const m of rips.matchAll(/^\s*\d+ ([0-9a-f]{16})$/gm)) stalledRips.add(m[1]);
  ctx.log(`exit reasons and rips:\n${sh(`grep kvm_exit: ${t}/trace | sed -E 's/.*reason ([A-Za-z_0-9]+).*rip (0x[0-9a-f]+).*/\\1 \\2/' | sort | uniq -c | sort -rn | head -20`)}`);
  ctx.log(`trace head:\n${sh(`grep -v '^#' ${t}/trace | head -16`)}`);
  ctx.log(`trace (non-exit/entry):\n${sh(`grep -v '^#' ${t}/trace | grep -v 'kvm_exit:\\|kvm_entry:' | head -30`)}`);
  sh(`echo 0 > ${t}/events/kvm/enable`);
}
