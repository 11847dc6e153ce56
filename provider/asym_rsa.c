/* asym_rsa.c - RSA decryption with a token key. For TLS key exchange
 * (RSA_PKCS1_WITH_TLS_PADDING) the pre-master secret is unwrapped into the
 * token and libssl gets a 48-byte handle; every ciphertext that is publicly
 * valid gives a handle, whatever its padding or version (RFC 5246 7.4.7.1).
 * PKCS#1 v1.5 and OAEP decryption for general callers; encryption is a public
 * operation and runs in software on the public half. */
#include <string.h>
#include <openssl/params.h>
#include <openssl/rsa.h>
#include "provider.h"

static OSSL_FUNC_asym_cipher_newctx_fn enc_newctx;
static OSSL_FUNC_asym_cipher_freectx_fn enc_freectx;
static OSSL_FUNC_asym_cipher_dupctx_fn enc_dupctx;
static OSSL_FUNC_asym_cipher_encrypt_init_fn enc_encrypt_init;
static OSSL_FUNC_asym_cipher_encrypt_fn enc_encrypt;
static OSSL_FUNC_asym_cipher_decrypt_init_fn enc_decrypt_init;
static OSSL_FUNC_asym_cipher_decrypt_fn enc_decrypt;
static OSSL_FUNC_asym_cipher_set_ctx_params_fn enc_set_ctx_params;
static OSSL_FUNC_asym_cipher_settable_ctx_params_fn enc_settable_ctx_params;
static OSSL_FUNC_asym_cipher_get_ctx_params_fn enc_get_ctx_params;
static OSSL_FUNC_asym_cipher_gettable_ctx_params_fn enc_gettable_ctx_params;

typedef struct {
    P11TLS_PROV *prov;
    P11TLS_KEY *key;
    int pad;
    unsigned client_version, alt_version;
    char oaep_md[32], mgf1_md[32];
    unsigned char *label;
    size_t label_len;
} ENCCTX;

static void *enc_newctx(void *provctx)
{
    ENCCTX *c = OPENSSL_zalloc(sizeof(*c));
    if (c != NULL) {
        c->prov = provctx;
        c->pad = RSA_PKCS1_PADDING;
    }
    return c;
}

static void enc_freectx(void *vctx)
{
    ENCCTX *c = vctx;
    if (c == NULL)
        return;
    OPENSSL_free(c->label);
    OPENSSL_free(c);
}

static void *enc_dupctx(void *vctx)
{
    ENCCTX *c = vctx, *d = OPENSSL_memdup(c, sizeof(*c));
    if (d != NULL && c->label != NULL &&
        (d->label = OPENSSL_memdup(c->label, c->label_len)) == NULL) {
        OPENSSL_free(d);
        return NULL;
    }
    return d;
}

static int enc_init(ENCCTX *c, void *provkey, const OSSL_PARAM params[])
{
    c->key = provkey;
    if (c->key == NULL || c->key->pub == NULL) {
        ERR_raise(ERR_LIB_PROV, PROV_R_NO_KEY_SET);
        return 0;
    }
    c->pad = RSA_PKCS1_PADDING;
    c->client_version = c->alt_version = 0;
    return enc_set_ctx_params(c, params);
}

static int enc_encrypt_init(void *vctx, void *provkey, const OSSL_PARAM params[])
{
    return enc_init(vctx, provkey, params);
}

static int enc_decrypt_init(void *vctx, void *provkey, const OSSL_PARAM params[])
{
    return enc_init(vctx, provkey, params);
}

static int enc_encrypt(void *vctx, unsigned char *out, size_t *outlen, size_t outsize,
                       const unsigned char *in, size_t inlen)
{
    ENCCTX *c = vctx;
    EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new_from_pkey(c->prov->libctx, c->key->pub, NULL);
    int ok = 0;

    if (pctx == NULL || EVP_PKEY_encrypt_init(pctx) <= 0 ||
        EVP_PKEY_CTX_set_rsa_padding(pctx, c->pad) <= 0)
        goto end;
    if (c->pad == RSA_PKCS1_OAEP_PADDING &&
        ((c->oaep_md[0] && EVP_PKEY_CTX_set_rsa_oaep_md_name(pctx, c->oaep_md, NULL) <= 0) ||
         (c->mgf1_md[0] && EVP_PKEY_CTX_set_rsa_mgf1_md_name(pctx, c->mgf1_md, NULL) <= 0)))
        goto end;
    if (c->label != NULL) {
        unsigned char *l = OPENSSL_memdup(c->label, c->label_len);
        if (l == NULL || EVP_PKEY_CTX_set0_rsa_oaep_label(pctx, l, (int)c->label_len) <= 0) {
            OPENSSL_free(l);
            goto end;
        }
    }
    *outlen = outsize;
    ok = EVP_PKEY_encrypt(pctx, out, outlen, in, inlen) > 0;
end:
    EVP_PKEY_CTX_free(pctx);
    return ok;
}

static CK_MECHANISM_TYPE hash_mech(const char *name, CK_RSA_PKCS_MGF_TYPE *mgf)
{
    static const struct {
        const char *n;
        CK_MECHANISM_TYPE m;
        CK_RSA_PKCS_MGF_TYPE g;
    } t[] = {{"SHA1", CKM_SHA_1, CKG_MGF1_SHA1},        {"SHA-1", CKM_SHA_1, CKG_MGF1_SHA1},
             {"SHA256", CKM_SHA256, CKG_MGF1_SHA256},   {"SHA2-256", CKM_SHA256, CKG_MGF1_SHA256},
             {"SHA-256", CKM_SHA256, CKG_MGF1_SHA256},  {"SHA384", CKM_SHA384, CKG_MGF1_SHA384},
             {"SHA2-384", CKM_SHA384, CKG_MGF1_SHA384}, {"SHA-384", CKM_SHA384, CKG_MGF1_SHA384},
             {"SHA512", CKM_SHA512, CKG_MGF1_SHA512},   {"SHA2-512", CKM_SHA512, CKG_MGF1_SHA512},
             {"SHA-512", CKM_SHA512, CKG_MGF1_SHA512}};
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        if (OPENSSL_strcasecmp(name, t[i].n) == 0) {
            *mgf = t[i].g;
            return t[i].m;
        }
    return CKM_VENDOR_DEFINED;
}

static int enc_decrypt(void *vctx, unsigned char *out, size_t *outlen, size_t outsize,
                       const unsigned char *in, size_t inlen)
{
    ENCCTX *c = vctx;
    const unsigned char *n, *e;
    size_t nlen, elen, modlen;
    unsigned char *buf = NULL;
    int ok = 0;

    if (c->key->tok == NULL) {
        ERR_raise_data(ERR_LIB_PROV, PROV_R_NOT_A_PRIVATE_KEY,
                       "p11tls: decryption needs a token key");
        return 0;
    }
    p11_pool_key_public(c->key->tok, &n, &nlen, &e, &elen);
    while (nlen > 0 && *n == 0)
        n++, nlen--;
    modlen = nlen;
    if (c->pad == RSA_PKCS1_WITH_TLS_PADDING) {
        if (out == NULL) {
            *outlen = P11_TLS_HANDLE_LEN;
            return 1;
        }
        if (outsize < P11_TLS_HANDLE_LEN) {
            ERR_raise(ERR_LIB_PROV, PROV_R_OUTPUT_BUFFER_TOO_SMALL);
            return 0;
        }
    } else if (out == NULL) {
        *outlen = modlen;
        return 1;
    }
    /* Publicly invalid input reveals nothing and is an error (decrypt_error), as with
     * OpenSSL's own RSA: longer than the modulus, or not below it. */
    if (inlen > modlen || (inlen == modlen && memcmp(in, n, modlen) >= 0)) {
        ERR_raise(ERR_LIB_PROV, PROV_R_BAD_DECRYPT);
        return 0;
    }
    if (inlen < modlen) { /* shorter: left-pad with zeros, as OpenSSL does */
        buf = OPENSSL_zalloc(modlen);
        if (buf == NULL)
            return 0;
        memcpy(buf + modlen - inlen, in, inlen);
        in = buf;
        inlen = modlen;
    }
    if (c->pad == RSA_PKCS1_WITH_TLS_PADDING && !p11tls_routing_ok(c->prov)) {
        /* key-only: the handle would reach another provider's PRF (bad_record_mac) */
        ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_CONFIG_DATA,
                       "p11tls: RSA key exchange keeps the pre-master secret in the token and "
                       "needs p11tls's TLS1-PRF ('default_properties = ?provider=p11tls'); "
                       "use ECDHE suites with 'min-assurance = key-only'");
        ok = 0;
    } else if (c->pad == RSA_PKCS1_WITH_TLS_PADDING) {
        ok = p11_pool_pms_unwrap(c->key->tok, in, inlen, c->client_version, c->alt_version, out);
        if (ok)
            *outlen = P11_TLS_HANDLE_LEN;
    } else if (c->pad == RSA_PKCS1_PADDING || c->pad == RSA_PKCS1_OAEP_PADDING) {
        CK_MECHANISM mech = {CKM_RSA_PKCS, NULL, 0};
        CK_RSA_PKCS_OAEP_PARAMS oaep;
        unsigned char *tmp = OPENSSL_malloc(modlen);
        size_t tlen = modlen;
        if (c->pad == RSA_PKCS1_OAEP_PADDING) {
            CK_RSA_PKCS_MGF_TYPE g1 = 0, g2 = 0;
            oaep.hashAlg = hash_mech(c->oaep_md[0] ? c->oaep_md : "SHA1", &g1);
            oaep.mgf = g1;
            if (c->mgf1_md[0])
                (void)hash_mech(c->mgf1_md, &g2), oaep.mgf = g2;
            oaep.source = CKZ_DATA_SPECIFIED;
            oaep.pSourceData = c->label;
            oaep.ulSourceDataLen = c->label_len;
            mech.mechanism = CKM_RSA_PKCS_OAEP;
            mech.pParameter = &oaep;
            mech.ulParameterLen = sizeof(oaep);
            if (oaep.hashAlg == CKM_VENDOR_DEFINED) {
                ERR_raise(ERR_LIB_PROV, PROV_R_INVALID_DIGEST);
                OPENSSL_free(tmp);
                goto end;
            }
        }
        ok = tmp != NULL && p11_pool_rsa_decrypt(c->key->tok, &mech, in, inlen, tmp, &tlen);
        if (ok && tlen > outsize) {
            ERR_raise(ERR_LIB_PROV, PROV_R_OUTPUT_BUFFER_TOO_SMALL);
            ok = 0;
        }
        if (ok) {
            memcpy(out, tmp, tlen);
            *outlen = tlen;
        }
        OPENSSL_clear_free(tmp, modlen);
    } else {
        ERR_raise(ERR_LIB_PROV, PROV_R_ILLEGAL_OR_UNSUPPORTED_PADDING_MODE);
    }
end:
    OPENSSL_free(buf);
    return ok;
}

static int enc_set_ctx_params(void *vctx, const OSSL_PARAM params[])
{
    ENCCTX *c = vctx;
    const OSSL_PARAM *p;

    if (params == NULL)
        return 1;
    if ((p = OSSL_PARAM_locate_const(params, OSSL_ASYM_CIPHER_PARAM_PAD_MODE)) != NULL) {
        int pad = 0;
        if (p->data_type == OSSL_PARAM_UTF8_STRING) {
            const char *s = p->data;
            pad = strcmp(s, OSSL_PKEY_RSA_PAD_MODE_PKCSV15) == 0 ? RSA_PKCS1_PADDING
                  : strcmp(s, OSSL_PKEY_RSA_PAD_MODE_OAEP) == 0  ? RSA_PKCS1_OAEP_PADDING
                                                                 : 0;
        } else if (!OSSL_PARAM_get_int(p, &pad)) {
            return 0;
        }
        if (pad != RSA_PKCS1_PADDING && pad != RSA_PKCS1_OAEP_PADDING &&
            pad != RSA_PKCS1_WITH_TLS_PADDING) {
            ERR_raise(ERR_LIB_PROV, PROV_R_ILLEGAL_OR_UNSUPPORTED_PADDING_MODE);
            return 0;
        }
        c->pad = pad;
    }
    if ((p = OSSL_PARAM_locate_const(params, OSSL_ASYM_CIPHER_PARAM_TLS_CLIENT_VERSION)) != NULL &&
        !OSSL_PARAM_get_uint(p, &c->client_version))
        return 0;
    if ((p = OSSL_PARAM_locate_const(params, OSSL_ASYM_CIPHER_PARAM_TLS_NEGOTIATED_VERSION)) !=
            NULL &&
        !OSSL_PARAM_get_uint(p, &c->alt_version))
        return 0;
    if ((p = OSSL_PARAM_locate_const(params, OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST)) != NULL) {
        const char *s = NULL;
        if (!OSSL_PARAM_get_utf8_string_ptr(p, &s) || strlen(s) >= sizeof(c->oaep_md))
            return 0;
        strcpy(c->oaep_md, s);
    }
    if ((p = OSSL_PARAM_locate_const(params, OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST)) != NULL) {
        const char *s = NULL;
        if (!OSSL_PARAM_get_utf8_string_ptr(p, &s) || strlen(s) >= sizeof(c->mgf1_md))
            return 0;
        strcpy(c->mgf1_md, s);
    }
    if ((p = OSSL_PARAM_locate_const(params, OSSL_ASYM_CIPHER_PARAM_OAEP_LABEL)) != NULL) {
        void *l = NULL;
        size_t ll = 0;
        if (!OSSL_PARAM_get_octet_string(p, &l, 0, &ll))
            return 0;
        OPENSSL_free(c->label);
        c->label = l;
        c->label_len = ll;
    }
    return 1;
}

static const OSSL_PARAM settable[] = {
    OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_PAD_MODE, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_OAEP_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_ASYM_CIPHER_PARAM_MGF1_DIGEST, NULL, 0),
    OSSL_PARAM_octet_string(OSSL_ASYM_CIPHER_PARAM_OAEP_LABEL, NULL, 0),
    OSSL_PARAM_uint(OSSL_ASYM_CIPHER_PARAM_TLS_CLIENT_VERSION, NULL),
    OSSL_PARAM_uint(OSSL_ASYM_CIPHER_PARAM_TLS_NEGOTIATED_VERSION, NULL),
    OSSL_PARAM_END};

static const OSSL_PARAM *enc_settable_ctx_params(void *vctx, void *provctx)
{
    return settable;
}

static int enc_get_ctx_params(void *vctx, OSSL_PARAM params[])
{
    ENCCTX *c = vctx;
    OSSL_PARAM *p = OSSL_PARAM_locate(params, OSSL_ASYM_CIPHER_PARAM_PAD_MODE);
    if (p != NULL && !OSSL_PARAM_set_int(p, c->pad))
        return 0;
    return 1;
}

static const OSSL_PARAM gettable[] = {OSSL_PARAM_int(OSSL_ASYM_CIPHER_PARAM_PAD_MODE, NULL),
                                      OSSL_PARAM_END};

static const OSSL_PARAM *enc_gettable_ctx_params(void *vctx, void *provctx)
{
    return gettable;
}

const OSSL_DISPATCH p11tls_rsa_asym_cipher_functions[] = {
    {OSSL_FUNC_ASYM_CIPHER_NEWCTX, (void (*)(void))enc_newctx},
    {OSSL_FUNC_ASYM_CIPHER_FREECTX, (void (*)(void))enc_freectx},
    {OSSL_FUNC_ASYM_CIPHER_DUPCTX, (void (*)(void))enc_dupctx},
    {OSSL_FUNC_ASYM_CIPHER_ENCRYPT_INIT, (void (*)(void))enc_encrypt_init},
    {OSSL_FUNC_ASYM_CIPHER_ENCRYPT, (void (*)(void))enc_encrypt},
    {OSSL_FUNC_ASYM_CIPHER_DECRYPT_INIT, (void (*)(void))enc_decrypt_init},
    {OSSL_FUNC_ASYM_CIPHER_DECRYPT, (void (*)(void))enc_decrypt},
    {OSSL_FUNC_ASYM_CIPHER_SET_CTX_PARAMS, (void (*)(void))enc_set_ctx_params},
    {OSSL_FUNC_ASYM_CIPHER_SETTABLE_CTX_PARAMS, (void (*)(void))enc_settable_ctx_params},
    {OSSL_FUNC_ASYM_CIPHER_GET_CTX_PARAMS, (void (*)(void))enc_get_ctx_params},
    {OSSL_FUNC_ASYM_CIPHER_GETTABLE_CTX_PARAMS, (void (*)(void))enc_gettable_ctx_params},
    {0, NULL}};
