// Fuzz: a guest driving virtio-net with random descriptor chains on both queues (loops, next
// indexes past the table, addresses outside guest memory and past 2^52, huge lengths, readable
// receive buffers, random headers), random driver-ring indexes and common-configuration writes,
// while the backend sends frames of random sizes and returns credits at random. Nothing may
// throw; every frame the device sends is within Ethernet's limits; the device ring only names
// descriptors of the table; every frame from the host is acknowledged once it left the
// device's queue; and after a reset a frame goes through both ways again.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { NicLink } from '../../main/vmm/devices/net/nic-link';
import { VIRTIO_NET_F, VIRTIO_NET_HDR_BYTES, VIRTIO_NET_RX, VIRTIO_NET_TX, VirtioNet } from '../../main/vmm/devices/virtio/net';
import { VIRTIO_BAR_LAYOUT, VIRTIO_F, VIRTIO_STATUS } from '../../main/vmm/devices/virtio/virtio-pci';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../main/vmm/shared/virtqueue';
import { decodeNetCount, decodeNetRecord, encodeNetCount, NET_KIND, NET_MAX_FRAME, NET_MIN_FRAME } from '../../main/vmm/shared/net-messages';
import { Prng, fuzzCases } from '../helpers/prng';
import { RAM_BYTES, VirtioTestDriver } from '../helpers/virtio-driver';

const ROUNDS_PER_SEED = fuzzCases(1500);
const QUEUE = 16;
const RXQ = 0x10000;
const TXQ = 0x20000;

function randomAddress(rng: Prng): number {
  switch (rng.below(8)) {
    case 0: return RAM_BYTES - rng.below(64);
    case 1: return 2 ** 32 + rng.below(4096);
    case 2: return 2 ** 52 + rng.below(4096) * 16;
    case 3: return RXQ + 16 * rng.below(QUEUE);
    default: return 0x40000 + rng.below(0x80000);
  }
}

function randomLength(rng: Prng): number {
  return rng.pick([0, 1, 11, 12, 13, 26, 60, 1514, 1526, 4096, 0x10000, 0x10012, 0xffffffff, 0x80000000, rng.next()]);
}

function fuzzSeed(seed: number): void {
  const rng = new Prng(seed);
  const violations: string[] = [];
  let sentToDevice = 0;
  let credited = 0;
  let txFrames = 0;
  let full = false;
  const timers: (() => void)[] = [];
  const link = new NicLink(0, {
    send: (kind, payload) => {
      if (full) return false;
      const r = decodeNetRecord(payload);
      if (!r || r.nic !== 0) violations.push('a record without the NIC index');
      else if (kind === NET_KIND.RX_CREDIT) credited += decodeNetCount(r.body);
      else if (kind === NET_KIND.TX_FRAME) {
        txFrames++;
        if (r.body.length < NET_MIN_FRAME || r.body.length > NET_MAX_FRAME) violations.push(`a ${r.body.length}-byte frame was sent`);
      }
      return true;
    },
    setTimer: (_ms, fn) => { timers.push(fn); return () => {}; },
  });
  const device = new VirtioNet({ name: 'net0', mac: Uint8Array.of(0x52, 0x54, 0, 1, 2, 3), link });
  const driver = new VirtioTestDriver(device);
  const { view } = driver.bus;
  const start = (): void => {
    // A driver sets up zeroed rings (the test driver does not clear them itself).
    driver.bus.ram.fill(0, RXQ, RXQ + 0x2000);
    driver.bus.ram.fill(0, TXQ, TXQ + 0x2000);
    assert.ok(driver.negotiate((rng.below(2) ? 1 << VIRTIO_F.INDIRECT_DESC : 0) | (rng.below(2) ? 1 << VIRTIO_F.EVENT_IDX : 0) | (1 << VIRTIO_NET_F.MAC), 1));
    driver.setupQueue(VIRTIO_NET_RX, QUEUE, RXQ);
    driver.setupQueue(VIRTIO_NET_TX, QUEUE, TXQ);
    driver.driverOk();
  };
  start();
  let resets = 0;
  for (let round = 0; round < ROUNDS_PER_SEED; round++) {
    full = rng.below(10) === 0;
    const qi = rng.below(2);
    const q = driver.queue(qi);
    for (let n = rng.below(4); n >= 0; n--) {
      const flags = rng.below(8) === 0 ? rng.below(0x10000) : rng.below(8);
      driver.writeDesc(q.desc, rng.below(QUEUE), randomAddress(rng), randomLength(rng), flags, rng.below(QUEUE + 4));
    }
    if (rng.below(3) === 0) {
      // A plausible buffer: a receive buffer, or a transmit header and frame.
      const i = rng.below(QUEUE - 1);
      if (qi === VIRTIO_NET_RX) driver.writeDesc(q.desc, i, 0x100000 + 0x1000 * i, rng.pick([1526, 1526, 64, randomLength(rng)]), VIRTQ_DESC_F_WRITE, 0);
      else {
        const header = 0x200000 + 0x100 * i;
        for (let b = 0; b < VIRTIO_NET_HDR_BYTES; b++) driver.bus.ram[header + b] = rng.below(6) === 0 ? rng.below(256) : 0;
        driver.writeDesc(q.desc, i, header, rng.pick([VIRTIO_NET_HDR_BYTES, 10, 0]), VIRTQ_DESC_F_NEXT, i + 1);
        driver.writeDesc(q.desc, i + 1, 0x300000, rng.pick([60, 1514, 13, randomLength(rng)]), rng.below(6) === 0 ? VIRTQ_DESC_F_WRITE : 0, 0);
      }
      driver.submit(qi, i);
    }
    switch (rng.below(12)) {
      case 0:
        view.setUint16(q.avail + 2, rng.below(0x10000), true);
        driver.notify(qi);
        break;
      case 1:
        driver.submit(qi, QUEUE + rng.below(0x10000 - QUEUE));
        break;
      case 2:
        driver.write(rng.below(0x38) & ~1, rng.pick([1, 2, 4]), rng.next() & (rng.below(2) ? 0xffff : 0xffffffff));
        break;
      case 3:
        driver.notify(rng.below(4));
        driver.read(VIRTIO_BAR_LAYOUT.isr, 1);
        break;
      case 4: case 5: // frames from the backend
        for (let n = rng.below(4); n >= 0; n--) {
          link.onRecord(NET_KIND.FRAME, new Uint8Array(rng.pick([14, 60, 1514, 1515, 9000, 65549])));
          sentToDevice++;
        }
        break;
      case 6:
        link.onRecord(NET_KIND.TX_CREDIT, encodeNetCount(0, rng.below(80)).subarray(4));
        break;
      case 7:
        for (const fn of timers.splice(0)) fn();
        break;
      default:
        driver.submit(qi, rng.below(QUEUE));
    }
    const used = view.getUint16(q.used + 2, true);
    if (used > 0) assert.ok(driver.used(qi, used - 1).id < QUEUE, `seed ${seed} round ${round}: used id out of the table`);
    if ((driver.status & VIRTIO_STATUS.NEEDS_RESET) || rng.below(60) === 0 || !(driver.status & VIRTIO_STATUS.DRIVER_OK)) {
      start();
      resets++;
    }
  }
  full = false;
  for (const fn of timers.splice(0)) fn();
  link.flush();
  assert.deepEqual(violations, [], `seed ${seed}`);
  assert.equal(credited + link.waiting, sentToDevice, `seed ${seed}: every frame from the host is acknowledged or still waiting`);
  assert.ok(resets > 0, 'the fuzz reached the device error state');

  // After a reset a frame goes through both ways.
  start();
  link.onRecord(NET_KIND.TX_CREDIT, encodeNetCount(0, 1000).subarray(4));
  const rx = driver.queue(VIRTIO_NET_RX);
  driver.writeDesc(rx.desc, 0, 0x100000, 1526, VIRTQ_DESC_F_WRITE, 0);
  driver.submit(VIRTIO_NET_RX, 0);
  link.onRecord(NET_KIND.FRAME, new Uint8Array(60).fill(0xab));
  assert.equal(driver.bus.ram[0x100000 + VIRTIO_NET_HDR_BYTES], 0xab, `seed ${seed}: receive after recovery`);
  const tx = driver.queue(VIRTIO_NET_TX);
  driver.bus.ram.fill(0, 0x200000, 0x200000 + VIRTIO_NET_HDR_BYTES);
  driver.writeDesc(tx.desc, 0, 0x200000, VIRTIO_NET_HDR_BYTES, VIRTQ_DESC_F_NEXT, 1);
  driver.writeDesc(tx.desc, 1, 0x300000, 60, 0, 0);
  const before = txFrames;
  driver.submit(VIRTIO_NET_TX, 0);
  assert.equal(txFrames, before + 1, `seed ${seed}: transmit after recovery`);
}

for (const seed of [1, 2, 3, 0xbeef]) {
  test(`virtio-net survives random rings, registers and backend traffic (seed ${seed}, ${ROUNDS_PER_SEED} rounds)`, () => fuzzSeed(seed));
}
