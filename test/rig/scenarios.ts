// The rig's scenarios as the runner sees them: what L1 needs and how long each may take.
// The code each one runs inside L1 is scenarios/<name>.ts (compiled to dist/).

import { ALL_DEVICES, type RigDevices } from './devices';
export type { RigDevices };

/** Which TCG L1 runs on: one host thread for all vCPUs, or one each. */
export type TcgMode = 'single' | 'multi';

export interface ScenarioSpec {
  name: string;
  description: string;
  devices: RigDevices;
  /** Seconds from starting QEMU until the scenario starts in L1. */
  bootTimeoutSec: number;
  /** Seconds from the scenario's start until its RIG-RESULT line. */
  timeoutSec: number;
  /** What a healthy run ends with: a result, or (for the runner's own test) the timeout. */
  expect: 'pass' | 'timeout';
  /** Fast enough for CI (test/integration/rig-*.test.ts); the rest run behind npm run test:rig. */
  ci: boolean;
  /** TCG threading for L1; default: the rig QEMU's (rig-qemu.ts: multi from QEMU 10 on, single before). */
  tcg?: TcgMode;
}

export const SCENARIOS: ScenarioSpec[] = [
  {
    name: 'l1-kvm',
    description: 'L1 has a working /dev/kvm (nested SVM): Porthole\'s native layer creates a VM and runs a flat test guest',
    // Healthy runs take 15-18 s; a short limit keeps a stalled L1 (retried once) cheap.
    devices: {}, bootTimeoutSec: 240, timeoutSec: 90, expect: 'pass', ci: true,
  },
  {
    name: 'usb-iommu',
    description: 'node-usb sees the rig\'s USB devices, stick0 reads back its known contents, IOMMU groups exist, an e1000 binds to vfio-pci, the FAT stick\'s files match, usb-audio binds, and stick0 is unplugged, replugged and re-enumerated through QMP',
    devices: ALL_DEVICES, bootTimeoutSec: 240, timeoutSec: 180, expect: 'pass', ci: true,
  },
  {
    name: 'kit-qemu',
    description: 'QEMU (KVM) in L1 boots the L2 kit; the console helper runs uname, counts CPUs and lists PCI devices; Debian\'s lsusb and aplay run in the kit',
    // Multi-threaded TCG: on single-threaded TCG under load, QEMU's 2-vCPU L2 printed nothing
    // in 240 s (one run of one, load average 5); multi-threaded, it reaches its shell in 45 s.
    devices: {}, bootTimeoutSec: 240, timeoutSec: 300, expect: 'pass', ci: true, tcg: 'multi',
  },
  {
    name: 'smoke',
    description: 'Porthole (porthole run --kernel) boots the L2 kit in L1; uname -r, CPU count and lspci -nn over its serial console; Linux drivers find our 16550A, i8042 and CMOS RTC; poweroff ends Porthole through ACPI S5',
    // Healthy runs take 25-80 s on a busy 2-core host. Multi-threaded TCG until Porthole's L2
    // stops hanging on single-threaded TCG (issue 7).
    devices: {}, bootTimeoutSec: 240, timeoutSec: 300, expect: 'pass', ci: true, tcg: 'multi',
  },
  {
    name: 'usb-l2',
    description: 'Porthole boots the L2 kit with an emulated keyboard, tablet, three sticks and a serial port on its xHCI; Linux\'s xhci_hcd (MSI-X), usb-storage and usbhid enumerate them at their speeds, dd reads the known pattern, a write from L2 lands in the image, the read-only stick is write-protected, cdc_acm carries bytes both ways between /dev/ttyACM0 and a host PTY; prints the MB/s of a 64 MiB dd read and write',
    // Multi-threaded TCG as for every L2 Linux boot (smoke). Boot 25-80 s, the 64 MiB dd runs and checks a few minutes.
    devices: {}, bootTimeoutSec: 240, timeoutSec: 1500, expect: 'pass', ci: false, tcg: 'multi',
  },
  {
    name: 'virtio-l2',
    description: 'Porthole boots the L2 kit (2 vCPUs) with two virtio-blk disks (porthole run --disk, one with 2 queues, one read-only); Linux\'s virtio-pci (MSI-X) and virtio_blk find them with their sizes, serial and queues, dd reads the known pattern, a write from L2 lands in the image, the read-only disk refuses writes',
    // Multi-threaded TCG as for every L2 Linux boot (smoke).
    devices: {}, bootTimeoutSec: 240, timeoutSec: 900, expect: 'pass', ci: false, tcg: 'multi',
  },
  {
    name: 'net-l2',
    description: 'Porthole boots the L2 kit with a virtio-net card and an NE2000 PCI card, each on a TAP in L1 (porthole run --nic virtio,tap=… --nic ne2k_pci,tap=…); Linux\'s virtio_net and ne2k-pci bind them with our MACs, L1 and L2 ping each other over each, 4 MiB (virtio) and 2 MiB (NE2000) go each way over TCP with md5 compared, and Debian\'s tshark reads each pcap (ICMP both ways, the TCP streams, nothing malformed)',
    // One L2 boot (25-80 s) and 12 MiB through the TAPs; multi-threaded TCG as for every L2 Linux boot.
    devices: {}, bootTimeoutSec: 240, timeoutSec: 900, expect: 'pass', ci: false, tcg: 'multi',
  },
  {
    name: 'usb-passthrough-l2',
    description: 'host USB passthrough with L1 as the host: Porthole passes L1\'s stick0 (usb-storage) to the L2 kit through node-usb and its xHCI; L1\'s driver lets go, L2 reads the stick\'s md5, a write from L2 reads back in L1 after the detach, L1\'s usb-storage and /dev/sdX come back; a SIGKILL with the stick held is repaired from the journal; dd MB/s in L2 beside QEMU usb-host passing the same stick (the ratio)',
    // One L2 boot (25-80 s) and a 16 MiB stick read twice over passthrough.
    devices: { usb: true }, bootTimeoutSec: 240, timeoutSec: 1200, expect: 'pass', ci: false, tcg: 'multi',
  },
  {
    name: 'usb-crash',
    description: 'host USB devices go home after crashes, with L1 as the host and the manager (browser mode) in L1: 20 times a SeaBIOS VM holding L1\'s stick0 (taken by a USB rule) is SIGKILLed (soon after the take, while SeaBIOS enumerates it, while it boots from it) and the manager gives stick0 back (usb-storage bound, /dev/sdX reads the pattern, journal empty); the manager SIGKILLed alone (its VM process must end and give stick0 back itself), then with its VM process (the next manager start repairs it from the journal)',
    // No L2 Linux: one L1 boot, 22 SeaBIOS VM starts. Multi-threaded TCG, as for every SeaBIOS boot in L2.
    devices: { usb: true }, bootTimeoutSec: 240, timeoutSec: 1800, expect: 'pass', ci: false, tcg: 'multi',
  },
  {
    name: 'usb-usb2-l2',
    description: 'a SuperSpeed host device on a USB 2 port: L1\'s stick0 (bulk only, no streams) passed through with porthole usb add --port 5; L2\'s xhci_hcd enumerates it at 480 Mbit/s with bcdUSB 2.10 and a 64-byte EP0 (the high-speed view), no descriptor complaints in L2\'s kernel log, usb-storage reads the whole stick with L1\'s md5; L1\'s usb-storage has it again after the remove',
    // One L2 boot (25-80 s) and one 16 MiB read.
    devices: { usb: true }, bootTimeoutSec: 240, timeoutSec: 900, expect: 'pass', ci: false, tcg: 'multi',
  },
  {
    name: 'usb-audio-passthrough-l2',
    description: 'isochronous host USB passthrough: Porthole passes L1\'s usb-audio (usbfs iso URBs) to the L2 kit; snd-usb-audio binds, aplay plays a 1 kHz sine, and the wav file QEMU wrote on the rig host holds that tone (frequency, length, longest gap); L1\'s snd-usb-audio gets it back',
    // One L2 boot (25-80 s) and 3 s of audio.
    devices: { usb: true, usbAudio: true }, bootTimeoutSec: 240, timeoutSec: 900, expect: 'pass', ci: false, tcg: 'multi',
  },
  {
    name: 'usb-rules-l2',
    description: 'auto-attach rules and re-enumeration with L1 as the host: a VM config with a rule for stick0 (porthole usb rule add) takes it at start and L2 sees it; QMP replaces it on the same port with a usb-serial (FTDI 0403:6001, another product ID) at once and it comes back to the same VM and guest port, L2 sees the new ID; replugged after the window it stays with L1; stick0 replugged goes back by the rule',
    // One L2 boot (25-80 s) and a few QMP plugs.
    devices: { usb: true }, bootTimeoutSec: 240, timeoutSec: 900, expect: 'pass', ci: false, tcg: 'multi',
  },
  {
    name: 'usb-capture',
    description: 'porthole capture writes a pcapng file while Porthole\'s L2 Linux enumerates and reads an emulated stick (dd of known sectors); Debian\'s tshark decodes SCSI READ(10) inside USB Mass Storage, one covering dd\'s read; the file lands in build/rig/out/<run>/',
    // One L2 boot (25-80 s) and a few seconds of checks; multi-threaded TCG as for every L2 Linux boot.
    devices: {}, bootTimeoutSec: 240, timeoutSec: 900, expect: 'pass', ci: false, tcg: 'multi',
  },
  {
    name: 'vfio-l2',
    description: 'L1\'s e1000 assigned to a Porthole VM with --pci-assign: L2\'s own e1000 driver binds it, gets the link and pings QEMU\'s user-network gateway 10.0.2.2 (DMA through L1\'s IOMMU, INTx through VFIO and a resampling irqfd); after the VM, L1\'s e1000 driver has it again and the journal is empty',
    // One L1 boot and one L2 boot; multi-threaded TCG as for every L2 Linux boot.
    devices: { iommu: true, e1000: true }, bootTimeoutSec: 240, timeoutSec: 900, expect: 'pass', ci: false, tcg: 'multi',
  },
  {
    name: 'vfio-msix-l2',
    description: 'An NVMe SR-IOV VF assigned to a Porthole VM with --pci-assign: L2\'s own nvme driver binds it on MSI-X (VFIO eventfds on KVM irqfd routes, BAR0 a KVM slot around the trapped MSI-X pages) reads by DMA the MiB L1 wrote through the PF and writes one L1 reads back through the PF (md5s); after the VM the VF is back as it was and the journal is empty',
    // One L1 boot and one L2 boot; multi-threaded TCG as for every L2 Linux boot.
    devices: { iommu: true, nvmeSriov: true }, bootTimeoutSec: 240, timeoutSec: 900, expect: 'pass', ci: false, tcg: 'multi',
  },
  {
    name: 'usb-controller-l2',
    description: 'A USB rule takes stick1 and Porthole\'s choice assigns its whole controller (L1\'s xhci1, alone in its IOMMU group) to the VM at start: L2\'s xhci_hcd drives it at 00:18.0 and reads all of stick1 (md5 of the pattern); after the VM, L1\'s xhci_hcd has it again and stick1 is back',
    // One L1 boot and one L2 boot; multi-threaded TCG as for every L2 Linux boot.
    devices: { iommu: true, extraXhci: true }, bootTimeoutSec: 240, timeoutSec: 900, expect: 'pass', ci: false, tcg: 'multi',
  },
  {
    name: 'vfio-sriov-l2',
    description: 'Two NVMe SR-IOV VFs assigned to two Porthole VMs running at once (--pci-assign), VF1 with namespace 1 only and VF2 with namespace 2 only: each L2\'s nvme driver binds its VF on MSI-X, sees one namespace with its own nsid, reads by DMA the MiB L1 wrote there through the PF and writes one L1 reads back (md5s); after both VMs the VFs are as before and the journal is empty. Then 20 times a VM holding both VFs (taken from L1\'s nvme) is SIGKILLed: the journal repair gives both back to nvme, controllers live, in 20 of 20',
    // One L1 boot, two concurrent L2 boots (multi-threaded TCG) and 20 short VM starts.
    devices: { iommu: true, nvmeSriov: true }, bootTimeoutSec: 240, timeoutSec: 1800, expect: 'pass', ci: false, tcg: 'multi',
  },
  {
    name: 'perf-usb-l2',
    description: 'the Performance tab in Chromium (rig host) against the manager in L1: a library VM boots the L2 kit with an emulated stick, and while L2 reads the stick with dd the stick\'s USB bytes/s (bulk IN) rise above their idle value in 3 successive 2 Hz samples, with transfers/s; screenshots idle and while reading land in build/rig/out/<run>/test-artifacts/',
    // One L2 boot (25-80 s) and half a minute of graphs; multi-threaded TCG as for every L2 Linux boot.
    // rigNet: the rig host's Chromium reaches the UI's server in L1 through forwarded ports.
    devices: { rigNet: true }, bootTimeoutSec: 240, timeoutSec: 900, expect: 'pass', ci: false, tcg: 'multi',
  },
  {
    name: 'vfio-l1',
    description: 'VFIO with L1 as the host through Porthole\'s code: 2 NVMe SR-IOV VFs made and listed by the PCI inventory, VF1 taken from nvme to vfio-pci (journaled), container/group/device opened through native/vfio.ts, config space and BAR0 (pread and mmap), MSI-X eventfds, a DMA buffer the VF writes its Identify data into, reset, given back to nvme; the e1000\'s INTx with an unmask eventfd; a SIGKILLed holder repaired from the journal',
    // No L2: one L1 boot and a few seconds of sysfs and VFIO calls (nvme-cli on the rig host's /usr).
    devices: { iommu: true, nvmeSriov: true, e1000: true }, bootTimeoutSec: 240, timeoutSec: 600, expect: 'pass', ci: false,
  },
  {
    name: 'kvm-tests',
    description: 'the KVM test files (dist/test/kvm, dist/test/e2e) on L1\'s /dev/kvm, for a host without one; npm test runs it (test/rig/kvm-venue.test.ts)',
    // About 6 minutes on a quiet 2-core host; a stall is caught by the heartbeat within 30 s.
    // rigNet: the end-to-end tests drive Chromium on the rig host.
    devices: { rigNet: true }, bootTimeoutSec: 240, timeoutSec: 1800, expect: 'pass', ci: false,
  },
  {
    name: 'net-user-l2',
    description: 'Porthole boots the L2 kit with a virtio-net card on user-mode NAT (porthole run --nic virtio,user,hostfwd=…,pcap=…); L2\'s busybox udhcpc gets 10.0.2.15 from libslirp, pings 10.0.2.2, 4 MiB go from L1 through the port forward to L2\'s nc and 4 MiB from L2 to a server on L1\'s loopback through 10.0.2.2 (md5 compared), with the card\'s rings on the VM host thread (ioeventfd, irqfd); virtio_net unbound and bound again (the reset takes the rings back, DRIVER_OK hands them over), DHCP and ping again; tshark finds the DHCP exchange in the pcap',
    // One L2 boot (25-80 s) and 8 MiB through slirp; multi-threaded TCG as for every L2 Linux boot.
    devices: {}, bootTimeoutSec: 240, timeoutSec: 900, expect: 'pass', ci: false, tcg: 'multi',
  },
  {
    name: 'bench',
    description: 'npm run bench in L1 (pio, serial, boot): Porthole beside QEMU -accel kvm; started by npm run bench, args in --env BENCH_ARGS',
    // A full boot bench is 20 or more L2 boots of 10-40 s each. Multi-threaded TCG: Porthole's
    // L2 hangs on single-threaded TCG (issue 7).
    devices: {}, bootTimeoutSec: 240, timeoutSec: 5400, expect: 'pass', ci: false, tcg: 'multi',
  },
  {
    name: 'boot-tally',
    description: 'boots the L2 kit N times (--env N=20) under Porthole and under QEMU -accel kvm, alternating, and counts shells, resets and stalls per VMM',
    // 2 x 20 boots of 15-60 s each, plus stalls.
    devices: {}, bootTimeoutSec: 240, timeoutSec: 7200, expect: 'pass', ci: false,
  },
  {
    name: 'broken',
    description: 'a guest that never answers: the runner must stop at its timeout and leave no QEMU behind',
    devices: {}, bootTimeoutSec: 240, timeoutSec: 20, expect: 'timeout', ci: true,
  },
];

export function findScenario(name: string): ScenarioSpec | undefined {
  return SCENARIOS.find((s) => s.name === name);
}
