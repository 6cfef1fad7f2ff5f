/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Fuzzes qt_report_apply_line(): qtrimd applies every line a worker writes, and a worker that
 * mounted a hostile guest filesystem may be compromised and write anything. The input is a
 * stream of lines applied in order to one report, as qtrimd does (so "end" and what follows it
 * are fuzzed too); after each line, whatever it said, the report must still be one qtrimd can
 * publish on the bus.
 */
#include <errno.h>
#include <string.h>

#include "fuzz.h"
#include "report.h"

/* Terminated within its array, and one field of one line: no separators inside. */
static void check_string(const char *s, size_t size)
{
        const char *end = memchr(s, '\0', size);
        FUZZ_CHECK(end);
        FUZZ_CHECK(!memchr(s, '\t', (size_t)(end - s)) && !memchr(s, '\n', (size_t)(end - s)));
}

#define CHECK_STRING(s) check_string((s), sizeof(s))

/* The fields any line can change. */
static void check_scalars_and_strings(const struct qt_report *r)
{
        FUZZ_CHECK(r->n_fs <= QT_MAX_FILESYSTEMS);
        FUZZ_CHECK((unsigned)r->phase < _QT_PHASE_MAX);
        FUZZ_CHECK(r->progress >= 0 && r->progress <= 1);
        FUZZ_CHECK((unsigned)r->error.code < _QT_ERR_MAX);
        CHECK_STRING(r->format);
        CHECK_STRING(r->backing_file);
        CHECK_STRING(r->backing_format);
        CHECK_STRING(r->partition_table);
        CHECK_STRING(r->message);
        CHECK_STRING(r->temp_file);
        CHECK_STRING(r->error.message);
}

/* The filesystem list, which only "fs" lines change: checked after those, it keeps the fuzzer
 * fast on long inputs. */
static void check_filesystems(const struct qt_report *r, size_t n)
{
        for (size_t i = 0; i < n; i++) {
                CHECK_STRING(r->fs[i].name);
                CHECK_STRING(r->fs[i].fstype);
                CHECK_STRING(r->fs[i].state);
                CHECK_STRING(r->fs[i].message);
        }
        /* A filesystem line replaces the record of the same name: names stay unique. */
        for (size_t i = 0; i < r->n_fs; i++)
                for (size_t j = i + 1; j < r->n_fs; j++)
                        FUZZ_CHECK(strcmp(r->fs[i].name, r->fs[j].name) != 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        /* Static: the report is large, and a fuzzer run calls this millions of times. */
        static struct qt_report report, at_end;
        bool finished = false;

        memset(&report, 0, sizeof(report));
        while (size > 0) {
                const uint8_t *nl = memchr(data, '\n', size);
                size_t len = nl ? (size_t)(nl - data) : size;
                /* Exactly as long as the line, so ASan sees any read past its end. qtrimd hands
                 * over its buffer as is: a NUL inside a line ends it early there too. */
                char *line = malloc(len + 1);
                if (!line)
                        return 0;
                memcpy(line, data, len);
                line[len] = '\0';

                const char *property = (const char *)1;
                int r = qt_report_apply_line(&report, line, &property);
                free(line);
                FUZZ_CHECK(r == 0 || r == -EBADMSG || r == -E2BIG);
                FUZZ_CHECK(r == 0 || !property);
                FUZZ_CHECK(!property || property[0]);
                check_scalars_and_strings(&report);
                if (property && strcmp(property, "Filesystems") == 0)
                        check_filesystems(&report, report.n_fs);

                if (!finished && report.finished) {
                        finished = true;
                        memcpy(&at_end, &report, sizeof(report));
                }

                data += len + (nl ? 1 : 0);
                size -= len + (nl ? 1 : 0);
        }
        check_filesystems(&report, QT_MAX_FILESYSTEMS);
        /* "end" is the last word: nothing after it may change the report. */
        FUZZ_CHECK(!finished || memcmp(&report, &at_end, sizeof(report)) == 0);
        return 0;
}
