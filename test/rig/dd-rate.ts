// dd throughput of a block device in an L2 shell, past the page cache (O_DIRECT), timed by the
// guest's own clock (/proc/uptime) so the serial console's latency does not count. Shared by
// the usb-l2 scenario and the usb-storage bench (test/bench/usb-storage.ts).
import type { SerialConsole } from './console';

export interface DdRate {
  /** What was measured, e.g. "64 MiB dd read (1 MiB blocks)". */
  what: string;
  bytes: number;
  /** dd transfers (blocks). */
  transfers: number;
  seconds: number;
  /** Decimal megabytes per second. */
  mbPerSec: number;
  /** Transfers per second. */
  iops: number;
}

export class DdError extends Error {}

/**
 * Runs one dd in L2 and times it. `direction` read copies the device to /dev/null, write copies
 * zeros onto the device (and fsyncs). Throws DdError with dd's output if dd fails.
 */
export async function ddRate(con: Pick<SerialConsole, 'run'>, device: string, direction: 'read' | 'write', blockBytes: number, count: number, timeoutMs = 900000): Promise<DdRate> {
  if (!/^\/dev\/[\w-]+$/.test(device)) throw new DdError(`"${device}" is not a /dev node`);
  const dd = direction === 'read'
    ? `dd if=${device} of=/dev/null bs=${blockBytes} count=${count} iflag=direct`
    : `dd if=/dev/zero of=${device} bs=${blockBytes} count=${count} oflag=direct conv=fsync`;
  const bytes = blockBytes * count;
  const what = `${formatBytes(bytes)} dd ${direction} (${formatBytes(blockBytes)} blocks)`;
  const r = await con.run(`sync; echo 3 > /proc/sys/vm/drop_caches; a=$(cut -d' ' -f1 /proc/uptime); ${dd} 2>&1; s=$?; b=$(cut -d' ' -f1 /proc/uptime); echo "elapsed $a $b"; [ $s = 0 ]`, timeoutMs);
  const m = /elapsed ([\d.]+) ([\d.]+)/.exec(r.output);
  const seconds = m ? Number(m[2]) - Number(m[1]) : NaN;
  if (r.status !== 0 || !(seconds > 0)) throw new DdError(`${what} of ${device} failed: ${r.output.trim()}`);
  return { what, bytes, transfers: count, seconds, mbPerSec: bytes / 1e6 / seconds, iops: count / seconds };
}

export function describeRate(r: DdRate): string {
  return `${r.what} ${r.mbPerSec.toFixed(1)} MB/s (${r.seconds.toFixed(1)} s, ${r.iops.toFixed(0)} transfers/s)`;
}

function formatBytes(n: number): string {
  if (n % 1048576 === 0) return `${n / 1048576} MiB`;
  if (n % 1024 === 0) return `${n / 1024} KiB`;
  return `${n} B`;
}

/** The sd disk of a size in L2 (names change when a stick comes back), or null. */
export async function diskOfSize(con: SerialConsole, mib: number): Promise<string | null> {
  // The console carries stderr too: only names count (no sd disk at all leaves a cat error).
  const r = await con.run(`for b in /sys/block/sd*; do [ "$(cat $b/size 2>/dev/null)" = ${mib * 2048} ] && echo \${b##*/}; done`);
  return r.output.split('\n').map((l) => l.trim()).find((l) => /^sd[a-z]+$/.test(l)) ?? null;
}

/** The sd disk of a size in L2, waiting for it to appear; throws with L2's dmesg. */
export async function waitForDiskOfSize(con: SerialConsole, mib: number, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const disk = await diskOfSize(con, mib);
    if (disk) return disk;
    if (Date.now() > deadline) {
      const dmesg = await con.run('dmesg | tail -40');
      throw new Error(`L2 shows no ${mib} MiB disk within ${timeoutMs / 1000} s:\n${dmesg.output}`);
    }
    await new Promise((res) => setTimeout(res, 1000));
  }
}
