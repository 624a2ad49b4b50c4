// The BIOS memory map (e820) of a machine, shared by the firmware (fw_cfg "etc/e820")
// and the Linux loader (boot_params), so both describe the same layout.
import type { GuestMemory } from '../memory/guest-memory';

export const E820_RAM = 1;
export const E820_RESERVED = 2;
export const E820_ACPI = 3;
export const E820_NVS = 4;

export interface E820Entry {
  addr: number;
  size: number;
  type: number;
}

/** Start of the extended BIOS data area: conventional RAM ends here. */
export const EBDA_START = 0x9fc00;
const LOW_RAM_END = 0xa0000;
/** The BIOS area (option ROMs' neighbours, firmware tables, the BIOS itself). */
export const BIOS_AREA_START = 0xe0000;
const ONE_MIB = 0x100000;
/** KVM's EPT identity-map page and TSS pages (machine.ts puts them here). */
export const KVM_PRIVATE_START = 0xfeffc000;
export const KVM_PRIVATE_SIZE = 0x4000;

/**
 * The memory map: RAM below 640 KiB (up to the EBDA), the EBDA and the BIOS area
 * reserved, RAM from 1 MiB, KVM's private pages and ROM windows reserved, RAM above
 * 4 GiB. Sorted by address, no overlaps.
 */
export function buildE820(memory: GuestMemory): E820Entry[] {
  const entries: E820Entry[] = [];
  for (const r of memory.ramRanges()) {
    const end = r.base + r.size;
    if (r.base < ONE_MIB) {
      const lowEnd = Math.min(end, EBDA_START);
      if (lowEnd > r.base) entries.push({ addr: r.base, size: lowEnd - r.base, type: E820_RAM });
      if (end > EBDA_START) entries.push({ addr: EBDA_START, size: LOW_RAM_END - EBDA_START, type: E820_RESERVED });
      if (end > BIOS_AREA_START) entries.push({ addr: BIOS_AREA_START, size: ONE_MIB - BIOS_AREA_START, type: E820_RESERVED });
      if (end > ONE_MIB) entries.push({ addr: ONE_MIB, size: end - ONE_MIB, type: E820_RAM });
    } else {
      entries.push({ addr: r.base, size: r.size, type: E820_RAM });
    }
  }
  entries.push({ addr: KVM_PRIVATE_START, size: KVM_PRIVATE_SIZE, type: E820_RESERVED });
  for (const r of memory.regions) {
    if (r.readonly && r.guestBase >= ONE_MIB) entries.push({ addr: r.guestBase, size: r.size, type: E820_RESERVED });
  }
  return entries.sort((a, b) => a.addr - b.addr);
}

/** Encodes entries as QEMU's "etc/e820" file: {u64 address, u64 length, u32 type} little-endian. */
export function encodeE820(entries: E820Entry[]): Uint8Array {
  const out = new Uint8Array(entries.length * 20);
  const view = new DataView(out.buffer);
  entries.forEach((e, i) => {
    view.setBigUint64(i * 20, BigInt(e.addr), true);
    view.setBigUint64(i * 20 + 8, BigInt(e.size), true);
    view.setUint32(i * 20 + 16, e.type, true);
  });
  return out;
}
