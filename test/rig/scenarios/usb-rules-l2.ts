// Auto-attach rules and re-enumeration with L1 as the host. A VM config gets a rule for
// stick0's VID:PID (`porthole usb rule add`); `porthole run --config` boots the L2 kit and:
// - stick0, already in L1 when the VM starts, is attached by the rule, and L2 sees it;
// - QMP unplugs stick0 and adds a usb-serial device (an FTDI, 0403:6001) on the same port at
//   once, imitating a re-enumeration: it goes back to the same VM on the same guest port, the
//   VM log says "re-enumerated as", and L2's sysfs shows the new product ID;
// - unplugged, and after the window the usb-serial again on that port: no rule matches, so it stays
//   with L1 (L1's driver binds it, the VM has no host device);
// - stick0 replugged on that port much later: the rule takes it back into the VM.
import fs from 'node:fs';
import { SerialConsole } from '../console';
import { sysfsUsbDevices, until } from '../l1-usb';
import { l1ProjectDir } from '../paths';
import { consoleLogger, scenario } from '../scenario';
import { STICKS } from '../sticks';
import { l1PortholeCli, PASSTHROUGH_KIT_MODULES, runPortholeCli, stickBoundInL1 } from '../usb-passthrough-l1';

const SOCKET = '/tmp/usb-rules.sock';
const DATA_DIR = '/tmp/usb-rules-data';
const CONFIG = '/tmp/usb-rules-vm.json';
const WINDOW_MS = 5000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

scenario('usb-rules-l2', async (ctx) => {
  if (!fs.existsSync(`${l1ProjectDir}/dist/main/cli/main.js`)) throw new Error('Porthole is not built: run npm run build');
  const stick = STICKS.stick0;
  const sysStick = await stickBoundInL1(stick);
  const [vid, pid] = sysStick.id.split(':');
  ctx.log(`L1: stick0 is USB device ${sysStick.name} (${sysStick.id})`);
  const found: string[] = [];

  // The rule, made with the CLI in a config file.
  fs.writeFileSync(CONFIG, JSON.stringify({ name: 'rules-vm', usb: { controller: 'xhci', devices: [{ kind: 'keyboard' }], reenumerationWindowMs: WINDOW_MS } }));
  ctx.log(runPortholeCli(['usb', 'rule', 'add', CONFIG, '--vid', `0x${vid}`, '--pid', `0x${pid}`]).trim());
  const listed = runPortholeCli(['usb', 'rules', CONFIG]);
  ctx.log(`porthole usb rules: ${listed.trim()}`);
  if (!listed.includes(`${vid}:${pid}`)) throw new Error(`porthole usb rules does not show ${vid}:${pid}: ${listed}`);

  fs.rmSync(DATA_DIR, { recursive: true, force: true });
  const env = { ...process.env, XDG_DATA_HOME: DATA_DIR, PORTHOLE_FORBID_KOFFI_VIEW: '1' };
  const args = [l1PortholeCli(), 'run', '--config', CONFIG, '--kernel', ctx.kit.vmlinuz, '--initrd', ctx.kit.initrd,
    '--append', `console=ttyS0 quiet panic=-1 kit.modules=${PASSTHROUGH_KIT_MODULES}`, '--mem', '256M', '--cpus', '1',
    '--serial', 'stdio', '--verbose', '--monitor', SOCKET];
  ctx.log(`node ${args.join(' ')}`);
  const vm = ctx.spawn(process.execPath, args, { env });
  const vmLog: string[] = [];
  vm.stderr!.on('data', (d: Buffer) => {
    for (const l of d.toString().split('\n')) {
      if (!l.trim()) continue;
      vmLog.push(l);
      ctx.log(`porthole: ${l}`);
    }
  });
  const con = SerialConsole.fromChild(vm, { name: 'L2 on Porthole\'s COM1', onOutput: consoleLogger('L2| ') });
  // Before the VM's monitor socket is up, there is nothing to list yet.
  const hostPorts = (): string[] => {
    try {
      return runPortholeCli(['usb', 'list', '--monitor', SOCKET], env).split('\n').filter((l) => l.includes(' host '));
    } catch (e) {
      if (/no VM is listening|ENOENT|ECONNREFUSED/.test((e as Error).message)) return [];
      throw e;
    }
  };
  const l2Ids = async () => con.runOk('for d in /sys/bus/usb/devices/*; do [ -f $d/idVendor ] && echo "$(cat $d/idVendor):$(cat $d/idProduct)"; done');

  // 1. Present at start: taken by the rule.
  const first = await until('the rule to attach stick0', 120000, () => hostPorts().find((l) => l.includes(`host ${sysStick.name}`)) ?? null);
  const guestPort = first.trim().split(/\s+/)[0];
  ctx.log(`attached by the rule: ${first}`);
  await untilAsync('the VM log to say which rule took stick0', 20000, async () => (vmLog.some((l) => /rule 1 .* matches/.test(l)) ? true : null));
  await con.waitForShell(240000);
  const seen = await untilAsync('L2 to see stick0', 120000, async () => ((await l2Ids()).includes(sysStick.id) ? true : null));
  if (seen) found.push(`stick0 (${sysStick.id}) attached at start by the rule on guest port ${guestPort} and seen in L2`);

  // 2. Re-enumeration: unplugged and a usb-serial on the same port at once.
  const stickProps = (await ctx.rig.devices()).find((d) => d.id === 'stick0')!.props;
  await ctx.rig.qmp('chardev-add', { id: 'renumchr', backend: { type: 'ringbuf', data: {} } });
  await ctx.rig.unplug('stick0');
  await ctx.rig.plug('renum0', 'usb-serial', { bus: String(stickProps.bus), port: String(stickProps.port), chardev: 'renumchr' });
  // The same socket: stick0's port path, or its peer on the controller's other bus (a full-speed
  // device on an xHCI socket enumerates on the USB 2 root hub: stick0 was 2-1, the usb-serial is 1-1).
  const socketPort = sysStick.name.replace(/^\d+-/, '');
  const sameSocket = (l: string) => new RegExp(`\\bhost \\d+-${socketPort}\\b`).test(l);
  const inSocket = (name: string) => name.replace(/^\d+-/, '') === socketPort;
  const renum = await until('the re-enumerated device back in the VM', 60000, () =>
    hostPorts().find((l) => sameSocket(l) && !l.includes(sysStick.id)) ?? null).catch((e: Error) => {
    throw new Error(`${e.message}; L1's USB devices: ${sysfsUsbDevices().map((d) => `${d.name} ${d.id} ${d.drivers.join(',')}`).join(' / ')}`);
  });
  const newId = /\b([0-9a-f]{4}:[0-9a-f]{4})\b/.exec(renum)?.[1] ?? '?';
  ctx.log(`after the re-enumeration: ${renum}`);
  const said = await untilAsync(`the VM log to say "re-enumerated as ${newId}"`, 20000, async () => vmLog.find((l) => l.includes(`re-enumerated as ${newId}`)) ?? null);
  const newPort = renum.trim().split(/\s+/)[0];
  // The same guest port, unless the new speed needs the other kind of port (the log says so).
  if (newPort !== guestPort && !/needs a USB 2 port/.test(said)) throw new Error(`the re-enumerated device is on guest port ${newPort}, not ${guestPort}: ${said}`);
  await untilAsync(`L2 to see ${newId}`, 60000, async () => {
    const ids = await l2Ids();
    return ids.includes(newId) && !ids.includes(sysStick.id) ? true : null;
  });
  found.push(`unplugged and re-added as ${newId} in the same socket: back in the VM on guest port ${newPort}, L2 sees ${newId} ("${said.replace(/^.*USB: /, '')}")`);

  // 3. Outside the window, a device no rule matches stays with L1.
  await ctx.rig.unplug('renum0');
  await until('the VM to let go of the device', 30000, () => (hostPorts().length === 0 ? true : null));
  await sleep(WINDOW_MS + 2000);
  await ctx.rig.plug('renum0');
  const onHost = await until(`${newId} back in L1 with a driver`, 60000, () =>
    sysfsUsbDevices().find((d) => inSocket(d.name) && d.id === newId && d.drivers.some((x) => x !== '-')) ?? null);
  await sleep(5000); // two polls of the VM's list at least
  if (hostPorts().length > 0) throw new Error(`a device outside the window went into the VM: ${hostPorts().join(' / ')}`);
  found.push(`replugged ${WINDOW_MS / 1000 + 2} s later as ${newId}: stays in L1 (drivers ${onHost.drivers.join(',')})`);

  // 4. The rule's device replugged: back into the VM.
  await ctx.rig.unplug('renum0');
  await until('the usb-serial gone from L1', 30000, () => (sysfsUsbDevices().some((d) => inSocket(d.name)) ? null : true));
  await ctx.rig.plug('stick0');
  const again = await until('the rule to take stick0 again', 60000, () => hostPorts().find((l) => l.includes(sysStick.id)) ?? null);
  await untilAsync('L2 to see stick0 again', 60000, async () => ((await l2Ids()).includes(sysStick.id) ? true : null));
  found.push(`stick0 replugged: the rule took it again (${again.trim()}) and L2 sees it`);

  vm.kill('SIGTERM');
  await until('stick0 back with L1\'s usb-storage after the VM stopped', 60000, () =>
    sysfsUsbDevices().find((d) => d.name === sysStick.name && d.drivers.includes('usb-storage')) ?? null);
  found.push('after the VM stopped L1\'s usb-storage has stick0 again');
  return found.join('; ');
});

async function untilAsync<T>(what: string, timeoutMs: number, probe: () => Promise<T | null>): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== null) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
    await sleep(1000);
  }
}
