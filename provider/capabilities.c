/* capabilities.c - the TLS-GROUP capabilities of p11tls's EC key management. libssl
 * offers a group only when the key management it would fetch for it belongs to the
 * provider that declares the group; with p11tls preferred, that is p11tls's for every
 * EC group, so p11tls declares them all, with the IANA ids, security bits and
 * protocol ranges of the default provider's declarations (keymgmt_ec.c serves the
 * groups the token cannot do in software, as the default provider would). */
#include <string.h>
#include <strings.h>
#include <openssl/core_names.h>
#include <openssl/params.h>
#include <openssl/prov_ssl.h>
#include "provider.h"

static const struct {
    const char *name, *internal;
    unsigned id, secbits;
    int modern; /* also TLS 1.3 (and DTLS 1.3); else TLS 1.2 / DTLS 1.2 at most */
} ec_groups[] = {
    {"sect163k1", "sect163k1", 1, 80, 0},
    {"K-163", "sect163k1", 1, 80, 0},
    {"sect163r1", "sect163r1", 2, 80, 0},
    {"sect163r2", "sect163r2", 3, 80, 0},
    {"B-163", "sect163r2", 3, 80, 0},
    {"sect193r1", "sect193r1", 4, 80, 0},
    {"sect193r2", "sect193r2", 5, 80, 0},
    {"sect233k1", "sect233k1", 6, 112, 0},
    {"K-233", "sect233k1", 6, 112, 0},
    {"sect233r1", "sect233r1", 7, 112, 0},
    {"B-233", "sect233r1", 7, 112, 0},
    {"sect239k1", "sect239k1", 8, 112, 0},
    {"sect283k1", "sect283k1", 9, 128, 0},
    {"K-283", "sect283k1", 9, 128, 0},
    {"sect283r1", "sect283r1", 10, 128, 0},
    {"B-283", "sect283r1", 10, 128, 0},
    {"sect409k1", "sect409k1", 11, 192, 0},
    {"K-409", "sect409k1", 11, 192, 0},
    {"sect409r1", "sect409r1", 12, 192, 0},
    {"B-409", "sect409r1", 12, 192, 0},
    {"sect571k1", "sect571k1", 13, 256, 0},
    {"K-571", "sect571k1", 13, 256, 0},
    {"sect571r1", "sect571r1", 14, 256, 0},
    {"B-571", "sect571r1", 14, 256, 0},
    {"secp160k1", "secp160k1", 15, 80, 0},
    {"secp160r1", "secp160r1", 16, 80, 0},
    {"secp160r2", "secp160r2", 17, 80, 0},
    {"secp192k1", "secp192k1", 18, 80, 0},
    {"secp192r1", "prime192v1", 19, 80, 0},
    {"P-192", "prime192v1", 19, 80, 0},
    {"secp224k1", "secp224k1", 20, 112, 0},
    {"secp224r1", "secp224r1", 21, 112, 0},
    {"P-224", "secp224r1", 21, 112, 0},
    {"secp256k1", "secp256k1", 22, 128, 0},
    {"secp256r1", "prime256v1", 23, 128, 1},
    {"P-256", "prime256v1", 23, 128, 1},
    {"secp384r1", "secp384r1", 24, 192, 1},
    {"P-384", "secp384r1", 24, 192, 1},
    {"secp521r1", "secp521r1", 25, 256, 1},
    {"P-521", "secp521r1", 25, 256, 1},
    {"brainpoolP256r1", "brainpoolP256r1", 26, 128, 0},
    {"brainpoolP384r1", "brainpoolP384r1", 27, 192, 0},
    {"brainpoolP512r1", "brainpoolP512r1", 28, 256, 0},
};

/* With 'ecdhe = require' only the curves the token can do are declared. */
static int tls_groups(const P11TLS_PROV *prov, OSSL_CALLBACK *cb, void *arg)
{
    for (size_t i = 0; i < sizeof(ec_groups) / sizeof(ec_groups[0]); i++) {
        if (prov->ecdhe == P11TLS_ECDHE_REQUIRE) {
            int c = p11_curve_from_name(ec_groups[i].internal);
            if (c < 0 || prov->pool == NULL || !p11_pool_caps(prov->pool)->ecdh[c])
                continue;
        }
        unsigned id = ec_groups[i].id, sec = ec_groups[i].secbits;
        int min_tls = TLS1_VERSION, max_tls = ec_groups[i].modern ? 0 : TLS1_2_VERSION;
        int min_dtls = DTLS1_VERSION, max_dtls = ec_groups[i].modern ? 0 : DTLS1_2_VERSION;
        OSSL_PARAM p[] = {
            OSSL_PARAM_utf8_string(OSSL_CAPABILITY_TLS_GROUP_NAME, (char *)ec_groups[i].name,
                                   strlen(ec_groups[i].name)),
            OSSL_PARAM_utf8_string(OSSL_CAPABILITY_TLS_GROUP_NAME_INTERNAL,
                                   (char *)ec_groups[i].internal, strlen(ec_groups[i].internal)),
            OSSL_PARAM_utf8_string(OSSL_CAPABILITY_TLS_GROUP_ALG, "EC", 2),
            OSSL_PARAM_uint(OSSL_CAPABILITY_TLS_GROUP_ID, &id),
            OSSL_PARAM_uint(OSSL_CAPABILITY_TLS_GROUP_SECURITY_BITS, &sec),
            OSSL_PARAM_int(OSSL_CAPABILITY_TLS_GROUP_MIN_TLS, &min_tls),
            OSSL_PARAM_int(OSSL_CAPABILITY_TLS_GROUP_MAX_TLS, &max_tls),
            OSSL_PARAM_int(OSSL_CAPABILITY_TLS_GROUP_MIN_DTLS, &min_dtls),
            OSSL_PARAM_int(OSSL_CAPABILITY_TLS_GROUP_MAX_DTLS, &max_dtls),
            OSSL_PARAM_END};
        if (!cb(p, arg))
            return 0;
    }
    return 1;
}

int p11tls_get_capabilities(void *provctx, const char *capability, OSSL_CALLBACK *cb, void *arg)
{
    if (capability != NULL && strcasecmp(capability, "TLS-GROUP") == 0)
        return tls_groups(provctx, cb, arg);
    return 0;
}
