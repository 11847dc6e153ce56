/* tool.h - what the parts of p11tls-tool share. */
#ifndef P11TLS_TOOL_H
#define P11TLS_TOOL_H

#define TOOL_EXIT_USAGE 2

/* `p11tls-tool check` (tool_check.c) */
int tool_check(int argc, char **argv);

#endif
