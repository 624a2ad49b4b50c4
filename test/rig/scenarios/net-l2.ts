// Porthole's NICs as Linux's own drivers see them, each on a TAP in L1: L1 (root) makes two TAPs
// with addresses, Porthole boots the L2 kit with --nic virtio,tap=…,pcap=… (00:10.0, virtio_net)
// and --nic ne2k_pci,tap=…,pcap=… (00:11.0, the NE2000 PCI that ne2k-pci and 8390 drive); each
// binds with the MAC we gave, L2 and L1 ping each other both ways over it, megabytes go each way
// over TCP (L2's busybox nc, and this scenario's Node in L1) with md5 compared, and Debian's
// tshark (the rig host's, through L1's /usr) reads each pcap: ICMP echo both ways, TCP, nothing
// malformed.
import type { ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { SerialConsole } from '../console';
import { l1ProjectDir } from '../paths';
import { consoleLogger, kitChecks, scenario, type ScenarioContext } from '../scenario';

/** One NIC under test: its TAP and subnet in L1, its PCI function and driver in L2. */
interface NicUnderTest {
  label: string;
  model: 'virtio' | 'ne2k_pci';
  tap: string;
  l1Ip: string;
  l2Ip: string;
  mac: string;
  pci: string;
  bytes: number;
  toL2Port: number;
  toL1Port: number;
  pcap: string;
}

const KIT_MODULES = 'virtio_pci,virtio_net,ne2k_pci';
// Ports no Wireshark dissector claims (5000 is IPA's: tshark decoded the random bytes as malformed GSM Abis).
const NICS: Omit<NicUnderTest, 'pcap'>[] = [
  { label: 'virtio-net', model: 'virtio', tap: 'phtap0', l1Ip: '10.99.0.1', l2Ip: '10.99.0.2', mac: '52:54:00:4e:45:54', pci: '0000:00:10.0', bytes: 4 * 1024 * 1024, toL2Port: 40001, toL1Port: 40002 },
  // PIO for every byte (a word or dword per access): fewer megabytes keep the run short.
  { label: 'ne2k-pci', model: 'ne2k_pci', tap: 'phtap1', l1Ip: '10.98.0.1', l2Ip: '10.98.0.2', mac: '52:54:00:4e:45:32', pci: '0000:00:11.0', bytes: 2 * 1024 * 1024, toL2Port: 40003, toL1Port: 40004 },
];

scenario('net-l2', async (ctx) => {
  const cli = `${l1ProjectDir}/bin/porthole`;
  if (!fs.existsSync(`${l1ProjectDir}/dist/main/cli/main.js`)) throw new Error('Porthole is not built (dist/main/cli/main.js is missing): run npm run build');
  if (!fs.existsSync('/usr/bin/tshark')) throw new Error('tshark is not installed on the rig host (scripts/fixtures.sh installs it)');
  // iproute2 from the rig host's /usr (busybox's ip has no tuntap); ping is L1's busybox.
  const ip = '/usr/bin/ip';
  const nics: NicUnderTest[] = NICS.map((n) => ({ ...n, pcap: path.join(ctx.outDir, `net-l2-${n.model}.pcapng`) }));
  ctx.exec('sh', ['-c', 'modprobe tun 2>/dev/null; true']);
  for (const n of nics) {
    ctx.exec('sh', ['-c', `${ip} link del ${n.tap} 2>/dev/null; ${ip} tuntap add dev ${n.tap} mode tap && ${ip} link set ${n.tap} up && ${ip} addr add ${n.l1Ip}/24 dev ${n.tap}`]);
    fs.rmSync(n.pcap, { force: true });
  }
  const args = [
    cli, 'run', '--kernel', ctx.kit.vmlinuz, '--initrd', ctx.kit.initrd,
    '--append', `console=ttyS0 quiet panic=-1 kit.modules=${KIT_MODULES}`, '--mem', '256M', '--cpus', '1',
    '--serial', 'stdio', '--verbose', '--stats',
    ...nics.flatMap((n) => ['--nic', `${n.model},mac=${n.mac},tap=${n.tap},pcap=${n.pcap}`]),
  ];
  ctx.log(`node ${args.join(' ')}`);
  const vm = ctx.spawn(process.execPath, args, { env: { ...process.env, PORTHOLE_FORBID_KOFFI_VIEW: '1' } });
  const stderr: string[] = [];
  vm.stderr!.on('data', (d: Buffer) => {
    for (const l of d.toString().split('\n')) {
      if (!l.trim()) continue;
      stderr.push(l);
      ctx.log(`porthole: ${l}`);
    }
  });
  try {
    return await runChecks(ctx, vm, nics, stderr);
  } finally {
    vm.kill('SIGKILL');
    ctx.exec('sh', ['-c', `${nics.map((n) => `${ip} link del ${n.tap} 2>/dev/null`).join('; ')}; true`]);
  }
});

type Verdict = { fail: (why: string) => void; found: string[] };

async function runChecks(ctx: ScenarioContext, vm: ChildProcess, nics: NicUnderTest[], stderr: string[]): Promise<string> {
  const exited = new Promise<string>((resolve) => vm.once('exit', (code, sig) => resolve(sig ?? `code ${code}`)));
  const con = SerialConsole.fromChild(vm, { name: 'L2 on Porthole\'s COM1', onOutput: consoleLogger('L2| ') });
  const failures: string[] = [];
  const found: string[] = [];
  const fail = (why: string) => {
    ctx.log(`CHECK FAILED: ${why}`);
    failures.push(why);
  };
  await con.waitForShell(420000);
  await con.run(`for i in $(seq 60); do [ -e /sys/class/net/eth${nics.length - 1} ] && break; sleep 0.5; done`);
  await kitChecks(ctx, con, 1, 60000);

  for (const nic of nics) await nicChecks(ctx, con, nic, { fail, found });

  con.send('poweroff -f\n');
  let timer: NodeJS.Timeout | undefined;
  const end = await Promise.race([exited, new Promise<string>((resolve) => { timer = setTimeout(() => resolve('timeout'), 120000); })]);
  clearTimeout(timer);
  if (end !== 'code 0') fail(`after "poweroff -f" in L2, porthole ended with ${end}, expected exit code 0`);
  const counters = stderr.filter((l) => /^\s*net\d\/[a-z-]+\s/.test(l)).map((l) => l.trim().replace(/\s+/g, ' ')).join(', ');
  if (counters) ctx.log(`NIC counters: ${counters}`);
  for (const nic of nics) pcapChecks(ctx, nic, { fail, found });
  if (failures.length > 0) throw new Error(`${failures.length} check(s) failed: ${failures.join('; ')}`);
  return found.join('; ');
}

/** The driver binds the NIC with our MAC; pings both ways; TCP both ways with md5 compared. */
async function nicChecks(ctx: ScenarioContext, con: SerialConsole, nic: NicUnderTest, { fail, found }: Verdict): Promise<void> {
  const { label, l1Ip, l2Ip, mac, bytes } = nic;
  const d = `/sys/bus/pci/devices/${nic.pci}`;
  // virtio's netdev hangs below the virtio device, the NE2000's below the PCI function.
  const netDir = nic.model === 'virtio' ? `${d}/virtio*/net` : `${d}/net`;
  const dev = await con.run(`d=${d}; echo "driver $(basename $(readlink $d/driver))"; echo "vdriver $(basename $(readlink $d/virtio*/driver 2>/dev/null) 2>/dev/null)"; i=$(ls ${netDir} | head -1); echo "if $i"; echo "mac $(cat /sys/class/net/$i/address)"; echo "irq $(cat $d/irq)"; grep -E "eth|ne2k|virtio" /proc/interrupts`);
  ctx.log(`${label} ${nic.pci}:\n${dev.output}`);
  const ifname = /^if (eth\d+)$/m.exec(dev.output)?.[1];
  if (nic.model === 'virtio') {
    if (!/^driver virtio-pci$/m.test(dev.output)) fail('virtio-pci did not bind 00:10.0');
    if (!/^vdriver virtio_net$/m.test(dev.output)) fail('virtio_net did not bind the virtio device of 00:10.0');
  } else if (!/^driver ne2k-pci$/m.test(dev.output)) fail(`ne2k-pci did not bind ${nic.pci}`);
  if (!ifname) {
    fail(`${label}: no network interface under ${nic.pci}`);
    return;
  }
  if (!new RegExp(`^mac ${mac}$`, 'm').test(dev.output)) fail(`${label}: ${ifname}'s MAC is not ${mac}`);
  else found.push(`${label}: ${nic.model === 'virtio' ? 'virtio_net' : 'ne2k-pci'} on ${nic.pci.slice(5)}, ${ifname} with MAC ${mac}`);

  await con.runOk(`ip link set ${ifname} up && ip addr add ${l2Ip}/24 dev ${ifname}`);
  const ping2 = await con.run(`ping -c 3 -W 10 ${l1Ip}`, 90000);
  ctx.log(`${label}: L2 ping L1:\n${ping2.output}`);
  if (ping2.status !== 0) fail(`${label}: L2 could not ping L1 (${l1Ip}): ${ping2.output.trim().split('\n').slice(-2).join(' ')}`);
  else found.push(`L2 pings L1: ${/(\d+) packets received/.exec(ping2.output)?.[0] ?? 'ok'}`);
  let ping1 = '';
  try {
    ping1 = ctx.exec('sh', ['-c', `ping -c 3 -W 10 ${l2Ip} 2>&1`]);
    found.push(`L1 pings L2: ${/(\d+) received/.exec(ping1)?.[0] ?? 'ok'}`);
  } catch (e) {
    fail(`${label}: L1 could not ping L2 (${l2Ip}): ${(e as Error).message.split('\n').slice(-3).join(' ')}`);
  }
  ctx.log(`${label}: L1 ping L2:\n${ping1}`);

  const mib = `${bytes / 1048576} MiB`;
  // L1 → L2: L2's busybox nc listens and writes a file; its size tells when all arrived.
  const toL2 = crypto.randomBytes(bytes);
  const toL2Md5 = crypto.createHash('md5').update(toL2).digest('hex');
  await con.runOk(`rm -f /tmp/rx; (nc -l -p ${nic.toL2Port} > /tmp/rx </dev/null &) ; sleep 1`);
  const started = Date.now();
  // Done when the kernel took it all ('finish'); L2's file size says when it arrived.
  let toL2Socket: net.Socket | null = null;
  await new Promise<void>((resolve, reject) => {
    const s = net.connect(nic.toL2Port, l2Ip, () => s.end(toL2));
    toL2Socket = s;
    s.once('error', reject);
    s.once('finish', () => resolve());
    s.setTimeout(300000, () => s.destroy(new Error('the TCP stream to L2 stalled')));
  }).catch((e: Error) => fail(`${label}: sending ${bytes} bytes to L2: ${e.message}`));
  const size = await con.run(`for i in $(seq 240); do [ "$(stat -c %s /tmp/rx)" -ge ${bytes} ] && break; sleep 0.5; done; stat -c %s /tmp/rx; md5sum /tmp/rx`, 180000);
  const seconds = (Date.now() - started) / 1000;
  (toL2Socket as net.Socket | null)?.destroy();
  if (!size.output.includes(toL2Md5)) fail(`${label}: L2 received ${size.output.trim().replace(/\n/g, ' ')}; L1 sent md5 ${toL2Md5}`);
  else found.push(`${mib} L1→L2 over TCP, md5 matches (${(bytes / 1048576 / seconds).toFixed(2)} MiB/s, not a benchmark)`);

  // L2 → L1: this process listens, L2's nc sends a file it made.
  let received = Buffer.alloc(0);
  // Closed from here once every byte arrived: busybox nc need not half-close at its EOF.
  const server = net.createServer((s) => {
    const parts: Buffer[] = [];
    let n = 0;
    const done = () => { received = Buffer.concat(parts); s.destroy(); };
    s.on('data', (b: Buffer) => { parts.push(b); n += b.length; if (n >= bytes) done(); });
    s.on('end', done);
  });
  await new Promise<void>((resolve) => server.listen(nic.toL1Port, l1Ip, () => resolve()));
  const made = await con.runOk(`dd if=/dev/urandom of=/tmp/tx bs=1024 count=${bytes / 1024} 2>/dev/null; md5sum /tmp/tx`, 120000);
  const fromL2Md5 = /^([0-9a-f]{32})/m.exec(made)?.[1] ?? '';
  const t0 = Date.now();
  const sent = await con.run(`nc ${l1Ip} ${nic.toL1Port} < /tmp/tx`, 300000);
  for (let i = 0; i < 100 && received.length < bytes; i++) await new Promise((r) => setTimeout(r, 100));
  server.close();
  const gotMd5 = crypto.createHash('md5').update(received).digest('hex');
  if (gotMd5 !== fromL2Md5) fail(`${label}: L1 received ${received.length} bytes (md5 ${gotMd5}); L2 sent md5 ${fromL2Md5} (nc: ${sent.output.trim()})`);
  else found.push(`${mib} L2→L1 over TCP, md5 matches (${(bytes / 1048576 / ((Date.now() - t0) / 1000)).toFixed(2)} MiB/s)`);

  const dmesg = await con.run(`dmesg | grep -iE "virtio|ne2k|8390|${ifname}" | tail -20; s=/sys/class/net/${ifname}/statistics; for c in rx_packets tx_packets rx_errors rx_length_errors rx_over_errors rx_missed_errors tx_errors; do echo "$c $(cat $s/$c)"; done`);
  ctx.log(`${label}: L2 dmesg and ${ifname}'s counters:\n${dmesg.output}`);
}

/** Debian's tshark on the pcap Porthole wrote for this NIC. */
function pcapChecks(ctx: ScenarioContext, nic: NicUnderTest, { fail, found }: Verdict): void {
  const { label, pcap, l1Ip, l2Ip } = nic;
  try {
    const icmp = ctx.exec('/usr/bin/tshark', ['-r', pcap, '-Y', 'icmp.type == 8', '-T', 'fields', '-e', 'ip.src', '-e', 'ip.dst']).trim().split('\n').filter(Boolean);
    const dirs = new Set(icmp.map((l) => l.replace('\t', '>')));
    ctx.log(`${label}: tshark: ${icmp.length} ICMP echo requests: ${[...dirs].join(', ')}`);
    if (!dirs.has(`${l2Ip}>${l1Ip}`) || !dirs.has(`${l1Ip}>${l2Ip}`)) fail(`${label}: the pcap lacks ICMP echo requests in both directions (${[...dirs].join(', ') || 'none'})`);
    const tcp = ctx.exec('/usr/bin/tshark', ['-r', pcap, '-Y', `tcp.port == ${nic.toL2Port} || tcp.port == ${nic.toL1Port}`, '-T', 'fields', '-e', 'frame.len']).trim().split('\n').filter(Boolean);
    const tcpBytes = tcp.reduce((n, l) => n + Number(l), 0);
    const malformed = ctx.exec('/usr/bin/tshark', ['-r', pcap, '-Y', '_ws.malformed']).trim();
    if (malformed !== '') fail(`${label}: tshark finds malformed packets:\n${malformed.split('\n').slice(0, 5).join('\n')}`);
    if (tcpBytes < 2 * nic.bytes) fail(`${label}: the pcap holds ${tcpBytes} bytes of the TCP streams, less than the ${2 * nic.bytes} sent`);
    else found.push(`${label}: tshark reads the pcap: ICMP echo both ways, ${tcp.length} TCP frames (${(tcpBytes / 1048576).toFixed(1)} MiB), none malformed`);
  } catch (e) {
    fail(`${label}: tshark on ${pcap}: ${(e as Error).message.split('\n')[0]}`);
  }
}
