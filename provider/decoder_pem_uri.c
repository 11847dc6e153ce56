/* decoder_pem_uri.c - a PEM decoder for "-----BEGIN P11TLS KEY URI-----" files,
 * whose body is a pkcs11: URI, so applications that only read PEM key files
 * (nginx's ssl_certificate_key, curl's --key) use a token key unchanged.
 * Any other PEM is left alone for the other decoders. */
#include <string.h>
#include <openssl/bio.h>
#include <openssl/pem.h>
#include "provider.h"

int p11tls_pass_key(P11TLS_KEY *key, OSSL_CALLBACK *cb, void *cbarg);

static OSSL_FUNC_decoder_newctx_fn dec_newctx;
static OSSL_FUNC_decoder_freectx_fn dec_freectx;
static OSSL_FUNC_decoder_decode_fn dec_decode;
static OSSL_FUNC_decoder_does_selection_fn dec_does_selection;

#define PEM_MAX (64 * 1024)
#define URI_MAX (8 * 1024)

static void *dec_newctx(void *provctx)
{
    return provctx;
}

static void dec_freectx(void *vctx)
{
}

static int dec_does_selection(void *provctx, int selection)
{
    return selection == 0 || (selection & OSSL_KEYMGMT_SELECT_KEYPAIR) != 0;
}

/* Reads at most PEM_MAX bytes of the core BIO into a memory BIO. */
static BIO *slurp(P11TLS_PROV *prov, OSSL_CORE_BIO *cin)
{
    BIO *mem = BIO_new(BIO_s_mem());
    unsigned char buf[4096];
    size_t n, total = 0;

    if (mem == NULL || prov->core_bio_read_ex == NULL)
        goto fail;
    while (total < PEM_MAX && prov->core_bio_read_ex(cin, buf, sizeof(buf), &n) && n > 0) {
        if (BIO_write(mem, buf, (int)n) != (int)n)
            goto fail;
        total += n;
    }
    return mem;
fail:
    BIO_free(mem);
    return NULL;
}

static int dec_decode(void *vctx, OSSL_CORE_BIO *cin, int selection, OSSL_CALLBACK *data_cb,
                      void *data_cbarg, OSSL_PASSPHRASE_CALLBACK *pw_cb, void *pw_cbarg)
{
    P11TLS_PROV *prov = vctx;
    BIO *mem = slurp(prov, cin);
    char *name = NULL, *header = NULL, *uri = NULL;
    unsigned char *data = NULL;
    long len = 0;
    P11TLS_KEY *key;
    int ok = 1; /* "not mine" is not an error: the next decoder gets its turn */

    if (mem == NULL)
        return 1;
    ERR_set_mark();
    if (!PEM_read_bio(mem, &name, &header, &data, &len) || strcmp(name, P11TLS_PEM_LABEL) != 0) {
        ERR_pop_to_mark();
        goto end;
    }
    ERR_pop_to_mark();
    if (len <= 0 || len > URI_MAX || memchr(data, '\0', (size_t)len) != NULL ||
        (uri = OPENSSL_strndup((const char *)data, (size_t)len)) == NULL) {
        ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_KEY,
                       "p11tls: a " P11TLS_PEM_LABEL " PEM block does not hold a URI");
        ok = 0;
        goto end;
    }
    key = p11tls_key_from_uri(prov, uri);
    if (key == NULL) {
        ok = 0;
        goto end;
    }
    ok = p11tls_pass_key(key, data_cb, data_cbarg);
end:
    OPENSSL_free(uri);
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_free(data);
    BIO_free(mem);
    return ok;
}

const OSSL_DISPATCH p11tls_pem_uri_decoder_functions[] = {
    {OSSL_FUNC_DECODER_NEWCTX, (void (*)(void))dec_newctx},
    {OSSL_FUNC_DECODER_FREECTX, (void (*)(void))dec_freectx},
    {OSSL_FUNC_DECODER_DOES_SELECTION, (void (*)(void))dec_does_selection},
    {OSSL_FUNC_DECODER_DECODE, (void (*)(void))dec_decode},
    {0, NULL}};
