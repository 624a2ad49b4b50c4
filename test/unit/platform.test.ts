import assert from 'node:assert/strict';
import { test } from 'node:test';
import { defaultConfig, type MachineConfig } from '../../main/vmm/config';
import { MmioBus, PioBus } from '../../main/vmm/devices/bus';
import type { HostNotification, MachineContext } from '../../main/vmm/devices/context';
import { counter, type DeviceFactory, type IoDevice } from '../../main/vmm/devices/device';
import { PCI_CFG, PCI_COMMAND, PciDevice } from '../../main/vmm/devices/pci';
import type { GuestMemory } from '../../main/vmm/memory/guest-memory';
import { machineStatsFrom } from '../../main/vmm/machine/machine-stats';
import { IAPC_BOOT_ARCH } from '../../main/vmm/platform/acpi';
import { PC_DEVICES } from '../../main/vmm/platform/pc';
import { Platform } from '../../main/vmm/platform/platform';
import { CHANNEL_TARGET } from '../../main/vmm/shared/channel';
import { ByteRing } from '../../main/vmm/shared/control';
import { encodeModemStatus, SERIAL_KIND } from '../../main/vmm/shared/serial-messages';
import { encodeNetFrame, NET_CHANNEL_TARGET, NET_KIND } from '../../main/vmm/shared/net-messages';
import { StatsRegistry } from '../../main/vmm/shared/stats';

function context(config: MachineConfig = defaultConfig()) {
  const statistics = new StatsRegistry();
  const irqs: [number, boolean][] = [];
  const notes: HostNotification[] = [];
  const rings = Array.from({ length: 5 }, () => new ByteRing());
  const handlers = new Map<number, (kind: number, payload: Uint8Array) => void>();
  /** What the machine does with a channel record from the VM host: hands it to the target's handler. */
  const fromHost = (target: number, kind: number, payload: Uint8Array): boolean => {
    const h = handlers.get(target);
    h?.(kind, payload);
    return h !== undefined;
  };
  const ctx: MachineContext & { requestPowerOff(code?: number): void } = {
    config,
    // The PC's CMOS asks for the RAM layout; nothing else reads guest memory at build time.
    memory: { ramRanges: () => [{ base: 0, size: config.memoryBytes }] } as unknown as GuestMemory,
    pio: new PioBus(statistics),
    mmio: new MmioBus(statistics),
    cpuCount: config.cpus,
    statistics,
    setIrq: (gsi, level) => { irqs.push([gsi, level]); },
    signalMsi: () => {},
    requestReset: () => {},
    requestPowerOff: () => {},
    log: () => {},
    notifyHost: (n) => { notes.push(n); },
    setTimer: () => () => {},
    serialRing: (i) => rings[i],
    onHostMessage: (target, handler) => { handlers.set(target, handler); },
    sendToHost: () => true,
    // No device of the PC uses irqfd routes or ioeventfds.
    interrupts: {} as MachineContext['interrupts'],
    doorbells: {} as MachineContext['doorbells'],
  };
  return { ctx, statistics, irqs, notes, rings, fromHost };
}

function count(registry: StatsRegistry, group: string, name: string): number {
  const slot = registry.schema.findIndex((s) => s.group === group && s.name === name);
  return slot < 0 ? 0 : registry.counts[slot];
}

test('the PC is built from its device list: ports, PCI functions, host messages, table fragments', () => {
  const { ctx, statistics, rings, fromHost } = context();
  const pc = new Platform(ctx, PC_DEVICES);
  assert.deepEqual(pc.models.map((m) => m.name),
    ['debugcon', 'post-code', 'i8042', 'port92', 'COM1', 'COM2', 'COM3', 'COM4', 'cmos', 'fw-cfg', 'pci']);
  for (const [port, owner] of [[0x402, 'debugcon'], [0x80, 'post-code'], [0x64, 'i8042 (0x64)'], [0x3f8, 'COM1'],
    [0x2e8, 'COM4'], [0x70, 'cmos'], [0x511, 'fw-cfg'], [0xcfc, 'pci-host'], [0x600, 'acpi-pm'], [0xb2, 'apm']] as const) {
    assert.equal(ctx.pio.ownerOf(port), owner, `port 0x${port.toString(16)}`);
  }
  assert.equal(ctx.pio.ownerOf(0xf4), null, 'isa-debug-exit only when configured');
  assert.ok(pc.fwCfg && pc.pci && pc.i8042);
  assert.equal(pc.serial.length, 4);
  // Host messages reach a device on the channel target it declared (the COM ports: SERIAL + port).
  assert.equal(pc.hostTarget('COM1'), CHANNEL_TARGET.SERIAL);
  assert.equal(pc.hostTarget('COM4'), CHANNEL_TARGET.SERIAL + 3);
  assert.equal(pc.hostTarget('cmos'), null);
  assert.equal(fromHost(CHANNEL_TARGET.SERIAL, SERIAL_KIND.INPUT, new Uint8Array([0x41, 0x42])), true);
  assert.equal(pc.serial[0]?.pendingInput, 2);
  assert.equal(count(statistics, 'COM1', 'rx-bytes'), 1, 'one byte entered the 16450-mode FIFO');
  fromHost(CHANNEL_TARGET.SERIAL + 1, SERIAL_KIND.MODEM_STATUS, encodeModemStatus({ cts: false, dsr: false, ri: true, dcd: false }));
  ctx.pio.write(0x2f8 + 1, 1, 0);
  assert.equal(ctx.pio.read(0x2f8 + 6, 1) & 0xf0, 0x40, 'COM2 sees RI only');
  // The UART counts what the guest transmits, in the registry.
  ctx.pio.write(0x3f8, 1, 0x5a);
  assert.deepEqual([...rings[0].drain()], [0x5a]);
  assert.equal(count(statistics, 'COM1', 'tx-bytes'), 1);
  assert.equal(count(statistics, 'COM1', 'pio-writes'), 1);
  // Every device describes its part of the firmware tables.
  pc.pci?.isaBridge.routePirqs([10, 10, 11, 11]);
  const tables = pc.tables();
  assert.equal((tables.bootArch ?? 0) & IAPC_BOOT_ARCH.I8042, IAPC_BOOT_ARCH.I8042);
  assert.deepEqual(tables.levelIsaIrqs, [9]);
  assert.equal(tables.pciRoot?.irqs.length, 31 * 4);
  assert.deepEqual(tables.pciRoot?.irqs[0], { slot: 1, pin: 1, gsi: 10 });
});

class Scratch implements IoDevice {
  readonly name = 'scratch-bar';
  value = 0;
  read(): number { return this.value; }
  write(_o: number, _s: number, v: number): void { this.value = v; }
}

class ScratchPci extends PciDevice {
  readonly regs = new Scratch();
  constructor() {
    super('scratch', { vendorId: 0x1234, deviceId: 0x0001, classCode: 0xff0000 });
    this.defineBar(0, { kind: 'mem32', size: 0x1000, mmio: this.regs });
  }
}

test('adding a device is one factory: a PCI device after the PCI platform attaches to its bus and counts', () => {
  const { ctx, statistics, fromHost } = context({ ...defaultConfig(), debugExit: true });
  const dev = new ScratchPci();
  let pokes = 0;
  const scratch: DeviceFactory = (c) => ({
    name: 'scratch', instance: dev, pci: [{ slot: 5, fn: 0, device: dev }],
    hostMessages: { target: CHANNEL_TARGET.FIRST_FREE, handle: (kind) => { pokes += kind; } },
    counters: { pokes: counter(c.statistics, 'scratch', 'pokes') },
  });
  const pc = new Platform(ctx, [...PC_DEVICES, scratch]);
  assert.equal(ctx.pio.ownerOf(0xf4), 'debug-exit');
  assert.equal(pc.model('scratch')?.instance, dev);
  assert.equal(fromHost(CHANNEL_TARGET.FIRST_FREE, 3, new Uint8Array(0)), true);
  assert.equal(pokes, 3);
  // The guest programs the BAR through 0xcf8/0xcfc; the PCI bus maps it after the write.
  const cfg = (reg: number, size: number, value: number) => {
    ctx.pio.write(0xcf8, 4, (0x80000000 | (5 << 11) | reg) >>> 0);
    ctx.pio.write(0xcfc, size, value);
  };
  cfg(PCI_CFG.BAR0, 4, 0xe0001000);
  cfg(PCI_CFG.COMMAND, 2, PCI_COMMAND.MEMORY);
  ctx.mmio.write(0xe0001010, 4, 0x1234);
  assert.equal(ctx.mmio.read(0xe0001000, 4), 0x1234);
  assert.equal(count(statistics, 'scratch-bar', 'mmio-writes'), 1);
  assert.equal(count(statistics, 'scratch-bar', 'mmio-reads'), 1);
  cfg(PCI_CFG.BAR0, 4, 0xe0002000);
  assert.equal(ctx.mmio.ownerOf(0xe0001000), null);
  assert.equal(ctx.mmio.ownerOf(0xe0002000), 'scratch-bar');
  assert.throws(() => new Platform(context().ctx, [scratch, scratch]), /PCI|two devices/);
});

test('MachineStats is one launch\'s share of the registry: exits, device reads and writes, kicks', () => {
  const stats = new StatsRegistry();
  const io = stats.counter('exits', 'io');
  const reads = stats.counter('COM1', 'pio-reads');
  const writes = stats.counter('COM1', 'pio-writes');
  const mmioWrites = stats.counter('COM1', 'mmio-writes');
  const kicks = stats.counter('vcpu', 'kicks');
  stats.counter('COM1', 'tx-bytes', 'bytes');
  stats.add(io, 5);
  stats.add(writes, 3);
  // A previous launch left counts behind (the registry survives resets).
  const baseline = stats.counts.slice();
  stats.add(io, 2);
  stats.add(reads, 1);
  stats.add(mmioWrites, 4);
  stats.add(kicks, 1);
  const tx = stats.counter('COM1', 'tx-bytes', 'bytes');
  stats.add(tx, 100);
  assert.deepEqual(machineStatsFrom(stats.schema, stats.counts, baseline), {
    exits: { io: 2 }, devices: [{ name: 'COM1', reads: 1, writes: 4 }], kicks: 1, apExits: 0,
  });
});

test('an NE2000 PCI NIC from the config: 00:10.0 10ec:8029, its I/O BAR, INTA through the PIRQ router, frames over the channel', () => {
  const config: MachineConfig = {
    ...defaultConfig(),
    nics: [{ model: 'ne2k_pci', mac: '52:54:00:00:00:42', backend: { kind: 'udp', local: '127.0.0.1:1', remote: '127.0.0.1:2' } }],
  };
  const { ctx, irqs, fromHost } = context(config);
  const toHost: [number, number, Uint8Array][] = [];
  ctx.sendToHost = (target, kind, payload) => { toHost.push([target, kind, payload?.slice() ?? new Uint8Array(0)]); return true; };
  const pc = new Platform(ctx, PC_DEVICES);
  const cfg = (reg: number, size: number, value?: number) => {
    ctx.pio.write(0xcf8, 4, (0x80000000 | (16 << 11) | reg) >>> 0);
    if (value === undefined) return ctx.pio.read(0xcfc + (reg & 3), size);
    ctx.pio.write(0xcfc + (reg & 3), size, value);
    return 0;
  };
  assert.equal(cfg(PCI_CFG.VENDOR_ID, 4), 0x802910ec);
  assert.equal(cfg(PCI_CFG.INTERRUPT_PIN, 1), 1);
  cfg(PCI_CFG.BAR0, 4, 0xc100);
  cfg(PCI_CFG.COMMAND, 2, PCI_COMMAND.IO);
  assert.equal(ctx.pio.ownerOf(0xc100), 'net0');
  assert.equal(ctx.pio.ownerOf(0xc11f), 'net0');
  // Slot 16's INTA is PIRQA (the i440FX swizzle); SeaBIOS steers it to an ISA IRQ.
  pc.pci?.isaBridge.routePirqs([11, 10, 10, 11]);
  const io = (reg: number, v?: number) => (v === undefined ? ctx.pio.read(0xc100 + reg, 1) : (ctx.pio.write(0xc100 + reg, 1, v), 0));
  // The PROM in word mode as ne2k-pci reads it.
  io(0x1f);
  io(0, 0x21); io(0x0e, 0x49); io(0x0a, 12); io(0x0b, 0); io(0x08, 0); io(0x09, 0); io(0, 0x0a);
  assert.deepEqual(Array.from({ length: 6 }, () => io(0x10)), [0x52, 0x54, 0, 0, 0, 0x42]);
  // Start with a ring and every interrupt; a frame from the VM host lands in it and raises IRQ 11.
  io(7, 0xff); io(1, 0x46); io(2, 0x80); io(3, 0x7f); io(0x0c, 0x04);
  io(0, 0x61); io(7, 0x46); io(0, 0x22); io(0x0f, 0x3f);
  assert.ok(toHost.some(([target, kind]) => target === NET_CHANNEL_TARGET && kind === NET_KIND.HELLO), 'the card said HELLO');
  const frame = new Uint8Array(60).fill(0xff, 0, 6);
  fromHost(NET_CHANNEL_TARGET, NET_KIND.FRAME, encodeNetFrame(0, frame));
  assert.equal(io(7) & 0x01, 0x01, 'ISR.PRX');
  assert.deepEqual(irqs.at(-1), [11, true]);
  // Acknowledged while the frame is unread, PRX stays; with BNRY past it, the line falls.
  io(7, 0x01);
  assert.deepEqual(irqs.at(-1), [11, true]);
  io(3, 0x46);
  io(7, 0x01);
  assert.deepEqual(irqs.at(-1), [11, false]);
  assert.ok(toHost.some(([target, kind]) => target === NET_CHANNEL_TARGET && kind === NET_KIND.RX_CREDIT), 'the frame was credited');
});
