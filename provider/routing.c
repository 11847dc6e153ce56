/* routing.c - does libssl reach p11tls? libssl fetches "TLS1-PRF" from its library
 * context with the SSL_CTX's property query (NULL for nginx and curl), so which
 * provider's PRF runs is decided by openssl.cnf's default_properties, not by
 * p11tls. Without `default_properties = ?provider=p11tls` the default provider
 * usually wins: the TLS 1.2 secrets would be computed in software while p11tls
 * reports itself active (and RSA key exchange would fail with bad_record_mac, since
 * p11tls's RSA decryption returns a handle). So p11tls asks the same question
 * libssl will ask, at its first use in a process and in its status, and refuses
 * every operation when the answer is another provider, naming it and the fix,
 * unless the configuration accepts that (`min-assurance = key-only`).
 *
 * Not at activation: other providers and the algorithm section may not be loaded
 * yet while OpenSSL reads its configuration. */
#include <stdio.h>
#include <string.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/provider.h>
#include "provider.h"

#define NOT_USABLE "p11tls: NOT USABLE: "

/* The TLS operations libssl fetches by name that p11tls must serve: KDFs, and the
 * MAC of TLS 1.3's Finished and binders. */
static const struct {
    const char *name;
    int mac;
} fetched[] = {{"TLS1-PRF", 0}, {"TLS13-KDF", 0}, {"HMAC", 1}};

/* 1 if p11tls serves it in the application's context; else 0 with *winner set. */
static int ours(P11TLS_PROV *prov, const char *name, int mac, const char **winner)
{
    EVP_KDF *k = NULL;
    EVP_MAC *m = NULL;
    const OSSL_PROVIDER *p = NULL;
    int ok;

    ERR_set_mark();
    if (mac)
        m = EVP_MAC_fetch(prov->app_libctx, name, NULL);
    else
        k = EVP_KDF_fetch(prov->app_libctx, name, NULL);
    ERR_pop_to_mark();
    if (k != NULL)
        p = EVP_KDF_get0_provider(k);
    else if (m != NULL)
        p = EVP_MAC_get0_provider(m);
    ok = p != NULL && OSSL_PROVIDER_get0_provider_ctx(p) == prov;
    *winner = p != NULL ? OSSL_PROVIDER_get0_name(p) : "(none)";
    EVP_KDF_free(k);
    EVP_MAC_free(m);
    return ok;
}

int p11tls_routing_ok(P11TLS_PROV *prov)
{
    const char *winner = NULL, *name = NULL;
    char buf[512];

    if (__atomic_load_n(&prov->routing, __ATOMIC_ACQUIRE) == 1)
        return 1;
    for (size_t i = 0; i < sizeof(fetched) / sizeof(fetched[0]); i++) {
        if (!ours(prov, fetched[i].name, fetched[i].mac, &winner)) {
            name = fetched[i].name;
            break;
        }
    }
    if (name == NULL) {
        __atomic_store_n(&prov->routing, 1, __ATOMIC_RELEASE);
        return 1;
    }
    /* Not cached: the application may still set its default properties. */
    snprintf(buf, sizeof(buf),
             "libssl would take %s from provider '%s', not from p11tls: the TLS secrets "
             "would be computed in software. Add 'default_properties = ?provider=%s' to "
             "the section named by 'alg_section' in openssl.cnf (or set "
             "'min-assurance = key-only' to keep only the key in the token)",
             name, winner, prov->prov_name != NULL ? prov->prov_name : P11TLS_NAME);
    if (__atomic_load_n(&prov->routing_name, __ATOMIC_ACQUIRE) == NULL) {
        /* The status name, "p11tls: NOT USABLE: <why>", set once. */
        size_t n = strlen(NOT_USABLE) + strlen(buf) + 1;
        char *mine = OPENSSL_malloc(n), *expected = NULL;
        if (mine != NULL) {
            snprintf(mine, n, "%s%s", NOT_USABLE, buf);
            if (__atomic_compare_exchange_n(&prov->routing_name, &expected, mine, 0,
                                            __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
                p11_debug("%s", buf);
            else
                OPENSSL_free(mine); /* another thread said it first */
        }
    }
    ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_CONFIG_DATA, "p11tls is not usable: %s", buf);
    return 0;
}
