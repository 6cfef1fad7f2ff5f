/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Phase 2, attach: how a worker makes an image's disk readable and trimmable by the host kernel.
 * kernel: qemu-nbd -c /dev/nbdN, partitions as the kernel's own block devices (hypervisor hosts
 * with the nbd module). fuse: qemu-nbd behind a FUSE file, loop devices at the partitions'
 * offsets (anywhere with FUSE and loop devices, nbd-fuse.h). auto: kernel where /dev/nbd* exists
 * or the nbd module loads, fuse otherwise.
 */
#pragma once

enum qt_attach_backend {
        QT_ATTACH_AUTO,
        QT_ATTACH_KERNEL,
        QT_ATTACH_FUSE,
};

/* "auto", "kernel", "fuse". */
const char *qt_attach_backend_name(enum qt_attach_backend b);
/* -EINVAL for anything else. */
int qt_attach_backend_from_name(const char *name, enum qt_attach_backend *ret);
