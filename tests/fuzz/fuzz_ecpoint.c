/* fuzz_ecpoint.c - the EC point decoders of ECDHE in the token:
 * - op 0: p11_ec_point_from_attr (pkcs11/ecdh.c), which reads a token's CKA_EC_POINT
 *   (DER OCTET STRING or bare): any input gives a verdict, never a read past it; what it
 *   accepts is an uncompressed point of the field's size, copied from the input;
 * - op 1: a peer's key share set on parameters made by p11tls's EC key management
 *   (provider/keymgmt_ec.c, "provider=p11tls"): accepted or refused exactly as the
 *   default provider's EC key management does with the same bytes, and an accepted
 *   point reads back the same from both.
 * Input: [op][curve][bytes...]. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include "fuzz_common.h"
#include "internal.h"

static OSSL_LIB_CTX *ctx;
static const char *const groups[3] = {"prime256v1", "secp384r1", "secp521r1"};
static const size_t flens[3] = {32, 48, 66};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ctx = fz_p11tls_libctx(NULL);
    return 0;
}

/* Parameters of the group from the given provider, and the share set on them:
 * 1 accepted (the point read back into out), 0 refused. */
static int share(const char *prop, const char *group, const uint8_t *pt, size_t len,
                 unsigned char *out, size_t *outlen)
{
    EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_name(ctx, "EC", prop);
    EVP_PKEY *k = NULL;
    int ok = pc != NULL && EVP_PKEY_paramgen_init(pc) > 0 &&
             EVP_PKEY_CTX_set_group_name(pc, group) > 0 && EVP_PKEY_paramgen(pc, &k) > 0;
    FZ_CHECK(ok, "paramgen of %s from %s failed", group, prop);
    ok = EVP_PKEY_set1_encoded_public_key(k, pt, len) > 0;
    if (ok)
        ok = EVP_PKEY_get_octet_string_param(k, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, out, 1 + 2 * 66,
                                             outlen) > 0;
    EVP_PKEY_free(k);
    EVP_PKEY_CTX_free(pc);
    ERR_clear_error();
    return ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_in in = {data, size};
    unsigned op = fz_pick(&in, 2), c = fz_pick(&in, 3);
    size_t len;
    const uint8_t *b = fz_rest(&in, &len);

    if (op == 0) {
        unsigned char out[1 + 2 * 66];
        size_t want = 1 + 2 * flens[c];
        if (p11_ec_point_from_attr(b, len, flens[c], out)) {
            FZ_CHECK(out[0] == 0x04, "accepted a point that is not uncompressed");
            FZ_CHECK(len >= want && memcmp(out, b + (len - want), want) == 0,
                     "the point is not the input's last %zu bytes", want);
        }
        return 0;
    } else {
        unsigned char p1[1 + 2 * 66], p2[1 + 2 * 66];
        size_t l1 = 0, l2 = 0;
        int a = share("provider=p11tls", groups[c], b, len, p1, &l1);
        int d = share("provider=default", groups[c], b, len, p2, &l2);
        FZ_CHECK(a == d, "%s: p11tls %s a share the default provider %s", groups[c],
                 a ? "accepted" : "refused", d ? "accepts" : "refuses");
        FZ_CHECK(!a || (l1 == l2 && memcmp(p1, p2, l1) == 0),
                 "%s: the accepted share reads back "
                 "differently",
                 groups[c]);
    }
    return 0;
}
