; PIO-exit benchmark as a legacy option ROM, for QEMU (-option-rom): SeaBIOS far-calls
; the init entry at offset 3 in real mode. Runs the same loop as pio-loop.asm, prints
; the result and exits through isa-debug-exit (QEMU -device isa-debug-exit,iobase=0xf4).
; The checksum byte at the end is fixed up by the benchmark runner (sum of all bytes = 0).
bits 16
org 0
ROM_BLOCKS equ 2                     ; 1 KiB
  db 0x55, 0xaa
  db ROM_BLOCKS
  jmp init
  times 0x18 - ($ - $$) db 0
  dw 0                               ; no PCI data structure
  dw 0                               ; no PnP header
init:
  cli
  call pio_loop
  mov al, 0
  out 0xf4, al
.park:
  cli
  hlt
  jmp .park

%include "pio-loop.inc"

  times ROM_BLOCKS * 512 - 1 - ($ - $$) db 0
checksum: db 0
