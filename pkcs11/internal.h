/* internal.h - structures shared by the token layer's files; not for the provider. */
#ifndef P11TLS_INTERNAL_H
#define P11TLS_INTERNAL_H

#include <pthread.h>
#include <sys/types.h>
#include <time.h>
#include "p11.h"

#define P11_EXPORT __attribute__((visibility("default")))

typedef struct p11_registry p11_registry;

#define P11_PENDING_MAX 64
struct p11_pending {
    CK_OBJECT_HANDLE obj;
    CK_SESSION_HANDLE owner;
};

struct p11_token {
    p11_module *mod;
    CK_FUNCTION_LIST_PTR fl;
    p11_uri *uri;
    char *uri_text;
    p11_pin *pin;
    CK_SLOT_ID slot;
    CK_FLAGS token_flags; /* CK_TOKEN_INFO.flags when the slot was last selected */
    char label[33];
    p11_caps caps;

    pthread_mutex_t lock; /* pool and state below */
    pthread_cond_t cond;
    pid_t pid;
    unsigned long gen;   /* module (re)initialisations: sessions of older ones are gone */
    unsigned long epoch; /* object validity: bumped when session objects may be lost */
    unsigned long login_gen;
    int broken;        /* the token went away; re-opened on a later use (session.c) */
    long long back_at; /* when it was last re-opened after a loss (ms, monotonic) */
    int scrub;         /* p11_scrub_heap after secret-bearing calls (P11_SCRUB_*, resolved) */
    int ecdhe_strict;  /* an ECDHE secret never leaves the token, even where a key schedule needs it
                        */
    int force_ms;      /* p11_token_cfg.force_ms, for a probe after start */
    int tokens_seen;   /* the last slot selection saw some token (not necessarily ours) */
    int caps_pending;  /* opened absent (absent_ok): capabilities not probed yet */
    struct p11_loss {
        long long since, next_try; /* when it was lost; no re-open attempt before next_try */
        char cause[160];           /* "C_Sign: CKR_DEVICE_REMOVED" */
        int reported;              /* the cause was raised in this process */
        unsigned long attempts, refused;
    } loss;              /* the event while broken */
    char opened_by[128]; /* p11_whoami() when the token was opened (activation) */
    char **env_names;    /* the environment's variable names then (NULL-terminated) */
    int pin_failed;      /* never retry a wrong PIN */
    int login_refusal;   /* 1: the token said its PIN is locked; 2: one try left (not spent) */
    CK_SESSION_HANDLE *idle;
    unsigned nidle, nopen, max_sessions;

    /* objects the token failed to destroy: tried again on the next session use */
    struct p11_pending pending[P11_PENDING_MAX];
    unsigned npending;

    /* session copies of long-lived token keys live in this session, never lent out:
     * they survive the loss of pool sessions and are re-made after re-initialising */
    pthread_mutex_t owner_lock;
    CK_SESSION_HANDLE owner_h;
    unsigned long owner_gen;

    /* secrets */
    p11_registry *pms, *ms;
    CK_OBJECT_HANDLE wrap_key;
    unsigned long wrap_gen;
    CK_OBJECT_HANDLE fallback; /* stand-in for a pre-master secret that failed its checks */
    unsigned long fallback_gen;
    pthread_mutex_t wrap_lock; /* guards wrap_key and fallback */

    /* TLS 1.3's public constants per hash (tls13.c), owner-session objects */
    struct p11_tls13_const {
        unsigned long gen;                     /* module generation; 0: not made */
        CK_OBJECT_HANDLE zero, early, derived; /* zeros, HKDF-Extract(0, 0), its "derived" */
        unsigned char early_handle[48];
        unsigned char derived_value[48]; /* `transient`: the derived salt's (public) value */
    } t13[2];
    pthread_mutex_t t13_lock;
};

/* log.c */
void p11_scrub_heap(void);

/* objects.c: the template of every per-connection secret, a sensitive session object */
extern const CK_BBOOL p11_yes, p11_no;
extern const CK_OBJECT_CLASS p11_secret_class;
extern const CK_KEY_TYPE p11_generic_type;
#define P11_SECRET_TEMPLATE(extractable)                                                           \
    {CKA_CLASS, (void *)&p11_secret_class, sizeof(p11_secret_class)},                              \
        {CKA_KEY_TYPE, (void *)&p11_generic_type, sizeof(p11_generic_type)},                       \
        {CKA_TOKEN, (void *)&p11_no, sizeof(p11_no)},                                              \
        {CKA_SENSITIVE, (void *)&p11_yes, sizeof(p11_yes)},                                        \
        {CKA_EXTRACTABLE, (void *)(extractable), sizeof(CK_BBOOL)},                                \
        {CKA_SIGN, (void *)&p11_yes, sizeof(p11_yes)},                                             \
    {                                                                                              \
        CKA_DERIVE, (void *)&p11_yes, sizeof(p11_yes)                                              \
    }
#define P11_SECRET_TEMPLATE_N 7

/* handle.c: handles (a secret encrypted under the token's handle key) */
/* The handle key (this module initialisation's session copy); never created here. A
 * key not found raises the cause: at activation, how to provision it; later, as a
 * token loss (P11_RV_HANDLE_KEY_MISSING). */
CK_RV p11_handle_key_find(p11_session *s, CK_OBJECT_HANDLE *out, int at_activation);
CK_RV p11_handle_key(p11_session *s, CK_OBJECT_HANDLE *out);
/* transient: does C_WrapKey(CKM_AES_CBC) give what p11_handle_resolve undoes? */
int p11_handle_probe_cbc(p11_session *s, CK_OBJECT_HANDLE k);
/* Secret object (48 bytes; value: its bytes at `transient`, else NULL) -> handle. */
CK_RV p11_handle_make(p11_session *s, CK_OBJECT_HANDLE obj, const unsigned char *value,
                      unsigned char handle[48]);
/* Handle -> a new secret object made in s. A failure may still leave an object in *obj. */
CK_RV p11_handle_resolve(p11_session *s, const unsigned char handle[48], CK_OBJECT_HANDLE *obj);
/* The same for secrets of n bytes (32 or 48: TLS 1.3's SHA-256 and SHA-384 secrets). */
CK_RV p11_handle_make_n(p11_session *s, CK_OBJECT_HANDLE obj, const unsigned char *value, size_t n,
                        unsigned char *handle);
CK_RV p11_handle_resolve_n(p11_session *s, const unsigned char *handle, size_t n,
                           CK_OBJECT_HANDLE *obj);
/* transient: the secret's bytes (n of them) behind a handle. */
CK_RV p11_handle_open_n(p11_session *s, const unsigned char *handle, size_t n, unsigned char *buf);

/* hmac.c: HMAC by the token, and TLS 1.2's P_hash from it */
CK_MECHANISM_TYPE p11_hmac_mech(p11_prf_hash h);
size_t p11_hash_len(p11_prf_hash h);
CK_RV p11_hmac(p11_session *s, CK_MECHANISM_TYPE m, CK_OBJECT_HANDLE key, const unsigned char *in,
               size_t inlen, unsigned char *out, CK_ULONG olen);
CK_RV p11_p_hash(p11_session *s, p11_prf_hash h, CK_OBJECT_HANDLE key, const unsigned char *ls,
                 size_t lslen, unsigned char *out, size_t outlen);
CK_MECHANISM_TYPE p11_hash_mech(p11_prf_hash h); /* CKM_SHA256 / CKM_SHA384 */
/* HMAC(key, msg) with the message a secret object, via C_DigestKey (hmac.c) */
CK_RV p11_hmac_of_object(p11_session *s, p11_prf_hash h, const unsigned char *key, size_t klen,
                         CK_OBJECT_HANDLE msg, unsigned char *out);

/* ecdh.c: an ECDH secret's object behind handle (n bytes), taken out of the
 * pre-master table (the caller destroys it); 0 if handle is not one. */
int p11_ecdh_take(p11_session *s, const unsigned char *h, size_t n, CK_OBJECT_HANDLE *obj,
                  CK_SESSION_HANDLE *owner);
/* An ECDH secret z of n bytes, zero-padded to 48 in a new object *out (read out of
 * the token: a TLS 1.2 SHA-384 PRF where the token refuses short HMAC keys) */
CK_RV p11_ecdh_lengthen(p11_session *s, CK_OBJECT_HANDLE z, size_t n, CK_OBJECT_HANDLE *out);
/* CKA_EC_POINT (an uncompressed point of a field of flen bytes, DER OCTET STRING
 * wrapped as PKCS#11 says, or bare as some tokens give it): the bare point (1 + 2 flen
 * bytes) into out; 0 if it is neither. */
int p11_ec_point_from_attr(const unsigned char *a, size_t alen, size_t flen, unsigned char *out);
/* At activation: can the token generate a key pair of curve c and derive with it? */
int p11_ecdh_probe(CK_FUNCTION_LIST_PTR fl, CK_SESSION_HANDLE h, p11_token *t, p11_curve c);

/* Where a handle lives (pool.c routes by them): P11_HELD_* of what this process's
 * tables hold for it in t; 0: nothing (a handle any member resolves, or none). */
#define P11_HELD_CACHED 1 /* a cached secret: resolvable elsewhere too, from its handle */
#define P11_HELD_ONLY                                                                              \
    2 /* an object only t has (a pre-master or ECDH secret, a local                                \
         TLS 1.3 secret): the operation must run on t */
int p11_tls_held(p11_token *t, const unsigned char *h, size_t n);   /* tls12.c */
int p11_tls13_held(p11_token *t, const unsigned char *h, size_t n); /* tls13.c */
int p11_ecdh_held(p11_token *t, const unsigned char *h, size_t n);  /* ecdh.c */
/* session.c: 1 while t is lost in this process (not re-opened yet); its cause and
 * when (ms, monotonic) into the arguments (may be NULL). */
int p11_token_lost(p11_token *t, char *cause, size_t len, long long *since_ms);
long long p11_now_ms(void);
/* session.c: a token opened without its token present (absent_ok): lost from the start */
void p11_token_mark_absent(p11_token *t, const char *cause);
CK_FUNCTION_LIST_PTR p11_token_functions(const p11_token *t); /* token.c */
p11_token *p11_eckey_token(const p11_eckey *k);               /* ecdh.c */

/* caps.c */
void p11_caps_probe(CK_FUNCTION_LIST_PTR fl, CK_SLOT_ID slot, CK_SESSION_HANDLE h, int force_ms,
                    p11_caps *c);

/* token.c: find the token's slot (again) and log in; called with t->lock not held */
int p11_token_select_slot(p11_token *t);
CK_RV p11_token_login(p11_token *t, CK_SESSION_HANDLE h); /* raises nothing */
void p11_token_login_error(p11_token *t, CK_RV rv);
int p11_rv_is_pin_error(CK_RV rv);
/* Why a forked child may fail to re-open the token: its user, the one that opened
 * it, module-like environment variables it lacks (for messages). */
void p11_token_fork_hint(p11_token *t, char *buf, size_t len);

/* objects.c */
CK_RV p11_find_one(p11_session *s, CK_ATTRIBUTE *tmpl, CK_ULONG n, CK_OBJECT_HANDLE *out,
                   CK_ULONG *count);
/* Destroys h through s. A failure (other than "no such object") leaves it on the
 * token's pending list, retried by a later session; the entry is dropped when its
 * owner (the session that created h) is closed, since h ended with it. */
CK_RV p11_destroy(p11_session *s, CK_OBJECT_HANDLE h);
CK_RV p11_destroy_owned(p11_session *s, CK_OBJECT_HANDLE h, CK_SESSION_HANDLE owner);
void p11_destroy_pending(p11_session *s);
CK_RV p11_key_object(p11_key *k, p11_session *s, CK_OBJECT_HANDLE *o);
/* A session copy of token object tok (faster on tokens that re-load token objects
 * at every use); tok itself if the token will not copy it. */
CK_OBJECT_HANDLE p11_session_copy(p11_session *s, CK_OBJECT_HANDLE tok);
/* C_GenerateKey in that same owner session: a session object that lives as long as
 * the token's generation (not per connection). */
CK_RV p11_owner_generate(p11_session *s, CK_MECHANISM *mech, CK_ATTRIBUTE *tmpl, CK_ULONG n,
                         CK_OBJECT_HANDLE *out);
/* C_CreateObject and C_DeriveKey in the owner session, for the same kind of objects. */
CK_RV p11_owner_create(p11_session *s, CK_ATTRIBUTE *tmpl, CK_ULONG n, CK_OBJECT_HANDLE *out);
CK_RV p11_owner_derive(p11_session *s, CK_MECHANISM *mech, CK_OBJECT_HANDLE base,
                       CK_ATTRIBUTE *tmpl, CK_ULONG n, CK_OBJECT_HANDLE *out);

/* registry.c: a bounded, thread-safe map from 48-byte handles to token objects */
typedef struct {
    CK_OBJECT_HANDLE obj[2]; /* pms: {unwrapped, random}; ms: {ms, 0} */
    unsigned flags;          /* pms: 1 = unwrapped secret is good; ms: P11_REG_SHARED */
    unsigned client_version, alt_version;
    CK_SESSION_HANDLE owner; /* set by p11_registry_get: the session that made obj[] */
} p11_reg_value;
#define P11_REG_SHARED 2u /* obj[0] is not the entry's own: never destroyed with it */
#define P11_REG_ECDH 4u   /* pms: obj[0] is an ECDH shared secret (ecdh.c) */
#define P11_REG_LOCAL 8u  /* ms: a TLS 1.3 secret whose handle only this cache resolves */
/* own_sessions: objects are made in the registry's own sessions (generations,
 * p11_registry_make_begin), never destroyed one by one (the master-secret cache). */
p11_registry *p11_registry_new(unsigned max_entries, unsigned lifetime, int own_sessions);
void p11_registry_free(p11_registry *r);
/* Inserts (takes ownership of the objects). Evicted objects of the current epoch are
 * destroyed through s. */
int p11_registry_put(p11_registry *r, p11_session *s, const unsigned char key[48],
                     const p11_reg_value *v);
/* Finds a live entry of this epoch. take=1 (not with own sessions) removes it and
 * hands the caller its objects (*ref = NULL). take=0 pins it: the objects stay valid until
 * p11_registry_release(r, s, *ref), even if the entry is evicted meanwhile. */
int p11_registry_get(p11_registry *r, const unsigned char key[48], unsigned long epoch, int take,
                     p11_reg_value *out, void **ref);
void p11_registry_release(p11_registry *r, p11_session *s, void *ref);
/* 1 if a live entry of this epoch has key (no pin); _flags: its flags, else -1. */
int p11_registry_has(p11_registry *r, const unsigned char key[48], unsigned long epoch);
int p11_registry_flags(p11_registry *r, const unsigned char key[48], unsigned long epoch);
unsigned long p11_registry_count(p11_registry *r);
/* A session was lost (and closed): its objects are gone; forget their entries. */
void p11_registry_forget_session(p11_registry *r, CK_SESSION_HANDLE h);
/* Objects the registry keeps in the token (module initialisation tokgen). */
unsigned long p11_registry_objects(p11_registry *r, unsigned long tokgen);

/* Making objects that the registry keeps (own sessions): make_begin hands out m->s,
 * a session of the open generation (opened, and the oldest retired, when needed),
 * for the calls that make them, and holds the maker lock until make_end; with rv
 * and the number of objects made. Each object made is then either kept
 * (put_made) or left to end with its generation (made_drop); either way no
 * C_DestroyObject. Without own sessions m->s is s and the object is the caller's
 * to destroy. */
typedef struct {
    p11_session s;
    int gen;
    int locked, held;
} p11_maker;
CK_RV p11_registry_make_begin(p11_registry *r, p11_session *s, p11_maker *m);
void p11_registry_make_end(p11_registry *r, p11_maker *m, CK_RV rv, unsigned made);
int p11_registry_put_made(p11_registry *r, p11_maker *m, const unsigned char key[48],
                          const p11_reg_value *v);
void p11_registry_made_drop(p11_registry *r, p11_maker *m);
/* Unloading: closes the generations' sessions (of module initialisation tokgen). */
void p11_registry_close_all(p11_registry *r, CK_FUNCTION_LIST_PTR fl, unsigned long tokgen);

/* tls13_const.c: TLS 1.3's public constants (t->t13[h]). const_early: made if needed,
 * with t->t13_lock held; const_match: the constants whose early-secret handle is
 * handle, else NULL; const_salt: the "derived" salt's object after prev when prev is
 * that handle (else CK_INVALID_HANDLE), at `transient` its value into value. */
CK_RV p11_tls13_const_early(p11_session *s, p11_prf_hash h, struct p11_tls13_const **out);
struct p11_tls13_const *p11_tls13_const_match(p11_session *s, p11_prf_hash h,
                                              const unsigned char *handle);
CK_RV p11_tls13_const_salt(p11_session *s, p11_prf_hash h, const unsigned char *prev,
                           const unsigned char *dinfo, size_t dilen, CK_OBJECT_HANDLE *salt,
                           unsigned char *value);

#endif
