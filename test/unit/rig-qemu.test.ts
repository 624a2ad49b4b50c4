// Which QEMU runs the rig's L1, and on which TCG threading: the parts that need no download.
// The fetch from bookworm-backports itself runs in every rig run on Debian 12 (CI's among them).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { defaultTcgFor, osCodename, parseQemuVersion, rigQemu } from '../rig/rig-qemu';

test('the version is read from what qemu --version prints', () => {
  assert.equal(parseQemuVersion('QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright'), '10.0.2');
  assert.equal(parseQemuVersion('QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n'), '7.2.19');
  assert.equal(parseQemuVersion('QEMU emulator version 9.1\n'), '9.1');
  assert.equal(parseQemuVersion('qemu-img version 7.2.19\n'), null);
  assert.equal(parseQemuVersion(''), null);
});

test('L1 runs on multi-threaded TCG from QEMU 10 on, single-threaded before', () => {
  assert.equal(defaultTcgFor('7.2.19'), 'single');
  assert.equal(defaultTcgFor('9.2.0'), 'single');
  assert.equal(defaultTcgFor('10.0.2'), 'multi');
  assert.equal(defaultTcgFor('11.1'), 'multi');
});

test('the Debian release is read from os-release, quoted or not', () => {
  assert.equal(osCodename('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\n'), 'bookworm');
  assert.equal(osCodename('NAME="Ubuntu"\nVERSION_CODENAME="noble"\n'), 'noble');
  assert.equal(osCodename('NAME="Arch Linux"\nID=arch\n'), null);
});

test('PORTHOLE_RIG_QEMU picks the binary by hand, and a broken pick is a sentence, not a stack', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rig-qemu-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const saved = process.env.PORTHOLE_RIG_QEMU;
  t.after(() => { if (saved === undefined) delete process.env.PORTHOLE_RIG_QEMU; else process.env.PORTHOLE_RIG_QEMU = saved; });
  const fake = (name: string, body: string) => {
    const p = path.join(dir, name);
    fs.writeFileSync(p, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
    return p;
  };

  process.env.PORTHOLE_RIG_QEMU = fake('q10', 'echo "QEMU emulator version 10.0.2 (test)"');
  const q10 = rigQemu();
  assert.equal(q10.version, '10.0.2');
  assert.equal(q10.defaultTcg, 'multi');
  assert.equal(q10.origin, 'PORTHOLE_RIG_QEMU');
  assert.deepEqual(q10.env, {});

  // Not remembered: another pick in the same process is probed again.
  const logged: string[] = [];
  process.env.PORTHOLE_RIG_QEMU = fake('q72', 'echo "QEMU emulator version 7.2.19 (test)"');
  const q72 = rigQemu((l) => logged.push(l));
  assert.equal(q72.defaultTcg, 'single');
  assert.match(logged.join('\n'), /QEMU 7\.2\.19 .*single-threaded TCG by default/);

  process.env.PORTHOLE_RIG_QEMU = fake('broken', 'echo "error while loading shared libraries: libfoo.so.1" >&2; exit 127');
  assert.throws(() => rigQemu(), /^Error: PORTHOLE_RIG_QEMU: .*broken --version failed: error while loading shared libraries: libfoo\.so\.1$/);

  process.env.PORTHOLE_RIG_QEMU = path.join(dir, 'missing');
  assert.throws(() => rigQemu(), /^Error: PORTHOLE_RIG_QEMU: .*missing does not run: ENOENT$/);
});
