/* pin.c - PINs held in locked, non-dumpable memory (kept for re-login after
 * fork or token loss), read from a value, a file or an environment variable,
 * and wiped when freed. A PIN is never logged. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/crypto.h>
#include "p11.h"

#define PIN_MAX 256

struct p11_pin {
    size_t len;
    unsigned char data[PIN_MAX];
};

p11_pin *p11_pin_new(const char *value, size_t len)
{
    p11_pin *p;
    if (len > PIN_MAX)
        return NULL;
    /* One page of its own: locked (never swapped) and left out of core dumps. */
    p = mmap(NULL, sizeof(*p), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    (void)mlock(p, sizeof(*p));
    (void)madvise(p, sizeof(*p), MADV_DONTDUMP);
    memcpy(p->data, value, len);
    p->len = len;
    return p;
}

void p11_pin_free(p11_pin *pin)
{
    if (pin == NULL)
        return;
    OPENSSL_cleanse(pin, sizeof(*pin));
    munlock(pin, sizeof(*pin));
    munmap(pin, sizeof(*pin));
}

const unsigned char *p11_pin_data(const p11_pin *pin)
{
    return pin->data;
}

size_t p11_pin_len(const p11_pin *pin)
{
    return pin->len;
}

static p11_pin *pin_from_file(const char *path, char *err, size_t errlen)
{
    char buf[PIN_MAX + 3]; /* room for CR LF and one byte more: a longer file is refused */
    ssize_t n = 0;
    size_t len = 0;
    p11_pin *p;
    struct stat st = {0};
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);

    if (fd < 0) {
        snprintf(err, errlen, "cannot open PIN file '%s': %s", path, strerror(errno));
        return NULL;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        snprintf(err, errlen, "PIN file '%s' is not a regular file%s", path,
                 S_ISDIR(st.st_mode) ? " (it is a directory)" : "");
        return NULL;
    }
    while (len < sizeof(buf) && (n = read(fd, buf + len, sizeof(buf) - len)) > 0)
        len += (size_t)n;
    if (n < 0) {
        int e = errno;
        close(fd);
        OPENSSL_cleanse(buf, sizeof(buf));
        snprintf(err, errlen, "cannot read PIN file '%s': %s", path, strerror(e));
        return NULL;
    }
    close(fd);
    /* One trailing newline (or CRLF) is not part of the PIN. */
    if (len > 0 && buf[len - 1] == '\n')
        len--;
    if (len > 0 && buf[len - 1] == '\r')
        len--;
    if (len > PIN_MAX) {
        OPENSSL_cleanse(buf, sizeof(buf));
        snprintf(err, errlen, "PIN file '%s' is longer than %d bytes", path, PIN_MAX);
        return NULL;
    }
    if (len == 0) {
        /* An empty PIN would be sent to C_Login and spend one of the token's tries. */
        snprintf(err, errlen, "PIN file '%s' is empty: no login attempted", path);
        return NULL;
    }
    p = p11_pin_new(buf, len);
    OPENSSL_cleanse(buf, sizeof(buf));
    if (p == NULL)
        snprintf(err, errlen, "out of memory");
    return p;
}

p11_pin *p11_pin_from_source(const char *source, char *err, size_t errlen)
{
    if (source == NULL || *source == '\0') {
        snprintf(err, errlen, "empty");
        return NULL;
    }
    if (strncmp(source, "file:", 5) == 0)
        return pin_from_file(source + 5, err, errlen);
    if (source[0] == '/')
        return pin_from_file(source, err, errlen);
    if (strncmp(source, "env:", 4) == 0) {
        const char *v = getenv(source + 4);
        p11_pin *p;
        if (v == NULL) {
            snprintf(err, errlen, "environment variable '%s' is not set", source + 4);
            return NULL;
        }
        if (*v == '\0') {
            snprintf(err, errlen, "environment variable '%s' is empty: no login attempted",
                     source + 4);
            return NULL;
        }
        p = p11_pin_new(v, strlen(v));
        if (p == NULL)
            snprintf(err, errlen, "PIN in '%s' is too long", source + 4);
        return p;
    }
    snprintf(err, errlen, "unsupported source (use file:PATH or env:VAR)");
    return NULL;
}
