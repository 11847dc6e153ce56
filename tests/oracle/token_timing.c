/* token_timing.c - the token's own part of the no-oracle test: how long the token
 * takes to RSA-decrypt (C_UnwrapKey, CKM_RSA_PKCS, as p11tls does) a ClientKeyExchange
 * whose padding is valid, and one whose padding is not (wrong first byte, wrong block
 * type, no zero separator). A token whose decryption takes longer when it fails leaks
 * padding validity by itself (SoftHSM2 2.6.1 tries to write a syslog line), whatever
 * p11tls does around it. tests/oracle.sh shows these figures next to the token's part
 * measured inside the servers (rsa_oracle -S), which is what the test goes by: in
 * isolation the token's difference comes out smaller than in a server.
 *
 * The calls go straight to the module's function list (no p11tls wrapper), one
 * session, interleaved cases in a new random order each round, a pool of different
 * ciphertexts per case, warm-up rounds not counted; twice: back to back (the token's
 * code hot) and with other work in between (cold, as in a server: SoftHSM2's failure
 * path measured -17 to +2 us against its success path). Output, per phase and case:
 * the median, its standard error (half the distribution-free 68% interval) and the
 * difference of medians against `valid`.
 * Usage (under tests/with-token.sh): token_timing [TRIES] (default 2000; the cold
 * phase a tenth of it, at least 100).
 * Exit status: 0, or 1 if the token misbehaved (a valid block refused, an invalid
 * one accepted where the token reports errors is fine: that is implicit rejection). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include "internal.h"
#include "testutil.h"

#define POOL 32
#define MAXK 512
enum { C_VALID, C_FIRST, C_BT, C_NOSEP, NC };
static const char *names[NC] = {"valid", "wrong_first_byte", "wrong_block_type", "no_separator"};
static const tu_em_defect defect[NC] = {TU_EM_NONE, TU_EM_FIRST_BYTE, TU_EM_BLOCK_TYPE,
                                        TU_EM_NO_SEPARATOR};

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The cold phase: between two timed calls, what a server does between two
 * handshakes, other code and data through the caches (8 MB written and hashed, an EC
 * key made), so that the token's paths run as cold as in a server. */
static void other_work(void)
{
    static unsigned char *buf;
    unsigned char md[32];
    EVP_PKEY *k;
    if (buf == NULL && (buf = malloc(8 << 20)) == NULL)
        return;
    memset(buf, (int)(now_us()) & 0xff, 8 << 20);
    EVP_Q_digest(NULL, "SHA256", NULL, buf, 8 << 20, md, NULL);
    k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    EVP_PKEY_free(k);
}

/* Median and the standard error of a median (ranks n/2 -+ sqrt(n)/2). */
static void stats(double *v, int n, double *med, double *se)
{
    int lo, hi;
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    *med = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    lo = (int)floor(n / 2.0 - sqrt((double)n) / 2);
    hi = (int)ceil(n / 2.0 + sqrt((double)n) / 2);
    lo = lo < 0 ? 0 : lo;
    hi = hi >= n ? n - 1 : hi;
    *se = (v[hi] - v[lo]) / 2;
}

/* n interleaved rounds (after a few warm-up rounds): every case once a round, in a new
 * random order, times in t[case][round]. Returns how many valid blocks were refused. */
static int measure(p11_session *s, CK_OBJECT_HANDLE kobj, size_t k,
                   unsigned char ct[NC][POOL][MAXK], double *t[NC], int n, int cold)
{
    CK_MECHANISM rsa = {CKM_RSA_PKCS, NULL, 0};
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof(cls)},     {CKA_KEY_TYPE, &kt, sizeof(kt)},
                           {CKA_TOKEN, &no, sizeof(no)},       {CKA_SENSITIVE, &yes, sizeof(yes)},
                           {CKA_EXTRACTABLE, &no, sizeof(no)}, {CKA_DERIVE, &yes, sizeof(yes)}};

    int warm = 5, bad = 0;
    for (int round = -warm; round < n; round++) {
        int order[NC] = {0, 1, 2, 3};
        for (int i = NC - 1; i > 0; i--) { /* a new random order each round */
            unsigned char r;
            int j, x;
            RAND_bytes(&r, 1);
            j = r % (i + 1);
            x = order[i], order[i] = order[j], order[j] = x;
        }
        for (int i = 0; i < NC; i++) {
            int c = order[i];
            CK_OBJECT_HANDLE o = CK_INVALID_HANDLE;
            int p = (round + warm) % POOL;
            if (cold)
                other_work();
            double t0 = now_us();
            CK_RV rv = s->fl->C_UnwrapKey(s->h, &rsa, kobj, ct[c][p], k, tmpl,
                                          sizeof(tmpl) / sizeof(tmpl[0]), &o);
            double t1 = now_us();
            if (rv == CKR_OK)
                (void)s->fl->C_DestroyObject(s->h, o);
            if (c == C_VALID && rv != CKR_OK)
                bad++;
            if (round >= 0)
                t[c][round] = t1 - t0;
        }
    }
    return bad;
}

int main(int argc, char **argv)
{
    int tries = argc > 1 ? atoi(argv[1]) : 2000, bad = 0;
    int cold = tries / 10 < 100 ? 100 : tries / 10;
    static unsigned char ct[NC][POOL][MAXK];
    double *t[NC], med[2][NC], se[2][NC];
    EVP_PKEY *pub = tu_cert_pubkey();
    size_t k = (size_t)EVP_PKEY_get_size(pub);
    p11_token *tok = tu_open_token();
    p11_uri *u = tu_key_uri();
    p11_key *key = p11_key_find(tok, u);
    p11_session s;
    CK_OBJECT_HANDLE kobj;
    if (tries < 10 || key == NULL || k > MAXK || !p11_session_get(tok, &s) ||
        p11_key_object(key, &s, &kobj) != CKR_OK) {
        tu_print_errors();
        fprintf(stderr, "token_timing: set-up failed\n");
        return 1;
    }
    for (int c = 0; c < NC; c++) {
        t[c] = calloc((size_t)(tries > cold ? tries : cold), sizeof(double));
        for (int i = 0; i < POOL; i++) {
            unsigned char em[MAXK];
            EVP_PKEY_CTX *e = EVP_PKEY_CTX_new_from_pkey(NULL, pub, "provider=default");
            size_t len = k;
            tu_make_em(em, k, 48, defect[c], NULL);
            if (t[c] == NULL || e == NULL || EVP_PKEY_encrypt_init(e) <= 0 ||
                EVP_PKEY_CTX_set_rsa_padding(e, RSA_NO_PADDING) <= 0 ||
                EVP_PKEY_encrypt(e, ct[c][i], &len, em, k) <= 0 || len != k) {
                fprintf(stderr, "token_timing: encryption failed\n");
                return 1;
            }
            EVP_PKEY_CTX_free(e);
        }
    }
    for (int phase = 0; phase < 2; phase++) {
        int n = phase == 0 ? tries : cold;
        bad += measure(&s, kobj, k, ct, t, n, phase == 1);
        for (int c = 0; c < NC; c++)
            stats(t[c], n, &med[phase][c], &se[phase][c]);
        printf("# the token's C_UnwrapKey (CKM_RSA_PKCS), %s, %d tries a case, interleaved\n",
               phase == 0 ? "back to back (hot)" : "other work in between (cold)", n);
        printf("# %-18s %10s %10s %12s\n", "case", "median_us", "se_us", "d_valid_us");
        for (int c = 0; c < NC; c++)
            printf("# %-18s %10.1f %10.1f %+12.1f\n", names[c], med[phase][c], se[phase][c],
                   med[phase][c] - med[phase][C_VALID]);
    }
    p11_session_put(&s, CKR_OK);
    if (bad)
        printf("# FAIL: the token refused %d valid blocks\n", bad);
    for (int c = 0; c < NC; c++)
        free(t[c]);
    p11_key_free(key);
    p11_uri_free(u);
    p11_token_free(tok);
    EVP_PKEY_free(pub);
    return bad ? 1 : 0;
}
