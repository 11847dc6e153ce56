/* test_tls12.c - the TLS 1.2 PRF in the token, checked byte for byte against
 * OpenSSL's default TLS1-PRF: master secret (plain and extended) from raw secrets
 * and from RSA key exchange, key block, Finished and exporters, SHA-256 and
 * SHA-384; handles are not secrets; forged handles fail cleanly; TLS 1.0/1.1 is
 * refused; the number of secret objects in the token stays bounded. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include "testutil.h"

/* One TLS1-PRF call, seeds given the way libssl gives them. */
static int prf(OSSL_LIB_CTX *ctx, const char *props, const char *md, const unsigned char *sec,
               size_t seclen, const char *label, const unsigned char *s1, size_t l1,
               const unsigned char *s2, size_t l2, unsigned char *out, size_t outlen)
{
    EVP_KDF *kdf = EVP_KDF_fetch(ctx, "TLS1-PRF", props);
    EVP_KDF_CTX *kc = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    OSSL_PARAM p[6], *q = p;
    int ok;

    *q++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)md, 0);
    *q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, (void *)sec, seclen);
    *q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, (void *)label, strlen(label));
    if (s1 != NULL)
        *q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, (void *)s1, l1);
    if (s2 != NULL)
        *q++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, (void *)s2, l2);
    *q = OSSL_PARAM_construct_end();
    ok = kc != NULL && EVP_KDF_derive(kc, out, outlen, p) > 0;
    EVP_KDF_CTX_free(kc);
    EVP_KDF_free(kdf);
    return ok;
}

#define TOKEN tu_libctx(), "provider=p11tls"
#define SOFT NULL, "provider=default"

/* Master secret in the token from secret (raw bytes or a pre-master-secret
 * handle), then every later label compared with the software PRF run on the
 * real master secret ms_real. */
static void check_outputs(const char *md, const unsigned char handle[48],
                          const unsigned char ms_real[48], const unsigned char cr[32],
                          const unsigned char sr[32])
{
    unsigned char a[256], b[256], hs[48], ctxv[40];
    static const size_t kb_lens[] = {40, 72, 104, 136, 200};

    CU_ASSERT(memcmp(handle, ms_real, 48) != 0); /* a handle is never the secret */
    for (size_t i = 0; i < sizeof(kb_lens) / sizeof(kb_lens[0]); i++) {
        CU_ASSERT_FATAL(prf(TOKEN, md, handle, 48, "key expansion", sr, 32, cr, 32, a, kb_lens[i]));
        CU_ASSERT_FATAL(prf(SOFT, md, ms_real, 48, "key expansion", sr, 32, cr, 32, b, kb_lens[i]));
        CU_ASSERT(memcmp(a, b, kb_lens[i]) == 0);
    }
    RAND_bytes(hs, sizeof(hs));
    for (int side = 0; side < 2; side++) {
        const char *l = side ? "server finished" : "client finished";
        size_t hl = strcmp(md, "SHA2-384") == 0 ? 48 : 32;
        CU_ASSERT_FATAL(prf(TOKEN, md, handle, 48, l, hs, hl, NULL, 0, a, 12));
        CU_ASSERT_FATAL(prf(SOFT, md, ms_real, 48, l, hs, hl, NULL, 0, b, 12));
        CU_ASSERT(memcmp(a, b, 12) == 0);
    }
    /* RFC 5705 exporters: without context, and with (length || context). */
    {
        unsigned char rnd[64];
        memcpy(rnd, cr, 32);
        memcpy(rnd + 32, sr, 32);
        CU_ASSERT_FATAL(
            prf(TOKEN, md, handle, 48, "EXPORTER-p11tls-test", rnd, 64, NULL, 0, a, 64));
        CU_ASSERT_FATAL(
            prf(SOFT, md, ms_real, 48, "EXPORTER-p11tls-test", rnd, 64, NULL, 0, b, 64));
        CU_ASSERT(memcmp(a, b, 64) == 0);
        ctxv[0] = 0;
        ctxv[1] = 38;
        RAND_bytes(ctxv + 2, 38);
        CU_ASSERT_FATAL(
            prf(TOKEN, md, handle, 48, "EXPORTER-p11tls-test", rnd, 64, ctxv, 40, a, 100));
        CU_ASSERT_FATAL(
            prf(SOFT, md, ms_real, 48, "EXPORTER-p11tls-test", rnd, 64, ctxv, 40, b, 100));
        CU_ASSERT(memcmp(a, b, 100) == 0);
    }
}

static void kat_raw(const char *md, int ems, size_t pms_len)
{
    unsigned char pms[66], cr[32], sr[32], hash[48], handle[48], ms[48];
    size_t hl = strcmp(md, "SHA2-384") == 0 ? 48 : 32;

    RAND_bytes(pms, sizeof(pms));
    RAND_bytes(cr, 32);
    RAND_bytes(sr, 32);
    RAND_bytes(hash, sizeof(hash));
    if (ems) {
        CU_ASSERT_FATAL(
            prf(TOKEN, md, pms, pms_len, "extended master secret", hash, hl, NULL, 0, handle, 48));
        CU_ASSERT_FATAL(
            prf(SOFT, md, pms, pms_len, "extended master secret", hash, hl, NULL, 0, ms, 48));
    } else {
        CU_ASSERT_FATAL(prf(TOKEN, md, pms, pms_len, "master secret", cr, 32, sr, 32, handle, 48));
        CU_ASSERT_FATAL(prf(SOFT, md, pms, pms_len, "master secret", cr, 32, sr, 32, ms, 48));
    }
    check_outputs(md, handle, ms, cr, sr);
}

static void test_raw_sha256(void)
{
    kat_raw("SHA2-256", 0, 48);
    kat_raw("SHA2-256", 1, 48);
    kat_raw("SHA2-256", 0, 32); /* an X25519 / P-256 shared secret */
    kat_raw("SHA2-256", 1, 66); /* a P-521 shared secret */
}

static void test_raw_sha384(void)
{
    kat_raw("SHA2-384", 0, 48);
    kat_raw("SHA2-384", 1, 48);
    kat_raw("SHA2-384", 1, 32); /* shorter than SHA-384's minimum HMAC key on some tokens */
}

/* RSA key exchange: in (inlen bytes) encrypted to the token key in software with
 * the given padding, then decrypted into the token by p11tls (TLS padding), as
 * libssl does; the 48-byte handle is what the KDF gets. */
static int rsa_kx(int padding, const unsigned char *in, size_t inlen, unsigned client_version,
                  unsigned char handle[48])
{
    EVP_PKEY *pub = tu_cert_pubkey(), *key = tu_token_pkey();
    EVP_PKEY_CTX *e = EVP_PKEY_CTX_new_from_pkey(NULL, pub, "provider=default");
    EVP_PKEY_CTX *d = EVP_PKEY_CTX_new_from_pkey(tu_libctx(), key, NULL);
    unsigned char ct[512];
    size_t ctlen = sizeof(ct), outlen = 48;
    OSSL_PARAM p[2];
    int ok = 0;

    p[0] = OSSL_PARAM_construct_uint(OSSL_ASYM_CIPHER_PARAM_TLS_CLIENT_VERSION, &client_version);
    p[1] = OSSL_PARAM_construct_end();
    if (e && d && EVP_PKEY_encrypt_init(e) > 0 && EVP_PKEY_CTX_set_rsa_padding(e, padding) > 0 &&
        EVP_PKEY_encrypt(e, ct, &ctlen, in, inlen) > 0 && EVP_PKEY_decrypt_init(d) > 0 &&
        EVP_PKEY_CTX_set_rsa_padding(d, RSA_PKCS1_WITH_TLS_PADDING) > 0 &&
        EVP_PKEY_CTX_set_params(d, p) > 0 && EVP_PKEY_decrypt(d, handle, &outlen, ct, ctlen) > 0)
        ok = outlen == 48;
    if (!ok)
        tu_print_errors();
    EVP_PKEY_CTX_free(e);
    EVP_PKEY_CTX_free(d);
    EVP_PKEY_free(pub);
    EVP_PKEY_free(key);
    return ok;
}

static int rsa_kx_handle(const unsigned char *pms, unsigned client_version,
                         unsigned char handle[48])
{
    return rsa_kx(RSA_PKCS1_PADDING, pms, 48, client_version, handle);
}

static void kat_rsa(const char *md, int ems, unsigned pms_version, unsigned client_version,
                    int expect_match)
{
    unsigned char pms[48], pmsh[48], cr[32], sr[32], hash[48], handle[48], ms[48], a[40], b[40];
    size_t hl = strcmp(md, "SHA2-384") == 0 ? 48 : 32;

    RAND_bytes(pms, 48);
    pms[0] = (unsigned char)(pms_version >> 8);
    pms[1] = (unsigned char)pms_version;
    RAND_bytes(cr, 32);
    RAND_bytes(sr, 32);
    RAND_bytes(hash, sizeof(hash));
    CU_ASSERT_FATAL(rsa_kx_handle(pms, client_version, pmsh));
    CU_ASSERT(memcmp(pmsh, pms, 48) != 0);
    if (ems) {
        CU_ASSERT_FATAL(
            prf(TOKEN, md, pmsh, 48, "extended master secret", hash, hl, NULL, 0, handle, 48));
        CU_ASSERT_FATAL(
            prf(SOFT, md, pms, 48, "extended master secret", hash, hl, NULL, 0, ms, 48));
    } else {
        CU_ASSERT_FATAL(prf(TOKEN, md, pmsh, 48, "master secret", cr, 32, sr, 32, handle, 48));
        CU_ASSERT_FATAL(prf(SOFT, md, pms, 48, "master secret", cr, 32, sr, 32, ms, 48));
    }
    if (expect_match) {
        check_outputs(md, handle, ms, cr, sr);
    } else {
        /* Implicit rejection: the handshake goes on with a secret nobody knows. */
        CU_ASSERT_FATAL(prf(TOKEN, md, handle, 48, "key expansion", sr, 32, cr, 32, a, 40));
        CU_ASSERT_FATAL(prf(SOFT, md, ms, 48, "key expansion", sr, 32, cr, 32, b, 40));
        CU_ASSERT(memcmp(a, b, 40) != 0);
    }
}

static void test_rsa_kx(void)
{
    kat_rsa("SHA2-256", 0, 0x0303, 0x0303, 1);
    kat_rsa("SHA2-256", 1, 0x0303, 0x0303, 1);
    kat_rsa("SHA2-384", 0, 0x0303, 0x0303, 1);
    kat_rsa("SHA2-384", 1, 0x0303, 0x0303, 1);
}

/* Where the token reports the version (native TLS mechanisms), a mismatch
 * continues silently with a random secret. */
static void test_rsa_kx_wrong_version(void)
{
    kat_rsa("SHA2-256", 0, 0x0301, 0x0303, 0);
    kat_rsa("SHA2-256", 1, 0x0302, 0x0303, 0);
}

/* A ClientKeyExchange built by hand: em = 00 02 PS 00 M, each part as given,
 * RSA-encrypted without padding. */
static int rsa_kx_raw(const unsigned char *em, size_t emlen, unsigned char handle[48])
{
    return rsa_kx(RSA_NO_PADDING, em, emlen, 0x0303, handle);
}

/* Every malformed plaintext: the decryption and the master secret succeed (no
 * early failure, which would be an oracle), and the master secret is not the
 * one the message carries. (A wrong version: test_rsa_kx_wrong_version, where
 * the token can tell.) */
static void test_rsa_kx_malformed(void)
{
    struct {
        const char *what;
        size_t mlen;
        tu_em_defect defect;
        int must_differ;
    } cases[] = {
        {"valid", 48, TU_EM_NONE, 0},
        {"wrong first byte", 48, TU_EM_FIRST_BYTE, 1},
        {"wrong block type", 48, TU_EM_BLOCK_TYPE, 1},
        {"no zero separator", 48, TU_EM_NO_SEPARATOR, 1},
        {"8-byte secret", 8, TU_EM_NONE, 1},
        {"32-byte secret", 32, TU_EM_NONE, 1},
        {"47-byte secret", 47, TU_EM_NONE, 1},
        /* 2: refused where the token answers a key-wrap length query (not behind
         * Debian 12's p11-kit RPC, which carries no key-wrap mechanism) */
        {"49-byte secret", 49, TU_EM_NONE, 2},
        {"64-byte secret", 64, TU_EM_NONE, 2},
    };
    EVP_PKEY *pub = tu_cert_pubkey();
    size_t k = (size_t)EVP_PKEY_get_size(pub);
    EVP_PKEY_free(pub);

    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        for (int hi = 0; hi < 2; hi++) {
            const char *md = hi ? "SHA2-384" : "SHA2-256";
            unsigned char em[512], m[64], pmsh[48], cr[32], sr[32], handle[48], ms[48];
            int differ;
            RAND_bytes(cr, 32);
            RAND_bytes(sr, 32);
            tu_make_em(em, k, cases[c].mlen, cases[c].defect, m);
            CU_ASSERT_FATAL(rsa_kx_raw(em, k, pmsh));
            if (!prf(TOKEN, md, pmsh, 48, "master secret", cr, 32, sr, 32, handle, 48)) {
                fprintf(stderr, "  %s (%s): master secret failed\n", cases[c].what, md);
                CU_FAIL("master secret from a malformed ClientKeyExchange failed");
                continue;
            }
            CU_ASSERT_FATAL(
                prf(SOFT, md, m, cases[c].mlen, "master secret", cr, 32, sr, 32, ms, 48));
            {
                unsigned char a[40], b[40];
                CU_ASSERT_FATAL(prf(TOKEN, md, handle, 48, "key expansion", sr, 32, cr, 32, a, 40));
                CU_ASSERT_FATAL(prf(SOFT, md, ms, 48, "key expansion", sr, 32, cr, 32, b, 40));
                differ = memcmp(a, b, 40) != 0;
            }
            if (cases[c].must_differ == 0) {
                CU_ASSERT(!differ);
            } else if (cases[c].must_differ == 1 || tu_kind() == NULL ||
                       strcmp(tu_kind(), "softhsm-remote") != 0) {
                CU_ASSERT(differ);
            }
            if (cases[c].must_differ == 1 && !differ)
                fprintf(stderr, "  %s (%s): the message's secret was used\n", cases[c].what, md);
        }
    }
}

/* A pre-master-secret handle is single use: a second master-secret derivation
 * with it treats it as raw bytes, never as the secret again. */
static void test_pms_handle_single_use(void)
{
    unsigned char pms[48], pmsh[48], cr[32], sr[32], h1[48], h2[48], ms[48], a[40], b[40];
    RAND_bytes(pms, 48);
    pms[0] = 3;
    pms[1] = 3;
    RAND_bytes(cr, 32);
    RAND_bytes(sr, 32);
    CU_ASSERT_FATAL(rsa_kx_handle(pms, 0x0303, pmsh));
    CU_ASSERT_FATAL(prf(TOKEN, "SHA2-256", pmsh, 48, "master secret", cr, 32, sr, 32, h1, 48));
    CU_ASSERT_FATAL(prf(TOKEN, "SHA2-256", pmsh, 48, "master secret", cr, 32, sr, 32, h2, 48));
    CU_ASSERT_FATAL(prf(SOFT, "SHA2-256", pms, 48, "master secret", cr, 32, sr, 32, ms, 48));
    CU_ASSERT_FATAL(prf(TOKEN, "SHA2-256", h2, 48, "key expansion", sr, 32, cr, 32, a, 40));
    CU_ASSERT_FATAL(prf(SOFT, "SHA2-256", ms, 48, "key expansion", sr, 32, cr, 32, b, 40));
    CU_ASSERT(memcmp(a, b, 40) != 0);
}

/* Forged and corrupted handles: a clean result or a clean error, never another
 * secret's output. */
static void test_forged_handle(void)
{
    unsigned char pms[48], cr[32], sr[32], handle[48], bad[48], ms[48], a[40], b[40], c[40];
    RAND_bytes(pms, 48);
    RAND_bytes(cr, 32);
    RAND_bytes(sr, 32);
    CU_ASSERT_FATAL(prf(TOKEN, "SHA2-256", pms, 48, "master secret", cr, 32, sr, 32, handle, 48));
    CU_ASSERT_FATAL(prf(SOFT, "SHA2-256", pms, 48, "master secret", cr, 32, sr, 32, ms, 48));
    CU_ASSERT_FATAL(prf(SOFT, "SHA2-256", ms, 48, "key expansion", sr, 32, cr, 32, b, 40));
    for (int i = 0; i < 48; i += 7) {
        memcpy(bad, handle, 48);
        bad[i] ^= 0x01;
        if (prf(TOKEN, "SHA2-256", bad, 48, "key expansion", sr, 32, cr, 32, a, 40))
            CU_ASSERT(memcmp(a, b, 40) != 0);
        ERR_clear_error();
    }
    RAND_bytes(bad, 48);
    if (prf(TOKEN, "SHA2-256", bad, 48, "key expansion", sr, 32, cr, 32, a, 40))
        CU_ASSERT(memcmp(a, b, 40) != 0);
    ERR_clear_error();
    /* Not 48 bytes: an error. */
    CU_ASSERT(!prf(TOKEN, "SHA2-256", bad, 47, "key expansion", sr, 32, cr, 32, c, 40));
    ERR_clear_error();
    /* The genuine handle still works afterwards. */
    CU_ASSERT_FATAL(prf(TOKEN, "SHA2-256", handle, 48, "key expansion", sr, 32, cr, 32, a, 40));
    CU_ASSERT(memcmp(a, b, 40) == 0);
}

static void test_md5_sha1_refused(void)
{
    unsigned char pms[48] = {3, 1}, cr[32] = {0}, sr[32] = {0}, out[48];
    unsigned long e;
    const char *data = NULL;
    int found = 0;
    CU_ASSERT(!prf(TOKEN, "MD5-SHA1", pms, 48, "master secret", cr, 32, sr, 32, out, 48));
    while ((e = ERR_get_error_all(NULL, NULL, NULL, &data, NULL)) != 0)
        if (data != NULL && strstr(data, "MD5-SHA1") != NULL)
            found = 1;
    CU_ASSERT(found);
}

/* Secret objects do not pile up: a small handle cache, 2,000 handshakes' worth
 * of derivations, and the token's session objects stay bounded. The cache evicts
 * by generation: one C_CloseSession per 8 master secrets (64 / 8 generations),
 * no C_DestroyObject for them (the only destroys are of the raw secrets). */

static void test_objects_bounded(void)
{
    /* The provider's own token, with a handle cache of 64 entries. */
    p11_token_cfg cfg;
    p11_token *t;
    unsigned char pms[48], seed[64], h[48], kb[40];
    unsigned long before, after, d0, c0, destroys, closes;
    int ok = 1;

    tu_token_cfg(&cfg);
    cfg.handle_cache_max = 64;
    t = p11_token_open(&cfg);
    CU_ASSERT_FATAL(t != NULL);
    before = (unsigned long)tu_count_secret_objects(t);
    d0 = p11_call_count("C_DestroyObject");
    c0 = p11_call_count("C_CloseSession");
    for (int i = 0; i < 2000 && ok; i++) {
        RAND_bytes(pms, 48);
        RAND_bytes(seed, sizeof(seed)); /* client random || server random */
        ok = p11_tls_master(t, P11_PRF_SHA256, 0, pms, 48, seed, sizeof(seed), h) &&
             p11_tls_prf(t, P11_PRF_SHA256, h, (const unsigned char *)"key expansion", 13, kb, 40);
    }
    CU_ASSERT(ok);
    destroys = p11_call_count("C_DestroyObject") - d0;
    closes = p11_call_count("C_CloseSession") - c0;
    after = (unsigned long)tu_count_secret_objects(t);
    printf("\n    secret session objects: %lu before, %lu after 2000 derivations (cache 64); "
           "registry holds %lu; %lu C_DestroyObject, %lu C_CloseSession\n",
           before, after, p11_tls_live_objects(t), destroys, closes);
    CU_ASSERT_EQUAL(destroys, 2000);
    CU_ASSERT(closes >= 2000 / 8 - 8 && closes <= 2000 / 8);
    CU_ASSERT(after <= before + 64 + 4);
    CU_ASSERT(p11_tls_live_objects(t) <= 64);
    p11_token_free(t);
}

int main(void)
{
    const char *kind = tu_kind();
    CU_TestInfo all[] = {{"raw secrets, SHA-256, EMS on/off", test_raw_sha256},
                         {"raw secrets, SHA-384, EMS on/off", test_raw_sha384},
                         {"RSA key exchange into the token", test_rsa_kx},
                         {"RSA key exchange, malformed plaintexts", test_rsa_kx_malformed},
                         {"pre-master-secret handle is single use", test_pms_handle_single_use},
                         {"forged and corrupted handles", test_forged_handle},
                         {"TLS 1.0/1.1 PRF refused", test_md5_sha1_refused},
                         {"secret objects stay bounded", test_objects_bounded},
                         {NULL, NULL},
                         {NULL, NULL}};
    /* Only tokens that report the version bytes (native TLS mechanisms) can
     * check them: see docs/security.md. */
    if (kind != NULL && strcmp(kind, "nss") == 0)
        all[8] = (CU_TestInfo){"RSA key exchange, wrong version", test_rsa_kx_wrong_version};
    return tu_run("tls12", all);
}
