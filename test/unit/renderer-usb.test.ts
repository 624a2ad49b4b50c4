// The USB panel's pure logic (renderer/src/usb.ts): labels for ports, speeds and VID:PID,
// the free ports offered for a device kind, and the device sent for what the form holds.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { UsbPortInfo, VmSpec } from '../../main/api/contract';
import { loadRendererModule } from '../helpers/renderer-module';

const usb = loadRendererModule<typeof import('../../renderer/src/usb')>('usb.ts');

const keyboard = {
  kind: 'keyboard', name: 'usb-keyboard', product: 'Porthole USB Keyboard', speed: 'full', vendorId: 0x1d6b, productId: 0x0101, path: null, readOnly: null,
} as const;
const stick = {
  kind: 'storage', name: 'usb-storage stick.img', product: 'USB Disk', speed: 'super', vendorId: 0x1209, productId: 0x0001, path: '/images/stick.img', readOnly: false,
} as const;

/** The xHCI's root hub: ports 1..4 USB 3, 5..8 USB 2, with devices on the given ports. */
function rootHub(devices: Record<number, UsbPortInfo['device']>): UsbPortInfo[] {
  return [1, 2, 3, 4, 5, 6, 7, 8].map((port) => ({ port, protocol: port <= 4 ? 'usb3' : 'usb2', device: devices[port] ?? null }));
}

test('VID:PID is four lowercase hex digits each, as lsusb prints it', () => {
  assert.equal(usb.formatVidPid(0x1209, 0x0001), '1209:0001');
  assert.equal(usb.formatVidPid(0x1d6b, 0x0101), '1d6b:0101');
  assert.equal(usb.formatVidPid(0, 0xffff), '0000:ffff');
  assert.equal(usb.formatVidPid(0xABCD, 0x12), 'abcd:0012');
});

test('speeds and port types read as users know them', () => {
  assert.equal(usb.usbSpeedLabel('low'), 'Low speed (1.5 Mbit/s)');
  assert.equal(usb.usbSpeedLabel('full'), 'Full speed (12 Mbit/s)');
  assert.equal(usb.usbSpeedLabel('high'), 'High speed (480 Mbit/s)');
  assert.equal(usb.usbSpeedLabel('super'), 'SuperSpeed (5 Gbit/s)');
  assert.equal(usb.protocolLabel('usb3'), 'USB 3');
  assert.equal(usb.protocolLabel('usb2'), 'USB 2');
  assert.equal(usb.portLabel({ port: 1, protocol: 'usb3' }), 'Port 1 (USB 3)');
  assert.equal(usb.portLabel({ port: 6, protocol: 'usb2' }), 'Port 6 (USB 2)');
});

test('the panel offers storage, keyboard, tablet and a serial port', () => {
  assert.deepEqual(usb.USB_KINDS.map((k) => k.kind), ['storage', 'keyboard', 'tablet', 'serial']);
  assert.equal(usb.usbKindName('storage'), 'USB stick');
});

test('ports in use are counted', () => {
  assert.equal(usb.portsInUseText(rootHub({})), '0 of 8 ports in use');
  assert.equal(usb.portsInUseText(rootHub({ 1: stick, 5: keyboard })), '2 of 8 ports in use');
  assert.equal(usb.portsInUseText([{ port: 1, protocol: 'usb2', device: null }]), '0 of 1 port in use');
});

test('free ports: storage gets USB 3 first, keyboards and tablets USB 2 first, and taken ports are left out', () => {
  const ports = rootHub({ 1: stick, 5: keyboard });
  assert.deepEqual(usb.freePortsFor('storage', ports).map((p) => p.port), [2, 3, 4, 6, 7, 8]);
  assert.deepEqual(usb.freePortsFor('keyboard', ports).map((p) => p.port), [6, 7, 8, 2, 3, 4]);
  assert.deepEqual(usb.freePortsFor('tablet', ports).map((p) => p.port), [6, 7, 8, 2, 3, 4]);
  const full = rootHub(Object.fromEntries([1, 2, 3, 4, 5, 6, 7, 8].map((n) => [n, n <= 4 ? stick : keyboard])));
  assert.deepEqual(usb.freePortsFor('storage', full), []);
});

test('the device sent for the form: a storage image must be given as an absolute path, and its flags go along', () => {
  const form = { kind: 'storage', path: '', readOnly: false, port: null } as const;
  assert.deepEqual(usb.attachRequest(form), { ok: false, problem: 'Choose a disk image for the USB stick.' });
  assert.deepEqual(usb.attachRequest({ ...form, path: '   ' }), { ok: false, problem: 'Choose a disk image for the USB stick.' });
  assert.deepEqual(usb.attachRequest({ ...form, path: 'stick.img' }),
    { ok: false, problem: 'The disk image must be an absolute path (starting with /).' });
  assert.deepEqual(usb.attachRequest({ ...form, path: ' /images/stick.img ' }),
    { ok: true, device: { kind: 'storage', path: '/images/stick.img', readOnly: false } });
  assert.deepEqual(usb.attachRequest({ ...form, path: '/images/stick.img', readOnly: true, port: 3 }),
    { ok: true, device: { kind: 'storage', path: '/images/stick.img', readOnly: true, port: 3 } });
  // The path of a kind that has none is not sent.
  assert.deepEqual(usb.attachRequest({ ...form, kind: 'keyboard', path: 'left over' }), { ok: true, device: { kind: 'keyboard' } });
  assert.deepEqual(usb.attachRequest({ ...form, kind: 'tablet', port: 7 }), { ok: true, device: { kind: 'tablet', port: 7 } });
});

test('a VM has a USB controller only with usb.controller "xhci"; its start devices read in a few words', () => {
  const spec: VmSpec = { name: 'x', memoryMiB: 16, cpus: 1, boot: { kind: 'flat', path: '/x' }, serial: ['ui', 'none', 'none', 'none'], debugExit: false };
  assert.equal(usb.hasUsbController(spec), false);
  assert.equal(usb.hasUsbController({ ...spec, usb: { controller: 'none', devices: [] } }), false);
  assert.equal(usb.hasUsbController({ ...spec, usb: { controller: 'xhci', devices: [] } }), true);
  assert.equal(usb.configuredDeviceText({ kind: 'keyboard' }), 'Keyboard');
  assert.equal(usb.configuredDeviceText({ kind: 'tablet', port: 6 }), 'Tablet on port 6');
  assert.equal(usb.configuredDeviceText({ kind: 'storage', path: '/images/stick.img' }), 'USB stick stick.img');
  assert.equal(usb.configuredDeviceText({ kind: 'storage', path: '/images/iso.img', readOnly: true, port: 2 }), 'USB stick iso.img (read-only) on port 2');
});
