// The project's KVM test files, run inside L1 on its /dev/kvm (nested SVM) for a rig host
// without a usable /dev/kvm. Each finished file goes to the runner over the control channel
// (test-events-reporter.ts); the human-readable report streams to the console.
import path from 'node:path';
import { l1ProjectDir } from '../paths';
import { RIG_NET_L1_ADDRESS } from '../devices';
import { consoleLogger, scenario } from '../scenario';
import { kvmTestFiles, type ReportedFile } from '../test-events';

/** Ports the end-to-end tests' web servers may take in L1, each forwarded from the rig host. */
const E2E_PORTS = [47311, 47312, 47313, 47314, 47315, 47316];

scenario('kvm-tests', async (ctx) => {
  const groups = (process.env.RIG_TEST_GROUPS ?? 'kvm,e2e').split(',').filter(Boolean);
  const only = process.env.RIG_TEST_FILES ? new Set(process.env.RIG_TEST_FILES.split(',')) : null;
  const files = kvmTestFiles(l1ProjectDir, groups).filter((f) => !only || only.has(f));
  if (files.length === 0) throw new Error(`no test files in ${groups.join(', ')}${only ? ` matching ${[...only].join(', ')}` : ''}`);
  ctx.log(`running ${files.length} test files on L1's /dev/kvm: ${files.join(' ')}`);
  const reporter = path.join(l1ProjectDir, 'dist', 'test', 'rig', 'test-events-reporter.js');
  const env: NodeJS.ProcessEnv = {
    ...process.env, PORTHOLE_FORBID_KOFFI_VIEW: '1', PORTHOLE_TEST_VENUE: 'rig',
    PORTHOLE_TEST_ARTIFACTS: path.join(ctx.outDir, 'test-artifacts'),
  };
  if (files.some((f) => f.startsWith('dist/test/e2e/'))) {
    // The browser runs on the rig host; the UI's server in L1 is reached through forwarded ports.
    env.PORTHOLE_E2E_BROWSER_WS = await ctx.rig.browser();
    const ports = E2E_PORTS;
    for (const p of ports) await ctx.rig.forward(p);
    env.PORTHOLE_E2E_PORTS = ports.join(',');
    env.PORTHOLE_E2E_LISTEN = RIG_NET_L1_ADDRESS;
    ctx.log(`e2e: Chromium on the rig host (${env.PORTHOLE_E2E_BROWSER_WS}), ports ${ports.join(', ')} forwarded to ${RIG_NET_L1_ADDRESS}`);
  }
  const child = ctx.spawn(process.execPath, [
    '--test', '--test-concurrency=1',
    `--test-reporter=${reporter}`, '--test-reporter-destination=stdout',
    '--test-reporter=spec', '--test-reporter-destination=stderr',
    ...files.map((f) => path.join(l1ProjectDir, f)),
  ], { cwd: l1ProjectDir, env });
  const toConsole = consoleLogger('kvm-tests| ');
  child.stderr!.on('data', (b: Buffer) => toConsole(b.toString('utf8')));
  let partial = '';
  let reported = 0;
  let failed = 0;
  const sends: Promise<void>[] = [];
  child.stdout!.on('data', (chunk: Buffer) => {
    partial += chunk.toString('utf8');
    let nl: number;
    while ((nl = partial.indexOf('\n')) >= 0) {
      const line = partial.slice(0, nl);
      partial = partial.slice(nl + 1);
      if (!line.trim()) continue;
      const result = JSON.parse(line) as ReportedFile;
      result.file = path.relative(l1ProjectDir, result.file);
      reported++;
      const count = (ts: ReportedFile['tests']): number => ts.reduce((n, t) => n + (t.ok ? 0 : 1) + count(t.children), 0);
      failed += count(result.tests);
      sends.push(ctx.rig.send({ t: 'test-file', ...result }));
    }
  });
  const code = await new Promise<number | null>((resolve) => child.on('close', (c) => resolve(c)));
  await Promise.all(sends);
  const detail = `${reported} of ${files.length} test files ran in L1, ${failed} failures`;
  if (reported !== files.length || code !== 0) throw new Error(`node --test exited with ${code}: ${detail}`);
  return detail;
});
