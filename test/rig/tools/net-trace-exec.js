// `npm run rig -- exec test/rig/tools/net-trace-exec.js --tcg multi [--env LIGHT=1] [--env VIRTIO=1]
// [--env SKIP_QEMU=1] [--env PHASE_A_SEC=N] [--env PHASE_B_SEC=N]`: why L2 resets under NE2000
// traffic (issue 13). Phase A: Porthole with the NE2000 on a TAP (and virtio-net first with
// VIRTIO=1), 2 MiB each way per round until L2 resets or time is up, with L1 KVM tracepoints on:
// on AMD, KVM re-initialises the vCPU at a shutdown, so the shutdown exit in the trace (its rip
// and intr_info = the event being delivered) is where the triple fault is; PORTHOLE_RAM_DUMP
// keeps guest RAM, and the rebooted L2 (nokaslr) names the symbols. LIGHT=1 traces no PIO.
const { SerialConsole, consoleLogger } = require('porthole-rig');
const fs = require('fs');
const net = require('net');
const T = '/sys/kernel/tracing';
const MAC = '52:54:00:4e:45:32';
const L1IP = '10.98.0.1', L2IP = '10.98.0.2';
const BYTES = 2 * 1024 * 1024;
const PHASE_A_SEC = Number(process.env.RIG_PHASE_A_SEC || 240);
const PHASE_B_SEC = Number(process.env.RIG_PHASE_B_SEC || 200);
const EVENTS = ['kvm_exit', 'kvm_entry', 'kvm_pio', 'kvm_userspace_exit', 'kvm_inj_virq', 'kvm_inj_exception', 'kvm_apic_accept_irq', 'kvm_ioapic_set_irq', 'kvm_pic_set_irq', 'kvm_set_irq', 'kvm_eoi', 'kvm_apic_ipi'];

module.exports = async (ctx) => {
  const sh = (c) => ctx.exec('sh', ['-c', c]);
  const out = [];
  const note = (s) => { ctx.log(s); out.push(s); };
  sh('modprobe tun 2>/dev/null; true');
  sh(`[ -e ${T}/trace ] || mount -t tracefs nodev ${T}`);
  const LIGHT = process.env.RIG_LIGHT === '1';
  // MINIMAL=1: only the shutdown exit (SVM exit code 0x7f) and injected exceptions: net-l2's speed.
  const MINIMAL = process.env.RIG_MINIMAL === '1';
  const events = MINIMAL ? ['kvm_exit', 'kvm_inj_exception'] : LIGHT ? EVENTS.filter((e) => e !== 'kvm_pio' && e !== 'kvm_userspace_exit' && e !== 'kvm_entry') : EVENTS;
  const traceOn = () => sh(`cd ${T} && echo 0 > tracing_on && echo 4096 > buffer_size_kb && for e in ${events.join(' ')}; do [ -e events/kvm/$e/enable ] && echo 1 > events/kvm/$e/enable; done; ${MINIMAL ? "echo 'exit_reason == 127' > events/kvm/kvm_exit/filter;" : LIGHT ? "echo 'exit_reason != 123' > events/kvm/kvm_exit/filter;" : ''} echo > trace; echo 1 > tracing_on`);
  const traceOff = () => fs.writeFileSync(`${T}/tracing_on`, '0');
  const saveTrace = (name) => {
    const file = `${ctx.outDir}/${name}`;
    sh(`cat ${T}/trace > ${file}`);
    const shut = sh(`grep -n "reason shutdown\\|SHUTDOWN\\|kvm_inj_exception" ${file} | tail -8; true`);
    note(`${name}: shutdown/exception lines:\n${shut}`);
    const line = /^(\d+):.*(shutdown|SHUTDOWN)/m.exec(shut);
    if (line) {
      const n = Number(line[1]);
      note(`${name}: the 70 lines up to the shutdown:\n${sh(`sed -n ${Math.max(1, n - 70)},${n + 3}p ${file} | cut -c1-260`)}`);
    } else note(`${name}: last 40 lines:\n${sh(`tail -40 ${file} | cut -c1-260`)}`);
    return shut;
  };
  sh(`ip link del phtap1 2>/dev/null; /usr/bin/ip tuntap add dev phtap1 mode tap && /usr/bin/ip link set phtap1 up && /usr/bin/ip addr add ${L1IP}/24 dev phtap1`);

  // L1 -> L2 then L2 -> L1, BYTES each; returns the two rates, or throws.
  async function round(con, port) { return roundOn(con, port, L2IP, L1IP, BYTES); }
  async function roundOn(con, port, L2IP, L1IP, BYTES) {
    await con.runOk(`(nc -l -p ${port} > /dev/null </dev/null &) ; sleep 1`);
    let t0 = Date.now();
    await new Promise((resolve, reject) => {
      const s = net.connect(port, L2IP, () => s.end(Buffer.alloc(BYTES, 0x5a)));
      s.once('error', reject);
      s.once('close', resolve);
      s.once('finish', () => setTimeout(resolve, 20000));
      s.setTimeout(120000, () => s.destroy(new Error('stream to L2 stalled')));
    });
    const inRate = BYTES / 1024 / ((Date.now() - t0) / 1000);
    let got = 0, first = 0, last = 0;
    const server = net.createServer((s) => s.on('data', (b) => { if (!first) first = Date.now(); got += b.length; last = Date.now(); if (got >= BYTES) s.destroy(); }));
    server.on('error', () => {});
    await new Promise((r) => server.listen(port + 1, L1IP, r));
    t0 = Date.now();
    const closeSoon = setTimeout(() => server.close(), 160000);
    closeSoon.unref();
    try { await con.run(`dd if=/dev/zero bs=1024 count=${BYTES / 1024} 2>/dev/null | nc ${L1IP} ${port + 1}`, 150000); } finally { server.close(); }
    for (let i = 0; i < 50 && got < BYTES; i++) await new Promise((r) => setTimeout(r, 100));
    server.close();
    if (got < BYTES) throw new Error(`L1 got ${got} of ${BYTES} bytes from L2`);
    const outRate = BYTES / 1024 / ((last - t0) / 1000);
    return `in ${inRate.toFixed(0)} KiB/s, out ${outRate.toFixed(0)} KiB/s`;
  }

  async function load(con, seconds, crashed, label) {
    const end = Date.now() + seconds * 1000;
    let n = 0;
    while (Date.now() < end) {
      const r = await Promise.race([round(con, 40003).then((x) => x, (e) => `error: ${e.message}`), crashed.then(() => 'CRASH')]);
      if (r === 'CRASH') { note(`${label}: L2 reset in round ${n + 1}`); return true; }
      n++;
      note(`${label}: round ${n}: ${r}`);
      if (r.startsWith('error')) {
        const c = await Promise.race([crashed.then(() => true), new Promise((x) => setTimeout(() => x(false), 3000))]);
        if (c) { note(`${label}: L2 reset in round ${n}`); return true; }
        if (!MINIMAL) return false;
        con.send('\x03\n'); // the timed-out command still holds the shell
        await con.waitForShell(60000);
      }
    }
    note(`${label}: ${n} rounds of ${BYTES} bytes each way in ${seconds} s without a reset`);
    return false;
  }

  // --- phase A: Porthole ---
  const VIRTIO = process.env.RIG_VIRTIO === '1';
  if (VIRTIO) sh(`ip link del phtap0 2>/dev/null; /usr/bin/ip tuntap add dev phtap0 mode tap && /usr/bin/ip link set phtap0 up && /usr/bin/ip addr add 10.99.0.1/24 dev phtap0`);
  traceOn();
  const cli = '/project/bin/porthole';
  const args = [cli, 'run', '--kernel', ctx.kit.vmlinuz, '--initrd', ctx.kit.initrd,
    '--append', `console=ttyS0 quiet panic=-1 nokaslr kit.modules=${VIRTIO ? 'virtio_pci,virtio_net,' : ''}ne2k_pci`, '--mem', '256M', '--cpus', '1',
    '--serial', 'stdio', '--verbose', ...(VIRTIO ? ['--nic', 'virtio,mac=52:54:00:4e:45:54,tap=phtap0'] : []), '--nic', `ne2k_pci,mac=${MAC},tap=phtap1`];
  const vm = ctx.spawn(process.execPath, args, { env: { ...process.env, PORTHOLE_FORBID_KOFFI_VIEW: '1', PORTHOLE_RAM_DUMP: `${ctx.outDir}/l2-ram` } });
  let onReset;
  const crashedA = new Promise((r) => { onReset = r; });
  vm.stderr.on('data', (d) => {
    for (const l of d.toString().split('\n')) {
      if (!l.trim()) continue;
      ctx.log(`porthole: ${l}`);
      if (/guest reset/.test(l)) { try { traceOff(); } catch {} onReset(); }
    }
  });
  const con = SerialConsole.fromChild(vm, { name: 'L2 (Porthole)', onOutput: consoleLogger('L2| ') });
  await con.waitForShell(300000);
  const nif = VIRTIO ? 'eth1' : 'eth0';
  await con.runOk(`for i in $(seq 60); do [ -e /sys/class/net/${nif} ] && break; sleep 0.5; done; ip link set ${nif} up && ip addr add 10.98.0.2/24 dev ${nif}`);
  if (VIRTIO) {
    await con.runOk('ip link set eth0 up && ip addr add 10.99.0.2/24 dev eth0');
    const v = await Promise.race([roundOn(con, 40001, '10.99.0.2', '10.99.0.1', 4 * 1048576).catch((e) => `error: ${e.message}`), crashedA.then(() => 'CRASH')]);
    note(`porthole virtio round: ${v}`);
  }
  note(`porthole L2: ${(await con.runOk('cat /proc/interrupts | grep -i "eth0\\|ne2k\\|timer\\|LOC"; uname -r')).trim()}`);
  const crashA = await load(con, PHASE_A_SEC, crashedA, 'porthole');
  if (crashA) {
    const shut = saveTrace('trace-porthole.txt');
    await new Promise((r) => setTimeout(r, 2000));
    await con.waitForShell(300000);
    const rips = [...new Set([...shut.matchAll(/rip 0x([0-9a-f]+)/g)].map((m) => m[1].padStart(16, '0')))];
    for (const rip of rips.slice(-4)) {
      const sym = await con.run(`sort /proc/kallsyms | awk -v a=${rip} '""$1 <= a { s = $0 } ""$1 > a { print s; exit }'`);
      note(`rip ${rip}: ${sym.output.trim()}`);
    }
    const idt = await con.run(`grep -E " (asm_exc_double_fault|asm_common_interrupt|entry_SYSCALL_64|irq_entries_start|asm_exc_page_fault|native_irq_return_iret|restore_regs_and_return_to_kernel|error_entry|common_interrupt_return|swapgs_restore_regs_and_return_to_usermode)$" /proc/kallsyms`);
    note(`symbols:\n${idt.output.trim()}`);
  } else {
    traceOff();
    saveTrace('trace-porthole.txt');
  }
  vm.kill('SIGKILL');
  await new Promise((r) => setTimeout(r, 1000));

  if (process.env.RIG_SKIP_QEMU === '1') { sh('ip link del phtap1 2>/dev/null; ip link del phtap0 2>/dev/null; true'); return out.filter((l) => !l.includes('\n')).join(' | '); }
  // --- phase B: QEMU -accel kvm ---
  traceOn();
  const qemu = ctx.spawn('qemu-system-x86_64', ['-accel', 'kvm', '-cpu', 'host', '-m', '256M', '-smp', '1', '-nodefaults', '-display', 'none', '-no-reboot',
    '-serial', 'stdio', '-kernel', ctx.kit.vmlinuz, '-initrd', ctx.kit.initrd, '-append', 'console=ttyS0 quiet panic=-1 nokaslr kit.modules=ne2k_pci',
    '-netdev', 'tap,id=n1,ifname=phtap1,script=no,downscript=no', '-device', `ne2k_pci,netdev=n1,mac=${MAC}`]);
  let onExit;
  const crashedB = new Promise((r) => { onExit = r; });
  qemu.once('exit', (code, sig) => { try { traceOff(); } catch {} note(`qemu exited: ${sig ?? code}`); onExit(); });
  qemu.stderr.on('data', (d) => ctx.log(`qemu: ${d.toString().trim()}`));
  const qcon = SerialConsole.fromChild(qemu, { name: 'L2 (QEMU)', onOutput: consoleLogger('Q2| ') });
  await qcon.waitForShell(300000);
  await qcon.runOk('for i in $(seq 60); do [ -e /sys/class/net/eth0 ] && break; sleep 0.5; done; ip link set eth0 up && ip addr add 10.98.0.2/24 dev eth0');
  note(`qemu L2: ${(await qcon.runOk('cat /proc/interrupts | grep -i "eth0\\|ne2k"; true')).trim()}`);
  const crashB = await load(qcon, PHASE_B_SEC, crashedB, 'qemu');
  if (crashB) saveTrace('trace-qemu.txt');
  qemu.kill('SIGKILL');
  sh('ip link del phtap1 2>/dev/null; true');
  return out.filter((l) => !l.includes('\n')).join(' | ');
};
