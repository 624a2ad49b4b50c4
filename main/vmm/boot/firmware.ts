// Booting through firmware (SeaBIOS): the image is mapped read-only just below 4 GiB,
// its last 128 KiB is copied into RAM at 0xe0000-0xfffff (where the reset vector's far
// jump lands), and fw_cfg tells it about RAM, CPUs, the memory map and option ROMs.
// The BSP starts at the reset vector (KVM's default vCPU state); APs wait for SIPI.
import { constants as fsConstants } from 'node:fs';
import { access, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { KvmVcpu } from '../../../native';
import { ConfigError, type MachineConfig } from '../config';
import { FW_CFG, type FwCfg, u16, u32, u64 } from '../devices/fw-cfg';
import { buildE820, E820_RAM, encodeE820 } from '../platform/e820';
import { COM_PORTS } from '../platform/layout';
import type { BootTarget } from './boot-target';
import { allocateRom, FOUR_GIB, type GuestMemory } from '../memory/guest-memory';

/** Where Debian's seabios package puts the image (256 KiB first: it has more features). */
export const DEFAULT_FIRMWARE_PATHS = ['/usr/share/seabios/bios-256k.bin', '/usr/share/seabios/bios.bin'];
/** The ISA BIOS window: the top 128 KiB of the first MiB. */
const ISA_BIOS_END = 0x100000;
const ISA_BIOS_MAX = 128 * 1024;
const MIN_FIRMWARE_SIZE = 64 * 1024;
/** Below 4 GiB - 16 MiB are the LAPIC, IOAPIC and KVM's private pages. */
const MAX_FIRMWARE_SIZE = 16 * 1024 * 1024;
/** Option ROMs must fit the 0xc0000-0xeffff expansion area. */
const MAX_OPTION_ROM_SIZE = 192 * 1024;
/** SeaBIOS's own default: wait 60 s after "No bootable device", then reboot. */
export const BOOT_FAIL_WAIT_MS = 60_000;

/** The firmware image to use: the configured path, or Debian's SeaBIOS. */
export async function findFirmware(config: MachineConfig): Promise<string> {
  const configured = (config.boot.kind === 'firmware' ? config.boot.path : undefined) ?? config.firmwarePath;
  const candidates = configured ? [configured] : DEFAULT_FIRMWARE_PATHS;
  for (const candidate of candidates) {
    try {
      await access(candidate, fsConstants.R_OK);
      return candidate;
    } catch {
      // try the next one
    }
  }
  if (configured) throw new ConfigError(`firmware not found: ${configured} does not exist or cannot be read`);
  throw new ConfigError(`firmware not found: looked for ${candidates.join(' and ')}; install the seabios package`);
}

async function readUserFile(file: string, what: string): Promise<Uint8Array> {
  try {
    return new Uint8Array(await readFile(file));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const reason = code === 'ENOENT' ? 'does not exist' : code === 'EACCES' ? 'cannot be read (permission denied)' : code === 'EISDIR' ? 'is a directory' : (e as Error).message;
    throw new ConfigError(`${what} ${file} ${reason}`);
  }
}

export async function bootFirmware(machine: BootTarget, _vcpus: KvmVcpu[]): Promise<void> {
  const file = await findFirmware(machine.config);
  const image = await readUserFile(file, 'firmware');
  if (image.length < MIN_FIRMWARE_SIZE || image.length > MAX_FIRMWARE_SIZE || image.length % 0x1000 !== 0) {
    throw new ConfigError(`firmware ${file} is ${image.length} bytes; a BIOS image is a multiple of 4 KiB from 64 KiB to 16 MiB`);
  }
  const optionRoms = await loadOptionRoms(machine.config.optionRoms);

  machine.addRegion(allocateRom(FOUR_GIB - image.length, image, 'firmware'));
  // The ISA BIOS window holds a RAM copy of the image's top: the reset vector jumps to
  // F000:E05B there, and SeaBIOS finds itself already "shadowed" (see pci/i440fx.ts).
  const isaSize = Math.min(image.length, ISA_BIOS_MAX);
  machine.memory.write(ISA_BIOS_END - isaSize, image.subarray(image.length - isaSize));


  configureFirmware(machine.devices.fwCfg, {
    config: machine.config,
    memory: machine.memory,
    optionRoms,
  });
}

export interface OptionRom {
  name: string;
  data: Uint8Array;
}

/** Reads and checks the configured option ROMs; each becomes fw_cfg "genroms/<file name>". */
export async function loadOptionRoms(paths: string[]): Promise<OptionRom[]> {
  const roms: OptionRom[] = [];
  for (const p of paths) {
    const data = await readUserFile(p, 'option ROM');
    const name = path.basename(p);
    if (data.length < 512 || data[0] !== 0x55 || data[1] !== 0xaa) {
      throw new ConfigError(`option ROM ${p} is not a PC option ROM (it must start with the bytes 55 AA and be at least 512 bytes)`);
    }
    if (data.length > MAX_OPTION_ROM_SIZE) throw new ConfigError(`option ROM ${p} is ${data.length} bytes; at most ${MAX_OPTION_ROM_SIZE} fit`);
    if (Buffer.byteLength(`genroms/${name}`) > 55) throw new ConfigError(`option ROM file name "${name}" is too long (at most 47 bytes)`);
    if (roms.some((r) => r.name === name)) throw new ConfigError(`two option ROMs are named "${name}"; rename one`);
    roms.push({ name, data });
  }
  return roms;
}

/** Fills fw_cfg with what SeaBIOS reads (numeric keys and the files it looks for). */
export function configureFirmware(fwCfg: FwCfg, opts: { config: MachineConfig; memory: GuestMemory; optionRoms: OptionRom[] }): void {
  const { config, memory } = opts;
  fwCfg.setItem(FW_CFG.UUID, new Uint8Array(16));
  fwCfg.setItem(FW_CFG.RAM_SIZE, u64(config.memoryBytes));
  // Non-zero would make SeaBIOS put its console on COM1 by itself; etc/sercon-port below
  // decides that instead, from whether COM1 is connected.
  fwCfg.setItem(FW_CFG.NOGRAPHIC, u16(0));
  fwCfg.setItem(FW_CFG.NB_CPUS, u16(config.cpus));
  fwCfg.setItem(FW_CFG.MAX_CPUS, u16(config.cpus));
  // NUMA: no nodes; a zero node number per possible CPU.
  fwCfg.setItem(FW_CFG.NUMA, new Uint8Array(8 * (1 + config.cpus)));
  // SeaBIOS reads key 0x0e as "etc/show-boot-menu": 0 skips the menu and its wait.
  fwCfg.setItem(FW_CFG.BOOT_MENU, u16(0));
  for (const key of [FW_CFG.KERNEL_ADDR, FW_CFG.KERNEL_SIZE, FW_CFG.INITRD_ADDR, FW_CFG.INITRD_SIZE, FW_CFG.CMDLINE_ADDR, FW_CFG.CMDLINE_SIZE, FW_CFG.SETUP_ADDR, FW_CFG.SETUP_SIZE]) {
    fwCfg.setItem(key, u32(0));
  }
  for (const key of [FW_CFG.KERNEL_DATA, FW_CFG.INITRD_DATA, FW_CFG.CMDLINE_DATA, FW_CFG.SETUP_DATA]) fwCfg.setItem(key, new Uint8Array(0));
  fwCfg.setItem(FW_CFG.ACPI_TABLES, u16(0));
  fwCfg.setItem(FW_CFG.SMBIOS_ENTRIES, u16(0));
  fwCfg.setItem(FW_CFG.IRQ0_OVERRIDE, u32(1));
  fwCfg.setItem(FW_CFG.E820_TABLE, u32(0));

  // RAM entries and reservations above 1 MiB; below 1 MiB the firmware keeps its own map
  // (QEMU hands over the same kind of table).
  const e820 = buildE820(memory).filter((e) => e.type === E820_RAM || e.addr >= ISA_BIOS_END);
  fwCfg.addFile('etc/e820', encodeE820(e820));
  fwCfg.addFile('bootorder', new Uint8Array(0));
  fwCfg.addFile('etc/boot-fail-wait', u32(BOOT_FAIL_WAIT_MS));
  // SeaBIOS's serial console: BIOS screen output on COM1 when COM1 goes somewhere.
  if (config.serial[0] && config.serial[0].kind !== 'none') fwCfg.addFile('etc/sercon-port', u16(COM_PORTS[0].base));
  for (const rom of opts.optionRoms) fwCfg.addFile(`genroms/${rom.name}`, rom.data);
}
