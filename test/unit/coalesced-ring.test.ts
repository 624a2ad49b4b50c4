import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CoalescedRing, EXIT, RUN } from '../../native/kvm';
import { PioBus, MmioBus, type IoDevice } from '../../main/vmm/devices/bus';
import { ACTION, ExitDispatcher } from '../../main/vmm/machine/exits';

/** Queues a write the way KVM does (struct kvm_coalesced_mmio at `last`, then `last` moves). */
function queue(buffer: SharedArrayBuffer, ringOffset: number, port: number, length: number, value: number): void {
  const header = new Int32Array(buffer, ringOffset, 2);
  const view = new DataView(buffer, ringOffset, 4096);
  const last = header[1];
  const e = 8 + last * 24;
  view.setUint32(e, port, true); view.setUint32(e + 4, 0, true);
  view.setUint32(e + 8, length, true); view.setUint32(e + 12, 1, true);
  view.setUint32(e + 16, value, true);
  Atomics.store(header, 1, (last + 1) % CoalescedRing.CAPACITY);
}

class Log implements IoDevice {
  readonly name = 'log';
  writes: string[] = [];
  read(): number { this.writes.push('read'); return 0; }
  write(offset: number, size: number, value: number): void { this.writes.push(`${offset}/${size}=${value.toString(16)}`); }
}

test('the coalesced ring hands over queued writes in order, across its wrap, and marks them consumed', () => {
  const buffer = new SharedArrayBuffer(3 * 4096);
  const ringOffset = 2 * 4096;
  const ring = new CoalescedRing(buffer, ringOffset);
  assert.equal(CoalescedRing.CAPACITY, 170);
  assert.equal(ring.pending(), false);
  // Start near the end of the ring so the entries wrap to index 0.
  new Int32Array(buffer, ringOffset, 2).set([168, 168]);
  queue(buffer, ringOffset, 0xcf8, 4, 0x80000008);
  queue(buffer, ringOffset, 0xcf8, 4, 0x80000808);
  queue(buffer, ringOffset, 0xcf9, 1, 0x06);
  assert.equal(ring.pending(), true);
  const seen: string[] = [];
  assert.equal(ring.drain((pio, a, len, v) => seen.push(`${pio ? 'io' : 'mem'} ${a.toString(16)}/${len}=${v.toString(16)}`)), 3);
  assert.deepEqual(seen, ['io cf8/4=80000008', 'io cf8/4=80000808', 'io cf9/1=6']);
  assert.equal(ring.pending(), false);
  assert.deepEqual([...new Int32Array(buffer, ringOffset, 2)], [1, 1]);
});

test('queued writes are applied before the next exit, and a queued reset wins over it', () => {
  const pio = new PioBus();
  const dev = new Log();
  pio.register(0xcf8, 8, dev);
  const d = new ExitDispatcher(pio, new MmioBus());
  const run = new Uint8Array(new SharedArrayBuffer(3 * 4096));
  const view = new DataView(run.buffer);
  d.coalesced = new CoalescedRing(run.buffer as SharedArrayBuffer, 2 * 4096);
  // An IN from 0xcfc after a queued 0xcf8 write: the address is written first.
  queue(run.buffer as SharedArrayBuffer, 2 * 4096, 0xcf8, 4, 0x80000000);
  view.setUint32(RUN.EXIT_REASON, EXIT.IO, true);
  run[RUN.IO_DIRECTION] = 0; run[RUN.IO_SIZE] = 4;
  view.setUint16(RUN.IO_PORT, 0xcfc, true); view.setUint32(RUN.IO_COUNT, 1, true); view.setUint32(RUN.IO_DATA_OFFSET, 4096, true);
  assert.equal(d.handle(view, run, 0), ACTION.CONTINUE);
  assert.deepEqual(dev.writes, ['0/4=80000000', 'read']);
  // A queued write that asks for a reset (0xcf9) ends the machine before the later exit runs.
  const resetting: IoDevice = { name: 'rcr', read: () => 0, write: () => d.requestReset() };
  pio.unregister(0xcf9, 1);
  pio.register(0xcf9, 1, resetting);
  queue(run.buffer as SharedArrayBuffer, 2 * 4096, 0xcf9, 1, 0x06);
  dev.writes = [];
  assert.equal(d.handle(view, run, 0), ACTION.RESET);
  assert.deepEqual(dev.writes, []);
  assert.equal(d.drainCoalesced(), ACTION.CONTINUE);
});

test('a queued write whose device settles the queue itself (a nested drain) leaves every write applied once, in order', () => {
  const pio = new PioBus();
  const seen: string[] = [];
  const d = new ExitDispatcher(pio, new MmioBus());
  const buffer = new SharedArrayBuffer(3 * 4096);
  d.coalesced = new CoalescedRing(buffer, 2 * 4096);
  pio.register(0x500, 4, {
    name: 'settling',
    read: () => 0,
    write: (offset, _size, value) => {
      seen.push(`${offset}=${value}`);
      if (value === 1) d.applyQueuedWrites(); // as the xHCI does before it sets a status bit
    },
  });
  for (let v = 1; v <= 4; v++) queue(buffer, 2 * 4096, 0x500, 4, v);
  d.applyQueuedWrites();
  assert.deepEqual(seen, ['0=1', '0=2', '0=3', '0=4']);
  assert.equal(d.coalesced.pending(), false);
});
