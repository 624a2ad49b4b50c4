// VFIO ioctl numbers, struct layouts (x86_64) and thin typed wrappers: the container (type1
// IOMMU, DMA map/unmap), a group (status, container, device fd) and a device (info, regions,
// IRQs with eventfds, reset, region pread/pwrite and mmap). Layouts follow
// include/uapi/linux/vfio.h. Every failure names the call, e.g.
// "VFIO_GROUP_SET_CONTAINER(/dev/vfio/12): EBUSY (device or resource busy)".
import * as libc from './libc';

// _IO(VFIO_TYPE ';', VFIO_BASE 100 + n): the argument is a pointer or a value, sizes are in argsz.
const vfioIo = (n: number) => (0x3b << 8) | (100 + n);

export const VFIO = {
  GET_API_VERSION: vfioIo(0),
  CHECK_EXTENSION: vfioIo(1),
  SET_IOMMU: vfioIo(2),
  GROUP_GET_STATUS: vfioIo(3),
  GROUP_SET_CONTAINER: vfioIo(4),
  GROUP_UNSET_CONTAINER: vfioIo(5),
  GROUP_GET_DEVICE_FD: vfioIo(6),
  DEVICE_GET_INFO: vfioIo(7),
  DEVICE_GET_REGION_INFO: vfioIo(8),
  DEVICE_GET_IRQ_INFO: vfioIo(9),
  DEVICE_SET_IRQS: vfioIo(10),
  DEVICE_RESET: vfioIo(11),
  IOMMU_GET_INFO: vfioIo(12),
  IOMMU_MAP_DMA: vfioIo(13),
  IOMMU_UNMAP_DMA: vfioIo(14),
} as const;

export const VFIO_API_VERSION = 0;

/** VFIO_CHECK_EXTENSION / VFIO_SET_IOMMU arguments. */
export const VFIO_EXTENSION = {
  TYPE1_IOMMU: 1,
  TYPE1v2_IOMMU: 3,
  DMA_CC_IOMMU: 4,
  NOIOMMU_IOMMU: 8,
  UNMAP_ALL: 9,
} as const;

export const VFIO_GROUP_FLAGS = { VIABLE: 1, CONTAINER_SET: 2 } as const;
export const VFIO_DEVICE_FLAGS = { RESET: 1, PCI: 2, CAPS: 0x80 } as const;
export const VFIO_REGION_FLAGS = { READ: 1, WRITE: 2, MMAP: 4, CAPS: 8 } as const;
export const VFIO_REGION_CAP = { SPARSE_MMAP: 1, TYPE: 2, MSIX_MAPPABLE: 3 } as const;
export const VFIO_IRQ_INFO_FLAGS = { EVENTFD: 1, MASKABLE: 2, AUTOMASKED: 4, NORESIZE: 8 } as const;
export const VFIO_IRQ_SET_FLAGS = {
  DATA_NONE: 1, DATA_BOOL: 2, DATA_EVENTFD: 4, ACTION_MASK: 8, ACTION_UNMASK: 16, ACTION_TRIGGER: 32,
} as const;
export const VFIO_DMA_MAP_FLAGS = { READ: 1, WRITE: 2 } as const;

/** vfio-pci's region and IRQ indexes. */
export const VFIO_PCI_REGION = { BAR0: 0, BAR1: 1, BAR2: 2, BAR3: 3, BAR4: 4, BAR5: 5, ROM: 6, CONFIG: 7, VGA: 8 } as const;
export const VFIO_PCI_IRQ = { INTX: 0, MSI: 1, MSIX: 2, ERR: 3, REQ: 4 } as const;

const REGION_NAMES = ['BAR0', 'BAR1', 'BAR2', 'BAR3', 'BAR4', 'BAR5', 'ROM', 'config', 'VGA'];
const IRQ_NAMES = ['INTx', 'MSI', 'MSI-X', 'ERR', 'REQ'];
export const regionName = (i: number): string => REGION_NAMES[i] ?? `region ${i}`;
export const irqName = (i: number): string => IRQ_NAMES[i] ?? `IRQ index ${i}`;

// ---- struct encoders and decoders (pure, tested without VFIO) ----

export interface GroupStatus { flags: number; viable: boolean; containerSet: boolean }

export function decodeGroupStatus(b: Buffer): GroupStatus {
  const flags = b.readUInt32LE(4);
  return { flags, viable: (flags & VFIO_GROUP_FLAGS.VIABLE) !== 0, containerSet: (flags & VFIO_GROUP_FLAGS.CONTAINER_SET) !== 0 };
}

export interface DeviceInfo { flags: number; numRegions: number; numIrqs: number; canReset: boolean; isPci: boolean }

export function decodeDeviceInfo(b: Buffer): DeviceInfo {
  const flags = b.readUInt32LE(4);
  return {
    flags, numRegions: b.readUInt32LE(8), numIrqs: b.readUInt32LE(12),
    canReset: (flags & VFIO_DEVICE_FLAGS.RESET) !== 0, isPci: (flags & VFIO_DEVICE_FLAGS.PCI) !== 0,
  };
}

export interface MmapArea { offset: number; size: number }

export interface RegionInfo {
  index: number;
  flags: number;
  /** Bytes; 0 for a region the device does not have. */
  size: number;
  /** The region's offset in the device fd (for pread/pwrite/mmap). */
  offset: number;
  readable: boolean;
  writable: boolean;
  mmappable: boolean;
  /** The parts that may be mmap'd (VFIO_REGION_INFO_CAP_SPARSE_MMAP), relative to the region; null without that capability. */
  sparseMmap: MmapArea[] | null;
  /** VFIO_REGION_INFO_CAP_TYPE, for device-specific regions. */
  type: { type: number; subtype: number } | null;
  /** The MSI-X table may be mmap'd too (interrupt remapping protects it). */
  msixMappable: boolean;
}

const REGION_INFO_SIZE = 32;

/** Decodes vfio_region_info and its capability chain; a chain that loops or leaves the buffer is an error. */
export function decodeRegionInfo(b: Buffer): RegionInfo {
  const flags = b.readUInt32LE(4);
  const info: RegionInfo = {
    index: b.readUInt32LE(8), flags, size: Number(b.readBigUInt64LE(16)), offset: Number(b.readBigUInt64LE(24)),
    readable: (flags & VFIO_REGION_FLAGS.READ) !== 0, writable: (flags & VFIO_REGION_FLAGS.WRITE) !== 0,
    mmappable: (flags & VFIO_REGION_FLAGS.MMAP) !== 0, sparseMmap: null, type: null, msixMappable: false,
  };
  if (!(flags & VFIO_REGION_FLAGS.CAPS)) return info;
  let at = b.readUInt32LE(12);
  const seen = new Set<number>();
  while (at !== 0) {
    if (at < REGION_INFO_SIZE || at + 8 > b.length || seen.has(at)) {
      throw new Error(`VFIO_DEVICE_GET_REGION_INFO: capability chain of ${regionName(info.index)} is broken at offset ${at}`);
    }
    seen.add(at);
    const id = b.readUInt16LE(at);
    const next = b.readUInt32LE(at + 4);
    if (id === VFIO_REGION_CAP.SPARSE_MMAP && at + 16 <= b.length) {
      const n = b.readUInt32LE(at + 8);
      if (at + 16 + n * 16 > b.length) throw new Error(`VFIO_DEVICE_GET_REGION_INFO: ${n} sparse mmap areas do not fit the reply`);
      info.sparseMmap = [];
      for (let i = 0; i < n; i++) {
        const o = at + 16 + i * 16;
        info.sparseMmap.push({ offset: Number(b.readBigUInt64LE(o)), size: Number(b.readBigUInt64LE(o + 8)) });
      }
    } else if (id === VFIO_REGION_CAP.TYPE && at + 16 <= b.length) {
      info.type = { type: b.readUInt32LE(at + 8), subtype: b.readUInt32LE(at + 12) };
    } else if (id === VFIO_REGION_CAP.MSIX_MAPPABLE) {
      info.msixMappable = true;
    }
    at = next;
  }
  return info;
}

export interface IrqInfo { index: number; flags: number; count: number; eventfd: boolean; maskable: boolean; automasked: boolean; noresize: boolean }

export function decodeIrqInfo(b: Buffer): IrqInfo {
  const flags = b.readUInt32LE(4);
  return {
    index: b.readUInt32LE(8), flags, count: b.readUInt32LE(12),
    eventfd: (flags & VFIO_IRQ_INFO_FLAGS.EVENTFD) !== 0, maskable: (flags & VFIO_IRQ_INFO_FLAGS.MASKABLE) !== 0,
    automasked: (flags & VFIO_IRQ_INFO_FLAGS.AUTOMASKED) !== 0, noresize: (flags & VFIO_IRQ_INFO_FLAGS.NORESIZE) !== 0,
  };
}

export type IrqAction = 'trigger' | 'mask' | 'unmask';
/** No data (the action applies to start..start+count-1), one bool per vector, or one eventfd per vector (-1 unbinds). */
export type IrqData = { kind: 'none'; count: number } | { kind: 'bool'; values: boolean[] } | { kind: 'eventfd'; fds: number[] };

const ACTION_FLAG: Record<IrqAction, number> = {
  trigger: VFIO_IRQ_SET_FLAGS.ACTION_TRIGGER, mask: VFIO_IRQ_SET_FLAGS.ACTION_MASK, unmask: VFIO_IRQ_SET_FLAGS.ACTION_UNMASK,
};

/** struct vfio_irq_set with its data[]. */
export function encodeIrqSet(index: number, start: number, action: IrqAction, data: IrqData): Buffer {
  const count = data.kind === 'none' ? data.count : data.kind === 'bool' ? data.values.length : data.fds.length;
  const payload = data.kind === 'bool' ? count : data.kind === 'eventfd' ? count * 4 : 0;
  const b = Buffer.alloc(20 + payload);
  const dataFlag = data.kind === 'none' ? VFIO_IRQ_SET_FLAGS.DATA_NONE : data.kind === 'bool' ? VFIO_IRQ_SET_FLAGS.DATA_BOOL : VFIO_IRQ_SET_FLAGS.DATA_EVENTFD;
  b.writeUInt32LE(b.length, 0); b.writeUInt32LE(dataFlag | ACTION_FLAG[action], 4);
  b.writeUInt32LE(index, 8); b.writeUInt32LE(start, 12); b.writeUInt32LE(count, 16);
  if (data.kind === 'bool') data.values.forEach((v, i) => b.writeUInt8(v ? 1 : 0, 20 + i));
  if (data.kind === 'eventfd') data.fds.forEach((fd, i) => b.writeInt32LE(fd, 20 + i * 4));
  return b;
}

export interface DmaMapping { iova: bigint; vaddr: bigint; size: number; read?: boolean; write?: boolean }

export function encodeDmaMap(m: DmaMapping): Buffer {
  const b = Buffer.alloc(32);
  const flags = (m.read === false ? 0 : VFIO_DMA_MAP_FLAGS.READ) | (m.write === false ? 0 : VFIO_DMA_MAP_FLAGS.WRITE);
  b.writeUInt32LE(32, 0); b.writeUInt32LE(flags, 4);
  b.writeBigUInt64LE(m.vaddr, 8); b.writeBigUInt64LE(m.iova, 16); b.writeBigUInt64LE(BigInt(m.size), 24);
  return b;
}

export function encodeDmaUnmap(iova: bigint, size: number): Buffer {
  const b = Buffer.alloc(24);
  b.writeUInt32LE(24, 0);
  b.writeBigUInt64LE(iova, 8); b.writeBigUInt64LE(BigInt(size), 16);
  return b;
}

const hex = (n: number | bigint) => `0x${n.toString(16)}`;

// ---- handles ----

export interface IommuInfo { flags: number; pageSizes: bigint }

/** /dev/vfio/vfio: one IOMMU context (address space) that groups join. */
export class VfioContainer {
  readonly fd: number;
  private closed = false;

  constructor(readonly path = '/dev/vfio/vfio') {
    this.fd = libc.open(path, libc.O_RDWR);
    try {
      const version = libc.ioctl(this.fd, `VFIO_GET_API_VERSION(${path})`, VFIO.GET_API_VERSION);
      if (version !== VFIO_API_VERSION) throw new Error(`VFIO_GET_API_VERSION(${path}): version ${version}, Porthole speaks ${VFIO_API_VERSION}`);
    } catch (e) {
      libc.close(this.fd);
      throw e;
    }
  }

  /** Non-zero when the kernel supports that extension (an IOMMU type, UNMAP_ALL...). */
  checkExtension(extension: number): number {
    return libc.ioctl(this.fd, `VFIO_CHECK_EXTENSION(${extension})`, VFIO.CHECK_EXTENSION, extension);
  }

  /** The best type1 IOMMU the kernel offers (v2 where present), or null. */
  bestType1(): number | null {
    if (this.checkExtension(VFIO_EXTENSION.TYPE1v2_IOMMU)) return VFIO_EXTENSION.TYPE1v2_IOMMU;
    if (this.checkExtension(VFIO_EXTENSION.TYPE1_IOMMU)) return VFIO_EXTENSION.TYPE1_IOMMU;
    return null;
  }

  /** Chooses the IOMMU model; needs at least one group in the container. */
  setIommu(type: number): void {
    libc.ioctl(this.fd, `VFIO_SET_IOMMU(${type === VFIO_EXTENSION.TYPE1v2_IOMMU ? 'type1v2' : type === VFIO_EXTENSION.TYPE1_IOMMU ? 'type1' : type})`, VFIO.SET_IOMMU, type);
  }

  iommuInfo(): IommuInfo {
    const b = Buffer.alloc(24);
    b.writeUInt32LE(24, 0);
    libc.ioctlBuffer(this.fd, 'VFIO_IOMMU_GET_INFO', VFIO.IOMMU_GET_INFO, b);
    return { flags: b.readUInt32LE(4), pageSizes: b.readBigUInt64LE(8) };
  }

  /** Maps host memory at `vaddr` for the devices' DMA at `iova` (page-aligned, pinned by the kernel). */
  mapDma(m: DmaMapping): void {
    libc.ioctlBuffer(this.fd, `VFIO_IOMMU_MAP_DMA(iova ${hex(m.iova)}, ${hex(m.size)} bytes)`, VFIO.IOMMU_MAP_DMA, encodeDmaMap(m));
  }

  /** Unmaps a range; returns the bytes the kernel unmapped. */
  unmapDma(iova: bigint, size: number): number {
    const b = encodeDmaUnmap(iova, size);
    libc.ioctlBuffer(this.fd, `VFIO_IOMMU_UNMAP_DMA(iova ${hex(iova)}, ${hex(size)} bytes)`, VFIO.IOMMU_UNMAP_DMA, b);
    return Number(b.readBigUInt64LE(16));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    libc.close(this.fd);
  }
}

/** /dev/vfio/GROUP: the unit of isolation; its devices are opened through it. */
export class VfioGroup {
  readonly fd: number;
  readonly path: string;
  private closed = false;

  constructor(readonly id: number | string, devDir = '/dev/vfio') {
    this.path = `${devDir}/${id}`;
    this.fd = libc.open(this.path, libc.O_RDWR);
  }

  status(): GroupStatus {
    const b = Buffer.alloc(8);
    b.writeUInt32LE(8, 0);
    libc.ioctlBuffer(this.fd, `VFIO_GROUP_GET_STATUS(${this.path})`, VFIO.GROUP_GET_STATUS, b);
    return decodeGroupStatus(b);
  }

  setContainer(container: VfioContainer): void {
    const b = Buffer.alloc(4);
    b.writeInt32LE(container.fd, 0);
    libc.ioctlBuffer(this.fd, `VFIO_GROUP_SET_CONTAINER(${this.path})`, VFIO.GROUP_SET_CONTAINER, b);
  }

  unsetContainer(): void {
    libc.ioctl(this.fd, `VFIO_GROUP_UNSET_CONTAINER(${this.path})`, VFIO.GROUP_UNSET_CONTAINER);
  }

  /** A device of this group by its name (a PCI address, "0000:01:00.1"). */
  openDevice(name: string): VfioDevice {
    const b = Buffer.from(`${name}\0`, 'latin1');
    const fd = libc.ioctlBuffer(this.fd, `VFIO_GROUP_GET_DEVICE_FD(${this.path}, ${name})`, VFIO.GROUP_GET_DEVICE_FD, b);
    return new VfioDevice(fd, name);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    libc.close(this.fd);
  }
}

export interface RegionMapping {
  /** Host address of the mapping. */
  address: bigint;
  size: number;
  unmap(): void;
}

/** A device fd: its regions (BARs, ROM, config space), IRQs and reset. */
export class VfioDevice {
  private closed = false;
  private readonly regions = new Map<number, RegionInfo>();

  constructor(readonly fd: number, readonly name: string) {}

  info(): DeviceInfo {
    const b = Buffer.alloc(24);
    b.writeUInt32LE(24, 0);
    libc.ioctlBuffer(this.fd, `VFIO_DEVICE_GET_INFO(${this.name})`, VFIO.DEVICE_GET_INFO, b);
    return decodeDeviceInfo(b);
  }

  /** A region's size, offset, flags and capabilities (the reply grows to hold the capability chain). */
  regionInfo(index: number): RegionInfo {
    const call = `VFIO_DEVICE_GET_REGION_INFO(${this.name}, ${regionName(index)})`;
    let size = REGION_INFO_SIZE;
    for (let tries = 0; tries < 3; tries++) {
      const b = Buffer.alloc(size);
      b.writeUInt32LE(size, 0); b.writeUInt32LE(index, 8);
      libc.ioctlBuffer(this.fd, call, VFIO.DEVICE_GET_REGION_INFO, b);
      const needed = b.readUInt32LE(0);
      if (needed > size) {
        if (needed > 65536) throw new Error(`${call}: the kernel asks for a ${needed}-byte reply`);
        size = needed;
        continue;
      }
      const info = decodeRegionInfo(b);
      this.regions.set(index, info);
      return info;
    }
    throw new Error(`${call}: the reply kept growing`);
  }

  irqInfo(index: number): IrqInfo {
    const b = Buffer.alloc(16);
    b.writeUInt32LE(16, 0); b.writeUInt32LE(index, 8);
    libc.ioctlBuffer(this.fd, `VFIO_DEVICE_GET_IRQ_INFO(${this.name}, ${irqName(index)})`, VFIO.DEVICE_GET_IRQ_INFO, b);
    return decodeIrqInfo(b);
  }

  setIrqs(index: number, start: number, action: IrqAction, data: IrqData): void {
    const what = data.kind === 'eventfd' ? `eventfds ${data.fds.join(',')}` : data.kind === 'bool' ? `${data.values.length} bools` : `${data.count} vectors`;
    libc.ioctlBuffer(this.fd, `VFIO_DEVICE_SET_IRQS(${this.name}, ${irqName(index)} ${action} from ${start}, ${what})`,
      VFIO.DEVICE_SET_IRQS, encodeIrqSet(index, start, action, data));
  }

  /** Signals each vector `start + i` of the index (INTx, MSI, MSI-X) on `fds[i]` (-1: none). */
  enableIrqEventfds(index: number, fds: number[], start = 0): void {
    this.setIrqs(index, start, 'trigger', { kind: 'eventfd', fds });
  }

  /** Turns every vector of an index off (count 0 with DATA_NONE). */
  disableIrqs(index: number): void {
    this.setIrqs(index, 0, 'trigger', { kind: 'none', count: 0 });
  }

  /**
   * INTx is masked by the kernel when it fires (automasked); writing the returned eventfd,
   * e.g. KVM's irqfd resample eventfd, unmasks it again once the guest has serviced it.
   */
  setIntxUnmaskEventfd(fd: number): void {
    this.setIrqs(VFIO_PCI_IRQ.INTX, 0, 'unmask', { kind: 'eventfd', fds: [fd] });
  }

  unmaskIntx(): void {
    this.setIrqs(VFIO_PCI_IRQ.INTX, 0, 'unmask', { kind: 'none', count: 1 });
  }

  maskIntx(): void {
    this.setIrqs(VFIO_PCI_IRQ.INTX, 0, 'mask', { kind: 'none', count: 1 });
  }

  /** VFIO_DEVICE_RESET (a function-level or bus reset the kernel chooses). */
  reset(): void {
    libc.ioctl(this.fd, `VFIO_DEVICE_RESET(${this.name})`, VFIO.DEVICE_RESET);
  }

  private region(index: number): RegionInfo {
    return this.regions.get(index) ?? this.regionInfo(index);
  }

  private checkRange(info: RegionInfo, offset: number, length: number, what: string): void {
    if (!Number.isInteger(offset) || offset < 0 || length < 0 || offset + length > info.size) {
      throw new RangeError(`${this.name} ${regionName(info.index)}: ${what} of ${length} bytes at ${hex(offset)} is outside its ${hex(info.size)} bytes`);
    }
  }

  /** Reads `buf.length` bytes at `offset` inside a region (config space, a BAR); returns the bytes read. */
  readRegion(index: number, offset: number, buf: Uint8Array): number {
    const info = this.region(index);
    this.checkRange(info, offset, buf.length, 'read');
    return libc.pread(this.fd, buf, info.offset + offset, buf.length, `pread(${this.name} ${regionName(index)} +${hex(offset)})`);
  }

  writeRegion(index: number, offset: number, buf: Uint8Array): number {
    const info = this.region(index);
    this.checkRange(info, offset, buf.length, 'write');
    return libc.pwrite(this.fd, buf, info.offset + offset, buf.length, `pwrite(${this.name} ${regionName(index)} +${hex(offset)})`);
  }

  /** A little-endian config space read of 1, 2 or 4 bytes. */
  readConfig(offset: number, size: 1 | 2 | 4): number {
    const b = Buffer.alloc(size);
    const n = this.readRegion(VFIO_PCI_REGION.CONFIG, offset, b);
    if (n !== size) throw new Error(`pread(${this.name} config +${hex(offset)}): ${n} of ${size} bytes`);
    return size === 1 ? b[0] : size === 2 ? b.readUInt16LE(0) : b.readUInt32LE(0);
  }

  writeConfig(offset: number, size: 1 | 2 | 4, value: number): void {
    const b = Buffer.alloc(size);
    if (size === 1) b[0] = value; else if (size === 2) b.writeUInt16LE(value & 0xffff); else b.writeUInt32LE(value >>> 0);
    const n = this.writeRegion(VFIO_PCI_REGION.CONFIG, offset, b);
    if (n !== size) throw new Error(`pwrite(${this.name} config +${hex(offset)}): ${n} of ${size} bytes`);
  }

  /**
   * mmaps `size` bytes at `offset` inside a region (page-aligned, within an mmap'able part:
   * the whole region with MMAP and no sparse list, else one of the sparse areas).
   */
  mapRegion(index: number, offset = 0, size?: number, writable = true): RegionMapping {
    const info = this.region(index);
    const length = size ?? info.size - offset;
    this.checkRange(info, offset, length, 'mmap');
    if (!info.mmappable) throw new Error(`${this.name} ${regionName(index)} cannot be mmap'd`);
    if (info.sparseMmap !== null && !info.sparseMmap.some((a) => offset >= a.offset && offset + length <= a.offset + a.size)) {
      throw new Error(`${this.name} ${regionName(index)}: ${hex(offset)}+${hex(length)} is outside its mmap'able areas`);
    }
    const prot = libc.PROT_READ | (writable && info.writable ? libc.PROT_WRITE : 0);
    let address: bigint;
    try {
      address = libc.mmap(0n, length, prot, libc.MAP_SHARED, this.fd, info.offset + offset);
    } catch (e) {
      throw new libc.NativeError(`mmap(${this.name} ${regionName(index)} +${hex(offset)}, ${hex(length)} bytes)`, (e as libc.NativeError).errno);
    }
    let mapped = true;
    return {
      address, size: length,
      unmap: () => {
        if (!mapped) return;
        mapped = false;
        libc.munmap(address, length);
      },
    };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    libc.close(this.fd);
  }
}

/**
 * Opens a device for assignment the usual way: a container with the best type1 IOMMU, its
 * group (which must be viable: every device in it bound to vfio-pci or to nothing) and the
 * device fd. `close()` closes all three in reverse order.
 */
export function openVfioPciDevice(group: number | string, name: string, opts: { containerPath?: string; devDir?: string } = {}): {
  container: VfioContainer; group: VfioGroup; device: VfioDevice; iommuType: number; close(): void;
} {
  const container = new VfioContainer(opts.containerPath);
  let g: VfioGroup | null = null;
  try {
    g = new VfioGroup(group, opts.devDir);
    const status = g.status();
    if (!status.viable) throw new Error(`${g.path} is not viable: another device of IOMMU group ${group} is bound to a host driver`);
    g.setContainer(container);
    const type = container.bestType1();
    if (type === null) throw new Error(`${container.path} offers no type1 IOMMU`);
    container.setIommu(type);
    const device = g.openDevice(name);
    const gg = g;
    return {
      container, group: gg, device, iommuType: type,
      close: () => { device.close(); gg.close(); container.close(); },
    };
  } catch (e) {
    g?.close();
    container.close();
    throw e;
  }
}
