// What one virtio-net buffer holds (virtio 1.x §5.1.6): the 12-byte header, then the frame.
// Shared by the card on the machine thread (net.ts) and its data plane on the VM host thread
// (host/net-dataplane.ts), so both check the guest's buffers the same way.
import type { DmaMemory, DmaSegment } from '../memory/dma';
import { NET_MAX_FRAME, NET_MIN_FRAME } from './net-messages';
import { type DescriptorChain, sliceSegments, VirtqueueError } from './virtqueue';
import type { DataPlaneLayout } from './dataplane-block';

export const VIRTIO_NET_HDR_BYTES = 12;

/** A card's data plane block: its receive and transmit queues and six counters. */
export const NET_DATAPLANE_RX = 0;
export const NET_DATAPLANE_TX = 1;
export const NET_DATAPLANE_COUNTERS = ['rxPackets', 'rxBytes', 'txPackets', 'txBytes', 'rxDropped', 'txDropped'] as const;
export type NetDataPlaneCounter = (typeof NET_DATAPLANE_COUNTERS)[number];
export const NET_DATAPLANE: DataPlaneLayout = { queues: 2, counters: NET_DATAPLANE_COUNTERS, deviceWords: 0 };
export const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
export const VIRTIO_NET_GSO_NONE = 0;

/** The header of every received frame: no flags, no GSO, num_buffers 1 (no MRG_RXBUF). */
export function receiveHeader(): Uint8Array {
  const h = new Uint8Array(VIRTIO_NET_HDR_BYTES);
  h[10] = 1;
  return h;
}

export type ReceiveResult = 'delivered' | 'no-room' | 'fault';

/**
 * Writes `header` and `frame` into a receive chain. A chain with a device-readable part breaks
 * the protocol (VirtqueueError); one too small or outside guest memory drops the frame.
 */
export function writeReceivedFrame(dma: DmaMemory, queue: number, chain: DescriptorChain, header: Uint8Array, frame: Uint8Array): ReceiveResult {
  if (chain.readableBytes > 0) throw new VirtqueueError(`queue ${queue}: receive buffer ${chain.head} has a device-readable part`);
  if (chain.writableBytes < VIRTIO_NET_HDR_BYTES + frame.length) return 'no-room';
  if (dma.scatter(sliceSegments(chain.writable, 0, VIRTIO_NET_HDR_BYTES), header) !== VIRTIO_NET_HDR_BYTES
    || dma.scatter(sliceSegments(chain.writable, VIRTIO_NET_HDR_BYTES, frame.length), frame) !== frame.length) return 'fault';
  return 'delivered';
}

export type TransmitDrop = 'txFault' | 'txOffload' | 'txBadLength';

/** The frame's length in a transmit chain; a chain too short for its header breaks the protocol. */
export function transmitLength(queue: number, chain: DescriptorChain): number {
  if (chain.readableBytes < VIRTIO_NET_HDR_BYTES) {
    throw new VirtqueueError(`queue ${queue}: transmit buffer ${chain.head} has no room for its ${VIRTIO_NET_HDR_BYTES}-byte header`);
  }
  return chain.readableBytes - VIRTIO_NET_HDR_BYTES;
}

/**
 * Reads a transmit chain's frame (`length` from transmitLength) into the buffer `place` gives
 * for it (called once the length is known to be sane), or says why it cannot be sent as it is.
 * `header` is scratch space of VIRTIO_NET_HDR_BYTES.
 */
export function readTransmittedFrame(
  dma: DmaMemory, readable: readonly DmaSegment[], length: number, header: Uint8Array,
  place: (length: number) => { into: Uint8Array; offset: number },
): TransmitDrop | null {
  if (dma.gather(readable, header) !== VIRTIO_NET_HDR_BYTES) return 'txFault';
  // Offloads were not offered: a header asking for one describes a frame we cannot finish.
  if ((header[0] & VIRTIO_NET_HDR_F_NEEDS_CSUM) || header[1] !== VIRTIO_NET_GSO_NONE) return 'txOffload';
  if (length < NET_MIN_FRAME || length > NET_MAX_FRAME) return 'txBadLength';
  const { into, offset } = place(length);
  if (dma.gather(sliceSegments(readable, VIRTIO_NET_HDR_BYTES, length), into, offset) !== length) return 'txFault';
  return null;
}
