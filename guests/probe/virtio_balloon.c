/* virtio-balloon (VIRTIO 1.2 §5.5): page frame numbers of pages from the
 * probe's reserved balloon area go on the inflate (0) and deflate (1) queues.
 * No optional features: no stats queue, no free page hinting. */
#include "commands.h"
#include "print.h"
#include "util.h"
#include "virtio_drv.h"

#define BAL_CFG_NUM_PAGES 0
#define BAL_CFG_ACTUAL    4
#define PAGE_SHIFT        12

/* Reserved by linker.ld after .bss: never zeroed or touched by the probe,
 * and inside the image range so memtest/poke leave it alone. */
extern uint8_t _balloon_start[], _balloon_end[];

#define BAL_MAX 64

static struct virtq_ring bal_inflate_ring DMA;
static struct virtq_ring bal_deflate_ring DMA;
static uint32_t bal_pfns[BAL_MAX] DMA __attribute__((aligned(16)));

static struct {
    int ready;
    struct vp_dev dev;
    struct virtq inflate, deflate;
    uint32_t inflated;       /* pages [0, inflated) of the area are in the balloon */
} bal;

static uint32_t bal_pages(void)
{
    uint32_t n = (uint32_t)(_balloon_end - _balloon_start) >> PAGE_SHIFT;
    return n < BAL_MAX ? n : BAL_MAX;
}

static int bal_ready(void)
{
    if (bal.ready && vp_current(&bal.dev))
        return 1;
    if (!vp_open(&bal.dev, VIRTIO_ID_BALLOON, 0, "balloon") || !vp_negotiate(&bal.dev, 0, 0) ||
        !vp_setup_queue(&bal.dev, &bal.inflate, &bal_inflate_ring, 0) ||
        !vp_setup_queue(&bal.dev, &bal.deflate, &bal_deflate_ring, 1))
        return 0;
    if (!bal.dev.device || bal.dev.device_len < 8) {
        error("virtio-balloon has no device configuration");
        return 0;
    }
    vp_driver_ok(&bal.dev);
    /* After a reset the balloon is empty; QEMU keeps the old `actual`
     * across a device reset, so say so explicitly. */
    bal.inflated = 0;
    vp_cfg_write32(&bal.dev, BAL_CFG_ACTUAL, 0);
    bal.ready = 1;
    return 1;
}

static void print_config(const char *when)
{
    print(when);
    print(" num_pages ");
    print_dec(vp_cfg32(&bal.dev, BAL_CFG_NUM_PAGES));
    print(" actual ");
    print_dec(vp_cfg32(&bal.dev, BAL_CFG_ACTUAL));
    print_nl();
}

void cmd_balloon(int argc, char **argv)
{
    int inflate = str_eq(argv[1], "inflate"), deflate = str_eq(argv[1], "deflate");
    uint32_t n = 0, len;
    if (!((inflate || deflate) && argc == 3) && !(str_eq(argv[1], "info") && argc == 2)) {
        error("usage: balloon inflate N | balloon deflate N | balloon info");
        return;
    }
    if (argc == 3 && !arg_u32("N", argv[2], &n))
        return;
    if (!bal_ready())
        return;
    if (!inflate && !deflate) {
        print_config("config");
        print("inflated ");
        print_dec(bal.inflated);
        print(" of ");
        print_dec(bal_pages());
        print(" pages at ");
        print_hex((uint32_t)_balloon_start, 8);
        print_nl();
        return;
    }
    uint32_t avail = inflate ? bal_pages() - bal.inflated : bal.inflated;
    if (n < 1 || n > avail) {
        print("error: bad N: must be 1..");
        print_dec(avail);
        println(inflate ? " (pages left to inflate)" : " (pages inflated)");
        return;
    }
    print_config("before");
    /* Inflate takes pages from the bottom up; deflate gives back the most
     * recently inflated ones. */
    uint32_t first = inflate ? bal.inflated : bal.inflated - n;
    uint32_t pfn0 = ((uint32_t)_balloon_start >> PAGE_SHIFT) + first;
    for (uint32_t i = 0; i < n; i++)
        bal_pfns[i] = pfn0 + i;
    struct virtq *vq = inflate ? &bal.inflate : &bal.deflate;
    struct vq_buf b = { bal_pfns, n * 4, 0 };
    int head = virtq_add(vq, &b, 1);
    if (head < 0) {
        error("virtio-balloon queue full");
        return;
    }
    virtq_kick(vq);
    if (!virtq_wait(vq, head, &len, inflate ? "balloon inflate" : "balloon deflate")) {
        bal.ready = 0;       /* the next command resets: the balloon starts empty */
        return;
    }
    bal.inflated = inflate ? bal.inflated + n : bal.inflated - n;
    /* As Linux does: tell the host how many pages the balloon now holds. */
    vp_cfg_write32(&bal.dev, BAL_CFG_ACTUAL, bal.inflated);
    print(inflate ? "inflate " : "deflate ");
    print_dec(n);
    print(" pages pfn ");
    print_hex_min(pfn0);
    print("-");
    print_hex_min(pfn0 + n - 1);
    print(" len ");
    print_dec(len);
    print_nl();
    print_config("after");
}
