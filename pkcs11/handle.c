/* handle.c - handles: what libssl holds where it believes a secret is. A handle is
 * the secret encrypted under the token's long-lived handle key (one AES-256 token
 * object per token, made once by `p11tls-tool provision`, found again by label),
 * so any process using the same token can resolve it: nginx workers, a restarted
 * server reading tickets. Here: finding and provisioning that key, making a handle
 * from a secret object and a secret object from a handle. A forged handle resolves
 * to a garbage secret: the handshake then fails at Finished. Used by the TLS 1.2
 * code (tls12.c); the caches of resolved objects are the registry's (registry.c). */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/proverr.h>
#include "internal.h"

#define WRAP_LABEL_SEALED "p11tls-ms-wrap-sealed-v1"
#define WRAP_LABEL_TRANSIENT "p11tls-ms-wrap-transient-v2"

static CK_RV find_wrap_keys(p11_session *s, const char *label, CK_OBJECT_HANDLE *objs, CK_ULONG max,
                            CK_ULONG *n)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof(cls)},
                        {CKA_KEY_TYPE, &kt, sizeof(kt)},
                        {CKA_TOKEN, (void *)&p11_yes, sizeof(p11_yes)},
                        {CKA_LABEL, (void *)label, strlen(label)}};
    CK_RV rv = P11_CALL(s->fl, C_FindObjectsInit, s->h, t, 4);
    if (rv != CKR_OK)
        return rv;
    rv = P11_CALL(s->fl, C_FindObjects, s->h, objs, max, n);
    (void)P11_CALL(s->fl, C_FindObjectsFinal, s->h);
    return rv;
}

static const char *wrap_label(const p11_token *t)
{
    return t->caps.ms != P11_MS_HMAC ? WRAP_LABEL_SEALED : WRAP_LABEL_TRANSIENT;
}

/* Creates the token's handle-wrapping key (p11_tls_provision only: a long-lived token
 * object is made on purpose, by whoever owns the token's storage, never as a side
 * effect of serving TLS): generated in the token, or from value (32 bytes: the same key
 * in several tokens, from a backup) with C_CreateObject. */
static CK_RV create_wrap_key(p11_session *s, const unsigned char *value)
{
    p11_token *t = s->tok;
    int sealed = t->caps.ms != P11_MS_HMAC;
    const char *label = wrap_label(t);
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_ULONG len = 32;
    unsigned char id[16];
    CK_MECHANISM mech = {CKM_AES_KEY_GEN, NULL, 0};
    CK_OBJECT_HANDLE mine = CK_INVALID_HANDLE;
    /* sealed: wrap/unwrap only, so nobody can C_Decrypt a handle back into a
     * master secret; transient: wrap (AES-CBC) where the token can, and
     * encrypt/decrypt because HMAC-only tokens cannot unwrap into a secret
     * (at this level the secret passes through p11tls's memory anyway). */
    CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof(cls)},
                           {CKA_KEY_TYPE, &kt, sizeof(kt)},
                           {value != NULL ? CKA_VALUE : CKA_VALUE_LEN,
                            value != NULL ? (void *)value : (void *)&len,
                            value != NULL ? 32 : sizeof(len)},
                           {CKA_TOKEN, (void *)&p11_yes, sizeof(p11_yes)},
                           {CKA_PRIVATE, (void *)&p11_yes, sizeof(p11_yes)},
                           {CKA_SENSITIVE, (void *)&p11_yes, sizeof(p11_yes)},
                           {CKA_EXTRACTABLE, (void *)&p11_no, sizeof(p11_no)},
                           {CKA_LABEL, (void *)label, strlen(label)},
                           {CKA_ID, id, sizeof(id)},
                           {CKA_WRAP, (void *)&p11_yes, sizeof(p11_yes)},
                           {CKA_UNWRAP, (void *)(sealed ? &p11_yes : &p11_no), sizeof(p11_yes)},
                           {CKA_ENCRYPT, (void *)(sealed ? &p11_no : &p11_yes), sizeof(p11_yes)},
                           {CKA_DECRYPT, (void *)(sealed ? &p11_no : &p11_yes), sizeof(p11_yes)}};
    CK_RV rv;

    if (getrandom(id, sizeof(id), 0) != sizeof(id))
        return CKR_FUNCTION_FAILED;
    if (value != NULL)
        rv = P11_CALL(s->fl, C_CreateObject, s->h, tmpl, sizeof(tmpl) / sizeof(tmpl[0]), &mine);
    else
        rv = P11_CALL(s->fl, C_GenerateKey, s->h, &mech, tmpl, sizeof(tmpl) / sizeof(tmpl[0]),
                      &mine);
    if (rv == CKR_OK)
        p11_debug("created token key '%s' in token '%s'%s", label, t->label,
                  value != NULL ? " (from the given value)" : "");
    else
        p11_err_ckr(value != NULL ? "C_CreateObject" : "C_GenerateKey", rv,
                    "creating the handle key '%s' in token '%s'", label, t->label);
    return rv;
}

/* The handle key is not in the token as this process sees it: raised with what
 * this process knows of why (who it runs as, who found the key before). */
static void raise_no_wrap_key(p11_token *t, const char *label, int provisioning_hint)
{
    char who[128];
    p11_whoami(who, sizeof(who));
    if (provisioning_hint)
        p11_err(PROV_R_INVALID_CONFIG_DATA,
                "token '%s' has no handle key '%s' (seen by %s): create it once with "
                "'p11tls-tool provision', as the user that owns the token's storage (see "
                "man p11tls-tool)",
                t->label, label, who);
    else
        p11_err(ERR_R_OPERATION_FAIL,
                "the handle key '%s' is not visible in token '%s' to this process (%s); it was "
                "found when p11tls started (%s): the token's storage is unreachable or was "
                "replaced, or not readable by this process's user (for SoftHSM2: its token "
                "directory and files); p11tls treats the token as lost and re-opens it",
                label, t->label, who, t->opened_by);
}

/* The token's handle-wrapping key, found by label (never created here). Two processes
 * that raced to provision it both left one: the smallest CKA_ID wins, everywhere.
 * Not found at activation: the error says how to provision it. Not found later
 * (a worker after fork, after a token loss): the token is treated as lost, so that
 * it is re-opened and the key found again when the storage is back. */
CK_RV p11_handle_key_find(p11_session *s, CK_OBJECT_HANDLE *out, int at_activation)
{
    p11_token *t = s->tok;
    const char *label = wrap_label(t);
    CK_OBJECT_HANDLE objs[8], best = CK_INVALID_HANDLE;
    unsigned char best_id[16];
    CK_ULONG n = 0;
    CK_RV rv;

    pthread_mutex_lock(&t->wrap_lock);
    if (t->wrap_gen == s->gen && t->wrap_key != CK_INVALID_HANDLE) {
        *out = t->wrap_key;
        pthread_mutex_unlock(&t->wrap_lock);
        return CKR_OK;
    }
    rv = find_wrap_keys(s, label, objs, 8, &n);
    if (rv != CKR_OK)
        p11_err_ckr("C_FindObjects", rv, "looking for the handle key '%s'", label);
    for (CK_ULONG i = 0; rv == CKR_OK && i < n; i++) {
        unsigned char id[16];
        CK_ATTRIBUTE a = {CKA_ID, id, sizeof(id)};
        if (P11_CALL(s->fl, C_GetAttributeValue, s->h, objs[i], &a, 1) != CKR_OK ||
            a.ulValueLen != sizeof(id))
            memset(id, 0xff, sizeof(id));
        if (best == CK_INVALID_HANDLE || memcmp(id, best_id, sizeof(id)) < 0) {
            best = objs[i];
            memcpy(best_id, id, sizeof(id));
        }
    }
    if (rv == CKR_OK && best == CK_INVALID_HANDLE) {
        raise_no_wrap_key(t, label, at_activation);
        rv = at_activation ? CKR_KEY_HANDLE_INVALID : P11_RV_HANDLE_KEY_MISSING;
    }
    if (rv == CKR_OK) {
        t->wrap_key = p11_session_copy(s, best);
        t->wrap_gen = s->gen;
        *out = t->wrap_key;
    }
    pthread_mutex_unlock(&t->wrap_lock);
    return rv;
}

CK_RV p11_handle_key(p11_session *s, CK_OBJECT_HANDLE *out)
{
    return p11_handle_key_find(s, out, 0);
}

/* Does C_WrapKey(CKM_AES_CBC, zero IV) give exactly AES-CBC of a 48-byte secret,
 * so that resolve_handle can undo it? Tried once on a throw-away, readable secret. */
int p11_handle_probe_cbc(p11_session *s, CK_OBJECT_HANDLE k)
{
    CK_MECHANISM gen = {CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
    CK_MECHANISM ecb = {CKM_AES_ECB, NULL, 0};
    unsigned char iv[16] = {0}, val[48], w[96], d[96];
    CK_MECHANISM cbc = {CKM_AES_CBC, iv, sizeof(iv)};
    CK_ULONG len48 = 48, wl = sizeof(w), dl = sizeof(d);
    CK_ATTRIBUTE t[] = {{CKA_CLASS, (void *)&p11_secret_class, sizeof(p11_secret_class)},
                        {CKA_KEY_TYPE, (void *)&p11_generic_type, sizeof(p11_generic_type)},
                        {CKA_TOKEN, (void *)&p11_no, sizeof(p11_no)},
                        {CKA_SENSITIVE, (void *)&p11_no, sizeof(p11_no)},
                        {CKA_EXTRACTABLE, (void *)&p11_yes, sizeof(p11_yes)},
                        {CKA_VALUE_LEN, &len48, sizeof(len48)}};
    CK_ATTRIBUTE va = {CKA_VALUE, val, sizeof(val)};
    CK_OBJECT_HANDLE o = CK_INVALID_HANDLE;
    int ok = 0;

    if (P11_CALL(s->fl, C_GenerateKey, s->h, &gen, t, 6, &o) != CKR_OK)
        return 0;
    if (P11_CALL(s->fl, C_GetAttributeValue, s->h, o, &va, 1) == CKR_OK && va.ulValueLen == 48 &&
        P11_CALL(s->fl, C_WrapKey, s->h, &cbc, k, o, w, &wl) == CKR_OK && wl == 48 &&
        P11_CALL(s->fl, C_DecryptInit, s->h, &ecb, k) == CKR_OK &&
        P11_CALL(s->fl, C_Decrypt, s->h, w, 48, d, &dl) == CKR_OK && dl == 48) {
        for (int i = 47; i >= 16; i--)
            d[i] ^= w[i - 16];
        ok = memcmp(d, val, 48) == 0;
    }
    (void)P11_CALL(s->fl, C_DestroyObject, s->h, o);
    return ok;
}

/* A handle key's fingerprint: its AES-256-ECB encryption of a public 32-byte constant,
 * the first 16 bytes (a known plaintext under the key: it tells keys apart and gives
 * nothing of them). In the token: wrapped (`sealed`, wrap-only keys) or encrypted. */
static const unsigned char fp_const[32] = "p11tls handle key fingerprint v1";

static CK_RV fingerprint(p11_session *s, CK_OBJECT_HANDLE k, unsigned char fp[16])
{
    CK_ULONG len = sizeof(fp_const);
    CK_ATTRIBUTE t[] = {{CKA_CLASS, (void *)&p11_secret_class, sizeof(p11_secret_class)},
                        {CKA_KEY_TYPE, (void *)&p11_generic_type, sizeof(p11_generic_type)},
                        {CKA_TOKEN, (void *)&p11_no, sizeof(p11_no)},
                        {CKA_SENSITIVE, (void *)&p11_no, sizeof(p11_no)},
                        {CKA_EXTRACTABLE, (void *)&p11_yes, sizeof(p11_yes)},
                        {CKA_VALUE, (void *)fp_const, len}};
    CK_MECHANISM ecb = {CKM_AES_ECB, NULL, 0};
    CK_OBJECT_HANDLE o = CK_INVALID_HANDLE;
    unsigned char out[64];
    CK_ULONG ol = sizeof(out);
    CK_RV rv;

    if (s->tok->caps.ms != P11_MS_HMAC) {
        rv = P11_CALL(s->fl, C_CreateObject, s->h, t, 6, &o);
        if (rv == CKR_OK)
            rv = P11_CALL(s->fl, C_WrapKey, s->h, &ecb, k, o, out, &ol);
        if (o != CK_INVALID_HANDLE)
            (void)P11_CALL(s->fl, C_DestroyObject, s->h, o);
    } else {
        rv = P11_CALL(s->fl, C_EncryptInit, s->h, &ecb, k);
        if (rv == CKR_OK)
            rv = P11_CALL(s->fl, C_Encrypt, s->h, (CK_BYTE_PTR)fp_const, len, out, &ol);
    }
    if (rv == CKR_OK && ol < 16)
        rv = CKR_FUNCTION_FAILED;
    if (rv == CKR_OK)
        memcpy(fp, out, 16);
    return rv;
}

int p11_handle_key_fingerprint_of(const unsigned char value[32], unsigned char fp[16])
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    unsigned char out[48];
    int ol = 0, ok = c != NULL && EVP_EncryptInit_ex(c, EVP_aes_256_ecb(), NULL, value, NULL) &&
                     EVP_CIPHER_CTX_set_padding(c, 0) &&
                     EVP_EncryptUpdate(c, out, &ol, fp_const, sizeof(fp_const)) && ol >= 16;
    if (ok)
        memcpy(fp, out, 16);
    EVP_CIPHER_CTX_free(c);
    return ok;
}

int p11_tls_handle_key_fingerprint(p11_token *t, unsigned char fp[16])
{
    p11_session s;
    CK_OBJECT_HANDLE k;
    CK_RV rv;
    if (!p11_session_get(t, &s))
        return 0;
    rv = p11_handle_key_find(&s, &k, 1);
    if (rv == CKR_OK && (rv = fingerprint(&s, k, fp)) != CKR_OK)
        p11_err_ckr("C_WrapKey", rv, "the handle key's fingerprint in token '%s'", t->label);
    p11_session_put(&s, rv);
    return rv == CKR_OK;
}

/* Is the token's handle key the one of value? CKR_OK, CKR_FUNCTION_FAILED if not
 * (raised by the caller), or the failed call's CKR (raised here). */
static CK_RV same_key(p11_session *s, const unsigned char value[32])
{
    unsigned char have[16], want[16];
    CK_OBJECT_HANDLE k;
    CK_RV rv = p11_handle_key_find(s, &k, 1);
    if (rv == CKR_OK && (rv = fingerprint(s, k, have)) != CKR_OK)
        p11_err_ckr("C_WrapKey", rv, "the handle key's fingerprint in token '%s'", s->tok->label);
    if (rv == CKR_OK &&
        (!p11_handle_key_fingerprint_of(value, want) || memcmp(have, want, sizeof(have)) != 0))
        rv = CKR_FUNCTION_FAILED;
    return rv;
}

int p11_tls_provision(p11_token *t, int *created)
{
    return p11_tls_provision_value(t, NULL, created);
}

int p11_tls_provision_value(p11_token *t, const unsigned char *value, int *created)
{
    p11_session s;
    CK_OBJECT_HANDLE objs[1];
    CK_ULONG n = 0;
    CK_RV rv;

    *created = 0;
    if (t->caps.level == P11_LEVEL_NONE) {
        p11_err(PROV_R_INVALID_CONFIG_DATA,
                "token '%s' offers no assurance level (it lacks: %s): no handle key to make",
                t->label, t->caps.missing);
        return 0;
    }
    if (!p11_session_get(t, &s))
        return 0;
    rv = find_wrap_keys(&s, wrap_label(t), objs, 1, &n);
    if (rv != CKR_OK) {
        p11_err_ckr("C_FindObjects", rv, "looking for the handle key '%s'", wrap_label(t));
    } else if (n == 0 && (rv = create_wrap_key(&s, value)) == CKR_OK) {
        *created = 1;
        /* the token holds what was given: checked, not assumed */
        if (value != NULL && (rv = same_key(&s, value)) == CKR_FUNCTION_FAILED)
            p11_err(ERR_R_OPERATION_FAIL,
                    "token '%s': the handle key made from the given value does not encrypt "
                    "as that value does",
                    t->label);
    } else if (n > 0 && value != NULL) {
        /* already there: it must be the same key, else handles would not move */
        if ((rv = same_key(&s, value)) == CKR_FUNCTION_FAILED) {
            p11_err(PROV_R_INVALID_CONFIG_DATA,
                    "token '%s' already has a handle key '%s', and it is not the one given: "
                    "left as it is (handles minted with one do not resolve with the other)",
                    t->label, wrap_label(t));
            rv = CKR_KEY_HANDLE_INVALID;
        }
    }
    p11_session_put(&s, rv);
    return rv == CKR_OK;
}

int p11_tls_handle_key_present(p11_token *t)
{
    p11_session s;
    CK_OBJECT_HANDLE objs[1];
    CK_ULONG n = 0;
    CK_RV rv;

    if (!p11_session_get(t, &s))
        return -1;
    rv = find_wrap_keys(&s, wrap_label(t), objs, 1, &n);
    p11_session_put(&s, rv);
    return rv != CKR_OK ? -1 : n > 0;
}

const char *p11_tls_handle_key_label(const p11_token *t)
{
    return wrap_label(t);
}

/* Secret object of n bytes (32 or 48) -> handle of n bytes. Sealed tokens wrap it
 * with AES-ECB. At `transient` the handle is AES-CBC (zero IV) of the secret:
 * wrapped by the token where it can (the secret does not go back into the token a
 * second time), else chained here over AES-ECB blocks (ms: the bytes, the instant
 * they exist). */
CK_RV p11_handle_make_n(p11_session *s, CK_OBJECT_HANDLE ms_obj, const unsigned char *ms, size_t n,
                        unsigned char *handle)
{
    CK_OBJECT_HANDLE k;
    CK_MECHANISM ecb = {CKM_AES_ECB, NULL, 0};
    unsigned char iv[16] = {0}, buf[96];
    CK_MECHANISM cbc = {CKM_AES_CBC, iv, sizeof(iv)};
    CK_ULONG len = sizeof(buf);
    CK_RV rv = (n == 32 || n == 48) ? p11_handle_key(s, &k) : CKR_ARGUMENTS_BAD;

    if (rv != CKR_OK)
        return rv;
    if (s->tok->caps.ms != P11_MS_HMAC) {
        rv = P11_CALL(s->fl, C_WrapKey, s->h, &ecb, k, ms_obj, buf, &len);
    } else if (s->tok->caps.aes_cbc_wrap) {
        rv = P11_CALL(s->fl, C_WrapKey, s->h, &cbc, k, ms_obj, buf, &len);
    } else {
        CK_RV irv = rv = P11_CALL(s->fl, C_EncryptInit, s->h, &ecb, k);
        for (size_t i = 0; rv == CKR_OK && i < n / 16; i++) {
            unsigned char blk[16];
            CK_ULONG bl = 16;
            for (int j = 0; j < 16; j++)
                blk[j] = ms[16 * i + j] ^ (i ? buf[16 * (i - 1) + j] : 0);
            rv = P11_CALL(s->fl, C_EncryptUpdate, s->h, blk, 16, buf + 16 * i, &bl);
            OPENSSL_cleanse(blk, sizeof(blk));
            if (rv == CKR_OK && bl != 16)
                rv = CKR_FUNCTION_FAILED;
        }
        if (irv == CKR_OK) { /* also ends the operation after a failed update */
            unsigned char last[16];
            CK_ULONG fl = sizeof(last);
            CK_RV frv = P11_CALL(s->fl, C_EncryptFinal, s->h, last, &fl);
            if (rv == CKR_OK)
                rv = frv;
        }
        len = n;
    }
    if (rv == CKR_OK && len != n)
        rv = CKR_WRAPPED_KEY_LEN_RANGE;
    if (rv == CKR_OK)
        memcpy(handle, buf, n);
    return rv;
}

CK_RV p11_handle_make(p11_session *s, CK_OBJECT_HANDLE ms_obj, const unsigned char *ms,
                      unsigned char handle[48])
{
    return p11_handle_make_n(s, ms_obj, ms, 48, handle);
}

/* Handle of n bytes -> a new secret object (registry miss: another process, a
 * restart, an evicted entry), made in s (a generation's session). A failure may
 * still leave an object in *ms: the caller's to account for. */
CK_RV p11_handle_resolve_n(p11_session *s, const unsigned char *handle, size_t n,
                           CK_OBJECT_HANDLE *ms)
{
    CK_OBJECT_HANDLE k;
    CK_MECHANISM ecb = {CKM_AES_ECB, NULL, 0};
    CK_ULONG vlen = n;
    CK_RV rv = (n == 32 || n == 48) ? p11_handle_key(s, &k) : CKR_ARGUMENTS_BAD;

    if (rv != CKR_OK)
        return rv;
    if (s->tok->caps.ms != P11_MS_HMAC) {
        CK_ATTRIBUTE t[P11_SECRET_TEMPLATE_N + 1] = {P11_SECRET_TEMPLATE(&p11_yes),
                                                     {CKA_VALUE_LEN, &vlen, sizeof(vlen)}};
        CK_ULONG got = 0;
        CK_ATTRIBUTE a = {CKA_VALUE_LEN, &got, sizeof(got)};
        rv = P11_CALL(s->fl, C_UnwrapKey, s->h, &ecb, k, (CK_BYTE_PTR)handle, n, t,
                      P11_SECRET_TEMPLATE_N + 1, ms);
        /* Some tokens silently accept a wrong length: insist on n. */
        if (rv == CKR_OK &&
            (P11_CALL(s->fl, C_GetAttributeValue, s->h, *ms, &a, 1) != CKR_OK || got != n))
            rv = CKR_WRAPPED_KEY_INVALID;
        return rv;
    } else {
        unsigned char buf[64];
        CK_ATTRIBUTE t[P11_SECRET_TEMPLATE_N + 1] = {P11_SECRET_TEMPLATE(&p11_yes),
                                                     {CKA_VALUE, buf, n}};
        rv = p11_handle_open_n(s, handle, n, buf);
        if (rv == CKR_OK)
            rv = P11_CALL(s->fl, C_CreateObject, s->h, t, P11_SECRET_TEMPLATE_N + 1, ms);
        OPENSSL_cleanse(buf, sizeof(buf));
        if (s->tok->scrub)
            p11_scrub_heap(); /* the secret went through the module's buffers */
        return rv;
    }
}

/* transient only: the secret behind a handle of n bytes, decrypted into buf (its
 * bytes pass through this memory at that level anyway). */
CK_RV p11_handle_open_n(p11_session *s, const unsigned char *handle, size_t n, unsigned char *buf)
{
    CK_OBJECT_HANDLE k;
    CK_MECHANISM ecb = {CKM_AES_ECB, NULL, 0};
    unsigned char tmp[64];
    CK_ULONG len = sizeof(tmp);
    CK_RV rv = (n == 32 || n == 48) && s->tok->caps.ms == P11_MS_HMAC ? p11_handle_key(s, &k)
                                                                      : CKR_ARGUMENTS_BAD;
    if (rv == CKR_OK)
        rv = P11_CALL(s->fl, C_DecryptInit, s->h, &ecb, k);
    if (rv == CKR_OK)
        rv = P11_CALL(s->fl, C_Decrypt, s->h, (CK_BYTE_PTR)handle, n, tmp, &len);
    if (rv == CKR_OK && len != n)
        rv = CKR_WRAPPED_KEY_INVALID;
    for (int i = (int)n - 1; rv == CKR_OK && i >= 16; i--) /* CBC: P(i) = D(C(i)) ^ C(i-1) */
        tmp[i] ^= handle[i - 16];
    if (rv == CKR_OK)
        memcpy(buf, tmp, n);
    OPENSSL_cleanse(tmp, sizeof(tmp));
    return rv;
}

CK_RV p11_handle_resolve(p11_session *s, const unsigned char handle[48], CK_OBJECT_HANDLE *ms)
{
    return p11_handle_resolve_n(s, handle, 48, ms);
}
