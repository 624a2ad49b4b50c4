// L1 KVM's tracepoints for the rig tools that hunt L2 resets (usb-reset-exec, usb-hotplug-exec):
// SVM shutdown exits (a triple fault; KVM resets the vCPU before userspace sees it, so the rip
// is only here), the exceptions KVM injects, and with `emulation` every instruction it emulates.
const T = '/sys/kernel/tracing';

/** Sets the events up, clears the buffer and starts tracing. */
function startKvmTrace(sh, { bufferKb, emulation }) {
  sh(`[ -e ${T}/trace ] || mount -t tracefs nodev ${T}`);
  sh(`cd ${T} && echo 0 > tracing_on && echo ${bufferKb} > buffer_size_kb && echo 1 > events/kvm/kvm_exit/enable && echo 1 > events/kvm/kvm_inj_exception/enable && echo 'exit_reason == 127' > events/kvm/kvm_exit/filter && echo > trace`);
  if (emulation) sh(`cd ${T} && echo 1 > events/kvm/kvm_emulate_insn/enable && echo 1 > events/kvm/kvm_mmio/enable`);
  sh(`echo 1 > ${T}/tracing_on`);
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

module.exports = { T, startKvmTrace, kvmTraceCounts, kvmTraceWindows, symbolAt };
