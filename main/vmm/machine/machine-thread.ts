// Entry point of the machine thread (a worker of the VM process).
import { parentPort, workerData } from 'node:worker_threads';
import type { MachineConfig } from '../config';
import { prefetchLinuxFiles } from '../boot/linux';
import { Machine, type MachineToHost } from './machine';
import { ByteRing, ControlBlock, epochMs } from '../shared/control';
import { Channel, CHANNEL_TARGET, Doorbell } from '../shared/channel';
import { type CounterSpec, StatsRegistry } from '../shared/stats';
import type { MemoryRegion } from '../memory/guest-memory';
import { AWAITING_LAUNCH, type MachineThreadAwaitingLaunch } from '../host/machine-prewarm';

// Control messages. Host I/O (serial input, backend completions) comes over the channel.
export type HostToMachine =
  | { type: 'resume' }
  | { type: 'stats' }
  | { type: 'dump-vcpus' };

export interface MachineThreadData {
  config: MachineConfig;
  control: SharedArrayBuffer;
  rings: SharedArrayBuffer[];
  /** The VM's statistics registry and the counters earlier launches registered. */
  stats: { buffer: SharedArrayBuffer; schema: CounterSpec[] };
  /** The VM's host channel pair and the VM host's doorbell (made once per VM, kept across resets). */
  hostLink: { doorbell: SharedArrayBuffer; toMachine: SharedArrayBuffer; toHost: SharedArrayBuffer };
  /** Guest RAM, made once per VM by the VM host and kept across resets. */
  ram: MemoryRegion[];
  /** Per NIC, the VM host's data plane block (virtio-net cards with a backend), else null. */
  netDataPlanes?: (SharedArrayBuffer | null)[];
  /** Per disk of the config, the disk I/O thread's data plane block (virtio disks), else null. */
  diskDataPlanes?: (SharedArrayBuffer | null)[];
}

// Stamped once this thread's modules (koffi and the device models) are loaded.
const threadReadyAt = epochMs();
const port = parentPort;
if (!port) throw new Error('machine-thread must run as a worker');
const post = (m: MachineToHost) => port.postMessage(m);

function statsRegistryOf(stats: MachineThreadData['stats']): StatsRegistry {
  const registry = new StatsRegistry(stats.buffer);
  registry.adopt(stats.schema);
  return registry;
}

/** The thread's data: workerData, or the first message for a thread started ahead (machine-prewarm.ts). */
function launchData(): Promise<MachineThreadData> {
  if (!(workerData as MachineThreadAwaitingLaunch | null)?.awaitLaunch) return Promise.resolve(workerData as MachineThreadData);
  // Loaded: from here on the process may end this thread safely.
  port!.postMessage({ type: AWAITING_LAUNCH });
  return new Promise((resolve) => port!.once('message', (m: { type: 'launch'; data: MachineThreadData }) => resolve(m.data)));
}

async function main(): Promise<void> {
  const data = await launchData();
  const configAt = epochMs();
  // The kernel and initrd are read while KVM creates the VM, its RAM and vCPUs.
  prefetchLinuxFiles(data.config.boot);
  const hostDoorbell = new Doorbell(data.hostLink.doorbell);
  const toHost = new Channel(data.hostLink.toHost);
  toHost.onWake = () => hostDoorbell.ring();
  const machine = new Machine(data.config, {
    control: new ControlBlock(data.control),
    rings: data.rings.map((b) => new ByteRing(b, hostDoorbell)),
    stats: statsRegistryOf(data.stats),
    hostDoorbell,
    fromHost: new Channel(data.hostLink.toMachine),
    toHost,
    ram: data.ram,
    netDataPlanes: data.netDataPlanes ?? [],
    diskDataPlanes: data.diskDataPlanes ?? [],
    post,
  });
  machine.timings.unshift({ label: 'machine-thread', epochMs: threadReadyAt }, { label: 'machine-config', epochMs: configAt });
  await machine.setup();
  port!.on('message', (m: HostToMachine) => {
    switch (m.type) {
      case 'resume':
        machine.resume();
        break;
      case 'stats':
        post({ type: 'stats', stats: machine.stats() });
        break;
      case 'dump-vcpus':
        machine.dumpVcpus();
        break;
    }
  });
  machine.start();
}

main().catch((e: Error) => {
  post({ type: 'ended', end: { reason: 'error', message: e.message }, stats: { exits: {}, devices: [], kicks: 0, apExits: 0 } });
});
