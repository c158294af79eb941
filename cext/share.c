/* share.c: content-based page sharing (paper section 4).
 *
 * The scanner hashes candidate pages and looks the hash up in one global table of 16-byte
 * entries: shared frames (hash, frame) and hints (hash, VM, PPN). A match is never trusted
 * on the hash alone: a shared frame is compared in full; a hint is re-hashed (its page may
 * have changed since) and compared in full before both pages are merged into a new shared
 * frame. A page with no match leaves a hint and stays writable. All-zero pages, the most
 * common shared content, skip the table and go straight to the zero page's shared frame.
 *
 * Shared frames live at the top of the memfd's MPN space (frame s at MPN sh_base + s). A
 * sharer's PPN is re-mapped onto its shared frame (MAP_FIXED), registered, and mapped
 * write-protected; its home frame is punched. A write raises a WP fault and the pager breaks
 * copy-on-write (share_cow): copy into the home frame, map the home offset back. Re-mapping
 * goes through a "transition" (see guard.c) so no guest access slips past the pager.
 *
 * Zero pages are merged without re-mapping: one page frame cannot be mapped at consecutive
 * addresses of one mapping, so every zero page would need a re-map and a VMA of its own.
 * Instead a run of zero pages has its home frames punched (which also drops their guest
 * mappings) and is marked as sharing the zero frame from its home offset (PTE_HOME). Such a
 * page maps nothing, so any touch faults: a read re-maps it onto the zero frame then, write-
 * protected like any sharer; a write gets a private zero frame, which is copy-on-write with
 * nothing to copy (share_fault_home).
 *
 * Races: a candidate is write-protected before it is hashed, and the scanner holds the
 * machine lock until it has decided, so a guest write in between faults and waits; it then
 * finds the page either still private (and is let through) or shared (and breaks COW).
 *
 * Mappings: each alias costs up to two VMAs. Merging stops before vm.max_map_count comes
 * near (keeping headroom for COW breaks, which also re-map) and resumes when there is room.
 * Runs of consecutive PPNs merging into consecutive shared frames share one VMA.
 *
 * Sharing domains: a VM belongs to one domain (v->domain; 0 for all by default) and a page
 * merges only with pages of its own domain, which closes the page-sharing side channel
 * between domains (docs/sharing.md): a VM that times its writes learns which of its pages
 * are shared, so sharing across VMs tells it which pages other VMs hold. The domain is
 * folded into the table key (content hash ^ domain * an odd constant: a bijection, so equal
 * content in two domains never has equal keys) and compared again on every match, and a
 * hint of another domain is never validated (validating write-protects the hinted page for
 * a moment, which the other VM could feel). Entries stay 16 bytes; a shared frame records
 * its domain in its 16-byte record. The zero page is the exception: every domain shares
 * the one zero frame, because whether a zero page merges depends only on that page (the
 * zero frame is made on demand, even for one VM alone), so it tells a VM nothing it did
 * not know; what remains common to domains is capacity (table slots for hints, free
 * frames, the mapping limit), not content. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <sys/mman.h>
#include "core.h"
#include "uffd.h"

#define REG_MODES (UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR | UFFDIO_REGISTER_MODE_WP)
#define PTE_HOME 4              /* len-field flag of a PM_SHARED entry: not re-mapped, the page
                                   still maps its home offset, a hole (zero pages, see above) */


static uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static uint64_t lane(uint64_t acc, uint64_t w)
{
    return rotl(acc + w * 0xC2B2AE3D27D4EB4Full, 31) * 0x9E3779B185EBCA87ull;
}

/* returns a 64-bit hash of a page: four independent multiply-rotate lanes, then an avalanche. */
static uint64_t page_hash(const char *page)
{
    const uint64_t *w = (const uint64_t *)page;
    uint64_t a = 1, b = 2, c = 3, d = 4;
    for (int i = 0; i < PG / 8; i += 4) {
        a = lane(a, w[i]);
        b = lane(b, w[i + 1]);
        c = lane(c, w[i + 2]);
        d = lane(d, w[i + 3]);
    }
    uint64_t h = rotl(a, 1) + rotl(b, 7) + rotl(c, 12) + rotl(d, 18);
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDull;
    h ^= h >> 33;
    h *= 0xC4CEB9FE1A85EC53ull;
    return h ^ (h >> 33);
}

static int page_is_zero(const char *page)
{
    const uint64_t *w = (const uint64_t *)page;
    for (int i = 0; i < PG / 8; i++)
        if (w[i])
            return 0;
    return 1;
}

/* returns the table key of content hash h in sharing domain d (0 keeps h). */
static uint64_t domain_key(uint64_t h, uint32_t d)
{
    return h ^ ((uint64_t)d * 0x9E3779B97F4A7C15ull);
}

char *sframe_addr(struct machine *m, uint64_t s)
{
    return m->view + (m->share.sh_base + s) * PG;
}

/* -- the hash table ------------------------------------------------------------------- */

/* returns the live entry for hash h, or NULL. */
static struct share_entry *tab_find(struct share *sh, uint64_t h)
{
    for (uint64_t i = h & sh->mask;; i = (i + 1) & sh->mask) {
        struct share_entry *e = &sh->tab[i];
        if (e->val == SE_EMPTY)
            return NULL;
        if (e->val != SE_TOMB && e->hash == h)
            return e;
    }
}

/* rehashes the live entries in place of the tombstones. */
static void tab_rebuild(struct share *sh)
{
    uint64_t n = sh->mask + 1;
    struct share_entry *old = sh->tab, *tab = calloc(n, sizeof *tab);
    if (!tab)
        return;                 /* keep the old table; lookups stay correct */
    for (uint64_t i = 0; i < n; i++) {
        if (old[i].val == SE_EMPTY || old[i].val == SE_TOMB)
            continue;
        uint64_t j = old[i].hash & sh->mask;
        while (tab[j].val != SE_EMPTY)
            j = (j + 1) & sh->mask;
        tab[j] = old[i];
    }
    free(old);
    sh->tab = tab;
    sh->tombs = 0;
}

/* inserts (h, val) for a hash not in the table; returns 0, or -ENOSPC when a hint does not
 * fit (hints are optional; shared frames always fit, the table being sized for them). */
static int tab_insert(struct share *sh, uint64_t h, uint64_t val, uint64_t *hints)
{
    uint64_t cap = sh->mask + 1;
    if (sh->tombs > cap / 4)
        tab_rebuild(sh);
    if (SE_KIND(val) == SE_HINT && *hints >= cap / 4)
        return -ENOSPC;
    for (uint64_t i = h & sh->mask;; i = (i + 1) & sh->mask) {
        struct share_entry *e = &sh->tab[i];
        if (e->val == SE_EMPTY || e->val == SE_TOMB) {
            sh->tombs -= e->val == SE_TOMB;
            e->hash = h;
            e->val = val;
            sh->used++;
            *hints += SE_KIND(val) == SE_HINT;
            return 0;
        }
    }
}

/* removes a live entry. The table is rebuilt (allocating) at the next insert, which only
 * the scanner makes: removals also come from the fault path, which may be a signal handler
 * (sigfault.c), where nothing may allocate. Lookups stay bounded: removals only turn live
 * entries into tombstones, so no more slots are taken than at the last insert. */
static void tab_remove(struct share *sh, struct share_entry *e, uint64_t *hints)
{
    *hints -= SE_KIND(e->val) == SE_HINT;
    e->val = SE_TOMB;
    sh->used--;
    sh->tombs++;
}

/* -- shared frames -------------------------------------------------------------------- */

/* allocates a shared frame (one frame of the budget, zero-filled); returns its index or
 * -ENOMEM when no frame is free (the scanner then skips: it never evicts to share). */
static int64_t sframe_alloc(struct machine *m, uint64_t h)
{
    struct share *sh = &m->share;
    if (frames_free(m) == 0)
        return -ENOMEM;
    uint64_t s = sh->sf_next < m->nframes ? sh->sf_next++ : sh->sf_free[--sh->nfree];
    if (fallocate(m->memfd, 0, (off_t)((sh->sh_base + s) * PG), PG)) {
        int err = -errno;
        sh->sf_free[sh->nfree++] = (uint32_t)s;
        return err;
    }
    sh->sf[s].hash = h;
    sh->sf[s].refs = 0;
    sh->sf[s].zero = 0;
    sh->sf[s].domain = 0;
    m->nshared++;
    return (int64_t)s;
}

/* frees shared frame s if nothing maps it (any more, or yet: a merge that failed). */
static void sframe_free_unused(struct machine *m, uint64_t s)
{
    struct share *sh = &m->share;
    struct sframe *f = &sh->sf[s];
    if (f->refs || s >= sh->sf_next)
        return;
    if (f->zero) {
        sh->zero = -1;
    } else {
        struct share_entry *e = tab_find(sh, f->hash);
        if (e && SE_KIND(e->val) == SE_SHARED && SE_PAYLOAD(e->val) == s)
            tab_remove(sh, e, &m->st.hints);
    }
    fallocate(m->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)((sh->sh_base + s) * PG), PG);
    sh->sf_free[sh->nfree++] = (uint32_t)s;
    f->refs = UINT32_MAX;      /* free: never matches again until reallocated */
    m->nshared--;
}

/* drops one reference to shared frame s, freeing it with the last. */
static void sframe_put(struct machine *m, uint64_t s)
{
    struct sframe *f = &m->share.sf[s];
    m->st.sharing--;
    if (f->zero)
        m->st.zero_shared--;
    f->refs--;
    sframe_free_unused(m, s);
}

/* -- mappings ------------------------------------------------------------------------- */

/* returns the number of mappings of this process (lines of /proc/self/maps). */
static long count_maps(void)
{
    /* open and read, no stdio: the in-thread fault path (a signal handler) counts too */
    char buf[512];
    long n = 0;
    ssize_t got;
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    while ((got = read(fd, buf, sizeof buf)) > 0)
        for (ssize_t i = 0; i < got; i++)
            n += buf[i] == '\n';
    close(fd);
    return got < 0 ? -1 : n;
}

/* judges a fresh count (sh->vma_est): stops or resumes merging; returns whether a merge may
 * add mappings. */
static int maps_judge(struct machine *m)
{
    struct share *sh = &m->share;
    long headroom = sh->max_maps / 8 > 2048 ? sh->max_maps / 8 : 2048;
    int room = sh->vma_est >= 0 && sh->vma_est + 2 < sh->max_maps - headroom;
    if (!room && !sh->stopped)
        m->st.merge_stops++;
    sh->stopped = !room;
    sh->since_count = 0;
    m->st.merge_stopped = (uint64_t)sh->stopped;
    return room;
}

/* returns whether a merge may add mappings; stops or resumes merging at the limit. */
static int maps_room(struct machine *m)
{
    struct share *sh = &m->share;
    long headroom = sh->max_maps / 8 > 2048 ? sh->max_maps / 8 : 2048;
    if (sh->vma_est + 2 < sh->max_maps - headroom && !sh->stopped)
        return 1;
    if (sh->stopped && sh->since_count < 4096)
        return 0;
    sh->vma_est = count_maps();
    __atomic_store_n(&sh->counted_at, now_ns(), __ATOMIC_RELAXED);
    return maps_judge(m);
}

/* records that adding a mapping failed for want of mappings (ENOMEM from mmap, mprotect
 * or a split: the process is at vm.max_map_count, whoever made the mappings): merging stops
 * until a recount finds room again. */
static void maps_exhausted(struct machine *m)
{
    if (!m->share.stopped)
        m->st.merge_stops++;
    m->share.stopped = 1;
    m->share.since_count = 0;
    m->st.merge_stopped = 1;
}

/* maps n guest pages at a onto memfd pages from mpn, registered with the pager; returns 0
 * or -errno (-EMFILE: the process has no mapping to spare), and sets *replaced when the old
 * mapping is gone (the mmap succeeded; when it fails, the old mapping is intact). In the
 * window before registration the range is PROT_NONE and "in transition", so a guest
 * touching it waits in the signal handler instead of reaching the kernel. The caller has
 * called guard_install() (once per scan or fault, not per re-map). */
static int remap(struct machine *m, char *a, uint64_t n, uint64_t mpn, int *replaced)
{
    int r = 0;
    *replaced = 0;
    trans_begin(m->share.trans, a, n * PG);
    struct uffdio_register reg = { .range = { (uint64_t)a, n * PG }, .mode = REG_MODES };
    if (mmap(a, n * PG, PROT_NONE, MAP_SHARED | MAP_FIXED, m->memfd, (off_t)(mpn * PG)) == MAP_FAILED)
        r = -errno;
    else if ((*replaced = 1, ioctl(m->uffd, UFFDIO_REGISTER, &reg)) ||
             mprotect(a, n * PG, PROT_READ | PROT_WRITE))
        r = -errno;
    trans_end(m->share.trans);
    m->share.vma_est += 2;
    if (r == -ENOMEM) {
        maps_exhausted(m);
        r = -EMFILE;
    }
    return r;
}

/* remap for another subsystem (lowmem.c: a page into a low frame and back), with the
 * guard installed; returns 0 or -errno as remap does. */
int share_remap(struct machine *m, char *a, uint64_t n, uint64_t mpn, int *replaced)
{
    guard_install();
    return remap(m, a, n, mpn, replaced);
}

/* The application shares the mapping limit: it may add thousands of mappings of its own
 * after the machine was created, so the estimate is refreshed by a real count before a scan
 * pass. Counting reads /proc/self/maps, whose cost grows with the mappings (milliseconds at
 * tens of thousands), so passes count at most every MAPS_RECOUNT_NS, and no more often than
 * ten times the last count's cost: counting never takes more than a tenth of the scanner. */
#define MAPS_RECOUNT_NS 100000000ull

/* refreshes the estimate of this process's mappings if it is time; called without m->lock
 * (counting takes the kernel's mmap lock, and the pagers must not wait for it). */
static void maps_recount(struct machine *m)
{
    struct share *sh = &m->share;
    uint64_t t0 = now_ns();
    uint64_t every = 10 * __atomic_load_n(&sh->count_cost, __ATOMIC_RELAXED);
    if (t0 - __atomic_load_n(&sh->counted_at, __ATOMIC_RELAXED) <
        (every > MAPS_RECOUNT_NS ? every : MAPS_RECOUNT_NS))
        return;
    long n = count_maps();
    uint64_t t1 = now_ns();
    pthread_mutex_lock(&m->lock);
    __atomic_store_n(&sh->counted_at, t1, __ATOMIC_RELAXED);
    __atomic_store_n(&sh->count_cost, t1 - t0, __ATOMIC_RELAXED);
    sh->vma_est = n;
    maps_judge(m);
    pthread_mutex_unlock(&m->lock);
}

/* maps [a, a + n pages) from the page cache, write-protected if wp. */
static void premap(struct machine *m, char *a, uint64_t n, int wp)
{
    struct uffdio_continue c = { .range = { (uint64_t)a, n * PG },
                                 .mode = wp ? UFFDIO_CONTINUE_MODE_WP : 0 };
    ioctl(m->uffd, UFFDIO_CONTINUE, &c);
}

/* maps n re-mapped pages at a writable (their memfd pages exist) and wakes their waiters. */
void share_premap(struct machine *m, char *a, uint64_t n)
{
    premap(m, a, n, 0);
}

static int wp_set(struct machine *m, char *a, uint64_t n, int on)
{
    struct uffdio_writeprotect w = { .range = { (uint64_t)a, n * PG },
                                     .mode = on ? UFFDIO_WRITEPROTECT_MODE_WP : 0 };
    return ioctl(m->uffd, UFFDIO_WRITEPROTECT, &w) ? -errno : 0;
}

/* -- merging -------------------------------------------------------------------------- */

static int pending(struct vm *v, uint64_t ppn) { return PTE_LEN(v->pmap[ppn]) & PTE_PENDING; }

static void mark_pending(struct vm *v, uint64_t ppn)
{
    v->pmap[ppn] = PTE_MAKE(PM_RESIDENT, PTE_PENDING, PTE_VAL(v->pmap[ppn]));
}

/* queues (v, ppn) to be merged onto shared frame s. */
static void queue_merge(struct scan *sc, struct vm *v, uint64_t ppn, uint64_t s)
{
    mark_pending(v, ppn);
    sc->mg[sc->n++] = (struct merge){ v, ppn, s };
}

/* moves (v, ppn)'s bookkeeping from its home frame to shared frame s. */
static void merge_commit(struct machine *m, struct vm *v, uint64_t ppn, uint64_t s, int flags)
{
    struct sframe *f = &m->share.sf[s];
    frame_remove(m, PTE_VAL(v->pmap[ppn]));
    v->pmap[ppn] = PTE_MAKE(PM_SHARED, flags, s);
    f->refs++;
    v->st.sharing++;
    m->st.sharing++;
    if (f->zero) {
        v->st.zero_shared++;
        m->st.zero_shared++;
    }
}

/* merges a run of n queued zero pages (same VM, consecutive PPNs) without re-mapping them:
 * one punch frees their home frames and drops their guest mappings; returns pages merged. */
static int apply_zero_run(struct machine *m, struct merge *run, int n)
{
    struct vm *v = run[0].v;
    if (frame_punch(m, v, run[0].ppn, (uint64_t)n)) {
        for (int i = 0; i < n; i++)
            v->pmap[run[i].ppn] &= ~((pte_t)PTE_PENDING << 3);
        return 0;
    }
    for (int i = 0; i < n; i++)
        merge_commit(m, v, run[i].ppn, run[i].s, PTE_HOME);
    return n;
}

/* re-maps a run of n queued merges (same VM, consecutive PPNs and shared frames) and moves
 * their bookkeeping from home frames to the shared frames; returns pages merged. */
static int apply_run(struct machine *m, struct merge *run, int n)
{
    struct vm *v = run[0].v;
    char *a = v->guest + run[0].ppn * PG;
    int replaced = 0, back;
    int r = maps_room(m) ? remap(m, a, (uint64_t)n, m->share.sh_base + run[0].s, &replaced) : -EMFILE;
    if (r) {
        /* a failed mmap left the old mapping as it was; past it, map the home frames back
         * (they hold the data). Merging is only an optimisation: its failure stops merging
         * (maps_exhausted), never the VM, unless its memory cannot be mapped at all. */
        if (replaced && remap(m, a, (uint64_t)n, v->base + run[0].ppn, &back))
            v->stopped = v->st.stopped = EMFILE;
        for (int i = 0; i < n; i++) {
            v->pmap[run[i].ppn] &= ~((pte_t)PTE_PENDING << 3);
            sframe_free_unused(m, run[i].s);
        }
        return 0;
    }
    premap(m, a, (uint64_t)n, 1);
    frame_punch(m, v, run[0].ppn, (uint64_t)n);
    for (int i = 0; i < n; i++)
        merge_commit(m, v, run[i].ppn, run[i].s, 0);
    return n;
}

static int merge_cmp(const void *x, const void *y)
{
    const struct merge *a = x, *b = y;
    if (a->v != b->v)
        return a->v->slot - b->v->slot;
    return a->ppn < b->ppn ? -1 : a->ppn > b->ppn;
}

/* returns whether merge b continues the run that ends with merge a: the same VM, the next
 * PPN, and either the next shared frame or, for a run of zero pages, the zero frame again. */
static int run_continues(const struct share *sh, const struct merge *a, const struct merge *b)
{
    if (b->v != a->v || b->ppn != a->ppn + 1)
        return 0;
    int za = (int64_t)a->s == sh->zero, zb = (int64_t)b->s == sh->zero;
    return za == zb && (za || b->s == a->s + 1);
}

/* applies every queued merge, coalescing runs; returns pages merged. */
static int apply_merges(struct machine *m, struct scan *sc)
{
    int done = 0;
    qsort(sc->mg, (size_t)sc->n, sizeof sc->mg[0], merge_cmp);
    for (int i = 0; i < sc->n;) {
        int j = i + 1;
        while (j < sc->n && run_continues(&m->share, &sc->mg[j - 1], &sc->mg[j]))
            j++;
        if ((int64_t)sc->mg[i].s == m->share.zero)
            done += apply_zero_run(m, &sc->mg[i], j - i);
        else
            done += apply_run(m, &sc->mg[i], j - i);
        i = j;
    }
    sc->n = 0;
    return done;
}

/* validates the hinted page (v2, p2) for a candidate of key h in domain d: returns 1 if it
 * is of that domain, resident, write-protected now, and still has key h. */
static int hint_valid(struct machine *m, uint64_t payload, uint64_t h, uint32_t d, struct vm **v2,
                      uint64_t *p2)
{
    *v2 = m->vms[(payload >> 40) & 0xff];
    *p2 = payload & ((1ull << 40) - 1);
    if (!*v2 || (*v2)->domain != d || *p2 >= (*v2)->npages ||
        PTE_STATE((*v2)->pmap[*p2]) != PM_RESIDENT || pending(*v2, *p2))
        return 0;
    if (wp_set(m, (*v2)->guest + *p2 * PG, 1, 1))
        return 0;
    if (domain_key(page_hash(frame_addr(m, *v2, *p2)), d) == h)
        return 1;
    wp_set(m, (*v2)->guest + *p2 * PG, 1, 0);
    return 0;
}

/* looks at one resident, write-protected candidate and queues what it can merge. */
static void scan_one(struct machine *m, struct scan *sc, struct vm *v, uint64_t ppn)
{
    struct share *sh = &m->share;
    const char *page = frame_addr(m, v, ppn);
    v->st.scanned++;
    m->st.scanned++;
    if (page_is_zero(page)) {
        if (sh->zero < 0) {
            int64_t z = sframe_alloc(m, 0);
            if (z < 0)
                return;
            sh->sf[z].zero = 1;
            sh->zero = z;
        }
        queue_merge(sc, v, ppn, (uint64_t)sh->zero);
        return;
    }
    uint64_t h = domain_key(page_hash(page), v->domain);
    struct share_entry *e = tab_find(sh, h);
    if (!e) {
        if (tab_insert(sh, h, SE_HINT | (FT_MAKE(v->slot, ppn) << 2), &m->st.hints) == 0)
            v->st.hints++;
        return;
    }
    if (SE_KIND(e->val) == SE_SHARED) {
        uint64_t s = SE_PAYLOAD(e->val);
        if (sh->sf[s].domain == v->domain && memcmp(page, sframe_addr(m, s), PG) == 0) {
            m->st.shared_hits++;
            queue_merge(sc, v, ppn, s);
        } else {
            m->st.hash_collisions++;
        }
        return;
    }
    uint64_t payload = SE_PAYLOAD(e->val);
    if (payload == FT_MAKE(v->slot, ppn))
        return;                 /* our own hint: nothing changed */
    struct vm *v2;
    uint64_t p2;
    if (!hint_valid(m, payload, h, v->domain, &v2, &p2)) {
        if (v2)
            v2->st.hints--;
        v->st.hints++;
        e->val = SE_HINT | (FT_MAKE(v->slot, ppn) << 2);    /* stale: the hint is ours now */
        return;
    }
    if (memcmp(page, frame_addr(m, v2, p2), PG) != 0) {
        m->st.hash_collisions++;
        wp_set(m, v2->guest + p2 * PG, 1, 0);
        return;
    }
    int64_t s = sframe_alloc(m, h);
    if (s < 0) {
        wp_set(m, v2->guest + p2 * PG, 1, 0);
        return;
    }
    memcpy(sframe_addr(m, (uint64_t)s), page, PG);
    sh->sf[s].domain = v->domain;
    m->st.hints--;
    v2->st.hints--;
    e->val = SE_SHARED | ((uint64_t)s << 2);
    m->st.hint_hits++;
    queue_merge(sc, v2, p2, (uint64_t)s);
    queue_merge(sc, v, ppn, (uint64_t)s);
}

/* unprotects the pages of [first, first + n) of v that stayed private. */
static void unprotect_rest(struct machine *m, struct vm *v, uint64_t first, uint64_t n)
{
    uint64_t run = first;
    for (uint64_t p = first; p <= first + n; p++) {
        if (p < first + n && PTE_STATE(v->pmap[p]) != PM_SHARED)
            continue;
        if (p > run)
            wp_set(m, v->guest + run * PG, p - run, 0);
        run = p + 1;
    }
}

/* scans pages [first, first + n) of v in order; returns pages merged. */
static int64_t scan_range(struct machine *m, struct vm *v, uint64_t first, uint64_t n)
{
    struct scan *sc = m->share.scan;
    int64_t merged = 0;
    for (uint64_t c = first; c < first + n; c += CHUNK) {
        uint64_t len = first + n - c < CHUNK ? first + n - c : CHUNK;
        if (wp_set(m, v->guest + c * PG, len, 1))
            continue;
        for (uint64_t p = c; p < c + len; p++)
            if (PTE_STATE(v->pmap[p]) == PM_RESIDENT && !pending(v, p) && sc->n + 2 <= MAX_MERGES)
                scan_one(m, sc, v, p);
        merged += apply_merges(m, sc);
        unprotect_rest(m, v, c, len);
        m->share.since_count += len;
    }
    return merged;
}

/* scans one random resident page (of v, or of the whole machine if v is NULL); returns
 * pages merged. */
static int64_t scan_random(struct machine *m, struct vm *v)
{
    for (int tries = 0; tries < 8; tries++) {
        struct vm *w = v;
        uint64_t ppn;
        if (!w) {
            if (m->nresident == 0)
                return 0;
            uint64_t e = m->frames[rng_next(&m->rng) % m->nresident];
            w = m->vms[FT_SLOT(e)];
            ppn = FT_PPN(e);
        } else {
            ppn = rng_next(&m->rng) % w->npages;
        }
        if (PTE_STATE(w->pmap[ppn]) == PM_RESIDENT)
            return scan_range(m, w, ppn, 1);
    }
    return 0;
}

int64_t share_scan(struct machine *m, int id, uint64_t first, uint64_t n, int random)
{
    int64_t merged = 0;
    guard_install();            /* once per scan: every re-map below relies on it */
    maps_recount(m);
    pthread_mutex_lock(&m->lock);
    struct vm *v = vm_get(m, id);
    if (id >= 0 && !v) {
        pthread_mutex_unlock(&m->lock);
        return -ENOENT;
    }
    if (random) {
        for (uint64_t i = 0; i < n; i++)
            merged += scan_random(m, v);
    } else {
        for (int s = id >= 0 ? id : 0; s < (id >= 0 ? id + 1 : MAX_VMS); s++) {
            struct vm *w = m->vms[s];
            if (!w || first >= w->npages || w->stopped)
                continue;
            merged += scan_range(m, w, first, n < w->npages - first ? n : w->npages - first);
        }
    }
    pthread_mutex_unlock(&m->lock);
    return merged;
}

/* -- the pager's side ------------------------------------------------------------------ */

/* counts a copy-on-write break of a page of v that left shared frame s for a private frame. */
static void cow_broken(struct machine *m, struct vm *v, uint64_t s)
{
    if (m->share.sf[s].zero)
        v->st.zero_shared--;
    sframe_put(m, s);
    v->st.sharing--;
    v->st.cow_breaks++;
    m->st.cow_breaks++;
}

/* returns whether shared page (v, p) and (v, q = p + 1) are mapped by one alias run. */
static int alias_continues(struct vm *v, uint64_t p, uint64_t q)
{
    pte_t a = v->pmap[p], b = v->pmap[q];
    return PTE_STATE(a) == PM_SHARED && PTE_STATE(b) == PM_SHARED && !share_at_home(v, p) &&
           !share_at_home(v, q) && PTE_VAL(b) == PTE_VAL(a) + 1;
}

/* gives shared pages [lo, hi) of v (one alias run, or part of one) private copies in their
 * home frames, mapped writable; returns 0 or -errno (-EMFILE: no mapping to spare). */
static int cow_range(struct machine *m, struct vm *v, uint64_t lo, uint64_t hi)
{
    int r = ensure_free(m, hi - lo);
    if (r < 0)
        return r;
    for (uint64_t p = lo; p < hi; p++)
        memcpy(frame_addr(m, v, p), sframe_addr(m, PTE_VAL(v->pmap[p])), PG);
    char *a = v->guest + lo * PG;
    guard_install();
    int replaced;
    if ((r = remap(m, a, hi - lo, v->base + lo, &replaced))) {
        frame_punch(m, v, lo, hi - lo);
        return r;
    }
    for (uint64_t p = lo; p < hi; p++) {
        uint64_t s = PTE_VAL(v->pmap[p]);
        frame_add(m, v, p);
        cow_broken(m, v, s);
    }
    premap(m, a, hi - lo, 0);   /* maps the private copies and wakes the writer */
    return 0;
}

/* breaks copy-on-write for a write to shared page (v, ppn): the page gets its home frame
 * back with the shared content; returns 0 or -errno. */
int share_cow(struct machine *m, struct vm *v, uint64_t ppn)
{
    int r = cow_range(m, v, ppn, ppn + 1);
    if (r == -EMFILE) {
        /* Re-mapping one page of an alias run splits its mapping, and the process has no
         * mapping to spare (the application made them): break the whole run instead, whose
         * mapping is then replaced whole, which needs no new one. Consecutive shared PPNs
         * onto consecutive shared frames are one mapping (the kernel merges such neighbours,
         * and a home offset never continues a shared one). Costs a frame per page. */
        uint64_t lo = ppn, hi = ppn + 1;
        while (lo > 0 && alias_continues(v, lo - 1, lo))
            lo--;
        while (hi < v->npages && alias_continues(v, hi - 1, hi))
            hi++;
        if (hi - lo > 1)
            r = cow_range(m, v, lo, hi);
    }
    return r;
}

/* returns whether shared page (v, ppn) was merged without re-mapping (a zero page that still
 * maps its home offset, a hole). */
int share_at_home(struct vm *v, uint64_t ppn)
{
    return (PTE_LEN(v->pmap[ppn]) & PTE_HOME) != 0;
}

/* serves a fault on a zero page merged without re-mapping (share_at_home): a read re-maps it
 * onto the zero frame, write-protected; a write, or a read when no mapping can be added, gets
 * a private zero frame (copy-on-write with nothing to copy). Returns 0 or -errno. */
int share_fault_home(struct machine *m, struct vm *v, uint64_t ppn, uint64_t flags)
{
    uint64_t s = PTE_VAL(v->pmap[ppn]);
    char *a = v->guest + ppn * PG;
    int r, replaced;
    if (!(flags & (UFFD_PAGEFAULT_FLAG_WRITE | UFFD_PAGEFAULT_FLAG_WP)) && maps_room(m)) {
        guard_install();
        if ((r = remap(m, a, 1, m->share.sh_base + s, &replaced)) == 0) {
            v->pmap[ppn] = PTE_MAKE(PM_SHARED, 0, s);
            premap(m, a, 1, 1);     /* maps the zero frame and wakes the reader */
            return 0;
        }
        /* back to the home offset, for a private frame */
        if (replaced && remap(m, a, 1, v->base + ppn, &replaced))
            return r;
    }
    if ((r = ensure_free(m, 1)) < 0)
        return r;
    struct uffdio_zeropage z = { .range = { (uint64_t)a, PG } };
    if (ioctl(m->uffd, UFFDIO_ZEROPAGE, &z))    /* maps a fresh zero frame and wakes */
        return -errno;
    frame_add(m, v, ppn);
    cow_broken(m, v, s);
    return 0;
}

/* removes every hint naming a page of v (the VM is being destroyed), so that each hint
 * in the table counts for a live VM (st.hints, esxtop's COW hint). */
void share_forget(struct machine *m, struct vm *v)
{
    struct share *sh = &m->share;
    for (uint64_t i = 0; sh->tab && i <= sh->mask; i++) {
        struct share_entry *e = &sh->tab[i];
        if (SE_KIND(e->val) != SE_HINT ||
            FT_SLOT(SE_PAYLOAD(e->val)) != v->slot)
            continue;
        e->val = SE_TOMB;
        sh->used--;
        sh->tombs++;
        m->st.hints--;
    }
    v->st.hints = 0;
    if (sh->tab && sh->tombs > (sh->mask + 1) / 4)
        tab_rebuild(sh);
}

/* returns the frames v's shared pages save: a page on a shared frame with r sharers saves
 * (r - 1) / r of a frame (summed in 1/65536ths, rounded down). Walks the pmap only as far
 * as its last shared page; caller holds m->lock. */
uint64_t share_saved(struct machine *m, struct vm *v)
{
    uint64_t left = v->st.sharing, saved = 0;
    for (uint64_t p = 0; left && p < v->npages; p++) {
        pte_t e = v->pmap[p];
        if (PTE_STATE(e) != PM_SHARED)
            continue;
        uint64_t r = m->share.sf[PTE_VAL(e)].refs;
        saved += r ? ((r - 1) << 16) / r : 0;
        left--;
    }
    return saved >> 16;
}

/* drops (v, ppn)'s reference to its shared frame (the VM is being destroyed). */
void share_drop(struct machine *m, struct vm *v, uint64_t ppn)
{
    sframe_put(m, PTE_VAL(v->pmap[ppn]));
}

/* maps shared page (v, ppn) back onto its home frame (a hole) and drops its reference to the
 * shared frame; the caller sets the page's new pmap state. Returns 0 or -errno. */
int share_release(struct machine *m, struct vm *v, uint64_t ppn)
{
    uint64_t s = PTE_VAL(v->pmap[ppn]);
    if (!share_at_home(v, ppn)) {
        guard_install();
        int replaced, r = remap(m, v->guest + ppn * PG, 1, v->base + ppn, &replaced);
        if (r)
            return r;
    }
    if (m->share.sf[s].zero)
        v->st.zero_shared--;
    sframe_put(m, s);
    v->st.sharing--;
    return 0;
}

/* pages shared page (v, ppn) out as a private copy; it comes back private. Returns 0 or -errno. */
int share_evict(struct machine *m, struct vm *v, uint64_t ppn)
{
    uint64_t s = PTE_VAL(v->pmap[ppn]);
    char *out = CBUF_CLUSTER(m);
    int len = page_compress(m, sframe_addr(m, s), out);
    int64_t u = len ? swap_alloc(&m->swap, swap_units((uint32_t)len)) : 0;
    if (u < 0)
        return (int)u;
    int r = len ? swap_write(m, (uint64_t)u, out, (size_t)len) : 0;
    if (r == 0)
        r = share_release(m, v, ppn);
    if (r) {
        if (len)
            swap_unalloc(&m->swap, (uint64_t)u, swap_units((uint32_t)len));
        return r;
    }
    if (len) {
        v->pmap[ppn] = PTE_MAKE(PM_SWAPPED, len, (uint64_t)u);
        v->st.swapped++;
        v->st.swapouts++;
        m->st.swapouts++;
        m->swap.pages++;
        m->swap.bytes += (uint64_t)len;
    } else {
        v->pmap[ppn] = PTE_MAKE(PM_ZERO, 0, 0);
        v->st.swapouts_zero++;
        m->st.swapouts_zero++;
    }
    return 0;
}

/* sets up sharing for machine m; returns 0 or -errno. */
int share_init(struct machine *m)
{
    struct share *sh = &m->share;
    uint64_t cap = 16;
    while (cap < 2 * m->nframes)
        cap <<= 1;
    sh->tab = calloc(cap, sizeof *sh->tab);
    sh->sf = calloc(m->nframes, sizeof *sh->sf);
    sh->sf_free = calloc(m->nframes, sizeof *sh->sf_free);
    sh->scan = calloc(1, sizeof *sh->scan);
    if (!sh->tab || !sh->sf || !sh->sf_free || !sh->scan)
        return -ENOMEM;
    sh->mask = cap - 1;
    sh->sh_base = m->view_pages - m->nframes;
    sh->zero = -1;
    sh->trans = trans_slot_get();
    if (sh->trans < 0)
        return sh->trans;
    FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
    if (!f || fscanf(f, "%ld", &sh->max_maps) != 1)
        sh->max_maps = 65530;
    if (f)
        fclose(f);
    /* UVM_MAX_MAP_COUNT pretends the limit is lower, to rehearse it without lowering the
     * system-wide sysctl (tests and labs) */
    const char *pretend = getenv("UVM_MAX_MAP_COUNT");
    if (pretend && atol(pretend) > 0 && atol(pretend) < sh->max_maps)
        sh->max_maps = atol(pretend);
    sh->vma_est = count_maps();
    sh->counted_at = now_ns();
    return 0;
}

/* frees sharing's structures. */
void share_fini(struct machine *m)
{
    struct share *sh = &m->share;
    free(sh->tab);
    free(sh->sf);
    free(sh->sf_free);
    free(sh->scan);
    if (sh->tab || sh->sf)
        trans_slot_put(sh->trans);
    memset(sh, 0, sizeof *sh);
}
