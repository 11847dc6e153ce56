/* tls13_const.c - the public constants of TLS 1.3's key schedule, made once per
 * module initialisation and kept as long-lived objects of the owner session: the early
 * secret without a PSK (with its handle), the "derived" salt made from it (with its
 * value at `transient`), and at `sealed` an all-zero key (the master secret's input).
 * A full handshake spends no token call on them. Used by tls13.c. */
#include <pthread.h>
#include <string.h>
#include <stdlib.h>
#include <openssl/crypto.h>
#include "internal.h"

/* The early secret without a PSK is a public value, so its handle is a public
 * constant too, the same in every token: a handshake may take it to any member of a
 * pool (pool.c), and each token makes the objects behind it on first use. */
static const char early_256[] = "p11tls:tls13:early-secret:sha2";
static const char early_384[] = "p11tls:tls13:early-secret-without-psk:sha2-384";
_Static_assert(sizeof(early_256) == 31 && sizeof(early_384) == 47, "32 and 48 bytes");

static void early_handle(p11_prf_hash h, unsigned char *out)
{
    size_t n = p11_hash_len(h);
    /* the strings and the byte that ends them: 32 and 48 bytes */
    memcpy(out, h == P11_PRF_SHA384 ? early_384 : early_256, n - 1);
    out[n - 1] = 0x5e;
}

/* The early secret without a PSK, HKDF-Extract(0, 0), and the salt derived from
 * it, Derive-Secret(ES, "derived", ""), are public values, the same in every
 * handshake of a hash: made once per module initialisation as long-lived objects of
 * the owner session (with the early secret's handle), so that a full handshake
 * spends no token call on them. At `sealed` also an all-zero key of the hash's
 * length: the input of the master secret's HKDF-Extract. Guarded by t->t13_lock. */
CK_RV p11_tls13_const_early(p11_session *s, p11_prf_hash h, struct p11_tls13_const **out)
{
    p11_token *t = s->tok;
    struct p11_tls13_const *c = &t->t13[h];
    size_t n = p11_hash_len(h);
    static const unsigned char zeros[48];
    CK_RV rv = CKR_OK;

    *out = c;
    if (c->gen == s->gen)
        return CKR_OK;
    c->zero = c->early = c->derived = CK_INVALID_HANDLE;
    if (t->caps.tls13 == P11_MS_NATIVE) {
        CK_ULONG len = n;
        CK_ATTRIBUTE zt[P11_SECRET_TEMPLATE_N + 1] = {P11_SECRET_TEMPLATE(&p11_yes),
                                                      {CKA_VALUE, (void *)zeros, n}};
        CK_ATTRIBUTE et[P11_SECRET_TEMPLATE_N + 1] = {P11_SECRET_TEMPLATE(&p11_yes),
                                                      {CKA_VALUE_LEN, &len, sizeof(len)}};
        P11_HKDF_PARAMS xp;
        CK_MECHANISM xm = {P11_CKM_HKDF_DERIVE, &xp, sizeof(xp)};
        memset(&xp, 0, sizeof(xp));
        xp.bExtract = CK_TRUE;
        xp.prfHashMechanism = p11_hash_mech(h);
        xp.ulSaltType = P11_CKF_HKDF_SALT_DATA;
        xp.pSalt = (CK_BYTE_PTR)zeros;
        xp.ulSaltLen = n;
        xp.hSaltKey = CK_INVALID_HANDLE;
        rv = p11_owner_create(s, zt, P11_SECRET_TEMPLATE_N + 1, &c->zero);
        if (rv == CKR_OK)
            rv = p11_owner_derive(s, &xm, c->zero, et, P11_SECRET_TEMPLATE_N + 1, &c->early);
    } else {
        /* HMAC(salt = zeros, IKM = zeros): a public value crosses */
        unsigned char es[48];
        CK_ATTRIBUTE zt[P11_SECRET_TEMPLATE_N + 1] = {P11_SECRET_TEMPLATE(&p11_yes),
                                                      {CKA_VALUE, (void *)zeros, n}};
        CK_ATTRIBUTE et[P11_SECRET_TEMPLATE_N + 1] = {P11_SECRET_TEMPLATE(&p11_yes),
                                                      {CKA_VALUE, es, n}};
        rv = p11_owner_create(s, zt, P11_SECRET_TEMPLATE_N + 1, &c->zero);
        if (rv == CKR_OK)
            rv = p11_hmac(s, p11_hmac_mech(h), c->zero, zeros, n, es, n);
        if (rv == CKR_OK)
            rv = p11_owner_create(s, et, P11_SECRET_TEMPLATE_N + 1, &c->early);
        OPENSSL_cleanse(es, sizeof(es)); /* (public, but a secret's buffer) */
    }
    if (rv == CKR_OK) {
        early_handle(h, c->early_handle);
        c->gen = s->gen;
    }
    return rv;
}

/* The constant early secret's object when handle is its handle, else NULL. */
struct p11_tls13_const *p11_tls13_const_match(p11_session *s, p11_prf_hash h,
                                              const unsigned char *handle)
{
    p11_token *t = s->tok;
    struct p11_tls13_const *c = NULL;
    unsigned char e[48];
    CK_RV rv;

    early_handle(h, e);
    if (memcmp(handle, e, p11_hash_len(h)) != 0)
        return NULL;
    /* (made here on first use: the handle may come from another pool member) */
    pthread_mutex_lock(&t->t13_lock);
    rv = p11_tls13_const_early(s, h, &c);
    pthread_mutex_unlock(&t->t13_lock);
    return rv == CKR_OK ? c : NULL;
}

/* The salt object for an extract after prev: the constant one when prev is the
 * constant early secret (made on first use), else CK_INVALID_HANDLE. At `transient`
 * its (public) value too, into value. */
CK_RV p11_tls13_const_salt(p11_session *s, p11_prf_hash h, const unsigned char *prev,
                           const unsigned char *dinfo, size_t dilen, CK_OBJECT_HANDLE *salt,
                           unsigned char *value)
{
    p11_token *t = s->tok;
    struct p11_tls13_const *c = p11_tls13_const_match(s, h, prev);
    size_t n = p11_hash_len(h);
    CK_RV rv = CKR_OK;

    *salt = CK_INVALID_HANDLE;
    if (c == NULL)
        return CKR_OK;
    pthread_mutex_lock(&t->t13_lock);
    if (c->gen == s->gen && c->derived == CK_INVALID_HANDLE) {
        if (t->caps.tls13 == P11_MS_NATIVE) {
            CK_ULONG len = n;
            CK_ATTRIBUTE dt[P11_SECRET_TEMPLATE_N + 1] = {P11_SECRET_TEMPLATE(&p11_yes),
                                                          {CKA_VALUE_LEN, &len, sizeof(len)}};
            P11_HKDF_PARAMS dp = {CK_FALSE, CK_TRUE, p11_hash_mech(h),  P11_CKF_HKDF_SALT_NULL,
                                  NULL,     0,       CK_INVALID_HANDLE, (CK_BYTE_PTR)dinfo,
                                  dilen};
            CK_MECHANISM dm = {P11_CKM_HKDF_DERIVE, &dp, sizeof(dp)};
            rv = p11_owner_derive(s, &dm, c->early, dt, P11_SECRET_TEMPLATE_N + 1, &c->derived);
        } else { /* HMAC(ES, HkdfLabel || 1): a public value crosses */
            unsigned char d[48], *buf = malloc(dilen + 1);
            CK_ATTRIBUTE dt[P11_SECRET_TEMPLATE_N + 1] = {P11_SECRET_TEMPLATE(&p11_yes),
                                                          {CKA_VALUE, d, n}};
            rv = buf == NULL ? CKR_HOST_MEMORY : CKR_OK;
            if (rv == CKR_OK) {
                memcpy(buf, dinfo, dilen);
                buf[dilen] = 1;
                rv = p11_hmac(s, p11_hmac_mech(h), c->early, buf, dilen + 1, d, n);
            }
            free(buf);
            if (rv == CKR_OK)
                rv = p11_owner_create(s, dt, P11_SECRET_TEMPLATE_N + 1, &c->derived);
            if (rv == CKR_OK)
                memcpy(c->derived_value, d, n);
        }
    }
    if (c->gen == s->gen) {
        *salt = c->derived;
        memcpy(value, c->derived_value, n);
    }
    pthread_mutex_unlock(&t->t13_lock);
    return rv;
}
