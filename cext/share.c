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
 * Batches and races. A pass reads pages without touching their mappings: it hashes a chunk
 * of CHUNK pages through the machine view and looks each up, so a page that merges nothing
 * (the common case in a pass after the first) costs no system call. A page that matches is
 * queued; the queue is sorted into runs (one VM, consecutive PPNs onto consecutive shared
 * frames), and each run is frozen, verified and merged at once: one re-map and one
 * UFFDIO_CONTINUE per run, one punch of its home frames. Freezing is the re-map itself,
 * done in two steps: the run's mapping is replaced by the shared frames' PROT_NONE (which
 * also drops the guest's mappings of the home frames, flushing every TLB), then every home
 * frame is compared in full with its shared frame. A guest write that landed between the
 * hash and the freeze is seen there, and the run is mapped back onto its home frames (its
 * pages that still match are tried again, as a run of their own); a guest touching the run
 * meanwhile waits in the signal handler ("in transition", guard.c). The scanner holds the
 * machine lock from the hash to the merge, so the pager cannot change a queued page either.
 * Runs of zero pages are frozen by one write-protect instead (they are not re-mapped, see
 * above) and checked again under it.
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
 * hint of another domain is never validated (its page is not even read). Entries stay 16
 * bytes; a shared frame records
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


/* Page hash: eight 64-bit lanes, each stripe of 64 bytes adding every word to its neighbour
 * lane and the product of its two halves (xor a lane key) to its own, stirred every KiB and
 * folded with 128-bit multiplies at the end. Every step is a lane-wise add, xor, shift or
 * 32x32->64 multiply, so the compiler vectorizes the loop (built per instruction set below,
 * chosen at load time; every version gives the same hash): it runs at the speed memory
 * delivers the page. Equal hashes are never trusted; every match is compared in full. */
static const uint64_t HK[8] = {
    0x9E3779B185EBCA87ull, 0xC2B2AE3D27D4EB4Full, 0x165667B19E3779F9ull, 0x85EBCA77C2B2AE63ull,
    0x27D4EB2F165667C5ull, 0xFF51AFD7ED558CCDull, 0xC4CEB9FE1A85EC53ull, 0x94D049BB133111EBull,
};

/* returns a 64-bit hash of a page. */
__attribute__((target_clones("avx512f", "avx2", "default"), optimize("O3")))
static uint64_t page_hash(const char *page)
{
    const uint64_t *w = (const uint64_t *)page;
    uint64_t acc[8];
    for (int j = 0; j < 8; j++)
        acc[j] = HK[j];
    for (int kib = 0; kib < PG / 1024; kib++) {
        for (int s = 0; s < 16; s++) {
            const uint64_t *p = w + (kib * 16 + s) * 8;
            for (int j = 0; j < 8; j++) {
                uint64_t x = p[j] ^ (HK[j] + (uint64_t)s);
                acc[j ^ 1] += p[j];
                acc[j] += (x & 0xffffffffu) * (x >> 32);
            }
        }
        for (int j = 0; j < 8; j++) {
            acc[j] ^= acc[j] >> 47;
            acc[j] *= 0x9E3779B1u;
        }
    }
    uint64_t h = PG * HK[0];
    for (int j = 0; j < 8; j += 2) {
        __uint128_t p = (__uint128_t)(acc[j] ^ HK[j]) * (acc[j + 1] ^ HK[j + 1]);
        h += (uint64_t)p ^ (uint64_t)(p >> 64);
    }
    h ^= h >> 37;
    h *= 0x165667919E3779F9ull;
    return h ^ (h >> 32);
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

/* returns a zeroed table of n entries (all SE_EMPTY), or NULL. Each lookup lands on a
 * random entry, so a table of megabytes would cost a TLB miss on top of the cache miss:
 * it is mapped with transparent huge pages where the system allows them (madvise mode). */
static struct share_entry *tab_alloc(uint64_t n)
{
    size_t len = n * sizeof(struct share_entry);
    void *t = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (t == MAP_FAILED)
        return NULL;
    if (len >= (2u << 20))
        madvise(t, len, MADV_HUGEPAGE);
    return t;
}

static void tab_free(struct share_entry *t, uint64_t n)
{
    if (t)
        munmap(t, n * sizeof *t);
}

/* rehashes the live entries in place of the tombstones. */
static void tab_rebuild(struct share *sh)
{
    uint64_t n = sh->mask + 1;
    struct share_entry *old = sh->tab, *tab = tab_alloc(n);
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
    tab_free(old, n);
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

/* allocates a shared frame (one frame of the budget) holding a copy of page src, or zeros
 * if src is NULL; returns its index or -ENOMEM when no frame is free (the scanner then
 * skips: it never evicts to share), or -errno. The copy is one pwrite into the memfd: the
 * kernel allocates the page and fills it in one step, with no zeroing first and no fault
 * on the machine view. */
static int64_t sframe_alloc(struct machine *m, uint64_t h, const char *src)
{
    struct share *sh = &m->share;
    if (frames_free(m) == 0)
        return -ENOMEM;
    uint64_t s = sh->sf_next < m->nframes ? sh->sf_next++ : sh->sf_free[--sh->nfree];
    off_t off = (off_t)((sh->sh_base + s) * PG);
    errno = 0;
    if (src ? pwrite(m->memfd, src, PG, off) != PG : fallocate(m->memfd, 0, off, PG) != 0) {
        int err = errno ? -errno : -EIO;
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

/* returns -err for a mapping call that failed with errno err, or -EMFILE when it failed
 * for want of mappings (ENOMEM from mmap, mprotect or a split: the process is at
 * vm.max_map_count, whoever made the mappings); then merging stops until a recount finds
 * room again. */
static int maps_failed(struct machine *m, int err)
{
    if (err != ENOMEM)
        return -err;
    if (!m->share.stopped)
        m->st.merge_stops++;
    m->share.stopped = 1;
    m->share.since_count = 0;
    m->st.merge_stopped = 1;
    return -EMFILE;
}

/* maps n guest pages at a onto memfd pages from mpn, PROT_NONE, replacing what was there;
 * returns 0 or -errno (-EMFILE: the process has no mapping to spare). When it fails, the old
 * mapping is intact. */
static int map_none(struct machine *m, char *a, uint64_t n, uint64_t mpn)
{
    int r = 0;
    if (mmap(a, n * PG, PROT_NONE, MAP_SHARED | MAP_FIXED, m->memfd, (off_t)(mpn * PG)) == MAP_FAILED)
        r = maps_failed(m, errno);
    m->share.vma_est += 2;
    return r;
}

/* first half of a re-map: puts [a, a + n pages) "in transition" (a guest touching it waits
 * in the signal handler instead of reaching the kernel) and maps it onto memfd pages from
 * mpn, PROT_NONE. Returns 0, the range frozen until remap_open; or -errno, the transition
 * over and the old mapping intact. The caller has called guard_install() (once per scan or
 * fault, not per re-map). */
static int remap_freeze(struct machine *m, char *a, uint64_t n, uint64_t mpn)
{
    trans_begin(m->share.trans, a, n * PG);
    int r = map_none(m, a, n, mpn);
    if (r)
        trans_end(m->share.trans);
    return r;
}

/* second half: registers the frozen range with the pager, opens it and ends the
 * transition; returns 0 or -errno (the range is then mapped but unusable). */
static int remap_open(struct machine *m, char *a, uint64_t n)
{
    int r = 0;
    struct uffdio_register reg = { .range = { (uint64_t)a, n * PG }, .mode = REG_MODES };
    if (ioctl(m->uffd, UFFDIO_REGISTER, &reg) || mprotect(a, n * PG, PROT_READ | PROT_WRITE))
        r = maps_failed(m, errno);
    trans_end(m->share.trans);
    return r;
}

/* maps n guest pages at a onto memfd pages from mpn, registered with the pager; returns 0
 * or -errno (-EMFILE: the process has no mapping to spare), and sets *replaced when the old
 * mapping is gone (when the mmap fails, the old mapping is intact). */
static int remap(struct machine *m, char *a, uint64_t n, uint64_t mpn, int *replaced)
{
    int r = remap_freeze(m, a, n, mpn);
    *replaced = r == 0;
    return r ? r : remap_open(m, a, n);
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
    machine_lock(m);
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
    pte_t e = v->pmap[ppn];
    v->pmap[ppn] = PTE_MAKE(PM_RESIDENT, PTE_LEN(e) | PTE_PENDING, PTE_VAL(e));
}

static void clear_pending(struct vm *v, uint64_t ppn)
{
    v->pmap[ppn] &= ~PTE_FLAG(PTE_PENDING);
}

/* queues (v, ppn) to be merged onto shared frame s. */
static void queue_merge(struct scan *sc, struct vm *v, uint64_t ppn, uint64_t s)
{
    mark_pending(v, ppn);
    sc->mg[sc->n++] = (struct merge){ v, ppn, s };
}

/* gives up the queued merges run[0, n): the pages stay private. (A shared frame made for
 * them is freed by apply_merges, after every run: another run may still map it.) */
static void drop_merges(struct merge *run, int n)
{
    for (int i = 0; i < n; i++)
        clear_pending(run[i].v, run[i].ppn);
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
 * one write-protect freezes the run, each page is checked again, and one punch per stretch
 * still zero frees their home frames and drops their guest mappings (they stay write-
 * protected, like any sharer); a page written since is unprotected. Returns pages merged. */
static int apply_zero_run(struct machine *m, struct merge *run, int n)
{
    struct vm *v = run[0].v;
    int done = 0;
    if (wp_set(m, v->guest + run[0].ppn * PG, (uint64_t)n, 1)) {
        drop_merges(run, n);
        return 0;
    }
    for (int i = 0, j; i < n; i = j) {
        int zero = page_is_zero(frame_addr(m, v, run[i].ppn));
        for (j = i + 1; j < n && page_is_zero(frame_addr(m, v, run[j].ppn)) == zero; j++)
            ;
        if (zero && frame_punch(m, v, run[i].ppn, (uint64_t)(j - i)) == 0) {
            for (int k = i; k < j; k++)
                merge_commit(m, v, run[k].ppn, run[k].s, PTE_HOME);
            done += j - i;
        } else {
            wp_set(m, v->guest + run[i].ppn * PG, (uint64_t)(j - i), 0);
            drop_merges(run + i, j - i);
            m->st.merge_races += zero ? 0 : (uint64_t)(j - i);
        }
    }
    return done;
}

static int apply_run(struct machine *m, struct merge *run, int n);

/* returns how many of run[0, n) hold the content of their shared frame (all of it, compared
 * through the machine view), from the first. */
static int run_matches(struct machine *m, struct merge *run, int n)
{
    int i = 0;
    while (i < n && memcmp(frame_addr(m, run[i].v, run[i].ppn), sframe_addr(m, run[i].s), PG) == 0)
        i++;
    return i;
}

/* a frozen run did not verify (run[bad] was written since it was hashed): maps it back onto
 * its home frames, which hold its data, and merges again the stretches that still match.
 * The pages come back unmapped: the next touch maps them (a minor fault), which also keeps
 * a watched page's trap. Returns pages merged. */
static int apply_run_retry(struct machine *m, struct merge *run, int n, int bad)
{
    struct vm *v = run[0].v;
    char *a = v->guest + run[0].ppn * PG;
    int r = map_none(m, a, (uint64_t)n, v->base + run[0].ppn);
    if (r)
        trans_end(m->share.trans);
    if (r || remap_open(m, a, (uint64_t)n))
        v->stopped = v->st.stopped = EMFILE;
    int done = 0;
    clear_pending(v, run[bad].ppn);
    m->st.merge_races++;
    if (v->stopped) {
        drop_merges(run, bad);
        drop_merges(run + bad + 1, n - bad - 1);
        return 0;
    }
    if (bad > 0)
        done += apply_run(m, run, bad);
    if (bad + 1 < n)
        done += apply_run(m, run + bad + 1, n - bad - 1);
    return done;
}

/* re-maps a run of n queued merges (same VM, consecutive PPNs and shared frames) onto its
 * shared frames, verifies it frozen, and moves its bookkeeping from home frames to the
 * shared frames; returns pages merged. */
static int apply_run(struct machine *m, struct merge *run, int n)
{
    struct vm *v = run[0].v;
    char *a = v->guest + run[0].ppn * PG;
    if (!maps_room(m) || remap_freeze(m, a, (uint64_t)n, m->share.sh_base + run[0].s)) {
        /* the old mapping is as it was. Merging is only an optimisation: its failure stops
         * merging (maps_failed), never the VM */
        drop_merges(run, n);
        return 0;
    }
    int ok = run_matches(m, run, n);
    if (ok < n)
        return apply_run_retry(m, run, n, ok);
    if (remap_open(m, a, (uint64_t)n)) {
        /* past the mmap: map the home frames back (they hold the data), unless the VM's
         * memory cannot be mapped at all */
        int back;
        if (remap(m, a, (uint64_t)n, v->base + run[0].ppn, &back))
            v->stopped = v->st.stopped = EMFILE;
        drop_merges(run, n);
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
    for (int i = 0; i < sc->n; i++)         /* frames made for merges that all failed */
        sframe_free_unused(m, sc->mg[i].s);
    sc->n = 0;
    return done;
}

/* returns whether the hinted page (v2, p2) may merge with a candidate of key h in domain d:
 * it is of that domain, resident, not queued, and still has key h (it is hashed again: the
 * hint may be stale; the merge verifies it again, frozen). */
static int hint_valid(struct machine *m, uint64_t payload, uint64_t h, uint32_t d, struct vm **v2,
                      uint64_t *p2)
{
    *v2 = m->vms[(payload >> 40) & 0xff];
    *p2 = payload & ((1ull << 40) - 1);
    return *v2 && (*v2)->domain == d && *p2 < (*v2)->npages &&
           PTE_STATE((*v2)->pmap[*p2]) == PM_RESIDENT && !pending(*v2, *p2) &&
           domain_key(page_hash(frame_addr(m, *v2, *p2)), d) == h;
}

/* queues resident page (v, ppn), all zeros, onto the zero frame (made on first use). */
static void scan_zero(struct machine *m, struct scan *sc, struct vm *v, uint64_t ppn)
{
    struct share *sh = &m->share;
    if (sh->zero < 0) {
        int64_t z = sframe_alloc(m, 0, NULL);
        if (z < 0)
            return;
        sh->sf[z].zero = 1;
        sh->zero = z;
    }
    queue_merge(sc, v, ppn, (uint64_t)sh->zero);
}

/* looks up resident page (v, ppn) of table key h and queues what it can merge, or leaves
 * a hint. */
static void scan_lookup(struct machine *m, struct scan *sc, struct vm *v, uint64_t ppn, uint64_t h)
{
    struct share *sh = &m->share;
    const char *page = frame_addr(m, v, ppn);
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
        return;
    }
    int64_t s = sframe_alloc(m, h, page);
    if (s < 0)
        return;
    sh->sf[s].domain = v->domain;
    m->st.hints--;
    v2->st.hints--;
    e->val = SE_SHARED | ((uint64_t)s << 2);
    m->st.hint_hits++;
    queue_merge(sc, v2, p2, (uint64_t)s);
    queue_merge(sc, v, ppn, (uint64_t)s);
}

/* returns whether page (v, p) is a candidate: resident, not queued, room in the queue. */
static int candidate(struct scan *sc, struct vm *v, uint64_t p)
{
    return PTE_STATE(v->pmap[p]) == PM_RESIDENT && !pending(v, p) && sc->n + 2 <= MAX_MERGES;
}

/* scans pages [c, c + len) of v: zero pages are queued at once; other pages are hashed
 * and looked up one page later, their table slot prefetched meanwhile (a lookup lands on a
 * random slot of a table of megabytes: a cache miss that the next page's hash hides). */
static void scan_chunk(struct machine *m, struct scan *sc, struct vm *v, uint64_t c, uint64_t len)
{
    struct share *sh = &m->share;
    uint64_t prev = UINT64_MAX, prev_h = 0;
    for (uint64_t p = c; p <= c + len; p++) {
        uint64_t cur = UINT64_MAX, h = 0;
        if (p < c + len && candidate(sc, v, p)) {
            const char *page = frame_addr(m, v, p);
            v->st.scanned++;
            m->st.scanned++;
            if (page_is_zero(page)) {
                scan_zero(m, sc, v, p);
            } else {
                h = domain_key(page_hash(page), v->domain);
                __builtin_prefetch(&sh->tab[h & sh->mask]);
                cur = p;
            }
        }
        if (prev != UINT64_MAX && candidate(sc, v, prev))  /* may have been queued as a hint's page */
            scan_lookup(m, sc, v, prev, prev_h);
        prev = cur;
        prev_h = h;
    }
}

/* scans pages [first, first + n) of v in order; returns pages merged. */
static int64_t scan_range(struct machine *m, struct vm *v, uint64_t first, uint64_t n)
{
    struct scan *sc = m->share.scan;
    int64_t merged = 0;
    for (uint64_t c = first; c < first + n; c += CHUNK) {
        uint64_t len = first + n - c < CHUNK ? first + n - c : CHUNK;
        scan_chunk(m, sc, v, c, len);
        merged += apply_merges(m, sc);
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
    machine_lock(m);
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
    sh->tab = tab_alloc(cap);
    sh->mask = cap - 1;         /* share_fini frees the table by its size */
    sh->sf = calloc(m->nframes, sizeof *sh->sf);
    sh->sf_free = calloc(m->nframes, sizeof *sh->sf_free);
    sh->scan = calloc(1, sizeof *sh->scan);
    if (!sh->tab || !sh->sf || !sh->sf_free || !sh->scan)
        return -ENOMEM;
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
    tab_free(sh->tab, sh->mask + 1);
    free(sh->sf);
    free(sh->sf_free);
    free(sh->scan);
    if (sh->tab || sh->sf)
        trans_slot_put(sh->trans);
    memset(sh, 0, sizeof *sh);
}
