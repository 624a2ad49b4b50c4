// Messages between the manager and one VM process (main/manager/vm-process.ts).
// Carried by child_process IPC with "advanced" serialization under Node, and by
// utilityProcess's MessagePort under Electron; both clone Uint8Arrays.
import type { MachineConfig } from '../vmm/config';
import type { MachineEnd, MachineStats } from '../vmm/machine/machine';
import type { VmState as HostState } from '../vmm/host/vm-host';
import type { StatsSample } from '../vmm/shared/stats';
import type { UsbErrorCode, UsbPortState, UsbRequestBody } from '../vmm/shared/usb-messages';
import type { UsbRule } from '../host/usb-rules';
import type { UsbStartChoice } from '../host/usb-controller-choice';
import type { CdromDriveInfo, UsbCaptureOptions, UsbCaptureInfo, UsbTransferRecord } from '../api/contract';
import type { PackedStatsSample } from './stats-wire';

/** Capture requests for the VM host, on the same numbered path as USB requests. */
export type VmCaptureRequest =
  | { op: 'capture-start'; options: UsbCaptureOptions }
  | { op: 'capture-stop'; capture: number }
  /** The VM's auto-attach rules changed (host/usb-rules.ts): they apply to devices that appear from now on. */
  | { op: 'set-rules'; rules: UsbRule[] }
  /** How the devices the rules took at start reach the guest; answered with `usbPaths`. */
  | { op: 'usb-paths' }
  /** CD-ROM media (shared/cdrom-messages.ts), on the same numbered path; answered with `cdrom`. */
  | { op: 'cdrom-list' }
  | { op: 'cdrom-insert'; path: string; drive?: string; force?: boolean }
  | { op: 'cdrom-eject'; drive?: string; force?: boolean };

export type VmCommand = 'stop' | 'pause' | 'resume' | 'reset' | 'stats';

export type ManagerToVm =
  | { type: 'start'; config: MachineConfig }
  | { type: 'command'; id: number; command: VmCommand }
  /** A USB hot-plug request for the VM host (validated by the manager, checked again there). */
  | { type: 'usb'; id: number; request: UsbRequestBody | VmCaptureRequest }
  /** Host → guest bytes for COM port `port` (0..3). */
  | { type: 'input'; port: number; data: Uint8Array }
  /**
   * Whether to send "stats" messages (the manager has vm-stats watchers for this VM). Off at start.
   * `periodMs`: how often the VM host samples while on (STATS_MIN_INTERVAL_MS to
   * STATS_DEFAULT_PERIOD_MS, for the fastest watcher); absent: STATS_DEFAULT_PERIOD_MS.
   */
  | { type: 'stats-stream'; on: boolean; periodMs?: number }

  /** Whether to send "usb-transfers" batches (the manager has watchers of this VM's transfers). Off at start. */
  | { type: 'transfer-stream'; on: boolean };

export type VmToManager =
  /** The process is up and waits for "start". */
  | { type: 'ready' }
  | { type: 'started' }
  | { type: 'start-failed'; message: string }
  | { type: 'state'; state: HostState }
  /** Guest output, batched; ring 0..3 = COM1..COM4, 4 = debug console. */
  | { type: 'output'; ring: number; data: Uint8Array }
  | { type: 'endpoint'; ring: number; description: string }
  | { type: 'log'; line: string }
  /** A sample of the statistics registry, only while the stream is on; at most every STATS_MIN_INTERVAL_MS. */
  | { type: 'stats'; sample: StatsSample }
  /** The same sample packed (stats-wire.ts): what the VM process sends; "stats" is still read. */
  | { type: 'stats-packed'; sample: PackedStatsSample }
  /** Decoded USB transfer records, batched, only while the transfer stream is on. */
  | { type: 'usb-transfers'; records: UsbTransferRecord[]; dropped: number }
  /** "stats" answers `sample` (no kick) when the registry has counters, else `stats` from the machine. */
  | { type: 'reply'; id: number; ok: true; stats?: MachineStats; sample?: StatsSample; usb?: { ports: UsbPortState[]; port?: number }; capture?: UsbCaptureInfo; cdrom?: CdromDriveInfo[]; usbPaths?: UsbStartChoice[] }
  /** `code`: the API error code when the VM host knows it (USB requests); else "invalid-state". */
  | { type: 'reply'; id: number; ok: false; message: string; code?: UsbErrorCode }
  /** The machine ended; the process exits right after (code 0, or non-zero if the process itself failed). */
  | { type: 'ended'; end: MachineEnd; stats: MachineStats };

/** Samples closer together than this are not sent (the VM host samples every 250 ms by default). */
export const STATS_MIN_INTERVAL_MS = 100;
/** How much earlier than STATS_MIN_INTERVAL_MS a sample may come (timer jitter) and still be sent. */
export const STATS_TIMER_SLACK_MS = 5;
/** The VM host's sampling period unless a watcher asks for faster samples. */
export const STATS_DEFAULT_PERIOD_MS = 250;

/** The sampling period a "stats-stream" message asks for, made safe (a bad value gets the default). */
export function statsPeriodOf(periodMs: unknown): number {
  if (typeof periodMs !== 'number' || !Number.isFinite(periodMs)) return STATS_DEFAULT_PERIOD_MS;
  return Math.min(STATS_DEFAULT_PERIOD_MS, Math.max(STATS_MIN_INTERVAL_MS, Math.round(periodMs)));
}

/** How long guest output is held to batch it into fewer messages. */
export const OUTPUT_BATCH_MS = 10;
export const OUTPUT_BATCH_BYTES = 64 * 1024;
