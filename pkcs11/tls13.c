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
 * eviction, a KeyUpdate hours later). */
#include <stdlib.h>
#include <string.h>
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

static CK_MECHANISM_TYPE hash_mech(p11_prf_hash h)
{
    return h == P11_PRF_SHA384 ? CKM_SHA384 : CKM_SHA256;
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

    reg_key(handle, n, key);
    *ref = NULL;
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

/* A new secret made by make(), kept in the cache under its handle. value: its bytes
 * where they are known (`transient`), for the handle. */
typedef CK_RV (*make_fn)(p11_session *ms, void *arg, CK_OBJECT_HANDLE *out);
static CK_RV new_secret(p11_session *s, size_t n, make_fn make, void *arg,
                        const unsigned char *value, unsigned char *handle)
{
    p11_token *t = s->tok;
    CK_OBJECT_HANDLE obj = CK_INVALID_HANDLE;
    unsigned char key[48];
    p11_reg_value v;
    p11_maker mk;
    CK_RV rv = p11_registry_make_begin(t->ms, s, &mk);

    if (rv != CKR_OK)
        return rv;
    rv = make(&mk.s, arg, &obj);
    p11_registry_make_end(t->ms, &mk, rv, obj != CK_INVALID_HANDLE);
    if (rv == CKR_OK)
        rv = p11_handle_make_n(s, obj, value, n, handle);
    memset(&v, 0, sizeof(v));
    v.obj[0] = obj;
    if (rv == CKR_OK) {
        reg_key(handle, n, key);
        if (!p11_registry_put_made(t->ms, &mk, key, &v) && mk.gen < 0)
            (void)p11_destroy(s, obj); /* resolvable again from the handle */
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

static CK_RV derive_secret(p11_session *s, void *varg, CK_OBJECT_HANDLE *out)
{
    struct hkdf_arg *a = varg;
    CK_ATTRIBUTE t[P11_SECRET_TEMPLATE_N + 1] = {P11_SECRET_TEMPLATE(&p11_yes),
                                                 {CKA_VALUE_LEN, &a->len, sizeof(a->len)}};
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

/* An input secret given as bytes (an (EC)DHE shared secret, zeros): a sensitive
 * session object, the caller's to destroy. Extractable as what is derived from it
 * must be (to be wrapped into its handle): NSS does not make a derived key more
 * accessible than its base. */
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

static CK_RV make_import(p11_session *s, void *varg, CK_OBJECT_HANDLE *out)
{
    struct import_arg *a = varg;
    CK_ATTRIBUTE t[P11_SECRET_TEMPLATE_N + 1] = {P11_SECRET_TEMPLATE(&p11_yes),
                                                 {CKA_VALUE, (void *)a->v, a->n}};
    return P11_CALL(s->fl, C_CreateObject, s->h, t, P11_SECRET_TEMPLATE_N + 1, out);
}

/* ------------------------------------------------------------- public API */

static int fail(const char *call, CK_RV rv, const char *what)
{
    p11_err_ckr(call, rv, "TLS 1.3 %s", what);
    return 0;
}

int p11_tls13_expand(p11_token *t, p11_prf_hash h, const unsigned char *secret,
                     const unsigned char *info, size_t infolen, int as_handle, unsigned char *out,
                     size_t outlen)
{
    size_t n = p11_hash_len(h);
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
        P11_HKDF_PARAMS hp = {CK_FALSE, CK_TRUE, hash_mech(h),      P11_CKF_HKDF_SALT_NULL,
                              NULL,     0,       CK_INVALID_HANDLE, (CK_BYTE_PTR)info,
                              infolen};
        if (as_handle) {
            struct hkdf_arg a = {{P11_CKM_HKDF_DERIVE, &hp, sizeof(hp)}, k, n};
            rv = new_secret(&s, n, derive_secret, &a, NULL, out);
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
            rv = new_secret(&s, n, make_import, &imp, blk, out);
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
                      size_t ikmlen, int ikm_is_handle, unsigned char *out)
{
    size_t n = p11_hash_len(h);
    static const unsigned char zeros[48];
    p11_session s;
    CK_OBJECT_HANDLE pk = CK_INVALID_HANDLE, salt = CK_INVALID_HANDLE, in = CK_INVALID_HANDLE;
    void *pref = NULL, *iref = NULL;
    CK_RV rv = CKR_OK;
    const char *call = "C_DeriveKey";
    unsigned char d[48], ikmb[48], prk[48];
    int have_d = 0;

    if (t->caps.tls13 == P11_MS_NONE || (ikm_is_handle && (prev != NULL || ikmlen != n)) ||
        ikmlen > 1024) {
        p11_err(ERR_R_PASSED_INVALID_ARGUMENT, "TLS 1.3 extract: %s",
                t->caps.tls13 == P11_MS_NONE ? "the token cannot run the TLS 1.3 key schedule"
                                             : "unsupported input");
        return 0;
    }
    if (ikm == NULL) { /* no (EC)DHE or PSK input: hashlen zero bytes */
        ikm = zeros;
        ikmlen = n;
        ikm_is_handle = 0;
    }
    if (!p11_session_get(t, &s))
        return 0;
    /* The salt: Derive-Secret(prev, "derived", "") when there is a previous secret,
     * else none (hashlen zeros). */
    if (prev != NULL) {
        rv = secret_object(&s, prev, n, &pk, &pref);
        call = "C_UnwrapKey";
    }
    if (t->caps.tls13 == P11_MS_NATIVE) {
        P11_HKDF_PARAMS dp = {CK_FALSE, CK_TRUE, hash_mech(h),      P11_CKF_HKDF_SALT_NULL,
                              NULL,     0,       CK_INVALID_HANDLE, (CK_BYTE_PTR)dinfo,
                              dilen};
        CK_MECHANISM dm = {P11_CKM_HKDF_DERIVE, &dp, sizeof(dp)};
        struct hkdf_arg a;
        /* no salt: hashlen zeros, given as data (RFC 5869) */
        P11_HKDF_PARAMS xp;
        memset(&xp, 0, sizeof(xp));
        xp.bExtract = CK_TRUE;
        xp.bExpand = CK_FALSE;
        xp.prfHashMechanism = hash_mech(h);
        xp.ulSaltType = P11_CKF_HKDF_SALT_DATA;
        xp.pSalt = (CK_BYTE_PTR)zeros;
        xp.ulSaltLen = n;
        xp.hSaltKey = CK_INVALID_HANDLE;
        if (rv == CKR_OK && prev != NULL) {
            struct hkdf_arg da = {dm, pk, n};
            call = "C_DeriveKey";
            rv = derive_secret(&s, &da, &salt);
            xp.ulSaltType = P11_CKF_HKDF_SALT_KEY;
            xp.hSaltKey = salt;
        }
        if (rv == CKR_OK && ikm_is_handle) {
            rv = secret_object(&s, ikm, n, &in, &iref);
            call = "C_UnwrapKey";
        } else if (rv == CKR_OK) {
            rv = import_secret(&s, ikm, ikmlen, &in);
            call = "C_CreateObject";
        }
        if (rv == CKR_OK) {
            a.mech.mechanism = P11_CKM_HKDF_DERIVE;
            a.mech.pParameter = &xp;
            a.mech.ulParameterLen = sizeof(xp);
            a.base = in;
            a.len = n;
            call = "C_DeriveKey";
            rv = new_secret(&s, n, derive_secret, &a, NULL, out);
        }
        if (in != CK_INVALID_HANDLE && !ikm_is_handle)
            (void)p11_destroy(&s, in);
        if (salt != CK_INVALID_HANDLE)
            (void)p11_destroy(&s, salt);
    } else {
        /* PRK = HMAC(salt, IKM): the salt as the key (the derived secret, or zeros),
         * the IKM as data (a resumption PSK read back from its handle) */
        const unsigned char *data = ikm;
        call = "C_Sign";
        if (rv == CKR_OK && prev != NULL) {
            unsigned char *buf = malloc(dilen + 1);
            if (buf == NULL) {
                rv = CKR_HOST_MEMORY;
            } else {
                memcpy(buf, dinfo, dilen);
                buf[dilen] = 1;
                rv = p11_hmac(&s, p11_hmac_mech(h), pk, buf, dilen + 1, d, n);
                free(buf);
                have_d = rv == CKR_OK;
            }
        }
        if (rv == CKR_OK && ikm_is_handle) {
            call = "C_Decrypt";
            rv = p11_handle_open_n(&s, ikm, n, ikmb);
            data = ikmb;
        }
        if (rv == CKR_OK) {
            call = "C_CreateObject";
            rv = import_secret(&s, have_d ? d : zeros, n, &salt);
        }
        if (rv == CKR_OK) {
            call = "C_Sign";
            rv = p11_hmac(&s, p11_hmac_mech(h), salt, data, ikmlen, prk, n);
        }
        if (salt != CK_INVALID_HANDLE)
            (void)p11_destroy(&s, salt);
        if (rv == CKR_OK) {
            struct import_arg imp = {prk, n};
            call = "C_CreateObject";
            rv = new_secret(&s, n, make_import, &imp, prk, out);
        }
        OPENSSL_cleanse(d, sizeof(d));
        OPENSSL_cleanse(ikmb, sizeof(ikmb));
        OPENSSL_cleanse(prk, sizeof(prk));
        if (t->scrub)
            p11_scrub_heap();
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
