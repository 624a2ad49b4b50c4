import assert from 'node:assert/strict';
import { test } from 'node:test';
import { configureFirmware } from '../../main/vmm/boot/firmware';
import { defaultConfig } from '../../main/vmm/config';
import { FW_CFG, FW_CFG_DMA, FwCfg, u32 } from '../../main/vmm/devices/fw-cfg';
import { buildE820, E820_RAM, E820_RESERVED, encodeE820 } from '../../main/vmm/platform/e820';
import { GuestMemory, type MemoryRegion } from '../../main/vmm/memory/guest-memory';
import { DmaMemory } from '../../main/vmm/memory/dma';

const RAM_SIZE = 0x100000;
const ROM_BASE = 0x200000;

function region(guestBase: number, size: number, readonly: boolean, name: string): MemoryRegion {
  return { guestBase, size, buffer: new SharedArrayBuffer(size), offset: 0, readonly, name };
}

function setup(dma = true) {
  const memory = new GuestMemory([region(0, RAM_SIZE, false, 'ram'), region(ROM_BASE, 0x1000, true, 'rom')]);
  const fw = new FwCfg(new DmaMemory(memory), dma);
  return { memory, fw };
}

const SEL = 0;
const DATA = 1;
const DMA_HIGH = 4;
const DMA_LOW = 8;

function bswap32(v: number): number {
  return (((v & 0xff) << 24) | ((v & 0xff00) << 8) | ((v >>> 8) & 0xff00) | (v >>> 24)) >>> 0;
}

function select(fw: FwCfg, key: number): void {
  fw.write(SEL, 2, key);
}

function readBytes(fw: FwCfg, n: number): number[] {
  return Array.from({ length: n }, () => fw.read(DATA, 1));
}

/** Writes an FWCfgDmaAccess at `at` and triggers it as a guest would (outl of a big-endian value). */
function dma(fw: FwCfg, memory: GuestMemory, at: number, control: number, length: number, address: number): number {
  const d = new DataView(new ArrayBuffer(16));
  d.setUint32(0, control >>> 0, false);
  d.setUint32(4, length >>> 0, false);
  d.setUint32(8, Math.floor(address / 2 ** 32), false);
  d.setUint32(12, address >>> 0, false);
  memory.write(at, new Uint8Array(d.buffer));
  fw.write(DMA_HIGH, 4, bswap32(Math.floor(at / 2 ** 32)));
  fw.write(DMA_LOW, 4, bswap32(at >>> 0));
  return new DataView(memory.read(at, 4).buffer).getUint32(0, false);
}

test('the signature and ID are readable through the data port, one byte at a time', () => {
  const { fw } = setup();
  select(fw, FW_CFG.SIGNATURE);
  assert.equal(String.fromCharCode(...readBytes(fw, 4)), 'QEMU');
  // Past the end of an item the data port reads 0.
  assert.deepEqual(readBytes(fw, 3), [0, 0, 0]);
  select(fw, FW_CFG.ID);
  assert.deepEqual(readBytes(fw, 4), [3, 0, 0, 0]);
  const noDma = setup(false).fw;
  select(noDma, FW_CFG.ID);
  assert.deepEqual(readBytes(noDma, 4), [1, 0, 0, 0]);
});

test('selecting resets the offset; unknown keys, byte-wide selector writes and data writes are ignored', () => {
  const { fw } = setup();
  select(fw, FW_CFG.SIGNATURE);
  fw.read(DATA, 1);
  select(fw, FW_CFG.SIGNATURE);
  assert.equal(fw.read(DATA, 1), 0x51);
  fw.write(SEL, 1, FW_CFG.ID); // an 8-bit write is not a selector write
  assert.equal(fw.read(DATA, 1), 0x45);
  fw.write(DATA, 1, 0xaa); // the data port is read-only
  assert.equal(fw.read(DATA, 1), 0x4d);
  select(fw, 0x1234);
  assert.deepEqual(readBytes(fw, 2), [0, 0]);
  // The old write-channel bit does not change which item is read.
  select(fw, FW_CFG.SIGNATURE | FW_CFG.WRITE_CHANNEL);
  assert.equal(fw.read(DATA, 1), 0x51);
});

test('wide data-port reads return successive bytes in memory order', () => {
  const { fw } = setup();
  select(fw, FW_CFG.SIGNATURE);
  assert.equal(fw.read(DATA, 2), 0x4551); // 'Q','E'
  assert.equal(fw.read(DATA, 4), 0x0000554d); // 'M','U', then zeros past the end
});

test('numeric items and arch-local keys are separate entries', () => {
  const { fw } = setup();
  fw.setItem(FW_CFG.RAM_SIZE, u32(0x12345678));
  fw.setItem(FW_CFG.IRQ0_OVERRIDE, u32(1));
  select(fw, FW_CFG.RAM_SIZE);
  assert.deepEqual(readBytes(fw, 4), [0x78, 0x56, 0x34, 0x12]);
  select(fw, FW_CFG.IRQ0_OVERRIDE);
  assert.deepEqual(readBytes(fw, 2), [1, 0]);
  assert.throws(() => fw.setItem(FW_CFG.WRITE_CHANNEL | 3, u32(0)), /not a valid item key/);
});

test('the file directory is a big-endian count and 64-byte entries sorted by name', () => {
  const { fw } = setup();
  const kb = fw.addFile('etc/zzz', new Uint8Array([1, 2, 3]));
  const ka = fw.addFile('bootorder', new Uint8Array(0));
  assert.equal(kb, FW_CFG.FILE_FIRST);
  assert.equal(ka, FW_CFG.FILE_FIRST + 1);
  select(fw, FW_CFG.FILE_DIR);
  const dir = new Uint8Array(readBytes(fw, 4 + 2 * 64));
  const v = new DataView(dir.buffer);
  assert.equal(v.getUint32(0, false), 2);
  const entry = (i: number) => ({
    size: v.getUint32(4 + i * 64, false),
    select: v.getUint16(8 + i * 64, false),
    name: Buffer.from(dir.subarray(12 + i * 64, 12 + i * 64 + 56)).toString('latin1').replace(/\0+$/, ''),
  });
  assert.deepEqual(entry(0), { size: 0, select: ka, name: 'bootorder' });
  assert.deepEqual(entry(1), { size: 3, select: kb, name: 'etc/zzz' });
  // Replacing a file keeps its key and updates the size in the directory.
  assert.equal(fw.addFile('etc/zzz', new Uint8Array(7)), kb);
  select(fw, FW_CFG.FILE_DIR);
  assert.equal(new DataView(new Uint8Array(readBytes(fw, 72)).buffer).getUint32(68, false), 7); // entry 1: etc/zzz
  select(fw, kb);
  assert.deepEqual(readBytes(fw, 8), [0, 0, 0, 0, 0, 0, 0, 0]);
});

test('file names must fit the 56-byte directory field', () => {
  const { fw } = setup();
  assert.throws(() => fw.addFile('x'.repeat(56), new Uint8Array(1)), /1 to 55 bytes/);
  assert.throws(() => fw.addFile('', new Uint8Array(1)), /1 to 55 bytes/);
  fw.addFile('y'.repeat(55), new Uint8Array(1));
});

test('a DMA read with SELECT copies the item, zero-fills past its end and reports completion', () => {
  const { fw, memory } = setup();
  const key = fw.addFile('etc/data', new Uint8Array([10, 11, 12, 13, 14]));
  memory.write(0x3000, new Uint8Array(8).fill(0xee));
  const control = dma(fw, memory, 0x1000, (key << 16) | FW_CFG_DMA.SELECT | FW_CFG_DMA.READ, 8, 0x3000);
  assert.equal(control, 0);
  assert.deepEqual([...memory.read(0x3000, 8)], [10, 11, 12, 13, 14, 0, 0, 0]);
  assert.equal(fw.counters.dmaErrors.value, 0);
});

test('DMA SKIP advances the offset and a following READ continues from there', () => {
  const { fw, memory } = setup();
  const key = fw.addFile('etc/data', new Uint8Array([1, 2, 3, 4, 5, 6]));
  select(fw, key);
  assert.equal(dma(fw, memory, 0x1000, FW_CFG_DMA.SKIP, 2, 0), 0);
  assert.equal(dma(fw, memory, 0x1000, FW_CFG_DMA.READ, 3, 0x3000), 0);
  assert.deepEqual([...memory.read(0x3000, 3)], [3, 4, 5]);
  // The data port shares the offset.
  assert.equal(fw.read(DATA, 1), 6);
});

test('DMA with no operation bit transfers nothing and completes', () => {
  const { fw, memory } = setup();
  select(fw, FW_CFG.SIGNATURE);
  assert.equal(dma(fw, memory, 0x1000, 0, 4, 0x3000), 0);
  assert.equal(fw.read(DATA, 1), 0x51);
});

test('DMA WRITE only changes writable items, whole and in bounds', () => {
  const { fw, memory } = setup();
  const writes: [number, number][] = [];
  const data = new Uint8Array(4);
  const key = fw.addFile('etc/writable', data, { writable: true, onWrite: (o, l) => writes.push([o, l]) });
  const roKey = fw.addFile('etc/readonly', new Uint8Array(4));
  memory.write(0x3000, new Uint8Array([9, 8, 7, 6]));
  assert.equal(dma(fw, memory, 0x1000, (key << 16) | FW_CFG_DMA.SELECT | FW_CFG_DMA.WRITE, 4, 0x3000), 0);
  assert.deepEqual([...data], [9, 8, 7, 6]);
  assert.deepEqual(writes, [[0, 4]]);
  // Past the end of the item: error, nothing written.
  assert.equal(dma(fw, memory, 0x1000, (key << 16) | FW_CFG_DMA.SELECT | FW_CFG_DMA.WRITE, 5, 0x3000), FW_CFG_DMA.ERROR);
  assert.deepEqual(writes, [[0, 4]]);
  // A read-only item: error.
  assert.equal(dma(fw, memory, 0x1000, (roKey << 16) | FW_CFG_DMA.SELECT | FW_CFG_DMA.WRITE, 1, 0x3000), FW_CFG_DMA.ERROR);
  assert.deepEqual([...(fw.itemData('etc/readonly') as Uint8Array)], [0, 0, 0, 0]);
  assert.equal(fw.counters.dmaErrors.value, 2);
});

test('DMA targets outside guest memory or in ROM set the error bit and touch nothing', () => {
  const { fw, memory } = setup();
  const key = fw.addFile('etc/data', new Uint8Array(64).fill(0x5a));
  const read = (key << 16) | FW_CFG_DMA.SELECT | FW_CFG_DMA.READ;
  assert.equal(dma(fw, memory, 0x1000, read, 16, RAM_SIZE - 8), FW_CFG_DMA.ERROR); // straddles the end of RAM
  assert.equal(dma(fw, memory, 0x1000, read, 16, 0xfffff000_0000), FW_CFG_DMA.ERROR);
  assert.equal(dma(fw, memory, 0x1000, read, 0xffffffff, 0), FW_CFG_DMA.ERROR);
  assert.equal(dma(fw, memory, 0x1000, read, 16, ROM_BASE), FW_CFG_DMA.ERROR); // read-only
  assert.deepEqual([...memory.read(ROM_BASE, 16)], new Array(16).fill(0));
  assert.deepEqual([...memory.read(RAM_SIZE - 8, 8)], new Array(8).fill(0));
  assert.equal(fw.counters.dmaErrors.value, 4);
});

test('a descriptor outside guest memory or in ROM is ignored without throwing', () => {
  const { fw, memory } = setup();
  fw.write(DMA_HIGH, 4, bswap32(0x10));
  fw.write(DMA_LOW, 4, bswap32(0));
  fw.write(DMA_HIGH, 4, 0);
  fw.write(DMA_LOW, 4, bswap32(RAM_SIZE - 4));
  fw.write(DMA_LOW, 4, bswap32(ROM_BASE)); // readable (zeros: no-op) but the status cannot be written
  assert.equal(fw.counters.dmaTransfers.value, 3);
  assert.equal(fw.counters.dmaErrors.value, 2);
  assert.deepEqual([...memory.read(ROM_BASE, 16)], new Array(16).fill(0));
});

test('the high address half is consumed by each transfer', () => {
  const { fw, memory } = setup();
  select(fw, FW_CFG.SIGNATURE);
  fw.write(DMA_HIGH, 4, bswap32(1));
  fw.write(DMA_LOW, 4, bswap32(0x1000)); // 4 GiB + 0x1000: outside
  assert.equal(fw.counters.dmaErrors.value, 1);
  assert.equal(dma(fw, memory, 0x1000, FW_CFG_DMA.READ, 4, 0x3000), 0); // high half is 0 again
  assert.equal(Buffer.from(memory.read(0x3000, 4)).toString('latin1'), 'QEMU');
});

test('reading the DMA register returns the "QEMU CFG" signature', () => {
  const { fw } = setup();
  assert.equal(fw.read(DMA_HIGH, 4), 0x554d4551);
  assert.equal(fw.read(DMA_LOW, 4), 0x47464320);
  assert.equal(setup(false).fw.read(DMA_HIGH, 4), 0);
});

test('with DMA disabled, DMA register writes do nothing', () => {
  const { fw, memory } = setup(false);
  select(fw, FW_CFG.SIGNATURE);
  const d = new DataView(new ArrayBuffer(16));
  d.setUint32(0, FW_CFG_DMA.READ, false);
  d.setUint32(4, 4, false);
  d.setUint32(12, 0x3000, false);
  memory.write(0x1000, new Uint8Array(d.buffer));
  fw.write(DMA_LOW, 4, bswap32(0x1000));
  assert.equal(fw.counters.dmaTransfers.value, 0);
  assert.deepEqual([...memory.read(0x3000, 4)], [0, 0, 0, 0]);
});

// --- what the firmware boot puts in fw_cfg ---------------------------------------------


/** A GuestMemory stand-in with only the region list (buildE820 needs nothing else). */
function layoutOnly(regions: { guestBase: number; size: number; readonly: boolean }[]): GuestMemory {
  return {
    regions,
    ramRanges: () => regions.filter((r) => !r.readonly).map((r) => ({ base: r.guestBase, size: r.size })),
  } as unknown as GuestMemory;
}

test('buildE820: low RAM to the EBDA, BIOS area reserved, RAM from 1 MiB, ROM and KVM pages reserved, high RAM', () => {
  const GiB = 1024 ** 3;
  const map = buildE820(layoutOnly([
    { guestBase: 0, size: 3 * GiB, readonly: false },
    { guestBase: 4 * GiB, size: 2 * GiB, readonly: false },
    { guestBase: 6 * GiB, size: GiB, readonly: false },
    { guestBase: 4 * GiB - 0x40000, size: 0x40000, readonly: true },
  ]));
  assert.deepEqual(map, [
    { addr: 0, size: 0x9fc00, type: E820_RAM },
    { addr: 0x9fc00, size: 0x400, type: E820_RESERVED },
    { addr: 0xe0000, size: 0x20000, type: E820_RESERVED },
    { addr: 0x100000, size: 3 * GiB - 0x100000, type: E820_RAM },
    { addr: 0xfeffc000, size: 0x4000, type: E820_RESERVED },
    { addr: 4 * GiB - 0x40000, size: 0x40000, type: E820_RESERVED },
    { addr: 4 * GiB, size: 2 * GiB, type: E820_RAM },
    { addr: 6 * GiB, size: GiB, type: E820_RAM },
  ]);
  const encoded = new DataView(encodeE820(map.slice(6, 7)).buffer);
  assert.equal(encoded.byteLength, 20);
  assert.equal(encoded.getBigUint64(0, true), BigInt(4 * GiB));
  assert.equal(encoded.getBigUint64(8, true), BigInt(2 * GiB));
  assert.equal(encoded.getUint32(16, true), E820_RAM);
});

test('the firmware items: RAM, CPUs, e820, boot files, option ROMs; sercon only with COM1 connected', () => {
  const { fw, memory } = setup();
  const config = { ...defaultConfig(), memoryBytes: 0x100000, cpus: 3 };
  const rom = new Uint8Array(512);
  rom.set([0x55, 0xaa, 1]);
  configureFirmware(fw, { config, memory, optionRoms: [{ name: 'x.bin', data: rom }] });
  const u = (key: number, n: number) => {
    select(fw, key);
    return readBytes(fw, n).reduce((v, b, i) => v + b * 2 ** (8 * i), 0);
  };
  assert.equal(u(FW_CFG.RAM_SIZE, 8), 0x100000);
  assert.equal(u(FW_CFG.NB_CPUS, 2), 3);
  assert.equal(u(FW_CFG.MAX_CPUS, 2), 3);
  assert.equal(u(FW_CFG.BOOT_MENU, 2), 0);
  assert.equal(u(FW_CFG.NOGRAPHIC, 2), 0);
  assert.equal(u(FW_CFG.IRQ0_OVERRIDE, 1), 1);
  assert.equal((fw.itemData(FW_CFG.NUMA) as Uint8Array).length, 8 * 4);
  assert.deepEqual(fw.fileNames(), ['bootorder', 'etc/boot-fail-wait', 'etc/e820', 'genroms/x.bin']);
  assert.deepEqual(fw.itemData('genroms/x.bin'), rom);
  // etc/e820: RAM entries and nothing reserved below 1 MiB (the firmware owns that part).
  const e820 = fw.itemData('etc/e820') as Uint8Array;
  const v = new DataView(e820.buffer, e820.byteOffset, e820.length);
  const entries = Array.from({ length: e820.length / 20 }, (_, i) => [Number(v.getBigUint64(i * 20, true)), Number(v.getBigUint64(i * 20 + 8, true)), v.getUint32(i * 20 + 16, true)]);
  assert.deepEqual(entries, [[0, 0x9fc00, 1], [ROM_BASE, 0x1000, 2], [0xfeffc000, 0x4000, 2]]);

  const withCom1 = setup().fw;
  const serial = config.serial.slice();
  serial[0] = { kind: 'stdio' };
  configureFirmware(withCom1, { config: { ...config, serial }, memory, optionRoms: [] });
  assert.deepEqual([...(withCom1.itemData('etc/sercon-port') as Uint8Array)], [0xf8, 0x03]);
});
