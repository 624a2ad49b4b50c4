import { useId, useState } from 'react';
import { errorSentence } from '../store';
import { Modal } from './Modal';

interface ConfirmDialogProps {
  title: string;
  message: string;
  confirmLabel: string;
  danger?: boolean;
  /** Resolves when done; the dialog stays open (busy) until then and shows why it failed. */
  onConfirm(): Promise<void>;
  onClose(): void;
}

export function ConfirmDialog({ title, message, confirmLabel, danger, onConfirm, onClose }: ConfirmDialogProps) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const messageId = useId();
  return (
    <Modal title={title} onClose={onClose} busy={busy} role="alertdialog" describedBy={messageId}>
      <p id={messageId}>{message}</p>
      {error && <p className="form-error" role="alert">{error}</p>}
      <div className="modal-actions">
        {/* Cancel first and focused: a stray Enter must not confirm something destructive. */}
        <button type="button" autoFocus onClick={onClose} disabled={busy}>Cancel</button>
        <button
          type="button"
          className={danger ? 'danger' : 'primary'}
          disabled={busy}
          onClick={async () => {
            setBusy(true);
            setError(null);
            try {
              await onConfirm();
            } catch (e) {
              setError(errorSentence(e));
            } finally {
              setBusy(false);
            }
          }}
        >
          {confirmLabel}
        </button>
      </div>
    </Modal>
  );
}
