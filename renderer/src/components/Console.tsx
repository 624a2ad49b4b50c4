// A serial console in xterm.js: the port's scroll-back and live output from main, and
// keystrokes typed into the guest's UART. Keys the terminal handles are not seen by the
// app's shortcuts; only Ctrl+Shift combinations (as in desktop terminals) are left to the app.
import { useEffect, useRef, useState } from 'react';
import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import { CONSOLE_PORTS, LIMITS, type ConsolePort, type VmSummary } from '../../../main/api/contract';
import { PORT_LABELS } from '../format';
import { isAppShortcut } from '../shortcuts';
import { errorSentence } from '../store';

const SCROLLBACK_LINES = 10000;
/** UTF-16 units per input call: at most 3 UTF-8 bytes each stays under the API limit. */
const INPUT_CHUNK = Math.floor(LIMITS.consoleInputMaxBytes / 3);

/**
 * Sends console input one call at a time so keystrokes reach the guest in order (in
 * browser mode each call is its own HTTP request); what is typed meanwhile is batched.
 */
class InputQueue {
  private pending = '';
  private sending = false;

  constructor(private readonly send: (data: string) => Promise<void>, private readonly onError: (e: unknown) => void) {}

  push(data: string): void {
    this.pending += data;
    if (!this.sending) void this.flush();
  }

  private async flush(): Promise<void> {
    this.sending = true;
    while (this.pending) {
      let end = Math.min(this.pending.length, INPUT_CHUNK);
      // Never split a surrogate pair between two calls.
      if (end < this.pending.length && /[\ud800-\udbff]/.test(this.pending[end - 1])) end--;
      const chunk = this.pending.slice(0, end);
      this.pending = this.pending.slice(end);
      try {
        await this.send(chunk);
      } catch (e) {
        this.pending = '';
        this.onError(e);
      }
    }
    this.sending = false;
  }
}

function cssVar(name: string, fallback: string): string {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;
}

/** The whole buffer (scroll-back and screen) as text, trailing blank lines dropped. */
function bufferText(term: Terminal): string {
  const buffer = term.buffer.active;
  const lines: string[] = [];
  for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i)?.translateToString(true) ?? '');
  while (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  return lines.join('\n');
}

interface ConsoleProps {
  vm: VmSummary;
  port: ConsolePort;
  onPortChange(port: ConsolePort): void;
}

export function Console({ vm, port, onPortChange }: ConsoleProps) {
  const hostRef = useRef<HTMLDivElement>(null);
  const termRef = useRef<Terminal | null>(null);
  const canTypeRef = useRef(false);
  const [streamError, setStreamError] = useState<string | null>(null);
  const [status, setStatus] = useState<string | null>(null);
  const [hasSelection, setHasSelection] = useState(false);
  const [screenReader, setScreenReader] = useState(false);
  const screenReaderRef = useRef(screenReader);
  screenReaderRef.current = screenReader;

  const isCom = port !== 'debugcon';
  const live = vm.state === 'running' || vm.state === 'paused';
  canTypeRef.current = isCom && live;
  const portLabel = PORT_LABELS[port];

  useEffect(() => {
    const host = hostRef.current;
    if (!host) return;
    const term = new Terminal({
      scrollback: SCROLLBACK_LINES,
      cursorBlink: true,
      disableStdin: !isCom,
      screenReaderMode: screenReaderRef.current,
      fontFamily: 'ui-monospace, "DejaVu Sans Mono", "Liberation Mono", monospace',
      fontSize: 14,
      theme: {
        background: cssVar('--console-bg', '#101418'),
        foreground: cssVar('--console-fg', '#d8dee4'),
        cursor: cssVar('--console-fg', '#d8dee4'),
        selectionBackground: '#3a5f8a',
      },
    });
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(host);
    termRef.current = term;
    setStreamError(null);
    setStatus(null);
    setHasSelection(false);

    // Ctrl+Shift+C / V copy and paste like desktop terminals; other app shortcuts pass
    // through to the window; everything else belongs to the guest.
    term.attachCustomKeyEventHandler((ev) => {
      if (ev.type !== 'keydown') return !isAppShortcut(ev);
      if (ev.ctrlKey && ev.shiftKey && !ev.altKey && !ev.metaKey && ev.code === 'KeyC') {
        const text = term.getSelection();
        if (text) void navigator.clipboard?.writeText(text).catch(() => undefined);
        ev.preventDefault();
        return false;
      }
      if (ev.ctrlKey && ev.shiftKey && !ev.altKey && !ev.metaKey && ev.code === 'KeyV') {
        void navigator.clipboard?.readText().then((t) => term.paste(t), () => setStatus('Reading the clipboard is not allowed here; paste with the Edit menu or the right-click menu instead.'));
        ev.preventDefault();
        return false;
      }
      return !isAppShortcut(ev);
    });

    const queue = new InputQueue(
      (data) => window.porthole.sendConsoleInput(vm.id, port, data),
      (e) => setStatus(errorSentence(e)),
    );
    const input = term.onData((data) => {
      if (canTypeRef.current) queue.push(data);
      else if (isCom) setStatus(`Start the VM to type into ${PORT_LABELS[port]}.`);
    });
    const selection = term.onSelectionChange(() => setHasSelection(term.hasSelection()));

    let disposed = false;
    let closeStream: (() => void) | null = null;
    window.porthole.openConsole(vm.id, port, (data) => term.write(data)).then(
      (close) => {
        if (disposed) close();
        else closeStream = close;
      },
      (e: unknown) => { if (!disposed) setStreamError(errorSentence(e)); },
    );

    let frame = 0;
    const resize = new ResizeObserver(() => {
      cancelAnimationFrame(frame);
      frame = requestAnimationFrame(() => {
        if (host.clientWidth > 0 && host.clientHeight > 0) fit.fit();
      });
    });
    resize.observe(host);

    return () => {
      disposed = true;
      closeStream?.();
      resize.disconnect();
      cancelAnimationFrame(frame);
      input.dispose();
      selection.dispose();
      termRef.current = null;
      term.dispose();
    };
    // The terminal belongs to one stream: a new VM or port gets a fresh one.
  }, [vm.id, port, isCom]);

  useEffect(() => {
    const term = termRef.current;
    if (term) term.options.screenReaderMode = screenReader;
  }, [screenReader]);

  useEffect(() => {
    if (canTypeRef.current) setStatus(null);
  }, [live]);

  const copy = async (all: boolean) => {
    const term = termRef.current;
    if (!term) return;
    const text = all ? bufferText(term) : term.getSelection();
    try {
      await navigator.clipboard.writeText(text);
      setStatus(all ? 'Copied the whole console.' : 'Copied the selection.');
    } catch {
      setStatus('The clipboard cannot be written here; select the text and copy it with the Edit menu or the right-click menu instead.');
    }
    term.focus();
  };

  const forward = isCom ? vm.spec.serial[CONSOLE_PORTS.indexOf(port)] : null;
  const endpoint = vm.endpoints[port];

  return (
    <div className="console">
      <div className="console-toolbar" role="toolbar" aria-label="Console">
        <label className="inline-label">
          <span aria-hidden="true">Port</span>
          <select aria-label="Console port" value={port} onChange={(e) => onPortChange(e.target.value as ConsolePort)}>
            {CONSOLE_PORTS.map((p, i) => (
              <option key={p} value={p}>
                {PORT_LABELS[p]}{i < 4 && vm.spec.serial[i] === 'none' ? ' (no port)' : ''}
              </option>
            ))}
          </select>
        </label>
        <button type="button" onClick={() => copy(false)} disabled={!hasSelection} aria-keyshortcuts="Control+Shift+C">Copy</button>
        <button type="button" onClick={() => copy(true)}>Copy all</button>
        <button type="button" onClick={() => { termRef.current?.clear(); termRef.current?.focus(); }}>Clear view</button>
        <label className="check inline-label">
          <input type="checkbox" checked={screenReader} onChange={(e) => setScreenReader(e.target.checked)} />
          Screen reader mode
        </label>
        <span className="console-endpoint">
          {forward === 'none' && `${portLabel} is not present in this VM (see Serial ports).`}
          {endpoint && `Also at ${endpoint}`}
        </span>
      </div>
      {streamError && <p className="form-error" role="alert">{streamError}</p>}
      <div
        ref={hostRef}
        className="console-terminal"
        role="region"
        aria-label={`${portLabel} console of ${vm.spec.name}`}
        onClick={() => termRef.current?.focus()}
      />
      <p className="console-status" role="status" aria-live="polite">
        {status ?? (isCom ? (live ? `Typing goes to ${portLabel}.` : 'The VM is not running; its last output is shown.') : 'The firmware log is read-only.')}
      </p>
    </div>
  );
}
