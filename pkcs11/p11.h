/* p11.h - the token layer of p11tls: everything p11tls does with a PKCS#11
 * module goes through this API. No OpenSSL provider API is used below it;
 * errors are raised on libcrypto's error stack (ERR_LIB_PROV). */
#ifndef P11TLS_P11_H
#define P11TLS_P11_H

#include <stddef.h>
#include <stdint.h>
#include <p11-kit/pkcs11.h>
#include "p11_ext.h"

/* ---------------------------------------------------------------- names */
/* "CKR_PIN_INCORRECT"; unknown values give "CKR_0x%08lx" (static per-thread buffer). */
const char *p11_ckr_name(CK_RV rv);
/* "CKM_RSA_PKCS", vendor values included. */
const char *p11_ckm_name(CK_MECHANISM_TYPE m);

/* ------------------------------------------------------- errors and log */
/* Raises an OpenSSL error naming the call and the CKR_ name, plus context. */
void p11_err_ckr(const char *call, CK_RV rv, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Raises an OpenSSL error (ERR_LIB_PROV, reason) with a formatted text. */
void p11_err(int reason, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Debug log: only when P11TLS_DEBUG is set (to 1, or to a file path). */
int p11_debug_enabled(void);
void p11_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ------------------------------------------------------------ call layer */
/* Every C_* call goes through P11_CALL: debug log, per-function counters,
 * and fault injection for tests (p11_fault_hook, NULL in production). */
typedef CK_RV (*p11_fault_fn)(const char *call);
extern p11_fault_fn p11_fault_hook;
extern _Thread_local CK_RV p11_injected_rv;
/* begin: blocks SIGPIPE, sets an error mark (modules using OpenSSL themselves leave
 * their own errors behind: not ours to report), returns an injected fault or CKR_OK;
 * end: drops those errors, consumes a SIGPIPE the call raised, counts, logs. */
CK_RV p11_call_begin(const char *call);
CK_RV p11_call_end(const char *call, CK_RV rv);
/* SIGPIPE blocked from enter to the matching leave (nested: the outermost counts). */
void p11_sigpipe_guard_enter(void);
void p11_sigpipe_guard_leave(void);
#define P11_CALL(fl, fn, ...)                                                                      \
    p11_call_end(#fn, p11_call_begin(#fn) != CKR_OK ? p11_injected_rv : (fl)->fn(__VA_ARGS__))
/* Counters of calls made by this process, by function name (benchmarks, tests). */
unsigned long p11_call_count(const char *call); /* NULL: all calls */
void p11_call_counts_reset(void);
/* Writes "C_Sign=12 C_SignInit=12 ..." into buf. */
void p11_call_counts_format(char *buf, size_t len);

/* ------------------------------------------------------------------ URI */
/* RFC 7512 PKCS#11 URI. Absent attributes are NULL (has_* for non-strings). */
typedef struct p11_uri {
    char *token, *manufacturer, *serial, *model;
    char *library_manufacturer, *library_description, *library_version;
    char *slot_manufacturer, *slot_description;
    int has_slot_id;
    CK_SLOT_ID slot_id;
    char *object;
    int has_id;
    unsigned char *id;
    size_t id_len;
    char *type; /* "private", "public", "cert", "secret-key", "data" */
    char *pin_source, *pin_value, *module_name, *module_path;
} p11_uri;
/* Returns 1 and *out, or 0 with a message naming the attribute in err. */
int p11_uri_parse(const char *str, p11_uri **out, char *err, size_t errlen);
void p11_uri_free(p11_uri *uri);
/* A copy of the object part of a URI (id, object, type: what p11_key_find reads); the
 * token part and any PIN are left out. NULL when out of memory. */
p11_uri *p11_uri_object_copy(const p11_uri *uri);
/* Matchers: 1 when every attribute present in uri matches the (space-padded) info. */
int p11_uri_match_library(const p11_uri *uri, const CK_INFO *info);
int p11_uri_match_slot(const p11_uri *uri, CK_SLOT_ID id, const CK_SLOT_INFO *info);
int p11_uri_match_token(const p11_uri *uri, const CK_TOKEN_INFO *info);

/* ------------------------------------------------------------------ PIN */
/* A PIN held in locked, non-dumpable memory, wiped when freed. */
typedef struct p11_pin p11_pin;
p11_pin *p11_pin_new(const char *value, size_t len);
/* "file:/path", "/path" or "env:VAR"; 0 (NULL) with a message in err. */
p11_pin *p11_pin_from_source(const char *source, char *err, size_t errlen);
void p11_pin_free(p11_pin *pin);
const unsigned char *p11_pin_data(const p11_pin *pin);
size_t p11_pin_len(const p11_pin *pin);

/* --------------------------------------------------------------- module */
typedef struct p11_module p11_module;
/* A path (contains '/') is dlopen'ed through p11-kit; otherwise a p11-kit module
 * name. init_args becomes CK_C_INITIALIZE_ARGS.pReserved (NULL or "" for none). */
p11_module *p11_module_load(const char *path_or_name, const char *init_args);
void p11_module_free(p11_module *m);
CK_FUNCTION_LIST_PTR p11_module_functions(p11_module *m);
/* C_Finalize (errors ignored) then C_Initialize: after fork or device loss. */
CK_RV p11_module_reinit(p11_module *m);

/* --------------------------------------------------------- capabilities */
typedef enum { P11_LEVEL_NONE = 0, P11_LEVEL_TRANSIENT = 1, P11_LEVEL_SEALED = 2 } p11_level;
typedef enum { P11_MS_NONE = 0, P11_MS_HMAC, P11_MS_SP800_108, P11_MS_NATIVE } p11_ms_strategy;
/* ECDHE curves a token may do (ecdh.c) */
typedef enum {
    P11_CURVE_P256 = 0,
    P11_CURVE_P384 = 1,
    P11_CURVE_P521 = 2,
    P11_CURVE_N = 3
} p11_curve;
typedef struct {
    int rsa_pkcs, rsa_pkcs_unwrap, rsa_oaep, rsa_pss, rsa_x509;
    int generic_keygen, aes_keygen;
    int hmac_sha256, hmac_sha384;
    int tls12_master, tls12_master_dh, nss_ems, nss_ems_dh, std_ems, std_ems_dh;
    int nss_prf_sha256;
    int sp800_dp;
    int aes_ecb_wrap, aes_ecb_unwrap, aes_ecb_encrypt, aes_ecb_decrypt;
    int aes_cbc_wrap; /* C_WrapKey(CKM_AES_CBC) verified (transient handles) */
    /* transient: a C_WrapKey length query with this mechanism answers len_wrap_48 for
     * a 48-byte secret and something else for a longer one (0: none found) */
    CK_MECHANISM_TYPE len_wrap_mech;
    CK_ULONG len_wrap_48;
    /* transient: the HMAC-key check refuses a 47-byte secret (SoftHSM2's SHA-384 HMAC),
     * so with len_wrap_mech a secret's length is checked exactly without reading it */
    int hmac_refuses_47;
    int hkdf_derive, hkdf_data; /* CKM_HKDF_DERIVE / CKM_HKDF_DATA (PKCS#11 3.0) verified */
    p11_ms_strategy ms;
    p11_level level;
    /* TLS 1.3's key schedule: P11_MS_NATIVE (HKDF mechanisms, handles wrapped as at
     * `sealed`), P11_MS_HMAC (HMAC sign, `transient`), or P11_MS_NONE */
    p11_ms_strategy tls13;
    p11_level level13;
    /* ECDHE in the token per curve (a key pair generated and a secret derived at
     * activation, at `transient` also digested with C_DigestKey); ecdhe_why: else why
     * not, for the status */
    int ecdh[P11_CURVE_N];
    int hmac384_short_refused; /* `transient`: HMAC-SHA-384 refuses a 32-byte ECDH secret */
    const char *ecdhe_why;
    char missing[256]; /* what keeps this token below `sealed` */
} p11_caps;
const char *p11_level_name(p11_level l);
int p11_level_parse(const char *s, p11_level *out);
const char *p11_ms_strategy_name(p11_ms_strategy s);
const char *p11_tls13_strategy_name(p11_ms_strategy s);

/* ---------------------------------------------------------------- token */
typedef struct {
    const char *module;        /* path or p11-kit module name (else the URI's module-*) */
    const char *init_args;     /* pReserved for C_Initialize */
    const char *token_uri;     /* RFC 7512 URI selecting the token */
    const char *pin_source;    /* "file:...", "env:VAR"; else the URI's pin-* */
    const char *pin_option;    /* its option's name, for messages (NULL: "pin-source") */
    unsigned max_sessions;     /* 0: default (16) */
    unsigned handle_lifetime;  /* seconds a cached secret object lives; 0: 7200 */
    unsigned handle_cache_max; /* entries; 0: 4096 */
    int force_ms;              /* P11_MS_* to force a strategy (tests); 0: best */
    int scrub_heap;            /* P11_SCRUB_*: wipe freed heap after secret-bearing calls */
    int ecdhe_strict;          /* 'ecdhe = require': an in-token ECDHE secret is never read out */
    int absent_ok; /* a module that shows no token at all opens the token as lost (a pool
                      member not reached yet): p11_token_complete finishes it later */
} p11_token_cfg;
/* auto: where the module is p11-kit's (its RPC client, its proxy, or a module found by
 * p11-kit name), whose buffers carry secrets out of the process and are freed
 * unwiped; for a module in process the token's own objects are in this memory. */
enum { P11_SCRUB_AUTO = 0, P11_SCRUB_ALWAYS = 1, P11_SCRUB_NEVER = 2 };

typedef struct p11_token p11_token;
/* Loads the module, selects the token, logs in, probes capabilities. */
p11_token *p11_token_open(const p11_token_cfg *cfg);
void p11_token_free(p11_token *t);
const char *p11_token_label(const p11_token *t);
const p11_caps *p11_token_caps(const p11_token *t);
/* A token opened with absent_ok while absent: re-opens it (when due), logs in and probes
 * its capabilities; 1 when done (at once for a token opened normally). */
int p11_token_complete(p11_token *t);
/* Process-wide epoch: changes when sessions/objects were lost (fork, recovery). */
unsigned long p11_token_epoch(const p11_token *t);

/* ------------------------------------------------------------- sessions */
typedef struct {
    p11_token *tok;
    CK_FUNCTION_LIST_PTR fl;
    CK_SESSION_HANDLE h;
    unsigned long epoch;
    unsigned long gen; /* module generation the session belongs to */
} p11_session;
/* Borrows a logged-in session (re-initialising after fork or token loss). */
int p11_session_get(p11_token *t, p11_session *s);
/* Returns it; last_rv tells whether the session (or the token) was lost. */
void p11_session_put(p11_session *s, CK_RV last_rv);
/* 1 when rv means the session or device is gone and a retry may succeed. */
int p11_rv_is_session_loss(CK_RV rv);
/* p11tls's own code for "the token's long-lived handle key is not visible": a loss
 * of the token (its storage went away, or this process cannot read it). */
#define P11_RV_HANDLE_KEY_MISSING (CKR_VENDOR_DEFINED | 0x70110001UL)
/* "user 'www-data' (uid 33), pid 1234" for messages. */
void p11_whoami(char *buf, size_t len);

/* ------------------------------------------------------------- RSA keys */
typedef struct p11_key p11_key;
/* Finds a private RSA key (by the URI's id and/or object label) and its public half. */
p11_key *p11_key_find(p11_token *t, const p11_uri *uri);
p11_key *p11_key_ref(p11_key *k);
void p11_key_free(p11_key *k);
p11_token *p11_key_token(const p11_key *k);
/* Big-endian modulus and public exponent. */
void p11_key_public(const p11_key *k, const unsigned char **n, size_t *nlen,
                    const unsigned char **e, size_t *elen);
size_t p11_key_bits(const p11_key *k);
/* One C_SignInit + C_Sign with the key (mech: CKM_RSA_PKCS over a DigestInfo, or PSS). */
int p11_rsa_sign(p11_key *k, CK_MECHANISM *mech, const unsigned char *in, size_t inlen,
                 unsigned char *sig, size_t *siglen);
/* C_DecryptInit + C_Decrypt (general callers: PKCS#1 v1.5 and OAEP). */
int p11_rsa_decrypt(p11_key *k, CK_MECHANISM *mech, const unsigned char *in, size_t inlen,
                    unsigned char *out, size_t *outlen);

/* -------------------------------------------------------------- TLS 1.2 */
#define P11_TLS_HANDLE_LEN 48
typedef enum { P11_PRF_SHA256 = 0, P11_PRF_SHA384 = 1 } p11_prf_hash;
/* RSA key exchange: ct (exactly modulus length, publicly valid) is unwrapped into
 * the token; bad padding, wrong length or (where the token shows it) wrong version
 * all give a random secret, with the same result and call sequence. alt_version
 * (0: none) is also accepted (SSL_OP_TLS_ROLLBACK_BUG). Returns 0
 * only for token failures unrelated to the ciphertext. */
int p11_tls_pms_unwrap(p11_key *k, const unsigned char *ct, size_t ctlen, unsigned client_version,
                       unsigned alt_version, unsigned char handle[P11_TLS_HANDLE_LEN]);
/* Master secret (ems=0: seed = client_random||server_random; ems=1: session hash).
 * secret is a pre-master-secret handle from p11_tls_pms_unwrap, or raw bytes that
 * are imported into the token. Writes a master-secret handle. */
int p11_tls_master(p11_token *t, p11_prf_hash h, int ems, const unsigned char *secret,
                   size_t secretlen, const unsigned char *seed, size_t seedlen,
                   unsigned char handle[P11_TLS_HANDLE_LEN]);
/* PRF(master secret behind handle, label||seed) -> out (key block, Finished, exporters). */
int p11_tls_prf(p11_token *t, p11_prf_hash h, const unsigned char handle[P11_TLS_HANDLE_LEN],
                const unsigned char *labelseed, size_t lslen, unsigned char *out, size_t outlen);
/* At activation: finds the token's handle-wrapping key (and makes the per-process
 * objects p11tls needs). A missing key is an error that says how to provision it. */
int p11_tls_prepare(p11_token *t);
/* Provisioning (p11tls-tool provision): creates the handle-wrapping key for the
 * token's level if it has none (*created = 1), as a long-lived token object. */
int p11_tls_provision(p11_token *t, int *created);
/* The same from a given key value (32 bytes; NULL: generated in the token), so that
 * several tokens share one handle key (a handle minted with one resolves with any):
 * where the token has a handle key already, succeeds only if it is that value's. */
int p11_tls_provision_value(p11_token *t, const unsigned char *value, int *created);
/* The handle key's fingerprint (16 bytes, public): in the token, and of a key value. */
int p11_tls_handle_key_fingerprint(p11_token *t, unsigned char fp[16]);
int p11_handle_key_fingerprint_of(const unsigned char value[32], unsigned char fp[16]);
const char *p11_tls_handle_key_label(const p11_token *t);
/* 1: the handle key is in the token; 0: it is not; -1: the lookup failed. */
int p11_tls_handle_key_present(p11_token *t);
/* -------------------------------------------------------------- TLS 1.3 */
/* Secrets are handles of hashlen bytes (32: SHA-256, 48: SHA-384). Flags:
 *   P11_TLS13_SECRET      expand: the output is a new secret (its handle), not a value
 *                         that leaves the token (a key, an IV, exporter output)
 *   P11_TLS13_LOCAL       the new secret is used only during the handshake (handshake
 *                         and master secrets, handshake traffic secrets, finished and
 *                         binder keys): a random handle that this process's cache
 *                         resolves, no wrap; one that the cache has dropped resolves
 *                         to a garbage secret (the handshake fails at Finished)
 *   P11_TLS13_IKM_HANDLE  extract: the input is a PSK's handle (the early secret) */
#define P11_TLS13_SECRET 1u
#define P11_TLS13_LOCAL 2u
#define P11_TLS13_IKM_HANDLE 4u
/* HKDF-Extract(salt, IKM) -> a new secret's handle in out. salt: Expand-Label(prev,
 * dinfo) (dinfo: the HkdfLabel of "derived") when prev is a handle, else none (the
 * early secret). ikm: bytes (an (EC)DHE secret), or a PSK handle (early secret
 * only), or NULL (zeros). The early secret without a PSK and the salt derived from
 * it are public constants, made once per process. */
int p11_tls13_extract(p11_token *t, p11_prf_hash h, const unsigned char *prev,
                      const unsigned char *dinfo, size_t dilen, const unsigned char *ikm,
                      size_t ikmlen, unsigned flags, unsigned char *out);
/* HKDF-Expand(secret, info, outlen): P11_TLS13_SECRET: a new secret (outlen =
 * hashlen), its handle in out; else the output itself (keys, IVs, exporters). */
int p11_tls13_expand(p11_token *t, p11_prf_hash h, const unsigned char *secret,
                     const unsigned char *info, size_t infolen, unsigned flags, unsigned char *out,
                     size_t outlen);
/* HMAC(secret behind key, data) -> out (hashlen bytes): Finished, PSK binders. */
int p11_tls13_hmac(p11_token *t, p11_prf_hash h, const unsigned char *key,
                   const unsigned char *data, size_t datalen, unsigned char *out);
/* 1 if key (n bytes) is a TLS 1.3 handle this process holds (cached). */
int p11_tls13_known(p11_token *t, const unsigned char *key, size_t n);

/* --------------------------------------------------------------- ECDHE */
/* "P-256", "prime256v1", "secp256r1", ...: the curve, or -1. */
int p11_curve_from_name(const char *name);
const char *p11_curve_name(p11_curve c); /* "P-256" */
size_t p11_curve_field_len(p11_curve c); /* the shared secret's length: 32, 48, 66 */
/* An ephemeral key pair generated in the token (session objects; the private half
 * sensitive, not extractable); freeing it destroys the private key. */
typedef struct p11_eckey p11_eckey;
p11_eckey *p11_ecdh_keygen(p11_token *t, p11_curve c);
void p11_eckey_free(p11_eckey *k);
p11_curve p11_eckey_curve(const p11_eckey *k);
/* The public point, uncompressed (04 || X || Y). */
const unsigned char *p11_eckey_point(const p11_eckey *k, size_t *len);
/* ECDH with the peer's uncompressed point: the shared secret is derived into the token;
 * out (the field's length) receives its handle, which p11_tls_master and
 * p11_tls13_extract take in place of the secret (once). */
int p11_ecdh_derive(p11_eckey *k, const unsigned char *peer, size_t peerlen, unsigned char *out);

/* Number of secret objects p11tls currently holds in the token (tests, benchmarks). */
unsigned long p11_tls_live_objects(p11_token *t);

/* ----------------------------------------------------------------- pool */
/* One or more tokens used as one (pool.c): the provider's view of its token(s). Each
 * operation goes to the member that holds what it is given (a pre-master or ECDH
 * secret, a handshake-only TLS 1.3 secret: affinity per handshake, with no connection
 * state); an operation that starts something new goes to the usable member with the
 * fewest operations in flight in this process, ties in turn. A member that is lost
 * is left out at once; the operation is retried on another member where nothing it
 * depends on lives only in the lost one; a background thread probes the lost member
 * and it is used again as soon as it answers. A single token is a pool of one. */
#define P11_POOL_MAX 8
typedef struct {
    const char *name; /* "member1": for messages and the status */
    p11_token_cfg cfg;
} p11_pool_member_cfg;
typedef struct p11_pool p11_pool;
/* Opens every member (an error names the one that failed), prepares each (its handle
 * key) and checks that they share it (fingerprints). Members below min are kept out
 * (never used); none left is an error. probe_ms: the lost members' probe interval. */
p11_pool *p11_pool_open(const p11_pool_member_cfg *m, unsigned n, p11_level min, unsigned probe_ms);
void p11_pool_free(p11_pool *p);
unsigned p11_pool_size(const p11_pool *p);
p11_token *p11_pool_token(const p11_pool *p, unsigned i);
/* "token 'a'" (one member) or "pool of 2 tokens ('a', 'b')": for messages */
const char *p11_pool_label(const p11_pool *p);
/* What the pool offers: the members in use combined (the lowest level; a curve in the
 * token only where every one has it). Fixed at opening. */
const p11_caps *p11_pool_caps(const p11_pool *p);
/* The lowest level of the members usable now (P11_LEVEL_NONE: none is). */
p11_level p11_pool_level_now(p11_pool *p);
typedef enum { P11_MEMBER_IN_USE, P11_MEMBER_LOST, P11_MEMBER_BELOW_MIN } p11_member_state;
/* A member's state, and a line about it ("member1 token 'a' (transient): in use, 1234
 * operations" ...) into buf. */
p11_member_state p11_pool_member(p11_pool *p, unsigned i, char *buf, size_t len);
/* Operations sent to member i by this process (tests, benchmarks). */
unsigned long p11_pool_member_ops(p11_pool *p, unsigned i);
/* 1 if key (n bytes) is a TLS 1.3 handle some member holds (p11_tls13_known). */
int p11_pool_tls13_known(p11_pool *p, const unsigned char *key, size_t n);

/* The server's key in every member in use (the same key: refused, naming the member,
 * when one lacks it or holds another). */
typedef struct p11_pool_key p11_pool_key;
p11_pool_key *p11_pool_key_find(p11_pool *p, const p11_uri *uri);
p11_pool_key *p11_pool_key_ref(p11_pool_key *k);
void p11_pool_key_free(p11_pool_key *k);
void p11_pool_key_public(const p11_pool_key *k, const unsigned char **n, size_t *nlen,
                         const unsigned char **e, size_t *elen);
int p11_pool_rsa_sign(p11_pool_key *k, CK_MECHANISM *mech, const unsigned char *in, size_t inlen,
                      unsigned char *sig, size_t *siglen);
int p11_pool_rsa_decrypt(p11_pool_key *k, CK_MECHANISM *mech, const unsigned char *in, size_t inlen,
                         unsigned char *out, size_t *outlen);
/* The operations above, routed (same arguments as the token's). */
int p11_pool_pms_unwrap(p11_pool_key *k, const unsigned char *ct, size_t ctlen,
                        unsigned client_version, unsigned alt_version,
                        unsigned char handle[P11_TLS_HANDLE_LEN]);
int p11_pool_tls_master(p11_pool *p, p11_prf_hash h, int ems, const unsigned char *secret,
                        size_t secretlen, const unsigned char *seed, size_t seedlen,
                        unsigned char handle[P11_TLS_HANDLE_LEN]);
int p11_pool_tls_prf(p11_pool *p, p11_prf_hash h, const unsigned char handle[P11_TLS_HANDLE_LEN],
                     const unsigned char *labelseed, size_t lslen, unsigned char *out,
                     size_t outlen);
int p11_pool_tls13_extract(p11_pool *p, p11_prf_hash h, const unsigned char *prev,
                           const unsigned char *dinfo, size_t dilen, const unsigned char *ikm,
                           size_t ikmlen, unsigned flags, unsigned char *out);
int p11_pool_tls13_expand(p11_pool *p, p11_prf_hash h, const unsigned char *secret,
                          const unsigned char *info, size_t infolen, unsigned flags,
                          unsigned char *out, size_t outlen);
int p11_pool_tls13_hmac(p11_pool *p, p11_prf_hash h, const unsigned char *key,
                        const unsigned char *data, size_t datalen, unsigned char *out);
/* A key pair on a member that has the curve (the derive runs there). */
p11_eckey *p11_pool_ecdh_keygen(p11_pool *p, p11_curve c);
int p11_pool_ecdh_derive(p11_pool *p, p11_eckey *k, const unsigned char *peer, size_t peerlen,
                         unsigned char *out);

#endif
