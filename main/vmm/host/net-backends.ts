// Network backends on the VM host thread: where a NIC's frames go. Each is opened before the
// machine starts, so a bad one is a clear error before boot:
//   tap     an existing TAP interface through /dev/net/tun (native/tun.ts), read with poll on
//           one of koffi's worker threads (this thread never blocks);
//   socket  a Unix stream socket to another VM (listen or connect), each frame behind a
//           4-byte big-endian length, the framing of QEMU's -netdev stream;
//   udp     one datagram per frame between two HOST:PORT addresses;
//   user    user-mode NAT through libslirp (net-user.ts).
// A backend hands frames up until paused (the NIC's receive window is full) and says when a
// send could not be taken now ('busy': call again after onWritable); nothing is dropped
// without a count.
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { libc, NativeError, tun } from '../../../native';
import type { NetBackendConfig } from '../config';
import { NET_MAX_FRAME, NET_MIN_FRAME } from '../shared/net-messages';
import { NetBackendError, type NetEndpoint, type NetEndpointEvents, type SendResult } from './net-endpoint';
import { UserEndpoint } from './net-user';

export { NetBackendError, type NetEndpoint, type NetEndpointEvents, type SendResult } from './net-endpoint';

/** Opens a backend; `label` names the NIC in errors ("net0"). */
export async function openNetBackend(spec: NetBackendConfig, label: string, events: NetEndpointEvents): Promise<NetEndpoint | null> {
  switch (spec.kind) {
    case 'none': return null;
    case 'tap': return TapEndpoint.open(spec.ifname, label, events);
    case 'bridge': return TapEndpoint.openOnBridge(spec.bridge, label, events);
    case 'socket': return spec.mode === 'listen' ? StreamEndpoint.listen(spec.path, label, events) : StreamEndpoint.connect(spec.path, label, events);
    case 'udp': return UdpEndpoint.open(spec.local, spec.remote, label, events);
    case 'user': return UserEndpoint.open(spec.hostfwd, label, events);
  }
}

function validFrame(length: number): boolean {
  return length >= NET_MIN_FRAME && length <= NET_MAX_FRAME;
}

// --- tap ------------------------------------------------------------------------------

const POLL_TIMEOUT_MS = 1000;

export class TapEndpoint implements NetEndpoint {
  readonly description: string;
  drops = 0;
  private paused = false;
  private wantWrite = false;
  private closed = false;
  private readonly buffer = new Uint8Array(NET_MAX_FRAME + 1);
  /** Written to end a poll early (pause, resume, a busy write, close). */
  private readonly wake: number;

  static open(ifname: string, label: string, events: NetEndpointEvents): TapEndpoint {
    let tap: { fd: number; name: string };
    try {
      tap = tun.openTap(ifname);
    } catch (e) {
      throw new NetBackendError(`${label}: cannot open TAP interface ${ifname}: ${tapAdvice(e, ifname)}`);
    }
    return new TapEndpoint(tap.fd, tap.name, events);
  }

  /** A new TAP on `bridge` (it goes away with the VM). */
  static openOnBridge(bridge: string, label: string, events: NetEndpointEvents, sysfs = '/sys/class/net'): TapEndpoint {
    if (!fs.existsSync(path.join(sysfs, bridge, 'bridge'))) {
      throw new NetBackendError(`${label}: ${fs.existsSync(path.join(sysfs, bridge)) ? `${bridge} is not a bridge` : `there is no bridge ${bridge}`}`
        + ` (make one as root: \`sudo ip link add ${bridge} type bridge && sudo ip link set ${bridge} up\`)`);
    }
    let tap: { fd: number; name: string };
    try {
      tap = tun.openBridgedTap(bridge);
    } catch (e) {
      throw new NetBackendError(`${label}: cannot add a TAP to bridge ${bridge}: ${bridgeAdvice(e, bridge)}`);
    }
    return new TapEndpoint(tap.fd, tap.name, events, bridge);
  }

  private constructor(private readonly fd: number, ifname: string, private readonly events: NetEndpointEvents, bridge?: string) {
    this.description = bridge ? `tap:${ifname} on bridge ${bridge}` : `tap:${ifname}`;
    this.wake = libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
    void this.loop();
  }

  private async loop(): Promise<void> {
    while (!this.closed) {
      const events = (this.paused ? 0 : libc.POLLIN) | (this.wantWrite ? libc.POLLOUT : 0);
      let revents: number[];
      try {
        revents = await libc.pollAsync([{ fd: this.fd, events }, { fd: this.wake, events: libc.POLLIN }], POLL_TIMEOUT_MS);
      } catch (e) {
        this.events.onLog(`${this.description}: poll failed: ${(e as Error).message}`);
        break;
      }
      if (this.closed) break;
      if (revents[1]) libc.eventfdRead(this.wake);
      if (revents[0] & (libc.POLLERR | libc.POLLHUP)) {
        this.events.onLog(`${this.description}: the interface went away`);
        break;
      }
      if (revents[0] & libc.POLLOUT && this.wantWrite) {
        this.wantWrite = false;
        this.events.onWritable();
      }
      if (revents[0] & libc.POLLIN) this.readFrames();
    }
    libc.close(this.wake);
    libc.close(this.fd);
  }

  private readFrames(): void {
    while (!this.paused && !this.closed) {
      let n: number;
      try {
        n = libc.read(this.fd, this.buffer);
      } catch (e) {
        this.events.onLog(`${this.description}: read failed: ${(e as Error).message}`);
        return;
      }
      if (n < 0) return; // EAGAIN: drained
      if (!validFrame(n)) {
        this.drops++;
        continue;
      }
      this.events.onFrame(this.buffer.slice(0, n));
    }
  }

  send(frame: Uint8Array): SendResult {
    if (this.closed) return 'dropped';
    try {
      const n = libc.write(this.fd, frame);
      if (n >= 0) return 'sent';
      this.wantWrite = true;
      libc.eventfdWrite(this.wake);
      return 'busy';
    } catch {
      // EIO while the interface is down: the frame has nowhere to go, as on an unplugged cable.
      this.drops++;
      return 'dropped';
    }
  }

  pauseReceive(): void {
    this.paused = true;
  }

  resumeReceive(): void {
    if (!this.paused) return;
    this.paused = false;
    if (!this.closed) libc.eventfdWrite(this.wake);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    libc.eventfdWrite(this.wake);
  }
}

/** Why /dev/net/tun or TUNSETIFF refused, and what to do about it. */
export function tapAdvice(e: unknown, ifname: string): string {
  if (!(e instanceof NativeError)) return String((e as Error)?.message ?? e);
  const create = `create it once as root for your user: \`sudo ip tuntap add dev ${ifname} mode tap user $USER && sudo ip link set ${ifname} up\``;
  switch (e.code) {
    case 'ENOENT': case 'ENODEV': return `${e.message}; /dev/net/tun is missing (load the tun module: \`sudo modprobe tun\`)`;
    case 'EACCES': return `${e.message}; /dev/net/tun is not open to you (it is normally mode 0666)`;
    case 'EPERM': return `${e.message}; creating a TAP interface needs CAP_NET_ADMIN, and ${ifname} is not a persistent TAP owned by you; ${create}`;
    case 'EBUSY': return `${e.message}; another process (another VM?) has ${ifname} open`;
    case 'EINVAL': return `${e.message}; ${ifname} exists but is not a TAP interface (a TUN, or another kind of link)`;
    default: return e.message;
  }
}

/** Why a bridged TAP could not be made. */
export function bridgeAdvice(e: unknown, bridge: string): string {
  if (e instanceof NativeError && (e.code === 'EPERM' || e.code === 'EACCES')) {
    return `${e.message}; making a TAP and adding it to a bridge needs CAP_NET_ADMIN. Without it, make a persistent TAP on the bridge once as root`
      + ` (\`sudo ip tuntap add dev tap0 mode tap user $USER && sudo ip link set tap0 master ${bridge} up\`) and use tap=tap0`;
  }
  return tapAdvice(e, 'the new TAP');
}

// --- Unix stream socket -----------------------------------------------------------------

const LENGTH_BYTES = 4;

export class StreamEndpoint implements NetEndpoint {
  drops = 0;
  private socket: net.Socket | null = null;
  private server: net.Server | null = null;
  private congested = false;
  private paused = false;
  private pending: Buffer = Buffer.alloc(0);
  private closed = false;

  private constructor(readonly description: string, private readonly events: NetEndpointEvents) {}

  /** Listens on `path` (a stale socket file there is replaced); the peer VM connects later. */
  static async listen(path: string, label: string, events: NetEndpointEvents): Promise<StreamEndpoint> {
    const endpoint = new StreamEndpoint(`socket:listen=${path}`, events);
    try {
      if (fs.lstatSync(path, { throwIfNoEntry: false })?.isSocket()) {
        if (await socketAnswers(path)) throw new Error('another process listens there');
        fs.unlinkSync(path);
      }
    } catch (e) {
      throw new NetBackendError(`${label}: cannot listen on ${path}: ${(e as Error).message}`);
    }
    const server = net.createServer((socket) => {
      if (endpoint.socket || endpoint.closed) {
        socket.destroy();
        events.onLog(`${endpoint.description}: a second peer was refused (one VM per socket)`);
        return;
      }
      endpoint.adopt(socket);
    });
    endpoint.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e) => reject(new NetBackendError(`${label}: cannot listen on ${path}: ${e.message}`)));
      server.listen(path, () => resolve());
    });
    server.on('error', (e) => events.onLog(`${endpoint.description}: ${e.message}`));
    return endpoint;
  }

  /** Connects to a VM listening on `path`; it must be there now. */
  static async connect(path: string, label: string, events: NetEndpointEvents): Promise<StreamEndpoint> {
    const endpoint = new StreamEndpoint(`socket:connect=${path}`, events);
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect(path);
      s.once('connect', () => resolve(s));
      s.once('error', (e: NodeJS.ErrnoException) => reject(new NetBackendError(`${label}: cannot connect to ${path}: ${e.code === 'ENOENT' || e.code === 'ECONNREFUSED'
        ? `nothing listens there (start the VM with socket=listen:${path} first)` : e.message}`)));
    });
    endpoint.adopt(socket);
    return endpoint;
  }

  private adopt(socket: net.Socket): void {
    this.socket = socket;
    this.events.onLog(`${this.description}: peer connected`);
    if (this.paused) socket.pause();
    socket.on('data', (data: Buffer) => this.onData(data));
    socket.on('drain', () => {
      this.congested = false;
      this.events.onWritable();
    });
    socket.on('error', (e) => this.events.onLog(`${this.description}: ${e.message}`));
    socket.on('close', () => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.pending = Buffer.alloc(0);
      if (this.congested) {
        this.congested = false;
        this.events.onWritable();
      }
      if (!this.closed) this.events.onLog(`${this.description}: peer went away`);
    });
  }

  private onData(data: Buffer): void {
    this.pending = this.pending.length === 0 ? data : Buffer.concat([this.pending, data]);
    this.deliver();
  }

  /** Hands up the whole frames received, until paused (the rest waits in `pending`). */
  private deliver(): void {
    let at = 0;
    while (!this.paused && this.pending.length - at >= LENGTH_BYTES) {
      const length = this.pending.readUInt32BE(at);
      if (!validFrame(length)) {
        // Framing is lost: nothing after this can be trusted.
        this.drops++;
        this.events.onLog(`${this.description}: the peer sent a ${length}-byte frame; disconnected`);
        this.socket?.destroy();
        return;
      }
      if (this.pending.length - at - LENGTH_BYTES < length) break;
      this.events.onFrame(new Uint8Array(this.pending.subarray(at + LENGTH_BYTES, at + LENGTH_BYTES + length)));
      at += LENGTH_BYTES + length;
    }
    this.pending = this.pending.subarray(at);
  }

  send(frame: Uint8Array): SendResult {
    const socket = this.socket;
    if (!socket || this.closed) {
      this.drops++;
      return 'dropped';
    }
    if (this.congested) return 'busy';
    const head = Buffer.alloc(LENGTH_BYTES);
    head.writeUInt32BE(frame.length);
    socket.write(head);
    if (!socket.write(frame)) this.congested = true;
    return 'sent';
  }

  pauseReceive(): void {
    this.paused = true;
    this.socket?.pause();
  }

  resumeReceive(): void {
    this.paused = false;
    this.deliver();
    if (!this.paused) this.socket?.resume();
  }

  close(): void {
    this.closed = true;
    this.socket?.destroy();
    this.server?.close();
  }
}

function socketAnswers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(path);
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

// --- UDP ------------------------------------------------------------------------------

export class UdpEndpoint implements NetEndpoint {
  drops = 0;
  private paused = false;
  private constructor(readonly description: string, private readonly socket: dgram.Socket, private readonly remote: { host: string; port: number }) {}

  static async open(local: string, remote: string, label: string, events: NetEndpointEvents): Promise<UdpEndpoint> {
    const l = splitHostPort(local);
    const r = splitHostPort(remote);
    const socket = dgram.createSocket(net.isIPv6(l.host) ? 'udp6' : 'udp4');
    await new Promise<void>((resolve, reject) => {
      socket.once('error', (e) => reject(new NetBackendError(`${label}: cannot bind UDP ${local}: ${e.message}`)));
      socket.bind(l.port, l.host, () => resolve());
    });
    const endpoint = new UdpEndpoint(`udp:${local}/${remote}`, socket, r);
    socket.on('error', (e) => events.onLog(`${endpoint.description}: ${e.message}`));
    socket.on('message', (data) => {
      // Datagrams cannot be held back: one that comes while the NIC's window is full is counted.
      if (endpoint.paused || !validFrame(data.length)) endpoint.drops++;
      else events.onFrame(new Uint8Array(data));
    });
    return endpoint;
  }

  send(frame: Uint8Array): SendResult {
    this.socket.send(frame, this.remote.port, this.remote.host);
    return 'sent';
  }

  pauseReceive(): void {
    this.paused = true;
  }

  resumeReceive(): void {
    this.paused = false;
  }

  close(): void {
    this.socket.close();
  }
}

function splitHostPort(text: string): { host: string; port: number } {
  const colon = text.lastIndexOf(':');
  return { host: text.slice(0, colon).replace(/^\[|\]$/g, ''), port: Number(text.slice(colon + 1)) };
}
