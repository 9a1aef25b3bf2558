/* virtio-console (VIRTIO 1.2 §5.3) without MULTIPORT: port 0 only, queue 0
 * receives, queue 1 transmits. Receive buffers are posted at init so host
 * input has somewhere to go; `console read` drains what has arrived. */
#include "commands.h"
#include "print.h"
#include "util.h"
#include "virtio_drv.h"

#define RX_BUFS 4
#define RX_LEN  64
#define TX_LEN  160

static struct virtq_ring con_rx_ring DMA;
static struct virtq_ring con_tx_ring DMA;
static uint8_t con_rx[RX_BUFS][RX_LEN] DMA __attribute__((aligned(16)));
static uint8_t con_tx[TX_LEN] DMA __attribute__((aligned(16)));

static struct {
    int ready;
    struct vp_dev dev;
    struct virtq rx, tx;
    int rx_of_desc[VQ_SIZE];   /* which rx buffer a posted descriptor holds */
} con;

static int post_rx(int i)
{
    struct vq_buf b = { con_rx[i], RX_LEN, 1 };
    int head = virtq_add(&con.rx, &b, 1);
    if (head < 0)
        return 0;
    con.rx_of_desc[head] = i;
    return 1;
}

static int con_ready(void)
{
    if (con.ready && vp_current(&con.dev))
        return 1;
    if (!vp_open(&con.dev, VIRTIO_ID_CONSOLE, 0, "console") || !vp_negotiate(&con.dev, 0, 0) ||
        !vp_setup_queue(&con.dev, &con.rx, &con_rx_ring, 0) ||
        !vp_setup_queue(&con.dev, &con.tx, &con_tx_ring, 1))
        return 0;
    for (int i = 0; i < RX_BUFS; i++)
        post_rx(i);
    /* Buffers first, then DRIVER_OK: the device may deliver input at once. */
    vp_driver_ok(&con.dev);
    virtq_kick(&con.rx);
    con.ready = 1;
    return 1;
}

static void print_escaped(const uint8_t *p, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        char c[2] = { (char)p[i], 0 };
        if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '"' && p[i] != '\\') {
            print(c);
        } else {
            print("\\x");
            print_hex_raw(p[i], 2);
        }
    }
}

static void con_echo(int argc, char **argv)
{
    uint32_t n = 0, len;
    for (int i = 2; i < argc; i++) {
        uint32_t l = str_len(argv[i]);
        if (n + l + 2 > TX_LEN) {
            error("TEXT too long");
            return;
        }
        if (i > 2)
            con_tx[n++] = ' ';
        memcpy(con_tx + n, argv[i], l);
        n += l;
    }
    con_tx[n++] = '\n';      /* line-oriented on the host side */
    struct vq_buf b = { con_tx, n, 0 };
    int head = virtq_add(&con.tx, &b, 1);
    if (head < 0) {
        error("virtio-console transmit queue full");
        return;
    }
    virtq_kick(&con.tx);
    if (!virtq_wait(&con.tx, head, &len, "virtio-console transmit")) {
        con.ready = 0;       /* the next command resets and starts over */
        return;
    }
    print("sent ");
    print_dec(n);
    println(" bytes");
}

static void con_read(void)
{
    uint32_t id, len, total = 0;
    volatile uint16_t *used_idx = &con.rx.ring->used.idx;
    /* Wait (bounded) for the first buffer, then take whatever else is there. */
    struct poll_bound pb;
    poll_start(&pb, VQ_INPUT_TICKS, VQ_INPUT_POLLS);
    while (*used_idx == con.rx.last_used && !poll_expired(&pb))
        ;
    print("read \"");
    while (virtq_get_used(&con.rx, &id, &len)) {
        int b = id < VQ_SIZE ? con.rx_of_desc[id] : 0;
        if (len > RX_LEN)
            len = RX_LEN;
        print_escaped(con_rx[b], len);
        total += len;
        post_rx(b);
    }
    println("\"");
    virtq_kick(&con.rx);
    print("len ");
    print_dec(total);
    print_nl();
}

void cmd_console(int argc, char **argv)
{
    int echo = str_eq(argv[1], "echo");
    if (!(echo && argc >= 3) && !(str_eq(argv[1], "read") && argc == 2)) {
        error("usage: console echo TEXT... | console read");
        return;
    }
    if (!con_ready())
        return;
    if (echo)
        con_echo(argc, argv);
    else
        con_read();
}
