/* p11timer.c - a PKCS#11 module for benchmarks that forwards every call to the module
 * named by P11TIMER_MODULE (its C_Initialize arguments pass through unchanged) and
 * times the calls p11tls makes on its hot path: thread CPU time and wall time spent
 * inside the real module, per function. The benchmark dlopen()s this library again
 * (the same instance) and reads the counters with p11timer_read()/p11timer_reset().
 * For a token in another process (p11-kit-client), CPU time is the client side only;
 * wall time includes the round trip. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <p11-kit/pkcs11.h>

#define EXPORT __attribute__((visibility("default")))

static CK_FUNCTION_LIST real, mine;
static CK_FUNCTION_LIST_PTR realp;

enum {
    T_GenerateKey,
    T_UnwrapKey,
    T_WrapKey,
    T_GetAttributeValue,
    T_DeriveKey,
    T_DestroyObject,
    T_CreateObject,
    T_SignInit,
    T_Sign,
    T_SignUpdate,
    T_SignFinal,
    T_EncryptInit,
    T_Encrypt,
    T_EncryptUpdate,
    T_EncryptFinal,
    T_DecryptInit,
    T_Decrypt,
    T_FindObjectsInit,
    T_FindObjects,
    T_FindObjectsFinal,
    T_OpenSession,
    T_GetSessionInfo,
    T_N
};
static const char *names[T_N] = {
    "C_GenerateKey", "C_UnwrapKey",       "C_WrapKey",      "C_GetAttributeValue",
    "C_DeriveKey",   "C_DestroyObject",   "C_CreateObject", "C_SignInit",
    "C_Sign",        "C_SignUpdate",      "C_SignFinal",    "C_EncryptInit",
    "C_Encrypt",     "C_EncryptUpdate",   "C_EncryptFinal", "C_DecryptInit",
    "C_Decrypt",     "C_FindObjectsInit", "C_FindObjects",  "C_FindObjectsFinal",
    "C_OpenSession", "C_GetSessionInfo"};
static unsigned long n_calls[T_N];
static unsigned long long cpu_ns[T_N], wall_ns[T_N];

static unsigned long long ns(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

#define TIMED(idx, call)                                                                           \
    do {                                                                                           \
        unsigned long long c0 = ns(CLOCK_THREAD_CPUTIME_ID), w0 = ns(CLOCK_MONOTONIC);             \
        CK_RV rv_ = (call);                                                                        \
        unsigned long long w1 = ns(CLOCK_MONOTONIC), c1 = ns(CLOCK_THREAD_CPUTIME_ID);             \
        __atomic_add_fetch(&n_calls[idx], 1, __ATOMIC_RELAXED);                                    \
        __atomic_add_fetch(&cpu_ns[idx], c1 - c0, __ATOMIC_RELAXED);                               \
        __atomic_add_fetch(&wall_ns[idx], w1 - w0, __ATOMIC_RELAXED);                              \
        return rv_;                                                                                \
    } while (0)

static CK_RV w_GenerateKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR t, CK_ULONG n,
                           CK_OBJECT_HANDLE_PTR k)
{
    TIMED(T_GenerateKey, real.C_GenerateKey(s, m, t, n, k));
}
static CK_RV w_UnwrapKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE uk,
                         CK_BYTE_PTR w, CK_ULONG wl, CK_ATTRIBUTE_PTR t, CK_ULONG n,
                         CK_OBJECT_HANDLE_PTR k)
{
    TIMED(T_UnwrapKey, real.C_UnwrapKey(s, m, uk, w, wl, t, n, k));
}
static CK_RV w_WrapKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE wk,
                       CK_OBJECT_HANDLE k, CK_BYTE_PTR w, CK_ULONG_PTR wl)
{
    TIMED(T_WrapKey, real.C_WrapKey(s, m, wk, k, w, wl));
}
static CK_RV w_GetAttributeValue(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t,
                                 CK_ULONG n)
{
    TIMED(T_GetAttributeValue, real.C_GetAttributeValue(s, o, t, n));
}
static CK_RV w_DeriveKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE b,
                         CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR k)
{
    TIMED(T_DeriveKey, real.C_DeriveKey(s, m, b, t, n, k));
}
static CK_RV w_DestroyObject(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o)
{
    TIMED(T_DestroyObject, real.C_DestroyObject(s, o));
}
static CK_RV w_CreateObject(CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n,
                            CK_OBJECT_HANDLE_PTR o)
{
    TIMED(T_CreateObject, real.C_CreateObject(s, t, n, o));
}
static CK_RV w_SignInit(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k)
{
    TIMED(T_SignInit, real.C_SignInit(s, m, k));
}
static CK_RV w_Sign(CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR sig,
                    CK_ULONG_PTR sl)
{
    TIMED(T_Sign, real.C_Sign(s, d, dl, sig, sl));
}
static CK_RV w_SignUpdate(CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG dl)
{
    TIMED(T_SignUpdate, real.C_SignUpdate(s, d, dl));
}
static CK_RV w_SignFinal(CK_SESSION_HANDLE s, CK_BYTE_PTR sig, CK_ULONG_PTR sl)
{
    TIMED(T_SignFinal, real.C_SignFinal(s, sig, sl));
}
static CK_RV w_EncryptInit(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k)
{
    TIMED(T_EncryptInit, real.C_EncryptInit(s, m, k));
}
static CK_RV w_Encrypt(CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR e,
                       CK_ULONG_PTR el)
{
    TIMED(T_Encrypt, real.C_Encrypt(s, d, dl, e, el));
}
static CK_RV w_EncryptUpdate(CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR e,
                             CK_ULONG_PTR el)
{
    TIMED(T_EncryptUpdate, real.C_EncryptUpdate(s, d, dl, e, el));
}
static CK_RV w_EncryptFinal(CK_SESSION_HANDLE s, CK_BYTE_PTR e, CK_ULONG_PTR el)
{
    TIMED(T_EncryptFinal, real.C_EncryptFinal(s, e, el));
}
static CK_RV w_DecryptInit(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k)
{
    TIMED(T_DecryptInit, real.C_DecryptInit(s, m, k));
}
static CK_RV w_Decrypt(CK_SESSION_HANDLE s, CK_BYTE_PTR e, CK_ULONG el, CK_BYTE_PTR d,
                       CK_ULONG_PTR dl)
{
    TIMED(T_Decrypt, real.C_Decrypt(s, e, el, d, dl));
}
static CK_RV w_FindObjectsInit(CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n)
{
    TIMED(T_FindObjectsInit, real.C_FindObjectsInit(s, t, n));
}
static CK_RV w_FindObjects(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE_PTR o, CK_ULONG max,
                           CK_ULONG_PTR n)
{
    TIMED(T_FindObjects, real.C_FindObjects(s, o, max, n));
}
static CK_RV w_FindObjectsFinal(CK_SESSION_HANDLE s)
{
    TIMED(T_FindObjectsFinal, real.C_FindObjectsFinal(s));
}
static CK_RV w_OpenSession(CK_SLOT_ID slot, CK_FLAGS f, CK_VOID_PTR app, CK_NOTIFY cb,
                           CK_SESSION_HANDLE_PTR s)
{
    TIMED(T_OpenSession, real.C_OpenSession(slot, f, app, cb, s));
}
static CK_RV w_GetSessionInfo(CK_SESSION_HANDLE s, CK_SESSION_INFO_PTR i)
{
    TIMED(T_GetSessionInfo, real.C_GetSessionInfo(s, i));
}

EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
    if (realp == NULL) {
        const char *path = getenv("P11TIMER_MODULE");
        void *dl = path ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
        CK_C_GetFunctionList get = dl ? (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList") : NULL;
        if (get == NULL) {
            fprintf(stderr, "p11timer: cannot load P11TIMER_MODULE=%s\n", path ? path : "(unset)");
            return CKR_GENERAL_ERROR;
        }
        if (get(&realp) != CKR_OK || realp == NULL)
            return CKR_GENERAL_ERROR;
        real = *realp;
        mine = real;
        mine.C_GetFunctionList = C_GetFunctionList;
        mine.C_GenerateKey = w_GenerateKey;
        mine.C_UnwrapKey = w_UnwrapKey;
        mine.C_WrapKey = w_WrapKey;
        mine.C_GetAttributeValue = w_GetAttributeValue;
        mine.C_DeriveKey = w_DeriveKey;
        mine.C_DestroyObject = w_DestroyObject;
        mine.C_CreateObject = w_CreateObject;
        mine.C_SignInit = w_SignInit;
        mine.C_Sign = w_Sign;
        mine.C_SignUpdate = w_SignUpdate;
        mine.C_SignFinal = w_SignFinal;
        mine.C_EncryptInit = w_EncryptInit;
        mine.C_Encrypt = w_Encrypt;
        mine.C_EncryptUpdate = w_EncryptUpdate;
        mine.C_EncryptFinal = w_EncryptFinal;
        mine.C_DecryptInit = w_DecryptInit;
        mine.C_Decrypt = w_Decrypt;
        mine.C_FindObjectsInit = w_FindObjectsInit;
        mine.C_FindObjects = w_FindObjects;
        mine.C_FindObjectsFinal = w_FindObjectsFinal;
        mine.C_OpenSession = w_OpenSession;
        mine.C_GetSessionInfo = w_GetSessionInfo;
    }
    *out = &mine;
    return CKR_OK;
}

/* Copies up to max counters (name, calls, thread CPU ns, wall ns); returns how many. */
EXPORT int p11timer_read(const char **name, unsigned long *calls, unsigned long long *cpu,
                         unsigned long long *wall, int max)
{
    int n = 0;
    for (int i = 0; i < T_N && n < max; i++) {
        name[n] = names[i];
        calls[n] = __atomic_load_n(&n_calls[i], __ATOMIC_RELAXED);
        cpu[n] = __atomic_load_n(&cpu_ns[i], __ATOMIC_RELAXED);
        wall[n] = __atomic_load_n(&wall_ns[i], __ATOMIC_RELAXED);
        n++;
    }
    return n;
}

EXPORT void p11timer_reset(void)
{
    for (int i = 0; i < T_N; i++) {
        __atomic_store_n(&n_calls[i], 0, __ATOMIC_RELAXED);
        __atomic_store_n(&cpu_ns[i], 0, __ATOMIC_RELAXED);
        __atomic_store_n(&wall_ns[i], 0, __ATOMIC_RELAXED);
    }
}
