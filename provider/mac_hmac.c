/* mac_hmac.c - the "HMAC" MAC. libssl computes TLS 1.3's Finished (EVP_Q_mac) and,
 * through the default provider's HMAC signature, its PSK binders with an HMAC keyed
 * by a finished key: for p11tls that key is a handle, so the HMAC runs in the token
 * (pkcs11/tls13.c) and only the MAC comes out. Every other HMAC user in the process
 * (session-ticket and cookie protection, applications) has a key p11tls does not
 * hold, and gets the default provider's HMAC, byte for byte: the context then simply
 * forwards to it (in p11tls's own library context, which has only that provider). */
#include <string.h>
#include <strings.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include "provider.h"

static OSSL_FUNC_mac_newctx_fn hm_new;
static OSSL_FUNC_mac_dupctx_fn hm_dup;
static OSSL_FUNC_mac_freectx_fn hm_free;
static OSSL_FUNC_mac_init_fn hm_init;
static OSSL_FUNC_mac_update_fn hm_update;
static OSSL_FUNC_mac_final_fn hm_final;
static OSSL_FUNC_mac_gettable_ctx_params_fn hm_gettable_ctx_params;
static OSSL_FUNC_mac_get_ctx_params_fn hm_get_ctx_params;
static OSSL_FUNC_mac_settable_ctx_params_fn hm_settable_ctx_params;
static OSSL_FUNC_mac_set_ctx_params_fn hm_set_ctx_params;

#define DATA_MAX (64 * 1024)

typedef struct {
    P11TLS_PROV *prov;
    EVP_MAC_CTX *soft; /* the default provider's HMAC: keys that are not handles */
    int hash;          /* -1: not SHA-256/384 (then never a handle) */
    int token;         /* keyed by a handle: the MAC runs in the token */
    unsigned char key[48];
    size_t key_len;
    unsigned char *data;
    size_t data_len;
} HMCTX;

static EVP_MAC *soft_mac(P11TLS_PROV *prov)
{
    return EVP_MAC_fetch(prov->libctx, "HMAC", NULL);
}

static void *hm_new(void *provctx)
{
    P11TLS_PROV *prov = provctx;
    HMCTX *c = OPENSSL_zalloc(sizeof(*c));
    EVP_MAC *m;

    if (c == NULL)
        return NULL;
    c->prov = prov;
    c->hash = -1;
    if (prov->libctx == NULL || (m = soft_mac(prov)) == NULL) {
        OPENSSL_free(c);
        return NULL;
    }
    c->soft = EVP_MAC_CTX_new(m);
    EVP_MAC_free(m);
    if (c->soft == NULL) {
        OPENSSL_free(c);
        return NULL;
    }
    return c;
}

static void hm_free(void *vctx)
{
    HMCTX *c = vctx;
    if (c == NULL)
        return;
    EVP_MAC_CTX_free(c->soft);
    OPENSSL_cleanse(c->key, sizeof(c->key));
    OPENSSL_free(c->data);
    OPENSSL_free(c);
}

static void *hm_dup(void *vctx)
{
    HMCTX *c = vctx, *d = OPENSSL_memdup(c, sizeof(*c));
    if (d == NULL)
        return NULL;
    d->soft = EVP_MAC_CTX_dup(c->soft);
    d->data = c->data != NULL ? OPENSSL_memdup(c->data, c->data_len) : NULL;
    if (d->soft == NULL || (c->data != NULL && d->data == NULL)) {
        hm_free(d);
        return NULL;
    }
    return d;
}

static void set_hash(HMCTX *c, const char *name)
{
    if (strcasecmp(name, "SHA2-256") == 0 || strcasecmp(name, "SHA256") == 0 ||
        strcasecmp(name, "SHA-256") == 0)
        c->hash = P11_PRF_SHA256;
    else if (strcasecmp(name, "SHA2-384") == 0 || strcasecmp(name, "SHA384") == 0 ||
             strcasecmp(name, "SHA-384") == 0)
        c->hash = P11_PRF_SHA384;
    else
        c->hash = -1;
}

/* A key is a handle when it is one this process holds, of the hash's length. */
static int is_handle(HMCTX *c, const unsigned char *key, size_t keylen)
{
    size_t hl = c->hash == P11_PRF_SHA384 ? 48 : 32;
    return c->hash >= 0 && keylen == hl && c->prov->pool != NULL &&
           p11_pool_tls13_known(c->prov->pool, key, keylen);
}

static int take_key(HMCTX *c, const unsigned char *key, size_t keylen)
{
    c->token = is_handle(c, key, keylen);
    OPENSSL_free(c->data);
    c->data = NULL;
    c->data_len = 0;
    if (!c->token)
        return 0;
    memcpy(c->key, key, keylen);
    c->key_len = keylen;
    return 1;
}

static int hm_set_ctx_params(void *vctx, const OSSL_PARAM params[])
{
    HMCTX *c = vctx;
    const OSSL_PARAM *p;

    if (params == NULL)
        return 1;
    if ((p = OSSL_PARAM_locate_const(params, OSSL_MAC_PARAM_DIGEST)) != NULL) {
        const char *name = NULL;
        if (!OSSL_PARAM_get_utf8_string_ptr(p, &name))
            return 0;
        set_hash(c, name);
    }
    if (!EVP_MAC_CTX_set_params(c->soft, params))
        return 0;
    if ((p = OSSL_PARAM_locate_const(params, OSSL_MAC_PARAM_KEY)) != NULL) {
        const void *k = NULL;
        size_t kl = 0;
        if (!OSSL_PARAM_get_octet_string_ptr(p, &k, &kl))
            return 0;
        (void)take_key(c, k, kl);
    }
    return 1;
}

static int hm_init(void *vctx, const unsigned char *key, size_t keylen, const OSSL_PARAM params[])
{
    HMCTX *c = vctx;

    if (!p11tls_usable(c->prov) || !hm_set_ctx_params(c, params))
        return 0;
    if (key != NULL && take_key(c, key, keylen))
        return 1;
    if (key == NULL && c->token) { /* re-initialised with the same handle */
        OPENSSL_free(c->data);
        c->data = NULL;
        c->data_len = 0;
        return 1;
    }
    return EVP_MAC_init(c->soft, key, keylen, NULL);
}

static int hm_update(void *vctx, const unsigned char *in, size_t inl)
{
    HMCTX *c = vctx;
    unsigned char *n;

    if (!c->token)
        return EVP_MAC_update(c->soft, in, inl);
    if (inl == 0)
        return 1;
    if (c->data_len + inl > DATA_MAX) {
        ERR_raise(ERR_LIB_PROV, PROV_R_INVALID_DATA);
        return 0;
    }
    if ((n = OPENSSL_realloc(c->data, c->data_len + inl)) == NULL)
        return 0;
    memcpy(n + c->data_len, in, inl);
    c->data = n;
    c->data_len += inl;
    return 1;
}

static int hm_final(void *vctx, unsigned char *out, size_t *outl, size_t outsize)
{
    HMCTX *c = vctx;
    size_t hl = c->hash == P11_PRF_SHA384 ? 48 : 32;

    if (!c->token)
        return EVP_MAC_final(c->soft, out, outl, outsize);
    *outl = hl;
    if (out == NULL)
        return 1;
    if (outsize < hl) {
        ERR_raise(ERR_LIB_PROV, PROV_R_OUTPUT_BUFFER_TOO_SMALL);
        return 0;
    }
    return p11_pool_tls13_hmac(c->prov->pool, (p11_prf_hash)c->hash, c->key, c->data, c->data_len,
                               out);
}

static const OSSL_PARAM *hm_gettable_ctx_params(void *vctx, void *provctx)
{
    P11TLS_PROV *prov = provctx;
    EVP_MAC *m = soft_mac(prov);
    const OSSL_PARAM *p = m != NULL ? EVP_MAC_gettable_ctx_params(m) : NULL;
    EVP_MAC_free(m); /* the lists are static in the default provider */
    return p;
}

static const OSSL_PARAM *hm_settable_ctx_params(void *vctx, void *provctx)
{
    P11TLS_PROV *prov = provctx;
    EVP_MAC *m = soft_mac(prov);
    const OSSL_PARAM *p = m != NULL ? EVP_MAC_settable_ctx_params(m) : NULL;
    EVP_MAC_free(m);
    return p;
}

static int hm_get_ctx_params(void *vctx, OSSL_PARAM params[])
{
    HMCTX *c = vctx;
    OSSL_PARAM *p;

    if (!c->token)
        return EVP_MAC_CTX_get_params(c->soft, params);
    if ((p = OSSL_PARAM_locate(params, OSSL_MAC_PARAM_SIZE)) != NULL &&
        !OSSL_PARAM_set_size_t(p, c->hash == P11_PRF_SHA384 ? 48 : 32))
        return 0;
    if ((p = OSSL_PARAM_locate(params, OSSL_MAC_PARAM_BLOCK_SIZE)) != NULL &&
        !OSSL_PARAM_set_size_t(p, c->hash == P11_PRF_SHA384 ? 128 : 64))
        return 0;
    return 1;
}

const OSSL_DISPATCH p11tls_hmac_functions[] = {
    {OSSL_FUNC_MAC_NEWCTX, (void (*)(void))hm_new},
    {OSSL_FUNC_MAC_DUPCTX, (void (*)(void))hm_dup},
    {OSSL_FUNC_MAC_FREECTX, (void (*)(void))hm_free},
    {OSSL_FUNC_MAC_INIT, (void (*)(void))hm_init},
    {OSSL_FUNC_MAC_UPDATE, (void (*)(void))hm_update},
    {OSSL_FUNC_MAC_FINAL, (void (*)(void))hm_final},
    {OSSL_FUNC_MAC_GETTABLE_CTX_PARAMS, (void (*)(void))hm_gettable_ctx_params},
    {OSSL_FUNC_MAC_GET_CTX_PARAMS, (void (*)(void))hm_get_ctx_params},
    {OSSL_FUNC_MAC_SETTABLE_CTX_PARAMS, (void (*)(void))hm_settable_ctx_params},
    {OSSL_FUNC_MAC_SET_CTX_PARAMS, (void (*)(void))hm_set_ctx_params},
    {0, NULL}};
