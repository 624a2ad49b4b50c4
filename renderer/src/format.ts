// Text shown in the UI and parsed from what users type. Pure functions.
import { LIMITS, type BootSpec, type ConsolePort, type VmState } from '../../main/api/contract';

export type MemoryParse = { ok: true; mib: number } | { ok: false; problem: string };

const UNIT_MIB: Record<string, number> = { k: 1 / 1024, m: 1, g: 1024, t: 1024 * 1024 };

/** "512", "512M", "512 MiB", "2G", "1.5 GiB" → MiB. A bare number means MiB. */
export function parseMemoryText(text: string): MemoryParse {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(text);
  if (!m) return { ok: false, problem: 'Memory must be a number with an optional unit, like 512M or 2G.' };
  const mib = Number(m[1]) * UNIT_MIB[m[2].toLowerCase() || 'm'];
  if (!Number.isInteger(mib)) return { ok: false, problem: 'Memory must be a whole number of MiB.' };
  if (mib < LIMITS.memoryMiBMin) return { ok: false, problem: `Memory must be at least ${LIMITS.memoryMiBMin} MiB.` };
  if (mib > LIMITS.memoryMiBMax) return { ok: false, problem: 'Memory must be at most 1 TiB.' };
  return { ok: true, mib };
}

/** 512 → "512 MiB", 2048 → "2 GiB", 1536 → "1.5 GiB". */
export function formatMemory(mib: number): string {
  if (mib >= 1024 * 1024 && mib % (1024 * 256) === 0) return `${mib / (1024 * 1024)} TiB`;
  if (mib >= 1024 && mib % 256 === 0) return `${mib / 1024} GiB`;
  return `${mib} MiB`;
}

/** What the memory field shows for a stored size: "512M", "2G". */
export function memoryFieldText(mib: number): string {
  return mib % 1024 === 0 ? `${mib / 1024}G` : `${mib}M`;
}

export const STATE_LABELS: Record<VmState, string> = {
  stopped: 'Stopped',
  starting: 'Starting',
  running: 'Running',
  paused: 'Paused',
  stopping: 'Stopping',
  crashed: 'Crashed',
};

export const PORT_LABELS: Record<ConsolePort, string> = {
  com1: 'COM1',
  com2: 'COM2',
  com3: 'COM3',
  com4: 'COM4',
  debugcon: 'Firmware log',
};

export function baseName(path: string): string {
  const i = path.lastIndexOf('/');
  return i < 0 ? path : path.slice(i + 1);
}

export function bootSummary(boot: BootSpec): string {
  switch (boot.kind) {
    case 'firmware':
      return boot.cdrom ? `SeaBIOS, ISO ${baseName(boot.cdrom)}` : 'SeaBIOS';
    case 'linux':
      return `Linux ${baseName(boot.kernel)}`;
    case 'flat':
      return `Test program ${baseName(boot.path)}`;
  }
}

export function cpuCount(n: number): string {
  return n === 1 ? '1 vCPU' : `${n} vCPUs`;
}

export function formatTime(iso: string): string {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

// COM port forwards: one text value in the spec, a kind plus a detail field in the UI.

export type ForwardKind = 'ui' | 'none' | 'pty' | 'tcp-listen' | 'tcp' | 'unix-listen' | 'unix' | 'file' | 'device';

export const FORWARD_KINDS: readonly { kind: ForwardKind; label: string; detail: string | null; placeholder: string }[] = [
  { kind: 'ui', label: 'App console only', detail: null, placeholder: '' },
  { kind: 'pty', label: 'Pseudo-terminal (pty)', detail: null, placeholder: '' },
  { kind: 'tcp-listen', label: 'TCP server', detail: 'Port or address:port', placeholder: '4555' },
  { kind: 'tcp', label: 'TCP client', detail: 'Host:port', placeholder: '127.0.0.1:4555' },
  { kind: 'unix-listen', label: 'Unix socket server', detail: 'Socket path', placeholder: '/tmp/com1.sock' },
  { kind: 'unix', label: 'Unix socket client', detail: 'Socket path', placeholder: '/tmp/com1.sock' },
  { kind: 'file', label: 'Append output to a file', detail: 'File path', placeholder: '/tmp/com1.log' },
  { kind: 'device', label: 'Host serial device', detail: 'Device path', placeholder: '/dev/ttyUSB0' },
  { kind: 'none', label: 'No port (guest sees none)', detail: null, placeholder: '' },
];

export function splitForward(value: string): { kind: ForwardKind; detail: string } {
  if (value === 'ui' || value === 'none' || value === 'pty') return { kind: value, detail: '' };
  if (value.startsWith('/')) return { kind: 'device', detail: value };
  const colon = value.indexOf(':');
  const scheme = colon < 0 ? value : value.slice(0, colon);
  const detail = colon < 0 ? '' : value.slice(colon + 1);
  const known = FORWARD_KINDS.find((k) => k.kind === scheme && k.detail !== null && k.kind !== 'device');
  return known ? { kind: known.kind, detail } : { kind: 'device', detail: value };
}

export function joinForward(kind: ForwardKind, detail: string): string {
  switch (kind) {
    case 'ui': case 'none': case 'pty': return kind;
    case 'device': return detail;
    default: return `${kind}:${detail}`;
  }
}
