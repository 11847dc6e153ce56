/* kdf_tls13.c - the TLS13-KDF KDF that libssl calls for every step of the TLS 1.3
 * key schedule (RFC 8446 7.1), run in the token (pkcs11/tls13.c):
 *   EXTRACT_ONLY  HKDF-Extract: salt (param "salt") is the previous secret's handle,
 *                 from which the "derived" salt is made in the token first; the input
 *                 ("key") is an (EC)DHE secret (bytes, imported), nothing (zeros),
 *                 or, for the early secret (no salt), a resumption PSK's handle;
 *                 the output is a new secret's handle.
 *   EXPAND_ONLY   HKDF-Expand-Label(secret, prefix||label, data): the secret is a
 *                 handle; the output is a new secret's handle, except for the
 *                 labels whose output leaves the token by design ("key", "iv":
 *                 record-layer keys; "exporter": RFC 8446 exporter output).
 * Handles are as long as the hash (32 bytes for SHA-256 suites, 48 for SHA-384).
 * A PSK that is not a p11tls handle (an external PSK) is not supported. */
#include <string.h>
#include <strings.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include "provider.h"

static OSSL_FUNC_kdf_newctx_fn k13_new;
static OSSL_FUNC_kdf_dupctx_fn k13_dup;
static OSSL_FUNC_kdf_freectx_fn k13_free;
static OSSL_FUNC_kdf_reset_fn k13_reset;
static OSSL_FUNC_kdf_derive_fn k13_derive;
static OSSL_FUNC_kdf_settable_ctx_params_fn k13_settable_ctx_params;
static OSSL_FUNC_kdf_set_ctx_params_fn k13_set_ctx_params;
static OSSL_FUNC_kdf_gettable_ctx_params_fn k13_gettable_ctx_params;
static OSSL_FUNC_kdf_get_ctx_params_fn k13_get_ctx_params;

#define FIELD_MAX 1024

typedef struct {
    P11TLS_PROV *prov;
    int mode; /* EVP_KDF_HKDF_MODE_* */
    int hash; /* -1 unset, else p11_prf_hash */
    unsigned char *key, *salt, *prefix, *label, *data;
    size_t key_len, salt_len, prefix_len, label_len, data_len;
    int has_key, has_salt;
} K13CTX;

static void *k13_new(void *provctx)
{
    K13CTX *c = OPENSSL_zalloc(sizeof(*c));
    if (c != NULL) {
        c->prov = provctx;
        c->hash = -1;
    }
    return c;
}

static void k13_reset(void *vctx)
{
    K13CTX *c = vctx;
    P11TLS_PROV *prov = c->prov;
    OPENSSL_clear_free(c->key, c->key_len);
    OPENSSL_clear_free(c->salt, c->salt_len);
    OPENSSL_free(c->prefix);
    OPENSSL_free(c->label);
    OPENSSL_free(c->data);
    memset(c, 0, sizeof(*c));
    c->prov = prov;
    c->hash = -1;
}

static void k13_free(void *vctx)
{
    if (vctx == NULL)
        return;
    k13_reset(vctx);
    OPENSSL_free(vctx);
}

static int dup_field(unsigned char **dst, const unsigned char *src, size_t len)
{
    *dst = NULL;
    if (src == NULL)
        return 1;
    *dst = len > 0 ? OPENSSL_memdup(src, len) : OPENSSL_zalloc(1);
    return *dst != NULL;
}

static void *k13_dup(void *vctx)
{
    K13CTX *c = vctx, *d = OPENSSL_memdup(c, sizeof(*c));
    if (d == NULL)
        return NULL;
    if (!dup_field(&d->key, c->key, c->key_len) || !dup_field(&d->salt, c->salt, c->salt_len) ||
        !dup_field(&d->prefix, c->prefix, c->prefix_len) ||
        !dup_field(&d->label, c->label, c->label_len) ||
        !dup_field(&d->data, c->data, c->data_len)) {
        k13_free(d);
        return NULL;
    }
    return d;
}

/* SHA-256("") and SHA-384("") (FIPS 180-4): the context of the "derived" salt. */
static const unsigned char empty_sha256[32] = {
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55};
static const unsigned char empty_sha384[48] = {
    0x38, 0xb0, 0x60, 0xa7, 0x51, 0xac, 0x96, 0x38, 0x4c, 0xd9, 0x32, 0x7e, 0xb1, 0xb1, 0xe3, 0x6a,
    0x21, 0xfd, 0xb7, 0x11, 0x14, 0xbe, 0x07, 0x43, 0x4c, 0x0c, 0xc7, 0xbf, 0x63, 0xf6, 0xe1, 0xda,
    0x27, 0x4e, 0xde, 0xbf, 0xe7, 0x6f, 0x65, 0xfb, 0xd5, 0x1a, 0xd2, 0xf1, 0x48, 0x98, 0xb9, 0x5b};

/* HkdfLabel (RFC 8446 7.1): length, "tls13 " label, context. */
static size_t hkdf_label(unsigned char *out, size_t outlen, const unsigned char *prefix,
                         size_t plen, const unsigned char *label, size_t llen,
                         const unsigned char *ctx, size_t clen)
{
    size_t n = 0;
    out[n++] = (unsigned char)(outlen >> 8);
    out[n++] = (unsigned char)outlen;
    out[n++] = (unsigned char)(plen + llen);
    if (plen > 0)
        memcpy(out + n, prefix, plen);
    n += plen;
    if (llen > 0)
        memcpy(out + n, label, llen);
    n += llen;
    out[n++] = (unsigned char)clen;
    if (clen > 0)
        memcpy(out + n, ctx, clen);
    return n + clen;
}

static int is_label(const K13CTX *c, const char *l)
{
    return c->label_len == strlen(l) && memcmp(c->label, l, c->label_len) == 0;
}

/* Secrets libssl uses only while the handshake runs, on the server and the client
 * alike: they get handles that only this process's cache resolves (no wrap). The
 * others live as long as the connection (application traffic secrets for KeyUpdate,
 * exporter and resumption master secrets, early exporter) or leave the process (a
 * ticket's PSK, "resumption"): they get wrapped handles. */
static int local_label(const K13CTX *c)
{
    static const char *const hs_only[] = {"c hs traffic", "s hs traffic", "finished",
                                          "res binder",   "ext binder",   "c e traffic"};
    for (size_t i = 0; i < sizeof(hs_only) / sizeof(hs_only[0]); i++)
        if (is_label(c, hs_only[i]))
            return 1;
    return 0;
}

static int k13_derive(void *vctx, unsigned char *key, size_t keylen, const OSSL_PARAM params[])
{
    K13CTX *c = vctx;
    p11_pool *t = c->prov->pool;
    size_t hl;
    unsigned char info[2 + 1 + 255 + 1 + 255];
    size_t ilen;

    if (!p11tls_usable(c->prov) || !k13_set_ctx_params(c, params))
        return 0;
    if (c->hash < 0) {
        ERR_raise(ERR_LIB_PROV, PROV_R_MISSING_MESSAGE_DIGEST);
        return 0;
    }
    hl = c->hash == P11_PRF_SHA384 ? 48 : 32;
    if (c->prefix_len + c->label_len > 255 || c->data_len > 255) {
        ERR_raise(ERR_LIB_PROV, PROV_R_INVALID_DATA);
        return 0;
    }
    if (c->mode == EVP_KDF_HKDF_MODE_EXTRACT_ONLY) {
        if (keylen != hl) {
            ERR_raise_data(ERR_LIB_PROV, PROV_R_LENGTH_TOO_LARGE,
                           "p11tls: a TLS 1.3 secret is %zu bytes, not %zu", hl, keylen);
            return 0;
        }
        if (c->has_salt && c->salt_len != hl) {
            ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_SALT_LENGTH,
                           "p11tls: TLS13-KDF salt of %zu bytes is not a secret's handle",
                           c->salt_len);
            return 0;
        }
        ilen = 0;
        if (c->has_salt) {
            /* the "derived" salt's HkdfLabel: its context is Hash(""), a constant */
            ilen = hkdf_label(info, hl, c->prefix, c->prefix_len, c->label, c->label_len,
                              c->hash == P11_PRF_SHA384 ? empty_sha384 : empty_sha256, hl);
        }
        /* the early, handshake and master secrets serve the handshake only */
        return p11_pool_tls13_extract(
            t, (p11_prf_hash)c->hash, c->has_salt ? c->salt : NULL, info, ilen,
            c->has_key ? c->key : NULL, c->has_key ? c->key_len : 0,
            P11_TLS13_LOCAL | (c->has_key && !c->has_salt ? P11_TLS13_IKM_HANDLE : 0), key);
    }
    if (c->mode == EVP_KDF_HKDF_MODE_EXPAND_ONLY) {
        int export = is_label(c, "key") || is_label(c, "iv") || is_label(c, "exporter");
        if (!c->has_key || c->key_len != hl) {
            ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_KEY,
                           "p11tls: TLS13-KDF secret of %zu bytes is not a secret's handle",
                           c->key_len);
            return 0;
        }
        if (keylen == 0 || keylen > 255 * hl || (!export && keylen != hl)) {
            ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_KEY_LENGTH,
                           "p11tls: TLS 1.3 output of %zu bytes", keylen);
            return 0;
        }
        ilen = hkdf_label(info, keylen, c->prefix, c->prefix_len, c->label, c->label_len, c->data,
                          c->data_len);
        return p11_pool_tls13_expand(
            t, (p11_prf_hash)c->hash, c->key, info, ilen,
            export ? 0 : P11_TLS13_SECRET | (local_label(c) ? P11_TLS13_LOCAL : 0), key, keylen);
    }
    ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_MODE,
                   "p11tls: TLS13-KDF mode must be EXTRACT_ONLY or EXPAND_ONLY");
    return 0;
}

static int set_bytes(const OSSL_PARAM *p, unsigned char **dst, size_t *len, int secret)
{
    if (secret)
        OPENSSL_clear_free(*dst, *len);
    else
        OPENSSL_free(*dst);
    *dst = NULL;
    *len = 0;
    if (!OSSL_PARAM_get_octet_string(p, (void **)dst, 0, len))
        return 0;
    if (*len > FIELD_MAX) {
        ERR_raise(ERR_LIB_PROV, PROV_R_INVALID_DATA);
        return 0;
    }
    return 1;
}

static int k13_set_ctx_params(void *vctx, const OSSL_PARAM params[])
{
    K13CTX *c = vctx;
    const OSSL_PARAM *p;

    if (params == NULL)
        return 1;
    if ((p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_DIGEST)) != NULL) {
        const char *name = NULL;
        if (!OSSL_PARAM_get_utf8_string_ptr(p, &name))
            return 0;
        if (strcasecmp(name, "SHA2-256") == 0 || strcasecmp(name, "SHA256") == 0)
            c->hash = P11_PRF_SHA256;
        else if (strcasecmp(name, "SHA2-384") == 0 || strcasecmp(name, "SHA384") == 0)
            c->hash = P11_PRF_SHA384;
        else {
            ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_DIGEST,
                           "p11tls: TLS13-KDF digest '%s' is not supported (SHA2-256, SHA2-384)",
                           name);
            return 0;
        }
    }
    if ((p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_MODE)) != NULL) {
        if (p->data_type == OSSL_PARAM_UTF8_STRING) {
            const char *m = p->data;
            if (strcasecmp(m, "EXTRACT_ONLY") == 0)
                c->mode = EVP_KDF_HKDF_MODE_EXTRACT_ONLY;
            else if (strcasecmp(m, "EXPAND_ONLY") == 0)
                c->mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
            else
                c->mode = -1;
        } else if (!OSSL_PARAM_get_int(p, &c->mode)) {
            return 0;
        }
    }
    if ((p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_KEY)) != NULL) {
        if (!set_bytes(p, &c->key, &c->key_len, 1))
            return 0;
        c->has_key = 1;
    }
    if ((p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_SALT)) != NULL) {
        if (!set_bytes(p, &c->salt, &c->salt_len, 1))
            return 0;
        c->has_salt = 1;
    }
    if ((p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_PREFIX)) != NULL &&
        !set_bytes(p, &c->prefix, &c->prefix_len, 0))
        return 0;
    if ((p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_LABEL)) != NULL &&
        !set_bytes(p, &c->label, &c->label_len, 0))
        return 0;
    if ((p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_DATA)) != NULL &&
        !set_bytes(p, &c->data, &c->data_len, 0))
        return 0;
    return 1;
}

static const OSSL_PARAM settable[] = {OSSL_PARAM_int(OSSL_KDF_PARAM_MODE, NULL),
                                      OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_MODE, NULL, 0),
                                      OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_PROPERTIES, NULL, 0),
                                      OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_DIGEST, NULL, 0),
                                      OSSL_PARAM_octet_string(OSSL_KDF_PARAM_KEY, NULL, 0),
                                      OSSL_PARAM_octet_string(OSSL_KDF_PARAM_SALT, NULL, 0),
                                      OSSL_PARAM_octet_string(OSSL_KDF_PARAM_PREFIX, NULL, 0),
                                      OSSL_PARAM_octet_string(OSSL_KDF_PARAM_LABEL, NULL, 0),
                                      OSSL_PARAM_octet_string(OSSL_KDF_PARAM_DATA, NULL, 0),
                                      OSSL_PARAM_END};

static const OSSL_PARAM *k13_settable_ctx_params(void *vctx, void *provctx)
{
    return settable;
}

static int k13_get_ctx_params(void *vctx, OSSL_PARAM params[])
{
    K13CTX *c = vctx;
    OSSL_PARAM *p = OSSL_PARAM_locate(params, OSSL_KDF_PARAM_SIZE);
    size_t sz = c->mode == EVP_KDF_HKDF_MODE_EXTRACT_ONLY ? (c->hash == P11_PRF_SHA384 ? 48 : 32)
                                                          : SIZE_MAX;
    return p == NULL || OSSL_PARAM_set_size_t(p, sz);
}

static const OSSL_PARAM gettable[] = {OSSL_PARAM_size_t(OSSL_KDF_PARAM_SIZE, NULL), OSSL_PARAM_END};

static const OSSL_PARAM *k13_gettable_ctx_params(void *vctx, void *provctx)
{
    return gettable;
}

const OSSL_DISPATCH p11tls_tls13_kdf_functions[] = {
    {OSSL_FUNC_KDF_NEWCTX, (void (*)(void))k13_new},
    {OSSL_FUNC_KDF_DUPCTX, (void (*)(void))k13_dup},
    {OSSL_FUNC_KDF_FREECTX, (void (*)(void))k13_free},
    {OSSL_FUNC_KDF_RESET, (void (*)(void))k13_reset},
    {OSSL_FUNC_KDF_DERIVE, (void (*)(void))k13_derive},
    {OSSL_FUNC_KDF_SETTABLE_CTX_PARAMS, (void (*)(void))k13_settable_ctx_params},
    {OSSL_FUNC_KDF_SET_CTX_PARAMS, (void (*)(void))k13_set_ctx_params},
    {OSSL_FUNC_KDF_GETTABLE_CTX_PARAMS, (void (*)(void))k13_gettable_ctx_params},
    {OSSL_FUNC_KDF_GET_CTX_PARAMS, (void (*)(void))k13_get_ctx_params},
    {0, NULL}};
