/*
 * violin._datapath: the per-frame path of violin-switchd in C.
 *
 * The Python daemon keeps everything else: config, key derivation, peer names, the control
 * socket, metrics, signals. This module does, for each frame and each datagram, exactly what
 * violin.core.Switch does (same wire format, same counters, same drop reasons), from one thread
 * that holds no GIL while it waits or works:
 *
 *   TAP -> peers: read (vnet header + frame) behind a 20-byte header slot, look the destination
 *   MAC up in the FDB (or flood), seal in place (AES-256-GCM or ChaCha20-Poly1305: libsodium for
 *   small frames, OpenSSL for large ones, see LARGE; the header as associated data, sender id +
 *   counter as nonce), sendto each target.
 *
 *   peer -> TAP: recvmmsg (up to BATCH datagrams, as many as are queued), then for each: source
 *   must be a peer, header checks, replay window check, open in place, commit the window, learn
 *   the source MAC, write the frame to the TAP.
 *
 * Shared state (peers, FDB, counters) is guarded by one mutex, held by the data thread while it
 * handles one frame and by the control calls while they change or read it; it is never held
 * across a blocking call except a sendto on a full socket buffer.
 */
#define PY_SSIZE_T_CLEAN
#define Py_LIMITED_API 0x030B0000 /* the stable ABI of 3.11: one wheel for every Python >= 3.11 */
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <sodium.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HDR_LEN 20
#define TAG_LEN 16
#define VNET_LEN 10
#define MIN_FRAME (VNET_LEN + 14)
#define MAX_DATAGRAM 65507
#define BUF_LEN (MAX_DATAGRAM + 64)
#define VERSION 1
#define KIND_FRAME 1
#define WINDOW 1024 /* replay window, counters */
#define WINDOW_WORDS (WINDOW / 64)
/* Frames up to this size are sealed with libsodium, larger ones with OpenSSL EVP (same AEADs,
 * same output). libsodium's code is small: sealing a 100-byte frame after 10 ms of sleep costs
 * 4.5 us with it and 33 us through EVP, and a ping crosses four seals. OpenSSL's stitched AES-GCM
 * is faster on bulk: 18 Gb/s against 10 Gb/s on 64 KB super-frames. */
#define LARGE 2048
/* Datagrams read by one recvmmsg. A lone datagram still costs one call; a flood (an attack, or a
 * burst of small frames) costs one call per BATCH instead of an epoll_wait and a recvfrom each.
 * Under a flood of forged datagrams on loopback (bench/probes/engine_flood.py) the data thread
 * spent 3.5-4.2 us per datagram that way and read under half of them, the kernel dropping the
 * rest, real ones among them, from the full socket queue; with recvmmsg 1.5-1.9 us, and it
 * read most. */
#define BATCH 16

enum { CIPHER_NONE, CIPHER_AES_GCM, CIPHER_CHACHA };
enum { TXD_RUNT, TXD_TOO_BIG, TXD_SEND_ERROR, TXD_NO_PEERS, TXD_N };
enum { RXD_SHORT, RXD_VERSION, RXD_NETWORK, RXD_NOT_PEER, RXD_OWN_SENDER, RXD_REPLAY, RXD_AUTH,
       RXD_FRAME, RXD_TAP_WRITE, RXD_N };
static const char *TX_DROP_NAMES[TXD_N] = {"runt", "too_big", "send_error", "no_peers"};
static const char *RX_DROP_NAMES[RXD_N] = {"short", "version", "network", "not_peer", "own_sender",
                                           "replay", "auth", "frame", "tap_write"};

typedef struct {
    int used;
    struct sockaddr_in addr;
    uint64_t top;                 /* highest counter accepted */
    uint64_t bits[WINDOW_WORDS];  /* ring: bit (c % WINDOW) set when counter c was accepted */
} peer_t;

typedef struct {
    uint64_t key;  /* MAC in the low 48 bits, bit 48 set when the slot is used; 0 = empty */
    int32_t peer;  /* index into peers */
    uint64_t seen; /* ns, CLOCK_MONOTONIC */
} fdb_slot_t;

typedef struct {
    uint64_t tx_frames, tx_bytes, tx_unicast, tx_flooded, tx_datagrams;
    uint64_t rx_datagrams, rx_frames, rx_bytes;
    uint64_t tx_drops[TXD_N], rx_drops[RXD_N];
} counters_t;

typedef struct {
    PyObject_HEAD
    int tap_fd, sock_fd, stop_fd, epoll_fd;
    uint32_t network_id, sender_id;
    uint64_t counter;
    int cipher;
    crypto_aead_aes256gcm_state *aes; /* libsodium's expanded key, 16-byte aligned */
    unsigned char key[32];
    EVP_CIPHER_CTX *enc, *dec;         /* OpenSSL, for frames larger than LARGE */
    pthread_mutex_t lock;
    int running;
    /* peers */
    peer_t *peers;
    int npeers, peer_cap;
    /* FDB: open addressing, linear probing, capacity a power of two, at least twice max */
    fdb_slot_t *fdb;
    size_t fdb_cap, fdb_count, fdb_max;
    uint64_t ageing_ns, fdb_purged; /* fdb_purged: when a full table was last purged */
    counters_t c;
    unsigned char *tbuf, *rbuf; /* rbuf: BATCH receive buffers of BUF_LEN bytes */
    struct mmsghdr msgs[BATCH];
    struct iovec iovs[BATCH];
    struct sockaddr_in srcs[BATCH];
} Engine;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t mac_key(const unsigned char *m) {
    return ((uint64_t)m[0] << 40 | (uint64_t)m[1] << 32 | (uint64_t)m[2] << 24 |
            (uint64_t)m[3] << 16 | (uint64_t)m[4] << 8 | (uint64_t)m[5]) | (1ULL << 48);
}

static size_t fdb_hash(uint64_t key, size_t cap) {
    key ^= key >> 29;
    key *= 0xbf58476d1ce4e5b9ULL;
    key ^= key >> 32;
    return (size_t)key & (cap - 1);
}

/* ------------------------------------------------------------------ replay window */

static int window_check(const peer_t *p, uint64_t c) {
    if (c > p->top) return 1;
    if (p->top - c >= WINDOW) return 0;
    return !((p->bits[(c / 64) % WINDOW_WORDS] >> (c % 64)) & 1);
}

static void window_commit(peer_t *p, uint64_t c) {
    if (c > p->top) {
        uint64_t gap = c - p->top;
        if (gap >= WINDOW) {
            memset(p->bits, 0, sizeof p->bits);
        } else {
            for (uint64_t i = p->top + 1; i < c; i++)
                p->bits[(i / 64) % WINDOW_WORDS] &= ~(1ULL << (i % 64));
            p->bits[(c / 64) % WINDOW_WORDS] &= ~(1ULL << (c % 64));
        }
        p->top = c;
    }
    p->bits[(c / 64) % WINDOW_WORDS] |= 1ULL << (c % 64);
}

static void window_reset(peer_t *p) {
    p->top = 0;
    memset(p->bits, 0, sizeof p->bits);
    p->bits[0] = 1; /* counter 0 is never valid */
}

/* ------------------------------------------------------------------ FDB */

static int fdb_lookup(Engine *e, const unsigned char *mac, uint64_t now) {
    uint64_t key = mac_key(mac);
    for (size_t i = fdb_hash(key, e->fdb_cap);; i = (i + 1) & (e->fdb_cap - 1)) {
        fdb_slot_t *s = &e->fdb[i];
        if (s->key == 0) return -1;
        if (s->key == key) return now - s->seen > e->ageing_ns ? -1 : s->peer;
    }
}

/* Rebuilds the table without expired entries and without those of peer ``gone`` (-1: none). */
static void fdb_rebuild(Engine *e, uint64_t now, int gone) {
    fdb_slot_t *old = e->fdb;
    size_t cap = e->fdb_cap;
    fdb_slot_t *fresh = calloc(cap, sizeof *fresh);
    if (fresh == NULL) return; /* keep the old table; learning stays refused while full */
    size_t count = 0;
    for (size_t j = 0; j < cap; j++) {
        fdb_slot_t *s = &old[j];
        if (s->key == 0 || s->peer == gone || now - s->seen > e->ageing_ns) continue;
        size_t i = fdb_hash(s->key, cap);
        while (fresh[i].key != 0) i = (i + 1) & (cap - 1);
        fresh[i] = *s;
        count++;
    }
    free(old);
    e->fdb = fresh;
    e->fdb_count = count;
}

static void fdb_learn(Engine *e, const unsigned char *mac, int peer, uint64_t now) {
    uint64_t key = mac_key(mac);
    size_t i = fdb_hash(key, e->fdb_cap);
    for (;; i = (i + 1) & (e->fdb_cap - 1)) {
        fdb_slot_t *s = &e->fdb[i];
        if (s->key == key) {
            s->peer = peer;
            s->seen = now;
            return;
        }
        if (s->key == 0) break;
    }
    if (e->fdb_count >= e->fdb_max) {
        /* purge expired entries, at most once a second (a flood of new MACs must not make every
         * frame rebuild the table) */
        if (now - e->fdb_purged > 1000000000u) {
            fdb_rebuild(e, now, -1);
            e->fdb_purged = now;
        }
        if (e->fdb_count >= e->fdb_max) return; /* full of live entries: not learnt */
        i = fdb_hash(key, e->fdb_cap);
        while (e->fdb[i].key != 0) i = (i + 1) & (e->fdb_cap - 1);
    }
    e->fdb[i].key = key;
    e->fdb[i].peer = peer;
    e->fdb[i].seen = now;
    e->fdb_count++;
}

/* ------------------------------------------------------------------ peers */

static int peer_find(Engine *e, uint32_t ip, uint16_t port) {
    for (int i = 0; i < e->npeers; i++) {
        peer_t *p = &e->peers[i];
        if (p->used && p->addr.sin_addr.s_addr == ip && p->addr.sin_port == port) return i;
    }
    return -1;
}

/* ------------------------------------------------------------------ the two directions */

static void put32(unsigned char *b, uint32_t v) { v = htonl(v); memcpy(b, &v, 4); }
static uint32_t get32(const unsigned char *b) { uint32_t v; memcpy(&v, b, 4); return ntohl(v); }
static void put64(unsigned char *b, uint64_t v) { put32(b, (uint32_t)(v >> 32)); put32(b + 4, (uint32_t)v); }
static uint64_t get64(const unsigned char *b) { return (uint64_t)get32(b) << 32 | get32(b + 4); }

/* A frame of ``n`` bytes sits at tbuf + HDR_LEN. Called with the lock held. */
static void from_tap(Engine *e, size_t n) {
    unsigned char *buf = e->tbuf;
    unsigned char *frame = buf + HDR_LEN;
    e->c.tx_frames++;
    e->c.tx_bytes += n;
    if (n < MIN_FRAME) { e->c.tx_drops[TXD_RUNT]++; return; }
    size_t overhead = HDR_LEN + (e->cipher == CIPHER_NONE ? 0 : TAG_LEN);
    if (n + overhead > MAX_DATAGRAM) { e->c.tx_drops[TXD_TOO_BIG]++; return; }
    int target = -1;
    if (!(frame[VNET_LEN] & 1)) {
        target = fdb_lookup(e, frame + VNET_LEN, now_ns());
        if (target >= 0 && !e->peers[target].used) target = -1;
    }
    int any = 0;
    for (int i = 0; i < e->npeers && !any; i++) any = e->peers[i].used;
    if (!any) { e->c.tx_drops[TXD_NO_PEERS]++; return; }

    buf[0] = VERSION;
    buf[1] = KIND_FRAME;
    buf[2] = buf[3] = 0;
    put32(buf + 4, e->network_id);
    put32(buf + 8, e->sender_id);
    put64(buf + 12, ++e->counter);
    /* in place: the frame becomes the ciphertext, the tag follows it */
    if (e->cipher != CIPHER_NONE && n > LARGE) {
        int len;
        if (EVP_EncryptInit_ex(e->enc, NULL, NULL, NULL, buf + 8) != 1 ||
            EVP_EncryptUpdate(e->enc, NULL, &len, buf, HDR_LEN) != 1 ||
            EVP_EncryptUpdate(e->enc, frame, &len, frame, (int)n) != 1 ||
            EVP_EncryptFinal_ex(e->enc, frame + len, &len) != 1 ||
            EVP_CIPHER_CTX_ctrl(e->enc, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, frame + n) != 1) {
            e->c.tx_drops[TXD_SEND_ERROR]++;
            return;
        }
    } else if (e->cipher == CIPHER_AES_GCM)
        crypto_aead_aes256gcm_encrypt_detached_afternm(frame, frame + n, NULL, frame, n, buf,
                                                       HDR_LEN, NULL, buf + 8, e->aes);
    else if (e->cipher == CIPHER_CHACHA)
        crypto_aead_chacha20poly1305_ietf_encrypt_detached(frame, frame + n, NULL, frame, n, buf,
                                                           HDR_LEN, NULL, buf + 8, e->key);
    size_t total = n + overhead;
    if (target >= 0) e->c.tx_unicast++; else e->c.tx_flooded++;
    for (int i = 0; i < e->npeers; i++) {
        if (target >= 0 ? i != target : !e->peers[i].used) continue;
        ssize_t sent = sendto(e->sock_fd, buf, total, 0, (struct sockaddr *)&e->peers[i].addr,
                              sizeof e->peers[i].addr);
        if (sent >= 0) e->c.tx_datagrams++;
        else e->c.tx_drops[errno == EMSGSIZE ? TXD_TOO_BIG : TXD_SEND_ERROR]++;
    }
}

/* A datagram of ``n`` bytes from ``src`` sits at ``buf``. Called with the lock held. Returns the
 * length of the frame to write to the TAP (at buf + HDR_LEN), or 0 when it was dropped. */
static size_t from_peer(Engine *e, unsigned char *buf, size_t n, const struct sockaddr_in *src) {
    e->c.rx_datagrams++;
    int p = peer_find(e, src->sin_addr.s_addr, src->sin_port);
    if (p < 0) { e->c.rx_drops[RXD_NOT_PEER]++; return 0; }
    size_t overhead = HDR_LEN + (e->cipher == CIPHER_NONE ? 0 : TAG_LEN);
    if (n < overhead) { e->c.rx_drops[RXD_SHORT]++; return 0; }
    if (buf[0] != VERSION || buf[1] != KIND_FRAME) { e->c.rx_drops[RXD_VERSION]++; return 0; }
    if (get32(buf + 4) != e->network_id) { e->c.rx_drops[RXD_NETWORK]++; return 0; }
    if (get32(buf + 8) == e->sender_id) { e->c.rx_drops[RXD_OWN_SENDER]++; return 0; }
    uint64_t counter = get64(buf + 12);
    peer_t *peer = &e->peers[p];
    if (!window_check(peer, counter)) { e->c.rx_drops[RXD_REPLAY]++; return 0; }
    size_t plain = n - overhead;
    unsigned char *frame = buf + HDR_LEN;
    int bad = 0, len;
    if (e->cipher != CIPHER_NONE && plain > LARGE)
        bad = EVP_DecryptInit_ex(e->dec, NULL, NULL, NULL, buf + 8) != 1 ||
              EVP_DecryptUpdate(e->dec, NULL, &len, buf, HDR_LEN) != 1 ||
              EVP_DecryptUpdate(e->dec, frame, &len, frame, (int)plain) != 1 ||
              EVP_CIPHER_CTX_ctrl(e->dec, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, frame + plain) != 1 ||
              EVP_DecryptFinal_ex(e->dec, frame + len, &len) != 1;
    else if (e->cipher == CIPHER_AES_GCM)
        bad = crypto_aead_aes256gcm_decrypt_detached_afternm(frame, NULL, frame, plain,
                                                             frame + plain, buf, HDR_LEN, buf + 8,
                                                             e->aes);
    else if (e->cipher == CIPHER_CHACHA)
        bad = crypto_aead_chacha20poly1305_ietf_decrypt_detached(frame, NULL, frame, plain,
                                                                 frame + plain, buf, HDR_LEN,
                                                                 buf + 8, e->key);
    if (bad != 0) { e->c.rx_drops[RXD_AUTH]++; return 0; }
    window_commit(peer, counter);
    if (plain < MIN_FRAME) { e->c.rx_drops[RXD_FRAME]++; return 0; }
    fdb_learn(e, frame + VNET_LEN + 6, p, now_ns());
    return plain;
}

/* ------------------------------------------------------------------ the loop */

/* Returns 0 when stopped, or an errno when reading the TAP failed.
 *
 * One frame from the TAP and what one recvmmsg finds on the socket (up to BATCH datagrams) per
 * wake-up, then back to epoll (level-triggered: a queue that is not empty is reported again at
 * once). No read is tried on an empty descriptor, which keeps the syscalls of a lone frame (a
 * ping) to three per crossing: epoll_wait, read or recvmmsg, send or write. */
static int serve(Engine *e) {
    struct epoll_event events[3];
    for (;;) {
        int ready = epoll_wait(e->epoll_fd, events, 3, -1);
        if (ready < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        for (int k = 0; k < ready; k++) {
            int fd = events[k].data.fd;
            if (fd == e->stop_fd) return 0;
            if (fd == e->tap_fd) {
                ssize_t n = read(e->tap_fd, e->tbuf + HDR_LEN, BUF_LEN - HDR_LEN - TAG_LEN);
                if (n < 0) {
                    if (errno == EAGAIN || errno == EINTR) continue;
                    return errno;
                }
                pthread_mutex_lock(&e->lock);
                from_tap(e, (size_t)n);
                pthread_mutex_unlock(&e->lock);
            } else {
                for (int i = 0; i < BATCH; i++) {
                    e->msgs[i].msg_hdr.msg_namelen = sizeof e->srcs[i];
                    e->iovs[i].iov_len = BUF_LEN;
                }
                int got = recvmmsg(e->sock_fd, e->msgs, BATCH, MSG_DONTWAIT, NULL);
                /* < 0: nothing after all, or an error queued on the socket */
                for (int i = 0; i < got; i++) {
                    const struct sockaddr_in *src = &e->srcs[i];
                    unsigned char *buf = e->iovs[i].iov_base;
                    if (e->msgs[i].msg_hdr.msg_namelen != sizeof *src || src->sin_family != AF_INET)
                        continue;
                    pthread_mutex_lock(&e->lock);
                    size_t plain = from_peer(e, buf, e->msgs[i].msg_len, src);
                    pthread_mutex_unlock(&e->lock);
                    if (plain == 0) continue;
                    ssize_t w = write(e->tap_fd, buf + HDR_LEN, plain);
                    pthread_mutex_lock(&e->lock);
                    if (w < 0) {
                        e->c.rx_drops[RXD_TAP_WRITE]++;
                    } else {
                        e->c.rx_frames++;
                        e->c.rx_bytes += plain;
                    }
                    pthread_mutex_unlock(&e->lock);
                }
            }
        }
    }
}

/* ------------------------------------------------------------------ Python type */

static EVP_CIPHER_CTX *make_ctx(int cipher, const unsigned char *key, int encrypt) {
    const EVP_CIPHER *algo = cipher == CIPHER_AES_GCM ? EVP_aes_256_gcm() : EVP_chacha20_poly1305();
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL) return NULL;
    if (EVP_CipherInit_ex(ctx, algo, NULL, NULL, NULL, encrypt) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_IVLEN, 12, NULL) != 1 ||
        EVP_CipherInit_ex(ctx, NULL, NULL, key, NULL, encrypt) != 1) {
        EVP_CIPHER_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

static int parse_address(PyObject *address, int port, struct sockaddr_in *out) {
    const char *text = PyUnicode_AsUTF8AndSize(address, NULL);
    if (text == NULL) return -1;
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    if (port < 1 || port > 65535 || inet_pton(AF_INET, text, &out->sin_addr) != 1) {
        PyErr_Format(PyExc_ValueError, "not an IPv4 address and port: %s:%d", text, port);
        return -1;
    }
    out->sin_port = htons((uint16_t)port);
    return 0;
}

static int Engine_init(Engine *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"tap_fd", "sock_fd", "network_id", "sender_id", "cipher", "key",
                             "counter", "ageing", "fdb_max", NULL};
    int tap_fd, sock_fd;
    unsigned long network_id, sender_id;
    const char *cipher;
    Py_buffer key = {0};
    unsigned long long counter;
    double ageing;
    Py_ssize_t fdb_max;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iikksy*Kdn", kwlist, &tap_fd, &sock_fd,
                                     &network_id, &sender_id, &cipher, &key, &counter, &ageing,
                                     &fdb_max))
        return -1;
    int kind;
    if (strcmp(cipher, "none") == 0) kind = CIPHER_NONE;
    else if (strcmp(cipher, "aes-256-gcm") == 0) kind = CIPHER_AES_GCM;
    else if (strcmp(cipher, "chacha20-poly1305") == 0) kind = CIPHER_CHACHA;
    else {
        PyBuffer_Release(&key);
        PyErr_Format(PyExc_ValueError, "unknown cipher %s", cipher);
        return -1;
    }
    if (kind == CIPHER_AES_GCM && !crypto_aead_aes256gcm_is_available()) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError,
                        "this CPU lacks AES-NI or PCLMUL, which the C data path's AES-256-GCM "
                        "needs; set cipher: chacha20-poly1305 on every daemon of the network, "
                        "or datapath: python");
        return -1;
    }
    if ((kind != CIPHER_NONE && key.len != 32) || ageing <= 0 || fdb_max < 1 ||
        network_id > 0xffffffffUL || sender_id > 0xffffffffUL) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "key must be 32 bytes, ageing and fdb_max positive, "
                                          "ids 32-bit");
        return -1;
    }
    if (self->tbuf != NULL) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_RuntimeError, "engine already initialised");
        return -1;
    }
    self->tap_fd = tap_fd;
    self->sock_fd = sock_fd;
    self->network_id = (uint32_t)network_id;
    self->sender_id = (uint32_t)sender_id;
    self->counter = counter;
    self->cipher = kind;
    self->ageing_ns = (uint64_t)(ageing * 1e9);
    self->fdb_max = (size_t)fdb_max;
    self->fdb_cap = 16;
    while (self->fdb_cap < 2 * self->fdb_max) self->fdb_cap <<= 1;
    self->fdb = calloc(self->fdb_cap, sizeof *self->fdb);
    self->tbuf = malloc(BUF_LEN);
    self->rbuf = malloc((size_t)BATCH * BUF_LEN);
    for (int i = 0; self->rbuf != NULL && i < BATCH; i++) {
        self->iovs[i].iov_base = self->rbuf + (size_t)i * BUF_LEN;
        self->iovs[i].iov_len = BUF_LEN;
        self->msgs[i].msg_hdr.msg_name = &self->srcs[i];
        self->msgs[i].msg_hdr.msg_namelen = sizeof self->srcs[i];
        self->msgs[i].msg_hdr.msg_iov = &self->iovs[i];
        self->msgs[i].msg_hdr.msg_iovlen = 1;
    }
    self->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    self->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (kind != CIPHER_NONE) memcpy(self->key, key.buf, 32);
    PyBuffer_Release(&key);
    if (kind == CIPHER_AES_GCM) {
        void *state = NULL;
        if (posix_memalign(&state, 16, sizeof(crypto_aead_aes256gcm_state)) == 0) {
            self->aes = state;
            crypto_aead_aes256gcm_beforenm(self->aes, self->key);
        }
    }
    if (kind != CIPHER_NONE) {
        self->enc = make_ctx(kind, self->key, 1);
        self->dec = make_ctx(kind, self->key, 0);
    }
    if (self->fdb == NULL || self->tbuf == NULL || self->rbuf == NULL ||
        (kind == CIPHER_AES_GCM && self->aes == NULL)) {
        PyErr_NoMemory();
        return -1;
    }
    if (kind != CIPHER_NONE && (self->enc == NULL || self->dec == NULL)) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL refused to set up the cipher");
        return -1;
    }
    if (self->stop_fd < 0 || self->epoll_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN};
    int fds[3] = {self->stop_fd, tap_fd, sock_fd};
    for (int i = 0; i < 3; i++) {
        ev.data.fd = fds[i];
        if (epoll_ctl(self->epoll_fd, EPOLL_CTL_ADD, fds[i], &ev) != 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
    }
    return 0;
}

static PyObject *Engine_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    allocfunc alloc = (allocfunc)PyType_GetSlot(type, Py_tp_alloc);
    Engine *self = (Engine *)alloc(type, 0);
    if (self == NULL) return NULL;
    self->stop_fd = self->epoll_fd = -1;
    pthread_mutex_init(&self->lock, NULL);
    return (PyObject *)self;
}

static void Engine_dealloc(Engine *self) {
    if (self->stop_fd >= 0) close(self->stop_fd);
    if (self->epoll_fd >= 0) close(self->epoll_fd);
    if (self->aes) {
        sodium_memzero(self->aes, sizeof *self->aes);
        free(self->aes);
    }
    sodium_memzero(self->key, sizeof self->key);
    if (self->enc) EVP_CIPHER_CTX_free(self->enc);
    if (self->dec) EVP_CIPHER_CTX_free(self->dec);
    free(self->peers);
    free(self->fdb);
    free(self->tbuf);
    free(self->rbuf);
    pthread_mutex_destroy(&self->lock);
    PyTypeObject *type = Py_TYPE((PyObject *)self);
    freefunc tp_free = (freefunc)PyType_GetSlot(type, Py_tp_free);
    tp_free(self);
    Py_DECREF(type);
}

static int ready(Engine *self) {
    if (self->tbuf == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "engine not initialised");
        return 0;
    }
    return 1;
}

static PyObject *Engine_run(Engine *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    if (self->running) {
        PyErr_SetString(PyExc_RuntimeError, "the engine is already running");
        return NULL;
    }
    self->running = 1;
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = serve(self);
    Py_END_ALLOW_THREADS
    self->running = 0;
    if (err != 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *Engine_stop(Engine *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    uint64_t one = 1;
    if (write(self->stop_fd, &one, sizeof one) < 0 && errno != EAGAIN)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

/* (address, port) of add_peer and remove_peer; 0 when parsed, -1 with an exception set */
static int peer_args(Engine *self, PyObject *args, struct sockaddr_in *sa) {
    PyObject *address;
    int port;
    if (!ready(self) || !PyArg_ParseTuple(args, "Ui", &address, &port)) return -1;
    return parse_address(address, port, sa);
}

static PyObject *Engine_add_peer(Engine *self, PyObject *args) {
    struct sockaddr_in sa;
    if (peer_args(self, args, &sa) != 0) return NULL;
    pthread_mutex_lock(&self->lock);
    int found = peer_find(self, sa.sin_addr.s_addr, sa.sin_port);
    if (found >= 0) {
        pthread_mutex_unlock(&self->lock);
        Py_RETURN_FALSE;
    }
    int slot = -1;
    for (int i = 0; i < self->npeers; i++)
        if (!self->peers[i].used) { slot = i; break; }
    if (slot < 0) {
        if (self->npeers == self->peer_cap) {
            int cap = self->peer_cap ? self->peer_cap * 2 : 16;
            peer_t *grown = realloc(self->peers, (size_t)cap * sizeof *grown);
            if (grown == NULL) {
                pthread_mutex_unlock(&self->lock);
                return PyErr_NoMemory();
            }
            self->peers = grown;
            self->peer_cap = cap;
        }
        slot = self->npeers++;
    }
    peer_t *p = &self->peers[slot];
    p->used = 1;
    p->addr = sa;
    window_reset(p);
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_TRUE;
}

static PyObject *Engine_remove_peer(Engine *self, PyObject *args) {
    struct sockaddr_in sa;
    if (peer_args(self, args, &sa) != 0) return NULL;
    pthread_mutex_lock(&self->lock);
    int found = peer_find(self, sa.sin_addr.s_addr, sa.sin_port);
    if (found >= 0) {
        self->peers[found].used = 0;
        fdb_rebuild(self, now_ns(), found);
    }
    pthread_mutex_unlock(&self->lock);
    return PyBool_FromLong(found >= 0);
}

static PyObject *Engine_set_ageing(Engine *self, PyObject *arg) {
    double ageing = PyFloat_AsDouble(arg);
    if (!ready(self) || (ageing == -1.0 && PyErr_Occurred())) return NULL;
    if (ageing <= 0) {
        PyErr_SetString(PyExc_ValueError, "ageing must be positive");
        return NULL;
    }
    pthread_mutex_lock(&self->lock);
    self->ageing_ns = (uint64_t)(ageing * 1e9);
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}

static int set_u64(PyObject *dict, const char *name, uint64_t value) {
    PyObject *v = PyLong_FromUnsignedLongLong(value);
    if (v == NULL) return -1;
    int rc = PyDict_SetItemString(dict, name, v);
    Py_DECREF(v);
    return rc;
}

static PyObject *Engine_stats(Engine *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    counters_t c;
    size_t live = 0;
    pthread_mutex_lock(&self->lock);
    c = self->c;
    uint64_t now = now_ns();
    for (size_t i = 0; i < self->fdb_cap; i++)
        if (self->fdb[i].key != 0 && now - self->fdb[i].seen <= self->ageing_ns) live++;
    pthread_mutex_unlock(&self->lock);
    PyObject *out = PyDict_New(), *drops = PyDict_New();
    if (out == NULL || drops == NULL) goto fail;
    if (set_u64(out, "tap_rx_frames", c.tx_frames) || set_u64(out, "tap_rx_bytes", c.tx_bytes) ||
        set_u64(out, "tx_unicast_frames", c.tx_unicast) ||
        set_u64(out, "tx_flooded_frames", c.tx_flooded) ||
        set_u64(out, "tx_datagrams", c.tx_datagrams) ||
        set_u64(out, "rx_datagrams", c.rx_datagrams) || set_u64(out, "tap_tx_frames", c.rx_frames) ||
        set_u64(out, "tap_tx_bytes", c.rx_bytes) || set_u64(out, "fdb_entries", live))
        goto fail;
    for (int i = 0; i < TXD_N; i++)
        if (set_u64(drops, TX_DROP_NAMES[i], c.tx_drops[i])) goto fail;
    for (int i = 0; i < RXD_N; i++)
        if (set_u64(drops, RX_DROP_NAMES[i], c.rx_drops[i])) goto fail;
    if (PyDict_SetItemString(out, "drops", drops)) goto fail;
    Py_DECREF(drops);
    return out;
fail:
    Py_XDECREF(out);
    Py_XDECREF(drops);
    return NULL;
}

static PyObject *Engine_fdb(Engine *self, PyObject *unused) {
    if (!ready(self)) return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    pthread_mutex_lock(&self->lock);
    uint64_t now = now_ns();
    size_t n = 0;
    for (size_t i = 0; i < self->fdb_cap; i++)
        if (self->fdb[i].key != 0) n++;
    struct { unsigned char mac[6]; char ip[INET_ADDRSTRLEN]; int port; double age; } *rows =
        malloc((n ? n : 1) * sizeof *rows);
    size_t m = 0;
    if (rows != NULL) {
        for (size_t i = 0; i < self->fdb_cap; i++) {
            fdb_slot_t *s = &self->fdb[i];
            if (s->key == 0 || now - s->seen > self->ageing_ns) continue;
            for (int b = 0; b < 6; b++) rows[m].mac[b] = (unsigned char)(s->key >> (40 - 8 * b));
            peer_t *p = &self->peers[s->peer];
            inet_ntop(AF_INET, &p->addr.sin_addr, rows[m].ip, sizeof rows[m].ip);
            rows[m].port = ntohs(p->addr.sin_port);
            rows[m].age = (double)(now - s->seen) / 1e9;
            m++;
        }
    }
    pthread_mutex_unlock(&self->lock);
    if (rows == NULL) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    for (size_t i = 0; i < m; i++) {
        PyObject *row = Py_BuildValue("(y#sid)", rows[i].mac, (Py_ssize_t)6, rows[i].ip,
                                      rows[i].port, rows[i].age);
        if (row == NULL || PyList_Append(out, row) != 0) {
            Py_XDECREF(row);
            Py_DECREF(out);
            free(rows);
            return NULL;
        }
        Py_DECREF(row);
    }
    free(rows);
    return out;
}

static PyMethodDef Engine_methods[] = {
    {"run", (PyCFunction)Engine_run, METH_NOARGS,
     "Serve both directions until stop(); releases the GIL. Raises OSError when the TAP fails."},
    {"stop", (PyCFunction)Engine_stop, METH_NOARGS, "Make run() return (from any thread)."},
    {"add_peer", (PyCFunction)Engine_add_peer, METH_VARARGS,
     "add_peer(address, port) -> bool: False when that peer is there already."},
    {"remove_peer", (PyCFunction)Engine_remove_peer, METH_VARARGS,
     "remove_peer(address, port) -> bool; forgets the MACs learnt from it."},
    {"set_ageing", (PyCFunction)Engine_set_ageing, METH_O, "FDB ageing, seconds."},
    {"stats", (PyCFunction)Engine_stats, METH_NOARGS, "Counters, as violin.counters.snapshot."},
    {"fdb", (PyCFunction)Engine_fdb, METH_NOARGS,
     "Live FDB entries: [(mac bytes, peer address, peer port, age seconds)]."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Engine_slots[] = {
    {Py_tp_doc, "The per-frame path of one switch daemon: a TAP, a UDP socket, peers, an FDB."},
    {Py_tp_new, Engine_new},
    {Py_tp_init, Engine_init},
    {Py_tp_dealloc, Engine_dealloc},
    {Py_tp_methods, Engine_methods},
    {0, NULL},
};

static PyType_Spec Engine_spec = {
    .name = "violin._datapath.Engine",
    .basicsize = sizeof(Engine),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = Engine_slots,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "violin._datapath",
    "The per-frame path of violin-switchd (C, libsodium and OpenSSL); see violin.native.", -1, NULL,
};

PyMODINIT_FUNC PyInit__datapath(void) {
    if (sodium_init() < 0) {
        PyErr_SetString(PyExc_ImportError, "libsodium could not be initialised");
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    PyObject *type = PyType_FromSpec(&Engine_spec);
    if (type == NULL || PyModule_AddObject(m, "Engine", type) < 0) {
        Py_XDECREF(type);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
