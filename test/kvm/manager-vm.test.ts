// The manager with real VM processes (child_process.fork) running flat test guests on KVM.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { ApiError, ConsolePort } from '../../main/api/contract';
import type { ServerEvent } from '../../main/api/wire';
import { VmManager } from '../../main/manager/manager';
import { nodeVmProcessLauncher, type VmProcessHandle, type VmProcessLauncher } from '../../main/manager/process-launcher';
import { flatSpec, tempConfigHome, waitFor } from '../helpers/manager';
import { guest, kvmSkipReason, repoRoot } from '../helpers/vm';

const skip = kvmSkipReason() ?? (fs.existsSync(guest('echo')) ? false : 'build/guests/echo.bin is missing: run scripts/fixtures.sh');
const BANNER = 'porthole echo ready\r\n';

let config: ReturnType<typeof tempConfigHome>;
let manager: VmManager;
const handles: VmProcessHandle[] = [];
const events: ServerEvent[] = [];

before(() => {
  config = tempConfigHome();
  const node = nodeVmProcessLauncher();
  const launcher: VmProcessLauncher = (label) => {
    const h = node(label);
    handles.push(h);
    return h;
  };
  manager = new VmManager({ libraryDir: config.libraryDir, launcher, mode: 'browser', appVersion: 'test', log: () => undefined });
  manager.load();
  manager.onEvent((e) => events.push(e));
});

after(async () => {
  await manager.shutdownAll('force-off');
  config.cleanup();
});

/** Collects a console's bytes as latin1 text. */
function collect(id: string, port: ConsolePort): { text(): string; stop(): void } {
  let text = '';
  const stop = manager.subscribeConsole(id, port, (_offset, data) => { text += Buffer.from(data).toString('latin1'); });
  return { text: () => text, stop };
}

async function rejectsWith(p: Promise<unknown>, code: string, pattern?: RegExp): Promise<ApiError> {
  try {
    await p;
  } catch (e) {
    const err = e as ApiError;
    assert.equal(err.code, code, `expected ${code}, got ${err.code}: ${err.message}`);
    if (pattern) assert.match(err.message, pattern);
    return err;
  }
  assert.fail(`expected a rejection with ${code}`);
}

test('an echo guest: start, read the banner, type, pause, resume, stop, delete', { skip }, async () => {
  const vm = manager.createVm(flatSpec('echo'));
  assert.equal(vm.state, 'stopped');
  const file = manager.library.fileOf(vm.id);
  assert.ok(fs.existsSync(file), 'the VM is saved in the library');
  const com1 = collect(vm.id, 'com1');
  const started = await manager.startVm(vm.id);
  assert.equal(started.state, 'running');
  await waitFor(() => com1.text().includes(BANNER), 30000, () => `no banner: ${JSON.stringify(com1.text())}`);

  manager.sendConsoleInput(vm.id, 'com1', 'hello porthole\r');
  await waitFor(() => com1.text() === `${BANNER}hello porthole\r`, 20000, () => `echo: ${JSON.stringify(com1.text())}`);

  // A console opened late gets the scroll-back first, then live bytes.
  const late = collect(vm.id, 'com1');
  assert.equal(late.text(), `${BANNER}hello porthole\r`);
  manager.sendConsoleInput(vm.id, 'com1', 'é');
  await waitFor(() => late.text().endsWith('\xc3\xa9'), 20000, () => `late: ${JSON.stringify(late.text())}`);

  const stats = await manager.getVmStats(vm.id);
  assert.ok((stats.devices.find((d) => d.name === 'COM1')?.reads ?? 0) > 0, 'the guest read COM1');

  assert.equal((await manager.pauseVm(vm.id)).state, 'paused');
  await rejectsWith(manager.pauseVm(vm.id), 'invalid-state');
  assert.equal((await manager.resumeVm(vm.id)).state, 'running');
  manager.sendConsoleInput(vm.id, 'com1', '!');
  await waitFor(() => com1.text().endsWith('!'), 20000, () => `after resume: ${JSON.stringify(com1.text())}`);

  await rejectsWith(Promise.resolve().then(() => manager.deleteVm(vm.id)), 'invalid-state', /Stop the VM/);
  const stopped = await manager.stopVm(vm.id);
  assert.equal(stopped.state, 'stopped');
  assert.equal(stopped.lastExit?.kind, 'stopped');
  assert.throws(() => manager.sendConsoleInput(vm.id, 'com1', 'x'), { code: 'invalid-state' });

  manager.deleteVm(vm.id);
  assert.ok(!fs.existsSync(file), 'the library file is gone');
  assert.throws(() => manager.getVm(vm.id), { code: 'not-found' });
  assert.ok(events.some((e) => e.type === 'vm-removed' && e.id === vm.id));
  com1.stop();
  late.stop();
});

test('a guest that powers off through isa-debug-exit ends with its exit status; debugcon is a console', { skip }, async () => {
  const vm = manager.createVm(flatSpec('hello', { debugExit: true }));
  const debugcon = collect(vm.id, 'debugcon');
  await manager.startVm(vm.id).catch(() => undefined); // it may power off before "started" arrives
  await waitFor(() => manager.getVm(vm.id).state === 'stopped', 30000, () => `state ${manager.getVm(vm.id).state}`);
  const done = manager.getVm(vm.id);
  assert.equal(done.lastExit?.kind, 'poweroff');
  assert.equal(done.lastExit?.exitCode, 0x21);
  assert.equal(debugcon.text(), 'hello from the guest\n');
  assert.throws(() => manager.sendConsoleInput(vm.id, 'debugcon', 'x'), { code: 'invalid-argument' });
  debugcon.stop();
  manager.deleteVm(vm.id);
});

test('SIGKILL of a VM process: that VM is crashed with the signal and its log; the others keep running', { skip }, async () => {
  const victim = manager.createVm(flatSpec('echo', { name: 'victim' }));
  const survivor = manager.createVm(flatSpec('echo', { name: 'survivor' }));
  const survivorCom1 = collect(survivor.id, 'com1');
  await manager.startVm(victim.id);
  const victimHandle = handles[handles.length - 1];
  await manager.startVm(survivor.id);
  await waitFor(() => survivorCom1.text().includes(BANNER), 30000, () => 'no banner from the survivor');

  process.kill(victimHandle.pid!, 'SIGKILL');
  await waitFor(() => manager.getVm(victim.id).state === 'crashed', 20000, () => `victim is ${manager.getVm(victim.id).state}`);
  const crashed = manager.getVm(victim.id);
  assert.equal(crashed.lastExit?.kind, 'crashed');
  assert.equal(crashed.lastExit?.signal, 'SIGKILL');
  assert.equal(crashed.lastExit?.message, 'The VM process was killed by signal SIGKILL.');
  assert.ok(crashed.lastExit!.logTail.some((l) => l.includes('starting')), `log tail: ${crashed.lastExit!.logTail.join(' | ')}`);
  assert.ok(events.some((e) => e.type === 'vm-updated' && e.vm.id === victim.id && e.vm.state === 'crashed'), 'a crash event was sent');

  // The survivor is untouched.
  assert.equal(manager.getVm(survivor.id).state, 'running');
  manager.sendConsoleInput(survivor.id, 'com1', 'still here');
  await waitFor(() => survivorCom1.text().endsWith('still here'), 20000, () => `survivor: ${JSON.stringify(survivorCom1.text())}`);

  // The crashed VM starts again.
  const again = collect(victim.id, 'com1');
  await manager.startVm(victim.id);
  await waitFor(() => (again.text().match(/porthole echo ready/g) ?? []).length === 2, 30000, () => `restart: ${JSON.stringify(again.text())}`);
  assert.equal(manager.getVm(victim.id).lastExit?.kind, 'crashed', 'lastExit stays until the next run ends');

  assert.equal((await manager.forceOffVm(victim.id)).lastExit?.kind, 'forced-off');
  await manager.stopVm(survivor.id);
  for (const c of [survivorCom1, again]) c.stop();
  manager.deleteVm(victim.id);
  manager.deleteVm(survivor.id);
});

test('start failures are sentences: a missing program, a serial forward that cannot open', { skip }, async () => {
  const missing = manager.createVm(flatSpec('echo', { boot: { kind: 'flat', path: '/nonexistent/porthole-test.bin' } }));
  await rejectsWith(manager.startVm(missing.id), 'not-found', /^Test program: \/nonexistent\/porthole-test\.bin does not exist\.$/);
  assert.equal(manager.getVm(missing.id).state, 'stopped');

  const badForward = manager.createVm(flatSpec('echo', { serial: ['ui', 'unix:/nonexistent-porthole-dir/sock', 'none', 'none'] }));
  const err = await rejectsWith(manager.startVm(badForward.id), 'vm-failed', /^The VM could not start: /);
  assert.ok(!err.message.includes('\n') && err.message.endsWith('.'), err.message);
  await waitFor(() => manager.getVm(badForward.id).state === 'stopped', 20000, () => manager.getVm(badForward.id).state);
  assert.equal(manager.getVm(badForward.id).lastExit?.kind, 'error');
  manager.deleteVm(missing.id);
  manager.deleteVm(badForward.id);
});

test('reset rebuilds the machine: the guest prints its banner again', { skip }, async () => {
  const vm = manager.createVm(flatSpec('echo'));
  const com1 = collect(vm.id, 'com1');
  await manager.startVm(vm.id);
  await waitFor(() => com1.text().includes(BANNER), 30000, () => 'no banner');
  assert.equal((await manager.resetVm(vm.id)).state, 'running');
  await waitFor(() => com1.text() === BANNER + BANNER, 30000, () => `after reset: ${JSON.stringify(com1.text())}`);
  await manager.stopVm(vm.id);
  com1.stop();
  manager.deleteVm(vm.id);
});

test('when the manager process dies, its VM processes stop too (no orphans)', { skip }, async () => {
  const script = path.join(config.home, 'manager-child.js');
  const dist = path.join(repoRoot, 'dist', 'main', 'manager');
  fs.writeFileSync(script, `
    const { VmManager } = require(${JSON.stringify(path.join(dist, 'manager.js'))});
    const { nodeVmProcessLauncher } = require(${JSON.stringify(path.join(dist, 'process-launcher.js'))});
    const launcher = nodeVmProcessLauncher();
    let pid = 0;
    const m = new VmManager({ libraryDir: process.argv[2], mode: 'browser', appVersion: 't', log: () => {},
      launcher: (label) => { const h = launcher(label); pid = h.pid; return h; } });
    m.load();
    const vm = m.createVm(JSON.parse(process.argv[3]));
    m.startVm(vm.id).then(() => process.stdout.write('running ' + pid + '\\n'));
    setInterval(() => {}, 1000);
  `);
  const child = spawn(process.execPath, [script, path.join(config.home, 'orphan-lib'), JSON.stringify(flatSpec('echo'))], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d; });
  try {
    await waitFor(() => /running \d+/.test(out), 60000, () => `manager child said: ${out}`);
  } catch (e) {
    // A manager that never started its VM must not outlive the test and hold this file open.
    child.kill('SIGKILL');
    throw e;
  }
  const vmPid = Number(/running (\d+)/.exec(out)![1]);
  const alive = () => { try { process.kill(vmPid, 0); return true; } catch { return false; } };
  assert.ok(alive());
  child.kill('SIGKILL');
  await waitFor(() => !alive(), 20000, () => `VM process ${vmPid} outlived its manager`);
});
