// The L2 kit's network up by DHCP: busybox udhcpc with a lease script we write into the kit
// (it has none), which sets the address and default route and prints the lease on one line.
import type { SerialConsole } from './console';

export interface KitLease {
  ip: string;
  router: string;
  dns: string;
}

const SCRIPT = '/tmp/udhcpc.sh';

/** Brings eth0 up and asks for a lease; throws with udhcpc's output when none comes. */
export async function kitDhcp(con: SerialConsole, ifname = 'eth0', timeoutMs = 90000): Promise<{ lease: KitLease; output: string }> {
  // printf's format has no %: the variables are expanded when udhcpc runs the script.
  const body = '#!/bin/sh\\n[ "$1" = bound ] || exit 0\\nip addr add $ip/${mask:-24} dev $interface\\nip route add default via ${router%% *} dev $interface\\necho "LEASE ip=$ip router=$router dns=$dns"\\n';
  await con.runOk(`printf '${body.replace(/%/g, '%%')}' > ${SCRIPT} && chmod +x ${SCRIPT} && ip link set ${ifname} up`);
  const r = await con.run(`udhcpc -i ${ifname} -n -q -t 10 -T 3 -s ${SCRIPT} 2>&1`, timeoutMs);
  const m = /LEASE ip=(\S+) router=(\S*) dns=(\S*)/.exec(r.output);
  if (r.status !== 0 || !m) throw new Error(`udhcpc got no lease on ${ifname} (status ${r.status}): ${r.output.trim().split('\n').slice(-4).join(' | ')}`);
  return { lease: { ip: m[1], router: m[2], dns: m[3] }, output: r.output };
}
