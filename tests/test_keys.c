/* test_keys.c - CUnit tests of the provider's RSA key support against a real token:
 * loading the token key (store URI and "P11TLS KEY URI" PEM), that software keys
 * are left to the default provider, signatures (PKCS#1 v1.5 and PSS) checked by
 * the default provider, decryption (PKCS#1 v1.5, OAEP), and the TLS key-exchange
 * padding mode, which must give a 48-byte handle for every publicly valid
 * ciphertext whatever its content, and fail only for ciphertexts that are not
 * below the modulus. Also: the private half never leaves the token, p11tls's
 * keymgmt refuses private material, and token errors name their CKR_/CKM_. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <CUnit/Basic.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/params.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/store.h>
#include <openssl/x509.h>
#include "testutil.h"

#define PMS_LEN 48
#define MAXMOD 1024 /* bytes: room for any modulus the token may hold */

static const unsigned char msg[] = "p11tls test_keys: the message that gets signed";

/* ------------------------------------------------------------- helpers */

/* The token key and the certificate's key, loaded once (never freed: the
 * process ends with the suite). */
static EVP_PKEY *token_key(void)
{
    static EVP_PKEY *k;
    if (k == NULL)
        k = tu_token_pkey();
    return k;
}

static EVP_PKEY *cert_key(void)
{
    static EVP_PKEY *k;
    if (k == NULL)
        k = tu_cert_pubkey();
    return k;
}

static const char *pkey_provider(const EVP_PKEY *k)
{
    const OSSL_PROVIDER *p = k != NULL ? EVP_PKEY_get0_provider(k) : NULL;
    return p != NULL ? OSSL_PROVIDER_get0_name(p) : "(none)";
}

static const char *ctx_provider(const EVP_PKEY_CTX *c)
{
    const OSSL_PROVIDER *p = c != NULL ? EVP_PKEY_CTX_get0_provider(c) : NULL;
    return p != NULL ? OSSL_PROVIDER_get0_name(p) : "(none)";
}

/* Empties the error queue into buf (reason strings and data, ' | '-separated);
 * returns the number of errors. */
static int drain_errors(char *buf, size_t len)
{
    unsigned long e;
    const char *data = NULL;
    int flags = 0, n = 0;
    size_t used = 0;

    if (len > 0)
        buf[0] = '\0';
    while ((e = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)) != 0) {
        char one[256];
        ERR_error_string_n(e, one, sizeof(one));
        if (used < len)
            used += (size_t)snprintf(buf + used, len - used, "%s%s%s%s", n ? " | " : "", one,
                                     (flags & ERR_TXT_STRING) && data ? ": " : "",
                                     (flags & ERR_TXT_STRING) && data ? data : "");
        n++;
    }
    return n;
}

static void clear_errors(void)
{
    ERR_clear_error();
}

/* Fails the current test when OpenSSL's error queue is not empty (and prints it). */
#define ASSERT_NO_ERRORS()                                                                         \
    do {                                                                                           \
        char eb_[2048];                                                                            \
        int n_ = drain_errors(eb_, sizeof(eb_));                                                   \
        if (n_ != 0)                                                                               \
            fprintf(stderr, "\n  unexpected errors: %s\n", eb_);                                   \
        CU_ASSERT_EQUAL(n_, 0);                                                                    \
    } while (0)

/* Asserts a call result and prints the error queue when it is not as expected. */
#define ASSERT_OK(expr)                                                                            \
    do {                                                                                           \
        int r_ = (expr);                                                                           \
        if (r_ != 1) {                                                                             \
            fprintf(stderr, "\n  %s:%d: %s returned %d\n", __FILE__, __LINE__, #expr, r_);         \
            tu_print_errors();                                                                     \
        }                                                                                          \
        CU_ASSERT_EQUAL(r_, 1);                                                                    \
    } while (0)

static int bn_param_eq(EVP_PKEY *a, EVP_PKEY *b, const char *name)
{
    BIGNUM *x = NULL, *y = NULL;
    int eq = EVP_PKEY_get_bn_param(a, name, &x) == 1 && EVP_PKEY_get_bn_param(b, name, &y) == 1 &&
             BN_cmp(x, y) == 0;
    BN_free(x);
    BN_free(y);
    return eq;
}

static size_t modlen(void)
{
    return (size_t)EVP_PKEY_get_size(cert_key());
}

/* Sets PKCS#1 v1.5 or PSS (salt length = digest length) on a signature context. */
static int set_sig_padding(EVP_PKEY_CTX *pctx, int pss)
{
    if (!pss)
        return EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) > 0;
    return EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) > 0 &&
           EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) > 0;
}

/* EVP_DigestSign with key in libctx/propq; records the operation's provider. */
static int digest_sign(EVP_PKEY *key, OSSL_LIB_CTX *libctx, const char *propq, const char *md,
                       int pss, const unsigned char *m, size_t mlen, unsigned char *sig,
                       size_t *siglen, char *prov, size_t provlen)
{
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    size_t need = 0;
    int ok = mctx != NULL &&
             EVP_DigestSignInit_ex(mctx, &pctx, md, libctx, propq, key, NULL) == 1 &&
             set_sig_padding(pctx, pss);
    if (ok && prov != NULL)
        snprintf(prov, provlen, "%s", ctx_provider(pctx));
    ok = ok && EVP_DigestSign(mctx, NULL, &need, m, mlen) == 1 && need <= *siglen;
    ok = ok && EVP_DigestSign(mctx, sig, siglen, m, mlen) == 1;
    EVP_MD_CTX_free(mctx);
    return ok;
}

/* EVP_DigestVerify: 1 verified, 0 not verified, -1 setup failed. */
static int digest_verify(EVP_PKEY *key, OSSL_LIB_CTX *libctx, const char *propq, const char *md,
                         int pss, const unsigned char *m, size_t mlen, const unsigned char *sig,
                         size_t siglen, char *prov, size_t provlen)
{
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    int rc = -1;
    if (mctx != NULL && EVP_DigestVerifyInit_ex(mctx, &pctx, md, libctx, propq, key, NULL) == 1 &&
        set_sig_padding(pctx, pss)) {
        if (prov != NULL)
            snprintf(prov, provlen, "%s", ctx_provider(pctx));
        rc = EVP_DigestVerify(mctx, sig, siglen, m, mlen) == 1 ? 1 : 0;
    }
    EVP_MD_CTX_free(mctx);
    return rc;
}

/* Encrypts with the certificate's key in the default provider. pad: RSA_*_PADDING;
 * md: OAEP and MGF1 digest (NULL: none set). */
static int cert_encrypt(int pad, const EVP_MD *md, const unsigned char *in, size_t inlen,
                        unsigned char *out, size_t *outlen)
{
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_pkey(NULL, cert_key(), "provider=default");
    int ok =
        c != NULL && EVP_PKEY_encrypt_init(c) == 1 && EVP_PKEY_CTX_set_rsa_padding(c, pad) > 0 &&
        (md == NULL ||
         (EVP_PKEY_CTX_set_rsa_oaep_md(c, md) > 0 && EVP_PKEY_CTX_set_rsa_mgf1_md(c, md) > 0)) &&
        EVP_PKEY_encrypt(c, out, outlen, in, inlen) == 1;
    EVP_PKEY_CTX_free(c);
    return ok;
}

/* Raw RSA (no padding) of a modulus-length block with the certificate's key. */
static int raw_encrypt(const unsigned char *block, unsigned char *ct)
{
    size_t len = modlen();
    return cert_encrypt(RSA_NO_PADDING, NULL, block, modlen(), ct, &len) && len == modlen();
}

/* Decrypts through p11tls with the TLS padding mode, as libssl does (a 48-byte
 * output buffer); returns EVP_PKEY_decrypt's result (-99: the setup failed). */
static int tls_decrypt(const unsigned char *ct, size_t ctlen, unsigned char *out, size_t *outlen)
{
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_pkey(tu_libctx(), token_key(), NULL);
    unsigned int ver = 0x0303;
    OSSL_PARAM p[2];
    int rc = -99;

    p[0] = OSSL_PARAM_construct_uint(OSSL_ASYM_CIPHER_PARAM_TLS_CLIENT_VERSION, &ver);
    p[1] = OSSL_PARAM_construct_end();
    if (c != NULL && EVP_PKEY_decrypt_init(c) == 1 &&
        EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_WITH_TLS_PADDING) > 0 &&
        EVP_PKEY_CTX_set_params(c, p) == 1 && strcmp(ctx_provider(c), "p11tls") == 0) {
        *outlen = PMS_LEN;
        rc = EVP_PKEY_decrypt(c, out, outlen, ct, ctlen);
    }
    EVP_PKEY_CTX_free(c);
    return rc;
}

/* Fills with random non-zero bytes. */
static void nonzero_random(unsigned char *p, size_t n)
{
    CU_ASSERT_FATAL(RAND_bytes(p, (int)n) == 1);
    for (size_t i = 0; i < n; i++)
        while (p[i] == 0)
            CU_ASSERT_FATAL(RAND_bytes(p + i, 1) == 1);
}

/* A PKCS#1 v1.5 type-2 block of k bytes: 00 02 PS 00 secret, with a secret of
 * seclen bytes (first two bytes ver_hi ver_lo, the rest random). */
static void make_block(unsigned char *b, size_t k, size_t seclen, unsigned char ver_hi,
                       unsigned char ver_lo)
{
    size_t sep = k - seclen - 1;
    b[0] = 0x00;
    b[1] = 0x02;
    nonzero_random(b + 2, sep - 2);
    b[sep] = 0x00;
    if (seclen == 0)
        return;
    CU_ASSERT_FATAL(RAND_bytes(b + sep + 1, (int)seclen) == 1);
    if (seclen >= 2) {
        b[sep + 1] = ver_hi;
        b[sep + 2] = ver_lo;
    }
}

/* A PEM "P11TLS KEY URI" block holding text, in a memory BIO. */
static BIO *uri_pem(const char *text)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (b != NULL && PEM_write_bio(b, "P11TLS KEY URI", "", (const unsigned char *)text,
                                   (long)strlen(text)) <= 0) {
        BIO_free(b);
        return NULL;
    }
    return b;
}

/* A fresh software RSA key in the default library context (default provider). */
static EVP_PKEY *soft_key(void)
{
    static EVP_PKEY *k;
    if (k == NULL)
        k = EVP_RSA_gen(2048);
    return k;
}

/* Is this a SoftHSM2 token (in-process or behind p11-kit)? */
static int is_softhsm(void)
{
    const char *k = tu_kind();
    return k != NULL && strncmp(k, "softhsm", 7) == 0;
}

/* --------------------------------------------------------- URI loading */

static void test_uri_load(void)
{
    EVP_PKEY *tok = tu_token_pkey(), *cert = cert_key();
    CU_ASSERT_PTR_NOT_NULL_FATAL(tok);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cert);
    CU_ASSERT_STRING_EQUAL(pkey_provider(tok), "p11tls");
    CU_ASSERT_EQUAL(EVP_PKEY_get_base_id(tok), EVP_PKEY_RSA);
    CU_ASSERT_EQUAL(EVP_PKEY_is_a(tok, "RSA"), 1);
    CU_ASSERT_EQUAL(EVP_PKEY_get_bits(tok), 2048);
    CU_ASSERT_EQUAL(EVP_PKEY_get_size(tok), 256);
    CU_ASSERT_EQUAL(EVP_PKEY_get_security_bits(tok), 112);
    /* keymgmt import (the certificate's key) and match */
    CU_ASSERT_EQUAL(EVP_PKEY_eq(tok, cert), 1);
    CU_ASSERT_EQUAL(EVP_PKEY_eq(cert, tok), 1);
    /* exported public parameters */
    CU_ASSERT(bn_param_eq(tok, cert, OSSL_PKEY_PARAM_RSA_N));
    CU_ASSERT(bn_param_eq(tok, cert, OSSL_PKEY_PARAM_RSA_E));
    /* a different RSA key does not match */
    CU_ASSERT_PTR_NOT_NULL_FATAL(soft_key());
    CU_ASSERT_NOT_EQUAL(EVP_PKEY_eq(tok, soft_key()), 1);
    CU_ASSERT_FALSE(bn_param_eq(tok, soft_key(), OSSL_PKEY_PARAM_RSA_N));
    EVP_PKEY_free(tok);
    clear_errors();
}

/* --------------------------------------------------------- PEM loading */

static void test_pem_uri_load(void)
{
    BIO *b = BIO_new_file(tu_env("P11TLS_KEY_PEM"), "r");
    EVP_PKEY *k;
    unsigned char sig[MAXMOD];
    size_t siglen = sizeof(sig);

    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    k = PEM_read_bio_PrivateKey_ex(b, NULL, NULL, NULL, tu_libctx(), NULL);
    BIO_free(b);
    if (k == NULL)
        tu_print_errors();
    CU_ASSERT_PTR_NOT_NULL_FATAL(k);
    CU_ASSERT_STRING_EQUAL(pkey_provider(k), "p11tls");
    CU_ASSERT_EQUAL(EVP_PKEY_is_a(k, "RSA"), 1);
    CU_ASSERT_EQUAL(EVP_PKEY_get_bits(k), 2048);
    CU_ASSERT_EQUAL(EVP_PKEY_eq(k, cert_key()), 1);
    CU_ASSERT_EQUAL(EVP_PKEY_eq(k, token_key()), 1);
    /* and it is a working private key */
    ASSERT_OK(
        digest_sign(k, tu_libctx(), NULL, "SHA256", 0, msg, sizeof(msg), sig, &siglen, NULL, 0));
    CU_ASSERT_EQUAL(digest_verify(cert_key(), NULL, "provider=default", "SHA256", 0, msg,
                                  sizeof(msg), sig, siglen, NULL, 0),
                    1);
    EVP_PKEY_free(k);
    clear_errors();
}

static void test_pem_software_key(void)
{
    BIO *b = BIO_new(BIO_s_mem());
    EVP_PKEY *k = NULL;
    unsigned char sig[MAXMOD];
    size_t siglen = sizeof(sig);
    char prov[64] = "";

    CU_ASSERT_PTR_NOT_NULL_FATAL(soft_key());
    CU_ASSERT_STRING_EQUAL(pkey_provider(soft_key()), "default");
    CU_ASSERT_FATAL(b != NULL &&
                    PEM_write_bio_PrivateKey(b, soft_key(), NULL, NULL, 0, NULL, NULL) == 1);
    k = PEM_read_bio_PrivateKey_ex(b, NULL, NULL, NULL, tu_libctx(), NULL);
    BIO_free(b);
    if (k == NULL)
        tu_print_errors();
    CU_ASSERT_PTR_NOT_NULL_FATAL(k);
    CU_ASSERT_STRING_NOT_EQUAL(pkey_provider(k), "p11tls");
    CU_ASSERT_STRING_EQUAL(pkey_provider(k), "default");
    CU_ASSERT_EQUAL(EVP_PKEY_eq(k, soft_key()), 1);
    CU_ASSERT_NOT_EQUAL(EVP_PKEY_eq(k, cert_key()), 1);
    ASSERT_OK(digest_sign(k, tu_libctx(), NULL, "SHA256", 0, msg, sizeof(msg), sig, &siglen, prov,
                          sizeof(prov)));
    CU_ASSERT_STRING_EQUAL(prov, "default");
    CU_ASSERT_EQUAL(digest_verify(soft_key(), NULL, "provider=default", "SHA256", 0, msg,
                                  sizeof(msg), sig, siglen, NULL, 0),
                    1);
    EVP_PKEY_free(k);
    clear_errors();
}

/* A PEM block in b (freed) that must not load as a private key in tu_libctx(); the
 * number of errors raised, their text in errs. */
static int pem_refused(BIO *b, char *errs, size_t len)
{
    EVP_PKEY *k;
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    k = PEM_read_bio_PrivateKey_ex(b, NULL, NULL, NULL, tu_libctx(), NULL);
    BIO_free(b);
    CU_ASSERT_PTR_NULL(k);
    EVP_PKEY_free(k);
    return drain_errors(errs, len);
}

static void test_pem_garbage(void)
{
    BIO *b = uri_pem("notauri");
    char errs[4096];
    int n;

    clear_errors();
    n = pem_refused(b, errs, sizeof(errs));
    CU_ASSERT(n > 0);
    if (strstr(errs, "p11tls") == NULL)
        fprintf(stderr, "\n  errors (garbage): %s\n", errs);
    CU_ASSERT_PTR_NOT_NULL(strstr(errs, "p11tls"));

    /* an empty block too */
    b = BIO_new_mem_buf("-----BEGIN P11TLS KEY URI-----\n-----END P11TLS KEY URI-----\n", -1);
    CU_ASSERT(pem_refused(b, errs, sizeof(errs)) > 0);

    /* a URI naming no key in the token */
    b = uri_pem("pkcs11:object=p11tls-no-such-key;type=private");
    CU_ASSERT(pem_refused(b, errs, sizeof(errs)) > 0);
    if (strstr(errs, "p11tls-no-such-key") == NULL)
        fprintf(stderr, "\n  errors (no such key): %s\n", errs);
    CU_ASSERT_PTR_NOT_NULL(strstr(errs, "p11tls-no-such-key"));
}

#define OTHER_TOKEN "p11tls-other-token"

static void test_pem_other_token(void)
{
    BIO *b = uri_pem("pkcs11:token=" OTHER_TOKEN ";id=%01;object=p11tls-key;type=private");
    char errs[4096];
    int n;

    clear_errors();
    n = pem_refused(b, errs, sizeof(errs));
    CU_ASSERT(n > 0);
    if (strstr(errs, OTHER_TOKEN) == NULL)
        fprintf(stderr, "\n  errors (PEM): %s\n", errs);
    CU_ASSERT_PTR_NOT_NULL(strstr(errs, "token"));
    CU_ASSERT_PTR_NOT_NULL(strstr(errs, OTHER_TOKEN));
}

/* The same URI through the store (what `-key pkcs11:...` uses). */
static void test_store_other_token(void)
{
    EVP_PKEY *k;
    char errs[4096];

    clear_errors();
    k = tu_store_pkey(tu_libctx(),
                      "pkcs11:token=" OTHER_TOKEN ";id=%01;object=p11tls-key;type=private");
    CU_ASSERT_PTR_NULL(k);
    EVP_PKEY_free(k);
    CU_ASSERT(drain_errors(errs, sizeof(errs)) > 0);
    if (strstr(errs, OTHER_TOKEN) == NULL)
        fprintf(stderr, "\n  errors (store): %s\n", errs);
    CU_ASSERT_PTR_NOT_NULL(strstr(errs, OTHER_TOKEN));
}

/* ----------------------------------------------------- sign and verify */

static void sign_verify_case(const char *md, int pss)
{
    unsigned char sig[MAXMOD], sig2[MAXMOD];
    size_t siglen = sizeof(sig), siglen2 = sizeof(sig2);
    char prov[64] = "";

    CU_ASSERT_PTR_NOT_NULL_FATAL(token_key());
    clear_errors();
    ASSERT_OK(digest_sign(token_key(), tu_libctx(), NULL, md, pss, msg, sizeof(msg), sig, &siglen,
                          prov, sizeof(prov)));
    CU_ASSERT_STRING_EQUAL(prov, "p11tls");
    CU_ASSERT_EQUAL(siglen, modlen());
    /* the default provider verifies it with the certificate's key */
    CU_ASSERT_EQUAL(digest_verify(cert_key(), NULL, "provider=default", md, pss, msg, sizeof(msg),
                                  sig, siglen, prov, sizeof(prov)),
                    1);
    CU_ASSERT_STRING_EQUAL(prov, "default");
    /* not for another message */
    CU_ASSERT_EQUAL(digest_verify(cert_key(), NULL, "provider=default", md, pss, msg,
                                  sizeof(msg) - 1, sig, siglen, NULL, 0),
                    0);
    /* PKCS#1 v1.5 is deterministic, PSS is salted */
    ASSERT_OK(digest_sign(token_key(), tu_libctx(), NULL, md, pss, msg, sizeof(msg), sig2, &siglen2,
                          NULL, 0));
    CU_ASSERT_EQUAL(siglen2, siglen);
    if (pss) {
        CU_ASSERT_NOT_EQUAL(memcmp(sig, sig2, siglen), 0);
    } else {
        CU_ASSERT_EQUAL(memcmp(sig, sig2, siglen), 0);
    }
    /* the other padding does not verify it */
    CU_ASSERT_EQUAL(digest_verify(cert_key(), NULL, "provider=default", md, !pss, msg, sizeof(msg),
                                  sig, siglen, NULL, 0),
                    0);
    clear_errors();
}

static void test_sign_pkcs1_sha256(void)
{
    sign_verify_case("SHA256", 0);
}
static void test_sign_pkcs1_sha384(void)
{
    sign_verify_case("SHA384", 0);
}
static void test_sign_pkcs1_sha512(void)
{
    sign_verify_case("SHA512", 0);
}
static void test_sign_pss_sha256(void)
{
    sign_verify_case("SHA256", 1);
}
static void test_sign_pss_sha384(void)
{
    sign_verify_case("SHA384", 1);
}
static void test_sign_pss_sha512(void)
{
    sign_verify_case("SHA512", 1);
}

static void test_verify_with_token_key(void)
{
    for (int pss = 0; pss < 2; pss++) {
        unsigned char sig[MAXMOD];
        size_t siglen = sizeof(sig);
        char prov[64] = "";

        ASSERT_OK(digest_sign(token_key(), tu_libctx(), NULL, "SHA256", pss, msg, sizeof(msg), sig,
                              &siglen, NULL, 0));
        CU_ASSERT_EQUAL(digest_verify(token_key(), tu_libctx(), NULL, "SHA256", pss, msg,
                                      sizeof(msg), sig, siglen, prov, sizeof(prov)),
                        1);
        CU_ASSERT_STRING_EQUAL(prov, "p11tls");
        /* corrupted: one bit in the middle, and the last byte */
        sig[siglen / 2] ^= 0x10;
        CU_ASSERT_EQUAL(digest_verify(token_key(), tu_libctx(), NULL, "SHA256", pss, msg,
                                      sizeof(msg), sig, siglen, NULL, 0),
                        0);
        CU_ASSERT_EQUAL(digest_verify(cert_key(), NULL, "provider=default", "SHA256", pss, msg,
                                      sizeof(msg), sig, siglen, NULL, 0),
                        0);
        sig[siglen / 2] ^= 0x10;
        sig[siglen - 1] ^= 0x01;
        CU_ASSERT_EQUAL(digest_verify(token_key(), tu_libctx(), NULL, "SHA256", pss, msg,
                                      sizeof(msg), sig, siglen, NULL, 0),
                        0);
        CU_ASSERT_EQUAL(digest_verify(cert_key(), NULL, "provider=default", "SHA256", pss, msg,
                                      sizeof(msg), sig, siglen, NULL, 0),
                        0);
        /* truncated */
        sig[siglen - 1] ^= 0x01;
        CU_ASSERT_EQUAL(digest_verify(token_key(), tu_libctx(), NULL, "SHA256", pss, msg,
                                      sizeof(msg), sig, siglen - 1, NULL, 0),
                        0);
        /* and intact again: verifies */
        CU_ASSERT_EQUAL(digest_verify(token_key(), tu_libctx(), NULL, "SHA256", pss, msg,
                                      sizeof(msg), sig, siglen, NULL, 0),
                        1);
    }
    clear_errors();
}

/* PSS with the largest salt, and with MGF1 over SHA-1 while the message digest is
 * SHA-256: the token signs with exactly these parameters. */
static void test_sign_pss_params(void)
{
    for (int variant = 0; variant < 2; variant++) {
        unsigned char sig[MAXMOD];
        size_t siglen = sizeof(sig);
        EVP_MD_CTX *m = EVP_MD_CTX_new();
        EVP_PKEY_CTX *pctx = NULL;
        int saltlen = variant == 0 ? RSA_PSS_SALTLEN_MAX : RSA_PSS_SALTLEN_DIGEST;
        const EVP_MD *mgf1 = variant == 0 ? EVP_sha256() : EVP_sha1();

        CU_ASSERT_PTR_NOT_NULL_FATAL(m);
        ASSERT_OK(EVP_DigestSignInit_ex(m, &pctx, "SHA256", tu_libctx(), NULL, token_key(), NULL));
        CU_ASSERT_STRING_EQUAL(ctx_provider(pctx), "p11tls");
        CU_ASSERT(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) > 0);
        CU_ASSERT(EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, saltlen) > 0);
        CU_ASSERT(EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, mgf1) > 0);
        clear_errors();
        if (EVP_DigestSign(m, sig, &siglen, msg, sizeof(msg)) != 1) {
            char errs[2048];
            EVP_MD_CTX_free(m);
            CU_ASSERT(drain_errors(errs, sizeof(errs)) > 0);
            if (variant == 1 && is_softhsm() && strstr(errs, "C_SignInit") != NULL) {
                /* SoftHSM 2.6 wants the MGF1 hash to be the message hash */
                fprintf(stderr, "\n  note: token kind %s refuses MGF1-SHA1 with SHA-256: %s\n",
                        tu_kind(), errs);
                continue;
            }
            fprintf(stderr, "\n  variant %d: %s\n", variant, errs);
            CU_FAIL("PSS signature with these parameters");
            continue;
        }
        EVP_MD_CTX_free(m);

        /* verified by the default provider with exactly these parameters */
        m = EVP_MD_CTX_new();
        pctx = NULL;
        CU_ASSERT_PTR_NOT_NULL_FATAL(m);
        ASSERT_OK(EVP_DigestVerifyInit_ex(m, &pctx, "SHA256", NULL, "provider=default", cert_key(),
                                          NULL));
        CU_ASSERT(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) > 0);
        CU_ASSERT(EVP_PKEY_CTX_set_rsa_pss_saltlen(
                      pctx, variant == 0 ? (int)modlen() - 32 - 2 : RSA_PSS_SALTLEN_DIGEST) > 0);
        CU_ASSERT(EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, mgf1) > 0);
        CU_ASSERT_EQUAL(EVP_DigestVerify(m, sig, siglen, msg, sizeof(msg)), 1);
        EVP_MD_CTX_free(m);
        clear_errors();
    }
}

/* The private half never leaves the token; the public half does. */
static void test_private_half_stays(void)
{
    EVP_PKEY *tok = token_key();
    OSSL_PARAM *p = NULL;
    BIGNUM *d = NULL;
    BIO *b = BIO_new(BIO_s_mem());
    X509 *x = NULL;
    FILE *f;

    CU_ASSERT_PTR_NOT_NULL_FATAL(tok);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_NOT_EQUAL(EVP_PKEY_get_bn_param(tok, OSSL_PKEY_PARAM_RSA_D, &d), 1);
    CU_ASSERT_PTR_NULL(d);
    BN_free(d);
    CU_ASSERT_NOT_EQUAL(EVP_PKEY_todata(tok, EVP_PKEY_KEYPAIR, &p), 1);
    OSSL_PARAM_free(p);
    p = NULL;
    CU_ASSERT_NOT_EQUAL(PEM_write_bio_PrivateKey(b, tok, NULL, NULL, 0, NULL, NULL), 1);
    clear_errors();
    ASSERT_OK(EVP_PKEY_todata(tok, EVP_PKEY_PUBLIC_KEY, &p));
    CU_ASSERT_PTR_NOT_NULL(OSSL_PARAM_locate(p, OSSL_PKEY_PARAM_RSA_N));
    CU_ASSERT_PTR_NULL(OSSL_PARAM_locate(p, OSSL_PKEY_PARAM_RSA_D));
    OSSL_PARAM_free(p);
    BIO_free(b);
    /* X509_check_private_key (SSL_CTX_use_PrivateKey, nginx) accepts the pair */
    f = fopen(tu_env("P11TLS_CERT"), "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    CU_ASSERT_PTR_NOT_NULL_FATAL(x);
    CU_ASSERT_EQUAL(X509_check_private_key(x, tok), 1);
    CU_ASSERT_NOT_EQUAL(X509_check_private_key(x, soft_key()), 1);
    X509_free(x);
    clear_errors();
}

/* EVP_PKEY_sign over a precomputed digest, with the signature digest set. */
static void test_pkey_sign_digest(void)
{
    unsigned char dgst[32], sig[MAXMOD], sig2[MAXMOD];
    unsigned int dlen = 0;
    size_t siglen = sizeof(sig), siglen2 = sizeof(sig2);

    CU_ASSERT_FATAL(EVP_Digest(msg, sizeof(msg), dgst, &dlen, EVP_sha256(), NULL) == 1);
    CU_ASSERT_EQUAL_FATAL(dlen, 32);
    for (int pss = 0; pss < 2; pss++) {
        EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_pkey(tu_libctx(), token_key(), NULL);
        EVP_PKEY_CTX *v;
        size_t need = 0;

        CU_ASSERT_PTR_NOT_NULL_FATAL(c);
        ASSERT_OK(EVP_PKEY_sign_init(c));
        CU_ASSERT_STRING_EQUAL(ctx_provider(c), "p11tls");
        CU_ASSERT(set_sig_padding(c, pss));
        CU_ASSERT(EVP_PKEY_CTX_set_signature_md(c, EVP_sha256()) > 0);
        ASSERT_OK(EVP_PKEY_sign(c, NULL, &need, dgst, dlen));
        CU_ASSERT_EQUAL(need, modlen());
        siglen = sizeof(sig);
        ASSERT_OK(EVP_PKEY_sign(c, sig, &siglen, dgst, dlen));
        CU_ASSERT_EQUAL(siglen, modlen());
        /* a digest of the wrong length is refused */
        siglen2 = sizeof(sig2);
        CU_ASSERT_NOT_EQUAL(EVP_PKEY_sign(c, sig2, &siglen2, dgst, dlen - 1), 1);
        clear_errors();
        EVP_PKEY_CTX_free(c);

        v = EVP_PKEY_CTX_new_from_pkey(NULL, cert_key(), "provider=default");
        CU_ASSERT_PTR_NOT_NULL_FATAL(v);
        ASSERT_OK(EVP_PKEY_verify_init(v));
        CU_ASSERT(set_sig_padding(v, pss));
        CU_ASSERT(EVP_PKEY_CTX_set_signature_md(v, EVP_sha256()) > 0);
        CU_ASSERT_EQUAL(EVP_PKEY_verify(v, sig, siglen, dgst, dlen), 1);
        sig[3] ^= 0x80;
        CU_ASSERT_NOT_EQUAL(EVP_PKEY_verify(v, sig, siglen, dgst, dlen), 1);
        sig[3] ^= 0x80;
        EVP_PKEY_CTX_free(v);

        /* the PKCS#1 v1.5 signature is the one EVP_DigestSign makes */
        if (!pss) {
            siglen2 = sizeof(sig2);
            ASSERT_OK(digest_sign(token_key(), tu_libctx(), NULL, "SHA256", 0, msg, sizeof(msg),
                                  sig2, &siglen2, NULL, 0));
            CU_ASSERT_EQUAL(siglen2, siglen);
            CU_ASSERT_EQUAL(memcmp(sig, sig2, siglen), 0);
        }
    }
    clear_errors();
}

/* ------------------------------------------------------------ decrypt */

/* Encrypts 32 random bytes with the certificate's key (default provider) and
 * decrypts them with the token key through p11tls. token_may_refuse: the token
 * may reject the mechanism parameters at C_DecryptInit (then the failure must be
 * a clean one, reported by OpenSSL's error queue). */
static void decrypt_case(int pad, const EVP_MD *md, int token_may_refuse)
{
    unsigned char pt[32], ct[MAXMOD], out[MAXMOD];
    size_t ctlen = sizeof(ct), outlen = sizeof(out);
    EVP_PKEY_CTX *c;
    int rc;

    CU_ASSERT_FATAL(RAND_bytes(pt, sizeof(pt)) == 1);
    CU_ASSERT_FATAL(cert_encrypt(pad, md, pt, sizeof(pt), ct, &ctlen));
    CU_ASSERT_EQUAL(ctlen, modlen());

    c = EVP_PKEY_CTX_new_from_pkey(tu_libctx(), token_key(), NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    ASSERT_OK(EVP_PKEY_decrypt_init(c));
    CU_ASSERT_STRING_EQUAL(ctx_provider(c), "p11tls");
    CU_ASSERT(EVP_PKEY_CTX_set_rsa_padding(c, pad) > 0);
    if (md != NULL) {
        CU_ASSERT(EVP_PKEY_CTX_set_rsa_oaep_md(c, md) > 0);
        CU_ASSERT(EVP_PKEY_CTX_set_rsa_mgf1_md(c, md) > 0);
    }
    clear_errors();
    rc = EVP_PKEY_decrypt(c, out, &outlen, ct, ctlen);
    if (rc != 1 && token_may_refuse) {
        char errs[2048];
        CU_ASSERT(drain_errors(errs, sizeof(errs)) > 0);
        fprintf(stderr,
                "\n  note: token kind %s refuses these OAEP parameters (SoftHSM 2.6 supports "
                "OAEP with SHA-1 only): %s\n",
                tu_kind(), errs);
        CU_ASSERT_PTR_NOT_NULL(strstr(errs, "C_DecryptInit"));
        EVP_PKEY_CTX_free(c);
        return;
    }
    if (rc != 1)
        tu_print_errors();
    CU_ASSERT_EQUAL(rc, 1);
    CU_ASSERT_EQUAL(outlen, sizeof(pt));
    CU_ASSERT(outlen == sizeof(pt) && memcmp(out, pt, sizeof(pt)) == 0);
    ASSERT_NO_ERRORS();

    /* a corrupted ciphertext does not give the plaintext back */
    ct[ctlen / 2] ^= 0x01;
    outlen = sizeof(out);
    if (EVP_PKEY_decrypt(c, out, &outlen, ct, ctlen) == 1) {
        CU_ASSERT(outlen != sizeof(pt) || memcmp(out, pt, sizeof(pt)) != 0);
    }
    EVP_PKEY_CTX_free(c);
    clear_errors();
}

static void test_decrypt_pkcs1(void)
{
    decrypt_case(RSA_PKCS1_PADDING, NULL, 0);
}

static void test_decrypt_oaep_sha1(void)
{
    decrypt_case(RSA_PKCS1_OAEP_PADDING, EVP_sha1(), 0);
}

static void test_decrypt_oaep_sha256(void)
{
    decrypt_case(RSA_PKCS1_OAEP_PADDING, EVP_sha256(), is_softhsm());
}

/* A failed token operation is reported with the names of the PKCS#11 return
 * code and mechanism (not "CKR_0x..." / "CKM_0x..."): an OAEP decryption of a
 * block that is PKCS#1 v1.5 padded, not OAEP padded (OAEP has no implicit
 * rejection: every token fails it). */
static void test_decrypt_error_names(void)
{
    unsigned char b[MAXMOD], ct[MAXMOD], out[MAXMOD];
    size_t outlen = sizeof(out);
    char errs[2048];
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_pkey(tu_libctx(), token_key(), NULL);

    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    make_block(b, modlen(), PMS_LEN, 3, 3);
    CU_ASSERT_FATAL(raw_encrypt(b, ct));
    ASSERT_OK(EVP_PKEY_decrypt_init(c));
    CU_ASSERT(EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_OAEP_PADDING) > 0);
    CU_ASSERT(EVP_PKEY_CTX_set_rsa_oaep_md(c, EVP_sha1()) > 0);
    clear_errors();
    CU_ASSERT_NOT_EQUAL(EVP_PKEY_decrypt(c, out, &outlen, ct, modlen()), 1);
    EVP_PKEY_CTX_free(c);
    CU_ASSERT(drain_errors(errs, sizeof(errs)) > 0);
    if (strstr(errs, "CKM_RSA_PKCS_OAEP") == NULL || strstr(errs, "CKR_0x") != NULL)
        fprintf(stderr, "\n  errors: %s\n", errs);
    CU_ASSERT_PTR_NOT_NULL(strstr(errs, "CKM_RSA_PKCS_OAEP"));
    CU_ASSERT_PTR_NULL(strstr(errs, "CKM_0x"));
    CU_ASSERT_PTR_NULL(strstr(errs, "CKR_0x"));
    /* the codes RSA key operations commonly fail with */
    CU_ASSERT_STRING_EQUAL(p11_ckm_name(CKM_RSA_PKCS), "CKM_RSA_PKCS");
    CU_ASSERT_STRING_EQUAL(p11_ckm_name(CKM_RSA_PKCS_OAEP), "CKM_RSA_PKCS_OAEP");
    CU_ASSERT_STRING_EQUAL(p11_ckm_name(CKM_RSA_X_509), "CKM_RSA_X_509");
    CU_ASSERT_STRING_EQUAL(p11_ckr_name(CKR_ARGUMENTS_BAD), "CKR_ARGUMENTS_BAD");
    CU_ASSERT_STRING_EQUAL(p11_ckr_name(CKR_FUNCTION_FAILED), "CKR_FUNCTION_FAILED");
    CU_ASSERT_STRING_EQUAL(p11_ckr_name(CKR_GENERAL_ERROR), "CKR_GENERAL_ERROR");
    CU_ASSERT_STRING_EQUAL(p11_ckr_name(CKR_HOST_MEMORY), "CKR_HOST_MEMORY");
}

/* --------------------------------------------------------- TLS padding */

/* Every publicly valid ciphertext gives success, 48 bytes and a clean error queue. */
static void expect_handle(const char *what, const unsigned char *block)
{
    unsigned char ct[MAXMOD], out[PMS_LEN];
    size_t outlen = 0;
    int rc;

    CU_ASSERT_FATAL(raw_encrypt(block, ct));
    clear_errors();
    rc = tls_decrypt(ct, modlen(), out, &outlen);
    if (rc != 1 || outlen != PMS_LEN || ERR_peek_error() != 0) {
        fprintf(stderr, "\n  case '%s': rc=%d outlen=%zu\n", what, rc, outlen);
    }
    CU_ASSERT_EQUAL(rc, 1);
    CU_ASSERT_EQUAL(outlen, PMS_LEN);
    ASSERT_NO_ERRORS();
}

static void test_tls_padding_cases(void)
{
    size_t k = modlen();
    unsigned char b[MAXMOD];

    CU_ASSERT_PTR_NOT_NULL_FATAL(token_key());
    CU_ASSERT_FATAL(k >= 128 && k <= MAXMOD);

    make_block(b, k, PMS_LEN, 3, 3);
    expect_handle("valid", b);

    make_block(b, k, PMS_LEN, 3, 3);
    b[0] = 0x01;
    expect_handle("first byte 01", b);

    make_block(b, k, PMS_LEN, 3, 3);
    b[1] = 0x01;
    expect_handle("block type 01", b);

    make_block(b, k, PMS_LEN, 3, 3);
    nonzero_random(b + 2, k - 2);
    expect_handle("no zero separator", b);

    make_block(b, k, 20, 3, 3);
    expect_handle("separator too early (20-byte secret)", b);

    make_block(b, k, 60, 3, 3);
    expect_handle("long secret (60 bytes)", b);

    make_block(b, k, k - 3 - 5, 3, 3);
    expect_handle("padding string of 5 bytes", b);

    make_block(b, k, PMS_LEN, 2, 0);
    expect_handle("wrong version 02 00", b);

    make_block(b, k, PMS_LEN, 3, 1);
    expect_handle("wrong version 03 01", b);

    memset(b, 0, k);
    expect_handle("all zeros", b);

    make_block(b, k, 0, 3, 3); /* separator at the very end: empty secret */
    expect_handle("empty secret", b);
}

/* libssl asks for the output size first on some paths: 48 bytes. */
static void test_tls_padding_size_query(void)
{
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_pkey(tu_libctx(), token_key(), NULL);
    unsigned char b[MAXMOD], ct[MAXMOD];
    size_t outlen = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    make_block(b, modlen(), PMS_LEN, 3, 3);
    CU_ASSERT_FATAL(raw_encrypt(b, ct));
    ASSERT_OK(EVP_PKEY_decrypt_init(c));
    CU_ASSERT(EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_WITH_TLS_PADDING) > 0);
    ASSERT_OK(EVP_PKEY_decrypt(c, NULL, &outlen, ct, modlen()));
    CU_ASSERT_EQUAL(outlen, PMS_LEN);
    EVP_PKEY_CTX_free(c);
    clear_errors();
}

static void test_tls_padding_short_ciphertext(void)
{
    size_t k = modlen();
    unsigned char b[MAXMOD], ct[MAXMOD], out[PMS_LEN];
    size_t outlen = 0;
    int tries, found = 0;

    for (tries = 0; tries < 5000 && !found; tries++) {
        make_block(b, k, PMS_LEN, 3, 3);
        CU_ASSERT_FATAL(raw_encrypt(b, ct));
        found = ct[0] == 0x00;
    }
    CU_ASSERT_FATAL(found);
    clear_errors();
    CU_ASSERT_EQUAL(tls_decrypt(ct + 1, k - 1, out, &outlen), 1);
    CU_ASSERT_EQUAL(outlen, PMS_LEN);
    ASSERT_NO_ERRORS();
    /* and at full length */
    outlen = 0;
    CU_ASSERT_EQUAL(tls_decrypt(ct, k, out, &outlen), 1);
    CU_ASSERT_EQUAL(outlen, PMS_LEN);
    ASSERT_NO_ERRORS();
}

static void expect_refused(const char *what, const unsigned char *ct, size_t ctlen)
{
    unsigned char out[PMS_LEN];
    size_t outlen = 0;
    int rc;

    clear_errors();
    rc = tls_decrypt(ct, ctlen, out, &outlen);
    if (rc > 0)
        fprintf(stderr, "\n  case '%s': rc=%d (expected a failure)\n", what, rc);
    CU_ASSERT(rc <= 0 && rc != -99);
    CU_ASSERT_NOT_EQUAL(ERR_peek_error(), 0);
    clear_errors();
}

static void test_tls_padding_invalid_ciphertext(void)
{
    size_t k = modlen();
    unsigned char b[MAXMOD], ct[MAXMOD + 1], nb[MAXMOD];
    BIGNUM *n = NULL;

    /* one byte longer than the modulus (a leading zero byte) */
    make_block(b, k, PMS_LEN, 3, 3);
    CU_ASSERT_FATAL(raw_encrypt(b, ct + 1));
    ct[0] = 0x00;
    expect_refused("modulus length + 1", ct, k + 1);

    /* the modulus itself */
    CU_ASSERT_FATAL(EVP_PKEY_get_bn_param(cert_key(), OSSL_PKEY_PARAM_RSA_N, &n) == 1);
    CU_ASSERT_FATAL(BN_bn2binpad(n, nb, (int)k) == (int)k);
    expect_refused("n", nb, k);

    /* n + 1 (with its carry: n's last byte may be 0xff) */
    CU_ASSERT_FATAL(BN_add_word(n, 1) == 1 && BN_bn2binpad(n, nb, (int)k) == (int)k);
    expect_refused("n + 1", nb, k);
    CU_ASSERT_FATAL(BN_sub_word(n, 1) == 1);

    /* above n: all 0xff */
    memset(ct, 0xff, k);
    expect_refused("all 0xff", ct, k);

    /* n - 1 is below the modulus: publicly valid, so a handle */
    CU_ASSERT_FATAL(BN_sub_word(n, 1) == 1 && BN_bn2binpad(n, nb, (int)k) == (int)k);
    {
        unsigned char out[PMS_LEN];
        size_t outlen = 0;
        clear_errors();
        CU_ASSERT_EQUAL(tls_decrypt(nb, k, out, &outlen), 1);
        CU_ASSERT_EQUAL(outlen, PMS_LEN);
        ASSERT_NO_ERRORS();
    }
    BN_free(n);
}

static void test_tls_padding_handles_random(void)
{
    size_t k = modlen();
    unsigned char b[MAXMOD], ct[MAXMOD], h1[PMS_LEN], h2[PMS_LEN];
    const unsigned char *pms = b + k - PMS_LEN;
    size_t l1 = 0, l2 = 0;

    make_block(b, k, PMS_LEN, 3, 3);
    CU_ASSERT_FATAL(raw_encrypt(b, ct));
    clear_errors();
    CU_ASSERT_EQUAL(tls_decrypt(ct, k, h1, &l1), 1);
    CU_ASSERT_EQUAL(tls_decrypt(ct, k, h2, &l2), 1);
    CU_ASSERT_EQUAL(l1, PMS_LEN);
    CU_ASSERT_EQUAL(l2, PMS_LEN);
    ASSERT_NO_ERRORS();
    CU_ASSERT_NOT_EQUAL(memcmp(h1, h2, PMS_LEN), 0);
    CU_ASSERT_NOT_EQUAL(memcmp(h1, pms, PMS_LEN), 0);
    CU_ASSERT_NOT_EQUAL(memcmp(h2, pms, PMS_LEN), 0);
    /* nor does the secret appear anywhere in them */
    CU_ASSERT_PTR_NULL(memmem(h1, PMS_LEN, pms + 2, 8));
    CU_ASSERT_PTR_NULL(memmem(h2, PMS_LEN, pms + 2, 8));
}

/* -------------------------------------------------- keymgmt import refusal */

static void test_software_key_not_imported(void)
{
    EVP_PKEY *soft = soft_key();
    EVP_PKEY_CTX *c, *v;
    unsigned char dgst[32], sig[MAXMOD], pt[16], ct[MAXMOD], out[MAXMOD];
    unsigned int dlen = 0;
    size_t siglen = sizeof(sig), ctlen = sizeof(ct), outlen = sizeof(out);

    CU_ASSERT_PTR_NOT_NULL_FATAL(soft);
    CU_ASSERT_FATAL(EVP_Digest(msg, sizeof(msg), dgst, &dlen, EVP_sha256(), NULL) == 1);

    /* signing with p11tls preferred falls back to the key's own provider */
    c = EVP_PKEY_CTX_new_from_pkey(tu_libctx(), soft, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    ASSERT_OK(EVP_PKEY_sign_init(c));
    CU_ASSERT_STRING_NOT_EQUAL(ctx_provider(c), "p11tls");
    CU_ASSERT(EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_PADDING) > 0);
    CU_ASSERT(EVP_PKEY_CTX_set_signature_md(c, EVP_sha256()) > 0);
    ASSERT_OK(EVP_PKEY_sign(c, sig, &siglen, dgst, dlen));
    EVP_PKEY_CTX_free(c);
    v = EVP_PKEY_CTX_new_from_pkey(NULL, soft, "provider=default");
    CU_ASSERT_PTR_NOT_NULL_FATAL(v);
    ASSERT_OK(EVP_PKEY_verify_init(v));
    CU_ASSERT(EVP_PKEY_CTX_set_rsa_padding(v, RSA_PKCS1_PADDING) > 0);
    CU_ASSERT(EVP_PKEY_CTX_set_signature_md(v, EVP_sha256()) > 0);
    CU_ASSERT_EQUAL(EVP_PKEY_verify(v, sig, siglen, dgst, dlen), 1);
    EVP_PKEY_CTX_free(v);

    /* and so does decryption */
    CU_ASSERT_FATAL(RAND_bytes(pt, sizeof(pt)) == 1);
    c = EVP_PKEY_CTX_new_from_pkey(NULL, soft, "provider=default");
    CU_ASSERT_FATAL(c != NULL && EVP_PKEY_encrypt_init(c) == 1 &&
                    EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_OAEP_PADDING) > 0 &&
                    EVP_PKEY_encrypt(c, ct, &ctlen, pt, sizeof(pt)) == 1);
    EVP_PKEY_CTX_free(c);
    c = EVP_PKEY_CTX_new_from_pkey(tu_libctx(), soft, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    ASSERT_OK(EVP_PKEY_decrypt_init(c));
    CU_ASSERT_STRING_NOT_EQUAL(ctx_provider(c), "p11tls");
    CU_ASSERT(EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_OAEP_PADDING) > 0);
    ASSERT_OK(EVP_PKEY_decrypt(c, out, &outlen, ct, ctlen));
    CU_ASSERT(outlen == sizeof(pt) && memcmp(out, pt, sizeof(pt)) == 0);
    EVP_PKEY_CTX_free(c);
    clear_errors();
}

/* p11tls's keymgmt itself: private material is refused, a public key is taken. */
static void test_keymgmt_import(void)
{
    EVP_PKEY *soft = soft_key(), *pub = NULL, *priv = NULL;
    BIGNUM *n = NULL, *e = NULL, *d = NULL;
    OSSL_PARAM_BLD *bld;
    OSSL_PARAM *params = NULL, *pubparams = NULL;
    EVP_PKEY_CTX *c;
    unsigned char dgst[32] = {0}, sig[MAXMOD];
    size_t siglen = sizeof(sig);

    CU_ASSERT_PTR_NOT_NULL_FATAL(soft);
    CU_ASSERT_FATAL(EVP_PKEY_get_bn_param(soft, OSSL_PKEY_PARAM_RSA_N, &n) == 1 &&
                    EVP_PKEY_get_bn_param(soft, OSSL_PKEY_PARAM_RSA_E, &e) == 1 &&
                    EVP_PKEY_get_bn_param(soft, OSSL_PKEY_PARAM_RSA_D, &d) == 1);
    bld = OSSL_PARAM_BLD_new();
    CU_ASSERT_FATAL(bld != NULL && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) &&
                    OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) &&
                    (pubparams = OSSL_PARAM_BLD_to_param(bld)) != NULL);
    CU_ASSERT_FATAL(OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) &&
                    OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) &&
                    OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_D, d) &&
                    (params = OSSL_PARAM_BLD_to_param(bld)) != NULL);
    OSSL_PARAM_BLD_free(bld);

    c = EVP_PKEY_CTX_new_from_name(tu_libctx(), "RSA", "provider=p11tls");
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    ASSERT_OK(EVP_PKEY_fromdata_init(c));
    CU_ASSERT_NOT_EQUAL(EVP_PKEY_fromdata(c, &priv, EVP_PKEY_KEYPAIR, params), 1);
    CU_ASSERT_PTR_NULL(priv);
    clear_errors();
    ASSERT_OK(EVP_PKEY_fromdata(c, &pub, EVP_PKEY_PUBLIC_KEY, pubparams));
    EVP_PKEY_CTX_free(c);
    CU_ASSERT_PTR_NOT_NULL_FATAL(pub);
    CU_ASSERT_STRING_EQUAL(pkey_provider(pub), "p11tls");
    CU_ASSERT_EQUAL(EVP_PKEY_eq(pub, soft), 1);
    CU_ASSERT_EQUAL(EVP_PKEY_get_bits(pub), 2048);
    /* a public key cannot sign */
    c = EVP_PKEY_CTX_new_from_pkey(tu_libctx(), pub, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    if (EVP_PKEY_sign_init(c) == 1) {
        (void)EVP_PKEY_CTX_set_signature_md(c, EVP_sha256());
        CU_ASSERT_NOT_EQUAL(EVP_PKEY_sign(c, sig, &siglen, dgst, sizeof(dgst)), 1);
    }
    EVP_PKEY_CTX_free(c);
    EVP_PKEY_free(pub);
    OSSL_PARAM_free(params);
    OSSL_PARAM_free(pubparams);
    BN_free(n);
    BN_free(e);
    BN_clear_free(d);
    clear_errors();
}

int main(void)
{
    CU_TestInfo tests[] = {
        {"URI: p11tls RSA-2048 key equal to the certificate's", test_uri_load},
        {"private half stays in the token", test_private_half_stays},
        {"PEM URI: p11tls key equal to the certificate's", test_pem_uri_load},
        {"PEM: software key stays in the default provider", test_pem_software_key},
        {"PEM URI: garbage, empty, no such key fail", test_pem_garbage},
        {"PEM URI: another token's label fails naming it", test_pem_other_token},
        {"store: another token's label fails naming it", test_store_other_token},
        {"sign PKCS#1 v1.5 SHA-256", test_sign_pkcs1_sha256},
        {"sign PKCS#1 v1.5 SHA-384", test_sign_pkcs1_sha384},
        {"sign PKCS#1 v1.5 SHA-512", test_sign_pkcs1_sha512},
        {"sign PSS SHA-256", test_sign_pss_sha256},
        {"sign PSS SHA-384", test_sign_pss_sha384},
        {"sign PSS SHA-512", test_sign_pss_sha512},
        {"verify with the token key; corrupted signatures fail", test_verify_with_token_key},
        {"sign PSS: maximum salt, MGF1 with SHA-1", test_sign_pss_params},
        {"EVP_PKEY_sign over a SHA-256 digest", test_pkey_sign_digest},
        {"decrypt PKCS#1 v1.5", test_decrypt_pkcs1},
        {"decrypt OAEP SHA-1", test_decrypt_oaep_sha1},
        {"decrypt OAEP SHA-256", test_decrypt_oaep_sha256},
        {"decrypt errors name the PKCS#11 code and mechanism", test_decrypt_error_names},
        {"TLS padding: every block gives a 48-byte handle", test_tls_padding_cases},
        {"TLS padding: size query", test_tls_padding_size_query},
        {"TLS padding: ciphertext one byte short", test_tls_padding_short_ciphertext},
        {"TLS padding: ciphertexts not below n fail", test_tls_padding_invalid_ciphertext},
        {"TLS padding: handles are random", test_tls_padding_handles_random},
        {"software key: sign/decrypt fall back to default", test_software_key_not_imported},
        {"keymgmt: private import refused, public taken", test_keymgmt_import},
        CU_TEST_INFO_NULL,
    };
    if (token_key() == NULL || cert_key() == NULL) {
        fprintf(stderr, "test_keys: cannot load the token key or the certificate\n");
        tu_print_errors();
        return 1;
    }
    return tu_run("keys", tests);
}
