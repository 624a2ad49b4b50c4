// `porthole usb rules FILE` / `usb rule add FILE ...` / `usb rule rm FILE N`: the auto-attach
// rules of a VM config file (the file `porthole run --config` reads). The file is read and
// checked whole, only `usb.rules` changes (every other field stays as written), and it is
// written atomically: a temp file in the same folder, fsync, rename, fsync of the folder.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ConfigError, machineConfigFromJson } from '../vmm/config';
import { describeUsbRule, type UsbRule, USB_MAX_RULES } from '../host/usb-rules';

export type RulesAction = { op: 'list' } | { op: 'add'; rule: UsbRule } | { op: 'remove'; index: number };

/** A VM config file's JSON object; a missing file or bad JSON is a ConfigError with a sentence. */
export function readConfigJson(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(`cannot read config file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`config file ${file} is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ConfigError(`${file}: the top level must be a JSON object`);
  return v as Record<string, unknown>;
}

/** One line per rule, numbered from 1 as `rule rm` takes them. */
export function formatUsbRules(rules: readonly UsbRule[]): string {
  if (rules.length === 0) return 'no USB rules\n';
  return rules.map((r, i) => `${i + 1}  ${describeUsbRule(r)}`).join('\n') + '\n';
}

/** Runs a rules command on `file`; returns what to print. Throws ConfigError with a sentence. */
export function runUsbRulesAction(file: string, action: RulesAction): string {
  const raw = readConfigJson(file);
  const config = machineConfigFromJson(raw, file);
  const rules = config.usb?.rules ?? [];
  if (action.op === 'list') return formatUsbRules(rules);
  let next: UsbRule[];
  let said: string;
  if (action.op === 'add') {
    if (rules.length >= USB_MAX_RULES) throw new ConfigError(`${file}: a VM has at most ${USB_MAX_RULES} USB rules`);
    next = [...rules, action.rule];
    said = `rule ${next.length} added: ${describeUsbRule(action.rule)}\n`;
  } else {
    if (action.index < 1 || action.index > rules.length) {
      throw new ConfigError(`${file} has ${rules.length === 0 ? 'no USB rules' : `USB rules 1 to ${rules.length}`}; there is no rule ${action.index}`);
    }
    next = rules.filter((_, i) => i !== action.index - 1);
    said = `rule ${action.index} removed: ${describeUsbRule(rules[action.index - 1])}\n`;
  }
  const usb: Record<string, unknown> = typeof raw.usb === 'object' && raw.usb !== null ? { ...(raw.usb as Record<string, unknown>) } : { controller: 'xhci' };
  usb.rules = next.map(ruleToJson);
  const out = { ...raw, usb };
  machineConfigFromJson(out, file); // what we write reads back
  writeAtomically(file, `${JSON.stringify(out, null, 2)}\n`);
  return said;
}

/** A rule as a config file shows it: IDs as hex text, as `porthole usb host` prints them. */
export function ruleToJson(r: UsbRule): Record<string, unknown> {
  const m = r.match;
  const hex = (n: number, d: number) => `0x${n.toString(16).padStart(d, '0')}`;
  const match: Record<string, unknown> = {};
  if (m.vendorId !== undefined) match.vendorId = hex(m.vendorId, 4);
  if (m.productId !== undefined) match.productId = hex(m.productId, 4);
  if (m.serial !== undefined) match.serial = m.serial;
  if (m.classCode !== undefined) match.classCode = hex(m.classCode, 2);
  if (m.portPath !== undefined) match.portPath = m.portPath;
  return { match, ...(r.port === undefined ? {} : { port: r.port }), ...(r.force ? { force: true } : {}) };
}

/** Replaces `file` with `text`: a temp file in the same folder, fsync, rename, fsync of the folder. */
export function writeAtomically(file: string, text: string): void {
  const dir = path.dirname(path.resolve(file));
  const temp = path.join(dir, `.${path.basename(file)}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`);
  let fd: number | null = null;
  try {
    const mode = fs.statSync(file).mode & 0o777;
    fd = fs.openSync(temp, 'wx', mode);
    fs.writeFileSync(fd, text);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = null;
    fs.renameSync(temp, file);
    const dirFd = fs.openSync(dir, 'r');
    try {
      fs.fsyncSync(dirFd);
    } finally {
      fs.closeSync(dirFd);
    }
  } catch (e) {
    if (fd !== null) fs.closeSync(fd);
    fs.rmSync(temp, { force: true });
    throw new ConfigError(`cannot write ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}
