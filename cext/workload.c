/* workload.c: the inner loops of toy guest programs. They run on the calling thread (cffi
 * releases the GIL) and touch guest memory exactly as a guest would, under the guard, so a
 * stopped VM makes them return -EFAULT. */
#include <math.h>
#include <time.h>
#include <stdint.h>
#include "core.h"
#include "guard.h"

/* splitmix64: the content of word i of page p under a seed. */
static uint64_t pattern_word(uint64_t seed, uint64_t p, uint64_t i)
{
    uint64_t z = seed + p * 0x9E3779B97F4A7C15ull + i * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* writes the pattern; see wl_fill. */
static __attribute__((noinline)) void fill(char *base, uint64_t first, uint64_t n, uint64_t seed)
{
    for (uint64_t p = first; p < first + n; p++) {
        uint64_t *w = (uint64_t *)((char *)base + p * PG);
        for (uint64_t i = 0; i < PG / 8; i++)
            w[i] = pattern_word(seed, p, i);
    }
}

/* writes the seed's pattern (distinct for every page) into pages [first, first + n);
 * returns n or -EFAULT. */
int64_t wl_fill(void *base, uint64_t first, uint64_t n, uint64_t seed)
{
    GUARD_BEGIN;
    fill(base, first, n, seed);
    GUARD_END;
    return (int64_t)n;
}

/* checks the pattern; see wl_verify. */
static __attribute__((noinline)) int64_t verify(const char *base, uint64_t first, uint64_t n, uint64_t seed,
                      uint64_t *bad_page)
{
    int64_t bad = 0;
    for (uint64_t p = first; p < first + n; p++) {
        const uint64_t *w = (const uint64_t *)((const char *)base + p * PG);
        for (uint64_t i = 0; i < PG / 8; i++) {
            if (w[i] != pattern_word(seed, p, i)) {
                if (bad++ == 0)
                    *bad_page = p;
                break;
            }
        }
    }
    return bad;
}

/* checks pages [first, first + n) against the seed's pattern; returns the number of pages
 * that differ (the first in *bad_page), or -EFAULT. */
int64_t wl_verify(void *base, uint64_t first, uint64_t n, uint64_t seed, uint64_t *bad_page)
{
    GUARD_BEGIN;
    int64_t bad = verify(base, first, n, seed, bad_page);
    GUARD_END;
    return bad;
}

/* returns the next page of a working-set walk over set pages; rng[0] is the random state,
 * rng[1] the sequential cursor. Zipf (s = 1) is drawn by inverting its continuous CDF,
 * rank = set^u, and ranks are spread over the set by a fixed odd stride. */
static uint64_t next_page(uint64_t set, int pattern, uint64_t *rng)
{
    if (pattern == 0)
        return rng[1]++ % set;
    uint64_t r = rng_next(&rng[0]);
    if (pattern == 1)
        return r % set;
    double u = (double)(r >> 11) / 9007199254740992.0;
    uint64_t rank = (uint64_t)pow((double)set, u) - 1;
    return (rank * 2654435761ull) % set;
}

/* the walk itself; see wl_touch. */
static __attribute__((noinline)) uint64_t touch(char *base, uint64_t set, int pattern, double write_fraction,
                      uint64_t ops, uint64_t *rng)
{
    uint64_t wcut = (uint64_t)(write_fraction * 4294967296.0);
    uint64_t sink = 0;
    for (uint64_t k = 0; k < ops; k++) {
        uint64_t p = next_page(set, pattern, rng);
        uint64_t *w = (uint64_t *)((char *)base + p * PG + (k % (PG / 8)) * 8);
        if ((rng_next(&rng[0]) >> 32) < wcut)
            *w += 1;
        else
            sink += *(volatile uint64_t *)w;
    }
    return sink;
}

/* touches ops pages of the first set pages (pattern 0 sequential, 1 random, 2 zipf),
 * writing a fraction of them; returns ops or -EFAULT. */
int64_t wl_touch(void *base, uint64_t set, int pattern, double write_fraction, uint64_t ops,
                 uint64_t *rng)
{
    GUARD_BEGIN;
    touch(base, set, pattern, write_fraction, ops, rng);
    GUARD_END;
    return (int64_t)ops;
}

/* the walk itself; see wl_touch_pages. */
static __attribute__((noinline)) uint64_t touch_pages(char *base, const uint64_t *ppns, uint64_t n,
                                                      double write_fraction, uint64_t *rng)
{
    uint64_t wcut = (uint64_t)(write_fraction * 4294967296.0);
    uint64_t sink = 0;
    for (uint64_t k = 0; k < n; k++) {
        uint64_t *w = (uint64_t *)(base + ppns[k] * PG + (k % (PG / 8)) * 8);
        if ((rng_next(&rng[0]) >> 32) < wcut)
            *w += 1;
        else
            sink += *(volatile uint64_t *)w;
    }
    return sink;
}

/* touches the n listed pages in order (a guest OS's process, through its page table),
 * writing a fraction of them; returns n or -EFAULT. */
int64_t wl_touch_pages(void *base, const uint64_t *ppns, uint64_t n, double write_fraction,
                       uint64_t *rng)
{
    GUARD_BEGIN;
    touch_pages(base, ppns, n, write_fraction, rng);
    GUARD_END;
    return (int64_t)n;
}

/* the probe itself; see wl_time_writes. */
static __attribute__((noinline)) void time_writes(char *base, const uint64_t *ppns, uint64_t n,
                                                  uint64_t *ns)
{
    for (uint64_t k = 0; k < n; k++) {
        volatile uint64_t *w = (volatile uint64_t *)(base + ppns[k] * PG);
        uint64_t old = *w;      /* a read first: only the write is timed */
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        *w = old;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        ns[k] = (uint64_t)((t1.tv_sec - t0.tv_sec) * 1000000000ll + (t1.tv_nsec - t0.tv_nsec));
    }
}

/* rewrites the first word of each listed page with its own value and times each write
 * (ns): what a guest sees of copy-on-write. Returns n or -EFAULT. */
int64_t wl_time_writes(void *base, const uint64_t *ppns, uint64_t n, uint64_t *ns)
{
    GUARD_BEGIN;
    time_writes(base, ppns, n, ns);
    GUARD_END;
    return (int64_t)n;
}
