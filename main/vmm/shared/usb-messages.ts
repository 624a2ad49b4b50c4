// What the VM host and the xHCI model say to each other over the channel (target
// XHCI_CHANNEL_TARGET): hot-plug requests and their replies. A request carries an id; the
// machine answers every request exactly once with a reply of the same id. Payloads are
// UTF-8 JSON: this is a control path (a user adds a device), not a data path.
import type { UsbDeviceConfig } from '../config';
import { CHANNEL_TARGET } from './channel';

/** The xHCI model's channel target, in both directions. */
export const XHCI_CHANNEL_TARGET = CHANNEL_TARGET.FIRST_FREE;

export const USB_KIND = {
  /** Host → machine: a UsbRequest. */
  REQUEST: 1,
  /** Machine → host: a UsbReply. */
  REPLY: 2,
} as const;

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
  | { op: 'keys'; events: UsbKeyEvent[] };

export type UsbRequest = UsbRequestBody & { id: number };

/** What sits on a port. */
export interface UsbPortDevice {
  kind: UsbDeviceConfig['kind'];
  /** The device's name in logs and stats ("usb-kbd", "usb-storage stick.img"). */
  name: string;
  /** The product string of its descriptors. */
  product: string;
  speed: 'low' | 'full' | 'high' | 'super';
  vendorId: number;
  productId: number;
  /** Storage: the image file and whether it is read-only; null for other kinds. */
  path: string | null;
  readOnly: boolean | null;
}

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
  }
  | { id: number; ok: false; code: UsbErrorCode; error: string };

/** A failed USB request, with the API error code it maps to. */
export class UsbRequestError extends Error {
  constructor(readonly code: UsbErrorCode, message: string) {
    super(message);
    this.name = 'UsbRequestError';
  }
}

export function encodeUsbMessage(message: UsbRequest | UsbReply): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(message));
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
