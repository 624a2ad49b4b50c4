// The TAP backend against the Linux kernel, without a guest (needs root or CAP_NET_ADMIN: run
// `node dist/test/rig/net-tap-host.js` as root on a host with /dev/net/tun, or in L1 through
// `npm run rig -- exec`). It makes a TAP with an address, opens it through HostNic as a VM
// would, sends an ARP request and an ICMP echo request as a guest at 10.98.0.2, and needs the
// kernel's ARP reply and echo reply back, and the four in the pcap per Debian's tshark.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { HostNic } from '../../main/vmm/host/net-host';
import { decodeNetRecord, NET_KIND } from '../../main/vmm/shared/net-messages';

const TAP = 'phchk0';
const MAC = [0x52, 0x54, 0, 1, 2, 3];
const GUEST = [10, 98, 0, 2];
const HOST = [10, 98, 0, 1];
const IP = fs.existsSync('/usr/bin/ip') ? '/usr/bin/ip' : 'ip';

function checksum(b: Uint8Array): number {
  let s = 0;
  for (let i = 0; i < b.length; i += 2) s += (b[i] << 8) | (b[i + 1] ?? 0);
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return ~s & 0xffff;
}

function echoRequest(hostMac: number[]): Uint8Array {
  const icmp = new Uint8Array(40);
  icmp[0] = 8;
  icmp[7] = 1;
  for (let i = 8; i < icmp.length; i++) icmp[i] = i;
  const c = checksum(icmp);
  icmp[2] = c >> 8; icmp[3] = c & 0xff;
  const ip = new Uint8Array(20);
  ip[0] = 0x45; ip[3] = 20 + icmp.length; ip[8] = 64; ip[9] = 1;
  ip.set(GUEST, 12); ip.set(HOST, 16);
  const h = checksum(ip);
  ip[10] = h >> 8; ip[11] = h & 0xff;
  return Uint8Array.from([...hostMac, ...MAC, 8, 0, ...ip, ...icmp]);
}

export async function tapHostCheck(log: (text: string) => void = console.log): Promise<string> {
  execFileSync(IP, ['tuntap', 'add', 'dev', TAP, 'mode', 'tap']);
  const pcap = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-tap-')), 'tap.pcapng');
  try {
    execFileSync(IP, ['link', 'set', TAP, 'up']);
    execFileSync(IP, ['addr', 'add', `${HOST.join('.')}/24`, 'dev', TAP]);
    const got: Uint8Array[] = [];
    const nic = await HostNic.open(0, 'net0', { model: 'virtio', backend: { kind: 'tap', ifname: TAP }, pcap }, {
      sendToMachine: (kind, payload) => {
        if (kind === NET_KIND.FRAME) got.push(decodeNetRecord(payload)!.body.slice());
        return true;
      },
      log,
    });
    const wait = async (what: string, find: () => Uint8Array | undefined): Promise<Uint8Array> => {
      for (let i = 0; i < 200; i++) {
        const f = find();
        if (f) return f;
        await new Promise((r) => setTimeout(r, 10));
      }
      throw new Error(`no ${what} came back from the kernel through ${TAP}`);
    };
    nic.onMachineRecord(NET_KIND.TX_FRAME, Uint8Array.from([...Array(6).fill(0xff), ...MAC, 8, 6, 0, 1, 8, 0, 6, 4, 0, 1, ...MAC, ...GUEST, 0, 0, 0, 0, 0, 0, ...HOST]));
    const arp = await wait('ARP reply', () => got.find((f) => f[12] === 8 && f[13] === 6 && f[21] === 2));
    const hostMac = [...arp.subarray(6, 12)];
    nic.onMachineRecord(NET_KIND.TX_FRAME, echoRequest(hostMac));
    await wait('ICMP echo reply', () => got.find((f) => f[12] === 8 && f[13] === 0 && f[23] === 1 && f[34] === 0));
    await nic.close();
    const tshark = execFileSync('tshark', ['-r', pcap, '-Y', 'arp || icmp', '-T', 'fields', '-e', '_ws.col.Info'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString();
    log(`tshark:\n${tshark}`);
    for (const want of [/Who has 10\.98\.0\.1\?/, /10\.98\.0\.1 is at/, /Echo \(ping\) request/, /Echo \(ping\) reply/]) {
      if (!want.test(tshark)) throw new Error(`tshark does not find ${want} in ${pcap}`);
    }
    return `the kernel answered ARP and ICMP echo through ${TAP}; tshark reads all four in the pcap`;
  } finally {
    try { execFileSync(IP, ['link', 'del', TAP]); } catch { /* already gone */ }
  }
}

if (require.main === module) {
  tapHostCheck().then((detail) => { console.log(`PASS ${detail}`); process.exit(0); }, (e: Error) => { console.log(`FAIL ${e.message}`); process.exit(1); });
}
