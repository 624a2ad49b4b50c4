import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { guest, kvmSkipReason, repoRoot } from '../helpers/vm';

const bin = path.join(repoRoot, 'bin', 'porthole');
const skip = kvmSkipReason() ?? false;
const SETPRIV = fs.existsSync('/usr/bin/setpriv') ? '/usr/bin/setpriv' : 'setpriv';

function porthole(args: string[], opts: { asNobody?: boolean } = {}) {
  // util-linux's setpriv needs no PAM set-up, so this also runs in the rig's bare L1 (whose
  // PATH finds busybox's smaller setpriv first).
  const cmd = opts.asNobody ? SETPRIV : process.execPath;
  const argv = opts.asNobody ? ['--reuid=65534', '--regid=65534', '--clear-groups', '--', process.execPath, bin, ...args] : [bin, ...args];
  return spawnSync(cmd, argv, { encoding: 'utf8', timeout: 60000 });
}

test('porthole run prints the guest console and exit counts, and exits with the guest status', { skip }, () => {
  const r = porthole(['run', '--flat', guest('hello'), '--debug-exit', '--debugcon', 'stdio', '--stats']);
  assert.equal(r.stdout, 'hello from the guest\n');
  assert.equal(r.status, 0x21);
  assert.match(r.stderr, /VM exits by reason:\n\s+io\s+22/);
  assert.match(r.stderr, /debugcon\s+0\s+21/);
});

test('porthole run with a config file', { skip }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-cli-'));
  const file = path.join(dir, 'vm.json');
  fs.writeFileSync(file, JSON.stringify({ version: 1, name: 't', memory: 64, debugcon: `file:${dir}/log`, debugExit: true }));
  const r = porthole(['run', '--config', file, '--flat', guest('hello')]);
  assert.equal(r.status, 0x21, r.stderr);
  assert.equal(fs.readFileSync(path.join(dir, 'log'), 'utf8'), 'hello from the guest\n');
  fs.writeFileSync(file, '{ "version": 1, ');
  const bad = porthole(['run', '--config', file]);
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /^porthole: config file .*vm.json is not valid JSON: /);
  assert.doesNotMatch(bad.stderr, /\n\s+at /);
});

test('a user without /dev/kvm access gets one line naming the fix', {
  skip: skip || (process.getuid?.() !== 0 ? 'needs root to run as another user' : false) ||
    (spawnSync(SETPRIV, ['--help']).error ? 'setpriv is not installed' : false),
}, () => {
  const r = porthole(['run', '--flat', guest('hello')], { asNobody: true });
  if (r.stderr.includes('Cannot find module') || r.stderr.includes('EACCES: permission denied, open')) {
    return; // the checkout itself is not readable by nobody: nothing to learn here
  }
  assert.equal(r.status, 1);
  assert.equal(r.stderr, 'porthole: cannot open /dev/kvm: EACCES (permission denied); add yourself to the kvm group (sudo usermod -aG kvm $USER) and log in again\n');
});
