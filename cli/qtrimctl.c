/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qtrimctl: the command-line client of qtrimd. Parses the command line, connects to the system
 * bus and runs one verb; list, status and cancel live here, shrink and wait in shrink.c (the
 * sweep in sweep.c), inspect and the dry run's estimate in inspect.c.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <locale.h>
#include <string.h>
#include <sys/param.h>

#include "common.h"
#include "config.h"
#include "dbus-api.h"
#include "domain.h"
#include "inspect.h"
#include "shrink.h"
#include "util.h"

static bool arg_no_block = false;
static bool arg_no_convert = false;
static bool arg_json = false;
static bool arg_all = false;
static const char *arg_format = NULL;
static bool arg_keep_gaps = false;
static const char *arg_domain = NULL;
static bool arg_dry_run = false;
static bool arg_online = false;

static int verb_shrink(sd_bus *bus, char **args, size_t n_args)
{
        const struct shrink_options opts = {
            .block = !arg_no_block,
            .convert = !arg_no_convert,
            .json = arg_json,
            .format = arg_format,
            .keep_gaps = arg_keep_gaps,
            .dry_run = arg_dry_run,
            .online = arg_online,
        };

        if (arg_all)
                return sweep_image_directories(bus, &opts);
        if (arg_domain)
                return shrink_domain(bus, arg_domain, &opts);
        if (arg_dry_run)
                return estimate_images(bus, args, n_args, &opts);
        return shrink_images(bus, args, n_args, &opts);
}

/* list, status */

struct job_row {
        uint32_t id;
        char *path;
        struct job_properties props;
};

static void job_rows_free(struct job_row *rows, size_t n_rows)
{
        for (size_t i = 0; i < n_rows; i++) {
                free(rows[i].path);
                job_properties_done(&rows[i].props);
        }
        free(rows);
}

/* Reads ListJobs' reply and every job's properties; a job that ended since is left out. */
static int read_job_rows(sd_bus *bus, sd_bus_message *reply, struct job_row **ret_rows,
                         size_t *ret_n_rows)
{
        struct job_row *rows = NULL;
        size_t n_rows = 0;
        const char *image, *state, *path;
        uint32_t id;
        int r;

        r = sd_bus_message_enter_container(reply, 'a', "(usso)");
        if (r < 0)
                return log_errno(r, "failed to read the reply to ListJobs");

        while ((r = sd_bus_message_read(reply, "(usso)", &id, &image, &state, &path)) > 0) {
                struct job_row *grown = reallocarray(rows, n_rows + 1, sizeof(*rows));
                if (!grown) {
                        r = log_errno(-ENOMEM, "failed to list the jobs");
                        break;
                }
                rows = grown;
                rows[n_rows] = (struct job_row){.id = id, .path = strdup(path)};
                if (!rows[n_rows++].path) {
                        r = log_errno(-ENOMEM, "failed to list the jobs");
                        break;
                }
                r = job_get_properties(bus, path, &rows[n_rows - 1].props);
                if (r < 0)
                        break;
                if (r == 0) { /* ended meanwhile */
                        n_rows--;
                        job_properties_done(&rows[n_rows].props);
                        free(rows[n_rows].path);
                }
        }
        if (r < 0) {
                job_rows_free(rows, n_rows);
                return r == -ENOMEM ? r : log_errno(r, "failed to read the reply to ListJobs");
        }

        *ret_rows = rows;
        *ret_n_rows = n_rows;
        return 0;
}

static const char *job_phase_shown(const struct job_properties *p)
{
        /* A queued job's Phase is "queued" too; the STATE column says so already. */
        return p->phase && p->state && strcmp(p->state, QTRIM_STATE_QUEUED) != 0 ? p->phase : "-";
}

static void print_job_table(const struct job_row *rows, size_t n_rows)
{
        int id_width = (int)strlen("ID"), state_width = (int)strlen("STATE"),
            phase_width = (int)strlen("PHASE"), elapsed_width = (int)strlen("ELAPSED");
        char elapsed[FORMAT_DURATION_MAX];

        if (n_rows == 0) {
                printf("No jobs.\n");
                return;
        }

        for (size_t i = 0; i < n_rows; i++) {
                const struct job_properties *p = &rows[i].props;
                id_width = MAX(id_width, snprintf(NULL, 0, "%" PRIu32, rows[i].id));
                state_width = MAX(state_width, (int)strlen(p->state ?: "-"));
                phase_width = MAX(phase_width, (int)strlen(job_phase_shown(p)));
                elapsed_width =
                    MAX(elapsed_width, (int)strlen(format_duration(elapsed, job_elapsed_usec(p))));
        }

        printf("%-*s  %-*s  %-*s  %-8s  %-*s  %s\n", id_width, "ID", state_width, "STATE",
               phase_width, "PHASE", "PROGRESS", elapsed_width, "ELAPSED", "IMAGE");
        for (size_t i = 0; i < n_rows; i++) {
                const struct job_properties *p = &rows[i].props;
                printf("%*" PRIu32 "  %-*s  %-*s  %7.0f%%  %*s  %s\n", id_width, rows[i].id,
                       state_width, p->state ?: "-", phase_width, job_phase_shown(p),
                       p->progress * 100, elapsed_width,
                       format_duration(elapsed, job_elapsed_usec(p)), p->image ?: "");
        }
}

/* What list --json and status --json say about a running job. */
static struct json_object *job_status_to_json(const struct job_row *row)
{
        const struct job_properties *p = &row->props;
        struct json_object *o = json_object_new_object();
        uint64_t done, total;
        bool has_bytes = job_phase_bytes(p, &done, &total);

        json_object_object_add(o, "id", json_object_new_int64(row->id));
        json_object_object_add(o, "job", json_object_new_string(row->path));
        json_object_object_add(o, "image", json_string_or_null(p->image));
        json_object_object_add(o, "state", json_string_or_null(p->state));
        json_object_object_add(o, "phase", json_string_or_null(p->phase));
        json_object_object_add(o, "progress", json_object_new_double(p->progress));
        json_object_object_add(o, "phase_bytes_done",
                               has_bytes ? json_object_new_uint64(done) : NULL);
        json_object_object_add(o, "phase_bytes_total",
                               has_bytes ? json_object_new_uint64(total) : NULL);
        json_object_object_add(o, "seconds",
                               p->started_at ? json_seconds(job_elapsed_usec(p)) : NULL);
        json_object_object_add(o, "queued_seconds",
                               p->queued_at ? json_seconds(job_queued_usec(p)) : NULL);
        json_object_object_add(o, "virtual_size", json_object_new_uint64(p->virtual_size));
        json_object_object_add(o, "bytes_before", json_object_new_uint64(p->bytes_before));
        json_object_object_add(o, "bytes_trimmed", json_object_new_uint64(p->bytes_trimmed));
        return o;
}

static void print_jobs_json(const struct job_row *rows, size_t n_rows)
{
        _cleanup_(json_object_putp) struct json_object *array = json_object_new_array();

        for (size_t i = 0; i < n_rows; i++)
                json_object_array_add(array, job_status_to_json(&rows[i]));
        json_print(array);
}

static int verb_list(sd_bus *bus, char **args, size_t n_args)
{
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        struct job_row *rows = NULL;
        size_t n_rows = 0;
        int r;

        r = bus_call_method(bus, "cannot list the jobs", QTRIM_MANAGER_PATH, QTRIM_MANAGER_IFACE,
                            "ListJobs", NULL, &reply, NULL);
        if (r < 0)
                return r;

        r = read_job_rows(bus, reply, &rows, &n_rows);
        if (r < 0)
                return r;

        if (arg_json)
                print_jobs_json(rows, n_rows);
        else
                print_job_table(rows, n_rows);
        job_rows_free(rows, n_rows);
        return EXIT_SUCCESS;
}

/* cancel, status, wait: jobs named by id or object path */

/* A job named by its id ("3") or its object path ("/org/qtrim1/job/3"). */
static int job_path_from_argument(const char *argument, char **ret)
{
        const char *prefix = QTRIM_JOB_PATH_PREFIX "/";
        uint64_t id;

        if (parse_u64(argument, &id) >= 0)
                return asprintf(ret, QTRIM_JOB_PATH_PREFIX "/%" PRIu64, id) < 0 ? -ENOMEM : 0;
        if (!sd_bus_object_path_is_valid(argument) ||
            strncmp(argument, prefix, strlen(prefix)) != 0 ||
            parse_u64(argument + strlen(prefix), &id) < 0)
                return -EINVAL;
        *ret = strdup(argument);
        return *ret ? 0 : -ENOMEM;
}

/* The object paths of the jobs named (check_verb has checked each names one). */
static int job_paths_from_arguments(char **args, size_t n_args, char ***ret)
{
        char **paths = calloc(n_args + 1, sizeof(*paths));
        int r = paths ? 0 : -ENOMEM;

        for (size_t i = 0; r >= 0 && i < n_args; i++) {
                r = job_path_from_argument(args[i], &paths[i]);
        }
        if (r < 0) {
                log_errno(r, "failed to read the jobs named");
                for (size_t i = 0; paths && i < n_args; i++)
                        free(paths[i]);
                free(paths);
                return r;
        }
        *ret = paths;
        return 0;
}

static void print_no_such_job(const char *path)
{
        fprintf(stderr,
                "qtrimctl: job %s: no such job (it has ended, or never existed); see "
                "qtrimctl list\n",
                job_id_of(path));
}

static int verb_cancel(sd_bus *bus, char **args, size_t n_args)
{
        _cleanup_(strv_freep) char **paths = NULL;
        int r, status = EXIT_SUCCESS;

        r = job_paths_from_arguments(args, n_args, &paths);
        if (r < 0)
                return r;

        for (size_t i = 0; i < n_args; i++) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                _cleanup_free_ char *image = NULL;
                _cleanup_free_ char *what = NULL;

                if (asprintf(&what, "job %s", job_id_of(paths[i])) < 0)
                        return log_errno(-ENOMEM, "failed to cancel %s", args[i]);
                /* Which image, to say what was canceled. */
                r = sd_bus_get_property_string(bus, QTRIM_BUS_NAME, paths[i], QTRIM_JOB_IFACE,
                                               "Image", &error, &image);
                if (r >= 0)
                        r = bus_call_method(bus, NULL, paths[i], QTRIM_JOB_IFACE, "Cancel", &error,
                                            NULL, NULL);
                if (r < 0 && bus_error_is_job_gone(&error)) {
                        print_no_such_job(paths[i]);
                        status = EXIT_FAILURE;
                } else if (r < 0) {
                        print_bus_error(&error, r, "%s: cannot cancel", what);
                        if (bus_error_is_daemon_missing(&error))
                                return EXIT_FAILURE;
                        status = EXIT_FAILURE;
                } else {
                        printf("%s (%s): canceling; it ends once its worker has cleaned up\n", what,
                               image);
                }
        }
        return status;
}

static void print_job_status(const struct job_row *row)
{
        const struct job_properties *p = &row->props;
        char a[FORMAT_BYTES_MAX], b[FORMAT_BYTES_MAX], t[FORMAT_DURATION_MAX];
        uint64_t done, total;

        printf("job %" PRIu32 ": %s\n", row->id, p->image ?: "");
        printf("  state:     %s\n", p->state ?: "unknown");
        printf("  phase:     %s, %.0f%% of the job", p->phase ?: "unknown", p->progress * 100);
        if (job_phase_bytes(p, &done, &total))
                printf(", %s of %s %s", format_bytes(a, done), format_bytes(b, total),
                       strcmp(p->phase, "trim") == 0 ? "of its volumes trimmed through"
                                                     : "of the disk copied through");
        printf("\n");
        if (p->started_at > 0) {
                printf("  elapsed:   %s", format_duration(t, job_elapsed_usec(p)));
                if (job_queued_usec(p) > 1000000)
                        printf(", after %s queued", format_duration(t, job_queued_usec(p)));
                printf("\n");
        } else if (p->queued_at > 0) {
                printf("  queued:    %s\n", format_duration(t, job_elapsed_usec(p)));
        }
        if (p->bytes_before > 0)
                printf("  allocated: %s before, %s trimmed so far\n",
                       format_bytes(a, p->bytes_before), format_bytes(b, p->bytes_trimmed));
}

static int verb_status(sd_bus *bus, char **args, size_t n_args)
{
        _cleanup_(strv_freep) char **paths = NULL;
        struct job_row row = {};
        int r;

        r = job_paths_from_arguments(args, n_args, &paths);
        if (r < 0)
                return r;

        r = job_get_properties(bus, paths[0], &row.props);
        if (r == 0)
                print_no_such_job(paths[0]);
        if (r <= 0)
                return r == 0 ? EXIT_FAILURE : r;

        row.path = paths[0];
        row.id = (uint32_t)strtoul(job_id_of(paths[0]), NULL, 10);
        if (arg_json) {
                _cleanup_(json_object_putp) struct json_object *o = job_status_to_json(&row);
                json_print(o);
        } else {
                print_job_status(&row);
        }
        job_properties_done(&row.props);
        return EXIT_SUCCESS;
}

static int verb_wait(sd_bus *bus, char **args, size_t n_args)
{
        _cleanup_(strv_freep) char **paths = NULL;
        int r;

        r = job_paths_from_arguments(args, n_args, &paths);
        if (r < 0)
                return r;
        return wait_jobs(bus, paths, n_args, arg_json);
}

static int verb_inspect(sd_bus *bus, char **args, size_t n_args)
{
        if (arg_domain)
                return inspect_domain(bus, arg_domain, arg_json);
        return inspect_image(bus, args[0], arg_format, arg_json);
}

/* Command line */

enum {
        OPTION_NO_BLOCK = 1 << 0,
        OPTION_NO_CONVERT = 1 << 1,
        OPTION_JSON = 1 << 2,
        OPTION_ALL = 1 << 3,
        OPTION_FORMAT = 1 << 4,
        OPTION_KEEP_GAPS = 1 << 5,
        OPTION_VERBOSE = 1 << 6,
        OPTION_DOMAIN = 1 << 8,
        OPTION_ONLINE = 1 << 9,
        OPTION_DRY_RUN = 1 << 7,
};

static const struct verb_option {
        unsigned flag;
        const char *name;
        const char *help;
} verb_options[] = {
    {OPTION_NO_BLOCK, "--no-block", "Queue the jobs, print their object paths and return"},
    {OPTION_NO_CONVERT, "--no-convert", "Only trim: do not write a compact copy"},
    {OPTION_JSON, "--json", "Print the result as JSON on stdout"},
    {OPTION_ALL, "--all",
     "Every image in qtrimd's image directories written to since its last shrink"},
    {OPTION_KEEP_GAPS, "--keep-gaps", "Leave the space outside the partitions as it is"},
    {OPTION_FORMAT, "--format=FMT",
     "The images are raw or qcow2: no guessing, and content that disagrees is refused"},
    {OPTION_DRY_RUN, "--dry-run",
     "Only say what a shrink would give back (an estimate); change nothing"},
    {OPTION_VERBOSE, "--verbose", "Name the D-Bus error in error messages"},
    {OPTION_DOMAIN, "--domain=NAME", "The disks of a libvirt domain, instead of images"},
    {OPTION_ONLINE, "--online",
     "With --domain: the domain runs; its guest trims through qemu-guest-agent"},
};

static const struct verb {
        const char *name;
        const char *arguments;
        const char *summary;
        size_t min_args;
        size_t max_args;
        unsigned options; /* the OPTION_* flags that apply */
        int (*run)(sd_bus *bus, char **args, size_t n_args);
} verbs[] = {
    {"shrink", "IMAGE...|--all", "Trim the guest filesystems of each image and compact it", 1,
     SIZE_MAX,
     OPTION_NO_BLOCK | OPTION_NO_CONVERT | OPTION_JSON | OPTION_ALL | OPTION_FORMAT |
         OPTION_KEEP_GAPS | OPTION_DRY_RUN | OPTION_DOMAIN | OPTION_ONLINE,
     verb_shrink},
    {"list", "", "List the jobs queued or running in qtrimd", 0, 0, OPTION_JSON, verb_list},
    {"status", "JOB", "Show where a job is: state, phase, progress, time, bytes", 1, 1, OPTION_JSON,
     verb_status},
    {"wait", "JOB...", "Wait for jobs to end and report them as shrink does", 1, SIZE_MAX,
     OPTION_JSON, verb_wait},
    {"cancel", "JOB...", "Cancel jobs, named by id or object path", 1, SIZE_MAX, 0, verb_cancel},
    {"inspect", "IMAGE", "Show the format, sizes and filesystems of an image", 1, 1,
     OPTION_JSON | OPTION_FORMAT | OPTION_DOMAIN, verb_inspect},
    /* Answered while the command line is read: needs no bus. */
    {"help", "[COMMAND]", "Show this help, or a command's", 0, 1, 0, NULL},
};

/* Levenshtein distance, for "did you mean". Verb names are short. */
static size_t edit_distance(const char *a, const char *b)
{
        size_t la = strlen(a), lb = strlen(b);
        if (la > 32 || lb > 32)
                return SIZE_MAX;
        size_t row[33];

        for (size_t j = 0; j <= lb; j++)
                row[j] = j;
        for (size_t i = 1; i <= la; i++) {
                size_t diagonal = row[0];
                row[0] = i;
                for (size_t j = 1; j <= lb; j++) {
                        size_t above = row[j];
                        row[j] =
                            MIN(MIN(row[j] + 1, row[j - 1] + 1), diagonal + (a[i - 1] != b[j - 1]));
                        diagonal = above;
                }
        }
        return row[lb];
}

/* Returns the verb, or NULL after saying on stderr that there is none by that name. */
static const struct verb *find_verb(const char *name)
{
        const struct verb *closest = NULL;
        size_t closest_distance = SIZE_MAX;

        for (size_t i = 0; i < ELEMENTSOF(verbs); i++) {
                if (strcmp(verbs[i].name, name) == 0)
                        return &verbs[i];
                size_t d = edit_distance(verbs[i].name, name);
                if (d < closest_distance) {
                        closest = &verbs[i];
                        closest_distance = d;
                }
        }
        /* Up to two edits, and fewer than half the word: "shirnk", not "ls" for "list". */
        if (closest && closest_distance <= 2 && closest_distance * 2 < strlen(name))
                fprintf(stderr,
                        "qtrimctl: unknown command \"%s\"; did you mean \"%s\"? See qtrimctl "
                        "--help\n",
                        name, closest->name);
        else
                fprintf(stderr, "qtrimctl: unknown command \"%s\"; see qtrimctl --help\n", name);
        return NULL;
}

static void print_help(void)
{
        printf("qtrimctl [OPTIONS...] COMMAND ...\n\n"
               "Give back the host disk space that deleted guest files hold in QEMU disk "
               "images.\n\nCommands:\n");
        for (size_t i = 0; i < ELEMENTSOF(verbs); i++) {
                char synopsis[32];

                snprintf(synopsis, sizeof(synopsis), "%s %s", verbs[i].name, verbs[i].arguments);
                printf("  %-22s %s\n", synopsis, verbs[i].summary);
        }

        printf("\nOptions:\n"
               "  -h --help             Show this help, or a command's with COMMAND --help\n"
               "     --version          Show the version\n");
        for (size_t i = 0; i < ELEMENTSOF(verb_options); i++)
                printf("     %-18s %s\n", verb_options[i].name, verb_options[i].help);
}

static void print_verb_help(const struct verb *verb)
{
        printf("qtrimctl %s%s%s%s\n\n%s.\n", verb->name, verb->options ? " [OPTIONS...]" : "",
               *verb->arguments ? " " : "", verb->arguments, verb->summary);
        if (!verb->options)
                return;

        printf("\nOptions:\n");
        for (size_t i = 0; i < ELEMENTSOF(verb_options); i++)
                if (verb->options & verb_options[i].flag)
                        printf("  %-14s %s\n", verb_options[i].name, verb_options[i].help);
}

/* Every verb takes these. */
#define OPTIONS_GLOBAL OPTION_VERBOSE

/* Checks what getopt_long cannot: the verb, that the options given apply to it, and its
 * arguments. */
static int check_verb(const struct verb *verb, unsigned options_given, char **args, size_t n_args)
{
        for (size_t i = 0; i < ELEMENTSOF(verb_options); i++)
                if (options_given & verb_options[i].flag & ~(verb->options | OPTIONS_GLOBAL)) {
                        fprintf(stderr,
                                "qtrimctl: %s does not apply to %s; see qtrimctl %s --help\n",
                                verb_options[i].name, verb->name, verb->name);
                        return -EINVAL;
                }

        if (arg_online && (!arg_domain || arg_no_convert || arg_keep_gaps)) {
                fprintf(stderr, "qtrimctl: --online goes with --domain (a running domain's "
                                "guest trims; there is nothing to convert or keep); see "
                                "qtrimctl shrink --help\n");
                return -EINVAL;
        }
        if (arg_domain && (n_args > 0 || arg_all || arg_format || arg_dry_run)) {
                fprintf(stderr,
                        "qtrimctl: --domain names the disks: it takes no images, nor "
                        "--all, --format (the domain says) or --dry-run; see qtrimctl "
                        "%s --help\n",
                        verb->name);
                return -EINVAL;
        }
        if (arg_all) {
                if (n_args > 0 || arg_no_block || arg_format || arg_keep_gaps) {
                        fprintf(stderr, "qtrimctl: --all takes no images and goes with "
                                        "--no-convert, --json and --dry-run only (the sweep's "
                                        "formats and "
                                        "gaps are set with Formats= and TrimGaps= in "
                                        "qtrimd.conf); see qtrimctl shrink --help\n");
                        return -EINVAL;
                }
                return 0;
        }
        if ((n_args < verb->min_args && !arg_domain) || n_args > verb->max_args) {
                fprintf(stderr, "qtrimctl: %s takes %s; see qtrimctl %s --help\n", verb->name,
                        *verb->arguments ? verb->arguments : "no arguments", verb->name);
                return -EINVAL;
        }
        bool takes_jobs = strncmp(verb->arguments, "JOB", 3) == 0;
        for (size_t i = 0; i < n_args; i++) {
                _cleanup_free_ char *path = NULL;

                if (!*args[i]) {
                        fprintf(stderr, "qtrimctl: %s: argument %zu is empty; name %s\n",
                                verb->name, i + 1, takes_jobs ? "a job" : "an image file");
                        return -EINVAL;
                }
                if (takes_jobs && job_path_from_argument(args[i], &path) == -EINVAL) {
                        fprintf(stderr,
                                "qtrimctl: %s: not a job id or object path; see qtrimctl list\n",
                                args[i]);
                        return -EINVAL;
                }
        }

        if (arg_no_block && arg_json) {
                fprintf(stderr, "qtrimctl: --json reports finished jobs and cannot be combined "
                                "with --no-block; see qtrimctl shrink --help\n");
                return -EINVAL;
        }
        if (arg_no_block && arg_dry_run) {
                fprintf(stderr, "qtrimctl: --dry-run starts no job and cannot be combined with "
                                "--no-block; see qtrimctl shrink --help\n");
                return -EINVAL;
        }
        return 0;
}

/* Returns 1 with the verb to run and its arguments, 0 when help or the version has been
 * answered, or -EINVAL when the command line is wrong (already said on stderr). */
static int parse_argv(int argc, char *argv[], const struct verb **ret_verb, char ***ret_args,
                      size_t *ret_n_args)
{
        enum {
                ARG_VERSION = 0x100,
                ARG_NO_BLOCK,
                ARG_NO_CONVERT,
                ARG_JSON,
                ARG_ALL,
                ARG_FORMAT,
                ARG_KEEP_GAPS,
                ARG_VERBOSE,
                ARG_DRY_RUN,
                ARG_DOMAIN,
                ARG_ONLINE,
        };
        static const struct option options[] = {
            {"help", no_argument, NULL, 'h'},
            {"version", no_argument, NULL, ARG_VERSION},
            {"no-block", no_argument, NULL, ARG_NO_BLOCK},
            {"no-convert", no_argument, NULL, ARG_NO_CONVERT},
            {"json", no_argument, NULL, ARG_JSON},
            {"all", no_argument, NULL, ARG_ALL},
            {"format", required_argument, NULL, ARG_FORMAT},
            {"keep-gaps", no_argument, NULL, ARG_KEEP_GAPS},
            {"verbose", no_argument, NULL, ARG_VERBOSE},
            {"dry-run", no_argument, NULL, ARG_DRY_RUN},
            {"domain", required_argument, NULL, ARG_DOMAIN},
            {"online", no_argument, NULL, ARG_ONLINE},
            {},
        };
        bool help = false;
        unsigned options_given = 0;
        int c, r;

        /* getopt's own messages name argv[0] and do not point to --help: ours do. */
        opterr = 0;
        while ((c = getopt_long(argc, argv, ":h", options, NULL)) >= 0) {
                switch (c) {
                case 'h':
                        help = true;
                        break;
                case ARG_VERSION:
                        printf("qtrimctl %s\n", QTRIM_VERSION);
                        return 0;
                case ARG_NO_BLOCK:
                        arg_no_block = true;
                        options_given |= OPTION_NO_BLOCK;
                        break;
                case ARG_NO_CONVERT:
                        arg_no_convert = true;
                        options_given |= OPTION_NO_CONVERT;
                        break;
                case ARG_JSON:
                        arg_json = true;
                        options_given |= OPTION_JSON;
                        break;
                case ARG_ALL:
                        arg_all = true;
                        options_given |= OPTION_ALL;
                        break;
                case ARG_KEEP_GAPS:
                        arg_keep_gaps = true;
                        options_given |= OPTION_KEEP_GAPS;
                        break;
                case ARG_VERBOSE:
                        log_verbose = true;
                        options_given |= OPTION_VERBOSE;
                        break;
                case ARG_DOMAIN:
                        arg_domain = optarg;
                        options_given |= OPTION_DOMAIN;
                        break;
                case ARG_ONLINE:
                        arg_online = true;
                        options_given |= OPTION_ONLINE;
                        break;
                case ARG_DRY_RUN:
                        arg_dry_run = true;
                        options_given |= OPTION_DRY_RUN;
                        break;
                case ARG_FORMAT:
                        if (strcmp(optarg, "raw") != 0 && strcmp(optarg, "qcow2") != 0) {
                                fprintf(stderr,
                                        "qtrimctl: --format takes raw or qcow2, not \"%s\"; see "
                                        "qtrimctl --help\n",
                                        optarg);
                                return -EINVAL;
                        }
                        arg_format = optarg;
                        options_given |= OPTION_FORMAT;
                        break;
                case ':':
                        fprintf(stderr, "qtrimctl: %s needs a value; see qtrimctl --help\n",
                                argv[optind - 1]);
                        return -EINVAL;
                default:
                        /* optopt is the letter of an unknown short option, 0 for a long one. */
                        if (optopt)
                                fprintf(stderr,
                                        "qtrimctl: unknown option -%c; see qtrimctl --help\n",
                                        optopt);
                        else
                                fprintf(stderr,
                                        "qtrimctl: unknown option %s; see qtrimctl --help\n",
                                        argv[optind - 1]);
                        return -EINVAL;
                }
        }

        const struct verb *verb = NULL;
        if (optind < argc) {
                verb = find_verb(argv[optind]);
                if (!verb)
                        return -EINVAL;
        }

        size_t n_args = verb ? (size_t)(argc - optind - 1) : 0;
        char **args = argv + optind + 1;

        /* "help", "help COMMAND", "COMMAND --help" (and "help --help", help's own). */
        if (verb && !verb->run && !help) {
                const struct verb *about = NULL;
                if (n_args > 1) {
                        fprintf(stderr, "qtrimctl: help takes [COMMAND]; see qtrimctl --help\n");
                        return -EINVAL;
                }
                if (n_args == 1 && !(about = find_verb(args[0])))
                        return -EINVAL;
                verb = about;
                help = true;
        }
        if (help) {
                if (verb)
                        print_verb_help(verb);
                else
                        print_help();
                return 0;
        }

        if (!verb) {
                fprintf(stderr, "qtrimctl: no command given; see qtrimctl --help\n");
                return -EINVAL;
        }

        r = check_verb(verb, options_given, args, n_args);
        if (r < 0)
                return r;

        *ret_verb = verb;
        *ret_args = args;
        *ret_n_args = n_args;
        return 1;
}

/* Returns the exit status. */
static int run(int argc, char *argv[])
{
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        const struct verb *verb;
        char **args;
        size_t n_args;
        int r;

        r = parse_argv(argc, argv, &verb, &args, &n_args);
        if (r <= 0)
                return r < 0 ? EXIT_USAGE : EXIT_SUCCESS;

        r = bus_connect(&bus);
        if (r < 0)
                return EXIT_FAILURE;

        r = verb->run(bus, args, n_args);
        return r < 0 ? EXIT_FAILURE : r;
}

int main(int argc, char *argv[])
{
        /* The locale's charset decides "→" or "->"; numbers stay C for JSON. */
        setlocale(LC_ALL, "");
        setlocale(LC_NUMERIC, "C");
        glyphs_init();

        int status = run(argc, argv);

        /* Output that never arrived is a failure too, e.g. a full disk behind stdout. */
        if (fflush(stdout) != 0 && status == EXIT_SUCCESS) {
                log_errno(-errno, "failed to write to stdout");
                status = EXIT_FAILURE;
        }
        return status;
}
