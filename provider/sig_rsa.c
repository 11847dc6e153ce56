/* sig_rsa.c - RSA signatures. Signing with a token key: the digest is computed
 * here, and the token makes the signature in one call (CKM_RSA_PKCS over a
 * DigestInfo, or CKM_RSA_PKCS_PSS). Verification is a public operation and runs
 * in software on the key's public half. PKCS#1 v1.5 and PSS, SHA-1/224/256/384/512. */
#include <string.h>
#include <strings.h>
#include <openssl/params.h>
#include <openssl/rsa.h>
#include "provider.h"

static OSSL_FUNC_signature_newctx_fn sig_newctx;
static OSSL_FUNC_signature_freectx_fn sig_freectx;
static OSSL_FUNC_signature_dupctx_fn sig_dupctx;
static OSSL_FUNC_signature_sign_init_fn sig_sign_init;
static OSSL_FUNC_signature_sign_fn sig_sign;
static OSSL_FUNC_signature_verify_init_fn sig_verify_init;
static OSSL_FUNC_signature_verify_fn sig_verify;
static OSSL_FUNC_signature_digest_sign_init_fn sig_digest_sign_init;
static OSSL_FUNC_signature_digest_sign_update_fn sig_digest_update;
static OSSL_FUNC_signature_digest_sign_final_fn sig_digest_sign_final;
static OSSL_FUNC_signature_digest_verify_init_fn sig_digest_verify_init;
static OSSL_FUNC_signature_digest_verify_final_fn sig_digest_verify_final;
static OSSL_FUNC_signature_get_ctx_params_fn sig_get_ctx_params;
static OSSL_FUNC_signature_gettable_ctx_params_fn sig_gettable_ctx_params;
static OSSL_FUNC_signature_set_ctx_params_fn sig_set_ctx_params;
static OSSL_FUNC_signature_settable_ctx_params_fn sig_settable_ctx_params;

typedef struct {
    P11TLS_PROV *prov;
    P11TLS_KEY *key;
    int pad;     /* RSA_PKCS1_PADDING or RSA_PKCS1_PSS_PADDING */
    int saltlen; /* RSA_PSS_SALTLEN_* or a length */
    EVP_MD *md, *mgf1;
    EVP_MD_CTX *mdctx;
} SIGCTX;

/* DigestInfo prefixes, RFC 8017 section 9.2, note 1. */
static const struct {
    const char *name;
    CK_MECHANISM_TYPE hash;
    CK_RSA_PKCS_MGF_TYPE mgf;
    unsigned char prefix[19];
    size_t plen;
} digests[] = {
    {"SHA1",
     CKM_SHA_1,
     CKG_MGF1_SHA1,
     {0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14},
     15},
    {"SHA2-224",
     CKM_SHA224,
     CKG_MGF1_SHA224,
     {0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x04,
      0x05, 0x00, 0x04, 0x1c},
     19},
    {"SHA2-256",
     CKM_SHA256,
     CKG_MGF1_SHA256,
     {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
      0x05, 0x00, 0x04, 0x20},
     19},
    {"SHA2-384",
     CKM_SHA384,
     CKG_MGF1_SHA384,
     {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02,
      0x05, 0x00, 0x04, 0x30},
     19},
    {"SHA2-512",
     CKM_SHA512,
     CKG_MGF1_SHA512,
     {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03,
      0x05, 0x00, 0x04, 0x40},
     19},
};

static int digest_index(const EVP_MD *md)
{
    for (size_t i = 0; md != NULL && i < sizeof(digests) / sizeof(digests[0]); i++)
        if (EVP_MD_is_a(md, digests[i].name))
            return (int)i;
    return -1;
}

static void *sig_newctx(void *provctx, const char *propq)
{
    SIGCTX *c = OPENSSL_zalloc(sizeof(*c));
    if (c == NULL)
        return NULL;
    c->prov = provctx;
    c->pad = RSA_PKCS1_PADDING;
    c->saltlen = RSA_PSS_SALTLEN_AUTO;
    return c;
}

static void sig_freectx(void *vctx)
{
    SIGCTX *c = vctx;
    if (c == NULL)
        return;
    EVP_MD_free(c->md);
    EVP_MD_free(c->mgf1);
    EVP_MD_CTX_free(c->mdctx);
    OPENSSL_free(c);
}

static void *sig_dupctx(void *vctx)
{
    SIGCTX *c = vctx, *d = OPENSSL_memdup(c, sizeof(*c));
    if (d == NULL)
        return NULL;
    d->mdctx = NULL;
    if ((c->md != NULL && !EVP_MD_up_ref(c->md)) || (c->mgf1 != NULL && !EVP_MD_up_ref(c->mgf1)))
        goto fail;
    if (c->mdctx != NULL &&
        ((d->mdctx = EVP_MD_CTX_new()) == NULL || !EVP_MD_CTX_copy_ex(d->mdctx, c->mdctx)))
        goto fail;
    return d;
fail:
    sig_freectx(d);
    return NULL;
}

static int set_md(SIGCTX *c, EVP_MD **slot, const char *name)
{
    EVP_MD *md = EVP_MD_fetch(c->prov->libctx, name, NULL);
    if (md == NULL || digest_index(md) < 0) {
        if (strcasecmp(name, "MD5-SHA1") == 0)
            ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_DIGEST, "p11tls: %s", P11TLS_OLD_TLS);
        else
            ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_DIGEST,
                           "p11tls: digest '%s' is not supported for RSA signatures", name);
        EVP_MD_free(md);
        return 0;
    }
    EVP_MD_free(*slot);
    *slot = md;
    return 1;
}

static int sig_init(SIGCTX *c, void *provkey, const OSSL_PARAM params[])
{
    c->key = provkey;
    if (c->key == NULL || c->key->pub == NULL) {
        ERR_raise(ERR_LIB_PROV, PROV_R_NO_KEY_SET);
        return 0;
    }
    c->pad = RSA_PKCS1_PADDING;
    c->saltlen = RSA_PSS_SALTLEN_AUTO;
    return sig_set_ctx_params(c, params);
}

static int sig_sign_init(void *vctx, void *provkey, const OSSL_PARAM params[])
{
    return sig_init(vctx, provkey, params);
}

static int sig_verify_init(void *vctx, void *provkey, const OSSL_PARAM params[])
{
    return sig_init(vctx, provkey, params);
}

static int pss_saltlen(const SIGCTX *c, size_t hlen)
{
    size_t modlen = (size_t)EVP_PKEY_get_size(c->key->pub);
    int bits = EVP_PKEY_get_bits(c->key->pub);
    size_t emlen = ((size_t)bits - 1 + 7) / 8;
    (void)modlen;
    switch (c->saltlen) {
    case RSA_PSS_SALTLEN_DIGEST:
        return (int)hlen;
    case RSA_PSS_SALTLEN_MAX:
    case RSA_PSS_SALTLEN_AUTO:
        return (int)(emlen - hlen - 2);
    default:
        return c->saltlen;
    }
}

static int sig_sign(void *vctx, unsigned char *sig, size_t *siglen, size_t sigsize,
                    const unsigned char *tbs, size_t tbslen)
{
    SIGCTX *c = vctx;
    size_t need = (size_t)EVP_PKEY_get_size(c->key->pub);
    int di = digest_index(c->md);
    unsigned char buf[19 + 64];
    CK_RSA_PKCS_PSS_PARAMS pss;
    CK_MECHANISM mech = {CKM_RSA_PKCS, NULL, 0};
    const unsigned char *in = tbs;
    size_t inlen = tbslen;

    if (c->key->tok == NULL) {
        ERR_raise_data(ERR_LIB_PROV, PROV_R_NOT_A_PRIVATE_KEY, "p11tls: signing needs a token key");
        return 0;
    }
    if (sig == NULL) {
        *siglen = need;
        return 1;
    }
    if (sigsize < need) {
        ERR_raise(ERR_LIB_PROV, PROV_R_OUTPUT_BUFFER_TOO_SMALL);
        return 0;
    }
    if (c->md != NULL && tbslen != (size_t)EVP_MD_get_size(c->md)) {
        ERR_raise(ERR_LIB_PROV, PROV_R_INVALID_DIGEST_LENGTH);
        return 0;
    }
    if (c->pad == RSA_PKCS1_PSS_PADDING) {
        const EVP_MD *mgf = c->mgf1 ? c->mgf1 : c->md;
        int mi = digest_index(mgf);
        if (di < 0 || mi < 0) {
            ERR_raise(ERR_LIB_PROV, PROV_R_INVALID_DIGEST);
            return 0;
        }
        pss.hashAlg = digests[di].hash;
        pss.mgf = digests[mi].mgf;
        pss.sLen = (CK_ULONG)pss_saltlen(c, tbslen);
        mech.mechanism = CKM_RSA_PKCS_PSS;
        mech.pParameter = &pss;
        mech.ulParameterLen = sizeof(pss);
    } else if (c->pad == RSA_PKCS1_PADDING) {
        if (di >= 0) {
            memcpy(buf, digests[di].prefix, digests[di].plen);
            memcpy(buf + digests[di].plen, tbs, tbslen);
            in = buf;
            inlen = digests[di].plen + tbslen;
        }
    } else {
        ERR_raise(ERR_LIB_PROV, PROV_R_ILLEGAL_OR_UNSUPPORTED_PADDING_MODE);
        return 0;
    }
    *siglen = sigsize;
    return p11_pool_rsa_sign(c->key->tok, &mech, in, inlen, sig, siglen);
}

/* A software context on the public half with this context's settings. */
static EVP_PKEY_CTX *public_ctx(SIGCTX *c)
{
    EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new_from_pkey(c->prov->libctx, c->key->pub, NULL);
    if (pctx == NULL || EVP_PKEY_verify_init(pctx) <= 0 ||
        EVP_PKEY_CTX_set_rsa_padding(pctx, c->pad) <= 0 ||
        (c->md != NULL && EVP_PKEY_CTX_set_signature_md(pctx, c->md) <= 0) ||
        (c->pad == RSA_PKCS1_PSS_PADDING &&
         (EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, c->saltlen) <= 0 ||
          (c->mgf1 != NULL && EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, c->mgf1) <= 0)))) {
        EVP_PKEY_CTX_free(pctx);
        return NULL;
    }
    return pctx;
}

static int sig_verify(void *vctx, const unsigned char *sig, size_t siglen, const unsigned char *tbs,
                      size_t tbslen)
{
    EVP_PKEY_CTX *pctx = public_ctx(vctx);
    int ok = pctx != NULL && EVP_PKEY_verify(pctx, sig, siglen, tbs, tbslen) == 1;
    EVP_PKEY_CTX_free(pctx);
    return ok;
}

static int digest_init(SIGCTX *c, const char *mdname, void *provkey, const OSSL_PARAM params[])
{
    if (!sig_init(c, provkey, NULL))
        return 0;
    if (!set_md(c, &c->md, mdname != NULL ? mdname : "SHA2-256"))
        return 0;
    if (!sig_set_ctx_params(c, params))
        return 0;
    if (c->mdctx == NULL && (c->mdctx = EVP_MD_CTX_new()) == NULL)
        return 0;
    return EVP_DigestInit_ex2(c->mdctx, c->md, NULL);
}

static int sig_digest_sign_init(void *vctx, const char *mdname, void *provkey,
                                const OSSL_PARAM params[])
{
    return digest_init(vctx, mdname, provkey, params);
}

static int sig_digest_verify_init(void *vctx, const char *mdname, void *provkey,
                                  const OSSL_PARAM params[])
{
    return digest_init(vctx, mdname, provkey, params);
}

static int sig_digest_update(void *vctx, const unsigned char *data, size_t datalen)
{
    SIGCTX *c = vctx;
    return c->mdctx != NULL && EVP_DigestUpdate(c->mdctx, data, datalen);
}

static int sig_digest_sign_final(void *vctx, unsigned char *sig, size_t *siglen, size_t sigsize)
{
    SIGCTX *c = vctx;
    unsigned char dgst[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    if (sig == NULL)
        return sig_sign(c, NULL, siglen, 0, NULL, 0);
    if (c->mdctx == NULL || !EVP_DigestFinal_ex(c->mdctx, dgst, &dlen))
        return 0;
    return sig_sign(c, sig, siglen, sigsize, dgst, dlen);
}

static int sig_digest_verify_final(void *vctx, const unsigned char *sig, size_t siglen)
{
    SIGCTX *c = vctx;
    unsigned char dgst[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;
    if (c->mdctx == NULL || !EVP_DigestFinal_ex(c->mdctx, dgst, &dlen))
        return 0;
    return sig_verify(c, sig, siglen, dgst, dlen);
}

static int sig_set_ctx_params(void *vctx, const OSSL_PARAM params[])
{
    SIGCTX *c = vctx;
    const OSSL_PARAM *p;

    if (params == NULL)
        return 1;
    if ((p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_DIGEST)) != NULL) {
        const char *name = NULL;
        if (!OSSL_PARAM_get_utf8_string_ptr(p, &name) || !set_md(c, &c->md, name))
            return 0;
    }
    if ((p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_PAD_MODE)) != NULL) {
        int pad = 0;
        if (p->data_type == OSSL_PARAM_UTF8_STRING) {
            const char *s = p->data;
            pad = strcmp(s, OSSL_PKEY_RSA_PAD_MODE_PKCSV15) == 0 ? RSA_PKCS1_PADDING
                  : strcmp(s, OSSL_PKEY_RSA_PAD_MODE_PSS) == 0   ? RSA_PKCS1_PSS_PADDING
                                                                 : 0;
        } else if (!OSSL_PARAM_get_int(p, &pad)) {
            return 0;
        }
        if (pad != RSA_PKCS1_PADDING && pad != RSA_PKCS1_PSS_PADDING) {
            ERR_raise(ERR_LIB_PROV, PROV_R_ILLEGAL_OR_UNSUPPORTED_PADDING_MODE);
            return 0;
        }
        c->pad = pad;
    }
    if ((p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_PSS_SALTLEN)) != NULL) {
        int sl;
        if (p->data_type == OSSL_PARAM_UTF8_STRING) {
            const char *s = p->data;
            if (strcmp(s, OSSL_PKEY_RSA_PSS_SALT_LEN_DIGEST) == 0)
                sl = RSA_PSS_SALTLEN_DIGEST;
            else if (strcmp(s, OSSL_PKEY_RSA_PSS_SALT_LEN_MAX) == 0)
                sl = RSA_PSS_SALTLEN_MAX;
            else if (strcmp(s, OSSL_PKEY_RSA_PSS_SALT_LEN_AUTO) == 0)
                sl = RSA_PSS_SALTLEN_AUTO;
            else
                sl = atoi(s);
        } else if (!OSSL_PARAM_get_int(p, &sl)) {
            return 0;
        }
        if (sl < RSA_PSS_SALTLEN_MAX) {
            ERR_raise(ERR_LIB_PROV, PROV_R_INVALID_SALT_LENGTH);
            return 0;
        }
        c->saltlen = sl;
    }
    if ((p = OSSL_PARAM_locate_const(params, OSSL_SIGNATURE_PARAM_MGF1_DIGEST)) != NULL) {
        const char *name = NULL;
        if (!OSSL_PARAM_get_utf8_string_ptr(p, &name) || !set_md(c, &c->mgf1, name))
            return 0;
    }
    return 1;
}

static const OSSL_PARAM settable[] = {
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PROPERTIES, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PAD_MODE, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_PSS_SALTLEN, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_DIGEST, NULL, 0),
    OSSL_PARAM_utf8_string(OSSL_SIGNATURE_PARAM_MGF1_PROPERTIES, NULL, 0),
    OSSL_PARAM_END};

static const OSSL_PARAM *sig_settable_ctx_params(void *vctx, void *provctx)
{
    return settable;
}

/* The AlgorithmIdentifier (certificate and CSR signing) is what OpenSSL's own
 * implementation says for the same settings on the public key. */
static int sig_get_ctx_params(void *vctx, OSSL_PARAM params[])
{
    SIGCTX *c = vctx;
    OSSL_PARAM *p = OSSL_PARAM_locate(params, OSSL_SIGNATURE_PARAM_ALGORITHM_ID);
    EVP_PKEY_CTX *pctx;
    int ok;

    if (p == NULL)
        return 1;
    if (c->key == NULL || (pctx = public_ctx(c)) == NULL)
        return 0;
    ok = EVP_PKEY_CTX_get_params(pctx, params);
    EVP_PKEY_CTX_free(pctx);
    return ok;
}

static const OSSL_PARAM gettable[] = {
    OSSL_PARAM_octet_string(OSSL_SIGNATURE_PARAM_ALGORITHM_ID, NULL, 0), OSSL_PARAM_END};

static const OSSL_PARAM *sig_gettable_ctx_params(void *vctx, void *provctx)
{
    return gettable;
}

const OSSL_DISPATCH p11tls_rsa_signature_functions[] = {
    {OSSL_FUNC_SIGNATURE_NEWCTX, (void (*)(void))sig_newctx},
    {OSSL_FUNC_SIGNATURE_FREECTX, (void (*)(void))sig_freectx},
    {OSSL_FUNC_SIGNATURE_DUPCTX, (void (*)(void))sig_dupctx},
    {OSSL_FUNC_SIGNATURE_SIGN_INIT, (void (*)(void))sig_sign_init},
    {OSSL_FUNC_SIGNATURE_SIGN, (void (*)(void))sig_sign},
    {OSSL_FUNC_SIGNATURE_VERIFY_INIT, (void (*)(void))sig_verify_init},
    {OSSL_FUNC_SIGNATURE_VERIFY, (void (*)(void))sig_verify},
    {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_INIT, (void (*)(void))sig_digest_sign_init},
    {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_UPDATE, (void (*)(void))sig_digest_update},
    {OSSL_FUNC_SIGNATURE_DIGEST_SIGN_FINAL, (void (*)(void))sig_digest_sign_final},
    {OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_INIT, (void (*)(void))sig_digest_verify_init},
    {OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_UPDATE, (void (*)(void))sig_digest_update},
    {OSSL_FUNC_SIGNATURE_DIGEST_VERIFY_FINAL, (void (*)(void))sig_digest_verify_final},
    {OSSL_FUNC_SIGNATURE_GET_CTX_PARAMS, (void (*)(void))sig_get_ctx_params},
    {OSSL_FUNC_SIGNATURE_GETTABLE_CTX_PARAMS, (void (*)(void))sig_gettable_ctx_params},
    {OSSL_FUNC_SIGNATURE_SET_CTX_PARAMS, (void (*)(void))sig_set_ctx_params},
    {OSSL_FUNC_SIGNATURE_SETTABLE_CTX_PARAMS, (void (*)(void))sig_settable_ctx_params},
    {0, NULL}};
