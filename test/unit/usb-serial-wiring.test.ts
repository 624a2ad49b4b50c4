// The USB serial port (CDC-ACM) wired end to end on the host side: --usb and config-file
// parsing, the API's validation and defaults, the renderer's form, and on the machine
// thread the xHCI hot-plug layer carrying its bytes both ways by link, with the channel's
// back-pressure, driven at register level from the guest's side of the controller, and a fuzz
// of that path (TD lengths, a channel that fills, host input) that checks every byte arrives.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ConfigError, machineConfigFromJson, parseUsbDevice, usbDeviceConfigFromJson } from '../../main/vmm/config';
import { parseUsbDeviceSpec, usbDeviceProblems } from '../../main/api/usb-input';
import { parseArgs } from '../../main/cli/args';
import { createUsbDevice } from '../../main/vmm/devices/usb/xhci-pci';
import { XhciHotplug } from '../../main/vmm/devices/usb/xhci-hotplug';
import {
  decodeSerialData, decodeUsbMessage, encodeSerialData, encodeUsbRequest, USB_KIND, type UsbReply, type UsbRequestBody,
} from '../../main/vmm/shared/usb-messages';
import { DATA, DB, Driver, PORTSC, trb } from '../helpers/xhci-driver';
import { loadRendererModule } from '../helpers/renderer-module';
import { fuzzCases, Prng } from '../helpers/prng';

const TRANSFER_EVENT = 32;
const CSC = 1 << 17;
const IOC = 1 << 5;
const ISP = 1 << 2;
/** DCIs of the ACM device's endpoints: bulk IN 0x81, bulk OUT 0x02, interrupt IN 0x83. */
const DCI_IN = 3;
const DCI_OUT = 4;
const DCI_NOTIFY = 7;

test('--usb serial and serial:SPEC, and a config file\'s serial entry, checked like --serial', () => {
  assert.deepEqual(parseUsbDevice('serial'), { kind: 'serial', backend: 'pty' });
  assert.deepEqual(parseUsbDevice('serial:tcp-listen:4555'), { kind: 'serial', backend: 'tcp-listen:4555' });
  assert.deepEqual(parseUsbDevice('serial:/dev/ttyUSB0'), { kind: 'serial', backend: '/dev/ttyUSB0' });
  assert.throws(() => parseUsbDevice('serial:bogus'), (e: Error) => e instanceof ConfigError && /serial "bogus" is not understood/.test(e.message));
  assert.throws(() => parseUsbDevice('serial:tcp-listen:99999'), /not a TCP port/);
  assert.throws(() => parseUsbDevice('modem'), /serial or serial:BACKEND/);
  const c = machineConfigFromJson({ usb: { devices: [{ kind: 'serial' }, { kind: 'serial', backend: 'unix-listen:/tmp/acm.sock', port: 6 }] } });
  assert.deepEqual(c.usb?.devices, [{ kind: 'serial', backend: 'pty' }, { kind: 'serial', backend: 'unix-listen:/tmp/acm.sock', port: 6 }]);
  assert.throws(() => usbDeviceConfigFromJson({ kind: 'serial', backend: 'nope' }, 'usb.devices[0]'), /^ConfigError: usb\.devices\[0\]\.backend: serial "nope"/);
  assert.throws(() => usbDeviceConfigFromJson({ kind: 'serial', backend: 3 }, 'usb.devices[0]'), /usb\.devices\[0\]\.backend must be a non-empty string/);
  assert.throws(() => usbDeviceConfigFromJson({ kind: 'serial', path: '/x' }, 'usb.devices[1]'), /usb\.devices\[1\]: unknown field "path"/);
  assert.throws(() => usbDeviceConfigFromJson({ kind: 'serial', port: 2 }, 'usb.devices[0]'), /needs a USB 2 port/);
  // The link is the VM host's to give, never a config file's.
  assert.throws(() => usbDeviceConfigFromJson({ kind: 'serial', link: 4 }, 'usb.devices[0]'), /unknown field "link"/);
});

test('API: a serial device defaults to a pty, refuses "ui" and bad fields with the field named', () => {
  assert.deepEqual(parseUsbDeviceSpec({ kind: 'serial' }), { kind: 'serial', backend: 'pty' });
  assert.deepEqual(parseUsbDeviceSpec({ kind: 'serial', backend: ' tcp-listen:4555 ', port: 7 }), { kind: 'serial', backend: 'tcp-listen:4555', port: 7 });
  assert.deepEqual(usbDeviceProblems({ kind: 'serial', backend: 'ui' }).map((p) => p.field), ['backend']);
  assert.deepEqual(usbDeviceProblems({ kind: 'serial', backend: '' }).map((p) => p.field), ['backend']);
  assert.deepEqual(usbDeviceProblems({ kind: 'serial', readOnly: true }).map((p) => p.field), ['readOnly']);
  assert.deepEqual(usbDeviceProblems({ kind: 'serial', port: 1 }).map((p) => p.field), ['port']);
  assert.throws(() => parseUsbDeviceSpec({ kind: 'serial', backend: 'ui' }), /Device backend cannot be "ui"/);
});

const noConfig = (): never => { throw new Error('no config file here'); };

test('CLI: porthole usb add serial:unix:REL sends an absolute socket path', () => {
  const parsed = parseArgs(['usb', 'add', 'serial:unix:rel/acm.sock', '--monitor', '/tmp/vm.sock'], noConfig);
  assert.equal(parsed.command, 'monitor');
  const args = (parsed as { args: unknown[] }).args;
  assert.deepEqual(args, [{ kind: 'serial', backend: `unix:${process.cwd()}/rel/acm.sock` }]);
  const pty = parseArgs(['usb', 'add', 'serial', '--port', '6', '--monitor', '/tmp/vm.sock'], noConfig) as { args: unknown[] };
  assert.deepEqual(pty.args, [{ kind: 'serial', backend: 'pty', port: 6 }]);
});

test('renderer: the USB panel offers a serial port and sends its host end', () => {
  const usb = loadRendererModule<typeof import('../../renderer/src/usb')>('usb.ts');
  assert.ok(usb.USB_KINDS.some((k) => k.kind === 'serial'));
  const form = { kind: 'serial' as const, path: '', readOnly: false, port: null };
  assert.deepEqual(usb.attachRequest(form), { ok: true, device: { kind: 'serial', backend: 'pty' } });
  assert.deepEqual(usb.attachRequest({ ...form, backend: 'tcp-listen:4555', port: 6 }), { ok: true, device: { kind: 'serial', backend: 'tcp-listen:4555', port: 6 } });
  assert.equal(usb.attachRequest({ ...form, backend: 'ui' }).ok, false);
  assert.equal(usb.configuredDeviceText({ kind: 'serial', backend: 'pty', port: 5 }), 'USB serial port (pty) on port 5');
});

interface Timer { fn: () => void; live: boolean }

function harness() {
  const d = new Driver();
  d.start();
  const replies: UsbReply[] = [];
  const output: { link: number; bytes: number[] }[] = [];
  const timers: Timer[] = [];
  const logs: string[] = [];
  let channelFull = false;
  /** Records the channel takes before it is full (Infinity: always room). */
  let room = Infinity;
  const hot = new XhciHotplug(d.hc, createUsbDevice, {
    send: (payload) => {
      replies.push(decodeUsbMessage(payload) as unknown as UsbReply);
      return true;
    },
    sendSerial: (payload) => {
      if (channelFull || room === 0) return false;
      room--;
      const data = decodeSerialData(payload);
      assert.ok(data);
      output.push({ link: data.link, bytes: [...data.bytes] });
      return true;
    },
    setTimer: (_ms, fn) => {
      const t = { fn, live: true };
      timers.push(t);
      return () => { t.live = false; };
    },
    log: (text) => logs.push(text),
  });
  let nextId = 0;
  const ask = (body: UsbRequestBody): UsbReply => {
    const id = ++nextId;
    hot.handle(USB_KIND.REQUEST, encodeUsbRequest({ ...body, id }));
    const r = replies.find((x) => x.id === id);
    assert.ok(r, 'a reply');
    return r;
  };
  const runTimers = () => {
    for (const t of timers.splice(0)) if (t.live) t.fn();
  };
  /** Plugs a serial port with `link`, enumerates and configures it; returns its slot. */
  const plugSerial = (link: number) => {
    const r = ask({ op: 'attach', device: { kind: 'serial', backend: 'pty', link } });
    assert.ok(r.ok, JSON.stringify(r));
    const port = r.port!;
    const slot = d.enumerate(port, 1);
    d.w32(PORTSC(port), CSC);
    d.control(slot, [0, 9, 1, 0, 0], 0, false); // SET_CONFIGURATION 1
    assert.equal(d.configure(slot, [[DCI_IN, 6], [DCI_OUT, 2], [DCI_NOTIFY, 7]]).code, 1);
    d.events();
    return { slot, port, reply: r };
  };
  const guestWrite = (slot: number, at: number, bytes: number[]) => {
    d.dma.write(at, Uint8Array.from(bytes));
    d.ring(slot, DCI_OUT).push(at, 0, bytes.length, trb(1, IOC));
    d.w32(DB + 4 * slot, DCI_OUT);
  };
  const guestRead = (slot: number, at: number, length: number) => {
    d.ring(slot, DCI_IN).push(at, 0, length, trb(1, IOC | ISP));
    d.w32(DB + 4 * slot, DCI_IN);
  };
  const received = (at: number, length: number) => {
    const out = new Uint8Array(length);
    d.dma.read(at, out);
    return [...out];
  };
  return {
    d, hot, ask, output, logs, runTimers, timers, plugSerial, guestWrite, guestRead, received,
    setChannelFull: (v: boolean) => { channelFull = v; },
    setChannelRoom: (n: number) => { room = n; },
  };
}

test('xHCI hot-plug: a serial port\'s bytes go to the VM host by link, and host bytes reach a bulk IN TD', () => {
  const h = harness();
  const { slot, port, reply } = h.plugSerial(7);
  assert.equal(port, 5, 'the first USB 2 port');
  assert.ok(reply.ok);
  const info = reply.ports.find((p) => p.port === 5)?.device;
  assert.equal(info?.kind, 'serial');
  assert.equal(info?.endpoint, 'pty', 'the backend until the VM host names its endpoint');
  assert.deepEqual([info?.vendorId, info?.productId, info?.speed], [0x1d6b, 0x0104, 'full']);
  assert.deepEqual(reply.plugged, [{ kind: 'serial', backend: 'pty', link: 7, port: 5 }], 'a relaunch plugs it with its link');

  h.guestWrite(slot, DATA, [0x68, 0x69, 0x0a]);
  assert.deepEqual(h.output, [{ link: 7, bytes: [0x68, 0x69, 0x0a] }]);
  assert.deepEqual(h.d.events().map((e) => [e.type, e.code, e.ep, e.length]), [[TRANSFER_EVENT, 1, DCI_OUT, 0]]);

  // Host to guest: a TD waiting before the bytes come completes short when they do.
  h.guestRead(slot, DATA + 0x1000, 64);
  assert.deepEqual(h.d.events(), [], 'nothing to read yet');
  h.hot.handle(USB_KIND.SERIAL_INPUT, encodeSerialData(7, Uint8Array.of(1, 2, 3, 4, 5)));
  const ev = h.d.events();
  assert.deepEqual(ev.map((e) => [e.type, e.code, e.ep, e.length]), [[TRANSFER_EVENT, 13, DCI_IN, 59]], 'short packet, 59 bytes left');
  assert.deepEqual(h.received(DATA + 0x1000, 5), [1, 2, 3, 4, 5]);
  // Input for a link nobody has, or a record too short to name one, goes nowhere.
  h.hot.handle(USB_KIND.SERIAL_INPUT, encodeSerialData(8, Uint8Array.of(9)));
  h.hot.handle(USB_KIND.SERIAL_INPUT, Uint8Array.of(7, 0));
  h.guestRead(slot, DATA + 0x1000, 64);
  assert.deepEqual(h.d.events(), []);
});

test('xHCI hot-plug: a full channel makes the guest\'s write wait, and a retry sends it; unplugging ends it', () => {
  const h = harness();
  const { slot, port } = h.plugSerial(3);
  h.setChannelFull(true);
  h.guestWrite(slot, DATA, [0x41, 0x42]);
  assert.deepEqual(h.output, []);
  assert.deepEqual(h.d.events(), [], 'the TD waits: no completion while the host cannot take the bytes');
  assert.equal(h.timers.filter((t) => t.live).length, 1, 'a retry is set');
  h.runTimers();
  assert.deepEqual(h.output, [], 'still full: still waiting');
  h.setChannelFull(false);
  h.runTimers();
  assert.deepEqual(h.output, [{ link: 3, bytes: [0x41, 0x42] }]);
  assert.deepEqual(h.d.events().map((e) => [e.type, e.code, e.ep]), [[TRANSFER_EVENT, 1, DCI_OUT]]);

  // Unplugged: its pending retry and its link are gone; input for it is dropped quietly.
  h.setChannelFull(true);
  h.guestWrite(slot, DATA, [0x43]);
  const gone = h.ask({ op: 'detach', port });
  assert.ok(gone.ok);
  assert.deepEqual(gone.plugged, []);
  h.setChannelFull(false);
  h.runTimers();
  assert.deepEqual(h.output.length, 1, 'nothing from a gone device');
  h.hot.handle(USB_KIND.SERIAL_INPUT, encodeSerialData(3, Uint8Array.of(1)));
  // The same link may be given again after the unplug.
  const again = h.ask({ op: 'attach', device: { kind: 'serial', backend: 'pty', link: 3 } });
  assert.ok(again.ok && again.port === port, JSON.stringify(again));
});

test('xHCI hot-plug: host input beyond the device\'s buffer waits, in order, until the guest reads', () => {
  const h = harness();
  const { slot } = h.plugSerial(1);
  const total = 70000; // more than the device's 64 KiB receive buffer
  const bytes = Uint8Array.from({ length: total }, (_, i) => (i * 7 + 3) & 0xff);
  for (let at = 0; at < total; at += 4092) h.hot.handle(USB_KIND.SERIAL_INPUT, encodeSerialData(1, bytes.subarray(at, at + 4092)));
  const got: number[] = [];
  for (let round = 0; round < 4 && got.length < total; round++) {
    h.guestRead(slot, DATA, 32768);
    const ev = h.d.events();
    assert.equal(ev.length, 1);
    assert.ok(ev[0].code === 1 || ev[0].code === 13, `completion code ${ev[0].code}`);
    got.push(...h.received(DATA, 32768 - ev[0].length));
  }
  assert.equal(got.length, total);
  assert.ok(got.every((b, i) => b === bytes[i]), 'every byte, in order');
  assert.deepEqual(h.logs.filter((l) => /dropping/.test(l)), [], 'nothing dropped');
});

test('xHCI hot-plug: a serial port needs a link and a USB 2 port', () => {
  const h = harness();
  const noLink = h.ask({ op: 'attach', device: { kind: 'serial', backend: 'pty' } });
  assert.ok(!noLink.ok && noLink.code === 'invalid-argument' && /link/.test(noLink.error), JSON.stringify(noLink));
  const usb3 = h.ask({ op: 'attach', device: { kind: 'serial', backend: 'pty', link: 2, port: 1 } });
  assert.ok(!usb3.ok && /USB 2 port/.test(usb3.error), JSON.stringify(usb3));
  h.plugSerial(2);
  const twice = h.ask({ op: 'attach', device: { kind: 'serial', backend: 'pty', link: 2 } });
  assert.ok(!twice.ok && /link of its own/.test(twice.error), 'one link, one device');
});

test('fuzz: guest TDs of any length and a channel that fills at random move every byte once, in order, both ways', () => {
  for (let run = 0; run < fuzzCases(6); run++) {
    const rng = new Prng(0x5e71a1 + run);
    const h = harness();
    const { slot } = h.plugSerial(9);
    const written: number[] = [];
    const input: number[] = [];
    const read: number[] = [];
    let outstandingOut = 0;
    let inAt = -1; // the length of the IN TD in flight, or -1
    const collect = () => {
      for (const e of h.d.events()) {
        assert.equal(e.type, TRANSFER_EVENT);
        assert.ok(e.code === 1 || e.code === 13, `completion code ${e.code}`);
        if (e.ep === DCI_OUT) outstandingOut--;
        else if (e.ep === DCI_IN) {
          read.push(...h.received(0x68000, inAt - e.length));
          inAt = -1;
        }
      }
    };
    for (let step = 0; step < 120; step++) {
      const op = rng.below(5);
      if (op === 0 && outstandingOut < 8) {
        const bytes = Array.from({ length: rng.below(4) === 0 ? 0 : 1 + rng.below(20000) }, () => rng.below(256));
        written.push(...bytes);
        h.guestWrite(slot, DATA + (step % 8) * 0x5000, bytes);
        outstandingOut++;
      } else if (op === 1 && inAt < 0) {
        inAt = 1 + rng.below(16384);
        h.guestRead(slot, 0x68000, inAt);
      } else if (op === 2 && input.length - read.length < 200000) {
        const bytes = Uint8Array.from({ length: 1 + rng.below(4092) }, () => rng.below(256));
        input.push(...bytes);
        h.hot.handle(USB_KIND.SERIAL_INPUT, encodeSerialData(9, bytes));
      } else if (op === 3) {
        // Full, a record or two of room (a long TD then completes with its rest kept back), or room.
        h.setChannelRoom(rng.below(2) === 0 ? rng.below(3) : Infinity);
      } else {
        h.runTimers();
      }
      collect();
    }
    // Drain: room in the channel, retries run, the guest reads until the input is all in.
    h.setChannelRoom(Infinity);
    for (let i = 0; i < 200 && (h.timers.some((t) => t.live) || outstandingOut > 0); i++) {
      h.runTimers();
      collect();
    }
    for (let i = 0; i < 400 && read.length < input.length; i++) {
      if (inAt < 0) {
        inAt = 16384;
        h.guestRead(slot, 0x68000, inAt);
      }
      collect();
      h.runTimers();
    }
    assert.equal(outstandingOut, 0, `run ${run}: every OUT TD completed`);
    const out = h.output.flatMap((o) => { assert.equal(o.link, 9); return o.bytes; });
    assert.equal(out.length, written.length, `run ${run}: output bytes`);
    assert.ok(out.every((b, i) => b === written[i]), `run ${run}: guest output in order`);
    assert.equal(read.length, input.length, `run ${run}: input bytes`);
    assert.ok(read.every((b, i) => b === input[i]), `run ${run}: host input in order`);
    assert.ok(h.output.every((o) => o.bytes.length <= 8192), 'records of at most 8 KiB');
  }
});
