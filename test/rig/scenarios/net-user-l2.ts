// Porthole's user-mode NAT (libslirp) as Linux sees it: Porthole boots the L2 kit with
// --nic user,hostfwd=tcp:127.0.0.1:HOSTPORT-:40001,pcap=…; L2's busybox udhcpc gets its lease
// from libslirp over virtio-net (10.0.2.15, router 10.0.2.2, DNS 10.0.2.3), pings the gateway,
// L1 sends 4 MiB through the port forward to L2's busybox nc, and L2 sends 4 MiB out to a
// server on L1's loopback through 10.0.2.2 (md5 compared both ways), with the card's rings on
// the VM host thread (the "rings handed" log line); L2 then unbinds and binds virtio_net (a
// virtio reset takes the rings back, DRIVER_OK hands them over again) and gets its lease and
// pings again; Debian's tshark reads the pcap (the DHCP exchange, nothing malformed).
// IPv6: L2 takes its fec0::/64 address from libslirp's router advertisement (SLAAC), pings
// slirp's fec0::2, and L1 sends 1 MiB through an IPv6 port forward ([::1] → L2's fec0:: address).
import type { ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { SerialConsole } from '../console';
import { kitDhcp } from '../kit-net';
import { l1ProjectDir } from '../paths';
import { consoleLogger, kitChecks, scenario, type ScenarioContext } from '../scenario';

const MAC = '52:54:00:75:73:72';
const KIT_MODULES = 'virtio_pci,virtio_net';
const BYTES = 4 * 1024 * 1024;
const HOST_PORT = 40022;
const GUEST_PORT = 40001;
const L1_SERVER_PORT = 40002;
const HOST_PORT_V6 = 40023;
const GUEST_PORT_V6 = 40003;
const BYTES_V6 = 1024 * 1024;
/** L2's SLAAC address in libslirp's fec0::/64, from MAC by EUI-64. */
const GUEST_V6 = 'fec0::5054:ff:fe75:7372';

scenario('net-user-l2', async (ctx) => {
  const cli = `${l1ProjectDir}/bin/porthole`;
  if (!fs.existsSync(`${l1ProjectDir}/dist/main/cli/main.js`)) throw new Error('Porthole is not built (dist/main/cli/main.js is missing): run npm run build');
  const pcap = path.join(ctx.outDir, 'net-user-l2.pcapng');
  fs.rmSync(pcap, { force: true });
  const args = [
    cli, 'run', '--kernel', ctx.kit.vmlinuz, '--initrd', ctx.kit.initrd,
    '--append', `console=ttyS0 quiet panic=-1 kit.modules=${KIT_MODULES}`, '--mem', '256M', '--cpus', '1',
    '--serial', 'stdio', '--verbose', '--stats', '--nic', `virtio,mac=${MAC},user,hostfwd=tcp:127.0.0.1:${HOST_PORT}-:${GUEST_PORT},`
      + `hostfwd=tcp:[::1]:${HOST_PORT_V6}-[${GUEST_V6}]:${GUEST_PORT_V6},pcap=${pcap}`,
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

  const { lease, output } = await kitDhcp(con);
  ctx.log(`udhcpc:\n${output}`);
  if (lease.ip !== '10.0.2.15' || lease.router !== '10.0.2.2' || lease.dns !== '10.0.2.3') fail(`the lease is ${JSON.stringify(lease)}, expected 10.0.2.15 via 10.0.2.2 with DNS 10.0.2.3`);
  else found.push('udhcpc leased 10.0.2.15 (router 10.0.2.2, DNS 10.0.2.3) from libslirp');
  const addr = await con.run('ip addr show eth0; ip route');
  ctx.log(addr.output);
  if (!/inet 10\.0\.2\.15\/24/.test(addr.output) || !/default via 10\.0\.2\.2/.test(addr.output)) fail('eth0 did not get 10.0.2.15/24 and the default route');

  const ping = await con.run('ping -c 3 -W 10 10.0.2.2', 90000);
  ctx.log(`L2 ping 10.0.2.2:\n${ping.output}`);
  if (ping.status !== 0) fail(`L2 could not ping the gateway 10.0.2.2: ${ping.output.trim().split('\n').slice(-2).join(' ')}`);
  else found.push(`L2 pings 10.0.2.2: ${/(\d+) packets received/.exec(ping.output)?.[0] ?? 'ok'}`);

  // L1 → L2 through the port forward.
  const toL2 = await sendIntoL2(con, '127.0.0.1', HOST_PORT, GUEST_PORT, BYTES, '/tmp/rx');
  if (toL2.sendError !== null) fail(`sending ${BYTES} bytes to 127.0.0.1:${HOST_PORT} (forwarded to L2): ${toL2.sendError}`);
  if (!toL2.arrived) fail(`L2 received ${toL2.output}; L1 sent md5 ${toL2.md5}`);
  else found.push(`4 MiB L1→127.0.0.1:${HOST_PORT}→L2:${GUEST_PORT} through the port forward, md5 matches (${(BYTES / 1048576 / toL2.seconds).toFixed(2)} MiB/s, not a benchmark)`);

  // L2 → L1: L2 connects to 10.0.2.2 (slirp's name for the host's loopback), this process listens there.
  let received = Buffer.alloc(0);
  const server = net.createServer((s) => {
    const parts: Buffer[] = [];
    let n = 0;
    const done = () => { received = Buffer.concat(parts); s.destroy(); };
    s.on('data', (d: Buffer) => { parts.push(d); n += d.length; if (n >= BYTES) done(); });
    s.on('end', done);
  });
  await new Promise<void>((resolve) => server.listen(L1_SERVER_PORT, '127.0.0.1', () => resolve()));
  const made = await con.runOk(`dd if=/dev/urandom of=/tmp/tx bs=1024 count=${BYTES / 1024} 2>/dev/null; md5sum /tmp/tx`, 120000);
  const fromL2Md5 = /^([0-9a-f]{32})/m.exec(made)?.[1] ?? '';
  const t0 = Date.now();
  const sent = await con.run(`nc 10.0.2.2 ${L1_SERVER_PORT} < /tmp/tx`, 300000);
  for (let i = 0; i < 100 && received.length < BYTES; i++) await new Promise((r) => setTimeout(r, 100));
  server.close();
  const gotMd5 = crypto.createHash('md5').update(received).digest('hex');
  if (gotMd5 !== fromL2Md5) fail(`L1 received ${received.length} bytes (md5 ${gotMd5}); L2 sent md5 ${fromL2Md5} (nc: ${sent.output.trim()})`);
  else found.push(`4 MiB L2→10.0.2.2:${L1_SERVER_PORT}→L1's loopback, md5 matches (${(BYTES / 1048576 / ((Date.now() - t0) / 1000)).toFixed(2)} MiB/s)`);

  await ipv6Checks(ctx, con, fail, found);

  // The driver let go and bound again: a virtio reset takes the rings back from the VM host
  // thread and DRIVER_OK hands them over again, with traffic before and after.
  const handoffs = () => stderr.filter((l) => l.includes('rings handed to the VM host thread')).length;
  if (handoffs() < 1) fail('Porthole never handed the card\'s rings to the VM host thread (no "rings handed" line)');
  else found.push('the rings ran on the VM host thread (ioeventfd notifies, irqfd interrupts)');
  const before = handoffs();
  const rebind = await con.run('d=$(basename $(readlink /sys/class/net/eth0/device)); echo $d > /sys/bus/virtio/drivers/virtio_net/unbind && echo $d > /sys/bus/virtio/drivers/virtio_net/bind'
    + ' && for i in $(seq 60); do [ -e /sys/class/net/eth0 ] && break; sleep 0.5; done; ip link set eth0 up', 60000);
  if (rebind.status !== 0) fail(`rebinding virtio_net in L2 failed: ${rebind.output.trim()}`);
  else {
    const again = await kitDhcp(con);
    const ping2 = await con.run('ping -c 3 -W 10 10.0.2.2', 90000);
    for (let i = 0; i < 50 && handoffs() <= before; i++) await new Promise((r) => setTimeout(r, 100));
    if (again.lease.ip !== '10.0.2.15' || ping2.status !== 0) fail(`after rebinding virtio_net, L2 got ${JSON.stringify(again.lease)} and ping said: ${ping2.output.trim().split('\n').slice(-2).join(' ')}`);
    else if (handoffs() <= before) fail('after rebinding virtio_net the rings were not handed over again');
    else if (stderr.some((l) => l.includes('did not hand the rings back'))) fail('the VM host did not hand the rings back at the driver\'s reset');
    else found.push('virtio_net unbound and bound again: the reset took the rings back, DRIVER_OK handed them over again, DHCP and ping work');
  }

  con.send('poweroff -f\n');
  let timer: NodeJS.Timeout | undefined;
  const end = await Promise.race([exited, new Promise<string>((resolve) => { timer = setTimeout(() => resolve('timeout'), 120000); })]);
  clearTimeout(timer);
  if (end !== 'code 0') fail(`after "poweroff -f" in L2, porthole ended with ${end}, expected exit code 0`);
  const counters = stderr.filter((l) => /^\s*net0\/[a-z-]+\s/.test(l)).map((l) => l.trim().replace(/\s+/g, ' ')).join(', ');
  if (counters) ctx.log(`net0 counters: ${counters}`);

  if (fs.existsSync('/usr/bin/tshark')) {
    try {
      const dhcp = ctx.exec('/usr/bin/tshark', ['-r', pcap, '-Y', 'dhcp', '-T', 'fields', '-e', 'dhcp.option.dhcp']).trim().split('\n').filter(Boolean);
      const malformed = ctx.exec('/usr/bin/tshark', ['-r', pcap, '-Y', '_ws.malformed']).trim();
      if (malformed !== '') fail(`tshark finds malformed packets:\n${malformed.split('\n').slice(0, 5).join('\n')}`);
      // DHCP message types: 1 DISCOVER, 2 OFFER, 3 REQUEST, 5 ACK.
      if (!['1', '2', '3', '5'].every((t) => dhcp.includes(t))) fail(`the pcap lacks part of the DHCP exchange (message types seen: ${dhcp.join(',') || 'none'})`);
      else found.push(`tshark reads the pcap: DISCOVER/OFFER/REQUEST/ACK, none malformed`);
    } catch (e) {
      fail(`tshark on ${pcap}: ${(e as Error).message.split('\n')[0]}`);
    }
  } else fail('tshark is not installed on the rig host (scripts/fixtures.sh installs it)');
  if (failures.length > 0) throw new Error(`${failures.length} check(s) failed: ${failures.join('; ')}`);
  return found.join('; ');
}

/** L2's IPv6 through libslirp: SLAAC, a ping to slirp's fec0::2, and 1 MiB in through the IPv6 port forward. */
async function ipv6Checks(ctx: ScenarioContext, con: SerialConsole, fail: (why: string) => void, found: string[]): Promise<void> {
  const addr = await con.run(`for i in $(seq 60); do ip -6 addr show dev eth0 | grep -q '${GUEST_V6}/64' && break; sleep 0.5; done; ip -6 addr show dev eth0; ip -6 route`, 60000);
  ctx.log(`L2's IPv6:\n${addr.output}`);
  if (!addr.output.includes(`${GUEST_V6}/64`)) {
    fail(`L2 did not take ${GUEST_V6}/64 from libslirp's router advertisement: ${addr.output.trim()}`);
    return;
  }
  found.push(`L2 took ${GUEST_V6}/64 by SLAAC from libslirp`);
  const ping = await con.run('ping -6 -c 3 -W 10 fec0::2 || ping6 -c 3 -W 10 fec0::2', 90000);
  ctx.log(`L2 ping -6 fec0::2:\n${ping.output}`);
  if (ping.status !== 0) fail(`L2 could not ping libslirp's fec0::2: ${ping.output.trim().split('\n').slice(-2).join(' ')}`);
  else found.push(`L2 pings fec0::2: ${/(\d+) packets received/.exec(ping.output)?.[0] ?? 'ok'}`);

  const toL2 = await sendIntoL2(con, '::1', HOST_PORT_V6, GUEST_PORT_V6, BYTES_V6, '/tmp/rx6');
  if (toL2.sendError !== null) fail(`sending ${BYTES_V6} bytes to [::1]:${HOST_PORT_V6} (forwarded to L2's ${GUEST_V6}): ${toL2.sendError}`);
  if (!toL2.arrived) fail(`through the IPv6 forward L2 received ${toL2.output}; L1 sent md5 ${toL2.md5}`);
  else found.push(`1 MiB L1→[::1]:${HOST_PORT_V6}→[${GUEST_V6}]:${GUEST_PORT_V6} through the IPv6 port forward, md5 matches`);
}

/**
 * L1 → L2 through a port forward: L2's busybox nc listens on `guestPort` into `file`, and L1
 * sends `bytes` random bytes to host:hostPort. Says whether the file came to hold them (by md5),
 * what L2 reported, how long it took, and why the send failed (null: it did not).
 */
async function sendIntoL2(con: SerialConsole, host: string, hostPort: number, guestPort: number, bytes: number, file: string):
Promise<{ arrived: boolean; md5: string; output: string; seconds: number; sendError: string | null }> {
  const data = crypto.randomBytes(bytes);
  const md5 = crypto.createHash('md5').update(data).digest('hex');
  // nc's stdin stays open and empty: at EOF on its stdin busybox nc may close the connection early.
  await con.runOk(`rm -f ${file}; (sleep 100000 | nc -l -p ${guestPort} > ${file} &) ; sleep 1`);
  const started = Date.now();
  let socket: net.Socket | null = null;
  let sendError: string | null = null;
  await new Promise<void>((resolve, reject) => {
    const s = net.connect(hostPort, host, () => s.end(data));
    socket = s;
    s.once('error', reject);
    s.once('finish', () => resolve());
    s.setTimeout(300000, () => s.destroy(new Error('the TCP stream to L2 stalled')));
  }).catch((e: Error) => { sendError = e.message; });
  // The file's size tells when all arrived.
  const got = await con.run(`for i in $(seq 240); do [ "$(stat -c %s ${file})" -ge ${bytes} ] && break; sleep 0.5; done; stat -c %s ${file}; md5sum ${file}`, 180000);
  const seconds = (Date.now() - started) / 1000;
  (socket as net.Socket | null)?.destroy();
  return { arrived: got.output.includes(md5), md5, output: got.output.trim().replace(/\n/g, ' '), seconds, sendError };
}
