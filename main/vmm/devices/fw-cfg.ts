// QEMU's firmware configuration interface (fw_cfg), as SeaBIOS and Linux's qemu_fw_cfg
// driver use it: a 16-bit selector at 0x510, an 8-bit auto-incrementing data port at
// 0x511, and the DMA interface at 0x514 (big-endian address, high half then low half;
// writing the low half runs the transfer synchronously).
import { counter, type Counter, type DeviceFactory, type IoDevice, privateStatistics } from './device';
import { DMA_OK, DmaMemory } from '../memory/dma';
import type { StatsRegistry } from '../shared/stats';
import { FW_CFG_PORT_SEL } from '../platform/layout';

export const FW_CFG = {
  SIGNATURE: 0x00,
  ID: 0x01,
  UUID: 0x02,
  RAM_SIZE: 0x03,
  NOGRAPHIC: 0x04,
  NB_CPUS: 0x05,
  MACHINE_ID: 0x06,
  KERNEL_ADDR: 0x07,
  KERNEL_SIZE: 0x08,
  KERNEL_CMDLINE: 0x09,
  INITRD_ADDR: 0x0a,
  INITRD_SIZE: 0x0b,
  BOOT_DEVICE: 0x0c,
  NUMA: 0x0d,
  BOOT_MENU: 0x0e,
  MAX_CPUS: 0x0f,
  KERNEL_ENTRY: 0x10,
  KERNEL_DATA: 0x11,
  INITRD_DATA: 0x12,
  CMDLINE_ADDR: 0x13,
  CMDLINE_SIZE: 0x14,
  CMDLINE_DATA: 0x15,
  SETUP_ADDR: 0x16,
  SETUP_SIZE: 0x17,
  SETUP_DATA: 0x18,
  FILE_DIR: 0x19,
  FILE_FIRST: 0x20,
  /** Selector bit that once meant "write"; ignored for lookup, as in QEMU. */
  WRITE_CHANNEL: 0x4000,
  ARCH_LOCAL: 0x8000,
  ACPI_TABLES: 0x8000,
  SMBIOS_ENTRIES: 0x8001,
  IRQ0_OVERRIDE: 0x8002,
  E820_TABLE: 0x8003,
} as const;

/** FWCfgDmaAccess.control bits. */
export const FW_CFG_DMA = { ERROR: 0x01, READ: 0x02, SKIP: 0x04, SELECT: 0x08, WRITE: 0x10 } as const;

/** ID bits: traditional interface, DMA interface. */
export const FW_CFG_VERSION = 0x01;
export const FW_CFG_VERSION_DMA = 0x02;

/** Key range files may use (the selector's index field is 14 bits). */
const MAX_FILE_KEY = 0x3fff;
export const FW_CFG_MAX_FILE_NAME = 55;
const DIR_ENTRY_SIZE = 64;
const DMA_ACCESS_SIZE = 16;
/** What a read of the DMA address register returns: "QEMU CFG" in memory order. */
const DMA_SIGNATURE = new TextEncoder().encode('QEMU CFG');

export interface FwCfgItem {
  data: Uint8Array;
  /** Writable through DMA WRITE (only whole, in-bounds writes). */
  writable: boolean;
  /** Called after a successful DMA write into the item. */
  onWrite?: (offset: number, length: number) => void;
}

/** Port layout relative to FW_CFG_PORT_SEL: selector 0..1, data 1, DMA address 4..11. */
export const FW_CFG_PORT_SPAN = 12;

export class FwCfg implements IoDevice {
  readonly name = 'fw-cfg';
  private readonly items = new Map<number, FwCfgItem>();
  private readonly files = new Map<string, number>();
  private nextFileKey: number = FW_CFG.FILE_FIRST;
  private selected: FwCfgItem | null = null;
  private selectedKey = 0;
  private offset = 0;
  private dmaAddressHigh = 0;
  /** DMA transfers run, and those that ended with the error bit. */
  readonly counters: { dmaTransfers: Counter; dmaErrors: Counter };

  /** `dma` is how transfers reach guest memory (bounds-checked, error values). */
  constructor(
    private readonly dma: DmaMemory, private readonly dmaEnabled = true,
    statistics: StatsRegistry = privateStatistics(),
  ) {
    this.counters = {
      dmaTransfers: counter(statistics, this.name, 'dma-transfers'),
      dmaErrors: counter(statistics, this.name, 'dma-errors'),
    };
    this.setItem(FW_CFG.SIGNATURE, new TextEncoder().encode('QEMU'));
    this.setItem(FW_CFG.ID, u32(FW_CFG_VERSION | (dmaEnabled ? FW_CFG_VERSION_DMA : 0)));
    this.rebuildDirectory();
  }

  // --- host side --------------------------------------------------------------

  /** Sets a numeric (legacy) item. */
  setItem(key: number, data: Uint8Array, writable = false): void {
    if (!Number.isInteger(key) || key < 0 || key > 0xffff || (key & FW_CFG.WRITE_CHANNEL) !== 0) {
      throw new Error(`fw_cfg key 0x${key.toString(16)} is not a valid item key`);
    }
    this.items.set(key, { data, writable });
  }

  /**
   * Adds or replaces a named file; returns its selector key. Names are at most 55
   * bytes (the directory entry holds 56 with the terminating NUL).
   */
  addFile(name: string, data: Uint8Array, opts: { writable?: boolean; onWrite?: FwCfgItem['onWrite'] } = {}): number {
    const nameBytes = new TextEncoder().encode(name);
    if (nameBytes.length === 0 || nameBytes.length > FW_CFG_MAX_FILE_NAME || nameBytes.includes(0)) {
      throw new Error(`fw_cfg file name "${name}" must be 1 to ${FW_CFG_MAX_FILE_NAME} bytes with no NUL`);
    }
    let key = this.files.get(name);
    if (key === undefined) {
      if (this.nextFileKey > MAX_FILE_KEY) throw new Error(`fw_cfg has no room for file "${name}"`);
      key = this.nextFileKey++;
      this.files.set(name, key);
    }
    this.items.set(key, { data, writable: opts.writable ?? false, onWrite: opts.onWrite });
    this.rebuildDirectory();
    return key;
  }

  fileKey(name: string): number | undefined {
    return this.files.get(name);
  }

  fileNames(): string[] {
    return [...this.files.keys()].sort();
  }

  /** The current contents of an item (files by name or numeric keys). */
  itemData(keyOrName: number | string): Uint8Array | undefined {
    const key = typeof keyOrName === 'string' ? this.files.get(keyOrName) : keyOrName;
    return key === undefined ? undefined : this.items.get(key)?.data;
  }

  /** FW_CFG_FILE_DIR: a big-endian count, then 64-byte entries sorted by name. */
  private rebuildDirectory(): void {
    const names = this.fileNames();
    const dir = new Uint8Array(4 + names.length * DIR_ENTRY_SIZE);
    const view = new DataView(dir.buffer);
    view.setUint32(0, names.length, false);
    const encoder = new TextEncoder();
    names.forEach((name, i) => {
      const o = 4 + i * DIR_ENTRY_SIZE;
      const key = this.files.get(name) as number;
      view.setUint32(o, (this.items.get(key) as FwCfgItem).data.length, false);
      view.setUint16(o + 4, key, false);
      dir.set(encoder.encode(name), o + 8);
    });
    this.items.set(FW_CFG.FILE_DIR, { data: dir, writable: false });
    // A guest reading the directory keeps reading the new one from its offset.
    if (this.selectedKey === FW_CFG.FILE_DIR) this.selected = this.items.get(FW_CFG.FILE_DIR) ?? null;
  }

  // --- guest side --------------------------------------------------------------

  private select(key: number): void {
    this.selectedKey = key & ~FW_CFG.WRITE_CHANNEL;
    this.selected = this.items.get(this.selectedKey) ?? null;
    this.offset = 0;
  }

  /** Reads one byte of the selected item; past the end (or with nothing selected) it is 0. */
  private readDataByte(): number {
    const item = this.selected;
    if (item === null || this.offset >= item.data.length) return 0;
    return item.data[this.offset++];
  }

  read(offset: number, size: number): number {
    if (offset === 1) {
      // Wider reads of the data port return successive bytes in memory order.
      let v = 0;
      for (let i = 0; i < size; i++) v += this.readDataByte() * 2 ** (8 * i);
      return v;
    }
    if (offset >= 4 && offset < 12 && this.dmaEnabled) {
      let v = 0;
      for (let i = 0; i < size; i++) {
        const at = offset - 4 + i;
        v += (at < 8 ? DMA_SIGNATURE[at] : 0) * 2 ** (8 * i);
      }
      return v;
    }
    return 0;
  }

  write(offset: number, size: number, value: number): void {
    if (offset === 0 && size === 2) {
      this.select(value & 0xffff);
      return;
    }
    // Data port writes are ignored (QEMU >= 2.4); only DMA can write.
    if (!this.dmaEnabled || size !== 4) return;
    if (offset === 4) {
      this.dmaAddressHigh = bswap32(value);
    } else if (offset === 8) {
      const address = this.dmaAddressHigh * 0x100000000 + bswap32(value);
      this.dmaAddressHigh = 0;
      this.runDma(address);
    }
  }

  /** Runs one FWCfgDmaAccess at guest address `address`. Never throws on guest input. */
  private runDma(address: number): void {
    this.counters.dmaTransfers.add();
    const dma = this.dma;
    const descriptor = this.descriptor;
    if (dma.read(address, descriptor) !== DMA_OK) {
      // The descriptor itself is unreachable: nothing to report the error in.
      this.counters.dmaErrors.add();
      return;
    }
    const view = this.descriptorView;
    const control = view.getUint32(0, false);
    let length = view.getUint32(4, false);
    const target = view.getUint32(8, false) * 0x100000000 + view.getUint32(12, false);

    if (control & FW_CFG_DMA.SELECT) this.select(control >>> 16);
    let op: 'read' | 'write' | 'skip' | null;
    if (control & FW_CFG_DMA.READ) op = 'read';
    else if (control & FW_CFG_DMA.WRITE) op = 'write';
    else if (control & FW_CFG_DMA.SKIP) op = 'skip';
    else op = null;
    if (op === null) length = 0;

    const ok = length === 0 || op === null ? true : this.transfer(op, target, length);
    if (!ok) this.counters.dmaErrors.add();
    // The status goes in the control field, big-endian. A descriptor in ROM cannot take
    // it (the write is refused); the guest then sees no completion.
    const status = this.status;
    status[0] = 0; status[1] = 0; status[2] = 0; status[3] = ok ? 0 : FW_CFG_DMA.ERROR;
    dma.write(address, status);
  }

  private readonly descriptor = new Uint8Array(DMA_ACCESS_SIZE);
  private readonly descriptorView = new DataView(this.descriptor.buffer);
  private readonly status = new Uint8Array(4);

  /** Moves `length` bytes between the selected item and guest memory at `target`. */
  private transfer(op: 'read' | 'write' | 'skip', target: number, length: number): boolean {
    const item = this.selected;
    const available = item === null ? 0 : Math.max(0, item.data.length - this.offset);
    const fromItem = Math.min(length, available);
    if (op === 'skip') {
      this.offset += fromItem;
      return true;
    }
    const dma = this.dma;
    if (op === 'read') {
      // All or nothing: the whole target must be writable guest memory.
      if (dma.check(target, length, true) !== DMA_OK) return false;
      if (item !== null && fromItem > 0) dma.write(target, item.data.subarray(this.offset, this.offset + fromItem));
      // Past the end of the item the guest reads zeros.
      dma.fill(target + fromItem, length - fromItem, 0);
      this.offset += fromItem;
      return true;
    }
    // Writes must fit entirely inside a writable item.
    if (item === null || !item.writable || fromItem !== length) return false;
    const at = this.offset;
    if (dma.read(target, item.data.subarray(at, at + length)) !== DMA_OK) return false;
    this.offset += length;
    item.onWrite?.(at, length);
    return true;
  }
}

function bswap32(v: number): number {
  return (((v & 0xff) << 24) | ((v & 0xff00) << 8) | ((v >>> 8) & 0xff00) | ((v >>> 24) & 0xff)) >>> 0;
}

export function u16(v: number): Uint8Array {
  const b = new Uint8Array(2);
  new DataView(b.buffer).setUint16(0, v, true);
  return b;
}

export function u32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0, true);
  return b;
}

export function u64(v: number | bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(v), true);
  return b;
}

export const fwCfgDevice: DeviceFactory = (ctx) => {
  const fwCfg = new FwCfg(new DmaMemory(ctx.memory), true, ctx.statistics);
  return { name: fwCfg.name, instance: fwCfg, pio: [{ base: FW_CFG_PORT_SEL, length: FW_CFG_PORT_SPAN, io: fwCfg }], counters: fwCfg.counters };
};
