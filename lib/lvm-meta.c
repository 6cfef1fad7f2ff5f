/* SPDX-License-Identifier: GPL-2.0-or-later */
#include "lvm-meta.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/*
 * The on-disk layout, little-endian (lvm2's lib/label/label.h and lib/format_text/layout.h):
 * a 512-byte label sector in one of the first four sectors, {"LABELONE", sector, crc, offset,
 * "LVM2 001"}, the crc covering the sector from the offset field on; at offset, the pv_header
 * {uuid[32], device_size} followed by two lists of {offset, size} (data areas, then metadata
 * areas), each ended by an entry of offset 0. Each metadata area starts with a 512-byte
 * mda_header {crc, magic[16], version, start, size, raw_locn[]}, the crc covering the rest of
 * the sector; raw_locn[0] {offset, size, crc, flags} locates the committed text, relative to
 * the area's start, in a circular buffer that is the area minus its header.
 */
#define LABEL_ID          "LABELONE"
#define LABEL_TYPE        "LVM2 001"
#define LABEL_HEADER_SIZE 32
#define LABEL_OFF_SECTOR  8
#define LABEL_OFF_CRC     16
#define LABEL_OFF_OFFSET  20
#define LABEL_OFF_TYPE    24
#define PV_HEADER_SIZE    40 /* uuid + device_size; the lists follow */
#define DISK_LOCN_SIZE    16
#define MDA_HEADER_SIZE   512
#define MDA_MAGIC         "\040\114\126\115\062\040\170\133\065\101\045\162\060\116\052\076"
#define MDA_VERSION       1
#define MDA_OFF_MAGIC     4
#define MDA_OFF_VERSION   20
#define MDA_OFF_START     24
#define MDA_OFF_SIZE      32
#define MDA_OFF_RLOCN0    40
#define RAW_LOCN_IGNORED  0x1
#define MDAS_MAX          2 /* pvcreate --pvmetadatacopies allows 0, 1 or 2 */
#define INITIAL_CRC       0xf597a6cfu

/* lvm2's extent sizes (lib/metadata/vg.c): a power of two, or a multiple of 128 KiB. */
#define NON_POWER2_EXTENT_MULTIPLE 256

static int fail(char *why, size_t why_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char *why, size_t why_size, const char *fmt, ...)
{
        if (why && why_size > 0) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(why, why_size, fmt, ap);
                va_end(ap);
        }
        return -EUCLEAN;
}

static uint32_t le32(const uint8_t *p)
{
        return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p)
{
        return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

/* lvm2's calc_crc(): the reflected CRC-32 (polynomial 0xedb88320) with lvm2's own initial
 * value and no final inversion. The table is built per call, on the stack: 2 K steps are
 * nothing next to the text it covers, and there is no shared state to initialise. */
static uint32_t lvm_crc(uint32_t crc, const uint8_t *buf, size_t len)
{
        uint32_t table[256];
        for (uint32_t i = 0; i < 256; i++) {
                uint32_t c = i;
                for (int k = 0; k < 8; k++)
                        c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
                table[i] = c;
        }
        for (size_t i = 0; i < len; i++)
                crc = table[(crc ^ buf[i]) & 0xff] ^ (crc >> 8);
        return crc;
}

/* lvm2's ids are 32 characters from this set, written with dashes in the text. */
static bool uuid_char(char c)
{
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '!' || c == '#';
}

/* s without its dashes into ret: 0, or -EINVAL unless that is 32 id characters. */
static int uuid_from_text(const char *s, char ret[QT_LVM_UUID_LEN + 1])
{
        size_t n = 0;
        for (; *s; s++) {
                if (*s == '-')
                        continue;
                if (!uuid_char(*s) || n == QT_LVM_UUID_LEN)
                        return -EINVAL;
                ret[n++] = *s;
        }
        if (n != QT_LVM_UUID_LEN)
                return -EINVAL;
        ret[n] = '\0';
        return 0;
}

/* ---- label, pv_header, metadata areas ---- */

/*
 * The committed text of metadata area `index` at [start, start + size): 1 and *ret_text, 0
 * when the area holds none (new, or ignored with pvchange --metadataignore), or a negative
 * errno. The text may wrap: what does not fit before the end of the area continues right after
 * the header, and the crc covers both parts in that order.
 */
static int read_mda(qt_lvm_read_fn read, void *ctx, unsigned index, uint64_t start, uint64_t size,
                    char **ret_text, size_t *ret_len, char *why, size_t why_size)
{
        uint8_t h[MDA_HEADER_SIZE];
        int r = read(ctx, h, sizeof(h), start);
        if (r < 0)
                return r;
        if (lvm_crc(INITIAL_CRC, h + MDA_OFF_MAGIC, sizeof(h) - MDA_OFF_MAGIC) != le32(h))
                return fail(why, why_size, "metadata area %u: bad mda header crc", index);
        if (memcmp(h + MDA_OFF_MAGIC, MDA_MAGIC, 16) != 0)
                return fail(why, why_size, "metadata area %u: bad mda header magic", index);
        if (le32(h + MDA_OFF_VERSION) != MDA_VERSION)
                return fail(why, why_size, "metadata area %u: mda header version %u", index,
                            le32(h + MDA_OFF_VERSION));
        /* lvm2 writes both from the label's entry; a header that says otherwise is not the
         * one the label points to, and its size would bound the reads below. */
        if (le64(h + MDA_OFF_START) != start || le64(h + MDA_OFF_SIZE) != size)
                return fail(why, why_size,
                            "metadata area %u: mda header says %llu bytes at %llu, the label "
                            "%llu at %llu",
                            index, (unsigned long long)le64(h + MDA_OFF_SIZE),
                            (unsigned long long)le64(h + MDA_OFF_START), (unsigned long long)size,
                            (unsigned long long)start);

        const uint8_t *rlocn = h + MDA_OFF_RLOCN0;
        uint64_t offset = le64(rlocn), len = le64(rlocn + 8);
        uint32_t checksum = le32(rlocn + 16), flags = le32(rlocn + 20);
        if (flags & RAW_LOCN_IGNORED)
                return 0;
        if (offset == 0 && len == 0)
                return 0;
        if (offset < MDA_HEADER_SIZE || offset >= size || len == 0 || len > size - MDA_HEADER_SIZE)
                return fail(why, why_size,
                            "metadata area %u: text of %llu bytes at %llu lies outside the "
                            "%llu-byte area",
                            index, (unsigned long long)len, (unsigned long long)offset,
                            (unsigned long long)size);
        if (len > QT_LVM_METADATA_MAX)
                return fail(why, why_size,
                            "metadata area %u: text of %llu bytes, more than the %u read", index,
                            (unsigned long long)len, QT_LVM_METADATA_MAX);

        /* Both parts lie within the area: len <= size - header makes the wrapped part end
         * before offset, where the first one starts. */
        size_t first = (size_t)(len < size - offset ? len : size - offset);
        size_t wrap = (size_t)len - first;
        _cleanup_free_ char *text = malloc((size_t)len + 1);
        if (!text)
                return -ENOMEM;
        r = read(ctx, text, first, start + offset);
        if (r < 0)
                return r;
        if (wrap > 0) {
                r = read(ctx, text + first, wrap, start + MDA_HEADER_SIZE);
                if (r < 0)
                        return r;
        }
        uint32_t crc = lvm_crc(INITIAL_CRC, (const uint8_t *)text, first);
        crc = lvm_crc(crc, (const uint8_t *)text + first, wrap);
        if (crc != checksum)
                return fail(why, why_size, "metadata area %u: bad metadata text crc%s", index,
                            wrap ? " (text wraps around the area's end)" : "");
        text[len] = '\0';
        *ret_len = strlen(text);
        *ret_text = TAKE_PTR(text);
        return 1;
}

static void free_texts(char *(*texts)[MDAS_MAX])
{
        for (size_t i = 0; i < MDAS_MAX; i++)
                free((*texts)[i]);
}

/* The seqno of a metadata text, or -1 if it does not parse. */
static int64_t text_seqno(const char *text, size_t len)
{
        struct qt_lvm_vg vg = {};
        if (qt_lvm_parse_metadata(text, len, &vg, NULL, 0) < 0)
                return -1;
        int64_t seqno = (int64_t)vg.seqno;
        qt_lvm_vg_done(&vg);
        return seqno;
}

int qt_lvm_read_label(qt_lvm_read_fn read, void *ctx, uint64_t device_size,
                      struct qt_lvm_pv_label *ret, char *why, size_t why_size)
{
        uint8_t sectors[QT_LVM_LABEL_SECTORS * QT_LVM_SECTOR_SIZE];
        uint64_t n_sectors = device_size / QT_LVM_SECTOR_SIZE;
        if (n_sectors > QT_LVM_LABEL_SECTORS)
                n_sectors = QT_LVM_LABEL_SECTORS;
        if (n_sectors == 0)
                return 0;
        int r = read(ctx, sectors, (size_t)n_sectors * QT_LVM_SECTOR_SIZE, 0);
        if (r < 0)
                return r;

        /* As lvm2 scans: the first label that is where it says it is and whose crc holds.
         * One that fails is remembered, so that a damaged PV is not taken for no PV at all. */
        const uint8_t *label = NULL;
        int damaged = 0;
        for (unsigned s = 0; s < n_sectors && !label; s++) {
                const uint8_t *lh = sectors + s * QT_LVM_SECTOR_SIZE;
                if (memcmp(lh, LABEL_ID, 8) != 0)
                        continue;
                if (le64(lh + LABEL_OFF_SECTOR) != s) {
                        if (!damaged)
                                damaged = fail(why, why_size,
                                               "label in sector %u says it is in sector %llu", s,
                                               (unsigned long long)le64(lh + LABEL_OFF_SECTOR));
                        continue;
                }
                if (lvm_crc(INITIAL_CRC, lh + LABEL_OFF_OFFSET,
                            QT_LVM_SECTOR_SIZE - LABEL_OFF_OFFSET) != le32(lh + LABEL_OFF_CRC)) {
                        if (!damaged)
                                damaged = fail(why, why_size, "label in sector %u: bad crc", s);
                        continue;
                }
                label = lh;
        }
        if (!label)
                return damaged;
        if (memcmp(label + LABEL_OFF_TYPE, LABEL_TYPE, 8) != 0)
                return fail(why, why_size, "an LVM label of another type than \"" LABEL_TYPE "\"");

        uint32_t pvh = le32(label + LABEL_OFF_OFFSET);
        if (pvh < LABEL_HEADER_SIZE || pvh > QT_LVM_SECTOR_SIZE - PV_HEADER_SIZE)
                return fail(why, why_size, "pv_header at %u, outside the label sector", pvh);
        struct qt_lvm_pv_label l = {};
        memcpy(l.pv_uuid, label + pvh, QT_LVM_UUID_LEN);
        for (unsigned i = 0; i < QT_LVM_UUID_LEN; i++)
                if (!uuid_char(l.pv_uuid[i]))
                        return fail(why, why_size, "pv_header: a PV uuid with a byte 0x%02x",
                                    (unsigned char)l.pv_uuid[i]);
        l.device_size = le64(label + pvh + 32);

        /* Data areas: lvm2 writes one, whose offset is pe_start. */
        size_t p = pvh + PV_HEADER_SIZE;
        bool have_data = false;
        for (;;) {
                if (p + DISK_LOCN_SIZE > QT_LVM_SECTOR_SIZE)
                        return fail(why, why_size, "pv_header: data areas run past the label");
                uint64_t offset = le64(label + p), size = le64(label + p + 8);
                p += DISK_LOCN_SIZE;
                if (offset == 0)
                        break;
                /* size 0 is "to the end of the device". */
                if (offset > device_size || size > device_size - offset)
                        return fail(why, why_size,
                                    "data area of %llu bytes at %llu lies past the %llu-byte "
                                    "device",
                                    (unsigned long long)size, (unsigned long long)offset,
                                    (unsigned long long)device_size);
                if (!have_data)
                        l.data_offset = offset;
                have_data = true;
        }
        if (!have_data)
                return fail(why, why_size, "pv_header: no data area");

        uint64_t mda_start[MDAS_MAX], mda_size[MDAS_MAX];
        unsigned n_mdas = 0;
        for (;;) {
                if (p + DISK_LOCN_SIZE > QT_LVM_SECTOR_SIZE)
                        return fail(why, why_size, "pv_header: metadata areas run past the label");
                uint64_t offset = le64(label + p), size = le64(label + p + 8);
                p += DISK_LOCN_SIZE;
                if (offset == 0)
                        break;
                if (n_mdas == MDAS_MAX)
                        return fail(why, why_size, "pv_header: more than %u metadata areas",
                                    MDAS_MAX);
                if (offset > device_size || size > device_size - offset)
                        return fail(why, why_size,
                                    "metadata area %u of %llu bytes at %llu lies past the "
                                    "%llu-byte device",
                                    n_mdas, (unsigned long long)size, (unsigned long long)offset,
                                    (unsigned long long)device_size);
                if (size <= MDA_HEADER_SIZE)
                        return fail(why, why_size,
                                    "metadata area %u of %llu bytes, too small for its header",
                                    n_mdas, (unsigned long long)size);
                mda_start[n_mdas] = offset;
                mda_size[n_mdas] = size;
                n_mdas++;
        }

        _cleanup_(free_texts) char *text[MDAS_MAX] = {};
        size_t text_len[MDAS_MAX] = {};
        int chosen = -1;
        for (unsigned i = 0; i < n_mdas; i++) {
                r = read_mda(read, ctx, i, mda_start[i], mda_size[i], &text[i], &text_len[i], why,
                             why_size);
                if (r < 0)
                        return r;
                if (r == 0)
                        continue;
                if (chosen < 0)
                        chosen = (int)i;
                else if (text_len[i] != text_len[chosen] ||
                         memcmp(text[i], text[chosen], text_len[i]) != 0) {
                        /* A commit interrupted between the two areas: the newer one wins,
                         * as in lvm2; one that does not parse loses to one that does. */
                        if (text_seqno(text[i], text_len[i]) >
                            text_seqno(text[chosen], text_len[chosen]))
                                chosen = (int)i;
                }
        }
        if (chosen >= 0) {
                l.metadata_len = text_len[chosen];
                l.metadata = TAKE_PTR(text[chosen]);
        }
        *ret = l;
        return 1;
}

void qt_lvm_pv_label_done(struct qt_lvm_pv_label *l)
{
        if (!l)
                return;
        free(l->metadata);
        l->metadata = NULL;
        l->metadata_len = 0;
}

/* ---- the metadata text: a bounded tree of sections, keys and values ---- */

#define NONE      UINT32_MAX
#define NODES_MAX (256u * 1024u) /* nodes and values together; the text is at most 1 MiB */

struct value {
        bool is_string;
        bool negative;
        uint64_t number; /* magnitude */
        uint32_t string; /* into parser.strings */
};

struct node {
        uint32_t key;  /* into parser.strings */
        uint32_t line; /* where the key is */
        bool section, list;
        uint32_t first_child, next; /* sections */
        uint32_t first_value, n_values;
};

enum token {
        T_EOF,
        T_NAME,
        T_STRING,
        T_INT,
        T_LBRACE,
        T_RBRACE,
        T_LBRACKET,
        T_RBRACKET,
        T_COMMA,
        T_EQ
};

struct parser {
        const char *p, *end;
        unsigned line;
        /* the current token */
        enum token t;
        unsigned t_line;
        uint32_t t_string; /* T_NAME, T_STRING */
        bool t_negative;   /* T_INT */
        uint64_t t_number;
        /* Every name and string, unescaped and NUL-terminated: at most twice the text, as
         * each is at least one byte of it, and its NUL one more. */
        char *strings;
        size_t strings_used, strings_size;
        struct node *nodes;
        size_t n_nodes, nodes_size;
        struct value *values;
        size_t n_values, values_size;
        char *why;
        size_t why_size;
};

static void parser_done(struct parser *p)
{
        free(p->strings);
        free(p->nodes);
        free(p->values);
}

static bool name_char(char c)
{
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '_' || c == '.' || c == '+' || c == '-';
}

static bool space(char c)
{
        return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static const char *str(const struct parser *p, uint32_t s)
{
        return p->strings + s;
}

/*
 * The next token. In a value (after '=', '[' or ','), a digit or sign starts an integer; as a
 * key, it is part of a name, as lvm2 tokenizes ("1root { ... }" is an LV). lvm2 also reads
 * floats, bare words and 'single-quoted' strings, which it never writes into metadata: here
 * they are syntax errors.
 */
static int next(struct parser *p, bool value)
{
        for (;;) {
                while (p->p < p->end && space(*p->p))
                        if (*p->p++ == '\n')
                                p->line++;
                if (p->p < p->end && *p->p == '#') {
                        while (p->p < p->end && *p->p != '\n')
                                p->p++;
                        continue;
                }
                break;
        }
        p->t_line = p->line;
        if (p->p == p->end) {
                p->t = T_EOF;
                return 0;
        }
        char c = *p->p;
        static const char single[] = "{}[],=";
        static const enum token single_token[] = {T_LBRACE,   T_RBRACE, T_LBRACKET,
                                                  T_RBRACKET, T_COMMA,  T_EQ};
        const char *s = strchr(single, c);
        if (s && c) {
                p->t = single_token[s - single];
                p->p++;
                return 0;
        }

        if (c == '"') {
                const char *q = ++p->p;
                size_t n = 0;
                char *out = p->strings + p->strings_used;
                while (q < p->end && *q != '"') {
                        if (*q == '\\' && q + 1 < p->end)
                                q++;
                        if (*q == '\n')
                                p->line++;
                        if (n == QT_LVM_STRING_MAX)
                                return fail(p->why, p->why_size,
                                            "line %u: a string longer than %u bytes", p->t_line,
                                            QT_LVM_STRING_MAX);
                        out[n++] = *q++;
                }
                if (q == p->end)
                        return fail(p->why, p->why_size, "line %u: string not terminated",
                                    p->t_line);
                p->p = q + 1;
                out[n] = '\0';
                p->t = T_STRING;
                p->t_string = (uint32_t)p->strings_used;
                p->strings_used += n + 1;
                return 0;
        }

        if (value && ((c >= '0' && c <= '9') || c == '-' || c == '+')) {
                const char *q = p->p;
                p->t_negative = c == '-';
                if (c == '-' || c == '+')
                        q++;
                const char *digits = q;
                uint64_t v = 0;
                for (; q < p->end && *q >= '0' && *q <= '9'; q++) {
                        /* lvm2 reads int64; the sign's room is checked below. */
                        if (v > (UINT64_MAX - 9) / 10)
                                return fail(p->why, p->why_size, "line %u: integer out of range",
                                            p->t_line);
                        v = v * 10 + (uint64_t)(*q - '0');
                }
                /* strtoll(, 0) would read a leading 0 as octal and "0x" as hex: lvm2 writes
                 * neither, so neither is accepted rather than read one way or the other. */
                if (q == digits || (q < p->end && (name_char(*q) || *q == '"')) ||
                    (*digits == '0' && q - digits > 1))
                        return fail(p->why, p->why_size, "line %u: malformed number", p->t_line);
                if (v > (uint64_t)INT64_MAX + (p->t_negative ? 1 : 0))
                        return fail(p->why, p->why_size, "line %u: integer out of range",
                                    p->t_line);
                p->t_number = v;
                if (v == 0)
                        p->t_negative = false;
                p->p = q;
                p->t = T_INT;
                return 0;
        }

        if (!value && name_char(c)) {
                const char *q = p->p;
                while (q < p->end && name_char(*q))
                        q++;
                size_t n = (size_t)(q - p->p);
                if (n >= QT_LVM_NAME_MAX)
                        return fail(p->why, p->why_size, "line %u: a name longer than %u bytes",
                                    p->t_line, QT_LVM_NAME_MAX - 1);
                memcpy(p->strings + p->strings_used, p->p, n);
                p->strings[p->strings_used + n] = '\0';
                p->t = T_NAME;
                p->t_string = (uint32_t)p->strings_used;
                p->strings_used += n + 1;
                p->p = q;
                return 0;
        }
        if (c >= 0x21 && c < 0x7f)
                return fail(p->why, p->why_size, "line %u: unexpected '%c'", p->t_line, c);
        return fail(p->why, p->why_size, "line %u: unexpected byte 0x%02x", p->t_line,
                    (unsigned char)c);
}

static int grow(void **array, size_t *size, size_t used, size_t elem)
{
        if (used < *size)
                return 0;
        size_t n = *size ? *size * 2 : 64;
        void *a = reallocarray(*array, n, elem);
        if (!a)
                return -ENOMEM;
        *array = a;
        *size = n;
        return 0;
}

static int count_check(struct parser *p)
{
        if (p->n_nodes + p->n_values >= NODES_MAX)
                return fail(p->why, p->why_size, "line %u: more than %u keys, sections and values",
                            p->t_line, NODES_MAX);
        return 0;
}

static int new_node(struct parser *p, uint32_t key, uint32_t *ret)
{
        int r = count_check(p);
        if (r < 0)
                return r;
        r = grow((void **)&p->nodes, &p->nodes_size, p->n_nodes, sizeof(*p->nodes));
        if (r < 0)
                return r;
        p->nodes[p->n_nodes] = (struct node){.key = key,
                                             .line = p->t_line,
                                             .first_child = NONE,
                                             .next = NONE,
                                             .first_value = (uint32_t)p->n_values};
        *ret = (uint32_t)p->n_nodes++;
        return 0;
}

/* Appends the current token, a string or an integer, to node's values. */
static int add_value(struct parser *p, uint32_t node)
{
        if (p->t != T_STRING && p->t != T_INT)
                return fail(p->why, p->why_size, "line %u: expected a value", p->t_line);
        int r = count_check(p);
        if (r < 0)
                return r;
        r = grow((void **)&p->values, &p->values_size, p->n_values, sizeof(*p->values));
        if (r < 0)
                return r;
        p->values[p->n_values++] = (struct value){.is_string = p->t == T_STRING,
                                                  .negative = p->t_negative,
                                                  .number = p->t_number,
                                                  .string = p->t_string};
        p->nodes[node].n_values++;
        return 0;
}

static int parse_value(struct parser *p, uint32_t node)
{
        int r = next(p, true);
        if (r < 0)
                return r;
        if (p->t != T_LBRACKET)
                return add_value(p, node);
        p->nodes[node].list = true;
        /* lvm2 takes the commas as optional. */
        for (;;) {
                r = next(p, true);
                if (r < 0)
                        return r;
                if (p->t == T_RBRACKET)
                        return 0;
                if (p->t == T_COMMA && p->nodes[node].n_values > 0)
                        continue;
                if (p->t == T_EOF)
                        return fail(p->why, p->why_size, "line %u: list not closed with ']'",
                                    p->t_line);
                r = add_value(p, node);
                if (r < 0)
                        return r;
        }
}

/* The keys and sections of section `parent`, up to its '}' (or the end, for the top level,
 * depth 0). Recursion is bounded by QT_LVM_DEPTH_MAX. */
static int parse_section(struct parser *p, uint32_t parent, unsigned depth)
{
        uint32_t last = NONE;
        for (;;) {
                int r = next(p, false);
                if (r < 0)
                        return r;
                if (p->t == T_EOF) {
                        if (depth == 0)
                                return 0;
                        return fail(p->why, p->why_size,
                                    "line %u: missing '}' of section %s from line %u", p->t_line,
                                    str(p, p->nodes[parent].key), p->nodes[parent].line);
                }
                if (p->t == T_RBRACE) {
                        if (depth > 0)
                                return 0;
                        return fail(p->why, p->why_size, "line %u: '}' without a section",
                                    p->t_line);
                }
                if (p->t != T_NAME)
                        return fail(p->why, p->why_size, "line %u: expected a name", p->t_line);
                uint32_t node;
                r = new_node(p, p->t_string, &node);
                if (r < 0)
                        return r;
                if (last == NONE)
                        p->nodes[parent].first_child = node;
                else
                        p->nodes[last].next = node;
                last = node;

                r = next(p, false);
                if (r < 0)
                        return r;
                if (p->t == T_LBRACE) {
                        if (depth + 1 >= QT_LVM_DEPTH_MAX)
                                return fail(p->why, p->why_size,
                                            "line %u: sections nested deeper than %u", p->t_line,
                                            QT_LVM_DEPTH_MAX - 1);
                        p->nodes[node].section = true;
                        r = parse_section(p, node, depth + 1);
                } else if (p->t == T_EQ)
                        r = parse_value(p, node);
                else
                        r = fail(p->why, p->why_size, "line %u: expected '=' or '{' after %s",
                                 p->t_line, str(p, p->nodes[node].key));
                if (r < 0)
                        return r;
        }
}

/* ---- from the tree to the VG ---- */

/* What interpreting the tree needs besides the VG it fills. */
struct interp {
        struct parser *p;
        struct qt_lvm_vg *vg;
        uint32_t *pv_by_id, *lv_by_name; /* indexes, sorted by name */
        int *forced_kind;                /* per LV: what another LV's reference makes it */
        size_t n_segments;
        size_t areas_size;
};

/* The child of section sec named key: 1 and *ret, 0 if there is none, -EUCLEAN if there are
 * two (lvm2 would warn and take one: which one matters, so neither is taken). */
static int find(struct interp *in, uint32_t sec, const char *what, const char *key, uint32_t *ret)
{
        struct parser *p = in->p;
        uint32_t found = NONE;
        for (uint32_t c = p->nodes[sec].first_child; c != NONE; c = p->nodes[c].next) {
                if (strcmp(str(p, p->nodes[c].key), key) != 0)
                        continue;
                if (found != NONE)
                        return fail(p->why, p->why_size, "%s: %s twice (lines %u and %u)", what,
                                    key, p->nodes[found].line, p->nodes[c].line);
                found = c;
        }
        if (found == NONE)
                return 0;
        *ret = found;
        return 1;
}

/* A key of sec with one plain value (no section, no list): 1 and its node (and the value, of
 * the kind is_string asks for), 0 if absent and optional. */
static int find_value(struct interp *in, uint32_t sec, const char *what, const char *key,
                      bool required, bool is_string, const struct node **ret_node,
                      const struct value **ret_value)
{
        struct parser *p = in->p;
        uint32_t n;
        int r = find(in, sec, what, key, &n);
        if (r < 0)
                return r;
        if (r == 0) {
                if (required)
                        return fail(p->why, p->why_size, "%s: no %s", what, key);
                return 0;
        }
        const struct node *node = &p->nodes[n];
        const struct value *v = node->section || node->list || node->n_values != 1
                                    ? NULL
                                    : &p->values[node->first_value];
        if (!v || v->is_string != is_string)
                return fail(p->why, p->why_size, "line %u: %s: %s is not %s", node->line, what, key,
                            is_string ? "a string" : "an integer");
        *ret_node = node;
        *ret_value = v;
        return 1;
}

/* An integer key of sec within [0, max]: 1 and *ret, 0 if absent and optional. */
static int get_u64(struct interp *in, uint32_t sec, const char *what, const char *key, uint64_t max,
                   bool required, uint64_t *ret)
{
        const struct node *node = NULL;
        const struct value *v = NULL;
        int r = find_value(in, sec, what, key, required, false, &node, &v);
        if (r <= 0)
                return r;
        if (v->negative || v->number > max)
                return fail(in->p->why, in->p->why_size, "line %u: %s: %s out of range", node->line,
                            what, key);
        *ret = v->number;
        return 1;
}

/* A string key sec must have: 0 and *ret, or -1. (*ret is set first so that an optimizing
 * compiler sees it set on every path.) */
static int get_str(struct interp *in, uint32_t sec, const char *what, const char *key,
                   const char **ret)
{
        const struct node *node = NULL;
        const struct value *v = NULL;
        *ret = "";
        int r = find_value(in, sec, what, key, true, true, &node, &v);
        if (r <= 0)
                return r < 0 ? r : -1;
        *ret = str(in->p, v->string);
        return 0;
}

/* Sorting and searching names through an index, without global state. */
struct by_name {
        const char *base;
        size_t elem; /* the name is the element's first member */
};

static int cmp_by_name(const void *a, const void *b, void *arg)
{
        const struct by_name *bn = arg;
        return strcmp(bn->base + *(const uint32_t *)a * bn->elem,
                      bn->base + *(const uint32_t *)b * bn->elem);
}

/* index[0..n) sorted by name; -EUCLEAN (naming it) if a name is there twice. */
static int sort_names(struct interp *in, uint32_t *index, size_t n, const void *base, size_t elem,
                      const char *what)
{
        struct by_name bn = {base, elem};
        for (size_t i = 0; i < n; i++)
                index[i] = (uint32_t)i;
        qsort_r(index, n, sizeof(*index), cmp_by_name, &bn);
        for (size_t i = 1; i < n; i++)
                if (cmp_by_name(&index[i - 1], &index[i], &bn) == 0)
                        return fail(in->p->why, in->p->why_size, "%s %s twice", what,
                                    bn.base + index[i] * elem);
        return 0;
}

/* The element named name: its index, or -1. */
static long lookup(const uint32_t *index, size_t n, const void *base, size_t elem, const char *name)
{
        size_t lo = 0, hi = n;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                int c = strcmp(name, (const char *)base + index[mid] * elem);
                if (c == 0)
                        return index[mid];
                if (c < 0)
                        hi = mid;
                else
                        lo = mid + 1;
        }
        return -1;
}

static long find_pv(struct interp *in, const char *name)
{
        return lookup(in->pv_by_id, in->vg->n_pvs, in->vg->pvs, sizeof(*in->vg->pvs), name);
}

static long find_lv(struct interp *in, const char *name)
{
        return lookup(in->lv_by_name, in->vg->n_lvs, in->vg->lvs, sizeof(*in->vg->lvs), name);
}

static size_t count_sections(const struct parser *p, uint32_t sec)
{
        size_t n = 0;
        for (uint32_t c = p->nodes[sec].first_child; c != NONE; c = p->nodes[c].next)
                n += p->nodes[c].section;
        return n;
}

static int read_pvs(struct interp *in, uint32_t vgn)
{
        struct parser *p = in->p;
        struct qt_lvm_vg *vg = in->vg;
        uint32_t pvs;
        int r = find(in, vgn, vg->name, "physical_volumes", &pvs);
        if (r < 0)
                return r;
        if (r == 0 || !p->nodes[pvs].section)
                return fail(p->why, p->why_size, "%s: no physical_volumes section", vg->name);
        size_t n = count_sections(p, pvs);
        if (n == 0 || n > QT_LVM_PVS_MAX)
                return fail(p->why, p->why_size, "%s: %zu physical volumes (1 to %u allowed)",
                            vg->name, n, QT_LVM_PVS_MAX);
        vg->pvs = calloc(n, sizeof(*vg->pvs));
        in->pv_by_id = calloc(n, sizeof(*in->pv_by_id));
        if (!vg->pvs || !in->pv_by_id)
                return -ENOMEM;

        for (uint32_t c = p->nodes[pvs].first_child; c != NONE; c = p->nodes[c].next) {
                if (!p->nodes[c].section)
                        continue;
                struct qt_lvm_pv *pv = &vg->pvs[vg->n_pvs++];
                snprintf(pv->id, sizeof(pv->id), "%s", str(p, p->nodes[c].key));
                const char *id;
                r = get_str(in, c, pv->id, "id", &id);
                if (r < 0)
                        return r;
                if (uuid_from_text(id, pv->uuid) < 0)
                        return fail(p->why, p->why_size, "%s: malformed id", pv->id);
                /* lvm2 reads pe_count and extent_size as 32 bits, pe_start as 64. */
                r = get_u64(in, c, pv->id, "pe_start", UINT64_MAX, true, &pv->pe_start);
                if (r >= 0)
                        r = get_u64(in, c, pv->id, "pe_count", UINT32_MAX, true, &pv->pe_count);
                if (r >= 0)
                        r = get_u64(in, c, pv->id, "dev_size", UINT64_MAX, false, &pv->dev_size);
                if (r < 0)
                        return r;
                /* Where the last extent ends, in bytes, must be a number: a caller computes
                 * offsets from these. */
                uint64_t end, bytes;
                if (__builtin_mul_overflow(pv->pe_count, vg->extent_size, &end) ||
                    __builtin_add_overflow(end, pv->pe_start, &end) ||
                    __builtin_mul_overflow(end, QT_LVM_SECTOR_SIZE, &bytes))
                        return fail(p->why, p->why_size,
                                    "%s: pe_start + pe_count * extent_size overflows", pv->id);
                if (pv->dev_size && end > pv->dev_size)
                        return fail(p->why, p->why_size,
                                    "%s: extents end at sector %llu, past dev_size %llu", pv->id,
                                    (unsigned long long)end, (unsigned long long)pv->dev_size);
        }
        r = sort_names(in, in->pv_by_id, vg->n_pvs, vg->pvs, sizeof(*vg->pvs), "physical volume");
        if (r < 0)
                return r;
        for (size_t i = 0; i < vg->n_pvs; i++)
                for (size_t j = i + 1; j < vg->n_pvs; j++)
                        if (strcmp(vg->pvs[i].uuid, vg->pvs[j].uuid) == 0)
                                return fail(p->why, p->why_size, "%s and %s have the same id",
                                            vg->pvs[i].id, vg->pvs[j].id);
        return 0;
}

static int kind_of_segtype(const char *type, size_t len)
{
        static const struct {
                const char *name;
                bool prefix;
                int kind;
        } table[] = {
            {"thin", false, QT_LVM_LV_THIN},         {"thin-pool", false, QT_LVM_LV_THIN_POOL},
            {"snapshot", false, QT_LVM_LV_SNAPSHOT}, {"raid", true, QT_LVM_LV_RAID},
            {"mirror", false, QT_LVM_LV_MIRROR},     {"cache", false, QT_LVM_LV_CACHE},
            {"cache-pool", false, QT_LVM_LV_CACHE},  {"writecache", false, QT_LVM_LV_CACHE},
        };
        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                size_t n = strlen(table[i].name);
                if (table[i].prefix ? len >= n && strncmp(type, table[i].name, n) == 0
                                    : len == n && strncmp(type, table[i].name, n) == 0)
                        return table[i].kind;
        }
        return QT_LVM_LV_OTHER;
}

/* The kind a reference by key makes a linear LV. */
static int kind_of_reference(const char *key)
{
        if (strcmp(key, "origin") == 0 || strcmp(key, "external_origin") == 0)
                return QT_LVM_LV_ORIGIN;
        if (strcmp(key, "cow_store") == 0 || strcmp(key, "merging_store") == 0)
                return QT_LVM_LV_SNAPSHOT;
        return QT_LVM_LV_COMPONENT;
}

static void reference(struct interp *in, long lv, int kind)
{
        if (in->forced_kind[lv] == QT_LVM_LV_LINEAR)
                in->forced_kind[lv] = kind;
}

/* One segment's logical extents and kind, before the LV's are checked together. */
struct seg {
        uint64_t start, count;
        int kind;
        uint32_t type; /* into parser.strings */
        long pv;
        uint64_t pv_start; /* of a linear one */
};

static int cmp_seg(const void *a, const void *b)
{
        const struct seg *x = a, *y = b;
        return x->start < y->start ? -1 : x->start > y->start;
}

/* The areas of a "striped" (list `stripes`) or "mirror" (list `mirrors`) segment: pairs of a
 * PV or LV name and the first extent there, each area_len extents long. */
static int read_areas(struct interp *in, long lv, const char *what, uint32_t list, uint64_t n_areas,
                      uint64_t area_len, struct seg *seg)
{
        struct parser *p = in->p;
        struct qt_lvm_vg *vg = in->vg;
        const struct node *node = &p->nodes[list];
        if (node->section || !node->list || node->n_values != 2 * n_areas)
                return fail(p->why, p->why_size, "line %u: %s: %s is not a list of %llu areas",
                            node->line, what, str(p, node->key), (unsigned long long)n_areas);
        for (uint64_t a = 0; a < n_areas; a++) {
                const struct value *name = &p->values[node->first_value + 2 * a];
                const struct value *start = name + 1;
                if (!name->is_string || start->is_string || start->negative ||
                    start->number > UINT32_MAX)
                        return fail(p->why, p->why_size,
                                    "line %u: %s: area %llu is not a name and an extent",
                                    node->line, what, (unsigned long long)a);
                const char *target = str(p, name->string);
                /* A PV first, as lvm2 looks them up. */
                long pv = find_pv(in, target);
                if (pv < 0) {
                        long other = find_lv(in, target);
                        if (other < 0 || other == lv)
                                return fail(p->why, p->why_size,
                                            "line %u: %s: no volume %s in this VG", node->line,
                                            what, target);
                        reference(in, other, QT_LVM_LV_COMPONENT);
                        seg->kind = QT_LVM_LV_OTHER;
                        continue;
                }
                if (start->number + area_len > vg->pvs[pv].pe_count)
                        return fail(p->why, p->why_size,
                                    "%s: extents %llu..%llu of %s, past its pe_count %llu", what,
                                    (unsigned long long)start->number,
                                    (unsigned long long)(start->number + area_len - 1),
                                    vg->pvs[pv].id, (unsigned long long)vg->pvs[pv].pe_count);
                if (vg->n_areas == QT_LVM_AREAS_MAX)
                        return fail(p->why, p->why_size, "more than %u segment areas",
                                    QT_LVM_AREAS_MAX);
                int r = grow((void **)&vg->areas, &in->areas_size, vg->n_areas, sizeof(*vg->areas));
                if (r < 0)
                        return r;
                vg->areas[vg->n_areas++] = (struct qt_lvm_area){.pv = (unsigned)pv,
                                                                .lv = (unsigned)lv,
                                                                .start = start->number,
                                                                .count = area_len};
                seg->pv = pv;
                seg->pv_start = start->number;
        }
        return 0;
}

static int read_segment(struct interp *in, long lv, uint32_t sn, struct seg *seg)
{
        struct parser *p = in->p;
        struct qt_lvm_lv *l = &in->vg->lvs[lv];
        char what[2 * QT_LVM_NAME_MAX + 2];
        snprintf(what, sizeof(what), "%s/%s", l->name, str(p, p->nodes[sn].key));
        /* lvm2 reads extents as 32 bits. */
        int r = get_u64(in, sn, what, "start_extent", UINT32_MAX, true, &seg->start);
        if (r >= 0)
                r = get_u64(in, sn, what, "extent_count", UINT32_MAX, true, &seg->count);
        if (r < 0)
                return r;
        if (seg->count == 0)
                return fail(p->why, p->why_size, "%s: extent_count 0", what);
        const char *type;
        r = get_str(in, sn, what, "type", &type);
        if (r < 0)
                return r;
        seg->type = (uint32_t)(type - p->strings);
        seg->pv = -1;
        /* "raid1+...": flags after a '+' are no part of the type. */
        size_t type_len = strcspn(type, "+");

        const char *area_key = NULL;
        if (type_len == 7 && strncmp(type, "striped", 7) == 0) {
                area_key = "stripes";
                uint64_t stripes;
                r = get_u64(in, sn, what, "stripe_count", QT_LVM_AREAS_MAX, true, &stripes);
                if (r < 0)
                        return r;
                if (stripes == 0 || seg->count % stripes != 0)
                        return fail(p->why, p->why_size,
                                    "%s: %llu extents do not make %llu stripes", what,
                                    (unsigned long long)seg->count, (unsigned long long)stripes);
                seg->kind = stripes == 1 ? QT_LVM_LV_LINEAR : QT_LVM_LV_STRIPED;
                uint32_t list;
                r = find(in, sn, what, area_key, &list);
                if (r == 0)
                        r = fail(p->why, p->why_size, "%s: no %s", what, area_key);
                if (r >= 0)
                        r = read_areas(in, lv, what, list, stripes, seg->count / stripes, seg);
                if (r < 0)
                        return r;
        } else if (type_len == 6 && strncmp(type, "mirror", 6) == 0) {
                /* Old-style mirrors and pvmove: every image as long as the segment. */
                area_key = "mirrors";
                seg->kind = QT_LVM_LV_MIRROR;
                uint32_t list;
                r = find(in, sn, what, area_key, &list);
                if (r == 0)
                        r = fail(p->why, p->why_size, "%s: no %s", what, area_key);
                if (r < 0)
                        return r;
                uint64_t n = p->nodes[list].n_values / 2;
                r = read_areas(in, lv, what, list, n ? n : 1, seg->count, seg);
                if (r < 0)
                        return r;
        } else
                seg->kind = kind_of_segtype(type, type_len);

        /* Every other string naming a volume: a PV there would be extents this reader does
         * not know how to account for, so free extents could include them; an LV there is
         * one this one is built on. Tags are the user's words, no references. */
        for (uint32_t c = p->nodes[sn].first_child; c != NONE; c = p->nodes[c].next) {
                const struct node *node = &p->nodes[c];
                const char *key = str(p, node->key);
                if (node->section || strcmp(key, "tags") == 0 || strcmp(key, "type") == 0 ||
                    (area_key && strcmp(key, area_key) == 0))
                        continue;
                for (uint32_t i = 0; i < node->n_values; i++) {
                        const struct value *v = &p->values[node->first_value + i];
                        if (!v->is_string)
                                continue;
                        const char *target = str(p, v->string);
                        if (find_pv(in, target) >= 0)
                                return fail(p->why, p->why_size,
                                            "line %u: %s: %s names %s outside an area list",
                                            node->line, what, key, target);
                        long other = find_lv(in, target);
                        if (other >= 0 && other != lv)
                                reference(in, other, kind_of_reference(key));
                }
        }
        return 0;
}

static int read_lv(struct interp *in, long lv, uint32_t lvn)
{
        struct parser *p = in->p;
        struct qt_lvm_lv *l = &in->vg->lvs[lv];
        uint32_t status;
        int r = find(in, lvn, l->name, "status", &status);
        if (r < 0)
                return r;
        if (r == 0 || p->nodes[status].section || !p->nodes[status].list)
                return fail(p->why, p->why_size, "%s: no status list", l->name);
        for (uint32_t i = 0; i < p->nodes[status].n_values; i++) {
                const struct value *v = &p->values[p->nodes[status].first_value + i];
                if (v->is_string && strcmp(str(p, v->string), "VISIBLE") == 0)
                        l->visible = true;
        }

        uint64_t segment_count;
        r = get_u64(in, lvn, l->name, "segment_count", UINT32_MAX, true, &segment_count);
        if (r < 0)
                return r;
        size_t n = count_sections(p, lvn);
        if (n != segment_count || n == 0)
                return fail(p->why, p->why_size, "%s: segment_count %llu, %zu segments", l->name,
                            (unsigned long long)segment_count, n);
        if (n > QT_LVM_SEGMENTS_MAX - in->n_segments)
                return fail(p->why, p->why_size, "more than %u segments", QT_LVM_SEGMENTS_MAX);
        in->n_segments += n;

        _cleanup_free_ struct seg *segs = calloc(n, sizeof(*segs));
        if (!segs)
                return -ENOMEM;
        size_t i = 0;
        for (uint32_t c = p->nodes[lvn].first_child; c != NONE; c = p->nodes[c].next)
                if (p->nodes[c].section) {
                        r = read_segment(in, lv, c, &segs[i++]);
                        if (r < 0)
                                return r;
                }

        /* lvm2's check_lv_segments(): the segments tile the LV from extent 0. */
        qsort(segs, n, sizeof(*segs), cmp_seg);
        uint64_t end = 0;
        l->kind = QT_LVM_LV_LINEAR;
        for (i = 0; i < n; i++) {
                if (segs[i].start != end)
                        return fail(p->why, p->why_size, "%s: %s at extent %llu, expected %llu",
                                    l->name, segs[i].start < end ? "overlapping segment" : "gap",
                                    (unsigned long long)segs[i].start, (unsigned long long)end);
                end += segs[i].count; /* each below 2^32: no overflow */
                if (l->kind == QT_LVM_LV_LINEAR && segs[i].kind != QT_LVM_LV_LINEAR) {
                        l->kind = segs[i].kind;
                        snprintf(l->segtype, sizeof(l->segtype), "%s", str(p, segs[i].type));
                }
        }
        uint64_t bytes;
        if (__builtin_mul_overflow(end, in->vg->extent_size * QT_LVM_SECTOR_SIZE, &bytes))
                return fail(p->why, p->why_size, "%s: its size in bytes overflows", l->name);
        if (l->kind != QT_LVM_LV_LINEAR)
                return 0;
        l->segments = calloc(n, sizeof(*l->segments));
        if (!l->segments)
                return -ENOMEM;
        for (i = 0; i < n; i++)
                l->segments[i] = (struct qt_lvm_segment){.start_extent = segs[i].start,
                                                         .extent_count = segs[i].count,
                                                         .pv = (unsigned)segs[i].pv,
                                                         .pv_start_extent = segs[i].pv_start};
        l->n_segments = n;
        return 0;
}

static int read_lvs(struct interp *in, uint32_t vgn)
{
        struct parser *p = in->p;
        struct qt_lvm_vg *vg = in->vg;
        uint32_t lvs;
        int r = find(in, vgn, vg->name, "logical_volumes", &lvs);
        if (r <= 0)
                return r; /* a VG without LVs has none */
        if (!p->nodes[lvs].section)
                return fail(p->why, p->why_size, "%s: logical_volumes is not a section", vg->name);
        size_t n = count_sections(p, lvs);
        if (n > QT_LVM_LVS_MAX)
                return fail(p->why, p->why_size, "%s: %zu logical volumes, more than %u", vg->name,
                            n, QT_LVM_LVS_MAX);
        if (n == 0)
                return 0;
        vg->lvs = calloc(n, sizeof(*vg->lvs));
        in->lv_by_name = calloc(n, sizeof(*in->lv_by_name));
        in->forced_kind = calloc(n, sizeof(*in->forced_kind));
        if (!vg->lvs || !in->lv_by_name || !in->forced_kind)
                return -ENOMEM;
        /* All names first: segments name LVs that come after them. */
        for (uint32_t c = p->nodes[lvs].first_child; c != NONE; c = p->nodes[c].next)
                if (p->nodes[c].section)
                        snprintf(vg->lvs[vg->n_lvs++].name, QT_LVM_NAME_MAX, "%s",
                                 str(p, p->nodes[c].key));
        r = sort_names(in, in->lv_by_name, vg->n_lvs, vg->lvs, sizeof(*vg->lvs), "logical volume");
        if (r < 0)
                return r;
        long lv = 0;
        for (uint32_t c = p->nodes[lvs].first_child; c != NONE; c = p->nodes[c].next)
                if (p->nodes[c].section) {
                        r = read_lv(in, lv++, c);
                        if (r < 0)
                                return r;
                }
        /* A linear LV another one is built on is no filesystem of its own to trim. */
        for (size_t i = 0; i < vg->n_lvs; i++)
                if (vg->lvs[i].kind == QT_LVM_LV_LINEAR && in->forced_kind[i] != QT_LVM_LV_LINEAR) {
                        vg->lvs[i].kind = in->forced_kind[i];
                        free(vg->lvs[i].segments);
                        vg->lvs[i].segments = NULL;
                        vg->lvs[i].n_segments = 0;
                }
        return 0;
}

static int cmp_area(const void *a, const void *b)
{
        const struct qt_lvm_area *x = a, *y = b;
        if (x->pv != y->pv)
                return x->pv < y->pv ? -1 : 1;
        return x->start < y->start ? -1 : x->start > y->start;
}

static int check_areas(struct interp *in)
{
        struct qt_lvm_vg *vg = in->vg;
        if (vg->n_areas == 0)
                return 0; /* and areas is NULL, which qsort() must not see */
        qsort(vg->areas, vg->n_areas, sizeof(*vg->areas), cmp_area);
        for (size_t i = 1; i < vg->n_areas; i++) {
                const struct qt_lvm_area *a = &vg->areas[i - 1], *b = &vg->areas[i];
                if (a->pv == b->pv && b->start < a->start + a->count)
                        return fail(in->p->why, in->p->why_size,
                                    "extent %llu of %s is used by both %s and %s",
                                    (unsigned long long)b->start, vg->pvs[a->pv].id,
                                    vg->lvs[a->lv].name, vg->lvs[b->lv].name);
        }
        return 0;
}

static int interpret(struct interp *in)
{
        struct parser *p = in->p;
        struct qt_lvm_vg *vg = in->vg;
        /* The VG is the one section at the top; the keys beside it say who wrote it. */
        if (count_sections(p, 0) != 1)
                return fail(p->why, p->why_size, "%zu sections at the top, not one VG",
                            count_sections(p, 0));
        uint32_t vgn = p->nodes[0].first_child;
        while (!p->nodes[vgn].section)
                vgn = p->nodes[vgn].next;
        snprintf(vg->name, sizeof(vg->name), "%s", str(p, p->nodes[vgn].key));

        const char *id;
        int r = get_str(in, vgn, vg->name, "id", &id);
        if (r < 0)
                return r;
        if (uuid_from_text(id, vg->uuid) < 0)
                return fail(p->why, p->why_size, "%s: malformed id", vg->name);
        r = get_u64(in, vgn, vg->name, "seqno", UINT32_MAX, true, &vg->seqno);
        if (r >= 0)
                r = get_u64(in, vgn, vg->name, "extent_size", UINT32_MAX, true, &vg->extent_size);
        if (r < 0)
                return r;
        if (vg->extent_size == 0 || ((vg->extent_size & (vg->extent_size - 1)) != 0 &&
                                     vg->extent_size % NON_POWER2_EXTENT_MULTIPLE != 0))
                return fail(p->why, p->why_size,
                            "%s: extent_size %llu is neither a power of 2 nor a multiple of "
                            "128 KiB",
                            vg->name, (unsigned long long)vg->extent_size);
        r = read_pvs(in, vgn);
        if (r >= 0)
                r = read_lvs(in, vgn);
        if (r >= 0)
                r = check_areas(in);
        return r;
}

int qt_lvm_parse_metadata(const char *text, size_t len, struct qt_lvm_vg *ret, char *why,
                          size_t why_size)
{
        if (len > QT_LVM_METADATA_MAX)
                return fail(why, why_size, "metadata text of %zu bytes, more than %u", len,
                            QT_LVM_METADATA_MAX);
        /* As lvm2 reads it: the text ends at its first NUL. */
        const char *nul = memchr(text, '\0', len);
        if (nul)
                len = (size_t)(nul - text);

        _cleanup_(parser_done) struct parser p = {
            .p = text, .end = text + len, .line = 1, .why = why, .why_size = why_size};
        p.strings_size = 2 * len + 2;
        p.strings = malloc(p.strings_size);
        if (!p.strings)
                return -ENOMEM;
        uint32_t root;
        int r = new_node(&p, 0, &root);
        if (r < 0)
                return r;
        p.strings[0] = '\0';
        p.strings_used = 1;
        p.nodes[root].section = true;
        r = parse_section(&p, root, 0);
        if (r < 0)
                return r;

        _cleanup_(qt_lvm_vg_done) struct qt_lvm_vg vg = {};
        struct interp in = {.p = &p, .vg = &vg};
        r = interpret(&in);
        free(in.pv_by_id);
        free(in.lv_by_name);
        free(in.forced_kind);
        if (r < 0)
                return r;
        *ret = vg;
        vg = (struct qt_lvm_vg){};
        return 0;
}

void qt_lvm_vg_done(struct qt_lvm_vg *vg)
{
        if (!vg)
                return;
        for (size_t i = 0; i < vg->n_lvs; i++)
                free(vg->lvs[i].segments);
        free(vg->lvs);
        free(vg->pvs);
        free(vg->areas);
        *vg = (struct qt_lvm_vg){};
}

ssize_t qt_lvm_free_extents(const struct qt_lvm_vg *vg, unsigned pv,
                            struct qt_lvm_extent_range **ret)
{
        if (pv >= vg->n_pvs)
                return -EINVAL;
        /* Two passes over the sorted areas: count the gaps, then fill them in. */
        struct qt_lvm_extent_range *ranges = NULL;
        size_t n = 0;
        for (int pass = 0; pass < 2; pass++) {
                uint64_t at = 0;
                n = 0;
                for (size_t i = 0; i <= vg->n_areas; i++) {
                        bool last = i == vg->n_areas;
                        if (!last && vg->areas[i].pv != pv)
                                continue;
                        uint64_t next = last ? vg->pvs[pv].pe_count : vg->areas[i].start;
                        if (next > at) {
                                if (ranges)
                                        ranges[n] = (struct qt_lvm_extent_range){at, next - at};
                                n++;
                        }
                        if (!last)
                                at = vg->areas[i].start + vg->areas[i].count;
                }
                if (pass == 0) {
                        if (n == 0)
                                break;
                        ranges = calloc(n, sizeof(*ranges));
                        if (!ranges)
                                return -ENOMEM;
                }
        }
        *ret = ranges;
        return (ssize_t)n;
}
