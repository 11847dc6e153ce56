/* decoder_uri_der.c - key files that name a token key, for every OpenSSL path.
 * OpenSSL 3.0's `file:` store (the openssl commands' -key/-in) turns PEM into DER
 * with its own decoder, which knows only the standard PEM labels, and offers the
 * providers only DER. So two decoders:
 *   PEM -> DER   ("DER", input=pem): a "P11TLS KEY URI" block (p11tls's files: the
 *                body is the URI text) or a "PKCS#11 PROVIDER URI" block
 *                (pkcs11-provider's files: the body is the DER structure below)
 *                becomes that DER structure, structure name "pk11-uri";
 *   DER -> RSA   (input=der, structure=pk11-uri): the key the URI names, loaded
 *                from p11tls's token.
 * The structure (pkcs11-provider's): SEQUENCE { desc VisibleString, uri UTF8String }.
 * Any other input is left alone ("empty handed" is not an error). */
#include <string.h>
#include <openssl/bio.h>
#include <openssl/core_object.h>
#include <openssl/pem.h>
#include "provider.h"

int p11tls_pass_key(P11TLS_KEY *key, OSSL_CALLBACK *cb, void *cbarg);

static OSSL_FUNC_decoder_newctx_fn uri_newctx;
static OSSL_FUNC_decoder_freectx_fn uri_freectx;
static OSSL_FUNC_decoder_decode_fn pem2der_decode;
static OSSL_FUNC_decoder_decode_fn der2key_decode;
static OSSL_FUNC_decoder_does_selection_fn der2key_does_selection;

#define IN_MAX (64 * 1024)
#define URI_MAX (8 * 1024)
#define PK11_PEM_LABEL "PKCS#11 PROVIDER URI"
#define STRUCTURE "pk11-uri"
static const char desc[] = "PKCS#11 Provider URI v1.0";

static void *uri_newctx(void *provctx)
{
    return provctx;
}

static void uri_freectx(void *vctx)
{
}

static int der2key_does_selection(void *provctx, int selection)
{
    return selection == 0 || (selection & OSSL_KEYMGMT_SELECT_KEYPAIR) != 0;
}

/* Reads at most IN_MAX bytes of the core BIO. */
static unsigned char *slurp(P11TLS_PROV *prov, OSSL_CORE_BIO *cin, size_t *len)
{
    unsigned char *buf = OPENSSL_malloc(IN_MAX);
    size_t n;

    *len = 0;
    if (buf == NULL || prov->core_bio_read_ex == NULL) {
        OPENSSL_free(buf);
        return NULL;
    }
    while (*len < IN_MAX && prov->core_bio_read_ex(cin, buf + *len, IN_MAX - *len, &n) && n > 0)
        *len += n;
    return buf;
}

/* One DER TLV at *p (end e): its tag, its contents; 0 if malformed. */
static int der_tlv(const unsigned char **p, const unsigned char *e, int *tag,
                   const unsigned char **val, size_t *vlen)
{
    size_t len;
    if (e - *p < 2)
        return 0;
    *tag = (*p)[0];
    len = (*p)[1];
    *p += 2;
    if (len & 0x80) {
        size_t nb = len & 0x7f;
        if (nb == 0 || nb > 2 || (size_t)(e - *p) < nb)
            return 0;
        len = 0;
        for (size_t i = 0; i < nb; i++)
            len = len << 8 | *(*p)++;
        if (len < 0x80)
            return 0; /* not minimal: not DER */
    }
    if ((size_t)(e - *p) < len)
        return 0;
    *val = *p;
    *vlen = len;
    *p += len;
    return 1;
}

/* The URI of a pk11-uri structure (a NUL-terminated copy), or NULL. */
static char *uri_from_der(const unsigned char *der, size_t len)
{
    const unsigned char *p = der, *e = der + len, *seq, *v;
    size_t seqlen, vlen;
    int tag;

    if (!der_tlv(&p, e, &tag, &seq, &seqlen) || tag != 0x30 || p != e)
        return NULL;
    p = seq;
    e = seq + seqlen;
    if (!der_tlv(&p, e, &tag, &v, &vlen) || tag != 0x1a) /* VisibleString */
        return NULL;
    if (!der_tlv(&p, e, &tag, &v, &vlen) || tag != 0x0c || p != e) /* UTF8String */
        return NULL;
    if (vlen == 0 || vlen > URI_MAX || memchr(v, '\0', vlen) != NULL ||
        strncmp((const char *)v, "pkcs11:", vlen < 7 ? vlen : 7) != 0)
        return NULL;
    return OPENSSL_strndup((const char *)v, vlen);
}

/* The pk11-uri structure for uri (p11tls's own files hold the URI as text). */
static unsigned char *der_from_uri(const unsigned char *uri, size_t ulen, size_t *outlen)
{
    size_t dlen = sizeof(desc) - 1, body = 2 + dlen +
                                           (ulen < 0x80    ? 2
                                            : ulen < 0x100 ? 3
                                                           : 4) +
                                           ulen;
    size_t total = body + (body < 0x80 ? 2 : body < 0x100 ? 3 : 4);
    unsigned char *d, *q;

    if (ulen == 0 || ulen > URI_MAX || (d = OPENSSL_malloc(total)) == NULL)
        return NULL;
    q = d;
#define PUT_LEN(n)                                                                                 \
    do {                                                                                           \
        if ((n) < 0x80) {                                                                          \
            *q++ = (unsigned char)(n);                                                             \
        } else if ((n) < 0x100) {                                                                  \
            *q++ = 0x81;                                                                           \
            *q++ = (unsigned char)(n);                                                             \
        } else {                                                                                   \
            *q++ = 0x82;                                                                           \
            *q++ = (unsigned char)((n) >> 8);                                                      \
            *q++ = (unsigned char)(n);                                                             \
        }                                                                                          \
    } while (0)
    *q++ = 0x30;
    PUT_LEN(body);
    *q++ = 0x1a;
    *q++ = (unsigned char)dlen;
    memcpy(q, desc, dlen);
    q += dlen;
    *q++ = 0x0c;
    PUT_LEN(ulen);
    memcpy(q, uri, ulen);
    q += ulen;
#undef PUT_LEN
    *outlen = (size_t)(q - d);
    return d;
}

static int pem2der_decode(void *vctx, OSSL_CORE_BIO *cin, int selection, OSSL_CALLBACK *data_cb,
                          void *data_cbarg, OSSL_PASSPHRASE_CALLBACK *pw_cb, void *pw_cbarg)
{
    P11TLS_PROV *prov = vctx;
    size_t inlen, derlen = 0;
    unsigned char *in = slurp(prov, cin, &inlen), *der = NULL, *data = NULL;
    char *name = NULL, *header = NULL, *uri = NULL;
    long len = 0;
    BIO *mem = NULL;
    int ok = 1; /* not ours: empty handed, the next decoder gets its turn */

    if (in == NULL || (mem = BIO_new_mem_buf(in, (int)inlen)) == NULL)
        goto end;
    ERR_set_mark();
    if (!PEM_read_bio(mem, &name, &header, &data, &len) ||
        (strcmp(name, P11TLS_PEM_LABEL) != 0 && strcmp(name, PK11_PEM_LABEL) != 0)) {
        ERR_pop_to_mark();
        goto end;
    }
    ERR_pop_to_mark();
    if (len <= 0) {
        /* an empty block of ours: said below */
    } else if (strcmp(name, P11TLS_PEM_LABEL) == 0) {
        if (memchr(data, '\0', (size_t)len) == NULL && len >= 7 && memcmp(data, "pkcs11:", 7) == 0)
            der = der_from_uri(data, (size_t)len, &derlen);
    } else if ((uri = uri_from_der(data, (size_t)len)) != NULL) {
        der = data;
        derlen = (size_t)len;
        data = NULL;
    }
    if (der == NULL) {
        ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_KEY,
                       "p11tls: a '%s' PEM block does not hold a pkcs11: URI", name);
        ok = 0;
        goto end;
    }
    {
        int type = OSSL_OBJECT_PKEY;
        OSSL_PARAM params[] = {
            OSSL_PARAM_int(OSSL_OBJECT_PARAM_TYPE, &type),
            OSSL_PARAM_utf8_string(OSSL_OBJECT_PARAM_DATA_STRUCTURE, (char *)STRUCTURE, 0),
            OSSL_PARAM_octet_string(OSSL_OBJECT_PARAM_DATA, der, derlen), OSSL_PARAM_END};
        ok = data_cb(params, data_cbarg);
    }
end:
    OPENSSL_free(der);
    OPENSSL_free(data);
    OPENSSL_free(uri);
    OPENSSL_free(name);
    OPENSSL_free(header);
    BIO_free(mem);
    OPENSSL_free(in);
    return ok;
}

static int der2key_decode(void *vctx, OSSL_CORE_BIO *cin, int selection, OSSL_CALLBACK *data_cb,
                          void *data_cbarg, OSSL_PASSPHRASE_CALLBACK *pw_cb, void *pw_cbarg)
{
    P11TLS_PROV *prov = vctx;
    size_t inlen;
    unsigned char *in = slurp(prov, cin, &inlen);
    char *uri = in != NULL ? uri_from_der(in, inlen) : NULL;
    P11TLS_KEY *key;
    int ok = 1;

    if (uri != NULL) {
        key = p11tls_key_from_uri(prov, uri);
        ok = key != NULL && p11tls_pass_key(key, data_cb, data_cbarg);
    }
    OPENSSL_free(uri);
    OPENSSL_free(in);
    return ok;
}

const OSSL_DISPATCH p11tls_uri_pem2der_functions[] = {
    {OSSL_FUNC_DECODER_NEWCTX, (void (*)(void))uri_newctx},
    {OSSL_FUNC_DECODER_FREECTX, (void (*)(void))uri_freectx},
    {OSSL_FUNC_DECODER_DECODE, (void (*)(void))pem2der_decode},
    {0, NULL}};

const OSSL_DISPATCH p11tls_uri_der2key_functions[] = {
    {OSSL_FUNC_DECODER_NEWCTX, (void (*)(void))uri_newctx},
    {OSSL_FUNC_DECODER_FREECTX, (void (*)(void))uri_freectx},
    {OSSL_FUNC_DECODER_DOES_SELECTION, (void (*)(void))der2key_does_selection},
    {OSSL_FUNC_DECODER_DECODE, (void (*)(void))der2key_decode},
    {0, NULL}};
