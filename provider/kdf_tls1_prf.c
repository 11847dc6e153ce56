/* kdf_tls1_prf.c - the TLS1-PRF KDF that libssl calls for every TLS 1.2 secret.
 * "master secret" / "extended master secret": the secret is a pre-master-secret
 * handle (from asym_rsa.c) or raw bytes (ECDHE, a client's own secret, imported
 * into the token); the output is a master-secret handle, never the secret.
 * Any other label ("key expansion", "client finished", "server finished",
 * exporters): the secret is a master-secret handle, the PRF runs in the token,
 * and only its output comes back. TLS 1.0/1.1 (MD5-SHA1) is refused. */
#include <string.h>
#include <strings.h>
#include <openssl/crypto.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include "provider.h"

static OSSL_FUNC_kdf_newctx_fn prf_new;
static OSSL_FUNC_kdf_dupctx_fn prf_dup;
static OSSL_FUNC_kdf_freectx_fn prf_free;
static OSSL_FUNC_kdf_reset_fn prf_reset;
static OSSL_FUNC_kdf_derive_fn prf_derive;
static OSSL_FUNC_kdf_settable_ctx_params_fn prf_settable_ctx_params;
static OSSL_FUNC_kdf_set_ctx_params_fn prf_set_ctx_params;
static OSSL_FUNC_kdf_gettable_ctx_params_fn prf_gettable_ctx_params;
static OSSL_FUNC_kdf_get_ctx_params_fn prf_get_ctx_params;

#define SEED_MAX (64 * 1024)

typedef struct {
    P11TLS_PROV *prov;
    int hash; /* -1: not set; else p11_prf_hash */
    int md5sha1;
    unsigned char *secret;
    size_t secret_len;
    unsigned char *seed; /* label || seed */
    size_t seed_len;
} PRFCTX;

static void *prf_new(void *provctx)
{
    PRFCTX *c = OPENSSL_zalloc(sizeof(*c));
    if (c != NULL) {
        c->prov = provctx;
        c->hash = -1;
    }
    return c;
}

static void prf_reset(void *vctx)
{
    PRFCTX *c = vctx;
    P11TLS_PROV *prov = c->prov;
    OPENSSL_clear_free(c->secret, c->secret_len);
    OPENSSL_clear_free(c->seed, c->seed_len);
    memset(c, 0, sizeof(*c));
    c->prov = prov;
    c->hash = -1;
}

static void prf_free(void *vctx)
{
    if (vctx == NULL)
        return;
    prf_reset(vctx);
    OPENSSL_free(vctx);
}

static void *prf_dup(void *vctx)
{
    PRFCTX *c = vctx, *d = OPENSSL_memdup(c, sizeof(*c));
    if (d == NULL)
        return NULL;
    d->secret = d->seed = NULL;
    if ((c->secret != NULL && (d->secret = OPENSSL_memdup(c->secret, c->secret_len)) == NULL) ||
        (c->seed != NULL && (d->seed = OPENSSL_memdup(c->seed, c->seed_len)) == NULL)) {
        prf_free(d);
        return NULL;
    }
    return d;
}

static int starts_with(const PRFCTX *c, const char *label)
{
    size_t l = strlen(label);
    return c->seed_len >= l && memcmp(c->seed, label, l) == 0;
}

static int prf_derive(void *vctx, unsigned char *key, size_t keylen, const OSSL_PARAM params[])
{
    PRFCTX *c = vctx;
    p11_pool *t = c->prov->pool;

    if (!p11tls_usable(c->prov) || !prf_set_ctx_params(c, params))
        return 0;
    if (c->md5sha1) {
        ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_DIGEST, "p11tls: %s", P11TLS_OLD_TLS);
        return 0;
    }
    if (c->hash < 0) {
        ERR_raise(ERR_LIB_PROV, PROV_R_MISSING_MESSAGE_DIGEST);
        return 0;
    }
    if (c->secret == NULL) {
        ERR_raise(ERR_LIB_PROV, PROV_R_MISSING_SECRET);
        return 0;
    }
    if (c->seed_len == 0) {
        ERR_raise(ERR_LIB_PROV, PROV_R_MISSING_SEED);
        return 0;
    }
    if (keylen == 0) {
        ERR_raise(ERR_LIB_PROV, PROV_R_INVALID_KEY_LENGTH);
        return 0;
    }
    if (starts_with(c, "extended master secret") || starts_with(c, "master secret")) {
        int ems = starts_with(c, "extended master secret");
        size_t ll = ems ? 22 : 13;
        if (keylen != P11_TLS_HANDLE_LEN) {
            ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_KEY_LENGTH,
                           "p11tls: a master secret is 48 bytes, not %zu", keylen);
            return 0;
        }
        if (!ems && c->seed_len != ll + 64) {
            ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_SEED_LENGTH,
                           "p11tls: master secret seed must be two 32-byte randoms");
            return 0;
        }
        return p11_pool_tls_master(t, (p11_prf_hash)c->hash, ems, c->secret, c->secret_len,
                                   c->seed + ll, c->seed_len - ll, key);
    }
    if (c->secret_len != P11_TLS_HANDLE_LEN) {
        ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_KEY,
                       "p11tls: TLS1-PRF secret of %zu bytes is not a master-secret handle",
                       c->secret_len);
        return 0;
    }
    return p11_pool_tls_prf(t, (p11_prf_hash)c->hash, c->secret, c->seed, c->seed_len, key, keylen);
}

static int set_digest(PRFCTX *c, const char *name)
{
    c->md5sha1 = 0;
    if (strcasecmp(name, "SHA2-256") == 0 || strcasecmp(name, "SHA256") == 0 ||
        strcasecmp(name, "SHA-256") == 0)
        c->hash = P11_PRF_SHA256;
    else if (strcasecmp(name, "SHA2-384") == 0 || strcasecmp(name, "SHA384") == 0 ||
             strcasecmp(name, "SHA-384") == 0)
        c->hash = P11_PRF_SHA384;
    else if (strcasecmp(name, "MD5-SHA1") == 0)
        c->md5sha1 = 1;
    else {
        ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_DIGEST,
                       "p11tls: TLS1-PRF digest '%s' is not supported (SHA2-256, SHA2-384)", name);
        return 0;
    }
    return 1;
}

static int prf_set_ctx_params(void *vctx, const OSSL_PARAM params[])
{
    PRFCTX *c = vctx;
    const OSSL_PARAM *p;

    if (params == NULL)
        return 1;
    if ((p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_DIGEST)) != NULL) {
        const char *name = NULL;
        if (!OSSL_PARAM_get_utf8_string_ptr(p, &name) || !set_digest(c, name))
            return 0;
    }
    if ((p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_SECRET)) != NULL) {
        OPENSSL_clear_free(c->secret, c->secret_len);
        c->secret = NULL;
        c->secret_len = 0;
        if (!OSSL_PARAM_get_octet_string(p, (void **)&c->secret, 0, &c->secret_len))
            return 0;
    }
    /* Seeds: all of them, in order, make label || seed (a new set replaces the old). */
    if ((p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_SEED)) != NULL) {
        OPENSSL_clear_free(c->seed, c->seed_len);
        c->seed = NULL;
        c->seed_len = 0;
        for (; p != NULL; p = OSSL_PARAM_locate_const(p + 1, OSSL_KDF_PARAM_SEED)) {
            const void *d;
            size_t dl;
            unsigned char *n;
            if (!OSSL_PARAM_get_octet_string_ptr(p, &d, &dl))
                return 0;
            if (dl == 0)
                continue;
            if (c->seed_len + dl > SEED_MAX) {
                ERR_raise(ERR_LIB_PROV, PROV_R_INVALID_SEED_LENGTH);
                return 0;
            }
            n = OPENSSL_clear_realloc(c->seed, c->seed_len, c->seed_len + dl);
            if (n == NULL)
                return 0;
            memcpy(n + c->seed_len, d, dl);
            c->seed = n;
            c->seed_len += dl;
        }
    }
    return 1;
}

static const OSSL_PARAM settable[] = {OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_PROPERTIES, NULL, 0),
                                      OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_DIGEST, NULL, 0),
                                      OSSL_PARAM_octet_string(OSSL_KDF_PARAM_SECRET, NULL, 0),
                                      OSSL_PARAM_octet_string(OSSL_KDF_PARAM_SEED, NULL, 0),
                                      OSSL_PARAM_END};

static const OSSL_PARAM *prf_settable_ctx_params(void *vctx, void *provctx)
{
    return settable;
}

static int prf_get_ctx_params(void *vctx, OSSL_PARAM params[])
{
    OSSL_PARAM *p = OSSL_PARAM_locate(params, OSSL_KDF_PARAM_SIZE);
    return p == NULL || OSSL_PARAM_set_size_t(p, SIZE_MAX);
}

static const OSSL_PARAM gettable[] = {OSSL_PARAM_size_t(OSSL_KDF_PARAM_SIZE, NULL), OSSL_PARAM_END};

static const OSSL_PARAM *prf_gettable_ctx_params(void *vctx, void *provctx)
{
    return gettable;
}

const OSSL_DISPATCH p11tls_tls1_prf_functions[] = {
    {OSSL_FUNC_KDF_NEWCTX, (void (*)(void))prf_new},
    {OSSL_FUNC_KDF_DUPCTX, (void (*)(void))prf_dup},
    {OSSL_FUNC_KDF_FREECTX, (void (*)(void))prf_free},
    {OSSL_FUNC_KDF_RESET, (void (*)(void))prf_reset},
    {OSSL_FUNC_KDF_DERIVE, (void (*)(void))prf_derive},
    {OSSL_FUNC_KDF_SETTABLE_CTX_PARAMS, (void (*)(void))prf_settable_ctx_params},
    {OSSL_FUNC_KDF_SET_CTX_PARAMS, (void (*)(void))prf_set_ctx_params},
    {OSSL_FUNC_KDF_GETTABLE_CTX_PARAMS, (void (*)(void))prf_gettable_ctx_params},
    {OSSL_FUNC_KDF_GET_CTX_PARAMS, (void (*)(void))prf_get_ctx_params},
    {0, NULL}};
