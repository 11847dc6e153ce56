/* keymgmt_rsa.c - RSA key management for token keys. The private half stays in
 * the token; the public half is exported, compared (X509_check_private_key)
 * and imported (a certificate's key, for comparison and public operations).
 * Importing private material is refused, so OpenSSL keeps software keys in
 * their own provider even when p11tls is preferred. */
#include <string.h>
#include <openssl/bn.h>
#include <openssl/core_object.h>
#include <openssl/param_build.h>
#include <openssl/params.h>
#include <openssl/rsa.h>
#include "provider.h"

static OSSL_FUNC_keymgmt_new_fn rsa_new;
static OSSL_FUNC_keymgmt_free_fn rsa_free;
static OSSL_FUNC_keymgmt_load_fn rsa_load;
static OSSL_FUNC_keymgmt_has_fn rsa_has;
static OSSL_FUNC_keymgmt_match_fn rsa_match;
static OSSL_FUNC_keymgmt_import_fn rsa_import;
static OSSL_FUNC_keymgmt_import_types_fn rsa_import_types;
static OSSL_FUNC_keymgmt_export_fn rsa_export;
static OSSL_FUNC_keymgmt_export_types_fn rsa_export_types;
static OSSL_FUNC_keymgmt_get_params_fn rsa_get_params;
static OSSL_FUNC_keymgmt_gettable_params_fn rsa_gettable_params;
static OSSL_FUNC_keymgmt_query_operation_name_fn rsa_query_operation_name;

P11TLS_KEY *p11tls_key_new(P11TLS_PROV *prov, p11_pool_key *tok, EVP_PKEY *pub)
{
    P11TLS_KEY *k = OPENSSL_zalloc(sizeof(*k));
    if (k == NULL)
        return NULL;
    k->prov = prov;
    k->tok = tok;
    k->pub = pub;
    return k;
}

void p11tls_key_free(P11TLS_KEY *k)
{
    if (k == NULL)
        return;
    p11_pool_key_free(k->tok);
    EVP_PKEY_free(k->pub);
    OPENSSL_free(k);
}

EVP_PKEY *p11tls_pub_from_ne(P11TLS_PROV *prov, const unsigned char *n, size_t nlen,
                             const unsigned char *e, size_t elen)
{
    BIGNUM *bn = BN_bin2bn(n, (int)nlen, NULL), *be = BN_bin2bn(e, (int)elen, NULL);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    EVP_PKEY *pkey = NULL;

    if (bn == NULL || be == NULL || bld == NULL ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be) ||
        (params = OSSL_PARAM_BLD_to_param(bld)) == NULL)
        goto end;
    ctx = EVP_PKEY_CTX_new_from_name(prov->libctx, "RSA", NULL);
    if (ctx == NULL || EVP_PKEY_fromdata_init(ctx) <= 0 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        pkey = NULL;
end:
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    return pkey;
}

/* A key URI's token attribute names one of the pool's tokens (any member holds the key). */
static int names_member(p11_pool *p, const char *label)
{
    for (unsigned i = 0; i < p11_pool_size(p); i++)
        if (strcmp(label, p11_token_label(p11_pool_token(p, i))) == 0)
            return 1;
    return 0;
}

P11TLS_KEY *p11tls_key_from_uri(P11TLS_PROV *prov, const char *uri_text)
{
    char err[256];
    p11_uri *uri = NULL;
    p11_pool_key *tok;
    const unsigned char *n, *e;
    size_t nlen, elen;
    EVP_PKEY *pub;
    P11TLS_KEY *k;
    if (!p11tls_usable(prov))
        return NULL;
    if (!p11_uri_parse(uri_text, &uri, err, sizeof(err))) {
        ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_KEY, "p11tls: %s", err);
        return NULL;
    }
    if (uri->token != NULL && !names_member(prov->pool, uri->token)) {
        ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_KEY,
                       "p11tls: the key URI names token '%s' but p11tls is configured for "
                       "%s",
                       uri->token, p11_pool_label(prov->pool));
        p11_uri_free(uri);
        return NULL;
    }
    tok = p11_pool_key_find(prov->pool, uri);
    p11_uri_free(uri);
    if (tok == NULL)
        return NULL;
    p11_pool_key_public(tok, &n, &nlen, &e, &elen);
    pub = p11tls_pub_from_ne(prov, n, nlen, e, elen);
    if (pub == NULL || (k = p11tls_key_new(prov, tok, pub)) == NULL) {
        EVP_PKEY_free(pub);
        p11_pool_key_free(tok);
        return NULL;
    }
    return k;
}

static void *rsa_new(void *provctx)
{
    return p11tls_key_new(provctx, NULL, NULL);
}

static void rsa_free(void *keydata)
{
    p11tls_key_free(keydata);
}

/* The reference is a P11TLS_KEY made by our store or decoder: take it over. */
static void *rsa_load(const void *reference, size_t reference_sz)
{
    P11TLS_KEY *k = NULL;
    if (reference == NULL || reference_sz != sizeof(k))
        return NULL;
    memcpy(&k, reference, sizeof(k));
    return k;
}

static int rsa_has(const void *keydata, int selection)
{
    const P11TLS_KEY *k = keydata;
    int ok = 1;
    if (k == NULL)
        return 0;
    if ((selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) != 0)
        ok = ok && k->pub != NULL;
    if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0)
        ok = ok && k->tok != NULL;
    return ok;
}

static int rsa_match(const void *keydata1, const void *keydata2, int selection)
{
    const P11TLS_KEY *a = keydata1, *b = keydata2;
    if (a->pub == NULL || b->pub == NULL)
        return 0;
    /* Private halves cannot be compared; equal public halves mean one key pair. */
    return EVP_PKEY_eq(a->pub, b->pub) == 1;
}

static int rsa_import(void *keydata, int selection, const OSSL_PARAM params[])
{
    P11TLS_KEY *k = keydata;
    const OSSL_PARAM *pn, *pe;
    BIGNUM *n = NULL, *e = NULL;
    unsigned char *nb = NULL, *eb = NULL;
    int ok = 0, nl, el;

    /* Private material belongs to the provider it came from. */
    if (OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_RSA_D) != NULL)
        return 0;
    if ((selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) == 0)
        return 0;
    pn = OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_RSA_N);
    pe = OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_RSA_E);
    if (pn == NULL || pe == NULL || !OSSL_PARAM_get_BN(pn, &n) || !OSSL_PARAM_get_BN(pe, &e))
        goto end;
    nl = BN_num_bytes(n);
    el = BN_num_bytes(e);
    nb = OPENSSL_malloc(nl);
    eb = OPENSSL_malloc(el);
    if (nb == NULL || eb == NULL)
        goto end;
    BN_bn2bin(n, nb);
    BN_bn2bin(e, eb);
    EVP_PKEY_free(k->pub);
    k->pub = p11tls_pub_from_ne(k->prov, nb, nl, eb, el);
    ok = k->pub != NULL;
end:
    OPENSSL_free(nb);
    OPENSSL_free(eb);
    BN_free(n);
    BN_free(e);
    return ok;
}

static const OSSL_PARAM rsa_public_types[] = {OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, NULL, 0),
                                              OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, NULL, 0),
                                              OSSL_PARAM_END};

static const OSSL_PARAM *rsa_import_types(int selection)
{
    return (selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) ? rsa_public_types : NULL;
}

static const OSSL_PARAM *rsa_export_types(int selection)
{
    return rsa_import_types(selection);
}

static int rsa_export(void *keydata, int selection, OSSL_CALLBACK *cb, void *cbarg)
{
    P11TLS_KEY *k = keydata;
    BIGNUM *n = NULL, *e = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    int ok = 0;

    /* The private half never leaves the token. */
    if ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0 || k->pub == NULL)
        return 0;
    if ((selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY) == 0)
        return 1;
    if (!EVP_PKEY_get_bn_param(k->pub, OSSL_PKEY_PARAM_RSA_N, &n) ||
        !EVP_PKEY_get_bn_param(k->pub, OSSL_PKEY_PARAM_RSA_E, &e) ||
        (bld = OSSL_PARAM_BLD_new()) == NULL ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) ||
        (params = OSSL_PARAM_BLD_to_param(bld)) == NULL)
        goto end;
    ok = cb(params, cbarg);
end:
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(n);
    BN_free(e);
    return ok;
}

static int rsa_get_params(void *keydata, OSSL_PARAM params[])
{
    P11TLS_KEY *k = keydata;
    OSSL_PARAM *p;
    int bits;

    if (k->pub == NULL)
        return 0;
    bits = EVP_PKEY_get_bits(k->pub);
    if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_BITS)) != NULL &&
        !OSSL_PARAM_set_int(p, bits))
        return 0;
    if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_SECURITY_BITS)) != NULL &&
        !OSSL_PARAM_set_int(p, EVP_PKEY_get_security_bits(k->pub)))
        return 0;
    if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_MAX_SIZE)) != NULL &&
        !OSSL_PARAM_set_int(p, EVP_PKEY_get_size(k->pub)))
        return 0;
    if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_DEFAULT_DIGEST)) != NULL &&
        !OSSL_PARAM_set_utf8_string(p, "SHA256"))
        return 0;
    if ((p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_RSA_N)) != NULL ||
        (p = OSSL_PARAM_locate(params, OSSL_PKEY_PARAM_RSA_E)) != NULL) {
        const char *names[2] = {OSSL_PKEY_PARAM_RSA_N, OSSL_PKEY_PARAM_RSA_E};
        for (int i = 0; i < 2; i++) {
            BIGNUM *bn = NULL;
            if ((p = OSSL_PARAM_locate(params, names[i])) == NULL)
                continue;
            if (!EVP_PKEY_get_bn_param(k->pub, names[i], &bn) || !OSSL_PARAM_set_BN(p, bn)) {
                BN_free(bn);
                return 0;
            }
            BN_free(bn);
        }
    }
    return 1;
}

static const OSSL_PARAM rsa_gettable[] = {
    OSSL_PARAM_int(OSSL_PKEY_PARAM_BITS, NULL),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_SECURITY_BITS, NULL),
    OSSL_PARAM_int(OSSL_PKEY_PARAM_MAX_SIZE, NULL),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_DEFAULT_DIGEST, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_N, NULL, 0),
    OSSL_PARAM_BN(OSSL_PKEY_PARAM_RSA_E, NULL, 0),
    OSSL_PARAM_END};

static const OSSL_PARAM *rsa_gettable_params(void *provctx)
{
    return rsa_gettable;
}

static const char *rsa_query_operation_name(int operation_id)
{
    return "RSA";
}

const OSSL_DISPATCH p11tls_rsa_keymgmt_functions[] = {
    {OSSL_FUNC_KEYMGMT_NEW, (void (*)(void))rsa_new},
    {OSSL_FUNC_KEYMGMT_FREE, (void (*)(void))rsa_free},
    {OSSL_FUNC_KEYMGMT_LOAD, (void (*)(void))rsa_load},
    {OSSL_FUNC_KEYMGMT_HAS, (void (*)(void))rsa_has},
    {OSSL_FUNC_KEYMGMT_MATCH, (void (*)(void))rsa_match},
    {OSSL_FUNC_KEYMGMT_IMPORT, (void (*)(void))rsa_import},
    {OSSL_FUNC_KEYMGMT_IMPORT_TYPES, (void (*)(void))rsa_import_types},
    {OSSL_FUNC_KEYMGMT_EXPORT, (void (*)(void))rsa_export},
    {OSSL_FUNC_KEYMGMT_EXPORT_TYPES, (void (*)(void))rsa_export_types},
    {OSSL_FUNC_KEYMGMT_GET_PARAMS, (void (*)(void))rsa_get_params},
    {OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, (void (*)(void))rsa_gettable_params},
    {OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, (void (*)(void))rsa_query_operation_name},
    {0, NULL}};
