// The user backend (libslirp) from the host side, with no KVM: frames we build go in as a
// guest's would, and what libslirp sends back is checked byte by byte — a DHCP OFFER for a
// DISCOVER, an ARP reply for the gateway, a SYN towards the guest when something connects to
// a port forward — plus the pcap file, hostfwd/--nic parsing, and the pause that holds slirp's
// sockets while the NIC's window is full. Malformed frames: net-user-fuzz.test.ts.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { ConfigError, machineConfigFromJson, parseHostForward, parseNic } from '../../main/vmm/config';
import { NetBackendError, openNetBackend } from '../../main/vmm/host/net-backends';
import { in6Addr } from '../../native/slirp';
import { arpRequest, dhcpDiscover, dhcpReply, freePort, GUEST_LINK_LOCAL, GUEST_MAC, icmp6Frame, icmp6Of, ip, userNic } from '../helpers/slirp-guest';

test('hostfwd rules parse as QEMU writes them, and bad ones say what is wrong', () => {
  assert.deepEqual(parseHostForward('tcp::8022-:22', 'x'), { protocol: 'tcp', hostAddr: '', hostPort: 8022, guestAddr: '10.0.2.15', guestPort: 22 });
  assert.deepEqual(parseHostForward('udp:127.0.0.1:5353-10.0.2.16:53', 'x'), { protocol: 'udp', hostAddr: '127.0.0.1', hostPort: 5353, guestAddr: '10.0.2.16', guestPort: 53 });
  assert.deepEqual(parseHostForward('::2222-:22', 'x').protocol, 'tcp');
  assert.deepEqual(parseHostForward('tcp:[::1]:8022-[fec0::5054:ff:fe12:3456]:22', 'x'), { protocol: 'tcp', hostAddr: '::1', hostPort: 8022, guestAddr: 'fec0::5054:ff:fe12:3456', guestPort: 22 });
  assert.deepEqual(parseHostForward('udp::5353-[fec0::15]:53', 'x'), { protocol: 'udp', hostAddr: '', hostPort: 5353, guestAddr: 'fec0::15', guestPort: 53 });
  const bad: [string, RegExp][] = [
    ['tcp:8022:22', /no "-"/],
    ['sctp::1-:2', /protocol "sctp"/],
    ['tcp::0-:22', /host port "0"/],
    ['tcp::8022-:70000', /guest port "70000"/],
    ['tcp:localhost:8022-:22', /host address "localhost"/],
    ['tcp::8022-22', /no port on the guest side/],
    ['tcp::8022-192.168.1.5:22', /outside the guest network/],
    ['tcp:[::1]:8022-:22', /names no guest address/],
    ['tcp:[::1]:8022-[fe80::1]:22', /outside the guest network fec0::\/64/],
    ['tcp:[::1]:8022-10.0.2.15:22', /mixes IPv6 on the host side with IPv4/],
    ['tcp:127.0.0.1:8022-[fec0::15]:22', /mixes IPv4 on the host side with IPv6/],
    ['tcp:[::g]:8022-[fec0::15]:22', /host address "::g", which is not an IPv6 address/],
    ['tcp:[::1]8022-[fec0::15]:22', /goes as \[ADDR\]:PORT/],
    ['tcp:::1:8022-[fec0::15]:22', /goes in brackets/],
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

test('IPv6 addresses in text become in6_addr bytes; anything else is refused', () => {
  assert.deepEqual(in6Addr('fec0::2'), [0xfe, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
  assert.deepEqual(in6Addr('::'), new Array(16).fill(0));
  assert.deepEqual(in6Addr('1:2:3:4:5:6:7:8'), [0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 0, 8]);
  assert.deepEqual(in6Addr('fe80::5054:ff:fe12:3456'), GUEST_LINK_LOCAL);
  for (const bad of ['', '1::2::3', '1:2:3:4:5:6:7', '1:2:3:4:5:6:7:8:9', 'fec0::g', '10.0.2.2', '1:2:3:4::5:6:7:8']) {
    assert.throws(() => in6Addr(bad), RangeError, bad);
  }
});

test('IPv6 on the user network (as QEMU\'s): a router solicitation gets an advertisement of fec0::/64 for SLAAC, and fec0::2 answers ping', async () => {
  const u = await userNic([]);
  try {
    const allRouters = [0xff, 0x02, ...new Array(13).fill(0), 2];
    // Router Solicitation with our link-layer address (option 1), from the link-local address.
    u.send(icmp6Frame([0x33, 0x33, 0, 0, 0, 2], GUEST_LINK_LOCAL, allRouters, [133, 0, 0, 0, 0, 0, 0, 0, 1, 1, ...GUEST_MAC]));
    const ra = await u.waitFor((f) => { const m = icmp6Of(f); return m && m.type === 134 ? m : null; });
    const options = new Map<number, Uint8Array>();
    for (let at = 12; at + 2 <= ra.body.length && ra.body[at + 1] > 0; at += ra.body[at + 1] * 8) options.set(ra.body[at], ra.body.subarray(at, at + ra.body[at + 1] * 8));
    const prefix = options.get(3);
    assert.ok(prefix, 'a prefix information option');
    assert.equal(prefix[2], 64, 'prefix length');
    assert.ok(prefix[3] & 0x40, 'autonomous (SLAAC) flag');
    assert.deepEqual([...prefix.subarray(16, 32)], in6Addr('fec0::'));

    const mark = u.frames.length;
    const gatewayMac = [...u.frames[u.frames.length - 1].subarray(6, 12)];
    u.send(icmp6Frame(gatewayMac, GUEST_LINK_LOCAL, in6Addr('fec0::2'), [128, 0, 0, 0, 0x12, 0x34, 0, 1, 0x70, 0x6f, 0x72, 0x74], 64));
    const reply = await u.waitFor((f) => { const m = icmp6Of(f); return m && m.type === 129 ? m : null; }, mark);
    assert.deepEqual(reply.src, in6Addr('fec0::2'));
    assert.deepEqual(reply.dst, GUEST_LINK_LOCAL);
    assert.deepEqual([...reply.body], [0x12, 0x34, 0, 1, 0x70, 0x6f, 0x72, 0x74], 'identifier, sequence and data echoed');
  } finally {
    await u.nic.close();
  }
});

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

test('an IPv6 forward: a TCP connect to [::1]:PORT reaches the guest side as a SYN to its fec0:: address, port 22', async () => {
  const port = await freePort();
  const guest = in6Addr('fec0::5054:ff:fe12:3456');
  const u = await userNic([`tcp:[::1]:${port}-[fec0::5054:ff:fe12:3456]:22`]);
  const client = new net.Socket();
  try {
    assert.match(u.nic.description, new RegExp(`tcp \\[::1\\]:${port} -> \\[fec0::5054:ff:fe12:3456\\]:22`));
    // slirp learns the guest's MAC from its neighbour solicitation for the gateway (as after SLAAC).
    const gateway = in6Addr('fec0::2');
    const solicitedNode = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, ...gateway.slice(13)];
    u.send(icmp6Frame([0x33, 0x33, 0xff, ...gateway.slice(13)], guest, solicitedNode, [135, 0, 0, 0, 0, 0, 0, 0, ...gateway, 1, 1, ...GUEST_MAC]));
    await u.waitFor((f) => { const m = icmp6Of(f); return m && m.type === 136 ? m : null; });
    const mark = u.frames.length;
    client.on('error', () => {});
    client.connect(port, '::1');
    const syn = await u.waitFor((f) => {
      const v = new DataView(f.buffer, f.byteOffset);
      if (f.length < 74 || v.getUint16(12) !== 0x86dd || f[20] !== 6) return null;
      const tcp = 54;
      return (f[tcp + 13] & 0x12) === 0x02 ? { dst: [...f.subarray(38, 54)], dport: v.getUint16(tcp + 2), mac: [...f.subarray(0, 6)] } : null;
    }, mark);
    assert.deepEqual(syn, { dst: guest, dport: 22, mac: GUEST_MAC });
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

test('a missing libslirp is one sentence saying which package to install', async () => {
  const { loadSlirp, SlirpMissingError } = await import('../../native/slirp');
  assert.throws(() => loadSlirp('libslirp-porthole-absent.so.0'), (e: Error) => e instanceof SlirpMissingError
    && /^libslirp is not installed \(libslirp-porthole-absent\.so\.0 could not be loaded: .*\); install it with `sudo apt-get install libslirp0`$/s.test(e.message));
});

test('while paused the user backend leaves slirp\'s sockets alone: a connection to a forward reaches the guest only on resume', async () => {
  const port = await freePort();
  const frames: Uint8Array[] = [];
  let arrived: () => void = () => {};
  const endpoint = (await openNetBackend({ kind: 'user', hostfwd: [`tcp:127.0.0.1:${port}-:22`] }, 'net0', {
    onFrame: (f) => { frames.push(f); arrived(); },
    onWritable: () => {},
    onLog: () => {},
  }))!;
  const until = (n: number) => new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${frames.length} of ${n} frames`)), 5000);
    arrived = () => { if (frames.length >= n) { clearTimeout(timer); resolve(); } };
    arrived();
  });
  const client = new net.Socket();
  client.on('error', () => {});
  try {
    endpoint.send(arpRequest(ip('10.0.2.15'), ip('10.0.2.2')));
    await until(1);
    endpoint.pauseReceive();
    const connected = new Promise<void>((resolve) => client.connect(port, '127.0.0.1', () => resolve()));
    await connected; // the kernel completes the handshake on slirp's listening socket by itself
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(frames.length, 1, 'nothing reaches the guest while paused');
    endpoint.resumeReceive();
    await until(2);
    const syn = frames[1];
    assert.equal(new DataView(syn.buffer, syn.byteOffset).getUint16(12), 0x0800);
    assert.equal(syn[23], 6, 'TCP');
    assert.equal(syn[14 + 20 + 13] & 0x12, 0x02, 'SYN');
  } finally {
    client.destroy();
    endpoint.close();
  }
});

test('slirp_pollfds_fill hands back the forward\'s listening socket and shortens the poll to slirp\'s slow timer', async () => {
  const { Slirp, slirpVersion, SLIRP_POLL_IN } = await import('../../native/slirp');
  assert.match(slirpVersion(), /^4\./);
  const port = await freePort();
  const s = new Slirp({ network: '10.0.2.0', netmask: '255.255.255.0', host: '10.0.2.2', dhcpStart: '10.0.2.15', dns: '10.0.2.3' },
    { sendPacket: () => {}, guestError: () => {}, notify: () => {} });
  try {
    assert.deepEqual(s.pollfdsFill(1000), { fds: [], timeoutMs: 1000 }, 'nothing to watch, no timer');
    s.addHostForward(false, '127.0.0.1', port, '10.0.2.15', 22);
    const fill = s.pollfdsFill(1000);
    assert.equal(fill.fds.length, 1);
    assert.ok(fill.fds[0].events & SLIRP_POLL_IN);
    assert.ok(fill.timeoutMs < 1000, `timeout ${fill.timeoutMs} ms`);
  } finally {
    s.close();
  }
});
