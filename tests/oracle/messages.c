/* messages.c - what a try of rsa_oracle sends: the PKCS#1 blocks of each case, built
 * byte by byte and RSA-encrypted without padding under the server's key (from its
 * certificate), and the client's crypto (TLS1-PRF, SHA-256, AES-128-GCM), all from
 * libcrypto's default provider in a library context of its own (oracle.h). */
#include <string.h>
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
#include "oracle.h"

#define POOL 32 /* one_short ciphertexts made in advance */

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

void msg_init(void)
{
    if ((lctx = OSSL_LIB_CTX_new()) == NULL || OSSL_PROVIDER_load(lctx, "default") == NULL ||
        (prf = EVP_KDF_fetch(lctx, "TLS1-PRF", "provider=default")) == NULL ||
        (sha256 = EVP_MD_fetch(lctx, "SHA256", "provider=default")) == NULL ||
        (gcm = EVP_CIPHER_fetch(lctx, "AES-128-GCM", "provider=default")) == NULL)
        die("cannot set up libcrypto's default provider");
}

void msg_free(void)
{
    EVP_PKEY_free(srv_key);
    EVP_KDF_free(prf);
    EVP_MD_free(sha256);
    EVP_CIPHER_free(gcm);
    OSSL_LIB_CTX_free(lctx);
}

void rnd(unsigned char *b, size_t n)
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

void prf_calc(const unsigned char *secret, size_t slen, const char *label, const unsigned char *s1,
              size_t l1, const unsigned char *s2, size_t l2, unsigned char *out, size_t olen)
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

void hash(const unsigned char *d, size_t n, unsigned char out[32])
{
    unsigned int ol = 32;
    if (EVP_Digest(d, n, out, &ol, sha256, NULL) != 1)
        die("SHA-256 failed");
}

/* AES-128-GCM record protection; returns the output length or -1 (bad tag). */
int gcm_crypt(int enc, const unsigned char key[16], const unsigned char salt[4],
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
void build(const tcase *c, int try_no, unsigned char *ct, size_t *ctlen, unsigned char *bait,
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

int msg_server_cert(const unsigned char *der, size_t l)
{
    if (l > sizeof(cert_der))
        return 0;
    if (srv_key == NULL || l != cert_len || memcmp(cert_der, der, l) != 0) {
        const unsigned char *p = der;
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
        memcpy(cert_der, der, l);
        cert_len = l;
        pool.n = 0;
    }
    if (pool.n == 0)
        fill_pool();
    return 1;
}
