// `npm run rig -- exec test/rig/tools/usb-hotplug-exec.js --devices usb --tcg multi [--env N=8]
// [--env EMUL=1]`: plugs stick0 into a running L2 on Porthole (emulated xHCI, usbfs passthrough)
// N times, each time waiting for L2's disk, reading 4 MiB and unplugging, and counts the guest
// resets. L1's KVM traces shutdown exits and injected exceptions (EMUL=1 adds every instruction
// it emulates and its MMIO), and at the first reset the lines before the first injected exception
// and the shutdown are printed, so the instruction KVM could not fetch is named.
const { SerialConsole, consoleLogger, STICKS } = require('porthole-rig');
const fs = require('fs');
const { spawnSync } = require('child_process');
const { T, startKvmTrace, kvmTraceCounts, kvmTraceWindows, symbolAt } = require('./kvm-trace');
const SOCKET = '/tmp/usb-hotplug.sock';

module.exports = async (ctx) => {
  const sh = (c) => ctx.exec('sh', ['-c', c]);
  const n = Number(process.env.RIG_N || 8);
  const out = [];
  const note = (s) => { ctx.log(s); out.push(s); };
  startKvmTrace(sh, { bufferKb: 8192, emulation: process.env.RIG_EMUL === '1' });
  const serial = STICKS.stick0.serial;
  const stickName = () => fs.readdirSync('/sys/bus/usb/devices').find((d) => {
    try { return fs.readFileSync(`/sys/bus/usb/devices/${d}/serial`, 'utf8').trim() === serial; } catch { return false; }
  });
  const boundInL1 = () => { const d = stickName(); return d && fs.readdirSync(`/sys/bus/usb/devices/${d}`).some((x) => x.includes(':') && fs.existsSync(`/sys/bus/usb/devices/${d}/${x}/driver`)); };
  const waitFor = async (what, ms, fn) => { const t = Date.now(); while (Date.now() - t < ms) { if (fn()) return; await new Promise((r) => setTimeout(r, 500)); } throw new Error(`${what} did not happen within ${ms} ms`); };
  await waitFor('stick0 bound in L1', 60000, boundInL1);
  const name = stickName();
  const env = { ...process.env, XDG_DATA_HOME: '/tmp/usb-hotplug-data' };
  const cli = (args) => spawnSync(process.execPath, ['/project/bin/porthole', ...args, '--monitor', SOCKET], { encoding: 'utf8', env, timeout: 60000 });
  const vm = ctx.spawn(process.execPath, ['/project/bin/porthole', 'run', '--kernel', ctx.kit.vmlinuz, '--initrd', ctx.kit.initrd,
    '--append', 'console=ttyS0 quiet panic=-1 nokaslr kit.modules=xhci_pci,usb_storage,sd_mod', '--mem', '256M', '--cpus', '1',
    '--serial', 'stdio', '--verbose', '--usb', 'keyboard', '--monitor', SOCKET], { env });
  const resets = [];
  vm.stderr.on('data', (d) => { for (const m of String(d).matchAll(/^porthole: (guest reset[^\n]*)/gm)) resets.push(m[1]); });
  const con = SerialConsole.fromChild(vm, { name: 'L2', onOutput: consoleLogger('L2| ') });
  await con.waitForShell(240000);
  let plugged = 0;
  let firstReset = -1;
  for (let i = 1; i <= n && firstReset < 0; i++) {
    const add = cli(['usb', 'add', `host:${name}`]);
    const port = /^\s*(\d+)/m.exec(add.stdout)?.[1];
    if (add.status !== 0 || !port) throw new Error(`usb add failed: ${add.stderr}${add.stdout}`);
    let outcome = 'ok';
    try {
      const r = await con.run('for i in $(seq 120); do ls /sys/block | grep -q "^sd" && break; sleep 0.5; done; d=$(ls /sys/block | grep "^sd" | head -1); dd if=/dev/$d of=/dev/null bs=1M count=4 iflag=direct 2>&1 | tail -1', 120000);
      outcome = /records out|copied/.test(r.output) ? 'read' : `no read: ${r.output.trim().slice(-120)}`;
    } catch (e) { outcome = `console: ${e.message.split('\n')[0]}`; }
    if (resets.length > 0) { outcome = `reset (${resets.join('; ')})`; firstReset = i; }
    const rm = cli(['usb', 'remove', port]);
    note(`plug #${i}: ${outcome}; remove: ${rm.status === 0 ? 'ok' : rm.stderr.trim()}`);
    plugged++;
    await waitFor('stick0 back with L1', 60000, boundInL1);
  }
  const counts = kvmTraceCounts(sh);
  note(`injected exceptions ${counts.exceptions}, shutdown exits ${counts.shutdowns}`);
  for (const w of kvmTraceWindows(sh, counts, 16, 240)) note(w);
  if (firstReset > 0) {
    try {
      await con.waitForShell(240000);
      const rip = /reason shutdown rip (0x)?([0-9a-f]+)/.exec(sh(`grep -m1 "reason shutdown" ${T}/trace; true`))?.[2];
      const firstPf = /rip (0x)?([0-9a-f]+)/.exec(sh(`grep -B1 -m1 kvm_inj_exception ${T}/trace | head -1; true`))?.[2];
      for (const [what, r] of [['shutdown', rip], ['emulated before the first #PF', firstPf]]) {
        if (!r) continue;
        note(`${what} rip ${r} is in: ${await symbolAt(con, r)}`);
      }
    } catch (e) { note(`naming the rips failed: ${e.message.split('\n')[0]}`); }
  }
  fs.writeFileSync(`${ctx.outDir}/usb-hotplug-trace.txt`, fs.readFileSync(`${T}/trace`, 'utf8').slice(-4000000));
  con.send('poweroff -f\n');
  const summary = `${plugged} plugs, ${firstReset > 0 ? `reset at plug ${firstReset}` : 'no reset'}`;
  note(`TALLY ${summary}`);
  return summary;
};
