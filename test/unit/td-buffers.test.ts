import assert from 'node:assert/strict';
import { test } from 'node:test';
import { POOLED_TD_BYTES, TD_POOL_BYTES, TdBufferPool, tdBufferCapacity } from '../../main/vmm/devices/usb/xhci/td-buffers';

test('TD buffers come in power-of-two classes from 64 KiB', () => {
  assert.equal(tdBufferCapacity(1), POOLED_TD_BYTES);
  assert.equal(tdBufferCapacity(POOLED_TD_BYTES), POOLED_TD_BYTES);
  assert.equal(tdBufferCapacity(POOLED_TD_BYTES + 1), 2 * POOLED_TD_BYTES);
  assert.equal(tdBufferCapacity(1 << 20), 1 << 20);
});

test('a given-back buffer serves the next TD of its class; a view it did not lend, or one given twice, is ignored', () => {
  const pool = new TdBufferPool();
  const a = pool.take(1 << 20);
  assert.equal(a.length, 1 << 20);
  pool.give(a);
  pool.give(a);
  assert.equal(pool.held, 1 << 20, 'held once');
  pool.give(new Uint8Array(1 << 20));
  assert.equal(pool.held, 1 << 20, 'a stranger is not taken');
  const small = pool.take(100 * 1024);
  assert.notEqual(small.buffer, a.buffer, 'another class');
  assert.equal(small.length, 100 * 1024);
  const b = pool.take(1000 * 1024);
  assert.equal(b.buffer, a.buffer, 'the 1 MiB class serves a 1000 KiB TD');
  assert.equal(b.length, 1000 * 1024);
  assert.equal(pool.held, 0);
});

test('the pool keeps at most TD_POOL_BYTES of free buffers', () => {
  const pool = new TdBufferPool();
  const views = Array.from({ length: TD_POOL_BYTES / (1 << 20) + 3 }, () => pool.take(1 << 20));
  for (const v of views) pool.give(v);
  assert.equal(pool.held, TD_POOL_BYTES);
});
