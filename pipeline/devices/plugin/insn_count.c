/*
 * insn_count: a QEMU TCG plugin that counts guest instructions executed inside
 * regions the guest marks itself, split into cost classes (a64_classes.h), and
 * profiles how often each translated block ran in the measured regions.
 *
 * Usage:  qemu-aarch64 -plugin insn_count.so,out=/path/counts.txt[,profile_from=K] ...
 *
 * The guest opens a region with lseek(-1, MM_MAGIC_BEGIN, SEEK_SET) and closes
 * it with lseek(-1, MM_MAGIC_END, SEEK_SET). Both calls fail harmlessly with
 * EBADF; this plugin sees them in its syscall callback (which runs before the
 * syscall) and records the instructions executed in between, by all threads.
 *
 * Counting: at translation time each block's instructions are classified once;
 * a per-block callback then adds the block's class counts to the executing
 * vCPU's own counters, so worker threads never race on a counter. A block is
 * counted when it starts, which is exact because every syscall and branch ends
 * a block.
 *
 * Block profile: every translated block keeps a record (guest address, its
 * instruction words, an execution counter). The same per-block callback adds 1
 * to the counter while a region of index >= K is open (default 2: the guest
 * runner's first measured inference, after the marker-overhead and warm-up
 * regions). Since both counts are taken at block start in one callback, the
 * blocks' instructions (insns x count) add up exactly to the totals of regions
 * K and later, in a single-threaded guest. QEMU re-translates a block after a
 * cache flush; records of the same address and words are merged at exit.
 *
 * Output (one line each, flushed as written):
 *   insn_count 2 classes=simd_mac,simd_other,ldst,branch,scalar
 *   region index=0 total=N simd_mac=N simd_other=N ldst=N branch=N scalar=N
 *   ...
 *   error <message>            (marker misuse or a non-A64 instruction: not to be trusted)
 *   block vaddr=0x<hex> insns=<n> count=<c> words=<hex8>,<hex8>,...
 *   ...                        (at guest exit: each block run in a profiled region,
 *                               ordered by address, insns, words)
 *   end regions=R total=N profiled=P blocks=B
 *                              (written at guest exit: its absence = crash; P is
 *                               the sum of insns x count over the B block lines)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qemu_plugin_api.h"
#include "a64_classes.h"

MM_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define MM_NR_LSEEK 62 /* aarch64 (asm-generic) syscall number */
#define MM_MAGIC_BEGIN 0x6D6D5F7200000001ull
#define MM_MAGIC_END 0x6D6D5F7200000002ull
#define MM_MAX_VCPUS 1024 /* slots; indices wrap, which keeps sums exact */
#define MM_INSN_BYTES 4   /* every A64 instruction */

struct vcpu_counts {
    uint64_t n[A64_NCLASSES];
    char pad[64 - (A64_NCLASSES * sizeof(uint64_t)) % 64]; /* own cache line(s) */
};

/* One translated block. Never freed: QEMU gives no callback when it drops one. */
struct block {
    uint32_t n[A64_NCLASSES]; /* instructions per class */
    uint64_t count;           /* executions in profiled regions (atomic) */
    uint64_t vaddr;
    struct block *next;       /* all blocks ever translated, newest first */
    uint32_t insns;
    uint32_t words[];         /* the instructions, as little-endian words */
};

static struct vcpu_counts counts[MM_MAX_VCPUS];
static uint64_t region_start[A64_NCLASSES];
static int in_region;
static int profiling; /* a region of index >= profile_from is open */
static unsigned long regions;
static unsigned long profile_from = 2;
static struct block *blocks;
static unsigned long odd_insns; /* instructions that are not 4 bytes long */
static uint64_t first_odd_vaddr;
static FILE *out;

static void sum_counts(uint64_t total[A64_NCLASSES])
{
    memset(total, 0, sizeof(uint64_t) * A64_NCLASSES);
    for (int v = 0; v < MM_MAX_VCPUS; v++) {
        for (int k = 0; k < A64_NCLASSES; k++) {
            total[k] += counts[v].n[k];
        }
    }
}

static void block_exec(unsigned int vcpu_index, void *udata)
{
    struct block *b = udata;
    struct vcpu_counts *c = &counts[vcpu_index % MM_MAX_VCPUS];

    for (int k = 0; k < A64_NCLASSES; k++) {
        c->n[k] += b->n[k];
    }
    if (__atomic_load_n(&profiling, __ATOMIC_RELAXED)) {
        /* Worker threads may run the same block at the same time. */
        __atomic_fetch_add(&b->count, 1, __ATOMIC_RELAXED);
    }
}

static uint32_t insn_word(const struct qemu_plugin_insn *insn)
{
    const uint8_t *p = qemu_plugin_insn_data(insn);

    if (qemu_plugin_insn_size(insn) != MM_INSN_BYTES) {
        if (__atomic_fetch_add(&odd_insns, 1, __ATOMIC_RELAXED) == 0) {
            first_odd_vaddr = qemu_plugin_insn_vaddr(insn);
        }
        return 0;
    }
    return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void block_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    struct block *b = calloc(1, sizeof(*b) + n * sizeof(uint32_t));

    if (b == NULL) {
        qemu_plugin_outs("insn_count: out of memory\n");
        abort();
    }
    b->vaddr = qemu_plugin_tb_vaddr(tb);
    b->insns = n;
    for (size_t i = 0; i < n; i++) {
        b->words[i] = insn_word(qemu_plugin_tb_get_insn(tb, i));
        b->n[a64_classify(b->words[i])]++;
    }
    /* A lock-free push: cheap, and safe whether or not QEMU serialises translation. */
    b->next = __atomic_load_n(&blocks, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(&blocks, &b->next, b, 1, __ATOMIC_RELEASE,
                                        __ATOMIC_RELAXED)) {
    }
    qemu_plugin_register_vcpu_tb_exec_cb(tb, block_exec, QEMU_PLUGIN_CB_NO_REGS, b);
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num,
                       uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5,
                       uint64_t a6, uint64_t a7, uint64_t a8)
{
    uint64_t now[A64_NCLASSES];
    uint64_t total = 0;

    if (num != MM_NR_LSEEK || (int32_t)a1 != -1) {
        return;
    }
    if (a2 == MM_MAGIC_BEGIN) {
        if (in_region) {
            fprintf(out, "error region %lu begun twice\n", regions);
            fflush(out);
        }
        sum_counts(region_start);
        in_region = 1;
        __atomic_store_n(&profiling, regions >= profile_from, __ATOMIC_RELAXED);
    } else if (a2 == MM_MAGIC_END) {
        if (!in_region) {
            fprintf(out, "error region %lu ended without a begin\n", regions);
            fflush(out);
            return;
        }
        sum_counts(now);
        __atomic_store_n(&profiling, 0, __ATOMIC_RELAXED);
        for (int k = 0; k < A64_NCLASSES; k++) {
            now[k] -= region_start[k];
            total += now[k];
        }
        fprintf(out, "region index=%lu total=%" PRIu64, regions, total);
        for (int k = 0; k < A64_NCLASSES; k++) {
            fprintf(out, " %s=%" PRIu64, a64_class_names[k], now[k]);
        }
        fputc('\n', out);
        fflush(out);
        regions++;
        in_region = 0;
    }
}

/* Orders blocks by address, length, then words: identical blocks end up adjacent. */
static int block_order(const void *pa, const void *pb)
{
    const struct block *a = *(struct block *const *)pa;
    const struct block *b = *(struct block *const *)pb;

    if (a->vaddr != b->vaddr) {
        return a->vaddr < b->vaddr ? -1 : 1;
    }
    if (a->insns != b->insns) {
        return a->insns < b->insns ? -1 : 1;
    }
    return memcmp(a->words, b->words, a->insns * sizeof(uint32_t));
}

/* The executed blocks (count > 0), sorted by block_order; NULL if there are none. */
static struct block **executed_blocks(size_t *n)
{
    struct block **all;
    size_t i = 0;

    *n = 0;
    for (struct block *b = blocks; b != NULL; b = b->next) {
        *n += __atomic_load_n(&b->count, __ATOMIC_RELAXED) > 0;
    }
    if (*n == 0) {
        return NULL;
    }
    all = malloc(*n * sizeof(*all));
    if (all == NULL) {
        qemu_plugin_outs("insn_count: out of memory\n");
        abort();
    }
    for (struct block *b = blocks; b != NULL && i < *n; b = b->next) {
        if (__atomic_load_n(&b->count, __ATOMIC_RELAXED) > 0) {
            all[i++] = b;
        }
    }
    *n = i;
    qsort(all, *n, sizeof(*all), block_order);
    return all;
}

/* Writes one line per executed block, re-translations merged; returns their sum. */
static uint64_t write_blocks(unsigned long *lines)
{
    size_t n;
    struct block **all = executed_blocks(&n);
    uint64_t profiled = 0;

    *lines = 0;
    for (size_t i = 0; i < n;) {
        const struct block *b = all[i];
        uint64_t count = 0;

        for (; i < n && block_order(&all[i], &b) == 0; i++) {
            count += __atomic_load_n(&all[i]->count, __ATOMIC_RELAXED);
        }
        fprintf(out, "block vaddr=0x%" PRIx64 " insns=%" PRIu32 " count=%" PRIu64 " words=",
                b->vaddr, b->insns, count);
        for (uint32_t k = 0; k < b->insns; k++) {
            fprintf(out, "%s%08" PRIx32, k ? "," : "", b->words[k]);
        }
        fputc('\n', out);
        profiled += count * b->insns;
        ++*lines;
    }
    free(all);
    return profiled;
}

static void plugin_exit(qemu_plugin_id_t id, void *udata)
{
    uint64_t all[A64_NCLASSES];
    uint64_t total = 0;
    uint64_t profiled;
    unsigned long lines;

    sum_counts(all);
    for (int k = 0; k < A64_NCLASSES; k++) {
        total += all[k];
    }
    if (in_region) {
        fprintf(out, "error region %lu never ended\n", regions);
    }
    if (odd_insns) {
        fprintf(out, "error %lu translated instructions are not %d-byte A64 words "
                "(the first at 0x%" PRIx64 ")\n", odd_insns, MM_INSN_BYTES, first_odd_vaddr);
    }
    profiled = write_blocks(&lines);
    fprintf(out, "end regions=%lu total=%" PRIu64 " profiled=%" PRIu64 " blocks=%lu\n",
            regions, total, profiled, lines);
    fclose(out);
    out = NULL;
}

/* Parses a plugin argument's decimal value; returns 0 on success. */
static int parse_count(const char *text, unsigned long *value)
{
    char *end;

    if (*text < '0' || *text > '9') {
        return -1;
    }
    errno = 0;
    *value = strtoul(text, &end, 10);
    return (errno != 0 || *end != '\0') ? -1 : 0;
}

MM_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                         int argc, char **argv)
{
    const char *path = NULL;

    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            path = argv[i] + 4;
        } else if (strncmp(argv[i], "profile_from=", 13) == 0) {
            if (parse_count(argv[i] + 13, &profile_from) != 0) {
                fprintf(stderr, "insn_count: profile_from must be a region index "
                        "(0, 1, 2, ...), got '%s'\n", argv[i] + 13);
                return -1;
            }
        } else {
            fprintf(stderr, "insn_count: unknown argument '%s' (expected out=PATH or "
                    "profile_from=K)\n", argv[i]);
            return -1;
        }
    }
    if (path == NULL || *path == '\0') {
        fprintf(stderr, "insn_count: missing argument out=PATH\n");
        return -1;
    }
    if (info->system_emulation || strcmp(info->target_name, "aarch64") != 0) {
        fprintf(stderr, "insn_count: needs qemu-aarch64 user mode, got %s%s\n",
                info->target_name, info->system_emulation ? " (system)" : "");
        return -1;
    }
    out = fopen(path, "w");
    if (out == NULL) {
        perror("insn_count: cannot open output");
        return -1;
    }
    fprintf(out, "insn_count 2 classes=");
    for (int k = 0; k < A64_NCLASSES; k++) {
        fprintf(out, "%s%s", k ? "," : "", a64_class_names[k]);
    }
    fputc('\n', out);
    fflush(out);

    qemu_plugin_register_vcpu_tb_trans_cb(id, block_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, plugin_exit, NULL);
    return 0;
}
