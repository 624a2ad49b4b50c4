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
  if (ifname.length === 0 || ifname.length >= IFNAMSIZ) throw new RangeError(`interface name "${ifname}" is not 1 to 15 characters`);
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
