// Synthetic kernel images for the Linux loader tests: a bzImage with a real setup
// header layout and a minimal ELF64 vmlinux. Not test files themselves.
import { GuestMemory } from '../../main/vmm/memory/guest-memory';

/** Guest RAM of `size` bytes at address 0, with no KVM behind it. */
export function ramOf(size: number): GuestMemory {
  return new GuestMemory([{ guestBase: 0, size, buffer: new SharedArrayBuffer(size), offset: 0, readonly: false, name: 'ram-low' }]);
}

export interface BzImageSpec {
  version?: number;
  setupSects?: number;
  loadflags?: number;
  xloadflags?: number;
  relocatable?: boolean;
  alignment?: number;
  pref?: number;
  initSize?: number;
  cmdlineSize?: number;
  initrdAddrMax?: number;
  payload?: Uint8Array;
}

/** A bzImage: setup sectors with the boot protocol header, then the "protected-mode kernel". */
export function makeBzImage(spec: BzImageSpec): Buffer {
  const setupSects = spec.setupSects ?? 3;
  const payload = spec.payload ?? Buffer.alloc(4096, 0xcc);
  const b = Buffer.alloc((setupSects + 1) * 512 + payload.length);
  b[0x1f1] = setupSects;
  b.writeUInt16LE(0xaa55, 0x1fe);
  b[0x200] = 0xeb; // jmp short over the header
  b[0x201] = 0x66; // header ends at 0x268
  b.write('HdrS', 0x202, 'latin1');
  b.writeUInt16LE(spec.version ?? 0x20f, 0x206);
  b[0x211] = spec.loadflags ?? 0x01;
  b.writeUInt32LE(spec.initrdAddrMax ?? 0x7fffffff, 0x22c);
  b.writeUInt32LE(spec.alignment ?? 0x200000, 0x230);
  b[0x234] = spec.relocatable === false ? 0 : 1;
  b.writeUInt16LE(spec.xloadflags ?? 0x1, 0x236);
  b.writeUInt32LE(spec.cmdlineSize ?? 2047, 0x238);
  b.writeBigUInt64LE(BigInt(spec.pref ?? 0x1000000), 0x258);
  b.writeUInt32LE(spec.initSize ?? 0x400000, 0x260);
  b.set(payload, (setupSects + 1) * 512);
  return b;
}

export interface ElfSegmentSpec {
  vaddr: bigint;
  paddr: number;
  data: Uint8Array;
  memsz: number;
  type?: number;
}

/** An ELF64 executable: header, program headers, then each segment's bytes on a 4 KiB boundary. */
export function makeElfKernel(spec: { entry: bigint; segments: ElfSegmentSpec[]; elfClass?: number; machine?: number; type?: number }): Buffer {
  const phoff = 64;
  let offset = 0x1000;
  const placed = spec.segments.map((s) => {
    const at = offset;
    offset += Math.ceil(Math.max(s.data.length, 1) / 0x1000) * 0x1000;
    return at;
  });
  const b = Buffer.alloc(offset);
  b.writeUInt32BE(0x7f454c46, 0);
  b[4] = spec.elfClass ?? 2;
  b[5] = 1; // little-endian
  b[6] = 1;
  b.writeUInt16LE(spec.type ?? 2, 16);
  b.writeUInt16LE(spec.machine ?? 62, 18);
  b.writeUInt32LE(1, 20);
  b.writeBigUInt64LE(spec.entry, 0x18);
  b.writeBigUInt64LE(BigInt(phoff), 0x20);
  b.writeUInt16LE(64, 0x34);
  b.writeUInt16LE(56, 0x36);
  b.writeUInt16LE(spec.segments.length, 0x38);
  spec.segments.forEach((s, i) => {
    const p = phoff + i * 56;
    b.writeUInt32LE(s.type ?? 1, p);
    b.writeUInt32LE(7, p + 4);
    b.writeBigUInt64LE(BigInt(placed[i]), p + 8);
    b.writeBigUInt64LE(s.vaddr, p + 16);
    b.writeBigUInt64LE(BigInt(s.paddr), p + 24);
    b.writeBigUInt64LE(BigInt(s.data.length), p + 32);
    b.writeBigUInt64LE(BigInt(s.memsz), p + 40);
    b.writeBigUInt64LE(0x200000n, p + 48);
    b.set(s.data, placed[i]);
  });
  return b;
}
