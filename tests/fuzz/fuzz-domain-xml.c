/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Fuzzes domain_xml_read_disks() and domain_disk_judge(): a domain's XML comes from libvirt, but
 * whoever may define domains writes it, and qtrimd's child reads it as root. Whatever it accepts,
 * a disk a shrink takes must be a raw or qcow2 file disk that is neither read-only nor shared.
 */
#include <string.h>

#include "domain-xml.h"
#include "fuzz.h"

#define MAX_DISKS 8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        static struct domain_disk disks[MAX_DISKS];
        char why[256];
        unsigned n = 0;
        memset(disks, 0, sizeof(disks));
        int r =
            domain_xml_read_disks((const char *)data, size, disks, MAX_DISKS, &n, why, sizeof(why));
        if (r < 0) {
                FUZZ_CHECK(why[0]);
                return 0;
        }
        FUZZ_CHECK(n <= MAX_DISKS);
        for (unsigned i = 0; i < n; i++) {
                struct domain_disk *d = &disks[i];
                domain_disk_judge(d, "fuzz", size % 2 ? 3000000 : 7002000, size % 3 == 0);
                FUZZ_CHECK(memchr(d->source, '\0', sizeof(d->source)));
                FUZZ_CHECK(memchr(d->verdict, '\0', sizeof(d->verdict)));
                if (d->skip[0])
                        continue;
                FUZZ_CHECK(strcmp(d->device, "disk") == 0 && !d->readonly && !d->shareable);
                FUZZ_CHECK(strcmp(d->type, "file") == 0 || strcmp(d->type, "volume") == 0);
                FUZZ_CHECK(strcmp(d->format, "raw") == 0 || strcmp(d->format, "qcow2") == 0);
                FUZZ_CHECK(d->source[0] && d->verdict[0]);
        }
        return 0;
}
