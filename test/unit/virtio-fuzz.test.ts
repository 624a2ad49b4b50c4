// Fuzz: a guest driving virtio-blk with random descriptor chains (loops, next indexes past the
// table, nested and malformed indirect tables, addresses outside guest memory and past 2^52,
// huge lengths), discard ranges, random driver-ring indexes and heads, random request headers, and random
// writes to the common configuration, while the backend completes now or later. Nothing may
// throw, no backend request may leave the image, the device ring only ever holds heads of the
// table, and after a reset a well-formed request works again.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { BlockBackend, BlockDoneCallback, BlockReadCallback } from '../../main/vmm/devices/usb/storage/block-backend';
import { VIRTIO_BLK_F, VIRTIO_BLK_S, VIRTIO_BLK_T, VirtioBlk } from '../../main/vmm/devices/virtio/blk';
import { COMMON, VIRTIO_BAR_LAYOUT, VIRTIO_F, VIRTIO_STATUS } from '../../main/vmm/devices/virtio/virtio-pci';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../main/vmm/shared/virtqueue';
import { Prng, fuzzCases } from '../helpers/prng';
import { RAM_BYTES, VirtioTestDriver, writeBlkHeader } from '../helpers/virtio-driver';

const ROUNDS_PER_SEED = fuzzCases(1500);
const IMAGE_BYTES = 256 * 512;
const QUEUE = 16;
const TABLE = 0x10000;

/** An image in memory that records any request outside it; completes now or when flushed by the test. */
class MemoryBackend implements BlockBackend {
  readonly size = IMAGE_BYTES;
  readonly bytes = new Uint8Array(IMAGE_BYTES);
  readonly violations: string[] = [];
  readonly later: (() => void)[] = [];
  deferred = false;

  constructor(readonly readOnly = false) {
    for (let i = 0; i < IMAGE_BYTES; i++) this.bytes[i] = (i * 13) & 0xff;
  }
  private outside(offset: number, length: number): boolean {
    const bad = !Number.isSafeInteger(offset) || offset < 0 || length < 0 || offset + length > this.size;
    if (bad) this.violations.push(`${length} bytes at ${offset}`);
    return bad;
  }
  private run(fn: () => void): void {
    if (this.deferred) this.later.push(fn);
    else fn();
  }
  read(offset: number, length: number, done: BlockReadCallback): void {
    if (this.outside(offset, length)) return done(new RangeError('outside'), null);
    this.run(() => done(null, this.bytes.slice(offset, offset + length)));
  }
  write(offset: number, data: Uint8Array, done: BlockDoneCallback): void {
    if (this.readOnly) this.violations.push('write to a read-only disk');
    if (this.outside(offset, data.length)) return done(new RangeError('outside'));
    const copy = data.slice();
    this.run(() => { this.bytes.set(copy, offset); done(null); });
  }
  flush(done: BlockDoneCallback): void {
    this.run(() => done(null));
  }
  discard(offset: number, length: number, done: BlockDoneCallback): void {
    if (this.readOnly) this.violations.push('discard on a read-only disk');
    if (this.outside(offset, length)) return done(new RangeError('outside'));
    this.run(() => { this.bytes.fill(0, offset, offset + length); done(null); });
  }
  close(): void {}
  drain(rng: Prng): void {
    while (this.later.length > 0) this.later.splice(rng.below(this.later.length), 1)[0]();
  }
}

function randomAddress(rng: Prng): number {
  switch (rng.below(8)) {
    case 0: return RAM_BYTES - rng.below(64);
    case 1: return 2 ** 32 + rng.below(4096);
    case 2: return 2 ** 52 + rng.below(4096) * 16;
    case 3: return TABLE + 16 * rng.below(QUEUE);
    default: return 0x40000 + rng.below(0x40000);
  }
}

function randomLength(rng: Prng): number {
  return rng.pick([0, 1, 15, 16, 17, 512, 513, 1024, 4096, 0x10000, 0xffffffff, 0x80000000, rng.next()]);
}

function start(driver: VirtioTestDriver, rng: Prng): void {
  const discard = rng.below(2) && !(driver.device as VirtioBlk).backend.readOnly ? 1 << VIRTIO_BLK_F.DISCARD : 0;
  const features = (rng.below(2) ? 1 << VIRTIO_F.INDIRECT_DESC : 0) | (rng.below(2) ? 1 << VIRTIO_F.EVENT_IDX : 0) | discard;
  assert.ok(driver.negotiate(features, 1));
  driver.setupQueue(0, QUEUE, TABLE);
  driver.driverOk();
}

function fuzzSeed(seed: number): void {
  const rng = new Prng(seed);
  const backend = new MemoryBackend(seed % 3 === 0);
  const device = new VirtioBlk({ name: 'disk0', backend, serial: 'FUZZ' });
  const driver = new VirtioTestDriver(device);
  const { view } = driver.bus;
  start(driver, rng);
  let resets = 0;
  for (let round = 0; round < ROUNDS_PER_SEED; round++) {
    backend.deferred = rng.below(3) === 0;
    const q = driver.queue(0);
    // A few random descriptors, chained, looping or pointing anywhere.
    for (let n = rng.below(5); n >= 0; n--) {
      const flags = rng.below(8) === 0 ? rng.below(0x10000) : rng.below(8);
      driver.writeDesc(q.desc, rng.below(QUEUE), randomAddress(rng), randomLength(rng), flags, rng.below(QUEUE + 4));
    }
    if (rng.below(3) === 0) {
      // A plausible request: header, data, status, maybe in an indirect table.
      const header = 0x40000 + 16 * rng.below(0x100);
      writeBlkHeader(driver.bus, header, rng.pick([VIRTIO_BLK_T.IN, VIRTIO_BLK_T.OUT, VIRTIO_BLK_T.FLUSH, VIRTIO_BLK_T.GET_ID, VIRTIO_BLK_T.DISCARD, rng.next()]),
        rng.pick([0, 1, 255, 256, rng.next(), rng.next() * 2 ** 20]));
      const table = rng.below(2) ? 0x30000 : q.desc;
      const base = table === q.desc ? rng.below(QUEUE - 3) : 0;
      driver.writeDesc(table, base, header, 16, VIRTQ_DESC_F_NEXT, base + 1);
      driver.writeDesc(table, base + 1, rng.below(4) ? 0x50000 : randomAddress(rng), rng.pick([512, 1024, 20, randomLength(rng)]),
        VIRTQ_DESC_F_NEXT | (rng.below(2) ? VIRTQ_DESC_F_WRITE : 0), base + 2);
      driver.writeDesc(table, base + 2, 0x60000, 1, VIRTQ_DESC_F_WRITE, rng.below(QUEUE));
      if (table !== q.desc) driver.writeDesc(q.desc, 0, table, rng.pick([48, 48, 47, 0, 0x10000, 2 ** 31]), 4 | (rng.below(8) ? 0 : 1), 0);
    }
    switch (rng.below(12)) {
      case 0: // the driver ring index jumps anywhere
        view.setUint16(q.avail + 2, rng.below(0x10000), true);
        driver.notify(0);
        break;
      case 1: // a head outside the table
        driver.submit(0, QUEUE + rng.below(0x10000 - QUEUE));
        break;
      case 2: // common configuration writes at random
        driver.write(rng.below(0x38) & ~1, rng.pick([1, 2, 4]), rng.next() & (rng.below(2) ? 0xffff : 0xffffffff));
        break;
      case 3: // notify a queue that does not exist, or read the ISR
        driver.notify(rng.below(4));
        driver.read(VIRTIO_BAR_LAYOUT.isr, 1);
        break;
      default:
        driver.submit(0, rng.below(QUEUE));
    }
    if (rng.below(2)) backend.drain(rng);
    // Whatever the device put on its ring names a descriptor of the table.
    const used = view.getUint16(q.used + 2, true);
    if (used > 0) assert.ok(driver.used(0, used - 1).id < QUEUE, `seed ${seed} round ${round}: used id out of the table`);
    if ((driver.status & VIRTIO_STATUS.NEEDS_RESET) || rng.below(50) === 0 || !(driver.status & VIRTIO_STATUS.DRIVER_OK)) {
      backend.drain(rng);
      start(driver, rng);
      resets++;
    }
  }
  assert.deepEqual(backend.violations, [], `seed ${seed}`);
  assert.ok(resets > 0, 'the fuzz reached the device error state');

  // After a reset a well-formed read works and returns the image's bytes.
  backend.drain(rng);
  backend.deferred = false;
  start(driver, rng);
  const q = driver.queue(0);
  writeBlkHeader(driver.bus, 0x40000, VIRTIO_BLK_T.IN, 2);
  driver.writeDesc(q.desc, 0, 0x40000, 16, VIRTQ_DESC_F_NEXT, 1);
  driver.writeDesc(q.desc, 1, 0x50000, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2);
  driver.writeDesc(q.desc, 2, 0x60000, 1, VIRTQ_DESC_F_WRITE, 0);
  driver.submit(0, 0);
  assert.equal(driver.bus.ram[0x60000], VIRTIO_BLK_S.OK, `seed ${seed}: status after recovery`);
  assert.ok(Buffer.from(driver.bus.ram.subarray(0x50000, 0x50200)).equals(Buffer.from(backend.bytes.subarray(1024, 1536))));
  assert.equal(driver.read(COMMON.NUM_QUEUES, 2), 1);
}

for (const seed of [1, 2, 3, 0xdecaf]) {
  test(`virtio-blk survives random rings and registers (seed ${seed}, ${ROUNDS_PER_SEED} rounds)`, () => fuzzSeed(seed));
}
