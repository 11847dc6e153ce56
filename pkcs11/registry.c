/* registry.c - the process-local map from 48-byte handles (what libssl holds in
 * place of a secret) to the token objects behind them. Bounded, evicting by age
 * and by count; entries in use are pinned by a reference count so an eviction
 * never destroys an object another thread is using. Objects of an older epoch
 * (before a fork or a token loss) are forgotten, never destroyed: their handle
 * numbers may belong to someone else now.
 *
 * Generations (the master-secret cache): objects are made in a few sessions of the
 * registry's own, each taking a bounded share of the cache. When the newest is
 * full, the oldest is retired: its entries are forgotten and its session closed,
 * which ends every object in it at once. So evicting costs no C_DestroyObject per
 * handshake, and an object made and not kept (a master secret that failed its
 * checks) needs no call either: it ends with its generation. */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/crypto.h>
#include "internal.h"

typedef struct node {
    unsigned char key[48];
    p11_reg_value v;
    int gen; /* the generation its objects live in; -1: destroyed one by one */
    unsigned long epoch;
    CK_SESSION_HANDLE owner; /* the session that created the objects: they die with it */
    time_t born;
    unsigned refs; /* 1 for being in the map, +1 per pin */
    int linked;
    struct node *hnext;           /* hash chain */
    struct node *older, *younger; /* age list */
} node;

#define GENS 8       /* generations sharing the cache at most */
#define GEN_SLOTS 12 /* + retired ones still pinned by a user */
enum { GEN_FREE, GEN_OPEN, GEN_FULL, GEN_RETIRED };
struct gen {
    int state;
    int closed;            /* its session is closed or gone; waits for its last node */
    CK_SESSION_HANDLE h;   /* where its objects live */
    unsigned long tokgen;  /* the token's generation (module initialisation) it belongs to */
    unsigned long epoch;   /* object epoch when opened */
    unsigned long objects; /* made in it and alive (kept or not) */
    unsigned long refs;    /* nodes and makers that point at it */
    unsigned long seq;     /* age */
    time_t born;
};

struct p11_registry {
    pthread_mutex_t lock;
    node **buckets;
    size_t nbuckets;
    node *oldest, *youngest;
    unsigned long count, max;
    unsigned lifetime;
    /* generations (p11_registry_new with own_sessions), guarded by lock */
    int use_gens;
    pthread_mutex_t make_lock; /* one maker at a time in the open generation's session */
    struct gen gens[GEN_SLOTS];
    int ngens, cur;
    unsigned long per_gen, seq;
    time_t gen_lifetime; /* a generation takes new objects this long at most */
};

static size_t bucket_of(const p11_registry *r, const unsigned char key[48])
{
    /* Keys are uniformly random (random bytes or cipher text): any 8 bytes hash well. */
    uint64_t h;
    memcpy(&h, key + 8, sizeof(h));
    return (size_t)(h % r->nbuckets);
}

p11_registry *p11_registry_new(unsigned max_entries, unsigned lifetime, int own_sessions)
{
    p11_registry *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->max = max_entries ? max_entries : 4096;
    r->lifetime = lifetime ? lifetime : 7200;
    r->nbuckets = r->max * 2 + 1;
    r->buckets = calloc(r->nbuckets, sizeof(*r->buckets));
    if (r->buckets == NULL) {
        free(r);
        return NULL;
    }
    pthread_mutex_init(&r->lock, NULL);
    pthread_mutex_init(&r->make_lock, NULL);
    r->use_gens = own_sessions;
    r->ngens = r->max < GENS ? (int)r->max : GENS;
    r->per_gen = r->max / (unsigned long)r->ngens;
    r->gen_lifetime = r->lifetime / (unsigned)r->ngens > 0 ? r->lifetime / (unsigned)r->ngens : 1;
    r->cur = -1;
    return r;
}

static void node_free(node *n)
{
    OPENSSL_cleanse(n, sizeof(*n));
    free(n);
}

void p11_registry_free(p11_registry *r)
{
    node *n, *next;
    if (r == NULL)
        return;
    for (n = r->oldest; n != NULL; n = next) {
        next = n->younger;
        node_free(n);
    }
    free(r->buckets);
    pthread_mutex_destroy(&r->lock);
    pthread_mutex_destroy(&r->make_lock);
    free(r);
}

static void unlink_node(p11_registry *r, node *n)
{
    node **pp = &r->buckets[bucket_of(r, n->key)];
    while (*pp != NULL && *pp != n)
        pp = &(*pp)->hnext;
    if (*pp == n)
        *pp = n->hnext;
    if (n->older)
        n->older->younger = n->younger;
    else
        r->oldest = n->younger;
    if (n->younger)
        n->younger->older = n->older;
    else
        r->youngest = n->older;
    n->hnext = n->older = n->younger = NULL;
    n->linked = 0;
    r->count--;
}

/* Objects to destroy and sessions to close once the lock is dropped. */
typedef struct {
    CK_OBJECT_HANDLE h[16];
    CK_SESSION_HANDLE owner[16];
    int n;
    node *free_later[8];
    int nf;
    CK_SESSION_HANDLE close[GEN_SLOTS];
    unsigned long close_tokgen[GEN_SLOTS]; /* closed only in that module initialisation */
    int nc;
} doomed;

static void close_later(doomed *d, const struct gen *g)
{
    if (d->nc < GEN_SLOTS) {
        d->close_tokgen[d->nc] = g->tokgen;
        d->close[d->nc++] = g->h;
    }
}

/* With r->lock held: one reference to generation i less. A retired generation
 * whose last reference went is closed (its objects end with its session). */
static void gen_unref(p11_registry *r, int i, doomed *d)
{
    struct gen *g = &r->gens[i];
    if (--g->refs > 0 || g->state != GEN_RETIRED)
        return;
    if (!g->closed)
        close_later(d, g);
    memset(g, 0, sizeof(*g)); /* GEN_FREE */
}

static void drop_ref(p11_registry *r, node *n, unsigned long cur_epoch, doomed *d)
{
    if (--n->refs > 0)
        return;
    if (n->gen >= 0) {
        gen_unref(r, n->gen, d); /* its objects end with the generation */
    } else if (n->epoch == cur_epoch && !(n->v.flags & P11_REG_SHARED)) {
        for (int i = 0; i < 2; i++)
            if (n->v.obj[i] != CK_INVALID_HANDLE && d->n < 16) {
                d->owner[d->n] = n->owner;
                d->h[d->n++] = n->v.obj[i];
            }
    }
    if (d->nf < 8)
        d->free_later[d->nf++] = n;
    else
        node_free(n);
}

static void destroy_doomed(p11_session *s, doomed *d)
{
    for (int i = 0; i < d->n; i++)
        if (s != NULL)
            (void)p11_destroy_owned(s, d->h[i], d->owner[i]);
    /* (a session of an older module initialisation is gone: its number may be
     * someone else's now) */
    for (int i = 0; i < d->nc; i++)
        if (s != NULL && d->close_tokgen[i] == s->gen)
            (void)P11_CALL(s->fl, C_CloseSession, d->close[i]);
    for (int i = 0; i < d->nf; i++)
        node_free(d->free_later[i]);
}

/* Links a new node: 1; 0: out of memory; -1: its generation was retired meanwhile
 * (the maker's reference is dropped). */
static int put_node(p11_registry *r, p11_session *s, const unsigned char key[48],
                    const p11_reg_value *v, int gen, CK_SESSION_HANDLE owner)
{
    node *n = calloc(1, sizeof(*n));
    doomed d = {.n = 0, .nf = 0, .nc = 0};
    time_t now = time(NULL);
    size_t b;

    if (n == NULL)
        return 0;
    memcpy(n->key, key, 48);
    n->v = *v;
    n->gen = gen;
    n->epoch = s->epoch;
    n->owner = owner;
    n->born = now;
    n->refs = 1;
    n->linked = 1;

    pthread_mutex_lock(&r->lock);
    if (gen >= 0 && r->gens[gen].state == GEN_RETIRED) {
        /* retired meanwhile (its session was lost): not kept */
        gen_unref(r, gen, &d);
        pthread_mutex_unlock(&r->lock);
        destroy_doomed(s, &d);
        node_free(n);
        return -1;
    }
    if (gen >= 0) /* the maker's reference becomes the node's */
        n->epoch = r->gens[gen].epoch;
    /* Evict what is too old, then the oldest while full: a few per insert at most. */
    for (int i = 0; i < 4 && r->oldest != NULL; i++) {
        node *o = r->oldest;
        if (r->count < r->max && now - o->born < (time_t)r->lifetime && o->epoch == s->epoch)
            break;
        unlink_node(r, o);
        drop_ref(r, o, s->epoch, &d);
    }
    b = bucket_of(r, key);
    n->hnext = r->buckets[b];
    r->buckets[b] = n;
    n->older = r->youngest;
    if (r->youngest)
        r->youngest->younger = n;
    else
        r->oldest = n;
    r->youngest = n;
    r->count++;
    pthread_mutex_unlock(&r->lock);

    destroy_doomed(s, &d);
    return 1;
}

int p11_registry_put(p11_registry *r, p11_session *s, const unsigned char key[48],
                     const p11_reg_value *v)
{
    return put_node(r, s, key, v, -1, s->h) > 0;
}

/* ------------------------------------------------------------ generations */

/* With r->lock held: generation i takes no more objects; forgets its entries, and
 * closes its session once nothing points at it. closed: the session is already
 * closed or gone (not ours to close). */
static void retire_locked(p11_registry *r, int i, int closed, unsigned long cur_epoch, doomed *d)
{
    struct gen *g = &r->gens[i];
    node *n, *next;

    if (r->cur == i)
        r->cur = -1;
    g->state = GEN_RETIRED;
    g->closed |= closed;
    g->refs++; /* held while its nodes go */
    for (n = r->oldest; n != NULL; n = next) {
        next = n->younger;
        if (n->gen == i) {
            unlink_node(r, n);
            drop_ref(r, n, cur_epoch, d);
        }
    }
    gen_unref(r, i, d);
}

CK_RV p11_registry_make_begin(p11_registry *r, p11_session *s, p11_maker *m)
{
    doomed d = {.n = 0, .nf = 0, .nc = 0};
    time_t now = time(NULL);
    CK_SESSION_HANDLE h;
    CK_RV rv = CKR_OK;
    int i, cur;

    memset(m, 0, sizeof(*m));
    if (!r->use_gens) {
        m->s = *s;
        m->gen = -1;
        return CKR_OK;
    }
    pthread_mutex_lock(&r->make_lock);
    pthread_mutex_lock(&r->lock);
    for (i = 0; i < GEN_SLOTS; i++) {
        struct gen *g = &r->gens[i];
        if (g->state == GEN_FREE || g->state == GEN_RETIRED)
            continue;
        if (g->tokgen != s->gen) /* the module was re-initialised: sessions gone */
            retire_locked(r, i, 1, s->epoch, &d);
        else if (i == r->cur && (g->epoch != s->epoch || g->objects >= r->per_gen ||
                                 now - g->born >= r->gen_lifetime))
            g->state = GEN_FULL, r->cur = -1;
    }
    cur = r->cur;
    pthread_mutex_unlock(&r->lock);
    destroy_doomed(s, &d);

    if (cur < 0) {
        int live = 0, oldest = -1, free_slot = -1;
        rv = P11_CALL(s->fl, C_OpenSession, s->tok->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL,
                      NULL, &h);
        if (rv != CKR_OK) {
            pthread_mutex_unlock(&r->make_lock);
            return rv;
        }
        memset(&d, 0, sizeof(d));
        pthread_mutex_lock(&r->lock);
        /* Room for one more: retire the oldest while ngens are in service. */
        for (;;) {
            live = 0, oldest = -1;
            for (i = 0; i < GEN_SLOTS; i++) {
                struct gen *g = &r->gens[i];
                if (g->state != GEN_OPEN && g->state != GEN_FULL)
                    continue;
                live++;
                if (oldest < 0 || g->seq < r->gens[oldest].seq)
                    oldest = i;
            }
            if (live < r->ngens || oldest < 0)
                break;
            retire_locked(r, oldest, 0, s->epoch, &d);
        }
        for (i = 0; i < GEN_SLOTS && free_slot < 0; i++)
            if (r->gens[i].state == GEN_FREE)
                free_slot = i;
        if (free_slot >= 0) {
            struct gen *g = &r->gens[free_slot];
            memset(g, 0, sizeof(*g));
            g->state = GEN_OPEN;
            g->h = h;
            g->tokgen = s->gen;
            g->epoch = s->epoch;
            g->seq = ++r->seq;
            g->born = now;
            r->cur = cur = free_slot;
        } else {
            /* every slot waits for a user to let go of a retired generation */
            rv = CKR_SESSION_COUNT;
        }
        pthread_mutex_unlock(&r->lock);
        destroy_doomed(s, &d);
        if (rv != CKR_OK) {
            (void)P11_CALL(s->fl, C_CloseSession, h);
            pthread_mutex_unlock(&r->make_lock);
            return rv;
        }
    }
    pthread_mutex_lock(&r->lock);
    m->s = *s;
    m->s.h = r->gens[cur].h;
    m->s.epoch = r->gens[cur].epoch;
    m->gen = cur;
    pthread_mutex_unlock(&r->lock);
    m->locked = 1;
    return CKR_OK;
}

void p11_registry_make_end(p11_registry *r, p11_maker *m, CK_RV rv, unsigned made)
{
    doomed d = {.n = 0, .nf = 0, .nc = 0};
    struct gen *g;

    if (!m->locked)
        return;
    m->locked = 0;
    pthread_mutex_lock(&r->lock);
    g = &r->gens[m->gen];
    if (made > 0) { /* (a failed check may leave an object made) */
        g->objects += made;
        g->refs++; /* until p11_registry_put_made or _drop */
        m->held = 1;
    }
    if (p11_rv_is_session_loss(rv)) {
        /* Closed at once (the token may hand its number to a new session later);
         * its objects are gone with it. */
        if (!g->closed)
            close_later(&d, g);
        g->objects = 0;
        retire_locked(r, m->gen, 1, m->s.epoch, &d);
    }
    pthread_mutex_unlock(&r->lock);
    pthread_mutex_unlock(&r->make_lock);
    destroy_doomed(&m->s, &d);
}

int p11_registry_put_made(p11_registry *r, p11_maker *m, const unsigned char key[48],
                          const p11_reg_value *v)
{
    int ok;
    if (m->gen < 0)
        return p11_registry_put(r, &m->s, key, v);
    if (!m->held)
        return 0;
    ok = put_node(r, &m->s, key, v, m->gen, m->s.h);
    if (ok != 0)
        m->held = 0; /* the node has the reference now, or it was dropped */
    else
        p11_registry_made_drop(r, m);
    return ok > 0;
}

void p11_registry_made_drop(p11_registry *r, p11_maker *m)
{
    doomed d = {.n = 0, .nf = 0, .nc = 0};
    if (!m->held)
        return;
    m->held = 0;
    pthread_mutex_lock(&r->lock);
    gen_unref(r, m->gen, &d);
    pthread_mutex_unlock(&r->lock);
    destroy_doomed(&m->s, &d);
}

void p11_registry_close_all(p11_registry *r, CK_FUNCTION_LIST_PTR fl, unsigned long tokgen)
{
    if (r == NULL)
        return;
    pthread_mutex_lock(&r->lock);
    for (int i = 0; i < GEN_SLOTS; i++) {
        struct gen *g = &r->gens[i];
        if (g->state != GEN_FREE && !g->closed && g->tokgen == tokgen)
            (void)P11_CALL(fl, C_CloseSession, g->h);
        g->closed = 1;
    }
    pthread_mutex_unlock(&r->lock);
}

int p11_registry_get(p11_registry *r, const unsigned char key[48], unsigned long epoch, int take,
                     p11_reg_value *out, void **ref)
{
    node *n;
    int found = 0;
    time_t now = time(NULL);

    *ref = NULL;
    pthread_mutex_lock(&r->lock);
    for (n = r->buckets[bucket_of(r, key)]; n != NULL; n = n->hnext)
        if (CRYPTO_memcmp(n->key, key, 48) == 0)
            break;
    if (n != NULL && n->epoch == epoch && now - n->born < (time_t)r->lifetime) {
        *out = n->v;
        out->owner = n->owner;
        found = 1;
        if (take) {
            unlink_node(r, n);
            if (--n->refs == 0) /* the caller owns the objects now */
                node_free(n);
            else
                memset(n->v.obj, 0, sizeof(n->v.obj)); /* pinned elsewhere: nothing left */
        } else {
            n->refs++;
            *ref = n;
        }
    }
    pthread_mutex_unlock(&r->lock);
    return found;
}

int p11_registry_has(p11_registry *r, const unsigned char key[48], unsigned long epoch)
{
    return p11_registry_flags(r, key, epoch) >= 0;
}

int p11_registry_flags(p11_registry *r, const unsigned char key[48], unsigned long epoch)
{
    node *n;
    int flags = -1;
    time_t now = time(NULL);
    pthread_mutex_lock(&r->lock);
    for (n = r->buckets[bucket_of(r, key)]; n != NULL; n = n->hnext)
        if (CRYPTO_memcmp(n->key, key, 48) == 0)
            break;
    if (n != NULL && n->epoch == epoch && now - n->born < (time_t)r->lifetime)
        flags = (int)n->v.flags;
    pthread_mutex_unlock(&r->lock);
    return flags;
}

void p11_registry_release(p11_registry *r, p11_session *s, void *ref)
{
    doomed d = {.n = 0, .nf = 0, .nc = 0};
    node *n = ref;
    if (n == NULL)
        return;
    pthread_mutex_lock(&r->lock);
    drop_ref(r, n, s->epoch, &d);
    pthread_mutex_unlock(&r->lock);
    destroy_doomed(s, &d);
}

unsigned long p11_registry_count(p11_registry *r)
{
    unsigned long c;
    pthread_mutex_lock(&r->lock);
    c = r->count;
    pthread_mutex_unlock(&r->lock);
    return c;
}

void p11_registry_forget_session(p11_registry *r, CK_SESSION_HANDLE h)
{
    node *n, *next;
    doomed d = {.n = 0, .nf = 0, .nc = 0};
    pthread_mutex_lock(&r->lock);
    for (n = r->oldest; n != NULL; n = next) {
        next = n->younger;
        if (n->owner != h || n->gen >= 0) /* (generations' sessions are not pool sessions) */
            continue;
        unlink_node(r, n);
        memset(n->v.obj, 0, sizeof(n->v.obj)); /* gone with their session */
        drop_ref(r, n, n->epoch, &d);
    }
    pthread_mutex_unlock(&r->lock);
    destroy_doomed(NULL, &d);
}

unsigned long p11_registry_objects(p11_registry *r, unsigned long tokgen)
{
    unsigned long c = 0;
    pthread_mutex_lock(&r->lock);
    for (node *n = r->oldest; n != NULL; n = n->younger)
        for (int i = 0; i < 2 && n->gen < 0; i++)
            c += n->v.obj[i] != CK_INVALID_HANDLE && !(n->v.flags & P11_REG_SHARED);
    for (int i = 0; i < GEN_SLOTS; i++)
        if (r->gens[i].state != GEN_FREE && !r->gens[i].closed && r->gens[i].tokgen == tokgen)
            c += r->gens[i].objects;
    pthread_mutex_unlock(&r->lock);
    return c;
}
