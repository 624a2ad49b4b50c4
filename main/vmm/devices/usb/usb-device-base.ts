// UsbDeviceBase: the common half of every emulated USB device (HID, mass storage, CDC-ACM).
// Runs on the machine thread.
//
// What the base does (USB 2.0 ch. 9, USB 3.2 ch. 9):
// - EP0: the chapter 9 standard requests: GET_DESCRIPTOR (device, configuration, string, BOS,
//   device qualifier; truncated to wLength), SET_ADDRESS, GET/SET_CONFIGURATION,
//   GET/SET_INTERFACE, GET_STATUS, CLEAR/SET_FEATURE (ENDPOINT_HALT, DEVICE_REMOTE_WAKEUP, and
//   U1/U2/LTM/FUNCTION_SUSPEND at SuperSpeed), SET_SEL and SET_ISOCH_DELAY (SuperSpeed).
//   Unknown or malformed requests STALL (a protocol stall: the next SETUP works again).
//   Class and vendor requests, and standard requests to an interface that ch. 9 leaves to the
//   class (GET_DESCRIPTOR of a HID report descriptor), go to the subclass: handleControl().
//   Control requests complete inside submit().
// - Other endpoints: one FIFO queue per endpoint address. The head transfer is offered to the
//   subclass (handleData()); it completes it at once or answers 'pending' and later calls
//   kick() (look at the head again: an interrupt IN endpoint with nothing to report stays
//   pending, which is how a HID device NAKs) or completeTransfer() (finish it: a read done on
//   the VM host). Transfers on one endpoint complete in submission order.
// - An endpoint that does not exist in the current configuration/alternate setting, or whose
//   type differs from the transfer's, STALLs the transfer.
// - A halted endpoint (SET_FEATURE(ENDPOINT_HALT), a 'stall' answer from handleData(), or
//   haltEndpoint()) completes every queued and new transfer with 'stall' until
//   CLEAR_FEATURE(ENDPOINT_HALT), SET_CONFIGURATION, SET_INTERFACE or a reset. A controller
//   should stop submitting on an endpoint after its first 'stall' until it has reset it.
// - cancel() completes a queued transfer with 'cancelled'; reset() cancels everything and
//   returns to the default state (address 0, unconfigured); detach() completes everything with
//   'no-device'. Every transfer completes exactly once.
//
// Extension points for subclasses (all optional except the constructor arguments):
//   handleControl(setup, outData)  class/vendor requests on EP0 -> bytes (IN), 'ok' or 'stall'
//   handleData(transfer, address)  the head of a non-control endpoint's queue -> result
//   onTransferCancelled(t, addr)   a head transfer that answered 'pending' was cancelled
//   onConfigurationChanged(value)  after SET_CONFIGURATION (0: unconfigured)
//   onInterfaceChanged(itf, alt)   after SET_INTERFACE
//   onEndpointHaltCleared(addr)    after CLEAR_FEATURE(ENDPOINT_HALT) (data toggle reset)
//   onReset()                      after a bus reset (and on attach)
//   onDetach()                     after the device left its port
// Helpers: kick(), completeTransfer(), haltEndpoint(), requestWakeup(), log(), and state
// getters (configurationValue, deviceAddress, remoteWakeupEnabled, endpointSpec(), ...).

import {
  buildDescriptors,
  DescriptorType,
  endpointAddress,
  type UsbDescriptorSet,
  type UsbDeviceSpec,
  type UsbEndpointSpec,
} from './descriptors';
import {
  transferLength,
  type UsbDevice,
  type UsbPortHost,
  type UsbSetup,
  type UsbSpeed,
  type UsbStatus,
  type UsbTransfer,
} from './usb-device';

/** bRequest values of the standard requests. */
export const StandardRequest = {
  getStatus: 0x00,
  clearFeature: 0x01,
  setFeature: 0x03,
  setAddress: 0x05,
  getDescriptor: 0x06,
  setDescriptor: 0x07,
  getConfiguration: 0x08,
  setConfiguration: 0x09,
  getInterface: 0x0a,
  setInterface: 0x0b,
  synchFrame: 0x0c,
  setSel: 0x30,
  setIsochDelay: 0x31,
} as const;

/** Feature selectors. */
export const Feature = {
  endpointHalt: 0,
  functionSuspend: 0, // interface recipient, SuperSpeed
  deviceRemoteWakeup: 1,
  testMode: 2,
  u1Enable: 48,
  u2Enable: 49,
  ltmEnable: 50,
} as const;

/** bmRequestType fields. */
export const RequestKind = { standard: 0, class: 1, vendor: 2 } as const;
export const Recipient = { device: 0, interface: 1, endpoint: 2, other: 3 } as const;

export function requestKind(setup: UsbSetup): number {
  return (setup.requestType >>> 5) & 3;
}
export function requestRecipient(setup: UsbSetup): number {
  return setup.requestType & 0x1f;
}
export function requestIsIn(setup: UsbSetup): boolean {
  return (setup.requestType & 0x80) !== 0;
}

/** Decodes an 8-byte SETUP packet (as it sits in a Setup Stage TRB). */
export function decodeSetup(bytes: Uint8Array): UsbSetup {
  return {
    requestType: bytes[0],
    request: bytes[1],
    value: bytes[2] | (bytes[3] << 8),
    index: bytes[4] | (bytes[5] << 8),
    length: bytes[6] | (bytes[7] << 8),
  };
}

/** What a subclass answers to a control request: IN data (truncated by the base), 'ok', or 'stall'. */
export type UsbControlResult = Uint8Array | 'ok' | 'stall';

/**
 * What a subclass answers for the head transfer of an endpoint: a byte count (status 'ok'; for IN
 * the subclass has written them into transfer.data), 'pending' (keep it; kick() or
 * completeTransfer() later), 'stall' (the endpoint halts), 'babble' or 'error'.
 */
export type UsbDataResult = number | 'pending' | 'stall' | 'babble' | 'error';

export interface UsbDeviceBaseOptions {
  name: string;
  speed: UsbSpeed;
  spec: UsbDeviceSpec;
}

interface QueuedTransfer {
  transfer: UsbTransfer;
  done: (transfer: UsbTransfer) => void;
  /** The subclass answered 'pending' and has not been kicked since. */
  waiting: boolean;
  /** kick() came while handleData() was running for this transfer. */
  kicked: boolean;
  /** handleData() has seen it (a cancel then tells the subclass). */
  started: boolean;
}

function isByte(v: unknown): v is number {
  return Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 0xff;
}
function isWord(v: unknown): v is number {
  return Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 0xffff;
}

export abstract class UsbDeviceBase implements UsbDevice {
  readonly name: string;
  readonly speed: UsbSpeed;
  readonly vendorId: number;
  readonly productId: number;
  protected readonly spec: UsbDeviceSpec;
  protected readonly descriptors: UsbDescriptorSet;
  protected port: UsbPortHost | null = null;

  #address = 0;
  #configuration = 0;
  readonly #alternates = new Map<number, number>();
  /** Endpoints of the current configuration and alternate settings, by address. */
  readonly #endpoints = new Map<number, UsbEndpointSpec>();
  readonly #halted = new Set<number>();
  readonly #queues = new Map<number, QueuedTransfer[]>();
  /** Endpoints whose queue #service is running, one bit per address (a Set churned memory per transfer). */
  #servicing = 0;
  #wakeupEnabled = false;
  #superSpeedFeatures = { u1: false, u2: false, ltm: false };
  #isochDelay = 0;
  #exitLatencies = new Uint8Array(6);

  constructor(options: UsbDeviceBaseOptions) {
    this.name = options.name;
    this.speed = options.speed;
    this.spec = options.spec;
    this.vendorId = options.spec.vendorId;
    this.productId = options.spec.productId;
    this.descriptors = buildDescriptors(options.spec, options.speed);
  }

  /** The product string of the device descriptor (for the UI), or the device's name. */
  get product(): string {
    return this.spec.product ?? this.name;
  }

  // ---- extension points -------------------------------------------------------------------

  /** Class and vendor requests (and class descriptors asked of an interface). Default: STALL. */
  protected handleControl(_setup: UsbSetup, _outData: Uint8Array | null): UsbControlResult {
    return 'stall';
  }

  /** The head transfer of a non-control endpoint (`address` has bit 7 set for IN). Default: STALL. */
  protected handleData(_transfer: UsbTransfer, _address: number): UsbDataResult {
    return 'stall';
  }

  protected onTransferCancelled(_transfer: UsbTransfer, _address: number): void {}
  protected onConfigurationChanged(_value: number): void {}
  protected onInterfaceChanged(_interfaceNumber: number, _alternate: number): void {}
  protected onEndpointHaltCleared(_address: number): void {}
  protected onReset(): void {}
  protected onDetach(): void {}

  // ---- state for subclasses ---------------------------------------------------------------

  protected get configurationValue(): number {
    return this.#configuration;
  }
  protected get deviceAddress(): number {
    return this.#address;
  }
  /** The guest enabled DEVICE_REMOTE_WAKEUP. */
  protected get remoteWakeupEnabled(): boolean {
    return this.#wakeupEnabled;
  }
  /** SET_ISOCH_DELAY's value, in ns. */
  protected get isochronousDelayNs(): number {
    return this.#isochDelay;
  }
  /** SET_SEL's six bytes (U1/U2 system exit latencies). */
  protected get systemExitLatencies(): Uint8Array {
    return this.#exitLatencies;
  }
  protected get attached(): boolean {
    return this.port !== null;
  }
  protected endpointSpec(address: number): UsbEndpointSpec | undefined {
    return this.#endpoints.get(address);
  }
  protected isHalted(address: number): boolean {
    return this.#halted.has(address);
  }
  /** The current alternate setting of an interface of the current configuration, or -1. */
  protected alternateSetting(interfaceNumber: number): number {
    return this.#alternates.get(interfaceNumber) ?? -1;
  }
  protected pendingCount(address: number): number {
    return this.#queues.get(address)?.length ?? 0;
  }

  // ---- helpers for subclasses -------------------------------------------------------------

  /** Offers the head transfer of an endpoint to handleData() again (new data arrived). */
  protected kick(address: number): void {
    const head = this.#queues.get(address)?.[0];
    if (!head) return;
    head.waiting = false;
    head.kicked = true;
    this.#service(address);
  }

  /** Completes the head transfer of its endpoint (asynchronous work finished). False if it is not the head. */
  protected completeTransfer(transfer: UsbTransfer, result: Exclude<UsbDataResult, 'pending'>): boolean {
    const address = this.#transferAddress(transfer);
    const head = this.#queues.get(address)?.[0];
    if (!head || head.transfer !== transfer) return false;
    this.#finishHead(address, head, result);
    this.#service(address);
    return true;
  }

  /** Halts an endpoint: everything queued on it completes 'stall' until the halt is cleared. */
  protected haltEndpoint(address: number): void {
    if ((address & 0x0f) === 0) return;
    this.#halted.add(address);
    this.#drain(address, 'stall');
  }

  /** Asks the port to wake the bus, if the guest enabled remote wake-up (the port ignores it unless suspended). */
  protected requestWakeup(): void {
    if (this.port && this.#wakeupEnabled) this.port.wakeup();
  }

  protected log(text: string): void {
    this.port?.log(`${this.name}: ${text}`);
  }

  // ---- UsbDevice --------------------------------------------------------------------------

  attach(port: UsbPortHost): void {
    // Plugged in again without a detach: nothing from the old port survives.
    this.#cancelAll('no-device');
    this.port = port;
    this.#resetState();
    this.onReset();
  }

  detach(): void {
    this.#cancelAll('no-device');
    this.port = null;
    this.#resetState();
    this.onDetach();
  }

  reset(): void {
    this.#cancelAll('cancelled');
    this.#resetState();
    this.onReset();
  }

  submit(transfer: UsbTransfer, done: (transfer: UsbTransfer) => void): void {
    const entry: QueuedTransfer = { transfer, done, waiting: false, kicked: false, started: false };
    transfer.status = 'pending';
    transfer.actualLength = 0;
    if (!this.port) return this.#finish(entry, 'no-device', 0);
    if (!Number.isInteger(transfer.endpoint) || transfer.endpoint < 0 || transfer.endpoint > 15) {
      return this.#finish(entry, 'stall', 0);
    }
    if (transfer.endpoint === 0) return this.#submitControl(entry);
    const address = this.#transferAddress(transfer);
    const ep = this.#endpoints.get(address);
    if (!ep || ep.kind !== transfer.type || this.#halted.has(address)) return this.#finish(entry, 'stall', 0);
    let queue = this.#queues.get(address);
    if (!queue) {
      queue = [];
      this.#queues.set(address, queue);
    }
    queue.push(entry);
    this.#service(address);
  }

  cancel(transfer: UsbTransfer): void {
    const address = this.#transferAddress(transfer);
    const queue = this.#queues.get(address);
    if (!queue) return;
    const at = queue.findIndex((e) => e.transfer === transfer);
    if (at < 0) return;
    const [entry] = queue.splice(at, 1);
    if (entry.started) this.#safely(() => this.onTransferCancelled(transfer, address));
    this.#finish(entry, 'cancelled', 0);
    if (at === 0) this.#service(address);
  }

  // ---- internals --------------------------------------------------------------------------

  #transferAddress(transfer: UsbTransfer): number {
    return ((transfer.endpoint as number) & 0x0f) | (transfer.in ? 0x80 : 0);
  }

  #finish(entry: QueuedTransfer, status: UsbStatus, length: number): void {
    entry.transfer.status = status;
    entry.transfer.actualLength = length;
    entry.done(entry.transfer);
  }

  #finishHead(address: number, head: QueuedTransfer, result: Exclude<UsbDataResult, 'pending'>): void {
    const queue = this.#queues.get(address);
    if (!queue || queue[0] !== head) return;
    queue.shift();
    if (typeof result === 'number') {
      const n = Number.isFinite(result) ? Math.max(0, Math.min(Math.floor(result), transferLength(head.transfer))) : 0;
      this.#finish(head, 'ok', n);
    } else if (result === 'stall') {
      this.#halted.add(address);
      this.#finish(head, 'stall', 0);
      this.#drain(address, 'stall');
    } else {
      this.#finish(head, result, 0);
    }
  }

  /** Runs the queue of one endpoint until its head waits or the queue is empty. Not re-entrant. */
  #service(address: number): void {
    const bit = 1 << ((address & 0x0f) | ((address & 0x80) !== 0 ? 16 : 0));
    if (this.#servicing & bit) return;
    this.#servicing |= bit;
    try {
      for (;;) {
        const queue = this.#queues.get(address);
        const head = queue?.[0];
        if (!head || head.waiting) break;
        if (this.#halted.has(address)) {
          this.#drain(address, 'stall');
          break;
        }
        head.kicked = false;
        head.started = true;
        let result: UsbDataResult;
        try {
          result = this.handleData(head.transfer, address);
        } catch (err) {
          this.log(`endpoint 0x${address.toString(16)}: ${(err as Error).message}`);
          result = 'error';
        }
        if (this.#queues.get(address)?.[0] !== head) continue; // completed or cancelled meanwhile
        if (result === 'pending') {
          if (head.kicked) continue;
          head.waiting = true;
          break;
        }
        this.#finishHead(address, head, result);
      }
    } finally {
      this.#servicing &= ~bit;
    }
  }

  /** Completes every transfer queued on an endpoint with `status`, in order. */
  #drain(address: number, status: UsbStatus): void {
    const queue = this.#queues.get(address);
    if (!queue) return;
    while (queue.length > 0) {
      const entry = queue.shift() as QueuedTransfer;
      if (entry.started && status !== 'stall') this.#safely(() => this.onTransferCancelled(entry.transfer, address));
      this.#finish(entry, status, 0);
    }
  }

  #cancelAll(status: UsbStatus, only?: (address: number) => boolean): void {
    for (const address of [...this.#queues.keys()]) {
      if (only && !only(address)) continue;
      this.#drain(address, status);
    }
  }

  #safely(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.log((err as Error).message);
    }
  }

  #resetState(): void {
    this.#address = 0;
    this.#configuration = 0;
    this.#alternates.clear();
    this.#endpoints.clear();
    this.#halted.clear();
    this.#wakeupEnabled = false;
    this.#superSpeedFeatures = { u1: false, u2: false, ltm: false };
    this.#isochDelay = 0;
    this.#exitLatencies = new Uint8Array(6);
  }

  #submitControl(entry: QueuedTransfer): void {
    const t = entry.transfer;
    const setup = t.setup;
    if (
      t.type !== 'control' || !setup || !isByte(setup.requestType) || !isByte(setup.request) ||
      !isWord(setup.value) || !isWord(setup.index) || !isWord(setup.length)
    ) {
      return this.#finish(entry, 'stall', 0);
    }
    const dirIn = requestIsIn(setup);
    if (setup.length > 0 && dirIn !== t.in) return this.#finish(entry, 'stall', 0);
    const outData = dirIn ? null : t.data.subarray(0, Math.min(setup.length, t.data.length));
    let result: UsbControlResult;
    try {
      result = this.#control(setup, outData);
    } catch (err) {
      this.log(`control request ${setup.requestType.toString(16)}/${setup.request.toString(16)}: ${(err as Error).message}`);
      result = 'stall';
    }
    if (result === 'stall') return this.#finish(entry, 'stall', 0);
    if (!dirIn) return this.#finish(entry, 'ok', outData ? outData.length : 0);
    if (result === 'ok') return this.#finish(entry, 'ok', 0);
    const n = Math.min(result.length, setup.length, t.data.length);
    t.data.set(result.subarray(0, n));
    this.#finish(entry, 'ok', n);
  }

  #control(setup: UsbSetup, outData: Uint8Array | null): UsbControlResult {
    const kind = requestKind(setup);
    if (kind === RequestKind.standard) {
      const r = this.#standardRequest(setup, outData);
      if (r !== null) return r;
    }
    if (kind === 3) return 'stall';
    return this.handleControl(setup, outData);
  }

  #interfaceExists(interfaceNumber: number): boolean {
    return this.#configuration !== 0 && this.#alternates.has(interfaceNumber);
  }

  /** An endpoint address the guest may name in a request: EP0 either way, or one of the current endpoints. */
  #endpointExists(index: number): boolean {
    if (index & 0x70) return false;
    if ((index & 0x0f) === 0) return true;
    return this.#endpoints.has(index & 0x8f);
  }

  #currentConfigurationSpec() {
    return this.spec.configurations.find((c) => c.value === this.#configuration);
  }

  #supportsRemoteWakeup(): boolean {
    const current = this.#currentConfigurationSpec();
    if (current) return current.remoteWakeup === true;
    return this.spec.configurations.some((c) => c.remoteWakeup === true);
  }

  /** Chapter 9. null: not a request the base answers (the subclass gets it). */
  #standardRequest(setup: UsbSetup, outData: Uint8Array | null): UsbControlResult | null {
    const dirIn = requestIsIn(setup);
    const recipient = requestRecipient(setup);
    const superSpeed = this.speed === 'super';
    switch (setup.request) {
      case StandardRequest.getStatus: {
        if (!dirIn || setup.value !== 0 || setup.length !== 2) return 'stall';
        if (recipient === Recipient.device) {
          if (setup.index !== 0) return 'stall';
          const selfPowered = this.#currentConfigurationSpec()?.selfPowered ?? false;
          const f = this.#superSpeedFeatures;
          const bits = (selfPowered ? 1 : 0) | (this.#wakeupEnabled ? 2 : 0) |
            (f.u1 ? 4 : 0) | (f.u2 ? 8 : 0) | (f.ltm ? 16 : 0);
          return Uint8Array.of(bits, 0);
        }
        if (recipient === Recipient.interface) {
          return this.#interfaceExists(setup.index) ? Uint8Array.of(0, 0) : 'stall';
        }
        if (recipient === Recipient.endpoint) {
          if (setup.index > 0xff || !this.#endpointExists(setup.index)) return 'stall';
          return Uint8Array.of(this.#halted.has(setup.index & 0x8f) ? 1 : 0, 0);
        }
        return 'stall';
      }
      case StandardRequest.clearFeature:
      case StandardRequest.setFeature: {
        const set = setup.request === StandardRequest.setFeature;
        if (dirIn || setup.length !== 0) return 'stall';
        if (recipient === Recipient.device) {
          if (setup.value === Feature.deviceRemoteWakeup) {
            if (setup.index !== 0 || !this.#supportsRemoteWakeup()) return 'stall';
            this.#wakeupEnabled = set;
            return 'ok';
          }
          if (superSpeed && this.#configuration !== 0) {
            if (setup.value === Feature.u1Enable) this.#superSpeedFeatures.u1 = set;
            else if (setup.value === Feature.u2Enable) this.#superSpeedFeatures.u2 = set;
            else if (setup.value === Feature.ltmEnable) this.#superSpeedFeatures.ltm = set;
            else return 'stall';
            return 'ok';
          }
          return 'stall';
        }
        if (recipient === Recipient.interface) {
          // FUNCTION_SUSPEND (wIndex low byte: interface, high byte: options), SuperSpeed only.
          if (!superSpeed || setup.value !== Feature.functionSuspend) return 'stall';
          return this.#interfaceExists(setup.index & 0xff) ? 'ok' : 'stall';
        }
        if (recipient === Recipient.endpoint) {
          if (setup.value !== Feature.endpointHalt || setup.index > 0xff || !this.#endpointExists(setup.index)) {
            return 'stall';
          }
          const address = setup.index & 0x8f;
          if ((address & 0x0f) === 0) return 'ok'; // EP0 has no persistent halt
          if (set) {
            this.haltEndpoint(address);
          } else {
            this.#halted.delete(address);
            this.#safely(() => this.onEndpointHaltCleared(address));
          }
          return 'ok';
        }
        return 'stall';
      }
      case StandardRequest.setAddress: {
        if (dirIn || recipient !== Recipient.device || setup.index !== 0 || setup.length !== 0) return 'stall';
        if (setup.value > 127 || this.#configuration !== 0) return 'stall';
        this.#address = setup.value;
        return 'ok';
      }
      case StandardRequest.getDescriptor: {
        if (!dirIn) return 'stall';
        if (recipient !== Recipient.device) return null; // class descriptors (HID) belong to the subclass
        const type = setup.value >>> 8;
        const index = setup.value & 0xff;
        const d = this.descriptors;
        switch (type) {
          case DescriptorType.device:
            return d.device;
          case DescriptorType.configuration:
            return d.configurations[index] ?? 'stall';
          case DescriptorType.string:
            return d.strings.get(index) ?? 'stall';
          case DescriptorType.deviceQualifier:
            return d.deviceQualifier ?? 'stall';
          case DescriptorType.bos:
            return d.bos ?? 'stall';
          default:
            return 'stall';
        }
      }
      case StandardRequest.getConfiguration: {
        if (!dirIn || recipient !== Recipient.device || setup.value !== 0 || setup.index !== 0 || setup.length !== 1) {
          return 'stall';
        }
        return Uint8Array.of(this.#configuration);
      }
      case StandardRequest.setConfiguration: {
        if (dirIn || recipient !== Recipient.device || setup.index !== 0 || setup.length !== 0) return 'stall';
        if (setup.value > 0xff) return 'stall';
        if (setup.value !== 0 && !this.spec.configurations.some((c) => c.value === setup.value)) return 'stall';
        this.#applyConfiguration(setup.value);
        return 'ok';
      }
      case StandardRequest.getInterface: {
        if (!dirIn || recipient !== Recipient.interface || setup.value !== 0 || setup.length !== 1) return 'stall';
        if (!this.#interfaceExists(setup.index)) return 'stall';
        return Uint8Array.of(this.#alternates.get(setup.index) ?? 0);
      }
      case StandardRequest.setInterface: {
        if (dirIn || recipient !== Recipient.interface || setup.length !== 0) return 'stall';
        if (!this.#interfaceExists(setup.index) || setup.value > 0xff) return 'stall';
        const config = this.#currentConfigurationSpec();
        if (!config?.interfaces.some((i) => i.number === setup.index && (i.alternate ?? 0) === setup.value)) {
          return 'stall';
        }
        this.#applyAlternate(setup.index, setup.value);
        return 'ok';
      }
      case StandardRequest.setSel: {
        if (!superSpeed || dirIn || recipient !== Recipient.device) return 'stall';
        if (setup.value !== 0 || setup.index !== 0 || setup.length !== 6 || !outData || outData.length < 6) {
          return 'stall';
        }
        this.#exitLatencies = Uint8Array.from(outData.subarray(0, 6));
        return 'ok';
      }
      case StandardRequest.setIsochDelay: {
        if (!superSpeed || dirIn || recipient !== Recipient.device || setup.index !== 0 || setup.length !== 0) {
          return 'stall';
        }
        this.#isochDelay = setup.value;
        return 'ok';
      }
      default:
        return 'stall';
    }
  }

  #applyConfiguration(value: number): void {
    this.#cancelAll('cancelled', (address) => (address & 0x0f) !== 0);
    this.#configuration = value;
    this.#alternates.clear();
    this.#halted.clear();
    const config = this.#currentConfigurationSpec();
    if (config) for (const itf of config.interfaces) this.#alternates.set(itf.number, 0);
    this.#rebuildEndpoints();
    this.#safely(() => this.onConfigurationChanged(value));
  }

  #applyAlternate(interfaceNumber: number, alternate: number): void {
    const config = this.#currentConfigurationSpec();
    const addressesOf = (alt: number | undefined) =>
      (config?.interfaces.find((i) => i.number === interfaceNumber && (i.alternate ?? 0) === alt)?.endpoints ?? [])
        .map(endpointAddress);
    const oldAddresses = new Set(addressesOf(this.#alternates.get(interfaceNumber)));
    this.#cancelAll('cancelled', (address) => oldAddresses.has(address));
    for (const a of [...oldAddresses, ...addressesOf(alternate)]) this.#halted.delete(a);
    this.#alternates.set(interfaceNumber, alternate);
    this.#rebuildEndpoints();
    this.#safely(() => this.onInterfaceChanged(interfaceNumber, alternate));
  }

  #rebuildEndpoints(): void {
    this.#endpoints.clear();
    const config = this.#currentConfigurationSpec();
    if (!config) return;
    for (const itf of config.interfaces) {
      if ((itf.alternate ?? 0) !== this.#alternates.get(itf.number)) continue;
      for (const ep of itf.endpoints) this.#endpoints.set(endpointAddress(ep), ep);
    }
  }
}
