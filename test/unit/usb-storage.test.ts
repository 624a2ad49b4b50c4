// The USB stick (Bulk-Only Transport + SCSI) over a real image file in a temporary folder,
// driven through the UsbDevice interface the way a host controller and Linux's usb-storage
// driver drive it.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { ImageError, RawImageFile, type BlockBackend } from '../../main/vmm/devices/usb/storage/block-backend';
import { BULK_IN, BULK_OUT, UsbStorage, openUsbStorage, serialFrom } from '../../main/vmm/devices/usb/storage/usb-storage';
import { getDescriptor, RecordingPort, request, splitDescriptors } from '../helpers/usb';
import {
  DeferredBackend, bulkIn, bulkOut, cbw, clearHalt, endpointHalted, imageBytes, makeImage, parseCsw, read10, read16,
  resetRecovery, run, scsi, senseOf, tempDir, write10, write16,
} from '../helpers/usb-storage';
import { enumerate } from '../helpers/usb';

const dir = tempDir();
after(() => fs.rmSync(dir, { recursive: true, force: true }));

const MIB = 1 << 20;
let imageCount = 0;

/** A plugged-in, configured stick over a fresh 1 MiB image (2048 blocks). */
function stick(options: { readOnly?: boolean; size?: number; speed?: 'full' | 'high' | 'super' } = {}) {
  const file = makeImage(dir, options.size ?? MIB, `image-${imageCount++}.img`);
  const device = openUsbStorage(file, { readOnly: options.readOnly, speed: options.speed });
  const port = new RecordingPort();
  device.attach(port);
  enumerate(device);
  return { file, device, port, close: () => { device.detach(); device.close(); } };
}

function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

test('enumeration: a high-speed mass storage interface 08/06/50 with 512-byte bulk IN and OUT, GET MAX LUN 0', () => {
  const s = stick();
  try {
    const dev = getDescriptor(s.device, 1, 0, 18).data;
    assert.equal(dev[4], 0, 'class at interface level');
    assert.equal(dev[8] | (dev[9] << 8), s.device.vendorId);
    const config = getDescriptor(s.device, 2, 0, 255).data;
    const parts = splitDescriptors(config);
    const itf = parts.find((d) => d[1] === 4)!;
    assert.deepEqual([itf[4], itf[5], itf[6], itf[7]], [2, 0x08, 0x06, 0x50]);
    const eps = parts.filter((d) => d[1] === 5);
    assert.deepEqual(eps.map((e) => [e[2], e[3], e[4] | (e[5] << 8)]), [[BULK_IN, 2, 512], [BULK_OUT, 2, 512]]);
    // The serial string: BOT 4.1.1 wants at least 12 hex digits.
    const serialIndex = dev[16];
    const serial = getDescriptor(s.device, 3, serialIndex, 255, 0x0409).data;
    const text = Buffer.from(serial.subarray(2)).toString('utf16le');
    assert.match(text, /^[0-9A-F]{12,}$/);
    assert.equal(text, serialFrom(path.resolve(s.file)));
    const maxLun = request(s.device, 0xa1, 0xfe, 0, 0, 1);
    assert.equal(maxLun.status, 'ok');
    assert.deepEqual([...maxLun.data], [0]);
    assert.equal(request(s.device, 0xa1, 0xfe, 0, 1, 1).status, 'stall', 'GET MAX LUN to another interface');
  } finally {
    s.close();
  }
});

test('enumeration at super speed: 1024-byte bulk packets with SuperSpeed companions (burst 15); full speed: 64', () => {
  const s = stick({ speed: 'super' });
  try {
    assert.equal(s.device.speed, 'super');
    const parts = splitDescriptors(getDescriptor(s.device, 2, 0, 255).data);
    const eps = parts.filter((d) => d[1] === 5);
    assert.deepEqual(eps.map((e) => e[4] | (e[5] << 8)), [1024, 1024]);
    const companions = parts.filter((d) => d[1] === 0x30);
    assert.equal(companions.length, 2);
    assert.deepEqual(companions.map((c) => c[2]), [15, 15]);
  } finally {
    s.close();
  }
  const f = stick({ speed: 'full' });
  try {
    const eps = splitDescriptors(getDescriptor(f.device, 2, 0, 255).data).filter((d) => d[1] === 5);
    assert.deepEqual(eps.map((e) => e[4] | (e[5] << 8)), [64, 64]);
  } finally {
    f.close();
  }
});

test('INQUIRY: standard data, allocation length truncation, VPD pages 00, 80 and 83, and a bad page', async () => {
  const s = stick();
  try {
    const std = await scsi(s.device, [0x12, 0, 0, 0, 36, 0], { dirIn: true, length: 36 });
    assert.equal(std.csw.status, 0);
    assert.equal(std.csw.residue, 0);
    assert.equal(std.data.length, 36);
    assert.equal(std.data[0], 0x00, 'direct-access block device');
    assert.equal(std.data[1], 0x80, 'removable');
    assert.equal(std.data[4], 31);
    assert.equal(Buffer.from(std.data.subarray(8, 16)).toString('latin1'), 'Porthole');
    assert.equal(Buffer.from(std.data.subarray(16, 32)).toString('latin1'), 'USB Disk        ');

    const short = await scsi(s.device, [0x12, 0, 0, 0, 5, 0], { dirIn: true, length: 5 });
    assert.equal(short.csw.status, 0);
    assert.deepEqual([...short.data], [...std.data.subarray(0, 5)]);

    const pages = await scsi(s.device, [0x12, 1, 0x00, 0, 255, 0], { dirIn: true, length: 255 });
    assert.equal(pages.csw.status, 0);
    assert.deepEqual([...pages.data.subarray(0, 7)], [0, 0, 0, 3, 0x00, 0x80, 0x83]);
    assert.equal(pages.csw.residue, 255 - 7, 'residue: the host asked more than the page holds');

    const serialPage = await scsi(s.device, [0x12, 1, 0x80, 0, 255, 0], { dirIn: true, length: 255 });
    const serial = serialFrom(path.resolve(s.file));
    assert.equal(serialPage.data[1], 0x80);
    assert.equal(serialPage.data[3], serial.length);
    assert.equal(Buffer.from(serialPage.data.subarray(4, 4 + serial.length)).toString('latin1'), serial);

    const idPage = await scsi(s.device, [0x12, 1, 0x83, 0, 255, 0], { dirIn: true, length: 255 });
    assert.equal(idPage.data[1], 0x83);
    const pageLength = (idPage.data[2] << 8) | idPage.data[3];
    assert.equal(pageLength, 4 + 8 + serial.length);
    assert.equal(idPage.data[4] & 0x0f, 2, 'ASCII');
    assert.equal(idPage.data[5] & 0x0f, 1, 'T10 vendor ID designator');
    assert.equal(Buffer.from(idPage.data.subarray(8, 8 + 8 + serial.length)).toString('latin1'), `Porthole${serial}`);

    const bad = await scsi(s.device, [0x12, 1, 0xb7, 0, 255, 0], { dirIn: true, length: 255 });
    assert.equal(bad.csw.status, 1);
    assert.equal(bad.csw.residue, 255);
    assert.deepEqual(await senseOf(s.device), [0x5, 0x24, 0x00], 'ILLEGAL REQUEST, INVALID FIELD IN CDB');
    const pageWithoutEvpd = await scsi(s.device, [0x12, 0, 0x80, 0, 36, 0], { dirIn: true, length: 36 });
    assert.equal(pageWithoutEvpd.csw.status, 1);
  } finally {
    s.close();
  }
});

test('READ CAPACITY (10) and (16), READ FORMAT CAPACITIES and REPORT LUNS give the image size in 512-byte blocks', async () => {
  const s = stick({ size: 3 * MIB });
  try {
    const ten = await scsi(s.device, [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], { dirIn: true, length: 8 });
    assert.equal(ten.csw.status, 0);
    const v10 = new DataView(ten.data.buffer);
    assert.equal(v10.getUint32(0), 3 * 2048 - 1, 'last LBA');
    assert.equal(v10.getUint32(4), 512);

    const sixteen = await scsi(s.device, [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], { dirIn: true, length: 32 });
    assert.equal(sixteen.csw.status, 0);
    const v16 = new DataView(sixteen.data.buffer);
    assert.equal(v16.getBigUint64(0), BigInt(3 * 2048 - 1));
    assert.equal(v16.getUint32(8), 512);

    const otherAction = await scsi(s.device, [0x9e, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], { dirIn: true, length: 32 });
    assert.equal(otherAction.csw.status, 1);
    assert.deepEqual(await senseOf(s.device), [0x5, 0x24, 0]);

    const formats = await scsi(s.device, [0x23, 0, 0, 0, 0, 0, 0, 0, 252, 0], { dirIn: true, length: 252 });
    assert.equal(formats.csw.status, 0);
    assert.equal(formats.csw.residue, 252 - 12);
    const vf = new DataView(formats.data.buffer);
    assert.equal(vf.getUint32(4), 3 * 2048);
    assert.equal(formats.data[8], 0x02, 'formatted medium');
    assert.equal(vf.getUint32(8) & 0xffffff, 512);

    const luns = await scsi(s.device, [0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], { dirIn: true, length: 16 });
    assert.equal(luns.csw.status, 0);
    assert.deepEqual([...luns.data], [0, 0, 0, 8, ...new Array(12).fill(0)]);
  } finally {
    s.close();
  }
});

test('WRITE then READ (6, 10 and 16) move a pattern through CBW, data split over several transfers, and CSW', async () => {
  const s = stick({ size: 4 * MIB });
  try {
    const data = pattern(8 * 512, 1);
    const w = await scsi(s.device, write10(100, 8), { length: data.length, out: data, chunks: [512, 1000, 31, 4096] });
    assert.deepEqual(w.csw, { signature: 0x53425355, tag: w.csw.tag, residue: 0, status: 0 });
    const r = await scsi(s.device, read10(100, 8), { dirIn: true, length: data.length, chunks: [1536, 100, 2460] });
    assert.equal(r.csw.status, 0);
    assert.equal(r.csw.residue, 0);
    assert.deepEqual(r.data, data);

    // 16-byte CDBs and more than the 1 MiB read-ahead, in one transfer and in many.
    const big = pattern(3 * MIB / 2, 2);
    const w16 = await scsi(s.device, write16(512, big.length / 512), { length: big.length, out: big, chunks: [65536] });
    assert.equal(w16.csw.status, 0);
    const r16 = await scsi(s.device, read16(512, big.length / 512), { dirIn: true, length: big.length });
    assert.equal(r16.csw.status, 0);
    assert.deepEqual(r16.data, big);
    const chunked = await scsi(s.device, read16(512, big.length / 512), { dirIn: true, length: big.length, chunks: [65536, 512, 300000] });
    assert.equal(chunked.csw.status, 0);
    assert.deepEqual(chunked.data, big);

    // 6-byte CDBs; a transfer length of 0 means 256 blocks there.
    const small = pattern(1024, 3);
    assert.equal((await scsi(s.device, [0x0a, 0, 0, 200, 2, 0], { length: 1024, out: small })).csw.status, 0);
    const r6 = await scsi(s.device, [0x08, 0, 0, 200, 2, 0], { dirIn: true, length: 1024 });
    assert.deepEqual(r6.data, small);
    const r256 = await scsi(s.device, [0x08, 0, 0, 0, 0, 0], { dirIn: true, length: 256 * 512 });
    assert.equal(r256.csw.status, 0);
    assert.equal(r256.data.length, 256 * 512);
    assert.deepEqual(r256.data.subarray(100 * 512, 101 * 512), data.subarray(0, 512));

    // Untouched blocks still hold the image's own bytes.
    const before = await scsi(s.device, read10(99, 1), { dirIn: true, length: 512 });
    assert.deepEqual(before.data, imageBytes(MIB).subarray(99 * 512, 100 * 512));
  } finally {
    s.close();
  }
});

test('WRITE then SYNCHRONIZE CACHE (10 and 16): the bytes are in the image file on disk', async () => {
  const s = stick();
  try {
    const data = pattern(4 * 512, 3);
    assert.equal((await scsi(s.device, write10(2040, 4), { length: data.length, out: data })).csw.status, 0);
    const sync = await scsi(s.device, [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert.equal(sync.csw.status, 0);
    const onDisk = fs.readFileSync(s.file);
    assert.deepEqual(new Uint8Array(onDisk.subarray(2040 * 512, 2044 * 512)), data);
    const sync16 = await scsi(s.device, [0x91, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert.equal(sync16.csw.status, 0);
    const outOfRange = await scsi(s.device, [0x35, 0, 0, 0, 0x10, 0, 0, 0, 1, 0]);
    assert.equal(outOfRange.csw.status, 1);
    assert.deepEqual(await senseOf(s.device), [0x5, 0x21, 0]);
  } finally {
    s.close();
  }
});

test('read-only: WRITE fails with DATA PROTECT / WRITE PROTECTED, the file is unchanged, MODE SENSE shows WP', async () => {
  const s = stick({ readOnly: true });
  try {
    const data = pattern(512, 4);
    const w = await scsi(s.device, write10(0, 1), { length: 512, out: data });
    assert.equal(w.csw.status, 1);
    assert.equal(w.csw.residue, 512);
    assert.deepEqual(await senseOf(s.device), [0x7, 0x27, 0x00]);
    const w16 = await scsi(s.device, write16(0, 1), { length: 512, out: data });
    assert.equal(w16.csw.status, 1);
    assert.deepEqual(new Uint8Array(fs.readFileSync(s.file)), imageBytes(MIB));

    const six = await scsi(s.device, [0x1a, 0, 0x3f, 0, 192, 0], { dirIn: true, length: 192 });
    assert.equal(six.csw.status, 0);
    assert.equal(six.data[2] & 0x80, 0x80, 'WP in MODE SENSE (6)');
    const ten = await scsi(s.device, [0x5a, 0, 0x08, 0, 0, 0, 0, 0, 64, 0], { dirIn: true, length: 64 });
    assert.equal(ten.csw.status, 0);
    assert.equal(ten.data[3] & 0x80, 0x80, 'WP in MODE SENSE (10)');
    assert.equal((await scsi(s.device, [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0])).csw.status, 0, 'SYNCHRONIZE CACHE is fine');
    const read = await scsi(s.device, read10(5, 1), { dirIn: true, length: 512 });
    assert.deepEqual(read.data, imageBytes(MIB).subarray(5 * 512, 6 * 512));
  } finally {
    s.close();
  }
});

test('MODE SENSE: caching page with WCE (Windows asks for it), all pages, changeable values, saved values refused', async () => {
  const s = stick();
  try {
    const caching = await scsi(s.device, [0x1a, 0x08, 0x08, 0, 192, 0], { dirIn: true, length: 192 });
    assert.equal(caching.csw.status, 0);
    assert.equal(caching.data[0], 3 + 20, 'mode data length');
    assert.equal(caching.data[2] & 0x80, 0, 'not write protected');
    assert.equal(caching.data[3], 0, 'no block descriptors');
    assert.deepEqual([caching.data[4], caching.data[5]], [0x08, 18]);
    assert.equal(caching.data[6] & 0x04, 0x04, 'WCE');
    assert.equal(caching.csw.residue, 192 - 24);

    const all = await scsi(s.device, [0x5a, 0, 0x3f, 0, 0, 0, 0, 0x10, 0, 0], { dirIn: true, length: 4096 });
    assert.equal(all.csw.status, 0);
    const total = ((all.data[0] << 8) | all.data[1]) + 2;
    assert.equal(total, 8 + 20 + 12);
    assert.deepEqual([all.data[8], all.data[28]], [0x08, 0x0a]);

    const changeable = await scsi(s.device, [0x1a, 0, 0x48, 0, 255, 0], { dirIn: true, length: 255 });
    assert.equal(changeable.csw.status, 0);
    assert.equal(changeable.data[6], 0, 'nothing can be changed');

    const saved = await scsi(s.device, [0x1a, 0, 0xc8, 0, 255, 0], { dirIn: true, length: 255 });
    assert.equal(saved.csw.status, 1);
    assert.deepEqual(await senseOf(s.device), [0x5, 0x39, 0]);
    const unknownPage = await scsi(s.device, [0x1a, 0, 0x19, 0, 255, 0], { dirIn: true, length: 255 });
    assert.equal(unknownPage.csw.status, 1);
    assert.deepEqual(await senseOf(s.device), [0x5, 0x24, 0]);
  } finally {
    s.close();
  }
});

test('an LBA out of range fails with LOGICAL BLOCK ADDRESS OUT OF RANGE and no data', async () => {
  const s = stick();
  try {
    const r = await scsi(s.device, read10(2047, 2), { dirIn: true, length: 1024 });
    assert.equal(r.csw.status, 1);
    assert.equal(r.csw.residue, 1024, 'nothing but padding was sent');
    assert.deepEqual(r.data, new Uint8Array(1024));
    assert.deepEqual(await senseOf(s.device), [0x5, 0x21, 0x00]);
    const last = await scsi(s.device, read10(2047, 1), { dirIn: true, length: 512 });
    assert.equal(last.csw.status, 0, 'the last block itself is fine');
    const huge = await scsi(s.device, read16(0x8000000000000000n, 1), { dirIn: true, length: 512 });
    assert.equal(huge.csw.status, 1);
    assert.deepEqual(await senseOf(s.device), [0x5, 0x21, 0x00]);
    const write = await scsi(s.device, write16(2048, 1), { length: 512 });
    assert.equal(write.csw.status, 1);
    assert.equal(write.csw.residue, 512);
    assert.deepEqual(await senseOf(s.device), [0x5, 0x21, 0x00]);
    const ok = await senseOf(s.device);
    assert.deepEqual(ok, [0, 0, 0], 'REQUEST SENSE clears the sense data');
  } finally {
    s.close();
  }
});

test('an unknown opcode fails with ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE; TUR, START STOP, PREVENT ALLOW succeed', async () => {
  const s = stick();
  try {
    for (const op of [0xff, 0x04, 0x55, 0xa8]) {
      const r = await scsi(s.device, [op, 0, 0, 0, 0, 0]);
      assert.equal(r.csw.status, 1, `opcode ${op.toString(16)}`);
      assert.deepEqual(await senseOf(s.device), [0x5, 0x20, 0x00]);
    }
    assert.equal((await scsi(s.device, [0x00, 0, 0, 0, 0, 0])).csw.status, 0);
    assert.equal((await scsi(s.device, [0x1e, 0, 0, 0, 1, 0])).csw.status, 0);
    assert.equal(s.device.removalPrevented, true);
    assert.equal((await scsi(s.device, [0x1e, 0, 0, 0, 0, 0])).csw.status, 0);
    assert.equal(s.device.removalPrevented, false);
    assert.equal((await scsi(s.device, [0x1b, 0, 0, 0, 2, 0])).csw.status, 0, 'eject is accepted');
    assert.equal((await scsi(s.device, read10(0, 1), { dirIn: true, length: 512 })).csw.status, 0, 'and the medium stays');
    const descriptorSense = await scsi(s.device, [0x03, 1, 0, 0, 252, 0], { dirIn: true, length: 252 });
    assert.equal(descriptorSense.csw.status, 1, 'descriptor-format sense is not offered');
    // Another LUN: INQUIRY says nobody is there, other commands fail.
    const inq = await scsi(s.device, [0x12, 0, 0, 0, 36, 0], { dirIn: true, length: 36, lun: 1 });
    assert.equal(inq.csw.status, 0);
    assert.equal(inq.data[0], 0x7f);
    const tur = await scsi(s.device, [0x00, 0, 0, 0, 0, 0], { lun: 1 });
    assert.equal(tur.csw.status, 1);
    assert.deepEqual(await senseOf(s.device), [0x5, 0x25, 0]);
  } finally {
    s.close();
  }
});

test('an invalid CBW stalls both bulk endpoints until reset recovery; CLEAR_FEATURE alone does not lift it', async () => {
  const s = stick();
  try {
    for (const bad of [cbw(1, 0, false, [0]).subarray(0, 30), (() => { const b = cbw(1, 0, false, [0]); b[0] ^= 1; return b; })(),
      (() => { const b = cbw(1, 0, false, [0]); b[14] = 0; return b; })(), new Uint8Array(512)]) {
      const t = await run(s.device, bulkOut(bad));
      assert.equal(t.status, 'stall');
      assert.equal((await run(s.device, bulkIn(13))).status, 'stall', 'bulk IN halts too');
      assert.equal(endpointHalted(s.device, BULK_IN), true);
      assert.equal(endpointHalted(s.device, BULK_OUT), true);
      assert.equal(clearHalt(s.device, BULK_OUT), 'ok');
      assert.equal(clearHalt(s.device, BULK_IN), 'ok');
      assert.equal(endpointHalted(s.device, BULK_OUT), true, 'the halt stays until a mass storage reset');
      assert.equal((await run(s.device, bulkOut(cbw(2, 0, false, [0, 0, 0, 0, 0, 0])))).status, 'stall');
      resetRecovery(s.device);
      assert.equal(endpointHalted(s.device, BULK_OUT), false);
      assert.equal(endpointHalted(s.device, BULK_IN), false);
      const after = await scsi(s.device, [0x00, 0, 0, 0, 0, 0]);
      assert.equal(after.csw.status, 0);
    }
  } finally {
    s.close();
  }
});

test('the thirteen cases: padding and residue, phase errors with STALL where the spec says', async () => {
  const s = stick();
  try {
    // Case 4 (Hi > Dn): zero padding, residue = host length.
    const c4 = await scsi(s.device, [0x00, 0, 0, 0, 0, 0], { dirIn: true, length: 512 });
    assert.deepEqual([c4.csw.status, c4.csw.residue, c4.data.length, c4.dataStalled], [0, 512, 512, false]);
    // Case 5 (Hi > Di): a short read; residue counts what was not sent.
    const c5 = await scsi(s.device, [0x12, 0, 0, 0, 36, 0], { dirIn: true, length: 100, chunks: [64] });
    assert.deepEqual([c5.csw.status, c5.csw.residue], [0, 64]);
    const c5r = await scsi(s.device, read10(1, 1), { dirIn: true, length: 2048 });
    assert.deepEqual([c5r.csw.status, c5r.csw.residue], [0, 1536]);
    assert.deepEqual(c5r.data.subarray(0, 512), imageBytes(MIB).subarray(512, 1024));
    // Case 7 (Hi < Di): the host's length, then phase error.
    const c7 = await scsi(s.device, read10(0, 2), { dirIn: true, length: 512 });
    assert.equal(c7.csw.status, 2);
    assert.deepEqual(c7.data, imageBytes(MIB).subarray(0, 512));
    resetRecovery(s.device);
    // Case 8 (Hi <> Do): bulk IN stalls, then phase error.
    const c8 = await scsi(s.device, write10(0, 1), { dirIn: true, length: 512 });
    assert.deepEqual([c8.dataStalled, c8.csw.status], [true, 2]);
    resetRecovery(s.device);
    // Cases 2 and 3 (Hn < Di, Hn < Do): phase error, the command does not run.
    assert.equal((await scsi(s.device, read10(0, 1))).csw.status, 2);
    resetRecovery(s.device);
    assert.equal((await scsi(s.device, write10(0, 1))).csw.status, 2);
    resetRecovery(s.device);
    // Case 9 (Ho > Dn): the data is accepted and dropped, residue = host length.
    const c9 = await scsi(s.device, [0x00, 0, 0, 0, 0, 0], { length: 1024 });
    assert.deepEqual([c9.dataStalled, c9.csw.status, c9.csw.residue], [false, 0, 1024]);
    // Case 10 (Ho <> Di): bulk OUT stalls, then phase error.
    const c10 = await scsi(s.device, read10(0, 1), { length: 512 });
    assert.deepEqual([c10.dataStalled, c10.csw.status], [true, 2]);
    resetRecovery(s.device);
    // Case 11 (Ho > Do): the extra bytes are dropped, residue counts them.
    const data = pattern(1024, 9);
    const c11 = await scsi(s.device, write10(7, 1), { length: 1024, out: data });
    assert.deepEqual([c11.csw.status, c11.csw.residue], [0, 512]);
    const back = await scsi(s.device, read10(7, 2), { dirIn: true, length: 1024 });
    assert.deepEqual(back.data.subarray(0, 512), data.subarray(0, 512));
    assert.deepEqual(back.data.subarray(512), imageBytes(MIB).subarray(8 * 512, 9 * 512), 'block 8 untouched');
    // Case 13 (Ho < Do): the host's bytes, then phase error.
    const c13 = await scsi(s.device, write10(20, 2), { length: 512, out: data });
    assert.equal(c13.csw.status, 2);
    resetRecovery(s.device);
    // The CSW goes into a larger buffer too, and a too-small one stalls without losing it.
    const big = await scsi(s.device, [0x00, 0, 0, 0, 0, 0], { cswBuffer: 512 });
    assert.equal(big.csw.status, 0);
    const small = await scsi(s.device, [0x00, 0, 0, 0, 0, 0], { cswBuffer: 12 });
    assert.deepEqual([small.cswStalls, small.csw.status], [1, 0]);
  } finally {
    s.close();
  }
});

test('a data-in transfer queued before its CBW waits for it; cancel and bus reset complete waiting transfers once', async () => {
  const s = stick();
  try {
    const early = run(s.device, bulkIn(512));
    const cbwDone = await run(s.device, bulkOut(cbw(77, 512, true, read10(3, 1))));
    assert.equal(cbwDone.status, 'ok');
    const data = await early;
    assert.equal(data.status, 'ok');
    assert.deepEqual(data.data, imageBytes(MIB).subarray(3 * 512, 4 * 512));
    const csw = parseCsw((await run(s.device, bulkIn(13))).data);
    assert.deepEqual([csw.tag, csw.status], [77, 0]);

    // A CSW request with no command waits; cancel completes it as 'cancelled'.
    const waiting = bulkIn(13);
    let calls = 0;
    s.device.submit(waiting, () => { calls++; });
    assert.equal(calls, 0);
    s.device.cancel(waiting);
    assert.deepEqual([calls, waiting.status], [1, 'cancelled']);
    s.device.cancel(waiting);
    assert.equal(calls, 1);

    // A port reset in the middle of a command: the waiting transfer is cancelled, the stick starts over.
    await run(s.device, bulkOut(cbw(5, 1024, false, write10(0, 2))));
    const first = await run(s.device, bulkOut(new Uint8Array(512)));
    assert.equal(first.status, 'ok');
    const pending = bulkIn(13); // the CSW, which cannot come before the rest of the data
    let resetCalls = 0;
    s.device.submit(pending, () => { resetCalls++; });
    s.device.reset();
    enumerate(s.device);
    assert.deepEqual([resetCalls, pending.status], [1, 'cancelled']);
    const again = await scsi(s.device, read10(0, 2), { dirIn: true, length: 1024 });
    assert.equal(again.csw.status, 0);
    assert.deepEqual(again.data.subarray(0, 512), new Uint8Array(512), 'the block the host sent before the reset was written');
    assert.deepEqual(again.data.subarray(512), imageBytes(MIB).subarray(512, 1024), 'the rest not');
  } finally {
    s.close();
  }
});

/** Passes to a real image but fails the operations the test asks to fail. */
class FailingBackend implements BlockBackend {
  failReadsAt: number | null = null;
  failWrites = false;
  failFlush = false;
  constructor(private readonly inner: RawImageFile) {}
  get size() { return this.inner.size; }
  get readOnly() { return this.inner.readOnly; }
  read(offset: number, length: number, done: (e: Error | null, d: Uint8Array | null) => void): void {
    if (this.failReadsAt !== null && offset <= this.failReadsAt && this.failReadsAt < offset + length) {
      setImmediate(() => done(new Error('EIO (input/output error)'), null));
      return;
    }
    this.inner.read(offset, length, done);
  }
  write(offset: number, data: Uint8Array, done: (e: Error | null) => void): void {
    if (this.failWrites) setImmediate(() => done(new Error('ENOSPC (no space left on device)')));
    else this.inner.write(offset, data, done);
  }
  flush(done: (e: Error | null) => void): void {
    if (this.failFlush) setImmediate(() => done(new Error('EIO (input/output error)')));
    else this.inner.flush(done);
  }
  close(): void { this.inner.close(); }
}

test('a backend error fails the command with MEDIUM ERROR and is logged; the stick goes on working', async () => {
  const file = makeImage(dir, MIB, 'failing.img');
  const backend = new FailingBackend(RawImageFile.open(file));
  const device = new UsbStorage(backend);
  const port = new RecordingPort();
  device.attach(port);
  enumerate(device);
  try {
    backend.failReadsAt = 10 * 512;
    const r = await scsi(device, read10(10, 4), { dirIn: true, length: 2048 });
    assert.equal(r.csw.status, 1);
    assert.equal(r.data.length, 2048, 'the rest of the data phase is padding');
    assert.deepEqual(await senseOf(device), [0x3, 0x11, 0x00], 'MEDIUM ERROR, UNRECOVERED READ ERROR');
    assert.ok(port.lines.some((l) => l.includes('read of 2048 bytes at offset 5120 failed: EIO')), port.lines.join('\n'));
    backend.failReadsAt = null;

    backend.failWrites = true;
    const w = await scsi(device, write10(0, 2), { length: 1024, out: pattern(1024, 5), chunks: [512] });
    assert.equal(w.csw.status, 1);
    assert.deepEqual(await senseOf(device), [0x3, 0x0c, 0x00], 'MEDIUM ERROR, WRITE ERROR');
    backend.failWrites = false;

    backend.failFlush = true;
    assert.equal((await scsi(device, [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0])).csw.status, 1);
    assert.deepEqual(await senseOf(device), [0x3, 0x0c, 0x00]);
    backend.failFlush = false;

    const good = await scsi(device, read10(10, 1), { dirIn: true, length: 512 });
    assert.equal(good.csw.status, 0);
    assert.deepEqual(good.data, imageBytes(MIB).subarray(5120, 5632));
  } finally {
    device.detach();
    device.close();
  }
});

test('completions that arrive late, and a mass storage reset while a read is in flight', () => {
  const backend = new DeferredBackend(imageBytes(64 * 1024));
  const device = new UsbStorage(backend);
  device.attach(new RecordingPort());
  enumerate(device);
  const done: string[] = [];
  const submit = (t: ReturnType<typeof bulkIn>, label: string) => device.submit(t, (x) => done.push(`${label}:${x.status}:${x.actualLength}`));

  submit(bulkOut(cbw(1, 1024, true, read10(2, 2))), 'cbw');
  const dataIn = bulkIn(1024);
  submit(dataIn, 'data');
  assert.deepEqual(done, ['cbw:ok:31'], 'the data waits for the backend');
  assert.equal(backend.pending.length, 1);
  backend.runAll();
  assert.deepEqual(done, ['cbw:ok:31', 'data:ok:1024']);
  assert.deepEqual(dataIn.data, backend.bytes.subarray(1024, 2048));
  const csw = bulkIn(13);
  submit(csw, 'csw');
  assert.equal(parseCsw(csw.data).status, 0);

  // Write: the OUT transfer is taken at once, the CSW waits until the backend has the bytes.
  done.length = 0;
  submit(bulkOut(cbw(2, 512, false, write10(0, 1))), 'cbw');
  submit(bulkOut(new Uint8Array(512).fill(0x5a)), 'data');
  const wcsw = bulkIn(13);
  submit(wcsw, 'csw');
  assert.deepEqual(done, ['cbw:ok:31', 'data:ok:512']);
  backend.runAll();
  assert.deepEqual(done, ['cbw:ok:31', 'data:ok:512', 'csw:ok:13']);
  assert.equal(backend.bytes[0], 0x5a);

  // A reset recovery while a read is in flight: the late completion is ignored.
  done.length = 0;
  submit(bulkOut(cbw(3, 512, true, read10(4, 1))), 'cbw');
  const lost = bulkIn(512);
  submit(lost, 'lost');
  device.cancel(lost);
  resetRecovery(device);
  submit(bulkOut(cbw(4, 512, true, read10(9, 1))), 'next');
  const fresh = bulkIn(512);
  submit(fresh, 'fresh');
  assert.deepEqual(done, ['cbw:ok:31', 'lost:cancelled:0'], 'the next CBW waits for the dropped read');
  backend.runAll();
  assert.deepEqual(done, ['cbw:ok:31', 'lost:cancelled:0', 'next:ok:31', 'fresh:ok:512']);
  assert.deepEqual(fresh.data, backend.bytes.subarray(9 * 512, 10 * 512), 'the dropped read is not delivered');
  const tcsw = bulkIn(13);
  submit(tcsw, 'csw');
  assert.deepEqual(parseCsw(tcsw.data).tag, 4);

  // A reset while a write is on its way to the backend: the next command waits for it.
  done.length = 0;
  submit(bulkOut(cbw(5, 512, false, write10(1, 1))), 'cbw');
  submit(bulkOut(new Uint8Array(512).fill(0x77)), 'data');
  resetRecovery(device);
  submit(bulkOut(cbw(6, 512, true, read10(1, 1))), 'next');
  assert.deepEqual(done, ['cbw:ok:31', 'data:ok:512'], 'the next CBW waits');
  assert.equal(backend.pending.length, 1);
  backend.runOne();
  assert.deepEqual(done, ['cbw:ok:31', 'data:ok:512', 'next:ok:31']);
  const read = bulkIn(512);
  submit(read, 'read');
  backend.runAll();
  assert.deepEqual(read.data, new Uint8Array(512).fill(0x77));
  assert.deepEqual(backend.violations, []);
  device.detach();
});

test('opening an image: clear errors before any device exists for missing, unusable, empty, odd-sized and locked images', () => {
  const expectError = (fn: () => unknown, problem: string, text: RegExp) => {
    assert.throws(fn, (error: unknown) => {
      assert.ok(error instanceof ImageError, String(error));
      assert.equal(error.problem, problem);
      assert.match(error.message, text);
      return true;
    });
  };
  const missing = path.join(dir, 'nope.img');
  expectError(() => openUsbStorage(missing), 'missing', new RegExp(`^disk image ${missing}: it does not exist$`));
  const noFolder = path.join(dir, 'no-such-folder', 'stick.img');
  expectError(() => openUsbStorage(noFolder), 'missing', /no-such-folder\/stick\.img: it does not exist \(nor does the folder .*no-such-folder\)/);
  const plain = makeImage(dir, 4096, 'plain.img');
  expectError(() => openUsbStorage(path.join(plain, 'inner.img')), 'missing', /a part of its path is a file/);
  expectError(() => openUsbStorage(dir), 'not-a-file', /it is a folder, not an image file/);
  expectError(() => openUsbStorage(dir, { readOnly: true }), 'not-a-file', /it is a folder/);
  const fifo = path.join(dir, 'fifo.img');
  execFileSync('mkfifo', [fifo]);
  expectError(() => openUsbStorage(fifo, { readOnly: true }), 'not-a-file', /not a regular file/);
  const empty = path.join(dir, 'empty.img');
  fs.writeFileSync(empty, '');
  expectError(() => openUsbStorage(empty), 'empty', /empty\.img: it is empty \(0 bytes\)/);
  const odd = path.join(dir, 'odd.img');
  fs.writeFileSync(odd, new Uint8Array(1000));
  expectError(() => openUsbStorage(odd), 'size', /it is 1000 bytes, which is not a whole number of 512-byte blocks/);

  // Locks: one writer excludes everyone; readers share.
  const shared = makeImage(dir, 8192, 'shared.img');
  const writer = openUsbStorage(shared);
  expectError(() => openUsbStorage(shared), 'locked', /shared\.img: it is in use/);
  expectError(() => openUsbStorage(shared, { readOnly: true }), 'locked', /it is in use: another program or device is writing to it/);
  writer.close();
  const readerA = openUsbStorage(shared, { readOnly: true });
  const readerB = openUsbStorage(shared, { readOnly: true });
  expectError(() => openUsbStorage(shared), 'locked', /in use/);
  readerA.close();
  readerB.close();
  // Another process sees the lock (flock(1) from util-linux), and it goes with close().
  const probe = () => spawnSync('flock', ['-n', '-s', shared, 'true']).status;
  const third = openUsbStorage(shared);
  assert.equal(probe(), 1, 'another process cannot take the lock while the stick has the image');
  third.close();
  assert.equal(probe(), 0);
});

test('RawImageFile refuses requests outside the image and after close, and reads what was written', async () => {
  const file = makeImage(dir, 4096, 'raw.img');
  const image = RawImageFile.open(file);
  const readP = (offset: number, length: number) =>
    new Promise<Uint8Array | Error>((resolve) => image.read(offset, length, (e, d) => resolve(e ?? d!)));
  assert.ok((await readP(4000, 200)) instanceof RangeError);
  assert.ok((await readP(-1, 10)) instanceof RangeError);
  assert.ok((await readP(0.5, 10)) instanceof RangeError);
  const data = pattern(100, 7);
  const wrote = await new Promise<Error | null>((resolve) => image.write(4000, data, resolve));
  assert.match(String(wrote), /outside/);
  assert.equal(await new Promise<Error | null>((resolve) => image.write(4092, data.subarray(0, 4), resolve)), null, 'up to the end');
  assert.equal(await new Promise<Error | null>((resolve) => image.write(100, data, resolve)), null);
  assert.deepEqual(await readP(100, 100), data);
  assert.equal(await new Promise<Error | null>((resolve) => image.flush(resolve)), null);
  image.close();
  assert.match(String(await readP(0, 10)), /is closed/);
  const ro = RawImageFile.open(file, { readOnly: true });
  assert.match(String(await new Promise<Error | null>((resolve) => ro.write(0, data, resolve))), /read-only/);
  ro.close();
});
