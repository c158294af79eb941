/* vm.c: guests. A VM's guest-physical memory is a MAP_SHARED mapping of its own slice of
 * the memfd (PPN p lives at home MPN base + p), registered with userfaultfd for MISSING,
 * MINOR and WP faults, with a pmap of one 8-byte entry per PPN. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include "core.h"
#include "uffd.h"

/* takes an MPN slice of n pages from a hole (first fit) or the end of MPN space; returns
 * base or -1. */
static int64_t slice_alloc(struct machine *m, uint64_t n)
{
    for (int i = 0; i < m->nholes; i++) {
        if (m->holes[i].npages >= n) {
            uint64_t base = m->holes[i].base;
            m->holes[i].base += n;
            m->holes[i].npages -= n;
            if (m->holes[i].npages == 0) {
                memmove(&m->holes[i], &m->holes[i + 1], (size_t)(m->nholes - i - 1) * sizeof m->holes[0]);
                m->nholes--;
            }
            return (int64_t)base;
        }
    }
    if (m->mpn_next + n > m->share.sh_base)
        return -1;
    m->mpn_next += n;
    return (int64_t)(m->mpn_next - n);
}

/* returns a slice to MPN space, coalescing it with the free space on either side, so free
 * space never fragments into pieces too small for a VM that would fit in their sum. Free
 * ranges lie between live slices, so there are at most MAX_VMS + 1 of them, hole or tail. */
static void slice_free(struct machine *m, uint64_t base, uint64_t n)
{
    int i = 0;
    while (i < m->nholes && m->holes[i].base < base)
        i++;
    if (i > 0 && m->holes[i - 1].base + m->holes[i - 1].npages == base) {
        i--;                        /* joins the hole below */
        m->holes[i].npages += n;
    } else {
        memmove(&m->holes[i + 1], &m->holes[i], (size_t)(m->nholes - i) * sizeof m->holes[0]);
        m->holes[i].base = base;
        m->holes[i].npages = n;
        m->nholes++;
    }
    if (i + 1 < m->nholes && m->holes[i].base + m->holes[i].npages == m->holes[i + 1].base) {
        m->holes[i].npages += m->holes[i + 1].npages;     /* and the hole above */
        memmove(&m->holes[i + 1], &m->holes[i + 2], (size_t)(m->nholes - i - 2) * sizeof m->holes[0]);
        m->nholes--;
    }
    if (i == m->nholes - 1 && m->holes[i].base + m->holes[i].npages == m->mpn_next) {
        m->mpn_next = m->holes[i].base;                     /* the top hole rejoins the tail */
        m->nholes--;
    }
}

/* creates a VM of n pages; returns 0 and its slot and guest address, or -errno
 * (-EMFILE: no VM slot left, -EFBIG: MPN space exhausted, -ESHUTDOWN: machine closing). */
int vm_create(struct machine *m, uint64_t n, int *id, void **base)
{
    int r = 0, slot = -1;
    struct vm *v = calloc(1, sizeof *v);
    pte_t *pmap = calloc(n, sizeof *pmap);
    guard_install();    /* again: a handler installed since (faulthandler) would get its faults */
    machine_lock(m);
    if (!v || !pmap) {
        r = -ENOMEM;
        goto out;
    }
    if (m->closing) {
        r = -ESHUTDOWN;
        goto out;
    }
    for (int i = 0; i < MAX_VMS && slot < 0; i++)
        if (!m->vms[i])
            slot = i;
    if (slot < 0) {
        r = -EMFILE;
        goto out;
    }
    int64_t b = slice_alloc(m, n);
    if (b < 0) {
        r = -EFBIG;
        goto out;
    }
    v->slot = slot;
    v->npages = n;
    v->base = (uint64_t)b;
    v->pmap = pmap;
    v->st.pages = n;
    v->target = UINT64_MAX;
    frame_punch(m, v, 0, n);    /* a reused slice must hold nothing of its last owner */
    v->guest = mmap(NULL, n * PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE,
                    m->memfd, (off_t)(v->base * PG));
    if (v->guest == MAP_FAILED) {
        r = -errno;
        slice_free(m, v->base, n);
        goto out;
    }
    struct uffdio_register reg = {
        .range = { (uint64_t)v->guest, n * PG },
        .mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR | UFFDIO_REGISTER_MODE_WP,
    };
    if (ioctl(m->uffd, UFFDIO_REGISTER, &reg)) {
        r = -errno;
        munmap(v->guest, n * PG);
        slice_free(m, v->base, n);
        goto out;
    }
    v->live = live_add(v->guest, n * PG, m->fault_path == UVM_FAULT_THREAD ? m : NULL);
    if (v->live < 0) {
        r = v->live;
        munmap(v->guest, n * PG);
        slice_free(m, v->base, n);
        goto out;
    }
    m->vms[slot] = v;
    *id = slot;
    *base = v->guest;
    v = NULL;
    pmap = NULL;
out:
    pthread_mutex_unlock(&m->lock);
    free(v);
    free(pmap);
    return r;
}

/* destroys VM id: frees its frames and swap slots, and leaves its address range as an
 * inaccessible reservation that is never reused, so a stale pointer into it (a numpy array
 * made from vm.memory, say) can neither crash on unmapped memory nor ever reach another
 * VM's memory; returns 0 or -ENOENT. */
int vm_destroy(struct machine *m, int id)
{
    machine_lock(m);
    struct vm *v = vm_get(m, id);
    if (!v) {
        pthread_mutex_unlock(&m->lock);
        return -ENOENT;
    }
    live_remove(v->live);
    mmap(v->guest, v->npages * PG, PROT_NONE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
         -1, 0);
    frame_punch(m, v, 0, v->npages);
    for (uint64_t p = 0; p < v->npages; p++) {
        pte_t e = v->pmap[p];
        if (PTE_STATE(e) == PM_RESIDENT)
            frame_remove(m, PTE_VAL(e));
        else if (PTE_STATE(e) == PM_SWAPPED)
            swap_free(&m->swap, PTE_VAL(e), PTE_LEN(e));
        else if (PTE_STATE(e) == PM_SHARED)
            share_drop(m, v, p);
        else if (PTE_STATE(e) == PM_LOW)
            lowmem_drop(m, v, p);
    }
    share_forget(m, v);
    m->vms[id] = NULL;
    slice_free(m, v->base, v->npages);
    pthread_mutex_unlock(&m->lock);
    live_quiesce(v->live);      /* no in-thread fault handler still looks at v */
    free(v->pmap);
    free(v);
    return 0;
}

/* returns VM id, or NULL if there is none; caller holds m->lock. */
struct vm *vm_get(struct machine *m, int id)
{
    return id >= 0 && id < MAX_VMS ? m->vms[id] : NULL;
}

/* returns VM id if every listed PPN is one of its pages, else NULL with *err set to -ENOENT
 * or -EINVAL. Caller holds m->lock. */
struct vm *vm_get_ppns(struct machine *m, int id, const uint64_t *ppns, size_t n, int *err)
{
    struct vm *v = vm_get(m, id);
    *err = v ? 0 : -ENOENT;
    for (size_t i = 0; v && i < n; i++)
        if (ppns[i] >= v->npages)
            *err = -EINVAL;
    return *err ? NULL : v;
}

/* picks up to n distinct resident PPNs of v, uniformly at random (reservoir sampling over
 * the pmap), into out; returns how many. Caller holds m->lock. */
uint64_t resident_pick(struct machine *m, struct vm *v, uint64_t n, uint64_t *out)
{
    uint64_t seen = 0;
    for (uint64_t p = 0; n && p < v->npages; p++) {
        if (PTE_STATE(v->pmap[p]) != PM_RESIDENT)
            continue;
        uint64_t j = seen < n ? seen : rng_next(&m->rng) % (seen + 1);
        if (j < n)
            out[j] = p;
        seen++;
    }
    return seen < n ? seen : n;
}

/* fills st from VM id's counters (all zero if there is no such VM); caller holds m->lock. */
void vm_stats_locked(struct machine *m, int id, struct uvm_vm_stats *st)
{
    struct vm *v = vm_get(m, id);
    if (v) {
        *st = v->st;
        st->zero = v->npages - v->st.resident - v->st.swapped - v->st.sharing - v->st.ballooned -
                   v->low;
        st->shared_saved = share_saved(m, v);
    } else {
        memset(st, 0, sizeof *st);
    }
}

/* copies VM id's counters into st. */
void vm_stats(struct machine *m, int id, struct uvm_vm_stats *st)
{
    machine_lock(m);
    vm_stats_locked(m, id, st);
    pthread_mutex_unlock(&m->lock);
}

/* sets VM id's min and target (pages): eviction without a choice of VM (the pagers, the
 * reclaim thread) takes from VMs above their target first, then above their min; returns
 * 0 or -ENOENT. */
int vm_set_limits(struct machine *m, int id, uint64_t min, uint64_t target)
{
    machine_lock(m);
    struct vm *v = vm_get(m, id);
    if (v) {
        v->min = min;
        v->target = target;
    }
    pthread_mutex_unlock(&m->lock);
    return v ? 0 : -ENOENT;
}

int vm_set_share_domain(struct machine *m, int id, uint32_t domain)
{
    int r = 0;
    machine_lock(m);
    struct vm *v = vm_get(m, id);
    if (!v)
        r = -ENOENT;
    else if (domain > UVM_MAX_DOMAIN)
        r = -EINVAL;
    else if (v->st.scanned)
        r = -EBUSY;             /* pages already merged would stay merged across domains */
    else
        v->domain = domain;
    pthread_mutex_unlock(&m->lock);
    return r;
}

/* returns the pmap state of (id, ppn), or -ENOENT / -EINVAL. */
int vm_page_state(struct machine *m, int id, uint64_t ppn)
{
    machine_lock(m);
    struct vm *v = vm_get(m, id);
    int r = !v ? -ENOENT : ppn >= v->npages ? -EINVAL : PTE_STATE(v->pmap[ppn]);
    pthread_mutex_unlock(&m->lock);
    return r;
}

/* returns the page map byte of pmap entry e of v: its state and MAP_* flags. */
static uint8_t map_byte(struct machine *m, struct vm *v, pte_t e)
{
    int state = PTE_STATE(e);
    uint8_t b = (uint8_t)state;
    if (state == PM_SHARED && m->share.sf[PTE_VAL(e)].zero)
        b |= MAP_ZERO_SHARED;
    if (state == PM_RESIDENT && (PTE_LEN(e) & PTE_WATCH))
        b |= MAP_WATCHED;
    if (v->stopped)
        b |= MAP_STOPPED;
    return b;
}

/* writes the page map bytes of VM id's first n pages into out; returns its page count,
 * or -ENOENT. */
int64_t vm_page_map(struct machine *m, int id, uint8_t *out, uint64_t n)
{
    machine_lock(m);
    struct vm *v = vm_get(m, id);
    int64_t r = v ? (int64_t)v->npages : -ENOENT;
    for (uint64_t p = 0; v && p < n && p < v->npages; p++)
        out[p] = map_byte(m, v, v->pmap[p]);
    pthread_mutex_unlock(&m->lock);
    return r;
}

/* evicts the listed pages of VM id (those resident); returns how many were evicted, or
 * -errno if an eviction failed before any succeeded. */
int64_t vm_evict(struct machine *m, int id, const uint64_t *ppns, size_t n)
{
    int64_t done = 0;
    int err = 0;
    machine_lock(m);
    struct vm *v = vm_get(m, id);
    if (!v)
        err = -ENOENT;
    for (size_t i = 0; v && i < n && !err; ) {
        uint64_t ents[EVICT_BATCH];
        int k = 0;
        for (; i < n && k < EVICT_BATCH; i++) {
            if (ppns[i] >= v->npages) {
                err = -EINVAL;
                break;
            }
            int state = PTE_STATE(v->pmap[ppns[i]]);
            if (state == PM_RESIDENT)
                ents[k++] = FT_MAKE(v->slot, ppns[i]);
            else if (state == PM_SHARED && (err = share_evict(m, v, ppns[i])) == 0)
                done++;
        }
        int r = k ? evict_pages(m, ents, k, 0) : 0;
        if (r < 0)
            err = r;
        else
            done += r;
    }
    pthread_mutex_unlock(&m->lock);
    return done ? done : err;
}

/* evicts up to n random resident pages of VM id; returns how many, or -errno. */
int64_t vm_evict_random(struct machine *m, int id, uint64_t n)
{
    machine_lock(m);
    struct vm *v = vm_get(m, id);
    uint64_t want = v && n < v->st.resident ? n : v ? v->st.resident : 0;
    uint64_t *pick = v ? malloc((want + 1) * sizeof *pick) : NULL;
    uint64_t k = pick ? resident_pick(m, v, want, pick) : 0;
    pthread_mutex_unlock(&m->lock);
    if (!v)
        return -ENOENT;
    if (!pick)
        return -ENOMEM;
    int64_t r = vm_evict(m, id, pick, k);
    free(pick);
    return r;
}

/* drops the mappings and home frames of n resident pages from (v, ppn) at once. */
static void balloon_run(struct machine *m, struct vm *v, uint64_t ppn, uint64_t n)
{
    madvise(v->guest + ppn * PG, n * PG, MADV_DONTNEED);
    frame_punch(m, v, ppn, n);
    for (uint64_t p = ppn; p < ppn + n; p++)
        frame_remove(m, PTE_VAL(v->pmap[p]));
}

/* frees what backs page (v, ppn), unless it is resident (the caller batches those), and
 * marks it ballooned; returns 0 or -errno. */
static int balloon_one(struct machine *m, struct vm *v, uint64_t ppn)
{
    pte_t e = v->pmap[ppn];
    if (PTE_STATE(e) == PM_SWAPPED) {
        swap_free(&m->swap, PTE_VAL(e), PTE_LEN(e));
        v->st.swapped--;
    } else if (PTE_STATE(e) == PM_SHARED) {
        int r = share_release(m, v, ppn);
        if (r)
            return r;
    } else if (PTE_STATE(e) == PM_LOW) {
        int r = lowmem_release(m, v, ppn);
        if (r)
            return r;
    }
    v->pmap[ppn] = PTE_MAKE(PM_BALLOONED, 0, 0);
    v->st.ballooned++;
    return 0;
}

/* balloons the listed pages of VM id: their frames, swap slots and shared references are
 * freed with nothing written anywhere (the guest gave them up); returns pages newly
 * ballooned, or -errno if a page could not be (-EMFILE: a shared page, no mapping to spare
 * to unshare it): every other listed page is ballooned all the same, and a page that failed
 * keeps its state and content, so the caller learns of the failure and loses nothing. */
int64_t vm_balloon(struct machine *m, int id, const uint64_t *ppns, size_t n)
{
    int64_t done = 0;
    int err, failed = 0;
    machine_lock(m);
    struct vm *v = vm_get_ppns(m, id, ppns, n, &err);
    for (size_t i = 0; v && !err && i < n; ) {
        uint64_t p = ppns[i];
        if (PTE_STATE(v->pmap[p]) != PM_RESIDENT) {
            if (PTE_STATE(v->pmap[p]) != PM_BALLOONED) {
                int r = balloon_one(m, v, p);
                if (r == 0)
                    done++;
                else if (!failed)
                    failed = r;
            }
            i++;
            continue;
        }
        size_t j = i + 1;       /* a run of consecutive resident PPNs: one madvise, one punch */
        while (j < n && ppns[j] == p + (j - i) && PTE_STATE(v->pmap[ppns[j]]) == PM_RESIDENT)
            j++;
        balloon_run(m, v, p, j - i);
        for (; i < j; i++) {
            v->pmap[ppns[i]] = PTE_MAKE(PM_BALLOONED, 0, 0);
            v->st.ballooned++;
            done++;
        }
    }
    pthread_mutex_unlock(&m->lock);
    return err ? err : failed ? failed : done;
}

/* returns the listed ballooned pages of VM id to the guest (PM_NONE: a zero page on next
 * touch); pages no longer ballooned are skipped. Returns pages changed, or -errno. */
int64_t vm_unballoon(struct machine *m, int id, const uint64_t *ppns, size_t n)
{
    int err;
    int64_t done = 0;
    machine_lock(m);
    struct vm *v = vm_get_ppns(m, id, ppns, n, &err);
    for (size_t i = 0; v && i < n; i++) {
        if (PTE_STATE(v->pmap[ppns[i]]) == PM_BALLOONED) {
            v->pmap[ppns[i]] = PTE_MAKE(PM_NONE, 0, 0);
            v->st.ballooned--;
            done++;
        }
    }
    pthread_mutex_unlock(&m->lock);
    return v ? done : err;
}
