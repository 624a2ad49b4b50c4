// The PC: the devices a machine is built from, in the order they are installed. Adding a
// device is one file (its model and a DeviceFactory, see devices/device.ts) and one line
// here. PCI devices go after the PCI platform, whose bus they attach to.
import type { DeviceFactory } from '../devices/device';
import { ahciDevices } from '../devices/ahci';
import { cmosDevice } from '../devices/cmos';
import { fwCfgDevice } from '../devices/fw-cfg';
import { i8042Device } from '../devices/i8042';
import { pciPlatformDevice } from '../devices/pci';
import { port92Device } from '../devices/port92';
import { debugConsoleDevice, debugExitDevice, postCodeDevice } from '../devices/simple';
import { serialPortDevice } from '../devices/uart16550';
import { usbControllerDevice } from '../devices/usb/xhci-pci';
import { virtioBlkDevices } from '../devices/virtio/blk';
import { nicDevices } from '../devices/net/nics';
import { vfioPciDevices } from '../devices/vfio';

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
  usbControllerDevice,
  virtioBlkDevices,
  nicDevices,
  ahciDevices,
  vfioPciDevices,
];
