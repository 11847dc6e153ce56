/* testutil.h - helpers shared by the CUnit suites: the token under test (from the
 * env.sh of scripts/make-token.sh), a library context with p11tls loaded through
 * the token's openssl.cnf, and a runner. */
#ifndef P11TLS_TESTUTIL_H
#define P11TLS_TESTUTIL_H
#include <CUnit/Basic.h>
#include <openssl/evp.h>
#include "p11.h"

/* P11TLS_KIND: "softhsm", "softhsm-remote", "nss" (NULL outside with-token.sh). */
const char *tu_kind(void);
/* Environment variable that must be set (fails the program otherwise). */
const char *tu_env(const char *name);
/* A p11_token_cfg for the token under test (pin from P11TLS_PIN_FILE). */
void tu_token_cfg(p11_token_cfg *cfg);
/* Opens the token under test; aborts with OpenSSL's errors on failure. */
p11_token *tu_open_token(void);
/* The parsed P11TLS_KEY_URI. */
p11_uri *tu_key_uri(void);
/* A library context with P11TLS_OPENSSL_CNF loaded (p11tls + default). Cached. */
OSSL_LIB_CTX *tu_libctx(void);
/* The first private key OSSL_STORE finds at uri in libctx (NULL if none). */
EVP_PKEY *tu_store_pkey(OSSL_LIB_CTX *libctx, const char *uri);
/* The token key through the provider (store, P11TLS_KEY_URI), in tu_libctx(). */
EVP_PKEY *tu_token_pkey(void);
/* The certificate's public key (P11TLS_CERT), in the default provider. */
EVP_PKEY *tu_cert_pubkey(void);
/* Registers one suite of tests (NULL-terminated CU_TestInfo) and runs it with the
 * basic runner; returns the process exit status (non-zero on any failure). */
int tu_run(const char *suite, CU_TestInfo *tests);
/* An RSA PKCS#1 v1.5 encryption block of k bytes, 00 02 PS 00 M, for a message M of
 * mlen bytes (random, its first two bytes 03 03; copied to m unless NULL), with one
 * defect: none, a wrong first byte, a wrong block type, or no zero byte after PS. */
typedef enum { TU_EM_NONE, TU_EM_FIRST_BYTE, TU_EM_BLOCK_TYPE, TU_EM_NO_SEPARATOR } tu_em_defect;
void tu_make_em(unsigned char *em, size_t k, size_t mlen, tu_em_defect defect, unsigned char *m);
/* Secret-key session objects t's module shows (all sessions of this process; -1 if
 * the token cannot be searched). Behind p11-kit server each process has its own view. */
long tu_count_secret_objects(p11_token *t);
/* The same for session objects of class cls (CKO_PRIVATE_KEY: ECDHE key pairs). */
long tu_count_session_objects(p11_token *t, CK_OBJECT_CLASS cls);
/* Prints OpenSSL's error queue (for diagnosing failures) and clears it. */
void tu_print_errors(void);
#endif
