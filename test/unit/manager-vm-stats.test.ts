// The vm-stats plumbing without KVM: samples from a scripted VM process go through the
// manager's stats fan-out and the real browser-mode server (HTTP + WebSocket) to a
// subscribed browser client; the process is only asked for samples while somebody
// watches; getVmStats reads the same registry sample. Also the per-run state machine.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';
import WebSocket from 'ws';
import type { VmStatsEvent } from '../../main/api/contract';
import { createWebClient, type SocketLike, type WebClient } from '../../main/api/web-client';
import { VmManager } from '../../main/manager/manager';
import { vmStatsOfSample } from '../../main/manager/stats-fanout';
import { SampleForwarder } from '../../main/manager/sample-forwarder';
import { StatsPacker } from '../../main/manager/stats-wire';
import { STATS_DEFAULT_PERIOD_MS, STATS_MIN_INTERVAL_MS, STATS_TIMER_SLACK_MS, statsPeriodOf, type ManagerToVm } from '../../main/manager/vm-process-protocol';
import type { StatsSample } from '../../main/vmm/shared/stats';
import { startWebServer, type WebServer } from '../../main/web/server';
import { flatSpec, tempConfigHome, waitFor } from '../helpers/manager';
import { ScriptedProcess } from '../helpers/scripted-process';

let home: ReturnType<typeof tempConfigHome>;
let manager: VmManager;
let server: WebServer;
let client: WebClient;
let procs: ScriptedProcess[];

beforeEach(async () => {
  home = tempConfigHome();
  fs.writeFileSync(path.join(home.home, 'flood.bin'), 'x');
  const rendererDir = fs.mkdtempSync(path.join(home.home, 'renderer-'));
  fs.writeFileSync(path.join(rendererDir, 'index.html'), '<!doctype html><title>Porthole</title>');
  procs = [];
  manager = new VmManager({
    libraryDir: home.libraryDir, mode: 'browser', appVersion: 't', stopTimeoutMs: 200, startTimeoutMs: 1000,
    launcher: () => { const p = new ScriptedProcess(); procs.push(p); return p; },
    log: () => undefined,
  });
  manager.load();
  server = await startWebServer({ backend: manager, rendererDir, log: () => undefined });
  client = createWebClient({
    baseUrl: `http://127.0.0.1:${server.port}`,
    token: server.token,
    openSocket: (url) => new WebSocket(url) as unknown as SocketLike,
    reconnectMs: 50,
  });
});

afterEach(async () => {
  client.close();
  await manager.shutdownAll('force-off');
  await server.close();
  home.cleanup();
});

/** A sample in the registry's naming convention (main/vmm/shared/stats.ts). */
function sample(atMs: number, txBytes: number, ioExits: number, ioPerSecond: number): StatsSample {
  return {
    atMs,
    intervalMs: 250,
    counters: [
      { group: 'exits', name: 'io', unit: 'count', total: ioExits, perSecond: ioPerSecond },
      { group: 'exits', name: 'hlt', unit: 'count', total: 0, perSecond: 0 },
      { group: 'COM1', name: 'tx-bytes', unit: 'bytes', total: txBytes, perSecond: txBytes * 4 },
      { group: 'COM1', name: 'pio-reads', unit: 'count', total: 10, perSecond: 0 },
      { group: 'COM1', name: 'pio-writes', unit: 'count', total: txBytes, perSecond: 0 },
      { group: 'pci-host', name: 'mmio-reads', unit: 'count', total: 3, perSecond: 0 },
    ],
  };
}

function streamWishes(proc: ScriptedProcess): boolean[] {
  return proc.sent.filter((m): m is Extract<ManagerToVm, { type: 'stats-stream' }> => m.type === 'stats-stream').map((m) => m.on);
}

async function startedVm(): Promise<{ id: string; proc: ScriptedProcess }> {
  const vm = manager.createVm(flatSpec('flood', { boot: { kind: 'flat', path: path.join(home.home, 'flood.bin') } }));
  const p = manager.startVm(vm.id);
  const proc = procs[procs.length - 1];
  proc.boot();
  await p;
  return { id: vm.id, proc };
}

test('samples reach a subscribed browser client over the WebSocket, only while it watches', async () => {
  const { id, proc } = await startedVm();
  // Nobody watches: the process is not asked for samples, and one it sends goes nowhere.
  assert.deepEqual(streamWishes(proc), []);
  proc.message({ type: 'stats', sample: sample(1, 1, 1, 1) });

  const received: VmStatsEvent[] = [];
  const stop = await client.watchVmStats(id, (e) => received.push(e));
  assert.deepEqual(streamWishes(proc), [true], 'the first watcher turns the stream on');
  for (let i = 1; i <= 3; i++) proc.message({ type: 'stats', sample: sample(1000 + i * 250, i * 5000, i * 5100, i * 20000) });
  await waitFor(() => received.length === 3, 5000, () => `3 events, got ${received.length}`);
  assert.ok(received.every((e) => e.type === 'vm-stats' && e.id === id));
  const reading = (e: VmStatsEvent, group: string, name: string) => e.sample.counters.find((c) => c.group === group && c.name === name);
  const tx = received.map((e) => reading(e, 'COM1', 'tx-bytes')?.total);
  const io = received.map((e) => reading(e, 'exits', 'io')?.perSecond);
  assert.deepEqual(tx, [5000, 10000, 15000]);
  assert.deepEqual(io, [20000, 40000, 60000]);
  assert.deepEqual(received[2].sample, sample(1750, 15000, 15300, 60000), 'the sample arrives as the VM host made it');

  // A second watcher (another client) does not ask again; the stream stops with the last one.
  const other: VmStatsEvent[] = [];
  const stopOther = manager.subscribeVmStats(id, (e) => other.push(e));
  assert.deepEqual(streamWishes(proc), [true]);
  proc.message({ type: 'stats', sample: sample(2000, 1, 1, 1) });
  assert.equal(other.length, 1);
  stopOther();
  assert.deepEqual(streamWishes(proc), [true], 'the browser client still watches');
  await waitFor(() => received.length === 4, 5000, () => 'the fourth event');
  stop();
  await waitFor(() => streamWishes(proc).length === 2, 5000, () => 'the unwatch call to arrive');
  proc.message({ type: 'stats', sample: sample(3000, 1, 1, 1) });
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(received.length, 4, 'nothing after unwatching');
  assert.equal(other.length, 1);
  assert.deepEqual(streamWishes(proc), [true, false], 'the last watcher gone turns the stream off');
});

test('packed samples (what a VM process sends) reach a watcher as the VM host made them', async () => {
  const { id, proc } = await startedVm();
  const received: VmStatsEvent[] = [];
  const stop = manager.subscribeVmStats(id, (e) => received.push(e));
  const packer = new StatsPacker();
  const first = packer.pack(sample(1000, 5, 6, 7));
  const second = packer.pack(sample(1250, 10, 12, 14));
  assert.ok(first.specs !== undefined && second.specs === undefined, 'names only with the first sample');
  proc.message({ type: 'stats-packed', sample: first });
  proc.message({ type: 'stats-packed', sample: second });
  // Numbers that do not match the names are dropped, not shown under the wrong names.
  proc.message({ type: 'stats-packed', sample: { ...second, totals: new Float64Array(2) } });
  await waitFor(() => received.length === 2, 5000, () => `2 events, got ${received.length}`);
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(received.length, 2);
  assert.deepEqual(received.map((e) => e.sample), [sample(1000, 5, 6, 7), sample(1250, 10, 12, 14)]);
  stop();
});

test('a stream opened before the VM starts carries on across runs', async () => {
  const vm = manager.createVm(flatSpec('flood', { boot: { kind: 'flat', path: path.join(home.home, 'flood.bin') } }));
  const received: VmStatsEvent[] = [];
  await client.watchVmStats(vm.id, (e) => received.push(e));
  for (let run = 0; run < 2; run++) {
    const p = manager.startVm(vm.id);
    const proc = procs[run];
    proc.boot();
    await p;
    const start = proc.sent.findIndex((m) => m.type === 'start');
    assert.deepEqual(proc.sent.slice(start).map((m) => m.type), ['start', 'stats-stream'], 'asked for samples right after the config');
    proc.message({ type: 'stats', sample: sample(run, run + 1, 1, 1) });
    await waitFor(() => received.length === run + 1, 5000, () => `event of run ${run}`);
    proc.exit(0, null);
  }
  assert.deepEqual(received.map((e) => e.sample.atMs), [0, 1]);
});

test('watching a VM that does not exist, or with a bad id, is refused', async () => {
  await assert.rejects(client.watchVmStats('no-such-vm', () => undefined), { code: 'not-found' });
  await assert.rejects(client.watchVmStats('../x', () => undefined), (e: { code: string; message: string }) =>
    e.code === 'invalid-argument' && e.message.includes('"id"') && e.message.includes('watchVmStats'));
});

test('getVmStats answers from the registry sample when it has counters, else from the machine', async () => {
  const { id, proc } = await startedVm();
  const replyToStats = (answer: { sample?: StatsSample; stats?: { exits: Record<string, number>; devices: { name: string; reads: number; writes: number }[]; kicks: number; apExits: number } }) => {
    const last = [...proc.sent].reverse().find((m) => m.type === 'command');
    assert.ok(last && last.type === 'command' && last.command === 'stats');
    proc.message({ type: 'reply', id: last.id, ok: true, ...answer });
  };
  const fromSample = client.getVmStats(id);
  await waitFor(() => proc.sent.some((m) => m.type === 'command'), 5000, () => 'the stats command');
  replyToStats({ sample: sample(5, 300, 310, 0) });
  assert.deepEqual(await fromSample, {
    exits: { io: 310 },
    devices: [{ name: 'COM1', reads: 10, writes: 300 }, { name: 'pci-host', reads: 3, writes: 0 }],
  });
  const fromMachine = client.getVmStats(id);
  await waitFor(() => proc.sent.filter((m) => m.type === 'command').length === 2, 5000, () => 'the second stats command');
  replyToStats({ sample: { atMs: 1, intervalMs: 0, counters: [] }, stats: { exits: { io: 2 }, devices: [{ name: 'uart', reads: 1, writes: 1 }], kicks: 0, apExits: 0 } });
  assert.deepEqual(await fromMachine, { exits: { io: 2 }, devices: [{ name: 'uart', reads: 1, writes: 1 }] });
});

test('vmStatsOfSample adds PIO and MMIO accesses per device and leaves zero counts out', () => {
  const s: StatsSample = {
    atMs: 0, intervalMs: 0, counters: [
      { group: 'exits', name: 'mmio', unit: 'count', total: 4, perSecond: 0 },
      { group: 'exits', name: 'io', unit: 'count', total: 0, perSecond: 0 },
      { group: 'ide', name: 'pio-reads', unit: 'count', total: 1, perSecond: 0 },
      { group: 'ide', name: 'mmio-reads', unit: 'count', total: 2, perSecond: 0 },
      { group: 'ide', name: 'mmio-writes', unit: 'count', total: 5, perSecond: 0 },
      { group: 'idle', name: 'pio-reads', unit: 'count', total: 0, perSecond: 0 },
      { group: 'COM1', name: 'tx-bytes', unit: 'bytes', total: 99, perSecond: 0 },
    ],
  };
  assert.deepEqual(vmStatsOfSample(s), { exits: { mmio: 4 }, devices: [{ name: 'ide', reads: 3, writes: 5 }] });
});

test('the VM process forwards samples only while asked, at most one per STATS_MIN_INTERVAL_MS', () => {
  const sent: StatsSample[] = [];
  const f = new SampleForwarder((s) => sent.push(s));
  f.offer(sample(2, 1, 1, 1), 10);
  assert.equal(sent.length, 0, 'not streaming yet');
  f.setStreaming(true);
  f.offer(sample(3, 1, 1, 1), 20);
  f.offer(sample(4, 1, 1, 1), 20 + STATS_MIN_INTERVAL_MS - STATS_TIMER_SLACK_MS - 1);
  f.offer(sample(5, 1, 1, 1), 20 + STATS_MIN_INTERVAL_MS - STATS_TIMER_SLACK_MS);
  assert.deepEqual(sent.map((s) => s.atMs), [3, 5]);
  f.setStreaming(false);
  f.offer(sample(6, 1, 1, 1), 1000);
  assert.deepEqual(sent.map((s) => s.atMs), [3, 5]);
});

test('a run moves through explicit phases; messages out of order are ignored', async () => {
  const vm = manager.createVm(flatSpec('flood', { boot: { kind: 'flat', path: path.join(home.home, 'flood.bin') } }));
  const p = manager.startVm(vm.id);
  const proc = procs[0];
  proc.message({ type: 'started' }); // before "ready": not a start
  assert.equal(manager.getVm(vm.id).state, 'starting');
  proc.message({ type: 'ready' });
  proc.message({ type: 'ready' }); // a second "ready" does not send the config twice
  assert.equal(proc.sent.filter((m) => m.type === 'start').length, 1);
  proc.message({ type: 'state', state: 'running' });
  proc.message({ type: 'started' });
  assert.equal((await p).state, 'running');
  proc.message({ type: 'start-failed', message: 'late' }); // a live machine cannot fail to start
  assert.ok(!manager.getVmLog(vm.id).some((l) => l.includes('late')));
  proc.exit(0, null);
  proc.message({ type: 'state', state: 'running' }); // after the exit nothing counts
  assert.equal(manager.getVm(vm.id).state, 'crashed', 'exit code 0 without "ended" is still a crash');
});

test('a watcher that leaves while the VM process is still launching is not asked for', async () => {
  const vm = manager.createVm(flatSpec('flood', { boot: { kind: 'flat', path: path.join(home.home, 'flood.bin') } }));
  const stop = manager.subscribeVmStats(vm.id, () => undefined);
  const p = manager.startVm(vm.id);
  const proc = procs[0];
  stop();
  proc.boot();
  await p;
  assert.deepEqual(streamWishes(proc), [], 'nobody watches by the time the process is ready');
  const stopLate = manager.subscribeVmStats(vm.id, () => undefined);
  assert.deepEqual(streamWishes(proc), [true]);
  stopLate();
  assert.deepEqual(streamWishes(proc), [true, false]);
});

function streamPeriods(proc: ScriptedProcess): (number | null)[] {
  return proc.sent
    .filter((m): m is Extract<ManagerToVm, { type: 'stats-stream' }> => m.type === 'stats-stream')
    .map((m) => (m.on ? m.periodMs ?? -1 : null));
}

test('watchVmStatsEvery paces events: one per interval, rates over the whole interval, the VM host sampling for the fastest', async () => {
  const { id, proc } = await startedVm();
  const slow: VmStatsEvent[] = [];
  const stopSlow = await client.watchVmStatsEvery(id, 1000, (e) => slow.push(e));
  assert.deepEqual(streamPeriods(proc), [250], 'a 1 s watcher keeps the default 250 ms sampling');
  // 250 ms samples; io exits grow by 1000 per sample except one burst of 5000.
  const io = [0, 1000, 2000, 7000, 8000, 9000, 10000, 11000, 12000];
  io.forEach((total, i) => proc.message({ type: 'stats', sample: sample(10000 + i * 250, total, total, 4000) }));
  await waitFor(() => slow.length === 3, 5000, () => `3 paced events, got ${slow.length}`);
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(slow.length, 3, 'samples at 0, 1000 and 2000 ms only');
  assert.deepEqual(slow.map((e) => e.sample.atMs), [10000, 11000, 12000]);
  assert.deepEqual(slow.map((e) => e.sample.intervalMs), [250, 1000, 1000]);
  const ioRate = (e: VmStatsEvent) => e.sample.counters.find((c) => c.group === 'exits' && c.name === 'io')?.perSecond;
  assert.deepEqual(slow.map(ioRate), [4000, 8000, 4000], 'the burst is averaged over its second, not lost');

  const fast: VmStatsEvent[] = [];
  const stopFast = await client.watchVmStatsEvery(id, 100, (e) => fast.push(e));
  assert.deepEqual(streamPeriods(proc), [250, 100], 'a 10 Hz watcher makes the VM host sample every 100 ms');
  stopFast();
  await waitFor(() => streamPeriods(proc).length === 3, 5000, () => 'the unwatch to arrive');
  assert.deepEqual(streamPeriods(proc), [250, 100, 250], 'back to 250 ms when it leaves');
  stopSlow();
  await waitFor(() => streamPeriods(proc).length === 4, 5000, () => 'the last unwatch to arrive');
  assert.deepEqual(streamPeriods(proc), [250, 100, 250, null]);

  await assert.rejects(client.watchVmStatsEvery(id, 50, () => undefined), (e: { code: string; message: string }) =>
    e.code === 'invalid-argument' && /from 100 to 60000/.test(e.message) && /intervalMs/.test(e.message));
});

test('the VM process takes a sampling period between 100 and 250 ms from the manager, and the default for anything else', () => {
  assert.equal(statsPeriodOf(100), 100);
  assert.equal(statsPeriodOf(180.4), 180);
  assert.equal(statsPeriodOf(20), STATS_MIN_INTERVAL_MS);
  assert.equal(statsPeriodOf(1000), STATS_DEFAULT_PERIOD_MS);
  for (const bad of [undefined, null, 'fast', Number.NaN, Infinity]) assert.equal(statsPeriodOf(bad), STATS_DEFAULT_PERIOD_MS);
});
