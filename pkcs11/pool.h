/* pool.h - what the pool's two files share (pool.c: members, routing, failover, the
 * probe, the status; pool_ops.c: the server key and the operations). Not for the
 * provider: it sees p11.h. */
#ifndef P11TLS_POOL_H
#define P11TLS_POOL_H

#include "internal.h"

struct member {
    char name[32];
    p11_token *t;
    int below;              /* below min-assurance: never used */
    unsigned inflight;      /* operations in flight in this process (atomic) */
    unsigned long ops;      /* operations sent to it (atomic) */
    unsigned long failover; /* operations retried elsewhere after it was lost (atomic) */
    int was_lost;           /* the probe's view: lost at its last look */
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
};

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
