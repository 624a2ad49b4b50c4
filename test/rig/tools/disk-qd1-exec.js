// `npm run rig -- exec test/rig/tools/disk-qd1-exec.js --tcg multi [--env DISK_QD1_OPS=N]
// [--env DISK_QD1_QEMU_FIRST=1] [--env DISK_QD1_HALT_POLL_NS=N] [--env DISK_QD1_PIN=1]` (issue 13):
// where a queue-depth-1 virtio-blk read's time goes. L2 reads N × 4 KiB with O_DIRECT (one dd: one
// request at a time) from a raw disk under Porthole and then under QEMU -accel kvm, each after a
// warm-up pass. Porthole reports the disk I/O thread's own time (`io-thread-us`) and its reads, so
// the report splits a request's time into the thread's part and the rest (the notify, the
// wake-ups, the guest). For each VMM it also reports, per named thread over the timed pass, L1's
// scheduler accounting (/proc/PID/task/TID/schedstat: time on a CPU, time waiting for one, and
// the CPUs it ran on), so a thread that waits behind the vCPU's thread shows.
// HALT_POLL_NS sets L1 KVM's halt_poll_ns for both VMMs; PIN=1 puts each VMM's vCPU thread on L1
// CPU 0 and its other threads on CPU 1. STRACE=1 traces each VMM's threads but the vCPU and the
// I/O thread during the timed pass, and reports their system calls and what woke their epoll
// waits (strace slows them: counts, not times).
const fs = require('fs');
const path = require('path');
const { SerialConsole, consoleLogger } = require('porthole-rig');

// The runner's --env NAME=VALUE arrives as RIG_NAME.
const N = Number(process.env.RIG_DISK_QD1_OPS || 1000);
const WARM_UP = 300;
/** QEMU first when set (to see whether a stall is L1's, not Porthole's). */
const QEMU_FIRST = process.env.RIG_DISK_QD1_QEMU_FIRST === '1';
const MIB = 64;
const HALT_POLL_NS = process.env.RIG_DISK_QD1_HALT_POLL_NS;
const PIN = process.env.RIG_DISK_QD1_PIN === '1';
const STRACE = process.env.RIG_DISK_QD1_STRACE === '1';

/**
 * strace on the VMM's threads other than the vCPU and the disk thread (tracing those would
 * interrupt KVM_RUN and the I/O being measured) until the returned stop is called. The stop
 * reports the system calls per thread and, for each epoll wait that returned events, what
 * the woken descriptors are (/proc/PID/fd), the commonest first.
 */
function traceSyscalls(ctx, pid, skip) {
  const out = `/tmp/qd1-strace-${pid}`;
  const threads = [...threadSched(pid)].filter(([, t]) => !skip.includes(t.comm));
  const names = new Map(threads.map(([tid, t]) => [tid, t.comm]));
  // No -f: that would attach every thread of the process, the vCPU's among them.
  const child = ctx.spawn('strace', ['-qq', '-o', out, ...threads.flatMap(([tid]) => ['-p', tid])]);
  return async () => {
    child.kill('SIGINT');
    await new Promise((r) => child.once('exit', r));
    const perThread = new Map();
    const wakers = new Map();
    const timeouts = new Map();
    for (const line of fs.readFileSync(out, 'utf8').split('\n')) {
      // A call that blocked shows twice ("<unfinished ...>", then "<... resumed>"): count its start.
      const m = /^(\d+)\s+([a-z_0-9]+)\(/.exec(line);
      if (m) {
        const calls = perThread.get(m[1]) || new Map();
        calls.set(m[2], (calls.get(m[2]) || 0) + 1);
        perThread.set(m[1], calls);
      }
      // epoll_pwait(fd, [{events=EPOLLIN, data={u32=12, u64=12}}], ...) = 1: libuv keeps the fd in u32.
      if (/epoll_pwait/.test(line) && /= [1-9]/.test(line)) {
        for (const w of line.matchAll(/u32=(\d+)/g)) wakers.set(w[1], (wakers.get(w[1]) || 0) + 1);
      }
      // The wait's timeout is libuv's next timer: its spread shows which timers keep waking the thread.
      const t = /epoll_pwait(?:\(\d+, | resumed>)(?:\[\]|\[.*\]|0x[0-9a-f]+), \d+, (-?\d+)/.exec(line);
      if (t) timeouts.set(t[1], (timeouts.get(t[1]) || 0) + 1);
    }
    const fdName = (fd) => { try { return fs.readlinkSync(`/proc/${pid}/fd/${fd}`); } catch { return 'closed'; } };
    return [
      ...[...perThread].map(([tid, calls]) => `${names.get(tid) || '?'}[${tid}]: ` +
        [...calls].sort((a, b) => b[1] - a[1]).slice(0, 8).map(([n, c]) => `${c} ${n}`).join(', ')),
      `epoll_pwait timeouts (ms: count): ${[...timeouts].sort((a, b) => b[1] - a[1]).slice(0, 12).map(([ms, c]) => `${ms}: ${c}`).join(', ')}`,
      `epoll wake-ups by descriptor: ${[...wakers].sort((a, b) => b[1] - a[1]).slice(0, 8).map(([fd, c]) => `fd ${fd} (${fdName(fd)}) ${c}`).join(', ')}`,
    ];
  };
}

/** Per thread of `pid`: name, ns on a CPU, ns waiting for one, and the CPU it last ran on. */
function threadSched(pid) {
  const out = new Map();
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      const comm = fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
      const [runNs, waitNs, slices] = fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').trim().split(/\s+/).map(Number);
      const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const cpu = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[36]);
      out.set(tid, { comm, runNs, waitNs, slices, cpu });
    } catch { /* the thread ended */ }
  }
  return out;
}

/** The threads that ran during the pass, busiest first: "name: run X ms, wait Y ms, N slices, last CPU c". */
function schedReport(before, after, ops) {
  const rows = [];
  for (const [tid, a] of after) {
    const b = before.get(tid) || { runNs: 0, waitNs: 0, slices: 0 };
    const run = (a.runNs - b.runNs) / 1e6;
    if (run < 1) continue;
    rows.push({ run, text: `${a.comm}[${tid}]: on CPU ${run.toFixed(0)} ms (${(run * 1000 / ops).toFixed(0)} µs/op), ` +
      `waiting ${((a.waitNs - b.waitNs) / 1e6).toFixed(0)} ms (${((a.waitNs - b.waitNs) / 1e3 / ops).toFixed(0)} µs/op), ${a.slices - b.slices} slices, last CPU ${a.cpu}` });
  }
  return rows.sort((x, y) => y.run - x.run).map((r) => r.text);
}

/** PIN: the vCPU thread on CPU 0, every other thread of the VMM (and those it makes later) on CPU 1. */
function pinThreads(ctx, pid, vcpuName) {
  for (const [tid, t] of threadSched(pid)) {
    const cpu = t.comm === vcpuName ? 0 : 1;
    ctx.exec('taskset', ['-p', '-c', String(cpu), tid]);
    ctx.log(`pinned ${t.comm}[${tid}] to CPU ${cpu}`);
  }
}

async function measure(ctx, con, pid, vmm) {
  await con.runOk('for i in $(seq 60); do [ -e /sys/block/vda ] && break; sleep 0.5; done');
  // Warm-up (the disk thread's JIT), then the timed pass; busybox dd prints no rate, so time it in L2.
  await con.runOk(`dd if=/dev/vda of=/dev/null bs=4k count=${WARM_UP} iflag=direct 2>/dev/null`, 150000);
  if (PIN) pinThreads(ctx, pid, vmm === 'porthole' ? 'vcpu0' : 'CPU 0/KVM');
  const before = threadSched(pid);
  const stopTrace = STRACE ? traceSyscalls(ctx, pid, vmm === 'porthole' ? ['vcpu0', 'disk-io'] : ['CPU 0/KVM', 'worker']) : null;
  if (stopTrace) await new Promise((r) => setTimeout(r, 2000)); // attached to every thread
  const out = await con.runOk(`a=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/vda of=/dev/null bs=4k count=${N} skip=${N} iflag=direct 2>/dev/null; b=$(cut -d' ' -f1 /proc/uptime); echo "T $a $b"`, 150000);
  const sched = schedReport(before, threadSched(pid), N);
  for (const l of sched) ctx.log(`${vmm} thread ${l}`);
  if (stopTrace) for (const l of await stopTrace()) ctx.log(`${vmm} syscalls ${l}`);
  const m = /T ([\d.]+) ([\d.]+)/.exec(out);
  if (!m) throw new Error(`no timing in ${out}`);
  return { seconds: Number(m[2]) - Number(m[1]), sched };
}

async function boot(ctx, vmm, image) {
  const append = 'console=ttyS0 quiet panic=-1 kit.modules=virtio_pci,virtio_blk';
  const args = vmm === 'porthole'
    ? ['/project/bin/porthole', 'run', '--kernel', ctx.kit.vmlinuz, '--initrd', ctx.kit.initrd, '--append', append,
      '--mem', '256M', '--cpus', '1', '--serial', 'stdio', '--verbose', '--stats', '--disk', image]
    : ['-accel', 'kvm', '-m', '256M', '-smp', '1', '-nodefaults', '-display', 'none', '-serial', 'stdio', '-kernel', ctx.kit.vmlinuz,
      '-initrd', ctx.kit.initrd, '-append', append, '-drive', `file=${image},format=raw,if=none,id=d0`, // the disk bench's QEMU drive
      '-device', 'virtio-blk-pci,drive=d0', '-name', 'qd1,debug-threads=on']; // named threads, as Porthole's
  const vm = ctx.spawn(vmm === 'porthole' ? process.execPath : 'qemu-system-x86_64', args);
  const stderr = [];
  vm.stderr.on('data', (d) => {
    for (const l of d.toString().split('\n')) {
      if (!l.trim()) continue;
      stderr.push(l);
      ctx.log(`${vmm} stderr: ${l}`);
    }
  });
  const exited = new Promise((resolve) => vm.once('exit', () => resolve()));
  const con = SerialConsole.fromChild(vm, { name: `L2 on ${vmm}`, onOutput: consoleLogger(`${vmm}| `) });
  await con.waitForShell(420000);
  let seconds = NaN;
  let sched = [];
  try {
    ({ seconds, sched } = await measure(ctx, con, vm.pid, vmm));
  } catch (e) {
    ctx.log(`${vmm}: the reads did not finish: ${e.message.split('\n')[0]}`);
  }
  con.send('poweroff -f\n');
  await Promise.race([exited, new Promise((r) => setTimeout(r, 60000))]);
  vm.kill('SIGKILL');
  return { seconds, stderr, sched };
}

/** A disk0 counter from `--stats` at the end ("  disk0/reads   4.1k"). */
function counter(stderr, name) {
  const line = stderr.find((l) => new RegExp(`^\\s*disk0/${name}\\s`).test(l));
  const m = line && /([\d.]+)([kM]?)\s*$/.exec(line);
  if (!m) return NaN;
  return Number(m[1]) * (m[2] === 'k' ? 1e3 : m[2] === 'M' ? 1e6 : 1);
}

module.exports = async (ctx) => {
  const haltPoll = '/sys/module/kvm/parameters/halt_poll_ns';
  ctx.log(`L1 KVM halt_poll_ns ${fs.readFileSync(haltPoll, 'utf8').trim()}`);
  // Without a vDSO-capable clocksource every clock read in L1 (performance.now) is a system call.
  const clocks = '/sys/devices/system/clocksource/clocksource0';
  ctx.log(`L1 clocksource ${fs.readFileSync(`${clocks}/current_clocksource`, 'utf8').trim()} (available: ${fs.readFileSync(`${clocks}/available_clocksource`, 'utf8').trim()})`);
  if (HALT_POLL_NS !== undefined) {
    fs.writeFileSync(haltPoll, HALT_POLL_NS);
    ctx.log(`L1 KVM halt_poll_ns set to ${fs.readFileSync(haltPoll, 'utf8').trim()}`);
  }
  const image = path.join('/tmp', 'qd1.img');
  fs.writeFileSync(image, Buffer.alloc(MIB << 20, 0x5a));
  const qemu = QEMU_FIRST ? await boot(ctx, 'qemu', image) : null;
  const porthole = await boot(ctx, 'porthole', image);
  const later = qemu ?? await boot(ctx, 'qemu', image);
  const reads = counter(porthole.stderr, 'reads');
  const busyUs = counter(porthole.stderr, 'io-thread-us');
  const perOp = (s) => (s / N * 1e6).toFixed(0);
  const lines = [
    `Porthole: ${N} QD1 4 KiB reads in ${porthole.seconds.toFixed(2)} s (${perOp(porthole.seconds)} µs each)`,
    `QEMU: ${N} in ${later.seconds.toFixed(2)} s (${perOp(later.seconds)} µs each)`,
    `Porthole's disk I/O thread: io-thread-us ${busyUs} over ${reads} reads (both passes and the boot): ${(busyUs / reads).toFixed(0)} µs per read`,
  ];
  lines.push(...porthole.sched.slice(0, 4).map((l) => `Porthole ${l}`), ...later.sched.slice(0, 4).map((l) => `QEMU ${l}`));
  for (const l of lines) ctx.log(l);
  return lines.join('; ');
};
