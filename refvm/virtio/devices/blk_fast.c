/* virtio-blk's compiled fast path: the common split-ring IN/OUT request, served straight between the image
 * file and guest RAM (VIRTIO 1.2 2.7 and 5.2.6).
 *
 * The Python model (refvm/virtio/devices/blk.py, refvm/virtio/split_queue.py) is the reference and the
 * fallback. This file only serves requests whose every part is well formed and ordinary; at the first
 * request that is anything else it STOPS, without having consumed that request (last_avail_idx still names
 * it), and the Python model takes it with its full checks (DEVICE_NEEDS_RESET, IOERR, UNSUPP, logging).
 * So no spec answer to bad input lives here: a refusal is always "not mine", never an error.
 *
 * Everything in guest memory is untrusted and may change under us (other vCPUs): each ring field and each
 * descriptor is read once into a local; every descriptor's address and length is checked against the RAM
 * regions before any byte is touched; `next` is checked against the table; walks are bounded by the queue
 * size (direct) and the table length (indirect).
 *
 * The used ring: each used element is stored, then one release store of used idx per call (2.7.8.2: the
 * element before the idx). When the call ends the batch (ring empty or budget spent) and the caller asks,
 * it also takes SplitQueue.needs_interrupt's decision for the batch (2.7.7.2), after a full fence so that
 * used_event / the avail flags are read after used idx is visible. The avail_event store (EVENT_IDX, 2.7.10) is followed by a full fence
 * before the avail idx is read again, so a buffer made available in between is never missed.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdint.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "virtio rings are little endian; this fast path reads them natively"
#endif

#define BF_WRITE_OK 1u   /* a write is a plain pwritev (not read-only, no write-through flush owed) */
#define BF_INDIRECT 2u   /* VIRTIO_F_RING_INDIRECT_DESC negotiated */
#define BF_EVENT_IDX 4u  /* VIRTIO_F_RING_EVENT_IDX negotiated */
#define BF_SUPPRESSED 8u /* the device asked for no available buffer notifications */
#define BF_DECIDE 16u    /* take the used buffer notification decision when done (2.7.7.2) */

#define VIRTQ_AVAIL_F_NO_INTERRUPT 1u

#define DESC_F_NEXT 1u
#define DESC_F_WRITE 2u
#define DESC_F_INDIRECT 4u

#define T_OUT 1u
#define T_BARRIER 0x80000000u
#define SECTOR 512u
#define MAX_RW_BYTES (64ull << 20) /* blk.py's MAX_RW_BYTES */
#define MAX_SEGS 1024              /* = Linux IOV_MAX; longer chains go to Python */

struct bf_region {
    uint64_t gpa;
    uint64_t size;
    uint8_t *hva;
};

struct bf_dev {
    int fd;
    uint32_t nregions;
    struct bf_region *regions;
    uint64_t capacity; /* sectors */
    uint32_t blk_size;
    uint64_t rd_bytes, wr_bytes, rd_ops, wr_ops; /* since Python last folded them into its stats */
    uint64_t served;                             /* requests completed here, ever (tests, benchmarks) */
};

struct bf_queue {
    uint8_t *desc, *avail, *used; /* host addresses of the three areas (checked RAM, mapped by Python) */
    uint32_t size;                /* a power of 2 */
    uint32_t limit;               /* max(size, max_size): the longest chain through an indirect table */
};

struct desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct seg {
    uint8_t *p;
    uint32_t len;
};

struct chain {
    struct seg r[MAX_SEGS], w[MAX_SEGS];
    uint32_t nr, nw;
    uint64_t rlen, wlen;
};

/* The host address of [gpa, gpa+len) if it lies in one RAM region; NULL otherwise (len > 0). */
static uint8_t *xlate(const struct bf_dev *dev, uint64_t gpa, uint64_t len)
{
    for (uint32_t i = 0; i < dev->nregions; i++) {
        const struct bf_region *r = &dev->regions[i];
        if (gpa >= r->gpa && gpa - r->gpa < r->size && len <= r->size - (gpa - r->gpa))
            return r->hva + (gpa - r->gpa);
    }
    return NULL;
}

static inline uint16_t load16(const uint8_t *p)
{
    return __atomic_load_n((const uint16_t *)p, __ATOMIC_ACQUIRE);
}

static inline void read_desc(struct desc *d, const uint8_t *p)
{
    /* one copy: the checks and the use below see the same values whatever the driver does meanwhile */
    memcpy(d, p, sizeof *d);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

/* Append one descriptor's buffer; 0 = not for us (outside RAM, readable after writable, too many). */
static int add_seg(const struct bf_dev *dev, struct chain *c, const struct desc *d, int writable)
{
    uint8_t *p = NULL;
    if (d->len) {
        p = xlate(dev, d->addr, d->len);
        if (!p)
            return 0;
    }
    if (writable) {
        if (c->nw >= MAX_SEGS)
            return 0;
        c->w[c->nw++] = (struct seg){p, d->len};
        c->wlen += d->len;
    } else {
        if (c->nw || c->nr >= MAX_SEGS)
            return 0;
        c->r[c->nr++] = (struct seg){p, d->len};
        c->rlen += d->len;
    }
    return 1;
}

/* The indirect table at d (2.7.5.3); `direct` descriptors came before it. 0 = not for us. */
static int walk_indirect(const struct bf_dev *dev, const struct bf_queue *q, const struct desc *d, uint32_t direct,
                         struct chain *c)
{
    static __thread struct desc table[MAX_SEGS];
    if (d->flags & DESC_F_NEXT || d->len == 0 || d->len % 16)
        return 0;
    uint32_t n = d->len / 16;
    if (n > MAX_SEGS || direct + n > q->limit)
        return 0;
    const uint8_t *src = xlate(dev, d->addr, d->len);
    if (!src)
        return 0;
    memcpy(table, src, d->len); /* a copy: the driver may rewrite the table meanwhile */
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    uint32_t i = 0;
    for (uint32_t steps = 1;; steps++) {
        if (steps > n)
            return 0;
        const struct desc *e = &table[i];
        if (e->flags & DESC_F_INDIRECT || !add_seg(dev, c, e, e->flags & DESC_F_WRITE))
            return 0;
        if (!(e->flags & DESC_F_NEXT))
            return 1;
        if (e->next >= n)
            return 0;
        i = e->next;
    }
}

/* Follow the chain at head (2.7.5); 0 = not for us. */
static int walk(const struct bf_dev *dev, const struct bf_queue *q, uint32_t flags, uint16_t head, struct chain *c)
{
    c->nr = c->nw = 0;
    c->rlen = c->wlen = 0;
    uint32_t idx = head;
    for (uint32_t steps = 1;; steps++) {
        if (steps > q->size)
            return 0;
        struct desc d;
        read_desc(&d, q->desc + 16 * (size_t)idx);
        if (d.flags & DESC_F_INDIRECT) {
            if (!(flags & BF_INDIRECT) || !walk_indirect(dev, q, &d, steps - 1, c))
                return 0;
            break;
        }
        if (!add_seg(dev, c, &d, d.flags & DESC_F_WRITE))
            return 0;
        if (!(d.flags & DESC_F_NEXT))
            break;
        if (d.next >= q->size)
            return 0;
        idx = d.next;
    }
    return c->rlen + c->wlen <= (1ull << 32);
}

/* Fill iov with `len` bytes of segs starting `skip` bytes in; returns the iovec count. */
static int gather(struct iovec *iov, const struct seg *segs, uint32_t n, uint64_t skip, uint64_t len)
{
    int k = 0;
    for (uint32_t i = 0; i < n && len; i++) {
        uint64_t l = segs[i].len;
        if (skip >= l) {
            skip -= l;
            continue;
        }
        uint64_t take = l - skip < len ? l - skip : len;
        iov[k++] = (struct iovec){segs[i].p + skip, take};
        len -= take;
        skip = 0;
    }
    return k;
}

/* Serve one request already walked; returns the used length, or 0 = not for us (nothing consumed). */
static uint32_t serve_one(struct bf_dev *dev, uint32_t flags, struct chain *c)
{
    static __thread struct iovec iov[MAX_SEGS];
    if (c->rlen < 16 || !c->nw || !c->w[c->nw - 1].len)
        return 0;
    uint8_t hdr[16];
    struct iovec hv[16];
    int nh = gather(hv, c->r, c->nr, 0, 16);
    size_t pos = 0;
    for (int i = 0; i < nh; i++) {
        memcpy(hdr + pos, hv[i].iov_base, hv[i].iov_len);
        pos += hv[i].iov_len;
    }
    if (pos != 16)
        return 0;
    uint32_t rtype;
    uint64_t sector;
    memcpy(&rtype, hdr, 4);
    memcpy(&sector, hdr + 8, 8);
    if (rtype & ~(T_OUT | T_BARRIER))
        return 0; /* FLUSH, GET_ID, DISCARD, WRITE_ZEROES, SCSI, unknown: Python */
    int is_write = rtype & T_OUT;
    uint64_t nbytes = is_write ? c->rlen - 16 : c->wlen - 1;
    uint32_t bs = dev->blk_size;
    if (!nbytes || nbytes > MAX_RW_BYTES || nbytes % bs || sector & (bs / SECTOR - 1) || sector > dev->capacity ||
        nbytes / SECTOR > dev->capacity - sector)
        return 0; /* IOERR is Python's answer */
    if (is_write && !(flags & BF_WRITE_OK))
        return 0;
    int n = is_write ? gather(iov, c->r, c->nr, 16, nbytes) : gather(iov, c->w, c->nw, 0, nbytes);
    off_t off = (off_t)(sector * SECTOR);
    ssize_t done = is_write ? pwritev(dev->fd, iov, n, off) : preadv(dev->fd, iov, n, off);
    if (done < 0 || (uint64_t)done != nbytes)
        return 0; /* error, EINTR, short (EOF): Python does it again, its way */
    struct seg *st = &c->w[c->nw - 1];
    __atomic_store_n(st->p + st->len - 1, (uint8_t)0, __ATOMIC_RELAXED); /* VIRTIO_BLK_S_OK */
    if (is_write) {
        dev->wr_bytes += nbytes;
        dev->wr_ops++;
        return 1;
    }
    dev->rd_bytes += nbytes;
    dev->rd_ops++;
    return (uint32_t)nbytes + 1;
}

/* vring_need_event (2.7.7.2): event_idx in [old, new) modulo 2^16 */
static inline int need_event(uint16_t event, uint16_t new_idx, uint16_t old)
{
    return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old);
}

/* Serve up to `budget` available requests of the queue.
 *
 * In: the queue's last_avail_idx, its avail idx shadow, its used idx, the avail_event it last wrote (-1:
 * none), BF_* flags, and for the interrupt decision the used idx at the last one and the elements pushed
 * since (not counting this call's). Returns
 *     served | done << 16 | irq << 17 | decided << 18 | avail_shadow << 19 | (avail_event + 1) << 35
 * `done`: the ring holds no more available requests (checked as Python's pop does, avail_event included)
 * or the budget is spent; otherwise the request at last_avail_idx + served is for Python. `decided`
 * (`done` with BF_DECIDE, something pushed): the notification decision was taken, `irq` is it (the caller
 * resets its window as SplitQueue.needs_interrupt does). Both
 * last_avail_idx and used idx advance by `served`; used idx is already published in guest memory. */
uint64_t bf_serve(struct bf_dev *dev, const struct bf_queue *q, uint32_t last, uint32_t shadow, uint32_t used_idx,
                  int32_t avail_event, uint32_t flags, uint32_t budget, uint32_t signalled, uint32_t pushed)
{
    static __thread struct chain c;
    uint32_t size = q->size, served = 0;
    int done = 0, irq = 0, decided = 0;
    uint8_t *used_ring = q->used + 4, *avail_ring = q->avail + 4;
    uint8_t *avail_event_p = q->used + 4 + 8 * (size_t)size;
    for (;;) {
        if (served >= budget) {
            done = 1;
            break;
        }
        if ((uint16_t)shadow == (uint16_t)last) {
            uint16_t idx = load16(q->avail + 2);
            if (idx == (uint16_t)last) {
                if (!(flags & BF_EVENT_IDX) || flags & BF_SUPPRESSED || avail_event == (int32_t)(uint16_t)last) {
                    done = 1;
                    break;
                }
                __atomic_store_n((uint16_t *)avail_event_p, (uint16_t)last, __ATOMIC_RELAXED);
                avail_event = (uint16_t)last;
                __atomic_thread_fence(__ATOMIC_SEQ_CST); /* the store above before the load below */
                idx = load16(q->avail + 2);
                if (idx == (uint16_t)last) {
                    done = 1;
                    break;
                }
            }
            if ((uint16_t)(idx - last) > size)
                break; /* 2.7.13: Python raises the error */
            shadow = idx;
        }
        uint16_t head = __atomic_load_n((uint16_t *)(avail_ring + 2 * (last & (size - 1))), __ATOMIC_RELAXED);
        if (head >= size || !walk(dev, q, flags, head, &c))
            break;
        uint32_t len = serve_one(dev, flags, &c);
        if (!len)
            break;
        uint8_t *elem = used_ring + 8 * (used_idx & (size - 1));
        uint32_t id = head;
        __atomic_store_n((uint32_t *)elem, id, __ATOMIC_RELAXED);
        __atomic_store_n((uint32_t *)(elem + 4), len, __ATOMIC_RELAXED);
        used_idx = (used_idx + 1) & 0xFFFF;
        last = (last + 1) & 0xFFFF;
        served++;
        dev->served++;
    }
    if (served)
        __atomic_store_n((uint16_t *)(q->used + 2), (uint16_t)used_idx, __ATOMIC_RELEASE); /* 2.7.8.2 */
    pushed += served;
    if (done && flags & BF_DECIDE && pushed) { /* nothing pushed: no decision, the window stays (as Python's) */
        decided = 1;
        __atomic_thread_fence(__ATOMIC_SEQ_CST); /* used idx visible before the driver's fields are read */
        if (!(flags & BF_EVENT_IDX))
            irq = !(load16(q->avail) & VIRTQ_AVAIL_F_NO_INTERRUPT);
        else if (pushed >= 0x10000)
            irq = 1; /* the 16-bit window cannot tell: notify */
        else
            irq = need_event(load16(q->avail + 4 + 2 * (size_t)size), (uint16_t)used_idx, (uint16_t)signalled);
    }
    return served | (uint64_t)done << 16 | (uint64_t)irq << 17 | (uint64_t)decided << 18 |
           (uint64_t)(shadow & 0xFFFF) << 19 | (uint64_t)(avail_event + 1) << 35;
}
