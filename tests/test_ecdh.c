/* test_ecdh.c - ECDHE in the token (pkcs11/ecdh.c) on the token under test. Where the
 * token does it (NSS softoken: P-256, P-384, P-521): an ephemeral pair made in the token
 * agrees with a software peer (the TLS 1.3 key schedule fed with the token's handle and
 * with the software side's secret gives the same traffic key), each pair and secret
 * object is destroyed when its user is done with it (the token's session objects
 * counted before and after 60 handshakes' worth), and a bad peer point is refused
 * before the token is asked, leaving nothing behind. Where it does not (SoftHSM2, whose
 * HMAC-built key schedule cannot take the secret as an object): no curve is offered and
 * a key pair is refused with the reason. */
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
    if (strcmp(tu_kind(), "nss") == 0) {
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

int main(void)
{
    CU_TestInfo tests[] = {{"capabilities", test_caps},
                           {"agreement with a software peer", test_agreement},
                           {"no object left behind", test_no_leak},
                           {"bad peer points", test_bad_points},
                           CU_TEST_INFO_NULL};
    int rc;
    t = tu_open_token();
    rc = tu_run("ecdh", tests);
    p11_token_free(t);
    return rc;
}
