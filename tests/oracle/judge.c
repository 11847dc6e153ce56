/* judge.c - rsa_oracle's verdicts: per case, the medians of the server times (with -S,
 * split into the part inside the token and the rest, from p11span.so's record), the
 * noise and the limit, and the table with what passed (oracle.h; the criterion is in
 * rsa_oracle.c's header). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "oracle.h"

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double quantile(const double *s, int n, double q)
{
    double pos;
    int i;
    if (n == 0)
        return NAN;
    pos = q * (n - 1);
    i = (int)pos;
    if (i + 1 >= n)
        return s[n - 1];
    return s[i] + (pos - i) * (s[i + 1] - s[i]);
}

/* Standard error of the median of sorted s[0..n-1]: half its distribution-free 68%
 * confidence interval (ranks n/2 -+ sqrt(n)/2). */
static double med_se(const double *s, int n)
{
    double h = sqrt((double)n) / 2;
    int lo = (int)floor(n / 2.0 - h), hi = (int)ceil(n / 2.0 + h);
    if (n < 4)
        return NAN;
    if (lo < 0)
        lo = 0;
    if (hi > n - 1)
        hi = n - 1;
    return (s[hi] - s[lo]) / 2;
}

tcase *find_case(const char *name)
{
    for (int i = 0; i < NCASES; i++)
        if (strcmp(cases[i].name, name) == 0)
            return &cases[i];
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* -S: for every try of the last run whose wait the span file covers, the part of its
 * server time spent inside the token (the calls that overlap the wait, clipped to it)
 * and the rest; which calls ran (most tries of a case make the same ones: the mode);
 * each call's time. Before judge() sorts the times (us and w0 are still in step).
 * Returns 0 if the file cannot be read or covers too few tries. */
static int judge_span(void)
{
    span_set *S = span_load(opt_span);
    double until;
    int ok = 1;
    if (S == NULL)
        return 0;
    until = span_covered_until(S);
    for (int i = 0; i < NCASES; i++) {
        tcase *c = &cases[i];
        uint64_t *sorted;
        int fn[SPAN_MAXCALLS], best = 0;
        c->ncov = 0;
        c->mode_n = 0;
        if (c->want == 0 || c->nus == 0)
            continue;
        free(c->host);
        free(c->tok);
        free(c->sig);
        free(c->pos);
        c->host = calloc((size_t)c->nus, sizeof(double));
        c->tok = calloc((size_t)c->nus, sizeof(double));
        c->sig = calloc((size_t)c->nus, sizeof(uint64_t));
        c->pos = calloc((size_t)c->nus * SPAN_MAXCALLS, sizeof(double));
        sorted = calloc((size_t)c->nus, sizeof(uint64_t));
        if (c->host == NULL || c->tok == NULL || c->sig == NULL || c->pos == NULL || sorted == NULL)
            die("out of memory");
        for (int t = 0; t < c->nus; t++) {
            double in;
            if (c->w0[t] + c->us[t] > until)
                continue; /* its calls may not be written yet */
            (void)span_window(S, c->w0[t], c->w0[t] + c->us[t], &in, &c->sig[c->ncov], fn,
                              &c->pos[(size_t)c->ncov * SPAN_MAXCALLS], SPAN_MAXCALLS);
            c->tok[c->ncov] = in;
            c->host[c->ncov] = c->us[t] - in;
            sorted[c->ncov] = c->sig[c->ncov];
            c->ncov++;
        }
        qsort(sorted, (size_t)c->ncov, sizeof(uint64_t), cmp_u64);
        for (int t = 0; t < c->ncov;) {
            int u = t;
            while (u < c->ncov && sorted[u] == sorted[t])
                u++;
            if (u - t > best) {
                best = u - t;
                c->mode = sorted[t];
            }
            t = u;
        }
        c->mode_n = best;
        free(sorted);
        /* the calls of one try with the mode */
        for (int t = 0; t < c->nus; t++) {
            double in;
            uint64_t sg;
            double dur[SPAN_MAXCALLS];
            int n;
            if (c->w0[t] + c->us[t] > until)
                continue;
            n = span_window(S, c->w0[t], c->w0[t] + c->us[t], &in, &sg, c->mode_fn, dur,
                            SPAN_MAXCALLS);
            if (sg == c->mode) {
                c->mode_calls = n < SPAN_MAXCALLS ? n : SPAN_MAXCALLS;
                break;
            }
        }
        if (c->ncov < c->nus / 2) {
            printf("# %s: the span file covers %d of %d tries\n", c->name, c->ncov, c->nus);
            ok = 0;
        }
    }
    span_free(S);
    return ok;
}

/* Median over the tries with the case's mode of call p's time. */
static double pos_median(tcase *c, int p)
{
    double *v = calloc((size_t)c->ncov + 1, sizeof(double)), m;
    int n = 0;
    if (v == NULL)
        die("out of memory");
    for (int t = 0; t < c->ncov; t++)
        if (c->sig[t] == c->mode)
            v[n++] = c->pos[(size_t)t * SPAN_MAXCALLS + p];
    qsort(v, (size_t)n, sizeof(double), cmp_d);
    m = quantile(v, n, 0.5);
    free(v);
    return m;
}

/* One line for case c against valid: the token's part and the calls it differs in
 * most (the same calls in both, by position). */
static void print_token_part(tcase *c, tcase *valid)
{
    int top[3] = {-1, -1, -1};
    double d[SPAN_MAXCALLS];
    printf("#   %-17s token %+7.1f us", c->name, c->tmed - valid->tmed);
    if (c->mode != valid->mode) {
        printf(": other calls than valid's\n");
        return;
    }
    for (int p = 0; p < c->mode_calls; p++) {
        d[p] = pos_median(c, p) - pos_median(valid, p);
        for (int k2 = 0; k2 < 3; k2++) {
            if (top[k2] < 0 || fabs(d[p]) > fabs(d[top[k2]])) {
                for (int m = 2; m > k2; m--)
                    top[m] = top[m - 1];
                top[k2] = p;
                break;
            }
        }
    }
    printf(", most in:");
    for (int k2 = 0; k2 < 3 && top[k2] >= 0; k2++)
        printf(" %s #%d %+.1f", span_fn_name(c->mode_fn[top[k2]]), top[k2] + 1, d[top[k2]]);
    printf("\n");
}

/* The table of the last run_phase; sets ffail (sticky) and tfail (this run),
 * counting timing failures in tfail_count. With -S the judged time is the server's
 * time outside the token (p11tls, libssl, the server), and every judged case must
 * make the same PKCS#11 calls as valid. */
void judge(const char *title)
{
    tcase *valid = find_case("valid"), *valid2 = find_case("valid2");
    double noise = NAN, floor_us = NAN, limit = NAN, se = NAN, vdiff = NAN;
    int timing = !opt_notiming && valid->want > 0 && valid2->want > 0;
    int span = opt_span != NULL && timing;

    if (span && !judge_span()) {
        printf("# FAIL: the server's PKCS#11 calls could not be read (-S %s)\n", opt_span);
        valid->ffail = 1;
        span = 0;
    }
    for (int i = 0; i < NCASES; i++) {
        tcase *c = &cases[i];
        qsort(c->us, (size_t)c->nus, sizeof(double), cmp_d);
        c->med = quantile(c->us, c->nus, 0.5);
        c->p10 = quantile(c->us, c->nus, 0.1);
        c->p90 = quantile(c->us, c->nus, 0.9);
        if (span && c->ncov > 0) {
            qsort(c->host, (size_t)c->ncov, sizeof(double), cmp_d);
            qsort(c->tok, (size_t)c->ncov, sizeof(double), cmp_d);
            c->hmed = quantile(c->host, c->ncov, 0.5);
            c->tmed = quantile(c->tok, c->ncov, 0.5);
        }
    }
    if (timing) {
        /* noise: the larger of the observed |median(valid) - median(valid2)| and the
         * standard error of a difference of two medians, sqrt(se1^2 + se2^2), se of a
         * median from its distribution-free 68% interval (ranks n/2 -+ sqrt(n)/2); of
         * the judged times (with -S: outside the token) */
        double s1, s2;
        if (span) {
            s1 = med_se(valid->host, valid->ncov);
            s2 = med_se(valid2->host, valid2->ncov);
            vdiff = valid->hmed - valid2->hmed;
        } else {
            s1 = med_se(valid->us, valid->nus);
            s2 = med_se(valid2->us, valid2->nus);
            vdiff = valid->med - valid2->med;
        }
        se = sqrt(s1 * s1 + s2 * s2);
        noise = fmax(fabs(vdiff), se);
        floor_us = fmax(opt_floor_pct / 100.0 * valid->med, opt_floor_us);
        limit = fmax(3 * noise, floor_us);
    }
    printf("%-17s %6s %-20s %9s %9s %9s %10s %8s %8s  %s\n", "case", "tries", "response",
           "median_us", "p10_us", "p90_us", "d_valid_us", "d_token", "d_rest", "verdict");
    for (int i = 0; i < NCASES; i++) {
        tcase *c = &cases[i];
        char resp[64], verdict[128], dt[16] = "-", dr[16] = "-";
        double d = c->med - valid->med;
        int judged_span = span && c->ncov > 0 && valid->ncov > 0;
        c->tfail = 0;
        if (c->want == 0)
            continue;
        if (judged_span) {
            snprintf(dt, sizeof(dt), "%+.1f", c->tmed - valid->tmed);
            snprintf(dr, sizeof(dr), "%+.1f", c->hmed - valid->hmed);
        }
        if (c->good == c->tries && c->tries == c->want)
            snprintf(resp, sizeof(resp), "%s", resp_name(c->expect));
        else
            snprintf(resp, sizeof(resp), "%d/%d %s", c->good, c->tries, resp_name(c->expect));
        if (c->good != c->tries || c->tries != c->want || c->warm_bad > 0) {
            snprintf(verdict, sizeof(verdict), "FAIL: %d other%s (first: %s)%s",
                     c->counts_other + c->warm_bad, c->warm_bad ? " (incl. warm-up)" : "",
                     c->first_bad >= 0 ? resp_name(c->first_bad) : "-",
                     c->tries != c->want ? ", gave up" : "");
            c->ffail = 1;
        } else if (c->timed && timing && c != valid && judged_span && c->mode != valid->mode) {
            /* a padding-dependent PKCS#11 call: an oracle whatever the times say */
            snprintf(verdict, sizeof(verdict), "FAIL: other PKCS#11 calls than valid's");
            c->ffail = 1;
        } else if (c->timed && timing && c != valid) {
            double dj = judged_span ? c->hmed - valid->hmed : d;
            if (fabs(dj) <= limit) {
                snprintf(verdict, sizeof(verdict), "ok");
                c->tsign = 0;
            } else {
                int sign = dj > 0 ? 1 : -1;
                snprintf(verdict, sizeof(verdict), "over the limit: |%.1f| > %.1f us%s", dj, limit,
                         judged_span ? " (outside the token)" : "");
                c->tfail = 1;
                /* consecutive runs over the limit on the same side */
                c->tfail_count = c->tsign == sign ? c->tfail_count + 1 : 1;
                c->tsign = sign;
            }
        } else {
            snprintf(verdict, sizeof(verdict), "ok%s",
                     c->timed || !timing ? "" : " (time not judged)");
        }
        printf("%-17s %6d %-20s %9.1f %9.1f %9.1f %+10.1f %8s %8s  %s\n", c->name, c->tries, resp,
               c->med, c->p10, c->p90, d, dt, dr, verdict);
    }
    if (!timing) {
        printf("# %stiming: not judged (%s)\n", title,
               opt_n < 200 ? "fewer than 200 tries a case" : "-T, or valid/valid2 not run");
    } else {
        if (span) {
            printf("# %sthe server's time split by its PKCS#11 calls (p11span.so): d_token = "
                   "the difference of medians of the time inside the token, d_rest = of the "
                   "time outside it (p11tls, libssl, the server: judged); %d of %d valid tries "
                   "covered, %d of them with the same %d calls\n",
                   title, valid->ncov, valid->nus, valid->mode_n, valid->mode_calls);
            for (int i = 0; i < NCASES; i++)
                if (cases[i].want > 0 && cases[i].timed && &cases[i] != valid && cases[i].ncov > 0)
                    print_token_part(&cases[i], valid);
        }
        printf("# %stiming: noise = max(|median(valid) - median(valid2)| = %.1f us, standard "
               "error of a difference of medians = %.1f us) = %.1f us; floor = max(%.1f%% of "
               "median(valid), %.1f us) = %.1f us; limit = max(3 x noise, floor) = %.1f us%s\n",
               title, fabs(vdiff), se, noise, opt_floor_pct, opt_floor_us, floor_us, limit,
               span ? " (noise of the times outside the token)" : "");
    }
    fflush(stdout);
}
