// Root hub ports: PORTSC and friends, connect/disconnect, reset, link states. A port keeps its
// four registers as the guest reads them in `words` (the controller's register page), current
// after every change and before any event that tells the guest to look.
import type { UsbDevice, UsbSpeed } from '../usb-device';
import {
  PLS_DISABLED, PLS_POLLING, PLS_RESUME, PLS_RX_DETECT, PLS_U0, PLS_U3, PORTSC_CCS, PORTSC_CHANGES, PORTSC_CSC,
  PORTSC_LWS, PORTSC_PED, PORTSC_PIC_MASK, PORTSC_PLC, PORTSC_PLS_SHIFT, PORTSC_PP, PORTSC_PR, PORTSC_PRC,
  PORTSC_SPEED_SHIFT, PORTSC_WAKE_BITS, PORTSC_WPR, PORTSC_WRC, SPEED_FULL, SPEED_HIGH, SPEED_LOW, SPEED_SUPER,
} from './constants';

export function speedId(speed: UsbSpeed): number {
  switch (speed) {
    case 'low': return SPEED_LOW;
    case 'full': return SPEED_FULL;
    case 'high': return SPEED_HIGH;
    case 'super': return SPEED_SUPER;
  }
}

export interface PortEvents {
  /** A change bit went from 0 to 1: Port Status Change event. */
  changed(port: XhciPort): void;
  /** A port (or warm) reset reached the device: drop the transfers of its slot. */
  resetting(port: XhciPort): void;
}

export class XhciPort {
  device: UsbDevice | null = null;
  private enabled = false;
  private pls = PLS_RX_DETECT;
  private changes = 0;
  private wake = 0;
  private indicator = 0;

  /** `number` is 1-based; `words` are PORTSC, PORTPMSC, PORTLI (no link errors: 0) and PORTHLPMC. */
  constructor(readonly number: number, readonly usb3: boolean, private readonly events: PortEvents,
    private readonly words: Uint32Array = new Uint32Array(4)) {
    this.words.fill(0);
    this.sync();
  }

  get pmsc(): number { return this.words[1]; }
  set pmsc(v: number) { this.words[1] = v; }
  get hlpmc(): number { return this.words[3]; }
  set hlpmc(v: number) { this.words[3] = v; }

  /** PORTSC as the guest reads it, into `words`. */
  private sync(): void {
    this.words[0] = this.read();
  }

  /** Whether a device of this speed belongs on this port. */
  accepts(speed: UsbSpeed): boolean {
    return this.usb3 ? speed === 'super' : speed !== 'super';
  }

  get linkState(): number {
    return this.pls;
  }

  get isEnabled(): boolean {
    return this.enabled;
  }

  read(): number {
    let v = PORTSC_PP | this.changes | this.wake | this.indicator | (this.pls << PORTSC_PLS_SHIFT);
    if (this.device !== null) v |= PORTSC_CCS | (speedId(this.device.speed) << PORTSC_SPEED_SHIFT);
    if (this.enabled) v |= PORTSC_PED;
    return v >>> 0;
  }

  write(v: number): void {
    this.changes &= ~(v & PORTSC_CHANGES);
    this.wake = v & PORTSC_WAKE_BITS;
    this.indicator = v & PORTSC_PIC_MASK;
    if ((v & PORTSC_PED) && this.enabled) {
      // Software disables the port (PEC is only for errors).
      this.enabled = false;
      this.pls = this.usb3 ? PLS_DISABLED : PLS_POLLING;
    }
    if (v & PORTSC_PR) this.reset(false);
    else if (this.usb3 && (v & PORTSC_WPR)) this.reset(true);
    else if (v & PORTSC_LWS) this.writeLinkState((v >>> PORTSC_PLS_SHIFT) & 0xf);
    this.sync();
  }

  connect(device: UsbDevice): void {
    this.device = device;
    this.linkUp();
    this.change(PORTSC_CSC);
    this.sync();
  }

  disconnect(): void {
    const wasThere = this.device !== null;
    this.device = null;
    this.enabled = false;
    this.pls = PLS_RX_DETECT;
    if (wasThere) this.change(PORTSC_CSC);
    this.sync();
  }

  /** Host controller reset: back to power-on state, a device present shows as a new connection. */
  hcReset(): void {
    this.changes = 0;
    this.wake = this.indicator = this.pmsc = this.hlpmc = 0;
    this.enabled = false;
    this.pls = PLS_RX_DETECT;
    if (this.device !== null) {
      this.linkUp();
      this.changes = PORTSC_CSC;
    }
    this.sync();
  }

  /** Device-initiated resume (remote wake-up) from U3. */
  remoteWake(): boolean {
    if (this.device === null || !this.enabled || this.pls !== PLS_U3) return false;
    this.pls = this.usb3 ? PLS_U0 : PLS_RESUME;
    this.change(PORTSC_PLC);
    this.sync();
    return true;
  }

  /** A connected USB 3 port trains to U0 and is enabled; a USB 2 one waits in Polling for a reset. */
  private linkUp(): void {
    if (this.usb3) {
      this.enabled = true;
      this.pls = PLS_U0;
    } else {
      this.enabled = false;
      this.pls = PLS_POLLING;
    }
  }

  private reset(warm: boolean): void {
    if (this.device === null) return;
    this.events.resetting(this);
    this.device.reset();
    this.enabled = true;
    this.pls = PLS_U0;
    this.change(warm ? PORTSC_PRC | PORTSC_WRC : PORTSC_PRC);
  }

  private writeLinkState(target: number): void {
    if (this.device === null) return;
    switch (target) {
      case PLS_U0:
        if (this.enabled && this.pls !== PLS_U0) {
          this.pls = PLS_U0;
          this.change(PORTSC_PLC);
        }
        break;
      case PLS_U3:
        if (this.enabled && this.pls === PLS_U0) this.pls = PLS_U3; // no PLC on software suspend
        break;
      case PLS_RESUME:
        if (!this.usb3 && this.enabled && this.pls === PLS_U3) this.pls = PLS_RESUME;
        break;
      case PLS_DISABLED:
        if (this.usb3) {
          this.enabled = false;
          this.pls = PLS_DISABLED;
        }
        break;
      case PLS_RX_DETECT:
        if (this.usb3 && this.pls === PLS_DISABLED) {
          this.linkUp();
          this.change(PORTSC_PLC);
        }
        break;
      default:
        break; // U1/U2 and test states: not modelled, the link stays where it is
    }
  }

  private change(bits: number): void {
    const fresh = bits & ~this.changes;
    this.changes |= bits;
    // The event (and its interrupt, which may reach another vCPU at once) comes after the page is current.
    this.sync();
    if (fresh !== 0) this.events.changed(this);
  }

  /** For tests and the UI: whether a change bit is set. */
  hasChange(bit: number): boolean {
    return (this.changes & bit) !== 0;
  }
}

export { PORTSC_PRC, PORTSC_WRC, PORTSC_PLC };
