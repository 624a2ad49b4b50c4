// "New VM" and "Edit VM": validates as the user types (shape and ranges here, with the
// same validators main uses; files that do not exist are asked of main, debounced).
import { useEffect, useId, useMemo, useRef, useState, type FormEvent } from 'react';
import {
  defaultVmSpec, LIMITS,
  type AppInfo, type BootKind, type FieldProblem, type VmSpec, type VmSummary,
} from '../../../main/api/contract';
import { vmSpecProblems } from '../../../main/api/schema';
import { memoryFieldText, parseMemoryText } from '../format';
import { errorSentence } from '../store';
import { FieldMessages, PathField, TextField } from './fields';
import { Modal } from './Modal';
import { DevicesEditor, type DevicesValue } from './DevicesEditor';
import { USB_PASSTHROUGH_PATH_CHOICES, usbSpecFromForm, type UsbPassthroughPath } from '../usb-spec';

interface Form {
  name: string;
  memory: string;
  cpus: string;
  bootKind: BootKind;
  firmware: string;
  /** Disks (a firmware spec's boot.disks come first, as virtio disks), the CD-ROM drive, NICs. */
  devices: DevicesValue;
  optionRoms: string[];
  kernel: string;
  initrd: string;
  cmdline: string;
  flatPath: string;
  debugExit: boolean;
  usbController: boolean;
  usbPassthroughPath: UsbPassthroughPath;
}

function formFromSpec(spec: VmSpec): Form {
  const b = spec.boot;
  return {
    name: spec.name,
    memory: memoryFieldText(spec.memoryMiB),
    cpus: String(spec.cpus),
    bootKind: b.kind,
    firmware: b.kind === 'firmware' ? b.firmware : '',
    devices: {
      disks: [...(b.kind === 'firmware' ? b.disks.map((path) => ({ path })) : []), ...(spec.disks ?? []).map((d) => ({ ...d }))],
      // An ISO saved as the firmware's own (boot.cdrom) is a CD-ROM drive booted first.
      cdrom: spec.cdrom ? { ...spec.cdrom } : b.kind === 'firmware' && b.cdrom !== '' ? { path: b.cdrom, boot: true } : null,
      nics: (spec.nics ?? []).map((n) => ({ ...n, backend: { ...n.backend } })),
    },
    optionRoms: b.kind === 'firmware' ? [...b.optionRoms] : [],
    kernel: b.kind === 'linux' ? b.kernel : '',
    initrd: b.kind === 'linux' ? b.initrd : '',
    cmdline: b.kind === 'linux' ? b.cmdline : 'console=ttyS0',
    flatPath: b.kind === 'flat' ? b.path : '',
    debugExit: spec.debugExit,
    usbController: spec.usb?.controller === 'xhci',
    usbPassthroughPath: spec.usb?.passthroughPath ?? 'auto',
  };
}

/**
 * `usb`: the spec's USB section as it was; the form turns the controller on and off and sets
 * the passthrough path (devices plugged in at start and USB rules are kept while it stays on).
 */
function specFromForm(f: Form, serial: VmSpec['serial'], usb: VmSpec['usb'], pciAssign: VmSpec['pciAssign']): VmSpec {
  const memory = parseMemoryText(f.memory);
  const cpus = /^\s*\d+\s*$/.test(f.cpus) ? Number(f.cpus) : Number.NaN;
  const boot: VmSpec['boot'] =
    f.bootKind === 'linux' ? { kind: 'linux', kernel: f.kernel.trim(), initrd: f.initrd.trim(), cmdline: f.cmdline }
    : f.bootKind === 'flat' ? { kind: 'flat', path: f.flatPath.trim() }
    : {
      kind: 'firmware',
      firmware: f.firmware.trim(),
      disks: [],
      cdrom: '',
      optionRoms: f.optionRoms.map((r) => r.trim()),
    };
  const { disks, cdrom, nics } = f.devices;
  const cd = cdrom === null ? null : { path: cdrom.path.trim(), ...(cdrom.boot === true && f.bootKind === 'firmware' ? { boot: true } : {}) };
  return {
    name: f.name, memoryMiB: memory.ok ? memory.mib : Number.NaN, cpus, boot, serial, debugExit: f.debugExit,
    ...(f.usbController ? { usb: usbSpecFromForm(true, f.usbPassthroughPath, usb) } : {}),
    ...(disks.length > 0 ? { disks: disks.map((d) => ({ ...d, path: d.path.trim() })) } : {}),
    ...(cd === null ? {} : { cdrom: cd }),
    ...(nics.length > 0 ? { nics } : {}),
    // PCI assignment is edited on the PCI tab; the dialog keeps it as it was.
    ...(pciAssign !== undefined && pciAssign.length > 0 ? { pciAssign } : {}),
  };
}

/** field → first problem, in form order. */
function problemMap(problems: readonly FieldProblem[]): Map<string, string> {
  const map = new Map<string, string>();
  for (const p of problems) if (!map.has(p.field)) map.set(p.field, p.message);
  return map;
}

const SERVER_CHECK_DELAY_MS = 350;

interface VmDialogProps {
  info: AppInfo | null;
  /** Absent: create a new VM. */
  vm?: VmSummary;
  onClose(): void;
  onSaved(vm: VmSummary): void;
}

export function VmDialog({ info, vm, onClose, onSaved }: VmDialogProps) {
  const initialSpec = vm?.spec ?? defaultVmSpec();
  const [form, setForm] = useState<Form>(() => formFromSpec(initialSpec));
  const [touched, setTouched] = useState<ReadonlySet<string>>(() => new Set());
  const [submitted, setSubmitted] = useState(false);
  const [developer, setDeveloper] = useState(initialSpec.boot.kind === 'flat' || initialSpec.debugExit);
  // Open from the start when it holds settings; afterwards the user opens and closes it.
  const [advancedInitiallyOpen] = useState(() =>
    developer || initialSpec.usb?.controller === 'xhci'
    || (initialSpec.boot.kind === 'firmware' && (initialSpec.boot.firmware !== '' || initialSpec.boot.optionRoms.length > 0)));
  const [serverCheck, setServerCheck] = useState<{ key: string; problems: FieldProblem[] } | null>(null);
  const [saving, setSaving] = useState(false);
  const [saveError, setSaveError] = useState<string | null>(null);
  const formRef = useRef<HTMLFormElement>(null);
  const uid = useId();
  const nativeDialogs = info?.capabilities.nativeFileDialogs ?? false;

  const spec = useMemo(() => specFromForm(form, initialSpec.serial, initialSpec.usb, initialSpec.pciAssign),
    [form, initialSpec.serial, initialSpec.usb, initialSpec.pciAssign]);
  const specKey = JSON.stringify(spec);

  const localProblems = useMemo(() => {
    const map = problemMap(vmSpecProblems(spec));
    // The text-level reasons say more than "must be a whole number of MiB".
    const memory = parseMemoryText(form.memory);
    if (!memory.ok) map.set('memoryMiB', memory.problem);
    if (!/^\s*\d+\s*$/.test(form.cpus)) map.set('cpus', `vCPUs must be a whole number from ${LIMITS.cpusMin} to ${LIMITS.cpusMax}.`);
    return map;
  }, [spec, form.memory, form.cpus]);

  // Files that do not exist are only known to main: ask it once the shape is right.
  useEffect(() => {
    if (localProblems.size > 0) return;
    let cancelled = false;
    const timer = setTimeout(() => {
      window.porthole.checkVmSpec(spec).then(
        (problems) => { if (!cancelled) setServerCheck({ key: specKey, problems }); },
        (e: unknown) => { if (!cancelled) setServerCheck({ key: specKey, problems: [{ field: '', message: errorSentence(e) }] }); },
      );
    }, SERVER_CHECK_DELAY_MS);
    return () => { cancelled = true; clearTimeout(timer); };
  }, [specKey, localProblems, spec]);

  const problems = useMemo(() => {
    const map = new Map(localProblems);
    if (map.size === 0 && serverCheck?.key === specKey) {
      for (const [field, message] of problemMap(serverCheck.problems)) map.set(field, message);
    }
    return map;
  }, [localProblems, serverCheck, specKey]);

  // A problem of a whole entry ("nics.0": main's check of the card) shows once any of its fields was touched.
  const shown = (field: string): string | null =>
    submitted || touched.has(field) || [...touched].some((t) => t.startsWith(`${field}.`)) ? problems.get(field) ?? null : null;
  const touch = (field: string) => setTouched((t) => (t.has(field) ? t : new Set(t).add(field)));
  const update = (field: string, patch: Partial<Form>) => {
    setForm((f) => ({ ...f, ...patch }));
    touch(field);
    setSaveError(null);
  };
  const fieldId = (field: string) => `${uid}-${field.replace(/\./g, '-')}`;

  // Problems that belong to no visible field (e.g. main could not be asked).
  const visibleFields = new Set([
    'name', 'memoryMiB', 'cpus', 'boot.firmware', 'boot.kernel', 'boot.initrd', 'boot.cmdline', 'boot.path',
    ...form.optionRoms.map((_, i) => `boot.optionRoms.${i}`),
  ]);
  const isDeviceField = (field: string) => /^(disks|cdrom|nics)(\.|$)/.test(field);
  const otherProblems = [...problems].filter(([field]) => !visibleFields.has(field) && !isDeviceField(field)).map(([, m]) => m);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setSubmitted(true);
    setSaveError(null);
    if (localProblems.size > 0 || problems.size > 0) {
      focusFirstInvalid(formRef.current);
      return;
    }
    setSaving(true);
    try {
      const saved = vm ? await window.porthole.updateVm(vm.id, spec) : await window.porthole.createVm(spec);
      onSaved(saved);
    } catch (err) {
      setSaveError(errorSentence(err));
      setSaving(false);
    }
  };

  /** Adds an empty path to a list and puts the cursor in it. */
  const addEntry = (kind: 'optionRoms') => {
    const id = fieldId(`boot.${kind}.${form[kind].length}`);
    setForm((f) => ({ ...f, [kind]: [...f[kind], ''] }));
    requestAnimationFrame(() => document.getElementById(id)?.focus());
  };

  const pending = localProblems.size === 0 && serverCheck?.key !== specKey;
  const listField = (kind: 'optionRoms', label: string, purpose: 'option-rom') =>
    form[kind].map((value, i) => {
      const field = `boot.${kind}.${i}`;
      return (
        <PathField
          key={i}
          id={fieldId(field)}
          label={`${label} ${i + 1}`}
          value={value}
          purpose={purpose}
          nativeDialogs={nativeDialogs}
          problem={shown(field)}
          onBlur={() => touch(field)}
          onChange={(v) => update(field, { [kind]: form[kind].map((old, j) => (j === i ? v : old)) })}
          onRemove={() => update(`boot.${kind}`, { [kind]: form[kind].filter((_, j) => j !== i) })}
        />
      );
    });

  return (
    <Modal title={vm ? `Edit ${vm.spec.name}` : 'New VM'} onClose={onClose} busy={saving} className="modal-wide">
      <form ref={formRef} onSubmit={submit} noValidate className="vm-form">
        <div className="form-grid">
          <TextField
            id={fieldId('name')} label="Name" value={form.name} autoFocus maxLength={LIMITS.nameMaxLength * 2}
            problem={shown('name')} onBlur={() => touch('name')}
            onChange={(v) => update('name', { name: v })}
          />
          <TextField
            id={fieldId('memoryMiB')} label="Memory" value={form.memory} className="field-narrow"
            hint="e.g. 512M or 2G"
            problem={shown('memoryMiB')} onBlur={() => touch('memoryMiB')}
            onChange={(v) => update('memoryMiB', { memory: v })}
          />
          <TextField
            id={fieldId('cpus')} label="vCPUs" value={form.cpus} className="field-narrow" inputMode="numeric"
            problem={shown('cpus')} onBlur={() => touch('cpus')}
            onChange={(v) => update('cpus', { cpus: v })}
          />
        </div>

        <fieldset className="boot-kinds">
          <legend>Boot from</legend>
          <label>
            <input type="radio" name={`${uid}-boot`} checked={form.bootKind === 'firmware'} onChange={() => update('boot', { bootKind: 'firmware' })} />
            Firmware (SeaBIOS) from a disk or a CD
          </label>
          <label>
            <input type="radio" name={`${uid}-boot`} checked={form.bootKind === 'linux'} onChange={() => update('boot', { bootKind: 'linux' })} />
            Linux kernel
          </label>
          {(developer || form.bootKind === 'flat') && (
            <label>
              <input type="radio" name={`${uid}-boot`} checked={form.bootKind === 'flat'} onChange={() => update('boot', { bootKind: 'flat' })} />
              Test program (developer)
            </label>
          )}
        </fieldset>

        {form.bootKind === 'firmware' && (
          <p className="note" id={`${uid}-disk-note`}>
            SeaBIOS boots the first disk, or the CD first when “Boot from CD” is on.
          </p>
        )}

        {form.bootKind === 'linux' && (
          <div className="boot-section">
            <PathField
              id={fieldId('boot.kernel')} label="Kernel" value={form.kernel} purpose="kernel" nativeDialogs={nativeDialogs}
              placeholder="/boot/vmlinuz" required
              problem={shown('boot.kernel')} onBlur={() => touch('boot.kernel')}
              onChange={(v) => update('boot.kernel', { kernel: v })}
            />
            <PathField
              id={fieldId('boot.initrd')} label="Initrd (optional)" value={form.initrd} purpose="initrd" nativeDialogs={nativeDialogs}
              placeholder="/boot/initrd.img"
              problem={shown('boot.initrd')} onBlur={() => touch('boot.initrd')}
              onChange={(v) => update('boot.initrd', { initrd: v })}
            />
            <TextField
              id={fieldId('boot.cmdline')} label="Kernel command line" value={form.cmdline}
              problem={shown('boot.cmdline')} onBlur={() => touch('boot.cmdline')}
              onChange={(v) => update('boot.cmdline', { cmdline: v })}
            />
          </div>
        )}

        {form.bootKind === 'flat' && (
          <div className="boot-section">
            <PathField
              id={fieldId('boot.path')} label="Test program" value={form.flatPath} purpose="flat" nativeDialogs={nativeDialogs}
              placeholder="/path/to/program.bin" required
              hint="A raw real-mode program, loaded at 0x1000 and run from its first byte."
              problem={shown('boot.path')} onBlur={() => touch('boot.path')}
              onChange={(v) => update('boot.path', { flatPath: v })}
            />
          </div>
        )}

        <DevicesEditor
          value={form.devices}
          canBootCd={form.bootKind === 'firmware'}
          nativeDialogs={nativeDialogs}
          fieldId={fieldId}
          shown={shown}
          touch={touch}
          onChange={(field, devices) => update(field, { devices })}
        />

        <details className="advanced" open={advancedInitiallyOpen}>
          <summary>Advanced</summary>
          <div className="advanced-body">
            {form.bootKind === 'firmware' && (
              <>
                <PathField
                  id={fieldId('boot.firmware')} label="Firmware image" value={form.firmware} purpose="firmware" nativeDialogs={nativeDialogs}
                  placeholder="Empty: the system's SeaBIOS"
                  problem={shown('boot.firmware')} onBlur={() => touch('boot.firmware')}
                  onChange={(v) => update('boot.firmware', { firmware: v })}
                />
                {listField('optionRoms', 'Option ROM', 'option-rom')}
                <button
                  type="button"
                  disabled={form.optionRoms.length >= LIMITS.optionRomsMax}
                  onClick={() => addEntry('optionRoms')}
                >
                  Add option ROM
                </button>
              </>
            )}
            <label className="check">
              <input type="checkbox" checked={form.usbController} onChange={(e) => update('usb', { usbController: e.target.checked })} />
              USB controller (xHCI): devices are plugged in from the USB tab while the VM runs
            </label>
            {form.usbController && (
              <label className="field">
                Host USB devices taken by rules{' '}
                <select
                  aria-label="USB passthrough path" value={form.usbPassthroughPath}
                  onChange={(e) => update('usb.passthroughPath', { usbPassthroughPath: e.target.value as UsbPassthroughPath })}
                >
                  {USB_PASSTHROUGH_PATH_CHOICES.map((c) => <option key={c.value} value={c.value}>{c.label}</option>)}
                </select>
              </label>
            )}
            <label className="check">
              <input type="checkbox" checked={developer} onChange={(e) => setDeveloper(e.target.checked)} />
              Show developer options
            </label>
            {developer && (
              <label className="check">
                <input type="checkbox" checked={form.debugExit} onChange={(e) => update('debugExit', { debugExit: e.target.checked })} />
                Debug exit port (0xf4): lets a test program power the VM off with a status
              </label>
            )}
          </div>
        </details>

        {(submitted ? otherProblems : []).map((m) => <p key={m} className="form-error" role="alert">{m}</p>)}
        {saveError && <p className="form-error" role="alert">{saveError}</p>}
        <FieldMessages id={`${uid}-status`} hint={pending && submitted ? 'Checking the files…' : null} />

        <div className="modal-actions">
          <button type="button" onClick={onClose} disabled={saving}>Cancel</button>
          <button type="submit" className="primary" disabled={saving}>
            {saving ? (vm ? 'Saving…' : 'Creating…') : vm ? 'Save' : 'Create'}
          </button>
        </div>
      </form>
    </Modal>
  );
}

function focusFirstInvalid(form: HTMLFormElement | null): void {
  // Wait a frame: the problems of untouched fields render once `submitted` is set.
  requestAnimationFrame(() => form?.querySelector<HTMLElement>('[aria-invalid="true"]')?.focus());
}
