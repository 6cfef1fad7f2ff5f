/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qtrim-libvirt-hook: libvirt's qemu hook (/etc/libvirt/hooks/qemu.d/qtrim links here), run by
 * libvirtd as "qtrim DOMAIN OPERATION SUBOPERATION EXTRA" with the domain's XML on stdin. It
 * passes two moments on to qtrimd (daemon/domain-hook.h says why a hook):
 *   prepare begin  (before QEMU starts)  DomainStarting: qtrim's jobs on the domain's images are
 *                  canceled, and this waits until they have let go of the images. Without
 *                  auto-start: a qtrimd that is not running has no jobs.
 *   release end    (the domain stopped)  DomainStopped: qtrimd shrinks its disks if
 *                  ShrinkOnShutdown= names it. qtrimd is started by the bus if need be.
 * Anything else ends at once. It always exits 0: libvirt takes a failing "prepare" hook as a
 * reason not to start the domain, and a start must never wait on qtrim. It never talks to
 * libvirt (libvirtd waits for the hook: a call back would deadlock). What goes wrong is one line
 * in the journal and on stderr (libvirt keeps a hook's stderr in its debug log only, unless the
 * hook fails, which this one never does).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include "dbus-api.h"
#include "util.h"

/* Above qtrimd's own wait for canceled jobs (HOOK_START_WAIT_USEC, 20 s). */
#define CALL_TIMEOUT_USEC (25 * 1000000ULL)
/* A domain's XML is some KiB; libvirt's own limit on a domain definition is 10 MiB. */
#define XML_MAX (10u << 20)

static void say(int priority, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* One line for the administrator: the journal (where libvirtd's own messages go), and stderr. */
static void say(int priority, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        sd_journal_printv(priority, fmt, ap);
        va_end(ap);
        va_start(ap, fmt);
        fputs("qtrim: ", stderr);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
}

/* The domain's XML from stdin, NUL-terminated; NULL (said why) if it cannot be read whole. */
static char *read_xml(const char *domain)
{
        size_t size = 64 << 10, len = 0;
        char *buf = malloc(size);
        while (buf) {
                if (len + 1 == size) {
                        char *bigger = size <= XML_MAX ? realloc(buf, size * 2) : NULL;
                        if (!bigger) {
                                say(LOG_WARNING, "%s: the domain XML is too big", domain);
                                break;
                        }
                        buf = bigger;
                        size *= 2;
                }
                ssize_t n = read(STDIN_FILENO, buf + len, size - 1 - len);
                if (n == 0) {
                        buf[len] = '\0';
                        return buf;
                }
                if (n < 0 && errno != EINTR) {
                        say(LOG_WARNING, "%s: cannot read the domain XML: %s", domain,
                            strerror(errno));
                        break;
                }
                if (n > 0)
                        len += (size_t)n;
        }
        free(buf);
        return NULL;
}

/* qtrimd is not running, or not installed: nothing of it can hold the images. */
static bool daemon_absent(const sd_bus_error *e)
{
        return sd_bus_error_has_names(e, SD_BUS_ERROR_SERVICE_UNKNOWN,
                                      SD_BUS_ERROR_NAME_HAS_NO_OWNER);
}

/* What the reply says that is worth a line: the jobs a start canceled (on stderr alone: qtrimd's
 * journal has them), the disks that could not be queued. */
static void log_reply(const char *domain, bool starting, sd_bus_message *reply)
{
        int r;
        if (starting) {
                const char *job;
                r = sd_bus_message_enter_container(reply, 'a', "o");
                while (r >= 0 && (r = sd_bus_message_read(reply, "o", &job)) > 0)
                        fprintf(stderr,
                                "qtrim: %s is starting: canceled qtrim's job %s on its disk\n",
                                domain, job);
                return;
        }
        const char *target, *source, *job, *error, *message;
        r = sd_bus_message_enter_container(reply, 'a', QTRIM_DOMAIN_SHRUNK_SIGNATURE);
        while (r >= 0 && (r = sd_bus_message_read(reply, QTRIM_DOMAIN_SHRUNK_SIGNATURE, &target,
                                                  &source, &job, &error, &message)) > 0)
                /* Unchanged is the usual answer for a domain that wrote nothing. */
                if (error[0] && strcmp(error, "org.qtrim1.Error.Unchanged") != 0)
                        say(LOG_NOTICE, "%s %s (%s): not shrunk: %s", domain, target, source,
                            message);
}

int main(int argc, char **argv)
{
        if (argc < 4) {
                fprintf(stderr,
                        "qtrim: usage: %s DOMAIN OPERATION SUBOPERATION [EXTRA] "
                        "(libvirt's qemu hook)\n",
                        argv[0]);
                return EXIT_SUCCESS;
        }
        const char *domain = argv[1];
        bool starting = strcmp(argv[2], "prepare") == 0 && strcmp(argv[3], "begin") == 0;
        bool stopped = strcmp(argv[2], "release") == 0 && strcmp(argv[3], "end") == 0;
        if (!starting && !stopped)
                return EXIT_SUCCESS;

        _cleanup_free_ char *xml = read_xml(domain);
        if (!xml)
                return EXIT_SUCCESS;
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *call = NULL, *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r = sd_bus_open_system(&bus);
        if (r < 0) {
                say(LOG_WARNING, "%s: cannot connect to the system bus: %s", domain, strerror(-r));
                return EXIT_SUCCESS;
        }
        r = sd_bus_message_new_method_call(bus, &call, QTRIM_BUS_NAME, QTRIM_MANAGER_PATH,
                                           QTRIM_MANAGER_IFACE,
                                           starting ? "DomainStarting" : "DomainStopped");
        if (r >= 0)
                r = sd_bus_message_append(call, "ss", domain, xml);
        /* A qtrimd started now would have no job to cancel. */
        if (r >= 0 && starting)
                r = sd_bus_message_set_auto_start(call, false);
        if (r >= 0)
                r = sd_bus_call(bus, call, CALL_TIMEOUT_USEC, &error, &reply);
        if (r >= 0)
                log_reply(domain, starting, reply);
        else if (!(starting && daemon_absent(&error)))
                say(LOG_WARNING, "%s: %s failed: %s", domain,
                    starting ? "DomainStarting" : "DomainStopped", error.message ?: strerror(-r));
        return EXIT_SUCCESS;
}
