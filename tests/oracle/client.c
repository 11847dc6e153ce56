/* client.c - the wire side of rsa_oracle: one TCP connection and one TLS 1.2
 * handshake a try, up to the ClientKeyExchange (built by messages.c), then
 * ChangeCipherSpec and Finished in one write, and what the server answers first and
 * when (oracle.h). Records and handshake messages are built and parsed here. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include "oracle.h"

#define SUITE 0x009C

long n_conns, n_ems;

void die(const char *what)
{
    fprintf(stderr, "rsa_oracle: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(2);
}

double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static const char *alert_name(int d)
{
    switch (d) {
    case 0:
        return "close_notify";
    case 10:
        return "unexpected_message";
    case 20:
        return "bad_record_mac";
    case 22:
        return "record_overflow";
    case 40:
        return "handshake_failure";
    case 47:
        return "illegal_parameter";
    case 50:
        return "decode_error";
    case 51:
        return "decrypt_error";
    case 70:
        return "protocol_version";
    case 71:
        return "insufficient_security";
    case 80:
        return "internal_error";
    case 90:
        return "user_canceled";
    case 110:
        return "unsupported_extension";
    }
    return NULL;
}

const char *resp_name(int r)
{
    static char buf[32];
    const char *a;
    switch (r) {
    case R_FINISHED:
        return "finished";
    case R_BADFIN:
        return "bad_server_finished";
    case R_CLOSED:
        return "closed_no_alert";
    case R_TIMEOUT:
        return "timeout";
    case R_EARLY:
        return "failed_before_cke";
    case R_EARLY_TIMEOUT:
        return "timeout_before_cke";
    case R_NO_CONNECT:
        return "connection_refused";
    case R_PROTO:
        return "unparsable";
    case R_WARNING:
        return "warning_alert";
    }
    if ((a = alert_name(r)) != NULL)
        return a;
    snprintf(buf, sizeof(buf), "alert_%d", r);
    return buf;
}

typedef struct {
    int fd;
    double deadline;
    unsigned char in[32768];
    size_t inlen;
    unsigned char hs[32768]; /* handshake bytes received, not yet parsed */
    size_t hslen;
    unsigned char tr[32768]; /* the transcript: every handshake message */
    size_t trlen;
} conn;

static int wait_readable(conn *c)
{
    int ms = (int)((c->deadline - now_us()) / 1000.0);
    struct pollfd p = {c->fd, POLLIN, 0};
    if (ms < 0)
        ms = 0;
    for (;;) {
        int r = poll(&p, 1, ms);
        if (r > 0)
            return 1;
        if (r == 0)
            return 0;
        if (errno != EINTR)
            return -1;
    }
}

/* Reads at least `need` bytes into c->in: 1 ok, 0 timeout, -1 closed. */
static int fill(conn *c, size_t need)
{
    while (c->inlen < need) {
        int w = wait_readable(c);
        ssize_t r;
        if (w == 0)
            return 0;
        if (w < 0)
            return -1;
        r = recv(c->fd, c->in + c->inlen, sizeof(c->in) - c->inlen, 0);
        if (r <= 0) {
            if (r < 0 && errno == EINTR)
                continue;
            return -1;
        }
        c->inlen += (size_t)r;
    }
    return 1;
}

/* One record: 1 ok, 0 timeout, -1 closed, -2 malformed. */
static int read_record(conn *c, int *type, unsigned char *body, size_t *len)
{
    int r = fill(c, 5);
    size_t l;
    if (r != 1)
        return r;
    l = (size_t)c->in[3] << 8 | c->in[4];
    if (c->in[1] != 3 || l > 18432)
        return -2;
    r = fill(c, 5 + l);
    if (r != 1)
        return r;
    *type = c->in[0];
    memcpy(body, c->in + 5, l);
    *len = l;
    memmove(c->in, c->in + 5 + l, c->inlen - 5 - l);
    c->inlen -= 5 + l;
    return 1;
}

static int send_all(int fd, const unsigned char *b, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return 0;
        b += w;
        n -= (size_t)w;
    }
    return 1;
}

static size_t put_record(unsigned char *out, int type, const unsigned char *body, size_t len)
{
    out[0] = (unsigned char)type;
    out[1] = 3;
    out[2] = 3;
    out[3] = (unsigned char)(len >> 8);
    out[4] = (unsigned char)len;
    memcpy(out + 5, body, len);
    return len + 5;
}

static void transcript(conn *c, const unsigned char *m, size_t n)
{
    if (c->trlen + n > sizeof(c->tr))
        die("transcript too long");
    memcpy(c->tr + c->trlen, m, n);
    c->trlen += n;
}

static int open_conn(conn *c)
{
    struct sockaddr_in a;
    struct linger lg = {1, 0}; /* close with RST: no TIME_WAIT on our side */
    int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);

    if (fd < 0)
        return 0;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)opt_port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return 0;
    }
    c->fd = fd;
    c->inlen = c->hslen = c->trlen = 0;
    c->deadline = now_us() + opt_timeout * 1000.0;
    return 1;
}

/* Next handshake message (type, body) from the server, reading records as needed.
 * Returns 1, or a response code (an alert's description, R_CLOSED, ...). */
static int next_hs(conn *c, int *type, unsigned char **body, size_t *blen, unsigned char *msg,
                   size_t *mlen)
{
    unsigned char rec[18432];
    size_t rl;
    int rt, r;
    for (;;) {
        if (c->hslen >= 4) {
            size_t l = (size_t)c->hs[1] << 16 | (size_t)c->hs[2] << 8 | c->hs[3];
            if (c->hslen >= 4 + l) {
                *type = c->hs[0];
                memcpy(msg, c->hs, 4 + l);
                *mlen = 4 + l;
                *body = msg + 4;
                *blen = l;
                memmove(c->hs, c->hs + 4 + l, c->hslen - 4 - l);
                c->hslen -= 4 + l;
                return 1;
            }
        }
        r = read_record(c, &rt, rec, &rl);
        if (r == 0)
            return R_TIMEOUT;
        if (r == -1)
            return R_CLOSED;
        if (r < 0)
            return R_PROTO;
        if (rt == 21 && rl == 2)
            return rec[0] == 2 ? rec[1] : R_WARNING;
        if (rt != 22 || c->hslen + rl > sizeof(c->hs))
            return R_PROTO;
        memcpy(c->hs + c->hslen, rec, rl);
        c->hslen += rl;
    }
}

/* ClientHello .. ServerHelloDone. Returns 1 (cr, sr, ems set), or a response code. */
static int hello(conn *c, unsigned char cr[32], unsigned char sr[32], int *ems)
{
    unsigned char ch[128], rec[256], msg[16384], *b = NULL;
    size_t n = 0, bl = 0, ml = 0, ext_at;
    int type = -1, r, got_cert = 0;
    static const unsigned char sigalgs[] = {0x04, 0x01, 0x05, 0x01, 0x06, 0x01,
                                            0x08, 0x04, 0x08, 0x05, 0x08, 0x06};

    rnd(cr, 32);
    ch[n++] = 1;
    n += 3; /* length, below */
    ch[n++] = 3;
    ch[n++] = 3;
    memcpy(ch + n, cr, 32);
    n += 32;
    ch[n++] = 0;                                   /* session id */
    memcpy(ch + n, "\x00\x04\x00\x9c\x00\xff", 6); /* suites */
    n += 6;
    ch[n++] = 1; /* compression: null */
    ch[n++] = 0;
    ext_at = n;
    n += 2;
    ch[n++] = 0x00; /* signature_algorithms */
    ch[n++] = 0x0d;
    ch[n++] = 0;
    ch[n++] = (unsigned char)(sizeof(sigalgs) + 2);
    ch[n++] = 0;
    ch[n++] = (unsigned char)sizeof(sigalgs);
    memcpy(ch + n, sigalgs, sizeof(sigalgs));
    n += sizeof(sigalgs);
    if (opt_ems) {
        memcpy(ch + n, "\x00\x17\x00\x00", 4);
        n += 4;
    }
    ch[ext_at] = (unsigned char)((n - ext_at - 2) >> 8);
    ch[ext_at + 1] = (unsigned char)(n - ext_at - 2);
    ch[1] = 0;
    ch[2] = (unsigned char)((n - 4) >> 8);
    ch[3] = (unsigned char)(n - 4);
    transcript(c, ch, n);
    if (!send_all(c->fd, rec, put_record(rec, 22, ch, n)))
        return R_CLOSED;

    *ems = 0;
    for (;;) {
        r = next_hs(c, &type, &b, &bl, msg, &ml);
        if (r != 1)
            return r;
        transcript(c, msg, ml);
        if (type == 2) { /* ServerHello */
            size_t p = 34, el;
            if (bl < 38 || b[0] != 3 || b[1] != 3)
                return R_PROTO;
            memcpy(sr, b + 2, 32);
            p += 1 + b[34];
            if (p + 3 > bl || (b[p] << 8 | b[p + 1]) != SUITE)
                return R_PROTO;
            p += 3;
            if (p + 2 <= bl) {
                el = (size_t)b[p] << 8 | b[p + 1];
                p += 2;
                if (p + el > bl)
                    return R_PROTO;
                while (el >= 4) {
                    int et = b[p] << 8 | b[p + 1];
                    size_t l = (size_t)b[p + 2] << 8 | b[p + 3];
                    if (4 + l > el)
                        return R_PROTO;
                    if (et == 0x17)
                        *ems = opt_ems;
                    p += 4 + l;
                    el -= 4 + l;
                }
            }
        } else if (type == 11) { /* Certificate: the first one is the server's */
            size_t l;
            if (bl < 6)
                return R_PROTO;
            l = (size_t)b[3] << 16 | (size_t)b[4] << 8 | b[5];
            if (6 + l > bl || !msg_server_cert(b + 6, l))
                return R_PROTO;
            got_cert = 1;
        } else if (type == 14) { /* ServerHelloDone */
            return got_cert ? 1 : R_PROTO;
        } else {
            return R_PROTO;
        }
    }
}

/* One try of case c; returns the response and the server time. */
int one_try(tcase *c, int try_no, double *us, double *start)
{
    conn *cn = calloc(1, sizeof(conn));
    unsigned char cr[32], sr[32], ct[MAXK + 1], bait[64], ms[48], kb[40], h[32];
    unsigned char out[4096], cke[MAXK + 8], fin[16], aad[13], zero8[8] = {0};
    unsigned char rec[18432], tag[16], pt[64];
    size_t ctlen, baitlen, n = 0, rl;
    int ems = 0, r, rt, resp;
    double t0, t1;

    if (cn == NULL)
        die("out of memory");
    *us = 0;
    if (!open_conn(cn)) {
        free(cn);
        return R_NO_CONNECT;
    }
    r = hello(cn, cr, sr, &ems);
    if (r != 1) {
        resp = r == R_TIMEOUT ? R_EARLY_TIMEOUT : R_EARLY;
        goto done;
    }
    n_conns++;
    n_ems += ems;
    build(c, try_no, ct, &ctlen, bait, &baitlen);

    /* ClientKeyExchange */
    cke[0] = 16;
    cke[1] = (unsigned char)((ctlen + 2) >> 16);
    cke[2] = (unsigned char)((ctlen + 2) >> 8);
    cke[3] = (unsigned char)(ctlen + 2);
    cke[4] = (unsigned char)(ctlen >> 8);
    cke[5] = (unsigned char)ctlen;
    memcpy(cke + 6, ct, ctlen);
    transcript(cn, cke, ctlen + 6);
    n += put_record(out, 22, cke, ctlen + 6);

    /* secrets from the bait */
    if (ems) {
        hash(cn->tr, cn->trlen, h);
        prf_calc(bait, baitlen, "extended master secret", h, 32, NULL, 0, ms, 48);
    } else {
        prf_calc(bait, baitlen, "master secret", cr, 32, sr, 32, ms, 48);
    }
    prf_calc(ms, 48, "key expansion", sr, 32, cr, 32, kb, 40);
    if (!c->cke_only) {
        /* ChangeCipherSpec, then Finished under the client write key (seq 0) */
        n += put_record(out + n, 20, (const unsigned char *)"\x01", 1);
        hash(cn->tr, cn->trlen, h);
        fin[0] = 20;
        fin[1] = 0;
        fin[2] = 0;
        fin[3] = 12;
        prf_calc(ms, 48, "client finished", h, 32, NULL, 0, fin + 4, 12);
        transcript(cn, fin, 16);
        memcpy(aad, zero8, 8);
        memcpy(aad + 8, "\x16\x03\x03\x00\x10", 5);
        memcpy(out + n, "\x16\x03\x03\x00\x28", 5);
        memcpy(out + n + 5, zero8, 8);
        if (gcm_crypt(1, kb, kb + 32, zero8, aad, fin, 16, out + n + 13, tag) != 16)
            die("AES-GCM encryption failed");
        memcpy(out + n + 29, tag, 16);
        n += 45;
    }
    if (!send_all(cn->fd, out, n)) {
        resp = R_CLOSED;
        goto done;
    }
    t0 = now_us();
    *start = t0;
    r = wait_readable(cn);
    t1 = now_us();
    if (opt_delay_case != NULL && strcmp(opt_delay_case, c->name) == 0)
        while (now_us() < t1 + opt_delay_us) /* DEBUG ONLY (-D) */
            ;
    *us = now_us() - t0;
    if (r == 0) {
        resp = R_TIMEOUT;
        goto done;
    }
    r = read_record(cn, &rt, rec, &rl);
    if (r == 0) {
        resp = R_TIMEOUT;
    } else if (r == -1) {
        resp = R_CLOSED;
    } else if (r < 0) {
        resp = R_PROTO;
    } else if (rt == 21 && rl == 2) {
        resp = rec[0] == 2 ? rec[1] : R_WARNING;
    } else if (rt == 20 && rl == 1 && rec[0] == 1) {
        /* the server's Finished: verify_data = PRF(ms, "server finished", hash) */
        unsigned char want[16];
        resp = R_BADFIN;
        r = read_record(cn, &rt, rec, &rl);
        if (r == 1 && rt == 22 && rl == 40) {
            memcpy(aad, zero8, 8);
            memcpy(aad + 8, "\x16\x03\x03\x00\x10", 5);
            if (gcm_crypt(0, kb + 16, kb + 36, rec, aad, rec + 8, 16, pt, rec + 24) == 16) {
                hash(cn->tr, cn->trlen, h);
                memcpy(want, "\x14\x00\x00\x0c", 4);
                prf_calc(ms, 48, "server finished", h, 32, NULL, 0, want + 4, 12);
                if (CRYPTO_memcmp(pt, want, 16) == 0)
                    resp = R_FINISHED;
            }
        } else if (r == 0) {
            resp = R_TIMEOUT;
        }
    } else {
        resp = R_PROTO;
    }
done:
    close(cn->fd);
    free(cn);
    return resp;
}
