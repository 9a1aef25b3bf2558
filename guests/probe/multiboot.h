/* The Multiboot v1 information structure, as far as the probe reads it
 * (layout from the Multiboot 0.6.96 specification, section 3.3). */
#ifndef PROBE_MULTIBOOT_H
#define PROBE_MULTIBOOT_H

#include <stdint.h>

#define MULTIBOOT_BOOTLOADER_MAGIC 0x2BADB002u

#define MB_INFO_MEMORY     (1u << 0)   /* mem_lower / mem_upper valid */
#define MB_INFO_CMDLINE    (1u << 2)   /* cmdline valid */
#define MB_INFO_LOADER     (1u << 9)   /* boot_loader_name valid */

struct multiboot_info {
    uint32_t flags;
    uint32_t mem_lower;          /* KiB of RAM from address 0 */
    uint32_t mem_upper;          /* KiB of RAM from 1 MiB */
    uint32_t boot_device;
    uint32_t cmdline;            /* physical address of a NUL-terminated string */
    uint32_t mods_count;
    uint32_t mods_addr;
    uint32_t syms[4];
    uint32_t mmap_length;
    uint32_t mmap_addr;
    uint32_t drives_length;
    uint32_t drives_addr;
    uint32_t config_table;
    uint32_t boot_loader_name;   /* physical address of a NUL-terminated string */
};

#endif
