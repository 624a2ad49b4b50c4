// Isochronous host USB passthrough with L1 as the host: L1's usb-audio (QEMU, isochronous OUT,
// on a wav audiodev whose file lands on the rig host) is passed by Porthole (usbfs iso URBs
// through native/usbdevfs.ts, our xHCI's Isoch TDs in front) to the L2 kit, whose snd-usb-audio
// binds it; aplay plays a 1 kHz sine from a virtio disk (the tone's raw PCM); the WAV file QEMU
// wrote then holds that tone: its frequency, its length and its longest gap are checked.
// Afterwards L1's snd-usb-audio has the device again.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { SerialConsole } from '../console';
import { sysfsUsbDevices, until } from '../l1-usb';
import { l1ProjectDir } from '../paths';
import { consoleLogger, scenario, type ScenarioContext } from '../scenario';
import { analyseWav, sineS16Stereo } from '../wav-tone';

const KIT_MODULES = 'xhci_pci,snd_usb_audio,virtio_pci,virtio_blk';
const SOCKET = '/tmp/usb-audio-pt.sock';
const DATA_DIR = '/tmp/usb-audio-pt-data';
const TONE = '/tmp/tone.raw';
const TONE_HZ = 1000;
const TONE_SECONDS = 3;
/** The longest silence allowed inside the played tone (nested TCG is slow; a stall shows far longer). */
const GAP_BOUND_MS = 250;

scenario('usb-audio-passthrough-l2', async (ctx) => {
  const cli = `${l1ProjectDir}/bin/porthole`;
  if (!fs.existsSync(`${l1ProjectDir}/dist/main/cli/main.js`)) throw new Error('Porthole is not built: run npm run build');
  const audio = await until('usb-audio (46f4:0002) in L1 with snd-usb-audio bound', 60000, () =>
    sysfsUsbDevices().find((d) => d.id === '46f4:0002' && d.drivers.includes('snd-usb-audio')) ?? null);
  const files = await ctx.rig.hostFiles();
  const wav = files['usb-audio.wav'];
  if (!wav) throw new Error(`the rig has no usb-audio wav file (${JSON.stringify(files)})`);
  const before = fs.existsSync(wav) ? fs.statSync(wav).size : 0;
  ctx.log(`L1: usb-audio is USB ${audio.name} (${audio.drivers.join(',')}); ${wav} has ${before} bytes`);
  // The tone, 48 kHz S16_LE stereo, padded to whole sectors for the disk.
  const pcm = sineS16Stereo(TONE_HZ, TONE_SECONDS);
  fs.writeFileSync(TONE, Buffer.concat([pcm, Buffer.alloc((512 - (pcm.length % 512)) % 512)]));

  fs.rmSync(DATA_DIR, { recursive: true, force: true });
  const env = { ...process.env, XDG_DATA_HOME: DATA_DIR, PORTHOLE_FORBID_KOFFI_VIEW: '1' };
  const args = [cli, 'run', '--kernel', ctx.kit.vmlinuz, '--initrd', ctx.kit.initrd,
    '--append', `console=ttyS0 quiet panic=-1 kit.modules=${KIT_MODULES}`, '--mem', '256M', '--cpus', '1',
    '--serial', 'stdio', '--verbose', '--usb', 'keyboard', '--disk', `${TONE},ro`, '--monitor', SOCKET];
  ctx.log(`node ${args.join(' ')}`);
  const vm = ctx.spawn(process.execPath, args, { env });
  vm.stderr!.on('data', (d: Buffer) => {
    for (const l of d.toString().split('\n')) if (l.trim()) ctx.log(`porthole: ${l}`);
  });
  const con = SerialConsole.fromChild(vm, { name: 'L2 on Porthole\'s COM1', onOutput: consoleLogger('L2| ') });
  await con.waitForShell(240000);

  const added = run(ctx, cli, ['usb', 'add', `host:${audio.name}`, '--monitor', SOCKET], env);
  ctx.log(`porthole usb add host:${audio.name}: ${added.trim()}`);
  const port = /^\s*(\d+)/m.exec(added)?.[1];
  if (port === undefined) throw new Error(`porthole usb add printed no port: ${added}`);
  const held = sysfsUsbDevices().find((d) => d.name === audio.name);
  if (held?.drivers.includes('snd-usb-audio')) throw new Error(`L1's snd-usb-audio is still bound to ${audio.name}`);
  const found: string[] = [`L1 gave up usb-audio (drivers now ${held?.drivers.join(',') ?? '?'})`];

  const deadline = Date.now() + 120000;
  let cards = '';
  for (;;) {
    cards = (await con.run('cat /proc/asound/cards 2>&1')).output;
    if (/USB.?Audio|QEMU/i.test(cards)) break;
    if (Date.now() > deadline) throw new Error(`L2 shows no USB sound card: ${cards}\n${(await con.run('dmesg | tail -30')).output}`);
    await new Promise((res) => setTimeout(res, 2000));
  }
  ctx.log(`L2 /proc/asound/cards:\n${cards.trim()}`);
  found.push('snd-usb-audio bound in L2');
  const t0 = Date.now();
  const played = await con.run(`aplay -D plughw:0,0 -t raw -f S16_LE -r 48000 -c 2 /dev/vda 2>&1; echo aplay-status $?`, 150_000);
  const playSeconds = (Date.now() - t0) / 1000;
  ctx.log(`aplay in L2 (${playSeconds.toFixed(1)} s): ${played.output.trim()}`);
  logVmCounters(ctx, cli, env);
  if (!/aplay-status 0/.test(played.output)) {
    const pcm = (await con.run('grep -H . /proc/asound/card0/pcm0p/sub0/hw_params /proc/asound/card0/pcm0p/sub0/status /proc/asound/card0/stream0 2>&1')).output;
    throw new Error(`aplay failed in L2: ${played.output}\n${pcm}\n${(await con.run('dmesg | tail -40')).output}`);
  }
  found.push(`aplay played ${TONE_SECONDS} s in ${playSeconds.toFixed(1)} s`);

  run(ctx, cli, ['usb', 'remove', port, '--monitor', SOCKET], env);
  const back = await until('L1\'s snd-usb-audio bound to usb-audio again', 30000, () =>
    sysfsUsbDevices().find((d) => d.name === audio.name && d.drivers.includes('snd-usb-audio')) ?? null);
  found.push(`after the detach L1's drivers are ${back.drivers.join(',')}`);
  vm.kill('SIGTERM');

  // QEMU writes the wav through stdio buffers: give it a moment, then read what reached the host.
  await new Promise((res) => setTimeout(res, 2000));
  const file = fs.readFileSync(wav);
  const report = analyseWav(file);
  ctx.log(`${wav}: ${file.length} bytes (${before} before); ${JSON.stringify(report)}`);
  if (report.soundSeconds < TONE_SECONDS * 0.6 || report.soundSeconds > TONE_SECONDS * 2) {
    throw new Error(`the wav holds ${report.soundSeconds.toFixed(2)} s of sound, not about ${TONE_SECONDS} s (${JSON.stringify(report)})`);
  }
  if (Math.abs(report.hz - TONE_HZ) > TONE_HZ * 0.05) throw new Error(`the wav's tone is ${report.hz.toFixed(1)} Hz, not ${TONE_HZ} Hz`);
  if (report.longestGapMs > GAP_BOUND_MS) throw new Error(`the wav's tone has a ${report.longestGapMs.toFixed(1)} ms gap (bound ${GAP_BOUND_MS} ms)`);
  found.push(`the rig host's wav holds ${report.soundSeconds.toFixed(2)} s of a ${report.hz.toFixed(1)} Hz tone (peak ${report.peak}, ${report.rate} Hz x${report.channels}), longest gap ${report.longestGapMs.toFixed(1)} ms (bound ${GAP_BOUND_MS})`);
  return found.join('; ');
});

/** The VM's xHCI and USB counters (one `porthole stats --once --json` sample): what the machine side saw. */
function logVmCounters(ctx: ScenarioContext, cli: string, env: NodeJS.ProcessEnv): void {
  const r = spawnSync(process.execPath, [cli, 'stats', SOCKET, '--once', '--json', '--interval', '200ms'], { encoding: 'utf8', env, timeout: 30000 });
  try {
    const sample = JSON.parse(r.stdout.trim().split('\n').pop() ?? '') as { counters: { group: string; name: string; total: number }[] };
    const usb = sample.counters.filter((c) => c.total > 0 && /xhci|usb/.test(c.group)).map((c) => `${c.group}/${c.name}=${c.total}`);
    ctx.log(`VM counters: ${usb.join(' ')}`);
  } catch {
    ctx.log(`porthole stats gave no sample (${r.status ?? r.signal}): ${r.stderr}${r.stdout}`);
  }
}

function run(ctx: ScenarioContext, cli: string, args: string[], env: NodeJS.ProcessEnv): string {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env, timeout: 60000 });
  if (r.status !== 0) {
    throw new Error(`porthole ${args.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr}${r.stdout}`);
  }
  if (r.stderr.trim()) ctx.log(`porthole ${args[0]} ${args[1]}: ${r.stderr.trim()}`);
  return r.stdout;
}
