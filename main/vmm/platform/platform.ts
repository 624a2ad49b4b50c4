// The platform: a machine's devices, built from a list of factories (pc.ts), installed on
// its buses, and looked up by name for host messages, firmware tables and boot code.
import type { MachineContext } from '../devices/context';
import {
  type DeviceContext, type DeviceFactory, type DeviceModel, installDevice, type TableFragment,
} from '../devices/device';
import type { DebugExitPort } from '../devices/simple';
import type { FwCfg } from '../devices/fw-cfg';
import { I8042 } from '../devices/i8042';
import type { PciPlatform } from '../devices/pci';
import type { PciBus } from '../devices/pci/pci-bus';
import { Uart16550 } from '../devices/uart16550';
import { irqLinesOf } from './irq';
import { COM_PORTS, DEBUGCON_RING, IOAPIC_PINS } from './layout';
import { PC_DEVICES } from './pc';

export { DEBUGCON_RING };

export class Platform {
  models: readonly DeviceModel[] = [];
  private readonly byName = new Map<string, DeviceModel>();

  constructor(ctx: MachineContext & { requestPowerOff(exitCode?: number): void }, factories: readonly DeviceFactory[] = PC_DEVICES) {
    // Getters, not copies: the boot replaces ctx.memory when it adds ROM regions.
    const deviceCtx: DeviceContext = {
      get config() { return ctx.config; },
      get memory() { return ctx.memory; },
      get pio() { return ctx.pio; },
      get mmio() { return ctx.mmio; },
      get cpuCount() { return ctx.cpuCount; },
      get statistics() { return ctx.statistics; },
      get interrupts() { return ctx.interrupts; },
      get doorbells() { return ctx.doorbells; },
      get slots() { return ctx.slots; },
      get queuedWrites() { return ctx.queuedWrites; },
      get netDataPlanes() { return ctx.netDataPlanes; },
      get diskDataPlanes() { return ctx.diskDataPlanes; },
      setIrq: (gsi, level) => ctx.setIrq(gsi, level),
      signalMsi: (lo, hi, data) => ctx.signalMsi(lo, hi, data),
      requestReset: () => ctx.requestReset(),
      requestPowerOff: (exitCode?: number) => ctx.requestPowerOff(exitCode),
      log: (text) => ctx.log(text),
      notifyHost: (message) => ctx.notifyHost(message),
      setTimer: (delayMs, fn) => ctx.setTimer(delayMs, fn),
      serialRing: (index) => ctx.serialRing(index),
      onHostMessage: (target, handler) => ctx.onHostMessage(target, handler),
      sendToHost: (target, kind, payload) => ctx.sendToHost(target, kind, payload),
      get kickWatch() { return ctx.kickWatch; },
      irqPin: (gsi, name) => irqLinesOf(deviceCtx).pin(gsi, name),
    };
    const models: DeviceModel[] = [];
    try {
      this.install(factories, deviceCtx, models);
    } catch (e) {
      // A device that could not be made (an image that cannot be opened): release what was.
      this.models = models;
      this.close();
      throw e;
    }
    this.models = models;
  }

  private install(factories: readonly DeviceFactory[], deviceCtx: DeviceContext, models: DeviceModel[]): void {
    const ctx = deviceCtx;
    let pciBus: PciBus | undefined;
    for (const make of factories) {
      const model = make(deviceCtx);
      if (model === null) continue;
      if (this.byName.has(model.name)) throw new Error(`two devices are named ${model.name}`);
      for (const gsi of model.irqs ?? []) {
        if (!Number.isInteger(gsi) || gsi < 0 || gsi >= IOAPIC_PINS) throw new Error(`${model.name}: interrupt line ${gsi} does not exist`);
      }
      installDevice(ctx, model, model.pciBus ?? pciBus);
      if (model.hostMessages) {
        const owner = [...this.byName.values()].find((m) => m.hostMessages?.target === model.hostMessages?.target);
        if (owner) throw new Error(`${model.name}: channel target ${model.hostMessages.target} belongs to ${owner.name}`);
        ctx.onHostMessage(model.hostMessages.target, model.hostMessages.handle);
      }
      pciBus ??= model.pciBus;
      this.byName.set(model.name, model);
      models.push(model);
    }
  }

  /** Releases every device's host resources; the machine calls it once, when it ends. */
  close(): void {
    for (const m of this.models) {
      try {
        m.close?.();
      } catch {
        // One device failing to let go must not keep the others' files open.
      }
    }
  }

  model(name: string): DeviceModel | undefined {
    return this.byName.get(name);
  }

  /** The device object of model `name`, if it is a `type`. */
  instance<T>(name: string, type: abstract new (...args: never[]) => T): T | undefined {
    const i = this.byName.get(name)?.instance;
    return i instanceof type ? i : undefined;
  }

  /** The channel target device `name` takes host messages on, or null. */
  hostTarget(name: string): number | null {
    return this.byName.get(name)?.hostMessages?.target ?? null;
  }

  /** Every device's part of the firmware tables, merged. */
  tables(): TableFragment {
    const merged: TableFragment = { bootArch: 0, levelIsaIrqs: [] };
    for (const m of this.models) {
      const f = m.tables?.();
      if (!f) continue;
      merged.bootArch = (merged.bootArch ?? 0) | (f.bootArch ?? 0);
      for (const irq of f.levelIsaIrqs ?? []) if (!merged.levelIsaIrqs!.includes(irq)) merged.levelIsaIrqs!.push(irq);
      if (f.pciRoot) {
        if (merged.pciRoot) throw new Error(`${m.name}: a second PCI root bridge is not supported`);
        merged.pciRoot = f.pciRoot;
      }
    }
    return merged;
  }

  // --- what boot code and tests look up ----------------------------------------------
  get fwCfg(): FwCfg {
    const fwCfg = this.byName.get('fw-cfg')?.instance as FwCfg | undefined;
    if (!fwCfg) throw new Error('this machine has no fw_cfg device');
    return fwCfg;
  }
  get pci(): PciPlatform | undefined {
    return this.byName.get('pci')?.instance as PciPlatform | undefined;
  }
  get i8042(): I8042 | undefined {
    return this.instance('i8042', I8042);
  }
  /** COM1..COM4 (null where a port is not present). */
  get serial(): (Uart16550 | null)[] {
    return COM_PORTS.map((_, i) => this.instance(`COM${i + 1}`, Uart16550) ?? null);
  }
  get debugExit(): DebugExitPort | null {
    return (this.byName.get('debug-exit')?.instance as DebugExitPort | undefined) ?? null;
  }
}

export function buildPlatform(ctx: MachineContext & { requestPowerOff(exitCode?: number): void }): Platform {
  return new Platform(ctx);
}
