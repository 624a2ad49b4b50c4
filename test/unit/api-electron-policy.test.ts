// The Electron app's pure decisions (sender checks, navigation, permissions, quit
// prompt, dialogs, exit codes) and the shape of the compiled preload. No Electron binary.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import type { VmSummary } from '../../main/api/contract';
import { IPC_CALL_CHANNEL, IPC_EVENT_CHANNEL, IPC_METHODS_CHANNEL } from '../../main/api/wire';
import {
  APP_CSP, APP_INDEX_URL, appWebPreferences, isTrustedSender, navigationDecision, openDialogOptions, permissionDecision, quitPrompt,
  utilityExitReason, windowOpenDecision,
} from '../../main/app/policy';
import { repoRoot } from '../helpers/vm';

test('IPC is served only to our window\'s main frame showing the app', () => {
  const trusted = new Set([7]);
  const base = { webContentsId: 7, frameUrl: APP_INDEX_URL, isMainFrame: true };
  assert.equal(isTrustedSender(base, trusted), true);
  assert.equal(isTrustedSender({ ...base, frameUrl: 'porthole://app/#/vm/1' }, trusted), true);
  assert.equal(isTrustedSender({ ...base, webContentsId: 8 }, trusted), false, 'another window');
  assert.equal(isTrustedSender({ ...base, isMainFrame: false }, trusted), false, 'an iframe');
  assert.equal(isTrustedSender({ ...base, frameUrl: null }, trusted), false, 'a destroyed frame');
  for (const frameUrl of ['https://evil.example/', 'file:///work/main/dist/renderer/index.html', 'porthole://evil/index.html', 'porthole://app.evil/', 'about:blank', 'data:text/html,x']) {
    assert.equal(isTrustedSender({ ...base, frameUrl }, trusted), false, frameUrl);
  }
});

test('navigation stays in the app; new windows never open, web links go to the browser', () => {
  assert.equal(navigationDecision('porthole://app/index.html#/vms'), 'allow');
  for (const u of ['https://example.com/', 'file:///etc/passwd', 'porthole://other/', 'javascript:alert(1)', 'not a url']) {
    assert.equal(navigationDecision(u), 'deny', u);
  }
  assert.equal(windowOpenDecision('https://github.com/'), 'open-externally');
  assert.equal(windowOpenDecision('http://example.com/'), 'open-externally');
  for (const u of ['file:///etc/passwd', 'porthole://app/index.html', 'javascript:alert(1)', 'smb://host/share', '']) {
    assert.equal(windowOpenDecision(u), 'deny', u);
  }
  assert.equal(permissionDecision('clipboard-sanitized-write', APP_INDEX_URL), true);
  for (const p of ['media', 'geolocation', 'notifications', 'clipboard-read', 'usb', 'serial', 'hid', 'openExternal']) {
    assert.equal(permissionDecision(p, APP_INDEX_URL), false, p);
  }
  assert.equal(permissionDecision('clipboard-sanitized-write', 'https://evil.example/'), false);
  assert.match(APP_CSP, /default-src 'none'/);
  assert.match(APP_CSP, /connect-src 'self'(;|$)/, 'the app connects to nothing but itself');
});

function vm(name: string, state: VmSummary['state']): VmSummary {
  return {
    id: name, state, createdAt: '', updatedAt: '', endpoints: {}, lastExit: null,
    spec: { name, memoryMiB: 16, cpus: 1, boot: { kind: 'flat', path: '/x' }, serial: ['ui', 'none', 'none', 'none'], debugExit: false },
  };
}

test('quitting asks only when VMs run, names them, and maps each button to an action', () => {
  assert.equal(quitPrompt([]), null);
  const one = quitPrompt([vm('Debian', 'running')])!;
  assert.equal(one.message, '"Debian" is still running.');
  assert.deepEqual(one.actions, ['stop', 'force-off', 'cancel']);
  assert.equal(one.buttons.length, one.actions.length);
  assert.equal(one.actions[one.cancelId], 'cancel');
  assert.equal(one.actions[one.defaultId], 'stop');
  const many = quitPrompt(Array.from({ length: 7 }, (_, i) => vm(`vm${i}`, i % 2 ? 'paused' : 'running')))!;
  assert.equal(many.message, '7 VMs are still running.');
  assert.match(many.detail, /vm1 \(paused\)/);
  assert.match(many.detail, /and 2 more/);
});

test('file dialogs: a title and filters per purpose, one existing file', () => {
  const iso = openDialogOptions({ purpose: 'cdrom' });
  assert.equal(iso.title, 'Choose an ISO image');
  assert.deepEqual(iso.filters[0].extensions, ['iso']);
  assert.ok(iso.properties.includes('openFile'));
  assert.ok(!(iso.properties as string[]).includes('multiSelections'));
  assert.deepEqual(openDialogOptions({ purpose: 'kernel' }).filters, [], 'kernels have no usual extension');
  assert.equal(openDialogOptions({ purpose: 'disk', title: 'Pick' }).title, 'Pick');
});

test('utility process exit codes 1..31 are the signal that killed it', () => {
  assert.deepEqual(utilityExitReason(9, os.constants.signals), { code: null, signal: 'SIGKILL' });
  assert.deepEqual(utilityExitReason(11, os.constants.signals), { code: null, signal: 'SIGSEGV' });
  assert.deepEqual(utilityExitReason(0, os.constants.signals), { code: 0, signal: null });
  assert.deepEqual(utilityExitReason(70, os.constants.signals), { code: 70, signal: null });
});

test('the compiled preload needs only "electron", exposes only window.porthole, and uses the wire channels', () => {
  const js = fs.readFileSync(path.join(repoRoot, 'dist', 'preload', 'preload.js'), 'utf8');
  const requires = [...js.matchAll(/require\(["']([^"']+)["']\)/g)].map((m) => m[1]);
  assert.deepEqual(requires, ['electron'], 'sandboxed preloads cannot require anything else');
  const exposed = [...js.matchAll(/exposeInMainWorld\(["']([^"']+)["']/g)].map((m) => m[1]);
  assert.deepEqual(exposed, ['porthole']);
  assert.ok(js.includes(`'${IPC_CALL_CHANNEL}'`) || js.includes(`"${IPC_CALL_CHANNEL}"`));
  assert.ok(js.includes(`'${IPC_EVENT_CHANNEL}'`) || js.includes(`"${IPC_EVENT_CHANNEL}"`));
  assert.ok(js.includes(`'${IPC_METHODS_CHANNEL}'`) || js.includes(`"${IPC_METHODS_CHANNEL}"`));
});

test('the renderer-importable API files import no Node or Electron modules', () => {
  for (const file of ['contract.ts', 'schema.ts', 'methods.ts', 'wire.ts', 'web-client.ts', 'usb-input.ts', 'usb-rule.ts', 'nic-choices.ts', 'media-input.ts', 'pci-input.ts']) {
    const src = fs.readFileSync(path.join(repoRoot, 'main', 'api', file), 'utf8');
    const imports = [...src.matchAll(/from\s+'([^']+)'/g)].map((m) => m[1]);
    for (const i of imports) assert.match(i, /^\.\/(contract|schema|methods|wire|usb-input|usb-rule|nic-choices|media-input|pci-input)$/, `${file} imports ${i}`);
    assert.ok(!/\brequire\(/.test(src), `${file} uses require`);
  }
});

test('the Electron window is created isolated and sandboxed', () => {
  const prefs = appWebPreferences('/p/preload.js');
  assert.equal(prefs.preload, '/p/preload.js');
  assert.equal(prefs.contextIsolation, true);
  assert.equal(prefs.sandbox, true);
  assert.equal(prefs.nodeIntegration, false);
  assert.equal(prefs.nodeIntegrationInWorker, false);
  assert.equal(prefs.nodeIntegrationInSubFrames, false);
  assert.equal(prefs.webviewTag, false);
  assert.equal(prefs.webSecurity, true);
  assert.equal(prefs.allowRunningInsecureContent, false);
});
