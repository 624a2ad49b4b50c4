// The vm-stats stream end to end: the serial-flood guest in a real VM process, the
// browser-mode server, and a browser client watching the VM over the WebSocket. The
// UART's byte counter (COM1 / tx-bytes) and the PIO exit rate (exits / io, per second)
// must rise across the events it receives. Counter names: main/vmm/shared/stats.ts.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import type { VmStatsEvent } from '../../main/api/contract';
import { createWebClient, type SocketLike, type WebClient } from '../../main/api/web-client';
import { VmManager } from '../../main/manager/manager';
import { nodeVmProcessLauncher } from '../../main/manager/process-launcher';
import { startWebServer, type WebServer } from '../../main/web/server';
import { flatSpec, tempConfigHome, waitFor } from '../helpers/manager';
import { guest, kvmSkipReason } from '../helpers/vm';

const skip = kvmSkipReason() ?? (fs.existsSync(guest('serial-flood')) ? false : 'build/guests/serial-flood.bin is missing: run scripts/fixtures.sh');

let config: ReturnType<typeof tempConfigHome>;
let manager: VmManager;
let server: WebServer;
let client: WebClient;

before(async () => {
  if (skip) return;
  config = tempConfigHome();
  const rendererDir = fs.mkdtempSync(path.join(config.home, 'renderer-'));
  fs.writeFileSync(path.join(rendererDir, 'index.html'), '<!doctype html><title>Porthole</title>');
  manager = new VmManager({
    libraryDir: config.libraryDir, launcher: nodeVmProcessLauncher(), mode: 'browser', appVersion: 'test', log: () => undefined,
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

after(async () => {
  if (skip) return;
  client.close();
  await manager.shutdownAll('force-off');
  await server.close();
  config.cleanup();
});

function reading(e: VmStatsEvent, group: string, name: string) {
  return e.sample.counters.find((c) => c.group === group && c.name === name);
}

/** Whether some later value in `values` is greater than an earlier one. */
function rises(values: number[]): boolean {
  let lowest = Infinity;
  for (const v of values) {
    if (v > lowest) return true;
    lowest = Math.min(lowest, v);
  }
  return false;
}

test('the serial-flood guest: COM1 tx-bytes and the PIO exit rate rise in vm-stats events over the web API', { skip }, async () => {
  const vm = await client.createVm(flatSpec('serial-flood', { name: 'stats flood' }));
  let consoleBytes = 0;
  const closeConsole = await client.openConsole(vm.id, 'com1', (data) => { consoleBytes += data.length; });
  const events: VmStatsEvent[] = [];
  // Watching before the start: the stream begins with the VM host's first sample.
  const unwatch = await client.watchVmStats(vm.id, (e) => events.push(e));
  assert.equal((await client.startVm(vm.id)).state, 'running');

  // A counter not registered yet (before the machine is built) has counted nothing: 0.
  const txTotals = () => events.map((e) => reading(e, 'COM1', 'tx-bytes')?.total ?? 0);
  const ioRates = () => events.map((e) => reading(e, 'exits', 'io')?.perSecond ?? 0);
  const describe = () => `${events.length} events; COM1 tx-bytes totals ${JSON.stringify(txTotals().slice(-8))}, `
    + `exits io per second ${JSON.stringify(ioRates().slice(-8))}; ${consoleBytes} console bytes; `
    + `counters of the last sample: ${JSON.stringify(events.at(-1)?.sample.counters.map((c) => `${c.group}/${c.name}`) ?? [])}`;
  // The first sample covers no interval (every rate 0); the flood's samples come after it.
  await waitFor(() => rises(txTotals()) && rises(ioRates()), 180000, describe);
  assert.ok(txTotals().at(-1)! > 0);

  assert.ok(events.every((e) => e.type === 'vm-stats' && e.id === vm.id));
  const tx = txTotals();
  assert.ok(tx.every((t, i) => i === 0 || t >= tx[i - 1]), `tx-bytes totals never go down: ${JSON.stringify(tx)}`);
  assert.equal(reading(events.at(-1)!, 'COM1', 'tx-bytes')?.unit, 'bytes');
  assert.ok(events.every((e, i) => i === 0 || e.sample.atMs >= events[i - 1].sample.atMs), 'samples arrive in order');

  unwatch();
  closeConsole();
  await client.forceOffVm(vm.id);
});
