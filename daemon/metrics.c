/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "metrics.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <sys/stat.h>

#include "state-dir.h"
#include "util.h"

/* An image's line per metric: a sweep of a whole pool is a few hundred at most. Past this, the
 * image whose last job is the oldest makes room. */
#define METRICS_MAX_IMAGES 4096
/* What qtrimd reads back of a file of its own; more is not one it wrote. */
#define METRICS_FILE_MAX (8u << 20)

enum result { RESULT_DONE, RESULT_FAILED, RESULT_CANCELED, RESULT_INTERRUPTED, _RESULT_MAX };

static const char *const result_names[_RESULT_MAX] = {
    [RESULT_DONE] = "done",
    [RESULT_FAILED] = "failed",
    [RESULT_CANCELED] = "canceled",
    [RESULT_INTERRUPTED] = "interrupted",
};

struct image_numbers {
        char *image; /* valid UTF-8: the label value before escaping */
        uint64_t before, after;
        uint64_t at_usec; /* CLOCK_REALTIME of the job's end */
};

struct metrics {
        char *path;
        sd_event_source *write_later; /* one write for all the jobs that ended in one turn */
        bool pending;
        bool failing; /* a write failed and was logged: not again until one succeeds */
        uint64_t jobs[_RESULT_MAX];
        uint64_t reclaimed, grown;
        uint64_t last_sweep_usec; /* 0: no sweep yet */
        struct image_numbers *images;
        size_t n_images;
};

static int result_from_name(const char *name)
{
        for (int i = 0; i < _RESULT_MAX; i++)
                if (strcmp(name, result_names[i]) == 0)
                        return i;
        return -EINVAL;
}

/* The numbers of an image (name: valid UTF-8), made if new. */
static struct image_numbers *image_get(struct metrics *m, const char *image)
{
        for (size_t i = 0; i < m->n_images; i++)
                if (strcmp(m->images[i].image, image) == 0)
                        return &m->images[i];
        char *copy = strdup(image);
        if (!copy)
                return NULL;
        struct image_numbers *slot;
        if (m->n_images < METRICS_MAX_IMAGES) {
                slot = reallocarray(m->images, m->n_images + 1, sizeof(*m->images));
                if (!slot) {
                        free(copy);
                        return NULL;
                }
                m->images = slot;
                slot = &m->images[m->n_images++];
        } else {
                slot = &m->images[0];
                for (size_t i = 1; i < m->n_images; i++)
                        if (m->images[i].at_usec < slot->at_usec)
                                slot = &m->images[i];
                free(slot->image);
        }
        *slot = (struct image_numbers){.image = copy};
        return slot;
}

/* A label value as the text format wants it: backslash, double quote and newline escaped. */
static void put_label_value(FILE *f, const char *s)
{
        for (; *s; s++)
                if (*s == '\\')
                        fputs("\\\\", f);
                else if (*s == '"')
                        fputs("\\\"", f);
                else if (*s == '\n')
                        fputs("\\n", f);
                else
                        fputc(*s, f);
}

static void put_seconds(FILE *f, uint64_t usec)
{
        fprintf(f, "%" PRIu64 ".%06" PRIu64 "\n", usec / 1000000u, usec % 1000000u);
}

static void put_header(FILE *f, const char *name, const char *type, const char *help)
{
        fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

enum image_value { IMAGE_BEFORE, IMAGE_AFTER, IMAGE_AT };

static void put_per_image(FILE *f, const struct metrics *m, const char *name,
                          enum image_value which)
{
        for (size_t i = 0; i < m->n_images; i++) {
                const struct image_numbers *n = &m->images[i];
                fprintf(f, "%s{image=\"", name);
                put_label_value(f, n->image);
                fputs("\"} ", f);
                if (which == IMAGE_AT)
                        put_seconds(f, n->at_usec);
                else
                        fprintf(f, "%" PRIu64 "\n", which == IMAGE_BEFORE ? n->before : n->after);
        }
}

static void put_metrics(FILE *f, const struct metrics *m)
{
        put_header(f, "qtrim_jobs_total", "counter",
                   "Shrink jobs that ended, by result (interrupted: qtrimd stopped in the middle "
                   "of them).");
        for (int i = 0; i < _RESULT_MAX; i++)
                fprintf(f, "qtrim_jobs_total{result=\"%s\"} %" PRIu64 "\n", result_names[i],
                        m->jobs[i]);
        put_header(f, "qtrim_reclaimed_bytes_total", "counter",
                   "Host bytes jobs gave back: allocation before minus after, where positive.");
        fprintf(f, "qtrim_reclaimed_bytes_total %" PRIu64 "\n", m->reclaimed);
        put_header(f, "qtrim_grown_bytes_total", "counter",
                   "Host bytes images grew by in jobs: allocation after minus before, where "
                   "positive.");
        fprintf(f, "qtrim_grown_bytes_total %" PRIu64 "\n", m->grown);
        put_header(f, "qtrim_last_sweep_timestamp_seconds", "gauge",
                   "When the last job of a sweep (qtrimctl shrink --all) ended, Unix time.");
        if (m->last_sweep_usec) {
                fputs("qtrim_last_sweep_timestamp_seconds ", f);
                put_seconds(f, m->last_sweep_usec);
        }
        put_header(f, "qtrim_image_allocated_before_bytes", "gauge",
                   "Host bytes allocated to the image file when its last job began.");
        put_per_image(f, m, "qtrim_image_allocated_before_bytes", IMAGE_BEFORE);
        put_header(f, "qtrim_image_allocated_after_bytes", "gauge",
                   "Host bytes allocated to the image file when its last job ended.");
        put_per_image(f, m, "qtrim_image_allocated_after_bytes", IMAGE_AFTER);
        put_header(f, "qtrim_image_last_job_timestamp_seconds", "gauge",
                   "When the image's last job ended, Unix time.");
        put_per_image(f, m, "qtrim_image_last_job_timestamp_seconds", IMAGE_AT);
}

/* The whole text, then state_write_atomic(): a reader (the collector, qtrimd at its next start)
 * sees the old file or the new one; PATH.new does not end in .prom, so the collector skips it. */
static int write_file(const struct metrics *m)
{
        _cleanup_free_ char *text = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&text, &size);
        if (!f)
                return -ENOMEM;
        put_metrics(f, m);
        if (fclose(f) != 0)
                return -ENOMEM;
        /* The collector may run as another user. */
        return state_write_atomic(m->path, text, 0644);
}

static void write_now(struct metrics *m)
{
        m->pending = false;
        int r = write_file(m);
        if (r < 0 && !m->failing)
                fprintf(stderr,
                        "qtrimd: cannot write the metrics file %s: %s; jobs go on, the "
                        "file is tried again after the next one\n",
                        m->path, strerror(-r));
        else if (r >= 0 && m->failing)
                fprintf(stderr, "qtrimd: wrote the metrics file %s again\n", m->path);
        m->failing = r < 0;
}

static int on_write_later(sd_event_source *s, void *userdata)
{
        write_now(userdata);
        return 0;
}

static void changed(struct metrics *m)
{
        m->pending = true;
        if (sd_event_source_set_enabled(m->write_later, SD_EVENT_ONESHOT) < 0)
                write_now(m);
}

/* Reads a label value back (the inverse of put_label_value); p points after the opening quote.
 * Returns the end of the value (its closing quote) or NULL. */
static char *unescape_label_value(char *p)
{
        char *out = p;
        for (; *p && *p != '"'; p++) {
                if (*p == '\\') {
                        p++;
                        if (*p == 'n')
                                *out++ = '\n';
                        else if (*p == '\\' || *p == '"')
                                *out++ = *p;
                        else
                                return NULL;
                } else
                        *out++ = *p;
        }
        if (*p != '"')
                return NULL;
        *out = '\0';
        return p;
}

static int parse_seconds_usec(const char *s, uint64_t *ret)
{
        char *end;
        errno = 0;
        double d = strtod(s, &end);
        if (errno || end == s || *end || !(d >= 0 && d < 1e12))
                return -EINVAL;
        *ret = (uint64_t)(d * 1e6 + 0.5);
        return 0;
}

/* One sample line of a file qtrimd wrote: NAME[{KEY="VALUE"}] NUMBER. What it does not know
 * (an older or newer qtrimd's metric) is left out. */
static void read_back_line(struct metrics *m, char *line)
{
        char *label = NULL, *value = strchr(line, ' ');
        char *brace = strchr(line, '{');
        if (brace && (!value || brace < value)) {
                *brace = '\0';
                char *q = strchr(brace + 1, '"');
                if (!q)
                        return;
                label = q + 1;
                char *end = unescape_label_value(label);
                if (!end || end[1] != '}' || end[2] != ' ')
                        return;
                value = end + 2;
        }
        if (!value)
                return;
        *value++ = '\0';
        uint64_t n;
        if (!label && strcmp(line, "qtrim_last_sweep_timestamp_seconds") == 0) {
                (void)parse_seconds_usec(value, &m->last_sweep_usec);
                return;
        }
        if (!label && strcmp(line, "qtrim_reclaimed_bytes_total") == 0) {
                (void)parse_u64(value, &m->reclaimed);
                return;
        }
        if (!label && strcmp(line, "qtrim_grown_bytes_total") == 0) {
                (void)parse_u64(value, &m->grown);
                return;
        }
        if (!label)
                return;
        if (strcmp(line, "qtrim_jobs_total") == 0) {
                int r = result_from_name(label);
                if (r >= 0)
                        (void)parse_u64(value, &m->jobs[r]);
                return;
        }
        bool before = strcmp(line, "qtrim_image_allocated_before_bytes") == 0;
        bool after = strcmp(line, "qtrim_image_allocated_after_bytes") == 0;
        bool at = strcmp(line, "qtrim_image_last_job_timestamp_seconds") == 0;
        if (!before && !after && !at)
                return;
        struct image_numbers *img = image_get(m, label);
        if (!img)
                return;
        if (at)
                (void)parse_seconds_usec(value, &img->at_usec);
        else if (parse_u64(value, &n) >= 0)
                *(before ? &img->before : &img->after) = n;
}

/* What the last qtrimd wrote; a file that is missing, too big or not readable starts afresh. */
static void read_back(struct metrics *m)
{
        _cleanup_fclose_ FILE *f = fopen(m->path, "re");
        if (!f)
                return;
        _cleanup_free_ char *text = malloc(METRICS_FILE_MAX + 1);
        if (!text)
                return;
        size_t len = fread(text, 1, METRICS_FILE_MAX + 1, f);
        if (ferror(f) || len > METRICS_FILE_MAX)
                return;
        text[len] = '\0';
        for (char *line = text, *next; line && *line; line = next) {
                next = strchr(line, '\n');
                if (next)
                        *next++ = '\0';
                if (line[0] != '#')
                        read_back_line(m, line);
        }
}

int metrics_new(sd_event *event, const char *path, struct metrics **ret)
{
        *ret = NULL;
        if (!path)
                return 0;
        struct metrics *m = calloc(1, sizeof(*m));
        if (!m || !(m->path = strdup(path))) {
                free(m);
                return -ENOMEM;
        }
        int r = sd_event_add_defer(event, &m->write_later, on_write_later, m);
        if (r >= 0)
                r = sd_event_source_set_enabled(m->write_later, SD_EVENT_OFF);
        if (r < 0) {
                metrics_free(m);
                return r;
        }
        read_back(m);
        /* At once, not after the first job: an unwritable path is said at start, and the
         * collector sees qtrimd from then on. */
        changed(m);
        *ret = m;
        return 0;
}

void metrics_free(struct metrics *m)
{
        if (!m)
                return;
        if (m->pending)
                write_now(m);
        sd_event_source_disable_unref(m->write_later);
        for (size_t i = 0; i < m->n_images; i++)
                free(m->images[i].image);
        free(m->images);
        free(m->path);
        free(m);
}

void metrics_job_ended(struct metrics *m, const struct metrics_job *job)
{
        if (!m)
                return;
        int r = result_from_name(job->result);
        if (r >= 0)
                m->jobs[r]++;
        if (job->bytes_before >= job->bytes_after)
                m->reclaimed += job->bytes_before - job->bytes_after;
        else
                m->grown += job->bytes_after - job->bytes_before;
        if (job->sweep)
                m->last_sweep_usec = job->finished_at;
        /* The text format is UTF-8; a path need not be. */
        _cleanup_free_ char *name = strdup(job->image);
        struct image_numbers *img = name ? image_get(m, utf8_sanitize(name)) : NULL;
        if (img) {
                img->before = job->bytes_before;
                img->after = job->bytes_after;
                img->at_usec = job->finished_at;
        }
        changed(m);
}

void metrics_jobs_interrupted(struct metrics *m, unsigned n)
{
        if (!m || n == 0)
                return;
        m->jobs[RESULT_INTERRUPTED] += n;
        changed(m);
}
