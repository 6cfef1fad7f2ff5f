/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The only code that calls libvirt; it runs in the child domain.c forks, where blocking is fine. */
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "domain.h"

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
                snprintf(why, sizeof(why), "volume %s of pool %s: %s", d->volume, d->pool, problem);
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
