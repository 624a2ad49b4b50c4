// virtio-blk over the modern virtio-pci transport, at register level from the host side: the
// capabilities, feature negotiation, queues, requests against a raw image (synchronous and
// asynchronous completions), read-only disks, indirect descriptors, event-idx interrupt
// suppression, INTx and MSI-X, the configuration access window, and the device error state.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { defaultConfig, machineConfigFromJson, parseDisk, ConfigError } from '../../main/vmm/config';
import { privateStatistics } from '../../main/vmm/devices/device';
import type { DeviceContext } from '../../main/vmm/devices/device';
import { PCI_CFG, PCI_COMMAND } from '../../main/vmm/devices/pci/pci-device';
import { MmioBus, PioBus } from '../../main/vmm/devices/bus';
import type { MachineContext } from '../../main/vmm/devices/context';
import type { GuestMemory } from '../../main/vmm/memory/guest-memory';
import { PC_DEVICES } from '../../main/vmm/platform/pc';
import { Platform } from '../../main/vmm/platform/platform';
import { ByteRing } from '../../main/vmm/shared/control';
import { StatsRegistry } from '../../main/vmm/shared/stats';
import { RawImageFile } from '../../main/vmm/devices/usb/storage/block-backend';
import { VIRTIO_BLK_F, VIRTIO_BLK_S, VIRTIO_BLK_T, VirtioBlk, virtioBlkDevices } from '../../main/vmm/devices/virtio/blk';
import { COMMON, VIRTIO_BAR_LAYOUT, VIRTIO_F, VIRTIO_PCI_CAP, VIRTIO_STATUS } from '../../main/vmm/devices/virtio/virtio-pci';
import { VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../main/vmm/shared/virtqueue';
import { RAM_BYTES } from '../helpers/virtio-driver';
import { VirtioTestDriver, writeBlkHeader } from '../helpers/virtio-driver';

const SECTORS = 64;

function same(a: Uint8Array, b: Uint8Array): void {
  assert.ok(Buffer.from(a).equals(Buffer.from(b)), 'bytes differ');
}
const F_VERSION_1_HIGH = 1 << (VIRTIO_F.VERSION_1 - 32);

function tempImage(fill?: (b: Uint8Array) => void): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'virtio-blk-'));
  const file = path.join(dir, 'disk.img');
  const bytes = new Uint8Array(SECTORS * 512);
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7 + (i >> 9)) & 0xff;
  fill?.(bytes);
  fs.writeFileSync(file, bytes);
  return file;
}

function blk(opts: { readOnly?: boolean; synchronous?: boolean; serial?: string } = {}) {
  const file = tempImage();
  const backend = RawImageFile.open(file, { readOnly: opts.readOnly, synchronous: opts.synchronous ?? true });
  const statistics = privateStatistics();
  const logs: string[] = [];
  const device = new VirtioBlk({ name: 'disk0', backend, serial: opts.serial ?? 'PH-SERIAL-1', statistics, log: (t) => logs.push(t) });
  const driver = new VirtioTestDriver(device);
  return { file, device, driver, statistics, logs, bus: driver.bus };
}

/** A started device with queue 0 (size 16) at 0x10000 and the features the test asks for. */
function started(opts: Parameters<typeof blk>[0] & { features?: number } = {}) {
  const t = blk(opts);
  assert.ok(t.driver.negotiate(opts.features ?? 0, F_VERSION_1_HIGH));
  t.driver.setupQueue(0, 16, 0x10000);
  t.driver.driverOk();
  return t;
}

const HDR = 0x40000;
const DATA = 0x50000;
const STATUS = 0x60000;

/** Header, data, status as three chained descriptors at 0..2 of queue 0's table; submits them. */
function request(t: ReturnType<typeof started>, type: number, sector: number, dataLength: number, dataWritable: boolean, head = 0): void {
  const q = t.driver.queue(0);
  writeBlkHeader(t.bus, HDR, type, sector);
  t.bus.ram[STATUS] = 0xee;
  t.driver.writeDesc(q.desc, head, HDR, 16, VIRTQ_DESC_F_NEXT, head + 1);
  if (dataLength > 0) {
    t.driver.writeDesc(q.desc, head + 1, DATA, dataLength, VIRTQ_DESC_F_NEXT | (dataWritable ? VIRTQ_DESC_F_WRITE : 0), head + 2);
    t.driver.writeDesc(q.desc, head + 2, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
  } else {
    t.driver.writeDesc(q.desc, head + 1, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
  }
  t.driver.submit(0, head);
}

test('virtio-blk is a modern virtio PCI function: 1af4:1042 rev 1, the five vendor capabilities, MSI-X', () => {
  const { device, driver } = blk();
  assert.equal(device.readConfig(PCI_CFG.VENDOR_ID, 4), 0x10421af4);
  assert.equal(device.readConfig(PCI_CFG.REVISION, 1), 1);
  assert.equal(device.readConfig(PCI_CFG.INTERRUPT_PIN, 1), 1);
  const caps = driver.capabilities();
  assert.deepEqual([...caps.keys()].sort(), [1, 2, 3, 4, 5]);
  assert.deepEqual({ ...caps.get(VIRTIO_PCI_CAP.COMMON)!, at: 0 }, { bar: 0, offset: VIRTIO_BAR_LAYOUT.common, length: 0x38, at: 0 });
  assert.equal(caps.get(VIRTIO_PCI_CAP.NOTIFY)!.offset, VIRTIO_BAR_LAYOUT.notify);
  assert.equal(device.readConfig(caps.get(VIRTIO_PCI_CAP.NOTIFY)!.at + 16, 4), 4, 'notify_off_multiplier');
  assert.equal(caps.get(VIRTIO_PCI_CAP.ISR)!.offset, VIRTIO_BAR_LAYOUT.isr);
  assert.equal(caps.get(VIRTIO_PCI_CAP.DEVICE)!.offset, VIRTIO_BAR_LAYOUT.device);
  assert.ok(device.msix.vectors >= 2);
  assert.equal(driver.read(COMMON.NUM_QUEUES, 2), 1);
  assert.equal(driver.read(COMMON.QUEUE_SIZE, 2), 1024);
  // Capacity in 512-byte sectors, blk_size 512, seg_max.
  assert.equal(driver.read(VIRTIO_BAR_LAYOUT.device, 4), SECTORS);
  assert.equal(driver.read(VIRTIO_BAR_LAYOUT.device + 4, 4), 0);
  assert.equal(driver.read(VIRTIO_BAR_LAYOUT.device + 20, 4), 512);
  assert.equal(driver.read(VIRTIO_BAR_LAYOUT.device + 12, 4), 1022);
});

test('features: VERSION_1, indirect, event idx, flush and blk_size offered; FEATURES_OK needs VERSION_1 and a subset', () => {
  const { driver } = blk();
  const [low, high] = driver.offered();
  assert.equal(high & F_VERSION_1_HIGH, F_VERSION_1_HIGH);
  for (const bit of [VIRTIO_F.INDIRECT_DESC, VIRTIO_F.EVENT_IDX, VIRTIO_BLK_F.FLUSH, VIRTIO_BLK_F.BLK_SIZE, VIRTIO_BLK_F.SEG_MAX]) assert.ok(low & (1 << bit), `bit ${bit}`);
  assert.equal(low & (1 << VIRTIO_BLK_F.RO), 0, 'a writable disk is not RO');
  assert.equal(driver.negotiate(0, 0), false, 'no VERSION_1: FEATURES_OK refused (no legacy interface)');
  assert.equal(driver.negotiate(1 << 3, F_VERSION_1_HIGH), false, 'a feature we did not offer');
  assert.equal(driver.negotiate(1 << VIRTIO_BLK_F.FLUSH, F_VERSION_1_HIGH), true);
  driver.write(COMMON.DEVICE_STATUS, 1, 0);
  assert.equal(driver.status, 0, 'status 0 resets');
});

test('read, write, flush and get-id against the raw image; counters per disk', () => {
  const t = started();
  const image = fs.readFileSync(t.file);
  request(t, VIRTIO_BLK_T.IN, 3, 1024, true);
  assert.equal(t.driver.usedIdx(0), 1);
  assert.deepEqual(t.driver.used(0, 0), { id: 0, len: 1025 });
  assert.equal(t.bus.ram[STATUS], VIRTIO_BLK_S.OK);
  same(t.bus.ram.subarray(DATA, DATA + 1024), image.subarray(3 * 512, 5 * 512));

  t.bus.ram.fill(0x5a, DATA, DATA + 512);
  request(t, VIRTIO_BLK_T.OUT, 10, 512, false);
  assert.equal(t.bus.ram[STATUS], VIRTIO_BLK_S.OK);
  assert.deepEqual(t.driver.used(0, 1), { id: 0, len: 1 });
  same(fs.readFileSync(t.file).subarray(10 * 512, 11 * 512), Buffer.alloc(512, 0x5a));

  request(t, VIRTIO_BLK_T.FLUSH, 0, 0, false);
  assert.equal(t.bus.ram[STATUS], VIRTIO_BLK_S.OK);

  request(t, VIRTIO_BLK_T.GET_ID, 0, 20, true);
  assert.equal(t.bus.ram[STATUS], VIRTIO_BLK_S.OK);
  assert.equal(Buffer.from(t.bus.ram.subarray(DATA, DATA + 11)).toString('latin1'), 'PH-SERIAL-1');
  assert.equal(t.bus.ram[DATA + 11], 0);

  request(t, 0x77, 0, 0, false);
  assert.equal(t.bus.ram[STATUS], VIRTIO_BLK_S.UNSUPP);
  assert.equal(t.driver.usedIdx(0), 5);

  const counters = new Map(t.statistics.schema.filter((s) => s.group === 'disk0').map((s) => [s.name, t.statistics.counts[t.statistics.counter('disk0', s.name)]]));
  assert.equal(counters.get('reads'), 1);
  assert.equal(counters.get('read-bytes'), 1024);
  assert.equal(counters.get('writes'), 1);
  assert.equal(counters.get('write-bytes'), 512);
  assert.equal(counters.get('flushes'), 1);
  t.device.close();
});

test('sectors past the end, partial sectors and data outside guest memory are I/O errors, not device errors', () => {
  const t = started();
  request(t, VIRTIO_BLK_T.IN, SECTORS - 1, 1024, true);
  assert.equal(t.bus.ram[STATUS], VIRTIO_BLK_S.IOERR);
  request(t, VIRTIO_BLK_T.IN, 0, 100, true);
  assert.equal(t.bus.ram[STATUS], VIRTIO_BLK_S.IOERR);
  request(t, VIRTIO_BLK_T.IN, 2 ** 60, 512, true);
  assert.equal(t.bus.ram[STATUS], VIRTIO_BLK_S.IOERR);
  const q = t.driver.queue(0);
  writeBlkHeader(t.bus, HDR, VIRTIO_BLK_T.IN, 0);
  t.driver.writeDesc(q.desc, 0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
  t.driver.writeDesc(q.desc, 1, 0xfff_0000_0000, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2);
  t.driver.writeDesc(q.desc, 2, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
  t.driver.submit(0, 0);
  assert.equal(t.bus.ram[STATUS], VIRTIO_BLK_S.IOERR);
  assert.equal(t.driver.usedIdx(0), 4);
  assert.equal(t.driver.status & VIRTIO_STATUS.NEEDS_RESET, 0);
});

test('a read-only disk offers VIRTIO_BLK_F_RO and fails writes, leaving the image alone', () => {
  const t = started({ readOnly: true });
  assert.ok(t.driver.offered()[0] & (1 << VIRTIO_BLK_F.RO));
  const before = fs.readFileSync(t.file);
  t.bus.ram.fill(0x11, DATA, DATA + 512);
  request(t, VIRTIO_BLK_T.OUT, 0, 512, false);
  assert.equal(t.bus.ram[STATUS], VIRTIO_BLK_S.IOERR);
  assert.deepEqual(fs.readFileSync(t.file), before);
  request(t, VIRTIO_BLK_T.IN, 0, 512, true);
  assert.equal(t.bus.ram[STATUS], VIRTIO_BLK_S.OK);
});

test('an indirect table carries the whole request; a nested one puts the device in NEEDS_RESET', () => {
  const t = started({ features: 1 << VIRTIO_F.INDIRECT_DESC });
  const q = t.driver.queue(0);
  const table = 0x70000;
  writeBlkHeader(t.bus, HDR, VIRTIO_BLK_T.IN, 1);
  t.driver.writeDesc(table, 0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
  t.driver.writeDesc(table, 1, DATA, 256, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2);
  t.driver.writeDesc(table, 2, DATA + 0x1000, 256, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 3);
  t.driver.writeDesc(table, 3, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
  t.driver.writeDesc(q.desc, 5, table, 64, VIRTQ_DESC_F_INDIRECT, 0);
  t.driver.submit(0, 5);
  assert.equal(t.bus.ram[STATUS], VIRTIO_BLK_S.OK);
  assert.deepEqual(t.driver.used(0, 0), { id: 5, len: 513 });
  const image = fs.readFileSync(t.file);
  same(t.bus.ram.subarray(DATA + 0x1000, DATA + 0x1100), image.subarray(512 + 256, 1024));

  t.driver.writeDesc(table, 0, table, 16, VIRTQ_DESC_F_INDIRECT, 0);
  t.driver.submit(0, 5);
  assert.ok(t.driver.status & VIRTIO_STATUS.NEEDS_RESET);
  assert.equal(t.driver.usedIdx(0), 1);
});

test('an indirect table running past the end of guest memory is read up to there, then NEEDS_RESET; a whole-disk read in 64 scattered segments lands in each', () => {
  const t = started({ features: 1 << VIRTIO_F.INDIRECT_DESC });
  const q = t.driver.queue(0);
  // Three entries, the third past the end of RAM: the table is not one view, each field is checked.
  const table = RAM_BYTES - 32;
  writeBlkHeader(t.bus, HDR, VIRTIO_BLK_T.IN, 0);
  t.driver.writeDesc(table, 0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
  t.driver.writeDesc(table, 1, DATA, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2);
  t.driver.writeDesc(q.desc, 0, table, 48, VIRTQ_DESC_F_INDIRECT, 0);
  t.driver.submit(0, 0);
  assert.ok(t.driver.status & VIRTIO_STATUS.NEEDS_RESET);
  assert.ok(t.logs.some((l) => /descriptor cannot be accessed/.test(l)), t.logs.join('\n'));

  // As Linux sends an O_DIRECT read: one segment per page, pages scattered (here 512 bytes each).
  const u = started({ features: 1 << VIRTIO_F.INDIRECT_DESC });
  const at = (i: number) => 0x100000 + ((i * 37) % SECTORS) * 0x2000;
  writeBlkHeader(u.bus, HDR, VIRTIO_BLK_T.IN, 0);
  u.driver.writeDesc(0x70000, 0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
  for (let i = 0; i < SECTORS; i++) u.driver.writeDesc(0x70000, 1 + i, at(i), 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2 + i);
  u.driver.writeDesc(0x70000, SECTORS + 1, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
  u.driver.writeDesc(u.driver.queue(0).desc, 0, 0x70000, (SECTORS + 2) * 16, VIRTQ_DESC_F_INDIRECT, 0);
  u.driver.submit(0, 0);
  assert.equal(u.bus.ram[STATUS], VIRTIO_BLK_S.OK);
  assert.deepEqual(u.driver.used(0, 0), { id: 0, len: SECTORS * 512 + 1 });
  const image = fs.readFileSync(u.file);
  for (let i = 0; i < SECTORS; i++) same(u.bus.ram.subarray(at(i), at(i) + 512), image.subarray(i * 512, (i + 1) * 512));
});

test('a descriptor loop and a head outside the table put the device in NEEDS_RESET with a config interrupt; reset recovers', () => {
  const t = started();
  const q = t.driver.queue(0);
  t.driver.writeDesc(q.desc, 0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
  t.driver.writeDesc(q.desc, 1, DATA, 16, VIRTQ_DESC_F_NEXT, 0);
  t.driver.submit(0, 0);
  assert.ok(t.driver.status & VIRTIO_STATUS.NEEDS_RESET);
  assert.ok(t.logs.some((l) => /loop/.test(l)), t.logs.join('\n'));
  assert.equal(t.bus.intx, true, 'configuration change on INTx');
  assert.equal(t.driver.read(VIRTIO_BAR_LAYOUT.isr, 1), 2);
  assert.equal(t.bus.intx, false, 'reading the ISR lowers INTx');
  // Later notifies are ignored until the driver resets.
  t.driver.submit(0, 0);
  assert.equal(t.driver.usedIdx(0), 0);

  assert.ok(t.driver.negotiate(0, F_VERSION_1_HIGH));
  assert.equal(t.driver.status & VIRTIO_STATUS.NEEDS_RESET, 0);
  t.driver.setupQueue(0, 16, 0x10000);
  t.driver.driverOk();
  t.bus.view.setUint16(t.driver.queue(0).avail + 4, 99, true);
  t.bus.view.setUint16(t.driver.queue(0).avail + 2, 1, true);
  t.driver.notify(0);
  assert.ok(t.driver.status & VIRTIO_STATUS.NEEDS_RESET, 'head 99 of 16');
});

test('queue sizes that are not powers of two, or too large, are refused at enable', () => {
  for (const size of [0, 3, 2048, 0xffff]) {
    const t = blk();
    assert.ok(t.driver.negotiate(0, F_VERSION_1_HIGH));
    t.driver.setupQueue(0, size, 0x10000);
    assert.ok(t.driver.status & VIRTIO_STATUS.NEEDS_RESET, `size ${size}`);
    assert.equal(t.driver.read(COMMON.QUEUE_ENABLE, 2), 0);
  }
  const t = blk();
  t.driver.write(COMMON.QUEUE_SELECT, 2, 5);
  assert.equal(t.driver.read(COMMON.QUEUE_SIZE, 2), 0, 'a queue that does not exist has size 0');
});

test('interrupts: INTx with the ISR, MSI-X per queue, and event idx suppression', () => {
  const t = started();
  request(t, VIRTIO_BLK_T.FLUSH, 0, 0, false);
  assert.equal(t.bus.intx, true);
  assert.equal(t.driver.read(VIRTIO_BAR_LAYOUT.isr, 1), 1);
  assert.equal(t.bus.intx, false);
  // NO_INTERRUPT in the driver ring's flags.
  t.bus.view.setUint16(t.driver.queue(0).avail, 1, true);
  request(t, VIRTIO_BLK_T.FLUSH, 0, 0, false);
  assert.equal(t.bus.intx, false);

  const m = started({ features: 1 << VIRTIO_F.EVENT_IDX });
  m.driver.write(COMMON.QUEUE_SELECT, 2, 0);
  m.driver.write(COMMON.QUEUE_MSIX_VECTOR, 2, 1);
  assert.equal(m.driver.read(COMMON.QUEUE_MSIX_VECTOR, 2), 1);
  m.driver.write(COMMON.CONFIG_MSIX_VECTOR, 2, 500);
  assert.equal(m.driver.read(COMMON.CONFIG_MSIX_VECTOR, 2), 0xffff, 'a vector past the table reads NO_VECTOR');
  m.driver.enableMsix([{ vector: 1, data: 0x41 }]);
  const q = m.driver.queue(0);
  const usedEvent = q.avail + 4 + 2 * q.size;
  m.bus.view.setUint16(usedEvent, 0, true);
  request(m, VIRTIO_BLK_T.FLUSH, 0, 0, false);
  assert.deepEqual(m.bus.msis, [{ addressLo: 0xfee00000, data: 0x41 }]);
  assert.equal(m.bus.view.getUint16(q.used + 4 + 8 * q.size, true), 1, 'avail_event follows the device');
  // used_event 5: no interrupt until the used index passes it.
  m.bus.view.setUint16(usedEvent, 5, true);
  for (let i = 0; i < 4; i++) request(m, VIRTIO_BLK_T.FLUSH, 0, 0, false);
  assert.equal(m.bus.msis.length, 1);
  request(m, VIRTIO_BLK_T.FLUSH, 0, 0, false);
  assert.equal(m.bus.msis.length, 2);
  assert.equal(m.bus.intx, false, 'no INTx while MSI-X is on');
});

test('asynchronous completions land on the used ring later; a reset in between drops them', async () => {
  const t = started({ synchronous: false });
  request(t, VIRTIO_BLK_T.IN, 0, 512, true);
  assert.equal(t.driver.usedIdx(0), 0, 'not complete yet');
  for (let i = 0; i < 50 && t.driver.usedIdx(0) === 0; i++) await new Promise((r) => setTimeout(r, 5));
  assert.equal(t.driver.usedIdx(0), 1);
  assert.equal(t.bus.ram[STATUS], VIRTIO_BLK_S.OK);

  t.bus.ram.fill(0x77, DATA, DATA + 512);
  request(t, VIRTIO_BLK_T.OUT, 4, 512, false);
  t.driver.write(COMMON.DEVICE_STATUS, 1, 0);
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(t.bus.ram[STATUS], 0xee, 'no status written after the reset');
  assert.equal(t.bus.view.getUint16(t.driver.queue(0).used + 2, true), 1, 'the used ring did not move');
  t.device.close();
});

test('the PCI configuration access capability reaches BAR 0', () => {
  const { device, driver } = blk();
  const at = driver.capabilities().get(VIRTIO_PCI_CAP.PCI_CFG)!.at;
  device.writeConfig(at + 4, 1, 0);
  device.writeConfig(at + 8, 4, COMMON.NUM_QUEUES);
  device.writeConfig(at + 12, 4, 2);
  assert.equal(device.readConfig(at + 16, 2), 1);
  // Any width at any offset reads the fields' bytes: num_queues, then status and generation.
  driver.write(COMMON.DEVICE_STATUS, 1, VIRTIO_STATUS.ACKNOWLEDGE);
  assert.equal(driver.read(COMMON.NUM_QUEUES, 4), 0x00010001);
  assert.equal(driver.read(COMMON.NUM_QUEUES + 1, 1), 0);
  driver.write(COMMON.DEVICE_STATUS, 1, 0);
  device.writeConfig(at + 8, 4, COMMON.DEVICE_STATUS);
  device.writeConfig(at + 12, 4, 1);
  device.writeConfig(at + 16, 4, VIRTIO_STATUS.ACKNOWLEDGE);
  assert.equal(driver.status, VIRTIO_STATUS.ACKNOWLEDGE);
});

function factoryContext(disks: ReturnType<typeof parseDisk>[]): DeviceContext {
  return {
    config: { ...defaultConfig(), disks },
    statistics: privateStatistics(),
    interrupts: null,
    log: () => {},
  } as unknown as DeviceContext;
}

test('disks in the config: --disk syntax, JSON fields, and images checked before boot (missing, locked)', () => {
  assert.deepEqual(parseDisk('a.img'), { path: 'a.img', readOnly: false });
  assert.deepEqual(parseDisk('/x/b.img,ro,serial=ABC 1,name=data'), { path: '/x/b.img', readOnly: true, serial: 'ABC 1', name: 'data' });
  assert.throws(() => parseDisk('a.img,rw'), /option "rw" is not understood/);
  assert.throws(() => parseDisk(',ro'), /needs an image path/);
  assert.throws(() => parseDisk('a.img,serial=012345678901234567890'), /serial must be at most 20/);
  const c = machineConfigFromJson({ disks: [{ path: 'a.img' }, { path: 'b.img', readOnly: true, serial: 'S' }] });
  assert.deepEqual(c.disks, [{ path: 'a.img', readOnly: false }, { path: 'b.img', readOnly: true, serial: 'S' }]);
  assert.throws(() => machineConfigFromJson({ disks: [{ path: 'a.img', size: 3 }] }), /disks\[0\]: unknown field "size"/);
  assert.throws(() => machineConfigFromJson({ disks: [{ path: 'a', name: 'x' }, { path: 'b', name: 'x' }] }), ConfigError);
  assert.throws(() => machineConfigFromJson({ disks: 'a.img' }), /disks must be a list/);

  const missing = path.join(os.tmpdir(), 'porthole-no-such-dir', 'disk.img');
  assert.throws(() => virtioBlkDevices(factoryContext([{ path: missing, readOnly: false }])), /disk image .*disk\.img: it does not exist/);
  const file = tempImage();
  const first = virtioBlkDevices(factoryContext([{ path: file, readOnly: false }]))!;
  assert.equal(first.pci?.[0].slot, 8);
  // Locked by the first VM; and a good disk before a bad one is closed again.
  const other = tempImage();
  assert.throws(() => virtioBlkDevices(factoryContext([{ path: other, readOnly: false }, { path: file, readOnly: true }])), /in use/);
  const again = virtioBlkDevices(factoryContext([{ path: other, readOnly: false }]))!;
  again.close?.();
  first.close?.();
  const afterClose = virtioBlkDevices(factoryContext([{ path: file, readOnly: false }]))!;
  afterClose.close?.();
});

test('the PC puts disk n at 00:(8+n).0; BAR 0 answers on the memory bus once mapped; closing the machine unlocks the images', () => {
  const files = [tempImage(), tempImage()];
  const config = { ...defaultConfig(), disks: files.map((path, i) => ({ path, readOnly: i === 1 })) };
  const statistics = new StatsRegistry();
  const rings = Array.from({ length: 5 }, () => new ByteRing());
  const ctx = {
    config, statistics, cpuCount: 1,
    memory: { ramRanges: () => [{ base: 0, size: config.memoryBytes }], regions: [] } as unknown as GuestMemory,
    pio: new PioBus(statistics), mmio: new MmioBus(statistics),
    setIrq: () => {}, signalMsi: () => {}, requestReset: () => {}, requestPowerOff: () => {}, log: () => {}, notifyHost: () => {},
    setTimer: () => () => {}, serialRing: (i: number) => rings[i], onHostMessage: () => {}, sendToHost: () => true,
    interrupts: { batch: (fn: () => void) => fn(), createMsiRoute: () => { throw new RangeError('no free GSI'); }, lineIrqfd: () => { throw new Error('not here'); } },
    doorbells: {},
  } as unknown as MachineContext;
  const pc = new Platform(ctx, PC_DEVICES);
  const bus = pc.pci!.bus;
  for (const slot of [8, 9]) assert.equal(bus.readConfig(0, slot << 3, PCI_CFG.VENDOR_ID, 4), 0x10421af4, `slot ${slot}`);
  assert.equal(bus.readConfig(0, 10 << 3, PCI_CFG.VENDOR_ID, 2), 0xffff);
  // BAR 0 is a 16 KiB 32-bit memory BAR.
  bus.writeConfig(0, 9 << 3, PCI_CFG.BAR0, 4, 0xffffffff);
  assert.equal(bus.readConfig(0, 9 << 3, PCI_CFG.BAR0, 4), 0xffffc000);
  const base = 0xfe000000;
  bus.writeConfig(0, 9 << 3, PCI_CFG.BAR0, 4, base);
  bus.writeConfig(0, 9 << 3, PCI_CFG.COMMAND, 2, PCI_COMMAND.MEMORY);
  assert.equal(ctx.mmio.read(base + COMMON.NUM_QUEUES, 2), 1);
  ctx.mmio.write(base + COMMON.DEVICE_FEATURE_SELECT, 4, 0);
  assert.ok(ctx.mmio.read(base + COMMON.DEVICE_FEATURE, 4) & (1 << VIRTIO_BLK_F.RO), 'the second disk is read-only');
  assert.throws(() => RawImageFile.open(files[0]), /in use/);
  pc.close();
  RawImageFile.open(files[0]).close();
});

test('discard punches a hole in the image; the unmap flag is unsupported, ranges past the end are I/O errors', () => {
  const t = started({ features: 1 << VIRTIO_BLK_F.DISCARD });
  assert.ok(t.driver.offered()[0] & (1 << VIRTIO_BLK_F.DISCARD));
  assert.equal(t.driver.read(VIRTIO_BAR_LAYOUT.device + 40, 4), 32, 'max_discard_seg');
  const q = t.driver.queue(0);
  const discard = (ranges: [number, number, number][]) => {
    writeBlkHeader(t.bus, HDR, VIRTIO_BLK_T.DISCARD, 0);
    ranges.forEach(([sector, count, flags], i) => {
      t.bus.view.setUint32(DATA + 16 * i, sector, true);
      t.bus.view.setUint32(DATA + 16 * i + 4, 0, true);
      t.bus.view.setUint32(DATA + 16 * i + 8, count, true);
      t.bus.view.setUint32(DATA + 16 * i + 12, flags, true);
    });
    t.bus.ram[STATUS] = 0xee;
    t.driver.writeDesc(q.desc, 0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
    t.driver.writeDesc(q.desc, 1, DATA, 16 * ranges.length, VIRTQ_DESC_F_NEXT, 2);
    t.driver.writeDesc(q.desc, 2, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
    t.driver.submit(0, 0);
    return t.bus.ram[STATUS];
  };
  assert.equal(discard([[8, 8, 0], [24, 8, 0]]), VIRTIO_BLK_S.OK);
  const image = fs.readFileSync(t.file);
  assert.ok(image.subarray(8 * 512, 16 * 512).every((b) => b === 0), 'sectors 8..15 read zeros');
  assert.ok(image.subarray(24 * 512, 32 * 512).every((b) => b === 0), 'sectors 24..31 read zeros');
  assert.ok(image.subarray(16 * 512, 24 * 512).some((b) => b !== 0), 'sectors between stay');
  assert.equal(image.length, SECTORS * 512, 'the size stays');
  assert.equal(discard([[0, 8, 1]]), VIRTIO_BLK_S.UNSUPP);
  assert.equal(discard([[SECTORS - 4, 8, 0]]), VIRTIO_BLK_S.IOERR);
  assert.equal(t.statistics.counts[t.statistics.counter('disk0', 'discards')], 1);

  const plain = started();
  writeBlkHeader(plain.bus, HDR, VIRTIO_BLK_T.DISCARD, 0);
  request(plain, VIRTIO_BLK_T.DISCARD, 0, 16, false);
  assert.equal(plain.bus.ram[STATUS], VIRTIO_BLK_S.UNSUPP, 'not negotiated');
  assert.equal(started({ readOnly: true }).driver.offered()[0] & (1 << VIRTIO_BLK_F.DISCARD), 0, 'never on a read-only disk');
});

test('several queues: VIRTIO_BLK_F_MQ, num_queues, one notify address and MSI-X vector per queue', () => {
  const backend = RawImageFile.open(tempImage(), { synchronous: true });
  const device = new VirtioBlk({ name: 'mq', backend, queues: 4 });
  const driver = new VirtioTestDriver(device);
  assert.ok(driver.offered()[0] & (1 << VIRTIO_BLK_F.MQ));
  assert.equal(driver.read(COMMON.NUM_QUEUES, 2), 4);
  assert.equal(driver.read(VIRTIO_BAR_LAYOUT.device + 34, 2), 4);
  assert.equal(device.msix.vectors, 5);
  assert.ok(driver.negotiate(1 << VIRTIO_BLK_F.MQ, F_VERSION_1_HIGH));
  for (let q = 0; q < 4; q++) driver.setupQueue(q, 8, 0x10000 * (q + 1), q + 1);
  driver.write(COMMON.QUEUE_SELECT, 2, 3);
  assert.equal(driver.read(COMMON.QUEUE_NOTIFY_OFF, 2), 3);
  driver.driverOk();
  driver.enableMsix([1, 2, 3, 4].map((v) => ({ vector: v, data: 0x40 + v })));
  const q3 = driver.queue(3);
  writeBlkHeader(driver.bus, HDR, VIRTIO_BLK_T.IN, 1);
  driver.writeDesc(q3.desc, 0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
  driver.writeDesc(q3.desc, 1, DATA, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2);
  driver.writeDesc(q3.desc, 2, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
  driver.submit(3, 0);
  assert.equal(driver.usedIdx(3), 1);
  assert.equal(driver.usedIdx(0), 0);
  assert.deepEqual(driver.bus.msis, [{ addressLo: 0xfee00000, data: 0x44 }]);
  assert.equal(parseDisk('a.img,queues=4').queues, 4);
  assert.throws(() => parseDisk('a.img,queues=0'), /queues must be a whole number from 1 to 16/);
  device.close();
});

test('several requests in one notify: writes land, a flush follows them, an overlapping write keeps ring order, a bad one fails alone', () => {
  const t = blk();
  assert.ok(t.driver.negotiate(0, F_VERSION_1_HIGH));
  t.driver.setupQueue(0, 32, 0x10000);
  t.driver.driverOk();
  const q = t.driver.queue(0);
  const before = fs.readFileSync(t.file);
  /** Chain at descriptors head..head+2 with its own header, data and status (slot n). */
  const chain = (n: number, type: number, sector: number, length: number, fill?: number): void => {
    const head = n * 3;
    const hdr = HDR + n * 16;
    const data = DATA + n * 0x1000;
    writeBlkHeader(t.bus, hdr, type, sector);
    if (fill !== undefined) t.bus.ram.fill(fill, data, data + length);
    t.bus.ram[STATUS + n] = 0xee;
    t.driver.writeDesc(q.desc, head, hdr, 16, VIRTQ_DESC_F_NEXT, head + 1);
    if (length > 0) {
      t.driver.writeDesc(q.desc, head + 1, data, length, VIRTQ_DESC_F_NEXT | (type === VIRTIO_BLK_T.IN ? VIRTQ_DESC_F_WRITE : 0), head + 2);
      t.driver.writeDesc(q.desc, head + 2, STATUS + n, 1, VIRTQ_DESC_F_WRITE, 0);
    } else {
      t.driver.writeDesc(q.desc, head + 1, STATUS + n, 1, VIRTQ_DESC_F_WRITE, 0);
    }
    t.driver.submit(0, head, false);
  };
  chain(0, VIRTIO_BLK_T.OUT, 0, 2048, 0x11);
  chain(1, VIRTIO_BLK_T.OUT, 8, 2048, 0x22);
  chain(2, VIRTIO_BLK_T.OUT, SECTORS - 1, 1024, 0x33); // past the end: this one only fails
  chain(3, VIRTIO_BLK_T.IN, 20, 1024);
  chain(4, VIRTIO_BLK_T.OUT, 9, 512, 0x44); // overlaps request 1: it must win
  chain(5, VIRTIO_BLK_T.FLUSH, 0, 0);
  t.driver.notify(0);
  assert.equal(t.driver.usedIdx(0), 6);
  assert.deepEqual([0, 1, 2, 3, 4, 5].map((n) => t.bus.ram[STATUS + n]),
    [VIRTIO_BLK_S.OK, VIRTIO_BLK_S.OK, VIRTIO_BLK_S.IOERR, VIRTIO_BLK_S.OK, VIRTIO_BLK_S.OK, VIRTIO_BLK_S.OK]);
  const image = fs.readFileSync(t.file);
  same(image.subarray(0, 2048), Buffer.alloc(2048, 0x11));
  same(image.subarray(8 * 512, 9 * 512), Buffer.alloc(512, 0x22));
  same(image.subarray(9 * 512, 10 * 512), Buffer.alloc(512, 0x44));
  same(image.subarray(10 * 512, 12 * 512), Buffer.alloc(1024, 0x22));
  same(image.subarray((SECTORS - 1) * 512), before.subarray((SECTORS - 1) * 512));
  same(t.bus.ram.subarray(DATA + 3 * 0x1000, DATA + 3 * 0x1000 + 1024), before.subarray(20 * 512, 22 * 512));
  const flushes = t.statistics.counts[t.statistics.counter('disk0', 'flushes')];
  assert.equal(flushes, 1);
  t.device.close();
});

test('write zeroes: offered with its limits; zeros with and without unmap, unknown flags unsupported, ranges past the end or too many are I/O errors', () => {
  const t = started({ features: 1 << VIRTIO_BLK_F.WRITE_ZEROES });
  assert.ok(t.driver.offered()[0] & (1 << VIRTIO_BLK_F.WRITE_ZEROES));
  assert.equal(t.driver.read(VIRTIO_BAR_LAYOUT.device + 48, 4), 0x10000, 'max_write_zeroes_sectors');
  assert.equal(t.driver.read(VIRTIO_BAR_LAYOUT.device + 52, 4), 1, 'max_write_zeroes_seg');
  assert.equal(t.driver.read(VIRTIO_BAR_LAYOUT.device + 56, 1), 1, 'write_zeroes_may_unmap');
  const q = t.driver.queue(0);
  const zeroes = (ranges: [number, number, number][]) => {
    writeBlkHeader(t.bus, HDR, VIRTIO_BLK_T.WRITE_ZEROES, 0);
    ranges.forEach(([sector, count, flags], i) => {
      t.bus.view.setUint32(DATA + 16 * i, sector, true);
      t.bus.view.setUint32(DATA + 16 * i + 4, 0, true);
      t.bus.view.setUint32(DATA + 16 * i + 8, count, true);
      t.bus.view.setUint32(DATA + 16 * i + 12, flags, true);
    });
    t.bus.ram[STATUS] = 0xee;
    t.driver.writeDesc(q.desc, 0, HDR, 16, VIRTQ_DESC_F_NEXT, 1);
    t.driver.writeDesc(q.desc, 1, DATA, 16 * ranges.length, VIRTQ_DESC_F_NEXT, 2);
    t.driver.writeDesc(q.desc, 2, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
    t.driver.submit(0, 0);
    return t.bus.ram[STATUS];
  };
  assert.equal(zeroes([[3, 5, 0]]), VIRTIO_BLK_S.OK);
  assert.equal(zeroes([[24, 8, 1]]), VIRTIO_BLK_S.OK, 'unmap: a hole');
  let image = fs.readFileSync(t.file);
  assert.ok(image.subarray(3 * 512, 8 * 512).every((b) => b === 0), 'sectors 3..7 read zeros');
  assert.ok(image.subarray(24 * 512, 32 * 512).every((b) => b === 0), 'sectors 24..31 read zeros');
  assert.ok(image.subarray(2 * 512, 3 * 512).some((b) => b !== 0) && image.subarray(8 * 512, 24 * 512).some((b) => b !== 0), 'the sectors around stay');
  assert.equal(image.length, SECTORS * 512, 'the size stays');
  assert.equal(zeroes([[40, 1, 2]]), VIRTIO_BLK_S.UNSUPP, 'an unknown flag');
  assert.equal(zeroes([[SECTORS - 4, 8, 0]]), VIRTIO_BLK_S.IOERR, 'past the end');
  assert.equal(zeroes([[40, 1, 0], [42, 1, 0]]), VIRTIO_BLK_S.IOERR, 'more ranges than max_write_zeroes_seg');
  assert.equal(zeroes([[0, 0x10001, 0]]), VIRTIO_BLK_S.IOERR, 'more sectors than max_write_zeroes_sectors');
  image = fs.readFileSync(t.file);
  assert.ok(image.subarray(40 * 512, 43 * 512).some((b) => b !== 0), 'refused requests change nothing');
  assert.equal(t.statistics.counts[t.statistics.counter('disk0', 'write-zeroes')], 2);

  const plain = started();
  request(plain, VIRTIO_BLK_T.WRITE_ZEROES, 0, 16, false);
  assert.equal(plain.bus.ram[STATUS], VIRTIO_BLK_S.UNSUPP, 'not negotiated');
  assert.equal(started({ readOnly: true }).driver.offered()[0] & (1 << VIRTIO_BLK_F.WRITE_ZEROES), 0, 'never on a read-only disk');
});
