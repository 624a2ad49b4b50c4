// How the contract travels: the same call names and envelopes over Electron IPC and
// over browser mode's HTTP + WebSocket. The names come from the method table
// (methods.ts); no Node or DOM imports, so the preload's types, the browser client and
// main can all use it.
import type { ApiErrorShape, HostUsbDevicesEvent, PortholeEvent, UsbTransfersEvent, VmStatsEvent } from './contract';
import { wireMethodNames, type CallName, type CloseName, type StreamName } from './methods';

/** Calls that map one to one onto PortholeApi methods. */
export type DirectMethod = CallName;

/**
 * Every call name on the wire. A stream such as PortholeApi.openConsole becomes
 * openConsole(id, port, subscription) + closeConsole(subscription), where the client picks
 * the subscription id; the items then arrive on the event channel ("console" messages for
 * bytes, scroll-back first, so they are ordered with nothing lost or repeated).
 */
export type WireMethod = CallName | StreamName | CloseName;

export const WIRE_METHODS: readonly WireMethod[] = wireMethodNames() as WireMethod[];

export type WireResult = { ok: true; value: unknown } | { ok: false; error: ApiErrorShape };

/** Events that main sends (the "connection" event is made by clients themselves). */
export type ServerEvent = Exclude<PortholeEvent, { type: 'connection' }>;

/** Main → UI on the event channel. Bytes are a Uint8Array over IPC, base64 text over WebSocket. */
export type ServerMessage<Bytes> =
  | { type: 'event'; event: ServerEvent }
  /** `offset` is the stream position of data[0], so a client can drop bytes it already has (after a reconnect). */
  | { type: 'console'; subscription: string; offset: number; data: Bytes }
  /** One `vm-stats` event for a watchVmStats subscription. */
  | { type: 'vm-stats'; subscription: string; event: VmStatsEvent }
  /** One `usb-transfers` event (a batch of transfer records) for a watchUsbTransfers subscription. */
  | { type: 'usb-transfers'; subscription: string; event: UsbTransfersEvent }
  /** The host's USB device list, for a watchHostUsbDevices subscription. */
  | { type: 'host-usb-devices'; subscription: string; event: HostUsbDevicesEvent }
  /** Browser mode: the first WebSocket message; HTTP calls name this session in SESSION_HEADER. */
  | { type: 'hello'; session: string };

/** Electron IPC channel names. */
export const IPC_CALL_CHANNEL = 'porthole:call';
export const IPC_EVENT_CHANNEL = 'porthole:event';
/** Synchronous: answers the method table without validators (describeMethods()) for the preload. */
export const IPC_METHODS_CHANNEL = 'porthole:methods';

/** Browser mode paths and names. */
export const HTTP_CALL_PATH = '/api/call';
export const WS_EVENTS_PATH = '/api/events';
export const SESSION_HEADER = 'x-porthole-session';
export const TOKEN_QUERY = 'token';

/** Body of POST /api/call. */
export interface HttpCallBody {
  method: WireMethod;
  args: unknown[];
}

// Base64 without Buffer or atob, so the browser client and main share one implementation.
const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';

export function bytesToBase64(bytes: Uint8Array): string {
  let out = '';
  let i = 0;
  for (; i + 2 < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
    out += B64[n >> 18] + B64[(n >> 12) & 63] + B64[(n >> 6) & 63] + B64[n & 63];
  }
  const left = bytes.length - i;
  if (left === 1) {
    const n = bytes[i] << 16;
    out += B64[n >> 18] + B64[(n >> 12) & 63] + '==';
  } else if (left === 2) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8);
    out += B64[n >> 18] + B64[(n >> 12) & 63] + B64[(n >> 6) & 63] + '=';
  }
  return out;
}

const B64_INDEX = new Int16Array(128).fill(-1);
for (let i = 0; i < B64.length; i++) B64_INDEX[B64.charCodeAt(i)] = i;

/** Decodes base64; returns null for text that is not base64. */
export function base64ToBytes(text: string): Uint8Array | null {
  if (text.length % 4 !== 0) return null;
  const pad = text.endsWith('==') ? 2 : text.endsWith('=') ? 1 : 0;
  const out = new Uint8Array((text.length / 4) * 3 - pad);
  let o = 0;
  for (let i = 0; i < text.length; i += 4) {
    let n = 0;
    for (let j = 0; j < 4; j++) {
      const c = text.charCodeAt(i + j);
      const isPad = c === 61 && i + 4 === text.length && j >= 4 - pad;
      const v = isPad ? 0 : c < 128 ? B64_INDEX[c] : -1;
      if (v < 0) return null;
      n = (n << 6) | v;
    }
    if (o < out.length) out[o++] = (n >> 16) & 255;
    if (o < out.length) out[o++] = (n >> 8) & 255;
    if (o < out.length) out[o++] = n & 255;
  }
  return out;
}

/**
 * Tracks one console subscription's stream position so bytes seen twice (the scroll-back
 * re-sent after a reconnect) are dropped. A gap (bytes that fell out of the bounded
 * scroll-back while disconnected) is accepted: later bytes are still shown.
 */
export class ConsoleCursor {
  private next = -1;

  /** The part of `data` (starting at stream `offset`) not delivered yet, or null. */
  accept(offset: number, data: Uint8Array): Uint8Array | null {
    const end = offset + data.length;
    if (this.next >= 0 && end <= this.next) return null;
    const fresh = this.next > offset ? data.subarray(this.next - offset) : data;
    this.next = end;
    return fresh.length > 0 ? fresh : null;
  }
}
