/* objects.c - token objects: finding RSA keys by URI (re-found after a
 * re-initialisation), their public half, and the private-key operations
 * (sign, decrypt) each done as one Init + one call in a pooled session. */
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/proverr.h>
#include "internal.h"

const CK_BBOOL p11_yes = CK_TRUE, p11_no = CK_FALSE;
const CK_OBJECT_CLASS p11_secret_class = CKO_SECRET_KEY;
const CK_KEY_TYPE p11_generic_type = CKK_GENERIC_SECRET;

struct p11_key {
    p11_token *tok;
    int refs;
    unsigned char *id;
    size_t id_len;
    char *label;
    CK_OBJECT_HANDLE obj;
    unsigned long gen;
    pthread_mutex_t lock;
    unsigned char *n, *e;
    size_t nlen, elen;
};

CK_RV p11_find_one(p11_session *s, CK_ATTRIBUTE *tmpl, CK_ULONG n, CK_OBJECT_HANDLE *out,
                   CK_ULONG *count)
{
    CK_OBJECT_HANDLE found[2];
    CK_ULONG got = 0;
    CK_RV rv = P11_CALL(s->fl, C_FindObjectsInit, s->h, tmpl, n);
    if (rv != CKR_OK)
        return rv;
    rv = P11_CALL(s->fl, C_FindObjects, s->h, found, 2, &got);
    (void)P11_CALL(s->fl, C_FindObjectsFinal, s->h);
    if (rv != CKR_OK)
        return rv;
    *count = got;
    if (got >= 1)
        *out = found[0];
    return CKR_OK;
}

/* Destroys an object; one the token failed to destroy (and did not lose with its
 * session) is kept and tried again on the session's next use: never leaked. */
CK_RV p11_destroy_owned(p11_session *s, CK_OBJECT_HANDLE h, CK_SESSION_HANDLE owner)
{
    p11_token *t = s->tok;
    CK_RV rv;
    if (h == CK_INVALID_HANDLE)
        return CKR_OK;
    rv = P11_CALL(s->fl, C_DestroyObject, s->h, h);
    /* Even "session handle invalid": the token may say so of a session it still
     * knows, and h may belong to another, live session. If the owner is really
     * gone, closing it drops the entry (p11_session_put). */
    if (rv != CKR_OK && rv != CKR_OBJECT_HANDLE_INVALID) {
        pthread_mutex_lock(&t->lock);
        if (t->npending < P11_PENDING_MAX && t->gen == s->gen) {
            t->pending[t->npending].obj = h;
            t->pending[t->npending].owner = owner;
            t->npending++;
        }
        pthread_mutex_unlock(&t->lock);
    }
    return rv;
}

CK_RV p11_destroy(p11_session *s, CK_OBJECT_HANDLE h)
{
    return p11_destroy_owned(s, h, s->h);
}

void p11_destroy_pending(p11_session *s)
{
    p11_token *t = s->tok;
    struct p11_pending todo[P11_PENDING_MAX];
    unsigned n;
    pthread_mutex_lock(&t->lock);
    n = t->gen == s->gen ? t->npending : 0;
    memcpy(todo, t->pending, n * sizeof(todo[0]));
    t->npending = 0;
    pthread_mutex_unlock(&t->lock);
    for (unsigned i = 0; i < n; i++)
        (void)p11_destroy(s, todo[i].obj);
}

static CK_RV get_attr(p11_session *s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type,
                      unsigned char **val, size_t *len)
{
    CK_ATTRIBUTE a = {type, NULL, 0};
    CK_RV rv = P11_CALL(s->fl, C_GetAttributeValue, s->h, o, &a, 1);
    if (rv != CKR_OK)
        return rv;
    if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION || a.ulValueLen == 0)
        return CKR_ATTRIBUTE_TYPE_INVALID;
    *val = malloc(a.ulValueLen);
    if (*val == NULL)
        return CKR_HOST_MEMORY;
    a.pValue = *val;
    rv = P11_CALL(s->fl, C_GetAttributeValue, s->h, o, &a, 1);
    if (rv != CKR_OK) {
        free(*val);
        *val = NULL;
        return rv;
    }
    *len = a.ulValueLen;
    return CKR_OK;
}

/* Finds the object of class cls that matches the key's id/label. */
static CK_RV find_key_object(p11_session *s, const p11_key *k, CK_OBJECT_CLASS cls,
                             CK_OBJECT_HANDLE *o, CK_ULONG *count)
{
    CK_KEY_TYPE kt = CKK_RSA;
    CK_BBOOL yes = CK_TRUE; /* token objects only: not p11tls's own session copies */
    CK_ATTRIBUTE t[5] = {{CKA_CLASS, &cls, sizeof(cls)},
                         {CKA_KEY_TYPE, &kt, sizeof(kt)},
                         {CKA_TOKEN, &yes, sizeof(yes)}};
    CK_ULONG n = 3;
    if (k->id != NULL)
        t[n++] = (CK_ATTRIBUTE){CKA_ID, k->id, k->id_len};
    if (k->label != NULL)
        t[n++] = (CK_ATTRIBUTE){CKA_LABEL, k->label, strlen(k->label)};
    return p11_find_one(s, t, n, o, count);
}

static const char *key_name(const p11_key *k)
{
    return k->label ? k->label : "(by id)";
}

p11_key *p11_key_find(p11_token *t, const p11_uri *uri)
{
    p11_key *k = calloc(1, sizeof(*k));
    p11_session s;
    CK_ULONG count = 0;
    CK_OBJECT_HANDLE pub;
    CK_RV rv;

    if (k == NULL)
        return NULL;
    k->tok = t;
    k->refs = 1;
    pthread_mutex_init(&k->lock, NULL);
    if (uri->type != NULL && strcmp(uri->type, "private") != 0) {
        p11_err(PROV_R_INVALID_KEY, "key URI: type=%s is not a private key", uri->type);
        goto fail;
    }
    if (!uri->has_id && uri->object == NULL) {
        p11_err(PROV_R_INVALID_KEY, "key URI: needs an id or an object attribute");
        goto fail;
    }
    if (uri->has_id) {
        k->id = malloc(uri->id_len ? uri->id_len : 1);
        if (k->id == NULL)
            goto fail;
        memcpy(k->id, uri->id, uri->id_len);
        k->id_len = uri->id_len;
    }
    if (uri->object != NULL && (k->label = strdup(uri->object)) == NULL)
        goto fail;

    if (!p11_session_get(t, &s))
        goto fail;
    rv = find_key_object(&s, k, CKO_PRIVATE_KEY, &k->obj, &count);
    if (rv != CKR_OK) {
        p11_err_ckr("C_FindObjects", rv, "private key '%s'", key_name(k));
    } else if (count != 1) {
        p11_err(PROV_R_INVALID_KEY, "key URI: %s RSA private key '%s' in token '%s'",
                count ? "more than one" : "no", key_name(k), t->label);
        rv = CKR_GENERAL_ERROR;
    } else {
        k->gen = 0; /* p11_key_object makes the session copy at first use */
        /* The public half: on the private key itself, else on its public key object. */
        if (get_attr(&s, k->obj, CKA_MODULUS, &k->n, &k->nlen) != CKR_OK ||
            get_attr(&s, k->obj, CKA_PUBLIC_EXPONENT, &k->e, &k->elen) != CKR_OK) {
            free(k->n);
            k->n = NULL;
            if (find_key_object(&s, k, CKO_PUBLIC_KEY, &pub, &count) == CKR_OK && count == 1) {
                get_attr(&s, pub, CKA_MODULUS, &k->n, &k->nlen);
                get_attr(&s, pub, CKA_PUBLIC_EXPONENT, &k->e, &k->elen);
            }
        }
        if (k->n == NULL || k->e == NULL) {
            p11_err(PROV_R_INVALID_KEY,
                    "key '%s': its public modulus and exponent cannot "
                    "be read",
                    key_name(k));
            rv = CKR_GENERAL_ERROR;
        }
    }
    p11_session_put(&s, rv);
    if (rv != CKR_OK)
        goto fail;
    return k;
fail:
    p11_key_free(k);
    return NULL;
}

p11_key *p11_key_ref(p11_key *k)
{
    __atomic_add_fetch(&k->refs, 1, __ATOMIC_RELAXED);
    return k;
}

void p11_key_free(p11_key *k)
{
    if (k == NULL || __atomic_sub_fetch(&k->refs, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    free(k->id);
    free(k->label);
    free(k->n);
    free(k->e);
    pthread_mutex_destroy(&k->lock);
    free(k);
}

p11_token *p11_key_token(const p11_key *k)
{
    return k->tok;
}

void p11_key_public(const p11_key *k, const unsigned char **n, size_t *nlen,
                    const unsigned char **e, size_t *elen)
{
    *n = k->n;
    *nlen = k->nlen;
    *e = k->e;
    *elen = k->elen;
}

size_t p11_key_bits(const p11_key *k)
{
    size_t i = 0, bits;
    while (i < k->nlen && k->n[i] == 0)
        i++;
    if (i == k->nlen)
        return 0;
    bits = (k->nlen - i) * 8;
    for (unsigned char c = k->n[i]; !(c & 0x80); c <<= 1)
        bits--;
    return bits;
}

/* With t->owner_lock held: the owner session of s's generation, opened on first use. */
static CK_RV owner_session_locked(p11_session *s)
{
    p11_token *t = s->tok;
    CK_RV rv = CKR_OK;
    if (t->owner_gen != s->gen) {
        rv = P11_CALL(t->fl, C_OpenSession, t->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL,
                      NULL, &t->owner_h);
        if (rv == CKR_OK)
            t->owner_gen = s->gen;
    }
    return rv;
}

CK_OBJECT_HANDLE p11_session_copy(p11_session *s, CK_OBJECT_HANDLE tok)
{
    p11_token *t = s->tok;
    CK_BBOOL no = CK_FALSE;
    CK_ATTRIBUTE a = {CKA_TOKEN, &no, sizeof(no)};
    CK_OBJECT_HANDLE copy = CK_INVALID_HANDLE;
    CK_RV rv;

    pthread_mutex_lock(&t->owner_lock);
    rv = owner_session_locked(s);
    if (rv == CKR_OK)
        rv = P11_CALL(t->fl, C_CopyObject, t->owner_h, tok, &a, 1, &copy);
    pthread_mutex_unlock(&t->owner_lock);
    return rv == CKR_OK ? copy : tok;
}

CK_RV p11_owner_generate(p11_session *s, CK_MECHANISM *mech, CK_ATTRIBUTE *tmpl, CK_ULONG n,
                         CK_OBJECT_HANDLE *out)
{
    p11_token *t = s->tok;
    CK_RV rv;
    pthread_mutex_lock(&t->owner_lock);
    rv = owner_session_locked(s);
    if (rv == CKR_OK)
        rv = P11_CALL(t->fl, C_GenerateKey, t->owner_h, mech, tmpl, n, out);
    pthread_mutex_unlock(&t->owner_lock);
    return rv;
}

CK_RV p11_owner_create(p11_session *s, CK_ATTRIBUTE *tmpl, CK_ULONG n, CK_OBJECT_HANDLE *out)
{
    p11_token *t = s->tok;
    CK_RV rv;
    pthread_mutex_lock(&t->owner_lock);
    rv = owner_session_locked(s);
    if (rv == CKR_OK)
        rv = P11_CALL(t->fl, C_CreateObject, t->owner_h, tmpl, n, out);
    pthread_mutex_unlock(&t->owner_lock);
    return rv;
}

CK_RV p11_owner_derive(p11_session *s, CK_MECHANISM *mech, CK_OBJECT_HANDLE base,
                       CK_ATTRIBUTE *tmpl, CK_ULONG n, CK_OBJECT_HANDLE *out)
{
    p11_token *t = s->tok;
    CK_RV rv;
    pthread_mutex_lock(&t->owner_lock);
    rv = owner_session_locked(s);
    if (rv == CKR_OK)
        rv = P11_CALL(t->fl, C_DeriveKey, t->owner_h, mech, base, tmpl, n, out);
    pthread_mutex_unlock(&t->owner_lock);
    return rv;
}

/* The private key's object handle in this session's generation (re-found, and
 * copied into the owner session, after a fork or a token loss re-initialised the
 * module). */
CK_RV p11_key_object(p11_key *k, p11_session *s, CK_OBJECT_HANDLE *o)
{
    CK_RV rv = CKR_OK;
    CK_ULONG count = 0;
    pthread_mutex_lock(&k->lock);
    if (k->gen != s->gen) {
        rv = find_key_object(s, k, CKO_PRIVATE_KEY, &k->obj, &count);
        if (rv == CKR_OK && count != 1)
            rv = CKR_KEY_HANDLE_INVALID;
        if (rv == CKR_OK) {
            k->obj = p11_session_copy(s, k->obj);
            k->gen = s->gen;
        }
    }
    *o = k->obj;
    pthread_mutex_unlock(&k->lock);
    return rv;
}

/* One private-key operation: Init + one call, in a pooled session; once more in a
 * fresh session if the session or the token was lost meanwhile. */
static int key_op(p11_key *k, int decrypt, CK_MECHANISM *mech, const unsigned char *in,
                  size_t inlen, unsigned char *out, size_t *outlen)
{
    p11_session s;
    CK_RV rv = CKR_OK;
    CK_ULONG olen = 0;
    const char *call = decrypt ? "C_DecryptInit" : "C_SignInit";

    for (int attempt = 0; attempt < 2; attempt++) {
        CK_OBJECT_HANDLE o;
        if (!p11_session_get(k->tok, &s))
            return 0;
        call = decrypt ? "C_DecryptInit" : "C_SignInit";
        olen = *outlen;
        rv = p11_key_object(k, &s, &o);
        if (rv == CKR_OK)
            rv = decrypt ? P11_CALL(s.fl, C_DecryptInit, s.h, mech, o)
                         : P11_CALL(s.fl, C_SignInit, s.h, mech, o);
        if (rv == CKR_OK) {
            call = decrypt ? "C_Decrypt" : "C_Sign";
            rv = decrypt ? P11_CALL(s.fl, C_Decrypt, s.h, (CK_BYTE_PTR)in, inlen, out, &olen)
                         : P11_CALL(s.fl, C_Sign, s.h, (CK_BYTE_PTR)in, inlen, out, &olen);
        }
        p11_session_put(&s, rv);
        if (!p11_rv_is_session_loss(rv))
            break;
    }
    if (rv != CKR_OK) {
        p11_err_ckr(call, rv, "%s with key '%s'", p11_ckm_name(mech->mechanism), key_name(k));
        return 0;
    }
    *outlen = olen;
    return 1;
}

int p11_rsa_sign(p11_key *k, CK_MECHANISM *mech, const unsigned char *in, size_t inlen,
                 unsigned char *sig, size_t *siglen)
{
    return key_op(k, 0, mech, in, inlen, sig, siglen);
}

int p11_rsa_decrypt(p11_key *k, CK_MECHANISM *mech, const unsigned char *in, size_t inlen,
                    unsigned char *out, size_t *outlen)
{
    return key_op(k, 1, mech, in, inlen, out, outlen);
}
