/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qtrimctl: the command-line client of qtrimd. Parses the command line, connects to the system
 * bus and runs one verb; list and cancel live here, shrink in shrink.c, inspect in inspect.c.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <string.h>
#include <sys/param.h>

#include "common.h"
#include "config.h"
#include "dbus-api.h"
#include "inspect.h"
#include "shrink.h"
#include "util.h"

static bool arg_no_block = false;
static bool arg_no_convert = false;
static bool arg_json = false;
static bool arg_all = false;
static const char *arg_format = NULL;
static bool arg_keep_gaps = false;

static int verb_shrink(sd_bus *bus, char **args, size_t n_args)
{
        const struct shrink_options opts = {
            .block = !arg_no_block,
            .convert = !arg_no_convert,
            .json = arg_json,
            .format = arg_format,
            .keep_gaps = arg_keep_gaps,
        };

        if (arg_all)
                return sweep_image_directories(bus, &opts);
        return shrink_images(bus, args, n_args, &opts);
}

/* list */

struct job_row {
        uint32_t id;
        const char *image; /* strings point into the ListJobs reply */
        const char *state;
        const char *path;
        double progress;
};

/* Returns 1 with the progress, 0 if the job ended since ListJobs, or a negative errno. */
static int get_job_progress(sd_bus *bus, const char *path, double *ret)
{
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = sd_bus_get_property_trivial(bus, QTRIM_BUS_NAME, path, QTRIM_JOB_IFACE, "Progress",
                                        &error, 'd', ret);
        if (r >= 0)
                return 1;
        if (bus_error_is_job_gone(&error))
                return 0;
        print_bus_error(&error, r, "qtrimctl: failed to get the progress of %s", path);
        return r;
}

static int read_job_rows(sd_bus *bus, sd_bus_message *reply, struct job_row **ret_rows,
                         size_t *ret_n_rows)
{
        _cleanup_free_ struct job_row *rows = NULL;
        size_t n_rows = 0;
        struct job_row row;
        int r;

        r = sd_bus_message_enter_container(reply, 'a', "(usso)");
        if (r < 0)
                return log_errno(r, "failed to read the reply to ListJobs");

        while ((r = sd_bus_message_read(reply, "(usso)", &row.id, &row.image, &row.state,
                                        &row.path)) > 0) {
                r = get_job_progress(bus, row.path, &row.progress);
                if (r < 0)
                        return r;
                if (r == 0)
                        continue;

                struct job_row *grown = reallocarray(rows, n_rows + 1, sizeof(*rows));
                if (!grown)
                        return log_errno(-ENOMEM, "failed to list the jobs");
                rows = grown;
                rows[n_rows++] = row;
        }
        if (r < 0)
                return log_errno(r, "failed to read the reply to ListJobs");

        *ret_rows = TAKE_PTR(rows);
        *ret_n_rows = n_rows;
        return 0;
}

static void print_job_table(const struct job_row *rows, size_t n_rows)
{
        int id_width = (int)strlen("ID"), state_width = (int)strlen("STATE");

        if (n_rows == 0) {
                printf("No jobs.\n");
                return;
        }

        for (size_t i = 0; i < n_rows; i++) {
                id_width = MAX(id_width, snprintf(NULL, 0, "%" PRIu32, rows[i].id));
                state_width = MAX(state_width, (int)strlen(rows[i].state));
        }

        printf("%-*s  %-*s  %-8s  %s\n", id_width, "ID", state_width, "STATE", "PROGRESS", "IMAGE");
        for (size_t i = 0; i < n_rows; i++)
                printf("%*" PRIu32 "  %-*s  %7.0f%%  %s\n", id_width, rows[i].id, state_width,
                       rows[i].state, rows[i].progress * 100, rows[i].image);
}

static void print_jobs_json(const struct job_row *rows, size_t n_rows)
{
        _cleanup_(json_object_putp) struct json_object *array = json_object_new_array();

        for (size_t i = 0; i < n_rows; i++) {
                struct json_object *o = json_object_new_object();

                json_object_object_add(o, "id", json_object_new_int64(rows[i].id));
                json_object_object_add(o, "image", json_object_new_string(rows[i].image));
                json_object_object_add(o, "state", json_object_new_string(rows[i].state));
                json_object_object_add(o, "progress", json_object_new_double(rows[i].progress));
                json_object_object_add(o, "job", json_object_new_string(rows[i].path));
                json_object_array_add(array, o);
        }
        json_print(array);
}

static int verb_list(sd_bus *bus, char **args, size_t n_args)
{
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_free_ struct job_row *rows = NULL;
        size_t n_rows = 0;
        int r;

        r = bus_call_method(bus, "qtrimctl: failed to list the jobs", QTRIM_MANAGER_PATH,
                            QTRIM_MANAGER_IFACE, "ListJobs", NULL, &reply, NULL);
        if (r < 0)
                return r;

        r = read_job_rows(bus, reply, &rows, &n_rows);
        if (r < 0)
                return r;

        if (arg_json)
                print_jobs_json(rows, n_rows);
        else
                print_job_table(rows, n_rows);
        return EXIT_SUCCESS;
}

/* cancel */

/* A job named by its id ("3") or its object path ("/org/qtrim1/job/3"). */
static int job_path_from_argument(const char *argument, char **ret)
{
        uint64_t id;

        if (parse_u64(argument, &id) >= 0)
                return asprintf(ret, QTRIM_JOB_PATH_PREFIX "/%" PRIu64, id) < 0 ? -ENOMEM : 0;
        if (!sd_bus_object_path_is_valid(argument))
                return -EINVAL;
        *ret = strdup(argument);
        return *ret ? 0 : -ENOMEM;
}

static int verb_cancel(sd_bus *bus, char **args, size_t n_args)
{
        int r, status = EXIT_SUCCESS;

        for (size_t i = 0; i < n_args; i++) {
                _cleanup_free_ char *path = NULL;

                r = job_path_from_argument(args[i], &path);
                if (r == -EINVAL) {
                        fprintf(stderr, "%s: not a job id or object path\n", args[i]);
                        status = EXIT_FAILURE;
                        continue;
                }
                if (r < 0)
                        return log_errno(r, "failed to cancel %s", args[i]);

                r = bus_call_method(bus, args[i], path, QTRIM_JOB_IFACE, "Cancel", NULL, NULL,
                                    NULL);
                if (r < 0)
                        status = EXIT_FAILURE;
        }
        return status;
}

static int verb_inspect(sd_bus *bus, char **args, size_t n_args)
{
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
         OPTION_KEEP_GAPS,
     verb_shrink},
    {"list", "", "List the jobs queued or running in qtrimd", 0, 0, OPTION_JSON, verb_list},
    {"cancel", "JOB...", "Cancel jobs, named by id or object path", 1, SIZE_MAX, 0, verb_cancel},
    {"inspect", "IMAGE", "Show the format, sizes and filesystems of an image", 1, 1,
     OPTION_JSON | OPTION_FORMAT, verb_inspect},
};

static const struct verb *find_verb(const char *name)
{
        for (size_t i = 0; i < ELEMENTSOF(verbs); i++)
                if (strcmp(verbs[i].name, name) == 0)
                        return &verbs[i];
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
                printf("  %-18s %s\n", synopsis, verbs[i].summary);
        }

        printf("\nOptions:\n"
               "  -h --help          Show this help, or a command's with COMMAND --help\n"
               "     --version       Show the version\n");
        for (size_t i = 0; i < ELEMENTSOF(verb_options); i++)
                printf("     %-15s %s\n", verb_options[i].name, verb_options[i].help);
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

/* Checks what getopt_long cannot: the verb, that the options given apply to it, and its number
 * of arguments. */
static int check_verb(const struct verb *verb, unsigned options_given, size_t n_args)
{
        for (size_t i = 0; i < ELEMENTSOF(verb_options); i++)
                if (options_given & verb_options[i].flag & ~verb->options) {
                        fprintf(stderr, "qtrimctl: %s does not apply to %s\n", verb_options[i].name,
                                verb->name);
                        return -EINVAL;
                }

        if (arg_all) {
                if (n_args > 0 || arg_no_block || arg_json || arg_format || arg_keep_gaps) {
                        fprintf(stderr, "qtrimctl: --all takes no images and goes with "
                                        "--no-convert only (the sweep's formats and gaps are "
                                        "set with Formats= and TrimGaps= in qtrimd.conf)\n");
                        return -EINVAL;
                }
                return 0;
        }
        if (n_args < verb->min_args || n_args > verb->max_args) {
                fprintf(stderr, "qtrimctl: %s takes %s, see qtrimctl %s --help\n", verb->name,
                        *verb->arguments ? verb->arguments : "no arguments", verb->name);
                return -EINVAL;
        }

        if (arg_no_block && arg_json) {
                fprintf(stderr, "qtrimctl: --json reports finished jobs and cannot be combined "
                                "with --no-block\n");
                return -EINVAL;
        }
        return 0;
}

/* Returns 1 with the verb to run and its arguments, 0 when --help or --version has been
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
            {},
        };
        bool help = false;
        unsigned options_given = 0;
        int c, r;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
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
                case ARG_FORMAT:
                        if (strcmp(optarg, "raw") != 0 && strcmp(optarg, "qcow2") != 0) {
                                fprintf(stderr,
                                        "qtrimctl: --format takes raw or qcow2, not "
                                        "\"%s\"\n",
                                        optarg);
                                return -EINVAL;
                        }
                        arg_format = optarg;
                        options_given |= OPTION_FORMAT;
                        break;
                default: /* getopt_long has said what is wrong */
                        return -EINVAL;
                }
        }

        const struct verb *verb = NULL;
        if (optind < argc) {
                verb = find_verb(argv[optind]);
                if (!verb) {
                        fprintf(stderr, "qtrimctl: unknown command \"%s\", see qtrimctl --help\n",
                                argv[optind]);
                        return -EINVAL;
                }
        }

        if (help) {
                if (verb)
                        print_verb_help(verb);
                else
                        print_help();
                return 0;
        }

        if (!verb) {
                fprintf(stderr, "qtrimctl: no command given, see qtrimctl --help\n");
                return -EINVAL;
        }

        size_t n_args = (size_t)(argc - optind - 1);
        r = check_verb(verb, options_given, n_args);
        if (r < 0)
                return r;

        *ret_verb = verb;
        *ret_args = argv + optind + 1;
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
        int status = run(argc, argv);

        /* Output that never arrived is a failure too, e.g. a full disk behind stdout. */
        if (fflush(stdout) != 0 && status == EXIT_SUCCESS) {
                log_errno(-errno, "failed to write to stdout");
                status = EXIT_FAILURE;
        }
        return status;
}
