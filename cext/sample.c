/* sample.c: idle-memory sampling (paper section 5.3): watch pages to see whether the guest
 * touches them again.
 *
 * Watching a resident page drops its guest mapping with MADV_DONTNEED, which keeps the frame
 * in the memfd; the next touch, read or write, is a MINOR fault, which the pager serves with
 * UFFDIO_CONTINUE and records by clearing the page's PTE_WATCH flag (pager.c). A watched
 * page that leaves machine memory (paged out, merged, ballooned) loses the flag; if the
 * guest touches it later it comes back resident without the flag, which reads as touched.
 * So a query can tell touched, untouched (still watched) and gone (not resident and not
 * touched: the sample lost it). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>
#include "core.h"

/* watches (v, ppn) if it is resident and not being merged; returns 1 if it watched it. */
static int watch_one(struct vm *v, uint64_t ppn)
{
    pte_t e = v->pmap[ppn];
    if (PTE_STATE(e) != PM_RESIDENT || (PTE_LEN(e) & PTE_PENDING))
        return 0;
    if (madvise(v->guest + ppn * PG, PG, MADV_DONTNEED))
        return 0;
    v->pmap[ppn] = PTE_MAKE(PM_RESIDENT, PTE_LEN(e) | PTE_WATCH, PTE_VAL(e));
    return 1;
}

/* watches the listed pages of VM id that are resident, keeping those (in order) at the
 * front of ppns; returns how many, or -errno. */
int64_t vm_watch(struct machine *m, int id, uint64_t *ppns, size_t n)
{
    int err;
    int64_t done = 0;
    machine_lock(m);
    struct vm *v = vm_get_ppns(m, id, ppns, n, &err);
    for (size_t i = 0; v && i < n; i++)
        if (watch_one(v, ppns[i]))
            ppns[done++] = ppns[i];
    pthread_mutex_unlock(&m->lock);
    return v ? done : err;
}

/* picks up to n random resident pages of VM id into out; returns how many, or -errno. */
int64_t vm_pick_resident(struct machine *m, int id, uint64_t n, uint64_t *out)
{
    machine_lock(m);
    struct vm *v = vm_get(m, id);
    int64_t k = v ? (int64_t)resident_pick(m, v, n, out) : -ENOENT;
    pthread_mutex_unlock(&m->lock);
    return k;
}

/* picks up to n random resident pages of VM id, watches them and writes their PPNs to out;
 * returns how many, or -errno. */
int64_t vm_watch_random(struct machine *m, int id, uint64_t n, uint64_t *out)
{
    int64_t done = 0;
    machine_lock(m);
    struct vm *v = vm_get(m, id);
    uint64_t k = v ? resident_pick(m, v, n, out) : 0;
    for (uint64_t i = 0; i < k; i++)
        if (watch_one(v, out[i]))
            out[done++] = out[i];
    pthread_mutex_unlock(&m->lock);
    return v ? done : -ENOENT;
}

/* sets status[i] to WATCH_UNTOUCHED, WATCH_TOUCHED or WATCH_GONE for each listed page of
 * VM id (pages the caller watched); returns how many were touched, or -errno. */
int64_t vm_watched(struct machine *m, int id, const uint64_t *ppns, size_t n, uint8_t *status)
{
    int err;
    int64_t touched = 0;
    machine_lock(m);
    struct vm *v = vm_get_ppns(m, id, ppns, n, &err);
    for (size_t i = 0; v && i < n; i++) {
        pte_t e = v->pmap[ppns[i]];
        if (PTE_STATE(e) != PM_RESIDENT)
            status[i] = WATCH_GONE;
        else if (PTE_LEN(e) & PTE_WATCH)
            status[i] = WATCH_UNTOUCHED;
        else
            status[i] = WATCH_TOUCHED;
        touched += status[i] == WATCH_TOUCHED;
    }
    pthread_mutex_unlock(&m->lock);
    return v ? touched : err;
}
