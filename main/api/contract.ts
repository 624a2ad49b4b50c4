// The contract between the UI and main: every call, every event, every error.
// The renderer sees exactly this as `window.porthole`, in Electron (preload) and in
// browser mode (main/api/web-client.ts). This file imports nothing: the renderer may
// import it, and so may main.
//
// Rules every implementation follows:
// - Every call returns a Promise. A failed call rejects with an ApiError-shaped value
//   `{ code, message }` whose message is one sentence for the UI. Use `toApiError(e)` to
//   turn whatever was caught into one.
// - Every argument is validated in main (main/api/schema.ts); the renderer may run the
//   same validators to show problems as the user types.
// - Events arrive in order through `onEvent`. A VM's full summary is re-sent whenever
//   anything about it changes, so the UI can simply replace what it holds.

export const API_VERSION = 1;

// ---------------------------------------------------------------------------------
// Errors

export type ApiErrorCode =
  /** An argument has the wrong type, shape or range (the message names the field). */
  | 'invalid-argument'
  /** No VM with that id (or a file that does not exist). */
  | 'not-found'
  /** The VM is in a state where this call makes no sense, e.g. pausing a stopped VM. */
  | 'invalid-state'
  /** The platform cannot do this here, e.g. native file dialogs in browser mode. */
  | 'unsupported'
  /** The VM process or the VMM refused or failed (the message says why). */
  | 'vm-failed'
  /** Reading or writing the VM library failed. */
  | 'io'
  /** The call did not finish in time (e.g. a VM that does not stop; use force-off). */
  | 'timeout'
  /** Browser mode only: the token is missing or wrong, or the page is not ours. */
  | 'unauthorized'
  /** A bug in Porthole. The message still is a sentence; details are in the app log. */
  | 'internal';

export const API_ERROR_CODES: readonly ApiErrorCode[] = [
  'invalid-argument', 'not-found', 'invalid-state', 'unsupported', 'vm-failed', 'io', 'timeout', 'unauthorized', 'internal',
];

export interface ApiErrorShape {
  code: ApiErrorCode;
  message: string;
}

export class ApiError extends Error implements ApiErrorShape {
  constructor(readonly code: ApiErrorCode, message: string) {
    super(message);
    this.name = 'ApiError';
  }

  toJSON(): ApiErrorShape {
    return { code: this.code, message: this.message };
  }
}

export function isApiErrorShape(e: unknown): e is ApiErrorShape {
  if (typeof e !== 'object' || e === null) return false;
  const r = e as Record<string, unknown>;
  return typeof r.message === 'string' && typeof r.code === 'string' && (API_ERROR_CODES as readonly string[]).includes(r.code);
}

/** Whatever a call rejected with, as an ApiError whose message can be shown as is. */
export function toApiError(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  if (isApiErrorShape(e)) return new ApiError(e.code, e.message);
  return new ApiError('internal', 'Something went wrong inside Porthole; the app log has the details.');
}

// ---------------------------------------------------------------------------------
// VM specs: what the user creates and edits (stored in the library)

/** Lower-case letters, digits and dashes, 1..64 chars, starting with a letter or digit. Chosen by main. */
export type VmId = string;
export const VM_ID_PATTERN = /^[a-z0-9][a-z0-9-]{0,63}$/;

export const LIMITS = {
  nameMaxLength: 64,
  memoryMiBMin: 2,
  memoryMiBMax: 1024 * 1024,
  cpusMin: 1,
  cpusMax: 64,
  pathMaxLength: 4096,
  cmdlineMaxLength: 4096,
  disksMax: 8,
  optionRomsMax: 8,
  /** Bytes of one console input call (after UTF-8 encoding). */
  consoleInputMaxBytes: 64 * 1024,
  /** Scroll-back the manager keeps per console stream. */
  consoleScrollbackBytes: 256 * 1024,
  /** Log lines kept per VM (returned by getVmLog and in crash reports). */
  logLines: 500,
} as const;

/**
 * Where a COM port is connected besides the app's console. Unless the setting is
 * "none", the app's console shows the port's output (with scroll-back) and can type
 * into it: a forward is an extra host endpoint, not a replacement. Input from the
 * console and from the forward are merged; output goes to both.
 *
 *   "ui"                  the app's console only (the default for COM1)
 *   "none"                nothing connected: the guest still sees the UART (a PC has
 *                         COM1..COM4), its output is dropped and the console cannot type
 *   "pty"                 a pseudo-terminal; its /dev/pts path is in VmSummary.endpoints
 *   "tcp-listen:4555"     a TCP server on 127.0.0.1:4555 ("tcp-listen:HOST:PORT" picks the address)
 *   "tcp:HOST:PORT"       connect to a TCP server
 *   "unix:PATH" / "unix-listen:PATH"   a Unix socket (connect / listen)
 *   "file:/path/to/log"   append output to a file (input only from the console)
 *   "/dev/ttyUSB0"        a real serial device (any absolute /dev path)
 */
export type SerialForward = string;

export type BootSpec =
  | {
    kind: 'firmware';
    /** SeaBIOS image; empty means the system's (Debian: /usr/share/seabios/bios-256k.bin). */
    firmware: string;
    /** Disk images, in boot order. */
    disks: string[];
    /** An ISO image for a CD drive, or "" for none. */
    cdrom: string;
    /** Extra option ROM files handed to the firmware (advanced; tests use it). */
    optionRoms: string[];
  }
  | {
    kind: 'linux';
    kernel: string;
    /** "" for none. */
    initrd: string;
    cmdline: string;
  }
  | {
    /** A raw real-mode test program loaded at 0x1000 and run from its first byte. */
    kind: 'flat';
    path: string;
  };

export type BootKind = BootSpec['kind'];

export interface VmSpec {
  /** Shown in the library; 1..64 characters, not unique. */
  name: string;
  /** Whole MiB, LIMITS.memoryMiBMin..LIMITS.memoryMiBMax. */
  memoryMiB: number;
  cpus: number;
  boot: BootSpec;
  /** COM1..COM4: exactly four entries. */
  serial: [SerialForward, SerialForward, SerialForward, SerialForward];
  /** QEMU's isa-debug-exit port 0xf4, which lets a test program power the VM off with a status. */
  debugExit: boolean;
  /** The USB controller and the devices plugged in at start; absent: no USB controller. */
  usb?: VmUsbSpec;
  /**
   * Disks (any boot kind), after a firmware boot's `boot.disks`: virtio-blk (PCI 00:08.0 on) or
   * SATA on the AHCI controller; absent: none beyond `boot.disks`.
   */
  disks?: VmDiskSpec[];
  /** A CD-ROM drive on the AHCI controller (its disc can be changed while the VM runs); absent: none. */
  cdrom?: VmCdromSpec;
  /** Network cards, PCI 00:10.0 on; absent: none. */
  nics?: VmNicSpec[];
  /** Host PCI functions given to the VM through VFIO at start (VmPciAssignSpec, up to 4); absent: none. */
  pciAssign?: VmPciAssignSpec[];
}

// ---- PCI assignment (issue 11 item 6): VmSpec.pciAssign, assignPciDevice, returnPciDevice ----

/** Host PCI functions a VM config may list (the VMM's MAX_PCI_ASSIGN). */
export const PCI_ASSIGN_MAX = 4;

/**
 * A host PCI function the VM takes at start (bound to vfio-pci while it runs, given back after):
 * `address` "0000:01:00.0"; `force`: take it although the host needs it.
 */
export interface VmPciAssignSpec {
  address: string;
  force?: boolean;
}

/** assignPciDevice's request: a PCI address ("0000:01:00.0" or "01:00.0"); `force` only for a device the host needs. */
export interface PciAssignRequest {
  address: string;
  force?: boolean;
}

// ---- end of PCI assignment ----

/** A disk image: `bus` "virtio" (the default) or "sata"; `format` absent: detected (qcow2 by its magic, else raw). */
export interface VmDiskSpec {
  path: string;
  bus?: 'virtio' | 'sata';
  format?: 'raw' | 'qcow2';
  readOnly?: boolean;
}

/** A CD-ROM drive: `path` an ISO, or "" for an empty drive; `boot`: SeaBIOS tries the CD before the hard disks. */
export interface VmCdromSpec {
  path: string;
  boot?: boolean;
}

/**
 * A network card: `model` and `backend.kind` from NIC_MODEL_CHOICES and NIC_BACKEND_CHOICES
 * (main/api/nic-choices.ts), the backend's other fields as text (e.g. { kind: "tap", ifname:
 * "tap0" }, { kind: "socket", mode: "listen", path: "/tmp/net.sock" }, { kind: "user", hostfwd:
 * "tcp:127.0.0.1:8022-:22 udp::5353-:53" } with the port forwards space-separated); `mac` absent: a stable
 * one made from the VM's name; `pcap`: an absolute path for a pcapng file of its frames.
 */
export interface VmNicSpec {
  model: string;
  mac?: string;
  backend: { kind: string } & Record<string, string>;
  pcap?: string;
}

export interface VmUsbSpec {
  /** "xhci": a USB 3 controller (ports 1..4 USB 3, 5..8 USB 2) that takes devices while the VM runs. */
  controller: 'xhci' | 'none';
  /** Plugged in at start (UsbDeviceSpec, defined with the USB calls below); at most 8. */
  devices: UsbDeviceSpec[];
  /**
   * Host USB devices this VM takes whenever they are there while it runs (UsbRuleSpec); absent:
   * none. When two running VMs' rules match one device, the first to see it takes it.
   */
  rules?: UsbRuleSpec[];
  /**
   * How the devices the rules take reach the guest: "auto" (absent: the same) assigns a device's
   * whole USB controller at start when it qualifies, else the emulated xHCI; "controller"
   * requires that at start; "emulated" never assigns a controller (config usbPassthroughPath).
   */
  passthroughPath?: 'auto' | 'controller' | 'emulated';
}

/**
 * An auto-attach rule: every `match` field given must match (at least one is given). IDs are
 * numbers; `classCode` matches the device's class or any interface's; `portPath` the host
 * port path ("1-1.4"). `port` puts the device on that guest port; `force` takes it even when
 * the host needs it.
 */
export interface UsbRuleSpec {
  match: { vendorId?: number; productId?: number; serial?: string; classCode?: number; portPath?: string };
  port?: number;
  force?: boolean;
}

/** A good starting point for the "New VM" dialog. */
export function defaultVmSpec(): VmSpec {
  return {
    name: 'New VM',
    memoryMiB: 512,
    cpus: 1,
    boot: { kind: 'firmware', firmware: '', disks: [], cdrom: '', optionRoms: [] },
    serial: ['ui', 'none', 'none', 'none'],
    debugExit: false,
  };
}

/** One problem with one field of a VmSpec, for showing next to that field. */
export interface FieldProblem {
  /** A dotted path into VmSpec: "name", "memoryMiB", "boot.kernel", "boot.disks.1", "serial.0". */
  field: string;
  message: string;
}

// ---------------------------------------------------------------------------------
// VMs as the UI sees them

export type VmState =
  | 'stopped'
  /** The VM process is starting or the machine is being built. */
  | 'starting'
  | 'running'
  | 'paused'
  | 'stopping'
  /** The VM process died unexpectedly: see `lastExit`. Start it again to recover. */
  | 'crashed';

/** The console streams of a VM: COM1..COM4 and the firmware debug console (port 0x402, output only). */
export type ConsolePort = 'com1' | 'com2' | 'com3' | 'com4' | 'debugcon';
export const CONSOLE_PORTS: readonly ConsolePort[] = ['com1', 'com2', 'com3', 'com4', 'debugcon'];

/** How the last run of a VM ended. */
export interface VmExitInfo {
  /** ISO 8601 time. */
  at: string;
  kind:
    /** The guest powered off (ACPI or isa-debug-exit). */
    | 'poweroff'
    /** Stopped from the UI. */
    | 'stopped'
    /** Forced off from the UI (the VM process was killed). */
    | 'forced-off'
    /** The VMM stopped the machine because of an error (message says which). */
    | 'error'
    /** The VM process died: see exitCode/signal and logTail. */
    | 'crashed';
  /** One sentence for the UI, e.g. "The VM process was killed by signal SIGKILL." */
  message: string;
  /** Guest exit status (isa-debug-exit) or the VM process's exit code. */
  exitCode: number | null;
  /** The signal that ended the VM process, e.g. "SIGKILL". */
  signal: string | null;
  /** The last lines of the VM's log (VMM log and the VM process's stderr). */
  logTail: string[];
}

export interface VmSummary {
  id: VmId;
  spec: VmSpec;
  state: VmState;
  /** ISO 8601 times. */
  createdAt: string;
  updatedAt: string;
  /** Host ends of forwarded ports while running, e.g. { com1: "/dev/pts/5" }. */
  endpoints: Partial<Record<ConsolePort, string>>;
  lastExit: VmExitInfo | null;
}

/** A library file that could not be loaded; it is skipped, the others load. */
export interface LibraryProblem {
  /** The file's name inside the library directory. */
  file: string;
  reason: string;
}

export interface VmList {
  vms: VmSummary[];
  problems: LibraryProblem[];
}

export interface VmStats {
  /** VM exits by reason since the machine was built. */
  exits: Record<string, number>;
  devices: { name: string; reads: number; writes: number }[];
}

/**
 * Live counters of a running VM (the statistics registry, main/vmm/shared/stats.ts),
 * sampled by its VM host a few times a second. Names follow the convention there:
 * group "exits" / name "io", group "COM1" / name "tx-bytes", ...
 */
export interface VmStatsCounter {
  group: string;
  name: string;
  unit: 'count' | 'bytes';
  /** Since the VM started (across resets). */
  total: number;
  /** Over the last interval, per second. */
  perSecond: number;
}

export interface VmStatsSample {
  /** Wall-clock milliseconds when the counters were read. */
  atMs: number;
  /** Milliseconds since the previous sample (0 for the first). */
  intervalMs: number;
  counters: VmStatsCounter[];
}

/** The `vm-stats` event: one sample of one VM, to the listeners of watchVmStats. */
export interface VmStatsEvent {
  type: 'vm-stats';
  id: VmId;
  sample: VmStatsSample;
}

// ---------------------------------------------------------------------------------
// USB on a running VM (its xHCI controller's root-hub ports)

/** An emulated device to plug in: the shape of a VM config's usb.devices entry. */
export type UsbDeviceSpec = (
  /** A USB stick backed by a raw image file (absolute path); locked while plugged in. */
  | { kind: 'storage'; path: string; readOnly?: boolean }
  | { kind: 'keyboard' }
  | { kind: 'tablet' }
  /**
   * A USB serial port (CDC-ACM; Linux: /dev/ttyACM0) whose bytes go to a host endpoint, as a
   * COM port's forward does: "pty" (the default), "tcp-listen:4555", "unix:PATH",
   * "unix-listen:PATH", "tcp:HOST:PORT", "file:PATH", a /dev path, or "none". Not "ui".
   */
  | { kind: 'serial'; backend?: SerialForward }
) & {
  /** 1..4 are USB 3 ports, 5..8 USB 2; absent: the first free port that suits (storage prefers USB 3). */
  port?: number;
};

export interface UsbPortDeviceInfo {
  /** 'host': a host USB device passed through (attachHostUsbDevice). */
  kind: 'storage' | 'keyboard' | 'tablet' | 'serial' | 'host';
  /** As in the VM's log and statistics, e.g. "usb-storage stick.img". */
  name: string;
  /** The product string of its descriptors, e.g. "Porthole USB Keyboard". */
  product: string;
  speed: 'low' | 'full' | 'high' | 'super';
  vendorId: number;
  productId: number;
  /** Storage: the image file and whether the guest may write it; null otherwise. */
  path: string | null;
  readOnly: boolean | null;
  /** Serial: where its bytes go on the host (e.g. "/dev/pts/5", "tcp-listen 127.0.0.1:4555"); absent otherwise. */
  endpoint?: string;
  /** A host device: its sysfs name on the host ("1-1.4", as listHostUsbDevices shows it). */
  hostDevice?: string;
  /**
   * A host device: how it reaches the guest ('emulated': through this xHCI; a device whose whole
   * controller went to the VM at start is not on these ports), and why, in a sentence.
   */
  passthroughPath?: 'emulated';
  pathReason?: string;
}

/**
 * How a host USB device the VM's rules took at start reaches the guest (listUsbPathChoices):
 * "controller" when its whole USB controller was assigned to the VM through VFIO (the guest's
 * own xhci driver runs it; the device is on none of the VM's emulated ports), else "emulated".
 */
export interface UsbPathChoiceInfo {
  /** The host device's sysfs name ("1-1.4"), as listHostUsbDevices shows it. */
  hostDevice: string;
  path: 'controller' | 'emulated';
  /** The PCI address of its USB controller ("0000:00:14.0"), or null when it has none. */
  controller: string | null;
  /** Why this path, in a sentence (a controller path that failed at start says how). */
  reason: string;
  /** The other USB devices on that controller ("1-2 (Logitech Mouse)"), which went with it on the controller path. */
  alsoOnController: string[];
}

export interface UsbPortInfo {
  /** 1-based, as the guest sees it. */
  port: number;
  /** "usb3": SuperSpeed; "usb2": low, full and high speed. */
  protocol: 'usb2' | 'usb3';
  /** What sits on the port, or null. */
  device: UsbPortDeviceInfo | null;
}

/** A USB device of the host (listHostUsbDevices), as sysfs shows it. */
export interface HostUsbDeviceSummary {
  /** Its port path on the host ("1-1.4"): what attachHostUsbDevice takes. */
  name: string;
  busNumber: number;
  deviceAddress: number;
  vendorId: number;
  productId: number;
  manufacturer: string | null;
  product: string | null;
  serial: string | null;
  speed: 'low' | 'full' | 'high' | 'super' | 'super-plus' | null;
  /** bDeviceClass (0: per interface). */
  classCode: number;
  /** The active configuration's interfaces and the kernel driver each has now. */
  interfaces: { number: number; classCode: number; driver: string | null }[];
  isHub: boolean;
  /** Whether Porthole may open it; when false, `permissionHint` gives the udev rule that fixes it. */
  accessible: boolean;
  permissionHint: string | null;
  /** The VM holding it ("name (process PID)"), or null while the host has it. */
  heldBy: string | null;
  /**
   * Why the host depends on it ("the host uses this disk: the root file system / is mounted
   * from its sda2"), or null; attachHostUsbDevice refuses such a device unless forced.
   */
  hostNeeds: string | null;
  /**
   * The VMs whose auto-attach rules match it, in library order (the first running one to see it
   * takes it): the VM, its name, and the rule's index in its `usb.rules` with the rule in words.
   */
  wantedBy?: { vm: VmId; vmName: string; rule: number; text: string }[];
}

/** A PCI device of the host (listPciDevices), as sysfs shows it. */
export interface PciDeviceSummary {
  /** Domain:bus:device.function, "0000:01:00.0". */
  address: string;
  vendorId: number;
  deviceId: number;
  /** 24-bit class code (base class, subclass, programming interface). */
  classCode: number;
  /** The class in words ("NVMe controller", "USB controller (xHCI)"). */
  className: string;
  /** The kernel driver bound now ("vfio-pci" while assigned), or null. */
  driver: string | null;
  isBridge: boolean;
  /** Its IOMMU group, or null where the IOMMU is off. `viable`: as the kernel sees it now (every member on vfio-pci, pci-stub, no driver, or a bridge). */
  iommuGroup: { id: number; members: string[]; viable: boolean } | null;
  /** A physical function's SR-IOV capacity and virtual functions, or null. */
  sriov: { totalVfs: number; numVfs: number; virtualFunctions: string[] } | null;
  /** A virtual function's physical function, or null. */
  physicalFunction: string | null;
  /** Why the host needs it (boot display, mounted file system, default route), or null. */
  hostNeeds: string | null;
  /** Whether it can be assigned to a VM now; `whyNot` says why not in a sentence. */
  assignable: boolean;
  whyNot: string | null;
  /** The VM holding it ("name (process PID)"), or null. */
  heldBy: string | null;
  /**
   * PCI assignment (issue 11 item 6): what `whyNot` is about: "bridge", "no-iommu" (the IOMMU is
   * off), "group-not-viable" (another member is on a host driver) or "host-needs" (assignable
   * with force); null when assignable.
   */
  whyNotKind?: 'bridge' | 'no-iommu' | 'group-not-viable' | 'host-needs' | null;
  /** PCI assignment (issue 11 item 6): the VMs whose config lists it (VmSpec.pciAssign), in library order; absent from the CLI's list. */
  assignedTo?: { vm: VmId; vmName: string; force: boolean }[];
}

// ---------------------------------------------------------------------------------
// CD-ROM drives of a running VM (ATAPI on the AHCI controller)

/** A CD-ROM drive and the disc in it (listCdromDrives, insertCdrom, ejectCdrom). */
export interface CdromDriveInfo {
  /** Its name, as in the log and statistics ("disk1", or the config's name). */
  drive: string;
  /** Its SATA port on the AHCI controller (0-based). */
  port: number;
  /** The ISO in it, or null for no disc. */
  path: string | null;
  /** Whether the guest has locked the disc in (PREVENT ALLOW MEDIUM REMOVAL). */
  locked: boolean;
  trayOpen: boolean;
}

/** insertCdrom's media: an ISO (absolute path) for a drive (absent: the first). */
export interface CdromInsertSpec {
  path: string;
  drive?: string;
  /** Swap a disc the guest has locked in. */
  force?: boolean;
}

/** ejectCdrom's options. */
export interface CdromEjectSpec {
  /** Absent: the first drive. */
  drive?: string;
  /** Eject although the guest has locked the disc in. */
  force?: boolean;
}

/** Which host device attachHostUsbDevice passes through, and optionally onto which port. */
export interface HostUsbAttachSpec {
  /** Its port path ("1-1.4"), BUS:ADDR ("1:3") or VID:PID ("46f4:0001", if only one matches). */
  device: string;
  port?: number;
  /** Pass it through even though the host needs it (HostUsbDeviceSummary.hostNeeds says why). */
  force?: boolean;
}

/** startUsbCapture's options. */
export interface UsbCaptureOptions {
  /** An absolute path for the pcapng file (LINKTYPE_USB_LINUX_MMAPPED); null or absent: no file. */
  path?: string | null;
  /** Only the device on this port (1..8); null or absent: every port. */
  port?: number | null;
  /** Data bytes kept per transfer event (0..16384, default 4096). */
  snapLength?: number;
}

/** A capture, running or stopped. */
export interface UsbCaptureInfo {
  /** Pass it to stopUsbCapture. */
  id: number;
  path: string | null;
  port: number | null;
  /** Packets written so far (each transfer is a submit and a complete). */
  packets: number;
  /** Bytes of the file so far. */
  bytes: number;
  /** Events the machine could not hand over (its channel to the VM host was full). */
  dropped: number;
}

/** One submit or complete of a USB transfer on the VM's xHCI, decoded (a row of a transfer list). */
export interface UsbTransferRecord {
  /** The same for a transfer's submit and complete. */
  id: number;
  event: 'submit' | 'complete' | 'error';
  /** Milliseconds since the epoch, with microseconds. */
  atMs: number;
  /** Root-hub port, and the device's name there (null if it left). */
  port: number;
  device: string | null;
  /** The device's USB address. */
  address: number;
  endpoint: number;
  direction: 'in' | 'out';
  type: 'control' | 'isochronous' | 'bulk' | 'interrupt';
  /** Bytes asked for (submit) or moved (complete). */
  length: number;
  /** "submitted", "ok", "stall", "babble", "no-device", "cancelled", "error". */
  status: string;
  /** Control submits: the setup packet, with a reading of it ("GET_DESCRIPTOR configuration 0 (9 bytes)"). */
  setup: { requestType: number; request: number; value: number; index: number; length: number; text: string } | null;
  /** The first captured data bytes (up to 16), in hex. */
  data: string;
}

/** The `host-usb-devices` event: the host's whole USB device list, sent at once and on each change. */
export interface HostUsbDevicesEvent {
  type: 'host-usb-devices';
  devices: HostUsbDeviceSummary[];
}

/** The `usb-transfers` event: transfer records of one VM, batched (about 10 a second). */
export interface UsbTransfersEvent {
  type: 'usb-transfers';
  id: VmId;
  records: UsbTransferRecord[];
  /** Records left out of this batch to keep the stream bounded. */
  dropped: number;
}

/**
 * Keys for the VM's USB keyboard: key names pressed and released in turn ("a", "Enter",
 * "F5", "ctrl+alt+Delete"; the list is in main/api/usb-input.ts), or text to type (printable
 * ASCII, "\n" and "\t", US layout).
 */
export type UsbKeysInput = string[] | { text: string };

// ---------------------------------------------------------------------------------
// App

export interface AppInfo {
  appVersion: string;
  apiVersion: number;
  mode: 'electron' | 'browser';
  capabilities: {
    /** true in Electron: use chooseFile. false in browser mode: show a path field. */
    nativeFileDialogs: boolean;
  };
  /** The directory holding one JSON file per VM. */
  libraryDir: string;
  /** Whether /dev/kvm can be opened; if not, `kvmProblem` says why in one sentence. */
  kvmAvailable: boolean;
  kvmProblem: string | null;
}

export type FilePurpose = 'disk' | 'cdrom' | 'kernel' | 'initrd' | 'firmware' | 'option-rom' | 'flat';

export interface FileChoice {
  purpose: FilePurpose;
  /** Title of the dialog; a sensible default per purpose when absent. */
  title?: string;
}

// ---------------------------------------------------------------------------------
// Events

export type PortholeEvent =
  /** A VM was created, edited, or changed state / endpoints / lastExit. */
  | { type: 'vm-updated'; vm: VmSummary }
  | { type: 'vm-removed'; id: VmId }
  /** The connection to main was lost (browser mode) or re-established; refresh on "connected". */
  | { type: 'connection'; status: 'connected' | 'disconnected' };

/** Called with bytes from a console stream, in order, starting with the scroll-back. */
export type ConsoleListener = (data: Uint8Array) => void;

// ---------------------------------------------------------------------------------
// The API

export interface PortholeApi {
  getInfo(): Promise<AppInfo>;

  /** Every VM in the library plus the files that could not be loaded. */
  listVms(): Promise<VmList>;
  getVm(id: VmId): Promise<VmSummary>;
  /** Problems with a spec, including files that do not exist; [] when it is good. */
  checkVmSpec(spec: VmSpec): Promise<FieldProblem[]>;
  createVm(spec: VmSpec): Promise<VmSummary>;
  /** Only while the VM is stopped or crashed. */
  updateVm(id: VmId, spec: VmSpec): Promise<VmSummary>;
  /** Only while the VM is stopped or crashed. */
  deleteVm(id: VmId): Promise<void>;

  /** Resolves once the VM runs; rejects with a sentence saying why it could not start. */
  startVm(id: VmId): Promise<VmSummary>;
  /** A clean stop of the machine; resolves once stopped. Rejects with "timeout" if it hangs: use forceOffVm. */
  stopVm(id: VmId): Promise<VmSummary>;
  /** Kills the VM process at once. */
  forceOffVm(id: VmId): Promise<VmSummary>;
  pauseVm(id: VmId): Promise<VmSummary>;
  resumeVm(id: VmId): Promise<VmSummary>;
  /** A hard reset: the machine is rebuilt as if powered on again. */
  resetVm(id: VmId): Promise<VmSummary>;

  /** The last lines of the VM's log (kept across runs, bounded). */
  getVmLog(id: VmId): Promise<string[]>;
  getVmStats(id: VmId): Promise<VmStats>;
  /**
   * Streams `vm-stats` events of one VM to `listener` while it runs (several a second; none
   * while it is stopped; the stream carries on across restarts). A VM process only sends
   * samples while somebody watches it. Resolves to a function that ends the stream.
   */
  watchVmStats(id: VmId, listener: (event: VmStatsEvent) => void): Promise<() => void>;
  /**
   * watchVmStats at a pace of your choice: one event per `intervalMs` (100 = 10 Hz to 60000),
   * whose `perSecond` rates and `intervalMs` cover that whole interval.
   */
  watchVmStatsEvery(id: VmId, intervalMs: number, listener: (event: VmStatsEvent) => void): Promise<() => void>;

  /**
   * Streams a console's output to `listener`: first the scroll-back the manager kept,
   * then live bytes, nothing lost or repeated. Works whether or not the VM runs (a
   * stream outlives VM restarts). Resolves to a function that ends the stream.
   */
  openConsole(id: VmId, port: ConsolePort, listener: ConsoleListener): Promise<() => void>;
  /** Types into a COM port (UTF-8 encoded). Only while running or paused; not for "debugcon". */
  sendConsoleInput(id: VmId, port: ConsolePort, data: string): Promise<void>;

  /**
   * The ports of the VM's USB controller and what sits on each. Only while it runs or is
   * paused; "invalid-state" when the VM has no USB controller.
   */
  listUsbPorts(id: VmId): Promise<UsbPortInfo[]>;
  /**
   * For each host USB device the VM's rules took at its start: the path it took (its whole
   * controller assigned to the VM, or the emulated xHCI) and why. Only while it runs or is
   * paused; empty when no rule took a device at start (devices attached later always take the
   * emulated path: listUsbPorts says why).
   */
  listUsbPathChoices(id: VmId): Promise<UsbPathChoiceInfo[]>;
  /**
   * Plugs an emulated device into a free port (or `device.port`); the guest sees it connect.
   * Resolves with the port it got. A storage image that is missing ("not-found"), in use
   * ("invalid-state") or unusable ("invalid-argument") is refused with nothing plugged in.
   */
  attachUsbDevice(id: VmId, device: UsbDeviceSpec): Promise<UsbPortInfo>;
  /**
   * Unplugs the device on `port` (1..8): its transfers are cancelled and an image is closed; a
   * host device is released and its kernel drivers bound again.
   */
  detachUsbDevice(id: VmId, port: number): Promise<void>;
  /** The VM's auto-attach rules (its spec's usb.rules). */
  listUsbRules(id: VmId): Promise<UsbRuleSpec[]>;
  /**
   * Adds an auto-attach rule to the VM's settings (written atomically) and resolves with its
   * rules. Allowed while the VM runs: it then takes matching devices that appear from now on.
   * "invalid-state" for a VM without a USB controller.
   */
  addUsbRule(id: VmId, rule: UsbRuleSpec): Promise<UsbRuleSpec[]>;
  /** Removes rule `index` (0-based, as listUsbRules lists them); resolves with the rules left. */
  removeUsbRule(id: VmId, index: number): Promise<UsbRuleSpec[]>;
  /** The host's USB devices (root hubs left out), with their drivers and which VM holds each. */
  listHostUsbDevices(): Promise<HostUsbDeviceSummary[]>;
  /** The host's PCI devices with their IOMMU groups, whether each group is viable and whether each device can be assigned (and why not). */
  listPciDevices(): Promise<PciDeviceSummary[]>;
  // ---- PCI assignment (issue 11 item 6) ----
  /**
   * Adds a host PCI function to the VM's `pciAssign` (saved atomically; up to 4) and resolves
   * with the list after. It takes effect at the VM's next start: PCI hot-plug is not supported,
   * so a running VM gets it only after a stop and start. "not-found" for an address the host has
   * no device at; "invalid-state" for one this VM already lists, a full list, or a device that
   * cannot be assigned (no IOMMU, a group that is not viable, a bridge: the message says which);
   * one the host needs is refused unless `force`.
   */
  assignPciDevice(id: VmId, request: PciAssignRequest): Promise<VmPciAssignSpec[]>;
  /**
   * Removes a PCI address from the VM's `pciAssign` (saved atomically) and resolves with the list
   * after. A running VM keeps the device until it stops, when it goes back to its host driver.
   */
  returnPciDevice(id: VmId, address: string): Promise<VmPciAssignSpec[]>;
  // ---- end of PCI assignment ----
  /**
   * Passes a host USB device through to a running (or paused) VM: its kernel drivers are
   * detached and remembered, and it is plugged into a free port of its speed (or `spec.port`).
   * "not-found" for a device that is not there; "invalid-state" for one that cannot be opened
   * (the message then names the udev rule for a permission problem) or another VM holds.
   * detachUsbDevice gives it back to the host.
   */
  attachHostUsbDevice(id: VmId, spec: HostUsbAttachSpec): Promise<UsbPortInfo>;
  /**
   * Streams `host-usb-devices` events: the list listHostUsbDevices gives, at once and again
   * whenever it changes (plugged, unplugged, taken by or given back from a VM). Hot-plug
   * comes from node-usb; without it, the list is polled every 2 s.
   */
  watchHostUsbDevices(listener: (event: HostUsbDevicesEvent) => void): Promise<() => void>;
  /**
   * Presses and releases keys on the VM's USB keyboard (the first one), paced to the guest's
   * polling; resolves once the guest could take them all. Only while running; "invalid-state"
   * without a USB keyboard, or before the guest's driver has set it up.
   */
  sendUsbKeys(id: VmId, keys: UsbKeysInput): Promise<void>;
  /**
   * Starts capturing the USB transfers of the VM's xHCI (every port, or `options.port`) into a
   * pcapng file Wireshark reads (LINKTYPE_USB_LINUX_MMAPPED). Only while running or paused;
   * "invalid-state" without a USB controller; a path that cannot be written is refused.
   */
  startUsbCapture(id: VmId, options: UsbCaptureOptions): Promise<UsbCaptureInfo>;
  /** Stops a capture; its file is complete when this resolves. A VM that stops ends its captures. */
  stopUsbCapture(id: VmId, capture: number): Promise<UsbCaptureInfo>;
  /**
   * Streams `usb-transfers` events of one VM to `listener` while it runs: every transfer's submit
   * and complete, decoded, in batches. Resolves to a function that ends the stream.
   */
  watchUsbTransfers(id: VmId, listener: (event: UsbTransfersEvent) => void): Promise<() => void>;

  /** The VM's CD-ROM drives and their discs. Only while it runs or is paused. */
  listCdromDrives(id: VmId): Promise<CdromDriveInfo[]>;
  /**
   * Puts an ISO in a CD-ROM drive of a running (or paused) VM; the guest sees a new medium
   * (UNIT ATTENTION, a media event). A disc already there is swapped; one the guest has locked
   * in is refused ("invalid-state") unless `force`. A missing ISO is "not-found", one in use
   * "invalid-state". Resolves with the drives after it.
   */
  insertCdrom(id: VmId, media: CdromInsertSpec): Promise<CdromDriveInfo[]>;
  /**
   * Takes the disc out of a CD-ROM drive. While the guest has locked it in this is refused
   * ("invalid-state", and the guest is asked to eject it) unless `force`.
   */
  ejectCdrom(id: VmId, options: CdromEjectSpec): Promise<CdromDriveInfo[]>;

  /** The native file dialog (Electron only; see AppInfo.capabilities). Resolves to null if cancelled. */
  chooseFile(choice: FileChoice): Promise<string | null>;

  /** Subscribes to events; returns the unsubscribe function. */
  onEvent(listener: (event: PortholeEvent) => void): () => void;
}

declare global {
  interface Window {
    porthole: PortholeApi;
  }
}
