// The manager's lifecycle and crash reporting, driven through a scripted VM process
// (no KVM): every way a VM process can end, timeouts, and console delivery.
import assert from 'node:assert/strict';
import { machineConfigOf } from '../../main/manager/machine-config';
import { afterEach, beforeEach, test } from 'node:test';
import type { ApiErrorShape } from '../../main/api/contract';
import type { ServerEvent } from '../../main/api/wire';
import { VmManager } from '../../main/manager/manager';
import { flatSpec, tempConfigHome } from '../helpers/manager';
import { ScriptedProcess } from '../helpers/scripted-process';
import { UsbJournal } from '../../main/host/usb-journal';
import fs from 'node:fs';
import path from 'node:path';

let home: ReturnType<typeof tempConfigHome>;
let manager: VmManager;
let procs: ScriptedProcess[];
let events: ServerEvent[];
let diag: string[];
const emptyStats = { exits: {}, devices: [], kicks: 0, apExits: 0 };

beforeEach(() => {
  home = tempConfigHome();
  // Start checks that the program file exists; nothing runs it here.
  fs.writeFileSync(path.join(home.home, 'echo.bin'), 'x');
  procs = [];
  events = [];
  diag = [];
  manager = new VmManager({
    libraryDir: home.libraryDir, mode: 'browser', appVersion: 't', stopTimeoutMs: 200, startTimeoutMs: 300,
    launcher: () => { const p = new ScriptedProcess(); procs.push(p); return p; },
    log: (l) => diag.push(l),
  });
  manager.load();
  manager.onEvent((e) => events.push(e));
});
afterEach(() => home.cleanup());

function spec() {
  return flatSpec('echo', { boot: { kind: 'flat', path: path.join(home.home, 'echo.bin') } });
}

async function started(): Promise<{ id: string; proc: ScriptedProcess }> {
  const vm = manager.createVm(spec());
  const p = manager.startVm(vm.id);
  const proc = procs[procs.length - 1];
  proc.boot();
  assert.equal((await p).state, 'running');
  return { id: vm.id, proc };
}

async function rejection(p: Promise<unknown>): Promise<ApiErrorShape> {
  try {
    await p;
  } catch (e) {
    const err = e as ApiErrorShape;
    return { code: err.code, message: err.message };
  }
  assert.fail('expected a rejection');
}

test('the config goes to the process once it is ready; states follow the process', async () => {
  const vm = manager.createVm(spec());
  const p = manager.startVm(vm.id);
  const proc = procs[0];
  assert.equal(manager.getVm(vm.id).state, 'starting');
  assert.equal(proc.sent.length, 0);
  proc.message({ type: 'ready' });
  const start = proc.sent[0];
  assert.ok(start.type === 'start' && start.config.boot.kind === 'flat' && start.config.memoryBytes === 16 * 1024 * 1024);
  proc.message({ type: 'state', state: 'running' });
  proc.message({ type: 'started' });
  await p;
  proc.message({ type: 'endpoint', ring: 1, description: '/dev/pts/9' });
  assert.deepEqual(manager.getVm(vm.id).endpoints, { com2: '/dev/pts/9' });
  const states = events.filter((e) => e.type === 'vm-updated' && e.vm.id === vm.id).map((e) => e.type === 'vm-updated' && e.vm.state);
  assert.deepEqual(states, ['stopped', 'starting', 'running', 'running']);
});

test('a process that dies of a signal is crashed, with the signal and its last log lines', async () => {
  const { id, proc } = await started();
  proc.message({ type: 'log', line: 'machine built' });
  proc.stderr('native assertion failed: x\nAborted');
  proc.exit(null, 'SIGABRT');
  const vm = manager.getVm(id);
  assert.equal(vm.state, 'crashed');
  assert.equal(vm.lastExit?.kind, 'crashed');
  assert.equal(vm.lastExit?.signal, 'SIGABRT');
  assert.equal(vm.lastExit?.message, 'The VM process was killed by signal SIGABRT.');
  assert.ok(vm.lastExit?.logTail.includes('machine built'));
  assert.ok(vm.lastExit?.logTail.includes('native assertion failed: x'));
  assert.ok(vm.lastExit?.logTail.includes('Aborted'), 'an unterminated last stderr line is kept');
  assert.deepEqual(vm.endpoints, {});
  assert.ok(diag.some((l) => l.includes('crashed')));
  // It can be edited and started again.
  manager.updateVm(id, { ...spec(), name: 'fixed' });
  const again = manager.startVm(id);
  procs[1].boot();
  assert.equal((await again).state, 'running');
});

test('an exit code without "ended" is a crash; "ended" then exit 0 is a clean end', async () => {
  const a = await started();
  a.proc.exit(70, null);
  assert.equal(manager.getVm(a.id).lastExit?.message, 'The VM process exited with code 70.');
  assert.equal(manager.getVm(a.id).state, 'crashed');

  const b = await started();
  b.proc.message({ type: 'ended', end: { reason: 'poweroff', exitCode: 3 }, stats: emptyStats });
  b.proc.exit(0, null);
  assert.equal(manager.getVm(b.id).state, 'stopped');
  assert.deepEqual(
    { kind: manager.getVm(b.id).lastExit?.kind, code: manager.getVm(b.id).lastExit?.exitCode, message: manager.getVm(b.id).lastExit?.message },
    { kind: 'poweroff', code: 3, message: 'The guest powered off (exit status 3).' },
  );

  const c = await started();
  c.proc.message({ type: 'ended', end: { reason: 'error', message: 'KVM_RUN failed: EFAULT' }, stats: emptyStats });
  c.proc.exit(0, null);
  assert.equal(manager.getVm(c.id).lastExit?.message, 'The VM stopped because of an error: KVM_RUN failed: EFAULT.');
});

test('commands waiting for a reply fail when the process dies', async () => {
  const { id, proc } = await started();
  const pause = manager.pauseVm(id);
  proc.exit(null, 'SIGSEGV');
  const e = await rejection(pause);
  assert.equal(e.code, 'vm-failed');
  assert.equal(e.message, 'The VM process was killed by signal SIGSEGV.');
});

test('a refused command is an invalid-state sentence', async () => {
  const { id, proc } = await started();
  const pause = manager.pauseVm(id);
  proc.reply(false, 'cannot pause a VM that is starting');
  assert.deepEqual(await rejection(pause), { code: 'invalid-state', message: 'Cannot pause a VM that is starting.' });
});

test('a start failure rejects with the reason; the VM ends stopped with an error', async () => {
  const vm = manager.createVm(spec());
  const p = manager.startVm(vm.id);
  const proc = procs[0];
  proc.message({ type: 'ready' });
  proc.message({ type: 'start-failed', message: 'COM2: cannot open /dev/ttyUSB9: ENOENT' });
  const e = await rejection(p);
  assert.deepEqual(e, { code: 'vm-failed', message: 'The VM could not start: COM2: cannot open /dev/ttyUSB9: ENOENT.' });
  proc.message({ type: 'ended', end: { reason: 'error', message: 'COM2: cannot open /dev/ttyUSB9: ENOENT' }, stats: emptyStats });
  proc.exit(0, null);
  assert.equal(manager.getVm(vm.id).state, 'stopped');
  assert.equal(manager.getVm(vm.id).lastExit?.kind, 'error');
});

test('a process that dies before it is ready fails the start with the reason', async () => {
  const vm = manager.createVm(spec());
  const p = manager.startVm(vm.id);
  procs[0].stderr('Error: Cannot find module koffi\n');
  procs[0].exit(1, null);
  const e = await rejection(p);
  assert.equal(e.message, 'The VM could not start: the VM process exited with code 1.');
  assert.equal(manager.getVm(vm.id).state, 'crashed');
  assert.ok(manager.getVm(vm.id).lastExit?.logTail.includes('Error: Cannot find module koffi'));
});

test('a start that never finishes times out and the process is killed', async () => {
  const vm = manager.createVm(spec());
  const e = await rejection(manager.startVm(vm.id));
  assert.equal(e.code, 'timeout');
  assert.deepEqual(procs[0].signals, ['SIGKILL']);
  assert.equal(manager.getVm(vm.id).state, 'stopped');
});

test('stop sends "stop" and resolves when the process is gone; a hung stop times out', async () => {
  const a = await started();
  const stop = manager.stopVm(a.id);
  assert.equal(manager.getVm(a.id).state, 'stopping');
  const cmd = a.proc.sent[a.proc.sent.length - 1];
  assert.ok(cmd.type === 'command' && cmd.command === 'stop');
  a.proc.reply();
  a.proc.message({ type: 'state', state: 'stopped' });
  assert.equal(manager.getVm(a.id).state, 'stopping', '"stopped" counts once the process has exited');
  a.proc.message({ type: 'ended', end: { reason: 'stopped' }, stats: emptyStats });
  a.proc.exit(0, null);
  assert.equal((await stop).lastExit?.kind, 'stopped');

  const b = await started();
  const e = await rejection(manager.stopVm(b.id));
  assert.deepEqual(e, { code: 'timeout', message: 'The VM did not stop within 1 second; use Force off to end it.' });
  b.proc.onKill = () => b.proc.exit(null, 'SIGKILL');
  assert.equal((await manager.forceOffVm(b.id)).lastExit?.kind, 'forced-off', 'a forced off VM is not "crashed"');
});

test('shutdownAll stops what stops and forces off what hangs', async () => {
  const good = await started();
  const hung = await started();
  good.proc.sent.length = 0;
  const done = manager.shutdownAll('stop');
  // The good one ends at once; the hung one ignores "stop" until it is killed.
  good.proc.message({ type: 'ended', end: { reason: 'stopped' }, stats: emptyStats });
  good.proc.exit(0, null);
  await done;
  assert.equal(manager.getVm(good.id).lastExit?.kind, 'stopped');
  assert.equal(manager.getVm(hung.id).lastExit?.kind, 'forced-off');
  assert.deepEqual(hung.proc.signals, ['SIGKILL']);
  assert.deepEqual(manager.activeVms(), []);
});

test('output goes to scroll-back and subscribers with offsets; "none" ports drop it; input is routed', async () => {
  const { id, proc } = await started();
  const seen: [number, string][] = [];
  const stop = manager.subscribeConsole(id, 'com1', (offset, data) => seen.push([offset, Buffer.from(data).toString()]));
  proc.message({ type: 'output', ring: 0, data: Buffer.from('boot ') });
  proc.message({ type: 'output', ring: 0, data: Buffer.from('ok') });
  proc.message({ type: 'output', ring: 1, data: Buffer.from('COM2 is "none"') });
  proc.message({ type: 'output', ring: 9, data: Buffer.from('bogus ring') });
  assert.deepEqual(seen, [[0, 'boot '], [5, 'ok']]);
  const late: [number, string][] = [];
  manager.subscribeConsole(id, 'com1', (offset, data) => late.push([offset, Buffer.from(data).toString()]));
  assert.deepEqual(late, [[0, 'boot ok']]);
  const com2: string[] = [];
  manager.subscribeConsole(id, 'com2', (_o, d) => com2.push(Buffer.from(d).toString()));
  assert.deepEqual(com2, []);
  stop();
  proc.message({ type: 'output', ring: 0, data: Buffer.from('!') });
  assert.equal(seen.length, 2, 'unsubscribed');

  manager.sendConsoleInput(id, 'com1', 'hé');
  const input = proc.sent[proc.sent.length - 1];
  assert.ok(input.type === 'input' && input.port === 0);
  assert.deepEqual([...(input as { data: Uint8Array }).data], [0x68, 0xc3, 0xa9]);
  manager.sendConsoleInput(id, 'com1', '');
  assert.equal(proc.sent[proc.sent.length - 1], input, 'empty input sends nothing');
  assert.throws(() => manager.sendConsoleInput(id, 'com2', 'x'), { code: 'invalid-state' });
  assert.throws(() => manager.sendConsoleInput(id, 'com1', '\u{1F600}'.repeat(20000)), { code: 'invalid-argument' }, 'the limit counts UTF-8 bytes');
});

test('editing and deleting need a stopped VM; a deleted VM drops its console subscribers', async () => {
  const { id, proc } = await started();
  assert.throws(() => manager.updateVm(id, spec()), { code: 'invalid-state', message: 'Stop the VM before you edit it (it is running).' });
  assert.throws(() => manager.deleteVm(id), { code: 'invalid-state' });
  proc.exit(null, 'SIGKILL');
  const seen: string[] = [];
  manager.subscribeConsole(id, 'com1', (_o, d) => seen.push(Buffer.from(d).toString()));
  manager.deleteVm(id);
  assert.throws(() => manager.getVm(id), { code: 'not-found' });
  assert.deepEqual(events[events.length - 1], { type: 'vm-removed', id });
});

test('an ISO in boot.cdrom becomes a CD-ROM drive SeaBIOS boots first; disk images become virtio-blk disks', async () => {
  const file = path.join(home.home, 'disk.img');
  fs.writeFileSync(file, '');
  const iso = machineConfigOf({ ...spec(), boot: { kind: 'firmware', firmware: '', disks: [], cdrom: file, optionRoms: [] } });
  assert.deepEqual(iso.disks, [{ readOnly: true, bus: 'sata', media: 'cdrom', path: file }]);
  assert.deepEqual(iso.boot, { kind: 'firmware', path: undefined, bootFrom: 'cdrom' });
  const config = machineConfigOf({ ...spec(), boot: { kind: 'firmware', firmware: '', disks: [file], cdrom: '', optionRoms: [] } });
  assert.deepEqual(config.disks, [{ path: file, readOnly: false }]);
});

test('host USB devices a dead VM process held: repaired at load and as soon as the manager sees the process end', async () => {
  const journal = new UsbJournal(fs.mkdtempSync(path.join(home.home, 'data-')));
  const entry = (sysfsName: string, pid: number) => ({
    sysfsName, busNumber: 9, deviceAddress: 9, vendorId: 1, productId: 2, pid, vm: 'echo', takenAt: new Date(0).toISOString(),
    interfaces: [{ sysfsName: `${sysfsName}:1.0`, number: 0, driver: 'usb-storage' }],
  });
  // Left by a crashed manager's VM process (a pid no process has); device 9-8 is not on this host.
  journal.record(entry('9-8', 0x3ffffe));
  const lines: string[] = [];
  const m = new VmManager({
    libraryDir: home.libraryDir, mode: 'browser', appVersion: 't', stopTimeoutMs: 200, startTimeoutMs: 300,
    launcher: () => { const p = new ScriptedProcess(); procs.push(p); return p; }, log: (l) => lines.push(l), usbJournal: journal,
  });
  m.load();
  assert.deepEqual(journal.read().entries, []);
  assert.ok(lines.some((l) => l.includes('9-8 (taken by VM echo) left the host meanwhile')), lines.join('\n'));
  const vm = m.createVm(spec());
  const p = m.startVm(vm.id);
  const proc = procs[procs.length - 1];
  proc.boot();
  await p;
  journal.record(entry('9-9', proc.pid));
  proc.exit(null, 'SIGKILL');
  assert.deepEqual(journal.read().entries, [], 'the killed process\'s entry was handled when it ended');
  assert.ok(lines.some((l) => l.includes('9-9 (taken by VM echo) left the host meanwhile')), lines.join('\n'));
});
