/* spy_provider.c - a provider for tests only (never installed): a plain TLS 1.3 client
 * (openssl s_client, curl) that loads it runs its key schedule in software as usual,
 * through the default provider's TLS13-KDF and HMAC (in a library context of the
 * spy's own), and the spy
 *   - writes every value the KDF makes to the file P11SPY_OUT, one line each:
 *     "<label> <hex>" ("extract" for HKDF-Extract: the early, handshake and master
 *     secrets; "derived" for the salt it makes from the previous secret first; else the
 *     HKDF-Expand-Label label: "c hs traffic", "finished",
 *     "res master", "resumption", "key", "iv", ...), and the input of the handshake
 *     secret's HKDF-Extract ("ikm": the (EC)DHE shared secret); for TLS 1.2 the
 *     TLS1-PRF's secret when it makes a master secret ("pms": the pre-master or
 *     (EC)DHE secret) and the master secret itself ("master"); so that a test knows
 *     every secret of the client's side, not only those of its keylog;
 *   - with P11SPY_CORRUPT="N:POS:XOR", XORs byte POS of the N-th HMAC output (counted
 *     in this process over HMACs keyed by 32 or 48 bytes: the Finished and binder MACs)
 *     with XOR, so that the peer receives a Finished or a PSK binder that is well formed
 *     and wrong.
 * Selected with `default_properties = ?provider=p11tls-spy` (tests/lib/tls.sh writes
 * such a configuration). */
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/core.h>
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/provider.h>

typedef struct {
    OSSL_LIB_CTX *lib;
    OSSL_PROVIDER *dflt;
    EVP_KDF *kdf, *prf;
    EVP_MAC *mac;
} SPY;

static atomic_uint mac_count;

/* ---------------------------------------------------------------- record */

static void record(const char *label, size_t llen, const unsigned char *v, size_t n)
{
    const char *path = getenv("P11SPY_OUT");
    char *line;
    size_t o = 0;
    int fd;

    if (path == NULL || *path == '\0' || n == 0)
        return;
    line = malloc(llen + 2 * n + 3);
    if (line == NULL)
        return;
    for (size_t i = 0; i < llen; i++) /* one word: spaces become '_' */
        line[o++] = label[i] == ' ' ? '_' : label[i];
    line[o++] = ' ';
    for (size_t i = 0; i < n; i++)
        o += (size_t)snprintf(line + o, 3, "%02x", v[i]);
    line[o++] = '\n';
    fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) {
        (void)!write(fd, line, o); /* one write: lines of parallel processes stay whole */
        close(fd);
    }
    OPENSSL_cleanse(line, o);
    free(line);
}

/* ------------------------------------------------------------------- KDF */

typedef struct {
    SPY *spy;
    EVP_KDF_CTX *in;
    int extract;
    char label[256], digest[64];
    size_t label_len;
    unsigned char salt[64], key[80], seed[32];
    size_t salt_len, key_len, seed_len;
    int prf; /* TLS1-PRF (else TLS13-KDF) */
} SKDF;

static OSSL_FUNC_kdf_newctx_fn skdf_new;
static OSSL_FUNC_kdf_dupctx_fn skdf_dup;
static OSSL_FUNC_kdf_freectx_fn skdf_free;
static OSSL_FUNC_kdf_reset_fn skdf_reset;
static OSSL_FUNC_kdf_derive_fn skdf_derive;
static OSSL_FUNC_kdf_settable_ctx_params_fn skdf_settable;
static OSSL_FUNC_kdf_set_ctx_params_fn skdf_set;
static OSSL_FUNC_kdf_gettable_ctx_params_fn skdf_gettable;
static OSSL_FUNC_kdf_get_ctx_params_fn skdf_get;

static void *skdf_new(void *provctx)
{
    SPY *spy = provctx;
    SKDF *c = OPENSSL_zalloc(sizeof(*c));
    if (c == NULL)
        return NULL;
    c->spy = spy;
    c->in = EVP_KDF_CTX_new(spy->kdf);
    if (c->in == NULL) {
        OPENSSL_free(c);
        return NULL;
    }
    return c;
}

static void *sprf_new(void *provctx)
{
    SPY *spy = provctx;
    SKDF *c = OPENSSL_zalloc(sizeof(*c));
    if (c == NULL)
        return NULL;
    c->spy = spy;
    c->prf = 1;
    c->in = EVP_KDF_CTX_new(spy->prf);
    if (c->in == NULL) {
        OPENSSL_free(c);
        return NULL;
    }
    return c;
}

static void *skdf_dup(void *vctx)
{
    SKDF *c = vctx, *d = OPENSSL_memdup(c, sizeof(*c));
    if (d == NULL)
        return NULL;
    d->in = EVP_KDF_CTX_dup(c->in);
    if (d->in == NULL) {
        OPENSSL_free(d);
        return NULL;
    }
    return d;
}

static void skdf_free(void *vctx)
{
    SKDF *c = vctx;
    if (c == NULL)
        return;
    EVP_KDF_CTX_free(c->in);
    OPENSSL_free(c);
}

static void skdf_reset(void *vctx)
{
    SKDF *c = vctx;
    EVP_KDF_CTX_reset(c->in);
    c->extract = 0;
    c->label_len = 0;
    c->salt_len = 0;
    c->key_len = 0;
    c->seed_len = 0;
    c->digest[0] = '\0';
}

static int skdf_set(void *vctx, const OSSL_PARAM params[])
{
    SKDF *c = vctx;
    const OSSL_PARAM *p;

    if (params == NULL)
        return 1;
    if ((p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_MODE)) != NULL) {
        int mode = 0;
        if (p->data_type == OSSL_PARAM_UTF8_STRING)
            c->extract = p->data != NULL && strcmp(p->data, "EXTRACT_ONLY") == 0;
        else if (OSSL_PARAM_get_int(p, &mode))
            c->extract = mode == EVP_KDF_HKDF_MODE_EXTRACT_ONLY;
    }
    if ((p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_LABEL)) != NULL &&
        p->data_size < sizeof(c->label)) {
        memcpy(c->label, p->data, p->data_size);
        c->label_len = p->data_size;
    }
    if ((p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_DIGEST)) != NULL) {
        char *d = c->digest;
        if (!OSSL_PARAM_get_utf8_string(p, &d, sizeof(c->digest)))
            c->digest[0] = '\0';
    }
    if ((p = OSSL_PARAM_locate_const(params, c->prf ? OSSL_KDF_PARAM_SECRET
                                                    : OSSL_KDF_PARAM_KEY)) != NULL &&
        p->data_size <= sizeof(c->key)) {
        memcpy(c->key, p->data, p->data_size);
        c->key_len = p->data_size;
    }
    if (c->prf && (p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_SEED)) != NULL) {
        c->seed_len = p->data_size < sizeof(c->seed) ? p->data_size : sizeof(c->seed);
        memcpy(c->seed, p->data, c->seed_len);
    }
    if ((p = OSSL_PARAM_locate_const(params, OSSL_KDF_PARAM_SALT)) != NULL &&
        p->data_size <= sizeof(c->salt)) {
        memcpy(c->salt, p->data, p->data_size);
        c->salt_len = p->data_size;
    }
    return EVP_KDF_CTX_set_params(c->in, params);
}

/* HKDF-Extract with a previous secret as its salt first makes the "derived" salt,
 * Derive-Secret(prev, "derived", ""), inside the KDF: made again here to be recorded. */
static void record_derived(SKDF *c)
{
    unsigned char empty[64], out[64];
    unsigned int elen = 0;
    EVP_MD *md = EVP_MD_fetch(c->spy->lib, c->digest, NULL);
    EVP_KDF_CTX *k = EVP_KDF_CTX_new(c->spy->kdf);
    int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
    OSSL_PARAM ps[] = {OSSL_PARAM_int(OSSL_KDF_PARAM_MODE, &mode),
                       OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_DIGEST, c->digest, strlen(c->digest)),
                       OSSL_PARAM_octet_string(OSSL_KDF_PARAM_KEY, c->salt, c->salt_len),
                       OSSL_PARAM_octet_string(OSSL_KDF_PARAM_PREFIX, "tls13 ", 6),
                       OSSL_PARAM_octet_string(OSSL_KDF_PARAM_LABEL, "derived", 7),
                       OSSL_PARAM_octet_string(OSSL_KDF_PARAM_DATA, empty, 0),
                       OSSL_PARAM_END};

    if (md != NULL && k != NULL && EVP_Digest("", 0, empty, &elen, md, NULL)) {
        ps[5] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_DATA, empty, elen);
        if (EVP_KDF_derive(k, out, c->salt_len, ps) > 0)
            record("derived", 7, out, c->salt_len);
    }
    OPENSSL_cleanse(out, sizeof(out));
    EVP_KDF_CTX_free(k);
    EVP_MD_free(md);
}

static int skdf_derive(void *vctx, unsigned char *key, size_t keylen, const OSSL_PARAM params[])
{
    SKDF *c = vctx;
    if (!skdf_set(c, params) || EVP_KDF_derive(c->in, key, keylen, NULL) <= 0)
        return 0;
    if (c->prf) { /* TLS 1.2: the master secret's inputs and output */
        if ((c->seed_len >= 13 && memcmp(c->seed, "master secret", 13) == 0) ||
            (c->seed_len >= 22 && memcmp(c->seed, "extended master secret", 22) == 0)) {
            record("pms", 3, c->key, c->key_len);
            record("master", 6, key, keylen);
        }
        return 1;
    }
    if (c->extract && c->key_len > 0 && c->salt_len > 0) { /* the handshake secret's input */
        size_t z = 0;
        while (z < c->key_len && c->key[z] == 0)
            z++;
        if (z < c->key_len)
            record("ikm", 3, c->key, c->key_len);
    }
    if (c->extract && c->salt_len > 0 && c->digest[0] != '\0')
        record_derived(c);
    if (c->extract)
        record("extract", 7, key, keylen);
    else
        record(c->label, c->label_len, key, keylen);
    return 1;
}

static const OSSL_PARAM *skdf_settable(void *vctx, void *provctx)
{
    (void)vctx;
    return EVP_KDF_settable_ctx_params(((SPY *)provctx)->kdf);
}

static const OSSL_PARAM *skdf_gettable(void *vctx, void *provctx)
{
    (void)vctx;
    return EVP_KDF_gettable_ctx_params(((SPY *)provctx)->kdf);
}

static int skdf_get(void *vctx, OSSL_PARAM params[])
{
    return EVP_KDF_CTX_get_params(((SKDF *)vctx)->in, params);
}

static const OSSL_PARAM *sprf_settable(void *vctx, void *provctx)
{
    (void)vctx;
    return EVP_KDF_settable_ctx_params(((SPY *)provctx)->prf);
}

static const OSSL_PARAM *sprf_gettable(void *vctx, void *provctx)
{
    (void)vctx;
    return EVP_KDF_gettable_ctx_params(((SPY *)provctx)->prf);
}

static const OSSL_DISPATCH sprf_functions[] = {
    {OSSL_FUNC_KDF_NEWCTX, (void (*)(void))sprf_new},
    {OSSL_FUNC_KDF_DUPCTX, (void (*)(void))skdf_dup},
    {OSSL_FUNC_KDF_FREECTX, (void (*)(void))skdf_free},
    {OSSL_FUNC_KDF_RESET, (void (*)(void))skdf_reset},
    {OSSL_FUNC_KDF_DERIVE, (void (*)(void))skdf_derive},
    {OSSL_FUNC_KDF_SETTABLE_CTX_PARAMS, (void (*)(void))sprf_settable},
    {OSSL_FUNC_KDF_SET_CTX_PARAMS, (void (*)(void))skdf_set},
    {OSSL_FUNC_KDF_GETTABLE_CTX_PARAMS, (void (*)(void))sprf_gettable},
    {OSSL_FUNC_KDF_GET_CTX_PARAMS, (void (*)(void))skdf_get},
    {0, NULL}};

static const OSSL_DISPATCH skdf_functions[] = {
    {OSSL_FUNC_KDF_NEWCTX, (void (*)(void))skdf_new},
    {OSSL_FUNC_KDF_DUPCTX, (void (*)(void))skdf_dup},
    {OSSL_FUNC_KDF_FREECTX, (void (*)(void))skdf_free},
    {OSSL_FUNC_KDF_RESET, (void (*)(void))skdf_reset},
    {OSSL_FUNC_KDF_DERIVE, (void (*)(void))skdf_derive},
    {OSSL_FUNC_KDF_SETTABLE_CTX_PARAMS, (void (*)(void))skdf_settable},
    {OSSL_FUNC_KDF_SET_CTX_PARAMS, (void (*)(void))skdf_set},
    {OSSL_FUNC_KDF_GETTABLE_CTX_PARAMS, (void (*)(void))skdf_gettable},
    {OSSL_FUNC_KDF_GET_CTX_PARAMS, (void (*)(void))skdf_get},
    {0, NULL}};

/* ------------------------------------------------------------------- MAC */

typedef struct {
    SPY *spy;
    EVP_MAC_CTX *in;
    size_t keylen;
} SMAC;

static OSSL_FUNC_mac_newctx_fn smac_new;
static OSSL_FUNC_mac_dupctx_fn smac_dup;
static OSSL_FUNC_mac_freectx_fn smac_free;
static OSSL_FUNC_mac_init_fn smac_init;
static OSSL_FUNC_mac_update_fn smac_update;
static OSSL_FUNC_mac_final_fn smac_final;
static OSSL_FUNC_mac_gettable_params_fn smac_gettable_params;
static OSSL_FUNC_mac_get_params_fn smac_get_params;
static OSSL_FUNC_mac_gettable_ctx_params_fn smac_gettable_ctx;
static OSSL_FUNC_mac_get_ctx_params_fn smac_get_ctx;
static OSSL_FUNC_mac_settable_ctx_params_fn smac_settable_ctx;
static OSSL_FUNC_mac_set_ctx_params_fn smac_set_ctx;

static SPY *the_spy; /* for the algorithm-level get_params, which has no context */

static void *smac_new(void *provctx)
{
    SPY *spy = provctx;
    SMAC *c = OPENSSL_zalloc(sizeof(*c));
    if (c == NULL)
        return NULL;
    c->spy = spy;
    c->in = EVP_MAC_CTX_new(spy->mac);
    if (c->in == NULL) {
        OPENSSL_free(c);
        return NULL;
    }
    return c;
}

static void *smac_dup(void *vctx)
{
    SMAC *c = vctx, *d = OPENSSL_memdup(c, sizeof(*c));
    if (d == NULL)
        return NULL;
    d->in = EVP_MAC_CTX_dup(c->in);
    if (d->in == NULL) {
        OPENSSL_free(d);
        return NULL;
    }
    return d;
}

static void smac_free(void *vctx)
{
    SMAC *c = vctx;
    if (c == NULL)
        return;
    EVP_MAC_CTX_free(c->in);
    OPENSSL_free(c);
}

static int smac_init(void *vctx, const unsigned char *key, size_t keylen, const OSSL_PARAM params[])
{
    SMAC *c = vctx;
    if (key != NULL)
        c->keylen = keylen;
    return EVP_MAC_init(c->in, key, keylen, params);
}

static int smac_update(void *vctx, const unsigned char *in, size_t inl)
{
    return EVP_MAC_update(((SMAC *)vctx)->in, in, inl);
}

static int smac_final(void *vctx, unsigned char *out, size_t *outl, size_t outsize)
{
    SMAC *c = vctx;
    const char *spec = getenv("P11SPY_CORRUPT");
    unsigned n = 0, pos = 0, x = 0;

    if (!EVP_MAC_final(c->in, out, outl, outsize))
        return 0;
    if (out == NULL || (c->keylen != 32 && c->keylen != 48))
        return 1;
    n = atomic_fetch_add(&mac_count, 1) + 1;
    if (spec != NULL) {
        unsigned want = 0;
        if (sscanf(spec, "%u:%u:%u", &want, &pos, &x) == 3 && want == n && pos < *outl)
            out[pos] ^= (unsigned char)x;
    }
    return 1;
}

static const OSSL_PARAM *smac_gettable_params(void *provctx)
{
    return EVP_MAC_gettable_params(((SPY *)provctx)->mac);
}

static int smac_get_params(OSSL_PARAM params[])
{
    return the_spy != NULL && EVP_MAC_get_params(the_spy->mac, params);
}

static const OSSL_PARAM *smac_gettable_ctx(void *vctx, void *provctx)
{
    (void)vctx;
    return EVP_MAC_gettable_ctx_params(((SPY *)provctx)->mac);
}

static int smac_get_ctx(void *vctx, OSSL_PARAM params[])
{
    return EVP_MAC_CTX_get_params(((SMAC *)vctx)->in, params);
}

static const OSSL_PARAM *smac_settable_ctx(void *vctx, void *provctx)
{
    (void)vctx;
    return EVP_MAC_settable_ctx_params(((SPY *)provctx)->mac);
}

static int smac_set_ctx(void *vctx, const OSSL_PARAM params[])
{
    return EVP_MAC_CTX_set_params(((SMAC *)vctx)->in, params);
}

static const OSSL_DISPATCH smac_functions[] = {
    {OSSL_FUNC_MAC_NEWCTX, (void (*)(void))smac_new},
    {OSSL_FUNC_MAC_DUPCTX, (void (*)(void))smac_dup},
    {OSSL_FUNC_MAC_FREECTX, (void (*)(void))smac_free},
    {OSSL_FUNC_MAC_INIT, (void (*)(void))smac_init},
    {OSSL_FUNC_MAC_UPDATE, (void (*)(void))smac_update},
    {OSSL_FUNC_MAC_FINAL, (void (*)(void))smac_final},
    {OSSL_FUNC_MAC_GETTABLE_PARAMS, (void (*)(void))smac_gettable_params},
    {OSSL_FUNC_MAC_GET_PARAMS, (void (*)(void))smac_get_params},
    {OSSL_FUNC_MAC_GETTABLE_CTX_PARAMS, (void (*)(void))smac_gettable_ctx},
    {OSSL_FUNC_MAC_GET_CTX_PARAMS, (void (*)(void))smac_get_ctx},
    {OSSL_FUNC_MAC_SETTABLE_CTX_PARAMS, (void (*)(void))smac_settable_ctx},
    {OSSL_FUNC_MAC_SET_CTX_PARAMS, (void (*)(void))smac_set_ctx},
    {0, NULL}};

/* -------------------------------------------------------------- provider */

static const OSSL_ALGORITHM spy_kdfs[] = {
    {"TLS13-KDF", "provider=p11tls-spy", skdf_functions, "TLS 1.3 KDF, recorded"},
    {"TLS1-PRF", "provider=p11tls-spy", sprf_functions, "TLS 1.2 PRF, recorded"},
    {NULL, NULL, NULL, NULL}};
static const OSSL_ALGORITHM spy_macs[] = {
    {"HMAC", "provider=p11tls-spy", smac_functions, "HMAC, optionally corrupted"},
    {NULL, NULL, NULL, NULL}};

static const OSSL_ALGORITHM *spy_query(void *provctx, int op, int *no_cache)
{
    (void)provctx;
    *no_cache = 0;
    return op == OSSL_OP_KDF ? spy_kdfs : op == OSSL_OP_MAC ? spy_macs : NULL;
}

static void spy_teardown(void *provctx)
{
    SPY *spy = provctx;
    EVP_KDF_free(spy->kdf);
    EVP_KDF_free(spy->prf);
    EVP_MAC_free(spy->mac);
    OSSL_PROVIDER_unload(spy->dflt);
    OSSL_LIB_CTX_free(spy->lib);
    if (the_spy == spy)
        the_spy = NULL;
    OPENSSL_free(spy);
}

static const OSSL_DISPATCH spy_dispatch[] = {
    {OSSL_FUNC_PROVIDER_QUERY_OPERATION, (void (*)(void))spy_query},
    {OSSL_FUNC_PROVIDER_TEARDOWN, (void (*)(void))spy_teardown},
    {0, NULL}};

int OSSL_provider_init(const OSSL_CORE_HANDLE *handle, const OSSL_DISPATCH *in,
                       const OSSL_DISPATCH **out, void **provctx)
{
    SPY *spy = OPENSSL_zalloc(sizeof(*spy));
    (void)handle;
    (void)in;
    if (spy == NULL)
        return 0;
    spy->lib = OSSL_LIB_CTX_new();
    spy->dflt = spy->lib != NULL ? OSSL_PROVIDER_load(spy->lib, "default") : NULL;
    spy->kdf = spy->dflt != NULL ? EVP_KDF_fetch(spy->lib, "TLS13-KDF", NULL) : NULL;
    spy->prf = spy->dflt != NULL ? EVP_KDF_fetch(spy->lib, "TLS1-PRF", NULL) : NULL;
    spy->mac = spy->dflt != NULL ? EVP_MAC_fetch(spy->lib, "HMAC", NULL) : NULL;
    if (spy->kdf == NULL || spy->prf == NULL || spy->mac == NULL) {
        spy_teardown(spy);
        return 0;
    }
    the_spy = spy;
    *out = spy_dispatch;
    *provctx = spy;
    return 1;
}
