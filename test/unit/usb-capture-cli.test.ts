// `porthole capture VM -w FILE`: the command line, and the monitor socket round trip with the
// VM host's capture bookkeeping (UsbCaptures) over the xHCI model's host messages, the guest a
// register-level driver reading a stick. Ctrl-C stops the capture and the file is whole; a
// client that vanishes stops its capture too. tshark (Debian's) reads the files.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';
import { parseArgs, UsageError } from '../../main/cli/args';
import { runCaptureCommand } from '../../main/cli/main';
import { type MonitorServer, startMonitor, type UsbControl } from '../../main/cli/monitor';
import { XhciHotplug } from '../../main/vmm/devices/usb/xhci-hotplug';
import { createUsbDevice } from '../../main/vmm/devices/usb/xhci-pci';
import { type UsbCaptureSpec, UsbCaptures, type UsbTransferRecord } from '../../main/vmm/host/usb-capture';
import {
  decodeUsbMessage, encodeUsbRequest, USB_KIND, type UsbReply, type UsbRequestBody, UsbRequestError,
} from '../../main/vmm/shared/usb-messages';
import { cbw, makeImage, read10, tempDir } from '../helpers/usb-storage';
import { DATA, DB, Driver, trb } from '../helpers/xhci-driver';

const noFiles = (): unknown => { throw new Error('no config files here'); };

test('porthole capture VM -w FILE [--port N] [--snaplen N] parses, with clear usage errors', () => {
  const c = parseArgs(['capture', '/tmp/vm.sock', '-w', 'out.pcapng', '--port', '2', '--snaplen=512'], noFiles);
  assert.deepEqual(c, { command: 'capture', socket: '/tmp/vm.sock', path: path.resolve('out.pcapng'), port: 2, snapLength: 512 });
  const m = parseArgs(['capture', '--monitor', 'unix:/tmp/vm.sock', '--write', '/abs/x.pcapng'], noFiles);
  assert.deepEqual(m, { command: 'capture', socket: '/tmp/vm.sock', path: '/abs/x.pcapng', port: null, snapLength: null });
  const bad: [string[], RegExp][] = [
    [['capture', '-w', 'x'], /needs a VM/],
    [['capture', '/tmp/vm.sock'], /needs -w FILE/],
    [['capture', '/tmp/vm.sock', '-w'], /-w needs a value/],
    [['capture', '/tmp/vm.sock', '-w', 'x', '--port', '0'], /port/i],
    [['capture', '/tmp/vm.sock', '-w', 'x', '--snaplen', '99999'], /--snaplen takes 0 to 16384/],
    [['capture', '/tmp/vm.sock', '-w', 'x', '--bogus', '1'], /unknown option --bogus/],
    [['capture', '/a.sock', '/b.sock', '-w', 'x'], /one VM/],
  ];
  for (const [argv, message] of bad) assert.throws(() => parseArgs(argv, noFiles), (e: Error) => e instanceof UsageError && message.test(e.message), argv.join(' '));
});

/** The VM host's side in one thread: USB requests to XhciHotplug, its capture records to UsbCaptures. */
class CaptureStandIn implements UsbControl {
  readonly driver = new Driver();
  private readonly waiting = new Map<number, (r: UsbReply) => void>();
  private nextId = 1;
  readonly hot: XhciHotplug;
  readonly captures: UsbCaptures;

  constructor() {
    this.driver.start();
    this.captures = new UsbCaptures(async (portMask, snapLength) => (await this.request({ op: 'capture', portMask, snapLength })).capture);
    this.hot = new XhciHotplug(this.driver.hc, createUsbDevice, {
      send: (payload) => {
        const reply = decodeUsbMessage(payload) as unknown as UsbReply;
        setImmediate(() => this.waiting.get(reply.id)?.(reply));
        return true;
      },
      sendCapture: (record) => {
        this.captures.record(record);
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
  startUsbCapture(spec: UsbCaptureSpec, listener?: (r: UsbTransferRecord) => void) { return this.captures.start(spec, listener ?? null); }
  stopUsbCapture(id: number) { return this.captures.stop(id); }
  async attachHostUsb(selector: string): Promise<Awaited<ReturnType<UsbControl['attachHostUsb']>>> {
    throw new UsbRequestError('not-found', `there is no host USB device ${selector}`);
  }
}

let dir: string;
let socket: string;
let vm: CaptureStandIn;
let server: MonitorServer | null;

beforeEach(() => {
  dir = tempDir();
  socket = path.join(dir, 'vm.sock');
  vm = new CaptureStandIn();
  server = null;
});

afterEach(() => {
  server?.close();
  vm.hot.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** The guest: the stick's descriptors, SET_CONFIGURATION, and one READ(10) of 2 blocks at LBA 5. */
function guestReadsStick(d: Driver, port: number): void {
  const slot = d.enumerate(port, 4);
  d.control(slot, [0x80, 6, 0x0100, 0, 18], DATA, true);
  d.control(slot, [0x80, 6, 0x0200, 0, 255], DATA, true);
  d.control(slot, [0, 9, 1, 0, 0], 0, false);
  d.configure(slot, [[3, 6], [4, 2]]);
  d.dma.write(DATA, cbw(7, 1024, true, read10(5, 2)));
  for (const [dci, addr, n] of [[4, DATA, 31], [3, DATA + 0x1000, 1024], [3, DATA + 0x2000, 13]]) {
    d.ring(slot, dci).push(addr, 0, n, trb(1, (1 << 5) | (1 << 2)));
    d.w32(DB + 4 * slot, dci);
  }
  d.events();
}

function tsharkReads10(file: string): string[] {
  return execFileSync('tshark', ['-r', file, '-Y', 'usbms.dCBWSignature && scsi_sbc.opcode == 0x28', '-T', 'fields', '-e', 'scsi_sbc.rdwr10.lba'], {
    encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'],
  }).trim().split('\n').filter((l) => l !== '');
}

test('porthole capture writes the transfers of the chosen port until Ctrl-C; tshark finds the READ(10)', async () => {
  server = await startMonitor(socket, vm);
  const image = makeImage(dir, 1 << 20);
  await vm.attachUsb({ kind: 'storage', path: image, readOnly: false, port: 1 });
  await vm.attachUsb({ kind: 'keyboard', port: 5 });
  const file = path.join(dir, 'cap.pcapng');
  let err = '';
  let started!: () => void;
  const capturing = new Promise<void>((resolve) => { started = resolve; });
  const done = runCaptureCommand({ socket, path: file, port: 1, snapLength: null }, {
    out: () => undefined,
    err: (t) => { err += t; if (t.includes('Ctrl-C')) started(); },
  });
  await capturing;
  assert.equal(vm.captures.running, true);
  guestReadsStick(vm.driver, 1);
  // The keyboard's transfers are on another port: not in this capture.
  const kslot = vm.driver.enumerate(5, 1);
  vm.driver.control(kslot, [0x80, 6, 0x0100, 0, 18], DATA, true);
  process.emit('SIGINT');
  assert.equal(await done, 0);
  assert.equal(vm.captures.running, false, 'the machine stopped capturing');
  assert.equal(vm.driver.hc.capture, null);
  assert.match(err, new RegExp(`capturing USB port 1 to ${file} \\(Ctrl-C stops\\)`));
  assert.match(err, new RegExp(`12 packets, \\d+ bytes written to ${file}\\n$`));
  assert.deepEqual(tsharkReads10(file), ['5']);
  const addresses = execFileSync('tshark', ['-r', file, '-T', 'fields', '-e', 'usb.device_address'], { encoding: 'utf8' }).trim().split('\n');
  assert.equal(new Set(addresses).size, 1, 'one device only');
});

test('a capture client that vanishes stops its capture, and the file it leaves is whole; bad requests get sentences', async () => {
  server = await startMonitor(socket, vm);
  await vm.attachUsb({ kind: 'storage', path: makeImage(dir, 1 << 20), readOnly: false, port: 2 });
  const file = path.join(dir, 'gone.pcapng');
  const client = net.connect(socket);
  const replies: unknown[] = [];
  client.setEncoding('utf8');
  client.on('data', (t: string) => replies.push(...t.trim().split('\n').map((l) => JSON.parse(l))));
  await new Promise<void>((resolve) => client.once('connect', () => resolve()));
  client.write(`${JSON.stringify({ id: 1, method: 'startUsbCapture', args: [{ path: file }] })}\n`);
  client.write(`${JSON.stringify({ id: 2, method: 'startUsbCapture', args: [{ path: 'relative.pcapng' }] })}\n`);
  client.write(`${JSON.stringify({ id: 3, method: 'startUsbCapture', args: [{ path: path.join(dir, 'no', 'such', 'dir.pcapng') }] })}\n`);
  client.write(`${JSON.stringify({ id: 4, method: 'stopUsbCapture', args: [99] })}\n`);
  while (replies.length < 4) await new Promise((r) => setTimeout(r, 5));
  const [ok, rel, nodir, nostop] = replies as { ok: boolean; error?: { code: string; message: string } }[];
  assert.equal(ok.ok, true);
  assert.deepEqual(rel.error, { code: 'invalid-argument', message: 'The capture file needs an absolute path.' });
  assert.equal(nodir.error?.code, 'not-found');
  assert.match(nodir.error?.message ?? '', /^Cannot write the capture file .*dir\.pcapng: ENOENT\.$/);
  assert.deepEqual(nostop.error, { code: 'not-found', message: 'There is no USB capture 99.' });
  guestReadsStick(vm.driver, 2);
  client.destroy();
  for (let i = 0; i < 200 && vm.captures.running; i++) await new Promise((r) => setTimeout(r, 5));
  assert.equal(vm.captures.running, false, 'the capture stopped with its connection');
  assert.deepEqual(tsharkReads10(file), ['5']);
});

test('a capture started while a transfer waits does not lose that transfer\'s Complete (the tap stays)', async () => {
  const kbd = await vm.attachUsb({ kind: 'keyboard', port: 5 });
  assert.equal(kbd.port, 5);
  const first: UsbTransferRecord[] = [];
  const a = await vm.captures.start({ path: null }, (r) => first.push(r));
  const d = vm.driver;
  const slot = d.enumerate(5, 1);
  d.control(slot, [0, 9, 1, 0, 0], 0, false);
  d.configure(slot, [[3, 7]]);
  d.ring(slot, 3).push(DATA, 0, 8, trb(1, (1 << 5) | (1 << 2)));
  d.w32(DB + 4 * slot, 3);
  d.events();
  const waiting = first.find((r) => r.event === 'submit' && r.type === 'interrupt');
  assert.ok(waiting, 'the interrupt TD was submitted and waits for a key');
  const second: UsbTransferRecord[] = [];
  const b = await vm.captures.start({ path: null, port: 5 }, (r) => second.push(r));
  const keyboard = vm.driver.hc.ports[4].device as unknown as { key(usage: number, down: boolean): void };
  keyboard.key(4, true);
  const done = first.find((r) => r.event === 'complete' && r.id === waiting.id);
  assert.ok(done, `the waiting transfer completed in the first capture: ${JSON.stringify(first.slice(-3))}`);
  assert.deepEqual([done.status, done.length, done.data], ['ok', 8, '0000040000000000']);
  assert.ok(second.some((r) => r.event === 'complete' && r.id === waiting.id), 'and in the second, which saw only its end');
  await vm.captures.stop(b.id);
  await vm.captures.stop(a.id);
  assert.equal(vm.driver.hc.capture, null);
});
