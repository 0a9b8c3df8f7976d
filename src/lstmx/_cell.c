/* The per-step kernels: the elementwise LSTM cell (DESIGN.md section 1;
 * seed 002 + peepholes), the recurrent products (matmat on W_h as it is;
 * a GEMM and a one-row kernel on a packed W_h), the input projection (the
 * same GEMM, or turned over on a single sequence's packed rows:
 * gemm_packed_a), the weight gradients over all rows (gemm_tn,
 * gemm_tn_packed), softmax cross-entropy, and
 * for a recurrence shared by two threads the barrier and the worker thread
 * that runs the second of a pair of jobs.
 *
 * A cell call computes one step of one sequence over its units. The loops
 * are written so that the compiler vectorizes them: restrict pointers, no
 * calls but inline arithmetic; see LSTMX_DISPATCH_FMA for the AVX2 + FMA
 * and AVX-512 builds chosen at load time.
 *
 * The activations are arithmetic, not libm calls, so that they vectorize:
 * float32's exp is a polynomial accurate to float32 (glibc's scalar expf,
 * ~5 ns a call here, dominated the step at hidden 64), float64's as exact
 * as libm's; tests/test_activations.py bounds the errors of both.
 *
 * Gate order in a, act and da is i, f, g (the cell input), o; peep is
 * p_i, p_f, p_o (zeros for a network without peepholes).
 */
#if defined(__unix__) || defined(__APPLE__)
#define _POSIX_C_SOURCE 200809L  /* clock_gettime under -std=c11 */
#endif
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_cell.h"

/* On x86-64 with GCC or clang every kernel is built twice, for the baseline
 * and for AVX2 + FMA (and some a third time, for AVX-512: see "the AVX-512
 * build" below), and the public function picks one when the library is
 * loaded (lstmx_detect_cpu): one portable wheel runs the wide code where the
 * CPU has it. This file is compiled with -ffp-contract=fast by GCC (=on,
 * within an expression, by clang: see meson.build), so a * b + c becomes
 * one fused multiply-add where FMA exists: measured on small_infer (hidden
 * 64), 1.76 -> 1.46 ms. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(LSTMX_PLAIN_C)
#define LSTMX_DISPATCH_FMA 1
#else
#define LSTMX_DISPATCH_FMA 0
#endif

#if defined(__GNUC__)
#define LSTMX_INLINE __attribute__((always_inline))
#else
#define LSTMX_INLINE
#endif

/* v as it stands, rounded: not fused into the sum it goes on to. In
 * a * b + c * d, contraction fuses one product or the other as the compiler
 * sees fit, and it saw fit differently in the cell's lanes and in its
 * scalar loop: c_t of the same inputs differed in the last bit in 19% of
 * random draws (float32 and float64, AVX-512 and AVX2 builds). With
 * f c_prev rounded here, both fuse i g into it. */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define LSTMX_ROUNDED(v) __asm__("" : "+x"(v))
#else
#define LSTMX_ROUNDED(v) ((void)0)
#endif

/* ---- float32 activations ------------------------------------------------ */

/* e^x: x = n ln2 + r with |r| <= ln2/2, e^r by its Taylor polynomial to r^7
 * (truncation < 6e-9 relative), 2^n put into the exponent bits. x is clamped
 * to [-87, 88] so that 2^n stays a normal float: e^-87 is below float's
 * resolution of anything it is added to here, e^88 < FLT_MAX. */
/* n and e^r of a clamped x, T float or a vector of them (p holds 1/5040) */
#define LSTMX_EXP_REDUCE(T, x, n, p)                                          \
    /* round x / ln2 to nearest by the 1.5 * 2^23 trick (|x / ln2| < 2^22) */ \
    T n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;             \
    /* ln2 split so that n * LN2_HI is exact */                               \
    T r = x - n * 0.693145751953125f;                                         \
    r = r - n * 1.42860682030941723212e-6f;                                   \
    p = p * r + 1.0f / 720.0f;                                                \
    p = p * r + 1.0f / 120.0f;                                                \
    p = p * r + 1.0f / 24.0f;                                                 \
    p = p * r + 1.0f / 6.0f;                                                  \
    p = p * r + 0.5f;                                                         \
    p = p * r + 1.0f;                                                         \
    p = p * r + 1.0f;

static inline LSTMX_INLINE float exp_f32(float x)
{
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float p = 1.0f / 5040.0f;
    LSTMX_EXP_REDUCE(float, x, n, p)
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline LSTMX_INLINE float sigmoid_f32(float x)
{
    return 1.0f / (1.0f + exp_f32(-x));
}

/* tanh x: for |x| < 0.25 its Taylor series to x^9 (truncation < 2e-8
 * relative); above, 1 - 2 / (e^{2|x|} + 1). */
static inline LSTMX_INLINE float tanh_f32(float x)
{
    float ax = fabsf(x);
    float big = 1.0f - 2.0f / (exp_f32(2.0f * ax) + 1.0f);
    float x2 = x * x;
    float small = 62.0f / 2835.0f;
    small = small * x2 - 17.0f / 315.0f;
    small = small * x2 + 2.0f / 15.0f;
    small = small * x2 - 1.0f / 3.0f;
    small = small * x2 + 1.0f;
    small = small * ax;
    return copysignf(ax < 0.25f ? small : big, x);
}


/* ---- float64 activations ------------------------------------------------ */

/* libm's exp and tanh are calls the compiler cannot vectorize: with them
 * the float64 cell took 54-56 ns a unit here, float32's 5. These are as
 * exact as libm, in arithmetic alone. Measured against long double on the
 * grids of tests/test_activations.py, in ulps: exp 0.87 (1.14 without
 * FMA), tanh 1.36, sigmoid 2.28; glibc's exp 0.51, tanh 1.17, and sigmoid
 * on glibc's exp 2.23.
 *
 * e^x: x = n ln2 + r, |r| <= ln2/2, e^r by its Taylor polynomial to r^13
 * (truncation < 6e-18 relative), times 2^n. n comes from adding 1.5 * 2^52,
 * which leaves it in the sum's low bits; 2^n is applied in two halves, so
 * that x in [-746, 710] (the clamp) spans libm's range, its subnormals,
 * underflow to 0 and overflow to inf included. */
#define LSTMX_EXP64_MAGIC 6755399441055744.0   /* 1.5 * 2^52 */
#define LSTMX_EXP64_REDUCE(T, x, t, p)                                        \
    T t = x * 1.4426950408889634 + LSTMX_EXP64_MAGIC;                         \
    T nd = t - LSTMX_EXP64_MAGIC;   /* n, as a double */                      \
    /* ln2 in two parts, nd * LN2_HI exact for |n| < 2^21 */                  \
    T r = x - nd * 6.93147180369123816490e-01;                                \
    r = r - nd * 1.90821492927058770002e-10;                                  \
    p = p * r + 1.0 / 479001600.0;                                            \
    p = p * r + 1.0 / 39916800.0;                                             \
    p = p * r + 1.0 / 3628800.0;                                              \
    p = p * r + 1.0 / 362880.0;                                               \
    p = p * r + 1.0 / 40320.0;                                                \
    p = p * r + 1.0 / 5040.0;                                                 \
    p = p * r + 1.0 / 720.0;                                                  \
    p = p * r + 1.0 / 120.0;                                                  \
    p = p * r + 1.0 / 24.0;                                                   \
    p = p * r + 1.0 / 6.0;                                                    \
    p = p * r + 0.5;                                                          \
    p = p * r + 1.0;                                                          \
    p = p * r + 1.0;

/* 2^n as a double, n + 1023 in its exponent bits (n from -1022 to 1023) */
static inline LSTMX_INLINE double pow2_f64(int64_t n)
{
    int64_t bits = (n + 1023) << 52;
    double v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* floor(n / 2) for n >= -1076 (x >= -746), by an unsigned shift: -538 to
 * 512, as is n less it */
#define LSTMX_HALF_N(I, U, n) ((I)((U)((n) + 1076) >> 1) - 538)

static inline LSTMX_INLINE double exp_f64(double x)
{
    x = x < -746.0 ? -746.0 : x;
    x = x > 710.0 ? 710.0 : x;
    double p = 1.0 / 6227020800.0;
    LSTMX_EXP64_REDUCE(double, x, t, p)
    int64_t n, magic;
    const double magic_value = LSTMX_EXP64_MAGIC;
    memcpy(&n, &t, sizeof n);
    memcpy(&magic, &magic_value, sizeof magic);
    n -= magic;
    int64_t n1 = LSTMX_HALF_N(int64_t, uint64_t, n);
    return p * pow2_f64(n1) * pow2_f64(n - n1);
}

static inline LSTMX_INLINE double sigmoid_f64(double x)
{
    return 1.0 / (1.0 + exp_f64(-x));
}

/* tanh x: for |x| < 0.625, x + x^3 q(x^2) with q the degree-11 polynomial
 * interpolating (tanh x - x) / x^3 at Chebyshev nodes of x^2 in [0, 0.390625]
 * (error < 1e-17 relative to tanh); above, 1 - 2 / (e^{2|x|} + 1), whose
 * cancellation costs at most about an ulp from 0.625 up. q holds the
 * leading coefficient (LSTMX_TANH64_Q11) and ends as the small branch. */
#define LSTMX_TANH64_SMALL(T, x, s, q)                                        \
    T s = x * x;                                                              \
    q = q * s - 3.12011014257974e-05;                                         \
    q = q * s + 9.257116129556769e-05;                                        \
    q = q * s - 0.0002375906496055562;                                        \
    q = q * s + 0.0005896606577757043;                                        \
    q = q * s - 0.0014557754120478055;                                        \
    q = q * s + 0.0035921217511549622;                                        \
    q = q * s - 0.008863235103240878;                                         \
    q = q * s + 0.021869488519008305;                                         \
    q = q * s - 0.05396825396789699;                                          \
    q = q * s + 0.13333333333333042;                                          \
    q = q * s - 0.3333333333333333;                                           \
    q = x + x * s * q;
#define LSTMX_TANH64_Q11 6.485163482793113e-06

static inline LSTMX_INLINE double tanh_f64(double x)
{
    double ax = fabs(x);
    double big = 1.0 - 2.0 / (exp_f64(2.0 * ax) + 1.0);
    double small = LSTMX_TANH64_Q11;
    LSTMX_TANH64_SMALL(double, x, s, small)
    return ax < 0.625 ? small : copysign(big, x);
}

/* ---- the cell ------------------------------------------------------------ */

/* Forward, one step (DESIGN.md section 1):
 *   i = s(a_i + p_i c_prev)   f = s(a_f + p_f c_prev)   g = tanh(a_g)
 *   c = f c_prev + i g        o = s(a_o + p_o c)        h = o tanh(c)
 * with a = x_t W_x^T (in a) + h_prev W_h^T (rec) + bias.
 * Units 0..n-1 of H: gate g of unit j is at [g * H + j] in a, rec, bias
 * and peep (a caller that splits the units offsets the pointers).
 * a (4H): in, overwritten with the activated i, f, g, o when c_out is not
 * NULL (training), else left as it was. c (n): state, updated in place.
 * h, h_out (n): where h_t goes (the next state; the output).
 * c_out (n): where c_t is kept, or NULL. */
/* Unit j's step (with vector types, LANES units from j), written once for
 * the scalar loop below and the AVX2 loop of float32 (cell_forward_f32_fma):
 * LD and ST load and store a T, SIG and TANH are its activations. */
#define LSTMX_CELL_STEP(T, LD, ST, SIG, TANH, j)                              \
    {                                                                         \
        T c_prev = LD(c + (j));                                               \
        T i = SIG(LD(a + (j)) + LD(rec + (j)) + LD(bias + (j))                \
                  + LD(peep + (j)) * c_prev);                                 \
        T f = SIG(LD(a + H + (j)) + LD(rec + H + (j)) + LD(bias + H + (j))    \
                  + LD(peep + H + (j)) * c_prev);                             \
        T g = TANH(LD(a + 2 * H + (j)) + LD(rec + 2 * H + (j))                \
                   + LD(bias + 2 * H + (j)));                                 \
        T f_c = f * c_prev;                                                   \
        LSTMX_ROUNDED(f_c);                                                   \
        T c_t = f_c + i * g;                                                  \
        T o = SIG(LD(a + 3 * H + (j)) + LD(rec + 3 * H + (j))                 \
                  + LD(bias + 3 * H + (j)) + LD(peep + 2 * H + (j)) * c_t);   \
        T h_t = o * TANH(c_t);                                                \
        ST(c + (j), c_t);                                                     \
        ST(h + (j), h_t);                                                     \
        ST(h_out + (j), h_t);                                                 \
        if (keep) {                                                           \
            ST(a + (j), i);                                                   \
            ST(a + H + (j), f);                                               \
            ST(a + 2 * H + (j), g);                                           \
            ST(a + 3 * H + (j), o);                                           \
            ST(c_out + (j), c_t);                                             \
        }                                                                     \
    }

#define LSTMX_SCALAR_LD(p) (*(p))
#define LSTMX_SCALAR_ST(p, v) (*(p) = (v))

/* Units j0..n-1 */
#define LSTMX_CELL_FORWARD_LOOP(T, SFX)                                       \
static inline LSTMX_INLINE void cell_forward_loop_##SFX(                      \
    ptrdiff_t j0, ptrdiff_t n, ptrdiff_t H, T *restrict a,                    \
    const T *restrict rec, const T *restrict bias, const T *restrict peep,    \
    T *restrict h, T *restrict c, T *restrict h_out, T *restrict c_out,       \
    const int keep)                                                           \
{                                                                             \
    for (ptrdiff_t j = j0; j < n; j++)                                        \
        LSTMX_CELL_STEP(T, LSTMX_SCALAR_LD, LSTMX_SCALAR_ST, sigmoid_##SFX,   \
                        tanh_##SFX, j)                                        \
}

LSTMX_CELL_FORWARD_LOOP(float, f32)
LSTMX_CELL_FORWARD_LOOP(double, f64)

/* (the loop is inlined twice with a constant `keep`, so that each copy is
 * one branch-free vectorized loop) */
#define LSTMX_CELL_FORWARD(T, SFX, V, ATTR)                                   \
static ATTR void cell_forward_##SFX##V(                                       \
    ptrdiff_t n, ptrdiff_t H, T *restrict a, const T *restrict rec,           \
    const T *restrict bias, const T *restrict peep, T *restrict h,            \
    T *restrict c, T *restrict h_out, T *restrict c_out)                      \
{                                                                             \
    if (c_out)                                                                \
        cell_forward_loop_##SFX(0, n, H, a, rec, bias, peep, h, c, h_out,     \
                                c_out, 1);                                    \
    else                                                                      \
        cell_forward_loop_##SFX(0, n, H, a, rec, bias, peep, h, c, h_out,     \
                                c_out, 0);                                    \
}

/* Backward, one step (seed 002 eqs 2-10, plus the peephole terms):
 *   dh    = dh_out + dh_next                 (from above, from step t+1)
 *   da_o  = dh tanh(c) o (1 - o)
 *   dc_t  = dc + dh o (1 - tanh^2 c) + p_o da_o
 *   da_i  = dc_t g i (1 - i)    da_f = dc_t c_prev f (1 - f)
 *   da_g  = dc_t i (1 - g^2)
 *   dc_prev = dc_t f + p_i da_i + p_f da_f
 *   dp_i += da_i c_prev   dp_f += da_f c_prev   dp_o += da_o c_t
 * act (4H): activated i, f, g, o. dc (H): dL/dc_t in, dL/dc_{t-1} out.
 * da (4H): out. dpeep (3H): accumulated. */
#define LSTMX_CELL_BACKWARD(T, SFX, TS, V, ATTR)                              \
static ATTR void cell_backward_##SFX##V(                                      \
    ptrdiff_t H, const T *restrict act, const T *restrict c_t,                \
    const T *restrict c_prev, const T *restrict peep,                         \
    const T *restrict dh_out, const T *restrict dh_next, T *restrict dc,      \
    T *restrict da, T *restrict dpeep)                                        \
{                                                                             \
    for (ptrdiff_t j = 0; j < H; j++) {                                       \
        T i = act[j], f = act[H + j], g = act[2 * H + j], o = act[3 * H + j]; \
        T tc = tanh_##TS(c_t[j]);                                             \
        T dh = dh_out[j] + dh_next[j];                                        \
        T da_o = dh * tc * o * (1 - o);                                       \
        T d_c = dc[j] + dh * o * (1 - tc * tc) + peep[2 * H + j] * da_o;      \
        T da_i = d_c * g * i * (1 - i);                                       \
        T da_f = d_c * c_prev[j] * f * (1 - f);                               \
        T da_g = d_c * i * (1 - g * g);                                       \
        dc[j] = d_c * f + peep[j] * da_i + peep[H + j] * da_f;                \
        da[j] = da_i;                                                         \
        da[H + j] = da_f;                                                     \
        da[2 * H + j] = da_g;                                                 \
        da[3 * H + j] = da_o;                                                 \
        dpeep[j] += da_i * c_prev[j];                                         \
        dpeep[H + j] += da_f * c_prev[j];                                     \
        dpeep[2 * H + j] += da_o * c_t[j];                                    \
    }                                                                         \
}


/* ---- recurrent matrix-vector products on W_h as it is (one sequence) ---- */

/* One step of one sequence needs rec = W_h h_{t-1} (forward) and
 * dh_{t-1} = W_h^T da (backward), W_h (4H, H) row-major. These are done
 * here rather than by BLAS, whose per-step call overhead and threads cost
 * more than the product. A single sequence's forward step runs the packed
 * GEMM's one-row kernel when W_h fits L2; matmat serves a W_h larger than
 * that (_lstm.pyx's ONE_PACKED_MAX_BYTES), matmat_t backward. In the
 * AVX2 + FMA build float32's matmat sums a row the same way whichever rows
 * it is computed with (matmat_f32_fma); the generic dot4 and dot1 below can
 * differ by an ulp (seen in float64 with K % 4 != 0), so a split of those
 * agrees with one thread to rounding (tests/test_split.py). */

#if defined(__GNUC__) && !defined(LSTMX_PLAIN_C)  /* GCC, clang: vector extensions */

/* The vector types of the baseline and AVX2 + FMA builds (256 bits: 8
 * float32 or 4 float64 lanes), loaded and summed across lanes by macros,
 * not functions: clang refuses a function built without AVX that takes or
 * returns such a vector (it would change the ABI), and these generic
 * helpers run inlined into each build's functions. */
typedef float vec_f32 __attribute__((vector_size(32)));
typedef double vec_f64 __attribute__((vector_size(32)));
#define LSTMX_LOAD(V, p)                                                      \
    (__extension__({ V v_; memcpy(&v_, (p), sizeof v_); v_; }))
#define load_f32(p) LSTMX_LOAD(vec_f32, p)
#define load_f64(p) LSTMX_LOAD(vec_f64, p)
#define LSTMX_HSUM(T, LANES, v)                                               \
    (__extension__({                                                          \
        T s_ = 0;                                                             \
        for (int l_ = 0; l_ < (LANES); l_++)                                  \
            s_ += (v)[l_];                                                    \
        s_;                                                                   \
    }))

/* The dot products of four rows (or one) of W with x, each summed in two
 * LANES-wide partial sums (so that the adds of one row do not wait on each
 * other), then across lanes, then the remainder. */
#define LSTMX_DOTS(T, SFX, LANES)                                             \
static inline LSTMX_INLINE void dot4_##SFX(ptrdiff_t K, const T *w0,          \
                                           const T *x, T *y)                  \
{                                                                             \
    const T *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;                         \
    vec_##SFX a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                         \
    vec_##SFX b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};                         \
    ptrdiff_t k = 0;                                                          \
    for (; k + 2 * LANES <= K; k += 2 * LANES) {                              \
        vec_##SFX xa = load_##SFX(x + k), xb = load_##SFX(x + k + LANES);     \
        a0 += load_##SFX(w0 + k) * xa;                                        \
        b0 += load_##SFX(w0 + k + LANES) * xb;                                \
        a1 += load_##SFX(w1 + k) * xa;                                        \
        b1 += load_##SFX(w1 + k + LANES) * xb;                                \
        a2 += load_##SFX(w2 + k) * xa;                                        \
        b2 += load_##SFX(w2 + k + LANES) * xb;                                \
        a3 += load_##SFX(w3 + k) * xa;                                        \
        b3 += load_##SFX(w3 + k + LANES) * xb;                                \
    }                                                                         \
    for (; k + LANES <= K; k += LANES) {                                      \
        vec_##SFX xa = load_##SFX(x + k);                                     \
        a0 += load_##SFX(w0 + k) * xa;                                        \
        a1 += load_##SFX(w1 + k) * xa;                                        \
        a2 += load_##SFX(w2 + k) * xa;                                        \
        a3 += load_##SFX(w3 + k) * xa;                                        \
    }                                                                         \
    vec_##SFX c0 = a0 + b0, c1 = a1 + b1, c2 = a2 + b2, c3 = a3 + b3;         \
    T s0 = LSTMX_HSUM(T, LANES, c0), s1 = LSTMX_HSUM(T, LANES, c1);           \
    T s2 = LSTMX_HSUM(T, LANES, c2), s3 = LSTMX_HSUM(T, LANES, c3);           \
    for (; k < K; k++) {                                                      \
        s0 += w0[k] * x[k];                                                   \
        s1 += w1[k] * x[k];                                                   \
        s2 += w2[k] * x[k];                                                   \
        s3 += w3[k] * x[k];                                                   \
    }                                                                         \
    y[0] = s0;                                                                \
    y[1] = s1;                                                                \
    y[2] = s2;                                                                \
    y[3] = s3;                                                                \
}                                                                             \
                                                                              \
static inline LSTMX_INLINE T dot1_##SFX(ptrdiff_t K, const T *w0, const T *x) \
{                                                                             \
    vec_##SFX a0 = {0}, b0 = {0};                                             \
    ptrdiff_t k = 0;                                                          \
    for (; k + 2 * LANES <= K; k += 2 * LANES) {                              \
        a0 += load_##SFX(w0 + k) * load_##SFX(x + k);                         \
        b0 += load_##SFX(w0 + k + LANES) * load_##SFX(x + k + LANES);         \
    }                                                                         \
    for (; k + LANES <= K; k += LANES)                                        \
        a0 += load_##SFX(w0 + k) * load_##SFX(x + k);                         \
    vec_##SFX c0 = a0 + b0;                                                   \
    T s0 = LSTMX_HSUM(T, LANES, c0);                                          \
    for (; k < K; k++)                                                        \
        s0 += w0[k] * x[k];                                                   \
    return s0;                                                                \
}

#else  /* no vector extensions (MSVC): one lane, the same order otherwise */

#define LSTMX_DOTS(T, SFX, LANES)                                             \
static inline T dot1_##SFX(ptrdiff_t K, const T *w0, const T *x)              \
{                                                                             \
    T s = 0;                                                                  \
    for (ptrdiff_t k = 0; k < K; k++)                                         \
        s += w0[k] * x[k];                                                    \
    return s;                                                                 \
}                                                                             \
                                                                              \
static inline void dot4_##SFX(ptrdiff_t K, const T *w0, const T *x, T *y)     \
{                                                                             \
    for (int q = 0; q < 4; q++)                                               \
        y[q] = dot1_##SFX(K, w0 + q * K, x);                                  \
}

#endif

/* Y[n] (M) = W (M, K) X[n] (K) for the N vectors X[n] = X + n ldx, Y[n] =
 * Y + n ldy: a block of four rows of W is read once from memory and used
 * for every n while it is in L1 (unlike N matvecs). */
#define LSTMX_MATMAT(T, SFX, V, ATTR)                                          \
static ATTR void matmat_##SFX##V(ptrdiff_t M, ptrdiff_t K,                    \
                                     const T *restrict W, ptrdiff_t N,        \
                                     const T *restrict X, ptrdiff_t ldx,      \
                                     T *restrict Y, ptrdiff_t ldy)            \
{                                                                             \
    ptrdiff_t r = 0;                                                          \
    for (; r + 4 <= M; r += 4)                                                \
        for (ptrdiff_t n = 0; n < N; n++)                                     \
            dot4_##SFX(K, W + r * K, X + n * ldx, Y + n * ldy + r);           \
    for (; r < M; r++)                                                        \
        for (ptrdiff_t n = 0; n < N; n++)                                     \
            Y[n * ldy + r] = dot1_##SFX(K, W + r * K, X + n * ldx);           \
}

#define LSTMX_MATMAT_T(T, SFX, V, ATTR)                                        \
/* Y[n] (K) = W^T X[n] with W (M, K) and X[n] (M): Y[n] += X[n][r] W[r, :]    \
 * row by row, four rows at a time; the loop over k is elementwise, so it    \
 * vectorizes as it is, and the four rows stay in L1 for every n. */         \
static ATTR void matmat_t_##SFX##V(ptrdiff_t M, ptrdiff_t K,                 \
                                       const T *restrict W, ptrdiff_t N,      \
                                       const T *restrict X, ptrdiff_t ldx,    \
                                       T *restrict Y, ptrdiff_t ldy)          \
{                                                                             \
    for (ptrdiff_t n = 0; n < N; n++)                                         \
        for (ptrdiff_t k = 0; k < K; k++)                                     \
            Y[n * ldy + k] = 0;                                               \
    ptrdiff_t r = 0;                                                          \
    for (; r + 4 <= M; r += 4) {                                              \
        const T *w0 = W + r * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;    \
        for (ptrdiff_t n = 0; n < N; n++) {                                   \
            const T *x = X + n * ldx;                                         \
            T *y = Y + n * ldy;                                               \
            T x0 = x[r], x1 = x[r + 1], x2 = x[r + 2], x3 = x[r + 3];         \
            for (ptrdiff_t k = 0; k < K; k++)                                 \
                y[k] = y[k] + x0 * w0[k] + x1 * w1[k] + x2 * w2[k]            \
                       + x3 * w3[k];                                          \
        }                                                                     \
    }                                                                         \
    for (; r < M; r++)                                                        \
        for (ptrdiff_t n = 0; n < N; n++)                                     \
            for (ptrdiff_t k = 0; k < K; k++)                                 \
                Y[n * ldy + k] += X[n * ldx + r] * W[r * K + k];              \
}

LSTMX_DOTS(float, f32, 8)
LSTMX_DOTS(double, f64, 4)

/* ---- recurrent products of many sequences: a GEMM on W_h packed once ---- */

/* With several sequences a step's recurrent product is a GEMM,
 * C (N, M) = A (N, K) B, the same B (W_h or W_h^T) at every step (also used
 * once per call on W_x^T, for a split single sequence's projection). BLAS
 * packs B anew at every call (sgemm_*copy was 11% of big_infer and 21% of
 * seed_train); here B is packed once per recurrence into panels of NR
 * columns, P[p][k][c] = B[k][p NR + c] (zeros past the last column), and
 * every step runs register tiles of MR rows x NR columns over it. Each
 * C[n][m] is summed over k = 0, 1, ..., K-1 in order, in one tile or
 * another: the same bits whichever rows and columns a thread computes. */
#define LSTMX_MR 6
/* The AVX-512 build's tiles: 8 rows, 16 accumulators of its 32 registers
 * (the AVX2 build has 16 registers: 12 accumulators, 2 of B and 1 of A).
 * One core, the other running the same, GFLOP/s of gemm_packed, 6 / 8
 * rows: N=64 M=256 K=512 (big_infer's gate block of a half) 192/200, N=32
 * M=1280 K=320 (seed_train's step) 184/195, N=7 134/179; gemm_tn at
 * small_train's weight gradients (M=128 Nc=64 K=1600) 159/178. */
#define LSTMX_MR_512 8
#define LSTMX_MR_MAX 8
/* the widest panel: float32's in the AVX-512 build */
#define LSTMX_NR_MAX 32
_Static_assert(LSTMX_MR_MAX == 8, "LSTMX_TILE_CALL's cases assume 8");

/* Rows of the next register tile when `left` rows remain, of tiles of at
 * most mr rows: mr, but the last mr + 1 to mr + 3 as two tiles of about
 * half each (for mr = 6: 7, 8 or 9 as 4+3, 4+4 or 5+4), since 2 or 3 rows
 * alone keep 4 or 6 accumulators, each FMA waiting on the one before
 * (seed_train's 32 rows a thread: tiles of 6, 6, 6, 6, 4, 4, or 8, 8, 8,
 * 8). gemm_packed gives a lone last row to row_ instead, so it never asks
 * for mr + 1. */
static inline ptrdiff_t lstmx_tile_rows(ptrdiff_t left, ptrdiff_t mr)
{
    return left == mr || left >= mr + 4 ? mr : left > mr ? (left + 1) / 2 : left;
}

/* tile(K, n, ...) with n (rows, or row_'s panels) a constant in each case:
 * each count its own unrolled loop */
#define LSTMX_TILE_CALL(tile, K, mr, ...)                                     \
    switch (mr) {                                                             \
    case 8: tile(K, 8, __VA_ARGS__); break;                                   \
    case 7: tile(K, 7, __VA_ARGS__); break;                                   \
    case 6: tile(K, 6, __VA_ARGS__); break;                                   \
    case 5: tile(K, 5, __VA_ARGS__); break;                                   \
    case 4: tile(K, 4, __VA_ARGS__); break;                                   \
    case 3: tile(K, 3, __VA_ARGS__); break;                                   \
    case 2: tile(K, 2, __VA_ARGS__); break;                                   \
    default: tile(K, 1, __VA_ARGS__); break;                                  \
    }

#if defined(__GNUC__) && !defined(LSTMX_PLAIN_C)

/* The accumulators start at zero element by element: "= {{0}}" became a
 * memset of the arrays (rep stos), 45% of the packed GEMM's samples at
 * K = 16 (small_infer's projection). One core, float32, best of 200 calls,
 * before / after: GEMM 500 x 16 by 16 x 256 117/73 us (35 -> 56 GFLOP/s),
 * 200 x 360 by 360 x 1280 2294-2437/2147-2355 us; one row by 4 blocks of
 * 64 x 32 (small_infer's half of W_h) 305-325/251-261 ns. */
#define LSTMX_ZERO_ACCUMULATORS(SFX)                                          \
    for (int r = 0; r < (int)(sizeof lo / sizeof lo[0]); r++) {               \
        lo[r] = (vec_##SFX){0};                                               \
        hi[r] = (vec_##SFX){0};                                               \
    }

/* The register tile lo[r], hi[r] (row r < mr of 2 LANES columns) stored
 * transposed, C[c ldc + r] for c < nc, lane by lane (the AVX-512 build
 * transposes in registers: store_t_f32z, store_t_f64z). */
#define LSTMX_STORE_T_LANES(T, SFX, LANES)                                    \
static inline LSTMX_INLINE void store_t_lanes_##SFX(const int mr,             \
                                                    const vec_##SFX *lo,      \
                                                    const vec_##SFX *hi,      \
                                                    T *restrict C,            \
                                                    ptrdiff_t ldc,            \
                                                    ptrdiff_t nc)             \
{                                                                             \
    for (ptrdiff_t c = 0; c < nc; c++)                                        \
        for (int r = 0; r < mr; r++)                                          \
            C[c * ldc + r] = c < LANES ? lo[r][c] : hi[r][c - LANES];         \
}
LSTMX_STORE_T_LANES(float, f32, 8)
LSTMX_STORE_T_LANES(double, f64, 4)
#define store_t_f32 store_t_lanes_f32
#define store_t_f64 store_t_lanes_f64

#define LSTMX_GEMM_TILE(T, SFX, LANES)                                        \
/* lo[r], hi[r] (r < mr) += sum_k A[r sr + k sk] B[k ldb + 0..2 LANES), each  \
 * sum on over k in order (inlined: the accumulators stay in registers).      \
 * With nv = 1 (a constant) only lo and the first LANES columns. */          \
static inline LSTMX_INLINE void tile_sums_nv_##SFX(ptrdiff_t K, const int mr, \
                                                   const int nv,              \
                                                   const T *restrict A,       \
                                                   ptrdiff_t sr,              \
                                                   ptrdiff_t sk,              \
                                                   const T *restrict B,       \
                                                   ptrdiff_t ldb,             \
                                                   vec_##SFX *lo,             \
                                                   vec_##SFX *hi)             \
{                                                                             \
    /* k four at a time (each sum still in order): one core, 384 x 512 by    \
     * 512 x 2048, float32 55-59 -> 69-71 GFLOP/s, float64 30-38 -> 36-39 */  \
    _Pragma("GCC unroll 4")                                                   \
    for (ptrdiff_t k = 0; k < K; k++) {                                       \
        vec_##SFX b0 = load_##SFX(B + k * ldb);                               \
        vec_##SFX b1 = nv > 1 ? load_##SFX(B + k * ldb + LANES) : b0;         \
        for (int r = 0; r < mr; r++) {                                        \
            T a = A[r * sr + k * sk];                                         \
            lo[r] += b0 * a;                                                  \
            if (nv > 1)                                                       \
                hi[r] += b1 * a;                                              \
        }                                                                     \
    }                                                                         \
}                                                                             \
                                                                              \
/* The sums of the columns below nc: a panel's columns past the first LANES   \
 * are zeros when nc <= LANES, whose sums are not stored, so one vector of    \
 * them is summed (a last panel of 8 rows of 32: gemm_packed_a). */          \
static inline LSTMX_INLINE void tile_sums_##SFX(ptrdiff_t K, const int mr,    \
                                                ptrdiff_t nc,                 \
                                                const T *restrict A,          \
                                                ptrdiff_t sr, ptrdiff_t sk,   \
                                                const T *restrict B,          \
                                                ptrdiff_t ldb,                \
                                                vec_##SFX *lo, vec_##SFX *hi) \
{                                                                             \
    if (nc <= LANES)                                                          \
        tile_sums_nv_##SFX(K, mr, 1, A, sr, sk, B, ldb, lo, hi);              \
    else                                                                      \
        tile_sums_nv_##SFX(K, mr, 2, A, sr, sk, B, ldb, lo, hi);              \
}                                                                             \
                                                                              \
/* C[r][0..nc) (+)= sum_k A[r sr + k sk] B[k ldb + 0..nc) for r < mr, k < K:  \
 * NR = 2 LANES columns, 2 mr accumulators (12 vector registers at mr = 6).   \
 * The sums start from zero (first) or from C, so that blocks of k carry      \
 * each sum on in order. gemm_packed's A is row-major (sr = lda, sk = 1)     \
 * and B a packed panel (ldb = NR); gemm_tn's A is transposed (sr = 1,       \
 * sk = lda). */                                                              \
static inline LSTMX_INLINE void tile_##SFX(ptrdiff_t K, const int mr,         \
                                           const T *restrict A, ptrdiff_t sr, \
                                           ptrdiff_t sk, const T *restrict B, \
                                           ptrdiff_t ldb, T *restrict C,      \
                                           ptrdiff_t ldc, ptrdiff_t nc,       \
                                           int first)                         \
{                                                                             \
    vec_##SFX lo[LSTMX_MR_MAX], hi[LSTMX_MR_MAX];                             \
    LSTMX_ZERO_ACCUMULATORS(SFX)                                              \
    for (int r = 0; r < mr && !first; r++) {                                  \
        if (nc == 2 * LANES) {                                                \
            lo[r] = load_##SFX(C + r * ldc);                                  \
            hi[r] = load_##SFX(C + r * ldc + LANES);                          \
        } else {                                                              \
            T row[2 * LANES] = {0};                                           \
            memcpy(row, C + r * ldc, nc * sizeof(T));                         \
            lo[r] = load_##SFX(row);                                          \
            hi[r] = load_##SFX(row + LANES);                                  \
        }                                                                     \
    }                                                                         \
    tile_sums_##SFX(K, mr, nc, A, sr, sk, B, ldb, lo, hi);                    \
    for (int r = 0; r < mr; r++) {                                            \
        if (nc == 2 * LANES) {                                                \
            memcpy(C + r * ldc, &lo[r], sizeof lo[r]);                        \
            memcpy(C + r * ldc + LANES, &hi[r], sizeof hi[r]);                \
        } else {                                                              \
            T row[2 * LANES];                                                 \
            memcpy(row, &lo[r], sizeof lo[r]);                                \
            memcpy(row + LANES, &hi[r], sizeof hi[r]);                        \
            memcpy(C + r * ldc, row, nc * sizeof(T));                         \
        }                                                                     \
    }                                                                         \
}                                                                             \
                                                                              \
/* mr rows (1 to 3) across np panels at once, mr np <= LSTMX_MR (gemv asks   \
 * no more; its switch builds np = 7, 8 too, never run): Cq[q][r ldc + c] =   \
 * sum_k A[r lda + k] P_q[k][c] for c < nc[q], panel q at P + q NR K. A tile  \
 * of 1, 2 or 3 rows over one panel keeps 2, 4 or 6 accumulators, each FMA   \
 * waiting on the one before; np panels keep 2 mr np in flight, as tile's     \
 * 6 rows do. The same sums in the same order as tile's. */                   \
static inline LSTMX_INLINE void row_##SFX(ptrdiff_t K, const int np,          \
                                          const int mr, const T *restrict A,  \
                                          ptrdiff_t lda, const T *restrict P, \
                                          T *const *Cq, ptrdiff_t ldc,        \
                                          const ptrdiff_t *nc)                \
{                                                                             \
    const ptrdiff_t NR = 2 * LANES;                                           \
    vec_##SFX lo[LSTMX_MR_MAX], hi[LSTMX_MR_MAX];                             \
    LSTMX_ZERO_ACCUMULATORS(SFX)                                              \
    /* as tile's: one row of 64 (small_infer's half of W_h, 128 x 64) 711    \
     * -> 403-512 ns, 640 x 320 15.3-15.6 -> 12.3-13.7 us */                \
    _Pragma("GCC unroll 4")                                                   \
    for (ptrdiff_t k = 0; k < K; k++) {                                       \
        for (int r = 0; r < mr; r++) {                                        \
            T a = A[r * lda + k];                                             \
            for (int q = 0; q < np; q++) {                                    \
                lo[r * np + q] += load_##SFX(P + q * NR * K + k * NR) * a;    \
                hi[r * np + q] += load_##SFX(P + q * NR * K + k * NR + LANES) \
                                  * a;                                        \
            }                                                                 \
        }                                                                     \
    }                                                                         \
    for (int r = 0; r < mr; r++)                                              \
        for (int q = 0; q < np; q++) {                                        \
            T *C = Cq[q] + r * ldc;                                           \
            if (nc[q] == 2 * LANES) {                                         \
                memcpy(C, &lo[r * np + q], sizeof lo[0]);                     \
                memcpy(C + LANES, &hi[r * np + q], sizeof hi[0]);             \
            } else {                                                          \
                T row[2 * LANES];                                             \
                memcpy(row, &lo[r * np + q], sizeof lo[0]);                   \
                memcpy(row + LANES, &hi[r * np + q], sizeof hi[0]);           \
                memcpy(C, row, nc[q] * sizeof(T));                            \
            }                                                                 \
        }                                                                     \
}

/* C[c ldc + r] = sum_k A[r lda + k] B[k NR + c] for r < mr, c < nc, sums
 * from zero: tile_'s, stored transposed (gemm_packed_a: A is W, B a panel
 * of the packed rows of X) by store_t, which the AVX-512 build writes with
 * intrinsics: so this is built for each target, not inlined generic. */
#define LSTMX_TILE_T(T, SFX, LANES, V, ATTR)                                  \
static inline LSTMX_INLINE ATTR void tile_t_##SFX##V(ptrdiff_t K,             \
                                                     const int mr,            \
                                                     const T *restrict A,     \
                                                     ptrdiff_t lda,           \
                                                     const T *restrict B,     \
                                                     T *restrict C,           \
                                                     ptrdiff_t ldc,           \
                                                     ptrdiff_t nc)            \
{                                                                             \
    vec_##SFX lo[LSTMX_MR_MAX], hi[LSTMX_MR_MAX];                             \
    LSTMX_ZERO_ACCUMULATORS(SFX)                                              \
    tile_sums_##SFX(K, mr, nc, A, lda, 1, B, 2 * LANES, lo, hi);              \
    store_t_##SFX(mr, lo, hi, C, ldc, nc);                                    \
}

#else  /* no vector extensions: the same sums, one column at a time */

#define LSTMX_GEMM_TILE(T, SFX, LANES)                                        \
static inline void tile_##SFX(ptrdiff_t K, const int mr, const T *A,          \
                              ptrdiff_t sr, ptrdiff_t sk, const T *B,         \
                              ptrdiff_t ldb, T *C, ptrdiff_t ldc,             \
                              ptrdiff_t nc, int first)                        \
{                                                                             \
    for (int r = 0; r < mr; r++)                                              \
        for (ptrdiff_t j = 0; j < nc; j++) {                                  \
            T s = first ? 0 : C[r * ldc + j];                                 \
            for (ptrdiff_t k = 0; k < K; k++)                                 \
                s += A[r * sr + k * sk] * B[k * ldb + j];                     \
            C[r * ldc + j] = s;                                               \
        }                                                                     \
}                                                                             \
                                                                              \
static inline void row_##SFX(ptrdiff_t K, const int np, const int mr,         \
                             const T *A, ptrdiff_t lda, const T *P,           \
                             T *const *Cq, ptrdiff_t ldc, const ptrdiff_t *nc) \
{                                                                             \
    for (int q = 0; q < np; q++)                                              \
        tile_##SFX(K, mr, A, lda, 1, P + q * 2 * LANES * K, 2 * LANES, Cq[q], \
                   ldc, nc[q], 1);                                            \
}

#define LSTMX_TILE_T(T, SFX, LANES, V, ATTR)                                  \
static inline void tile_t_##SFX##V(ptrdiff_t K, const int mr, const T *A,     \
                                   ptrdiff_t lda, const T *B, T *C,           \
                                   ptrdiff_t ldc, ptrdiff_t nc)               \
{                                                                             \
    for (int r = 0; r < mr; r++)                                              \
        for (ptrdiff_t j = 0; j < nc; j++) {                                  \
            T s = 0;                                                          \
            for (ptrdiff_t k = 0; k < K; k++)                                 \
                s += A[r * lda + k] * B[k * 2 * LANES + j];                   \
            C[j * ldc + r] = s;                                               \
        }                                                                     \
}

#endif

/* Packing (a plain loop: once per recurrence, not per step). NR = 2 LANES.
 * B[k][m] = W[m sm + k sk]: sm = ldw, sk = 1 packs B = W^T for W (M, K)
 * (forward: rec = h W_h^T); sm = 1, sk = ldw packs B = W for W (K, M)
 * (backward: dh = da W_h). */
/* Row k of a block into tiles of w columns, kc rows each: the n values of
 * src go to dst[t w kc + c] for column t w + c (dst at row k's place in
 * the first tile), zeros past n in the last tile. A row is read whole and
 * in order: a tile at a time, each row's few values came from a line of
 * their own (gemm_tn_packed's A, rows 5 KB apart: a fifth of its samples,
 * each read waiting on memory). */
#define LSTMX_PACK_ROW(T, SFX)                                                \
static inline LSTMX_INLINE void lstmx_pack_row_##SFX(ptrdiff_t n,             \
                                                     ptrdiff_t w,             \
                                                     ptrdiff_t kc,            \
                                                     const T *restrict src,   \
                                                     T *restrict dst)         \
{                                                                             \
    ptrdiff_t j = 0;                                                          \
    for (; j + w <= n; j += w, dst += w * kc)                                 \
        memcpy(dst, src + j, w * sizeof(T));                                  \
    for (ptrdiff_t c = 0; j < n && c < w; c++)                                \
        dst[c] = j + c < n ? src[j + c] : 0;                                  \
}
LSTMX_PACK_ROW(float, f32)
LSTMX_PACK_ROW(double, f64)

/* (TS: T's suffix, for lstmx_pack_row) */
#define LSTMX_PACK(T, SFX, TS, LANES)                                         \
static ptrdiff_t packed_size_##SFX(ptrdiff_t M, ptrdiff_t K)                  \
{                                                                             \
    return (M + 2 * LANES - 1) / (2 * LANES) * 2 * LANES * K;                 \
}                                                                             \
                                                                              \
static void pack_##SFX(ptrdiff_t M, ptrdiff_t K, const T *W, ptrdiff_t sm,    \
                        ptrdiff_t sk, T *P)                                   \
{                                                                             \
    const ptrdiff_t NR = 2 * LANES;                                           \
    if (sm == 1) {   /* B's rows are W's: a row of k at a time */             \
        for (ptrdiff_t k = 0; k < K; k++)                                     \
            lstmx_pack_row_##TS(M, NR, K, W + k * sk, P + k * NR);            \
        return;                                                               \
    }                                                                         \
    for (ptrdiff_t j0 = 0; j0 < M; j0 += NR, P += NR * K)                     \
        for (ptrdiff_t k = 0; k < K; k++)                                     \
            for (ptrdiff_t c = 0; c < NR; c++)                                \
                P[k * NR + c] = j0 + c < M ? W[(j0 + c) * sm + k * sk] : 0;   \
}

/* One sequence: y[b gs + m] (m < M) = sum_k x[k] B_b[k][m] for the B blocks
 * packed one after another in P (packed_size(M, K) each; several blocks
 * are a thread's units of each gate). Or, with B = 1, mr = 2 or 3 rows of
 * x, ldx apart, into rows of y ldy apart (gemm_packed's N <= 3). Panels
 * are taken across the blocks' boundaries, at most LSTMX_MR / mr at a time
 * for row_'s many accumulators, in groups as even as that allows: 8
 * panels as 4 + 4 rather than 6 + 2, whose 4 accumulators wait on each
 * FMA's latency. With that and row_ storing full panels without a call to
 * memcpy (4% of small_infer's samples were libc's memmove under it): one
 * core, float32, K = 64, 4 blocks, best of 200 x 1000 calls, ns, before /
 * after: 32 columns a block (small_infer's half) 343/305, 64 873/793, 128
 * 1737/1585. The groups change no sum: each column is summed alone, and so
 * backwards takes the groups from the last to the first with the same bits
 * (a recurrence alternates it: small_infer's 64 KB of W_h against a 48 KB
 * L1, 0.60-0.62 -> 0.51-0.53 ms). */
#define LSTMX_GEMV_PACKED(T, SFX, LANES, V, ATTR)                             \
static ATTR void gemv_packed_##SFX##V(ptrdiff_t B, ptrdiff_t M, ptrdiff_t K,  \
                                      const T *restrict x,                    \
                                      const T *restrict P, T *restrict y,     \
                                      ptrdiff_t gs, const int mr,             \
                                      ptrdiff_t ldx, ptrdiff_t ldy,           \
                                      int backwards)                          \
{                                                                             \
    const ptrdiff_t NR = 2 * LANES, ppb = (M + NR - 1) / NR;                  \
    const ptrdiff_t panels = B * ppb, per = LSTMX_MR / mr;                    \
    const ptrdiff_t groups = (panels + per - 1) / per;                        \
    for (ptrdiff_t g = 0; g < groups; g++) {                                  \
        const ptrdiff_t gi = backwards ? groups - 1 - g : g;                  \
        const ptrdiff_t q0 = panels * gi / groups;                            \
        const int np = (int)(panels * (gi + 1) / groups - q0);                \
        T *Cq[LSTMX_MR_MAX];                                                  \
        ptrdiff_t nc[LSTMX_MR_MAX];                                           \
        for (int p = 0; p < np; p++) {                                        \
            ptrdiff_t b = (q0 + p) / ppb, j0 = (q0 + p) % ppb * NR;           \
            Cq[p] = y + b * gs + j0;                                          \
            nc[p] = M - j0 < NR ? M - j0 : NR;                                \
        }                                                                     \
        const T *Pq = P + q0 * NR * K;                                        \
        if (mr == 1)                                                          \
            LSTMX_TILE_CALL(row_##SFX, K, np, 1, x, ldx, Pq, Cq, ldy, nc)     \
        else if (mr == 2 && np == 3)                                          \
            row_##SFX(K, 3, 2, x, ldx, Pq, Cq, ldy, nc);                      \
        else if (mr == 2 && np == 2)                                          \
            row_##SFX(K, 2, 2, x, ldx, Pq, Cq, ldy, nc);                      \
        else if (mr == 2)                                                     \
            row_##SFX(K, 1, 2, x, ldx, Pq, Cq, ldy, nc);                      \
        else if (np == 2)                                                     \
            row_##SFX(K, 2, 3, x, ldx, Pq, Cq, ldy, nc);                      \
        else                                                                  \
            row_##SFX(K, 1, 3, x, ldx, Pq, Cq, ldy, nc);                      \
    }                                                                         \
}

/* C (N, M), rows ldc apart, = A (N, K), rows lda apart, times the B packed
 * in P. Blocks of rows outside (see below), then column panels, then row
 * tiles: a panel (NR K values, 20 KB at K = 320 in float32) stays in L1
 * while every row tile of a block reads it. */
#define LSTMX_GEMM_ROWS_BYTES (1 << 20)
/* rows of K elements of size bytes in such a block: a multiple of mr */
static inline ptrdiff_t lstmx_block_rows(ptrdiff_t K, size_t size, ptrdiff_t mr)
{
    ptrdiff_t rows = LSTMX_GEMM_ROWS_BYTES / (K * (ptrdiff_t)size) / mr * mr;
    return rows < mr ? mr : rows;
}
#define LSTMX_GEMM_PACKED(T, SFX, LANES, MR, V, ATTR)                         \
static ATTR void gemm_packed_##SFX##V(ptrdiff_t N, ptrdiff_t M, ptrdiff_t K,  \
                                      const T *restrict A, ptrdiff_t lda,     \
                                      const T *restrict P, T *restrict C,     \
                                      ptrdiff_t ldc, int backwards)           \
{                                                                             \
    const ptrdiff_t NR = 2 * LANES, panels = (M + NR - 1) / NR;               \
    /* up to 3 rows are row_'s across several panels, as is a lone last row   \
     * (N = 7, 13, ...) after the tiles. One core, us, tiles / row_: N = 2    \
     * 1.71/1.22 at M = 256, K = 64, 41.8/34.0 at M = 1280, K = 320; N = 3    \
     * 1.82/1.79 and 39.1/35.0. */                                            \
    if (N >= 1 && N <= 3) {                                                  \
        gemv_packed_##SFX##V(1, M, K, A, P, C, 0, (int)N, lda, ldc,           \
                             backwards);                                      \
        return;                                                               \
    }                                                                         \
    ptrdiff_t Nt = N % (MR) == 1 ? N - 1 : N;                                 \
    /* many rows (backward's dX over all steps) in blocks of about           \
     * LSTMX_GEMM_ROWS_BYTES of A, which stay in L2 while every panel        \
     * passes: else all of A streamed from memory once a panel. One core,    \
     * dX of seed_train's second layer (3200 x 1280 by 1280 x 640), GFLOP/s: \
     * float64 64 -> 84, float32 176 -> 186; a step's few rows are one      \
     * block */                                                               \
    const ptrdiff_t mc = lstmx_block_rows(K, sizeof(T), MR);                  \
    for (ptrdiff_t n0 = 0; n0 < Nt; n0 += mc) {                               \
        const ptrdiff_t n1 = Nt - n0 < mc ? Nt : n0 + mc;                     \
        for (ptrdiff_t pi = 0; pi < panels; pi++) {                           \
            const ptrdiff_t j0 = (backwards ? panels - 1 - pi : pi) * NR;     \
            const ptrdiff_t nc = M - j0 < NR ? M - j0 : NR;                   \
            for (ptrdiff_t n = n0, mr; n < n1; n += mr) {                     \
                mr = lstmx_tile_rows(n1 - n, MR);                             \
                LSTMX_TILE_CALL(tile_##SFX, K, mr, A + n * lda, lda, 1,       \
                                P + j0 * K, NR, C + n * ldc + j0, ldc, nc, 1) \
            }                                                                 \
        }                                                                     \
    }                                                                         \
    if (Nt < N)                                                               \
        gemv_packed_##SFX##V(1, M, K, A + Nt * lda, P, C + Nt * ldc, 0, 1, 0, \
                             0, backwards);                                   \
}

/* C (N, M), rows ldc apart, = A (N, K) W^T for W (M, K), rows ldw apart,
 * read where it is, and A packed as gemm_packed's B (pack(N, K, A, lda,
 * 1, Pa): A's rows as its columns). It is gemm_packed's product turned
 * over, W's rows now the tiles' and A's the panels', each tile stored
 * transposed: every C[n][m] is the same sum in the same order, its bits.
 * A projection of fewer rows than W has packs them instead of W (seed_
 * infer's single sequence, T = 200 rows of X against 1280 of W_x). One
 * core, float32, M = 1280, N = 200, best us of 40 after evicting the
 * caches, pack + product (two runs), packing W / packing X: K = 360
 * 196-203 + 1225-1258 / 28-29 + 1187-1229, K = 640 405-465 + 2114 /
 * 70-76 + 2030-2176. The loops as
 * gemm_packed's: blocks of W's rows that stay in L2, panels, row tiles.
 * A last panel of at most LANES rows (200 rows: 6 panels of 32 and one of
 * 8) runs on one vector of columns (tile_sums), not two: warm, K = 360
 * 1181-1216 -> 1121-1145 us, K = 640 2138-2146 -> 2001-2005. */
#define LSTMX_GEMM_PACKED_A(T, SFX, LANES, MR, V, ATTR)                       \
LSTMX_TILE_T(T, SFX, LANES, V, ATTR)                                          \
                                                                              \
static ATTR void gemm_packed_a_##SFX##V(ptrdiff_t N, ptrdiff_t M,             \
                                        ptrdiff_t K, const T *restrict Pa,    \
                                        const T *restrict W, ptrdiff_t ldw,   \
                                        T *restrict C, ptrdiff_t ldc)         \
{                                                                             \
    const ptrdiff_t NR = 2 * LANES, panels = (N + NR - 1) / NR;               \
    const ptrdiff_t mc = lstmx_block_rows(K, sizeof(T), MR);                  \
    for (ptrdiff_t m0 = 0; m0 < M; m0 += mc) {                                \
        const ptrdiff_t m1 = M - m0 < mc ? M : m0 + mc;                       \
        for (ptrdiff_t pi = 0; pi < panels; pi++) {                           \
            const ptrdiff_t n0 = pi * NR, nc = N - n0 < NR ? N - n0 : NR;     \
            for (ptrdiff_t m = m0, mr; m < m1; m += mr) {                     \
                mr = lstmx_tile_rows(m1 - m, MR);                             \
                LSTMX_TILE_CALL(tile_t_##SFX##V, K, mr, W + m * ldw, ldw,     \
                                Pa + n0 * K, C + n0 * ldc + m, ldc, nc)       \
            }                                                                 \
        }                                                                     \
    }                                                                         \
}

/* Weight gradients over all of a layer's rows at once: C (M, Nc) = A^T B,
 * A (K, M) and B (K, Nc) with rows lda and ldb apart (dW_h = dA^T H_prev
 * over the K = T N rows of a layer; the head's dW_fc = dY^T H). BLAS copies
 * both operands into its own layouts first: sgemm_itcopy and _otcopy were
 * 19% of small_train's backward, more than its sgemm kernel's 17%. Here A
 * is read where it is (a tile's MR values are adjacent in row k of A) and
 * only B is copied, one panel of KC rows at a time: read in place, a
 * panel's rows 256 bytes apart (H = 64) fell in a quarter of L1's sets and
 * did not stay there (one thread, K = 1600, M = 128: 395 against 429-522
 * us in place). Panels outside tiles within a block: the panel (32 KB in
 * float32) is read by every tile from L1, the block's rows of A from L2
 * (at small_train's M = 128 a thread; not at seed_train's 640, which BLAS
 * runs, see _lstm.pyx's TN_MAX_COLS).
 * KC = 512 against 256: 361-381 against 399 us (the same shape); 1024 was
 * 2% faster still but puts 64 KB on the stack. Each tile carries its sums
 * from block to block through C: every C[m][j] is summed over k = 0, 1,
 * ..., K-1 in order, the same bits whichever rows of C a thread computes. */
#define LSTMX_KC 512
#define LSTMX_GEMM_TN(T, SFX, LANES, MR, V, ATTR)                             \
static ATTR void gemm_tn_##SFX##V(ptrdiff_t M, ptrdiff_t Nc, ptrdiff_t K,     \
                                  const T *restrict A, ptrdiff_t lda,         \
                                  const T *restrict B, ptrdiff_t ldb,         \
                                  T *restrict C, ptrdiff_t ldc)               \
{                                                                             \
    const ptrdiff_t NR = 2 * LANES;                                           \
    T panel[LSTMX_KC * 2 * LANES];                                            \
    if (K == 0)                                                               \
        for (ptrdiff_t m = 0; m < M; m++)                                     \
            memset(C + m * ldc, 0, Nc * sizeof(T));                           \
    for (ptrdiff_t k0 = 0; k0 < K; k0 += LSTMX_KC) {                          \
        ptrdiff_t kc = K - k0 < LSTMX_KC ? K - k0 : LSTMX_KC;                 \
        for (ptrdiff_t j0 = 0; j0 < Nc; j0 += NR) {                           \
            ptrdiff_t nc = Nc - j0 < NR ? Nc - j0 : NR;                       \
            pack_##SFX(nc, kc, B + k0 * ldb + j0, 1, ldb, panel);             \
            for (ptrdiff_t m = 0, mr; m < M; m += mr) {                       \
                mr = lstmx_tile_rows(M - m, MR);                              \
                LSTMX_TILE_CALL(tile_##SFX, kc, mr, A + k0 * lda + m, 1, lda, \
                                panel, NR, C + m * ldc + j0, ldc, nc,         \
                                k0 == 0)                                      \
            }                                                                 \
        }                                                                     \
    }                                                                         \
}

/* The same product for a wide A (many units: dW = dA^T X over seed_train's
 * rows, M = 4H = 1280 a direction, K = T N = 3200), with both operands
 * packed a block at a time. gemm_tn's A read where it is misses L1 there:
 * rows of dA 5 KB apart (H = 320) fall into 4 of its 64 sets, and a block
 * of KC rows of all 1280 columns outgrows L2 as well. Here, for each KC
 * rows of k, B's columns are packed into panels of NR (read from L2
 * after), then for each MC columns of A, A's block into tiles of MR
 * columns, Ap[t][k][r] = A[k][m0 + t MR + r], read by the register tile
 * from L1 (both a row of k at a time: lstmx_pack_row); C carries each sum
 * from block to block, so every C[m][j] is still summed over k = 0, 1,
 * ..., K-1 in order: gemm_tn's bits, and the same whichever rows of C a
 * thread computes. work: lstmx_gemm_tn_work of the operands' columns in
 * all. float32, one core, the other running the same, GFLOP/s (M = 1280,
 * K = 3200): Nc = 640 gemm_tn 93, blocks of A in place 140, packed 165;
 * Nc = 320 99/142/165 (BLAS: see _lstm.pyx's TN_PACKED_MIN_ROWS). KC =
 * 640 against 256-1024, MC = 256 against 64-512: within 2% of the best of
 * those tried, at Nc = 320-960. */
#define LSTMX_TN_KC 640
#define LSTMX_TN_MC 256
#if defined(__GNUC__)
#define LSTMX_PREFETCH(p) __builtin_prefetch(p)
#else
#define LSTMX_PREFETCH(p) ((void)0)   /* MSVC: none */
#endif

/* C_b (M, Nc[b]) = A^T B_b for the nb (1 or 2) operands B_b (K, Nc[b]),
 * rows ldb[b] apart, into C_b, rows ldc[b] apart: A's blocks packed once
 * for both (dW_x and dW_h of a layer, from one dA). TS: T's suffix, for
 * lstmx_pack_row. */
#define LSTMX_GEMM_TN_PACKED(T, SFX, TS, LANES, MR, V, ATTR)                  \
static ATTR void gemm_tn_packed_##SFX##V(ptrdiff_t M, ptrdiff_t K,            \
                                         const T *restrict A, ptrdiff_t lda,  \
                                         int nb, const T *const *B,           \
                                         const ptrdiff_t *ldb,                \
                                         const ptrdiff_t *Nc, T *const *C,    \
                                         const ptrdiff_t *ldc,                \
                                         T *restrict work)                    \
{                                                                             \
    const ptrdiff_t NR = 2 * LANES;                                           \
    T *Bp[2], *Ap = work;                                                     \
    for (int b = 0; b < nb; b++) {                                            \
        Bp[b] = Ap;                                                           \
        Ap += (Nc[b] + LSTMX_NR_MAX) * LSTMX_TN_KC;                           \
    }                                                                         \
    if (K == 0)                                                               \
        for (int b = 0; b < nb; b++)                                          \
            for (ptrdiff_t m = 0; m < M; m++)                                 \
                memset(C[b] + m * ldc[b], 0, Nc[b] * sizeof(T));              \
    for (ptrdiff_t k0 = 0; k0 < K; k0 += LSTMX_TN_KC) {                       \
        const ptrdiff_t kc = K - k0 < LSTMX_TN_KC ? K - k0 : LSTMX_TN_KC;     \
        for (int b = 0; b < nb; b++)                                          \
            pack_##SFX(Nc[b], kc, B[b] + k0 * ldb[b], 1, ldb[b], Bp[b]);      \
        for (ptrdiff_t m0 = 0; m0 < M; m0 += LSTMX_TN_MC) {                   \
            const ptrdiff_t mc = M - m0 < LSTMX_TN_MC ? M - m0 : LSTMX_TN_MC; \
            for (ptrdiff_t k = 0; k < kc; k++) {                              \
                if (k + 8 < kc)                                               \
                    for (ptrdiff_t j = 0; j < mc; j += 64 / sizeof(T))        \
                        LSTMX_PREFETCH(A + (k0 + k + 8) * lda + m0 + j);      \
                lstmx_pack_row_##TS(mc, (MR), kc, A + (k0 + k) * lda + m0,    \
                                    Ap + k * (MR));                           \
            }                                                                 \
            for (int b = 0; b < nb; b++)                                      \
                for (ptrdiff_t j0 = 0; j0 < Nc[b]; j0 += NR) {                \
                    const ptrdiff_t nc = Nc[b] - j0 < NR ? Nc[b] - j0 : NR;   \
                    for (ptrdiff_t m = 0, mr; m < mc; m += mr) {              \
                        mr = mc - m < (MR) ? mc - m : (MR);                   \
                        LSTMX_TILE_CALL(tile_##SFX, kc, mr, Ap + m * kc, 1,   \
                                        (MR), Bp[b] + j0 * kc, NR,            \
                                        C[b] + (m0 + m) * ldc[b] + j0, ldc[b], \
                                        nc, k0 == 0)                          \
                    }                                                         \
                }                                                             \
        }                                                                     \
    }                                                                         \
}

LSTMX_GEMM_TILE(float, f32, 8)
LSTMX_GEMM_TILE(double, f64, 4)
LSTMX_PACK(float, f32, f32, 8)
LSTMX_PACK(double, f64, f64, 4)

/* ---- softmax cross-entropy of rows (losses.py) -------------------------- */

/* For each row r of z (R, C) whose valid[r] is set (every row when valid is
 * NULL): the softmax shifted by the row's maximum, dz[r] = (softmax(z[r]) -
 * onehot(classes[r])) * scale, and log sum exp(z[r] - m) - (z[r][c] - m)
 * added to the returned sum (in double); other rows get dz = 0 and their
 * classes are not read. EXPS(C, zr, m, d) writes d[j] = exp(zr[j] - m).
 * The maximum and the sum run in 8 interleaved partials (a sum in order,
 * one add waiting on the other, was a third of the kernel at C = 44), then
 * combined in a fixed order, the same in every build (float32's exps still
 * round differently with and without FMA). A NaN in a row
 * gives NaN through its exp. */
#define LSTMX_SOFTMAX_XENT(T, SFX, V, ATTR, EXPS)                             \
static ATTR double softmax_xent_##SFX##V(                                     \
    ptrdiff_t R, ptrdiff_t C, const T *restrict z,                            \
    const ptrdiff_t *restrict classes, const unsigned char *restrict valid,   \
    T scale, T *restrict dz)                                                  \
{                                                                             \
    double total = 0;                                                         \
    for (ptrdiff_t r = 0; r < R; r++) {                                       \
        const T *zr = z + r * C;                                              \
        T *d = dz + r * C;                                                    \
        if (valid && !valid[r]) {                                             \
            memset(d, 0, C * sizeof(T));                                      \
            continue;                                                         \
        }                                                                     \
        T part[8], m = zr[0], sum = 0;                                        \
        ptrdiff_t j = 0, k;                                                   \
        if (C >= 8) {                                                         \
            for (k = 0; k < 8; k++)                                           \
                part[k] = zr[k];                                              \
            for (j = 8; j + 8 <= C; j += 8)                                   \
                for (k = 0; k < 8; k++)                                       \
                    part[k] = zr[j + k] > part[k] ? zr[j + k] : part[k];      \
            for (k = 0; k < 8; k++)                                           \
                m = part[k] > m ? part[k] : m;                                \
        }                                                                     \
        for (; j < C; j++)                                                    \
            m = zr[j] > m ? zr[j] : m;                                        \
        EXPS(C, zr, m, d);                                                    \
        for (k = 0; k < 8; k++)                                               \
            part[k] = 0;                                                      \
        for (j = 0; j + 8 <= C; j += 8)                                       \
            for (k = 0; k < 8; k++)                                           \
                part[k] += d[j + k];                                          \
        for (k = 0; k < 8; k++)                                               \
            sum += part[k];                                                   \
        for (; j < C; j++)                                                    \
            sum += d[j];                                                      \
        ptrdiff_t c = classes[r];                                             \
        total += log((double)sum) - (double)(zr[c] - m);                      \
        T f = scale / sum;                                                    \
        for (j = 0; j < C; j++)                                               \
            d[j] *= f;                                                        \
        d[c] -= scale;                                                        \
    }                                                                         \
    return total;                                                             \
}

#define LSTMX_SOFTMAX_EXPS(T, SFX)                                            \
static inline LSTMX_INLINE void softmax_exps_##SFX(ptrdiff_t C, const T *zr,  \
                                                   T m, T *d)                 \
{                                                                             \
    for (ptrdiff_t j = 0; j < C; j++)                                         \
        d[j] = exp_##SFX(zr[j] - m);                                          \
}

LSTMX_SOFTMAX_EXPS(float, f32)
LSTMX_SOFTMAX_EXPS(double, f64)

/* ---- the kernels, built for each target, and the public functions ------- */

/* The activations over an array, for the tests of their error bounds
 * (built per target like the kernels that inline them). */
#define LSTMX_ACTIVATIONS_LOOP(SFX, k0)                                       \
    for (ptrdiff_t k = k0; k < n; k++) {                                      \
        e[k] = exp_##SFX(z[k]);                                               \
        s[k] = sigmoid_##SFX(z[k]);                                           \
        t[k] = tanh_##SFX(z[k]);                                              \
    }
#define LSTMX_ACTIVATIONS(T, SFX, V, ATTR)                                    \
static ATTR void activations_##SFX##V(ptrdiff_t n, const T *restrict z,       \
                                      T *restrict e, T *restrict s,           \
                                      T *restrict t)                          \
{                                                                             \
    LSTMX_ACTIVATIONS_LOOP(SFX, 0)                                            \
}

/* (the cell forward, float32's matmat and softmax, and the activations,
 * are built per target below) */
#define LSTMX_KERNELS(V, ATTR)                                                \
    LSTMX_CELL_BACKWARD(float, f32, f32, V, ATTR)                             \
    LSTMX_CELL_BACKWARD(double, f64, f64, V, ATTR)                            \
    LSTMX_MATMAT(double, f64, V, ATTR)                                        \
    LSTMX_MATMAT_T(float, f32, V, ATTR)                                       \
    LSTMX_MATMAT_T(double, f64, V, ATTR)                                      \
    LSTMX_GEMV_PACKED(float, f32, 8, V, ATTR)                                 \
    LSTMX_GEMV_PACKED(double, f64, 4, V, ATTR)                                \
    LSTMX_GEMM_PACKED(float, f32, 8, LSTMX_MR, V, ATTR)                       \
    LSTMX_GEMM_PACKED(double, f64, 4, LSTMX_MR, V, ATTR)                      \
    LSTMX_GEMM_PACKED_A(float, f32, 8, LSTMX_MR, V, ATTR)                     \
    LSTMX_GEMM_PACKED_A(double, f64, 4, LSTMX_MR, V, ATTR)                    \
    LSTMX_GEMM_TN(float, f32, 8, LSTMX_MR, V, ATTR)                           \
    LSTMX_GEMM_TN(double, f64, 4, LSTMX_MR, V, ATTR)                          \
    LSTMX_GEMM_TN_PACKED(float, f32, f32, 8, LSTMX_MR, V, ATTR)               \
    LSTMX_GEMM_TN_PACKED(double, f64, f64, 4, LSTMX_MR, V, ATTR)              \
    LSTMX_SOFTMAX_XENT(double, f64, V, ATTR, softmax_exps_f64)

LSTMX_KERNELS(_base, )
LSTMX_ACTIVATIONS(float, f32, _base, )
LSTMX_ACTIVATIONS(double, f64, _base, )
LSTMX_CELL_FORWARD(float, f32, _base, )
LSTMX_CELL_FORWARD(double, f64, _base, )
LSTMX_MATMAT(float, f32, _base, )
LSTMX_SOFTMAX_XENT(float, f32, _base, , softmax_exps_f32)

#if LSTMX_DISPATCH_FMA
/* the intrinsics, for functions built with their target attribute */
#include <immintrin.h>

#define LSTMX_FMA __attribute__((target("avx2,fma")))
LSTMX_KERNELS(_fma, LSTMX_FMA)

/* The vector activations: the formulas of exp_f32, sigmoid_f32 and tanh_f32
 * (of exp_f64, sigmoid_f64 and tanh_f64) on the lanes of V, for the AVX2 +
 * FMA builds (8 float32 or 4 float64 lanes) and the AVX-512 ones (16 or
 * 8), with the clamp of exp as MAX and MIN, the lanes' vmaxps/vminps (the
 * compiler turns the scalar clamp into compares and blends, which keeps NaN
 * but cost a third of the cell: 7.6 against 5.4 ns a unit without it).
 * Operands are ordered so that a NaN input gives NaN. VI (VU): V's lanes
 * as signed (unsigned) integers. */
#define LSTMX_SPLAT(V, v) ((V){0} + (v))
/* p 2^n, n a float32 integer in [-126, 127]: its exponent bits */
#define LSTMX_EXP_SCALE(V, VI, p, n)                                          \
    ((p) * (V)((__builtin_convertvector(n, VI) + 127) << 23))
#define LSTMX_VEC_ACTIVATIONS_F32(V, VI, ACT, INLINE, MAX, MIN, SCALE)        \
static INLINE V exp_##ACT(V x)                                                \
{                                                                             \
    x = MAX(LSTMX_SPLAT(V, -87.0f), x);   /* NaN: x */                        \
    x = MIN(LSTMX_SPLAT(V, 88.0f), x);                                        \
    V p = LSTMX_SPLAT(V, 1.0f / 5040.0f);                                     \
    LSTMX_EXP_REDUCE(V, x, n, p)                                              \
    return SCALE(V, VI, p, n);                                                \
}                                                                             \
                                                                              \
static INLINE V sigmoid_##ACT(V x)                                            \
{                                                                             \
    return 1.0f / (1.0f + exp_##ACT(-x));                                     \
}                                                                             \
                                                                              \
static INLINE V tanh_##ACT(V x)                                               \
{                                                                             \
    const VI magnitude = (VI){0} + 0x7fffffff;                                \
    V ax = (V)((VI)x & magnitude);                                            \
    V big = 1.0f - 2.0f / (exp_##ACT(2.0f * ax) + 1.0f);                      \
    V x2 = x * x;                                                             \
    V small = LSTMX_SPLAT(V, 62.0f / 2835.0f);                                \
    small = small * x2 - 17.0f / 315.0f;                                      \
    small = small * x2 + 2.0f / 15.0f;                                        \
    small = small * x2 - 1.0f / 3.0f;                                         \
    small = small * x2 + 1.0f;                                                \
    small = small * ax;                                                       \
    VI use_small = ax < 0.25f;                                                \
    VI t = (use_small & (VI)small) | (~use_small & (VI)big);                  \
    return (V)((t & magnitude) | ((VI)x & ~magnitude));  /* copysign */       \
}

/* out = p 2^n for the n in t's low bits (see exp_f64), 2^n in two halves */
#define LSTMX_EXP64_SCALE(V, VI, VU, out, p, t, nd)                           \
    VI n_ = (VI)(t) - (VI)LSTMX_SPLAT(V, LSTMX_EXP64_MAGIC);                  \
    VI n1_ = LSTMX_HALF_N(VI, VU, n_);                                        \
    out = (p) * (V)((n1_ + 1023) << 52) * (V)((n_ - n1_ + 1023) << 52);
#define LSTMX_VEC_ACTIVATIONS_F64(V, VI, VU, ACT, INLINE, MAX, MIN, SCALE)    \
static INLINE V exp_##ACT(V x)                                                \
{                                                                             \
    x = MAX(LSTMX_SPLAT(V, -746.0), x);   /* NaN: x */                        \
    x = MIN(LSTMX_SPLAT(V, 710.0), x);                                        \
    V p = LSTMX_SPLAT(V, 1.0 / 6227020800.0);                                 \
    LSTMX_EXP64_REDUCE(V, x, t, p)                                            \
    V e;                                                                      \
    SCALE(V, VI, VU, e, p, t, nd)                                             \
    return e;                                                                 \
}                                                                             \
                                                                              \
static INLINE V sigmoid_##ACT(V x)                                            \
{                                                                             \
    return 1.0 / (1.0 + exp_##ACT(-x));                                       \
}                                                                             \
                                                                              \
static INLINE V tanh_##ACT(V x)                                               \
{                                                                             \
    const VI magnitude = (VI){0} + 0x7fffffffffffffff;                        \
    V ax = (V)((VI)x & magnitude);                                            \
    V big = 1.0 - 2.0 / (exp_##ACT(2.0 * ax) + 1.0);                          \
    V small = LSTMX_SPLAT(V, LSTMX_TANH64_Q11);                               \
    LSTMX_TANH64_SMALL(V, x, s, small)                                        \
    VI signed_big = ((VI)big & magnitude) | ((VI)x & ~magnitude);             \
    VI use_small = ax < 0.625;                                                \
    return (V)((use_small & (VI)small) | (~use_small & signed_big));          \
}

/* Stores of any vector, a macro like LSTMX_LOAD */
#define LSTMX_STORE(p, v)                                                     \
    (__extension__({ __typeof__(v) s_ = (v); memcpy((p), &s_, sizeof s_); }))
#define store_f32(p, v) LSTMX_STORE(p, v)
#define store_f64(p, v) LSTMX_STORE(p, v)

typedef int32_t vec_i32 __attribute__((vector_size(32)));
typedef int64_t vec_i64 __attribute__((vector_size(32)));
typedef uint64_t vec_u64 __attribute__((vector_size(32)));
#define LSTMX_FMA_INLINE LSTMX_FMA __attribute__((always_inline)) inline
#define LSTMX_MAX_V8(a, b) ((vec_f32)_mm256_max_ps((__m256)(a), (__m256)(b)))
#define LSTMX_MIN_V8(a, b) ((vec_f32)_mm256_min_ps((__m256)(a), (__m256)(b)))
#define LSTMX_MAX_V4(a, b) ((vec_f64)_mm256_max_pd((__m256d)(a), (__m256d)(b)))
#define LSTMX_MIN_V4(a, b) ((vec_f64)_mm256_min_pd((__m256d)(a), (__m256d)(b)))
LSTMX_VEC_ACTIVATIONS_F32(vec_f32, vec_i32, v8, LSTMX_FMA_INLINE, LSTMX_MAX_V8,
                          LSTMX_MIN_V8, LSTMX_EXP_SCALE)
LSTMX_VEC_ACTIVATIONS_F64(vec_f64, vec_i64, vec_u64, v4, LSTMX_FMA_INLINE, LSTMX_MAX_V4,
                          LSTMX_MIN_V4, LSTMX_EXP64_SCALE)

/* The cell forward and the activations' test hook on LANES units at a
 * time, the scalar loop past the last LANES (the lanes give its bits).
 *
 * The cell's step is LSTMX_CELL_STEP's, cut into loops over a block of
 * units: i, f and g each a loop of their own, then c_t, o and h. In one
 * loop a unit's chain of dependent operations (three activations, c_t,
 * then o and tanh c_t) was longer than the out-of-order window could
 * cover, and lanes of 8 units hardly overlapped; a loop of one activation
 * per lane group leaves several groups in flight. The same operations on
 * each unit, so the same bits. float32, one core, ns a call, one loop /
 * these loops: 32 units (small_infer's half) 153-160/123-126, 64 units
 * 302-313/230-234, 320 1568/1178; below 4 lane groups the loops took
 * longer (8 units 42/57-80), and the one loop runs. */
#define LSTMX_CELL_BLOCK 64
#define LSTMX_GATE_PRE(LD, g, j)                                              \
    (LD(a + (g) * H + (j)) + LD(rec + (g) * H + (j)) + LD(bias + (g) * H + (j)))
#define LSTMX_CELL_FORWARD_VEC(SFX, TS, LANES, ACT, keep_value)               \
    {                                                                         \
        const int keep = keep_value;                                          \
        typedef vec_##SFX V;                                                  \
        V vi[LSTMX_CELL_BLOCK / LANES], vf[LSTMX_CELL_BLOCK / LANES];         \
        V vg[LSTMX_CELL_BLOCK / LANES];                                       \
        ptrdiff_t j0 = 0;                                                     \
        if (n < 4 * LANES)  /* see LSTMX_CELL_BLOCK */                        \
            for (; j0 + LANES <= n; j0 += LANES)                              \
                LSTMX_CELL_STEP(V, load_##SFX, store_##SFX, sigmoid_##ACT,    \
                                tanh_##ACT, j0)                               \
        for (; j0 + LANES <= n; j0 += LSTMX_CELL_BLOCK) {                     \
            ptrdiff_t left = (n - j0) / LANES;                                \
            const ptrdiff_t nv = left < LSTMX_CELL_BLOCK / LANES              \
                                 ? left : LSTMX_CELL_BLOCK / LANES;           \
            for (ptrdiff_t v = 0; v < nv; v++) {                              \
                ptrdiff_t j = j0 + v * LANES;                                 \
                vi[v] = sigmoid_##ACT(LSTMX_GATE_PRE(load_##SFX, 0, j)        \
                                      + load_##SFX(peep + j)                  \
                                        * load_##SFX(c + j));                 \
            }                                                                 \
            for (ptrdiff_t v = 0; v < nv; v++) {                              \
                ptrdiff_t j = j0 + v * LANES;                                 \
                vf[v] = sigmoid_##ACT(LSTMX_GATE_PRE(load_##SFX, 1, j)        \
                                      + load_##SFX(peep + H + j)              \
                                        * load_##SFX(c + j));                 \
            }                                                                 \
            for (ptrdiff_t v = 0; v < nv; v++) {                              \
                ptrdiff_t j = j0 + v * LANES;                                 \
                vg[v] = tanh_##ACT(LSTMX_GATE_PRE(load_##SFX, 2, j));         \
            }                                                                 \
            for (ptrdiff_t v = 0; v < nv; v++) {                              \
                ptrdiff_t j = j0 + v * LANES;                                 \
                V c_prev = load_##SFX(c + j), i = vi[v], f = vf[v];           \
                V g = vg[v];                                                  \
                V f_c = f * c_prev;                                           \
                LSTMX_ROUNDED(f_c);                                           \
                V c_t = f_c + i * g;                                          \
                V o = sigmoid_##ACT(LSTMX_GATE_PRE(load_##SFX, 3, j)          \
                                    + load_##SFX(peep + 2 * H + j) * c_t);    \
                V h_t = o * tanh_##ACT(c_t);                                  \
                store_##SFX(c + j, c_t);                                      \
                store_##SFX(h + j, h_t);                                      \
                store_##SFX(h_out + j, h_t);                                  \
                if (keep) {                                                   \
                    store_##SFX(a + j, i);                                    \
                    store_##SFX(a + H + j, f);                                \
                    store_##SFX(a + 2 * H + j, g);                            \
                    store_##SFX(a + 3 * H + j, o);                            \
                    store_##SFX(c_out + j, c_t);                              \
                }                                                             \
            }                                                                 \
            if (nv < LSTMX_CELL_BLOCK / LANES) {                              \
                j0 += nv * LANES;                                             \
                break;                                                        \
            }                                                                 \
        }                                                                     \
        cell_forward_loop_##TS(j0, n, H, a, rec, bias, peep, h, c, h_out,     \
                                c_out, keep);                                 \
    }

#define LSTMX_VEC_KERNELS(T, SFX, TS, LANES, ACT, V, ATTR)                    \
static ATTR void cell_forward_##SFX##V(                                       \
    ptrdiff_t n, ptrdiff_t H, T *restrict a, const T *restrict rec,           \
    const T *restrict bias, const T *restrict peep, T *restrict h,            \
    T *restrict c, T *restrict h_out, T *restrict c_out)                      \
{                                                                             \
    if (c_out)                                                                \
        LSTMX_CELL_FORWARD_VEC(SFX, TS, LANES, ACT, 1)                        \
    else                                                                      \
        LSTMX_CELL_FORWARD_VEC(SFX, TS, LANES, ACT, 0)                        \
}                                                                             \
                                                                              \
static ATTR void activations_##SFX##V(ptrdiff_t n, const T *restrict z,       \
                                      T *restrict e, T *restrict s,           \
                                      T *restrict t)                          \
{                                                                             \
    ptrdiff_t j = 0;                                                          \
    for (; j + LANES <= n; j += LANES) {                                      \
        vec_##SFX v = load_##SFX(z + j);                                      \
        store_##SFX(e + j, exp_##ACT(v));                                     \
        store_##SFX(s + j, sigmoid_##ACT(v));                                 \
        store_##SFX(t + j, tanh_##ACT(v));                                    \
    }                                                                         \
    LSTMX_ACTIVATIONS_LOOP(TS, j)                                             \
}

LSTMX_VEC_KERNELS(float, f32, f32, 8, v8, _fma, LSTMX_FMA)
LSTMX_VEC_KERNELS(double, f64, f64, 4, v4, _fma, LSTMX_FMA)

/* matmat on 8 rows at a time (float32, one sequence): a row's 8
 * lanes of products accumulate over k in one register, and the 8 rows' sums
 * across lanes come out of one transposing tree of horizontal adds (per
 * row ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)), then the k past
 * the last 8 in order). dot4's sums across lanes, 8 dependent adds a row,
 * cost as much as the products at K = 320. A row left over after the
 * groups of 8 is summed in the same order: the same bits in any group. */
static LSTMX_FMA_INLINE float row_tail_f32(vec_f32 acc, ptrdiff_t k, ptrdiff_t K,
                                           const float *w, const float *x)
{
    vec_f32 t = __builtin_ia32_haddps256(acc, acc);
    t = __builtin_ia32_haddps256(t, t);
    float s = t[0] + t[4];
    for (; k < K; k++)
        s += w[k] * x[k];
    return s;
}

static LSTMX_FMA void matmat_f32_fma(ptrdiff_t M, ptrdiff_t K,
                                     const float *restrict W, ptrdiff_t N,
                                     const float *restrict X, ptrdiff_t ldx,
                                     float *restrict Y, ptrdiff_t ldy)
{
    ptrdiff_t K8 = K / 8 * 8, r = 0;
    for (; r + 8 <= M; r += 8)
        for (ptrdiff_t n = 0; n < N; n++) {
            const float *w = W + r * K, *x = X + n * ldx;
            vec_f32 a[8];
            for (int q = 0; q < 8; q++)
                a[q] = (vec_f32){0};
            for (ptrdiff_t k = 0; k < K8; k += 8) {
                vec_f32 xv = load_f32(x + k);
                for (int q = 0; q < 8; q++)
                    a[q] += load_f32(w + q * K + k) * xv;
            }
            vec_f32 h01 = __builtin_ia32_haddps256(a[0], a[1]);
            vec_f32 h23 = __builtin_ia32_haddps256(a[2], a[3]);
            vec_f32 h45 = __builtin_ia32_haddps256(a[4], a[5]);
            vec_f32 h67 = __builtin_ia32_haddps256(a[6], a[7]);
            vec_f32 q03 = __builtin_ia32_haddps256(h01, h23);
            vec_f32 q47 = __builtin_ia32_haddps256(h45, h67);
            vec_f32 sums = __builtin_ia32_vperm2f128_ps256(q03, q47, 0x20)
                           + __builtin_ia32_vperm2f128_ps256(q03, q47, 0x31);
            float *y = Y + n * ldy + r;
            store_f32(y, sums);
            for (int q = 0; q < 8; q++)
                for (ptrdiff_t k = K8; k < K; k++)
                    y[q] += w[q * K + k] * x[k];
        }
    for (; r < M; r++)
        for (ptrdiff_t n = 0; n < N; n++) {
            const float *w = W + r * K, *x = X + n * ldx;
            vec_f32 acc = (vec_f32){0};
            for (ptrdiff_t k = 0; k < K8; k += 8)
                acc += load_f32(w + k) * load_f32(x + k);
            Y[n * ldy + r] = row_tail_f32(acc, K8, K, w, x);
        }
}

/* exp(zr[j] - m) on 8 lanes, the scalar exp_f32 past the last 8 (the
 * lanes give its bits: see the activations' test) */
static LSTMX_FMA_INLINE void softmax_exps_v8(ptrdiff_t C, const float *zr,
                                             float m, float *d)
{
    ptrdiff_t j = 0;
    for (; j + 8 <= C; j += 8)
        store_f32(d + j, exp_v8(load_f32(zr + j) - m));
    for (; j < C; j++)
        d[j] = exp_f32(zr[j] - m);
}

LSTMX_SOFTMAX_XENT(float, f32, _fma, LSTMX_FMA, softmax_exps_v8)

/* Packing B = W^T (float32, W (M, K) rows ldw apart) in 8 x 8 blocks
 * transposed in registers, for panels of nr (16 or 32) columns: the same
 * P as pack_f32's (a copy, no arithmetic), whose loop read a column of W
 * an element at a time. One core, us, before / after: 1280 x 320
 * (seed_infer's W_h) into panels of 32 164/130, of 16 129/104; 256 x 64
 * (small_infer's) 5.0/1.7. */
static LSTMX_FMA_INLINE void transpose8_f32(vec_f32 r[8])
{
    vec_f32 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = (vec_f32)_mm256_unpacklo_ps((__m256)r[i], (__m256)r[i + 1]);
        t[i + 1] = (vec_f32)_mm256_unpackhi_ps((__m256)r[i], (__m256)r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = (vec_f32)_mm256_shuffle_ps((__m256)t[i], (__m256)t[i + 2], 0x44);
        u[i + 1] = (vec_f32)_mm256_shuffle_ps((__m256)t[i], (__m256)t[i + 2], 0xee);
        u[i + 2] = (vec_f32)_mm256_shuffle_ps((__m256)t[i + 1], (__m256)t[i + 3], 0x44);
        u[i + 3] = (vec_f32)_mm256_shuffle_ps((__m256)t[i + 1], (__m256)t[i + 3], 0xee);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = (vec_f32)_mm256_permute2f128_ps((__m256)u[i], (__m256)u[i + 4], 0x20);
        r[i + 4] = (vec_f32)_mm256_permute2f128_ps((__m256)u[i], (__m256)u[i + 4], 0x31);
    }
}

static LSTMX_FMA void pack_t_f32_fma(ptrdiff_t M, ptrdiff_t K, const float *W,
                                     ptrdiff_t ldw, float *P, ptrdiff_t nr)
{
    for (ptrdiff_t j0 = 0; j0 < M; j0 += nr, P += nr * K) {
        ptrdiff_t rows = M - j0 < nr ? M - j0 : nr, c8 = rows / 8 * 8;
        const float *w = W + j0 * ldw;
        ptrdiff_t k = 0;
        /* a block of 8 k of every 8 rows in turn: row k of the panel is
         * written whole before the next */
        for (; k + 8 <= K; k += 8)
            for (ptrdiff_t c0 = 0; c0 < c8; c0 += 8) {
                vec_f32 r[8];
                for (int i = 0; i < 8; i++)
                    r[i] = load_f32(w + (c0 + i) * ldw + k);
                transpose8_f32(r);
                for (int i = 0; i < 8; i++)
                    store_f32(P + (k + i) * nr + c0, r[i]);
            }
        for (; k < K; k++)
            for (ptrdiff_t c0 = 0; c0 < c8; c0++)
                P[k * nr + c0] = w[c0 * ldw + k];
        for (ptrdiff_t c0 = c8; c0 < nr; c0++)
            for (ptrdiff_t kk = 0; kk < K; kk++)
                P[kk * nr + c0] = c0 < rows ? w[c0 * ldw + kk] : 0;
    }
}


/* ---- the AVX-512 build ---------------------------------------------------
 *
 * Where the CPU has AVX-512 (F and DQ), the packed GEMM family (gemm_packed,
 * its one-row kernel gemv_packed, gemm_tn and the packing they read) and
 * the cell forward run on 512-bit vectors: the generic macros above with
 * twice the lanes (a panel is NR = 32 float32 or 16 float64 columns, so the
 * packed layout is this build's own: lstmx_pack and lstmx_packed_size pick
 * it too), and the activations below on 16 (8) lanes with the formulas of
 * exp_f32 and exp_f64. The other kernels are the AVX2 + FMA build's. Each
 * sum is still taken over k in order, so every thread split gives the same
 * bits as one thread within this build, as in the others. */
#define LSTMX_512 __attribute__((target("avx512f,avx512dq,avx2,fma")))
#define LSTMX_512_INLINE LSTMX_512 __attribute__((always_inline)) inline

/* Their vectors, loaded by a macro as the narrower builds' (see
 * LSTMX_LOAD): the generic tile_ and row_ run inlined into this build's
 * functions. */
typedef float vec_f32z __attribute__((vector_size(64)));
typedef double vec_f64z __attribute__((vector_size(64)));
#define load_f32z(p) LSTMX_LOAD(vec_f32z, p)
#define load_f64z(p) LSTMX_LOAD(vec_f64z, p)

/* gemm_packed_a's tiles of 8 rows stored transposed in registers: 8 x 16
 * float32 (or 8 x 8 float64) at a time in three rounds of shuffles, one
 * row of C (a column of the tile, 8 values) a store, as lane by lane
 * (store_t_lanes) otherwise. One core, float32, M = 1280, N = 200, K =
 * 360, us, after evicting the caches: the tile stored to memory and copied
 * an element at a time 1465-1497, in registers 1187-1229, and 1225-1258
 * for gemm_packed's product unturned (float64's was not timed apart). */
LSTMX_STORE_T_LANES(float, f32z, 16)
LSTMX_STORE_T_LANES(double, f64z, 8)

static LSTMX_512_INLINE void store_t8_f32z(const vec_f32z *v, float *restrict C,
                                           ptrdiff_t ldc, ptrdiff_t nc)
{
    __m512 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm512_unpacklo_ps((__m512)v[i], (__m512)v[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps((__m512)v[i], (__m512)v[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xee);
        u[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    /* u[i] holds, in its 128-bit lane L, column 4 L + i of rows 0-3, and
     * u[4 + i] of rows 4-7 */
    const __m512i lo = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19,
                                         4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i hi = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27,
                                         12, 13, 14, 15, 28, 29, 30, 31);
    for (int i = 0; i < 4; i++) {
        __m512 a = _mm512_permutex2var_ps(u[i], lo, u[i + 4]);  /* i, 4 + i */
        __m512 b = _mm512_permutex2var_ps(u[i], hi, u[i + 4]);  /* 8 + i, 12 + i */
        __m256 col[4] = {_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1),
                         _mm512_castps512_ps256(b), _mm512_extractf32x8_ps(b, 1)};
        for (int q = 0; q < 4; q++)
            if (4 * q + i < nc)
                _mm256_storeu_ps(C + (4 * q + i) * ldc, col[q]);
    }
}

static LSTMX_512_INLINE void store_t8_f64z(const vec_f64z *v, double *restrict C,
                                           ptrdiff_t ldc, ptrdiff_t nc)
{
    __m512d t[8], col[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm512_unpacklo_pd((__m512d)v[i], (__m512d)v[i + 1]);
        t[i + 1] = _mm512_unpackhi_pd((__m512d)v[i], (__m512d)v[i + 1]);
    }
    /* t[i] (i even) holds, in its 128-bit lane L, column 2 L of rows i and
     * i + 1, t[i + 1] column 2 L + 1 */
    for (int odd = 0; odd < 2; odd++) {
        const __m512d *s = t + odd;
        __m512d a01 = _mm512_shuffle_f64x2(s[0], s[2], 0x44);
        __m512d b01 = _mm512_shuffle_f64x2(s[4], s[6], 0x44);
        __m512d a23 = _mm512_shuffle_f64x2(s[0], s[2], 0xee);
        __m512d b23 = _mm512_shuffle_f64x2(s[4], s[6], 0xee);
        col[odd] = _mm512_shuffle_f64x2(a01, b01, 0x88);
        col[2 + odd] = _mm512_shuffle_f64x2(a01, b01, 0xdd);
        col[4 + odd] = _mm512_shuffle_f64x2(a23, b23, 0x88);
        col[6 + odd] = _mm512_shuffle_f64x2(a23, b23, 0xdd);
    }
    for (int c = 0; c < 8 && c < nc; c++)
        _mm512_storeu_pd(C + c * ldc, col[c]);
}

/* store_t: 8 rows in registers, fewer lane by lane */
#define LSTMX_STORE_T_512(T, SFX, LANES)                                      \
static LSTMX_512_INLINE void store_t_##SFX(const int mr, const vec_##SFX *lo, \
                                           const vec_##SFX *hi,               \
                                           T *restrict C, ptrdiff_t ldc,      \
                                           ptrdiff_t nc)                      \
{                                                                             \
    if (mr != 8) {                                                            \
        store_t_lanes_##SFX(mr, lo, hi, C, ldc, nc);                          \
        return;                                                               \
    }                                                                         \
    store_t8_##SFX(lo, C, ldc, nc);                                           \
    if (nc > LANES)                                                           \
        store_t8_##SFX(hi, C + LANES * ldc, ldc, nc - LANES);                 \
}
LSTMX_STORE_T_512(float, f32z, 16)
LSTMX_STORE_T_512(double, f64z, 8)

LSTMX_GEMM_TILE(float, f32z, 16)
LSTMX_GEMM_TILE(double, f64z, 8)
LSTMX_PACK(float, f32z, f32, 16)
LSTMX_PACK(double, f64z, f64, 8)
LSTMX_GEMV_PACKED(float, f32z, 16, _512, LSTMX_512)
LSTMX_GEMV_PACKED(double, f64z, 8, _512, LSTMX_512)
LSTMX_GEMM_PACKED(float, f32z, 16, LSTMX_MR_512, _512, LSTMX_512)
LSTMX_GEMM_PACKED(double, f64z, 8, LSTMX_MR_512, _512, LSTMX_512)
LSTMX_GEMM_PACKED_A(float, f32z, 16, LSTMX_MR_512, _512, LSTMX_512)
LSTMX_GEMM_PACKED_A(double, f64z, 8, LSTMX_MR_512, _512, LSTMX_512)
LSTMX_GEMM_TN(float, f32z, 16, LSTMX_MR_512, _512, LSTMX_512)
LSTMX_GEMM_TN(double, f64z, 8, LSTMX_MR_512, _512, LSTMX_512)
LSTMX_GEMM_TN_PACKED(float, f32z, f32, 16, LSTMX_MR_512, _512, LSTMX_512)
LSTMX_GEMM_TN_PACKED(double, f64z, f64, 8, LSTMX_MR_512, _512, LSTMX_512)

/* the activations on 16 float32 and 8 float64 lanes */
typedef int32_t vec_i32z __attribute__((vector_size(64)));
typedef int64_t vec_i64z __attribute__((vector_size(64)));
typedef uint64_t vec_u64z __attribute__((vector_size(64)));
#define LSTMX_MAX_V16(a, b) ((vec_f32z)_mm512_max_ps((__m512)(a), (__m512)(b)))
#define LSTMX_MIN_V16(a, b) ((vec_f32z)_mm512_min_ps((__m512)(a), (__m512)(b)))
#define LSTMX_MAX_W8(a, b) ((vec_f64z)_mm512_max_pd((__m512d)(a), (__m512d)(b)))
#define LSTMX_MIN_W8(a, b) ((vec_f64z)_mm512_min_pd((__m512d)(a), (__m512d)(b)))
#define LSTMX_EXP_SCALEF(V, VI, p, n)                                         \
    ((V)_mm512_scalef_ps((__m512)(p), (__m512)(n)))
LSTMX_VEC_ACTIVATIONS_F32(vec_f32z, vec_i32z, v16, LSTMX_512_INLINE, LSTMX_MAX_V16,
                          LSTMX_MIN_V16, LSTMX_EXP_SCALEF)
/* p 2^n by vscalefpd: one instruction where the halves take eight, with
 * their bits (exact but where the result is subnormal, there rounded once
 * as theirs) */
#define LSTMX_EXP64_SCALEF(V, VI, VU, out, p, t, nd)                          \
    out = (V)_mm512_scalef_pd((__m512d)(p), (__m512d)(nd));
LSTMX_VEC_ACTIVATIONS_F64(vec_f64z, vec_i64z, vec_u64z, w8, LSTMX_512_INLINE,
                          LSTMX_MAX_W8, LSTMX_MIN_W8, LSTMX_EXP64_SCALEF)
#define store_f32z(p, v) LSTMX_STORE(p, v)
#define store_f64z(p, v) LSTMX_STORE(p, v)

LSTMX_VEC_KERNELS(float, f32z, f32, 16, v16, _512, LSTMX_512)
LSTMX_VEC_KERNELS(double, f64z, f64, 8, w8, _512, LSTMX_512)
/* the backward cell's loop, vectorized by the compiler on 16 (8) lanes */
LSTMX_CELL_BACKWARD(float, f32z, f32, _512, LSTMX_512)
LSTMX_CELL_BACKWARD(double, f64z, f64, _512, LSTMX_512)

static int use_fma = 0, use_512 = 0;

/* LSTMX_KERNELS=baseline in the environment keeps the baseline build on
 * any CPU, LSTMX_KERNELS=avx2 the AVX2 + FMA build on an AVX-512 CPU: the
 * tests run every build this way (tests/test_kernels_build.py). */
__attribute__((constructor)) static void lstmx_detect_cpu(void)
{
    const char *forced = getenv("LSTMX_KERNELS");
    __builtin_cpu_init();
    use_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    use_512 = use_fma && __builtin_cpu_supports("avx512f")
              && __builtin_cpu_supports("avx512dq");
    if (forced && strcmp(forced, "baseline") == 0)
        use_fma = use_512 = 0;
    if (forced && strcmp(forced, "avx2") == 0)
        use_512 = 0;
}

#define LSTMX_PICK(name) (use_fma ? name##_fma : name##_base)
/* name's AVX-512 build is wide##_512 (wide: name with the f32z/f64z suffix) */
#define LSTMX_PICK_WIDE(name, wide) (use_512 ? wide##_512 : LSTMX_PICK(name))
#define LSTMX_PICK_PACKING(name, wide) (use_512 ? wide : name)
#else
#define LSTMX_PICK(name) name##_base
#define LSTMX_PICK_WIDE(name, wide) name##_base
#define LSTMX_PICK_PACKING(name, wide) name
static const int use_fma = 0, use_512 = 0;
#endif

ptrdiff_t lstmx_gemm_tn_work(ptrdiff_t Nc)
{
    return (Nc + 2 * LSTMX_NR_MAX + LSTMX_TN_MC + LSTMX_MR_MAX) * LSTMX_TN_KC;
}

int lstmx_uses_fma(void)
{
    return use_fma;
}

int lstmx_uses_avx512(void)
{
    return use_512;
}

/* B = W^T for float32 in 8 x 8 blocks where AVX2 is (pack_t_f32_fma) */
#if LSTMX_DISPATCH_FMA
#define LSTMX_PACK_TRANSPOSED_f32                                             \
    if (use_fma && sk == 1) {                                                 \
        pack_t_f32_fma(M, K, W, sm, P, use_512 ? 32 : 16);                    \
        return;                                                               \
    }
#else
#define LSTMX_PACK_TRANSPOSED_f32
#endif
#define LSTMX_PACK_TRANSPOSED_f64

#define LSTMX_PUBLIC(T, SFX)                                                  \
void lstmx_cell_forward_##SFX(ptrdiff_t n, ptrdiff_t H, T *a, const T *rec,   \
                              const T *bias, const T *peep, T *h, T *c,       \
                              T *h_out, T *c_out, int wide)                   \
{                                                                             \
    if (wide)                                                                 \
        LSTMX_PICK_WIDE(cell_forward_##SFX, cell_forward_##SFX##z)(           \
            n, H, a, rec, bias, peep, h, c, h_out, c_out);                    \
    else                                                                      \
        LSTMX_PICK(cell_forward_##SFX)(n, H, a, rec, bias, peep, h, c, h_out, \
                                       c_out);                                \
}                                                                             \
                                                                              \
void lstmx_cell_backward_##SFX(ptrdiff_t H, const T *act, const T *c_t,       \
                               const T *c_prev, const T *peep,                \
                               const T *dh_out, const T *dh_next, T *dc,      \
                               T *da, T *dpeep)                               \
{                                                                             \
    LSTMX_PICK_WIDE(cell_backward_##SFX, cell_backward_##SFX##z)(             \
        H, act, c_t, c_prev, peep, dh_out, dh_next, dc, da, dpeep);           \
}                                                                             \
                                                                              \
void lstmx_matmat_##SFX(ptrdiff_t M, ptrdiff_t K, const T *W, ptrdiff_t N,    \
                        const T *X, ptrdiff_t ldx, T *Y, ptrdiff_t ldy)       \
{                                                                             \
    LSTMX_PICK(matmat_##SFX)(M, K, W, N, X, ldx, Y, ldy);                     \
}                                                                             \
                                                                              \
void lstmx_matmat_t_##SFX(ptrdiff_t M, ptrdiff_t K, const T *W, ptrdiff_t N,  \
                          const T *X, ptrdiff_t ldx, T *Y, ptrdiff_t ldy)     \
{                                                                             \
    LSTMX_PICK(matmat_t_##SFX)(M, K, W, N, X, ldx, Y, ldy);                   \
}                                                                             \
                                                                              \
void lstmx_gemm_packed_##SFX(ptrdiff_t N, ptrdiff_t M, ptrdiff_t K,           \
                             const T *A, ptrdiff_t lda, const T *P, T *C,     \
                             ptrdiff_t ldc, int backwards)                    \
{                                                                             \
    LSTMX_PICK_WIDE(gemm_packed_##SFX, gemm_packed_##SFX##z)(                 \
        N, M, K, A, lda, P, C, ldc, backwards);                               \
}                                                                             \
                                                                              \
void lstmx_gemm_packed_a_##SFX(ptrdiff_t N, ptrdiff_t M, ptrdiff_t K,         \
                               const T *Pa, const T *W, ptrdiff_t ldw, T *C,  \
                               ptrdiff_t ldc)                                 \
{                                                                             \
    LSTMX_PICK_WIDE(gemm_packed_a_##SFX, gemm_packed_a_##SFX##z)(             \
        N, M, K, Pa, W, ldw, C, ldc);                                         \
}                                                                             \
                                                                              \
void lstmx_gemm_tn_##SFX(ptrdiff_t M, ptrdiff_t Nc, ptrdiff_t K,            \
                         const T *A, ptrdiff_t lda, const T *B, ptrdiff_t ldb, \
                         T *C, ptrdiff_t ldc)                                 \
{                                                                             \
    /* a panel of 512-bit vectors at most half full: the AVX2 build's, whose \
     * NR (16 float32, 8 float64) it fills (the same sums). One core, dW of   \
     * 128 x 16 over K = 1600 rows (small_train's dW_x): 114 -> 76 us */      \
    if (Nc <= 64 / (ptrdiff_t)sizeof(T))                                      \
        LSTMX_PICK(gemm_tn_##SFX)(M, Nc, K, A, lda, B, ldb, C, ldc);          \
    else                                                                      \
        LSTMX_PICK_WIDE(gemm_tn_##SFX, gemm_tn_##SFX##z)(                     \
            M, Nc, K, A, lda, B, ldb, C, ldc);                                \
}                                                                             \
                                                                              \
void lstmx_gemm_tn_packed_##SFX(ptrdiff_t M, ptrdiff_t K, const T *A,        \
                                ptrdiff_t lda, int nb, const T *const *B,     \
                                const ptrdiff_t *ldb, const ptrdiff_t *Nc,    \
                                T *const *C, const ptrdiff_t *ldc, T *work)   \
{                                                                             \
    LSTMX_PICK_WIDE(gemm_tn_packed_##SFX, gemm_tn_packed_##SFX##z)(           \
        M, K, A, lda, nb, B, ldb, Nc, C, ldc, work);                          \
}                                                                             \
                                                                              \
void lstmx_gemv_packed_##SFX(ptrdiff_t B, ptrdiff_t M, ptrdiff_t K,           \
                             const T *x, const T *P, T *y, ptrdiff_t gs,      \
                             int backwards)                                   \
{                                                                             \
    LSTMX_PICK_WIDE(gemv_packed_##SFX, gemv_packed_##SFX##z)(                 \
        B, M, K, x, P, y, gs, 1, 0, 0, backwards);                            \
}                                                                             \
                                                                              \
ptrdiff_t lstmx_packed_size_##SFX(ptrdiff_t M, ptrdiff_t K)                   \
{                                                                             \
    return LSTMX_PICK_PACKING(packed_size_##SFX, packed_size_##SFX##z)(M, K); \
}                                                                             \
                                                                              \
void lstmx_pack_##SFX(ptrdiff_t M, ptrdiff_t K, const T *W, ptrdiff_t sm,    \
                      ptrdiff_t sk, T *P)                                     \
{                                                                             \
    LSTMX_PACK_TRANSPOSED_##SFX                                               \
    LSTMX_PICK_PACKING(pack_##SFX, pack_##SFX##z)(M, K, W, sm, sk, P);        \
}                                                                             \
                                                                              \
double lstmx_softmax_xent_##SFX(ptrdiff_t R, ptrdiff_t C, const T *z,         \
                                const ptrdiff_t *classes,                     \
                                const unsigned char *valid, T scale, T *dz)   \
{                                                                             \
    return LSTMX_PICK(softmax_xent_##SFX)(R, C, z, classes, valid, scale, dz); \
}

LSTMX_PUBLIC(float, f32)
LSTMX_PUBLIC(double, f64)

void lstmx_activations_f32(ptrdiff_t n, const float *z, float *e, float *s,
                           float *t)
{
    LSTMX_PICK_WIDE(activations_f32, activations_f32z)(n, z, e, s, t);
}

void lstmx_activations_f64(ptrdiff_t n, const double *z, double *e, double *s,
                           double *t)
{
    LSTMX_PICK_WIDE(activations_f64, activations_f64z)(n, z, e, s, t);
}

/* ---- a barrier for the threads that share one recurrence --------------- */

#if LSTMX_HAVE_BARRIER
#include <pthread.h>
#include <sched.h>
#include <time.h>

/* The spin of a waiting thread, at its spins-th round: every 4096 rounds
 * it yields, so that a partner descheduled on a busy machine is not
 * starved. */
static inline void spin_yield(unsigned spins)
{
    if (spins % 4096 == 0)
        sched_yield();
}

/* Spin until *p == v (acquire). */
static void spin_until(const int *p, int v)
{
    for (unsigned spins = 1; __atomic_load_n(p, __ATOMIC_ACQUIRE) != v; spins++)
        spin_yield(spins);
}

/* Sense-reversing barrier over b[0] (arrivals) and b[1] (sense), both 0 at
 * first; *sense is the caller's own, 0 at first. Waiters spin (the wait is
 * a step of a few microseconds; see spin_yield). */
void lstmx_barrier_wait(int *b, int nthreads, int *sense)
{
    int s = !*sense;
    *sense = s;
    if (__atomic_add_fetch(&b[0], 1, __ATOMIC_ACQ_REL) == nthreads) {
        __atomic_store_n(&b[0], 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b[1], s, __ATOMIC_RELEASE);
        return;
    }
    spin_until(&b[1], s);
}

void lstmx_count_publish(int *count, int v)
{
    __atomic_store_n(count, v, __ATOMIC_RELEASE);
}

int lstmx_count_wait(const int *count, int v)
{
    int got;
    for (unsigned spins = 1; (got = __atomic_load_n(count, __ATOMIC_ACQUIRE)) < v; spins++)
        spin_yield(spins);
    return got;
}

/* ---- the second thread of a pair of jobs (_lstm.run_pair) --------------- */

/* A thread of its own that runs one job at a time, handed over without the
 * GIL: a Python thread could start only once it had the GIL back, and
 * waking one took 50-130 us here (median; a virtual machine's idle vCPU),
 * several times a training step. After each job it spins for
 * LSTMX_WORKER_SPIN seconds before it sleeps on a condition variable. */
#define LSTMX_WORKER_SPIN 2e-3

struct lstmx_worker {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    void (*fn)(void *);
    void *arg;
    int posted, done, sleeping;   /* jobs posted and done; asleep on cv */
    int (*init)(int);
};

static double lstmx_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static void *lstmx_worker_main(void *p)
{
    struct lstmx_worker *w = p;
    if (w->init)
        w->init(1);   /* e.g. hold this thread's OpenBLAS to one thread */
    int seen = 0;
    for (;;) {
        double start = 0;
        for (unsigned spins = 1;
             __atomic_load_n(&w->posted, __ATOMIC_ACQUIRE) == seen; spins++) {
            if (spins % 1024)
                continue;
            double t = lstmx_now();
            if (start == 0) {
                start = t;
            } else if (t - start > LSTMX_WORKER_SPIN) {
                pthread_mutex_lock(&w->mu);
                w->sleeping = 1;
                while (__atomic_load_n(&w->posted, __ATOMIC_ACQUIRE) == seen)
                    pthread_cond_wait(&w->cv, &w->mu);
                w->sleeping = 0;
                pthread_mutex_unlock(&w->mu);
                break;
            }
        }
        seen++;
        w->fn(w->arg);
        __atomic_store_n(&w->done, seen, __ATOMIC_RELEASE);
    }
    return NULL;
}

struct lstmx_worker *lstmx_worker_new(int (*init)(int))
{
    struct lstmx_worker *w = calloc(1, sizeof *w);
    pthread_t thread;
    pthread_attr_t attr;
    if (w == NULL)
        return NULL;
    w->init = init;
    if (pthread_mutex_init(&w->mu, NULL) || pthread_cond_init(&w->cv, NULL)
        || pthread_attr_init(&attr)) {
        free(w);
        return NULL;
    }
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int failed = pthread_create(&thread, &attr, lstmx_worker_main, w);
    pthread_attr_destroy(&attr);
    if (failed) {
        free(w);
        return NULL;
    }
    return w;   /* lives as long as the process */
}

/* Start fn(arg) on the worker; one caller at a time, one job at a time. */
void lstmx_worker_post(struct lstmx_worker *w, void (*fn)(void *), void *arg)
{
    w->fn = fn;
    w->arg = arg;
    pthread_mutex_lock(&w->mu);
    __atomic_store_n(&w->posted, w->posted + 1, __ATOMIC_RELEASE);
    if (w->sleeping)
        pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Wait for the job posted last (spinning: it runs as long as the caller's
 * own half of the work). */
void lstmx_worker_wait(struct lstmx_worker *w)
{
    spin_until(&w->done, w->posted);
}
#endif
