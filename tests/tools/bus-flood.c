/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * bus-flood: fires a plan of D-Bus calls at qtrimd at once, over several connections, and
 * writes down how each was answered. For tests/integration/flood.sh.
 *
 *   bus-flood [-c CONNECTIONS] [-w WINDOW] [-t TIMEOUT_S] [-l LISTJOBS_MS] [-o RESULTS] <PLAN
 *
 * PLAN has one call per line, fields separated by tabs:
 *   shrink PATH [noconvert]     Manager.Shrink
 *   inspect PATH                Manager.Inspect
 *   listjobs                    Manager.ListJobs
 *   get OBJECT IFACE PROPERTY   Properties.Get
 *   getall OBJECT IFACE         Properties.GetAll
 *   cancel OBJECT               Job.Cancel
 * Call i goes out on connection i % CONNECTIONS; at most WINDOW calls are in flight (default:
 * all of them, sent before the first reply is read). dbus-daemon refuses more than
 * max_replies_per_connection (128 by default) pending calls per connection, hence several.
 *
 * Every LISTJOBS_MS while calls are outstanding, one more connection asks ListJobs and times
 * the answer: how long a client waits behind the flood.
 *
 * RESULTS gets one JSON object per call, in plan order: {"n", "call", "arg", "result" ("ok" or
 * the D-Bus error name), "message", "value" (a Shrink's job path), "ms"}. The summary, one JSON
 * object, goes to stdout. Exit status 0 once every call is answered (with whatever), 1 if the
 * deadline (the timeout plus 10 s after the last call went out) passed first or a call could
 * not be sent, 2 on bad usage.
 */
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>
#include <time.h>

#include "dbus-api.h"

#define MAX_CONNECTIONS  256
#define PROPERTIES_IFACE "org.freedesktop.DBus.Properties"

struct flood;

struct call {
        struct flood *flood;
        char *line;                  /* owns the strings below */
        const char *verb, *args[3];  /* args[] point into line */
        size_t n;                    /* position in the plan */
        uint64_t sent_usec, ms_usec; /* ms_usec: how long the reply took */
        char *result, *message, *value;
        bool done;
};

struct flood {
        sd_event *event;
        sd_bus *buses[MAX_CONNECTIONS];
        unsigned n_buses;
        struct call *calls;
        size_t n_calls, next, in_flight, answered, window;
        uint64_t timeout_usec;
        sd_event_source *deadline;
        int send_errors;

        /* The ListJobs sampler. */
        sd_bus *probe_bus;
        sd_event_source *probe_timer;
        uint64_t probe_interval_usec, probe_sent_usec, probe_max_usec, probe_sum_usec;
        unsigned probe_samples, probe_max_jobs, probe_max_running;
        bool probe_pending;
        int probe_errors;
};

static uint64_t now_usec(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static void json_string(FILE *f, const char *s)
{
        fputc('"', f);
        for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++)
                if (*p == '"' || *p == '\\')
                        fprintf(f, "\\%c", *p);
                else if (*p < 0x20)
                        fprintf(f, "\\u%04x", *p);
                else
                        fputc(*p, f);
        fputc('"', f);
}

static char *xstrdup(const char *s)
{
        char *d = strdup(s ? s : "");
        if (!d) {
                perror("bus-flood");
                exit(1);
        }
        return d;
}

static int send_next(struct flood *fl);

static int on_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error)
{
        struct call *c = userdata;
        struct flood *fl = c->flood;
        const sd_bus_error *e = sd_bus_message_get_error(m);

        c->ms_usec = now_usec() - c->sent_usec;
        if (e) {
                c->result = xstrdup(e->name);
                c->message = xstrdup(e->message);
        } else {
                c->result = xstrdup("ok");
                const char *path;
                if (strcmp(c->verb, "shrink") == 0 && sd_bus_message_read(m, "o", &path) >= 0)
                        c->value = xstrdup(path);
        }
        c->done = true;
        fl->in_flight--;
        fl->answered++;
        /* The sampler's call in flight is part of the flood: wait for it too. */
        if (fl->answered == fl->n_calls && !fl->probe_pending)
                return sd_event_exit(fl->event, 0);
        return send_next(fl);
}

static int append_call(sd_bus *bus, const struct call *c, sd_bus_message **ret)
{
        const char *dest = QTRIM_BUS_NAME;
        sd_bus_message *m = NULL;
        int r;

        if (strcmp(c->verb, "shrink") == 0) {
                r = sd_bus_message_new_method_call(bus, &m, dest, QTRIM_MANAGER_PATH,
                                                   QTRIM_MANAGER_IFACE, "Shrink");
                if (r >= 0 && c->args[1] && strcmp(c->args[1], "noconvert") == 0)
                        r = sd_bus_message_append(m, "sa{sv}", c->args[0], 1, QTRIM_OPT_CONVERT,
                                                  "b", 0);
                else if (r >= 0)
                        r = sd_bus_message_append(m, "sa{sv}", c->args[0], 0);
        } else if (strcmp(c->verb, "inspect") == 0) {
                r = sd_bus_message_new_method_call(bus, &m, dest, QTRIM_MANAGER_PATH,
                                                   QTRIM_MANAGER_IFACE, "Inspect");
                if (r >= 0)
                        r = sd_bus_message_append(m, "sa{sv}", c->args[0], 0);
        } else if (strcmp(c->verb, "listjobs") == 0) {
                r = sd_bus_message_new_method_call(bus, &m, dest, QTRIM_MANAGER_PATH,
                                                   QTRIM_MANAGER_IFACE, "ListJobs");
        } else if (strcmp(c->verb, "get") == 0 && c->args[2]) {
                r = sd_bus_message_new_method_call(bus, &m, dest, c->args[0], PROPERTIES_IFACE,
                                                   "Get");
                if (r >= 0)
                        r = sd_bus_message_append(m, "ss", c->args[1], c->args[2]);
        } else if (strcmp(c->verb, "getall") == 0 && c->args[1]) {
                r = sd_bus_message_new_method_call(bus, &m, dest, c->args[0], PROPERTIES_IFACE,
                                                   "GetAll");
                if (r >= 0)
                        r = sd_bus_message_append(m, "s", c->args[1]);
        } else if (strcmp(c->verb, "cancel") == 0) {
                r = sd_bus_message_new_method_call(bus, &m, dest, c->args[0], QTRIM_JOB_IFACE,
                                                   "Cancel");
        } else
                r = -EINVAL;
        if (r < 0) {
                sd_bus_message_unref(m);
                return r;
        }
        *ret = m;
        return 0;
}

/* Sends calls until the window is full or the plan is done. */
static int send_next(struct flood *fl)
{
        while (fl->next < fl->n_calls && fl->in_flight < fl->window) {
                struct call *c = &fl->calls[fl->next];
                sd_bus *bus = fl->buses[fl->next % fl->n_buses];
                sd_bus_message *m = NULL;
                fl->next++;
                int r = append_call(bus, c, &m);
                if (r >= 0) {
                        c->sent_usec = now_usec();
                        r = sd_bus_call_async(bus, NULL, m, on_reply, c, fl->timeout_usec);
                }
                sd_bus_message_unref(m);
                if (r < 0) {
                        fprintf(stderr, "bus-flood: cannot send call %zu (%s): %s\n", c->n + 1,
                                c->verb, strerror(-r));
                        fl->send_errors++;
                        return sd_event_exit(fl->event, 1);
                }
                fl->in_flight++;
                /* Every call has its own timeout: past the last one's, something is broken. */
                if (fl->next == fl->n_calls) {
                        int k = sd_event_source_set_time_relative(fl->deadline,
                                                                  fl->timeout_usec + 10000000ULL);
                        if (k < 0)
                                return k;
                }
        }
        return 0;
}

/* A ListJobs answer: its latency, and how many jobs it listed (running ones apart). */
static int on_probe_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error)
{
        struct flood *fl = userdata;
        uint64_t took = now_usec() - fl->probe_sent_usec;
        unsigned jobs = 0, running = 0;
        const char *state;
        int r;

        fl->probe_pending = false;
        if (fl->answered == fl->n_calls)
                (void)sd_event_exit(fl->event, 0);
        if (sd_bus_message_is_method_error(m, NULL)) {
                fprintf(stderr, "bus-flood: ListJobs failed: %s\n",
                        sd_bus_message_get_error(m)->name);
                fl->probe_errors++;
                return 0;
        }
        fl->probe_samples++;
        fl->probe_sum_usec += took;
        if (took > fl->probe_max_usec)
                fl->probe_max_usec = took;
        r = sd_bus_message_enter_container(m, 'a', "(usso)");
        while (r >= 0 && (r = sd_bus_message_read(m, "(usso)", NULL, NULL, &state, NULL)) > 0) {
                jobs++;
                running += strcmp(state, QTRIM_STATE_RUNNING) == 0;
        }
        if (jobs > fl->probe_max_jobs)
                fl->probe_max_jobs = jobs;
        if (running > fl->probe_max_running)
                fl->probe_max_running = running;
        return 0;
}

static int on_probe_timer(sd_event_source *s, uint64_t usec, void *userdata)
{
        struct flood *fl = userdata;
        if (fl->answered == fl->n_calls)
                return 0;
        if (!fl->probe_pending) {
                sd_bus_message *m = NULL;
                int r = sd_bus_message_new_method_call(fl->probe_bus, &m, QTRIM_BUS_NAME,
                                                       QTRIM_MANAGER_PATH, QTRIM_MANAGER_IFACE,
                                                       "ListJobs");
                fl->probe_sent_usec = now_usec();
                /* The flood's timeout, not sd-bus's default 25 s: this measures, the flood
                 * decides what is too long. */
                if (r >= 0)
                        r = sd_bus_call_async(fl->probe_bus, NULL, m, on_probe_reply, fl,
                                              fl->timeout_usec);
                sd_bus_message_unref(m);
                if (r < 0)
                        fl->probe_errors++;
                else
                        fl->probe_pending = true;
        }
        int r = sd_event_source_set_time_relative(s, fl->probe_interval_usec);
        return r < 0 ? r : sd_event_source_set_enabled(s, SD_EVENT_ON);
}

static int on_deadline(sd_event_source *s, uint64_t usec, void *userdata)
{
        struct flood *fl = userdata;
        fprintf(stderr, "bus-flood: deadline passed with %zu of %zu calls unanswered\n",
                fl->n_calls - fl->answered, fl->n_calls);
        return sd_event_exit(fl->event, 1);
}

static int read_plan(struct flood *fl, FILE *f)
{
        size_t cap = 0;
        char *line = NULL;
        size_t len = 0;
        ssize_t n;
        while ((n = getline(&line, &len, f)) > 0) {
                if (line[n - 1] == '\n')
                        line[n - 1] = '\0';
                if (!line[0])
                        continue;
                if (fl->n_calls == cap) {
                        cap = cap ? cap * 2 : 256;
                        struct call *calls = realloc(fl->calls, cap * sizeof(*calls));
                        if (!calls)
                                return -ENOMEM;
                        fl->calls = calls;
                }
                struct call *c = &fl->calls[fl->n_calls];
                *c = (struct call){.flood = fl, .line = xstrdup(line), .n = fl->n_calls};
                char *p = c->line;
                c->verb = strsep(&p, "\t");
                for (size_t i = 0; i < sizeof(c->args) / sizeof(c->args[0]) && p; i++)
                        c->args[i] = strsep(&p, "\t");
                fl->n_calls++;
        }
        free(line);
        return 0;
}

static void write_results(const struct flood *fl, FILE *f)
{
        for (size_t i = 0; i < fl->n_calls; i++) {
                const struct call *c = &fl->calls[i];
                fprintf(f, "{\"n\":%zu,\"call\":", c->n + 1);
                json_string(f, c->verb);
                fputs(",\"arg\":", f);
                json_string(f, c->args[0]);
                fputs(",\"result\":", f);
                json_string(f, c->done ? c->result : "unanswered");
                fputs(",\"message\":", f);
                json_string(f, c->message);
                fputs(",\"value\":", f);
                json_string(f, c->value);
                fprintf(f, ",\"ms\":%.1f}\n", c->done ? c->ms_usec / 1000.0 : -1.0);
        }
}

static void usage(void)
{
        fprintf(stderr, "usage: bus-flood [-c CONNECTIONS] [-w WINDOW] [-t TIMEOUT_S] "
                        "[-l LISTJOBS_MS] [-o RESULTS] <PLAN\n");
}

static int open_bus(sd_event *event, sd_bus **ret)
{
        sd_bus *bus = NULL;
        const char *name;
        /* DBUS_SYSTEM_BUS_ADDRESS points at the test's private bus. */
        int r = sd_bus_open_system(&bus);
        if (r >= 0)
                r = sd_bus_attach_event(bus, event, SD_EVENT_PRIORITY_NORMAL);
        /* Waits for Hello: connecting must not count in the latencies. */
        if (r >= 0)
                r = sd_bus_get_unique_name(bus, &name);
        if (r < 0) {
                sd_bus_unref(bus);
                return r;
        }
        *ret = bus;
        return 0;
}

int main(int argc, char **argv)
{
        struct flood fl = {.n_buses = 16, .timeout_usec = 120 * 1000000ULL};
        unsigned long listjobs_ms = 50, window = 0, timeout_s = 120;
        const char *results = NULL;
        int c, r;

        while ((c = getopt(argc, argv, "c:w:t:l:o:h")) >= 0)
                switch (c) {
                case 'c':
                        fl.n_buses = (unsigned)strtoul(optarg, NULL, 10);
                        break;
                case 'w':
                        window = strtoul(optarg, NULL, 10);
                        break;
                case 't':
                        timeout_s = strtoul(optarg, NULL, 10);
                        break;
                case 'l':
                        listjobs_ms = strtoul(optarg, NULL, 10);
                        break;
                case 'o':
                        results = optarg;
                        break;
                default:
                        usage();
                        return 2;
                }
        if (optind != argc || fl.n_buses < 1 || fl.n_buses > MAX_CONNECTIONS || timeout_s < 1) {
                usage();
                return 2;
        }
        fl.timeout_usec = timeout_s * 1000000ULL;
        fl.probe_interval_usec = listjobs_ms * 1000ULL;

        r = read_plan(&fl, stdin);
        if (r < 0 || fl.n_calls == 0) {
                fprintf(stderr, "bus-flood: %s\n", r < 0 ? strerror(-r) : "empty plan");
                return 2;
        }
        fl.window = window ? window : fl.n_calls;

        r = sd_event_new(&fl.event);
        for (unsigned i = 0; r >= 0 && i < fl.n_buses; i++)
                r = open_bus(fl.event, &fl.buses[i]);
        if (r >= 0 && listjobs_ms > 0)
                r = open_bus(fl.event, &fl.probe_bus);
        if (r < 0) {
                fprintf(stderr, "bus-flood: cannot connect to the system bus: %s\n", strerror(-r));
                return 1;
        }
        r = sd_event_add_time_relative(fl.event, &fl.deadline, CLOCK_MONOTONIC,
                                       fl.timeout_usec + 10000000ULL, 0, on_deadline, &fl);
        if (r >= 0 && fl.probe_bus)
                r = sd_event_add_time_relative(fl.event, &fl.probe_timer, CLOCK_MONOTONIC, 0, 0,
                                               on_probe_timer, &fl);
        if (r < 0) {
                fprintf(stderr, "bus-flood: cannot set up timers: %s\n", strerror(-r));
                return 1;
        }

        uint64_t start = now_usec();
        r = send_next(&fl);
        if (r >= 0)
                r = sd_event_loop(fl.event);
        double seconds = (now_usec() - start) / 1e6;

        if (results) {
                FILE *f = fopen(results, "we");
                if (!f) {
                        fprintf(stderr, "bus-flood: cannot write %s: %m\n", results);
                        return 1;
                }
                write_results(&fl, f);
                fclose(f);
        }
        printf("{\"calls\":%zu,\"answered\":%zu,\"connections\":%u,\"seconds\":%.2f,"
               "\"listjobs\":{\"samples\":%u,\"errors\":%d,\"max_ms\":%.1f,\"mean_ms\":%.1f,"
               "\"max_jobs\":%u,\"max_running\":%u}}\n",
               fl.n_calls, fl.answered, fl.n_buses, seconds, fl.probe_samples, fl.probe_errors,
               fl.probe_max_usec / 1000.0,
               fl.probe_samples ? fl.probe_sum_usec / 1000.0 / fl.probe_samples : 0.0,
               fl.probe_max_jobs, fl.probe_max_running);

        for (size_t i = 0; i < fl.n_calls; i++) {
                free(fl.calls[i].line);
                free(fl.calls[i].result);
                free(fl.calls[i].message);
                free(fl.calls[i].value);
        }
        free(fl.calls);
        sd_event_source_unref(fl.probe_timer);
        sd_event_source_unref(fl.deadline);
        for (unsigned i = 0; i < fl.n_buses; i++)
                sd_bus_flush_close_unref(fl.buses[i]);
        sd_bus_flush_close_unref(fl.probe_bus);
        sd_event_unref(fl.event);
        return r == 0 && fl.answered == fl.n_calls && !fl.send_errors ? 0 : 1;
}
