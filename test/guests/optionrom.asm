; A minimal PC option ROM for the SeaBIOS tests: its init routine writes a line to
; COM1 through port 0x3f8 (polling the LSR's THR-empty bit) and returns. The checksum
; byte (the last one) is fixed up by optionrom.fixture.sh so the ROM sums to zero.
bits 16
org 0
rom_start:
  db 0x55, 0xaa                   ; signature
  db ROM_SIZE / 512               ; length in 512-byte blocks
  jmp init                        ; init entry point at offset 3

init:
  push ax
  push dx
  push si
  push ds
  push cs
  pop ds
  mov si, message
.next:
  lodsb
  test al, al
  jz .done
  mov ah, al
  mov dx, 0x3fd                   ; LSR
.wait:
  in al, dx
  test al, 0x20                   ; THR empty
  jz .wait
  mov al, ah
  mov dx, 0x3f8
  out dx, al
  jmp .next
.done:
  pop ds
  pop si
  pop dx
  pop ax
  retf

message: db "porthole option rom ok", 13, 10, 0

ROM_SIZE equ 512
  times ROM_SIZE - 1 - ($ - rom_start) db 0
checksum: db 0
