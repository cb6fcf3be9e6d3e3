/* The one-dtype, K <= 4 kernel at vector width W (included twice by _gram.c, with W,
 * SUFFIX, HELPER and ENTRY defined: the target attributes of the inlined helpers and of
 * the entry point). Vector extensions, so each width is lowered to the target's
 * registers: W = 8 doubles is one AVX-512 register, W = 4 one AVX2 register. */

typedef double SUFFIX(vd) __attribute__((vector_size(8 * W)));
typedef float SUFFIX(vf) __attribute__((vector_size(4 * W)));
typedef uint32_t SUFFIX(vu) __attribute__((vector_size(4 * W)));
typedef uint16_t SUFFIX(vh) __attribute__((vector_size(2 * W)));
typedef int32_t SUFFIX(vi) __attribute__((vector_size(4 * W)));

/* Elements t .. t + W - 1 of a row stored as CODE (a constant wherever this is inlined). */
HELPER INLINE SUFFIX(vd) SUFFIX(load)(const uint8_t *row, const int CODE, Py_ssize_t t) {
    if (CODE == 0) {
        SUFFIX(vh) h;
        memcpy(&h, row + 2 * t, sizeof h);
        SUFFIX(vu) bits = __builtin_convertvector(h, SUFFIX(vu)) << 16;
        SUFFIX(vf) f;
        memcpy(&f, &bits, sizeof f);
        return __builtin_convertvector(f, SUFFIX(vd));
    }
    if (CODE == 1) { /* half_to_float, W lanes at a time */
        SUFFIX(vh) h;
        memcpy(&h, row + 2 * t, sizeof h);
        SUFFIX(vu) wide = __builtin_convertvector(h, SUFFIX(vu));
        SUFFIX(vu) em = wide & 0x7fffu, bits = em << 13, sub_bits;
        SUFFIX(vf) f, sub = __builtin_convertvector(em, SUFFIX(vf)) * 0x1p-24f;
        memcpy(&f, &bits, sizeof f);
        f *= 0x1p112f;
        memcpy(&bits, &f, sizeof f);
        memcpy(&sub_bits, &sub, sizeof sub);
        SUFFIX(vu) is_sub = (SUFFIX(vu))(em < 0x400u); /* all ones where subnormal or zero */
        bits = (bits & ~is_sub) | (sub_bits & is_sub);
        memcpy(&f, &bits, sizeof f);
        SUFFIX(vi) special = f >= 65536.0f; /* all ones where inf or NaN */
        bits |= ((SUFFIX(vu))special & 0x7f800000u) | ((wide & 0x8000u) << 16);
        memcpy(&f, &bits, sizeof f);
        return __builtin_convertvector(f, SUFFIX(vd));
    }
    SUFFIX(vf) f;
    memcpy(&f, row + 4 * t, sizeof f);
    return __builtin_convertvector(f, SUFFIX(vd));
}

/* Every row of one dtype and K <= 4 models (a pair, a small matrix): one pass over the
 * bytes with every accumulator in registers. K and CODE are constants in each instance. */
HELPER INLINE void SUFFIX(small)(const uint8_t *raw, Py_ssize_t stride, const int K,
                                 const int CODE, Py_ssize_t m, double *gram, double *sums) {
    SUFFIX(vd) acc_s[4] = {{0}}, acc_g[4][4] = {{{0}}};
    Py_ssize_t body = m / W * W;
    for (Py_ssize_t t = 0; t < body; t += W) {
        SUFFIX(vd) b = SUFFIX(load)(raw, CODE, t), d[4];
#pragma GCC unroll 4
        for (int i = 0; i < K; i++) d[i] = SUFFIX(load)(raw + (Py_ssize_t)(i + 1) * stride, CODE, t) - b;
#pragma GCC unroll 4
        for (int i = 0; i < K; i++) {
            acc_s[i] += d[i];
#pragma GCC unroll 4
            for (int j = i; j < K; j++) acc_g[i][j] += d[i] * d[j];
        }
    }
    double tail_s[4] = {0}, tail_g[4][4] = {{0}};
    for (Py_ssize_t t = body; t < m; t++) { /* the last m % W elements, one by one */
        double b = value(raw, CODE, t), d[4];
        for (int i = 0; i < K; i++) d[i] = value(raw + (Py_ssize_t)(i + 1) * stride, CODE, t) - b;
        for (int i = 0; i < K; i++) {
            tail_s[i] += d[i];
            for (int j = i; j < K; j++) tail_g[i][j] += d[i] * d[j];
        }
    }
    for (int i = 0; i < K; i++) {
        double s = tail_s[i];
        for (int l = 0; l < W; l++) s += acc_s[i][l];
        sums[i] += s;
        for (int j = i; j < K; j++) {
            double g = tail_g[i][j];
            for (int l = 0; l < W; l++) g += acc_g[i][j][l];
            gram[i * K + j] += g;
        }
    }
}

#define SMALL(K, CODE) SUFFIX(small)(raw, stride, K, CODE, m, gram, sums)

ENTRY static void SUFFIX(run_small)(const uint8_t *raw, Py_ssize_t stride, int code, int k,
                                     Py_ssize_t m, double *gram, double *sums) {
    switch (code * 4 + k - 1) {
    case 0: SMALL(1, 0); return;
    case 1: SMALL(2, 0); return;
    case 2: SMALL(3, 0); return;
    case 3: SMALL(4, 0); return;
    case 4: SMALL(1, 1); return;
    case 5: SMALL(2, 1); return;
    case 6: SMALL(3, 1); return;
    case 7: SMALL(4, 1); return;
    case 8: SMALL(1, 2); return;
    case 9: SMALL(2, 2); return;
    case 10: SMALL(3, 2); return;
    default: SMALL(4, 2); return;
    }
}

#undef SMALL
