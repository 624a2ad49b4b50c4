// NativeVfioPciHost (main/vmm/devices/vfio/native-host.ts) over a fake VfioDevice: sizes from
// region info, accesses as little-endian pread/pwrite, a failing access reads all ones (logged
// once) instead of throwing into the exit handler, the SET_IRQS calls for INTx (trigger, then
// the unmask eventfd), MSI and MSI-X, mmap'able areas, and quiesce ignoring VFIO's refusals.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { NativeVfioPciHost } from '../../main/vmm/devices/vfio/native-host';
import type { RegionInfo, VfioDevice } from '../../native/vfio';

function region(index: number, size: number, extra: Partial<RegionInfo> = {}): RegionInfo {
  return { index, flags: 3, size, offset: index * 0x10000000000, readable: true, writable: true, mmappable: false, sparseMmap: null, type: null, msixMappable: false, ...extra };
}

function fakeDevice() {
  const calls: string[] = [];
  const mem = Buffer.alloc(0x100);
  mem.writeUInt32LE(0x12345678, 0x10);
  let broken = false;
  let enabled = -1;
  const regions = new Map<number, RegionInfo>([[0, region(0, 0x20000, { mmappable: true })], [1, region(1, 0x40)], [3, region(3, 0x4000, { mmappable: true, sparseMmap: [{ offset: 0x1000, size: 0x3000 }] })], [7, region(7, 256)]]);
  const device = {
    name: '0000:00:03.0',
    regionInfo: (i: number) => { const r = regions.get(i); if (!r) throw new Error('EINVAL'); return r; },
    readRegion: (i: number, off: number, buf: Uint8Array) => {
      if (broken) throw new Error('pread: ENODEV');
      Buffer.from(mem.subarray(off, off + buf.length)).copy(buf);
      calls.push(`read ${i}+${off.toString(16)}/${buf.length}`);
      return buf.length;
    },
    writeRegion: (i: number, off: number, buf: Uint8Array) => {
      if (broken) throw new Error('pwrite: ENODEV');
      calls.push(`write ${i}+${off.toString(16)}=${Buffer.from(buf).toString('hex')}`);
      return buf.length;
    },
    enableIrqEventfds: (index: number, fds: number[]) => { calls.push(`irq ${index} trigger ${fds.join(',')}`); enabled = index; },
    setIntxUnmaskEventfd: (fd: number) => { calls.push(`intx unmask ${fd}`); },
    // VFIO refuses to turn off a type that is not the one on (INTx off is always accepted).
    disableIrqs: (index: number) => {
      calls.push(`irq ${index} off`);
      if (index !== 0 && index !== enabled) throw new Error('VFIO_DEVICE_SET_IRQS: EINVAL');
      if (index === enabled) enabled = -1;
    },
    mapRegion: (i: number, off: number, size: number) => ({ address: 0x7f00n, size, unmap: () => { calls.push(`unmap ${i}+${off}`); } }),
  };
  return { device: device as unknown as VfioDevice, calls, breakIt: () => { broken = true; } };
}

test('NativeVfioPciHost: sizes, little-endian accesses, and a failing access reads all ones, logged once', () => {
  const { device, calls, breakIt } = fakeDevice();
  const logs: string[] = [];
  const host = new NativeVfioPciHost(device, (t) => logs.push(t));
  assert.deepEqual([0, 1, 2, 3, 6].map((i) => host.regionSize(i)), [0x20000, 0x40, 0, 0x4000, 0]);
  assert.equal(host.readRegion(0, 0x10, 4), 0x12345678);
  assert.equal(host.readConfig(0x10, 2), 0x5678);
  assert.equal(host.readRegion(1, 0x13, 1), 0x12);
  host.writeRegion(0, 8, 4, 0xdeadbeef);
  host.writeConfig(4, 2, 0x0406);
  assert.deepEqual(calls.filter((c) => c.startsWith('write')), ['write 0+8=efbeadde', 'write 7+4=0604']);
  breakIt();
  assert.equal(host.readRegion(0, 0, 4), 0xffffffff);
  assert.equal(host.readConfig(0, 2), 0xffff);
  host.writeRegion(0, 0, 4, 1);
  assert.equal(logs.length, 1);
  assert.match(logs[0], /0000:00:03\.0: host access failed \(pread: ENODEV\)/);
});

test('NativeVfioPciHost: INTx trigger then unmask eventfd, MSI/MSI-X on and off, mmap areas, quiesce ignores refusals', () => {
  const { device, calls } = fakeDevice();
  const host = new NativeVfioPciHost(device, () => {});
  host.setIntx({ trigger: 50, unmask: 51 });
  host.setIntx(null);
  host.setMsix([60, 61]);
  host.setMsix(null);
  host.setMsi([70]);
  assert.deepEqual(calls.splice(0), ['irq 0 trigger 50', 'intx unmask 51', 'irq 0 off', 'irq 2 trigger 60,61', 'irq 2 off', 'irq 1 trigger 70']);
  assert.deepEqual(host.mmapAreas(0), [{ offset: 0, size: 0x20000 }]);
  assert.deepEqual(host.mmapAreas(1), []);
  assert.deepEqual(host.mmapAreas(3), [{ offset: 0x1000, size: 0x3000 }]);
  assert.deepEqual(host.mmapAreas(5), []);
  host.setMsi(null);
  calls.splice(0);
  assert.doesNotThrow(() => host.quiesce(), 'nothing is on: VFIO refuses MSI-X and MSI off');
  assert.deepEqual(calls, ['irq 2 off', 'irq 1 off', 'irq 0 off']);
});
