// L1 state for the rig tools that hunt L2 resets and time L2 (usb-reset-exec, usb-hotplug-exec,
// boot-fork-exec, net-latency-exec): L1 KVM's tracepoints, and L1's transparent huge pages.
// The tracepoints:
// SVM shutdown exits (a triple fault; KVM resets the vCPU before userspace sees it, so the rip
// is only here), the exceptions KVM injects, and with `emulation` every instruction it emulates.
const fs = require('fs');

const T = '/sys/kernel/tracing';

/**
 * Mounts tracefs if needed, enables the `kvm` events named (with an optional filter each),
 * sets the clock ('local', or 'mono' to line up with other clocks) and the buffer, clears it
 * and starts tracing.
 */
function startTrace(sh, { bufferKb, events, filters = {}, clock = 'local' }) {
  sh(`[ -e ${T}/trace ] || mount -t tracefs nodev ${T}`);
  sh(`cd ${T} && echo 0 > tracing_on && echo ${clock} > trace_clock && echo ${bufferKb} > buffer_size_kb`);
  for (const e of events) {
    sh(`echo 1 > ${T}/events/kvm/${e}/enable`);
    if (filters[e]) sh(`echo '${filters[e]}' > ${T}/events/kvm/${e}/filter`);
  }
  sh(`cd ${T} && echo > trace && echo 1 > tracing_on`);
}

/** Shutdown exits (a triple fault) and injected exceptions; with `emulation`, every emulated instruction and MMIO. */
function startKvmTrace(sh, { bufferKb, emulation }) {
  startTrace(sh, {
    bufferKb,
    events: ['kvm_exit', 'kvm_inj_exception', ...(emulation ? ['kvm_emulate_insn', 'kvm_mmio'] : [])],
    filters: { kvm_exit: 'exit_reason == 127' },
  });
}

const THP = '/sys/kernel/mm/transparent_hugepage/enabled';

/** Turns L1's transparent huge pages off (khugepaged with them); returns what puts the setting back. */
function l1ThpOff() {
  const before = (/\[(\w+)\]/.exec(fs.readFileSync(THP, 'utf8')) || [])[1] || 'madvise';
  fs.writeFileSync(THP, 'never');
  return () => fs.writeFileSync(THP, before);
}

/** Shutdown exits and injected exceptions in the buffer. */
function kvmTraceCounts(sh) {
  const count = (pattern) => Number(sh(`grep -c "${pattern}" ${T}/trace; true`).trim() || 0);
  return { shutdowns: count('reason shutdown'), exceptions: count('kvm_inj_exception') };
}

/** The `lines` trace lines before the first injected exception and before the first shutdown, as notes. */
function kvmTraceWindows(sh, counts, lines, width, label = '') {
  const out = [];
  if (counts.exceptions > 0) out.push(`${label}trace before the first injected exception:\n${sh(`grep -B${lines} -m1 kvm_inj_exception ${T}/trace | cut -c1-${width}; true`)}`);
  if (counts.shutdowns > 0) out.push(`${label}trace before the first shutdown:\n${sh(`grep -B${lines} -m1 "reason shutdown" ${T}/trace | cut -c1-${width}; true`)}`);
  return out;
}

/** The /proc/kallsyms line at or below `rip` (hex), read in the rebooted L2 (booted nokaslr). */
async function symbolAt(con, rip) {
  return (await con.run(`awk -v a=${rip.padStart(16, '0')} '$1 <= a && $1 > b { b = $1; s = $0 } END { print s }' /proc/kallsyms`)).output.trim();
}

module.exports = { T, startTrace, startKvmTrace, kvmTraceCounts, kvmTraceWindows, symbolAt, l1ThpOff };
