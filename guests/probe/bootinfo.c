/* Copy the useful parts of the Multiboot info into our own .bss. */
#include "bootinfo.h"
#include "multiboot.h"
#include "util.h"

struct bootinfo bootinfo;

/* Bounded copy: a loader string longer than our buffer is truncated rather
 * than trusted. */
static void copy_str(char *dst, uint32_t src_addr)
{
    const volatile char *src = (const volatile char *)src_addr;
    size_t i;
    for (i = 0; i + 1 < BOOTINFO_STR_MAX && src[i]; i++)
        dst[i] = src[i];
    dst[i] = '\0';
}

void bootinfo_init(uint32_t magic, uint32_t info_addr)
{
    bootinfo.magic = magic;
    bootinfo.info_addr = info_addr;
    if (magic != MULTIBOOT_BOOTLOADER_MAGIC || info_addr == 0)
        return;

    const struct multiboot_info *mbi = (const struct multiboot_info *)info_addr;
    bootinfo.multiboot = 1;
    bootinfo.flags = mbi->flags;
    if (mbi->flags & MB_INFO_MEMORY) {
        bootinfo.have_mem = 1;
        bootinfo.mem_lower = mbi->mem_lower;
        bootinfo.mem_upper = mbi->mem_upper;
    }
    if ((mbi->flags & MB_INFO_CMDLINE) && mbi->cmdline) {
        bootinfo.have_cmdline = 1;
        copy_str(bootinfo.cmdline, mbi->cmdline);
    }
    if ((mbi->flags & MB_INFO_LOADER) && mbi->boot_loader_name) {
        bootinfo.have_loader = 1;
        copy_str(bootinfo.loader, mbi->boot_loader_name);
    }
}
