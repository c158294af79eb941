/* lowmem.c: low machine memory and I/O page remapping (paper section 7).
 *
 * Devices of the paper's era could reach only the low part of machine memory (DMA below
 * 4 GB); I/O into a page backed by a high frame went through a bounce frame in low memory,
 * a copy. ESX counted the copies per page and remapped hot pages into low frames. Here the
 * low part is a region of L frames at the bottom of MPN space, reserved when the machine
 * is made (machine_lowmem, before any VM: every VM's slice lies above it, so every home
 * frame is high). vm_lowmem_remap moves a resident page into a free low frame: its content
 * is copied there, its guest address re-mapped onto the low frame (as sharing re-maps a
 * page onto a shared frame, but writable), its home frame punched and its frame-table entry
 * dropped. Such a page is PM_LOW: the frame budget counts it (low.used), eviction, idle
 * sampling and the sharing scanner pass it by (they take resident pages), its faults (a
 * write-protect window of a scan, a minor fault) are served as a resident page's, ballooning
 * it maps the home offset back and frees the low frame, and a destroyed VM's low frames
 * return to the pool. The bounce copies and the policy (which pages are hot) are the host's
 * Python side (uvm/iomap.py). Callers of the lowmem_* helpers hold m->lock. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include "core.h"

/* reserves n low frames at the bottom of MPN space; returns 0, -EBUSY if a VM was ever
 * made or low memory already exists, -ENOMEM if n is beyond the budget or memory. */
int machine_lowmem(struct machine *m, uint64_t n)
{
    int r = 0;
    machine_lock(m);
    if (m->mpn_next != 0 || m->low.n != 0)
        r = -EBUSY;
    else if (n > m->nframes || n >= m->share.sh_base)
        r = -ENOMEM;
    else if (n && !(m->low.free = malloc(n * sizeof *m->low.free)))
        r = -ENOMEM;
    if (r == 0) {
        for (uint64_t i = 0; i < n; i++)
            m->low.free[i] = (uint32_t)(n - 1 - i);     /* pops low indexes first */
        m->low.base = 0;
        m->low.n = m->low.nfree = n;
        m->mpn_next = n;
    }
    pthread_mutex_unlock(&m->lock);
    return r;
}

/* returns the machine-view address of low frame i. */
static char *low_addr(struct machine *m, uint64_t i)
{
    return m->view + (m->low.base + i) * PG;
}

/* gives low frame i back to the pool, its memory freed. */
static void low_put(struct machine *m, uint64_t i)
{
    fallocate(m->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
              (off_t)((m->low.base + i) * PG), PG);
    m->low.free[m->low.nfree++] = (uint32_t)i;
}

/* moves resident page ppn of VM id into a free low frame; returns 1, 0 if no low frame is
 * free, -EAGAIN if the page is not resident (or watched: touch it first), or -errno. */
int vm_lowmem_remap(struct machine *m, int id, uint64_t ppn)
{
    int r = 0;
    machine_lock(m);
    struct vm *v = vm_get(m, id);
    if (!v)
        r = -ENOENT;
    else if (ppn >= v->npages)
        r = -EINVAL;
    else if (PTE_STATE(v->pmap[ppn]) != PM_RESIDENT || PTE_LEN(v->pmap[ppn]))
        r = -EAGAIN;
    else if (m->low.nfree > 0) {
        uint64_t i = m->low.free[--m->low.nfree];
        memcpy(low_addr(m, i), frame_addr(m, v, ppn), PG);
        char *a = v->guest + ppn * PG;
        int replaced;
        if ((r = share_remap(m, a, 1, m->low.base + i, &replaced))) {
            if (replaced)
                share_remap(m, a, 1, v->base + ppn, &replaced);
            low_put(m, i);
        } else {
            frame_remove(m, PTE_VAL(v->pmap[ppn]));
            frame_punch(m, v, ppn, 1);
            v->pmap[ppn] = PTE_MAKE(PM_LOW, 0, i);
            v->low++;
            m->low.used++;
            share_premap(m, a, 1);
            r = 1;
        }
    }
    pthread_mutex_unlock(&m->lock);
    return r;
}

/* maps low page (v, ppn) back onto its home offset (a hole: the caller sets its new state)
 * and frees its low frame; returns 0 or -errno. */
int lowmem_release(struct machine *m, struct vm *v, uint64_t ppn)
{
    int replaced, r = share_remap(m, v->guest + ppn * PG, 1, v->base + ppn, &replaced);
    if (r == 0)
        lowmem_drop(m, v, ppn);
    return r;
}

/* frees low page (v, ppn)'s low frame (its VM is being destroyed, or it was re-mapped). */
void lowmem_drop(struct machine *m, struct vm *v, uint64_t ppn)
{
    low_put(m, PTE_VAL(v->pmap[ppn]));
    v->low--;
    m->low.used--;
}

/* fills *total and *free with the low frames; returns 0. */
int machine_lowmem_stats(struct machine *m, uint64_t *total, uint64_t *nfree)
{
    machine_lock(m);
    *total = m->low.n;
    *nfree = m->low.nfree;
    pthread_mutex_unlock(&m->lock);
    return 0;
}

/* checks the low pool: every low frame either free or held by exactly one PM_LOW page, and
 * the counts agree; returns 0 or -EUCLEAN. */
int lowmem_check(struct machine *m)
{
    if (m->low.n == 0)
        return m->low.used == 0 ? 0 : -EUCLEAN;
    uint8_t *seen = calloc(m->low.n, 1);
    if (!seen)
        return -ENOMEM;
    int r = 0;
    uint64_t held = 0;
    for (uint64_t k = 0; k < m->low.nfree && !r; k++)
        r = m->low.free[k] >= m->low.n || seen[m->low.free[k]]++ ? -EUCLEAN : 0;
    for (int s = 0; s < MAX_VMS && !r; s++) {
        struct vm *v = m->vms[s];
        uint64_t mine = 0;
        for (uint64_t p = 0; v && p < v->npages && !r; p++) {
            pte_t e = v->pmap[p];
            if (PTE_STATE(e) != PM_LOW)
                continue;
            mine++;
            r = PTE_VAL(e) >= m->low.n || seen[PTE_VAL(e)]++ ? -EUCLEAN : 0;
        }
        if (v && mine != v->low)
            r = -EUCLEAN;
        held += mine;
    }
    if (!r && (held != m->low.used || held + m->low.nfree != m->low.n))
        r = -EUCLEAN;
    free(seen);
    return r;
}

/* frees the low pool (the machine is going away). */
void lowmem_fini(struct machine *m)
{
    free(m->low.free);
}
