/* fuzz_config.c - the configuration inputs of p11tls.
 * Fast inputs (first byte not 0 mod 8): the token layer's parsers, in process:
 *   - p11_pin_from_source with "env:VAR" (a variable holding fuzzed bytes), with
 *     "file:PATH" and "/PATH" (a file holding fuzzed bytes) and with other text:
 *     the PIN is the value (a file: less one trailing "\n" or "\r\n"), refused
 *     above 256 bytes, and a refusal's message never holds the value;
 *   - p11_level_parse.
 * Slow inputs (first byte 0 mod 8): the sanitized provider activated in a new
 * library context from an openssl.cnf whose [p11tls_sect] values (min-assurance,
 * strategy, max-sessions, handle-lifetime, handle-cache-size, token, pin-source,
 * pkcs11-init-args) come from the fuzzer. One token open per input. Checked: a
 * configuration that is valid for the token loads usable, one that is certainly
 * invalid fails closed (KDF refused with an error), and the provider's
 * failure text never holds the PIN; with a SoftHSM2 token (sequential session
 * handles), no PKCS#11 session the provider opened is left open once its
 * library context is freed (P11TLS_FUZZ_SKIP_SESSION_CHECK=1 turns that check
 * off, to explore past a known finding). The PKCS#11 module is never chosen by the
 * fuzzer, and neither is a PIN file or a variable other than the harness's own,
 * so no wrong PIN is ever presented to the token. */
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include "fuzz_common.h"
#include "p11.h"

#define PIN_MAX 256

static char tmpdir[256], pin_path[300];
static void session_check_init(void);
static char real_pin[PIN_MAX + 1];

static void remove_tmpdir(void)
{
    unlink(pin_path);
    rmdir(tmpdir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *t = getenv("TMPDIR");
    FILE *f;
    size_t n;

    snprintf(tmpdir, sizeof(tmpdir), "%s/p11tls-fuzz-config-XXXXXX", t && *t ? t : "/tmp");
    if (mkdtemp(tmpdir) == NULL) {
        perror("fuzz_config: mkdtemp");
        exit(1);
    }
    snprintf(pin_path, sizeof(pin_path), "%s/pin", tmpdir);
    atexit(remove_tmpdir);
    /* The token's real PIN, for the slow inputs' "env:" source and the leak check. */
    f = fopen(fz_env("P11TLS_PIN_FILE"), "rb");
    if (f == NULL) {
        perror("fuzz_config: PIN file");
        exit(1);
    }
    n = fread(real_pin, 1, PIN_MAX, f);
    fclose(f);
    while (n > 0 && (real_pin[n - 1] == '\n' || real_pin[n - 1] == '\r'))
        n--;
    real_pin[n] = '\0';
    setenv("P11TLS_FUZZ_REALPIN", real_pin, 1);
    unsetenv("P11TLS_FUZZ_UNSET");
    unsetenv("P11TLS_DEBUG"); /* the provider must not log (it never logs a PIN anyway) */
    fz_pin_module();
    session_check_init();
    return 0;
}

/* ------------------------------------------------------------------ fast */

static int contains(const char *hay, const unsigned char *needle, size_t n)
{
    size_t h = strlen(hay);
    if (n == 0 || n > h)
        return 0;
    for (size_t i = 0; i + n <= h; i++)
        if (memcmp(hay + i, needle, n) == 0)
            return 1;
    return 0;
}

static void check_pin(p11_pin *p, const char *err, const unsigned char *want, size_t wlen,
                      const char *src)
{
    if (wlen > PIN_MAX || wlen == 0) {
        /* too long, or empty (an empty PIN would spend one of the token's tries) */
        FZ_CHECK(p == NULL, "%s: a PIN of %zu bytes accepted (as %zu bytes)", src, wlen,
                 p ? p11_pin_len(p) : 0);
    } else {
        FZ_CHECK(p != NULL, "%s: a PIN of %zu bytes refused: %s", src, wlen, err);
        FZ_CHECK(p11_pin_len(p) == wlen && memcmp(p11_pin_data(p), want, wlen) == 0,
                 "%s: the PIN read is not the value given", src);
    }
    if (p == NULL) {
        FZ_CHECK(err[0] != '\0', "%s: refused without a message", src);
        /* Values of 6+ bytes only: a shorter one may be a word of the message. */
        if (wlen >= 6)
            FZ_CHECK(!contains(err, want, wlen), "%s: the refusal's message holds the PIN", src);
    }
    p11_pin_free(p);
}

static void fast(fz_in *in)
{
    char err[512], src[400];
    size_t n;
    const uint8_t *v;
    unsigned mode = fz_pick(in, 5);
    p11_pin *p;

    err[0] = '\0';
    if (mode == 0) { /* env: */
        char val[400];
        v = fz_bytes(in, 300, &n);
        memcpy(val, v, n);
        val[n] = '\0';
        n = strlen(val); /* an environment value ends at a NUL */
        setenv("P11TLS_FUZZ_PIN", val, 1);
        p = p11_pin_from_source("env:P11TLS_FUZZ_PIN", err, sizeof(err));
        check_pin(p, err, (const unsigned char *)val, n, "env:");
        unsetenv("P11TLS_FUZZ_PIN");
        FZ_CHECK(p11_pin_from_source("env:P11TLS_FUZZ_PIN", err, sizeof(err)) == NULL,
                 "env: an unset variable gave a PIN");
    } else if (mode <= 2) { /* file:PATH, /PATH */
        int fd = open(pin_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        size_t want;
        FZ_CHECK(fd >= 0, "cannot write %s", pin_path);
        v = fz_bytes(in, 300, &n);
        FZ_CHECK(write(fd, v, n) == (ssize_t)n, "short write");
        close(fd);
        /* The PIN: the file less one trailing "\n", then less one trailing "\r"
         * ("\r\n"; a lone trailing "\r" too, as p11tls does). */
        want = n;
        if (want > 0 && v[want - 1] == '\n')
            want--;
        if (want > 0 && v[want - 1] == '\r')
            want--;
        snprintf(src, sizeof(src), "%s%s", mode == 1 ? "file:" : "", pin_path);
        p = p11_pin_from_source(src, err, sizeof(err));
        check_pin(p, err, v, want, mode == 1 ? "file:" : "/path");
    } else if (mode == 3) { /* other text: never a file or variable we do not control */
        v = fz_bytes(in, 200, &n);
        memcpy(src, v, n);
        src[n] = '\0';
        if (strncmp(src, "file:", 5) == 0 || src[0] == '/' || strncmp(src, "env:", 4) == 0)
            return;
        FZ_CHECK(p11_pin_from_source(src, err, sizeof(err)) == NULL, "'%s' gave a PIN", src);
        FZ_CHECK(err[0] != '\0', "refused without a message");
        /* A zero-length error buffer must be safe too. */
        FZ_CHECK(p11_pin_from_source(src, err, 0) == NULL, "'%s' gave a PIN", src);
        FZ_CHECK(p11_pin_from_source(NULL, err, sizeof(err)) == NULL, "NULL gave a PIN");
    } else { /* min-assurance */
        p11_level l = P11_LEVEL_NONE;
        int want;
        v = fz_bytes(in, 40, &n);
        memcpy(src, v, n);
        src[n] = '\0';
        want = strcasecmp(src, "sealed") == 0      ? P11_LEVEL_SEALED
               : strcasecmp(src, "transient") == 0 ? P11_LEVEL_TRANSIENT
                                                   : -1;
        FZ_CHECK(p11_level_parse(src, &l) == (want >= 0), "p11_level_parse('%s')", src);
        if (want >= 0)
            FZ_CHECK((int)l == want && strcasecmp(p11_level_name(l), src) == 0,
                     "p11_level_parse('%s') gave %d", src, (int)l);
    }
}

/* ------------------------------------------------------------------ slow */

/* The module, as the provider loads it (the same instance: same path), to see
 * the sessions it leaves open. SoftHSM2 numbers sessions 1, 2, 3... */
static CK_FUNCTION_LIST_PTR mod_fl;
static CK_SLOT_ID mod_slot;

static void session_check_init(void)
{
    const char *kind = getenv("P11TLS_KIND"), *skip = getenv("P11TLS_FUZZ_SKIP_SESSION_CHECK");
    void *h;
    CK_C_GetFunctionList get;
    CK_C_INITIALIZE_ARGS args;
    CK_SLOT_ID slots[16];
    CK_ULONG n = 16;
    CK_RV rv;

    if (kind == NULL || strcmp(kind, "softhsm") != 0 || (skip != NULL && strcmp(skip, "1") == 0))
        return;
    h = dlopen(fz_env("P11TLS_MODULE"), RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    get = h ? (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList") : NULL;
    if (get == NULL || get(&mod_fl) != CKR_OK)
        return;
    memset(&args, 0, sizeof(args));
    args.flags = CKF_OS_LOCKING_OK;
    rv = mod_fl->C_Initialize(&args);
    if ((rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) ||
        mod_fl->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK) {
        mod_fl = NULL;
        return;
    }
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (mod_fl->C_GetTokenInfo(slots[i], &ti) == CKR_OK && (ti.flags & CKF_TOKEN_INITIALIZED)) {
            mod_slot = slots[i];
            return;
        }
    }
    mod_fl = NULL;
}

/* A fresh session's handle (closed again at once): sessions opened in between
 * have handles between two of these. */
static CK_SESSION_HANDLE session_mark(void)
{
    CK_SESSION_HANDLE h = 0;
    if (mod_fl == NULL ||
        mod_fl->C_OpenSession(mod_slot, CKF_SERIAL_SESSION, NULL, NULL, &h) != CKR_OK)
        return 0;
    mod_fl->C_CloseSession(h);
    return h;
}

static void session_check(CK_SESSION_HANDLE before, const char *sect)
{
    CK_SESSION_HANDLE after = session_mark();
    unsigned long open = 0;
    if (before == 0 || after <= before || after - before > 100000)
        return;
    for (CK_SESSION_HANDLE h = before + 1; h < after; h++) {
        CK_SESSION_INFO si;
        if (mod_fl->C_GetSessionInfo(h, &si) == CKR_OK) {
            open++;
            mod_fl->C_CloseSession(h); /* report once, not again at the next input */
        }
    }
    FZ_CHECK(open == 0,
             "%lu PKCS#11 session(s) of p11tls left open in the module after its library "
             "context was freed (pkcs11/token.c p11_token_free closes no session):\n%s",
             open, sect);
}

enum { VALID = 1, INVALID = 2, UNKNOWN = 4 };

/* Printable text for a value (no quotes or line breaks: the cnf syntax is not
 * what is fuzzed here). */
static void text(fz_in *in, char *buf, size_t max)
{
    size_t n, o = 0;
    const uint8_t *v = fz_bytes(in, max - 1, &n);
    for (size_t i = 0; i < n; i++)
        if (v[i] >= 0x20 && v[i] < 0x7f && v[i] != '"' && v[i] != '\\' && v[i] != '$')
            buf[o++] = (char)v[i];
    buf[o] = '\0';
}

static int all_digits(const char *s)
{
    if (*s == '\0')
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

static int any_digit(const char *s)
{
    for (; *s; s++)
        if (*s >= '0' && *s <= '9')
            return 1;
    return 0;
}

/* A number option: absent, an interesting value or fuzzed text. */
static int number(fz_in *in, char *sect, size_t len, const char *key, unsigned long max)
{
    static const char *const vals[] = {"1",   "0",    "16",         "-1",
                                       "+5",  " 7",   "4294967297", "18446744073709551617",
                                       "1e3", "0x10", "",           "65536"};
    char v[64], line[200];
    unsigned k = fz_pick(in, 20);
    unsigned long x;

    if (k < 4)
        return VALID; /* absent */
    if (k < 4 + sizeof(vals) / sizeof(vals[0]))
        snprintf(v, sizeof(v), "%s", vals[k - 4]);
    else if (k < 18)
        snprintf(v, sizeof(v), "%lu", max + (fz_u8(in) % 3) - 1); /* max-1, max, max+1 */
    else
        text(in, v, 24);
    snprintf(line, sizeof(line), "%s = \"%s\"\n", key, v);
    strncat(sect, line, len - strlen(sect) - 1);
    if (all_digits(v) && strlen(v) < 12) {
        x = strtoul(v, NULL, 10);
        return x >= 1 && x <= max ? VALID : INVALID;
    }
    return any_digit(v) ? UNKNOWN : INVALID;
}

/* A pin-value the harness puts in the token URI (once, in the query) never
 * reaches a message. */
#define PIN_MARK "Pv9fuzzPINvalue4Mark"

static int once(const char *hay, const char *needle)
{
    const char *p = strstr(hay, needle);
    return p != NULL && strstr(p + 1, needle) == NULL;
}

static void check_pin_value(const char *uri, const char *text)
{
    const char *q = strchr(uri, '?'), *m = strstr(uri, "pin-value=" PIN_MARK);
    /* Only a pin-value attribute of the query (not text inside another value). */
    if (q == NULL || m == NULL || m <= q || (m[-1] != '?' && m[-1] != '&') || !once(uri, PIN_MARK))
        return;
    FZ_CHECK(strstr(text, PIN_MARK) == NULL, "the pin-value of the token URI '%s' is in: %s", uri,
             text);
}

static void slow(fz_in *in)
{
    char sect[8192] = "", cnf[16384], v[256], line[512], why[512], skip[128] = ";";
    char token_uri[256] = "";
    int verdict = VALID;
    unsigned k;
    OSSL_LIB_CTX *ctx;
    CK_SESSION_HANDLE mark;
    int usable;

    /* min-assurance: SoftHSM2 tokens are `transient`. */
    k = fz_pick(in, 6);
    if (k == 0) {
        strcat(skip, "min-assurance;");
        verdict |= INVALID; /* default `sealed` */
    } else if (k <= 4) {
        static const char *const vals[] = {"transient", "TRANSIENT", "sealed", "none"};
        strcat(skip, "min-assurance;");
        snprintf(line, sizeof(line), "min-assurance = %s\n", vals[k - 1]);
        strcat(sect, line);
        verdict |= k <= 2 ? VALID : INVALID;
    } /* else: the token's own (transient) */

    k = fz_pick(in, 8);
    if (k > 0) {
        static const char *const vals[] = {"auto", "HMAC", "native", "sp800-108", "Auto", "none"};
        if (k <= 6)
            snprintf(v, sizeof(v), "%s", vals[k - 1]);
        else
            text(in, v, 32);
        snprintf(line, sizeof(line), "strategy = \"%s\"\n", v);
        strcat(sect, line);
        if (!strcasecmp(v, "auto") || !strcasecmp(v, "hmac"))
            verdict |= VALID;
        else if (!strcasecmp(v, "native") || !strcasecmp(v, "sp800-108"))
            verdict |= UNKNOWN; /* SoftHSM2 lacks them: refused or no assurance */
        else
            verdict |= INVALID;
    }
    verdict |= number(in, sect, sizeof(sect), "max-sessions", 1024);
    verdict |= number(in, sect, sizeof(sect), "handle-lifetime", 7 * 86400);
    verdict |= number(in, sect, sizeof(sect), "handle-cache-size", 1ul << 22);

    /* token: the token's URI, variants of it, or fuzzed text. */
    k = fz_pick(in, 6);
    if (k > 0) {
        const char *good = fz_env("P11TLS_TOKEN_URI");
        strcat(skip, "token;");
        if (k == 1) {
            snprintf(v, sizeof(v), "%s", good);
        } else if (k == 2) {
            snprintf(v, sizeof(v), "%s;x-vendor=1?x-q=2", good);
        } else if (k == 3) {
            char t[128];
            text(in, t, 100);
            snprintf(v, sizeof(v), "%s%s", good, t);
            verdict |= UNKNOWN;
        } else if (k == 4) {
            text(in, v, 200);
            verdict |= UNKNOWN;
        } else {
            snprintf(v, sizeof(v), "pkcs11:token=no-such-token");
            verdict |= INVALID;
        }
        if (k <= 2)
            verdict |= VALID;
        if (k <= 4 && (fz_u8(in) & 1)) { /* a pin-value (not used: pin-source wins) */
            size_t l = strlen(v);
            snprintf(v + l, sizeof(v) - l, "%spin-value=" PIN_MARK, strchr(v, '?') ? "&" : "?");
        }
        /* A pin-value in a fuzzed URI is never used: pin-source is always set. */
        snprintf(token_uri, sizeof(token_uri), "%s", v);
        snprintf(line, sizeof(line), "token = \"%s\"\n", v);
        strcat(sect, line);
    }

    /* pin-source: the harness's own sources only. */
    k = fz_pick(in, 5);
    if (k > 0) {
        strcat(skip, "pin-source;");
        if (k == 1) {
            snprintf(v, sizeof(v), "env:P11TLS_FUZZ_REALPIN");
        } else if (k == 2) {
            snprintf(v, sizeof(v), "env:P11TLS_FUZZ_UNSET");
            verdict |= INVALID;
        } else if (k == 3) {
            snprintf(v, sizeof(v), "file:%s/no-such-pin-file", tmpdir);
            verdict |= INVALID;
        } else {
            text(in, v, 64);
            if (strncmp(v, "file:", 5) == 0 || v[0] == '/' || strncmp(v, "env:", 4) == 0)
                snprintf(v, sizeof(v), "unsupported");
            /* "": no PIN, no login; whether the token is then usable depends on
             * the process's login state (PKCS#11 logins are per application). */
            verdict |= v[0] ? INVALID : UNKNOWN;
        }
        snprintf(line, sizeof(line), "pin-source = \"%s\"\n", v);
        strcat(sect, line);
    }

    if (fz_pick(in, 8) == 0) {
        text(in, v, 64);
        snprintf(line, sizeof(line), "pkcs11-init-args = \"%s\"\n", v);
        strcat(sect, line);
        verdict |= v[0] ? UNKNOWN : VALID;
    }

    fz_token_section(sect, sizeof(sect), skip);
    fz_cnf_text(cnf, sizeof(cnf), sect);
    mark = session_mark();
    ctx = fz_libctx_from_cnf(cnf);
    FZ_CHECK(ctx != NULL, "the configuration does not load at all:\n%s", cnf);
    usable = fz_p11tls_usable(ctx, why, sizeof(why));
    /* The PIN never reaches the failure text, unless the fuzzer wrote it into the
     * configuration itself (the token URI is quoted in messages). */
    FZ_CHECK(strstr(why, real_pin) == NULL || strstr(sect, real_pin) != NULL,
             "the provider's name/failure holds the PIN: %s", why);
    check_pin_value(token_uri, why);
    if (verdict == VALID)
        FZ_CHECK(usable, "a valid configuration is not usable (%s):\n%s", why, sect);
    if (verdict & INVALID)
        FZ_CHECK(!usable, "an invalid configuration is usable:\n%s", sect);
    if (!usable) {
        /* Fail closed: the KDF is there and refuses, with an error. */
        EVP_KDF *kdf = EVP_KDF_fetch(ctx, "TLS1-PRF", "provider=p11tls");
        EVP_KDF_CTX *c = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
        unsigned char out[48], sec[48] = {0};
        OSSL_PARAM p[] = {
            OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA2-256", 0),
            OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, sec, sizeof(sec)),
            OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, (char *)"key expansion", 13),
            OSSL_PARAM_construct_end()};
        FZ_CHECK(c != NULL, "an unusable p11tls has no TLS1-PRF");
        ERR_clear_error();
        FZ_CHECK(EVP_KDF_derive(c, out, sizeof(out), p) <= 0, "an unusable p11tls derived");
        FZ_CHECK(ERR_peek_error() != 0, "an unusable p11tls refused without an error");
        {
            const char *data = NULL;
            int flags = 0;
            while (ERR_get_error_all(NULL, NULL, NULL, &data, &flags) != 0) {
                if (data == NULL || !(flags & ERR_TXT_STRING))
                    continue;
                FZ_CHECK(strstr(data, real_pin) == NULL || strstr(sect, real_pin) != NULL,
                         "an error holds the PIN: %s", data);
                check_pin_value(token_uri, data);
            }
        }
        EVP_KDF_CTX_free(c);
        EVP_KDF_free(kdf);
    }
    OSSL_LIB_CTX_free(ctx);
    ERR_clear_error();
    session_check(mark, sect);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_in in = {data, size};
    if (size == 0)
        return 0;
    if (fz_u8(&in) % 8 == 0)
        slow(&in);
    else
        fast(&in);
    ERR_clear_error();
    return 0;
}
