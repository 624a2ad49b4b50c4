// Malformed guest frames into slirp_input (libslirp through the user backend), bounded here and
// scaled by PORTHOLE_FUZZ_SCALE under npm run fuzz: truncated, random and bit-flipped variants
// of DHCP, ARP, DNS and TFTP frames. The process must not crash, and slirp must still answer ARP.
import { test } from 'node:test';
import { arpRequest, dhcpDiscover, ip, udpFrame, userNic } from '../helpers/slirp-guest';

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
    const rounds = 3000 * Math.max(1, Number(process.env.PORTHOLE_FUZZ_SCALE ?? 1));
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

