// libslirp (Debian libslirp0, libslirp.so.0, 4.x): user-mode NAT, the TCP/IP stack QEMU's
// `-netdev user` runs. Facts from its public header slirp/libslirp.h: slirp_new takes a
// versioned SlirpConfig (version 1 fields are enough here) and a SlirpCb table it keeps a
// pointer to (so it lives in memory we allocate and free); slirp_input takes one Ethernet
// frame from the guest; frames for the guest come back through send_packet. The caller's
// loop asks slirp_pollfds_fill for the descriptors to poll, polls them, and hands the results
// to slirp_pollfds_poll (which also runs slirp's TCP timers). Every callback runs on the
// calling thread, inside one of those calls or a timer we run.
import koffi from 'koffi';
import { ipv6Bytes } from './inet';

export const SLIRP_POLL_IN = 1 << 0;
export const SLIRP_POLL_OUT = 1 << 1;
export const SLIRP_POLL_PRI = 1 << 2;
export const SLIRP_POLL_ERR = 1 << 3;
export const SLIRP_POLL_HUP = 1 << 4;

export class SlirpMissingError extends Error {
  constructor(soname: string, detail: string) {
    super(`libslirp is not installed (${soname} could not be loaded: ${detail}); install it with \`sudo apt-get install libslirp0\``);
    this.name = 'SlirpMissingError';
  }
}

/** A libslirp call that failed; the message names the call. */
export class SlirpError extends Error {
  constructor(readonly call: string, detail: string) {
    super(`${call}: ${detail}`);
    this.name = 'SlirpError';
  }
}

export interface SlirpLib {
  slirp_new: koffi.KoffiFunction;
  slirp_cleanup: koffi.KoffiFunction;
  slirp_input: koffi.KoffiFunction;
  slirp_pollfds_fill: koffi.KoffiFunction;
  slirp_pollfds_poll: koffi.KoffiFunction;
  slirp_add_hostfwd: koffi.KoffiFunction;
  /** libslirp 4.5 and later: forwards with sockaddrs (IPv6). */
  slirp_add_hostxfwd: koffi.KoffiFunction | undefined;
  slirp_version_string: koffi.KoffiFunction;
  SlirpCb: koffi.IKoffiCType;
  sendPacket: koffi.IKoffiCType;
  guestError: koffi.IKoffiCType;
  clockGetNs: koffi.IKoffiCType;
  timerNew: koffi.IKoffiCType;
  timerFree: koffi.IKoffiCType;
  timerMod: koffi.IKoffiCType;
  pollFd: koffi.IKoffiCType;
  notify: koffi.IKoffiCType;
  timerCb: koffi.IKoffiCType;
  addPoll: koffi.IKoffiCType;
  getREvents: koffi.IKoffiCType;
}

let loaded: SlirpLib | null = null;
let typeCounter = 0;

export const SLIRP_SONAME = 'libslirp.so.0';

function lib(): SlirpLib {
  loaded ??= loadSlirp(SLIRP_SONAME);
  return loaded;
}

/** Loads libslirp from `soname` (tests name a missing one); throws SlirpMissingError. */
export function loadSlirp(soname: string): SlirpLib {
  let so: koffi.IKoffiLib;
  try {
    so = koffi.load(soname);
  } catch (e) {
    throw new SlirpMissingError(soname, (e as Error).message);
  }
  // Names are per koffi instance; a suffix keeps them unique if this module is loaded twice.
  const n = (name: string) => `${name}_porthole${typeCounter}`;
  typeCounter++;
  const inAddr = 'uint32_t'; // struct in_addr: s_addr in network byte order
  // struct in6_addr is 4-aligned (its union has uint32_t[4]); 16 uint8_t would sit 3 bytes early.
  const in6AddrType = koffi.array('uint32_t', 4);
  const SlirpConfig = koffi.struct(n('SlirpConfig'), {
    version: 'uint32_t',
    restricted: 'int',
    in_enabled: 'bool',
    vnetwork: inAddr,
    vnetmask: inAddr,
    vhost: inAddr,
    in6_enabled: 'bool',
    vprefix_addr6: in6AddrType,
    vprefix_len: 'uint8_t',
    vhost6: in6AddrType,
    vhostname: 'const char *',
    tftp_server_name: 'const char *',
    tftp_path: 'const char *',
    bootfile: 'const char *',
    vdhcp_start: inAddr,
    vnameserver: inAddr,
    vnameserver6: in6AddrType,
    vdnssearch: 'void *',
    vdomainname: 'const char *',
    if_mtu: 'size_t',
    if_mru: 'size_t',
    disable_host_loopback: 'bool',
    enable_emu: 'bool',
  });
  const sendPacket = koffi.proto(n('SlirpWriteCb'), 'intptr_t', ['void *', 'size_t', 'void *']);
  const guestError = koffi.proto(n('SlirpGuestErrorCb'), 'void', ['const char *', 'void *']);
  const clockGetNs = koffi.proto(n('SlirpClockCb'), 'int64_t', ['void *']);
  const timerCb = koffi.proto(n('SlirpTimerCb'), 'void', ['void *']);
  // Returns void * in C; declared uintptr_t (the same register) because koffi takes no pointer
  // value back from a JS callback. slirp_new makes its IPv6 router-advertisement timer at once.
  const timerNew = koffi.proto(n('SlirpTimerNewCb'), 'uintptr_t', ['void *', 'void *', 'void *']);
  const timerFree = koffi.proto(n('SlirpTimerFreeCb'), 'void', ['void *', 'void *']);
  const timerMod = koffi.proto(n('SlirpTimerModCb'), 'void', ['void *', 'int64_t', 'void *']);
  const pollFd = koffi.proto(n('SlirpPollFdCb'), 'void', ['int', 'void *']);
  const notify = koffi.proto(n('SlirpNotifyCb'), 'void', ['void *']);
  const addPoll = koffi.proto(n('SlirpAddPollCb'), 'int', ['int', 'int', 'void *']);
  const getREvents = koffi.proto(n('SlirpGetREventsCb'), 'int', ['int', 'void *']);
  const SlirpCb = koffi.struct(n('SlirpCb'), {
    send_packet: koffi.pointer(sendPacket),
    guest_error: koffi.pointer(guestError),
    clock_get_ns: koffi.pointer(clockGetNs),
    timer_new: koffi.pointer(timerNew),
    timer_free: koffi.pointer(timerFree),
    timer_mod: koffi.pointer(timerMod),
    register_poll_fd: koffi.pointer(pollFd),
    unregister_poll_fd: koffi.pointer(pollFd),
    notify: koffi.pointer(notify),
  });
  const fn = (name: string, result: string | koffi.IKoffiCType, params: (string | koffi.IKoffiCType)[]) => {
    try {
      return so.func(name, result, params);
    } catch (e) {
      throw new SlirpMissingError(soname, `it has no ${name}: ${(e as Error).message}`);
    }
  };
  const optionalFn = (name: string, result: string, params: string[]) => {
    try {
      return so.func(name, result, params);
    } catch {
      return undefined;
    }
  };
  return {
    slirp_new: fn('slirp_new', 'void *', [koffi.pointer(SlirpConfig), koffi.pointer(SlirpCb), 'void *']),
    slirp_cleanup: fn('slirp_cleanup', 'void', ['void *']),
    slirp_input: fn('slirp_input', 'void', ['void *', 'const uint8_t *', 'int']),
    slirp_pollfds_fill: fn('slirp_pollfds_fill', 'void', ['void *', koffi.inout(koffi.pointer('uint32_t')), koffi.pointer(addPoll), 'void *']),
    slirp_pollfds_poll: fn('slirp_pollfds_poll', 'void', ['void *', 'int', koffi.pointer(getREvents), 'void *']),
    slirp_add_hostfwd: fn('slirp_add_hostfwd', 'int', ['void *', 'int', inAddr, 'int', inAddr, 'int']),
    slirp_add_hostxfwd: optionalFn('slirp_add_hostxfwd', 'int', ['void *', 'const uint8_t *', 'uint32_t', 'const uint8_t *', 'uint32_t', 'int']),
    slirp_version_string: fn('slirp_version_string', 'const char *', []),
    SlirpCb, sendPacket, guestError, clockGetNs, timerNew, timerFree, timerMod, pollFd, notify, timerCb, addPoll, getREvents,
  };
}

/** Throws SlirpMissingError when libslirp.so.0 cannot be loaded; returns its version. */
export function slirpVersion(): string {
  return lib().slirp_version_string() as string;
}

/** "10.0.2.15" as struct in_addr's s_addr read as a little-endian uint32 (the bytes stay in network order). */
export function inAddr(dotted: string): number {
  const parts = dotted.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) throw new RangeError(`"${dotted}" is not an IPv4 address`);
  return (parts[0] | (parts[1] << 8) | (parts[2] << 16) | (parts[3] << 24)) >>> 0;
}

/** "fec0::2" as the 16 bytes of a struct in6_addr; throws RangeError for anything else. */
export function in6Addr(text: string): number[] {
  const bytes = ipv6Bytes(text);
  if (!bytes) throw new RangeError(`"${text}" is not an IPv6 address`);
  return bytes;
}

const AF_INET6 = 10;
const HOSTFWD_UDP = 1;
const HOSTFWD_V6ONLY = 2;

/** struct sockaddr_in6 (28 bytes): family, port (network order), flow info, address, scope. */
function sockaddrIn6(addr: string, port: number): Uint8Array {
  const bytes = new Uint8Array(28);
  const view = new DataView(bytes.buffer);
  view.setUint16(0, AF_INET6, true);
  view.setUint16(2, port, false);
  bytes.set(in6Addr(addr), 8);
  return bytes;
}

/** An IPv6 address as in6_addr's four 32-bit words in host order (the bytes stay in network order); absent: ::. */
function in6Words(text: string | undefined): number[] {
  const b = in6Addr(text ?? '::');
  return [0, 4, 8, 12].map((i) => (b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24)) >>> 0);
}

export interface SlirpOptions {
  network: string;   // 10.0.2.0
  netmask: string;   // 255.255.255.0
  host: string;      // 10.0.2.2: the gateway, and the host's loopback as the guest sees it
  dhcpStart: string; // 10.0.2.15
  dns: string;       // 10.0.2.3
  /** Absent: IPv4 only. Otherwise router advertisements of `prefix`/`prefixLength` (SLAAC). */
  ipv6?: { prefix: string; prefixLength: number; host: string; dns: string };
  mtu?: number;
}

export interface SlirpHandlers {
  /** A frame for the guest (the bytes are ours to keep). */
  sendPacket(frame: Uint8Array): void;
  guestError(message: string): void;
  /** slirp wants its descriptors looked at again (a new socket, say). */
  notify(): void;
}

interface SlirpTimer {
  cb: unknown;
  cbOpaque: unknown;
  handle: ReturnType<typeof setTimeout> | null;
  token: unknown;
}

/** One slirp instance (one NIC's network). Not thread-safe: use it from one thread. */
export class Slirp {
  private handle: unknown;
  private readonly lib: SlirpLib;
  private readonly callbacks: koffi.IKoffiRegisteredCallback[] = [];
  private readonly cbTable: unknown;
  private readonly timers = new Map<bigint, SlirpTimer>();
  private closed = false;

  constructor(options: SlirpOptions, handlers: SlirpHandlers) {
    const l = lib();
    this.lib = l;
    const register = (f: (...args: never[]) => unknown, type: koffi.IKoffiCType) => {
      const cb = koffi.register(f as (...args: unknown[]) => unknown, koffi.pointer(type));
      this.callbacks.push(cb);
      return cb;
    };
    const table = {
      send_packet: register((buf: unknown, len: number | bigint) => {
        const n = Number(len);
        handlers.sendPacket(koffi.decode(buf, 'uint8_t', n) as Uint8Array); // a copy
        return n;
      }, l.sendPacket),
      guest_error: register((msg: string) => handlers.guestError(msg), l.guestError),
      clock_get_ns: register(() => process.hrtime.bigint(), l.clockGetNs),
      timer_new: register((cb: unknown, cbOpaque: unknown) => this.timerNew(cb, cbOpaque), l.timerNew),
      timer_free: register((timer: unknown) => this.timerFree(timer), l.timerFree),
      timer_mod: register((timer: unknown, expireMs: number | bigint) => this.timerMod(timer, Number(expireMs)), l.timerMod),
      register_poll_fd: register(() => {}, l.pollFd),
      unregister_poll_fd: register(() => {}, l.pollFd),
      notify: register(() => handlers.notify(), l.notify),
    };
    // slirp keeps this pointer for its lifetime.
    this.cbTable = koffi.alloc(l.SlirpCb, 1);
    koffi.encode(this.cbTable, l.SlirpCb, table);
    const config = {
      version: 1,
      restricted: 0,
      in_enabled: true,
      vnetwork: inAddr(options.network),
      vnetmask: inAddr(options.netmask),
      vhost: inAddr(options.host),
      in6_enabled: options.ipv6 !== undefined,
      vprefix_addr6: in6Words(options.ipv6?.prefix),
      vprefix_len: options.ipv6?.prefixLength ?? 0,
      vhost6: in6Words(options.ipv6?.host),
      vhostname: null,
      tftp_server_name: null,
      tftp_path: null,
      bootfile: null,
      vdhcp_start: inAddr(options.dhcpStart),
      vnameserver: inAddr(options.dns),
      vnameserver6: in6Words(options.ipv6?.dns),
      vdnssearch: null,
      vdomainname: null,
      if_mtu: options.mtu ?? 1500,
      if_mru: options.mtu ?? 1500,
      disable_host_loopback: false,
      enable_emu: false,
    };
    this.handle = l.slirp_new(config, this.cbTable, null);
    if (!this.handle) {
      this.releaseCallbacks();
      throw new SlirpError('slirp_new', 'libslirp refused the configuration');
    }
  }

  /** One Ethernet frame from the guest. */
  input(frame: Uint8Array): void {
    if (this.closed) return;
    this.lib.slirp_input(this.handle, frame, frame.length);
  }

  /**
   * The descriptors slirp wants polled (SLIRP_POLL_* events) and how long the caller may wait
   * before calling poll() even with nothing ready (ms, at most `timeoutMs`).
   */
  pollfdsFill(timeoutMs: number): { fds: { fd: number; events: number }[]; timeoutMs: number } {
    const fds: { fd: number; events: number }[] = [];
    const timeout = [timeoutMs];
    if (this.closed) return { fds, timeoutMs };
    this.lib.slirp_pollfds_fill(this.handle, timeout, (fd: number, events: number) => {
      fds.push({ fd, events });
      return fds.length - 1;
    }, null);
    return { fds, timeoutMs: timeout[0] };
  }

  /** Hands slirp the poll results, by the index pollfdsFill gave each descriptor. */
  pollfdsPoll(revents: number[], selectError = false): void {
    if (this.closed) return;
    this.lib.slirp_pollfds_poll(this.handle, selectError ? 1 : 0, (index: number) => revents[index] ?? 0, null);
  }

  /** Forwards host HOSTADDR:HOSTPORT (tcp or udp) to the guest's GUESTADDR:GUESTPORT. */
  addHostForward(udp: boolean, hostAddr: string, hostPort: number, guestAddr: string, guestPort: number): void {
    const r = this.lib.slirp_add_hostfwd(this.handle, udp ? 1 : 0, inAddr(hostAddr), hostPort, inAddr(guestAddr), guestPort) as number;
    if (r < 0) throw this.forwardError('slirp_add_hostfwd', udp, `${hostAddr}:${hostPort}`);
  }

  /** The same over IPv6: host [HOSTADDR]:HOSTPORT (only IPv6 connections) to the guest's [GUESTADDR]:GUESTPORT. */
  addHostForward6(udp: boolean, hostAddr: string, hostPort: number, guestAddr: string, guestPort: number): void {
    const add = this.lib.slirp_add_hostxfwd;
    if (!add) throw new SlirpError('slirp_add_hostxfwd', `this libslirp (${this.lib.slirp_version_string() as string}) has no IPv6 port forwards; they need libslirp 4.5 or later`);
    const host = sockaddrIn6(hostAddr, hostPort);
    const guest = sockaddrIn6(guestAddr, guestPort);
    const r = add(this.handle, host, host.length, guest, guest.length, (udp ? HOSTFWD_UDP : 0) | HOSTFWD_V6ONLY) as number;
    if (r < 0) throw this.forwardError('slirp_add_hostxfwd', udp, `[${hostAddr}]:${hostPort}`);
  }

  private forwardError(call: string, udp: boolean, where: string): SlirpError {
    const errno = koffi.errno();
    return new SlirpError(call, `cannot listen on ${udp ? 'udp' : 'tcp'} ${where}${errno ? ` (errno ${errno}: the port is taken, or the address is not this host's)` : ''}`);
  }

  private timerNew(cb: unknown, cbOpaque: unknown): unknown {
    const token = koffi.alloc('uint8_t', 1);
    this.timers.set(BigInt(koffi.address(token)), { cb, cbOpaque, handle: null, token });
    return koffi.address(token);
  }

  private timerFree(timer: unknown): void {
    const key = BigInt(koffi.address(timer));
    const t = this.timers.get(key);
    if (!t) return;
    if (t.handle) clearTimeout(t.handle);
    this.timers.delete(key);
    koffi.free(t.token);
  }

  /** expire: ms on the clock clock_get_ns gives (ns / 1e6). */
  private timerMod(timer: unknown, expireMs: number): void {
    const t = this.timers.get(BigInt(koffi.address(timer)));
    if (!t) return;
    if (t.handle) clearTimeout(t.handle);
    const delay = Math.max(0, expireMs - Number(process.hrtime.bigint() / 1000000n));
    t.handle = setTimeout(() => {
      t.handle = null;
      if (!this.closed) koffi.call(t.cb, this.lib.timerCb, t.cbOpaque);
    }, delay);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.lib.slirp_cleanup(this.handle);
    this.handle = null;
    for (const key of [...this.timers.keys()]) {
      const t = this.timers.get(key)!;
      if (t.handle) clearTimeout(t.handle);
      koffi.free(t.token);
    }
    this.timers.clear();
    this.releaseCallbacks();
  }

  private releaseCallbacks(): void {
    for (const cb of this.callbacks) koffi.unregister(cb);
    this.callbacks.length = 0;
    koffi.free(this.cbTable);
  }
}
