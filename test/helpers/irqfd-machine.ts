// A machine thread for test/kvm/irqfd.test.ts: the real Machine, plus the irqfds and
// doorbells the irqfd guest (test/guests/irqfd.asm) uses, wired as a device would wire
// them. It posts the eventfds to the test thread, which writes them as a VM host backend
// would, and counts the guest writes that reach the buses (exits) beside the doorbells.
import { parentPort, workerData } from 'node:worker_threads';
import type { IoDevice } from '../../main/vmm/devices/bus';
import type { MachineConfig } from '../../main/vmm/config';
import { Machine, type MachineToHost } from '../../main/vmm/machine/machine';
import { ByteRing, ControlBlock } from '../../main/vmm/shared/control';
import { StatsRegistry } from '../../main/vmm/shared/stats';
import { Channel, Doorbell } from '../../main/vmm/shared/channel';
import { allocateRam } from '../../main/vmm/memory/guest-memory';

export interface IrqfdMachineData {
  config: MachineConfig;
  control: SharedArrayBuffer;
  rings: SharedArrayBuffer[];
  stats: SharedArrayBuffer;
}

export const IRQFD_GUEST = {
  lineGsi: 5,
  msi: { addressLo: 0xfee00000, addressHi: 0, data: 0x50 },
  doorbellPort: 0x780,
  reportPort: 0x781,
  doorbellMmio: 0xfe000000,
  matchMmio: 0xfe000010,
  matchValue: 0xabcd,
} as const;

/** What the report port saw: doorbell counts and the writes that exited to the buses. */
export interface DoorbellReport {
  phase: number;
  /** Rings each doorbell counted since the last report. */
  rings: { port: number; mmio: number; match: number };
  /** Guest writes that exited to the bus devices at the doorbell addresses, so far. */
  exits: { port: number; mmio: number; match: number };
}

export type IrqfdMachineMessage =
  | MachineToHost
  | { type: 'wired'; lineFd: number; resampleFd: number; msiFd: number }
  | { type: 'report'; report: DoorbellReport };

async function main(): Promise<void> {
  const port = parentPort;
  if (!port) throw new Error('irqfd-machine must run as a worker');
  const data = workerData as IrqfdMachineData;
  const post = (m: IrqfdMachineMessage) => port.postMessage(m);
  const machine = new Machine(data.config, {
    control: new ControlBlock(data.control),
    rings: data.rings.map((b) => new ByteRing(b)),
    stats: new StatsRegistry(data.stats),
    // Nothing on the host side talks to this machine: channels of its own, never read.
    hostDoorbell: new Doorbell(),
    fromHost: Channel.create(),
    toHost: Channel.create(),
    ram: allocateRam(data.config.memoryBytes),
    post,
  });
  await machine.setup();

  const g = IRQFD_GUEST;
  const line = machine.interrupts.lineIrqfd(g.lineGsi, { resample: true });
  const msi = machine.interrupts.createMsiRoute();
  msi.attach(g.msi);
  const portBell = machine.doorbells.register({ space: 'pio', address: g.doorbellPort, length: 1 });
  const mmioBell = machine.doorbells.register({ space: 'mmio', address: g.doorbellMmio, length: 4 });
  const matchBell = machine.doorbells.register({ space: 'mmio', address: g.matchMmio, length: 4, datamatch: g.matchValue });

  // The device side of each doorbell address: whatever reaches it came through an exit.
  const exits = { port: 0, mmio: 0, match: 0 };
  const portDevice: IoDevice = { name: 'doorbell-port', read: () => 0xff, write: () => { exits.port++; } };
  const mmioDevice: IoDevice = {
    name: 'doorbell-mmio',
    read: () => 0,
    write: (offset) => {
      if (offset === g.matchMmio - g.doorbellMmio) exits.match++;
      else if (offset === 0) exits.mmio++;
    },
  };
  const reportDevice: IoDevice = {
    name: 'doorbell-report',
    read: () => 0xff,
    write: (_offset, _size, phase) => {
      const rings = { port: portBell.takeCount(), mmio: mmioBell.takeCount(), match: matchBell.takeCount() };
      post({ type: 'report', report: { phase, rings, exits: { ...exits } } });
      // From here on, writes to the port exit again.
      if (phase === 1) portBell.release();
    },
  };
  machine.pio.register(g.doorbellPort, 1, portDevice);
  machine.pio.register(g.reportPort, 1, reportDevice);
  machine.mmio.register(g.doorbellMmio, 0x20, mmioDevice);

  post({ type: 'wired', lineFd: line.eventFd, resampleFd: line.resampleFd as number, msiFd: msi.eventFd });
  machine.start();
}

main().catch((e: Error) => {
  parentPort?.postMessage({ type: 'ended', end: { reason: 'error', message: e.message }, stats: { exits: {}, devices: [], kicks: 0, apExits: 0 } });
});
