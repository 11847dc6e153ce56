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

CK_MECHANISM_TYPE p11_hash_mech(p11_prf_hash h)
{
    return h == P11_PRF_SHA384 ? CKM_SHA384 : CKM_SHA256;
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

/* HMAC(key, msg) where the message is a secret object (an ECDHE secret as TLS 1.3's
 * HKDF-Extract input) and the key's bytes are known here (the salt: a public constant,
 * or at `transient` a secret that came out of an HMAC anyway). RFC 2104 spelt out with
 * the token's digest, H((K ^ opad) || H((K ^ ipad) || msg)), the message added with
 * C_DigestKey so that it never leaves the token. The inner hash does: it is worth the
 * output (which at `transient` leaves the token next), not the message. */
CK_RV p11_hmac_of_object(p11_session *s, p11_prf_hash h, const unsigned char *key, size_t klen,
                         CK_OBJECT_HANDLE msg, unsigned char *out)
{
    size_t hl = p11_hash_len(h), bl = h == P11_PRF_SHA384 ? 128 : 64;
    CK_MECHANISM dm = {p11_hash_mech(h), NULL, 0};
    unsigned char pad[128 + 48];
    CK_ULONG len = hl;
    CK_RV rv, irv;

    if (klen > bl)
        return CKR_ARGUMENTS_BAD; /* (salts are one hash long) */
    memset(pad, 0, sizeof(pad));
    memcpy(pad, key, klen);
    for (size_t i = 0; i < bl; i++)
        pad[i] ^= 0x36;
    irv = rv = P11_CALL(s->fl, C_DigestInit, s->h, &dm);
    if (rv == CKR_OK)
        rv = P11_CALL(s->fl, C_DigestUpdate, s->h, pad, bl);
    if (rv == CKR_OK)
        rv = P11_CALL(s->fl, C_DigestKey, s->h, msg);
    if (irv == CKR_OK) { /* (also ends the operation after a failed step) */
        CK_RV frv = P11_CALL(s->fl, C_DigestFinal, s->h, pad + bl, &len);
        if (rv == CKR_OK)
            rv = frv != CKR_OK ? frv : len != hl ? CKR_FUNCTION_FAILED : CKR_OK;
    }
    for (size_t i = 0; i < bl; i++)
        pad[i] ^= 0x36 ^ 0x5c;
    if (rv == CKR_OK)
        rv = P11_CALL(s->fl, C_DigestInit, s->h, &dm);
    if (rv == CKR_OK) {
        len = hl;
        rv = P11_CALL(s->fl, C_Digest, s->h, pad, bl + hl, out, &len);
        if (rv == CKR_OK && len != hl)
            rv = CKR_FUNCTION_FAILED;
    }
    OPENSSL_cleanse(pad, sizeof(pad));
    return rv;
}
