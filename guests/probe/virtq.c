#include "virtq.h"
#include "io.h"
#include "print.h"
#include "util.h"

/* x86 keeps stores in order and loads in order (TSO), so only the compiler
 * must be kept from reordering ring accesses around each other. */
#define barrier() __asm__ volatile("" ::: "memory")

void virtq_init(struct virtq *vq, struct virtq_ring *ring, uint16_t index, uint16_t size)
{
    memset(ring, 0, sizeof(*ring));
    vq->ring = ring;
    vq->index = index;
    vq->size = size;
    vq->last_used = 0;
    vq->notify = 0;
    for (uint16_t i = 0; i + 1 < size; i++)
        ring->desc[i].next = i + 1;
    vq->free_head = 0;
    vq->num_free = size;
}

int virtq_add(struct virtq *vq, const struct vq_buf *bufs, int n)
{
    if (n <= 0 || n > vq->num_free)
        return -1;
    struct virtq_ring *r = vq->ring;
    uint16_t head = vq->free_head, i = head, last = head;
    for (int k = 0; k < n; k++) {
        struct virtq_desc *d = &r->desc[i];
        d->addr = (uint32_t)bufs[k].addr;   /* paging off: virtual == physical */
        d->len = bufs[k].len;
        d->flags = (uint16_t)((bufs[k].device_writes ? VIRTQ_DESC_F_WRITE : 0) |
                              (k + 1 < n ? VIRTQ_DESC_F_NEXT : 0));
        last = i;
        i = d->next;
    }
    vq->free_head = r->desc[last].next;
    vq->num_free = (uint16_t)(vq->num_free - n);
    /* Descriptors before the ring entry, the ring entry before the index. */
    volatile uint16_t *avail_idx = &r->avail.idx;
    uint16_t idx = *avail_idx;
    r->avail.ring[idx % vq->size] = head;
    barrier();
    *avail_idx = (uint16_t)(idx + 1);
    barrier();
    return head;
}

void virtq_kick(struct virtq *vq)
{
    barrier();
    /* Without VIRTIO_F_NOTIFICATION_DATA the notify value is the queue index. */
    *vq->notify = vq->index;
}

int virtq_get_used(struct virtq *vq, uint32_t *id, uint32_t *len)
{
    struct virtq_ring *r = vq->ring;
    volatile uint16_t *used_idx = &r->used.idx;
    if (*used_idx == vq->last_used)
        return 0;
    barrier();   /* read the element only after seeing the index move */
    uint16_t slot = (uint16_t)(vq->last_used % vq->size);
    uint32_t head = r->used.ring[slot].id;
    *len = r->used.ring[slot].len;
    *id = head;
    vq->last_used++;
    virtq_free_chain(vq, head);
    return 1;
}

void virtq_free_chain(struct virtq *vq, uint32_t head)
{
    struct virtq_ring *r = vq->ring;
    if (head >= vq->size)
        return;
    uint16_t i = (uint16_t)head, n = 1;
    while ((r->desc[i].flags & VIRTQ_DESC_F_NEXT) && n < vq->size) {
        i = r->desc[i].next;
        n++;
    }
    r->desc[i].next = vq->free_head;
    vq->free_head = (uint16_t)head;
    vq->num_free = (uint16_t)(vq->num_free + n);
}

void virtq_repost(struct virtq *vq, uint16_t head)
{
    struct virtq_ring *r = vq->ring;
    volatile uint16_t *avail_idx = &r->avail.idx;
    uint16_t idx = *avail_idx;
    r->avail.ring[idx % vq->size] = head;
    barrier();
    *avail_idx = (uint16_t)(idx + 1);
    barrier();
    *vq->notify = vq->index;
}

int virtq_wait_next(struct virtq *vq, uint32_t *id, uint32_t *len, const char *what)
{
    volatile uint16_t *used_idx = &vq->ring->used.idx;
    uint32_t polls = 0, start = 0;
    /* The fast case (refvm completes the request during the notify exit) is
     * one read of used->idx; the TSC is read only from the 256th poll on. */
    while (*used_idx == vq->last_used) {
        if (++polls & 255)
            continue;
        uint32_t now = rdtsc_lo();
        if (polls == 256)
            start = now;
        else if (now - start > VQ_REQUEST_TICKS || polls >= VQ_REQUEST_POLLS) {
            print("error: timeout waiting for ");
            println(what);
            return 0;
        }
    }
    barrier();
    uint16_t slot = (uint16_t)(vq->last_used % vq->size);
    *id = vq->ring->used.ring[slot].id;
    *len = vq->ring->used.ring[slot].len;
    vq->last_used++;
    return 1;
}

void poll_start(struct poll_bound *b, uint32_t ticks, uint32_t max_polls)
{
    b->start = rdtsc_lo();
    b->polls = 0;
    b->max_polls = max_polls;
    b->ticks = ticks;
}

int poll_expired(struct poll_bound *b)
{
    if (++b->polls >= b->max_polls)
        return 1;
    /* unsigned difference: correct across one wrap of the low half */
    return (b->polls & 255) == 0 && rdtsc_lo() - b->start > b->ticks;
}

int virtq_wait(struct virtq *vq, int head, uint32_t *len, const char *what)
{
    volatile uint16_t *used_idx = &vq->ring->used.idx;
    struct poll_bound b;
    uint32_t id;
    poll_start(&b, VQ_REQUEST_TICKS, VQ_REQUEST_POLLS);
    do {
        if (*used_idx == vq->last_used)
            continue;
        /* A completion of some earlier request that timed out is only
         * freed; we wait for our own chain's head. */
        if (virtq_get_used(vq, &id, len) && id == (uint32_t)head)
            return 1;
    } while (!poll_expired(&b));
    print("error: timeout waiting for ");
    println(what);
    return 0;
}
