; Flat real-mode SMP test guest. The BSP enables its local APIC, copies an AP trampoline
; to 0x8000, and sends INIT, SIPI, SIPI to all other CPUs through the ICR (Intel MP spec
; B.4). Each AP prints its APIC id (one OUT to the debug console: an AP exit handled on
; the machine thread), marks its id, atomically counts itself and parks with cli/hlt.
; The BSP waits (bounded by the TSC), then prints:
;   smp: start / aps: <ap ids> / cpus: N / apic ids: <ids>
; and exits through isa-debug-exit. Without isa-debug-exit it parks too, so every CPU
; ends in hlt with interrupts off (the lifecycle test stops such a VM).
;
; The LAPIC (0xFEE00000) is above 1 MiB, so the BSP uses unreal mode: FS gets a flat 4 GiB
; limit in protected mode and keeps it back in real mode (FS is never reloaded after).
; No int/iret anywhere: KVM's emulator on this host refuses them in 32-bit mode.
bits 16
org 0x1000
%include "debugcon.inc"
%include "debug-exit.inc"

LAPIC           equ 0xfee00000
LAPIC_ID        equ LAPIC + 0x20
LAPIC_SVR       equ LAPIC + 0xf0
LAPIC_ICR_LO    equ LAPIC + 0x300
LAPIC_ICR_HI    equ LAPIC + 0x310
ICR_PENDING     equ 1 << 12
; Destination shorthand "all excluding self" (bits 19:18 = 11), assert (bit 14).
ICR_INIT        equ 0x000c4500
ICR_SIPI        equ 0x000c4600
TRAMPOLINE      equ 0x8000          ; 4 KiB aligned, below 1 MiB: SIPI vector 0x08
AP_COUNT        equ 0x0500          ; word, incremented with lock by each AP
ID_FLAGS        equ 0x0510          ; one byte per APIC id (0..63)
; TSC cycles for the MP spec delays, sized for TSCs up to ~3 GHz (longer is harmless).
DELAY_10MS      equ 30000000
DELAY_200US     equ 600000
WAIT_ROUNDS     equ 400             ; x 10 ms-ish: the bounded wait for APs

start:
  cli
  cld
  xor ax, ax
  mov ds, ax
  mov es, ax
  mov si, msg_start
  call print

  ; Copy the AP trampoline below 1 MiB.
  mov si, ap_trampoline
  mov di, TRAMPOLINE
  mov cx, ap_trampoline_end - ap_trampoline
  rep movsb

  call enter_unreal

  ; Software-enable the local APIC, spurious vector 0xff.
  mov eax, [fs:dword LAPIC_SVR]
  or eax, 0x1ff
  mov [fs:dword LAPIC_SVR], eax
  mov eax, [fs:dword LAPIC_ID]
  shr eax, 24
  mov bx, ax
  mov byte [ID_FLAGS + bx], 1

  mov si, msg_aps
  call print

  ; INIT, wait 10 ms, SIPI, wait 200 us, SIPI.
  mov dword [fs:dword LAPIC_ICR_HI], 0
  mov dword [fs:dword LAPIC_ICR_LO], ICR_INIT
  call wait_icr
  mov ecx, DELAY_10MS
  call delay
  mov dword [fs:dword LAPIC_ICR_LO], ICR_SIPI | (TRAMPOLINE >> 12)
  call wait_icr
  mov ecx, DELAY_200US
  call delay
  mov dword [fs:dword LAPIC_ICR_LO], ICR_SIPI | (TRAMPOLINE >> 12)
  call wait_icr

  ; Expected APs = logical processor count (CPUID.1:EBX[23:16], 0 means 1) - 1. It only
  ; ends the wait early; the printed count is what the APs themselves counted.
  mov eax, 1
  cpuid
  shr ebx, 16
  and bx, 0xff
  jnz .have_count
  inc bx
.have_count:
  dec bx
  mov bp, WAIT_ROUNDS
.wait:
  mov ax, [AP_COUNT]
  cmp ax, bx
  jae .done
  mov ecx, DELAY_10MS
  call delay
  dec bp
  jnz .wait
.done:
  mov si, msg_cpus
  call print
  mov ax, [AP_COUNT]
  inc ax
  call print_dec
  mov si, msg_ids
  call print
  xor bx, bx
.next_id:
  cmp byte [ID_FLAGS + bx], 0
  je .skip_id
  mov al, ' '
  call putc
  mov ax, bx
  call print_dec
.skip_id:
  inc bx
  cmp bx, 64
  jb .next_id
  mov al, 10
  call putc

  debug_exit 0

%include "unreal.inc"

wait_icr:
  test dword [fs:dword LAPIC_ICR_LO], ICR_PENDING
  jnz wait_icr
  ret

; Busy-waits ECX TSC cycles (ECX < 2^32).
delay:
  push eax
  push edx
  push esi
  rdtsc
  mov esi, eax
.spin:
  pause
  rdtsc
  sub eax, esi
  cmp eax, ecx
  jb .spin
  pop esi
  pop edx
  pop eax
  ret

%include "debugcon-print.inc"

; Prints AX in decimal.
print_dec:
  push ax
  push bx
  push cx
  push dx
  mov bx, 10
  xor cx, cx
.divide:
  xor dx, dx
  div bx
  push dx
  inc cx
  test ax, ax
  jnz .divide
.emit:
  pop ax
  add al, '0'
  call putc
  loop .emit
  pop dx
  pop cx
  pop bx
  pop ax
  ret

; --- AP trampoline: copied to TRAMPOLINE, entered at CS:IP = 0x0800:0000 in real mode.
; Position independent: only relative jumps and absolute data addresses.
ap_trampoline:
  cli
  xor ax, ax
  mov ds, ax
  mov eax, 1
  cpuid
  shr ebx, 24               ; initial APIC id
  mov al, bl
  add al, '0'
  cmp al, '9'
  jbe .digit
  add al, 'a' - '9' - 1
.digit:
  mov dx, DEBUGCON
  out dx, al
  and bx, 63
  mov byte [ID_FLAGS + bx], 1
  lock inc word [AP_COUNT]
.park:
  cli
  hlt
  jmp short .park
ap_trampoline_end:

msg_start: db "smp: start", 10, 0
msg_aps:   db "aps: ", 0
msg_cpus:  db 10, "cpus: ", 0
msg_ids:   db 10, "apic ids:", 0
