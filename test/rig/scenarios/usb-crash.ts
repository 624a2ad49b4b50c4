// Host USB devices go home after crashes, with L1 as the host and Porthole's manager
// (browser mode, the process that owns the journal) running in L1. No L2 Linux: the VMs run
// SeaBIOS, whose xHCI driver enumerates the passed-through stick and reads its first sector.
//
// Part A, VM process SIGKILL, 20 runs: a library VM with a USB rule for stick0 (serial
// RIGSTICK0) takes it at start (emulated path: node-usb/usbfs behind our xHCI). Once the
// journal names the VM process as the holder and L1's usb-storage has let go, the VM process
// is SIGKILLed: in runs 1-7 soon after the take, in runs 8-14 once SeaBIOS's xHCI driver has
// started (the stick is being enumerated), in runs 15-20 once SeaBIOS boots from it (sector 0
// is being read). Each time the manager must see the process die and give stick0 back: its
// log says so, usb-storage is bound again, /dev/sdX comes back and reads the known pattern,
// and the journal folder is empty. The time from SIGKILL to each is printed (not asserted).
//
// Part B, manager SIGKILL: another VM (no rules) runs, stick0 is attached to it through the
// API, and the manager alone is SIGKILLed. What the VM process then does is checked: it must
// end by itself (its IPC channel closes) and give stick0 back before it exits. A new manager
// starts. Then the same again, but the manager and its VM process are SIGKILLed together (the
// process group: a session killed, the OOM killer taking the app): stick0 is left without a
// driver and the journal keeps its entry; the next manager start must repair it (its log says
// so), usb-storage is bound again, /dev/sdX comes back and the journal folder is empty.
import fs from 'node:fs';
import path from 'node:path';
import type { VmSpec, VmSummary, UsbPortInfo } from '../../../main/api/contract';
import { UsbJournal } from '../../../main/host/usb-journal';
import { blockDeviceWithSerial, sysfsUsbDevices, until } from '../l1-usb';
import { l1ProjectDir } from '../paths';
import { RigManager } from '../rig-manager';
import { scenario, type ScenarioContext } from '../scenario';
import { checkStickSector, SECTOR, STICKS } from '../sticks';
import { stickBoundInL1 } from '../usb-passthrough-l1';

const WORK = '/tmp/usb-crash';
const KILL_RUNS = 20;
const stick = STICKS.stick0;

interface Phase {
  name: string;
  /** What SeaBIOS's debug console must show (this run) before the kill; null: kill soon after the take. */
  waitFor: RegExp | null;
  delayMs: (run: number) => number;
}

const PHASES: { runs: [number, number]; phase: Phase }[] = [
  { runs: [1, 7], phase: { name: 'soon after the take', waitFor: null, delayMs: (r) => (r * 251) % 1000 } },
  { runs: [8, 14], phase: { name: 'while SeaBIOS enumerates it', waitFor: /XHCI init/, delayMs: (r) => (r * 97) % 400 } },
  { runs: [15, 20], phase: { name: 'while SeaBIOS boots from it', waitFor: /Booting from Hard Disk/, delayMs: (r) => (r * 37) % 100 } },
];

function phaseOf(run: number): Phase {
  return PHASES.find((p) => run >= p.runs[0] && run <= p.runs[1])!.phase;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Polls every 20 ms (for timings); resolves with the ms it took, or null after `timeoutMs`. */
async function timeUntil(timeoutMs: number, probe: () => boolean, from = Date.now()): Promise<number | null> {
  for (;;) {
    if (probe()) return Date.now() - from;
    if (Date.now() - from > timeoutMs) return null;
    await sleep(20);
  }
}

function stickDrivers(name: string): string[] {
  return sysfsUsbDevices().find((d) => d.name === name)?.drivers ?? [];
}

function readSector0(dev: string): Buffer {
  const fd = fs.openSync(`/dev/${dev}`, 'r');
  try {
    const b = Buffer.alloc(SECTOR);
    fs.readSync(fd, b, 0, SECTOR, 0);
    return b;
  } finally {
    fs.closeSync(fd);
  }
}

/** What is in the journal folder: entries, and every other file (a clean journal has none of either). */
function journalLeft(journal: UsbJournal): string[] {
  const { entries, pci, bad } = journal.read();
  let stray: string[] = [];
  try { stray = fs.readdirSync(journal.dir).filter((f) => !f.endsWith('.json')); } catch { /* no folder: clean */ }
  return [...entries.map((e) => `${e.sysfsName} (process ${e.pid})`), ...pci.map((e) => e.address), ...bad, ...stray];
}

function startManager(ctx: ScenarioContext, label: string): Promise<RigManager> {
  return RigManager.start({
    spawn: (cmd, args, opts) => ctx.spawn(cmd, args, opts), log: (l) => ctx.log(l),
    projectDir: l1ProjectDir, configHome: `${WORK}/config`, dataHome: `${WORK}/data`,
  }, label);
}

function vmSpec(name: string, rules: boolean): VmSpec {
  return {
    name, memoryMiB: 64, cpus: 1,
    boot: { kind: 'firmware', firmware: '', disks: [], cdrom: '', optionRoms: [] },
    serial: ['none', 'none', 'none', 'none'], debugExit: false,
    usb: {
      controller: 'xhci', devices: [], passthroughPath: 'emulated',
      ...(rules ? { rules: [{ match: { serial: stick.serial } }] } : {}),
    },
  };
}

/** Waits until stick0 is back with L1: usb-storage bound, /dev/sdX there and reading the pattern. Returns the disk and the timings. */
async function stickHome(name: string, from: number): Promise<{ driverMs: number | null; diskMs: number | null; disk: string | null; problem: string | null }> {
  const driverMs = await timeUntil(30000, () => stickDrivers(name).includes('usb-storage'), from);
  const diskMs = await timeUntil(60000, () => blockDeviceWithSerial(stick.serial) !== null, from);
  const disk = blockDeviceWithSerial(stick.serial);
  let problem: string | null = null;
  if (driverMs === null) problem = `usb-storage is not bound to ${name} (drivers: ${stickDrivers(name).join(',') || 'none'})`;
  else if (disk === null) problem = 'no /dev/sdX for stick0';
  else {
    try {
      problem = checkStickSector(stick.label, 0, readSector0(disk));
    } catch (e) {
      problem = `reading /dev/${disk}: ${(e as Error).message}`;
    }
  }
  return { driverMs, diskMs, disk, problem };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function partKill(ctx: ScenarioContext, m: RigManager, journal: UsbJournal, name: string): Promise<string> {
  const vm = await m.call<VmSummary>('createVm', vmSpec('usb-crash kill', true));
  const debugcon = { text: '' };
  await m.watchDebugcon(vm.id, debugcon);
  const failures: string[] = [];
  const driverTimes: number[] = [];
  const diskTimes: number[] = [];
  const reached: string[] = [];
  for (let run = 1; run <= KILL_RUNS; run++) {
    const phase = phaseOf(run);
    const why: string[] = [];
    const mark = debugcon.text.length;
    try {
      const t0 = Date.now();
      await m.call<VmSummary>('startVm', vm.id);
      const entry = await until(`run ${run}: the VM process to take stick0 (journaled, usb-storage unbound)`, 60000, () => {
        const e = journal.read().entries.find((x) => x.sysfsName === name);
        return e !== undefined && alive(e.pid) && !stickDrivers(name).includes('usb-storage') ? e : null;
      });
      const takenMs = Date.now() - t0;
      let where = 'no wait';
      if (phase.waitFor !== null) {
        const pattern = phase.waitFor;
        const ms = await timeUntil(60000, () => pattern.test(debugcon.text.slice(mark)));
        where = ms === null ? `SeaBIOS did not show ${pattern} within 60 s` : `${pattern.source} after ${ms} ms`;
      }
      const delay = phase.delayMs(run);
      await sleep(delay);
      const seen = debugcon.text.slice(mark).split('\n').map((l) => l.trim()).filter(Boolean);
      reached.push(`run ${run}: ${seen.at(-1) ?? '(nothing on the debug console yet)'}`);
      const killedAt = Date.now();
      process.kill(entry.pid, 'SIGKILL');
      const home = await stickHome(name, killedAt);
      if (home.problem !== null) why.push(home.problem);
      if (home.driverMs !== null) driverTimes.push(home.driverMs);
      if (home.diskMs !== null) diskTimes.push(home.diskMs);
      await until(`run ${run}: the manager to see the VM end`, 30000, () => (alive(entry.pid) ? null : true));
      const gone = await timeUntil(10000, () => m.saidGaveBack(name, entry.pid));
      if (gone === null) why.push(`the manager did not say it gave ${name} back after process ${entry.pid} died`);
      const left = journalLeft(journal);
      if (left.length > 0) why.push(`the journal folder still holds ${left.join(', ')}`);
      const state = await m.vmAtRest(vm.id, 30000);
      if (state !== 'crashed') why.push(`the manager shows the killed VM as ${state}, not crashed`);
      ctx.log(`kill run ${run} (${phase.name}): taken ${takenMs} ms after startVm; ${where}; SIGKILL ${delay} ms later to process ${entry.pid}; `
        + `usb-storage back after ${home.driverMs ?? '-'} ms, /dev/${home.disk ?? '?'} after ${home.diskMs ?? '-'} ms; `
        + `${why.length === 0 ? 'OK' : `FAILED: ${why.join('; ')}`}`);
    } catch (e) {
      why.push((e as Error).message);
      ctx.log(`kill run ${run}: FAILED: ${(e as Error).message}`);
    }
    if (why.length > 0) failures.push(`run ${run}: ${why.join('; ')}`);
    // Whatever went wrong, the next run starts from a VM at rest and stick0 with L1.
    await m.vmAtRest(vm.id, 30000).then((s) => (s === 'running' || s === 'paused' ? m.call('forceOffVm', vm.id) : null)).catch(() => undefined);
  }
  ctx.log(`where SeaBIOS was at each kill:\n${reached.join('\n')}`);
  const passed = KILL_RUNS - failures.length;
  const timing = driverTimes.length > 0
    ? `SIGKILL to usb-storage bound: median ${median(driverTimes)} ms, max ${Math.max(...driverTimes)} ms; to /dev/sdX: median ${median(diskTimes)} ms, max ${Math.max(...diskTimes)} ms`
    : 'no timings';
  const summary = `VM process SIGKILL with stick0 held: back on usb-storage with /dev/sdX reading the pattern and the journal empty, by the manager's repair, in ${passed} of ${KILL_RUNS} runs (${timing})`;
  ctx.log(summary);
  if (failures.length > 0) throw new Error(`${summary}; ${failures.join(' / ')}`);
  return summary;
}

/** Starts the VM and attaches stick0 through the API; returns the VM process (the journal's holder). */
async function holdStick(ctx: ScenarioContext, m: RigManager, id: string, journal: UsbJournal, name: string): Promise<number> {
  await m.call<VmSummary>('startVm', id);
  const port = await m.call<UsbPortInfo>('attachHostUsbDevice', id, { device: name });
  const entry = await until(`${m.label}: stick0 journaled for the VM process, usb-storage unbound`, 30000, () => {
    const e = journal.read().entries.find((x) => x.sysfsName === name);
    return e !== undefined && alive(e.pid) && !stickDrivers(name).includes('usb-storage') ? e : null;
  });
  ctx.log(`${m.label}: stick0 (${name}) attached to the running VM on guest port ${port.port}; VM process ${entry.pid}, journal names ${entry.interfaces.map((i) => `${i.sysfsName} → ${i.driver}`).join(', ')}`);
  await until(`${m.label}: L1's /dev/sdX of stick0 to go away`, 20000, () => (blockDeviceWithSerial(stick.serial) === null ? true : null));
  return entry.pid;
}

async function partManagerCrash(ctx: ScenarioContext, m1: RigManager, journal: UsbJournal, name: string): Promise<{ found: string[]; failures: string[]; last: RigManager }> {
  const found: string[] = [];
  const failures: string[] = [];
  const vm = await m1.call<VmSummary>('createVm', vmSpec('usb-crash holder', false));

  // B1: the manager alone is killed.
  const q1 = await holdStick(ctx, m1, vm.id, journal, name);
  const killedAt = Date.now();
  process.kill(m1.pid, 'SIGKILL');
  ctx.log(`M1 (process ${m1.pid}) SIGKILLed: ${await m1.exited}; its VM process ${q1} is ${alive(q1) ? 'alive' : 'gone'} at once`);
  const vmEnd = await timeUntil(30000, () => !alive(q1), killedAt);
  if (vmEnd === null) {
    failures.push(`VM process ${q1} still ran 30 s after its manager was SIGKILLed (killed now)`);
    process.kill(q1, 'SIGKILL');
    await until(`VM process ${q1} to end`, 10000, () => (alive(q1) ? null : true));
  } else {
    found.push(`with the manager SIGKILLed its VM process ${q1} ended by itself ${vmEnd} ms later`);
  }
  const selfDriver = stickDrivers(name).includes('usb-storage');
  const selfLeft = journalLeft(journal);
  ctx.log(`after M1's death and VM process ${q1}'s end, before any manager runs: stick0 drivers ${stickDrivers(name).join(',') || 'none'}, journal ${selfLeft.length === 0 ? 'empty' : selfLeft.join(', ')}`);
  if (selfDriver && selfLeft.length === 0) found.push('it gave stick0 back to usb-storage itself before exiting (journal empty with no manager running)');
  else failures.push(`VM process ${q1} exited without giving stick0 back (drivers ${stickDrivers(name).join(',') || 'none'}, journal ${selfLeft.join(', ') || 'empty'})`);
  const m2 = await startManager(ctx, 'M2');
  const home1 = await stickHome(name, Date.now());
  if (home1.problem !== null) failures.push(`after M1's crash and M2's start: ${home1.problem}`);
  if (!selfDriver && m2.saidGaveBack(name, q1)) found.push(`M2's start repaired what VM process ${q1} left`);
  const left1 = journalLeft(journal);
  if (left1.length > 0) failures.push(`after M2's start the journal folder holds ${left1.join(', ')}`);

  // B2: the manager and its VM process are killed together.
  const q2 = await holdStick(ctx, m2, vm.id, journal, name);
  process.kill(-m2.pid, 'SIGKILL');
  ctx.log(`M2's process group (manager ${m2.pid}, VM process ${q2}) SIGKILLed: manager ${await m2.exited}`);
  await until(`VM process ${q2} to end`, 10000, () => (alive(q2) ? null : true));
  await sleep(2000);
  const orphan = stickDrivers(name);
  const held = journal.read().entries.find((e) => e.sysfsName === name);
  ctx.log(`2 s after: stick0 drivers ${orphan.join(',') || 'none'}, /dev/sdX ${blockDeviceWithSerial(stick.serial) ?? 'none'}, journal entry ${held ? `for process ${held.pid}` : 'none'}`);
  if (orphan.includes('usb-storage') || held?.pid !== q2) {
    failures.push(`after the group kill stick0 was not left for the repair (drivers ${orphan.join(',') || 'none'}, journal entry ${held ? `process ${held.pid}` : 'none'})`);
  } else {
    found.push(`with manager and VM process SIGKILLed together stick0 was left without usb-storage and journaled for dead process ${q2}`);
  }
  const startedAt = Date.now();
  const m3 = await startManager(ctx, 'M3');
  const said = await timeUntil(30000, () => m3.saidGaveBack(name, q2), startedAt);
  const home2 = await stickHome(name, startedAt);
  const left2 = journalLeft(journal);
  if (said === null) failures.push(`M3's start did not say it gave ${name} back after process ${q2}`);
  if (home2.problem !== null) failures.push(`after M3's start: ${home2.problem}`);
  if (left2.length > 0) failures.push(`after M3's start the journal folder holds ${left2.join(', ')}`);
  if (said !== null && home2.problem === null && left2.length === 0) {
    found.push(`M3's start repaired it from the journal: usb-storage bound ${home2.driverMs} ms and /dev/${home2.disk} back ${home2.diskMs} ms after M3 was spawned, sector 0 reads the pattern, journal empty`);
  }
  return { found, failures, last: m3 };
}

scenario('usb-crash', async (ctx) => {
  if (!fs.existsSync(`${l1ProjectDir}/dist/main/web/browser-mode.js`)) throw new Error('Porthole is not built (dist/main/web/browser-mode.js is missing): run npm run build');
  const sys = await stickBoundInL1(stick);
  const disk = await until('stick0\'s disk in L1', 60000, () => blockDeviceWithSerial(stick.serial));
  const bad = checkStickSector(stick.label, 0, readSector0(disk));
  if (bad) throw new Error(`L1 /dev/${disk}: ${bad}`);
  ctx.log(`L1: stick0 is USB device ${sys.name} (${sys.id}, drivers ${sys.drivers.join(',')}), /dev/${disk}`);
  fs.rmSync(WORK, { recursive: true, force: true });
  const journal = new UsbJournal(path.join(WORK, 'data', 'porthole'));
  const found: string[] = [];
  const failures: string[] = [];
  const m1 = await startManager(ctx, 'M1');
  try {
    found.push(await partKill(ctx, m1, journal, sys.name));
  } catch (e) {
    failures.push((e as Error).message);
  }
  // Part B needs stick0 with L1 whatever part A left.
  const ready = await stickHome(sys.name, Date.now());
  if (ready.problem !== null) throw new Error(`${failures.join('; ')}; before part B: ${ready.problem}`);
  const b = await partManagerCrash(ctx, m1, journal, sys.name);
  found.push(...b.found);
  failures.push(...b.failures);
  b.last.close();
  b.last.proc.kill('SIGTERM');
  ctx.log(`M3 stopped: ${await b.last.exited}`);
  if (failures.length > 0) throw new Error(`${failures.length} check(s) failed: ${failures.join('; ')} (passed: ${found.join('; ')})`);
  return found.join('; ');
});
