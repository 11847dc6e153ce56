/* exch_ecdh.c - the ECDH key exchange for keys of keymgmt_ec.c. With a key pair in
 * the token, the shared secret is derived there (pkcs11/ecdh.c) and the caller gets a
 * handle of the secret's length, which p11tls's TLS1-PRF and TLS13-KDF take in its
 * place; with a software key pair the default provider derives it (in p11tls's own
 * library context), as before. */
#include <string.h>
#include <openssl/params.h>
#include "provider.h"

static OSSL_FUNC_keyexch_newctx_fn ecdh_newctx;
static OSSL_FUNC_keyexch_init_fn ecdh_init;
static OSSL_FUNC_keyexch_set_peer_fn ecdh_set_peer;
static OSSL_FUNC_keyexch_derive_fn ecdh_derive;
static OSSL_FUNC_keyexch_freectx_fn ecdh_freectx;
static OSSL_FUNC_keyexch_dupctx_fn ecdh_dupctx;
static OSSL_FUNC_keyexch_set_ctx_params_fn ecdh_set_ctx_params;
static OSSL_FUNC_keyexch_settable_ctx_params_fn ecdh_settable_ctx_params;

typedef struct {
    P11TLS_PROV *prov;
    P11TLS_EC *key, *peer; /* owned by the caller's EVP_PKEYs */
} ECDHCTX;

static void *ecdh_newctx(void *provctx)
{
    ECDHCTX *c = OPENSSL_zalloc(sizeof(*c));
    if (c != NULL)
        c->prov = provctx;
    return c;
}

static void ecdh_freectx(void *vctx)
{
    OPENSSL_free(vctx);
}

static void *ecdh_dupctx(void *vctx)
{
    return OPENSSL_memdup(vctx, sizeof(ECDHCTX));
}

static int ecdh_init(void *vctx, void *vkey, const OSSL_PARAM params[])
{
    ECDHCTX *c = vctx;
    P11TLS_EC *k = vkey;
    if (k == NULL || k->sw == NULL || (k->sel & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) == 0) {
        ERR_raise(ERR_LIB_PROV, PROV_R_NOT_A_PRIVATE_KEY);
        return 0;
    }
    c->key = k;
    return ecdh_set_ctx_params(c, params);
}

static int ecdh_set_peer(void *vctx, void *vpeer)
{
    ECDHCTX *c = vctx;
    P11TLS_EC *p = vpeer;
    if (p == NULL || p->sw == NULL || (p->sel & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) == 0 ||
        EVP_PKEY_parameters_eq(c->key->sw, p->sw) != 1) {
        ERR_raise(ERR_LIB_PROV, PROV_R_NOT_A_PUBLIC_KEY);
        return 0;
    }
    c->peer = p;
    return 1;
}

static int ecdh_derive(void *vctx, unsigned char *secret, size_t *secretlen, size_t outlen)
{
    ECDHCTX *c = vctx;
    size_t flen;

    if (c->key == NULL || c->peer == NULL) {
        ERR_raise(ERR_LIB_PROV, PROV_R_MISSING_KEY);
        return 0;
    }
    flen = ((size_t)EVP_PKEY_get_bits(c->key->sw) + 7) / 8;
    if (c->key->tok != NULL) {
        unsigned char pt[1 + 2 * 66];
        size_t ptlen = 0;
        if (secret == NULL) {
            *secretlen = flen;
            return 1;
        }
        if (outlen < flen) {
            ERR_raise(ERR_LIB_PROV, PROV_R_OUTPUT_BUFFER_TOO_SMALL);
            return 0;
        }
        if (!p11tls_usable(c->prov) ||
            !EVP_PKEY_get_octet_string_param(c->peer->sw, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, pt,
                                             sizeof(pt), &ptlen) ||
            !p11_pool_ecdh_derive(c->key->prov->pool, c->key->tok, pt, ptlen, secret))
            return 0;
        *secretlen = flen;
        return 1;
    }
    /* a software pair: the default provider's ECDH */
    {
        EVP_PKEY_CTX *d = EVP_PKEY_CTX_new_from_pkey(c->prov->libctx, c->key->sw, NULL);
        size_t len = secret != NULL ? outlen : 0;
        int ok = d != NULL && EVP_PKEY_derive_init(d) > 0 &&
                 EVP_PKEY_derive_set_peer(d, c->peer->sw) > 0 &&
                 EVP_PKEY_derive(d, secret, secret != NULL ? &len : secretlen) > 0;
        if (ok && secret != NULL)
            *secretlen = len;
        EVP_PKEY_CTX_free(d);
        return ok;
    }
}

static int ecdh_set_ctx_params(void *vctx, const OSSL_PARAM params[])
{
    const OSSL_PARAM *p;
    if (params == NULL)
        return 1;
    /* Plain ECDH only: a cofactor mode or a KDF would change what the secret is. */
    if ((p = OSSL_PARAM_locate_const(params, OSSL_EXCHANGE_PARAM_KDF_TYPE)) != NULL) {
        const char *v = NULL;
        if (!OSSL_PARAM_get_utf8_string_ptr(p, &v) || (v != NULL && *v != '\0'))
            return 0;
    }
    return 1;
}

static const OSSL_PARAM *ecdh_settable_ctx_params(void *vctx, void *provctx)
{
    static const OSSL_PARAM s[] = {OSSL_PARAM_utf8_string(OSSL_EXCHANGE_PARAM_KDF_TYPE, NULL, 0),
                                   OSSL_PARAM_END};
    return s;
}

const OSSL_DISPATCH p11tls_ecdh_keyexch_functions[] = {
    {OSSL_FUNC_KEYEXCH_NEWCTX, (void (*)(void))ecdh_newctx},
    {OSSL_FUNC_KEYEXCH_INIT, (void (*)(void))ecdh_init},
    {OSSL_FUNC_KEYEXCH_SET_PEER, (void (*)(void))ecdh_set_peer},
    {OSSL_FUNC_KEYEXCH_DERIVE, (void (*)(void))ecdh_derive},
    {OSSL_FUNC_KEYEXCH_FREECTX, (void (*)(void))ecdh_freectx},
    {OSSL_FUNC_KEYEXCH_DUPCTX, (void (*)(void))ecdh_dupctx},
    {OSSL_FUNC_KEYEXCH_SET_CTX_PARAMS, (void (*)(void))ecdh_set_ctx_params},
    {OSSL_FUNC_KEYEXCH_SETTABLE_CTX_PARAMS, (void (*)(void))ecdh_settable_ctx_params},
    {0, NULL}};
