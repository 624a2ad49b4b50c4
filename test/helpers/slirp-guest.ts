// Ethernet frames a guest would send (DHCP DISCOVER, ARP, UDP) and a HostNic on the user
// backend (libslirp) with a fake machine that takes every frame: for the host-side tests.
import net from 'node:net';
import { HostNic } from '../../main/vmm/host/net-host';
import { decodeNetRecord, encodeNetCount, NET_KIND } from '../../main/vmm/shared/net-messages';

export const GUEST_MAC = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
export const BROADCAST = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
export const ip = (t: string) => t.split('.').map(Number);

export function checksum(bytes: Uint8Array, from: number, to: number): number {
  let sum = 0;
  for (let i = from; i < to; i += 2) sum += (bytes[i] << 8) | (i + 1 < to ? bytes[i + 1] : 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** Ethernet + IPv4 + UDP (no UDP checksum, which IPv4 allows) around `payload`. */
export function udpFrame(src: number[], dst: number[], sport: number, dport: number, payload: Uint8Array): Uint8Array {
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

export function dhcpDiscover(xid: number): Uint8Array {
  const b = new Uint8Array(548);
  const v = new DataView(b.buffer);
  b[0] = 1; b[1] = 1; b[2] = 6; v.setUint32(4, xid); v.setUint16(10, 0x8000);
  b.set(GUEST_MAC, 28);
  b.set([99, 130, 83, 99], 236);
  b.set([53, 1, 1, 255], 240);
  return udpFrame([0, 0, 0, 0], [255, 255, 255, 255], 68, 67, b);
}

export function arpRequest(senderIp: number[], targetIp: number[]): Uint8Array {
  const f = new Uint8Array(60);
  const v = new DataView(f.buffer);
  f.set(BROADCAST, 0); f.set(GUEST_MAC, 6); v.setUint16(12, 0x0806);
  v.setUint16(14, 1); v.setUint16(16, 0x0800); f[18] = 6; f[19] = 4; v.setUint16(20, 1);
  f.set(GUEST_MAC, 22); f.set(senderIp, 28); f.set(targetIp, 38);
  return f;
}

/** The DHCP options of a BOOTP reply inside an Ethernet frame, or null if it is not one. */
export function dhcpReply(frame: Uint8Array): { xid: number; yiaddr: string; options: Map<number, number[]> } | null {
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
export async function userNic(hostfwd: string[], pcap?: string) {
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

export function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}


/** The guest's IPv6 link-local address (from GUEST_MAC, EUI-64). */
export const GUEST_LINK_LOCAL = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x50, 0x54, 0x00, 0xff, 0xfe, 0x12, 0x34, 0x56];

/** Ethernet + IPv6 + ICMPv6 (`icmp`: type, code, 2 checksum bytes, body), the checksum over the pseudo-header filled in. */
export function icmp6Frame(dstMac: number[], src: number[], dst: number[], icmp: number[], hopLimit = 255): Uint8Array {
  const f = new Uint8Array(14 + 40 + icmp.length);
  const v = new DataView(f.buffer);
  f.set(dstMac, 0); f.set(GUEST_MAC, 6); v.setUint16(12, 0x86dd);
  f[14] = 0x60; v.setUint16(18, icmp.length); f[20] = 58; f[21] = hopLimit;
  f.set(src, 22); f.set(dst, 38); f.set(icmp, 54);
  const pseudo = new Uint8Array(40 + icmp.length);
  const pv = new DataView(pseudo.buffer);
  pseudo.set(src, 0); pseudo.set(dst, 16); pv.setUint32(32, icmp.length); pseudo[39] = 58; pseudo.set(icmp, 40);
  pv.setUint16(42, 0);
  v.setUint16(56, checksum(pseudo, 0, pseudo.length));
  return f;
}

/** The ICMPv6 message (type, code, body) in an Ethernet frame, or null if it is not one. */
export function icmp6Of(frame: Uint8Array): { type: number; src: number[]; dst: number[]; body: Uint8Array } | null {
  const v = new DataView(frame.buffer, frame.byteOffset);
  if (frame.length < 14 + 40 + 4 || v.getUint16(12) !== 0x86dd || frame[20] !== 58) return null;
  return { type: frame[54], src: [...frame.subarray(22, 38)], dst: [...frame.subarray(38, 54)], body: frame.subarray(58, 54 + v.getUint16(18)) };
}
