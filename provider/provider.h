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
    OSSL_LIB_CTX *app_libctx; /* the library context p11tls was loaded into (libssl's) */
    OSSL_LIB_CTX *libctx;     /* our own library context: digests, software public-key ops */
    OSSL_PROVIDER *deflt;     /* the default provider loaded into it */
    p11_pool *pool; /* the token, or tokens (a pool of one or more) */
    p11_level min_level;
    OSSL_FUNC_BIO_read_ex_fn *core_bio_read_ex; /* for decoders: reads the core's BIO */
    char *name;         /* "p11tls: token '...', assurance ..." (never cut) */
    char *failure;      /* set when the configuration or the token is unusable */
    int routing;        /* routing.c: 0 not checked yet, 1 p11tls's TLS operations win */
    char *routing_name; /* "p11tls: NOT USABLE: why they do not" (after a failed check) */
    char *prov_name;    /* the provider's name in openssl.cnf */
    int ecdhe;          /* P11TLS_ECDHE_*: option 'ecdhe' */
} P11TLS_PROV;

/* Option 'ecdhe': key shares of the groups the token can do are made in the token
 * (token, the default), or none is (software); require: a key share of a group the
 * token lacks is refused (the handshake fails) instead of being made in software. */
enum { P11TLS_ECDHE_TOKEN = 0, P11TLS_ECDHE_SOFTWARE = 1, P11TLS_ECDHE_REQUIRE = 2 };

/* The keys of p11tls's openssl.cnf section (config.c). Pointers into the core's
 * copy of the configuration, valid while the provider is loaded. */
typedef struct {
    char *module, *init_args, *token, *pin_source, *min_assurance, *debug;
    char *max_sessions, *handle_lifetime, *handle_cache, *strategy, *scrub_heap, *ecdhe;
    char *probe_interval;
    /* a pool: memberN = SECTION (N = 1..P11_POOL_MAX), each with token, and optionally
     * pkcs11-module, pkcs11-init-args, pin-source (else the section's own) */
    struct {
        char *token, *module, *init_args, *pin_source;
    } member[P11_POOL_MAX];
    char *prov_name;   /* the provider's name in openssl.cnf */
    int alias_used[3]; /* pkcs11-module-path, -init-args, -token-pin given instead */
} p11tls_cfg;
/* Reads the section's values (p11tls's names or pkcs11-provider's aliases). */
int p11tls_cfg_read(const OSSL_CORE_HANDLE *handle, OSSL_FUNC_core_get_params_fn *get,
                    p11tls_cfg *c);
/* 0 with the error raised when the section holds a key p11tls does not know. */
int p11tls_cfg_check_keys(const p11tls_cfg *c);
/* The name the PIN's option was given under ("pin-source" or its alias). */
const char *p11tls_cfg_pin_option(const p11tls_cfg *c);

/* routing.c: do libssl's fetches of the TLS operations p11tls implements (TLS1-PRF)
 * reach p11tls? Checked at first use in this process (not while providers are still
 * being loaded); 1 yes; 0 no, with the error (the provider that would win, the
 * line to add) raised. */
int p11tls_routing_ok(P11TLS_PROV *prov);

/* 1 if the provider is usable; else raises the configuration failure and returns 0.
 * p11tls fails closed: OpenSSL 3.0 ignores a provider's activation failure, so an
 * unusable p11tls stays loaded and refuses every operation with the cause. That
 * includes libssl taking its TLS operations from another provider (routing.c),
 * unless `min-assurance = key-only` accepts that. */
int p11tls_usable(P11TLS_PROV *prov);

/* An RSA key: in the token (tok != NULL), or a public key imported for
 * comparison and public operations (done in software, they are public). */
typedef struct {
    P11TLS_PROV *prov;
    p11_pool_key *tok;
    EVP_PKEY *pub; /* the public half, in prov->libctx (default provider) */
} P11TLS_KEY;

P11TLS_KEY *p11tls_key_new(P11TLS_PROV *prov, p11_pool_key *tok, EVP_PKEY *pub);
void p11tls_key_free(P11TLS_KEY *key);
/* Builds a software public key from big-endian n and e. */
EVP_PKEY *p11tls_pub_from_ne(P11TLS_PROV *prov, const unsigned char *n, size_t nlen,
                             const unsigned char *e, size_t elen);
/* Loads the private key a pkcs11: URI names, from the provider's token. */
P11TLS_KEY *p11tls_key_from_uri(P11TLS_PROV *prov, const char *uri);

/* An EC key (keymgmt_ec.c): an ephemeral ECDHE key pair in the token (tok, with its
 * public key in sw), or a software key (parameters only, public, or a pair made for a
 * group the token lacks) in prov->libctx. */
typedef struct {
    P11TLS_PROV *prov;
    EVP_PKEY *sw;
    p11_eckey *tok;
    int sel; /* OSSL_KEYMGMT_SELECT_* bits the key holds */
} P11TLS_EC;

/* capabilities.c: the TLS-GROUP capabilities of the EC groups (keymgmt_ec.c). */
int p11tls_get_capabilities(void *provctx, const char *capability, OSSL_CALLBACK *cb, void *arg);
extern const OSSL_DISPATCH p11tls_ec_keymgmt_functions[];
extern const OSSL_DISPATCH p11tls_ecdh_keyexch_functions[];
extern const OSSL_DISPATCH p11tls_refused_keymgmt_functions[];
extern const OSSL_DISPATCH p11tls_rsa_keymgmt_functions[];
extern const OSSL_DISPATCH p11tls_rsa_signature_functions[];
extern const OSSL_DISPATCH p11tls_rsa_asym_cipher_functions[];
extern const OSSL_DISPATCH p11tls_tls1_prf_functions[];
extern const OSSL_DISPATCH p11tls_tls13_kdf_functions[];
extern const OSSL_DISPATCH p11tls_hmac_functions[];
extern const OSSL_DISPATCH p11tls_store_functions[];
extern const OSSL_DISPATCH p11tls_pem_uri_decoder_functions[];
extern const OSSL_DISPATCH p11tls_uri_pem2der_functions[];
extern const OSSL_DISPATCH p11tls_uri_der2key_functions[];

#define P11TLS_PEM_LABEL "P11TLS KEY URI"

/* Why a TLS 1.0/1.1 handshake fails (its MD5-SHA1 PRF and signatures). libssl has
 * already chosen the version when p11tls is asked, so the client gets internal_error;
 * only the server's configuration can answer protocol_version. */
#define P11TLS_OLD_TLS                                                                             \
    "TLS 1.0 and 1.1 are refused (their MD5-SHA1 PRF and signatures are not run in the "           \
    "token, and never in software); the peer negotiated one of them: allow only TLS 1.2 "          \
    "and 1.3 (nginx: 'ssl_protocols TLSv1.2 TLSv1.3;') so that such clients get a "                \
    "protocol_version alert"

#endif
