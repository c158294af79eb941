/* evict.c: demand paging out. Victims are chosen at random among resident frames, as the
 * paper's swap daemon does: a host that guessed at the guest's working set would fight
 * the guest's own replacement policy. Eviction of a batch of pages, sorted into runs of
 * consecutive PPNs of one VM (an explicit vm.evict of a range is one run per batch):
 *   1. MADV_DONTNEED on the guest addresses, one call per run: from now on a guest touch
 *      faults (MINOR) and waits for the pager (or its own SIGBUS handler), which waits for
 *      m->lock, which we hold;
 *   2. compress each frame (read through the machine view) into the cluster buffer;
 *   3. write the whole batch with one pwrite when the swap map has a run for it;
 *   4. punch the home frames out of the memfd, one call per run of written pages, and
 *      record the slots in the pmaps.
 * Per run, not per page: with another thread of the process running on another CPU, each
 * DONTNEED or punch costs a TLB shootdown (~20 us), whatever its length.
 * A page whose write fails stays resident in the memfd, untouched (its next touch is a
 * MINOR fault, served with CONTINUE): nothing is lost. Callers hold m->lock. */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include "core.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

struct victim {
    struct vm *v;
    uint64_t ppn;
    uint32_t len;       /* stored length; 0 = all zero */
    uint64_t off;       /* offset of its bytes in the cluster buffer */
    int64_t unit;       /* first swap unit, or -1 */
};

/* marks a victim's page as paged out and frees its frame (punched by the caller). */
static void victim_commit(struct machine *m, struct victim *x, int background)
{
    frame_remove(m, PTE_VAL(x->v->pmap[x->ppn]));
    if (x->len == 0) {
        x->v->pmap[x->ppn] = PTE_MAKE(PM_ZERO, 0, 0);
        x->v->st.swapouts_zero++;
        m->st.swapouts_zero++;
    } else {
        x->v->pmap[x->ppn] = PTE_MAKE(PM_SWAPPED, x->len, (uint64_t)x->unit);
        x->v->st.swapped++;
        x->v->st.swapouts++;
        m->st.swapouts++;
        m->swap.pages++;
        m->swap.bytes += x->len;
    }
    if (background)
        m->st.evict_background++;
    else
        m->st.evict_fault_path++;
}

/* returns whether (v, ppn) is among the first k victims. */
static int victim_listed(const struct victim *xs, int k, const struct vm *v, uint64_t ppn)
{
    for (int i = 0; i < k; i++)
        if (xs[i].v == v && xs[i].ppn == ppn)
            return 1;
    return 0;
}

/* sorts victims by VM slot, then PPN (insertion sort: a batch is small, and qsort may
 * allocate, which the in-thread fault path must not). */
static void victims_sort(struct victim *xs, int k)
{
    for (int i = 1; i < k; i++) {
        struct victim x = xs[i];
        int j = i;
        for (; j > 0 && (xs[j - 1].v->slot > x.v->slot ||
                         (xs[j - 1].v->slot == x.v->slot && xs[j - 1].ppn > x.ppn)); j--)
            xs[j] = xs[j - 1];
        xs[j] = x;
    }
}

/* returns the length of the run of victims from xs[i] (consecutive PPNs of one VM) that
 * keep(x) accepts, all of them accepted. */
static int run_len(const struct victim *xs, int i, int k, int (*keep)(const struct victim *))
{
    int j = i + 1;
    while (j < k && xs[j].v == xs[i].v && xs[j].ppn == xs[j - 1].ppn + 1 && keep(&xs[j]))
        j++;
    return j - i;
}

static int any_victim(const struct victim *x) { (void)x; return 1; }

/* whether a victim's content is safe elsewhere (all zero, or written to swap) */
static int victim_saved(const struct victim *x) { return x->len == 0 || x->unit >= 0; }

/* writes each victim to its own slot; returns the first error or 0. */
static int write_each(struct machine *m, struct victim *xs, int n)
{
    int err = 0;
    for (int i = 0; i < n; i++) {
        struct victim *x = &xs[i];
        if (x->len == 0)
            continue;
        int64_t u = swap_alloc(&m->swap, swap_units(x->len));
        int r = u < 0 ? (int)u : swap_write(m, (uint64_t)u, CBUF_CLUSTER(m) + x->off, x->len);
        if (r < 0) {
            if (u >= 0)
                swap_unalloc(&m->swap, (uint64_t)u, swap_units(x->len));
            m->st.swap_errors += r != -ENOSPC;
            x->unit = -1;
            err = err ? err : r;
            continue;
        }
        x->unit = u;
    }
    return err;
}

/* evicts up to n resident pages named by frame table entries; returns how many were
 * evicted, or -errno when none could be (-ENOSPC: swap full, -EIO: write error). */
int evict_pages(struct machine *m, const uint64_t *ents, int n, int background)
{
    struct victim xs[EVICT_BATCH];
    uint64_t off = 0, total = 0;
    int k = 0;
    for (int i = 0; i < n && k < EVICT_BATCH; i++) {
        struct vm *v = m->vms[FT_SLOT(ents[i])];
        uint64_t ppn = FT_PPN(ents[i]);
        if (!v || PTE_STATE(v->pmap[ppn]) != PM_RESIDENT || victim_listed(xs, k, v, ppn))
            continue;
        xs[k++] = (struct victim){ .v = v, .ppn = ppn, .unit = -1 };
    }
    victims_sort(xs, k);
    for (int i = 0, len; i < k; i += len) {
        len = run_len(xs, i, k, any_victim);
        madvise(xs[i].v->guest + xs[i].ppn * PG, (size_t)len * PG, MADV_DONTNEED);
        /* map the run's frames in the machine view at once, not one minor fault a page
         * (they are resident: this fills no hole) */
        madvise(frame_addr(m, xs[i].v, xs[i].ppn), (size_t)len * PG, MADV_POPULATE_READ);
    }
    for (int i = 0; i < k; i++) {
        struct victim *x = &xs[i];
        x->off = off;
        x->len = (uint32_t)page_compress(m, frame_addr(m, x->v, x->ppn), CBUF_CLUSTER(m) + off);
        off += (uint64_t)swap_units(x->len) * UVM_SWAP_UNIT;
        total += swap_units(x->len);
    }
    int err = 0;
    int64_t u = total ? swap_alloc(&m->swap, (uint32_t)total) : -1;
    if (u >= 0) {
        /* one contiguous run: the cluster buffer is laid out unit by unit, write it at once */
        err = swap_write(m, (uint64_t)u, CBUF_CLUSTER(m), total * UVM_SWAP_UNIT);
        if (err) {
            m->st.swap_errors++;
            swap_unalloc(&m->swap, (uint64_t)u, (uint32_t)total);
        } else {
            for (int i = 0; i < k; i++)
                if (xs[i].len)
                    xs[i].unit = u + (int64_t)(xs[i].off / UVM_SWAP_UNIT);
        }
    } else if (total) {
        err = write_each(m, xs, k);
    }
    int done = 0;
    for (int i = 0, len; i < k; i += len) {
        if (!victim_saved(&xs[i])) {
            len = 1;            /* stays resident in the memfd: its next touch is MINOR */
            continue;
        }
        len = run_len(xs, i, k, victim_saved);
        frame_punch(m, xs[i].v, xs[i].ppn, (uint64_t)len);
        for (int j = i; j < i + len; j++)
            victim_commit(m, &xs[j], background);
        done += len;
    }
    return done ? done : (err ? err : -EAGAIN);
}

/* returns how far v may be paged: 0 above its target, 1 above its min, 2 not at all. */
static int evict_level(const struct vm *v)
{
    uint64_t held = v->st.resident + v->st.sharing;
    return held > v->target ? 0 : held > v->min ? 1 : 2;
}

/* picks n distinct random resident frames into ents; returns how many. Like the paper's
 * swap daemon, which pages VMs toward their targets, it takes frames of VMs above their
 * target if there are any, else of VMs above their min, else any (the budget comes first). */
static int pick_random(struct machine *m, uint64_t *ents, int n)
{
    if ((uint64_t)n > m->nresident)
        n = (int)m->nresident;
    int level = 2;
    for (int i = 0; i < MAX_VMS; i++)
        if (m->vms[i] && m->vms[i]->st.resident && evict_level(m->vms[i]) < level)
            level = evict_level(m->vms[i]);
    int k = 0;
    for (uint64_t tries = 0; k < n; tries++) {
        uint64_t e = m->frames[rng_next(&m->rng) % m->nresident];
        if (tries > 64 * (uint64_t)n)
            level = 2;      /* the preferred VMs hold few of the frames: take any */
        int dup = evict_level(m->vms[FT_SLOT(e)]) > level;
        for (int j = 0; j < k; j++)
            dup |= ents[j] == e;
        if (!dup)
            ents[k++] = e;
    }
    return k;
}

/* makes at least need frames free, evicting random victims; returns 0 or -errno (-EBUSY:
 * nothing to evict, fills in flight hold the free frames: the fault waits and retries, see
 * fault_serve). A write error is retried with other victims a few times before it is
 * reported. */
int ensure_free(struct machine *m, uint64_t need)
{
    int failures = 0;
    while (frames_free(m) < need) {
        uint64_t ents[EVICT_BATCH];
        uint64_t want = need - (frames_free(m));
        int n = pick_random(m, ents, want < 8 ? 8 : (want > EVICT_BATCH ? EVICT_BATCH : (int)want));
        if (n == 0)             /* -EBUSY: fills in flight hold the free frames (pager.c) */
            return m->fill_frames ? -EBUSY : -ENOMEM;
        int r = evict_pages(m, ents, n, 0);
        if (r < 0 && (r != -EIO || ++failures > EVICT_RETRIES))
            return r;
    }
    return 0;
}

/* wakes the reclaim thread if free frames ran below the low water mark. */
void reclaim_kick(struct machine *m)
{
    if (m->reclaim && frames_free(m) < m->low_water)
        pthread_cond_signal(&m->reclaim_cv);
}

/* the background reclaim thread: keeps free frames between the low and high water marks,
 * so most faults find a free frame without evicting on the fault path. */
void *reclaim_main(void *arg)
{
    struct machine *m = arg;
    pthread_mutex_lock(&m->lock);
    while (!m->closing) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        if (frames_free(m) >= m->low_water || machine_held(m)) {
            pthread_cond_timedwait(&m->reclaim_cv, &m->lock, &ts);
            continue;
        }
        while (!m->closing && !machine_held(m) && frames_free(m) < m->high_water) {
            uint64_t ents[EVICT_BATCH];
            int n = pick_random(m, ents, EVICT_BATCH);
            if (n == 0 || evict_pages(m, ents, n, 1) < 0) {
                /* swap full or failing: let the fault path report it; retry later */
                pthread_cond_timedwait(&m->reclaim_cv, &m->lock, &ts);
                break;
            }
            /* let waiting pagers in between batches */
            pthread_mutex_unlock(&m->lock);
            pthread_mutex_lock(&m->lock);
        }
    }
    pthread_mutex_unlock(&m->lock);
    return NULL;
}
