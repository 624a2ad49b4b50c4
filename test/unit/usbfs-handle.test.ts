// Host USB devices that node-usb cannot see (main/host/usbfs-handle.ts): libusb's list, built on
// libudev's monitor, never learns of a device that appears on a host without udevd (the rig's
// L1), so passthrough opens /dev/bus/usb/BBB/DDD itself. Without a USB bus, the "device node"
// here is a file holding what usbfs's read() serves: the descriptors.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { nodeUsbHotplugSource, udevRunning } from '../../main/host/host-usb-watch';
import { openHostUsbHandle, parseUsbfsDescriptors, UsbfsHandle } from '../../main/host/usbfs-handle';
import { INFO } from '../helpers/usb-passthrough';

/** A device descriptor (VID:PID, 2 configurations), then config 1 (interfaces 0 and 1, 1 with two alt settings) and config 2 (interface 0). */
function descriptors(vid = 0x46f4, pid = 0x0001): Uint8Array {
  const device = [18, 1, 0x00, 0x02, 0, 0, 0, 64, vid & 0xff, vid >> 8, pid & 0xff, pid >> 8, 0, 1, 1, 2, 3, 2];
  const itf = (n: number, alt: number, eps: number) => [9, 4, n, alt, eps, 1, 2, 0, 0];
  const ep = (addr: number, attr: number) => [7, 5, addr, attr, 192, 0, 1];
  const body1 = [...itf(0, 0, 0), ...itf(1, 0, 0), ...itf(1, 1, 1), ...ep(0x01, 0x0d), 5, 0x24, 1, 0, 0];
  const body2 = [...itf(0, 0, 2), ...ep(0x81, 2), ...ep(0x02, 2)];
  const config = (value: number, body: number[]) => [9, 2, (9 + body.length) & 0xff, (9 + body.length) >> 8, 2, value, 0, 0x80, 50, ...body];
  return Uint8Array.from([...device, ...config(1, body1), ...config(2, body2)]);
}

function usbfsRoot(bytes: Uint8Array, bus = INFO.busNumber, address = INFO.deviceAddress): string {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-usbfs-'));
  const dir = path.join(root, String(bus).padStart(3, '0'));
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, String(address).padStart(3, '0')), bytes);
  return root;
}

test('usbfs descriptors: VID:PID and each configuration\'s interface numbers (alt settings folded)', () => {
  assert.deepEqual(parseUsbfsDescriptors(descriptors(0x1234, 0xabcd)), {
    vendorId: 0x1234, productId: 0xabcd,
    configurations: [{ value: 1, interfaces: [0, 1] }, { value: 2, interfaces: [0] }], isochronous: true,
  });
  assert.equal(parseUsbfsDescriptors(new Uint8Array(10)), null, 'too short');
  const bad = descriptors();
  bad[18 + 1] = 4; // not a configuration descriptor where one belongs
  assert.equal(parseUsbfsDescriptors(bad), null);
  // A wTotalLength past the end, and a zero-length descriptor inside: bounded, no loop.
  const cut = descriptors().slice(0, 40);
  assert.deepEqual(parseUsbfsDescriptors(cut)?.configurations[0], { value: 1, interfaces: [0] }, 'an interface descriptor cut short is left out');
  const zero = descriptors();
  zero[18 + 9] = 0;
  assert.deepEqual(parseUsbfsDescriptors(zero)?.configurations[0], { value: 1, interfaces: [] });
});

test('a device node-usb does not list is opened through usbfs: its configuration and interfaces come from the node', () => {
  // This host has no USB bus: node-usb lists nothing, as libusb lists nothing new without udevd.
  const handle = openHostUsbHandle(INFO, usbfsRoot(descriptors()));
  try {
    assert.ok(handle instanceof UsbfsHandle);
    assert.equal(handle.configurationValue(), 1);
    assert.deepEqual(handle.interfaceNumbers(), [0, 1]);
    // A file is no usbfs node: the ioctls fail with an errno, as a sentence, not a crash.
    assert.throws(() => handle.claimInterface(0), /USBDEVFS_CLAIMINTERFACE\(0\) on .*: ENOTTY/);
    let done: Error | null | undefined;
    handle.setInterface(1, 1, (e) => { done = e; });
    return new Promise<void>((resolve) => setImmediate(() => {
      assert.match(String(done?.message), /USBDEVFS_SETINTERFACE\(1, alt 1\)/);
      resolve();
    }));
  } finally {
    handle.close();
  }
});

test('usbfs open: another device at the address (reused) is "gone", and so is a missing node', () => {
  assert.throws(() => UsbfsHandle.open(INFO, usbfsRoot(descriptors(0x0403, 0x6001))), /Host USB device 1-1 is gone/);
  assert.throws(() => UsbfsHandle.open(INFO, usbfsRoot(descriptors(), 9, 9)), /Host USB device 1-1 \(46f4:0001\) is gone/);
});

test('node-usb hotplug is not used without udevd (libudev\'s monitor gets nothing): the list is polled instead', () => {
  assert.equal(udevRunning('/nonexistent/udev/control'), false);
  assert.equal(nodeUsbHotplugSource('/nonexistent/udev/control').start(() => undefined), null);
});

test('a device without isochronous endpoints opens through usbfs and offers its descriptor to the machine thread; one with them does not', () => {
  const bulkOnly = descriptors();
  bulkOnly[18 + 9 + 9 + 9 + 9 + 3] = 0x02; // config 1's one endpoint: bulk instead of isochronous
  assert.equal(parseUsbfsDescriptors(bulkOnly)?.isochronous, false);
  const root = usbfsRoot(bulkOnly);
  const handle = openHostUsbHandle(INFO, root);
  try {
    assert.ok(handle instanceof UsbfsHandle);
    assert.deepEqual(handle.usbfsNode?.(), { fd: (handle.usbfsNode?.() as { fd: number }).fd, path: `${root}/001/002` });
    assert.ok((handle.usbfsNode?.() as { fd: number }).fd >= 0);
  } finally {
    handle.close();
  }
  assert.equal(handle.usbfsNode(), null, 'closed: nothing to offer');
  const iso = UsbfsHandle.open(INFO, usbfsRoot(descriptors()));
  try {
    assert.equal(iso.usbfsNode(), null, 'isochronous URBs are reaped on the VM host: no second reaper');
  } finally {
    iso.close();
  }
});
