// Changing the discs of the AHCI controller's CD-ROM drives while the guest runs: the AHCI
// model's host messages (shared/cdrom-messages.ts). Opens an ISO itself (synchronously, as at
// build time: the machine thread sits in KVM_RUN) and refuses with a sentence; the drive's own
// state machine (atapi-cdrom.ts) tells the guest. Runs on the machine thread.
import type { CdromDriveInfo } from '../../../api/contract';
import {
  CDROM_KIND, type CdromReply, CdromRequestError, decodeCdromMessage, encodeCdromMessage,
} from '../../shared/cdrom-messages';
import { ImageError, RawImageFile } from '../usb/storage/block-backend';
import type { BlockBackend } from '../usb/storage/block-backend';
import { type AtapiCdrom, MediumLockedError } from './atapi-cdrom';

export interface MediaHost {
  /** Sends a record to the VM host; false when the channel is full (kept and retried). */
  send(kind: number, payload: Uint8Array): boolean;
  setTimer(delayMs: number, fn: () => void): () => void;
  log(text: string): void;
}

/** A CD-ROM drive with its SATA port and the path of the disc in it. */
export interface MediaDrive {
  drive: AtapiCdrom;
  port: number;
  path: string | null;
}

const RESEND_MS = 5;

export class AhciMedia {
  private readonly unsent: { kind: number; payload: Uint8Array }[] = [];
  private resendTimer: (() => void) | null = null;
  private closed = false;

  constructor(
    private readonly drives: MediaDrive[],
    private readonly host: MediaHost,
    /** Opens an ISO read-only; tests give fakes. Throws ImageError. */
    private readonly openIso: (path: string) => BlockBackend = (path) => RawImageFile.open(path, { readOnly: true, synchronous: true }),
  ) {}

  state(): CdromDriveInfo[] {
    return this.drives.map((d) => ({
      drive: d.drive.name, port: d.port, path: d.drive.medium === null ? null : d.path, locked: d.drive.preventRemoval, trayOpen: d.drive.trayOpen,
    }));
  }

  /** The guest ejected a disc (START STOP UNIT): the VM host hears of it. */
  guestEjected(drive: AtapiCdrom): void {
    const entry = this.drives.find((d) => d.drive === drive);
    if (entry) entry.path = null;
    this.host.log(`${drive.name}: the guest ejected the disc`);
    this.send(CDROM_KIND.MEDIA, encodeCdromMessage({ drives: this.state() }));
  }

  handle(kind: number, payload: Uint8Array): void {
    if (kind !== CDROM_KIND.REQUEST) return;
    const m = decodeCdromMessage(payload);
    if (m === null || typeof m.id !== 'number') {
      this.host.log('ahci: a CD-ROM request that is not JSON with an id was dropped');
      return;
    }
    const id = m.id;
    try {
      switch (m.op) {
        case 'list':
          return this.reply({ id, ok: true, drives: this.state() });
        case 'insert': {
          const entry = this.find(m.drive);
          if (typeof m.path !== 'string' || !m.path.startsWith('/')) throw new CdromRequestError('invalid-argument', 'an ISO needs an absolute path');
          let medium: BlockBackend;
          try {
            medium = this.openIso(m.path);
          } catch (e) {
            if (!(e instanceof ImageError)) throw e;
            throw new CdromRequestError(e.problem === 'missing' ? 'not-found' : e.problem === 'locked' ? 'invalid-state' : 'invalid-argument', e.message);
          }
          try {
            entry.drive.insert(medium, m.force === true);
          } catch (e) {
            medium.close();
            if (e instanceof MediumLockedError) throw new CdromRequestError('invalid-state', e.message);
            throw e;
          }
          entry.path = m.path;
          this.host.log(`${entry.drive.name}: ${m.path} inserted`);
          return this.reply({ id, ok: true, drives: this.state(), drive: entry.drive.name });
        }
        case 'eject': {
          const entry = this.find(m.drive);
          const result = entry.drive.eject(m.force === true);
          if (result === 'locked') throw new CdromRequestError('invalid-state', new MediumLockedError(entry.drive.name).message);
          if (result === 'ejected') {
            this.host.log(`${entry.drive.name}: ${entry.path ?? 'the disc'} ejected${m.force === true ? ' (forced)' : ''}`);
            entry.path = null;
          }
          return this.reply({ id, ok: true, drives: this.state(), drive: entry.drive.name });
        }
        default:
          throw new CdromRequestError('invalid-argument', 'unknown CD-ROM request');
      }
    } catch (e) {
      if (e instanceof CdromRequestError) return this.reply({ id, ok: false, code: e.code, error: e.message });
      this.host.log(`ahci: CD-ROM request ${id} failed: ${(e as Error).stack ?? String(e)}`);
      this.reply({ id, ok: false, code: 'invalid-state', error: `the CD-ROM request failed: ${(e as Error).message}` });
    }
  }

  close(): void {
    this.closed = true;
    this.resendTimer?.();
    this.resendTimer = null;
  }

  private find(name: unknown): MediaDrive {
    if (this.drives.length === 0) throw new CdromRequestError('invalid-state', 'this VM has no CD-ROM drive');
    if (name === undefined || name === null) return this.drives[0];
    const entry = this.drives.find((d) => d.drive.name === name);
    if (entry === undefined) {
      throw new CdromRequestError('not-found', `there is no CD-ROM drive "${String(name)}" (drives: ${this.drives.map((d) => d.drive.name).join(', ')})`);
    }
    return entry;
  }

  private reply(reply: CdromReply): void {
    this.send(CDROM_KIND.REPLY, encodeCdromMessage(reply));
  }

  private send(kind: number, payload: Uint8Array): void {
    if (this.unsent.length === 0 && this.host.send(kind, payload)) return;
    this.unsent.push({ kind, payload });
    if (this.resendTimer === null) this.resendTimer = this.host.setTimer(RESEND_MS, () => this.sendUnsent());
  }

  private sendUnsent(): void {
    this.resendTimer = null;
    while (this.unsent.length > 0 && !this.closed) {
      const next = this.unsent[0];
      if (!this.host.send(next.kind, next.payload)) {
        this.resendTimer = this.host.setTimer(RESEND_MS, () => this.sendUnsent());
        return;
      }
      this.unsent.shift();
    }
  }
}
