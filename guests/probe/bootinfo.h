/* What the loader told us, copied out of the Multiboot info at boot so that
 * nothing later depends on the loader's memory (which memtest may overwrite). */
#ifndef PROBE_BOOTINFO_H
#define PROBE_BOOTINFO_H

#include <stdint.h>

#define BOOTINFO_STR_MAX 128

struct bootinfo {
    int multiboot;               /* EAX held the Multiboot magic */
    uint32_t magic;              /* EAX at entry */
    uint32_t info_addr;          /* EBX at entry */
    uint32_t flags;              /* 0 when !multiboot */
    int have_mem;
    uint32_t mem_lower;          /* KiB */
    uint32_t mem_upper;          /* KiB */
    int have_cmdline;
    char cmdline[BOOTINFO_STR_MAX];
    int have_loader;
    char loader[BOOTINFO_STR_MAX];
};

extern struct bootinfo bootinfo;

void bootinfo_init(uint32_t magic, uint32_t info_addr);

#endif
