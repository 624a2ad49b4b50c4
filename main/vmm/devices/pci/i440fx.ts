// The i440FX host bridge at 00:00.0, with the IDs SeaBIOS uses to recognise QEMU's
// "pc" machine (8086:1237, subsystem 1af4:1100).
//
// PAM registers (0x59-0x5f) are stored and read back, but 0xc0000-0xfffff stays
// ordinary RAM whatever they say: the firmware boot copies the BIOS image into that RAM
// before the first instruction, so SeaBIOS's make_bios_writable finds the code it would
// have copied already there, and its later "read-only" PAM setting only protects against
// bugs, which we do not emulate. A reset rebuilds the machine and copies the image again.
import { PciDevice } from './pci-device';

export const I440FX_PAM0 = 0x59;
export const I440FX_PAM_COUNT = 7;
export const I440FX_SMRAM = 0x72;

export class I440fxHostBridge extends PciDevice {
  constructor() {
    super('i440fx', { vendorId: 0x8086, deviceId: 0x1237, classCode: 0x060000, revision: 0x02 });
    // PAM0 controls only 0xf0000-0xfffff (bits 4-5); PAM1-6 two 16 KiB halves each.
    this.writeMask[I440FX_PAM0] = 0x30;
    for (let i = 1; i < I440FX_PAM_COUNT; i++) this.writeMask[I440FX_PAM0 + i] = 0x33;
    // SMRAM: C_BASE_SEG reads 010 (0xa0000); the open/close/lock/enable bits are stored only.
    this.config[I440FX_SMRAM] = 0x02;
    this.writeMask[I440FX_SMRAM] = 0x78;
  }

  /** PAM attribute bits for each of the 7 registers, as the guest set them. */
  get pam(): number[] {
    return Array.from(this.config.subarray(I440FX_PAM0, I440FX_PAM0 + I440FX_PAM_COUNT));
  }
}
