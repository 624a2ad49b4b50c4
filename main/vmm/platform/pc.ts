// The PC: the devices a machine is built from, in the order they are installed. Adding a
// device is one file (its model and a DeviceFactory, see devices/device.ts) and one line
// here. PCI devices go after the PCI platform, whose bus they attach to.
import type { MachineConfig } from '../config';
import type { DeviceFactory } from '../devices/device';
import { cmosDevice } from '../devices/cmos';
import { fwCfgDevice } from '../devices/fw-cfg';
import { i8042Device } from '../devices/i8042';
import { pciPlatformDevice } from '../devices/pci';
import { port92Device } from '../devices/port92';
import { debugConsoleDevice, debugExitDevice, postCodeDevice } from '../devices/simple';
import { serialPortDevice } from '../devices/uart16550';

/**
 * A device family whose modules load only when the config may have one: a machine thread
 * starts sooner without the xHCI, disk, NIC and VFIO code it does not use. The factory
 * itself still decides (and returns null when the config has none after all).
 */
function loadedWhen(present: (config: MachineConfig) => boolean, load: () => DeviceFactory): DeviceFactory {
  return (ctx) => (present(ctx.config) ? load()(ctx) : null);
}

const hasDisks = (c: MachineConfig) => (c.disks?.length ?? 0) > 0;

export const PC_DEVICES: readonly DeviceFactory[] = [
  debugConsoleDevice,
  postCodeDevice,
  debugExitDevice,
  i8042Device,
  port92Device,
  serialPortDevice(0),
  serialPortDevice(1),
  serialPortDevice(2),
  serialPortDevice(3),
  cmosDevice,
  fwCfgDevice,
  pciPlatformDevice,
  loadedWhen((c) => c.usb !== undefined, () => (require('../devices/usb/xhci-pci') as typeof import('../devices/usb/xhci-pci')).usbControllerDevice),
  loadedWhen(hasDisks, () => (require('../devices/virtio/blk') as typeof import('../devices/virtio/blk')).virtioBlkDevices),
  loadedWhen((c) => (c.nics?.length ?? 0) > 0, () => (require('../devices/net/nics') as typeof import('../devices/net/nics')).nicDevices),
  loadedWhen(hasDisks, () => (require('../devices/ahci') as typeof import('../devices/ahci')).ahciDevices),
  loadedWhen((c) => (c.pciAssign?.length ?? 0) > 0, () => (require('../devices/vfio') as typeof import('../devices/vfio')).vfioPciDevices),
];
