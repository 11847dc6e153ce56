/* session.c - the session pool: bounded, thread-safe, reusing logged-in
 * sessions. It is also where fork and token loss are noticed and recovered:
 * a child process re-initialises the module and logs in again before its
 * first token use; a lost session or device is dropped, never handed out
 * again, and the token is re-initialised on next use (at most once a second). */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/proverr.h>
#include "internal.h"

static int rv_is_device_loss(CK_RV rv)
{
    return rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT || rv == CKR_DEVICE_ERROR ||
           rv == CKR_CRYPTOKI_NOT_INITIALIZED || rv == CKR_TOKEN_NOT_RECOGNIZED;
}

int p11_rv_is_session_loss(CK_RV rv)
{
    return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED || rv_is_device_loss(rv);
}

/* With t->lock held: re-initialise the module and find the slot again. A token
 * can be briefly invisible to a fresh C_Initialize while another process writes
 * its store (SoftHSM2 rewrites it at every login; nginx's workers fork and log in
 * together), so the lookup is retried a few times with a short back-off. */
static int recover_locked(p11_token *t, int after_fork)
{
    CK_RV rv = CKR_OK;
    time_t now = time(NULL);

    if (!after_fork && now == t->last_recovery) {
        p11_err(ERR_R_OPERATION_FAIL, "token '%s' is unavailable (recovery pending)", t->label);
        return 0;
    }
    if (!after_fork)
        t->last_recovery = now;
    t->gen++;
    __atomic_add_fetch(&t->epoch, 1, __ATOMIC_RELEASE);
    t->nidle = 0;
    t->nopen = 0;
    t->npending = 0;
    for (int attempt = 0; attempt < 6; attempt++) {
        if (attempt > 0) {
            struct timespec ts = {0, 20000000L * attempt}; /* 20, 40, ... 100 ms */
            nanosleep(&ts, NULL);
        }
        ERR_set_mark();
        rv = p11_module_reinit(t->mod);
        if (rv == CKR_OK && p11_token_select_slot(t)) {
            ERR_pop_to_mark();
            if (t->broken)
                p11_debug("token '%s' is back", t->label);
            t->broken = 0;
            return 1;
        }
        if (attempt < 5)
            ERR_pop_to_mark(); /* keep only the last attempt's errors */
        else
            ERR_clear_last_mark();
    }
    if (rv != CKR_OK)
        p11_err_ckr("C_Initialize", rv, "token '%s': re-initialising after %s", t->label,
                    after_fork ? "fork" : "token loss");
    return 0;
}

int p11_session_get(p11_token *t, p11_session *s)
{
    CK_SESSION_HANDLE h;
    CK_RV rv;
    unsigned long gen;
    int need_login;

    pthread_mutex_lock(&t->lock);
    if (t->pid != getpid()) {
        /* A forked child: the parent's sessions, login and objects are not ours. */
        t->pid = getpid();
        p11_debug("fork detected: re-initialising token '%s'", t->label);
        if (!recover_locked(t, 1)) {
            t->broken = 1;
            pthread_mutex_unlock(&t->lock);
            return 0;
        }
    } else if (t->broken && !recover_locked(t, 0)) {
        pthread_mutex_unlock(&t->lock);
        return 0;
    }
    while (t->nidle == 0 && t->nopen >= t->max_sessions)
        pthread_cond_wait(&t->cond, &t->lock);
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
            if (t->gen == gen)
                t->nopen--;
            pthread_cond_signal(&t->cond);
            pthread_mutex_unlock(&t->lock);
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
        if (t->gen == gen) {
            t->nopen--;
            if (rv_is_device_loss(rv) && !t->broken) {
                t->broken = 1;
                p11_debug("token '%s' lost (%s)", t->label, p11_ckr_name(rv));
            }
        }
        pthread_cond_signal(&t->cond);
        pthread_mutex_unlock(&t->lock);
        p11_err_ckr("C_OpenSession", rv, "token '%s'", t->label);
        return 0;
    }
    s->h = h;
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
            __atomic_add_fetch(&t->epoch, 1, __ATOMIC_RELEASE);
            if (!t->broken)
                p11_debug("token '%s' lost (%s)", t->label, p11_ckr_name(last_rv));
            t->broken = 1;
        }
    } else {
        t->idle[t->nidle++] = s->h;
    }
    pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->lock);
    s->tok = NULL;
}
