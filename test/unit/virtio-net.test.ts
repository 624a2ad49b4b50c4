// virtio-net at register level from the host side: identity, configuration (MAC, link, MTU),
// honest features (no offloads), transmit and receive through the NicLink with its credits,
// frames waiting for receive buffers, the drops (counted) and the device error state, and
// the --nic / nics config.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ConfigError, defaultMac, formatMac, machineConfigFromJson, parseNic } from '../../main/vmm/config';
import { privateStatistics } from '../../main/vmm/devices/device';
import { PCI_CFG } from '../../main/vmm/devices/pci/pci-device';
import { NicLink } from '../../main/vmm/devices/net/nic-link';
import {
  VIRTIO_NET_F, VIRTIO_NET_HDR_BYTES, VIRTIO_NET_RX, VIRTIO_NET_S_LINK_UP, VIRTIO_NET_TX, VirtioNet,
} from '../../main/vmm/devices/virtio/net';
import { COMMON, VIRTIO_BAR_LAYOUT, VIRTIO_F, VIRTIO_STATUS } from '../../main/vmm/devices/virtio/virtio-pci';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../main/vmm/shared/virtqueue';
import {
  decodeNetCount, decodeNetRecord, encodeNetCount, encodeNetFrame, NET_KIND, NET_TX_WINDOW,
} from '../../main/vmm/shared/net-messages';
import { VirtioTestDriver } from '../helpers/virtio-driver';
import { FakeEventFds, FakeKvm } from '../helpers/fake-irq';
import { IrqRouting } from '../../main/vmm/machine/irq-routing';
import { Doorbells } from '../../main/vmm/machine/doorbells';
import { pcIrqRoutes } from '../../main/vmm/platform/mptable';
import { DATAPLANE_FLAG, DATAPLANE_STATE, DataPlaneBlock } from '../../main/vmm/shared/dataplane-block';
import { NET_DATAPLANE } from '../../main/vmm/shared/virtio-net-frames';

const MAC = Uint8Array.of(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);
const F_VERSION_1_HIGH = 1 << (VIRTIO_F.VERSION_1 - 32);

/** The VM host's side as a test sees it: records sent, a channel that can be made full, timers run by hand. */
class FakeHost {
  readonly sent: { kind: number; nic: number; body: Uint8Array }[] = [];
  full = false;
  readonly timers: (() => void)[] = [];
  readonly io = {
    send: (kind: number, payload: Uint8Array): boolean => {
      if (this.full) return false;
      const r = decodeNetRecord(payload)!;
      this.sent.push({ kind, nic: r.nic, body: r.body.slice() });
      return true;
    },
    setTimer: (_ms: number, fn: () => void) => {
      this.timers.push(fn);
      return () => { const i = this.timers.indexOf(fn); if (i >= 0) this.timers.splice(i, 1); };
    },
  };
  of(kind: number) {
    return this.sent.filter((r) => r.kind === kind);
  }
  credits(kind: number): number {
    return this.of(kind).reduce((n, r) => n + decodeNetCount(r.body), 0);
  }
  runTimers(): void {
    for (const fn of this.timers.splice(0)) fn();
  }
}

function net(opts: { link?: boolean } = {}) {
  const host = new FakeHost();
  const link = opts.link === false ? null : new NicLink(0, host.io);
  const statistics = privateStatistics();
  const logs: string[] = [];
  const device = new VirtioNet({ name: 'net0', mac: MAC, link, statistics, log: (t) => logs.push(t) });
  const driver = new VirtioTestDriver(device);
  return { host, link, device, driver, statistics, logs, bus: driver.bus };
}

const RXQ = 0x10000;
const TXQ = 0x20000;
const RXBUF = 0x100000;
const TXBUF = 0x200000;

function started(opts: Parameters<typeof net>[0] = {}) {
  const t = net(opts);
  assert.ok(t.driver.negotiate((1 << VIRTIO_NET_F.MAC) | (1 << VIRTIO_NET_F.STATUS), F_VERSION_1_HIGH));
  t.driver.setupQueue(VIRTIO_NET_RX, 16, RXQ);
  t.driver.setupQueue(VIRTIO_NET_TX, 16, TXQ);
  t.driver.driverOk();
  return t;
}

function counters(t: ReturnType<typeof net>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const c of t.statistics.schema) if (c.group === 'net0') out[c.name] = t.statistics.counts[t.statistics.counter('net0', c.name)];
  return out;
}

function frame(length: number, seed = 1): Uint8Array {
  const f = new Uint8Array(length);
  for (let i = 0; i < length; i++) f[i] = (i * 31 + seed) & 0xff;
  return f;
}

/** One receive buffer of `size` bytes at descriptor `i` (address RXBUF + i * 0x10000). */
function giveRxBuffer(t: ReturnType<typeof started>, i: number, size = 1526, notify = true): void {
  t.driver.writeDesc(t.driver.queue(VIRTIO_NET_RX).desc, i, RXBUF + i * 0x10000, size, VIRTQ_DESC_F_WRITE, 0);
  t.driver.submit(VIRTIO_NET_RX, i, notify);
}

/** A transmit buffer at descriptor pair 2i, 2i+1: the header, then the frame. */
function send(t: ReturnType<typeof started>, i: number, data: Uint8Array, header = new Uint8Array(VIRTIO_NET_HDR_BYTES)): void {
  const q = t.driver.queue(VIRTIO_NET_TX);
  const at = TXBUF + i * 0x20000;
  t.bus.ram.set(header, at);
  t.bus.ram.set(data, at + 0x1000);
  t.driver.writeDesc(q.desc, (2 * i) % 16, at, header.length, VIRTQ_DESC_F_NEXT, (2 * i + 1) % 16);
  t.driver.writeDesc(q.desc, (2 * i + 1) % 16, at + 0x1000, data.length, 0, 0);
  t.driver.submit(VIRTIO_NET_TX, (2 * i) % 16);
}

test('virtio-net is 1af4:1041, class 02/00, with MAC, link up and MTU in its configuration', () => {
  const { device, driver } = net();
  assert.equal(device.readConfig(PCI_CFG.VENDOR_ID, 4), 0x10411af4);
  assert.equal(device.readConfig(PCI_CFG.CLASS_PROG, 1) | (device.readConfig(PCI_CFG.CLASS_PROG + 1, 2) << 8), 0x020000);
  const cfg = VIRTIO_BAR_LAYOUT.device;
  assert.deepEqual([0, 1, 2, 3, 4, 5].map((i) => driver.read(cfg + i, 1)), [...MAC]);
  assert.equal(driver.read(cfg + 6, 2), VIRTIO_NET_S_LINK_UP);
  assert.equal(driver.read(cfg + 8, 2), 1, 'max_virtqueue_pairs');
  assert.equal(driver.read(cfg + 10, 2), 1500, 'mtu');
  assert.equal(net({ link: false }).driver.read(cfg + 6, 2), 0, 'no backend: link down');
});

test('features are honest: MAC, STATUS, MTU offered; no checksum or segmentation offload, no mergeable buffers', () => {
  const { driver } = net();
  const [low, high] = driver.offered();
  assert.equal(high & F_VERSION_1_HIGH, F_VERSION_1_HIGH);
  for (const bit of [VIRTIO_NET_F.MAC, VIRTIO_NET_F.STATUS, VIRTIO_NET_F.MTU]) assert.ok(low & (1 << bit), `bit ${bit}`);
  for (const bit of [VIRTIO_NET_F.CSUM, VIRTIO_NET_F.GUEST_CSUM, VIRTIO_NET_F.GUEST_TSO4, VIRTIO_NET_F.HOST_TSO4, VIRTIO_NET_F.MRG_RXBUF, VIRTIO_NET_F.CTRL_VQ]) {
    assert.equal(low & (1 << bit), 0, `bit ${bit} is not offered`);
  }
  assert.equal(driver.negotiate(1 << VIRTIO_NET_F.CSUM, F_VERSION_1_HIGH), false, 'a driver taking CSUM does not get FEATURES_OK');
});

test('the device says hello to the VM host; transmit sends TX_FRAME records and counts', () => {
  const t = started();
  t.link!.hello();
  assert.equal(t.host.of(NET_KIND.HELLO).length, 1);
  const f = frame(60);
  send(t, 0, f);
  const tx = t.host.of(NET_KIND.TX_FRAME);
  assert.equal(tx.length, 1);
  assert.deepEqual([...tx[0].body], [...f]);
  assert.equal(t.driver.usedIdx(VIRTIO_NET_TX), 1);
  assert.deepEqual(t.driver.used(VIRTIO_NET_TX, 0), { id: 0, len: 0 });
  const c = counters(t);
  assert.equal(c['tx-packets'], 1);
  assert.equal(c['tx-bytes'], 60);
});

test('receive: a frame goes into the next buffer behind a 12-byte header (num_buffers 1); the credit goes back', () => {
  const t = started();
  giveRxBuffer(t, 0);
  const f = frame(98, 7);
  t.link!.onRecord(NET_KIND.FRAME, f);
  assert.equal(t.driver.usedIdx(VIRTIO_NET_RX), 1);
  assert.deepEqual(t.driver.used(VIRTIO_NET_RX, 0), { id: 0, len: VIRTIO_NET_HDR_BYTES + 98 });
  assert.deepEqual([...t.bus.ram.subarray(RXBUF, RXBUF + 12)], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
  assert.deepEqual([...t.bus.ram.subarray(RXBUF + 12, RXBUF + 12 + 98)], [...f]);
  assert.equal(t.host.credits(NET_KIND.RX_CREDIT), 1);
  const c = counters(t);
  assert.equal(c['rx-packets'], 1);
  assert.equal(c['rx-bytes'], 98);
});

test('frames wait for receive buffers and go in when the guest adds some', () => {
  const t = started();
  for (let i = 0; i < 3; i++) t.link!.onRecord(NET_KIND.FRAME, frame(64, i));
  assert.equal(t.link!.waiting, 3);
  assert.equal(t.host.credits(NET_KIND.RX_CREDIT), 0, 'no credit before the guest took them');
  giveRxBuffer(t, 0, 1526, false);
  giveRxBuffer(t, 1, 1526, true);
  assert.equal(t.driver.usedIdx(VIRTIO_NET_RX), 2);
  assert.equal(t.link!.waiting, 1);
  assert.equal(t.host.credits(NET_KIND.RX_CREDIT), 2);
  assert.equal(t.bus.ram[RXBUF + 0x10000 + 12], frame(64, 1)[0]);
});

test('transmit stops at the credit window and resumes on TX_CREDIT; a full channel keeps the frame for later', () => {
  const t = started();
  for (let i = 0; i < NET_TX_WINDOW; i++) t.link!.transmit(frame(60));
  assert.equal(t.link!.canTransmit, false);
  send(t, 0, frame(60, 9));
  assert.equal(t.driver.usedIdx(VIRTIO_NET_TX), 0, 'the guest buffer stays on the ring without credit');
  t.link!.onRecord(NET_KIND.TX_CREDIT, encodeNetCount(0, 1).subarray(4));
  assert.equal(t.driver.usedIdx(VIRTIO_NET_TX), 1);
  assert.equal(t.host.of(NET_KIND.TX_FRAME).length, NET_TX_WINDOW + 1);

  const u = started();
  u.host.full = true;
  send(u, 0, frame(60, 3));
  assert.equal(u.link!.canTransmit, false, 'the refused record is held');
  send(u, 1, frame(60, 4));
  assert.equal(u.driver.usedIdx(VIRTIO_NET_TX), 1, 'nothing more is taken meanwhile');
  u.host.full = false;
  u.host.runTimers();
  const sent = u.host.of(NET_KIND.TX_FRAME);
  assert.deepEqual(sent.map((r) => r.body[0]), [frame(60, 3)[0], frame(60, 4)[0]], 'in order, none lost');
  assert.equal(u.driver.usedIdx(VIRTIO_NET_TX), 2);
});

test('drops are counted: a receive buffer too small, a runt or oversized frame, an offload header, a buffer outside RAM', () => {
  const t = started();
  giveRxBuffer(t, 0, 64);
  t.link!.onRecord(NET_KIND.FRAME, frame(100));
  assert.deepEqual(t.driver.used(VIRTIO_NET_RX, 0), { id: 0, len: 0 }, 'the buffer comes back empty');
  assert.equal(t.device.drops.rxNoRoom, 1);
  assert.equal(t.host.credits(NET_KIND.RX_CREDIT), 1);

  send(t, 0, frame(10));
  const csum = new Uint8Array(VIRTIO_NET_HDR_BYTES);
  csum[0] = 1;
  send(t, 1, frame(60), csum);
  const gso = new Uint8Array(VIRTIO_NET_HDR_BYTES);
  gso[1] = 1;
  send(t, 2, frame(60), gso);
  const q = t.driver.queue(VIRTIO_NET_TX);
  t.driver.writeDesc(q.desc, 6, TXBUF, 12, VIRTQ_DESC_F_NEXT, 7);
  t.driver.writeDesc(q.desc, 7, TXBUF + 0x1000, 70000, 0, 0);
  t.driver.submit(VIRTIO_NET_TX, 6);
  t.driver.writeDesc(q.desc, 8, TXBUF, 12, VIRTQ_DESC_F_NEXT, 9);
  t.driver.writeDesc(q.desc, 9, 0xfff0_0000, 60, 0, 0);
  t.driver.submit(VIRTIO_NET_TX, 8);
  assert.equal(t.host.of(NET_KIND.TX_FRAME).length, 0);
  assert.equal(t.driver.usedIdx(VIRTIO_NET_TX), 5, 'every buffer goes back');
  assert.deepEqual({ len: t.device.drops.txBadLength, off: t.device.drops.txOffload, fault: t.device.drops.txFault }, { len: 2, off: 2, fault: 1 });
  assert.equal(counters(t)['tx-dropped'], 5);
  assert.equal(t.driver.status & VIRTIO_STATUS.NEEDS_RESET, 0);
});

test('a receive buffer with a readable part, or a transmit buffer without room for the header, is DEVICE_NEEDS_RESET', () => {
  const t = started();
  const q = t.driver.queue(VIRTIO_NET_RX);
  t.driver.writeDesc(q.desc, 0, RXBUF, 1526, 0, 0);
  t.driver.submit(VIRTIO_NET_RX, 0);
  t.link!.onRecord(NET_KIND.FRAME, frame(60));
  assert.ok(t.driver.status & VIRTIO_STATUS.NEEDS_RESET);
  assert.match(t.logs.join('\n'), /device-readable part/);

  const u = started();
  const tq = u.driver.queue(VIRTIO_NET_TX);
  u.driver.writeDesc(tq.desc, 0, TXBUF, 8, 0, 0);
  u.driver.submit(VIRTIO_NET_TX, 0);
  assert.ok(u.driver.status & VIRTIO_STATUS.NEEDS_RESET);
});

test('frames arriving while the driver is not running (or across a reset) are dropped, counted and credited', () => {
  const t = net();
  t.link!.onRecord(NET_KIND.FRAME, frame(60));
  assert.equal(t.device.drops.rxNotRunning, 1);
  assert.equal(t.host.credits(NET_KIND.RX_CREDIT), 1);
  const u = started();
  u.link!.onRecord(NET_KIND.FRAME, frame(60));
  u.driver.write(0x14, 1, 0); // device_status 0: reset
  assert.equal(u.link!.waiting, 0);
  assert.equal(u.host.credits(NET_KIND.RX_CREDIT), 1);
});

test('--nic and nics: backends, MACs, pcap; clear errors; a stable default MAC', () => {
  assert.deepEqual(parseNic('virtio,tap=tap0'), { model: 'virtio', backend: { kind: 'tap', ifname: 'tap0' } });
  assert.deepEqual(parseNic('virtio,mac=52:54:00:AB:CD:EF,socket=listen:/tmp/n.sock,pcap=/tmp/n.pcapng'),
    { model: 'virtio', mac: '52:54:00:ab:cd:ef', backend: { kind: 'socket', mode: 'listen', path: '/tmp/n.sock' }, pcap: '/tmp/n.pcapng' });
  assert.deepEqual(parseNic('virtio,udp=127.0.0.1:5000/127.0.0.1:5001').backend, { kind: 'udp', local: '127.0.0.1:5000', remote: '127.0.0.1:5001' });
  assert.deepEqual(parseNic('virtio').backend, { kind: 'none' });
  assert.deepEqual(parseNic('virtio,bridge=br0').backend, { kind: 'bridge', bridge: 'br0' });
  for (const [bad, message] of [
    ['e1000', /not a NIC model/], ['virtio,mac=01:00:00:00:00:01', /multicast/], ['virtio,mac=52:54', /not a MAC address/],
    ['virtio,tap=', /ifname/], ['virtio,bridge=a b', /not an interface name/], ['virtio,tap=a/b', /not an interface name/], ['virtio,tap=averyveryverylongname', /not an interface name/],
    ['virtio,socket=bind:/x', /listen.*connect/], ['virtio,udp=1.2.3.4:0/1.2.3.4:5', /HOST:PORT/], ['virtio,tap=t0,udp=a:1/b:2', /one backend/],
    ['virtio,speed=10', /not understood/],
  ] as const) assert.throws(() => parseNic(bad), (e: Error) => e instanceof ConfigError && message.test(e.message), bad);
  const c = machineConfigFromJson({ name: 'vm', nics: [{ model: 'virtio', backend: { kind: 'tap', ifname: 'tap1' }, pcap: 'a.pcapng' }] });
  assert.equal(c.nics?.[0].backend.kind, 'tap');
  assert.throws(() => machineConfigFromJson({ nics: [{ model: 'virtio', backend: { kind: 'tap', ifname: 't', extra: 1 } }] }), /unknown field "extra"/);
  assert.throws(() => machineConfigFromJson({ nics: [{ model: 'virtio', mac: '52:54:00:00:00:01' }, { model: 'virtio', mac: '52:54:00:00:00:01' }] }), /taken/);
  const mac = formatMac(defaultMac('my vm', 0));
  assert.equal(mac, formatMac(defaultMac('my vm', 0)), 'stable');
  assert.match(mac, /^52:54:00(:[0-9a-f]{2}){3}$/);
  assert.notEqual(mac, formatMac(defaultMac('my vm', 1)));
  assert.notEqual(mac, formatMac(defaultMac('other vm', 0)));
});

test('net records round-trip', () => {
  const r = decodeNetRecord(encodeNetFrame(3, Uint8Array.of(1, 2, 3)))!;
  assert.equal(r.nic, 3);
  assert.deepEqual([...r.body], [1, 2, 3]);
  assert.equal(decodeNetCount(decodeNetRecord(encodeNetCount(1, 77))!.body), 77);
  assert.equal(decodeNetRecord(new Uint8Array(2)), null);
});

test('virtio-net lends its rings to the VM host at DRIVER_OK with MSI-X, forwards a notify that exited, and takes them back', () => {
  const fds = new FakeEventFds();
  const kvm = new FakeKvm(fds);
  const routing = new IrqRouting(kvm, { lineRoutes: pcIrqRoutes(), maxRoutes: 4096, eventFds: fds });
  routing.commit();
  const doorbells = new Doorbells(kvm, fds);
  const block = new DataPlaneBlock(NET_DATAPLANE);
  block.controlFd = fds.create();
  const logs: string[] = [];
  const device = new VirtioNet({
    name: 'net0', mac: MAC, link: new NicLink(0, new FakeHost().io), statistics: privateStatistics(), router: routing,
    dataPlane: { buffer: block.buffer, doorbells }, log: (t) => logs.push(t),
  });
  const driver = new VirtioTestDriver(device);
  device.writeConfig(PCI_CFG.BAR0, 4, 0xfe000000);
  const bring = (msix: boolean) => {
    assert.ok(driver.negotiate((1 << VIRTIO_NET_F.MAC) | (1 << VIRTIO_F.EVENT_IDX), F_VERSION_1_HIGH));
    if (msix) driver.enableMsix([{ vector: 0, data: 0x41 }, { vector: 1, data: 0x42 }, { vector: 2, data: 0x43 }]);
    driver.setupQueue(VIRTIO_NET_RX, 16, RXQ, 0);
    driver.setupQueue(VIRTIO_NET_TX, 16, TXQ, 1);
    driver.driverOk();
  };

  bring(true);
  assert.equal(device.ringsLent, true);
  assert.equal(block.state, DATAPLANE_STATE.START);
  assert.equal(fds.read(block.controlFd), 1, 'the host was woken');
  const tx = block.queue(VIRTIO_NET_TX);
  assert.equal(tx.descAddress, TXQ);
  assert.equal(tx.size, 16);
  assert.equal(block.flags & DATAPLANE_FLAG.EVENT_IDX, DATAPLANE_FLAG.EVENT_IDX);
  const bell = kvm.ioeventfds.find((o) => o.eventFd === tx.notifyFd);
  assert.deepEqual(bell && { address: bell.address, length: bell.length, pio: bell.pio }, { address: 0xfe000000 + VIRTIO_BAR_LAYOUT.notify + 4, length: 2, pio: false });
  assert.equal(tx.irqFd, device.msix.vectorEventFd(1));
  assert.ok(logs.some((l) => /rings handed to the VM host thread/.test(l)));

  // A 4-byte notify is not the doorbell's width: it exits, and the card rings the doorbell itself.
  driver.write(VIRTIO_BAR_LAYOUT.notify + VIRTIO_BAR_LAYOUT.notifyMultiplier * VIRTIO_NET_TX, 4, 1);
  assert.equal(fds.read(tx.notifyFd), 1);
  assert.equal(driver.usedIdx(VIRTIO_NET_TX), 0, 'the machine did not touch the lent ring');

  // A reset before the host took the rings: they come straight back, the doorbells go.
  driver.write(COMMON.DEVICE_STATUS, 1, 0);
  assert.equal(device.ringsLent, false);
  assert.equal(block.state, DATAPLANE_STATE.IDLE);
  assert.equal(kvm.ioeventfds.length, 0);
  assert.ok(fds.closed.has(tx.notifyFd));

  // The host ran them and found a broken ring: the card takes its indices and goes to its error state.
  bring(true);
  assert.equal(device.ringsLent, true);
  assert.ok(block.move(DATAPLANE_STATE.START, DATAPLANE_STATE.RUNNING));
  block.setIndices(VIRTIO_NET_TX, { lastAvail: 3, usedIdx: 3, signalledUsed: 2 });
  assert.ok(block.move(DATAPLANE_STATE.RUNNING, DATAPLANE_STATE.IDLE));
  device.dataPlaneFailed(block.epoch + 1, 'another run');
  assert.equal(device.needsReset, false, 'a report from another run is ignored');
  device.dataPlaneFailed(block.epoch, 'queue 1: broken');
  assert.equal(device.needsReset, true);
  assert.equal(device.ringsLent, false);
  assert.deepEqual(device.queues[VIRTIO_NET_TX].ringIndices, { lastAvail: 3, usedIdx: 3, signalledUsed: 2 });

  // Without MSI-X the rings stay on the machine thread.
  device.writeConfig(device.msix.offset + 2, 2, device.readConfig(device.msix.offset + 2, 2) & ~0x8000);
  bring(false);
  assert.equal(device.ringsLent, false);
  assert.equal(block.state, DATAPLANE_STATE.IDLE);
});
