; Flat real-mode test guest (loaded at 0x1000): interrupt-driven transmit, the way Linux's
; 8250 driver sends. After "serial-irq-flood\n" (polled) it enables the THRE interrupt and
; sleeps in HLT; each IRQ 4 writes up to 16 bytes of 0, 1, 2, … 255, 0, … until
; SERIAL_IRQ_FLOOD_BYTES are out, then turns the interrupt off and parks. If THRE never
; came back after a full output ring, this guest would sleep forever.
bits 16
org 0x1000
%include "pic.inc"
%include "com1.inc"

%ifndef SERIAL_IRQ_FLOOD_BYTES
SERIAL_IRQ_FLOOD_BYTES equ 196608
%endif
IRQ4_VECTOR equ 0x0c

start:
  cli
  cld
  xor ax, ax
  mov ds, ax
  mov ss, ax
  mov sp, 0x7000

  ; 8259 pair: vectors 8..15 and 0x70..0x77, edge-triggered, only IRQ 4 unmasked.
  pic_init 0xef, 0xff
  mov word [IRQ4_VECTOR * 4], isr
  mov word [IRQ4_VECTOR * 4 + 2], 0

  ; COM1: 115200 8N1, FIFOs on, DTR RTS OUT2.
  com1_init 0x0b

  mov si, marker
  com1_puts_si

  mov dword [remaining], SERIAL_IRQ_FLOOD_BYTES
  mov dx, COM1 + 1
  mov al, 0x02                ; THRE interrupt: raised at once, THR is empty
  out dx, al
.sleep:
  sti
  hlt
  jmp .sleep

isr:
  push ax
  push cx
  push dx
.check:
  mov dx, COM1 + 2
  in al, dx
  test al, 1
  jnz .done
  and al, 0x0e
  cmp al, 0x02
  jne .check                  ; nothing else is enabled; reading IIR again moves on
  mov cx, 16
  mov dx, COM1
.send:
  cmp dword [remaining], 0
  je .finished
  mov al, [next_byte]
  out dx, al
  inc byte [next_byte]
  dec dword [remaining]
  loop .send
  jmp .check
.finished:
  mov dx, COM1 + 1
  xor al, al
  out dx, al                  ; all sent: THRE interrupt off
  jmp .check
.done:
  mov al, 0x20
  out 0x20, al
  pop dx
  pop cx
  pop ax
  iret

marker: db "serial-irq-flood", 10, 0
next_byte: db 0
align 4
remaining: dd 0
