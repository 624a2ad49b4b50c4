// `npm run rig -- exec test/rig/tools/net-latency-exec.js --tcg multi [--env NET_MIB=N]`
// (issue 13): where a guest→host TCP stream's time goes. Runs the net bench for one round
// with a pcap of each card (Porthole pcap=, QEMU filter-dump) and L1 KVM's userspace exits,
// MMIO writes and MSIs traced, then reports per VMM:
//  - from the pcap (tshark, from the rig host's /usr): bytes in flight when the guest sends,
//    the time from a guest data frame to slirp's ACK and from that ACK to the next data frame;
//  - from the trace (L1's clock only): MSIs by vector, and for Porthole's vCPU thread the time
//    from a transmit notify to the next MSI of each vector, from a kick (an exit with EINTR)
//    to the next MSI, and from an MSI to the guest's next transmit notify.
// trace.txt and the pcaps stay in build/rig/out/<run>/.
const fs = require('fs');
const path = require('path');
const { T, startTrace } = require('./kvm-trace.js');

const ms = (x) => (x * 1e3).toFixed(3);
function summary(values) {
  if (values.length === 0) return 'n=0';
  const v = [...values].sort((a, b) => a - b);
  const mean = v.reduce((a, b) => a + b, 0) / v.length;
  return `n=${v.length} median ${ms(v[v.length >> 1])} ms, mean ${ms(mean)}, p90 ${ms(v[Math.floor(v.length * 0.9)])}`;
}
/** The first value in sorted `arr` above `t`, or undefined. */
function nextAfter(arr, t) {
  let lo = 0;
  let hi = arr.length;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (arr[mid] <= t) lo = mid + 1; else hi = mid; }
  return arr[lo];
}

function pcapReport(ctx, file) {
  const out = ctx.exec('tshark', ['-r', file, '-Y', 'tcp.port==5002', '-T', 'fields', '-e', 'frame.time_epoch', '-e', 'ip.src', '-e', 'tcp.seq', '-e', 'tcp.len', '-e', 'tcp.ack', '-o', 'tcp.relative_sequence_numbers:TRUE']);
  let acked = 0;
  let lastData = null;
  let lastAck = null;
  const inFlight = [];
  const dataToAck = [];
  const ackToData = [];
  let bytes = 0;
  let frames = 0;
  for (const line of out.split('\n')) {
    const [t, src, seq, len, ack] = line.split('\t');
    if (!t) continue;
    const time = Number(t);
    if (src === '10.0.2.15' && Number(len) > 0) {
      frames++;
      bytes += Number(len);
      inFlight.push(Number(seq) + Number(len) - acked);
      if (lastAck !== null) ackToData.push(time - lastAck);
      lastAck = null;
      lastData = time;
    } else if (src !== '10.0.2.15') {
      acked = Math.max(acked, Number(ack || 0));
      if (lastData !== null) dataToAck.push(time - lastData);
      lastData = null;
      lastAck = time;
    }
  }
  inFlight.sort((a, b) => a - b);
  return [`${frames} data frames, ${frames ? Math.round(bytes / frames) : 0} bytes each on average; bytes in flight at a send: median ${inFlight[inFlight.length >> 1]}, max ${inFlight[inFlight.length - 1]}`,
    `guest data → slirp's ACK ${summary(dataToAck)}`, `ACK → the guest's next data ${summary(ackToData)}`];
}

function traceReport(file) {
  const rx = /^\s*(.+?)-(\d+)\s+\[\d+\]\s+\S+\s+([\d.]+): (\w+): (.*)$/;
  const byComm = new Map();
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    const m = rx.exec(line);
    if (!m) continue;
    const comm = m[1].trim();
    if (!byComm.has(comm)) byComm.set(comm, []);
    byComm.get(comm).push({ t: Number(m[3]), kind: m[4], text: m[5] });
  }
  const lines = [];
  for (const [vmm, comm] of [['Porthole', 'node'], ['QEMU', 'qemu-system-x86']]) {
    const ev = byComm.get(comm) || [];
    const msis = new Map();
    for (const e of ev) {
      const v = e.kind === 'kvm_msi_set_irq' && /vec (\d+)/.exec(e.text);
      if (v) { if (!msis.has(v[1])) msis.set(v[1], []); msis.get(v[1]).push(e.t); }
    }
    lines.push(`${vmm}: MSIs by vector ${[...msis].map(([v, ts]) => `${v}: ${ts.length}`).join(', ') || 'none'}`);
    if (vmm !== 'Porthole') continue; // QEMU's notifies go through ioeventfd and its MSIs come from its I/O thread.
    const writes = new Map();
    for (const e of ev) {
      const g = e.kind === 'kvm_mmio' && /mmio write len \d+ gpa (0x[0-9a-f]+)/.exec(e.text);
      if (!g) continue;
      if (!writes.has(g[1])) writes.set(g[1], []);
      writes.get(g[1]).push(e.t);
    }
    // The transmit queue's notify address: the MMIO address written most.
    const [gpa, notifies] = [...writes].sort((a, b) => b[1].length - a[1].length)[0] || [null, []];
    const kicks = ev.filter((e) => e.kind === 'kvm_userspace_exit' && /restart/.test(e.text)).map((e) => e.t);
    lines.push(`Porthole: ${notifies.length} writes to ${gpa} (transmit notifies), ${kicks.length} kicks; notify → next notify ${summary(notifies.slice(1).map((t, i) => t - notifies[i]))}`);
    for (const [vec, ts] of msis) {
      const after = (from) => from.map((t) => nextAfter(ts, t) - t).filter(Number.isFinite);
      lines.push(`  vector ${vec}: notify → MSI ${summary(after(notifies))}; kick → MSI ${summary(after(kicks))}; MSI → next notify ${summary(ts.map((t) => nextAfter(notifies, t) - t).filter(Number.isFinite))}`);
    }
  }
  return lines;
}

module.exports = async (ctx) => {
  const sh = (c) => ctx.exec('sh', ['-c', c]);
  startTrace(sh, { bufferKb: 65536, clock: 'mono', events: ['kvm_userspace_exit', 'kvm_mmio', 'kvm_msi_set_irq'] });
  process.env.PORTHOLE_BENCH_DIR = ctx.outDir;
  const { runNetBench } = require(path.join('/project', 'dist', 'test', 'bench', 'net.js'));
  let r;
  try {
    r = await runNetBench({ kit: ctx.kit, rounds: 1, retries: 1, bytes: Number(process.env.RIG_NET_MIB || 2) * 1048576, pcapDir: ctx.outDir, log: (l) => ctx.log(l) });
  } finally {
    sh(`echo 0 > ${T}/tracing_on; cat ${T}/trace > ${ctx.outDir}/trace.txt`);
  }
  const report = [];
  for (const s of r.samples.filter((x) => !x.failure)) {
    const file = fs.readdirSync(ctx.outDir).filter((f) => f.startsWith(`net-${s.vmm}-`)).map((f) => path.join(ctx.outDir, f)).pop();
    if (file) report.push(`${s.vmm} guest→host (${file}):`, ...pcapReport(ctx, file).map((l) => `  ${l}`));
  }
  report.push(...traceReport(path.join(ctx.outDir, 'trace.txt')));
  for (const l of report) ctx.log(l);
  const fmt = (x) => (Number.isFinite(x) ? x.toFixed(2) : '-');
  return `to-guest ${fmt(r.ratios['to-guest'])}x, from-guest ${fmt(r.ratios['from-guest'])}x; ${r.samples.map((s) => `${s.vmm} ${JSON.stringify(s.rates)}${s.failure ? ` FAILED: ${s.failure.slice(0, 200)}` : ''}`).join('; ')}`;
};
// The two reports alone, for a run's files on the rig host (node -e, with a ctx whose exec runs tshark).
module.exports.pcapReport = pcapReport;
module.exports.traceReport = traceReport;
