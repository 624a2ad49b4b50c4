// `npm run rig -- exec test/rig/tools/disk-qd1-exec.js --tcg multi [--env DISK_QD1_OPS=N]
// [--env DISK_QD1_QEMU_FIRST=1]` (issue 13): where a queue-depth-1 virtio-blk
// read's time goes. L2 reads N × 4 KiB with O_DIRECT (one dd: one request at a time) from a
// raw disk under Porthole and then under QEMU -accel kvm, each after a warm-up pass. Porthole
// reports the disk I/O thread's own time (`io-thread-us`) and its reads, so the report splits a
// request's time into the thread's part and the rest (the notify, the wake-ups, the guest).
const fs = require('fs');
const path = require('path');
const { SerialConsole, consoleLogger } = require('porthole-rig');

// The runner's --env NAME=VALUE arrives as RIG_NAME.
const N = Number(process.env.RIG_DISK_QD1_OPS || 1000);
const WARM_UP = 300;
/** QEMU first when set (to see whether a stall is L1's, not Porthole's). */
const QEMU_FIRST = process.env.RIG_DISK_QD1_QEMU_FIRST === '1';
const MIB = 64;

async function measure(ctx, con) {
  await con.runOk('for i in $(seq 60); do [ -e /sys/block/vda ] && break; sleep 0.5; done');
  // Warm-up (the disk thread's JIT), then the timed pass; busybox dd prints no rate, so time it in L2.
  await con.runOk(`dd if=/dev/vda of=/dev/null bs=4k count=${WARM_UP} iflag=direct 2>/dev/null`, 150000);
  const out = await con.runOk(`a=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/vda of=/dev/null bs=4k count=${N} skip=${N} iflag=direct 2>/dev/null; b=$(cut -d' ' -f1 /proc/uptime); echo "T $a $b"`, 150000);
  const m = /T ([\d.]+) ([\d.]+)/.exec(out);
  if (!m) throw new Error(`no timing in ${out}`);
  return Number(m[2]) - Number(m[1]);
}

async function boot(ctx, vmm, image) {
  const append = 'console=ttyS0 quiet panic=-1 kit.modules=virtio_pci,virtio_blk';
  const args = vmm === 'porthole'
    ? ['/project/bin/porthole', 'run', '--kernel', ctx.kit.vmlinuz, '--initrd', ctx.kit.initrd, '--append', append,
      '--mem', '256M', '--cpus', '1', '--serial', 'stdio', '--verbose', '--stats', '--disk', image]
    : ['-accel', 'kvm', '-m', '256M', '-smp', '1', '-nodefaults', '-display', 'none', '-serial', 'stdio', '-kernel', ctx.kit.vmlinuz,
      '-initrd', ctx.kit.initrd, '-append', append, '-drive', `file=${image},format=raw,if=none,id=d0`, // the disk bench's QEMU drive
      '-device', 'virtio-blk-pci,drive=d0'];
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
  try {
    seconds = await measure(ctx, con);
  } catch (e) {
    ctx.log(`${vmm}: the reads did not finish: ${e.message.split('\n')[0]}`);
  }
  con.send('poweroff -f\n');
  await Promise.race([exited, new Promise((r) => setTimeout(r, 60000))]);
  vm.kill('SIGKILL');
  return { seconds, stderr };
}

/** A disk0 counter from `--stats` at the end ("  disk0/reads   4.1k"). */
function counter(stderr, name) {
  const line = stderr.find((l) => new RegExp(`^\\s*disk0/${name}\\s`).test(l));
  const m = line && /([\d.]+)([kM]?)\s*$/.exec(line);
  if (!m) return NaN;
  return Number(m[1]) * (m[2] === 'k' ? 1e3 : m[2] === 'M' ? 1e6 : 1);
}

module.exports = async (ctx) => {
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
  for (const l of lines) ctx.log(l);
  return lines.join('; ');
};
