// `npm run bench` where this machine has no usable /dev/kvm (or for the boot bench, always):
// runs dist/test/bench/run.js inside L1 with the arguments the host side passed
// (--env BENCH_ARGS=<base64url JSON>; without it, one quick boot round), with L1's nested KVM as "here" and QEMU -accel kvm
// from the host's /usr beside Porthole. Its output streams to the console as it comes.
import { scenario } from '../scenario';
import { l1ProjectDir } from '../paths';
import { decodeBenchArgs } from '../../bench/run';

/** Without BENCH_ARGS (npm run rig -- bench, npm run test:rig): one quick boot round. */
const QUICK_ARGS = ['boot', '--runs', '1', '--cpus', '1'];

scenario('bench', async (ctx) => {
  const given = process.env.RIG_BENCH_ARGS;
  const args = given ? decodeBenchArgs(given) : QUICK_ARGS;
  ctx.log(`node dist/test/bench/run.js ${args.join(' ')}`);
  const bench = ctx.spawn(process.execPath, [`${l1ProjectDir}/dist/test/bench/run.js`, ...args], {
    env: {
      ...process.env,
      // Inside L1 every bench runs here; results go to a tmpfs and back to the host as lines.
      PORTHOLE_BENCH_VENUE: 'host', PORTHOLE_BENCH_DIR: '/tmp/porthole-bench', PORTHOLE_BENCH_FORWARD_RESULTS: '1',
      // A failed guest's console goes to the share that lands on the host (build/rig/out/).
      PORTHOLE_BENCH_KEEP_DIR: ctx.outDir,
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const status = await new Promise<string>((resolve) => bench.once('exit', (code, sig) => resolve(sig ?? String(code))));
  if (status === '1') throw new Error('the bench ran; targets missed (--check)');
  if (status !== '0') throw new Error(`the bench exited with ${/^\d+$/.test(status) ? `status ${status}` : status}`);
  return `the bench ran: ${args.join(' ')}`;
});
