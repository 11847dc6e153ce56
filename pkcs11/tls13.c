/* tls13.c - the TLS 1.3 key schedule (RFC 8446 7.1) in the token: HKDF-Extract and
 * HKDF-Expand-Label on secrets that are token objects, and the HMAC of Finished and
 * PSK binders keyed by them. libssl holds a handle (handle.c: the secret encrypted
 * under the token's handle key, 32 or 48 bytes as the secret) wherever it believes
 * a TLS 1.3 secret is; only values meant to leave the token come out: traffic keys
 * and IVs, exporter output, Finished and binder MACs.
 *
 * Two strategies, as the token allows (caps.c):
 *   native (`sealed`)   CKM_HKDF_DERIVE for every secret, CKM_HKDF_DATA for the
 *                       exported values, C_Sign(HMAC) for the MACs: no secret
 *                       crosses the PKCS#11 boundary;
 *   hmac (`transient`)  HKDF from the token's HMAC (one block suffices for every
 *                       TLS 1.3 output): each derived secret is HMAC output, so it
 *                       crosses once, into this memory, to be put back as an object
 *                       and given its handle; a resumption PSK is read back from its
 *                       handle for the early secret's HMAC.
 * Secret objects are kept in the master-secret cache (registry.c, its generations),
 * keyed by the handle: a miss resolves the handle again (another process, after an
 * eviction, a KeyUpdate hours later). The public constants (the early secret without a
 * PSK, its "derived" salt) are made once per process: tls13_const.c. */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/proverr.h>
#include "internal.h"

/* Registry key of a TLS 1.3 handle of n bytes (the registry's keys are 48 bytes):
 * masked, so that TLS 1.3 entries and TLS 1.2 master-secret handles (keys as they
 * are) never meet: an HMAC keyed by a TLS 1.2 handle's bytes is an ordinary HMAC. */
static void reg_key(const unsigned char *h, size_t n, unsigned char key[48])
{
    for (size_t i = 0; i < n; i++)
        key[i] = h[i] ^ 0xa5;
    if (n < 48)
        memset(key + n, 0x5c, 48 - n);
}

/* The secret object behind handle (hashlen bytes), pinned: released with
 * p11_registry_release(t->ms, s, *ref). */
static CK_RV secret_object(p11_session *s, const unsigned char *handle, size_t n,
                           CK_OBJECT_HANDLE *obj, void **ref)
{
    p11_token *t = s->tok;
    unsigned char key[48];
    p11_reg_value v;
    p11_maker mk;
    CK_RV rv;
    struct p11_tls13_const *c =
        p11_tls13_const_match(s, n == 48 ? P11_PRF_SHA384 : P11_PRF_SHA256, handle);

    *ref = NULL;
    if (c != NULL) { /* the early secret without a PSK: long-lived, not the cache's */
        *obj = c->early;
        return CKR_OK;
    }
    reg_key(handle, n, key);
    if (p11_registry_get(t->ms, key, s->epoch, 0, &v, ref)) {
        *obj = v.obj[0];
        return CKR_OK;
    }
    *obj = CK_INVALID_HANDLE;
    rv = p11_registry_make_begin(t->ms, s, &mk);
    if (rv != CKR_OK)
        return rv;
    rv = p11_handle_resolve_n(&mk.s, handle, n, obj);
    p11_registry_make_end(t->ms, &mk, rv, *obj != CK_INVALID_HANDLE);
    memset(&v, 0, sizeof(v));
    v.obj[0] = *obj;
    if (rv == CKR_OK && p11_registry_put_made(t->ms, &mk, key, &v) &&
        p11_registry_get(t->ms, key, mk.s.epoch, 0, &v, ref)) {
        *obj = v.obj[0];
        return CKR_OK;
    }
    if (*obj != CK_INVALID_HANDLE) {
        if (rv == CKR_OK)
            rv = CKR_HOST_MEMORY; /* not kept: out of memory, or its generation lost */
        if (mk.gen >= 0)
            p11_registry_made_drop(t->ms, &mk);
        else
            (void)p11_destroy(s, *obj);
    }
    return rv;
}

/* A new secret made by make() in the cache's open generation, kept there under its
 * handle. make() may leave temporaries beside it (*extra of them: a "derived" salt,
 * an imported (EC)DHE secret), which end with the generation, without a call of
 * their own. value: the secret's bytes where they are known (`transient`), for the
 * handle. local (P11_TLS13_LOCAL): a secret libssl uses only during the handshake
 * gets a random handle that only this process's cache resolves: no wrap. Its
 * entry lives as long as the handshake's finished keys must anyway (libssl's
 * HMAC of Finished takes p11tls's HMAC only for a key the cache knows). */
typedef CK_RV (*make_fn)(p11_session *ms, void *arg, CK_OBJECT_HANDLE *out, unsigned *extra);
static CK_RV new_secret(p11_session *s, size_t n, make_fn make, void *arg,
                        const unsigned char *value, unsigned flags, unsigned char *handle)
{
    p11_token *t = s->tok;
    CK_OBJECT_HANDLE obj = CK_INVALID_HANDLE;
    unsigned char key[48];
    unsigned extra = 0;
    p11_reg_value v;
    p11_maker mk;
    CK_RV rv = p11_registry_make_begin(t->ms, s, &mk);

    if (rv != CKR_OK)
        return rv;
    rv = make(&mk.s, arg, &obj, &extra);
    p11_registry_make_end(t->ms, &mk, rv, (obj != CK_INVALID_HANDLE) + (mk.gen >= 0 ? extra : 0));
    if (rv == CKR_OK && (flags & P11_TLS13_LOCAL)) {
        if (getrandom(handle, n, 0) != (ssize_t)n)
            rv = CKR_FUNCTION_FAILED;
    } else if (rv == CKR_OK) {
        rv = p11_handle_make_n(s, obj, value, n, handle);
    }
    memset(&v, 0, sizeof(v));
    v.obj[0] = obj;
    v.flags = (flags & P11_TLS13_LOCAL) ? P11_REG_LOCAL : 0;
    if (rv == CKR_OK) {
        reg_key(handle, n, key);
        if (!p11_registry_put_made(t->ms, &mk, key, &v)) {
            if (mk.gen < 0)
                (void)p11_destroy(s, obj); /* resolvable again from the handle */
            if (flags & P11_TLS13_LOCAL)
                rv = CKR_HOST_MEMORY; /* not kept: nothing would resolve its handle */
        }
    } else if (mk.gen >= 0) {
        p11_registry_made_drop(t->ms, &mk);
    } else if (obj != CK_INVALID_HANDLE) {
        (void)p11_destroy(s, obj);
    }
    return rv;
}

/* ------------------------------------------------------------------ native */

struct hkdf_arg {
    CK_MECHANISM mech;
    CK_OBJECT_HANDLE base;
    CK_ULONG len;
};

static CK_RV derive_secret(p11_session *s, void *varg, CK_OBJECT_HANDLE *out, unsigned *extra)
{
    struct hkdf_arg *a = varg;
    CK_ATTRIBUTE t[P11_SECRET_TEMPLATE_N + 1] = {P11_SECRET_TEMPLATE(&p11_yes),
                                                 {CKA_VALUE_LEN, &a->len, sizeof(a->len)}};
    (void)extra;
    return P11_CALL(s->fl, C_DeriveKey, s->h, &a->mech, a->base, t, P11_SECRET_TEMPLATE_N + 1, out);
}

/* A value meant to leave the token (key, IV, exporter output): CKM_HKDF_DATA. */
static CK_RV derive_data(p11_session *s, P11_HKDF_PARAMS *hp, CK_OBJECT_HANDLE base,
                         unsigned char *out, size_t outlen)
{
    CK_OBJECT_CLASS cls = CKO_DATA;
    CK_ULONG len = outlen;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_TOKEN, (void *)&p11_no, sizeof(p11_no)},
                        {CKA_VALUE_LEN, &len, sizeof(len)}};
    CK_ATTRIBUTE va = {CKA_VALUE, out, outlen};
    CK_MECHANISM m = {P11_CKM_HKDF_DATA, hp, sizeof(*hp)};
    CK_OBJECT_HANDLE o = CK_INVALID_HANDLE;
    CK_RV rv = P11_CALL(s->fl, C_DeriveKey, s->h, &m, base, t, 3, &o);
    if (rv == CKR_OK) {
        rv = P11_CALL(s->fl, C_GetAttributeValue, s->h, o, &va, 1);
        if (rv == CKR_OK && va.ulValueLen != outlen)
            rv = CKR_FUNCTION_FAILED;
        (void)p11_destroy(s, o);
    }
    return rv;
}

/* An input secret given as bytes (an (EC)DHE shared secret, a salt at `transient`):
 * a sensitive session object. Extractable as what is derived from it must be (to be
 * wrapped into its handle): NSS does not make a derived key more accessible than
 * its base. */
static CK_RV import_secret(p11_session *s, const unsigned char *v, size_t n, CK_OBJECT_HANDLE *out)
{
    CK_ATTRIBUTE t[P11_SECRET_TEMPLATE_N + 1] = {P11_SECRET_TEMPLATE(&p11_yes),
                                                 {CKA_VALUE, (void *)v, n}};
    return P11_CALL(s->fl, C_CreateObject, s->h, t, P11_SECRET_TEMPLATE_N + 1, out);
}

struct import_arg {
    const unsigned char *v;
    size_t n;
};

static CK_RV make_import(p11_session *s, void *varg, CK_OBJECT_HANDLE *out, unsigned *extra)
{
    struct import_arg *a = varg;
    (void)extra;
    return import_secret(s, a->v, a->n, out);
}

/* HKDF-Extract at `sealed`, in the generation's session: the salt (the constant one,
 * else "derived" from the previous secret, else none) and the input (a secret
 * object, or bytes imported, or the all-zero key), then the new secret. */
struct extract_arg {
    p11_prf_hash h;
    CK_OBJECT_HANDLE prev, salt, in;
    const unsigned char *dinfo, *ikm;
    size_t dilen, ikmlen;
};

static CK_RV make_extract(p11_session *s, void *varg, CK_OBJECT_HANDLE *out, unsigned *extra)
{
    struct extract_arg *a = varg;
    static const unsigned char zeros[48];
    size_t n = p11_hash_len(a->h);
    CK_OBJECT_HANDLE salt = a->salt, in = a->in;
    P11_HKDF_PARAMS xp;
    struct hkdf_arg x;
    CK_RV rv = CKR_OK;

    memset(&xp, 0, sizeof(xp));
    xp.bExtract = CK_TRUE;
    xp.prfHashMechanism = p11_hash_mech(a->h);
    xp.hSaltKey = CK_INVALID_HANDLE;
    if (salt == CK_INVALID_HANDLE && a->prev != CK_INVALID_HANDLE) {
        P11_HKDF_PARAMS dp = {CK_FALSE, CK_TRUE, p11_hash_mech(a->h), P11_CKF_HKDF_SALT_NULL,
                              NULL,     0,       CK_INVALID_HANDLE,   (CK_BYTE_PTR)a->dinfo,
                              a->dilen};
        struct hkdf_arg d = {{P11_CKM_HKDF_DERIVE, &dp, sizeof(dp)}, a->prev, n};
        rv = derive_secret(s, &d, &salt, extra);
        *extra += rv == CKR_OK;
    }
    if (rv == CKR_OK && in == CK_INVALID_HANDLE) {
        rv = import_secret(s, a->ikm, a->ikmlen, &in);
        *extra += rv == CKR_OK;
    }
    if (rv != CKR_OK)
        return rv;
    if (salt != CK_INVALID_HANDLE) {
        xp.ulSaltType = P11_CKF_HKDF_SALT_KEY;
        xp.hSaltKey = salt;
    } else { /* no salt: hashlen zeros, given as data (RFC 5869) */
        xp.ulSaltType = P11_CKF_HKDF_SALT_DATA;
        xp.pSalt = (CK_BYTE_PTR)zeros;
        xp.ulSaltLen = n;
    }
    x.mech.mechanism = P11_CKM_HKDF_DERIVE;
    x.mech.pParameter = &xp;
    x.mech.ulParameterLen = sizeof(xp);
    x.base = in;
    x.len = n;
    return derive_secret(s, &x, out, extra);
}

/* ------------------------------------------------------------- public API */

static int fail(const char *call, CK_RV rv, const char *what)
{
    p11_err_ckr(call, rv, "TLS 1.3 %s", what);
    return 0;
}

int p11_tls13_expand(p11_token *t, p11_prf_hash h, const unsigned char *secret,
                     const unsigned char *info, size_t infolen, unsigned flags, unsigned char *out,
                     size_t outlen)
{
    size_t n = p11_hash_len(h);
    int as_handle = (flags & P11_TLS13_SECRET) != 0;
    p11_session s;
    CK_OBJECT_HANDLE k;
    void *ref = NULL;
    CK_RV rv;
    const char *call = "C_DeriveKey";

    if (t->caps.tls13 == P11_MS_NONE || outlen == 0 || outlen > 255 * n ||
        (as_handle && outlen != n)) {
        p11_err(ERR_R_PASSED_INVALID_ARGUMENT, "TLS 1.3 expand: %s",
                t->caps.tls13 == P11_MS_NONE ? "the token cannot run the TLS 1.3 key schedule"
                                             : "unsupported output length");
        return 0;
    }
    if (!p11_session_get(t, &s))
        return 0;
    rv = secret_object(&s, secret, n, &k, &ref);
    if (rv != CKR_OK) {
        call = "C_UnwrapKey";
    } else if (t->caps.tls13 == P11_MS_NATIVE) {
        P11_HKDF_PARAMS hp = {CK_FALSE, CK_TRUE, p11_hash_mech(h),  P11_CKF_HKDF_SALT_NULL,
                              NULL,     0,       CK_INVALID_HANDLE, (CK_BYTE_PTR)info,
                              infolen};
        if (as_handle) {
            struct hkdf_arg a = {{P11_CKM_HKDF_DERIVE, &hp, sizeof(hp)}, k, n};
            rv = new_secret(&s, n, derive_secret, &a, NULL, flags, out);
        } else {
            rv = derive_data(&s, &hp, k, out, outlen);
        }
    } else {
        /* HKDF-Expand: T(i) = HMAC(secret, T(i-1) || info || i); secrets are one block,
         * only an exporter's output may be longer */
        unsigned char *in = malloc(n + infolen + 1), blk[48];
        size_t done = 0, tl = 0;
        call = "C_Sign";
        if (in == NULL)
            rv = CKR_HOST_MEMORY;
        for (unsigned i = 1; rv == CKR_OK && done < outlen; i++) {
            size_t take = outlen - done < n ? outlen - done : n;
            memcpy(in + tl, info, infolen);
            in[tl + infolen] = (unsigned char)i;
            rv = p11_hmac(&s, p11_hmac_mech(h), k, in, tl + infolen + 1, blk, n);
            if (rv == CKR_OK && !as_handle)
                memcpy(out + done, blk, take);
            done += take;
            memcpy(in, blk, n);
            tl = n;
        }
        if (in != NULL) {
            OPENSSL_cleanse(in, n + infolen + 1);
            free(in);
        }
        if (rv == CKR_OK && as_handle) {
            struct import_arg imp = {blk, n};
            call = "C_CreateObject";
            rv = new_secret(&s, n, make_import, &imp, blk, flags, out);
        }
        OPENSSL_cleanse(blk, sizeof(blk));
        if (t->scrub)
            p11_scrub_heap();
    }
    p11_registry_release(t->ms, &s, ref);
    p11_session_put(&s, rv);
    if (rv != CKR_OK) {
        OPENSSL_cleanse(out, outlen);
        return fail(call, rv, "expand");
    }
    return 1;
}

int p11_tls13_extract(p11_token *t, p11_prf_hash h, const unsigned char *prev,
                      const unsigned char *dinfo, size_t dilen, const unsigned char *ikm,
                      size_t ikmlen, unsigned flags, unsigned char *out)
{
    size_t n = p11_hash_len(h);
    int ikm_is_handle = (flags & P11_TLS13_IKM_HANDLE) != 0;
    static const unsigned char zeros[48];
    p11_session s;
    CK_OBJECT_HANDLE pk = CK_INVALID_HANDLE, salt = CK_INVALID_HANDLE, in = CK_INVALID_HANDLE;
    void *pref = NULL, *iref = NULL;
    CK_RV rv = CKR_OK;
    const char *call = "C_DeriveKey";
    unsigned char d[48], ikmb[48], prk[48], sv[48];
    CK_OBJECT_HANDLE ecdh = CK_INVALID_HANDLE;
    CK_SESSION_HANDLE ecdh_owner = CK_INVALID_HANDLE;

    if (t->caps.tls13 == P11_MS_NONE || (ikm_is_handle && (prev != NULL || ikmlen != n)) ||
        ikmlen > 1024) {
        p11_err(ERR_R_PASSED_INVALID_ARGUMENT, "TLS 1.3 extract: %s",
                t->caps.tls13 == P11_MS_NONE ? "the token cannot run the TLS 1.3 key schedule"
                                             : "unsupported input");
        return 0;
    }
    if (!p11_session_get(t, &s))
        return 0;
    if (prev == NULL && ikm == NULL) { /* the early secret without a PSK: a constant */
        struct p11_tls13_const *c;
        pthread_mutex_lock(&t->t13_lock);
        rv = p11_tls13_const_early(&s, h, &c);
        if (rv == CKR_OK)
            memcpy(out, c->early_handle, n);
        pthread_mutex_unlock(&t->t13_lock);
        goto done;
    }
    if (prev != NULL) {
        call = "C_DeriveKey";
        rv = p11_tls13_const_salt(&s, h, prev, dinfo, dilen, &salt, sv);
        if (rv == CKR_OK && salt == CK_INVALID_HANDLE) {
            call = "C_UnwrapKey";
            rv = secret_object(&s, prev, n, &pk, &pref);
        }
    }
    if (rv == CKR_OK && ikm == NULL) { /* no (EC)DHE input (the master secret): zeros */
        struct p11_tls13_const *c;
        call = "C_CreateObject";
        pthread_mutex_lock(&t->t13_lock);
        rv = p11_tls13_const_early(&s, h, &c);
        in = c->zero;
        pthread_mutex_unlock(&t->t13_lock);
        ikm = zeros;
        ikmlen = n;
    } else if (rv == CKR_OK && ikm_is_handle && t->caps.tls13 == P11_MS_NATIVE) {
        call = "C_UnwrapKey";
        rv = secret_object(&s, ikm, n, &in, &iref);
    } else if (rv == CKR_OK && p11_ecdh_take(&s, ikm, ikmlen, &ecdh, &ecdh_owner)) {
        in = ecdh; /* an ECDHE secret derived in the token (ecdh.c): its handle */
    }
    if (rv != CKR_OK) {
        /* (nothing made yet) */
    } else if (t->caps.tls13 == P11_MS_NATIVE) {
        struct extract_arg a = {h, pk, salt, in, dinfo, ikm, dilen, ikmlen};
        call = "C_DeriveKey";
        rv = new_secret(&s, n, make_extract, &a, NULL, flags, out);
    } else {
        /* PRK = HMAC(salt, IKM): the salt as the key (the derived secret, or zeros),
         * the IKM as data (a resumption PSK read back from its handle) */
        CK_OBJECT_HANDLE tmp = CK_INVALID_HANDLE;
        const unsigned char *data = ikm;
        if (salt == CK_INVALID_HANDLE && prev != NULL) {
            unsigned char *buf = malloc(dilen + 1);
            call = "C_Sign";
            if (buf == NULL) {
                rv = CKR_HOST_MEMORY;
            } else {
                memcpy(buf, dinfo, dilen);
                buf[dilen] = 1;
                rv = p11_hmac(&s, p11_hmac_mech(h), pk, buf, dilen + 1, d, n);
                free(buf);
            }
            if (rv == CKR_OK)
                memcpy(sv, d, n);
            if (rv == CKR_OK && ecdh == CK_INVALID_HANDLE) {
                /* (an ECDHE secret is digested with the salt's value: no salt object) */
                call = "C_CreateObject";
                rv = import_secret(&s, d, n, &tmp);
                salt = tmp;
            }
        } else if (salt == CK_INVALID_HANDLE) { /* no salt: zeros */
            struct p11_tls13_const *c;
            pthread_mutex_lock(&t->t13_lock);
            rv = p11_tls13_const_early(&s, h, &c);
            salt = c->zero;
            pthread_mutex_unlock(&t->t13_lock);
            memset(sv, 0, n);
        }
        if (rv == CKR_OK && ikm_is_handle) {
            call = "C_Decrypt";
            rv = p11_handle_open_n(&s, ikm, n, ikmb);
            data = ikmb;
        }
        if (rv == CKR_OK && ecdh != CK_INVALID_HANDLE) {
            /* an ECDHE secret made in the token: the data of this HMAC, by C_DigestKey;
             * the salt's value is here (a public constant, or the HMAC output above) */
            call = "C_DigestKey";
            rv = p11_hmac_of_object(&s, h, sv, n, ecdh, prk);
        } else if (rv == CKR_OK) {
            call = "C_Sign";
            rv = p11_hmac(&s, p11_hmac_mech(h), salt, data, ikmlen, prk, n);
        }
        if (tmp != CK_INVALID_HANDLE)
            (void)p11_destroy(&s, tmp);
        if (rv == CKR_OK) {
            struct import_arg imp = {prk, n};
            call = "C_CreateObject";
            rv = new_secret(&s, n, make_import, &imp, prk, flags, out);
        }
        OPENSSL_cleanse(d, sizeof(d));
        OPENSSL_cleanse(ikmb, sizeof(ikmb));
        OPENSSL_cleanse(prk, sizeof(prk));
        OPENSSL_cleanse(sv, sizeof(sv));
        if (t->scrub)
            p11_scrub_heap();
    }
done:
    if (ecdh != CK_INVALID_HANDLE) { /* used once: the handshake secret is made */
        CK_RV drv = p11_destroy_owned(&s, ecdh, ecdh_owner);
        if (rv == CKR_OK && p11_rv_is_session_loss(drv))
            rv = drv;
    }
    p11_registry_release(t->ms, &s, pref);
    p11_registry_release(t->ms, &s, iref);
    p11_session_put(&s, rv);
    if (rv != CKR_OK) {
        OPENSSL_cleanse(out, n);
        return fail(call, rv, "extract");
    }
    return 1;
}

int p11_tls13_hmac(p11_token *t, p11_prf_hash h, const unsigned char *key,
                   const unsigned char *data, size_t datalen, unsigned char *out)
{
    size_t n = p11_hash_len(h);
    p11_session s;
    CK_OBJECT_HANDLE k;
    void *ref = NULL;
    CK_RV rv;

    if (t->caps.tls13 == P11_MS_NONE) {
        p11_err(ERR_R_PASSED_INVALID_ARGUMENT,
                "TLS 1.3 HMAC: the token cannot run the TLS 1.3 key schedule");
        return 0;
    }
    if (!p11_session_get(t, &s))
        return 0;
    rv = secret_object(&s, key, n, &k, &ref);
    if (rv == CKR_OK) /* (an empty message: tokens refuse a NULL buffer even of length 0) */
        rv = p11_hmac(&s, p11_hmac_mech(h), k, data != NULL ? data : (const unsigned char *)"",
                      datalen, out, n);
    p11_registry_release(t->ms, &s, ref);
    p11_session_put(&s, rv);
    if (rv != CKR_OK) {
        OPENSSL_cleanse(out, n);
        return fail("C_Sign", rv, "HMAC (Finished, binder)");
    }
    return 1;
}

int p11_tls13_known(p11_token *t, const unsigned char *key, size_t n)
{
    unsigned char k[48];
    if (n != 32 && n != 48)
        return 0;
    reg_key(key, n, k);
    return p11_registry_has(t->ms, k, p11_token_epoch(t));
}

int p11_tls13_held(p11_token *t, const unsigned char *h, size_t n)
{
    unsigned char k[48];
    int f;
    if (n != 32 && n != 48)
        return 0;
    reg_key(h, n, k);
    f = p11_registry_flags(t->ms, k, p11_token_epoch(t));
    return f < 0 ? 0 : (f & P11_REG_LOCAL) ? P11_HELD_ONLY : P11_HELD_CACHED;
}
