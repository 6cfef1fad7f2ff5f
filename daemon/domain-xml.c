/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "domain-xml.h"

#include <errno.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static bool is_element(const xmlNode *n, const char *name)
{
        return n->type == XML_ELEMENT_NODE && strcmp((const char *)n->name, name) == 0;
}

static const xmlNode *first_child(const xmlNode *parent, const char *name)
{
        for (const xmlNode *c = parent->children; c; c = c->next)
                if (is_element(c, name))
                        return c;
        return NULL;
}

/* The attribute's value into buf ("" when absent or when it does not fit: no value qtrim acts on
 * is ever cut short). */
static void copy_attribute(const xmlNode *n, const char *name, char *buf, size_t size)
{
        buf[0] = '\0';
        if (!n)
                return;
        xmlChar *v = xmlGetProp(n, (const xmlChar *)name);
        if (v && strlen((const char *)v) < size)
                snprintf(buf, size, "%s", (const char *)v);
        xmlFree(v);
}

static void read_disk(const xmlNode *n, struct domain_disk *d)
{
        *d = (struct domain_disk){};
        copy_attribute(n, "type", d->type, sizeof(d->type));
        copy_attribute(n, "device", d->device, sizeof(d->device));
        /* libvirt's defaults when the attributes are left out. */
        if (!d->type[0])
                snprintf(d->type, sizeof(d->type), "file");
        if (!d->device[0])
                snprintf(d->device, sizeof(d->device), "disk");

        const xmlNode *driver = first_child(n, "driver");
        copy_attribute(driver, "type", d->format, sizeof(d->format));
        copy_attribute(driver, "discard", d->discard, sizeof(d->discard));
        copy_attribute(driver, "detect_zeroes", d->detect_zeroes, sizeof(d->detect_zeroes));

        const xmlNode *source = first_child(n, "source");
        if (strcmp(d->type, "file") == 0)
                copy_attribute(source, "file", d->source, sizeof(d->source));
        else if (strcmp(d->type, "block") == 0)
                copy_attribute(source, "dev", d->source, sizeof(d->source));
        else if (strcmp(d->type, "dir") == 0)
                copy_attribute(source, "dir", d->source, sizeof(d->source));
        else if (strcmp(d->type, "volume") == 0) {
                copy_attribute(source, "pool", d->pool, sizeof(d->pool));
                copy_attribute(source, "volume", d->volume, sizeof(d->volume));
        } else if (strcmp(d->type, "network") == 0)
                copy_attribute(source, "name", d->source, sizeof(d->source));

        const xmlNode *target = first_child(n, "target");
        copy_attribute(target, "dev", d->target, sizeof(d->target));
        copy_attribute(target, "bus", d->bus, sizeof(d->bus));
        d->readonly = first_child(n, "readonly") != NULL;
        d->shareable = first_child(n, "shareable") != NULL;
}

int domain_xml_read_disks(const char *xml, size_t len, struct domain_disk *disks, unsigned max,
                          unsigned *ret_n, char *why, size_t why_size)
{
        if (len > (size_t)INT32_MAX) {
                snprintf(why, why_size, "the domain XML is too large");
                return -EINVAL;
        }
        /* No network, no entities: the text comes from libvirt, but nothing in it may make
         * the reader fetch anything. */
        xmlDoc *doc = xmlReadMemory(xml, (int)len, "domain.xml", NULL,
                                    XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
        if (!doc) {
                snprintf(why, why_size, "the domain XML does not parse");
                return -EINVAL;
        }
        int r = 0;
        unsigned n = 0;
        const xmlNode *root = xmlDocGetRootElement(doc);
        const xmlNode *devices =
            root && is_element(root, "domain") ? first_child(root, "devices") : NULL;
        if (!root || !is_element(root, "domain")) {
                snprintf(why, why_size, "not a domain's XML (no <domain> element)");
                r = -EINVAL;
        }
        for (const xmlNode *c = devices ? devices->children : NULL; r == 0 && c; c = c->next) {
                if (!is_element(c, "disk"))
                        continue;
                if (n == max) {
                        snprintf(why, why_size, "the domain has more than %u disks", max);
                        r = -E2BIG;
                        break;
                }
                read_disk(c, &disks[n++]);
        }
        xmlFreeDoc(doc);
        if (r == 0)
                *ret_n = n;
        return r;
}

static void set_skip(struct domain_disk *d, const char *reason)
{
        snprintf(d->skip, sizeof(d->skip), "%s", reason);
}

/* Why a shrink of the domain leaves this disk alone, in the order a reader would ask. */
static void judge_skip(struct domain_disk *d)
{
        if (strcmp(d->device, "cdrom") == 0)
                set_skip(d, "a CD-ROM");
        else if (strcmp(d->device, "floppy") == 0)
                set_skip(d, "a floppy");
        else if (strcmp(d->device, "disk") != 0)
                snprintf(d->skip, sizeof(d->skip), "a %s device, not a disk", d->device);
        else if (d->readonly)
                set_skip(d, "read-only in the domain");
        else if (d->shareable)
                set_skip(d, "shared with other domains");
        else if (strcmp(d->type, "network") == 0)
                set_skip(d, "a network disk: its storage is not a file here");
        else if (strcmp(d->type, "block") == 0)
                set_skip(d, "a block device, not an image file");
        else if (strcmp(d->type, "file") != 0 && strcmp(d->type, "volume") != 0)
                snprintf(d->skip, sizeof(d->skip), "a disk of type %s, not an image file", d->type);
        else if (!d->source[0])
                set_skip(d, "no source file");
        else if (!d->format[0])
                /* qtrim never guesses a raw disk's format, and neither should it here. */
                set_skip(d, "the domain XML does not say its format (<driver type=.../>)");
        else if (strcmp(d->format, "raw") != 0 && strcmp(d->format, "qcow2") != 0)
                snprintf(d->skip, sizeof(d->skip), "format %s: qtrim shrinks raw and qcow2",
                         d->format);
}

static void judge_verdict(struct domain_disk *d, const char *domain,
                          unsigned long long hypervisor_version, bool active)
{
        char *v = d->verdict;
        size_t size = sizeof(d->verdict);
        if (strcmp(d->device, "disk") != 0) {
                v[0] = '\0';
                return;
        }
        if (strcmp(d->discard, "unmap") != 0) {
                if (active && d->has_defined_discard && strcmp(d->defined_discard, "unmap") == 0)
                        snprintf(v, size,
                                 "they do not until %s restarts: its definition has "
                                 "discard='unmap', the running domain started without it",
                                 domain);
                else
                        snprintf(v, size,
                                 "they do not: discard is not 'unmap' (virt-xml %s --edit "
                                 "target=%s --disk discard=unmap, then restart)",
                                 domain, d->target);
                return;
        }
        if (strcmp(d->bus, "virtio") == 0) {
                /* virtio-blk got discard in QEMU 4.0 and in the guest's driver in Linux 5.0. */
                if (hypervisor_version && hypervisor_version < 4000000)
                        snprintf(v, size,
                                 "they do not: virtio-blk passes discards only with QEMU >= 4.0 "
                                 "(this host has %llu.%llu); use bus virtio-scsi or sata",
                                 hypervisor_version / 1000000, hypervisor_version / 1000 % 1000);
                else
                        snprintf(v, size,
                                 "discards reach this image if the guest kernel is >= 5.0 "
                                 "(virtio-blk passes discards only with QEMU >= 4.0 and a guest "
                                 "kernel >= 5.0)");
                return;
        }
        /* SCSI disks (any controller: QEMU's scsi-hd answers UNMAP), SATA and IDE (TRIM), USB
         * storage (SCSI underneath). */
        if (strcmp(d->bus, "scsi") == 0 || strcmp(d->bus, "sata") == 0 ||
            strcmp(d->bus, "ide") == 0 || strcmp(d->bus, "usb") == 0) {
                snprintf(v, size, "discards reach this image");
                return;
        }
        snprintf(v, size, "cannot tell: qtrim does not know whether bus '%s' passes discards",
                 d->bus);
}

void domain_disk_judge(struct domain_disk *d, const char *domain,
                       unsigned long long hypervisor_version, bool active)
{
        if (!d->skip[0])
                judge_skip(d);
        judge_verdict(d, domain, hypervisor_version, active);
}
