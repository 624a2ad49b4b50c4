// The KVM test files, run in the rig's L1 for a host without a usable /dev/kvm, folded into
// this run's node:test report: one suite per file, and inside it the same tests with the
// outcomes, skips and errors they had in L1. scripts/run-tests.mjs runs this file in place
// of dist/test/kvm and dist/test/e2e on such a host. A stalled L1 gets one rerun of the
// files it had not finished; every rerun is printed and counted in the last test.
// Files share one L1 on the rig QEMU's default TCG threading (rig-qemu.ts: multi-threaded on
// QEMU 10, single-threaded on 7.2); a file whose source has a `// rig-tcg: multi` or
// `// rig-tcg: single` line runs in an L1 of that kind instead (test/rig/README.md, "Which
// QEMU" and "Which TCG").
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it, test, type TestContext } from 'node:test';
import { repoRoot } from './paths';
import { rigQemu } from './rig-qemu';
import { l1Spoiled, runScenario, type RunReport } from './runner';
import { findScenario, type TcgMode } from './scenarios';
import { kvmTestFiles, type ReportedFile, type ReportedTest } from './test-events';

const groups = (process.env.PORTHOLE_RIG_TEST_GROUPS ?? 'kvm,e2e').split(',').filter(Boolean);
// PORTHOLE_RIG_TEST_FILES=dist/test/kvm/a.test.js,... runs only those files (a developer's quick check).
const onlyFiles = process.env.PORTHOLE_RIG_TEST_FILES?.split(',').filter(Boolean) ?? null;
const files = kvmTestFiles(repoRoot, groups).filter((f) => !onlyFiles || onlyFiles.includes(f));
const results = new Map<string, ReportedFile>();
const waiters = new Map<string, (r: ReportedFile | null) => void>();
const attempts: { tcg: TcgMode; report: RunReport }[] = [];
const MAX_RERUNS = 1;

/** A test file's TCG threading in L1: what its source's `// rig-tcg: multi|single` line asks, else the rig QEMU's default. */
function tcgModeOf(file: string, fallback: TcgMode): TcgMode {
  const source = path.join(repoRoot, file.replace(/^dist\//, '').replace(/\.js$/, '.ts'));
  try {
    const asked = /^\/\/ rig-tcg: (multi|single)\b/m.exec(fs.readFileSync(source, 'utf8'))?.[1];
    return asked === 'multi' || asked === 'single' ? asked : fallback;
  } catch {
    return fallback;
  }
}

function progress(line: string): void {
  // The runner's own lines and the per-file results; L1's full console is in the rig log.
  if (/ rig: |RIG-RESULT|kvm-tests\| [✔✖]/.test(line)) process.stderr.write(`${line}\n`);
}

async function runInL1(): Promise<void> {
  const spec = findScenario('kvm-tests');
  if (!spec) throw new Error('the rig has no kvm-tests scenario');
  const modes: TcgMode[] = ['single', 'multi'];
  const fallback = rigQemu((line) => process.stderr.write(`rig venue: ${line}\n`)).defaultTcg;
  for (const tcg of modes) {
    const venueFiles = files.filter((f) => tcgModeOf(f, fallback) === tcg);
    for (let attempt = 0; attempt <= MAX_RERUNS; attempt++) {
      const remaining = venueFiles.filter((f) => !results.has(f));
      if (remaining.length === 0) break;
      const report = await runScenario(spec, {
        l1FaultRetries: 0,
        tcg,
        env: [`TEST_GROUPS=${groups.join(',')}`, `TEST_FILES=${remaining.join(',')}`],
        print: progress,
        onMessage: (m) => {
          if (m.t !== 'test-file') return;
          const r = m as unknown as ReportedFile;
          if (results.has(r.file)) return;
          results.set(r.file, r);
          waiters.get(r.file)?.(r);
        },
      });
      attempts.push({ tcg, report });
      const spoiled = l1Spoiled(report);
      if (spoiled === null) break;
      process.stderr.write(`rig venue: RETRY: L1 (${tcg}-threaded TCG) ${spoiled} (${report.outcome.detail}); ` +
        `${venueFiles.filter((f) => !results.has(f)).length} test files to run again\n`);
    }
  }
  for (const [f, w] of waiters) if (!results.has(f)) w(null);
}

const venue = runInL1().catch((e: Error) => {
  process.stderr.write(`rig venue: ${e.message}\n`);
  for (const w of waiters.values()) w(null);
  return e;
});

function resultOf(file: string): Promise<ReportedFile | null> {
  const r = results.get(file);
  if (r) return Promise.resolve(r);
  return new Promise((resolve) => waiters.set(file, resolve));
}

function l1Error(e: NonNullable<ReportedTest['error']>): Error {
  const err = new Error(`(in L1) ${e.message}`);
  if (e.stack) err.stack = `${err.message}\n${e.stack.split('\n').slice(1).join('\n')}`;
  return err;
}

/** Failures of a parent that are only its children's need no error of their own. */
const onlyChildrenFailed = (t: ReportedTest) => t.children.some((c) => !c.ok) && /\d+ subtests? failed/.test(t.error?.message ?? '');

function replay(t: ReportedTest): void {
  const opts = { skip: t.skip === undefined ? false : t.skip || true, todo: t.todo === undefined ? false : t.todo || true };
  if (t.suite) {
    describe(t.name, opts, () => { for (const c of t.children) replay(c); });
    return;
  }
  it(t.name, opts, async (ctx: TestContext) => {
    for (const c of t.children) await replayChild(ctx, c);
    if (!t.ok && t.error && !onlyChildrenFailed(t)) throw l1Error(t.error);
  });
}

async function replayChild(ctx: TestContext, t: ReportedTest): Promise<void> {
  const opts = { skip: t.skip === undefined ? false : t.skip || true, todo: t.todo === undefined ? false : t.todo || true };
  await ctx.test(t.name, opts, async (sub) => {
    for (const c of t.children) await replayChild(sub, c);
    if (!t.ok && t.error && !onlyChildrenFailed(t)) throw l1Error(t.error);
  });
}

function lastOutcome(): string {
  const last = attempts.at(-1)?.report;
  return last ? `${last.outcome.kind}: ${last.outcome.detail} (log ${path.relative(repoRoot, last.logFile)})` : 'the rig did not start';
}

for (const file of files) {
  describe(`[L1] ${file}`, async () => {
    const r = await resultOf(file);
    if (!r) {
      it('ran in the rig\'s L1', () => { throw new Error(`${file} gave no results in L1: ${lastOutcome()}`); });
      return;
    }
    for (const t of r.tests) replay(t);
  });
}

test('rig venue: every KVM test file ran in L1', async (t) => {
  const err = await venue;
  for (const [i, { tcg, report: a }] of attempts.entries()) {
    t.diagnostic(`L1 run ${i + 1} (${tcg}-threaded TCG): ${a.outcome.kind} after ${a.totalSeconds.toFixed(0)} s (L1 boot ${a.bootSeconds?.toFixed(1) ?? '-'} s); log ${path.relative(repoRoot, a.logFile)}`);
  }
  const venues = new Set(attempts.map((a) => a.tcg)).size;
  t.diagnostic(`L1 reruns after a stall or triple fault: ${Math.max(0, attempts.length - venues)}`);
  if (err instanceof Error) throw err;
  const missing = files.filter((f) => !results.has(f));
  assert.deepEqual(missing, [], `test files without results from L1: ${lastOutcome()}`);
  assert.ok(fs.existsSync(path.join(repoRoot, 'dist', 'test', 'rig', 'test-events-reporter.js')));
});
