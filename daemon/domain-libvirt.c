/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The only code that calls libvirt; it runs in the child domain.c forks, where blocking is fine. */
#include <errno.h>
#include <json-c/json.h>
#include <libvirt/libvirt-qemu.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cancel.h"
#include "domain.h"
#include "image.h"
#include "test-hooks.h"
#include "util.h"

/* How long the guest agent gets for its fstrim: a guest trims every filesystem it has, which on
 * slow storage takes minutes. A cancel ends the wait sooner. */
#define AGENT_TRIM_TIMEOUT_S 3600
/* QEMU has freed what the guest discarded when the guest's fstrim returns; the allocation is
 * still read until two readings this far apart agree, for at most AGENT_SETTLE_TRIES. */
#define AGENT_SETTLE_USEC  100000ULL
#define AGENT_SETTLE_TRIES 20

static void ignore_error(void *userdata, virErrorPtr error)
{
        /* libvirt prints every error on stderr by default; the snapshot carries ours. */
}

static void set_error(struct domain_snapshot *s, enum domain_status status, const char *what)
{
        const char *message = virGetLastErrorMessage();
        s->status = status;
        snprintf(s->error, sizeof(s->error), "%s: %s", what, message ?: "unknown error");
}

/* virsh's words for the states. */
static const char *state_name(int state)
{
        switch (state) {
        case VIR_DOMAIN_RUNNING:
                return "running";
        case VIR_DOMAIN_BLOCKED:
                return "idle";
        case VIR_DOMAIN_PAUSED:
                return "paused";
        case VIR_DOMAIN_SHUTDOWN:
                return "in shutdown";
        case VIR_DOMAIN_SHUTOFF:
                return "shut off";
        case VIR_DOMAIN_CRASHED:
                return "crashed";
        case VIR_DOMAIN_PMSUSPENDED:
                return "pmsuspended";
        default:
                return "no state";
        }
}

/* A volume disk's file, through the storage pool; a volume that is not a file is skipped. */
static void resolve_volume(virConnectPtr conn, struct domain_disk *d)
{
        virStoragePoolPtr pool = virStoragePoolLookupByName(conn, d->pool);
        virStorageVolPtr vol = pool ? virStorageVolLookupByName(pool, d->volume) : NULL;
        virStorageVolInfo info;
        char *path = NULL;
        const char *problem = NULL;
        if (!vol || virStorageVolGetInfo(vol, &info) < 0)
                problem = virGetLastErrorMessage();
        else if (info.type != VIR_STORAGE_VOL_FILE)
                problem = "not a file";
        else if (!(path = virStorageVolGetPath(vol)))
                problem = virGetLastErrorMessage();
        else if (strlen(path) >= sizeof(d->source))
                problem = "path too long";
        else
                snprintf(d->source, sizeof(d->source), "%s", path);
        if (problem) {
                char why[sizeof(d->skip)];
                snprintf(why, sizeof(why), "volume %.100s of pool %.100s: %s", d->volume, d->pool,
                         problem);
                memcpy(d->skip, why, sizeof(why));
        }
        free(path);
        if (vol)
                virStorageVolFree(vol);
        if (pool)
                virStoragePoolFree(pool);
}

static int read_disks(virDomainPtr dom, unsigned flags, struct domain_disk *disks, unsigned *ret_n,
                      struct domain_snapshot *s)
{
        char *xml = virDomainGetXMLDesc(dom, flags);
        if (!xml) {
                set_error(s, DOMAIN_FAILED, "cannot read the domain XML");
                return -1;
        }
        char why[256];
        int r = domain_xml_read_disks(xml, strlen(xml), disks, DOMAIN_MAX_DISKS, ret_n, why,
                                      sizeof(why));
        free(xml);
        if (r < 0) {
                s->status = DOMAIN_FAILED;
                snprintf(s->error, sizeof(s->error), "%s", why);
        }
        return r;
}

/* A running domain's disks as it runs, each with its discard in the definition. */
static int read_live_disks(virDomainPtr dom, struct domain_snapshot *s)
{
        struct domain_disk *defined = calloc(DOMAIN_MAX_DISKS, sizeof(*defined));
        unsigned n_defined = 0;
        if (!defined) {
                s->status = DOMAIN_FAILED;
                snprintf(s->error, sizeof(s->error), "out of memory");
                return -1;
        }
        int r = read_disks(dom, 0, s->disks, &s->n_disks, s);
        /* A transient domain has no definition: nothing to compare with. */
        if (r == 0 && virDomainIsPersistent(dom) == 1)
                r = read_disks(dom, VIR_DOMAIN_XML_INACTIVE, defined, &n_defined, s);
        for (unsigned i = 0; r == 0 && i < s->n_disks; i++)
                for (unsigned j = 0; j < n_defined; j++)
                        if (strcmp(s->disks[i].target, defined[j].target) == 0) {
                                s->disks[i].has_defined_discard = true;
                                memcpy(s->disks[i].defined_discard, defined[j].discard,
                                       sizeof(defined[j].discard));
                        }
        free(defined);
        return r;
}

void domain_snapshot_read(const char *uri, const char *name, struct domain_snapshot *s)
{
        virSetErrorFunc(NULL, ignore_error);
        /* Read-only: state and XML are all it needs, and all it may touch. */
        virConnectPtr conn = virConnectOpenReadOnly(uri);
        if (!conn)
                return set_error(s, DOMAIN_NO_LIBVIRT, "connect");
        virDomainPtr dom = virDomainLookupByName(conn, name);
        if (!dom) {
                if (virGetLastErrorCode() == VIR_ERR_NO_DOMAIN)
                        s->status = DOMAIN_NOT_FOUND;
                else
                        set_error(s, DOMAIN_FAILED, "cannot look the domain up");
                virConnectClose(conn);
                return;
        }
        int state, reason;
        unsigned long version;
        char uuid[VIR_UUID_STRING_BUFLEN];
        snprintf(s->name, sizeof(s->name), "%s", virDomainGetName(dom) ?: name);
        if (virDomainGetUUIDString(dom, uuid) == 0)
                snprintf(s->uuid, sizeof(s->uuid), "%s", uuid);
        if (virConnectGetVersion(conn, &version) == 0)
                s->hypervisor_version = version;
        if (virDomainGetState(dom, &state, &reason, 0) < 0) {
                set_error(s, DOMAIN_FAILED, "cannot read the domain's state");
        } else {
                snprintf(s->state, sizeof(s->state), "%s", state_name(state));
                /* Whether a QEMU process exists (a crashed domain may be kept), not the state's
                 * name: that QEMU holds the disks. */
                s->active = virDomainIsActive(dom) != 0;
                s->managed_save = virDomainHasManagedSaveImage(dom, 0) == 1;
                int r = s->active
                            ? read_live_disks(dom, s)
                            : read_disks(dom, VIR_DOMAIN_XML_INACTIVE, s->disks, &s->n_disks, s);
                for (unsigned i = 0; r == 0 && i < s->n_disks; i++) {
                        struct domain_disk *d = &s->disks[i];
                        if (strcmp(d->type, "volume") == 0 && strcmp(d->device, "disk") == 0)
                                resolve_volume(conn, d);
                        domain_disk_judge(d, s->name, s->hypervisor_version, s->active);
                }
        }
        virDomainFree(dom);
        virConnectClose(conn);
}

/* One record of domain_list_read(): three strings, each with its NUL. */
static int write_record(int fd, off_t *offset, const char *image, const char *name,
                        const char *state)
{
        const char *fields[] = {image, name, state};
        for (size_t i = 0; i < 3; i++) {
                size_t len = strlen(fields[i]) + 1;
                if (pwrite(fd, fields[i], len, *offset) != (ssize_t)len)
                        return -EIO;
                *offset += (off_t)len;
        }
        return 0;
}

void domain_list_read(const char *uri, struct domain_snapshot *s, int fd, off_t offset)
{
        virSetErrorFunc(NULL, ignore_error);
        virConnectPtr conn = virConnectOpenReadOnly(uri);
        if (!conn)
                return set_error(s, DOMAIN_NO_LIBVIRT, "connect");
        virDomainPtr *domains = NULL;
        int n = virConnectListAllDomains(conn, &domains, 0);
        if (n < 0)
                set_error(s, DOMAIN_FAILED, "cannot list the domains");
        /* Domains come and go meanwhile: one that cannot be read is left out. */
        for (int i = 0; i < n; i++) {
                struct domain_snapshot *one = calloc(1, sizeof(*one));
                int state, reason;
                if (!one || virDomainGetState(domains[i], &state, &reason, 0) < 0) {
                        free(one);
                        continue;
                }
                const char *name = virDomainGetName(domains[i]) ?: "?";
                bool active = virDomainIsActive(domains[i]) == 1;
                unsigned n_disks = 0;
                if (read_disks(domains[i], active ? 0 : VIR_DOMAIN_XML_INACTIVE, one->disks,
                               &n_disks, one) == 0)
                        for (unsigned k = 0; k < n_disks; k++) {
                                struct domain_disk *d = &one->disks[k];
                                if (strcmp(d->type, "volume") == 0)
                                        resolve_volume(conn, d);
                                if (!d->source[0] || (strcmp(d->type, "file") != 0 &&
                                                      strcmp(d->type, "volume") != 0))
                                        continue;
                                char *canonical = realpath(d->source, NULL);
                                int r = write_record(fd, &offset, canonical ?: d->source, name,
                                                     state_name(state));
                                free(canonical);
                                if (r < 0) {
                                        s->status = DOMAIN_FAILED;
                                        snprintf(s->error, sizeof(s->error),
                                                 "cannot write the list");
                                }
                        }
                free(one);
                virDomainFree(domains[i]);
        }
        free(domains);
        virConnectClose(conn);
}

/* The agent's command runs in a thread, so the worker can see a cancel while libvirt blocks. */
struct agent_call {
        virDomainPtr dom;
        char *result;
        int error_code;
        char error[256];
        volatile int done;
};

static void *run_agent_call(void *arg)
{
        struct agent_call *a = arg;
        a->result = virDomainQemuAgentCommand(a->dom, "{\"execute\":\"guest-fstrim\"}",
                                              AGENT_TRIM_TIMEOUT_S, 0);
        if (!a->result) {
                a->error_code = virGetLastErrorCode();
                snprintf(a->error, sizeof(a->error), "%s",
                         virGetLastErrorMessage() ?: "unknown error");
        }
        __atomic_store_n(&a->done, 1, __ATOMIC_RELEASE);
        return NULL;
}

/* Waits for the agent's answer; -ECANCELED on a cancel (the thread is left behind: the worker
 * exits, and the guest finishes its fstrim on its own). */
static int agent_fstrim(virDomainPtr dom, struct agent_call *a)
{
        pthread_t thread;
        a->dom = dom;
        /* Canceled before the guest was asked: it is not asked. */
        if (qt_cancel_requested)
                return -ECANCELED;
        if (pthread_create(&thread, NULL, run_agent_call, a) != 0)
                return -EAGAIN;
        while (!__atomic_load_n(&a->done, __ATOMIC_ACQUIRE)) {
                if (qt_cancel_requested)
                        return -ECANCELED;
                nanosleep(&(struct timespec){.tv_nsec = 20 * 1000 * 1000}, NULL);
        }
        pthread_join(thread, NULL);
        return 0;
}

/* The agent's failure, said so that the user knows what to do. */
static int agent_error(const struct domain_snapshot *s, const struct agent_call *a,
                       struct qt_error *e)
{
        switch (a->error_code) {
        case VIR_ERR_ARGUMENT_UNSUPPORTED: /* libvirt's "QEMU guest agent is not configured" */
                return qt_error_set(e, QT_ERR_NO_GUEST_AGENT, EHOSTUNREACH,
                                    "%s has no guest agent channel: add one (virt-xml %s "
                                    "--add-device --channel unix,target.type=virtio,"
                                    "target.name=org.qemu.guest_agent.0), restart the domain and "
                                    "run qemu-guest-agent in the guest",
                                    s->name, s->name);
        case VIR_ERR_AGENT_UNRESPONSIVE:
        case VIR_ERR_AGENT_UNSYNCED:
                return qt_error_set(e, QT_ERR_NO_GUEST_AGENT, EHOSTUNREACH,
                                    "the guest agent of %s does not answer (%s): is "
                                    "qemu-guest-agent installed and running in the guest?",
                                    s->name, a->error);
        default:
                return qt_error_set(e, QT_ERR_LIBVIRT, EIO, "the guest agent's fstrim failed: %s",
                                    a->error);
        }
}

static uint64_t json_u64(struct json_object *o, const char *key, bool *found)
{
        struct json_object *v;
        *found = json_object_object_get_ex(o, key, &v);
        return *found ? (uint64_t)json_object_get_int64(v) : 0;
}

/* guest-fstrim's answer: {"return":{"paths":[{"path":"/","trimmed":N,"minimum":0},
 * {"path":"/boot","error":"..."}]}}, one entry per filesystem the guest has mounted. Emits each
 * as a volume of kind "guest"; returns what the guest says it trimmed in all, or -EBADMSG. */
static int64_t report_guest_paths(const char *result, struct qt_reporter *r)
{
        struct json_object *root = json_tokener_parse(result), *ret, *paths;
        if (!root || !json_object_object_get_ex(root, "return", &ret)) {
                json_object_put(root);
                return -EBADMSG;
        }
        uint64_t total = 0;
        size_t n = json_object_object_get_ex(ret, "paths", &paths) &&
                           json_object_is_type(paths, json_type_array)
                       ? json_object_array_length(paths)
                       : 0;
        for (size_t i = 0; i < n; i++) {
                struct json_object *p = json_object_array_get_idx(paths, i), *v;
                struct qt_fs_result fs = {.kind = "guest", .method = "agent"};
                bool has_trimmed, has_error = json_object_object_get_ex(p, "error", &v);
                snprintf(fs.name, sizeof(fs.name), "%s",
                         json_object_object_get_ex(p, "path", &v) ? json_object_get_string(v)
                                                                  : "?");
                fs.trimmed = json_u64(p, "trimmed", &has_trimmed);
                if (has_error) {
                        json_object_object_get_ex(p, "error", &v);
                        snprintf(fs.state, sizeof(fs.state), "failed");
                        snprintf(fs.message, sizeof(fs.message), "the guest could not trim it: %s",
                                 json_object_get_string(v));
                } else {
                        snprintf(fs.state, sizeof(fs.state), "trimmed");
                        if (!has_trimmed)
                                snprintf(fs.message, sizeof(fs.message),
                                         "the guest did not say how much");
                }
                total += fs.trimmed;
                qt_emit_fs(r, &fs);
        }
        json_object_put(root);
        return (int64_t)(total & INT64_MAX);
}

static int allocation(const char *path, uint64_t *ret)
{
        struct stat st;
        if (stat(path, &st) < 0)
                return -errno;
        *ret = qt_file_allocated(&st);
        return 0;
}

/* Every measured disk's allocation, and their sum. */
static int measure(const struct domain_snapshot *s, uint64_t *bytes, uint64_t *ret_total,
                   struct qt_error *e)
{
        uint64_t total = 0;
        for (unsigned i = 0; i < s->n_disks; i++) {
                const struct domain_disk *d = &s->disks[i];
                if (!domain_disk_online(d))
                        continue;
                int r = allocation(d->source, &bytes[i]);
                if (r < 0)
                        return qt_error_set(e, QT_ERR_NOT_FOUND, r, "%s (%s): cannot read it: %s",
                                            d->target, d->source, strerror(-r));
                total += bytes[i];
        }
        *ret_total = total;
        return 0;
}

/* Each disk found (after NULL), or what it gave back and why not when it gave nothing. */
static void report_disks(const struct domain_snapshot *s, const uint64_t *before,
                         const uint64_t *after, struct qt_reporter *r)
{
        for (unsigned i = 0; i < s->n_disks; i++) {
                const struct domain_disk *d = &s->disks[i];
                if (!domain_disk_online(d))
                        continue;
                struct qt_fs_result fs = {.kind = "image", .method = "agent"};
                snprintf(fs.name, sizeof(fs.name), "%s", d->target);
                snprintf(fs.fstype, sizeof(fs.fstype), "%s", d->format);
                fs.size = before[i];
                if (!after) {
                        snprintf(fs.state, sizeof(fs.state), "found");
                        qt_emit_fs(r, &fs);
                        continue;
                }
                fs.trimmed = before[i] > after[i] ? before[i] - after[i] : 0;
                snprintf(fs.state, sizeof(fs.state), "%s", fs.trimmed ? "trimmed" : "unchanged");
                /* The verdict says "they do not: why (fix)" of discards that cannot reach it. */
                static const char refused[] = "they do not";
                if (fs.trimmed == 0 && strncmp(d->verdict, refused, strlen(refused)) == 0)
                        snprintf(fs.message, sizeof(fs.message),
                                 "discards do not reach this image%s",
                                 d->verdict + strlen(refused));
                else if (fs.trimmed == 0)
                        snprintf(fs.message, sizeof(fs.message),
                                 "nothing came back: the guest freed nothing on it, or its "
                                 "discards did not reach the image");
                qt_emit_fs(r, &fs);
        }
}

int domain_online_trim(const char *uri, const struct domain_snapshot *s, struct qt_reporter *r)
{
        struct qt_error e = {};
        uint64_t *before = calloc(DOMAIN_MAX_DISKS, sizeof(*before));
        uint64_t *after = calloc(DOMAIN_MAX_DISKS, sizeof(*after));
        uint64_t total_before = 0, total_after = 0;
        virConnectPtr conn = NULL;
        virDomainPtr dom = NULL;
        struct agent_call call = {};
        int rc = 0;

        virSetErrorFunc(NULL, ignore_error);
        uint64_t start = now_usec();
        qt_emit_phase(r, QT_PHASE_INSPECT);
        if (!before || !after)
                rc = qt_error_set(&e, QT_ERR_FAILED, ENOMEM, "out of memory");
        if (rc == 0)
                rc = measure(s, before, &total_before, &e);
        if (rc == 0) {
                qt_emit_u64(r, "bytes-before", total_before);
                report_disks(s, before, NULL, r);
                /* Read-write: the agent's commands are not for read-only connections. */
                conn = virConnectOpen(uri);
                if (!conn)
                        rc = qt_error_set(&e, QT_ERR_LIBVIRT, EIO,
                                          "cannot connect read-write to libvirt at %s: %s", uri,
                                          virGetLastErrorMessage() ?: "unknown error");
        }
        /* By UUID: the name may have been given to another domain since it was read. */
        if (rc == 0 && !(dom = virDomainLookupByUUIDString(conn, s->uuid)))
                rc = qt_error_set(&e, QT_ERR_NO_SUCH_DOMAIN, ENOENT, "%s is gone: %s", s->name,
                                  virGetLastErrorMessage() ?: "unknown error");
        if (rc == 0 && virDomainIsActive(dom) != 1)
                rc = qt_error_set(&e, QT_ERR_DOMAIN_NOT_RUNNING, ESRCH,
                                  "%s is not running any more", s->name);
        qt_emit_phase_time(r, QT_PHASE_INSPECT, now_usec() - start);

        if (rc == 0) {
                start = now_usec();
                qt_emit_phase(r, QT_PHASE_ONLINE_TRIM);
                rc = qt_test_pause("online-trim");
                if (rc == 0)
                        rc = agent_fstrim(dom, &call);
                if (rc == -ECANCELED)
                        qt_error_set(&e, QT_ERR_CANCELED, ECANCELED,
                                     "canceled; the guest may go on trimming until its fstrim "
                                     "ends");
                else if (rc < 0)
                        qt_error_set(&e, QT_ERR_FAILED, rc, "cannot start the agent's call");
                else if (!call.result)
                        rc = agent_error(s, &call, &e);
                else {
                        int64_t trimmed = report_guest_paths(call.result, r);
                        if (trimmed < 0)
                                rc = qt_error_set(&e, QT_ERR_LIBVIRT, EBADMSG,
                                                  "the guest agent's answer does not parse: %.200s",
                                                  call.result);
                        else
                                qt_emit_u64(r, "bytes-trimmed", (uint64_t)trimmed);
                }
        }
        /* What the host holds now, also after a failure: the guest may have trimmed some. */
        if (before && after && total_before) {
                uint64_t previous = UINT64_MAX;
                int m = 0;
                for (int i = 0; i < AGENT_SETTLE_TRIES; i++) {
                        m = measure(s, after, &total_after, &e);
                        if (m < 0 || total_after == previous)
                                break;
                        previous = total_after;
                        nanosleep(&(struct timespec){.tv_nsec = AGENT_SETTLE_USEC * 1000}, NULL);
                }
                /* A disk gone meanwhile: its figures would be wrong, the job fails. */
                if (m < 0 && rc == 0)
                        rc = m;
                if (rc == 0)
                        report_disks(s, before, after, r);
                if (m == 0)
                        qt_emit_u64(r, "bytes-after", total_after);
                if (m == 0 && total_after < total_before)
                        qt_emit_str(r, "image-state", QT_IMAGE_TRIMMED);
        }
        if (rc == 0 || rc == -ECANCELED)
                qt_emit_phase_time(r, QT_PHASE_ONLINE_TRIM, now_usec() - start);
        if (rc == 0)
                qt_emit_phase(r, QT_PHASE_DONE);
        else
                qt_emit_error(r, &e);
        qt_emit_end(r);
        if (rc == -ECANCELED)
                _exit(1); /* the agent's thread may still wait in libvirt */
        free(call.result);
        if (dom)
                virDomainFree(dom);
        if (conn)
                virConnectClose(conn);
        free(before);
        free(after);
        return rc;
}
