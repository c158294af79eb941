/* swap.c: the compressed swap file. Space is kept in 512-byte units with a bitmap; a
 * page takes as many contiguous units as its LZ4 block needs (8 when stored raw), and
 * an all-zero page takes none. Callers hold m->lock. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include "core.h"
#include "lz4.h"

#define UNITS_PER_PAGE (PG / UVM_SWAP_UNIT)
#define POISON_BYTE 0xdb

/* returns units needed to store len bytes. */
uint32_t swap_units(uint32_t len)
{
    return (len + UVM_SWAP_UNIT - 1) / UVM_SWAP_UNIT;
}

/* opens a private swap file of the given capacity; returns 0 or -errno. */
int swap_open(struct swap *s, const char *path, const char *dir, uint64_t bytes, int debug)
{
    memset(s, 0, sizeof *s);
    s->fd = -1;
    s->debug = debug;
    /* Compressed pages take runs of 1..8 units, so free space fragments; an eighth more
     * units than the nominal capacity absorbs that, so admission control (which counts
     * raw pages) stays a promise the swap map can keep. The file is sparse either way. */
    s->capacity = bytes;
    s->units = bytes / UVM_SWAP_UNIT + bytes / UVM_SWAP_UNIT / 8;
    s->bitmap = calloc((s->units + 63) / 64 + 1, 8);
    if (!s->bitmap)
        return -ENOMEM;
    if (path) {
        struct stat st;
        s->fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (s->fd >= 0 && fstat(s->fd, &st) == 0) {
            s->path = strdup(path);
            s->dev = st.st_dev;
            s->ino = st.st_ino;
        }
    } else {
        s->fd = open(dir, O_RDWR | O_TMPFILE | O_EXCL | O_CLOEXEC, 0600);
    }
    if (s->fd < 0) {
        int err = -errno;
        free(s->bitmap);
        s->bitmap = NULL;
        return err;
    }
    /* Reserve the space now, as a swap partition would: admission control promises every
     * VM its pages a place, and a disk that fills up later must not break that promise. */
    if (fallocate(s->fd, 0, 0, (off_t)(s->units * UVM_SWAP_UNIT)) && errno != EOPNOTSUPP) {
        int err = -errno;
        swap_close(s);
        return err;
    }
    return 0;
}

/* closes the swap file and removes it if it has a name and the name still names the file
 * created (someone may have replaced it since: uvm removes only files it created). Safe to
 * call twice. */
void swap_close(struct swap *s)
{
    struct stat st;
    if (s->fd >= 0)
        close(s->fd);
    if (s->path) {
        if (lstat(s->path, &st) == 0 && st.st_dev == s->dev && st.st_ino == s->ino)
            unlink(s->path);
        free(s->path);
    }
    free(s->bitmap);
    memset(s, 0, sizeof *s);
    s->fd = -1;
}

static int bit_get(const uint64_t *b, uint64_t i) { return (b[i / 64] >> (i % 64)) & 1; }

static void bits_set(uint64_t *b, uint64_t i, uint32_t n, int on)
{
    for (uint64_t j = i; j < i + n; j++) {
        if (on)
            b[j / 64] |= 1ull << (j % 64);
        else
            b[j / 64] &= ~(1ull << (j % 64));
    }
}

/* finds a free run of n units at or after from, below end; returns its start or -1. */
static int64_t run_find(const struct swap *s, uint64_t from, uint64_t end, uint32_t n)
{
    uint64_t run = 0;
    for (uint64_t i = from; i < end; i++) {
        if ((i % 64) == 0 && run == 0 && s->bitmap[i / 64] == ~0ull && i + 64 <= end) {
            i += 63;            /* skip a full word */
            continue;
        }
        run = bit_get(s->bitmap, i) ? 0 : run + 1;
        if (run == n)
            return (int64_t)(i + 1 - n);
    }
    return -1;
}

/* allocates n contiguous units, next-fit so consecutive writes cluster; returns the first
 * unit, or -ENOSPC. */
int64_t swap_alloc(struct swap *s, uint32_t n)
{
    if (s->used_units + n > s->units)
        return -ENOSPC;
    int64_t u = run_find(s, s->next, s->units, n);
    if (u < 0)
        u = run_find(s, 0, s->units, n);
    if (u < 0)
        return -ENOSPC;
    bits_set(s->bitmap, (uint64_t)u, n, 1);
    s->used_units += n;
    s->next = (uint64_t)u + n;
    return u;
}

/* returns n units to the free map (space allocated but never holding a page). */
void swap_unalloc(struct swap *s, uint64_t unit, uint32_t n)
{
    bits_set(s->bitmap, unit, n, 0);
    s->used_units -= n;
}

/* frees the units holding a stored page of len bytes (poisoning them under debug). */
void swap_free(struct swap *s, uint64_t unit, uint32_t len)
{
    uint32_t n = swap_units(len);
    swap_unalloc(s, unit, n);
    s->pages--;
    s->bytes -= len;
    if (s->debug) {
        char junk[PG];
        memset(junk, POISON_BYTE, sizeof junk);
        if (pwrite(s->fd, junk, (size_t)n * UVM_SWAP_UNIT, (off_t)(unit * UVM_SWAP_UNIT)) < 0)
            s->debug = 0;       /* poisoning is best effort */
    }
}

/* compresses a page into out (PG bytes); returns the stored length: 0 for an all-zero
 * page, PG when stored raw (it would not save a unit), else the LZ4 block length. */
int page_compress(struct machine *m, const char *page, char *out)
{
    const uint64_t *w = (const uint64_t *)page;
    size_t i = 0;
    while (i < PG / 8 && w[i] == 0)
        i++;
    if (i == PG / 8)
        return 0;
    int n = LZ4_compress_fast_extState(m->lz4, page, out, PG, PG - 1, 1);
    if (n <= 0 || swap_units((uint32_t)n) >= UNITS_PER_PAGE) {
        memcpy(out, page, PG);
        return PG;
    }
    return n;
}

/* sleeps the configured per-request latency, so the swap device costs what a disk costs
 * rather than what the host's page cache costs; the machine lock stays held, as a single
 * synchronous disk would hold up the pager. */
static void swap_delay(struct machine *m)
{
    if (m->swap_latency_ns) {
        struct timespec ts = { (time_t)(m->swap_latency_ns / 1000000000u),
                               (long)(m->swap_latency_ns % 1000000000u) };
        while (nanosleep(&ts, &ts) && errno == EINTR)
            ;
    }
}

/* writes len bytes at unit; returns 0 or -errno (-EIO when injected). */
int swap_write(struct machine *m, uint64_t unit, const char *buf, size_t len)
{
    if (m->inject_write > 0) {
        m->inject_write--;
        return -m->inject_write_err;
    }
    swap_delay(m);
    off_t off = (off_t)(unit * UVM_SWAP_UNIT);
    while (len > 0) {
        ssize_t w = pwrite(m->swap.fd, buf, len, off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? -errno : -EIO;
        buf += w;
        len -= (size_t)w;
        off += w;
    }
    return 0;
}

/* reads len bytes at unit into buf (no latency charged); returns 0 or -errno. */
static int swap_pread(struct machine *m, uint64_t unit, size_t len, char *buf)
{
    size_t got = 0;
    while (got < len) {
        ssize_t r = pread(m->swap.fd, buf + got, len - got, (off_t)(unit * UVM_SWAP_UNIT + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return r < 0 ? -errno : -EIO;
        got += (size_t)r;
    }
    return 0;
}

/* expands a page stored in len bytes at src into page; returns 0 or -EIO. */
int swap_expand(const char *src, uint32_t len, char *page)
{
    if (len == PG) {
        memcpy(page, src, PG);
        return 0;
    }
    return LZ4_decompress_safe(src, page, (int)len, PG) == PG ? 0 : -EIO;
}

/* reads the page stored at unit (len bytes) and expands it into page; returns 0 or -errno. */
int swap_read(struct machine *m, uint64_t unit, uint32_t len, char *page)
{
    if (m->inject_read > 0) {
        m->inject_read--;
        return -EIO;
    }
    swap_delay(m);
    char *buf = len == PG ? page : CBUF_READ(m);
    int r = swap_pread(m, unit, len, buf);
    if (r < 0 || len == PG)
        return r;
    return swap_expand(buf, len, page);
}

/* reads units [unit, unit + n) into buf as one request (swap read-ahead); returns 0 or
 * -errno. Injected read errors are left for the demand reads they were meant for. */
int swap_read_span(struct machine *m, uint64_t unit, uint64_t n, char *buf)
{
    if (m->inject_read > 0)
        return -EAGAIN;
    swap_delay(m);
    return swap_pread(m, unit, (size_t)(n * UVM_SWAP_UNIT), buf);
}
