// The vfio-pci device model's configuration space (main/vmm/devices/vfio/vfio-pci.ts) against a
// fake host function: identity and capability bodies passed through, BARs/command/MSI-X
// emulated, the MSI capability hidden, trapped BAR accesses forwarded; and a fuzz of guest
// writes to every register (BAR sizing and the capability chain included).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PCI_COMMAND } from '../../main/vmm/devices/pci/pci-device';
import { VfioPciDevice, type VfioPciHost } from '../../main/vmm/devices/vfio/vfio-pci';

/** An NVMe-like function: BAR0 64-bit 16 KiB (MSI-X table at 0x2000, PBA at 0x3000, 4 vectors); PM, MSI, MSI-X, PCIe capabilities. */
class FakeHost implements VfioPciHost {
  readonly config = Buffer.alloc(256);
  readonly bar0 = Buffer.alloc(0x4000);
  readonly configWrites: string[] = [];
  readonly regionWrites: string[] = [];
  constructor() {
    const c = this.config;
    c.writeUInt16LE(0x1b36, 0); c.writeUInt16LE(0x0010, 2); c.writeUInt16LE(0x0000, 4); c.writeUInt16LE(0x0010, 6);
    c.writeUInt32LE(0x01080202, 8); // revision 2, class 01 08 02
    c.writeUInt32LE(0xfebf0004, 0x10); c.writeUInt32LE(0, 0x14); // BAR0 mem64 (programmed by the host BIOS)
    c.writeUInt16LE(0x1af4, 0x2c); c.writeUInt16LE(0x1100, 0x2e);
    c[0x34] = 0x40; c[0x3d] = 1; c[0x3c] = 11;
    c[0x40] = 0x01; c[0x41] = 0x50; c.writeUInt16LE(0x0003, 0x42); c.writeUInt16LE(0x0008, 0x44); // PM
    c[0x50] = 0x05; c[0x51] = 0x60; c.writeUInt16LE(0x0080, 0x52); // MSI
    c[0x60] = 0x11; c[0x61] = 0x70; c.writeUInt16LE(3, 0x62); c.writeUInt32LE(0x2000, 0x64); c.writeUInt32LE(0x3000, 0x68); // MSI-X
    c[0x70] = 0x10; c[0x71] = 0x00; c.writeUInt16LE(0x0002, 0x72); // PCIe
    this.bar0.writeUInt32LE(0x00010400, 8); // NVMe VS
  }
  readConfig(offset: number, size: 1 | 2 | 4): number {
    return size === 1 ? this.config[offset] : size === 2 ? this.config.readUInt16LE(offset) : this.config.readUInt32LE(offset);
  }
  writeConfig(offset: number, size: 1 | 2 | 4, value: number): void {
    this.configWrites.push(`${offset.toString(16)}/${size}=${value.toString(16)}`);
    if (size === 1) this.config[offset] = value; else if (size === 2) this.config.writeUInt16LE(value, offset); else this.config.writeUInt32LE(value >>> 0, offset);
  }
  regionSize(index: number): number { return index === 0 ? this.bar0.length : 0; }
  readRegion(index: number, offset: number, size: 1 | 2 | 4): number {
    assert.equal(index, 0);
    return size === 1 ? this.bar0[offset] : size === 2 ? this.bar0.readUInt16LE(offset) : this.bar0.readUInt32LE(offset);
  }
  writeRegion(index: number, offset: number, size: 1 | 2 | 4, value: number): void {
    this.regionWrites.push(`${index}+${offset.toString(16)}/${size}=${value.toString(16)}`);
    if (size === 4) this.bar0.writeUInt32LE(value >>> 0, offset);
  }
}

function chain(d: VfioPciDevice): number[][] {
  const out: number[][] = [];
  let at = d.readConfig(0x34, 1);
  for (let n = 0; at !== 0 && n < 48; n++) {
    out.push([at, d.readConfig(at, 1)]);
    at = d.readConfig(at + 1, 1);
  }
  return out;
}

test('vfio-pci config: identity passed through, BARs emulated with sizing, the host\'s BAR registers untouched', () => {
  const host = new FakeHost();
  const d = new VfioPciDevice('nvme-vf', host);
  assert.equal(d.readConfig(0, 4), 0x00101b36);
  assert.equal(d.readConfig(8, 4), 0x01080202);
  assert.equal(d.readConfig(0x2c, 4), 0x11001af4);
  assert.equal(d.readConfig(0x3d, 1), 1);
  assert.equal(d.readConfig(0x3c, 1), 0, 'the interrupt line is the guest\'s');
  assert.equal(d.readConfig(0x10, 4), 0x4, 'BAR0 starts unprogrammed, 64-bit memory');
  d.writeConfig(0x10, 4, 0xffffffff);
  d.writeConfig(0x14, 4, 0xffffffff);
  assert.equal(d.readConfig(0x10, 4), 0xffffc004, 'BAR0 sizes as 16 KiB');
  assert.equal(d.readConfig(0x14, 4), 0xffffffff);
  d.writeConfig(0x10, 4, 0xe0000000);
  d.writeConfig(0x14, 4, 0);
  assert.equal(d.readConfig(0x18, 4), 0, 'BAR2 does not exist');
  const changes = d.writeConfig(4, 2, PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
  assert.deepEqual(changes?.map.map((m) => [m.space, m.base, m.length, m.bar]), [['mmio', 0xe0000000, 0x4000, 0]]);
  assert.equal(host.config.readUInt32LE(0x10), 0xfebf0004, 'the host BAR keeps the host\'s address');
  assert.ok(host.configWrites.every((w) => !/^(1[0-9a-f]|2[0-7]|30)\//.test(w)), host.configWrites.join(' '));
});

test('vfio-pci config: command bits, the capability chain without MSI, passthrough bodies, emulated MSI-X', () => {
  const host = new FakeHost();
  const d = new VfioPciDevice('nvme-vf', host);
  assert.equal(host.config.readUInt16LE(4) & (PCI_COMMAND.MEMORY | PCI_COMMAND.IO), PCI_COMMAND.MEMORY | PCI_COMMAND.IO, 'the host decodes for the traps');
  d.writeConfig(4, 2, PCI_COMMAND.MASTER);
  assert.equal(host.config.readUInt16LE(4) & PCI_COMMAND.MASTER, PCI_COMMAND.MASTER, 'bus mastering goes to the host');
  d.writeConfig(4, 2, PCI_COMMAND.INTX_DISABLE);
  assert.equal(host.config.readUInt16LE(4) & (PCI_COMMAND.MASTER | PCI_COMMAND.INTX_DISABLE), PCI_COMMAND.INTX_DISABLE);
  assert.equal(d.readConfig(4, 2) & PCI_COMMAND.MEMORY, 0, 'the guest\'s decode bit is its own');

  assert.deepEqual(chain(d), [[0x40, 0x01], [0x60, 0x11], [0x70, 0x10]], 'MSI is left out');
  assert.equal(d.readConfig(0x44, 2), 0x0008, 'PM body from the host');
  host.config.writeUInt16LE(0x0009, 0x44);
  assert.equal(d.readConfig(0x44, 2), 0x0009, 'read live from the host');
  d.writeConfig(0x44, 2, 0x8103);
  assert.equal(host.config.readUInt16LE(0x44), 0x8103, 'written through to the host');
  d.writeConfig(0x40, 4, 0xffffffff);
  assert.deepEqual(chain(d), [[0x40, 0x01], [0x60, 0x11], [0x70, 0x10]], 'capability headers are not the guest\'s to change');

  assert.ok(d.msix);
  assert.equal(d.readConfig(0x62, 2), 3);
  assert.equal(d.readConfig(0x64, 4), 0x2000);
  d.writeConfig(0x62, 2, 0x8000);
  assert.equal(d.msix.enabled, true);
  assert.equal(host.config.readUInt16LE(0x62), 3, 'the host\'s MSI-X control is not the guest\'s');
});

test('vfio-pci BAR trap: device registers go to the host region, the MSI-X table to the emulated capability', () => {
  const host = new FakeHost();
  const d = new VfioPciDevice('nvme-vf', host);
  const bar0 = d.barSpec(0)!.mmio!;
  assert.equal(bar0.read(8, 4), 0x00010400);
  bar0.write(0x14, 4, 0x460001);
  assert.deepEqual(host.regionWrites, ['0+14/4=460001']);
  bar0.write(0x2000, 4, 0xfee00000);
  bar0.write(0x2008, 4, 0x41);
  assert.deepEqual(d.msix!.message(0), { addressLo: 0xfee00000, addressHi: 0, data: 0x41 });
  assert.equal(host.regionWrites.length, 1, 'the table never reaches the host');
  assert.equal(bar0.read(0x200c, 4), 1, 'vector 0 starts masked');
  assert.equal(bar0.read(0x3ffc, 4), 0, 'the rest of the BAR reads the host');
});

test('vfio-pci config fuzz: random guest writes of every size everywhere never touch the host BARs or identity, never throw', () => {
  const scale = Number(process.env.PORTHOLE_FUZZ_SCALE ?? 1);
  let seed = 12345;
  const rnd = (n: number) => { seed = (seed * 1103515245 + 12345) >>> 0; return seed % n; };
  for (let round = 0; round < 20 * scale; round++) {
    const host = new FakeHost();
    const d = new VfioPciDevice('fuzz', host);
    for (let i = 0; i < 500; i++) {
      const size = [1, 2, 4][rnd(3)];
      const offset = rnd(256 / size) * size;
      const value = rnd(2) ? 0xffffffff : (rnd(0x10000) * 0x10000 + rnd(0x10000)) >>> 0;
      d.writeConfig(offset, size, size === 4 ? value : value & (size === 2 ? 0xffff : 0xff));
      const r = d.readConfig(rnd(64) * 4, 4);
      assert.ok(r >= 0 && r <= 0xffffffff);
    }
    assert.equal(host.config.readUInt32LE(0), 0x00101b36);
    assert.equal(host.config.readUInt32LE(0x10), 0xfebf0004);
    assert.equal(host.config.readUInt32LE(0x14), 0);
    const forbidden = /^([0-9a-f]|[1-35-6][0-9a-f]|4[01]|7[01])\//;
    assert.ok(host.configWrites.every((w) => !forbidden.test(w) || w.startsWith('4/2=')), `only the command register and passthrough capability bodies are written: ${host.configWrites.filter((w) => forbidden.test(w) && !w.startsWith('4/2=')).join(' ')}`);
    const c = chain(d);
    assert.deepEqual(c.map(([, id]) => id), [0x01, 0x11, 0x10]);
  }
});
