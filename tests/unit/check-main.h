/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The main() every Check test program shares: run one suite, exit non-zero on any failure. */
#pragma once

#include <check.h>

#define CHECK_MAIN(make_suite)                                                                     \
        int main(void)                                                                             \
        {                                                                                          \
                SRunner *sr = srunner_create(make_suite());                                        \
                srunner_run_all(sr, CK_NORMAL);                                                    \
                int failed = srunner_ntests_failed(sr);                                            \
                srunner_free(sr);                                                                  \
                return failed == 0 ? 0 : 1;                                                        \
        }
