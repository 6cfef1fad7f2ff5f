/* SPDX-License-Identifier: GPL-2.0-or-later */
/* A shrink job: the org.qtrim1.Job object at /org/qtrim1/job/N, its place in the queue, and the
 * worker that runs it. */
#pragma once

#include <stdbool.h>
#include <sys/types.h>

#include "manager.h"
#include "report.h"
#include "worker.h"

struct domain_snapshot;

enum job_state { JOB_QUEUED, JOB_RUNNING, JOB_DONE, JOB_FAILED, JOB_CANCELED };

/* What a Shrink or Inspect call and qtrimd.conf say the image's format is ("" for nothing). */
struct job_format {
        char declared[8];
        char configured[8];
};

/* The claim the engine takes (image.h); points into f. */
struct qt_format_claim job_format_claim(const struct job_format *f);

/* What a Shrink call asked for, with qtrimd.conf's word already applied. */
struct job_options {
        bool convert;   /* write a compact copy after the trim */
        bool keep_gaps; /* leave the space outside the partitions alone */
        bool sweep;     /* asked with if-changed, as qtrimctl's sweep asks */
        struct job_format format;
};

struct job {
        struct manager *manager;
        struct job *next;
        unsigned id;
        char *path;
        char *image;
        dev_t dev; /* identity of the image, so the same file is never worked on twice at once */
        ino_t ino;
        uid_t uid;
        struct job_options options;
        enum job_state state;
        bool cancel_requested;
        struct qt_report report; /* what the daemon publishes; the worker's lines update it */
        struct worker *worker;
        char *recorded_temp; /* the copy temp-records.h knows of, NULL if none */
        /* CLOCK_REALTIME µs of the job's life (QueuedAt, StartedAt, FinishedAt; 0 = not yet),
         * and CLOCK_MONOTONIC ones for the durations the log gives. */
        uint64_t queued_at, started_at, finished_at;
        uint64_t queued_usec, started_usec;
        bool bytes_after_known;  /* the worker said what the host holds at the end */
        int64_t bytes_reclaimed; /* BytesBefore - BytesAfter once ended, 0 before */
        /* An online trim (ShrinkDomain's "online"): the running domain as it was read, whose
         * guest trims through its agent. image is then the domain's name, dev and ino 0. */
        struct domain_snapshot *online;
};

/* Creates a queued job and its bus object, sends JobNew. The manager owns it from then on. */
int job_new(struct manager *m, const char *image, dev_t dev, ino_t ino, uid_t uid,
            const struct job_options *options, const struct qt_report *probed, struct job **ret);
/* The online trim of the running domain s (the job keeps a copy). */
int job_new_online(struct manager *m, const struct domain_snapshot *s, uid_t uid, struct job **ret);
int job_start(struct job *j);
/* Cancel(): a queued job ends at once, a running one once its worker has torn down. */
void job_cancel(struct job *j);
struct job *job_find_by_file(struct manager *m, dev_t dev, ino_t ino);
struct job *job_find_online(struct manager *m, const char *domain);
const char *job_state_name(enum job_state state);
void job_free(struct job *j);

extern const sd_bus_vtable job_vtable[];
int job_object_find(sd_bus *bus, const char *path, const char *interface, void *userdata,
                    void **ret_found, sd_bus_error *error);
int job_node_enumerator(sd_bus *bus, const char *path, void *userdata, char ***ret_nodes,
                        sd_bus_error *error);
