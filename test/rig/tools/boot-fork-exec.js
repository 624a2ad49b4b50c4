// `npm run rig -- exec test/rig/tools/boot-fork-exec.js --tcg multi [--env N=4] [--env VARIANTS=a,b]`
// Boots the L2 kit under Porthole N times per variant, alternating, each from the bzImage (a
// fresh HOME, so no unpacked kernel is cached and each boot forks the background unpacker),
// with a virtio-net card on user networking as in the net bench. A variant is ROOT[+ARG...]:
// a checkout's root holding bin/ and dist/ (e.g. a build without a fix), then kernel
// arguments added ('+' between them; 'verbose' drops quiet; 'nothp' turns L1's transparent
// huge pages off for that boot; 'nonic' boots without the card; 'elf' unpacks the kernel into
// the fresh HOME first, so Porthole boots the unpacked kernel; 'ramdump' has Porthole write
// guest RAM at a reset to the run's out folder (PORTHOLE_RAM_DUMP); none of these is a kernel
// argument). The variant `qemu` boots the same kit under QEMU -accel kvm (-no-reboot: a reset
// ends it). L1 KVM's shutdown exits and injected exceptions are traced; a reset logs the
// console's last lines and the trace's.
const fs = require('fs');
const os = require('os');
const path = require('path');
const { SerialConsole } = require('porthole-rig');
const { T, startKvmTrace, kvmTraceCounts, kvmTraceWindows, l1ThpOff } = require('./kvm-trace.js');
const { kitVmCommand } = require(path.join('/project', 'dist', 'test', 'bench', 'boot.js'));
module.exports = async (ctx) => {
  const sh = (c) => ctx.exec('sh', ['-c', c]);
  const n = Number(process.env.RIG_N || 4);
  const variants = (process.env.RIG_VARIANTS || '/project').split(',');
  const tally = Object.fromEntries(variants.map((v) => [v, { shell: 0, reset: 0, other: 0 }]));
  // L1's interprocessor and timer interrupts so far, summed over its two CPUs.
  const ipis = () => Object.fromEntries(fs.readFileSync('/proc/interrupts', 'utf8').split('\n')
    .filter((l) => /^\s*(TLB|CAL|RES|LOC):/.test(l)).map((l) => { const f = l.trim().split(/\s+/); return [f[0].slice(0, -1), f.slice(1, 3).reduce((a, b) => a + Number(b), 0)]; }));
  startKvmTrace(sh, { bufferKb: 8192, emulation: false });
  for (let i = 0; i < n; i++) {
    for (const variant of variants) {
      const [root, ...extra] = variant.split('+');
      const thpBack = extra.includes('nothp') ? l1ThpOff() : null;
      const append = ['kit.modules=virtio_pci,virtio_net', ...extra.filter((a) => !['verbose', 'nothp', 'nonic', 'elf', 'ramdump'].includes(a))].join(' ');
      const home = fs.mkdtempSync(path.join(os.tmpdir(), 'home-'));
      sh(`echo > ${T}/trace`);
      if (extra.includes('elf')) sh(`HOME=${home} node ${root}/dist/main/vmm/boot/kernel-unpack-main.js ${ctx.kit.vmlinuz} ${home}/.cache/porthole/kernels`);
      const nic = !extra.includes('nonic');
      // The benches' kit boot (test/bench/boot.ts), 1 vCPU.
      const [command, args] = kitVmCommand(root === 'qemu' ? 'qemu' : 'porthole', ctx.kit, 1, {
        append, verbose: extra.includes('verbose'), portholeRoot: root,
        porthole: ['--verbose', ...(nic ? ['--nic', 'virtio,user'] : [])],
        qemu: nic ? ['-netdev', 'user,id=n0', '-device', 'virtio-net-pci,netdev=n0'] : [],
      });
      const env = { ...process.env, HOME: home, ...(extra.includes('ramdump') ? { PORTHOLE_RAM_DUMP: path.join(ctx.outDir, `ram-boot${i + 1}`) } : {}) };
      const child = ctx.spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'], env });
      let reset = null;
      let err = '';
      const lost = new Promise((resolve) => {
        child.stderr.on('data', (d) => {
          err += d.toString();
          const m = /porthole: (guest reset[^\n]*)/.exec(err);
          if (m && !reset) { reset = m[1]; resolve('reset'); }
        });
        child.once('close', () => resolve('exit'));
      });
      const con = SerialConsole.fromChild(child, { name: `L2 ${variant}`, tailChars: 2500 });
      let text = '';
      child.stdout.on('data', (d) => { text = (text + d.toString()).slice(-2500); });
      const ipi0 = ipis();
      const t0 = Date.now();
      const outcome = await Promise.race([con.waitForShell(240000).then(() => 'shell', (e) => `other: ${e.message.split('\n')[0]}`), lost]);
      const kind = outcome === 'shell' ? 'shell' : outcome === 'reset' || (root === 'qemu' && outcome === 'exit') ? 'reset' : 'other';
      tally[variant][kind]++;
      const ipi1 = ipis();
      const perSec = (k) => ((ipi1[k] - ipi0[k]) / ((Date.now() - t0) / 1000)).toFixed(0);
      ctx.log(`boot ${i + 1} ${variant}: ${outcome}${reset ? ` (${reset})` : ''} after ${((Date.now() - t0) / 1000).toFixed(1)} s; ${(/kernel: [^\n]*/.exec(err) || ['?'])[0].slice(0, 40)}; L1 interrupts/s meanwhile: TLB shootdowns ${perSec('TLB')}, function calls ${perSec('CAL')}, rescheduling ${perSec('RES')}, local timer ${perSec('LOC')}`);
      if (kind !== 'shell') {
        ctx.log(`  console before it:\n${text.replace(/\r/g, '').split('\n').slice(-25).join('\n')}`);
        const counts = kvmTraceCounts(sh);
        ctx.log(`  L1 KVM: ${counts.shutdowns} shutdown exits, ${counts.exceptions} injected exceptions`);
        for (const w of kvmTraceWindows(sh, counts, 12, 220, '  ')) ctx.log(w);
      }
      con.close();
      try { process.kill(-child.pid, 'SIGKILL'); } catch { try { child.kill('SIGKILL'); } catch { /* gone */ } }
      await new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r() : child.once('close', r)));
      thpBack?.();
      fs.rmSync(home, { recursive: true, force: true });
    }
  }
  return variants.map((v) => `${v}: ${tally[v].shell} shells, ${tally[v].reset} resets, ${tally[v].other} other`).join('; ');
};
