// virtio-net (virtio 1.x §5.1) over the modern PCI transport: one receive and one transmit
// queue, a MAC address, a link status and an MTU. Offloads are not offered: no backend here
// passes a virtio-net header on (a TAP without IFF_VNET_HDR, a socket, a pcap), so the guest
// computes checksums and segments itself, and a header asking for either is dropped, counted.
//
// Frames come and go through a NicLink (devices/net/nic-link.ts) to the VM host thread. With
// VERSION_1 every buffer starts with the 12-byte virtio_net_hdr_v1 (§5.1.6).
// Once the driver is running with MSI-X, the card lends both rings to the VM host thread
// (virtio-pci.ts, host/net-dataplane.ts), and runs them itself whenever they are back.
// What the guest can get wrong:
//  - a receive buffer with a device-readable part, or a transmit buffer too short for its
//    header: the device error state (DEVICE_NEEDS_RESET), as it breaks the protocol;
//  - a receive buffer too small for the frame, a buffer outside guest memory, a frame shorter
//    than an Ethernet header or longer than NET_MAX_FRAME, a header asking for offloads: that
//    frame is dropped and counted; the buffer goes back used (0 bytes written).
import { type Counter, counter, type DeviceContext } from '../device';
import type { DoorbellRegistry } from '../interrupts';
import { NET_FRAME_OFFSET } from '../../shared/net-messages';
import type { NicLink } from '../net/nic-link';
import { DataPlaneHandoff } from './dataplane-handoff';
import {
  NET_DATAPLANE, NET_DATAPLANE_COUNTERS, readTransmittedFrame, receiveHeader, transmitLength, VIRTIO_NET_HDR_BYTES, writeReceivedFrame,
} from '../../shared/virtio-net-frames';
import { type LendTerms, VirtioPciDevice } from './virtio-pci';
import type { SplitVirtqueue } from '../../shared/virtqueue';

export { VIRTIO_NET_GSO_NONE, VIRTIO_NET_HDR_BYTES, VIRTIO_NET_HDR_F_NEEDS_CSUM } from '../../shared/virtio-net-frames';

export const VIRTIO_NET_DEVICE_TYPE = 1;
export const VIRTIO_NET_F = {
  CSUM: 0, GUEST_CSUM: 1, CTRL_GUEST_OFFLOADS: 2, MTU: 3, MAC: 5, GUEST_TSO4: 7, HOST_TSO4: 11,
  MRG_RXBUF: 15, STATUS: 16, CTRL_VQ: 17, MQ: 22,
} as const;
export const VIRTIO_NET_S_LINK_UP = 1;
export const VIRTIO_NET_CONFIG_SIZE = 12;
export const VIRTIO_NET_RX = 0;
export const VIRTIO_NET_TX = 1;
export const DEFAULT_MTU = 1500;

export interface VirtioNetOptions {
  name: string;
  /** Six bytes. */
  mac: Uint8Array;
  /** The backend's end; null: no backend (the link is down, frames sent are counted and dropped). */
  link: NicLink | null;
  mtu?: number;
  router?: DeviceContext['interrupts'] | null;
  statistics?: DeviceContext['statistics'] | null;
  log?: (text: string) => void;
  /** The VM host's data plane block for this card and the doorbells to reach it; absent: rings stay here. */
  dataPlane?: { buffer: SharedArrayBuffer; doorbells: DoorbellRegistry } | null;
}

export interface NicCounters {
  rxPackets: Counter;
  rxBytes: Counter;
  txPackets: Counter;
  txBytes: Counter;
  rxDropped: Counter;
  txDropped: Counter;
}

export function nicCounters(stats: DeviceContext['statistics'], name: string): NicCounters {
  return {
    rxPackets: counter(stats, name, 'rx-packets'),
    rxBytes: counter(stats, name, 'rx-bytes', 'bytes'),
    txPackets: counter(stats, name, 'tx-packets'),
    txBytes: counter(stats, name, 'tx-bytes', 'bytes'),
    rxDropped: counter(stats, name, 'rx-dropped'),
    txDropped: counter(stats, name, 'tx-dropped'),
  };
}

export class VirtioNet extends VirtioPciDevice {
  private readonly configBytes = new Uint8Array(VIRTIO_NET_CONFIG_SIZE);
  private readonly header = new Uint8Array(VIRTIO_NET_HDR_BYTES);
  private readonly rxHeader = receiveHeader();
  readonly counters: NicCounters | null;
  readonly link: NicLink | null;
  /** Drops by reason, also when no registry is given (tests read them). */
  readonly drops = { rxNoRoom: 0, rxFault: 0, rxNotRunning: 0, txBadLength: 0, txOffload: 0, txFault: 0, txNoLink: 0 };

  constructor(options: VirtioNetOptions) {
    const mtu = options.mtu ?? DEFAULT_MTU;
    if (options.mac.length !== 6) throw new Error(`${options.name}: a MAC address has 6 bytes`);
    const features = (1 << VIRTIO_NET_F.MAC) | (1 << VIRTIO_NET_F.STATUS) | (1 << VIRTIO_NET_F.MTU);
    // Class 02/00 (Ethernet controller).
    super(options.name, {
      deviceType: VIRTIO_NET_DEVICE_TYPE, classCode: 0x020000, queues: 2, deviceFeatures: features,
      configSize: VIRTIO_NET_CONFIG_SIZE, router: options.router, statistics: options.statistics, log: options.log,
    });
    this.link = options.link;
    this.configBytes.set(options.mac, 0);
    const view = new DataView(this.configBytes.buffer);
    view.setUint16(6, options.link ? VIRTIO_NET_S_LINK_UP : 0, true);
    view.setUint16(8, 1, true); // max_virtqueue_pairs
    view.setUint16(10, mtu, true);
    this.counters = options.statistics ? nicCounters(options.statistics, options.name) : null;
    if (this.link) {
      this.link.onReceive = () => this.receiveWaiting();
      this.link.onTransmitReady = () => {
        const tx = this.queues[VIRTIO_NET_TX];
        if (this.running && tx.enabled && !this.ringsLent) this.batch(tx, () => this.transmit(tx));
      };
    }
    const plane = options.dataPlane;
    if (plane && this.link && options.router) {
      this.dataPlane = new DataPlaneHandoff(NET_DATAPLANE, plane.buffer, plane.doorbells, 'VM host thread', (text) => options.log?.(`${options.name}: ${text}`));
    }
  }

  protected override lendTerms(): LendTerms {
    // Frames the channel brought before the hand-over have no ring to go to now.
    this.dropWaiting();
    return { counters: Object.fromEntries(NET_DATAPLANE_COUNTERS.map((name) => [name, this.counters?.[name].slot ?? -1])) };
  }

  protected readDeviceConfig(offset: number, size: number): number {
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + this.configBytes[offset + i];
    return v;
  }

  protected processQueue(q: SplitVirtqueue): void {
    if (q.index === VIRTIO_NET_RX) {
      this.fillReceiveBuffers(q);
      this.link?.flush();
    } else this.transmit(q);
  }

  protected override deviceReset(): void {
    this.dropWaiting();
  }

  /** Frames arrived from the backend: into the guest's buffers if it has any, else they wait. */
  private receiveWaiting(): void {
    const rx = this.queues[VIRTIO_NET_RX];
    if (!this.running || !rx.enabled || this.ringsLent) {
      this.dropWaiting();
      return;
    }
    this.batch(rx, () => this.fillReceiveBuffers(rx));
  }

  private dropWaiting(): void {
    const n = this.link?.discardAll() ?? 0;
    this.drops.rxNotRunning += n;
    this.counters?.rxDropped.add(n);
    this.link?.flush();
  }

  private fillReceiveBuffers(q: SplitVirtqueue): void {
    const link = this.link;
    if (!link) return;
    while (link.peek() !== undefined) {
      const chain = q.pop(this.dma);
      if (chain === null) return; // no buffer: the frames wait for the guest's next notify
      const frame = link.take() as Uint8Array;
      const result = writeReceivedFrame(this.dma, q.index, chain, this.rxHeader, frame);
      if (result === 'delivered') {
        this.counters?.rxPackets.add();
        this.counters?.rxBytes.add(frame.length);
      } else {
        this.drops[result === 'no-room' ? 'rxNoRoom' : 'rxFault']++;
        this.counters?.rxDropped.add();
      }
      this.complete(q, chain.head, result === 'delivered' ? VIRTIO_NET_HDR_BYTES + frame.length : 0, this.generation);
    }
  }

  private transmit(q: SplitVirtqueue): void {
    const link = this.link;
    while (!link || link.canTransmit) {
      const chain = q.pop(this.dma);
      if (chain === null) return;
      const length = transmitLength(q.index, chain);
      const record = this.readFrame(chain.readable, length, link);
      if (record) {
        if (link) {
          link.send(record);
          this.counters?.txPackets.add();
          this.counters?.txBytes.add(length);
        } else {
          this.drops.txNoLink++;
          this.counters?.txDropped.add();
        }
      } else this.counters?.txDropped.add();
      this.complete(q, chain.head, 0, this.generation);
    }
  }

  /**
   * The frame after the header, read into the link's record for it (no link: a plain copy), or
   * null (counted in `drops`) if it cannot be sent as it is.
   */
  private readFrame(readable: readonly { address: number; length: number }[], length: number, link: NicLink | null): Uint8Array | null {
    let record: Uint8Array | null = null;
    const drop = readTransmittedFrame(this.dma, readable, length, this.header, (n) => {
      record = link ? link.transmitRecord(n) : new Uint8Array(n);
      return { into: record, offset: link ? NET_FRAME_OFFSET : 0 };
    });
    if (drop !== null) {
      this.drops[drop]++;
      return null;
    }
    return record;
  }

  close(): void {
    this.reclaimQueues();
    this.link?.close();
  }
}
