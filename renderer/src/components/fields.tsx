// Labelled form fields whose problems are announced with the field (aria-invalid,
// aria-describedby), plus a path field that offers the native file dialog in Electron.
import { useState, type InputHTMLAttributes, type ReactNode } from 'react';
import type { FilePurpose } from '../../../main/api/contract';
import { errorSentence } from '../store';

export interface FieldChrome {
  id: string;
  label: string;
  hint?: ReactNode;
  /** Shown (and announced) only when set. */
  problem?: string | null;
}

function describedBy(id: string, hint: unknown, problem: unknown): string | undefined {
  const ids = [hint ? `${id}-hint` : '', problem ? `${id}-problem` : ''].filter(Boolean);
  return ids.length ? ids.join(' ') : undefined;
}

export function FieldMessages({ id, hint, problem }: Pick<FieldChrome, 'id' | 'hint' | 'problem'>) {
  return (
    <>
      {hint && <div id={`${id}-hint`} className="field-hint">{hint}</div>}
      {problem && <div id={`${id}-problem`} className="field-problem">{problem}</div>}
    </>
  );
}

type InputProps = Omit<InputHTMLAttributes<HTMLInputElement>, 'id' | 'onChange' | 'value'>;

interface TextFieldProps extends FieldChrome, InputProps {
  value: string;
  onChange(value: string): void;
  /** Content after the input on the same line (buttons). */
  after?: ReactNode;
}

export function TextField({ id, label, hint, problem, value, onChange, after, className, ...input }: TextFieldProps) {
  return (
    <div className={`field ${className ?? ''}`}>
      <label htmlFor={id}>{label}</label>
      <div className="field-row">
        <input
          id={id}
          value={value}
          onChange={(e) => onChange(e.target.value)}
          aria-invalid={problem ? true : undefined}
          aria-describedby={describedBy(id, hint, problem)}
          spellCheck={false}
          autoComplete="off"
          {...input}
        />
        {after}
      </div>
      <FieldMessages id={id} hint={hint} problem={problem} />
    </div>
  );
}

interface PathFieldProps extends FieldChrome {
  value: string;
  onChange(value: string): void;
  onBlur?(): void;
  purpose: FilePurpose;
  nativeDialogs: boolean;
  placeholder?: string;
  required?: boolean;
  /** A remove button for entries of a list. */
  onRemove?(): void;
}

/** A file path: typed in browser mode, or chosen with the native dialog in Electron. */
export function PathField({ purpose, nativeDialogs, onRemove, placeholder, ...field }: PathFieldProps) {
  const [chooseError, setChooseError] = useState<string | null>(null);
  const browse = async () => {
    setChooseError(null);
    try {
      const path = await window.porthole.chooseFile({ purpose });
      if (path !== null) {
        field.onChange(path);
        field.onBlur?.();
      }
    } catch (e) {
      setChooseError(errorSentence(e));
    }
  };
  return (
    <TextField
      {...field}
      problem={field.problem ?? chooseError}
      placeholder={placeholder ?? '/absolute/path'}
      after={
        <>
          {nativeDialogs && (
            <button type="button" onClick={browse} aria-label={`Choose a file for ${field.label}`}>
              Browse…
            </button>
          )}
          {onRemove && (
            <button type="button" className="icon-button" onClick={onRemove} aria-label={`Remove ${field.label}`}>
              ✕
            </button>
          )}
        </>
      }
    />
  );
}
