/* tool_info.c - `p11tls-tool info`: what p11tls finds in a token (its level, strategies,
 * ECDHE curves, what keeps it below `sealed`, the handle key and its fingerprint, the
 * mechanisms), or with --conf the provider's status as `check` prints it (for a pool of
 * tokens, each member's state). */
#include <stdio.h>
#include <string.h>
#include <openssl/err.h>
#include "tool.h"

/* --------------------------------------------------------------- info */
int tool_info(int argc, char **argv)
{
    struct opts o;
    char pin_source[4096 + 8];
    const p11_caps *c;
    p11_token *t;
    int r;

    r = tool_parse_opts(argc, argv, &o);
    if (r != 0)
        return r < 0 ? 0 : r;
    if (o.conf != NULL) { /* the provider's status, as check prints it */
        char *args[] = {"check", "--conf", (char *)o.conf, NULL};
        if (o.module != NULL || o.token_uri != NULL) {
            fprintf(stderr, "p11tls-tool: info: --conf or --module/--token-uri, not both\n");
            return TOOL_EXIT_USAGE;
        }
        return tool_check(3, args);
    }
    if (!tool_require(o.module, "--module") || !tool_require(o.token_uri, "--token-uri"))
        return TOOL_EXIT_USAGE;
    t = tool_open_token(&o, pin_source, sizeof(pin_source));
    if (t == NULL)
        return 1;
    c = p11_token_caps(t);
    printf("token: %s\n", p11_token_label(t));
    printf("level: %s\n", p11_level_name(c->level));
    printf("ms-strategy: %s\n", p11_ms_strategy_name(c->ms));
    printf("tls13: %s (%s)\n", p11_level_name(c->level13), p11_tls13_strategy_name(c->tls13));
    {
        int any = 0;
        printf("ecdhe:");
        for (int i = 0; i < P11_CURVE_N; i++)
            if (c->ecdh[i]) {
                printf(" %s", p11_curve_name((p11_curve)i));
                any = 1;
            }
        printf(any ? " (key shares in the token; other groups in software)\n" : " software (%s)\n",
               c->ecdhe_why);
    }
    printf("missing: %s\n", c->missing[0] != '\0' ? c->missing : "(nothing)");
    if (c->level != P11_LEVEL_NONE) {
        int present = p11_tls_handle_key_present(t);
        unsigned char fp[16];
        char hexfp[48] = "";
        if (present > 0 && p11_tls_handle_key_fingerprint(t, fp)) {
            strcpy(hexfp, ", fingerprint ");
            tool_hex(fp, sizeof(fp), hexfp + 14);
        }
        ERR_clear_error();
        printf("handle-key: %s (%s%s)\n", p11_tls_handle_key_label(t),
               present > 0    ? "present"
               : present == 0 ? "missing: run p11tls-tool provision"
                              : "lookup failed",
               hexfp);
    }
    printf("mechanisms:%s%s%s%s%s%s%s%s%s%s%s%s%s%s%s%s%s\n", c->rsa_pkcs ? " rsa-pkcs" : "",
           c->rsa_pkcs_unwrap ? " rsa-pkcs-unwrap" : "", c->rsa_oaep ? " rsa-oaep" : "",
           c->rsa_pss ? " rsa-pss" : "", c->rsa_x509 ? " rsa-x509" : "",
           c->generic_keygen ? " generic-keygen" : "", c->aes_keygen ? " aes-keygen" : "",
           c->hmac_sha256 ? " hmac-sha256" : "", c->hmac_sha384 ? " hmac-sha384" : "",
           c->tls12_master ? " tls12-master" : "", c->tls12_master_dh ? " tls12-master-dh" : "",
           c->nss_ems ? " nss-ems" : "", c->std_ems ? " tls12-ems" : "",
           c->nss_prf_sha256 ? " nss-prf-sha256" : "", c->sp800_dp ? " sp800-108-dp" : "",
           (c->aes_ecb_wrap && c->aes_ecb_unwrap) ? " aes-ecb-wrap" : "",
           (c->aes_ecb_encrypt && c->aes_ecb_decrypt) ? " aes-ecb" : "");
    p11_token_free(t);
    return 0;
}
