#include "mem.h"
#include "bootinfo.h"

extern char _image_start[], _image_end[];
extern char stack_bottom[], stack_top[];
extern char _dma_start[], _dma_end[], _balloon_start[], _balloon_end[];

#define ONE_MIB 0x100000ull

uint32_t mem_image_start(void) { return (uint32_t)_image_start; }
uint32_t mem_image_end(void) { return (uint32_t)_image_end; }
uint32_t mem_stack_bottom(void) { return (uint32_t)stack_bottom; }
uint32_t mem_stack_top(void) { return (uint32_t)stack_top; }
uint32_t mem_dma_start(void) { return (uint32_t)_dma_start; }
uint32_t mem_dma_end(void) { return (uint32_t)_dma_end; }
uint32_t mem_balloon_start(void) { return (uint32_t)_balloon_start; }
uint32_t mem_balloon_end(void) { return (uint32_t)_balloon_end; }

/* 64-bit end addresses so a range reaching 4 GiB cannot wrap; comparisons
 * only, so no libgcc division helpers are pulled in. */
static int inside(uint64_t start, uint64_t end, uint64_t lo, uint64_t hi)
{
    return start >= lo && end <= hi;
}

enum mem_check mem_check_ram(uint32_t addr, uint32_t len)
{
    if (!bootinfo.have_mem)
        return MEM_NO_INFO;
    uint64_t start = addr, end = (uint64_t)addr + len;
    uint64_t lower_end = (uint64_t)bootinfo.mem_lower * 1024;
    uint64_t upper_end = ONE_MIB + (uint64_t)bootinfo.mem_upper * 1024;
    if (inside(start, end, 0, lower_end) || inside(start, end, ONE_MIB, upper_end))
        return MEM_OK;
    return MEM_NOT_RAM;
}

enum mem_check mem_check_writable(uint32_t addr, uint32_t len)
{
    enum mem_check r = mem_check_ram(addr, len);
    if (r != MEM_OK)
        return r;
    uint64_t start = addr, end = (uint64_t)addr + len;
    if (start < mem_image_end() && end > mem_image_start())
        return MEM_OVERLAPS_IMAGE;
    return MEM_OK;
}

const char *mem_check_message(enum mem_check r)
{
    switch (r) {
    case MEM_OK:
        return "ok";
    case MEM_NO_INFO:
        return "no memory sizes from the boot loader";
    case MEM_NOT_RAM:
        return "range is outside RAM";
    case MEM_OVERLAPS_IMAGE:
        return "range overlaps the probe image/stack";
    }
    return "?";
}
