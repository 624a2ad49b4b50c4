// The UI's picture of main: the VM library, app info, connection state, actions in
// flight and notices. Main re-sends a VM's whole summary on every change, so events
// simply replace what the store holds.
import { useSyncExternalStore } from 'react';
import {
  toApiError,
  type AppInfo, type LibraryProblem, type PortholeApi, type PortholeEvent, type VmId, type VmSummary,
} from '../../main/api/contract';

export interface Notice {
  id: number;
  kind: 'error' | 'info';
  text: string;
}

export interface StoreState {
  info: AppInfo | null;
  /** Sorted by name, then by creation time. */
  vms: readonly VmSummary[];
  problems: readonly LibraryProblem[];
  /** The first listVms has answered (or failed). */
  loaded: boolean;
  connected: boolean;
  loadError: string | null;
  /** What is being done to a VM right now ("Starting…"), by id. */
  busy: Readonly<Record<VmId, string>>;
  notices: readonly Notice[];
}

/** How many notices stay on screen; older ones are dropped. */
const MAX_NOTICES = 4;

export function errorSentence(e: unknown): string {
  return toApiError(e).message;
}

function byName(a: VmSummary, b: VmSummary): number {
  return a.spec.name.localeCompare(b.spec.name) || a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id);
}

export class VmStore {
  private state: StoreState = {
    info: null, vms: [], problems: [], loaded: false, connected: true, loadError: null, busy: {}, notices: [],
  };
  private readonly listeners = new Set<() => void>();
  private noticeCounter = 0;
  private refreshGeneration = 0;

  constructor(readonly api: PortholeApi) {}

  start(): void {
    this.api.onEvent((e) => this.onEvent(e));
    void this.loadInfo();
    void this.refresh();
  }

  subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener);
    return () => { this.listeners.delete(listener); };
  };

  getState = (): StoreState => this.state;

  private set(patch: Partial<StoreState>): void {
    this.state = { ...this.state, ...patch };
    for (const l of [...this.listeners]) l();
  }

  vm(id: VmId | null): VmSummary | null {
    return id === null ? null : this.state.vms.find((v) => v.id === id) ?? null;
  }

  private async loadInfo(): Promise<void> {
    try {
      this.set({ info: await this.api.getInfo() });
    } catch (e) {
      this.set({ loadError: errorSentence(e) });
    }
  }

  async refresh(): Promise<void> {
    const generation = ++this.refreshGeneration;
    try {
      const list = await this.api.listVms();
      if (generation !== this.refreshGeneration) return;
      this.set({ vms: [...list.vms].sort(byName), problems: list.problems, loaded: true, loadError: null });
    } catch (e) {
      if (generation !== this.refreshGeneration) return;
      this.set({ loaded: true, loadError: errorSentence(e) });
    }
  }

  private onEvent(e: PortholeEvent): void {
    switch (e.type) {
      case 'vm-updated':
        this.upsert(e.vm);
        break;
      case 'vm-removed':
        this.remove(e.id);
        break;
      case 'connection':
        this.set({ connected: e.status === 'connected' });
        if (e.status === 'connected') {
          void this.refresh();
          if (!this.state.info) void this.loadInfo();
        }
        break;
    }
  }

  /** Puts a summary main sent into the list (calls answer with one too). */
  upsert(vm: VmSummary): void {
    const others = this.state.vms.filter((v) => v.id !== vm.id);
    this.set({ vms: [...others, vm].sort(byName) });
  }

  remove(id: VmId): void {
    if (this.state.vms.some((v) => v.id === id)) this.set({ vms: this.state.vms.filter((v) => v.id !== id) });
  }

  /**
   * Runs one action on a VM, marking it busy meanwhile. A failure becomes an error
   * notice; the result (or null) is returned so callers can follow up.
   */
  async run<T>(id: VmId, label: string, action: () => Promise<T>, options: { exclusive?: boolean } = {}): Promise<T | null> {
    if ((options.exclusive ?? true) && this.state.busy[id]) return null;
    this.set({ busy: { ...this.state.busy, [id]: label } });
    try {
      // No upsert of the answer: events are authoritative and travel on another channel
      // in browser mode, so an answer could be older than the last event.
      return await action();
    } catch (e) {
      const name = this.vm(id)?.spec.name;
      this.notify('error', name ? `${name}: ${errorSentence(e)}` : errorSentence(e));
      return null;
    } finally {
      // A force-off may have replaced this label meanwhile; leave that one standing.
      if (this.state.busy[id] === label) {
        const { [id]: _done, ...rest } = this.state.busy;
        this.set({ busy: rest });
      }
    }
  }

  notify(kind: Notice['kind'], text: string): void {
    const notice = { id: ++this.noticeCounter, kind, text };
    this.set({ notices: [...this.state.notices, notice].slice(-MAX_NOTICES) });
  }

  dismiss(noticeId: number): void {
    this.set({ notices: this.state.notices.filter((n) => n.id !== noticeId) });
  }
}

export function useStore(store: VmStore): StoreState {
  return useSyncExternalStore(store.subscribe, store.getState);
}
