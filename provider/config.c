/* config.c - p11tls's openssl.cnf section: its keys (and the pkcs11-provider names
 * accepted for the same settings) read through the core, and every key of the
 * section checked against that list, so that a misspelt or foreign option is an
 * error naming it instead of a setting silently ignored.
 *
 * OpenSSL 3.0's core hands a provider only the keys it asks for, so the check reads
 * the configuration file itself (the one the core read: OPENSSL_CONF or the default)
 * and finds the provider's section there. It is only trusted when that section holds
 * the same `token` value the core gave: a program that loaded another file (its own
 * name, OPENSSL_INIT_set_config_filename) is not second-guessed. Values are never
 * quoted in messages (a misplaced PIN must not reach a log). */
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <openssl/conf.h>
#include <openssl/crypto.h>
#include "provider.h"

/* p11tls's own keys, then what the core itself reads from the section. */
static const char *const own_keys[] = {"pkcs11-module",
                                       "pkcs11-init-args",
                                       "token",
                                       "pin-source",
                                       "min-assurance",
                                       "debug",
                                       "max-sessions",
                                       "handle-lifetime",
                                       "handle-cache-size",
                                       "strategy",
                                       "scrub-heap",
                                       "ecdhe",
                                       "probe-interval",
                                       NULL};
/* The keys of a pool member's section (memberN = SECTION). */
static const char *const member_keys[] = {"token", "pkcs11-module", "pkcs11-init-args",
                                          "pin-source", NULL};
static const char *const core_keys[] = {"module", "activate", "identity", "soft_load", NULL};

/* pkcs11-provider's names for the same settings (documented aliases). */
static const struct {
    const char *alias, *key;
} aliases[] = {{"pkcs11-module-path", "pkcs11-module"},
               {"pkcs11-module-init-args", "pkcs11-init-args"},
               {"pkcs11-module-token-pin", "pin-source"}};
#define N_ALIASES (sizeof(aliases) / sizeof(aliases[0]))

static int in_list(const char *const *l, const char *k)
{
    for (; *l != NULL; l++)
        if (strcmp(*l, k) == 0)
            return 1;
    return 0;
}

static int is_alias(const char *k)
{
    for (size_t i = 0; i < N_ALIASES; i++)
        if (strcmp(aliases[i].alias, k) == 0)
            return 1;
    return 0;
}

/* "0.token" -> "token", as the core does. */
static const char *skip_dot(const char *name)
{
    const char *p = strchr(name, '.');
    return p != NULL ? p + 1 : name;
}

int p11tls_cfg_read(const OSSL_CORE_HANDLE *handle, OSSL_FUNC_core_get_params_fn *get,
                    p11tls_cfg *c)
{
    char *alias_val[N_ALIASES] = {NULL};
    char **own[N_ALIASES] = {&c->module, &c->init_args, &c->pin_source};
    OSSL_PARAM p[] = {OSSL_PARAM_utf8_ptr("pkcs11-module", &c->module, 0),
                      OSSL_PARAM_utf8_ptr("pkcs11-init-args", &c->init_args, 0),
                      OSSL_PARAM_utf8_ptr("token", &c->token, 0),
                      OSSL_PARAM_utf8_ptr("pin-source", &c->pin_source, 0),
                      OSSL_PARAM_utf8_ptr("min-assurance", &c->min_assurance, 0),
                      OSSL_PARAM_utf8_ptr("debug", &c->debug, 0),
                      OSSL_PARAM_utf8_ptr("max-sessions", &c->max_sessions, 0),
                      OSSL_PARAM_utf8_ptr("handle-lifetime", &c->handle_lifetime, 0),
                      OSSL_PARAM_utf8_ptr("handle-cache-size", &c->handle_cache, 0),
                      OSSL_PARAM_utf8_ptr("strategy", &c->strategy, 0),
                      OSSL_PARAM_utf8_ptr("scrub-heap", &c->scrub_heap, 0),
                      OSSL_PARAM_utf8_ptr("ecdhe", &c->ecdhe, 0),
                      OSSL_PARAM_utf8_ptr("probe-interval", &c->probe_interval, 0),
                      OSSL_PARAM_utf8_ptr(aliases[0].alias, &alias_val[0], 0),
                      OSSL_PARAM_utf8_ptr(aliases[1].alias, &alias_val[1], 0),
                      OSSL_PARAM_utf8_ptr(aliases[2].alias, &alias_val[2], 0),
                      OSSL_PARAM_utf8_ptr(OSSL_PROV_PARAM_CORE_PROV_NAME, &c->prov_name, 0),
                      OSSL_PARAM_END};

    if (!get(handle, p))
        return 0;
    /* pool members: OpenSSL passes a key whose value names a section as that
     * section's keys, "member1.token" and so on */
    for (int i = 0; i < P11_POOL_MAX; i++) {
        char names[4][48];
        OSSL_PARAM mp[5];
        snprintf(names[0], sizeof(names[0]), "member%d.token", i + 1);
        snprintf(names[1], sizeof(names[1]), "member%d.pkcs11-module", i + 1);
        snprintf(names[2], sizeof(names[2]), "member%d.pkcs11-init-args", i + 1);
        snprintf(names[3], sizeof(names[3]), "member%d.pin-source", i + 1);
        mp[0] = OSSL_PARAM_construct_utf8_ptr(names[0], &c->member[i].token, 0);
        mp[1] = OSSL_PARAM_construct_utf8_ptr(names[1], &c->member[i].module, 0);
        mp[2] = OSSL_PARAM_construct_utf8_ptr(names[2], &c->member[i].init_args, 0);
        mp[3] = OSSL_PARAM_construct_utf8_ptr(names[3], &c->member[i].pin_source, 0);
        mp[4] = OSSL_PARAM_construct_end();
        if (!get(handle, mp))
            return 0;
    }
    for (size_t i = 0; i < N_ALIASES; i++) {
        if (alias_val[i] == NULL)
            continue;
        if (*own[i] != NULL) {
            ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_CONFIG_DATA,
                           "p11tls: options '%s' and '%s' (its pkcs11-provider name) are both "
                           "set; keep one",
                           aliases[i].key, aliases[i].alias);
            return 0;
        }
        *own[i] = alias_val[i];
        c->alias_used[i] = 1;
    }
    return 1;
}

const char *p11tls_cfg_pin_option(const p11tls_cfg *c)
{
    return c->alias_used[2] ? aliases[2].alias : "pin-source";
}

/* The section of provider `name` in the loaded file: the providers section's entry
 * for it, by key or by `identity`. NULL if none. */
static const char *find_section(const CONF *conf, const char *name)
{
    const char *init = NCONF_get_string(conf, NULL, "openssl_conf");
    const char *provs;
    STACK_OF(CONF_VALUE) * l;

    ERR_set_mark();
    provs = init != NULL ? NCONF_get_string(conf, init, "providers") : NULL;
    l = provs != NULL ? NCONF_get_section(conf, provs) : NULL;
    ERR_pop_to_mark();
    for (int i = 0; l != NULL && i < sk_CONF_VALUE_num(l); i++) {
        const CONF_VALUE *v = sk_CONF_VALUE_value(l, i);
        STACK_OF(CONF_VALUE) *s = NCONF_get_section(conf, v->value);
        const char *id = skip_dot(v->name);
        for (int j = 0; s != NULL && j < sk_CONF_VALUE_num(s); j++) {
            const CONF_VALUE *e = sk_CONF_VALUE_value(s, j);
            if (strcmp(skip_dot(e->name), "identity") == 0)
                id = e->value;
        }
        if (s != NULL && strcmp(id, name) == 0)
            return v->value;
    }
    return NULL;
}

int p11tls_cfg_check_keys(const p11tls_cfg *c)
{
    char *file = CONF_get1_default_config_file();
    CONF *conf = NULL;
    const char *sect = NULL;
    STACK_OF(CONF_VALUE) *l = NULL;
    const char *tok;
    int ok = 1;

    if (file == NULL || c->prov_name == NULL || (c->token == NULL && c->member[0].token == NULL))
        goto done;
    conf = NCONF_new(NULL);
    ERR_set_mark();
    if (conf == NULL || NCONF_load(conf, file, NULL) <= 0) {
        ERR_pop_to_mark();
        p11_debug("configuration check skipped: cannot read '%s'", file);
        goto done;
    }
    sect = find_section(conf, c->prov_name);
    if (sect != NULL && c->token == NULL) { /* a pool: member1's section */
        const char *m1 = NCONF_get_string(conf, sect, "member1");
        tok = m1 != NULL ? NCONF_get_string(conf, m1, "token") : NULL;
    } else {
        tok = sect != NULL ? NCONF_get_string(conf, sect, "token") : NULL;
    }
    ERR_pop_to_mark();
    if (sect == NULL || tok == NULL ||
        strcmp(tok, c->token != NULL ? c->token : c->member[0].token) != 0) {
        p11_debug("configuration check skipped: '%s' is not the file the provider was "
                  "configured from",
                  file);
        goto done;
    }
    l = NCONF_get_section(conf, sect);
    for (int i = 0; l != NULL && i < sk_CONF_VALUE_num(l); i++) {
        const char *k = skip_dot(sk_CONF_VALUE_value(l, i)->name);
        int mn = 0;
        char mname[16];
        if (in_list(own_keys, k) || in_list(core_keys, k) || is_alias(k))
            continue;
        if (sscanf(k, "member%d", &mn) == 1 && mn >= 1 && mn <= P11_POOL_MAX &&
            snprintf(mname, sizeof(mname), "member%d", mn) > 0 && strcmp(k, mname) == 0) {
            /* a pool member: its section's keys */
            const char *ms = sk_CONF_VALUE_value(l, i)->value;
            STACK_OF(CONF_VALUE) *m = NCONF_get_section(conf, ms);
            if (m == NULL) {
                ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_CONFIG_DATA,
                               "p11tls: option '%s' in section [%s] of %s names no section "
                               "(a pool member is a section with token, pkcs11-module, "
                               "pkcs11-init-args, pin-source; see man p11tls)",
                               k, sect, file);
                ok = 0;
                break;
            }
            for (int j = 0; j < sk_CONF_VALUE_num(m); j++) {
                const char *mk = skip_dot(sk_CONF_VALUE_value(m, j)->name);
                if (in_list(member_keys, mk))
                    continue;
                ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_CONFIG_DATA,
                               "p11tls: unknown option '%s' in section [%s] (pool member '%s') "
                               "of %s (options: token, pkcs11-module, pkcs11-init-args, "
                               "pin-source; see man p11tls)",
                               mk, ms, k, file);
                ok = 0;
                break;
            }
            if (!ok)
                break;
            continue;
        }
        ERR_raise_data(ERR_LIB_PROV, PROV_R_INVALID_CONFIG_DATA,
                       "p11tls: unknown option '%s' in section [%s] of %s%s (options: "
                       "pkcs11-module, pkcs11-init-args, token, pin-source, min-assurance, "
                       "strategy, max-sessions, handle-lifetime, handle-cache-size, "
                       "scrub-heap, ecdhe, probe-interval, member1..member%d, debug; see man "
                       "p11tls)",
                       k, sect, file,
                       strncmp(k, "pkcs11-module-", 14) == 0
                           ? " (a pkcs11-provider option p11tls has no equivalent for)"
                           : "",
                       P11_POOL_MAX);
        ok = 0;
        break;
    }
done:
    NCONF_free(conf);
    OPENSSL_free(file);
    return ok;
}
