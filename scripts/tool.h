/* tool.h - what the parts of p11tls-tool share. */
#ifndef P11TLS_TOOL_H
#define P11TLS_TOOL_H

#define TOOL_EXIT_USAGE 2

#include "p11.h"

/* p11tls-tool.c: the options of every command, and the helpers the commands share */
struct opts {
    const char *module, *init_args, *token_uri, *pin_file, *label, *id_hex, *uri, *out;
    const char *strategy, *key_backup, *passphrase_file, *key_file, *conf;
    unsigned long bits;
    int if_missing, new_backup;
};
/* 0 parsed; TOOL_EXIT_USAGE; -1 after --help */
int tool_parse_opts(int argc, char **argv, struct opts *o);
int tool_require(const char *value, const char *name); /* 0 (said) when value is missing */
p11_token *tool_open_token(const struct opts *o, char *pin_source, size_t len);
void tool_hex(const unsigned char *b, size_t n, char *out); /* 2n + 1 bytes */
void tool_fail_report(const char *what);                    /* what, then OpenSSL's errors */
/* Objects of class cls with one attribute equal to value: 1 some, 0 none, -1 error (raised,
 * its CKR_ in *last). */
int tool_object_exists(p11_session *s, CK_OBJECT_CLASS cls, CK_ATTRIBUTE_TYPE type,
                       const void *value, size_t len, CK_RV *last);

/* `p11tls-tool info` (tool_info.c) */
int tool_info(int argc, char **argv);

/* `p11tls-tool check` (tool_check.c) */
int tool_check(int argc, char **argv);

/* The handle key's backup file (tool_backup.c): a new key value into a new file, or
 * the value from a file; 0 with the cause on stderr. */
int tool_backup_new(const char *path, const char *passfile, unsigned char value[32]);
int tool_backup_read(const char *path, const char *passfile, unsigned char value[32]);

/* `p11tls-tool import-key` (tool_import.c): an RSA key from a PEM file (encrypted
 * under the passphrase in passfile, or owner-only) into t as label and id (if_missing:
 * a private key with both already there is left as it is); 0 with the cause on stderr. */
int tool_import_key(p11_token *t, const char *key_file, const char *passfile, const char *label,
                    const unsigned char *id, size_t idlen, int if_missing);

#endif
