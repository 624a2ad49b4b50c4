// One client connection of the contract (an Electron window, or a browser page's
// WebSocket): validates every call's arguments, runs it on the backend, turns every
// failure into a typed error, and carries events and stream items back in order.
// Both transports (main/app/ipc.ts and main/web/server.ts) use this, so the contract
// behaves the same in Electron and in browser mode. The dispatch is derived from the
// method table (methods.ts).
import { ApiError, isApiErrorShape, type ConsolePort, type HostUsbDevicesEvent, type PortholeApi, type UsbTransfersEvent, type VmStatsEvent } from './contract';
import {
  API_METHODS, type ArgSpec, type CallName, type MethodEntry, type ParsedArgs, type StreamEntry, type StreamMessageType,
} from './methods';
import { parseSubscriptionId } from './schema';
import { WIRE_METHODS, type ServerEvent, type ServerMessage, type WireResult } from './wire';

/** The backend's answer to call K: the contract's result, sync or async. */
type Answer<K extends CallName> = Awaited<ReturnType<PortholeApi[K]>>;

/** One handler per call of the table, with the validated arguments. */
export type ApiCallHandlers = { [K in CallName]: (...args: ParsedArgs<K>) => Answer<K> | Promise<Answer<K>> };

/** What main offers behind the contract (arguments already validated). */
export interface ApiBackend extends ApiCallHandlers {
  /** Calls `listener` at once with the scroll-back (if any), then with live bytes. */
  subscribeConsole(id: string, port: ConsolePort, listener: (offset: number, data: Uint8Array) => void): () => void;
  /** Calls `listener` with each `vm-stats` event of VM `id` until the returned function is called. */
  subscribeVmStats(id: string, listener: (event: VmStatsEvent) => void): () => void;
  /** subscribeVmStats with one event per `intervalMs` (validated: 100 to 60000). */
  subscribeVmStatsEvery(id: string, intervalMs: number, listener: (event: VmStatsEvent) => void): () => void;
  /** Calls `listener` with each `usb-transfers` batch of VM `id` until the returned function is called. */
  subscribeUsbTransfers(id: string, listener: (event: UsbTransfersEvent) => void): () => void;
  /** Calls `listener` with the host's USB device list now and on each change until the returned function is called. */
  subscribeHostUsbDevices(listener: (event: HostUsbDevicesEvent) => void): () => void;
  onEvent(listener: (event: ServerEvent) => void): () => void;
}

function arity(method: string, args: unknown[], count: number): void {
  if (args.length > count) {
    throw new ApiError('invalid-argument', `The call ${method} takes ${count === 0 ? 'no arguments' : count === 1 ? 'one argument' : `${count} arguments`}.`);
  }
}

/** Validates the arguments of `method` in order; a bad one is named in the error. */
function parseArgs(method: string, specs: readonly ArgSpec[], args: unknown[]): unknown[] {
  return specs.map((spec, i) => {
    try {
      return spec.parse(args[i]);
    } catch (e) {
      const fieldMessage = spec.namesFields === true && typeof args[i] === 'object' && args[i] !== null && !Array.isArray(args[i]);
      if (e instanceof ApiError && e.code === 'invalid-argument' && !fieldMessage) {
        throw new ApiError('invalid-argument', `${e.message.replace(/\.$/, '')} (argument "${spec.name}" of ${method}).`);
      }
      throw e;
    }
  });
}

/** The last wire argument of a stream and the only one of its close call (picked by the client). */
const SUBSCRIPTION: ArgSpec<string> = { name: 'subscription', parse: parseSubscriptionId };

interface OpenStream {
  method: string;
  stop: () => void;
}

export class ApiSession<Bytes> {
  /** Open streams by `${stream method}\0${subscription}`. */
  private readonly streams = new Map<string, OpenStream>();
  private readonly closeOf = new Map<string, string>();
  private readonly stopEvents: () => void;
  private closed = false;

  constructor(
    private readonly backend: ApiBackend,
    private readonly send: (message: ServerMessage<Bytes>) => void,
    private readonly encode: (data: Uint8Array) => Bytes,
    /** Where unexpected (non-ApiError) failures are reported with their stack. */
    private readonly reportBug: (e: unknown) => void = (e) => console.error('porthole: call failed:', e),
  ) {
    for (const [name, entry] of Object.entries(API_METHODS) as [string, MethodEntry][]) {
      if (entry.kind === 'stream') this.closeOf.set(entry.close, name);
    }
    this.stopEvents = backend.onEvent((event) => this.post({ type: 'event', event }));
  }

  private post(message: ServerMessage<Bytes>): void {
    if (!this.closed) this.send(message);
  }

  /** Runs one call; never throws. `method` and `args` come straight from the client. */
  async call(method: unknown, args: unknown): Promise<WireResult> {
    try {
      if (typeof method !== 'string' || !(WIRE_METHODS as readonly string[]).includes(method)) {
        throw new ApiError('invalid-argument', `There is no call named ${JSON.stringify(String(method)).slice(0, 80)}.`);
      }
      if (!Array.isArray(args)) throw new ApiError('invalid-argument', 'The call arguments must be a list.');
      const value = await this.run(method, args);
      return { ok: true, value: value === undefined ? null : value };
    } catch (e) {
      if (e instanceof ApiError) return { ok: false, error: e.toJSON() };
      if (isApiErrorShape(e)) return { ok: false, error: { code: e.code, message: e.message } };
      this.reportBug(e);
      return { ok: false, error: { code: 'internal', message: 'Something went wrong inside Porthole; the app log has the details.' } };
    }
  }

  private async run(method: string, args: unknown[]): Promise<unknown> {
    const streamMethod = this.closeOf.get(method);
    if (streamMethod !== undefined) {
      arity(method, args, 1);
      this.closeStream(streamMethod, parseArgs(method, [SUBSCRIPTION], args)[0] as string);
      return null;
    }
    const entry = (API_METHODS as Record<string, MethodEntry>)[method];
    if (entry.kind === 'call') {
      arity(method, args, entry.args.length);
      const parsed = parseArgs(method, entry.args, args);
      const handler = (this.backend as unknown as Record<string, (...a: unknown[]) => unknown>)[method];
      return await handler.apply(this.backend, parsed);
    }
    if (entry.kind === 'stream') {
      arity(method, args, entry.args.length + 1);
      const parsed = parseArgs(method, [...entry.args, SUBSCRIPTION], args);
      const sub = parsed.pop() as string;
      this.openStream(method, entry, parsed, sub);
      return null;
    }
    throw new ApiError('invalid-argument', `There is no call named ${JSON.stringify(method)}.`);
  }

  private openStream(method: string, entry: StreamEntry, args: unknown[], sub: string): void {
    this.closeStream(method, sub);
    const open = [...this.streams.values()].filter((s) => s.method === method).length;
    if (open >= entry.maxPerSession) {
      throw new ApiError('invalid-state', `A window may have at most ${entry.maxPerSession} ${entry.noun} open.`);
    }
    const deliver = this.deliverer(entry.message, sub);
    const subscribe = this.backend[entry.subscribe] as (...a: unknown[]) => () => void;
    const stop = subscribe.call(this.backend, ...args, deliver);
    this.streams.set(`${method}\u0000${sub}`, { method, stop });
  }

  /** The listener handed to the backend: it packs each item into its event-channel message. */
  private deliverer(message: StreamMessageType, subscription: string): (...item: never[]) => void {
    switch (message) {
      case 'console':
        return ((offset: number, data: Uint8Array) => {
          this.post({ type: 'console', subscription, offset, data: this.encode(data) });
        }) as (...item: never[]) => void;
      case 'vm-stats':
        return ((event: VmStatsEvent) => {
          this.post({ type: 'vm-stats', subscription, event });
        }) as (...item: never[]) => void;
      case 'usb-transfers':
        return ((event: UsbTransfersEvent) => {
          this.post({ type: 'usb-transfers', subscription, event });
        }) as (...item: never[]) => void;
      case 'host-usb-devices':
        return ((event: HostUsbDevicesEvent) => {
          this.post({ type: 'host-usb-devices', subscription, event });
        }) as (...item: never[]) => void;
    }
  }

  private closeStream(method: string, sub: string): void {
    const key = `${method}\u0000${sub}`;
    const open = this.streams.get(key);
    if (!open) return;
    this.streams.delete(key);
    open.stop();
  }

  /** The client is gone: drop its subscriptions. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.stopEvents();
    for (const s of this.streams.values()) s.stop();
    this.streams.clear();
  }
}
