/* tls12.c - the TLS 1.2 secrets in the token: the pre-master secret unwrapped
 * into it (with implicit rejection), the master secret derived into it, and
 * the PRF outputs (key block, Finished, exporters) computed from it.
 *
 * libssl holds a 48-byte handle (handle.c) where it believes the master secret is;
 * a registry caches the resolved token objects, and a miss resolves the handle
 * again. Pre-master-secret handles are random bytes known only to the registry. */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/proverr.h>
#include "internal.h"

static int fail_ckr(const char *call, CK_RV rv, const char *what)
{
    p11_err_ckr(call, rv, "%s", what);
    return 0;
}

/* The stand-in for a pre-master secret that failed its checks (RFC 5246 7.4.7.1's
 * random R): one random 48-byte sensitive session object per token and process,
 * made once in the owner session. Whatever is derived from it nobody knows, and a
 * handshake that uses it fails at the client's Finished. Being long-lived, it costs
 * no token call per handshake. */
static CK_RV fallback_secret(p11_session *s, CK_OBJECT_HANDLE *out)
{
    p11_token *t = s->tok;
    CK_MECHANISM gen = {CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
    CK_ULONG len48 = 48;
    /* extractable only where the unwrapped secret is (the same length query runs on
     * either, p11_tls_pms_unwrap) */
    CK_ATTRIBUTE rt[P11_SECRET_TEMPLATE_N + 1] = {
        P11_SECRET_TEMPLATE(t->caps.len_wrap_mech != 0 ? &p11_yes : &p11_no),
        {CKA_VALUE_LEN, &len48, sizeof(len48)}};
    CK_RV rv = CKR_OK;

    pthread_mutex_lock(&t->wrap_lock);
    if (t->fallback_gen != s->gen || t->fallback == CK_INVALID_HANDLE) {
        rv = p11_owner_generate(s, &gen, rt, P11_SECRET_TEMPLATE_N + 1, &t->fallback);
        if (rv == CKR_OK)
            t->fallback_gen = s->gen;
        else
            p11_err_ckr("C_GenerateKey", rv, "the random stand-in secret");
    }
    *out = t->fallback;
    pthread_mutex_unlock(&t->wrap_lock);
    return rv;
}

/* C_DestroyObject on h, or the same call on no object when h does not exist, so
 * that the calls made do not tell whether it did. */
static CK_RV destroy_always(p11_session *s, CK_OBJECT_HANDLE h, CK_SESSION_HANDLE owner)
{
    if (h != CK_INVALID_HANDLE)
        return p11_destroy_owned(s, h, owner);
    (void)P11_CALL(s->fl, C_DestroyObject, s->h, CK_INVALID_HANDLE);
    return CKR_OK;
}

/* The HMAC mechanism of the pre-master secret's HMAC-key check. */
static CK_MECHANISM_TYPE check_hmac(const p11_caps *c)
{
    return c->hmac_sha384 ? CKM_SHA384_HMAC : CKM_SHA256_HMAC;
}

/* At `transient`, can a C_WrapKey length query (no output) tell a 48-byte secret
 * from a longer one? Tried once with throw-away secrets of 48, 49 and 64 bytes;
 * the first key-wrap mechanism that answers one length for 48 bytes and another
 * (or an error) for both longer ones is kept. Shorter secrets are refused by the
 * HMAC-key check (p11_tls_pms_unwrap): whether it refuses a 47-byte one is tried
 * here too. */
static void probe_len_wrap(p11_session *s, CK_OBJECT_HANDLE k)
{
    static const CK_MECHANISM_TYPE mechs[] = {CKM_AES_KEY_WRAP_PAD, CKM_AES_KEY_WRAP};
    static const CK_ULONG lens[] = {48, 49, 64, 47};
    CK_MECHANISM gen = {CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
    CK_OBJECT_HANDLE o[4] = {CK_INVALID_HANDLE, CK_INVALID_HANDLE, CK_INVALID_HANDLE,
                             CK_INVALID_HANDLE};
    p11_caps *c = &s->tok->caps;
    int made = 1;

    c->len_wrap_mech = 0;
    c->hmac_refuses_47 = 0;
    for (int i = 0; i < 4; i++) {
        CK_ULONG len = lens[i];
        CK_ATTRIBUTE t[P11_SECRET_TEMPLATE_N + 1] = {P11_SECRET_TEMPLATE(&p11_yes),
                                                     {CKA_VALUE_LEN, &len, sizeof(len)}};
        made &= P11_CALL(s->fl, C_GenerateKey, s->h, &gen, t, P11_SECRET_TEMPLATE_N + 1, &o[i]) ==
                CKR_OK;
    }
    for (size_t m = 0; made && m < sizeof(mechs) / sizeof(mechs[0]); m++) {
        CK_MECHANISM mech = {mechs[m], NULL, 0};
        CK_ULONG wl[3] = {0, 0, 0};
        CK_RV rv[3];
        for (int i = 0; i < 3; i++)
            rv[i] = P11_CALL(s->fl, C_WrapKey, s->h, &mech, k, o[i], NULL, &wl[i]);
        if (rv[0] == CKR_OK && wl[0] > 0 && (rv[1] != CKR_OK || wl[1] != wl[0]) &&
            (rv[2] != CKR_OK || wl[2] != wl[0])) {
            c->len_wrap_mech = mechs[m];
            c->len_wrap_48 = wl[0];
            break;
        }
    }
    if (made) {
        CK_MECHANISM hm = {check_hmac(c), NULL, 0};
        unsigned char mac[48];
        CK_ULONG ml = sizeof(mac);
        CK_RV irv = P11_CALL(s->fl, C_SignInit, s->h, &hm, o[3]);
        CK_RV srv = P11_CALL(s->fl, C_Sign, s->h, (CK_BYTE_PTR) "p11tls", 6, mac, &ml);
        c->hmac_refuses_47 = irv != CKR_OK || srv != CKR_OK;
    }
    for (int i = 0; i < 4; i++)
        (void)P11_CALL(s->fl, C_DestroyObject, s->h, o[i]);
}

int p11_tls_prepare(p11_token *t)
{
    p11_session s;
    CK_OBJECT_HANDLE k;
    CK_RV rv;
    if (t->caps.level == P11_LEVEL_NONE)
        return 1;
    if (!p11_session_get(t, &s))
        return 0;
    rv = p11_handle_key_find(&s, &k, 1);
    if (rv == CKR_OK && t->caps.ms == P11_MS_HMAC) {
        t->caps.aes_cbc_wrap = p11_handle_probe_cbc(&s, k);
        probe_len_wrap(&s, k);
    }
    if (rv == CKR_OK) {
        CK_OBJECT_HANDLE fb;
        rv = fallback_secret(&s, &fb); /* raises its error */
    }
    p11_session_put(&s, rv);
    return rv == CKR_OK; /* wrap_key raised the error */
}

/* ------------------------------------------------------ pre-master secret */

int p11_tls_pms_unwrap(p11_key *k, const unsigned char *ct, size_t ctlen, unsigned client_version,
                       unsigned alt_version, unsigned char handle[P11_TLS_HANDLE_LEN])
{
    p11_token *t = p11_key_token(k);
    p11_session s;
    CK_OBJECT_HANDLE kobj, r = CK_INVALID_HANDLE, p = CK_INVALID_HANDLE, fresh = CK_INVALID_HANDLE;
    CK_MECHANISM rsa = {CKM_RSA_PKCS, NULL, 0};
    CK_ULONG got = 0;
    /* Extractable at `transient` where a wrap-length query checks the length (below):
     * at that level the master secret made from it leaves the token anyway. */
    CK_ATTRIBUTE pt[P11_SECRET_TEMPLATE_N] = {P11_SECRET_TEMPLATE(
        t->caps.ms == P11_MS_HMAC && t->caps.len_wrap_mech != 0 ? &p11_yes : &p11_no)};
    CK_ATTRIBUTE la = {CKA_VALUE_LEN, &got, sizeof(got)};
    p11_reg_value v;
    CK_RV rv, urv;
    unsigned good;

    if (getrandom(handle, P11_TLS_HANDLE_LEN, 0) != P11_TLS_HANDLE_LEN) {
        p11_err(ERR_R_OPERATION_FAIL, "getrandom failed");
        return 0;
    }
    if (!p11_session_get(t, &s))
        return 0;
    rv = p11_key_object(k, &s, &kobj);
    if (rv == CKR_OK && t->caps.ms == P11_MS_HMAC) {
        /* At `transient` the random secret is made afresh, right before the unwrap,
         * so that the calls that follow work on a freshly made object whichever is
         * chosen: with the long-lived stand-in (cold in the token's caches) the
         * bad-padding path ran about 10 us slower on SoftHSM2. (At `sealed` the
         * stand-in is used, measured within the noise on NSS, saving two calls.) */
        CK_MECHANISM gen = {CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
        CK_ULONG len48 = 48;
        CK_ATTRIBUTE rt[P11_SECRET_TEMPLATE_N + 1] = {
            P11_SECRET_TEMPLATE(t->caps.len_wrap_mech != 0 ? &p11_yes : &p11_no),
            {CKA_VALUE_LEN, &len48, sizeof(len48)}};
        rv = P11_CALL(s.fl, C_GenerateKey, s.h, &gen, rt, P11_SECRET_TEMPLATE_N + 1, &r);
        fresh = r;
    } else if (rv == CKR_OK) {
        rv = fallback_secret(&s, &r);
    }
    if (rv != CKR_OK) {
        p11_session_put(&s, rv);
        return fail_ckr("C_GenerateKey", rv, "pre-master secret");
    }
    /* No CKA_VALUE_LEN: tokens differ on it (NSS truncates a longer secret to it,
     * SoftHSM2 refuses it). Whatever this returns, the calls that follow are the
     * same; only the choice of object differs. */
    urv = P11_CALL(s.fl, C_UnwrapKey, s.h, &rsa, kobj, (CK_BYTE_PTR)ct, ctlen, pt,
                   P11_SECRET_TEMPLATE_N, &p);
    if (p11_rv_is_session_loss(urv)) {
        p11_session_put(&s, urv);
        return fail_ckr("C_UnwrapKey", urv, "pre-master secret");
    }
    good = (urv == CKR_OK);
    if (!good)
        p = CK_INVALID_HANDLE;
    if (t->caps.ms == P11_MS_HMAC && t->caps.len_wrap_mech != 0 && t->caps.hmac_refuses_47) {
        /* The two checks below bound the length from both sides: no need to read it
         * (a token property, the same for every message). */
    } else {
        rv = P11_CALL(s.fl, C_GetAttributeValue, s.h, good ? p : r, &la, 1);
        /* A token that does not report the length (SoftHSM2 says 0 for an object
         * unwrapped without CKA_VALUE_LEN, and refuses that attribute) cannot have it
         * checked: see docs/security.md. */
        good &= (rv == CKR_OK) & ((got == 48) | ((got == 0) & (t->caps.ms == P11_MS_HMAC)));
    }
    if (t->caps.ms == P11_MS_HMAC) {
        /* The master secret will be HMAC keyed with this secret, and tokens refuse
         * keys below a minimum size (SoftHSM2: 32 bytes for SHA-256, 48 for
         * SHA-384): a short secret would fail the handshake early, an oracle.
         * Try the chosen object as an HMAC key now; unusable -> the stand-in.
         * The same two calls run whatever the outcome (C_Sign ends an operation
         * C_SignInit started, or fails at once if it did not). */
        CK_MECHANISM hm = {check_hmac(&t->caps), NULL, 0};
        unsigned char mac[48];
        CK_ULONG ml = sizeof(mac);
        CK_RV irv = P11_CALL(s.fl, C_SignInit, s.h, &hm, good ? p : r);
        CK_RV srv = P11_CALL(s.fl, C_Sign, s.h, (CK_BYTE_PTR) "p11tls", 6, mac, &ml);
        OPENSSL_cleanse(mac, sizeof(mac));
        if (p11_rv_is_session_loss(irv) || p11_rv_is_session_loss(srv)) {
            /* closing the lost session (p11_session_put) ends its objects */
            rv = p11_rv_is_session_loss(irv) ? irv : srv;
            p11_session_put(&s, rv);
            return fail_ckr("C_SignInit", rv, "pre-master secret");
        }
        good &= (irv == CKR_OK) & (srv == CKR_OK);
        if (t->caps.len_wrap_mech != 0) {
            /* ... and no longer than 48 bytes: a wrap-length query (no output). */
            CK_MECHANISM wm = {t->caps.len_wrap_mech, NULL, 0};
            CK_OBJECT_HANDLE wk = CK_INVALID_HANDLE;
            CK_ULONG wl = 0;
            CK_RV wrv = p11_handle_key(&s, &wk);
            if (wrv == CKR_OK)
                wrv = P11_CALL(s.fl, C_WrapKey, s.h, &wm, wk, good ? p : r, NULL, &wl);
            if (p11_rv_is_session_loss(wrv)) {
                p11_session_put(&s, wrv);
                return fail_ckr("C_WrapKey", wrv, "pre-master secret");
            }
            good &= (wrv == CKR_OK) & (wl == t->caps.len_wrap_48);
        }
    }

    memset(&v, 0, sizeof(v));
    v.obj[0] = p; /* destroyed after the master secret, whether good or not */
    v.obj[1] = fresh;
    v.flags = good;
    v.client_version = client_version;
    v.alt_version = alt_version;
    if (!p11_registry_put(t->pms, &s, handle, &v)) {
        (void)p11_destroy(&s, p);
        (void)p11_destroy(&s, fresh);
        p11_session_put(&s, CKR_OK);
        p11_err(ERR_R_MALLOC_FAILURE, "pre-master secret registry");
        return 0;
    }
    p11_session_put(&s, CKR_OK);
    return 1;
}

/* ---------------------------------------------------------- master secret */

static CK_RV keep_loss(CK_RV lost, CK_RV rv)
{
    return lost == CKR_OK && p11_rv_is_session_loss(rv) ? rv : lost;
}

static const char *ms_label(int ems)
{
    return ems ? "extended master secret" : "master secret";
}

/* Native TLS 1.2 mechanisms: derive from base; *ver receives the version bytes. */
static CK_RV derive_native(p11_session *s, p11_prf_hash h, int ems, int with_version,
                           CK_OBJECT_HANDLE base, const unsigned char *seed, size_t seedlen,
                           CK_VERSION *ver, CK_OBJECT_HANDLE *ms)
{
    const p11_caps *c = &s->tok->caps;
    CK_MECHANISM_TYPE prf = h == P11_PRF_SHA384 ? CKM_SHA384 : CKM_SHA256;
    CK_ATTRIBUTE t[P11_SECRET_TEMPLATE_N] = {P11_SECRET_TEMPLATE(&p11_yes)};
    P11_TLS12_MASTER_KEY_DERIVE_PARAMS tp;
    P11_NSS_TLS_EXTENDED_MASTER_KEY_DERIVE_PARAMS ep;
    CK_MECHANISM mech;

    if (ems) {
        ep.prfHashMechanism = prf;
        ep.pSessionHash = (CK_BYTE_PTR)seed;
        ep.ulSessionHashLen = seedlen;
        ep.pVersion = with_version ? ver : NULL;
        mech.mechanism = c->std_ems
                             ? (with_version ? P11_CKM_TLS12_EXTENDED_MASTER_KEY_DERIVE
                                             : P11_CKM_TLS12_EXTENDED_MASTER_KEY_DERIVE_DH)
                             : (with_version ? P11_CKM_NSS_TLS_EXTENDED_MASTER_KEY_DERIVE
                                             : P11_CKM_NSS_TLS_EXTENDED_MASTER_KEY_DERIVE_DH);
        mech.pParameter = &ep;
        mech.ulParameterLen = sizeof(ep);
    } else {
        if (seedlen != 64)
            return CKR_MECHANISM_PARAM_INVALID;
        tp.RandomInfo.pClientRandom = (CK_BYTE_PTR)seed;
        tp.RandomInfo.ulClientRandomLen = 32;
        tp.RandomInfo.pServerRandom = (CK_BYTE_PTR)seed + 32;
        tp.RandomInfo.ulServerRandomLen = 32;
        tp.pVersion = with_version ? ver : NULL;
        tp.prfHashMechanism = prf;
        mech.mechanism =
            with_version ? CKM_TLS12_MASTER_KEY_DERIVE : CKM_TLS12_MASTER_KEY_DERIVE_DH;
        mech.pParameter = &tp;
        mech.ulParameterLen = sizeof(tp);
    }
    return P11_CALL(s->fl, C_DeriveKey, s->h, &mech, base, t, P11_SECRET_TEMPLATE_N, ms);
}

/* SP 800-108 double-pipeline KDF with an HMAC PRF: TLS 1.2's P_hash, derived into
 * the token (no counter, no length field; the data is label||seed). */
static CK_RV derive_sp800(p11_session *s, p11_prf_hash h, const unsigned char *ls, size_t lslen,
                          CK_OBJECT_HANDLE base, CK_OBJECT_HANDLE *ms)
{
    CK_ULONG len = 48;
    CK_ATTRIBUTE t[P11_SECRET_TEMPLATE_N + 1] = {P11_SECRET_TEMPLATE(&p11_yes),
                                                 {CKA_VALUE_LEN, &len, sizeof(len)}};
    P11_PRF_DATA_PARAM dp[2] = {{P11_SP800_108_ITERATION_VARIABLE, NULL, 0},
                                {P11_SP800_108_BYTE_ARRAY, (void *)ls, lslen}};
    P11_SP800_108_KDF_PARAMS kp = {p11_hmac_mech(h), 2, dp, 0, NULL};
    CK_MECHANISM mech = {P11_CKM_SP800_108_DOUBLE_PIPELINE_KDF, &kp, sizeof(kp)};
    return P11_CALL(s->fl, C_DeriveKey, s->h, &mech, base, t, P11_SECRET_TEMPLATE_N + 1, ms);
}

int p11_tls_master(p11_token *t, p11_prf_hash h, int ems, const unsigned char *secret,
                   size_t secretlen, const unsigned char *seed, size_t seedlen,
                   unsigned char handle[P11_TLS_HANDLE_LEN])
{
    p11_session s;
    p11_reg_value pv, mv;
    void *ref;
    int is_pms = 0, is_ecdh = 0;
    CK_SESSION_HANDLE ecdh_owner = CK_INVALID_HANDLE;
    CK_OBJECT_HANDLE base = CK_INVALID_HANDLE, ms = CK_INVALID_HANDLE;
    CK_RV rv = CKR_OK;
    const char *call = "C_DeriveKey";
    const char *label = ms_label(ems);
    size_t llen = strlen(label), lslen = llen + seedlen;
    unsigned char *ls = NULL, msb[48];
    int have_msb = 0;
    CK_RV lost = CKR_OK; /* a clean-up call said the session is gone */
    CK_OBJECT_HANDLE stand_in = CK_INVALID_HANDLE;
    unsigned ok = 1, shared = 0;
    unsigned char rnd[P11_TLS_HANDLE_LEN];
    p11_maker mk; /* the master secret is made in the cache's own session */

    if (getrandom(rnd, sizeof(rnd), 0) != sizeof(rnd)) {
        p11_err(ERR_R_OPERATION_FAIL, "getrandom failed");
        return 0;
    }
    if (!p11_session_get(t, &s))
        return 0;
    memset(&pv, 0, sizeof(pv));
    if (secretlen == P11_TLS_HANDLE_LEN &&
        p11_registry_get(t->pms, secret, s.epoch, 1, &pv, &ref)) {
        is_pms = 1;
        /* Bad padding or length: the random secret made with the unwrap
         * (`transient`), else the stand-in. The version is checked below where the
         * token reports it. */
        call = "C_GenerateKey";
        if (pv.obj[1] == CK_INVALID_HANDLE)
            rv = fallback_secret(&s, &stand_in);
        base = pv.flags ? pv.obj[0] : pv.obj[1] != CK_INVALID_HANDLE ? pv.obj[1] : stand_in;
        if (rv == CKR_OK)
            call = "C_DeriveKey";
    } else if (p11_ecdh_take(&s, secret, secretlen, &base, &ecdh_owner)) {
        /* an ECDHE secret derived in the token (ecdh.c): its handle */
        is_ecdh = 1;
        if (t->caps.ms == P11_MS_HMAC && h == P11_PRF_SHA384 && secretlen < 48 &&
            t->caps.hmac384_short_refused) {
            CK_OBJECT_HANDLE longer = CK_INVALID_HANDLE;
            call = "C_WrapKey";
            rv = p11_ecdh_lengthen(&s, base, secretlen, &longer);
            lost = keep_loss(lost, p11_destroy_owned(&s, base, ecdh_owner));
            is_ecdh = 0; /* (the longer one is destroyed as an imported secret is) */
            base = longer;
        }
    } else {
        /* Raw bytes (an ECDHE secret made in software, a client's own pre-master secret): into the
         * token as a sensitive session object. HMAC keys shorter than the block
         * are zero-padded by HMAC itself, so padding to 48 bytes changes nothing
         * and meets tokens' minimum HMAC key sizes. */
        unsigned char pad[48];
        CK_ATTRIBUTE tt[P11_SECRET_TEMPLATE_N + 1] = {P11_SECRET_TEMPLATE(&p11_no),
                                                      {CKA_VALUE, (void *)secret, secretlen}};
        if (secretlen < 48 && t->caps.ms != P11_MS_NATIVE) {
            memset(pad, 0, sizeof(pad));
            memcpy(pad, secret, secretlen);
            tt[P11_SECRET_TEMPLATE_N].pValue = pad;
            tt[P11_SECRET_TEMPLATE_N].ulValueLen = sizeof(pad);
        }
        call = "C_CreateObject";
        rv = P11_CALL(s.fl, C_CreateObject, s.h, tt, P11_SECRET_TEMPLATE_N + 1, &base);
        OPENSSL_cleanse(pad, sizeof(pad));
    }

    memset(&mk, 0, sizeof(mk));
    if (rv == CKR_OK && t->caps.ms == P11_MS_NATIVE) {
        CK_VERSION v1 = {0, 0};
        call = "C_OpenSession";
        rv = p11_registry_make_begin(t->ms, &s, &mk);
        if (rv == CKR_OK) {
            call = "C_DeriveKey";
            rv = derive_native(&mk.s, h, ems, is_pms, base, seed, seedlen, &v1, &ms);
            p11_registry_make_end(t->ms, &mk, rv, ms != CK_INVALID_HANDLE);
        }
        if (rv == CKR_OK && is_pms) {
            /* The version check: acted on after the handle is made, below. */
            unsigned ver = ((unsigned)v1.major << 8) | v1.minor;
            ok = pv.flags &
                 ((ver == pv.client_version) | (pv.alt_version != 0 && ver == pv.alt_version));
        }
    } else if (rv == CKR_OK) {
        ls = malloc(lslen);
        if (ls == NULL) {
            rv = CKR_HOST_MEMORY;
        } else {
            memcpy(ls, label, llen);
            memcpy(ls + llen, seed, seedlen);
        }
        if (rv == CKR_OK && t->caps.ms == P11_MS_SP800_108) {
            call = "C_OpenSession";
            rv = p11_registry_make_begin(t->ms, &s, &mk);
            if (rv == CKR_OK) {
                call = "C_DeriveKey";
                rv = derive_sp800(&mk.s, h, ls, lslen, base, &ms);
                p11_registry_make_end(t->ms, &mk, rv, ms != CK_INVALID_HANDLE);
            }
        } else if (rv == CKR_OK) {
            /* transient: the master secret is HMAC output; it exists in this
             * buffer only until it is back in the token and wrapped. */
            CK_ATTRIBUTE mt[P11_SECRET_TEMPLATE_N + 1] = {P11_SECRET_TEMPLATE(&p11_yes),
                                                          {CKA_VALUE, msb, 48}};
            call = "C_Sign";
            rv = p11_p_hash(&s, h, base, ls, lslen, msb, 48);
            have_msb = rv == CKR_OK;
            if (rv == CKR_OK) {
                call = "C_OpenSession";
                rv = p11_registry_make_begin(t->ms, &s, &mk);
            }
            if (rv == CKR_OK) {
                call = "C_CreateObject";
                rv = P11_CALL(mk.s.fl, C_CreateObject, mk.s.h, mt, P11_SECRET_TEMPLATE_N + 1, &ms);
                p11_registry_make_end(t->ms, &mk, rv, ms != CK_INVALID_HANDLE);
            }
        }
    }
    /* The pre-master secret is no longer needed. */
    if (is_pms) {
        lost = keep_loss(lost, destroy_always(&s, pv.obj[0], pv.owner));
        lost = keep_loss(lost, p11_destroy_owned(&s, pv.obj[1], pv.owner));
    } else if (is_ecdh) {
        lost = keep_loss(lost, p11_destroy_owned(&s, base, ecdh_owner));
    } else {
        lost = keep_loss(lost, p11_destroy(&s, base));
    }
    if (rv == CKR_OK) {
        call = "C_WrapKey";
        rv = p11_handle_make(&s, ms, have_msb ? msb : NULL, handle);
    }
    if (rv == CKR_OK && is_pms && t->caps.ms == P11_MS_NATIVE && !ok) {
        /* Bad padding, length or version: the master secret just derived may be
         * one the client knows. The handshake goes on with the stand-in under a
         * random handle instead, and fails at the client's Finished. That master
         * secret is not kept: it ends with its generation, so no call tells the
         * two paths apart. */
        p11_registry_made_drop(t->ms, &mk);
        ms = stand_in;
        shared = 1;
        memcpy(handle, rnd, sizeof(rnd));
    }
    OPENSSL_cleanse(rnd, sizeof(rnd));
    OPENSSL_cleanse(msb, sizeof(msb));
    if (have_msb && t->scrub)
        p11_scrub_heap(); /* the secret went through the module's buffers */
    if (ls != NULL) {
        OPENSSL_cleanse(ls, lslen);
        free(ls);
    }
    memset(&mv, 0, sizeof(mv));
    mv.obj[0] = ms;
    if (rv == CKR_OK && shared) {
        mv.flags = P11_REG_SHARED;
        (void)p11_registry_put(t->ms, &s, handle, &mv); /* else: a miss, then a failed unwrap */
    } else if (rv == CKR_OK) {
        /* not kept (out of memory): resolvable again from the handle */
        if (!p11_registry_put_made(t->ms, &mk, handle, &mv) && mk.gen < 0)
            (void)p11_destroy(&s, ms);
    } else if (mk.gen >= 0) {
        p11_registry_made_drop(t->ms, &mk);
    } else {
        (void)p11_destroy(&s, ms);
    }
    /* A session the token called lost is closed even if the handshake went on. */
    p11_session_put(&s, rv != CKR_OK ? rv : lost);
    if (rv != CKR_OK)
        return fail_ckr(call, rv, label);
    return 1;
}

/* ------------------------------------------------------------- PRF outputs */

int p11_tls_prf(p11_token *t, p11_prf_hash h, const unsigned char handle[P11_TLS_HANDLE_LEN],
                const unsigned char *labelseed, size_t lslen, unsigned char *out, size_t outlen)
{
    p11_session s;
    CK_RV rv = CKR_OK;
    const char *call = "C_Sign";

    for (int attempt = 0; attempt < 2; attempt++) {
        p11_reg_value v;
        void *ref = NULL;
        CK_OBJECT_HANDLE ms;

        if (!p11_session_get(t, &s))
            return 0;
        if (p11_registry_get(t->ms, handle, s.epoch, 0, &v, &ref)) {
            ms = v.obj[0];
        } else {
            p11_maker mk;
            ms = CK_INVALID_HANDLE;
            call = "C_OpenSession";
            rv = p11_registry_make_begin(t->ms, &s, &mk);
            if (rv == CKR_OK) {
                call = "C_UnwrapKey";
                rv = p11_handle_resolve(&mk.s, handle, &ms);
                p11_registry_make_end(t->ms, &mk, rv, ms != CK_INVALID_HANDLE);
            }
            memset(&v, 0, sizeof(v));
            v.obj[0] = ms;
            if (rv == CKR_OK && p11_registry_put_made(t->ms, &mk, handle, &v)) {
                (void)p11_registry_get(t->ms, handle, mk.s.epoch, 0, &v, &ref);
            } else if (ms != CK_INVALID_HANDLE) {
                if (rv == CKR_OK) /* not kept (out of memory, or its generation lost) */
                    rv = CKR_HOST_MEMORY;
                if (mk.gen >= 0)
                    p11_registry_made_drop(t->ms, &mk);
                else
                    (void)p11_destroy(&s, ms);
            }
        }
        if (rv == CKR_OK) {
            call = "C_Sign";
            if (t->caps.nss_prf_sha256 && h == P11_PRF_SHA256) {
                CK_MECHANISM m = {P11_CKM_NSS_TLS_PRF_GENERAL_SHA256, NULL, 0};
                CK_ULONG len = outlen;
                rv = P11_CALL(s.fl, C_SignInit, s.h, &m, ms);
                if (rv == CKR_OK)
                    rv = P11_CALL(s.fl, C_Sign, s.h, (CK_BYTE_PTR)labelseed, lslen, out, &len);
                if (rv == CKR_OK && len != outlen)
                    rv = CKR_FUNCTION_FAILED;
            } else {
                rv = p11_p_hash(&s, h, ms, labelseed, lslen, out, outlen);
            }
        }
        p11_registry_release(t->ms, &s, ref);
        p11_session_put(&s, rv);
        if (!p11_rv_is_session_loss(rv) && rv != CKR_KEY_HANDLE_INVALID)
            break;
    }
    if (rv != CKR_OK) {
        OPENSSL_cleanse(out, outlen);
        return fail_ckr(call, rv, "TLS PRF");
    }
    return 1;
}

unsigned long p11_tls_live_objects(p11_token *t)
{
    unsigned long g = __atomic_load_n(&t->gen, __ATOMIC_ACQUIRE);
    return p11_registry_objects(t->pms, g) + p11_registry_objects(t->ms, g);
}

int p11_tls_held(p11_token *t, const unsigned char *h, size_t n)
{
    unsigned long ep = p11_token_epoch(t);
    if (n != P11_TLS_HANDLE_LEN)
        return 0;
    if (p11_registry_has(t->pms, h, ep))
        return P11_HELD_ONLY; /* a pre-master secret: only here */
    return p11_registry_has(t->ms, h, ep) ? P11_HELD_CACHED : 0;
}
