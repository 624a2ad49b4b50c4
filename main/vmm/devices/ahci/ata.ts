// What an AHCI port hands a SATA device, and what it gets back: the task file of a command
// FIS, the ATAPI command block, the PRD buffers as one transfer, and the outcome the HBA turns
// into FISes (PIO Setup, D2H Register, Set Device Bits) and PxTFD. Shared by the ATA disk and
// the ATAPI CD-ROM; the HBA (hba.ts) never interprets a command itself, but for NCQ framing.

/** ATA status register bits. */
export const ATA_STATUS = { ERR: 0x01, DRQ: 0x08, DSC: 0x10, DF: 0x20, DRDY: 0x40, BSY: 0x80 } as const;
/** ATA error register bits. */
export const ATA_ERROR = { ABRT: 0x04, IDNF: 0x10, UNC: 0x40 } as const;
/** A command that finished well. */
export const STATUS_OK = ATA_STATUS.DRDY | ATA_STATUS.DSC;

export const ATA_CMD = {
  NOP: 0x00,
  DATA_SET_MANAGEMENT: 0x06,
  DEVICE_RESET: 0x08,
  RECALIBRATE: 0x10,
  READ_SECTORS: 0x20,
  READ_SECTORS_EXT: 0x24,
  READ_DMA_EXT: 0x25,
  READ_MULTIPLE_EXT: 0x29,
  WRITE_SECTORS: 0x30,
  WRITE_SECTORS_EXT: 0x34,
  WRITE_DMA_EXT: 0x35,
  WRITE_MULTIPLE_EXT: 0x39,
  READ_VERIFY: 0x40,
  READ_VERIFY_EXT: 0x42,
  READ_FPDMA_QUEUED: 0x60,
  WRITE_FPDMA_QUEUED: 0x61,
  SEEK: 0x70,
  EXECUTE_DEVICE_DIAGNOSTIC: 0x90,
  INITIALIZE_DEVICE_PARAMETERS: 0x91,
  PACKET: 0xa0,
  IDENTIFY_PACKET_DEVICE: 0xa1,
  READ_MULTIPLE: 0xc4,
  WRITE_MULTIPLE: 0xc5,
  SET_MULTIPLE_MODE: 0xc6,
  READ_DMA: 0xc8,
  WRITE_DMA: 0xca,
  STANDBY_IMMEDIATE: 0xe0,
  IDLE_IMMEDIATE: 0xe1,
  STANDBY: 0xe2,
  IDLE: 0xe3,
  CHECK_POWER_MODE: 0xe5,
  SLEEP: 0xe6,
  FLUSH_CACHE: 0xe7,
  IDENTIFY_DEVICE: 0xec,
  FLUSH_CACHE_EXT: 0xea,
  SET_FEATURES: 0xef,
} as const;

/** The registers of a Register Host-to-Device FIS. */
export interface AtaTaskFile {
  command: number;
  /** Features 15:0 (the EXT byte in 15:8). */
  features: number;
  /** Sector count 15:0. */
  count: number;
  /** LBA 47:0 (LBA 27:24 of a 28-bit command are in `device` 3:0, not here). */
  lba: number;
  device: number;
}

/** The PRD buffers of a command, as a device model uses them. */
export interface AtaTransfer {
  /** Bytes the PRD table describes (what the guest gave room for). */
  readonly capacity: number;
  /** Copies `data` (at most `capacity` bytes) into the buffers; false: a buffer is not guest memory. */
  toGuest(data: Uint8Array): boolean;
  /** The first `length` bytes of the buffers (length <= capacity), or null: not guest memory. */
  fromGuest(length: number): Uint8Array | null;
  /**
   * Windows aliasing the guest memory of the first `length` bytes (zero copy), or null when
   * some buffer cannot be aliased (the caller copies with toGuest/fromGuest instead).
   */
  guestViews?(length: number, intoGuest: boolean): Uint8Array[] | null;
}

export interface AtaOutcome {
  status: number;
  error: number;
  /** PIO data-in: the HBA posts a PIO Setup FIS (with this status as E_Status) before the D2H FIS. */
  pioIn?: boolean;
  /** Bytes moved (PRDBC). */
  transferred?: number;
  /** Sector count and LBA returned in the D2H FIS (a signature, ATAPI's interrupt reason). */
  count?: number;
  lba?: number;
  /** A buffer was not guest memory: the HBA reports a host bus fatal error. */
  busError?: boolean;
}

/** A device on a SATA port. */
export interface SataDrive {
  readonly kind: 'disk' | 'cdrom';
  /** Its name: statistics group and log prefix. */
  readonly name: string;
  /** PxSIG after a reset: 0x00000101 for ATA, 0xeb140101 for ATAPI. */
  readonly signature: number;
  /** The status its signature FIS carries. */
  readonly resetStatus: number;
  /**
   * Runs one command. `cdb` holds the 16 ATAPI command bytes of a PACKET command (zeros
   * otherwise). `done` may run before execute returns or later.
   */
  execute(tf: AtaTaskFile, cdb: Uint8Array, transfer: AtaTransfer, done: (outcome: AtaOutcome) => void): void;
  /** A COMRESET or software reset reached the device. */
  reset(): void;
  close(): void;
}

export const SIGNATURE_ATA = 0x00000101;
export const SIGNATURE_ATAPI = 0xeb140101;

export function aborted(): AtaOutcome {
  return { status: STATUS_OK | ATA_STATUS.ERR, error: ATA_ERROR.ABRT };
}

/**
 * Writes an ATA string (IDENTIFY words: two characters per word, the first in the high
 * byte), space padded, into `words` from `at` for `length` words.
 */
export function putAtaString(words: Uint16Array, at: number, length: number, text: string): void {
  const padded = text.padEnd(length * 2, ' ').slice(0, length * 2);
  for (let i = 0; i < length; i++) words[at + i] = (padded.charCodeAt(2 * i) & 0x7f) << 8 | (padded.charCodeAt(2 * i + 1) & 0x7f);
}

/** The IDENTIFY data as bytes, with word 255's integrity checksum (ATA8-ACS 7.16.7.92). */
export function identifyBytes(words: Uint16Array): Uint8Array {
  words[255] = 0x00a5;
  const bytes = new Uint8Array(512);
  for (let i = 0; i < 256; i++) {
    bytes[2 * i] = words[i] & 0xff;
    bytes[2 * i + 1] = words[i] >>> 8;
  }
  let sum = 0;
  for (let i = 0; i < 511; i++) sum += bytes[i];
  bytes[511] = (256 - (sum & 0xff)) & 0xff;
  return bytes;
}

/** Whether `text` is a serial number the guest may read (20 printable ASCII characters at most). */
export function sanitizedSerial(text: string | undefined, fallback: string): string {
  const s = text ?? fallback;
  return /^[\x20-\x7e]{0,20}$/.test(s) ? s : fallback;
}
