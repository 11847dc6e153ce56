/* token.c - opening a token: the module, the slot chosen by RFC 7512 URI, the
 * PIN and login (a wrong PIN is never retried, so a token is never locked out
 * by p11tls), and the capability probe. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <pwd.h>
#include <unistd.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/proverr.h>
#include "internal.h"

static void trimmed(char *dst, const unsigned char *src, size_t n)
{
    while (n > 0 && src[n - 1] == ' ')
        n--;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

int p11_token_select_slot(p11_token *t)
{
    CK_SLOT_ID *slots = NULL;
    CK_ULONG n = 0;
    CK_INFO info;
    CK_RV rv;
    char seen[256] = "";
    size_t off = 0;
    int found = 0;

    rv = P11_CALL(t->fl, C_GetInfo, &info);
    if (rv != CKR_OK) {
        p11_err_ckr("C_GetInfo", rv, NULL);
        return 0;
    }
    if (!p11_uri_match_library(t->uri, &info)) {
        p11_err(PROV_R_INVALID_CONFIG_DATA,
                "token: the module does not match the library-* "
                "attributes of '%s'",
                t->uri_text);
        return 0;
    }
    rv = P11_CALL(t->fl, C_GetSlotList, CK_TRUE, NULL, &n);
    if (rv == CKR_OK && n > 0) {
        slots = calloc(n, sizeof(*slots));
        if (slots == NULL)
            return 0;
        rv = P11_CALL(t->fl, C_GetSlotList, CK_TRUE, slots, &n);
    }
    if (rv != CKR_OK) {
        p11_err_ckr("C_GetSlotList", rv, NULL);
        free(slots);
        return 0;
    }
    for (CK_ULONG i = 0; i < n && !found; i++) {
        CK_SLOT_INFO si;
        CK_TOKEN_INFO ti;
        char label[33];
        if (P11_CALL(t->fl, C_GetSlotInfo, slots[i], &si) != CKR_OK ||
            P11_CALL(t->fl, C_GetTokenInfo, slots[i], &ti) != CKR_OK)
            continue;
        trimmed(label, ti.label, sizeof(ti.label));
        if (off < sizeof(seen))
            off +=
                (size_t)snprintf(seen + off, sizeof(seen) - off, "%s'%s'", off ? ", " : "", label);
        if (p11_uri_match_slot(t->uri, slots[i], &si) && p11_uri_match_token(t->uri, &ti)) {
            t->slot = slots[i];
            t->token_flags = ti.flags; /* read again at every re-open, before its login */
            memcpy(t->label, label, sizeof(label));
            found = 1;
        }
    }
    free(slots);
    t->tokens_seen = off > 0;
    if (!found)
        p11_err(PROV_R_INVALID_CONFIG_DATA, "token: no token matches '%s' (tokens present: %s)",
                t->uri_text, off ? seen : "none");
    return found;
}

CK_RV p11_token_login(p11_token *t, CK_SESSION_HANDLE h)
{
    CK_RV rv;
    if (t->pin == NULL)
        return CKR_OK;
    if (t->pin_failed)
        return t->login_refusal != 0 ? CKR_PIN_LOCKED : CKR_PIN_INCORRECT;
    /* A token that says its PIN is locked, or that the next wrong PIN locks it, gets
     * no attempt from p11tls: a wrong PIN here would lock it (see docs/security.md). The
     * flags are the token's when its slot was (re)selected, right before the first
     * login of each module initialisation (no call of its own: SoftHSM2 re-reads its
     * store for it, which races the other processes' logins after a fork). */
    if ((t->token_flags & (CKF_USER_PIN_LOCKED | CKF_USER_PIN_FINAL_TRY)) != 0) {
        t->login_refusal = (t->token_flags & CKF_USER_PIN_LOCKED) ? 1 : 2;
        t->pin_failed = 1;
        return CKR_PIN_LOCKED;
    }
    /* A login that races another process rewriting the token's store (SoftHSM2
     * does at each login; nginx's workers log in together) fails with a transient
     * code that is not a PIN verdict: retried briefly, never for a PIN error. */
    for (int attempt = 0; attempt < 6; attempt++) {
        if (attempt > 0) {
            struct timespec ts = {0, 20000000L * attempt};
            nanosleep(&ts, NULL);
        }
        rv = P11_CALL(t->fl, C_Login, h, CKU_USER, (CK_UTF8CHAR_PTR)p11_pin_data(t->pin),
                      p11_pin_len(t->pin));
        if (rv != CKR_GENERAL_ERROR && rv != CKR_USER_PIN_NOT_INITIALIZED &&
            rv != CKR_FUNCTION_FAILED)
            break;
    }
    if (rv == CKR_USER_ALREADY_LOGGED_IN)
        rv = CKR_OK;
    p11_scrub_heap(); /* the PIN went through the module's buffers */
    if (p11_rv_is_pin_error(rv))
        t->pin_failed = 1; /* never again in this process: no lock-out by retries */
    return rv;
}

/* Raises the error of a failed login (after any clean-up calls: some modules
 * clear OpenSSL's error queue inside their own functions). */
void p11_token_login_error(p11_token *t, CK_RV rv)
{
    if (t->login_refusal == 1)
        p11_err(PROV_R_INVALID_CONFIG_DATA,
                "token '%s' reports its user PIN locked (CKF_USER_PIN_LOCKED): no login "
                "attempted; unlock it with the security officer's PIN",
                t->label);
    else if (t->login_refusal == 2)
        p11_err(PROV_R_INVALID_CONFIG_DATA,
                "token '%s' reports one PIN attempt left (CKF_USER_PIN_FINAL_TRY): p11tls "
                "will not spend it; check the PIN and log in once by hand (e.g. "
                "pkcs11-tool --login --test), which resets the count",
                t->label);
    else if (p11_rv_is_pin_error(rv))
        p11_err_ckr("C_Login", rv, "token '%s': the configured PIN was refused (not retried)",
                    t->label);
    else
        p11_err_ckr("C_Login", rv, "token '%s'", t->label);
}

int p11_rv_is_pin_error(CK_RV rv)
{
    return rv == CKR_PIN_INCORRECT || rv == CKR_PIN_INVALID || rv == CKR_PIN_LEN_RANGE ||
           rv == CKR_PIN_LOCKED || rv == CKR_PIN_EXPIRED;
}

void p11_whoami(char *buf, size_t len)
{
    struct passwd pw, *res = NULL;
    char tmp[1024];
    uid_t uid = geteuid();
    if (getpwuid_r(uid, &pw, tmp, sizeof(tmp), &res) != 0 || res == NULL)
        snprintf(buf, len, "uid %ld, pid %ld", (long)uid, (long)getpid());
    else
        snprintf(buf, len, "user '%s' (uid %ld), pid %ld", pw.pw_name, (long)uid, (long)getpid());
}

/* ---- what a forked child's failure to re-open the token is likely due to ---- */
extern char **environ;

/* Names only (a value may be a secret). */
static void env_snapshot(p11_token *t)
{
    size_t n = 0;
    for (char **e = environ; e != NULL && *e != NULL; e++)
        n++;
    t->env_names = calloc(n + 1, sizeof(char *));
    if (t->env_names == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        t->env_names[i] = strndup(environ[i], strcspn(environ[i], "="));
}

/* Variables whose names look like a module's settings. */
static int looks_like_module_setting(const char *name)
{
    static const char *const words[] = {"CONF",  "P11",    "PKCS",    "HSM", "NSS",
                                        "TOKEN", "MODULE", "ADDRESS", "SOCK"};
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
        if (strcasestr(name, words[i]) != NULL)
            return 1;
    return 0;
}

void p11_token_fork_hint(p11_token *t, char *buf, size_t len)
{
    char who[128], missing[256] = "";
    size_t off = 0;
    unsigned others = 0;

    for (char **n = t->env_names; n != NULL && *n != NULL; n++) {
        if (**n == '\0' || getenv(*n) != NULL)
            continue;
        if (!looks_like_module_setting(*n)) {
            others++;
            continue;
        }
        if (off < sizeof(missing))
            off +=
                (size_t)snprintf(missing + off, sizeof(missing) - off, "%s%s", off ? ", " : "", *n);
    }
    p11_whoami(who, sizeof(who));
    snprintf(buf, len,
             "this process is %s; the token was opened by %s. Likely causes: the token's "
             "storage is not readable by this user (for SoftHSM2 its token directory, for NSS "
             "its database directory), or the module's environment is not passed to this "
             "process (%s%s%s; nginx passes only the variables named by 'env NAME;' lines)",
             who, t->opened_by, off ? "set when p11tls started but missing here: " : "",
             off ? missing : "no module-like variable is missing",
             others ? ", and other variables" : "");
}

/* Set by an atexit handler registered at the first p11_token_open, so it runs
 * before OpenSSL's own exit-time clean-up (handlers run in reverse order). */
static volatile int process_exiting;

static void mark_exiting(void)
{
    process_exiting = 1;
}

static void register_exit_flag(void)
{
    (void)atexit(mark_exiting);
}

static void probe_caps(p11_token *t, CK_SESSION_HANDLE h);

p11_token *p11_token_open(const p11_token_cfg *cfg)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, register_exit_flag);
    p11_token *t = calloc(1, sizeof(*t));
    char err[256];
    const char *module;
    const char *pin_source;
    p11_session s;

    if (t == NULL)
        return NULL;
    pthread_mutex_init(&t->lock, NULL);
    pthread_mutex_init(&t->wrap_lock, NULL);
    pthread_mutex_init(&t->t13_lock, NULL);
    pthread_mutex_init(&t->owner_lock, NULL);
    pthread_cond_init(&t->cond, NULL);
    t->pid = getpid();
    p11_whoami(t->opened_by, sizeof(t->opened_by));
    env_snapshot(t);
    t->gen = 1;
    t->epoch = 1;
    t->max_sessions = cfg->max_sessions ? cfg->max_sessions : 16;
    t->idle = calloc(t->max_sessions, sizeof(*t->idle));
    t->pms = p11_registry_new(cfg->handle_cache_max ? cfg->handle_cache_max : 4096, 60, 0);
    t->ms = p11_registry_new(cfg->handle_cache_max, cfg->handle_lifetime, 1);
    if (t->idle == NULL || t->pms == NULL || t->ms == NULL)
        goto fail;

    if (cfg->token_uri == NULL || *cfg->token_uri == '\0') {
        p11_err(PROV_R_INVALID_CONFIG_DATA, "token: no token URI configured");
        goto fail;
    }
    if (!p11_uri_parse(cfg->token_uri, &t->uri, err, sizeof(err))) {
        p11_err(PROV_R_INVALID_CONFIG_DATA, "token: %s", err);
        goto fail;
    }
    /* Keep the URI for messages, without any pin-value in it. */
    t->uri_text = strdup(cfg->token_uri);
    if (t->uri_text != NULL && t->uri->pin_value != NULL) {
        char *q = strchr(t->uri_text, '?');
        if (q != NULL)
            *q = '\0';
    }

    module = cfg->module;
    if (module == NULL || *module == '\0')
        module = t->uri->module_path ? t->uri->module_path : t->uri->module_name;
    t->mod = p11_module_load(module, cfg->init_args);
    if (t->mod == NULL)
        goto fail;
    {
        const char *base = strrchr(module, '/');
        int p11kit = base == NULL || strstr(base, "p11-kit") != NULL;
        t->scrub =
            cfg->scrub_heap == P11_SCRUB_ALWAYS || (cfg->scrub_heap == P11_SCRUB_AUTO && p11kit);
    }
    t->fl = p11_module_functions(t->mod);

    pin_source = cfg->pin_source;
    if (pin_source == NULL || *pin_source == '\0')
        pin_source = t->uri->pin_source;
    if (pin_source != NULL && *pin_source != '\0') {
        t->pin = p11_pin_from_source(pin_source, err, sizeof(err));
        if (t->pin == NULL) {
            p11_err(PROV_R_INVALID_CONFIG_DATA, "%s: %s",
                    pin_source == cfg->pin_source
                        ? (cfg->pin_option != NULL ? cfg->pin_option : "pin-source")
                        : "the token URI's pin-source",
                    err);
            goto fail;
        }
    } else if (t->uri->pin_value != NULL) {
        if (*t->uri->pin_value == '\0') {
            p11_err(PROV_R_INVALID_CONFIG_DATA,
                    "token: the URI's pin-value is empty: no login attempted");
            goto fail;
        }
        t->pin = p11_pin_new(t->uri->pin_value, strlen(t->uri->pin_value));
    }
    /* The URI copy of a pin-value is no longer needed. */
    if (t->uri->pin_value != NULL) {
        OPENSSL_cleanse(t->uri->pin_value, strlen(t->uri->pin_value));
        free(t->uri->pin_value);
        t->uri->pin_value = NULL;
    }

    t->force_ms = cfg->force_ms;
    t->ecdhe_strict = cfg->ecdhe_strict;
    ERR_set_mark();
    if (!p11_token_select_slot(t)) {
        if (cfg->absent_ok && !t->tokens_seen) {
            /* (a pool member whose module shows no token at all: not reached yet; the
             * pool probes it, and p11_token_complete finishes opening it) */
            ERR_pop_to_mark();
            snprintf(t->label, sizeof(t->label), "%s", t->uri->token != NULL ? t->uri->token : "?");
            t->caps_pending = 1;
            p11_token_mark_absent(t, "no token present when p11tls started");
            return t;
        }
        ERR_clear_last_mark();
        goto fail;
    }
    ERR_clear_last_mark();
    /* Open the first session now: this logs in, so a bad PIN fails here. */
    if (!p11_session_get(t, &s))
        goto fail;
    probe_caps(t, s.h);
    p11_session_put(&s, CKR_OK);
    p11_debug("token '%s' ready: level %s (%s)", t->label, p11_level_name(t->caps.level),
              p11_ms_strategy_name(t->caps.ms));
    return t;
fail:
    p11_token_free(t);
    return NULL;
}

int p11_token_complete(p11_token *t)
{
    p11_session s;
    int ok;
    pthread_mutex_lock(&t->lock);
    ok = !t->caps_pending;
    pthread_mutex_unlock(&t->lock);
    if (ok)
        return 1;
    if (!p11_session_get(t, &s)) /* re-opens the module, finds the slot, logs in */
        return 0;
    probe_caps(t, s.h);
    p11_session_put(&s, CKR_OK);
    pthread_mutex_lock(&t->lock);
    t->caps_pending = 0;
    pthread_mutex_unlock(&t->lock);
    p11_debug("token '%s' ready (after start): level %s (%s)", t->label,
              p11_level_name(t->caps.level), p11_ms_strategy_name(t->caps.ms));
    return 1;
}

static void probe_caps(p11_token *t, CK_SESSION_HANDLE h)
{
    p11_caps_probe(t->fl, t->slot, h, t->force_ms, &t->caps);
    /* ECDHE in the token where both key schedules take the shared secret as an
     * object: with their mechanisms, or at `transient` as an HMAC key (TLS 1.2) and
     * through C_DigestKey (TLS 1.3's extract, hmac.c). */
    if (t->caps.ms != P11_MS_NONE && t->caps.tls13 != P11_MS_NONE) {
        for (int c = 0; c < P11_CURVE_N; c++)
            t->caps.ecdh[c] = p11_ecdh_probe(t->fl, h, t, (p11_curve)c);
        t->caps.ecdhe_why = t->caps.tls13 == P11_MS_HMAC
                                ? "the token has no EC key generation, ECDH or C_DigestKey "
                                  "for these curves"
                                : "the token has no EC key generation and ECDH for these curves";
    } else {
        t->caps.ecdhe_why = "the token runs no TLS key schedule to take the shared secret";
    }
}

void p11_token_free(p11_token *t)
{
    if (t == NULL)
        return;
    /* Unloaded while the process goes on (OSSL_PROVIDER_unload, a library context
     * freed): close this instance's sessions, which destroys the session objects
     * they own (secrets, key copies). Not at process exit, where SoftHSM2 2.6.1
     * crashes in C_CloseSession / C_Finalize, and not in a forked child, whose
     * sessions are not these. Never C_Finalize: see p11_module_free. */
    if (!process_exiting && t->fl != NULL && t->pid == getpid()) {
        for (unsigned i = 0; i < t->nidle; i++)
            (void)P11_CALL(t->fl, C_CloseSession, t->idle[i]);
        if (t->owner_gen == t->gen && t->owner_gen != 0)
            (void)P11_CALL(t->fl, C_CloseSession, t->owner_h);
        p11_registry_close_all(t->ms, t->fl, t->gen);
        t->nidle = 0;
    }
    p11_registry_free(t->pms);
    p11_registry_free(t->ms);
    p11_module_free(t->mod);
    p11_pin_free(t->pin);
    p11_uri_free(t->uri);
    free(t->uri_text);
    free(t->idle);
    for (char **n = t->env_names; n != NULL && *n != NULL; n++)
        free(*n);
    free(t->env_names);
    pthread_mutex_destroy(&t->lock);
    pthread_mutex_destroy(&t->wrap_lock);
    pthread_mutex_destroy(&t->t13_lock);
    pthread_mutex_destroy(&t->owner_lock);
    pthread_cond_destroy(&t->cond);
    free(t);
}

const char *p11_token_label(const p11_token *t)
{
    return t->label;
}

const p11_caps *p11_token_caps(const p11_token *t)
{
    return &t->caps;
}

unsigned long p11_token_epoch(const p11_token *t)
{
    return __atomic_load_n(&t->epoch, __ATOMIC_ACQUIRE);
}

CK_FUNCTION_LIST_PTR p11_token_functions(const p11_token *t)
{
    return t->fl;
}
