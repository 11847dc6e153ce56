/* testutil.c - helpers shared by the CUnit suites (see testutil.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rand.h>
#include <openssl/store.h>
#include <openssl/x509.h>
#include "testutil.h"

const char *tu_kind(void)
{
    return getenv("P11TLS_KIND");
}

const char *tu_env(const char *name)
{
    const char *v = getenv(name);
    if (v == NULL) {
        fprintf(stderr, "test: environment variable %s is not set (run via with-token.sh)\n", name);
        exit(2);
    }
    return v;
}

void tu_token_cfg(p11_token_cfg *cfg)
{
    static char pin_source[4096];
    memset(cfg, 0, sizeof(*cfg));
    cfg->module = tu_env("P11TLS_MODULE");
    cfg->init_args = getenv("P11TLS_INIT_ARGS");
    cfg->token_uri = tu_env("P11TLS_TOKEN_URI");
    snprintf(pin_source, sizeof(pin_source), "file:%s", tu_env("P11TLS_PIN_FILE"));
    cfg->pin_source = pin_source;
}

void tu_print_errors(void)
{
    ERR_print_errors_fp(stderr);
}

p11_token *tu_open_token(void)
{
    p11_token_cfg cfg;
    p11_token *t;
    tu_token_cfg(&cfg);
    t = p11_token_open(&cfg);
    if (t == NULL) {
        fprintf(stderr, "test: cannot open the token under test\n");
        tu_print_errors();
        exit(2);
    }
    return t;
}

p11_uri *tu_key_uri(void)
{
    char err[256];
    p11_uri *u = NULL;
    if (!p11_uri_parse(tu_env("P11TLS_KEY_URI"), &u, err, sizeof(err))) {
        fprintf(stderr, "test: P11TLS_KEY_URI: %s\n", err);
        exit(2);
    }
    return u;
}

OSSL_LIB_CTX *tu_libctx(void)
{
    static OSSL_LIB_CTX *ctx;
    if (ctx == NULL) {
        ctx = OSSL_LIB_CTX_new();
        if (ctx == NULL || !OSSL_LIB_CTX_load_config(ctx, tu_env("P11TLS_OPENSSL_CNF")) ||
            !OSSL_PROVIDER_available(ctx, "p11tls")) {
            fprintf(stderr, "test: cannot load p11tls from %s\n", tu_env("P11TLS_OPENSSL_CNF"));
            tu_print_errors();
            exit(2);
        }
    }
    return ctx;
}

EVP_PKEY *tu_store_pkey(OSSL_LIB_CTX *libctx, const char *uri)
{
    OSSL_STORE_CTX *s = OSSL_STORE_open_ex(uri, libctx, NULL, NULL, NULL, NULL, NULL, NULL);
    EVP_PKEY *k = NULL;
    while (s != NULL && k == NULL && !OSSL_STORE_eof(s)) {
        OSSL_STORE_INFO *i = OSSL_STORE_load(s);
        if (i == NULL)
            break;
        if (OSSL_STORE_INFO_get_type(i) == OSSL_STORE_INFO_PKEY)
            k = OSSL_STORE_INFO_get1_PKEY(i);
        OSSL_STORE_INFO_free(i);
    }
    OSSL_STORE_close(s);
    return k;
}

EVP_PKEY *tu_token_pkey(void)
{
    EVP_PKEY *k = tu_store_pkey(tu_libctx(), tu_env("P11TLS_KEY_URI"));
    if (k == NULL)
        tu_print_errors();
    return k;
}

EVP_PKEY *tu_cert_pubkey(void)
{
    FILE *f = fopen(tu_env("P11TLS_CERT"), "r");
    X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    EVP_PKEY *k = x ? X509_get_pubkey(x) : NULL;
    if (f)
        fclose(f);
    X509_free(x);
    return k;
}

int tu_run(const char *suite, CU_TestInfo *tests)
{
    CU_SuiteInfo suites[] = {{(char *)suite, NULL, NULL, NULL, NULL, tests}, CU_SUITE_INFO_NULL};
    unsigned fails;
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    if (CU_register_suites(suites) != CUE_SUCCESS) {
        CU_cleanup_registry();
        return 2;
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    fails = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    if (CU_get_number_of_tests_run() == 0)
        fails = 1; /* a suite that ran nothing has not passed */
    CU_cleanup_registry();
    return fails ? 1 : 0;
}

void tu_make_em(unsigned char *em, size_t k, size_t mlen, tu_em_defect defect, unsigned char *m)
{
    size_t ps = k - 3 - mlen;
    unsigned char *msg = em + 3 + ps;
    em[0] = defect == TU_EM_FIRST_BYTE ? 1 : 0;
    em[1] = defect == TU_EM_BLOCK_TYPE ? 1 : 2;
    for (size_t i = 0; i < ps; i++) {
        do
            RAND_bytes(em + 2 + i, 1);
        while (em[2 + i] == 0);
    }
    em[2 + ps] = 0;
    RAND_bytes(msg, (int)mlen);
    msg[0] = 3, msg[1] = 3;
    if (m != NULL)
        memcpy(m, msg, mlen);
    if (defect == TU_EM_NO_SEPARATOR)
        for (size_t i = 2; i < k; i++)
            if (em[i] == 0)
                em[i] = 0x5a;
}

long tu_count_secret_objects(p11_token *t)
{
    return tu_count_session_objects(t, CKO_SECRET_KEY);
}

long tu_count_session_objects(p11_token *t, CK_OBJECT_CLASS cls)
{
    CK_BBOOL no = CK_FALSE;
    CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof(cls)}, {CKA_TOKEN, &no, sizeof(no)}};
    CK_OBJECT_HANDLE objs[256];
    CK_ULONG n = 0;
    long total = 0;
    p11_session s;
    CK_RV rv;

    if (t == NULL || !p11_session_get(t, &s))
        return -1;
    rv = P11_CALL(s.fl, C_FindObjectsInit, s.h, tmpl, 2);
    while (rv == CKR_OK) {
        rv = P11_CALL(s.fl, C_FindObjects, s.h, objs, 256, &n);
        if (rv != CKR_OK || n == 0)
            break;
        total += (long)n;
    }
    (void)P11_CALL(s.fl, C_FindObjectsFinal, s.h);
    p11_session_put(&s, rv);
    return rv == CKR_OK ? total : -1;
}
