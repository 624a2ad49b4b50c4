// The method table of the contract: every PortholeApi method written once, with its
// arguments (name and validator from schema.ts) and how it travels. The session dispatch
// (session.ts), the wire names (wire.ts), the browser client (web-client.ts), the preload
// (which gets `describeMethods()` from main over IPC) and the Electron IPC registration
// are all derived from it, so a new call is one entry here plus its handler in the
// backend (ApiBackend, implemented by the manager).
//
// No Node or DOM imports: the renderer may import this file.
import type { PortholeApi } from './contract';
import { parseConsoleInput, parseConsolePort, parseFileChoice, parseStatsInterval, parseVmId, parseVmSpec } from './schema';
import { parseCdromEjectSpec, parseCdromInsertSpec } from './media-input';
import { parsePciAddress, parsePciAssignRequest } from './pci-input';
import { parseHostUsbAttachSpec, parseUsbRule, parseUsbRuleIndex, parseUsbCaptureId, parseUsbCaptureOptions, parseUsbDeviceSpec, parseUsbKeys, parseUsbPort } from './usb-input';

/** One argument of a call: its name (used in error messages) and its validator. */
export interface ArgSpec<T = unknown> {
  readonly name: string;
  /** Returns the validated value or throws an ApiError "invalid-argument". */
  readonly parse: (input: unknown) => T;
  /**
   * The validator's messages about an object's fields already name the field ("Name is
   * required."), for the UI to show as they are; other messages get the argument's name.
   */
  readonly namesFields?: true;
}

/** How a stream's items travel on the event channel (the ServerMessage type). */
export type StreamMessageType = 'console' | 'vm-stats' | 'usb-transfers' | 'host-usb-devices';

export interface CallEntry {
  /** Wire name = method name; the backend method of the same name answers. */
  readonly kind: 'call';
  readonly args: readonly ArgSpec[];
}

export interface StreamEntry<Close extends string = string> {
  /**
   * Wire name = method name, called with the arguments plus a subscription id the client
   * picks; items then arrive as `message` messages on the event channel, and the wire call
   * `close(subscription)` ends the stream. The backend's `subscribe` method delivers.
   */
  readonly kind: 'stream';
  readonly args: readonly ArgSpec[];
  readonly close: Close;
  readonly message: StreamMessageType;
  readonly subscribe: 'subscribeConsole' | 'subscribeVmStats' | 'subscribeVmStatsEvery' | 'subscribeUsbTransfers' | 'subscribeHostUsbDevices';
  /** Open streams of this kind one client may hold, and what they are called in the refusal. */
  readonly maxPerSession: number;
  readonly noun: string;
}

export interface EventsEntry {
  /** PortholeApi.onEvent: events every client gets; nothing to call on the wire. */
  readonly kind: 'events';
}

export type MethodEntry = CallEntry | StreamEntry | EventsEntry;

const anything: ArgSpec<unknown> = { name: 'spec', parse: (input) => input };
const vmId: ArgSpec<string> = { name: 'id', parse: parseVmId };
const vmSpec = { name: 'spec', parse: parseVmSpec, namesFields: true } as const;
const consolePort = { name: 'port', parse: parseConsolePort } as const;
const consoleInput = { name: 'data', parse: parseConsoleInput } as const;
const fileChoice = { name: 'choice', parse: parseFileChoice } as const;
const usbDevice = { name: 'device', parse: parseUsbDeviceSpec, namesFields: true } as const;
const usbPort = { name: 'usbPort', parse: parseUsbPort } as const;
const usbKeys = { name: 'keys', parse: parseUsbKeys } as const;
const hostUsbSpec = { name: 'hostDevice', parse: parseHostUsbAttachSpec } as const;
const usbRule = { name: 'rule', parse: parseUsbRule } as const;
const usbRuleIndex = { name: 'index', parse: parseUsbRuleIndex } as const;
const statsInterval = { name: 'intervalMs', parse: parseStatsInterval } as const;
const usbCapture = { name: 'options', parse: parseUsbCaptureOptions } as const;
const usbCaptureId = { name: 'capture', parse: parseUsbCaptureId } as const;
const cdromInsert = { name: 'media', parse: parseCdromInsertSpec } as const;
const cdromEject = { name: 'eject', parse: parseCdromEjectSpec } as const;
// PCI assignment (issue 11 item 6)
const pciAssignRequest = { name: 'request', parse: parsePciAssignRequest } as const;
const pciAddress = { name: 'address', parse: parsePciAddress } as const;

function call<const A extends readonly ArgSpec[]>(...args: A): { readonly kind: 'call'; readonly args: A } {
  return { kind: 'call', args };
}

export const API_METHODS = {
  getInfo: call(),
  listVms: call(),
  getVm: call(vmId),
  /** The spec is checked by the backend itself: problems are the answer, not an error. */
  checkVmSpec: call(anything),
  createVm: call(vmSpec),
  updateVm: call(vmId, vmSpec),
  deleteVm: call(vmId),
  startVm: call(vmId),
  stopVm: call(vmId),
  forceOffVm: call(vmId),
  pauseVm: call(vmId),
  resumeVm: call(vmId),
  resetVm: call(vmId),
  getVmLog: call(vmId),
  getVmStats: call(vmId),
  watchVmStats: {
    kind: 'stream', args: [vmId], close: 'unwatchVmStats', message: 'vm-stats', subscribe: 'subscribeVmStats',
    maxPerSession: 64, noun: 'statistics streams',
  },
  watchVmStatsEvery: {
    kind: 'stream', args: [vmId, statsInterval], close: 'unwatchVmStatsEvery', message: 'vm-stats',
    subscribe: 'subscribeVmStatsEvery', maxPerSession: 64, noun: 'paced statistics streams',
  },
  openConsole: {
    kind: 'stream', args: [vmId, consolePort], close: 'closeConsole', message: 'console', subscribe: 'subscribeConsole',
    maxPerSession: 64, noun: 'consoles',
  },
  sendConsoleInput: call(vmId, consolePort, consoleInput),
  listUsbPorts: call(vmId),
  listUsbPathChoices: call(vmId),
  attachUsbDevice: call(vmId, usbDevice),
  detachUsbDevice: call(vmId, usbPort),
  sendUsbKeys: call(vmId, usbKeys),
  listUsbRules: call(vmId),
  addUsbRule: call(vmId, usbRule),
  removeUsbRule: call(vmId, usbRuleIndex),
  listHostUsbDevices: call(),
  listPciDevices: call(),
  // PCI assignment (issue 11 item 6)
  assignPciDevice: call(vmId, pciAssignRequest),
  returnPciDevice: call(vmId, pciAddress),
  attachHostUsbDevice: call(vmId, hostUsbSpec),
  watchHostUsbDevices: {
    kind: 'stream', args: [], close: 'unwatchHostUsbDevices', message: 'host-usb-devices', subscribe: 'subscribeHostUsbDevices',
    maxPerSession: 16, noun: 'host USB device lists',
  },
  startUsbCapture: call(vmId, usbCapture),
  stopUsbCapture: call(vmId, usbCaptureId),
  watchUsbTransfers: {
    kind: 'stream', args: [vmId], close: 'unwatchUsbTransfers', message: 'usb-transfers', subscribe: 'subscribeUsbTransfers',
    maxPerSession: 16, noun: 'USB transfer streams',
  },
  listCdromDrives: call(vmId),
  insertCdrom: call(vmId, cdromInsert),
  ejectCdrom: call(vmId, cdromEject),
  chooseFile: call(fileChoice),
  onEvent: { kind: 'events' },
} as const satisfies Record<keyof PortholeApi, MethodEntry>;

type Methods = typeof API_METHODS;
export type MethodName = keyof Methods;
export type CallName = { [K in MethodName]: Methods[K] extends { kind: 'call' } ? K : never }[MethodName];
export type StreamName = { [K in MethodName]: Methods[K] extends { kind: 'stream' } ? K : never }[MethodName];
export type CloseName = { [K in StreamName]: Methods[K]['close'] }[StreamName];

/** The validated arguments of call `K`, as the backend receives them. */
export type ParsedArgs<K extends CallName> = ParsedTuple<Methods[K]['args']>;
type ParsedTuple<A extends readonly ArgSpec[]> = { -readonly [I in keyof A]: A[I] extends ArgSpec<infer T> ? T : never };

/** The table without validators: what the preload gets from main over IPC (plain data). */
export interface MethodDescription {
  name: string;
  kind: MethodEntry['kind'];
  /** Arguments the caller passes (a stream's listener not counted). */
  argCount: number;
  /** Streams: the wire call that ends one. */
  close?: string;
  /** Streams: the event-channel message that carries its items. */
  message?: StreamMessageType;
}

export function methodEntries(): [MethodName, MethodEntry][] {
  return Object.entries(API_METHODS) as [MethodName, MethodEntry][];
}

export function describeMethods(): MethodDescription[] {
  return methodEntries().map(([name, e]) => {
    if (e.kind === 'events') return { name, kind: e.kind, argCount: 1 };
    if (e.kind === 'call') return { name, kind: e.kind, argCount: e.args.length };
    return { name, kind: e.kind, argCount: e.args.length, close: e.close, message: e.message };
  });
}

/** Every call name on the wire: the calls, the streams, and the streams' close calls. */
export function wireMethodNames(): string[] {
  const names: string[] = [];
  for (const [name, e] of methodEntries()) {
    if (e.kind === 'call') names.push(name);
    else if (e.kind === 'stream') names.push(name, e.close);
  }
  return names;
}
