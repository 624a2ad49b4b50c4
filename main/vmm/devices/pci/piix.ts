// The PIIX3 PCI-to-ISA bridge (00:01.0) with its PIRQ routing registers, and the PIIX4
// power-management function (00:01.3) with the ACPI PM1a event/control registers, the
// PM timer, GPE0, the APM control port and the SCI — the same mix QEMU's "pc" uses.
import type { IoDevice } from '../io-device';
import { ACPI_PM_BASE, ACPI_S5_SLP_TYP, ACPI_SCI_IRQ } from '../../platform/layout';
import type { IntxRouter } from './pci-bus';
import { type ConfigWriteResult, PciDevice, PCI_CFG } from './pci-device';

// --- PIIX3 ISA bridge -------------------------------------------------------------------

export const PIIX_PIRQRC = 0x60;
export const PIRQ_ROUTE_DISABLED = 0x80;
/** ISA IRQs a PIRQ may be steered to (others are reserved in the PIIX3 datasheet). */
export const PIRQ_VALID_IRQS: readonly number[] = [3, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15];

export class Piix3IsaBridge extends PciDevice implements IntxRouter {
  /** Function pins currently asserting each PIRQ A..D. */
  private readonly pirqSources = [new Set<number>(), new Set<number>(), new Set<number>(), new Set<number>()];
  /** The level last driven on each ISA IRQ we touched. */
  private readonly driven = new Map<number, boolean>();

  /**
   * `setIrq` drives this bridge's own contribution to an ISA IRQ (the platform connects
   * it to the machine's shared, wired-OR lines so other devices on that IRQ keep theirs).
   */
  constructor(private readonly setIrq: (irq: number, level: boolean) => void) {
    super('piix3-isa', { vendorId: 0x8086, deviceId: 0x7000, classCode: 0x060100, multifunction: true });
    for (let i = 0; i < 4; i++) {
      this.config[PIIX_PIRQRC + i] = PIRQ_ROUTE_DISABLED;
      this.writeMask[PIIX_PIRQRC + i] = 0x8f;
    }
    // Reset values of the other PIIX3 registers firmware touches (stored only).
    const resetValues: [number, number][] = [[0x4c, 0x4d], [0x4e, 0x03], [0x4f, 0x00], [0x69, 0x02], [0x70, 0x80], [0x76, 0x0c], [0x77, 0x0c], [0x78, 0x02], [0x79, 0x00], [0x80, 0x00], [0x82, 0x00], [0xa0, 0x08], [0xa2, 0x00], [0xa3, 0x00], [0xa4, 0x00], [0xa5, 0x00], [0xa6, 0x00], [0xa7, 0x00], [0xa8, 0x0f], [0xaa, 0x00], [0xab, 0x00], [0xac, 0x00], [0xae, 0x00]];
    for (const [at, v] of resetValues) {
      this.config[at] = v;
      this.writeMask[at] = 0xff;
    }
  }

  onRouteChange(listener: () => void): void {
    this.addConfigListener((at, size) => {
      if (at < PIIX_PIRQRC + 4 && at + size > PIIX_PIRQRC) listener();
    });
  }

  /** The ISA IRQ PIRQ `pirq` (0..3) is steered to, or null if routing is disabled or invalid. */
  routeOf(pirq: number): number | null {
    const v = this.config[PIIX_PIRQRC + (pirq & 3)];
    if (v & PIRQ_ROUTE_DISABLED) return null;
    const irq = v & 0x0f;
    return PIRQ_VALID_IRQS.includes(irq) ? irq : null;
  }

  /**
   * Programs PIRQ A..D to `irqs` as firmware would (SeaBIOS uses 10, 10, 11, 11); for
   * guests booted without firmware, whose ACPI/MP tables must match.
   */
  routePirqs(irqs: readonly number[]): void {
    irqs.slice(0, 4).forEach((irq, i) => this.writeConfig(PIIX_PIRQRC + i, 1, PIRQ_VALID_IRQS.includes(irq) ? irq : PIRQ_ROUTE_DISABLED));
  }

  setPirq(source: number, pirq: number, level: boolean): void {
    const set = this.pirqSources[pirq & 3];
    if (level) set.add(source);
    else set.delete(source);
    this.refresh();
  }

  /** Whether PIRQ `pirq` is asserted by any function. */
  pirqLevel(pirq: number): boolean {
    return this.pirqSources[pirq & 3].size > 0;
  }

  protected override configWritten(offset: number, size: number): void {
    if (offset < PIIX_PIRQRC + 4 && offset + size > PIIX_PIRQRC) this.refresh();
  }

  private refresh(): void {
    const wanted = new Map<number, boolean>();
    for (let p = 0; p < 4; p++) {
      const irq = this.routeOf(p);
      if (irq !== null && this.pirqSources[p].size > 0) wanted.set(irq, true);
    }
    const changes: [number, boolean][] = [];
    for (const irq of new Set([...wanted.keys(), ...this.driven.keys()])) {
      const level = wanted.get(irq) ?? false;
      if (this.driven.get(irq) !== level) changes.push([irq, level]);
    }
    // Lower old lines before raising new ones, so a moved route never shows both.
    changes.sort((a, b) => Number(a[1]) - Number(b[1]));
    for (const [irq, level] of changes) {
      this.driven.set(irq, level);
      this.setIrq(irq, level);
    }
  }
}

// --- PIIX4 power management -----------------------------------------------------------------

export const PIIX4_PMBA = 0x40;
export const PIIX4_DEVACTB = 0x58;
export const PIIX4_PMREGMISC = 0x80;
export const PIIX4_SMBBA = 0x90;
export const PIIX4_SMBHSTCFG = 0xd2;
export const PM_BLOCK_SIZE = 64;

/** PM1 status/enable bits. */
export const PM1_STS = { TMROF: 0x0001, BM: 0x0010, GBL: 0x0020, PWRBTN: 0x0100, RTC: 0x0400, WAK: 0x8000 } as const;
/** PM1 control bits. */
export const PM1_CNT = { SCI_EN: 0x0001, BM_RLD: 0x0002, GBL_RLS: 0x0004, SLP_TYP_MASK: 0x1c00, SLP_TYP_SHIFT: 10, SLP_EN: 0x2000 } as const;
/** Status bits that raise the SCI when their enable bit is set. */
const SCI_SOURCES = PM1_STS.TMROF | PM1_STS.GBL | PM1_STS.PWRBTN | PM1_STS.RTC;
/** PM1_STS bits the guest can clear (write 1). */
const PM1_STS_CLEARABLE = PM1_STS.TMROF | PM1_STS.BM | PM1_STS.GBL | PM1_STS.PWRBTN | PM1_STS.RTC | PM1_STS.WAK;

export const PM_TIMER_HZ = 3579545;
export const APM_CNT_PORT = 0xb2;
export const ACPI_ENABLE_CMD = 0xf1;
export const ACPI_DISABLE_CMD = 0xf0;

export interface Piix4PmOptions {
  /** Drives the SCI (ISA IRQ 9). */
  setSci(level: boolean): void;
  requestPowerOff(): void;
  log(text: string): void;
  /** Monotonic host time in ns (tests pass their own). */
  clockNs?: () => bigint;
}

/**
 * Reset state differs from a real PIIX4 on purpose: PMBA is ACPI_PM_BASE and PM I/O is
 * enabled, so a guest booted without firmware (Linux direct boot) finds the block where
 * the ACPI tables put it. Firmware may move it through PMBA; the new base takes effect at
 * once (SeaBIOS moves it to 0xb000 when it builds its own ACPI tables, and leaves it at
 * 0x600 when fw_cfg provides "etc/table-loader").
 */
export class Piix4Pm extends PciDevice {
  private pm1Status = 0;
  private pm1Enable = 0;
  private pm1Control = 0;
  private gpeStatus = 0;
  private gpeEnable = 0;
  /** Other PM registers (GLBCTL, DEVCTL, GPIO...): stored and read back. */
  private readonly otherRegisters = new Uint8Array(PM_BLOCK_SIZE);
  private apmControl = 0;
  private apmStatus = 0;
  private sciLevel = false;
  private readonly clockNs: () => bigint;
  private readonly startNs: bigint;
  /** 2^23-tick epoch of the PM timer when TMROF_STS was last cleared. */
  private timerEpochCleared: bigint;
  /** Where PMBA/PMREGMISC place the PM block, as last reported to the bus (null: nowhere). */
  private mappedBase: number | null = null;
  /** The PM block (PMBA), GPE0 and APM control/status ports (the last two at fixed ports: see pci/index.ts). */
  readonly pmIo: IoDevice;
  readonly gpeIo: IoDevice;
  readonly apmIo: IoDevice;

  constructor(private readonly opts: Piix4PmOptions) {
    super('piix4-pm', { vendorId: 0x8086, deviceId: 0x7113, classCode: 0x068000, revision: 0x03, interruptPin: 1 });
    this.clockNs = opts.clockNs ?? (() => process.hrtime.bigint());
    this.startNs = this.clockNs();
    this.timerEpochCleared = 0n;
    this.setU32(PIIX4_PMBA, ACPI_PM_BASE | 1);
    this.setWritable(PIIX4_PMBA, 4, 0x0000ffc0);
    this.config[PIIX4_PMREGMISC] = 0x01;
    this.writeMask[PIIX4_PMREGMISC] = 0x01;
    // DEVACTB.APMC_EN preset: tells SeaBIOS SMM is already set up (we have no SMM),
    // as QEMU does when SMM is unavailable; otherwise SeaBIOS waits for an SMI forever.
    this.config[PIIX4_DEVACTB + 3] = 0x02;
    this.setU32(PIIX4_SMBBA, 1);
    this.setWritable(PIIX4_SMBBA, 4, 0x0000fff0);
    this.writeMask[PIIX4_SMBHSTCFG] = 0x0f;
    this.config[PCI_CFG.INTERRUPT_LINE] = ACPI_SCI_IRQ;

    this.pmIo = {
      name: 'acpi-pm',
      read: (offset, size) => this.readPm(offset, size),
      write: (offset, size, value) => this.writePm(offset, size, value),
    };
    this.gpeIo = {
      name: 'acpi-gpe0',
      read: (offset, size) => this.readGpe(offset, size),
      write: (offset, size, value) => this.writeGpe(offset, size, value),
    };
    this.apmIo = {
      name: 'apm',
      read: (offset) => (offset === 0 ? this.apmControl : offset === 1 ? this.apmStatus : 0xff),
      write: (offset, _size, value) => this.writeApm(offset, value & 0xff),
    };
  }

  /** Where the PM block decodes now, or null. */
  get pmBase(): number | null {
    return this.mappedBase;
  }

  get sciAsserted(): boolean {
    return this.sciLevel;
  }

  /** The host presses the power button: the guest's OS sees an ACPI power-button event. */
  pressPowerButton(): void {
    this.pm1Status |= PM1_STS.PWRBTN;
    this.updateSci();
  }

  /** PM timer value: 24 bits at 3.579545 MHz from the host monotonic clock. */
  timerValue(): number {
    return Number(this.timerTicks() & 0xffffffn);
  }

  private timerTicks(): bigint {
    return ((this.clockNs() - this.startNs) * BigInt(PM_TIMER_HZ)) / 1_000_000_000n;
  }

  protected override configWritten(offset: number, size: number, changes: ConfigWriteResult): void {
    const touches = (at: number, len: number) => offset < at + len && offset + size > at;
    if (!touches(PIIX4_PMBA, 4) && !touches(PIIX4_PMREGMISC, 1)) return;
    // PMBA moves the PM block at once (see above); the bus maps it after this write.
    const base = this.config[PIIX4_PMREGMISC] & 1 ? this.getU32(PIIX4_PMBA) & 0xffc0 : 0;
    const wanted = base === 0 ? null : base;
    changes.move('io', this.pmIo, PM_BLOCK_SIZE, this.mappedBase, wanted);
    this.mappedBase = wanted;
  }

  // --- PM I/O block ----------------------------------------------------------------------

  private currentStatus(): number {
    let sts = this.pm1Status;
    // Timer overflow status: bit 23 of the timer changed since the guest last cleared it.
    if ((this.timerTicks() >> 23n) > this.timerEpochCleared) sts |= PM1_STS.TMROF;
    return sts;
  }

  private readPm(offset: number, size: number): number {
    let timer = -1;
    let v = 0;
    for (let i = size - 1; i >= 0; i--) {
      const at = offset + i;
      let byte: number;
      if (at < 2) byte = this.currentStatus() >> (8 * at);
      else if (at < 4) byte = this.pm1Enable >> (8 * (at - 2));
      else if (at < 6) byte = this.pm1Control >> (8 * (at - 4));
      else if (at >= 8 && at < 12) {
        if (timer < 0) timer = this.timerValue();
        byte = Math.floor(timer / 2 ** (8 * (at - 8)));
      } else if (at < PM_BLOCK_SIZE) byte = this.otherRegisters[at];
      else byte = 0;
      v = v * 256 + (byte & 0xff);
    }
    return v;
  }

  private writePm(offset: number, size: number, value: number): void {
    const field = (at: number, len: number) => {
      // The part of `value` that lands in register bytes [at, at+len), aligned to `at`,
      // and a mask of the bytes written.
      let bits = 0;
      let mask = 0;
      for (let i = 0; i < size; i++) {
        const b = offset + i;
        if (b >= at && b < at + len) {
          bits |= (Math.floor(value / 2 ** (8 * i)) & 0xff) << (8 * (b - at));
          mask |= 0xff << (8 * (b - at));
        }
      }
      return { bits, mask };
    };
    const sts = field(0, 2);
    if (sts.mask) {
      const clear = sts.bits & PM1_STS_CLEARABLE;
      if (clear & PM1_STS.TMROF) this.timerEpochCleared = this.timerTicks() >> 23n;
      this.pm1Status &= ~clear;
    }
    const en = field(2, 2);
    if (en.mask) this.pm1Enable = ((this.pm1Enable & ~en.mask) | en.bits) & 0xffff;
    const cnt = field(4, 2);
    if (cnt.mask) {
      const v = ((this.pm1Control & ~cnt.mask) | cnt.bits) & 0xffff;
      this.pm1Control = v & ~PM1_CNT.SLP_EN; // SLP_EN is write-only
      if (cnt.bits & PM1_CNT.SLP_EN) this.sleep((v & PM1_CNT.SLP_TYP_MASK) >> PM1_CNT.SLP_TYP_SHIFT);
    }
    for (let i = 0; i < size; i++) {
      const at = offset + i;
      if (at >= 12 && at < PM_BLOCK_SIZE) this.otherRegisters[at] = Math.floor(value / 2 ** (8 * i)) & 0xff;
    }
    this.updateSci();
  }

  private sleep(type: number): void {
    if (type === ACPI_S5_SLP_TYP) {
      this.opts.requestPowerOff();
      return;
    }
    this.opts.log(`piix4-pm: guest asked for sleep type ${type}, which this machine does not support; ignored`);
  }

  private readGpe(offset: number, size: number): number {
    let v = 0;
    for (let i = size - 1; i >= 0; i--) {
      const at = offset + i;
      const byte = at < 2 ? this.gpeStatus >> (8 * at) : at < 4 ? this.gpeEnable >> (8 * (at - 2)) : 0;
      v = v * 256 + (byte & 0xff);
    }
    return v;
  }

  private writeGpe(offset: number, size: number, value: number): void {
    for (let i = 0; i < size; i++) {
      const at = offset + i;
      const byte = Math.floor(value / 2 ** (8 * i)) & 0xff;
      if (at < 2) this.gpeStatus &= ~(byte << (8 * at));
      else if (at < 4) this.gpeEnable = (this.gpeEnable & ~(0xff << (8 * (at - 2)))) | (byte << (8 * (at - 2)));
    }
    this.updateSci();
  }

  /** Sets GPE0 status bit `bit` (0..15): a general-purpose event for the guest's ACPI. */
  raiseGpe(bit: number): void {
    if (bit < 0 || bit > 15) return;
    this.gpeStatus |= 1 << bit;
    this.updateSci();
  }

  private writeApm(offset: number, value: number): void {
    if (offset === 1) {
      this.apmStatus = value;
      return;
    }
    if (offset !== 0) return;
    this.apmControl = value;
    // With no SMM, the ACPI enable/disable commands act directly, as in QEMU.
    if (value === ACPI_ENABLE_CMD) this.pm1Control |= PM1_CNT.SCI_EN;
    else if (value === ACPI_DISABLE_CMD) this.pm1Control &= ~PM1_CNT.SCI_EN;
  }

  private updateSci(): void {
    const level = (this.currentStatus() & this.pm1Enable & SCI_SOURCES) !== 0 || (this.gpeStatus & this.gpeEnable) !== 0;
    if (level === this.sciLevel) return;
    this.sciLevel = level;
    this.opts.setSci(level);
  }
}
