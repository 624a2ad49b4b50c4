// Records between a NIC model (machine thread) and its network backend (VM host thread), on
// channel target NET_CHANNEL_TARGET. Every payload starts with the NIC's index (one byte,
// three bytes of padding), then the kind's own bytes.
//
// Flow control is by credits, so neither side drops a frame silently:
//  - host → machine FRAME: the host keeps at most NET_RX_WINDOW frames unacknowledged; the
//    device returns RX_CREDIT as it puts frames in the guest's buffers (or drops them, counted).
//    While the window is full the host stops reading its backend (a TAP or socket then queues
//    or drops in the kernel, where it is counted too).
//  - machine → host TX_FRAME: the device sends at most NET_TX_WINDOW frames ahead; the host
//    returns TX_CREDIT once its backend took them. Without credit the device leaves the guest's
//    transmit buffers on the ring (the guest's queue stops, as on a busy NIC).
//  - machine → host HELLO: a device was (re)built (a VM reset): the host forgets the frames the
//    old one never acknowledged.
//  - host → machine DATAPLANE_FAILED: the guest broke a ring the host ran (net-dataplane.ts);
//    the card goes to its error state.
import { CHANNEL_TARGET } from './channel';

export const NET_CHANNEL_TARGET = CHANNEL_TARGET.FIRST_FREE + 2;
export const NET_KIND = { FRAME: 1, RX_CREDIT: 2, TX_FRAME: 3, TX_CREDIT: 4, HELLO: 5, DATAPLANE_FAILED: 6 } as const;
export const NET_RX_WINDOW = 64;
export const NET_TX_WINDOW = 64;
/** The largest Ethernet frame either side passes (an MTU of 65535 plus a VLAN-tagged header). */
export const NET_MAX_FRAME = 65535 + 18;
/** The smallest: a destination, a source and an EtherType. */
export const NET_MIN_FRAME = 14;
const HEAD = 4;

/** Where a FRAME or TX_FRAME record's frame starts. */
export const NET_FRAME_OFFSET = HEAD;

/** A FRAME or TX_FRAME record for a frame of `length` bytes, its frame still to be written at NET_FRAME_OFFSET. */
export function netFrameRecord(nic: number, length: number): Uint8Array {
  const out = new Uint8Array(HEAD + length);
  out[0] = nic;
  return out;
}

export function encodeNetFrame(nic: number, frame: Uint8Array): Uint8Array {
  const out = netFrameRecord(nic, frame.length);
  out.set(frame, HEAD);
  return out;
}

export function encodeNetCount(nic: number, count: number): Uint8Array {
  const out = new Uint8Array(HEAD + 4);
  out[0] = nic;
  new DataView(out.buffer).setUint32(HEAD, count >>> 0, true);
  return out;
}

/** The NIC index and the rest, or null for a record too short to have them. */
export function decodeNetRecord(payload: Uint8Array): { nic: number; body: Uint8Array } | null {
  if (payload.length < HEAD) return null;
  return { nic: payload[0], body: payload.subarray(HEAD) };
}

export function decodeNetCount(body: Uint8Array): number {
  return body.length >= 4 ? new DataView(body.buffer, body.byteOffset, 4).getUint32(0, true) : 0;
}

