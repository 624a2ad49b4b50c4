// Fixed addresses of the PC platform, shared by device models, firmware tables and
// the Linux loader so they always agree.

/** ACPI PM register block (PIIX4-style): PM1a_EVT at +0, PM1a_CNT at +4, PM_TMR at +8. */
export const ACPI_PM_BASE = 0x600;
export const ACPI_PM1A_EVT = ACPI_PM_BASE;
export const ACPI_PM1A_CNT = ACPI_PM_BASE + 4;
export const ACPI_PM_TMR = ACPI_PM_BASE + 8;
/** GPE0 block (status then enable), 4 bytes. */
export const ACPI_GPE0_BASE = 0xafe0;
/** SLP_TYP value for S5 (soft off) in PM1a_CNT bits 10..12, as the DSDT's \_S5 says. */
export const ACPI_S5_SLP_TYP = 0;
export const ACPI_SCI_IRQ = 9;

export const IOAPIC_BASE = 0xfec00000;
export const LAPIC_BASE = 0xfee00000;
export const IOAPIC_PINS = 24;

/** 32-bit PCI MMIO window handed to BARs (below the IOAPIC). */
export const PCI_MMIO_BASE = 0xc0000000;
export const PCI_MMIO_END = 0xfec00000;

export const COM_PORTS = [
  { base: 0x3f8, irq: 4 },
  { base: 0x2f8, irq: 3 },
  { base: 0x3e8, irq: 4 },
  { base: 0x2e8, irq: 3 },
] as const;

/** fw_cfg (QEMU-compatible). */
export const FW_CFG_PORT_SEL = 0x510;
export const FW_CFG_PORT_DATA = 0x511;
export const FW_CFG_PORT_DMA = 0x514;

export const DEBUGCON_PORT = 0x402;
/** The debug console's output ring: after COM1..COM4's. */
export const DEBUGCON_RING = 4;
export const DEBUG_EXIT_PORT = 0xf4;
