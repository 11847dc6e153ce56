/* oracle.h - what the parts of rsa_oracle, the no-oracle test client, share:
 *   rsa_oracle.c  the cases, the options, the runs (its header says what the test does);
 *   client.c      the wire: one TLS 1.2 connection a try, and what the server answered;
 *   messages.c    what a try sends: the RSA blocks of each case, the client's crypto;
 *   judge.c       the statistics and the verdicts. */
#ifndef P11TLS_TEST_ORACLE_H
#define P11TLS_TEST_ORACLE_H
#include <stddef.h>
#include <stdint.h>
#include "span.h"

#define MAXK 1024 /* largest modulus handled, in bytes */

/* Responses: 0-255 a fatal alert's description; the rest below. */
enum {
    R_FINISHED = 1000, /* ChangeCipherSpec + a Finished that verifies */
    R_BADFIN,          /* ChangeCipherSpec + something else */
    R_CLOSED,          /* the connection closed (or was reset) without an alert */
    R_TIMEOUT,
    R_EARLY,         /* the handshake failed before the ClientKeyExchange was sent */
    R_EARLY_TIMEOUT, /* ... because the server did not answer in time */
    R_NO_CONNECT,    /* the TCP connection was refused */
    R_PROTO,         /* a response this client cannot parse */
    R_WARNING,       /* a warning-level alert */
};

enum kind {
    K_OK,
    K_VALID,
    K_FIRST,
    K_BT,
    K_NOSEP,
    K_SHORT,
    K_LONG_ALL,
    K_LONG_TAIL,
    K_VERSION,
    K_ONE_SHORT,
    K_ONE_SHORT_OK,
    K_CT_LONG,
    K_CT_N,
    K_CT_FF,
};

typedef struct {
    const char *name;
    enum kind kind;
    int arg;      /* message length for the short/long cases */
    int expect;   /* the expected response */
    int timed;    /* judged by the timing criterion */
    int cke_only; /* publicly invalid: the ClientKeyExchange alone */
    /* results */
    int want; /* tries asked for in this run (0: not run) */
    int tries, good, timeouts, first_bad, warm_bad;
    int ffail;        /* a try gave another response (in any run) */
    int tfail;        /* over the timing limit in the last run */
    int tfail_count;  /* consecutive runs over the timing limit on the same side */
    int tsign;        /* the side of the last run's difference, if over the limit */
    int resp_bad;     /* the first unexpected response seen, -1 if none */
    int counts_other; /* tries with another response */
    double *us;       /* server times of the tries with the expected response */
    double *w0;       /* ... and when each of those waits began */
    int nus;
    double med, p10, p90;
    /* -S: the tries whose calls the span file covers (see judge_span) */
    int ncov;
    double *host;  /* server time outside the token */
    double *tok;   /* server time inside the token */
    uint64_t *sig; /* which calls, in order */
    double *pos;   /* per call, its time: ncov x SPAN_MAXCALLS */
    double hmed, tmed;
    uint64_t mode;              /* the most frequent sig ... */
    int mode_n;                 /* ... how many tries had it ... */
    int mode_calls;             /* ... how many calls it has ... */
    int mode_fn[SPAN_MAXCALLS]; /* ... and which */
} tcase;

#define NCASES 16
extern tcase cases[NCASES];

/* options (rsa_oracle.c) */
extern int opt_port, opt_n, opt_ems, opt_notiming, opt_timeout;
extern double opt_floor_pct, opt_floor_us, opt_delay_us;
extern const char *opt_delay_case, *opt_span;

/* client.c */
extern long n_conns, n_ems; /* connections that reached ServerHelloDone; with EMS */
void die(const char *what);
double now_us(void);
const char *resp_name(int r);
/* One try of case c: the response; the server time and when its wait began. */
int one_try(tcase *c, int try_no, double *us, double *start);

/* messages.c */
void msg_init(void); /* the library context (default provider only) and algorithms */
void msg_free(void);
void rnd(unsigned char *b, size_t n);
void prf_calc(const unsigned char *secret, size_t slen, const char *label, const unsigned char *s1,
              size_t l1, const unsigned char *s2, size_t l2, unsigned char *out, size_t olen);
void hash(const unsigned char *d, size_t n, unsigned char out[32]);
int gcm_crypt(int enc, const unsigned char key[16], const unsigned char salt[4],
              const unsigned char explicit_nonce[8], const unsigned char aad[13],
              const unsigned char *in, int inlen, unsigned char *out, unsigned char tag[16]);
/* The server's certificate (DER) as it came: its key is taken if it is new. 0 if
 * it is too long to keep. */
int msg_server_cert(const unsigned char *der, size_t len);
/* The ciphertext and the bait of one try of case c. */
void build(const tcase *c, int try_no, unsigned char *ct, size_t *ctlen, unsigned char *bait,
           size_t *baitlen);

/* judge.c */
tcase *find_case(const char *name);
void judge(const char *title);

#endif
