// The devices L1 can have, each opt-in per scenario (or per `npm run rig -- exec --devices`),
// as QEMU arguments plus the table of devices a scenario may unplug and plug again at run time.
import fs from 'node:fs';
import path from 'node:path';
import { FAT_STICK, ensureFatStickImage } from './fat-stick';
import { STICKS, ensureStickImage, type StickSpec } from './sticks';

export interface RigDevices {
  /** qemu-xhci (xhci0) with stick0 (usb-storage) on port 1, a usb-kbd on port 2, a usb-serial (FTDI) on port 3. */
  usb?: boolean;
  /** A second qemu-xhci (xhci1) with stick1, for assigning a whole controller through VFIO. */
  extraXhci?: boolean;
  /** An e1000 on user-mode networking, for VFIO assignment of a NIC. */
  e1000?: boolean;
  /** intel-iommu with interrupt remapping, so L1 has IOMMU groups and VFIO. */
  iommu?: boolean;
  /** usb-audio (isochronous OUT) on xhci0 port 4, on a wav audiodev whose file lands on the rig host. */
  usbAudio?: boolean;
  /** fatstick (usb-storage, serial RIGFAT0) on xhci0 port 5: a FAT filesystem with known files. */
  fatStick?: boolean;
  /** An NVMe controller with SR-IOV (2 virtual functions) behind its own root port; namespace 1 shared, namespace 2 attached to none. */
  nvmeSriov?: boolean;
  /** Two empty PCIe root ports (hp0, hp1) that PCI devices can be hot-plugged into. */
  pciSlots?: boolean;
  /**
   * L1's own user-mode network to the rig host (L1 is 10.0.2.15, the host's loopback is
   * 10.0.2.2), with ports forwarded on request: a browser on the host drives a UI in L1.
   */
  rigNet?: boolean;
}

/** The MAC of the rigNet NIC, by which L1's /init finds and configures it. */
export const RIG_NET_MAC = '52:54:00:72:69:67';
export const RIG_NET_L1_ADDRESS = '10.0.2.15';
export const RIG_NET_HOST_ADDRESS = '10.0.2.2';

/**
 * Stream services on the e1000's user network, run by the rig host's QEMU for each connection
 * (guestfwd): the sink reads `bytes` and answers how many it got; the source sends `bytes` of
 * zeros and closes. The vfio bench times TCP through an assigned e1000 with them.
 */
export const E1000_STREAM = { address: '10.0.2.100', sinkPort: 5555, sourcePort: 5556, bytes: 16 * 1048576 } as const;

/** The names `--devices` takes, and the flag each sets. */
export const DEVICE_NAMES: Record<string, keyof RigDevices> = {
  usb: 'usb', 'extra-xhci': 'extraXhci', e1000: 'e1000', iommu: 'iommu', 'usb-audio': 'usbAudio',
  'fat-stick': 'fatStick', 'nvme-sriov': 'nvmeSriov', 'pci-slots': 'pciSlots', 'rig-net': 'rigNet',
};

export const ALL_DEVICES: RigDevices = Object.fromEntries(Object.values(DEVICE_NAMES).map((k) => [k, true])) as RigDevices;

/** Parses `usb,extra-xhci,...`; `all` means every device. */
export function parseDeviceList(list: string): RigDevices {
  const out: RigDevices = {};
  for (const raw of list.split(',').map((s) => s.trim()).filter(Boolean)) {
    if (raw === 'all') return { ...ALL_DEVICES };
    const key = DEVICE_NAMES[raw];
    if (!key) throw new Error(`unknown device "${raw}"; known: ${Object.keys(DEVICE_NAMES).join(', ')}, all`);
    out[key] = true;
  }
  // Devices that live on xhci0 need it.
  if (out.usbAudio || out.fatStick) out.usb = true;
  return out;
}

/** A device a scenario may unplug and plug again: its QEMU driver and properties. */
export interface PluggableDevice {
  id: string;
  driver: string;
  props: Record<string, string | number | boolean>;
}

export interface RigDeviceArgs {
  qemu: string[];
  kernel: string[];
  pluggable: Map<string, PluggableDevice>;
  /** Files QEMU writes on the rig host into the run's out folder (L1's /rig-out), by name. */
  hostFiles: Record<string, string>;
  /** Per-run copies of the stick images; removed when the run ends. */
  scratch: string[];
}

/**
 * QEMU arguments for `d`. Sticks are per-run copies behind -blockdev, so a scenario may write
 * to them and may unplug and plug them again (a -drive would be deleted with its device).
 */
export function deviceArgs(d: RigDevices, stickDir: string, runDir: string, outDir: string): RigDeviceArgs {
  const qemu: string[] = [];
  const kernel: string[] = [];
  const pluggable = new Map<string, PluggableDevice>();
  const hostFiles: Record<string, string> = {};
  const scratch: string[] = [];
  const add = (dev: PluggableDevice) => {
    pluggable.set(dev.id, dev);
    const props: [string, string | number | boolean][] = [...Object.entries(dev.props), ['id', dev.id]];
    qemu.push('-device', [dev.driver, ...props.map(([k, v]) => `${k}=${v === true ? 'on' : v === false ? 'off' : v}`)].join(','));
  };
  const blockdev = (label: string, image: string) => {
    const copy = path.join(runDir, `${label}.img`);
    fs.copyFileSync(image, copy);
    scratch.push(copy);
    qemu.push('-blockdev', `driver=raw,node-name=${label},file.driver=file,file.filename=${copy}`);
    return label;
  };
  const stick = (bus: string, port: number, s: StickSpec) => {
    add({ id: s.label, driver: 'usb-storage', props: { bus: `${bus}.0`, port: String(port), drive: blockdev(`${s.label}-disk`, ensureStickImage(stickDir, s)), serial: s.serial } });
  };

  // The IOMMU goes first: QEMU wants it before the PCI devices it translates for.
  if (d.iommu) {
    qemu.push('-device', 'intel-iommu,intremap=on');
    kernel.push('intel_iommu=on', 'iommu=pt');
  }
  if (d.usb) {
    qemu.push('-device', 'qemu-xhci,id=xhci0,p2=8,p3=8');
    stick('xhci0', 1, STICKS.stick0);
    add({ id: 'kbd0', driver: 'usb-kbd', props: { bus: 'xhci0.0', port: '2' } });
    // usb-serial attaches only once its chardev is open; a null chardev never is, a ringbuf always.
    qemu.push('-chardev', 'ringbuf,id=usbserial0');
    add({ id: 'serial0', driver: 'usb-serial', props: { bus: 'xhci0.0', port: '3', chardev: 'usbserial0' } });
  }
  if (d.usbAudio) {
    hostFiles['usb-audio.wav'] = path.join(outDir, 'usb-audio.wav');
    qemu.push('-audiodev', `wav,id=rigwav,path=${hostFiles['usb-audio.wav']}`);
    add({ id: 'audio0', driver: 'usb-audio', props: { bus: 'xhci0.0', port: '4', audiodev: 'rigwav' } });
  }
  if (d.fatStick) {
    // xhci0's ports each take USB 2 and USB 3 devices; 6 to 8 stay free for plugging.
    add({ id: FAT_STICK.label, driver: 'usb-storage', props: { bus: 'xhci0.0', port: '5', drive: blockdev(`${FAT_STICK.label}-disk`, ensureFatStickImage(stickDir)), serial: FAT_STICK.serial } });
  }
  if (d.extraXhci) {
    qemu.push('-device', 'qemu-xhci,id=xhci1');
    stick('xhci1', 1, STICKS.stick1);
  }
  if (d.e1000) {
    const { address, sinkPort, sourcePort, bytes } = E1000_STREAM;
    // libslirp runs a guestfwd command without a shell (it splits the words itself).
    qemu.push('-netdev', `user,id=net0,guestfwd=tcp:${address}:${sinkPort}-cmd:sh -c 'head -c ${bytes} | wc -c',guestfwd=tcp:${address}:${sourcePort}-cmd:head -c ${bytes} /dev/zero`);
    add({ id: 'nic0', driver: 'e1000', props: { netdev: 'net0' } });
  }
  if (d.nvmeSriov) {
    const image = path.join(runDir, 'nvme0.img');
    fs.writeFileSync(image, '');
    fs.truncateSync(image, 32 * 1048576);
    scratch.push(image);
    qemu.push('-blockdev', `driver=raw,node-name=nvme0-disk,file.driver=file,file.filename=${image}`);
    qemu.push('-device', 'pcie-root-port,id=nvmerp,chassis=10,slot=10');
    qemu.push('-device', 'nvme-subsys,id=nvmesubsys0,nqn=porthole-rig');
    // Flexible queue and interrupt resources: the PF keeps the private ones and hands the
    // flexible ones to its VFs (nvme virt-mgmt) before they come up.
    qemu.push('-device', 'nvme,id=nvme0,serial=RIGNVME0,bus=nvmerp,subsys=nvmesubsys0,sriov_max_vfs=2,sriov_vq_flexible=4,sriov_vi_flexible=2,max_ioqpairs=6,msix_qsize=5');
    // Shared, so a VF's controller may have it attached too (nvme attach-ns; vfio-msix-l2).
    qemu.push('-device', 'nvme-ns,drive=nvme0-disk,bus=nvme0,nsid=1,shared=true,detached=false');
    // A second namespace attached to no controller, so scenarios that do not ask for it see only
    // nsid 1; vfio-sriov-l2 attaches it to the PF and one VF (nvme attach-ns).
    const image2 = path.join(runDir, 'nvme0-ns2.img');
    fs.writeFileSync(image2, '');
    fs.truncateSync(image2, 32 * 1048576);
    scratch.push(image2);
    qemu.push('-blockdev', `driver=raw,node-name=nvme0-disk2,file.driver=file,file.filename=${image2}`);
    qemu.push('-device', 'nvme-ns,drive=nvme0-disk2,bus=nvme0,nsid=2,shared=true,detached=true');
  }
  if (d.rigNet) {
    qemu.push('-netdev', 'user,id=rignet,net=10.0.2.0/24', '-device', `virtio-net-pci,netdev=rignet,mac=${RIG_NET_MAC}`);
  }
  if (d.pciSlots) {
    qemu.push('-device', 'pcie-root-port,id=hp0,chassis=20,slot=20', '-device', 'pcie-root-port,id=hp1,chassis=21,slot=21');
  }
  return { qemu, kernel, pluggable, hostFiles, scratch };
}
