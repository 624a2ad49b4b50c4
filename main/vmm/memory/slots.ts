// KVM memory slots of one VM: RAM, ROM windows, and later BARs (VFIO BAR mmaps, option
// ROMs) that come and go while the guest runs. Slot numbers come from a free list bounded
// by KVM's limit (KVM_CAP_NR_MEMSLOTS); a slot is removed the way KVM wants it, by setting
// its size to 0. The ioctl is injected so this is testable without /dev/kvm.

const PAGE = 4096;
/** KVM_MEM_READONLY (uapi/linux/kvm.h). */
export const SLOT_READONLY = 2;
/** What KVM guaranteed before KVM_CAP_NR_MEMSLOTS existed; used if the capability says 0. */
export const MIN_KVM_SLOTS = 32;

/** KVM_SET_USER_MEMORY_REGION for one slot; `size` 0 deletes the slot. */
export type SetUserMemoryRegion = (slot: number, flags: number, guestBase: number, size: number, hostAddr: bigint) => void;

export class MemorySlotError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MemorySlotError';
  }
}

export interface MemorySlot {
  readonly slot: number;
  readonly guestBase: number;
  readonly size: number;
  readonly hostAddr: bigint;
  readonly flags: number;
  readonly name: string;
}

export class MemorySlots {
  private readonly bySlot = new Map<number, MemorySlot>();
  /** Slot numbers given back, reused lowest first. */
  private free: number[] = [];
  /** Slot numbers below this have been handed out at least once. */
  private nextUnused = 0;
  readonly limit: number;

  constructor(private readonly setRegion: SetUserMemoryRegion, limit: number) {
    this.limit = Number.isInteger(limit) && limit > 0 ? limit : MIN_KVM_SLOTS;
  }

  get used(): number {
    return this.bySlot.size;
  }

  /** The slots in use, by guest address. */
  get slots(): MemorySlot[] {
    return [...this.bySlot.values()].sort((a, b) => a.guestBase - b.guestBase);
  }

  /**
   * Maps `size` bytes of host memory at `hostAddr` into the guest at `guestBase`; returns
   * the slot number. Refuses unaligned or overlapping ranges and a full slot table.
   */
  add(guestBase: number, size: number, hostAddr: bigint, opts: { readonly?: boolean; name: string }): number {
    const what = `memory slot for ${opts.name} at 0x${guestBase.toString(16)}+0x${size.toString(16)}`;
    if (!Number.isSafeInteger(guestBase) || !Number.isSafeInteger(size) || guestBase < 0 || size <= 0 || !Number.isSafeInteger(guestBase + size)) {
      throw new MemorySlotError(`${what}: the range is invalid`);
    }
    if (guestBase % PAGE !== 0 || size % PAGE !== 0 || hostAddr % BigInt(PAGE) !== 0n) {
      throw new MemorySlotError(`${what}: guest address, size and host address must be multiples of 4 KiB`);
    }
    for (const s of this.bySlot.values()) {
      if (guestBase < s.guestBase + s.size && s.guestBase < guestBase + size) {
        throw new MemorySlotError(`${what} overlaps slot ${s.slot} (${s.name} at 0x${s.guestBase.toString(16)}+0x${s.size.toString(16)})`);
      }
    }
    const slot = this.take();
    if (slot < 0) throw new MemorySlotError(`${what}: all ${this.limit} KVM memory slots are in use`);
    const flags = opts.readonly ? SLOT_READONLY : 0;
    try {
      this.setRegion(slot, flags, guestBase, size, hostAddr);
    } catch (e) {
      this.give(slot);
      throw e;
    }
    this.bySlot.set(slot, { slot, guestBase, size, hostAddr, flags, name: opts.name });
    return slot;
  }

  /** Unmaps slot `slot` (KVM deletes a slot whose size is set to 0) and frees its number. */
  remove(slot: number): void {
    const s = this.bySlot.get(slot);
    if (!s) throw new MemorySlotError(`memory slot ${slot} is not in use`);
    this.setRegion(slot, 0, s.guestBase, 0, s.hostAddr);
    this.bySlot.delete(slot);
    this.give(slot);
  }

  /** The slot holding guest address `gpa`, or undefined. */
  slotAt(gpa: number): MemorySlot | undefined {
    for (const s of this.bySlot.values()) if (gpa >= s.guestBase && gpa < s.guestBase + s.size) return s;
    return undefined;
  }

  private take(): number {
    if (this.free.length > 0) return this.free.shift() as number;
    return this.nextUnused < this.limit ? this.nextUnused++ : -1;
  }

  private give(slot: number): void {
    this.free.push(slot);
    this.free.sort((a, b) => a - b);
  }
}
