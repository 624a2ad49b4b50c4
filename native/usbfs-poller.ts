// Notices usbfs URB completions without busy polling. usbfs marks its fd writable (POLLOUT)
// while a completed URB waits to be reaped, and HUP/ERR once the device is gone. One poll(2) on
// one of koffi's worker threads watches every usbfs fd of the process that has URBs in flight,
// plus an eventfd that interrupts it when a device joins the set. A completion is reaped as soon
// as the worker returns, instead of at the next tick of a 1 ms timer (which a usb-serial, with a
// bulk IN always pending, kept running forever). One worker thread in all, not one per device:
// koffi's async calls share libuv's small thread pool with file I/O.
import { EFD_CLOEXEC, EFD_NONBLOCK, eventfd, eventfdRead, eventfdWrite, pollAsync, POLLERR, POLLHUP, POLLIN, POLLOUT } from './libc';

export const POLLNVAL = 0x020;

/** What the poller watches: an opened usbfs node with URBs in flight. */
export interface PolledUsbfs {
  /** The node's fd; negative once closed (then it leaves the set). */
  readonly fd: number;
  readonly urbsInFlight: number;
  /** Reaps every completed URB without blocking; `revents` is what poll(2) said of the fd. */
  reapAll(revents: number): void;
}

export interface PollerOps {
  /** poll(2) off this thread: the revents of each fd, all 0 on a timeout. */
  poll(fds: { fd: number; events: number }[], timeoutMs: number): Promise<number[]>;
  /** An fd that becomes readable when `wake` is called (an eventfd). */
  readonly wakeFd: number;
  wake(): void;
  /** Clears the wake fd after it fired. */
  drainWake(): void;
}

/**
 * A poll that returns without any of its fds ready ends after this long; it bounds how long a
 * worker holds a closed fd's file, and how stale the set may get if a wake were ever lost.
 */
export const POLL_TIMEOUT_MS = 250;

/** Timer fallback if poll(2) cannot be used: look after 1 ms, doubling to this while nothing completes. */
export const BACKOFF_MAX_MS = 16;

export class UsbfsPoller {
  private readonly watched = new Set<PolledUsbfs>();
  private polling = false;
  /** poll(2) failed once: adaptive timer looks from then on. */
  private fallback = false;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private backoffMs = 1;
  /** Returns of poll(2) and timer looks: what a test counts to see that nothing spins. */
  readonly counts = { polls: 0, wakes: 0, timerLooks: 0 };

  constructor(private readonly ops: PollerOps) {}

  /** `dev` has URBs in flight: watch it until it has none (called after each submit). */
  watch(dev: PolledUsbfs): void {
    if (dev.fd < 0 || dev.urbsInFlight === 0 || this.watched.has(dev)) return;
    this.watched.add(dev);
    if (this.fallback) {
      this.backoffMs = 1;
      this.armTimer();
    } else if (this.polling) {
      // The pending poll does not know this fd: make it return and poll again with it.
      this.counts.wakes++;
      this.ops.wake();
    } else {
      void this.loop();
    }
  }

  /** `dev` is closing: stop watching it. */
  forget(dev: PolledUsbfs): void {
    this.watched.delete(dev);
  }

  get watching(): number {
    return this.watched.size;
  }

  private prune(): void {
    for (const dev of this.watched) if (dev.fd < 0 || dev.urbsInFlight === 0) this.watched.delete(dev);
  }

  private async loop(): Promise<void> {
    this.polling = true;
    try {
      for (;;) {
        this.prune();
        if (this.watched.size === 0) return;
        const devs = [...this.watched];
        const fds = [{ fd: this.ops.wakeFd, events: POLLIN }, ...devs.map((d) => ({ fd: d.fd, events: POLLOUT }))];
        let revents: number[];
        try {
          revents = await this.ops.poll(fds, POLL_TIMEOUT_MS);
        } catch {
          this.fallback = true;
          this.armTimer();
          return;
        }
        this.counts.polls++;
        if (revents[0] !== 0) this.ops.drainWake();
        devs.forEach((dev, i) => {
          const r = revents[i + 1] ?? 0;
          // The fd may have closed (and its number been reused) while the worker waited.
          if (r === 0 || dev.fd !== fds[i + 1].fd || !this.watched.has(dev)) return;
          const before = dev.urbsInFlight;
          dev.reapAll(r);
          // HUP/ERR with nothing reapable would make every poll return at once: stop watching
          // it (usbfs fails its URBs with ENODEV when it goes, which reapAll reports).
          if ((r & (POLLERR | POLLHUP | POLLNVAL)) !== 0 && dev.urbsInFlight === before) {
            this.watched.delete(dev);
          }
        });
      }
    } finally {
      this.polling = false;
    }
  }

  private armTimer(): void {
    if (this.timer !== null) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.counts.timerLooks++;
      this.prune();
      let reaped = false;
      for (const dev of this.watched) {
        const before = dev.urbsInFlight;
        dev.reapAll(0);
        if (dev.urbsInFlight !== before) reaped = true;
      }
      this.prune();
      this.backoffMs = reaped ? 1 : Math.min(BACKOFF_MAX_MS, this.backoffMs * 2);
      if (this.watched.size > 0) this.armTimer();
    }, this.backoffMs);
  }
}

let shared: UsbfsPoller | null = null;

/** The process's poller (its eventfd made on first use). */
export function usbfsPoller(): UsbfsPoller {
  if (shared === null) {
    const fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    shared = new UsbfsPoller({
      poll: pollAsync,
      wakeFd: fd,
      wake: () => { eventfdWrite(fd); },
      drainWake: () => { eventfdRead(fd); },
    });
  }
  return shared;
}
