; Flat real-mode guest: announces itself on the debug console, then asks for soft-off
; (S5) through the PIIX4 PM1a control register: SLP_TYP = 0 (the \_S5 value) | SLP_EN.
; If the machine does not power off, it exits through isa-debug-exit with status 0x7f.
bits 16
org 0x1000
%include "debugcon.inc"

PM1A_CNT equ 0x604
SLP_EN   equ 1 << 13
SLP_TYP  equ 0 << 10

start:
  debugcon_puts msg
  mov dx, PM1A_CNT
  mov ax, SLP_TYP | SLP_EN
  out dx, ax
  mov al, 0x3f              ; still running: isa-debug-exit status (0x3f << 1) | 1
  out 0xf4, al
  hlt
msg: db "s5 guest", 10, 0
