// The rig's building blocks that need no QEMU: cpio writer, tar reader, module info and
// dependency order, USB stick pattern, and the serial console helper against a real sh.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import zlib from 'node:zlib';
import { ConsoleClosedError, ConsoleTimeoutError, SerialConsole, type ConsoleTransport } from '../rig/console';
import { buildCpio, buildCpioGz, withParents } from '../rig/cpio';
import { moduleClosure, parseModInfo, readTar, RigBuildError, type ModInfo, type TarEntry } from '../rig/deb';
import { checkStickSector, ensureStickImage, stickSector, SECTOR } from '../rig/sticks';

interface NewcEntry { name: string; mode: number; data: Buffer; rdevMajor: number; rdevMinor: number }

/** An independent newc reader, written from the format description, to check the writer. */
function parseNewc(b: Buffer): NewcEntry[] {
  const out: NewcEntry[] = [];
  let o = 0;
  const field = (i: number) => parseInt(b.toString('ascii', o + 6 + i * 8, o + 14 + i * 8), 16);
  for (;;) {
    assert.equal(b.toString('ascii', o, o + 6), '070701', `magic at ${o}`);
    const mode = field(1); const size = field(6); const rdevMajor = field(9); const rdevMinor = field(10); const nameSize = field(11);
    const name = b.toString('utf8', o + 110, o + 110 + nameSize - 1);
    o += 110 + nameSize;
    o += (4 - (o % 4)) % 4;
    const data = b.subarray(o, o + size);
    o += size;
    o += (4 - (o % 4)) % 4;
    if (name === 'TRAILER!!!') break;
    out.push({ name, mode, data, rdevMajor, rdevMinor });
  }
  assert.equal(o, b.length, 'nothing after the trailer');
  return out;
}

test('cpio: entries round-trip through a newc reader with types, modes and padding', () => {
  const entries = withParents([
    { kind: 'file', path: '/init', data: Buffer.from('#!/bin/sh\n'), mode: 0o755 },
    { kind: 'file', path: 'a/b/odd-length.txt', data: Buffer.from('xyz') },
    { kind: 'symlink', path: 'lib', target: 'usr/lib' },
    { kind: 'chardev', path: 'dev/console', major: 5, minor: 1 },
  ]);
  const parsed = parseNewc(buildCpio(entries));
  assert.deepEqual(parsed.map((e) => e.name), ['init', 'a', 'a/b', 'a/b/odd-length.txt', 'lib', 'dev', 'dev/console']);
  const by = new Map(parsed.map((e) => [e.name, e]));
  assert.equal(by.get('init')!.mode, 0o100755);
  assert.equal(by.get('a')!.mode, 0o040755);
  assert.equal(by.get('a/b/odd-length.txt')!.data.toString(), 'xyz');
  assert.equal(by.get('lib')!.mode & 0o170000, 0o120000);
  assert.equal(by.get('lib')!.data.toString(), 'usr/lib');
  assert.deepEqual([by.get('dev/console')!.mode, by.get('dev/console')!.rdevMajor, by.get('dev/console')!.rdevMinor], [0o020600, 5, 1]);
  assert.deepEqual(buildCpioGz(entries), buildCpioGz(entries), 'the same input gives the same bytes');
  assert.deepEqual(zlib.gunzipSync(buildCpioGz(entries)), buildCpio(entries));
});

test('cpio: rejects paths that climb out and paths given twice', () => {
  assert.throws(() => buildCpio([{ kind: 'dir', path: 'a/../../etc' }]), /bad path/);
  assert.throws(() => buildCpio([{ kind: 'dir', path: 'a' }, { kind: 'dir', path: '/a' }]), /appears twice/);
});

const hasTar = spawnSync('tar', ['--version']).status === 0;

for (const format of ['gnu', 'pax', 'ustar'] as const) {
  test(`tar reader: ${format} archives with long names, odd sizes, links and skipped files`, { skip: hasTar ? false : 'no tar' }, async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rig-tar-'));
    try {
      // ustar holds at most a 155-byte prefix plus a 100-byte name.
      const seg = format === 'ustar' ? 40 : 60;
      const deep = path.join('lib', 'modules', '6.1.0-test', 'kernel', 'drivers', 'x'.repeat(seg), 'y'.repeat(seg));
      fs.mkdirSync(path.join(dir, deep), { recursive: true });
      const longFile = path.join(deep, `${'m'.repeat(format === 'ustar' ? 40 : 120)}.ko`);
      const contents = new Map<string, Buffer>([
        [longFile, Buffer.from('A'.repeat(1000))],
        ['small.txt', Buffer.from('hi')],
        ['exact.bin', Buffer.alloc(1024, 7)],
        ['skipped.bin', Buffer.alloc(3000, 1)],
      ]);
      for (const [f, d] of contents) fs.writeFileSync(path.join(dir, f), d);
      fs.symlinkSync('small.txt', path.join(dir, 'link'));
      const tar = spawn('tar', [`--format=${format}`, '-C', dir, '-cf', '-', '.'], { stdio: ['ignore', 'pipe', 'inherit'] });
      const got = new Map<string, Buffer>();
      const seen: TarEntry[] = [];
      const complete = await readTar(tar.stdout, 'test', (e) => { seen.push(e); return e.name !== 'skipped.bin'; }, (e, d) => got.set(e.name, d));
      assert.equal(complete, true);
      for (const [f, d] of contents) {
        if (f === 'skipped.bin') assert.equal(got.has(f), false);
        else assert.deepEqual(got.get(f), d, f);
      }
      const link = seen.find((e) => e.name === 'link');
      assert.deepEqual([link?.type, link?.linkName], ['symlink', 'small.txt']);
      assert.ok(seen.some((e) => e.name === deep && e.type === 'dir'));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}

test('tar reader: a stream cut inside an entry is an error, one without the end block is incomplete', async () => {
  const header = Buffer.alloc(512);
  header.write('f.txt', 0);
  header.write('0000644\0', 100);
  header.write('00000001750\0', 124); // 1000 bytes
  header[156] = 0x30;
  await assert.rejects(readTar(Readable.from([header, Buffer.alloc(100)]), 'cut', () => true, () => {}), RigBuildError);
  assert.equal(await readTar(Readable.from([header, Buffer.alloc(1024)]), 'open', () => true, () => {}), false);
});

/** A minimal ELF64 relocatable with a .modinfo section, laid out like a kernel module's. */
function fakeModule(fields: string[]): Buffer {
  const modinfo = Buffer.from(fields.map((f) => `${f}\0`).join(''));
  const shstr = Buffer.from('\0.modinfo\0.shstrtab\0');
  const modOff = 64;
  const strOff = modOff + modinfo.length;
  const shoff = Math.ceil((strOff + shstr.length) / 8) * 8;
  const b = Buffer.alloc(shoff + 3 * 64);
  b.writeUInt32BE(0x7f454c46, 0); b[4] = 2; b[5] = 1; b[6] = 1;
  b.writeBigUInt64LE(BigInt(shoff), 0x28);
  b.writeUInt16LE(64, 0x3a); b.writeUInt16LE(3, 0x3c); b.writeUInt16LE(2, 0x3e);
  modinfo.copy(b, modOff); shstr.copy(b, strOff);
  const sect = (i: number, name: number, off: number, size: number) => {
    const o = shoff + i * 64;
    b.writeUInt32LE(name, o); b.writeBigUInt64LE(BigInt(off), o + 0x18); b.writeBigUInt64LE(BigInt(size), o + 0x20);
  };
  sect(1, 1, modOff, modinfo.length);
  sect(2, 10, strOff, shstr.length);
  return b;
}

test('modinfo: name, dependencies and softdep pre are read from .modinfo', () => {
  const info = parseModInfo(fakeModule(['license=GPL', 'depends=usbcore,usb-common', 'softdep=pre: crc32c ehci_pci post: foo', 'name=xhci_pci']), 'file');
  assert.deepEqual(info, { name: 'xhci_pci', depends: ['usbcore', 'usb-common'], softPre: ['crc32c', 'ehci_pci'] });
  assert.deepEqual(parseModInfo(fakeModule(['depends=']), 'fallback'), { name: 'fallback', depends: [], softPre: [] });
  assert.throws(() => parseModInfo(Buffer.from('not an elf file at all, clearly not one'.repeat(3)), 'junk'), /not an ELF64/);
  const bad = fakeModule(['name=x']);
  bad.writeUInt16LE(200, 0x3c);
  assert.throws(() => parseModInfo(bad, 'bad'), /bad section table/);
});

test('module closure: dependencies first, soft deps when present, built-ins skipped, unknowns named', () => {
  const infos = new Map<string, ModInfo>([
    ['vfio_pci', { name: 'vfio_pci', depends: ['vfio_pci_core', 'vfio'], softPre: [] }],
    ['vfio_pci_core', { name: 'vfio_pci_core', depends: ['vfio', 'irqbypass'], softPre: [] }],
    ['vfio', { name: 'vfio', depends: [], softPre: ['vfio-iommu-type1', 'absent_soft'] }],
    ['vfio_iommu_type1', { name: 'vfio_iommu_type1', depends: ['vfio'], softPre: [] }],
    ['irqbypass', { name: 'irqbypass', depends: ['builtin_thing'], softPre: [] }],
    ['loop_a', { name: 'loop_a', depends: ['loop_b'], softPre: [] }],
    ['loop_b', { name: 'loop_b', depends: ['loop_a'], softPre: [] }],
  ]);
  const builtin = new Set(['builtin_thing', 'e1000e']);
  const order = moduleClosure(['vfio-pci'], infos, builtin);
  for (const [before, after] of [['vfio', 'vfio_pci_core'], ['irqbypass', 'vfio_pci_core'], ['vfio_pci_core', 'vfio_pci']]) {
    assert.ok(order.indexOf(before) < order.indexOf(after), `${before} before ${after} in ${order}`);
  }
  assert.ok(order.includes('vfio_iommu_type1'));
  assert.equal(new Set(order).size, order.length);
  assert.deepEqual(moduleClosure(['e1000e'], infos, builtin), []);
  assert.throws(() => moduleClosure(['vfio', 'nope'], infos, builtin), /module nope is neither/);
  assert.deepEqual(moduleClosure(['loop_a'], infos, builtin).sort(), ['loop_a', 'loop_b']);
});

test('stick images: every sector checks out, a changed byte or a wrong index is caught', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rig-stick-'));
  try {
    const file = ensureStickImage(dir, { label: 'unit', sizeMiB: 1, serial: 'X' });
    const img = fs.readFileSync(file);
    assert.equal(img.length, 1048576);
    for (const s of [0, 1, 977, 2047]) assert.equal(checkStickSector('unit', s, img.subarray(s * SECTOR, (s + 1) * SECTOR)), null);
    assert.match(img.toString('ascii', 0, 30), /^PORTHOLE-RIG unit SECTOR 0\n/);
    const bad = Buffer.from(stickSector('unit', 5));
    bad[300] ^= 1;
    assert.match(checkStickSector('unit', 5, bad) ?? '', /sector 5 of unit differs/);
    assert.notEqual(checkStickSector('unit', 6, stickSector('unit', 5)), null);
    assert.notDeepEqual(stickSector('stick0', 0), stickSector('stick1', 0));
    assert.equal(ensureStickImage(dir, { label: 'unit', sizeMiB: 1, serial: 'X' }), file, 'an existing image is reused');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('stick images carry no partition table signature, so the kernel sees a bare disk', () => {
  for (const label of ['stick0', 'stick1']) {
    const s0 = stickSector(label, 0);
    assert.notEqual(s0.readUInt16LE(510), 0xaa55, label);
  }
});

/** sh on pipes, plus a tty-like echo of everything typed, which the markers must survive. */
function shellConsole(opts: { echo: boolean }): { con: SerialConsole; kill: () => void } {
  // Its own process group, so killing it also ends commands it started (sleep 30).
  const sh = spawn('sh', [], { stdio: ['pipe', 'pipe', 'pipe'], detached: true });
  sh.stderr.on('data', () => {});
  const dataListeners: ((b: Buffer) => void)[] = [];
  const closeListeners: ((why: string) => void)[] = [];
  sh.stdout.on('data', (b: Buffer) => dataListeners.forEach((l) => l(b)));
  sh.on('exit', (code) => closeListeners.forEach((l) => l(`sh exited with code ${code}`)));
  const transport: ConsoleTransport = {
    write: (d) => {
      if (opts.echo) dataListeners.forEach((l) => l(Buffer.from(d.replace(/\n/g, '\r\n'))));
      sh.stdin.write(d);
    },
    onData: (l) => dataListeners.push(l),
    onClose: (l) => closeListeners.push(l),
    close: () => sh.stdin.end(),
  };
  return { con: new SerialConsole(transport, { name: 'test sh' }), kill: () => { try { process.kill(-sh.pid!, 'SIGKILL'); } catch { /* already gone */ } } };
}

for (const echo of [false, true]) {
  test(`console helper: output and exit status of commands over sh${echo ? ' with echo' : ''}`, async () => {
    const { con, kill } = shellConsole({ echo });
    try {
      await con.waitForShell(10000, 200);
      assert.deepEqual(await con.run('echo hello'), { output: 'hello', status: 0 });
      assert.deepEqual(await con.run("printf 'a\\nb\\n\\n'; exit_status() { return 3; }; exit_status"), { output: 'a\nb\n', status: 3 });
      assert.deepEqual(await con.run('printf no-newline'), { output: 'no-newline', status: 0 });
      assert.deepEqual(await con.run('echo "@@E fake marker:0@@"; false'), { output: '@@E fake marker:0@@', status: 1 });
      assert.equal(await con.runOk('echo 1 2 3 | wc -w'), '3');
      await assert.rejects(con.runOk('false'), /"false" exited with status 1/);
      await assert.rejects(con.run('echo a\necho b'), /single line/);
    } finally {
      kill();
    }
  });
}

test('console helper: a command that does not finish times out with the output so far', async () => {
  const { con, kill } = shellConsole({ echo: false });
  try {
    await assert.rejects(con.run('echo started; sleep 30', 300), (e: Error) => {
      assert.ok(e instanceof ConsoleTimeoutError);
      assert.match(e.message, /did not finish within 0.3 s/);
      assert.match(e.message, /started/);
      return true;
    });
  } finally {
    kill();
  }
});

test('console helper: the shell going away ends a wait with a clear error', async () => {
  const { con, kill } = shellConsole({ echo: false });
  try {
    await assert.rejects(con.run('exit 4'), (e: Error) => e instanceof ConsoleClosedError && /sh exited with code 4/.test(e.message));
    await assert.rejects(con.waitFor(/never/, 1000), ConsoleClosedError);
    assert.throws(() => con.send('x'), ConsoleClosedError);
  } finally {
    kill();
  }
});

/**
 * A shell on a tty as far as the console helper sees it: it prints the markers of printf lines,
 * a line with an odd number of single quotes opens (or closes) a quote, and Ctrl-C drops the
 * partial line and the open quote. With `resetBeforeSync` the "guest" resets just as the first
 * sync marker comes, and its new shell gets half of that line: it sits inside an open quote.
 */
class FakeTtyShell implements ConsoleTransport {
  private listener: (chunk: Buffer) => void = () => {};
  private line = '';
  private inQuote = false;
  constructor(private resetBeforeSync: boolean) {}
  write(data: string): void {
    for (const ch of data) {
      if (ch === '\x03') {
        this.line = '';
        this.inQuote = false;
      } else if (ch === '\n') {
        this.run(this.line);
        this.line = '';
      } else {
        this.line += ch;
      }
    }
  }
  private run(line: string): void {
    const quotes = line.split("'").length - 1;
    if (this.inQuote || quotes % 2 === 1) {
      if (quotes % 2 === 1) this.inQuote = !this.inQuote;
      return;
    }
    const m = /^printf '(@@[RSBE])%s@@\\n' (\S+)$/.exec(line);
    if (!m) return;
    if (m[1] === '@@S' && this.resetBeforeSync) {
      this.resetBeforeSync = false;
      this.inQuote = true; // the new shell got "@\n' id" of this line
      return;
    }
    const out = `${m[1]}${m[2]}@@\n`;
    setImmediate(() => this.listener(Buffer.from(out)));
  }
  onData(listener: (chunk: Buffer) => void): void { this.listener = listener; }
  onClose(): void {}
  close(): void {}
}

test('console helper: waitForShell gets a shell that a guest reset left inside an open quote out of it', async () => {
  const clean = new SerialConsole(new FakeTtyShell(false), { name: 'tty' });
  await clean.waitForShell(5000, 20);
  const stuck = new SerialConsole(new FakeTtyShell(true), { name: 'tty after a reset' });
  await stuck.waitForShell(5000, 20);
  assert.equal((stuck.transcript().match(/@@S\w+@@/g) ?? []).length, 1, 'the second sync answered after a new probe');
});

test('console helper: waitForShell keeps probing a guest that is still booting', async () => {
  // The "guest" ignores input for a while, then starts a shell: earlier probes are lost.
  const late = spawn('sh', ['-c', 'timeout 1 cat >/dev/null; exec sh'], { stdio: ['pipe', 'pipe', 'ignore'], detached: true });
  try {
    const con = SerialConsole.fromChild(late, { name: 'late sh' });
    await con.waitForShell(15000, 250);
    assert.equal(await con.runOk('echo up'), 'up');
  } finally {
    process.kill(-late.pid!, 'SIGKILL');
  }
});
