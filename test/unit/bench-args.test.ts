import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeBenchArgs, encodeBenchArgs, parseArgs, venueFor } from '../bench/run';
import { parseRandomIo } from '../bench/disk';

test('npm run bench: no name runs every bench; names pick benches; today\'s options still work', () => {
  assert.deepEqual(parseArgs([]).benches, ['pio', 'mmio', 'serial', 'boot', 'usb-storage', 'usb-passthrough']);
  assert.deepEqual(parseArgs(['--no-serial']).benches, ['pio', 'mmio', 'boot', 'usb-storage', 'usb-passthrough']);
  assert.deepEqual(parseArgs(['usb-passthrough']).benches, ['usb-passthrough']);
  assert.deepEqual(parseArgs(['usb-storage', '--runs', '2']).benches, ['usb-storage']);
  assert.deepEqual(parseArgs(['boot']).benches, ['boot']);
  assert.deepEqual(parseArgs(['serial', 'pio']).benches, ['pio', 'serial']);
  const o = parseArgs(['pio', '--runs', '3', '--batches', '10', '--batch', '50', '--only', 'porthole,qemu', '--check']);
  assert.deepEqual([o.runs, o.batches, o.batch, o.only, o.check], [3, 10, 50, ['porthole', 'qemu'], true]);
  assert.deepEqual(o.optionArgs, ['--runs', '3', '--batches', '10', '--batch', '50', '--only', 'porthole,qemu', '--check']);
  assert.deepEqual(parseArgs(['boot', '--cpus', '1,2,4']).cpus, [1, 2, 4]);
  assert.deepEqual(parseArgs([]).cpus, [1, 2]);
  assert.equal(parseArgs(['serial', '--bytes', '4096']).serialBytes, 4096);
  assert.throws(() => parseArgs(['--bytes', '100']), /multiple of 16/);
  assert.throws(() => parseArgs(['bogus']), /no bench "bogus"/);
  assert.throws(() => parseArgs(['--cpus', '0']), /--cpus/);
  assert.throws(() => parseArgs(['--runs']), /needs a value/);
  assert.throws(() => parseArgs(['--fast']), /unknown option/);
});

test('bench venue: pio and serial follow /dev/kvm, boot goes to the rig, PORTHOLE_BENCH_VENUE forces one', () => {
  assert.equal(venueFor('pio', undefined, true), 'host');
  assert.equal(venueFor('serial', undefined, false), 'rig');
  assert.equal(venueFor('boot', undefined, true), 'rig');
  assert.equal(venueFor('boot', 'host', false), 'host');
  assert.equal(venueFor('usb-storage', undefined, true), 'rig');
  assert.equal(venueFor('usb-passthrough', undefined, true), 'rig');
  assert.equal(venueFor('net', undefined, true), 'rig');
  assert.equal(venueFor('pio', 'rig', true), 'rig');
  assert.throws(() => venueFor('pio', 'l1', true), /host or rig/);
});

test('bench arguments survive the trip on L1\'s kernel command line', () => {
  const args = ['boot', '--cpus', '1,2', '--only', 'porthole, qemu'];
  const text = encodeBenchArgs(args);
  assert.match(text, /^[A-Za-z0-9_-]+$/);
  assert.deepEqual(decodeBenchArgs(text), args);
  assert.throws(() => decodeBenchArgs(Buffer.from('{"a":1}').toString('base64url')), /not a list/);
});

test('stats-stream runs only when named; its loop length follows --batches when given', () => {
  assert.deepEqual(parseArgs(['stats-stream']).benches, ['stats-stream']);
  assert.ok(!parseArgs([]).benches.includes('stats-stream'));
  assert.equal(parseArgs(['stats-stream']).batchesGiven, false);
  const o = parseArgs(['stats-stream', '--batches', '20', '--runs', '3']);
  assert.deepEqual([o.batches, o.batchesGiven, o.runs, o.optionArgs], [20, true, 3, ['--batches', '20', '--runs', '3']]);
  const w = parseArgs(['stats-stream', '--rounds', '12', '--window-ms', '250']);
  assert.deepEqual([w.rounds, w.windowMs, w.optionArgs], [12, 250, ['--rounds', '12', '--window-ms', '250']]);
  assert.deepEqual([parseArgs([]).rounds, parseArgs([]).windowMs], [40, 500]);
  assert.throws(() => parseArgs(['stats-stream', '--window-ms', '50']), /at least 100/);
  assert.throws(() => parseArgs(['stats-stream', '--rounds', '0']), /whole number/);
});

test('disk runs only when named, always in the rig; the random-I/O helper\'s line is read or refused', () => {
  assert.deepEqual(parseArgs(['disk', '--runs', '2']).benches, ['disk']);
  assert.ok(!parseArgs([]).benches.includes('disk'));
  assert.equal(venueFor('disk', undefined, true), 'rig');
  const r = parseRandomIo('noise\nrio dir=read ops=2000 bytes=8192000 ns=4000000000\n', 2000);
  assert.deepEqual([r.ops, r.seconds, r.iops, r.mbPerSec], [2000, 4, 500, 2.048]);
  assert.throws(() => parseRandomIo('/dev/vda: Invalid argument', 2000), /disk-rio failed: \/dev\/vda: Invalid argument/);
  assert.throws(() => parseRandomIo('rio dir=read ops=10 bytes=40960 ns=5', 2000), /disk-rio failed/);
});
