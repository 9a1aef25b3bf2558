/* C entry point: called from boot.S with the loader's EAX and EBX. */
#include <stdint.h>
#include "bootinfo.h"
#include "print.h"
#include "serial.h"
#include "shell.h"

#define PROBE_VERSION "0.1"

void kmain(uint32_t magic, uint32_t info_addr) __attribute__((noreturn));

void kmain(uint32_t magic, uint32_t info_addr)
{
    serial_init();
    bootinfo_init(magic, info_addr);

    println("refvm probe guest v" PROBE_VERSION " (multiboot, 32-bit)");
    if (!bootinfo.multiboot) {
        print("warning: not entered by a Multiboot loader (eax=");
        print_hex(magic, 8);
        println(")");
    }
    if (bootinfo.have_mem) {
        print("mem_lower=");
        print_dec(bootinfo.mem_lower);
        print("K mem_upper=");
        print_dec(bootinfo.mem_upper);
        println("K");
    } else {
        println("mem: no memory sizes from the boot loader");
    }
    shell_run();
}
