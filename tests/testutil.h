/* testutil.h - helpers shared by the CUnit suites. */
#ifndef P11TLS_TESTUTIL_H
#define P11TLS_TESTUTIL_H
#include <CUnit/Basic.h>
#include "p11.h"
#endif
