/* pool.c - several tokens used as one: the layer between the provider and the
 * tokens. A single token is a pool of one (the routing below then costs a few
 * loads and no token call).
 *
 * Routing. An operation that is given a handle goes to the member whose tables hold
 * it (P11_HELD_*): a pre-master or ECDH secret and a handshake-only TLS 1.3 secret
 * exist in one member only, so a handshake stays on the member that started it,
 * with no connection state. An operation that starts something (an RSA decryption
 * or signature, a key share, a master secret from bytes, a PRF on a handle no member
 * has cached) goes to the usable member with the fewest operations in flight in
 * this process, ties in turn (round robin). Handles other than those resolve on any
 * member: the members share the handle key (checked at opening), so a session made
 * on one member resumes on another, in any process with the same configuration.
 *
 * Failover. A member is lost when a call says its device or session went away (the
 * call layer's loss handling, session.c): it is left out at once. The operation is
 * retried on another member unless it was bound to the lost one (it was given an
 * object only that member had: the handshake then fails, with the cause). A thread
 * of this process probes the lost members every probe interval (a session, a login
 * and the handle key's lookup) and they are used again as soon as they answer.
 *
 * Levels. A member below the configured minimum is never used; the pool offers what
 * every member in use offers (caps), and its level now is its lowest usable member's. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/proverr.h>
#include "pool.h"

/* ------------------------------------------------------------- members */

static int is_late(p11_pool *p, unsigned i)
{
    return __atomic_load_n(&p->m[i].late, __ATOMIC_ACQUIRE);
}

static int usable(p11_pool *p, unsigned i)
{
    return !p->m[i].below && !is_late(p, i) && !p11_token_lost(p->m[i].t, NULL, 0, NULL);
}

/* A member is never used again (in this process): why, for the status and the log. */
static void refuse(p11_pool *p, unsigned i, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void refuse(p11_pool *p, unsigned i, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->m[i].why, sizeof(p->m[i].why), fmt, ap);
    va_end(ap);
    p->m[i].below = 2;
    p11_debug("pool: member %s (token '%s') refused: %s", p->m[i].name, p11_token_label(p->m[i].t),
              p->m[i].why);
}

/* A member not reached at start: when its token answers, the checks the others passed
 * at start (level, handle key and its fingerprint, the server keys loaded since), then
 * in use. Leaves it late while its token does not answer. */
static void admit(p11_pool *p, unsigned i)
{
    struct member *m = &p->m[i];
    const p11_caps *c;
    int refused = 0, ok = 1;

    ERR_set_mark();
    if (!p11_token_complete(m->t)) {
        ERR_pop_to_mark();
        return;
    }
    c = p11_token_caps(m->t);
    if (c->level < p->min) {
        m->below = 1;
        ERR_pop_to_mark();
        p11_debug("pool: member %s (token '%s') reached: below min-assurance, not used", m->name,
                  p11_token_label(m->t));
        return;
    }
    if (!p11_tls_prepare(m->t)) {
        ok = 0;
        if (!p11_token_lost(m->t, NULL, 0, NULL))
            refuse(p, i, "its handle key is missing (run p11tls-tool provision)");
    } else if (p->have_fp && c->level != P11_LEVEL_NONE) {
        unsigned char fp[16];
        if (!p11_tls_handle_key_fingerprint(m->t, fp)) {
            ok = 0;
        } else if (memcmp(fp, p->fp, sizeof(fp)) != 0) {
            ok = 0;
            refuse(p, i, "it holds another handle key than the members in use");
        }
    }
    pthread_mutex_lock(&p->keys_lock);
    for (p11_pool_key *k = p->keys; ok && k != NULL; k = k->next)
        if (!p11_pool_key_admit(k, i, &refused)) {
            ok = 0;
            if (refused)
                refuse(p, i, "it lacks the server key, or holds another under its URI");
        }
    pthread_mutex_unlock(&p->keys_lock);
    ERR_pop_to_mark();
    if (ok) {
        __atomic_store_n(&m->late, 0, __ATOMIC_RELEASE);
        p11_debug("pool: member %s (token '%s') reached after start (%s): in use", m->name,
                  p11_token_label(m->t), p11_level_name(c->level));
    }
}

static void *probe_main(void *arg);

/* Starts this process's probe thread if it has none (a forked child has none). */
static void probe_start(p11_pool *p)
{
    pthread_mutex_lock(&p->lock);
    if (p->probe_pid != getpid() && !p->stop) {
        pthread_attr_t a;
        pthread_attr_init(&a);
        if (pthread_create(&p->probe, &a, probe_main, p) == 0)
            p->probe_pid = getpid();
        pthread_attr_destroy(&a);
    }
    pthread_mutex_unlock(&p->lock);
}

/* The probe: every probe interval, each lost member gets one attempt (its session
 * layer re-opens it: module, slot, login) and the handle key is looked up. It stops
 * when no member is lost (and is started again by the next loss). */
static void *probe_main(void *arg)
{
    p11_pool *p = arg;
    for (;;) {
        struct timespec ts;
        unsigned lost = 0;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += (long)(p->probe_ms % 1000) * 1000000L;
        ts.tv_sec += p->probe_ms / 1000 + ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_mutex_lock(&p->lock);
        while (!p->stop && pthread_cond_timedwait(&p->cond, &p->lock, &ts) == 0)
            ;
        if (p->stop) {
            pthread_mutex_unlock(&p->lock);
            return NULL;
        }
        pthread_mutex_unlock(&p->lock);
        for (unsigned i = 0; i < p->n; i++) {
            p11_token *t = p->m[i].t;
            if (!p->m[i].below && is_late(p, i)) {
                admit(p, i);
                lost += is_late(p, i) && !p->m[i].below;
                continue;
            }
            if (p->m[i].below || !p11_token_lost(t, NULL, 0, NULL))
                continue;
            ERR_set_mark();
            (void)p11_tls_handle_key_present(t); /* re-opens the token when it answers */
            ERR_pop_to_mark();
            if (p11_token_lost(t, NULL, 0, NULL))
                lost++;
            else
                p11_debug("pool: member %s (token '%s') answers again: back in use", p->m[i].name,
                          p11_token_label(t));
        }
        if (lost == 0) {
            pthread_mutex_lock(&p->lock);
            /* (detached: the next loss starts a new one) */
            pthread_detach(p->probe);
            p->probe_pid = 0;
            pthread_mutex_unlock(&p->lock);
            return NULL;
        }
    }
}

/* The usable member (having curve c, when c >= 0) with the fewest operations in
 * flight, not in tried; ties in turn. -1: none. */
static int pick(p11_pool *p, unsigned tried, int curve)
{
    unsigned start, best_load = ~0u;
    int best = -1, lost = 0;

    if (p->n == 1)
        return (tried & 1u) ? -1 : 0;
    start = __atomic_fetch_add(&p->turn, 1, __ATOMIC_RELAXED);
    for (unsigned k = 0; k < p->n; k++) {
        unsigned i = (start + k) % p->n, load;
        if ((tried & (1u << i)) || p->m[i].below)
            continue;
        if (is_late(p, i)) {
            lost = 1;
            continue;
        }
        if (curve >= 0 && !p11_token_caps(p->m[i].t)->ecdh[curve])
            continue;
        if (p11_token_lost(p->m[i].t, NULL, 0, NULL)) {
            lost = 1;
            continue;
        }
        load = __atomic_load_n(&p->m[i].inflight, __ATOMIC_RELAXED);
        if (load < best_load) {
            best_load = load;
            best = (int)i;
        }
    }
    if (lost)
        probe_start(p);
    return best;
}

/* The member whose tables hold handle h (n bytes), and how (P11_HELD_*): -1 if none. */
int p11_pool_holder(p11_pool *p, const unsigned char *h, size_t n, int *how)
{
    *how = 0;
    if (h == NULL || p->n == 1)
        return p->n == 1 && h != NULL ? 0 : -1;
    for (unsigned i = 0; i < p->n; i++) {
        p11_token *t = p->m[i].t;
        int x;
        if (p->m[i].below)
            continue;
        x = p11_tls_held(t, h, n);
        if (x == 0)
            x = p11_ecdh_held(t, h, n);
        if (x == 0)
            x = p11_tls13_held(t, h, n);
        if (x != 0) {
            *how = x;
            return (int)i;
        }
    }
    return -1;
}

/* One operation: fn on member `bound` (>= 0: it holds what the operation was given,
 * P11_HELD_ONLY: no retry elsewhere), or on `prefer` (cached there) or a picked one;
 * retried on another member when the member was lost during the call. */
int p11_pool_run(p11_pool *p, const char *what, int bound, int prefer, int curve, p11_pool_op fn,
                 void *arg)
{
    unsigned tried = 0;
    char cause[160];

    for (unsigned attempt = 0; attempt <= p->n; attempt++) {
        int i = bound >= 0 ? bound
                : prefer >= 0 && !(tried & (1u << prefer)) && usable(p, (unsigned)prefer)
                    ? prefer
                    : pick(p, tried, curve);
        struct member *m;
        unsigned long ep;
        int ok;

        if (i < 0)
            break;
        m = &p->m[i];
        ep = p11_token_epoch(m->t);
        if (p->n > 1)
            ERR_set_mark();
        __atomic_add_fetch(&m->inflight, 1, __ATOMIC_RELAXED);
        ok = fn(m->t, (unsigned)i, arg);
        __atomic_sub_fetch(&m->inflight, 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&m->ops, 1, __ATOMIC_RELAXED);
        if (p->n == 1)
            return ok;
        if (ok) {
            ERR_clear_last_mark();
            return 1;
        }
        if (p11_token_epoch(m->t) == ep && !p11_token_lost(m->t, NULL, 0, NULL)) {
            ERR_clear_last_mark(); /* not a loss: the operation's own failure */
            return 0;
        }
        if (p11_token_lost(m->t, cause, sizeof(cause), NULL))
            probe_start(p);
        if (bound >= 0) {
            ERR_clear_last_mark();
            p11_err(ERR_R_OPERATION_FAIL,
                    "pool: %s failed: member %s (token '%s') was lost while this handshake "
                    "depended on a secret only it held",
                    what, m->name, p11_token_label(m->t));
            return 0;
        }
        /* lost (or re-opened, its objects gone) during the call: the next member */
        ERR_pop_to_mark();
        __atomic_add_fetch(&m->failover, 1, __ATOMIC_RELAXED);
        p11_debug("pool: %s: member %s (token '%s') lost; trying another member", what, m->name,
                  p11_token_label(m->t));
        tried |= 1u << i;
    }
    {
        char buf[512];
        size_t off = 0;
        buf[0] = '\0';
        for (unsigned i = 0; i < p->n && off < sizeof(buf); i++) {
            char line[256];
            (void)p11_pool_member(p, i, line, sizeof(line));
            off += (size_t)snprintf(buf + off, sizeof(buf) - off, "%s%s", off ? "; " : "", line);
        }
        p11_err(ERR_R_OPERATION_FAIL, "pool: %s: no member is usable (%s)", what, buf);
    }
    return 0;
}

/* -------------------------------------------------------------- opening */

static void combine_caps(p11_pool *p)
{
    int first = 1;
    for (unsigned i = 0; i < p->n; i++) {
        const p11_caps *c = p11_token_caps(p->m[i].t);
        if (p->m[i].below || p->m[i].late)
            continue;
        if (first) {
            p->caps = *c;
            first = 0;
            continue;
        }
        if (c->level < p->caps.level) {
            p->caps.level = c->level;
            p->caps.ms = c->ms;
            snprintf(p->caps.missing, sizeof(p->caps.missing), "%s", c->missing);
        }
        if (c->level13 < p->caps.level13) {
            p->caps.level13 = c->level13;
            p->caps.tls13 = c->tls13;
        }
        for (int k = 0; k < P11_CURVE_N; k++)
            if (!c->ecdh[k]) {
                p->caps.ecdh[k] = 0;
                p->caps.ecdhe_why = c->ecdhe_why;
            }
    }
}

p11_pool *p11_pool_open(const p11_pool_member_cfg *mc, unsigned n, p11_level min, unsigned probe_ms)
{
    p11_pool *p;
    unsigned char fp0[16];
    int have_fp = 0, in_use = 0, nlate = 0;
    size_t off;

    if (n == 0 || n > P11_POOL_MAX) {
        p11_err(PROV_R_INVALID_CONFIG_DATA, "pool: %u members (1 to %d)", n, P11_POOL_MAX);
        return NULL;
    }
    if ((p = calloc(1, sizeof(*p))) == NULL)
        return NULL;
    pthread_mutex_init(&p->lock, NULL);
    pthread_mutex_init(&p->keys_lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    p->min = min;
    p->probe_ms = probe_ms ? probe_ms : 1000;
    for (unsigned i = 0; i < n; i++) {
        struct member *m = &p->m[i];
        snprintf(m->name, sizeof(m->name), "%s", mc[i].name ? mc[i].name : "token");
        {
            /* in a pool a member whose module shows no token at all is not reached
             * yet (its device or p11-kit server is down): the pool starts without it */
            p11_token_cfg cfg = mc[i].cfg;
            cfg.absent_ok = n > 1;
            m->t = p11_token_open(&cfg);
        }
        if (m->t == NULL) {
            if (n > 1)
                p11_err(PROV_R_INVALID_CONFIG_DATA, "pool member %s: cannot be used (above)",
                        m->name);
            goto fail;
        }
        p->n = i + 1;
        for (unsigned j = 0; j < i; j++)
            if (p11_token_functions(p->m[j].t) == p11_token_functions(m->t)) {
                p11_err(PROV_R_INVALID_CONFIG_DATA,
                        "pool members %s and %s are in one module instance (token '%s' and "
                        "'%s'): a loss of one would re-initialise the other; give each "
                        "member its own module (for p11-kit servers: a p11-kit module with "
                        "'remote:' per server)",
                        p->m[j].name, m->name, p11_token_label(p->m[j].t), p11_token_label(m->t));
                goto fail;
            }
        if (p11_token_lost(m->t, NULL, 0, NULL)) {
            m->late = 1;
            nlate++;
            p11_debug("pool: member %s (token '%s') not reached at start: probed until it is",
                      m->name, p11_token_label(m->t));
            continue;
        }
        m->below = p11_token_caps(m->t)->level < min;
        if (m->below) {
            p11_debug("pool: member %s (token '%s') gives %s, below min-assurance %s: not used",
                      m->name, p11_token_label(m->t), p11_level_name(p11_token_caps(m->t)->level),
                      p11_level_name(min));
            continue;
        }
        in_use++;
        if (!p11_tls_prepare(m->t)) {
            if (n > 1)
                p11_err(PROV_R_INVALID_CONFIG_DATA, "pool member %s (token '%s')", m->name,
                        p11_token_label(m->t));
            goto fail;
        }
        if (n > 1 && p11_token_caps(m->t)->level != P11_LEVEL_NONE) {
            unsigned char fp[16];
            if (!p11_tls_handle_key_fingerprint(m->t, fp)) {
                p11_err(PROV_R_INVALID_CONFIG_DATA,
                        "pool member %s (token '%s'): its handle key's fingerprint cannot be "
                        "computed",
                        m->name, p11_token_label(m->t));
                goto fail;
            }
            if (have_fp && memcmp(fp, fp0, sizeof(fp)) != 0) {
                p11_err(PROV_R_INVALID_CONFIG_DATA,
                        "pool member %s (token '%s') holds another handle key than member %s: "
                        "a handle made on one would not resolve on the other; provision "
                        "every member from one backup (p11tls-tool provision --key-backup; "
                        "p11tls-tool info prints the fingerprints)",
                        m->name, p11_token_label(m->t), p->m[0].name);
                goto fail;
            }
            memcpy(fp0, fp, sizeof(fp));
            memcpy(p->fp, fp, sizeof(fp));
            have_fp = p->have_fp = 1;
        }
    }
    if (in_use == 0 && nlate > 0) {
        p11_err(PROV_R_INVALID_CONFIG_DATA,
                "pool: no member could be reached at start (%d show no token%s); p11tls "
                "starts with one member at least",
                nlate, nlate == (int)n ? "" : ", the others are below min-assurance");
        goto fail;
    }
    if (in_use == 0) {
        const p11_caps *c = p11_token_caps(p->m[0].t);
        if (n == 1)
            p11_err(PROV_R_INVALID_CONFIG_DATA,
                    "token '%s' gives assurance '%s' but 'min-assurance' is '%s'; the "
                    "token lacks: %s",
                    p11_token_label(p->m[0].t), p11_level_name(c->level), p11_level_name(min),
                    c->missing);
        else
            p11_err(PROV_R_INVALID_CONFIG_DATA,
                    "pool: no member gives 'min-assurance' %s (member %s: %s, it lacks: %s)",
                    p11_level_name(min), p->m[0].name, p11_level_name(c->level), c->missing);
        goto fail;
    }
    combine_caps(p);
    if (n == 1) {
        snprintf(p->label, sizeof(p->label), "token '%s'", p11_token_label(p->m[0].t));
    } else {
        off = (size_t)snprintf(p->label, sizeof(p->label), "pool of %u tokens (", n);
        for (unsigned i = 0; i < n && off < sizeof(p->label); i++)
            off += (size_t)snprintf(p->label + off, sizeof(p->label) - off, "%s'%s'", i ? ", " : "",
                                    p11_token_label(p->m[i].t));
        if (off < sizeof(p->label))
            snprintf(p->label + off, sizeof(p->label) - off, ")");
    }
    return p;
fail:
    p11_pool_free(p);
    return NULL;
}

void p11_pool_free(p11_pool *p)
{
    if (p == NULL)
        return;
    pthread_mutex_lock(&p->lock);
    p->stop = 1;
    pthread_cond_broadcast(&p->cond);
    if (p->probe_pid == getpid()) {
        pthread_t th = p->probe;
        pthread_mutex_unlock(&p->lock);
        pthread_join(th, NULL);
    } else {
        pthread_mutex_unlock(&p->lock);
    }
    for (unsigned i = 0; i < p->n; i++)
        p11_token_free(p->m[i].t);
    pthread_mutex_destroy(&p->lock);
    pthread_mutex_destroy(&p->keys_lock);
    pthread_cond_destroy(&p->cond);
    free(p);
}

unsigned p11_pool_size(const p11_pool *p)
{
    return p->n;
}

p11_token *p11_pool_token(const p11_pool *p, unsigned i)
{
    return i < p->n ? p->m[i].t : NULL;
}

const char *p11_pool_label(const p11_pool *p)
{
    return p->label;
}

const p11_caps *p11_pool_caps(const p11_pool *p)
{
    return &p->caps;
}

p11_level p11_pool_level_now(p11_pool *p)
{
    p11_level l = P11_LEVEL_SEALED;
    int any = 0;
    for (unsigned i = 0; i < p->n; i++)
        if (usable(p, i)) {
            p11_level x = p11_token_caps(p->m[i].t)->level;
            l = x < l ? x : l;
            any = 1;
        }
    return any ? l : P11_LEVEL_NONE;
}

p11_member_state p11_pool_member(p11_pool *p, unsigned i, char *buf, size_t len)
{
    struct member *m = &p->m[i];
    const p11_caps *c = p11_token_caps(m->t);
    char cause[160];
    long long since = 0;

    if (m->below == 2) {
        snprintf(buf, len, "%s token '%s' (%s): refused: %s", m->name, p11_token_label(m->t),
                 p11_level_name(c->level), m->why);
        return P11_MEMBER_BELOW_MIN;
    }
    if (m->below) {
        snprintf(buf, len, "%s token '%s' (%s): not used, below min-assurance (it lacks: %s)",
                 m->name, p11_token_label(m->t), p11_level_name(c->level), c->missing);
        return P11_MEMBER_BELOW_MIN;
    }
    if (is_late(p, i)) {
        if (!p11_token_lost(m->t, cause, sizeof(cause), &since))
            snprintf(cause, sizeof(cause), "not admitted yet");
        snprintf(buf, len, "%s token '%s': not reached since start (%s), probed every %u ms",
                 m->name, p11_token_label(m->t), cause, p->probe_ms);
        return P11_MEMBER_LOST;
    }
    if (p11_token_lost(m->t, cause, sizeof(cause), &since)) {
        snprintf(buf, len, "%s token '%s' (%s): lost %.1f s ago (%s), probed every %u ms", m->name,
                 p11_token_label(m->t), p11_level_name(c->level),
                 (double)(p11_now_ms() - since) / 1000.0, cause, p->probe_ms);
        return P11_MEMBER_LOST;
    }
    snprintf(buf, len, "%s token '%s' (%s): in use, %lu operations", m->name, p11_token_label(m->t),
             p11_level_name(c->level), __atomic_load_n(&m->ops, __ATOMIC_RELAXED));
    return P11_MEMBER_IN_USE;
}

unsigned long p11_pool_member_ops(p11_pool *p, unsigned i)
{
    return i < p->n ? __atomic_load_n(&p->m[i].ops, __ATOMIC_RELAXED) : 0;
}

int p11_pool_tls13_known(p11_pool *p, const unsigned char *key, size_t n)
{
    for (unsigned i = 0; i < p->n; i++)
        if (!p->m[i].below && p11_tls13_known(p->m[i].t, key, n))
            return 1;
    return 0;
}
