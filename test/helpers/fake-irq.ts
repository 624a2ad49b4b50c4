// A model of KVM's interrupt routing, irqfds, ioeventfds and eventfds, for unit tests
// without /dev/kvm. It keeps the semantics the VMM relies on: KVM_SET_GSI_ROUTING replaces
// the table; a write to an eventfd bound by KVM_IRQFD injects the GSI's current route (and
// is consumed), an unbound eventfd's writes add up in its counter; binding an eventfd whose
// counter is non-zero injects at once.
import type { IoeventfdOptions, IrqfdOptions, IrqRoute } from '../../native/kvm';
import type { MsiMessage } from '../../main/vmm/devices/interrupts';
import type { EventFdOps, RoutingKvm } from '../../main/vmm/machine/irq-routing';
import type { DoorbellKvm } from '../../main/vmm/machine/doorbells';

export class FakeEventFds implements EventFdOps {
  private nextFd = 100;
  readonly counters = new Map<number, number>();
  readonly closed = new Set<number>();
  /** Set by FakeKvm: takes a write to a bound eventfd (returns true) before it is counted. */
  onWrite: ((fd: number) => boolean) | null = null;

  create(): number {
    const fd = this.nextFd++;
    this.counters.set(fd, 0);
    return fd;
  }
  read(fd: number): number {
    const n = this.counterOf(fd);
    this.counters.set(fd, 0);
    return n;
  }
  write(fd: number): void {
    this.counterOf(fd);
    if (this.onWrite?.(fd)) return;
    this.counters.set(fd, (this.counters.get(fd) ?? 0) + 1);
  }
  close(fd: number): void {
    this.counterOf(fd);
    this.counters.delete(fd);
    this.closed.add(fd);
  }
  /** Open eventfds. */
  get open(): number[] {
    return [...this.counters.keys()];
  }
  private counterOf(fd: number): number {
    const n = this.counters.get(fd);
    if (n === undefined) throw new Error(`fake eventfd ${fd} is not open (EBADF)`);
    return n;
  }
}

export interface Injection {
  gsi: number;
  /** The MSI message KVM would write, or null for an irqchip (line) route. */
  msi: MsiMessage | null;
}

export class FakeKvm implements RoutingKvm, DoorbellKvm {
  table: IrqRoute[] = [];
  commits = 0;
  /** Bound irqfds by eventfd. */
  readonly irqfds = new Map<number, { gsi: number; resampleFd?: number }>();
  readonly injected: Injection[] = [];
  /** Injections of a GSI with no route (KVM drops them). */
  lost = 0;
  readonly ioeventfds: IoeventfdOptions[] = [];
  /** Every call in order: 'routing', 'assign <fd> <gsi>', 'deassign <fd> <gsi>', 'ioeventfd ...'. */
  readonly calls: string[] = [];

  constructor(readonly fds: FakeEventFds, readonly maxRoutes = 4096) {
    fds.onWrite = (fd) => {
      const bound = this.irqfds.get(fd);
      if (!bound) return false;
      this.inject(bound.gsi);
      return true;
    };
  }

  setGsiRouting(routes: IrqRoute[]): void {
    if (routes.length > this.maxRoutes) throw new Error('KVM_SET_GSI_ROUTING: EINVAL (too many routes)');
    for (const r of routes) {
      if (!Number.isInteger(r.gsi) || r.gsi < 0 || r.gsi >= this.maxRoutes) throw new Error(`KVM_SET_GSI_ROUTING: EINVAL (GSI ${r.gsi})`);
      const same = routes.filter((o) => o.gsi === r.gsi);
      if (r.msi && same.length > 1) throw new Error(`KVM_SET_GSI_ROUTING: EINVAL (MSI GSI ${r.gsi} has ${same.length} entries)`);
    }
    this.table = routes.map((r) => ({ gsi: r.gsi, irqchip: r.irqchip && { ...r.irqchip }, msi: r.msi && { ...r.msi } }));
    this.commits++;
    this.calls.push('routing');
  }

  irqfd(eventFd: number, gsi: number, opts: IrqfdOptions = {}): void {
    if (opts.deassign) {
      const bound = this.irqfds.get(eventFd);
      if (!bound || bound.gsi !== gsi) throw new Error(`KVM_IRQFD(fd ${eventFd}, GSI ${gsi}, deassign): ENOENT`);
      this.irqfds.delete(eventFd);
      this.calls.push(`deassign ${eventFd} ${gsi}`);
      return;
    }
    if (this.irqfds.has(eventFd)) throw new Error(`KVM_IRQFD(fd ${eventFd}, GSI ${gsi}, assign): EBUSY`);
    if (!this.fds.counters.has(eventFd)) throw new Error(`KVM_IRQFD(fd ${eventFd}): EBADF`);
    this.irqfds.set(eventFd, { gsi, resampleFd: opts.resampleFd });
    this.calls.push(`assign ${eventFd} ${gsi}${opts.resampleFd === undefined ? '' : ` resample ${opts.resampleFd}`}`);
    // Bound to an eventfd that was already signalled: KVM injects at once.
    if ((this.fds.counters.get(eventFd) ?? 0) > 0) {
      this.fds.counters.set(eventFd, 0);
      this.inject(gsi);
    }
  }

  ioeventfd(opts: IoeventfdOptions): void {
    const key = (o: IoeventfdOptions) => `${o.pio ? 'pio' : 'mmio'} ${o.address} ${o.length} ${o.datamatch ?? '-'} fd ${o.eventFd}`;
    if (opts.deassign) {
      const i = this.ioeventfds.findIndex((o) => key(o) === key(opts));
      if (i < 0) throw new Error(`KVM_IOEVENTFD(deassign ${key(opts)}): ENOENT`);
      this.ioeventfds.splice(i, 1);
      this.calls.push(`ioeventfd deassign ${key(opts)}`);
      return;
    }
    this.ioeventfds.push({ ...opts });
    this.calls.push(`ioeventfd ${key(opts)}`);
  }

  /** A guest write the ioeventfds see: true if one took it (no exit). */
  guestWrite(pio: boolean, address: number, length: number, value: number): boolean {
    const hit = this.ioeventfds.find((o) => o.pio === pio && o.address === address && o.length === length
      && (o.datamatch === undefined || Number(o.datamatch) === value));
    if (!hit) return false;
    this.fds.write(hit.eventFd);
    return true;
  }

  /** MSI messages injected so far, in order. */
  get messages(): MsiMessage[] {
    return this.injected.flatMap((i) => (i.msi ? [i.msi] : []));
  }

  private inject(gsi: number): void {
    const routes = this.table.filter((r) => r.gsi === gsi);
    if (routes.length === 0) {
      this.lost++;
      return;
    }
    this.injected.push({ gsi, msi: routes[0].msi ? { ...routes[0].msi } : null });
  }
}
