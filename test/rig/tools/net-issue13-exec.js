// `npm run rig -- exec test/rig/tools/net-issue13-exec.js --tcg multi [--env NE2K_SEC=N] [--env NET_MIB=N]`
// (issue 13), in one L1: (1) whose triple fault — the same NE2000 TAP load (2 MiB each way per
// round, only the shutdown exit traced) under Porthole and then under QEMU -accel kvm -device
// ne2k_pci, NE2K_SEC each (net-trace-exec.js with MINIMAL=1); (2) the net bench, one round,
// NET_MIB MiB each way (Porthole --nic virtio,user against QEMU -netdev user).
const path = require('path');
module.exports = async (ctx) => {
  const sec = process.env.RIG_NE2K_SEC || '150';
  process.env.RIG_MINIMAL = '1';
  process.env.RIG_PHASE_A_SEC = sec;
  process.env.RIG_PHASE_B_SEC = sec;
  const results = [];
  try {
    results.push(`ne2k: ${await require('./net-trace-exec.js')(ctx)}`);
  } catch (e) {
    results.push(`ne2k: ERROR ${e.message.split('\n')[0]}`);
  }
  // The checkout is read-only in L1: the bench's net.json goes to /rig-out (build/rig/out/<run>/).
  process.env.PORTHOLE_BENCH_DIR = ctx.outDir;
  const { runNetBench } = require(path.join('/project', 'dist', 'test', 'bench', 'net.js'));
  const r = await runNetBench({ kit: ctx.kit, rounds: 1, bytes: Number(process.env.RIG_NET_MIB || 4) * 1048576, log: (l) => ctx.log(l) });
  const fmt = (x) => (Number.isFinite(x) ? x.toFixed(2) : '-');
  results.push(`net: to-guest ${fmt(r.ratios['to-guest'])}x, from-guest ${fmt(r.ratios['from-guest'])}x; ${r.samples.map((s) => `${s.vmm} ${JSON.stringify(s.rates)}${s.failure ? ` FAILED${s.lostL2 ? ' (L2 lost)' : ''}: ${s.failure}` : ''}`).join('; ')}`);
  return results.join(' || ');
};
