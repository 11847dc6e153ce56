/* provider.c - the provider's entry point: reads its openssl.cnf section,
 * opens the token, enforces the configured minimum assurance level, answers
 * parameter queries, and hands out the operation tables. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <openssl/crypto.h>
#include <openssl/params.h>
#include <openssl/provider.h>
#include "provider.h"

static OSSL_FUNC_provider_teardown_fn p11tls_teardown;
static OSSL_FUNC_provider_gettable_params_fn p11tls_gettable_params;
static OSSL_FUNC_provider_get_params_fn p11tls_get_params;
static OSSL_FUNC_provider_query_operation_fn p11tls_query;

#define ALG(names, funcs)                                                                          \
    {                                                                                              \
        names, "provider=" P11TLS_NAME, funcs, NULL                                                \
    }

static const OSSL_ALGORITHM p11tls_keymgmt[] = {
    ALG("RSA:rsaEncryption:1.2.840.113549.1.1.1", p11tls_rsa_keymgmt_functions),
    ALG("EC:id-ecPublicKey:1.2.840.10045.2.1", p11tls_ec_keymgmt_functions),
    {NULL, NULL, NULL, NULL}};
/* 'ecdhe = require': also X25519 and X448, refused (keymgmt_ec.c) */
static const OSSL_ALGORITHM p11tls_keymgmt_require[] = {
    ALG("RSA:rsaEncryption:1.2.840.113549.1.1.1", p11tls_rsa_keymgmt_functions),
    ALG("EC:id-ecPublicKey:1.2.840.10045.2.1", p11tls_ec_keymgmt_functions),
    ALG("X25519:1.3.101.110", p11tls_refused_keymgmt_functions),
    ALG("X448:1.3.101.111", p11tls_refused_keymgmt_functions),
    {NULL, NULL, NULL, NULL}};
static const OSSL_ALGORITHM p11tls_keyexch[] = {ALG("ECDH", p11tls_ecdh_keyexch_functions),
                                                {NULL, NULL, NULL, NULL}};
static const OSSL_ALGORITHM p11tls_signature[] = {
    ALG("RSA:rsaEncryption:1.2.840.113549.1.1.1", p11tls_rsa_signature_functions),
    {NULL, NULL, NULL, NULL}};
static const OSSL_ALGORITHM p11tls_asym_cipher[] = {
    ALG("RSA:rsaEncryption:1.2.840.113549.1.1.1", p11tls_rsa_asym_cipher_functions),
    {NULL, NULL, NULL, NULL}};
static const OSSL_ALGORITHM p11tls_kdf[] = {ALG("TLS1-PRF", p11tls_tls1_prf_functions),
                                            ALG("TLS13-KDF", p11tls_tls13_kdf_functions),
                                            {NULL, NULL, NULL, NULL}};
static const OSSL_ALGORITHM p11tls_mac[] = {ALG("HMAC", p11tls_hmac_functions),
                                            {NULL, NULL, NULL, NULL}};
static const OSSL_ALGORITHM p11tls_store[] = {ALG("pkcs11", p11tls_store_functions),
                                              {NULL, NULL, NULL, NULL}};
static const OSSL_ALGORITHM p11tls_decoder[] = {
    {"RSA:rsaEncryption:1.2.840.113549.1.1.1", "provider=" P11TLS_NAME ",input=pem",
     p11tls_pem_uri_decoder_functions, NULL},
    /* key files through OpenSSL 3.0's file: store (decoder_uri_der.c) */
    {"DER", "provider=" P11TLS_NAME ",input=pem", p11tls_uri_pem2der_functions, NULL},
    {"RSA:rsaEncryption:1.2.840.113549.1.1.1",
     "provider=" P11TLS_NAME ",input=der,structure=pk11-uri", p11tls_uri_der2key_functions, NULL},
    {NULL, NULL, NULL, NULL}};

/* "ECDHE in the token: P-256 P-384 P-521" (for the status), or why not. */
static const char *ecdhe_status(const P11TLS_PROV *prov, const p11_caps *c)
{
    static _Thread_local char buf[160];
    size_t o;
    if (prov->ecdhe == P11TLS_ECDHE_SOFTWARE)
        return "ECDHE in software (ecdhe = software)";
    o = (size_t)snprintf(buf, sizeof(buf), "ECDHE in the token:");
    for (int i = 0; i < P11_CURVE_N; i++)
        if (c->ecdh[i] && o < sizeof(buf))
            o += (size_t)snprintf(buf + o, sizeof(buf) - o, " %s", p11_curve_name((p11_curve)i));
    if (strcmp(buf, "ECDHE in the token:") == 0)
        snprintf(buf, sizeof(buf), "ECDHE in software: %s%s", c->ecdhe_why,
                 prov->ecdhe == P11TLS_ECDHE_REQUIRE ? " (ecdhe = require: refused)" : "");
    else if (o < sizeof(buf))
        snprintf(buf + o, sizeof(buf) - o, "; other groups %s",
                 prov->ecdhe == P11TLS_ECDHE_REQUIRE ? "refused" : "in software");
    return buf;
}

static const OSSL_ALGORITHM *p11tls_query(void *provctx, int op, int *no_cache)
{
    *no_cache = 0;
    switch (op) {
    case OSSL_OP_KEYMGMT:
        return ((P11TLS_PROV *)provctx)->ecdhe == P11TLS_ECDHE_REQUIRE ? p11tls_keymgmt_require
                                                                       : p11tls_keymgmt;
    case OSSL_OP_KEYEXCH:
        return p11tls_keyexch;
    case OSSL_OP_SIGNATURE:
        return p11tls_signature;
    case OSSL_OP_ASYM_CIPHER:
        return p11tls_asym_cipher;
    case OSSL_OP_KDF:
        return p11tls_kdf;
    case OSSL_OP_MAC:
        return p11tls_mac;
    case OSSL_OP_STORE:
        return p11tls_store;
    case OSSL_OP_DECODER:
        return p11tls_decoder;
    }
    return NULL;
}

static const OSSL_PARAM p11tls_param_types[] = {
    OSSL_PARAM_DEFN(OSSL_PROV_PARAM_NAME, OSSL_PARAM_UTF8_PTR, NULL, 0),
    OSSL_PARAM_DEFN(OSSL_PROV_PARAM_VERSION, OSSL_PARAM_UTF8_PTR, NULL, 0),
    OSSL_PARAM_DEFN(OSSL_PROV_PARAM_BUILDINFO, OSSL_PARAM_UTF8_PTR, NULL, 0),
    OSSL_PARAM_DEFN(OSSL_PROV_PARAM_STATUS, OSSL_PARAM_INTEGER, NULL, 0),
    OSSL_PARAM_DEFN("p11tls-token", OSSL_PARAM_UTF8_PTR, NULL, 0),
    OSSL_PARAM_DEFN("p11tls-assurance", OSSL_PARAM_UTF8_PTR, NULL, 0),
    OSSL_PARAM_DEFN("p11tls-strategy", OSSL_PARAM_UTF8_PTR, NULL, 0),
    OSSL_PARAM_DEFN("p11tls-members", OSSL_PARAM_UTF8_PTR, NULL, 0),
    OSSL_PARAM_END};

/* A pool's status: the name, then each member's state now ("members: member1 token
 * 'a' (transient): in use, 12 operations; member2 ...: lost 1.5 s ago (...)"). */
static const char *pool_status(P11TLS_PROV *prov, int with_name)
{
    static _Thread_local char buf[4096];
    size_t off = 0;
    p11_pool *p = prov->pool;
    if (with_name)
        off = (size_t)snprintf(buf, sizeof(buf), "%s; ", prov->name);
    off += (size_t)snprintf(buf + off, sizeof(buf) - off,
                            "level now %s; members: ", p11_level_name(p11_pool_level_now(p)));
    for (unsigned i = 0; i < p11_pool_size(p) && off < sizeof(buf); i++) {
        char line[512];
        (void)p11_pool_member(p, i, line, sizeof(line));
        off += (size_t)snprintf(buf + off, sizeof(buf) - off, "%s%s", i ? "; " : "", line);
    }
    return buf;
}

static const OSSL_PARAM *p11tls_gettable_params(void *provctx)
{
    return p11tls_param_types;
}

static int p11tls_get_params(void *provctx, OSSL_PARAM params[])
{
    P11TLS_PROV *prov = provctx;
    const p11_caps *c = prov->pool != NULL ? p11_pool_caps(prov->pool) : NULL;
    int pool = prov->pool != NULL && p11_pool_size(prov->pool) > 1;
    OSSL_PARAM *p;

    int usable = prov->failure == NULL;

    if (usable && prov->min_level > P11_LEVEL_NONE) {
        ERR_set_mark();
        usable = p11tls_routing_ok(prov);
        ERR_pop_to_mark();
    }
    if ((p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_NAME)) != NULL &&
        !OSSL_PARAM_set_utf8_ptr(p, usable && pool ? pool_status(prov, 1)
                                    : usable || prov->failure != NULL || prov->routing_name == NULL
                                        ? prov->name
                                        : prov->routing_name))
        return 0;
    if ((p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_VERSION)) != NULL &&
        !OSSL_PARAM_set_utf8_ptr(p, P11TLS_VERSION_STR))
        return 0;
    if ((p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_BUILDINFO)) != NULL &&
        !OSSL_PARAM_set_utf8_ptr(p, "p11tls " P11TLS_VERSION_STR))
        return 0;
    if ((p = OSSL_PARAM_locate(params, OSSL_PROV_PARAM_STATUS)) != NULL &&
        !OSSL_PARAM_set_int(p, usable))
        return 0;
    if (!usable)
        return 1;
    if ((p = OSSL_PARAM_locate(params, "p11tls-token")) != NULL &&
        !OSSL_PARAM_set_utf8_ptr(p, p11_pool_label(prov->pool)))
        return 0;
    if ((p = OSSL_PARAM_locate(params, "p11tls-members")) != NULL &&
        !OSSL_PARAM_set_utf8_ptr(p, pool_status(prov, 0)))
        return 0;
    if ((p = OSSL_PARAM_locate(params, "p11tls-assurance")) != NULL &&
        !OSSL_PARAM_set_utf8_ptr(p, p11_level_name(c->level)))
        return 0;
    if ((p = OSSL_PARAM_locate(params, "p11tls-strategy")) != NULL &&
        !OSSL_PARAM_set_utf8_ptr(p, p11_ms_strategy_name(c->ms)))
        return 0;
    return 1;
}

int p11tls_usable(P11TLS_PROV *prov)
{
    if (prov->failure != NULL) {
        ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_CONFIG_DATA, "p11tls is not usable: %s",
                       prov->failure);
        return 0;
    }
    return prov->min_level == P11_LEVEL_NONE || p11tls_routing_ok(prov);
}

/* Collects the error queue (p11tls never puts a PIN there) into one line. */
static char *collect_errors(void)
{
    char buf[2048] = "", one[512];
    size_t off = 0;
    unsigned long e;
    const char *data = NULL;
    int flags = 0;

    while ((e = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)) != 0) {
        const char *text = (data != NULL && (flags & ERR_TXT_STRING)) ? data : NULL;
        if (text == NULL) {
            ERR_error_string_n(e, one, sizeof(one));
            text = one;
        }
        if (off < sizeof(buf))
            off += (size_t)snprintf(buf + off, sizeof(buf) - off, "%s%s", off ? "; " : "", text);
    }
    return OPENSSL_strdup(off ? buf : "unknown error");
}

static void p11tls_teardown(void *provctx)
{
    P11TLS_PROV *prov = provctx;
    if (prov == NULL)
        return;
    OPENSSL_free(prov->failure);
    OPENSSL_free(prov->routing_name);
    OPENSSL_free(prov->name);
    OPENSSL_free(prov->prov_name);
    p11_pool_free(prov->pool);
    OSSL_PROVIDER_unload(prov->deflt);
    OSSL_LIB_CTX_free(prov->libctx);
    OPENSSL_free(prov);
}

static const OSSL_DISPATCH p11tls_dispatch[] = {
    {OSSL_FUNC_PROVIDER_TEARDOWN, (void (*)(void))p11tls_teardown},
    {OSSL_FUNC_PROVIDER_GETTABLE_PARAMS, (void (*)(void))p11tls_gettable_params},
    {OSSL_FUNC_PROVIDER_GET_PARAMS, (void (*)(void))p11tls_get_params},
    {OSSL_FUNC_PROVIDER_QUERY_OPERATION, (void (*)(void))p11tls_query},
    {OSSL_FUNC_PROVIDER_GET_CAPABILITIES, (void (*)(void))p11tls_get_capabilities},
    {0, NULL}};

static int parse_uint(const char *opt, const char *v, unsigned *out, unsigned max)
{
    char *end;
    unsigned long x;
    if (v == NULL)
        return 1;
    x = strtoul(v, &end, 10);
    if (*v == '\0' || *end != '\0' || x == 0 || x > max) {
        ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_CONFIG_DATA,
                       "p11tls: option '%s' is not a number from 1 to %u", opt, max);
        return 0;
    }
    *out = (unsigned)x;
    return 1;
}

/* Sets prov->name (the status line: never cut). */
static void set_name(P11TLS_PROV *prov, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_name(P11TLS_PROV *prov, const char *fmt, ...)
{
    va_list ap;
    int n;
    char *b;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || (b = OPENSSL_malloc((size_t)n + 1)) == NULL)
        return;
    va_start(ap, fmt);
    vsnprintf(b, (size_t)n + 1, fmt, ap);
    va_end(ap);
    OPENSSL_free(prov->name);
    prov->name = b;
}

/* The token (option 'token'), or the pool's members (options member1.. naming
 * sections): each member's module, init args and PIN source default to the
 * provider section's. Raises the cause, naming the member, on failure. */
static int open_pool(P11TLS_PROV *prov, const p11tls_cfg *c, const p11_token_cfg *tc,
                     unsigned probe_ms)
{
    p11_pool_member_cfg m[P11_POOL_MAX];
    static const char *const names[P11_POOL_MAX] = {"member1", "member2", "member3", "member4",
                                                    "member5", "member6", "member7", "member8"};
    unsigned n = 0;

    for (int i = 0; i < P11_POOL_MAX; i++) {
        if (c->member[i].token == NULL) {
            if (c->member[i].module != NULL || c->member[i].pin_source != NULL ||
                c->member[i].init_args != NULL) {
                ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_CONFIG_DATA,
                               "p11tls: pool member %s has no 'token' (a pkcs11: URI)", names[i]);
                return 0;
            }
            continue;
        }
        m[n].name = names[i];
        m[n].cfg = *tc;
        m[n].cfg.token_uri = c->member[i].token;
        if (c->member[i].module != NULL)
            m[n].cfg.module = c->member[i].module;
        if (c->member[i].init_args != NULL)
            m[n].cfg.init_args = c->member[i].init_args;
        if (c->member[i].pin_source != NULL) {
            m[n].cfg.pin_source = c->member[i].pin_source;
            m[n].cfg.pin_option = "pin-source";
        }
        n++;
    }
    if (n > 0 && c->token != NULL) {
        ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_CONFIG_DATA,
                       "p11tls: options 'token' and 'member1'.. are both set: give one token, "
                       "or a pool of members");
        return 0;
    }
    if (n == 0) {
        if (c->token == NULL) {
            ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_CONFIG_DATA,
                           "p11tls: option 'token' (a pkcs11: URI) is required (or "
                           "'member1' = SECTION.. for a pool of tokens)");
            return 0;
        }
        m[0].name = "token";
        m[0].cfg = *tc;
        n = 1;
    }
    prov->pool = p11_pool_open(m, n, prov->min_level, probe_ms);
    if (prov->pool == NULL) {
        ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_CONFIG_DATA,
                       "p11tls: activation failed (options 'pkcs11-module', 'token', "
                       "'pin-source'%s)",
                       n > 1 || c->token == NULL ? ", and the pool members' sections" : "");
        return 0;
    }
    return 1;
}

__attribute__((visibility("default"))) int OSSL_provider_init(const OSSL_CORE_HANDLE *handle,
                                                              const OSSL_DISPATCH *in,
                                                              const OSSL_DISPATCH **out,
                                                              void **provctx)
{
    OSSL_FUNC_core_get_params_fn *core_get_params = NULL;
    OSSL_FUNC_core_get_libctx_fn *core_get_libctx = NULL;
    OSSL_FUNC_BIO_read_ex_fn *bio_read_ex = NULL;
    P11TLS_PROV *prov;
    p11tls_cfg c;
    p11_token_cfg tc;
    const p11_caps *caps;
    unsigned probe_ms = 0;

    for (const OSSL_DISPATCH *d = in; d->function_id != 0; d++)
        if (d->function_id == OSSL_FUNC_CORE_GET_PARAMS)
            core_get_params = OSSL_FUNC_core_get_params(d);
        else if (d->function_id == OSSL_FUNC_CORE_GET_LIBCTX)
            core_get_libctx = OSSL_FUNC_core_get_libctx(d);
        else if (d->function_id == OSSL_FUNC_BIO_READ_EX)
            bio_read_ex = OSSL_FUNC_BIO_read_ex(d);
    memset(&c, 0, sizeof(c));
    memset(&tc, 0, sizeof(tc));
    if (core_get_params == NULL || core_get_libctx == NULL)
        return 0;
    prov = OPENSSL_zalloc(sizeof(*prov));
    if (prov == NULL)
        return 0;
    prov->handle = handle;
    /* In OpenSSL 3.0 the core's context is the library context itself. */
    prov->app_libctx = (OSSL_LIB_CTX *)core_get_libctx(handle);
    prov->core_bio_read_ex = bio_read_ex;
    prov->min_level = P11_LEVEL_SEALED;
    ERR_set_mark();
    if (!p11tls_cfg_read(handle, core_get_params, &c))
        goto fail;
    if (c.prov_name != NULL)
        prov->prov_name = OPENSSL_strdup(c.prov_name);
    if (c.debug != NULL && strcmp(c.debug, "0") != 0 && strcasecmp(c.debug, "no") != 0 &&
        getenv("P11TLS_DEBUG") == NULL)
        setenv("P11TLS_DEBUG", strchr(c.debug, '/') ? c.debug : "1", 0);
    if (!p11tls_cfg_check_keys(&c))
        goto fail;
    if (c.min_assurance != NULL && !p11_level_parse(c.min_assurance, &prov->min_level)) {
        ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_CONFIG_DATA,
                       "p11tls: option 'min-assurance' is not 'sealed', 'transient' or "
                       "'key-only'");
        goto fail;
    }
    if (c.strategy != NULL) {
        if (strcasecmp(c.strategy, "native") == 0)
            tc.force_ms = P11_MS_NATIVE;
        else if (strcasecmp(c.strategy, "sp800-108") == 0)
            tc.force_ms = P11_MS_SP800_108;
        else if (strcasecmp(c.strategy, "hmac") == 0)
            tc.force_ms = P11_MS_HMAC;
        else if (strcasecmp(c.strategy, "auto") != 0) {
            ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_CONFIG_DATA,
                           "p11tls: option 'strategy' is not auto, native, sp800-108 or hmac");
            goto fail;
        }
    }
    if (c.scrub_heap != NULL) {
        if (strcasecmp(c.scrub_heap, "yes") == 0)
            tc.scrub_heap = P11_SCRUB_ALWAYS;
        else if (strcasecmp(c.scrub_heap, "no") == 0)
            tc.scrub_heap = P11_SCRUB_NEVER;
        else if (strcasecmp(c.scrub_heap, "auto") != 0) {
            ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_CONFIG_DATA,
                           "p11tls: option 'scrub-heap' is not auto, yes or no");
            goto fail;
        }
    }
    if (c.ecdhe != NULL) {
        if (strcasecmp(c.ecdhe, "software") == 0)
            prov->ecdhe = P11TLS_ECDHE_SOFTWARE;
        else if (strcasecmp(c.ecdhe, "require") == 0)
            prov->ecdhe = P11TLS_ECDHE_REQUIRE;
        else if (strcasecmp(c.ecdhe, "token") != 0) {
            ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_CONFIG_DATA,
                           "p11tls: option 'ecdhe' is not token, software or require");
            goto fail;
        }
    }
    tc.ecdhe_strict = prov->ecdhe == P11TLS_ECDHE_REQUIRE;
    tc.module = c.module;
    tc.init_args = c.init_args;
    tc.token_uri = c.token;
    tc.pin_source = c.pin_source;
    tc.pin_option = p11tls_cfg_pin_option(&c);
    if (!parse_uint("max-sessions", c.max_sessions, &tc.max_sessions, 1024) ||
        !parse_uint("handle-lifetime", c.handle_lifetime, &tc.handle_lifetime, 7 * 86400) ||
        !parse_uint("handle-cache-size", c.handle_cache, &tc.handle_cache_max, 1u << 22))
        goto fail;
    if (!parse_uint("probe-interval", c.probe_interval, &probe_ms, 600000))
        goto fail;
    if (!open_pool(prov, &c, &tc, probe_ms))
        goto fail;
    caps = p11_pool_caps(prov->pool);
    if (prov->min_level == P11_LEVEL_NONE)
        set_name(prov,
                 "p11tls: %s, key only (min-assurance key-only: TLS secrets may be "
                 "computed outside the token; the token offers assurance %s)",
                 p11_pool_label(prov->pool), p11_level_name(caps->level));
    else
        set_name(prov, "p11tls: %s, assurance %s (TLS 1.2: %s; TLS 1.3: %s; %s)",
                 p11_pool_label(prov->pool), p11_level_name(caps->level),
                 p11_ms_strategy_name(caps->ms), p11_tls13_strategy_name(caps->tls13),
                 ecdhe_status(prov, caps));
    /* Public-key operations and digests run in a library context of our own
     * holding only the default provider: no way back into p11tls from there. */
    prov->libctx = OSSL_LIB_CTX_new();
    if (prov->libctx == NULL || (prov->deflt = OSSL_PROVIDER_load(prov->libctx, "default")) == NULL)
        goto fail;
    ERR_clear_last_mark();
    *out = p11tls_dispatch;
    *provctx = prov;
    return 1;
fail:
    /* Fail closed: stay loaded, refuse every operation with the cause (no silent
     * fallback to the default provider's PRF). */
    prov->failure = collect_errors();
    ERR_pop_to_mark();
    p11_pool_free(prov->pool);
    prov->pool = NULL;
    if (prov->failure == NULL) {
        p11tls_teardown(prov);
        return 0;
    }
    set_name(prov, "p11tls: NOT USABLE: %s", prov->failure);
    p11_debug("provider not usable: %s", prov->failure);
    if (prov->libctx == NULL)
        prov->libctx = OSSL_LIB_CTX_new();
    *out = p11tls_dispatch;
    *provctx = prov;
    return 1;
}
