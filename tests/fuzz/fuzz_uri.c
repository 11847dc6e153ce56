/* fuzz_uri.c - p11_uri_parse on arbitrary bytes (as a NUL-terminated string),
 * and the matchers. Invariants checked:
 * - a failed parse leaves an error message; a truncated error buffer gets a
 *   prefix of the same message, and no buffer at all gives the same verdict;
 * - error messages and the verdict do not depend on the content of attribute
 *   values (a pin-value never reaches a message): every value byte is replaced
 *   by another of the same class (letter, 0, other digit, hex or not) and the
 *   parse must give the same verdict and the very same message;
 * - a parsed URI, re-encoded (every byte but letters and digits percent-encoded),
 *   parses again to the same attributes;
 * - the matchers accept info structures blank-padded from the URI's own values
 *   (when they fit), and refuse them when a byte differs; they also run against
 *   fixed SoftHSM2-like info structures. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "fuzz_common.h"
#include "p11.h"

#define ERRLEN 256

static const char *const text_fields[] = {"token",
                                          "manufacturer",
                                          "serial",
                                          "model",
                                          "library-manufacturer",
                                          "library-description",
                                          "slot-manufacturer",
                                          "slot-description",
                                          "object",
                                          "pin-source",
                                          "pin-value",
                                          "module-name",
                                          "module-path"};

static char **field(p11_uri *u, int i)
{
    char **f[] = {&u->token,
                  &u->manufacturer,
                  &u->serial,
                  &u->model,
                  &u->library_manufacturer,
                  &u->library_description,
                  &u->slot_manufacturer,
                  &u->slot_description,
                  &u->object,
                  &u->pin_source,
                  &u->pin_value,
                  &u->module_name,
                  &u->module_path};
    return f[i];
}
#define N_TEXT 13
#define FIRST_QUERY 9 /* pin-source onwards are query attributes */

/* Replaces a value byte by another of the same class for the URI grammar. */
static char remap(char c)
{
    if (c >= '1' && c <= '9')
        return c == '9' ? '1' : (char)(c + 1);
    if (c >= 'a' && c <= 'f')
        return c == 'f' ? 'a' : (char)(c + 1);
    if (c >= 'A' && c <= 'F')
        return c == 'F' ? 'A' : (char)(c + 1);
    if (c >= 'g' && c <= 'z')
        return c == 'z' ? 'g' : (char)(c + 1);
    if (c >= 'G' && c <= 'Z')
        return c == 'Z' ? 'G' : (char)(c + 1);
    return c; /* '0', '%', punctuation, anything else: kept */
}

/* Values whose content the parser validates (so messages may depend on it). */
static int checked_value(const char *name, size_t n)
{
    return (n == 4 && memcmp(name, "type", 4) == 0) ||
           (n == 7 && memcmp(name, "slot-id", 7) == 0) ||
           (n == 15 && memcmp(name, "library-version", 15) == 0);
}

static void remap_component(char *s, char *end, char sep)
{
    while (s <= end) {
        char *e = memchr(s, sep, (size_t)(end - s));
        char *eq;
        if (e == NULL)
            e = end;
        eq = memchr(s, '=', (size_t)(e - s));
        if (eq != NULL && !checked_value(s, (size_t)(eq - s)))
            for (char *v = eq + 1; v < e; v++)
                *v = remap(*v);
        s = e + 1;
    }
}

/* Same verdict and message when every value byte is changed. */
static void check_value_independence(const char *str, int ok, const p11_uri *u, const char *err)
{
    size_t len = strlen(str);
    char *m, *q, err2[ERRLEN];
    p11_uri *u2 = NULL;
    int ok2;

    if (len < 7 || strncasecmp(str, "pkcs11:", 7) != 0)
        return;
    m = strdup(str);
    if (m == NULL)
        return;
    q = memchr(m + 7, '?', len - 7);
    remap_component(m + 7, q != NULL ? q : m + len, ';');
    if (q != NULL)
        remap_component(q + 1, m + len, '&');
    ok2 = p11_uri_parse(m, &u2, err2, sizeof(err2));
    FZ_CHECK(ok2 == ok, "verdict depends on attribute values: %d for '%s', %d for '%s' (%s%s)", ok,
             str, ok2, m, err, err2);
    if (!ok)
        FZ_CHECK(strcmp(err, err2) == 0,
                 "error message depends on attribute values (a PIN could leak):\n  '%s'\n  '%s'",
                 err, err2);
    else {
        for (int i = 0; i < N_TEXT; i++) {
            char *a = *field((p11_uri *)u, i), *b = *field(u2, i);
            FZ_CHECK((a == NULL) == (b == NULL) && (a == NULL || strlen(a) == strlen(b)),
                     "attribute %s differs after a value-preserving change", text_fields[i]);
        }
        FZ_CHECK(u->has_id == u2->has_id && u->id_len == u2->id_len, "id differs");
        FZ_CHECK(u->has_slot_id == u2->has_slot_id && u->slot_id == u2->slot_id, "slot-id differs");
    }
    p11_uri_free(u2);
    free(m);
}

/* ---------------------------------------------------------------- round trip */

static void put(char **o, const char *s)
{
    size_t n = strlen(s);
    memcpy(*o, s, n);
    *o += n;
}

static void put_enc(char **o, const unsigned char *v, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = v[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
            *(*o)++ = (char)c;
        } else {
            *(*o)++ = '%';
            *(*o)++ = hex[c >> 4];
            *(*o)++ = hex[c & 15];
        }
    }
}

static char *encode(const p11_uri *u)
{
    size_t cap = 64 + u->id_len * 3 + (u->type ? strlen(u->type) : 0) +
                 (u->library_version ? strlen(u->library_version) * 3 : 0);
    char *buf, *o;
    int nq = 0, np = 0;

    for (int i = 0; i < N_TEXT; i++)
        if (*field((p11_uri *)u, i) != NULL)
            cap += 32 + strlen(*field((p11_uri *)u, i)) * 3;
    if ((buf = malloc(cap)) == NULL)
        return NULL;
    o = buf;
    put(&o, "pkcs11:");
#define SEP() put(&o, np++ ? ";" : "")
    for (int i = 0; i < FIRST_QUERY; i++) {
        const char *v = *field((p11_uri *)u, i);
        if (v == NULL)
            continue;
        SEP();
        put(&o, text_fields[i]);
        put(&o, "=");
        put_enc(&o, (const unsigned char *)v, strlen(v));
    }
    if (u->library_version != NULL) {
        SEP();
        put(&o, "library-version=");
        put_enc(&o, (const unsigned char *)u->library_version, strlen(u->library_version));
    }
    if (u->has_slot_id) {
        char n[32];
        snprintf(n, sizeof(n), "slot-id=%lu", (unsigned long)u->slot_id);
        SEP();
        put(&o, n);
    }
    if (u->has_id) {
        SEP();
        put(&o, "id=");
        put_enc(&o, u->id, u->id_len);
    }
    if (u->type != NULL) {
        SEP();
        put(&o, "type=");
        put(&o, u->type);
    }
    for (int i = FIRST_QUERY; i < N_TEXT; i++) {
        const char *v = *field((p11_uri *)u, i);
        if (v == NULL)
            continue;
        put(&o, nq++ ? "&" : "?");
        put(&o, text_fields[i]);
        put(&o, "=");
        put_enc(&o, (const unsigned char *)v, strlen(v));
    }
    *o = '\0';
    return buf;
}

static int streq(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static void check_round_trip(const p11_uri *u)
{
    char *s = encode(u), err[ERRLEN];
    p11_uri *v = NULL;

    if (s == NULL)
        return;
    if (strlen(s) <= 65536) {
        FZ_CHECK(p11_uri_parse(s, &v, err, sizeof(err)) == 1,
                 "re-encoded URI does not parse: %s (%s)", s, err);
        for (int i = 0; i < N_TEXT; i++)
            FZ_CHECK(streq(*field((p11_uri *)u, i), *field(v, i)),
                     "attribute %s differs after a round trip", text_fields[i]);
        FZ_CHECK(streq(u->type, v->type) && streq(u->library_version, v->library_version),
                 "type or library-version differs after a round trip");
        FZ_CHECK(u->has_id == v->has_id && u->id_len == v->id_len &&
                     (u->id_len == 0 || memcmp(u->id, v->id, u->id_len) == 0),
                 "id differs after a round trip");
        FZ_CHECK(u->has_slot_id == v->has_slot_id && u->slot_id == v->slot_id,
                 "slot-id differs after a round trip");
        p11_uri_free(v);
    }
    free(s);
}

/* ------------------------------------------------------------------ matchers */

/* Blank-padded copy of v (or fill when v is NULL); 1 if v fits (trailing blanks
 * of v are not significant). */
static int pad(unsigned char *dst, size_t width, const char *v, unsigned char fill)
{
    size_t n, t;
    memset(dst, v == NULL ? fill : ' ', width);
    if (v == NULL)
        return 1;
    n = strlen(v);
    memcpy(dst, v, n < width ? n : width);
    for (t = n; t > 0 && v[t - 1] == ' '; t--)
        ;
    return t <= width;
}

static void check_matchers(const p11_uri *u, fz_in *in)
{
    CK_INFO li;
    CK_SLOT_INFO si;
    CK_TOKEN_INFO ti;
    unsigned char fill = (unsigned char)(fz_u8(in) | 0x20);
    int exp_lib = 1, exp_slot = 1, exp_tok = 1;
    CK_SLOT_ID slot = u->has_slot_id ? u->slot_id : fz_u8(in);

    memset(&li, 0, sizeof(li));
    memset(&si, 0, sizeof(si));
    memset(&ti, 0, sizeof(ti));
    exp_lib &= pad(li.manufacturerID, sizeof(li.manufacturerID), u->library_manufacturer, fill);
    exp_lib &=
        pad(li.libraryDescription, sizeof(li.libraryDescription), u->library_description, fill);
    if (u->library_version != NULL) {
        unsigned major = 0, minor = 0;
        int n = sscanf(u->library_version, "%u.%u", &major, &minor);
        FZ_CHECK(n >= 1 && major <= 255 && minor <= 255, "library-version '%s' accepted",
                 u->library_version);
        li.libraryVersion.major = (CK_BYTE)major;
        li.libraryVersion.minor = n == 2 ? (CK_BYTE)minor : fz_u8(in);
    }
    exp_slot &= pad(si.manufacturerID, sizeof(si.manufacturerID), u->slot_manufacturer, fill);
    exp_slot &= pad(si.slotDescription, sizeof(si.slotDescription), u->slot_description, fill);
    exp_tok &= pad(ti.label, sizeof(ti.label), u->token, fill);
    exp_tok &= pad(ti.manufacturerID, sizeof(ti.manufacturerID), u->manufacturer, fill);
    exp_tok &= pad(ti.serialNumber, sizeof(ti.serialNumber), u->serial, fill);
    exp_tok &= pad(ti.model, sizeof(ti.model), u->model, fill);

    FZ_CHECK(p11_uri_match_library(u, &li) == exp_lib, "library match %d, expected %d", !exp_lib,
             exp_lib);
    FZ_CHECK(p11_uri_match_slot(u, slot, &si) == exp_slot, "slot match %d, expected %d", !exp_slot,
             exp_slot);
    FZ_CHECK(p11_uri_match_token(u, &ti) == exp_tok, "token match %d, expected %d", !exp_tok,
             exp_tok);
    if (u->has_slot_id)
        FZ_CHECK(p11_uri_match_slot(u, slot + 1, &si) == 0, "slot-id %lu matched slot %lu",
                 (unsigned long)u->slot_id, (unsigned long)slot + 1);
    /* One byte off in a value that fits: no match. */
    if (u->token != NULL && strlen(u->token) > 0 && strlen(u->token) <= sizeof(ti.label)) {
        ti.label[0] ^= 0x01;
        FZ_CHECK(p11_uri_match_token(u, &ti) == 0, "token label matched with a byte changed");
    }
    /* Absent info. */
    (void)p11_uri_match_library(u, NULL);
    (void)p11_uri_match_slot(u, slot, NULL);
    (void)p11_uri_match_token(u, NULL);
}

static void fixed_matchers(const p11_uri *u)
{
    CK_INFO li;
    CK_SLOT_INFO si;
    CK_TOKEN_INFO ti;

    memset(&li, ' ', sizeof(li));
    memset(&si, ' ', sizeof(si));
    memset(&ti, ' ', sizeof(ti));
    memcpy(li.manufacturerID, "SoftHSM", 7);
    memcpy(li.libraryDescription, "Implementation of PKCS11", 24);
    li.libraryVersion.major = 2;
    li.libraryVersion.minor = 6;
    li.cryptokiVersion.major = 2;
    li.cryptokiVersion.minor = 40;
    memcpy(si.slotDescription, "SoftHSM slot ID 0x1", 19);
    memcpy(si.manufacturerID, "SoftHSM project", 15);
    memcpy(ti.label, "p11tls", 6);
    memcpy(ti.manufacturerID, "SoftHSM project", 15);
    memcpy(ti.model, "SoftHSM v2", 10);
    memcpy(ti.serialNumber, "0123456789abcdef", 16);
    (void)p11_uri_match_library(u, &li);
    (void)p11_uri_match_slot(u, 0x1, &si);
    (void)p11_uri_match_token(u, &ti);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *str = malloc(size + 1), err[ERRLEN], small[ERRLEN];
    p11_uri *u = NULL, *u2 = NULL;
    int ok, ok2;
    size_t smalllen;
    fz_in in;

    if (str == NULL)
        return 0;
    memcpy(str, data, size);
    str[size] = '\0';

    ok = p11_uri_parse(str, &u, err, sizeof(err));
    FZ_CHECK(ok == 0 || ok == 1, "p11_uri_parse returned %d", ok);
    FZ_CHECK(ok ? u != NULL : err[0] != '\0', "failed without a message");
    if (ok)
        FZ_CHECK(err[0] == '\0', "succeeded with a message: %s", err);

    /* A short buffer: a prefix of the same message. No buffer: the same verdict. */
    smalllen = size > 0 ? data[0] % 24 : 0;
    ok2 = p11_uri_parse(str, &u2, smalllen ? small : NULL, smalllen);
    FZ_CHECK(ok2 == ok, "verdict depends on the error buffer");
    p11_uri_free(u2);
    if (!ok && smalllen > 0)
        FZ_CHECK(strlen(small) < smalllen && strncmp(small, err, strlen(small)) == 0,
                 "truncated message '%s' is not a prefix of '%s'", small, err);

    check_value_independence(str, ok, u, err);
    if (ok) {
        in.p = data;
        in.left = size;
        FZ_CHECK(u->has_id || u->id == NULL, "id without has_id");
        for (int i = 0; i < N_TEXT; i++)
            (void)strlen(*field(u, i) ? *field(u, i) : ""); /* ASan: each is a terminated string */
        if (u->type != NULL)
            FZ_CHECK(strcmp(u->type, "private") == 0 || strcmp(u->type, "public") == 0 ||
                         strcmp(u->type, "cert") == 0 || strcmp(u->type, "secret-key") == 0 ||
                         strcmp(u->type, "data") == 0,
                     "type '%s' accepted", u->type);
        check_round_trip(u);
        check_matchers(u, &in);
        fixed_matchers(u);
    }
    /* NULL arguments. */
    if (size == 1) {
        FZ_CHECK(p11_uri_parse(NULL, &u2, err, sizeof(err)) == 0, "NULL URI parsed");
        FZ_CHECK(p11_uri_parse(str, NULL, err, sizeof(err)) == 0, "parsed without out");
        p11_uri_free(NULL);
        (void)p11_uri_match_token(NULL, NULL);
    }
    p11_uri_free(u);
    free(str);
    return 0;
}
