// Control, bulk and interrupt URBs the machine thread submits and reaps itself, on a dup of
// the VM host's usbfs descriptor (the VM host opened the device, detached its drivers and
// claimed its interfaces on that open file; claims belong to the file, so the dup may use them).
// A transfer then costs no channel hop: the guest's doorbell exit submits the URB, and the
// URB's completion signal (usbfs sends SIG_KICK to the process, the submitting thread first)
// takes vCPU 0 out of KVM_RUN, after which the run loop polls the KickWatch and this reaps.
// The VM host still owns the device: it takes it, does SET_CONFIGURATION/SET_INTERFACE/
// CLEAR_HALT and the port reset, and gives it back (journal and all).
import { SIG_KICK } from '../../../../../native/libc';
import { statusOfUrb, UsbdevfsDevice } from '../../../../../native/usbdevfs';
import type { PassthroughStatus } from '../../../shared/usb-passthrough-messages';

export interface DirectUrbRequest {
  type: 'control' | 'bulk' | 'interrupt';
  /** The endpoint address (IN: 0x80 set); 0 for control. */
  endpoint: number;
  /** Control: the 8 SETUP bytes then the data stage. OUT: the bytes; IN: the size to read. */
  data: Uint8Array;
  /** The URB reads and writes `data` itself (see UrbRequest.inPlace): the caller leaves it alone until done. */
  inPlace?: boolean;
}

/** How a URB ended: its status, bytes moved (control: of the data stage), and the URB's buffer (IN data). */
export type DirectUrbDone = (status: PassthroughStatus, actual: number, data: Uint8Array) => void;

/** URBs on a usbfs file that this thread reaps (tests give a fake). */
export interface DirectUrbs {
  /** Submits; `done` runs on this thread from `reap`. Throws an Error with `errno` when usbfs refuses it. Returns a discard. */
  submit(req: DirectUrbRequest, done: DirectUrbDone): () => void;
  /** Reaps every completed URB without blocking; how many. */
  reap(): number;
  readonly inFlight: number;
  /** Discards what is in flight and closes the dup (the VM host's descriptor stays open). */
  close(): void;
}

export class UsbfsDirectUrbs implements DirectUrbs {
  private constructor(private readonly dev: UsbdevfsDevice) {}

  /** Dups `fd` after checking it still names `path`; throws a sentence otherwise. */
  static adopt(fd: number, path: string): UsbfsDirectUrbs {
    return new UsbfsDirectUrbs(UsbdevfsDevice.adopt(fd, path));
  }

  submit(req: DirectUrbRequest, done: DirectUrbDone): () => void {
    const control = req.type === 'control';
    return this.dev.submit({ type: req.type, endpoint: req.endpoint, data: req.data, inPlace: req.inPlace, signal: SIG_KICK }, (r) => {
      const base = control ? 8 : 0;
      done(statusOfUrb(r.status), Math.max(0, Math.min(r.actual, r.data.length - base)), r.data);
    });
  }

  reap(): number {
    return this.dev.reapAll();
  }

  get inFlight(): number {
    return this.dev.urbsInFlight;
  }

  close(): void {
    this.dev.close();
  }
}

/** A refused submit's errno as a transfer status (ENODEV: gone, EPIPE: halted). */
export function submitErrorStatus(e: unknown): PassthroughStatus {
  const errno = (e as { errno?: number }).errno;
  return errno === 19 || errno === 108 ? 'no-device' : errno === 32 ? 'stall' : 'error';
}
