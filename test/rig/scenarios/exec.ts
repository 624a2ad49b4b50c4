// `npm run rig -- exec FILE.js`: a script kept outside the project, run in L1 with the same
// context as the built-in scenarios. Its folder is L1's /rig-exec (read-only), so it may
// require() files beside it, and require('porthole-rig') gives the scenario helpers. It
// exports a function (ctx) => Promise<string>: the string is the PASS detail, a throw FAILs.
import path from 'node:path';
import { scenario, type ScenarioContext } from '../scenario';

type ExecBody = (ctx: ScenarioContext) => Promise<string> | string;

const file = process.env.RIG_EXEC_SCRIPT;
scenario(`exec ${file ? path.basename(file) : ''}`.trim(), async (ctx) => {
  if (!file) throw new Error('RIG_EXEC_SCRIPT is not set: run scripts with npm run rig -- exec FILE.js');
  ctx.log(`running ${file}`);
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const mod = require(file) as ExecBody | { default?: ExecBody; run?: ExecBody };
  const body = typeof mod === 'function' ? mod : (mod.default ?? mod.run);
  if (typeof body !== 'function') throw new Error(`${path.basename(file)} must export a function (ctx) => Promise<string> (module.exports = async (ctx) => ...)`);
  const detail = await body(ctx);
  return typeof detail === 'string' && detail ? detail : `${path.basename(file)} finished`;
});
