; Serial throughput loop as a legacy option ROM for QEMU (-option-rom): SeaBIOS far-calls
; the init entry at offset 3 in real mode. Same loop as serial-flood.asm; parks afterwards.
; The checksum byte at the end is fixed up by the benchmark (sum of all bytes = 0).
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
  cld
  push cs
  pop ds
  call serial_flood
.park:
  cli
  hlt
  jmp .park

%include "serial-flood.inc"

  times ROM_BLOCKS * 512 - 1 - ($ - $$) db 0
checksum: db 0
