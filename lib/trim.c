/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "trim.h"

#include <errno.h>
#include <fcntl.h>
#include <libmount.h>
#include <linux/fs.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include "cancel.h"
#include "loopdev.h"
#include "test-hooks.h"
#include "util.h"

/* Mount options per filesystem type. All: no device nodes, no setuid, no execution from the
 * guest's files. ext2/3/4: errors=remount-ro overrides the superblock's error behaviour, which
 * the guest chose and which may be "panic" (the host's); noinit_itable, or lazy inode-table init
 * writes zeroes all over the image after mount. xfs: nouuid, the guest's UUID may be mounted on
 * the host too (a clone). btrfs: skip_balance, so an interrupted balance does not resume and
 * rewrite data. */
static const struct {
        const char *fstype;
        const char *options;
        bool whole_range; /* FITRIM must cover the whole range in one call (see trim_range) */
} supported[] = {
    {"ext4", "nodev,nosuid,noexec,errors=remount-ro,noinit_itable", false},
    {"ext3", "nodev,nosuid,noexec,errors=remount-ro,noinit_itable", false},
    {"ext2", "nodev,nosuid,noexec,errors=remount-ro", false},
    {"xfs", "nodev,nosuid,noexec,nouuid", false},
    {"btrfs", "nodev,nosuid,noexec,skip_balance", true},
};

/* FITRIM steps: small enough for a live progress bar and a prompt cancel, also on a huge
 * filesystem (a cancel waits for the step under way). */
#define TRIM_STEP_MIN (256ULL << 20)
#define TRIM_STEP_MAX (4ULL << 30)
#define TRIM_STEPS    50

void qt_fs_set_outcome(struct qt_fs_result *fs, const char *state, const char *fmt, ...)
{
        va_list ap;
        snprintf(fs->state, sizeof(fs->state), "%s", state);
        va_start(ap, fmt);
        vsnprintf(fs->message, sizeof(fs->message), fmt, ap);
        va_end(ap);
}

static int mount_fs(const char *source, const char *target, const char *fstype, const char *options,
                    char *why, size_t why_size)
{
        struct libmnt_context *cxt = mnt_new_context();
        if (!cxt)
                return -ENOMEM;
        /* Our namespace is private: no utab bookkeeping, no /sbin/mount.* helpers. */
        mnt_context_disable_mtab(cxt, 1);
        mnt_context_disable_helpers(cxt, 1);
        mnt_context_set_source(cxt, source);
        mnt_context_set_target(cxt, target);
        mnt_context_set_fstype(cxt, fstype);
        mnt_context_set_options(cxt, options);
        int rc = mnt_context_mount(cxt);
        int r = 0;
        if (rc != 0 || mnt_context_get_status(cxt) != 1) {
                why[0] = '\0';
                mnt_context_get_excode(cxt, rc, why, why_size);
                if (!why[0])
                        snprintf(why, why_size, "mount failed (%d)", rc);
                r = -EIO;
        }
        mnt_free_context(cxt);
        return r;
}

/* FITRIM over the filesystem in steps. btrfs trims its unallocated device space on every call
 * whatever the range, so it gets one call over everything. */
static int trim_range(const char *dir, struct qt_fs_result *fs, bool whole_range,
                      qt_progress_fn progress, void *userdata)
{
        _cleanup_close_ int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        uint64_t step = whole_range ? UINT64_MAX : fs->size / TRIM_STEPS;
        if (step < TRIM_STEP_MIN)
                step = TRIM_STEP_MIN;
        if (!whole_range && step > TRIM_STEP_MAX)
                step = TRIM_STEP_MAX;

        for (uint64_t start = 0; start < fs->size; start += step) {
                if (qt_cancel_requested)
                        return -ECANCELED;
                struct fstrim_range range = {.start = start, .len = step, .minlen = 0};
                if (ioctl(fd, FITRIM, &range) < 0) {
                        /* Past the filesystem's own end (it may be smaller than its partition). */
                        if (errno == EINVAL && start > 0)
                                break;
                        return -errno;
                }
                fs->trimmed += range.len;
                /* The last step may reach past the end: done is done. */
                if (progress)
                        progress(step >= fs->size - start
                                     ? 1.0
                                     : (double)(start + step) / (double)fs->size,
                                 userdata);
                if (step > UINT64_MAX - start)
                        break;
        }
        return 0;
}

static int supported_index(const struct qt_fs_result *fs)
{
        for (size_t i = 0; i < ELEMENTSOF(supported); i++)
                if (strcmp(fs->fstype, supported[i].fstype) == 0)
                        return (int)i;
        return -1;
}

/* Contents that are not filesystems, and what to say of them. */
static const struct {
        const char *fstype;
        enum qt_trim_method method;
        const char *why;
} others[] = {
    {"swap", QT_TRIM_SWAP, NULL},
    /* No host kernel driver needed, and none must mount them: an NTFS that Windows hibernated
     * would lose the guest's unflushed changes to a read-write mount. */
    {"vfat", QT_TRIM_FREEMAP, NULL},
    {"ntfs", QT_TRIM_FREEMAP, NULL},
    {"exfat", QT_TRIM_SKIP, "exFAT is not read yet"},
    {"swsuspend", QT_TRIM_SKIP, QT_HIBERNATED_SWAP_WHY},
    {"LVM2_member", QT_TRIM_SKIP,
     "an LVM physical volume: its logical volumes and free extents are handled on their own"},
    {"crypto_LUKS", QT_TRIM_SKIP, "encrypted (LUKS); qtrim has no key and will not ask"},
    {"BitLocker", QT_TRIM_SKIP, "encrypted (BitLocker); qtrim has no key and will not ask"},
};

enum qt_trim_method qt_trim_method(const struct qt_fs_result *fs, char *why, size_t why_size)
{
        if (fs->message[0]) { /* discovery found it must not be touched, and said why */
                snprintf(why, why_size, "%s", fs->message);
                return QT_TRIM_SKIP;
        }
        if (strcmp(fs->kind, "gap") == 0 || strcmp(fs->kind, "free") == 0)
                return QT_TRIM_DISCARD;
        if (!fs->fstype[0]) {
                snprintf(why, why_size, "no filesystem found");
                return QT_TRIM_SKIP;
        }
        if (supported_index(fs) >= 0)
                return QT_TRIM_MOUNT;
        for (size_t i = 0; i < ELEMENTSOF(others); i++)
                if (strcmp(fs->fstype, others[i].fstype) == 0) {
                        if (others[i].why)
                                snprintf(why, why_size, "%s", others[i].why);
                        return others[i].method;
                }
        snprintf(why, why_size, "%s is not a filesystem qtrim trims", fs->fstype);
        return QT_TRIM_SKIP;
}

const char *qt_trim_method_name(enum qt_trim_method m)
{
        static const char *const names[] = {
            [QT_TRIM_MOUNT] = "mount",     [QT_TRIM_SWAP] = "swap", [QT_TRIM_DISCARD] = "discard",
            [QT_TRIM_FREEMAP] = "freemap", [QT_TRIM_SKIP] = "skip",
        };
        return (size_t)m < ELEMENTSOF(names) ? names[m] : "skip";
}

int qt_trim_filesystem(const struct qt_fs_source *src, const char *mount_dir,
                       struct qt_fs_result *fs, qt_progress_fn progress, void *userdata)
{
        if (fs->message[0]) { /* discovery already found it unusable: keep its message */
                snprintf(fs->state, sizeof(fs->state), "skipped");
                return 0;
        }
        if (!fs->fstype[0]) {
                qt_fs_set_outcome(fs, "skipped", "no filesystem found");
                return 0;
        }
        int i = supported_index(fs);
        if (i < 0) {
                qt_fs_set_outcome(fs, "skipped", "%s is not a filesystem qtrim trims", fs->fstype);
                return 0;
        }

        if (src->unusable) {
                qt_fs_set_outcome(fs, "skipped", "%s", src->unusable);
                return 0;
        }

        char loop[QT_LOOP_PATH_MAX];
        const char *device = src->device;
        int loop_fd = -1;
        if (!device) {
                struct qt_error e = {};
                loop_fd = qt_loop_attach(src->disk, src->offset, src->size, false, loop, &e);
                if (loop_fd < 0) {
                        qt_fs_set_outcome(fs, "failed", "%s", e.message);
                        return 0;
                }
                device = loop;
        }
        if (mkdir(mount_dir, 0700) < 0 && errno != EEXIST) {
                qt_fs_set_outcome(fs, "failed", "cannot create %s: %s", mount_dir, strerror(errno));
                closep(&loop_fd);
                return 0;
        }
        char why[256];
        int r = mount_fs(device, mount_dir, fs->fstype, supported[i].options, why, sizeof(why));
        /* The mount holds the device now (or nothing does); autoclear frees a loop device with
         * the mount. */
        closep(&loop_fd);
        if (r < 0) {
                qt_fs_set_outcome(fs, "skipped", "cannot mount: %s", why);
                rmdir(mount_dir);
                return 0;
        }

        r = qt_test_pause("trim-mounted");
        if (r >= 0)
                r = trim_range(mount_dir, fs, supported[i].whole_range, progress, userdata);
        if (r == -ECANCELED)
                qt_fs_set_outcome(fs, "failed", "canceled");
        else if (r == -EOPNOTSUPP || r == -ENOTTY)
                qt_fs_set_outcome(fs, "skipped", "the filesystem does not support discard");
        else if (r < 0)
                qt_fs_set_outcome(fs, "failed", "FITRIM failed: %s", strerror(-r));
        else
                qt_fs_set_outcome(fs, "trimmed", "%s", "");

        if (umount2(mount_dir, 0) < 0) {
                int err = errno;
                /* Lazily: the namespace goes with the worker, the loop device with the mount. */
                umount2(mount_dir, MNT_DETACH);
                qt_fs_set_outcome(fs, "failed", "cannot unmount cleanly: %s", strerror(err));
        }
        rmdir(mount_dir);
        return r == -ECANCELED ? r : 0;
}
