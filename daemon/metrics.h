/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * MetricsFile= (qtrimd.conf(5)): what qtrimd has done, in node_exporter's textfile-collector
 * format, so a fleet's Prometheus sees what every host reclaimed:
 *
 *   qtrim_jobs_total{result}                       counter: done, failed, canceled, interrupted
 *   qtrim_reclaimed_bytes_total                    counter: the positive BytesReclaimed, summed
 *   qtrim_grown_bytes_total                        counter: what images grew by, summed
 *   qtrim_last_sweep_timestamp_seconds             gauge: end of the last job a sweep asked for
 *   qtrim_image_allocated_before_bytes{image}      gauge: host bytes before the image's last job
 *   qtrim_image_allocated_after_bytes{image}       gauge: and after it
 *   qtrim_image_last_job_timestamp_seconds{image}  gauge: when that job ended
 *
 * The file is rewritten once per turn of the event loop in which jobs ended: written to a
 * temporary file beside it, then renamed over it (mode 0644), so the collector never reads half
 * a file. It is also the memory: qtrimd reads back what it wrote when it starts, so the
 * counters and the images' numbers outlive an idle exit (IdleExitSec=) and a restart. A write
 * that fails is logged once (until one succeeds again) and never fails a job.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

struct metrics;

/* path NULL: no metrics; *ret is NULL and every call below does nothing. */
int metrics_new(sd_event *event, const char *path, struct metrics **ret);
/* Writes what is pending, then frees. */
void metrics_free(struct metrics *m);

struct metrics_job {
        const char *image;
        const char *result; /* done, failed, canceled */
        uint64_t bytes_before, bytes_after;
        uint64_t finished_at; /* CLOCK_REALTIME µs */
        bool sweep;           /* asked for by a sweep (the if-changed option) */
};

void metrics_job_ended(struct metrics *m, const struct metrics_job *job);
/* Jobs an earlier qtrimd stopped in the middle of, found at start. */
void metrics_jobs_interrupted(struct metrics *m, unsigned n);
