/* store.c - an OSSL_STORE loader for RFC 7512 "pkcs11:" URIs: `openssl pkey -in
 * 'pkcs11:...'`, `s_server -key 'pkcs11:...'`, OSSL_STORE_open(). It hands
 * OpenSSL a reference to a token key that keymgmt_rsa.c's load() takes over. */
#include <string.h>
#include <strings.h>
#include <openssl/core_object.h>
#include <openssl/params.h>
#include <openssl/store.h>
#include "provider.h"

static OSSL_FUNC_store_open_fn store_open;
static OSSL_FUNC_store_settable_ctx_params_fn store_settable_ctx_params;
static OSSL_FUNC_store_set_ctx_params_fn store_set_ctx_params;
static OSSL_FUNC_store_load_fn store_load;
static OSSL_FUNC_store_eof_fn store_eof;
static OSSL_FUNC_store_close_fn store_close;

typedef struct {
    P11TLS_PROV *prov;
    char *uri;
    int done;
} STORECTX;

static void *store_open(void *provctx, const char *uri)
{
    STORECTX *c;
    if (uri == NULL || strncasecmp(uri, "pkcs11:", 7) != 0)
        return NULL;
    c = OPENSSL_zalloc(sizeof(*c));
    if (c == NULL)
        return NULL;
    c->prov = provctx;
    if ((c->uri = OPENSSL_strdup(uri)) == NULL) {
        OPENSSL_free(c);
        return NULL;
    }
    return c;
}

static const OSSL_PARAM settable[] = {OSSL_PARAM_int(OSSL_STORE_PARAM_EXPECT, NULL),
                                      OSSL_PARAM_END};

static const OSSL_PARAM *store_settable_ctx_params(void *provctx)
{
    return settable;
}

static int store_set_ctx_params(void *vctx, const OSSL_PARAM params[])
{
    return 1; /* a pkcs11: URI names one private key; what is expected changes nothing */
}

/* Hands a P11TLS_KEY to OpenSSL as an object reference (used by the decoder too). */
int p11tls_pass_key(P11TLS_KEY *key, OSSL_CALLBACK *cb, void *cbarg)
{
    int type = OSSL_OBJECT_PKEY;
    OSSL_PARAM params[] = {OSSL_PARAM_int(OSSL_OBJECT_PARAM_TYPE, &type),
                           OSSL_PARAM_utf8_string(OSSL_OBJECT_PARAM_DATA_TYPE, (char *)"RSA", 3),
                           OSSL_PARAM_octet_string(OSSL_OBJECT_PARAM_REFERENCE, &key, sizeof(key)),
                           OSSL_PARAM_END};
    return cb(params, cbarg);
}

static int store_load(void *vctx, OSSL_CALLBACK *object_cb, void *object_cbarg,
                      OSSL_PASSPHRASE_CALLBACK *pw_cb, void *pw_cbarg)
{
    STORECTX *c = vctx;
    P11TLS_KEY *key;

    if (c->done)
        return 0;
    c->done = 1;
    key = p11tls_key_from_uri(c->prov, c->uri);
    if (key == NULL)
        return 0;
    return p11tls_pass_key(key, object_cb, object_cbarg);
}

static int store_eof(void *vctx)
{
    return ((STORECTX *)vctx)->done;
}

static int store_close(void *vctx)
{
    STORECTX *c = vctx;
    OPENSSL_free(c->uri);
    OPENSSL_free(c);
    return 1;
}

const OSSL_DISPATCH p11tls_store_functions[] = {
    {OSSL_FUNC_STORE_OPEN, (void (*)(void))store_open},
    {OSSL_FUNC_STORE_SETTABLE_CTX_PARAMS, (void (*)(void))store_settable_ctx_params},
    {OSSL_FUNC_STORE_SET_CTX_PARAMS, (void (*)(void))store_set_ctx_params},
    {OSSL_FUNC_STORE_LOAD, (void (*)(void))store_load},
    {OSSL_FUNC_STORE_EOF, (void (*)(void))store_eof},
    {OSSL_FUNC_STORE_CLOSE, (void (*)(void))store_close},
    {0, NULL}};
