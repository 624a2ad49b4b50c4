// The stick's zero-copy path: a synchronous image takes big bulk TDs as windows onto guest
// memory and reads/writes them with preadv/pwritev. Driven at register level the way Linux
// does it (a scatter-gather TD of 4 KiB TRBs on scattered pages), it must move exactly the
// bytes the copying path moves; a capture, an IDT or a buffer outside RAM takes the copying path.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import { openBlockImage } from '../../main/vmm/devices/block/open-image';
import { openUsbStorage } from '../../main/vmm/devices/usb/storage/usb-storage';
import type { UsbTransfer } from '../../main/vmm/devices/usb/usb-device';
import { UsbCaptureTap } from '../../main/vmm/devices/usb/xhci/capture';
import { cbw, imageBytes, makeImage, parseCsw, read10, tempDir, write10 } from '../helpers/usb-storage';
import { DATA, DB, Driver, makeMemory, trb } from '../helpers/xhci-driver';

const PAGES = 0x100000;
const PAGES_SIZE = 0x80000;
const CC_SUCCESS = 1;
const CC_SHORT_PACKET = 13;

function setUp(image: string) {
  // Two adjacent regions of pages (high RAM comes in adjacent blocks): a buffer may run across.
  const d = new Driver(makeMemory([
    { guestBase: PAGES, size: PAGES_SIZE, buffer: new SharedArrayBuffer(PAGES_SIZE), offset: 0, readonly: false, name: 'pages' },
    { guestBase: PAGES + PAGES_SIZE, size: PAGES_SIZE, buffer: new SharedArrayBuffer(PAGES_SIZE), offset: 0, readonly: false, name: 'pages-2' },
  ]));
  const stick = openUsbStorage(image, { synchronous: true, speed: 'super' });
  const seen: UsbTransfer[] = [];
  const submit = stick.submit.bind(stick);
  stick.submit = (t, done) => { seen.push(t); submit(t, done); };
  d.start();
  d.hc.attach(1, stick);
  const slot = d.enumerate(1, 4);
  d.control(slot, [0, 9, 1, 0, 0], 0, false);
  assert.equal(d.configure(slot, [[3, 6], [4, 2]]).code, CC_SUCCESS);
  d.events();
  const single = (dci: number, addr: number, length: number): void => {
    d.ring(slot, dci).push(addr, 0, length, trb(1, (1 << 5) | (1 << 2)));
    d.w32(DB + 4 * slot, dci);
  };
  /** One TD over `pages` (addresses), 4 KiB each, chained, IOC on the last. */
  const scattered = (dci: number, pages: number[], length: number): void => {
    const r = d.ring(slot, dci);
    pages.forEach((page, i) => {
      const last = i === pages.length - 1;
      r.push(page, 0, last ? length - 4096 * i : 4096, trb(1, last ? (1 << 5) | (1 << 2) : (1 << 4)));
    });
    d.w32(DB + 4 * slot, dci);
  };
  const command = (write: boolean, lba: number, blocks: number, pages: number[], hostLength = blocks * 512) => {
    d.dma.write(DATA, cbw(7, hostLength, !write, write ? write10(lba, blocks) : read10(lba, blocks)));
    single(4, DATA, 31);
    scattered(write ? 4 : 3, pages, hostLength);
    single(3, DATA + 0x1000, 13);
    const events = d.events();
    const csw = new Uint8Array(13);
    d.dma.read(DATA + 0x1000, csw);
    return { events, csw: parseCsw(csw) };
  };
  return { d, stick, seen, command };
}

// Pages out of order, as a user buffer's pages are.
const pages = [7, 2, 11, 0, 5, 9, 3, 12].map((p) => PAGES + p * 4096);

test('a scatter-gather READ(10) lands in guest memory through the segments, byte for byte', () => {
  const dir = tempDir();
  const image = makeImage(dir, 1 << 20);
  const { d, stick, seen, command } = setUp(image);
  try {
    const { events, csw } = command(false, 16, 64, pages);
    assert.deepEqual(events.map((e) => e.code), [CC_SUCCESS, CC_SUCCESS, CC_SUCCESS]);
    assert.equal(csw.status, 0);
    assert.equal(csw.residue, 0);
    const data = seen.find((t) => t.in && t.guest !== undefined);
    assert.ok(data, 'the data TD went to the stick as guest segments');
    assert.equal(data.guest?.length, 8);
    assert.equal(data.data.length, 0);
    const expected = imageBytes(1 << 20).subarray(16 * 512, 16 * 512 + 64 * 512);
    pages.forEach((page, i) => {
      const got = new Uint8Array(4096);
      d.dma.read(page, got);
      assert.deepEqual(got, expected.subarray(i * 4096, (i + 1) * 4096), `page ${i}`);
    });
  } finally {
    stick.close();
  }
});

test('buffers that follow each other in guest memory go to the stick as one window, also across a region edge as one per TRB', () => {
  const dir = tempDir();
  const image = makeImage(dir, 1 << 20);
  const { d, stick, seen, command } = setUp(image);
  try {
    const expected = imageBytes(1 << 20).subarray(32 * 512, 32 * 512 + 64 * 512);
    // Pages 3..6 in a row, then 0 and 1 in a row: two windows.
    const runs = [3, 4, 5, 6, 0, 1, 20, 21].map((p) => PAGES + p * 4096);
    const { events, csw } = command(false, 32, 64, runs);
    assert.deepEqual(events.map((e) => e.code), [CC_SUCCESS, CC_SUCCESS, CC_SUCCESS]);
    assert.equal(csw.status, 0);
    const data = seen.find((t) => t.in && t.guest !== undefined);
    assert.deepEqual(data?.guest?.map((s) => s.length), [4 * 4096, 2 * 4096, 2 * 4096]);
    runs.forEach((page, i) => {
      const got = new Uint8Array(4096);
      d.dma.read(page, got);
      assert.deepEqual(got, expected.subarray(i * 4096, (i + 1) * 4096), `page ${i}`);
    });

    // The last two pages of the first region and the first two of the next: contiguous, but
    // no one window holds them, so four (one per TRB); a write goes out byte for byte.
    seen.length = 0;
    const across = [-2, -1, 0, 1].map((k) => PAGES + PAGES_SIZE + k * 4096);
    const payload = new Uint8Array(4 * 4096).map((_, i) => (i * 29 + 3) & 0xff);
    across.forEach((page, i) => d.dma.write(page, payload.subarray(i * 4096, (i + 1) * 4096)));
    const w = command(true, 200, 32, across);
    assert.equal(w.csw.status, 0);
    assert.deepEqual(seen.find((t) => !t.in && t.guest !== undefined)?.guest?.map((s) => s.length), [4096, 4096, 4096, 4096]);
    assert.deepEqual(new Uint8Array(fs.readFileSync(image).subarray(200 * 512, 200 * 512 + payload.length)), payload);
  } finally {
    stick.close();
  }
});

test('a TD naming the same buffers as the last one reuses its windows until the memory map changes or the buffers do', () => {
  const dir = tempDir();
  const image = makeImage(dir, 1 << 20);
  const { d, stick, seen, command } = setUp(image);
  try {
    const all = imageBytes(1 << 20);
    const readAt = (lba: number, at: number[]) => {
      for (const page of at) d.dma.fill(page, 4096, 0xee);
      const { csw } = command(false, lba, 64, at);
      assert.equal(csw.status, 0);
      at.forEach((page, i) => {
        const got = new Uint8Array(4096);
        d.dma.read(page, got);
        assert.deepEqual(got, all.subarray(lba * 512 + i * 4096, lba * 512 + (i + 1) * 4096), `LBA ${lba} page ${i}`);
      });
      const t = seen.filter((x) => x.in && x.guest !== undefined).pop();
      assert.ok(t?.guest);
      return t.guest;
    };
    const first = readAt(0, pages);
    assert.equal(readAt(64, pages), first, 'the same buffers: the same windows');
    const other = [...pages.slice(0, 7), PAGES + 30 * 4096];
    const moved = readAt(128, other);
    assert.notEqual(moved, first, 'one buffer moved: new windows');
    assert.equal(readAt(192, other), moved);
    // A region added elsewhere replaces the memory map: windows are made again.
    d.memory.add({ guestBase: 0x4000000, size: 0x1000, buffer: new SharedArrayBuffer(0x1000), offset: 0, readonly: false, name: 'later' });
    assert.notEqual(readAt(256, other), moved, 'a new memory map: new windows');
  } finally {
    stick.close();
  }
});

test('a scatter-gather WRITE(10) goes from guest memory to the image; the host asking more than the command moves gets padding and a residue', () => {
  const dir = tempDir();
  const image = makeImage(dir, 1 << 20);
  const { d, stick, seen, command } = setUp(image);
  try {
    const payload = new Uint8Array(8 * 4096).map((_, i) => (i * 13 + 5) & 0xff);
    pages.forEach((page, i) => d.dma.write(page, payload.subarray(i * 4096, (i + 1) * 4096)));
    const { events, csw } = command(true, 100, 64, pages);
    assert.deepEqual(events.map((e) => e.code), [CC_SUCCESS, CC_SUCCESS, CC_SUCCESS]);
    assert.equal(csw.status, 0);
    assert.ok(seen.some((t) => !t.in && t.guest !== undefined), 'the data TD went to the stick as guest segments');
    assert.deepEqual(new Uint8Array(fs.readFileSync(image).subarray(100 * 512, 100 * 512 + payload.length)), payload);

    // Case 4 (host expects more than the device has): READ(10) of 8 blocks into a 32 KiB TD.
    for (const page of pages) d.dma.fill(page, 4096, 0xee);
    const short = command(false, 0, 8, pages, 8 * 4096);
    assert.equal(short.csw.status, 0);
    assert.equal(short.csw.residue, 8 * 4096 - 8 * 512);
    const first = new Uint8Array(4096);
    d.dma.read(pages[0], first);
    assert.deepEqual(first, imageBytes(1 << 20).subarray(0, 4096));
    const padding = new Uint8Array(4096);
    d.dma.read(pages[7], padding);
    assert.ok(padding.every((b) => b === 0), 'the rest of the data phase is zero padding');
    assert.ok(short.events.every((e) => e.code === CC_SUCCESS || e.code === CC_SHORT_PACKET));
  } finally {
    stick.close();
  }
});

test('the copying path stays for a capture, a buffer outside RAM (Host System Error, as before) and small TDs', () => {
  const dir = tempDir();
  const image = makeImage(dir, 1 << 20);
  const { d, stick, seen, command } = setUp(image);
  try {
    d.hc.setCapture(new UsbCaptureTap({ portMask: 1 << 1, snapLength: 64 }, { send: () => true }));
    const captured = command(false, 0, 64, pages);
    assert.equal(captured.csw.status, 0);
    d.hc.setCapture(null);
    assert.ok(seen.every((t) => t.guest === undefined), 'no guest segments while a capture runs');
    const got = new Uint8Array(4096);
    d.dma.read(pages[3], got);
    assert.deepEqual(got, imageBytes(1 << 20).subarray(3 * 4096, 4 * 4096));

    seen.length = 0;
    const outside = [...pages.slice(0, 7), 0x7ff00000];
    command(false, 0, 64, outside);
    assert.ok(seen.every((t) => t.guest === undefined), 'a page outside RAM: no segments');
    assert.notEqual(d.usbsts & (1 << 2), 0, 'Host System Error, as the copying path reports it');
  } finally {
    stick.close();
  }
});

test('a probed raw image refuses a qcow2 header written through pwritev too, even split across segments', () => {
  const dir = tempDir();
  const image = makeImage(dir, 1 << 20);
  const raw = openBlockImage(image, { synchronous: true });
  try {
    assert.ok(raw.writevNow, 'an inline image writes vectors');
    const error = raw.writevNow(0, [Uint8Array.of(0x51, 0x46), Uint8Array.of(0x49, 0xfb, 0, 0, 0, 3)]);
    assert.match(String(error), /refusing to write a qcow2 header into a raw image whose format was probed/);
    assert.deepEqual([...fs.readFileSync(image).subarray(0, 4)], [...imageBytes(16).subarray(0, 4)], 'nothing written');
    assert.equal(raw.writevNow(512, [Uint8Array.of(0x51, 0x46, 0x49, 0xfb)]), null, 'elsewhere it is data');
  } finally {
    raw.close();
  }
});
