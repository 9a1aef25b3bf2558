/* virtio-blk (VIRTIO 1.2 §5.2): one request at a time on queue 0, polled. */
#include "commands.h"
#include "io.h"
#include "mem.h"
#include "print.h"
#include "util.h"
#include "virtio_drv.h"

#define BLK_F_RO         5
#define BLK_F_BLK_SIZE   6
#define BLK_F_FLUSH      9
#define BLK_F_CONFIG_WCE 11

#define BLK_T_IN     0
#define BLK_T_OUT    1
#define BLK_T_FLUSH  4
#define BLK_T_GET_ID 8

#define BLK_CFG_CAPACITY 0
#define BLK_CFG_BLK_SIZE 20
#define BLK_CFG_WCE      32

#define SECTOR 512
#define ID_LEN 20

struct blk_req_hdr {
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
};

/* Rings and request buffers the device reads and writes (in .bss.dma). */
static struct virtq_ring blk_ring DMA;
static struct blk_req_hdr blk_hdr DMA __attribute__((aligned(16)));
static uint8_t blk_data[SECTOR] DMA __attribute__((aligned(16)));
static uint8_t blk_status DMA;
/* `blk bench` reads land here: up to 64 KiB per request, one descriptor
 * (paging is off, so it is physically contiguous). In .bss.dma, i.e. inside
 * the image that memtest and poke refuse. */
#define BENCH_MAX 65536
static uint8_t blk_bench_buf[BENCH_MAX] DMA __attribute__((aligned(4096)));

static struct {
    int ready;
    int nth;                 /* which virtio-blk device (`blk use N`) */
    struct vp_dev dev;
    struct virtq vq;
} blk;

static int bit(const uint32_t f[2], int n)
{
    return (f[n / 32] >> (n % 32)) & 1;
}

static int blk_ready(void)
{
    if (blk.ready && vp_current(&blk.dev))
        return 1;
    if (!vp_open(&blk.dev, VIRTIO_ID_BLK, blk.nth, "blk"))
        return 0;
    /* Only what the commands below use; everything else stays off. */
    uint32_t want = (1u << BLK_F_RO) | (1u << BLK_F_BLK_SIZE) | (1u << BLK_F_FLUSH) |
                    (1u << BLK_F_CONFIG_WCE);
    if (!vp_negotiate(&blk.dev, want, 0) || !vp_setup_queue(&blk.dev, &blk.vq, &blk_ring, 0))
        return 0;
    vp_driver_ok(&blk.dev);
    blk.ready = 1;
    return 1;
}

/* Runs one request: header, optional data buffer, status byte. Returns the
 * status (0xff if the device left it unwritten), or -1 on a timeout. */
static int blk_request(uint32_t type, uint32_t sector, void *data, uint32_t len, int device_writes,
                       uint32_t *used_len)
{
    struct vq_buf bufs[3];
    int n = 0;

    blk_hdr.type = type;
    blk_hdr.reserved = 0;
    blk_hdr.sector = sector;
    blk_status = 0xff;
    bufs[n++] = (struct vq_buf){ &blk_hdr, sizeof(blk_hdr), 0 };
    if (len)
        bufs[n++] = (struct vq_buf){ data, len, device_writes };
    bufs[n++] = (struct vq_buf){ &blk_status, 1, 1 };
    int head = virtq_add(&blk.vq, bufs, n);
    if (head < 0) {
        error("virtio-blk queue full");
        return -1;
    }
    virtq_kick(&blk.vq);
    if (!virtq_wait(&blk.vq, head, used_len, "virtio-blk request")) {
        blk.ready = 0;       /* the next command resets and starts over */
        return -1;
    }
    return *(volatile uint8_t *)&blk_status;
}

static void print_status(int st, uint32_t used_len)
{
    print("status ");
    print_dec((uint32_t)st);
    print(st == 0 ? " (ok)" : st == 1 ? " (ioerr)" : st == 2 ? " (unsupp)" : " (?)");
    print(" len ");
    print_dec(used_len);
    print_nl();
}

static void blk_info(void)
{
    struct vp_dev *d = &blk.dev;
    uint32_t lo, hi;
    print("device ");
    print_bdf(d->bdf);
    print_nl();
    if (!d->device || d->device_len < 8) {
        error("virtio-blk has no device configuration");
        return;
    }
    vp_cfg64(d, BLK_CFG_CAPACITY, &lo, &hi);
    print("capacity ");
    if (hi) {
        print_hex(hi, 8);
        print_hex_raw(lo, 8);
    } else {
        print_dec(lo);
    }
    println(" sectors");
    print("features offered ");
    print_hex(d->offered[1], 8);
    print_hex_raw(d->offered[0], 8);
    print(" accepted ");
    print_hex(d->accepted[1], 8);
    print_hex_raw(d->accepted[0], 8);
    print_nl();
    print("blk_size ");
    if (bit(d->offered, BLK_F_BLK_SIZE))
        print_dec(vp_cfg32(d, BLK_CFG_BLK_SIZE));
    else
        print("n/a");
    print_nl();
    print("ro ");
    print_dec((uint32_t)bit(d->offered, BLK_F_RO));
    print_nl();
    print("wce ");
    if (bit(d->offered, BLK_F_CONFIG_WCE) && d->device_len > BLK_CFG_WCE)
        print_dec(vp_cfg8(d, BLK_CFG_WCE));
    else
        print("n/a");
    print_nl();
}

/* "0xab"-style byte (<= 0xff) or a string repeated over the sector. */
static void fill_pattern(const char *p)
{
    uint32_t v;
    if (parse_u32(p, &v) == PARSE_OK && v <= 0xff) {
        memset(blk_data, (int)v, SECTOR);
        return;
    }
    uint32_t n = str_len(p);
    for (uint32_t i = 0; i < SECTOR; i++)
        blk_data[i] = (uint8_t)p[i % n];
}

#define BLK_USAGE "usage: blk info|read SECTOR|write SECTOR PATTERN|flush|id|use N|bench N SIZE|load|verify ADDR LEN SECTOR"

/* `blk bench N SIZE`: N sequential reads of SIZE bytes, sectors advancing and
 * wrapping at the capacity, timed with the TSC around the whole loop. The loop
 * body is only what a request needs (fill three descriptors, one notify
 * write, poll the used ring in RAM), so on a VMM it costs one exit per
 * request and the host-side time is dominated by the device model. */
static void blk_bench(int argc, char **argv)
{
    uint32_t n, size, lo, hi, used_len = 0;
    if (argc != 4) {
        error(BLK_USAGE);
        return;
    }
    if (!arg_u32("N", argv[2], &n) || !arg_u32("SIZE", argv[3], &size))
        return;
    if (n == 0) {
        error("bad N: must be at least 1");
        return;
    }
    if (size == 0 || size % SECTOR || size > BENCH_MAX) {
        error("bad SIZE: must be a multiple of 512 from 512 to 65536");
        return;
    }
    if (!blk_ready())
        return;
    if (!blk.dev.device || blk.dev.device_len < 8) {
        error("virtio-blk has no device configuration");
        return;
    }
    vp_cfg64(&blk.dev, BLK_CFG_CAPACITY, &lo, &hi);
    uint32_t per = size / SECTOR;
    /* Sectors a request may start at: capacity - per + 1 (capped at 2^32). */
    uint32_t span = hi ? 0xffffffffu : (lo >= per ? lo - per + 1 : 0);
    if (span == 0) {
        error("disk smaller than one request");
        return;
    }
    /* One chain (header, data, status) built once and re-posted for every
     * read: per request only the sector, the status byte, the avail ring
     * entry and index, the notify write and the used-ring poll. Under a
     * software KVM each guest instruction costs ~1 us, so this loop is kept
     * to a few dozen instructions. */
    struct vq_buf bufs[3] = {
        { &blk_hdr, sizeof(blk_hdr), 0 },
        { blk_bench_buf, size, 1 },
        { &blk_status, 1, 1 },
    };
    blk_hdr.type = BLK_T_IN;
    blk_hdr.reserved = 0;
    blk_hdr.sector = 0;
    blk_status = 0xff;
    int head = virtq_add(&blk.vq, bufs, 3);
    if (head < 0) {
        error("virtio-blk queue full");
        return;
    }
    volatile uint8_t *status = &blk_status;
    volatile uint64_t *hdr_sector = &blk_hdr.sector;
    uint32_t sector = 0, done = 0, id;
    int st = 0;
    uint64_t t0 = rdtsc64();
    virtq_kick(&blk.vq);
    for (;;) {
        if (!virtq_wait_next(&blk.vq, &id, &used_len, "virtio-blk request")) {
            st = -1;
            break;
        }
        if (id != (uint32_t)head) {
            error("virtio-blk completed a chain it was not given");
            st = -1;
            break;
        }
        st = *status;
        if (st != 0 || ++done == n)
            break;
        sector += per;
        if (sector >= span)
            sector = 0;
        *hdr_sector = sector;
        *status = 0xff;
        virtq_repost(&blk.vq, (uint16_t)head);   /* and notify */
    }
    uint64_t t1 = rdtsc64();
    if (st < 0) {
        blk.ready = 0;      /* ring state unknown: the next command resets */
        return;             /* the error line is already out */
    }
    virtq_free_chain(&blk.vq, (uint32_t)head);
    print("bench: ");
    print_dec(done);
    print(" reads of ");
    print_dec(size);
    print(" bytes, tsc ");
    print_dec64(t1 - t0);
    print_nl();
    if (st == 0) {
        println("status 0 (ok)");
        return;
    }
    print("status ");
    print_dec((uint32_t)st);
    print(st == 1 ? " (ioerr)" : st == 2 ? " (unsupp)" : " (?)");
    print(" at read ");
    print_dec(done);
    print(" sector ");
    print_dec(sector);
    print(" len ");
    print_dec(used_len);
    print_nl();
}

/* `blk load ADDR LEN SECTOR`: read LEN bytes of the disk from SECTOR straight
 * into RAM at ADDR (device-writable buffers outside the image, up to 64 KiB a
 * request); `blk verify ADDR LEN SECTOR` reads the same sectors again into the
 * bench buffer and compares them with RAM. For migration: what the device wrote
 * into guest RAM while the guest was being moved must be there afterwards. */
static void blk_load_verify(int argc, char **argv, int verify)
{
    uint32_t addr, len, sector, used_len = 0;
    if (argc != 5) {
        error("usage: blk load|verify ADDR LEN SECTOR");
        return;
    }
    if (!arg_u32("ADDR", argv[2], &addr) || !arg_u32("LEN", argv[3], &len) || !arg_u32("SECTOR", argv[4], &sector))
        return;
    if (len == 0 || len % SECTOR) {
        error("bad LEN: must be a nonzero multiple of 512");
        return;
    }
    enum mem_check r = verify ? mem_check_ram(addr, len) : mem_check_writable(addr, len);
    if (r != MEM_OK) {
        print("error: blk: ");
        println(mem_check_message(r));
        return;
    }
    if (!blk_ready())
        return;
    for (uint32_t done = 0; done < len;) {
        uint32_t n = len - done < BENCH_MAX ? len - done : BENCH_MAX;
        uint8_t *dst = verify ? blk_bench_buf : (uint8_t *)(addr + done);
        int st = blk_request(BLK_T_IN, sector + done / SECTOR, dst, n, 1, &used_len);
        if (st < 0)
            return;
        if (st != 0) {
            print_status(st, used_len);
            return;
        }
        if (verify) {
            /* Word by word (LEN is a multiple of 512): a quarter of the guest instructions. */
            const volatile uint32_t *ram = (const volatile uint32_t *)(addr + done);
            const uint32_t *want = (const uint32_t *)blk_bench_buf;
            for (uint32_t i = 0; i < n / 4; i++) {
                if (ram[i] != want[i]) {
                    print("blk verify: FAIL at ");
                    print_hex(addr + done + 4 * i, 8);
                    print(" expected ");
                    print_hex(want[i], 8);
                    print(" got ");
                    print_hex(ram[i], 8);
                    print_nl();
                    return;
                }
            }
        }
        done += n;
    }
    print(verify ? "blk verify: " : "blk load: ");
    print_dec(len);
    println(verify ? " bytes ok" : " bytes read");
}

void cmd_blk(int argc, char **argv)
{
    const char *sub = argv[1];
    uint32_t sector = 0, used_len = 0;
    int st;

    if (str_eq(sub, "use")) {
        uint32_t n;
        if (argc != 3) {
            error("usage: blk use N");
            return;
        }
        if (!arg_u32("N", argv[2], &n))
            return;
        if (blk.ready)
            vp_reset(&blk.dev);     /* leave the old device quiet */
        blk.ready = 0;
        blk.nth = (int)n;
        if (blk_ready()) {
            print("using ");
            print_bdf(blk.dev.bdf);
            print_nl();
        }
        return;
    }
    if (str_eq(sub, "bench")) {
        blk_bench(argc, argv);
        return;
    }
    if (str_eq(sub, "load") || str_eq(sub, "verify")) {
        blk_load_verify(argc, argv, str_eq(sub, "verify"));
        return;
    }
    int need = str_eq(sub, "read") ? 3 : str_eq(sub, "write") ? 4 : 2;
    if (!str_eq(sub, "info") && !str_eq(sub, "read") && !str_eq(sub, "write") &&
        !str_eq(sub, "flush") && !str_eq(sub, "id"))
        { error(BLK_USAGE); return; }
    if (argc != need)
        { error(BLK_USAGE); return; }
    if (need >= 3 && !arg_u32("SECTOR", argv[2], &sector))
        return;
    if (!blk_ready())
        return;

    if (str_eq(sub, "info")) {
        blk_info();
    } else if (str_eq(sub, "read")) {
        memset(blk_data, 0, SECTOR);
        st = blk_request(BLK_T_IN, sector, blk_data, SECTOR, 1, &used_len);
        if (st < 0)
            return;
        if (st == 0) {
            print("data ");
            print_bytes(blk_data, 32);
            print_nl();
            print("crc32 ");
            print_hex(crc32(blk_data, SECTOR), 8);
            print_nl();
        }
        print_status(st, used_len);
    } else if (str_eq(sub, "write")) {
        fill_pattern(argv[3]);
        print("crc32 ");
        print_hex(crc32(blk_data, SECTOR), 8);
        print_nl();
        st = blk_request(BLK_T_OUT, sector, blk_data, SECTOR, 0, &used_len);
        if (st >= 0)
            print_status(st, used_len);
    } else if (str_eq(sub, "flush")) {
        st = blk_request(BLK_T_FLUSH, 0, 0, 0, 0, &used_len);
        if (st >= 0)
            print_status(st, used_len);
    } else {
        memset(blk_data, 0, ID_LEN + 1);
        st = blk_request(BLK_T_GET_ID, 0, blk_data, ID_LEN, 1, &used_len);
        if (st < 0)
            return;
        if (st == 0) {
            /* Up to 20 bytes, NUL-terminated only if shorter (§5.2.6). */
            print("id \"");
            for (int i = 0; i < ID_LEN && blk_data[i]; i++) {
                char c[2] = { (char)blk_data[i], 0 };
                print(c[0] >= 0x20 && c[0] < 0x7f ? c : "?");
            }
            println("\"");
        }
        print_status(st, used_len);
    }
}
