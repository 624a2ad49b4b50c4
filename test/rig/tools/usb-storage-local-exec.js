// `npm run rig -- exec test/rig/tools/usb-storage-local-exec.js [--env BASE=build/some-old-tree]`:
// the xHCI + usb-storage models' per-command cost (dist/test/bench/usb-storage-local.js, no L2)
// measured inside L1, where Porthole's machine thread really runs: with V8's JIT, and --jitless
// (what code that is not optimized yet costs there). BASE names another built tree under the
// checkout (its dist/ beside node_modules' parent) to run the same harness against, for a
// before/after in one L1 boot.
const path = require('path');

module.exports = async (ctx) => {
  const runs = [['now', '/project/dist/test/bench/usb-storage-local.js']];
  if (process.env.RIG_BASE) runs.push(['base', path.join('/project', process.env.RIG_BASE, 'dist/test/bench/usb-storage-local.js')]);
  const out = [];
  for (const flags of [[], ['--jitless']]) {
    for (const [name, file] of runs) {
      for (const io of [['--null-io'], []]) {
        const args = [...flags, file, ...io, '--commands', '60', '--rounds', '3'];
        const text = ctx.exec('node', args).toString();
        const lines = text.trim().split('\n').slice(-4).map((l) => `${name} ${flags.join(' ') || 'jit'} ${io.join(' ') || 'raw-image'}: ${l}`);
        for (const l of lines) ctx.log(l);
        out.push(...lines);
      }
    }
  }
  return out.join('\n');
};
