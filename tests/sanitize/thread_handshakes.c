/* thread_handshakes.c - many threads doing TLS 1.2 and TLS 1.3 handshakes against ONE server
 * SSL_CTX whose RSA key is in the token, through p11tls (tests/sanitize/run.sh builds it with
 * ThreadSanitizer, and with AddressSanitizer, and runs it; a sanitizer report fails the run).
 *
 *   thread_handshakes [--threads N] [--handshakes M]      (defaults: 8 threads, 10000)
 *   thread_handshakes --canary     deliberate bugs the sanitizer must report (see canary())
 *
 * The token comes from make-token.sh's env.sh (P11TLS_KEY_URI, P11TLS_CERT) and the server's
 * library context loads p11tls with the configuration in P11TLS_OPENSSL_CNF (run.sh points
 * it at a copy of the token's openssl.cnf naming the sanitized p11tls.so). The client is in a
 * library context of its own with the default provider only: its master secrets are computed
 * in software, so every handshake checks p11tls's server side against plain OpenSSL.
 *
 * The M handshakes are spread over the threads; each thread cycles through 10 client
 * configurations (TLS 1.2: RSA key exchange AES128-GCM-SHA256 or ECDHE-RSA-AES128-GCM-SHA256,
 * extended master secret on or off, session tickets on or off; TLS 1.3: TLS_AES_128_GCM_SHA256
 * on P-256 or TLS_AES_256_GCM_SHA384 on P-384, the key schedule (and, where the token can,
 * the ECDHE key share) in the token) and every fourth round resumes a
 * session (by ticket or by session ID; TLS 1.3: by ticket, its PSK a handle) that any thread
 * made earlier with the same configuration. Each handshake is checked: both ends finished,
 * the protocol version, the expected cipher and (TLS 1.2) EMS, resumed exactly when asked,
 * application data both ways, and (every third) the exporter (RFC 5705 / RFC 8446) of both
 * ends equal. Exit status 0 only if all M handshakes passed every check. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include "testutil.h"

#define NCFG12 8 /* TLS 1.2 client configurations: cipher x EMS x tickets */
#define NCFG 10  /* + 2 TLS 1.3 ones */
#define MAX_THREADS 64
#define MAX_REPORTED 10 /* failures printed in full */

static const char *const cipher_names[4] = {"AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
                                            "TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384"};

static SSL_CTX *server_ctx;       /* the one server context, shared by every thread */
static SSL_CTX *client_ctx[NCFG]; /* TLS 1.2: cipher | ems << 1 | ticket << 2; then TLS 1.3 */
static SSL_SESSION *pool[NCFG];   /* the latest client session of each configuration */
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t print_lock = PTHREAD_MUTEX_INITIALIZER;
static int reported;

static int cfg_tls13(int cfg)
{
    return cfg >= NCFG12;
}
static int cfg_cipher(int cfg) /* index into cipher_names */
{
    return cfg_tls13(cfg) ? 2 + cfg - NCFG12 : cfg & 1;
}
static int cfg_ems(int cfg)
{
    return !cfg_tls13(cfg) && ((cfg >> 1) & 1);
}
static int cfg_ticket(int cfg)
{
    return cfg_tls13(cfg) || ((cfg >> 2) & 1);
}

static void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "thread_handshakes: ");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    ERR_print_errors_fp(stderr);
    exit(2);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------ set-up */

static X509 *read_cert(OSSL_LIB_CTX *libctx, const char *path)
{
    BIO *b = BIO_new_file(path, "r");
    X509 *x = X509_new_ex(libctx, NULL);
    if (b == NULL || x == NULL || PEM_read_bio_X509(b, &x, NULL, NULL) == NULL)
        fatal("cannot read the certificate %s", path);
    BIO_free(b);
    return x;
}

static void make_server(OSSL_LIB_CTX *libctx)
{
    static const unsigned char sid_ctx[] = "p11tls-thread-handshakes";
    EVP_PKEY *key = tu_store_pkey(libctx, tu_env("P11TLS_KEY_URI"));
    X509 *cert = read_cert(libctx, tu_env("P11TLS_CERT"));
    SSL_CTX *c = SSL_CTX_new_ex(libctx, NULL, TLS_server_method());

    if (key == NULL)
        fatal("the token key %s was not found through OSSL_STORE", tu_env("P11TLS_KEY_URI"));
    if (c == NULL || !SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION) ||
        !SSL_CTX_set_max_proto_version(c, TLS1_3_VERSION) ||
        !SSL_CTX_set_cipher_list(c, "AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256") ||
        SSL_CTX_use_certificate(c, cert) != 1 || SSL_CTX_use_PrivateKey(c, key) != 1 ||
        SSL_CTX_check_private_key(c) != 1 ||
        !SSL_CTX_set_session_id_context(c, sid_ctx, sizeof(sid_ctx) - 1))
        fatal("server SSL_CTX with the token key");
    /* Session IDs in the server's cache (clients without tickets) and tickets. */
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_SERVER);
    SSL_CTX_sess_set_cache_size(c, 1 << 16);
    EVP_PKEY_free(key);
    X509_free(cert);
    server_ctx = c;
}

static void make_clients(OSSL_LIB_CTX *libctx)
{
    X509 *cert = read_cert(libctx, tu_env("P11TLS_CERT"));
    for (int cfg = 0; cfg < NCFG; cfg++) {
        SSL_CTX *c = SSL_CTX_new_ex(libctx, NULL, TLS_client_method());
        int v = cfg_tls13(cfg) ? TLS1_3_VERSION : TLS1_2_VERSION;
        if (c == NULL || !SSL_CTX_set_min_proto_version(c, v) ||
            !SSL_CTX_set_max_proto_version(c, v) ||
            !(cfg_tls13(cfg) ? SSL_CTX_set_ciphersuites(c, cipher_names[cfg_cipher(cfg)])
                             : SSL_CTX_set_cipher_list(c, cipher_names[cfg_cipher(cfg)])) ||
            /* TLS 1.3 on P-256 and P-384: key shares in the token where it can (ECDHE) */
            (cfg_tls13(cfg) && !SSL_CTX_set1_groups_list(c, cfg == NCFG12 ? "P-256" : "P-384")) ||
            !X509_STORE_add_cert(SSL_CTX_get_cert_store(c), cert))
            fatal("client SSL_CTX %d", cfg);
        /* The server must present the token's certificate (self-signed, trusted here). */
        SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
        if (!cfg_ems(cfg))
            SSL_CTX_set_options(c, SSL_OP_NO_EXTENDED_MASTER_SECRET);
        if (!cfg_ticket(cfg))
            SSL_CTX_set_options(c, SSL_OP_NO_TICKET);
        SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
        client_ctx[cfg] = c;
    }
    X509_free(cert);
}

/* ------------------------------------------------------------------ one handshake */

typedef struct {
    int id, count;
    /* results */
    int done, failed;
    int full[4], resumed_ticket, resumed_sid, resumed13, ems_on, ems_off, exporters;
    int resume_fallback; /* resumption asked for before any session of that kind existed */
} worker;

static void report(worker *w, int n, int cfg, int resume, const char *why)
{
    pthread_mutex_lock(&print_lock);
    if (reported++ < MAX_REPORTED) {
        fprintf(stderr,
                "thread_handshakes: thread %d, handshake %d (%s, EMS %s, tickets %s%s) FAILED: "
                "%s\n",
                w->id, n, cipher_names[cfg_cipher(cfg)], cfg_ems(cfg) ? "on" : "off",
                cfg_ticket(cfg) ? "on" : "off", resume ? ", resumption" : "", why);
        /* (TLS 1.3 configurations say EMS off, tickets on: EMS is TLS 1.2's) */
        ERR_print_errors_fp(stderr);
    }
    pthread_mutex_unlock(&print_lock);
    ERR_clear_error();
}

/* Steps both ends until both are finished; 0 on an error or a stall. */
static int drive(SSL *c, SSL *s)
{
    int cdone = 0, sdone = 0;
    for (int round = 0; round < 32 && !(cdone && sdone); round++) {
        if (!cdone) {
            int r = SSL_do_handshake(c);
            if (r == 1)
                cdone = 1;
            else if (SSL_get_error(c, r) != SSL_ERROR_WANT_READ)
                return 0;
        }
        if (!sdone) {
            int r = SSL_do_handshake(s);
            if (r == 1)
                sdone = 1;
            else if (SSL_get_error(s, r) != SSL_ERROR_WANT_READ)
                return 0;
        }
    }
    return cdone && sdone;
}

/* from writes len bytes, to reads them back: 1 if they arrive intact. */
static int transfer(SSL *from, SSL *to, const unsigned char *msg, int len)
{
    unsigned char got[256];
    int n;
    if (len > (int)sizeof(got) || SSL_write(from, msg, len) != len)
        return 0;
    n = SSL_read(to, got, sizeof(got));
    return n == len && memcmp(got, msg, (size_t)len) == 0;
}

/* One handshake of configuration cfg (resuming *sess if not NULL); the client's session
 * is returned in *out when out is not NULL. Returns NULL on success, else what failed. */
static const char *handshake(worker *w, int n, int cfg, SSL_SESSION *sess, SSL_SESSION **out)
{
    SSL *c = SSL_new(client_ctx[cfg]), *s = SSL_new(server_ctx);
    BIO *cb = NULL, *sb = NULL;
    const char *why = NULL;
    const SSL_CIPHER *ciph;
    unsigned char msg[64], reply[64];
    int resume = sess != NULL;

    if (c == NULL || s == NULL || !BIO_new_bio_pair(&cb, 0, &sb, 0)) {
        why = "SSL_new or BIO pair";
        goto end;
    }
    SSL_set_bio(c, cb, cb);
    SSL_set_bio(s, sb, sb);
    SSL_set_connect_state(c);
    SSL_set_accept_state(s);
    if (resume && !SSL_set_session(c, sess)) {
        why = "SSL_set_session";
        goto end;
    }
    if (!drive(c, s)) {
        why = "the handshake did not complete";
        goto end;
    }
    if (!SSL_is_init_finished(c) || !SSL_is_init_finished(s)) {
        why = "SSL_is_init_finished is false";
        goto end;
    }
    if (SSL_version(s) != (cfg_tls13(cfg) ? TLS1_3_VERSION : TLS1_2_VERSION) ||
        SSL_version(c) != SSL_version(s)) {
        why = "not the protocol version asked for";
        goto end;
    }
    ciph = SSL_get_current_cipher(s);
    if (ciph == NULL || strcmp(SSL_CIPHER_get_name(ciph), cipher_names[cfg_cipher(cfg)]) != 0) {
        why = "unexpected cipher";
        goto end;
    }
    if (!cfg_tls13(cfg) &&
        (SSL_get_extms_support(s) != cfg_ems(cfg) || SSL_get_extms_support(c) != cfg_ems(cfg))) {
        why = "extended master secret not as configured";
        goto end;
    }
    if (SSL_session_reused(s) != resume || SSL_session_reused(c) != resume) {
        why = resume ? "the session was not resumed" : "a new session was resumed";
        goto end;
    }
    /* Application data both ways (the key block came from the token's PRF). */
    if (RAND_bytes(msg, sizeof(msg)) != 1) {
        why = "RAND_bytes";
        goto end;
    }
    msg[0] = (unsigned char)w->id;
    for (size_t i = 0; i < sizeof(reply); i++)
        reply[i] = (unsigned char)(msg[sizeof(msg) - 1 - i] ^ 0x5a);
    if (!transfer(c, s, msg, (int)sizeof(msg)) || !transfer(s, c, reply, (int)sizeof(reply))) {
        why = "application data did not go through";
        goto end;
    }
    if (n % 3 == 0) {
        static const char label[] = "EXPERIMENTAL-p11tls-threads";
        unsigned char ek_c[32], ek_s[32], ctx[8] = {0};
        memcpy(ctx, &n, sizeof(n));
        if (SSL_export_keying_material(c, ek_c, sizeof(ek_c), label, sizeof(label) - 1, ctx,
                                       sizeof(ctx), 1) != 1 ||
            SSL_export_keying_material(s, ek_s, sizeof(ek_s), label, sizeof(label) - 1, ctx,
                                       sizeof(ctx), 1) != 1 ||
            memcmp(ek_c, ek_s, sizeof(ek_c)) != 0) {
            why = "the exporters of the two ends differ";
            goto end;
        }
        w->exporters++;
    }
    if (out != NULL && (*out = SSL_get1_session(c)) == NULL) {
        why = "SSL_get1_session";
        goto end;
    }
    /* Closed without close_notify but marked shut down: both ends keep the session. */
    SSL_set_shutdown(c, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_set_shutdown(s, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
end:
    SSL_free(c);
    SSL_free(s);
    return why;
}

static void *run_worker(void *arg)
{
    worker *w = arg;
    for (int i = 0; i < w->count; i++) {
        int n = w->id + i * MAX_THREADS; /* unique over all threads */
        int cfg = (i + w->id) % NCFG;
        int want_resume = (i / NCFG + w->id) % 4 == 3;
        SSL_SESSION *sess = NULL, *fresh = NULL;
        const char *why;

        if (want_resume) {
            pthread_mutex_lock(&pool_lock);
            sess = pool[cfg];
            if (sess != NULL && !SSL_SESSION_up_ref(sess))
                sess = NULL;
            pthread_mutex_unlock(&pool_lock);
            if (sess == NULL)
                w->resume_fallback++;
        }
        why = handshake(w, n, cfg, sess, sess == NULL ? &fresh : NULL);
        if (why != NULL) {
            w->failed++;
            report(w, n, cfg, sess != NULL, why);
        } else {
            w->done++;
            if (sess == NULL)
                w->full[cfg_cipher(cfg)]++;
            else if (cfg_tls13(cfg))
                w->resumed13++;
            else if (cfg_ticket(cfg))
                w->resumed_ticket++;
            else
                w->resumed_sid++;
            if (cfg_ems(cfg))
                w->ems_on++;
            else if (!cfg_tls13(cfg))
                w->ems_off++;
        }
        if (fresh != NULL) {
            SSL_SESSION *old;
            pthread_mutex_lock(&pool_lock);
            old = pool[cfg];
            pool[cfg] = fresh;
            pthread_mutex_unlock(&pool_lock);
            SSL_SESSION_free(old);
        }
        SSL_SESSION_free(sess);
        ERR_clear_error();
    }
    return NULL;
}

/* ------------------------------------------------------------------ canary */

/* --canary: two deliberate bugs that the sanitizers must report, proving that the build
 * is instrumented and that run.sh sees the reports: two threads incrementing a counter
 * without a lock (ThreadSanitizer: data race) and a block whose last pointer is dropped
 * (LeakSanitizer: leak). Not p11tls code; no token involved. */
static int canary_counter;
static void *volatile canary_ptr;

static void *canary_thread(void *arg)
{
    for (int i = 0; i < 1000; i++)
        canary_counter++;
    if (arg != NULL) {
        canary_ptr = malloc(4242);
        canary_ptr = NULL;
    }
    return NULL;
}

static int canary(void)
{
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        if (pthread_create(&t[i], NULL, canary_thread, i ? &t[0] : NULL) != 0)
            fatal("pthread_create");
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    printf("thread_handshakes: canary: counter %d\n", canary_counter);
    return 0;
}

/* ------------------------------------------------------------------ main */

static int arg_int(int argc, char **argv, const char *name, int def, int min, int max)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], name) == 0) {
            char *end;
            long v;
            if (i + 1 >= argc)
                fatal("%s needs a value", name);
            v = strtol(argv[i + 1], &end, 10);
            if (*end != '\0' || v < min || v > max)
                fatal("%s: a number from %d to %d", name, min, max);
            return (int)v;
        }
    }
    return def;
}

int main(int argc, char **argv)
{
    int nthreads = arg_int(argc, argv, "--threads", 8, 1, MAX_THREADS);
    int total = arg_int(argc, argv, "--handshakes", 10000, 1, 10000000);
    OSSL_LIB_CTX *server_libctx, *client_libctx;
    OSSL_PROVIDER *client_default;
    pthread_t tid[MAX_THREADS];
    worker w[MAX_THREADS], sum;
    double t0, elapsed;
    int fail = 0;

    if (argc == 2 && strcmp(argv[1], "--canary") == 0)
        return canary();
    for (int i = 1; i < argc; i += 2)
        if (strcmp(argv[i], "--threads") != 0 && strcmp(argv[i], "--handshakes") != 0)
            fatal("unknown argument %s (usage: thread_handshakes [--threads N] [--handshakes M])",
                  argv[i]);
    /* Nothing may load p11tls into the default library context behind our back. */
    unsetenv("OPENSSL_CONF");
    if (!OPENSSL_init_ssl(OPENSSL_INIT_NO_LOAD_CONFIG, NULL))
        fatal("OPENSSL_init_ssl");

    /* The server: p11tls (preferred for every algorithm) and default, from the token's
     * configuration. tu_libctx() fails the program if p11tls is not available. */
    server_libctx = tu_libctx();
    /* The client: the default provider only, in a context of its own. */
    client_libctx = OSSL_LIB_CTX_new();
    client_default = client_libctx ? OSSL_PROVIDER_load(client_libctx, "default") : NULL;
    if (client_default == NULL)
        fatal("client library context with the default provider");
    if (OSSL_PROVIDER_available(client_libctx, "p11tls"))
        fatal("p11tls is loaded in the client's library context");

    make_server(server_libctx);
    make_clients(client_libctx);

    printf("thread_handshakes: token %s, %d threads, %d handshakes against one server SSL_CTX\n",
           tu_kind() ? tu_kind() : "?", nthreads, total);
    fflush(stdout);
    memset(w, 0, sizeof(w));
    t0 = now();
    for (int t = 0; t < nthreads; t++) {
        w[t].id = t;
        w[t].count = total / nthreads + (t < total % nthreads);
        if (pthread_create(&tid[t], NULL, run_worker, &w[t]) != 0)
            fatal("pthread_create");
    }
    for (int t = 0; t < nthreads; t++)
        pthread_join(tid[t], NULL);
    elapsed = now() - t0;

    memset(&sum, 0, sizeof(sum));
    for (int t = 0; t < nthreads; t++) {
        sum.done += w[t].done;
        sum.failed += w[t].failed;
        for (int k = 0; k < 4; k++)
            sum.full[k] += w[t].full[k];
        sum.resumed13 += w[t].resumed13;
        sum.resumed_ticket += w[t].resumed_ticket;
        sum.resumed_sid += w[t].resumed_sid;
        sum.ems_on += w[t].ems_on;
        sum.ems_off += w[t].ems_off;
        sum.exporters += w[t].exporters;
        sum.resume_fallback += w[t].resume_fallback;
    }
    printf("  handshakes passed  %d of %d (failed: %d)\n", sum.done, total, sum.failed);
    printf("  full               %d RSA key exchange (%s), %d ECDHE-RSA (%s); TLS 1.3: %d %s, "
           "%d %s\n",
           sum.full[0], cipher_names[0], sum.full[1], cipher_names[1], sum.full[2], cipher_names[2],
           sum.full[3], cipher_names[3]);
    printf("  resumed            %d by ticket, %d by session ID, %d TLS 1.3 by ticket (%d asked "
           "for before a session existed: full instead)\n",
           sum.resumed_ticket, sum.resumed_sid, sum.resumed13, sum.resume_fallback);
    printf("  extended master    %d on, %d off; exporters compared: %d\n", sum.ems_on, sum.ems_off,
           sum.exporters);
    printf("  time               %.1f s, %.0f handshakes/s\n", elapsed,
           elapsed > 0 ? sum.done / elapsed : 0.0);

    /* Every kind of handshake must have happened, or the mix did not test what it claims. */
    if (sum.failed != 0 || sum.done != total)
        fail = 1;
    if (total >= 8 * NCFG * 4 &&
        (sum.full[0] == 0 || sum.full[1] == 0 || sum.full[2] == 0 || sum.full[3] == 0 ||
         sum.resumed13 == 0 || sum.resumed_ticket == 0 || sum.resumed_sid == 0 || sum.ems_on == 0 ||
         sum.ems_off == 0 || sum.exporters == 0)) {
        fprintf(stderr, "thread_handshakes: some kind of handshake never happened\n");
        fail = 1;
    }

    for (int cfg = 0; cfg < NCFG; cfg++) {
        SSL_SESSION_free(pool[cfg]);
        SSL_CTX_free(client_ctx[cfg]);
    }
    SSL_CTX_free(server_ctx);
    OSSL_PROVIDER_unload(client_default);
    OSSL_LIB_CTX_free(client_libctx);
    OSSL_LIB_CTX_free(server_libctx);
    printf("thread_handshakes: %s\n", fail ? "FAILED" : "ok");
    return fail;
}
