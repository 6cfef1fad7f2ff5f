/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "cancel.h"

volatile sig_atomic_t qt_cancel_requested;
