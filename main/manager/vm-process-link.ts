// The manager's end of one VM process: commands with numbered replies, and the
// process's messages checked for shape before anyone acts on them. Knows nothing of
// VM states; vm-run.ts decides what the messages mean.
import { ApiError, type ApiErrorCode, type CdromDriveInfo, type UsbCaptureInfo } from '../api/contract';
import type { MachineStats } from '../vmm/machine/machine';
import type { StatsSample } from '../vmm/shared/stats';
import type { UsbPortState, UsbRequestBody } from '../vmm/shared/usb-messages';
import type { VmProcessHandle } from './process-launcher';
import type { ManagerToVm, VmCaptureRequest, VmCommand, VmToManager } from './vm-process-protocol';
import type { UsbStartChoice } from '../host/usb-controller-choice';

/** What a command answered: for "stats", the VM host's latest sample or the machine's own counts. */
export interface CommandAnswer {
  stats?: MachineStats;
  sample?: StatsSample;
  /** A USB request's answer: the ports after it and the port it concerned. */
  usb?: { ports: UsbPortState[]; port?: number };
  /** A capture request's answer. */
  capture?: UsbCaptureInfo;
  /** A CD-ROM request's answer: the drives after it. */
  cdrom?: CdromDriveInfo[];
  /** The USB path choices made at start (op "usb-paths"). */
  usbPaths?: UsbStartChoice[];
}

function sentence(text: string): string {
  const t = text.trim();
  if (t === '') return '';
  const s = t[0].toUpperCase() + t.slice(1);
  return /[.!?]$/.test(s) ? s : `${s}.`;
}

/** Error codes a VM process may give in a reply. */
const REPLY_CODES: readonly ApiErrorCode[] = ['invalid-argument', 'invalid-state', 'not-found', 'timeout'];

export class VmProcessLink {
  private nextCommandId = 1;
  private readonly pending = new Map<number, { resolve(a: CommandAnswer): void; reject(e: ApiError): void }>();

  constructor(readonly handle: VmProcessHandle) {}

  get pid(): number | undefined {
    return this.handle.pid;
  }

  send(message: ManagerToVm): void {
    this.handle.send(message);
  }

  kill(signal: NodeJS.Signals): void {
    this.handle.kill(signal);
  }

  /** Sends `command`; settles with its reply, or rejects when the process ends first (rejectAll). */
  command(command: VmCommand): Promise<CommandAnswer> {
    return new Promise((resolve, reject) => {
      const id = this.nextCommandId++;
      this.pending.set(id, { resolve, reject });
      this.handle.send({ type: 'command', id, command });
    });
  }

  /** Sends a USB request to the VM host; settles with its reply like a command. */
  usb(request: UsbRequestBody | VmCaptureRequest): Promise<CommandAnswer> {
    return new Promise((resolve, reject) => {
      const id = this.nextCommandId++;
      this.pending.set(id, { resolve, reject });
      this.handle.send({ type: 'usb', id, request });
    });
  }

  /** Settles the command a reply answers; other messages go to `onMessage`. */
  listen(onMessage: (m: VmToManager) => void): void {
    this.handle.onMessage((m) => {
      if (typeof m !== 'object' || m === null) return;
      if (m.type !== 'reply') {
        onMessage(m);
        return;
      }
      const c = this.pending.get(m.id);
      if (!c) return;
      this.pending.delete(m.id);
      if (m.ok) c.resolve({ stats: m.stats, sample: m.sample, usb: m.usb, capture: m.capture, cdrom: m.cdrom, usbPaths: m.usbPaths });
      else c.reject(new ApiError(m.code !== undefined && REPLY_CODES.includes(m.code) ? m.code : 'invalid-state', sentence(m.message)));
    });
  }

  /** The process is gone: every command still waiting fails with `failure`. */
  rejectAll(failure: ApiError): void {
    for (const c of this.pending.values()) c.reject(failure);
    this.pending.clear();
  }
}
