/* fuzz_pem_uri.c - "-----BEGIN P11TLS KEY URI-----" PEM files (the provider's
 * decoder_pem_uri.c, then store/keymgmt through the URI) read with
 * PEM_read_bio_PrivateKey_ex in a library context with the sanitized p11tls
 * loaded for the token under test, and pkcs11: URIs through OSSL_STORE. Most
 * inputs fail cleanly; a key that loads must be the token's RSA key.
 *
 * Input: byte 0 selects the shape.
 *   0: the input is the whole file (fuzzed headers, footers, base64, surroundings)
 *   1: prefix | PEM block with the fuzzed body base64-encoded | suffix
 *   2: as 1, the body being the token's key URI followed by fuzzed bytes
 *   3: as 1, the body being "pkcs11:" followed by fuzzed bytes
 *   4: no PEM: "pkcs11:" followed by the fuzzed bytes opened as an OSSL_STORE URI
 *      (the provider's store.c, then the same key lookup)
 * (for 1-3: a byte of flags, then prefix and suffix lengths, then the bytes). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/store.h>
#include <openssl/ui.h>
#include "fuzz_common.h"

#define LABEL "P11TLS KEY URI"

static OSSL_LIB_CTX *ctx;
static const char *key_uri;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ctx = fz_p11tls_libctx(NULL);
    key_uri = fz_env("P11TLS_KEY_URI");
    return 0;
}

static void b64_block(BIO *out, const uint8_t *body, size_t n, int width, int crlf)
{
    /* EVP_EncodeBlock output, broken into lines of width characters (0: one line). */
    size_t enc_len = 4 * ((n + 2) / 3) + 1;
    unsigned char *enc = malloc(enc_len);
    int len;
    if (enc == NULL)
        return;
    len = EVP_EncodeBlock(enc, body, (int)n);
    for (int i = 0; i < len; i += width ? width : len) {
        int take = width && len - i > width ? width : len - i;
        BIO_write(out, enc + i, take);
        BIO_puts(out, crlf ? "\r\n" : "\n");
    }
    free(enc);
}

static void check_key(EVP_PKEY *pkey)
{
    /* Whatever decoded it (p11tls or, for software keys, another provider): a
     * usable key object. The token key: RSA, 2048 bits. */
    const char *prov = OSSL_PROVIDER_get0_name(EVP_PKEY_get0_provider(pkey));
    if (prov != NULL && strcmp(prov, "p11tls") == 0)
        FZ_CHECK(EVP_PKEY_is_a(pkey, "RSA") && EVP_PKEY_get_bits(pkey) == 2048,
                 "p11tls loaded a key that is not the token's RSA-2048 key");
}

/* "pkcs11:" + bytes through OSSL_STORE (never another scheme: no file is opened). */
static void store(fz_in *in)
{
    size_t n;
    const uint8_t *rest = fz_rest(in, &n);
    char *uri = malloc(n + 8);
    OSSL_STORE_CTX *sc;

    if (uri == NULL)
        return;
    memcpy(uri, "pkcs11:", 7);
    memcpy(uri + 7, rest, n);
    uri[7 + n] = '\0';
    sc = OSSL_STORE_open_ex(uri, ctx, NULL, UI_null(), NULL, NULL, NULL, NULL);
    for (int i = 0; sc != NULL && i < 4 && !OSSL_STORE_eof(sc); i++) {
        OSSL_STORE_INFO *info = OSSL_STORE_load(sc);
        if (info != NULL && OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY)
            check_key(OSSL_STORE_INFO_get0_PKEY(info));
        OSSL_STORE_INFO_free(info);
    }
    OSSL_STORE_close(sc);
    free(uri);
    ERR_clear_error();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_in in = {data, size};
    unsigned mode = fz_pick(&in, 5);
    BIO *bio;
    EVP_PKEY *pkey;

    if (mode == 4) {
        store(&in);
        return 0;
    }
    if ((bio = BIO_new(BIO_s_mem())) == NULL)
        return 0;
    if (mode == 0) {
        size_t n;
        const uint8_t *all = fz_rest(&in, &n);
        BIO_write(bio, all, (int)n);
    } else {
        uint8_t flags = fz_u8(&in);
        size_t plen, slen, blen;
        const uint8_t *prefix = fz_bytes(&in, 255, &plen);
        const uint8_t *suffix = fz_bytes(&in, 255, &slen);
        const uint8_t *body = fz_rest(&in, &blen);
        uint8_t *full = NULL;
        int width = (flags & 3) == 0 ? 64 : (flags & 3) == 1 ? 76 : (flags & 3) == 2 ? 0 : 4;
        int crlf = (flags & 4) != 0;

        if (mode >= 2) {
            const char *head = mode == 2 ? key_uri : "pkcs11:";
            size_t hl = strlen(head);
            full = malloc(hl + blen + 1);
            if (full == NULL) {
                BIO_free(bio);
                return 0;
            }
            memcpy(full, head, hl);
            memcpy(full + hl, body, blen);
            body = full;
            blen += hl;
        }
        BIO_write(bio, prefix, (int)plen);
        if (flags & 8)
            BIO_puts(bio, "\n");
        BIO_puts(bio, "-----BEGIN " LABEL "-----");
        BIO_puts(bio, crlf ? "\r\n" : "\n");
        if (flags & 16)
            BIO_puts(bio, "Proc-Type: 4,ENCRYPTED\nDEK-Info: "
                          "AES-128-CBC,00000000000000000000000000000000\n\n");
        b64_block(bio, body, blen, width, crlf);
        BIO_puts(bio, (flags & 32) ? "-----END P11TLS KEY URI-----" : "-----END " LABEL "-----\n");
        BIO_write(bio, suffix, (int)slen);
        free(full);
    }

    pkey = PEM_read_bio_PrivateKey_ex(bio, NULL, fz_no_password, NULL, ctx, NULL);
    if (pkey != NULL) {
        check_key(pkey);
        EVP_PKEY_free(pkey);
    }
    ERR_clear_error();
    BIO_free(bio);
    return 0;
}
