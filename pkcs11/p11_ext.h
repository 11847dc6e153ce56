/* p11_ext.h - PKCS#11 definitions that Debian 12's p11-kit pkcs11.h (v2.40) lacks:
 * TLS 1.2 mechanism parameters (PKCS#11 v2.40 section 2.x, 3.0), SP 800-108 KDF
 * parameters (PKCS#11 3.0) and the NSS vendor mechanisms, written from the
 * specifications. Nothing here is copied from another project's headers. */
#ifndef P11TLS_P11_EXT_H
#define P11TLS_P11_EXT_H

#include <p11-kit/pkcs11.h>

/* PKCS#11 2.40: CK_SSL3_RANDOM_DATA and the TLS 1.2 parameters. */
typedef struct {
    CK_BYTE_PTR pClientRandom;
    CK_ULONG ulClientRandomLen;
    CK_BYTE_PTR pServerRandom;
    CK_ULONG ulServerRandomLen;
} P11_SSL3_RANDOM_DATA;

typedef struct {
    P11_SSL3_RANDOM_DATA RandomInfo;
    CK_VERSION_PTR pVersion;
    CK_MECHANISM_TYPE prfHashMechanism;
} P11_TLS12_MASTER_KEY_DERIVE_PARAMS;

typedef struct {
    CK_MECHANISM_TYPE prfHashMechanism;
    CK_ULONG ulMacLength;
    CK_ULONG ulServerOrClient;
} P11_TLS_MAC_PARAMS;

/* NSS softoken vendor mechanisms (NSS's pkcs11n.h numbering). */
#define P11_CKM_NSS_BASE (CKM_VENDOR_DEFINED | 0x4E534350UL)
#define P11_CKM_NSS_TLS_PRF_GENERAL_SHA256 (P11_CKM_NSS_BASE + 21)
#define P11_CKM_NSS_TLS_EXTENDED_MASTER_KEY_DERIVE (P11_CKM_NSS_BASE + 25)
#define P11_CKM_NSS_TLS_EXTENDED_MASTER_KEY_DERIVE_DH (P11_CKM_NSS_BASE + 26)

typedef struct {
    CK_MECHANISM_TYPE prfHashMechanism;
    CK_BYTE_PTR pSessionHash;
    CK_ULONG ulSessionHashLen;
    CK_VERSION_PTR pVersion;
} P11_NSS_TLS_EXTENDED_MASTER_KEY_DERIVE_PARAMS;

/* PKCS#11 3.2 standard EMS mechanisms (same parameter layout as NSS's). */
#ifndef CKM_TLS12_EXTENDED_MASTER_KEY_DERIVE
#define P11_CKM_TLS12_EXTENDED_MASTER_KEY_DERIVE 0x000003E6UL
#define P11_CKM_TLS12_EXTENDED_MASTER_KEY_DERIVE_DH 0x000003E7UL
#endif

/* PKCS#11 3.0 SP 800-108 KDFs. */
#define P11_CKM_SP800_108_COUNTER_KDF 0x000003ACUL
#define P11_CKM_SP800_108_FEEDBACK_KDF 0x000003ADUL
#define P11_CKM_SP800_108_DOUBLE_PIPELINE_KDF 0x000003AEUL

#define P11_SP800_108_ITERATION_VARIABLE 0x00000001UL
#define P11_SP800_108_OPTIONAL_COUNTER 0x00000002UL
#define P11_SP800_108_DKM_LENGTH 0x00000003UL
#define P11_SP800_108_BYTE_ARRAY 0x00000004UL

typedef struct {
    CK_ULONG type;
    CK_VOID_PTR pValue;
    CK_ULONG ulValueLen;
} P11_PRF_DATA_PARAM;

typedef struct {
    CK_MECHANISM_TYPE prfType;
    CK_ULONG ulNumberOfDataParams;
    P11_PRF_DATA_PARAM *pDataParams;
    CK_ULONG ulAdditionalDerivedKeys;
    void *pAdditionalDerivedKeys;
} P11_SP800_108_KDF_PARAMS;

/* PKCS#11 3.0 HKDF (not in Debian 12's p11-kit pkcs11.h, which is 2.40) */
#define P11_CKM_HKDF_DERIVE 0x0000402AUL
#define P11_CKM_HKDF_DATA 0x0000402BUL
#define P11_CKF_HKDF_SALT_NULL 0x00000001UL
#define P11_CKF_HKDF_SALT_DATA 0x00000002UL
#define P11_CKF_HKDF_SALT_KEY 0x00000004UL
typedef struct {
    CK_BBOOL bExtract;
    CK_BBOOL bExpand;
    CK_MECHANISM_TYPE prfHashMechanism;
    CK_ULONG ulSaltType;
    CK_BYTE_PTR pSalt;
    CK_ULONG ulSaltLen;
    CK_OBJECT_HANDLE hSaltKey;
    CK_BYTE_PTR pInfo;
    CK_ULONG ulInfoLen;
} P11_HKDF_PARAMS;

#endif
