// native/vfio.ts without VFIO: ioctl numbers against linux/vfio.h, the struct encoders and
// decoders (region capability chains included), errors that name the call, and the libc
// helpers it uses (pread/pwrite at offsets, copies to and from a mapped address).
// The real kernel side runs in the rig (scenario vfio-l1).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import * as libc from '../../native/libc';
import {
  decodeGroupStatus, decodeIrqInfo, decodeRegionInfo, encodeDmaMap, encodeDmaUnmap, encodeIrqSet, VFIO, VFIO_IRQ_SET_FLAGS,
  VfioContainer, VfioDevice, VfioGroup,
} from '../../native/vfio';

test('vfio: ioctl numbers are linux/vfio.h\'s', () => {
  assert.equal(VFIO.GET_API_VERSION, 0x3b64);
  assert.equal(VFIO.CHECK_EXTENSION, 0x3b65);
  assert.equal(VFIO.SET_IOMMU, 0x3b66);
  assert.equal(VFIO.GROUP_GET_STATUS, 0x3b67);
  assert.equal(VFIO.GROUP_SET_CONTAINER, 0x3b68);
  assert.equal(VFIO.GROUP_GET_DEVICE_FD, 0x3b6a);
  assert.equal(VFIO.DEVICE_GET_INFO, 0x3b6b);
  assert.equal(VFIO.DEVICE_GET_REGION_INFO, 0x3b6c);
  assert.equal(VFIO.DEVICE_GET_IRQ_INFO, 0x3b6d);
  assert.equal(VFIO.DEVICE_SET_IRQS, 0x3b6e);
  assert.equal(VFIO.DEVICE_RESET, 0x3b6f);
  assert.equal(VFIO.IOMMU_MAP_DMA, 0x3b71);
  assert.equal(VFIO.IOMMU_UNMAP_DMA, 0x3b72);
});

function regionReply(flags: number, capOffset: number, size: number, extra: Buffer): Buffer {
  const b = Buffer.alloc(32 + extra.length);
  b.writeUInt32LE(b.length, 0); b.writeUInt32LE(flags, 4); b.writeUInt32LE(0, 8); b.writeUInt32LE(capOffset, 12);
  b.writeBigUInt64LE(BigInt(size), 16); b.writeBigUInt64LE(1n << 40n, 24);
  extra.copy(b, 32);
  return b;
}

test('vfio: region info decodes flags and a sparse mmap + MSI-X mappable capability chain', () => {
  const caps = Buffer.alloc(16 + 2 * 16 + 8);
  caps.writeUInt16LE(1, 0); caps.writeUInt16LE(1, 2); caps.writeUInt32LE(32 + 48, 4); caps.writeUInt32LE(2, 8);
  caps.writeBigUInt64LE(0n, 16); caps.writeBigUInt64LE(0x2000n, 24);
  caps.writeBigUInt64LE(0x3000n, 32); caps.writeBigUInt64LE(0x1000n, 40);
  caps.writeUInt16LE(3, 48); caps.writeUInt32LE(0, 52);
  const info = decodeRegionInfo(regionReply(1 | 2 | 4 | 8, 32, 0x4000, caps));
  assert.equal(info.size, 0x4000);
  assert.equal(info.offset, 2 ** 40);
  assert.deepEqual([info.readable, info.writable, info.mmappable], [true, true, true]);
  assert.deepEqual(info.sparseMmap, [{ offset: 0, size: 0x2000 }, { offset: 0x3000, size: 0x1000 }]);
  assert.equal(info.msixMappable, true);
  assert.equal(info.type, null);
  const plain = decodeRegionInfo(regionReply(1, 0, 256, Buffer.alloc(0)));
  assert.deepEqual([plain.readable, plain.writable, plain.mmappable, plain.sparseMmap], [true, false, false, null]);
});

test('vfio: a capability chain that loops or leaves the reply is refused', () => {
  const loop = Buffer.alloc(8);
  loop.writeUInt16LE(3, 0); loop.writeUInt32LE(32, 4);
  assert.throws(() => decodeRegionInfo(regionReply(8, 32, 16, loop)), /capability chain of BAR0 is broken at offset 32/);
  assert.throws(() => decodeRegionInfo(regionReply(8, 4096, 16, Buffer.alloc(0))), /broken at offset 4096/);
  const many = Buffer.alloc(16);
  many.writeUInt16LE(1, 0); many.writeUInt32LE(1000, 8);
  assert.throws(() => decodeRegionInfo(regionReply(8, 32, 16, many)), /1000 sparse mmap areas do not fit/);
});

test('vfio: irq set, DMA map/unmap and group status structs', () => {
  const fds = encodeIrqSet(2, 1, 'trigger', { kind: 'eventfd', fds: [7, -1] });
  assert.equal(fds.readUInt32LE(0), 28);
  assert.equal(fds.readUInt32LE(4), VFIO_IRQ_SET_FLAGS.DATA_EVENTFD | VFIO_IRQ_SET_FLAGS.ACTION_TRIGGER);
  assert.deepEqual([fds.readUInt32LE(8), fds.readUInt32LE(12), fds.readUInt32LE(16), fds.readInt32LE(20), fds.readInt32LE(24)], [2, 1, 2, 7, -1]);
  const off = encodeIrqSet(0, 0, 'trigger', { kind: 'none', count: 0 });
  assert.deepEqual([off.length, off.readUInt32LE(4), off.readUInt32LE(16)], [20, VFIO_IRQ_SET_FLAGS.DATA_NONE | VFIO_IRQ_SET_FLAGS.ACTION_TRIGGER, 0]);
  const unmask = encodeIrqSet(0, 0, 'unmask', { kind: 'eventfd', fds: [9] });
  assert.equal(unmask.readUInt32LE(4), VFIO_IRQ_SET_FLAGS.DATA_EVENTFD | VFIO_IRQ_SET_FLAGS.ACTION_UNMASK);
  const bools = encodeIrqSet(1, 0, 'mask', { kind: 'bool', values: [true, false, true] });
  assert.deepEqual([...bools.subarray(20)], [1, 0, 1]);
  assert.equal(bools.readUInt32LE(4), VFIO_IRQ_SET_FLAGS.DATA_BOOL | VFIO_IRQ_SET_FLAGS.ACTION_MASK);

  const map = encodeDmaMap({ iova: 0x100000n, vaddr: 0x7f0000000000n, size: 0x200000, write: false });
  assert.deepEqual([map.readUInt32LE(0), map.readUInt32LE(4), map.readBigUInt64LE(8), map.readBigUInt64LE(16), map.readBigUInt64LE(24)],
    [32, 1, 0x7f0000000000n, 0x100000n, 0x200000n]);
  const unmap = encodeDmaUnmap(0x100000n, 0x1000);
  assert.deepEqual([unmap.readUInt32LE(0), unmap.readBigUInt64LE(8), unmap.readBigUInt64LE(16)], [24, 0x100000n, 0x1000n]);

  const st = Buffer.alloc(8); st.writeUInt32LE(3, 4);
  assert.deepEqual(decodeGroupStatus(st), { flags: 3, viable: true, containerSet: true });
  const irq = Buffer.alloc(16); irq.writeUInt32LE(1 | 4, 4); irq.writeUInt32LE(0, 8); irq.writeUInt32LE(1, 12);
  assert.deepEqual(decodeIrqInfo(irq), { index: 0, flags: 5, count: 1, eventfd: true, maskable: false, automasked: true, noresize: false });
});

test('vfio: errors name the call, the path or device, and the errno', () => {
  assert.throws(() => new VfioContainer('/nonexistent/vfio'), /^NativeError: open\(\/nonexistent\/vfio\): ENOENT/);
  assert.throws(() => new VfioContainer('/dev/null'), /VFIO_GET_API_VERSION\(\/dev\/null\): ENOTTY/);
  assert.throws(() => new VfioGroup(12, '/nonexistent'), /open\(\/nonexistent\/12\): ENOENT/);
  const fd = libc.open('/dev/null', libc.O_RDWR);
  const dev = new VfioDevice(fd, '0000:01:00.0');
  try {
    assert.throws(() => dev.regionInfo(7), /VFIO_DEVICE_GET_REGION_INFO\(0000:01:00.0, config\): ENOTTY/);
    assert.throws(() => dev.reset(), /VFIO_DEVICE_RESET\(0000:01:00.0\): ENOTTY/);
    assert.throws(() => dev.enableIrqEventfds(2, [5, 6]), /VFIO_DEVICE_SET_IRQS\(0000:01:00.0, MSI-X trigger from 0, eventfds 5,6\): ENOTTY/);
    assert.throws(() => dev.readConfig(0, 4), /VFIO_DEVICE_GET_REGION_INFO/);
  } finally {
    dev.close();
  }
});

test('libc: pread/pwrite at offsets and copies through a mapped address', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-vfio-'));
  const file = path.join(dir, 'region');
  fs.writeFileSync(file, Buffer.alloc(8192));
  const fd = libc.open(file, libc.O_RDWR);
  try {
    assert.equal(libc.pwrite(fd, Buffer.from([1, 2, 3, 4]), 4096), 4);
    const b = Buffer.alloc(6);
    assert.equal(libc.pread(fd, b, 4094), 6);
    assert.deepEqual([...b], [0, 0, 1, 2, 3, 4]);
    assert.equal(libc.pread(fd, b, 8190), 2);
    const addr = libc.mmap(0n, 8192, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, fd, 0);
    try {
      const got = Buffer.alloc(4);
      libc.copyFromAddress(got, addr + 4096n);
      assert.deepEqual([...got], [1, 2, 3, 4]);
      libc.copyToAddress(addr + 16n, Buffer.from('vfio'));
    } finally {
      libc.munmap(addr, 8192);
    }
    assert.equal(fs.readFileSync(file).subarray(16, 20).toString(), 'vfio');
  } finally {
    libc.close(fd);
  }
  assert.throws(() => libc.pread(fd, Buffer.alloc(1), 0, 1, 'pread(test)'), /pread\(test\): EBADF/);
  fs.rmSync(dir, { recursive: true });
});
