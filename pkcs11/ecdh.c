/* ecdh.c - ECDHE in the token: the ephemeral key pair is generated there (session
 * objects; the private half sensitive and not extractable) and the shared secret is
 * derived there with CKM_ECDH1_DERIVE into a sensitive session object. libssl gets,
 * where it expects the shared secret, a handle of the secret's length: random bytes
 * that only this process's pre-master table resolves. The next step of the key
 * schedule (TLS 1.2's master secret, TLS 1.3's handshake secret) takes the object
 * from the table, derives from it and destroys it; the private key is destroyed when
 * libssl frees the key pair. Curves: the NIST ones a token's EC mechanisms cover. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/proverr.h>
#include "internal.h"

static const struct curve {
    const char *names[3]; /* OpenSSL's names: the first is the NIST one */
    unsigned char oid[10];
    size_t oidlen;
    size_t flen;
} curves[P11_CURVE_N] = {
    {{"P-256", "prime256v1", "secp256r1"},
     {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07},
     10,
     32},
    {{"P-384", "secp384r1", NULL}, {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22}, 7, 48},
    {{"P-521", "secp521r1", NULL}, {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23}, 7, 66},
};

struct p11_eckey {
    p11_token *t;
    p11_curve c;
    CK_OBJECT_HANDLE priv;
    unsigned long epoch; /* objects of an older epoch are gone: never destroyed */
    unsigned char point[1 + 2 * 66];
    size_t plen;
};

int p11_curve_from_name(const char *name)
{
    for (int c = 0; name != NULL && c < P11_CURVE_N; c++)
        for (int i = 0; i < 3; i++)
            if (curves[c].names[i] != NULL && strcasecmp(name, curves[c].names[i]) == 0)
                return c;
    return -1;
}

const char *p11_curve_name(p11_curve c)
{
    return curves[c].names[0];
}

size_t p11_curve_field_len(p11_curve c)
{
    return curves[c].flen;
}

/* The table key of an ECDH secret's handle (n bytes, random): masked so that it
 * never meets an RSA pre-master secret's handle (keys as they are). */
static void ecdh_key(const unsigned char *h, size_t n, unsigned char key[48])
{
    size_t m = n < 48 ? n : 48;
    for (size_t i = 0; i < m; i++)
        key[i] = h[i] ^ 0x3c;
    if (m < 48)
        memset(key + m, 0x77, 48 - m);
}

int p11_ec_point_from_attr(const unsigned char *a, size_t alen, size_t flen, unsigned char *out)
{
    size_t want = 1 + 2 * flen, off = 0, len;
    if (alen == want && a[0] == 0x04) {
        memcpy(out, a, want);
        return 1;
    }
    if (alen < 2 || a[0] != 0x04)
        return 0;
    if (a[1] < 0x80) {
        len = a[1];
        off = 2;
    } else if (a[1] == 0x81 && alen >= 3) {
        len = a[2];
        off = 3;
    } else {
        return 0;
    }
    if (len != want || off + len != alen || a[off] != 0x04)
        return 0;
    memcpy(out, a + off, want);
    return 1;
}

static CK_RV keygen(p11_session *s, p11_curve c, CK_OBJECT_HANDLE *priv, unsigned char *point)
{
    const struct curve *cv = &curves[c];
    CK_MECHANISM m = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    CK_ATTRIBUTE pubt[] = {{CKA_EC_PARAMS, (void *)cv->oid, cv->oidlen},
                           {CKA_TOKEN, (void *)&p11_no, sizeof(p11_no)}};
    CK_ATTRIBUTE privt[] = {{CKA_TOKEN, (void *)&p11_no, sizeof(p11_no)},
                            {CKA_PRIVATE, (void *)&p11_yes, sizeof(p11_yes)},
                            {CKA_SENSITIVE, (void *)&p11_yes, sizeof(p11_yes)},
                            {CKA_EXTRACTABLE, (void *)&p11_no, sizeof(p11_no)},
                            {CKA_DERIVE, (void *)&p11_yes, sizeof(p11_yes)}};
    unsigned char buf[8 + 1 + 2 * 66];
    CK_ATTRIBUTE pa = {CKA_EC_POINT, buf, sizeof(buf)};
    CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE;
    CK_RV rv;

    *priv = CK_INVALID_HANDLE;
    rv = P11_CALL(s->fl, C_GenerateKeyPair, s->h, &m, pubt, 2, privt, 5, &pub, priv);
    if (rv == CKR_OK) {
        rv = P11_CALL(s->fl, C_GetAttributeValue, s->h, pub, &pa, 1);
        if (rv == CKR_OK && !p11_ec_point_from_attr(buf, pa.ulValueLen, cv->flen, point))
            rv = CKR_ATTRIBUTE_VALUE_INVALID;
    }
    if (pub != CK_INVALID_HANDLE)
        (void)p11_destroy(s, pub); /* the point is read: the public object is done */
    if (rv != CKR_OK && *priv != CK_INVALID_HANDLE) {
        (void)p11_destroy(s, *priv);
        *priv = CK_INVALID_HANDLE;
    }
    return rv;
}

static CK_RV derive(p11_session *s, p11_curve c, CK_OBJECT_HANDLE priv, const unsigned char *peer,
                    size_t plen, CK_OBJECT_HANDLE *out)
{
    CK_ECDH1_DERIVE_PARAMS p = {CKD_NULL, 0, NULL, plen, (CK_BYTE_PTR)peer};
    CK_MECHANISM m = {CKM_ECDH1_DERIVE, &p, sizeof(p)};
    CK_ULONG len = curves[c].flen;
    /* extractable as what is derived from it must be (its handles are wraps) */
    CK_ATTRIBUTE t[P11_SECRET_TEMPLATE_N + 1] = {P11_SECRET_TEMPLATE(&p11_yes),
                                                 {CKA_VALUE_LEN, &len, sizeof(len)}};
    return P11_CALL(s->fl, C_DeriveKey, s->h, &m, priv, t, P11_SECRET_TEMPLATE_N + 1, out);
}

int p11_ecdh_probe(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE h, p11_token *t, p11_curve c)
{
    p11_session s = {.tok = t, .fl = fl, .h = h};
    CK_OBJECT_HANDLE a = CK_INVALID_HANDLE, b = CK_INVALID_HANDLE, za = CK_INVALID_HANDLE,
                     zb = CK_INVALID_HANDLE;
    unsigned char pa[1 + 2 * 66], pb[1 + 2 * 66], ha[32], hb[32];
    static const unsigned char salt[32];
    size_t plen = 1 + 2 * curves[c].flen;
    CK_MECHANISM_INFO gi, di;
    int ok;
    /* (a token, or an RPC, that does not list the mechanisms: no key pairs made) */
    if (P11_CALL(fl, C_GetMechanismInfo, t->slot, CKM_EC_KEY_PAIR_GEN, &gi) != CKR_OK ||
        P11_CALL(fl, C_GetMechanismInfo, t->slot, CKM_ECDH1_DERIVE, &di) != CKR_OK ||
        !(gi.flags & CKF_GENERATE_KEY_PAIR) || !(di.flags & CKF_DERIVE))
        return 0;
    ok = keygen(&s, c, &a, pa) == CKR_OK && keygen(&s, c, &b, pb) == CKR_OK &&
         derive(&s, c, a, pb, plen, &za) == CKR_OK;
    /* At `transient` TLS 1.3 takes the secret as HMAC data through C_DigestKey: both
     * sides' secrets, digested so, must agree. */
    if (ok && t->caps.tls13 == P11_MS_HMAC)
        ok = derive(&s, c, b, pa, plen, &zb) == CKR_OK &&
             p11_hmac_of_object(&s, P11_PRF_SHA256, salt, sizeof(salt), za, ha) == CKR_OK &&
             p11_hmac_of_object(&s, P11_PRF_SHA256, salt, sizeof(salt), zb, hb) == CKR_OK &&
             memcmp(ha, hb, sizeof(ha)) == 0;
    /* At `transient` TLS 1.2 keys HMAC with the secret: does SHA-384 take a short one? */
    if (ok && t->caps.ms == P11_MS_HMAC && curves[c].flen < 48) {
        CK_MECHANISM hm = {CKM_SHA384_HMAC, NULL, 0};
        unsigned char mac[48];
        CK_ULONG ml = sizeof(mac);
        CK_RV rv = P11_CALL(fl, C_SignInit, h, &hm, za);
        if (rv == CKR_OK)
            rv = P11_CALL(fl, C_Sign, h, (CK_BYTE_PTR) "p11tls", 6, mac, &ml);
        t->caps.hmac384_short_refused = rv != CKR_OK;
        OPENSSL_cleanse(mac, sizeof(mac));
    }
    CK_OBJECT_HANDLE objs[4] = {a, b, za, zb};
    for (int i = 0; i < 4; i++)
        if (objs[i] != CK_INVALID_HANDLE)
            (void)P11_CALL(fl, C_DestroyObject, h, objs[i]);
    OPENSSL_cleanse(ha, sizeof(ha));
    OPENSSL_cleanse(hb, sizeof(hb));
    return ok;
}

static int fail(const char *call, CK_RV rv, const char *what, p11_curve c)
{
    p11_err_ckr(call, rv, "ECDHE (%s) %s", curves[c].names[0], what);
    return 0;
}

p11_eckey *p11_ecdh_keygen(p11_token *t, p11_curve c)
{
    p11_eckey *k;
    p11_session s;
    CK_RV rv;

    if (c < 0 || c >= P11_CURVE_N || !t->caps.ecdh[c]) {
        p11_err(ERR_R_PASSED_INVALID_ARGUMENT, "ECDHE: the token cannot do this curve");
        return NULL;
    }
    if ((k = calloc(1, sizeof(*k))) == NULL)
        return NULL;
    if (!p11_session_get(t, &s)) {
        free(k);
        return NULL;
    }
    rv = keygen(&s, c, &k->priv, k->point);
    k->epoch = s.epoch;
    p11_session_put(&s, rv);
    if (rv != CKR_OK) {
        free(k);
        fail("C_GenerateKeyPair", rv, "ephemeral key pair", c);
        return NULL;
    }
    k->t = t;
    k->c = c;
    k->plen = 1 + 2 * curves[c].flen;
    return k;
}

void p11_eckey_free(p11_eckey *k)
{
    p11_session s;
    if (k == NULL)
        return;
    ERR_set_mark(); /* a free reports nothing (nor hides what the caller reports) */
    /* (an object of an older epoch ended with a fork or a token loss) */
    if (k->priv != CK_INVALID_HANDLE && k->epoch == p11_token_epoch(k->t) &&
        p11_session_get(k->t, &s)) {
        CK_RV rv = s.epoch == k->epoch ? p11_destroy(&s, k->priv) : CKR_OK;
        p11_session_put(&s, rv);
    }
    ERR_pop_to_mark();
    free(k);
}

p11_curve p11_eckey_curve(const p11_eckey *k)
{
    return k->c;
}

const unsigned char *p11_eckey_point(const p11_eckey *k, size_t *len)
{
    *len = k->plen;
    return k->point;
}

int p11_ecdh_derive(p11_eckey *k, const unsigned char *peer, size_t peerlen, unsigned char *out)
{
    p11_token *t = k->t;
    size_t flen = curves[k->c].flen;
    CK_OBJECT_HANDLE z = CK_INVALID_HANDLE;
    unsigned char key[48];
    p11_reg_value v;
    p11_session s;
    CK_RV rv;

    if (peerlen != 1 + 2 * flen || peer[0] != 0x04) {
        p11_err(ERR_R_PASSED_INVALID_ARGUMENT,
                "ECDHE (%s): the peer's point is not an "
                "uncompressed point of the curve",
                curves[k->c].names[0]);
        return 0;
    }
    if (getrandom(out, flen, 0) != (ssize_t)flen) {
        p11_err(ERR_R_OPERATION_FAIL, "getrandom failed");
        return 0;
    }
    if (!p11_session_get(t, &s))
        return 0;
    rv =
        s.epoch == k->epoch ? derive(&s, k->c, k->priv, peer, peerlen, &z) : CKR_KEY_HANDLE_INVALID;
    if (rv == CKR_OK) {
        memset(&v, 0, sizeof(v));
        v.obj[0] = z;
        v.flags = P11_REG_ECDH;
        ecdh_key(out, flen, key);
        if (!p11_registry_put(t->pms, &s, key, &v)) {
            (void)p11_destroy(&s, z);
            rv = CKR_HOST_MEMORY;
        }
    }
    p11_session_put(&s, rv);
    if (rv != CKR_OK) {
        OPENSSL_cleanse(out, flen);
        return fail("C_DeriveKey", rv, "shared secret", k->c);
    }
    return 1;
}

int p11_ecdh_take(p11_session *s, const unsigned char *h, size_t n, CK_OBJECT_HANDLE *obj,
                  CK_SESSION_HANDLE *owner)
{
    unsigned char key[48];
    p11_reg_value v;
    void *ref = NULL;
    int c;

    for (c = 0; c < P11_CURVE_N && curves[c].flen != n; c++)
        ;
    if (c == P11_CURVE_N || !s->tok->caps.ecdh[c])
        return 0;
    ecdh_key(h, n, key);
    if (!p11_registry_get(s->tok->pms, key, s->epoch, 1, &v, &ref))
        return 0;
    if (v.flags != P11_REG_ECDH) { /* (not ours: cannot happen with masked keys) */
        (void)p11_destroy_owned(s, v.obj[0], v.owner);
        return 0;
    }
    *obj = v.obj[0];
    *owner = v.owner;
    return 1;
}

/* TLS 1.2 at `transient` with a SHA-384 suite over a curve whose secret is shorter
 * than the token's smallest HMAC-SHA-384 key (SoftHSM2: 48 bytes, P-256: 32): the
 * secret cannot key the PRF as it is, and the token has no way to lengthen it. HMAC
 * zero-pads a short key, so the secret padded to 48 bytes keys the same PRF: it is
 * read out of the token (wrapped under the handle key, decrypted), padded, and put
 * back as a new object in *out. The one case where an in-token ECDHE secret crosses
 * the API; with 'ecdhe = require' it is refused instead. */
CK_RV p11_ecdh_lengthen(p11_session *s, CK_OBJECT_HANDLE z, size_t n, CK_OBJECT_HANDLE *out)
{
    unsigned char wrapped[48], pad[48];
    CK_ATTRIBUTE tt[P11_SECRET_TEMPLATE_N + 1] = {P11_SECRET_TEMPLATE(&p11_no),
                                                  {CKA_VALUE, pad, sizeof(pad)}};
    CK_RV rv;

    *out = CK_INVALID_HANDLE;
    if (s->tok->ecdhe_strict || !s->tok->caps.aes_cbc_wrap || n != 32) {
        p11_err(PROV_R_INVALID_KEY_LENGTH,
                "ECDHE: the TLS 1.2 SHA-384 PRF needs the %zu-byte shared secret as an HMAC "
                "key of 48 bytes, which this token cannot make from it without reading it "
                "out%s",
                n, s->tok->ecdhe_strict ? "; 'ecdhe = require' refuses that" : "");
        return CKR_KEY_SIZE_RANGE;
    }
    memset(pad, 0, sizeof(pad));
    rv = p11_handle_make_n(s, z, NULL, n, wrapped);
    if (rv == CKR_OK)
        rv = p11_handle_open_n(s, wrapped, n, pad);
    if (rv == CKR_OK)
        rv = P11_CALL(s->fl, C_CreateObject, s->h, tt, P11_SECRET_TEMPLATE_N + 1, out);
    OPENSSL_cleanse(pad, sizeof(pad));
    OPENSSL_cleanse(wrapped, sizeof(wrapped));
    if (s->tok->scrub)
        p11_scrub_heap();
    return rv;
}

int p11_ecdh_held(p11_token *t, const unsigned char *h, size_t n)
{
    unsigned char key[48];
    if (n == 0 || n > 66)
        return 0;
    ecdh_key(h, n, key);
    return p11_registry_has(t->pms, key, p11_token_epoch(t)) ? P11_HELD_ONLY : 0;
}

p11_token *p11_eckey_token(const p11_eckey *k)
{
    return k->t;
}
