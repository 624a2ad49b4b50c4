// TAP interfaces through /dev/net/tun (Linux Documentation/networking/tuntap.rst): TUNSETIFF
// with IFF_TAP | IFF_NO_PI attaches a descriptor to a named interface (creating it needs
// CAP_NET_ADMIN; a persistent one made with `ip tuntap add ... user $USER` does not). Each
// read is one Ethernet frame, each write sends one.
import * as libc from './libc';

export const TUNSETIFF = 0x400454ca;
export const IFF_TAP = 0x0002;
export const IFF_NO_PI = 0x1000;
/** struct ifreq: the name (IFNAMSIZ 16), then a union whose first field is ifr_flags (short). */
const IFREQ_BYTES = 40;
const IFNAMSIZ = 16;

/**
 * Opens TAP interface `ifname` (non-blocking, close-on-exec). Throws NativeError: open's
 * (ENOENT: no tun module) or TUNSETIFF's (EPERM: no CAP_NET_ADMIN and not the tap's owner;
 * EBUSY: another process has it).
 */
export function openTap(ifname: string): { fd: number; name: string } {
  if (ifname.length >= IFNAMSIZ) throw new RangeError(`interface name "${ifname}" is longer than 15 characters`);
  const fd = libc.open('/dev/net/tun', libc.O_RDWR | libc.O_NONBLOCK);
  try {
    const ifr = new Uint8Array(IFREQ_BYTES);
    ifr.set(new TextEncoder().encode(ifname), 0);
    new DataView(ifr.buffer).setUint16(IFNAMSIZ, IFF_TAP | IFF_NO_PI, true);
    libc.ioctlBuffer(fd, `TUNSETIFF(${ifname})`, TUNSETIFF, ifr);
    const end = ifr.indexOf(0);
    return { fd, name: new TextDecoder().decode(ifr.subarray(0, end < 0 ? IFNAMSIZ : end)) };
  } catch (e) {
    libc.close(fd);
    throw e;
  }
}

const AF_INET = 2;
const SOCK_DGRAM = 2;
const SIOCGIFFLAGS = 0x8913;
const SIOCSIFFLAGS = 0x8914;
const SIOCBRADDIF = 0x89a2;
const IFF_UP = 1;

function ifreq(name: string): Uint8Array {
  const ifr = new Uint8Array(IFREQ_BYTES);
  ifr.set(new TextEncoder().encode(name), 0);
  return ifr;
}

/**
 * Makes a new TAP interface (the kernel names it tapN), adds it to `bridge` and brings it up;
 * it goes away when the descriptor is closed. Needs CAP_NET_ADMIN. Throws NativeError.
 */
export function openBridgedTap(bridge: string): { fd: number; name: string } {
  const tap = openTap('');
  const sock = libc.socket(AF_INET, SOCK_DGRAM);
  try {
    const index = libc.ifNameToIndex(tap.name);
    const add = ifreq(bridge);
    new DataView(add.buffer).setInt32(IFNAMSIZ, index, true);
    libc.ioctlBuffer(sock, `SIOCBRADDIF(${bridge}, ${tap.name})`, SIOCBRADDIF, add);
    const flags = ifreq(tap.name);
    libc.ioctlBuffer(sock, `SIOCGIFFLAGS(${tap.name})`, SIOCGIFFLAGS, flags);
    const view = new DataView(flags.buffer);
    view.setUint16(IFNAMSIZ, view.getUint16(IFNAMSIZ, true) | IFF_UP, true);
    libc.ioctlBuffer(sock, `SIOCSIFFLAGS(${tap.name})`, SIOCSIFFLAGS, flags);
    return tap;
  } catch (e) {
    libc.close(tap.fd);
    throw e;
  } finally {
    libc.close(sock);
  }
}
