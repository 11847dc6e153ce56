/* module.c - loading a PKCS#11 module (by path, or by p11-kit module name: one
 * configured with 'remote:' is p11-kit's RPC client of that server, an instance of
 * its own, so that several p11-kit servers can be used at once),
 * initialising it with OS locking and pReserved init arguments, and
 * re-initialising it after fork or device loss. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/proverr.h>
#include <p11-kit/p11-kit.h>
#include "p11.h"

struct p11_module {
    CK_FUNCTION_LIST_PTR fl;
    void *dl; /* dlopen handle (never closed: see p11_module_free) */
    char *path;
    char *init_args; /* NULL: none */
    int initialized;
    CK_FUNCTION_LIST **kit; /* p11-kit's module list, kept for a 'remote:' module */
};

static CK_RV module_initialize(p11_module *m)
{
    CK_C_INITIALIZE_ARGS args;
    CK_RV rv;

    memset(&args, 0, sizeof(args));
    args.flags = CKF_OS_LOCKING_OK;
    args.pReserved = m->init_args;
    rv = P11_CALL(m->fl, C_Initialize, &args);
    if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED)
        rv = CKR_OK; /* someone else in this process initialised it: fine */
    m->initialized = (rv == CKR_OK);
    return rv;
}

/* A p11-kit module name: find its path and x-init-reserved in p11-kit's config.
 * A module configured with 'remote:' has no file of its own: its function list
 * (p11-kit's RPC client of that server) goes to *remote, and the list that holds
 * it to *kit (kept while the module is in use). */
static int resolve_name(const char *name, char **path, char **init_args, CK_FUNCTION_LIST **remote,
                        CK_FUNCTION_LIST ***kit)
{
    CK_FUNCTION_LIST **mods = p11_kit_modules_load(NULL, P11_KIT_MODULE_UNMANAGED);
    CK_FUNCTION_LIST *mod;
    char *r;

    if (mods == NULL) {
        p11_err(PROV_R_INVALID_CONFIG_DATA,
                "pkcs11-module: p11-kit could not load its module list: %s",
                p11_kit_message() ? p11_kit_message() : "no message");
        return 0;
    }
    mod = p11_kit_module_for_name(mods, name);
    if (mod != NULL) {
        *path = p11_kit_module_get_filename(mod);
        if (*init_args == NULL)
            *init_args = p11_kit_config_option(mod, "x-init-reserved");
        p11_kit_modules_release(mods);
        return *path != NULL;
    }
    p11_kit_modules_release(mods);
    /* p11-kit lists a 'remote:' module only among its managed ones */
    mods = p11_kit_modules_load(NULL, 0);
    mod = mods != NULL ? p11_kit_module_for_name(mods, name) : NULL;
    r = mod != NULL ? p11_kit_config_option(mod, "remote") : NULL;
    if (r == NULL) {
        p11_err(PROV_R_INVALID_CONFIG_DATA,
                "pkcs11-module: no p11-kit module named '%s' (see p11-kit list-modules)", name);
        if (mods != NULL)
            p11_kit_modules_release(mods);
        return 0;
    }
    free(r);
    if (*init_args == NULL)
        *init_args = p11_kit_config_option(mod, "x-init-reserved");
    *path = malloc(strlen(name) + 32);
    if (*path != NULL)
        sprintf(*path, "p11-kit module '%s' (remote)", name);
    *remote = mod;
    *kit = mods; /* kept: it holds mod */
    return *path != NULL;
}

p11_module *p11_module_load(const char *path_or_name, const char *init_args)
{
    p11_module *m;
    char *path = NULL, *args = NULL;
    CK_FUNCTION_LIST *remote = NULL, **kit = NULL;
    CK_RV rv;

    if (path_or_name == NULL || *path_or_name == '\0') {
        p11_err(PROV_R_INVALID_CONFIG_DATA, "pkcs11-module: not configured");
        return NULL;
    }
    if (init_args != NULL && *init_args != '\0')
        args = strdup(init_args);
    if (strchr(path_or_name, '/') != NULL) {
        path = strdup(path_or_name);
    } else if (!resolve_name(path_or_name, &path, &args, &remote, &kit)) {
        free(args);
        return NULL;
    }
    m = calloc(1, sizeof(*m));
    if (m == NULL || path == NULL) {
        free(m);
        free(path);
        free(args);
        return NULL;
    }
    m->path = path;
    m->init_args = args;
    m->kit = kit;
    m->fl = remote;
    /* Loaded directly (any module, p11-kit's own proxy included); p11-kit is only
     * asked to resolve module names. */
    if (m->fl == NULL)
        m->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (m->dl != NULL) {
        CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(m->dl, "C_GetFunctionList");
        CK_RV grv = get != NULL ? get(&m->fl) : CKR_FUNCTION_NOT_SUPPORTED;
        if (grv != CKR_OK)
            m->fl = NULL;
    }
    if (m->fl == NULL) {
        const char *why = dlerror();
        p11_err(PROV_R_INVALID_CONFIG_DATA, "pkcs11-module: cannot load '%s': %s", path,
                m->dl == NULL ? (why ? why : "dlopen failed") : "no usable C_GetFunctionList");
        p11_module_free(m);
        return NULL;
    }
    rv = module_initialize(m);
    if (rv != CKR_OK) {
        p11_err_ckr("C_Initialize", rv, "module '%s'%s", path,
                    m->init_args ? " (check pkcs11-init-args)" : "");
        p11_module_free(m);
        return NULL;
    }
    p11_debug("module %s loaded", path);
    return m;
}

/* Deliberately no C_Finalize and no dlclose here: this runs from OpenSSL's
 * exit-time cleanup, where SoftHSM2 2.6.1 crashes in C_Finalize. Sessions and
 * session objects end with the process. */
void p11_module_free(p11_module *m)
{
    if (m == NULL)
        return;
    free(m->path);
    free(m->init_args);
    free(m);
}

CK_FUNCTION_LIST_PTR p11_module_functions(p11_module *m)
{
    return m->fl;
}

CK_RV p11_module_reinit(p11_module *m)
{
    if (m->initialized)
        (void)P11_CALL(m->fl, C_Finalize, NULL);
    m->initialized = 0;
    return module_initialize(m);
}
