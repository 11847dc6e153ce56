/* test_faults.c - a token that fails any single call p11tls makes: through the
 * call layer's fault hook, every call of a TLS 1.2 handshake's token work (RSA
 * key exchange into the token, master secret, key block, Finished, a handle
 * resolved by a second process-like token instance, the server's RSA signature,
 * a key looked up again) fails in turn with each of
 * CKR_GENERAL_ERROR, CKR_DEVICE_MEMORY and CKR_SESSION_HANDLE_INVALID (injected
 * into a session the token still knows: p11tls must close it). Each run
 * must fail or succeed cleanly, and afterwards the token holds exactly the
 * secret objects p11tls still accounts for (no leaked object), and a normal
 * run works again. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include "testutil.h"

static p11_token *t1, *t2;
static p11_key *key;
static EVP_PKEY *pub;

static long fail_at;    /* fail the fail_at-th call from now (1-based); 0: none */
static long calls_seen; /* calls since the counter was armed */
static CK_RV fail_rv;

static const char *failed_call; /* the call that was made to fail */

static CK_RV hook(const char *call)
{
    calls_seen++;
    if (fail_at > 0 && calls_seen == fail_at) {
        failed_call = call;
        return fail_rv;
    }
    return CKR_OK;
}

/* One handshake's worth of token work; 1 if every step succeeded. */
static int scenario(void)
{
    unsigned char pms[48], ct[512], pmsh[48], msh[48], cr[64], kb[40], fin[12];
    size_t ctlen = sizeof(ct);
    EVP_PKEY_CTX *e = EVP_PKEY_CTX_new_from_pkey(NULL, pub, "provider=default");
    int ok;

    RAND_bytes(pms, 48);
    pms[0] = 3;
    pms[1] = 3;
    RAND_bytes(cr, 64);
    ok = e != NULL && EVP_PKEY_encrypt_init(e) > 0 &&
         EVP_PKEY_CTX_set_rsa_padding(e, RSA_PKCS1_PADDING) > 0 &&
         EVP_PKEY_encrypt(e, ct, &ctlen, pms, 48) > 0;
    EVP_PKEY_CTX_free(e);
    if (!ok)
        return -1; /* not the token: a broken test */
    ok = p11_tls_pms_unwrap(key, ct, ctlen, 0x0303, 0, pmsh) &&
         p11_tls_master(t1, P11_PRF_SHA256, 0, pmsh, 48, cr, 64, msh) &&
         p11_tls_prf(t1, P11_PRF_SHA256, msh, (const unsigned char *)"key expansion", 13, kb,
                     sizeof(kb)) &&
         p11_tls_prf(t1, P11_PRF_SHA256, msh, (const unsigned char *)"client finished", 15, fin,
                     sizeof(fin)) &&
         /* another process resolves the handle (its registry misses) */
         p11_tls_prf(t2, P11_PRF_SHA256, msh, (const unsigned char *)"server finished", 15, fin,
                     sizeof(fin)) &&
         /* raw bytes (ECDHE) */
         p11_tls_master(t1, P11_PRF_SHA384, 1, pms, 32, cr, 48, msh) &&
         p11_tls_prf(t1, P11_PRF_SHA384, msh, (const unsigned char *)"key expansion", 13, kb,
                     sizeof(kb));
    /* the server's signature (ECDHE-RSA), and a key looked up again */
    if (ok) {
        CK_MECHANISM m = {CKM_RSA_PKCS, NULL, 0};
        unsigned char sig[512];
        size_t siglen = sizeof(sig);
        p11_uri *u = tu_key_uri();
        p11_key *k2 = u != NULL ? p11_key_find(t2, u) : NULL;
        ok = p11_rsa_sign(key, &m, cr, 36, sig, &siglen) && k2 != NULL &&
             p11_rsa_sign(k2, &m, cr, 36, sig, &siglen);
        p11_key_free(k2);
        p11_uri_free(u);
    }
    OPENSSL_cleanse(pms, sizeof(pms));
    return ok;
}

static long accounted(void)
{
    return (long)(p11_tls_live_objects(t1) + p11_tls_live_objects(t2));
}

static void run_faults(CK_RV rv, const char *name)
{
    long n, failures = 0, leaks = 0, broken_after = 0;
    long base = tu_count_secret_objects(t1) - accounted();

    /* How many calls does a clean run make? */
    fail_at = 0;
    calls_seen = 0;
    CU_ASSERT_FATAL(scenario() == 1);
    n = calls_seen;
    CU_ASSERT_FATAL(n > 10);
    for (long k = 1; k <= n; k++) {
        int r;
        fail_rv = rv;
        fail_at = k;
        calls_seen = 0;
        r = scenario();
        fail_at = 0;
        ERR_clear_error();
        CU_ASSERT(r == 0 || r == 1);
        if (r == 0)
            failures++;
        /* Objects: exactly those p11tls still holds (plus what was there before). */
        if (tu_count_secret_objects(t1) - accounted() != base) {
            leaks++;
            fprintf(stderr, "\n    %s at call %ld (%s): %ld objects, %ld accounted, base %ld", name,
                    k, failed_call, tu_count_secret_objects(t1), accounted(), base);
            base = tu_count_secret_objects(t1) - accounted(); /* report each leak once */
        }
        /* ... and the next handshake works (after a lost session: a fresh one). */
        calls_seen = 0;
        if (scenario() != 1) {
            broken_after++;
            ERR_clear_error();
        }
    }
    printf("\n    %s: %ld call sites, %ld runs failed cleanly, %ld leaks, %ld broken after", name,
           n, failures, leaks, broken_after);
    CU_ASSERT(failures > 0); /* the faults did reach p11tls */
    CU_ASSERT_EQUAL(leaks, 0);
    CU_ASSERT_EQUAL(broken_after, 0);
}

static void test_general_error(void)
{
    run_faults(CKR_GENERAL_ERROR, "CKR_GENERAL_ERROR");
}

static void test_device_memory(void)
{
    run_faults(CKR_DEVICE_MEMORY, "CKR_DEVICE_MEMORY");
}

/* The token says the session is gone while it still knows it (and its objects):
 * p11tls must close it (ending its objects) rather than forget it. */
static void test_session_handle_invalid(void)
{
    run_faults(CKR_SESSION_HANDLE_INVALID, "CKR_SESSION_HANDLE_INVALID");
}

int main(void)
{
    CU_TestInfo tests[] = {
        {"every call fails with CKR_GENERAL_ERROR", test_general_error},
        {"every call fails with CKR_DEVICE_MEMORY", test_device_memory},
        {"every call fails with CKR_SESSION_HANDLE_INVALID", test_session_handle_invalid},
        CU_TEST_INFO_NULL};
    p11_uri *u;
    int rc;

    t1 = tu_open_token();
    t2 = tu_open_token();
    if (!p11_tls_prepare(t1) || !p11_tls_prepare(t2)) {
        tu_print_errors();
        return 2;
    }
    u = tu_key_uri();
    key = p11_key_find(t1, u);
    pub = tu_cert_pubkey();
    if (key == NULL || pub == NULL) {
        tu_print_errors();
        return 2;
    }
    p11_fault_hook = hook;
    rc = tu_run("faults", tests);
    p11_fault_hook = NULL;
    p11_uri_free(u);
    p11_key_free(key);
    EVP_PKEY_free(pub);
    p11_token_free(t2);
    p11_token_free(t1);
    return rc;
}
