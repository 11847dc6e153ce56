/* fuzz_kdf.c - the TLS1-PRF KDF of p11tls (kdf_tls1_prf.c, the token layer's
 * tls12.c and registry.c), fetched with "provider=p11tls" from a library context
 * where the sanitized p11tls is loaded for the token under test, and checked
 * against the default provider's TLS1-PRF:
 * - the verdict follows the documented rules (digest SHA-256/SHA-384 by one of
 *   its names, a secret, a non-empty seed, a non-zero length; "master secret" /
 *   "extended master secret": 48 bytes out, "master secret" with two 32-byte
 *   randoms; any other label: a 48-byte handle as the secret);
 * - a failure leaves an error on the queue, a success leaves none;
 * - a master secret derived from raw bytes is the software one: the PRF through
 *   its handle equals the software PRF over the software master secret;
 * - the PRF through a handle of a known master secret equals the software PRF.
 * The error queue is emptied after every input.
 *
 * Input: [handle mode][master-step bytes...][digest][label][seeds][length][flags]. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include "fuzz_common.h"

#define MAX_SEEDS 5
#define MAX_OUT 4096

static OSSL_LIB_CTX *ctx;
static EVP_KDF *kdf, *kdf_sw;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    /* A small registry: evictions at every input (exercised, and the heap stays
     * small, which keeps libFuzzer's per-input leak checks fast). */
    ctx = fz_p11tls_libctx("handle-cache-size = 64\n");
    kdf = EVP_KDF_fetch(ctx, "TLS1-PRF", "provider=p11tls");
    kdf_sw = EVP_KDF_fetch(ctx, "TLS1-PRF", "provider=default");
    if (kdf == NULL || kdf_sw == NULL) {
        fprintf(stderr, "fuzz_kdf: cannot fetch TLS1-PRF from p11tls and default\n");
        ERR_print_errors_fp(stderr);
        exit(1);
    }
    return 0;
}

typedef struct {
    const char *digest; /* NULL: not set */
    const unsigned char *secret;
    size_t secret_len;
    int has_secret;
    const unsigned char *seed[MAX_SEEDS];
    size_t seed_len[MAX_SEEDS];
    int nseeds;
    size_t outlen;
} prf_in;

static size_t build_params(const prf_in *a, OSSL_PARAM *p, char *dig)
{
    size_t n = 0;
    if (a->digest != NULL) {
        snprintf(dig, 256, "%s", a->digest);
        p[n++] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, dig, 0);
    }
    if (a->has_secret)
        p[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, (void *)a->secret,
                                                   a->secret_len);
    for (int i = 0; i < a->nseeds; i++)
        p[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, (void *)a->seed[i],
                                                   a->seed_len[i]);
    p[n] = OSSL_PARAM_construct_end();
    return n;
}

/* p11tls's TLS1-PRF. how: 0 params with derive, 1 set_params then derive,
 * 2 on a dup'ed context, 3 after a reset of a used context. */
static int derive_p11(const prf_in *a, unsigned char *out, unsigned how)
{
    OSSL_PARAM p[3 + MAX_SEEDS];
    char dig[256];
    EVP_KDF_CTX *c = EVP_KDF_CTX_new(kdf), *d = NULL;
    int ok = 0;

    FZ_CHECK(c != NULL, "EVP_KDF_CTX_new");
    build_params(a, p, dig);
    switch (how) {
    case 0:
        ok = EVP_KDF_derive(c, out, a->outlen, p) > 0;
        break;
    case 1:
        ok = EVP_KDF_CTX_set_params(c, p) > 0 && EVP_KDF_derive(c, out, a->outlen, NULL) > 0;
        break;
    case 2:
        if (EVP_KDF_CTX_set_params(c, p) > 0) {
            d = EVP_KDF_CTX_dup(c);
            /* Known, tolerated: prf_dup (kdf_tls1_prf.c) fails for an empty secret,
             * OPENSSL_memdup(p, 0) giving NULL (the default provider does the same). */
            FZ_CHECK(d != NULL || (a->has_secret && a->secret_len == 0), "EVP_KDF_CTX_dup");
            if (d != NULL) {
                EVP_KDF_CTX_free(c);
                c = d;
            }
            ERR_clear_error();
            ok = EVP_KDF_derive(c, out, a->outlen, NULL) > 0;
        }
        break;
    default: {
        unsigned char junk[16];
        (void)EVP_KDF_derive(c, junk, sizeof(junk), p);
        EVP_KDF_CTX_reset(c);
        ERR_clear_error();
        /* After a reset, nothing is set: a derive without params must fail. */
        FZ_CHECK(EVP_KDF_derive(c, junk, sizeof(junk), NULL) <= 0, "derive after reset worked");
        FZ_CHECK(ERR_peek_error() != 0, "derive after reset failed without an error");
        ERR_clear_error();
        ok = EVP_KDF_derive(c, out, a->outlen, p) > 0;
        break;
    }
    }
    FZ_CHECK(EVP_KDF_CTX_get_kdf_size(c) == SIZE_MAX, "kdf size");
    EVP_KDF_CTX_free(c);
    return ok;
}

/* The default provider's TLS1-PRF over secret and the concatenated seeds. */
static int derive_sw(const char *digest, const unsigned char *secret, size_t slen, const prf_in *a,
                     unsigned char *out, size_t outlen)
{
    unsigned char seed[MAX_SEEDS * 300 + 64];
    size_t n = 0;
    OSSL_PARAM p[4];
    EVP_KDF_CTX *c = EVP_KDF_CTX_new(kdf_sw);
    int ok;

    for (int i = 0; i < a->nseeds; i++) {
        memcpy(seed + n, a->seed[i], a->seed_len[i]);
        n += a->seed_len[i];
    }
    p[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)digest, 0);
    p[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, (void *)secret, slen);
    p[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, seed, n);
    p[3] = OSSL_PARAM_construct_end();
    ok = c != NULL && EVP_KDF_derive(c, out, outlen, p) > 0;
    EVP_KDF_CTX_free(c);
    ERR_clear_error();
    return ok;
}

static const char *const digests[] = {"SHA2-256", "SHA256",   "sha-256", "SHA2-384", "sha384",
                                      "SHA-384",  "MD5-SHA1", "SHA1",    "SHA2-512"};
#define N_DIGESTS (sizeof(digests) / sizeof(digests[0]))

/* The canonical name of a digest p11tls accepts, else NULL. */
static const char *canon_digest(const char *d)
{
    if (d == NULL)
        return NULL;
    if (!strcasecmp(d, "SHA2-256") || !strcasecmp(d, "SHA256") || !strcasecmp(d, "SHA-256"))
        return "SHA2-256";
    if (!strcasecmp(d, "SHA2-384") || !strcasecmp(d, "SHA384") || !strcasecmp(d, "SHA-384"))
        return "SHA2-384";
    return NULL;
}

static size_t total_seed(const prf_in *a, unsigned char *buf, size_t max)
{
    size_t n = 0;
    for (int i = 0; i < a->nseeds; i++) {
        size_t take = a->seed_len[i];
        if (buf != NULL && n < max)
            memcpy(buf + n, a->seed[i], take < max - n ? take : max - n);
        n += take;
    }
    return n;
}

static int has_prefix(const prf_in *a, const char *label)
{
    unsigned char buf[32];
    size_t l = strlen(label), n = total_seed(a, buf, sizeof(buf));
    return n >= l && memcmp(buf, label, l) == 0;
}

/* A short PRF through handle h compared with the software PRF over ms. */
static void check_handle(const unsigned char h[48], const unsigned char ms[48], const char *digest)
{
    static const unsigned char label[] = "p11tls fuzz check";
    unsigned char a[40], b[40];
    prf_in q;
    memset(&q, 0, sizeof(q));
    q.digest = digest;
    q.secret = h;
    q.secret_len = 48;
    q.has_secret = 1;
    q.seed[0] = label;
    q.seed_len[0] = sizeof(label) - 1;
    q.nseeds = 1;
    q.outlen = sizeof(a);
    FZ_CHECK(derive_p11(&q, a, 0), "PRF through a fresh master-secret handle failed");
    FZ_CHECK(derive_sw(digest, ms, 48, &q, b, sizeof(b)), "software PRF failed");
    FZ_CHECK(memcmp(a, b, sizeof(a)) == 0,
             "the master secret behind a p11tls handle is not the software one");
}

static const char *const labels[] = {"master secret", "extended master secret", "key expansion",
                                     "client finished", "server finished"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_in in = {data, size};
    prf_in a;
    unsigned char handle[48], ms[48], *out = NULL, *sw = NULL;
    int know_ms = 0, ok, expect, is_ms, ems;
    unsigned hmode = fz_pick(&in, 4), how;
    char digest_buf[64], label_buf[64];
    const char *canon;
    size_t n, seedlen;

    memset(&a, 0, sizeof(a));
    ERR_clear_error();

    /* 1. The secret. Mode 0: a master secret derived now (from fuzzed bytes), its
     * handle as the secret (one byte of it changed if the next bit says so). */
    if (hmode == 0) {
        prf_in m;
        static unsigned char rnd[64];
        const uint8_t *r;
        uint8_t f = fz_u8(&in);
        memset(&m, 0, sizeof(m));
        m.digest = (f & 1) ? "SHA2-384" : "SHA2-256";
        m.secret = fz_bytes(&in, 100, &m.secret_len);
        m.has_secret = 1;
        ems = (f & 2) != 0;
        m.seed[0] = (const unsigned char *)labels[ems];
        m.seed_len[0] = strlen(labels[ems]);
        r = fz_take(&in, ems ? 48 : 64, &n);
        memset(rnd, 0, sizeof(rnd));
        memcpy(rnd, r, n);
        m.seed[1] = rnd;
        m.seed_len[1] = ems ? (f & 1 ? 48 : 32) : 32;
        m.seed[2] = rnd + 32;
        m.seed_len[2] = 32;
        m.nseeds = ems ? 2 : 3;
        m.outlen = 48;
        FZ_CHECK(derive_p11(&m, handle, fz_pick(&in, 4)), "master secret derivation failed");
        FZ_CHECK(ERR_peek_error() == 0, "a successful derive left errors");
        FZ_CHECK(derive_sw(m.digest, m.secret, m.secret_len, &m, ms, 48), "software PRF failed");
        know_ms = 1;
        if (f & 4) {
            handle[fz_u8(&in) % 48] ^= (uint8_t)(fz_u8(&in) | 1);
            know_ms = 0;
        }
        a.secret = handle;
        a.secret_len = 48;
        a.has_secret = 1;
    } else if (hmode == 1) {
        a.secret = fz_take(&in, 48, &a.secret_len);
        a.has_secret = 1;
    } else if (hmode == 2) {
        a.secret = fz_bytes(&in, 300, &a.secret_len);
        a.has_secret = 1;
    }

    /* 2. The digest: a name from the list, none, or fuzzed text. */
    n = fz_pick(&in, N_DIGESTS + 2);
    if (n < N_DIGESTS) {
        a.digest = digests[n];
    } else if (n == N_DIGESTS + 1) {
        const uint8_t *t = fz_bytes(&in, sizeof(digest_buf) - 1, &n);
        memcpy(digest_buf, t, n);
        digest_buf[n] = '\0';
        a.digest = digest_buf;
    }

    /* 3. Seeds: the first a label (known, exporter-like or fuzzed). */
    a.nseeds = (int)fz_pick(&in, MAX_SEEDS + 1);
    if (a.nseeds > 0) {
        unsigned l = fz_pick(&in, 8);
        if (l < 5) {
            a.seed[0] = (const unsigned char *)labels[l];
            a.seed_len[0] = strlen(labels[l]);
        } else if (l == 5) {
            const uint8_t *t = fz_bytes(&in, 40, &n);
            memcpy(label_buf, "EXPORTER-", 9);
            memcpy(label_buf + 9, t, n);
            a.seed[0] = (const unsigned char *)label_buf;
            a.seed_len[0] = 9 + n;
        } else {
            a.seed[0] = fz_bytes(&in, 64, &a.seed_len[0]);
        }
        for (int i = 1; i < a.nseeds; i++) {
            unsigned k = fz_pick(&in, 4);
            if (k < 2)
                a.seed[i] = fz_take(&in, k ? 64 : 32, &a.seed_len[i]);
            else
                a.seed[i] = fz_bytes(&in, 300, &a.seed_len[i]);
        }
    }

    /* 4. Length and how to call. */
    n = fz_pick(&in, 6);
    a.outlen = n == 0 ? 48 : n == 1 ? 12 : n == 2 ? 104 : n == 3 ? 0 : fz_u16(&in) % (MAX_OUT + 1);
    how = fz_pick(&in, 4);

    out = malloc(a.outlen ? a.outlen : 1);
    sw = malloc(a.outlen ? a.outlen : 1);
    FZ_CHECK(out != NULL && sw != NULL, "malloc");

    canon = canon_digest(a.digest);
    seedlen = total_seed(&a, NULL, 0);
    ems = has_prefix(&a, "extended master secret");
    is_ms = ems || has_prefix(&a, "master secret");
    expect = canon != NULL && a.has_secret && seedlen > 0 && seedlen <= 65536 && a.outlen > 0 &&
             (is_ms ? a.outlen == 48 && (ems || seedlen == 13 + 64) : a.secret_len == 48);

    ok = derive_p11(&a, out, how);
    if (ok) {
        FZ_CHECK(expect,
                 "p11tls derived where it must refuse (digest %s, secret %zu bytes, "
                 "seed %zu bytes, %zu out)",
                 a.digest ? a.digest : "(none)", a.secret_len, seedlen, a.outlen);
        FZ_CHECK(ERR_peek_error() == 0, "a successful derive left errors");
    } else {
        FZ_CHECK(ERR_peek_error() != 0, "a failed derive left no error");
        FZ_CHECK(!expect,
                 "p11tls refused a valid derivation (digest %s, secret %zu bytes, "
                 "seed %zu bytes, %zu out)",
                 a.digest, a.secret_len, seedlen, a.outlen);
    }
    ERR_clear_error();

    if (ok && is_ms) {
        /* out is a handle: the master secret behind it is the software one. */
        unsigned char ms2[48];
        if (derive_sw(canon, a.secret, a.secret_len, &a, ms2, 48))
            check_handle(out, ms2, (fz_u8(&in) & 1) ? "SHA2-384" : "SHA2-256");
    } else if (ok && know_ms) {
        FZ_CHECK(derive_sw(canon, ms, 48, &a, sw, a.outlen), "software PRF failed");
        FZ_CHECK(memcmp(out, sw, a.outlen) == 0,
                 "p11tls PRF output differs from the software PRF (%s, %zu bytes)", canon,
                 a.outlen);
    }
    free(out);
    free(sw);
    ERR_clear_error();
    return 0;
}
