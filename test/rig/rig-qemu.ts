// The QEMU that runs the rig's L1 (TCG with nested SVM). Debian 12's QEMU 7.2 loses L1s:
// its multi-threaded TCG stalls L1 around nested VM resets, and on its single-threaded TCG
// every nested Linux boot stalls. QEMU 10's multi-threaded TCG (bookworm-backports) does
// neither (its single-threaded TCG still stalls nested boots, half as often), so on Debian 12
// the rig fetches it into build/rig/qemu/ with an apt state of its own: the system's apt
// sources and installed packages stay as they are, and the system QEMU (7.2) stays the one
// L1 runs for its own guests (the benches' reference). Elsewhere, or when the fetch fails,
// the rig says why and runs the system QEMU. See test/rig/README.md, "Which QEMU".
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { rigBuildDir } from './paths';
import type { TcgMode } from './scenarios';

export interface RigQemu {
  binary: string;
  /** As `--version` prints it, e.g. "10.0.2". */
  version: string;
  /** Added to the QEMU process's environment (a fetched QEMU's own module directory). */
  env: Record<string, string>;
  /** Where it came from, for the runner's log. */
  origin: string;
  /** L1's TCG threading when neither the scenario nor the command line picks one. */
  defaultTcg: TcgMode;
}

const BINARY = 'qemu-system-x86_64';
/** The fetched QEMU's packages; the firmware comes from the system's seabios package. */
const PACKAGES = ['qemu-system-x86', 'qemu-system-common', 'qemu-system-data'];
const SUITE = 'bookworm-backports';
const MIRROR = 'http://deb.debian.org/debian';
const KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';

/** "QEMU emulator version 10.0.2 (Debian ...)" → "10.0.2", or null. */
export function parseQemuVersion(versionOutput: string): string | null {
  return /QEMU emulator version (\d+\.\d+(?:\.\d+)?)/.exec(versionOutput)?.[1] ?? null;
}

/**
 * Multi-threaded TCG from QEMU 10 on: measured here, it neither stalls L1 at nested resets
 * (10 of 10 reset loops) nor L2 boots (25 of 25 per VMM); 7.2's did the first 4 times in 10.
 * Single-threaded TCG stalls nested Linux boots on both (QEMU 10: 3 of 8 shells).
 */
export function defaultTcgFor(version: string): TcgMode {
  const major = Number(version.split('.')[0]);
  return major >= 10 ? 'multi' : 'single';
}

/** The os-release VERSION_CODENAME, or null. */
export function osCodename(osRelease: string): string | null {
  const m = /^VERSION_CODENAME=["']?([A-Za-z0-9._-]+)["']?\s*$/m.exec(osRelease);
  return m ? m[1] : null;
}

/** The path of an executable `cmd` on PATH, or null. */
export function which(cmd: string): string | null {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':')) {
    const p = path.join(dir, cmd);
    try { fs.accessSync(p, fs.constants.X_OK); return p; } catch { /* next */ }
  }
  return null;
}

/** The version a QEMU binary prints, or an error sentence. */
function probe(binary: string, env: Record<string, string>): { version: string } | { error: string } {
  const r = spawnSync(binary, ['--version'], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 20000 });
  if (r.error) return { error: `${binary} does not run: ${(r.error as NodeJS.ErrnoException).code ?? r.error.message}` };
  const version = parseQemuVersion(r.stdout ?? '');
  if (r.status !== 0 || !version) return { error: `${binary} --version failed: ${(r.stderr || r.stdout || `status ${r.status}`).trim().split('\n')[0]}` };
  return { version };
}

function fromBinary(binary: string, env: Record<string, string>, origin: string): RigQemu | { error: string } {
  const p = probe(binary, env);
  if ('error' in p) return p;
  return { binary, version: p.version, env, origin, defaultTcg: defaultTcgFor(p.version) };
}

const fetchedRoot = path.join(rigBuildDir, 'qemu');
const readyFile = path.join(fetchedRoot, 'ready.json');

function fetchedEnv(dir: string): Record<string, string> {
  return { QEMU_MODULE_DIR: path.join(dir, 'usr', 'lib', 'x86_64-linux-gnu', 'qemu') };
}

/** The QEMU fetched earlier, if it is still there and runs. */
function alreadyFetched(): RigQemu | null {
  try {
    const ready = JSON.parse(fs.readFileSync(readyFile, 'utf8')) as { dir: string; package: string };
    const dir = path.join(fetchedRoot, ready.dir);
    const q = fromBinary(path.join(dir, 'usr', 'bin', BINARY), fetchedEnv(dir), `${SUITE} ${ready.package}`);
    return 'error' in q ? null : q;
  } catch {
    return null;
  }
}

function run(cmd: string, args: string[], cwd?: string): { ok: boolean; detail: string; stdout: string } {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', maxBuffer: 16 * 1024 * 1024, timeout: 300000 });
  if (r.error) return { ok: false, detail: `cannot run ${cmd}: ${(r.error as NodeJS.ErrnoException).code ?? r.error.message}`, stdout: '' };
  const last = (r.stderr ?? '').trim().split('\n').filter((l) => l && !l.startsWith('W:')).pop() ?? '';
  return { ok: r.status === 0, detail: r.status === 0 ? '' : `${cmd} ${args[args.length - 1]}: ${last || `status ${r.status}`}`, stdout: r.stdout ?? '' };
}

/**
 * Fetches QEMU from bookworm-backports into build/rig/qemu/<version>/; an error sentence on
 * failure. Each process works in its own apt and staging folders, so two runners starting at
 * once do not trip over each other; the first to finish publishes its copy.
 */
function fetchBackports(log: (line: string) => void): RigQemu | { error: string } {
  fs.mkdirSync(fetchedRoot, { recursive: true });
  const work = fs.mkdtempSync(path.join(fetchedRoot, 'fetch-'));
  try {
    return fetchInto(work, log);
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

function fetchInto(work: string, log: (line: string) => void): RigQemu | { error: string } {
  const aptDir = path.join(work, 'apt');
  for (const d of ['lists/partial', 'cache/archives/partial', 'parts', 'debs']) fs.mkdirSync(path.join(aptDir, d), { recursive: true });
  fs.writeFileSync(path.join(aptDir, 'sources.list'), `deb [signed-by=${KEYRING}] ${MIRROR} ${SUITE} main\n`);
  fs.writeFileSync(path.join(aptDir, 'status'), '');
  // Only this private state: the system's sources, lists and dpkg status are neither read nor written.
  const opts = [
    '-q', '-o', `Dir::Etc::SourceList=${path.join(aptDir, 'sources.list')}`, '-o', `Dir::Etc::SourceParts=${path.join(aptDir, 'parts')}`,
    '-o', `Dir::State::Lists=${path.join(aptDir, 'lists')}`, '-o', `Dir::Cache=${path.join(aptDir, 'cache')}`,
    '-o', `Dir::State::status=${path.join(aptDir, 'status')}`, '-o', 'Debug::NoLocking=1',
    // As root apt would download as _apt, which cannot write into the build tree.
    ...(process.getuid?.() === 0 ? ['-o', 'APT::Sandbox::User=root'] : []),
  ];
  log(`fetching QEMU from Debian ${SUITE} for L1 (once; the system's apt setup is not touched)`);
  const update = run('apt-get', [...opts, 'update']);
  if (!update.ok) return { error: update.detail };
  const policy = run('apt-cache', [...opts, 'policy', PACKAGES[0]]);
  const candidate = /^\s*Candidate:\s*(\S+)/m.exec(policy.stdout)?.[1];
  if (!candidate || candidate === '(none)') return { error: `${SUITE} has no ${PACKAGES[0]}` };
  const debs = path.join(aptDir, 'debs');
  const download = run('apt-get', [...opts, 'download', ...PACKAGES.map((p) => `${p}/${SUITE}`)], debs);
  if (!download.ok) return { error: download.detail };
  const staging = path.join(work, 'root');
  for (const deb of fs.readdirSync(debs).filter((f) => f.endsWith('.deb'))) {
    const x = run('dpkg-deb', ['-x', path.join(debs, deb), staging]);
    if (!x.ok) return { error: x.detail };
  }
  // A library the system lacks shows here: the loader refuses the binary.
  const probed = fromBinary(path.join(staging, 'usr', 'bin', BINARY), fetchedEnv(staging), '');
  if ('error' in probed) return probed;
  const dirName = candidate.replace(/[^A-Za-z0-9.+~-]/g, '_');
  const dir = path.join(fetchedRoot, dirName);
  // Another runner may have published this version first (then its copy is used), or a
  // broken copy may be in the way (then it goes).
  if (fs.existsSync(dir) && 'error' in fromBinary(path.join(dir, 'usr', 'bin', BINARY), fetchedEnv(dir), '')) {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  try {
    fs.renameSync(staging, dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== 'ENOTEMPTY' && code !== 'EEXIST') return { error: `cannot move QEMU into ${dir}: ${code ?? (e as Error).message}` };
  }
  const tmp = path.join(work, 'ready.json');
  fs.writeFileSync(tmp, JSON.stringify({ dir: dirName, package: candidate }) + '\n');
  fs.renameSync(tmp, readyFile);
  return { ...probed, binary: path.join(dir, 'usr', 'bin', BINARY), env: fetchedEnv(dir), origin: `${SUITE} ${candidate}` };
}

let fetched: RigQemu | null = null;

function systemQemu(why: string): RigQemu {
  const bin = which(BINARY);
  if (!bin) throw new Error(`${BINARY} is not installed; run "npm run fixtures" (it installs qemu-system-x86 when run as root)`);
  const q = fromBinary(bin, {}, `the system's, ${why}`);
  if ('error' in q) throw new Error(q.error);
  return q;
}

/** Without PORTHOLE_RIG_QEMU: the fetched QEMU 10 on Debian 12, else the system's (remembered). */
function automatic(log: (line: string) => void): RigQemu {
  if (fetched) return fetched;
  let q = alreadyFetched();
  if (!q) {
    let codename: string | null = null;
    try { codename = osCodename(fs.readFileSync('/etc/os-release', 'utf8')); } catch { /* none */ }
    if (codename !== 'bookworm') {
      q = systemQemu(`this is not Debian 12 (bookworm), whose ${SUITE} has QEMU 10`);
    } else {
      const got = fetchBackports(log);
      if ('error' in got) log(`cannot fetch QEMU from ${SUITE}: ${got.error}`);
      q = 'error' in got ? systemQemu(`the ${SUITE} fetch failed`) : got;
    }
  }
  fetched = q;
  return q;
}

/**
 * The QEMU for L1. PORTHOLE_RIG_QEMU picks one by hand: a path to a qemu-system-x86_64, or
 * "system" for the one on PATH. Throws a sentence when there is none at all.
 */
export function rigQemu(log: (line: string) => void = () => {}): RigQemu {
  const pick = process.env.PORTHOLE_RIG_QEMU;
  let q: RigQemu;
  if (pick === 'system') {
    q = systemQemu('PORTHOLE_RIG_QEMU=system');
  } else if (pick) {
    const got = fromBinary(path.resolve(pick), {}, 'PORTHOLE_RIG_QEMU');
    if ('error' in got) throw new Error(`PORTHOLE_RIG_QEMU: ${got.error}`);
    q = got;
  } else {
    q = automatic(log);
  }
  if (q.defaultTcg === 'single') {
    log(`QEMU ${q.version} (${q.origin}): L1 on single-threaded TCG by default; its multi-threaded TCG stalls L1 at nested resets (test/rig/README.md)`);
  }
  return q;
}
