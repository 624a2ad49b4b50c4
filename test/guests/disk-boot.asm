; A boot sector for the virtio-blk test: SeaBIOS loads it from the disk (its only one). Through
; int 13h's extended functions it reads the disk's second sector and checks the marker the
; test wrote there, then writes itself to the third sector, which the test finds in the
; image afterwards. Reports on the debug console and exits through isa-debug-exit:
; 0x2a (status 0x55) when all went well, 0x21 on a wrong marker, 0x22 on a read error,
; 0x23 on a write error.
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
  ; Extended read: one sector, LBA 1, to 0000:8000.
  mov si, read_dap
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
  ; Extended write (no verify): this boot sector (0000:7c00) to LBA 2.
  mov si, write_dap
  mov dl, [drive]
  mov ax, 0x4300
  int 0x13
  jc write_failed
  debugcon_puts write_ok
  debug_exit 0x2a
read_failed:
  debugcon_puts read_error
  debug_exit 0x22
write_failed:
  debugcon_puts write_error
  debug_exit 0x23
bad_marker:
  debugcon_puts wrong
  debug_exit 0x21

drive: db 0
align 4
read_dap:
  db 16, 0
  dw 1            ; sectors
  dw 0x8000, 0    ; offset, segment
  dq 1            ; LBA
write_dap:
  db 16, 0
  dw 1
  dw 0x7c00, 0    ; this boot sector itself
  dq 2
booted: db "disk-boot: running from the disk", 10, 0
read_ok: db "disk-boot: sector 1 holds the marker", 10, 0
write_ok: db "disk-boot: wrote sector 2", 10, 0
read_error: db "disk-boot: int 13h read failed", 10, 0
write_error: db "disk-boot: int 13h write failed", 10, 0
wrong: db "disk-boot: sector 1 does not hold the marker", 10, 0
marker: db "PORTHOLE-DISK-LBA1"
marker_len equ $ - marker
times 510 - ($ - $$) db 0
dw 0xaa55
