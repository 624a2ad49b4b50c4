// Two virtio-net cards, each with its NicLink (the machine thread's end) wired to a HostNic (the
// VM host's end) as the channel would, joined by a real Unix stream socket: a guest frame goes
// from one card's transmit queue into the other card's receive buffer; with no receive buffers
// the frames wait (the window pauses the socket) and all arrive, in order, once the guest adds
// buffers; the credits come back both ways.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import type { NicConfig } from '../../main/vmm/config';
import { NicLink } from '../../main/vmm/devices/net/nic-link';
import { VIRTIO_NET_F, VIRTIO_NET_HDR_BYTES, VIRTIO_NET_RX, VIRTIO_NET_TX, VirtioNet } from '../../main/vmm/devices/virtio/net';
import { VIRTIO_F } from '../../main/vmm/devices/virtio/virtio-pci';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../main/vmm/shared/virtqueue';
import { HostNic } from '../../main/vmm/host/net-host';
import { decodeNetRecord, NET_RX_WINDOW } from '../../main/vmm/shared/net-messages';
import { VirtioTestDriver } from '../helpers/virtio-driver';

const QUEUE = 128;

async function vm(index: number, config: NicConfig) {
  // The channel in both directions, as records with the NIC index, delivered on a later turn.
  let host: HostNic | null = null;
  const timers = new Set<NodeJS.Timeout>();
  const link = new NicLink(0, {
    send: (kind, payload) => {
      // A copy, as the channel takes one: the link reuses its transmit buffer.
      const r = decodeNetRecord(payload.slice())!;
      setImmediate(() => host?.onMachineRecord(kind, r.body));
      return true;
    },
    setTimer: (ms, fn) => { const t = setTimeout(fn, ms); timers.add(t); return () => clearTimeout(t); },
  });
  const device = new VirtioNet({ name: `net${index}`, mac: Uint8Array.of(0x52, 0x54, 0, 0, 0, index), link });
  const driver = new VirtioTestDriver(device);
  host = await HostNic.open(0, `vm${index}`, config, {
    sendToMachine: (kind, payload) => {
      const r = decodeNetRecord(payload)!;
      setImmediate(() => link.onRecord(kind, r.body));
      return true;
    },
    log: () => {},
  });
  assert.ok(driver.negotiate(1 << VIRTIO_NET_F.MAC | 1 << VIRTIO_F.EVENT_IDX, 1));
  driver.setupQueue(VIRTIO_NET_RX, QUEUE, 0x10000);
  driver.setupQueue(VIRTIO_NET_TX, QUEUE, 0x30000);
  driver.driverOk();
  link.hello();
  let txNext = 0;
  let rxNext = 0;
  return {
    device, driver, link, host,
    send(frame: Uint8Array): void {
      const i = txNext++ % (QUEUE / 2);
      const at = 0x100000 + i * 0x1000;
      driver.bus.ram.fill(0, at, at + VIRTIO_NET_HDR_BYTES);
      driver.bus.ram.set(frame, at + VIRTIO_NET_HDR_BYTES);
      const q = driver.queue(VIRTIO_NET_TX);
      driver.writeDesc(q.desc, 2 * i, at, VIRTIO_NET_HDR_BYTES, VIRTQ_DESC_F_NEXT, 2 * i + 1);
      driver.writeDesc(q.desc, 2 * i + 1, at + VIRTIO_NET_HDR_BYTES, frame.length, 0, 0);
      driver.submit(VIRTIO_NET_TX, 2 * i);
    },
    giveBuffers(n: number): void {
      for (let k = 0; k < n; k++) {
        const i = rxNext++ % QUEUE;
        driver.writeDesc(driver.queue(VIRTIO_NET_RX).desc, i, 0x400000 + i * 0x800, 1526, VIRTQ_DESC_F_WRITE, 0);
        driver.submit(VIRTIO_NET_RX, i, k === n - 1);
      }
    },
    /** The first bytes of each received frame, in order. */
    received(): number[] {
      const out: number[] = [];
      for (let n = 0; n < driver.usedIdx(VIRTIO_NET_RX); n++) {
        const u = driver.used(VIRTIO_NET_RX, n);
        if (u.len > VIRTIO_NET_HDR_BYTES) out.push(driver.bus.ram[0x400000 + u.id * 0x800 + VIRTIO_NET_HDR_BYTES + 12]);
      }
      return out;
    },
    close: async () => { for (const t of timers) clearTimeout(t); await host?.close(); },
  };
}

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until(what: string, ok: () => boolean): Promise<void> {
  for (let i = 0; i < 300 && !ok(); i++) await delay(10);
  assert.ok(ok(), what);
}

test('two virtio-net cards joined by a Unix socket: frames cross, wait for receive buffers, and none is lost', async () => {
  const sock = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-2vm-')), 'net.sock');
  const a = await vm(1, { model: 'virtio', backend: { kind: 'socket', mode: 'listen', path: sock } });
  const b = await vm(2, { model: 'virtio', backend: { kind: 'socket', mode: 'connect', path: sock } });
  try {
    await delay(20);
    const frame = (tag: number) => { const f = new Uint8Array(60); f.fill(0xff, 0, 6); f[12] = tag; return f; };
    b.giveBuffers(4);
    a.send(frame(1));
    await until('b received the frame', () => b.received().length === 1);
    assert.deepEqual(b.received(), [1]);
    assert.equal(a.driver.usedIdx(VIRTIO_NET_TX), 1);

    // More frames than b has buffers, and more than the window: they wait, then all come in order.
    const count = NET_RX_WINDOW + 36;
    for (let i = 0; i < count; i++) a.send(frame((i + 2) & 0xff));
    await until('b filled its buffers', () => b.received().length === 4);
    await delay(50);
    assert.equal(b.received().length, 4, 'no buffers, no more frames');
    for (let k = 0; k < count; k += 16) {
      b.giveBuffers(16);
      await delay(5);
    }
    await until('every frame arrived', () => b.received().length === count + 1);
    assert.deepEqual(b.received(), [1, ...Array.from({ length: count }, (_, i) => (i + 2) & 0xff)]);
    assert.equal(b.device.drops.rxNoRoom + b.device.drops.rxNotRunning + b.link.overflowDrops, 0);
    assert.equal(a.driver.usedIdx(VIRTIO_NET_TX), count + 1, 'a got every transmit buffer back');

    a.giveBuffers(1);
    b.send(frame(0x77));
    await until('a received the reply', () => a.received().length === 1);
    assert.deepEqual(a.received(), [0x77]);
  } finally {
    await a.close();
    await b.close();
  }
});
