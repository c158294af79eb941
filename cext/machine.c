/* machine.c: machine memory (one memfd and its unregistered machine view), the
 * userfaultfd, and the machine's life cycle. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include "core.h"
#include "uffd.h"
#include "lz4.h"

#define VIEW_BYTES (1ull << 40)     /* MPN space: 1 TiB of sparse memfd */

/* opens a userfaultfd: /dev/userfaultfd, then the syscall, then user-mode-only (which any
 * user may have); returns the fd or -errno, and sets *user_mode. */
static int uffd_open(int *user_mode)
{
    int flags = O_CLOEXEC | O_NONBLOCK;
    *user_mode = 0;
    /* UVM_UFFD_USER_MODE=1 takes the unprivileged path even when more is allowed, so that
     * it can be tested (and shown in a lab) on a machine where uvm runs as root */
    const char *force = getenv("UVM_UFFD_USER_MODE");
    if (force && strcmp(force, "1") == 0)
        goto user_mode;
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev >= 0) {
        int fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
        close(dev);
        if (fd >= 0)
            return fd;
    }
    int fd = (int)syscall(SYS_userfaultfd, flags);
    if (fd >= 0)
        return fd;
user_mode:
    fd = (int)syscall(SYS_userfaultfd, flags | UFFD_USER_MODE_ONLY);
    if (fd >= 0) {
        *user_mode = 1;
        return fd;
    }
    return -errno;
}

/* which userfaultfd machine_open would get: 0 full, 1 user-mode only, or -errno. */
int machine_uffd_mode(void)
{
    int user_mode;
    int fd = uffd_open(&user_mode);
    if (fd < 0)
        return fd;
    close(fd);
    return user_mode;
}

/* a nonzero generator state from a seed (splitmix64's finalizer, so that nearby seeds
 * give unrelated streams); 0 seeds from the clock and pid. */
static uint64_t rng_seed(uint64_t seed)
{
    uint64_t z = seed ? seed : (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid();
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return z ? z : 1;
}

/* negotiates the features uvm needs (SIGBUS for the in-thread fault path); returns 0, or
 * -ENOTSUP if the kernel lacks one. */
static int uffd_setup(int fd, int fault_path)
{
    uint64_t need = UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_MINOR_SHMEM |
                    UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_POISON;
    if (fault_path == UVM_FAULT_THREAD)
        need |= UFFD_FEATURE_SIGBUS;
    /* the faulting thread's id lets the pagers follow it to its CPU (pager.c) */
    struct uffdio_api api = { .api = UFFD_API, .features = need | UFFD_FEATURE_THREAD_ID };
    if (ioctl(fd, UFFDIO_API, &api))
        return errno == EINVAL ? -ENOTSUP : -errno;
    return (api.features & need) == need ? 0 : -ENOTSUP;
}

/* creates a machine with cfg->frames frames of memory; returns 0 or -errno. */
int machine_open(const struct uvm_config *cfg, struct machine **out)
{
    int r = -ENOMEM;
    if (cfg->fault_path != UVM_FAULT_PAGER && cfg->fault_path != UVM_FAULT_THREAD)
        return -EINVAL;
    if (cfg->fault_path == UVM_FAULT_THREAD && !fault_signal_supported())
        return -ENOTSUP;
    struct machine *m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    /* error-checking: a thread that faults on guest memory while holding the lock would
     * deadlock in the in-thread fault handler; with this it is told (sigfault.c) */
    pthread_mutexattr_t check;
    pthread_mutexattr_init(&check);
    pthread_mutexattr_settype(&check, PTHREAD_MUTEX_ERRORCHECK);
    pthread_mutex_init(&m->lock, &check);
    pthread_mutexattr_destroy(&check);
    pthread_condattr_t mono;
    pthread_condattr_init(&mono);
    pthread_condattr_setclock(&mono, CLOCK_MONOTONIC);     /* hold_until is monotonic */
    pthread_cond_init(&m->hold_cv, &mono);
    pthread_condattr_destroy(&mono);
    pthread_cond_init(&m->reclaim_cv, NULL);
    pthread_cond_init(&m->fill_cv, NULL);
    m->memfd = m->uffd = m->stopfd = m->swap.fd = -1;
    m->view = MAP_FAILED;
    m->nframes = cfg->frames;
    m->fault_around = cfg->fault_around < 1 ? 1 : cfg->fault_around;
    m->readahead = cfg->readahead < 1 ? 1 : (cfg->readahead > UVM_READAHEAD_MAX ? UVM_READAHEAD_MAX
                                                                             : cfg->readahead);
    m->fault_path = cfg->fault_path;
    m->swap_latency_ns = cfg->swap_latency_ns;
    m->rng = rng_seed(cfg->seed);
    m->low_water = m->nframes / 128 < 2 ? 2 : (m->nframes / 128 > 512 ? 512 : m->nframes / 128);
    m->high_water = 2 * m->low_water;
    m->frames = calloc(m->nframes, sizeof *m->frames);
    m->zbuf = aligned_alloc(PG, (size_t)FAULT_AROUND_MAX * PG);
    m->cbuf = aligned_alloc(PG, (size_t)CBUF_PAGES * PG);
    m->lz4 = calloc(1, (size_t)LZ4_sizeofState());
    if (!m->frames || !m->zbuf || !m->cbuf || !m->lz4)
        goto fail;
    memset(m->zbuf, 0, (size_t)FAULT_AROUND_MAX * PG);

    if ((r = swap_open(&m->swap, cfg->swap_path, cfg->swap_dir, cfg->swap_bytes, cfg->debug))) {
        if (cfg->swap_failed)
            *cfg->swap_failed = 1;
        goto fail;
    }
    r = -errno;
    m->memfd = memfd_create("uvm-machine", MFD_CLOEXEC);
    if (m->memfd < 0 || ftruncate(m->memfd, (off_t)VIEW_BYTES))
        goto fail;
    m->view_pages = VIEW_BYTES / PG;
    m->view = mmap(NULL, VIEW_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE,
                   m->memfd, 0);
    if (m->view == MAP_FAILED)
        goto fail;
    m->stopfd = eventfd(0, EFD_CLOEXEC);
    if (m->stopfd < 0)
        goto fail;
    if ((m->uffd = uffd_open(&m->user_mode)) < 0) {
        r = m->uffd;
        goto fail;
    }
    if ((r = uffd_setup(m->uffd, m->fault_path)))
        goto fail;
    if ((r = share_init(m)))
        goto fail;
    guard_install();            /* for transitions and the in-thread fault path (guard.c) */

    /* with UFFD_FEATURE_SIGBUS the kernel queues no fault event: no pagers to read them */
    m->npagers = m->fault_path == UVM_FAULT_THREAD ? 0 :
                 cfg->npagers < 1 ? 1 : (cfg->npagers > MAX_PAGERS ? MAX_PAGERS : cfg->npagers);
    if ((r = pager_start(m, cfg->cpus)))
        goto fail;
    if (cfg->reclaim) {
        if ((r = -pthread_create(&m->reclaimer, NULL, reclaim_main, m)))
            goto fail;
        pthread_setname_np(m->reclaimer, "uvm-reclaim");
        m->reclaim = 1;
    }
    *out = m;
    return 0;
fail:
    machine_close(m);
    return r;
}

/* waits (briefly, bounded) until no fault event is pending, so pagers have answered every
 * guest thread that was blocked when the machine began closing. */
static void drain_faults(struct machine *m)
{
    for (int quiet = 0, i = 0; quiet < 3 && i < 200; i++) {
        struct pollfd p = { m->uffd, POLLIN, 0 };
        quiet = poll(&p, 1, 0) == 0 ? quiet + 1 : 0;
        usleep(1000);
    }
}

/* takes m->lock for anything but serving a fault: waits until no zero fill is in flight
 * outside the lock (pager.c, serve_zero) and no fault waits for one (it holds a VM), so
 * that every page it sees is settled and every VM may go; faults start no new fill outside
 * the lock while a thread waits here, so the wait is short. */
void machine_lock(struct machine *m)
{
    pthread_mutex_lock(&m->lock);
    if (m->filling || m->fill_waiters) {
        m->quiet_wanted++;
        while (m->filling || m->fill_waiters)
            pthread_cond_wait(&m->fill_cv, &m->lock);
        m->quiet_wanted--;
    }
}

/* stops every thread, answers blocked guests with an error, and frees everything. Safe on
 * a partly built machine. */
void machine_close(struct machine *m)
{
    if (!m)
        return;
    machine_lock(m);
    m->closing = 1;
    m->hold = 0;
    for (int i = 0; i < MAX_VMS; i++)
        if (m->vms[i] && !m->vms[i]->stopped)
            m->vms[i]->stopped = m->vms[i]->st.stopped = ESHUTDOWN;
    pthread_cond_broadcast(&m->hold_cv);
    pthread_cond_broadcast(&m->reclaim_cv);
    pthread_mutex_unlock(&m->lock);
    if (m->uffd >= 0 && m->npagers)
        drain_faults(m);
    for (int i = 0; i < MAX_VMS; i++)
        if (m->vms[i])
            vm_destroy(m, i);
    pager_stop(m);
    if (m->reclaim)
        pthread_join(m->reclaimer, NULL);
    if (m->uffd >= 0)
        close(m->uffd);
    if (m->stopfd >= 0)
        close(m->stopfd);
    if (m->view != MAP_FAILED)
        munmap(m->view, VIEW_BYTES);
    if (m->memfd >= 0)
        close(m->memfd);
    swap_close(&m->swap);
    share_fini(m);
    lowmem_fini(m);
    free(m->frames);
    free(m->zbuf);
    free(m->cbuf);
    free(m->lz4);
    pthread_cond_destroy(&m->hold_cv);
    pthread_cond_destroy(&m->reclaim_cv);
    pthread_cond_destroy(&m->fill_cv);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

/* fills st from the machine's counters; the caller holds m->lock. */
static void stats_locked(struct machine *m, struct uvm_machine_stats *st)
{
    *st = m->st;
    st->frames_total = m->nframes;
    st->frames_used = m->nresident + m->nshared + m->low.used;
    st->frames_free = frames_free(m);
    st->swap_capacity = m->swap.capacity;
    st->swap_pages = m->swap.pages;
    st->swap_bytes = m->swap.bytes;
    st->swap_file_bytes = m->swap.used_units * UVM_SWAP_UNIT;
    st->vms = 0;
    st->pmap_bytes = 0;
    for (int i = 0; i < MAX_VMS; i++) {
        if (m->vms[i]) {
            st->vms++;
            st->pmap_bytes += m->vms[i]->npages * sizeof(pte_t);
        }
    }
    st->frame_table_bytes = m->nframes * sizeof *m->frames;
    st->swap_map_bytes = ((m->swap.units + 63) / 64 + 1) * 8;
    st->uffd_user_mode = m->user_mode;
    st->mpn_free = st->mpn_largest_free = m->share.sh_base - m->mpn_next;
    st->mpn_holes = (uint64_t)m->nholes;
    for (int i = 0; i < m->nholes; i++) {
        st->mpn_free += m->holes[i].npages;
        if (m->holes[i].npages > st->mpn_largest_free)
            st->mpn_largest_free = m->holes[i].npages;
    }
    st->shared_frames = m->nshared;
    st->saved = m->st.sharing - m->nshared;
    st->share_table_bytes = (m->share.mask + 1) * sizeof(struct share_entry) +
                            m->nframes * (sizeof(struct sframe) + sizeof(uint32_t));
}

/* copies the machine's counters into st. */
void machine_stats(struct machine *m, struct uvm_machine_stats *st)
{
    machine_lock(m);
    stats_locked(m, st);
    pthread_mutex_unlock(&m->lock);
}

/* copies the machine's counters and those of the n VMs in slots[] at one instant, so the
 * numbers of one snapshot add up. */
void machine_snapshot(struct machine *m, struct uvm_machine_stats *st, const int *slots,
                      struct uvm_vm_stats *vst, int n)
{
    machine_lock(m);
    stats_locked(m, st);
    for (int i = 0; i < n; i++)
        vm_stats_locked(m, slots[i], &vst[i]);
    pthread_mutex_unlock(&m->lock);
}

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* returns whether the pagers are held (INJECT_PAGER_HOLD), ending a hold whose time is up.
 * A hold always ends by itself: a guest thread that faults while holding the GIL would
 * otherwise wedge the whole process, since no Python thread could run to resume the pagers.
 * Caller holds m->lock. */
int machine_held(struct machine *m)
{
    if (m->hold && now_ns() >= m->hold_until)
        m->hold = 0;
    return m->hold;
}

/* arms a fault injection point (see INJECT_* in uvm.h); returns 0 or -EINVAL. */
int machine_inject(struct machine *m, int what, int64_t n)
{
    int r = 0;
    machine_lock(m);
    if (what == INJECT_SWAP_WRITE || what == INJECT_SWAP_FULL) {
        m->inject_write = n;
        m->inject_write_err = what == INJECT_SWAP_FULL ? ENOSPC : EIO;
    }
    else if (what == INJECT_SWAP_READ)
        m->inject_read = n;
    else if (what == INJECT_PAGER_HOLD && n >= 0 && n <= HOLD_MAX_MS) {
        m->hold = n != 0;
        m->hold_until = now_ns() + (uint64_t)n * 1000000u;
        pthread_cond_broadcast(&m->hold_cv);
    } else
        r = -EINVAL;
    pthread_mutex_unlock(&m->lock);
    return r;
}

/* sets how many pages one missing fault may fill (1 = no fault-around); returns 0 or -EINVAL. */
int machine_set_fault_around(struct machine *m, int pages)
{
    if (pages < 1 || pages > FAULT_AROUND_MAX)
        return -EINVAL;
    machine_lock(m);
    m->fault_around = pages;
    pthread_mutex_unlock(&m->lock);
    return 0;
}

/* sets the swap read-ahead block (1 = off); returns 0 or -EINVAL. */
int machine_set_readahead(struct machine *m, int pages)
{
    if (pages < 1 || pages > UVM_READAHEAD_MAX)
        return -EINVAL;
    machine_lock(m);
    m->readahead = pages;
    pthread_mutex_unlock(&m->lock);
    return 0;
}

/* returns the pages the memfd really holds, as the kernel counts them (st_blocks). */
uint64_t machine_memfd_pages(struct machine *m)
{
    struct stat st;
    if (fstat(m->memfd, &st))
        return 0;
    return (uint64_t)st.st_blocks * 512 / PG;
}
