; Flat real-mode guest for test/kvm/irqfd.test.ts: interrupts the host raises by writing
; eventfds (irqfd), and doorbell writes that KVM counts without an exit (ioeventfd).
;  A  "line ready": only IRQ 5 unmasked on the 8259s (vector 0x0d). The host raises it
;     through a resampling irqfd, one interrupt per EOI. After LINE_IRQS: "line irqs: N".
;  B  "msi ready": LAPIC on, 8259s masked. The host writes an MSI route's irqfd (vector
;     0x50) until the guest has seen MSI_IRQS: "msi irqs: N".
;  C  doorbells: DOORBELL_WRITES byte writes to port DOORBELL_PORT, as many dword writes to
;     MMIO DOORBELL_MMIO, MATCH_WRITES of MATCH_VALUE and OTHER_WRITES of 1 to MATCH_MMIO;
;     report 1 (port REPORT_PORT); AFTER_WRITES more to DOORBELL_PORT; report 2; exit.
; Every wait is `cli; test; sti; hlt`: sti's one-instruction shadow makes the test and the
; sleep atomic, so an interrupt that arrives in between cannot be slept through.
bits 16
org 0x1000
%include "debugcon.inc"
%include "debug-exit.inc"
%include "pic.inc"

LAPIC           equ 0xfee00000
LAPIC_EOI       equ LAPIC + 0xb0
LAPIC_SVR       equ LAPIC + 0xf0
LINE_VECTOR     equ 0x08 + 5
MSI_VECTOR      equ 0x50
LINE_IRQS       equ 10
MSI_IRQS        equ 5
DOORBELL_PORT   equ 0x780
REPORT_PORT     equ 0x781
DOORBELL_MMIO   equ 0xfe000000
MATCH_MMIO      equ 0xfe000010
MATCH_VALUE     equ 0xabcd
DOORBELL_WRITES equ 100
MATCH_WRITES    equ 50
OTHER_WRITES    equ 25
AFTER_WRITES    equ 5

start:
  cli
  cld
  xor ax, ax
  mov ds, ax
  mov es, ax
  mov ss, ax
  mov sp, 0x7000
  mov word [LINE_VECTOR * 4], line_isr
  mov word [LINE_VECTOR * 4 + 2], 0
  mov word [MSI_VECTOR * 4], msi_isr
  mov word [MSI_VECTOR * 4 + 2], 0
  ; Spurious vectors: the 8259's IRQ 7 and the LAPIC's 0xff (no EOI for either).
  mov word [0x0f * 4], spurious_isr
  mov word [0x0f * 4 + 2], 0
  mov word [0xff * 4], spurious_isr
  mov word [0xff * 4 + 2], 0

  ; --- A: an 8259 line through a resampling irqfd ---
  pic_init 0xdf, 0xff
  mov si, msg_line_ready
  call print
.wait_line:
  cli
  cmp word [line_count], LINE_IRQS
  jae .line_done
  sti
  hlt
  jmp .wait_line
.line_done:
  mov si, msg_line_irqs
  call print
  mov ax, [line_count]
  call print_dec16

  ; --- B: an MSI through an irqfd route ---
  mov al, 0xff
  out 0x21, al
  out 0xa1, al
  call enter_unreal
  mov eax, [fs:dword LAPIC_SVR]
  or eax, 0x1ff
  mov [fs:dword LAPIC_SVR], eax
  mov si, msg_msi_ready
  call print
.wait_msi:
  cli
  cmp word [msi_count], MSI_IRQS
  jae .msi_done
  sti
  hlt
  jmp .wait_msi
.msi_done:
  mov si, msg_msi_irqs
  call print
  mov ax, [msi_count]
  call print_dec16

  ; --- C: doorbells ---
  mov dx, DOORBELL_PORT
  mov cx, DOORBELL_WRITES
.pio:
  out dx, al
  loop .pio
  mov cx, DOORBELL_WRITES
.mmio:
  mov [fs:dword DOORBELL_MMIO], ecx
  loop .mmio
  mov cx, MATCH_WRITES
.match:
  mov dword [fs:dword MATCH_MMIO], MATCH_VALUE
  loop .match
  mov cx, OTHER_WRITES
.other:
  mov dword [fs:dword MATCH_MMIO], 1
  loop .other
  mov dx, REPORT_PORT
  mov al, 1
  out dx, al
  mov dx, DOORBELL_PORT
  mov cx, AFTER_WRITES
.after:
  out dx, al
  loop .after
  mov dx, REPORT_PORT
  mov al, 2
  out dx, al
  mov si, msg_done
  call print
  debug_exit 0

line_isr:
  inc word [line_count]
  push ax
  mov al, 0x20
  out 0x20, al
  pop ax
  iret

msi_isr:
  inc word [msi_count]
  mov dword [fs:dword LAPIC_EOI], 0
  iret

spurious_isr:
  iret

%include "unreal.inc"

%include "debugcon-print.inc"

; Prints AX in decimal, then a newline.
print_dec16:
  push ax
  push bx
  push cx
  push dx
  mov bx, 10
  xor cx, cx
.divide:
  xor dx, dx
  div bx
  push dx
  inc cx
  test ax, ax
  jnz .divide
.emit:
  pop ax
  add al, '0'
  call putc
  loop .emit
  mov al, 10
  call putc
  pop dx
  pop cx
  pop bx
  pop ax
  ret

line_count: dw 0
msi_count:  dw 0

msg_line_ready: db "irqfd: line ready", 10, 0
msg_line_irqs:  db "line irqs: ", 0
msg_msi_ready:  db "irqfd: msi ready", 10, 0
msg_msi_irqs:   db "msi irqs: ", 0
msg_done:       db "doorbells: done", 10, 0
