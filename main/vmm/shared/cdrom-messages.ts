// What the VM host and the AHCI model's CD-ROM drives say to each other over the channel
// (target CDROM_CHANNEL_TARGET): media requests (list, insert, eject) and their replies, and
// the machine's news that the guest ejected a disc. Every request gets exactly one reply of
// the same id, and every reply and notice carries all drives' state, so the VM host always
// knows what a relaunch (a reset) must put in them. UTF-8 JSON: a control path.
import type { CdromDriveInfo } from '../../api/contract';
import { CHANNEL_TARGET } from './channel';

export const CDROM_CHANNEL_TARGET = CHANNEL_TARGET.FIRST_FREE + 4;

export const CDROM_KIND = {
  /** Host → machine: a CdromRequest. */
  REQUEST: 1,
  /** Machine → host: a CdromReply. */
  REPLY: 2,
  /** Machine → host: { drives } after the guest ejected a disc. */
  MEDIA: 3,
} as const;

export type CdromRequestBody =
  | { op: 'list' }
  /** Puts `path` (an ISO) in `drive` (its name; absent: the first drive). Swapping a locked disc needs `force`. */
  | { op: 'insert'; drive?: string; path: string; force?: boolean }
  /** Takes the disc out of `drive`; refused while the guest locks it, unless `force`. */
  | { op: 'eject'; drive?: string; force?: boolean };

export type CdromRequest = CdromRequestBody & { id: number };

export type CdromErrorCode = 'invalid-argument' | 'invalid-state' | 'not-found';

export type CdromReply =
  | { id: number; ok: true; drives: CdromDriveInfo[]; drive?: string }
  | { id: number; ok: false; code: CdromErrorCode; error: string };

export class CdromRequestError extends Error {
  constructor(readonly code: CdromErrorCode, message: string) {
    super(message);
    this.name = 'CdromRequestError';
  }
}

export function encodeCdromMessage(message: CdromRequest | CdromReply | { drives: CdromDriveInfo[] }): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(message));
}

/** The JSON object of a payload, or null. */
export function decodeCdromMessage(payload: Uint8Array): Record<string, unknown> | null {
  try {
    const value: unknown = JSON.parse(new TextDecoder().decode(payload));
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? value as Record<string, unknown> : null;
  } catch {
    return null;
  }
}
