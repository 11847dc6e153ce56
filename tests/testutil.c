/* testutil.c - helpers shared by the CUnit suites (filled in as suites need them). */
#include "testutil.h"
