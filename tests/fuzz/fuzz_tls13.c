/* fuzz_tls13.c - p11tls's TLS13-KDF (kdf_tls13.c, the token layer's tls13.c) and its
 * HMAC (mac_hmac.c), fetched with "provider=p11tls" for the token under test:
 * - any parameter set (mode as a number or a name, digest, key, salt, prefix,
 *   label, data of fuzzed lengths, any output length) gives a verdict, never a
 *   crash; a failure leaves an error on the queue;
 * - a fuzzed schedule step is the software one: an early secret (handle) expanded
 *   with a fuzzed label and context to an exported value ("key", "iv", "exporter",
 *   1 to 96 bytes) equals the default provider's output for the same step, and so
 *   does the HMAC keyed by a secret derived in the token (its handle) over fuzzed
 *   data, against the software HMAC keyed by the software secret.
 * Input: [op][digest][lengths...][bytes...]. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include "fuzz_common.h"

static OSSL_LIB_CTX *ctx;
static EVP_KDF *kdf, *kdf_sw;
static EVP_MAC *mac, *mac_sw;
static const char prefix[] = "tls13 ";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ctx = fz_p11tls_libctx("handle-cache-size = 64\n");
    kdf = EVP_KDF_fetch(ctx, "TLS13-KDF", "provider=p11tls");
    kdf_sw = EVP_KDF_fetch(ctx, "TLS13-KDF", "provider=default");
    mac = EVP_MAC_fetch(ctx, "HMAC", "provider=p11tls");
    mac_sw = EVP_MAC_fetch(ctx, "HMAC", "provider=default");
    if (kdf == NULL || kdf_sw == NULL || mac == NULL || mac_sw == NULL) {
        fprintf(stderr, "fuzz_tls13: cannot fetch TLS13-KDF and HMAC from p11tls and default\n");
        ERR_print_errors_fp(stderr);
        exit(1);
    }
    return 0;
}

/* One TLS13-KDF call; key/salt NULL: not given. */
static int kdf_run(EVP_KDF *k, int mode, const char *digest, const unsigned char *key, size_t klen,
                   const unsigned char *salt, size_t slen, const char *label,
                   const unsigned char *data, size_t dlen, unsigned char *out, size_t outlen)
{
    EVP_KDF_CTX *c = EVP_KDF_CTX_new(k);
    OSSL_PARAM p[8], *q = p;
    int ok;
    *q++ = OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode);
    *q++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)digest, 0);
    if (key != NULL)
        *q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)key, klen);
    if (salt != NULL)
        *q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, slen);
    *q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PREFIX, (void *)prefix, 6);
    *q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_LABEL, (void *)label, strlen(label));
    if (data != NULL)
        *q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_DATA, (void *)data, dlen);
    *q = OSSL_PARAM_construct_end();
    ok = c != NULL && EVP_KDF_derive(c, out, outlen, p) > 0;
    EVP_KDF_CTX_free(c);
    return ok;
}

static int mac_run(EVP_MAC *m, const char *digest, const unsigned char *key, size_t klen,
                   const unsigned char *data, size_t dlen, unsigned char *out, size_t *outlen)
{
    EVP_MAC_CTX *c = EVP_MAC_CTX_new(m);
    OSSL_PARAM p[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)digest, 0),
                      OSSL_PARAM_construct_end()};
    int ok = c != NULL && EVP_MAC_init(c, key, klen, p) && EVP_MAC_update(c, data, dlen) &&
             EVP_MAC_final(c, out, outlen, 64);
    EVP_MAC_CTX_free(c);
    return ok;
}

static const char *const exports[] = {"key", "iv", "exporter"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_in in = {data, size};
    unsigned op = fz_pick(&in, 3);
    int sha384 = fz_u8(&in) & 1;
    const char *digest = sha384 ? "SHA2-384" : "SHA2-256";
    size_t hl = sha384 ? 48 : 32, n;
    unsigned char es[48], es_sw[48], hs[48], sw[48], out[128], out_sw[128];
    const uint8_t *ikm = fz_bytes(&in, 64, &n);
    size_t ikmlen = n;

    ERR_clear_error();
    /* the early secret (no PSK), then a handshake secret from fuzzed bytes (an
     * (EC)DHE-like input, the early secret as the salt): handles from p11tls, the
     * secrets themselves from the default provider */
    FZ_CHECK(kdf_run(kdf, EVP_KDF_HKDF_MODE_EXTRACT_ONLY, digest, NULL, 0, NULL, 0, "derived", NULL,
                     0, es, hl) &&
                 kdf_run(kdf_sw, EVP_KDF_HKDF_MODE_EXTRACT_ONLY, digest, NULL, 0, NULL, 0,
                         "derived", NULL, 0, es_sw, hl),
             "early secret failed");
    FZ_CHECK(kdf_run(kdf, EVP_KDF_HKDF_MODE_EXTRACT_ONLY, digest, ikmlen ? ikm : NULL, ikmlen, es,
                     hl, "derived", NULL, 0, hs, hl) &&
                 kdf_run(kdf_sw, EVP_KDF_HKDF_MODE_EXTRACT_ONLY, digest, ikmlen ? ikm : NULL,
                         ikmlen, es_sw, hl, "derived", NULL, 0, sw, hl),
             "extract of %zu bytes failed", ikmlen);
    FZ_CHECK(memcmp(hs, sw, hl) != 0, "p11tls's extract returned the secret, not a handle");
    if (op == 0) { /* an exported value from the secret: as in software */
        const char *label = exports[fz_pick(&in, 3)];
        const uint8_t *ctxb = fz_bytes(&in, 64, &n);
        size_t outlen = 1 + fz_pick(&in, 96);
        int ok = kdf_run(kdf, EVP_KDF_HKDF_MODE_EXPAND_ONLY, digest, hs, hl, NULL, 0, label, ctxb,
                         n, out, outlen);
        FZ_CHECK(ok, "expand '%s' to %zu bytes failed", label, outlen);
        FZ_CHECK(kdf_run(kdf_sw, EVP_KDF_HKDF_MODE_EXPAND_ONLY, digest, sw, hl, NULL, 0, label,
                         ctxb, n, out_sw, outlen),
                 "software expand failed");
        FZ_CHECK(memcmp(out, out_sw, outlen) == 0, "expand '%s' (%zu bytes) differs from software",
                 label, outlen);
    } else if (op == 1) { /* a derived secret as an HMAC key: as in software */
        unsigned char f[48], fsw[48], m1[64], m2[64];
        size_t l1 = 0, l2 = 0;
        const uint8_t *msg = fz_bytes(&in, 256, &n);
        FZ_CHECK(kdf_run(kdf, EVP_KDF_HKDF_MODE_EXPAND_ONLY, digest, hs, hl, NULL, 0, "finished",
                         NULL, 0, f, hl),
                 "finished key failed");
        FZ_CHECK(kdf_run(kdf_sw, EVP_KDF_HKDF_MODE_EXPAND_ONLY, digest, sw, hl, NULL, 0, "finished",
                         NULL, 0, fsw, hl),
                 "software finished key failed");
        FZ_CHECK(mac_run(mac, digest, f, hl, msg, n, m1, &l1), "HMAC with a handle failed");
        FZ_CHECK(mac_run(mac_sw, digest, fsw, hl, msg, n, m2, &l2), "software HMAC failed");
        FZ_CHECK(l1 == hl && l1 == l2 && memcmp(m1, m2, l1) == 0, "HMAC with a handle differs");
        /* a key that is not a handle: the software HMAC, byte for byte */
        FZ_CHECK(mac_run(mac, digest, msg, n, msg, n, m1, &l1) &&
                     mac_run(mac_sw, digest, msg, n, msg, n, m2, &l2) && l1 == l2 &&
                     memcmp(m1, m2, l1) == 0,
                 "HMAC with a plain key differs from software");
    } else { /* any parameters: a verdict, and an error with a refusal */
        int mode = (int)fz_pick(&in, 4) - 1;
        const uint8_t *key = fz_bytes(&in, 64, &n);
        size_t klen = n, slen, dlen;
        const uint8_t *salt = fz_bytes(&in, 64, &slen), *d = fz_bytes(&in, 300, &dlen);
        char label[80];
        const uint8_t *lb = fz_bytes(&in, sizeof(label) - 1, &n);
        size_t outlen = fz_pick(&in, 128);
        unsigned flags = fz_u8(&in);
        int ok;
        memcpy(label, lb, n);
        label[n] = '\0';
        ok = kdf_run(kdf, mode, flags & 4 ? "MD5" : digest, flags & 1 ? key : NULL, klen,
                     flags & 2 ? salt : NULL, slen, label, flags & 8 ? d : NULL, dlen, out, outlen);
        if (!ok)
            FZ_CHECK(ERR_peek_error() != 0, "a refusal without an error");
    }
    ERR_clear_error();
    return 0;
}
