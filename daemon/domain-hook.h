/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * DomainStopped and DomainStarting: what libvirt's hook (qtrim-libvirt-hook, in
 * /etc/libvirt/hooks/qemu.d/) tells qtrimd about a domain, with the domain's XML as libvirt gave
 * it to the hook. A hook, not libvirt's lifecycle events: a start must release qtrim's hold on an
 * image before QEMU opens it (a job holds qemu's lock on the image, so QEMU would fail to open
 * it), and libvirt runs the "prepare begin" hook synchronously before QEMU starts, while a
 * STARTED event only comes after. A hook must never call back into libvirt, so the disks come
 * from that XML alone.
 *
 * - DomainStopped ("release end"): a domain ShrinkOnShutdown= names has its disks queued as
 *   ShrinkDomain with if-changed queues them (domain_call_set_xml()).
 * - DomainStarting ("prepare begin"): every job and pending request on a file the domain's disks
 *   name is canceled at once, and the answer waits until they have ended (worker torn down,
 *   qemu's lock released) or for HOOK_START_WAIT_USEC. From the call until HOOK_START_HOLD_USEC
 *   after the answer, a request on those files is refused with ImageInUse, which covers the time
 *   between the hook's return and QEMU's open.
 *
 * Both are root's alone (the hook runs as root): nobody else may claim that a domain stopped or
 * starts. Volume disks are not matched (resolving one would be a call to libvirt), nor backing
 * files (a job on an image with overlays beside it is refused anyway, HasOverlays).
 */
#pragma once

#include <stdbool.h>
#include <sys/types.h>
#include <systemd/sd-bus.h>

#define HOOK_START_WAIT_USEC (20 * 1000000ULL)
#define HOOK_START_HOLD_USEC (60 * 1000000ULL)

struct manager;
struct domain_call;

/* The methods' handlers in manager.c's vtable (userdata: the manager); the reply comes later. */
int domain_hook_stopped(sd_bus_message *msg, void *userdata, sd_bus_error *error);
int domain_hook_starting(sd_bus_message *msg, void *userdata, sd_bus_error *error);

/* The domain that is starting with the file (dev, ino) among its disks, within the hold after
 * its DomainStarting; NULL if none. */
const char *domain_hook_starting_with(dev_t dev, ino_t ino);

/* At qtrimd's exit: answers the calls still waiting and frees what is left. */
void domain_hook_free_all(void);

/* In manager.c: a domain call (c, consumed) for root, through the request path; its reply goes
 * to call. 0, or a negative errno when it could not start (call not answered). */
int manager_start_domain_call(struct manager *m, sd_bus_message *call, const char *name,
                              struct domain_call *c);
/* In manager.c: cancels the workers of pending Shrink and Inspect requests on the file; returns
 * how many such requests are still there. */
unsigned manager_cancel_requests_on_file(struct manager *m, dev_t dev, ino_t ino);
