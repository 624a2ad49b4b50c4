// What the boot loaders need of the machine they load: its configuration, memory, devices
// and a way to add ROM windows. Machine implements it; the loaders never import Machine.
import type { MachineConfig } from '../config';
import type { GuestMemory, MemoryRegion } from '../memory/guest-memory';
import type { Platform } from '../platform/platform';

export interface BootTarget {
  readonly config: MachineConfig;
  readonly memory: GuestMemory;
  readonly cpuCount: number;
  readonly devices: Platform;
  /** Maps a ROM window (firmware) into the guest. */
  addRegion(region: MemoryRegion): void;
  log(text: string): void;
}
