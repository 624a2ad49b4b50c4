// The user backend (VM host thread): user-mode NAT through libslirp (native/slirp.ts), QEMU's
// -netdev user. Guest frames go into slirp_input; slirp's frames for the guest come out of its
// send_packet callback. The loop asks slirp which sockets to watch, polls them on one of
// koffi's worker threads (with an eventfd to cut a poll short), then lets slirp read and
// write them: no busy-spinning, and this thread never blocks.
// While the NIC's receive window is full the loop stops polling slirp's sockets, so TCP
// peers are held back by their socket buffers; frames slirp makes meanwhile (replies to guest
// frames) wait here, up to BACKLOG_LIMIT, beyond which they are counted as dropped.
import { libc, slirp as native } from '../../../native';
import { type HostForward, parseHostForward, USER_NET } from '../config';
import { NET_MAX_FRAME, NET_MIN_FRAME } from '../shared/net-messages';
import { NetBackendError, type NetEndpoint, type NetEndpointEvents, type SendResult } from './net-endpoint';

const BACKLOG_LIMIT = 1024;
/** The longest poll when slirp has no timer due sooner. */
const IDLE_POLL_MS = 1000;

function toPollEvents(slirpEvents: number): number {
  let e = 0;
  if (slirpEvents & native.SLIRP_POLL_IN) e |= libc.POLLIN;
  if (slirpEvents & native.SLIRP_POLL_OUT) e |= libc.POLLOUT;
  if (slirpEvents & native.SLIRP_POLL_PRI) e |= POLLPRI;
  return e;
}

const POLLPRI = 0x2;
const POLLNVAL = 0x20;

function toSlirpEvents(revents: number): number {
  let e = 0;
  if (revents & libc.POLLIN) e |= native.SLIRP_POLL_IN;
  if (revents & libc.POLLOUT) e |= native.SLIRP_POLL_OUT;
  if (revents & POLLPRI) e |= native.SLIRP_POLL_PRI;
  if (revents & (libc.POLLERR | POLLNVAL)) e |= native.SLIRP_POLL_ERR;
  if (revents & libc.POLLHUP) e |= native.SLIRP_POLL_HUP;
  return e;
}

export class UserEndpoint implements NetEndpoint {
  readonly description: string;
  drops = 0;
  private readonly slirp: native.Slirp;
  private readonly wake: number;
  private wakePending = false;
  private paused = false;
  private closed = false;
  private readonly backlog: Uint8Array[] = [];

  /** Opens slirp and its port forwards; a missing libslirp or a taken port is a NetBackendError. */
  static open(hostfwd: string[], label: string, events: NetEndpointEvents): UserEndpoint {
    const forwards = hostfwd.map((h, i) => parseHostForward(h, `${label}: hostfwd[${i}]`));
    return new UserEndpoint(forwards, label, events);
  }

  private constructor(forwards: HostForward[], label: string, private readonly events: NetEndpointEvents) {
    this.description = `user${forwards.length ? ` (${forwards.map(describe).join(', ')})` : ''}`;
    try {
      this.slirp = new native.Slirp(USER_NET, {
        sendPacket: (frame) => this.fromSlirp(frame),
        guestError: (message) => events.onLog(`user: guest error: ${message}`),
        notify: () => this.kick(),
      });
    } catch (e) {
      throw new NetBackendError(`${label}: cannot start user-mode networking: ${(e as Error).message}`);
    }
    try {
      for (const f of forwards) {
        if (f.guestAddr.includes(':')) this.slirp.addHostForward6(f.protocol === 'udp', f.hostAddr || '::', f.hostPort, f.guestAddr, f.guestPort);
        else this.slirp.addHostForward(f.protocol === 'udp', f.hostAddr || '0.0.0.0', f.hostPort, f.guestAddr, f.guestPort);
      }
    } catch (e) {
      this.slirp.close();
      throw new NetBackendError(`${label}: cannot forward ${(e as Error).message}`);
    }
    this.wake = libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
    void this.loop();
  }

  private async loop(): Promise<void> {
    while (!this.closed) {
      const fill = this.paused ? { fds: [], timeoutMs: IDLE_POLL_MS } : this.slirp.pollfdsFill(IDLE_POLL_MS);
      const fds = [{ fd: this.wake, events: libc.POLLIN }, ...fill.fds.map((p) => ({ fd: p.fd, events: toPollEvents(p.events) }))];
      let revents: number[];
      try {
        revents = await libc.pollAsync(fds, fill.timeoutMs);
      } catch (e) {
        this.events.onLog(`user: poll failed: ${(e as Error).message}`);
        break;
      }
      if (this.closed) break;
      if (revents[0]) libc.eventfdRead(this.wake);
      this.wakePending = false;
      // Descriptors slirp gave before a pause are still looked at once (their indices are valid).
      if (fill.fds.length > 0 || !this.paused) this.slirp.pollfdsPoll(revents.slice(1).map(toSlirpEvents));
    }
    libc.close(this.wake);
    this.slirp.close();
  }

  /** Ends the current poll so the loop looks at slirp's sockets again. */
  private kick(): void {
    if (this.wakePending || this.closed) return;
    this.wakePending = true;
    libc.eventfdWrite(this.wake);
  }

  private fromSlirp(frame: Uint8Array): void {
    if (frame.length < NET_MIN_FRAME || frame.length > NET_MAX_FRAME) {
      this.drops++;
      return;
    }
    if (this.paused || this.backlog.length > 0) {
      if (this.backlog.length >= BACKLOG_LIMIT) this.drops++;
      else this.backlog.push(frame);
      return;
    }
    this.events.onFrame(frame);
  }

  send(frame: Uint8Array): SendResult {
    if (this.closed) return 'dropped';
    this.slirp.input(frame);
    // A guest frame can open a connection or queue data: slirp's set of sockets changed.
    this.kick();
    return 'sent';
  }

  pauseReceive(): void {
    this.paused = true;
  }

  resumeReceive(): void {
    if (!this.paused) return;
    this.paused = false;
    while (!this.paused && this.backlog.length > 0) this.events.onFrame(this.backlog.shift()!);
    this.kick();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    libc.eventfdWrite(this.wake);
  }
}

function describe(f: HostForward): string {
  const v6 = f.guestAddr.includes(':');
  const at = (addr: string, port: number) => (v6 ? `[${addr}]:${port}` : `${addr}:${port}`);
  return `${f.protocol} ${at(f.hostAddr || '*', f.hostPort)} -> ${at(f.guestAddr, f.guestPort)}`;
}
