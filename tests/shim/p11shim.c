/* p11shim.c - a PKCS#11 module for tests that makes an in-process token "go away"
 * on demand. It forwards every call to the module named by P11SHIM_MODULE (the
 * C_Initialize arguments, e.g. NSS softoken's init string, pass through
 * unchanged). While the file named by P11SHIM_FAIL_FILE exists, every call
 * answers CKR_DEVICE_REMOVED without reaching the real module, except:
 *   C_GetFunctionList  the shim's own list (a caller must be able to load it);
 *   C_Initialize, C_Finalize
 *                      forwarded: a removed token does not make the library
 *                      refuse to initialise, and re-initialising is what a
 *                      caller recovering from the loss does;
 *   C_GetInfo          forwarded: information about the library, not the token.
 * So a caller that re-initialises during the outage gets as far as the slot list
 * and is refused there. When the file is removed, calls reach the real module
 * again; sessions opened before the outage may still be valid there (the shim does
 * not end them), which is the caller's business to find out.
 * The file is looked up at each call (one access(2)): removing or creating it
 * takes effect at once in every process using the shim.
 * P11SHIM_ARM_FILE makes the token go away at a chosen point of an operation: while
 * that file exists and holds "C_Name N", the N-th call to C_Name from then on (in
 * this process) creates the fail file before it is answered (so it, and every call
 * after it, fails), and the arm file is removed.
 * Also: P11SHIM_TOKEN_FLAGS adds token flags, P11SHIM_LOGIN_LOG counts logins
 * (see below). */
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <p11-kit/pkcs11.h>

#define EXPORT __attribute__((visibility("default")))

static CK_FUNCTION_LIST_PTR real;
static CK_FUNCTION_LIST shim;
static const char *fail_file;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static const char *arm_file;
static pthread_mutex_t arm_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long armed_calls;

static void arm_check(const char *call)
{
    char buf[64], fn[48];
    unsigned long n;
    FILE *f;

    if (arm_file == NULL || fail_file == NULL || access(arm_file, F_OK) != 0)
        return;
    pthread_mutex_lock(&arm_lock);
    f = fopen(arm_file, "re");
    if (f != NULL && fgets(buf, sizeof(buf), f) != NULL && sscanf(buf, "%47s %lu", fn, &n) == 2 &&
        strcmp(fn, call) == 0 && ++armed_calls >= n) {
        int fd = open(fail_file, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd >= 0)
            close(fd);
        unlink(arm_file);
        armed_calls = 0;
    }
    if (f != NULL)
        fclose(f);
    pthread_mutex_unlock(&arm_lock);
}

static int failing(const char *call)
{
    arm_check(call);
    return fail_file != NULL && access(fail_file, F_OK) == 0;
}

/* Forwarded while the token is present; CKR_DEVICE_REMOVED while it is not. */
#define SHIM(name, params, args)                                                                   \
    static CK_RV shim_##name params                                                                \
    {                                                                                              \
        if (real == NULL)                                                                          \
            return CKR_CRYPTOKI_NOT_INITIALIZED;                                                   \
        if (failing(#name))                                                                        \
            return CKR_DEVICE_REMOVED;                                                             \
        return real->name args;                                                                    \
    }
/* Always forwarded. */
#define PASS(name, params, args)                                                                   \
    static CK_RV shim_##name params                                                                \
    {                                                                                              \
        if (real == NULL)                                                                          \
            return CKR_CRYPTOKI_NOT_INITIALIZED;                                                   \
        return real->name args;                                                                    \
    }

typedef CK_SESSION_HANDLE SH;
typedef CK_OBJECT_HANDLE OH;
typedef CK_MECHANISM_PTR MP;
typedef CK_ATTRIBUTE_PTR AP;
typedef CK_BYTE_PTR BP;
typedef CK_ULONG UL;
typedef CK_ULONG_PTR ULP;

PASS(C_Initialize, (void *a), (a))
PASS(C_Finalize, (void *r), (r))
PASS(C_GetInfo, (CK_INFO_PTR i), (i))
SHIM(C_GetSlotList, (CK_BBOOL p, CK_SLOT_ID_PTR l, ULP n), (p, l, n))
SHIM(C_GetSlotInfo, (CK_SLOT_ID s, CK_SLOT_INFO_PTR i), (s, i))
/* P11SHIM_TOKEN_FLAGS (a number, e.g. 0x20000 = CKF_USER_PIN_FINAL_TRY): OR'ed into
 * the token's flags, so that a test can show a token about to lock its PIN. */
static CK_RV shim_C_GetTokenInfo(CK_SLOT_ID s, CK_TOKEN_INFO_PTR i)
{
    const char *f = getenv("P11SHIM_TOKEN_FLAGS");
    CK_RV rv;
    if (real == NULL)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    if (failing("C_GetTokenInfo"))
        return CKR_DEVICE_REMOVED;
    rv = real->C_GetTokenInfo(s, i);
    if (rv == CKR_OK && f != NULL && *f != '\0')
        i->flags |= (CK_FLAGS)strtoul(f, NULL, 0);
    return rv;
}
SHIM(C_GetMechanismList, (CK_SLOT_ID s, CK_MECHANISM_TYPE_PTR l, ULP n), (s, l, n))
SHIM(C_GetMechanismInfo, (CK_SLOT_ID s, CK_MECHANISM_TYPE t, CK_MECHANISM_INFO_PTR i), (s, t, i))
SHIM(C_InitToken, (CK_SLOT_ID s, BP p, UL pl, BP l), (s, p, pl, l))
SHIM(C_InitPIN, (SH h, BP p, UL pl), (h, p, pl))
SHIM(C_SetPIN, (SH h, BP o, UL ol, BP n, UL nl), (h, o, ol, n, nl))
SHIM(C_OpenSession, (CK_SLOT_ID s, CK_FLAGS f, void *a, CK_NOTIFY n, CK_SESSION_HANDLE_PTR h),
     (s, f, a, n, h))
SHIM(C_CloseSession, (SH h), (h))
SHIM(C_CloseAllSessions, (CK_SLOT_ID s), (s))
SHIM(C_GetSessionInfo, (SH h, CK_SESSION_INFO_PTR i), (h, i))
SHIM(C_GetOperationState, (SH h, BP s, ULP sl), (h, s, sl))
SHIM(C_SetOperationState, (SH h, BP s, UL sl, OH e, OH a), (h, s, sl, e, a))
/* P11SHIM_LOGIN_LOG: a file that gets one line per C_Login that reaches the shim
 * (never the PIN): tests count the login attempts a command made. */
static CK_RV shim_C_Login(SH h, CK_USER_TYPE u, BP p, UL pl)
{
    const char *log = getenv("P11SHIM_LOGIN_LOG");
    if (real == NULL)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    if (log != NULL && *log != '\0') {
        int fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
        if (fd >= 0) {
            (void)!write(fd, "C_Login\n", 8);
            close(fd);
        }
    }
    if (failing("C_Login"))
        return CKR_DEVICE_REMOVED;
    return real->C_Login(h, u, p, pl);
}
SHIM(C_Logout, (SH h), (h))
SHIM(C_CreateObject, (SH h, AP t, UL n, CK_OBJECT_HANDLE_PTR o), (h, t, n, o))
SHIM(C_CopyObject, (SH h, OH o, AP t, UL n, CK_OBJECT_HANDLE_PTR no), (h, o, t, n, no))
SHIM(C_DestroyObject, (SH h, OH o), (h, o))
SHIM(C_GetObjectSize, (SH h, OH o, ULP s), (h, o, s))
SHIM(C_GetAttributeValue, (SH h, OH o, AP t, UL n), (h, o, t, n))
SHIM(C_SetAttributeValue, (SH h, OH o, AP t, UL n), (h, o, t, n))
SHIM(C_FindObjectsInit, (SH h, AP t, UL n), (h, t, n))
SHIM(C_FindObjects, (SH h, CK_OBJECT_HANDLE_PTR o, UL m, ULP n), (h, o, m, n))
SHIM(C_FindObjectsFinal, (SH h), (h))
SHIM(C_EncryptInit, (SH h, MP m, OH k), (h, m, k))
SHIM(C_Encrypt, (SH h, BP d, UL dl, BP e, ULP el), (h, d, dl, e, el))
SHIM(C_EncryptUpdate, (SH h, BP d, UL dl, BP e, ULP el), (h, d, dl, e, el))
SHIM(C_EncryptFinal, (SH h, BP e, ULP el), (h, e, el))
SHIM(C_DecryptInit, (SH h, MP m, OH k), (h, m, k))
SHIM(C_Decrypt, (SH h, BP e, UL el, BP d, ULP dl), (h, e, el, d, dl))
SHIM(C_DecryptUpdate, (SH h, BP e, UL el, BP d, ULP dl), (h, e, el, d, dl))
SHIM(C_DecryptFinal, (SH h, BP d, ULP dl), (h, d, dl))
SHIM(C_DigestInit, (SH h, MP m), (h, m))
SHIM(C_Digest, (SH h, BP d, UL dl, BP o, ULP ol), (h, d, dl, o, ol))
SHIM(C_DigestUpdate, (SH h, BP d, UL dl), (h, d, dl))
SHIM(C_DigestKey, (SH h, OH k), (h, k))
SHIM(C_DigestFinal, (SH h, BP o, ULP ol), (h, o, ol))
SHIM(C_SignInit, (SH h, MP m, OH k), (h, m, k))
SHIM(C_Sign, (SH h, BP d, UL dl, BP s, ULP sl), (h, d, dl, s, sl))
SHIM(C_SignUpdate, (SH h, BP d, UL dl), (h, d, dl))
SHIM(C_SignFinal, (SH h, BP s, ULP sl), (h, s, sl))
SHIM(C_SignRecoverInit, (SH h, MP m, OH k), (h, m, k))
SHIM(C_SignRecover, (SH h, BP d, UL dl, BP s, ULP sl), (h, d, dl, s, sl))
SHIM(C_VerifyInit, (SH h, MP m, OH k), (h, m, k))
SHIM(C_Verify, (SH h, BP d, UL dl, BP s, UL sl), (h, d, dl, s, sl))
SHIM(C_VerifyUpdate, (SH h, BP d, UL dl), (h, d, dl))
SHIM(C_VerifyFinal, (SH h, BP s, UL sl), (h, s, sl))
SHIM(C_VerifyRecoverInit, (SH h, MP m, OH k), (h, m, k))
SHIM(C_VerifyRecover, (SH h, BP s, UL sl, BP d, ULP dl), (h, s, sl, d, dl))
SHIM(C_DigestEncryptUpdate, (SH h, BP d, UL dl, BP e, ULP el), (h, d, dl, e, el))
SHIM(C_DecryptDigestUpdate, (SH h, BP e, UL el, BP d, ULP dl), (h, e, el, d, dl))
SHIM(C_SignEncryptUpdate, (SH h, BP d, UL dl, BP e, ULP el), (h, d, dl, e, el))
SHIM(C_DecryptVerifyUpdate, (SH h, BP e, UL el, BP d, ULP dl), (h, e, el, d, dl))
SHIM(C_GenerateKey, (SH h, MP m, AP t, UL n, CK_OBJECT_HANDLE_PTR k), (h, m, t, n, k))
SHIM(C_GenerateKeyPair,
     (SH h, MP m, AP pt, UL pn, AP kt, UL kn, CK_OBJECT_HANDLE_PTR pub, CK_OBJECT_HANDLE_PTR priv),
     (h, m, pt, pn, kt, kn, pub, priv))
SHIM(C_WrapKey, (SH h, MP m, OH w, OH k, BP o, ULP ol), (h, m, w, k, o, ol))
SHIM(C_UnwrapKey, (SH h, MP m, OH u, BP w, UL wl, AP t, UL n, CK_OBJECT_HANDLE_PTR k),
     (h, m, u, w, wl, t, n, k))
SHIM(C_DeriveKey, (SH h, MP m, OH b, AP t, UL n, CK_OBJECT_HANDLE_PTR k), (h, m, b, t, n, k))
SHIM(C_SeedRandom, (SH h, BP s, UL sl), (h, s, sl))
SHIM(C_GenerateRandom, (SH h, BP r, UL rl), (h, r, rl))
SHIM(C_GetFunctionStatus, (SH h), (h))
SHIM(C_CancelFunction, (SH h), (h))
SHIM(C_WaitForSlotEvent, (CK_FLAGS f, CK_SLOT_ID_PTR s, void *r), (f, s, r))

static CK_RV shim_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list);

/* Loads the real module once; the shim's list is only handed out if that worked. */
static void load_real(void)
{
    const char *path = getenv("P11SHIM_MODULE");
    const char *ff = getenv("P11SHIM_FAIL_FILE");
    const char *af = getenv("P11SHIM_ARM_FILE");
    CK_C_GetFunctionList get;
    void *dl;

    if (ff != NULL && *ff != '\0')
        fail_file = strdup(ff);
    if (af != NULL && *af != '\0')
        arm_file = strdup(af);
    if (path == NULL || *path == '\0')
        return;
    dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (dl == NULL)
        return;
    get = (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList");
    if (get == NULL || get(&real) != CKR_OK) {
        real = NULL;
        return;
    }

#define SET(name) shim.name = shim_##name
    shim.version = real->version;
    SET(C_Initialize);
    SET(C_Finalize);
    SET(C_GetInfo);
    SET(C_GetFunctionList);
    SET(C_GetSlotList);
    SET(C_GetSlotInfo);
    SET(C_GetTokenInfo);
    SET(C_GetMechanismList);
    SET(C_GetMechanismInfo);
    SET(C_InitToken);
    SET(C_InitPIN);
    SET(C_SetPIN);
    SET(C_OpenSession);
    SET(C_CloseSession);
    SET(C_CloseAllSessions);
    SET(C_GetSessionInfo);
    SET(C_GetOperationState);
    SET(C_SetOperationState);
    SET(C_Login);
    SET(C_Logout);
    SET(C_CreateObject);
    SET(C_CopyObject);
    SET(C_DestroyObject);
    SET(C_GetObjectSize);
    SET(C_GetAttributeValue);
    SET(C_SetAttributeValue);
    SET(C_FindObjectsInit);
    SET(C_FindObjects);
    SET(C_FindObjectsFinal);
    SET(C_EncryptInit);
    SET(C_Encrypt);
    SET(C_EncryptUpdate);
    SET(C_EncryptFinal);
    SET(C_DecryptInit);
    SET(C_Decrypt);
    SET(C_DecryptUpdate);
    SET(C_DecryptFinal);
    SET(C_DigestInit);
    SET(C_Digest);
    SET(C_DigestUpdate);
    SET(C_DigestKey);
    SET(C_DigestFinal);
    SET(C_SignInit);
    SET(C_Sign);
    SET(C_SignUpdate);
    SET(C_SignFinal);
    SET(C_SignRecoverInit);
    SET(C_SignRecover);
    SET(C_VerifyInit);
    SET(C_Verify);
    SET(C_VerifyUpdate);
    SET(C_VerifyFinal);
    SET(C_VerifyRecoverInit);
    SET(C_VerifyRecover);
    SET(C_DigestEncryptUpdate);
    SET(C_DecryptDigestUpdate);
    SET(C_SignEncryptUpdate);
    SET(C_DecryptVerifyUpdate);
    SET(C_GenerateKey);
    SET(C_GenerateKeyPair);
    SET(C_WrapKey);
    SET(C_UnwrapKey);
    SET(C_DeriveKey);
    SET(C_SeedRandom);
    SET(C_GenerateRandom);
    SET(C_GetFunctionStatus);
    SET(C_CancelFunction);
    SET(C_WaitForSlotEvent);
#undef SET
}

static CK_RV shim_C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
    if (list == NULL)
        return CKR_ARGUMENTS_BAD;
    pthread_once(&once, load_real);
    if (real == NULL)
        return CKR_GENERAL_ERROR; /* P11SHIM_MODULE unset or not loadable */
    *list = &shim;
    return CKR_OK;
}

EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
    return shim_C_GetFunctionList(list);
}
