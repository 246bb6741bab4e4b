/*
 * insn_count: a QEMU TCG plugin that counts guest instructions executed inside
 * regions the guest marks itself, split into cost classes (a64_classes.h).
 *
 * Usage:  qemu-aarch64 -plugin insn_count.so,out=/path/counts.txt ...
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
 * Output (one line each, flushed as written):
 *   insn_count 1 classes=simd_mac,simd_other,ldst,branch,scalar
 *   region index=0 total=N simd_mac=N simd_other=N ldst=N branch=N scalar=N
 *   ...
 *   error <message>            (marker misuse; the run is not to be trusted)
 *   end regions=R total=N      (written at guest exit: its absence = crash)
 */
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

struct vcpu_counts {
    uint64_t n[A64_NCLASSES];
    char pad[64 - (A64_NCLASSES * sizeof(uint64_t)) % 64]; /* own cache line(s) */
};

struct block_counts {
    uint32_t n[A64_NCLASSES];
};

static struct vcpu_counts counts[MM_MAX_VCPUS];
static uint64_t region_start[A64_NCLASSES];
static int in_region;
static unsigned long regions;
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
    const struct block_counts *b = udata;
    struct vcpu_counts *c = &counts[vcpu_index % MM_MAX_VCPUS];

    for (int k = 0; k < A64_NCLASSES; k++) {
        c->n[k] += b->n[k];
    }
}

static void block_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb);
    struct block_counts *b = calloc(1, sizeof(*b));

    if (b == NULL) {
        qemu_plugin_outs("insn_count: out of memory\n");
        abort();
    }
    for (size_t i = 0; i < n; i++) {
        const struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint32_t word = 0;

        if (qemu_plugin_insn_size(insn) == sizeof(word)) {
            memcpy(&word, qemu_plugin_insn_data(insn), sizeof(word));
        }
        b->n[a64_classify(word)]++;
    }
    /* Blocks are never freed: QEMU gives no callback when it drops one. */
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
    } else if (a2 == MM_MAGIC_END) {
        if (!in_region) {
            fprintf(out, "error region %lu ended without a begin\n", regions);
            fflush(out);
            return;
        }
        sum_counts(now);
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

static void plugin_exit(qemu_plugin_id_t id, void *udata)
{
    uint64_t all[A64_NCLASSES];
    uint64_t total = 0;

    sum_counts(all);
    for (int k = 0; k < A64_NCLASSES; k++) {
        total += all[k];
    }
    if (in_region) {
        fprintf(out, "error region %lu never ended\n", regions);
    }
    fprintf(out, "end regions=%lu total=%" PRIu64 "\n", regions, total);
    fclose(out);
    out = NULL;
}

MM_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                         int argc, char **argv)
{
    const char *path = NULL;

    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            path = argv[i] + 4;
        } else {
            fprintf(stderr, "insn_count: unknown argument '%s' (expected out=PATH)\n",
                    argv[i]);
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
    fprintf(out, "insn_count 1 classes=");
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
