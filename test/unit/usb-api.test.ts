// The USB calls of the API without KVM: the validators (main/api/usb-input.ts) and the config
// field they share, the way from a session call through the manager and the VM process link
// to a scripted VM process and back, and the VM host's refusals before any machine runs.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeEach, test } from 'node:test';
import { ApiError } from '../../main/api/contract';
import { ApiSession } from '../../main/api/session';
import { parseUsbDeviceSpec, parseUsbKeys, parseUsbPort, usbKeyUsage } from '../../main/api/usb-input';
import { parseVmSpec, vmSpecProblems } from '../../main/api/schema';
import { machineConfigOf, specFileProblems } from '../../main/manager/machine-config';
import { VmManager } from '../../main/manager/manager';
import type { ManagerToVm } from '../../main/manager/vm-process-protocol';
import { defaultConfig, machineConfigFromJson } from '../../main/vmm/config';
import { VmHost } from '../../main/vmm/host/vm-host';
import { Channel } from '../../main/vmm/shared/channel';
import {
  decodeUsbRequest, encodeUsbRequest, USB_KIND, type UsbPortState, XHCI_CHANNEL_TARGET,
} from '../../main/vmm/shared/usb-messages';
import { flatSpec, tempConfigHome, waitFor } from '../helpers/manager';
import { ScriptedProcess } from '../helpers/scripted-process';

function refusal(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof ApiError, `an ApiError, not ${String(e)}`);
    assert.equal(e.code, 'invalid-argument');
    return e.message;
  }
  assert.fail('not refused');
}

test('device specs: the config shape, errors naming the field, absolute image paths', () => {
  assert.deepEqual(parseUsbDeviceSpec({ kind: 'keyboard' }), { kind: 'keyboard' });
  assert.deepEqual(parseUsbDeviceSpec({ kind: 'storage', path: '/i.img' }), { kind: 'storage', path: '/i.img', readOnly: false });
  assert.deepEqual(parseUsbDeviceSpec({ kind: 'storage', path: '/i.img', readOnly: true, port: 3 }), {
    kind: 'storage', path: '/i.img', readOnly: true, port: 3,
  });
  assert.equal(refusal(() => parseUsbDeviceSpec({ kind: 'mouse' })), 'Device kind must be "storage", "keyboard", "tablet" or "serial".');
  assert.equal(refusal(() => parseUsbDeviceSpec({ kind: 'storage' })), 'Device path must be the path of an image file.');
  assert.equal(refusal(() => parseUsbDeviceSpec({ kind: 'storage', path: 'rel.img' })), 'Device path must be an absolute path (starting with /).');
  assert.equal(refusal(() => parseUsbDeviceSpec({ kind: 'storage', path: '/a', readOnly: 'yes' })), 'Device readOnly must be true or false.');
  assert.equal(refusal(() => parseUsbDeviceSpec({ kind: 'tablet', path: '/a' })), 'Device path is not a setting of a tablet.');
  assert.equal(refusal(() => parseUsbDeviceSpec({ kind: 'tablet', port: 9 })), 'Device port must be a whole number from 1 to 8.');
  assert.equal(refusal(() => parseUsbDeviceSpec({ kind: 'tablet', port: 1 })),
    'Device port must be a USB 2 port (5 to 8) for a tablet; 1 is a USB 3 port.');
  assert.equal(refusal(() => parseUsbDeviceSpec('keyboard')), 'The device must be an object with a "kind".');
  assert.equal(refusal(() => parseUsbPort(0)), 'The USB port must be a whole number from 1 to 8.');
  assert.equal(refusal(() => parseUsbPort('5')), 'The USB port must be a whole number from 1 to 8.');
  assert.equal(parseUsbPort(8), 8);
});

test('a config file may pin a device to a port; two devices on one port are refused', () => {
  const c = machineConfigFromJson({ usb: { devices: [{ kind: 'keyboard', port: 6 }, { kind: 'tablet' }] } });
  assert.deepEqual(c.usb, { controller: 'xhci', devices: [{ kind: 'keyboard', port: 6 }, { kind: 'tablet' }] });
  assert.throws(() => machineConfigFromJson({ usb: { devices: [{ kind: 'keyboard', port: 6 }, { kind: 'tablet', port: 6 }] } }, 'vm.json'),
    { message: 'vm.json: usb.devices[1].port: port 6 is taken by devices[0]' });
});

test('keys: characters, code names, short names and chords become press/release events', () => {
  const D = (usage: number) => ({ usage, down: true });
  const U = (usage: number) => ({ usage, down: false });
  assert.deepEqual(parseUsbKeys(['a', 'Enter']), [D(4), U(4), D(0x28), U(0x28)]);
  assert.deepEqual(parseUsbKeys(['ctrl+alt+Delete']), [D(0xe0), D(0xe2), D(0x4c), U(0x4c), U(0xe2), U(0xe0)]);
  assert.deepEqual(parseUsbKeys(['A']), [D(0xe1), D(4), U(4), U(0xe1)], 'a capital is shift+a');
  assert.deepEqual(parseUsbKeys(['ctrl++']), [D(0xe0), D(0xe1), D(0x2e), U(0x2e), U(0xe1), U(0xe0)]);
  assert.deepEqual(parseUsbKeys(['KeyZ', 'f12', 'ArrowUp', 'pgdn']), [D(0x1d), U(0x1d), D(0x45), U(0x45), D(0x52), U(0x52), D(0x4e), U(0x4e)]);
  assert.deepEqual(parseUsbKeys({ text: 'Hi!\n' }), [
    D(0xe1), D(0x0b), U(0x0b), U(0xe1), D(0x0c), U(0x0c), D(0xe1), D(0x1e), U(0x1e), U(0xe1), D(0x28), U(0x28),
  ]);
  assert.deepEqual(usbKeyUsage('NumpadEnter'), [0x58, false]);
  assert.equal(usbKeyUsage('Hyper'), null);
  assert.equal(refusal(() => parseUsbKeys(['a', 'ctrl+Bogus'])), 'Key 2: "Bogus" is not a key name (e.g. "a", "Enter", "F5", "ctrl+alt+Delete").');
  assert.equal(refusal(() => parseUsbKeys([])), 'Give at least one key name.');
  assert.equal(refusal(() => parseUsbKeys([7])), 'Key 1 must be a key name such as "a" or "Enter".');
  assert.equal(refusal(() => parseUsbKeys({ text: 'é' })), 'Character 1 of the text (U+00E9) cannot be typed on a US keyboard layout.');
  assert.equal(refusal(() => parseUsbKeys({ text: 'x'.repeat(1025) })), 'Text is limited to 1024 characters per call.');
  assert.match(refusal(() => parseUsbKeys('a')), /must be a list of key names/);
  assert.match(refusal(() => parseUsbKeys({ text: 'a', extra: 1 })), /must be a list of key names/);
  assert.match(refusal(() => parseUsbKeys(['a+b+c+d+e+f+g+h+i'])), /more than 8 keys/);
});

test('the VM host refuses USB requests for a VM without a controller, or one not running', async () => {
  await assert.rejects(new VmHost(defaultConfig()).usbPorts(), { code: 'invalid-state', message: /no USB controller/ });
  const withUsb = new VmHost({ ...defaultConfig(), usb: { controller: 'xhci', devices: [] } });
  await assert.rejects(withUsb.attachUsb({ kind: 'keyboard' }), { code: 'invalid-state', message: 'the VM is stopped' });
  await assert.rejects(withUsb.sendUsbKeys([{ usage: 4, down: true }]), { code: 'invalid-state' });
});

let home: ReturnType<typeof tempConfigHome>;
let manager: VmManager;
let procs: ScriptedProcess[];
let session: ApiSession<Uint8Array>;

beforeEach(() => {
  home = tempConfigHome();
  fs.writeFileSync(path.join(home.home, 'g.bin'), 'x');
  procs = [];
  manager = new VmManager({
    libraryDir: home.libraryDir, mode: 'browser', appVersion: 't', stopTimeoutMs: 200, startTimeoutMs: 1000,
    launcher: () => { const p = new ScriptedProcess(); procs.push(p); return p; },
    log: () => undefined,
  });
  manager.load();
  session = new ApiSession(manager, () => undefined, (d) => d, () => undefined);
});

afterEach(async () => {
  session.close();
  await manager.shutdownAll('force-off');
  home.cleanup();
});

async function runningVm(): Promise<{ id: string; proc: ScriptedProcess }> {
  const vm = manager.createVm(flatSpec('g', { boot: { kind: 'flat', path: path.join(home.home, 'g.bin') } }));
  const p = manager.startVm(vm.id);
  const proc = procs[procs.length - 1];
  proc.boot();
  await p;
  return { id: vm.id, proc };
}

function usbMessages(proc: ScriptedProcess): Extract<ManagerToVm, { type: 'usb' }>[] {
  return proc.sent.filter((m): m is Extract<ManagerToVm, { type: 'usb' }> => m.type === 'usb');
}

const STICK: UsbPortState = {
  port: 1, protocol: 'usb3',
  device: { kind: 'storage', name: 'usb-storage s.img', product: 'USB Disk', speed: 'super', vendorId: 0x46f4, productId: 1, path: '/s.img', readOnly: false },
};

test('attachUsbDevice travels to the VM process and answers with the port; its errors keep their code', async () => {
  const { id, proc } = await runningVm();
  const call = session.call('attachUsbDevice', [id, { kind: 'storage', path: '/s.img' }]);
  await waitFor(() => usbMessages(proc).length === 1, 2000, () => 'the usb message');
  const m = usbMessages(proc)[0];
  assert.deepEqual(m.request, { op: 'attach', device: { kind: 'storage', path: '/s.img', readOnly: false } });
  proc.message({ type: 'reply', id: m.id, ok: true, usb: { ports: [STICK], port: 1 } });
  assert.deepEqual(await call, { ok: true, value: STICK });

  const missing = session.call('attachUsbDevice', [id, { kind: 'storage', path: '/nope.img' }]);
  await waitFor(() => usbMessages(proc).length === 2, 2000, () => 'the second usb message');
  proc.message({ type: 'reply', id: usbMessages(proc)[1].id, ok: false, code: 'not-found', message: 'disk image /nope.img: it does not exist' });
  assert.deepEqual(await missing, { ok: false, error: { code: 'not-found', message: 'Disk image /nope.img: it does not exist.' } });

  const list = session.call('listUsbPorts', [id]);
  await waitFor(() => usbMessages(proc).length === 3, 2000, () => 'the list message');
  assert.deepEqual(usbMessages(proc)[2].request, { op: 'list' });
  proc.message({ type: 'reply', id: usbMessages(proc)[2].id, ok: true, usb: { ports: [STICK, { port: 5, protocol: 'usb2', device: null }] } });
  assert.deepEqual(await list, { ok: true, value: [STICK, { port: 5, protocol: 'usb2', device: null }] });

  const detach = session.call('detachUsbDevice', [id, 1]);
  await waitFor(() => usbMessages(proc).length === 4, 2000, () => 'the detach message');
  assert.deepEqual(usbMessages(proc)[3].request, { op: 'detach', port: 1 });
  proc.message({ type: 'reply', id: usbMessages(proc)[3].id, ok: true, usb: { ports: [], port: 1 } });
  assert.deepEqual(await detach, { ok: true, value: null });
  assert.ok(manager.getVmLog(id).some((l) => l.includes('USB: port 1 unplugged')));
});

test('bad USB arguments are refused before the VM process hears of them; state is checked', async () => {
  const { id, proc } = await runningVm();
  const r1 = await session.call('attachUsbDevice', [id, { kind: 'storage', path: 'relative.img' }]);
  assert.deepEqual(r1, { ok: false, error: { code: 'invalid-argument', message: 'Device path must be an absolute path (starting with /).' } });
  const r2 = await session.call('detachUsbDevice', [id, 0]);
  assert.deepEqual(r2, { ok: false, error: { code: 'invalid-argument', message: 'The USB port must be a whole number from 1 to 8 (argument "usbPort" of detachUsbDevice).' } });
  const r3 = await session.call('sendUsbKeys', [id, ['ctrl+nope']]);
  assert.ok(!r3.ok && r3.error.code === 'invalid-argument' && r3.error.message.includes('"nope" is not a key name'));
  assert.equal(usbMessages(proc).length, 0);

  const keys = session.call('sendUsbKeys', [id, { text: 'ok' }]);
  await waitFor(() => usbMessages(proc).length === 1, 2000, () => 'the keys message');
  assert.deepEqual(usbMessages(proc)[0].request, { op: 'keys', events: parseUsbKeys({ text: 'ok' }) });
  proc.message({ type: 'reply', id: usbMessages(proc)[0].id, ok: true });
  assert.deepEqual(await keys, { ok: true, value: null });

  const paused = manager.pauseVm(id);
  proc.reply();
  proc.message({ type: 'state', state: 'paused' });
  await paused;
  const r4 = await session.call('sendUsbKeys', [id, ['a']]);
  assert.deepEqual(r4, { ok: false, error: { code: 'invalid-state', message: 'Cannot type into the VM while it is paused.' } });
  const stopped = manager.createVm(flatSpec('g', { boot: { kind: 'flat', path: path.join(home.home, 'g.bin') } }));
  const r5 = await session.call('listUsbPorts', [stopped.id]);
  assert.deepEqual(r5, { ok: false, error: { code: 'invalid-state', message: 'Cannot list the USB ports of the VM while it is stopped.' } });
});

test('a VM spec may have a USB controller and devices; problems name the field; the machine config gets them', () => {
  const spec = flatSpec('g', { boot: { kind: 'flat', path: '/g.bin' } });
  assert.deepEqual(vmSpecProblems(spec), [], 'no usb field: as before');
  const withUsb = {
    ...spec,
    usb: { controller: 'xhci', devices: [{ kind: 'storage', path: '/s.img', port: 2 }, { kind: 'keyboard' }] },
  };
  assert.deepEqual(vmSpecProblems(withUsb), []);
  assert.deepEqual(parseVmSpec(withUsb).usb, {
    controller: 'xhci', devices: [{ kind: 'storage', path: '/s.img', readOnly: false, port: 2 }, { kind: 'keyboard' }],
  });
  assert.deepEqual(vmSpecProblems({ ...spec, usb: { controller: 'ehci', devices: [{ kind: 'storage', path: 'rel.img' }, { kind: 'mouse' }, { kind: 'tablet', port: 5 }, { kind: 'keyboard', port: 5 }] } }), [
    { field: 'usb.controller', message: 'USB controller must be "xhci" or "none".' },
    { field: 'usb.devices.0.path', message: 'USB device 1 image must be an absolute path (starting with /).' },
    { field: 'usb.devices.1', message: 'USB device 2 kind must be "storage", "keyboard", "tablet" or "serial".' },
    { field: 'usb.devices.3', message: 'USB device 4 is on port 5, as USB device 3 is.' },
  ]);
  assert.deepEqual(vmSpecProblems({ ...spec, usb: { controller: 'none', devices: [{ kind: 'keyboard' }] } }), [
    { field: 'usb.devices', message: 'USB devices need a USB controller.' },
  ]);
  assert.deepEqual(vmSpecProblems({ ...spec, usb: { controller: 'xhci', devices: [null, 'keyboard'] } }), [
    { field: 'usb.devices.0', message: 'USB device 1 must be an object with a "kind".' },
    { field: 'usb.devices.1', message: 'USB device 2 must be an object with a "kind".' },
  ]);
  assert.deepEqual(vmSpecProblems({ ...spec, usb: { controller: 'xhci', devices: [], extra: 1 } }), [
    { field: 'usb.extra', message: '"usb.extra" is not a setting Porthole knows.' },
  ]);
});

test('a spec\'s USB images are checked like its other files, and its USB section becomes the machine\'s', () => {
  const dir = fs.mkdtempSync(path.join(home.home, 'imgs-'));
  const guestFile = path.join(dir, 'g.bin');
  fs.writeFileSync(guestFile, 'x');
  const stick = path.join(dir, 's.img');
  const spec = flatSpec('g', {
    boot: { kind: 'flat', path: guestFile },
    usb: { controller: 'xhci', devices: [{ kind: 'storage', path: stick, readOnly: true }, { kind: 'tablet', port: 6 }] },
  });
  assert.deepEqual(specFileProblems(spec), [{ field: 'usb.devices.0.path', message: `USB device 1 image: ${stick} does not exist.` }]);
  fs.writeFileSync(stick, Buffer.alloc(4096));
  assert.deepEqual(specFileProblems(spec), []);
  assert.deepEqual(machineConfigOf(spec).usb, {
    controller: 'xhci', devices: [{ kind: 'storage', path: stick, readOnly: true }, { kind: 'tablet', port: 6 }],
  });
  assert.equal(machineConfigOf(flatSpec('g', { boot: { kind: 'flat', path: guestFile } })).usb, undefined);
});

test('the longest key input the API takes crosses the host channel as one record, and unpacks to the same events', () => {
  const channel = Channel.create(64 * 1024); // the VM host's channel size
  const inputs = [{ text: '~'.repeat(1024) }, Array.from({ length: 128 }, () => 'ctrl+alt+shift+meta+A+B+C+D')];
  for (const input of inputs) {
    const events = parseUsbKeys(input);
    assert.ok(events.length >= 2048);
    const payload = encodeUsbRequest({ id: 7, op: 'keys', events });
    assert.equal(channel.send(XHCI_CHANNEL_TARGET, USB_KIND.REQUEST, payload), true);
    let got: unknown = null;
    channel.receive((_t, _k, p) => { got = decodeUsbRequest(p); });
    assert.deepEqual(got, { id: 7, op: 'keys', events });
  }
  const bad = decodeUsbRequest(new TextEncoder().encode('{"id": 3, "op": "keys", "codes": [4, 999]}'));
  assert.deepEqual(bad, { id: 3, op: 'keys', events: undefined });
});

test('listUsbPathChoices: the VM process\'s choices at start, per device with its reason; refused while stopped', async () => {
  const { id, proc } = await runningVm();
  const call = session.call('listUsbPathChoices', [id]);
  await waitFor(() => usbMessages(proc).length === 1, 2000, () => 'the usb-paths message');
  const m = usbMessages(proc)[0];
  assert.deepEqual(m.request, { op: 'usb-paths' });
  proc.message({
    type: 'reply', id: m.id, ok: true, usbPaths: [
      { sysfsName: '1-1', choice: { path: 'controller', controller: '0000:00:05.0', reason: 'its controller 0000:00:05.0 (USB controller (xHCI)) is alone in IOMMU group 5, the host needs nothing on it, and 1-2 goes with it', alsoOnController: ['1-2'] } },
      { sysfsName: '2-1', choice: { path: 'emulated', controller: '0000:00:04.0', reason: 'the controller path was chosen but failed: no VFIO', alsoOnController: [] } },
    ],
  });
  assert.deepEqual(await call, {
    ok: true, value: [
      { hostDevice: '1-1', path: 'controller', controller: '0000:00:05.0', reason: 'its controller 0000:00:05.0 (USB controller (xHCI)) is alone in IOMMU group 5, the host needs nothing on it, and 1-2 goes with it', alsoOnController: ['1-2'] },
      { hostDevice: '2-1', path: 'emulated', controller: '0000:00:04.0', reason: 'the controller path was chosen but failed: no VFIO', alsoOnController: [] },
    ],
  });
  // A VM process that made no choice (no rules took a device at start) answers none.
  const none = session.call('listUsbPathChoices', [id]);
  await waitFor(() => usbMessages(proc).length === 2, 2000, () => 'the second usb-paths message');
  proc.message({ type: 'reply', id: usbMessages(proc)[1].id, ok: true, usbPaths: [] });
  assert.deepEqual(await none, { ok: true, value: [] });
  const stopped = manager.createVm(flatSpec('h', { boot: { kind: 'flat', path: path.join(home.home, 'g.bin') } }));
  assert.deepEqual(await session.call('listUsbPathChoices', [stopped.id]), {
    ok: false, error: { code: 'invalid-state', message: 'Cannot list the USB path choices of the VM while it is stopped.' },
  });
  assert.deepEqual(await session.call('listUsbPathChoices', ['nope']), { ok: false, error: { code: 'not-found', message: 'There is no VM with that id; it may have been deleted.' } });
});
