/* SPDX-License-Identifier: GPL-2.0-or-later */
/* What both attach paths (nbd-fuse.h, nbd-kernel.h) do alike with the qemu-nbd they start: its
 * command line for the image, its start, and its end. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* The image part of a qemu-nbd command line, shared by both paths: "--format F --discard=unmap
 * IMAGE" to write, "--format F --read-only IMAGE" to read; IMAGE is the name qemu is given for
 * it (image.h: qt_image_qemu_name, which also leaves out qemu's lock for a read: qemu-nbd has
 * no --force-share). Writes QT_QEMU_NBD_IMAGE_ARGS_MAX arguments to argv; returns how many. */
#define QT_QEMU_NBD_IMAGE_ARGS_MAX 4
size_t qt_qemu_nbd_image_args(const char *image, const char *format, bool read_only, char *argv[]);

/* Starts qemu-nbd (argv) as the caller's child, dying with it by SIGTERM (on which qemu-nbd
 * disconnects and closes the image cleanly): standard input /dev/null, standard output and error
 * to output_fd (inherited when < 0), and when listen_fd >= 0, that listening socket as fd 3 with
 * LISTEN_PID and LISTEN_FDS (socket activation); no other descriptor. Returns its pid, or a
 * negative errno if it could not be forked. */
pid_t qt_qemu_nbd_spawn(char *const argv[], int listen_fd, int output_fd);

/* Waits up to timeout_ms for qemu-nbd (a child) to exit, in 5 ms polls (it usually exits within
 * milliseconds of its client's disconnect), then kills it. Returns its exit status, 128 + the
 * signal that ended it, or -1 if it had to be killed here (or could not be waited for). */
int qt_qemu_nbd_reap(pid_t pid, unsigned timeout_ms);
