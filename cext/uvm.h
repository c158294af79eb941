/* uvm.h: the C core as Python sees it (this text is the cffi cdef, so plain declarations
 * only). Functions return 0 (or a count) on success and -errno on failure. Every function
 * takes the machine lock itself; none touches guest memory except the guarded workload
 * loops, which run on the caller's thread as a guest would. */

#define UVM_PAGE_SIZE 4096
#define UVM_SWAP_UNIT 512      /* swap space is kept in units of this many bytes */
#define UVM_READAHEAD_MAX 32   /* swap read-ahead block, pages: one cluster buffer */

/* pmap states of a guest page (PPN) */
#define PM_NONE 0       /* never touched: the next touch gets a zeroed frame */
#define PM_RESIDENT 1   /* in its home frame in machine memory */
#define PM_SWAPPED 2    /* compressed in the swap file */
#define PM_ZERO 3       /* known to be all zeros: costs neither a frame nor a slot */
#define PM_SHARED 4     /* mapped copy-on-write onto a shared frame */
#define PM_BALLOONED 5  /* given to the host by the guest's balloon: no frame, no slot */
#define PM_LOW 6        /* re-mapped into a low frame, which devices can reach (lowmem.c) */

/* page map bytes (vm_page_map): the pmap state in bits 0..2, and flags */
#define MAP_STATE_MASK 7
#define MAP_ZERO_SHARED 8   /* PM_SHARED onto the zero page */
#define MAP_WATCHED 16      /* PM_RESIDENT, watched by idle sampling (unmapped, not touched since) */
#define MAP_STOPPED 128     /* the VM was stopped: its pages can no longer be reached */

/* fault injection points (machine_inject) */
#define INJECT_SWAP_WRITE 1  /* the next n swap writes fail with EIO */
#define INJECT_SWAP_READ 2   /* the next n swap reads fail with EIO */
#define INJECT_PAGER_HOLD 3  /* n > 0: pagers stop serving faults for n ms (at most
                                HOLD_MAX_MS; then they resume by themselves); 0: resume */
#define HOLD_MAX_MS 60000
#define INJECT_SWAP_FULL 4   /* the next n swap writes fail with ENOSPC (device full) */

struct machine;

#define UVM_FAULT_PAGER 0
#define UVM_FAULT_THREAD 1

struct uvm_config {
    uint64_t frames;        /* machine memory M, in pages */
    uint64_t swap_bytes;    /* capacity of the swap file */
    const char *swap_path;  /* NULL: an unlinked (O_TMPFILE) file in swap_dir */
    const char *swap_dir;
    int fault_around;       /* pages a missing fault may fill at once; 1 = off */
    int readahead;          /* swap read-ahead: a swap-in may bring in the swapped pages of
                             * its aligned block of this many pages; 1 = off (the default) */
    int npagers;            /* pager threads */
    const int *cpus;        /* cpus[i] is pager i's CPU; NULL = not pinned */
    int reclaim;            /* 1: a background thread keeps a few frames free */
    int debug;              /* 1: fill freed swap space with a poison byte */
    uint64_t swap_latency_ns; /* charged per swap read or write request (a disk); 0: none */
    uint64_t seed;          /* seeds the core's random choices (victims, sampling, sharing
                             * scan); 0: from the clock and pid */
    int fault_path;         /* UVM_FAULT_PAGER: pager threads read userfaultfd events;
                             * UVM_FAULT_THREAD: the faulting thread serves its own fault in
                             * a SIGBUS handler (UFFD_FEATURE_SIGBUS; see sigfault.c) */
    int *swap_failed;       /* out, if not NULL: 1 when machine_open failed on the swap file
                               (its errno, e.g. EOPNOTSUPP, means something else there) */
};

struct uvm_vm_stats {
    uint64_t pages;
    uint64_t resident;
    uint64_t swapped;
    uint64_t zero;              /* never touched, or known zero */
    uint64_t faults_missing;
    uint64_t faults_minor;
    uint64_t faults_wp;
    uint64_t zero_fills;        /* frames handed out zeroed */
    uint64_t fault_around;      /* of those, neighbours filled ahead of a touch */
    uint64_t swapins;
    uint64_t swapins_ahead;     /* of those, neighbours read ahead of a touch */
    uint64_t swapouts;          /* pages written to the swap file */
    uint64_t swapouts_zero;     /* evicted pages found all-zero: no slot used */
    uint64_t sharing;           /* pages mapped onto a shared frame */
    uint64_t zero_shared;       /* of those, onto the zero page */
    uint64_t cow_breaks;        /* writes that broke copy-on-write */
    uint64_t scanned;           /* pages the sharing scanner looked at */
    uint64_t ballooned;         /* pages in the balloon (PM_BALLOONED) */
    uint64_t balloon_touched;   /* ballooned pages the guest touched anyway: given a zero page */
    uint64_t watch_touched;     /* watched pages (idle sampling) the guest touched again */
    uint64_t hints;             /* hint frames in the sharing table naming one of its pages */
    uint64_t shared_saved;      /* frames its shared pages save: each page on a frame with r
                                   sharers counts (r - 1) / r, summed and rounded down */
    int64_t stopped;            /* 0, or the errno that stopped the VM */
};

struct uvm_machine_stats {
    uint64_t frames_total;
    uint64_t frames_used;
    uint64_t frames_free;
    uint64_t swap_capacity;     /* bytes */
    uint64_t swap_pages;        /* pages holding a slot in the swap file */
    uint64_t swap_bytes;        /* compressed bytes those pages occupy */
    uint64_t swap_file_bytes;   /* bytes of the file in use (whole units) */
    uint64_t swapins;
    uint64_t swapouts;
    uint64_t swapouts_zero;
    uint64_t evict_fault_path;  /* evictions done by a pager to serve a fault */
    uint64_t evict_background;  /* evictions done by the reclaim thread */
    uint64_t swap_errors;
    uint64_t faults;
    uint64_t vms;
    uint64_t pmap_bytes;        /* host memory for bookkeeping, by structure */
    uint64_t frame_table_bytes;
    uint64_t swap_map_bytes;
    uint64_t share_table_bytes; /* hash table and shared frame array */
    uint64_t shared_frames;     /* frames holding shared content */
    uint64_t sharing;           /* pages mapped onto them */
    uint64_t zero_shared;       /* pages mapped onto the zero page */
    uint64_t saved;             /* sharing - shared_frames: frames sharing saves */
    uint64_t hints;             /* hint frames in the table */
    uint64_t hint_hits;         /* candidates that matched a hint and were merged */
    uint64_t shared_hits;       /* candidates that matched a shared frame */
    uint64_t hash_collisions;   /* equal hashes, different content */
    uint64_t merge_races;       /* queued merges given up: the page was written after it was hashed */
    uint64_t cow_breaks;
    uint64_t scanned;
    uint64_t merge_stopped;     /* 1 while merging is stopped at the mapping limit */
    uint64_t merge_stops;       /* times it stopped */
    uint64_t mpn_free;          /* pages of MPN space free for VMs' slices */
    uint64_t mpn_largest_free;  /* of those, the largest contiguous run: the biggest VM that fits */
    uint64_t mpn_holes;         /* free runs below the top slice (coalesced: never adjacent) */
    int uffd_user_mode;         /* 1: UFFD_USER_MODE_ONLY (unprivileged) */
};

int machine_open(const struct uvm_config *cfg, struct machine **out);
/* which userfaultfd a machine would get: 0 full (privileged), 1 user-mode only, or -errno. */
int machine_uffd_mode(void);
/* 1 if this build can serve faults in-thread (UVM_FAULT_THREAD needs the x86-64 page-fault
 * error code to tell a fault's kind), else 0. */
int fault_signal_supported(void);
void machine_close(struct machine *m);
void machine_stats(struct machine *m, struct uvm_machine_stats *st);
void machine_snapshot(struct machine *m, struct uvm_machine_stats *st, const int *slots,
                      struct uvm_vm_stats *vst, int n);
int machine_inject(struct machine *m, int what, int64_t n);
int machine_set_fault_around(struct machine *m, int pages);
int machine_set_readahead(struct machine *m, int pages);
uint64_t machine_memfd_pages(struct machine *m);
int machine_check(struct machine *m);

int vm_create(struct machine *m, uint64_t pages, int *id, void **base);
int vm_destroy(struct machine *m, int id);
void vm_stats(struct machine *m, int id, struct uvm_vm_stats *st);
int vm_page_state(struct machine *m, int id, uint64_t ppn);
/* The page map: one byte per PPN (pmap state | MAP_* flags) for the first n pages of VM id,
 * read at one instant; returns the VM's page count, or -ENOENT. */
int64_t vm_page_map(struct machine *m, int id, uint8_t *out, uint64_t n);
int64_t vm_evict(struct machine *m, int id, const uint64_t *ppns, size_t n);
int64_t vm_evict_random(struct machine *m, int id, uint64_t n);
/* The memory scheduler's min and target of a VM, in pages (target UINT64_MAX: none): when
 * the core must evict without being told whom (no free frame), it takes frames of VMs
 * above their target first, then of VMs above their min. */
int vm_set_limits(struct machine *m, int id, uint64_t min, uint64_t target);
/* Ballooning: vm_balloon frees whatever backs the listed pages (frame, swap slot or shared
 * reference; nothing is written to swap) and marks them PM_BALLOONED; vm_unballoon returns
 * ballooned pages to PM_NONE (zero on next touch). Both return pages changed, or -errno
 * (vm_balloon: -errno if any page failed; the others are ballooned all the same). */
int64_t vm_balloon(struct machine *m, int id, const uint64_t *ppns, size_t n);
int64_t vm_unballoon(struct machine *m, int id, const uint64_t *ppns, size_t n);

/* I/O page remapping (lowmem.c): machine_lowmem reserves n low frames (before any VM);
 * vm_lowmem_remap moves a resident page into one (1, or 0 if none is free; -EAGAIN if the
 * page is not resident); machine_lowmem_stats gives the pool's size and free frames. */
int machine_lowmem(struct machine *m, uint64_t n);
int vm_lowmem_remap(struct machine *m, int id, uint64_t ppn);
int machine_lowmem_stats(struct machine *m, uint64_t *total, uint64_t *nfree);

/* Sharing domains: a page merges only with pages of VMs of the same domain (0..2^31-1; 0 is
 * the default, every VM in one domain). Set before the scanner first looks at the VM:
 * returns 0, -EBUSY once any of its pages was scanned, -EINVAL, or -ENOENT. */
#define UVM_MAX_DOMAIN 2147483647
int vm_set_share_domain(struct machine *m, int id, uint32_t domain);

/* Content-based page sharing: scans pages of VM id (every VM if id < 0), from ppn `first`
 * for n pages in order (a full scan) or, with random != 0, n random resident pages. Returns
 * pages merged, or -errno. */
int64_t share_scan(struct machine *m, int id, uint64_t first, uint64_t n, int random);

/* Idle sampling: watching a resident page unmaps it (its frame stays) so that the guest's
 * next touch is observed. vm_watched tells, per page, whether it was touched since it was
 * watched; a page no longer resident and not touched since is "gone". vm_pick_resident
 * picks random resident pages (without watching them). */
#define WATCH_UNTOUCHED 0
#define WATCH_TOUCHED 1
#define WATCH_GONE 2
int64_t vm_watch(struct machine *m, int id, uint64_t *ppns, size_t n);
int64_t vm_pick_resident(struct machine *m, int id, uint64_t n, uint64_t *out);
int64_t vm_watch_random(struct machine *m, int id, uint64_t n, uint64_t *out);
int64_t vm_watched(struct machine *m, int id, const uint64_t *ppns, size_t n, uint8_t *status);

/* Guarded access: a SIGBUS/SIGSEGV (a stopped or destroyed VM) returns -EFAULT. */
int guest_read(const void *src, void *dst, size_t n);
int guest_write(void *dst, const void *src, size_t n);
int guest_zero_pages(void *base, const uint64_t *ppns, uint64_t n);

/* Workload loops: run on the calling thread, touching guest memory as a guest would.
 * pattern: 0 sequential, 1 random, 2 zipf. Return ops done, or -EFAULT. */
int64_t wl_fill(void *base, uint64_t first, uint64_t npages, uint64_t seed);
int64_t wl_verify(void *base, uint64_t first, uint64_t npages, uint64_t seed, uint64_t *bad_page);
int64_t wl_touch(void *base, uint64_t set_pages, int pattern, double write_fraction,
                 uint64_t ops, uint64_t *rng);
int64_t wl_touch_pages(void *base, const uint64_t *ppns, uint64_t n, double write_fraction,
                       uint64_t *rng);
/* Rewrites one word of each listed page with its own value (the content stays) and times
 * each write in ns: a guest's probe of copy-on-write. Returns n or -EFAULT. */
int64_t wl_time_writes(void *base, const uint64_t *ppns, uint64_t n, uint64_t *ns);
