/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qtrimd's log lines about jobs. Under systemd (stderr is the journal's stream) they go to the
 * journal with structured fields an admin can filter on (journalctl QTRIM_RESULT=failed):
 * QTRIM_JOB_ID, QTRIM_IMAGE, QTRIM_RESULT, QTRIM_IMAGE_STATE, QTRIM_BYTES_BEFORE,
 * QTRIM_BYTES_AFTER, QTRIM_BYTES_RECLAIMED (before minus after, negative when the image grew);
 * elsewhere (tests, a terminal) they are plain lines on stderr.
 */
#pragma once

#include <stdint.h>

struct journal_job {
        unsigned job_id; /* 0: a job of an earlier qtrimd */
        const char *image;
        const char *result;      /* done, failed, canceled, interrupted */
        const char *image_state; /* untouched, trimmed, compacted; "" when not known */
        uint64_t bytes_before, bytes_after;
        int64_t bytes_reclaimed;
        const char *message;
};

/* One line: "IMAGE: <message>" with the fields. */
void journal_job(const struct journal_job *job);
/* A job an earlier qtrimd died in the middle of; temp is the copy removed, or NULL. */
void journal_job_interrupted(const char *image, const char *record, const char *temp);
