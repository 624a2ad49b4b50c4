import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Channel, Doorbell, recordBytes } from '../../main/vmm/shared/channel';
import { ByteRing } from '../../main/vmm/shared/control';
import { payloadOf } from '../helpers/thread-roles';
import { runOnThread } from '../helpers/threads';

type Record = [number, number, number[]];

function receiveAll(channel: Channel): Record[] {
  const out: Record[] = [];
  channel.receive((target, kind, payload) => out.push([target, kind, [...payload]]));
  return out;
}

test('channel delivers records in order with their target, kind and payload', () => {
  const channel = Channel.create(4096);
  assert.equal(channel.send(3, 1, Uint8Array.of(1, 2, 3)), true);
  assert.equal(channel.send(16, 0xffff), true);
  assert.equal(channel.send(0xffff, 7, new Uint8Array(9).fill(0xab)), true);
  assert.deepEqual(receiveAll(channel), [[3, 1, [1, 2, 3]], [16, 0xffff, []], [0xffff, 7, new Array(9).fill(0xab)]]);
  assert.equal(channel.empty, true);
  assert.deepEqual(receiveAll(channel), []);
  assert.throws(() => channel.send(0x10000, 0), RangeError);
  assert.throws(() => channel.send(1, -1), RangeError);
  assert.throws(() => channel.send(1, 1, new Uint8Array(4096)), RangeError);
  assert.throws(() => Channel.create(100), RangeError);
});

test('channel records straddle the end of the ring and the 2^32 wrap of its positions', () => {
  const channel = Channel.create(64);
  // Positions just below the wrap of the 32-bit counters.
  const header = new Int32Array(channel.buffer, 0, 2);
  header[0] = -24; header[1] = -24;
  const sent: Record[] = [];
  for (let seq = 0; seq < 200; seq++) {
    const payload = payloadOf(seq).subarray(0, seq % 40);
    if (!channel.send(seq & 0xff, seq % 5, payload)) {
      assert.deepEqual(receiveAll(channel), sent.splice(0));
      assert.equal(channel.send(seq & 0xff, seq % 5, payload), true, `record ${seq} fits an empty ring`);
    }
    sent.push([seq & 0xff, seq % 5, [...payload]]);
  }
  assert.deepEqual(receiveAll(channel), sent);
  assert.ok(header[0] > 0, 'the head position wrapped past 2^32');
});

test('large channel payloads (copied in two pieces) straddle the end of the ring intact', () => {
  const channel = Channel.create(512);
  const sent: Record[] = [];
  for (let seq = 0; seq < 100; seq++) {
    const payload = Uint8Array.from({ length: 65 + ((seq * 37) % 180) }, (_, i) => (seq * 7 + i) & 0xff);
    if (!channel.send(seq, 1, payload)) {
      assert.deepEqual(receiveAll(channel), sent.splice(0));
      assert.equal(channel.send(seq, 1, payload), true);
    }
    sent.push([seq, 1, [...payload]]);
  }
  assert.deepEqual(receiveAll(channel), sent);
});

test('a full channel refuses a record, writes nothing, and frees room as the consumer takes records', async () => {
  const channel = Channel.create(64);
  let woken = 0;
  channel.onWake = () => woken++;
  assert.equal(channel.send(1, 1, new Uint8Array(20)), true); // 32 bytes of ring
  assert.equal(channel.send(2, 1, new Uint8Array(20)), true); // 64: full
  assert.equal(woken, 1, 'only the empty→non-empty send wakes the consumer');
  assert.equal(channel.used, 64);
  assert.equal(channel.send(3, 1), false);
  assert.equal(channel.used, 64, 'a refused record leaves the ring as it was');
  let roomAt = '';
  const room = channel.waitForSpace(0).then(() => { roomAt = 'room'; });
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(roomAt, '', 'no room yet');
  const taken: number[] = [];
  channel.receive((target) => taken.push(target));
  await room;
  assert.deepEqual(taken, [1, 2]);
  assert.equal(channel.send(3, 1), true);
  assert.equal(woken, 2);
  assert.equal(recordBytes(0), 8);
  assert.equal(recordBytes(20), 32);
});

test('a consumer waiting for data is woken by a send', async () => {
  const channel = Channel.create(256);
  const arrived = channel.waitForData().then(() => receiveAll(channel));
  await new Promise((resolve) => setImmediate(resolve));
  channel.send(5, 6, Uint8Array.of(7));
  assert.deepEqual(await arrived, [[5, 6, [7]]]);
});

test('no record is lost or reordered between a producer and a consumer on two other threads', async () => {
  const channel = Channel.create(256); // small, so the producer meets a full ring often
  const count = 50000;
  const [produced, consumed] = await Promise.all([
    runOnThread<{ fullTimes: number }>({ role: 'channel-producer', buffer: channel.buffer, count }),
    runOnThread<{ errors: string[] }>({ role: 'channel-consumer', buffer: channel.buffer, count }),
  ]);
  assert.deepEqual(consumed.errors, []);
  assert.ok(produced.fullTimes > 0, 'the producer was held back by a full channel at least once');
  assert.equal(channel.empty, true);
});

test('a byte ring with a doorbell wakes a consumer on another thread without polling, losing nothing', async () => {
  const ring = new ByteRing(new SharedArrayBuffer(8 + 1024));
  const doorbell = new Doorbell();
  const count = 200000;
  const producer = runOnThread<{ fullTimes: number }>({ role: 'ring-producer', buffer: ring.buffer, doorbell: doorbell.buffer, count });
  let received = 0;
  let wrong = -1;
  while (received < count) {
    const seen = doorbell.value;
    // Drain, then look again after our position is stored (the re-check), then sleep.
    while (ring.used > 0) {
      for (const b of ring.drain()) {
        if (b !== (received & 0xff) && wrong < 0) wrong = received;
        received++;
      }
    }
    if (received < count) await doorbell.wait(seen);
  }
  const { fullTimes } = await producer;
  assert.equal(wrong, -1, `byte ${wrong} arrived out of order`);
  assert.equal(received, count);
  assert.ok(fullTimes >= 0);
});
