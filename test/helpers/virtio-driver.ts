// A small virtio 1.x driver for host-side tests: it finds the structures through the vendor
// capabilities, negotiates features, lays out split queues in a guest memory of its own, and
// submits descriptor chains through BAR 0 as a guest driver would. It also lets a test write
// whatever it likes into the rings (the fuzz test's broken chains).
import { GuestMemory, type MemoryRegion } from '../../main/vmm/memory/guest-memory';
import { PCI_CAP_ID, PCI_CFG, PCI_COMMAND, type PciDevice, type PciFunctionBus } from '../../main/vmm/devices/pci/pci-device';
import { COMMON, VIRTIO_BAR_LAYOUT, VIRTIO_STATUS, type VirtioPciDevice } from '../../main/vmm/devices/virtio/virtio-pci';

export const RAM_BYTES = 16 * 1024 * 1024;

/** A guest memory of one RAM region at 0, and a bus that records interrupts. */
export class TestBus implements PciFunctionBus {
  readonly region: MemoryRegion = { guestBase: 0, size: RAM_BYTES, buffer: new SharedArrayBuffer(RAM_BYTES), offset: 0, readonly: false, name: 'ram' };
  readonly memory = new GuestMemory([this.region]);
  readonly ram = new Uint8Array(this.region.buffer);
  readonly view = new DataView(this.region.buffer);
  readonly msis: { addressLo: number; data: number }[] = [];
  intx = false;

  signalMsi(addressLo: number, _addressHi: number, data: number): void {
    this.msis.push({ addressLo, data });
  }
  setIntx(_device: PciDevice, _pin: number, level: boolean): void {
    this.intx = level;
  }
}

export interface QueueLayout {
  size: number;
  desc: number;
  avail: number;
  used: number;
}

export class VirtioTestDriver {
  private readonly queues = new Map<number, QueueLayout & { nextAvail: number }>();

  /** `bus`: the guest memory to use (one another thread was given too). */
  constructor(readonly device: VirtioPciDevice, readonly bus = new TestBus()) {
    device.bus = this.bus;
    device.writeConfig(PCI_CFG.COMMAND, 2, PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
  }

  /** The vendor capabilities: cfg_type → { bar, offset, length, at }. */
  capabilities(): Map<number, { bar: number; offset: number; length: number; at: number }> {
    const caps = new Map<number, { bar: number; offset: number; length: number; at: number }>();
    const d = this.device;
    let at = d.readConfig(PCI_CFG.CAPABILITY_LIST, 1);
    for (let hops = 0; at !== 0 && hops < 48; hops++) {
      if (d.readConfig(at, 1) === PCI_CAP_ID.VENDOR) {
        caps.set(d.readConfig(at + 3, 1), { bar: d.readConfig(at + 4, 1), offset: d.readConfig(at + 8, 4), length: d.readConfig(at + 12, 4), at });
      }
      at = d.readConfig(at + 1, 1);
    }
    return caps;
  }

  read(offset: number, size: number): number {
    return this.device.bar0.read(offset, size);
  }
  write(offset: number, size: number, value: number): void {
    this.device.bar0.write(offset, size, value);
  }

  get status(): number {
    return this.read(COMMON.DEVICE_STATUS, 1);
  }

  /** Resets, acknowledges, offers `features` (low, high halves) and returns whether FEATURES_OK stuck. */
  negotiate(low: number, high = 1): boolean {
    this.write(COMMON.DEVICE_STATUS, 1, 0);
    this.write(COMMON.DEVICE_STATUS, 1, VIRTIO_STATUS.ACKNOWLEDGE);
    this.write(COMMON.DEVICE_STATUS, 1, VIRTIO_STATUS.ACKNOWLEDGE | VIRTIO_STATUS.DRIVER);
    this.write(COMMON.DRIVER_FEATURE_SELECT, 4, 0);
    this.write(COMMON.DRIVER_FEATURE, 4, low >>> 0);
    this.write(COMMON.DRIVER_FEATURE_SELECT, 4, 1);
    this.write(COMMON.DRIVER_FEATURE, 4, high >>> 0);
    this.write(COMMON.DEVICE_STATUS, 1, VIRTIO_STATUS.ACKNOWLEDGE | VIRTIO_STATUS.DRIVER | VIRTIO_STATUS.FEATURES_OK);
    return (this.status & VIRTIO_STATUS.FEATURES_OK) !== 0;
  }

  offered(): [number, number] {
    this.write(COMMON.DEVICE_FEATURE_SELECT, 4, 0);
    const low = this.read(COMMON.DEVICE_FEATURE, 4);
    this.write(COMMON.DEVICE_FEATURE_SELECT, 4, 1);
    return [low, this.read(COMMON.DEVICE_FEATURE, 4)];
  }

  /** Programs queue `index` at `base` (desc, then avail, then used 4 KiB later), enables it. */
  setupQueue(index: number, size: number, base: number, msixVector?: number): QueueLayout {
    const layout = { size, desc: base, avail: base + 16 * size, used: (base + 16 * size + 6 + 2 * size + 4095) & ~4095 };
    this.write(COMMON.QUEUE_SELECT, 2, index);
    this.write(COMMON.QUEUE_SIZE, 2, size);
    if (msixVector !== undefined) this.write(COMMON.QUEUE_MSIX_VECTOR, 2, msixVector);
    for (const [reg, address] of [[COMMON.QUEUE_DESC, layout.desc], [COMMON.QUEUE_DRIVER, layout.avail], [COMMON.QUEUE_DEVICE, layout.used]]) {
      this.write(reg, 4, address);
      this.write(reg + 4, 4, 0);
    }
    this.write(COMMON.QUEUE_ENABLE, 2, 1);
    this.queues.set(index, { ...layout, nextAvail: 0 });
    return layout;
  }

  driverOk(): void {
    this.write(COMMON.DEVICE_STATUS, 1, VIRTIO_STATUS.ACKNOWLEDGE | VIRTIO_STATUS.DRIVER | VIRTIO_STATUS.FEATURES_OK | VIRTIO_STATUS.DRIVER_OK);
  }

  writeDesc(table: number, i: number, address: number, length: number, flags: number, next: number): void {
    const v = this.bus.view;
    const at = table + 16 * i;
    v.setUint32(at, address % 0x100000000, true);
    v.setUint32(at + 4, Math.floor(address / 0x100000000), true);
    v.setUint32(at + 8, length >>> 0, true);
    v.setUint16(at + 12, flags, true);
    v.setUint16(at + 14, next, true);
  }

  /** Makes `head` available on queue `index` and (unless told not to) notifies. */
  submit(index: number, head: number, notify = true): void {
    const q = this.queue(index);
    const v = this.bus.view;
    v.setUint16(q.avail + 4 + 2 * (q.nextAvail % q.size), head, true);
    q.nextAvail = (q.nextAvail + 1) & 0xffff;
    v.setUint16(q.avail + 2, q.nextAvail, true);
    if (notify) this.notify(index);
  }

  notify(index: number): void {
    this.write(VIRTIO_BAR_LAYOUT.notify + VIRTIO_BAR_LAYOUT.notifyMultiplier * index, 2, index);
  }

  usedIdx(index: number): number {
    return this.bus.view.getUint16(this.queue(index).used + 2, true);
  }

  used(index: number, n: number): { id: number; len: number } {
    const q = this.queue(index);
    const at = q.used + 4 + 8 * (n % q.size);
    return { id: this.bus.view.getUint32(at, true), len: this.bus.view.getUint32(at + 4, true) };
  }

  queue(index: number): QueueLayout & { nextAvail: number } {
    const q = this.queues.get(index);
    if (!q) throw new Error(`queue ${index} was not set up`);
    return q;
  }

  /** Programs MSI-X vector `v` (address 0xfee00000, data `data`), unmasked, and enables MSI-X. */
  enableMsix(vectors: { vector: number; data: number }[]): void {
    const msix = this.device.msix;
    for (const { vector, data } of vectors) {
      msix.writeTable(vector * 16, 4, 0xfee00000);
      msix.writeTable(vector * 16 + 4, 4, 0);
      msix.writeTable(vector * 16 + 8, 4, data);
      msix.writeTable(vector * 16 + 12, 4, 0);
    }
    const control = this.device.readConfig(msix.offset + 2, 2);
    this.device.writeConfig(msix.offset + 2, 2, control | 0x8000);
  }
}

/** Writes a virtio-blk request header at `at`. */
export function writeBlkHeader(bus: TestBus, at: number, type: number, sector: number): void {
  bus.view.setUint32(at, type, true);
  bus.view.setUint32(at + 4, 0, true);
  bus.view.setUint32(at + 8, sector % 0x100000000, true);
  bus.view.setUint32(at + 12, Math.floor(sector / 0x100000000), true);
}
