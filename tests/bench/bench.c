/* bench.c - p11tls benchmarks (scripts/bench.sh builds, runs and reports them; not a
 * ctest test). TLS 1.2 handshakes between a client and a server in one process over a
 * BIO pair; the client in a library context of its own (default provider only), the
 * server on
 *   (a) the default provider and a software RSA-2048 key made here (a token key cannot
 *       be exported, so (a) has a key of the same modulus size, not the same key);
 *   (b) p11tls "key only": the token's openssl.cnf without `default_properties =
 *       ?provider=p11tls`, so that only the RSA key is in the token and TLS1-PRF comes
 *       from the default provider (checked on every handshake: the server's master
 *       secret must equal the client's: prf=software);
 *   (c) p11tls at its full level (the token's openssl.cnf as make-token.sh wrote it;
 *       the server holds a handle, not the master secret: prf=token).
 *
 *   p11tls-bench run      handshakes/s and server CPU (full, resumed; TLS 1.2 RSA key
 *                         exchange and ECDHE-RSA; TLS 1.3 with X25519, 2 tickets per full
 *                         handshake as nginx sends them, resumed by a stateless ticket;
 *                         for TLS 1.3 (b) is "TLS 1.3 in software": its TLS13-KDF and
 *                         HMAC are the default provider's), raw RSA-2048 private-key operations, 1
 * vs 2 threads; "key value" lines on stdout p11tls-bench count    PKCS#11 calls per handshake from
 * p11tls's own call log: run it with P11TLS_DEBUG=/path/file (read back by the bench) p11tls-bench
 * profile  time inside the module per PKCS#11 function: p11tls loads p11timer.so (next to this
 * program), which forwards to the token's module and times the calls p11tls-bench mem      VmRSS
 * and the token's secret session objects over --mem N full handshakes, in a fresh process
 *   p11tls-bench report FILE...   the table (with PASS/MISS) from the outputs above
 * run/count/profile/mem take the token from make-token.sh's env.sh (P11TLS_*) and the
 * options --runs R, --full N, --resumed N, --raw N, --threads N, --mem N, --only a,b,c
 * (run), --cpu C (pin to CPU C; -1: no pinning).
 *
 * Server CPU is CLOCK_THREAD_CPUTIME_ID around the server's SSL_do_handshake calls
 * only. A token behind p11-kit server (P11TLS_DIR/p11-kit-server.pid) does its work in
 * other processes: their CPU time (the server and its per-connection children, from
 * /proc) is reported separately as tok_us. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <ctype.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rsa.h>
#include <openssl/ssl.h>
#include <openssl/store.h>
#include <openssl/x509.h>
#include "p11.h"
#include "testutil.h"

#define CIPHER_RSA "AES128-GCM-SHA256"
#define CIPHER_ECDHE "ECDHE-RSA-AES128-GCM-SHA256"
#define SUITE_TLS13 "TLS_AES_128_GCM_SHA256"
/* TLS 1.3 at sealed, the target in token operations: what RFC 8446 7.1 and the record
 * layer need, server side, X25519, 2 tickets after a full handshake and 1 after a
 * resumption. Full: 15 derivations (early secret, "derived", handshake secret, 2
 * handshake traffic secrets, "derived", master secret, 2 application traffic secrets,
 * exporter and resumption master secrets, 2 finished keys, 2 ticket PSKs), the (EC)DHE
 * secret's import, 8 exported keys and IVs at 3 operations each (derive, read, destroy:
 * CKM_HKDF_DATA makes an object), 2 Finished MACs, the RSA CertificateVerify = 43.
 * Resumed: 16 derivations (the same less one ticket, plus the binder key and its
 * finished key), the import, the 8 exports (24), 3 MACs (binder, 2 Finished) = 44. */
#define TLS13_OPS_FULL 43
#define TLS13_OPS_RES 44
/* with the key share in the token (P-256): the pair generated, its point read, the public
 * object destroyed, the secret derived, the private key and the secret destroyed (6),
 * instead of the import (already counted): 5 more */
#define TLS13_OPS_ECDHE 5
/* cipher indexes: 0 RSA kx, 1 ECDHE-RSA (TLS 1.2), 2 TLS 1.3 (X25519: a software key
 * share), 3 TLS 1.3 on P-256 (the key share in the token where it can) */
#define CI_TLS13 2
#define CI_TLS13_P256 3
#define NCI 4
#define IS_TLS13(ci) ((ci) >= CI_TLS13)
/* count: handle-cache-size of (c), so that its steady state comes quickly */
#define COUNT_CACHE 64

/* ------------------------------------------------------------------ utilities */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "p11tls-bench: ");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    ERR_print_errors_fp(stderr);
    exit(2);
}

static const char *env(const char *name)
{
    const char *v = getenv(name);
    if (v == NULL || *v == '\0')
        die("environment variable %s is not set (source the token's env.sh)", name);
    return v;
}

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double now_thread_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    double tmp[64];
    if (n <= 0)
        return 0;
    if (n > 64)
        n = 64;
    memcpy(tmp, v, n * sizeof(double));
    qsort(tmp, n, sizeof(double), cmp_double);
    return n % 2 ? tmp[n / 2] : (tmp[n / 2 - 1] + tmp[n / 2]) / 2;
}

static void pin_cpu(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    if (cpu < 0) {
        for (int i = 0; i < CPU_SETSIZE && i < sysconf(_SC_NPROCESSORS_ONLN); i++)
            CPU_SET(i, &set);
    } else {
        CPU_SET(cpu, &set);
    }
    if (sched_setaffinity(0, sizeof(set), &set) != 0)
        fprintf(stderr, "p11tls-bench: sched_setaffinity(%d): %s\n", cpu, strerror(errno));
}

static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        if (strncmp(line, "VmRSS:", 6) == 0)
            kb = strtol(line + 6, NULL, 10);
    if (f != NULL)
        fclose(f);
    return kb;
}

/* The first three fields of /proc/loadavg. */
static const char *loadavg(void)
{
    static char buf[64];
    FILE *f = fopen("/proc/loadavg", "r");
    buf[0] = '\0';
    if (f != NULL) {
        if (fgets(buf, sizeof(buf), f) == NULL)
            buf[0] = '\0';
        fclose(f);
    }
    for (int i = 0, sp = 0; buf[i]; i++)
        if (buf[i] == ' ' && ++sp == 3) {
            buf[i] = '\0';
            break;
        }
    buf[strcspn(buf, "\n")] = '\0';
    return buf;
}

/* CPU seconds of a process: the sum of its threads' run time (schedstat, ns), else
 * utime+stime from stat (clock ticks). */
static double proc_cpu(long pid)
{
    char path[320], buf[1024], *p;
    FILE *f;
    DIR *d;
    struct dirent *e;
    unsigned long ut = 0, st = 0;
    double sum = 0;
    int n = 0;

    snprintf(path, sizeof(path), "/proc/%ld/task", pid);
    d = opendir(path);
    while (d != NULL && (e = readdir(d)) != NULL) {
        unsigned long long ns;
        if (!isdigit((unsigned char)e->d_name[0]))
            continue;
        snprintf(path, sizeof(path), "/proc/%ld/task/%s/schedstat", pid, e->d_name);
        f = fopen(path, "r");
        if (f != NULL && fscanf(f, "%llu", &ns) == 1) {
            sum += ns * 1e-9;
            n++;
        }
        if (f != NULL)
            fclose(f);
    }
    if (d != NULL)
        closedir(d);
    if (n > 0)
        return sum;
    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    f = fopen(path, "r");
    if (f == NULL)
        return 0;
    if (fgets(buf, sizeof(buf), f) == NULL) {
        fclose(f);
        return 0;
    }
    fclose(f);
    p = strrchr(buf, ')'); /* comm may hold spaces */
    if (p == NULL ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static long proc_status_num(long pid, const char *field)
{
    char path[64], line[256];
    size_t fl = strlen(field);
    long v = -1;
    FILE *f;
    snprintf(path, sizeof(path), "/proc/%ld/status", pid);
    f = fopen(path, "r");
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        if (strncmp(line, field, fl) == 0 && line[fl] == ':')
            v = strtol(line + fl + 1, NULL, 10);
    if (f != NULL)
        fclose(f);
    return v;
}

static long proc_ppid(long pid)
{
    return proc_status_num(pid, "PPid");
}

/* The token's process: p11-kit server (from P11TLS_DIR/p11-kit-server.pid) and its
 * per-connection children. 0 when the token is in this process. */
static long token_server_pid;

static void find_token_server(void)
{
    const char *dir = getenv("P11TLS_DIR");
    char path[4096];
    FILE *f;
    if (dir == NULL)
        return;
    snprintf(path, sizeof(path), "%s/p11-kit-server.pid", dir);
    f = fopen(path, "r");
    if (f == NULL)
        return;
    if (fscanf(f, "%ld", &token_server_pid) != 1)
        token_server_pid = 0;
    fclose(f);
}

/* Sum of f over the token's process tree (server + children); 0 in-process. */
static double token_tree(double (*f)(long pid))
{
    DIR *d;
    struct dirent *e;
    double sum;
    if (token_server_pid <= 0)
        return 0;
    sum = f(token_server_pid);
    d = opendir("/proc");
    while (d != NULL && (e = readdir(d)) != NULL) {
        long pid;
        if (!isdigit((unsigned char)e->d_name[0]))
            continue;
        pid = strtol(e->d_name, NULL, 10);
        if (proc_ppid(pid) == token_server_pid)
            sum += f(pid);
    }
    if (d != NULL)
        closedir(d);
    return sum;
}

/* CPU seconds of the token's processes. */
static double token_cpu(void)
{
    return token_tree(proc_cpu);
}

static double proc_rss(long pid)
{
    return (double)proc_status_num(pid, "VmRSS");
}

/* kB resident in the token's processes. */
static long token_rss_kb(void)
{
    return (long)token_tree(proc_rss);
}

static void out(const char *key, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out(const char *key, const char *fmt, ...)
{
    va_list ap;
    printf("%s ", key);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
}

/* ------------------------------------------------------- server configurations */

typedef struct {
    const char *name; /* "a", "b", "c" */
    const char *desc;
    OSSL_LIB_CTX *libctx;
    EVP_PKEY *key;
    X509 *cert;
    SSL_CTX *full;   /* no session cache, no tickets */
    SSL_CTX *res;    /* session-ID cache, no tickets */
    SSL_CTX *full13; /* TLS 1.3: no session cache; 2 stateless tickets per full handshake */
    int token;       /* the key is in the token */
} server_cfg;

static OSSL_LIB_CTX *client_libctx;
static SSL_CTX *client_ctx[NCI]; /* [0] RSA kx, [1] ECDHE-RSA, [2] TLS 1.3, [3] on P-256 */
static const char *cipher_name[NCI] = {CIPHER_RSA, CIPHER_ECDHE, SUITE_TLS13, SUITE_TLS13};
static const char *cipher_tag[NCI] = {"rsa", "ecdhe", "tls13", "tls13p256"};

static SSL_CTX *new_server_ctx(server_cfg *sc, int cache)
{
    static const unsigned char sid_ctx[] = "p11tls-bench";
    SSL_CTX *ctx = SSL_CTX_new_ex(sc->libctx, NULL, TLS_server_method());
    if (ctx == NULL || !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
        !SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION) ||
        !SSL_CTX_set_cipher_list(ctx, CIPHER_RSA ":" CIPHER_ECDHE) ||
        SSL_CTX_use_certificate(ctx, sc->cert) != 1 || SSL_CTX_use_PrivateKey(ctx, sc->key) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1)
        die("(%s) server SSL_CTX", sc->name);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
    SSL_CTX_set_session_cache_mode(ctx, cache ? SSL_SESS_CACHE_SERVER : SSL_SESS_CACHE_OFF);
    return ctx;
}

/* TLS 1.3 as nginx serves it by default: stateless tickets (2 after a full handshake,
 * 1 after a resumption), no server-side cache; the same context resumes. */
static SSL_CTX *new_server_ctx13(server_cfg *sc)
{
    SSL_CTX *ctx = SSL_CTX_new_ex(sc->libctx, NULL, TLS_server_method());
    if (ctx == NULL || !SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) ||
        !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) ||
        SSL_CTX_use_certificate(ctx, sc->cert) != 1 || SSL_CTX_use_PrivateKey(ctx, sc->key) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1)
        die("(%s) server SSL_CTX (TLS 1.3)", sc->name);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    return ctx;
}

static SSL_CTX *server_ctx(server_cfg *sc, int ci, int resumed)
{
    if (IS_TLS13(ci))
        return sc->full13;
    return resumed ? sc->res : sc->full;
}

static void make_client(void)
{
    client_libctx = OSSL_LIB_CTX_new();
    if (client_libctx == NULL || OSSL_PROVIDER_load(client_libctx, "default") == NULL)
        die("client library context");
    for (int i = 0; i < NCI; i++) {
        SSL_CTX *c = SSL_CTX_new_ex(client_libctx, NULL, TLS_client_method());
        int v = IS_TLS13(i) ? TLS1_3_VERSION : TLS1_2_VERSION;
        if (c == NULL || !SSL_CTX_set_min_proto_version(c, v) ||
            !SSL_CTX_set_max_proto_version(c, v) ||
            !(IS_TLS13(i) ? SSL_CTX_set_ciphersuites(c, cipher_name[i])
                          : SSL_CTX_set_cipher_list(c, cipher_name[i])) ||
            (i == CI_TLS13_P256 && !SSL_CTX_set1_groups_list(c, "P-256")))
            die("client SSL_CTX");
        SSL_CTX_set_verify(c, SSL_VERIFY_NONE, NULL);
        SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
        client_ctx[i] = c;
    }
}

/* (a): a software RSA-2048 key and a self-signed certificate made now. */
static void make_soft(server_cfg *sc)
{
    X509_NAME *n;
    sc->name = "a";
    sc->desc = "default provider, software RSA-2048 key (generated by the bench)";
    sc->libctx = OSSL_LIB_CTX_new();
    if (sc->libctx == NULL || OSSL_PROVIDER_load(sc->libctx, "default") == NULL)
        die("(a) library context");
    sc->key = EVP_PKEY_Q_keygen(sc->libctx, NULL, "RSA", (size_t)2048);
    sc->cert = X509_new_ex(sc->libctx, NULL);
    if (sc->key == NULL || sc->cert == NULL)
        die("(a) RSA key generation");
    X509_set_version(sc->cert, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(sc->cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(sc->cert), 0);
    X509_gmtime_adj(X509_getm_notAfter(sc->cert), 86400L * 30);
    X509_set_pubkey(sc->cert, sc->key);
    n = X509_get_subject_name(sc->cert);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1,
                               0);
    X509_set_issuer_name(sc->cert, n);
    if (X509_sign(sc->cert, sc->key, EVP_sha256()) <= 0)
        die("(a) self-signed certificate");
    sc->full = new_server_ctx(sc, 0);
    sc->res = new_server_ctx(sc, 1);
    sc->full13 = new_server_ctx13(sc);
}

/* Temporary copies of the token's openssl.cnf, removed at exit. */
static char tmp_cnf[4][64];
static int n_tmp_cnf;

static void remove_tmp_cnf(void)
{
    for (int i = 0; i < n_tmp_cnf; i++)
        unlink(tmp_cnf[i]);
}

/* A copy of the token's openssl.cnf: without its default_properties line(s) and
 * with `min-assurance = key-only` when keyonly; with `handle-cache-size = cache` when cache > 0;
 * with `pkcs11-module = module` when module is not NULL. */
static int derived_ecdhe_soft; /* derived_cnf: add `ecdhe = software` */
static const char *derived_cnf(const char *cnf, int keyonly, int cache, const char *module)
{
    char *path;
    FILE *in = fopen(cnf, "r"), *o;
    char line[4096];
    int fd, changed = 0;
    if (in == NULL)
        die("cannot read %s", cnf);
    if (n_tmp_cnf == 4)
        die("too many configuration copies");
    path = tmp_cnf[n_tmp_cnf];
    strcpy(path, "/tmp/p11tls-bench-cnf-XXXXXX");
    fd = mkstemp(path);
    if (fd < 0 || (o = fdopen(fd, "w")) == NULL)
        die("mkstemp");
    if (n_tmp_cnf++ == 0)
        atexit(remove_tmp_cnf);
    while (fgets(line, sizeof(line), in) != NULL) {
        const char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (keyonly && strncmp(p, "default_properties", 18) == 0) {
            changed++;
            continue;
        }
        if (keyonly && strncmp(p, "min-assurance", 13) == 0) {
            /* without default_properties p11tls is usable only when told so */
            fputs("min-assurance = key-only\n", o);
            changed++;
            continue;
        }
        if (cache > 0 && strncmp(p, "handle-cache-size", 17) == 0)
            continue;
        if (module != NULL && strncmp(p, "pkcs11-module", 13) == 0) {
            fprintf(o, "pkcs11-module = %s\n", module);
            changed++;
            continue;
        }
        fputs(line, o);
        if (derived_ecdhe_soft && strncmp(p, "[p11tls_sect]", 13) == 0) {
            fputs("ecdhe = software\n", o);
            changed++;
        }
        if (cache > 0 && strncmp(p, "[p11tls_sect]", 13) == 0) {
            fprintf(o, "handle-cache-size = %d\n", cache);
            changed++;
        }
    }
    fclose(in);
    fclose(o);
    if (changed == 0)
        fprintf(stderr, "p11tls-bench: note: %s: nothing to change in it\n", cnf);
    return path;
}

static void make_token_cfg(server_cfg *sc, const char *name, const char *cnf)
{
    FILE *f;
    sc->name = name;
    sc->token = 1;
    sc->libctx = OSSL_LIB_CTX_new();
    if (sc->libctx == NULL || !OSSL_LIB_CTX_load_config(sc->libctx, cnf) ||
        !OSSL_PROVIDER_available(sc->libctx, "p11tls"))
        die("(%s) cannot load p11tls with %s", name, cnf);
    sc->key = tu_store_pkey(sc->libctx, env("P11TLS_KEY_URI"));
    if (sc->key == NULL)
        die("(%s) cannot load the token key %s", name, env("P11TLS_KEY_URI"));
    f = fopen(env("P11TLS_CERT"), "r");
    sc->cert = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f)
        fclose(f);
    if (sc->cert == NULL)
        die("cannot read %s", env("P11TLS_CERT"));
    sc->full = new_server_ctx(sc, 0);
    sc->res = new_server_ctx(sc, 1);
    sc->full13 = new_server_ctx13(sc);
}

/* The p11tls provider's get_params (name, assurance, strategy). */
static int find_p11tls(OSSL_PROVIDER *p, void *arg)
{
    if (strcmp(OSSL_PROVIDER_get0_name(p), "p11tls") == 0) {
        *(OSSL_PROVIDER **)arg = p;
        return 0;
    }
    return 1;
}

static void print_provider_info(server_cfg *sc)
{
    OSSL_PROVIDER *p = NULL;
    const char *lvl = "?", *strat = "?";
    OSSL_PARAM params[] = {OSSL_PARAM_utf8_ptr("p11tls-assurance", (char **)&lvl, 0),
                           OSSL_PARAM_utf8_ptr("p11tls-strategy", (char **)&strat, 0),
                           OSSL_PARAM_END};
    OSSL_PROVIDER_do_all(sc->libctx, find_p11tls, &p);
    if (p != NULL)
        OSSL_PROVIDER_get_params(p, params);
    out("level", "%s", lvl);
    out("strategy", "%s", strat);
}

/* ------------------------------------------------------------------ handshakes */

typedef struct {
    double srv_cpu;         /* server's thread CPU (s) */
    int reused;             /* server says: resumed */
    int ms_equal;           /* server's master secret == client's (software PRF) */
    SSL_SESSION *client_ss; /* if asked for */
} hs_result;

/* One handshake; 1 if it completed. */
static int handshake(SSL_CTX *sctx, SSL_CTX *cctx, SSL_SESSION *resume, int want_session,
                     hs_result *r)
{
    SSL *s = SSL_new(sctx), *c = SSL_new(cctx);
    BIO *sb = NULL, *cb = NULL;
    int sdone = 0, cdone = 0, ok = 0;
    double cpu = 0;

    memset(r, 0, sizeof(*r));
    if (s == NULL || c == NULL || !BIO_new_bio_pair(&sb, 0, &cb, 0))
        goto end;
    SSL_set_bio(s, sb, sb);
    SSL_set_bio(c, cb, cb);
    SSL_set_accept_state(s);
    SSL_set_connect_state(c);
    if (resume != NULL)
        SSL_set_session(c, resume);
    for (int i = 0; i < 64 && !(sdone && cdone); i++) {
        int rc;
        if (!cdone) {
            rc = SSL_do_handshake(c);
            if (rc == 1)
                cdone = 1;
            else if (SSL_get_error(c, rc) != SSL_ERROR_WANT_READ)
                goto end;
        }
        if (!sdone) {
            double t0 = now_thread_cpu();
            rc = SSL_do_handshake(s);
            cpu += now_thread_cpu() - t0;
            if (rc == 1)
                sdone = 1;
            else if (SSL_get_error(s, rc) != SSL_ERROR_WANT_READ)
                goto end;
        }
    }
    if (!(sdone && cdone))
        goto end;
    if (SSL_version(c) == TLS1_3_VERSION) {
        /* the client reads the server's tickets (its session and PSK come with them) */
        unsigned char b;
        int rc = SSL_read(c, &b, 1);
        if (rc > 0 || SSL_get_error(c, rc) != SSL_ERROR_WANT_READ)
            goto end;
    }
    {
        unsigned char ms[64], mc[64];
        SSL_SESSION *ss = SSL_get_session(s), *cs = SSL_get_session(c);
        size_t ls = SSL_SESSION_get_master_key(ss, ms, sizeof(ms));
        size_t lc = SSL_SESSION_get_master_key(cs, mc, sizeof(mc));
        r->ms_equal = ls == lc && memcmp(ms, mc, ls) == 0;
        OPENSSL_cleanse(ms, sizeof(ms));
        OPENSSL_cleanse(mc, sizeof(mc));
    }
    r->reused = SSL_session_reused(s);
    if (want_session)
        r->client_ss = SSL_get1_session(c);
    /* A quiet close: both sides keep the session resumable. */
    SSL_set_shutdown(s, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_set_shutdown(c, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    ok = 1;
end:
    r->srv_cpu = cpu;
    SSL_free(s);
    SSL_free(c);
    return ok;
}

/* A series of handshakes: wall time and server CPU. */
typedef struct {
    int n, failed, ms_equal, reused;
    double wall, cpu, tok;
} series;

/* Called right before the timed handshakes of a series (after its set-up). */
static void (*series_hook)(void);

static int run_series(server_cfg *sc, int ci, int resumed, int n, series *res)
{
    SSL_SESSION *sess = NULL;
    hs_result r;
    double t0, k0;

    memset(res, 0, sizeof(*res));
    if (resumed) {
        if (!handshake(server_ctx(sc, ci, 1), client_ctx[ci], NULL, 1, &r))
            return 0;
        sess = r.client_ss;
    }
    if (series_hook != NULL)
        series_hook();
    k0 = token_cpu();
    t0 = now_mono();
    for (int i = 0; i < n; i++) {
        if (!handshake(server_ctx(sc, ci, resumed), client_ctx[ci], sess, 0, &r)) {
            res->failed++;
            if (res->failed == 1) {
                fprintf(stderr, "p11tls-bench: (%s) %s %s handshake failed:\n", sc->name,
                        cipher_name[ci], resumed ? "resumed" : "full");
                ERR_print_errors_fp(stderr);
            }
            ERR_clear_error();
            if (res->failed > 3)
                break;
            continue;
        }
        res->n++;
        res->cpu += r.srv_cpu;
        res->ms_equal += r.ms_equal;
        res->reused += r.reused;
    }
    res->wall = now_mono() - t0;
    res->tok = token_cpu() - k0;
    SSL_SESSION_free(sess);
    return res->failed == 0;
}

/* runs x n handshakes for each configuration, interleaved (run 1 of each, then run 2,
 * ...) so that a load that comes and goes touches them all alike: medians of
 * handshakes/s, server CPU/hs and token CPU/hs. */
static void measure_handshakes(server_cfg **cfgs, int ncfg, int ci, int resumed, int runs, int n)
{
    double hs[4][64], cpu[4][64], tok[4][64];
    int done[4] = {0}, ms_equal[4] = {0}, reused[4] = {0}, total[4] = {0}, failed[4] = {0};
    char key[64];
    series s;

    if (runs > 64)
        runs = 64;
    for (int j = 0; j < ncfg; j++) /* warm-up (and a check that it works at all) */
        failed[j] = !run_series(cfgs[j], ci, resumed, resumed ? 20 : 5, &s);
    for (int r = 0; r < runs; r++) {
        for (int j = 0; j < ncfg; j++) {
            if (failed[j])
                continue;
            if (!run_series(cfgs[j], ci, resumed, n, &s)) {
                failed[j] = 1;
                continue;
            }
            hs[j][done[j]] = s.n / s.wall;
            cpu[j][done[j]] = s.cpu / s.n * 1e6;
            tok[j][done[j]] = s.tok / s.n * 1e6;
            ms_equal[j] += s.ms_equal;
            reused[j] += s.reused;
            total[j] += s.n;
            done[j]++;
        }
    }
    for (int j = 0; j < ncfg; j++) {
        snprintf(key, sizeof(key), "%s.%s.%s", cfgs[j]->name, cipher_tag[ci],
                 resumed ? "res" : "full");
        if (failed[j]) {
            out(key, "FAILED (see stderr)");
            continue;
        }
        out(key, "hs_s=%.1f cpu_us=%.1f tok_us=%.1f runs=%d n=%d prf=%s reused=%d/%d",
            median(hs[j], done[j]), median(cpu[j], done[j]), median(tok[j], done[j]), done[j], n,
            ms_equal[j] == total[j] ? "software"
            : ms_equal[j] == 0      ? "token"
                                    : "MIXED",
            reused[j], total[j]);
    }
}

/* ---------------------------------------------------------- raw RSA private ops */

static void measure_raw(const char *key, OSSL_LIB_CTX *libctx, EVP_PKEY *priv, X509 *cert, int runs,
                        int n)
{
    EVP_PKEY *pub = X509_get0_pubkey(cert);
    EVP_PKEY_CTX *e = EVP_PKEY_CTX_new_from_pkey(client_libctx, pub, NULL);
    EVP_PKEY_CTX *d = EVP_PKEY_CTX_new_from_pkey(libctx, priv, NULL);
    unsigned char msg[48], ct[512], pt[512];
    size_t ctlen = sizeof(ct), ptlen;
    double ops[64], cpu[64], tok[64];
    int done = 0;

    memset(msg, 0x5a, sizeof(msg));
    if (e == NULL || d == NULL || EVP_PKEY_encrypt_init(e) <= 0 ||
        EVP_PKEY_CTX_set_rsa_padding(e, RSA_PKCS1_PADDING) <= 0 ||
        EVP_PKEY_encrypt(e, ct, &ctlen, msg, sizeof(msg)) <= 0 || EVP_PKEY_decrypt_init(d) <= 0 ||
        EVP_PKEY_CTX_set_rsa_padding(d, RSA_PKCS1_PADDING) <= 0) {
        ERR_print_errors_fp(stderr);
        out(key, "FAILED (see stderr)");
        goto end;
    }
    for (int r = -1; r < runs && r < 64; r++) {
        int m = r < 0 ? 5 : n; /* r = -1: warm-up */
        double t0 = now_mono(), c0 = now_thread_cpu(), k0 = token_cpu();
        for (int i = 0; i < m; i++) {
            ptlen = sizeof(pt);
            if (EVP_PKEY_decrypt(d, pt, &ptlen, ct, ctlen) <= 0 || ptlen != sizeof(msg) ||
                memcmp(pt, msg, ptlen) != 0) {
                ERR_print_errors_fp(stderr);
                out(key, "FAILED (see stderr)");
                goto end;
            }
        }
        if (r < 0)
            continue;
        ops[done] = m / (now_mono() - t0);
        cpu[done] = (now_thread_cpu() - c0) / m * 1e6;
        tok[done] = (token_cpu() - k0) / m * 1e6;
        done++;
    }
    out(key, "ops_s=%.1f cpu_us=%.1f tok_us=%.1f runs=%d n=%d", median(ops, done),
        median(cpu, done), median(tok, done), done, n);
end:
    EVP_PKEY_CTX_free(e);
    EVP_PKEY_CTX_free(d);
}

/* The same through the token layer directly (C_DecryptInit + C_Decrypt, no provider). */
static void measure_raw_direct(p11_token *t, X509 *cert, int runs, int n)
{
    char err[256];
    p11_uri *u = NULL;
    p11_key *k;
    EVP_PKEY *pub = X509_get0_pubkey(cert);
    EVP_PKEY_CTX *e = EVP_PKEY_CTX_new_from_pkey(client_libctx, pub, NULL);
    unsigned char msg[48], ct[512], pt[512];
    size_t ctlen = sizeof(ct), ptlen;
    CK_MECHANISM mech = {CKM_RSA_PKCS, NULL, 0};
    double ops[64], cpu[64], tok[64];
    int done = 0;

    memset(msg, 0x5a, sizeof(msg));
    if (!p11_uri_parse(env("P11TLS_KEY_URI"), &u, err, sizeof(err)) ||
        (k = p11_key_find(t, u)) == NULL || e == NULL || EVP_PKEY_encrypt_init(e) <= 0 ||
        EVP_PKEY_CTX_set_rsa_padding(e, RSA_PKCS1_PADDING) <= 0 ||
        EVP_PKEY_encrypt(e, ct, &ctlen, msg, sizeof(msg)) <= 0) {
        ERR_print_errors_fp(stderr);
        out("raw.direct", "FAILED (see stderr)");
        p11_uri_free(u);
        EVP_PKEY_CTX_free(e);
        return;
    }
    for (int r = -1; r < runs && r < 64; r++) {
        int m = r < 0 ? 5 : n;
        double t0 = now_mono(), c0 = now_thread_cpu(), k0 = token_cpu();
        for (int i = 0; i < m; i++) {
            ptlen = sizeof(pt);
            if (!p11_rsa_decrypt(k, &mech, ct, ctlen, pt, &ptlen) || ptlen != sizeof(msg)) {
                ERR_print_errors_fp(stderr);
                out("raw.direct", "FAILED (see stderr)");
                goto end;
            }
        }
        if (r < 0)
            continue;
        ops[done] = m / (now_mono() - t0);
        cpu[done] = (now_thread_cpu() - c0) / m * 1e6;
        tok[done] = (token_cpu() - k0) / m * 1e6;
        done++;
    }
    out("raw.direct", "ops_s=%.1f cpu_us=%.1f tok_us=%.1f runs=%d n=%d", median(ops, done),
        median(cpu, done), median(tok, done), done, n);
end:
    p11_key_free(k);
    p11_uri_free(u);
    EVP_PKEY_CTX_free(e);
}

/* ------------------------------------------------ token objects (own token layer) */

static p11_token *own_token;

static void open_own_token(void)
{
    static char pin_source[4096];
    p11_token_cfg cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.module = env("P11TLS_MODULE");
    cfg.init_args = getenv("P11TLS_INIT_ARGS");
    cfg.token_uri = env("P11TLS_TOKEN_URI");
    snprintf(pin_source, sizeof(pin_source), "file:%s", env("P11TLS_PIN_FILE"));
    cfg.pin_source = pin_source;
    own_token = p11_token_open(&cfg);
    if (own_token == NULL)
        die("cannot open the token through the token layer");
}

/* Secret-key session objects in the token (all sessions of this process). A token
 * behind p11-kit server: every C_GetFunctionList of p11-kit-client.so is a connection
 * of its own, served by its own process, so p11tls's session objects are not visible
 * from here. */
static long count_secret_objects(void)
{
    return token_server_pid > 0 ? -1 : tu_count_secret_objects(own_token);
}

/* -------------------------------------------------------------- memory growth */

static void measure_memory(server_cfg *sc, int ci, int total)
{
    static const int marks[] = {1000, 5000, 20000, 50000, 100000};
    int mi = 0, failed = 0;
    hs_result r;
    char key[64];
    double t0 = now_mono();

    out("mem.0", "rss_kb=%ld objects=%ld tok_rss_kb=%ld", rss_kb(), count_secret_objects(),
        token_rss_kb());
    for (int i = 1; i <= total; i++) {
        if (!handshake(sc->full, client_ctx[ci], NULL, 0, &r)) {
            if (failed++ == 0)
                ERR_print_errors_fp(stderr);
            ERR_clear_error();
            if (failed > 3) {
                out("mem.failed", "%d", i);
                return;
            }
        }
        while (mi < 5 && i == marks[mi]) {
            snprintf(key, sizeof(key), "mem.%d", marks[mi]);
            out(key, "rss_kb=%ld objects=%ld tok_rss_kb=%ld", rss_kb(), count_secret_objects(),
                token_rss_kb());
            mi++;
        }
    }
    if (mi == 0 || marks[mi - 1] != total)
        out("mem.end", "n=%d rss_kb=%ld objects=%ld tok_rss_kb=%ld", total, rss_kb(),
            count_secret_objects(), token_rss_kb());
    out("mem.time", "%.1f", now_mono() - t0);
}

/* ----------------------------------------------------------------- threads */

/* This thread's time on a CPU and waiting for one (ns), from schedstat. */
static void thread_sched(double *run, double *rq)
{
    unsigned long long a = 0, b = 0;
    FILE *f = fopen("/proc/thread-self/schedstat", "r");
    if (f != NULL) {
        if (fscanf(f, "%llu %llu", &a, &b) != 2)
            a = b = 0;
        fclose(f);
    }
    *run = a * 1e-9;
    *rq = b * 1e-9;
}

typedef struct {
    server_cfg *sc;
    int ci, n, cpu, ok;
    pthread_barrier_t *bar;
    double wall, run, rq; /* this thread: elapsed, on a CPU, runnable but waiting for one */
} thr_arg;

static void *thr_main(void *p)
{
    thr_arg *a = p;
    hs_result r;
    double t0, run0, rq0, run1, rq1;
    pin_cpu(a->cpu);
    pthread_barrier_wait(a->bar);
    a->ok = 1;
    t0 = now_mono();
    thread_sched(&run0, &rq0);
    for (int i = 0; i < a->n; i++)
        if (!handshake(server_ctx(a->sc, a->ci, 0), client_ctx[a->ci], NULL, 0, &r))
            a->ok = 0;
    thread_sched(&run1, &rq1);
    a->wall = now_mono() - t0;
    a->run = run1 - run0;
    a->rq = rq1 - rq0;
    return NULL;
}

/* Handshakes/s of nthreads threads; *service: per thread and handshake, the time it was
 * not waiting for a CPU (on one, or blocked: locks, the token's socket). */
static double thread_throughput(server_cfg *sc, int ci, int nthreads, int n, double *service,
                                double *blocked)
{
    pthread_t th[8];
    thr_arg a[8];
    pthread_barrier_t bar;
    double t0, t, sv = 0, bl = 0;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int ok = 1;

    pthread_barrier_init(&bar, NULL, nthreads + 1);
    for (int i = 0; i < nthreads; i++) {
        memset(&a[i], 0, sizeof(a[i]));
        a[i].sc = sc;
        a[i].ci = ci;
        a[i].n = n;
        a[i].cpu = (int)((ncpu - 1 - i) % ncpu);
        a[i].bar = &bar;
        pthread_create(&th[i], NULL, thr_main, &a[i]);
    }
    pthread_barrier_wait(&bar);
    t0 = now_mono();
    for (int i = 0; i < nthreads; i++) {
        pthread_join(th[i], NULL);
        ok &= a[i].ok;
        sv += (a[i].wall - a[i].rq) / n;
        bl += (a[i].wall - a[i].rq - a[i].run) / n;
    }
    t = now_mono() - t0;
    pthread_barrier_destroy(&bar);
    *service = sv / nthreads * 1e6;
    *blocked = bl / nthreads * 1e6;
    if (!ok) {
        ERR_print_errors_fp(stderr);
        return -1;
    }
    return nthreads * n / t;
}

/* 1 and 2 threads, alternately. Besides the measured ratio, the one that idle CPUs would
 * give: 2 x service(1 thread) / service(2 threads), service = time per handshake that a
 * thread spends on a CPU or blocked (not waiting for a CPU taken by someone else). */
static void measure_threads(server_cfg *sc, int ci, int runs, int n)
{
    double v1[16], v2[16], s1[16], s2[16], b1[16], b2[16];
    char key[64];
    int done = 0;
    snprintf(key, sizeof(key), "thr.%s.%s", sc->name, cipher_tag[ci]);
    (void)thread_throughput(sc, ci, 2, 4, &s1[0], &b1[0]); /* warm-up: both threads */
    for (int r = 0; r < runs && r < 16; r++) {
        v1[done] = thread_throughput(sc, ci, 1, n, &s1[done], &b1[done]);
        v2[done] = thread_throughput(sc, ci, 2, n, &s2[done], &b2[done]);
        if (v1[done] < 0 || v2[done] < 0) {
            out(key, "FAILED (see stderr)");
            return;
        }
        done++;
    }
    out(key,
        "t1_hs_s=%.1f t2_hs_s=%.1f svc1_us=%.1f svc2_us=%.1f blocked1_us=%.1f blocked2_us=%.1f "
        "idle_scaling=%.2f runs=%d n=%d",
        median(v1, done), median(v2, done), median(s1, done), median(s2, done), median(b1, done),
        median(b2, done), 2 * median(s1, done) / median(s2, done), done, n);
}

/* ------------------------------------------------------------ call counting */

/* p11tls's call log (P11TLS_DEBUG=/file): "p11tls[pid] sec.usec C_Name -> CKR_x". */
typedef struct {
    char name[48];
    long n;
} callcount;

static const char *call_log;
static long call_log_off;

static void log_skip(void)
{
    FILE *f = fopen(call_log, "r");
    if (f == NULL)
        die("cannot read the call log %s", call_log);
    fseek(f, 0, SEEK_END);
    call_log_off = ftell(f);
    fclose(f);
}

/* Counts the calls logged since the last mark. */
static int log_collect(callcount *cc, int max)
{
    FILE *f = fopen(call_log, "r");
    char line[1024];
    int n = 0;
    if (f == NULL)
        die("cannot read the call log %s", call_log);
    fseek(f, call_log_off, SEEK_SET);
    while (fgets(line, sizeof(line), f) != NULL) {
        char *p = strstr(line, " -> CK"), *q;
        if (p == NULL)
            continue;
        *p = '\0';
        q = strrchr(line, ' ');
        if (q == NULL || strncmp(q + 1, "C_", 2) != 0)
            continue;
        q++;
        int i;
        for (i = 0; i < n; i++)
            if (strcmp(cc[i].name, q) == 0)
                break;
        if (i == n) {
            if (n == max)
                continue;
            snprintf(cc[n].name, sizeof(cc[n].name), "%s", q);
            cc[n++].n = 0;
        }
        cc[i].n++;
    }
    call_log_off = ftell(f);
    fclose(f);
    return n;
}

static int is_continuation(const char *name)
{
    size_t l = strlen(name);
    /* an Init...Final sequence counts once: its Init and Update calls (and the
     * Final of a find) are not operations of their own */
    return (l > 4 && strcmp(name + l - 4, "Init") == 0) ||
           (l > 6 && strcmp(name + l - 6, "Update") == 0) ||
           strcmp(name, "C_FindObjectsFinal") == 0;
}

/* Calls per handshake over n handshakes (after prefill unlogged full handshakes). */
static void count_calls(server_cfg *sc, int ci, int resumed, int n, int prefill, const char *tag)
{
    callcount cc[64];
    char key[80], buf[2048];
    size_t off = 0;
    long calls = 0, ops = 0, rot = 0;
    int m, ok = 0, ms_equal = 0;
    SSL_SESSION *sess = NULL;
    hs_result r;

    snprintf(key, sizeof(key), "calls%s.%s.%s.%s", tag, sc->name, cipher_tag[ci],
             resumed ? "res" : "full");
    for (int i = 0; i < prefill; i++)
        if (!handshake(server_ctx(sc, ci, 0), client_ctx[ci], NULL, 0, &r))
            break;
    if (resumed) {
        if (!handshake(server_ctx(sc, ci, 1), client_ctx[ci], NULL, 1, &r)) {
            ERR_print_errors_fp(stderr);
            ERR_clear_error();
            out(key, "FAILED");
            return;
        }
        sess = r.client_ss;
    } else if (!handshake(server_ctx(sc, ci, 0), client_ctx[ci], NULL, 0, &r)) { /* warm-up */
        ERR_print_errors_fp(stderr);
        ERR_clear_error();
        out(key, "FAILED");
        return;
    }
    log_skip();
    for (int i = 0; i < n; i++) {
        if (handshake(server_ctx(sc, ci, resumed), client_ctx[ci], sess, 0, &r)) {
            ok++;
            ms_equal += r.ms_equal;
        }
        ERR_clear_error();
    }
    SSL_SESSION_free(sess);
    m = log_collect(cc, 64);
    buf[0] = '\0';
    for (int i = 0; i < m; i++) {
        calls += cc[i].n;
        if (!is_continuation(cc[i].name))
            ops += cc[i].n;
        /* the handle cache's generations: opened and closed once per cache/8 new secrets */
        if (strcmp(cc[i].name, "C_OpenSession") == 0 || strcmp(cc[i].name, "C_CloseSession") == 0)
            rot += cc[i].n;
        if (off < sizeof(buf))
            off += (size_t)snprintf(buf + off, sizeof(buf) - off, "%s%s=%.2f", i ? "," : "",
                                    cc[i].name, (double)cc[i].n / n);
    }
    out(key, "calls=%.2f ops=%.2f rot=%.3f n=%d ok=%d prf=%s by=%s", (double)calls / n,
        (double)(ops - rot) / n, (double)rot / n, n, ok,
        ms_equal == ok  ? "software"
        : ms_equal == 0 ? "token"
                        : "MIXED",
        m ? buf : "-");
}

/* ------------------------------------------------------------- profile */

typedef int (*timer_read_fn)(const char **, unsigned long *, unsigned long long *,
                             unsigned long long *, int);
typedef void (*timer_reset_fn)(void);
static timer_read_fn timer_read;
static timer_reset_fn timer_reset;

/* Time spent inside the module, by function, per handshake (through p11timer.so). */
static void profile_series(server_cfg *sc, server_cfg *soft, int ci, int resumed, int n)
{
    const char *name[32];
    unsigned long calls[32];
    unsigned long long cpu[32], wall[32];
    char key[64], by[2048];
    size_t off = 0;
    double mod_cpu = 0, mod_wall = 0;
    series s, sa;
    int m;

    snprintf(key, sizeof(key), "prof.%s.%s", cipher_tag[ci], resumed ? "res" : "full");
    if (!run_series(sc, ci, resumed, resumed ? 20 : 5, &s)) {
        out(key, "FAILED (see stderr)");
        return;
    }
    series_hook = timer_reset;
    if (!run_series(sc, ci, resumed, n, &s)) {
        series_hook = NULL;
        out(key, "FAILED (see stderr)");
        return;
    }
    series_hook = NULL;
    m = timer_read(name, calls, cpu, wall, 32);
    by[0] = '\0';
    for (int i = 0; i < m; i++) {
        if (calls[i] == 0)
            continue;
        mod_cpu += cpu[i] * 1e-3 / s.n;
        mod_wall += wall[i] * 1e-3 / s.n;
        if (off < sizeof(by))
            off += (size_t)snprintf(by + off, sizeof(by) - off, "%s%s:%.2f:%.1f:%.1f",
                                    off ? "," : "", name[i], (double)calls[i] / s.n,
                                    cpu[i] * 1e-3 / s.n, wall[i] * 1e-3 / s.n);
    }
    /* (a) on the same cipher, right after: the software baseline */
    if (!run_series(soft, ci, resumed, n, &sa))
        sa.cpu = -1, sa.n = 1;
    out(key, "cpu_us=%.1f a_cpu_us=%.1f mod_cpu_us=%.1f mod_wall_us=%.1f tok_us=%.1f n=%d by=%s",
        s.cpu / s.n * 1e6, sa.cpu / sa.n * 1e6, mod_cpu, mod_wall, s.tok / s.n * 1e6, s.n,
        off ? by : "-");
}

/* What p11tls's call wrapper (P11_CALL: signal mask, error mark, counters) costs. */
static void measure_call_wrapper(void)
{
    int n = 200000;
    double t0;
    for (int i = 0; i < 1000; i++)
        (void)p11_call_end("C_Bench", p11_call_begin("C_Bench"));
    double alone, held;
    t0 = now_thread_cpu();
    for (int i = 0; i < n; i++)
        (void)p11_call_end("C_Bench", p11_call_begin("C_Bench"));
    alone = (now_thread_cpu() - t0) / n * 1e6;
    /* as made through a held session (its SIGPIPE guard held once for all calls) */
    p11_sigpipe_guard_enter();
    t0 = now_thread_cpu();
    for (int i = 0; i < n; i++)
        (void)p11_call_end("C_Bench", p11_call_begin("C_Bench"));
    held = (now_thread_cpu() - t0) / n * 1e6;
    p11_sigpipe_guard_leave();
    out("prof.call_wrapper", "us=%.3f alone=%.3f", held, alone);
}

/* ------------------------------------------------------------------ report */

#define MAXKV 512
typedef struct {
    char *k[MAXKV], *v[MAXKV];
    int n;
} kvfile;

static void kv_load(kvfile *f, const char *path)
{
    FILE *in = fopen(path, "r");
    char line[4096];
    f->n = 0;
    if (in == NULL)
        die("cannot read %s", path);
    while (fgets(line, sizeof(line), in) != NULL && f->n < MAXKV) {
        char *sp = strchr(line, ' ');
        line[strcspn(line, "\n")] = '\0';
        if (sp == NULL)
            continue;
        *sp = '\0';
        /* later lines (e.g. a count file appended) override earlier ones */
        f->k[f->n] = strdup(line);
        f->v[f->n] = strdup(sp + 1);
        f->n++;
    }
    fclose(in);
}

static const char *kv_get(const kvfile *f, const char *k)
{
    for (int i = f->n - 1; i >= 0; i--)
        if (strcmp(f->k[i], k) == 0)
            return f->v[i];
    return NULL;
}

/* A numeric field "name=value" of key k; NAN-like -1 when absent. */
static double kv_num(const kvfile *f, const char *k, const char *field)
{
    const char *v = kv_get(f, k), *p;
    char pat[64];
    if (v == NULL)
        return -1;
    snprintf(pat, sizeof(pat), "%s=", field);
    for (p = v; (p = strstr(p, pat)) != NULL; p++)
        if (p == v || p[-1] == ' ')
            return strtod(p + strlen(pat), NULL);
    return -1;
}

static const char *kv_field(const kvfile *f, const char *k, const char *field, char *buf,
                            size_t len)
{
    const char *v = kv_get(f, k), *p;
    char pat[64];
    snprintf(buf, len, "-");
    if (v == NULL)
        return buf;
    snprintf(pat, sizeof(pat), "%s=", field);
    for (p = v; (p = strstr(p, pat)) != NULL; p++)
        if (p == v || p[-1] == ' ') {
            size_t l = strcspn(p + strlen(pat), " ");
            snprintf(buf, len, "%.*s", (int)l, p + strlen(pat));
            return buf;
        }
    return buf;
}

static int misses;

static const char *verdict(int known, int pass)
{
    if (!known)
        return "n/a";
    if (!pass)
        misses++;
    return pass ? "PASS" : "MISS";
}

/* v with prec decimals, or "-" when unknown (negative) */
static const char *fmt_num(char *buf, size_t len, double v, int prec)
{
    if (v < 0)
        snprintf(buf, len, "-");
    else
        snprintf(buf, len, "%.*f", prec, v);
    return buf;
}

/* Server CPU per handshake incl. the token's process. */
static double cpu_total(const kvfile *f, const char *k)
{
    double c = kv_num(f, k, "cpu_us"), t = kv_num(f, k, "tok_us");
    if (c < 0)
        return -1;
    return c + (t > 0 ? t : 0);
}

static int report(int nfiles, char **files)
{
    kvfile *F = calloc(nfiles, sizeof(kvfile));
    char b1[64], b2[64], b3[64], b4[64], b5[2048], b6[64], b7[64];
    for (int i = 0; i < nfiles; i++)
        kv_load(&F[i], files[i]);

    printf("\np11tls benchmark: %s\n", kv_get(&F[0], "machine") ? kv_get(&F[0], "machine") : "");
    printf("(a) default provider, software RSA-2048 key made by the bench (the token key cannot be "
           "exported; same modulus size)\n"
           "(b) p11tls key only: the token's openssl.cnf without default_properties, so TLS1-PRF "
           "runs in the default provider\n"
           "    (checked on every handshake: server master secret == client's; prf=software)\n"
           "(c) p11tls at its full level (token's openssl.cnf, prf=token)\n"
           "CPU = server thread CPU around SSL_do_handshake; +tok = CPU of the p11-kit server "
           "process tree (token in another process)\n");

    /* ---------------- full handshakes */
    printf("\nFull TLS 1.2 handshakes (median of runs; hs/s wall clock, client and server in one "
           "thread; CPU in microseconds per handshake)\n");
    printf("%-15s %-6s %-19s %-19s %-26s %7s %7s %9s %9s %-4s\n", "token", "kx", "(a) hs/s  CPU",
           "(b) hs/s  CPU", "(c) hs/s  CPU(+tok)", "(c)/(b)", "(c)/raw", "ideal", "ideal/(c)", "");
    for (int i = 0; i < nfiles; i++) {
        const kvfile *f = &F[i];
        const char *kind = kv_get(f, "kind");
        double soft_raw = kv_num(f, "raw.soft", "cpu_us");
        double tok_raw = cpu_total(f, "raw.token");
        double raw_ops = kv_num(f, "raw.token", "ops_s");
        for (int ci = 0; ci < 2; ci++) {
            char ka[64], kb[64], kc[64];
            const char *ct = cipher_tag[ci];
            snprintf(ka, sizeof(ka), "a.%s.full", ct);
            snprintf(kb, sizeof(kb), "b.%s.full", ct);
            snprintf(kc, sizeof(kc), "c.%s.full", ct);
            double ah = kv_num(f, ka, "hs_s"), ac = kv_num(f, ka, "cpu_us");
            double bh = kv_num(f, kb, "hs_s"), bc = cpu_total(f, kb);
            double ch = kv_num(f, kc, "hs_s"), cc = kv_num(f, kc, "cpu_us"),
                   ctok = kv_num(f, kc, "tok_us"), ctot = cpu_total(f, kc);
            double ideal = (ac > 0 && soft_raw > 0 && tok_raw > 0) ? ac - soft_raw + tok_raw : -1;
            double eff = (ideal > 0 && ctot > 0) ? ideal / ctot : -1;
            double rb = (bh > 0 && ch > 0) ? ch / bh : -1;
            char bcol[32], ccol[48];
            if (bh > 0)
                snprintf(bcol, sizeof(bcol), "%7.1f %7.0f", bh, bc);
            else
                snprintf(bcol, sizeof(bcol), "%s", kv_get(f, kb) ? "fails*" : "-");
            if (ch > 0 && ctok > 0)
                snprintf(ccol, sizeof(ccol), "%7.1f %6.0f(+%.0f)", ch, cc, ctok);
            else if (ch > 0)
                snprintf(ccol, sizeof(ccol), "%7.1f %6.0f", ch, cc);
            else
                snprintf(ccol, sizeof(ccol), "%s", kv_get(f, kc) ? "FAILED" : "-");
            printf("%-15s %-6s %7.1f %7.0f     %-19s %-26s %7s %7s %9s %9s %s\n", kind, ct, ah, ac,
                   bcol, ccol, fmt_num(b1, sizeof(b1), rb, 2),
                   fmt_num(b2, sizeof(b2), (ch > 0 && raw_ops > 0) ? ch / raw_ops : -1, 2),
                   fmt_num(b3, sizeof(b3), ideal, 0), fmt_num(b4, sizeof(b4), eff, 2),
                   verdict(eff > 0, eff >= 0.90));
        }
    }
    printf("  ideal = (a) CPU - software RSA-2048 private op + the token's raw RSA op (+tok); "
           "target ideal/(c) >= 0.90\n");
    /* (c)/(b) target */
    printf("  full handshakes (c) >= 0.90 x (b) on the same token:\n");
    for (int i = 0; i < nfiles; i++) {
        const kvfile *f = &F[i];
        for (int ci = 0; ci < 2; ci++) {
            char kb[64], kc[64];
            snprintf(kb, sizeof(kb), "b.%s.full", cipher_tag[ci]);
            snprintf(kc, sizeof(kc), "c.%s.full", cipher_tag[ci]);
            double bh = kv_num(f, kb, "hs_s"), ch = kv_num(f, kc, "hs_s");
            if (bh > 0 && ch > 0)
                printf("    %-15s %-6s (c)/(b) = %.2f  %s\n", kv_get(f, "kind"), cipher_tag[ci],
                       ch / bh, verdict(1, ch >= 0.90 * bh));
            else
                printf("    %-15s %-6s (b) %s: %s\n", kv_get(f, "kind"), cipher_tag[ci],
                       kv_get(f, kb) ? kv_get(f, kb) : "not measured", "n/a (see note *)");
        }
    }

    /* routing check: (b)'s TLS1-PRF in the default provider, (c)'s in p11tls */
    printf("  routing (every measured handshake): (b) master secret == client's (TLS1-PRF in the "
           "default provider), (c) a handle:\n");
    for (int i = 0; i < nfiles; i++) {
        const kvfile *f = &F[i];
        int bad = 0, nb = 0, nc = 0;
        for (int ci = 0; ci < 2; ci++)
            for (int res = 0; res < 2; res++)
                for (int cfg = 0; cfg < 2; cfg++) {
                    char k[64];
                    snprintf(k, sizeof(k), "%s.%s.%s", cfg ? "c" : "b", cipher_tag[ci],
                             res ? "res" : "full");
                    if (kv_num(f, k, "hs_s") < 0)
                        continue;
                    kv_field(f, k, "prf", b1, sizeof(b1));
                    if (strcmp(b1, cfg ? "token" : "software") != 0)
                        bad++;
                    if (cfg)
                        nc++;
                    else
                        nb++;
                }
        printf("    %-15s (b) %d series, (c) %d series: %s\n", kv_get(f, "kind"), nb, nc,
               verdict(nb + nc > 0, bad == 0));
    }

    /* ---------------- resumed */
    printf("\nResumed handshakes (session ID; hs/s, server CPU us/hs); target (c) >= 0.75 x (a) in "
           "hs/s\n(cpu (a)/(c): the same ratio for the server alone, its CPU per handshake incl. "
           "+tok; no target)\n");
    printf("%-15s %-6s %-17s %-17s %-24s %8s %-4s %13s\n", "token", "kx", "(a) hs/s  CPU",
           "(b) hs/s  CPU", "(c) hs/s  CPU(+tok)", "(c)/(a)", "", "cpu (a)/(c)");
    for (int i = 0; i < nfiles; i++) {
        const kvfile *f = &F[i];
        for (int ci = 0; ci < 2; ci++) {
            char ka[64], kb[64], kc[64], ccol[48], bcol[32];
            snprintf(ka, sizeof(ka), "a.%s.res", cipher_tag[ci]);
            snprintf(kb, sizeof(kb), "b.%s.res", cipher_tag[ci]);
            snprintf(kc, sizeof(kc), "c.%s.res", cipher_tag[ci]);
            double ah = kv_num(f, ka, "hs_s"), ac = kv_num(f, ka, "cpu_us");
            double bh = kv_num(f, kb, "hs_s"), bc = cpu_total(f, kb);
            double ch = kv_num(f, kc, "hs_s"), cc = kv_num(f, kc, "cpu_us"),
                   ctok = kv_num(f, kc, "tok_us");
            if (bh > 0)
                snprintf(bcol, sizeof(bcol), "%7.0f %6.0f", bh, bc);
            else
                snprintf(bcol, sizeof(bcol), "%s", kv_get(f, kb) ? "fails*" : "-");
            if (ch > 0 && ctok > 0)
                snprintf(ccol, sizeof(ccol), "%7.0f %5.0f(+%.0f)", ch, cc, ctok);
            else if (ch > 0)
                snprintf(ccol, sizeof(ccol), "%7.0f %5.0f", ch, cc);
            else
                snprintf(ccol, sizeof(ccol), "%s", kv_get(f, kc) ? "FAILED" : "-");
            printf("%-15s %-6s %7.0f %6.0f    %-17s %-24s %8s %-4s %13s\n", kv_get(f, "kind"),
                   cipher_tag[ci], ah, ac, bcol, ccol,
                   fmt_num(b1, sizeof(b1), (ah > 0 && ch > 0) ? ch / ah : -1, 2),
                   verdict(ah > 0 && ch > 0, ch >= 0.75 * ah),
                   fmt_num(b2, sizeof(b2),
                           (ac > 0 && cpu_total(f, kc) > 0) ? ac / cpu_total(f, kc) : -1, 2));
        }
    }

    /* ---------------- TLS 1.3 */
    printf("\nTLS 1.3 handshakes (%s; X25519: libssl's software key share; P-256: in the token "
           "where it can; stateless tickets: 2 after a full handshake, 1 "
           "after a resumption, as nginx sends them;\nhs/s, server CPU us/hs). (b) here is p11tls "
           "with TLS 1.3 in software (key only: TLS13-KDF and HMAC from the default provider),\n"
           "(c) the key schedule in the token; the last column is what the token's key schedule "
           "adds to the server's CPU per handshake\n",
           SUITE_TLS13);
    printf("%-15s %-14s %-17s %-17s %-24s %8s %12s\n", "token", "", "(a) hs/s  CPU",
           "(b) hs/s  CPU", "(c) hs/s  CPU(+tok)", "(c)/(b)", "(c)-(b) us");
    for (int i = 0; i < nfiles; i++) {
        const kvfile *f = &F[i];
        for (int r = 0; r < 4; r++) {
            int res = r % 2;
            const char *tag = r < 2 ? "tls13" : "tls13p256";
            char ka[64], kb[64], kc[64], ccol[48], bcol[32], mode[32];
            snprintf(ka, sizeof(ka), "a.%s.%s", tag, res ? "res" : "full");
            snprintf(kb, sizeof(kb), "b.%s.%s", tag, res ? "res" : "full");
            snprintf(kc, sizeof(kc), "c.%s.%s", tag, res ? "res" : "full");
            snprintf(mode, sizeof(mode), "%s %s", r < 2 ? "X25519" : "P-256",
                     res ? "resumed" : "full");
            double ah = kv_num(f, ka, "hs_s"), ac = kv_num(f, ka, "cpu_us");
            double bh = kv_num(f, kb, "hs_s"), bc = cpu_total(f, kb);
            double ch = kv_num(f, kc, "hs_s"), cc = kv_num(f, kc, "cpu_us"),
                   ctok = kv_num(f, kc, "tok_us"), ct = cpu_total(f, kc);
            if (!kv_get(f, kc))
                continue;
            if (bh > 0)
                snprintf(bcol, sizeof(bcol), "%7.0f %6.0f", bh, bc);
            else
                snprintf(bcol, sizeof(bcol), "%s", kv_get(f, kb) ? "FAILED" : "-");
            if (ch > 0 && ctok > 0)
                snprintf(ccol, sizeof(ccol), "%7.0f %5.0f(+%.0f)", ch, cc, ctok);
            else if (ch > 0)
                snprintf(ccol, sizeof(ccol), "%7.0f %5.0f", ch, cc);
            else
                snprintf(ccol, sizeof(ccol), "FAILED");
            printf("%-15s %-14s %7.0f %6.0f    %-17s %-24s %8s %12s\n", kv_get(f, "kind"), mode, ah,
                   ac, bcol, ccol, fmt_num(b1, sizeof(b1), (bh > 0 && ch > 0) ? ch / bh : -1, 2),
                   fmt_num(b2, sizeof(b2), (bc > 0 && ct > 0) ? ct - bc : -1, 0));
        }
    }
    printf("P-256, the token's ECDHE (c) against libssl's (d: the same configuration with "
           "`ecdhe = software`,\nits shared secret imported; the rest of the key schedule in the "
           "token alike): hs/s, server CPU us/hs\n");
    for (int i = 0; i < nfiles; i++) {
        const kvfile *f = &F[i];
        for (int res = 0; res < 2; res++) {
            char kc[64], kd[64];
            snprintf(kc, sizeof(kc), "c.tls13p256.%s", res ? "res" : "full");
            snprintf(kd, sizeof(kd), "d.tls13p256.%s", res ? "res" : "full");
            double ch = kv_num(f, kc, "hs_s"), ct = cpu_total(f, kc);
            double dh = kv_num(f, kd, "hs_s"), dt = cpu_total(f, kd);
            if (!kv_get(f, kd))
                continue;
            printf("%-15s %-14s (c) %7.0f %6.0f   (d) %7.0f %6.0f   (c)/(d) %5s   (c)-(d) %6s us\n",
                   kv_get(f, "kind"), res ? "P-256 resumed" : "P-256 full", ch, ct, dh, dt,
                   fmt_num(b1, sizeof(b1), (ch > 0 && dh > 0) ? ch / dh : -1, 2),
                   fmt_num(b2, sizeof(b2), (ct > 0 && dt > 0) ? ct - dt : -1, 0));
        }
    }

    /* ---------------- raw */
    printf("\nRSA-2048 private-key operations (PKCS#1 v1.5 decrypt; ops/s, CPU us/op (+tok))\n");
    printf("%-15s %-22s %-24s %-24s\n", "token", "OpenSSL software", "token via p11tls (EVP)",
           "token layer direct");
    for (int i = 0; i < nfiles; i++) {
        const kvfile *f = &F[i];
        char c1[48], c2[48], c3[48];
        snprintf(c1, sizeof(c1), "%7.1f %6.0f", kv_num(f, "raw.soft", "ops_s"),
                 kv_num(f, "raw.soft", "cpu_us"));
        snprintf(c2, sizeof(c2), "%7.1f %6.0f(+%.0f)", kv_num(f, "raw.token", "ops_s"),
                 kv_num(f, "raw.token", "cpu_us"), kv_num(f, "raw.token", "tok_us"));
        snprintf(c3, sizeof(c3), "%7.1f %6.0f(+%.0f)", kv_num(f, "raw.direct", "ops_s"),
                 kv_num(f, "raw.direct", "cpu_us"), kv_num(f, "raw.direct", "tok_us"));
        printf("%-15s %-22s %-24s %-24s\n", kv_get(f, "kind"), c1, c2, c3);
    }

    /* ---------------- calls */
    printf("\nPKCS#11 calls per handshake, from p11tls's call log (P11TLS_DEBUG=file); ops: an "
           "Init...Final sequence counts once.\n(c) full: steady state, the handle cache (%d "
           "entries here) full; [cold]: not full yet. ops: per handshake, without the cache's\n"
           "generation rotation (rot: one C_OpenSession + C_CloseSession per cache/8 new master "
           "secrets: 2/%d here,\n%.3f at the default 4096 entries; not a per-handshake "
           "operation, so the verdict is on ops, with rot beside it)\n",
           COUNT_CACHE, COUNT_CACHE / 8, 2.0 / 512);
    for (int i = 0; i < nfiles; i++) {
        const kvfile *f = &F[i];
        const char *lvl = kv_get(f, "level");
        int sealed = lvl && strcmp(lvl, "sealed") == 0;
        printf("  %s (%s, %s)\n", kv_get(f, "kind"), lvl ? lvl : "?",
               kv_get(f, "strategy") ? kv_get(f, "strategy") : "?");
        for (int cfg = 0; cfg < 2; cfg++) {
            for (int ci = 0; ci < NCI; ci++) {
                for (int res = 0; res < 2; res++) {
                    char k[64], kc[64], cold[32] = "";
                    snprintf(k, sizeof(k), "calls.%s.%s.%s", cfg ? "c" : "b", cipher_tag[ci],
                             res ? "res" : "full");
                    snprintf(kc, sizeof(kc), "calls_cold.%s.%s.%s", cfg ? "c" : "b", cipher_tag[ci],
                             res ? "res" : "full");
                    double calls = kv_num(f, k, "calls"), ops = kv_num(f, k, "ops");
                    double rot = kv_num(f, k, "rot");
                    char rots[24] = "";
                    if (!kv_get(f, k))
                        continue;
                    if (kv_num(f, kc, "ops") >= 0)
                        snprintf(cold, sizeof(cold), "[cold %.0f]", kv_num(f, kc, "ops"));
                    const char *v = "";
                    if (rot > 0)
                        snprintf(rots, sizeof(rots), "+%.2f rot", rot);
                    if (cfg == 1 && ops >= 0 && !IS_TLS13(ci))
                        v = sealed ? verdict(1, ops <= (res ? 4 : 8)) : "";
                    else if (cfg == 1 && ops >= 0)
                        v = sealed
                                ? verdict(1, ops <= (res ? TLS13_OPS_RES : TLS13_OPS_FULL) +
                                                        (ci == CI_TLS13_P256 ? TLS13_OPS_ECDHE : 0))
                                : "";
                    printf("    (%s) %-6s %-7s calls %6s ops %6s %-9s %-10s %-4s %s\n",
                           cfg ? "c" : "b", cipher_tag[ci], res ? "resumed" : "full",
                           fmt_num(b1, sizeof(b1), calls, 2), fmt_num(b2, sizeof(b2), ops, 2), rots,
                           cold, v,
                           calls >= 0 ? kv_field(f, k, "by", b5, sizeof(b5)) : kv_get(f, k));
                }
            }
        }
    }
    printf("  target at sealed: ops <= 8 per full, <= 4 per resumed handshake (TLS 1.2); TLS 1.3: "
           "<= %d per full, <= %d per resumed\n  (RFC 8446 7.1's derivations, the exported keys "
           "and IVs at derive+read+destroy each, the Finished and binder MACs, the\n  (EC)DHE "
           "import, the CertificateVerify: see TLS13_OPS_* in tests/bench/bench.c)\n",
           TLS13_OPS_FULL, TLS13_OPS_RES);

    /* ---------------- memory */
    printf("\nMemory and token objects over (c) full RSA-kx handshakes in a fresh process (no "
           "session cache):\nVmRSS kB / secret session objects in the token [/ token process "
           "VmRSS kB]\n");
    for (int i = 0; i < nfiles; i++) {
        const kvfile *f = &F[i];
        static const char *marks[] = {"mem.0", "mem.1000", "mem.5000", "mem.20000"};
        int remote = kv_num(f, "mem.0", "tok_rss_kb") > 0;
        if (!kv_get(f, "mem.1000")) {
            printf("  %-15s not measured\n", kv_get(f, "kind"));
            continue;
        }
        printf("  %-15s", kv_get(f, "kind"));
        for (int m = 0; m < 4; m++) {
            if (!kv_get(f, marks[m]))
                continue;
            printf("  %s: %s/%s", m ? marks[m] + 4 : "start",
                   kv_field(f, marks[m], "rss_kb", b1, sizeof(b1)),
                   kv_num(f, marks[m], "objects") >= 0
                       ? kv_field(f, marks[m], "objects", b2, sizeof(b2))
                       : "n/a");
            if (remote)
                printf("/%s", kv_field(f, marks[m], "tok_rss_kb", b3, sizeof(b3)));
        }
        double r1 = kv_num(f, "mem.1000", "rss_kb"), r5 = kv_num(f, "mem.5000", "rss_kb"),
               r20 = kv_num(f, "mem.20000", "rss_kb");
        double o1 = kv_num(f, "mem.1000", "objects"), o5 = kv_num(f, "mem.5000", "objects"),
               o20 = kv_num(f, "mem.20000", "objects");
        double t1 = kv_num(f, "mem.1000", "tok_rss_kb"), t5 = kv_num(f, "mem.5000", "tok_rss_kb"),
               t20 = kv_num(f, "mem.20000", "tok_rss_kb");
        int known = r20 > 0 && r1 > 0 && r5 > 0;
        int flat_1k = known && r20 - r1 <= 2048 && o20 <= o1 && (!remote || t20 - t1 <= 2048);
        int flat_5k = known && r20 - r5 <= 2048 && o20 <= o5 && (!remote || t20 - t5 <= 2048);
        if (!known) {
            printf("\n  %-15s  (needs the 1000, 5000 and 20000 marks)\n", "");
            continue;
        }
        printf("\n  %-15s  1k->20k: %+.0f kB, objects %s%s %s;  5k->20k (handle cache full "
               "since ~4.1k): %+.0f kB, objects %s%s %s  (%ss)\n",
               "", r20 - r1, o1 >= 0 ? (snprintf(b4, sizeof(b4), "%+.0f", o20 - o1), b4) : "n/a",
               remote ? (snprintf(b6, sizeof(b6), ", token %+.0f kB", t20 - t1), b6) : "",
               verdict(known, flat_1k), r20 - r5,
               o5 >= 0 ? (snprintf(b5, sizeof(b5), "%+.0f", o20 - o5), b5) : "n/a",
               remote ? (snprintf(b7, sizeof(b7), ", token %+.0f kB", t20 - t5), b7) : "",
               verdict(known, flat_5k), kv_get(f, "mem.time") ? kv_get(f, "mem.time") : "?");
    }
    printf("  flat: at most +2048 kB (and in the token's process) and no more objects. "
           "Objects behind p11-kit server are not visible from another connection: n/a.\n");

    /* ---------------- threads */
    printf("\nThroughput with 1 and 2 threads (each a client+server pair, full RSA-kx handshakes, "
           "pinned to distinct CPUs);\nidle-CPU estimate = 2 x service(1)/service(2), service = "
           "time per handshake a thread is on a CPU or blocked\n(locks, the token's socket), not "
           "waiting for a CPU that another process holds; blocked: us per handshake\n");
    for (int i = 0; i < nfiles; i++) {
        const kvfile *f = &F[i];
        for (int cfg = 0; cfg < 2; cfg++) {
            char k[64];
            snprintf(k, sizeof(k), "thr.%s.rsa", cfg ? "c" : "a");
            double t1 = kv_num(f, k, "t1_hs_s"), t2 = kv_num(f, k, "t2_hs_s");
            double est = kv_num(f, k, "idle_scaling");
            if (t1 <= 0)
                continue;
            printf("  %-15s (%s) 1 thread %7.1f hs/s, 2 threads %7.1f hs/s: x%.2f %-11s "
                   "idle-CPU estimate x%.2f %-4s blocked %.0f/%.0f\n",
                   kv_get(f, "kind"), cfg ? "c" : "a", t1, t2, t2 / t1,
                   cfg ? verdict(1, t2 >= 1.7 * t1) : "(reference)", est,
                   cfg ? (est >= 1.7 ? "PASS" : "MISS") : "", kv_num(f, k, "blocked1_us"),
                   kv_num(f, k, "blocked2_us"));
        }
    }
    printf("  target (c): 2 threads >= 1.7 x 1 thread (verdict on the measured ratio; the "
           "estimate's is not counted)\n");
    for (int i = 0; i < nfiles; i++)
        if (kv_get(&F[i], "loadavg.start"))
            printf("  load average during %s: %s at the start, %s at the end (other processes "
                   "on this machine)\n",
                   kv_get(&F[i], "kind"), kv_get(&F[i], "loadavg.start"),
                   kv_get(&F[i], "loadavg.end") ? kv_get(&F[i], "loadavg.end") : "?");

    /* ---------------- profile */
    printf("\nWhere (c)'s server CPU goes, us per handshake (p11timer.so between p11tls and the "
           "module; +-1 us per call of timer overhead):\n  outside = server CPU - in module; "
           "base = the same work in (a): (a) CPU - its RSA op (full), (a) CPU (resumed)\n");
    for (int i = 0; i < nfiles; i++) {
        const kvfile *f = &F[i];
        double wrap = kv_num(f, "prof.call_wrapper", "us");
        double soft_raw = kv_num(f, "raw.soft", "cpu_us");
        for (int ci = 0; ci < 2; ci++)
            for (int res = 0; res < 2; res++) {
                char k[64], top[4][64], calls_s[32];
                const char *by;
                double cpu, mod, acpu, base, ncalls = 0;
                snprintf(k, sizeof(k), "prof.%s.%s", cipher_tag[ci], res ? "res" : "full");
                cpu = kv_num(f, k, "cpu_us");
                mod = kv_num(f, k, "mod_cpu_us");
                acpu = kv_num(f, k, "a_cpu_us");
                if (cpu < 0 || mod < 0)
                    continue;
                base = res ? acpu : acpu - soft_raw;
                /* the four costliest functions */
                by = kv_field(f, k, "by", b5, sizeof(b5));
                for (int t = 0; t < 4; t++)
                    top[t][0] = '\0';
                {
                    double best[4] = {-1, -1, -1, -1};
                    char tmp[2048];
                    snprintf(tmp, sizeof(tmp), "%s", by);
                    for (char *save = NULL, *tok = strtok_r(tmp, ",", &save); tok != NULL;
                         tok = strtok_r(NULL, ",", &save)) {
                        char fn[48];
                        double nc, c, w;
                        if (sscanf(tok, "%47[^:]:%lf:%lf:%lf", fn, &nc, &c, &w) != 4)
                            continue;
                        ncalls += nc;
                        for (int t = 0; t < 4; t++)
                            if (c > best[t]) {
                                for (int u = 3; u > t; u--) {
                                    best[u] = best[u - 1];
                                    memcpy(top[u], top[u - 1], sizeof(top[u]));
                                }
                                best[t] = c;
                                snprintf(top[t], sizeof(top[t]), "%s %.0fx %.0f", fn + 2, nc, c);
                                break;
                            }
                    }
                }
                snprintf(calls_s, sizeof(calls_s), "%.0f calls", ncalls);
                printf(
                    "  %-15s %-5s %-7s server %6.0f = module %6.0f (%s; %s, %s, %s) + outside "
                    "%4.0f (base %3.0f; call wrapper %s x %.2f = %.0f)%s\n",
                    kv_get(f, "kind"), cipher_tag[ci], res ? "resumed" : "full", cpu, mod, top[0],
                    top[1], top[2], top[3], cpu - mod, base, calls_s, wrap, ncalls * wrap,
                    kv_num(f, k, "tok_us") > 0 ? (snprintf(b6, sizeof(b6), "; token process +%.0f",
                                                           kv_num(f, k, "tok_us")),
                                                  b6)
                                               : "");
            }
    }
    printf("\n* (b) with RSA key exchange: p11tls's RSA decryption for TLS "
           "(RSA_PKCS1_WITH_TLS_PADDING) always unwraps the pre-master secret into the token and "
           "returns a handle, which the default provider's TLS1-PRF takes for the secret: the "
           "handshake fails. The ideal column stands in for (b) there.\n");
    printf("\ntargets missed: %d\n", misses);
    (void)b6;
    (void)b7;
    free(F);
    return 0;
}

/* ------------------------------------------------------------------ main */

static int opt_int(int argc, char **argv, const char *name, int def)
{
    for (int i = 2; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return atoi(argv[i + 1]);
    return def;
}

static const char *opt_str(int argc, char **argv, const char *name, const char *def)
{
    for (int i = 2; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return argv[i + 1];
    return def;
}

static void print_machine(void)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[256], model[128] = "?";
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        if (strncmp(line, "model name", 10) == 0) {
            char *p = strchr(line, ':');
            if (p != NULL)
                snprintf(model, sizeof(model), "%s", p + 2);
            model[strcspn(model, "\n")] = '\0';
            break;
        }
    if (f != NULL)
        fclose(f);
    out("machine", "%ld CPUs (%s), %s", sysconf(_SC_NPROCESSORS_ONLN), model,
        OpenSSL_version(OPENSSL_VERSION));
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : "";
    server_cfg A, B, C, D;
    const char *only;
    int runs, nfull, nres, nraw, nmem, nthr, cpu;
    enum { RUN, COUNT, MEM, PROFILE, POOL } mode;
    const char *timer_path = NULL;

    if (strcmp(cmd, "report") == 0)
        return report(argc - 2, argv + 2);
    if (strcmp(cmd, "run") == 0)
        mode = RUN;
    else if (strcmp(cmd, "count") == 0)
        mode = COUNT;
    else if (strcmp(cmd, "mem") == 0)
        mode = MEM;
    else if (strcmp(cmd, "profile") == 0)
        mode = PROFILE;
    else if (strcmp(cmd, "pool") == 0)
        mode = POOL;
    else {
        fprintf(stderr,
                "usage: p11tls-bench run|count|mem|profile|pool [options] | report FILE...\n"
                "  (see the comment at the top of tests/bench/bench.c)\n");
        return 2;
    }
    runs = opt_int(argc, argv, "--runs", 5);
    nfull = opt_int(argc, argv, "--full", 200);
    nres = opt_int(argc, argv, "--resumed", 1000);
    nraw = opt_int(argc, argv, "--raw", 200);
    nmem = opt_int(argc, argv, "--mem", 20000);
    nthr = opt_int(argc, argv, "--threads", 200);
    cpu = opt_int(argc, argv, "--cpu", (int)sysconf(_SC_NPROCESSORS_ONLN) - 1);
    only = mode == RUN       ? opt_str(argc, argv, "--only", "a,b,c")
           : mode == COUNT   ? "b,c"
           : mode == PROFILE ? "a,c"
                             : "c";
    if (mode == PROFILE) {
        static char path[4096];
        ssize_t l = readlink("/proc/self/exe", path, sizeof(path) - 32);
        char *slash;
        if (l <= 0)
            die("readlink /proc/self/exe");
        path[l] = '\0';
        slash = strrchr(path, '/');
        strcpy(slash ? slash + 1 : path, "p11timer.so");
        timer_path = opt_str(argc, argv, "--timer", path);
        /* p11timer.so forwards to the token's own module */
        setenv("P11TIMER_MODULE", env("P11TLS_MODULE"), 1);
    }

    memset(&A, 0, sizeof(A));
    memset(&B, 0, sizeof(B));
    memset(&C, 0, sizeof(C));
    memset(&D, 0, sizeof(D));
    if (mode == COUNT) {
        call_log = getenv("P11TLS_DEBUG");
        if (call_log == NULL || strchr(call_log, '/') == NULL)
            die("count: set P11TLS_DEBUG to a file path (p11tls's call log)");
    } else if (getenv("P11TLS_DEBUG") != NULL) {
        fprintf(stderr, "p11tls-bench: note: P11TLS_DEBUG is set: timings include its log\n");
    }
    out("kind", "%s",
        getenv("P11TLS_BENCH_NAME") ? getenv("P11TLS_BENCH_NAME") : env("P11TLS_KIND"));
    if (mode == RUN)
        print_machine();
    find_token_server();
    make_client();
    if (mode == POOL) {
        /* A pool of one remote member (--cnf1) and of two (--cnf2): 1 and 2 threads of
         * full handshakes (TLS 1.2 RSA key exchange, TLS 1.3) on each */
        make_token_cfg(&C, "pool1", opt_str(argc, argv, "--cnf1", ""));
        make_token_cfg(&D, "pool2", opt_str(argc, argv, "--cnf2", ""));
        pin_cpu(-1);
        for (int ci = 0; ci < NCI; ci += 2) {
            measure_threads(&C, ci, runs, nthr);
            measure_threads(&D, ci, runs, nthr);
        }
        return 0;
    }

    /* The servers. (c) first: its p11tls instance creates the token's handle key. */
    if (strchr(only, 'c')) {
        make_token_cfg(&C, "c",
                       mode == COUNT ? derived_cnf(env("P11TLS_OPENSSL_CNF"), 0, COUNT_CACHE, NULL)
                       : mode == PROFILE ? derived_cnf(env("P11TLS_OPENSSL_CNF"), 0, 0, timer_path)
                                         : env("P11TLS_OPENSSL_CNF"));
        C.desc = "p11tls full";
        print_provider_info(&C);
    }
    if (strchr(only, 'b')) {
        make_token_cfg(&B, "b", derived_cnf(env("P11TLS_OPENSSL_CNF"), 1, 0, NULL));
        B.desc = "p11tls key only";
    }
    if (strchr(only, 'a'))
        make_soft(&A);
    if (mode == RUN && strchr(only, 'c')) {
        /* (d): (c) with `ecdhe = software`, for the P-256 rows: the token's ECDHE against
         * libssl's on the same curve, the rest of the key schedule in the token alike */
        derived_ecdhe_soft = 1;
        make_token_cfg(&D, "d", derived_cnf(env("P11TLS_OPENSSL_CNF"), 0, 0, NULL));
        derived_ecdhe_soft = 0;
        D.desc = "p11tls, ecdhe = software";
    }

    if (mode == COUNT) {
        /* Cold: the handle cache (COUNT_CACHE entries here) is not full yet; steady: it
         * is, and every cache/8 new master secrets retire the oldest generation. */
        for (int ci = 0; ci < NCI; ci++) {
            count_calls(&B, ci, 0, nfull, 0, "");
            count_calls(&B, ci, 1, nfull, 0, "");
        }
        for (int ci = 0; ci < NCI; ci++)
            count_calls(&C, ci, 0, nfull, 0, "_cold");
        for (int ci = 0; ci < NCI; ci++) {
            count_calls(&C, ci, 0, nfull, ci == 0 ? COUNT_CACHE : 0, "");
            count_calls(&C, ci, 1, nfull, 0, "");
        }
        return 0;
    }

    if (mode == PROFILE) {
        void *h = dlopen(timer_path, RTLD_NOW | RTLD_NOLOAD);
        if (h == NULL || (timer_read = (timer_read_fn)dlsym(h, "p11timer_read")) == NULL ||
            (timer_reset = (timer_reset_fn)dlsym(h, "p11timer_reset")) == NULL)
            die("p11tls did not load %s", timer_path);
        if (cpu >= 0)
            pin_cpu(cpu);
        measure_call_wrapper();
        for (int ci = 0; ci < NCI; ci++) {
            profile_series(&C, &A, ci, 0, nfull);
            profile_series(&C, &A, ci, 1, nres);
        }
        return 0;
    }

    /* Our own view of the token, for counting its session objects. */
    if (C.libctx || B.libctx)
        open_own_token();
    if (cpu >= 0)
        pin_cpu(cpu);

    if (mode == MEM) {
        /* A fresh process: the handle cache starts empty. */
        measure_memory(&C, 0, nmem);
        return 0;
    }

    /* Handshakes: (a), (b), (c) interleaved, for each cipher and mode. */
    out("loadavg.start", "%s", loadavg());
    for (int ci = 0; ci < NCI; ci++) {
        for (int res = 0; res < 2; res++) {
            server_cfg *all[4] = {&A, &B, &C, &D}, *cfgs[4];
            int ncfg = 0;
            for (int j = 0; j < 4; j++)
                if (all[j]->libctx != NULL && (j < 3 || ci == CI_TLS13_P256))
                    cfgs[ncfg++] = all[j];
            measure_handshakes(cfgs, ncfg, ci, res, runs, res ? nres : nfull);
        }
    }
    /* Raw RSA private-key operations. */
    if (A.libctx)
        measure_raw("raw.soft", A.libctx, A.key, A.cert, runs, nraw * 2);
    if (C.libctx) {
        measure_raw("raw.token", C.libctx, C.key, C.cert, runs, nraw);
        measure_raw_direct(own_token, C.cert, runs, nraw);
        out("objects.after_timing", "%ld", count_secret_objects());
    }
    /* Threads (main thread unpinned; each worker pinned to its own CPU). */
    if (nthr > 0) {
        pin_cpu(-1);
        if (A.libctx)
            measure_threads(&A, 0, 3, nthr);
        if (C.libctx)
            measure_threads(&C, 0, 3, nthr);
    }
    out("loadavg.end", "%s", loadavg());
    return 0;
}
