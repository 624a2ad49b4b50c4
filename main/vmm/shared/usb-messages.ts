// What the VM host and the xHCI model say to each other over the channel (target
// XHCI_CHANNEL_TARGET): hot-plug requests and their replies, and USB serial ports' bytes. A request carries an id; the
// machine answers every request exactly once with a reply of the same id. Payloads are
// UTF-8 JSON: this is a control path (a user adds a device), not a data path.
import type { UsbDeviceConfig } from '../config';
import { CHANNEL_TARGET } from './channel';
import type { UsbPortDeviceInfo } from '../../api/contract';

/** The xHCI model's channel target, in both directions. */
export const XHCI_CHANNEL_TARGET = CHANNEL_TARGET.FIRST_FREE;

export const USB_KIND = {
  /** Host → machine: a UsbRequest. */
  REQUEST: 1,
  /** Machine → host: a UsbReply. */
  REPLY: 2,
  /** Host → machine: bytes for a USB serial port to give the guest (encodeSerialData). */
  SERIAL_INPUT: 3,
  /** Machine → host: bytes the guest wrote to a USB serial port (encodeSerialData). */
  SERIAL_OUTPUT: 4,
  /** Machine → host: one capture record (devices/usb/xhci/capture.ts), binary. */
  CAPTURE: 5,
} as const;

/** Most data bytes a capture record may keep per transfer (it must fit the channel beside other records). */
export const USB_CAPTURE_MAX_SNAP = 16384;

/** Largest payload of one serial data record, the link included (input longer than that is split). */
export const USB_SERIAL_RECORD_BYTES = 4096;

/**
 * A USB serial port's bytes as they cross the channel: the device's link (u32 LE, which
 * the VM host gave it, see UsbDeviceConfig) and the bytes.
 */
export function encodeSerialData(link: number, bytes: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + bytes.length);
  new DataView(out.buffer).setUint32(0, link >>> 0, true);
  out.set(bytes, 4);
  return out;
}

export function decodeSerialData(payload: Uint8Array): { link: number; bytes: Uint8Array } | null {
  if (payload.length < 4) return null;
  return { link: new DataView(payload.buffer, payload.byteOffset, 4).getUint32(0, true), bytes: payload.subarray(4) };
}

/** Largest number of key events one request carries (the API's limits stay below it). */
export const USB_MAX_KEY_EVENTS = 8192;

/** A key event for the USB keyboard: a Keyboard/Keypad page usage, and down (true) or up. */
export interface UsbKeyEvent {
  usage: number;
  down: boolean;
}

export type UsbRequestBody =
  | { op: 'list' }
  | { op: 'attach'; device: UsbDeviceConfig }
  | { op: 'detach'; port: number }
  /** Presses and releases on the first USB keyboard, in order, paced to the guest's polling. */
  | { op: 'keys'; events: UsbKeyEvent[] }
  /** Manager → VM process only (the VM host opens the device, then sends 'attach'): pass a host device through. */
  | { op: 'attach-host'; device: string; port?: number; force?: boolean }
  /** Starts capturing transfers of the devices on the ports in `portMask` (bit n: port n), or stops (mask 0). */
  | { op: 'capture'; portMask: number; snapLength: number };

export type UsbRequest = UsbRequestBody & { id: number };

/** What sits on a port: the API's description of it. */
export type UsbPortDevice = UsbPortDeviceInfo;

export interface UsbPortState {
  /** 1-based, as the guest sees it. */
  port: number;
  protocol: 'usb2' | 'usb3';
  device: UsbPortDevice | null;
}

/** Why a request failed, in the API's words (main/api/contract.ts ApiErrorCode). */
export type UsbErrorCode = 'invalid-argument' | 'invalid-state' | 'not-found' | 'timeout';

export type UsbReply =
  | {
    id: number; ok: true;
    /** Every port after the request. */
    ports: UsbPortState[];
    /** attach: the port the device got; detach: the port emptied. */
    port?: number;
    /** The devices plugged in, with their ports: what a relaunch (a reset) plugs in again. */
    plugged: UsbDeviceConfig[];
    /** capture: what the capture that ended (or was replaced) sent, and dropped on a full channel. */
    capture?: { sent: number; dropped: number };
  }
  | { id: number; ok: false; code: UsbErrorCode; error: string };

/** A failed USB request, with the API error code it maps to. */
export class UsbRequestError extends Error {
  constructor(readonly code: UsbErrorCode, message: string) {
    super(message);
    this.name = 'UsbRequestError';
  }
}

export function encodeUsbReply(reply: UsbReply): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(reply));
}

/**
 * A request as it crosses the channel. Key events travel packed, usage | down << 8, so the
 * longest request the API allows (a few thousand events) stays well inside one record.
 */
export function encodeUsbRequest(request: UsbRequest): Uint8Array {
  const wire = request.op === 'keys'
    ? { id: request.id, op: 'keys', codes: request.events.map((e) => e.usage | (e.down ? 0x100 : 0)) }
    : request;
  return new TextEncoder().encode(JSON.stringify(wire));
}

/** A request from the channel (key events unpacked; malformed ones left out for the handler to refuse), or null. */
export function decodeUsbRequest(payload: Uint8Array): (Record<string, unknown> & { id: number }) | null {
  const message = decodeUsbMessage(payload);
  if (message === null || message.op !== 'keys') return message;
  const codes = message.codes;
  const events = Array.isArray(codes) && codes.every((c) => Number.isInteger(c) && c >= 0 && c <= 0x1ff)
    ? (codes as number[]).map((c) => ({ usage: c & 0xff, down: (c & 0x100) !== 0 }))
    : undefined;
  return { id: message.id, op: 'keys', events };
}

/** The decoded JSON object of a payload, or null if it is not one with a numeric id. */
export function decodeUsbMessage(payload: Uint8Array): Record<string, unknown> & { id: number } | null {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder().decode(payload));
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return null;
  const id = (value as Record<string, unknown>).id;
  if (typeof id !== 'number' || !Number.isInteger(id)) return null;
  return value as Record<string, unknown> & { id: number };
}
