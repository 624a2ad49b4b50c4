// A modal dialog on the native <dialog> element: the browser makes the rest of the page
// inert, traps focus and turns Escape into a "cancel" event, which closes it.
import { useId, useLayoutEffect, useRef, type ReactNode } from 'react';

interface ModalProps {
  title: string;
  onClose(): void;
  children: ReactNode;
  /** Extra class for sizing ("modal-wide"). */
  className?: string;
  /** Set while an action runs: Escape then does nothing. */
  busy?: boolean;
  role?: 'dialog' | 'alertdialog';
  describedBy?: string;
}

export function Modal({ title, onClose, children, className, busy, role, describedBy }: ModalProps) {
  const ref = useRef<HTMLDialogElement>(null);
  const titleId = useId();

  // A layout effect, so the dialog closes (and focus goes back where it was) before
  // React removes it from the page.
  useLayoutEffect(() => {
    const dialog = ref.current;
    if (!dialog) return;
    const opener = document.activeElement instanceof HTMLElement ? document.activeElement : null;
    if (!dialog.open) dialog.showModal();
    return () => {
      if (dialog.open) dialog.close();
      if (opener?.isConnected) opener.focus();
    };
  }, []);

  return (
    <dialog
      ref={ref}
      className={`modal ${className ?? ''}`}
      role={role}
      aria-labelledby={titleId}
      aria-describedby={describedBy}
      onCancel={(e) => {
        e.preventDefault();
        if (!busy) onClose();
      }}
    >
      <h2 id={titleId} className="modal-title">{title}</h2>
      {children}
    </dialog>
  );
}
