// For tests: runs the rig's runner (dist/test/rig/run.js) as a child process, as npm run rig
// does, and finds processes it may have left behind.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { repoRoot } from './paths';

export const rigRunner = path.join(repoRoot, 'dist', 'test', 'rig', 'run.js');

/** Why rig tests must skip here, or false. */
export function rigSkipReason(): string | false {
  if (spawnSync('qemu-system-x86_64', ['--version']).status !== 0) return 'qemu-system-x86_64 is not installed (npm run fixtures installs it)';
  if (!fs.existsSync('/usr/bin/apt-get') || !fs.existsSync('/usr/bin/dpkg-deb')) return 'the rig builds its image from Debian packages and this is not a Debian system';
  return false;
}

export interface RunnerHandle {
  child: ChildProcess;
  output(): string;
  /** Resolves with the first match of `re` in the output so far or to come. */
  waitFor(re: RegExp): Promise<RegExpExecArray>;
  ended: Promise<{ code: number | null; signal: NodeJS.Signals | null; output: string }>;
}

export function startRunner(args: string[]): RunnerHandle {
  const child = spawn(process.execPath, [rigRunner, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const watchers: { re: RegExp; resolve: (m: RegExpExecArray) => void }[] = [];
  const onData = (d: Buffer) => {
    out += d.toString();
    for (const w of [...watchers]) {
      const m = w.re.exec(out);
      if (m) { watchers.splice(watchers.indexOf(w), 1); w.resolve(m); }
    }
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  const ended = new Promise<{ code: number | null; signal: NodeJS.Signals | null; output: string }>((resolve) => {
    child.on('close', (code, signal) => resolve({ code, signal, output: out }));
  });
  return {
    child,
    output: () => out,
    waitFor: (re) => new Promise((resolve, reject) => {
      const m = re.exec(out);
      if (m) { resolve(m); return; }
      watchers.push({ re, resolve });
      void ended.then(() => reject(new Error(`the runner ended without printing ${re}; output:\n${out}`)));
    }),
    ended,
  };
}

/** Pids of live processes whose command line contains `token` (QEMU gets it through -name). */
export function processesWith(token: string): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let cmdline = '';
    try { cmdline = fs.readFileSync(`/proc/${entry}/cmdline`, 'latin1'); } catch { continue; }
    if (!cmdline.includes(token)) continue;
    // A zombie has an empty cmdline, so anything matching here is still running.
    pids.push(Number(entry));
  }
  return pids;
}

export const QEMU_PID_RE = /QEMU pid (\d+) \(-name (\S+)\)/;
