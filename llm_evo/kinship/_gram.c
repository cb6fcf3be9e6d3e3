/* Fused kernel for the kinship pass: raw checkpoint bytes -> float64 Gram statistics.
 *
 * Why: numpy needs five passes over each chunk (decode, subtract, widen, sum, dot), each
 * through memory; here one pass decodes bf16 / fp16 / fp32 into a small block that stays
 * in L1, takes the deltas against the base in float64 and adds sum(d_i) and sum(d_i * d_j)
 * into float64 accumulators, with the GIL released so threads run in parallel.
 * Optional: llm_evo.kinship.fast falls back to numpy when this module was not built.
 *
 * accumulate(raw, stride, codes, m, gram, sums, kernel=0)
 *   raw    contiguous bytes, row r (0 = base, 1..k = models) at r * stride
 *   codes  bytes, one dtype code per row: 0 bfloat16, 1 float16, 2 float32 (little-endian)
 *   m      elements per row
 *   gram   writable float64[k * k]: gram[i * k + j] += sum(d_i * d_j) for i <= j
 *   sums   writable float64[k]: sums[i] += sum(d_i)
 *   kernel 0 picks by the CPU; 8 (AVX-512), 4 (any CPU) and 1 (blocks, any mix of dtypes)
 *          force one, so tests check each against numpy
 * with d_i = model_i - base. bf16 / fp16 deltas and their products are exact in float64.
 */
#define PY_SSIZE_T_CLEAN
#if defined(__GNUC__)
/* The W = 4 helpers return 32-byte vectors from functions without AVX; they are always
 * inlined into code that has it (or into the default build), so no ABI is crossed. */
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 512 /* elements decoded at a time: (k + 1) rows of doubles stay in L1 */
#define LANES 8   /* independent partial sums: the vector width, and no serial chain */
#define MAXK 32   /* models per call; the Python side uses numpy above this */

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#define MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MULTIVERSION
#endif

/* fp16 -> fp32 without F16C or _Float16, exactly: a normal half's exponent and mantissa
 * bits moved into float32's place are its value times 2^-112, so one multiply by 2^112
 * rescales; inf / NaN (>= 2^16 after it) get float32's all-ones exponent. Subnormals are
 * their mantissa times 2^-24, computed from the integer so that a CPU flushing float32
 * denormals (DAZ) still decodes them. Vectorises. */
static inline float half_to_float(uint16_t h) {
    uint32_t em = h & 0x7fffu, bits = em << 13, sub_bits;
    uint32_t is_sub = 0u - (uint32_t)(em < 0x400u); /* branch-free, so loops vectorise */
    float f, sub = (float)em * 0x1p-24f;
    memcpy(&f, &bits, 4);
    f *= 0x1p112f;
    memcpy(&bits, &f, 4);
    memcpy(&sub_bits, &sub, 4);
    bits = (bits & ~is_sub) | (sub_bits & is_sub);
    bits |= ((0u - (uint32_t)(bits >= 0x47800000u)) & 0x7f800000u) /* >= 2^16: inf, NaN */
            | ((uint32_t)(h & 0x8000u) << 16);
    memcpy(&f, &bits, 4);
    return f;
}

#define INLINE static inline __attribute__((always_inline))

/* Element t of a row stored as `code` (a constant wherever this is inlined). */
INLINE double value(const uint8_t *row, int code, Py_ssize_t t) {
    if (code == 0) {
        uint16_t h;
        uint32_t bits;
        float f;
        memcpy(&h, row + 2 * t, 2);
        bits = (uint32_t)h << 16;
        memcpy(&f, &bits, 4);
        return f;
    }
    if (code == 1) {
        uint16_t h;
        memcpy(&h, row + 2 * t, 2);
        return half_to_float(h);
    }
    float f;
    memcpy(&f, row + 4 * t, 4);
    return f;
}

static const int SIZES[3] = {2, 2, 4};

/* run_small_w8 (AVX-512) and run_small_w4 (AVX2, or whatever the target has): one source,
 * _gram_small.h, compiled at two vector widths; `run` picks one by what the CPU supports. */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#define HAVE_W8 1
#define W 8
#define SUFFIX(name) name##_w8
#define HELPER __attribute__((target("arch=x86-64-v4")))
#define ENTRY HELPER
#include "_gram_small.h"
#undef W
#undef SUFFIX
#undef HELPER
#undef ENTRY
#endif
#define W 4
#define SUFFIX(name) name##_w4
#define HELPER
#define ENTRY MULTIVERSION
#include "_gram_small.h"
#undef W
#undef SUFFIX
#undef HELPER
#undef ENTRY

/* Any mix of dtypes, up to MAXK models: blocks of deltas decoded into L1, then dots. */
MULTIVERSION
static void run_blocks(const uint8_t *raw, Py_ssize_t stride, const char *codes, int k,
                       Py_ssize_t m, double *gram, double *sums) {
    double base[BLOCK], d[MAXK][BLOCK];
    for (Py_ssize_t s = 0; s < m; s += BLOCK) {
        Py_ssize_t n = m - s < BLOCK ? m - s : BLOCK;
        Py_ssize_t padded = (n + LANES - 1) / LANES * LANES;
        const uint8_t *row = raw + s * SIZES[(int)codes[0]];
        for (Py_ssize_t t = 0; t < n; t++) base[t] = value(row, codes[0], t);
        for (int i = 0; i < k; i++) {
            const int c = codes[i + 1];
            double *di = d[i];
            row = raw + (Py_ssize_t)(i + 1) * stride + s * SIZES[c];
            for (Py_ssize_t t = 0; t < n; t++) di[t] = value(row, c, t) - base[t];
            for (Py_ssize_t t = n; t < padded; t++) di[t] = 0.0;
        }
        for (int i = 0; i < k; i++) {
            double acc[LANES] = {0};
            for (Py_ssize_t t = 0; t < padded; t += LANES)
                for (int l = 0; l < LANES; l++) acc[l] += d[i][t + l];
            for (int l = 0; l < LANES; l++) sums[i] += acc[l];
            for (int j = i; j < k; j++) {
                double g[LANES] = {0};
                for (Py_ssize_t t = 0; t < padded; t += LANES)
                    for (int l = 0; l < LANES; l++) g[l] += d[i][t + l] * d[j][t + l];
                for (int l = 0; l < LANES; l++) gram[i * k + j] += g[l];
            }
        }
    }
}

static int have_w8(void) {
#ifdef HAVE_W8
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

static int W8_OK; /* have_w8(), asked once when the module loads, not once per chunk */

static void run(const uint8_t *raw, Py_ssize_t stride, const char *codes, int k, Py_ssize_t m,
                double *gram, double *sums, int kernel) {
    int same = 1;
    for (int r = 1; r <= k; r++) same &= codes[r] == codes[0];
    if (!same || k > 4 || kernel == 1) {
        run_blocks(raw, stride, codes, k, m, gram, sums);
        return;
    }
#ifdef HAVE_W8
    if (kernel != 4 && W8_OK) {
        run_small_w8(raw, stride, codes[0], k, m, gram, sums);
        return;
    }
#endif
    run_small_w4(raw, stride, codes[0], k, m, gram, sums);
}

static PyObject *accumulate(PyObject *self, PyObject *args) {
    Py_buffer raw, codes, gram, sums;
    Py_ssize_t stride, m;
    int kernel = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*ny*nw*w*|i", &raw, &stride, &codes, &m, &gram, &sums, &kernel))
        return NULL;
    PyObject *result = NULL;
    const char *c = (const char *)codes.buf;
    Py_ssize_t k = codes.len - 1;
    if (k < 1 || k > MAXK) {
        PyErr_Format(PyExc_ValueError, "between 1 and %d models per call, got %zd", MAXK, k);
        goto done;
    }
    for (Py_ssize_t r = 0; r <= k; r++) {
        if (c[r] < 0 || c[r] > 2) {
            PyErr_Format(PyExc_ValueError, "row %zd: unknown dtype code %d", r, (int)c[r]);
            goto done;
        }
        if (m < 0 || m * SIZES[(int)c[r]] > stride || r * stride + m * SIZES[(int)c[r]] > raw.len) {
            PyErr_Format(PyExc_ValueError, "row %zd: %zd elements do not fit the buffer", r, m);
            goto done;
        }
    }
    if (kernel != 0 && kernel != 1 && kernel != 4 && !(kernel == 8 && W8_OK)) {
        PyErr_Format(PyExc_ValueError, "kernel %d is not available here", kernel);
        goto done;
    }
    if (gram.len < (Py_ssize_t)(k * k * sizeof(double)) || sums.len < (Py_ssize_t)(k * sizeof(double))) {
        PyErr_SetString(PyExc_ValueError, "gram needs k * k and sums k float64 values");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    run((const uint8_t *)raw.buf, stride, c, (int)k, m, (double *)gram.buf, (double *)sums.buf,
        kernel);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&raw);
    PyBuffer_Release(&codes);
    PyBuffer_Release(&gram);
    PyBuffer_Release(&sums);
    return result;
}

static PyMethodDef METHODS[] = {
    {"accumulate", accumulate, METH_VARARGS,
     "accumulate(raw, stride, codes, m, gram, sums, kernel=0): add one chunk's delta "
     "statistics."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, "_gram", NULL, -1, METHODS, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__gram(void) {
    W8_OK = have_w8();
    PyObject *mod = PyModule_Create(&MODULE);
    if (mod != NULL && (PyModule_AddIntConstant(mod, "MAXK", MAXK) < 0 ||
                        PyModule_AddIntConstant(mod, "HAVE_AVX512", W8_OK) < 0)) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
