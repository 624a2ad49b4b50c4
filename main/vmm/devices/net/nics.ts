// The VM's network cards (virtio-net or an NE2000 PCI, per the config's model): one PCI function each (00:10.0 on), each with a NicLink to its
// backend on the VM host thread. One device model owns the network channel target and routes
// records by NIC index.
import { defaultMac, parseMac } from '../../config';
import { decodeNetRecord, NET_CHANNEL_TARGET, NET_KIND } from '../../shared/net-messages';
import { decodeDataPlaneFailure } from '../../shared/dataplane-block';
import type { DeviceFactory } from '../device';
import { VirtioNet } from '../virtio/net';
import { Ne2000Pci } from './ne2000';
import { NicLink } from './nic-link';

export const NIC_FIRST_SLOT = 16;

/** A NIC's name in statistics and logs. */
export function nicName(index: number): string {
  return `net${index}`;
}

export const nicDevices: DeviceFactory = (ctx) => {
  const nics = ctx.config.nics ?? [];
  if (nics.length === 0) return null;
  const links: (NicLink | null)[] = [];
  const devices = nics.map((nic, i) => {
    const link = nic.backend.kind === 'none' ? null : new NicLink(i, {
      send: (kind, payload) => ctx.sendToHost(NET_CHANNEL_TARGET, kind, payload),
      setTimer: (delayMs, fn) => ctx.setTimer(delayMs, fn),
    });
    links.push(link);
    const mac = nic.mac !== undefined ? parseMac(nic.mac, `nics[${i}].mac`) : defaultMac(ctx.config.name, i);
    const common = { name: nicName(i), mac, link, statistics: ctx.statistics, log: (text: string) => ctx.log(text) };
    if (nic.model === 'ne2k_pci') return new Ne2000Pci(common);
    const plane = ctx.netDataPlanes?.[i] ?? null;
    return new VirtioNet({ ...common, router: ctx.interrupts, dataPlane: plane && { buffer: plane, doorbells: ctx.doorbells } });
  });
  for (const link of links) link?.hello();
  return {
    name: 'nics',
    instance: devices,
    pci: devices.map((device, i) => ({ slot: NIC_FIRST_SLOT + i, fn: 0, device })),
    hostMessages: {
      target: NET_CHANNEL_TARGET,
      handle: (kind, payload) => {
        const record = decodeNetRecord(payload);
        if (!record) return;
        if (kind === NET_KIND.DATAPLANE_FAILED) {
          const device = devices[record.nic];
          const failure = decodeDataPlaneFailure(payload);
          if (device instanceof VirtioNet && failure) device.dataPlaneFailed(failure.epoch, failure.why);
        } else links[record.nic]?.onRecord(kind, record.body);
      },
    },
    close: () => { for (const d of devices) d.close(); },
  };
};
