// The user backend (libslirp) from the host side, with no KVM: frames we build go in as a
// guest's would, and what libslirp sends back is checked byte by byte — a DHCP OFFER for a
// DISCOVER, an ARP reply for the gateway, a SYN towards the guest when something connects to
// a port forward — plus the pcap file, hostfwd/--nic parsing, and a bounded run of malformed
// frames into slirp_input (it must go on answering afterwards).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { ConfigError, machineConfigFromJson, parseHostForward, parseNic } from '../../main/vmm/config';
import { NetBackendError } from '../../main/vmm/host/net-backends';
import { HostNic } from '../../main/vmm/host/net-host';
import { decodeNetRecord, encodeNetCount, NET_KIND } from '../../main/vmm/shared/net-messages';

const GUEST_MAC = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const BROADCAST = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
const ip = (t: string) => t.split('.').map(Number);

test('hostfwd rules parse as QEMU writes them, and bad ones say what is wrong', () => {
  assert.deepEqual(parseHostForward('tcp::8022-:22', 'x'), { protocol: 'tcp', hostAddr: '', hostPort: 8022, guestAddr: '10.0.2.15', guestPort: 22 });
  assert.deepEqual(parseHostForward('udp:127.0.0.1:5353-10.0.2.16:53', 'x'), { protocol: 'udp', hostAddr: '127.0.0.1', hostPort: 5353, guestAddr: '10.0.2.16', guestPort: 53 });
  assert.deepEqual(parseHostForward('::2222-:22', 'x').protocol, 'tcp');
  const bad: [string, RegExp][] = [
    ['tcp:8022:22', /no "-"/],
    ['sctp::1-:2', /protocol "sctp"/],
    ['tcp::0-:22', /host port "0"/],
    ['tcp::8022-:70000', /guest port "70000"/],
    ['tcp:localhost:8022-:22', /host address "localhost"/],
    ['tcp::8022-22', /no port on the guest side/],
    ['tcp::8022-192.168.1.5:22', /outside the guest network/],
  ];
  for (const [text, why] of bad) {
    assert.throws(() => parseHostForward(text, 'nic'), (e: Error) => e instanceof ConfigError && why.test(e.message) && e.message.includes(text), text);
  }
});

test('--nic user and --nic virtio,user take hostfwd= options; the config file takes a hostfwd list', () => {
  assert.deepEqual(parseNic('user,hostfwd=tcp::8022-:22,hostfwd=udp::5000-:5000'), { model: 'virtio', backend: { kind: 'user', hostfwd: ['tcp::8022-:22', 'udp::5000-:5000'] } });
  assert.deepEqual(parseNic('virtio,user,pcap=a.pcapng'), { model: 'virtio', backend: { kind: 'user', hostfwd: [] }, pcap: 'a.pcapng' });
  assert.throws(() => parseNic('virtio,tap=tap0,hostfwd=tcp::1-:2'), /hostfwd= goes with the user backend/);
  assert.throws(() => parseNic('virtio,user,tap=tap0'), /one backend per NIC/);
  assert.throws(() => parseNic('user,hostfwd=tcp::80x-:22'), /host port "80x"/);
  const config = machineConfigFromJson({ nics: [{ model: 'virtio', backend: { kind: 'user', hostfwd: ['tcp:127.0.0.1:8022-:22'] } }] }, 'vm.json');
  assert.deepEqual(config.nics?.[0].backend, { kind: 'user', hostfwd: ['tcp:127.0.0.1:8022-:22'] });
  assert.throws(() => machineConfigFromJson({ nics: [{ model: 'virtio', backend: { kind: 'user', hostfwd: 'tcp::1-:2' } }] }, 'vm.json'), /hostfwd must be a list of strings/);
  assert.throws(() => machineConfigFromJson({ nics: [{ model: 'virtio', backend: { kind: 'user', hostfwd: ['tcp::1-:2', 'tcp::1-:3'] } }] }, 'vm.json'), /hostfwd\[1\]: host tcp port 1 is forwarded by hostfwd\[0\]/);
  assert.throws(() => machineConfigFromJson({ nics: [{ model: 'virtio', backend: { kind: 'user', net: '10.1.0.0' } }] }, 'vm.json'), /unknown field "net"/);
});

function checksum(bytes: Uint8Array, from: number, to: number): number {
  let sum = 0;
  for (let i = from; i < to; i += 2) sum += (bytes[i] << 8) | (i + 1 < to ? bytes[i + 1] : 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** Ethernet + IPv4 + UDP (no UDP checksum, which IPv4 allows) around `payload`. */
function udpFrame(src: number[], dst: number[], sport: number, dport: number, payload: Uint8Array): Uint8Array {
  const f = new Uint8Array(14 + 20 + 8 + payload.length);
  const v = new DataView(f.buffer);
  f.set(BROADCAST, 0); f.set(GUEST_MAC, 6); v.setUint16(12, 0x0800);
  f[14] = 0x45; v.setUint16(16, 20 + 8 + payload.length); f[22] = 64; f[23] = 17;
  f.set(src, 26); f.set(dst, 30);
  v.setUint16(24, checksum(f, 14, 34));
  v.setUint16(34, sport); v.setUint16(36, dport); v.setUint16(38, 8 + payload.length);
  f.set(payload, 42);
  return f;
}

function dhcpDiscover(xid: number): Uint8Array {
  const b = new Uint8Array(548);
  const v = new DataView(b.buffer);
  b[0] = 1; b[1] = 1; b[2] = 6; v.setUint32(4, xid); v.setUint16(10, 0x8000);
  b.set(GUEST_MAC, 28);
  b.set([99, 130, 83, 99], 236);
  b.set([53, 1, 1, 255], 240);
  return udpFrame([0, 0, 0, 0], [255, 255, 255, 255], 68, 67, b);
}

function arpRequest(senderIp: number[], targetIp: number[]): Uint8Array {
  const f = new Uint8Array(60);
  const v = new DataView(f.buffer);
  f.set(BROADCAST, 0); f.set(GUEST_MAC, 6); v.setUint16(12, 0x0806);
  v.setUint16(14, 1); v.setUint16(16, 0x0800); f[18] = 6; f[19] = 4; v.setUint16(20, 1);
  f.set(GUEST_MAC, 22); f.set(senderIp, 28); f.set(targetIp, 38);
  return f;
}

/** The DHCP options of a BOOTP reply inside an Ethernet frame, or null if it is not one. */
function dhcpReply(frame: Uint8Array): { xid: number; yiaddr: string; options: Map<number, number[]> } | null {
  const v = new DataView(frame.buffer, frame.byteOffset);
  if (frame.length < 42 + 240 || v.getUint16(12) !== 0x0800 || frame[23] !== 17 || v.getUint16(36) !== 68) return null;
  const bootp = 14 + (frame[14] & 0xf) * 4 + 8;
  const options = new Map<number, number[]>();
  for (let at = bootp + 240; at < frame.length && frame[at] !== 255;) {
    if (frame[at] === 0) { at++; continue; }
    options.set(frame[at], [...frame.subarray(at + 2, at + 2 + frame[at + 1])]);
    at += 2 + frame[at + 1];
  }
  return { xid: v.getUint32(bootp + 4), yiaddr: [...frame.subarray(bootp + 16, bootp + 20)].join('.'), options };
}

/** A HostNic on the user backend with a fake machine that acknowledges every frame. */
async function userNic(hostfwd: string[], pcap?: string) {
  const frames: Uint8Array[] = [];
  const logs: string[] = [];
  let waiter: (() => void) | null = null;
  let nic: HostNic | null = null;
  nic = await HostNic.open(0, 'net0', { model: 'virtio', backend: { kind: 'user', hostfwd }, ...(pcap ? { pcap } : {}) }, {
    sendToMachine: (kind, payload) => {
      if (kind === NET_KIND.FRAME) {
        frames.push(decodeNetRecord(payload)!.body.slice());
        // The guest took it: the credit goes back at once, as a quick guest would.
        queueMicrotask(() => nic?.onMachineRecord(NET_KIND.RX_CREDIT, decodeNetRecord(encodeNetCount(0, 1))!.body));
        waiter?.();
      }
      return true;
    },
    log: (t) => logs.push(t),
  });
  const send = (frame: Uint8Array) => nic!.onMachineRecord(NET_KIND.TX_FRAME, frame);
  /** The first frame (from `from` on) that `match` accepts; rejects after 5 s. */
  const waitFor = <T>(match: (f: Uint8Array) => T | null, from = 0): Promise<T> => new Promise((resolve, reject) => {
    let seen = from;
    const timer = setTimeout(() => { waiter = null; reject(new Error(`no matching frame among ${frames.length - from}; log: ${logs.join('; ')}`)); }, 5000);
    const check = () => {
      for (; seen < frames.length; seen++) {
        const r = match(frames[seen]);
        if (r !== null) { clearTimeout(timer); waiter = null; resolve(r); return; }
      }
    };
    waiter = check;
    check();
  });
  return { nic, frames, logs, send, waitFor };
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

test('libslirp answers DHCP DISCOVER with an OFFER of 10.0.2.15 (router 10.0.2.2, DNS 10.0.2.3) and ARP for the gateway; the pcap file has both ways', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-slirp-'));
  const pcap = path.join(dir, 'net0.pcapng');
  const u = await userNic([], pcap);
  try {
    assert.equal(u.nic.description, 'user');
    u.send(dhcpDiscover(0x1234abcd));
    const offer = await u.waitFor((f) => dhcpReply(f));
    assert.equal(offer.xid, 0x1234abcd);
    assert.equal(offer.yiaddr, '10.0.2.15');
    assert.deepEqual(offer.options.get(53), [2], 'DHCP message type OFFER');
    assert.deepEqual(offer.options.get(3), ip('10.0.2.2'));
    assert.deepEqual(offer.options.get(6), ip('10.0.2.3'));
    assert.deepEqual(offer.options.get(1), ip('255.255.255.0'));

    const mark = u.frames.length;
    u.send(arpRequest(ip('10.0.2.15'), ip('10.0.2.2')));
    const reply = await u.waitFor((f) => {
      const v = new DataView(f.buffer, f.byteOffset);
      return f.length >= 42 && v.getUint16(12) === 0x0806 && v.getUint16(20) === 2 ? f : null;
    }, mark);
    assert.deepEqual([...reply.subarray(28, 32)], ip('10.0.2.2'), 'sender is the gateway');
    assert.deepEqual([...reply.subarray(0, 6)], GUEST_MAC, 'sent to us');
    assert.deepEqual([...reply.subarray(38, 42)], ip('10.0.2.15'));
    assert.deepEqual([...reply.subarray(22, 28)], [...reply.subarray(6, 12)], 'the gateway MAC is the frame source');
  } finally {
    await u.nic.close();
  }
  const bytes = fs.readFileSync(pcap);
  // Section header, interface description, then one enhanced packet block (type 6) per frame.
  let packets = 0;
  for (let at = 0; at + 8 <= bytes.length; at += bytes.readUInt32LE(at + 4)) if (bytes.readUInt32LE(at) === 6) packets++;
  assert.ok(packets >= 4, `pcap has ${packets} packets (2 guest frames, 2 replies)`);
  fs.rmSync(dir, { recursive: true });
});

test('a TCP connect to a hostfwd port reaches the guest side as a SYN to 10.0.2.15:22', async () => {
  const port = await freePort();
  const u = await userNic([`tcp:127.0.0.1:${port}-:22`]);
  const client = new net.Socket();
  try {
    assert.match(u.nic.description, new RegExp(`tcp 127\\.0\\.0\\.1:${port} -> 10\\.0\\.2\\.15:22`));
    // slirp learns the guest's MAC from its ARP request, as it would after DHCP.
    u.send(arpRequest(ip('10.0.2.15'), ip('10.0.2.2')));
    await u.waitFor((f) => (new DataView(f.buffer, f.byteOffset).getUint16(12) === 0x0806 ? true : null));
    const mark = u.frames.length;
    client.on('error', () => {});
    client.connect(port, '127.0.0.1');
    const syn = await u.waitFor((f) => {
      const v = new DataView(f.buffer, f.byteOffset);
      if (f.length < 54 || v.getUint16(12) !== 0x0800 || f[23] !== 6) return null;
      const tcp = 14 + (f[14] & 0xf) * 4;
      return (f[tcp + 13] & 0x12) === 0x02 ? { dst: [...f.subarray(30, 34)], dport: v.getUint16(tcp + 2), mac: [...f.subarray(0, 6)] } : null;
    }, mark);
    assert.deepEqual(syn, { dst: ip('10.0.2.15'), dport: 22, mac: GUEST_MAC });
  } finally {
    client.destroy();
    await u.nic.close();
  }
});

test('a taken hostfwd port is a clear error before boot', async () => {
  const holder = net.createServer();
  await new Promise<void>((r) => holder.listen(0, '127.0.0.1', () => r()));
  const port = (holder.address() as net.AddressInfo).port;
  try {
    await assert.rejects(userNic([`tcp:127.0.0.1:${port}-:22`]), (e: Error) => e instanceof NetBackendError
      && e.message.includes(`net0: cannot forward slirp_add_hostfwd: cannot listen on tcp 127.0.0.1:${port}`));
  } finally {
    holder.close();
  }
});

test('malformed frames into slirp_input do not crash it, and it still answers ARP afterwards (bounded)', async () => {
  const u = await userNic([]);
  try {
    let seed = 0x2545f491;
    const rand = (n: number) => {
      seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5;
      return (seed >>> 0) % n;
    };
    const seeds = [dhcpDiscover(1), arpRequest(ip('10.0.2.15'), ip('10.0.2.2')),
      udpFrame(ip('10.0.2.15'), ip('10.0.2.3'), 1000, 53, new Uint8Array(40)),
      udpFrame(ip('10.0.2.15'), ip('10.0.2.2'), 1000, 69, new Uint8Array([0, 1, 0x2e, 0x2e, 0x2f, 0, 0x6f, 0x63, 0x74, 0x65, 0x74, 0]))];
    const rounds = Number(process.env.PORTHOLE_FUZZ_ROUNDS ?? 3000);
    for (let i = 0; i < rounds; i++) {
      const base = seeds[rand(seeds.length)];
      let frame: Uint8Array;
      switch (rand(4)) {
        case 0: frame = base.slice(0, 14 + rand(base.length)); break; // truncated
        case 1: frame = Uint8Array.from({ length: rand(1600) }, () => rand(256)); break; // noise
        default: {
          frame = base.slice();
          for (let k = 1 + rand(8); k > 0; k--) frame[14 + rand(frame.length - 14)] = rand(256); // bytes flipped past the Ethernet header
        }
      }
      u.send(frame);
      if (i % 200 === 0) await new Promise((r) => setImmediate(r));
    }
    const mark = u.frames.length;
    u.send(arpRequest(ip('10.0.2.15'), ip('10.0.2.2')));
    await u.waitFor((f) => (new DataView(f.buffer, f.byteOffset).getUint16(12) === 0x0806 && f[21] === 2 ? true : null), mark);
  } finally {
    await u.nic.close();
  }
});

test('a missing libslirp is one sentence saying which package to install', async () => {
  const { loadSlirp, SlirpMissingError } = await import('../../native/slirp');
  assert.throws(() => loadSlirp('libslirp-porthole-absent.so.0'), (e: Error) => e instanceof SlirpMissingError
    && /^libslirp is not installed \(libslirp-porthole-absent\.so\.0 could not be loaded: .*\); install it with `sudo apt-get install libslirp0`$/s.test(e.message));
});
