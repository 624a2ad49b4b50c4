// The xHCI as a PCI function of the PC, from the host side: where it sits, its BAR and MSI-X
// layout, its registers once the BAR is mapped, the devices of the config on its ports, and
// images released when the machine cannot be built.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { defaultConfig, type MachineConfig, type UsbConfig } from '../../main/vmm/config';
import { MmioBus, PioBus } from '../../main/vmm/devices/bus';
import type { MachineContext } from '../../main/vmm/devices/context';
import { PCI_CAP_ID, PCI_CFG, PCI_COMMAND } from '../../main/vmm/devices/pci';
import { XHCI_DOORBELL_PAGE, XHCI_INTERRUPTER_PAGE, XHCI_PCI_SLOT, XhciPci } from '../../main/vmm/devices/usb/xhci-pci';
import { RawImageFile } from '../../main/vmm/devices/usb/storage/block-backend';
import type { GuestMemory } from '../../main/vmm/memory/guest-memory';
import { PC_DEVICES } from '../../main/vmm/platform/pc';
import { Platform } from '../../main/vmm/platform/platform';
import { ByteRing } from '../../main/vmm/shared/control';
import { StatsRegistry } from '../../main/vmm/shared/stats';

function pcWith(usb: UsbConfig | undefined, slots?: MachineContext['slots'], log: (text: string) => void = () => {}, queuedWrites?: MachineContext['queuedWrites']): { pc: Platform; ctx: MachineContext } {
  const config: MachineConfig = { ...defaultConfig(), usb };
  const statistics = new StatsRegistry();
  const rings = Array.from({ length: 5 }, () => new ByteRing());
  const ctx: MachineContext & { requestPowerOff(code?: number): void } = {
    config,
    memory: { ramRanges: () => [{ base: 0, size: config.memoryBytes }] } as unknown as GuestMemory,
    pio: new PioBus(statistics),
    mmio: new MmioBus(statistics),
    cpuCount: 1,
    statistics,
    setIrq: () => {},
    signalMsi: () => {},
    requestReset: () => {},
    requestPowerOff: () => {},
    log,
    notifyHost: () => {},
    setTimer: () => () => {},
    serialRing: (i) => rings[i],
    onHostMessage: () => {},
    sendToHost: () => true,
    // KVM's routing table as full: MSI-X vectors would go through signalMsi.
    interrupts: {
      batch: (fn: () => void) => fn(),
      createMsiRoute: () => { throw new RangeError('no free GSI'); },
      lineIrqfd: () => { throw new Error('not in this test'); },
    } as unknown as MachineContext['interrupts'],
    doorbells: {} as MachineContext['doorbells'],
    slots,
    queuedWrites,
  };
  return { pc: new Platform(ctx, PC_DEVICES), ctx };
}

const DEVFN = XHCI_PCI_SLOT << 3;

/** Programs BAR 0 (64-bit) at `base`, as firmware does. */
function mapBar0(bus: { writeConfig(bus: number, devfn: number, offset: number, size: number, value: number): void }, base: number): void {
  bus.writeConfig(0, DEVFN, PCI_CFG.BAR0, 4, base);
  bus.writeConfig(0, DEVFN, PCI_CFG.BAR0 + 4, 4, 0);
}

test('the xHCI sits at 00:04.0 as a USB 3 controller with a 64 KiB 64-bit BAR and 4 MSI-X vectors in it', () => {
  const { pc } = pcWith({ controller: 'xhci', devices: [] });
  const bus = pc.pci!.bus;
  assert.equal(bus.readConfig(0, DEVFN, PCI_CFG.VENDOR_ID, 4), 0x000d1b36);
  assert.equal(bus.readConfig(0, DEVFN, PCI_CFG.REVISION, 4) >>> 8, 0x0c0330);
  assert.equal(bus.readConfig(0, DEVFN, 0x60, 1), 0x30, 'SBRN: USB 3.0');
  // BAR sizing: all ones, then read back the size mask of a 64-bit memory BAR.
  bus.writeConfig(0, DEVFN, PCI_CFG.BAR0, 4, 0xffffffff);
  bus.writeConfig(0, DEVFN, PCI_CFG.BAR0 + 4, 4, 0xffffffff);
  assert.equal(bus.readConfig(0, DEVFN, PCI_CFG.BAR0, 4), (0xffff0000 | 0x4) >>> 0);
  assert.equal(bus.readConfig(0, DEVFN, PCI_CFG.BAR0 + 4, 4), 0xffffffff);
  const xhci = pc.instance('xhci', XhciPci)!;
  const cap = xhci.findCapability(PCI_CAP_ID.MSIX);
  assert.ok(cap > 0, 'an MSI-X capability');
  assert.equal(bus.readConfig(0, DEVFN, cap + 2, 2) & 0x7ff, 3, 'table size 4 (N-1)');
  assert.equal(bus.readConfig(0, DEVFN, cap + 4, 4), 0x8000, 'table in BAR 0 at 0x8000');
  assert.equal(bus.readConfig(0, DEVFN, cap + 8, 4), 0x9000, 'PBA in BAR 0 at 0x9000');
  assert.equal(bus.readConfig(0, DEVFN, PCI_CFG.INTERRUPT_PIN, 1), 1, 'INTx A when MSI-X is off');
});

test('with BAR 0 mapped, the capability registers and the MSI-X table answer on the memory bus', () => {
  const { pc, ctx } = pcWith({ controller: 'xhci', devices: [{ kind: 'keyboard' }, { kind: 'tablet' }] });
  const bus = pc.pci!.bus;
  const base = 0xfebf0000;
  bus.writeConfig(0, DEVFN, PCI_CFG.BAR0, 4, base);
  bus.writeConfig(0, DEVFN, PCI_CFG.BAR0 + 4, 4, 0);
  bus.writeConfig(0, DEVFN, PCI_CFG.COMMAND, 2, PCI_COMMAND.MEMORY | PCI_COMMAND.MASTER);
  assert.equal(ctx.mmio.read(base, 1), 0x40, 'CAPLENGTH');
  assert.equal(ctx.mmio.read(base + 2, 2), 0x0100, 'HCIVERSION');
  assert.equal(ctx.mmio.read(base + 4, 4) >>> 24, 8, 'HCSPARAMS1: 8 ports');
  // Table entry 0's vector control starts masked; the guest may write its address.
  assert.equal(ctx.mmio.read(base + 0x8000 + 12, 4), 1);
  ctx.mmio.write(base + 0x8000, 4, 0xfee00000);
  assert.equal(ctx.mmio.read(base + 0x8000, 4), 0xfee00000);
  const ports = pc.instance('xhci', XhciPci)!.controller.portList().filter((p) => p.device);
  assert.deepEqual(ports.map((p) => [p.port, p.protocol, p.device!.name]), [[5, 'usb2', 'usb-kbd'], [6, 'usb2', 'usb-tablet']]);
});

test('the doorbell page (zeros: doorbells read as 0), the interrupters\' page and the register page are read-only slots while BAR 0 decodes, so their reads need no exit; they follow the BAR, go with decoding, and a refused slot leaves the reads exiting', () => {
  const live = new Map<number, { base: number; size: number; readonly: boolean; name: string }>();
  let next = 1;
  let refuse = false;
  const slots: MachineContext['slots'] = {
    add: (base, size, _host, opts) => {
      if (refuse) throw new Error('KVM_SET_USER_MEMORY_REGION: Invalid argument');
      live.set(next, { base, size, readonly: opts.readonly === true, name: opts.name });
      return next++;
    },
    remove: (slot) => { assert.ok(live.delete(slot), `slot ${slot} is in use`); },
  };
  const logs: string[] = [];
  const { pc } = pcWith({ controller: 'xhci', devices: [] }, slots, (t) => logs.push(t));
  const bus = pc.pci!.bus;
  const xhci = pc.instance('xhci', XhciPci)!;
  // What the page stands for: every doorbell, and the rest of the page, reads 0 from the controller.
  for (let off = 0; off < XHCI_DOORBELL_PAGE.size; off += 4) assert.equal(xhci.controller.read(XHCI_DOORBELL_PAGE.offset + off, 4), 0, `0x${off.toString(16)}`);
  const map = (base: number) => mapBar0(bus, base);
  map(0xfebf0000);
  assert.equal(live.size, 0, 'no slot before memory decoding is on');
  bus.writeConfig(0, DEVFN, PCI_CFG.COMMAND, 2, PCI_COMMAND.MEMORY);
  assert.deepEqual([...live.values()], [
    { base: 0xfebf3000, size: 0x1000, readonly: true, name: 'xhci/doorbells' },
    { base: 0xfebf2000, size: 0x1000, readonly: true, name: 'xhci/interrupters' },
    { base: 0xfebf0000, size: 0x1000, readonly: true, name: 'xhci/registers' },
  ]);
  map(0xfeb00000);
  assert.deepEqual([...live.values()].map((s) => s.base), [0xfeb03000, 0xfeb02000, 0xfeb00000], 'the slots moved with the BAR');
  bus.writeConfig(0, DEVFN, PCI_CFG.COMMAND, 2, 0);
  assert.equal(live.size, 0, 'decoding off: no slot');
  refuse = true;
  bus.writeConfig(0, DEVFN, PCI_CFG.COMMAND, 2, PCI_COMMAND.MEMORY);
  assert.equal(live.size, 0);
  assert.ok(logs.some((l) => /xhci: reads of the doorbells page exit \(KVM_SET_USER_MEMORY_REGION: Invalid argument\)/.test(l)), logs.join('\n'));
  assert.ok(logs.some((l) => /xhci: reads of the interrupters page exit \(KVM_SET_USER_MEMORY_REGION: Invalid argument\)/.test(l)), logs.join('\n'));
  assert.ok(logs.some((l) => /xhci: reads of the registers page exit \(KVM_SET_USER_MEMORY_REGION: Invalid argument\)/.test(l)), logs.join('\n'));
  assert.equal(XHCI_INTERRUPTER_PAGE.offset, 0x2000);
});

test('USBSTS writes and the high dword of each interrupter\'s ERDP queue in KVM instead of exiting while BAR 0 decodes: the zones follow the BAR and go with decoding; a refusal leaves them exiting', () => {
  const zones = new Map<number, number>();
  let refuse = false;
  let refuseAt = -1;
  const queuedWrites: MachineContext['queuedWrites'] = {
    add: (address, size) => {
      if (refuse || address === refuseAt) return false;
      zones.set(address, size);
      return true;
    },
    remove: (address, size) => { assert.equal(zones.get(address), size, `zone 0x${address.toString(16)} is registered`); zones.delete(address); },
    settle: () => {},
  };
  const { pc } = pcWith({ controller: 'xhci', devices: [] }, undefined, () => {}, queuedWrites);
  const bus = pc.pci!.bus;
  const map = (base: number) => mapBar0(bus, base);
  map(0xfebf0000);
  assert.equal(zones.size, 0, 'none before memory decoding is on');
  bus.writeConfig(0, DEVFN, PCI_CFG.COMMAND, 2, PCI_COMMAND.MEMORY);
  // USBSTS at operational base 0x40 + 4; interrupter i's ERDP at 0x2000 + 0x20 i + 0x18, its high dword 4 on.
  const expected = (bar: number) => [[bar + 0x44, 4], [bar + 0x201c, 4], [bar + 0x203c, 4], [bar + 0x205c, 4], [bar + 0x207c, 4]];
  assert.deepEqual([...zones], expected(0xfebf0000));
  map(0xfeb00000);
  assert.deepEqual([...zones], expected(0xfeb00000), 'moved with the BAR');
  bus.writeConfig(0, DEVFN, PCI_CFG.COMMAND, 2, 0);
  assert.equal(zones.size, 0, 'decoding off: no zone');
  refuse = true;
  bus.writeConfig(0, DEVFN, PCI_CFG.COMMAND, 2, PCI_COMMAND.MEMORY);
  assert.equal(zones.size, 0);
  bus.writeConfig(0, DEVFN, PCI_CFG.COMMAND, 2, 0); // nothing to remove
  // One zone refused, the others taken: only those taken are removed later.
  refuse = false;
  refuseAt = 0xfeb0203c;
  bus.writeConfig(0, DEVFN, PCI_CFG.COMMAND, 2, PCI_COMMAND.MEMORY);
  assert.equal(zones.size, 4);
  bus.writeConfig(0, DEVFN, PCI_CFG.COMMAND, 2, 0);
  assert.equal(zones.size, 0);
});

test('no usb section, or controller none: no function at 00:04.0', () => {
  for (const usb of [undefined, { controller: 'none' as const, devices: [] }]) {
    const { pc } = pcWith(usb);
    assert.equal(pc.pci!.bus.readConfig(0, DEVFN, PCI_CFG.VENDOR_ID, 2), 0xffff);
    assert.equal(pc.instance('xhci', XhciPci), undefined);
  }
});

test('an image that cannot be used stops the build with its own sentence, and the images opened before it are released', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-xhci-pci-'));
  try {
    const good = path.join(dir, 'good.img');
    fs.writeFileSync(good, Buffer.alloc(1024 * 1024));
    const missing = path.join(dir, 'missing.img');
    assert.throws(() => pcWith({
      controller: 'xhci',
      devices: [{ kind: 'storage', path: good, readOnly: false }, { kind: 'storage', path: missing, readOnly: false }],
    }), { message: `disk image ${missing}: it does not exist` });
    // The first image's exclusive lock is gone: it opens again at once.
    RawImageFile.open(good).close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a stick from the config is a SuperSpeed device on the first USB 3 port, HID devices go on USB 2 ports', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-xhci-pci-'));
  try {
    const image = path.join(dir, 'stick.img');
    fs.writeFileSync(image, Buffer.alloc(1024 * 1024));
    const { pc } = pcWith({ controller: 'xhci', devices: [{ kind: 'keyboard' }, { kind: 'storage', path: image, readOnly: false }] });
    const ports = pc.instance('xhci', XhciPci)!.controller.portList().filter((p) => p.device);
    assert.deepEqual(ports.map((p) => [p.port, p.protocol, p.device!.speed]), [[1, 'usb3', 'super'], [5, 'usb2', 'full']]);
    pc.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
