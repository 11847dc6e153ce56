/* session.c - the session pool: bounded, thread-safe, reusing logged-in
 * sessions. It is also where fork and token loss are noticed and recovered:
 * a child process re-initialises the module and logs in again before its
 * first token use; a lost session or device is dropped, never handed out
 * again.
 *
 * Token loss (a call answers CKR_DEVICE_REMOVED, CKR_TOKEN_NOT_PRESENT, ...) is an
 * event: the token is re-opened at once (a module finalised under p11tls: at next
 * use), and while that fails every operation is refused without touching the
 * token, with at most one re-open attempt per RETRY_MS per process. The first
 * refusal of an event in this process raises the cause (the call, its CKR_ name,
 * why re-opening failed); later ones raise a short "unavailable (lost N s ago)"
 * error, so a server logging each failed handshake names the cause once per
 * event. The loss and the recovery are noted in the debug log. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/proverr.h>
#include "internal.h"

/* log.c: the call that saw a token go away (the first of the latest run of failures
 * with one code on this thread; cleared here when a session is handed out). */
extern _Thread_local const char *p11_first_failed_call;
extern _Thread_local CK_RV p11_first_failed_rv;

#define RETRY_MS 250 /* at most one re-open attempt per lost token per process this often */

static int rv_is_device_loss(CK_RV rv)
{
    return rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT || rv == CKR_DEVICE_ERROR ||
           rv == CKR_CRYPTOKI_NOT_INITIALIZED || rv == CKR_TOKEN_NOT_RECOGNIZED ||
           rv == P11_RV_HANDLE_KEY_MISSING;
}

int p11_rv_is_session_loss(CK_RV rv)
{
    return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED || rv_is_device_loss(rv);
}

long long p11_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------ loss events */
/* The event a lost token is going through lives in t->loss (guarded by t->lock):
 * set when the token is lost, done with when it is back. */
typedef struct p11_loss loss_rec;

/* The text of the newest error on this thread's queue, without the "p11tls: " prefix. */
static void last_error_text(char *buf, size_t len)
{
    const char *data = NULL;
    int flags = 0;
    unsigned long e = ERR_peek_last_error_data(&data, &flags);

    buf[0] = '\0';
    if (e == 0)
        return;
    if (data != NULL && (flags & ERR_TXT_STRING) && *data != '\0') {
        if (strncmp(data, "p11tls: ", 8) == 0)
            data += 8;
        snprintf(buf, len, "%s", data);
    } else {
        ERR_error_string_n(e, buf, len);
    }
}

/* The newest error on this thread's queue already says that t is lost (a retry of
 * the same operation is refused right after the failure that reported it). */
static int queue_reports_loss(const p11_token *t)
{
    const char *data = NULL;
    int flags = 0;
    char prefix[64];
    size_t n;

    if (ERR_peek_last_error_data(&data, &flags) == 0 || data == NULL || !(flags & ERR_TXT_STRING))
        return 0;
    n = (size_t)snprintf(prefix, sizeof(prefix), "p11tls: token '%s' ", t->label);
    return n < sizeof(prefix) && strncmp(data, prefix, n) == 0 &&
           (strncmp(data + n, "lost", 4) == 0 || strncmp(data + n, "unavailable", 11) == 0);
}

/* With t->lock held: the token is lost (once per event; later calls do nothing). */
static void mark_lost_locked(p11_token *t, const char *cause, int reported)
{
    loss_rec *r;

    if (t->broken)
        return;
    t->broken = 1;
    r = &t->loss;
    r->since = r->next_try = p11_now_ms();
    /* lost again right after coming back (a re-open that finds the token but not
     * what p11tls needs in it): the next re-open waits its turn */
    if (t->back_at != 0 && r->next_try < t->back_at + RETRY_MS)
        r->next_try = t->back_at + RETRY_MS;
    snprintf(r->cause, sizeof(r->cause), "%s", cause);
    r->reported = reported;
    r->attempts = r->refused = 0;
    p11_debug("token '%s' lost (%s)", t->label, cause);
}

/* With t->lock held: every pooled session and login is gone (module re-initialised). */
static void reset_pool_locked(p11_token *t)
{
    t->gen++;
    __atomic_add_fetch(&t->epoch, 1, __ATOMIC_RELEASE);
    t->nidle = 0;
    t->nopen = 0;
    t->npending = 0;
    pthread_cond_broadcast(&t->cond);
}

/* With t->lock held, t lost: one attempt to re-open it (re-initialise the module,
 * find the slot; the login follows with the first session). On failure, why says
 * what failed and nothing is left on the error queue. */
static int reopen_locked(p11_token *t, char *why, size_t whylen)
{
    loss_rec *r = &t->loss;
    CK_RV rv;
    int ok;

    r->attempts++;
    r->next_try = p11_now_ms() + RETRY_MS;
    reset_pool_locked(t);
    ERR_set_mark();
    rv = p11_module_reinit(t->mod);
    ok = rv == CKR_OK && p11_token_select_slot(t);
    if (!ok && rv != CKR_OK)
        snprintf(why, whylen, "C_Initialize: %s", p11_ckr_name(rv));
    else if (!ok)
        last_error_text(why, whylen);
    ERR_pop_to_mark();
    if (!ok)
        return 0;
    p11_debug("token '%s' is back after %.2f s (lost: %s; %lu re-open attempt(s), %lu "
              "operation(s) refused meanwhile)",
              t->label, (double)(p11_now_ms() - r->since) / 1000.0, r->cause, r->attempts,
              r->refused);
    t->broken = 0;
    t->back_at = p11_now_ms();
    return 1;
}

/* With t->lock held, t lost: a re-open attempt if one is due. 1: t is back. */
static int reopen_if_due_locked(p11_token *t, char *why, size_t whylen)
{
    why[0] = '\0';
    if (p11_now_ms() < t->loss.next_try)
        return 0;
    return reopen_locked(t, why, whylen);
}

/* With t->lock held, t lost: raises the error of a refused operation. The cause
 * once per event in this process; then a short notice (none when the newest error
 * on this thread's queue already says it). */
static void refuse_locked(p11_token *t, const char *why)
{
    loss_rec *r = &t->loss;

    r->refused++;
    if (!r->reported) {
        r->reported = 1;
        p11_err(ERR_R_OPERATION_FAIL,
                "token '%s' lost (%s)%s%s; operations fail until it is back (re-opened at most "
                "every %d ms)",
                t->label, r->cause, why[0] ? "; re-opening it failed: " : "", why, RETRY_MS);
    } else if (!queue_reports_loss(t)) {
        p11_err(ERR_R_OPERATION_FAIL, "token '%s' unavailable (lost %.1f s ago; retrying)",
                t->label, (double)(p11_now_ms() - r->since) / 1000.0);
    }
}

/* With t->lock held: t is lost, by a call that failed with rv (call may be NULL). */
static void mark_lost_by_locked(p11_token *t, const char *call, CK_RV rv)
{
    char cause[160];

    snprintf(cause, sizeof(cause), "%s%s%s", call != NULL ? call : "", call != NULL ? ": " : "",
             p11_ckr_name(rv));
    mark_lost_locked(t, cause, 0);
}

/* With t->lock held: a call failed with rv, a loss of the device. Marks the event,
 * tries to re-open the token at once; 1 if it is back, else 0 with the error raised. */
static int lose_locked(p11_token *t, const char *call, CK_RV rv)
{
    char why[256];

    if (!t->broken)
        mark_lost_by_locked(t, call, rv);
    if (reopen_if_due_locked(t, why, sizeof(why)))
        return 1;
    refuse_locked(t, why);
    return 0;
}

/* With t->lock held, in a forked child: re-initialise the module and find the slot
 * again. A token can be briefly invisible to a fresh C_Initialize while another
 * process writes its store (SoftHSM2 rewrites it at every login; nginx's workers
 * fork and log in together), so the lookup is retried a few times with a short
 * back-off. On failure the last attempt's errors stay on the queue. */
static int reinit_after_fork_locked(p11_token *t)
{
    CK_RV rv = CKR_OK;

    reset_pool_locked(t);
    for (int attempt = 0; attempt < 6; attempt++) {
        if (attempt > 0) {
            struct timespec ts = {0, 20000000L * attempt}; /* 20, 40, ... 100 ms */
            nanosleep(&ts, NULL);
        }
        ERR_set_mark();
        rv = p11_module_reinit(t->mod);
        if (rv == CKR_OK && p11_token_select_slot(t)) {
            ERR_pop_to_mark();
            return 1;
        }
        if (attempt < 5)
            ERR_pop_to_mark(); /* keep only the last attempt's errors */
        else
            ERR_clear_last_mark();
    }
    {
        char hint[768];
        p11_token_fork_hint(t, hint, sizeof(hint));
        if (rv != CKR_OK)
            p11_err_ckr("C_Initialize", rv, "token '%s': re-initialising the module after fork: %s",
                        t->label, hint);
        else
            p11_err(ERR_R_OPERATION_FAIL, "token '%s' not found after fork: %s", t->label, hint);
    }
    return 0;
}

static int session_get(p11_token *t, p11_session *s);

/* The SIGPIPE guard is held while a session is: once for all its calls. */
int p11_session_get(p11_token *t, p11_session *s)
{
    int ok;
    p11_sigpipe_guard_enter();
    ok = session_get(t, s);
    if (!ok)
        p11_sigpipe_guard_leave();
    return ok;
}

static int session_get(p11_token *t, p11_session *s)
{
    CK_SESSION_HANDLE h;
    CK_RV rv;
    unsigned long gen;
    int need_login, retried = 0, back;
    char why[256];

again:
    pthread_mutex_lock(&t->lock);
    for (;;) {
        if (t->pid != getpid()) {
            /* A forked child: the parent's sessions, login and objects (and any loss
             * it was going through) are not ours. */
            t->pid = getpid();
            t->broken = 0;
            p11_debug("fork detected: re-initialising token '%s'", t->label);
            if (!reinit_after_fork_locked(t)) {
                char cause[160];
                last_error_text(cause, sizeof(cause));
                mark_lost_locked(t, cause, 1); /* the errors raised are the report */
                pthread_mutex_unlock(&t->lock);
                return 0;
            }
        } else if (t->broken && !reopen_if_due_locked(t, why, sizeof(why))) {
            refuse_locked(t, why);
            pthread_mutex_unlock(&t->lock);
            return 0;
        }
        if (t->nidle > 0 || t->nopen < t->max_sessions)
            break;
        pthread_cond_wait(&t->cond, &t->lock);
    }
    s->tok = t;
    s->fl = t->fl;
    s->epoch = __atomic_load_n(&t->epoch, __ATOMIC_ACQUIRE);
    s->gen = t->gen;
    if (t->nidle > 0) {
        int pending = t->npending > 0;
        s->h = t->idle[--t->nidle];
        pthread_mutex_unlock(&t->lock);
        if (pending)
            p11_destroy_pending(s);
        p11_first_failed_call = NULL;
        return 1;
    }
    t->nopen++;
    gen = t->gen;
    need_login = t->login_gen != gen;
    pthread_mutex_unlock(&t->lock);

    rv = P11_CALL(t->fl, C_OpenSession, t->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                  &h);
    if (rv == CKR_OK && need_login) {
        rv = p11_token_login(t, h);
        if (rv != CKR_OK) {
            (void)P11_CALL(t->fl, C_CloseSession, h);
            pthread_mutex_lock(&t->lock);
            back = -1;
            if (t->gen == gen) {
                t->nopen--;
                /* (SoftHSM2: a store read while another process rewrote it can leave
                 * this initialisation's view of the token without its user PIN, for
                 * good; a fresh initialisation reads it again: handled as a loss) */
                if (rv_is_device_loss(rv) || rv == CKR_USER_PIN_NOT_INITIALIZED)
                    back = lose_locked(t, "C_Login", rv);
            }
            pthread_cond_signal(&t->cond);
            pthread_mutex_unlock(&t->lock);
            if (back == 1 && !retried++)
                goto again;
            if (back != 0) /* not a loss, or lost again right after re-opening */
                p11_token_login_error(t, rv);
            return 0;
        }
        pthread_mutex_lock(&t->lock);
        if (t->gen == gen)
            t->login_gen = gen;
        pthread_mutex_unlock(&t->lock);
    }
    if (rv != CKR_OK) {
        pthread_mutex_lock(&t->lock);
        back = -1;
        if (t->gen == gen) {
            t->nopen--;
            if (rv_is_device_loss(rv))
                back = lose_locked(t, "C_OpenSession", rv);
        }
        pthread_cond_signal(&t->cond);
        pthread_mutex_unlock(&t->lock);
        if (back == 1 && !retried++)
            goto again;
        if (back != 0) /* not a loss, or lost again right after re-opening */
            p11_err_ckr("C_OpenSession", rv, "token '%s'", t->label);
        return 0;
    }
    s->h = h;
    p11_first_failed_call = NULL;
    return 1;
}

void p11_session_put(p11_session *s, CK_RV last_rv)
{
    p11_token *t = s->tok;

    if (t == NULL)
        return;
    if (last_rv == CKR_USER_NOT_LOGGED_IN)
        (void)p11_token_login(t, s->h); /* a failure shows on the next operation */
    pthread_mutex_lock(&t->lock);
    if (s->gen != t->gen || t->pid != getpid()) {
        /* From before a re-initialisation: that session no longer exists. */
    } else if (p11_rv_is_session_loss(last_rv) || last_rv == CKR_OPERATION_ACTIVE) {
        /* (A session stuck with an operation p11tls cannot end is replaced.) */
        /* Never handed out again. Closed (a session the token still knows would
         * otherwise keep its objects alive, unreachable); its objects are gone and
         * forgotten. A device loss forgets every object (new epoch). */
        t->nopen--;
        (void)P11_CALL(t->fl, C_CloseSession, s->h);
        p11_registry_forget_session(t->pms, s->h);
        p11_registry_forget_session(t->ms, s->h);
        for (unsigned i = 0; i < t->npending;) /* gone with their session */
            if (t->pending[i].owner == s->h)
                t->pending[i] = t->pending[--t->npending];
            else
                i++;
        if (rv_is_device_loss(last_rv)) {
            /* The operation failed; the token is re-opened now if it can be, else
             * the loss is reported (once per event) with the caller's own error. A
             * module finalised by someone else in this process is re-initialised on
             * next use, not here (that would undo a deliberate C_Finalize). */
            const char *call = p11_first_failed_rv == last_rv ? p11_first_failed_call : NULL;
            __atomic_add_fetch(&t->epoch, 1, __ATOMIC_RELEASE);
            if (last_rv == CKR_CRYPTOKI_NOT_INITIALIZED)
                mark_lost_by_locked(t, call, last_rv);
            else
                (void)lose_locked(t, call, last_rv);
        }
    } else {
        t->idle[t->nidle++] = s->h;
    }
    pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->lock);
    s->tok = NULL;
    p11_sigpipe_guard_leave();
}

int p11_token_lost(p11_token *t, char *cause, size_t len, long long *since_ms)
{
    int lost;
    pthread_mutex_lock(&t->lock);
    lost = t->broken && t->pid == getpid();
    if (lost && cause != NULL)
        snprintf(cause, len, "%s", t->loss.cause);
    if (lost && since_ms != NULL)
        *since_ms = t->loss.since;
    pthread_mutex_unlock(&t->lock);
    return lost;
}

void p11_token_mark_absent(p11_token *t, const char *cause)
{
    pthread_mutex_lock(&t->lock);
    mark_lost_locked(t, cause, 0);
    pthread_mutex_unlock(&t->lock);
}
