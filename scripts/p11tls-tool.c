/* p11tls-tool - a small command for users and tests of p11tls. It uses the
 * token layer (pkcs11/p11.h) to generate the RSA key that p11tls serves TLS
 * with (keygen), to create the token's long-lived handle key (provision), to wrap
 * a PKCS#11 key URI in a PEM file that OpenSSL can be given as a key file
 * (pem-uri), and to show what a token can do (info).
 * It never prints a PIN. Exit codes: 0 success, 1 failure, 2 usage error. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/crypto.h>
#include "p11.h"
#include "tool.h"

#define PROG "p11tls-tool"
#define EXIT_USAGE 2
#define PEM_LABEL "P11TLS KEY URI"

static void usage(FILE *f)
{
    fprintf(f, "usage:\n"
               "  " PROG " keygen --module M [--init-args A] --token-uri URI --pin-file F\n"
               "         --label L --id HEX [--bits 2048] [--if-missing | --force]\n"
               "      Generates an RSA key pair as token objects: a private key that is\n"
               "      sensitive and not extractable (sign, decrypt, unwrap) and its public\n"
               "      key (verify, encrypt, wrap), both with label L and id HEX.\n"
               "      Fails if a private key with that id or label exists, unless\n"
               "      --if-missing (or --force) is given: then it leaves it and exits 0.\n"
               "  " PROG " provision --module M [--init-args A] --token-uri URI --pin-file F\n"
               "         [--strategy auto|native|hmac]\n"
               "         [--key-backup FILE --passphrase-file P [--new]]\n"
               "      Creates the token's handle-wrapping key (an AES-256 token object that\n"
               "      p11tls needs and never creates by itself) if it has none. Run it once\n"
               "      per token, as the user that owns the token's storage; exits 0 if the\n"
               "      key is there afterwards. --strategy: as the openssl.cnf option.\n"
               "      With --key-backup: the key comes from FILE (encrypted under the\n"
               "      passphrase in P), or with --new is made here and written to FILE\n"
               "      (0600, never overwritten) first: tokens provisioned from one backup\n"
               "      resolve each other's handles (tickets, session IDs). Prints the\n"
               "      key's fingerprint (public) to compare tokens.\n"
               "  " PROG " import-key --module M [--init-args A] --token-uri URI --pin-file F\n"
               "         --key-file PEM [--passphrase-file P] --label L --id HEX [--if-missing]\n"
               "      Puts the RSA key in PEM into the token (sensitive, not extractable),\n"
               "      with its public key, as label L and id HEX: one server key in every\n"
               "      member of a pool. PEM is encrypted under the passphrase in P (or\n"
               "      readable by its owner only). Prints the modulus's fingerprint.\n"
               "  " PROG " pem-uri --uri URI --out FILE\n"
               "      Writes URI into FILE as a PEM block \"" PEM_LABEL "\" (no PIN allowed).\n"
               "  " PROG " info --module M [--init-args A] --token-uri URI [--pin-file F]\n"
               "      Prints the token's label, p11tls's assurance level and master-secret\n"
               "      strategy on it (TLS 1.2, then TLS 1.3), what keeps it below `sealed`,\n"
               "      and whether its handle key is provisioned (with its fingerprint).\n"
               "  " PROG " info --conf FILE\n"
               "      Loads FILE as OpenSSL will and prints p11tls's status: for a pool of\n"
               "      tokens, each member's state (in use, lost, below min-assurance).\n"
               "  " PROG " check --conf FILE [--key URI|FILE --cert PEM]\n"
               "      Loads FILE as OpenSSL will (the provider, the token, the PIN), prints\n"
               "      p11tls's status; with --key and --cert loads the key, matches it with\n"
               "      the certificate and runs one handshake per protocol in memory (TLS 1.2\n"
               "      RSA key exchange and ECDHE-RSA, TLS 1.3 on X25519 and P-256), saying\n"
               "      for each where its secrets lived; else the first thing that is wrong\n"
               "      and the option to change. Exit: 0 ok, 1 a check failed, 2 usage, 3\n"
               "      handshakes work but some secrets are computed on the host.\n"
               "  " PROG " --help\n"
               "M is a PKCS#11 module path or p11-kit module name; A its C_Initialize\n"
               "reserved string (NSS softoken); errors come with OpenSSL's error queue.\n");
}

void tool_fail_report(const char *what)
{
    fprintf(stderr, PROG ": %s\n", what);
    ERR_print_errors_fp(stderr);
}

/* ------------------------------------------------------------ options */

enum {
    O_MODULE = 1000,
    O_INIT_ARGS,
    O_TOKEN_URI,
    O_PIN_FILE,
    O_LABEL,
    O_ID,
    O_BITS,
    O_IF_MISSING,
    O_URI,
    O_OUT,
    O_STRATEGY,
    O_KEY_BACKUP,
    O_PASSPHRASE_FILE,
    O_NEW,
    O_KEY_FILE,
    O_CONF,
    O_HELP
};

static const struct option long_opts[] = {
    {"module", required_argument, NULL, O_MODULE},
    {"init-args", required_argument, NULL, O_INIT_ARGS},
    {"token-uri", required_argument, NULL, O_TOKEN_URI},
    {"pin-file", required_argument, NULL, O_PIN_FILE},
    {"label", required_argument, NULL, O_LABEL},
    {"id", required_argument, NULL, O_ID},
    {"bits", required_argument, NULL, O_BITS},
    {"if-missing", no_argument, NULL, O_IF_MISSING},
    {"force", no_argument, NULL, O_IF_MISSING},
    {"uri", required_argument, NULL, O_URI},
    {"out", required_argument, NULL, O_OUT},
    {"strategy", required_argument, NULL, O_STRATEGY},
    {"key-backup", required_argument, NULL, O_KEY_BACKUP},
    {"passphrase-file", required_argument, NULL, O_PASSPHRASE_FILE},
    {"new", no_argument, NULL, O_NEW},
    {"key-file", required_argument, NULL, O_KEY_FILE},
    {"conf", required_argument, NULL, O_CONF},
    {"help", no_argument, NULL, O_HELP},
    {NULL, 0, NULL, 0}};

/* Returns 0 on success, EXIT_USAGE on a usage error, -1 when --help was printed. */
int tool_parse_opts(int argc, char **argv, struct opts *o)
{
    int c;
    char *end;

    memset(o, 0, sizeof(*o));
    o->bits = 2048;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", long_opts, NULL)) != -1) {
        switch (c) {
        case O_MODULE:
            o->module = optarg;
            break;
        case O_INIT_ARGS:
            o->init_args = optarg;
            break;
        case O_TOKEN_URI:
            o->token_uri = optarg;
            break;
        case O_PIN_FILE:
            o->pin_file = optarg;
            break;
        case O_LABEL:
            o->label = optarg;
            break;
        case O_ID:
            o->id_hex = optarg;
            break;
        case O_BITS:
            errno = 0;
            o->bits = strtoul(optarg, &end, 10);
            if (errno != 0 || *end != '\0' || o->bits < 1024 || o->bits > 16384 ||
                o->bits % 8 != 0) {
                fprintf(stderr, PROG ": --bits must be a multiple of 8 in [1024, 16384]\n");
                return EXIT_USAGE;
            }
            break;
        case O_IF_MISSING:
            o->if_missing = 1;
            break;
        case O_URI:
            o->uri = optarg;
            break;
        case O_OUT:
            o->out = optarg;
            break;
        case O_STRATEGY:
            o->strategy = optarg;
            if (strcmp(optarg, "auto") != 0 && strcmp(optarg, "native") != 0 &&
                strcmp(optarg, "hmac") != 0) {
                fprintf(stderr, PROG ": --strategy must be auto, native or hmac\n");
                return EXIT_USAGE;
            }
            break;
        case O_KEY_BACKUP:
            o->key_backup = optarg;
            break;
        case O_PASSPHRASE_FILE:
            o->passphrase_file = optarg;
            break;
        case O_NEW:
            o->new_backup = 1;
            break;
        case O_KEY_FILE:
            o->key_file = optarg;
            break;
        case O_CONF:
            o->conf = optarg;
            break;
        case 'h':
        case O_HELP:
            usage(stdout);
            return -1;
        default:
            return EXIT_USAGE;
        }
    }
    if (optind != argc) {
        fprintf(stderr, PROG ": unexpected argument '%s'\n", argv[optind]);
        return EXIT_USAGE;
    }
    return 0;
}

int tool_require(const char *value, const char *name)
{
    if (value == NULL || *value == '\0') {
        fprintf(stderr, PROG ": %s is required (see --help)\n", name);
        return 0;
    }
    return 1;
}

/* "01", "0x01", "01:a2" -> bytes. Returns the length, 0 on a bad string. */
static size_t parse_hex(const char *s, unsigned char *out, size_t max)
{
    size_t n = 0;
    int hi = -1;

    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
        s += 2;
    for (; *s != '\0'; s++) {
        int v;
        if (*s == ':' && hi < 0)
            continue;
        if (!isxdigit((unsigned char)*s))
            return 0;
        v = isdigit((unsigned char)*s) ? *s - '0' : tolower((unsigned char)*s) - 'a' + 10;
        if (hi < 0) {
            hi = v;
        } else {
            if (n == max)
                return 0;
            out[n++] = (unsigned char)(hi << 4 | v);
            hi = -1;
        }
    }
    return hi < 0 ? n : 0;
}

/* -------------------------------------------------------------- token */
p11_token *tool_open_token(const struct opts *o, char *pin_source, size_t len)
{
    p11_token_cfg cfg;
    p11_token *t;

    memset(&cfg, 0, sizeof(cfg));
    cfg.module = o->module;
    cfg.init_args = (o->init_args != NULL && *o->init_args != '\0') ? o->init_args : NULL;
    cfg.token_uri = o->token_uri;
    if (o->strategy != NULL && strcmp(o->strategy, "native") == 0)
        cfg.force_ms = P11_MS_NATIVE;
    else if (o->strategy != NULL && strcmp(o->strategy, "hmac") == 0)
        cfg.force_ms = P11_MS_HMAC;
    if (o->pin_file != NULL) {
        snprintf(pin_source, len, "file:%s", o->pin_file);
        cfg.pin_source = pin_source;
    }
    t = p11_token_open(&cfg);
    if (t == NULL)
        tool_fail_report("cannot open the token (module, token URI or PIN)");
    return t;
}

/* Counts the objects of a class matching one attribute: 0, 1 (some) or -1 (error). */
int tool_object_exists(p11_session *s, CK_OBJECT_CLASS cls, CK_ATTRIBUTE_TYPE type,
                       const void *value, size_t len, CK_RV *last)
{
    CK_ATTRIBUTE tmpl[2] = {{CKA_CLASS, &cls, sizeof(cls)}, {type, (void *)value, len}};
    CK_OBJECT_HANDLE h;
    CK_ULONG n = 0;
    CK_RV rv;

    rv = P11_CALL(s->fl, C_FindObjectsInit, s->h, tmpl, 2);
    if (rv != CKR_OK) {
        *last = rv;
        p11_err_ckr("C_FindObjectsInit", rv, "looking for an existing key");
        return -1;
    }
    rv = P11_CALL(s->fl, C_FindObjects, s->h, &h, 1, &n);
    (void)P11_CALL(s->fl, C_FindObjectsFinal, s->h);
    if (rv != CKR_OK) {
        *last = rv;
        p11_err_ckr("C_FindObjects", rv, "looking for an existing key");
        return -1;
    }
    return n > 0 ? 1 : 0;
}

void tool_hex(const unsigned char *b, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    size_t i;
    for (i = 0; i < n; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 15];
    }
    out[2 * n] = '\0';
}

static int cmd_keygen(int argc, char **argv)
{
    struct opts o;
    unsigned char id[128];
    char id_str[2 * sizeof(id) + 1], pin_source[4096 + 8];
    size_t id_len;
    int r, rc = 1;
    p11_token *t = NULL;
    p11_session s;
    CK_RV rv = CKR_OK;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_OBJECT_CLASS priv_class = CKO_PRIVATE_KEY, pub_class = CKO_PUBLIC_KEY;
    CK_KEY_TYPE rsa = CKK_RSA;
    CK_ULONG bits;
    CK_BYTE exponent[] = {0x01, 0x00, 0x01};
    CK_MECHANISM mech = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
    CK_OBJECT_HANDLE hpub = CK_INVALID_HANDLE, hpriv = CK_INVALID_HANDLE;

    r = tool_parse_opts(argc, argv, &o);
    if (r != 0)
        return r < 0 ? 0 : r;
    if (!tool_require(o.module, "--module") || !tool_require(o.token_uri, "--token-uri") ||
        !tool_require(o.pin_file, "--pin-file") || !tool_require(o.label, "--label") ||
        !tool_require(o.id_hex, "--id"))
        return EXIT_USAGE;
    id_len = parse_hex(o.id_hex, id, sizeof(id));
    if (id_len == 0) {
        fprintf(stderr, PROG ": --id must be 1 to %zu bytes of hex (e.g. 01)\n", sizeof(id));
        return EXIT_USAGE;
    }
    tool_hex(id, id_len, id_str);
    bits = o.bits;

    t = tool_open_token(&o, pin_source, sizeof(pin_source));
    if (t == NULL)
        return 1;
    if (!p11_session_get(t, &s)) {
        tool_fail_report("cannot get a logged-in session on the token");
        p11_token_free(t);
        return 1;
    }

    r = tool_object_exists(&s, CKO_PRIVATE_KEY, CKA_ID, id, id_len, &rv);
    if (r == 0)
        r = tool_object_exists(&s, CKO_PRIVATE_KEY, CKA_LABEL, o.label, strlen(o.label), &rv);
    if (r < 0) {
        tool_fail_report("cannot search the token for an existing key");
        goto done;
    }
    if (r > 0) {
        if (o.if_missing) {
            printf("a private key with id %s or label '%s' already exists in token '%s': "
                   "left as it is\n",
                   id_str, o.label, p11_token_label(t));
            rc = 0;
        } else {
            fprintf(stderr,
                    PROG ": a private key with id %s or label '%s' already exists in token "
                         "'%s' (use --if-missing to accept it)\n",
                    id_str, o.label, p11_token_label(t));
        }
        goto done;
    }

    {
        CK_ATTRIBUTE pub[] = {
            {CKA_CLASS, &pub_class, sizeof(pub_class)},
            {CKA_KEY_TYPE, &rsa, sizeof(rsa)},
            {CKA_TOKEN, &yes, sizeof(yes)},
            {CKA_PRIVATE, &no, sizeof(no)},
            {CKA_VERIFY, &yes, sizeof(yes)},
            {CKA_ENCRYPT, &yes, sizeof(yes)},
            {CKA_WRAP, &yes, sizeof(yes)},
            {CKA_LABEL, (void *)o.label, strlen(o.label)},
            {CKA_ID, id, id_len},
            {CKA_PUBLIC_EXPONENT, exponent, sizeof(exponent)},
            {CKA_MODULUS_BITS, &bits, sizeof(bits)},
        };
        CK_ATTRIBUTE priv[] = {
            {CKA_CLASS, &priv_class, sizeof(priv_class)},
            {CKA_KEY_TYPE, &rsa, sizeof(rsa)},
            {CKA_TOKEN, &yes, sizeof(yes)},
            {CKA_PRIVATE, &yes, sizeof(yes)},
            {CKA_SENSITIVE, &yes, sizeof(yes)},
            {CKA_EXTRACTABLE, &no, sizeof(no)},
            {CKA_SIGN, &yes, sizeof(yes)},
            {CKA_DECRYPT, &yes, sizeof(yes)},
            {CKA_UNWRAP, &yes, sizeof(yes)},
            {CKA_LABEL, (void *)o.label, strlen(o.label)},
            {CKA_ID, id, id_len},
        };
        rv = P11_CALL(s.fl, C_GenerateKeyPair, s.h, &mech, pub, sizeof(pub) / sizeof(pub[0]), priv,
                      sizeof(priv) / sizeof(priv[0]), &hpub, &hpriv);
    }
    if (rv != CKR_OK) {
        p11_err_ckr("C_GenerateKeyPair", rv, "RSA-%lu token key pair, label '%s'",
                    (unsigned long)bits, o.label);
        tool_fail_report("key generation failed");
        goto done;
    }
    printf("generated RSA-%lu key pair label '%s' id %s in token '%s'\n", (unsigned long)bits,
           o.label, id_str, p11_token_label(t));
    rc = 0;
done:
    p11_session_put(&s, rv);
    p11_token_free(t);
    return rc;
}

/* ------------------------------------------------------------ pem-uri */
static int cmd_pem_uri(int argc, char **argv)
{
    struct opts o;
    char err[256] = "";
    p11_uri *parsed = NULL;
    BIO *bio = NULL;
    char *tmp = NULL;
    size_t tlen;
    int fd = -1, r, rc = 1;

    r = tool_parse_opts(argc, argv, &o);
    if (r != 0)
        return r < 0 ? 0 : r;
    if (!tool_require(o.uri, "--uri") || !tool_require(o.out, "--out"))
        return EXIT_USAGE;
    if (strncasecmp(o.uri, "pkcs11:", 7) != 0) {
        fprintf(stderr, PROG ": --uri must be a pkcs11: URI\n");
        return EXIT_USAGE;
    }
    if (strcasestr(o.uri, "pin-value") != NULL) {
        fprintf(stderr, PROG ": the URI carries a pin-value; a key file must not hold a PIN "
                             "(give the PIN with pin-source or the provider's configuration)\n");
        return 1;
    }
    if (!p11_uri_parse(o.uri, &parsed, err, sizeof(err))) {
        fprintf(stderr, PROG ": invalid PKCS#11 URI: %s\n", err);
        ERR_print_errors_fp(stderr);
        return 1;
    }
    r = parsed->pin_value != NULL;
    p11_uri_free(parsed);
    if (r) {
        fprintf(stderr, PROG ": the URI carries a pin-value; a key file must not hold a PIN\n");
        return 1;
    }

    /* Written next to the target and renamed: readers never see half a file. */
    tlen = strlen(o.out) + 16;
    tmp = malloc(tlen);
    if (tmp == NULL)
        return 1;
    snprintf(tmp, tlen, "%s.XXXXXX", o.out);
    fd = mkstemp(tmp);
    if (fd < 0) {
        fprintf(stderr, PROG ": cannot create a file next to '%s': %s\n", o.out, strerror(errno));
        free(tmp);
        return 1;
    }
    if (fchmod(fd, 0644) != 0)
        goto io_error;
    bio = BIO_new_fd(fd, BIO_CLOSE);
    if (bio == NULL)
        goto io_error;
    fd = -1;
    if (PEM_write_bio(bio, PEM_LABEL, "", (const unsigned char *)o.uri, (long)strlen(o.uri)) <= 0 ||
        BIO_flush(bio) <= 0)
        goto io_error;
    BIO_free(bio);
    bio = NULL;
    if (rename(tmp, o.out) != 0)
        goto io_error;
    rc = 0;
    goto out;
io_error:
    fprintf(stderr, PROG ": cannot write '%s': %s\n", o.out, strerror(errno));
    ERR_print_errors_fp(stderr);
    unlink(tmp);
out:
    if (fd >= 0)
        close(fd);
    BIO_free(bio);
    free(tmp);
    return rc;
}

static int cmd_provision(int argc, char **argv)
{
    struct opts o;
    char pin_source[4096 + 8];
    p11_token *t;
    int r, created = 0;

    r = tool_parse_opts(argc, argv, &o);
    if (r != 0)
        return r < 0 ? 0 : r;
    if (!tool_require(o.module, "--module") || !tool_require(o.token_uri, "--token-uri") ||
        !tool_require(o.pin_file, "--pin-file"))
        return EXIT_USAGE;
    if ((o.key_backup != NULL) != (o.passphrase_file != NULL) ||
        (o.new_backup && o.key_backup == NULL)) {
        fprintf(stderr, PROG ": provision: --key-backup and --passphrase-file go together "
                             "(--new with them)\n");
        return EXIT_USAGE;
    }
    t = tool_open_token(&o, pin_source, sizeof(pin_source));
    if (t == NULL)
        return 1;
    if (o.key_backup != NULL) {
        /* the handle key from (or into a new) backup: the same key in several tokens */
        unsigned char value[32];
        int have = o.new_backup ? tool_backup_new(o.key_backup, o.passphrase_file, value)
                                : tool_backup_read(o.key_backup, o.passphrase_file, value);
        int done = have && p11_tls_provision_value(t, value, &created);
        OPENSSL_cleanse(value, sizeof(value));
        if (!done) {
            if (have && o.new_backup)
                unlink(o.key_backup); /* a backup of a key no token holds */
            if (have)
                tool_fail_report("cannot provision the token from the backup");
            p11_token_free(t);
            return 1;
        }
    } else if (!p11_tls_provision(t, &created)) {
        tool_fail_report("cannot provision the token");
        p11_token_free(t);
        return 1;
    }
    {
        unsigned char fp[16];
        char hexfp[33] = "(unknown)";
        if (p11_tls_handle_key_fingerprint(t, fp))
            tool_hex(fp, sizeof(fp), hexfp);
        ERR_clear_error();
        printf("token '%s': handle key '%s' %s%s; fingerprint %s\n", p11_token_label(t),
               p11_tls_handle_key_label(t), created ? "created" : "already present (left as it is)",
               o.key_backup == NULL ? ""
               : o.new_backup       ? ", backup written"
                                    : ", from the backup",
               hexfp);
    }
    p11_token_free(t);
    return 0;
}

static int cmd_import_key(int argc, char **argv)
{
    struct opts o;
    unsigned char id[128];
    size_t id_len;
    char pin_source[4096 + 8];
    p11_token *t;
    int r;

    r = tool_parse_opts(argc, argv, &o);
    if (r != 0)
        return r < 0 ? 0 : r;
    if (!tool_require(o.module, "--module") || !tool_require(o.token_uri, "--token-uri") ||
        !tool_require(o.pin_file, "--pin-file") || !tool_require(o.key_file, "--key-file") ||
        !tool_require(o.label, "--label") || !tool_require(o.id_hex, "--id"))
        return EXIT_USAGE;
    if ((id_len = parse_hex(o.id_hex, id, sizeof(id))) == 0) {
        fprintf(stderr, PROG ": --id must be hex bytes (e.g. 01)\n");
        return EXIT_USAGE;
    }
    t = tool_open_token(&o, pin_source, sizeof(pin_source));
    if (t == NULL)
        return 1;
    r = tool_import_key(t, o.key_file, o.passphrase_file, o.label, id, id_len, o.if_missing);
    p11_token_free(t);
    return r ? 0 : 1;
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : NULL;

    if (cmd == NULL) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    /* Subcommand options start after the subcommand name. */
    if (strcmp(cmd, "keygen") == 0)
        return cmd_keygen(argc - 1, argv + 1);
    if (strcmp(cmd, "pem-uri") == 0)
        return cmd_pem_uri(argc - 1, argv + 1);
    if (strcmp(cmd, "info") == 0)
        return tool_info(argc - 1, argv + 1);
    if (strcmp(cmd, "provision") == 0)
        return cmd_provision(argc - 1, argv + 1);
    if (strcmp(cmd, "import-key") == 0)
        return cmd_import_key(argc - 1, argv + 1);
    if (strcmp(cmd, "check") == 0)
        return tool_check(argc - 1, argv + 1);
    fprintf(stderr, PROG ": unknown command '%s'\n", cmd);
    usage(stderr);
    return EXIT_USAGE;
}
