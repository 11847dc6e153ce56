/* provider.h - what the provider's operation files share: the provider
 * context, the key object, and their dispatch tables. */
#ifndef P11TLS_PROVIDER_H
#define P11TLS_PROVIDER_H

#include <openssl/core.h>
#include <openssl/core_dispatch.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/proverr.h>
#include <openssl/evp.h>
#include "p11.h"

#define P11TLS_NAME "p11tls"
#define P11TLS_VERSION_STR "0.1.0"

typedef struct {
    const OSSL_CORE_HANDLE *handle;
    OSSL_LIB_CTX *libctx; /* our own library context: digests, software public-key ops */
    OSSL_PROVIDER *deflt; /* the default provider loaded into it */
    p11_token *token;
    p11_level min_level;
    OSSL_FUNC_BIO_read_ex_fn *core_bio_read_ex; /* for decoders: reads the core's BIO */
    char name[256];                             /* "p11tls: token '...', assurance ..." */
    char *failure; /* set when the configuration or the token is unusable */
} P11TLS_PROV;

/* 1 if the provider is usable; else raises the configuration failure and returns 0.
 * p11tls fails closed: OpenSSL 3.0 ignores a provider's activation failure, so an
 * unusable p11tls stays loaded and refuses every operation with the cause. */
int p11tls_usable(const P11TLS_PROV *prov);

/* An RSA key: in the token (tok != NULL), or a public key imported for
 * comparison and public operations (done in software, they are public). */
typedef struct {
    P11TLS_PROV *prov;
    p11_key *tok;
    EVP_PKEY *pub; /* the public half, in prov->libctx (default provider) */
} P11TLS_KEY;

P11TLS_KEY *p11tls_key_new(P11TLS_PROV *prov, p11_key *tok, EVP_PKEY *pub);
void p11tls_key_free(P11TLS_KEY *key);
/* Builds a software public key from big-endian n and e. */
EVP_PKEY *p11tls_pub_from_ne(P11TLS_PROV *prov, const unsigned char *n, size_t nlen,
                             const unsigned char *e, size_t elen);
/* Loads the private key a pkcs11: URI names, from the provider's token. */
P11TLS_KEY *p11tls_key_from_uri(P11TLS_PROV *prov, const char *uri);

extern const OSSL_DISPATCH p11tls_rsa_keymgmt_functions[];
extern const OSSL_DISPATCH p11tls_rsa_signature_functions[];
extern const OSSL_DISPATCH p11tls_rsa_asym_cipher_functions[];
extern const OSSL_DISPATCH p11tls_tls1_prf_functions[];
extern const OSSL_DISPATCH p11tls_store_functions[];
extern const OSSL_DISPATCH p11tls_pem_uri_decoder_functions[];

#define P11TLS_PEM_LABEL "P11TLS KEY URI"

#endif
