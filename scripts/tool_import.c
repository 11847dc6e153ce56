/* tool_import.c - `p11tls-tool import-key`: puts one RSA server key into a token from
 * a PEM file (encrypted under a passphrase: the key's protected backup), so that the
 * members of a pool hold the same key. The private key is created sensitive and not
 * extractable (sign, decrypt, unwrap), with its public key beside it, both with the
 * given label and id. Its parts pass through this process's memory once and are wiped;
 * nothing of them is printed (only the public modulus's fingerprint). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include "p11.h"
#include "tool.h"

/* The passphrase: the first line of passfile (the callback's argument). */
static int pass_cb(char *buf, int size, int rwflag, void *u)
{
    const char *passfile = u;
    FILE *f;
    size_t n;
    (void)rwflag;
    if (passfile == NULL || (f = fopen(passfile, "r")) == NULL)
        return -1;
    if (fgets(buf, size, f) == NULL) {
        fclose(f);
        return -1;
    }
    fclose(f);
    n = strcspn(buf, "\r\n");
    buf[n] = '\0';
    return (int)n;
}

static int encrypted_pem(const char *path)
{
    char line[256];
    int enc = 0;
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    while (fgets(line, sizeof(line), f) != NULL)
        if (strstr(line, "BEGIN ENCRYPTED PRIVATE KEY") != NULL ||
            strstr(line, "Proc-Type: 4,ENCRYPTED") != NULL)
            enc = 1;
    fclose(f);
    return enc;
}

/* A big number's bytes (big-endian, wiped by the caller). */
static unsigned char *bn_bytes(const EVP_PKEY *k, const char *name, CK_ULONG *len)
{
    BIGNUM *b = NULL;
    unsigned char *out = NULL;
    if (EVP_PKEY_get_bn_param(k, name, &b) && (out = OPENSSL_malloc(BN_num_bytes(b) + 1)) != NULL)
        *len = (CK_ULONG)BN_bn2bin(b, out);
    BN_clear_free(b);
    return out;
}

/* A private key with this attribute value: 1, 0 none, -1 the lookup failed. */
static int exists(p11_session *s, CK_ATTRIBUTE_TYPE type, const void *v, size_t len)
{
    CK_RV last = CKR_OK;
    return tool_object_exists(s, CKO_PRIVATE_KEY, type, v, len, &last);
}

int tool_import_key(p11_token *t, const char *key_file, const char *passfile, const char *label,
                    const unsigned char *id, size_t idlen, int if_missing)
{
    static const char *const parts[8] = {
        OSSL_PKEY_PARAM_RSA_N,         OSSL_PKEY_PARAM_RSA_E,
        OSSL_PKEY_PARAM_RSA_D,         OSSL_PKEY_PARAM_RSA_FACTOR1,
        OSSL_PKEY_PARAM_RSA_FACTOR2,   OSSL_PKEY_PARAM_RSA_EXPONENT1,
        OSSL_PKEY_PARAM_RSA_EXPONENT2, OSSL_PKEY_PARAM_RSA_COEFFICIENT1};
    static const CK_ATTRIBUTE_TYPE types[8] = {
        CKA_MODULUS, CKA_PUBLIC_EXPONENT, CKA_PRIVATE_EXPONENT, CKA_PRIME_1,
        CKA_PRIME_2, CKA_EXPONENT_1,      CKA_EXPONENT_2,       CKA_COEFFICIENT};
    unsigned char *v[8] = {NULL};
    CK_ULONG vl[8] = {0};
    CK_OBJECT_CLASS priv = CKO_PRIVATE_KEY, pub = CKO_PUBLIC_KEY;
    CK_KEY_TYPE rsa = CKK_RSA;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    EVP_PKEY *k = NULL;
    BIO *in = NULL;
    struct stat st;
    p11_session s;
    CK_OBJECT_HANDLE ho = CK_INVALID_HANDLE, hp = CK_INVALID_HANDLE;
    CK_RV rv = CKR_OK;
    int ok = 0, have_session = 0;

    if (stat(key_file, &st) != 0 || (in = BIO_new_file(key_file, "r")) == NULL) {
        fprintf(stderr, "p11tls-tool: cannot read %s\n", key_file);
        goto done;
    }
    if (!encrypted_pem(key_file) && (st.st_mode & 077) != 0) {
        fprintf(stderr,
                "p11tls-tool: %s holds an unencrypted key readable by others (mode %03o): "
                "refused; encrypt it (openssl pkcs8 -topk8 -v2 aes-256-cbc) or chmod 600\n",
                key_file, (unsigned)(st.st_mode & 0777));
        goto done;
    }
    if (encrypted_pem(key_file) && passfile == NULL) {
        fprintf(stderr, "p11tls-tool: %s is encrypted: give --passphrase-file\n", key_file);
        goto done;
    }
    k = PEM_read_bio_PrivateKey(in, NULL, pass_cb, (void *)passfile);
    if (k == NULL) {
        fprintf(stderr, "p11tls-tool: %s: no private key that opens with this passphrase\n",
                key_file);
        ERR_clear_error();
        goto done;
    }
    if (!EVP_PKEY_is_a(k, "RSA")) {
        fprintf(stderr, "p11tls-tool: %s: not an RSA key\n", key_file);
        goto done;
    }
    for (int i = 0; i < 8; i++)
        if ((v[i] = bn_bytes(k, parts[i], &vl[i])) == NULL) {
            fprintf(stderr, "p11tls-tool: %s: the key lacks its CRT parts\n", key_file);
            goto done;
        }
    if (!p11_session_get(t, &s))
        goto done;
    have_session = 1;
    if (if_missing && exists(&s, CKA_LABEL, label, strlen(label)) == 1 &&
        exists(&s, CKA_ID, id, idlen) == 1) {
        printf("token '%s' already has a private key '%s' with this id: left as it is\n",
               p11_token_label(t), label);
        ok = 1;
        goto done;
    }
    if (exists(&s, CKA_LABEL, label, strlen(label)) != 0 || exists(&s, CKA_ID, id, idlen) != 0) {
        fprintf(stderr,
                "p11tls-tool: token '%s' already has a private key with label '%s' or this "
                "id (or the lookup failed): nothing imported\n",
                p11_token_label(t), label);
        goto done;
    }
    {
        CK_ATTRIBUTE pt[19] = {
            {CKA_CLASS, &priv, sizeof(priv)},   {CKA_KEY_TYPE, &rsa, sizeof(rsa)},
            {CKA_TOKEN, &yes, sizeof(yes)},     {CKA_PRIVATE, &yes, sizeof(yes)},
            {CKA_SENSITIVE, &yes, sizeof(yes)}, {CKA_EXTRACTABLE, &no, sizeof(no)},
            {CKA_SIGN, &yes, sizeof(yes)},      {CKA_DECRYPT, &yes, sizeof(yes)},
            {CKA_UNWRAP, &yes, sizeof(yes)},    {CKA_LABEL, (void *)label, strlen(label)},
            {CKA_ID, (void *)id, idlen}};
        CK_ATTRIBUTE ut[10] = {{CKA_CLASS, &pub, sizeof(pub)},
                               {CKA_KEY_TYPE, &rsa, sizeof(rsa)},
                               {CKA_TOKEN, &yes, sizeof(yes)},
                               {CKA_VERIFY, &yes, sizeof(yes)},
                               {CKA_ENCRYPT, &yes, sizeof(yes)},
                               {CKA_WRAP, &yes, sizeof(yes)},
                               {CKA_LABEL, (void *)label, strlen(label)},
                               {CKA_ID, (void *)id, idlen},
                               {CKA_MODULUS, v[0], vl[0]},
                               {CKA_PUBLIC_EXPONENT, v[1], vl[1]}};
        for (int i = 0; i < 8; i++) /* the key's parts */
            pt[11 + i] = (CK_ATTRIBUTE){types[i], v[i], vl[i]};
        rv = P11_CALL(s.fl, C_CreateObject, s.h, pt, 19, &ho);
        if (rv != CKR_OK) {
            p11_err_ckr("C_CreateObject", rv, "the private key in token '%s'", p11_token_label(t));
            goto done;
        }
        rv = P11_CALL(s.fl, C_CreateObject, s.h, ut, 10, &hp);
        if (rv != CKR_OK) {
            p11_err_ckr("C_CreateObject", rv, "the public key in token '%s'", p11_token_label(t));
            (void)P11_CALL(s.fl, C_DestroyObject, s.h, ho); /* all or nothing */
            goto done;
        }
    }
    {
        unsigned char md[32];
        char hex[65];
        unsigned mdlen = 0;
        EVP_Digest(v[0], vl[0], md, &mdlen, EVP_sha256(), NULL);
        for (unsigned i = 0; i < 32; i++)
            snprintf(hex + 2 * i, 3, "%02x", md[i]);
        printf("imported RSA-%d key '%s' into token '%s' (sensitive, not extractable); "
               "modulus SHA-256 %s\n",
               EVP_PKEY_get_bits(k), label, p11_token_label(t), hex);
    }
    ok = 1;
done:
    if (have_session)
        p11_session_put(&s, rv);
    for (int i = 0; i < 8; i++)
        if (v[i] != NULL)
            OPENSSL_clear_free(v[i], vl[i]);
    EVP_PKEY_free(k);
    BIO_free(in);
    if (!ok)
        ERR_print_errors_fp(stderr);
    return ok;
}
