/* _touch.c: timing loops for bench_core.py, compiled at run time into a temporary .so and
 * loaded with ctypes (ctypes releases the GIL around every call). It is not part of the
 * core: it only touches memory, as a guest would, and reads the clock.
 *
 * Every loop runs on the calling thread; bench_core.py pins that thread with
 * os.sched_setaffinity before calling in. Times are CLOCK_MONOTONIC nanoseconds. */
#define _GNU_SOURCE
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/mman.h>

#define PG 4096

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* splitmix64 */
static uint64_t mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* fills order[0..n) with 0..n-1: in sequence when seed is 0, else a random permutation. */
void make_order(uint32_t *order, uint64_t n, uint64_t seed)
{
    for (uint64_t i = 0; i < n; i++)
        order[i] = (uint32_t)i;
    if (!seed)
        return;
    for (uint64_t i = n - 1; i > 0; i--) {
        uint64_t j = mix(&seed) % (i + 1);
        uint32_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}

/* the cost of one timed step with nothing in it (two clock reads): subtract nothing, but
 * report it so a reader can see how much of a per-page figure is the clock. */
uint64_t clock_overhead_ns(uint64_t reps)
{
    uint64_t t0 = now_ns();
    volatile uint64_t sink = 0;
    for (uint64_t i = 0; i < reps; i++)
        sink += now_ns();
    (void)sink;
    return (now_ns() - t0) / (reps ? reps : 1);
}

/* touches page order[i] of base for i in [0, n) (write: one 8-byte store; else one load),
 * recording each touch's nanoseconds in ns[i] (ns may be NULL); returns the wall time of
 * the whole loop in nanoseconds. */
uint64_t touch_pages(char *base, const uint32_t *order, uint64_t n, uint64_t *ns, int write)
{
    volatile uint64_t sink = 0;
    uint64_t start = now_ns();
    for (uint64_t i = 0; i < n; i++) {
        volatile uint64_t *q = (volatile uint64_t *)(base + (uint64_t)order[i] * PG);
        uint64_t t0 = ns ? now_ns() : 0;
        if (write)
            q[1] = i + 1;
        else
            sink += q[1];
        if (ns)
            ns[i] = now_ns() - t0;
    }
    (void)sink;
    return now_ns() - start;
}

/* copies pool page (p % pool_pages) of src into page p of dst for p = order[i], i in
 * [0, n), recording each page's nanoseconds in ns[i] (may be NULL); returns wall ns. */
uint64_t copy_pages(char *dst, const char *src, uint64_t pool_pages, const uint32_t *order,
                    uint64_t n, uint64_t *ns)
{
    uint64_t start = now_ns();
    for (uint64_t i = 0; i < n; i++) {
        uint64_t p = order[i];
        uint64_t t0 = ns ? now_ns() : 0;
        memcpy(dst + p * PG, src + (p % pool_pages) * PG, PG);
        if (ns)
            ns[i] = now_ns() - t0;
    }
    return now_ns() - start;
}

/* reads page p = order[i] of base whole (a guest reading its memory back) and compares it
 * with pool page (p % pool_pages) of src; records each page's ns (the compare included) in
 * ns[i] (may be NULL); returns the number of pages that differ. *wall gets the loop time. */
uint64_t check_pages(const char *base, const char *src, uint64_t pool_pages, const uint32_t *order,
                     uint64_t n, uint64_t *ns, uint64_t *wall)
{
    uint64_t bad = 0;
    uint64_t start = now_ns();
    for (uint64_t i = 0; i < n; i++) {
        uint64_t p = order[i];
        uint64_t t0 = ns ? now_ns() : 0;
        bad += memcmp(base + p * PG, src + (p % pool_pages) * PG, PG) != 0;
        if (ns)
            ns[i] = now_ns() - t0;
    }
    *wall = now_ns() - start;
    return bad;
}

/* the kernel baseline: a fresh shmem object (memfd) of `bytes`, mapped MAP_SHARED and not
 * registered with userfaultfd, so its first touches are the kernel's own shmem faults.
 * anon != 0 maps private anonymous memory instead. Returns the address or NULL. */
char *baseline_map(uint64_t bytes, int anon)
{
    void *p;
    if (anon) {
        p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    } else {
        int fd = memfd_create("uvm-bench-baseline", MFD_CLOEXEC);
        if (fd < 0)
            return NULL;
        if (ftruncate(fd, (off_t)bytes)) {
            close(fd);
            return NULL;
        }
        p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
    }
    if (p == MAP_FAILED)
        return NULL;
    madvise(p, bytes, MADV_NOHUGEPAGE);    /* 4 KiB faults, as the pager serves */
    return p;
}

int baseline_unmap(char *p, uint64_t bytes)
{
    return munmap(p, bytes);
}

/* liblz4 (linked by soname; the machine has no lz4 headers) */
int LZ4_compress_default(const char *src, char *dst, int src_size, int dst_capacity);

/* the baseline of eviction: compresses pages 0..n-1 of a guest whose page p holds pool page
 * p % pool_pages, as the core's eviction does (an all-zero page is only scanned), into dst
 * (one page); returns the wall time in ns and the stored bytes in *stored. */
uint64_t compress_pages(const char *pool, uint64_t pool_pages, uint64_t n, char *dst,
                        uint64_t *stored)
{
    uint64_t t0 = now_ns(), total = 0;
    for (uint64_t p = 0; p < n; p++) {
        const char *page = pool + (p % pool_pages) * PG;
        const uint64_t *w = (const uint64_t *)page;
        size_t i = 0;
        while (i < PG / 8 && w[i] == 0)
            i++;
        if (i == PG / 8)
            continue;
        int len = LZ4_compress_default(page, dst, PG, PG - 1);
        total += len > 0 ? (uint64_t)len : PG;
    }
    *stored = total;
    return now_ns() - t0;
}
