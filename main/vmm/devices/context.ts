// What a device model may use of the machine it lives in.
import type { MmioBus, PioBus } from './bus';
import type { MachineConfig } from '../config';
import type { DoorbellRegistry, InterruptRouter } from './interrupts';
import type { GuestMemory } from '../memory/guest-memory';
import type { ByteRing } from '../shared/control';
import type { StatsRegistry } from '../shared/stats';

export interface SerialLink {
  /** Guest → host bytes. */
  output: ByteRing;
  /** Host → guest bytes are delivered by calling the device's receive(). */
}

/** Line settings a UART asks the host side to apply (for real serial devices). */
export interface LineSettings {
  baud: number;
  dataBits: 5 | 6 | 7 | 8;
  parity: 'none' | 'odd' | 'even' | 'mark' | 'space';
  stopBits: 1 | 2;
}

export interface ModemControl {
  dtr: boolean;
  rts: boolean;
}

export interface MachineContext {
  readonly config: MachineConfig;
  readonly memory: GuestMemory;
  readonly pio: PioBus;
  readonly mmio: MmioBus;
  readonly cpuCount: number;
  /** Where device models register and bump their counters. */
  readonly statistics: StatsRegistry;
  /** Drives an interrupt line (GSI) of the in-kernel PIC/IOAPIC. */
  setIrq(gsi: number, level: boolean): void;
  /** Delivers an MSI through KVM. */
  signalMsi(addressLo: number, addressHi: number, data: number): void;
  /** MSI routes and line irqfds: interrupts any thread injects by writing an eventfd. */
  readonly interrupts: InterruptRouter;
  /**
   * KVM memory slots for host memory a device maps into the guest (VFIO BARs; with `readonly`,
   * registers the guest reads without an exit while its writes still exit); absent in tests without KVM.
   */
  readonly slots?: {
    add(guestBase: number, size: number, hostAddr: bigint, opts: { readonly?: boolean; name: string }): number;
    remove(slot: number): void;
  };
  /**
   * Registers whose guest writes need no exit (KVM's coalesced MMIO): KVM queues them, and
   * they are applied before the next exit is handled and before the machine thread runs
   * timers or host messages (the VM host kicks vCPU 0 when a queued write waits 100 ms). A read
   * that takes no exit (a read-only slot) shows the register's value from before the queued
   * writes until then: only for registers a guest does not read back before its next exit.
   * Absent in tests without KVM.
   */
  readonly queuedWrites?: {
    /** Queues writes to [address, address+size); false where KVM cannot (the writes exit). */
    add(address: number, size: number): boolean;
    /** Writes to a range `add` took exit again. */
    remove(address: number, size: number): void;
    /** Applies the queued writes now: for a device about to change what they may have written. */
    settle(): void;
  };
  /** ioeventfds: doorbell registers whose guest writes do not exit. */
  readonly doorbells: DoorbellRegistry;
  /** Per NIC, the VM host's virtio-net data plane block (shared/dataplane-block.ts), or null; absent in tests. */
  readonly netDataPlanes?: readonly (SharedArrayBuffer | null)[];
  /** Per disk of the config, the disk I/O thread's data plane block (virtio disks), or null; absent in tests. */
  readonly diskDataPlanes?: readonly (SharedArrayBuffer | null)[];
  requestReset(): void;
  requestPowerOff(): void;
  /** A line for the VM's log (shown by the CLI with --verbose and kept by the manager). */
  log(text: string): void;
  /** Sends a structured event to the VM host thread (serial line settings, modem lines). */
  notifyHost(message: HostNotification): void;
  /**
   * Runs `fn` on the machine thread after about `delayMs`, even while the guest sits in
   * KVM_RUN (the VM host kicks vCPU 0 when it is due). Returns a function that cancels it.
   */
  setTimer(delayMs: number, fn: () => void): () => void;
  /** Host-side output ring for COM port `index` (0..3), the debug console is index 4. */
  serialRing(index: number): ByteRing;
  /**
   * Routes the VM host's channel records for `target` (a backend's completions, host
   * input) to `handler` on this thread. Targets from CHANNEL_TARGET.FIRST_FREE up are free.
   */
  onHostMessage(target: number, handler: (kind: number, payload: Uint8Array) => void): void;
  /** Sends a record to the VM host's handler for `target`; false when the channel is full (keep it, retry). */
  sendToHost(target: number, kind: number, payload?: Uint8Array): boolean;
  /**
   * Host work a device waits for without the VM host (usbfs URBs the machine thread submitted,
   * whose completion signal kicks vCPU 0): a watcher added here is polled after every kick and
   * every exit until it is removed. Absent in tests without a run loop.
   */
  readonly kickWatch?: KickWatch;
}

/** Something to look at each time vCPU 0 comes out of KVM_RUN (see MachineContext.kickWatch). */
export interface KickWatcher {
  /** `kicked`: vCPU 0 came out of KVM_RUN on a signal (EINTR), not on an exit or at a slice's start. */
  poll(kicked: boolean): void;
}

export interface KickWatch {
  /** Polls `w` after every kick and exit from now on (adding twice is one watch). */
  add(w: KickWatcher): void;
  remove(w: KickWatcher): void;
}

export type HostNotification =
  | { type: 'serial-line'; port: number; settings: LineSettings }
  | { type: 'serial-modem'; port: number; modem: ModemControl };
