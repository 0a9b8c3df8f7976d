/* lstmx's C kernels: the LSTM cell (one step of one sequence, H units),
 * the recurrent products (matmat; the packed GEMM), softmax cross-entropy,
 * the barrier of a split recurrence and the worker thread of run_pair.
 * Definitions and the equations they implement are in _cell.c. */
#ifndef LSTMX_CELL_H
#define LSTMX_CELL_H

#include <stddef.h>

/* wide: the AVX-512 build where there is one (the caller's products run
 * the packed kernels, built for it too), else at most AVX2 + FMA (a step on
 * matmat: see _lstm.pyx's _forward) */
#define LSTMX_DECLARE_CELL(T, SFX)                                            \
    void lstmx_cell_forward_##SFX(ptrdiff_t n, ptrdiff_t H, T *a,            \
                                  const T *rec,                              \
                                  const T *bias, const T *peep, T *h, T *c,  \
                                  T *h_out, T *c_out, int wide);             \
    void lstmx_cell_backward_##SFX(ptrdiff_t H, const T *act, const T *c_t,  \
                                   const T *c_prev, const T *peep,           \
                                   const T *dh_out, const T *dh_next, T *dc, \
                                   T *da, T *dpeep);

LSTMX_DECLARE_CELL(float, f32)
LSTMX_DECLARE_CELL(double, f64)

/* Recurrent matrix-vector products of one step on W_h as it is (see
 * _cell.c). */
#define LSTMX_DECLARE_MATMAT(T, SFX)                                          \
    void lstmx_matmat_##SFX(ptrdiff_t M, ptrdiff_t K, const T *W,            \
                            ptrdiff_t N, const T *X, ptrdiff_t ldx, T *Y,    \
                            ptrdiff_t ldy);                                  \
    void lstmx_matmat_t_##SFX(ptrdiff_t M, ptrdiff_t K, const T *W,          \
                              ptrdiff_t N, const T *X, ptrdiff_t ldx, T *Y,  \
                              ptrdiff_t ldy);

LSTMX_DECLARE_MATMAT(float, f32)
LSTMX_DECLARE_MATMAT(double, f64)

/* The recurrent product of many sequences, C (N, M) = A (N, K) B, with B
 * packed once per recurrence (see _cell.c): B[k][m] = W[m sm + k sk]; P
 * holds packed_size(M, K) elements. */
#define LSTMX_DECLARE_GEMM(T, SFX)                                            \
    ptrdiff_t lstmx_packed_size_##SFX(ptrdiff_t M, ptrdiff_t K);              \
    void lstmx_pack_##SFX(ptrdiff_t M, ptrdiff_t K, const T *W,              \
                          ptrdiff_t sm, ptrdiff_t sk, T *P);                  \
    void lstmx_gemm_packed_##SFX(ptrdiff_t N, ptrdiff_t M, ptrdiff_t K,       \
                                 const T *A, ptrdiff_t lda, const T *P,       \
                                 T *C, ptrdiff_t ldc, int backwards);        \
    /* the same C = A W^T for W (M, K), rows ldw apart, read as it is, and \
     * A packed instead (pack(N, K, A, lda, 1, Pa)): for fewer rows than W \
     * has */                                                                 \
    void lstmx_gemm_packed_a_##SFX(ptrdiff_t N, ptrdiff_t M, ptrdiff_t K,     \
                                   const T *Pa, const T *W, ptrdiff_t ldw,   \
                                   T *C, ptrdiff_t ldc);                      \
    /* C (M, Nc) = A^T B for A (K, M), B (K, Nc) as they are (weight       \
     * gradients over all of a layer's rows) */                               \
    void lstmx_gemm_tn_##SFX(ptrdiff_t M, ptrdiff_t Nc, ptrdiff_t K,          \
                             const T *A, ptrdiff_t lda, const T *B,           \
                             ptrdiff_t ldb, T *C, ptrdiff_t ldc);             \
    /* the same for nb = 1 or 2 operands B[b] (K, Nc[b]) at once, C[b] =   \
     * A^T B[b], A and the B packed a block at a time into work             \
     * (lstmx_gemm_tn_work of all their columns): for a wide A, as a        \
     * layer's dW_x and dW_h */                                               \
    void lstmx_gemm_tn_packed_##SFX(ptrdiff_t M, ptrdiff_t K, const T *A,     \
                                    ptrdiff_t lda, int nb,                    \
                                    const T *const *B, const ptrdiff_t *ldb,  \
                                    const ptrdiff_t *Nc, T *const *C,         \
                                    const ptrdiff_t *ldc, T *work);           \
    /* one sequence, B blocks of M columns: y[b gs + m] = (x B_b)[m] */       \
    void lstmx_gemv_packed_##SFX(ptrdiff_t B, ptrdiff_t M, ptrdiff_t K,       \
                                 const T *x, const T *P, T *y, ptrdiff_t gs,  \
                                 int backwards);

/* elements of the work of lstmx_gemm_tn_packed for Nc columns of (one or
 * two) operands in all, any dtype */
ptrdiff_t lstmx_gemm_tn_work(ptrdiff_t Nc);
/* 1 when the kernels run their AVX2+FMA build (chosen at load), else 0 */
int lstmx_uses_fma(void);
/* 1 when the packed GEMMs and the cell forward run their AVX-512 build */
int lstmx_uses_avx512(void);

LSTMX_DECLARE_GEMM(float, f32)
LSTMX_DECLARE_GEMM(double, f64)

/* Softmax cross-entropy of the rows of z (R, C), for losses.py (see
 * _cell.c): dz out, the sum of the valid rows' losses returned. */
#define LSTMX_DECLARE_XENT(T, SFX)                                            \
    double lstmx_softmax_xent_##SFX(ptrdiff_t R, ptrdiff_t C, const T *z,     \
                                    const ptrdiff_t *classes,                 \
                                    const unsigned char *valid, T scale,      \
                                    T *dz);

LSTMX_DECLARE_XENT(float, f32)
LSTMX_DECLARE_XENT(double, f64)

/* Threads sharing one recurrence wait for each other at every step (GCC and
 * clang atomics, POSIX sched_yield); elsewhere a recurrence runs on one
 * thread. */
#if defined(__GNUC__) && (defined(__unix__) || defined(__APPLE__))
#define LSTMX_HAVE_BARRIER 1
void lstmx_barrier_wait(int *b, int nthreads, int *sense);
/* A count raised by one thread and awaited by another (a pipelined single
 * sequence: steps projected, steps run): publish stores v (release), wait
 * spins until the count is at least v and returns it (acquire). */
void lstmx_count_publish(int *count, int v);
int lstmx_count_wait(const int *count, int v);
/* A second thread for pairs of jobs (see _cell.c); NULL where none. */
struct lstmx_worker;
struct lstmx_worker *lstmx_worker_new(int (*init)(int));
void lstmx_worker_post(struct lstmx_worker *w, void (*fn)(void *), void *arg);
void lstmx_worker_wait(struct lstmx_worker *w);
#else
#define LSTMX_HAVE_BARRIER 0
static inline void lstmx_barrier_wait(int *b, int nthreads, int *sense)
{
    (void)b, (void)nthreads, (void)sense;  /* never called: nparts stays 1 */
}
/* never called: nothing is pipelined without the barrier's atomics */
static inline void lstmx_count_publish(int *count, int v) { *count = v; }
static inline int lstmx_count_wait(const int *count, int v)
{
    (void)v;
    return *count;
}
struct lstmx_worker;
static inline struct lstmx_worker *lstmx_worker_new(int (*init)(int))
{
    (void)init;
    return NULL;   /* jobs pair up on Python threads instead */
}
static inline void lstmx_worker_post(struct lstmx_worker *w,
                                     void (*fn)(void *), void *arg)
{
    (void)w, (void)fn, (void)arg;
}
static inline void lstmx_worker_wait(struct lstmx_worker *w) { (void)w; }
#endif

/* The activations, exported for the tests of their error bounds. */
void lstmx_activations_f32(ptrdiff_t n, const float *z, float *e, float *s,
                           float *t);
void lstmx_activations_f64(ptrdiff_t n, const double *z, double *e, double *s,
                           double *t);

/* Add n to *c, from any thread (lstmx's test hooks tally which kernels a
 * call ran) */
static inline void lstmx_tally(long *c, long n)
{
#if defined(__GNUC__)
    __atomic_fetch_add(c, n, __ATOMIC_RELAXED);
#else
    *c += n;
#endif
}

/* Subnormal numbers flushed to zero while a kernel call runs (results
 * below the smallest normal number become zero, and such inputs read as
 * zero): FTZ and DAZ of x86-64's MXCSR, set on the calling thread by
 * lstmx_flush_begin(1), which returns the state that lstmx_flush_end puts
 * back (the two control bits only: exception flags raised meanwhile stay).
 * An operation on a subnormal operand or result takes a microcode assist
 * of a hundred cycles or so: backpropagating a loss on the last of 2000
 * steps took 3-4 times as long as one on every step, as dc decayed through
 * the subnormals (see lstmx/_denormals.py). Elsewhere than x86-64 there
 * is no flushing. */
#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define LSTMX_CAN_FLUSH 1
#define LSTMX_FTZ_DAZ 0x8040u    /* MXCSR bits 15 (FTZ) and 6 (DAZ) */
static inline unsigned lstmx_flush_begin(int on)
{
    unsigned saved = _mm_getcsr();
    if (on)
        _mm_setcsr(saved | LSTMX_FTZ_DAZ);
    return saved;
}

static inline void lstmx_flush_end(unsigned saved, int on)
{
    if (on)
        _mm_setcsr((_mm_getcsr() & ~LSTMX_FTZ_DAZ) | (saved & LSTMX_FTZ_DAZ));
}
#else
#define LSTMX_CAN_FLUSH 0
static inline unsigned lstmx_flush_begin(int on)
{
    (void)on;
    return 0;
}

static inline void lstmx_flush_end(unsigned saved, int on)
{
    (void)saved, (void)on;
}
#endif

#endif
