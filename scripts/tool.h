/* tool.h - what the parts of p11tls-tool share. */
#ifndef P11TLS_TOOL_H
#define P11TLS_TOOL_H

#define TOOL_EXIT_USAGE 2

/* `p11tls-tool check` (tool_check.c) */
int tool_check(int argc, char **argv);

/* The handle key's backup file (tool_backup.c): a new key value into a new file, or
 * the value from a file; 0 with the cause on stderr. */
int tool_backup_new(const char *path, const char *passfile, unsigned char value[32]);
int tool_backup_read(const char *path, const char *passfile, unsigned char value[32]);

#endif
