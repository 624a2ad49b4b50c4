// What a device model may ask of the machine's interrupt routing and doorbells: MSI routes
// delivered through KVM irqfds, irqfds on interrupt lines, and ioeventfds. Each carries an
// eventfd that any thread of the VM process (the machine thread, a VM host backend) may
// write to: KVM then injects the interrupt, or counts the doorbell, with no JavaScript on
// the machine thread and no exit. Implemented by machine/irq-routing.ts and
// machine/doorbells.ts; unit tests supply fakes.

/** An MSI message: where the device writes (address) and what (data). */
export interface MsiMessage {
  addressLo: number;
  addressHi: number;
  data: number;
}

/**
 * One MSI route: a GSI of KVM's routing table pointing at a message, and the eventfd bound
 * to it with KVM_IRQFD. While attached, each write to `eventFd` delivers the message. While
 * detached, writes accumulate in the eventfd's counter, which takePending() reads: that is
 * how a masked MSI-X vector keeps a message pending.
 */
export interface MsiRoute {
  readonly gsi: number;
  /** Valid until release() or the end of the machine; never written after that. */
  readonly eventFd: number;
  readonly attached: boolean;
  /** Points the route at `message` and (if detached) binds the eventfd (KVM_IRQFD). */
  attach(message: MsiMessage): void;
  /** Unbinds the eventfd: later writes wait in its counter. */
  detach(): void;
  /** True if writes arrived while detached (their count is cleared). */
  takePending(): boolean;
  /** Sends the message once from the machine thread (a write to the eventfd). */
  trigger(): void;
  /** Frees the GSI and closes the eventfd. */
  release(): void;
}

/**
 * An irqfd on an interrupt line (a GSI of the IOAPIC/PIC), e.g. a PCI INTx or ISA IRQ.
 * Without resampling, a write pulses the line on KVM's user-space source, the same one
 * setIrq drives: it would lower a level a device asserts there, so such a line needs a
 * GSI of its own. A resampling irqfd has a source of its own.
 */
export interface LineIrqfd {
  readonly gsi: number;
  /** A write raises the line: a pulse (edge), or with resampling, a level held until EOI. */
  readonly eventFd: number;
  /**
   * With resampling: signalled by KVM when the guest acknowledged the interrupt and KVM
   * lowered the line; the owner re-raises it (writes eventFd) if the condition persists.
   */
  readonly resampleFd: number | null;
  release(): void;
}

export interface InterruptRouter {
  /** A new MSI route (a free GSI and an eventfd), detached. Throws when KVM's table is full. */
  createMsiRoute(): MsiRoute;
  /** An irqfd raising line `gsi` (0..23); `resample` makes it level-triggered (see LineIrqfd). */
  lineIrqfd(gsi: number, opts?: { resample?: boolean }): LineIrqfd;
  /**
   * Runs `fn`, committing KVM's routing table once at the end instead of after every route
   * change inside it (e.g. when the guest enables MSI-X with many vectors unmasked).
   */
  batch(fn: () => void): void;
}

export interface DoorbellSpec {
  space: 'pio' | 'mmio';
  /** A port, or a guest-physical address. */
  address: number;
  /** Width of the guest's write: 1, 2 or 4 (ports), 1, 2, 4 or 8 (MMIO). */
  length: number;
  /** Only writes of this value (below 2^53) ring the doorbell; other writes exit as usual. */
  datamatch?: number;
}

/** A registered ioeventfd: guest writes matching the spec add 1 to `eventFd` without an exit. */
export interface Doorbell extends Readonly<DoorbellSpec> {
  readonly eventFd: number;
  /** Reads and clears the number of rings so far (0 if none). */
  takeCount(): number;
  /** Rings it as a guest write would (a write of another width exited instead). */
  ring(): void;
  /** Unregisters the ioeventfd (guest writes exit again) and closes the eventfd. */
  release(): void;
}

export interface DoorbellRegistry {
  /** Registers an ioeventfd; throws if the spec is invalid or already registered. */
  register(spec: DoorbellSpec): Doorbell;
  /** Adds 1 to an eventfd another thread polls (a VM host data plane's control eventfd). */
  signal(eventFd: number): void;
}

/** What MSI and MSI-X capabilities need of the router. */
export type MsiRouter = Pick<InterruptRouter, 'createMsiRoute' | 'batch'>;

/**
 * A new MSI route, or null when KVM's routing table is full (the caller then sends through
 * KVM_SIGNAL_MSI). Any other failure is a bug and is thrown.
 */
export function createMsiRouteOrNull(router: MsiRouter): MsiRoute | null {
  try {
    return router.createMsiRoute();
  } catch (e) {
    if (e instanceof RangeError) return null;
    throw e;
  }
}
