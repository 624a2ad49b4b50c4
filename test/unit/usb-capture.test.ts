// USB capture: the pcapng blocks and the usbmon header byte for byte (pcapng draft,
// Documentation/usb/usbmon.rst), then a capture of our xHCI driven at register level while it
// reads a USB stick, decoded by Debian's tshark (scripts/fixtures.sh installs it).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { openUsbStorage } from '../../main/vmm/devices/usb/storage/usb-storage';
import { CAPTURE_PREFIX_BYTES, UsbCaptureTap } from '../../main/vmm/devices/usb/xhci/capture';
import {
  enhancedPacketBlock, interfaceDescriptionBlock, LINKTYPE_USB_LINUX_MMAPPED, sectionHeaderBlock,
} from '../../main/vmm/host/pcapng';
import { describeSetup, parseCaptureRecord, PcapngCaptureFile, transferRecord } from '../../main/vmm/host/usb-capture';
import { decodeUsbmonHeader, encodeUsbmonHeader, type UsbmonPacket } from '../../main/vmm/shared/usbmon';
import { cbw, makeImage, parseCsw, read10, tempDir } from '../helpers/usb-storage';
import { DATA, DB, Driver, trb } from '../helpers/xhci-driver';

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

test('the Section Header Block: magic, version 1.0, unknown section length, shb_userappl', () => {
  assert.equal(hex(sectionHeaderBlock('Porthole')), [
    '0a0d0d0a', '2c000000', // type, total length 44
    '4d3c2b1a', '0100', '0000', 'ffffffffffffffff', // byte-order magic, 1.0, section length -1
    '0400', '0800', '506f7274686f6c65', // shb_userappl "Porthole"
    '0000', '0000', // opt_endofopt
    '2c000000',
  ].join(''));
  assert.equal(hex(sectionHeaderBlock()), '0a0d0d0a1c0000004d3c2b1a01000000ffffffffffffffff1c000000');
});

test('the Interface Description Block: LINKTYPE_USB_LINUX_MMAPPED (220), snap length, if_name, if_tsresol 6', () => {
  assert.equal(LINKTYPE_USB_LINUX_MMAPPED, 220);
  assert.equal(hex(interfaceDescriptionBlock(220, 4160, 'usb0')), [
    '01000000', '28000000', // type 1, total 40
    'dc00', '0000', '40100000', // linktype 220, reserved, snaplen 4160
    '0200', '0400', '75736230', // if_name "usb0"
    '0900', '0100', '06000000', // if_tsresol 6, padded
    '0000', '0000',
    '28000000',
  ].join(''));
});

test('the Enhanced Packet Block: interface, 64-bit microsecond timestamp in two halves, lengths, padded data', () => {
  const ts = 1700000000 * 1e6 + 123456; // 0x00060a24181e4ea40 µs... split high/low
  const block = enhancedPacketBlock(0, ts, Uint8Array.of(1, 2, 3, 4, 5), 9);
  const high = Math.floor(ts / 2 ** 32);
  const low = ts % 2 ** 32;
  const le = (n: number): string => Buffer.from(new Uint32Array([n]).buffer).toString('hex');
  assert.equal(hex(block), [
    '06000000', '28000000', // type 6, total 40
    '00000000', le(high), le(low), '05000000', '09000000', // interface 0, ts, captured 5, original 9
    '0102030405000000', // data padded to 8
    '28000000',
  ].join(''));
  // The original length never reads less than what was captured.
  assert.equal(new DataView(enhancedPacketBlock(0, 0, new Uint8Array(4), 0).buffer).getUint32(24, true), 4);
});

const basePacket: UsbmonPacket = {
  id: 0x1122334455, type: 'S', transferType: 'control', endpoint: 0, in: true, device: 3, bus: 1,
  setup: Uint8Array.of(0x80, 6, 0, 1, 0, 0, 18, 0), flagData: 0x3c, tsSec: 1700000000, tsUsec: 654321,
  status: -115, length: 18, captured: 0, interval: 0, startFrame: 0, xferFlags: 0x200, isoErrorCount: 0, isoDescriptors: 0,
};

test('the usbmon header of a control Submit (GET_DESCRIPTOR device): struct usbmon_packet, little-endian', () => {
  const out = new Uint8Array(64).fill(0xaa);
  encodeUsbmonHeader(basePacket, out);
  assert.equal(hex(out), [
    '5544332211000000', // id
    '53', '02', '80', '03', // 'S', control, EP 0 IN, device 3
    '0100', '00', '3c', // bus 1, flag_setup 0 (setup valid), flag_data '<'
    '00f1536500000000', 'f1fb0900', // ts_sec 1700000000, ts_usec 654321
    '8dffffff', '12000000', '00000000', // status -EINPROGRESS, length 18, len_cap 0
    '8006000100001200', // setup
    '00000000', '00000000', '00020000', '00000000', // interval, start_frame, xfer_flags URB_DIR_IN, ndesc
  ].join(''));
  assert.deepEqual(decodeUsbmonHeader(out), basePacket);
});

test('the usbmon header of a bulk Complete and of an isochronous one: no setup (flag_setup "-"), iso counts, ndesc', () => {
  const bulk: UsbmonPacket = { ...basePacket, type: 'C', transferType: 'bulk', endpoint: 1, setup: null, flagData: 0, status: -32, length: 13, captured: 13 };
  const out = new Uint8Array(64);
  encodeUsbmonHeader(bulk, out);
  assert.equal(hex(out.subarray(8, 16)), '4303810301002d00');
  assert.equal(hex(out.subarray(28, 48)), 'e0ffffff0d0000000d0000000000000000000000');
  assert.deepEqual(decodeUsbmonHeader(out), bulk);
  const iso: UsbmonPacket = { ...bulk, transferType: 'isochronous', in: false, endpoint: 2, isoDescriptors: 3, isoErrorCount: 1, xferFlags: 0 };
  encodeUsbmonHeader(iso, out);
  assert.equal(hex(out.subarray(8, 11)), '430002');
  assert.equal(hex(out.subarray(40, 48)), '0100000003000000');
  assert.equal(hex(out.subarray(60, 64)), '03000000');
  assert.deepEqual(decodeUsbmonHeader(out), iso);
  assert.equal(decodeUsbmonHeader(out.subarray(0, 63)), null, 'too short');
});

test('setup packets read as words for the transfer list', () => {
  assert.equal(describeSetup({ requestType: 0x80, request: 6, value: 0x0200, index: 0, length: 9 }), 'GET_DESCRIPTOR configuration 0 (9 bytes)');
  assert.equal(describeSetup({ requestType: 0, request: 9, value: 1, index: 0, length: 0 }), 'SET_CONFIGURATION 1 (0 bytes)');
  assert.equal(describeSetup({ requestType: 0xa1, request: 0xfe, value: 0, index: 0, length: 1 }), 'class Get Max LUN (1 bytes)');
  assert.equal(describeSetup({ requestType: 0xc0, request: 0x33, value: 0, index: 0, length: 2 }), 'vendor request 0x33 (2 bytes)');
});

const CC_SUCCESS = 1;

/** Bulk TD on `dci`: one Normal TRB with IOC and ISP. */
function bulk(d: Driver, slot: number, dci: number, addr: number, length: number): void {
  d.ring(slot, dci).push(addr, 0, length, trb(1, (1 << 5) | (1 << 2)));
  d.w32(DB + 4 * slot, dci);
}

test('a capture of our xHCI reading a USB stick (register level) is pcapng that tshark decodes as SCSI READ(10) in USB Mass Storage', () => {
  const dir = tempDir();
  const image = makeImage(dir, 1 << 20);
  const stick = openUsbStorage(image, { synchronous: true, speed: 'super' });
  const d = new Driver();
  d.start();
  d.hc.attach(1, stick);
  const records: Uint8Array[] = [];
  const tap = new UsbCaptureTap({ portMask: 1 << 1, snapLength: 4096 }, { send: (r) => { records.push(r); return true; } });
  d.hc.setCapture(tap);
  try {
    const slot = d.enumerate(1, 4);
    // What a host driver asks first: the descriptors (Wireshark learns the interface class from them).
    d.control(slot, [0x80, 6, 0x0100, 0, 18], DATA, true);
    d.control(slot, [0x80, 6, 0x0200, 0, 255], DATA, true);
    d.control(slot, [0, 9, 1, 0, 0], 0, false);
    assert.ok(d.events().every((e) => e.code === CC_SUCCESS || e.code === 13));
    assert.equal(d.configure(slot, [[3, 6], [4, 2]]).code, CC_SUCCESS); // EP1 IN bulk, EP2 OUT bulk
    // READ(10) of 4 blocks at LBA 8: CBW out, data in, CSW in.
    d.dma.write(DATA, cbw(0x1234, 2048, true, read10(8, 4)));
    bulk(d, slot, 4, DATA, 31);
    bulk(d, slot, 3, DATA + 0x1000, 2048);
    bulk(d, slot, 3, DATA + 0x2000, 13);
    const events = d.events();
    assert.equal(events.filter((e) => e.type === 32 && e.code === CC_SUCCESS).length, 3, 'CBW, data and CSW completed');
    const csw = new Uint8Array(13);
    d.dma.read(DATA + 0x2000, csw);
    assert.equal(parseCsw(csw).status, 0);
  } finally {
    d.hc.setCapture(null);
    stick.close();
  }
  // Every transfer gave a Submit and a Complete with the same id.
  const parsed = records.map((r) => parseCaptureRecord(r));
  assert.ok(parsed.every((p) => p !== null));
  const ok = parsed as NonNullable<(typeof parsed)[number]>[];
  assert.equal(ok.length, 12, '6 transfers (3 control, 3 bulk), each a Submit and a Complete');
  for (const s of ok.filter((p) => p.header.type === 'S')) {
    assert.equal(ok.filter((p) => p.header.id === s.header.id && p.header.type === 'C').length, 1);
  }
  const rows = ok.map((p) => transferRecord(p, () => 'usb-storage'));
  assert.equal(rows[0].setup?.text, 'GET_DESCRIPTOR device 0 (18 bytes)');
  assert.deepEqual(rows.slice(6).map((r) => [r.event, r.endpoint, r.direction, r.type, r.length, r.status]), [
    ['submit', 2, 'out', 'bulk', 31, 'submitted'], ['complete', 2, 'out', 'bulk', 31, 'ok'],
    ['submit', 1, 'in', 'bulk', 2048, 'submitted'], ['complete', 1, 'in', 'bulk', 2048, 'ok'],
    ['submit', 1, 'in', 'bulk', 13, 'submitted'], ['complete', 1, 'in', 'bulk', 13, 'ok'],
  ]);
  assert.equal(records[6][0], 1, 'the record names port 1');
  assert.equal(records[6].length, CAPTURE_PREFIX_BYTES + 64 + 31, 'the CBW travels with its Submit');

  const file = path.join(dir, 'stick.pcapng');
  const out = new PcapngCaptureFile(file, 4096);
  for (const p of ok) out.add(p);
  out.close();
  assert.equal(out.packets, 12);
  assert.equal(fs.statSync(file).size, out.bytes);

  // Debian's tshark: the READ(10) command inside USB Mass Storage, with its LBA and length.
  const fields = execFileSync('tshark', [
    '-r', file, '-Y', 'usbms.dCBWSignature && scsi_sbc.opcode == 0x28', '-T', 'fields', '-e', 'usb.transfer_type', '-e', 'usbms.dCBWTag',
    '-e', 'scsi_sbc.rdwr10.lba', '-e', 'scsi_sbc.rdwr10.xferlen',
  ], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim().split('\n');
  assert.ok(fields.length >= 1 && fields[0] !== '', `tshark found no READ(10) in USB Mass Storage:\n${execFileSync('tshark', ['-r', file], { encoding: 'utf8' })}`);
  assert.equal(fields.length, 1, 'one READ(10) command block');
  const [transferType, tag, lba, blocks] = fields[0].split('\t');
  assert.equal(Number(transferType), 3, 'bulk');
  assert.equal(Number(tag), 0x1234);
  assert.equal(Number(lba), 8);
  assert.equal(Number(blocks), 4);
  // And tshark reads every packet without a malformed one.
  const all = execFileSync('tshark', ['-r', file, '-Y', '_ws.malformed || _ws.expert.severity >= error'], { encoding: 'utf8' }).trim();
  assert.equal(all, '', 'no malformed packets');
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a transfer in flight when the capture starts still gets its Complete (a keyboard\'s waiting TD, then a key)', () => {
  const records: Uint8Array[] = [];
  const tap = new UsbCaptureTap({ portMask: 1 << 2, snapLength: 64 }, { send: (r) => { records.push(r); return true; } });
  const waiting = { type: 'interrupt', endpoint: 1, in: true, data: Uint8Array.of(0, 0, 4, 0, 0, 0, 0, 0), actualLength: 8, status: 'ok', setup: null } as unknown as Parameters<UsbCaptureTap['complete']>[2];
  // Submitted before the tap existed; its end is the key press the user is watching for.
  tap.complete(2, 3, waiting);
  // Another port's stray completion is not this capture's business.
  tap.complete(4, 5, waiting);
  assert.equal(records.length, 1);
  const p = parseCaptureRecord(records[0]);
  assert.ok(p !== null);
  assert.equal(p.header.type, 'C');
  assert.equal(p.header.length, 8);
  const row = transferRecord(p, () => 'usb-kbd');
  assert.deepEqual([row.event, row.endpoint, row.direction, row.type, row.status], ['complete', 1, 'in', 'interrupt', 'ok']);
  // Ids stay unique: the next transfer's Submit does not reuse the Complete's.
  const next = { ...waiting, data: new Uint8Array(8) } as typeof waiting;
  tap.submit(2, 3, next);
  assert.notEqual(parseCaptureRecord(records[1])?.header.id, p.header.id);
});
