// ioeventfds (machine thread): doorbell registers a device opts into. A guest write that
// matches a registration adds 1 to its eventfd inside KVM, with no exit; whoever waits on
// the eventfd (a VM host backend, the device on its next exit) picks the rings up.
import type { IoeventfdOptions } from '../../../native/kvm';
import type { Doorbell, DoorbellRegistry, DoorbellSpec } from '../devices/interrupts';
import { type EventFdOps, nativeEventFds } from './irq-routing';

/** What the doorbells need of the KVM VM (KvmVm; unit tests pass a fake). */
export interface DoorbellKvm {
  ioeventfd(opts: IoeventfdOptions): void;
}

/** Guest-physical addresses stay below 2^52 (x86's widest physical address). */
const PHYS_LIMIT = 2 ** 52;

/** Why `spec` cannot be registered, or null. */
export function doorbellSpecError(spec: DoorbellSpec): string | null {
  const { space, address, length, datamatch } = spec;
  if (space !== 'pio' && space !== 'mmio') return `doorbell space "${String(space)}" is not pio or mmio`;
  const widths = space === 'pio' ? [1, 2, 4] : [1, 2, 4, 8];
  if (!widths.includes(length)) return `a ${space} doorbell is ${widths.join(', ')} bytes wide, not ${length}`;
  const limit = space === 'pio' ? 0x10000 : PHYS_LIMIT;
  if (!Number.isInteger(address) || address < 0 || address + length > limit) {
    return `${space} doorbell at ${address} (+${length}) is outside 0..0x${limit.toString(16)}`;
  }
  if (datamatch !== undefined) {
    const max = length >= 7 ? Number.MAX_SAFE_INTEGER : 2 ** (8 * length) - 1;
    if (!Number.isInteger(datamatch) || datamatch < 0 || datamatch > max) return `doorbell datamatch ${datamatch} does not fit ${length} bytes`;
  }
  return null;
}

function describe(spec: DoorbellSpec): string {
  const match = spec.datamatch === undefined ? '' : ` = 0x${spec.datamatch.toString(16)}`;
  return `${spec.space} 0x${spec.address.toString(16)}/${spec.length}${match}`;
}

export class Doorbells implements DoorbellRegistry {
  private readonly registered = new Set<DoorbellImpl>();
  private closed = false;

  constructor(private readonly kvm: DoorbellKvm, private readonly eventFds: EventFdOps = nativeEventFds) {}

  get count(): number {
    return this.registered.size;
  }

  register(spec: DoorbellSpec): Doorbell {
    if (this.closed) throw new Error('the machine has ended: no new doorbells');
    const error = doorbellSpecError(spec);
    if (error) throw new RangeError(error);
    // KVM refuses (EEXIST) the same address and width with the same or no datamatch.
    for (const other of this.registered) {
      if (other.space === spec.space && other.address === spec.address && other.length === spec.length
        && (other.datamatch === undefined || spec.datamatch === undefined || other.datamatch === spec.datamatch)) {
        throw new Error(`doorbell ${describe(spec)} collides with ${describe(other)}`);
      }
    }
    const eventFd = this.eventFds.create();
    const copy: DoorbellSpec = { space: spec.space, address: spec.address, length: spec.length, datamatch: spec.datamatch };
    try {
      this.kvm.ioeventfd(this.options(copy, eventFd, false));
    } catch (e) {
      this.eventFds.close(eventFd);
      throw e;
    }
    const doorbell = new DoorbellImpl(this, copy, eventFd);
    this.registered.add(doorbell);
    return doorbell;
  }

  signal(eventFd: number): void {
    this.eventFds.write(eventFd);
  }

  /** The machine ended: closes every eventfd (KVM drops the ioeventfds with the VM). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const d of this.registered) d.dispose();
    this.registered.clear();
  }

  /** @internal */
  unregister(doorbell: DoorbellImpl): void {
    if (!this.registered.delete(doorbell) || this.closed) return;
    this.kvm.ioeventfd(this.options(doorbell, doorbell.eventFd, true));
  }

  /** @internal */
  get fds(): EventFdOps {
    return this.eventFds;
  }

  private options(spec: DoorbellSpec, eventFd: number, deassign: boolean): IoeventfdOptions {
    return {
      address: spec.address, length: spec.length, eventFd, pio: spec.space === 'pio', datamatch: spec.datamatch, deassign,
    };
  }
}

class DoorbellImpl implements Doorbell {
  readonly space: 'pio' | 'mmio';
  readonly address: number;
  readonly length: number;
  readonly datamatch?: number;
  private released = false;

  constructor(private readonly owner: Doorbells, spec: DoorbellSpec, readonly eventFd: number) {
    this.space = spec.space;
    this.address = spec.address;
    this.length = spec.length;
    if (spec.datamatch !== undefined) this.datamatch = spec.datamatch;
  }

  takeCount(): number {
    return this.released ? 0 : this.owner.fds.read(this.eventFd);
  }

  ring(): void {
    if (!this.released) this.owner.fds.write(this.eventFd);
  }

  release(): void {
    if (this.released) return;
    this.owner.unregister(this);
    this.dispose();
  }

  dispose(): void {
    if (this.released) return;
    this.released = true;
    this.owner.fds.close(this.eventFd);
  }
}
