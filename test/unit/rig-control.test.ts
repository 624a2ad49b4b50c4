// The rig's new host-side pieces that need no QEMU: the device list and its QEMU arguments,
// the control channel's JSON lines over a real UNIX socket, the test-events reporter's
// tree, the ELF reader behind the kit's tools, and the FAT stick image.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { ControlServer, jsonLineSplitter, type ControlMessage } from '../rig/control';
import { ALL_DEVICES, deviceArgs, parseDeviceList } from '../rig/devices';
import { FAT_STICK, ensureFatStickImage, fatStickDigests } from '../rig/fat-stick';
import { elfNeeded } from '../rig/kit-tools';
import reporter = require('../rig/test-events-reporter');
import type { ReportedFile } from '../rig/test-events';

test('--devices: names map to flags, xhci0 comes with its devices, unknown names are refused by name', () => {
  assert.deepEqual(parseDeviceList('usb,iommu'), { usb: true, iommu: true });
  assert.deepEqual(parseDeviceList('fat-stick'), { fatStick: true, usb: true });
  assert.deepEqual(parseDeviceList('all'), ALL_DEVICES);
  assert.throws(() => parseDeviceList('usb,floppy'), /unknown device "floppy"; known: usb, extra-xhci/);
});

test('device arguments: sticks are per-run blockdev copies on fixed ports, and every device is pluggable by id', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'rig-devices-'));
  try {
    const out = deviceArgs({ usb: true, usbAudio: true, e1000: true, iommu: true, pciSlots: true }, path.join(tmp, 'sticks'), tmp, path.join(tmp, 'out'));
    const args = out.qemu.join(' ');
    assert.ok(out.qemu.indexOf('intel-iommu,intremap=on') < out.qemu.findIndex((a) => a.startsWith('qemu-xhci')), 'the IOMMU comes before PCI devices');
    assert.match(args, /-blockdev driver=raw,node-name=stick0-disk,file\.driver=file,file\.filename=\S+stick0-disk\.img/);
    assert.match(args, /usb-storage,bus=xhci0\.0,port=1,drive=stick0-disk,serial=RIGSTICK0,id=stick0/);
    assert.match(args, /-audiodev wav,id=rigwav,path=\S+\/out\/usb-audio\.wav/);
    assert.deepEqual([...out.pluggable.keys()].sort(), ['audio0', 'kbd0', 'nic0', 'serial0', 'stick0']);
    assert.equal(out.pluggable.get('stick0')!.props.port, '1');
    assert.deepEqual(out.kernel, ['intel_iommu=on', 'iommu=pt']);
    assert.match(args, /pcie-root-port,id=hp0/);
    assert.ok(fs.existsSync(out.scratch[0]), 'the stick copy exists');
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test('control channel: JSON lines across chunk borders, requests answered by id, errors as messages, garbage reported', async () => {
  const seen: Record<string, unknown>[] = [];
  const garbage: string[] = [];
  const split = jsonLineSplitter((m) => seen.push(m), (l) => garbage.push(l));
  split(Buffer.from('{"t":"a","n":1}\n{"t":"b",'));
  split(Buffer.from('"n":2}\nnot json\n[1]\n\n'));
  assert.deepEqual(seen, [{ t: 'a', n: 1 }, { t: 'b', n: 2 }]);
  assert.deepEqual(garbage, ['not json', '[1]']);

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rig-ctl-'));
  const sock = path.join(dir, 'c.sock');
  const events: ControlMessage[] = [];
  const server = await ControlServer.listen(sock, async (op, m) => {
    if (op === 'double') return Number(m.x) * 2;
    throw new Error(`unknown request "${op}"`);
  }, (m) => events.push(m), () => {});
  const client = net.connect(sock);
  const replies: Record<string, unknown>[] = [];
  client.on('data', jsonLineSplitter((m) => replies.push(m), () => {}));
  client.write('{"t":"event","v":7}\n{"t":"req","id":1,"op":"double","x":21}\n{"t":"req","id":2,"op":"explode"}\n{"t":"bye"}\n');
  const deadline = Date.now() + 5000;
  while (replies.length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  client.destroy();
  server.close();
  fs.rmSync(dir, { recursive: true, force: true });
  assert.deepEqual(events, [{ t: 'event', v: 7 }]);
  assert.deepEqual(replies.find((r) => r.id === 1), { t: 'reply', id: 1, ok: true, value: 42 });
  assert.deepEqual(replies.find((r) => r.id === 2), { t: 'reply', id: 2, ok: false, error: 'unknown request "explode"' });
  assert.ok(replies.some((r) => r.t === 'bye'), 'bye is answered, so the L1 side can stop reading');
});

test('test-events reporter: one line per finished file, children under their parents, skips and errors kept', async () => {
  const ev = (type: string, data: Record<string, unknown>) => ({ type, data });
  const f = '/p/a.test.js';
  async function* source() {
    yield ev('test:pass', { name: 'plain', nesting: 0, file: f, details: { duration_ms: 1 } });
    yield ev('test:pass', { name: 'kid ok', nesting: 1, file: f, details: { duration_ms: 1 } });
    yield ev('test:fail', { name: 'kid bad', nesting: 1, file: f, details: { duration_ms: 1, error: { failureType: 'testCodeFailure', cause: { message: 'boom', stack: 'Error: boom\n    at x' } } } });
    yield ev('test:fail', { name: 'parent', nesting: 0, file: f, details: { duration_ms: 2, error: { message: '1 subtest failed' } } });
    yield ev('test:pass', { name: 'skipped', nesting: 0, file: f, skip: 'no reason', details: { duration_ms: 0 } });
    yield ev('test:complete', { name: f, nesting: 0, file: f });
    yield ev('test:complete', { name: '/p/b.test.js', nesting: 0, file: '/p/b.test.js' });
  }
  const lines: string[] = [];
  for await (const l of reporter(source())) lines.push(l);
  assert.equal(lines.length, 2);
  const a = JSON.parse(lines[0]) as ReportedFile;
  assert.equal(a.file, f);
  assert.deepEqual(a.tests.map((t) => [t.name, t.ok, t.skip ?? null, t.children.map((c) => c.name)]),
    [['plain', true, null, []], ['parent', false, null, ['kid ok', 'kid bad']], ['skipped', true, 'no reason', []]]);
  assert.deepEqual(a.tests[1].children[1].error, { message: 'boom', stack: 'Error: boom\n    at x' });
  assert.deepEqual(JSON.parse(lines[1]), { file: '/p/b.test.js', tests: [] });
});

test('ELF reader: the DT_NEEDED libraries of this node binary, nothing for a non-ELF file', () => {
  const needed = elfNeeded(fs.readFileSync(process.execPath));
  const ldd = spawnSync('ldd', [process.execPath], { encoding: 'utf8' });
  assert.ok(needed.includes('libc.so.6'), `needed: ${needed.join(' ')}`);
  if (ldd.status === 0) for (const n of needed) assert.match(ldd.stdout, new RegExp(n.replace(/[.+]/g, '\\$&')));
  assert.deepEqual(elfNeeded(Buffer.from('#!/bin/sh\necho hi\n')), []);
  assert.deepEqual(elfNeeded(Buffer.alloc(10)), []);
});

test('FAT stick: mtools reads back every known file with its digest', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rig-fat-'));
  try {
    const img = ensureFatStickImage(dir);
    assert.equal(fs.statSync(img).size, FAT_STICK.sizeMiB * 1048576);
    for (const [name, digest] of Object.entries(fatStickDigests())) {
      const r = spawnSync('mtype', ['-i', img, `::${name}`]);
      assert.equal(r.status, 0, `mtype ${name}: ${r.stderr}`);
      assert.equal(crypto.createHash('sha256').update(r.stdout).digest('hex'), digest, name);
    }
    const label = spawnSync('mlabel', ['-i', img, '-s', '::'], { encoding: 'utf8' });
    assert.match(label.stdout, new RegExp(FAT_STICK.volumeLabel));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
