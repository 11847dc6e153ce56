/* keymgmt_ec.c - EC key management for ECDHE key shares. A key pair that libssl
 * generates for a group the token can do (P-256, P-384, P-521; option 'ecdhe') is an
 * ephemeral pair in the token: its private half never leaves it, its public point is
 * what the peer gets. Every other EC key is a software key held in p11tls's own
 * library context (the default provider): a peer's key share, a certificate's key,
 * a pair for a group the token lacks, other EC users' keys; so they keep working as
 * before. Importing a private key is refused, so OpenSSL keeps software key pairs in
 * their own provider even when p11tls is preferred. */
#include <string.h>
#include <openssl/core_object.h>
#include <openssl/param_build.h>
#include <openssl/params.h>
#include "provider.h"

static OSSL_FUNC_keymgmt_new_fn ec_new;
static OSSL_FUNC_keymgmt_free_fn ec_free;
static OSSL_FUNC_keymgmt_has_fn ec_has;
static OSSL_FUNC_keymgmt_match_fn ec_match;
static OSSL_FUNC_keymgmt_validate_fn ec_validate;
static OSSL_FUNC_keymgmt_import_fn ec_import;
static OSSL_FUNC_keymgmt_import_types_fn ec_import_types;
static OSSL_FUNC_keymgmt_export_fn ec_export;
static OSSL_FUNC_keymgmt_export_types_fn ec_export_types;
static OSSL_FUNC_keymgmt_get_params_fn ec_get_params;
static OSSL_FUNC_keymgmt_gettable_params_fn ec_gettable_params;
static OSSL_FUNC_keymgmt_set_params_fn ec_set_params;
static OSSL_FUNC_keymgmt_settable_params_fn ec_settable_params;
static OSSL_FUNC_keymgmt_gen_init_fn ec_gen_init;
static OSSL_FUNC_keymgmt_gen_set_template_fn ec_gen_set_template;
static OSSL_FUNC_keymgmt_gen_set_params_fn ec_gen_set_params;
static OSSL_FUNC_keymgmt_gen_settable_params_fn ec_gen_settable_params;
static OSSL_FUNC_keymgmt_gen_fn ec_gen;
static OSSL_FUNC_keymgmt_gen_cleanup_fn ec_gen_cleanup;
static OSSL_FUNC_keymgmt_query_operation_name_fn ec_query_operation_name;

#define SEL_PAIR (OSSL_KEYMGMT_SELECT_PRIVATE_KEY | OSSL_KEYMGMT_SELECT_PUBLIC_KEY)

static void *ec_new(void *provctx)
{
    P11TLS_EC *k = OPENSSL_zalloc(sizeof(*k));
    if (k != NULL)
        k->prov = provctx;
    return k;
}

static void ec_free(void *keydata)
{
    P11TLS_EC *k = keydata;
    if (k == NULL)
        return;
    EVP_PKEY_free(k->sw);
    p11_eckey_free(k->tok);
    OPENSSL_free(k);
}

/* The default provider's EC key management (its parameter lists). */
static EVP_KEYMGMT *soft_keymgmt(P11TLS_PROV *prov)
{
    return EVP_KEYMGMT_fetch(prov->libctx, "EC", NULL);
}

static int evp_selection(int sel)
{
    if (sel & OSSL_KEYMGMT_SELECT_PRIVATE_KEY)
        return EVP_PKEY_KEYPAIR;
    if (sel & OSSL_KEYMGMT_SELECT_PUBLIC_KEY)
        return EVP_PKEY_PUBLIC_KEY;
    return EVP_PKEY_KEY_PARAMETERS;
}

/* A software key from params, in p11tls's own library context. */
static EVP_PKEY *soft_fromdata(P11TLS_PROV *prov, int sel, const OSSL_PARAM params[])
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(prov->libctx, "EC", NULL);
    EVP_PKEY *pkey = NULL;
    if (ctx == NULL || EVP_PKEY_fromdata_init(ctx) <= 0 ||
        EVP_PKEY_fromdata(ctx, &pkey, evp_selection(sel), (OSSL_PARAM *)params) <= 0)
        pkey = NULL;
    EVP_PKEY_CTX_free(ctx);
    return pkey;
}

/* A software key of a named group: parameters only, or with the public point. */
static EVP_PKEY *soft_group_key(P11TLS_PROV *prov, const char *group, const unsigned char *pt,
                                size_t ptlen)
{
    OSSL_PARAM p[3];
    int n = 0;
    p[n++] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)group, 0);
    if (pt != NULL)
        p[n++] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, (void *)pt, ptlen);
    p[n] = OSSL_PARAM_construct_end();
    return soft_fromdata(prov, pt != NULL ? OSSL_KEYMGMT_SELECT_PUBLIC_KEY : 0, p);
}

static int ec_has(const void *keydata, int selection)
{
    const P11TLS_EC *k = keydata;
    if (k == NULL)
        return 0;
    if ((selection & OSSL_KEYMGMT_SELECT_ALL_PARAMETERS) != 0 && k->sw == NULL)
        return 0;
    return (selection & SEL_PAIR & ~k->sel) == 0;
}

static int ec_match(const void *keydata1, const void *keydata2, int selection)
{
    const P11TLS_EC *a = keydata1, *b = keydata2;
    if (a->sw == NULL || b->sw == NULL)
        return 0;
    if ((selection & SEL_PAIR) != 0)
        return EVP_PKEY_eq(a->sw, b->sw) == 1; /* private halves: by their public ones */
    return EVP_PKEY_parameters_eq(a->sw, b->sw) == 1;
}

static int ec_validate(const void *keydata, int selection, int checktype)
{
    return ec_has(keydata, selection);
}

static int ec_import(void *keydata, int selection, const OSSL_PARAM params[])
{
    P11TLS_EC *k = keydata;
    EVP_PKEY *pkey;

    /* Private material belongs to the provider it came from. */
    if (k->tok != NULL || OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_PRIV_KEY) != NULL ||
        (selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0)
        return 0;
    if ((pkey = soft_fromdata(k->prov, selection, params)) == NULL)
        return 0;
    EVP_PKEY_free(k->sw);
    k->sw = pkey;
    k->sel = selection & OSSL_KEYMGMT_SELECT_PUBLIC_KEY;
    return 1;
}

static const OSSL_PARAM ec_types[] = {
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_PKEY_PARAM_PUB_KEY, NULL, 0), OSSL_PARAM_END};

static const OSSL_PARAM *ec_import_types(int selection)
{
    return ec_types;
}

static const OSSL_PARAM *ec_export_types(int selection)
{
    return ec_types;
}

static int ec_export(void *keydata, int selection, OSSL_CALLBACK *cb, void *cbarg)
{
    P11TLS_EC *k = keydata;
    OSSL_PARAM *params = NULL;
    int ok;

    /* The private half of a token key never leaves the token. */
    if (k->sw == NULL || ((selection & OSSL_KEYMGMT_SELECT_PRIVATE_KEY) != 0 && k->tok != NULL))
        return 0;
    if (EVP_PKEY_todata(k->sw, evp_selection(selection & (k->sel | ~SEL_PAIR)), &params) <= 0)
        return 0;
    ok = cb(params, cbarg);
    OSSL_PARAM_free(params);
    return ok;
}

static int ec_get_params(void *keydata, OSSL_PARAM params[])
{
    P11TLS_EC *k = keydata;
    return k->sw != NULL && EVP_PKEY_get_params(k->sw, params);
}

static const OSSL_PARAM *ec_gettable_params(void *provctx)
{
    EVP_KEYMGMT *km = soft_keymgmt(provctx);
    const OSSL_PARAM *p = km != NULL ? EVP_KEYMGMT_gettable_params(km) : NULL;
    EVP_KEYMGMT_free(km); /* (the list is static in the default provider) */
    return p;
}

/* A peer's key share: its encoded point on parameters libssl made (the point is
 * checked on the curve by the default provider: a bad one fails here, and libssl
 * sends the alert TLS demands). */
static int ec_set_params(void *keydata, const OSSL_PARAM params[])
{
    P11TLS_EC *k = keydata;
    const OSSL_PARAM *p = OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY);
    if (k->sw == NULL || k->tok != NULL)
        return p == NULL;
    if (!EVP_PKEY_set_params(k->sw, (OSSL_PARAM *)params))
        return 0;
    if (p != NULL)
        k->sel |= OSSL_KEYMGMT_SELECT_PUBLIC_KEY;
    return 1;
}

static const OSSL_PARAM *ec_settable_params(void *provctx)
{
    EVP_KEYMGMT *km = soft_keymgmt(provctx);
    const OSSL_PARAM *p = km != NULL ? EVP_KEYMGMT_settable_params(km) : NULL;
    EVP_KEYMGMT_free(km);
    return p;
}

/* ------------------------------------------------------------- generation */

typedef struct {
    P11TLS_PROV *prov;
    int selection;
    char group[64];
} ECGEN;

static void *ec_gen_init(void *provctx, int selection, const OSSL_PARAM params[])
{
    ECGEN *g = OPENSSL_zalloc(sizeof(*g));
    if (g == NULL)
        return NULL;
    g->prov = provctx;
    g->selection = selection;
    if (!ec_gen_set_params(g, params)) {
        OPENSSL_free(g);
        return NULL;
    }
    return g;
}

static int ec_gen_set_params(void *genctx, const OSSL_PARAM params[])
{
    ECGEN *g = genctx;
    const OSSL_PARAM *p;
    char *dst = g->group;
    if (params == NULL)
        return 1;
    if ((p = OSSL_PARAM_locate_const(params, OSSL_PKEY_PARAM_GROUP_NAME)) != NULL &&
        !OSSL_PARAM_get_utf8_string(p, &dst, sizeof(g->group)))
        return 0;
    return 1; /* (encoding, point format: named curves, uncompressed points) */
}

static const OSSL_PARAM *ec_gen_settable_params(void *genctx, void *provctx)
{
    static const OSSL_PARAM s[] = {OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, NULL, 0),
                                   OSSL_PARAM_utf8_string(OSSL_PKEY_PARAM_EC_ENCODING, NULL, 0),
                                   OSSL_PARAM_END};
    return s;
}

static int ec_gen_set_template(void *genctx, void *templ)
{
    ECGEN *g = genctx;
    P11TLS_EC *t = templ;
    size_t len = 0;
    return t != NULL && t->sw != NULL &&
           EVP_PKEY_get_group_name(t->sw, g->group, sizeof(g->group), &len);
}

/* Is the key share to be made in the token? 1 yes, 0 no (software), -1 refused. */
static int in_token(P11TLS_PROV *prov, int curve)
{
    int ok;
    if (prov->ecdhe == P11TLS_ECDHE_SOFTWARE || prov->pool == NULL)
        return 0;
    /* A handle is of use only where libssl's key schedule is p11tls's. */
    ERR_set_mark();
    ok = prov->failure == NULL && prov->min_level > P11_LEVEL_NONE && p11tls_routing_ok(prov);
    ERR_pop_to_mark();
    if (!ok)
        return 0;
    if (curve >= 0 && p11_pool_caps(prov->pool)->ecdh[curve])
        return 1;
    return prov->ecdhe == P11TLS_ECDHE_REQUIRE ? -1 : 0;
}

static void *ec_gen(void *genctx, OSSL_CALLBACK *cb, void *cbarg)
{
    ECGEN *g = genctx;
    P11TLS_EC *k;
    int curve = p11_curve_from_name(g->group), where;

    if (g->group[0] == '\0') {
        ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_CURVE, "p11tls: EC key without a group");
        return NULL;
    }
    if ((k = ec_new(g->prov)) == NULL)
        return NULL;
    if ((g->selection & OSSL_KEYMGMT_SELECT_KEYPAIR) == 0) {
        k->sw = soft_group_key(g->prov, g->group, NULL, 0);
    } else if ((where = in_token(g->prov, curve)) > 0) {
        size_t plen;
        const unsigned char *pt;
        if ((k->tok = p11_pool_ecdh_keygen(g->prov->pool, (p11_curve)curve)) != NULL) {
            pt = p11_eckey_point(k->tok, &plen);
            k->sw = soft_group_key(g->prov, g->group, pt, plen);
            k->sel = SEL_PAIR;
        }
    } else if (where < 0) {
        ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_CURVE,
                       "p11tls: an ECDHE key share of group '%s' would be made in software, and "
                       "'ecdhe = require' refuses that (the token does: %s)",
                       g->group, "see 'openssl list -providers -verbose'");
    } else {
        k->sw = EVP_PKEY_Q_keygen(g->prov->libctx, NULL, "EC", g->group);
        k->sel = SEL_PAIR;
    }
    if (k->sw == NULL) {
        ec_free(k);
        return NULL;
    }
    return k;
}

static void ec_gen_cleanup(void *genctx)
{
    OPENSSL_free(genctx);
}

static const char *ec_query_operation_name(int operation_id)
{
    return operation_id == OSSL_OP_KEYEXCH ? "ECDH" : "ECDSA";
}

const OSSL_DISPATCH p11tls_ec_keymgmt_functions[] = {
    {OSSL_FUNC_KEYMGMT_NEW, (void (*)(void))ec_new},
    {OSSL_FUNC_KEYMGMT_FREE, (void (*)(void))ec_free},
    {OSSL_FUNC_KEYMGMT_HAS, (void (*)(void))ec_has},
    {OSSL_FUNC_KEYMGMT_MATCH, (void (*)(void))ec_match},
    {OSSL_FUNC_KEYMGMT_VALIDATE, (void (*)(void))ec_validate},
    {OSSL_FUNC_KEYMGMT_IMPORT, (void (*)(void))ec_import},
    {OSSL_FUNC_KEYMGMT_IMPORT_TYPES, (void (*)(void))ec_import_types},
    {OSSL_FUNC_KEYMGMT_EXPORT, (void (*)(void))ec_export},
    {OSSL_FUNC_KEYMGMT_EXPORT_TYPES, (void (*)(void))ec_export_types},
    {OSSL_FUNC_KEYMGMT_GET_PARAMS, (void (*)(void))ec_get_params},
    {OSSL_FUNC_KEYMGMT_GETTABLE_PARAMS, (void (*)(void))ec_gettable_params},
    {OSSL_FUNC_KEYMGMT_SET_PARAMS, (void (*)(void))ec_set_params},
    {OSSL_FUNC_KEYMGMT_SETTABLE_PARAMS, (void (*)(void))ec_settable_params},
    {OSSL_FUNC_KEYMGMT_GEN_INIT, (void (*)(void))ec_gen_init},
    {OSSL_FUNC_KEYMGMT_GEN_SET_TEMPLATE, (void (*)(void))ec_gen_set_template},
    {OSSL_FUNC_KEYMGMT_GEN_SET_PARAMS, (void (*)(void))ec_gen_set_params},
    {OSSL_FUNC_KEYMGMT_GEN_SETTABLE_PARAMS, (void (*)(void))ec_gen_settable_params},
    {OSSL_FUNC_KEYMGMT_GEN, (void (*)(void))ec_gen},
    {OSSL_FUNC_KEYMGMT_GEN_CLEANUP, (void (*)(void))ec_gen_cleanup},
    {OSSL_FUNC_KEYMGMT_QUERY_OPERATION_NAME, (void (*)(void))ec_query_operation_name},
    {0, NULL}};

/* ---------------------------------------------- 'ecdhe = require': no X25519, X448 */

/* With 'ecdhe = require' p11tls also answers for X25519 and X448, whose key shares the
 * token cannot make, with key management that makes no key: libssl then drops those
 * groups (it offers a group only when the key management it fetches belongs to the
 * provider that declares it, and p11tls declares only the token's curves then), so a
 * client that supports none of the token's curves gets handshake_failure from libssl
 * itself, and other users of these algorithms in the process are refused with this
 * reason. */
static void *refuse_new(void *provctx)
{
    ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_CURVE,
                   "p11tls: 'ecdhe = require' refuses X25519 and X448 (their key shares cannot "
                   "be made in the token)");
    return NULL;
}

static void *refuse_gen_init(void *provctx, int selection, const OSSL_PARAM params[])
{
    return refuse_new(provctx);
}

static void refuse_free(void *keydata)
{
}

static int refuse_has(const void *keydata, int selection)
{
    return 0;
}

static int refuse_import(void *keydata, int selection, const OSSL_PARAM params[])
{
    return 0;
}

static void *refuse_gen(void *genctx, OSSL_CALLBACK *cb, void *cbarg)
{
    return NULL;
}

static void refuse_gen_cleanup(void *genctx)
{
}

const OSSL_DISPATCH p11tls_refused_keymgmt_functions[] = {
    {OSSL_FUNC_KEYMGMT_NEW, (void (*)(void))refuse_new},
    {OSSL_FUNC_KEYMGMT_FREE, (void (*)(void))refuse_free},
    {OSSL_FUNC_KEYMGMT_HAS, (void (*)(void))refuse_has},
    {OSSL_FUNC_KEYMGMT_IMPORT, (void (*)(void))refuse_import},
    {OSSL_FUNC_KEYMGMT_IMPORT_TYPES, (void (*)(void))ec_import_types},
    {OSSL_FUNC_KEYMGMT_GEN_INIT, (void (*)(void))refuse_gen_init},
    {OSSL_FUNC_KEYMGMT_GEN, (void (*)(void))refuse_gen},
    {OSSL_FUNC_KEYMGMT_GEN_CLEANUP, (void (*)(void))refuse_gen_cleanup},
    {0, NULL}};
