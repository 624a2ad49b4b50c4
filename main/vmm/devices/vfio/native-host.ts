// The production VfioPciHost: a VFIO device fd the VM host opened (native/vfio.ts). Config and
// BAR accesses are pread/pwrite on the fd; a failing one (the device went away) reads as all
// ones and drops writes, logged once, so a guest access never throws out of the exit handler.
import { VFIO_PCI_IRQ, VFIO_PCI_REGION, type RegionInfo, type VfioDevice } from '../../../../native/vfio';
import { allOnes } from '../io-device';
import type { VfioPciHost } from './vfio-pci';

export class NativeVfioPciHost implements VfioPciHost {
  private readonly buf = Buffer.alloc(4);
  private readonly infos = new Map<number, RegionInfo | null>();
  private failed = false;

  constructor(readonly device: VfioDevice, private readonly log: (text: string) => void) {}

  private info(index: number): RegionInfo | null {
    if (!this.infos.has(index)) {
      let info: RegionInfo | null = null;
      try {
        info = this.device.regionInfo(index);
      } catch {
        info = null;
      }
      this.infos.set(index, info);
    }
    return this.infos.get(index) ?? null;
  }

  private fail(e: unknown): void {
    if (this.failed) return;
    this.failed = true;
    this.log(`${this.device.name}: host access failed (${(e as Error).message}); reads give all ones from now on where they fail`);
  }

  private read(index: number, offset: number, size: 1 | 2 | 4): number {
    const b = this.buf.subarray(0, size);
    try {
      if (this.device.readRegion(index, offset, b) !== size) return allOnes(size);
    } catch (e) {
      this.fail(e);
      return allOnes(size);
    }
    return size === 1 ? b[0] : size === 2 ? b.readUInt16LE(0) : b.readUInt32LE(0);
  }

  private write(index: number, offset: number, size: 1 | 2 | 4, value: number): void {
    const b = this.buf.subarray(0, size);
    if (size === 1) b[0] = value & 0xff; else if (size === 2) b.writeUInt16LE(value & 0xffff); else b.writeUInt32LE(value >>> 0);
    try {
      this.device.writeRegion(index, offset, b);
    } catch (e) {
      this.fail(e);
    }
  }

  readConfig(offset: number, size: 1 | 2 | 4): number { return this.read(VFIO_PCI_REGION.CONFIG, offset, size); }
  writeConfig(offset: number, size: 1 | 2 | 4, value: number): void { this.write(VFIO_PCI_REGION.CONFIG, offset, size, value); }

  regionSize(index: number): number {
    const info = this.info(index);
    return info !== null && (info.readable || info.writable) ? info.size : 0;
  }

  readRegion(index: number, offset: number, size: 1 | 2 | 4): number { return this.read(index, offset, size); }
  writeRegion(index: number, offset: number, size: 1 | 2 | 4, value: number): void { this.write(index, offset, size, value); }

  setIntx(fds: { trigger: number; unmask: number } | null): void {
    if (fds === null) {
      this.device.disableIrqs(VFIO_PCI_IRQ.INTX);
      return;
    }
    this.device.enableIrqEventfds(VFIO_PCI_IRQ.INTX, [fds.trigger]);
    if (fds.unmask >= 0) this.device.setIntxUnmaskEventfd(fds.unmask);
  }

  setMsix(fds: number[] | null): void {
    if (fds === null) this.device.disableIrqs(VFIO_PCI_IRQ.MSIX);
    else this.device.enableIrqEventfds(VFIO_PCI_IRQ.MSIX, fds);
  }

  setMsi(fds: number[] | null): void {
    if (fds === null) this.device.disableIrqs(VFIO_PCI_IRQ.MSI);
    else this.device.enableIrqEventfds(VFIO_PCI_IRQ.MSI, fds);
  }

  mmapAreas(index: number): { offset: number; size: number }[] {
    const info = this.info(index);
    if (info === null || !info.mmappable) return [];
    return info.sparseMmap ?? [{ offset: 0, size: info.size }];
  }

  mapRegion(index: number, offset: number, size: number): { address: bigint; unmap(): void } {
    return this.device.mapRegion(index, offset, size);
  }

  /** Turns off whatever interrupts an earlier launch left on (a VM reset), each on its own. */
  quiesce(): void {
    for (const index of [VFIO_PCI_IRQ.MSIX, VFIO_PCI_IRQ.MSI, VFIO_PCI_IRQ.INTX]) {
      try {
        this.device.disableIrqs(index);
      } catch {
        // Not enabled: VFIO refuses to disable another type than the active one.
      }
    }
  }
}
