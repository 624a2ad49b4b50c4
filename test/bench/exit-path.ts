// Where the time of a PIO exit goes on the JavaScript side, measured in the venue the
// exit benches run in: the koffi call of a KVM ioctl against the same ioctl from C, the
// exit's decode + dispatch + counters (ExitDispatcher.handle on a run page holding an
// `out 0x80, al` exit, with the machine's buses, POST port and statistics registry), and
// the counters alone. The rest of Porthole's cost over the C runner is its run loop
// (the slice loop, setImmediate between slices) and what KVM_RUN itself does differently.
import { spawnSync } from 'node:child_process';
import { CoalescedRing, EXIT, KVM, KvmSystem, RUN } from '../../native/kvm';
import * as libc from '../../native/libc';
import { MmioBus, PioBus } from '../../main/vmm/devices/bus';
import { PostCodePort } from '../../main/vmm/devices/simple';
import { ExitDispatcher } from '../../main/vmm/machine/exits';
import { StatsRegistry } from '../../main/vmm/shared/stats';

export interface ExitPathProfile {
  /** ns per KVM_GET_API_VERSION through koffi (libc.ioctlHot, the KVM_RUN binding). */
  koffiIoctlNs: number;
  /** ns per KVM_GET_API_VERSION from C (null without the C runner). */
  cIoctlNs: number | null;
  /** ns per ExitDispatcher.handle of an `out 0x80, al` exit. */
  pioDispatchNs: number;
  /** ns per ExitDispatcher.handle of a 4-byte MMIO write to an address nothing decodes. */
  mmioDispatchNs: number;
  /** ns for the two Atomics.add a PIO exit costs (exit reason, device writes). */
  countersNs: number;
}

/** The best of `rounds` timings of `n` calls of `body`, in ns per call. */
function time(n: number, rounds: number, body: (i: number) => void): number {
  let best = Infinity;
  for (let r = 0; r < rounds; r++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) body(i);
    const ns = Number(process.hrtime.bigint() - t0) / n;
    if (ns < best) best = ns;
  }
  return best;
}

function runPage(): { view: DataView; bytes: Uint8Array } {
  const bytes = new Uint8Array(new SharedArrayBuffer(3 * 4096));
  return { bytes, view: new DataView(bytes.buffer) };
}

export function profileExitPath(opts: { calls?: number; baseline?: string } = {}): ExitPathProfile {
  const n = opts.calls ?? 200000;
  const kvm = new KvmSystem();
  let koffiIoctlNs: number;
  try {
    const request = KVM.GET_API_VERSION;
    koffiIoctlNs = time(n, 5, () => {
      if (libc.ioctlHot(kvm.fd, request) !== 12) throw new Error('KVM_GET_API_VERSION failed');
    });
  } finally {
    kvm.close();
  }
  let cIoctlNs: number | null = null;
  if (opts.baseline) {
    const r = spawnSync(opts.baseline, ['--ioctl-loop', String(n)], { encoding: 'utf8' });
    const m = /ioctl_ns: ([\d.]+)/.exec(r.stdout ?? '');
    if (m) cIoctlNs = Number(m[1]);
  }

  const stats = new StatsRegistry();
  const pio = new PioBus(stats);
  const mmio = new MmioBus(stats);
  pio.register(0x80, 1, new PostCodePort());
  const dispatcher = new ExitDispatcher(pio, mmio, stats);
  const io = runPage();
  io.view.setUint32(RUN.EXIT_REASON, EXIT.IO, true);
  io.bytes[RUN.IO_DIRECTION] = 1;
  io.bytes[RUN.IO_SIZE] = 1;
  io.view.setUint16(RUN.IO_PORT, 0x80, true);
  io.view.setUint32(RUN.IO_COUNT, 1, true);
  io.view.setUint32(RUN.IO_DATA_OFFSET, 4096, true);
  // As in a machine with PCI: every exit first checks KVM's coalesced write ring (empty).
  dispatcher.coalesced = new CoalescedRing(io.bytes.buffer as SharedArrayBuffer, 2 * 4096);
  const pioDispatchNs = time(n, 5, (i) => {
    io.bytes[4096] = i;
    dispatcher.handle(io.view, io.bytes, 0);
  });
  const mm = runPage();
  mm.view.setUint32(RUN.EXIT_REASON, EXIT.MMIO, true);
  mm.view.setUint32(RUN.MMIO_PHYS_ADDR, 0xd0000000, true);
  mm.view.setUint32(RUN.MMIO_LEN, 4, true);
  mm.bytes[RUN.MMIO_IS_WRITE] = 1;
  const mmioDispatchNs = time(n, 5, (i) => {
    mm.view.setUint32(RUN.MMIO_DATA, i, true);
    dispatcher.handle(mm.view, mm.bytes, 0);
  });
  const a = stats.counter('bench', 'a');
  const b = stats.counter('bench', 'b');
  const counts = stats.counts;
  const countersNs = time(n, 5, () => {
    Atomics.add(counts, a, 1);
    Atomics.add(counts, b, 1);
  });
  return { koffiIoctlNs, cIoctlNs, pioDispatchNs, mmioDispatchNs, countersNs };
}
