/* test_token.c - CUnit tests of the token layer (pkcs11/) against the real token
 * of the current kind (P11TLS_KIND): module loading and init args, login and PIN
 * sources (one wrong-PIN attempt per run at most), the session pool under
 * threads, signing from threads, fork, the capability probe, token loss and
 * recovery (softhsm-remote), and the CKR_/CKM_ names.
 *
 * Login state belongs to the process, not to a p11_token: once any session is
 * logged in, C_Login answers CKR_USER_ALREADY_LOGGED_IN whatever the PIN. The
 * login tests therefore start from a finalised module (reset_module) so that
 * their C_Login really checks the PIN, whatever ran before them. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <CUnit/Basic.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include "testutil.h"

static int kind_is(const char *k)
{
    const char *kind = tu_kind();
    return kind != NULL && strcmp(kind, k) == 0;
}

/* Drains this thread's OpenSSL error queue into buf ("reason: data | ...");
 * returns the number of errors. */
static int take_errors(char *buf, size_t len)
{
    const char *file, *func, *data;
    int line, flags, n = 0;
    size_t off = 0;
    unsigned long e;

    buf[0] = '\0';
    while ((e = ERR_get_error_all(&file, &line, &func, &data, &flags)) != 0) {
        char es[256];
        int has_data = (flags & ERR_TXT_STRING) && data != NULL && *data != '\0';
        ERR_error_string_n(e, es, sizeof(es));
        if (off < len)
            off += (size_t)snprintf(buf + off, len - off, "%s%s%s%s", n ? " | " : "", es,
                                    has_data ? ": " : "", has_data ? data : "");
        n++;
    }
    return n;
}

static void monotonic(struct timespec *ts)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
}

static double since(const struct timespec *t0)
{
    struct timespec t1;
    monotonic(&t1);
    return (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* A hang is a failure: a watchdog turns it into one with a message. */
static const char *watchdog_name = "";
static void watchdog_fired(int sig)
{
    char msg[256];
    int n = snprintf(msg, sizeof(msg), "\ntest_token: '%s' did not finish in time (hang)\n",
                     watchdog_name);
    (void)sig;
    if (n > 0)
        (void)!write(2, msg, (size_t)n);
    _exit(3);
}

static void watchdog(const char *name, unsigned seconds)
{
    watchdog_name = name;
    signal(SIGALRM, seconds ? watchdog_fired : SIG_DFL);
    alarm(seconds);
}

/* Finalises the module under the token so that nothing in this process is
 * logged in or initialised any more (the next p11_token_open initialises it). */
static void reset_module(void)
{
    p11_token *t = tu_open_token();
    p11_session s;
    CK_RV rv;
    if (!p11_session_get(t, &s)) {
        tu_print_errors();
        CU_FAIL_FATAL("reset_module: no session");
    }
    rv = P11_CALL(s.fl, C_Finalize, NULL);
    CU_ASSERT_EQUAL(rv, CKR_OK);
    p11_session_put(&s, CKR_CRYPTOKI_NOT_INITIALIZED);
    p11_token_free(t);
    ERR_clear_error();
}

/* The token's user PIN, read from P11TLS_PIN_FILE (without a trailing newline). */
static size_t read_pin(char *buf, size_t len)
{
    FILE *f = fopen(tu_env("P11TLS_PIN_FILE"), "r");
    size_t n = 0;
    if (f != NULL) {
        n = fread(buf, 1, len - 1, f);
        fclose(f);
    }
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    buf[n] = '\0';
    return n;
}

/* --------------------------------------------------------------- signing */
static const unsigned char sha256_digestinfo[19] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60,
                                                    0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                                                    0x01, 0x05, 0x00, 0x04, 0x20};

enum { SV_OK = 0, SV_RAND, SV_SIGN, SV_LEN, SV_VERIFY };

static int verify_digest(EVP_PKEY *pub, const unsigned char dig[32], const unsigned char *sig,
                         size_t siglen)
{
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pub, NULL);
    int ok = ctx != NULL && EVP_PKEY_verify_init(ctx) == 1 &&
             EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) == 1 &&
             EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()) == 1 &&
             EVP_PKEY_verify(ctx, sig, siglen, dig, 32) == 1;
    EVP_PKEY_CTX_free(ctx);
    return ok;
}

/* Signs the SHA-256 DigestInfo of fresh random data with the token key
 * (CKM_RSA_PKCS) and verifies the signature in software with pub. */
static int sign_and_verify(p11_key *k, EVP_PKEY *pub)
{
    unsigned char data[64], dig[32], di[sizeof(sha256_digestinfo) + 32], sig[1024];
    size_t siglen = sizeof(sig);
    CK_MECHANISM mech = {CKM_RSA_PKCS, NULL, 0};

    if (RAND_bytes(data, sizeof(data)) != 1 ||
        EVP_Digest(data, sizeof(data), dig, NULL, EVP_sha256(), NULL) != 1)
        return SV_RAND;
    memcpy(di, sha256_digestinfo, sizeof(sha256_digestinfo));
    memcpy(di + sizeof(sha256_digestinfo), dig, 32);
    if (!p11_rsa_sign(k, &mech, di, sizeof(di), sig, &siglen))
        return SV_SIGN;
    if (siglen != (size_t)EVP_PKEY_get_size(pub))
        return SV_LEN;
    if (!verify_digest(pub, dig, sig, siglen))
        return SV_VERIFY;
    return SV_OK;
}

typedef struct {
    p11_token *t;
    p11_uri *uri;
    p11_key *k;
    EVP_PKEY *pub;
} keyset;

static int keyset_open(keyset *ks)
{
    memset(ks, 0, sizeof(*ks));
    ks->t = tu_open_token();
    ks->uri = tu_key_uri();
    ks->k = p11_key_find(ks->t, ks->uri);
    ks->pub = tu_cert_pubkey();
    if (ks->k == NULL)
        tu_print_errors();
    CU_ASSERT_PTR_NOT_NULL(ks->k);
    CU_ASSERT_PTR_NOT_NULL(ks->pub);
    return ks->k != NULL && ks->pub != NULL;
}

static void keyset_close(keyset *ks)
{
    p11_key_free(ks->k);
    p11_uri_free(ks->uri);
    EVP_PKEY_free(ks->pub);
    p11_token_free(ks->t);
}

/* ------------------------------------------------------ 8. CKR/CKM names */
static void test_names(void)
{
    CU_ASSERT_STRING_EQUAL(p11_ckr_name(CKR_PIN_INCORRECT), "CKR_PIN_INCORRECT");
    CU_ASSERT_STRING_EQUAL(p11_ckr_name(CKR_OK), "CKR_OK");
    CU_ASSERT_STRING_EQUAL(p11_ckr_name(CKR_DEVICE_REMOVED), "CKR_DEVICE_REMOVED");
    CU_ASSERT_STRING_EQUAL(p11_ckr_name(0x12345678UL), "CKR_0x12345678");
    /* Values the tokens under test really return (NSS without init args,
     * SoftHSM2 on bad padding): an error must name them. */
    CU_ASSERT_STRING_EQUAL(p11_ckr_name(CKR_ARGUMENTS_BAD), "CKR_ARGUMENTS_BAD");
    CU_ASSERT_STRING_EQUAL(p11_ckr_name(CKR_GENERAL_ERROR), "CKR_GENERAL_ERROR");
    CU_ASSERT_STRING_EQUAL(p11_ckr_name(CKR_FUNCTION_FAILED), "CKR_FUNCTION_FAILED");
    CU_ASSERT_STRING_EQUAL(p11_ckr_name(CKR_HOST_MEMORY), "CKR_HOST_MEMORY");
    CU_ASSERT_STRING_EQUAL(p11_ckr_name(CKR_SLOT_ID_INVALID), "CKR_SLOT_ID_INVALID");

    CU_ASSERT_STRING_EQUAL(p11_ckm_name(CKM_RSA_PKCS), "CKM_RSA_PKCS");
    CU_ASSERT_STRING_EQUAL(p11_ckm_name(CKM_RSA_PKCS_OAEP), "CKM_RSA_PKCS_OAEP");
    CU_ASSERT_STRING_EQUAL(p11_ckm_name(CKM_RSA_X_509), "CKM_RSA_X_509");
    CU_ASSERT_STRING_EQUAL(p11_ckm_name(CKM_RSA_PKCS_PSS), "CKM_RSA_PKCS_PSS");
    CU_ASSERT_STRING_EQUAL(p11_ckm_name(CKM_SHA256_HMAC), "CKM_SHA256_HMAC");
    CU_ASSERT_STRING_EQUAL(p11_ckm_name(P11_CKM_NSS_TLS_EXTENDED_MASTER_KEY_DERIVE),
                           "CKM_NSS_TLS_EXTENDED_MASTER_KEY_DERIVE");
    CU_ASSERT_STRING_EQUAL(p11_ckm_name(0x7654321UL), "CKM_0x07654321");
}

/* ------------------------------------------- 1. module loading, init args */
static void test_module_missing_path(void)
{
    const char *path = "/nonexistent/p11tls-test/no-such-module.so";
    const char *file, *func, *data = NULL;
    int line, flags = 0;
    unsigned long e;
    char es[256], all[2048];
    p11_module *m;

    ERR_clear_error();
    m = p11_module_load(path, NULL);
    CU_ASSERT_PTR_NULL(m);
    p11_module_free(m);
    e = ERR_peek_error();
    CU_ASSERT_NOT_EQUAL(e, 0);
    ERR_error_string_n(e, es, sizeof(es));
    CU_ASSERT_EQUAL(ERR_GET_LIB(e), ERR_LIB_PROV);
    e = ERR_get_error_all(&file, &line, &func, &data, &flags);
    CU_ASSERT_NOT_EQUAL(e, 0);
    CU_ASSERT(flags & ERR_TXT_STRING);
    CU_ASSERT_PTR_NOT_NULL(data);
    if (data != NULL) {
        CU_ASSERT_PTR_NOT_NULL(strstr(data, path));
        if (strstr(data, path) == NULL)
            fprintf(stderr, "\n  error text: %s: %s\n", es, data);
    }
    take_errors(all, sizeof(all));

    /* The same through p11_token_open. */
    {
        p11_token_cfg cfg;
        p11_token *t;
        tu_token_cfg(&cfg);
        cfg.module = path;
        t = p11_token_open(&cfg);
        CU_ASSERT_PTR_NULL(t);
        p11_token_free(t);
        CU_ASSERT(take_errors(all, sizeof(all)) > 0);
        CU_ASSERT_PTR_NOT_NULL(strstr(all, path));
    }
}

/* NSS softoken refuses C_Initialize without its configuration string. */
static void test_nss_init_args_required(void)
{
    p11_token_cfg cfg;
    p11_token *t;
    char all[2048];

    reset_module(); /* C_Initialize must really run, not find it initialised */
    tu_token_cfg(&cfg);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg.init_args);
    CU_ASSERT(*cfg.init_args != '\0');
    cfg.init_args = NULL;
    t = p11_token_open(&cfg);
    CU_ASSERT_PTR_NULL(t);
    p11_token_free(t);
    CU_ASSERT(take_errors(all, sizeof(all)) > 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(all, "C_Initialize"));
    /* A standard CKR_ value must be named, not printed as a number. */
    CU_ASSERT_PTR_NULL(strstr(all, "CKR_0x"));
    if (strstr(all, "C_Initialize") == NULL || strstr(all, "CKR_0x") != NULL)
        fprintf(stderr, "\n  error text: %s\n", all);

    /* The module is not left half-initialised: the right arguments work. */
    tu_token_cfg(&cfg);
    t = p11_token_open(&cfg);
    if (t == NULL)
        tu_print_errors();
    CU_ASSERT_PTR_NOT_NULL(t);
    p11_token_free(t);
}

static void test_open_good(void)
{
    p11_token_cfg cfg;
    p11_token *t;
    p11_uri *u = NULL;
    char err[256];

    tu_token_cfg(&cfg);
    t = p11_token_open(&cfg);
    if (t == NULL)
        tu_print_errors();
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    CU_ASSERT_EQUAL(ERR_peek_error(), 0);
    CU_ASSERT_FATAL(p11_uri_parse(cfg.token_uri, &u, err, sizeof(err)));
    CU_ASSERT_PTR_NOT_NULL(u->token);
    if (u->token != NULL)
        CU_ASSERT_STRING_EQUAL(p11_token_label(t), u->token);
    CU_ASSERT_NOT_EQUAL(p11_token_epoch(t), 0);
    p11_uri_free(u);
    p11_token_free(t);
}

/* ----------------------------------------------------------------- 2. login */
static void test_wrong_pin(void)
{
    char path[] = "/tmp/p11tls-wrong-pin.XXXXXX";
    char wrong[64], source[128], all[4096];
    unsigned char rnd[8];
    unsigned long before, after;
    p11_token_cfg cfg;
    p11_token *t;
    int fd;

    reset_module(); /* nobody logged in: C_Login must check this PIN */
    CU_ASSERT_FATAL(RAND_bytes(rnd, sizeof(rnd)) == 1);
    snprintf(wrong, sizeof(wrong), "wrongpin%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1],
             rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    fd = mkstemp(path);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_FATAL(write(fd, wrong, strlen(wrong)) == (ssize_t)strlen(wrong));
    close(fd);
    snprintf(source, sizeof(source), "file:%s", path);

    tu_token_cfg(&cfg);
    cfg.pin_source = source;
    before = p11_call_count("C_Login");
    t = p11_token_open(&cfg); /* the one wrong-PIN attempt of this run */
    after = p11_call_count("C_Login");
    unlink(path);
    CU_ASSERT_PTR_NULL(t);
    p11_token_free(t);
    CU_ASSERT_EQUAL(after - before, 1); /* exactly one C_Login: no retry */
    CU_ASSERT(take_errors(all, sizeof(all)) > 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(all, "CKR_PIN_INCORRECT"));
    CU_ASSERT_PTR_NULL(strstr(all, wrong));
    if (strstr(all, "CKR_PIN_INCORRECT") == NULL || after - before != 1)
        fprintf(stderr, "\n  C_Login calls: %lu, error text: %s\n", after - before, all);
}

static void test_pin_from_env(void)
{
    char pin[300], all[2048];
    unsigned long before, after;
    p11_token_cfg cfg;
    p11_token *t;
    p11_uri *u;
    p11_key *k;

    CU_ASSERT_FATAL(read_pin(pin, sizeof(pin)) > 0);
    reset_module(); /* the env PIN is what logs in, not an earlier login */
    CU_ASSERT_FATAL(setenv("P11TLS_TEST_PIN", pin, 1) == 0);
    OPENSSL_cleanse(pin, sizeof(pin));
    tu_token_cfg(&cfg);
    cfg.pin_source = "env:P11TLS_TEST_PIN";
    before = p11_call_count("C_Login");
    t = p11_token_open(&cfg);
    after = p11_call_count("C_Login");
    if (t == NULL)
        tu_print_errors();
    CU_ASSERT_PTR_NOT_NULL(t);
    CU_ASSERT_EQUAL(after - before, 1);
    if (t != NULL) {
        /* Logged in: the private key is visible. */
        u = tu_key_uri();
        k = p11_key_find(t, u);
        if (k == NULL)
            tu_print_errors();
        CU_ASSERT_PTR_NOT_NULL(k);
        p11_key_free(k);
        p11_uri_free(u);
    }
    p11_token_free(t);
    unsetenv("P11TLS_TEST_PIN");

    /* A missing variable: an error naming it, and no C_Login at all. */
    unsetenv("P11TLS_TEST_PIN_MISSING");
    cfg.pin_source = "env:P11TLS_TEST_PIN_MISSING";
    ERR_clear_error();
    before = p11_call_count("C_Login");
    t = p11_token_open(&cfg);
    after = p11_call_count("C_Login");
    CU_ASSERT_PTR_NULL(t);
    p11_token_free(t);
    CU_ASSERT_EQUAL(after - before, 0);
    CU_ASSERT(take_errors(all, sizeof(all)) > 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(all, "P11TLS_TEST_PIN_MISSING"));
    if (strstr(all, "P11TLS_TEST_PIN_MISSING") == NULL)
        fprintf(stderr, "\n  error text: %s\n", all);
}

/* ---------------------------------------------------- 3. the session pool */
#define POOL_THREADS 8
#define POOL_ITERS 200
#define POOL_MAX 4

typedef struct {
    p11_token *t;
    int held, max_held;
    int gets, get_failures, call_failures, bad_state, shared;
    pthread_mutex_t mu;
    CK_SESSION_HANDLE in_use[POOL_THREADS];
    int nin_use;
} pool_ctx;

static void *pool_thread(void *arg)
{
    pool_ctx *c = arg;
    for (int i = 0; i < POOL_ITERS; i++) {
        p11_session s;
        CK_SESSION_INFO info;
        CK_RV rv;
        int n, m;

        if (!p11_session_get(c->t, &s)) {
            if (__atomic_add_fetch(&c->get_failures, 1, __ATOMIC_RELAXED) == 1)
                tu_print_errors();
            continue;
        }
        __atomic_add_fetch(&c->gets, 1, __ATOMIC_RELAXED);
        n = __atomic_add_fetch(&c->held, 1, __ATOMIC_SEQ_CST);
        m = __atomic_load_n(&c->max_held, __ATOMIC_SEQ_CST);
        while (n > m && !__atomic_compare_exchange_n(&c->max_held, &m, n, 0, __ATOMIC_SEQ_CST,
                                                     __ATOMIC_SEQ_CST))
            ;
        /* No session is handed to two borrowers at once. */
        pthread_mutex_lock(&c->mu);
        for (int j = 0; j < c->nin_use; j++)
            if (c->in_use[j] == s.h)
                c->shared++;
        if (c->nin_use < POOL_THREADS)
            c->in_use[c->nin_use++] = s.h;
        pthread_mutex_unlock(&c->mu);

        rv = P11_CALL(s.fl, C_GetSessionInfo, s.h, &info);
        if (rv != CKR_OK)
            __atomic_add_fetch(&c->call_failures, 1, __ATOMIC_RELAXED);
        else if (info.state != CKS_RW_USER_FUNCTIONS || !(info.flags & CKF_SERIAL_SESSION))
            __atomic_add_fetch(&c->bad_state, 1, __ATOMIC_RELAXED);
        sched_yield(); /* let others in while this one is held */

        pthread_mutex_lock(&c->mu);
        for (int j = 0; j < c->nin_use; j++)
            if (c->in_use[j] == s.h) {
                c->in_use[j] = c->in_use[--c->nin_use];
                break;
            }
        pthread_mutex_unlock(&c->mu);
        __atomic_sub_fetch(&c->held, 1, __ATOMIC_SEQ_CST);
        p11_session_put(&s, rv);
    }
    return NULL;
}

static void test_session_pool(void)
{
    pool_ctx c;
    pthread_t th[POOL_THREADS];
    p11_token_cfg cfg;
    unsigned long opens0, opens;
    int started = 0;

    memset(&c, 0, sizeof(c));
    pthread_mutex_init(&c.mu, NULL);
    tu_token_cfg(&cfg);
    cfg.max_sessions = POOL_MAX;
    opens0 = p11_call_count("C_OpenSession");
    c.t = p11_token_open(&cfg);
    if (c.t == NULL)
        tu_print_errors();
    CU_ASSERT_PTR_NOT_NULL_FATAL(c.t);

    watchdog("session pool", 300);
    for (int i = 0; i < POOL_THREADS; i++)
        if (pthread_create(&th[i], NULL, pool_thread, &c) == 0)
            started++;
    CU_ASSERT_EQUAL(started, POOL_THREADS);
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    watchdog("", 0);
    opens = p11_call_count("C_OpenSession") - opens0;

    fprintf(stderr, "\n  pool: %d gets, at most %d held at once, %lu C_OpenSession\n", c.gets,
            c.max_held, opens);
    CU_ASSERT_EQUAL(c.get_failures, 0);
    CU_ASSERT_EQUAL(c.gets, started * POOL_ITERS);
    CU_ASSERT_EQUAL(c.call_failures, 0);
    CU_ASSERT_EQUAL(c.bad_state, 0);
    CU_ASSERT_EQUAL(c.shared, 0);
    CU_ASSERT(c.max_held <= POOL_MAX);
    CU_ASSERT(c.max_held >= 2); /* the pool does not serialise its borrowers */
    CU_ASSERT(opens >= 1);
    CU_ASSERT(opens <= POOL_MAX); /* sessions are reused, including the opening one */
    p11_token_free(c.t);
    pthread_mutex_destroy(&c.mu);
}

/* ----------------------------------------------- 4. signing from threads */
#define SIGN_THREADS 8
#define SIGN_ITERS 25

typedef struct {
    keyset *ks;
    int ok, sign_failures, verify_failures, other_failures;
} sign_ctx;

static void *sign_thread(void *arg)
{
    sign_ctx *c = arg;
    for (int i = 0; i < SIGN_ITERS; i++) {
        int rc = sign_and_verify(c->ks->k, c->ks->pub);
        if (rc == SV_OK) {
            __atomic_add_fetch(&c->ok, 1, __ATOMIC_RELAXED);
        } else if (rc == SV_SIGN) {
            if (__atomic_add_fetch(&c->sign_failures, 1, __ATOMIC_RELAXED) == 1)
                tu_print_errors();
        } else if (rc == SV_VERIFY || rc == SV_LEN) {
            __atomic_add_fetch(&c->verify_failures, 1, __ATOMIC_RELAXED);
        } else {
            __atomic_add_fetch(&c->other_failures, 1, __ATOMIC_RELAXED);
        }
        ERR_clear_error();
    }
    return NULL;
}

static void test_sign_threads(void)
{
    keyset ks;
    sign_ctx c;
    pthread_t th[SIGN_THREADS];
    int started = 0;
    const unsigned char *n, *e;
    size_t nlen, elen;
    BIGNUM *bn = NULL;

    if (!keyset_open(&ks)) {
        keyset_close(&ks);
        return;
    }
    /* The key's public half is the certificate's. */
    p11_key_public(ks.k, &n, &nlen, &e, &elen);
    CU_ASSERT_EQUAL(p11_key_bits(ks.k), (size_t)EVP_PKEY_get_bits(ks.pub));
    CU_ASSERT(EVP_PKEY_get_bn_param(ks.pub, OSSL_PKEY_PARAM_RSA_N, &bn) == 1);
    if (bn != NULL) {
        unsigned char buf[1024];
        int blen = BN_bn2bin(bn, buf);
        while (nlen > 0 && n[0] == 0)
            n++, nlen--;
        CU_ASSERT(blen > 0 && (size_t)blen == nlen && memcmp(buf, n, nlen) == 0);
        BN_free(bn);
    }
    /* The software check really checks: a signature over another digest fails. */
    {
        unsigned char dig[32], other[32], di[sizeof(sha256_digestinfo) + 32], sig[1024];
        size_t siglen = sizeof(sig);
        CK_MECHANISM mech = {CKM_RSA_PKCS, NULL, 0};
        CU_ASSERT_FATAL(RAND_bytes(dig, sizeof(dig)) == 1);
        memcpy(other, dig, sizeof(dig));
        other[0] ^= 1;
        memcpy(di, sha256_digestinfo, sizeof(sha256_digestinfo));
        memcpy(di + sizeof(sha256_digestinfo), dig, 32);
        CU_ASSERT(p11_rsa_sign(ks.k, &mech, di, sizeof(di), sig, &siglen));
        CU_ASSERT(verify_digest(ks.pub, dig, sig, siglen));
        CU_ASSERT(!verify_digest(ks.pub, other, sig, siglen));
        ERR_clear_error();
    }

    memset(&c, 0, sizeof(c));
    c.ks = &ks;
    watchdog("sign from threads", 300);
    for (int i = 0; i < SIGN_THREADS; i++)
        if (pthread_create(&th[i], NULL, sign_thread, &c) == 0)
            started++;
    CU_ASSERT_EQUAL(started, SIGN_THREADS);
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    watchdog("", 0);
    CU_ASSERT_EQUAL(c.ok, SIGN_THREADS * SIGN_ITERS);
    CU_ASSERT_EQUAL(c.sign_failures, 0);
    CU_ASSERT_EQUAL(c.verify_failures, 0);
    CU_ASSERT_EQUAL(c.other_failures, 0);
    keyset_close(&ks);
}

/* ------------------------------------------------------------------ 5. fork */
#define FORK_CHILDREN 4

/* In a child: the same p11_token and p11_key, which must re-initialise. */
static int fork_child(keyset *ks, unsigned long parent_epoch)
{
    unsigned long inits = p11_call_count("C_Initialize");
    for (int i = 0; i < 3; i++) {
        int rc = sign_and_verify(ks->k, ks->pub);
        if (rc != SV_OK) {
            fprintf(stderr, "child %ld: sign/verify %d failed (step %d)\n", (long)getpid(), i, rc);
            tu_print_errors();
            return 10 + rc;
        }
    }
    /* One re-initialisation, retried (at most 6 in all) while a sibling's login
     * makes the token briefly invisible. */
    if (p11_call_count("C_Initialize") < inits + 1 || p11_call_count("C_Initialize") > inits + 6) {
        fprintf(stderr, "child %ld: %lu C_Initialize calls (expected 1 to 6)\n", (long)getpid(),
                p11_call_count("C_Initialize") - inits);
        return 20;
    }
    if (p11_token_epoch(ks->t) == parent_epoch) {
        fprintf(stderr, "child %ld: epoch unchanged after fork\n", (long)getpid());
        return 21;
    }
    return 0;
}

static void test_fork(void)
{
    keyset ks;
    pid_t pids[FORK_CHILDREN];
    int status[FORK_CHILDREN], done = 0, forked = 0, go[2];
    unsigned long epoch, inits;
    struct timespec t0;

    if (!keyset_open(&ks)) {
        keyset_close(&ks);
        return;
    }
    CU_ASSERT_EQUAL(sign_and_verify(ks.k, ks.pub), SV_OK);
    epoch = p11_token_epoch(ks.t);
    inits = p11_call_count("C_Initialize");

    /* The children start together (as a server's workers do): each waits for
     * the end of this pipe, closed once all are forked. */
    CU_ASSERT_FATAL(pipe2(go, O_CLOEXEC) == 0);
    fflush(stdout);
    fflush(stderr);
    for (int i = 0; i < FORK_CHILDREN; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            char c;
            alarm(0);
            close(go[1]);
            while (read(go[0], &c, 1) < 0 && errno == EINTR)
                ;
            _exit(fork_child(&ks, epoch)); /* _exit: no atexit clean-up in the child */
        }
        status[i] = -1;
        if (pids[i] > 0)
            forked++;
    }
    close(go[0]);
    close(go[1]);
    CU_ASSERT_EQUAL(forked, FORK_CHILDREN);

    /* Wait for all, at most 120 s: a hung child is a failure, not a hang. */
    monotonic(&t0);
    while (done < forked && since(&t0) < 120) {
        for (int i = 0; i < FORK_CHILDREN; i++) {
            if (pids[i] > 0 && status[i] == -1) {
                int st;
                pid_t r = waitpid(pids[i], &st, WNOHANG);
                if (r == pids[i]) {
                    status[i] = st;
                    done++;
                }
            }
        }
        if (done < forked)
            sleep_ms(20);
    }
    for (int i = 0; i < FORK_CHILDREN; i++) {
        if (pids[i] <= 0)
            continue;
        if (status[i] == -1) {
            fprintf(stderr, "\n  child %ld hung: killed\n", (long)pids[i]);
            kill(pids[i], SIGKILL);
            waitpid(pids[i], &status[i], 0);
            CU_FAIL("a child did not finish");
            continue;
        }
        CU_ASSERT(WIFEXITED(status[i]) && WEXITSTATUS(status[i]) == 0);
        if (!WIFEXITED(status[i]) || WEXITSTATUS(status[i]) != 0)
            fprintf(stderr, "\n  child %ld: %s %d\n", (long)pids[i],
                    WIFEXITED(status[i]) ? "exit status" : "killed by signal",
                    WIFEXITED(status[i]) ? WEXITSTATUS(status[i]) : WTERMSIG(status[i]));
    }

    /* The parent is unaffected: same epoch, no re-initialisation, signs. */
    CU_ASSERT_EQUAL(sign_and_verify(ks.k, ks.pub), SV_OK);
    CU_ASSERT_EQUAL(sign_and_verify(ks.k, ks.pub), SV_OK);
    CU_ASSERT_EQUAL(p11_token_epoch(ks.t), epoch);
    CU_ASSERT_EQUAL(p11_call_count("C_Initialize"), inits);
    keyset_close(&ks);
}

/* ------------------------------------------------------ 6. capabilities */
static p11_token *open_forced(int force_ms)
{
    p11_token_cfg cfg;
    p11_token *t;
    tu_token_cfg(&cfg);
    cfg.force_ms = force_ms;
    t = p11_token_open(&cfg);
    if (t == NULL)
        tu_print_errors();
    return t;
}

static void test_caps_softhsm(void)
{
    p11_token *t = open_forced(0);
    const p11_caps *c;
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    c = p11_token_caps(t);
    CU_ASSERT_EQUAL(c->level, P11_LEVEL_TRANSIENT);
    CU_ASSERT_EQUAL(c->ms, P11_MS_HMAC);
    CU_ASSERT(c->rsa_pkcs && c->rsa_pkcs_unwrap && c->hmac_sha256 && c->hmac_sha384);
    CU_ASSERT(!c->tls12_master && !c->nss_ems && !c->sp800_dp);
    /* SoftHSM2: AES-ECB encrypts and decrypts, but neither wraps nor unwraps
     * (token-facts.md); its C_GetMechanismInfo ORs the flags into the caller's
     * structure, so an uninitialised one gives random flags here. */
    CU_ASSERT(c->aes_ecb_encrypt && c->aes_ecb_decrypt);
    CU_ASSERT(!c->aes_ecb_wrap && !c->aes_ecb_unwrap);
    CU_ASSERT(c->missing[0] != '\0'); /* says what keeps it below sealed */
    p11_token_free(t);

    /* Forcing a strategy the token lacks leaves no strategy at all. */
    t = open_forced(P11_MS_NATIVE);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    CU_ASSERT_EQUAL(p11_token_caps(t)->level, P11_LEVEL_NONE);
    CU_ASSERT_EQUAL(p11_token_caps(t)->ms, P11_MS_NONE);
    p11_token_free(t);
}

static void test_caps_nss(void)
{
    p11_token *t = open_forced(0);
    const p11_caps *c;
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    c = p11_token_caps(t);
    CU_ASSERT_EQUAL(c->level, P11_LEVEL_SEALED);
    CU_ASSERT_EQUAL(c->ms, P11_MS_NATIVE);
    CU_ASSERT(c->tls12_master);
    CU_ASSERT(c->tls12_master_dh);
    CU_ASSERT(c->nss_ems);
    CU_ASSERT(c->nss_ems_dh);
    CU_ASSERT(c->nss_prf_sha256);
    /* NSS softoken does the SP 800-108 double-pipeline KDF (token-facts.md):
     * the probe on a throw-away secret must find it. */
    CU_ASSERT(c->sp800_dp);
    p11_token_free(t);

    t = open_forced(P11_MS_HMAC);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    CU_ASSERT_EQUAL(p11_token_caps(t)->level, P11_LEVEL_TRANSIENT);
    CU_ASSERT_EQUAL(p11_token_caps(t)->ms, P11_MS_HMAC);
    CU_ASSERT_PTR_NOT_NULL(strstr(p11_token_caps(t)->missing, "forced"));
    p11_token_free(t);

    t = open_forced(P11_MS_SP800_108);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    CU_ASSERT_EQUAL(p11_token_caps(t)->level, P11_LEVEL_SEALED);
    CU_ASSERT_EQUAL(p11_token_caps(t)->ms, P11_MS_SP800_108);
    p11_token_free(t);
}

/* ------------------------------------------- 7. token loss (softhsm-remote) */
/* Runs scripts/make-token.sh with ARGS --dir $P11TLS_DIR. Not through system():
 * a p11-kit server started from here would inherit this process's descriptors,
 * among them p11-kit-client's connections (not close-on-exec), and keep them
 * and their server-side handlers alive. */
static int make_token(const char *a1, const char *a2)
{
    char script[4096];
    const char *argv[6];
    int n = 0, st = 0;
    pid_t pid;

    snprintf(script, sizeof(script), "%s/scripts/make-token.sh", tu_env("P11TLS_SOURCE_DIR"));
    argv[n++] = script;
    argv[n++] = a1;
    if (a2 != NULL)
        argv[n++] = a2;
    argv[n++] = "--dir";
    argv[n++] = tu_env("P11TLS_DIR");
    argv[n] = NULL;
    fflush(NULL);
    pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0) {
            dup2(devnull, 0);
            dup2(devnull, 1);
        }
        for (int fd = 3; fd < 4096; fd++)
            close(fd);
        execv(script, (char *const *)argv);
        _exit(127);
    }
    if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "\n  %s %s%s%s failed (status %d)\n", script, a1, a2 ? " " : "",
                a2 ? a2 : "", st);
        return -1;
    }
    return 0;
}

/* The inode of the Unix socket behind a descriptor link ("socket:[N]"), or 0. */
static unsigned long socket_inode(const char *link)
{
    char buf[64];
    unsigned long ino = 0;
    ssize_t n = readlink(link, buf, sizeof(buf) - 1);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    if (sscanf(buf, "socket:[%lu]", &ino) != 1)
        return 0;
    return ino;
}

/* The peer of every Unix socket, from the kernel (NETLINK_SOCK_DIAG, as ss -x). */
typedef struct {
    unsigned long ino, peer;
} unix_pair;

static int unix_peers(unix_pair *pairs, int max)
{
    struct {
        struct nlmsghdr nlh;
        struct unix_diag_req req;
    } rq;
    static long buf[32768 / sizeof(long)];
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    int n = 0, done = 0;

    if (fd < 0)
        return -1;
    memset(&rq, 0, sizeof(rq));
    rq.nlh.nlmsg_len = sizeof(rq);
    rq.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    rq.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    rq.req.sdiag_family = AF_UNIX;
    rq.req.udiag_states = ~0U;
    rq.req.udiag_show = UDIAG_SHOW_PEER;
    if (send(fd, &rq, sizeof(rq), 0) != (ssize_t)sizeof(rq)) {
        close(fd);
        return -1;
    }
    while (!done) {
        ssize_t len = recv(fd, buf, sizeof(buf), 0);
        struct nlmsghdr *h;
        if (len <= 0) {
            n = -1;
            break;
        }
        for (h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)len); h = NLMSG_NEXT(h, len)) {
            struct unix_diag_msg *m;
            struct rtattr *a;
            int alen;
            if (h->nlmsg_type == NLMSG_DONE) {
                done = 1;
                break;
            }
            if (h->nlmsg_type == NLMSG_ERROR) {
                done = 1;
                n = -1;
                break;
            }
            m = NLMSG_DATA(h);
            alen = (int)(h->nlmsg_len - NLMSG_LENGTH(sizeof(*m)));
            for (a = (struct rtattr *)(m + 1); RTA_OK(a, alen); a = RTA_NEXT(a, alen))
                if (a->rta_type == UNIX_DIAG_PEER && n < max) {
                    pairs[n].ino = m->udiag_ino;
                    pairs[n].peer = *(uint32_t *)RTA_DATA(a);
                    n++;
                }
        }
    }
    close(fd);
    return n;
}

/* The p11-kit server of P11TLS_DIR runs one p11-kit-remote per connection; when
 * the server is stopped those stay, and keep serving their clients. Finds the
 * ones serving this process (their stdin is the peer of one of our sockets). */
static int our_handlers(pid_t server, pid_t *out, int max)
{
    static unix_pair pairs[8192];
    unsigned long mine[256];
    int nmine = 0, npairs, n = 0;
    DIR *d;
    struct dirent *e;

    d = opendir("/proc/self/fd");
    while (d != NULL && (e = readdir(d)) != NULL && nmine < 256) {
        char link[300];
        unsigned long ino;
        snprintf(link, sizeof(link), "/proc/self/fd/%s", e->d_name);
        if ((ino = socket_inode(link)) != 0)
            mine[nmine++] = ino;
    }
    if (d != NULL)
        closedir(d);
    npairs = unix_peers(pairs, 8192);
    if (npairs < 0)
        return -1;

    d = opendir("/proc");
    while (d != NULL && (e = readdir(d)) != NULL && n < max) {
        char path[300], stat[1024], *rp;
        unsigned long ino;
        pid_t pid = (pid_t)atol(e->d_name), ppid = 0;
        char state;
        FILE *f;
        size_t len;
        if (pid <= 0)
            continue;
        snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
        if ((f = fopen(path, "r")) == NULL)
            continue;
        len = fread(stat, 1, sizeof(stat) - 1, f);
        fclose(f);
        stat[len] = '\0';
        /* "pid (comm) state ppid ...": comm may hold spaces and parentheses. */
        if (strstr(stat, "(p11-kit-remote) ") == NULL || (rp = strrchr(stat, ')')) == NULL ||
            sscanf(rp + 1, " %c %d", &state, &ppid) != 2 || ppid != server)
            continue;
        snprintf(path, sizeof(path), "/proc/%ld/fd/0", (long)pid);
        if ((ino = socket_inode(path)) == 0)
            continue;
        for (int i = 0; i < npairs; i++) {
            if (pairs[i].ino != ino)
                continue;
            for (int j = 0; j < nmine; j++)
                if (pairs[i].peer == mine[j]) {
                    out[n++] = pid;
                    i = npairs;
                    break;
                }
        }
    }
    if (d != NULL)
        closedir(d);
    return n;
}

static pid_t server_pid(void)
{
    char path[4096];
    long pid = 0;
    FILE *f;
    snprintf(path, sizeof(path), "%s/p11-kit-server.pid", tu_env("P11TLS_DIR"));
    if ((f = fopen(path, "r")) == NULL)
        return 0;
    if (fscanf(f, "%ld", &pid) != 1)
        pid = 0;
    fclose(f);
    return (pid_t)pid;
}

/* Still the same p11-kit-remote (not a reused pid)? */
static int is_handler(pid_t pid)
{
    char path[64], comm[64] = "";
    FILE *f;
    snprintf(path, sizeof(path), "/proc/%ld/comm", (long)pid);
    if ((f = fopen(path, "r")) == NULL)
        return 0;
    if (fgets(comm, sizeof(comm), f) == NULL)
        comm[0] = '\0';
    fclose(f);
    return strcmp(comm, "p11-kit-remote\n") == 0;
}

/* SIGPIPE raised in this process (by a write to the lost connection). */
static volatile sig_atomic_t sigpipes;
static void count_sigpipe(int sig)
{
    (void)sig;
    sigpipes++;
}

static void test_token_loss(void)
{
    struct sigaction sa, old_sa;
    keyset ks;
    unsigned long epoch;
    char all[4096];
    int rc, attempts = 0, stopped, nh;
    pid_t server, handlers[16];
    struct timespec t0;

    watchdog("token loss", 60);
    /* Counted, not fatal: with the default action the process would die here,
     * so the layer must not let a SIGPIPE reach the process at all. */
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = count_sigpipe;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGPIPE, &sa, &old_sa);
    sigpipes = 0;
    if (!keyset_open(&ks)) {
        keyset_close(&ks);
        sigaction(SIGPIPE, &old_sa, NULL);
        watchdog("", 0);
        return;
    }
    CU_ASSERT_EQUAL(sign_and_verify(ks.k, ks.pub), SV_OK);
    epoch = p11_token_epoch(ks.t);

    /* The token goes away: the server, and the handler of our connection. */
    server = server_pid();
    CU_ASSERT_FATAL(server > 0);
    nh = our_handlers(server, handlers, 16);
    CU_ASSERT(nh >= 1); /* we are connected to it */
    stopped = make_token("--stop", NULL) == 0;
    CU_ASSERT(stopped);
    for (int i = 0; i < nh; i++)
        if (is_handler(handlers[i]))
            kill(handlers[i], SIGTERM);
    for (int i = 0; i < nh; i++)
        for (int w = 0; w < 100 && is_handler(handlers[i]); w++)
            sleep_ms(50);
    for (int i = 0; i < nh; i++)
        CU_ASSERT(!is_handler(handlers[i]));

    if (stopped) {
        /* Gone: the sign fails with an error (no crash, no hang), twice. */
        ERR_clear_error();
        rc = sign_and_verify(ks.k, ks.pub);
        CU_ASSERT_EQUAL(rc, SV_SIGN);
        CU_ASSERT(take_errors(all, sizeof(all)) > 0);
        CU_ASSERT_PTR_NOT_NULL(strstr(all, "p11tls"));
        fprintf(stderr, "\n  token gone, 1st sign: %s\n", all);
        rc = sign_and_verify(ks.k, ks.pub);
        CU_ASSERT_EQUAL(rc, SV_SIGN);
        CU_ASSERT(take_errors(all, sizeof(all)) > 0);
        fprintf(stderr, "  token gone, 2nd sign: %s\n", all);
        if (sigpipes != 0)
            fprintf(stderr, "  %d SIGPIPE reached the process (default action: killed)\n",
                    (int)sigpipes);
        CU_ASSERT_EQUAL(sigpipes, 0);
    }

    /* Back: the same p11_token recovers within 10 s, without reopening. */
    CU_ASSERT_FATAL(make_token("--kind", "softhsm-remote") == 0);
    monotonic(&t0);
    do {
        attempts++;
        rc = sign_and_verify(ks.k, ks.pub);
        if (rc != SV_OK) {
            take_errors(all, sizeof(all));
            sleep_ms(500);
        }
    } while (rc != SV_OK && since(&t0) < 10.0);
    fprintf(stderr, "  server back: signed again after %d attempt(s), %.2f s%s%s\n", attempts,
            since(&t0), rc != SV_OK ? "; last error: " : "", rc != SV_OK ? all : "");
    CU_ASSERT_EQUAL(rc, SV_OK);
    CU_ASSERT_NOT_EQUAL(p11_token_epoch(ks.t), epoch);
    /* ... and stays usable. */
    for (int i = 0; i < 5; i++)
        CU_ASSERT_EQUAL(sign_and_verify(ks.k, ks.pub), SV_OK);
    CU_ASSERT_EQUAL(sigpipes, 0);
    keyset_close(&ks);
    sigaction(SIGPIPE, &old_sa, NULL);
    watchdog("", 0);
}

/* ------------------------------------------------------------------ main */
int main(void)
{
    static CU_TestInfo tests[16];
    int n = 0;
    const char *kind = tu_kind();
    int softhsm = kind_is("softhsm") || kind_is("softhsm-remote");

    if (kind == NULL || (!softhsm && !kind_is("nss"))) {
        fprintf(stderr,
                "test_token: P11TLS_KIND is '%s': run via tests/with-token.sh with a "
                "token made by scripts/make-token.sh\n",
                kind ? kind : "(unset)");
        return 2;
    }
#define ADD(name, fn) tests[n++] = (CU_TestInfo){(char *)(name), (fn)}
    ADD("CKR_ and CKM_ names", test_names);
    ADD("module: a missing path fails, naming it", test_module_missing_path);
    if (kind_is("nss"))
        ADD("module: NSS softoken needs its init args", test_nss_init_args_required);
    ADD("module: the token's configuration opens", test_open_good);
    ADD("login: a wrong PIN fails once, not retried, not shown", test_wrong_pin);
    ADD("login: PIN from the environment", test_pin_from_env);
    ADD("session pool: 8 threads share 4 sessions", test_session_pool);
    ADD("sign: 8 threads x 25 with the token key", test_sign_threads);
    ADD("fork: 4 children use the parent's objects", test_fork);
    if (softhsm)
        ADD("caps: SoftHSM2 is transient (HMAC)", test_caps_softhsm);
    else
        ADD("caps: NSS softoken is sealed (native)", test_caps_nss);
    if (kind_is("softhsm-remote"))
        ADD("token loss: server stopped and restarted", test_token_loss);
    tests[n] = (CU_TestInfo)CU_TEST_INFO_NULL;
#undef ADD
    return tu_run("token", tests);
}
