// What the parts of the xHCI controller (rings, ports, slots, transfers) share: the TRB and
// context records and the controller services each part calls.
import type { DmaMemory } from '../../../memory/dma';
import type { MemoryRegion } from '../../../memory/guest-memory';
import type { UsbTransfer } from '../usb-device';
import type { XhciPort } from './ports';
import { EP_DISABLED, MAX_SLOTS, SLOT_DISABLED } from './constants';

export const TWO_32 = 0x100000000;

/** One TRB as read from a ring. */
export interface Trb {
  /** Guest address of the TRB. */
  addr: number;
  /** Parameter, low and high dwords. */
  p0: number;
  p1: number;
  status: number;
  control: number;
}

export function trbType(control: number): number {
  return (control >>> 10) & 0x3f;
}

/** A 64-bit guest pointer from two halves (not exact above 2^53: DmaMemory refuses those). */
export function pointer(low: number, high: number): number {
  return (high >>> 0) * TWO_32 + (low >>> 0);
}

export function low32(value: number): number {
  return value % TWO_32 >>> 0;
}

export function high32(value: number): number {
  return Math.floor(value / TWO_32) >>> 0;
}

/** A TD handed to a device: the transfer and the TRBs it came from. */
export interface Td {
  /** null: nothing for the device (a No-Op or Event Data TD, or a TRB Error found while fetching). */
  transfer: UsbTransfer | null;
  /** A TRB Error found while fetching: reported, and the endpoint halted, when this TD retires. */
  errorTrb: number;
  errorCode: number;
  /**
   * The TD's TRBs in ring order, Links left out: the first `count` entries (the array and its
   * TRB objects are reused when the TD is, so entries past `count` are stale).
   */
  trbs: Trb[];
  count: number;
  /** Ring position of the first TRB, and of the TRB after the TD. */
  start: number;
  startCycle: number;
  end: number;
  endCycle: number;
  /** The device has called done. */
  complete: boolean;
  /** Dropped by the controller (stop, reset, unplug): its completion is ignored. */
  stale: boolean;
  /** Bytes of each data TRB (IN gather/scatter), in `trbs` order; -1 for non-data TRBs (first `count`). */
  lengths: number[];
  /** performance.now() when it went to the device (0 while nothing counts traffic). */
  submittedMs: number;
}

export interface GuestSegmentsCache {
  /** The memory map the windows were made in (GuestMemory replaces the list when it changes). */
  regions: readonly MemoryRegion[] | null;
  dirIn: boolean;
  /** Address and length of each data TRB, interleaved: key[0..keyLength). */
  key: number[];
  keyLength: number;
  segments: Uint8Array[] | null;
}

export class Endpoint {
  state = EP_DISABLED;
  /** Endpoint context EP Type. */
  type = 0;
  maxPacket = 0;
  /** Endpoint context Max Burst Size and Mult (0-based): an isoch TD carries at most maxPacket × (maxBurst+1) × (mult+1). */
  maxBurst = 0;
  mult = 0;
  /** Dequeue pointer: the first TRB not yet retired (what the output context shows). */
  deq = 0;
  deqCycle = 1;
  /** Where the next TD is fetched from (ahead of deq while TDs are in flight). */
  fetch = 0;
  fetchCycle = 1;
  readonly inflight: Td[] = [];
  /** The guest windows of the last TD handed over as segments, by the buffers (address, length) it named. */
  readonly guestCache: GuestSegmentsCache = { regions: null, dirIn: false, key: [], keyLength: 0, segments: null };
  /** Retired TDs (and their TRB objects) kept for the next fetches: no allocation per TRB. */
  readonly spareTds: Td[] = [];
  /** A continuation of a kick that hit MAX_TDS_PER_KICK. */
  cancelTimer: (() => void) | null = null;
  kicking = false;
  /** TRBs the current kick may still read. */
  trbBudget = 0;
  constructor(readonly slotId: number, readonly dci: number) {}
}

export class Slot {
  enabled = false;
  state = SLOT_DISABLED;
  /** Root hub port number (1-based), 0 when none yet. */
  port = 0;
  address = 0;
  /** Output device context address (cached from the DCBAA at Address Device). */
  outputContext = 0;
  interrupterTarget = 0;
  /** Indexed by DCI 1..31. */
  readonly endpoints: (Endpoint | null)[] = new Array<Endpoint | null>(32).fill(null);
  constructor(readonly id: number) {}
}

export function newSlots(): Slot[] {
  const slots: Slot[] = [];
  for (let i = 0; i <= MAX_SLOTS; i++) slots.push(new Slot(i));
  return slots;
}

/** The controller services the parts call. */
export interface XhciServices {
  readonly dma: DmaMemory;
  /** Indexed by slot ID 1..MAX_SLOTS (0 unused). */
  readonly slots: Slot[];
  /** Indexed by port number - 1. */
  readonly ports: XhciPort[];
  /** USBCMD.RS and not halted. */
  running(): boolean;
  postEvent(interrupter: number, p0: number, p1: number, status: number, control: number, bei: boolean): void;
  /** A DMA failure (Host System Error) or a broken controller structure (Host Controller Error): halt. */
  fatal(reason: string, controllerError?: boolean): void;
  count(name: string, n?: number): void;
  setTimer(delayMs: number, fn: () => void): () => void;
}
