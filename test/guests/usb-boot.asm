; A boot sector for the USB stick test: SeaBIOS loads it from the emulated USB mass storage
; device (its only disk). It reads the disk's second sector through int 13h's extended read,
; checks the marker the test wrote there, reports on the debug console and exits through
; isa-debug-exit: status 0x55 when the marker matched, 0x43 when it did not, 0x45 on a read error.
bits 16
org 0x7c00
%include "debugcon.inc"
%include "debug-exit.inc"
start:
  cli
  xor ax, ax
  mov ds, ax
  mov es, ax
  mov ss, ax
  mov sp, 0x7c00
  sti
  mov [drive], dl
  debugcon_puts booted
  ; Extended read (EDD): one sector, LBA 1, to 0000:8000.
  mov si, dap
  mov dl, [drive]
  mov ah, 0x42
  int 0x13
  jc read_failed
  mov si, 0x8000
  mov di, marker
  mov cx, marker_len
  repe cmpsb
  jne bad_marker
  debugcon_puts read_ok
  debug_exit 0x2a
read_failed:
  debugcon_puts read_error
  debug_exit 0x22
bad_marker:
  debugcon_puts wrong
  debug_exit 0x21

drive: db 0
align 4
dap:
  db 16, 0
  dw 1            ; sectors
  dw 0x8000, 0    ; offset, segment
  dq 1            ; LBA
booted: db "usb-boot: running from the USB stick", 10, 0
read_ok: db "usb-boot: sector 1 holds the marker", 10, 0
read_error: db "usb-boot: int 13h read failed", 10, 0
wrong: db "usb-boot: sector 1 does not hold the marker", 10, 0
marker: db "PORTHOLE-USB-LBA1"
marker_len equ $ - marker
times 510 - ($ - $$) db 0
dw 0xaa55
