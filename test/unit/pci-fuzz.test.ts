import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MmioBus, PioBus, type IoDevice } from '../../main/vmm/devices/bus';
import { buildPciPlatform, MsiCapability, PciDevice } from '../../main/vmm/devices/pci';
import { fuzzCases } from '../helpers/prng';

function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x;
  };
}

class Probe implements IoDevice {
  constructor(readonly name: string) {}
  read(): number { return 0; }
  write(): void {}
}

class FuzzDevice extends PciDevice {
  readonly msi: MsiCapability;
  constructor() {
    super('fuzz-dev', { vendorId: 0x1af4, deviceId: 0x1000, classCode: 0x020000, interruptPin: 2 });
    this.defineBar(0, { kind: 'io', size: 32, io: new Probe('fuzz-io') });
    this.defineBar(1, { kind: 'mem32', size: 0x1000, mmio: new Probe('fuzz-mem') });
    this.defineBar(2, { kind: 'mem64', size: 0x4000, mmio: new Probe('fuzz-mem64') });
    this.defineBar(6, { kind: 'mem32', size: 0x8000 });
    this.msi = new MsiCapability(this, 8);
  }
}

function portsOwnedBy(pio: PioBus, name: string): number {
  let n = 0;
  for (let p = 0; p < 0x10000; p++) if (pio.ownerOf(p) === name) n++;
  return n;
}

for (const seed of [7, 0xc0ffee, 424242]) {
  test(`PCI configuration space survives random accesses (seed ${seed})`, () => {
    const next = prng(seed);
    const pio = new PioBus();
    const mmio = new MmioBus();
    let irqChanges = 0;
    let msis = 0;
    const ctx = {
      pio, mmio,
      setIrq: (gsi: number) => { assert.ok(gsi >= 0 && gsi < 16); irqChanges++; },
      signalMsi: () => { msis++; },
      requestReset: () => {},
      requestPowerOff: () => {},
      log: () => {},
    };
    const platform = buildPciPlatform(ctx, { clockNs: () => BigInt(next()) * 1000n });
    const dev = new FuzzDevice();
    platform.bus.attach(dev, 4);
    const slots = [0, 1, 4, 7];
    // Registers worth hitting often: command, BARs, ROM, interrupt line, MSI, PIRQ, PMBA, PMREGMISC.
    const hot = [0x04, 0x10, 0x14, 0x18, 0x1c, 0x30, 0x3c, dev.msi.offset, dev.msi.offset + 4, 0x40, 0x60, 0x80];
    let sawBarMapped = false;
    let sawPmMoved = false;
    for (let i = 0, n = fuzzCases(30000); i < n; i++) {
      const op = next() % 10;
      if (op < 4) {
        // Mostly well-formed addresses on bus 0, sometimes anything at all.
        const fn = next() % 2 ? 0 : next() % 8;
        const reg = next() % 2 ? hot[next() % hot.length] : next() & 0xfc;
        const addr = next() % 8 === 0 ? next() : (0x80000000 | (slots[next() % slots.length] << 11) | (fn << 8) | reg) >>> 0;
        pio.write(0xcf8, 4, addr);
      } else if (op < 7) {
        const size = [1, 2, 4][next() % 3];
        const port = 0xcfc + (next() % 4);
        // Bias toward all-ones (BAR sizing), enabling decode and port-sized addresses.
        const pick = next() % 4;
        const value = pick === 0 ? 0xffffffff : pick === 1 ? 0x7 : pick === 2 ? ((next() & 0xfff0) | 1) >>> 0 : next();
        pio.write(port, size, value);
      } else if (op < 9) {
        const size = [1, 2, 4][next() % 3];
        const v = pio.read(0xcfc + (next() % 4), size);
        assert.ok(Number.isInteger(v) && v >= 0 && v < 2 ** (8 * size));
      } else {
        dev.setIntx(next() % 2 === 0);
        dev.msi.signal(next() % 10);
      }
      if (dev.barAddress(0) !== null) sawBarMapped = true;
      if (platform.pm.pmBase !== null && platform.pm.pmBase !== 0x600) sawPmMoved = true;
    }
    assert.ok(sawBarMapped && sawPmMoved, 'the run reached mapped BARs and a moved PM block');
    // Identity registers never change; the host ports and BAR registrations stay consistent.
    const read32 = (slot: number, fn: number, reg: number) => {
      pio.write(0xcf8, 4, (0x80000000 | (slot << 11) | (fn << 8) | reg) >>> 0);
      return pio.read(0xcfc, 4);
    };
    assert.equal(read32(0, 0, 0), 0x12378086);
    assert.equal(read32(1, 0, 0), 0x70008086);
    assert.equal(read32(1, 3, 0), 0x71138086);
    assert.equal(read32(4, 0, 0), 0x10001af4);
    for (let p = 0xcf8; p < 0xd00; p++) assert.equal(pio.ownerOf(p), 'pci-host');
    const ioPorts = portsOwnedBy(pio, 'fuzz-io');
    assert.ok(ioPorts === 0 || ioPorts === 32, `fuzz-io owns ${ioPorts} ports`);
    assert.equal(ioPorts === 32, dev.barAddress(0) !== null && pio.ownerOf(dev.barAddress(0) as number) === 'fuzz-io');
    const pmPorts = portsOwnedBy(pio, 'acpi-pm');
    assert.ok(pmPorts === 0 || pmPorts === 64, `acpi-pm owns ${pmPorts} ports`);
    assert.ok(irqChanges >= 0 && msis >= 0);
  });
}
