/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The D-Bus contract between qtrimd and its clients. The README's "D-Bus API" section and
 * org.qtrim1.xml describe it for people; this header is the one place code takes names from.
 */
#pragma once

#define QTRIM_BUS_NAME        "org.qtrim1"
#define QTRIM_MANAGER_PATH    "/org/qtrim1"
#define QTRIM_MANAGER_IFACE   "org.qtrim1.Manager"
#define QTRIM_JOB_IFACE       "org.qtrim1.Job"
#define QTRIM_JOB_PATH_PREFIX "/org/qtrim1/job"

/* One volume of the guest disk: name ("p1", "p5", "disk", "VG/LV", "VG freeN", "gapN"), fstype
 * ("" if unknown), offset and size in bytes within the virtual disk, bytes trimmed (FITRIM) or
 * discarded, state ("found", "trimmed", "discarded", "skipped", "failed"), a one-line message
 * (why it was skipped or failed, what a discard kept; Inspect: what a shrink would do and how
 * much of it the image holds), kind ("partition", "disk", "lv", "gap", "free"), method
 * ("mount": FITRIM, "swap": header page kept, "discard", "skip"), label and UUID ("" if none). */
#define QTRIM_FS_SIGNATURE       "(sstttssssss)"
#define QTRIM_FS_ARRAY_SIGNATURE "a" QTRIM_FS_SIGNATURE
/* Time spent per phase: phase name, microseconds. */
#define QTRIM_PHASE_TIME_ELEMENT   "(st)"
#define QTRIM_PHASE_TIME_SIGNATURE "a" QTRIM_PHASE_TIME_ELEMENT

/* Shrink() options (a{sv}); Inspect() takes "format", "trim-gaps", "if-changed" and
 * "estimate". */
/* b: convert to a compact copy after the trim (default true) */
#define QTRIM_OPT_CONVERT "convert"
/* b: refuse with Error.Unchanged if nothing wrote to the image since qtrim last shrank it */
#define QTRIM_OPT_IF_CHANGED "if-changed"
/* s: the image's format, "raw" or "qcow2", used end to end; content that disagrees is refused
 * with Error.FormatMismatch. Without it qtrim guesses only in the safe direction (image.h). */
#define QTRIM_OPT_FORMAT "format"
/* b: discard the space outside the partitions (default true; TrimGaps=no in qtrimd.conf wins) */
#define QTRIM_OPT_TRIM_GAPS "trim-gaps"
/* Inspect, b: also estimate what a shrink would give back (default false; it mounts read-only
 * the filesystems a shrink would mount). The answer's "info" then has ReclaimableBytes (t, the
 * total) and Estimate: per volume its name, used, free and reclaimable bytes. */
#define QTRIM_OPT_ESTIMATE "estimate"
/* ShrinkDomain, b: the domain runs; its guest trims through qemu-guest-agent, as one job whose
 * Filesystems are the guest's filesystems (kind "guest": trimmed is what the guest says) and the
 * domain's file disks (kind "image": size is the host's allocation before, trimmed what the host
 * got back, message why nothing came back). Default false: the domain must be shut off. */
#define QTRIM_OPT_ONLINE               "online"
#define QTRIM_INFO_RECLAIMABLE         "ReclaimableBytes"
#define QTRIM_INFO_ESTIMATE            "Estimate"
#define QTRIM_ESTIMATE_SIGNATURE       "(sttt)"
#define QTRIM_ESTIMATE_ARRAY_SIGNATURE "a" QTRIM_ESTIMATE_SIGNATURE

/* InspectDomain(s name, a{sv} options) -> (a{sv} info, a(ssssssssss) disks) and
 * ShrinkDomain(s name, a{sv} options) -> a(ssoss) disks, for libvirt domains. InspectDomain's
 * info: Name s, UUID s, State s (libvirt's words: "running", "paused", "shut off", ...),
 * Active b (a QEMU process exists), HypervisorVersion s ("7.2.0", "" if unknown). A disk: target
 * ("vda"), device ("disk", "cdrom", "floppy", "lun"), bus ("virtio", "scsi", "sata", ...), type
 * ("file", "block", "network", "volume", ...), source (the file; a volume's path), format (the
 * driver type), discard and detect_zeroes ("" when unset), skip (why a shrink leaves it alone, ""
 * when it does not) and verdict (whether the guest's discards reach the image, and if not what to
 * change). ShrinkDomain takes "convert", "if-changed" and "trim-gaps" as Shrink does (the format is
 * the domain XML's) and answers per disk: target, source, job ("/" when none), error (the D-Bus
 * error name of a refused disk, "" otherwise) and message (the skip reason or the refusal). */
#define QTRIM_DOMAIN_DISK_SIGNATURE         "(ssssssssss)"
#define QTRIM_DOMAIN_DISK_ARRAY_SIGNATURE   "a" QTRIM_DOMAIN_DISK_SIGNATURE
#define QTRIM_DOMAIN_SHRUNK_SIGNATURE       "(ssoss)"
#define QTRIM_DOMAIN_SHRUNK_ARRAY_SIGNATURE "a" QTRIM_DOMAIN_SHRUNK_SIGNATURE
/* ListDomainImages: image (canonical path), domain name, domain state. */
#define QTRIM_DOMAIN_IMAGE_SIGNATURE       "(sss)"
#define QTRIM_DOMAIN_IMAGE_ARRAY_SIGNATURE "a" QTRIM_DOMAIN_IMAGE_SIGNATURE

/* Job.State values. */
#define QTRIM_STATE_QUEUED   "queued"
#define QTRIM_STATE_RUNNING  "running"
#define QTRIM_STATE_DONE     "done"
#define QTRIM_STATE_FAILED   "failed"
#define QTRIM_STATE_CANCELED "canceled"
