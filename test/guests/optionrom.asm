; A minimal PC option ROM for the SeaBIOS tests: its init routine writes a line to
; COM1 through port 0x3f8 (polling the LSR's THR-empty bit) and returns. The checksum
; byte (the last one) is fixed up by optionrom.fixture.sh so the ROM sums to zero.
bits 16
org 0
%include "optionrom-header.inc"
%include "com1.inc"
  optionrom_header 1, init           ; 512 bytes
init:
  push ax
  push dx
  push si
  push ds
  push cs
  pop ds
  mov si, message
  com1_puts_si
  pop ds
  pop si
  pop dx
  pop ax
  retf

message: db "porthole option rom ok", 13, 10, 0

  optionrom_end
