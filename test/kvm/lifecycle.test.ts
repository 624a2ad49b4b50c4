import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';
import type { MachineConfig } from '../../main/vmm/config';
import type { MachineEnd, MachineStats } from '../../main/vmm/machine/machine';
import { VmHost, type VmHostOptions, type VmState } from '../../main/vmm/host/vm-host';
import { flatConfig, kvmSkipReason } from '../helpers/vm';

const skip = kvmSkipReason() ?? false;
/** Liveness bounds (how long before we call it hung), not timing assertions. */
const HANG_MS = 60000;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `check` until it returns true; fails if it never does within HANG_MS. */
async function waitFor(what: string, check: () => Promise<boolean> | boolean): Promise<void> {
  const deadline = Date.now() + HANG_MS;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what}`);
    await sleep(20);
  }
}

function postWrites(stats: MachineStats): number {
  return stats.devices.find((d) => d.name === 'post-code')?.writes ?? 0;
}

interface Watched {
  host: VmHost;
  debugcon: () => string;
  states: VmState[];
  ended: Promise<{ end: MachineEnd; stats: MachineStats }>;
}

function watch(config: MachineConfig, setup: (host: VmHost) => void = () => {}, options: VmHostOptions = {}): Watched {
  const host = new VmHost(config, options);
  setup(host);
  let debugcon = '';
  const states: VmState[] = [];
  host.on('output', (ring, data) => {
    if (ring === 4) debugcon += Buffer.from(data).toString('latin1');
  });
  host.on('state', (s) => states.push(s));
  const ended = new Promise<{ end: MachineEnd; stats: MachineStats }>((resolve) =>
    host.once('ended', (end, stats) => resolve({ end, stats })));
  return { host, debugcon: () => debugcon, states, ended };
}

async function endedWithin(w: Watched): Promise<{ end: MachineEnd; stats: MachineStats }> {
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      void w.host.stop();
      reject(new Error(`the VM did not end; debug console so far:\n${w.debugcon().slice(-2000)}`));
    }, HANG_MS);
  });
  try {
    return await Promise.race([w.ended, hang]);
  } finally {
    clearTimeout(timer);
  }
}

test('pause stops the guest (no progress while paused) and resume lets it continue', { skip }, async () => {
  const w = watch(flatConfig('pio-loop-forever'));
  await w.host.start();
  try {
    await waitFor('the guest to start counting', async () => postWrites(await w.host.stats()) > 100);
    w.host.pause();
    assert.equal(w.host.state, 'paused');
    // The machine thread answers stats only between exits, so this is after the last one.
    const atPause = postWrites(await w.host.stats());
    await sleep(300);
    const later = postWrites(await w.host.stats());
    assert.equal(later, atPause, 'the guest made progress while paused');
    w.host.resume();
    assert.equal(w.host.state, 'running');
    await waitFor('progress after resume', async () => postWrites(await w.host.stats()) > later);
  } finally {
    await w.host.stop();
  }
  assert.equal(w.host.state, 'stopped');
  assert.equal((await w.ended).end.reason, 'stopped');
  assert.match(w.debugcon(), /^counting\n/);
});

test('stop returns while every vCPU sits in hlt with interrupts off, and the process then exits by itself', { skip }, async () => {
  // A child process, so "the process can exit" is checked for real: no thread may stay in
  // KVM_RUN and no handle may keep the event loop alive after stop().
  const dist = path.resolve(__dirname, '..', '..');
  const script = `
    const { VmHost } = require(${JSON.stringify(path.join(dist, 'main', 'vmm', 'host', 'vm-host.js'))});
    const { flatConfig } = require(${JSON.stringify(path.join(dist, 'test', 'helpers', 'vm.js'))});
    // Without isa-debug-exit the smp guest parks every CPU with cli; hlt.
    const host = new VmHost(flatConfig('smp', { cpus: 2, debugExit: false }));
    let out = '';
    let stopping = false;
    host.on('output', (ring, data) => {
      if (ring !== 4) return;
      out += Buffer.from(data).toString('latin1');
      const done = /apic ids:[ 0-9]*\\n/.exec(out);
      if (done && !stopping) {
        stopping = true;
        console.log('guest: ' + done[0].trim());
        // Give the BSP time to reach its hlt after the last byte.
        setTimeout(() => host.stop().then(() => console.log('stop returned, state ' + host.state)), 200);
      }
    });
    host.on('ended', (end) => console.log('ended: ' + end.reason));
    host.start().catch((e) => { console.error('start failed: ' + e.message); process.exitCode = 3; });
  `;
  const child = spawn(process.execPath, ['-e', script], {
    env: { ...process.env, PORTHOLE_FORBID_KOFFI_VIEW: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  const exit = await new Promise<{ code: number | null; signal: NodeJS.Signals | null; hung: boolean }>((resolve) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      resolve({ code: null, signal: 'SIGKILL', hung: true });
    }, HANG_MS);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, hung: false });
    });
  });
  const log = `stdout:\n${stdout}\nstderr:\n${stderr}`;
  assert.equal(exit.hung, false, `the child did not exit by itself\n${log}`);
  assert.equal(exit.code, 0, log);
  assert.match(stdout, /stop returned, state stopped\n/, log);
  assert.match(stdout, /ended: stopped\n/, log);
  assert.match(stdout, /guest: apic ids: 0 1\n/, `the AP did not start, so it never sat in hlt\n${log}`);
});

const resetGuests = [
  { guest: 'reset-i8042', banner: 'boot: i8042 reset\n', how: 'the i8042 pulse-reset command 0xFE' },
  { guest: 'reset-port92', banner: 'boot: port 0x92 reset\n', how: 'a 0 -> 1 edge of port 0x92 bit 0' },
  { guest: 'reset-triple', banner: 'boot: triple fault\n', how: 'a triple fault in protected mode' },
];

for (const { guest, banner, how } of resetGuests) {
  test(`${how} resets the machine and the guest boots again`, { skip }, async () => {
    // One reset is allowed: boot, reset, boot again, reset again -> the reset-loop guard ends it.
    const w = watch(flatConfig(guest), (host) => { host.maxResets = 1; });
    await w.host.start();
    const { end, stats } = await endedWithin(w);
    const out = w.debugcon();
    const seen = `end: ${JSON.stringify(end)}, states: ${w.states.join(', ')}, debug console:\n${out}`;
    assert.equal(out.split(banner).length - 1, 2, `expected the banner twice; ${seen}`);
    assert.doesNotMatch(out, /did nothing|did not reset/);
    assert.equal(end.reason, 'error');
    assert.match((end as { message: string }).message, /reset/, seen);
    // The machine was rebuilt and ran again: running, starting (after the reset), running.
    const firstRun = w.states.indexOf('running');
    assert.ok(firstRun >= 0 && w.states.indexOf('running', w.states.indexOf('starting', firstRun)) > firstRun,
      `states: ${w.states.join(', ')}`);
    if (guest === 'reset-triple') assert.equal(stats.exits.shutdown, 1, 'KVM reported the triple fault as a shutdown exit');
    if (guest === 'reset-i8042') assert.ok((stats.devices.find((d) => d.name === 'i8042 (0x64)')?.writes ?? 0) >= 1);
    if (guest === 'reset-port92') assert.equal(stats.devices.find((d) => d.name === 'port92')?.writes, 2);
  });
}

test('with noReboot (porthole run --no-reboot) a guest reset ends the VM instead of restarting it', { skip }, async () => {
  const w = watch(flatConfig('reset-i8042'), () => {}, { noReboot: true });
  await w.host.start();
  const { end } = await endedWithin(w);
  const out = w.debugcon();
  assert.equal(out.split('boot: i8042 reset\n').length - 1, 1, `the guest ran once; debug console:\n${out}`);
  assert.equal(end.reason, 'reset', JSON.stringify(end));
  assert.equal(w.states.filter((st) => st === 'running').length, 1, `states: ${w.states.join(', ')}`);
});

test('guest RAM is made once per VM: it keeps its buffers and contents through a guest reset and a user reset', { skip }, async () => {
  // Each launch (start, after the guest's reset, after the user's) records the RAM buffers
  // the VM host hands to that machine.
  const launches: SharedArrayBuffer[][] = [];
  const w = watch(flatConfig('reset-keeps-ram'), (host) => {
    host.on('state', (s) => {
      if (s === 'running') launches.push((host.guestRam ?? []).map((r) => r.buffer));
    });
  });
  await w.host.start();
  const ram = w.host.guestRam;
  assert.ok(ram && ram.length > 0, 'no guest RAM while running');
  const low = ram[0];
  await waitFor('the guest to find its marker after its own reset', () => /marker kept through the guest reset\n/.test(w.debugcon()));
  // The guest's marker is in the very buffer the VM host made ("PRAM", stage 2).
  assert.equal(Buffer.from(low.buffer, low.offset + 0x20000, 4).toString('latin1'), 'PRAM');
  assert.equal(new Uint8Array(low.buffer, low.offset + 0x20004, 1)[0], 2);
  await w.host.reset();
  const { end } = await endedWithin(w);
  const seen = `end: ${JSON.stringify(end)}, debug console:\n${w.debugcon()}`;
  assert.deepEqual(end, { reason: 'poweroff', exitCode: 0x43 }, seen);
  assert.equal(w.debugcon(), 'ram: marker written\nram: marker kept through the guest reset\nram: marker kept through the user reset\n', seen);
  assert.equal(launches.length, 3, `launches: ${launches.length}; ${seen}`);
  for (const [i, buffers] of launches.entries()) {
    assert.equal(buffers.length, ram.length, `launch ${i} got ${buffers.length} RAM regions`);
    buffers.forEach((b, j) => assert.ok(b === ram[j].buffer, `launch ${i}: RAM region ${j} is a new buffer`));
  }
  assert.equal(new Uint8Array(low.buffer, low.offset + 0x20004, 1)[0], 3, 'the last stage the guest wrote is in the same buffer');
  assert.equal(w.host.guestRam, null, 'RAM is dropped when the VM ends');
});
