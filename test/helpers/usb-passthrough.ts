// Host USB passthrough's two sides joined by a fake channel over a fake HostUsbHandle that
// records every host call and completes transfers when the test says (usb-passthrough tests).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { HostCallback, HostIsoDone, HostTransferDone, HostTransferStatus, HostUsbHandle } from '../../main/host/host-usb-handle';
import type { HostUsbDeviceInfo } from '../../main/host/usb-inventory';
import { UsbJournal } from '../../main/host/usb-journal';
import { PassthroughDevice, PassthroughRouter, type HostDeviceConfig } from '../../main/vmm/devices/usb/passthrough/passthrough-device';
import type { UsbSetup, UsbTransfer, UsbTransferType } from '../../main/vmm/devices/usb/usb-device';
import { HostUsbPassthrough } from '../../main/vmm/host/usb-passthrough';
import type { KickWatcher } from '../../main/vmm/devices/context';
import type { DirectUrbDone, DirectUrbRequest, DirectUrbs } from '../../main/vmm/devices/usb/passthrough/direct-urbs';
import type { PassthroughStatus } from '../../main/vmm/shared/usb-passthrough-messages';

export interface HostUrb {
  address: number;
  type: string;
  buffer: Buffer;
  done: HostTransferDone;
  cancelled: boolean;
}

export class FakeHandle implements HostUsbHandle {
  calls: string[] = [];
  urbs: HostUrb[] = [];
  config = 1;
  interfaces = [0, 1];
  drivers = new Map<number, boolean>([[0, true], [1, false]]);
  /** Async device calls wait here until the test runs them. */
  deferred: (() => void)[] = [];
  deferCalls = false;
  failAttach = false;
  configurationValue(): number { return this.config; }
  interfaceNumbers(): number[] { return this.interfaces; }
  kernelDriverActive(itf: number): boolean { return this.drivers.get(itf) === true; }
  detachKernelDriver(itf: number): void { this.calls.push(`detach ${itf}`); this.drivers.set(itf, false); }
  attachKernelDriver(itf: number): void {
    this.calls.push(`attach ${itf}`);
    if (this.failAttach) throw new Error('LIBUSB_ERROR_ACCESS');
    this.drivers.set(itf, true);
  }
  claimInterface(itf: number): void { this.calls.push(`claim ${itf}`); }
  private later(what: string, done: HostCallback, error: Error | null = null): void {
    this.calls.push(what);
    if (this.deferCalls) this.deferred.push(() => done(error));
    else done(error);
  }
  releaseInterface(itf: number, done: HostCallback): void { this.later(`release ${itf}`, done); }
  /** Errors the next setConfiguration calls end with (EBUSY while a kernel driver holds an interface). */
  setConfigurationErrors: Error[] = [];
  setConfiguration(value: number, done: HostCallback): void {
    const error = this.setConfigurationErrors.shift() ?? null;
    this.later(`set-configuration ${value}`, done, error);
    if (error !== null) return;
    // The kernel probes drivers for the new configuration's interfaces.
    this.config = value;
    this.drivers.set(0, true);
  }
  setInterface(itf: number, alt: number, done: HostCallback): void { this.later(`set-interface ${itf} ${alt}`, done); }
  clearHalt(ep: number, done: HostCallback): void { this.later(`clear-halt 0x${ep.toString(16)}`, done); }
  reset(done: HostCallback): void { this.later('reset', done); }
  submit(address: number, type: 'control' | 'bulk' | 'interrupt', buffer: Buffer, done: HostTransferDone): () => void {
    const urb: HostUrb = { address, type, buffer, done, cancelled: false };
    this.urbs.push(urb);
    return () => { urb.cancelled = true; };
  }
  close(): void { this.calls.push('close'); }
  /** Completes the oldest live URB: IN bytes copied in (control after the SETUP bytes). */
  complete(status: HostTransferStatus, bytes?: Uint8Array, actual?: number): HostUrb {
    const urb = this.urbs.shift() as HostUrb;
    const base = urb.type === 'control' ? 8 : 0;
    if (bytes) urb.buffer.set(bytes, base);
    urb.done(status, actual ?? bytes?.length ?? urb.buffer.length - base);
    return urb;
  }
}

export interface HostIsoUrb {
  address: number;
  buffer: Uint8Array;
  packets: number[];
  done: HostIsoDone;
  cancelled: boolean;
}

/** A FakeHandle with isochronous URBs (usbfs's side of NodeUsbHandle). */
export class FakeIsoHandle extends FakeHandle {
  isoUrbs: HostIsoUrb[] = [];
  submitIso(address: number, buffer: Uint8Array, packets: number[], done: HostIsoDone): () => void {
    const urb: HostIsoUrb = { address, buffer: Uint8Array.from(buffer), packets, done, cancelled: false };
    this.isoUrbs.push(urb);
    return () => { urb.cancelled = true; };
  }
  /** Completes the oldest iso URB: each packet's actual length and status (IN bytes in `data`). */
  completeIso(packets: { actual: number; status: HostTransferStatus }[], data?: Uint8Array, status: HostTransferStatus = 'ok'): HostIsoUrb {
    const urb = this.isoUrbs.shift() as HostIsoUrb;
    if (data) urb.buffer.set(data.subarray(0, urb.buffer.length));
    urb.done(status, packets, urb.buffer);
    return urb;
  }
}

export const INFO: HostUsbDeviceInfo = {
  sysfsName: '1-1', busNumber: 1, deviceAddress: 2, portPath: [1], vendorId: 0x46f4, productId: 1, manufacturer: 'QEMU',
  product: 'QEMU USB HARDDRIVE', serial: 'RIGSTICK0', speed: 'super', classCode: 0, configuration: 1,
  interfaces: [{ sysfsName: '1-1:1.0', number: 0, alternate: 0, classCode: 8, subclass: 6, protocol: 0x50, driver: 'usb-storage' }],
  isHub: false, devicePath: '/dev/bus/usb/001/002', accessible: true, peerName: null,
};

export const CONFIG: HostDeviceConfig = {
  kind: 'host', handle: 7, hostName: '1-1', product: 'QEMU QEMU USB HARDDRIVE', speed: 'super', vendorId: 0x46f4, productId: 1,
};

export interface FakeUrb {
  req: DirectUrbRequest;
  done: DirectUrbDone;
  discarded: boolean;
  /** Set by the test: the next reap completes it with this status, actual and IN bytes. */
  result: { status: PassthroughStatus; actual: number; bytes?: Uint8Array } | null;
}

/** The machine thread's usbfs file, faked: URBs complete when the test sets a result and something reaps. */
export class FakeDirectUrbs implements DirectUrbs {
  urbs: FakeUrb[] = [];
  reaps = 0;
  closed = false;
  /** errno the next submit is refused with (0: accepted). */
  refuseErrno = 0;
  submit(req: DirectUrbRequest, done: DirectUrbDone): () => void {
    if (this.refuseErrno !== 0) {
      const e = Object.assign(new Error('USBDEVFS_SUBMITURB: refused'), { errno: this.refuseErrno });
      this.refuseErrno = 0;
      throw e;
    }
    // In place: the caller's buffer is the URB's, as usbdevfs does; else a copy.
    const urb: FakeUrb = { req: { ...req, data: req.inPlace === true ? req.data : Uint8Array.from(req.data) }, done, discarded: false, result: null };
    this.urbs.push(urb);
    return () => {
      urb.discarded = true;
      urb.result ??= { status: 'cancelled', actual: 0 };
    };
  }
  reap(): number {
    this.reaps++;
    const ready = this.urbs.filter((u) => u.result !== null);
    this.urbs = this.urbs.filter((u) => u.result === null);
    for (const u of ready) {
      const r = u.result as NonNullable<FakeUrb['result']>;
      const data = u.req.inPlace === true ? u.req.data : Uint8Array.from(u.req.data);
      if (r.bytes) data.set(r.bytes, u.req.type === 'control' ? 8 : 0);
      u.done(r.status, r.actual, data);
    }
    return ready.length;
  }
  get inFlight(): number {
    return this.urbs.length;
  }
  close(): void {
    this.closed = true;
    for (const u of this.urbs) u.discarded = true;
    this.urbs = [];
  }
}

/** The two sides joined: records queue in each direction until `pump()` (as the channel + kick would). */
export function rig<H extends FakeHandle = FakeHandle>(options: { channelRoom?: () => boolean; handle?: H; direct?: FakeDirectUrbs | Error } = {}) {
  const usb = (options.handle ?? new FakeHandle()) as H;
  const journal = new UsbJournal(fs.mkdtempSync(path.join(os.tmpdir(), 'porthole-pt-')));
  const toHost: [number, Uint8Array][] = [];
  const toMachine: [number, Uint8Array][] = [];
  const timers: (() => void)[] = [];
  const logs: string[] = [];
  const watched = new Set<KickWatcher>();
  const direct = options.direct;
  const router = new PassthroughRouter({
    ...(direct === undefined ? {} : {
      openDirect: () => {
        if (direct instanceof Error) throw direct;
        return direct;
      },
      kickWatch: { add: (w: KickWatcher) => { watched.add(w); }, remove: (w: KickWatcher) => { watched.delete(w); } },
    }),
    send: (kind, payload) => {
      if (options.channelRoom && !options.channelRoom()) return false;
      toHost.push([kind, payload.slice()]);
      return true;
    },
    setTimer: (_ms, fn) => { timers.push(fn); return () => undefined; },
    log: (t) => logs.push(t),
  });
  const device = router.create(direct === undefined ? CONFIG : { ...CONFIG, usbfs: { fd: 99, path: '/dev/bus/usb/001/002' } });
  const gone: string[] = [];
  const host = new HostUsbPassthrough(INFO, CONFIG.handle, usb, {
    send: (kind, payload) => toMachine.push([kind, payload.slice()]),
    log: (t) => logs.push(t),
    gone: () => gone.push('gone'),
  }, journal, 'vm-a');
  const pump = () => {
    for (let i = 0; i < 100 && (toHost.length > 0 || toMachine.length > 0); i++) {
      for (const [k, p] of toHost.splice(0)) host.onMachineRecord(k, p);
      for (const [k, p] of toMachine.splice(0)) router.handle(k, p);
    }
  };
  device.attach({ wakeup: () => undefined, log: (t) => logs.push(t) });
  /** What the run loop does after a kick or an exit: poll the watchers. */
  const kick = () => { for (const w of [...watched]) w.poll(true); };
  return { usb, journal, device, host, router, pump, toHost, toMachine, timers, logs, gone, watched, kick };
}

export function transfer(type: UsbTransferType, endpoint: number, dirIn: boolean, data: Uint8Array, setup: UsbSetup | null = null): UsbTransfer {
  return { endpoint, in: dirIn, type, setup, data, status: 'pending', actualLength: 0 };
}

export function setupOf(requestType: number, request: number, value: number, index: number, length: number): UsbSetup {
  return { requestType, request, value, index, length };
}

export function submit(device: PassthroughDevice, t: UsbTransfer): UsbTransfer[] {
  const done: UsbTransfer[] = [];
  device.submit(t, (x) => done.push(x));
  return done;
}

