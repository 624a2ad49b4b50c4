// `npm run rig -- exec test/rig/tools/usb-reboot-exec.js --tcg multi [--env N=3]`: the L2 kit
// under Porthole with a 64 MiB USB stick on the emulated xHCI, rebooted from inside L2 N times
// (`echo b > /proc/sysrq-trigger`: a guest reset, so Porthole rebuilds the machine in the same
// process and hands the stick over). After each boot L2 must find the stick and read and write
// it with dd; the L2 console of every boot goes to /rig-out/usb-reboot-console.txt.
const fs = require('fs');
const path = require('path');
const { SerialConsole } = require('porthole-rig');
const { waitForDiskOfSize } = require('/project/dist/test/rig/dd-rate.js');
const APPEND = 'console=ttyS0 quiet panic=-1 kit.modules=xhci_pci,usb_storage,sd_mod';
const MIB = 64;

module.exports = async (ctx) => {
  const boots = Number(process.env.RIG_N || 3) + 1;
  const image = '/tmp/usb-reboot-stick.img';
  fs.rmSync(image, { force: true });
  fs.writeFileSync(image, '');
  fs.truncateSync(image, MIB * 1048576);
  const child = ctx.spawn(process.execPath, [
    '/project/bin/porthole', 'run', '--kernel', ctx.kit.vmlinuz, '--initrd', ctx.kit.initrd, '--append', APPEND,
    '--mem', '256M', '--cpus', '1', '--serial', 'stdio', '--usb', `storage:${image}`, '--verbose',
  ], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    stderr += chunk;
    for (const line of chunk.split('\n')) if (/guest reset|error|xhci/i.test(line)) ctx.log(`porthole| ${line}`);
  });
  const con = SerialConsole.fromChild(child, { name: 'L2 on Porthole' });
  const keep = () => fs.writeFileSync(path.join(ctx.outDir, 'usb-reboot-console.txt'), `${con.transcript()}\n\n--- Porthole stderr ---\n${stderr}`);
  const out = [];
  try {
    for (let boot = 1; boot <= boots; boot++) {
      const from = Date.now();
      await con.waitForShell(300000);
      const disk = await waitForDiskOfSize(con, MIB, 120000);
      const marker = `boot${boot}-${Date.now()}`;
      await con.runOk(`printf '%-512s' ${marker} | dd of=/dev/${disk} bs=512 seek=${boot} count=1 oflag=direct conv=fsync 2>/dev/null`, 120000);
      const back = await con.runOk(`dd if=/dev/${disk} bs=512 skip=${boot} count=1 iflag=direct 2>/dev/null | head -c ${marker.length}`, 120000);
      if (back.trim() !== marker) throw new Error(`boot ${boot}: read back "${back.trim()}", wrote "${marker}"`);
      const dd = await con.runOk(`dd if=/dev/${disk} of=/dev/null bs=1048576 count=${MIB} iflag=direct 2>&1 | tail -1`, 300000);
      const line = `boot ${boot}: shell and ${disk} after ${((Date.now() - from) / 1000).toFixed(1)} s; marker written and read back; ${dd.trim()}`;
      ctx.log(line);
      out.push(line);
      if (boot < boots) {
        con.send('echo b > /proc/sysrq-trigger\n');
        // waitForShell's first probe starts with Ctrl-C, which could cut the echo short.
        await new Promise((resolve) => setTimeout(resolve, 5000));
      }
    }
  } finally {
    keep();
  }
  return out.join('; ');
};
