/* Multiboot v1 header, stack and entry point of the probe guest.
 *
 * The loader (QEMU -kernel, refvm) enters _start in 32-bit protected mode with
 * flat segments, paging and interrupts off, EAX = 0x2BADB002 and EBX = the
 * physical address of the Multiboot information structure. Nothing else is
 * promised: no valid stack, no IDT, possibly no valid GDTR. We never reload a
 * segment register, so the loader's flat segments stay in use and we need no
 * GDT of our own. */

#define MB_MAGIC     0x1BADB002
/* bit 0: page-align modules (we load none, harmless); bit 1: we want
 * mem_lower/mem_upper. Bit 16 stays clear: the loader takes addresses from the
 * ELF program headers. */
#define MB_FLAGS     0x00000003
#define STACK_SIZE   16384

    .section .multiboot, "a"
    .balign 4
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)      /* magic + flags + checksum == 0 (mod 2^32) */

    .section .bss
    .balign 16
    .globl stack_bottom, stack_top
stack_bottom:
    .skip STACK_SIZE
stack_top:

    .section .text
    .globl _start
    .type _start, @function
_start:
    cli                               /* already off per spec; cheap insurance */
    cld                               /* C code and rep stos assume DF = 0 */
    movl %eax, %esi                   /* keep magic and info pointer across the */
    movl %ebx, %ebp                   /* bss clear, which uses eax/ecx/edi */

    /* Zero .bss ourselves: a loader must zero it per the ELF headers, but it
     * costs a few instructions to not depend on that. The stack lives in .bss,
     * and nothing is on it yet. */
    movl $_bss_start, %edi
    movl $_bss_end, %ecx
    subl %edi, %ecx
    shrl $2, %ecx
    xorl %eax, %eax
    rep stosl

    movl $stack_top, %esp
    xorl %eax, %eax
    pushl %eax                        /* keep the stack 16-byte aligned at the call */
    pushl %eax
    pushl %ebp                        /* arg 2: multiboot info address */
    pushl %esi                        /* arg 1: magic from EAX */
    call kmain

    /* kmain never returns; if it does, stay here without HLT (with an
     * in-kernel irqchip HLT never returns control anyway). */
1:  jmp 1b
    .size _start, . - _start

    .section .note.GNU-stack, "", @progbits
