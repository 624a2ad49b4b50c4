// `porthole run` starts its machine thread before it reads its arguments. An exit while that
// thread was still loading koffi aborted the process (about 1 in 20 runs): the user's one-line
// error was followed by a V8 fatal-error dump and exit status 134. Runs need no /dev/kvm.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { machineThreadWaiting, prewarmMachineThread, releasePrewarmedThread } from '../../main/vmm/host/machine-prewarm';
import { repoRoot } from '../helpers/vm';

function runPorthole(args: string[]): Promise<{ status: number | null; signal: string | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [path.join(repoRoot, 'bin', 'porthole'), ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => { stderr += d; });
    child.on('close', (status, signal) => resolve({ status, signal, stderr }));
  });
}

test('porthole run with a bad config or bad arguments exits with its one line every time, never a fatal-error dump', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-early-exit-'));
  const bad = path.join(dir, 'vm.json');
  fs.writeFileSync(bad, '{ "version": 1, ');
  const cases: { args: string[]; line: RegExp }[] = [
    { args: ['run', '--config', bad], line: /^porthole: config file .*vm\.json is not valid JSON: [^\n]*\n$/ },
    { args: ['run', '--memory', 'lots'], line: /^porthole: [^\n]*\n/ },
  ];
  // Two at a time, as a loaded machine would run them; 40 runs met the abort about twice before.
  for (let round = 0; round < 20; round++) {
    const results = await Promise.all(cases.map((c) => runPorthole(c.args)));
    results.forEach((r, i) => {
      assert.equal(r.signal, null, `run ${round} of "${cases[i].args.join(' ')}" died by ${r.signal}: ${r.stderr.slice(0, 400)}`);
      assert.equal(r.status, 2, `run ${round} of "${cases[i].args.join(' ')}": status ${r.status}: ${r.stderr.slice(0, 400)}`);
      assert.match(r.stderr, cases[i].line);
      assert.doesNotMatch(r.stderr, /FATAL ERROR|\n\s+at /);
    });
  }
});

test('a machine thread started ahead and never launched is ended only after it has loaded', async () => {
  prewarmMachineThread();
  assert.equal(machineThreadWaiting(), true);
  await releasePrewarmedThread();
  assert.equal(machineThreadWaiting(), false);
  await releasePrewarmedThread(); // nothing left: a no-op
});
