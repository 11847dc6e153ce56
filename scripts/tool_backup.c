/* tool_backup.c - the handle key's backup file (`p11tls-tool provision --key-backup`):
 * the 32-byte key value encrypted under a passphrase, so that several tokens (a pool's
 * members, or servers behind one load balancer) get the same handle key and resolve
 * each other's handles (session tickets, session IDs). scrypt (N = 2^15, r = 8, p = 1)
 * derives an AES-256-GCM key from the passphrase; the file's first line is the
 * associated data. The file is written 0600 and never overwritten; the value exists
 * in this process only between the file and the token, and is wiped. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include "tool.h"

#define MAGIC "p11tls handle key backup v1"
#define SCRYPT_N 32768
#define SCRYPT_R 8
#define SCRYPT_P 1

/* The passphrase: the file's first line, at least 8 characters. */
static int read_passphrase(const char *path, char *out, size_t max)
{
    FILE *f = fopen(path, "r");
    size_t n;
    if (f == NULL) {
        fprintf(stderr, "p11tls-tool: --passphrase-file: cannot open '%s': %s\n", path,
                strerror(errno));
        return 0;
    }
    n = fread(out, 1, max - 1, f);
    fclose(f);
    out[n] = '\0';
    out[strcspn(out, "\r\n")] = '\0';
    if (strlen(out) < 8) {
        OPENSSL_cleanse(out, max);
        fprintf(stderr,
                "p11tls-tool: --passphrase-file '%s': the passphrase (its first line) "
                "must have 8 characters or more\n",
                path);
        return 0;
    }
    return 1;
}

static int derive(const char *pass, const unsigned char salt[16], unsigned char key[32])
{
    return EVP_PBE_scrypt(pass, strlen(pass), salt, 16, SCRYPT_N, SCRYPT_R, SCRYPT_P,
                          64 * 1024 * 1024, key, 32) == 1;
}

/* AES-256-GCM of 32 bytes in place (enc) or back (dec, tag checked). */
static int gcm(int enc, const unsigned char key[32], const unsigned char iv[12],
               unsigned char buf[32], unsigned char tag[16])
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int l = 0, ok = c != NULL && EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, key, iv, enc) &&
                    EVP_CipherUpdate(c, NULL, &l, (const unsigned char *)MAGIC, strlen(MAGIC)) &&
                    EVP_CipherUpdate(c, buf, &l, buf, 32) && l == 32;
    if (ok && !enc)
        ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, tag) == 1;
    if (ok)
        ok = EVP_CipherFinal_ex(c, buf + 32, &l) == 1;
    if (ok && enc)
        ok = EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1;
    EVP_CIPHER_CTX_free(c);
    return ok;
}

static void hex(FILE *f, const char *name, const unsigned char *b, size_t n)
{
    fprintf(f, "%s ", name);
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%02x", b[i]);
    fputc('\n', f);
}

static int unhex(const char *line, const char *name, unsigned char *b, size_t n)
{
    size_t l = strlen(name);
    if (strncmp(line, name, l) != 0 || line[l] != ' ')
        return 0;
    line += l + 1;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(line + 2 * i, "%2x", &v) != 1)
            return 0;
        b[i] = (unsigned char)v;
    }
    return line[2 * n] == '\n' || line[2 * n] == '\0';
}

int tool_backup_new(const char *path, const char *passfile, unsigned char value[32])
{
    char pass[1024];
    unsigned char salt[16], iv[12], key[32], buf[48], tag[16];
    int fd, ok = 0;
    FILE *f;

    if (!read_passphrase(passfile, pass, sizeof(pass)))
        return 0;
    if (RAND_priv_bytes(value, 32) != 1 || RAND_bytes(salt, sizeof(salt)) != 1 ||
        RAND_bytes(iv, sizeof(iv)) != 1 || !derive(pass, salt, key)) {
        fprintf(stderr, "p11tls-tool: cannot make the key or derive the passphrase's key\n");
        goto done;
    }
    memcpy(buf, value, 32);
    if (!gcm(1, key, iv, buf, tag)) {
        fprintf(stderr, "p11tls-tool: cannot encrypt the backup\n");
        goto done;
    }
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0 || (f = fdopen(fd, "w")) == NULL) {
        fprintf(stderr, "p11tls-tool: --key-backup: cannot create '%s': %s%s\n", path,
                strerror(errno), errno == EEXIST ? " (it is never overwritten)" : "");
        if (fd >= 0)
            close(fd);
        goto done;
    }
    fprintf(f, "%s\nkdf scrypt N=%d r=%d p=%d\n", MAGIC, SCRYPT_N, SCRYPT_R, SCRYPT_P);
    hex(f, "salt", salt, sizeof(salt));
    hex(f, "iv", iv, sizeof(iv));
    hex(f, "data", buf, 32);
    hex(f, "tag", tag, sizeof(tag));
    ok = fclose(f) == 0;
    if (!ok) {
        fprintf(stderr, "p11tls-tool: --key-backup: writing '%s' failed\n", path);
        unlink(path);
    }
done:
    OPENSSL_cleanse(pass, sizeof(pass));
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(buf, sizeof(buf));
    if (!ok)
        OPENSSL_cleanse(value, 32);
    return ok;
}

int tool_backup_read(const char *path, const char *passfile, unsigned char value[32])
{
    char pass[1024], line[256];
    unsigned char salt[16], iv[12], key[32], buf[48], tag[16];
    int ok = 0, n = 0;
    FILE *f = fopen(path, "r");

    if (f == NULL) {
        fprintf(stderr, "p11tls-tool: --key-backup: cannot open '%s': %s\n", path, strerror(errno));
        return 0;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        if (n == 0)
            n += strncmp(line, MAGIC "\n", strlen(MAGIC) + 1) == 0;
        else
            n += unhex(line, "salt", salt, sizeof(salt)) | unhex(line, "iv", iv, sizeof(iv)) |
                 unhex(line, "data", buf, 32) | unhex(line, "tag", tag, sizeof(tag)) |
                 (strcmp(line, "kdf scrypt N=32768 r=8 p=1\n") == 0);
    }
    fclose(f);
    if (n != 6) {
        fprintf(stderr, "p11tls-tool: --key-backup: '%s' is not a p11tls handle key backup\n",
                path);
        return 0;
    }
    if (!read_passphrase(passfile, pass, sizeof(pass)))
        return 0;
    if (derive(pass, salt, key) && gcm(0, key, iv, buf, tag)) {
        memcpy(value, buf, 32);
        ok = 1;
    } else {
        fprintf(stderr,
                "p11tls-tool: --key-backup: '%s' does not open with this passphrase "
                "(wrong passphrase, or the file was changed)\n",
                path);
    }
    OPENSSL_cleanse(pass, sizeof(pass));
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(buf, sizeof(buf));
    return ok;
}
