// Shared ISA-style interrupt lines. Several devices may drive one GSI (COM1 and COM3
// share IRQ 4, COM2 and COM4 share IRQ 3, PCI INTx pins share their routed GSI): the
// line is the OR of their levels, and the irqchip is told only when that OR changes,
// so one device lowering its output never drops an interrupt another device asserts.
import type { MachineContext } from '../devices/context';

/** One device's connection to an interrupt line. */
export interface IrqPin {
  readonly gsi: number;
  /** What this device currently drives. */
  readonly level: boolean;
  set(level: boolean): void;
  /** Drives the line low then back high if this pin is asserted: a fresh edge for edge-triggered inputs. */
  pulse(): void;
}

type SetIrq = (gsi: number, level: boolean) => void;

/** The wired-OR of every pin connected to one GSI. */
export class SharedIrqLine {
  private readonly pins: PinImpl[] = [];
  private asserted = 0;

  constructor(readonly gsi: number, private readonly setIrq: SetIrq) {}

  /** The combined level the irqchip currently sees. */
  get level(): boolean {
    return this.asserted > 0;
  }

  /** Names of the devices on this line (for diagnostics). */
  get deviceNames(): string[] {
    return this.pins.map((p) => p.name);
  }

  connect(name: string): IrqPin {
    const pin = new PinImpl(this, name);
    this.pins.push(pin);
    return pin;
  }

  /** Called by a pin whose level changed. */
  change(raised: boolean): void {
    const before = this.asserted > 0;
    this.asserted += raised ? 1 : -1;
    const after = this.asserted > 0;
    if (before !== after) this.setIrq(this.gsi, after);
  }

  /** A new edge from a pin that stays asserted; only meaningful if the line is high. */
  repulse(): void {
    if (this.asserted === 0) return;
    this.setIrq(this.gsi, false);
    this.setIrq(this.gsi, true);
  }
}

class PinImpl implements IrqPin {
  private current = false;
  constructor(private readonly line: SharedIrqLine, readonly name: string) {}
  get gsi(): number {
    return this.line.gsi;
  }
  get level(): boolean {
    return this.current;
  }
  set(level: boolean): void {
    if (level === this.current) return;
    this.current = level;
    this.line.change(level);
  }
  pulse(): void {
    if (this.current) this.line.repulse();
  }
}

/** Every shared line of one machine, created on first use. */
export class IrqLines {
  private readonly lines = new Map<number, SharedIrqLine>();
  constructor(private readonly setIrq: SetIrq) {}

  line(gsi: number): SharedIrqLine {
    if (!Number.isInteger(gsi) || gsi < 0) throw new Error(`interrupt line ${gsi} is not a valid GSI`);
    let line = this.lines.get(gsi);
    if (!line) {
      line = new SharedIrqLine(gsi, this.setIrq);
      this.lines.set(gsi, line);
    }
    return line;
  }

  /** Connects device `name` to GSI `gsi`. */
  pin(gsi: number, name: string): IrqPin {
    return this.line(gsi).connect(name);
  }
}

const linesByContext = new WeakMap<object, IrqLines>();

/**
 * The machine's shared IRQ lines. Every device builder that passes the same context gets
 * the same lines, so devices registered in different places still share a GSI correctly.
 */
export function irqLinesOf(ctx: Pick<MachineContext, 'setIrq'>): IrqLines {
  let lines = linesByContext.get(ctx);
  if (!lines) {
    lines = new IrqLines((gsi, level) => ctx.setIrq(gsi, level));
    linesByContext.set(ctx, lines);
  }
  return lines;
}
