// A NIC's VM host side: its backend, its pcap file, and the credits of shared/net-messages.ts.
// Frames from the backend go to the machine while fewer than NET_RX_WINDOW are unacknowledged
// (beyond that the backend is paused); frames from the guest go to the backend in order,
// waiting while it is busy, and their credit goes back once it took them.
// A virtio-net card's rings may be run here instead (net-dataplane.ts): frames then go
// straight between the backend and guest memory, and the channel carries none.
import fs from 'node:fs';
import type { NicConfig } from '../config';
import type { MemoryRegion } from '../memory/guest-memory';
import {
  NET_KIND, NET_MAX_FRAME, NET_RX_WINDOW, NET_TX_WINDOW, decodeNetCount, encodeNetCount, encodeNetFrame,
} from '../shared/net-messages';
import { dataPlaneBlockBytes, encodeDataPlaneFailure } from '../shared/dataplane-block';
import { NET_DATAPLANE } from '../shared/virtio-net-frames';
import { HostNetDataPlane } from './net-dataplane';
import { enhancedPacketBlock, interfaceDescriptionBlock, sectionHeaderBlock } from './pcapng';
import { type NetEndpoint, openNetBackend } from './net-backends';

export const LINKTYPE_ETHERNET = 1;

/** A pcapng file of Ethernet frames, opened (and so checked) before boot, written in order. */
export class NetPcap {
  private readonly stream: fs.WriteStream;
  frames = 0;

  constructor(readonly path: string, label: string) {
    let fd: number;
    try {
      fd = fs.openSync(path, 'w');
    } catch (e) {
      throw new Error(`${label}: cannot write the pcap file ${path}: ${(e as Error).message}`);
    }
    this.stream = fs.createWriteStream('', { fd });
    this.stream.on('error', () => {});
    this.stream.write(sectionHeaderBlock('Porthole'));
    this.stream.write(interfaceDescriptionBlock(LINKTYPE_ETHERNET, NET_MAX_FRAME, label));
  }

  write(frame: Uint8Array): void {
    this.frames++;
    const now = performance.timeOrigin + performance.now();
    this.stream.write(enhancedPacketBlock(0, Math.floor(now * 1000), frame, frame.length));
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.stream.end(() => resolve()));
  }
}

export interface HostNicIo {
  /** Sends a record to the machine (VmHost.sendToMachine); false if it was dropped. */
  sendToMachine(kind: number, payload: Uint8Array): boolean;
  log(text: string): void;
  /** Guest RAM while the VM runs; given, a virtio-net card gets a data plane that runs its rings in it. */
  ram?: () => readonly MemoryRegion[] | null;
  /** The VM's statistics counters (the data plane counts into the card's). */
  stats?: Uint32Array | null;
}

export class HostNic {
  private endpoint: NetEndpoint | null = null;
  private pcap: NetPcap | null = null;
  /** Frames sent to the machine and not acknowledged yet. */
  private inFlight = 0;
  private paused = false;
  /** The data plane's own reason to pause the backend (its frames wait for guest buffers). */
  private dataPlanePaused = false;
  /** Guest frames for the backend, and whether each came through the channel (its credit goes back). */
  private readonly toBackend: { frame: Uint8Array; fromChannel: boolean }[] = [];
  /** A virtio-net card's rings when the machine hands them here; null for other cards. */
  dataPlane: HostNetDataPlane | null = null;
  /** Frames lost on the way to the machine (the channel's backlog refused them). */
  dropsToMachine = 0;

  private constructor(readonly index: number, readonly label: string, private readonly io: HostNicIo) {}

  static async open(index: number, label: string, config: NicConfig, io: HostNicIo): Promise<HostNic> {
    const nic = new HostNic(index, label, io);
    if (config.pcap !== undefined) nic.pcap = new NetPcap(config.pcap, label);
    try {
      nic.endpoint = await openNetBackend(config.backend, label, {
        onFrame: (frame) => nic.fromBackend(frame),
        onWritable: () => nic.pump(),
        onLog: (text) => io.log(`${label}: ${text}`),
      });
    } catch (e) {
      await nic.pcap?.close();
      throw e;
    }
    if (config.model === 'virtio' && io.ram) nic.dataPlane = nic.openDataPlane(io.ram);
    return nic;
  }

  get description(): string {
    return this.endpoint?.description ?? 'none';
  }

  private openDataPlane(ram: () => readonly MemoryRegion[] | null): HostNetDataPlane {
    return new HostNetDataPlane(new SharedArrayBuffer(dataPlaneBlockBytes(NET_DATAPLANE)), ram, this.io.stats ?? null, {
      transmit: (frame) => {
        this.pcap?.write(frame);
        this.toBackend.push({ frame, fromChannel: false });
        if (this.toBackend.length === 1) this.pump();
      },
      // The data plane takes guest frames while the backend's queue is within the channel's window.
      canTransmit: () => this.toBackend.length < NET_TX_WINDOW,
      pauseReceive: (paused) => {
        this.dataPlanePaused = paused;
        this.updatePause();
      },
      failed: (epoch, why) => {
        if (!this.io.sendToMachine(NET_KIND.DATAPLANE_FAILED, encodeDataPlaneFailure(this.index, epoch, why))) {
          this.io.log(`${this.label}: the card's error could not reach the machine: ${why}`);
        }
      },
      log: (text) => this.io.log(`${this.label}: ${text}`),
    });
  }

  private fromBackend(frame: Uint8Array): void {
    this.pcap?.write(frame);
    if (this.dataPlane?.receive(frame)) return;
    if (this.io.sendToMachine(NET_KIND.FRAME, encodeNetFrame(this.index, frame))) this.inFlight++;
    else this.dropsToMachine++;
    this.updatePause();
  }

  /** A record from the machine's NIC. */
  onMachineRecord(kind: number, body: Uint8Array): void {
    switch (kind) {
      case NET_KIND.HELLO:
        // A new machine (reset): what the old one never acknowledged is gone.
        this.inFlight = 0;
        this.updatePause();
        break;
      case NET_KIND.RX_CREDIT:
        this.inFlight = Math.max(0, this.inFlight - decodeNetCount(body));
        this.updatePause();
        break;
      case NET_KIND.TX_FRAME:
        this.pcap?.write(body);
        this.toBackend.push({ frame: body, fromChannel: true });
        if (this.toBackend.length === 1) this.pump();
        break;
      default:
        break;
    }
  }

  /** The backend reads while the channel's window and the data plane both have room. */
  private updatePause(): void {
    const pause = this.inFlight >= NET_RX_WINDOW || this.dataPlanePaused;
    if (pause === this.paused) return;
    this.paused = pause;
    if (pause) this.endpoint?.pauseReceive();
    else this.endpoint?.resumeReceive();
  }

  /** Hands waiting guest frames to the backend; returns their credit. */
  private pump(): void {
    let taken = 0;
    let moved = false;
    while (this.toBackend.length > 0) {
      const result = this.endpoint ? this.endpoint.send(this.toBackend[0].frame) : 'dropped';
      if (result === 'busy') break;
      if (this.toBackend.shift()?.fromChannel) taken++;
      moved = true;
    }
    if (taken > 0) this.io.sendToMachine(NET_KIND.TX_CREDIT, encodeNetCount(this.index, taken));
    if (moved) this.dataPlane?.transmitReady();
  }

  /** The machine thread ended (a reset or the end): a data plane stops with it. */
  machineEnded(): void {
    this.dataPlane?.machineEnded();
  }

  /** Drops the backend counts as lost (the pcap shows every frame either way). */
  get drops(): number {
    return (this.endpoint?.drops ?? 0) + this.dropsToMachine;
  }

  async close(): Promise<void> {
    await this.dataPlane?.close();
    this.endpoint?.close();
    this.endpoint = null;
    if (this.drops > 0) this.io.log(`${this.label}: ${this.drops} frames were dropped on the host side`);
    await this.pcap?.close();
  }
}
