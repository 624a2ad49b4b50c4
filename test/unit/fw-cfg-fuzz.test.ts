import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FW_CFG, FW_CFG_DMA, FwCfg } from '../../main/vmm/devices/fw-cfg';
import { GuestMemory, type MemoryRegion } from '../../main/vmm/memory/guest-memory';
import { DmaMemory } from '../../main/vmm/memory/dma';
import { fuzzCases } from '../helpers/prng';

/** xorshift32: a small seeded PRNG so a failure replays exactly. */
function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x;
  };
}

function region(guestBase: number, size: number, readonly: boolean, name: string): MemoryRegion {
  return { guestBase, size, buffer: new SharedArrayBuffer(size), offset: 0, readonly, name };
}

for (const seed of [1, 0xdecafbad, 20240229]) {
  test(`fw_cfg survives random port and DMA traffic (seed ${seed})`, () => {
    const next = prng(seed);
    const ramSize = 0x40000;
    const romBase = 0xfffc0000;
    const rom = region(romBase, 0x1000, true, 'rom');
    new Uint8Array(rom.buffer).fill(0xa5);
    const memory = new GuestMemory([region(0, ramSize, false, 'ram'), rom]);
    const fw = new FwCfg(new DmaMemory(memory));
    const writable = new Uint8Array(32);
    fw.addFile('etc/e820', new Uint8Array(40).fill(1));
    fw.addFile('etc/writable', writable, { writable: true });
    fw.addFile('genroms/x.bin', new Uint8Array(600).fill(7));
    const frozen = ['etc/e820', 'genroms/x.bin'].map((n) => [n, (fw.itemData(n) as Uint8Array).slice()] as const);
    const keys = [FW_CFG.SIGNATURE, FW_CFG.ID, FW_CFG.FILE_DIR, 0x20, 0x21, 0x22, 0x23, 0x3fff, 0x8000, 0xffff];
    // Addresses a hostile guest might use: inside RAM, at its edges, ROM, far away, unsafe.
    const address = (): number => {
      switch (next() % 6) {
        case 0: return next() % ramSize;
        case 1: return ramSize - (next() % 32);
        case 2: return romBase + (next() % 0x1000);
        case 3: return next() * 2 ** 20 + next();
        case 4: return 2 ** 64 - 1 - (next() % 4096);
        default: return next() % 64;
      }
    };

    for (let i = 0, n = fuzzCases(20000); i < n; i++) {
      const op = next() % 8;
      if (op === 0) fw.write(0, 2, keys[next() % keys.length] | (next() % 2 ? FW_CFG.WRITE_CHANNEL : 0));
      else if (op === 1) {
        const v = fw.read(1, [1, 2, 4][next() % 3]);
        assert.ok(Number.isInteger(v) && v >= 0 && v <= 0xffffffff);
      } else if (op === 2) fw.write(next() % 12, [1, 2, 4][next() % 3], next());
      else if (op === 3) fw.read(next() % 12, [1, 2, 4][next() % 3]);
      else {
        // Put a random descriptor somewhere in RAM and point the DMA register at it (or anywhere).
        const at = next() % (ramSize - 16);
        const d = new DataView(new ArrayBuffer(16));
        const control = (keys[next() % keys.length] << 16) | (next() & 0x1f) | (next() % 4 === 0 ? FW_CFG_DMA.ERROR : 0);
        d.setUint32(0, control >>> 0, false);
        d.setUint32(4, next() % 5 === 0 ? next() : next() % 2048, false);
        const target = address();
        d.setUint32(8, Math.floor(target / 2 ** 32) >>> 0, false);
        d.setUint32(12, target >>> 0, false);
        memory.write(at, new Uint8Array(d.buffer));
        const descriptor = next() % 4 === 0 ? address() : at;
        fw.write(4, 4, Math.floor(descriptor / 2 ** 32) >>> 0);
        fw.write(8, 4, descriptor >>> 0);
      }
    }
    // Invariants: ROM never written, read-only items unchanged, the interface still works.
    assert.ok(new Uint8Array(rom.buffer).every((b) => b === 0xa5));
    for (const [name, data] of frozen) assert.deepEqual(fw.itemData(name), data, `${name} changed`);
    assert.ok(fw.counters.dmaErrors.value <= fw.counters.dmaTransfers.value);
    fw.write(0, 2, FW_CFG.SIGNATURE);
    assert.equal(String.fromCharCode(fw.read(1, 1), fw.read(1, 1), fw.read(1, 1), fw.read(1, 1)), 'QEMU');
  });
}
