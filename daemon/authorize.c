/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "authorize.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* CheckAuthorization flag: polkit may ask an agent for a password. Only when the caller said it
 * can wait for that (the message's ALLOW_INTERACTIVE_AUTHORIZATION flag, qtrimctl sets it on a
 * terminal); otherwise auth_admin is a plain "no". */
#define POLKIT_ALLOW_USER_INTERACTION 1u

struct pending {
        authorize_done_fn done;
        void *userdata;
};

static bool polkit_absent(const sd_bus_error *e)
{
        return sd_bus_error_has_names(e, SD_BUS_ERROR_SERVICE_UNKNOWN,
                                      SD_BUS_ERROR_NAME_HAS_NO_OWNER);
}

static int on_polkit_reply(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error)
{
        const struct pending p = *(struct pending *)userdata;
        const sd_bus_error *e = sd_bus_message_get_error(reply);
        if (e) {
                if (polkit_absent(e))
                        p.done(false, "polkit is not running: only root may do this", p.userdata);
                else
                        p.done(false, "polkit could not decide", p.userdata);
                return 0;
        }
        int authorized = 0, challenge = 0;
        int r = sd_bus_message_enter_container(reply, 'r', "bba{ss}");
        if (r >= 0)
                r = sd_bus_message_read(reply, "bb", &authorized, &challenge);
        if (r < 0)
                p.done(false, "polkit's answer did not parse", p.userdata);
        else if (authorized)
                p.done(true, NULL, p.userdata);
        else if (challenge)
                p.done(
                    false,
                    "authentication is required (run qtrimctl on a terminal with a polkit agent)",
                    p.userdata);
        else
                p.done(false, "not authorized by polkit", p.userdata);
        return 0;
}

int authorize(sd_bus_message *call, uid_t uid, const char *action, const char *image,
              authorize_done_fn done, void *userdata, sd_bus_slot **ret_slot)
{
        if (uid == 0)
                return 1;

        struct pending *p = malloc(sizeof(*p));
        if (!p)
                return -ENOMEM;
        *p = (struct pending){.done = done, .userdata = userdata};
        /* The subject is the caller's bus name: polkit looks up its process and session. */
        unsigned flags = sd_bus_message_get_allow_interactive_authorization(call)
                             ? POLKIT_ALLOW_USER_INTERACTION
                             : 0;
        sd_bus_slot *slot = NULL;
        int r = sd_bus_call_method_async(
            sd_bus_message_get_bus(call), &slot, "org.freedesktop.PolicyKit1",
            "/org/freedesktop/PolicyKit1/Authority", "org.freedesktop.PolicyKit1.Authority",
            "CheckAuthorization", on_polkit_reply, p, "(sa{sv})sa{ss}us", "system-bus-name", 1,
            "name", "s", sd_bus_message_get_sender(call), action, 1, "image", image ? image : "",
            flags, "");
        if (r < 0) {
                free(p);
                return r;
        }
        sd_bus_slot_set_destroy_callback(slot, free);
        *ret_slot = slot;
        return 0;
}
