/* pool.h - what the pool's two files share (pool.c: members, routing, failover, the
 * probe, the status; pool_ops.c: the server key and the operations). Not for the
 * provider: it sees p11.h. */
#ifndef P11TLS_POOL_H
#define P11TLS_POOL_H

#include "internal.h"

struct member {
    char name[32];
    p11_token *t;
    int below;              /* never used: 1 below min-assurance, 2 refused (why) */
    int late;               /* not reached at start: used once the probe admits it (atomic) */
    char why[200];          /* why it was refused */
    unsigned inflight;      /* operations in flight in this process (atomic) */
    unsigned long ops;      /* operations sent to it (atomic) */
    unsigned long failover; /* operations retried elsewhere after it was lost (atomic) */
};

struct p11_pool {
    unsigned n;
    struct member m[P11_POOL_MAX];
    p11_caps caps;
    char label[160];
    unsigned turn; /* round robin among equals (atomic) */
    unsigned probe_ms;
    pthread_mutex_t lock; /* the probe thread's state */
    pthread_cond_t cond;
    pid_t probe_pid; /* the process the probe thread runs in (0: none) */
    pthread_t probe;
    int stop;
    p11_level min;
    unsigned char fp[16]; /* the members' handle key's fingerprint (have_fp) */
    int have_fp;
    pthread_mutex_t keys_lock; /* keys: the server keys loaded (a late member gets them) */
    struct p11_pool_key *keys;
};

struct p11_pool_key {
    p11_pool *p;
    p11_key *k[P11_POOL_MAX]; /* NULL for members not in use */
    unsigned first;           /* a member with the key (its public half) */
    int refs;
    p11_uri *uri; /* the key's id and label: to find it in a member admitted later */
    struct p11_pool_key *next;
};
/* A late member's key k (with p->keys_lock held): found, and the same as the others';
 * else 0 (*refused: another key, or none). */
int p11_pool_key_admit(p11_pool_key *k, unsigned i, int *refused);

/* One operation on the pool: fn on member `bound` (>= 0: it holds an object the
 * operation needs: never retried elsewhere), else on `prefer` (it has what the
 * operation is given cached) when usable, else on a picked member (with curve c when
 * curve >= 0); retried on another member when the one it ran on was lost meanwhile.
 * what names the operation in errors. */
typedef int (*p11_pool_op)(p11_token *t, unsigned i, void *arg);
int p11_pool_run(p11_pool *p, const char *what, int bound, int prefer, int curve, p11_pool_op fn,
                 void *arg);
/* The member whose tables hold handle h (n bytes), and how (P11_HELD_*): -1 if none. */
int p11_pool_holder(p11_pool *p, const unsigned char *h, size_t n, int *how);

#endif
