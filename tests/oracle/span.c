/* span.c - reads p11span.so's records (one "FN START_NS END_NS" line a call) and
 * answers, for a time window, which calls ran in it and for how long (span.h). */
#include "span.h"
#include <stdio.h>
#include <stdlib.h>

typedef struct {
    double a, b; /* us */
    int fn;
} rec;

struct span_set {
    rec *r;
    size_t n;
    double until;
};

/* the order of SPAN_FUNCS in p11span.c */
static const char *const names[] = {"C_UnwrapKey",      "C_GenerateKey",
                                    "C_WrapKey",        "C_GetAttributeValue",
                                    "C_DeriveKey",      "C_DestroyObject",
                                    "C_CreateObject",   "C_CopyObject",
                                    "C_SignInit",       "C_Sign",
                                    "C_EncryptInit",    "C_Encrypt",
                                    "C_EncryptUpdate",  "C_EncryptFinal",
                                    "C_DecryptInit",    "C_Decrypt",
                                    "C_DigestInit",     "C_Digest",
                                    "C_DigestUpdate",   "C_DigestKey",
                                    "C_DigestFinal",    "C_FindObjectsInit",
                                    "C_FindObjects",    "C_FindObjectsFinal",
                                    "C_OpenSession",    "C_CloseSession",
                                    "C_GetSessionInfo", "C_GenerateKeyPair"};

const char *span_fn_name(int fn)
{
    return fn >= 0 && fn < (int)(sizeof(names) / sizeof(names[0])) ? names[fn] : "C_?";
}

static int by_start(const void *x, const void *y)
{
    const rec *p = x, *q = y;
    return p->a < q->a ? -1 : p->a > q->a;
}

span_set *span_load(const char *path)
{
    FILE *f = fopen(path, "r");
    span_set *s = calloc(1, sizeof(*s));
    size_t cap = 0;
    long long a, b;
    int fn;
    if (f == NULL || s == NULL) {
        fprintf(stderr, "rsa_oracle: cannot read %s\n", path);
        if (f != NULL)
            fclose(f);
        free(s);
        return NULL;
    }
    while (fscanf(f, "%d %lld %lld", &fn, &a, &b) == 3) {
        if (s->n == cap) {
            rec *nr = realloc(s->r, (cap = cap ? 2 * cap : 65536) * sizeof(rec));
            if (nr == NULL)
                break;
            s->r = nr;
        }
        s->r[s->n].fn = fn;
        s->r[s->n].a = (double)a / 1e3;
        s->r[s->n].b = (double)b / 1e3;
        if (s->r[s->n].b > s->until)
            s->until = s->r[s->n].b;
        s->n++;
    }
    fclose(f);
    if (s->n > 0)
        qsort(s->r, s->n, sizeof(rec), by_start);
    return s;
}

void span_free(span_set *s)
{
    if (s != NULL)
        free(s->r);
    free(s);
}

double span_covered_until(const span_set *s)
{
    return s->until;
}

int span_window(const span_set *s, double a, double b, double *inside, uint64_t *sig, int *fn,
                double *dur, int max)
{
    size_t lo = 0, hi = s->n;
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    int n = 0;
    /* the first call that starts at or after a - 1 s (no server call is that long) */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (s->r[mid].a < a - 1e6)
            lo = mid + 1;
        else
            hi = mid;
    }
    *inside = 0;
    for (size_t i = lo; i < s->n && s->r[i].a < b; i++) {
        double x = s->r[i].a > a ? s->r[i].a : a, y = s->r[i].b < b ? s->r[i].b : b;
        if (y <= x)
            continue;
        *inside += y - x;
        h = (h ^ (uint64_t)(s->r[i].fn + 1)) * 1099511628211ULL;
        if (n < max) {
            fn[n] = s->r[i].fn;
            dur[n] = y - x;
        }
        n++;
    }
    *sig = h ^ (uint64_t)n;
    return n;
}
