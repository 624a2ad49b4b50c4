// The NIC models and backends the app offers, with the fields each backend takes: the one list
// the New VM dialog, the VM page and the spec validator are drawn from. A new model or backend
// in the VMM (main/vmm/config.ts NIC_MODELS, netBackendFromJson) is one entry here; a unit test
// (test/unit/vm-devices-spec.test.ts) checks the models against the VMM's list. Pure: the
// renderer imports it.

export interface NicModelChoice {
  model: string;
  label: string;
}

export interface NicBackendField {
  key: string;
  label: string;
  /** Shown in an empty field. */
  placeholder?: string;
  /** A closed set of values (a select); absent: free text. */
  options?: readonly string[];
  /** An absolute file path (checked as one). */
  path?: true;
  /** May be left empty. */
  optional?: true;
}

export interface NicBackendChoice {
  kind: string;
  label: string;
  fields: readonly NicBackendField[];
}

export const NIC_MODEL_CHOICES: readonly NicModelChoice[] = [
  { model: 'virtio', label: 'virtio-net (virtio 1.0)' },
  { model: 'ne2k_pci', label: 'NE2000 PCI (Realtek RTL8029)' },
];

export const NIC_BACKEND_CHOICES: readonly NicBackendChoice[] = [
  { kind: 'none', label: 'Not connected (link down)', fields: [] },
  {
    // hostfwd: the VMM's rules (as --nic user,hostfwd=...), space-separated in one text field.
    kind: 'user', label: 'User-mode NAT (libslirp: DHCP, DNS, outgoing connections)', fields: [
      { key: 'hostfwd', label: 'Port forwards (optional, space-separated)', placeholder: 'tcp:127.0.0.1:8022-:22', optional: true },
    ],
  },
  { kind: 'tap', label: 'TAP interface', fields: [{ key: 'ifname', label: 'Interface', placeholder: 'tap0' }] },
  { kind: 'bridge', label: 'Bridge (a new TAP on it)', fields: [{ key: 'bridge', label: 'Bridge', placeholder: 'br0' }] },
  {
    kind: 'socket', label: 'Socket to another VM', fields: [
      { key: 'mode', label: 'Mode', options: ['listen', 'connect'] },
      { key: 'path', label: 'Socket path', placeholder: '/tmp/porthole-net.sock', path: true },
    ],
  },
  {
    kind: 'udp', label: 'UDP tunnel', fields: [
      { key: 'local', label: 'Local HOST:PORT', placeholder: '127.0.0.1:5000' },
      { key: 'remote', label: 'Remote HOST:PORT', placeholder: '127.0.0.1:5001' },
    ],
  },
];

export function nicBackendChoice(kind: string): NicBackendChoice | undefined {
  return NIC_BACKEND_CHOICES.find((b) => b.kind === kind);
}

/** The hostfwd rules in a user backend's "Port forwards" text (space- or comma-separated). */
export function hostForwardRules(text: string | undefined): string[] {
  return (text ?? '').split(/[\s,]+/).filter((r) => r !== '');
}
