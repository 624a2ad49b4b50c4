; Flat guest: prints a banner, then triple-faults. It enters 32-bit protected mode with
; an empty IDT (limit 0) and executes ud2: #UD cannot be delivered (#GP), neither can
; the #GP (#DF), nor the #DF: the CPU shuts down, which KVM reports as a shutdown exit
; and a PC turns into a reset. (In real mode KVM delivers exceptions through the IVT
; without checking the IDT limit, so the fault must happen in protected mode.)
; If no reset happens it says so and exits through isa-debug-exit with status 0x7f.
bits 16
org 0x1000
%include "debugcon.inc"
%include "debug-exit.inc"
start:
  cli
  xor ax, ax
  mov ds, ax
  debugcon_puts banner
  lgdt [gdt_desc]
  lidt [null_idt]
  mov eax, cr0
  or al, 1
  mov cr0, eax
  jmp 0x08:pm32

bits 32
pm32:
  mov ax, 0x10
  mov ds, ax
  mov es, ax
  mov ss, ax
  mov esp, 0x7000
  ud2
  ; Not reached when the triple fault resets the machine.
  debugcon_puts no_reset
  debug_exit 0x3f

align 8
gdt:
  dq 0
  dq 0x00cf9a000000ffff     ; 0x08: code, base 0, limit 4 GiB, 32-bit
  dq 0x00cf92000000ffff     ; 0x10: data, base 0, limit 4 GiB
gdt_desc:
  dw gdt_desc - gdt - 1
  dd gdt
null_idt:
  dw 0
  dd 0

banner:   db "boot: triple fault", 10, 0
no_reset: db "triple fault did not reset", 10, 0
