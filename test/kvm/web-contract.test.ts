// The contract over the real browser-mode server (HTTP + WebSocket on 127.0.0.1, port 0):
// every call with good and bad arguments through the browser client, the token and
// Host/Origin checks, a library with broken files, and real VM processes where KVM works.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { API_ERROR_CODES, LIMITS, type ApiErrorShape, type PortholeEvent, type VmSpec } from '../../main/api/contract';
import { createWebClient, type SocketLike, type WebClient } from '../../main/api/web-client';
import { VmLibrary } from '../../main/manager/library';
import { VmManager } from '../../main/manager/manager';
import { nodeVmProcessLauncher } from '../../main/manager/process-launcher';
import { cookieName, startWebServer, type WebServer } from '../../main/web/server';
import { flatSpec, tempConfigHome, waitFor } from '../helpers/manager';
import { guest, kvmSkipReason } from '../helpers/vm';

const kvmSkip = kvmSkipReason() ?? (fs.existsSync(guest('echo')) ? false : 'build/guests/echo.bin is missing: run scripts/fixtures.sh');
const BANNER = 'porthole echo ready\r\n';

let config: ReturnType<typeof tempConfigHome>;
let rendererDir: string;
let manager: VmManager;
let server: WebServer;
let client: WebClient;
let presetId: string;
const events: PortholeEvent[] = [];

function newClient(): WebClient {
  return createWebClient({
    baseUrl: `http://127.0.0.1:${server.port}`,
    token: server.token,
    openSocket: (url) => new WebSocket(url) as unknown as SocketLike,
    reconnectMs: 50,
  });
}

before(async () => {
  config = tempConfigHome();
  // A library with one good VM and three files that must be reported and skipped.
  const library = new VmLibrary(config.libraryDir);
  library.load();
  presetId = 'preset-vm';
  const now = new Date().toISOString();
  library.save({ version: 1, id: presetId, createdAt: now, updatedAt: now, spec: flatSpec('echo', { name: 'from disk' }) });
  fs.writeFileSync(path.join(config.libraryDir, 'broken.json'), '{ "version": 1, "id": "broken", ');
  fs.writeFileSync(path.join(config.libraryDir, 'future.json'), JSON.stringify({ version: 7, id: 'future' }));
  fs.writeFileSync(path.join(config.libraryDir, 'Not An Id.json'), '{}');
  fs.writeFileSync(path.join(config.libraryDir, '.preset-vm.json.123.tmp'), '{ half written');

  rendererDir = fs.mkdtempSync(path.join(config.home, 'renderer-'));
  fs.writeFileSync(path.join(rendererDir, 'index.html'), '<!doctype html><title>Porthole</title><script type="module" src="./app.js"></script>');
  fs.writeFileSync(path.join(rendererDir, 'app.js'), 'console.log("app")');
  fs.writeFileSync(path.join(config.home, 'secret.txt'), 'outside the renderer');

  manager = new VmManager({
    libraryDir: config.libraryDir, launcher: nodeVmProcessLauncher(), mode: 'browser', appVersion: 'test', log: () => undefined,
  });
  manager.load();
  server = await startWebServer({ backend: manager, rendererDir, log: () => undefined });
  client = newClient();
  client.onEvent((e) => events.push(e));
  await waitFor(() => events.some((e) => e.type === 'connection'), 10000, () => 'no WebSocket connection');
});

after(async () => {
  client.close();
  await manager.shutdownAll('force-off');
  await server.close();
  config.cleanup();
});

interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

function raw(opts: { path: string; method?: string; headers?: Record<string, string>; body?: string }): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: '127.0.0.1', port: server.port, path: opts.path, method: opts.method ?? 'GET',
      headers: { host: `127.0.0.1:${server.port}`, ...opts.headers },
    }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

function withToken(p: string): string {
  return `${p}${p.includes('?') ? '&' : '?'}token=${encodeURIComponent(server.token)}`;
}

/** Expects `p` to reject with an ApiError of `code` whose message is one sentence. */
async function rejects(p: Promise<unknown>, code: ApiErrorShape['code'], pattern?: RegExp): Promise<string> {
  let result: unknown;
  try {
    result = await p;
  } catch (e) {
    const err = e as ApiErrorShape;
    assert.equal(err.code, code, `expected ${code}, got ${err.code}: ${err.message}`);
    assert.ok(API_ERROR_CODES.includes(err.code));
    assert.match(err.message, /^["A-Za-z].*[.]$/s, `not a sentence: ${err.message}`);
    assert.ok(!/\n\s+at /.test(err.message), 'no stack traces');
    if (pattern) assert.match(err.message, pattern);
    return err.message;
  }
  assert.fail(`expected a rejection with ${code}, got ${JSON.stringify(result)}`);
}

/** Sends a call with any arguments, bypassing the typed client. */
function callRaw(method: string, args: unknown[]): Promise<unknown> {
  return raw({
    path: withToken('/api/call'), method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ method, args }),
  }).then((r) => {
    const body = JSON.parse(r.body) as { ok: boolean; value?: unknown; error?: ApiErrorShape };
    if (body.ok) return body.value;
    throw body.error;
  });
}

describe('the token, Host and Origin', () => {
  test('requests without the token or with a wrong one are refused, pages and API alike', async () => {
    for (const p of ['/', '/app.js', '/api/call', '/?token=wrong', '/api/call?token=wrong']) {
      const isApi = p.startsWith('/api');
      const r = await raw(isApi
        ? { path: p, method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"method":"listVms","args":[]}' }
        : { path: p });
      assert.equal(r.status, 401, p);
      assert.ok(!r.body.includes('from disk'), 'nothing leaks');
    }
    const api = await raw({ path: '/api/call', method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"method":"listVms","args":[]}' });
    assert.equal((JSON.parse(api.body) as { error: ApiErrorShape }).error.code, 'unauthorized');
  });

  test('the token in the address sets a cookie and is dropped from the address; the cookie then works', async () => {
    const first = await raw({ path: withToken('/') });
    assert.equal(first.status, 303);
    assert.equal(first.headers.location, '/');
    const cookie = String(first.headers['set-cookie']);
    assert.match(cookie, new RegExp(`^${cookieName(server.port)}=`));
    assert.match(cookie, /HttpOnly/);
    assert.match(cookie, /SameSite=Strict/);
    const jar = cookie.split(';')[0];
    const page = await raw({ path: '/', headers: { cookie: jar } });
    assert.equal(page.status, 200);
    assert.match(page.body, /<title>Porthole<\/title>/);
    assert.match(String(page.headers['content-security-policy']), /script-src 'self'/);
    assert.match(String(page.headers['content-security-policy']), /frame-ancestors 'none'/);
    const call = await raw({ path: '/api/call', method: 'POST', headers: { cookie: jar, 'content-type': 'application/json' }, body: '{"method":"getInfo","args":[]}' });
    assert.equal((JSON.parse(call.body) as { ok: boolean }).ok, true);
    const wrongCookie = await raw({ path: '/', headers: { cookie: `${cookieName(server.port)}=nope` } });
    assert.equal(wrongCookie.status, 401);
  });

  test('other Host names (DNS rebinding) and other Origins are refused even with the token', async () => {
    const rebound = await raw({ path: withToken('/'), headers: { host: `evil.example:${server.port}` } });
    assert.equal(rebound.status, 403);
    const otherPort = await raw({ path: withToken('/'), headers: { host: '127.0.0.1:1' } });
    assert.equal(otherPort.status, 403);
    const crossSite = await raw({
      path: withToken('/api/call'), method: 'POST', headers: { origin: 'http://evil.example', 'content-type': 'application/json' }, body: '{"method":"listVms","args":[]}',
    });
    assert.equal(crossSite.status, 403);
    const sameSite = await raw({
      path: withToken('/api/call'), method: 'POST', headers: { origin: `http://localhost:${server.port}`, host: `localhost:${server.port}`, 'content-type': 'application/json' }, body: '{"method":"getInfo","args":[]}',
    });
    assert.equal(sameSite.status, 200);
  });

  test('WebSocket upgrades need the token and our Origin', async () => {
    const attempt = (url: string, headers: Record<string, string> = {}) => new Promise<number>((resolve) => {
      const ws = new WebSocket(url, { headers });
      ws.on('unexpected-response', (_req, res) => { resolve(res.statusCode ?? 0); ws.terminate(); });
      ws.on('open', () => { resolve(101); ws.close(); });
      ws.on('error', () => undefined);
    });
    const base = `ws://127.0.0.1:${server.port}/api/events`;
    assert.equal(await attempt(base), 401);
    assert.equal(await attempt(`${base}?token=wrong`), 401);
    assert.equal(await attempt(`${base}?token=${server.token}`, { origin: 'http://evil.example' }), 403);
    assert.equal(await attempt(`${base}?token=${server.token}`, { origin: `http://127.0.0.1:${server.port}` }), 101);
  });

  test('static files stay inside the renderer directory', async () => {
    const cookie = `${cookieName(server.port)}=${server.token}`;
    const app = await raw({ path: '/app.js', headers: { cookie } });
    assert.equal(app.status, 200);
    assert.match(String(app.headers['content-type']), /^text\/javascript/);
    for (const p of ['/%2e%2e/secret.txt', '/..%2fsecret.txt', '/%2e%2e%2fsecret.txt', '/.%2e/secret.txt', '/missing.js', '/a%00b.js', '/%5c..%5csecret.txt']) {
      const r = await raw({ path: p, headers: { cookie } });
      assert.equal(r.status, 404, p);
      assert.ok(!r.body.includes('outside the renderer'), p);
    }
    const route = await raw({ path: '/vms/some-route', headers: { cookie } });
    assert.match(route.body, /<title>Porthole<\/title>/, 'client-side routes get the app');
  });

  test('malformed calls get typed errors, not crashes', async () => {
    const post = (body: string, type = 'application/json') => raw({ path: withToken('/api/call'), method: 'POST', headers: { 'content-type': type }, body });
    const notJson = await post('{ nope');
    assert.equal(notJson.status, 400);
    assert.equal((JSON.parse(notJson.body) as { error: ApiErrorShape }).error.code, 'invalid-argument');
    assert.equal((await post('{"method":"listVms","args":[]}', 'text/plain')).status, 415);
    assert.equal((await raw({ path: withToken('/api/call') })).status, 405);
    const huge = await post(JSON.stringify({ method: 'getInfo', args: ['x'.repeat(2 * 1024 * 1024)] }));
    assert.equal(huge.status, 413);
    await rejects(callRaw('noSuchCall', []), 'invalid-argument', /no call named/);
    await rejects(callRaw('__proto__', []), 'invalid-argument');
    await rejects(callRaw('getVm', 'not a list' as unknown as unknown[]), 'invalid-argument');
    await rejects(callRaw('openConsole', [presetId, 'com1', 'sub1']), 'invalid-state', /event connection/);
    const unknownSession = await raw({
      path: withToken('/api/call'), method: 'POST', headers: { 'content-type': 'application/json', 'x-porthole-session': 'gone' }, body: '{"method":"getInfo","args":[]}',
    });
    assert.equal((JSON.parse(unknownSession.body) as { error: ApiErrorShape }).error.code, 'invalid-state');
  });
});

describe('every call with good and bad arguments', () => {
  test('getInfo', async () => {
    const info = await client.getInfo();
    assert.equal(info.mode, 'browser');
    assert.equal(info.apiVersion, 1);
    assert.equal(info.capabilities.nativeFileDialogs, false);
    assert.equal(info.libraryDir, config.libraryDir);
    assert.equal(typeof info.kvmAvailable, 'boolean');
    await rejects(callRaw('getInfo', ['extra']), 'invalid-argument', /no arguments/);
  });

  test('listVms: the good file loads, broken files are reported by name and skipped', async () => {
    const list = await client.listVms();
    assert.deepEqual(list.vms.map((v) => [v.id, v.spec.name, v.state]), [[presetId, 'from disk', 'stopped']]);
    const problems = new Map(list.problems.map((p) => [p.file, p.reason]));
    assert.deepEqual([...problems.keys()].sort(), ['Not An Id.json', 'broken.json', 'future.json']);
    assert.match(problems.get('broken.json')!, /not valid JSON/);
    assert.match(problems.get('future.json')!, /version 7 is not supported/);
    assert.match(problems.get('Not An Id.json')!, /not a VM id/);
    await rejects(callRaw('listVms', [1]), 'invalid-argument');
  });

  test('getVm', async () => {
    assert.equal((await client.getVm(presetId)).spec.name, 'from disk');
    await rejects(client.getVm('../../etc/passwd'), 'invalid-argument', /not a VM id/);
    await rejects(client.getVm('broken'), 'not-found');
    await rejects(callRaw('getVm', [42]), 'invalid-argument');
    await rejects(callRaw('getVm', []), 'invalid-argument');
  });

  test('checkVmSpec reports shape problems per field and missing files', async () => {
    assert.deepEqual(await client.checkVmSpec(flatSpec('echo')), []);
    const shape = await callRaw('checkVmSpec', [{ ...flatSpec('echo'), memoryMiB: 'lots', cpus: 0, serial: ['ui', 'bogus', 'none', 'none'] }]) as { field: string; message: string }[];
    assert.deepEqual(shape.map((p) => p.field), ['memoryMiB', 'cpus', 'serial.1']);
    assert.ok(shape.every((p) => /^["A-Za-z].*\.$/.test(p.message)), JSON.stringify(shape));
    const files = await client.checkVmSpec(flatSpec('echo', { boot: { kind: 'linux', kernel: '/nonexistent/vmlinuz', initrd: '', cmdline: 'console=ttyS0' } }));
    assert.deepEqual(files, [{ field: 'boot.kernel', message: 'Kernel: /nonexistent/vmlinuz does not exist.' }]);
    assert.deepEqual(await callRaw('checkVmSpec', ['nope']), [{ field: '', message: 'The VM settings must be an object.' }]);
  });

  test('createVm, updateVm, deleteVm', async () => {
    const created = await client.createVm(flatSpec('echo', { name: 'made over HTTP' }));
    assert.equal(created.state, 'stopped');
    await waitFor(() => events.some((e) => e.type === 'vm-updated' && e.vm.id === created.id), 10000, () => 'no vm-updated event');
    const file = path.join(config.libraryDir, `${created.id}.json`);
    assert.equal((JSON.parse(fs.readFileSync(file, 'utf8')) as { spec: VmSpec }).spec.name, 'made over HTTP');

    await rejects(client.createVm({ ...flatSpec('echo'), name: '' }), 'invalid-argument', /^Name is required\.$/);
    await rejects(callRaw('createVm', [{ ...flatSpec('echo'), memoryMiB: LIMITS.memoryMiBMax + 1 }]), 'invalid-argument', /^Memory must be/);
    await rejects(callRaw('createVm', [{ ...flatSpec('echo'), extra: true }]), 'invalid-argument', /"extra" is not a setting/);
    await rejects(callRaw('createVm', [{ ...flatSpec('echo'), boot: { kind: 'floppy' } }]), 'invalid-argument', /Boot source/);
    await rejects(callRaw('createVm', [{ ...flatSpec('echo'), boot: { kind: 'flat', path: 'relative.bin' } }]), 'invalid-argument', /absolute path/);

    const updated = await client.updateVm(created.id, { ...created.spec, name: 'renamed', cpus: 2 });
    assert.equal(updated.spec.name, 'renamed');
    assert.equal((JSON.parse(fs.readFileSync(file, 'utf8')) as { spec: VmSpec }).spec.cpus, 2);
    await rejects(client.updateVm(created.id, { ...created.spec, cpus: 65 }), 'invalid-argument', /vCPUs/);
    await rejects(client.updateVm('no-such-vm', created.spec), 'not-found');
    await rejects(callRaw('updateVm', [created.id]), 'invalid-argument');

    await client.deleteVm(created.id);
    assert.ok(!fs.existsSync(file));
    await waitFor(() => events.some((e) => e.type === 'vm-removed' && e.id === created.id), 10000, () => 'no vm-removed event');
    await rejects(client.deleteVm(created.id), 'not-found');
    await rejects(client.deleteVm('../preset-vm'), 'invalid-argument');
    assert.ok(fs.existsSync(path.join(config.libraryDir, `${presetId}.json`)), 'traversal did not delete anything');
  });

  test('lifecycle calls on a stopped VM and with bad ids are refused', async () => {
    for (const call of [client.stopVm, client.forceOffVm, client.pauseVm, client.resumeVm, client.resetVm, client.getVmStats]) {
      await rejects(call(presetId), 'invalid-state', /while it is stopped/);
      await rejects(call('UPPER'), 'invalid-argument');
      await rejects(call('no-such-vm'), 'not-found');
    }
    await rejects(client.startVm('no-such-vm'), 'not-found');
    await rejects(client.sendConsoleInput(presetId, 'com1', 'x'), 'invalid-state');
  });

  test('getVmLog', async () => {
    assert.ok(Array.isArray(await client.getVmLog(presetId)));
    await rejects(client.getVmLog('..'), 'invalid-argument');
  });

  test('console arguments are checked', async () => {
    await rejects(client.openConsole(presetId, 'com9' as 'com1', () => undefined), 'invalid-argument', /com1, com2/);
    await rejects(client.openConsole('no-such-vm', 'com1', () => undefined), 'not-found');
    await rejects(client.sendConsoleInput(presetId, 'debugcon', 'x'), 'invalid-argument', /only shows output/);
    await rejects(callRaw('sendConsoleInput', [presetId, 'com1', 42]), 'invalid-argument', /must be text/);
    await rejects(callRaw('sendConsoleInput', [presetId, 'com1', 'x'.repeat(LIMITS.consoleInputMaxBytes + 1)]), 'invalid-argument', /limited/);
    await rejects(client.sendConsoleInput(presetId, 'com2', 'x'), 'invalid-state', /COM2 is not connected/);
  });

  test('chooseFile is not available in browser mode; its argument is still checked', async () => {
    await rejects(client.chooseFile({ purpose: 'kernel' }), 'unsupported', /type the path/);
    await rejects(callRaw('chooseFile', [{ purpose: 'everything' }]), 'invalid-argument');
    await rejects(callRaw('chooseFile', [{ purpose: 'disk', title: 5 }]), 'invalid-argument');
  });

  test('a VM through the whole contract: start, console out and in, stats, pause, resume, reset, stop, force off', { skip: kvmSkip }, async () => {
    const vm = await client.createVm(flatSpec('echo', { name: 'web echo' }));
    await rejects(client.stopVm(vm.id), 'invalid-state');
    let text = '';
    const closeConsole = await client.openConsole(vm.id, 'com1', (data) => { text += Buffer.from(data).toString('latin1'); });
    assert.equal((await client.startVm(vm.id)).state, 'running');
    await rejects(client.startVm(vm.id), 'invalid-state', /already running/);
    await rejects(client.deleteVm(vm.id), 'invalid-state', /Stop the VM/);
    await rejects(client.updateVm(vm.id, vm.spec), 'invalid-state');
    await waitFor(() => text.includes(BANNER), 30000, () => `no banner: ${JSON.stringify(text)}`);
    await client.sendConsoleInput(vm.id, 'com1', 'typed in a browser\r');
    await waitFor(() => text === `${BANNER}typed in a browser\r`, 20000, () => `echo: ${JSON.stringify(text)}`);

    // A second, late console gets the scroll-back then live bytes, with nothing repeated.
    let late = '';
    const closeLate = await client.openConsole(vm.id, 'com1', (data) => { late += Buffer.from(data).toString('latin1'); });
    await waitFor(() => late === text, 10000, () => `late: ${JSON.stringify(late)}`);
    await client.sendConsoleInput(vm.id, 'com1', '+');
    await waitFor(() => late.endsWith('\r+') && text.endsWith('\r+'), 20000, () => `both: ${JSON.stringify([text, late])}`);
    assert.equal(late, text);
    closeLate();

    assert.ok(Object.keys((await client.getVmStats(vm.id)).exits).length > 0);
    assert.equal((await client.pauseVm(vm.id)).state, 'paused');
    await rejects(client.pauseVm(vm.id), 'invalid-state');
    assert.equal((await client.resumeVm(vm.id)).state, 'running');
    await rejects(client.resumeVm(vm.id), 'invalid-state');
    assert.equal((await client.resetVm(vm.id)).state, 'running');
    await waitFor(() => text.endsWith(BANNER) && text.length > BANNER.length * 2, 30000, () => `after reset: ${JSON.stringify(text)}`);

    const stopped = await client.stopVm(vm.id);
    assert.equal(stopped.state, 'stopped');
    assert.equal(stopped.lastExit?.kind, 'stopped');
    await waitFor(() => events.some((e) => e.type === 'vm-updated' && e.vm.id === vm.id && e.vm.state === 'stopped'), 10000, () => 'no stopped event');
    assert.ok((await client.getVmLog(vm.id)).length > 0);

    await client.startVm(vm.id);
    const forced = await client.forceOffVm(vm.id);
    assert.equal(forced.state, 'stopped');
    assert.equal(forced.lastExit?.kind, 'forced-off');
    closeConsole();
    await client.deleteVm(vm.id);
  });

  test('a killed VM process shows as crashed over the contract and the server keeps working', { skip: kvmSkip }, async () => {
    const vm = await client.createVm(flatSpec('echo', { name: 'to be killed' }));
    await client.startVm(vm.id);
    const log = await client.getVmLog(vm.id);
    const pid = Number(/VM process (\d+)/.exec(log.join('\n'))?.[1]);
    assert.ok(pid > 0, `no pid in the log: ${log.join(' | ')}`);
    process.kill(pid, 'SIGKILL');
    await waitFor(() => events.some((e) => e.type === 'vm-updated' && e.vm.id === vm.id && e.vm.state === 'crashed'), 20000, () => 'no crashed event');
    const crashed = await client.getVm(vm.id);
    assert.equal(crashed.lastExit?.signal, 'SIGKILL');
    assert.match(crashed.lastExit!.message, /killed by signal SIGKILL/);
    assert.ok(crashed.lastExit!.logTail.length > 0);
    assert.equal((await client.startVm(vm.id)).state, 'running', 'a crashed VM starts again');
    await client.stopVm(vm.id);
    await client.deleteVm(vm.id);
  });

  test('the browser client reconnects its event socket and resumes consoles without repeats', { skip: kvmSkip }, async () => {
    const vm = await client.createVm(flatSpec('echo', { name: 'reconnect' }));
    const sockets: WebSocket[] = [];
    const c = createWebClient({
      baseUrl: `http://127.0.0.1:${server.port}`, token: server.token, reconnectMs: 50,
      openSocket: (url) => { const ws = new WebSocket(url); sockets.push(ws); return ws as unknown as SocketLike; },
    });
    const statuses: string[] = [];
    c.onEvent((e) => { if (e.type === 'connection') statuses.push(e.status); });
    let text = '';
    const close = await c.openConsole(vm.id, 'com1', (d) => { text += Buffer.from(d).toString('latin1'); });
    await c.startVm(vm.id);
    await waitFor(() => text === BANNER, 30000, () => `banner: ${JSON.stringify(text)}`);
    sockets[0].terminate();
    await waitFor(() => statuses.join(',') === 'connected,disconnected,connected', 10000, () => statuses.join(','));
    await c.sendConsoleInput(vm.id, 'com1', 'after');
    await waitFor(() => text.endsWith('after'), 20000, () => `after reconnect: ${JSON.stringify(text)}`);
    assert.equal(text, `${BANNER}after`, 'the scroll-back re-sent on reconnect is not repeated');
    close();
    c.close();
    await client.stopVm(vm.id);
    await client.deleteVm(vm.id);
  });
});
