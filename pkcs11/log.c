/* log.c - the one error idiom and the debug log of the token layer, and the
 * call wrapper's bookkeeping (per-function counters, fault-injection hook).
 * Library code never prints unless P11TLS_DEBUG asks for it. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/proverr.h>
#include "p11.h"

p11_fault_fn p11_fault_hook = NULL;
_Thread_local CK_RV p11_injected_rv = CKR_OK;
/* The first call of the latest run of failures with the same code on this thread
 * since session.c cleared it (when it handed out a session): names the call that
 * saw a token go away, not the clean-up calls that failed after it. */
_Thread_local const char *p11_first_failed_call;
_Thread_local CK_RV p11_first_failed_rv;

static pthread_once_t dbg_once = PTHREAD_ONCE_INIT;
static FILE *dbg_out = NULL;

/* P11TLS_DEBUG: "1" (or any other value without a '/') logs to stderr;
 * "file:/path" or "/path" appends to that file. A file that cannot be opened is
 * said once on stderr (the log was asked for), and the log goes to stderr. */
static void dbg_init(void)
{
    const char *v = getenv("P11TLS_DEBUG");
    const char *path = NULL;
    if (v == NULL || *v == '\0' || strcmp(v, "0") == 0)
        return;
    if (strncmp(v, "file:", 5) == 0)
        path = v + 5;
    else if (strchr(v, '/') != NULL)
        path = v;
    if (path != NULL) {
        dbg_out = fopen(path, "ae");
        if (dbg_out != NULL) {
            setvbuf(dbg_out, NULL, _IOLBF, 0);
        } else {
            int e = errno;
            fprintf(stderr,
                    "p11tls[%ld]: P11TLS_DEBUG: cannot open the debug log '%s' (%s); "
                    "logging to stderr\n",
                    (long)getpid(), path, strerror(e));
        }
    }
    if (dbg_out == NULL)
        dbg_out = stderr;
}

int p11_debug_enabled(void)
{
    pthread_once(&dbg_once, dbg_init);
    return dbg_out != NULL;
}

void p11_debug(const char *fmt, ...)
{
    va_list ap;
    char line[1024];
    struct timeval tv;

    if (!p11_debug_enabled())
        return;
    gettimeofday(&tv, NULL);
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    fprintf(dbg_out, "p11tls[%ld] %ld.%06ld %s\n", (long)getpid(), (long)tv.tv_sec,
            (long)tv.tv_usec, line);
}

static int reason_for(CK_RV rv)
{
    switch (rv) {
    case CKR_PIN_INCORRECT:
    case CKR_PIN_INVALID:
    case CKR_PIN_LEN_RANGE:
    case CKR_PIN_EXPIRED:
    case CKR_PIN_LOCKED:
        return PROV_R_INVALID_CONFIG_DATA; /* the configured PIN; the text says which */
    case CKR_KEY_HANDLE_INVALID:
    case CKR_OBJECT_HANDLE_INVALID:
        return PROV_R_INVALID_KEY;
    case CKR_DEVICE_MEMORY:
    case CKR_HOST_MEMORY:
        return ERR_R_MALLOC_FAILURE;
    default:
        return ERR_R_OPERATION_FAIL;
    }
}

void p11_err_ckr(const char *call, CK_RV rv, const char *fmt, ...)
{
    char ctx[1024] = "";
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ctx, sizeof(ctx), fmt, ap);
        va_end(ap);
    }
    ERR_raise_data(ERR_LIB_PROV, reason_for(rv), "p11tls: %s failed: %s%s%s", call,
                   p11_ckr_name(rv), ctx[0] ? ": " : "", ctx);
    p11_debug("error: %s -> %s%s%s", call, p11_ckr_name(rv), ctx[0] ? ": " : "", ctx);
}

void p11_err(int reason, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    ERR_raise_data(ERR_LIB_PROV, reason, "p11tls: %s", msg);
    p11_debug("error: %s", msg);
}

/* ---- per-function counters: a small fixed table, updated atomically ---- */
#define MAX_COUNTED 64
static struct {
    const char *name;
    unsigned long n;
} counts[MAX_COUNTED];
static pthread_mutex_t counts_lock = PTHREAD_MUTEX_INITIALIZER;

static void count_call(const char *call)
{
    for (int i = 0; i < MAX_COUNTED; i++) {
        const char *n = __atomic_load_n(&counts[i].name, __ATOMIC_ACQUIRE);
        if (n == call || (n != NULL && strcmp(n, call) == 0)) {
            __atomic_add_fetch(&counts[i].n, 1, __ATOMIC_RELAXED);
            return;
        }
        if (n == NULL) {
            pthread_mutex_lock(&counts_lock);
            if (counts[i].name == NULL)
                __atomic_store_n(&counts[i].name, call, __ATOMIC_RELEASE);
            pthread_mutex_unlock(&counts_lock);
            i--; /* look at slot i again */
        }
    }
}

/* SIGPIPE: a module that talks to a token over a socket (p11-kit-client) may write
 * to a connection the token's side has closed; that must be an error code, not
 * the death of the host process. The call runs with SIGPIPE blocked, and a
 * SIGPIPE it raised is consumed before the mask is restored. The guard nests: a
 * session held (p11_session_get .. p11_session_put) holds it once for all the
 * calls made through it, four system calls per operation rather than per call. */
static _Thread_local sigset_t saved_mask;
static _Thread_local int pipe_was_pending;
static _Thread_local unsigned guard_depth;

void p11_sigpipe_guard_enter(void)
{
    sigset_t block, pending;
    if (guard_depth++ > 0)
        return;
    sigemptyset(&block);
    sigaddset(&block, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &block, &saved_mask);
    sigpending(&pending);
    pipe_was_pending = sigismember(&pending, SIGPIPE);
}

void p11_sigpipe_guard_leave(void)
{
    sigset_t pending;
    if (guard_depth == 0 || --guard_depth > 0)
        return;
    if (!pipe_was_pending && !sigismember(&saved_mask, SIGPIPE)) {
        sigpending(&pending);
        if (sigismember(&pending, SIGPIPE)) {
            sigset_t only;
            struct timespec zero = {0, 0};
            sigemptyset(&only);
            sigaddset(&only, SIGPIPE);
            (void)sigtimedwait(&only, NULL, &zero);
        }
    }
    pthread_sigmask(SIG_SETMASK, &saved_mask, NULL);
}

/* Calls that end an operation: a token that fails them has ended the operation
 * (PKCS#11), so an injected fault lets the real call run and replaces its result.
 * Any other injected fault replaces the call (nothing was created or changed). */
static int fault_after(const char *call)
{
    static const char *const after[] = {"C_Sign",          "C_Decrypt",      "C_Encrypt",
                                        "C_EncryptUpdate", "C_EncryptFinal", "C_FindObjects"};
    for (size_t i = 0; i < sizeof(after) / sizeof(after[0]); i++)
        if (strcmp(call, after[i]) == 0)
            return 1;
    return 0;
}
static _Thread_local CK_RV pending_fault;

CK_RV p11_call_begin(const char *call)
{
    p11_sigpipe_guard_enter();
    ERR_set_mark();
    p11_injected_rv = p11_fault_hook != NULL ? p11_fault_hook(call) : CKR_OK;
    pending_fault = CKR_OK;
    if (p11_injected_rv != CKR_OK && fault_after(call)) {
        pending_fault = p11_injected_rv;
        p11_injected_rv = CKR_OK;
    }
    return p11_injected_rv;
}

CK_RV p11_call_end(const char *call, CK_RV rv)
{
    if (pending_fault != CKR_OK) {
        rv = pending_fault;
        pending_fault = CKR_OK;
    }
    ERR_pop_to_mark();
    p11_sigpipe_guard_leave();
    if (rv != CKR_OK && (p11_first_failed_call == NULL || rv != p11_first_failed_rv)) {
        p11_first_failed_call = call;
        p11_first_failed_rv = rv;
    }
    count_call(call);
    if (p11_debug_enabled())
        p11_debug("%s -> %s", call, p11_ckr_name(rv));
    return rv;
}

unsigned long p11_call_count(const char *call)
{
    unsigned long total = 0;
    for (int i = 0; i < MAX_COUNTED; i++) {
        const char *n = __atomic_load_n(&counts[i].name, __ATOMIC_ACQUIRE);
        if (n == NULL)
            break;
        if (call == NULL || strcmp(n, call) == 0)
            total += __atomic_load_n(&counts[i].n, __ATOMIC_RELAXED);
    }
    return total;
}

void p11_call_counts_reset(void)
{
    for (int i = 0; i < MAX_COUNTED; i++)
        __atomic_store_n(&counts[i].n, 0, __ATOMIC_RELAXED);
}

void p11_call_counts_format(char *buf, size_t len)
{
    size_t off = 0;
    if (len == 0)
        return;
    buf[0] = '\0';
    for (int i = 0; i < MAX_COUNTED && off < len; i++) {
        const char *n = __atomic_load_n(&counts[i].name, __ATOMIC_ACQUIRE);
        if (n == NULL)
            break;
        unsigned long c = __atomic_load_n(&counts[i].n, __ATOMIC_RELAXED);
        if (c == 0)
            continue;
        int w = snprintf(buf + off, len - off, "%s%s=%lu", off ? " " : "", n, c);
        if (w < 0)
            break;
        off += (size_t)w;
    }
}

/* Secrets that cross the PKCS#11 boundary (the master secret at `transient`, the
 * PIN at login) also pass through the module's own buffers in this process. An
 * out-of-process token's RPC client (p11-kit-client) marshals every call into a
 * heap buffer and frees it unwiped; glibc keeps small freed chunks in per-thread
 * and fast free lists (not perturbed on free) until a same-sized allocation reuses
 * them. Right after such an operation, this thread takes every small chunk those
 * lists hold (up to SCRUB_MAX bytes, where the module's messages fall), wipes it
 * and gives it back. No token call is involved. */
#define SCRUB_MAX 1040
#define SCRUB_DEPTH 10
void p11_scrub_heap(void)
{
    for (size_t sz = 24; sz <= SCRUB_MAX; sz += 16) {
        void *p[SCRUB_DEPTH];
        for (int i = 0; i < SCRUB_DEPTH; i++) {
            p[i] = malloc(sz);
            if (p[i] != NULL)
                OPENSSL_cleanse(p[i], sz);
        }
        for (int i = 0; i < SCRUB_DEPTH; i++)
            free(p[i]);
    }
}
