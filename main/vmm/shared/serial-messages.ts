// What a COM port's UART and its host backend say to each other over the channel
// (target CHANNEL_TARGET.SERIAL + port): record kinds and their byte payloads.
import type { LineSettings, ModemControl } from '../devices/context';

export const SERIAL_KIND = {
  /** Host → machine: bytes for the guest to receive. */
  INPUT: 1,
  /** Host → machine: CTS/DSR/RI/DCD of a real device (one byte of bits). */
  MODEM_STATUS: 2,
  /** Machine → host: the guest programmed baud, data bits, parity, stop bits. */
  LINE_SETTINGS: 3,
  /** Machine → host: the guest's DTR/RTS (one byte of bits). */
  MODEM_CONTROL: 4,
} as const;

export interface ModemStatusLines {
  cts: boolean;
  dsr: boolean;
  ri: boolean;
  dcd: boolean;
}

export function encodeModemStatus(l: ModemStatusLines): Uint8Array {
  return Uint8Array.of((l.cts ? 1 : 0) | (l.dsr ? 2 : 0) | (l.ri ? 4 : 0) | (l.dcd ? 8 : 0));
}

export function decodeModemStatus(p: Uint8Array): ModemStatusLines | null {
  if (p.length !== 1) return null;
  return { cts: (p[0] & 1) !== 0, dsr: (p[0] & 2) !== 0, ri: (p[0] & 4) !== 0, dcd: (p[0] & 8) !== 0 };
}

export function encodeModemControl(m: ModemControl): Uint8Array {
  return Uint8Array.of((m.dtr ? 1 : 0) | (m.rts ? 2 : 0));
}

export function decodeModemControl(p: Uint8Array): ModemControl | null {
  if (p.length !== 1) return null;
  return { dtr: (p[0] & 1) !== 0, rts: (p[0] & 2) !== 0 };
}

const PARITIES: LineSettings['parity'][] = ['none', 'odd', 'even', 'mark', 'space'];

/** Baud (u32 LE), data bits, parity (index), stop bits. */
export function encodeLineSettings(s: LineSettings): Uint8Array {
  const out = new Uint8Array(7);
  new DataView(out.buffer).setUint32(0, s.baud >>> 0, true);
  out[4] = s.dataBits;
  out[5] = PARITIES.indexOf(s.parity);
  out[6] = s.stopBits;
  return out;
}

export function decodeLineSettings(p: Uint8Array): LineSettings | null {
  if (p.length !== 7) return null;
  const dataBits = p[4];
  const parity = PARITIES[p[5]];
  const stopBits = p[6];
  if (dataBits < 5 || dataBits > 8 || parity === undefined || (stopBits !== 1 && stopBits !== 2)) return null;
  return {
    baud: new DataView(p.buffer, p.byteOffset, 4).getUint32(0, true),
    dataBits: dataBits as LineSettings['dataBits'], parity, stopBits,
  };
}
