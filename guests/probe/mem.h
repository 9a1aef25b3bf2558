/* Which guest-physical ranges the probe may touch. RAM is what the Multiboot
 * mem_lower/mem_upper fields describe: [0, mem_lower KiB) and
 * [1 MiB, 1 MiB + mem_upper KiB). The probe's own image (code, data, bss with
 * its stack and state) is [_image_start, _image_end). */
#ifndef PROBE_MEM_H
#define PROBE_MEM_H

#include <stdint.h>

enum mem_check {
    MEM_OK = 0,
    MEM_NO_INFO,         /* the loader gave no memory sizes */
    MEM_NOT_RAM,         /* some byte of the range is outside RAM */
    MEM_OVERLAPS_IMAGE,  /* some byte of the range belongs to the probe */
};

/* len >= 1; addr + len may exceed 4 GiB (then it is not RAM). */
enum mem_check mem_check_ram(uint32_t addr, uint32_t len);
/* Like mem_check_ram, and also refuses the probe's own image. */
enum mem_check mem_check_writable(uint32_t addr, uint32_t len);
const char *mem_check_message(enum mem_check r);

uint32_t mem_image_start(void);
uint32_t mem_image_end(void);
uint32_t mem_stack_bottom(void);
uint32_t mem_stack_top(void);
uint32_t mem_dma_start(void);      /* virtqueue rings and buffers (.bss.dma) */
uint32_t mem_dma_end(void);
uint32_t mem_balloon_start(void);  /* pages reserved for virtio-balloon */
uint32_t mem_balloon_end(void);

#endif
