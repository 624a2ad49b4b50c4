; Flat real-mode test guest for USB hot-plug (loaded at 0x1000): maps the xHCI's BAR 0
; (PCI 00:04.0) at 0xc0000000 and watches root-hub port 1's PORTSC through unreal mode.
; It prints on the debug console "ready\n" once the BAR answers (CAPLENGTH 0x40),
; "connect S\n" when a device appears (S: PORTSC's speed field, 4 = SuperSpeed, and "+csc"
; if the Connect Status Change bit is set), then "disconnect\n" when it goes, and exits
; through isa-debug-exit with 0. Tests depend on these strings: keep them exact.
bits 16
org 0x1000
%include "debug-exit.inc"

XHCI_CONFIG   equ 0x80002000      ; CONFIG_ADDRESS: enable, bus 0, device 4, function 0
XHCI_BAR      equ 0xc0000000      ; inside the PCI MMIO window
PORTSC1       equ XHCI_BAR + 0x440

start:
  cli
  xor ax, ax
  mov ds, ax
  mov ss, ax
  mov sp, 0x7000
  call enter_unreal
  ; BAR 0 is a 64-bit memory BAR: low half, high half, then memory decoding on.
  mov eax, XHCI_CONFIG | 0x10
  mov ebx, XHCI_BAR
  call pci_write
  mov eax, XHCI_CONFIG | 0x14
  xor ebx, ebx
  call pci_write
  mov eax, XHCI_CONFIG | 0x04
  mov ebx, 0x0002
  call pci_write
  mov eax, [fs:dword XHCI_BAR]
  cmp al, 0x40
  jne fail
  mov si, msg_ready
  call print

.wait_connect:
  call delay
  mov eax, [fs:dword PORTSC1]
  test al, 1
  jz .wait_connect
  mov ebx, eax
  mov si, msg_connect
  call print
  mov eax, ebx
  shr eax, 10
  and al, 0x0f
  add al, '0'
  call putc
  test ebx, 1 << 17
  jz .no_csc
  mov si, msg_csc
  call print
.no_csc:
  mov al, 10
  call putc

.wait_gone:
  call delay
  mov eax, [fs:dword PORTSC1]
  test al, 1
  jnz .wait_gone
  mov si, msg_gone
  call print
  debug_exit 0

fail:
  mov si, msg_fail
  call print
  debug_exit 1

; Writes EBX to the PCI configuration register EAX names (CONFIG_ADDRESS form).
pci_write:
  mov dx, 0xcf8
  out dx, eax
  mov eax, ebx
  mov dx, 0xcfc
  out dx, eax
  ret

; A pause between looks at PORTSC (each look is an exit).
delay:
  mov ecx, 200000
.spin:
  dec ecx
  jnz .spin
  ret

%include "debugcon-print.inc"
%include "unreal.inc"

msg_ready:   db "ready", 10, 0
msg_connect: db "connect ", 0
msg_csc:     db "+csc", 0
msg_gone:    db "disconnect", 10, 0
msg_fail:    db "no xhci", 10, 0
