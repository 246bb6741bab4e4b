/*
 * Classifies one A64 instruction word into the cost classes of insn_count.c.
 *
 * The decode follows the top-level A64 encoding table of the Arm Architecture
 * Reference Manual (op0 = bits[28:25]) and, inside "Data Processing -- Scalar
 * Floating-Point and Advanced SIMD", the encoding groups that hold multiplies:
 *
 *   simd_mac    vector/scalar SIMD and FP multiplies, multiply-accumulates and
 *               dot products: MUL, MLA/MLS, SMULL/SMLAL/UMLAL/SQDMLAL (three
 *               different), SQDMULH/SQRDMULH, SQRDMLAH, SDOT/UDOT/USDOT, *MMLA,
 *               every "by element" form, FMUL/FMULX/FMLA/FMLS (vector, fp16,
 *               scalar), FMADD/FMSUB/FNMADD/FNMSUB, FCMLA, BFDOT.
 *   simd_other  every other SIMD/FP data-processing instruction (adds, shifts,
 *               permutes, converts, moves, compares, crypto) and all SVE.
 *   ldst        every load and store, scalar or SIMD, incl. exclusives/atomics.
 *   branch      B, BL, B.cond, CBZ/CBNZ, TBZ/TBNZ, BR/BLR/RET (register forms).
 *   scalar      everything else: integer data processing (immediate/register),
 *               system instructions, hints, barriers, SVC.
 *
 * Header-only so that tests can compile the same decoder into a small driver.
 */
#ifndef MM_A64_CLASSES_H
#define MM_A64_CLASSES_H

#include <stdint.h>

enum a64_class {
    A64_SIMD_MAC = 0,
    A64_SIMD_OTHER,
    A64_LDST,
    A64_BRANCH,
    A64_SCALAR,
    A64_NCLASSES
};

static const char *const a64_class_names[A64_NCLASSES] = {
    "simd_mac", "simd_other", "ldst", "branch", "scalar",
};

static inline int a64_is_simd_mul(uint32_t i)
{
    uint32_t u = (i >> 29) & 1;

    /* FP data-processing (3 source): FMADD, FMSUB, FNMADD, FNMSUB. */
    if ((i & 0x5F000000u) == 0x1F000000u) {
        return 1;
    }
    /* FP data-processing (2 source): opcode 0000 FMUL, 1000 FNMUL. */
    if ((i & 0x5F200C00u) == 0x1E200800u) {
        uint32_t op = (i >> 12) & 0xF;
        return op == 0x0 || op == 0x8;
    }
    /* AdvSIMD three same. */
    if ((i & 0x9F200400u) == 0x0E200400u) {
        uint32_t op = (i >> 11) & 0x1F;
        return op == 0x12     /* MLA, MLS */
            || op == 0x13     /* MUL, PMUL */
            || op == 0x16     /* SQDMULH, SQRDMULH */
            || op == 0x19     /* FMLA, FMLS (U=0); FMLAL2, FMLSL2 (U=1) */
            || op == 0x1B     /* FMULX (U=0), FMUL (U=1) */
            || (op == 0x1D && u == 0); /* FMLAL, FMLSL */
    }
    /* AdvSIMD three same (FP16): op 001 FMLA/FMLS (U=0), 011 FMULX/FMUL. */
    if ((i & 0x9F60C400u) == 0x0E400400u) {
        uint32_t op = (i >> 11) & 0x7;
        return (op == 0x1 && u == 0) || op == 0x3;
    }
    /* AdvSIMD three-register extension: dot products, SQRDMLAH, MMLA, FCMLA,
     * BFDOT...; only FCADD (opcode 11x0) does not multiply. */
    if ((i & 0x9F208400u) == 0x0E008400u) {
        uint32_t op = (i >> 11) & 0xF;
        return op != 0xC && op != 0xE;
    }
    /* AdvSIMD three different: opcodes 1000..1110 are the widening
     * multiplies (SMLAL, SQDMLAL, SMLSL, SQDMLSL, SMULL, SQDMULL, PMULL). */
    if ((i & 0x9F200C00u) == 0x0E200000u) {
        uint32_t op = (i >> 12) & 0xF;
        return op >= 0x8 && op <= 0xE;
    }
    /* AdvSIMD vector x indexed element: every entry multiplies. */
    if ((i & 0x9F000400u) == 0x0F000000u) {
        return 1;
    }
    /* AdvSIMD scalar x indexed element. */
    if ((i & 0xDF000400u) == 0x5F000000u) {
        return 1;
    }
    /* AdvSIMD scalar three different: SQDMLAL, SQDMLSL, SQDMULL. */
    if ((i & 0xDF200C00u) == 0x5E200000u) {
        uint32_t op = (i >> 12) & 0xF;
        return op == 0x9 || op == 0xB || op == 0xD;
    }
    /* AdvSIMD scalar three same: SQDMULH/SQRDMULH, FMULX. */
    if ((i & 0xDF200400u) == 0x5E200400u) {
        uint32_t op = (i >> 11) & 0x1F;
        return op == 0x16 || (op == 0x1B && u == 0);
    }
    /* AdvSIMD scalar three-register extension: SQRDMLAH, SQRDMLSH. */
    if ((i & 0xDF208400u) == 0x5E008400u) {
        return 1;
    }
    return 0;
}

static inline enum a64_class a64_classify(uint32_t i)
{
    /* op0 = x1x0: loads and stores. */
    if ((i & 0x0A000000u) == 0x08000000u) {
        return A64_LDST;
    }
    /* op0 = 101x: branches, exception generation, system. */
    if ((i & 0x1C000000u) == 0x14000000u) {
        if ((i & 0x7C000000u) == 0x14000000u     /* B, BL */
            || (i & 0x7E000000u) == 0x34000000u  /* CBZ, CBNZ */
            || (i & 0x7E000000u) == 0x36000000u  /* TBZ, TBNZ */
            || (i & 0xFE000000u) == 0x54000000u  /* B.cond */
            || (i & 0xFE000000u) == 0xD6000000u) /* BR, BLR, RET, ... */
        {
            return A64_BRANCH;
        }
        return A64_SCALAR;
    }
    /* op0 = x111: scalar FP and Advanced SIMD. */
    if ((i & 0x0E000000u) == 0x0E000000u) {
        return a64_is_simd_mul(i) ? A64_SIMD_MAC : A64_SIMD_OTHER;
    }
    /* op0 = 0010: SVE (not exposed by the Cortex-A cores we emulate). */
    if ((i & 0x1E000000u) == 0x04000000u) {
        return A64_SIMD_OTHER;
    }
    /* op0 = 100x, x101: integer data processing; 0000/0001/0011: other. */
    return A64_SCALAR;
}

#endif /* MM_A64_CLASSES_H */
