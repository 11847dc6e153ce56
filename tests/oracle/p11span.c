/* p11span.c - a PKCS#11 module for the no-oracle test (tests/oracle.sh) that tells
 * where a server spends its time: inside the token, or in p11tls and libssl.
 *
 * It forwards every call to the module named by P11SPAN_MODULE (C_Initialize's
 * arguments pass through unchanged) and records, for each session-level call, which
 * function it was and when it started and ended (CLOCK_MONOTONIC, ns). The records
 * go to the file named by P11SPAN_FILE, one line "FN START END" each (FN: an index
 * into the list below), appended in blocks of SPAN_BLOCK records; a block is written
 * at the start of a call, before that call is timed, and what is left at exit. The
 * test client (rsa_oracle -S FILE) knows when each of its connections waited for the
 * server, so it can tell how much of that wait was inside the token and which calls
 * ran in it. Records are public facts (which function, when); no argument is kept.
 *
 * Both variables are read when the module is loaded (nginx clears its workers'
 * environment later). A forked child drops the records it inherits (they are its
 * parent's to write). Not for production: it makes every call a little slower. */
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <p11-kit/pkcs11.h>

#define EXPORT __attribute__((visibility("default")))
#define SPAN_BLOCK 512

typedef struct {
    int fn;
    long long t0, t1;
} span;

static CK_FUNCTION_LIST real, mine;
static CK_FUNCTION_LIST_PTR realp;
static char *out_path;
static int out_fd = -1;
static span buf[SPAN_BLOCK];
static int nbuf;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Writes the buffered records (lock held). */
static void flush_locked(void)
{
    char line[80], *blk;
    size_t cap = (size_t)nbuf * sizeof(line), len = 0;
    if (nbuf == 0 || out_path == NULL)
        return;
    if (out_fd < 0)
        out_fd = open(out_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    blk = malloc(cap);
    if (out_fd >= 0 && blk != NULL) {
        for (int i = 0; i < nbuf; i++) {
            int n = snprintf(line, sizeof(line), "%d %lld %lld\n", buf[i].fn, buf[i].t0, buf[i].t1);
            memcpy(blk + len, line, (size_t)n);
            len += (size_t)n;
        }
        if (write(out_fd, blk, len) != (ssize_t)len)
            fprintf(stderr, "p11span: cannot write %s\n", out_path);
    }
    free(blk);
    nbuf = 0;
}

static void before_call(void)
{
    pthread_mutex_lock(&lock);
    if (nbuf >= SPAN_BLOCK)
        flush_locked();
    pthread_mutex_unlock(&lock);
}

static void record(int fn, long long t0, long long t1)
{
    pthread_mutex_lock(&lock);
    if (nbuf < SPAN_BLOCK) {
        buf[nbuf].fn = fn;
        buf[nbuf].t0 = t0;
        buf[nbuf].t1 = t1;
        nbuf++;
    }
    pthread_mutex_unlock(&lock);
}

static void drop_inherited(void)
{
    nbuf = 0; /* (the descriptor, opened for appending, is fine to share) */
}

__attribute__((destructor)) static void at_exit(void)
{
    pthread_mutex_lock(&lock);
    flush_locked();
    pthread_mutex_unlock(&lock);
}

/* The functions recorded, by index (rsa_oracle prints these names). */
#define SPAN_FUNCS(X)                                                                              \
    X(0, UnwrapKey,                                                                                \
      (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k, CK_BYTE_PTR w, CK_ULONG wl,    \
       CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR o),                                    \
      (s, m, k, w, wl, t, n, o))                                                                   \
    X(1, GenerateKey,                                                                              \
      (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR t, CK_ULONG n,                    \
       CK_OBJECT_HANDLE_PTR o),                                                                    \
      (s, m, t, n, o))                                                                             \
    X(2, WrapKey,                                                                                  \
      (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k, CK_OBJECT_HANDLE o,            \
       CK_BYTE_PTR w, CK_ULONG_PTR wl),                                                            \
      (s, m, k, o, w, wl))                                                                         \
    X(3, GetAttributeValue,                                                                        \
      (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n), (s, o, t, n))     \
    X(4, DeriveKey,                                                                                \
      (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k, CK_ATTRIBUTE_PTR t,            \
       CK_ULONG n, CK_OBJECT_HANDLE_PTR o),                                                        \
      (s, m, k, t, n, o))                                                                          \
    X(5, DestroyObject, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o), (s, o))                         \
    X(6, CreateObject,                                                                             \
      (CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR o), (s, t, n, o)) \
    X(7, CopyObject,                                                                               \
      (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n,                    \
       CK_OBJECT_HANDLE_PTR c),                                                                    \
      (s, o, t, n, c))                                                                             \
    X(8, SignInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))       \
    X(9, Sign, (CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR o, CK_ULONG_PTR ol),  \
      (s, d, dl, o, ol))                                                                           \
    X(10, EncryptInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))   \
    X(11, Encrypt,                                                                                 \
      (CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR o, CK_ULONG_PTR ol),           \
      (s, d, dl, o, ol))                                                                           \
    X(12, EncryptUpdate,                                                                           \
      (CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR o, CK_ULONG_PTR ol),           \
      (s, d, dl, o, ol))                                                                           \
    X(13, EncryptFinal, (CK_SESSION_HANDLE s, CK_BYTE_PTR o, CK_ULONG_PTR ol), (s, o, ol))         \
    X(14, DecryptInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))   \
    X(15, Decrypt,                                                                                 \
      (CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR o, CK_ULONG_PTR ol),           \
      (s, d, dl, o, ol))                                                                           \
    X(16, DigestInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m), (s, m))                           \
    X(17, Digest,                                                                                  \
      (CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR o, CK_ULONG_PTR ol),           \
      (s, d, dl, o, ol))                                                                           \
    X(18, DigestUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG dl), (s, d, dl))             \
    X(19, DigestKey, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k), (s, k))                            \
    X(20, DigestFinal, (CK_SESSION_HANDLE s, CK_BYTE_PTR o, CK_ULONG_PTR ol), (s, o, ol))          \
    X(21, FindObjectsInit, (CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n), (s, t, n))       \
    X(22, FindObjects, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE_PTR o, CK_ULONG m, CK_ULONG_PTR n),  \
      (s, o, m, n))                                                                                \
    X(23, FindObjectsFinal, (CK_SESSION_HANDLE s), (s))                                            \
    X(24, OpenSession,                                                                             \
      (CK_SLOT_ID sl, CK_FLAGS f, CK_VOID_PTR a, CK_NOTIFY cb, CK_SESSION_HANDLE_PTR s),           \
      (sl, f, a, cb, s))                                                                           \
    X(25, CloseSession, (CK_SESSION_HANDLE s), (s))                                                \
    X(26, GetSessionInfo, (CK_SESSION_HANDLE s, CK_SESSION_INFO_PTR i), (s, i))                    \
    X(27, GenerateKeyPair,                                                                         \
      (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR pt, CK_ULONG pn,                  \
       CK_ATTRIBUTE_PTR vt, CK_ULONG vn, CK_OBJECT_HANDLE_PTR po, CK_OBJECT_HANDLE_PTR vo),        \
      (s, m, pt, pn, vt, vn, po, vo))

#define WRAP(id, name, params, args)                                                               \
    static CK_RV w_##name params                                                                   \
    {                                                                                              \
        long long t0;                                                                              \
        CK_RV rv;                                                                                  \
        before_call();                                                                             \
        t0 = now_ns();                                                                             \
        rv = real.C_##name args;                                                                   \
        record(id, t0, now_ns());                                                                  \
        return rv;                                                                                 \
    }
SPAN_FUNCS(WRAP)

static CK_RV w_Finalize(CK_VOID_PTR r)
{
    pthread_mutex_lock(&lock);
    flush_locked();
    pthread_mutex_unlock(&lock);
    return real.C_Finalize(r);
}

EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
    if (realp == NULL) {
        const char *path = getenv("P11SPAN_MODULE"), *file = getenv("P11SPAN_FILE");
        void *dl = path ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
        CK_C_GetFunctionList get = dl ? (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList") : NULL;
        if (get == NULL || file == NULL) {
            fprintf(stderr, "p11span: cannot load P11SPAN_MODULE=%s (P11SPAN_FILE=%s)\n",
                    path ? path : "(unset)", file ? file : "(unset)");
            return CKR_GENERAL_ERROR;
        }
        if (get(&realp) != CKR_OK || realp == NULL)
            return CKR_GENERAL_ERROR;
        out_path = strdup(file);
        pthread_atfork(NULL, NULL, drop_inherited);
        real = *realp;
        mine = real;
        mine.C_GetFunctionList = C_GetFunctionList;
        mine.C_Finalize = w_Finalize;
#define SET(id, name, params, args) mine.C_##name = w_##name;
        SPAN_FUNCS(SET)
    }
    *out = &mine;
    return CKR_OK;
}
