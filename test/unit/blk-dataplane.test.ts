// virtio-blk's data plane: the disk lends its rings to the disk I/O thread (a real worker,
// with real eventfds for the doorbells and irqfds), which serves requests straight between
// the image and guest memory; the rings come back with their indices at a reset; a broken
// ring is reported with its run and puts the disk in its error state; the thread's end
// drops its hold on the image. Then the runner itself, fuzzed in-process with broken rings.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { libc } from '../../native';
import { machineConfigFromJson } from '../../main/vmm/config';
import { RawImageFile } from '../../main/vmm/devices/usb/storage/block-backend';
import { VIRTIO_BLK_QUEUE_SIZE, VIRTIO_BLK_S, VIRTIO_BLK_T, VirtioBlk } from '../../main/vmm/devices/virtio/blk';
import { COMMON, VIRTIO_F, VIRTIO_STATUS } from '../../main/vmm/devices/virtio/virtio-pci';
import { PCI_CFG } from '../../main/vmm/devices/pci/pci-device';
import { DiskIoThread } from '../../main/vmm/host/disk-io';
import { BlkDataPlane } from '../../main/vmm/host/blk-dataplane';
import { Doorbells } from '../../main/vmm/machine/doorbells';
import { IrqRouting } from '../../main/vmm/machine/irq-routing';
import { pcIrqRoutes } from '../../main/vmm/platform/mptable';
import { DATAPLANE_STATE, DataPlaneBlock, dataPlaneBlockBytes, decodeDataPlaneFailure } from '../../main/vmm/shared/dataplane-block';
import { StatsRegistry } from '../../main/vmm/shared/stats';
import { blkDataPlaneLayout, blkDeviceWords, BLK_IMAGE } from '../../main/vmm/shared/virtio-blk-requests';
import { SplitVirtqueue, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../main/vmm/shared/virtqueue';
import { DataPlaneHandoff } from '../../main/vmm/devices/virtio/dataplane-handoff';
import type { DoorbellSpec } from '../../main/vmm/devices/interrupts';
import { FakeEventFds, FakeKvm } from '../helpers/fake-irq';
import { fuzzCases, Prng } from '../helpers/prng';
import { TestBus, VirtioTestDriver, writeBlkHeader } from '../helpers/virtio-driver';
import { waitFor } from '../helpers/uart';

const SECTORS = 64;
const F_VERSION_1_HIGH = 1 << (VIRTIO_F.VERSION_1 - 32);
const QUEUE = 0x10000;
const HDR = 0x40000;
const DATA = 0x50000;
const STATUS = 0x60000;

/** FakeKvm's bookkeeping over real eventfds, which another thread can poll and write. */
class RealEventFds extends FakeEventFds {
  override create(): number {
    const fd = libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
    this.counters.set(fd, 0);
    return fd;
  }
  override read(fd: number): number {
    return libc.eventfdRead(fd);
  }
  override write(fd: number): void {
    if (!this.onWrite?.(fd)) libc.eventfdWrite(fd);
  }
  override close(fd: number): void {
    libc.close(fd);
    this.counters.delete(fd);
    this.closed.add(fd);
  }
}

function tempImage(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blk-dataplane-'));
  const file = path.join(dir, 'disk.img');
  const bytes = new Uint8Array(SECTORS * 512);
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 13 + (i >> 9)) & 0xff;
  fs.writeFileSync(file, bytes);
  return file;
}

/** Header, data and status as three chained descriptors from `head` of queue 0; submits them. */
function request(driver: VirtioTestDriver, type: number, sector: number, dataLength: number, dataWritable: boolean, head = 0): void {
  const q = driver.queue(0);
  writeBlkHeader(driver.bus, HDR, type, sector);
  driver.bus.ram[STATUS] = 0xee;
  driver.writeDesc(q.desc, head, HDR, 16, VIRTQ_DESC_F_NEXT, head + 1);
  if (dataLength > 0) {
    driver.writeDesc(q.desc, head + 1, DATA, dataLength, VIRTQ_DESC_F_NEXT | (dataWritable ? VIRTQ_DESC_F_WRITE : 0), head + 2);
    driver.writeDesc(q.desc, head + 2, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
  } else {
    driver.writeDesc(q.desc, head + 1, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
  }
  driver.submit(0, head);
}

test('virtio-blk runs on the disk I/O thread: requests between image and guest memory by ioeventfd and irqfd, rings back at a reset, a broken ring fails the disk, the image freed at the end', async () => {
  const file = tempImage();
  const image = new Uint8Array(fs.readFileSync(file));
  const fds = new RealEventFds();
  const kvm = new FakeKvm(fds);
  const routing = new IrqRouting(kvm, { lineRoutes: pcIrqRoutes(), maxRoutes: 4096, eventFds: fds });
  routing.commit();
  const doorbells = new Doorbells(kvm, fds);
  const statistics = new StatsRegistry();
  const bus = new TestBus();
  const failures: Uint8Array[] = [];
  const hostLogs: string[] = [];
  const diskIo = DiskIoThread.open(machineConfigFromJson({ name: 'vm', disks: [{ path: file }] }), [bus.region], statistics.buffer, {
    sendFailure: (record) => failures.push(record),
    log: (text) => hostLogs.push(text),
  });
  assert.ok(diskIo);
  const [plane] = diskIo.blockBuffers(1);
  assert.ok(plane);
  const block = new DataPlaneBlock(blkDataPlaneLayout(1), plane);
  const logs: string[] = [];
  const device = new VirtioBlk({
    name: 'disk0', backend: RawImageFile.open(file, { synchronous: true }), serial: 'DP-1', statistics, router: routing,
    dataPlane: { buffer: plane, doorbells }, log: (t) => logs.push(t),
  });
  const driver = new VirtioTestDriver(device, bus);
  device.writeConfig(PCI_CFG.BAR0, 4, 0xfe000000);
  const bring = (msix: boolean) => {
    bus.ram.fill(0, QUEUE, QUEUE + 0x10000); // fresh rings, as a driver allocates after a reset
    assert.ok(driver.negotiate(0, F_VERSION_1_HIGH));
    if (msix) driver.enableMsix([{ vector: 0, data: 0x41 }, { vector: 1, data: 0x42 }]);
    driver.setupQueue(0, VIRTIO_BLK_QUEUE_SIZE, QUEUE, msix ? 0 : undefined); // the size Linux takes
    driver.driverOk();
  };
  const status = () => bus.ram[STATUS];
  try {
    bring(true);
    assert.equal(device.ringsLent, true);
    assert.ok(logs.some((l) => /rings handed to the disk I\/O thread/.test(l)), logs.join('\n'));
    await waitFor(() => block.state === DATAPLANE_STATE.RUNNING, 'the thread to take the rings');
    // The thread is named, so `top -H` and `ps -L` show it apart from the vCPUs.
    const threadNames = fs.readdirSync('/proc/self/task').map((t) => fs.readFileSync(`/proc/self/task/${t}/comm`, 'utf8').trim());
    assert.ok(threadNames.includes('disk-io'), threadNames.join(', '));
    const irqFd = device.msix.vectorEventFd(0);

    // A write: the notify rings the doorbell (a real ioeventfd would catch it in the kernel).
    const written = new Uint8Array(1024).map((_, i) => (i * 5 + 1) & 0xff);
    bus.ram.set(written, DATA);
    request(driver, VIRTIO_BLK_T.OUT, 3, 1024, false);
    await waitFor(() => driver.usedIdx(0) === 1, 'the write to complete');
    assert.equal(status(), VIRTIO_BLK_S.OK);
    assert.deepEqual(new Uint8Array(fs.readFileSync(file)).subarray(3 * 512, 3 * 512 + 1024), written);
    await waitFor(() => libc.eventfdRead(irqFd) >= 1, 'the interrupt');

    // A read straight into guest memory, a flush, and the serial.
    request(driver, VIRTIO_BLK_T.IN, 0, 512, true);
    await waitFor(() => driver.usedIdx(0) === 2, 'the read');
    assert.equal(status(), VIRTIO_BLK_S.OK);
    assert.deepEqual(bus.ram.subarray(DATA, DATA + 512), image.subarray(0, 512));
    assert.equal(driver.used(0, 1).len, 513);
    request(driver, VIRTIO_BLK_T.FLUSH, 0, 0, false);
    await waitFor(() => driver.usedIdx(0) === 3, 'the flush');
    assert.equal(status(), VIRTIO_BLK_S.OK);
    request(driver, VIRTIO_BLK_T.GET_ID, 0, 20, true);
    await waitFor(() => driver.usedIdx(0) === 4, 'the serial');
    assert.equal(Buffer.from(bus.ram.subarray(DATA, DATA + 4)).toString('latin1'), 'DP-1');
    // Sectors past the end: an I/O error, as on the machine thread.
    request(driver, VIRTIO_BLK_T.IN, SECTORS, 512, true);
    await waitFor(() => driver.usedIdx(0) === 5, 'the refused read');
    assert.equal(status(), VIRTIO_BLK_S.IOERR);
    // The VM paused: a request waits, guest memory untouched, and is served at the resume.
    diskIo.hold(true);
    request(driver, VIRTIO_BLK_T.IN, 1, 512, true);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(driver.usedIdx(0), 5, 'nothing changes in a paused guest\'s memory');
    diskIo.hold(false);
    await waitFor(() => driver.usedIdx(0) === 6, 'the request held over the pause');
    assert.deepEqual(bus.ram.subarray(DATA, DATA + 512), image.subarray(512, 1024));
    const count = (name: string) => statistics.counts[statistics.counter('disk0', name)];
    assert.equal(count('writes'), 1);
    assert.equal(count('write-bytes'), 1024);
    assert.equal(count('reads'), 2);
    assert.equal(count('flushes'), 1);
    assert.equal(count('errors'), 1);
    assert.ok(count('io-thread-us') > 0, 'the thread\'s time is counted');

    // A reset takes the rings back, indices included; without MSI-X the machine serves them.
    driver.write(COMMON.DEVICE_STATUS, 1, 0);
    assert.equal(device.ringsLent, false);
    assert.equal(block.state, DATAPLANE_STATE.IDLE);
    bring(false);
    assert.equal(device.ringsLent, false);
    request(driver, VIRTIO_BLK_T.IN, 3, 512, true);
    assert.equal(driver.usedIdx(0), 1, 'served at once on the machine thread');
    assert.deepEqual(bus.ram.subarray(DATA, DATA + 512), written.subarray(0, 512));

    // Lent again: a request with no status byte breaks the protocol; the thread reports its run.
    device.writeConfig(device.msix.offset + 2, 2, device.readConfig(device.msix.offset + 2, 2) | 0x8000);
    driver.write(COMMON.DEVICE_STATUS, 1, 0);
    bring(true);
    await waitFor(() => block.state === DATAPLANE_STATE.RUNNING, 'the thread to take the rings again');
    const q = driver.queue(0);
    driver.writeDesc(q.desc, 0, HDR, 16, 0, 0);
    driver.submit(0, 0);
    await waitFor(() => failures.length === 1, 'the failure report');
    const failure = decodeDataPlaneFailure(failures[0]);
    assert.ok(failure);
    assert.equal(failure.device, 0);
    assert.match(failure.why, /no room for its header or status byte/);
    device.dataPlaneFailed(failure.epoch, failure.why);
    assert.equal(device.status & VIRTIO_STATUS.NEEDS_RESET, VIRTIO_STATUS.NEEDS_RESET);
    assert.equal(device.ringsLent, false);
  } finally {
    device.close();
    await diskIo.close();
  }
  // Nothing holds the image any more: it can be opened for writing again.
  RawImageFile.open(file).close();
  assert.deepEqual(hostLogs.filter((l) => /internal error/.test(l)), []);
});

/** The runner in-process on a block the test fills as a machine would, one request per queue slot. */
function runner() {
  const file = tempImage();
  const backing = RawImageFile.open(file, { synchronous: true });
  const bus = new TestBus();
  const layout = blkDataPlaneLayout(1);
  const block = new DataPlaneBlock(layout, new SharedArrayBuffer(dataPlaneBlockBytes(layout)));
  const failures: string[] = [];
  const internal: string[] = [];
  const plane = new BlkDataPlane(block.buffer, 1, [bus.region], null, {
    failed: (_epoch, why) => failures.push(why),
    log: (text) => { if (/internal error/.test(text)) internal.push(text); },
  });
  const notify = libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
  const irq = libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
  const fd = (backing as unknown as { lendable(): { fd: number } }).lendable().fd;
  return {
    bus, block, plane, failures, internal,
    start(size: number) {
      block.setQueue(0, {
        size, descAddress: QUEUE, driverAddress: QUEUE + 16 * size, deviceAddress: QUEUE + 0x8000, lastAvail: 0, usedIdx: 0, signalledUsed: 0,
        notifyFd: notify, irqFd: irq, irqCounter: -1,
      });
      blkDeviceWords({ fd, flags: BLK_IMAGE.GUARD_FORMAT }, new Uint8Array(20)).forEach((v, i) => block.setDeviceWord(i, v));
      block.epoch++;
      assert.ok(block.move(DATAPLANE_STATE.IDLE, DATAPLANE_STATE.START));
      plane.control();
    },
    close() {
      plane.close();
      backing.close();
      libc.close(notify);
      libc.close(irq);
    },
  };
}

test('disk data plane fuzz: random descriptors, chains, headers and ring indices end in a status, a used entry or the error state; never an exception or a write outside guest memory', () => {
  let failedRuns = 0;
  let completed = 0;
  for (let seed = 1; seed <= fuzzCases(40); seed++) {
    const prng = new Prng(seed);
    const t = runner();
    try {
      const size = 4 << prng.below(4);
      t.start(size);
      assert.equal(t.block.state, DATAPLANE_STATE.RUNNING, `seed ${seed}`);
      const v = t.bus.view;
      // Well-formed requests (header, data, status chained), then a few fields made anything.
      const requests = Math.floor(size / 3);
      for (let k = 0; k < requests; k++) {
        const desc = (i: number, address: number, length: number, flags: number, next: number) => {
          const at = QUEUE + 16 * i;
          v.setUint32(at, address, true);
          v.setUint32(at + 4, 0, true);
          v.setUint32(at + 8, length, true);
          v.setUint16(at + 12, flags, true);
          v.setUint16(at + 14, next, true);
        };
        const type = prng.pick([VIRTIO_BLK_T.IN, VIRTIO_BLK_T.OUT, VIRTIO_BLK_T.FLUSH, VIRTIO_BLK_T.GET_ID, VIRTIO_BLK_T.DISCARD, prng.below(32)]);
        v.setUint32(HDR + 16 * k, type, true);
        v.setUint32(HDR + 16 * k + 8, prng.below(SECTORS + 4), true);
        desc(3 * k, HDR + 16 * k, 16, VIRTQ_DESC_F_NEXT, 3 * k + 1);
        desc(3 * k + 1, DATA + 0x1000 * k, 512 * (1 + prng.below(4)), VIRTQ_DESC_F_NEXT | (type === VIRTIO_BLK_T.OUT ? 0 : VIRTQ_DESC_F_WRITE), 3 * k + 2);
        desc(3 * k + 2, STATUS + k, 1, VIRTQ_DESC_F_WRITE, 0);
        v.setUint16(QUEUE + 16 * size + 4 + 2 * k, 3 * k, true);
      }
      v.setUint16(QUEUE + 16 * size + 2, requests, true);
      for (let n = prng.below(4); n > 0; n--) {
        const at = QUEUE + prng.below(16 * size + 4 + 2 * size);
        const anything = prng.pick([0, 0xffffffff, 0xfff00000 + prng.below(0x100000), prng.below(0x10000), prng.next()]);
        v.setUint16(at, anything & 0xffff, true);
      }
      t.plane.serve([true]);
      assert.deepEqual(t.internal, [], `seed ${seed}`);
      if (t.failures.length > 0) assert.equal(t.block.state, DATAPLANE_STATE.IDLE, `seed ${seed}: a failed run gives the rings back`);
      else assert.equal(t.block.state, DATAPLANE_STATE.RUNNING, `seed ${seed}`);
      failedRuns += t.failures.length > 0 ? 1 : 0;
      completed += v.getUint16(QUEUE + 0x8000 + 2, true);
    } finally {
      t.close();
    }
  }
  // The cases reach both ends: requests served, and runs failed on a broken ring.
  assert.ok(failedRuns > 0 && completed > 0, `${failedRuns} failed runs, ${completed} requests completed`);
});

test('a run the runner cannot take comes back untouched: the machine is told, keeps the rings, and does not lend them again', () => {
  const t = runner();
  const registry = {
    register: (spec: DoorbellSpec) => {
      const fd = libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
      return { ...spec, eventFd: fd, takeCount: () => libc.eventfdRead(fd), ring: () => libc.eventfdWrite(fd), release: () => libc.close(fd) };
    },
    signal: () => t.plane.control(), // the runner lives on this thread: it follows at once
  };
  const irq = libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
  try {
    t.block.controlFd = irq; // any descriptor: the handoff only needs one to signal
    const logs: string[] = [];
    const handoff = new DataPlaneHandoff(blkDataPlaneLayout(1), t.block.buffer, registry, 'disk I/O thread', (text) => logs.push(text));
    const queue = new SplitVirtqueue(0, 16);
    queue.size = 3; // not a power of two: the runner refuses what the machine should never have sent
    queue.descAddress = QUEUE;
    queue.driverAddress = QUEUE + 0x100;
    queue.deviceAddress = QUEUE + 0x200;
    queue.setRingIndices({ lastAvail: 5, usedIdx: 5, signalledUsed: 4 });
    const lend = () => handoff.start([{ queue, notifyAddress: 0xfe003000, irqFd: irq, irqCounter: -1 }], 0, {}, blkDeviceWords({ fd: 0, flags: 0 }, new Uint8Array(20)));
    assert.equal(lend(), true);
    assert.equal(t.block.state, DATAPLANE_STATE.IDLE);
    assert.equal(t.failures.length, 1);
    assert.match(t.failures[0], /cannot run the rings: queue 0/);
    assert.equal(handoff.failed(handoff.runEpoch + 1), 'stale');
    assert.equal(handoff.failed(handoff.runEpoch), 'refused');
    assert.equal(handoff.active, false);
    assert.deepEqual(queue.ringIndices, { lastAvail: 5, usedIdx: 5, signalledUsed: 4 });
    assert.equal(lend(), false, 'not lent again');
    assert.ok(logs.some((l) => /could not take the rings/.test(l)));
  } finally {
    libc.close(irq);
    t.close();
  }
});

