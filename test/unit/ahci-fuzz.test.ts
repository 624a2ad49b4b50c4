// Fuzz: a guest driving the AHCI HBA with random register writes (command list and FIS areas
// anywhere, including outside guest memory and past 2^52), random command headers and tables
// (FIS types and lengths, ATA commands with random LBAs and counts, NCQ tags, ATAPI command
// blocks, PRD tables with huge counts, odd lengths and addresses outside guest memory), random
// PxCI/PxSACT, bus mastering toggled, while the backends complete now or later. Nothing may
// throw, no backend request may leave an image, the CD's image is never written, and after an
// HBA reset a well-formed READ DMA EXT and ATAPI READ(10) work again.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ATA_CMD } from '../../main/vmm/devices/ahci/ata';
import { AtaDisk } from '../../main/vmm/devices/ahci/ata-disk';
import { AtapiCdrom } from '../../main/vmm/devices/ahci/atapi-cdrom';
import { AhciHba, HBA_REG, PORT_BASE, PORT_REG, PORT_STRIDE, PXIS } from '../../main/vmm/devices/ahci/hba';
import { PCI_CFG, PCI_COMMAND } from '../../main/vmm/devices/pci/pci-device';
import type { BlockDoneCallback, BlockReadCallback } from '../../main/vmm/devices/usb/storage/block-backend';
import { AhciTestDriver, h2d, MemoryDisk, portLayout, RAM_BYTES } from '../helpers/ahci-driver';
import { Prng, fuzzCases } from '../helpers/prng';

const ROUNDS_PER_SEED = fuzzCases(400);

/** Completes now, or later when the test drains it. */
class LaterDisk extends MemoryDisk {
  deferred = false;
  readonly queue: (() => void)[] = [];
  override read(offset: number, length: number, done: BlockReadCallback): void {
    if (this.deferred) this.queue.push(() => super.read(offset, length, done));
    else super.read(offset, length, done);
  }
  override write(offset: number, data: Uint8Array, done: BlockDoneCallback): void {
    const copy = data.slice();
    if (this.deferred) this.queue.push(() => super.write(offset, copy, done));
    else super.write(offset, copy, done);
  }
  drain(rng: Prng): void {
    while (this.queue.length > 0 && rng.below(2) === 0) this.queue.splice(rng.below(this.queue.length), 1)[0]();
  }
}

const COMMANDS = [
  ATA_CMD.READ_DMA, ATA_CMD.READ_DMA_EXT, ATA_CMD.WRITE_DMA, ATA_CMD.WRITE_DMA_EXT, ATA_CMD.READ_FPDMA_QUEUED,
  ATA_CMD.WRITE_FPDMA_QUEUED, ATA_CMD.IDENTIFY_DEVICE, ATA_CMD.IDENTIFY_PACKET_DEVICE, ATA_CMD.PACKET, ATA_CMD.FLUSH_CACHE,
  ATA_CMD.FLUSH_CACHE_EXT, ATA_CMD.SET_FEATURES, ATA_CMD.READ_SECTORS, ATA_CMD.WRITE_MULTIPLE_EXT, ATA_CMD.READ_VERIFY_EXT,
  ATA_CMD.SET_MULTIPLE_MODE, ATA_CMD.EXECUTE_DEVICE_DIAGNOSTIC, 0x00, 0x2f, 0xff,
];
const OPS = [0x00, 0x03, 0x12, 0x1b, 0x1e, 0x25, 0x28, 0x2b, 0x43, 0x46, 0x4a, 0x5a, 0xa8, 0xbb, 0xbe, 0x55];

function randomAddress(rng: Prng): { low: number; high: number } {
  switch (rng.below(6)) {
    case 0: return { low: rng.next(), high: rng.next() };
    case 1: return { low: RAM_BYTES - rng.below(0x2000), high: 0 };
    case 2: return { low: rng.next(), high: 0 };
    default: return { low: rng.below(RAM_BYTES), high: 0 };
  }
}

function randomCommand(d: AhciTestDriver, rng: Prng, port: number, slot: number): void {
  const l = portLayout(port);
  const view = d.bus.view;
  const table = l.tables + slot * 0x1000;
  const command = rng.pick(COMMANDS);
  const lba = rng.below(4) === 0 ? rng.next() * 0x10000 + rng.below(0x10000) : rng.below(1100);
  const count = rng.below(3) === 0 ? rng.below(0x10000) : 1 + rng.below(8);
  const fis = h2d(command, lba, rng.below(4) ? count : (slot << 3), rng.below(2) ? rng.below(0x10000) : count, rng.below(4) === 0 ? rng.below(256) : 0x40);
  if (rng.below(20) === 0) fis[0] = rng.below(256);
  if (rng.below(20) === 0) fis[1] = rng.below(256);
  d.bus.ram.set(fis, table);
  const cdb = Array.from({ length: 16 }, () => (rng.below(3) === 0 ? rng.below(256) : rng.below(4)));
  cdb[0] = rng.pick(OPS);
  d.bus.ram.set(cdb, table + 0x40);
  const prdtl = rng.below(8) === 0 ? rng.below(0x10000) : rng.below(5);
  for (let i = 0; i < Math.min(prdtl, 64); i++) {
    const at = table + 0x80 + i * 16;
    if (at + 16 > table + 0x1000) break;
    const a = rng.below(10) === 0 ? randomAddress(rng) : { low: l.data + rng.below(0x40000), high: 0 };
    view.setUint32(at, a.low >>> 0, true);
    view.setUint32(at + 4, a.high >>> 0, true);
    view.setUint32(at + 12, (rng.below(6) === 0 ? rng.next() : rng.below(2) ? 0x1fff : rng.below(0x4000)) >>> 0, true);
  }
  const header = l.clb + slot * 32;
  const cfl = rng.below(8) === 0 ? rng.below(32) : 5;
  view.setUint32(header, ((cfl | (rng.below(2) << 5) | (rng.below(2) << 6) | (rng.below(16) === 0 ? rng.below(0x800) : 0)) | (prdtl << 16)) >>> 0, true);
  const t = rng.below(12) === 0 ? randomAddress(rng) : { low: table, high: 0 };
  view.setUint32(header + 8, t.low >>> 0, true);
  view.setUint32(header + 12, t.high >>> 0, true);
}

test('AHCI fuzz: random registers, command tables, PRDs and ATAPI commands never throw or leave the images', () => {
  for (const seed of [1, 0xa1c1, 0xdead, 77]) {
    const rng = new Prng(seed);
    const image = new LaterDisk(1024 * 512);
    const iso = new LaterDisk(64 * 2048, true);
    const cdrom = new AtapiCdrom({ name: 'cd', medium: iso });
    const hba = new AhciHba('ahci', [new AtaDisk({ name: 'd', backend: image }), cdrom, null]);
    const d = new AhciTestDriver(hba);
    d.startPort(0);
    d.startPort(1);
    d.enableInterrupts(0);
    for (let round = 0; round < ROUNDS_PER_SEED; round++) {
      image.deferred = iso.deferred = rng.below(4) === 0;
      const port = rng.below(3);
      // Bus mastering goes off now and then, and comes back soon.
      if (!(hba.command & PCI_COMMAND.MASTER) && rng.below(3) === 0) hba.writeConfig(PCI_CFG.COMMAND, 2, PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
      switch (rng.below(10)) {
        case 0: {
          // A random register write, anywhere in ABAR (any width).
          const reg = rng.below(3) === 0 ? rng.below(0x1000) : PORT_BASE + port * PORT_STRIDE + rng.below(0x12) * 4;
          const value = rng.below(2) ? rng.next() : rng.pick([0, 1, 0x10, 0x11, 0x301, 0x300, 0xffffffff]);
          hba.abar.write(reg, rng.pick([1, 2, 4, 4, 4]), value);
          break;
        }
        case 1:
          hba.abar.read(rng.below(0x1000), rng.pick([1, 2, 4]));
          break;
        case 2:
          if (rng.below(8) === 0) hba.writeConfig(PCI_CFG.COMMAND, 2, rng.below(4) === 0 ? PCI_COMMAND.MEMORY : PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
          else if (rng.below(4) === 0) d.recover(port);
          else if (rng.below(8) === 0) {
            if (cdrom.medium) cdrom.eject();
            else cdrom.insert(iso);
          } else d.startPort(port);
          break;
        default: {
          // Mostly a driver that recovers from errors, so commands keep reaching the drives.
          if (hba.ports[port].halted && rng.below(4) !== 0) d.recover(port);
          const slots = rng.below(4) === 0 ? rng.next() : 1 << rng.below(32);
          for (let s = 0; s < 32; s++) if (slots & (1 << s)) randomCommand(d, rng, port, s);
          if (rng.below(2)) d.portWrite(port, PORT_REG.SACT, rng.below(2) ? slots : rng.next());
          d.portWrite(port, PORT_REG.CI, slots);
          break;
        }
      }
      image.drain(rng);
      iso.drain(rng);
    }
    image.deferred = iso.deferred = false;
    while (image.queue.length) image.queue.shift()!();
    while (iso.queue.length) iso.queue.shift()!();
    assert.deepEqual(image.violations, [], `seed ${seed}`);
    assert.deepEqual(iso.violations, [], `seed ${seed}: the ISO was never written`);
    // A reset brings it back.
    hba.writeConfig(PCI_CFG.COMMAND, 2, PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
    d.hostWrite(HBA_REG.GHC, 1);
    d.startPort(0);
    const is = d.run(0, { fis: h2d(ATA_CMD.READ_DMA_EXT, 7, 1), bytes: 512 });
    assert.ok(is & PXIS.DHRS && !(is & PXIS.TFES), `seed ${seed}: PxIS ${is.toString(16)}`);
    assert.deepEqual(d.data(0, 512), image.bytes.slice(7 * 512, 8 * 512));
    if (!cdrom.medium) cdrom.insert(new LaterDisk(64 * 2048, true));
    d.startPort(1);
    const cd = () => d.run(1, { fis: h2d(ATA_CMD.PACKET, 0, 0, 1, 0), cdb: [0x28, 0, 0, 0, 0, 3, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], bytes: 2048 });
    let cdIs = cd();
    if (cdIs & PXIS.TFES) {
      d.recover(1); // a pending unit attention
      cdIs = cd();
    }
    assert.ok(!(cdIs & PXIS.TFES), `seed ${seed}: ATAPI READ(10) after reset`);
    assert.deepEqual(d.data(1, 2048), (cdrom.medium as MemoryDisk).bytes.slice(3 * 2048, 4 * 2048));
  }
});
