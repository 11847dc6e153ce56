/* rsa_oracle.c - the "no-oracle" test client for TLS 1.2 RSA key exchange.
 *
 * A raw-record TLS 1.2 client (no libssl: records and handshake messages are built
 * and parsed here; libcrypto, in a library context of its own with only the default
 * provider, does the RSA public operation without padding, SHA-256, the TLS1-PRF and
 * AES-128-GCM). It connects to 127.0.0.1:PORT many times, offers one suite
 * (TLS_RSA_WITH_AES_128_GCM_SHA256, plus TLS_EMPTY_RENEGOTIATION_INFO_SCSV), and sends
 * ClientKeyExchange messages whose RSA plaintext it builds byte by byte (PKCS#1 v1.5
 * block type 2: 00 02 PS 00 M, k bytes), followed by ChangeCipherSpec and an
 * encrypted Finished, all in one write. It records what the server answers first
 * (an alert, or ChangeCipherSpec + Finished, a close without alert, a timeout) and
 * the "server time": from the end of that write to the first response byte
 * (CLOCK_MONOTONIC).
 *
 * The Finished is keyed with a "bait" secret: for each malformed case, exactly the
 * secret a server that skipped that one check would derive, so that a missing check
 * shows as a completed handshake and not only as a timing difference:
 *   handshake_ok     M = a well-formed secret S (03 03 + 46 random), bait S: must complete
 *   valid, valid2    M = a well-formed secret T, bait another well-formed S (what an
 *                    attacker who does not know the plaintext sends): the timing baseline
 *   wrong_first_byte 01 02 PS 00 S                  bait S
 *   wrong_block_type 00 01 PS 00 S                  bait S
 *   no_separator     00 02 PS X S, X != 0, no zero in S: no separator at all; bait S
 *                    (the last 48 bytes, what a decoder copying the tail would take)
 *   short_secret8/32 M = 8 / 32 random bytes (separator late)         bait M
 *   long_secret49    M = 1 random byte || S (separator early)         bait M (49 bytes:
 *                    what a token unwrapping the message without a length check yields)
 *   long_secret64    M = 16 random bytes || S                         bait S (the tail)
 *   wrong_version    M = S with version 03 02                         bait M
 *   one_short        a ciphertext of 00 02 PS 00 T that starts with 00, sent k-1 bytes
 *                    long; bait another S (same class as valid)
 *   one_short_ok     the same, bait T: must complete (a short ciphertext is left-padded)
 *   ct_too_long      00 || a valid ciphertext: k+1 bytes                  publicly
 *   ct_eq_n          the modulus itself                                   invalid:
 *   ct_ff            FF..FF (k bytes, not below the modulus)              CKE sent alone
 * Expected (what OpenSSL 3.0's own default provider does, checked by tests/oracle.sh
 * against `openssl s_server` with a software key): handshake_ok and one_short_ok
 * complete (the server's Finished is verified); every other padding case gets a fatal
 * bad_record_mac (20) after the client's Finished (never an earlier alert, never a
 * close without alert, never a hang); the publicly invalid ones get a fatal
 * decrypt_error (51) at once: the ClientKeyExchange is sent without ChangeCipherSpec
 * and Finished, so a server that waited for them would time out.
 *
 * Cases are interleaved: every round runs each case once, in a new random order, on a
 * new TCP connection each (after a few warm-up rounds that are not counted).
 *
 * PASS criterion (printed with the figures):
 *   1. every try of every case gives the expected response;
 *   2. timing, for every case expected to end in bad_record_mac:
 *        |median(case) - median(valid)| <= limit = max(3 x noise, floor)
 *      where noise = the larger of |median(valid) - median(valid2)| (two cases the
 *      server cannot tell apart) and the standard error of a difference of two
 *      medians, sqrt(se(valid)^2 + se(valid2)^2), se of a median being half its
 *      distribution-free 68% interval (the values at ranks n/2 -+ sqrt(n)/2): under
 *      load the medians move, the spread grows, and the limit with it; floor =
 *      max(F% of median(valid), U us) (defaults 1% and 10 us; -f/-u). If any case is
 *      over the limit, every case is run again (the same mix and tries: how warm a code
 *      path is depends on how often the other cases run it), and a case fails only if
 *      it is over the limit in both runs, on the same side.
 *      Why the floor: noise is one random draw and can come out near zero. Measured
 *      on a 2-core machine shared with other jobs, 2,000 tries a case: against the
 *      reference server (OpenSSL's own RSA, ~300 us from the last flight to the alert)
 *      the medians of cases the server treats alike differ by 0-5 us; against
 *      p11tls (~1 ms with SoftHSM2, ~1.7 ms with NSS, ~2.6 ms through p11-kit's RPC)
 *      by up to ~9 us. 10 us (or 1% of the median, whichever is larger) is about
 *      what noise gives at most once, the confirmation run makes a chance failure
 *      need two on the same side, and it still catches the cost of any
 *      padding-dependent step of substance (one more token call, a log line written by
 *      the token, an early exit). Timing is not judged below 200 tries a case, or with
 *      -T.
 *   3. with -S FILE (the server's token reached through tests/oracle/p11span.c, which
 *      writes when each PKCS#11 call ran into FILE): every judged case makes the same
 *      PKCS#11 calls, in the same order, as valid (most tries of each: a
 *      padding-dependent call fails at once), and criterion 2 is applied to the time
 *      the server spends outside the token (each try's server time minus the calls
 *      that overlap its wait): p11tls, libssl and the server, with no allowance. The
 *      token's own part is shown per case (d_token) with the calls it differs in most,
 *      and not judged: a token whose failure path costs more (SoftHSM2 2.6.1 tries to
 *      write a syslog line when the padding is bad) leaks by itself, whatever the
 *      caller does; docs/security.md.
 * handshake_ok, one_short_ok, one_short and the publicly invalid cases are shown but
 * not judged on time: the first two do more work by design (the server's own
 * Finished); one_short differs from valid only in its length, which is on the wire
 * (its padding is valid: it checks the response to a short ciphertext, and a time of
 * its own tells nothing about padding; nginx through p11-kit's RPC answers it 25-30 us
 * sooner outside the token, measured, cause not found); the others depend on public
 * data only.
 *
 * Usage: rsa_oracle -p PORT [-n TRIES] [-N TRIES_PUBLIC] [-E] [-T] [-t TIMEOUT_MS]
 *                   [-w WARMUP_ROUNDS] [-f FLOOR_PCT] [-u FLOOR_US] [-c case,case...]
 *                   [-S SPAN_FILE] [-D case:us]
 *   -E  offer the extended master secret (computed from the session hash if the
 *       server accepts); -T  do not judge timing; -V  the server cannot check the
 *       version bytes (p11tls at `transient`): wrong_version (baited with its own
 *       secret) is expected to complete, untimed; -L  likewise for long_secret49 (a
 *       server that cannot tell a longer secret); -S  see criterion 3 (read after
 *       each run; tries whose wait ends after the file's last call are left out);
 *       -D  DEBUG ONLY, never used by the
 *       tests: adds a busy wait of `us` microseconds to the measured server time of one
 *       case, to show that the timing criterion can fail.
 * Exit status: 0 pass, 1 fail, 2 usage or set-up error. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/provider.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include "span.h"

#define MAXK 1024 /* largest modulus handled, in bytes */
#define SUITE 0x009C
#define POOL 32 /* one_short ciphertexts made in advance */

/* Responses: 0-255 a fatal alert's description; the rest below. */
enum {
    R_FINISHED = 1000, /* ChangeCipherSpec + a Finished that verifies */
    R_BADFIN,          /* ChangeCipherSpec + something else */
    R_CLOSED,          /* the connection closed (or was reset) without an alert */
    R_TIMEOUT,
    R_EARLY,         /* the handshake failed before the ClientKeyExchange was sent */
    R_EARLY_TIMEOUT, /* ... because the server did not answer in time */
    R_NO_CONNECT,    /* the TCP connection was refused */
    R_PROTO,         /* a response this client cannot parse */
    R_WARNING,       /* a warning-level alert */
};

enum kind {
    K_OK,
    K_VALID,
    K_FIRST,
    K_BT,
    K_NOSEP,
    K_SHORT,
    K_LONG_ALL,
    K_LONG_TAIL,
    K_VERSION,
    K_ONE_SHORT,
    K_ONE_SHORT_OK,
    K_CT_LONG,
    K_CT_N,
    K_CT_FF,
};

typedef struct {
    const char *name;
    enum kind kind;
    int arg;      /* message length for the short/long cases */
    int expect;   /* the expected response */
    int timed;    /* judged by the timing criterion */
    int cke_only; /* publicly invalid: the ClientKeyExchange alone */
    /* results */
    int want; /* tries asked for in this run (0: not run) */
    int tries, good, timeouts, first_bad, warm_bad;
    int ffail;        /* a try gave another response (in any run) */
    int tfail;        /* over the timing limit in the last run */
    int tfail_count;  /* consecutive runs over the timing limit on the same side */
    int tsign;        /* the side of the last run's difference, if over the limit */
    int resp_bad;     /* the first unexpected response seen, -1 if none */
    int counts_other; /* tries with another response */
    double *us;       /* server times of the tries with the expected response */
    double *w0;       /* ... and when each of those waits began */
    int nus;
    double med, p10, p90;
    /* -S: the tries whose calls the span file covers (see judge_span) */
    int ncov;
    double *host;  /* server time outside the token */
    double *tok;   /* server time inside the token */
    uint64_t *sig; /* which calls, in order */
    double *pos;   /* per call, its time: ncov x SPAN_MAXCALLS */
    double hmed, tmed;
    uint64_t mode;              /* the most frequent sig ... */
    int mode_n;                 /* ... how many tries had it ... */
    int mode_calls;             /* ... how many calls it has ... */
    int mode_fn[SPAN_MAXCALLS]; /* ... and which */
} tcase;

#define CASE(nm, kd, a, ex, tm, co)                                                                \
    {                                                                                              \
        .name = nm, .kind = kd, .arg = a, .expect = ex, .timed = tm, .cke_only = co                \
    }
static tcase cases[] = {
    CASE("handshake_ok", K_OK, 0, R_FINISHED, 0, 0),
    CASE("valid", K_VALID, 0, 20, 1, 0),
    CASE("valid2", K_VALID, 0, 20, 1, 0),
    CASE("wrong_first_byte", K_FIRST, 0, 20, 1, 0),
    CASE("wrong_block_type", K_BT, 0, 20, 1, 0),
    CASE("no_separator", K_NOSEP, 0, 20, 1, 0),
    CASE("short_secret8", K_SHORT, 8, 20, 1, 0),
    CASE("short_secret32", K_SHORT, 32, 20, 1, 0),
    CASE("long_secret49", K_LONG_ALL, 49, 20, 1, 0),
    CASE("long_secret64", K_LONG_TAIL, 64, 20, 1, 0),
    CASE("wrong_version", K_VERSION, 0, 20, 1, 0),
    CASE("one_short", K_ONE_SHORT, 0, 20, 0, 0), /* (time not judged: see the header) */
    CASE("one_short_ok", K_ONE_SHORT_OK, 0, R_FINISHED, 0, 0),
    CASE("ct_too_long", K_CT_LONG, 0, 51, 0, 1),
    CASE("ct_eq_n", K_CT_N, 0, 51, 0, 1),
    CASE("ct_ff", K_CT_FF, 0, 51, 0, 1),
};
#define NCASES ((int)(sizeof(cases) / sizeof(cases[0])))

/* options */
static int opt_port, opt_n = 2000, opt_npub = 50, opt_ems, opt_notiming, opt_timeout = 5000;
static int opt_warmup = 5;
static double opt_floor_pct = 1.0, opt_floor_us = 10.0;
static const char *opt_delay_case;
static const char *opt_span;
static double opt_delay_us;
static int enabled[NCASES];
static long n_conns, n_ems; /* connections that reached ServerHelloDone; with EMS */

/* crypto in our own library context */
static OSSL_LIB_CTX *lctx;
static EVP_KDF *prf;
static EVP_MD *sha256;
static EVP_CIPHER *gcm;

/* the server's key (from its Certificate; cached while it stays the same) */
static unsigned char cert_der[16384];
static size_t cert_len;
static EVP_PKEY *srv_key;
static unsigned char modulus[MAXK];
static size_t k;

static struct {
    unsigned char t[POOL][48];
    unsigned char ct[POOL][MAXK];
    int n;
} pool;

static void die(const char *what)
{
    fprintf(stderr, "rsa_oracle: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(2);
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void rnd(unsigned char *b, size_t n)
{
    if (n > 0 && RAND_bytes_ex(lctx, b, n, 0) != 1)
        die("RAND_bytes failed");
}

static void rnd_nonzero(unsigned char *b, size_t n)
{
    rnd(b, n);
    for (size_t i = 0; i < n; i++)
        while (b[i] == 0)
            rnd(b + i, 1);
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

static const char *resp_name(int r)
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

/* ------------------------------------------------------------ crypto */

static void prf_calc(const unsigned char *secret, size_t slen, const char *label,
                     const unsigned char *s1, size_t l1, const unsigned char *s2, size_t l2,
                     unsigned char *out, size_t olen)
{
    unsigned char seed[256];
    size_t ll = strlen(label);
    EVP_KDF_CTX *c = EVP_KDF_CTX_new(prf);
    OSSL_PARAM p[4];

    if (c == NULL || ll + l1 + l2 > sizeof(seed))
        die("TLS1-PRF context");
    memcpy(seed, label, ll);
    memcpy(seed + ll, s1, l1);
    if (l2 > 0)
        memcpy(seed + ll + l1, s2, l2);
    p[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, "SHA256", 0);
    p[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, (void *)secret, slen);
    p[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, seed, ll + l1 + l2);
    p[3] = OSSL_PARAM_construct_end();
    if (EVP_KDF_derive(c, out, olen, p) != 1)
        die("TLS1-PRF failed");
    EVP_KDF_CTX_free(c);
}

static void hash(const unsigned char *d, size_t n, unsigned char out[32])
{
    unsigned int ol = 32;
    if (EVP_Digest(d, n, out, &ol, sha256, NULL) != 1)
        die("SHA-256 failed");
}

/* AES-128-GCM record protection; returns the output length or -1 (bad tag). */
static int gcm_crypt(int enc, const unsigned char key[16], const unsigned char salt[4],
                     const unsigned char explicit_nonce[8], const unsigned char aad[13],
                     const unsigned char *in, int inlen, unsigned char *out, unsigned char tag[16])
{
    unsigned char iv[12];
    int l = 0, l2 = 0, ok;
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();

    memcpy(iv, salt, 4);
    memcpy(iv + 4, explicit_nonce, 8);
    ok = c != NULL && EVP_CipherInit_ex2(c, gcm, key, iv, enc, NULL) == 1 &&
         EVP_CipherUpdate(c, NULL, &l, aad, 13) == 1 && EVP_CipherUpdate(c, out, &l, in, inlen);
    if (ok && !enc)
        ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, tag) == 1;
    ok = ok && EVP_CipherFinal_ex(c, out + l, &l2) == 1;
    if (ok && enc)
        ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1;
    EVP_CIPHER_CTX_free(c);
    return ok ? l + l2 : -1;
}

/* Raw RSA (no padding) of a k-byte block below the modulus. */
static void rsa_raw(const unsigned char *block, unsigned char *ct)
{
    size_t ol = k;
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_pkey(lctx, srv_key, NULL);
    if (c == NULL || EVP_PKEY_encrypt_init(c) != 1 ||
        EVP_PKEY_CTX_set_rsa_padding(c, RSA_NO_PADDING) != 1 ||
        EVP_PKEY_encrypt(c, ct, &ol, block, k) != 1 || ol != k)
        die("raw RSA encryption failed");
    EVP_PKEY_CTX_free(c);
}

/* 00 02 PS 00 M (PS: k-3-mlen non-zero random bytes). */
static void pkcs1_block(unsigned char *b, const unsigned char *m, size_t mlen)
{
    b[0] = 0;
    b[1] = 2;
    rnd_nonzero(b + 2, k - 3 - mlen);
    b[k - mlen - 1] = 0;
    memcpy(b + k - mlen, m, mlen);
}

static void wellformed(unsigned char s[48])
{
    s[0] = 3;
    s[1] = 3;
    rnd(s + 2, 46);
}

static void fill_pool(void)
{
    unsigned char b[MAXK], ct[MAXK];
    for (pool.n = 0; pool.n < POOL; pool.n++) {
        unsigned char *t = pool.t[pool.n];
        wellformed(t);
        do {
            pkcs1_block(b, t, 48);
            rsa_raw(b, ct);
        } while (ct[0] != 0);
        memcpy(pool.ct[pool.n], ct, k);
    }
}

/* The ciphertext and the bait of one try of case c. */
static void build(const tcase *c, int try_no, unsigned char *ct, size_t *ctlen, unsigned char *bait,
                  size_t *baitlen)
{
    unsigned char b[MAXK], s[48], m[64];
    int i = 0;

    wellformed(s);
    memcpy(bait, s, 48);
    *baitlen = 48;
    *ctlen = k;
    switch (c->kind) {
    case K_OK:
        pkcs1_block(b, s, 48);
        break;
    case K_VALID:
        wellformed(m);
        pkcs1_block(b, m, 48);
        break;
    case K_FIRST:
        pkcs1_block(b, s, 48);
        b[0] = 1;
        break;
    case K_BT:
        pkcs1_block(b, s, 48);
        b[1] = 1;
        break;
    case K_NOSEP:
        rnd_nonzero(s + 2, 46);
        memcpy(bait, s, 48);
        pkcs1_block(b, s, 48);
        rnd_nonzero(b + k - 49, 1);
        break;
    case K_SHORT:
        rnd(m, c->arg);
        pkcs1_block(b, m, c->arg);
        memcpy(bait, m, c->arg);
        *baitlen = c->arg;
        break;
    case K_LONG_ALL:
    case K_LONG_TAIL:
        rnd(m, c->arg - 48);
        memcpy(m + c->arg - 48, s, 48);
        pkcs1_block(b, m, c->arg);
        if (c->kind == K_LONG_ALL) {
            memcpy(bait, m, c->arg);
            *baitlen = c->arg;
        }
        break;
    case K_VERSION:
        s[1] = 2;
        memcpy(bait, s, 48);
        pkcs1_block(b, s, 48);
        break;
    case K_ONE_SHORT:
    case K_ONE_SHORT_OK:
        i = try_no % pool.n;
        if (c->kind == K_ONE_SHORT_OK)
            memcpy(bait, pool.t[i], 48);
        memcpy(ct, pool.ct[i] + 1, k - 1);
        *ctlen = k - 1;
        return;
    case K_CT_LONG:
        pkcs1_block(b, s, 48);
        ct[0] = 0;
        rsa_raw(b, ct + 1);
        *ctlen = k + 1;
        return;
    case K_CT_N:
        memcpy(ct, modulus, k);
        return;
    case K_CT_FF:
        memset(ct, 0xff, k);
        return;
    }
    rsa_raw(b, ct);
}

/* ------------------------------------------------------------ the wire */

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
            if (6 + l > bl || l > sizeof(cert_der))
                return R_PROTO;
            if (srv_key == NULL || l != cert_len || memcmp(cert_der, b + 6, l) != 0) {
                const unsigned char *p = b + 6;
                X509 *x = X509_new_ex(lctx, NULL);
                BIGNUM *bn = NULL;
                if (x == NULL || d2i_X509(&x, &p, (long)l) == NULL)
                    die("cannot parse the server's certificate");
                EVP_PKEY_free(srv_key);
                srv_key = X509_get_pubkey(x);
                X509_free(x);
                if (srv_key == NULL || !EVP_PKEY_is_a(srv_key, "RSA") ||
                    EVP_PKEY_get_bn_param(srv_key, OSSL_PKEY_PARAM_RSA_N, &bn) != 1)
                    die("the server's certificate has no RSA key");
                k = (size_t)EVP_PKEY_get_size(srv_key);
                if (k > MAXK || k < 128 || BN_bn2binpad(bn, modulus, (int)k) != (int)k)
                    die("unsupported modulus size");
                BN_free(bn);
                memcpy(cert_der, b + 6, l);
                cert_len = l;
                pool.n = 0;
            }
            if (pool.n == 0)
                fill_pool();
            got_cert = 1;
        } else if (type == 14) { /* ServerHelloDone */
            return got_cert ? 1 : R_PROTO;
        } else {
            return R_PROTO;
        }
    }
}

/* One try of case c; returns the response and the server time. */
static int one_try(tcase *c, int try_no, double *us, double *start)
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

/* ------------------------------------------------------------ statistics */

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double quantile(const double *s, int n, double q)
{
    double pos;
    int i;
    if (n == 0)
        return NAN;
    pos = q * (n - 1);
    i = (int)pos;
    if (i + 1 >= n)
        return s[n - 1];
    return s[i] + (pos - i) * (s[i + 1] - s[i]);
}

/* Standard error of the median of sorted s[0..n-1]: half its distribution-free 68%
 * confidence interval (ranks n/2 -+ sqrt(n)/2). */
static double med_se(const double *s, int n)
{
    double h = sqrt((double)n) / 2;
    int lo = (int)floor(n / 2.0 - h), hi = (int)ceil(n / 2.0 + h);
    if (n < 4)
        return NAN;
    if (lo < 0)
        lo = 0;
    if (hi > n - 1)
        hi = n - 1;
    return (s[hi] - s[lo]) / 2;
}

static tcase *find_case(const char *name)
{
    for (int i = 0; i < NCASES; i++)
        if (strcmp(cases[i].name, name) == 0)
            return &cases[i];
    return NULL;
}

/* Runs the enabled cases, interleaved: `warmup` uncounted rounds, then rounds until
 * each case has its tries (n; npub for the publicly invalid ones). */
static void run_phase(const int *on, int n, int npub, int warmup)
{
    int max_tries = 0, rounds;
    for (int i = 0; i < NCASES; i++) {
        tcase *c = &cases[i];
        int want = c->cke_only ? npub : n;
        c->tries = c->good = c->timeouts = c->warm_bad = c->counts_other = c->nus = 0;
        c->first_bad = -1;
        c->want = on[i] ? want : 0;
        free(c->us);
        free(c->w0);
        c->us = calloc((size_t)want + 1, sizeof(double));
        c->w0 = calloc((size_t)want + 1, sizeof(double));
        if (c->us == NULL || c->w0 == NULL)
            die("out of memory");
        if (c->want > max_tries)
            max_tries = c->want;
    }
    rounds = warmup + max_tries;
    for (int round = 0; round < rounds; round++) {
        int order[NCASES], counted = round >= warmup;
        for (int i = 0; i < NCASES; i++)
            order[i] = i;
        for (int i = NCASES - 1; i > 0; i--) { /* a new order every round */
            unsigned char r2[2];
            int j, t;
            rnd(r2, 2);
            j = (r2[0] << 8 | r2[1]) % (i + 1);
            t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        for (int oi = 0; oi < NCASES; oi++) {
            tcase *c = &cases[order[oi]];
            int resp;
            double us, w0 = 0;
            if (c->want == 0 || (counted && c->tries >= c->want))
                continue;
            if (c->timeouts >= 3) /* a hanging case: do not wait 2,000 times */
                continue;
            resp = one_try(c, round, &us, &w0);
            if (resp == R_TIMEOUT || resp == R_EARLY_TIMEOUT)
                c->timeouts++;
            if (counted) {
                c->tries++;
                if (resp == c->expect) {
                    c->good++;
                    c->w0[c->nus] = w0;
                    c->us[c->nus++] = us;
                    continue;
                }
                c->counts_other++;
            } else if (resp != c->expect) {
                c->warm_bad++;
            } else {
                continue;
            }
            if (c->first_bad < 0) {
                c->first_bad = resp;
                if (c->resp_bad < 0)
                    c->resp_bad = resp;
                printf("# %s: %s try %d got %s (expected %s)\n", c->name,
                       counted ? "counted" : "warm-up", counted ? c->tries : round + 1,
                       resp_name(resp), resp_name(c->expect));
                fflush(stdout);
            }
        }
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* -S: for every try of the last run whose wait the span file covers, the part of its
 * server time spent inside the token (the calls that overlap the wait, clipped to it)
 * and the rest; which calls ran (most tries of a case make the same ones: the mode);
 * each call's time. Before judge() sorts the times (us and w0 are still in step).
 * Returns 0 if the file cannot be read or covers too few tries. */
static int judge_span(void)
{
    span_set *S = span_load(opt_span);
    double until;
    int ok = 1;
    if (S == NULL)
        return 0;
    until = span_covered_until(S);
    for (int i = 0; i < NCASES; i++) {
        tcase *c = &cases[i];
        uint64_t *sorted;
        int fn[SPAN_MAXCALLS], best = 0;
        c->ncov = 0;
        c->mode_n = 0;
        if (c->want == 0 || c->nus == 0)
            continue;
        free(c->host);
        free(c->tok);
        free(c->sig);
        free(c->pos);
        c->host = calloc((size_t)c->nus, sizeof(double));
        c->tok = calloc((size_t)c->nus, sizeof(double));
        c->sig = calloc((size_t)c->nus, sizeof(uint64_t));
        c->pos = calloc((size_t)c->nus * SPAN_MAXCALLS, sizeof(double));
        sorted = calloc((size_t)c->nus, sizeof(uint64_t));
        if (c->host == NULL || c->tok == NULL || c->sig == NULL || c->pos == NULL || sorted == NULL)
            die("out of memory");
        for (int t = 0; t < c->nus; t++) {
            double in;
            int n;
            if (c->w0[t] + c->us[t] > until)
                continue; /* its calls may not be written yet */
            n = span_window(S, c->w0[t], c->w0[t] + c->us[t], &in, &c->sig[c->ncov], fn,
                            &c->pos[(size_t)c->ncov * SPAN_MAXCALLS], SPAN_MAXCALLS);
            (void)n;
            c->tok[c->ncov] = in;
            c->host[c->ncov] = c->us[t] - in;
            sorted[c->ncov] = c->sig[c->ncov];
            c->ncov++;
        }
        qsort(sorted, (size_t)c->ncov, sizeof(uint64_t), cmp_u64);
        for (int t = 0; t < c->ncov;) {
            int u = t;
            while (u < c->ncov && sorted[u] == sorted[t])
                u++;
            if (u - t > best) {
                best = u - t;
                c->mode = sorted[t];
            }
            t = u;
        }
        c->mode_n = best;
        free(sorted);
        /* the calls of one try with the mode */
        for (int t = 0; t < c->nus; t++) {
            double in;
            uint64_t sg;
            double dur[SPAN_MAXCALLS];
            int n;
            if (c->w0[t] + c->us[t] > until)
                continue;
            n = span_window(S, c->w0[t], c->w0[t] + c->us[t], &in, &sg, c->mode_fn, dur,
                            SPAN_MAXCALLS);
            if (sg == c->mode) {
                c->mode_calls = n < SPAN_MAXCALLS ? n : SPAN_MAXCALLS;
                break;
            }
        }
        if (c->ncov < c->nus / 2) {
            printf("# %s: the span file covers %d of %d tries\n", c->name, c->ncov, c->nus);
            ok = 0;
        }
    }
    span_free(S);
    return ok;
}

/* Median over the tries with the case's mode of call p's time. */
static double pos_median(tcase *c, int p)
{
    double *v = calloc((size_t)c->ncov + 1, sizeof(double)), m;
    int n = 0;
    if (v == NULL)
        die("out of memory");
    for (int t = 0; t < c->ncov; t++)
        if (c->sig[t] == c->mode)
            v[n++] = c->pos[(size_t)t * SPAN_MAXCALLS + p];
    qsort(v, (size_t)n, sizeof(double), cmp_d);
    m = quantile(v, n, 0.5);
    free(v);
    return m;
}

/* One line for case c against valid: the token's part and the calls it differs in
 * most (the same calls in both, by position). */
static void print_token_part(tcase *c, tcase *valid)
{
    int top[3] = {-1, -1, -1};
    double d[SPAN_MAXCALLS];
    printf("#   %-17s token %+7.1f us", c->name, c->tmed - valid->tmed);
    if (c->mode != valid->mode) {
        printf(": other calls than valid's\n");
        return;
    }
    for (int p = 0; p < c->mode_calls; p++) {
        d[p] = pos_median(c, p) - pos_median(valid, p);
        for (int k2 = 0; k2 < 3; k2++) {
            if (top[k2] < 0 || fabs(d[p]) > fabs(d[top[k2]])) {
                for (int m = 2; m > k2; m--)
                    top[m] = top[m - 1];
                top[k2] = p;
                break;
            }
        }
    }
    printf(", most in:");
    for (int k2 = 0; k2 < 3 && top[k2] >= 0; k2++)
        printf(" %s #%d %+.1f", span_fn_name(c->mode_fn[top[k2]]), top[k2] + 1, d[top[k2]]);
    printf("\n");
}

/* The table of the last run_phase; sets ffail (sticky) and tfail (this run),
 * counting timing failures in tfail_count. With -S the judged time is the server's
 * time outside the token (p11tls, libssl, the server), and every judged case must
 * make the same PKCS#11 calls as valid. */
static void judge(const char *title)
{
    tcase *valid = find_case("valid"), *valid2 = find_case("valid2");
    double noise = NAN, floor_us = NAN, limit = NAN, se = NAN, vdiff = NAN;
    int timing = !opt_notiming && valid->want > 0 && valid2->want > 0;
    int span = opt_span != NULL && timing;

    if (span && !judge_span()) {
        printf("# FAIL: the server's PKCS#11 calls could not be read (-S %s)\n", opt_span);
        valid->ffail = 1;
        span = 0;
    }
    for (int i = 0; i < NCASES; i++) {
        tcase *c = &cases[i];
        qsort(c->us, (size_t)c->nus, sizeof(double), cmp_d);
        c->med = quantile(c->us, c->nus, 0.5);
        c->p10 = quantile(c->us, c->nus, 0.1);
        c->p90 = quantile(c->us, c->nus, 0.9);
        if (span && c->ncov > 0) {
            qsort(c->host, (size_t)c->ncov, sizeof(double), cmp_d);
            qsort(c->tok, (size_t)c->ncov, sizeof(double), cmp_d);
            c->hmed = quantile(c->host, c->ncov, 0.5);
            c->tmed = quantile(c->tok, c->ncov, 0.5);
        }
    }
    if (timing) {
        /* noise: the larger of the observed |median(valid) - median(valid2)| and the
         * standard error of a difference of two medians, sqrt(se1^2 + se2^2), se of a
         * median from its distribution-free 68% interval (ranks n/2 -+ sqrt(n)/2); of
         * the judged times (with -S: outside the token) */
        double s1, s2;
        if (span) {
            s1 = med_se(valid->host, valid->ncov);
            s2 = med_se(valid2->host, valid2->ncov);
            vdiff = valid->hmed - valid2->hmed;
        } else {
            s1 = med_se(valid->us, valid->nus);
            s2 = med_se(valid2->us, valid2->nus);
            vdiff = valid->med - valid2->med;
        }
        se = sqrt(s1 * s1 + s2 * s2);
        noise = fmax(fabs(vdiff), se);
        floor_us = fmax(opt_floor_pct / 100.0 * valid->med, opt_floor_us);
        limit = fmax(3 * noise, floor_us);
    }
    printf("%-17s %6s %-20s %9s %9s %9s %10s %8s %8s  %s\n", "case", "tries", "response",
           "median_us", "p10_us", "p90_us", "d_valid_us", "d_token", "d_rest", "verdict");
    for (int i = 0; i < NCASES; i++) {
        tcase *c = &cases[i];
        char resp[64], verdict[128], dt[16] = "-", dr[16] = "-";
        double d = c->med - valid->med;
        int judged_span = span && c->ncov > 0 && valid->ncov > 0;
        c->tfail = 0;
        if (c->want == 0)
            continue;
        if (judged_span) {
            snprintf(dt, sizeof(dt), "%+.1f", c->tmed - valid->tmed);
            snprintf(dr, sizeof(dr), "%+.1f", c->hmed - valid->hmed);
        }
        if (c->good == c->tries && c->tries == c->want)
            snprintf(resp, sizeof(resp), "%s", resp_name(c->expect));
        else
            snprintf(resp, sizeof(resp), "%d/%d %s", c->good, c->tries, resp_name(c->expect));
        if (c->good != c->tries || c->tries != c->want || c->warm_bad > 0) {
            snprintf(verdict, sizeof(verdict), "FAIL: %d other%s (first: %s)%s",
                     c->counts_other + c->warm_bad, c->warm_bad ? " (incl. warm-up)" : "",
                     c->first_bad >= 0 ? resp_name(c->first_bad) : "-",
                     c->tries != c->want ? ", gave up" : "");
            c->ffail = 1;
        } else if (c->timed && timing && c != valid && judged_span && c->mode != valid->mode) {
            /* a padding-dependent PKCS#11 call: an oracle whatever the times say */
            snprintf(verdict, sizeof(verdict), "FAIL: other PKCS#11 calls than valid's");
            c->ffail = 1;
        } else if (c->timed && timing && c != valid) {
            double dj = judged_span ? c->hmed - valid->hmed : d;
            if (fabs(dj) <= limit) {
                snprintf(verdict, sizeof(verdict), "ok");
                c->tsign = 0;
            } else {
                int sign = dj > 0 ? 1 : -1;
                snprintf(verdict, sizeof(verdict), "over the limit: |%.1f| > %.1f us%s", dj, limit,
                         judged_span ? " (outside the token)" : "");
                c->tfail = 1;
                /* consecutive runs over the limit on the same side */
                c->tfail_count = c->tsign == sign ? c->tfail_count + 1 : 1;
                c->tsign = sign;
            }
        } else {
            snprintf(verdict, sizeof(verdict), "ok%s",
                     c->timed || !timing ? "" : " (time not judged)");
        }
        printf("%-17s %6d %-20s %9.1f %9.1f %9.1f %+10.1f %8s %8s  %s\n", c->name, c->tries, resp,
               c->med, c->p10, c->p90, d, dt, dr, verdict);
    }
    if (!timing) {
        printf("# %stiming: not judged (%s)\n", title,
               opt_n < 200 ? "fewer than 200 tries a case" : "-T, or valid/valid2 not run");
    } else {
        if (span) {
            printf("# %sthe server's time split by its PKCS#11 calls (p11span.so): d_token = "
                   "the difference of medians of the time inside the token, d_rest = of the "
                   "time outside it (p11tls, libssl, the server: judged); %d of %d valid tries "
                   "covered, %d of them with the same %d calls\n",
                   title, valid->ncov, valid->nus, valid->mode_n, valid->mode_calls);
            for (int i = 0; i < NCASES; i++)
                if (cases[i].want > 0 && cases[i].timed && &cases[i] != valid && cases[i].ncov > 0)
                    print_token_part(&cases[i], valid);
        }
        printf("# %stiming: noise = max(|median(valid) - median(valid2)| = %.1f us, standard "
               "error of a difference of medians = %.1f us) = %.1f us; floor = max(%.1f%% of "
               "median(valid), %.1f us) = %.1f us; limit = max(3 x noise, floor) = %.1f us%s\n",
               title, fabs(vdiff), se, noise, opt_floor_pct, opt_floor_us, floor_us, limit,
               span ? " (noise of the times outside the token)" : "");
    }
    fflush(stdout);
}

static void usage(void)
{
    fprintf(stderr, "usage: rsa_oracle -p PORT [-n TRIES] [-N TRIES_PUBLIC] [-E] [-T] [-V] [-L] "
                    "[-S SPAN_FILE] "
                    "[-t TIMEOUT_MS] [-w WARMUP] [-f FLOOR_PCT] [-u FLOOR_US] [-c case,...] "
                    "[-D case:us]\ncases:");
    for (int i = 0; i < NCASES; i++)
        fprintf(stderr, " %s", cases[i].name);
    fprintf(stderr, "\n");
    exit(2);
}

int main(int argc, char **argv)
{
    int o, fail = 0, all = 1;
    tcase *valid, *valid2;
    double start;

    OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG, NULL);
    for (int i = 0; i < NCASES; i++)
        enabled[i] = 1;
    while ((o = getopt(argc, argv, "p:n:N:ETLVt:w:f:u:c:D:S:")) != -1) {
        switch (o) {
        case 'S':
            opt_span = optarg;
            break;
        case 'L': {
            /* The server's token cannot tell a secret longer than 48 bytes (p11tls at
             * `transient` behind Debian 12's p11-kit RPC, which carries no key-wrap
             * mechanism for the length query, README): long_secret49 is used as sent
             * and completes for the client that made it. Expected, untimed. */
            tcase *c = find_case("long_secret49");
            c->expect = R_FINISHED;
            c->timed = 0;
            break;
        }
        case 'V': {
            /* The server's token cannot read the version bytes (p11tls at `transient`,
             * README): a secret with a wrong version is used as sent, so the client
             * whose own secret it is completes the handshake. Expected and shown as
             * such; not judged on time (the server does more work: its Finished). */
            tcase *c = find_case("wrong_version");
            c->expect = R_FINISHED;
            c->timed = 0;
            break;
        }
        case 'p':
            opt_port = atoi(optarg);
            break;
        case 'n':
            opt_n = atoi(optarg);
            break;
        case 'N':
            opt_npub = atoi(optarg);
            break;
        case 'E':
            opt_ems = 1;
            break;
        case 'T':
            opt_notiming = 1;
            break;
        case 't':
            opt_timeout = atoi(optarg);
            break;
        case 'w':
            opt_warmup = atoi(optarg);
            break;
        case 'f':
            opt_floor_pct = atof(optarg);
            break;
        case 'u':
            opt_floor_us = atof(optarg);
            break;
        case 'c': {
            char *s = strdup(optarg), *tok, *save = NULL;
            memset(enabled, 0, sizeof(enabled));
            for (tok = strtok_r(s, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
                tcase *c = find_case(tok);
                if (c == NULL)
                    usage();
                enabled[c - cases] = 1;
            }
            free(s);
            all = 0;
            break;
        }
        case 'D': {
            char *colon = strchr(optarg, ':');
            if (colon == NULL)
                usage();
            *colon = 0;
            opt_delay_case = optarg;
            opt_delay_us = atof(colon + 1);
            if (find_case(opt_delay_case) == NULL)
                usage();
            break;
        }
        default:
            usage();
        }
    }
    if (opt_port <= 0 || opt_port > 65535 || opt_n < 1 || opt_npub < 0 || opt_timeout < 1)
        usage();
    valid = find_case("valid");
    valid2 = find_case("valid2");
    if (!enabled[valid - cases] || !enabled[valid2 - cases])
        opt_notiming = 1;
    if (opt_n < 200)
        opt_notiming = 1;

    if ((lctx = OSSL_LIB_CTX_new()) == NULL || OSSL_PROVIDER_load(lctx, "default") == NULL ||
        (prf = EVP_KDF_fetch(lctx, "TLS1-PRF", "provider=default")) == NULL ||
        (sha256 = EVP_MD_fetch(lctx, "SHA256", "provider=default")) == NULL ||
        (gcm = EVP_CIPHER_fetch(lctx, "AES-128-GCM", "provider=default")) == NULL)
        die("cannot set up libcrypto's default provider");

    for (int i = 0; i < NCASES; i++)
        cases[i].resp_bad = -1;
    if (opt_delay_case != NULL)
        printf("# DEBUG: -D adds %.0f us to every server time of case %s (never used by the "
               "tests)\n",
               opt_delay_us, opt_delay_case);
    printf("# rsa_oracle: 127.0.0.1:%d, TLS_RSA_WITH_AES_128_GCM_SHA256, extended master "
           "secret %s, %d tries a case (%d for the publicly invalid ones), %d warm-up rounds\n",
           opt_port, opt_ems ? "offered" : "not offered", opt_n, opt_npub, opt_warmup);
    fflush(stdout);

    start = now_us();
    run_phase(enabled, opt_n, opt_npub, opt_warmup);
    judge("");
    if (!opt_notiming) {
        /* Confirmation: a timing failure must show again, with the same sign, in a
         * second run of the same cases (the same mix: how warm a code path is depends
         * on how often the other cases run it). */
        int any = 0;
        for (int i = 0; i < NCASES; i++)
            any |= cases[i].tfail;
        if (any) {
            printf("# confirmation: a second run of every case, %d tries each\n", opt_n);
            run_phase(enabled, opt_n, opt_npub, opt_warmup);
            judge("confirmation ");
        }
    }
    for (int i = 0; i < NCASES; i++) {
        if (!enabled[i])
            continue;
        if (cases[i].ffail) {
            printf("# FAIL %s: a response other than %s\n", cases[i].name,
                   resp_name(cases[i].expect));
            fail = 1;
        }
        if (cases[i].tfail_count >= 2) {
            printf("# FAIL %s: server time differs from valid's, in the run and in the "
                   "confirmation, on the same side\n",
                   cases[i].name);
            fail = 1;
        } else if (cases[i].tfail_count == 1) {
            printf("# note %s: over the timing limit once, not confirmed\n", cases[i].name);
        }
    }
    printf("# extended master secret used on %ld of %ld connections\n", n_ems, n_conns);
    if (opt_ems && n_ems != n_conns) {
        printf("# FAIL: the extended master secret was offered but not always used\n");
        fail = 1;
    }
    printf("# criterion: every try gives the expected response (bad_record_mac after the "
           "Finished; finished for handshake_ok/one_short_ok; decrypt_error at once for ct_*), "
           "and |median(case) - median(valid)| <= limit for the padding cases%s (over the limit: "
           "every case is run again, and a case fails if it is over the limit again, on the "
           "same side)\n",
           opt_span != NULL ? " (of the time outside the token; and every padding case makes "
                              "the PKCS#11 calls valid makes)"
                            : "");
    printf("RESPONSES");
    for (int i = 0; i < NCASES; i++)
        if (enabled[i])
            printf(" %s=%s", cases[i].name,
                   cases[i].resp_bad >= 0 ? resp_name(cases[i].resp_bad)
                                          : resp_name(cases[i].expect));
    printf("\n# %.1f s%s\n", (now_us() - start) / 1e6, all ? "" : " (a subset of the cases)");
    printf("RESULT: %s\n", fail ? "FAIL" : "PASS");
    EVP_PKEY_free(srv_key);
    EVP_KDF_free(prf);
    EVP_MD_free(sha256);
    EVP_CIPHER_free(gcm);
    OSSL_LIB_CTX_free(lctx);
    return fail;
}
