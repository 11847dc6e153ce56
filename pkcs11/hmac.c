/* hmac.c - HMAC computed by the token, keyed by a secret object, and TLS 1.2's
 * P_hash built from it: the PRF of tokens without TLS mechanisms (`transient`),
 * where only the output leaves the token. */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/proverr.h>
#include "internal.h"

CK_MECHANISM_TYPE p11_hmac_mech(p11_prf_hash h)
{
    return h == P11_PRF_SHA384 ? CKM_SHA384_HMAC : CKM_SHA256_HMAC;
}

size_t p11_hash_len(p11_prf_hash h)
{
    return h == P11_PRF_SHA384 ? 48 : 32;
}

CK_RV p11_hmac(p11_session *s, CK_MECHANISM_TYPE m, CK_OBJECT_HANDLE key, const unsigned char *in,
               size_t inlen, unsigned char *out, CK_ULONG olen)
{
    CK_MECHANISM mech = {m, NULL, 0};
    CK_ULONG len = olen;
    CK_RV rv = P11_CALL(s->fl, C_SignInit, s->h, &mech, key);
    if (rv == CKR_OK)
        rv = P11_CALL(s->fl, C_Sign, s->h, (CK_BYTE_PTR)in, inlen, out, &len);
    if (rv == CKR_OK && len != olen)
        rv = CKR_FUNCTION_FAILED;
    return rv;
}

/* TLS 1.2's P_hash(secret, label||seed) with HMAC computed by the token. Only the
 * output leaves it (for the master secret at `transient`, that output is it). */
CK_RV p11_p_hash(p11_session *s, p11_prf_hash h, CK_OBJECT_HANDLE key, const unsigned char *ls,
                 size_t lslen, unsigned char *out, size_t outlen)
{
    size_t hl = p11_hash_len(h), done = 0;
    CK_MECHANISM_TYPE m = p11_hmac_mech(h);
    unsigned char *buf = malloc(hl + lslen), blk[48];
    CK_RV rv = CKR_OK;

    if (buf == NULL)
        return CKR_HOST_MEMORY;
    memcpy(buf + hl, ls, lslen);
    /* A(1) = HMAC(label||seed) */
    rv = p11_hmac(s, m, key, ls, lslen, buf, hl);
    while (rv == CKR_OK && done < outlen) {
        size_t take = outlen - done < hl ? outlen - done : hl;
        rv = p11_hmac(s, m, key, buf, hl + lslen, blk, hl); /* HMAC(A(i) || label||seed) */
        if (rv != CKR_OK)
            break;
        memcpy(out + done, blk, take);
        done += take;
        if (done < outlen)
            rv = p11_hmac(s, m, key, buf, hl, buf, hl); /* A(i+1) = HMAC(A(i)) */
    }
    OPENSSL_cleanse(blk, sizeof(blk));
    OPENSSL_cleanse(buf, hl + lslen);
    free(buf);
    return rv;
}
