// Browser mode's request checks (token, Host, Origin), static path resolution and CSP,
// as pure functions; the live server is tested in test/integration/web-contract.test.ts.
import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';
import { contentSecurityPolicy } from '../../main/web/csp';
import { checkRequest, cookieName, parseCookies, staticFilePath, tokensEqual } from '../../main/web/server';

const PORT = 4321;
const TOKEN = 'tok_en-123';
const url = (p: string) => new URL(p, `http://127.0.0.1:${PORT}`);

test('the token comes from the query or the port-named cookie, nowhere else', () => {
  const host = { host: `127.0.0.1:${PORT}` };
  assert.deepEqual(checkRequest(host, url(`/?token=${TOKEN}`), PORT, TOKEN), { ok: true, status: 200, reason: '', tokenFromQuery: true });
  assert.equal(checkRequest({ ...host, cookie: `a=b; ${cookieName(PORT)}=${TOKEN}` }, url('/'), PORT, TOKEN).ok, true);
  assert.equal(checkRequest({ ...host, cookie: `porthole-9999=${TOKEN}` }, url('/'), PORT, TOKEN).status, 401, 'another port\'s cookie');
  assert.equal(checkRequest({ ...host, authorization: `Bearer ${TOKEN}` }, url('/'), PORT, TOKEN).status, 401);
  assert.equal(checkRequest(host, url('/?token='), PORT, TOKEN).status, 401);
  assert.equal(checkRequest(host, url(`/?token=${TOKEN}x`), PORT, TOKEN).status, 401);
  assert.equal(checkRequest(host, url('/'), PORT, TOKEN).status, 401);
});

test('only 127.0.0.1 and localhost on our port are our Host; Origin must match when sent', () => {
  const ok = (headers: Record<string, string>) => checkRequest(headers, url(`/?token=${TOKEN}`), PORT, TOKEN);
  assert.equal(ok({ host: `localhost:${PORT}` }).ok, true);
  assert.equal(ok({ host: `LOCALHOST:${PORT}` }).ok, true);
  for (const host of ['', 'evil.example', `evil.example:${PORT}`, '127.0.0.1', `127.0.0.1:${PORT + 1}`, `[::1]:${PORT}`, `0.0.0.0:${PORT}`]) {
    assert.equal(ok({ host }).status, 403, host);
  }
  const host = `127.0.0.1:${PORT}`;
  assert.equal(ok({ host, origin: `http://127.0.0.1:${PORT}` }).ok, true);
  assert.equal(ok({ host, origin: `http://localhost:${PORT}` }).ok, true);
  for (const origin of ['null', 'http://evil.example', `https://127.0.0.1:${PORT}`, `http://127.0.0.1:${PORT}.evil.example`, 'file://']) {
    assert.equal(ok({ host, origin }).status, 403, origin);
  }
});

test('static paths stay inside the root', () => {
  const root = '/srv/renderer';
  assert.equal(staticFilePath(root, '/'), root);
  assert.equal(staticFilePath(root, '/assets/app.js'), path.join(root, 'assets/app.js'));
  assert.equal(staticFilePath(root, '/a%20b.css'), path.join(root, 'a b.css'));
  for (const bad of ['/../x', '/%2e%2e/x', '/a/%2e%2e/%2e%2e/x', '/.env', '/a/.git/config', '/%00', '/a\\..\\x', '/%5c', '/%E0%A4%A']) {
    assert.equal(staticFilePath(root, bad), null, bad);
  }
});

test('helpers: constant-time token comparison and cookie parsing', () => {
  assert.equal(tokensEqual('abc', 'abc'), true);
  assert.equal(tokensEqual('abc', 'abd'), false);
  assert.equal(tokensEqual('abc', 'abcd'), false);
  assert.deepEqual([...parseCookies(' a=1; b = 2 ;junk; c=x=y')], [['a', '1'], ['b', '2'], ['c', 'x=y']]);
  assert.equal(parseCookies(undefined).size, 0);
});

test('the CSP allows scripts only from the app and nothing framed, posted or evaluated', () => {
  const csp = contentSecurityPolicy(['ws://127.0.0.1:1']);
  const directives = new Map(csp.split('; ').map((d) => [d.split(' ')[0], d.split(' ').slice(1)]));
  assert.deepEqual(directives.get('default-src'), ["'none'"]);
  assert.deepEqual(directives.get('script-src'), ["'self'"]);
  assert.deepEqual(directives.get('connect-src'), ["'self'", 'ws://127.0.0.1:1']);
  assert.deepEqual(directives.get('frame-ancestors'), ["'none'"]);
  assert.deepEqual(directives.get('object-src'), ["'none'"]);
  assert.deepEqual(directives.get('form-action'), ["'none'"]);
  assert.ok(!csp.includes('unsafe-eval'));
  assert.ok(!(directives.get('script-src') ?? []).includes("'unsafe-inline'"));
});
