// `npm run rig -- <scenario> [options]`: runs one rig scenario in L1 and exits 0 on PASS,
// 1 on FAIL, 2 on timeout, 3 when the rig itself could not run. `--all` runs every
// scenario that is expected to pass (npm run test:rig); `--ci` only the fast ones.
import fs from 'node:fs';
import path from 'node:path';
import { RigBuildError } from './deb';
import { ALL_DEVICES, DEVICE_NAMES, parseDeviceList } from './devices';
import { RigError, runScenario, type RunOptions, type RunReport } from './runner';
import { SCENARIOS, findScenario, type ScenarioSpec } from './scenarios';

const USAGE = `usage: npm run rig -- <scenario> [--timeout SEC] [--boot-timeout SEC] [--verbose] [--cpus N] [--mem SIZE]
                      [--env NAME=VALUE] [--append KERNEL_ARG] [--devices LIST] [--tcg single|multi] [--repeat N]
       npm run rig -- exec FILE.js [--devices LIST] [options]   (your own script in L1; see test/rig/README.md)
       npm run rig -- --all | --ci | --list
       npm run rig -- shell      (an interactive shell in L1)
devices: ${Object.keys(DEVICE_NAMES).join(', ')}, all`;

const SIGNAL_CODES: Record<string, number> = { SIGINT: 130, SIGTERM: 143 };

function fail(message: string): never {
  process.stderr.write(`rig: ${message}\n${USAGE}\n`);
  process.exit(3);
}

let repeat = 1;

/**
 * `--repeat N`: each scenario N times without the stall and triple-fault retry, and a tally
 * of the outcomes, to measure how often L1 stalls (the retry would hide it).
 */
async function tally(specs: ScenarioSpec[], opts: RunOptions, times: number): Promise<number> {
  const counts = new Map<string, number>();
  const seconds: number[] = [];
  for (let i = 0; i < times; i++) {
    for (const spec of specs) {
      const r = await runScenario(spec, { ...opts, l1FaultRetries: 0 });
      if (r.interrupted) return SIGNAL_CODES[r.interrupted] ?? 1;
      const kind = r.l1TripleFault ? 'triple-fault' : r.l1KernelPanic ? 'kernel-panic' : r.outcome.kind;
      const key = `${spec.name} ${kind}`;
      counts.set(key, (counts.get(key) ?? 0) + 1);
      seconds.push(r.totalSeconds);
      console.log(`rig: tally ${i + 1}/${times} ${spec.name}: ${kind} after ${r.totalSeconds.toFixed(1)} s (${r.outcome.detail.slice(0, 160)})`);
    }
  }
  seconds.sort((a, b) => a - b);
  console.log(`rig: tally over ${times} runs each, TCG ${opts.tcg ?? 'as the scenario says'}: ` +
    [...counts].map(([k, n]) => `${k} ${n}`).join(', ') + `; median run ${seconds[Math.floor(seconds.length / 2)].toFixed(1)} s`);
  return [...counts.keys()].every((k) => k.endsWith(' pass')) ? 0 : 1;
}

function parse(argv: string[]): { names: string[]; opts: RunOptions; list: boolean } {
  const opts: RunOptions = {};
  const names: string[] = [];
  let list = false;
  const num = (flag: string, v: string | undefined): number => {
    const n = Number(v);
    if (v === undefined || !Number.isFinite(n) || n <= 0) fail(`${flag} needs a positive number of seconds`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--timeout') opts.timeoutSec = num(a, argv[++i]);
    else if (a === '--boot-timeout') opts.bootTimeoutSec = num(a, argv[++i]);
    else if (a === '--verbose') opts.verbose = true;
    else if (a === '--cpus') opts.cpus = Math.floor(num(a, argv[++i]));
    else if (a === '--mem') { const v = argv[++i]; if (!v || !/^\d+[MG]$/.test(v)) fail('--mem needs a size like 2G or 1536M'); opts.memory = v; }
    else if (a === '--env') {
      const kv = argv[++i];
      if (!kv || !/^[A-Z][A-Z0-9_]*=[^\s]*$/.test(kv)) fail('--env needs NAME=VALUE with an upper-case NAME and no spaces in VALUE');
      (opts.env ??= []).push(kv);
    } else if (a === '--append') {
      const arg = argv[++i];
      if (!arg || /\s/.test(arg)) fail('--append needs one kernel argument without spaces (repeat it for more)');
      (opts.append ??= []).push(arg);
    } else if (a === '--devices') {
      const v = argv[++i];
      if (!v) fail('--devices needs a list such as usb,extra-xhci,iommu');
      try { opts.devices = parseDeviceList(v); } catch (e) { fail(`--devices: ${(e as Error).message}`); }
    } else if (a === '--repeat') {
      repeat = Math.floor(num(a, argv[++i]));
    } else if (a === '--tcg') {
      const v = argv[++i];
      if (v !== 'single' && v !== 'multi') fail('--tcg needs single or multi');
      opts.tcg = v;
    } else if (a === 'exec') {
      const file = argv[++i];
      if (!file) fail('exec needs a script: npm run rig -- exec FILE.js');
      const abs = path.resolve(process.env.INIT_CWD ?? process.cwd(), file);
      if (!fs.existsSync(abs) || !fs.statSync(abs).isFile()) fail(`exec: ${abs} is not a file`);
      opts.execScript = fs.realpathSync(abs);
      names.push('exec');
    } else if (a === '--list') list = true;
    else if (a === '--all') names.push(...SCENARIOS.filter((s) => s.expect === 'pass').map((s) => s.name));
    else if (a === '--ci') names.push(...SCENARIOS.filter((s) => s.ci && s.expect === 'pass').map((s) => s.name));
    else if (a.startsWith('-')) fail(`unknown option ${a}`);
    else names.push(a);
  }
  return { names, opts, list };
}

function specFor(name: string, opts: RunOptions): ScenarioSpec {
  if (name === 'exec') {
    return {
      name: 'exec', description: `${opts.execScript} in L1`, expect: 'pass', ci: false,
      devices: {}, bootTimeoutSec: 240, timeoutSec: 600,
    };
  }
  if (name === 'shell') {
    return {
      name: 'shell', description: 'an interactive busybox shell in L1 with every rig device', expect: 'pass', ci: false,
      devices: ALL_DEVICES, bootTimeoutSec: 240, timeoutSec: 24 * 3600,
    };
  }
  const spec = findScenario(name);
  if (!spec) fail(`there is no scenario "${name}"; known: ${SCENARIOS.map((s) => s.name).join(', ')}, shell`);
  return spec;
}

async function main(): Promise<number> {
  const { names, opts, list } = parse(process.argv.slice(2));
  if (list) {
    for (const s of SCENARIOS) console.log(`${s.name.padEnd(10)} ${s.ci ? 'ci ' : '   '} ${s.description}`);
    return 0;
  }
  if (names.length === 0) fail('name a scenario');
  if (names.includes('exec') && names.length > 1) fail('exec runs one script on its own');
  const specs = names.map((n) => specFor(n, opts));
  if (repeat > 1) return tally(specs, opts, repeat);
  const reports: RunReport[] = [];
  for (const spec of specs) {
    const r = await runScenario(spec, { ...opts, interactive: spec.name === 'shell' });
    reports.push(r);
    if (r.interrupted) return SIGNAL_CODES[r.interrupted] ?? 1;
  }
  if (reports.length === 1) {
    const k = reports[0].outcome.kind;
    return k === 'pass' ? 0 : k === 'fail' ? 1 : k === 'timeout' || k === 'stall' ? 2 : 3;
  }
  let passed = 0;
  for (const r of reports) {
    const ok = r.outcome.kind === 'pass';
    if (ok) passed++;
    const retries = r.retried.length ? ` (after ${r.retried.length} retry: ${r.retried.map((x) => x.outcome.kind).join(', ')})` : '';
    console.log(`rig: ${ok ? 'ok  ' : 'FAIL'} ${r.scenario.padEnd(10)} ${r.totalSeconds.toFixed(1).padStart(6)} s  ${r.outcome.kind}: ${r.outcome.detail}${retries}`);
  }
  console.log(`${passed} passed, ${reports.length - passed} failed`);
  return passed === reports.length ? 0 : 1;
}

main().then((code) => process.exit(code), (e: Error) => {
  process.stderr.write(`rig: ${e instanceof RigError || e instanceof RigBuildError ? e.message : e.stack}\n`);
  process.exit(3);
});
