// The virtio-net data plane's VM host side (host/net-dataplane.ts) driven through its block as
// the machine thread drives it, with real eventfds: a hand-over, transmit and receive straight
// between guest memory and the backend with irqfd-style interrupts, frames waiting for receive
// buffers, the stop that hands the ring indices back, a broken ring reported with its run,
// and the machine's end.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { libc } from '../../native';
import { HostNetDataPlane } from '../../main/vmm/host/net-dataplane';
import type { MemoryRegion } from '../../main/vmm/memory/guest-memory';
import { DATAPLANE_FLAG, DATAPLANE_STATE, DataPlaneBlock, dataPlaneBlockBytes } from '../../main/vmm/shared/dataplane-block';
import { NET_DATAPLANE, NET_DATAPLANE_RX, NET_DATAPLANE_TX } from '../../main/vmm/shared/virtio-net-frames';
import { SplitVirtqueue, VIRTQ_DESC_F_WRITE } from '../../main/vmm/shared/virtqueue';
import { fuzzCases, Prng } from '../helpers/prng';
import { runOnThread } from '../helpers/threads';
import { DataPlaneHandoff } from '../../main/vmm/devices/virtio/dataplane-handoff';
import type { DoorbellSpec } from '../../main/vmm/devices/interrupts';

const RAM = 1 << 20;
const SIZE = 8;
/** Queue q's descriptor table, driver ring and device ring. */
const rings = (q: number) => ({ desc: 0x1000 + q * 0x4000, avail: 0x2000 + q * 0x4000, used: 0x3000 + q * 0x4000 });
const BUFFERS = 0x10000;

function until(what: string, cond: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const tick = () => {
      if (cond()) resolve();
      else if (Date.now() > end) reject(new Error(`timed out waiting for ${what}`));
      else setTimeout(tick, 2);
    };
    tick();
  });
}

function setup(flags = 0) {
  const region: MemoryRegion = { guestBase: 0, size: RAM, buffer: new SharedArrayBuffer(RAM), offset: 0, readonly: false, name: 'ram' };
  const view = new DataView(region.buffer);
  const stats = new Uint32Array(16);
  const transmitted: Uint8Array[] = [];
  const failures: { epoch: number; why: string }[] = [];
  const pauses: boolean[] = [];
  const buffer = new SharedArrayBuffer(dataPlaneBlockBytes(NET_DATAPLANE));
  const plane = new HostNetDataPlane(buffer, () => [region], stats, {
    transmit: (frame) => transmitted.push(frame),
    canTransmit: () => true,
    pauseReceive: (p) => pauses.push(p),
    failed: (epoch, why) => failures.push({ epoch, why }),
    log: () => {},
  });
  const block = new DataPlaneBlock(NET_DATAPLANE, buffer);
  const notify = [libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK), libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK)];
  const irq = [libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK), libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK)];
  const nextAvail = [0, 0];
  let epoch = 0;
  const t = {
    plane, block, view, stats, transmitted, failures, pauses, notify, irq,
    async start(): Promise<number> {
      for (const q of [NET_DATAPLANE_RX, NET_DATAPLANE_TX]) {
        const r = rings(q);
        block.setQueue(q, {
          size: SIZE, descAddress: r.desc, driverAddress: r.avail, deviceAddress: r.used, lastAvail: nextAvail[q],
          usedIdx: view.getUint16(r.used + 2, true), signalledUsed: view.getUint16(r.used + 2, true),
          notifyFd: notify[q], irqFd: irq[q], irqCounter: 10 + q,
        });
      }
      block.flags = flags;
      block.setCounterSlot('txPackets', 0);
      block.setCounterSlot('rxPackets', 1);
      block.setCounterSlot('rxDropped', 2);
      block.epoch = ++epoch;
      assert.ok(block.move(DATAPLANE_STATE.IDLE, DATAPLANE_STATE.START));
      libc.eventfdWrite(block.controlFd);
      await until('the host to take the rings', () => block.state === DATAPLANE_STATE.RUNNING);
      return epoch;
    },
    async stop(): Promise<void> {
      assert.ok(block.move(DATAPLANE_STATE.RUNNING, DATAPLANE_STATE.STOP));
      libc.eventfdWrite(block.controlFd);
      await until('the host to hand the rings back', () => block.state === DATAPLANE_STATE.IDLE);
    },
    /** Makes a chain of one descriptor available on queue q; rings its doorbell unless told not to. */
    offer(q: number, address: number, length: number, writable: boolean, ring = true): void {
      const r = rings(q);
      const slot = nextAvail[q] % SIZE;
      view.setUint32(r.desc + 16 * slot, address, true);
      view.setUint32(r.desc + 16 * slot + 4, 0, true);
      view.setUint32(r.desc + 16 * slot + 8, length, true);
      view.setUint16(r.desc + 16 * slot + 12, writable ? VIRTQ_DESC_F_WRITE : 0, true);
      view.setUint16(r.avail + 4 + 2 * slot, slot, true);
      nextAvail[q] = (nextAvail[q] + 1) & 0xffff;
      view.setUint16(r.avail + 2, nextAvail[q], true);
      if (ring) libc.eventfdWrite(notify[q]);
    },
    usedIdx: (q: number) => view.getUint16(rings(q).used + 2, true),
    /** Where the next offer() goes (the fuzz test moves the driver's index itself). */
    setAvail: (q: number, idx: number) => { nextAvail[q] = idx; },
    usedLen: (q: number, n: number) => view.getUint32(rings(q).used + 4 + 8 * (n % SIZE) + 4, true),
    /** Interrupts sent on queue q's irqfd since the last look. */
    interrupts: (q: number) => libc.eventfdRead(irq[q]),
    async close(): Promise<void> {
      await plane.close();
      for (const fd of [...notify, ...irq]) libc.close(fd);
    },
  };
  return t;
}

function frame(n: number, fill: number): Uint8Array {
  const f = new Uint8Array(n).fill(fill);
  f.set([0xff, 0xff, 0xff, 0xff, 0xff, 0xff], 0);
  return f;
}

test('data plane: transmits and receives through guest memory, interrupting by irqfd, and hands the indices back', async () => {
  const t = setup();
  try {
    await t.start();
    // Transmit: the 12-byte header, then a 60-byte frame.
    const tx = frame(60, 0xab);
    t.view.setUint32(BUFFERS, 0, true);
    new Uint8Array(t.view.buffer).set(tx, BUFFERS + 12);
    t.offer(NET_DATAPLANE_TX, BUFFERS, 72, false);
    await until('the frame to reach the backend', () => t.transmitted.length === 1);
    assert.deepEqual(t.transmitted[0], tx);
    assert.equal(t.usedIdx(NET_DATAPLANE_TX), 1);
    await until('the transmit interrupt', () => t.interrupts(NET_DATAPLANE_TX) === 1);
    assert.equal(t.stats[0], 1, 'txPackets counted');
    assert.equal(t.stats[11], 1, 'the vector counter counted');

    // Receive: a frame with no buffer waits; the guest's buffer and notify bring it in.
    const rx = frame(100, 0x5a);
    assert.equal(t.plane.receive(rx), true);
    assert.equal(t.usedIdx(NET_DATAPLANE_RX), 0);
    t.offer(NET_DATAPLANE_RX, BUFFERS + 0x1000, 2048, true);
    await until('the frame to reach the guest', () => t.usedIdx(NET_DATAPLANE_RX) === 1);
    assert.equal(t.usedLen(NET_DATAPLANE_RX, 0), 112);
    assert.deepEqual(new Uint8Array(t.view.buffer, BUFFERS + 0x1000 + 12, 100), rx);
    assert.equal(t.view.getUint8(BUFFERS + 0x1000 + 10), 1, 'num_buffers is 1');
    assert.equal(t.interrupts(NET_DATAPLANE_RX), 1);
    assert.equal(t.stats[1], 1, 'rxPackets counted');

    // A buffer too small for the next frame: dropped, counted, the buffer goes back empty.
    t.offer(NET_DATAPLANE_RX, BUFFERS + 0x2000, 50, true, false);
    assert.equal(t.plane.receive(rx), true);
    await Promise.resolve(); // a burst is delivered once the backend's call returns
    assert.equal(t.usedIdx(NET_DATAPLANE_RX), 2);
    assert.equal(t.usedLen(NET_DATAPLANE_RX, 1), 0);
    assert.equal(t.plane.drops.rxNoRoom, 1);
    assert.equal(t.stats[2], 1, 'rxDropped counted');

    // The VM paused: a frame waits even with a buffer there, and goes in when the VM resumes.
    t.plane.hold(true);
    t.offer(NET_DATAPLANE_RX, BUFFERS + 0x3000, 2048, true);
    assert.equal(t.plane.receive(rx), true);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(t.usedIdx(NET_DATAPLANE_RX), 2, 'nothing changes in a paused guest\'s memory');
    t.plane.hold(false);
    assert.equal(t.usedIdx(NET_DATAPLANE_RX), 3);
    assert.equal(t.usedLen(NET_DATAPLANE_RX, 2), 112);

    // A burst from the backend (three frames in one go): one interrupt for the three.
    for (let i = 0; i < 3; i++) t.offer(NET_DATAPLANE_RX, BUFFERS + 0x4000 + 0x800 * i, 2048, true, false);
    t.interrupts(NET_DATAPLANE_RX);
    for (let i = 0; i < 3; i++) t.plane.receive(rx);
    await Promise.resolve();
    assert.equal(t.usedIdx(NET_DATAPLANE_RX), 6);
    assert.equal(t.interrupts(NET_DATAPLANE_RX), 1);

    await t.stop();
    assert.equal(t.plane.running, false);
    assert.equal(t.plane.receive(rx), false, 'without a run, frames go the channel\'s way');
    const back = t.block.queue(NET_DATAPLANE_TX);
    assert.deepEqual([back.lastAvail, back.usedIdx, back.signalledUsed], [1, 1, 1]);
    const rxBack = t.block.queue(NET_DATAPLANE_RX);
    assert.deepEqual([rxBack.lastAvail, rxBack.usedIdx], [6, 6]);

    // A second run carries on from the indices handed back.
    await t.start();
    t.offer(NET_DATAPLANE_TX, BUFFERS, 72, false);
    await until('the second run\'s frame', () => t.transmitted.length === 2);
    assert.equal(t.usedIdx(NET_DATAPLANE_TX), 2);
  } finally {
    await t.close();
  }
});

test('data plane: with EVENT_IDX it interrupts only past used_event and asks for every notify', async () => {
  const t = setup(DATAPLANE_FLAG.EVENT_IDX);
  try {
    await t.start();
    const r = rings(NET_DATAPLANE_TX);
    // used_event (after the driver ring's entries) = 1: no interrupt for the first used entry.
    t.view.setUint16(r.avail + 4 + 2 * SIZE, 1, true);
    t.view.setUint32(BUFFERS, 0, true);
    new Uint8Array(t.view.buffer).set(frame(60, 1), BUFFERS + 12);
    t.offer(NET_DATAPLANE_TX, BUFFERS, 72, false);
    await until('the first frame', () => t.transmitted.length === 1);
    assert.equal(t.interrupts(NET_DATAPLANE_TX), 0);
    assert.equal(t.view.getUint16(r.used + 4 + 8 * SIZE, true), 1, 'avail_event asks for the next notify');
    t.offer(NET_DATAPLANE_TX, BUFFERS, 72, false);
    await until('the second frame', () => t.transmitted.length === 2);
    await until('the interrupt past used_event', () => t.interrupts(NET_DATAPLANE_TX) === 1);
  } finally {
    await t.close();
  }
});

test('data plane: a broken ring stops the run and reports it with its epoch; the machine\'s end stops a run', async () => {
  const t = setup();
  try {
    const epoch = await t.start();
    // The driver index jumps further than the queue is long.
    t.view.setUint16(rings(NET_DATAPLANE_TX).avail + 2, 100, true);
    libc.eventfdWrite(t.notify[NET_DATAPLANE_TX]);
    await until('the failure report', () => t.failures.length === 1);
    assert.equal(t.failures[0].epoch, epoch);
    assert.match(t.failures[0].why, /moved 100 entries ahead/);
    assert.equal(t.block.state, DATAPLANE_STATE.IDLE);
    assert.equal(t.plane.running, false);

    t.view.setUint16(rings(NET_DATAPLANE_TX).avail + 2, 0, true);
    await t.start();
    assert.equal(t.plane.receive(frame(60, 2)), true);
    t.plane.machineEnded();
    assert.equal(t.plane.running, false);
    assert.equal(t.block.state, DATAPLANE_STATE.IDLE);
    assert.equal(t.plane.drops.rxStopped, 1, 'the frame waiting for a buffer is dropped, counted');
  } finally {
    await t.close();
  }
});

test('data plane fuzz: random rings and frames never throw out of the loop, hang it or reach outside guest memory', async () => {
  const t = setup(DATAPLANE_FLAG.EVENT_IDX | DATAPLANE_FLAG.INDIRECT);
  const rng = new Prng(0x5eed13);
  const ram = new Uint8Array(t.view.buffer);
  const addresses = [0, 0x10, BUFFERS, RAM - 12, RAM - 1, RAM, RAM + 4096, 2 ** 40, 2 ** 52 - 16, 0xfffffff0];
  try {
    for (let round = 0; round < fuzzCases(60); round++) {
      // Valid headers for the starting indices, garbage everywhere a guest can write.
      for (const q of [NET_DATAPLANE_RX, NET_DATAPLANE_TX]) {
        const r = rings(q);
        for (let i = 0; i < SIZE; i++) {
          const at = r.desc + 16 * i;
          t.view.setUint32(at, rng.below(3) === 0 ? rng.pick(addresses) : BUFFERS + rng.below(0x8000), true);
          t.view.setUint32(at + 4, rng.below(8) === 0 ? rng.next() : 0, true);
          t.view.setUint32(at + 8, rng.pick([0, 1, 12, 60, 72, 2048, 0xffffffff, rng.next()]), true);
          t.view.setUint16(at + 12, rng.below(8), true);
          t.view.setUint16(at + 14, rng.below(12), true);
          // Half the time a well-formed buffer: a zero header and a frame behind it, or room for one.
          if (rng.below(2) === 0) {
            t.view.setUint32(at, BUFFERS + 0x9000 + 0x800 * i, true);
            t.view.setUint32(at + 4, 0, true);
            t.view.setUint32(at + 8, q === NET_DATAPLANE_TX ? 12 + 60 : 2048, true);
            t.view.setUint16(at + 12, q === NET_DATAPLANE_TX ? 0 : VIRTQ_DESC_F_WRITE, true);
            ram.fill(0, BUFFERS + 0x9000 + 0x800 * i, BUFFERS + 0x9000 + 0x800 * i + 12);
          }
          t.view.setUint16(r.avail + 4 + 2 * i, rng.below(12), true);
        }
        t.view.setUint16(r.avail + 4 + 2 * SIZE, rng.next() & 0xffff, true); // used_event
      }
      for (let i = 0; i < 256; i++) ram[BUFFERS + rng.below(0x8000)] = rng.next() & 0xff;
      const before = t.failures.length;
      await t.start();
      for (const q of [NET_DATAPLANE_RX, NET_DATAPLANE_TX]) {
        const r = rings(q);
        t.view.setUint16(r.avail + 2, (t.block.queue(q).lastAvail + rng.below(SIZE + 3)) & 0xffff, true);
        libc.eventfdWrite(t.notify[q]);
      }
      for (let i = rng.below(4); i > 0; i--) t.plane.receive(frame(14 + rng.below(1500), i));
      // Give the loop a moment, then take the rings back (or see that the run failed on its own).
      await new Promise((r) => setTimeout(r, rng.below(4)));
      if (t.block.move(DATAPLANE_STATE.RUNNING, DATAPLANE_STATE.STOP)) libc.eventfdWrite(t.block.controlFd);
      await until('the run to end', () => t.block.state === DATAPLANE_STATE.IDLE && !t.plane.running);
      assert.ok(t.failures.length - before <= 1);
      for (const f of t.failures.slice(before)) assert.doesNotMatch(f.why, /internal error/);
      for (const q of [NET_DATAPLANE_RX, NET_DATAPLANE_TX]) t.interrupts(q);
      // Each round starts from the indices the guest's driver ring is at.
      for (const q of [NET_DATAPLANE_RX, NET_DATAPLANE_TX]) {
        const r = rings(q);
        t.setAvail(q, t.view.getUint16(r.avail + 2, true));
      }
    }
    // Not vacuous: some rounds broke a ring, some frames got through.
    assert.ok(t.failures.length > 0, 'no round broke a ring');
    assert.ok(t.transmitted.length > 0, 'no frame was sent');
    assert.ok(t.stats[1] + t.plane.drops.rxNoRoom + t.plane.drops.rxFault > 0, 'no frame met a receive buffer');
  } finally {
    await t.close();
  }
});

test('data plane across threads: the machine hands the rings over, a doorbell brings a frame out, and stop blocks until the host hands the indices back', async () => {
  const ram = new SharedArrayBuffer(RAM);
  const view = new DataView(ram);
  const blockBuffer = new SharedArrayBuffer(dataPlaneBlockBytes(NET_DATAPLANE));
  const done = new SharedArrayBuffer(4);
  const host = runOnThread<{ frames: number }>({ role: 'net-dataplane-host', block: blockBuffer, ram, done }, 30000);
  const block = new DataPlaneBlock(NET_DATAPLANE, blockBuffer);
  const sleep = new Int32Array(new SharedArrayBuffer(4));
  /** Blocks this thread (as the machine thread blocks) until cond holds. */
  const spin = (what: string, cond: () => boolean) => {
    for (let i = 0; i < 3000 && !cond(); i++) Atomics.wait(sleep, 0, 0, 1);
    assert.ok(cond(), `timed out waiting for ${what}`);
  };
  await until('the host\'s control eventfd', () => block.controlFd > 0);
  const owned: number[] = [];
  const registry = {
    register: (spec: DoorbellSpec) => {
      const fd = libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
      return { ...spec, eventFd: fd, takeCount: () => libc.eventfdRead(fd), ring: () => libc.eventfdWrite(fd), release: () => libc.close(fd) };
    },
    signal: (fd: number) => libc.eventfdWrite(fd),
  };
  const irq = [libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK), libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK)];
  owned.push(...irq);
  const queues = [NET_DATAPLANE_RX, NET_DATAPLANE_TX].map((i) => {
    const q = new SplitVirtqueue(i, SIZE);
    const r = rings(i);
    q.descAddress = r.desc;
    q.driverAddress = r.avail;
    q.deviceAddress = r.used;
    q.enabled = true;
    return q;
  });
  try {
    const handoff = new DataPlaneHandoff(NET_DATAPLANE, blockBuffer, registry, 'VM host thread', () => {});
    const none = { rxPackets: -1, rxBytes: -1, txPackets: -1, txBytes: -1, rxDropped: -1, txDropped: -1 };
    assert.ok(handoff.start(queues.map((queue, i) => ({ queue, notifyAddress: 0xfe003000 + 4 * i, irqFd: irq[i], irqCounter: -1 })), 0, none));
    spin('the host to take the rings', () => block.state === DATAPLANE_STATE.RUNNING);
    // One transmit chain: a zero header and a 60-byte frame.
    const r = rings(NET_DATAPLANE_TX);
    view.setUint32(r.desc, BUFFERS, true);
    view.setUint32(r.desc + 8, 72, true);
    view.setUint16(r.avail + 4, 0, true);
    view.setUint16(r.avail + 2, 1, true);
    new Uint8Array(ram).fill(0xff, BUFFERS + 12, BUFFERS + 18);
    handoff.forwardNotify(NET_DATAPLANE_TX);
    spin('the frame to be used', () => view.getUint16(r.used + 2, true) === 1);
    handoff.stop();
    assert.equal(block.state, DATAPLANE_STATE.IDLE);
    assert.equal(handoff.active, false);
    assert.deepEqual(queues[NET_DATAPLANE_TX].ringIndices, { lastAvail: 1, usedIdx: 1, signalledUsed: 1 });
  } finally {
    Atomics.store(new Int32Array(done), 0, 1);
    for (const fd of owned) libc.close(fd);
  }
  assert.equal((await host).frames, 1);
});
