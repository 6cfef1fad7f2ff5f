/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * What qtrimd remembers of the temporary copies its workers write beside images, so that one
 * left by a crash of both (qtrimd killed, its worker killed before it could clean up) is
 * deleted when qtrimd starts again. One file per job in <state dir>/temp-files/, holding the
 * image's path and the copy's. A worker that dies while qtrimd lives is cleaned up at once
 * (job.c); this is for when nobody was left to do it.
 */
#pragma once

/* Records job's copy of image at temp, or forgets it when temp is "". */
int temp_record_set(const char *state_dir, unsigned job, const char *image, const char *temp);
/* At start: deletes every recorded copy (only names qtrim makes for that image) and the records. */
void temp_records_sweep(const char *state_dir);
