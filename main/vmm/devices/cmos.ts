// The MC146818-compatible RTC and CMOS NVRAM at ports 0x70 (index, bit 7 masks NMI) and
// 0x71 (data). The clock is computed from the host clock on access (the machine thread
// has no timers while a vCPU runs), as is register C's flags; IRQ 8 is not raised.
import type { DeviceFactory, IoDevice } from './device';

export const CMOS_PORT = 0x70;

export const RTC = {
  SECONDS: 0x00,
  SECONDS_ALARM: 0x01,
  MINUTES: 0x02,
  MINUTES_ALARM: 0x03,
  HOURS: 0x04,
  HOURS_ALARM: 0x05,
  DAY_OF_WEEK: 0x06,
  DAY_OF_MONTH: 0x07,
  MONTH: 0x08,
  YEAR: 0x09,
  REG_A: 0x0a,
  REG_B: 0x0b,
  REG_C: 0x0c,
  REG_D: 0x0d,
  CENTURY: 0x32,
} as const;

export const REG_A_UIP = 0x80;
export const REG_B = { SET: 0x80, PIE: 0x40, AIE: 0x20, UIE: 0x10, SQWE: 0x08, DM_BINARY: 0x04, HOURS_24: 0x02, DSE: 0x01 } as const;
export const REG_C = { IRQF: 0x80, PF: 0x40, AF: 0x20, UF: 0x10 } as const;
export const REG_D_VRT = 0x80;

/** How long before each update UIP reads as set (MC146818: 244 µs). */
const UIP_WINDOW_MS = 0.244;
const TIME_REGISTERS: readonly number[] = [RTC.SECONDS, RTC.MINUTES, RTC.HOURS, RTC.DAY_OF_WEEK, RTC.DAY_OF_MONTH, RTC.MONTH, RTC.YEAR, RTC.CENTURY];
const KiB = 1024;
const MiB = 1024 * KiB;

export interface CmosMemoryLayout {
  /** RAM below 4 GiB, bytes. */
  lowRamBytes: number;
  /** RAM above 4 GiB, bytes. */
  highRamBytes: number;
  cpus: number;
}

export class Cmos implements IoDevice {
  readonly name = 'cmos';
  readonly nvram = new Uint8Array(128);
  private index = 0;
  /** Bit 7 of the last index write: NMIs masked (there is no NMI source yet; kept for the guest). */
  nmiMasked = false;
  /** Guest time minus host time, in ms. */
  private offsetMs = 0;
  /** Guest time at the last read of register C (for the lazily computed flags). */
  private lastFlagCheckMs: number;

  /** `clock` returns the host wall-clock time in ms (fractional allowed). */
  constructor(private readonly clock: () => number = defaultClock) {
    this.nvram[RTC.REG_A] = 0x26; // 32.768 kHz time base, 1024 Hz periodic rate
    this.nvram[RTC.REG_B] = REG_B.HOURS_24;
    this.nvram[RTC.REG_D] = REG_D_VRT;
    this.lastFlagCheckMs = this.guestNow();
  }

  /**
   * SeaBIOS's boot order (as QEMU's -boot writes it): 0x3d holds the first two choices, 0x38's
   * high nibble the third (1 floppy, 2 hard disk, 3 CD-ROM); 0x38 bit 0 skips the floppy
   * signature check. 'disk' is QEMU's default "cad": hard disk, floppy, CD-ROM.
   */
  setBootOrder(first: 'disk' | 'cdrom'): void {
    if (first === 'cdrom') {
      this.nvram[0x3d] = 0x23; // CD-ROM, then hard disk
      this.nvram[0x38] = 0x11; // then floppy
    } else {
      this.nvram[0x3d] = 0x12;
      this.nvram[0x38] = 0x31;
    }
  }

  /** Writes the memory-size and CPU-count bytes firmware reads (as QEMU's pc_cmos_init). */
  setMemoryLayout(layout: CmosMemoryLayout): void {
    const low = layout.lowRamBytes;
    const base = Math.min(Math.floor(low / KiB), 640);
    this.setWord(0x15, base);
    const extended = Math.min(low > MiB ? Math.floor((low - MiB) / KiB) : 0, 0xffff);
    this.setWord(0x17, extended);
    this.setWord(0x30, extended);
    const above16m = Math.min(low > 16 * MiB ? Math.floor((low - 16 * MiB) / (64 * KiB)) : 0, 0xffff);
    this.setWord(0x34, above16m);
    const above4g = Math.floor(layout.highRamBytes / (64 * KiB));
    this.nvram[0x5b] = above4g & 0xff;
    this.nvram[0x5c] = (above4g >>> 8) & 0xff;
    this.nvram[0x5d] = Math.floor(above4g / 0x10000) & 0xff;
    this.nvram[0x5f] = Math.max(0, Math.min(layout.cpus - 1, 0xff));
    // Equipment byte: FPU and PS/2 mouse present, no floppy, EGA/VGA display.
    this.nvram[0x14] = 0x06;
    // Boot order as QEMU's default "cad": hard disk, floppy, CD-ROM; no floppy signature check.
    this.setBootOrder('disk');
    this.updateChecksum();
  }

  /** Standard checksum over 0x10..0x2d, stored big-endian at 0x2e/0x2f. */
  updateChecksum(): void {
    let sum = 0;
    for (let i = 0x10; i <= 0x2d; i++) sum += this.nvram[i];
    this.nvram[0x2e] = (sum >>> 8) & 0xff;
    this.nvram[0x2f] = sum & 0xff;
  }

  private setWord(at: number, value: number): void {
    this.nvram[at] = value & 0xff;
    this.nvram[at + 1] = (value >>> 8) & 0xff;
  }

  get selectedIndex(): number {
    return this.index;
  }

  // --- port access --------------------------------------------------------------

  read(offset: number, size: number): number {
    // A wider access covers consecutive ports, as the ISA bus splits it.
    let v = 0;
    for (let i = 0; i < size; i++) v += this.readPort(offset + i) * 2 ** (8 * i);
    return v;
  }

  write(offset: number, size: number, value: number): void {
    for (let i = 0; i < size; i++) this.writePort(offset + i, Math.floor(value / 2 ** (8 * i)) & 0xff);
  }

  private readPort(port: number): number {
    if (port !== 1) return 0xff; // the index register is write-only
    return this.readRegister(this.index);
  }

  private writePort(port: number, value: number): void {
    if (port === 0) {
      this.index = value & 0x7f;
      this.nmiMasked = (value & 0x80) !== 0;
    } else if (port === 1) {
      this.writeRegister(this.index, value);
    }
  }

  // --- registers ----------------------------------------------------------------

  private readRegister(reg: number): number {
    const b = this.nvram[RTC.REG_B];
    if (isTimeRegister(reg) && !(b & REG_B.SET)) this.latchTime();
    switch (reg) {
      case RTC.REG_A: {
        const a = this.nvram[RTC.REG_A] & 0x7f;
        return this.updateInProgress() ? a | REG_A_UIP : a;
      }
      case RTC.REG_C: {
        const c = this.pendingFlags();
        this.lastFlagCheckMs = this.guestNow();
        return c;
      }
      case RTC.REG_D:
        return REG_D_VRT;
      default:
        return this.nvram[reg];
    }
  }

  private writeRegister(reg: number, value: number): void {
    switch (reg) {
      case RTC.REG_A:
        this.nvram[reg] = value & 0x7f;
        return;
      case RTC.REG_B: {
        const old = this.nvram[reg];
        // Setting SET freezes the clock and clears UIE (MC146818).
        const v = value & REG_B.SET ? value & ~REG_B.UIE : value;
        this.nvram[reg] = v;
        // A running clock is latched in the (possibly new) format; clearing SET starts
        // the clock from what the guest wrote.
        if (!(old & REG_B.SET)) this.latchTime();
        else if (!(v & REG_B.SET)) this.takeTimeFromRegisters();
        return;
      }
      case RTC.REG_C:
      case RTC.REG_D:
        return; // read-only
      default:
        if (isTimeRegister(reg)) {
          const frozen = (this.nvram[RTC.REG_B] & REG_B.SET) !== 0;
          if (!frozen) this.latchTime();
          this.nvram[reg] = value;
          if (!frozen) this.takeTimeFromRegisters();
          return;
        }
        this.nvram[reg] = value;
    }
  }

  // --- the clock ------------------------------------------------------------------

  private guestNow(): number {
    return this.clock() + this.offsetMs;
  }

  private updateInProgress(): boolean {
    if (this.nvram[RTC.REG_B] & REG_B.SET) return false;
    // Only the normal 32.768 kHz divider (010) runs the clock.
    if ((this.nvram[RTC.REG_A] & 0x70) !== 0x20) return false;
    const fraction = mod(this.guestNow(), 1000);
    return fraction >= 1000 - UIP_WINDOW_MS;
  }

  /** Puts the current guest time into the time registers, in the format register B asks for. */
  private latchTime(): void {
    const d = new Date(Math.floor(this.guestNow() / 1000) * 1000);
    const b = this.nvram[RTC.REG_B];
    const enc = (v: number) => encodeField(v, b);
    this.nvram[RTC.SECONDS] = enc(d.getUTCSeconds());
    this.nvram[RTC.MINUTES] = enc(d.getUTCMinutes());
    this.nvram[RTC.HOURS] = encodeHours(d.getUTCHours(), b);
    this.nvram[RTC.DAY_OF_WEEK] = enc(d.getUTCDay() + 1);
    this.nvram[RTC.DAY_OF_MONTH] = enc(d.getUTCDate());
    this.nvram[RTC.MONTH] = enc(d.getUTCMonth() + 1);
    const year = d.getUTCFullYear();
    this.nvram[RTC.YEAR] = enc(year % 100);
    this.nvram[RTC.CENTURY] = enc(Math.floor(year / 100) % 100);
  }

  /** Sets the guest clock from the time registers (after the guest set the time). */
  private takeTimeFromRegisters(): void {
    const b = this.nvram[RTC.REG_B];
    const dec = (reg: number) => decodeField(this.nvram[reg], b);
    const year = dec(RTC.CENTURY) * 100 + dec(RTC.YEAR);
    const ms = Date.UTC(year, dec(RTC.MONTH) - 1, dec(RTC.DAY_OF_MONTH), decodeHours(this.nvram[RTC.HOURS], b), dec(RTC.MINUTES), dec(RTC.SECONDS));
    // Nonsense values from the guest leave the clock where it was.
    if (!Number.isFinite(ms)) return;
    const hostNow = this.clock();
    // The divider chain restarts: the new second begins now.
    this.offsetMs = ms - hostNow;
    this.lastFlagCheckMs = this.guestNow();
  }

  /** Register C as it would read now: flags for events since the last read. */
  private pendingFlags(): number {
    const now = this.guestNow();
    const since = this.lastFlagCheckMs;
    const a = this.nvram[RTC.REG_A];
    const b = this.nvram[RTC.REG_B];
    let c = 0;
    const running = !(b & REG_B.SET) && (a & 0x70) === 0x20;
    if (running && Math.floor(now / 1000) > Math.floor(since / 1000)) {
      c |= REG_C.UF;
      if (this.alarmMatchedBetween(since, now)) c |= REG_C.AF;
    }
    const rate = a & 0x0f;
    if (rate !== 0 && (a & 0x70) === 0x20) {
      // Periods of 2^(rate-1) / 32768 s; rates 1 and 2 behave as 8 and 9.
      const effective = rate <= 2 ? rate + 7 : rate;
      const periodMs = (2 ** (effective - 1) / 32768) * 1000;
      if (Math.floor(now / periodMs) > Math.floor(since / periodMs)) c |= REG_C.PF;
    }
    if ((c & REG_C.PF && b & REG_B.PIE) || (c & REG_C.AF && b & REG_B.AIE) || (c & REG_C.UF && b & REG_B.UIE)) c |= REG_C.IRQF;
    return c;
  }

  private alarmMatchedBetween(sinceMs: number, nowMs: number): boolean {
    const b = this.nvram[RTC.REG_B];
    const want = [this.nvram[RTC.SECONDS_ALARM], this.nvram[RTC.MINUTES_ALARM], this.nvram[RTC.HOURS_ALARM]];
    const first = Math.floor(sinceMs / 1000) + 1;
    const last = Math.floor(nowMs / 1000);
    // Any alarm that can match at all matches within a day.
    const end = Math.min(last, first + 86400);
    for (let s = first; s <= end; s++) {
      const d = new Date(s * 1000);
      const have = [encodeField(d.getUTCSeconds(), b), encodeField(d.getUTCMinutes(), b), encodeHours(d.getUTCHours(), b)];
      // Alarm bytes 0xc0-0xff are "don't care".
      if (want.every((w, i) => w >= 0xc0 || w === have[i])) return true;
    }
    return false;
  }
}

function defaultClock(): number {
  return performance.timeOrigin + performance.now();
}

function isTimeRegister(reg: number): boolean {
  return TIME_REGISTERS.includes(reg);
}

function mod(a: number, m: number): number {
  return ((a % m) + m) % m;
}

function encodeField(v: number, regB: number): number {
  return regB & REG_B.DM_BINARY ? v : ((Math.floor(v / 10) % 10) << 4) | (v % 10);
}

function decodeField(v: number, regB: number): number {
  return regB & REG_B.DM_BINARY ? v : (v >> 4) * 10 + (v & 0x0f);
}

function encodeHours(hours24: number, regB: number): number {
  if (regB & REG_B.HOURS_24) return encodeField(hours24, regB);
  const h12 = hours24 % 12 === 0 ? 12 : hours24 % 12;
  return encodeField(h12, regB) | (hours24 >= 12 ? 0x80 : 0);
}

function decodeHours(v: number, regB: number): number {
  if (regB & REG_B.HOURS_24) return decodeField(v, regB);
  const h12 = decodeField(v & 0x7f, regB) % 12;
  return v & 0x80 ? h12 + 12 : h12;
}

const FOUR_GIB = 2 ** 32;

export const cmosDevice: DeviceFactory = (ctx) => {
  const cmos = new Cmos();
  const ramRanges = ctx.memory.ramRanges();
  cmos.setMemoryLayout({
    lowRamBytes: ramRanges.filter((r) => r.base < FOUR_GIB).reduce((n, r) => n + r.size, 0),
    highRamBytes: ramRanges.filter((r) => r.base >= FOUR_GIB).reduce((n, r) => n + r.size, 0),
    cpus: ctx.cpuCount,
  });
  // Outside the checksummed range (0x10..0x2d): no checksum update needed.
  if (ctx.config.boot.kind === 'firmware' && ctx.config.boot.bootFrom === 'cdrom') cmos.setBootOrder('cdrom');
  return { name: cmos.name, instance: cmos, pio: [{ base: CMOS_PORT, length: 2, io: cmos }] };
};
