// xHCI 1.2 numbers: register layout of this controller, TRB types, completion codes.

/** The MMIO BAR. */
export const XHCI_BAR_SIZE = 0x10000;
export const MAX_SLOTS = 32;
export const MAX_INTRS = 4;
/** Ports 1..4 are USB 3 (SuperSpeed), 5..8 USB 2 (low/full/high speed). */
export const USB3_PORTS = 4;
export const USB2_PORTS = 4;
export const MAX_PORTS = USB3_PORTS + USB2_PORTS;
/** log2 of the largest Event Ring Segment Table (HCSPARAMS2.ERST Max). */
export const ERST_MAX_LOG2 = 4;

// Register map (offsets in the BAR).
export const CAP_LENGTH = 0x40;
export const OP_BASE = CAP_LENGTH;
/** BAR 0's first page holds the capability, operational and port registers, nothing else. */
export const REGISTER_PAGE_WORDS = 0x1000 / 4;
export const PORT_BASE = OP_BASE + 0x400;
export const PORT_STRIDE = 0x10;
/**
 * The runtime registers start 0x20 below a page, so that MFINDEX (computed at each read) ends
 * one page and the interrupters start the next, which holds nothing else: the PCI function
 * maps that page read-only into the guest. The doorbell array has the page after it.
 */
export const RT_BASE = 0x1fe0;
export const DB_BASE = 0x3000;
export const XECP_BASE = 0x4000;

// Capability registers.
export const CAP_HCIVERSION = 0x0100;

// Operational registers (offsets from OP_BASE).
export const OP_USBCMD = 0x00;
export const OP_USBSTS = 0x04;
export const OP_PAGESIZE = 0x08;
export const OP_DNCTRL = 0x14;
export const OP_CRCR = 0x18;
export const OP_DCBAAP = 0x30;
export const OP_CONFIG = 0x38;

export const USBCMD_RS = 1 << 0;
export const USBCMD_HCRST = 1 << 1;
export const USBCMD_INTE = 1 << 2;
export const USBCMD_HSEE = 1 << 3;
/** Enable Wrap Event: an MFINDEX Wrap Event each time MFINDEX passes from 0x3fff to 0. */
export const USBCMD_EWE = 1 << 10;
/** The bits USBCMD keeps (RS, INTE, HSEE, LHCRST-less: CSS/CRS are actions, EWE, EU3S, CME...). */
export const USBCMD_STORED = USBCMD_RS | USBCMD_INTE | USBCMD_HSEE | (1 << 10) | (1 << 11) | (1 << 13);

export const USBSTS_HCH = 1 << 0;
export const USBSTS_HSE = 1 << 2;
export const USBSTS_EINT = 1 << 3;
export const USBSTS_PCD = 1 << 4;
export const USBSTS_CNR = 1 << 11;
export const USBSTS_HCE = 1 << 12;
export const USBSTS_RW1C = USBSTS_HSE | USBSTS_EINT | USBSTS_PCD | (1 << 10);

export const CRCR_RCS = 1 << 0;
export const CRCR_CS = 1 << 1;
export const CRCR_CA = 1 << 2;
export const CRCR_CRR = 1 << 3;

// Runtime registers.
export const RT_MFINDEX = 0x00;
/** MFINDEX counts 125 µs microframes in 14 bits: it wraps every 2.048 s. */
export const MFINDEX_WRAP_MS = 0x4000 / 8;
export const RT_IR_BASE = 0x20;
export const RT_IR_STRIDE = 0x20;
/** The interrupters' page: interrupter i's registers at i * RT_IR_STRIDE in it. */
export const RT_IR_PAGE = RT_BASE + RT_IR_BASE;
export const IR_IMAN = 0x00;
export const IR_IMOD = 0x04;
export const IR_ERSTSZ = 0x08;
export const IR_ERSTBA = 0x10;
export const IR_ERDP = 0x18;
export const IMAN_IP = 1 << 0;
export const IMAN_IE = 1 << 1;
export const ERDP_EHB = 1 << 3;

// PORTSC bits.
export const PORTSC_CCS = 1 << 0;
export const PORTSC_PED = 1 << 1;
export const PORTSC_OCA = 1 << 3;
export const PORTSC_PR = 1 << 4;
export const PORTSC_PLS_SHIFT = 5;
export const PORTSC_PLS_MASK = 0xf << 5;
export const PORTSC_PP = 1 << 9;
export const PORTSC_SPEED_SHIFT = 10;
export const PORTSC_PIC_MASK = 3 << 14;
export const PORTSC_LWS = 1 << 16;
export const PORTSC_CSC = 1 << 17;
export const PORTSC_PEC = 1 << 18;
export const PORTSC_WRC = 1 << 19;
export const PORTSC_OCC = 1 << 20;
export const PORTSC_PRC = 1 << 21;
export const PORTSC_PLC = 1 << 22;
export const PORTSC_CEC = 1 << 23;
export const PORTSC_CAS = 1 << 24;
export const PORTSC_WCE = 1 << 25;
export const PORTSC_WDE = 1 << 26;
export const PORTSC_WOE = 1 << 27;
export const PORTSC_DR = 1 << 30;
export const PORTSC_WPR = 1 << 31;
export const PORTSC_CHANGES = PORTSC_CSC | PORTSC_PEC | PORTSC_WRC | PORTSC_OCC | PORTSC_PRC | PORTSC_PLC | PORTSC_CEC;
export const PORTSC_WAKE_BITS = PORTSC_WCE | PORTSC_WDE | PORTSC_WOE;

/** Port link states (PORTSC.PLS). */
export const PLS_U0 = 0;
export const PLS_U3 = 3;
export const PLS_DISABLED = 4;
export const PLS_RX_DETECT = 5;
export const PLS_POLLING = 7;
export const PLS_RESUME = 15;

/** Protocol speed IDs (default PSI). */
export const SPEED_FULL = 1;
export const SPEED_LOW = 2;
export const SPEED_HIGH = 3;
export const SPEED_SUPER = 4;

// TRB types.
export const TRB_NORMAL = 1;
export const TRB_SETUP = 2;
export const TRB_DATA = 3;
export const TRB_STATUS = 4;
export const TRB_ISOCH = 5;
export const TRB_LINK = 6;
export const TRB_EVENT_DATA = 7;
export const TRB_NOOP = 8;
export const TRB_ENABLE_SLOT = 9;
export const TRB_DISABLE_SLOT = 10;
export const TRB_ADDRESS_DEVICE = 11;
export const TRB_CONFIGURE_ENDPOINT = 12;
export const TRB_EVALUATE_CONTEXT = 13;
export const TRB_RESET_ENDPOINT = 14;
export const TRB_STOP_ENDPOINT = 15;
export const TRB_SET_TR_DEQUEUE = 16;
export const TRB_RESET_DEVICE = 17;
export const TRB_NOOP_COMMAND = 23;
export const TRB_TRANSFER_EVENT = 32;
export const TRB_COMMAND_COMPLETION = 33;
export const TRB_PORT_STATUS_CHANGE = 34;
export const TRB_HOST_CONTROLLER_EVENT = 37;
export const TRB_MFINDEX_WRAP = 39;

// TRB control-word bits.
export const TRB_CYCLE = 1 << 0;
export const TRB_TC = 1 << 1; // Link: toggle cycle
export const TRB_ENT = 1 << 1;
export const TRB_ISP = 1 << 2;
export const TRB_CH = 1 << 4;
export const TRB_IOC = 1 << 5;
export const TRB_IDT = 1 << 6;
export const TRB_BEI = 1 << 9;
export const TRB_DIR_IN = 1 << 16;

// Completion codes.
export const CC_SUCCESS = 1;
export const CC_DATA_BUFFER_ERROR = 2;
export const CC_BABBLE = 3;
export const CC_TRANSACTION_ERROR = 4;
export const CC_TRB_ERROR = 5;
export const CC_STALL = 6;
export const CC_RESOURCE_ERROR = 7;
export const CC_NO_SLOTS = 9;
export const CC_SLOT_NOT_ENABLED = 11;
export const CC_EP_NOT_ENABLED = 12;
export const CC_SHORT_PACKET = 13;
export const CC_PARAMETER_ERROR = 17;
export const CC_CONTEXT_STATE_ERROR = 19;
export const CC_EVENT_RING_FULL = 21;
export const CC_INCOMPATIBLE_DEVICE = 22;
export const CC_COMMAND_RING_STOPPED = 24;
export const CC_COMMAND_ABORTED = 25;
export const CC_STOPPED = 26;
export const CC_STOPPED_LENGTH_INVALID = 27;

// Context states.
export const SLOT_DISABLED = 0; // also "enabled" before Address Device
export const SLOT_DEFAULT = 1;
export const SLOT_ADDRESSED = 2;
export const SLOT_CONFIGURED = 3;
export const EP_DISABLED = 0;
export const EP_RUNNING = 1;
export const EP_HALTED = 2;
export const EP_STOPPED = 3;
export const EP_ERROR = 4;

/** Endpoint context EP Type values. */
export const EPT_ISOCH_OUT = 1;
export const EPT_BULK_OUT = 2;
export const EPT_INTR_OUT = 3;
export const EPT_CONTROL = 4;
export const EPT_ISOCH_IN = 5;
export const EPT_BULK_IN = 6;
export const EPT_INTR_IN = 7;

// Bounds on work a guest can cause per call (CVE-2020-14394: an endless Link-TRB loop).
/** Consecutive Link TRBs before a ring is declared broken. */
export const MAX_LINKS_IN_A_ROW = 32;
/** TRBs in one TD. */
export const MAX_TRBS_PER_TD = 4096;
/** Bytes in one TD. */
export const MAX_TD_BYTES = 16 * 1024 * 1024;
/** TDs submitted to a device and not yet completed, per endpoint. */
export const MAX_TDS_IN_FLIGHT = 32;
/** Buffer bytes of all TDs in flight on the controller: a guest cannot make the host allocate more. */
export const MAX_INFLIGHT_BYTES = 64 * 1024 * 1024;
/** A TD this small goes even over the budget when its endpoint has nothing in flight. */
export const SMALL_TD_BYTES = 1024 * 1024;
/** TDs fetched per endpoint kick; more waits for a timer (a device that completes at once could loop). */
export const MAX_TDS_PER_KICK = 256;
/** TRBs read per endpoint kick (at least MAX_TRBS_PER_TD, so one TD always fits); more waits for a timer. */
export const MAX_TRBS_PER_KICK = 16384;
/** Commands run per command-ring doorbell; more waits for a timer. */
export const MAX_COMMANDS_PER_KICK = 256;
