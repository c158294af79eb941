/* frame.c: the frame table (which guest page holds each resident machine frame), the
 * machine view, and hole punching. Callers hold m->lock. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include "core.h"

/* xorshift64*: a fast generator for random victims and sampling. */
uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* returns the machine-view address of the home frame of (v, ppn). */
char *frame_addr(struct machine *m, struct vm *v, uint64_t ppn)
{
    return m->view + (v->base + ppn) * PG;
}

/* records that (v, ppn) now holds a frame; returns 0, or -ENOMEM if the budget is full. */
int frame_add(struct machine *m, struct vm *v, uint64_t ppn)
{
    if (frames_free(m) == 0)
        return -ENOMEM;
    uint64_t idx = m->nresident++;
    m->frames[idx] = FT_MAKE(v->slot, ppn);
    v->pmap[ppn] = PTE_MAKE(PM_RESIDENT, 0, idx);
    v->st.resident++;
    return 0;
}

/* forgets frame table entry idx (the caller sets the page's new pmap state). */
void frame_remove(struct machine *m, uint64_t idx)
{
    uint64_t last = --m->nresident;
    struct vm *owner = m->vms[FT_SLOT(m->frames[idx])];
    owner->st.resident--;
    if (idx != last) {
        uint64_t e = m->frames[last];
        m->frames[idx] = e;
        pte_t *moved = &m->vms[FT_SLOT(e)]->pmap[FT_PPN(e)];
        *moved = PTE_MAKE(PM_RESIDENT, PTE_LEN(*moved), idx);     /* keeps its flags */
    }
}

/* frees the memfd pages behind n home frames from (v, ppn); returns 0 or -errno. */
int frame_punch(struct machine *m, struct vm *v, uint64_t ppn, uint64_t n)
{
    if (fallocate(m->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  (off_t)((v->base + ppn) * PG), (off_t)(n * PG)))
        return -errno;
    return 0;
}

/* returns whether [b1, b1 + n1) and [b2, b2 + n2) overlap. */
static int overlap(uint64_t b1, uint64_t n1, uint64_t b2, uint64_t n2)
{
    return b1 < b2 + n2 && b2 < b1 + n1;
}

/* checks MPN space: holes sorted, coalesced and below the tail, and no VM's slice overlapping
 * a hole, another slice or the tail; returns 0 or -EUCLEAN. */
static int slices_check(struct machine *m)
{
    for (int i = 0; i < m->nholes; i++) {
        uint64_t end = m->holes[i].base + m->holes[i].npages;
        if (m->holes[i].npages == 0 || end >= m->mpn_next ||
            (i + 1 < m->nholes && end >= m->holes[i + 1].base))
            return -EUCLEAN;
    }
    for (int s = 0; s < MAX_VMS; s++) {
        struct vm *v = m->vms[s];
        if (!v)
            continue;
        if (v->base + v->npages > m->mpn_next)
            return -EUCLEAN;
        for (int i = 0; i < m->nholes; i++)
            if (overlap(v->base, v->npages, m->holes[i].base, m->holes[i].npages))
                return -EUCLEAN;
        for (int t = 0; t < s; t++)
            if (m->vms[t] && overlap(v->base, v->npages, m->vms[t]->base, m->vms[t]->npages))
                return -EUCLEAN;
    }
    return 0;
}

/* checks that the frame table and every pmap agree (each resident page has exactly the
 * entry its pmap names, and per-VM counts match), and that MPN slices do not overlap; returns 0, or -EUCLEAN. Debug aid: it
 * walks every pmap, so call it from tests, not from a hot path. */
int machine_check(struct machine *m)
{
    int r = 0;
    machine_lock(m);
    uint64_t counted = 0;
    for (uint64_t i = 0; i < m->nresident && !r; i++) {
        struct vm *v = m->vms[FT_SLOT(m->frames[i])];
        uint64_t ppn = FT_PPN(m->frames[i]);
        /* the entry names this frame; of the flags only PTE_WATCH outlives a call */
        if (!v || ppn >= v->npages ||
            v->pmap[ppn] != PTE_MAKE(PM_RESIDENT, PTE_LEN(v->pmap[ppn]) & PTE_WATCH, i))
            r = -EUCLEAN;
    }
    uint32_t *refs = calloc(m->nframes + 1, sizeof *refs);
    if (!refs)
        r = -ENOMEM;
    for (int s = 0; s < MAX_VMS && !r; s++) {
        struct vm *v = m->vms[s];
        if (!v)
            continue;
        uint64_t res = 0, sw = 0, sh = 0, bal = 0;
        for (uint64_t p = 0; p < v->npages; p++) {
            pte_t e = v->pmap[p];
            res += PTE_STATE(e) == PM_RESIDENT;
            sw += PTE_STATE(e) == PM_SWAPPED;
            bal += PTE_STATE(e) == PM_BALLOONED;
            if (PTE_STATE(e) == PM_SHARED) {
                sh++;
                if (PTE_VAL(e) < m->nframes)
                    refs[PTE_VAL(e)]++;
                else
                    r = -EUCLEAN;
            }
        }
        if (res != v->st.resident || sw != v->st.swapped || sh != v->st.sharing ||
            bal != v->st.ballooned)
            r = -EUCLEAN;
        counted += res;
    }
    if (!r && counted != m->nresident)
        r = -EUCLEAN;
    uint64_t live = 0;
    for (uint64_t s = 0; !r && s < m->share.sf_next; s++) {
        uint32_t have = m->share.sf[s].refs == UINT32_MAX ? 0 : m->share.sf[s].refs;
        if (refs[s] != have)
            r = -EUCLEAN;
        live += refs[s] != 0;
    }
    if (!r && live != m->nshared)
        r = -EUCLEAN;
    uint64_t hints[MAX_VMS] = { 0 }, all = 0;
    for (uint64_t i = 0; !r && m->share.tab && i <= m->share.mask; i++) {
        uint64_t val = m->share.tab[i].val;
        if (SE_KIND(val) == SE_HINT) {
            hints[FT_SLOT(SE_PAYLOAD(val)) % MAX_VMS]++;
            all++;
        }
    }
    for (int s = 0; !r && s < MAX_VMS; s++)
        if (hints[s] != (m->vms[s] ? m->vms[s]->st.hints : 0))
            r = -EUCLEAN;
    if (!r && all != m->st.hints)
        r = -EUCLEAN;
    if (!r)
        r = slices_check(m);
    if (!r)
        r = lowmem_check(m);
    free(refs);
    pthread_mutex_unlock(&m->lock);
    return r;
}
