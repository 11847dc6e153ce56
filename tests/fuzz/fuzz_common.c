/* fuzz_common.c - see fuzz_common.h. */
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/bio.h>
#include <openssl/conf.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/params.h>
#include <openssl/provider.h>
#include "fuzz_common.h"

uint8_t fz_u8(fz_in *in)
{
    if (in->left == 0)
        return 0;
    in->left--;
    return *in->p++;
}

uint16_t fz_u16(fz_in *in)
{
    uint16_t hi = fz_u8(in);
    return (uint16_t)(hi << 8 | fz_u8(in));
}

unsigned fz_pick(fz_in *in, unsigned n)
{
    return n <= 256 ? fz_u8(in) % n : fz_u16(in) % n;
}

const uint8_t *fz_take(fz_in *in, size_t n, size_t *got)
{
    const uint8_t *p = in->p;
    if (n > in->left)
        n = in->left;
    in->p += n;
    in->left -= n;
    *got = n;
    return p;
}

const uint8_t *fz_bytes(fz_in *in, size_t max, size_t *len)
{
    size_t n = max < 256 ? fz_u8(in) : fz_u16(in);
    return fz_take(in, n % (max + 1), len);
}

const uint8_t *fz_rest(fz_in *in, size_t *len)
{
    return fz_take(in, in->left, len);
}

void fz_fail(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "\n==FUZZ INVARIANT FAILED== ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    ERR_print_errors_fp(stderr);
    abort();
}

const char *fz_env(const char *name)
{
    const char *v = getenv(name);
    if (v == NULL || *v == '\0') {
        fprintf(stderr,
                "fuzz: %s is not set: run under tests/with-token.sh DIR (a token made by "
                "scripts/make-token.sh), or through tests/fuzz/run.sh\n",
                name);
        exit(1);
    }
    return v;
}

const char *fz_provider_so(void)
{
    const char *v = getenv("P11TLS_FUZZ_PROVIDER");
    if (v != NULL && *v != '\0')
        return v;
#ifdef P11TLS_FUZZ_PROVIDER_SO
    return P11TLS_FUZZ_PROVIDER_SO;
#else
    return fz_env("P11TLS_FUZZ_PROVIDER");
#endif
}

void fz_cnf_quote(char *dst, size_t len, const char *v)
{
    size_t o = 0;
    if (len < 3) {
        if (len)
            *dst = '\0';
        return;
    }
    dst[o++] = '"';
    for (; *v != '\0' && o + 3 < len; v++) {
        if (*v == '"' || *v == '\\' || *v == '$')
            dst[o++] = '\\';
        dst[o++] = *v;
    }
    dst[o++] = '"';
    dst[o] = '\0';
}

static void add_line(char *buf, size_t len, const char *skip, const char *key, const char *val)
{
    char q[4096], k[64];
    size_t off = strlen(buf);
    snprintf(k, sizeof(k), ";%s;", key);
    if (skip != NULL && strstr(skip, k) != NULL)
        return;
    fz_cnf_quote(q, sizeof(q), val);
    snprintf(buf + off, len - off, "%s = %s\n", key, q);
}

void fz_token_section(char *buf, size_t len, const char *skip)
{
    const char *kind = fz_env("P11TLS_KIND");
    const char *init_args = getenv("P11TLS_INIT_ARGS");
    char pin[4096];

    snprintf(pin, sizeof(pin), "file:%s", fz_env("P11TLS_PIN_FILE"));
    add_line(buf, len, skip, "pkcs11-module", fz_env("P11TLS_MODULE"));
    if (init_args != NULL && *init_args != '\0')
        add_line(buf, len, skip, "pkcs11-init-args", init_args);
    add_line(buf, len, skip, "token", fz_env("P11TLS_TOKEN_URI"));
    add_line(buf, len, skip, "pin-source", pin);
    /* As scripts/make-token.sh: SoftHSM2 reaches `transient` only. */
    add_line(buf, len, skip, "min-assurance",
             strncmp(kind, "softhsm", 7) == 0 ? "transient" : "sealed");
}

void fz_cnf_text(char *buf, size_t len, const char *section_body)
{
    char mod[4096];
    fz_cnf_quote(mod, sizeof(mod), fz_provider_so());
    snprintf(buf, len,
             "openssl_conf = openssl_init\n"
             "[openssl_init]\n"
             "providers = provider_sect\n"
             "alg_section = algorithm_sect\n"
             "[algorithm_sect]\n"
             "default_properties = ?provider=p11tls\n"
             "[provider_sect]\n"
             "default = default_sect\n"
             "p11tls = p11tls_sect\n"
             "[default_sect]\n"
             "activate = 1\n"
             "[p11tls_sect]\n"
             "module = %s\n"
             "activate = 1\n"
             "%s",
             mod, section_body);
}

OSSL_LIB_CTX *fz_libctx_from_cnf(const char *cnf)
{
    OSSL_LIB_CTX *ctx = OSSL_LIB_CTX_new();
    CONF *conf = NULL;
    BIO *b = NULL;
    long eline = 0;
    int ok = 0;

    if (ctx == NULL || (conf = NCONF_new_ex(ctx, NULL)) == NULL ||
        (b = BIO_new_mem_buf(cnf, -1)) == NULL)
        goto end;
    if (NCONF_load_bio(conf, b, &eline) <= 0)
        goto end;
    ok = CONF_modules_load(conf, NULL, 0) > 0;
end:
    BIO_free(b);
    NCONF_free(conf);
    if (!ok) {
        OSSL_LIB_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

struct find_arg {
    OSSL_PROVIDER *prov;
};

static int find_p11tls(OSSL_PROVIDER *p, void *arg)
{
    if (strcmp(OSSL_PROVIDER_get0_name(p), "p11tls") == 0) {
        ((struct find_arg *)arg)->prov = p;
        return 0;
    }
    return 1;
}

int fz_p11tls_usable(OSSL_LIB_CTX *ctx, char *why, size_t whylen)
{
    struct find_arg a = {NULL};
    int status = 0;
    const char *name = NULL;
    OSSL_PARAM params[] = {OSSL_PARAM_int(OSSL_PROV_PARAM_STATUS, &status),
                           OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_NAME, &name, 0), OSSL_PARAM_END};

    OSSL_PROVIDER_do_all(ctx, find_p11tls, &a);
    if (a.prov == NULL) {
        snprintf(why, whylen, "p11tls is not loaded");
        return 0;
    }
    if (!OSSL_PROVIDER_get_params(a.prov, params)) {
        snprintf(why, whylen, "p11tls: get_params failed");
        return 0;
    }
    snprintf(why, whylen, "%s", name != NULL ? name : "(no name)");
    return status == 1;
}

void fz_pin_module(void)
{
    const char *m = getenv("P11TLS_MODULE");
    if (m != NULL && strchr(m, '/') != NULL &&
        dlopen(m, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE) == NULL)
        fprintf(stderr, "fuzz: cannot dlopen %s: %s\n", m, dlerror());
}

OSSL_LIB_CTX *fz_p11tls_libctx(const char *extra)
{
    static OSSL_LIB_CTX *ctx;
    static char cnf[16384], section[8192];
    char why[512];

    if (ctx != NULL)
        return ctx;
    fz_pin_module();
    fz_token_section(section, sizeof(section), NULL);
    if (extra != NULL)
        strncat(section, extra, sizeof(section) - strlen(section) - 1);
    fz_cnf_text(cnf, sizeof(cnf), section);
    ctx = fz_libctx_from_cnf(cnf);
    if (ctx == NULL) {
        fprintf(stderr, "fuzz: cannot load this configuration:\n%s\n", cnf);
        ERR_print_errors_fp(stderr);
        exit(1);
    }
    if (!fz_p11tls_usable(ctx, why, sizeof(why))) {
        fprintf(stderr, "fuzz: p11tls (%s) is not usable: %s\n", fz_provider_so(), why);
        ERR_print_errors_fp(stderr);
        exit(1);
    }
    fprintf(stderr, "fuzz: %s (%s)\n", why, fz_provider_so());
    ERR_clear_error();
    return ctx;
}

int fz_no_password(char *buf, int size, int rwflag, void *u)
{
    return -1;
}
