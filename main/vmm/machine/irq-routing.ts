// The one owner of KVM's GSI routing table (machine thread). KVM_SET_GSI_ROUTING replaces
// the whole table, so every change goes through here: the platform's interrupt lines
// (IOAPIC/PIC routes, fixed) and the MSI routes devices allocate (a GSI above the lines,
// pointing at an address/data message, with an eventfd bound to it by KVM_IRQFD).
import * as libc from '../../../native/libc';
import type { IrqfdOptions, IrqRoute } from '../../../native/kvm';
import type { InterruptRouter, LineIrqfd, MsiMessage, MsiRoute } from '../devices/interrupts';

/** What the routing needs of the KVM VM (KvmVm; unit tests pass a fake). */
export interface RoutingKvm {
  setGsiRouting(routes: IrqRoute[]): void;
  irqfd(eventFd: number, gsi: number, opts?: IrqfdOptions): void;
}

/** eventfd(2) operations (nativeEventFds; unit tests pass a fake). */
export interface EventFdOps {
  /** A new non-blocking eventfd with a zero counter. */
  create(): number;
  /** Reads and clears the counter; 0 if it was zero. */
  read(fd: number): number;
  /** Adds 1 to the counter. */
  write(fd: number): void;
  close(fd: number): void;
}

export const nativeEventFds: EventFdOps = {
  create: () => libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK),
  read: (fd) => libc.eventfdRead(fd),
  write: (fd) => { libc.eventfdWrite(fd); },
  close: (fd) => libc.close(fd),
};

/** KVM_MAX_IRQ_ROUTES on x86, for a KVM that does not report it. */
export const DEFAULT_MAX_ROUTES = 4096;

export interface IrqRoutingOptions {
  /** The platform's interrupt line routes (pcIrqRoutes()); never change. */
  lineRoutes: IrqRoute[];
  /** The most entries and the GSI bound of KVM's table (KVM_CAP_IRQ_ROUTING). */
  maxRoutes?: number;
  eventFds?: EventFdOps;
}

export class IrqRouting implements InterruptRouter {
  /** KVM_SET_GSI_ROUTING calls so far. */
  commits = 0;
  private readonly lineRoutes: IrqRoute[];
  private readonly lineGsis: Set<number>;
  private readonly maxRoutes: number;
  private readonly firstMsiGsi: number;
  private readonly eventFds: EventFdOps;
  /** Allocated MSI routes by GSI. */
  private readonly msiRoutes = new Map<number, MsiRouteImpl>();
  private readonly freeGsis: number[] = [];
  private nextGsi: number;
  private readonly lineIrqfds = new Set<LineIrqfdImpl>();
  private batchDepth = 0;
  private dirty = false;
  /** Routes attached inside a batch: bound to their eventfd once the table is committed. */
  private readonly deferredAssigns = new Set<MsiRouteImpl>();
  private closed = false;

  constructor(private readonly kvm: RoutingKvm, opts: IrqRoutingOptions) {
    this.lineRoutes = opts.lineRoutes.map((r) => ({ ...r }));
    this.lineGsis = new Set(this.lineRoutes.map((r) => r.gsi));
    this.maxRoutes = opts.maxRoutes && opts.maxRoutes > 0 ? opts.maxRoutes : DEFAULT_MAX_ROUTES;
    this.firstMsiGsi = this.lineRoutes.reduce((m, r) => Math.max(m, r.gsi + 1), 0);
    this.nextGsi = this.firstMsiGsi;
    this.eventFds = opts.eventFds ?? nativeEventFds;
    if (this.lineRoutes.length > this.maxRoutes) throw new Error(`${this.lineRoutes.length} line routes exceed KVM's ${this.maxRoutes}`);
  }

  /** MSI routes allocated now. */
  get msiRouteCount(): number {
    return this.msiRoutes.size;
  }

  /** The table as KVM has it after the next commit: the lines, then MSI routes by GSI. */
  table(): IrqRoute[] {
    const routes = this.lineRoutes.map((r) => ({ ...r }));
    const gsis = [...this.msiRoutes.keys()].sort((a, b) => a - b);
    for (const gsi of gsis) {
      const message = this.msiRoutes.get(gsi)?.message;
      if (message) routes.push({ gsi, msi: { ...message } });
    }
    return routes;
  }

  /** Hands the whole table to KVM (KVM_SET_GSI_ROUTING), then binds routes waiting for it. */
  commit(): void {
    if (this.closed) return;
    this.kvm.setGsiRouting(this.table());
    this.commits++;
    this.dirty = false;
    const waiting = [...this.deferredAssigns];
    this.deferredAssigns.clear();
    for (const route of waiting) this.kvm.irqfd(route.eventFd, route.gsi);
  }

  batch(fn: () => void): void {
    this.batchDepth++;
    try {
      fn();
    } finally {
      this.batchDepth--;
      if (this.batchDepth === 0 && (this.dirty || this.deferredAssigns.size > 0)) this.commitOrAssign();
    }
  }

  private commitOrAssign(): void {
    if (this.dirty) {
      this.commit();
      return;
    }
    const waiting = [...this.deferredAssigns];
    this.deferredAssigns.clear();
    for (const route of waiting) this.kvm.irqfd(route.eventFd, route.gsi);
  }

  createMsiRoute(): MsiRoute {
    if (this.closed) throw new Error('the machine has ended: no new MSI routes');
    // KVM limits both the GSI numbers and the entries (lines + MSI routes) to maxRoutes.
    const capacity = this.maxRoutes - this.lineRoutes.length;
    if (this.msiRoutes.size >= capacity) throw new RangeError(`KVM's interrupt routing table is full (${this.maxRoutes} routes)`);
    let gsi = this.freeGsis.pop();
    if (gsi === undefined) {
      if (this.nextGsi >= this.maxRoutes) throw new RangeError(`no free GSI below ${this.maxRoutes}`);
      gsi = this.nextGsi++;
    }
    let eventFd: number;
    try {
      eventFd = this.eventFds.create();
    } catch (e) {
      this.freeGsis.push(gsi);
      throw e;
    }
    const route = new MsiRouteImpl(this, gsi, eventFd);
    this.msiRoutes.set(gsi, route);
    return route;
  }

  lineIrqfd(gsi: number, opts: { resample?: boolean } = {}): LineIrqfd {
    if (this.closed) throw new Error('the machine has ended: no new irqfds');
    if (!this.lineGsis.has(gsi)) throw new RangeError(`GSI ${gsi} is not an interrupt line of this machine`);
    const eventFd = this.eventFds.create();
    let resampleFd: number | null = null;
    try {
      if (opts.resample) resampleFd = this.eventFds.create();
      this.kvm.irqfd(eventFd, gsi, resampleFd === null ? {} : { resampleFd });
    } catch (e) {
      this.eventFds.close(eventFd);
      if (resampleFd !== null) this.eventFds.close(resampleFd);
      throw e;
    }
    const irqfd = new LineIrqfdImpl(this, gsi, eventFd, resampleFd);
    this.lineIrqfds.add(irqfd);
    return irqfd;
  }

  /** The machine ended: closes every eventfd (KVM drops the irqfds with the VM). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const route of this.msiRoutes.values()) route.dispose();
    this.msiRoutes.clear();
    for (const irqfd of this.lineIrqfds) irqfd.dispose();
    this.lineIrqfds.clear();
    this.deferredAssigns.clear();
  }

  // --- for the route objects ---------------------------------------------------------

  /** @internal A route's message changed. */
  routeChanged(): void {
    if (this.batchDepth > 0) this.dirty = true;
    else this.commit();
  }

  /** @internal Binds a route's eventfd, after any table change it depends on. */
  assign(route: MsiRouteImpl): void {
    if (this.batchDepth > 0) this.deferredAssigns.add(route);
    else this.kvm.irqfd(route.eventFd, route.gsi);
  }

  /** @internal Unbinds a route's eventfd (or cancels a bind still waiting in a batch). */
  deassign(route: MsiRouteImpl): void {
    if (this.deferredAssigns.delete(route)) return;
    this.kvm.irqfd(route.eventFd, route.gsi, { deassign: true });
  }

  /** @internal */
  releaseRoute(route: MsiRouteImpl): void {
    this.msiRoutes.delete(route.gsi);
    this.freeGsis.push(route.gsi);
    // The stale entry is harmless until the GSI is reused, which commits again.
    if (route.message) this.dirty = true;
  }

  /** @internal */
  releaseLine(irqfd: LineIrqfdImpl): void {
    this.lineIrqfds.delete(irqfd);
    this.kvm.irqfd(irqfd.eventFd, irqfd.gsi, { deassign: true });
  }

  /** @internal */
  get fds(): EventFdOps {
    return this.eventFds;
  }

  /** @internal */
  get isClosed(): boolean {
    return this.closed;
  }
}

function sameMessage(a: MsiMessage | null, b: MsiMessage): boolean {
  return a !== null && a.addressLo === b.addressLo && a.addressHi === b.addressHi && a.data === b.data;
}

class MsiRouteImpl implements MsiRoute {
  /** The message in KVM's table (null until first attached). */
  message: MsiMessage | null = null;
  private bound = false;
  private released = false;

  constructor(private readonly owner: IrqRouting, readonly gsi: number, readonly eventFd: number) {}

  get attached(): boolean {
    return this.bound;
  }

  attach(message: MsiMessage): void {
    if (this.released) throw new Error(`MSI route GSI ${this.gsi} was released`);
    const next = { addressLo: message.addressLo >>> 0, addressHi: message.addressHi >>> 0, data: message.data >>> 0 };
    if (!sameMessage(this.message, next)) {
      this.message = next;
      this.owner.routeChanged();
    }
    if (!this.bound) {
      this.bound = true;
      this.owner.assign(this);
    }
  }

  detach(): void {
    if (!this.bound || this.released) return;
    this.bound = false;
    this.owner.deassign(this);
  }

  takePending(): boolean {
    // While bound, KVM consumes the counter itself (Linux 5.11 and later).
    if (this.bound || this.released) return false;
    return this.owner.fds.read(this.eventFd) > 0;
  }

  trigger(): void {
    if (this.released) return;
    this.owner.fds.write(this.eventFd);
  }

  release(): void {
    if (this.released) return;
    if (!this.owner.isClosed) {
      this.detach();
      this.owner.releaseRoute(this);
    }
    this.dispose();
  }

  /** Closes the eventfd; no KVM call (the routing or the VM is going away). */
  dispose(): void {
    if (this.released) return;
    this.released = true;
    this.bound = false;
    this.owner.fds.close(this.eventFd);
  }
}

class LineIrqfdImpl implements LineIrqfd {
  private released = false;
  constructor(private readonly owner: IrqRouting, readonly gsi: number, readonly eventFd: number, readonly resampleFd: number | null) {}

  release(): void {
    if (this.released) return;
    if (!this.owner.isClosed) this.owner.releaseLine(this);
    this.dispose();
  }

  dispose(): void {
    if (this.released) return;
    this.released = true;
    this.owner.fds.close(this.eventFd);
    if (this.resampleFd !== null) this.owner.fds.close(this.resampleFd);
  }
}
