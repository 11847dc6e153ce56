/* test_uri.c - CUnit tests of the RFC 7512 PKCS#11 URI parser and matchers
 * (pkcs11/uri.c): the RFC 7512 section 3.3 examples, malformed input with the
 * attribute each error must name, blank-padded matching, and that a pin-value
 * never reaches an error message. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <CUnit/Basic.h>
#include "p11.h"

#define ERRLEN 256

static p11_uri *parse_ok(const char *s)
{
    p11_uri *uri = NULL;
    char err[ERRLEN] = "";
    int rc = p11_uri_parse(s, &uri, err, sizeof(err));
    if (!rc)
        fprintf(stderr, "\n  unexpected failure for \"%s\": %s\n", s, err);
    CU_ASSERT_EQUAL(rc, 1);
    CU_ASSERT_PTR_NOT_NULL(uri);
    return uri;
}

#define ASSERT_STR(actual, expected)                                                               \
    do {                                                                                           \
        const char *a_ = (actual);                                                                 \
        CU_ASSERT_PTR_NOT_NULL(a_);                                                                \
        if (a_ != NULL)                                                                            \
            CU_ASSERT_STRING_EQUAL(a_, expected);                                                  \
    } while (0)

/* Every textual attribute other than the listed ones is absent. */
static void assert_only(const p11_uri *u, const char *present)
{
    struct {
        const char *name;
        const char *v;
    } f[] = {
        {"token", u->token},
        {"manufacturer", u->manufacturer},
        {"serial", u->serial},
        {"model", u->model},
        {"library-manufacturer", u->library_manufacturer},
        {"library-description", u->library_description},
        {"library-version", u->library_version},
        {"slot-manufacturer", u->slot_manufacturer},
        {"slot-description", u->slot_description},
        {"object", u->object},
        {"type", u->type},
        {"pin-source", u->pin_source},
        {"pin-value", u->pin_value},
        {"module-name", u->module_name},
        {"module-path", u->module_path},
        {"id", u->has_id ? "" : NULL},
        {"slot-id", u->has_slot_id ? "" : NULL},
    };
    size_t i;
    for (i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
        char key[40];
        snprintf(key, sizeof(key), " %s ", f[i].name);
        int expected = strstr(present, key) != NULL;
        if ((f[i].v != NULL) != expected)
            fprintf(stderr, "\n  attribute %s: present=%d expected=%d\n", f[i].name, f[i].v != NULL,
                    expected);
        CU_ASSERT_EQUAL(f[i].v != NULL, expected);
    }
    if (!u->has_id) {
        CU_ASSERT_PTR_NULL(u->id);
        CU_ASSERT_EQUAL(u->id_len, 0);
    }
}

/* ------------------------------------------------------ RFC 7512 3.3 */

static void test_rfc_empty(void)
{
    p11_uri *u = parse_ok("pkcs11:");
    if (u == NULL)
        return;
    assert_only(u, "");
    p11_uri_free(u);
}

static void test_rfc_pubkey(void)
{
    p11_uri *u = parse_ok("pkcs11:object=my-pubkey;type=public");
    if (u == NULL)
        return;
    ASSERT_STR(u->object, "my-pubkey");
    ASSERT_STR(u->type, "public");
    assert_only(u, " object type ");
    p11_uri_free(u);
}

static void test_rfc_pin_source(void)
{
    p11_uri *u = parse_ok("pkcs11:object=my-key;type=private?pin-source=file:/etc/token");
    if (u == NULL)
        return;
    ASSERT_STR(u->object, "my-key");
    ASSERT_STR(u->type, "private");
    ASSERT_STR(u->pin_source, "file:/etc/token");
    assert_only(u, " object type pin-source ");
    p11_uri_free(u);
}

static void test_rfc_full_token(void)
{
    static const unsigned char id[] = {0x69, 0x95, 0x3e, 0x5c, 0xf4, 0xbd, 0xec, 0x91};
    p11_uri *u = parse_ok("pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;"
                          "manufacturer=Snake%20Oil,%20Inc.;model=1.0;object=my-certificate;"
                          "type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial="
                          "?pin-source=file:/etc/token_pin");
    if (u == NULL)
        return;
    ASSERT_STR(u->token, "The Software PKCS#11 Softtoken");
    ASSERT_STR(u->manufacturer, "Snake Oil, Inc.");
    ASSERT_STR(u->model, "1.0");
    ASSERT_STR(u->object, "my-certificate");
    ASSERT_STR(u->type, "cert");
    ASSERT_STR(u->serial, "");
    ASSERT_STR(u->pin_source, "file:/etc/token_pin");
    CU_ASSERT_EQUAL(u->has_id, 1);
    CU_ASSERT_EQUAL(u->id_len, sizeof(id));
    CU_ASSERT(u->id != NULL && memcmp(u->id, id, sizeof(id)) == 0);
    assert_only(u, " token manufacturer model object type serial pin-source id ");
    p11_uri_free(u);
}

static void test_rfc_module_name(void)
{
    p11_uri *u = parse_ok("pkcs11:object=my-sign-key;type=private?module-name=mypkcs11");
    if (u == NULL)
        return;
    ASSERT_STR(u->object, "my-sign-key");
    ASSERT_STR(u->type, "private");
    ASSERT_STR(u->module_name, "mypkcs11");
    assert_only(u, " object type module-name ");
    p11_uri_free(u);
}

static void test_rfc_module_path(void)
{
    p11_uri *u =
        parse_ok("pkcs11:object=my-sign-key;type=private?module-path=/mnt/libmypkcs11.so.1");
    if (u == NULL)
        return;
    ASSERT_STR(u->object, "my-sign-key");
    ASSERT_STR(u->type, "private");
    ASSERT_STR(u->module_path, "/mnt/libmypkcs11.so.1");
    assert_only(u, " object type module-path ");
    p11_uri_free(u);
}

static void test_rfc_pin_value(void)
{
    p11_uri *u = parse_ok("pkcs11:token=Software%20PKCS%2311%20softtoken;"
                          "manufacturer=Snake%20Oil,%20Inc.?pin-value=the-pin");
    if (u == NULL)
        return;
    ASSERT_STR(u->token, "Software PKCS#11 softtoken");
    ASSERT_STR(u->manufacturer, "Snake Oil, Inc.");
    ASSERT_STR(u->pin_value, "the-pin");
    assert_only(u, " token manufacturer pin-value ");
    p11_uri_free(u);
}

static void test_rfc_slot_description(void)
{
    p11_uri *u = parse_ok("pkcs11:slot-description=Sun%20Metaslot");
    if (u == NULL)
        return;
    ASSERT_STR(u->slot_description, "Sun Metaslot");
    assert_only(u, " slot-description ");
    p11_uri_free(u);
}

static void test_rfc_library(void)
{
    p11_uri *u = parse_ok("pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;"
                          "library-description=Soft%20Token%20Library;library-version=1.23");
    if (u == NULL)
        return;
    ASSERT_STR(u->library_manufacturer, "Snake Oil, Inc.");
    ASSERT_STR(u->library_description, "Soft Token Library");
    ASSERT_STR(u->library_version, "1.23");
    assert_only(u, " library-manufacturer library-description library-version ");
    p11_uri_free(u);
}

static void test_rfc_substring(void)
{
    p11_uri *u = parse_ok("pkcs11:token=A%20name%20with%20a%20substring%20%25%3B;"
                          "object=my-certificate;type=cert");
    if (u == NULL)
        return;
    ASSERT_STR(u->token, "A name with a substring %;");
    ASSERT_STR(u->object, "my-certificate");
    ASSERT_STR(u->type, "cert");
    assert_only(u, " token object type ");
    p11_uri_free(u);
}

static void test_rfc_utf8(void)
{
    p11_uri *u = parse_ok("pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;"
                          "object=my-certificate;type=cert");
    if (u == NULL)
        return;
    ASSERT_STR(u->token, "Name with a small A with acute: \xc3\xa1");
    ASSERT_STR(u->object, "my-certificate");
    ASSERT_STR(u->type, "cert");
    assert_only(u, " token object type ");
    p11_uri_free(u);
}

/* Unknown (vendor) attributes are accepted and ignored, in path and query. */
static void test_rfc_vendor(void)
{
    p11_uri *u = parse_ok("pkcs11:token=my-token;object=my-certificate;type=cert;"
                          "vendor-aaa=value-a?pin-source=file:/etc/token_pin&vendor-bbb=value-b");
    if (u == NULL)
        return;
    ASSERT_STR(u->token, "my-token");
    ASSERT_STR(u->object, "my-certificate");
    ASSERT_STR(u->type, "cert");
    ASSERT_STR(u->pin_source, "file:/etc/token_pin");
    assert_only(u, " token object type pin-source ");
    p11_uri_free(u);
}

/* ------------------------------------------------------------ details */

static void test_decoding(void)
{
    p11_uri *u;

    /* Hex digits in either case; '=' and '&' are allowed unencoded in a path value. */
    u = parse_ok("PKCS11:object=a%2fb%2Fc%7e=x&y;id=%00%ff%Ab");
    if (u != NULL) {
        static const unsigned char id[] = {0x00, 0xff, 0xab};
        ASSERT_STR(u->object, "a/b/c~=x&y");
        CU_ASSERT_EQUAL(u->id_len, 3);
        CU_ASSERT(u->id != NULL && memcmp(u->id, id, 3) == 0);
        p11_uri_free(u);
    }
    /* Empty id: present, zero length. */
    u = parse_ok("pkcs11:id=");
    if (u != NULL) {
        CU_ASSERT_EQUAL(u->has_id, 1);
        CU_ASSERT_EQUAL(u->id_len, 0);
        CU_ASSERT_PTR_NOT_NULL(u->id);
        p11_uri_free(u);
    }
    /* Query values may hold '/', '?', '|' and '=' unencoded; empty path and query. */
    u = parse_ok("pkcs11:?pin-source=file:/a?b|c=d&module-path=/usr/lib/x.so");
    if (u != NULL) {
        ASSERT_STR(u->pin_source, "file:/a?b|c=d");
        ASSERT_STR(u->module_path, "/usr/lib/x.so");
        p11_uri_free(u);
    }
    u = parse_ok("pkcs11:?");
    if (u != NULL) {
        assert_only(u, "");
        p11_uri_free(u);
    }
    u = parse_ok("pkcs11:token=t?");
    if (u != NULL) {
        ASSERT_STR(u->token, "t");
        p11_uri_free(u);
    }
    /* All types; slot-id limits; library-version forms. */
    u = parse_ok("pkcs11:type=secret-key;slot-id=0;library-version=7");
    if (u != NULL) {
        ASSERT_STR(u->type, "secret-key");
        CU_ASSERT_EQUAL(u->has_slot_id, 1);
        CU_ASSERT_EQUAL(u->slot_id, 0);
        ASSERT_STR(u->library_version, "7");
        p11_uri_free(u);
    }
    u = parse_ok("pkcs11:type=data;slot-id=%31%32");
    if (u != NULL) {
        ASSERT_STR(u->type, "data");
        CU_ASSERT_EQUAL(u->slot_id, 12);
        p11_uri_free(u);
    }
    {
        char s[64];
        snprintf(s, sizeof(s), "pkcs11:slot-id=%lu;library-version=255.0",
                 (unsigned long)(CK_SLOT_ID)-1);
        u = parse_ok(s);
        if (u != NULL) {
            CU_ASSERT_EQUAL(u->slot_id, (CK_SLOT_ID)-1);
            p11_uri_free(u);
        }
    }
    /* Vendor "x-" attributes and unknown query attributes are ignored. */
    u = parse_ok("pkcs11:x-token=a;x-id=%00;token=b?x-pin=1&foo=bar&foo=baz");
    if (u != NULL) {
        ASSERT_STR(u->token, "b");
        assert_only(u, " token ");
        p11_uri_free(u);
    }
    p11_uri_free(NULL);
}

static void test_length_limit(void)
{
    const size_t max = 65536;
    char *s = malloc(max + 2);
    p11_uri *u = NULL;
    char err[ERRLEN];

    CU_ASSERT_FATAL(s != NULL);
    memcpy(s, "pkcs11:object=", 14);
    memset(s + 14, 'a', max - 14);
    s[max] = '\0';
    u = parse_ok(s);
    if (u != NULL) {
        CU_ASSERT_EQUAL(strlen(u->object), max - 14);
        p11_uri_free(u);
    }
    s[max] = 'a';
    s[max + 1] = '\0';
    u = NULL;
    CU_ASSERT_EQUAL(p11_uri_parse(s, &u, err, sizeof(err)), 0);
    CU_ASSERT_PTR_NULL(u);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "longer than"));
    free(s);
}

/* ---------------------------------------------------------- malformed */

struct bad_case {
    const char *uri;
    const char *expect; /* substring of the error message */
};

static const struct bad_case bad_cases[] = {
    {"", "does not start with 'pkcs11:'"},
    {"pkcs11", "does not start with 'pkcs11:'"},
    {"pkcs12:token=a", "does not start with 'pkcs11:'"},
    {" pkcs11:token=a", "does not start with 'pkcs11:'"},
    {"pkcs11:id=%G1", "attribute 'id': invalid percent-encoding at offset 10"},
    {"pkcs11:id=%4", "attribute 'id': invalid percent-encoding at offset 10"},
    {"pkcs11:id=%", "attribute 'id': invalid percent-encoding"},
    {"pkcs11:id=ab%4;token=x", "attribute 'id': invalid percent-encoding at offset 12"},
    {"pkcs11:token=%1g", "attribute 'token': invalid percent-encoding"},
    {"pkcs11:?pin-source=%zz", "attribute 'pin-source': invalid percent-encoding"},
    {"pkcs11:token=a%00b", "attribute 'token': NUL byte"},
    {"pkcs11:object=%00", "attribute 'object': NUL byte"},
    {"pkcs11:?module-path=/lib%00.so", "attribute 'module-path': NUL byte"},
    {"pkcs11:token=a b", "attribute 'token': character not allowed unencoded at offset 14"},
    {"pkcs11:token=a\tb", "attribute 'token': character not allowed"},
    {"pkcs11:token=a\nb", "attribute 'token': character not allowed"},
    {"pkcs11:token=a\x7f", "attribute 'token': character not allowed"},
    {"pkcs11:token=\xc3\xa1", "attribute 'token': character not allowed"},
    {"pkcs11:token=a#frag", "attribute 'token': character not allowed"},
    {"pkcs11:object=a/b", "attribute 'object': character not allowed"},
    {"pkcs11:?module-name=a;b", "attribute 'module-name': character not allowed"},
    {"pkcs11:?module-name=a b", "attribute 'module-name': character not allowed"},
    {"pkcs11:vendor-aaa=a b", "attribute 'vendor-aaa': character not allowed"},
    {"pkcs11:vendor-aaa=%x", "attribute 'vendor-aaa': invalid percent-encoding"},
    {"pkcs11:?vendor-bbb=%", "attribute 'vendor-bbb': invalid percent-encoding"},
    {"pkcs11:object=a;object=b", "duplicate attribute 'object'"},
    {"pkcs11:id=01;id=01", "duplicate attribute 'id'"},
    {"pkcs11:id=;id=", "duplicate attribute 'id'"},
    {"pkcs11:slot-id=1;slot-id=1", "duplicate attribute 'slot-id'"},
    {"pkcs11:type=cert;type=cert", "duplicate attribute 'type'"},
    {"pkcs11:?pin-source=a&pin-source=b", "duplicate attribute 'pin-source'"},
    {"pkcs11:?module-name=a&module-name=a", "duplicate attribute 'module-name'"},
    {"pkcs11:=a", "empty attribute name"},
    {"pkcs11:token=a;=b", "empty attribute name"},
    {"pkcs11:?=b", "empty attribute name"},
    {"pkcs11:;", "empty attribute at offset 7"},
    {"pkcs11:token=a;", "empty attribute at offset 15"},
    {"pkcs11:token=a;;object=b", "empty attribute"},
    {"pkcs11:?pin-source=a&", "empty attribute"},
    {"pkcs11:?&pin-source=a", "empty attribute"},
    {"pkcs11:token", "attribute 'token': missing '='"},
    {"pkcs11:object=a;type", "attribute 'type': missing '='"},
    {"pkcs11:?module-path", "attribute 'module-path': missing '='"},
    {"pkcs11:something", "attribute without '=' at offset 7"},
    {"pkcs11:tok en=a", "invalid character in attribute name at offset 10"},
    {"pkcs11:tok%65n=a", "invalid character in attribute name"},
    {"pkcs11:to;ken=a", "attribute without '='"},
    {"pkcs11:type=", "attribute 'type': invalid value"},
    {"pkcs11:type=Cert", "attribute 'type': invalid value"},
    {"pkcs11:type=certificate", "attribute 'type': invalid value"},
    {"pkcs11:type=cert%00", "attribute 'type': NUL byte"},
    {"pkcs11:slot-id=", "attribute 'slot-id'"},
    {"pkcs11:slot-id=-1", "attribute 'slot-id'"},
    {"pkcs11:slot-id=+1", "attribute 'slot-id'"},
    {"pkcs11:slot-id=0x10", "attribute 'slot-id'"},
    {"pkcs11:slot-id=1%20", "attribute 'slot-id'"},
    {"pkcs11:slot-id=99999999999999999999999", "attribute 'slot-id'"},
    {"pkcs11:library-version=", "attribute 'library-version'"},
    {"pkcs11:library-version=1.", "attribute 'library-version'"},
    {"pkcs11:library-version=.1", "attribute 'library-version'"},
    {"pkcs11:library-version=1.2.3", "attribute 'library-version'"},
    {"pkcs11:library-version=a", "attribute 'library-version'"},
    {"pkcs11:library-version=256", "attribute 'library-version'"},
    {"pkcs11:library-version=1.256", "attribute 'library-version'"},
    {"pkcs11:library-version=99999999999", "attribute 'library-version'"},
    {"pkcs11:tokn=a", "unknown attribute 'tokn' (did you mean 'token'?)"},
    {"pkcs11:Token=a", "unknown attribute 'Token'"},
    {"pkcs11:ID=01", "unknown attribute 'ID'"},
    {"pkcs11:slot_id=1", "unknown attribute 'slot_id'"},
    {"pkcs11:serail=1", "unknown attribute 'serail'"},
    {"pkcs11:library-manufactuer=a", "unknown attribute 'library-manufactuer'"},
    {"pkcs11:?pin-sorce=file:/x", "unknown attribute 'pin-sorce'"},
    {"pkcs11:?module_path=/x", "unknown attribute 'module_path'"},
    {"pkcs11:pin-source=file:x", "attribute 'pin-source' belongs in the query"},
    {"pkcs11:module-name=m", "attribute 'module-name' belongs in the query"},
    {"pkcs11:?token=a", "attribute 'token' belongs in the path"},
    {"pkcs11:?id=%01", "attribute 'id' belongs in the path"},
    {"pkcs11:token=a?object=b", "attribute 'object' belongs in the path"},
};

static void test_malformed(void)
{
    size_t i;

    for (i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        p11_uri sentinel, *u = &sentinel;
        char err[ERRLEN];
        int rc;

        memset(err, 'Z', sizeof(err));
        rc = p11_uri_parse(bad_cases[i].uri, &u, err, sizeof(err));
        CU_ASSERT_EQUAL(rc, 0);
        CU_ASSERT_PTR_EQUAL(u, &sentinel); /* *out untouched */
        CU_ASSERT_PTR_NOT_NULL(memchr(err, '\0', sizeof(err)));
        CU_ASSERT_NSTRING_EQUAL(err, "PKCS#11 URI: ", 13);
        if (rc != 0 || strstr(err, bad_cases[i].expect) == NULL) {
            fprintf(stderr, "\n  \"%s\": rc=%d err=\"%.*s\", expected \"%s\"\n", bad_cases[i].uri,
                    rc, ERRLEN - 1, err, bad_cases[i].expect);
            CU_FAIL("wrong result or message");
        }
        if (rc == 1 && u != &sentinel)
            p11_uri_free(u);
        /* Also without an error buffer, and with a tiny one. */
        u = &sentinel;
        CU_ASSERT_EQUAL(p11_uri_parse(bad_cases[i].uri, &u, NULL, 0), 0);
        CU_ASSERT_EQUAL(p11_uri_parse(bad_cases[i].uri, &u, err, 0), 0);
        CU_ASSERT_EQUAL(p11_uri_parse(bad_cases[i].uri, &u, err, 5), 0);
        CU_ASSERT_STRING_EQUAL(err, "PKCS");
        CU_ASSERT_PTR_EQUAL(u, &sentinel);
    }
}

static void test_bad_arguments(void)
{
    p11_uri *u = NULL;
    char err[ERRLEN];

    CU_ASSERT_EQUAL(p11_uri_parse(NULL, &u, err, sizeof(err)), 0);
    CU_ASSERT_PTR_NULL(u);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "PKCS#11 URI"));
    CU_ASSERT_EQUAL(p11_uri_parse("pkcs11:", NULL, err, sizeof(err)), 0);
    /* Success clears a stale message. */
    strcpy(err, "stale");
    CU_ASSERT_EQUAL(p11_uri_parse("pkcs11:", &u, err, sizeof(err)), 1);
    CU_ASSERT_STRING_EQUAL(err, "");
    p11_uri_free(u);
}

/* The pin-value must not reach an error message, whatever goes wrong. */
static void test_pin_not_in_errors(void)
{
    static const char *const cases[] = {
        "pkcs11:token=a b?pin-value=S3cretPin",
        "pkcs11:token=a?pin-value=S3cretPin&pin-value=S3cretPin",
        "pkcs11:token=a?pin-value=S3cretPin%0",
        "pkcs11:token=a?pin-value=S3cretPin%00x",
        "pkcs11:token=a?pin-value=S3cretPin x",
        "pkcs11:token=a?pin-value=S3cretPin;x",
        "pkcs11:token=a?pin-value=S3cretPin&",
        "pkcs11:token=a?pin-value=S3cretPin&module-name=a%zz",
        "pkcs11:token=a?pin-value=S3cretPin&token=b",
        "pkcs11:token=a?pin-value=S3cretPin&pin-sorce=x",
        "pkcs11:pin-value=S3cretPin",
        "pkcs11:token=a;pin-value=S3cretPin;type=x",
        "pkcs11:token=a?S3cretPin",
        "pkcs11:token=a?S3cretPin&pin-value",
        "pkcs11:token=a?pin-value=%53%33cretPin&x=%",
        "pkcs11:S3cretPin",
        "pkcs11:S3cretPin=",
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        p11_uri *u = NULL;
        char err[ERRLEN] = "";
        int rc = p11_uri_parse(cases[i], &u, err, sizeof(err));
        if (rc == 1) {
            /* "pkcs11:S3cretPin=" is a well-formed vendor attribute: ignored. */
            CU_ASSERT_PTR_NULL(u->pin_value);
            p11_uri_free(u);
            continue;
        }
        CU_ASSERT_NOT_EQUAL(err[0], '\0');
        if (strstr(err, "S3cret") != NULL || strstr(err, "cretPin") != NULL) {
            fprintf(stderr, "\n  \"%s\" leaked: %s\n", cases[i], err);
            CU_FAIL("pin-value in an error message");
        }
    }
}

/* Mutations of valid URIs must never crash, leak or read out of bounds
 * (meaningful under valgrind or -fsanitize=address). */
static void test_mutations(void)
{
    static const char *const seeds[] = {
        "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;"
        "model=1.0;object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial="
        "?pin-source=file:/etc/token_pin",
        "pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;library-description=Soft;"
        "library-version=1.23;slot-id=42;slot-description=Sun%20Metaslot",
        "pkcs11:object=my-key;type=private?pin-value=the-pin&module-path=/x.so&vendor=%41",
    };
    static const char alphabet[] = "%;?&=:-/0123456789aAfFgG xpkcs\x01\x80";
    unsigned long state = 12345;
    char buf[512];
    int iter, accepted = 0;

    for (iter = 0; iter < 20000; iter++) {
        const char *seed = seeds[iter % 3];
        size_t len = strlen(seed), k, nmut;
        p11_uri *u = NULL;
        char err[64];

        memcpy(buf, seed, len + 1);
        state = state * 6364136223846793005UL + 1442695040888963407UL;
        nmut = 1 + (state >> 33) % 4;
        for (k = 0; k < nmut && len > 0; k++) {
            size_t pos;
            state = state * 6364136223846793005UL + 1442695040888963407UL;
            pos = (state >> 33) % len;
            switch ((state >> 20) % 3) {
            case 0: /* replace */
                buf[pos] = alphabet[(state >> 40) % (sizeof(alphabet) - 1)];
                break;
            case 1: /* truncate */
                buf[pos] = '\0';
                len = pos;
                break;
            default: /* delete */
                memmove(buf + pos, buf + pos + 1, len - pos);
                len--;
                break;
            }
        }
        if (p11_uri_parse(buf, &u, err, sizeof(err))) {
            accepted++;
            p11_uri_free(u);
        } else {
            CU_ASSERT_PTR_NOT_NULL(strstr(err, "PKCS#11"));
        }
    }
    CU_ASSERT(accepted > 0);
}

/* ----------------------------------------------------------- matchers */

static void pad(unsigned char *field, size_t width, const char *s)
{
    size_t n = strlen(s);
    memset(field, ' ', width);
    memcpy(field, s, n < width ? n : width);
}

static p11_uri *must_parse(const char *s)
{
    p11_uri *u = NULL;
    CU_ASSERT_FATAL(p11_uri_parse(s, &u, NULL, 0) == 1);
    return u;
}

static int token_matches(const char *uri, const CK_TOKEN_INFO *ti)
{
    p11_uri *u = must_parse(uri);
    int r = p11_uri_match_token(u, ti);
    p11_uri_free(u);
    return r;
}

static int slot_matches(const char *uri, CK_SLOT_ID id, const CK_SLOT_INFO *si)
{
    p11_uri *u = must_parse(uri);
    int r = p11_uri_match_slot(u, id, si);
    p11_uri_free(u);
    return r;
}

static int library_matches(const char *uri, const CK_INFO *li)
{
    p11_uri *u = must_parse(uri);
    int r = p11_uri_match_library(u, li);
    p11_uri_free(u);
    return r;
}

static void test_match_token(void)
{
    CK_TOKEN_INFO ti;

    memset(&ti, 0xAA, sizeof(ti));
    pad(ti.label, sizeof(ti.label), "The Software PKCS#11 Softtoken");
    pad(ti.manufacturerID, sizeof(ti.manufacturerID), "Snake Oil, Inc.");
    pad(ti.model, sizeof(ti.model), "1.0");
    pad(ti.serialNumber, sizeof(ti.serialNumber), "");

    CU_ASSERT_EQUAL(token_matches("pkcs11:", &ti), 1);
    CU_ASSERT_EQUAL(token_matches("pkcs11:object=x;type=cert;id=%01?pin-value=1", &ti), 1);
    CU_ASSERT_EQUAL(token_matches("pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;"
                                  "manufacturer=Snake%20Oil,%20Inc.;model=1.0;serial=",
                                  &ti),
                    1);
    CU_ASSERT_EQUAL(token_matches("pkcs11:token=The%20Software%20PKCS%2311%20Softtoken%20", &ti),
                    1); /* trailing blanks are padding */
    CU_ASSERT_EQUAL(token_matches("pkcs11:token=The%20Software", &ti), 0); /* no prefix match */
    CU_ASSERT_EQUAL(token_matches("pkcs11:token=the%20software%20pkcs%2311%20softtoken", &ti),
                    0); /* case-sensitive */
    CU_ASSERT_EQUAL(token_matches("pkcs11:token=", &ti), 0);
    CU_ASSERT_EQUAL(token_matches("pkcs11:manufacturer=Snake%20Oil", &ti), 0);
    CU_ASSERT_EQUAL(token_matches("pkcs11:model=1.0;serial=1", &ti), 0);
    CU_ASSERT_EQUAL(token_matches("pkcs11:model=1", &ti), 0);
    CU_ASSERT_EQUAL(token_matches("pkcs11:serial=", &ti), 1);

    /* A field filled to its full width, with no padding at all. */
    memcpy(ti.serialNumber, "0123456789ABCDEF", 16);
    CU_ASSERT_EQUAL(token_matches("pkcs11:serial=0123456789ABCDEF", &ti), 1);
    CU_ASSERT_EQUAL(token_matches("pkcs11:serial=0123456789ABCDEF0", &ti), 0);
    CU_ASSERT_EQUAL(token_matches("pkcs11:serial=0123456789ABCDE", &ti), 0);
    CU_ASSERT_EQUAL(token_matches("pkcs11:serial=", &ti), 0);
    /* A value longer than the field never matches. */
    CU_ASSERT_EQUAL(token_matches("pkcs11:token=The%20Software%20PKCS%2311%20Softtoken%20and%20"
                                  "more%20text",
                                  &ti),
                    0);
    /* UTF-8 label. */
    pad(ti.label, sizeof(ti.label), "\xc3\xa1 token");
    CU_ASSERT_EQUAL(token_matches("pkcs11:token=%C3%A1%20token", &ti), 1);
    CU_ASSERT_EQUAL(token_matches("pkcs11:token=%C3%A1", &ti), 0);

    CU_ASSERT_EQUAL(p11_uri_match_token(NULL, &ti), 1);
    CU_ASSERT_EQUAL(token_matches("pkcs11:object=a", NULL), 1);
    CU_ASSERT_EQUAL(token_matches("pkcs11:token=a", NULL), 0);
}

static void test_match_slot(void)
{
    CK_SLOT_INFO si;

    memset(&si, 0x55, sizeof(si));
    pad(si.slotDescription, sizeof(si.slotDescription), "Sun Metaslot");
    pad(si.manufacturerID, sizeof(si.manufacturerID), "Sun Microsystems, Inc.");

    CU_ASSERT_EQUAL(slot_matches("pkcs11:", 3, &si), 1);
    CU_ASSERT_EQUAL(slot_matches("pkcs11:token=x", 3, &si), 1);
    CU_ASSERT_EQUAL(slot_matches("pkcs11:slot-description=Sun%20Metaslot", 3, &si), 1);
    CU_ASSERT_EQUAL(slot_matches("pkcs11:slot-description=Sun", 3, &si), 0);
    CU_ASSERT_EQUAL(slot_matches("pkcs11:slot-manufacturer=Sun%20Microsystems,%20Inc.", 3, &si), 1);
    CU_ASSERT_EQUAL(slot_matches("pkcs11:slot-manufacturer=Sun%20Microsystems", 3, &si), 0);
    CU_ASSERT_EQUAL(slot_matches("pkcs11:slot-id=3", 3, &si), 1);
    CU_ASSERT_EQUAL(slot_matches("pkcs11:slot-id=3", 4, &si), 0);
    CU_ASSERT_EQUAL(slot_matches("pkcs11:slot-id=0", 0, &si), 1);
    CU_ASSERT_EQUAL(slot_matches("pkcs11:slot-id=3;slot-description=Sun%20Metaslot", 3, &si), 1);
    CU_ASSERT_EQUAL(slot_matches("pkcs11:slot-id=3;slot-description=Other", 3, &si), 0);
    CU_ASSERT_EQUAL(slot_matches("pkcs11:slot-id=3", 3, NULL), 1);
    CU_ASSERT_EQUAL(slot_matches("pkcs11:slot-description=Sun%20Metaslot", 3, NULL), 0);
    CU_ASSERT_EQUAL(p11_uri_match_slot(NULL, 3, &si), 1);
}

static void test_match_library(void)
{
    CK_INFO li;

    memset(&li, 0x33, sizeof(li));
    pad(li.manufacturerID, sizeof(li.manufacturerID), "Snake Oil, Inc.");
    pad(li.libraryDescription, sizeof(li.libraryDescription), "Soft Token Library");
    li.libraryVersion.major = 1;
    li.libraryVersion.minor = 23;

    CU_ASSERT_EQUAL(library_matches("pkcs11:", &li), 1);
    CU_ASSERT_EQUAL(library_matches("pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;"
                                    "library-description=Soft%20Token%20Library;"
                                    "library-version=1.23",
                                    &li),
                    1);
    CU_ASSERT_EQUAL(library_matches("pkcs11:library-version=1", &li), 1);
    CU_ASSERT_EQUAL(library_matches("pkcs11:library-version=1.023", &li), 1);
    CU_ASSERT_EQUAL(library_matches("pkcs11:library-version=1.2", &li), 0);
    CU_ASSERT_EQUAL(library_matches("pkcs11:library-version=1.0", &li), 0);
    CU_ASSERT_EQUAL(library_matches("pkcs11:library-version=2", &li), 0);
    CU_ASSERT_EQUAL(library_matches("pkcs11:library-version=0.23", &li), 0);
    CU_ASSERT_EQUAL(library_matches("pkcs11:library-manufacturer=Snake%20Oil", &li), 0);
    CU_ASSERT_EQUAL(library_matches("pkcs11:library-description=Soft%20Token%20Library%20", &li),
                    1);
    CU_ASSERT_EQUAL(library_matches("pkcs11:library-description=Soft%20Token", &li), 0);
    CU_ASSERT_EQUAL(library_matches("pkcs11:token=x;slot-id=1", &li), 1);
    CU_ASSERT_EQUAL(library_matches("pkcs11:token=x", NULL), 1);
    CU_ASSERT_EQUAL(library_matches("pkcs11:library-version=1", NULL), 0);
    CU_ASSERT_EQUAL(p11_uri_match_library(NULL, &li), 1);
}

/* --------------------------------------------------------------- main */

int main(void)
{
    static const struct {
        const char *name;
        CU_TestFunc fn;
    } tests[] = {
        {"RFC 7512: pkcs11:", test_rfc_empty},
        {"RFC 7512: public key", test_rfc_pubkey},
        {"RFC 7512: pin-source", test_rfc_pin_source},
        {"RFC 7512: full token and id", test_rfc_full_token},
        {"RFC 7512: module-name", test_rfc_module_name},
        {"RFC 7512: module-path", test_rfc_module_path},
        {"RFC 7512: pin-value", test_rfc_pin_value},
        {"RFC 7512: slot-description", test_rfc_slot_description},
        {"RFC 7512: library attributes", test_rfc_library},
        {"RFC 7512: encoded % and ;", test_rfc_substring},
        {"RFC 7512: UTF-8", test_rfc_utf8},
        {"RFC 7512: vendor attributes", test_rfc_vendor},
        {"decoding and edge cases", test_decoding},
        {"64 KiB limit", test_length_limit},
        {"malformed URIs", test_malformed},
        {"bad arguments", test_bad_arguments},
        {"pin-value never in errors", test_pin_not_in_errors},
        {"mutated URIs", test_mutations},
        {"match token", test_match_token},
        {"match slot", test_match_slot},
        {"match library", test_match_library},
    };
    CU_pSuite suite;
    unsigned failures;
    size_t i;

    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    suite = CU_add_suite("uri", NULL, NULL);
    if (suite == NULL) {
        CU_cleanup_registry();
        return 2;
    }
    for (i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
        if (CU_add_test(suite, tests[i].name, tests[i].fn) == NULL) {
            CU_cleanup_registry();
            return 2;
        }
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    failures = CU_get_number_of_failures();
    CU_cleanup_registry();
    return failures ? 1 : 0;
}
