/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "fixtures.h"

#include <check.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <linux/loop.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util.h"

char fx_scratch[PATH_MAX];
static pid_t scratch_owner;

/* Only what the tests made on the host is left: their mounts were in namespaces now gone. No
 * assertions here: this also runs at exit. */
static void remove_scratch(void)
{
        char cmd[PATH_MAX + 64];
        if (!fx_scratch[0] || getpid() != scratch_owner)
                return;
        snprintf(cmd, sizeof(cmd), "rm -rf --one-file-system -- '%s'", fx_scratch);
        if (system(cmd) != 0)
                fprintf(stderr, "cannot remove %s\n", fx_scratch);
        fx_scratch[0] = '\0';
}

void fx_scratch_setup(void)
{
        if (geteuid() != 0) {
                /* 77: meson's "skipped". */
                fprintf(stderr, "attaches loop devices, mounts and chowns: run as root\n");
                exit(77);
        }
        snprintf(fx_scratch, sizeof(fx_scratch), "/var/tmp/qtrim-unit.XXXXXX");
        ck_assert_msg(mkdtemp(fx_scratch), "mkdtemp: %m");
        /* Also when the rest of the setup fails, after which Check runs no teardown. Forked tests
         * inherit the handler: only the process that made the directory removes it. */
        if (!scratch_owner)
                atexit(remove_scratch);
        scratch_owner = getpid();
}

void fx_scratch_teardown(void)
{
        remove_scratch();
}

char *fx_join(char ret[PATH_MAX], const char *dir, const char *name)
{
        int n = snprintf(ret, PATH_MAX, "%s/%s", dir, name);
        ck_assert_msg(n > 0 && n < PATH_MAX, "path too long: %s/%s", dir, name);
        return ret;
}

char *fx_path(char ret[PATH_MAX], const char *name)
{
        return fx_join(ret, fx_scratch, name);
}

__attribute__((format(printf, 1, 0))) static char *run(const char *fmt, va_list ap)
{
        _cleanup_free_ char *cmd = NULL, *line = NULL;
        ck_assert_int_ge(vasprintf(&cmd, fmt, ap), 0);
        ck_assert_int_ge(asprintf(&line, "cd '%s' && (%s) 2>&1", fx_scratch, cmd), 0);

        FILE *p = popen(line, "r");
        ck_assert_msg(p, "popen: %m");
        char *out = NULL;
        size_t len = 0;
        FILE *mem = open_memstream(&out, &len);
        ck_assert_ptr_nonnull(mem);
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof(buf), p)) > 0)
                fwrite(buf, 1, n, mem);
        int status = pclose(p);
        fclose(mem);
        if (status != 0) {
                /* Failing the test ends this process (or jumps out of a fixture): free first. */
                char why[2048];
                snprintf(why, sizeof(why), "`%s` failed (%s %d): %s", cmd,
                         WIFEXITED(status) ? "exit status" : "wait status",
                         WIFEXITED(status) ? WEXITSTATUS(status) : status, out);
                free(out);
                free(TAKE_PTR(cmd));
                free(TAKE_PTR(line));
                ck_abort_msg("%s", why);
        }
        return out;
}

void fx_sh(const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        free(run(fmt, ap));
        va_end(ap);
}

char *fx_sh_output(const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        char *out = run(fmt, ap);
        va_end(ap);
        return out;
}

void fx_make_partitioned(const char *name, unsigned disk_mib, const char *sfdisk_script)
{
        char script[PATH_MAX], script_name[NAME_MAX + 1];
        snprintf(script_name, sizeof(script_name), "%s.sfdisk", name);
        FILE *f = fopen(fx_path(script, script_name), "we");
        ck_assert_msg(f, "%s: %m", script);
        fputs(sfdisk_script, f);
        ck_assert_int_eq(fclose(f), 0);
        fx_sh("rm -f %1$s && truncate -s %2$uM %1$s && "
              "sfdisk -q --no-reread --no-tell-kernel %1$s <%1$s.sfdisk && rm %1$s.sfdisk",
              name, disk_mib);
}

void fx_put_filesystem(const char *name, uint64_t offset, uint64_t size, const char *mkfs,
                       const char *then)
{
        fx_sh(
            "fs=%1$s.fs && rm -f \"$fs\" && truncate -s %2$llu \"$fs\" && %3$s \"$fs\" && %4$s && "
            "dd if=\"$fs\" of=%1$s bs=64K oflag=seek_bytes seek=%5$llu conv=notrunc,sparse "
            "status=none && rm \"$fs\"",
            name, (unsigned long long)size, mkfs, then ? then : "true", (unsigned long long)offset);
}

void fx_enter_private_namespace(char ret_dir[PATH_MAX])
{
        ck_assert_msg(unshare(CLONE_NEWNS) == 0, "unshare: %m");
        ck_assert_msg(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0, "mount: %m");
        ck_assert_msg(mkdtemp(fx_path(ret_dir, "ns.XXXXXX")), "mkdtemp: %m");
        ck_assert_msg(
            mount("qtrim-test", ret_dir, "tmpfs", MS_NODEV | MS_NOSUID, "mode=0700,size=1m") == 0,
            "tmpfs on %s: %m", ret_dir);
}

bool fx_is_mount_point(pid_t pid, const char *path, char ret_fstype[64])
{
        char file[64];
        snprintf(file, sizeof(file), "/proc/%d/mountinfo", pid ? (int)pid : (int)getpid());
        _cleanup_fclose_ FILE *f = fopen(file, "re");
        ck_assert_msg(f, "%s: %m", file);
        _cleanup_free_ char *line = NULL;
        size_t size = 0;
        while (getline(&line, &size, f) > 0) {
                /* "36 35 98:0 /root /mnt/point rw,noatime master:1 - ext3 /dev/root rw" */
                char target[PATH_MAX + 1], fstype[64];
                const char *sep = strstr(line, " - ");
                if (!sep || sscanf(line, "%*s %*s %*s %*s %4096s", target) != 1 ||
                    sscanf(sep, " - %63s", fstype) != 1)
                        continue;
                if (strcmp(target, path) == 0) {
                        if (ret_fstype)
                                snprintf(ret_fstype, 64, "%s", fstype);
                        return true;
                }
        }
        return false;
}

unsigned fx_count_children(const char *comm)
{
        unsigned n = 0;
        DIR *proc = opendir("/proc");
        ck_assert_ptr_nonnull(proc);
        for (struct dirent *d; (d = readdir(proc));) {
                if (!isdigit((unsigned char)d->d_name[0]))
                        continue;
                char file[300], line[1024];
                snprintf(file, sizeof(file), "/proc/%s/stat", d->d_name);
                FILE *f = fopen(file, "re");
                if (!f)
                        continue; /* gone meanwhile */
                size_t len = fread(line, 1, sizeof(line) - 1, f);
                fclose(f);
                line[len] = '\0';
                /* "pid (comm) state ppid ...": comm may hold spaces and parentheses. */
                char *name = strchr(line, '('), *name_end = strrchr(line, ')');
                int ppid;
                if (!name || !name_end || sscanf(name_end + 1, " %*c %d", &ppid) != 1)
                        continue;
                *name_end = '\0';
                if (ppid == getpid() && (!comm || strcmp(name + 1, comm) == 0))
                        n++;
        }
        closedir(proc);
        return n;
}

static unsigned find_loop_devices(const char *needle, bool detach)
{
        unsigned n = 0;
        glob_t g;
        if (glob("/sys/block/loop*/loop/backing_file", 0, NULL, &g) != 0)
                return 0;
        for (size_t i = 0; i < g.gl_pathc; i++) {
                char backing[PATH_MAX + 16] = "", dev[64];
                FILE *f = fopen(g.gl_pathv[i], "re");
                if (!f)
                        continue; /* cleared meanwhile */
                size_t len = fread(backing, 1, sizeof(backing) - 1, f);
                fclose(f);
                backing[len] = '\0';
                if (!strstr(backing, needle))
                        continue;
                n++;
                /* "/sys/block/loopN/loop/backing_file" */
                if (detach && sscanf(g.gl_pathv[i], "/sys/block/%31[^/]", dev + 5) == 1) {
                        memcpy(dev, "/dev/", 5);
                        int fd = open(dev, O_RDONLY | O_CLOEXEC);
                        if (fd >= 0) {
                                (void)ioctl(fd, LOOP_CLR_FD, 0);
                                close(fd);
                        }
                }
        }
        globfree(&g);
        return n;
}

unsigned fx_count_loop_devices(const char *needle)
{
        return find_loop_devices(needle, false);
}

unsigned fx_detach_loop_devices(const char *needle)
{
        return find_loop_devices(needle, true);
}

uint64_t fx_allocated(const char *path)
{
        struct stat st;
        ck_assert_msg(stat(path, &st) == 0, "%s: %m", path);
        return (uint64_t)st.st_blocks * 512u;
}
