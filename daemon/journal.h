/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qtrimd's log lines about jobs. Under systemd (stderr is the journal's stream) they go to the
 * journal with structured fields an admin can filter on (journalctl QTRIM_RESULT=failed):
 * QTRIM_JOB_ID, QTRIM_IMAGE, QTRIM_RESULT, QTRIM_BYTES_BEFORE, QTRIM_BYTES_AFTER; elsewhere
 * (tests, a terminal) they are plain lines on stderr.
 */
#pragma once

#include <stdint.h>

/* One line: "IMAGE: <message>" with the fields. result: done, failed, canceled, interrupted. */
void journal_job(unsigned job_id, const char *image, const char *result, uint64_t bytes_before,
                 uint64_t bytes_after, const char *message);
/* A job an earlier qtrimd died in the middle of; temp is the copy removed, or NULL. */
void journal_job_interrupted(const char *image, const char *record, const char *temp);
