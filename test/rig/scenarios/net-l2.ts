// Porthole's virtio-net as Linux's own driver sees it, on a TAP in L1: L1 (root) makes a TAP
// with an address, Porthole boots the L2 kit with --nic virtio,tap=…,pcap=…, virtio_net binds
// 00:10.0 with the MAC we gave, L2 and L1 ping each other both ways, 4 MiB go each way over TCP
// (L2's busybox nc, and this scenario's Node in L1) with md5 compared, and Debian's tshark (the
// rig host's, through L1's /usr) reads the pcap: ICMP echo both ways, TCP, nothing malformed.
import type { ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { SerialConsole } from '../console';
import { l1ProjectDir } from '../paths';
import { consoleLogger, kitChecks, scenario, type ScenarioContext } from '../scenario';

const TAP = 'phtap0';
const L1_IP = '10.99.0.1';
const L2_IP = '10.99.0.2';
const MAC = '52:54:00:4e:45:54';
const KIT_MODULES = 'virtio_pci,virtio_net';
const BYTES = 4 * 1024 * 1024;
// Ports no Wireshark dissector claims (5000 is IPA's: tshark decoded the random bytes as malformed GSM Abis).
const TO_L2_PORT = 40001;
const TO_L1_PORT = 40002;

scenario('net-l2', async (ctx) => {
  const cli = `${l1ProjectDir}/bin/porthole`;
  if (!fs.existsSync(`${l1ProjectDir}/dist/main/cli/main.js`)) throw new Error('Porthole is not built (dist/main/cli/main.js is missing): run npm run build');
  if (!fs.existsSync('/usr/bin/tshark')) throw new Error('tshark is not installed on the rig host (scripts/fixtures.sh installs it)');
  // iproute2 from the rig host's /usr (busybox's ip has no tuntap); ping is L1's busybox.
  const ip = '/usr/bin/ip';
  ctx.exec('sh', ['-c', `modprobe tun 2>/dev/null; ${ip} link del ${TAP} 2>/dev/null; ${ip} tuntap add dev ${TAP} mode tap && ${ip} link set ${TAP} up && ${ip} addr add ${L1_IP}/24 dev ${TAP}`]);
  const pcap = path.join(ctx.outDir, 'net-l2.pcapng');
  fs.rmSync(pcap, { force: true });
  const args = [
    cli, 'run', '--kernel', ctx.kit.vmlinuz, '--initrd', ctx.kit.initrd,
    '--append', `console=ttyS0 quiet panic=-1 kit.modules=${KIT_MODULES}`, '--mem', '256M', '--cpus', '1',
    '--serial', 'stdio', '--verbose', '--stats', '--nic', `virtio,mac=${MAC},tap=${TAP},pcap=${pcap}`,
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
    return await runChecks(ctx, vm, pcap, stderr);
  } finally {
    vm.kill('SIGKILL');
  }
});

async function runChecks(ctx: ScenarioContext, vm: ChildProcess, pcap: string, stderr: string[]): Promise<string> {
  const exited = new Promise<string>((resolve) => vm.once('exit', (code, sig) => resolve(sig ?? `code ${code}`)));
  const con = SerialConsole.fromChild(vm, { name: 'L2 on Porthole\'s COM1', onOutput: consoleLogger('L2| ') });
  const failures: string[] = [];
  const found: string[] = [];
  const fail = (why: string) => {
    ctx.log(`CHECK FAILED: ${why}`);
    failures.push(why);
  };
  await con.waitForShell(420000);
  await con.run('for i in $(seq 60); do [ -e /sys/class/net/eth0 ] && break; sleep 0.5; done');
  await kitChecks(ctx, con, 1, 60000);

  const dev = await con.run('d=/sys/bus/pci/devices/0000:00:10.0; echo "driver $(basename $(readlink $d/driver))"; echo "vdriver $(basename $(readlink $d/virtio*/driver))"; echo "mac $(cat /sys/class/net/eth0/address)"; echo "mtu $(cat /sys/class/net/eth0/mtu)"; ls $d/msi_irqs 2>/dev/null | wc -l');
  ctx.log(`00:10.0:\n${dev.output}`);
  if (!/^driver virtio-pci$/m.test(dev.output)) fail('virtio-pci did not bind 00:10.0');
  if (!/^vdriver virtio_net$/m.test(dev.output)) fail('virtio_net did not bind the virtio device of 00:10.0');
  if (!new RegExp(`^mac ${MAC}$`, 'm').test(dev.output)) fail(`eth0's MAC is not ${MAC}`);
  else found.push(`virtio_net on 00:10.0, eth0 with MAC ${MAC}`);

  await con.runOk(`ip link set eth0 up && ip addr add ${L2_IP}/24 dev eth0`);
  const ping2 = await con.run(`ping -c 3 -W 10 ${L1_IP}`, 90000);
  ctx.log(`L2 ping L1:\n${ping2.output}`);
  if (ping2.status !== 0) fail(`L2 could not ping L1 (${L1_IP}): ${ping2.output.trim().split('\n').slice(-2).join(' ')}`);
  else found.push(`L2 pings L1: ${/(\d+) packets received/.exec(ping2.output)?.[0] ?? 'ok'}`);
  let ping1 = '';
  try {
    ping1 = ctx.exec('sh', ['-c', `ping -c 3 -W 10 ${L2_IP} 2>&1`]);
    found.push(`L1 pings L2: ${/(\d+) received/.exec(ping1)?.[0] ?? 'ok'}`);
  } catch (e) {
    fail(`L1 could not ping L2 (${L2_IP}): ${(e as Error).message.split('\n').slice(-3).join(' ')}`);
  }
  ctx.log(`L1 ping L2:\n${ping1}`);

  // L1 → L2: L2's busybox nc listens and writes a file; its size tells when all arrived.
  const toL2 = crypto.randomBytes(BYTES);
  const toL2Md5 = crypto.createHash('md5').update(toL2).digest('hex');
  await con.runOk(`rm -f /tmp/rx; (nc -l -p ${TO_L2_PORT} > /tmp/rx </dev/null &) ; sleep 1`);
  const started = Date.now();
  // Done when the kernel took it all ('finish'); L2's file size says when it arrived.
  let toL2Socket: net.Socket | null = null;
  await new Promise<void>((resolve, reject) => {
    const s = net.connect(TO_L2_PORT, L2_IP, () => s.end(toL2));
    toL2Socket = s;
    s.once('error', reject);
    s.once('finish', () => resolve());
    s.setTimeout(300000, () => s.destroy(new Error('the TCP stream to L2 stalled')));
  }).catch((e: Error) => fail(`sending ${BYTES} bytes to L2: ${e.message}`));
  const size = await con.run(`for i in $(seq 240); do [ "$(stat -c %s /tmp/rx)" -ge ${BYTES} ] && break; sleep 0.5; done; stat -c %s /tmp/rx; md5sum /tmp/rx`, 180000);
  const seconds = (Date.now() - started) / 1000;
  (toL2Socket as net.Socket | null)?.destroy();
  if (!size.output.includes(toL2Md5)) fail(`L2 received ${size.output.trim().replace(/\n/g, ' ')}; L1 sent md5 ${toL2Md5}`);
  else found.push(`4 MiB L1→L2 over TCP, md5 matches (${(BYTES / 1048576 / seconds).toFixed(2)} MiB/s, not a benchmark)`);

  // L2 → L1: this process listens, L2's nc sends a file it made.
  let received = Buffer.alloc(0);
  // Closed from here once every byte arrived: busybox nc need not half-close at its EOF.
  const server = net.createServer((s) => {
    const parts: Buffer[] = [];
    let n = 0;
    const done = () => { received = Buffer.concat(parts); s.destroy(); };
    s.on('data', (d: Buffer) => { parts.push(d); n += d.length; if (n >= BYTES) done(); });
    s.on('end', done);
  });
  await new Promise<void>((resolve) => server.listen(TO_L1_PORT, L1_IP, () => resolve()));
  const made = await con.runOk(`dd if=/dev/urandom of=/tmp/tx bs=1024 count=${BYTES / 1024} 2>/dev/null; md5sum /tmp/tx`, 120000);
  const fromL2Md5 = /^([0-9a-f]{32})/m.exec(made)?.[1] ?? '';
  const t0 = Date.now();
  const sent = await con.run(`nc ${L1_IP} ${TO_L1_PORT} < /tmp/tx`, 300000);
  for (let i = 0; i < 100 && received.length < BYTES; i++) await new Promise((r) => setTimeout(r, 100));
  server.close();
  const gotMd5 = crypto.createHash('md5').update(received).digest('hex');
  if (gotMd5 !== fromL2Md5) fail(`L1 received ${received.length} bytes (md5 ${gotMd5}); L2 sent md5 ${fromL2Md5} (nc: ${sent.output.trim()})`);
  else found.push(`4 MiB L2→L1 over TCP, md5 matches (${(BYTES / 1048576 / ((Date.now() - t0) / 1000)).toFixed(2)} MiB/s)`);

  const dmesg = await con.run('dmesg | grep -iE "virtio|eth0" | tail -20; cat /sys/class/net/eth0/statistics/rx_errors /sys/class/net/eth0/statistics/rx_length_errors');
  ctx.log(`L2 dmesg and eth0 error counters:\n${dmesg.output}`);
  con.send('poweroff -f\n');
  let timer: NodeJS.Timeout | undefined;
  const end = await Promise.race([exited, new Promise<string>((resolve) => { timer = setTimeout(() => resolve('timeout'), 120000); })]);
  clearTimeout(timer);
  if (end !== 'code 0') fail(`after "poweroff -f" in L2, porthole ended with ${end}, expected exit code 0`);
  const counters = stderr.filter((l) => /^\s*net0\/[a-z-]+\s/.test(l)).map((l) => l.trim().replace(/\s+/g, ' ')).join(', ');
  if (counters) ctx.log(`net0 counters: ${counters}`);

  // Debian's tshark on the pcap Porthole wrote.
  try {
    const icmp = ctx.exec('/usr/bin/tshark', ['-r', pcap, '-Y', 'icmp.type == 8', '-T', 'fields', '-e', 'ip.src', '-e', 'ip.dst']).trim().split('\n').filter(Boolean);
    const dirs = new Set(icmp.map((l) => l.replace('\t', '>')));
    ctx.log(`tshark: ${icmp.length} ICMP echo requests: ${[...dirs].join(', ')}`);
    if (!dirs.has(`${L2_IP}>${L1_IP}`) || !dirs.has(`${L1_IP}>${L2_IP}`)) fail(`the pcap lacks ICMP echo requests in both directions (${[...dirs].join(', ') || 'none'})`);
    const tcp = ctx.exec('/usr/bin/tshark', ['-r', pcap, '-Y', `tcp.port == ${TO_L2_PORT} || tcp.port == ${TO_L1_PORT}`, '-T', 'fields', '-e', 'frame.len']).trim().split('\n').filter(Boolean);
    const tcpBytes = tcp.reduce((n, l) => n + Number(l), 0);
    const malformed = ctx.exec('/usr/bin/tshark', ['-r', pcap, '-Y', '_ws.malformed']).trim();
    if (malformed !== '') fail(`tshark finds malformed packets:\n${malformed.split('\n').slice(0, 5).join('\n')}`);
    if (tcpBytes < 2 * BYTES) fail(`the pcap holds ${tcpBytes} bytes of the TCP streams, less than the ${2 * BYTES} sent`);
    else found.push(`tshark reads the pcap: ICMP echo both ways, ${tcp.length} TCP frames (${(tcpBytes / 1048576).toFixed(1)} MiB), none malformed`);
  } catch (e) {
    fail(`tshark on ${pcap}: ${(e as Error).message.split('\n')[0]}`);
  }
  ctx.exec('sh', ['-c', `/usr/bin/ip link del ${TAP} 2>/dev/null; true`]);
  if (failures.length > 0) throw new Error(`${failures.length} check(s) failed: ${failures.join('; ')}`);
  return found.join('; ');
}
