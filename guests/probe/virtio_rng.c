/* virtio-rng (VIRTIO 1.2 §5.4): one device-writable buffer on queue 0. */
#include "commands.h"
#include "print.h"
#include "util.h"
#include "virtio_drv.h"

#define RNG_MAX 64

static struct virtq_ring rng_ring DMA;
static uint8_t rng_buf[RNG_MAX] DMA __attribute__((aligned(16)));

static struct {
    int ready;
    struct vp_dev dev;
    struct virtq vq;
} rng;

static int rng_ready(void)
{
    if (rng.ready && vp_current(&rng.dev))
        return 1;
    if (!vp_open(&rng.dev, VIRTIO_ID_RNG, 0, "rng") || !vp_negotiate(&rng.dev, 0, 0) ||
        !vp_setup_queue(&rng.dev, &rng.vq, &rng_ring, 0))
        return 0;
    vp_driver_ok(&rng.dev);
    rng.ready = 1;
    return 1;
}

void cmd_rng(int argc, char **argv)
{
    uint32_t n, len;
    if (argc != 3 || !str_eq(argv[1], "read")) {
        error("usage: rng read N");
        return;
    }
    if (!arg_u32("N", argv[2], &n))
        return;
    if (n < 1 || n > RNG_MAX) {
        error("bad N: must be 1..64");
        return;
    }
    if (!rng_ready())
        return;
    memset(rng_buf, 0, RNG_MAX);
    struct vq_buf b = { rng_buf, n, 1 };
    int head = virtq_add(&rng.vq, &b, 1);
    if (head < 0) {
        error("virtio-rng queue full");
        return;
    }
    virtq_kick(&rng.vq);
    if (!virtq_wait(&rng.vq, head, &len, "virtio-rng data")) {
        rng.ready = 0;       /* the next command resets and starts over */
        return;
    }
    /* The device may return fewer bytes than asked for; print what it says
     * it wrote (capped at the buffer). */
    print("data ");
    print_bytes(rng_buf, len < n ? len : n);
    print_nl();
    print("len ");
    print_dec(len);
    print_nl();
}
