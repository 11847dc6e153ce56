/* fuzz_common.h - helpers shared by p11tls's libFuzzer targets: a consumer of the
 * fuzzer's bytes, and a library context with the (sanitized) p11tls provider
 * loaded for the token of tests/with-token.sh. */
#ifndef P11TLS_FUZZ_COMMON_H
#define P11TLS_FUZZ_COMMON_H
#include <stddef.h>
#include <stdint.h>
#include <openssl/crypto.h>

/* Takes bytes from the front of the input; past the end everything is 0/empty. */
typedef struct {
    const uint8_t *p;
    size_t left;
} fz_in;

uint8_t fz_u8(fz_in *in);
uint16_t fz_u16(fz_in *in);
/* A value in [0, n) (n > 0). */
unsigned fz_pick(fz_in *in, unsigned n);
/* Up to max bytes (a length byte or two first); *len receives the count. */
const uint8_t *fz_bytes(fz_in *in, size_t max, size_t *len);
/* Exactly n bytes (fewer if the input ends). */
const uint8_t *fz_take(fz_in *in, size_t n, size_t *got);
/* The rest of the input. */
const uint8_t *fz_rest(fz_in *in, size_t *len);

/* Prints a message and aborts (a failed invariant: libFuzzer keeps the input). */
void fz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
#define FZ_CHECK(cond, ...)                                                                        \
    do {                                                                                           \
        if (!(cond))                                                                               \
            fz_fail(__VA_ARGS__);                                                                  \
    } while (0)

/* Environment variable of the token (tests/with-token.sh); exits if unset. */
const char *fz_env(const char *name);
/* The p11tls.so to load: $P11TLS_FUZZ_PROVIDER, else the one built with the fuzzers. */
const char *fz_provider_so(void);
/* Appends to buf the [p11tls_sect] lines for the token under test, except the keys
 * named in skip (a ";"-separated list, e.g. ";token;min-assurance;"). */
void fz_token_section(char *buf, size_t len, const char *skip);
/* A value quoted for openssl.cnf. */
void fz_cnf_quote(char *dst, size_t len, const char *v);
/* A library context loaded from the openssl.cnf text (p11tls and default
 * providers); NULL (errors printed) on failure. */
OSSL_LIB_CTX *fz_libctx_from_cnf(const char *cnf);
/* The openssl.cnf text for p11tls with its section body given. */
void fz_cnf_text(char *buf, size_t len, const char *section_body);
/* A library context with p11tls loaded for the token under test and usable
 * (exits with the provider's failure otherwise), extra: more [p11tls_sect]
 * lines (or NULL). Made once, never freed. */
OSSL_LIB_CTX *fz_p11tls_libctx(const char *extra);
/* 1 if p11tls is loaded and usable in ctx. */
int fz_p11tls_usable(OSSL_LIB_CTX *ctx, char *why, size_t whylen);
/* Keeps the PKCS#11 module mapped for the whole run (RTLD_NODELETE) so that leak
 * reports through it can be symbolized (and matched by lsan.supp). */
void fz_pin_module(void);
/* A passphrase callback that refuses (an encrypted PEM must never prompt). */
int fz_no_password(char *buf, int size, int rwflag, void *u);
#endif
