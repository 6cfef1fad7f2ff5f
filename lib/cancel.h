/* SPDX-License-Identifier: GPL-2.0-or-later */
/* A worker's cancel: set by its SIGTERM handler (Cancel(), or the daemon's death); long steps
 * poll it and stop at the next safe point, with -ECANCELED. */
#pragma once

#include <signal.h>

extern volatile sig_atomic_t qt_cancel_requested;
