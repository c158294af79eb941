/* core.h: the machine's internal structures, shared by the C files of the core.
 *
 * Locking: one mutex (m->lock) guards everything below: pmaps, the frame table, the swap
 * map and the counters. The pagers, the reclaim thread and Python callers all take it, and
 * so does the SIGBUS handler of the in-thread fault path (sigfault.c), on whatever thread
 * touched guest memory: so no code may touch a guest address while holding it.
 * Nothing here ever touches a registered guest address: data moves through the machine
 * view (an unregistered mapping of the whole memfd) or through heap buffers. */
#ifndef UVM_CORE_H
#define UVM_CORE_H

#include <stdint.h>
#include <stddef.h>
#include <pthread.h>
#include "uvm.h"

#define PG UVM_PAGE_SIZE
#define MAX_VMS 256
#define MAX_PAGERS 64
#define EVICT_BATCH 32          /* victims per eviction round */
_Static_assert(UVM_READAHEAD_MAX <= EVICT_BATCH, "read-ahead reads into the cluster buffer");
#define FAULT_AROUND_MAX 64
#define EVICT_RETRIES 3         /* write errors tolerated per ensure_free */

/* A pmap entry (one per PPN, 8 bytes):
 *   bits 0..2   state (PM_*)
 *   bits 3..15  PM_SWAPPED: stored length in bytes (1..4096; 4096 = stored raw)
 *   bits 16..63 PM_RESIDENT: index in the frame table; PM_SWAPPED: first swap unit */
typedef uint64_t pte_t;
#define PTE_STATE(e) ((int)((e) & 7))
/* PM_SHARED: bits 16..63 hold the shared frame index */
#define PTE_LEN(e) ((uint32_t)(((e) >> 3) & 0x1fff))
#define PTE_VAL(e) ((e) >> 16)
#define PTE_MAKE(state, len, val) ((pte_t)(state) | ((pte_t)(len) << 3) | ((pte_t)(val) << 16))
#define PTE_FLAG(f) ((pte_t)(f) << 3)   /* a flag of the len field, in place (see below) */
/* flags in the len field of a PM_RESIDENT entry (it has no length) */
#define PTE_PENDING 1           /* a merge onto a shared frame is queued (share.c) */
#define PTE_WATCH 2             /* idle sampling: unmapped, waiting to see a touch (sample.c) */
/* flag in the len field of a PM_NONE or PM_ZERO entry */
#define PTE_FILLING 8           /* a zero fill is in flight outside the lock (pager.c) */

/* A frame table entry names the page that holds a resident frame: (vm slot << 40) | ppn. */
#define FT_MAKE(slot, ppn) (((uint64_t)(slot) << 40) | (ppn))
#define FT_SLOT(e) ((int)((e) >> 40))
#define FT_PPN(e) ((e) & ((1ull << 40) - 1))

struct vm {
    int slot;
    uint64_t npages;
    uint64_t base;          /* home MPN of PPN 0 */
    char *guest;            /* the registered guest mapping */
    int live;               /* its slot in guard.c's table of live guest ranges */
    pte_t *pmap;
    int stopped;            /* 0, or errno: faults of a stopped VM are poisoned */
    uint64_t min, target;   /* the memory scheduler's: evict from VMs above target first */
    uint32_t domain;        /* sharing domain: pages merge only with pages of the same one */
    uint64_t low;           /* pages re-mapped into low frames (PM_LOW) */
    struct uvm_vm_stats st;
};

struct swap {
    int fd;                 /* -1: none */
    char *path;             /* NULL when unlinked */
    uint64_t dev, ino;      /* the named file created, to remove only that one */
    uint64_t capacity;      /* nominal capacity in bytes */
    uint64_t units;         /* usable UVM_SWAP_UNIT units (capacity plus slack) */
    uint64_t *bitmap;       /* 1 bit per unit: 1 = in use */
    uint64_t next;          /* next-fit cursor */
    uint64_t used_units;
    uint64_t pages, bytes;  /* pages stored and their stored bytes */
    int debug;
};

/* A hash table entry, the paper's 16-byte frame: a 64-bit content hash and either a
 * shared frame (SE_SHARED | s << 2) or a hint (SE_HINT | (slot << 40 | ppn) << 2). */
struct share_entry {
    uint64_t hash;
    uint64_t val;
};
#define SE_EMPTY 0
#define SE_TOMB 1
#define SE_SHARED 2
#define SE_HINT 3
#define SE_KIND(v) ((int)((v) & 3))
#define SE_PAYLOAD(v) ((v) >> 2)

struct sframe {             /* one shared frame (MPN sh_base + index) */
    uint64_t hash;          /* its table key: content hash with its domain folded in */
    uint32_t refs;          /* PPNs mapping it; 0 = free */
    uint32_t zero : 1;      /* 1 for the zero page (shared by every domain: share.c) */
    uint32_t domain : 31;   /* the sharing domain of its sharers */
};

#define CHUNK 256               /* pages the scanner write-protects and scans at once */
#define MAX_MERGES (2 * CHUNK)

struct merge {
    struct vm *v;
    uint64_t ppn;
    uint64_t s;
};

struct scan {                   /* one chunk's pending merges */
    struct merge mg[MAX_MERGES];
    int n;
};

struct share {
    struct share_entry *tab;
    uint64_t mask;          /* table size - 1 */
    uint64_t used, tombs;   /* entries in use (shared + hints), tombstones */
    struct sframe *sf;      /* nframes shared frames at most */
    uint64_t sf_next;       /* lowest never-used index; freed ones go on the free stack */
    uint32_t *sf_free;
    uint64_t nfree;
    uint64_t sh_base;       /* MPN of shared frame 0 */
    int64_t zero;           /* index of the zero page's shared frame, or -1 */
    int stopped;            /* merging stopped at the mapping limit */
    long max_maps, vma_est; /* vm.max_map_count and our running estimate of VMAs */
    uint64_t since_count;   /* pages scanned since the last count */
    uint64_t counted_at, count_cost;    /* when maps were last counted, and what it took (ns) */
    int trans;              /* this machine's slot in the transition table */
    struct scan *scan;
};

struct machine {
    pthread_mutex_t lock;
    int memfd, uffd, stopfd;
    int user_mode;
    int fault_path;         /* UVM_FAULT_PAGER or UVM_FAULT_THREAD */
    void *lz4;              /* LZ4 compression state (nothing on the stack of a handler) */
    char *view;             /* machine view: the whole memfd, unregistered */
    uint64_t view_pages;
    uint64_t mpn_next;      /* MPN slices are handed out by bump allocation ... */
    struct { uint64_t base, npages; } holes[MAX_VMS + 1];   /* ... and reused from holes: */
    int nholes;             /* sorted by base, never adjacent (coalesced), none at mpn_next */

    uint64_t nframes;       /* M */
    uint64_t nresident;     /* private frames (home frames of resident pages) */
    uint64_t *frames;       /* frame table: nresident live entries */
    uint64_t nshared;       /* shared frames (content-based page sharing) */
    struct share share;
    struct { uint64_t base, n, nfree, used; uint32_t *free; } low;     /* lowmem.c */

    struct vm *vms[MAX_VMS];
    int nvms;
    struct swap swap;

    int fault_around;
    int readahead;          /* swap read-ahead block, pages (1 = off) */
    uint64_t rng;
    char *zbuf;             /* FAULT_AROUND_MAX zero pages */
    char *cbuf;             /* staging: CBUF_READ, CBUF_PAGE, then the eviction cluster */

    int npagers;
    pthread_t pagers[MAX_PAGERS];
    int pager_cpu[MAX_PAGERS];
    struct pager_ctx { struct machine *m; int i; int evfd; } pager_ctx[MAX_PAGERS];
    uint64_t listeners;     /* bit i: pager i polls the userfaultfd (see pager.c) */
    uint64_t listen_checked;    /* when a listener last looked where faults come from (ns) */
    uint64_t local_seen[MAX_PAGERS];    /* when a fault last came from pager i's CPU (ns) */
    int closing;
    int hold;               /* INJECT_PAGER_HOLD: the pagers wait ... */
    uint64_t hold_until;    /* ... until then (CLOCK_MONOTONIC ns) at the latest */
    pthread_cond_t hold_cv;
    int filling;            /* zero fills in flight outside the lock (pager.c) ... */
    uint64_t fill_frames;   /* ... and the frames they reserved */
    int fill_waiters;       /* faults waiting for a fill to end (fill_wait) */
    int quiet_wanted;       /* threads in machine_lock waiting for both to end */
    pthread_cond_t fill_cv; /* signalled when a fill ends */

    int reclaim;
    pthread_t reclaimer;
    pthread_cond_t reclaim_cv;
    uint64_t low_water, high_water;

    uint64_t swap_latency_ns;   /* per swap request, slept under the lock: one synchronous disk */
    int64_t inject_write, inject_read;
    int inject_write_err;   /* EIO or ENOSPC */
    struct uvm_machine_stats st;
};

#define CBUF_READ(m) ((m)->cbuf)
#define CBUF_PAGE(m) ((m)->cbuf + PG)
#define CBUF_CLUSTER(m) ((m)->cbuf + 2 * PG)
#define CBUF_PAGES (2 + EVICT_BATCH)

/* machine.c: m->lock for everything but serving a fault (waits out fills in flight) */
void machine_lock(struct machine *m);
/* pager.c: a fault waits for a zero fill in flight to end */
void fill_wait(struct machine *m);

/* returns frames the budget still allows (private and shared frames both count). */
static inline uint64_t frames_free(const struct machine *m)
{
    return m->nframes - m->nresident - m->nshared - m->low.used - m->fill_frames;
}

/* lowmem.c */
int lowmem_release(struct machine *m, struct vm *v, uint64_t ppn);
void lowmem_drop(struct machine *m, struct vm *v, uint64_t ppn);
int lowmem_check(struct machine *m);
void lowmem_fini(struct machine *m);

/* frame.c */
int frame_add(struct machine *m, struct vm *v, uint64_t ppn);
void frame_remove(struct machine *m, uint64_t idx);
uint64_t rng_next(uint64_t *s);
char *frame_addr(struct machine *m, struct vm *v, uint64_t ppn);
int frame_punch(struct machine *m, struct vm *v, uint64_t ppn, uint64_t n);

/* swap.c */
int swap_open(struct swap *s, const char *path, const char *dir, uint64_t bytes, int debug);
void swap_close(struct swap *s);
int64_t swap_alloc(struct swap *s, uint32_t units);
void swap_unalloc(struct swap *s, uint64_t unit, uint32_t n);
void swap_free(struct swap *s, uint64_t unit, uint32_t len);
int swap_write(struct machine *m, uint64_t unit, const char *buf, size_t len);
int swap_read(struct machine *m, uint64_t unit, uint32_t len, char *page);
int swap_read_span(struct machine *m, uint64_t unit, uint64_t n, char *buf);
int swap_expand(const char *src, uint32_t len, char *page);
int page_compress(struct machine *m, const char *page, char *out);
uint32_t swap_units(uint32_t len);

/* evict.c */
int evict_pages(struct machine *m, const uint64_t *ft_entries, int n, int background);
int ensure_free(struct machine *m, uint64_t need);
void reclaim_kick(struct machine *m);
void *reclaim_main(void *arg);

/* vm.c */
void vm_stats_locked(struct machine *m, int id, struct uvm_vm_stats *st);
struct vm *vm_get(struct machine *m, int id);
struct vm *vm_get_ppns(struct machine *m, int id, const uint64_t *ppns, size_t n, int *err);
uint64_t resident_pick(struct machine *m, struct vm *v, uint64_t n, uint64_t *out);

/* share.c */
int share_init(struct machine *m);
void share_fini(struct machine *m);
int share_cow(struct machine *m, struct vm *v, uint64_t ppn);
void share_drop(struct machine *m, struct vm *v, uint64_t ppn);
void share_forget(struct machine *m, struct vm *v);
uint64_t share_saved(struct machine *m, struct vm *v);
int share_evict(struct machine *m, struct vm *v, uint64_t ppn);
int share_release(struct machine *m, struct vm *v, uint64_t ppn);
int share_at_home(struct vm *v, uint64_t ppn);
int share_remap(struct machine *m, char *a, uint64_t n, uint64_t mpn, int *replaced);
void share_premap(struct machine *m, char *a, uint64_t n);
int share_fault_home(struct machine *m, struct vm *v, uint64_t ppn, uint64_t flags);
char *sframe_addr(struct machine *m, uint64_t s);

/* guard.c */
int trans_slot_get(void);
void trans_slot_put(int slot);
void trans_begin(int slot, char *addr, uint64_t len);
void trans_end(int slot);
int live_add(char *start, uint64_t len, struct machine *owner);
void live_remove(int slot);
void live_quiesce(int slot);
void guard_install(void);

/* machine.c */
int machine_held(struct machine *m);
uint64_t now_ns(void);

/* sigfault.c */
int fault_signal(struct machine *m, uint64_t addr, void *uctx);

/* pager.c */
struct vm *vm_at(struct machine *m, uint64_t addr);
int fault_serve(struct machine *m, struct vm *v, uint64_t addr, uint64_t flags);
int pager_start(struct machine *m, const int *cpus);
void pager_stop(struct machine *m);
int uffd_poison(struct machine *m, char *addr, uint64_t len);
int uffd_wake(struct machine *m, char *addr, uint64_t len);

#endif
