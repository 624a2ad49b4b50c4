// One client connection of the contract (an Electron window, or a browser page's
// WebSocket): validates every call's arguments, runs it on the backend, turns every
// failure into a typed error, and carries events and console bytes back in order.
// Both transports (main/app/ipc.ts and main/web/server.ts) use this, so the contract
// behaves the same in Electron and in browser mode.
import {
  ApiError, isApiErrorShape,
  type AppInfo, type ConsolePort, type FieldProblem, type FileChoice, type VmList, type VmSpec, type VmStats, type VmSummary,
} from './contract';
import {
  parseConsoleInput, parseConsolePort, parseFileChoice, parseSubscriptionId, parseVmId, parseVmSpec,
} from './schema';
import { WIRE_METHODS, type ServerEvent, type ServerMessage, type WireMethod, type WireResult } from './wire';

/** What main offers behind the contract (arguments already validated). */
export interface ApiBackend {
  getInfo(): AppInfo;
  listVms(): VmList;
  getVm(id: string): VmSummary;
  /** Shape problems of `spec` (unvalidated) and, when the shape is good, file problems. */
  checkVmSpec(spec: unknown): FieldProblem[];
  createVm(spec: VmSpec): VmSummary;
  updateVm(id: string, spec: VmSpec): VmSummary;
  deleteVm(id: string): void;
  startVm(id: string): Promise<VmSummary>;
  stopVm(id: string): Promise<VmSummary>;
  forceOffVm(id: string): Promise<VmSummary>;
  pauseVm(id: string): Promise<VmSummary>;
  resumeVm(id: string): Promise<VmSummary>;
  resetVm(id: string): Promise<VmSummary>;
  getVmLog(id: string): string[];
  getVmStats(id: string): Promise<VmStats>;
  /** Calls `listener` at once with the scroll-back (if any), then with live bytes. */
  subscribeConsole(id: string, port: ConsolePort, listener: (offset: number, data: Uint8Array) => void): () => void;
  sendConsoleInput(id: string, port: ConsolePort, data: string): void;
  chooseFile(choice: FileChoice): Promise<string | null>;
  onEvent(listener: (event: ServerEvent) => void): () => void;
}

const MAX_CONSOLE_SUBSCRIPTIONS = 64;

function arity(method: WireMethod, args: unknown[], count: number): void {
  if (args.length > count) {
    throw new ApiError('invalid-argument', `The call ${method} takes ${count === 0 ? 'no arguments' : count === 1 ? 'one argument' : `${count} arguments`}.`);
  }
}

export class ApiSession<Bytes> {
  private readonly consoles = new Map<string, () => void>();
  private readonly stopEvents: () => void;
  private closed = false;

  constructor(
    private readonly backend: ApiBackend,
    private readonly send: (message: ServerMessage<Bytes>) => void,
    private readonly encode: (data: Uint8Array) => Bytes,
    /** Where unexpected (non-ApiError) failures are reported with their stack. */
    private readonly reportBug: (e: unknown) => void = (e) => console.error('porthole: call failed:', e),
  ) {
    this.stopEvents = backend.onEvent((event) => this.post({ type: 'event', event }));
  }

  private post(message: ServerMessage<Bytes>): void {
    if (!this.closed) this.send(message);
  }

  /** Runs one call; never throws. `method` and `args` come straight from the client. */
  async call(method: unknown, args: unknown): Promise<WireResult> {
    try {
      if (typeof method !== 'string' || !(WIRE_METHODS as readonly string[]).includes(method)) {
        throw new ApiError('invalid-argument', `There is no call named ${JSON.stringify(String(method)).slice(0, 80)}.`);
      }
      if (!Array.isArray(args)) throw new ApiError('invalid-argument', 'The call arguments must be a list.');
      const value = await this.run(method as WireMethod, args);
      return { ok: true, value: value === undefined ? null : value };
    } catch (e) {
      if (e instanceof ApiError) return { ok: false, error: e.toJSON() };
      if (isApiErrorShape(e)) return { ok: false, error: { code: e.code, message: e.message } };
      this.reportBug(e);
      return { ok: false, error: { code: 'internal', message: 'Something went wrong inside Porthole; the app log has the details.' } };
    }
  }

  private async run(method: WireMethod, args: unknown[]): Promise<unknown> {
    const b = this.backend;
    const id = () => parseVmId(args[0]);
    switch (method) {
      case 'getInfo': arity(method, args, 0); return b.getInfo();
      case 'listVms': arity(method, args, 0); return b.listVms();
      case 'getVm': arity(method, args, 1); return b.getVm(id());
      case 'checkVmSpec': arity(method, args, 1); return b.checkVmSpec(args[0]);
      case 'createVm': arity(method, args, 1); return b.createVm(parseVmSpec(args[0]));
      case 'updateVm': {
        arity(method, args, 2);
        const vmId = id();
        return b.updateVm(vmId, parseVmSpec(args[1]));
      }
      case 'deleteVm': arity(method, args, 1); b.deleteVm(id()); return null;
      case 'startVm': arity(method, args, 1); return b.startVm(id());
      case 'stopVm': arity(method, args, 1); return b.stopVm(id());
      case 'forceOffVm': arity(method, args, 1); return b.forceOffVm(id());
      case 'pauseVm': arity(method, args, 1); return b.pauseVm(id());
      case 'resumeVm': arity(method, args, 1); return b.resumeVm(id());
      case 'resetVm': arity(method, args, 1); return b.resetVm(id());
      case 'getVmLog': arity(method, args, 1); return b.getVmLog(id());
      case 'getVmStats': arity(method, args, 1); return b.getVmStats(id());
      case 'sendConsoleInput': {
        arity(method, args, 3);
        const vmId = id();
        b.sendConsoleInput(vmId, parseConsolePort(args[1]), parseConsoleInput(args[2]));
        return null;
      }
      case 'openConsole': {
        arity(method, args, 3);
        const vmId = id();
        const port = parseConsolePort(args[1]);
        const sub = parseSubscriptionId(args[2]);
        this.closeConsole(sub);
        if (this.consoles.size >= MAX_CONSOLE_SUBSCRIPTIONS) {
          throw new ApiError('invalid-state', `A window may have at most ${MAX_CONSOLE_SUBSCRIPTIONS} consoles open.`);
        }
        const stop = b.subscribeConsole(vmId, port, (offset, data) => {
          this.post({ type: 'console', subscription: sub, offset, data: this.encode(data) });
        });
        this.consoles.set(sub, stop);
        return null;
      }
      case 'closeConsole': arity(method, args, 1); this.closeConsole(parseSubscriptionId(args[0])); return null;
      case 'chooseFile': arity(method, args, 1); return b.chooseFile(parseFileChoice(args[0]));
    }
  }

  private closeConsole(sub: string): void {
    const stop = this.consoles.get(sub);
    if (!stop) return;
    this.consoles.delete(sub);
    stop();
  }

  /** The client is gone: drop its subscriptions. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.stopEvents();
    for (const stop of this.consoles.values()) stop();
    this.consoles.clear();
  }
}
