/* uri.c - RFC 7512 PKCS#11 URIs: parses "pkcs11:token=...;id=...?pin-source=..."
 * into a p11_uri (values percent-decoded, NUL-terminated, on the heap), and
 * matches a parsed URI against the CK_INFO, CK_SLOT_INFO and CK_TOKEN_INFO a
 * module reports.
 *
 * Policy choices (the parser is fed untrusted input and is fuzzed):
 * - The input is limited to URI_MAX_LEN bytes; characters RFC 7512 does not
 *   allow unencoded (whitespace, controls, bytes >= 0x80, '"', '#', '<', '>',
 *   '\\', '^', '`', '{', '}', and '/' or '?' in the path) are rejected.
 * - Known attributes are strict: duplicates, bad percent-encoding, %00 in a
 *   textual value (any byte is fine in "id"), a bad "type", "slot-id" or
 *   "library-version", and an attribute in the wrong component are errors.
 * - Unknown attributes whose names are well formed (1*(ALPHA / DIGIT / "-" /
 *   "." / "_")) and whose values are well formed are accepted and ignored, in
 *   the path (vendor attributes, e.g. RFC 7512's "vendor-aaa") as in the query
 *   (RFC 7512: unknown query attributes are ignored). Ignoring a mistyped path
 *   attribute would silently widen the set of matching tokens, so a name that
 *   is a near miss of a known one ("tokn", "Token", "slot_id", "pin-sorce":
 *   case-insensitive edit distance 0, 1 for names of 4+ characters, 2 for 8+)
 *   is an error naming it, unless it starts with the vendor prefix "x-".
 * - Error messages name attributes and byte offsets, never values: a PIN given
 *   as pin-value (or mistakenly elsewhere) never reaches a message. */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>
#include "p11.h"

#define URI_MAX_LEN 65536
#define URI_SCHEME "pkcs11:"
#define URI_SCHEME_LEN 7
/* Longest attribute name quoted in an error message. */
#define NAME_PRINT_MAX 64

enum attr_kind { A_TEXT, A_ID, A_TYPE, A_SLOT_ID, A_LIBVER };

struct attr_def {
    const char *name;
    int query; /* 1: query component, 0: path component */
    enum attr_kind kind;
    size_t off; /* offset of the char * member (A_TEXT, A_TYPE, A_LIBVER) */
};

#define FIELD(m) offsetof(p11_uri, m)
static const struct attr_def attr_defs[] = {
    {"token", 0, A_TEXT, FIELD(token)},
    {"manufacturer", 0, A_TEXT, FIELD(manufacturer)},
    {"serial", 0, A_TEXT, FIELD(serial)},
    {"model", 0, A_TEXT, FIELD(model)},
    {"library-manufacturer", 0, A_TEXT, FIELD(library_manufacturer)},
    {"library-description", 0, A_TEXT, FIELD(library_description)},
    {"library-version", 0, A_LIBVER, FIELD(library_version)},
    {"slot-manufacturer", 0, A_TEXT, FIELD(slot_manufacturer)},
    {"slot-description", 0, A_TEXT, FIELD(slot_description)},
    {"slot-id", 0, A_SLOT_ID, 0},
    {"object", 0, A_TEXT, FIELD(object)},
    {"id", 0, A_ID, 0},
    {"type", 0, A_TYPE, FIELD(type)},
    {"pin-source", 1, A_TEXT, FIELD(pin_source)},
    {"pin-value", 1, A_TEXT, FIELD(pin_value)},
    {"module-name", 1, A_TEXT, FIELD(module_name)},
    {"module-path", 1, A_TEXT, FIELD(module_path)},
};
#define N_ATTR_DEFS (sizeof(attr_defs) / sizeof(attr_defs[0]))

static const char *const object_types[] = {"private", "public", "cert", "secret-key", "data"};

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (err == NULL || errlen == 0)
        return;
    n = snprintf(err, errlen, "PKCS#11 URI: ");
    if (n < 0 || (size_t)n >= errlen)
        return;
    va_start(ap, fmt);
    vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
    va_end(ap);
}

static char **str_field(p11_uri *uri, const struct attr_def *def)
{
    return (char **)(void *)((char *)uri + def->off);
}

static void free_str(char *s)
{
    if (s == NULL)
        return;
    OPENSSL_cleanse(s, strlen(s));
    free(s);
}

void p11_uri_free(p11_uri *uri)
{
    size_t i;

    if (uri == NULL)
        return;
    for (i = 0; i < N_ATTR_DEFS; i++) {
        if (attr_defs[i].kind != A_ID && attr_defs[i].kind != A_SLOT_ID)
            free_str(*str_field(uri, &attr_defs[i]));
    }
    if (uri->id != NULL) {
        OPENSSL_cleanse(uri->id, uri->id_len);
        free(uri->id);
    }
    free(uri);
}

p11_uri *p11_uri_object_copy(const p11_uri *u)
{
    p11_uri *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->has_id = u->has_id;
    if (u->has_id && (c->id = malloc(u->id_len ? u->id_len : 1)) != NULL) {
        memcpy(c->id, u->id, u->id_len);
        c->id_len = u->id_len;
    }
    c->object = u->object != NULL ? strdup(u->object) : NULL;
    c->type = u->type != NULL ? strdup(u->type) : NULL;
    if ((u->has_id && c->id == NULL) || (u->object != NULL && c->object == NULL) ||
        (u->type != NULL && c->type == NULL)) {
        p11_uri_free(c);
        return NULL;
    }
    return c;
}

/* ------------------------------------------------------------ characters */

static int is_alpha(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static unsigned char to_lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c - 'A' + 'a') : c;
}

static int hex_value(unsigned char c)
{
    if (is_digit(c))
        return c - '0';
    c = to_lower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* pk11-v-attr-nm-char */
static int name_char_ok(unsigned char c)
{
    return is_alpha(c) || is_digit(c) || c == '-' || c == '.' || c == '_';
}

/* pk11-pchar (path) or pk11-qchar (query), '%' excluded. */
static int value_char_ok(unsigned char c, int query)
{
    if (is_alpha(c) || is_digit(c))
        return 1;
    switch (c) {
    /* pk11-unreserved */
    case '-':
    case '.':
    case '_':
    case '~':
    /* pk11-res-avail */
    case ':':
    case '[':
    case ']':
    case '@':
    case '!':
    case '$':
    case '\'':
    case '(':
    case ')':
    case '*':
    case '+':
    case ',':
    case '=':
        return 1;
    case '&': /* pk11-path-res-avail */
        return !query;
    case '/': /* pk11-query-res-avail */
    case '?':
    case '|':
        return query;
    default:
        return 0;
    }
}

/* ---------------------------------------------------------- attributes */

static const struct attr_def *find_attr(const char *name, size_t len)
{
    size_t i;

    for (i = 0; i < N_ATTR_DEFS; i++) {
        if (strlen(attr_defs[i].name) == len && memcmp(attr_defs[i].name, name, len) == 0)
            return &attr_defs[i];
    }
    return NULL;
}

/* Case-insensitive optimal string alignment distance (edits and adjacent
 * transpositions), for short strings only. */
#define OSA_MAX 32
static size_t osa_distance(const char *a, size_t an, const char *b, size_t bn)
{
    size_t d[OSA_MAX + 1][OSA_MAX + 1];
    size_t i, j;

    for (i = 0; i <= an; i++)
        d[i][0] = i;
    for (j = 0; j <= bn; j++)
        d[0][j] = j;
    for (i = 1; i <= an; i++) {
        for (j = 1; j <= bn; j++) {
            unsigned char ca = to_lower((unsigned char)a[i - 1]);
            unsigned char cb = to_lower((unsigned char)b[j - 1]);
            size_t best = d[i - 1][j - 1] + (ca != cb);
            if (d[i - 1][j] + 1 < best)
                best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best)
                best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && ca == to_lower((unsigned char)b[j - 2]) &&
                to_lower((unsigned char)a[i - 2]) == cb && d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    }
    return d[an][bn];
}

/* The known attribute an unknown name is probably a misspelling of, or NULL. */
static const struct attr_def *near_miss(const char *name, size_t len)
{
    size_t i;

    if (len >= 2 && name[0] == 'x' && name[1] == '-')
        return NULL; /* vendor prefix */
    for (i = 0; i < N_ATTR_DEFS; i++) {
        const char *known = attr_defs[i].name;
        size_t kn = strlen(known);
        size_t maxd = kn >= 8 ? 2 : kn >= 4 ? 1 : 0;
        if (len > kn + maxd || kn > len + maxd || len > OSA_MAX || kn > OSA_MAX)
            continue;
        if (osa_distance(name, len, known, kn) <= maxd)
            return &attr_defs[i];
    }
    return NULL;
}

/* Checks the encoded value [v, v + n) of attribute name (namelen bytes) and
 * gives its decoded length. base is the start of the URI, for offsets. */
static int check_value(const char *base, const char *v, size_t n, int query, int allow_nul,
                       const char *name, size_t namelen, size_t *declen, char *err, size_t errlen)
{
    size_t i = 0, len = 0;
    int nl = namelen > NAME_PRINT_MAX ? NAME_PRINT_MAX : (int)namelen;

    while (i < n) {
        unsigned char c = (unsigned char)v[i];
        if (c == '%') {
            if (n - i < 3 || hex_value((unsigned char)v[i + 1]) < 0 ||
                hex_value((unsigned char)v[i + 2]) < 0) {
                seterr(err, errlen, "attribute '%.*s': invalid percent-encoding at offset %zu", nl,
                       name, (size_t)(v + i - base));
                return 0;
            }
            if (!allow_nul && v[i + 1] == '0' && v[i + 2] == '0') {
                seterr(err, errlen, "attribute '%.*s': NUL byte (%%00) at offset %zu", nl, name,
                       (size_t)(v + i - base));
                return 0;
            }
            i += 3;
        } else if (value_char_ok(c, query)) {
            i++;
        } else {
            seterr(err, errlen, "attribute '%.*s': character not allowed unencoded at offset %zu",
                   nl, name, (size_t)(v + i - base));
            return 0;
        }
        len++;
    }
    *declen = len;
    return 1;
}

/* Decodes a value check_value accepted. */
static void decode_value(const char *v, size_t n, unsigned char *out)
{
    size_t i = 0;

    while (i < n) {
        if (v[i] == '%') {
            *out++ = (unsigned char)(hex_value((unsigned char)v[i + 1]) * 16 +
                                     hex_value((unsigned char)v[i + 2]));
            i += 3;
        } else {
            *out++ = (unsigned char)v[i++];
        }
    }
}

/* "M" or "M.N", decimal, each at most 255 (CK_VERSION holds bytes). */
static int parse_version(const char *s, unsigned *major, unsigned *minor, int *has_minor)
{
    unsigned v[2] = {0, 0};
    int part = 0, digits = 0;

    for (;; s++) {
        if (is_digit((unsigned char)*s)) {
            v[part] = v[part] * 10 + (unsigned)(*s - '0');
            if (v[part] > 255)
                return 0;
            digits++;
        } else if (*s == '.' && part == 0 && digits > 0) {
            part = 1;
            digits = 0;
        } else if (*s == '\0' && digits > 0) {
            break;
        } else {
            return 0;
        }
    }
    *major = v[0];
    *minor = v[1];
    *has_minor = part;
    return 1;
}

static int parse_slot_id(const char *s, CK_SLOT_ID *out)
{
    CK_SLOT_ID v = 0;
    const CK_SLOT_ID max = (CK_SLOT_ID)-1;

    if (*s == '\0')
        return 0;
    for (; *s != '\0'; s++) {
        unsigned d;
        if (!is_digit((unsigned char)*s))
            return 0;
        d = (unsigned)(*s - '0');
        if (v > (max - d) / 10)
            return 0;
        v = v * 10 + d;
    }
    *out = v;
    return 1;
}

/* One "name=value" in [s, e). */
static int parse_attr(p11_uri *uri, const char *base, const char *s, const char *e, int query,
                      char *err, size_t errlen)
{
    const char *eq = memchr(s, '=', (size_t)(e - s));
    const struct attr_def *def;
    const char *v;
    size_t namelen, vlen, declen, i;
    unsigned char *buf;

    if (s == e) {
        seterr(err, errlen, "empty attribute at offset %zu", (size_t)(s - base));
        return 0;
    }
    if (eq == NULL) {
        /* Only a known name is quoted: an unknown one may be a misplaced secret. */
        def = find_attr(s, (size_t)(e - s));
        if (def != NULL)
            seterr(err, errlen, "attribute '%s': missing '='", def->name);
        else
            seterr(err, errlen, "attribute without '=' at offset %zu", (size_t)(s - base));
        return 0;
    }
    if (eq == s) {
        seterr(err, errlen, "empty attribute name at offset %zu", (size_t)(s - base));
        return 0;
    }
    namelen = (size_t)(eq - s);
    for (i = 0; i < namelen; i++) {
        if (!name_char_ok((unsigned char)s[i])) {
            seterr(err, errlen, "invalid character in attribute name at offset %zu",
                   (size_t)(s + i - base));
            return 0;
        }
    }
    v = eq + 1;
    vlen = (size_t)(e - v);

    def = find_attr(s, namelen);
    if (def == NULL) {
        const struct attr_def *near = near_miss(s, namelen);
        if (near != NULL) {
            seterr(err, errlen, "unknown attribute '%.*s' (did you mean '%s'?)", (int)namelen, s,
                   near->name);
            return 0;
        }
        /* A vendor or future attribute: checked, then ignored. */
        return check_value(base, v, vlen, query, 1, s, namelen, &declen, err, errlen);
    }
    if (def->query != query) {
        seterr(err, errlen, "attribute '%s' belongs in the %s", def->name,
               def->query ? "query, after '?'" : "path, before '?'");
        return 0;
    }
    if ((def->kind == A_ID && uri->has_id) || (def->kind == A_SLOT_ID && uri->has_slot_id) ||
        (def->kind != A_ID && def->kind != A_SLOT_ID && *str_field(uri, def) != NULL)) {
        seterr(err, errlen, "duplicate attribute '%s'", def->name);
        return 0;
    }
    if (!check_value(base, v, vlen, query, def->kind == A_ID, def->name, strlen(def->name), &declen,
                     err, errlen))
        return 0;
    buf = malloc(declen + 1);
    if (buf == NULL) {
        seterr(err, errlen, "attribute '%s': out of memory", def->name);
        return 0;
    }
    decode_value(v, vlen, buf);
    buf[declen] = '\0';

    switch (def->kind) {
    case A_ID:
        uri->id = buf;
        uri->id_len = declen;
        uri->has_id = 1;
        return 1;
    case A_SLOT_ID:
        if (!parse_slot_id((char *)buf, &uri->slot_id)) {
            free(buf);
            seterr(err, errlen, "attribute 'slot-id': not a decimal number in range");
            return 0;
        }
        free(buf);
        uri->has_slot_id = 1;
        return 1;
    case A_TYPE:
        for (i = 0; i < sizeof(object_types) / sizeof(object_types[0]); i++) {
            if (strcmp((char *)buf, object_types[i]) == 0)
                break;
        }
        if (i == sizeof(object_types) / sizeof(object_types[0])) {
            free(buf);
            seterr(err, errlen,
                   "attribute 'type': invalid value (expected private, public, cert, "
                   "secret-key or data)");
            return 0;
        }
        break;
    case A_LIBVER: {
        unsigned major, minor;
        int has_minor;
        if (!parse_version((char *)buf, &major, &minor, &has_minor)) {
            free(buf);
            seterr(err, errlen,
                   "attribute 'library-version': expected M or M.N (decimal, 0 to 255)");
            return 0;
        }
        break;
    }
    case A_TEXT:
        break;
    }
    *str_field(uri, def) = (char *)buf;
    return 1;
}

/* The attributes of the path (sep ';') or query (sep '&') in [p, end). */
static int parse_component(p11_uri *uri, const char *base, const char *p, const char *end,
                           int query, char *err, size_t errlen)
{
    const char sep = query ? '&' : ';';

    if (p == end)
        return 1;
    for (;;) {
        const char *e = memchr(p, sep, (size_t)(end - p));
        if (e == NULL)
            e = end;
        if (!parse_attr(uri, base, p, e, query, err, errlen))
            return 0;
        if (e == end)
            return 1;
        p = e + 1;
    }
}

int p11_uri_parse(const char *str, p11_uri **out, char *err, size_t errlen)
{
    p11_uri *uri;
    const char *path, *query, *end;
    size_t len, i;

    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (str == NULL || out == NULL) {
        seterr(err, errlen, "no URI given");
        return 0;
    }
    len = strnlen(str, URI_MAX_LEN + 1);
    if (len > URI_MAX_LEN) {
        seterr(err, errlen, "longer than %d bytes", URI_MAX_LEN);
        return 0;
    }
    if (len < URI_SCHEME_LEN) {
        seterr(err, errlen, "does not start with '" URI_SCHEME "'");
        return 0;
    }
    for (i = 0; i < URI_SCHEME_LEN; i++) {
        if (to_lower((unsigned char)str[i]) != (unsigned char)URI_SCHEME[i]) {
            seterr(err, errlen, "does not start with '" URI_SCHEME "'");
            return 0;
        }
    }
    uri = calloc(1, sizeof(*uri));
    if (uri == NULL) {
        seterr(err, errlen, "out of memory");
        return 0;
    }
    path = str + URI_SCHEME_LEN;
    end = str + len;
    /* '?' is not allowed unencoded in the path: the first one starts the query. */
    query = memchr(path, '?', (size_t)(end - path));
    if (!parse_component(uri, str, path, query != NULL ? query : end, 0, err, errlen) ||
        (query != NULL && !parse_component(uri, str, query + 1, end, 1, err, errlen))) {
        p11_uri_free(uri);
        return 0;
    }
    *out = uri;
    return 1;
}

/* ------------------------------------------------------------- matching */

/* 1 when value (NULL: absent) equals the blank-padded field; trailing blanks
 * are not significant on either side (and NUL padding is tolerated). */
static int match_field(const char *value, const unsigned char *field, size_t width)
{
    size_t n, i;

    if (value == NULL)
        return 1;
    n = strlen(value);
    while (n > 0 && value[n - 1] == ' ')
        n--;
    if (n > width || memcmp(field, value, n) != 0)
        return 0;
    for (i = n; i < width; i++) {
        if (field[i] != ' ' && field[i] != '\0')
            return 0;
    }
    return 1;
}

int p11_uri_match_library(const p11_uri *uri, const CK_INFO *info)
{
    unsigned major, minor;
    int has_minor;

    if (uri == NULL)
        return 1;
    if (info == NULL)
        return uri->library_manufacturer == NULL && uri->library_description == NULL &&
               uri->library_version == NULL;
    if (!match_field(uri->library_manufacturer, info->manufacturerID,
                     sizeof(info->manufacturerID)) ||
        !match_field(uri->library_description, info->libraryDescription,
                     sizeof(info->libraryDescription)))
        return 0;
    if (uri->library_version != NULL) {
        if (!parse_version(uri->library_version, &major, &minor, &has_minor))
            return 0;
        if (info->libraryVersion.major != major ||
            (has_minor && info->libraryVersion.minor != minor))
            return 0;
    }
    return 1;
}

int p11_uri_match_slot(const p11_uri *uri, CK_SLOT_ID id, const CK_SLOT_INFO *info)
{
    if (uri == NULL)
        return 1;
    if (uri->has_slot_id && uri->slot_id != id)
        return 0;
    if (info == NULL)
        return uri->slot_manufacturer == NULL && uri->slot_description == NULL;
    return match_field(uri->slot_manufacturer, info->manufacturerID,
                       sizeof(info->manufacturerID)) &&
           match_field(uri->slot_description, info->slotDescription, sizeof(info->slotDescription));
}

int p11_uri_match_token(const p11_uri *uri, const CK_TOKEN_INFO *info)
{
    if (uri == NULL)
        return 1;
    if (info == NULL)
        return uri->token == NULL && uri->manufacturer == NULL && uri->serial == NULL &&
               uri->model == NULL;
    return match_field(uri->token, info->label, sizeof(info->label)) &&
           match_field(uri->manufacturer, info->manufacturerID, sizeof(info->manufacturerID)) &&
           match_field(uri->serial, info->serialNumber, sizeof(info->serialNumber)) &&
           match_field(uri->model, info->model, sizeof(info->model));
}
