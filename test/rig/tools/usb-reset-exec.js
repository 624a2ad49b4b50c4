// `npm run rig -- exec test/rig/tools/usb-reset-exec.js --devices iommu,extra-xhci --tcg multi
// [--env N=4] [--env MODES=porthole-controller,porthole-emulated,qemu-controller]`: how often
// the L2 kit resets while it enumerates stick1 at boot, by VMM and USB path. Porthole takes
// stick1 by a USB rule (usbPassthroughPath pinned: "controller" assigns L1's second xHCI through
// VFIO, "emulated" passes the stick through its own xHCI); QEMU assigns the same xHCI with
// vfio-pci. L1's KVM traces SVM shutdown exits (a triple fault: KVM re-initialises the vCPU
// before userspace sees it) and injected exceptions; the first Porthole reset's rip is named
// from the rebooted L2's /proc/kallsyms (nokaslr; Porthole boots the unpacked kernel, which
// has no KASLR either). Per boot it also prints what moved in L1's /proc/vmstat (page
// migration, THP splits and collapses), and L2's USB messages when the disk never came.
// SPLITS=1 adds who split huge PMDs (function tracer stacks) and khugepaged's collapses.
const { SerialConsole, consoleLogger } = require('porthole-rig');
const fs = require('fs');
const { T, startKvmTrace, kvmTraceCounts, kvmTraceWindows, symbolAt, l1ThpOff } = require('./kvm-trace');
const STICK1_SERIAL = 'RIGSTICK1';
const APPEND = 'console=ttyS0 quiet panic=-1 nokaslr kit.modules=xhci_pci,usb_storage,sd_mod';

module.exports = async (ctx) => {
  const sh = (c) => ctx.exec('sh', ['-c', c]);
  const n = Number(process.env.RIG_N || 4);
  const modes = (process.env.RIG_MODES || 'porthole-controller,porthole-emulated,qemu-controller').split(',');
  const out = [];
  const note = (s) => { ctx.log(s); out.push(s); };
  // EMUL=1: every instruction L1's KVM emulates (an MMIO access trapped by NPT is one), with its
  // bytes and whether it failed: an injected #PF then shows the instruction it came from.
  startKvmTrace(sh, { bufferKb: 4096, emulation: process.env.RIG_EMUL === '1' });
  note(`L1 kvm_amd: ${sh('cd /sys/module/kvm_amd/parameters && for p in npt nested avic vls vgif nrips; do printf "%s=%s " $p "$(cat $p 2>/dev/null)"; done; echo').trim()}`);
  // SPLITS=1: who splits huge PMDs (function tracer with stacks) and which mm khugepaged collapses.
  if (process.env.RIG_SPLITS === '1') {
    sh(`cd ${T} && echo 0 > tracing_on && (echo __split_huge_pmd > set_ftrace_filter) && echo function > current_tracer && echo 1 > options/func_stack_trace && ` +
      `for e in events/huge_memory/*/enable; do echo 1 > $e; done; echo 1 > tracing_on; true`);
  }

  // L1's second xHCI: the PCI function above stick1's USB device.
  const usbDev = fs.readdirSync('/sys/bus/usb/devices').find((d) => {
    try { return fs.readFileSync(`/sys/bus/usb/devices/${d}/serial`, 'utf8').trim() === STICK1_SERIAL; } catch { return false; }
  });
  if (!usbDev) throw new Error('stick1 is not in L1 (rig device extra-xhci)');
  const xhci = fs.realpathSync(`/sys/bus/usb/devices/${usbDev}`).split('/').filter((p) => /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.\d$/.test(p)).pop();
  note(`stick1 is ${usbDev} on ${xhci}`);
  const driverOf = (a) => { try { return fs.readlinkSync(`/sys/bus/pci/devices/${a}/driver`).split('/').pop(); } catch { return null; } };
  const toVfio = () => {
    if (driverOf(xhci) === 'vfio-pci') return;
    if (driverOf(xhci)) fs.writeFileSync(`/sys/bus/pci/devices/${xhci}/driver/unbind`, xhci);
    fs.writeFileSync(`/sys/bus/pci/devices/${xhci}/driver_override`, 'vfio-pci');
    fs.writeFileSync('/sys/bus/pci/drivers_probe', xhci);
  };
  const toHost = () => {
    try {
      if (driverOf(xhci)) fs.writeFileSync(`/sys/bus/pci/devices/${xhci}/driver/unbind`, xhci);
      fs.writeFileSync(`/sys/bus/pci/devices/${xhci}/driver_override`, '\n');
      fs.writeFileSync('/sys/bus/pci/drivers_probe', xhci);
    } catch { /* checked by the next boot */ }
  };
  const tally = {};
  const vmstat = () => Object.fromEntries(fs.readFileSync('/proc/vmstat', 'utf8').trim().split('\n').map((l) => { const [k, v] = l.split(' '); return [k, Number(v)]; }));
  let named = false;

  async function boot(mode, i) {
    // A "~nothp" suffix boots with L1's transparent huge pages off (restored afterwards).
    const noThp = mode.endsWith('~nothp');
    const [vmm, path] = mode.replace(/~nothp$/, '').split('-');
    const thpBack = noThp ? l1ThpOff() : null;
    sh(`echo > ${T}/trace`);
    const vm0 = vmstat();
    let child;
    const resets = [];
    if (vmm === 'porthole') {
      // path: controller / emulated (a USB rule for stick1, usbPassthroughPath pinned),
      // assign (--pci-assign of L1's second xHCI, no USB config: no emulated xHCI),
      // emustick (the emulated xHCI with an emulated stick on an image file, nothing from L1).
      let extra;
      if (path === 'assign') extra = ['--pci-assign', xhci];
      else if (path === 'emustick') {
        const img = '/tmp/usb-reset-stick.img';
        if (!fs.existsSync(img)) { fs.writeFileSync(img, ''); fs.truncateSync(img, 8 * 1048576); }
        extra = ['--usb', `storage:${img}`];
      } else {
        const cfg = `/tmp/usb-reset-${path}.json`;
        fs.writeFileSync(cfg, JSON.stringify({ name: 'usb-reset', usbPassthroughPath: path, usb: { controller: 'xhci', rules: [{ match: { serial: STICK1_SERIAL } }] } }));
        extra = ['--config', cfg];
      }
      const dataDir = '/tmp/usb-reset-data';
      child = ctx.spawn(process.execPath, ['/project/bin/porthole', 'run', ...extra, '--kernel', ctx.kit.vmlinuz, '--initrd', ctx.kit.initrd,
        '--append', APPEND, '--mem', '256M', '--cpus', '1', '--serial', 'stdio', '--verbose'],
      { env: { ...process.env, XDG_DATA_HOME: dataDir } });
    } else {
      // path: controller (vfio-pci of L1's second xHCI), emulated (QEMU's own xHCI with stick1
      // through usb-host), emustick (QEMU's own xHCI with usb-storage on an image file).
      let extra;
      if (path === 'controller') {
        toVfio();
        extra = ['-device', `vfio-pci,host=${xhci}`];
      } else if (path === 'emustick') {
        const img = '/tmp/usb-reset-stick.img';
        if (!fs.existsSync(img)) { fs.writeFileSync(img, ''); fs.truncateSync(img, 8 * 1048576); }
        extra = ['-device', 'qemu-xhci,id=x', '-drive', `if=none,id=stick,format=raw,file=${img}`, '-device', 'usb-storage,bus=x.0,drive=stick'];
      } else {
        const [bus, addr] = [usbDev.split('-')[0], fs.readFileSync(`/sys/bus/usb/devices/${usbDev}/devnum`, 'utf8').trim()];
        extra = ['-device', 'qemu-xhci,id=x', '-device', `usb-host,bus=x.0,hostbus=${bus},hostaddr=${addr}`];
      }
      child = ctx.spawn('qemu-system-x86_64', ['-accel', 'kvm', '-M', 'q35', '-cpu', 'host', '-m', '256M', '-smp', '1', '-nodefaults', '-no-user-config',
        '-display', 'none', '-no-reboot', '-monitor', 'none', '-serial', 'stdio', '-kernel', ctx.kit.vmlinuz, '-initrd', ctx.kit.initrd, '-append', APPEND,
        ...extra]);
    }
    let stderr = '';
    child.stderr.on('data', (d) => {
      stderr = (stderr + d).slice(-8000);
      for (const m of String(d).matchAll(/^porthole: (guest reset[^\n]*)/gm)) resets.push(m[1]);
    });
    const exited = new Promise((r) => child.once('exit', (c, s) => r(s || `code ${c}`)));
    const con = SerialConsole.fromChild(child, { name: `${mode} #${i}` });
    const t0 = Date.now();
    let outcome;
    try {
      await con.waitForShell(240000);
      // Until stick1's disk appears; a reset loses the command, so poll its own output.
      const r = await Promise.race([
        con.run('for i in $(seq 120); do ls /sys/block | grep -q "^sd" && break; sleep 0.5; done; ls /sys/block | grep "^sd"', 90000).then((x) => (/^sd/m.test(x.output) ? 'disk' : 'no disk')),
        exited.then((e) => `exited ${e}`),
      ]);
      outcome = resets.length > 0 ? 'reset' : r;
      if (outcome === 'no disk') {
        // What L2 says about its USB when the disk never came (if its shell still answers).
        try { note(`${mode} #${i}: L2 dmesg:\n${(await con.run('dmesg | grep -iE "usb|xhci|sd |scsi|error|fail|timeout" | tail -25', 30000)).output}`); } catch (e) { note(`${mode} #${i}: L2 shell gone: ${e.message.split('\n')[0]}`); }
      }
      if (resets.length > 0 && vmm === 'porthole' && !named) {
        named = true;
        // The rebooted L2 names the rip the trace saw.
        try {
          await con.waitForShell(240000);
          const trace = sh(`grep "reason shutdown\\|shutdown" ${T}/trace | tail -3; grep kvm_inj_exception ${T}/trace | tail -5; true`);
          note(`trace at the reset:\n${trace}`);
          const rip = /rip (0x)?([0-9a-f]+)/.exec(trace)?.[2];
          if (rip) {
            note(`rip ${rip.padStart(16, '0')} is in: ${await symbolAt(con, rip)}`);
          }
        } catch (e) { note(`naming the rip failed: ${e.message}`); }
      }
    } catch (e) {
      outcome = resets.length > 0 ? 'reset' : child.exitCode !== null || child.signalCode !== null ? 'exit' : 'timeout';
      note(`${mode} #${i}: ${e.message.split('\n')[0]}`);
    } finally {
      con.send('poweroff -f\n');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 30000))]);
      child.kill('SIGKILL');
      await exited;
      if ((vmm === 'qemu' && path === 'controller') || path === 'assign') toHost();
      thpBack?.();
    }
    // QEMU runs with -no-reboot: a triple fault ends it.
    if (vmm === 'qemu' && outcome.startsWith('exited')) outcome = 'reset (QEMU exited)';
    const vm1 = vmstat();
    const moved = Object.keys(vm1).filter((k) => /migrat|compact|thp|numa|ksm|swp|pswp/.test(k) && vm1[k] !== vm0[k]).map((k) => `${k} +${vm1[k] - vm0[k]}`);
    const counts = kvmTraceCounts(sh);
    const shut = counts.shutdowns;
    const pf = counts.exceptions;
    if (process.env.RIG_SPLITS === '1') {
      const splits = sh(`grep -A14 "__split_huge_pmd <-" ${T}/trace | cut -c1-150 | head -120; grep -E "mm_collapse_huge_page[^_]|mm_khugepaged_scan_pmd" ${T}/trace | grep -v "status=(no_writable|exceed|pte_non_present|page_lru|scan_aborted|no_pte_table)" | tail -6; true`);
      note(`${mode} #${i}: splits and collapses:\n${splits}`);
    }
    // What L1's KVM did just before the first injected exception and the first shutdown.
    for (const w of kvmTraceWindows(sh, counts, 10, 220, `${mode} #${i}: `)) note(w);
    note(`${mode} #${i}: L1 vmstat moved: ${moved.join(', ') || 'nothing'}; shutdown exits ${shut}, injected exceptions ${pf}`);
    note(`${mode} #${i}: ${outcome} after ${((Date.now() - t0) / 1000).toFixed(1)} s${resets.length ? ` (${resets.join('; ')})` : ''}${outcome !== 'disk' ? `; stderr tail: ${stderr.trim().split('\n').slice(-3).join(' | ')}` : ''}`);
    (tally[mode] ||= {})[outcome] = (tally[mode][outcome] || 0) + 1;
    // stick1 back with L1's usb-storage before the next boot.
    for (let k = 0; k < 60; k++) {
      const back = fs.readdirSync('/sys/bus/usb/devices').some((d) => {
        try { return fs.readFileSync(`/sys/bus/usb/devices/${d}/serial`, 'utf8').trim() === STICK1_SERIAL && fs.readdirSync(`/sys/bus/usb/devices/${d}`).some((x) => x.includes(':') && fs.existsSync(`/sys/bus/usb/devices/${d}/${x}/driver`)); } catch { return false; }
      });
      if (back) break;
      await new Promise((r) => setTimeout(r, 500));
    }
  }

  for (let i = 1; i <= n; i++) for (const mode of modes) await boot(mode, i);
  fs.writeFileSync(`${ctx.outDir}/usb-reset-trace.txt`, fs.readFileSync(`${T}/trace`, 'utf8').slice(-2000000));
  const summary = Object.entries(tally).map(([m, t]) => `${m}: ${Object.entries(t).map(([k, v]) => `${v} ${k}`).join(', ')}`).join('; ');
  note(`TALLY ${summary}`);
  return summary;
};
