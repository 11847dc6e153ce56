/* registry.c - the process-local map from 48-byte handles (what libssl holds in
 * place of a secret) to the token objects behind them. Bounded, evicting by age
 * and by count; entries in use are pinned by a reference count so an eviction
 * never destroys an object another thread is using. Objects of an older epoch
 * (before a fork or a token loss) are forgotten, never destroyed: their handle
 * numbers may belong to someone else now. */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/crypto.h>
#include "internal.h"

typedef struct node {
    unsigned char key[48];
    p11_reg_value v;
    unsigned long epoch;
    CK_SESSION_HANDLE owner; /* the session that created the objects: they die with it */
    time_t born;
    unsigned refs; /* 1 for being in the map, +1 per pin */
    int linked;
    struct node *hnext;           /* hash chain */
    struct node *older, *younger; /* age list */
} node;

struct p11_registry {
    pthread_mutex_t lock;
    node **buckets;
    size_t nbuckets;
    node *oldest, *youngest;
    unsigned long count, max;
    unsigned lifetime;
};

static size_t bucket_of(const p11_registry *r, const unsigned char key[48])
{
    /* Keys are uniformly random (random bytes or cipher text): any 8 bytes hash well. */
    uint64_t h;
    memcpy(&h, key + 8, sizeof(h));
    return (size_t)(h % r->nbuckets);
}

p11_registry *p11_registry_new(unsigned max_entries, unsigned lifetime)
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

/* Objects to destroy once the lock is dropped. */
typedef struct {
    CK_OBJECT_HANDLE h[16];
    CK_SESSION_HANDLE owner[16];
    int n;
    node *free_later[8];
    int nf;
} doomed;

static void drop_ref(node *n, unsigned long cur_epoch, doomed *d)
{
    if (--n->refs > 0)
        return;
    if (n->epoch == cur_epoch && !(n->v.flags & P11_REG_SHARED)) {
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
    for (int i = 0; i < d->nf; i++)
        node_free(d->free_later[i]);
}

int p11_registry_put(p11_registry *r, p11_session *s, const unsigned char key[48],
                     const p11_reg_value *v)
{
    node *n = calloc(1, sizeof(*n));
    doomed d = {.n = 0, .nf = 0};
    time_t now = time(NULL);
    size_t b;

    if (n == NULL)
        return 0;
    memcpy(n->key, key, 48);
    n->v = *v;
    n->epoch = s->epoch;
    n->owner = s->h;
    n->born = now;
    n->refs = 1;
    n->linked = 1;

    pthread_mutex_lock(&r->lock);
    /* Evict what is too old, then the oldest while full: a few per insert at most. */
    for (int i = 0; i < 4 && r->oldest != NULL; i++) {
        node *o = r->oldest;
        if (r->count < r->max && now - o->born < (time_t)r->lifetime && o->epoch == s->epoch)
            break;
        unlink_node(r, o);
        drop_ref(o, s->epoch, &d);
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

void p11_registry_release(p11_registry *r, p11_session *s, void *ref)
{
    doomed d = {.n = 0, .nf = 0};
    node *n = ref;
    if (n == NULL)
        return;
    pthread_mutex_lock(&r->lock);
    drop_ref(n, s->epoch, &d);
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
    doomed d = {.n = 0, .nf = 0};
    pthread_mutex_lock(&r->lock);
    for (n = r->oldest; n != NULL; n = next) {
        next = n->younger;
        if (n->owner != h)
            continue;
        unlink_node(r, n);
        memset(n->v.obj, 0, sizeof(n->v.obj)); /* gone with their session */
        drop_ref(n, n->epoch, &d);
    }
    pthread_mutex_unlock(&r->lock);
    destroy_doomed(NULL, &d);
}

unsigned long p11_registry_objects(p11_registry *r)
{
    unsigned long c = 0;
    pthread_mutex_lock(&r->lock);
    for (node *n = r->oldest; n != NULL; n = n->younger)
        for (int i = 0; i < 2; i++)
            c += n->v.obj[i] != CK_INVALID_HANDLE && !(n->v.flags & P11_REG_SHARED);
    pthread_mutex_unlock(&r->lock);
    return c;
}
