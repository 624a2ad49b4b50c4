// Host PCI functions a VM is given (config pciAssign), on the VM host thread: each is taken from
// its host driver and bound to vfio-pci (pci-binding.ts, journaled first, so a crashed VM
// process's device is given back by the manager's journal repair), its IOMMU group and a
// container are opened, and all guest RAM is mapped for its DMA at IOVA = guest-physical
// address. RAM is made once per VM and kept across resets, so the map list is made once; the
// machine thread's ROM windows and BAR slots are no DMA targets. close() undoes all of it in
// reverse order and always gives the functions back, whatever failed before.
import { givePciDeviceBack, type PciJournal, type PciJournalEntry, takePciDevice, type TakenPciDevice } from '../../host/pci-binding';
import { openVfioPciDevice, type DmaMapping } from '../../../native/vfio';
import type { PciAssignConfig } from '../config';

const PAGE = 4096;

/** Guest RAM as the VM host has it: where the guest sees it and where it lives in this process. */
export interface RamMapping {
  guestBase: number;
  size: number;
  hostAddr: bigint;
  name: string;
}

/** The DMA maps for guest RAM: IOVA = guest-physical address, read and write. Refuses an unaligned or overlapping region. */
export function dmaMapList(ram: readonly RamMapping[]): DmaMapping[] {
  const sorted = [...ram].sort((a, b) => a.guestBase - b.guestBase);
  sorted.forEach((r, i) => {
    if (r.guestBase % PAGE !== 0 || r.size % PAGE !== 0 || r.size <= 0 || r.hostAddr % BigInt(PAGE) !== 0n) {
      throw new Error(`guest RAM ${r.name} (0x${r.guestBase.toString(16)}+0x${r.size.toString(16)}) is not page-aligned: it cannot be mapped for DMA`);
    }
    const prev = sorted[i - 1];
    if (prev && prev.guestBase + prev.size > r.guestBase) throw new Error(`guest RAM ${r.name} overlaps ${prev.name}`);
  });
  return sorted.map((r) => ({ iova: BigInt(r.guestBase), vaddr: r.hostAddr, size: r.size, read: true, write: true }));
}

/** What the DMA bookkeeping needs of a VFIO container (VfioContainer; tests pass a fake). */
export interface DmaContainer {
  mapDma(m: DmaMapping): void;
  unmapDma(iova: bigint, size: number): number;
}

/** The DMA maps one container holds; a map that fails unmaps the ones before it. */
export class DmaMaps {
  private readonly mapped: DmaMapping[] = [];

  constructor(private readonly container: DmaContainer) {}

  get mappings(): readonly DmaMapping[] {
    return this.mapped;
  }

  mapAll(list: readonly DmaMapping[]): void {
    for (const m of list) {
      try {
        this.container.mapDma(m);
      } catch (e) {
        this.unmapAll();
        throw e;
      }
      this.mapped.push(m);
    }
  }

  /** Unmaps everything mapped, last first; returns the failures as sentences. */
  unmapAll(): string[] {
    const errors: string[] = [];
    while (this.mapped.length > 0) {
      const m = this.mapped.pop() as DmaMapping;
      try {
        const n = this.container.unmapDma(m.iova, m.size);
        if (n !== m.size) errors.push(`DMA unmap of IOVA 0x${m.iova.toString(16)} took ${n} of ${m.size} bytes`);
      } catch (e) {
        errors.push((e as Error).message);
      }
    }
    return errors;
  }
}

/** One function a VM holds: taken from the host, open through VFIO, with its DMA maps. */
export interface OpenedPciFunction {
  address: string;
  deviceFd: number;
  close(): void;
}

export interface PciAssignDeps {
  take(address: string, options: { journal: PciJournal | null; vm: string; force?: boolean }): TakenPciDevice;
  giveBack(taken: TakenPciDevice, journal: PciJournal | null): string | null;
  open(group: number, address: string): { deviceFd: number; container: DmaContainer; close(): void };
}

export const nativePciAssignDeps: PciAssignDeps = {
  take: (address, options) => takePciDevice(address, options),
  giveBack: (taken, journal) => givePciDeviceBack(taken, { journal }),
  open: (group, address) => {
    const v = openVfioPciDevice(group, address);
    return { deviceFd: v.device.fd, container: v.container, close: () => v.close() };
  },
};

/** The functions of one VM. */
export class AssignedPci {
  private constructor(private readonly held: { taken: TakenPciDevice; opened: { deviceFd: number; close(): void } | null; dma: DmaMaps | null }[],
    private readonly journal: PciJournal | null, private readonly deps: PciAssignDeps) {}

  /**
   * Takes and opens every function and maps RAM for each; on any failure gives back what it
   * took and throws a sentence naming the function.
   */
  static open(configs: readonly PciAssignConfig[], ram: readonly RamMapping[], options: { vm: string; journal: PciJournal | null; deps?: PciAssignDeps }): AssignedPci {
    const deps = options.deps ?? nativePciAssignDeps;
    const list = dmaMapList(ram);
    const assigned = new AssignedPci([], options.journal, deps);
    try {
      for (const c of configs) {
        const taken = deps.take(c.address, { journal: options.journal, vm: options.vm, force: c.force });
        const entry: (typeof assigned.held)[number] = { taken, opened: null, dma: null };
        assigned.held.push(entry);
        try {
          const opened = deps.open(taken.iommuGroup, c.address);
          entry.opened = opened;
          entry.dma = new DmaMaps(opened.container);
          entry.dma.mapAll(list);
        } catch (e) {
          throw new Error(`PCI function ${c.address}: ${(e as Error).message}`);
        }
      }
    } catch (e) {
      assigned.close();
      throw e;
    }
    return assigned;
  }

  /** The configs with the open device fds, for the machine thread. */
  withFds(configs: readonly PciAssignConfig[]): PciAssignConfig[] {
    return configs.map((c) => {
      const h = this.held.find((x) => x.taken.address === c.address);
      return h?.opened ? { ...c, fd: h.opened.deviceFd } : { ...c };
    });
  }

  /** Unmaps DMA, closes the VFIO fds and gives every function back; returns what happened, as log lines. */
  close(): string[] {
    const lines: string[] = [];
    for (const h of this.held.splice(0).reverse()) {
      for (const err of h.dma?.unmapAll() ?? []) lines.push(`${h.taken.address}: ${err}`);
      try {
        h.opened?.close();
      } catch (e) {
        lines.push(`${h.taken.address}: closing VFIO: ${(e as Error).message}`);
      }
      try {
        const now = this.deps.giveBack(h.taken, this.journal);
        lines.push(`${h.taken.address} given back to the host (${now ?? 'no driver'})`);
      } catch (e) {
        lines.push(`${h.taken.address} not given back: ${(e as Error).message} (the journal keeps it for repair)`);
      }
    }
    return lines;
  }
}

/**
 * Before taking functions: one another VM process still holds is refused (naming the VM), one a
 * dead VM process left on vfio-pci is given back to its driver first (`repair`: the journal
 * repair for that process), so this VM journals the real driver and gives it back at the end.
 * Returns the repair's log lines.
 */
export function reclaimFromDeadHolders(addresses: readonly string[], entries: readonly PciJournalEntry[], options: {
  self: number; alive(pid: number): boolean; repair(pid: number): string[];
}): string[] {
  const lines: string[] = [];
  const repaired = new Set<number>();
  for (const address of addresses) {
    const holder = entries.find((e) => e.address === address && e.pid !== options.self);
    if (holder === undefined) continue;
    if (options.alive(holder.pid)) throw new Error(`PCI function ${address} is in VM ${holder.vm} (process ${holder.pid})`);
    if (repaired.has(holder.pid)) continue;
    repaired.add(holder.pid);
    lines.push(...options.repair(holder.pid));
  }
  return lines;
}
