/* SPDX-License-Identifier: GPL-2.0-or-later */
/* What every fuzz target shares: libFuzzer's entry point, and how a broken invariant fails. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Names the invariant, so a crash log says which one broke before the stack says where. */
#define FUZZ_CHECK(cond)                                                                           \
        do {                                                                                       \
                if (!(cond)) {                                                                     \
                        fprintf(stderr, "invariant violated: %s (%s:%d)\n", #cond, __FILE__,       \
                                __LINE__);                                                         \
                        abort();                                                                   \
                }                                                                                  \
        } while (0)
