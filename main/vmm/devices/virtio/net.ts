// virtio-net (virtio 1.x §5.1) over the modern PCI transport: one receive and one transmit
// queue, a MAC address, a link status and an MTU. Offloads are not offered: no backend here
// passes a virtio-net header on (a TAP without IFF_VNET_HDR, a socket, a pcap), so the guest
// computes checksums and segments itself, and a header asking for either is dropped, counted.
//
// Frames come and go through a NicLink (devices/net/nic-link.ts) to the VM host thread. With
// VERSION_1 every buffer starts with the 12-byte virtio_net_hdr_v1 (§5.1.6).
// Once the driver is running with MSI-X, the card lends both rings to the VM host thread
// (net-handoff.ts, host/net-dataplane.ts): notifies become ioeventfds and interrupts irqfds,
// so a queue kick never exits to JavaScript. The machine takes them back for a reset, the
// error state, a BAR move, bus mastering off or MSI-X off, and runs them itself meanwhile.
// What the guest can get wrong:
//  - a receive buffer with a device-readable part, or a transmit buffer too short for its
//    header: the device error state (DEVICE_NEEDS_RESET), as it breaks the protocol;
//  - a receive buffer too small for the frame, a buffer outside guest memory, a frame shorter
//    than an Ethernet header or longer than NET_MAX_FRAME, a header asking for offloads: that
//    frame is dropped and counted; the buffer goes back used (0 bytes written).
import { type Counter, counter, type DeviceContext } from '../device';
import type { DoorbellRegistry } from '../interrupts';
import { PCI_COMMAND, type ConfigWriteResult } from '../pci/pci-device';
import { NET_FRAME_OFFSET } from '../../shared/net-messages';
import { DATAPLANE_COUNTERS, DATAPLANE_FLAG, type DataPlaneCounter } from '../../shared/net-dataplane';
import type { NicLink } from '../net/nic-link';
import { DataPlaneHandoff } from './net-handoff';
import {
  readTransmittedFrame, receiveHeader, transmitLength, VIRTIO_NET_HDR_BYTES, writeReceivedFrame,
} from '../../shared/virtio-net-frames';
import { VIRTIO_BAR_LAYOUT, VIRTIO_F, VirtioPciDevice } from './virtio-pci';
import { type SplitVirtqueue, VIRTIO_NO_VECTOR } from '../../shared/virtqueue';

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
  private readonly handoff: DataPlaneHandoff | null;
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
        if (this.running && tx.enabled && !this.handoff?.active) this.batch(tx, () => this.transmit(tx));
      };
    }
    const plane = options.dataPlane;
    this.handoff = plane && this.link && options.router
      ? new DataPlaneHandoff(plane.buffer, plane.doorbells, (text) => options.log?.(`${options.name}: ${text}`))
      : null;
  }

  /** Whether the VM host runs the rings now. */
  get ringsLent(): boolean {
    return this.handoff?.active ?? false;
  }

  override notify(index: number): void {
    if (this.handoff?.active) this.handoff.forwardNotify(index);
    else super.notify(index);
  }

  /** The host found a broken ring in run `epoch`: the card's error state (if that run is still on). */
  dataPlaneFailed(epoch: number, why: string): void {
    if (this.handoff?.active && this.handoff.runEpoch === epoch) this.fail(why);
  }

  protected override statusWritten(): void {
    this.lendQueues();
  }

  protected override reclaimQueues(): void {
    this.handoff?.stop();
  }

  protected override barMoved(index: number, address: number | null, previous: number | null): void {
    super.barMoved(index, address, previous);
    if (index !== VIRTIO_BAR_LAYOUT.bar) return;
    this.reclaimQueues(); // the doorbells are at the old address
    this.lendQueues();
  }

  protected override configWritten(offset: number, size: number, changes: ConfigWriteResult): void {
    super.configWritten(offset, size, changes);
    // Bus mastering or MSI-X turned off: the host must not touch guest memory or signal.
    if (this.handoff?.active && (!(this.command & PCI_COMMAND.MASTER) || !this.msix.enabled)) this.reclaimQueues();
    else this.lendQueues();
  }

  /** Lends the rings to the VM host when the driver runs them with MSI-X and DMA on. */
  private lendQueues(): void {
    const handoff = this.handoff;
    if (!handoff || handoff.active || !this.running || !this.msix.enabled || !(this.command & PCI_COMMAND.MASTER)) return;
    const bar = this.barAddress(VIRTIO_BAR_LAYOUT.bar);
    const queues = [this.queues[VIRTIO_NET_RX], this.queues[VIRTIO_NET_TX]];
    if (bar === null || queues.some((q) => !q.enabled || q.msixVector === VIRTIO_NO_VECTOR)) return;
    let irqFds: number[];
    try {
      irqFds = queues.map((q) => this.msix.vectorEventFd(q.msixVector));
    } catch {
      return; // no irqfd route for a vector (KVM's table was full): the rings stay here
    }
    // Frames the channel brought before the hand-over have no ring to go to now.
    this.dropWaiting();
    const counters = Object.fromEntries(DATAPLANE_COUNTERS.map((name) => [name, this.counters?.[name].slot ?? -1])) as Record<DataPlaneCounter, number>;
    handoff.start(queues.map((queue, i) => ({
      queue, irqFd: irqFds[i], irqCounter: this.msix.vectorCounter(queue.msixVector),
      notifyAddress: bar + VIRTIO_BAR_LAYOUT.notify + VIRTIO_BAR_LAYOUT.notifyMultiplier * queue.index,
    })), (this.negotiated(VIRTIO_F.EVENT_IDX) ? DATAPLANE_FLAG.EVENT_IDX : 0) | (this.negotiated(VIRTIO_F.INDIRECT_DESC) ? DATAPLANE_FLAG.INDIRECT : 0), counters);
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
    if (!this.running || !rx.enabled || this.handoff?.active) {
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
