/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "journal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <syslog.h>
#include <systemd/sd-journal.h>

/* systemd sets JOURNAL_STREAM when stderr is connected to the journal: then send structured
 * entries instead, or every line would arrive twice. */
static int to_journal(void)
{
        return getenv("JOURNAL_STREAM") != NULL;
}

void journal_job(unsigned job_id, const char *image, const char *result, uint64_t bytes_before,
                 uint64_t bytes_after, const char *message)
{
        if (!to_journal()) {
                fprintf(stderr, "%s: %s\n", image, message);
                return;
        }
        sd_journal_send("MESSAGE=%s: %s", image, message, "PRIORITY=%d",
                        result[0] == 'd' ? LOG_INFO : LOG_WARNING, "QTRIM_JOB_ID=%u", job_id,
                        "QTRIM_IMAGE=%s", image, "QTRIM_RESULT=%s", result,
                        "QTRIM_BYTES_BEFORE=%" PRIu64, bytes_before, "QTRIM_BYTES_AFTER=%" PRIu64,
                        bytes_after, NULL);
}

void journal_job_interrupted(const char *image, const char *record, const char *temp)
{
        char message[8192];
        snprintf(message, sizeof(message),
                 "failed: interrupted when an earlier qtrimd stopped unexpectedly (job record %s); "
                 "the image is the old one or the new one, whole%s%s",
                 record, temp ? "; removed its temporary copy " : "", temp ? temp : "");
        journal_job(0, image, "interrupted", 0, 0, message);
}
