// Network backends on the VM host thread, with real sockets: two NICs' host sides joined by a
// Unix stream socket and by UDP, the credit windows both ways (the receive window pauses the
// backend and nothing is lost), the pcapng file (LINKTYPE_ETHERNET, one packet per frame each
// way), framing errors, and the errors a user sees before boot.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { NativeError } from '../../native';
import type { NicConfig } from '../../main/vmm/config';
import { bridgeAdvice, NetBackendError, openNetBackend, TapEndpoint, tapAdvice } from '../../main/vmm/host/net-backends';
import { HostNic, LINKTYPE_ETHERNET } from '../../main/vmm/host/net-host';
import { decodeNetCount, decodeNetRecord, encodeNetCount, NET_KIND, NET_RX_WINDOW } from '../../main/vmm/shared/net-messages';

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-net-'));
}

/** A HostNic with a fake machine: records it would send, by kind. */
async function hostNic(config: NicConfig) {
  const records: { kind: number; body: Uint8Array }[] = [];
  const logs: string[] = [];
  let arrived: () => void = () => {};
  const nic = await HostNic.open(0, 'net0', config, {
    sendToMachine: (kind, payload) => {
      records.push({ kind, body: decodeNetRecord(payload)!.body.slice() });
      arrived();
      return true;
    },
    log: (t) => logs.push(t),
  });
  const frames = () => records.filter((r) => r.kind === NET_KIND.FRAME).map((r) => r.body);
  const txCredit = () => records.filter((r) => r.kind === NET_KIND.TX_CREDIT).reduce((n, r) => n + decodeNetCount(r.body), 0);
  /** Resolves once `n` frames reached the machine (or rejects after a while). */
  const waitFrames = (n: number) => new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${frames().length} of ${n} frames arrived`)), 5000);
    const check = () => { if (frames().length >= n) { clearTimeout(timer); resolve(); } };
    arrived = check;
    check();
  });
  const transmit = (frame: Uint8Array) => nic.onMachineRecord(NET_KIND.TX_FRAME, frame);
  return { nic, records, logs, frames, txCredit, waitFrames, transmit };
}

function frame(n: number, seed: number): Uint8Array {
  const f = new Uint8Array(n);
  for (let i = 0; i < n; i++) f[i] = (i + seed * 7) & 0xff;
  return f;
}

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The blocks of a pcapng file: [type, body]. */
function pcapBlocks(file: string): { type: number; body: Buffer }[] {
  const b = fs.readFileSync(file);
  const out: { type: number; body: Buffer }[] = [];
  for (let at = 0; at < b.length;) {
    const len = b.readUInt32LE(at + 4);
    out.push({ type: b.readUInt32LE(at), body: b.subarray(at + 8, at + len - 4) });
    at += len;
  }
  return out;
}

test('two VMs joined by a Unix stream socket: frames both ways, credits, the receive window, a pcap of each direction', async () => {
  const dir = tmp();
  const sock = path.join(dir, 'net.sock');
  const pcap = path.join(dir, 'a.pcapng');
  const a = await hostNic({ model: 'virtio', backend: { kind: 'socket', mode: 'listen', path: sock }, pcap });
  const b = await hostNic({ model: 'virtio', backend: { kind: 'socket', mode: 'connect', path: sock } });
  try {
    await delay(50);
    a.transmit(frame(60, 1));
    a.transmit(frame(1514, 2));
    await b.waitFrames(2);
    assert.deepEqual(b.frames().map((f) => f.length), [60, 1514]);
    assert.deepEqual([...b.frames()[1]], [...frame(1514, 2)]);
    assert.equal(a.txCredit(), 2, 'the credit goes back once the socket took them');

    // More than a window from b to a: a stops at the window until the machine acknowledges.
    for (let i = 0; i < NET_RX_WINDOW + 10; i++) b.transmit(frame(100, i));
    await a.waitFrames(NET_RX_WINDOW);
    await delay(100);
    assert.equal(a.frames().length, NET_RX_WINDOW, 'paused at the window');
    a.nic.onMachineRecord(NET_KIND.RX_CREDIT, encodeNetCount(0, NET_RX_WINDOW).subarray(4));
    await a.waitFrames(NET_RX_WINDOW + 10);
    assert.deepEqual(a.frames().map((f) => f[0]), Array.from({ length: NET_RX_WINDOW + 10 }, (_, i) => frame(100, i)[0]), 'in order, none lost');
  } finally {
    await a.nic.close();
    await b.nic.close();
  }
  const blocks = pcapBlocks(pcap);
  assert.equal(blocks[0].type, 0x0a0d0d0a);
  assert.equal(blocks[1].type, 1);
  assert.equal(blocks[1].body.readUInt16LE(0), LINKTYPE_ETHERNET);
  const packets = blocks.filter((x) => x.type === 6);
  assert.equal(packets.length, 2 + NET_RX_WINDOW + 10, 'every frame, sent and received');
  assert.equal(packets[1].body.readUInt32LE(12), 1514, 'captured length');
});

test('UDP joins two NICs, one datagram per frame', async () => {
  const port = 40000 + Math.floor(Math.random() * 20000);
  const a = await hostNic({ model: 'virtio', backend: { kind: 'udp', local: `127.0.0.1:${port}`, remote: `127.0.0.1:${port + 1}` } });
  const b = await hostNic({ model: 'virtio', backend: { kind: 'udp', local: `127.0.0.1:${port + 1}`, remote: `127.0.0.1:${port}` } });
  try {
    a.transmit(frame(42, 5));
    b.transmit(frame(1000, 6));
    await b.waitFrames(1);
    await a.waitFrames(1);
    assert.deepEqual([...b.frames()[0]], [...frame(42, 5)]);
    assert.deepEqual([...a.frames()[0]], [...frame(1000, 6)]);
  } finally {
    await a.nic.close();
    await b.nic.close();
  }
});

test('a stream peer that breaks the framing is disconnected and counted', async () => {
  const dir = tmp();
  const sock = path.join(dir, 'net.sock');
  const a = await hostNic({ model: 'virtio', backend: { kind: 'socket', mode: 'listen', path: sock } });
  try {
    const peer = net.connect(sock);
    await new Promise((r) => peer.once('connect', r));
    const bad = Buffer.alloc(8);
    bad.writeUInt32BE(5);
    peer.write(bad);
    await new Promise((r) => peer.once('close', r));
    assert.equal(a.nic.drops, 1);
    assert.match(a.logs.join('\n'), /5-byte frame; disconnected/);
  } finally {
    await a.nic.close();
  }
});

test('errors before boot name the problem and what to do', async () => {
  const dir = tmp();
  const events = { onFrame() {}, onWritable() {}, onLog() {} };
  await assert.rejects(openNetBackend({ kind: 'socket', mode: 'connect', path: path.join(dir, 'none.sock') }, 'net0', events),
    (e: Error) => e instanceof NetBackendError && /net0: cannot connect .*nothing listens there \(start the VM with socket=listen:/.test(e.message));
  const sock = path.join(dir, 'taken.sock');
  const first = await openNetBackend({ kind: 'socket', mode: 'listen', path: sock }, 'net0', events);
  await assert.rejects(openNetBackend({ kind: 'socket', mode: 'listen', path: sock }, 'net1', events), /net1: cannot listen on .*another process listens there/);
  first?.close();
  await assert.rejects(HostNic.open(0, 'net0', { model: 'virtio', backend: { kind: 'none' }, pcap: path.join(dir, 'no', 'such', 'dir.pcapng') }, {
    sendToMachine: () => true, log: () => {},
  }), /net0: cannot write the pcap file/);
  const eperm = tapAdvice(new NativeError('TUNSETIFF(tap0)', os.constants.errno.EPERM), 'tap0');
  assert.match(eperm, /CAP_NET_ADMIN/);
  assert.match(eperm, /ip tuntap add dev tap0 mode tap user \$USER/);
  assert.match(tapAdvice(new NativeError('open(/dev/net/tun)', os.constants.errno.ENOENT), 'tap0'), /modprobe tun/);
  assert.match(tapAdvice(new NativeError('TUNSETIFF(tap0)', os.constants.errno.EBUSY), 'tap0'), /another process/);
});

test('bridge: a missing bridge, an interface that is not one, and no CAP_NET_ADMIN are clear errors', () => {
  const sysfs = tmp();
  fs.mkdirSync(path.join(sysfs, 'eth9'));
  const events = { onFrame() {}, onWritable() {}, onLog() {} };
  assert.throws(() => TapEndpoint.openOnBridge('br7', 'net0', events, sysfs), /net0: there is no bridge br7 \(make one as root: `sudo ip link add br7 type bridge/);
  assert.throws(() => TapEndpoint.openOnBridge('eth9', 'net0', events, sysfs), /eth9 is not a bridge/);
  const eperm = bridgeAdvice(new NativeError('TUNSETIFF()', os.constants.errno.EPERM), 'br0');
  assert.match(eperm, /needs CAP_NET_ADMIN/);
  assert.match(eperm, /ip link set tap0 master br0 up/);
});
