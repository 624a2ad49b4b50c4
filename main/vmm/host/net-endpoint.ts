// What every network backend is to the VM host (net-backends.ts opens them; net-user.ts is one):
// frames up until paused, sends that may be 'busy', and errors that read as sentences.
export type SendResult = 'sent' | 'busy' | 'dropped';

export interface NetEndpointEvents {
  onFrame(frame: Uint8Array): void;
  /** A send that was 'busy' may be tried again. */
  onWritable(): void;
  onLog(text: string): void;
}

export interface NetEndpoint {
  readonly description: string;
  send(frame: Uint8Array): SendResult;
  pauseReceive(): void;
  resumeReceive(): void;
  /** Frames the backend could not pass on (bad framing, no peer, a datagram while paused). */
  readonly drops: number;
  close(): void;
}

export class NetBackendError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NetBackendError';
  }
}
