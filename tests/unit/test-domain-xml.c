/* SPDX-License-Identifier: GPL-2.0-or-later */
/* domain-xml.h on XML text alone: which disks a shrink of a domain takes, why not the others,
 * and whether the guest's discards reach each image. tests/integration/libvirt.sh checks the same
 * against a real libvirtd. */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "check-main.h"
#include "domain-xml.h"

#define QEMU_7_2 7002000ULL

static const char *const web01 =
    "<domain type='kvm'><name>web01</name><devices>"
    "<disk type='file' device='disk'><driver name='qemu' type='qcow2' discard='unmap'/>"
    "<source file='/i/web01.qcow2'/><target dev='vda' bus='virtio'/></disk>"
    "<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
    "<source file='/i/data.raw'/><target dev='sda' bus='scsi'/></disk>"
    "<disk type='file' device='disk'><driver name='qemu' type='raw' discard='unmap'/>"
    "<source file='/i/sata.raw'/><target dev='sdb' bus='sata'/></disk>"
    "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
    "<source file='/i/debian.iso'/><target dev='sdc' bus='sata'/><readonly/></disk>"
    "<disk type='file' device='disk'><source file='/i/noformat.img'/>"
    "<target dev='vdb' bus='virtio'/></disk>"
    "</devices></domain>";

static unsigned read_disks(const char *xml, struct domain_disk *disks, unsigned max, bool active)
{
        char why[128] = "";
        unsigned n = 0;
        ck_assert_msg(domain_xml_read_disks(xml, strlen(xml), disks, max, &n, why, sizeof(why)) ==
                          0,
                      "%s", why);
        for (unsigned i = 0; i < n; i++)
                domain_disk_judge(&disks[i], "web01", QEMU_7_2, active);
        return n;
}

START_TEST(test_disks_taken_and_skipped)
{
        struct domain_disk d[8] = {};
        ck_assert_uint_eq(read_disks(web01, d, 8, false), 5);
        ck_assert_str_eq(d[0].target, "vda");
        ck_assert_str_eq(d[0].source, "/i/web01.qcow2");
        ck_assert_str_eq(d[0].format, "qcow2");
        ck_assert_str_eq(d[0].skip, "");
        ck_assert_str_eq(d[1].skip, "");
        ck_assert_str_eq(d[3].skip, "a CD-ROM");
        ck_assert_str_eq(d[3].verdict, "");
        /* qtrim never guesses a raw disk's format: the domain must say it. */
        ck_assert_msg(strstr(d[4].skip, "does not say its format"), "%s", d[4].skip);
}
END_TEST

START_TEST(test_verdicts)
{
        struct domain_disk d[8] = {};
        read_disks(web01, d, 8, false);
        ck_assert_msg(strstr(d[0].verdict, "guest kernel is >= 5.0"), "%s", d[0].verdict);
        ck_assert_msg(strstr(d[1].verdict, "they do not: discard is not 'unmap' (virt-xml web01 "
                                           "--edit target=sda --disk discard=unmap"),
                      "%s", d[1].verdict);
        ck_assert_str_eq(d[2].verdict, "discards reach this image");

        /* An old QEMU: virtio-blk passes no discards at all. */
        domain_disk_judge(&d[0], "web01", 3001000, false);
        ck_assert_msg(strstr(d[0].verdict, "only with QEMU >= 4.0 (this host has 3.1)"), "%s",
                      d[0].verdict);

        /* Running without unmap, defined with it: a restart is what it takes. */
        d[1].has_defined_discard = true;
        snprintf(d[1].defined_discard, sizeof(d[1].defined_discard), "unmap");
        domain_disk_judge(&d[1], "web01", QEMU_7_2, true);
        ck_assert_msg(strstr(d[1].verdict, "they do not until web01 restarts"), "%s", d[1].verdict);
}
END_TEST

START_TEST(test_refusals)
{
        struct domain_disk d[2];
        char why[128];
        unsigned n = 99;
        const char *junk = "<domain><devices><disk";
        ck_assert_int_eq(domain_xml_read_disks(junk, strlen(junk), d, 2, &n, why, sizeof(why)),
                         -EINVAL);
        ck_assert_uint_eq(n, 99);
        const char *other = "<network><name>default</name></network>";
        ck_assert_int_eq(domain_xml_read_disks(other, strlen(other), d, 2, &n, why, sizeof(why)),
                         -EINVAL);
        ck_assert_msg(strstr(why, "no <domain> element"), "%s", why);
        ck_assert_int_eq(domain_xml_read_disks(web01, strlen(web01), d, 2, &n, why, sizeof(why)),
                         -E2BIG);
        /* No entity is expanded, no file read: an external entity (text libvirt never makes) in
         * an attribute is refused as XML that does not parse. */
        const char *xxe = "<!DOCTYPE d [<!ENTITY x SYSTEM 'file:///etc/shadow'>]><domain><devices>"
                          "<disk type='file' device='disk'><driver type='raw'/>"
                          "<source file='&x;'/><target dev='vda' bus='sata'/></disk>"
                          "</devices></domain>";
        struct domain_disk one[1] = {};
        ck_assert_int_eq(domain_xml_read_disks(xxe, strlen(xxe), one, 1, &n, why, sizeof(why)),
                         -EINVAL);
        ck_assert_str_eq(one[0].source, "");
}
END_TEST

static Suite *suite(void)
{
        Suite *s = suite_create("domain-xml");
        TCase *tc = tcase_create("disks");
        tcase_add_test(tc, test_disks_taken_and_skipped);
        tcase_add_test(tc, test_verdicts);
        tcase_add_test(tc, test_refusals);
        suite_add_tcase(s, tc);
        return s;
}

CHECK_MAIN(suite)
