; Flat real-mode guest: prints a banner on the debug console, then resets the machine
; through the PIIX reset control register (port 0xcf9: SRST | RCPU = 0x06, the value
; ACPI's RESET_REG uses). After the reset the machine starts fresh and prints it again.
; If no reset happens, it exits through isa-debug-exit with status 0x7f.
bits 16
org 0x1000
%include "debugcon.inc"

start:
  debugcon_puts msg
  mov dx, 0xcf9
  mov al, 0x06
  out dx, al
  mov al, 0x3f
  out 0xf4, al
  hlt
msg: db "banner", 10, 0
