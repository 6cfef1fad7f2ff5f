/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * InspectDomain and ShrinkDomain: libvirt domains by name.
 *
 * libvirt's API blocks (a connect, every call is a round trip to libvirtd, which may hang), and
 * qtrimd's event loop must never wait on it. So qtrimd itself never calls libvirt: each domain
 * call forks a short-lived child (domain_snapshot_read() in domain-libvirt.c) that connects to
 * LibvirtURI= read-only, reads the domain's state and XML (inactive, and live when it runs),
 * resolves volumes, judges each disk (domain-xml.h), writes the result into a memfd and exits.
 * qtrimd learns of it from the child's exit (an sd-event child source), reads the memfd, and
 * answers; a child that does not end within DOMAIN_READ_TIMEOUT_USEC is killed and the call
 * fails. A memfd rather than a pipe: the result is one block of a few hundred KiB at most,
 * read once the writer is gone, with no partial reads to handle.
 *
 * ShrinkDomain then queues each disk a shrink takes through the same checks as Shrink (the
 * manager's probe, the image directories for non-root callers, the format declared as the domain
 * XML says) and answers once every disk has its job or its refusal.
 */
#pragma once

#include <stdbool.h>
#include <sys/types.h>
#include <systemd/sd-bus.h>

#include "domain-xml.h"
#include "job.h"
#include "report.h"

#define DOMAIN_READ_TIMEOUT_USEC (30 * 1000000ULL)

enum domain_status {
        DOMAIN_OK,
        DOMAIN_NO_LIBVIRT, /* cannot connect to the URI */
        DOMAIN_NOT_FOUND,  /* no domain by that name */
        DOMAIN_FAILED,     /* libvirt or the domain XML failed otherwise */
};

/* What the child reads of a domain. Only ever passed between a qtrimd and its own fork. */
struct domain_snapshot {
        enum domain_status status;
        char error[512];
        char name[256];
        char uuid[40];
        char state[24];    /* "running", "paused", "shut off", ... (virsh's words) */
        bool active;       /* a QEMU process exists (running, paused, ...) */
        bool managed_save; /* shut off with its memory saved (virsh managedsave) */
        unsigned long long hypervisor_version; /* 0 if unknown */
        unsigned n_disks;
        struct domain_disk disks[DOMAIN_MAX_DISKS];
};

/* In the child: reads the domain name at uri into s. Blocks; never call it from qtrimd. */
void domain_snapshot_read(const char *uri, const char *name, struct domain_snapshot *s);

/* In the child: every domain libvirt at uri knows and the files its disks use, for
 * ListDomainImages. Sets s's status and error; writes one record per file disk to fd at offset
 * (image, domain name and state, each ending in a NUL; the image canonical when it exists).
 * Blocks; never call it from qtrimd. */
void domain_list_read(const char *uri, struct domain_snapshot *s, int fd, off_t offset);

/* Whether an online trim measures disk d of a running domain: a file (or a file volume) QEMU
 * writes to, whose host allocation can fall. */
bool domain_disk_online(const struct domain_disk *d);

/* In a worker (blocks): the online trim of the running domain s at uri, read-write. Measures the
 * host allocation of each disk domain_disk_online() takes, has the guest agent trim every
 * filesystem (guest-fstrim), measures again and reports per disk what the host got back and,
 * when nothing came back, why (the disk's verdict). Phases inspect, online-trim, done; returns 0
 * or a negative errno with the error emitted, as qt_shrink_run() does. A cancel ends it at once:
 * the guest's fstrim runs on, harmless. */
int domain_online_trim(const char *uri, const struct domain_snapshot *s, struct qt_reporter *r);

/* DOMAIN_LIST: every domain's file disks (ListDomainImages); the call's name is unused. */
enum domain_verb { DOMAIN_INSPECT, DOMAIN_SHRINK, DOMAIN_LIST };

struct manager;
struct domain_call;

/* A call's domain part. -EOPNOTSUPP when qtrim was built without libvirt. options: ShrinkDomain's
 * jobs (the format is set per disk), if_changed as for Shrink. */
int domain_call_new(enum domain_verb verb, const char *name, const struct job_options *options,
                    bool if_changed, struct domain_call **ret);
struct domain_call *domain_call_ref(struct domain_call *c);
struct domain_call *domain_call_unref(struct domain_call *c);

/* ShrinkDomain's "online": a running domain's guest trims through its agent, as one job. */
void domain_call_set_online(struct domain_call *c);

/* The domain is the one xml describes, as libvirt's hook gives it when the domain has stopped:
 * domain_call_start() reads it from there, not from libvirt. */
int domain_call_set_xml(struct domain_call *c, const char *xml);

/* The caller (uid) is authorized: read the domain and answer call. done(userdata) is called once
 * the reading is over (the caller's request may end; the answer may still wait for the disks'
 * probes), also when it could not start. */
void domain_call_start(struct domain_call *c, struct manager *m, sd_bus_message *call, uid_t uid,
                       void (*done)(void *userdata), void *userdata);

/* A disk ShrinkDomain queued (manager_shrink_disk()) has its job, or was refused (error_name and
 * message). */
void domain_call_disk_done(struct domain_call *c, unsigned index, const char *job_path,
                           const char *error_name, const char *message);

/* In manager.c: queues one disk of c (index) for a caller (uid) already authorized, through
 * Shrink's checks; the outcome goes to domain_call_disk_done(), maybe before this returns. */
void manager_shrink_disk(struct manager *m, sd_bus_message *call, uid_t uid, const char *image,
                         const struct job_options *options, bool if_changed, struct domain_call *c,
                         unsigned index);
