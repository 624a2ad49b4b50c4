// `porthole run --monitor PATH` and the commands that talk to it (porthole usb, porthole keys),
// without KVM: the argument parsing, and the control socket's round trip to a stand-in for the
// VM host. The stand-in is the machine side's real request handler (XhciHotplug) on a
// register-level xHCI, reached through the same request and reply records the channel
// carries; only the threads and the channel in between are left out.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';
import { parseArgs, UsageError } from '../../main/cli/args';
import { runMonitorCommand } from '../../main/cli/main';
import { spawnSync } from 'node:child_process';
import { handleMonitorLine, monitorCall, type MonitorServer, startMonitor, type UsbControl } from '../../main/cli/monitor';
import { ConfigError } from '../../main/vmm/config';
import { XhciHotplug } from '../../main/vmm/devices/usb/xhci-hotplug';
import { createUsbDevice } from '../../main/vmm/devices/usb/xhci-pci';
import {
  decodeUsbMessage, encodeUsbRequest, USB_KIND, type UsbReply, type UsbPortState, type UsbRequestBody, UsbRequestError,
} from '../../main/vmm/shared/usb-messages';
import { makeImage, tempDir } from '../helpers/usb-storage';
import { DB, Driver, PORTSC, trb } from '../helpers/xhci-driver';

const noFiles = (f: string): unknown => { throw new ConfigError(`no file ${f}`); };

test('porthole usb and porthole keys parse to one control-socket request, checked like the API', () => {
  assert.deepEqual(parseArgs(['usb', 'list', '--monitor', 'unix:/tmp/vm.sock'], noFiles), {
    command: 'monitor', socket: '/tmp/vm.sock', method: 'listUsbPorts', args: [],
  });
  assert.deepEqual(parseArgs(['usb', 'add', 'keyboard', '--port=6', '--monitor', '/s'], noFiles), {
    command: 'monitor', socket: '/s', method: 'attachUsbDevice', args: [{ kind: 'keyboard', port: 6 }],
  });
  const add = parseArgs(['usb', '--monitor', '/s', 'add', 'storage-ro:rel/stick.img'], noFiles);
  assert.deepEqual(add, {
    command: 'monitor', socket: '/s', method: 'attachUsbDevice',
    args: [{ kind: 'storage', path: path.resolve('rel/stick.img'), readOnly: true }],
  });
  assert.deepEqual(parseArgs(['usb', 'remove', '3', '--monitor', '/s'], noFiles), {
    command: 'monitor', socket: '/s', method: 'detachUsbDevice', args: [3],
  });
  assert.deepEqual(parseArgs(['keys', '--monitor', '/s', 'ctrl+alt+Delete', 'a'], noFiles), {
    command: 'monitor', socket: '/s', method: 'sendUsbKeys', args: [['ctrl+alt+Delete', 'a']],
  });
  assert.deepEqual(parseArgs(['keys', '--text', 'root\n', '--monitor', '/s'], noFiles), {
    command: 'monitor', socket: '/s', method: 'sendUsbKeys', args: [{ text: 'root\n' }],
  });
  assert.deepEqual(parseArgs(['usb', 'add', 'host:1-1.4', '--port', '2', '--monitor', '/s'], noFiles), {
    command: 'monitor', socket: '/s', method: 'attachHostUsbDevice', args: [{ device: '1-1.4', port: 2 }],
  });
  assert.deepEqual(parseArgs(['usb', 'add', 'host:46f4:0001', '--monitor', '/s'], noFiles), {
    command: 'monitor', socket: '/s', method: 'attachHostUsbDevice', args: [{ device: '46f4:0001' }],
  });
  assert.deepEqual(parseArgs(['usb', 'host'], noFiles), { command: 'usb-host' });
  const refused: [string[], string][] = [
    [['usb', 'host', 'x'], 'porthole usb host takes no arguments (it lists the host\'s USB devices)'],
    [['usb', 'add', 'host:../x', '--monitor', '/s'], 'The device must name a host USB device by its port path ("1-1.4"), BUS:ADDR ("1:3") or VID:PID ("46f4:0001")'],
    [['usb', 'add', 'host:1-1', '--port', '9', '--monitor', '/s'], 'The port must be a whole number from 1 to 8'],
    [['usb', 'list'], 'porthole usb needs --monitor PATH (the socket of porthole run --monitor PATH)'],
    [['usb', '--monitor', '/s'], 'porthole usb needs list, add or remove'],
    [['usb', 'plug', '--monitor', '/s'], 'porthole usb plug: use list, add or remove'],
    [['usb', 'add', 'mouse', '--monitor', '/s'], 'USB device "mouse" is not understood: use keyboard, tablet, storage:PATH, storage-ro:PATH, serial or serial:BACKEND'],
    [['usb', 'add', 'keyboard', '--port', '2', '--monitor', '/s'], 'Device port must be a USB 2 port (5 to 8) for a keyboard; 2 is a USB 3 port'],
    [['usb', 'add', 'keyboard', '--port', 'x', '--monitor', '/s'], 'Device port must be a whole number from 1 to 8'],
    [['usb', 'remove', 'nine', '--monitor', '/s'], 'The USB port must be a whole number from 1 to 8'],
    [['usb', 'remove', '--monitor', '/s'], 'porthole usb remove takes one port number (see porthole usb list)'],
    [['keys', '--monitor', '/s'], 'porthole keys needs key names (a, Enter, ctrl+alt+Delete) or --text TEXT'],
    [['keys', '--monitor', '/s', 'Hyper'], 'Key 1: "Hyper" is not a key name (e.g. "a", "Enter", "F5", "ctrl+alt+Delete")'],
    [['keys', '--text', 'a', 'b', '--monitor', '/s'], 'give key names or --text, not both'],
    [['keys', 'a', '--monitor', '/s', '--bogus'], 'unknown option --bogus (see porthole --help)'],
  ];
  for (const [argv, message] of refused) assert.throws(() => parseArgs(argv, noFiles), (e) => e instanceof Error && (e instanceof UsageError || e instanceof ConfigError) && e.message === message, argv.join(' '));
});

test('porthole run --monitor takes a socket path (unix: optional); without it there is none', () => {
  const r = parseArgs(['run', '--monitor', 'unix:/run/vm.sock'], noFiles);
  assert.ok(r.command === 'run' && r.monitor === '/run/vm.sock');
  const plain = parseArgs(['run', '--monitor=/tmp/a'], noFiles);
  assert.ok(plain.command === 'run' && plain.monitor === '/tmp/a');
  const none = parseArgs(['run'], noFiles);
  assert.ok(none.command === 'run' && none.monitor === null);
  assert.throws(() => parseArgs(['run', '--monitor', 'unix:'], noFiles), { message: /needs a socket path/ });
});

/** The VM host's side of the channel, in one thread: requests to XhciHotplug, replies back by id. */
class HotplugStandIn implements UsbControl {
  readonly driver = new Driver();
  private readonly waiting = new Map<number, (r: UsbReply) => void>();
  private nextId = 1;
  readonly hot: XhciHotplug;

  constructor() {
    this.driver.start();
    this.hot = new XhciHotplug(this.driver.hc, createUsbDevice, {
      send: (payload) => {
        const reply = decodeUsbMessage(payload) as unknown as UsbReply;
        // As over the channel: the reply arrives on a later turn.
        setImmediate(() => this.waiting.get(reply.id)?.(reply));
        return true;
      },
      setTimer: (ms, fn) => { const t = setTimeout(fn, ms); return () => clearTimeout(t); },
      log: () => undefined,
    });
  }

  private request(body: UsbRequestBody): Promise<Extract<UsbReply, { ok: true }>> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, (r) => (r.ok ? resolve(r) : reject(new UsbRequestError(r.code, r.error))));
      this.hot.handle(USB_KIND.REQUEST, encodeUsbRequest({ ...body, id }));
    });
  }

  async usbPorts() { return (await this.request({ op: 'list' })).ports; }
  async attachUsb(device: Parameters<UsbControl['attachUsb']>[0]) {
    const r = await this.request({ op: 'attach', device });
    return r.ports.find((p) => p.port === r.port)!;
  }
  async detachUsb(port: number) { await this.request({ op: 'detach', port }); }
  async sendUsbKeys(events: Parameters<UsbControl['sendUsbKeys']>[0]) { await this.request({ op: 'keys', events }); }
  async attachHostUsb(selector: string): Promise<UsbPortState> {
    throw new UsbRequestError('not-found', `there is no host USB device ${selector}; this host has no USB devices`);
  }
}

let dir: string;
let socket: string;
let vm: HotplugStandIn;
let server: MonitorServer | null;

beforeEach(() => {
  dir = tempDir();
  socket = path.join(dir, 'vm.sock');
  vm = new HotplugStandIn();
  server = null;
});

afterEach(() => {
  server?.close();
  vm.hot.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Runs a porthole usb / porthole keys command line as main() does, and returns its exit code and output. */
async function cli(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const command = parseArgs(argv, noFiles);
  assert.equal(command.command, 'monitor');
  if (command.command !== 'monitor') throw new Error('not a monitor command');
  const code = await runMonitorCommand(command.socket, command.method, command.args, { out: (t) => { out += t; }, err: (t) => { err += t; } });
  return { code, out, err };
}

test('the control socket round trip: porthole usb add, list, remove and keys reach the VM and print its answers', async () => {
  server = await startMonitor(socket, vm);
  assert.equal(fs.statSync(socket).mode & 0o777, 0o600, 'only the user may connect');
  const image = makeImage(dir, 64 * 1024);

  const added = await cli(['usb', 'add', `storage:${image}`, '--monitor', socket]);
  assert.deepEqual(added, { code: 0, out: `1  usb3  1209:0001  super  USB Disk  ${image}\n`, err: '' });
  assert.equal(vm.driver.r32(PORTSC(1)) & 1, 1, 'the guest sees the stick connected');
  const kbd = await cli(['usb', 'add', 'keyboard', '--monitor', socket]);
  assert.equal(kbd.code, 0);
  const list = await cli(['usb', 'list', '--monitor', `unix:${socket}`]);
  assert.equal(list.code, 0);
  assert.deepEqual(list.out.split('\n').slice(0, 5), [
    `1  usb3  1209:0001  super  USB Disk  ${image}`, '2  usb3  -', '3  usb3  -', '4  usb3  -', '5  usb2  1d6b:0101  full   Porthole USB Keyboard',
  ]);

  const missing = await cli(['usb', 'add', `storage:${path.join(dir, 'gone.img')}`, '--monitor', socket]);
  assert.deepEqual(missing, { code: 1, out: '', err: `porthole: Disk image ${path.join(dir, 'gone.img')}: it does not exist.\n` });
  const keysEarly = await cli(['keys', 'a', '--monitor', socket]);
  assert.equal(keysEarly.code, 1);
  assert.match(keysEarly.err, /has not set up the USB keyboard/);

  // The guest sets the keyboard up; then keys typed on the command line reach its interrupt endpoint.
  const d = vm.driver;
  const slot = d.enumerate(5, 1);
  d.control(slot, [0, 9, 1, 0, 0], 0, false);
  d.configure(slot, [[3, 7]]);
  d.events();
  assert.deepEqual(await cli(['keys', 'shift+b', '--monitor', socket]), { code: 0, out: '', err: '' });
  const ring = d.ring(slot, 3);
  for (let i = 0; i < 4; i++) ring.push(0x40000 + 0x100 * i, 0, 8, trb(1, 1 << 5));
  d.w32(DB + 4 * slot, 3);
  const reports = [0, 1, 2, 3].map((i) => { const b = new Uint8Array(8); d.dma.read(0x40000 + 0x100 * i, b); return [b[0], b[2]]; });
  assert.deepEqual(reports, [[2, 0], [2, 5], [2, 0], [0, 0]]);

  assert.deepEqual(await cli(['usb', 'remove', '1', '--monitor', socket]), { code: 0, out: '', err: '' });
  assert.equal(vm.driver.r32(PORTSC(1)) & 1, 0, 'the guest sees the stick gone');
  const again = await cli(['usb', 'remove', '1', '--monitor', socket]);
  assert.deepEqual(again, { code: 1, out: '', err: 'porthole: USB port 1 is empty.\n' });
});

test('the control socket answers bad requests with errors, never a stack trace, and keeps serving', async () => {
  server = await startMonitor(socket, vm);
  const c = net.connect(socket);
  const lines: string[] = [];
  let buffered = '';
  c.setEncoding('utf8');
  c.on('data', (s: string) => {
    buffered += s;
    const parts = buffered.split('\n');
    buffered = parts.pop()!;
    lines.push(...parts);
  });
  await new Promise((r) => c.once('connect', r));
  c.write('not json\n');
  c.write('{"id": 2, "method": "reboot", "args": []}\n');
  c.write('{"id": 3, "method": "detachUsbDevice", "args": ["1"]}\n');
  c.write('{"id": 4, "method": "listUsbPorts", "args": [1]}\n');
  c.write('{"id": 5, "method": "attachUsbDevice", "args": [{"kind": "tablet"}]}\n');
  await new Promise<void>((resolve) => { const check = () => (lines.length >= 5 ? resolve() : setTimeout(check, 5)); check(); });
  c.destroy();
  const replies = lines.map((l) => JSON.parse(l));
  assert.deepEqual(replies.slice(0, 4), [
    { id: null, ok: false, error: { code: 'invalid-argument', message: 'A request is one JSON object per line.' } },
    { id: 2, ok: false, error: { code: 'invalid-argument', message: 'The method must be one of listUsbPorts, attachUsbDevice, detachUsbDevice, sendUsbKeys, attachHostUsbDevice, startUsbCapture, stopUsbCapture, getVmStats, listCdromDrives, insertCdrom, ejectCdrom, listUsbPathChoices.' } },
    { id: 3, ok: false, error: { code: 'invalid-argument', message: 'The USB port must be a whole number from 1 to 8.' } },
    { id: 4, ok: false, error: { code: 'invalid-argument', message: 'listUsbPorts takes no arguments.' } },
  ]);
  assert.equal(replies[4].ok, true);
  assert.equal(replies[4].value.port, 5);
  assert.equal(replies[4].value.device.kind, 'tablet');
  // A failure that is not the caller's is reported as internal, with the details only in the log.
  const bugs: unknown[] = [];
  const broken: UsbControl = { ...vm, usbPorts: () => Promise.reject(new Error('secret /home path')) } as unknown as UsbControl;
  const r = await handleMonitorLine(broken, '{"id": 9, "method": "listUsbPorts"}', (e) => bugs.push(e));
  assert.deepEqual(r, { id: 9, ok: false, error: { code: 'internal', message: 'Something went wrong inside Porthole; run with --verbose for details.' } });
  assert.equal(bugs.length, 1);
});

test('the control socket lists the USB path choices made at start, as the API does', async () => {
  const none: UsbControl = { ...vm } as unknown as UsbControl;
  assert.deepEqual(await handleMonitorLine(none, '{"id": 1, "method": "listUsbPathChoices", "args": []}'), { id: 1, ok: true, value: [] });
  const chosen = {
    ...vm, usbPathChoicesAtStart: [{ sysfsName: '1-1', choice: { path: 'controller', controller: '0000:00:05.0', reason: 'its controller is alone', alsoOnController: ['1-2'] } }],
  } as unknown as UsbControl;
  assert.deepEqual(await handleMonitorLine(chosen, '{"id": 2, "method": "listUsbPathChoices"}'), {
    id: 2, ok: true, value: [{ hostDevice: '1-1', path: 'controller', controller: '0000:00:05.0', reason: 'its controller is alone', alsoOnController: ['1-2'] }],
  });
  const extra = await handleMonitorLine(chosen, '{"id": 3, "method": "listUsbPathChoices", "args": [1]}');
  assert.equal(extra.ok, false);
});

test('the socket path: a stale socket is replaced, a live one or another file is refused, nothing listening is a clear error', async () => {
  await assert.rejects(monitorCall(socket, 'listUsbPorts', []), {
    message: `no VM is listening on ${socket} (start one with porthole run --monitor ${socket})`,
  });
  // A socket left behind by a VM process that was killed.
  spawnSync(process.execPath, ['-e', "require('net').createServer().listen(process.argv[1], () => process.kill(process.pid, 'SIGKILL'))", socket]);
  assert.ok(fs.statSync(socket).isSocket(), 'the killed process left its socket');
  server = await startMonitor(socket, vm);
  await assert.rejects(startMonitor(socket, vm), { message: `--monitor ${socket}: another VM is listening there` });
  assert.deepEqual(await monitorCall(socket, 'detachUsbDevice', [5]).catch((e: Error) => e.message), 'USB port 5 is empty.');
  server.close();
  server = null;
  assert.equal(fs.existsSync(socket), false, 'closing removes the socket');
  const file = path.join(dir, 'plain');
  fs.writeFileSync(file, 'x');
  await assert.rejects(startMonitor(file, vm), { message: `--monitor ${file}: that file exists and is not a socket` });
});

test('a call with a timeout gives up on a VM that takes the request and never answers', { timeout: 10_000 }, async () => {
  const silent = net.createServer(() => { /* takes the connection, answers nothing */ });
  const where = path.join(dir, 'silent.sock');
  await new Promise<void>((resolve) => silent.listen(where, resolve));
  try {
    await assert.rejects(monitorCall(where, 'getVmStats', [], 200), {
      message: `the VM at ${where} did not answer getVmStats within 200 ms`,
    });
  } finally {
    silent.close();
  }
});
