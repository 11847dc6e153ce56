/* pool_ops.c - the pool's operations (pool.h): the server key in every member, and
 * each token operation routed by p11_pool_run to the member that holds its input, or
 * to a picked one, with a retry on another member after a loss. */
#include <stdlib.h>
#include <string.h>
#include <openssl/err.h>
#include <openssl/proverr.h>
#include "pool.h"

/* ------------------------------------------------------------------ keys */

/* The key's public half in member i is the one in k->first's. */
static int same_public(p11_pool_key *k, unsigned i)
{
    const unsigned char *n0, *e0, *n1, *e1;
    size_t n0l, e0l, n1l, e1l;
    p11_key_public(k->k[k->first], &n0, &n0l, &e0, &e0l);
    p11_key_public(k->k[i], &n1, &n1l, &e1, &e1l);
    return n0l == n1l && e0l == e1l && memcmp(n0, n1, n0l) == 0 && memcmp(e0, e1, e0l) == 0;
}

/* Frees k's objects (not linked in p->keys, or unlinked). */
static void release(p11_pool_key *k)
{
    for (unsigned i = 0; i < P11_POOL_MAX; i++)
        p11_key_free(k->k[i]);
    p11_uri_free(k->uri);
    free(k);
}

int p11_pool_key_admit(p11_pool_key *k, unsigned i, int *refused)
{
    p11_pool *p = k->p;
    *refused = 0;
    if (k->k[i] != NULL)
        return 1;
    k->k[i] = p11_key_find(p->m[i].t, k->uri);
    if (k->k[i] == NULL) {
        *refused = !p11_token_lost(p->m[i].t, NULL, 0, NULL);
        return 0;
    }
    if (!same_public(k, i)) {
        p11_key_free(k->k[i]);
        k->k[i] = NULL;
        *refused = 1;
        return 0;
    }
    return 1;
}

p11_pool_key *p11_pool_key_find(p11_pool *p, const p11_uri *uri)
{
    p11_pool_key *k = calloc(1, sizeof(*k));
    int have = 0;

    if (k == NULL || (k->uri = p11_uri_object_copy(uri)) == NULL) {
        free(k);
        return NULL;
    }
    k->p = p;
    k->refs = 1;
    for (unsigned i = 0; i < p->n; i++) {
        if (p->m[i].below || __atomic_load_n(&p->m[i].late, __ATOMIC_ACQUIRE))
            continue; /* (a late member gets it when it is admitted) */
        ERR_set_mark();
        k->k[i] = p11_key_find(p->m[i].t, uri);
        if (k->k[i] == NULL && p->n > 1 && p11_token_lost(p->m[i].t, NULL, 0, NULL)) {
            /* lost now (a reload during its outage): admitted again with this key
             * checked, as a member not reached at start */
            ERR_pop_to_mark();
            __atomic_store_n(&p->m[i].late, 1, __ATOMIC_RELEASE);
            continue;
        }
        ERR_clear_last_mark();
        if (k->k[i] == NULL) {
            if (p->n > 1)
                p11_err(PROV_R_INVALID_KEY, "pool member %s (token '%s') lacks the key",
                        p->m[i].name, p11_token_label(p->m[i].t));
            goto fail;
        }
        if (!have) {
            k->first = i;
            have = 1;
            continue;
        }
        if (!same_public(k, i)) {
            p11_err(PROV_R_INVALID_KEY,
                    "pool member %s (token '%s') holds another key under this URI than member "
                    "%s: every member must hold the same server key",
                    p->m[i].name, p11_token_label(p->m[i].t), p->m[k->first].name);
            goto fail;
        }
    }
    if (!have) {
        p11_err(PROV_R_INVALID_KEY, "pool: no member in use to load the key from");
        goto fail;
    }
    pthread_mutex_lock(&p->keys_lock);
    k->next = p->keys;
    p->keys = k;
    pthread_mutex_unlock(&p->keys_lock);
    return k;
fail:
    release(k);
    return NULL;
}

p11_pool_key *p11_pool_key_ref(p11_pool_key *k)
{
    __atomic_add_fetch(&k->refs, 1, __ATOMIC_RELAXED);
    return k;
}

void p11_pool_key_free(p11_pool_key *k)
{
    if (k == NULL || __atomic_sub_fetch(&k->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    pthread_mutex_lock(&k->p->keys_lock);
    for (p11_pool_key **pp = &k->p->keys; *pp != NULL; pp = &(*pp)->next)
        if (*pp == k) {
            *pp = k->next;
            break;
        }
    pthread_mutex_unlock(&k->p->keys_lock);
    release(k);
}

void p11_pool_key_public(const p11_pool_key *k, const unsigned char **n, size_t *nlen,
                         const unsigned char **e, size_t *elen)
{
    p11_key_public(k->k[k->first], n, nlen, e, elen);
}

struct key_arg {
    p11_pool_key *k;
    CK_MECHANISM *mech;
    const unsigned char *in;
    size_t inlen;
    unsigned char *out;
    size_t *outlen;
    unsigned cv, av;
};

/* Never false in practice: members without the key are late, and not picked. */
static int has_key(const struct key_arg *a, unsigned i)
{
    if (a->k->k[i] != NULL)
        return 1;
    p11_err(ERR_R_INTERNAL_ERROR, "pool: member %u has no key object", i + 1);
    return 0;
}

static int do_sign(p11_token *t, unsigned i, void *v)
{
    struct key_arg *a = v;
    (void)t;
    if (!has_key(a, i))
        return 0;
    return p11_rsa_sign(a->k->k[i], a->mech, a->in, a->inlen, a->out, a->outlen);
}

static int do_decrypt(p11_token *t, unsigned i, void *v)
{
    struct key_arg *a = v;
    (void)t;
    if (!has_key(a, i))
        return 0;
    return p11_rsa_decrypt(a->k->k[i], a->mech, a->in, a->inlen, a->out, a->outlen);
}

static int do_unwrap(p11_token *t, unsigned i, void *v)
{
    struct key_arg *a = v;
    (void)t;
    if (!has_key(a, i))
        return 0;
    return p11_tls_pms_unwrap(a->k->k[i], a->in, a->inlen, a->cv, a->av, a->out);
}

int p11_pool_rsa_sign(p11_pool_key *k, CK_MECHANISM *mech, const unsigned char *in, size_t inlen,
                      unsigned char *sig, size_t *siglen)
{
    struct key_arg a = {k, mech, in, inlen, sig, siglen, 0, 0};
    return p11_pool_run(k->p, "RSA signature", -1, -1, -1, do_sign, &a);
}

int p11_pool_rsa_decrypt(p11_pool_key *k, CK_MECHANISM *mech, const unsigned char *in, size_t inlen,
                         unsigned char *out, size_t *outlen)
{
    struct key_arg a = {k, mech, in, inlen, out, outlen, 0, 0};
    return p11_pool_run(k->p, "RSA decryption", -1, -1, -1, do_decrypt, &a);
}

/* The outcome does not depend on the ciphertext's padding (p11_tls_pms_unwrap fails
 * only for token failures), so a retry on another member tells an attacker nothing. */
int p11_pool_pms_unwrap(p11_pool_key *k, const unsigned char *ct, size_t ctlen,
                        unsigned client_version, unsigned alt_version,
                        unsigned char handle[P11_TLS_HANDLE_LEN])
{
    struct key_arg a = {k, NULL, ct, ctlen, handle, NULL, client_version, alt_version};
    return p11_pool_run(k->p, "RSA key exchange", -1, -1, -1, do_unwrap, &a);
}

/* ------------------------------------------------------------ TLS secrets */

struct tls_arg {
    p11_prf_hash h;
    int ems;
    const unsigned char *a, *b, *c;
    size_t alen, blen, clen;
    unsigned flags;
    unsigned char *out;
    size_t outlen;
};

/* bound >= 0 for a handle only that member holds, prefer for one it has cached */
static void route(p11_pool *p, const unsigned char *h, size_t n, int *bound, int *prefer)
{
    int how, i = p11_pool_holder(p, h, n, &how);
    if (i >= 0 && how == P11_HELD_ONLY)
        *bound = i;
    else if (i >= 0 && *prefer < 0)
        *prefer = i;
}

static int do_master(p11_token *t, unsigned i, void *v)
{
    struct tls_arg *x = v;
    (void)i;
    return p11_tls_master(t, x->h, x->ems, x->a, x->alen, x->b, x->blen, x->out);
}

int p11_pool_tls_master(p11_pool *p, p11_prf_hash h, int ems, const unsigned char *secret,
                        size_t secretlen, const unsigned char *seed, size_t seedlen,
                        unsigned char handle[P11_TLS_HANDLE_LEN])
{
    struct tls_arg x = {h, ems, secret, seed, NULL, secretlen, seedlen, 0, 0, handle, 0};
    int bound = -1, prefer = -1;
    if (p->n > 1)
        route(p, secret, secretlen, &bound, &prefer);
    return p11_pool_run(p, "TLS 1.2 master secret", bound, prefer, -1, do_master, &x);
}

static int do_prf(p11_token *t, unsigned i, void *v)
{
    struct tls_arg *x = v;
    (void)i;
    return p11_tls_prf(t, x->h, x->a, x->b, x->blen, x->out, x->outlen);
}

int p11_pool_tls_prf(p11_pool *p, p11_prf_hash h, const unsigned char handle[P11_TLS_HANDLE_LEN],
                     const unsigned char *labelseed, size_t lslen, unsigned char *out,
                     size_t outlen)
{
    struct tls_arg x = {h,     0, handle, labelseed, NULL,  P11_TLS_HANDLE_LEN,
                        lslen, 0, 0,      out,       outlen};
    int bound = -1, prefer = -1;
    if (p->n > 1)
        route(p, handle, P11_TLS_HANDLE_LEN, &bound, &prefer);
    return p11_pool_run(p, "TLS 1.2 PRF", bound, prefer, -1, do_prf, &x);
}

static int do_extract(p11_token *t, unsigned i, void *v)
{
    struct tls_arg *x = v;
    (void)i;
    return p11_tls13_extract(t, x->h, x->a, x->b, x->blen, x->c, x->clen, x->flags, x->out);
}

int p11_pool_tls13_extract(p11_pool *p, p11_prf_hash h, const unsigned char *prev,
                           const unsigned char *dinfo, size_t dilen, const unsigned char *ikm,
                           size_t ikmlen, unsigned flags, unsigned char *out)
{
    struct tls_arg x = {h, 0, prev, dinfo, ikm, 0, dilen, ikmlen, flags, out, 0};
    int bound = -1, prefer = -1;
    if (p->n > 1) {
        size_t n = p11_hash_len(h);
        /* The input (an ECDH secret, a PSK) first: its member runs the extract, and
         * takes the previous secret from its handle when another member made it. */
        if (ikm != NULL)
            route(p, ikm, (flags & P11_TLS13_IKM_HANDLE) ? n : ikmlen, &bound, &prefer);
        if (prev != NULL && bound < 0)
            route(p, prev, n, &bound, &prefer);
        /* An early secret from a PSK is made before the member of the handshake's
         * key share is known: a wrapped handle, which any member resolves. */
        if (flags & P11_TLS13_IKM_HANDLE)
            x.flags &= ~P11_TLS13_LOCAL;
    }
    return p11_pool_run(p, "TLS 1.3 extract", bound, prefer, -1, do_extract, &x);
}

static int do_expand(p11_token *t, unsigned i, void *v)
{
    struct tls_arg *x = v;
    (void)i;
    return p11_tls13_expand(t, x->h, x->a, x->b, x->blen, x->flags, x->out, x->outlen);
}

int p11_pool_tls13_expand(p11_pool *p, p11_prf_hash h, const unsigned char *secret,
                          const unsigned char *info, size_t infolen, unsigned flags,
                          unsigned char *out, size_t outlen)
{
    struct tls_arg x = {h, 0, secret, info, NULL, 0, infolen, 0, flags, out, outlen};
    int bound = -1, prefer = -1;
    if (p->n > 1)
        route(p, secret, p11_hash_len(h), &bound, &prefer);
    return p11_pool_run(p, "TLS 1.3 expand", bound, prefer, -1, do_expand, &x);
}

static int do_hmac(p11_token *t, unsigned i, void *v)
{
    struct tls_arg *x = v;
    (void)i;
    return p11_tls13_hmac(t, x->h, x->a, x->b, x->blen, x->out);
}

int p11_pool_tls13_hmac(p11_pool *p, p11_prf_hash h, const unsigned char *key,
                        const unsigned char *data, size_t datalen, unsigned char *out)
{
    struct tls_arg x = {h, 0, key, data, NULL, 0, datalen, 0, 0, out, 0};
    int bound = -1, prefer = -1;
    if (p->n > 1)
        route(p, key, p11_hash_len(h), &bound, &prefer);
    return p11_pool_run(p, "TLS 1.3 HMAC", bound, prefer, -1, do_hmac, &x);
}

/* ----------------------------------------------------------------- ECDHE */

struct ec_arg {
    p11_curve c;
    p11_eckey *k;
    const unsigned char *peer;
    size_t peerlen;
    unsigned char *out;
};

static int do_keygen(p11_token *t, unsigned i, void *v)
{
    struct ec_arg *x = v;
    (void)i;
    x->k = p11_ecdh_keygen(t, x->c);
    return x->k != NULL;
}

p11_eckey *p11_pool_ecdh_keygen(p11_pool *p, p11_curve c)
{
    struct ec_arg x = {c, NULL, NULL, 0, NULL};
    return p11_pool_run(p, "ECDHE key share", -1, -1, (int)c, do_keygen, &x) ? x.k : NULL;
}

static int do_derive(p11_token *t, unsigned i, void *v)
{
    struct ec_arg *x = v;
    (void)t;
    (void)i;
    return p11_ecdh_derive(x->k, x->peer, x->peerlen, x->out);
}

int p11_pool_ecdh_derive(p11_pool *p, p11_eckey *k, const unsigned char *peer, size_t peerlen,
                         unsigned char *out)
{
    struct ec_arg x = {p11_eckey_curve(k), k, peer, peerlen, out};
    int bound = 0;
    for (unsigned i = 0; i < p->n; i++)
        if (p->m[i].t == p11_eckey_token(k))
            bound = (int)i;
    return p11_pool_run(p, "ECDHE shared secret", bound, -1, -1, do_derive, &x);
}
