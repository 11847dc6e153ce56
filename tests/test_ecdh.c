/* test_ecdh.c - ECDHE in the token (pkcs11/ecdh.c) on the token under test. Where the
 * token does it (NSS softoken, SoftHSM2 in process: P-256, P-384, P-521): an ephemeral
 * pair made in the token agrees with a software peer (TLS 1.3's key schedule and TLS
 * 1.2's master secret, SHA-256 and SHA-384, fed with the token's handle and with the
 * software side's secret give the same keys), each pair and secret object is destroyed
 * when its user is done with it (the token's session objects counted before and after
 * 60 handshakes' worth), and a bad peer point is refused before the token is asked,
 * leaving nothing behind. Where it does not (SoftHSM2 behind p11-kit's RPC, which does
 * not carry ECDH1_DERIVE): no curve is offered and a key pair is refused with the
 * reason. */
#include <string.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include "testutil.h"

static p11_token *t;

static int any_curve(void)
{
    const p11_caps *c = p11_token_caps(t);
    for (int i = 0; i < P11_CURVE_N; i++)
        if (c->ecdh[i])
            return 1;
    return 0;
}

static void test_caps(void)
{
    const p11_caps *c = p11_token_caps(t);
    if (strcmp(tu_kind(), "softhsm-remote") != 0) {
        CU_ASSERT(c->ecdh[P11_CURVE_P256] && c->ecdh[P11_CURVE_P384] && c->ecdh[P11_CURVE_P521]);
    } else {
        CU_ASSERT(!any_curve());
        CU_ASSERT_PTR_NOT_NULL(c->ecdhe_why);
        CU_ASSERT_PTR_NULL(p11_ecdh_keygen(t, P11_CURVE_P256));
        CU_ASSERT(ERR_peek_error() != 0);
        ERR_clear_error();
    }
}

/* The software peer: a key pair of the curve in the default provider, its point. */
static EVP_PKEY *soft_pair(p11_curve c, unsigned char *pt, size_t *ptlen)
{
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, "provider=default", "EC", p11_curve_name(c));
    CU_ASSERT_FATAL(k != NULL);
    CU_ASSERT_FATAL(EVP_PKEY_get_octet_string_param(k, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, pt,
                                                    1 + 2 * 66, ptlen) == 1);
    return k;
}

/* A software public key of curve c from an uncompressed point. */
static EVP_PKEY *soft_pub(p11_curve c, const unsigned char *pt, size_t ptlen)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", "provider=default");
    EVP_PKEY *k = NULL;
    OSSL_PARAM p[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)p11_curve_name(c), 0),
        OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, (void *)pt, ptlen),
        OSSL_PARAM_construct_end()};
    CU_ASSERT_FATAL(ctx != NULL && EVP_PKEY_fromdata_init(ctx) > 0 &&
                    EVP_PKEY_fromdata(ctx, &k, EVP_PKEY_PUBLIC_KEY, p) > 0);
    EVP_PKEY_CTX_free(ctx);
    return k;
}

/* The "key" output of HKDF-Expand-Label(HKDF-Extract(0, ikm), "key") through the token:
 * ikm a handle of an ECDH secret, or bytes. */
static void traffic_key(const unsigned char *ikm, size_t ikmlen, unsigned char out[16])
{
    unsigned char hs[32];
    static const unsigned char info[] = {0, 16, 9, 't', 'l', 's', '1', '3', ' ', 'k', 'e', 'y', 0};
    CU_ASSERT_FATAL(
        p11_tls13_extract(t, P11_PRF_SHA256, NULL, NULL, 0, ikm, ikmlen, P11_TLS13_LOCAL, hs));
    CU_ASSERT_FATAL(p11_tls13_expand(t, P11_PRF_SHA256, hs, info, sizeof(info), 0, out, 16));
}

/* As TLS 1.3 makes it: the handshake secret, HKDF-Extract(Derive-Secret(early secret,
 * "derived", ""), ikm), then a 16-byte key from it; hash h. */
static void handshake_key(p11_prf_hash h, const unsigned char *ikm, size_t ikmlen,
                          unsigned char out[16])
{
    size_t n = h == P11_PRF_SHA384 ? 48 : 32;
    unsigned char es[48], hs[48], dinfo[2 + 1 + 13 + 1 + 48];
    unsigned int dl = 0;
    static const unsigned char info[] = {0, 16, 9, 't', 'l', 's', '1', '3', ' ', 'k', 'e', 'y', 0};
    dinfo[0] = 0;
    dinfo[1] = (unsigned char)n;
    dinfo[2] = 13;
    memcpy(dinfo + 3, "tls13 derived", 13);
    dinfo[16] = (unsigned char)n;
    CU_ASSERT_FATAL(EVP_Digest("", 0, dinfo + 17, &dl,
                               h == P11_PRF_SHA384 ? EVP_sha384() : EVP_sha256(), NULL) == 1);
    CU_ASSERT_FATAL(p11_tls13_extract(t, h, NULL, NULL, 0, NULL, 0, P11_TLS13_LOCAL, es));
    CU_ASSERT_FATAL(p11_tls13_extract(t, h, es, dinfo, 17 + n, ikm, ikmlen, P11_TLS13_LOCAL, hs));
    CU_ASSERT_FATAL(p11_tls13_expand(t, h, hs, info, sizeof(info), 0, out, 16));
}

/* TLS 1.2: a key block of the master secret made from secret (handle or bytes), hash h */
static void key_block(p11_prf_hash h, const unsigned char *secret, size_t len,
                      unsigned char out[40])
{
    unsigned char seed[64], ms[48], ls[13 + 64];
    memset(seed, 0x5a, sizeof(seed));
    memcpy(ls, "key expansion", 13);
    memcpy(ls + 13, seed, sizeof(seed));
    if (!p11_tls_master(t, h, 1, secret, len, seed, h == P11_PRF_SHA384 ? 48 : 32, ms)) {
        fprintf(stderr, "master (hash %d, %zu bytes) failed:\n", (int)h, len);
        ERR_print_errors_fp(stderr);
        CU_FAIL_FATAL("p11_tls_master");
    }
    CU_ASSERT_FATAL(p11_tls_prf(t, h, ms, ls, sizeof(ls), out, 40));
}

static void test_agreement(void)
{
    if (!any_curve())
        return;
    for (int c = 0; c < P11_CURVE_N; c++) {
        size_t flen = p11_curve_field_len((p11_curve)c), tlen, slen = sizeof(unsigned char[66]);
        unsigned char spt[1 + 2 * 66], h[66], z[66], k1[16], k2[16];
        const unsigned char *tpt;
        EVP_PKEY *soft = soft_pair((p11_curve)c, spt, &slen), *tpub;
        p11_eckey *k = p11_ecdh_keygen(t, (p11_curve)c);
        EVP_PKEY_CTX *d;
        size_t zlen = sizeof(z);

        CU_ASSERT_FATAL(k != NULL);
        tpt = p11_eckey_point(k, &tlen);
        CU_ASSERT(tlen == 1 + 2 * flen && tpt[0] == 0x04);
        /* the token derives with the software point, the software side with the token's */
        CU_ASSERT_FATAL(p11_ecdh_derive(k, spt, slen, h));
        tpub = soft_pub((p11_curve)c, tpt, tlen);
        d = EVP_PKEY_CTX_new_from_pkey(NULL, soft, "provider=default");
        CU_ASSERT_FATAL(d != NULL && EVP_PKEY_derive_init(d) > 0 &&
                        EVP_PKEY_derive_set_peer(d, tpub) > 0 && EVP_PKEY_derive(d, z, &zlen) > 0);
        CU_ASSERT(zlen == flen);
        CU_ASSERT(memcmp(h, z, flen) != 0); /* a handle, not the secret */
        traffic_key(h, flen, k1);           /* the token's secret, by its handle */
        traffic_key(z, zlen, k2);           /* the same secret, imported */
        CU_ASSERT(memcmp(k1, k2, sizeof(k1)) == 0);
        /* a handle is used once: each step below derives the secret again */
        for (int hh = 0; hh < 2; hh++) {
            p11_prf_hash ph = hh ? P11_PRF_SHA384 : P11_PRF_SHA256;
            unsigned char b1[40], b2[40];
            CU_ASSERT_FATAL(p11_ecdh_derive(k, spt, slen, h));
            handshake_key(ph, h, flen, k1);
            handshake_key(ph, z, zlen, k2);
            CU_ASSERT(memcmp(k1, k2, sizeof(k1)) == 0);
            CU_ASSERT_FATAL(p11_ecdh_derive(k, spt, slen, h));
            /* (SoftHSM2, SHA-384 over P-256: the secret is read out, see ecdh.c) */
            key_block(ph, h, flen, b1);
            key_block(ph, z, zlen, b2);
            CU_ASSERT(memcmp(b1, b2, sizeof(b1)) == 0);
        }
        OPENSSL_cleanse(z, sizeof(z));
        EVP_PKEY_CTX_free(d);
        EVP_PKEY_free(tpub);
        EVP_PKEY_free(soft);
        p11_eckey_free(k);
    }
}

static void test_no_leak(void)
{
    long priv0 = 0, sec0 = 0, priv1, sec1;
    unsigned long live0 = 0, live1;
    if (!any_curve())
        return;
    /* (the first two make p11tls's long-lived objects: the handle key's session copy) */
    for (int i = -2; i < 60; i++) {
        if (i == 0) {
            priv0 = tu_count_session_objects(t, CKO_PRIVATE_KEY);
            sec0 = tu_count_session_objects(t, CKO_SECRET_KEY);
            live0 = p11_tls_live_objects(t);
        }
        p11_curve c = (p11_curve)((i + 3) % P11_CURVE_N);
        size_t slen = 0, flen = p11_curve_field_len(c);
        unsigned char spt[1 + 2 * 66], h[66], hs[32], ms[48], seed[64];
        EVP_PKEY *soft = soft_pair(c, spt, &slen);
        p11_eckey *k = p11_ecdh_keygen(t, c);
        CU_ASSERT_FATAL(k != NULL);
        CU_ASSERT_FATAL(p11_ecdh_derive(k, spt, slen, h));
        p11_eckey_free(k); /* libssl frees the pair after the derivation */
        RAND_bytes(seed, sizeof(seed));
        /* TLS 1.3's handshake secret or TLS 1.2's master secret takes it */
        if ((i + 2) % 2) {
            CU_ASSERT(
                p11_tls13_extract(t, P11_PRF_SHA256, NULL, NULL, 0, h, flen, P11_TLS13_LOCAL, hs));
        } else {
            CU_ASSERT(p11_tls_master(t, P11_PRF_SHA256, 0, h, flen, seed, 64, ms));
        }
        EVP_PKEY_free(soft);
    }
    priv1 = tu_count_session_objects(t, CKO_PRIVATE_KEY);
    sec1 = tu_count_session_objects(t, CKO_SECRET_KEY);
    live1 = p11_tls_live_objects(t);
    /* no key pair is left; secrets: only those p11tls's cache accounts for */
    CU_ASSERT_EQUAL(priv1, priv0);
    CU_ASSERT_EQUAL(sec1 - (long)live1, sec0 - (long)live0);
    if (priv1 != priv0 || sec1 - (long)live1 != sec0 - (long)live0)
        fprintf(stderr, "private keys %ld -> %ld; secrets %ld -> %ld, cached %lu -> %lu\n", priv0,
                priv1, sec0, sec1, live0, live1);
}

static void test_bad_points(void)
{
    long priv0, sec0;
    unsigned char pt[1 + 2 * 66 + 1], h[66];
    p11_eckey *k;
    if (!any_curve())
        return;
    k = p11_ecdh_keygen(t, P11_CURVE_P256);
    CU_ASSERT_FATAL(k != NULL);
    priv0 = tu_count_session_objects(t, CKO_PRIVATE_KEY);
    sec0 = tu_count_session_objects(t, CKO_SECRET_KEY);
    /* not on the curve: the token refuses it */
    pt[0] = 0x04;
    memset(pt + 1, 0x01, 32);
    memset(pt + 33, 0x02, 32);
    CU_ASSERT(!p11_ecdh_derive(k, pt, 65, h));
    CU_ASSERT(ERR_peek_error() != 0);
    ERR_clear_error();
    /* the wrong length, the point at infinity, a compressed point: refused before */
    CU_ASSERT(!p11_ecdh_derive(k, pt, 64, h));
    CU_ASSERT(!p11_ecdh_derive(k, pt, 66, h));
    pt[0] = 0x00;
    CU_ASSERT(!p11_ecdh_derive(k, pt, 1, h));
    pt[0] = 0x02;
    CU_ASSERT(!p11_ecdh_derive(k, pt, 33, h));
    ERR_clear_error();
    CU_ASSERT_EQUAL(tu_count_session_objects(t, CKO_PRIVATE_KEY), priv0);
    CU_ASSERT_EQUAL(tu_count_session_objects(t, CKO_SECRET_KEY), sec0);
    p11_eckey_free(k);
    CU_ASSERT_EQUAL(tu_count_session_objects(t, CKO_PRIVATE_KEY), priv0 - 1);
}

/* 'ecdhe = require': where TLS 1.2's SHA-384 PRF would need the secret read out (a
 * token that refuses short HMAC-SHA-384 keys, P-256), the master secret is refused,
 * with the reason, and nothing is left behind; where it would not (NSS), it is made. */
static int errors_say(const char *what)
{
    const char *data = NULL;
    int flags = 0, found = 0;
    while (ERR_get_error_all(NULL, NULL, NULL, &data, &flags) != 0)
        if ((flags & ERR_TXT_STRING) && data != NULL && strstr(data, what) != NULL)
            found = 1;
    return found;
}

static void test_strict(void)
{
    const p11_caps *c = p11_token_caps(t);
    unsigned char spt[1 + 2 * 66], h[66], ms[48], seed[48];
    size_t slen = 0;
    long sec0;
    EVP_PKEY *soft;
    p11_eckey *k;
    p11_token *st;
    p11_token_cfg cfg;
    if (!c->ecdh[P11_CURVE_P256])
        return; /* (no curve in the token: test_caps says why) */
    tu_token_cfg(&cfg);
    cfg.ecdhe_strict = 1;
    st = p11_token_open(&cfg);
    CU_ASSERT_FATAL(st != NULL && p11_tls_prepare(st));
    soft = soft_pair(P11_CURVE_P256, spt, &slen);
    k = p11_ecdh_keygen(st, P11_CURVE_P256);
    CU_ASSERT_FATAL(k != NULL);
    memset(seed, 0x33, sizeof(seed));
    sec0 = tu_count_session_objects(st, CKO_SECRET_KEY);
    CU_ASSERT_FATAL(p11_ecdh_derive(k, spt, slen, h));
    if (c->hmac384_short_refused) { /* SoftHSM2: would need a read-out: refused */
        CU_ASSERT(!p11_tls_master(st, P11_PRF_SHA384, 1, h, 32, seed, 48, ms));
        CU_ASSERT(errors_say("'ecdhe = require' refuses"));
        CU_ASSERT_EQUAL(tu_count_session_objects(st, CKO_SECRET_KEY), sec0);
    } else { /* the token keys HMAC-SHA-384 with it as it is: nothing to refuse */
        CU_ASSERT(p11_tls_master(st, P11_PRF_SHA384, 1, h, 32, seed, 48, ms));
        CU_ASSERT(!errors_say("'ecdhe = require' refuses"));
    }
    /* SHA-256 keys HMAC with it as it is: allowed */
    CU_ASSERT_FATAL(p11_ecdh_derive(k, spt, slen, h));
    CU_ASSERT(p11_tls_master(st, P11_PRF_SHA256, 1, h, 32, seed, 32, ms));
    p11_eckey_free(k);
    EVP_PKEY_free(soft);
    p11_token_free(st);
}

int main(void)
{
    CU_TestInfo tests[] = {{"capabilities", test_caps},
                           {"agreement with a software peer", test_agreement},
                           {"no object left behind", test_no_leak},
                           {"bad peer points", test_bad_points},
                           {"'ecdhe = require' never reads a secret out", test_strict},
                           CU_TEST_INFO_NULL};
    int rc;
    t = tu_open_token();
    if (!p11_tls_prepare(t)) { /* as the provider does at activation */
        tu_print_errors();
        return 2;
    }
    rc = tu_run("ecdh", tests);
    p11_token_free(t);
    return rc;
}
