// The xHCI controller as a PCI function (class 0x0c0330) and its device model. BAR 0 holds the
// controller's registers and, past them, the MSI-X table and PBA; interrupter n raises MSI-X
// vector n, or INTx A while MSI-X is off. The emulated devices of the VM's config are plugged
// in at build time, and hot-plugged through host messages; a reset rebuilds the machine with
// the devices plugged in at that moment (the VM host hands them over).
// Three pages of BAR 0 are read-only KVM slots where KVM allows them, so reads take no exit
// while writes still exit to the controller: the doorbell page, of zeros (doorbells read as 0,
// xHCI 5.6; Linux reads one back after each write); the interrupters' page, whose memory is
// where the controller keeps those registers (Linux reads IMAN and ERDP at every interrupt);
// and the first page, where it keeps the capability, operational and port registers (Linux
// reads USBSTS at every interrupt). MFINDEX, which changes with time, has page 1 to itself.
// USBSTS writes (the write-1-to-clear of EINT at every interrupt) queue in KVM's coalesced
// ring instead of exiting, and so do writes to the high dword of each interrupter's ERDP (Linux
// writes ERDP low, then high, at the end of every interrupt). The machine applies the ring before
// it handles any exit, and the controller before it sets a USBSTS bit or posts an event. Until
// then a read shows the register's older value: Linux's handler writes ERDP low (pointer and
// EHB, which exits) before it reads USBSTS or ERDP again.
import { DmaMemory } from '../../memory/dma';
import { allocateRom, hostAddressOf, type MemoryRegion } from '../../memory/guest-memory';
import type { UsbConfig, UsbDeviceConfig } from '../../config';
import { type Counter, counter, type DeviceContext, type DeviceFactory, type IoDevice } from '../device';
import { MsixCapability } from '../pci/msix';
import { PCI_CFG, PCI_COMMAND, PciDevice } from '../pci/pci-device';
import { openUsbStorage } from './storage/usb-storage';
import { UsbKeyboard } from './hid-keyboard';
import { UsbTablet } from './hid-tablet';
import { UsbSerialAcm } from './cdc-acm';
import type { UsbDevice } from './usb-device';
import { XhciController } from './xhci';
import { XhciHotplug, type UsbDeviceMaker, type UsbSerialLink } from './xhci-hotplug';
import { PassthroughRouter } from './passthrough/passthrough-device';
import { UsbfsDirectUrbs } from './passthrough/direct-urbs';
import { isPassthroughKind } from '../../shared/usb-passthrough-messages';
import { USB_KIND, XHCI_CHANNEL_TARGET } from '../../shared/usb-messages';
import { DB_BASE, IR_ERDP, MAX_INTRS, OP_BASE, OP_USBSTS, REGISTER_PAGE_WORDS, RT_IR_PAGE, RT_IR_STRIDE, XHCI_BAR_SIZE } from './xhci/constants';

/** Where the controller sits on bus 0. */
export const XHCI_PCI_SLOT = 4;
/** MSI-X table and PBA inside BAR 0, clear of the controller's registers (which end below 0x5000). */
const MSIX_TABLE_OFFSET = 0x8000;
const MSIX_PBA_OFFSET = 0x9000;
/** Serial Bus Release Number register (xHCI 5.2.3): 0x30 = USB 3.0. */
const PCI_SBRN = 0x60;
const PCI_FLADJ = 0x61;
/** The doorbell array's page: nothing else of the controller's reads from it. */
export const XHCI_DOORBELL_PAGE = { offset: DB_BASE, size: 0x1000 } as const;
/** The interrupters' page: nothing but their registers. */
export const XHCI_INTERRUPTER_PAGE = { offset: RT_IR_PAGE, size: 0x1000 } as const;
/** The capability, operational and port registers' page. */
export const XHCI_REGISTER_PAGE = { offset: 0, size: REGISTER_PAGE_WORDS * 4 } as const;

/**
 * PORTHOLE_XHCI_EXIT_REGISTERS=1: reads of the register page and writes of ERDP's high dwords
 * exit, as before they were mapped and queued (for comparing the two in one bench).
 */
function exitRegisters(): boolean {
  return process.env.PORTHOLE_XHCI_EXIT_REGISTERS === '1';
}

/**
 * One page of zeros for every controller of this thread (never written: the guest's slot is
 * read-only). The region is held here for the thread's life: KVM maps its memory, which the
 * garbage collector would otherwise free under the slot.
 */
let zeroPageRegion: MemoryRegion | null = null;
function zeroPage(): bigint {
  zeroPageRegion ??= allocateRom(0, new Uint8Array(XHCI_DOORBELL_PAGE.size), 'xhci-doorbells');
  return hostAddressOf(zeroPageRegion);
}

export class XhciPci extends PciDevice {
  readonly controller: XhciController;
  readonly msix: MsixCapability;
  /** Interrupters whose level is up while MSI-X is off (they share INTx A). */
  private intxLevels = 0;
  /** The read-only slots of the doorbell, interrupter and register pages while BAR 0 decodes (their reads exit without them). */
  private pageSlots: number[] = [];
  /** BAR 0 offsets of the registers whose writes KVM queues (see the top of this file). */
  private static readonly QUEUED_USBSTS = [OP_BASE + OP_USBSTS];
  private static readonly QUEUED_ERDP_HIGH = Array.from({ length: MAX_INTRS }, (_, i) => RT_IR_PAGE + i * RT_IR_STRIDE + IR_ERDP + 4);
  /** Guest addresses of the queued registers KVM took (4 bytes each). */
  private queuedZones: number[] = [];
  /** The interrupters' registers (the controller's own storage), held for as long as KVM may map it. */
  private readonly interrupterPage = allocateRom(0, new Uint8Array(XHCI_INTERRUPTER_PAGE.size), 'xhci-interrupters');
  private readonly registerPage = allocateRom(0, new Uint8Array(XHCI_REGISTER_PAGE.size), 'xhci-registers');

  constructor(private readonly ctx: DeviceContext) {
    // Register-compatible with QEMU's qemu-xhci (1b36:000d): guests' drivers need no quirks.
    super('xhci', { vendorId: 0x1b36, deviceId: 0x000d, classCode: 0x0c0330, revision: 1, interruptPin: 1 });
    this.config[PCI_SBRN] = 0x30;
    this.config[PCI_FLADJ] = 0x20;
    const bar: IoDevice = {
      name: 'xhci',
      read: (offset, size) => this.msix.readBar(0, offset, size) ?? this.controller.read(offset, size),
      write: (offset, size, value) => {
        if (!this.msix.writeBar(0, offset, size, value)) this.controller.write(offset, size, value);
      },
    };
    this.defineBar(0, { kind: 'mem64', size: XHCI_BAR_SIZE, mmio: bar });
    this.msix = new MsixCapability(this, {
      vectors: MAX_INTRS, tableBar: 0, tableOffset: MSIX_TABLE_OFFSET, pbaBar: 0, pbaOffset: MSIX_PBA_OFFSET,
    }, { router: ctx.interrupts, statistics: ctx.statistics });
    const counters = new Map<string, Counter>();
    const dma = new DmaMemory(ctx.memory, () => (this.config[PCI_CFG.COMMAND] & PCI_COMMAND.MASTER) !== 0);
    this.controller = new XhciController({
      dma,
      interrupts: { raise: (i) => this.raise(i), lower: (i) => this.lower(i) },
      // The controller only measures intervals with now() (MFINDEX, moderation, doorbell time):
      // performance.now() does that without monotonicMs's BigInt per call.
      clock: { now: () => performance.now(), setTimer: (delayMs, fn) => ctx.setTimer(delayMs, fn) },
      count: (name, n) => {
        let c = counters.get(name);
        if (!c) {
          c = counter(ctx.statistics, 'xhci', name);
          counters.set(name, c);
        }
        c.add(n);
      },
      statistics: ctx.statistics,
      log: (text) => ctx.log(`xhci: ${text}`),
      interrupterRegisters: new Uint32Array(this.interrupterPage.buffer, this.interrupterPage.offset, XHCI_INTERRUPTER_PAGE.size / 4),
      registerPage: new Uint32Array(this.registerPage.buffer, this.registerPage.offset, REGISTER_PAGE_WORDS),
      settleQueuedWrites: ctx.queuedWrites ? () => ctx.queuedWrites!.settle() : undefined,
    });
  }

  protected override barMoved(index: number, address: number | null): void {
    // PORTHOLE_XHCI_TRAP_REGISTERS=1: every register access exits, as before the pages and
    // the queue (for comparing the two in one bench).
    if (index !== 0 || process.env.PORTHOLE_XHCI_TRAP_REGISTERS === '1') return;
    const queued = this.ctx.queuedWrites;
    // The config write that moved the BAR exited, and the queue was applied before it.
    if (queued) for (const zone of this.queuedZones) queued.remove(zone, 4);
    this.queuedZones = [];
    if (queued && address !== null) {
      const offsets = exitRegisters() ? XhciPci.QUEUED_USBSTS : [...XhciPci.QUEUED_USBSTS, ...XhciPci.QUEUED_ERDP_HIGH];
      for (const offset of offsets) if (queued.add(address + offset, 4)) this.queuedZones.push(address + offset);
    }
    const slots = this.ctx.slots;
    if (!slots) return;
    for (const slot of this.pageSlots) slots.remove(slot);
    this.pageSlots = [];
    if (address === null) return;
    const pages = [
      { page: XHCI_DOORBELL_PAGE, memory: zeroPage(), name: 'doorbells' },
      { page: XHCI_INTERRUPTER_PAGE, memory: hostAddressOf(this.interrupterPage), name: 'interrupters' },
      ...exitRegisters() ? [] : [{ page: XHCI_REGISTER_PAGE, memory: hostAddressOf(this.registerPage), name: 'registers' }],
    ];
    for (const { page, memory, name } of pages) {
      try {
        this.pageSlots.push(slots.add(address + page.offset, page.size, memory, { readonly: true, name: `xhci/${name}` }));
      } catch (e) {
        // No read-only slots in this KVM, or no free slot: these reads exit as before.
        this.ctx.log(`xhci: reads of the ${name} page exit (${(e as Error).message})`);
      }
    }
  }

  private raise(interrupter: number): boolean {
    if (this.msix.enabled) {
      this.msix.notify(interrupter);
      return true;
    }
    this.intxLevels |= 1 << interrupter;
    this.setIntx(true);
    return false;
  }

  private lower(interrupter: number): void {
    this.intxLevels &= ~(1 << interrupter);
    if (this.intxLevels === 0) this.setIntx(false);
  }
}

/**
 * Makes the emulated device a config entry names; throws a clear error (an image that cannot be
 * used). `superSpeed`: storage for a USB 3 port (otherwise high speed, for a USB 2 port).
 */
export function createUsbDevice(config: UsbDeviceConfig, options: { superSpeed?: boolean; serial?: UsbSerialLink } = {}): UsbDevice {
  switch (config.kind) {
    // Without the idle-rate clock: with it SeaBIOS hung before enumerating the port (under
    // investigation), so held keys do not repeat in SeaBIOS for now; Linux repeats keys itself.
    case 'keyboard': return new UsbKeyboard();
    case 'tablet': return new UsbTablet();
    case 'storage': return openUsbStorage(config.path, {
      readOnly: config.readOnly, synchronous: true, speed: options.superSpeed === true ? 'super' : 'high',
    });
    // Full speed on a USB 2 port, as the FTDI and CDC adapters people plug in; no bytes
    // leave without a link (tests and a backend of "none").
    case 'serial': return new UsbSerialAcm({
      name: `usb-serial ${config.backend}`,
      onOutput: (bytes) => options.serial?.onOutput(bytes) ?? true,
      onReceiveSpace: () => options.serial?.onReceiveSpace(),
    });
    // Made by the xHCI's factory below, which has the channel to the VM host.
    case 'host': throw new Error('a host USB device needs the VM host (attach it at run time)');
  }
}

/**
 * The USB controller of the VM's config, with its devices plugged in (none: no model). Its
 * host messages add and remove devices while the guest runs (xhci-hotplug.ts).
 */
export const usbControllerDevice: DeviceFactory = (ctx) => {
  const usb: UsbConfig | undefined = ctx.config.usb;
  if (!usb || usb.controller === 'none') return null;
  const xhci = new XhciPci(ctx);
  const passthrough = new PassthroughRouter({
    send: (kind, payload) => ctx.sendToHost(XHCI_CHANNEL_TARGET, kind, payload),
    setTimer: (delayMs, fn) => ctx.setTimer(delayMs, fn),
    log: (text) => ctx.log(text),
    // PORTHOLE_USB_DIRECT=0 sends every transfer through the VM host (for comparison).
    ...(ctx.kickWatch === undefined || process.env.PORTHOLE_USB_DIRECT === '0' ? {} : {
      openDirect: (usbfs: { fd: number; path: string }) => UsbfsDirectUrbs.adopt(usbfs.fd, usbfs.path),
      kickWatch: ctx.kickWatch,
    }),
  });
  const make: UsbDeviceMaker = (config, options) => config.kind === 'host' ? passthrough.create(config, { onUsb3Port: options.superSpeed }) : createUsbDevice(config, options);
  const hotplug = new XhciHotplug(xhci.controller, make, {
    send: (payload) => ctx.sendToHost(XHCI_CHANNEL_TARGET, USB_KIND.REPLY, payload),
    sendSerial: (payload) => ctx.sendToHost(XHCI_CHANNEL_TARGET, USB_KIND.SERIAL_OUTPUT, payload),
    setTimer: (delayMs, fn) => ctx.setTimer(delayMs, fn),
    log: (text) => ctx.log(text),
    sendCapture: (record) => ctx.sendToHost(XHCI_CHANNEL_TARGET, USB_KIND.CAPTURE, record),
  });
  hotplug.plugConfigured(usb.devices);
  return {
    name: 'xhci',
    instance: xhci,
    pci: [{ slot: XHCI_PCI_SLOT, fn: 0, device: xhci }],
    hostMessages: {
      target: XHCI_CHANNEL_TARGET,
      handle: (kind, payload) => isPassthroughKind(kind) ? passthrough.handle(kind, payload) : hotplug.handle(kind, payload),
    },
    close: () => {
      hotplug.close();
      passthrough.close();
    },
  };
};
