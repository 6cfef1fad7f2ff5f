/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Real disk images and a place to put them, for the tests of the device-level modules (attach,
 * loop devices, discovery, trim, convert). Images are made with an administrator's own tools
 * (qemu-img, qemu-io, sfdisk, mkfs) through sh, never by qtrim.
 *
 * Check runs each test in a forked child, and a failed assertion ends that child at once, so
 * nothing a test sets up may need the test to finish to go away:
 *  - the scratch directory is made and removed by the parent (an unchecked fixture);
 *  - a test that mounts or attaches anything first enters a private mount namespace
 *    (fx_enter_private_namespace): its mounts, and the loop devices they hold, go with the child;
 *    qemu-nbd exits when the child's socket to it closes.
 * Loop devices are never attached by the image builders (filesystems are made in files and
 * copied into the disk), so a dying builder leaves nothing behind either.
 */
#pragma once

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* The program's scratch directory under /var/tmp: fx_scratch_setup and fx_scratch_teardown are
 * the unchecked fixture that makes and removes it. */
extern char fx_scratch[PATH_MAX];
void fx_scratch_setup(void);
void fx_scratch_teardown(void);

/* "<dir>/<name>", and "<fx_scratch>/<name>"; the test fails if it does not fit. Return ret. */
char *fx_join(char ret[PATH_MAX], const char *dir, const char *name);
char *fx_path(char ret[PATH_MAX], const char *name);

/* Runs a shell command line in fx_scratch; fails the test with its output unless it exits 0. */
void fx_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The same, returning what the command printed (malloc'd, NUL-terminated). */
char *fx_sh_output(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Makes name: a raw disk of disk_mib MiB with the sfdisk script's partition table. */
void fx_make_partitioned(const char *name, unsigned disk_mib, const char *sfdisk_script);
/* Writes a filesystem of size bytes into name at offset bytes: mkfs is a command line to which
 * the filesystem's file is appended (e.g. "mkfs.ext4 -q -F"), then (may be NULL) one run after
 * it with that file in $fs. The filesystem is made in a file of its own and copied in, so no
 * loop device is needed. */
void fx_put_filesystem(const char *name, uint64_t offset, uint64_t size, const char *mkfs,
                       const char *then);

/* Enters a private mount namespace, as qtrim's worker does, and mounts a tmpfs on a new
 * directory in fx_scratch, returned in ret_dir: what the test mounts below it is invisible to
 * the host and vanishes with the test process. */
void fx_enter_private_namespace(char ret_dir[PATH_MAX]);

/* Whether path is a mount point in the mount namespace of process pid (0: this one); its type
 * into ret_fstype (may be NULL). */
bool fx_is_mount_point(pid_t pid, const char *path, char ret_fstype[64]);

/* Child processes of this one, running or not yet reaped; only those called comm if not NULL. */
unsigned fx_count_children(const char *comm);

/* Loop devices whose backing file's path contains needle; the second detaches them too. */
unsigned fx_count_loop_devices(const char *needle);
unsigned fx_detach_loop_devices(const char *needle);

/* Bytes the host has allocated to a file. */
uint64_t fx_allocated(const char *path);

/* A byte of the test pattern at a position: never zero, different at neighbouring offsets. */
static inline uint8_t fx_pattern(uint64_t pos)
{
        return (uint8_t)(pos * 7 % 251 + 1);
}
