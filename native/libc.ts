// Thin typed wrappers over the libc calls Porthole needs. Every failure throws a
// NativeError naming the call and the errno, e.g. "open(/dev/kvm): EACCES (permission denied)".
import koffi from 'koffi';
import os from 'node:os';

// Tests set this so that nothing on a VM path can use external ArrayBuffers,
// which Electron refuses (see shared/DESIGN.md).
if (process.env.PORTHOLE_FORBID_KOFFI_VIEW === '1') {
  (koffi as unknown as { view: unknown }).view = () => {
    throw new Error('koffi.view is forbidden: guest memory must be V8-owned SharedArrayBuffer memory');
  };
}

const errnoNames = new Map<number, string>();
for (const [name, value] of Object.entries(os.constants.errno)) {
  if (!errnoNames.has(value)) errnoNames.set(value, name);
}

export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `errno ${errno}`;
}

const errnoText: Record<string, string> = {
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  ENOENT: 'no such file or directory',
  EBUSY: 'device or resource busy',
  EINVAL: 'invalid argument',
  ENOMEM: 'out of memory',
  EEXIST: 'already exists',
  EINTR: 'interrupted',
  EAGAIN: 'try again',
  ENOTTY: 'not a terminal or unsupported ioctl',
  EFAULT: 'bad address',
  ENXIO: 'no such device or address',
  E2BIG: 'argument list too long',
};

export class NativeError extends Error {
  readonly call: string;
  readonly errno: number;
  readonly code: string;
  constructor(call: string, errno: number) {
    const code = errnoName(errno);
    const text = errnoText[code];
    super(`${call}: ${code}${text ? ` (${text})` : ''}`);
    this.name = 'NativeError';
    this.call = call;
    this.errno = errno;
    this.code = code;
  }
}

const lib = koffi.load('libc.so.6');

const c = {
  open: lib.func('int open(const char *path, int flags, int mode)'),
  close: lib.func('int close(int fd)'),
  ioctlValue: lib.func('int ioctl(int fd, unsigned long request, unsigned long arg)'),
  ioctlBuffer: lib.func('int ioctl(int fd, unsigned long request, _Inout_ uint8_t *arg)'),
  // KVM_RUN's own binding: plain 32-bit arguments convert fastest, and it runs once per exit.
  // The third argument must be passed as 0: KVM_RUN fails with EINVAL on a non-zero arg.
  ioctlRun: lib.func('int ioctl(int fd, unsigned int request, int arg)'),
  mmap: lib.func('uintptr_t mmap(uintptr_t addr, size_t length, int prot, int flags, int fd, int64_t offset)'),
  munmap: lib.func('int munmap(uintptr_t addr, size_t length)'),
  madvise: lib.func('int madvise(uintptr_t addr, size_t length, int advice)'),
  eventfd: lib.func('int eventfd(unsigned int initval, int flags)'),
  read: lib.func('intptr_t read(int fd, _Out_ uint8_t *buf, size_t count)'),
  write: lib.func('intptr_t write(int fd, const uint8_t *buf, size_t count)'),
  pread: lib.func('intptr_t pread(int fd, _Out_ uint8_t *buf, size_t count, int64_t offset)'),
  pwrite: lib.func('intptr_t pwrite(int fd, const uint8_t *buf, size_t count, int64_t offset)'),
  copyFromAddress: lib.func('uintptr_t memcpy(_Out_ uint8_t *dst, uintptr_t src, size_t n)'),
  copyToAddress: lib.func('uintptr_t memcpy(uintptr_t dst, const uint8_t *src, size_t n)'),
  poll: lib.func('int poll(_Inout_ uint8_t *fds, unsigned long nfds, int timeout)'),
  gettid: lib.func('int gettid()'),
  prctlString: lib.func('int prctl(int option, const char *arg)'),
  getpid: lib.func('int getpid()'),
  tgkill: lib.func('int tgkill(int tgid, int tid, int sig)'),
  signal: lib.func('uintptr_t signal(int sig, uintptr_t handler)'),
  dlsym: lib.func('uintptr_t dlsym(uintptr_t handle, const char *symbol)'),
  // memset(p, 0, 0) returns p: the portable way to learn where V8 put a buffer.
  addressOf: lib.func('uintptr_t memset(uint8_t *buf, int c, size_t n)'),
  posixOpenpt: lib.func('int posix_openpt(int flags)'),
  grantpt: lib.func('int grantpt(int fd)'),
  unlockpt: lib.func('int unlockpt(int fd)'),
  ptsnameR: lib.func('int ptsname_r(int fd, _Out_ uint8_t *buf, size_t len)'),
  tcgetattr: lib.func('int tcgetattr(int fd, _Out_ uint8_t *termios)'),
  tcsetattr: lib.func('int tcsetattr(int fd, int action, const uint8_t *termios)'),
  cfsetispeed: lib.func('int cfsetispeed(_Inout_ uint8_t *termios, unsigned int speed)'),
  cfsetospeed: lib.func('int cfsetospeed(_Inout_ uint8_t *termios, unsigned int speed)'),
  cfmakeraw: lib.func('void cfmakeraw(_Inout_ uint8_t *termios)'),
  fcntl: lib.func('int fcntl(int fd, int cmd, ...)'),
  flock: lib.func('int flock(int fd, int operation)'),
  socket: lib.func('int socket(int domain, int type, int protocol)'),
  ifNameToIndex: lib.func('unsigned int if_nametoindex(const char *name)'),
  fallocate: lib.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)'),
};

function fail(call: string): never {
  throw new NativeError(call, koffi.errno());
}

function check(call: string, result: number): number {
  if (result < 0) fail(call);
  return result;
}

export const O_RDONLY = 0;
export const O_RDWR = 2;
export const O_CREAT = 0o100;
export const O_NOCTTY = 0o400;
export const O_NONBLOCK = 0o4000;
export const O_CLOEXEC = 0o2000000;

export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_FIXED = 0x10;
export const MAP_ANONYMOUS = 0x20;
const MAP_FAILED = 0xffffffffffffffffn;
export const MADV_HUGEPAGE = 14;
export const MADV_DONTFORK = 10;

export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;

export const POLLIN = 0x001;
export const POLLOUT = 0x004;
export const POLLERR = 0x008;
export const POLLHUP = 0x010;

export function open(path: string, flags: number, mode = 0): number {
  return check(`open(${path})`, c.open(path, flags | O_CLOEXEC, mode));
}

/** A socket descriptor (close-on-exec). */
export function socket(domain: number, type: number, protocol = 0): number {
  return check('socket', c.socket(domain, type | O_CLOEXEC, protocol));
}

/** The index of network interface `name`, or 0 if there is none. */
export function ifNameToIndex(name: string): number {
  return c.ifNameToIndex(name) as number;
}

export function close(fd: number): void {
  check('close', c.close(fd));
}

export function ioctl(fd: number, name: string, request: number, arg: number | bigint = 0): number {
  return check(name, c.ioctlValue(fd, request, arg));
}

export function ioctlBuffer(fd: number, name: string, request: number, buf: Uint8Array): number {
  return check(name, c.ioctlBuffer(fd, request, buf));
}

/** ioctl that may fail with an errno the caller handles; returns -errno instead of throwing. */
export function ioctlTry(fd: number, request: number, arg: number | bigint = 0): number {
  const r = c.ioctlValue(fd, request, arg) as number;
  return r < 0 ? -koffi.errno() : r;
}

/** An argument-less ioctl on the per-exit hot path (KVM_RUN); returns the result or -errno. */
export function ioctlHot(fd: number, request: number): number {
  const r = c.ioctlRun(fd, request, 0) as number;
  return r < 0 ? -koffi.errno() : r;
}

export function addressOf(view: Uint8Array): bigint {
  return BigInt(c.addressOf(view, 0, 0));
}


/** madvise(2); returns false (and leaves errno unread) where the kernel refuses the advice. */
export function madvise(addr: bigint, length: number, advice: number): boolean {
  return c.madvise(addr, length, advice) === 0;
}

export function mmap(addr: bigint, length: number, prot: number, flags: number, fd: number, offset = 0): bigint {
  const r = BigInt(c.mmap(addr, length, prot, flags, fd, offset));
  if (r === MAP_FAILED) fail('mmap');
  return r;
}

export function munmap(addr: bigint, length: number): void {
  check('munmap', c.munmap(addr, length));
}

export function eventfd(initial = 0, flags = EFD_CLOEXEC): number {
  return check('eventfd', c.eventfd(initial, flags));
}

// One 8-byte counter buffer per thread (each worker loads its own copy of this module).
const eventfdCounter = Buffer.alloc(8);
const eventfdIncrement = Buffer.alloc(8);

/**
 * Reads and clears an eventfd's counter (eventfd(2)). Returns 0 instead of blocking
 * when the counter is zero on a non-blocking eventfd (EAGAIN), or when interrupted.
 */
export function eventfdRead(fd: number): number {
  const r = Number(c.read(fd, eventfdCounter, 8));
  if (r < 0) {
    const e = koffi.errno();
    if (e === os.constants.errno.EAGAIN || e === os.constants.errno.EINTR) return 0;
    throw new NativeError('read(eventfd)', e);
  }
  if (r !== 8) throw new Error(`read(eventfd): ${r} bytes instead of 8`);
  return eventfdCounter.readUInt32LE(0) + eventfdCounter.readUInt32LE(4) * 2 ** 32;
}

/**
 * Adds `n` (1 by default, below 2^32) to an eventfd's counter, from any thread. A write
 * that would overflow the counter fails with EAGAIN on a non-blocking eventfd: that
 * returns false, as the reader has not caught up with about 2^64 events.
 */
export function eventfdWrite(fd: number, n = 1): boolean {
  if (!Number.isInteger(n) || n < 1 || n > 0xffffffff) throw new RangeError(`eventfd increment ${n} is not 1..2^32-1`);
  eventfdIncrement.writeUInt32LE(n, 0);
  for (;;) {
    const r = Number(c.write(fd, eventfdIncrement, 8));
    if (r === 8) return true;
    const e = r < 0 ? koffi.errno() : os.constants.errno.EIO;
    if (e === os.constants.errno.EINTR) continue;
    if (e === os.constants.errno.EAGAIN) return false;
    throw new NativeError('write(eventfd)', e);
  }
}

/** Returns bytes read, or -errno for EAGAIN/EINTR so callers can poll. */
export function read(fd: number, buf: Uint8Array, length = buf.length): number {
  const r = Number(c.read(fd, buf, length));
  if (r < 0) {
    const e = koffi.errno();
    if (e === os.constants.errno.EAGAIN || e === os.constants.errno.EINTR) return -e;
    throw new NativeError('read', e);
  }
  return r;
}

export function write(fd: number, buf: Uint8Array, length = buf.length): number {
  const r = Number(c.write(fd, buf, length));
  if (r < 0) {
    const e = koffi.errno();
    if (e === os.constants.errno.EAGAIN || e === os.constants.errno.EINTR) return -e;
    throw new NativeError('write', e);
  }
  return r;
}

/**
 * poll() on one of koffi's worker threads, so the VM host thread never blocks: resolves with
 * the revents of each fd (all 0 on a timeout or an interrupted call).
 */
export function pollAsync(fds: { fd: number; events: number }[], timeoutMs: number): Promise<number[]> {
  const buf = Buffer.alloc(8 * fds.length);
  fds.forEach((p, i) => {
    buf.writeInt32LE(p.fd, i * 8);
    buf.writeInt16LE(p.events, i * 8 + 4);
  });
  return new Promise((resolve, reject) => {
    (c.poll as unknown as { async(...args: unknown[]): void }).async(buf, fds.length, timeoutMs, (error: Error | null, r: number) => {
      if (error) reject(error);
      else resolve(r < 0 ? fds.map(() => 0) : fds.map((_, i) => buf.readInt16LE(i * 8 + 6)));
    });
  });
}

/** pread(2) at a byte offset (a VFIO region's, above 2^40, is exact in a double); retries EINTR. */
export function pread(fd: number, buf: Uint8Array, offset: number, length = buf.length, call = 'pread'): number {
  for (;;) {
    const r = Number(c.pread(fd, buf, length, offset));
    if (r >= 0) return r;
    const e = koffi.errno();
    if (e !== os.constants.errno.EINTR) throw new NativeError(call, e);
  }
}

/** pwrite(2) at a byte offset; retries EINTR. */
export function pwrite(fd: number, buf: Uint8Array, offset: number, length = buf.length, call = 'pwrite'): number {
  for (;;) {
    const r = Number(c.pwrite(fd, buf, length, offset));
    if (r >= 0) return r;
    const e = koffi.errno();
    if (e !== os.constants.errno.EINTR) throw new NativeError(call, e);
  }
}

/**
 * Copies `dst.length` bytes from a host address (an mmap'd region) into a buffer. Used where
 * koffi.view is not allowed; the caller owns the address range.
 */
export function copyFromAddress(dst: Uint8Array, src: bigint, length = dst.length): void {
  c.copyFromAddress(dst, src, length);
}

/** Copies `src` to a host address (an mmap'd region) the caller owns. */
export function copyToAddress(dst: bigint, src: Uint8Array, length = src.length): void {
  c.copyToAddress(dst, src, length);
}

/**
 * A fixed set of descriptors for poll(2), laid out once: a thread that polls the same set on
 * every wake-up (the disk I/O thread) allocates nothing per wait.
 */
export class PollSet {
  private readonly fds: Buffer;
  readonly size: number;

  constructor(fds: readonly { fd: number; events: number }[]) {
    this.size = fds.length;
    this.fds = Buffer.alloc(8 * fds.length);
    fds.forEach((p, i) => {
      this.fds.writeInt32LE(p.fd, i * 8);
      this.fds.writeInt16LE(p.events, i * 8 + 4);
    });
  }

  /** Waits up to `timeoutMs` (-1: no limit); how many descriptors have events, 0 on a timeout or a signal. */
  wait(timeoutMs: number): number {
    const r = c.poll(this.fds, this.size, timeoutMs) as number;
    if (r >= 0) return r;
    const e = koffi.errno();
    if (e !== os.constants.errno.EINTR) throw new NativeError('poll', e);
    for (let i = 0; i < this.size; i++) this.fds.writeInt16LE(0, i * 8 + 6);
    return 0;
  }

  /** The i-th descriptor's revents from the last wait. */
  revents(i: number): number {
    return this.fds.readInt16LE(i * 8 + 6);
  }
}

/** poll() over fds; returns the revents of each. */
export function poll(fds: { fd: number; events: number }[], timeoutMs: number): number[] {
  const set = new PollSet(fds);
  set.wait(timeoutMs);
  return fds.map((_, i) => set.revents(i));
}

export function gettid(): number {
  return c.gettid() as number;
}

const PR_SET_NAME = 15;
/** The kernel's limit on a thread name, without the terminating NUL. */
export const THREAD_NAME_MAX = 15;

/**
 * Names the calling thread (its /proc comm), so `top -H`, `ps -L` and perf tell a VM's vCPU and
 * I/O threads apart, as QEMU's "CPU 0/KVM" does. Longer names are cut to the kernel's 15 bytes.
 */
export function setThreadName(name: string): void {
  check('prctl(PR_SET_NAME)', c.prctlString(PR_SET_NAME, name.slice(0, THREAD_NAME_MAX)));
}

export function getpid(): number {
  return c.getpid() as number;
}

export function tgkill(pid: number, tid: number, sig: number): void {
  check('tgkill', c.tgkill(pid, tid, sig));
}

/** The signal Porthole uses to knock a vCPU thread out of KVM_RUN. */
export const SIG_KICK = 40; // SIGRTMIN+6 under glibc; unused by Node and libuv

let kickHandlerInstalled = false;
/**
 * Installs a no-op C handler for SIG_KICK so the signal interrupts KVM_RUN (EINTR)
 * instead of killing the process. A JS callback would be unsafe in signal context,
 * so the handler is libc's getpid, which ignores its argument and is async-signal-safe.
 */
export function installKickHandler(): void {
  if (kickHandlerInstalled) return;
  const handler = BigInt(c.dlsym(0, 'getpid'));
  if (handler === 0n) throw new Error('dlsym(getpid) failed');
  const previous = BigInt(c.signal(SIG_KICK, handler));
  if (previous === MAP_FAILED) fail('signal');
  kickHandlerInstalled = true;
}

/** A new PTY master (`extraFlags` e.g. O_NONBLOCK) and the path of its slave. */
export function openPty(extraFlags = 0): { fd: number; path: string } {
  const fd = check('posix_openpt', c.posixOpenpt(O_RDWR | O_NOCTTY | O_CLOEXEC | extraFlags));
  check('grantpt', c.grantpt(fd));
  check('unlockpt', c.unlockpt(fd));
  const name = Buffer.alloc(128);
  const r = c.ptsnameR(fd, name, name.length) as number;
  if (r !== 0) throw new NativeError('ptsname_r', r);
  return { fd, path: name.toString('latin1', 0, name.indexOf(0)) };
}

// struct termios on Linux x86_64 glibc: iflag, oflag, cflag, lflag (u32 each), c_line (u8),
// c_cc[32], then c_ispeed and c_ospeed (u32) at offsets 52 and 56; 60 bytes in all.
export const TERMIOS_SIZE = 60;
export const TCSANOW = 0;

export function tcgetattr(fd: number): Buffer {
  const t = Buffer.alloc(TERMIOS_SIZE);
  check('tcgetattr', c.tcgetattr(fd, t));
  return t;
}

export function tcsetattr(fd: number, termios: Buffer): void {
  check('tcsetattr', c.tcsetattr(fd, TCSANOW, termios));
}

export function cfsetspeed(termios: Buffer, speedConstant: number): void {
  check('cfsetispeed', c.cfsetispeed(termios, speedConstant));
  check('cfsetospeed', c.cfsetospeed(termios, speedConstant));
}

export function cfmakeraw(termios: Buffer): void {
  c.cfmakeraw(termios);
}

const F_DUPFD_CLOEXEC = 1030;

/** A second descriptor for the same open file (close-on-exec). */
export function dup(fd: number): number {
  return check('fcntl(F_DUPFD_CLOEXEC)', c.fcntl(fd, F_DUPFD_CLOEXEC, 'int', 0) as number);
}

// Modem control lines of a tty (asm-generic/termios.h, ioctls.h).
export const TIOCMGET = 0x5415;
export const TIOCMSET = 0x5418;
export const TIOCM_DTR = 0x002;
export const TIOCM_RTS = 0x004;
export const TIOCM_CTS = 0x020;
export const TIOCM_CAR = 0x040;
export const TIOCM_RNG = 0x080;
export const TIOCM_DSR = 0x100;

/** The TIOCM_* line bits; throws NativeError (e.g. ENOTTY on a PTY, which has no modem lines). */
export function tiocmget(fd: number): number {
  const bits = Buffer.alloc(4);
  ioctlBuffer(fd, 'ioctl(TIOCMGET)', TIOCMGET, bits);
  return bits.readInt32LE(0);
}

export function tiocmset(fd: number, bits: number): void {
  const arg = Buffer.alloc(4);
  arg.writeInt32LE(bits, 0);
  ioctlBuffer(fd, 'ioctl(TIOCMSET)', TIOCMSET, arg);
}

// flock(2) operations.
export const LOCK_SH = 1;
export const LOCK_EX = 2;
export const LOCK_NB = 4;
export const LOCK_UN = 8;

/**
 * flock(2): an advisory lock on the whole file, held by the open file description and
 * dropped when it closes or the process dies. Returns 0, or -errno (EWOULDBLOCK when another
 * description holds a conflicting lock and LOCK_NB was given).
 */
export function flock(fd: number, operation: number): number {
  for (;;) {
    const r = c.flock(fd, operation) as number;
    if (r === 0) return 0;
    const e = koffi.errno();
    if (e !== os.constants.errno.EINTR) return -e;
  }
}

// fallocate(2) modes.
export const FALLOC_FL_KEEP_SIZE = 1;
export const FALLOC_FL_PUNCH_HOLE = 2;
export const FALLOC_FL_ZERO_RANGE = 0x10;

/** fallocate(2): returns 0, or -errno (EOPNOTSUPP where the file system cannot punch holes). */
export function fallocate(fd: number, mode: number, offset: number, length: number): number {
  for (;;) {
    const r = c.fallocate(fd, mode, offset, length) as number;
    if (r === 0) return 0;
    const e = koffi.errno();
    if (e !== os.constants.errno.EINTR) return -e;
  }
}
