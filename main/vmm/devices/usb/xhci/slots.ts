// Device slots and endpoints: the commands of the command ring, over input and output
// device contexts (32-byte contexts).
import { DMA_OK } from '../../../memory/dma';
import type { UsbTransfer } from '../usb-device';
import {
  CC_COMMAND_ABORTED, CC_CONTEXT_STATE_ERROR, CC_NO_SLOTS, CC_PARAMETER_ERROR, CC_SLOT_NOT_ENABLED, CC_SUCCESS,
  CC_TRANSACTION_ERROR, CC_TRB_ERROR, EP_DISABLED, EP_ERROR, EP_HALTED, EP_RUNNING, EP_STOPPED, EPT_CONTROL,
  MAX_PORTS, MAX_SLOTS, SLOT_ADDRESSED, SLOT_CONFIGURED, SLOT_DEFAULT, SLOT_DISABLED, TRB_ADDRESS_DEVICE,
  TRB_CONFIGURE_ENDPOINT, TRB_DISABLE_SLOT, TRB_ENABLE_SLOT, TRB_EVALUATE_CONTEXT, TRB_NOOP_COMMAND,
  TRB_RESET_DEVICE, TRB_RESET_ENDPOINT, TRB_SET_TR_DEQUEUE, TRB_STOP_ENDPOINT,
} from './constants';
import { Endpoint, pointer, type Slot, type Trb, trbType, type XhciServices } from './core';
import type { TransferEngine } from './transfers';

/** How a command ended: a completion code and the slot ID for the event. */
export type CommandDone = (code: number, slotId: number) => void;

const CONTEXT = 32;

export class CommandRunner {
  /** The SET_ADDRESS of an Address Device command waiting for the device. */
  private pending: { transfer: UsbTransfer; slot: Slot; aborted: boolean } | null = null;

  constructor(
    private readonly hc: XhciServices,
    private readonly transfers: TransferEngine,
    private readonly dcbaap: () => number,
    private readonly maxSlotsEnabled: () => number,
  ) {}

  /** Runs a command; `done` is called once, now or later (Address Device waits for the device). */
  execute(trb: Trb, done: CommandDone): void {
    const slotId = trb.control >>> 24;
    this.hc.count('commands');
    switch (trbType(trb.control)) {
      case TRB_ENABLE_SLOT: return this.enableSlot(done);
      case TRB_DISABLE_SLOT: return this.withSlot(slotId, done, (slot) => this.disableSlot(slot));
      case TRB_ADDRESS_DEVICE: return this.addressDevice(trb, slotId, done);
      case TRB_CONFIGURE_ENDPOINT: return this.withSlot(slotId, done, (slot) => this.configureEndpoint(trb, slot));
      case TRB_EVALUATE_CONTEXT: return this.withSlot(slotId, done, (slot) => this.evaluateContext(trb, slot));
      case TRB_RESET_ENDPOINT: return this.withEndpoint(trb, slotId, done, (slot, ep) => this.resetEndpoint(slot, ep));
      case TRB_STOP_ENDPOINT: return this.withEndpoint(trb, slotId, done, (slot, ep) => this.stopEndpoint(slot, ep));
      case TRB_SET_TR_DEQUEUE: return this.withEndpoint(trb, slotId, done, (slot, ep) => this.setDequeue(trb, slot, ep));
      case TRB_RESET_DEVICE: return this.withSlot(slotId, done, (slot) => this.resetDevice(slot));
      case TRB_NOOP_COMMAND: return done(CC_SUCCESS, 0);
      default: return done(CC_TRB_ERROR, 0);
    }
  }

  /** Command Abort while Address Device waits: the SET_ADDRESS is cancelled. */
  abort(): void {
    const p = this.pending;
    if (p === null) return;
    p.aborted = true;
    this.transfers.deviceOf(p.slot)?.cancel(p.transfer);
  }

  get busy(): boolean {
    return this.pending !== null;
  }

  /** A controller reset: forget a pending SET_ADDRESS (its completion is ignored). */
  reset(): void {
    const p = this.pending;
    this.pending = null;
    if (p !== null) this.transfers.deviceOf(p.slot)?.cancel(p.transfer);
  }

  private slotCheck(slotId: number): number {
    if (slotId < 1 || slotId > MAX_SLOTS) return CC_TRB_ERROR;
    return this.hc.slots[slotId].enabled ? CC_SUCCESS : CC_SLOT_NOT_ENABLED;
  }

  private withSlot(slotId: number, done: CommandDone, run: (slot: Slot) => number): void {
    const check = this.slotCheck(slotId);
    if (check !== CC_SUCCESS) return done(check, slotId);
    const code = run(this.hc.slots[slotId]);
    if (code >= 0) done(code, slotId);
  }

  private withEndpoint(trb: Trb, slotId: number, done: CommandDone, run: (slot: Slot, ep: Endpoint) => number): void {
    this.withSlot(slotId, done, (slot) => {
      const dci = (trb.control >>> 16) & 0x1f;
      if (dci < 1) return CC_TRB_ERROR;
      const ep = slot.endpoints[dci];
      if (ep === null) return CC_CONTEXT_STATE_ERROR; // a Disabled endpoint
      return run(slot, ep);
    });
  }

  private enableSlot(done: CommandDone): void {
    const max = Math.min(MAX_SLOTS, this.maxSlotsEnabled());
    for (let id = 1; id <= max; id++) {
      const slot = this.hc.slots[id];
      if (slot.enabled) continue;
      this.clearSlot(slot);
      slot.enabled = true;
      return done(CC_SUCCESS, id);
    }
    done(CC_NO_SLOTS, 0);
  }

  private clearSlot(slot: Slot): void {
    this.transfers.abortSlot(slot);
    slot.endpoints.fill(null);
    slot.state = SLOT_DISABLED;
    slot.port = slot.address = slot.outputContext = slot.interrupterTarget = 0;
  }

  private disableSlot(slot: Slot): number {
    this.clearSlot(slot);
    slot.enabled = false;
    return CC_SUCCESS;
  }

  /** Reads `count` dwords of an input context; null after raising Host System Error. */
  private readInput(addr: number, count: number): Uint32Array | null {
    const bytes = new Uint8Array(count * 4);
    if (this.hc.dma.read(addr, bytes) !== DMA_OK) {
      this.hc.fatal(`input context at 0x${addr.toString(16)} is not readable`);
      return null;
    }
    const words = new Uint32Array(count);
    const view = new DataView(bytes.buffer);
    for (let i = 0; i < count; i++) words[i] = view.getUint32(i * 4, true);
    return words;
  }

  private writeOutput(addr: number, words: Uint32Array): boolean {
    const bytes = new Uint8Array(words.length * 4);
    const view = new DataView(bytes.buffer);
    for (let i = 0; i < words.length; i++) view.setUint32(i * 4, words[i], true);
    if (this.hc.dma.write(addr, bytes) === DMA_OK) return true;
    this.hc.fatal(`output context at 0x${addr.toString(16)} is not writable`);
    return false;
  }

  /** Writes a slot's state, address and Context Entries into its output slot context. */
  private writeSlotContext(slot: Slot): boolean {
    const base = slot.outputContext;
    const dw0 = this.hc.dma.readU32(base);
    const dw3 = this.hc.dma.readU32(base + 12);
    let entries = 1;
    for (let dci = 31; dci > 1; dci--) {
      if (slot.endpoints[dci] !== null) {
        entries = dci;
        break;
      }
    }
    if (dw0 < 0 || dw3 < 0
      || this.hc.dma.writeU32(base, ((dw0 & 0x07ffffff) | (entries << 27)) >>> 0) !== DMA_OK
      || this.hc.dma.writeU32(base + 12, ((dw3 & 0x07ffff00) | (slot.state << 27) | slot.address) >>> 0) !== DMA_OK) {
      this.hc.fatal(`slot ${slot.id}: output slot context at 0x${base.toString(16)} is not writable`);
      return false;
    }
    return true;
  }

  private addressDevice(trb: Trb, slotId: number, done: CommandDone): void {
    const check = this.slotCheck(slotId);
    if (check !== CC_SUCCESS) return done(check, slotId);
    const slot = this.hc.slots[slotId];
    const bsr = (trb.control & (1 << 9)) !== 0;
    if (bsr ? slot.state !== SLOT_DISABLED : slot.state !== SLOT_DISABLED && slot.state !== SLOT_DEFAULT) {
      return done(CC_CONTEXT_STATE_ERROR, slotId);
    }
    const input = this.readInput(pointer(trb.p0 & ~0xf, trb.p1), 24);
    if (input === null) return;
    if ((input[0] & 3) !== 0 || (input[1] & 3) !== 3) return done(CC_PARAMETER_ERROR, slotId);
    const slotCtx = input.subarray(8, 16);
    const ep0Ctx = input.subarray(16, 24);
    const portNumber = (slotCtx[1] >>> 16) & 0xff;
    if (portNumber < 1 || portNumber > MAX_PORTS) return done(CC_PARAMETER_ERROR, slotId);
    if (((ep0Ctx[1] >>> 3) & 7) !== EPT_CONTROL || ep0Ctx[1] >>> 16 === 0) return done(CC_PARAMETER_ERROR, slotId);
    const port = this.hc.ports[portNumber - 1];
    // No hubs: a route string means a device we cannot reach.
    if ((slotCtx[0] & 0xfffff) !== 0 || port.device === null || !port.isEnabled) return done(CC_TRANSACTION_ERROR, slotId);
    for (const other of this.hc.slots) {
      if (other !== slot && other.enabled && other.port === portNumber && other.state !== SLOT_DISABLED) {
        return done(CC_CONTEXT_STATE_ERROR, slotId); // the port's device already has a slot
      }
    }
    const entry = [0, 0];
    if (this.hc.dma.readU64Halves(this.dcbaap() + 8 * slotId, entry) !== DMA_OK) {
      this.hc.fatal(`DCBAA entry ${slotId} is not readable`);
      return;
    }
    const output = pointer(entry[0] & ~0x3f, entry[1]);
    if (this.hc.dma.check(output, 32 * CONTEXT, true) !== DMA_OK) {
      this.hc.fatal(`slot ${slotId}: output device context 0x${output.toString(16)} is not guest RAM`);
      return;
    }
    this.transfers.abortSlot(slot);
    slot.endpoints.fill(null);
    slot.port = portNumber;
    slot.outputContext = output;
    slot.interrupterTarget = slotCtx[2] >>> 22;
    const ep0 = new Endpoint(slot.id, 1);
    ep0.type = EPT_CONTROL;
    ep0.maxPacket = ep0Ctx[1] >>> 16;
    ep0.deq = ep0.fetch = pointer(ep0Ctx[2] & ~0xf, ep0Ctx[3]);
    ep0.deqCycle = ep0.fetchCycle = ep0Ctx[2] & 1;
    ep0.state = EP_RUNNING;
    slot.endpoints[1] = ep0;
    const outEp0 = Uint32Array.from(ep0Ctx);
    outEp0[0] = (outEp0[0] & ~7) | EP_RUNNING;
    if (!this.writeOutput(output, slotCtx) || !this.writeOutput(output + CONTEXT, outEp0)) return;
    if (bsr) {
      slot.state = SLOT_DEFAULT;
      slot.address = 0;
      if (this.writeSlotContext(slot)) done(CC_SUCCESS, slotId);
      return;
    }
    // BSR=0: the device gets SET_ADDRESS with the slot ID as its address.
    const device = port.device;
    const transfer: UsbTransfer = {
      endpoint: 0, in: false, type: 'control', data: new Uint8Array(0), status: 'pending', actualLength: 0,
      setup: { requestType: 0, request: 5, value: slotId, index: 0, length: 0 },
    };
    const pending = { transfer, slot, aborted: false };
    this.pending = pending;
    let called = false;
    device.submit(transfer, (t) => {
      if (called || this.pending !== pending) return;
      called = true;
      this.pending = null;
      if (pending.aborted) return done(CC_COMMAND_ABORTED, slotId);
      if (t.status === 'ok') {
        slot.state = SLOT_ADDRESSED;
        slot.address = slotId;
      } else {
        slot.state = SLOT_DEFAULT;
        slot.address = 0;
      }
      if (this.writeSlotContext(slot)) done(t.status === 'ok' ? CC_SUCCESS : CC_TRANSACTION_ERROR, slotId);
    });
  }

  private configureEndpoint(trb: Trb, slot: Slot): number {
    if (slot.state !== SLOT_ADDRESSED && slot.state !== SLOT_CONFIGURED) return CC_CONTEXT_STATE_ERROR;
    if (trb.control & (1 << 9)) {
      // Deconfigure: every endpoint but EP0 goes.
      for (let dci = 2; dci <= 31; dci++) this.dropEndpoint(slot, dci);
      slot.state = SLOT_ADDRESSED;
      return this.writeSlotContext(slot) ? CC_SUCCESS : -1;
    }
    const input = this.readInput(pointer(trb.p0 & ~0xf, trb.p1), 8 * 33);
    if (input === null) return -1;
    const drop = input[0] & ~3;
    const add = input[1] & ~3;
    // Check everything before changing anything: a bad context leaves the slot as it was.
    for (let dci = 2; dci <= 31; dci++) {
      if ((add & (1 << dci)) === 0) continue;
      const ctx = input.subarray(8 * (dci + 1), 8 * (dci + 2));
      const type = (ctx[1] >>> 3) & 7;
      const isIn = type >= 4;
      if (type === 0 || isIn !== ((dci & 1) === 1)) return CC_PARAMETER_ERROR;
      if (ctx[1] >>> 16 === 0) return CC_PARAMETER_ERROR; // Max Packet Size
      if (((ctx[0] >>> 10) & 0x1f) !== 0) return CC_PARAMETER_ERROR; // streams (MaxPSASize is 0)
      if (pointer(ctx[2] & ~0xf, ctx[3]) === 0) return CC_PARAMETER_ERROR;
    }
    for (let dci = 2; dci <= 31; dci++) if (drop & (1 << dci)) this.dropEndpoint(slot, dci);
    for (let dci = 2; dci <= 31; dci++) {
      if ((add & (1 << dci)) === 0) continue;
      const old = slot.endpoints[dci];
      if (old !== null) this.transfers.abort(slot, old);
      const ctx = Uint32Array.from(input.subarray(8 * (dci + 1), 8 * (dci + 2)));
      const ep = new Endpoint(slot.id, dci);
      ep.type = (ctx[1] >>> 3) & 7;
      ep.maxPacket = ctx[1] >>> 16;
      ep.maxBurst = (ctx[1] >>> 8) & 0xff;
      ep.mult = (ctx[0] >>> 8) & 3;
      ep.deq = ep.fetch = pointer(ctx[2] & ~0xf, ctx[3]);
      ep.deqCycle = ep.fetchCycle = ctx[2] & 1;
      ep.state = EP_RUNNING;
      slot.endpoints[dci] = ep;
      ctx[0] = (ctx[0] & ~7) | EP_RUNNING;
      if (!this.writeOutput(slot.outputContext + CONTEXT * dci, ctx)) return -1;
    }
    let configured = false;
    for (let dci = 2; dci <= 31; dci++) if (slot.endpoints[dci] !== null) configured = true;
    slot.state = configured ? SLOT_CONFIGURED : SLOT_ADDRESSED;
    return this.writeSlotContext(slot) ? CC_SUCCESS : -1;
  }

  private dropEndpoint(slot: Slot, dci: number): void {
    const ep = slot.endpoints[dci];
    if (ep === null) return;
    this.transfers.abort(slot, ep);
    slot.endpoints[dci] = null;
    const base = slot.outputContext + CONTEXT * dci;
    const dw0 = this.hc.dma.readU32(base);
    if (dw0 < 0 || this.hc.dma.writeU32(base, (dw0 & ~7) >>> 0 | EP_DISABLED) !== DMA_OK) {
      this.hc.fatal(`slot ${slot.id}: output endpoint context at 0x${base.toString(16)} is not writable`);
    }
  }

  private evaluateContext(trb: Trb, slot: Slot): number {
    if (slot.state === SLOT_DISABLED) return CC_CONTEXT_STATE_ERROR;
    const input = this.readInput(pointer(trb.p0 & ~0xf, trb.p1), 24);
    if (input === null) return -1;
    const add = input[1];
    const dma = this.hc.dma;
    const out = slot.outputContext;
    if (add & 1) {
      // Max Exit Latency and Interrupter Target.
      const dw1 = dma.readU32(out + 4);
      const dw2 = dma.readU32(out + 8);
      if (dw1 < 0 || dw2 < 0
        || dma.writeU32(out + 4, ((dw1 & ~0xffff) | (input[9] & 0xffff)) >>> 0) !== DMA_OK
        || dma.writeU32(out + 8, ((dw2 & 0x3fffff) | (input[10] & ~0x3fffff)) >>> 0) !== DMA_OK) {
        this.hc.fatal(`slot ${slot.id}: output slot context is not writable`);
        return -1;
      }
      slot.interrupterTarget = input[10] >>> 22;
    }
    if (add & 2) {
      const mps = input[17] >>> 16;
      const ep0 = slot.endpoints[1];
      if (mps === 0 || ep0 === null) return CC_PARAMETER_ERROR;
      const dw1 = dma.readU32(out + CONTEXT + 4);
      if (dw1 < 0 || dma.writeU32(out + CONTEXT + 4, ((dw1 & 0xffff) | (mps << 16)) >>> 0) !== DMA_OK) {
        this.hc.fatal(`slot ${slot.id}: output EP0 context is not writable`);
        return -1;
      }
      ep0.maxPacket = mps;
    }
    return CC_SUCCESS;
  }

  private resetEndpoint(slot: Slot, ep: Endpoint): number {
    if (ep.state !== EP_HALTED) return CC_CONTEXT_STATE_ERROR;
    ep.state = EP_STOPPED;
    this.transfers.writeEndpointContext(slot, ep);
    return CC_SUCCESS;
  }

  private stopEndpoint(slot: Slot, ep: Endpoint): number {
    if (ep.state !== EP_RUNNING) return CC_CONTEXT_STATE_ERROR;
    this.transfers.stop(slot, ep);
    return CC_SUCCESS;
  }

  private setDequeue(trb: Trb, slot: Slot, ep: Endpoint): number {
    if (ep.state !== EP_STOPPED && ep.state !== EP_ERROR) return CC_CONTEXT_STATE_ERROR;
    const ptr = pointer(trb.p0 & ~0xf, trb.p1);
    if (ptr === 0 || this.hc.dma.check(ptr, 16) !== DMA_OK) return CC_PARAMETER_ERROR;
    ep.deq = ep.fetch = ptr;
    ep.deqCycle = ep.fetchCycle = trb.p0 & 1;
    this.transfers.writeEndpointContext(slot, ep);
    return CC_SUCCESS;
  }

  private resetDevice(slot: Slot): number {
    if (slot.state !== SLOT_ADDRESSED && slot.state !== SLOT_CONFIGURED) return CC_CONTEXT_STATE_ERROR;
    for (let dci = 2; dci <= 31; dci++) this.dropEndpoint(slot, dci);
    const ep0 = slot.endpoints[1];
    if (ep0 !== null) this.transfers.abort(slot, ep0);
    slot.state = SLOT_DEFAULT;
    slot.address = 0;
    return this.writeSlotContext(slot) ? CC_SUCCESS : -1;
  }
}
