// native/usbdevfs.ts without a USB bus: the URB struct as Linux's uapi <linux/usbdevice_fs.h>
// lays it out on x86_64, the ioctl numbers, and what a URB request is refused for.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { statusOfUrb } from '../../main/host/host-usb-handle';
import {
  ISO_DESC_BYTES, packUrb, unpackUrb, URB_BYTES, URB_ISO_ASAP, URB_OFFSET, urbProblem, USBDEVFS, UsbdevfsDevice,
} from '../../native/usbdevfs';

test('struct usbdevfs_urb and usbdevfs_iso_packet_desc have the x86_64 uapi offsets and sizes', () => {
  // type u8 @0, endpoint u8 @1, status int @4, flags uint @8, buffer ptr @16 (8-aligned),
  // buffer_length @24, actual_length @28, start_frame @32, number_of_packets @36,
  // error_count @40, signr @44, usercontext ptr @48, iso_frame_desc[] @56; a desc is 3 uints.
  assert.deepEqual({ ...URB_OFFSET }, {
    type: 0, endpoint: 1, status: 4, flags: 8, buffer: 16, bufferLength: 24, actualLength: 28, startFrame: 32,
    numberOfPackets: 36, errorCount: 40, signr: 44, usercontext: 48, isoFrameDesc: 56,
  });
  assert.equal(URB_BYTES, 56);
  assert.equal(ISO_DESC_BYTES, 12);
});

test('an iso URB packs type, endpoint, ISO_ASAP, buffer address, length and each packet descriptor', () => {
  const urb = new Uint8Array(URB_BYTES + 3 * ISO_DESC_BYTES).fill(0xee);
  packUrb(urb, { type: 'iso', endpoint: 0x01, data: new Uint8Array(192 * 2 + 100), packetLengths: [192, 192, 100] }, 0x7f12_3456_7890n);
  const v = new DataView(urb.buffer);
  assert.equal(urb[0], 0, 'USBDEVFS_URB_TYPE_ISO');
  assert.equal(urb[1], 0x01);
  assert.deepEqual([urb[2], urb[3]], [0, 0], 'padding cleared');
  assert.equal(v.getInt32(4, true), 0);
  assert.equal(v.getUint32(8, true), URB_ISO_ASAP);
  assert.equal(v.getUint32(12, true), 0, 'padding before the pointer');
  assert.equal(v.getBigUint64(16, true), 0x7f12_3456_7890n);
  assert.equal(v.getInt32(24, true), 484);
  assert.equal(v.getInt32(36, true), 3);
  assert.equal(v.getBigUint64(48, true), 0n);
  assert.deepEqual([0, 1, 2].map((i) => v.getUint32(56 + 12 * i, true)), [192, 192, 100]);
  assert.deepEqual([0, 1, 2].map((i) => v.getUint32(60 + 12 * i, true)), [0, 0, 0]);
  // What the kernel writes back on reap.
  v.setInt32(4, -18, true); // EXDEV on the whole URB
  v.setInt32(28, 292, true);
  v.setUint32(60, 192, true);
  v.setUint32(72, 100, true);
  v.setInt32(76, -18, true);
  v.setUint32(84, 0, true);
  assert.deepEqual(unpackUrb(urb, 3), {
    status: -18, actual: 292, packets: [{ actual: 192, status: 0 }, { actual: 100, status: -18 }, { actual: 0, status: 0 }],
  });
  const bulk = new Uint8Array(URB_BYTES);
  packUrb(bulk, { type: 'bulk', endpoint: 0x82, data: new Uint8Array(512) }, 0x1000n);
  assert.deepEqual([bulk[0], bulk[1], new DataView(bulk.buffer).getInt32(36, true), new DataView(bulk.buffer).getUint32(8, true)], [3, 0x82, 0, 0]);
});

test('ioctl numbers are the _IOC encodings of <linux/usbdevice_fs.h>', () => {
  assert.equal(USBDEVFS.SUBMITURB, 0x8038550a);
  assert.equal(USBDEVFS.DISCARDURB, 0x550b);
  assert.equal(USBDEVFS.REAPURB, 0x4008550c);
  assert.equal(USBDEVFS.REAPURBNDELAY, 0x4008550d);
  assert.equal(USBDEVFS.CLAIMINTERFACE, 0x8004550f);
  assert.equal(USBDEVFS.RELEASEINTERFACE, 0x80045510);
  assert.equal(USBDEVFS.SETINTERFACE, 0x80085504);
  assert.equal(USBDEVFS.SETCONFIGURATION, 0x80045505);
  assert.equal(USBDEVFS.GETDRIVER, 0x41045508);
  assert.equal(USBDEVFS.RESET, 0x5514);
  assert.equal(USBDEVFS.IOCTL, 0xc0105512);
  assert.equal(USBDEVFS.CLEAR_HALT, 0x80045515);
  assert.equal(USBDEVFS.DISCONNECT, 0x5516);
  assert.equal(USBDEVFS.CONNECT, 0x5517);
});

test('bad URB requests are refused with a sentence; usbfs statuses map to ours', () => {
  assert.equal(urbProblem({ type: 'iso', endpoint: 1, data: new Uint8Array(10), packetLengths: [10] }), null);
  assert.match(urbProblem({ type: 'iso', endpoint: 1, data: new Uint8Array(10) }) ?? '', /1 to 128 packets/);
  assert.match(urbProblem({ type: 'iso', endpoint: 1, data: new Uint8Array(10), packetLengths: [4, 4] }) ?? '', /add up to 8, not the buffer's 10/);
  assert.match(urbProblem({ type: 'iso', endpoint: 1, data: new Uint8Array(0x10000), packetLengths: [0x10000] }) ?? '', /out of range/);
  assert.match(urbProblem({ type: 'bulk', endpoint: 0x100, data: new Uint8Array(1) }) ?? '', /not an endpoint/);
  assert.deepEqual([0, -2, -104, -32, -75, -19, -108, -18, -71].map(statusOfUrb),
    ['ok', 'cancelled', 'cancelled', 'stall', 'babble', 'no-device', 'no-device', 'error', 'error']);
});

test('opening a usbfs node that does not exist names the call and the errno', () => {
  assert.throws(() => UsbdevfsDevice.open(1, 2, '/nonexistent/usb'), /open\(\/nonexistent\/usb\/001\/002\): ENOENT/);
});

test('ioctls on a node that is not usbfs fail naming the ioctl, the node and the errno; nothing stays in flight', async () => {
  const fs = await import('node:fs');
  const os = await import('node:os');
  const path = await import('node:path');
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-usbfs-'));
  fs.mkdirSync(path.join(root, '003'));
  fs.writeFileSync(path.join(root, '003', '007'), '');
  const dev = UsbdevfsDevice.open(3, 7, root);
  try {
    assert.throws(() => dev.claimInterface(1), /^NativeError: USBDEVFS_CLAIMINTERFACE\(1\) on .*\/003\/007: ENOTTY/);
    assert.throws(() => dev.setInterface(1, 2), /USBDEVFS_SETINTERFACE\(1, alt 2\) on .*: ENOTTY/);
    assert.throws(() => dev.disconnectDriver(0), /USBDEVFS_IOCTL\(USBDEVFS_DISCONNECT, interface 0\) on .*: ENOTTY/);
    let called = 0;
    assert.throws(() => dev.submit({ type: 'iso', endpoint: 1, data: new Uint8Array(8), packetLengths: [8] }, () => { called++; }),
      /USBDEVFS_SUBMITURB\(type iso, endpoint 0x1\) on .*: ENOTTY/);
    assert.throws(() => dev.submit({ type: 'iso', endpoint: 1, data: new Uint8Array(8), packetLengths: [4] }, () => { called++; }),
      /add up to 4/);
    assert.equal(dev.urbsInFlight, 0);
    assert.equal(called, 0);
  } finally {
    dev.close();
  }
  assert.throws(() => dev.submit({ type: 'bulk', endpoint: 1, data: new Uint8Array(1) }, () => undefined), /is closed/);
});

test('control requests find the interface usbfs checks: interface and endpoint recipients, not vendor or device ones', async () => {
  const { controlRecipientInterface } = await import('../../main/host/host-usb-handle');
  // usb-audio's shape: interface 0 audio control, interface 1 streaming with EP1 OUT in alt 1.
  const itfs = [[{ bInterfaceNumber: 0, endpoints: [] }], [{ bInterfaceNumber: 1, endpoints: [] }, { bInterfaceNumber: 1, endpoints: [{ bEndpointAddress: 0x01 }] }]];
  const setup = (type: number, index: number) => Uint8Array.of(type, 1, 0, 1, index, 0, 3, 0);
  assert.equal(controlRecipientInterface(setup(0x22, 0x01), itfs), 1, 'SET_CUR sampling frequency to EP1');
  assert.equal(controlRecipientInterface(setup(0x21, 0x01), itfs), 1);
  assert.equal(controlRecipientInterface(setup(0xa1, 0x00), itfs), 0);
  assert.equal(controlRecipientInterface(setup(0x22, 0x81), itfs), -1, 'no such endpoint');
  assert.equal(controlRecipientInterface(setup(0x02, 0x00), itfs), -1, 'endpoint 0');
  assert.equal(controlRecipientInterface(setup(0x41, 0x01), itfs), -1, 'vendor');
  assert.equal(controlRecipientInterface(setup(0x80, 0x00), itfs), -1, 'device');
});
