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

void journal_job(const struct journal_job *job)
{
        if (!to_journal()) {
                fprintf(stderr, "%s: %s\n", job->image, job->message);
                return;
        }
        sd_journal_send("MESSAGE=%s: %s", job->image, job->message, "PRIORITY=%d",
                        job->result[0] == 'd' ? LOG_INFO : LOG_WARNING, "QTRIM_JOB_ID=%u",
                        job->job_id, "QTRIM_IMAGE=%s", job->image, "QTRIM_RESULT=%s", job->result,
                        "QTRIM_IMAGE_STATE=%s", job->image_state, "QTRIM_BYTES_BEFORE=%" PRIu64,
                        job->bytes_before, "QTRIM_BYTES_AFTER=%" PRIu64, job->bytes_after,
                        "QTRIM_BYTES_RECLAIMED=%" PRId64, job->bytes_reclaimed, NULL);
}

void journal_job_interrupted(const char *image, const char *record, const char *temp)
{
        char message[8192];
        snprintf(message, sizeof(message),
                 "failed: interrupted when an earlier qtrimd stopped unexpectedly (job record %s); "
                 "the image is the old one or the new one, whole%s%s",
                 record, temp ? "; removed its temporary copy " : "", temp ? temp : "");
        journal_job(&(struct journal_job){
            .image = image, .result = "interrupted", .image_state = "", .message = message});
}
