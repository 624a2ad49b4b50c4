// The VM's AHCI controller (PCI 00:05.0) with its SATA disks and CD-ROM drives, one a port in
// the order of the config's disks whose bus is 'sata'. Every image is opened and locked here,
// before the guest runs: a missing or locked one throws an ImageError naming it, and the
// images opened before it are closed again.
import { ConfigError } from '../../config';
import { counter, type DeviceContext, type DeviceFactory } from '../device';
import { RawImageFile } from '../usb/storage/block-backend';
import { openBlockImage } from '../block/open-image';
import { diskName } from '../../config';
import type { SataDrive } from './ata';
import { AtaDisk } from './ata-disk';
import { AtapiCdrom } from './atapi-cdrom';
import { AHCI_PORTS, AhciHba } from './hba';
import { AhciMedia, type MediaDrive } from './media';
import { CDROM_CHANNEL_TARGET } from '../../shared/cdrom-messages';

export { AhciHba } from './hba';
export { AtaDisk } from './ata-disk';
export { AtapiCdrom } from './atapi-cdrom';

/** Where the controller sits on bus 0. */
export const AHCI_PCI_SLOT = 5;

export const ahciDevices: DeviceFactory = (ctx: DeviceContext) => {
  const entries = (ctx.config.disks ?? []).map((disk, index) => ({ disk, index })).filter(({ disk }) => disk.bus === 'sata');
  if (entries.length === 0) return null;
  if (entries.length > AHCI_PORTS) throw new ConfigError(`at most ${AHCI_PORTS} SATA disks and CD-ROM drives (${entries.length} given)`);
  const stats = ctx.statistics;
  const drives: SataDrive[] = [];
  const cdroms: MediaDrive[] = [];
  let media: AhciMedia | null = null;
  try {
    for (const { disk, index } of entries) {
      const name = diskName(disk, index);
      // Synchronous: the machine thread sits in KVM_RUN (see RawImageOptions.synchronous).
      if (disk.media === 'cdrom') {
        const medium = disk.path === undefined ? null : RawImageFile.open(disk.path, { readOnly: true, synchronous: true });
        const drive: AtapiCdrom = new AtapiCdrom({
          name, medium, serial: disk.serial,
          counters: stats ? {
            reads: counter(stats, name, 'reads'), readBytes: counter(stats, name, 'read-bytes', 'bytes'),
            errors: counter(stats, name, 'errors'), mediaChanges: counter(stats, name, 'media-changes'),
          } : null,
          onEject: () => media?.guestEjected(drive),
        });
        cdroms.push({ drive, port: drives.length, path: disk.path ?? null });
        drives.push(drive);
        continue;
      }
      if (disk.path === undefined) throw new ConfigError(`${name}: a SATA disk needs an image path`);
      const backend = openBlockImage(disk.path, { readOnly: disk.readOnly, synchronous: true, ...(disk.format === undefined ? {} : { format: disk.format }) });
      drives.push(new AtaDisk({
        name, backend, serial: disk.serial,
        counters: stats ? {
          reads: counter(stats, name, 'reads'), writes: counter(stats, name, 'writes'),
          readBytes: counter(stats, name, 'read-bytes', 'bytes'), writeBytes: counter(stats, name, 'write-bytes', 'bytes'),
          flushes: counter(stats, name, 'flushes'), errors: counter(stats, name, 'errors'),
        } : null,
      }));
    }
  } catch (error) {
    for (const d of drives) d.close();
    throw error;
  }
  const hba = new AhciHba('ahci', drives, {
    router: ctx.interrupts,
    log: (text) => ctx.log(text),
    counters: stats ? { commands: counter(stats, 'ahci', 'commands'), errors: counter(stats, 'ahci', 'errors') } : null,
  });
  media = new AhciMedia(cdroms, {
    send: (kind, payload) => ctx.sendToHost(CDROM_CHANNEL_TARGET, kind, payload),
    setTimer: (delayMs, fn) => ctx.setTimer(delayMs, fn),
    log: (text) => ctx.log(text),
  });
  const changer = media;
  return {
    name: 'ahci',
    instance: hba,
    pci: [{ slot: AHCI_PCI_SLOT, fn: 0, device: hba }],
    hostMessages: { target: CDROM_CHANNEL_TARGET, handle: (kind, payload) => changer.handle(kind, payload) },
    close: () => {
      changer.close();
      hba.close();
    },
  };
};
