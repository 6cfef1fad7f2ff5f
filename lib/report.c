/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "report.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

enum field_type { FIELD_U64, FIELD_U32, FIELD_BOOL, FIELD_STR };

struct field {
        const char *key;      /* protocol key */
        const char *property; /* Job property it changes, NULL if not exposed */
        enum field_type type;
        size_t offset, size;
};

#define FIELD(k, prop, t, member)                                                                  \
        {                                                                                          \
                k, prop, t, offsetof(struct qt_report, member),                                    \
                    sizeof(((struct qt_report *)0)->member)                                        \
        }

static const struct field fields[] = {
    FIELD("format", "Format", FIELD_STR, format),
    FIELD("format-source", "FormatSource", FIELD_STR, format_source),
    FIELD("virtual-size", "VirtualSize", FIELD_U64, virtual_size),
    FIELD("bytes-before", "BytesBefore", FIELD_U64, bytes_before),
    FIELD("apparent-before", NULL, FIELD_U64, apparent_before),
    FIELD("cluster-size", NULL, FIELD_U64, cluster_size),
    FIELD("backing-file", NULL, FIELD_STR, backing_file),
    FIELD("backing-format", NULL, FIELD_STR, backing_format),
    FIELD("snapshots", NULL, FIELD_U32, snapshots),
    FIELD("bitmaps", NULL, FIELD_U32, bitmaps),
    FIELD("partition-table", NULL, FIELD_STR, partition_table),
    FIELD("bytes-trimmed", "BytesTrimmed", FIELD_U64, bytes_trimmed),
    FIELD("bytes-after", "BytesAfter", FIELD_U64, bytes_after),
    FIELD("apparent-after", NULL, FIELD_U64, apparent_after),
    FIELD("converted", "Converted", FIELD_BOOL, converted),
    FIELD("image-state", "ImageState", FIELD_STR, image_state),
    FIELD("nothing-to-trim", "NothingToTrim", FIELD_BOOL, nothing_to_trim),
    FIELD("message", "Message", FIELD_STR, message),
    FIELD("temp-file", NULL, FIELD_STR, temp_file),
    FIELD("attach-backend", "AttachBackend", FIELD_STR, attach_backend),
    FIELD("nbd-owner", NULL, FIELD_U64, nbd_owner),
    FIELD("nbd-device", "NbdDevice", FIELD_STR, nbd_device),
};

static const struct field *field_by_key(const char *key)
{
        for (size_t i = 0; i < ELEMENTSOF(fields); i++)
                if (strcmp(fields[i].key, key) == 0)
                        return &fields[i];
        return NULL;
}

/* Copies src into a fixed field, replacing the protocol's separators so any string round-trips
 * as one field of one line, and what is not UTF-8 (D-Bus carries nothing else). */
static void copy_field(char *dst, size_t size, const char *src)
{
        size_t i = 0;
        for (; src && src[i] && i + 1 < size; i++)
                dst[i] = (src[i] == '\t' || src[i] == '\n') ? ' ' : src[i];
        dst[i] = '\0';
        utf8_sanitize(dst);
}

static void set_field(struct qt_report *report, const struct field *f, uint64_t value,
                      const char *str)
{
        char *p = (char *)report + f->offset;
        switch (f->type) {
        case FIELD_U64:
                *(uint64_t *)(void *)p = value;
                break;
        case FIELD_U32:
                *(uint32_t *)(void *)p = value > UINT32_MAX ? UINT32_MAX : (uint32_t)value;
                break;
        case FIELD_BOOL:
                *(bool *)p = value != 0;
                break;
        case FIELD_STR:
                copy_field(p, f->size, str);
                break;
        }
}

static void emit_line(struct qt_reporter *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void emit_line(struct qt_reporter *r, const char *fmt, ...)
{
        if (r->fd < 0)
                return;
        char line[QT_REPORT_STRING_MAX + 512];
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
        va_end(ap);
        if (n < 0)
                return;
        if ((size_t)n > sizeof(line) - 2)
                n = sizeof(line) - 2;
        line[n++] = '\n';
        /* The daemon going away mid-job is handled by PDEATHSIG, not by write errors. */
        (void)write_all(r->fd, line, (size_t)n);
}

void qt_emit_u64(struct qt_reporter *r, const char *key, uint64_t value)
{
        const struct field *f = field_by_key(key);
        if (!f || f->type == FIELD_STR)
                return;
        set_field(&r->report, f, value, NULL);
        emit_line(r, "%s\t%llu", key, (unsigned long long)value);
}

void qt_emit_str(struct qt_reporter *r, const char *key, const char *value)
{
        const struct field *f = field_by_key(key);
        if (!f || f->type != FIELD_STR)
                return;
        set_field(&r->report, f, 0, value);
        emit_line(r, "%s\t%s", key, (const char *)&r->report + f->offset);
}

void qt_emit_phase(struct qt_reporter *r, enum qt_phase phase)
{
        r->report.phase = phase;
        r->report.progress = qt_phase_progress_start(phase);
        emit_line(r, "phase\t%s", qt_phase_name(phase));
}

void qt_emit_progress(struct qt_reporter *r, double fraction)
{
        if (fraction < 0)
                fraction = 0;
        if (fraction > 1)
                fraction = 1;
        double overall = qt_phase_progress_start(r->report.phase) +
                         fraction * qt_phase_progress_span(r->report.phase);
        /* One line per whole percent at most: a bar does not need more, the bus should not get it.
         */
        if ((int)(overall * 100) == (int)(r->report.progress * 100))
                return;
        r->report.progress = overall;
        emit_line(r, "progress\t%.4f", overall);
}

void qt_emit_phase_time(struct qt_reporter *r, enum qt_phase phase, uint64_t usec)
{
        r->report.phase_usec[phase] = usec;
        emit_line(r, "phase-time\t%s\t%llu", qt_phase_name(phase), (unsigned long long)usec);
}

size_t qt_fs_disk_ranges(const struct qt_fs_result *fs, uint64_t from,
                         struct qt_range ret[QT_FS_EXTENTS_MAX])
{
        const struct qt_range whole = {fs->offset, fs->size};
        const struct qt_range *ext = fs->n_extents ? fs->extents : &whole;
        size_t n_ext = fs->n_extents ? fs->n_extents : 1, n = 0;
        if (n_ext > QT_FS_EXTENTS_MAX)
                n_ext = QT_FS_EXTENTS_MAX;
        for (size_t i = 0; i < n_ext; i++) {
                if (from < ext[i].size)
                        ret[n++] = (struct qt_range){ext[i].offset + from, ext[i].size - from};
                from = from > ext[i].size ? from - ext[i].size : 0;
        }
        return n;
}

/* Replaces the record of the same name, or appends one. */
static int upsert_fs(struct qt_report *report, const struct qt_fs_result *fs)
{
        for (size_t i = 0; i < report->n_fs; i++)
                if (strcmp(report->fs[i].name, fs->name) == 0) {
                        report->fs[i] = *fs;
                        return 0;
                }
        if (report->n_fs >= QT_MAX_FILESYSTEMS)
                return -E2BIG;
        report->fs[report->n_fs++] = *fs;
        return 0;
}

void qt_emit_fs(struct qt_reporter *r, const struct qt_fs_result *fs)
{
        struct qt_fs_result clean = *fs;
        copy_field(clean.name, sizeof(clean.name), fs->name);
        copy_field(clean.kind, sizeof(clean.kind), fs->kind);
        copy_field(clean.fstype, sizeof(clean.fstype), fs->fstype);
        copy_field(clean.method, sizeof(clean.method), fs->method);
        copy_field(clean.label, sizeof(clean.label), fs->label);
        copy_field(clean.uuid, sizeof(clean.uuid), fs->uuid);
        copy_field(clean.state, sizeof(clean.state), fs->state);
        copy_field(clean.message, sizeof(clean.message), fs->message);
        if (upsert_fs(&r->report, &clean) < 0)
                return;
        emit_line(r, "fs\t%s\t%s\t%s\t%s\t%s\t%s\t%llu\t%llu\t%llu\t%s\t%s", clean.name, clean.kind,
                  clean.fstype, clean.method, clean.label, clean.uuid,
                  (unsigned long long)clean.offset, (unsigned long long)clean.size,
                  (unsigned long long)clean.trimmed, clean.state, clean.message);
}

static struct qt_fs_result *fs_by_name(struct qt_report *report, const char *name)
{
        for (size_t i = 0; i < report->n_fs; i++)
                if (strcmp(report->fs[i].name, name) == 0)
                        return &report->fs[i];
        return NULL;
}

void qt_emit_estimate(struct qt_reporter *r, const struct qt_fs_result *fs)
{
        struct qt_fs_result *known = fs_by_name(&r->report, fs->name);
        if (!known)
                return;
        known->used = fs->used;
        known->free = fs->free;
        known->reclaimable = fs->reclaimable;
        r->report.estimated = true;
        emit_line(r, "estimate\t%s\t%llu\t%llu\t%llu", known->name, (unsigned long long)fs->used,
                  (unsigned long long)fs->free, (unsigned long long)fs->reclaimable);
}

void qt_emit_error(struct qt_reporter *r, const struct qt_error *e)
{
        r->report.error = *e;
        emit_line(r, "error\t%s\t%s", qt_error_dbus_name(e->code), e->message);
}

void qt_emit_end(struct qt_reporter *r)
{
        r->report.finished = true;
        emit_line(r, "end");
}

/* Splits line in place at tabs into at most max fields; returns how many. */
static size_t split_tabs(char *line, char **out, size_t max)
{
        size_t n = 0;
        char *p = line;
        while (n < max) {
                out[n++] = p;
                p = strchr(p, '\t');
                if (!p)
                        break;
                *p++ = '\0';
        }
        return n;
}

static int apply_fs(struct qt_report *report, char **v, size_t n)
{
        struct qt_fs_result fs = {};
        if (n != 12)
                return -EBADMSG;
        if (parse_u64(v[7], &fs.offset) < 0 || parse_u64(v[8], &fs.size) < 0 ||
            parse_u64(v[9], &fs.trimmed) < 0)
                return -EBADMSG;
        copy_field(fs.name, sizeof(fs.name), v[1]);
        copy_field(fs.kind, sizeof(fs.kind), v[2]);
        copy_field(fs.fstype, sizeof(fs.fstype), v[3]);
        copy_field(fs.method, sizeof(fs.method), v[4]);
        copy_field(fs.label, sizeof(fs.label), v[5]);
        copy_field(fs.uuid, sizeof(fs.uuid), v[6]);
        copy_field(fs.state, sizeof(fs.state), v[10]);
        copy_field(fs.message, sizeof(fs.message), v[11]);
        return upsert_fs(report, &fs);
}

int qt_report_apply_line(struct qt_report *report, const char *line, const char **ret_property)
{
        char buf[QT_REPORT_STRING_MAX + 512];
        char *v[13];
        uint64_t u;

        *ret_property = NULL;
        if (report->finished)
                return 0;
        if (strlen(line) >= sizeof(buf))
                return -EBADMSG;
        strcpy(buf, line);
        size_t n = split_tabs(buf, v, ELEMENTSOF(v));

        if (strcmp(v[0], "end") == 0 && n == 1) {
                report->finished = true;
                return 0;
        }
        if (strcmp(v[0], "phase") == 0 && n == 2) {
                int p = qt_phase_from_name(v[1]);
                if (p < 0)
                        return -EBADMSG;
                report->phase = p;
                report->progress = qt_phase_progress_start(p);
                *ret_property = "Phase";
                return 0;
        }
        if (strcmp(v[0], "progress") == 0 && n == 2) {
                char *end;
                double d = strtod(v[1], &end);
                if (*end || !(d >= 0 && d <= 1))
                        return -EBADMSG;
                report->progress = d;
                *ret_property = "Progress";
                return 0;
        }
        if (strcmp(v[0], "phase-time") == 0 && n == 3) {
                int p = qt_phase_from_name(v[1]);
                if (p < 0 || parse_u64(v[2], &u) < 0)
                        return -EBADMSG;
                report->phase_usec[p] = u;
                *ret_property = "PhaseTimes";
                return 0;
        }
        if (strcmp(v[0], "fs") == 0) {
                int r = apply_fs(report, v, n);
                if (r < 0)
                        return r;
                *ret_property = "Filesystems";
                return 0;
        }
        if (strcmp(v[0], "estimate") == 0 && n == 5) {
                struct qt_fs_result *fs = fs_by_name(report, v[1]);
                struct qt_fs_result e = {};
                if (!fs || parse_u64(v[2], &e.used) < 0 || parse_u64(v[3], &e.free) < 0 ||
                    parse_u64(v[4], &e.reclaimable) < 0)
                        return -EBADMSG;
                fs->used = e.used;
                fs->free = e.free;
                fs->reclaimable = e.reclaimable;
                report->estimated = true;
                return 0;
        }
        if (strcmp(v[0], "error") == 0 && n == 3) {
                report->error.code = qt_error_from_dbus_name(v[1]);
                copy_field(report->error.message, sizeof(report->error.message), v[2]);
                *ret_property = "Error";
                return 0;
        }

        const struct field *f = field_by_key(v[0]);
        if (!f || n != 2)
                return -EBADMSG;
        if (f->type != FIELD_STR && parse_u64(v[1], &u) < 0)
                return -EBADMSG;
        set_field(report, f, f->type == FIELD_STR ? 0 : u, v[1]);
        *ret_property = f->property;
        return 0;
}
