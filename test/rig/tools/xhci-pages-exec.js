// `npm run rig -- exec test/rig/tools/xhci-pages-exec.js --tcg multi [--env N=3]`: the xHCI's
// read-only register pages and queued USBSTS writes against every register access exiting
// (PORTHOLE_XHCI_TRAP_REGISTERS=1), in one L1: N boots of each, alternating, of the L2 kit
// under Porthole with a 64 MiB stick; per boot (after a warm-up of each kind) 1 MiB reads and
// writes and 4 KiB reads and writes with dd O_DIRECT, as the usb-storage bench does.
// `--env B=NAME` compares against Porthole with NAME=1 in its environment instead (for example
// B=PORTHOLE_XHCI_EXIT_REGISTERS: the register page and ERDP's high dwords exit).
const fs = require('fs');
const { SerialConsole } = require('porthole-rig');
const path = require('path');
const { ddRate, waitForDiskOfSize } = require('/project/dist/test/rig/dd-rate.js');
const APPEND = 'console=ttyS0 quiet panic=-1 kit.modules=xhci_pci,usb_storage,sd_mod';
const MIB = 64;
const PHASES = [['read', 'read', 1048576, MIB], ['write', 'write', 1048576, MIB], ['read4k', 'read', 4096, 1024], ['write4k', 'write', 4096, 1024]];

async function bootOnce(ctx, variant) {
  const image = '/tmp/xhci-pages-stick.img';
  fs.rmSync(image, { force: true });
  fs.writeFileSync(image, '');
  fs.truncateSync(image, MIB * 1048576);
  const env = { ...process.env };
  if (variant === 'trap') env[process.env.RIG_B || 'PORTHOLE_XHCI_TRAP_REGISTERS'] = '1';
  const child = ctx.spawn(process.execPath, [
    '/project/bin/porthole', 'run', '--kernel', ctx.kit.vmlinuz, '--initrd', ctx.kit.initrd, '--append', APPEND,
    '--mem', '256M', '--cpus', '1', '--serial', 'stdio', '--usb', `storage:${image}`, '--no-reboot',
    '--verbose', '--stats=live', '--stats-interval', '10000',
  ], { stdio: ['pipe', 'pipe', 'pipe'], env });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => { stderr = (stderr + chunk).slice(-200000); });
  const con = SerialConsole.fromChild(child, { name: `L2 on Porthole (${variant})` });
  // A command that takes this long is stuck: where vCPU 0 is goes to stderr (--verbose).
  const run = async (command, timeoutMs) => {
    const dump = setTimeout(() => { try { process.kill(child.pid, 'SIGUSR2'); } catch { /* gone */ } }, timeoutMs - 5000);
    try {
      return await con.run(command, timeoutMs);
    } finally {
      clearTimeout(dump);
    }
  };
  let failed = true;
  try {
    await con.waitForShell(300000);
    const disk = await waitForDiskOfSize(con, MIB, 120000);
    for (const [, op, block, count] of PHASES) await ddRate({ run }, `/dev/${disk}`, op, block, Math.ceil(count / 4), 180000);
    const rates = {};
    for (const [name, op, block, count] of PHASES) {
      const r = await ddRate({ run }, `/dev/${disk}`, op, block, count, 180000);
      rates[name] = block === 4096 ? r.iops : r.mbPerSec;
    }
    failed = false;
    return rates;
  } finally {
    if (failed) {
      await new Promise((resolve) => setTimeout(resolve, 3000));
      fs.writeFileSync(path.join(ctx.outDir, `xhci-pages-${variant}-${Date.now()}.txt`), `${con.transcript()}\n\n--- Porthole stderr ---\n${stderr}`);
    }
    con.close();
    try { process.kill(-child.pid, 'SIGKILL'); } catch { /* gone */ }
  }
}

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2; };

module.exports = async (ctx) => {
  const n = Number(process.env.RIG_N || 3);
  const samples = { trap: [], pages: [] };
  for (let i = 0; i < n; i++) {
    for (const variant of i % 2 === 0 ? ['pages', 'trap'] : ['trap', 'pages']) {
      try {
        const r = await bootOnce(ctx, variant);
        samples[variant].push(r);
        ctx.log(`boot ${i + 1} ${variant.padEnd(5)}: ${PHASES.map(([m]) => `${m} ${r[m].toFixed(m.endsWith('4k') ? 0 : 1)}`).join(', ')}`);
      } catch (e) {
        ctx.log(`boot ${i + 1} ${variant}: failed (${e.message.split('\n')[0]})`);
      }
    }
  }
  const line = PHASES.map(([m]) => {
    const p = median(samples.pages.map((r) => r[m]));
    const t = median(samples.trap.map((r) => r[m]));
    return `${m} ${p.toFixed(1)} vs ${t.toFixed(1)} (${(p / t).toFixed(2)}x)`;
  }).join('; ');
  return `as is against ${process.env.RIG_B || 'PORTHOLE_XHCI_TRAP_REGISTERS'}=1, medians of ${samples.pages.length} and ${samples.trap.length} boots: ${line}`;
};
