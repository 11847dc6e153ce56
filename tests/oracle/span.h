/* span.h - reading what p11span.so recorded (tests/oracle/p11span.c): which PKCS#11
 * calls a server made and when, to split a wait the client measured into the part
 * spent inside the token and the rest (rsa_oracle -S). Times in microseconds,
 * CLOCK_MONOTONIC (the client's clock too: one machine). */
#ifndef P11TLS_TEST_SPAN_H
#define P11TLS_TEST_SPAN_H
#include <stdint.h>

#define SPAN_MAXCALLS 64 /* calls kept per window */

typedef struct span_set span_set;

/* Reads the file; NULL (with a message on stderr) if it cannot. */
span_set *span_load(const char *path);
void span_free(span_set *s);
/* The end of the last call in the file: a window that ends later may miss calls
 * that were not written yet. */
double span_covered_until(const span_set *s);
/* The calls that overlap [a, b]: the time inside them (each clipped to the window),
 * a hash of their functions in order, and, for the first `max`, the function and
 * the clipped duration. Returns how many calls overlap. */
int span_window(const span_set *s, double a, double b, double *inside, uint64_t *sig, int *fn,
                double *dur, int max);
/* "C_UnwrapKey", ...: the name of a function index p11span.c writes. */
const char *span_fn_name(int fn);

#endif
