/* tool_check.c - `p11tls-tool check`: loads an openssl.cnf as OpenSSL will, reads
 * p11tls's status from it, loads the key and the certificate, matches them, and runs
 * one handshake per protocol in memory (the server on the configuration, a plain
 * client in a library context of its own). For each it says where the secrets lived:
 * the server's keylog holds what libssl holds; where that differs from the client's
 * secret, libssl held a handle and the secret was in the token. It stops at the first
 * thing that is wrong and names the option to change. Exit codes: 0 all good, 1 a
 * check failed, 2 usage, 3 the handshakes work but a protocol's secrets are on the
 * host (p11tls is not in the path: key-only, or not preferred). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/ssl.h>
#include <openssl/store.h>
#include "tool.h"

struct found {
    OSSL_PROVIDER *prov;
    char name[1024];
};

static int find_p11tls(OSSL_PROVIDER *p, void *arg)
{
    struct found *f = arg;
    char *name = NULL;
    OSSL_PARAM q[] = {OSSL_PARAM_construct_utf8_ptr(OSSL_PROV_PARAM_NAME, &name, 0),
                      OSSL_PARAM_construct_end()};
    if (OSSL_PROVIDER_get_params(p, q) && name != NULL && strncmp(name, "p11tls:", 7) == 0) {
        f->prov = p;
        snprintf(f->name, sizeof(f->name), "%s", name);
        return 0;
    }
    return 1;
}

/* A pool's members, one line each (with the level now first, when asked). */
static void print_members(const struct found *f, int with_level)
{
    char *members = NULL;
    const char *m;
    OSSL_PARAM q[] = {OSSL_PARAM_construct_utf8_ptr("p11tls-members", &members, 0),
                      OSSL_PARAM_construct_end()};
    if (strncmp(f->name, "p11tls: pool of ", 16) != 0 || !OSSL_PROVIDER_get_params(f->prov, q) ||
        members == NULL)
        return; /* (one token: the status line says it all) */
    m = strstr(members, "members: ");
    if (with_level)
        printf("  %.*s\n", m != NULL ? (int)(m - members - 2) : (int)strlen(members), members);
    for (m = m != NULL ? m + 9 : NULL; m != NULL && *m != '\0';) {
        const char *e = strstr(m, "; member");
        printf("  %.*s\n", e != NULL ? (int)(e - m) : (int)strlen(m), m);
        m = e != NULL ? e + 2 : NULL;
    }
}

/* The first error in the queue with its data ("...: option 'x'"), then the queue cleared. */
static void print_errors(const char *indent)
{
    unsigned long e;
    const char *data = NULL, *file = NULL, *func = NULL;
    int line = 0, flags = 0, n = 0;
    char buf[256];
    while ((e = ERR_get_error_all(&file, &line, &func, &data, &flags)) != 0) {
        ERR_error_string_n(e, buf, sizeof(buf));
        if (n++ < 6)
            printf("%s%s\n", indent, (flags & ERR_TXT_STRING) && data && *data ? data : buf);
    }
}

static EVP_PKEY *load_key(OSSL_LIB_CTX *lctx, const char *where)
{
    OSSL_STORE_CTX *s = OSSL_STORE_open_ex(where, lctx, NULL, NULL, NULL, NULL, NULL, NULL);
    EVP_PKEY *k = NULL;
    if (s == NULL)
        return NULL;
    while (k == NULL && !OSSL_STORE_eof(s)) {
        OSSL_STORE_INFO *i = OSSL_STORE_load(s);
        if (i != NULL && OSSL_STORE_INFO_get_type(i) == OSSL_STORE_INFO_PKEY)
            k = OSSL_STORE_INFO_get1_PKEY(i);
        OSSL_STORE_INFO_free(i);
        if (i == NULL)
            break;
    }
    OSSL_STORE_close(s);
    return k;
}

/* keylog lines of one side: "LABEL client_random secret" */
struct keylog {
    char lines[16][320];
    int n;
};
static int keylog_idx;
static void keylog_cb(const SSL *ssl, const char *line)
{
    struct keylog *k = SSL_get_ex_data(ssl, keylog_idx);
    if (k != NULL && k->n < 16)
        snprintf(k->lines[k->n++], sizeof(k->lines[0]), "%s", line);
}

/* The value of the keylog line labelled label ("" if none). */
static const char *keylog_value(const struct keylog *k, const char *label)
{
    size_t l = strlen(label);
    for (int i = 0; i < k->n; i++)
        if (strncmp(k->lines[i], label, l) == 0 && k->lines[i][l] == ' ') {
            const char *v = strrchr(k->lines[i], ' ');
            return v ? v + 1 : "";
        }
    return "";
}

struct proto {
    const char *name;
    int version;
    const char *ciphers; /* TLS 1.2 cipher list, or TLS 1.3 suite */
    const char *groups;
    const char *label; /* the keylog secret compared */
};

static const struct proto protos[] = {
    {"TLS 1.2 RSA key exchange", TLS1_2_VERSION, "AES128-GCM-SHA256", NULL, "CLIENT_RANDOM"},
    {"TLS 1.2 ECDHE-RSA, P-256", TLS1_2_VERSION, "ECDHE-RSA-AES128-GCM-SHA256", "P-256",
     "CLIENT_RANDOM"},
    {"TLS 1.3, X25519", TLS1_3_VERSION, "TLS_AES_128_GCM_SHA256", "X25519",
     "CLIENT_TRAFFIC_SECRET_0"},
    {"TLS 1.3, P-256", TLS1_3_VERSION, "TLS_AES_128_GCM_SHA256", "P-256",
     "CLIENT_TRAFFIC_SECRET_0"},
};

/* One handshake over a BIO pair, then a byte each way. 1: done. */
static int handshake(SSL *c, SSL *s)
{
    int cdone = 0, sdone = 0;
    char b = 'p';
    for (int i = 0; i < 200 && !(cdone && sdone); i++) {
        if (!cdone) {
            int r = SSL_do_handshake(c);
            if (r == 1)
                cdone = 1;
            else if (SSL_get_error(c, r) != SSL_ERROR_WANT_READ)
                return 0;
        }
        if (!sdone) {
            int r = SSL_do_handshake(s);
            if (r == 1)
                sdone = 1;
            else if (SSL_get_error(s, r) != SSL_ERROR_WANT_READ)
                return 0;
        }
    }
    return cdone && sdone && SSL_write(c, &b, 1) == 1 && SSL_read(s, &b, 1) == 1 &&
           SSL_write(s, &b, 1) == 1 && SSL_read(c, &b, 1) == 1;
}

/* Runs protocol p; prints its line. Returns 0 secrets in the token, 1 failed, 3 host. */
static int run_proto(const struct proto *p, SSL_CTX *sctx, SSL_CTX *cctx, const char *status)
{
    SSL *s = SSL_new(sctx), *c = SSL_new(cctx);
    BIO *bs = NULL, *bc = NULL;
    struct keylog ks = {0}, kc = {0};
    int rc = 1, secure;
    const char *sv, *cv, *group = "";

    if (s == NULL || c == NULL || !BIO_new_bio_pair(&bs, 0, &bc, 0))
        goto done;
    SSL_set_bio(s, bs, bs);
    SSL_set_bio(c, bc, bc);
    SSL_set_ex_data(s, keylog_idx, &ks);
    SSL_set_ex_data(c, keylog_idx, &kc);
    SSL_set_min_proto_version(c, p->version);
    SSL_set_max_proto_version(c, p->version);
    if (p->version == TLS1_3_VERSION ? !SSL_set_ciphersuites(c, p->ciphers)
                                     : !SSL_set_cipher_list(c, p->ciphers))
        goto done;
    if (p->groups != NULL && !SSL_set1_groups_list(c, p->groups))
        goto done;
    SSL_set_connect_state(c);
    SSL_set_accept_state(s);
    if (!handshake(c, s)) {
        if (p->groups != NULL &&
            (strstr(status, "(ecdhe = require: refused)") != NULL ||
             (p->groups[0] == 'X' && strstr(status, "other groups refused") != NULL))) {
            printf("  %-26s refused, as 'ecdhe = require' says (not one of the token's curves)\n",
                   p->name);
            ERR_clear_error();
            rc = 0;
            goto done;
        }
        if (p->groups == NULL && strstr(status, ", key only (") != NULL) {
            printf("  %-26s refused, as 'min-assurance = key-only' makes it: RSA key exchange "
                   "needs p11tls's TLS1-PRF (the pre-master secret stays in the token)\n",
                   p->name);
            ERR_clear_error();
            rc = 3;
            goto done;
        }
        printf("  %-26s FAILED\n", p->name);
        print_errors("    ");
        goto done;
    }
    if (p->groups != NULL) {
        int nid = SSL_get_negotiated_group(c);
        group = nid != NID_undef ? OBJ_nid2sn(nid) : "";
    }
    sv = keylog_value(&ks, p->label);
    cv = keylog_value(&kc, p->label);
    secure = *sv != '\0' && *cv != '\0' && strcmp(sv, cv) != 0;
    if (!secure) {
        printf("  %-26s works, but libssl holds the %s itself: it is computed on the host "
               "(p11tls is not in the key schedule's path: 'min-assurance = key-only', or "
               "no 'default_properties = ?provider=p11tls')\n",
               p->name, p->version == TLS1_3_VERSION ? "traffic secrets" : "master secret");
        rc = 3;
        goto done;
    }
    rc = 0;
    printf("  %-26s ok: libssl holds a handle, not the %s; ", p->name,
           p->version == TLS1_3_VERSION ? "key schedule's secrets" : "master secret");
    if (strstr(status, "assurance transient") != NULL)
        printf("`transient`: each secret leaves the token once, as HMAC output, and is put "
               "back;");
    else
        printf("`sealed`: no secret leaves the token;");
    if (p->groups == NULL) {
        printf(" the pre-master secret is unwrapped in the token\n");
    } else {
        const char *g = strcmp(group, "prime256v1") == 0 ? "P-256" : group;
        char want[64];
        snprintf(want, sizeof(want), " %s", g);
        if (strstr(status, "ECDHE in the token:") != NULL && strstr(status, want) != NULL &&
            strncmp(g, "X", 1) != 0)
            printf(" the ECDHE key pair and shared secret (%s) are in the token\n", g);
        else
            printf(" the ECDHE shared secret (%s) is computed on the host and imported\n", g);
    }
done:
    SSL_free(s);
    SSL_free(c);
    return rc;
}

static void check_usage(FILE *f)
{
    fprintf(f, "usage: p11tls-tool check --conf FILE [--key URI|FILE] [--cert PEM]\n");
}

int tool_check(int argc, char **argv)
{
    static const struct option lo[] = {{"conf", required_argument, NULL, 'c'},
                                       {"key", required_argument, NULL, 'k'},
                                       {"cert", required_argument, NULL, 'C'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
    const char *conf = NULL, *key = NULL, *certf = NULL;
    OSSL_LIB_CTX *lctx = NULL, *plain = NULL;
    struct found f = {NULL, ""};
    EVP_PKEY *pkey = NULL;
    X509 *cert = NULL;
    SSL_CTX *sctx = NULL, *cctx = NULL;
    int o, rc = 1, host = 0;

    optind = 1;
    while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (o) {
        case 'c':
            conf = optarg;
            break;
        case 'k':
            key = optarg;
            break;
        case 'C':
            certf = optarg;
            break;
        case 'h':
            check_usage(stdout);
            return 0;
        default:
            check_usage(stderr);
            return TOOL_EXIT_USAGE;
        }
    }
    if (conf == NULL || optind != argc || (certf != NULL && key == NULL)) {
        check_usage(stderr);
        return TOOL_EXIT_USAGE;
    }
    printf("configuration %s\n", conf);
    if ((lctx = OSSL_LIB_CTX_new()) == NULL || (plain = OSSL_LIB_CTX_new()) == NULL)
        goto done;
    if (!OSSL_LIB_CTX_load_config(lctx, conf)) {
        printf("  FAILED to load: OpenSSL says:\n");
        print_errors("    ");
        printf("first problem: the configuration file does not load (path, syntax, or a "
               "provider that fails to activate)\n");
        goto done;
    }
    OSSL_PROVIDER_do_all(lctx, find_p11tls, &f);
    if (f.prov == NULL) {
        printf("first problem: the configuration loads no p11tls provider (a [provider_sect] "
               "entry pointing at a section with 'module = .../p11tls.so' and "
               "'activate = 1')\n");
        goto done;
    }
    printf("  provider: %s\n", f.name);
    print_members(&f, 1);
    if (strstr(f.name, "NOT USABLE") != NULL) {
        printf("first problem: %s\n", f.name + strlen("p11tls: NOT USABLE: "));
        goto done;
    }
    ERR_clear_error();
    if (key != NULL) {
        printf("key %s\n", key);
        if ((pkey = load_key(lctx, key)) == NULL) {
            print_errors("    ");
            printf("first problem: the key does not load (--key; nginx: ssl_certificate_key): "
                   "no such object in the token, or the file is not a key file\n");
            goto done;
        }
        printf("  %s key, %d bits, %s\n", EVP_PKEY_get0_type_name(pkey), EVP_PKEY_get_bits(pkey),
               EVP_PKEY_get0_provider(pkey) == f.prov ? "in the token (p11tls)"
                                                      : "NOT in the token: a software key");
    }
    if (certf != NULL) {
        BIO *b = BIO_new_file(certf, "r");
        printf("certificate %s\n", certf);
        cert = b != NULL ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
        BIO_free(b);
        if (cert == NULL) {
            print_errors("    ");
            printf("first problem: the certificate does not load (--cert; nginx: "
                   "ssl_certificate)\n");
            goto done;
        }
        if (EVP_PKEY_eq(X509_get0_pubkey(cert), pkey) != 1) {
            ERR_clear_error();
            printf("first problem: the certificate does not belong to the key (its public key "
                   "differs): --cert / ssl_certificate or --key / ssl_certificate_key\n");
            goto done;
        }
        printf("  matches the key\n");
    }
    if (cert == NULL) {
        printf("(%s: no handshakes)\n", key == NULL ? "no --key and --cert" : "no --cert");
        rc = 0;
        goto done;
    }
    keylog_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    sctx = SSL_CTX_new_ex(lctx, NULL, TLS_server_method());
    cctx = SSL_CTX_new_ex(plain, NULL, TLS_client_method());
    if (sctx == NULL || cctx == NULL || !SSL_CTX_use_certificate(sctx, cert) ||
        !SSL_CTX_use_PrivateKey(sctx, pkey) ||
        !SSL_CTX_set_cipher_list(sctx, "AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256")) {
        print_errors("    ");
        printf("first problem: the server context does not take the key and certificate\n");
        goto done;
    }
    SSL_CTX_set_keylog_callback(sctx, keylog_cb);
    SSL_CTX_set_keylog_callback(cctx, keylog_cb);
    printf("handshakes (in memory: the server on this configuration, a plain client)\n");
    rc = 0;
    for (size_t i = 0; i < sizeof(protos) / sizeof(protos[0]); i++) {
        int r = run_proto(&protos[i], sctx, cctx, f.name);
        if (r == 1 && rc == 0)
            rc = 1;
        if (r == 3)
            host = 1;
    }
    if (strncmp(f.name, "p11tls: pool of ", 16) == 0) {
        printf("after the handshakes\n");
        print_members(&f, 0);
    }
    if (rc == 1)
        printf("first problem: a handshake failed (the errors above); the status line says "
               "which protocols and groups p11tls runs\n");
    else if (host)
        rc = 3;
done:
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    X509_free(cert);
    EVP_PKEY_free(pkey);
    OSSL_LIB_CTX_free(plain);
    OSSL_LIB_CTX_free(lctx);
    ERR_clear_error();
    printf("result: %s\n", rc == 0 ? "ok" : rc == 3 ? "works, with secrets on the host" : "FAILED");
    return rc;
}
