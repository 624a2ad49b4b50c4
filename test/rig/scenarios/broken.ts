// A guest that never answers: the console helper waits for a shell with no deadline of its
// own, so only the runner's timeout can end this scenario. test/integration/rig-broken.test.ts
// checks that the runner then stops with a clear message and leaves no QEMU behind.
import { SerialConsole } from '../console';
import { scenario } from '../scenario';

scenario('broken', async (ctx) => {
  // The "guest": a process whose console stays silent forever.
  const guest = ctx.spawn('sleep', ['2147483647']);
  const con = SerialConsole.fromChild(guest, { name: 'silent guest' });
  ctx.log('waiting for a shell that never answers');
  await con.waitForShell(Infinity);
  return 'a silent guest answered, which cannot happen';
});
