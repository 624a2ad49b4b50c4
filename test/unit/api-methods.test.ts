// The method table (main/api/methods.ts): every entry is reachable under its own name
// through the session dispatch, the browser client and the compiled preload, and a bad
// argument is refused with an error that names it. No server, no Electron, no KVM: the
// clients are wired to an ApiSession in memory, and the preload runs against a fake
// "electron" module.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import type { ApiErrorShape, PortholeApi, VmSpec } from '../../main/api/contract';
import { API_METHODS, describeMethods, methodEntries, wireMethodNames, type MethodEntry } from '../../main/api/methods';
import { ApiSession, type ApiBackend } from '../../main/api/session';
import { createWebClient, type SocketLike } from '../../main/api/web-client';
import {
  IPC_CALL_CHANNEL, IPC_EVENT_CHANNEL, IPC_METHODS_CHANNEL, WIRE_METHODS, bytesToBase64, type ServerMessage,
} from '../../main/api/wire';

const repoRoot = path.join(__dirname, '..', '..', '..');

const goodSpec: VmSpec = {
  name: 'x', memoryMiB: 16, cpus: 1, boot: { kind: 'flat', path: '/x' }, serial: ['ui', 'none', 'none', 'none'], debugExit: false,
};

/** A good value for each argument name used in the table. */
const GOOD: Record<string, unknown> = {
  id: 'vm-1', spec: goodSpec, port: 'com1', data: 'hi', choice: { purpose: 'disk' }, device: { kind: 'keyboard' }, usbPort: 5, keys: ['a'], hostDevice: { device: '1-1.4' }, intervalMs: 1000, options: { path: '/tmp/c.pcapng' }, capture: 1, rule: { match: { vendorId: 0x46f4 } }, index: 0, media: { path: '/tmp/a.iso' }, eject: { force: true }, request: { address: '0000:01:00.0' }, address: '01:00.0',
};
/** A value every validator in the table refuses (the checkVmSpec spec is the backend's to judge). */
const BAD = 12345.5;

function goodArgs(entry: MethodEntry): unknown[] {
  if (entry.kind === 'events') return [];
  return entry.args.map((a) => {
    assert.ok(a.name in GOOD, `the test has no good value for argument "${a.name}"`);
    return GOOD[a.name];
  });
}

/**
 * A backend that records which of its methods ran. Calls answer null (a value the clients
 * pass through), subscriptions answer their stop function and count the open ones.
 */
function recordingBackend() {
  const ran: string[] = [];
  let open = 0;
  const backend = new Proxy({}, {
    get(_target, name) {
      if (typeof name !== 'string') return undefined;
      if (name === 'onEvent') return () => () => undefined;
      if (name.startsWith('subscribe')) {
        return () => {
          ran.push(name);
          open++;
          return () => { open--; };
        };
      }
      return () => { ran.push(name); return null; };
    },
  }) as ApiBackend;
  return { backend, ran, open: () => open };
}

/** A browser client whose HTTP calls and WebSocket are an ApiSession in memory. */
function inMemoryWebClient(backend: ApiBackend) {
  const wireCalls: string[] = [];
  let socket: SocketLike | null = null;
  const session = new ApiSession<string>(backend, (m) => {
    queueMicrotask(() => socket?.onmessage?.({ data: JSON.stringify(m) }));
  }, bytesToBase64);
  const client = createWebClient({
    baseUrl: 'http://test',
    fetch: async (_url, init) => {
      const body = JSON.parse(init.body) as { method: string; args: unknown[] };
      wireCalls.push(body.method);
      const result = await session.call(body.method, body.args);
      return { status: result.ok ? 200 : 400, json: async () => result };
    },
    openSocket: () => {
      const s: SocketLike = { onopen: null, onmessage: null, onclose: null, onerror: null, close: () => undefined };
      socket = s;
      queueMicrotask(() => s.onmessage?.({ data: JSON.stringify({ type: 'hello', session: 's1' } satisfies ServerMessage<string>) }));
      return s;
    },
  });
  return { client, wireCalls, session };
}

interface FakeIpc {
  api: Record<string, (...args: unknown[]) => unknown>;
  invoked: string[];
  exposedAs: string[];
}

/** Runs the compiled preload with a fake "electron" module whose invoke goes to an ApiSession. */
function loadPreload(backend: ApiBackend): FakeIpc {
  const js = fs.readFileSync(path.join(repoRoot, 'dist', 'preload', 'preload.js'), 'utf8');
  const invoked: string[] = [];
  const exposedAs: string[] = [];
  let api: Record<string, (...args: unknown[]) => unknown> = {};
  const eventListeners: ((e: unknown, m: unknown) => void)[] = [];
  const session = new ApiSession<Uint8Array>(backend, (m) => eventListeners.forEach((l) => l({}, m)), (d) => d);
  const electron = {
    contextBridge: {
      exposeInMainWorld: (name: string, value: Record<string, (...args: unknown[]) => unknown>) => { exposedAs.push(name); api = value; },
    },
    ipcRenderer: {
      on: (channel: string, listener: (e: unknown, m: unknown) => void) => {
        assert.equal(channel, IPC_EVENT_CHANNEL);
        eventListeners.push(listener);
      },
      sendSync: (channel: string) => {
        assert.equal(channel, IPC_METHODS_CHANNEL);
        // What crosses IPC is structured-cloned: plain data only.
        return structuredClone(describeMethods());
      },
      invoke: (channel: string, method: string, args: unknown[]) => {
        assert.equal(channel, IPC_CALL_CHANNEL);
        invoked.push(method);
        return session.call(method, args);
      },
    },
  };
  const fakeRequire = (name: string) => {
    assert.equal(name, 'electron');
    return electron;
  };
  const module = { exports: {} };
  new Function('require', 'module', 'exports', js)(fakeRequire, module, module.exports);
  return { api, invoked, exposedAs };
}

test('the table covers PortholeApi and the wire names are derived from it', () => {
  const names = methodEntries().map(([n]) => n).sort();
  // The same key set as PortholeApi is checked by the compiler (satisfies); here the derived lists.
  assert.ok(names.includes('watchVmStats') && names.includes('openConsole') && names.includes('onEvent'));
  assert.deepEqual([...WIRE_METHODS], wireMethodNames());
  for (const [name, e] of methodEntries()) {
    if (e.kind === 'call') assert.ok(WIRE_METHODS.includes(name as never), name);
    if (e.kind === 'stream') {
      assert.ok(WIRE_METHODS.includes(name as never), name);
      assert.ok(WIRE_METHODS.includes(e.close as never), e.close);
    }
    if (e.kind === 'events') assert.ok(!WIRE_METHODS.includes(name as never), 'onEvent is local to each client');
  }
  assert.equal(new Set(WIRE_METHODS).size, WIRE_METHODS.length, 'no wire name twice');
  // Names that scripts and the UI already use stay.
  for (const n of ['getInfo', 'listVms', 'getVm', 'checkVmSpec', 'createVm', 'updateVm', 'deleteVm', 'startVm', 'stopVm',
    'forceOffVm', 'pauseVm', 'resumeVm', 'resetVm', 'getVmLog', 'getVmStats', 'openConsole', 'closeConsole',
    'sendConsoleInput', 'chooseFile']) {
    assert.ok(WIRE_METHODS.includes(n as never), n);
  }
});

test('every entry reaches the backend under its own name through the session dispatch', async () => {
  const { backend, ran, open } = recordingBackend();
  const session = new ApiSession<string>(backend, () => undefined, bytesToBase64);
  for (const [name, e] of methodEntries()) {
    if (e.kind === 'events') continue;
    ran.length = 0;
    if (e.kind === 'call') {
      assert.deepEqual(await session.call(name, goodArgs(e)), { ok: true, value: null }, name);
      assert.deepEqual(ran, [name]);
    } else {
      assert.deepEqual(await session.call(name, [...goodArgs(e), 'sub-1']), { ok: true, value: null }, name);
      assert.deepEqual(ran, [e.subscribe]);
      assert.equal(open(), 1);
      assert.deepEqual(await session.call(e.close, ['sub-1']), { ok: true, value: null }, e.close);
      assert.equal(open(), 0, `${e.close} ends the ${name} stream`);
    }
  }
  session.close();
});

test('every entry is a method of the browser client that calls the wire name of the same name', async () => {
  const { backend, ran, open } = recordingBackend();
  const { client, wireCalls } = inMemoryWebClient(backend);
  const api = client as unknown as Record<string, (...args: unknown[]) => unknown>;
  try {
    for (const [name, e] of methodEntries()) {
      assert.equal(typeof api[name], 'function', name);
      if (e.kind === 'events') continue;
      wireCalls.length = 0;
      ran.length = 0;
      if (e.kind === 'call') {
        assert.equal(await api[name](...goodArgs(e)), null);
        assert.deepEqual(wireCalls, [name]);
        assert.deepEqual(ran, [name]);
      } else {
        const stop = await api[name](...goodArgs(e), () => undefined) as () => void;
        assert.deepEqual(wireCalls, [name]);
        assert.equal(open(), 1);
        stop();
        await new Promise((r) => setTimeout(r, 0));
        assert.deepEqual(wireCalls, [name, e.close]);
        assert.equal(open(), 0);
      }
    }
  } finally {
    client.close();
  }
});

test('the compiled preload exposes exactly the table, and each method invokes its own wire name', async () => {
  const { backend, ran, open } = recordingBackend();
  const { api, invoked, exposedAs } = loadPreload(backend);
  assert.deepEqual(exposedAs, ['porthole']);
  assert.deepEqual(Object.keys(api).sort(), Object.keys(API_METHODS).sort());
  for (const [name, e] of methodEntries()) {
    if (e.kind === 'events') {
      const off = api[name](() => undefined);
      assert.equal(typeof off, 'function');
      continue;
    }
    invoked.length = 0;
    ran.length = 0;
    if (e.kind === 'call') {
      assert.equal(await api[name](...goodArgs(e)), null);
      assert.deepEqual(invoked, [name]);
      assert.deepEqual(ran, [name]);
    } else {
      const stop = await api[name](...goodArgs(e), () => undefined) as () => void;
      assert.deepEqual(invoked, [name]);
      assert.equal(open(), 1);
      stop();
      await new Promise((r) => setTimeout(r, 0));
      assert.deepEqual(invoked, [name, e.close]);
      assert.equal(open(), 0);
    }
  }
});

test('a bad argument is refused before the backend, with an error naming the argument and the call', async () => {
  const { backend, ran } = recordingBackend();
  const session = new ApiSession<string>(backend, () => undefined, bytesToBase64);
  const { client } = inMemoryWebClient(backend);
  const preload = loadPreload(backend);
  const web = client as unknown as Record<string, (...args: unknown[]) => Promise<unknown>>;
  const viaPreload = preload.api as Record<string, (...args: unknown[]) => Promise<unknown>>;
  const refusal = async (p: Promise<unknown>): Promise<ApiErrorShape> => {
    try {
      await p;
    } catch (e) {
      return e as ApiErrorShape;
    }
    assert.fail('expected a refusal');
  };
  let checked = 0;
  try {
    for (const [name, e] of methodEntries()) {
      if (e.kind === 'events') continue;
      for (let i = 0; i < e.args.length; i++) {
        const spec = e.args[i];
        if (name === 'checkVmSpec') continue; // any value is a spec to check: problems are its answer
        const args = goodArgs(e);
        args[i] = BAD;
        const wireArgs = e.kind === 'stream' ? [...args, 'sub-1'] : args;
        ran.length = 0;
        const res = await session.call(name, wireArgs);
        assert.ok(!res.ok, `${name} with a bad ${spec.name}`);
        assert.equal(res.error.code, 'invalid-argument');
        assert.ok(res.error.message.includes(`"${spec.name}"`), `${name}: "${res.error.message}" names ${spec.name}`);
        assert.ok(res.error.message.includes(name), `${name}: "${res.error.message}" names the call`);
        assert.match(res.error.message, /^[A-Z].*\.$/, 'one sentence');
        const listener = e.kind === 'stream' ? [() => undefined] : [];
        for (const viaClient of [web, viaPreload]) {
          const err = await refusal(viaClient[name](...args, ...listener));
          assert.deepEqual({ code: err.code, message: err.message }, res.error);
        }
        assert.deepEqual(ran, [], 'the backend never saw it');
        checked++;
      }
      if (e.kind === 'stream') {
        const res = await session.call(name, [...goodArgs(e), 'not a subscription!']);
        assert.ok(!res.ok && res.error.message.includes('"subscription"'), `${name}: ${JSON.stringify(res)}`);
        const close = await session.call(e.close, [7]);
        assert.ok(!close.ok && close.error.message.includes('"subscription"') && close.error.message.includes(e.close));
      }
    }
    assert.ok(checked >= 15, `${checked} arguments checked`);
    // A problem with a field of a VM spec names that field, as the UI shows it (unchanged).
    const field = await session.call('createVm', [{ ...goodSpec, name: '' }]);
    assert.deepEqual(field, { ok: false, error: { code: 'invalid-argument', message: 'Name is required.' } });
    // Extra arguments keep their old message.
    const extra = await session.call('getVm', ['vm-1', 'more']);
    assert.deepEqual(extra, { ok: false, error: { code: 'invalid-argument', message: 'The call getVm takes one argument.' } });
  } finally {
    client.close();
    session.close();
  }
});

test('a missing listener is refused by both clients', async () => {
  const { backend } = recordingBackend();
  const { client } = inMemoryWebClient(backend);
  const preload = loadPreload(backend);
  try {
    for (const api of [client, preload.api as unknown as PortholeApi]) {
      await assert.rejects(api.watchVmStats('vm-1', 'nope' as never), { code: 'invalid-argument' });
      await assert.rejects(api.openConsole('vm-1', 'com1', undefined as never), { code: 'invalid-argument' });
    }
  } finally {
    client.close();
  }
});
