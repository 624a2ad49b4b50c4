; Flat real-mode guest: prints a banner, then resets the machine through the i8042
; (command 0xFE pulses the CPU reset line). After the reset the VM boots this again.
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
  ; Wait for the controller's input buffer to be empty, as firmware does.
  mov cx, 1000
.wait_ibf:
  in al, 0x64
  test al, 0x02
  loopnz .wait_ibf
  mov al, 0xfe
  out 0x64, al
  debugcon_puts no_reset
  debug_exit 0x3f

banner:   db "boot: i8042 reset", 10, 0
no_reset: db "i8042 reset did nothing", 10, 0
