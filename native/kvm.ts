// KVM ioctl numbers, struct layouts (x86_64) and thin typed wrappers.
// Layouts follow include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h.
import * as libc from './libc';

const IOC_NONE = 0;
const IOC_WRITE = 1;
const IOC_READ = 2;
const KVMIO = 0xae;

function ioc(dir: number, nr: number, size: number): number {
  return ((dir << 30) | (size << 16) | (KVMIO << 8) | nr) >>> 0;
}
const io = (nr: number) => ioc(IOC_NONE, nr, 0);
const ior = (nr: number, size: number) => ioc(IOC_READ, nr, size);
const iow = (nr: number, size: number) => ioc(IOC_WRITE, nr, size);
const iowr = (nr: number, size: number) => ioc(IOC_READ | IOC_WRITE, nr, size);

export const KVM = {
  GET_API_VERSION: io(0x00),
  CREATE_VM: io(0x01),
  GET_MSR_INDEX_LIST: iowr(0x02, 4),
  CHECK_EXTENSION: io(0x03),
  GET_VCPU_MMAP_SIZE: io(0x04),
  GET_SUPPORTED_CPUID: iowr(0x05, 8),
  CREATE_VCPU: io(0x41),
  SET_USER_MEMORY_REGION: iow(0x46, 32),
  SET_TSS_ADDR: io(0x47),
  REGISTER_COALESCED_MMIO: iow(0x67, 16),
  UNREGISTER_COALESCED_MMIO: iow(0x68, 16),
  SET_IDENTITY_MAP_ADDR: iow(0x48, 8),
  CREATE_IRQCHIP: io(0x60),
  IRQ_LINE: iow(0x61, 8),
  GET_IRQCHIP: iowr(0x62, 520),
  SET_IRQCHIP: ior(0x63, 520),
  SET_GSI_ROUTING: iow(0x6a, 8),
  IRQFD: iow(0x76, 32),
  CREATE_PIT2: iow(0x77, 64),
  /** _IO with a pointer argument (struct kvm_reinject_control), as the kernel defines it. */
  REINJECT_CONTROL: io(0x71),
  IOEVENTFD: iow(0x79, 64),
  GET_PIT2: ior(0x9f, 112),
  SET_PIT2: iow(0xa0, 112),
  SIGNAL_MSI: iow(0xa5, 32),
  RUN: io(0x80),
  GET_REGS: ior(0x81, 144),
  SET_REGS: iow(0x82, 144),
  GET_SREGS: ior(0x83, 312),
  SET_SREGS: iow(0x84, 312),
  GET_MSRS: iowr(0x88, 8),
  SET_MSRS: iow(0x89, 8),
  GET_FPU: ior(0x8c, 416),
  SET_FPU: iow(0x8d, 416),
  GET_LAPIC: ior(0x8e, 1024),
  SET_LAPIC: iow(0x8f, 1024),
  SET_CPUID2: iow(0x90, 8),
  GET_CPUID2: iowr(0x91, 8),
  GET_MP_STATE: ior(0x98, 4),
  SET_MP_STATE: iow(0x99, 4),
  GET_XSAVE: ior(0xa4, 4096),
  SET_XSAVE: iow(0xa5, 4096),
} as const;

const KVM_RUN_REQUEST = KVM.RUN;

export const KVM_CAP = {
  IRQCHIP: 0,
  HLT: 1,
  USER_MEMORY: 3,
  SET_TSS_ADDR: 4,
  NR_VCPUS: 9,
  /** How many memory slots userspace may use (slot ids 0..n-1). */
  NR_MEMSLOTS: 10,
  /** Returns the most routes KVM_SET_GSI_ROUTING takes (KVM_MAX_IRQ_ROUTES, 4096 on x86). */
  IRQ_ROUTING: 25,
  IRQFD: 32,
  PIT2: 33,
  IOEVENTFD: 36,
  MAX_VCPUS: 66,
  TSC_DEADLINE_TIMER: 72,
  SIGNAL_MSI: 77,
  READONLY_MEM: 81,
  IRQFD_RESAMPLE: 82,
  IMMEDIATE_EXIT: 136,
  /** Returns the page (in a vCPU's mmap) holding the coalesced write ring, or 0. */
  COALESCED_MMIO: 15,
  COALESCED_PIO: 162,
} as const;

export const EXIT = {
  UNKNOWN: 0,
  EXCEPTION: 1,
  IO: 2,
  HYPERCALL: 3,
  DEBUG: 4,
  HLT: 5,
  MMIO: 6,
  IRQ_WINDOW_OPEN: 7,
  SHUTDOWN: 8,
  FAIL_ENTRY: 9,
  INTR: 10,
  SET_TPR: 11,
  TPR_ACCESS: 12,
  NMI: 16,
  INTERNAL_ERROR: 17,
  SYSTEM_EVENT: 24,
} as const;

export const EXIT_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(EXIT).map(([k, v]) => [v, k.toLowerCase()]),
);

/** Byte offsets inside struct kvm_run. */
export const RUN = {
  IMMEDIATE_EXIT: 1,
  EXIT_REASON: 8,
  IO_DIRECTION: 32,
  IO_SIZE: 33,
  IO_PORT: 34,
  IO_COUNT: 36,
  IO_DATA_OFFSET: 40,
  MMIO_PHYS_ADDR: 32,
  MMIO_DATA: 40,
  MMIO_LEN: 48,
  MMIO_IS_WRITE: 52,
  INTERNAL_SUBERROR: 32,
  SYSTEM_EVENT_TYPE: 32,
  FAIL_ENTRY_REASON: 32,
} as const;

/** KVM_RUN results other than an exit (negated errno). */
export const RUN_KICKED = -4; // EINTR
export const RUN_AGAIN = -11; // EAGAIN

export const MP_STATE = { RUNNABLE: 0, UNINITIALIZED: 1, INIT_RECEIVED: 2, HALTED: 3, SIPI_RECEIVED: 4 } as const;

export const KVM_MEM_READONLY = 2;

export interface Regs {
  rax: bigint; rbx: bigint; rcx: bigint; rdx: bigint; rsi: bigint; rdi: bigint; rsp: bigint; rbp: bigint;
  r8: bigint; r9: bigint; r10: bigint; r11: bigint; r12: bigint; r13: bigint; r14: bigint; r15: bigint;
  rip: bigint; rflags: bigint;
}
const REG_NAMES = ['rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp', 'r8', 'r9', 'r10', 'r11', 'r12',
  'r13', 'r14', 'r15', 'rip', 'rflags'] as const;

export interface Segment {
  base: bigint; limit: number; selector: number; type: number; present: number; dpl: number;
  db: number; s: number; l: number; g: number; avl: number; unusable: number;
}
export interface DTable { base: bigint; limit: number }
export interface Sregs {
  cs: Segment; ds: Segment; es: Segment; fs: Segment; gs: Segment; ss: Segment; tr: Segment; ldt: Segment;
  gdt: DTable; idt: DTable;
  cr0: bigint; cr2: bigint; cr3: bigint; cr4: bigint; cr8: bigint; efer: bigint; apicBase: bigint;
  interruptBitmap: bigint[];
}
const SEG_NAMES = ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt'] as const;

function readSegment(b: Buffer, o: number): Segment {
  return {
    base: b.readBigUInt64LE(o), limit: b.readUInt32LE(o + 8), selector: b.readUInt16LE(o + 12),
    type: b[o + 14], present: b[o + 15], dpl: b[o + 16], db: b[o + 17], s: b[o + 18], l: b[o + 19],
    g: b[o + 20], avl: b[o + 21], unusable: b[o + 22],
  };
}
function writeSegment(b: Buffer, o: number, s: Segment): void {
  b.writeBigUInt64LE(BigInt.asUintN(64, s.base), o);
  b.writeUInt32LE(s.limit >>> 0, o + 8);
  b.writeUInt16LE(s.selector, o + 12);
  b[o + 14] = s.type; b[o + 15] = s.present; b[o + 16] = s.dpl; b[o + 17] = s.db; b[o + 18] = s.s;
  b[o + 19] = s.l; b[o + 20] = s.g; b[o + 21] = s.avl; b[o + 22] = s.unusable; b[o + 23] = 0;
}

export function decodeSregs(b: Buffer): Sregs {
  const segs = Object.fromEntries(SEG_NAMES.map((n, i) => [n, readSegment(b, i * 24)])) as Record<typeof SEG_NAMES[number], Segment>;
  return {
    ...segs,
    gdt: { base: b.readBigUInt64LE(192), limit: b.readUInt16LE(200) },
    idt: { base: b.readBigUInt64LE(208), limit: b.readUInt16LE(216) },
    cr0: b.readBigUInt64LE(224), cr2: b.readBigUInt64LE(232), cr3: b.readBigUInt64LE(240),
    cr4: b.readBigUInt64LE(248), cr8: b.readBigUInt64LE(256), efer: b.readBigUInt64LE(264),
    apicBase: b.readBigUInt64LE(272),
    interruptBitmap: [0, 1, 2, 3].map((i) => b.readBigUInt64LE(280 + i * 8)),
  };
}
export function encodeSregs(s: Sregs): Buffer {
  const b = Buffer.alloc(312);
  SEG_NAMES.forEach((n, i) => writeSegment(b, i * 24, s[n]));
  b.writeBigUInt64LE(s.gdt.base, 192); b.writeUInt16LE(s.gdt.limit, 200);
  b.writeBigUInt64LE(s.idt.base, 208); b.writeUInt16LE(s.idt.limit, 216);
  const crs = [s.cr0, s.cr2, s.cr3, s.cr4, s.cr8, s.efer, s.apicBase];
  crs.forEach((v, i) => b.writeBigUInt64LE(BigInt.asUintN(64, v), 224 + i * 8));
  s.interruptBitmap.forEach((v, i) => b.writeBigUInt64LE(v, 280 + i * 8));
  return b;
}

export interface CpuidEntry {
  function: number; index: number; flags: number; eax: number; ebx: number; ecx: number; edx: number;
}
export interface MsrEntry { index: number; data: bigint }
export interface IrqfdOptions {
  deassign?: boolean;
  /** Level-triggered line: KVM signals this eventfd when the guest acknowledges the interrupt. */
  resampleFd?: number;
}

export interface IoeventfdOptions {
  /** A port (pio) or a guest-physical address below 2^53. */
  address: number;
  /** Bytes of the write: 1, 2, 4 or 8 (MMIO); 1, 2 or 4 (ports). */
  length: number;
  eventFd: number;
  pio: boolean;
  /** Only writes of this value signal (the value's low `length` bytes). */
  datamatch?: number | bigint;
  deassign?: boolean;
}

export const KVM_IRQFD_FLAG = { DEASSIGN: 1, RESAMPLE: 2 } as const;
export const KVM_IOEVENTFD_FLAG = { DATAMATCH: 1, PIO: 2, DEASSIGN: 4 } as const;

export interface IrqRoute {
  gsi: number;
  /** irqchip: 0 = PIC master, 1 = PIC slave, 2 = IOAPIC */
  irqchip?: { chip: number; pin: number };
  msi?: { addressLo: number; addressHi: number; data: number };
}

function encodeCpuid(entries: CpuidEntry[]): Buffer {
  const b = Buffer.alloc(8 + entries.length * 40);
  b.writeUInt32LE(entries.length, 0);
  entries.forEach((e, i) => {
    const o = 8 + i * 40;
    b.writeUInt32LE(e.function >>> 0, o); b.writeUInt32LE(e.index >>> 0, o + 4); b.writeUInt32LE(e.flags >>> 0, o + 8);
    b.writeUInt32LE(e.eax >>> 0, o + 12); b.writeUInt32LE(e.ebx >>> 0, o + 16); b.writeUInt32LE(e.ecx >>> 0, o + 20);
    b.writeUInt32LE(e.edx >>> 0, o + 24);
  });
  return b;
}
function decodeCpuid(b: Buffer): CpuidEntry[] {
  const n = b.readUInt32LE(0);
  const out: CpuidEntry[] = [];
  for (let i = 0; i < n; i++) {
    const o = 8 + i * 40;
    out.push({
      function: b.readUInt32LE(o), index: b.readUInt32LE(o + 4), flags: b.readUInt32LE(o + 8),
      eax: b.readUInt32LE(o + 12), ebx: b.readUInt32LE(o + 16), ecx: b.readUInt32LE(o + 20), edx: b.readUInt32LE(o + 24),
    });
  }
  return out;
}

/** The /dev/kvm system handle. */
export class KvmSystem {
  readonly fd: number;
  constructor(path = '/dev/kvm') {
    this.fd = libc.open(path, libc.O_RDWR);
    const version = libc.ioctl(this.fd, 'KVM_GET_API_VERSION', KVM.GET_API_VERSION);
    if (version !== 12) throw new Error(`KVM_GET_API_VERSION: unexpected version ${version}`);
  }
  checkExtension(cap: number): number {
    return libc.ioctl(this.fd, 'KVM_CHECK_EXTENSION', KVM.CHECK_EXTENSION, cap);
  }
  vcpuMmapSize(): number {
    return libc.ioctl(this.fd, 'KVM_GET_VCPU_MMAP_SIZE', KVM.GET_VCPU_MMAP_SIZE);
  }
  supportedCpuid(): CpuidEntry[] {
    for (let n = 64; n <= 4096; n *= 2) {
      const b = Buffer.alloc(8 + n * 40);
      b.writeUInt32LE(n, 0);
      const r = libc.ioctlTry(this.fd, KVM.GET_SUPPORTED_CPUID, libc.addressOf(b));
      if (r === -7 /* E2BIG */) continue;
      if (r < 0) throw new libc.NativeError('KVM_GET_SUPPORTED_CPUID', -r);
      return decodeCpuid(b);
    }
    throw new Error('KVM_GET_SUPPORTED_CPUID: too many entries');
  }
  createVm(): KvmVm {
    return new KvmVm(libc.ioctl(this.fd, 'KVM_CREATE_VM', KVM.CREATE_VM, 0));
  }
  close(): void {
    libc.close(this.fd);
  }
}

/** struct kvm_coalesced_mmio_zone: addr, size, and pio (a union with a pad in older headers). */
function coalescedZone(address: number, size: number, pio: boolean): Buffer {
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(BigInt(address), 0);
  b.writeUInt32LE(size, 8);
  b.writeUInt32LE(pio ? 1 : 0, 12);
  return b;
}

export class KvmVm {
  constructor(readonly fd: number) {}

  setUserMemoryRegion(slot: number, guestPhys: bigint, size: number, hostAddr: bigint, flags = 0): void {
    const b = Buffer.alloc(32);
    b.writeUInt32LE(slot, 0); b.writeUInt32LE(flags, 4);
    b.writeBigUInt64LE(guestPhys, 8); b.writeBigUInt64LE(BigInt(size), 16); b.writeBigUInt64LE(hostAddr, 24);
    libc.ioctlBuffer(this.fd, 'KVM_SET_USER_MEMORY_REGION', KVM.SET_USER_MEMORY_REGION, b);
  }
  setTssAddr(addr: number): void {
    libc.ioctl(this.fd, 'KVM_SET_TSS_ADDR', KVM.SET_TSS_ADDR, addr);
  }
  setIdentityMapAddr(addr: bigint): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(addr);
    libc.ioctlBuffer(this.fd, 'KVM_SET_IDENTITY_MAP_ADDR', KVM.SET_IDENTITY_MAP_ADDR, b);
  }
  /**
   * Guest writes to ports [port, port+size) no longer exit: KVM queues them in the
   * coalesced ring (CoalescedRing), which must be drained before any other exit is handled.
   */
  registerCoalescedPio(port: number, size: number): void {
    libc.ioctlBuffer(this.fd, 'KVM_REGISTER_COALESCED_MMIO', KVM.REGISTER_COALESCED_MMIO, coalescedZone(port, size, true));
  }
  /** The same for guest-physical memory [address, address+size) that no memory slot backs (device registers). */
  registerCoalescedMmio(address: number, size: number): void {
    libc.ioctlBuffer(this.fd, 'KVM_REGISTER_COALESCED_MMIO', KVM.REGISTER_COALESCED_MMIO, coalescedZone(address, size, false));
  }
  /** Writes to that range exit again (the zone must match a registered one exactly). */
  unregisterCoalescedMmio(address: number, size: number): void {
    libc.ioctlBuffer(this.fd, 'KVM_UNREGISTER_COALESCED_MMIO', KVM.UNREGISTER_COALESCED_MMIO, coalescedZone(address, size, false));
  }
  createIrqchip(): void {
    libc.ioctl(this.fd, 'KVM_CREATE_IRQCHIP', KVM.CREATE_IRQCHIP);
  }
  createPit2(): void {
    const b = Buffer.alloc(64);
    b.writeUInt32LE(1, 0); // KVM_PIT_SPEAKER_DUMMY: port 0x61 handled in-kernel
    libc.ioctlBuffer(this.fd, 'KVM_CREATE_PIT2', KVM.CREATE_PIT2, b);
  }
  /** Whether the in-kernel PIT delivers ticks the guest missed later, one by one (KVM's default). */
  setPitReinject(on: boolean): void {
    const b = Buffer.alloc(32);
    b[0] = on ? 1 : 0;
    libc.ioctlBuffer(this.fd, 'KVM_REINJECT_CONTROL', KVM.REINJECT_CONTROL, b);
  }
  private readonly irqLineBuf = Buffer.alloc(8);
  irqLine(irq: number, level: boolean): void {
    this.irqLineBuf.writeUInt32LE(irq, 0);
    this.irqLineBuf.writeUInt32LE(level ? 1 : 0, 4);
    libc.ioctlBuffer(this.fd, 'KVM_IRQ_LINE', KVM.IRQ_LINE, this.irqLineBuf);
  }
  signalMsi(addressLo: number, addressHi: number, data: number): number {
    const b = Buffer.alloc(32);
    b.writeUInt32LE(addressLo >>> 0, 0); b.writeUInt32LE(addressHi >>> 0, 4); b.writeUInt32LE(data >>> 0, 8);
    return libc.ioctlBuffer(this.fd, 'KVM_SIGNAL_MSI', KVM.SIGNAL_MSI, b);
  }
  setGsiRouting(routes: IrqRoute[]): void {
    const b = Buffer.alloc(8 + routes.length * 48);
    b.writeUInt32LE(routes.length, 0);
    routes.forEach((r, i) => {
      const o = 8 + i * 48;
      b.writeUInt32LE(r.gsi, o);
      if (r.irqchip) {
        b.writeUInt32LE(1, o + 4);
        b.writeUInt32LE(r.irqchip.chip, o + 16); b.writeUInt32LE(r.irqchip.pin, o + 20);
      } else if (r.msi) {
        b.writeUInt32LE(2, o + 4);
        b.writeUInt32LE(r.msi.addressLo >>> 0, o + 16); b.writeUInt32LE(r.msi.addressHi >>> 0, o + 20);
        b.writeUInt32LE(r.msi.data >>> 0, o + 24);
      } else {
        throw new Error(`route for GSI ${r.gsi} has neither irqchip nor msi`);
      }
    });
    libc.ioctlBuffer(this.fd, 'KVM_SET_GSI_ROUTING', KVM.SET_GSI_ROUTING, b);
  }
  /**
   * KVM_IRQFD: a write to `eventFd` (from any thread) raises GSI `gsi` with no exit to
   * user space; `deassign` undoes it (same fd and GSI). With `resampleFd`, the line is
   * level-triggered: KVM holds it asserted until the guest acknowledges it (EOI), then
   * lowers it and signals `resampleFd`, so the device model can re-assert it if the
   * condition persists (KVM_CAP_IRQFD_RESAMPLE; an irqchip GSI, not an MSI route).
   */
  irqfd(eventFd: number, gsi: number, opts: IrqfdOptions = {}): void {
    const b = Buffer.alloc(32);
    let flags = 0;
    if (opts.deassign) flags |= KVM_IRQFD_FLAG.DEASSIGN;
    if (opts.resampleFd !== undefined && !opts.deassign) flags |= KVM_IRQFD_FLAG.RESAMPLE;
    b.writeUInt32LE(eventFd >>> 0, 0); b.writeUInt32LE(gsi >>> 0, 4); b.writeUInt32LE(flags, 8);
    if (flags & KVM_IRQFD_FLAG.RESAMPLE) b.writeUInt32LE((opts.resampleFd as number) >>> 0, 12);
    const what = opts.deassign ? 'deassign' : opts.resampleFd !== undefined ? 'assign, resample' : 'assign';
    libc.ioctlBuffer(this.fd, `KVM_IRQFD(fd ${eventFd}, GSI ${gsi}, ${what})`, KVM.IRQFD, b);
  }
  /**
   * KVM_IOEVENTFD: a guest write of `length` bytes at `address` (a port with `pio`, else
   * guest-physical) adds 1 to `eventFd` instead of exiting. With `datamatch` only writes of
   * that value do; others exit as before. `deassign` removes the same registration.
   */
  ioeventfd(opts: IoeventfdOptions): void {
    const b = Buffer.alloc(64);
    let flags = 0;
    if (opts.datamatch !== undefined) {
      flags |= KVM_IOEVENTFD_FLAG.DATAMATCH;
      b.writeBigUInt64LE(BigInt.asUintN(64, BigInt(opts.datamatch)), 0);
    }
    if (opts.pio) flags |= KVM_IOEVENTFD_FLAG.PIO;
    if (opts.deassign) flags |= KVM_IOEVENTFD_FLAG.DEASSIGN;
    b.writeBigUInt64LE(BigInt(opts.address), 8); b.writeUInt32LE(opts.length, 16); b.writeInt32LE(opts.eventFd, 20);
    b.writeUInt32LE(flags, 24);
    const where = `${opts.pio ? 'port' : 'MMIO'} 0x${opts.address.toString(16)}+${opts.length}`;
    const match = opts.datamatch === undefined ? '' : `, data 0x${opts.datamatch.toString(16)}`;
    libc.ioctlBuffer(this.fd, `KVM_IOEVENTFD(${where}${match}${opts.deassign ? ', deassign' : ''})`, KVM.IOEVENTFD, b);
  }
  getIrqchip(chip: number): Buffer {
    const b = Buffer.alloc(520);
    b.writeUInt32LE(chip, 0);
    libc.ioctlBuffer(this.fd, 'KVM_GET_IRQCHIP', KVM.GET_IRQCHIP, b);
    return b;
  }
  setIrqchip(state: Buffer): void {
    libc.ioctlBuffer(this.fd, 'KVM_SET_IRQCHIP', KVM.SET_IRQCHIP, state);
  }
  getPit2(): Buffer {
    const b = Buffer.alloc(112);
    libc.ioctlBuffer(this.fd, 'KVM_GET_PIT2', KVM.GET_PIT2, b);
    return b;
  }
  setPit2(state: Buffer): void {
    libc.ioctlBuffer(this.fd, 'KVM_SET_PIT2', KVM.SET_PIT2, state);
  }
  createVcpu(id: number): number {
    return libc.ioctl(this.fd, `KVM_CREATE_VCPU(${id})`, KVM.CREATE_VCPU, id);
  }
  close(): void {
    libc.close(this.fd);
  }
}

/**
 * One vCPU. kvm_run is mapped (MAP_FIXED) over page-aligned memory inside a
 * SharedArrayBuffer, so JS reads exits through a DataView with no FFI call and no
 * external ArrayBuffer. The SharedArrayBuffer can be handed to another thread
 * (for immediate_exit) and must outlive the mapping.
 */
export class KvmVcpu {
  readonly run: DataView;
  readonly runBytes: Uint8Array;
  readonly runBuffer: SharedArrayBuffer;
  private readonly mapAddr: bigint;
  private readonly mapSize: number;

  constructor(readonly fd: number, mmapSize: number) {
    this.mapSize = mmapSize;
    this.runBuffer = new SharedArrayBuffer(mmapSize + 2 * 4096);
    const whole = new Uint8Array(this.runBuffer);
    const base = libc.addressOf(whole);
    const offset = Number((4096n - (base % 4096n)) % 4096n);
    this.mapAddr = base + BigInt(offset);
    libc.mmap(this.mapAddr, mmapSize, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED | libc.MAP_FIXED, fd, 0);
    this.run = new DataView(this.runBuffer, offset, mmapSize);
    this.runBytes = new Uint8Array(this.runBuffer, offset, mmapSize);
    retainedRunBuffers.add(this.runBuffer);
  }

  /**
   * KVM_RUN. Returns 0 after an exit, RUN_KICKED when a signal interrupted it, or
   * RUN_AGAIN when there is no exit to handle: a vCPU waiting for SIPI returns EAGAIN
   * once INIT/SIPI changed its state, and KVM expects the caller to simply run again.
   */
  runOnce(): number {
    const r = libc.ioctlHot(this.fd, KVM_RUN_REQUEST);
    if (r >= 0) return 0;
    if (r === RUN_KICKED || r === RUN_AGAIN) return r;
    throw new libc.NativeError('KVM_RUN', -r);
  }
  get exitReason(): number {
    return this.run.getUint32(RUN.EXIT_REASON, true);
  }

  getRegs(): Regs {
    const b = Buffer.alloc(144);
    libc.ioctlBuffer(this.fd, 'KVM_GET_REGS', KVM.GET_REGS, b);
    return Object.fromEntries(REG_NAMES.map((n, i) => [n, b.readBigUInt64LE(i * 8)])) as unknown as Regs;
  }
  setRegs(regs: Partial<Regs>): void {
    const b = Buffer.alloc(144);
    REG_NAMES.forEach((n, i) => b.writeBigUInt64LE(BigInt.asUintN(64, regs[n] ?? (n === 'rflags' ? 2n : 0n)), i * 8));
    libc.ioctlBuffer(this.fd, 'KVM_SET_REGS', KVM.SET_REGS, b);
  }
  getSregs(): Sregs {
    const b = Buffer.alloc(312);
    libc.ioctlBuffer(this.fd, 'KVM_GET_SREGS', KVM.GET_SREGS, b);
    return decodeSregs(b);
  }
  setSregs(s: Sregs): void {
    libc.ioctlBuffer(this.fd, 'KVM_SET_SREGS', KVM.SET_SREGS, encodeSregs(s));
  }
  getFpu(): Buffer {
    const b = Buffer.alloc(416);
    libc.ioctlBuffer(this.fd, 'KVM_GET_FPU', KVM.GET_FPU, b);
    return b;
  }
  setFpu(b: Buffer): void {
    libc.ioctlBuffer(this.fd, 'KVM_SET_FPU', KVM.SET_FPU, b);
  }
  getXsave(): Buffer {
    const b = Buffer.alloc(4096);
    libc.ioctlBuffer(this.fd, 'KVM_GET_XSAVE', KVM.GET_XSAVE, b);
    return b;
  }
  setXsave(b: Buffer): void {
    libc.ioctlBuffer(this.fd, 'KVM_SET_XSAVE', KVM.SET_XSAVE, b);
  }
  setCpuid2(entries: CpuidEntry[]): void {
    libc.ioctlBuffer(this.fd, 'KVM_SET_CPUID2', KVM.SET_CPUID2, encodeCpuid(entries));
  }
  /** The CPUID this vCPU was given (KVM_MAX_CPUID_ENTRIES is 256). */
  getCpuid2(): CpuidEntry[] {
    const b = Buffer.alloc(8 + 256 * 40);
    b.writeUInt32LE(256, 0);
    libc.ioctlBuffer(this.fd, 'KVM_GET_CPUID2', KVM.GET_CPUID2, b);
    return decodeCpuid(b);
  }
  getMsrs(indices: number[]): MsrEntry[] {
    const b = Buffer.alloc(8 + indices.length * 16);
    b.writeUInt32LE(indices.length, 0);
    indices.forEach((idx, i) => b.writeUInt32LE(idx >>> 0, 8 + i * 16));
    const n = libc.ioctlBuffer(this.fd, 'KVM_GET_MSRS', KVM.GET_MSRS, b);
    return indices.slice(0, n).map((index, i) => ({ index, data: b.readBigUInt64LE(8 + i * 16 + 8) }));
  }
  setMsrs(entries: MsrEntry[]): number {
    const b = Buffer.alloc(8 + entries.length * 16);
    b.writeUInt32LE(entries.length, 0);
    entries.forEach((e, i) => { b.writeUInt32LE(e.index >>> 0, 8 + i * 16); b.writeBigUInt64LE(e.data, 16 + i * 16); });
    return libc.ioctlBuffer(this.fd, 'KVM_SET_MSRS', KVM.SET_MSRS, b);
  }
  getLapic(): Buffer {
    const b = Buffer.alloc(1024);
    libc.ioctlBuffer(this.fd, 'KVM_GET_LAPIC', KVM.GET_LAPIC, b);
    return b;
  }
  setLapic(b: Buffer): void {
    libc.ioctlBuffer(this.fd, 'KVM_SET_LAPIC', KVM.SET_LAPIC, b);
  }
  getMpState(): number {
    const b = Buffer.alloc(4);
    libc.ioctlBuffer(this.fd, 'KVM_GET_MP_STATE', KVM.GET_MP_STATE, b);
    return b.readUInt32LE(0);
  }
  setMpState(state: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(state, 0);
    libc.ioctlBuffer(this.fd, 'KVM_SET_MP_STATE', KVM.SET_MP_STATE, b);
  }
  close(): void {
    // Put anonymous memory back where kvm_run was mapped, so V8's allocation stays plain memory.
    libc.mmap(this.mapAddr, this.mapSize, libc.PROT_READ | libc.PROT_WRITE,
      libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_FIXED, -1, 0);
    libc.close(this.fd);
  }
}

// kvm_run mappings live inside these buffers; they must never be collected while mapped.
const retainedRunBuffers = new Set<SharedArrayBuffer>();

/**
 * Guest RAM backed by a SharedArrayBuffer that V8 owns. The host address handed to
 * KVM is page aligned; `bytes` is the guest-visible window.
 */
/**
 * KVM's coalesced write ring (struct kvm_coalesced_mmio_ring): one page shared by all vCPUs
 * of a VM, seen at the same page of every vCPU's mmap. KVM appends at `last`; the one
 * consumer (the machine thread) takes entries from `first`. Plain views, no FFI.
 */
export class CoalescedRing {
  /** Entries per page: (4096 - 8-byte header) / 24-byte entries. */
  static readonly CAPACITY = Math.floor((4096 - 8) / 24);
  private readonly header: Int32Array;
  private readonly view: DataView;

  /** `byteOffset` is the ring page's offset in `buffer` (a vCPU's run area). */
  constructor(readonly buffer: SharedArrayBuffer, readonly byteOffset: number) {
    this.header = new Int32Array(buffer, byteOffset, 2);
    this.view = new DataView(buffer, byteOffset, 4096);
  }

  /** True if KVM has queued writes not yet applied. */
  pending(): boolean {
    return Atomics.load(this.header, 0) !== Atomics.load(this.header, 1);
  }

  /** Index KVM will write next: changes whenever a write is queued. */
  get last(): number {
    return Atomics.load(this.header, 1);
  }

  /**
   * Applies queued writes in order: apply(isPio, address, length, value, high) with the
   * value's low 4 bytes and, for an 8-byte MMIO write, its high 4 bytes (ports take at
   * most 4). Returns how many were applied.
   */
  drain(apply: (isPio: boolean, address: number, length: number, value: number, high: number) => void): number {
    let n = 0;
    // Both ends are read again for each entry: an apply may drain the ring itself (a device
    // settling queued writes before it changes state), and this loop goes on after it.
    while (n < CoalescedRing.CAPACITY) {
      let first = Atomics.load(this.header, 0);
      // Atomics.load of `last` orders the entry reads after KVM's writes to them.
      if (first === Atomics.load(this.header, 1)) break;
      const e = 8 + first * 24;
      const address = this.view.getUint32(e, true) + this.view.getUint32(e + 4, true) * 0x100000000;
      const length = this.view.getUint32(e + 8, true);
      const isPio = this.view.getUint32(e + 12, true) !== 0;
      const value = length >= 4 ? this.view.getUint32(e + 16, true)
        : length === 2 ? this.view.getUint16(e + 16, true) : this.view.getUint8(e + 16);
      const high = length > 4 ? this.view.getUint32(e + 20, true) : 0;
      first = (first + 1) % CoalescedRing.CAPACITY;
      // Consumed before applying, so a device that ends the machine leaves no stale entry.
      Atomics.store(this.header, 0, first);
      apply(isPio, address, length, value, high);
      n++;
    }
    return n;
  }
}

/** Blocks of at least this size start on a 2 MiB boundary and ask for transparent huge pages. */
const HUGE_PAGE = 2 * 1024 * 1024;
/** glibc serves a request above its largest mmap threshold (32 MiB) with a mapping of its own. */
export const OWN_MAPPING_BYTES = 64 * 1024 * 1024;

export class GuestRamBlock {
  readonly buffer: SharedArrayBuffer;
  readonly bytes: Uint8Array;
  readonly hostAddr: bigint;
  readonly offset: number;
  /** True if the kernel took MADV_HUGEPAGE for this block. */
  readonly hugePages: boolean;
  /** True if the kernel took MADV_DONTFORK: a child process does not share this block. */
  readonly keptFromChildren: boolean;
  constructor(readonly size: number) {
    if (size % 4096 !== 0) throw new Error(`guest RAM block size ${size} is not page aligned`);
    // A 2 MiB-aligned block lets KVM map guest RAM with 2 MiB pages (when the host backs it
    // with huge pages), as QEMU does: a first touch of each 4 KiB page then costs no nested
    // page fault, which under nested virtualization is an exit to L1 each time.
    const align = size >= HUGE_PAGE ? HUGE_PAGE : 4096;
    this.buffer = new SharedArrayBuffer(size + align);
    const base = libc.addressOf(new Uint8Array(this.buffer, 0, 1));
    const alignBig = BigInt(align);
    this.offset = Number((alignBig - (base % alignBig)) % alignBig);
    this.hostAddr = base + BigInt(this.offset);
    this.bytes = new Uint8Array(this.buffer, this.offset, size);
    const hugeLength = size - (size % HUGE_PAGE);
    this.hugePages = align === HUGE_PAGE && libc.madvise(this.hostAddr, hugeLength, libc.MADV_HUGEPAGE);
    // Node's spawn forks this whole process. Without DONTFORK a fork write-protects every
    // page of guest RAM for copy-on-write while the guest runs: KVM must drop and refault its
    // mappings of all of it, and a page written before the child execs is copied behind the
    // guest's back. QEMU keeps guest RAM out of forks for the same reason.
    // Only a block big enough to be its own mapping, freed by munmap: the allocator could hand
    // the pages of a smaller one to other objects later, still marked, and a child between fork
    // and exec that touched them would fault.
    this.keptFromChildren = size >= OWN_MAPPING_BYTES && libc.madvise(this.hostAddr, size, libc.MADV_DONTFORK);
  }
  /** Re-derives a block from a buffer passed to another thread (same memory, same address). */
  static fromShared(buffer: SharedArrayBuffer, offset: number, size: number): Uint8Array {
    return new Uint8Array(buffer, offset, size);
  }
}
