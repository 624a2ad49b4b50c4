// The rig's scenarios as the runner sees them: what L1 needs and how long each may take.
// The code each one runs inside L1 is scenarios/<name>.ts (compiled to dist/).

export interface RigDevices {
  /** qemu-xhci with stick0 (usb-storage), a usb-kbd and a usb-serial (FTDI) adapter. */
  usb?: boolean;
  /** A second qemu-xhci with stick1, for assigning a whole controller through VFIO. */
  extraXhci?: boolean;
  /** An e1000 on user-mode networking, for VFIO assignment of a NIC. */
  e1000?: boolean;
  /** intel-iommu with interrupt remapping, so L1 has IOMMU groups and VFIO. */
  iommu?: boolean;
}

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
}

const ALL_DEVICES: RigDevices = { usb: true, extraXhci: true, e1000: true, iommu: true };

export const SCENARIOS: ScenarioSpec[] = [
  {
    name: 'l1-kvm',
    description: 'L1 has a working /dev/kvm (nested SVM): Porthole\'s native layer creates a VM and runs a flat test guest',
    // Healthy runs take 15-18 s; a short limit keeps a stalled L1 (retried once) cheap.
    devices: {}, bootTimeoutSec: 240, timeoutSec: 90, expect: 'pass', ci: true,
  },
  {
    name: 'usb-iommu',
    description: 'node-usb sees the rig\'s USB devices, stick0 reads back its known contents, IOMMU groups exist and an e1000 binds to vfio-pci',
    devices: ALL_DEVICES, bootTimeoutSec: 240, timeoutSec: 180, expect: 'pass', ci: true,
  },
  {
    name: 'kit-qemu',
    description: 'QEMU (KVM) in L1 boots the L2 kit; the console helper runs uname, counts CPUs and lists PCI devices',
    devices: {}, bootTimeoutSec: 240, timeoutSec: 300, expect: 'pass', ci: true,
  },
  {
    name: 'smoke',
    description: 'Porthole (porthole run --kernel) boots the L2 kit in L1; uname -r, CPU count and lspci -nn over its serial console; Linux drivers find our 16550A, i8042 and CMOS RTC; poweroff ends Porthole through ACPI S5',
    // Healthy runs take 25-80 s on a busy 2-core host.
    devices: {}, bootTimeoutSec: 240, timeoutSec: 300, expect: 'pass', ci: true,
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
