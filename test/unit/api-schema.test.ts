// The contract's validators, wire helpers and error shapes (no server, no KVM).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  ApiError, defaultVmSpec, LIMITS, toApiError, type VmSpec,
} from '../../main/api/contract';
import {
  comIndex, fieldLabel, parseConsoleInput, parseConsolePort, parseFileChoice, parseSubscriptionId, parseVmId, parseVmSpec,
  serialForwardProblem, vmSpecProblems,
} from '../../main/api/schema';
import { base64ToBytes, bytesToBase64, ConsoleCursor } from '../../main/api/wire';
import { ConfigError, parseSerialBackend } from '../../main/vmm/config';

/** Small deterministic PRNG (mulberry32) so fuzz failures reproduce. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const good: VmSpec = {
  name: 'Debian', memoryMiB: 1024, cpus: 2,
  boot: { kind: 'linux', kernel: '/boot/vmlinuz', initrd: '', cmdline: 'console=ttyS0' },
  serial: ['ui', 'pty', 'tcp-listen:4555', 'none'],
  debugExit: false,
};

test('a good spec has no problems and parses to an equal copy', () => {
  assert.deepEqual(vmSpecProblems(good), []);
  const parsed = parseVmSpec(good);
  assert.deepEqual(parsed, good);
  assert.notEqual(parsed.serial, good.serial, 'a copy, not the same arrays');
  assert.deepEqual(vmSpecProblems(defaultVmSpec()), [], 'the dialog default is valid');
  for (const boot of [
    { kind: 'firmware', firmware: '', disks: ['/vm/disk.img'], cdrom: '/iso/debian.iso', optionRoms: [] },
    { kind: 'flat', path: '/x/echo.bin' },
  ] as const) {
    assert.deepEqual(vmSpecProblems({ ...good, boot }), [], boot.kind);
  }
});

test('every field problem names its field and is a sentence', () => {
  const bad = {
    name: '', memoryMiB: 1.5, cpus: 65,
    boot: { kind: 'firmware', firmware: 'rel/bios.bin', disks: ['/ok.img', 7], cdrom: '', optionRoms: 'nope' },
    serial: ['ui', 'stdio', 'tcp:4555', 'file:relative'],
    debugExit: 'yes',
    surprise: 1,
  };
  const problems = vmSpecProblems(bad);
  assert.deepEqual(problems.map((p) => p.field), [
    'surprise', 'name', 'memoryMiB', 'cpus', 'boot.firmware', 'boot.disks.1', 'boot.optionRoms', 'serial.1', 'serial.2', 'serial.3', 'debugExit',
  ]);
  for (const p of problems) assert.match(p.message, /^["A-Za-z].*\.$/, p.message);
  assert.equal(problems.find((p) => p.field === 'boot.disks.1')?.message, 'Disk image 2 must be a file path.');
  assert.equal(problems.find((p) => p.field === 'serial.1')?.message.startsWith('COM2 is not understood'), true);
  assert.throws(() => parseVmSpec(bad), (e: unknown) => e instanceof ApiError && e.code === 'invalid-argument' && e.message === '"surprise" is not a setting Porthole knows.');
});

test('names, memory and cpus are range-checked', () => {
  const check = (patch: Partial<Record<keyof VmSpec, unknown>>) => vmSpecProblems({ ...good, ...patch }).map((p) => p.field);
  assert.deepEqual(check({ name: 'x'.repeat(LIMITS.nameMaxLength) }), []);
  assert.deepEqual(check({ name: 'x'.repeat(LIMITS.nameMaxLength + 1) }), ['name']);
  assert.deepEqual(check({ name: 'a\nb' }), ['name']);
  assert.deepEqual(check({ name: '   ' }), ['name']);
  assert.deepEqual(check({ memoryMiB: LIMITS.memoryMiBMin }), []);
  assert.deepEqual(check({ memoryMiB: LIMITS.memoryMiBMin - 1 }), ['memoryMiB']);
  assert.deepEqual(check({ memoryMiB: NaN }), ['memoryMiB']);
  assert.deepEqual(check({ memoryMiB: '512' }), ['memoryMiB']);
  assert.deepEqual(check({ cpus: 64 }), []);
  assert.deepEqual(check({ cpus: 0 }), ['cpus']);
  assert.deepEqual(check({ serial: ['ui', 'ui', 'ui'] }), ['serial']);
  assert.deepEqual(check({ boot: { kind: 'linux', kernel: '/k', initrd: '', cmdline: 'a\nb' } }), ['boot.cmdline']);
  assert.deepEqual(check({ boot: { kind: 'linux', kernel: '', initrd: '', cmdline: '' } }), ['boot.kernel']);
  assert.deepEqual(check({ boot: { kind: 'firmware', firmware: '', disks: Array(LIMITS.disksMax + 1).fill('/d'), cdrom: '', optionRoms: [] } }), ['boot.disks']);
  assert.deepEqual(check({ boot: null }), ['boot']);
  assert.deepEqual(vmSpecProblems([]), [{ field: '', message: 'The VM settings must be an object.' }]);
});

test('every serial forward the schema accepts (besides ui and none) is one the VMM parser accepts', () => {
  const samples = [
    'ui', 'none', 'pty', 'tcp-listen:4555', 'tcp-listen:0.0.0.0:4555', 'tcp:127.0.0.1:4555', 'tcp:host:1', 'unix:/tmp/s', 'unix-listen:/tmp/s',
    'file:/tmp/com1.log', '/dev/ttyUSB0', '/dev/', 'stdio', 'tcp:4555', 'tcp-listen:0', 'tcp-listen:65536', 'tcp-listen:x', 'file:', 'file:rel',
    'unix:', ' pty', 'pty ', '', 'off', 'device:/dev/ttyS0', 'bogus:1', 'tcp-listen:', 'a\nb',
  ];
  for (const s of samples) {
    const schemaOk = serialForwardProblem(s) === null;
    if (s === 'ui' || s === 'none') {
      assert.ok(schemaOk);
      continue;
    }
    let vmmOk = true;
    try {
      parseSerialBackend(s);
    } catch (e) {
      assert.ok(e instanceof ConfigError);
      vmmOk = false;
    }
    if (schemaOk) assert.ok(vmmOk, `schema accepts "${s}" but the VMM does not`);
  }
  assert.equal(serialForwardProblem(42), 'must be text such as "ui", "pty" or "tcp-listen:4555"');
});

test('ids, ports, console input, file choices and subscription ids', () => {
  assert.equal(parseVmId('a1b2-c3'), 'a1b2-c3');
  for (const bad of ['', '-a', 'A', '../x', 'a/b', 'a'.repeat(65), 'a.json', 5, null]) {
    assert.throws(() => parseVmId(bad), { code: 'invalid-argument' }, String(bad));
  }
  assert.equal(parseConsolePort('debugcon'), 'debugcon');
  assert.throws(() => parseConsolePort('com5'), { code: 'invalid-argument' });
  assert.equal(comIndex('com1'), 0);
  assert.equal(comIndex('com4'), 3);
  assert.equal(comIndex('debugcon'), null);
  assert.equal(parseConsoleInput('abc'), 'abc');
  assert.throws(() => parseConsoleInput(new Uint8Array(2)), { code: 'invalid-argument' });
  assert.throws(() => parseConsoleInput('x'.repeat(LIMITS.consoleInputMaxBytes + 1)), { code: 'invalid-argument' });
  assert.deepEqual(parseFileChoice({ purpose: 'cdrom' }), { purpose: 'cdrom', title: undefined });
  assert.throws(() => parseFileChoice({ purpose: 'cdrom', filter: '*' }), { code: 'invalid-argument' });
  assert.throws(() => parseFileChoice('disk'), { code: 'invalid-argument' });
  assert.equal(parseSubscriptionId('c12'), 'c12');
  assert.throws(() => parseSubscriptionId('a b'), { code: 'invalid-argument' });
  assert.equal(fieldLabel('boot.optionRoms.0'), 'Option ROM 1');
  assert.equal(fieldLabel('serial.3'), 'COM4');
});

test('toApiError keeps typed errors and hides everything else behind a sentence', () => {
  const typed = new ApiError('not-found', 'Gone.');
  assert.equal(toApiError(typed), typed);
  const shaped = toApiError({ code: 'timeout', message: 'Slow.' });
  assert.ok(shaped instanceof ApiError);
  assert.deepEqual(shaped.toJSON(), { code: 'timeout', message: 'Slow.' });
  for (const other of [new Error('boom\n    at x'), 'text', null, { code: 'made-up', message: 'x' }]) {
    const e = toApiError(other);
    assert.equal(e.code, 'internal');
    assert.ok(!e.message.includes('boom'));
  }
});

test('base64 round-trips every length and rejects what is not base64', () => {
  const rand = prng(7);
  for (let len = 0; len < 300; len++) {
    const bytes = Uint8Array.from({ length: len }, () => Math.floor(rand() * 256));
    const text = bytesToBase64(bytes);
    assert.equal(text, Buffer.from(bytes).toString('base64'));
    assert.deepEqual(base64ToBytes(text), bytes);
  }
  for (const bad of ['a', 'ab=c', '====', 'ab c', 'é===', 'a=bc', 'ab==ab==']) assert.equal(base64ToBytes(bad), null, bad);
});

test('a console cursor drops bytes already delivered and accepts gaps', () => {
  const c = new ConsoleCursor();
  const b = (s: string) => new TextEncoder().encode(s);
  const text = (u: Uint8Array | null) => (u ? new TextDecoder().decode(u) : null);
  assert.equal(text(c.accept(10, b('abc'))), 'abc');       // the scroll-back may start anywhere
  assert.equal(text(c.accept(13, b('de'))), 'de');
  assert.equal(text(c.accept(10, b('abcdefg'))), 'fg');    // re-sent scroll-back after a reconnect
  assert.equal(c.accept(12, b('cdefg')), null);
  assert.equal(text(c.accept(30, b('z'))), 'z');           // bytes lost while away
  assert.equal(c.accept(31, new Uint8Array(0)), null);
});

test('fuzz: validators never throw anything but ApiError, and whatever parses is valid', () => {
  const rand = prng(1234);
  const pick = <T>(xs: T[]): T => xs[Math.floor(rand() * xs.length)];
  const values = (): unknown => pick<unknown>([
    undefined, null, 0, -1, 1.5, 2 ** 53, NaN, '', 'ui', '/x', 'tcp-listen:80', 'a'.repeat(5000), true, [], {}, ['ui'],
    { kind: 'flat', path: '/x' }, { kind: 'linux', kernel: '/k', initrd: '', cmdline: '' }, { kind: 'firmware' }, '__proto__',
    { controller: 'xhci', devices: [] }, { kind: 'storage', path: '/s', port: 2 }, { kind: 'keyboard', port: 1 }, { kind: 'tablet', port: 7 },
  ]);
  const keys = ['name', 'memoryMiB', 'cpus', 'boot', 'serial', 'debugExit', 'constructor', 'extra', 'usb'];
  for (let i = 0; i < 3000; i++) {
    const spec: Record<string, unknown> = { ...good };
    for (let j = Math.floor(rand() * 4); j > 0; j--) spec[pick(keys)] = values();
    if (rand() < 0.2) spec.serial = [values(), values(), values(), values()];
    if (rand() < 0.2) spec.usb = { controller: pick<unknown>(['xhci', 'none', values()]), devices: [values(), values(), values()].slice(0, Math.floor(rand() * 4)) };
    const problems = vmSpecProblems(spec);
    try {
      const parsed = parseVmSpec(spec);
      assert.equal(problems.length, 0);
      assert.deepEqual(vmSpecProblems(parsed), []);
    } catch (e) {
      assert.ok(e instanceof ApiError && e.code === 'invalid-argument', String(e));
      assert.ok(problems.length > 0);
    }
    for (const f of [parseVmId, parseConsolePort, parseConsoleInput, parseFileChoice, parseSubscriptionId]) {
      try {
        f(values());
      } catch (e) {
        assert.ok(e instanceof ApiError, String(e));
      }
    }
  }
});
