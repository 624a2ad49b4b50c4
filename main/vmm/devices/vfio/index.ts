// Host PCI functions assigned to the VM (config pciAssign): one VfioPciDevice each, PCI 00:18.0
// on, over the VFIO device fd the VM host opened (and keeps: it outlives machine launches). Each
// launch turns off what the previous one left on and resets the function (VFIO_DEVICE_RESET),
// so a VM reset resets the device as a PC's reset would.
import { VfioDevice } from '../../../../native/vfio';
import type { DeviceFactory } from '../device';
import { NativeVfioPciHost } from './native-host';
import { VfioPciDevice } from './vfio-pci';

export const VFIO_FIRST_SLOT = 24;

export const vfioPciDevices: DeviceFactory = (ctx) => {
  const assigned = ctx.config.pciAssign ?? [];
  if (assigned.length === 0) return null;
  const log = (text: string) => ctx.log(text);
  const devices = assigned.map((a) => {
    if (a.fd === undefined) throw new Error(`PCI function ${a.address} was not opened by the VM host`);
    const vfio = new VfioDevice(a.fd, a.address);
    const host = new NativeVfioPciHost(vfio, log);
    host.quiesce();
    const info = vfio.info();
    if (info.canReset) {
      try {
        vfio.reset();
        log(`${a.address}: reset (VFIO_DEVICE_RESET)`);
      } catch (e) {
        log(`${a.address}: reset refused (${(e as Error).message}); it starts as the last launch left it`);
      }
    } else {
      log(`${a.address}: VFIO offers no reset for it; its driver in the guest resets it`);
    }
    return new VfioPciDevice(`pci-${a.address}`, host, {
      msix: { router: ctx.interrupts, statistics: ctx.statistics },
      intx: ctx.interrupts,
      slots: ctx.slots,
      // SeaBIOS would run the function's option ROM (a NIC's iPXE) through trapped reads.
      romBar: false,
      log,
    });
  });
  return {
    name: 'vfio-pci',
    instance: devices,
    pci: devices.map((device, i) => ({ slot: VFIO_FIRST_SLOT + i, fn: 0, device })),
    // The fds stay open: the VM host owns them and closes them when the VM ends.
    close: () => { for (const d of devices) d.close(); },
  };
};
