/* Split virtqueues (VIRTIO 1.2 §2.7), driver side, polled: no interrupts, so
 * completion is seen by watching used->idx with an iteration bound. */
#ifndef PROBE_VIRTQ_H
#define PROBE_VIRTQ_H

#include <stdint.h>

#define VQ_SIZE 16            /* descriptors per queue; devices may offer more */

#define VIRTQ_DESC_F_NEXT  1
#define VIRTQ_DESC_F_WRITE 2

struct virtq_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

/* One queue's rings in 1 KiB: descriptors at +0 (16-byte aligned), the
 * driver (avail) area at +256 (2-byte aligned), the device (used) area at
 * +512 (4-byte aligned). Lives in .bss.dma inside the image. */
struct virtq_ring {
    struct virtq_desc desc[VQ_SIZE];
    struct {
        uint16_t flags;
        uint16_t idx;
        uint16_t ring[VQ_SIZE];
        uint16_t used_event;
    } avail;
    uint8_t pad1[256 - 2 * (VQ_SIZE + 3)];
    struct {
        uint16_t flags;
        uint16_t idx;
        struct { uint32_t id; uint32_t len; } ring[VQ_SIZE];
        uint16_t avail_event;
    } used;
    uint8_t pad2[512 - (4 + 8 * VQ_SIZE + 2)];
} __attribute__((aligned(1024)));

#define DMA __attribute__((section(".bss.dma")))

struct virtq {
    struct virtq_ring *ring;
    uint16_t index;           /* queue number in the device */
    uint16_t size;            /* negotiated size, <= VQ_SIZE */
    uint16_t free_head;       /* free descriptors chained through .next */
    uint16_t num_free;
    uint16_t last_used;       /* used->idx already consumed */
    volatile uint16_t *notify;/* this queue's notify address */
};

struct vq_buf {
    void *addr;
    uint32_t len;
    int device_writes;        /* 1: the device writes this buffer */
};

/* Fresh rings (zeroed) with all descriptors free. */
void virtq_init(struct virtq *vq, struct virtq_ring *ring, uint16_t index, uint16_t size);
/* Chains `n` buffers into free descriptors and makes the chain available.
 * Returns the head descriptor id, or -1 if there are not enough free. Does
 * not notify. */
int virtq_add(struct virtq *vq, const struct vq_buf *bufs, int n);
/* Tells the device that queue has new buffers (one MMIO write). */
void virtq_kick(struct virtq *vq);
/* Takes one used element if there is one: 1 with id/len set and the
 * chain's descriptors freed, else 0. Never waits. */
int virtq_get_used(struct virtq *vq, uint32_t *id, uint32_t *len);
/* Polls (bounded by VQ_REQUEST_*) until the chain starting at `head` comes
 * back: returns 1 with *len, or 0 after printing "error: timeout waiting for
 * WHAT". Other completions met meanwhile are freed. */
int virtq_wait(struct virtq *vq, int head, uint32_t *len, const char *what);

/* For one request repeated many times (`blk bench`): the driver keeps the
 * chain (its descriptors unchanged) instead of freeing it after each use. */
/* Makes the kept chain at `head` available again and notifies. */
void virtq_repost(struct virtq *vq, uint16_t head);
/* Polls (bounded as virtq_wait) for the next used element and takes it
 * WITHOUT freeing its chain: 1 with id and len set, or 0 after the timeout line. */
int virtq_wait_next(struct virtq *vq, uint32_t *id, uint32_t *len, const char *what);
/* Returns a kept chain's descriptors to the free list. */
void virtq_free_chain(struct virtq *vq, uint32_t head);

/* Bounded polling: a wait ends after `ticks` TSC ticks (checked every 256
 * polls) or `max_polls` polls, whichever comes first; the poll cap only
 * matters if the TSC does not advance. */
struct poll_bound {
    uint32_t start, polls, max_polls, ticks;
};
void poll_start(struct poll_bound *b, uint32_t ticks, uint32_t max_polls);
int poll_expired(struct poll_bound *b);

/* A request: 2^31 ticks (0.4-2 s at 1-5 GHz). A device that completes it
 * while handling the notify (refvm) is seen on the first poll; QEMU finishes
 * file I/O on another thread in real time. */
#define VQ_REQUEST_TICKS 0x80000000u
#define VQ_REQUEST_POLLS 0x10000000u
/* `console read`: host input normally arrived before the command: 2^26
 * ticks (13-67 ms). */
#define VQ_INPUT_TICKS   0x04000000u
#define VQ_INPUT_POLLS   0x00800000u

#endif
