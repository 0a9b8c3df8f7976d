"""Kernels for one direction of one LSTM layer over a whole sequence.

The maths is DESIGN.md section 1 (seed 001's peephole cell) and its exact
backward pass (seed 002, batched, plus the peephole terms). Arrays are
time-major and C-contiguous; each (layer, direction) packs its four gates in
the order i, f, c(g), o:

    w_x   (4H, I)   w_h (4H, H)   bias (4H,)   peep (3H,) = p_i, p_f, p_o

A row of the (T*N, ...) matrices is ``t * N + n``. ``lengths[n]`` is the
number of valid steps of sequence n; the reverse direction walks
t = lengths[n] - 1, ..., 0. At step s, sequence n is active when
s < lengths[n]; inactive sequences keep their state and get no output.

The Python layer validates every shape before calling: bounds checks are off.
The caller passes the workspaces; only a packed W_h (and, for a split single
sequence's projection, a packed W_x) is allocated here, once per call (a
Job's, freed with it into a cache of blocks that the next call reuses).
"""
import array
import ctypes
import os
import threading
import time

from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset
from cython cimport floating

from ._blas cimport gemm
from ._threads import l2_cache_bytes


cdef extern from "_cell.h" nogil:
    void lstmx_cell_forward_f32(Py_ssize_t n, Py_ssize_t H, float* a,
                                const float* rec, const float* bias,
                                const float* peep, float* h, float* c,
                                float* h_out, float* c_out, int wide)
    void lstmx_cell_forward_f64(Py_ssize_t n, Py_ssize_t H, double* a,
                                const double* rec, const double* bias,
                                const double* peep, double* h, double* c,
                                double* h_out, double* c_out, int wide)
    int LSTMX_HAVE_BARRIER
    int LSTMX_CAN_FLUSH
    unsigned lstmx_flush_begin(int on)
    void lstmx_flush_end(unsigned saved, int on)
    void lstmx_tally(long* c, long n)
    void lstmx_barrier_wait(int* b, int nthreads, int* sense)
    void lstmx_count_publish(int* count, int v)
    int lstmx_count_wait(const int* count, int v)
    struct lstmx_worker:
        pass
    lstmx_worker* lstmx_worker_new(int (*init)(int) noexcept nogil)
    void lstmx_worker_post(lstmx_worker* w, void (*fn)(void*) noexcept nogil, void* arg)
    void lstmx_worker_wait(lstmx_worker* w)
    void lstmx_cell_backward_f32(Py_ssize_t H, const float* act, const float* c_t,
                                 const float* c_prev, const float* peep,
                                 const float* dh_out, const float* dh_next,
                                 float* dc, float* da, float* dpeep)
    void lstmx_cell_backward_f64(Py_ssize_t H, const double* act, const double* c_t,
                                 const double* c_prev, const double* peep,
                                 const double* dh_out, const double* dh_next,
                                 double* dc, double* da, double* dpeep)
    void lstmx_matmat_f32(Py_ssize_t M, Py_ssize_t K, const float* W,
                          Py_ssize_t N, const float* X, Py_ssize_t ldx,
                          float* Y, Py_ssize_t ldy)
    void lstmx_matmat_f64(Py_ssize_t M, Py_ssize_t K, const double* W,
                          Py_ssize_t N, const double* X, Py_ssize_t ldx,
                          double* Y, Py_ssize_t ldy)
    void lstmx_matmat_t_f32(Py_ssize_t M, Py_ssize_t K, const float* W,
                            Py_ssize_t N, const float* X, Py_ssize_t ldx,
                            float* Y, Py_ssize_t ldy)
    void lstmx_matmat_t_f64(Py_ssize_t M, Py_ssize_t K, const double* W,
                            Py_ssize_t N, const double* X, Py_ssize_t ldx,
                            double* Y, Py_ssize_t ldy)
    void lstmx_activations_f32(Py_ssize_t n, const float* z, float* e,
                               float* s, float* t)
    void lstmx_activations_f64(Py_ssize_t n, const double* z, double* e,
                               double* s, double* t)
    Py_ssize_t lstmx_packed_size_f32(Py_ssize_t M, Py_ssize_t K)
    Py_ssize_t lstmx_packed_size_f64(Py_ssize_t M, Py_ssize_t K)
    void lstmx_pack_f32(Py_ssize_t M, Py_ssize_t K, const float* W,
                        Py_ssize_t sm, Py_ssize_t sk, float* P)
    void lstmx_pack_f64(Py_ssize_t M, Py_ssize_t K, const double* W,
                        Py_ssize_t sm, Py_ssize_t sk, double* P)
    void lstmx_gemm_packed_f32(Py_ssize_t N, Py_ssize_t M, Py_ssize_t K,
                               const float* A, Py_ssize_t lda, const float* P,
                               float* C, Py_ssize_t ldc, int backwards)
    void lstmx_gemm_packed_f64(Py_ssize_t N, Py_ssize_t M, Py_ssize_t K,
                               const double* A, Py_ssize_t lda,
                               const double* P, double* C, Py_ssize_t ldc,
                               int backwards)
    void lstmx_gemm_packed_a_f32(Py_ssize_t N, Py_ssize_t M, Py_ssize_t K,
                                 const float* Pa, const float* W, Py_ssize_t ldw,
                                 float* C, Py_ssize_t ldc)
    void lstmx_gemm_packed_a_f64(Py_ssize_t N, Py_ssize_t M, Py_ssize_t K,
                                 const double* Pa, const double* W, Py_ssize_t ldw,
                                 double* C, Py_ssize_t ldc)
    void lstmx_gemm_tn_f32(Py_ssize_t M, Py_ssize_t Nc, Py_ssize_t K,
                           const float* A, Py_ssize_t lda, const float* B,
                           Py_ssize_t ldb, float* C, Py_ssize_t ldc)
    void lstmx_gemm_tn_f64(Py_ssize_t M, Py_ssize_t Nc, Py_ssize_t K,
                           const double* A, Py_ssize_t lda, const double* B,
                           Py_ssize_t ldb, double* C, Py_ssize_t ldc)
    void lstmx_gemm_tn_packed_f32(Py_ssize_t M, Py_ssize_t K, const float* A,
                                  Py_ssize_t lda, int nb, const float* const* B,
                                  const Py_ssize_t* ldb, const Py_ssize_t* Nc,
                                  float* const* C, const Py_ssize_t* ldc, float* work)
    void lstmx_gemm_tn_packed_f64(Py_ssize_t M, Py_ssize_t K, const double* A,
                                  Py_ssize_t lda, int nb, const double* const* B,
                                  const Py_ssize_t* ldb, const Py_ssize_t* Nc,
                                  double* const* C, const Py_ssize_t* ldc, double* work)
    Py_ssize_t lstmx_gemm_tn_work(Py_ssize_t Nc)
    double lstmx_softmax_xent_f32(Py_ssize_t R, Py_ssize_t C, const float* z,
                                  const Py_ssize_t* classes,
                                  const unsigned char* valid, float scale,
                                  float* dz)
    double lstmx_softmax_xent_f64(Py_ssize_t R, Py_ssize_t C, const double* z,
                                  const Py_ssize_t* classes,
                                  const unsigned char* valid, double scale,
                                  double* dz)
    int lstmx_uses_fma()
    int lstmx_uses_avx512()
    void lstmx_gemv_packed_f32(Py_ssize_t B, Py_ssize_t M, Py_ssize_t K,
                               const float* x, const float* P, float* y,
                               Py_ssize_t gs, int backwards)
    void lstmx_gemv_packed_f64(Py_ssize_t B, Py_ssize_t M, Py_ssize_t K,
                               const double* x, const double* P, double* y,
                               Py_ssize_t gs, int backwards)


cdef inline void _cell_forward(Py_ssize_t n, Py_ssize_t H, floating* a,
                               const floating* rec, const floating* bias,
                               const floating* peep, floating* h, floating* c,
                               floating* h_out, floating* c_out,
                               bint wide) noexcept nogil:
    """One step of n units of one sequence: the elementwise cell of _cell.c
    (wide: its AVX-512 build where there is one)."""
    if floating is float:
        lstmx_cell_forward_f32(n, H, a, rec, bias, peep, h, c, h_out, c_out, wide)
    else:
        lstmx_cell_forward_f64(n, H, a, rec, bias, peep, h, c, h_out, c_out, wide)


cdef inline void _cell_backward(Py_ssize_t H, const floating* act,
                                const floating* c_t, const floating* c_prev,
                                const floating* peep, const floating* dh_out,
                                const floating* dh_next, floating* dc,
                                floating* da, floating* dpeep) noexcept nogil:
    """Gate derivatives of one step of one sequence: see _cell.c."""
    if floating is float:
        lstmx_cell_backward_f32(H, act, c_t, c_prev, peep, dh_out, dh_next, dc, da, dpeep)
    else:
        lstmx_cell_backward_f64(H, act, c_t, c_prev, peep, dh_out, dh_next, dc, da, dpeep)


def _activations(const floating[::1] z, floating[::1] exp_out,
                 floating[::1] sigmoid_out, floating[::1] tanh_out):
    """Test hook: the exp, sigmoid and tanh of the cell kernels (float32 or
    float64), as built for this CPU (baseline or AVX2 + FMA). All four
    arrays have z's length."""
    n = z.shape[0]
    if not (exp_out.shape[0] == sigmoid_out.shape[0] == tanh_out.shape[0] == n):
        raise ValueError(f"the outputs must have z's length {n}")
    if n == 0:
        return
    if floating is float:
        lstmx_activations_f32(n, &z[0], &exp_out[0], &sigmoid_out[0], &tanh_out[0])
    else:
        lstmx_activations_f64(n, &z[0], &exp_out[0], &sigmoid_out[0], &tanh_out[0])


cdef inline Py_ssize_t _time(Py_ssize_t s, Py_ssize_t length, bint reverse) noexcept nogil:
    """Time index processed at step s by a sequence of this length."""
    return length - 1 - s if reverse else s


# --------------------------------------------------------------------------
# forward

# Up to this many sequences a step's recurrent product is _cell.c's matmat
# (W_h read as it is), except a single sequence's forward step with W_h up
# to ONE_PACKED_MAX_BYTES; beyond, its packed GEMM (W_h packed once per call,
# each packed weight reused from registers across 6 sequences). Measured,
# float32, ms (matmat / packed GEMM), bidirectional, each direction on one
# thread: predict H=64 T=200 N=2 0.89/0.75, N=4 1.34/1.26, N=8 3.21/2.33;
# H=320 T=50 N=2 3.24/3.22, N=4 5.26/4.00, N=8 10.2/6.7; backward H=64
# T=200 N=1 1.21/1.14, N=4 3.03/2.65, N=8 5.62/4.80; H=320 T=50 N=4
# 10.7/9.4. (Backward of one sequence measured slightly faster packed, but
# within the noise of that day; it stays on matmat_t.)
cdef Py_ssize_t SMALL_N = 1

# One sequence's forward step takes the packed GEMM's one-row kernel
# (gemv_packed) too when the rows of W_h a thread reads take at most this
# many bytes: matmat's dot products end in a horizontal sum per row, which
# the one-row kernel does not have. Measured, float32, best of ms in the
# same process (matmat / packed): small_infer (H=64) 1.76/1.43 on one
# thread, 1.31-1.68/1.27-1.36 on two; N=1 H=128 T=400 1.97/1.84 (one
# thread), 1.56/1.37 (two). With W_h much larger than L2 the products wait
# on L3, not on the sums, and packing W_h at every call costs more than it
# gains: seed_infer (H=320, 1.6 MB a direction) 22.0-24.5/23.5-26.2.
# Where a core's L2 is larger than that, W_h up to the L2's size is packed
# too: its panels taken backwards every other step (_gemv_packed), a step
# reads most of them from L2 where matmat's order found them evicted. With
# a 2 MB L2, one core, a step of H=320 (1.6 MB) with its cell: matmat
# 18.3 us, packed 12.9 us (both cores at once: 20.9-21.4 against
# 12.4-13.2); seed_infer, alternating in one process, 13.5-14.2 against
# 12.5-13.2 ms.
ONE_PACKED_MAX_BYTES = max(512 * 1024, l2_cache_bytes() or 0)


def packs_one_row(Py_ssize_t rows, Py_ssize_t H, Py_ssize_t itemsize):
    """Whether one sequence's forward step on ``rows`` rows of W_h (H
    columns, itemsize bytes each) takes the one-row kernel on a packed W_h
    (ONE_PACKED_MAX_BYTES). lstm._Chooser relies on it for whole W_h and
    lstm_forward for each part's rows."""
    return rows * H * itemsize <= ONE_PACKED_MAX_BYTES


cdef inline Py_ssize_t _share(Py_ssize_t n, int part, int nparts) noexcept nogil:
    """Where part ``part`` of ``nparts`` of n rows (or columns) starts."""
    return n * part // nparts


cdef inline void _pack_units(Py_ssize_t H, Py_ssize_t K, Py_ssize_t u0, Py_ssize_t u1,
                             const floating* w, floating* P) noexcept nogil:
    """Pack, as B = w^T for _gemm_units, the rows of units u0..u1-1 of each
    gate block of w (4H, K): all 4H rows as one B when they are all the
    units, else each gate block's rows in turn, _packed_size(u1 - u0, K)
    apart (room for 4 of those)."""
    cdef Py_ssize_t g, nu = u1 - u0, seg = _packed_size(nu, K, w)
    if nu == H:
        _pack(4 * H, K, w, K, 1, P)
        return
    for g in range(4):
        _pack(nu, K, w + (g * H + u0) * K, K, 1, P + g * seg)


cdef inline void _gemm_units(Py_ssize_t N, Py_ssize_t H, Py_ssize_t K, Py_ssize_t u0,
                             Py_ssize_t u1, const floating* A, const floating* P,
                             floating* C, bint backwards) noexcept nogil:
    """The columns of units u0..u1-1 of each gate block of C (N, 4H) = A
    (N, K) times the B that _pack_units packed in P (rows of A K apart, of
    C 4H): one packed GEMM when they are all the units, else one a gate
    block, the blocks too taken backwards when backwards."""
    cdef Py_ssize_t g, gb, nu = u1 - u0, seg = _packed_size(nu, K, A)
    if nu == H:
        _gemm_packed(N, 4 * H, K, A, K, P, C, 4 * H, backwards)
        return
    for g in range(4):
        gb = 3 - g if backwards else g
        _gemm_packed(N, nu, K, A, K, P + gb * seg, C + gb * H + u0, 4 * H, backwards)


cdef inline void _matmat(Py_ssize_t M, Py_ssize_t K, const floating* W,
                         Py_ssize_t N, const floating* X, Py_ssize_t ldx,
                         floating* Y, Py_ssize_t ldy) noexcept nogil:
    """Y[n] (M) = W (M, K) X[n] for n < N, rows ldx and ldy apart (_cell.c)."""
    if floating is float:
        lstmx_matmat_f32(M, K, W, N, X, ldx, Y, ldy)
    else:
        lstmx_matmat_f64(M, K, W, N, X, ldx, Y, ldy)


cdef inline void _matmat_units(Py_ssize_t N, Py_ssize_t H, Py_ssize_t K, Py_ssize_t u0,
                               Py_ssize_t u1, const floating* A, const floating* W,
                               floating* C) noexcept nogil:
    """_gemm_units' columns, C (N, 4H) = A (N, K) W^T, with W (4H, K) read
    as it is (_matmat): one call for all units, else one a gate block."""
    cdef Py_ssize_t g, nu = u1 - u0
    if nu == H:
        _matmat(4 * H, K, W, N, A, K, C, 4 * H)
        return
    for g in range(4):
        _matmat(nu, K, W + (g * H + u0) * K, N, A, K, C + g * H + u0, 4 * H)


# A single sequence's W_h larger than L2 is read from L3 at every step. Every
# other step takes its rows backwards, in chunks of this many bytes, so that
# it starts with the rows that the step before read last and that are still
# in L2. The same bits either way (each row is summed alone, and chunks
# start on multiples of 8 rows). Measured with a 512 KB L2, float32, N=1,
# time with / without in alternating blocks: one thread, H=320 (W_h 1.6
# MB), chunks of 10, 80 and 320 KB 0.983, 0.955, 0.927 (of 13.5 ms);
# seed_infer (a direction of 1.6 MB a thread) 0.988, 0.995, 0.971 at 80 KB,
# 0.973, 0.978, 0.967 at 160 KB, 0.974, 0.981, 0.979 at 320 KB, and at this
# 128 KB 0.971, 1.001, 0.930; split by units, H=320 (0.8 MB a thread)
# 0.974, 1.003, 0.951, H=512 (2 MB) 1.045, 0.989, 0.998. That is less than
# the L2's share of W_h (a third at H=320) would give; why was not measured.
cdef Py_ssize_t ZIGZAG_BYTES = 128 * 1024


cdef inline void _matmat_zigzag(Py_ssize_t M, Py_ssize_t K, const floating* W,
                                Py_ssize_t N, const floating* X, Py_ssize_t ldx,
                                floating* Y, Py_ssize_t ldy, bint backwards) noexcept nogil:
    """_matmat, its rows taken in chunks of about ZIGZAG_BYTES from the
    last chunk to the first when ``backwards``."""
    cdef Py_ssize_t rows = ZIGZAG_BYTES // (K * sizeof(floating)) // 8 * 8
    cdef Py_ssize_t k, r0
    if not backwards or ZIGZAG_BYTES == 0 or rows >= M:
        _matmat(M, K, W, N, X, ldx, Y, ldy)
        return
    rows = max(rows, 8)
    k = (M - 1) // rows
    while k >= 0:
        r0 = k * rows
        _matmat(min(rows, M - r0), K, W + r0 * K, N, X, ldx, Y + r0, ldy)
        k -= 1


def _set_zigzag_bytes(Py_ssize_t n):
    """Test hook: ZIGZAG_BYTES (0: every step forwards); returns the old."""
    global ZIGZAG_BYTES
    old = ZIGZAG_BYTES
    ZIGZAG_BYTES = n
    return old


cdef inline void _matmat_t(Py_ssize_t M, Py_ssize_t K, const floating* W,
                           Py_ssize_t N, const floating* X, Py_ssize_t ldx,
                           floating* Y, Py_ssize_t ldy) noexcept nogil:
    """Y[n] (K) = W^T X[n] with W (M, K), for n < N (_cell.c)."""
    if floating is float:
        lstmx_matmat_t_f32(M, K, W, N, X, ldx, Y, ldy)
    else:
        lstmx_matmat_t_f64(M, K, W, N, X, ldx, Y, ldy)


cdef inline Py_ssize_t _packed_size(Py_ssize_t M, Py_ssize_t K,
                                    const floating* like) noexcept nogil:
    """Elements of a packed B with M columns and K rows (like: the dtype)."""
    if floating is float:
        return lstmx_packed_size_f32(M, K)
    else:
        return lstmx_packed_size_f64(M, K)


cdef inline void _pack(Py_ssize_t M, Py_ssize_t K, const floating* W,
                       Py_ssize_t sm, Py_ssize_t sk, floating* P) noexcept nogil:
    """Pack B (K, M), B[k][m] = W[m sm + k sk], for _gemm_packed (_cell.c):
    sm = ldw, sk = 1 for B = W^T; sm = 1, sk = ldw for B = W."""
    if floating is float:
        lstmx_pack_f32(M, K, W, sm, sk, P)
    else:
        lstmx_pack_f64(M, K, W, sm, sk, P)


cdef inline void _gemm_packed(Py_ssize_t N, Py_ssize_t M, Py_ssize_t K,
                              const floating* A, Py_ssize_t lda,
                              const floating* P, floating* C,
                              Py_ssize_t ldc, bint backwards=False) noexcept nogil:
    """C (N, M) = A (N, K) B, B packed in P (_cell.c); backwards, B's panels
    from the last to the first (the same sums: a recurrence alternates, so
    that a step starts on the panels the step before read last, still in
    cache)."""
    if floating is float:
        lstmx_gemm_packed_f32(N, M, K, A, lda, P, C, ldc, backwards)
    else:
        lstmx_gemm_packed_f64(N, M, K, A, lda, P, C, ldc, backwards)


# A part's projection of fewer rows than W_x has packs the rows, not W_x
# (_gemm_packed_a), unless this is False (a test hook sets it).
cdef bint PACK_ROWS = True


def _set_pack_rows(bint on):
    """Test hook: PACK_ROWS; returns the old."""
    global PACK_ROWS
    old = PACK_ROWS
    PACK_ROWS = on
    return old


cdef inline void _gemm_packed_a(Py_ssize_t N, Py_ssize_t M, Py_ssize_t K,
                                const floating* Pa, const floating* W,
                                Py_ssize_t ldw, floating* C,
                                Py_ssize_t ldc) noexcept nogil:
    """C (N, M) = A (N, K) W^T for W (M, K) as it is, A packed in Pa by
    _pack(N, K, A, lda, 1, Pa) (_cell.c): _gemm_packed's bits, for fewer
    rows than W has."""
    if floating is float:
        lstmx_gemm_packed_a_f32(N, M, K, Pa, W, ldw, C, ldc)
    else:
        lstmx_gemm_packed_a_f64(N, M, K, Pa, W, ldw, C, ldc)


cdef inline void _gemv_packed(Py_ssize_t B, Py_ssize_t M, Py_ssize_t K,
                              const floating* x, const floating* P,
                              floating* y, Py_ssize_t gs,
                              bint backwards) noexcept nogil:
    """One sequence: y[b gs + m] = (x B_b)[m] for B blocks of M columns
    packed one after another in P (_cell.c); backwards, the panels from the
    last to the first (the same sums)."""
    if floating is float:
        lstmx_gemv_packed_f32(B, M, K, x, P, y, gs, backwards)
    else:
        lstmx_gemv_packed_f64(B, M, K, x, P, y, gs, backwards)


# A weight gradient C (M, Nc) = A^T B over many rows K (dW = dA^T X, the
# head's dW_fc = dY^T H) runs on _cell.c's gemm_tn, which reads A and B where
# they are, when B has at most TN_MAX_COLS columns. One thread, float32, K =
# 1600 (small_train's rows), gemm_tn / sgemm in alternating blocks: (M, Nc)
# = (128, 64) 0.91, (128, 16) 0.51; K = 3200: (640, 64) 0.99, (160, 160)
# 1.05, (640, 320) 1.27. Wider ones run on gemm_tn_packed, which packs both
# operands a block at a time, when A has at least TN_PACKED_MIN_ROWS
# columns (rows of C) and the caller has its work; else on BLAS, which
# copies both too. seed_train's second layer (K = 3200 rows, M = 1280, I =
# 640), dW_x and dW_h of a direction through lstm_backward_weights, each
# core running one, builds installed side by side and run in turn: float32
# 51-52 ms against sgemm's 56-57 (first layer, I = 360: 38-39 against
# 42-43), and 47.0-48.5 once dW_x and dW_h shared the packing of dA
# (against 49.3-50.9 unshared); float64 103-104 ms against dgemm's
# 114-115. The head's dW_fc (M = O) stays with BLAS.
cdef Py_ssize_t TN_MAX_COLS = 64
cdef Py_ssize_t TN_PACKED_MIN_ROWS = 256


cdef inline void _gemm_tn(Py_ssize_t M, Py_ssize_t Nc, Py_ssize_t K,
                          const floating* A, Py_ssize_t lda,
                          const floating* B, Py_ssize_t ldb,
                          floating* C, Py_ssize_t ldc) noexcept nogil:
    """C (M, Nc) = A^T B, A (K, M) and B (K, Nc) read where they are (_cell.c)."""
    if floating is float:
        lstmx_gemm_tn_f32(M, Nc, K, A, lda, B, ldb, C, ldc)
    else:
        lstmx_gemm_tn_f64(M, Nc, K, A, lda, B, ldb, C, ldc)


cdef inline void _gemm_tn_packed(Py_ssize_t M, Py_ssize_t K, const floating* A,
                                 Py_ssize_t lda, int nb, const floating** B,
                                 const Py_ssize_t* ldb, const Py_ssize_t* Nc,
                                 floating** C, const Py_ssize_t* ldc,
                                 floating* work) noexcept nogil:
    """C[b] (M, Nc[b]) = A^T B[b] for b < nb (1 or 2), A, B[b] (K, Nc[b])
    read with rows lda, ldb[b] apart, all packed a block at a time into
    work (room for lstmx_gemm_tn_work of all Nc[b]): _gemm_tn's bits."""
    if floating is float:
        lstmx_gemm_tn_packed_f32(M, K, A, lda, nb, B, ldb, Nc, C, ldc, work)
    else:
        lstmx_gemm_tn_packed_f64(M, K, A, lda, nb, B, ldb, Nc, C, ldc, work)


# Weight gradients run so far on gemm_tn, gemm_tn_packed and BLAS (_tn_paths)
cdef long _tn_ran[3]


cdef inline bint _tn_packs(Py_ssize_t M, Py_ssize_t Nc) noexcept nogil:
    """Whether a weight gradient C (M, Nc) runs on gemm_tn_packed."""
    return Nc > TN_MAX_COLS and M >= TN_PACKED_MIN_ROWS


cdef inline void _weight_grad(int M, int Nc, int K, const floating* A, int lda,
                              const floating* B, int ldb, floating* C,
                              int ldc) noexcept nogil:
    """C (M, Nc) = A^T B, A (K, M) and B (K, Nc), rows lda, ldb, ldc apart,
    on gemm_tn or, wider than TN_MAX_COLS, BLAS."""
    if Nc <= TN_MAX_COLS:
        lstmx_tally(&_tn_ran[0], 1)
        _gemm_tn(M, Nc, K, A, lda, B, ldb, C, ldc)
    else:
        lstmx_tally(&_tn_ran[2], 1)
        gemm(True, False, M, Nc, K, <floating>1.0, A, lda, B, ldb, <floating>0.0, C, ldc)


# Packed weights start on a cache line: the packed kernels' vector loads
# (64 bytes in the AVX-512 build) then never straddle two lines. malloc's
# 16 bytes cost the one-row kernel half again: one core, 4 blocks of 64 x 32
# (small_infer's half of W_h) 139 -> 210 ns, of 64 x 64 405 -> 605 ns.
cdef enum:
    PACK_ALIGN = 64

# Freed blocks are kept for the next call (up to CACHE_SLOTS of them, at
# most CACHE_MAX_BYTES in all; the least recently freed one goes first),
# because the next call of a network packs into blocks of the same sizes.
# A fresh block of a megabyte or more comes from mmap, and the kernel faults
# in its pages as the packing first writes them: seed_infer spent 7.5% of
# its samples (perf, both threads) in those faults and 1.1% more in brk
# trims, its four packs of W_h (1.6 MB each) per call 2.9%.
cdef enum:
    CACHE_SLOTS = 8
    CACHE_MAX_BYTES = 64 * 1024 * 1024

cdef char* _cached[CACHE_SLOTS]          # aligned pointers, or NULL
cdef size_t _cached_since[CACHE_SLOTS]   # when freed (a counter)
cdef size_t _cache_clock = 0
cdef size_t _cached_bytes = 0
cdef size_t _cache_hits = 0             # blocks _alloc took from the cache


cdef inline size_t _capacity(const char* p) noexcept:
    return (<const size_t*>p - 2)[0]


cdef void _release(char* p) noexcept:
    """Give p's memory back to the system."""
    free((<void**>p - 1)[0])


cdef floating* _alloc(Py_ssize_t n, const floating* like) except NULL:
    """n elements for a packed weight, on a cache line (like: the dtype);
    the caller frees it with _free. Called with the GIL held (it guards
    the cache of freed blocks)."""
    global _cached_bytes, _cache_hits
    cdef size_t need = max(n, 1) * sizeof(floating), cap
    cdef int i, best = -1
    # the smallest cached block that holds n without wasting half of it
    for i in range(CACHE_SLOTS):
        if _cached[i] != NULL:
            cap = _capacity(_cached[i])
            if need <= cap <= 2 * need and (best < 0 or cap < _capacity(_cached[best])):
                best = i
    cdef char* p
    if best >= 0:
        p = _cached[best]
        _cached[best] = NULL
        _cached_bytes -= _capacity(p)
        _cache_hits += 1
        return <floating*>p
    # room before the aligned start for the raw pointer and the capacity
    cdef char* raw = <char*>malloc(need + PACK_ALIGN + 2 * sizeof(size_t))
    if raw == NULL:
        raise MemoryError(f"could not allocate {need} bytes for a packed weight")
    p = raw + 2 * sizeof(size_t)
    p += (PACK_ALIGN - <size_t>p % PACK_ALIGN) % PACK_ALIGN
    (<void**>p - 1)[0] = raw
    (<size_t*>p - 2)[0] = need
    return <floating*>p


cdef void _free(void* ptr) noexcept:
    """Take back what _alloc returned (or nothing, for NULL): into the
    cache of freed blocks, or to the system. With the GIL held."""
    global _cached_bytes, _cache_clock
    cdef char* p = <char*>ptr
    if p == NULL:
        return
    cdef size_t cap = _capacity(p)
    cdef int i, slot, oldest
    if cap > CACHE_MAX_BYTES:
        _release(p)
        return
    # make room: the least recently freed blocks go first
    while True:
        slot = oldest = -1
        for i in range(CACHE_SLOTS):
            if _cached[i] == NULL:
                slot = i
            elif oldest < 0 or _cached_since[i] < _cached_since[oldest]:
                oldest = i
        if slot >= 0 and _cached_bytes + cap <= CACHE_MAX_BYTES:
            break
        _cached_bytes -= _capacity(_cached[oldest])
        _release(_cached[oldest])
        _cached[oldest] = NULL
    _cache_clock += 1
    _cached[slot] = p
    _cached_since[slot] = _cache_clock
    _cached_bytes += cap


def _packed_cache():
    """Test hook: (blocks, bytes) in the cache of freed packed blocks, its
    limits (CACHE_SLOTS, CACHE_MAX_BYTES), and how many blocks _alloc has
    taken from it so far."""
    cdef int i, blocks = 0
    for i in range(CACHE_SLOTS):
        blocks += _cached[i] != NULL
    return blocks, _cached_bytes, CACHE_SLOTS, CACHE_MAX_BYTES, _cache_hits


def _gemm_packed_test(const floating[:, ::1] a, const floating[:, ::1] w, bint transposed,
                      floating[:, ::1] c, bint pack_a=False):
    """Test hook: c (N, M) = a (N, K) w^T for w (M, K) (transposed), or
    a w for w (K, M), through _cell.c's packing and packed GEMM; with
    pack_a (and transposed), a packed and w read as it is (gemm_packed_a)."""
    cdef Py_ssize_t N = a.shape[0], K = a.shape[1], M = c.shape[1]
    cdef floating* P = _alloc(_packed_size(max(M, N), K, &a[0, 0]), &a[0, 0])
    try:
        if transposed and pack_a:
            _pack(N, K, &a[0, 0], K, 1, P)
            _gemm_packed_a(N, M, K, P, &w[0, 0], K, &c[0, 0], M)
            return
        if transposed:
            _pack(M, K, &w[0, 0], w.shape[1], 1, P)
        else:
            _pack(M, K, &w[0, 0], 1, w.shape[1], P)
        _gemm_packed(N, M, K, &a[0, 0], K, P, &c[0, 0], M)
    finally:
        _free(P)


def _gemm_tn_test(const floating[:, :] a, const floating[:, :] b, floating[:, :] c,
                  bint packed=False):
    """Test hook: c (M, Nc) = a^T b for a (K, M) and b (K, Nc), through
    _cell.c's gemm_tn (packed: gemm_tn_packed); rows of each may be any
    distance apart, columns adjacent."""
    if a.shape[0] != b.shape[0] or c.shape[0] != a.shape[1] or c.shape[1] != b.shape[1]:
        raise ValueError("a (K, M), b (K, Nc) and c (M, Nc) expected")
    if a.strides[1] != sizeof(floating) or b.strides[1] != sizeof(floating) \
            or c.strides[1] != sizeof(floating):
        raise ValueError("a, b, c: columns must be adjacent")
    if c.shape[0] == 0 or c.shape[1] == 0:
        return
    cdef floating dummy = 0
    if not packed:
        _gemm_tn(c.shape[0], c.shape[1], a.shape[0],
                 &a[0, 0] if a.shape[0] else &dummy, a.strides[0] // sizeof(floating),
                 &b[0, 0] if b.shape[0] else &dummy, b.strides[0] // sizeof(floating),
                 &c[0, 0], c.strides[0] // sizeof(floating))
        return
    _gemm_tn_pair_test(a, b, c, b, c, 1)


def _gemm_tn_pair_test(const floating[:, :] a, const floating[:, :] b1, floating[:, :] c1,
                       const floating[:, :] b2, floating[:, :] c2, int nb=2):
    """Test hook: c1 = a^T b1 and c2 = a^T b2 at once through _cell.c's
    gemm_tn_packed (nb = 1: c1 only); shapes as _gemm_tn_test's."""
    cdef Py_ssize_t K = a.shape[0], M = a.shape[1]
    if not (b1.shape[0] == b2.shape[0] == K and c1.shape[0] == c2.shape[0] == M
            and c1.shape[1] == b1.shape[1] and c2.shape[1] == b2.shape[1]):
        raise ValueError("a (K, M), b (K, Nc) and c (M, Nc) expected")
    if (a.strides[1] != sizeof(floating) or b1.strides[1] != sizeof(floating)
            or b2.strides[1] != sizeof(floating) or c1.strides[1] != sizeof(floating)
            or c2.strides[1] != sizeof(floating)):
        raise ValueError("a, b, c: columns must be adjacent")
    if M == 0 or c1.shape[1] == 0 or c2.shape[1] == 0:
        raise ValueError("c1, c2: expected at least one row and one column")
    cdef floating dummy = 0
    cdef const floating* B[2]
    cdef floating* C[2]
    cdef Py_ssize_t ldb[2]
    cdef Py_ssize_t ldc[2]
    cdef Py_ssize_t Nc[2]
    B[0] = &b1[0, 0] if K else &dummy
    B[1] = &b2[0, 0] if K else &dummy
    C[0], C[1] = &c1[0, 0], &c2[0, 0]
    ldb[0], ldb[1] = b1.strides[0] // sizeof(floating), b2.strides[0] // sizeof(floating)
    ldc[0], ldc[1] = c1.strides[0] // sizeof(floating), c2.strides[0] // sizeof(floating)
    Nc[0], Nc[1] = c1.shape[1], c2.shape[1]
    cdef floating* work = _alloc(lstmx_gemm_tn_work(Nc[0] + (Nc[1] if nb == 2 else 0)),
                                 &c1[0, 0])
    try:
        _gemm_tn_packed(M, K, &a[0, 0] if K else &dummy, a.strides[0] // sizeof(floating),
                        nb, B, ldb, Nc, C, ldc, work)
    finally:
        _free(work)


# A kernel call prepared as a Job (the def functions below with defer=True)
# runs later without the GIL; run_pair (at the end of the kernels) runs two
# at once.

cdef enum:
    _PROJECT, _FORWARD, _BACKWARD, _WEIGHTS, _LINEAR, _LINEAR_BACK, _SOFTMAX, _PIPE, _MEET

cdef struct _Args:
    # the arguments of one kernel call; pointers to float or double (dbl)
    int kind
    bint dbl
    bint flush            # subnormals flushed to zero while it runs
    bint reverse
    bint flag
    Py_ssize_t T, N, I, H, R, G, u0, u1, n0, n1, ld
    Py_ssize_t by_step    # a forward's steps per block of projection, or 0
    bint ring             # and its gates hold a block's rows only
    bint in_place         # a forward's projection reads W_x as it is
    int part, nparts
    const int* lengths
    int* barrier
    int* pipe
    void* x
    void* w_x
    void* w_h
    void* bias
    void* peep
    void* h_buf
    void* c
    void* out
    void* gates
    void* c_all
    void* h_prev_all
    void* rec
    void* owned
    void* owned_x
    void* c0
    void* dh_n
    void* dc_n
    void* dpeep
    void* dgates
    void* dh_rec
    void* dw_x
    void* dw_h
    void* dx
    # softmax cross-entropy's
    const Py_ssize_t* classes
    const unsigned char* valid
    double scale
    double* total


cdef class Job:
    """One kernel call, checked and ready: run() runs it (the GIL
    released); run_pair(a, b) runs two at once."""
    # args.owned, owned_x: blocks from _alloc, freed with the job: a packed
    # W_h and W_x (a forward's, a pipe's), or the packed W_x of dX and
    # gemm_tn_packed's work (a weights job's)
    cdef _Args args
    cdef object keep      # the arrays that args point into

    def __dealloc__(self):
        _free(self.args.owned)
        _free(self.args.owned_x)

    cdef object _run_or_defer(self, bint defer):
        if defer:
            return self
        self.run()
        return None

    def run(self):
        self._check()
        if self.args.barrier != NULL:
            raise ValueError("job: a part of a split recurrence meets its partners at every "
                             "step; run the parts at once with run_pair")
        self._go()

    cdef void _go(self):
        """Run the checked call, the GIL released."""
        with nogil:
            _run_job(&self.args)

    cdef _check(self):
        if self.keep is None:
            raise ValueError("job: not a prepared call (make one with defer=True)")


cdef Job _new_job(int kind, bint dbl, tuple keep, int part=0, int nparts=1):
    """A job of this kind with its common fields set (part checked); the
    caller sets the rest of its arguments."""
    if not 0 <= part < nparts:
        raise ValueError(f"part, nparts: expected 0 <= part < nparts, got {part}, {nparts}")
    cdef Job job = Job()
    job.keep = keep
    job.args.kind, job.args.dbl = kind, dbl
    job.args.flush = _flush_f64 if dbl else _flush_f32
    job.args.part, job.args.nparts = part, nparts
    return job


# Whether jobs of each dtype flush subnormal numbers to zero while they run
# (lstmx/_denormals.py sets these; _run_job applies them).
cdef bint _flush_f32 = True
cdef bint _flush_f64 = False


def _set_flush(bint float32, bint float64):
    """Flush subnormals to zero in the jobs made from now on, per dtype."""
    global _flush_f32, _flush_f64
    _flush_f32, _flush_f64 = float32, float64


def _get_flush():
    """(float32, float64): whether jobs of each dtype flush subnormals."""
    return bool(_flush_f32), bool(_flush_f64)


def can_flush():
    """Whether this build can flush subnormals to zero (x86-64: MXCSR)."""
    return bool(LSTMX_CAN_FLUSH)


cdef void _project(Py_ssize_t R, Py_ssize_t I, Py_ssize_t H, Py_ssize_t u0,
                   Py_ssize_t u1, const floating* x, const floating* w_x,
                   floating* gates) noexcept nogil:
    """Columns of units u0..u1-1 of each gate block of gates (R, 4H) =
    X (R, I) W_x^T: one GEMM over all 4H columns when that is all units,
    else one per gate block."""
    cdef Py_ssize_t G = 4 * H, g
    if u0 == 0 and u1 == H:
        gemm(False, True, <int>R, <int>G, <int>I, <floating>1.0, x, <int>I,
             w_x, <int>I, <floating>0.0, gates, <int>G)
        return
    for g in range(4):
        gemm(False, True, <int>R, <int>(u1 - u0), <int>I, <floating>1.0, x,
             <int>I, w_x + (g * H + u0) * I, <int>I, <floating>0.0,
             gates + g * H + u0, <int>G)


def lstm_project(const floating[:, :, ::1] x, const floating[:, ::1] w_x,
                 floating[:, :, ::1] gates, bint defer=False):
    """Input projection of all T*N rows in one GEMM: gates = X W_x^T.

    x (T, N, I); w_x (4H, I); gates (T, N, 4H) out. The bias is added by the
    cell. Run before the recurrence; BLAS may use several threads (the
    caller holds it to one where two projections run at once).
    With defer, returns the call as a Job (see run_pair) instead.
    """
    if w_x.shape[1] != x.shape[2] or w_x.shape[0] % 4 or gates.shape[0] != x.shape[0] \
            or gates.shape[1] != x.shape[1] or gates.shape[2] != w_x.shape[0]:
        raise ValueError("x (T, N, I), w_x (4H, I) and gates (T, N, 4H) expected")
    cdef Job job = _new_job(_PROJECT, floating is double, (x, w_x, gates))
    job.args.R = x.shape[0] * x.shape[1]
    job.args.I = x.shape[2]
    job.args.H = w_x.shape[0] // 4
    job.args.x = <void*>&x[0, 0, 0]
    job.args.w_x = <void*>&w_x[0, 0]
    job.args.gates = <void*>&gates[0, 0, 0]
    return job._run_or_defer(defer)


cdef void _forward(Py_ssize_t T, Py_ssize_t N, Py_ssize_t I, Py_ssize_t H,
                   Py_ssize_t u0, Py_ssize_t u1, const floating* x,
                   const floating* w_x, const floating* w_h,
                   const floating* bias, const floating* peep,
                   const int* lengths, bint reverse,
                   floating* h_buf, floating* c,
                   floating* out, Py_ssize_t ld_out,
                   floating* gates, floating* c_all, floating* h_prev_all,
                   floating* rec, floating* w_pack, int* barrier,
                   int part, int nparts, Py_ssize_t n0, Py_ssize_t n1,
                   floating* w_x_pack, int* pipe, Py_ssize_t by_step,
                   bint ring, bint in_place) noexcept nogil:
    """The recurrence of one direction of one layer over T steps, for the
    units u0 <= j < u1 of H: one of ``nparts`` threads that share it.

    x (T, N, I) or NULL: when given, this part's columns of the input
    projection are computed first (gates = X W_x^T; else gates holds it).
    With w_x_pack (room for _packed_size(4H, I), or for _packed_size(T N,
    I) when that is less and PACK_ROWS, else NULL), each part computes all
    columns of its share of the T N rows instead, with the packed GEMM on
    W_x^T packed there, or on its rows packed there when they are fewer
    than W_x's 4H (_gemm_packed_a): either sums each element
    in the same order whatever the rows, so the parts give the bits one
    thread gives.
    h_buf (2, N, H): h_{t-1} is read from one half and h_t written to the
    other, alternating, so that parts never read what another writes in the
    same step; the initial state is in h_buf[0] and the final one ends in
    h_buf[T % 2]. c (N, H): the cell state, in place. out: h_t of row r goes
    to out + r * ld_out. gates (T, N, 4H): activated gates out when
    training. c_all, h_prev_all (T, N, H): c_t and h_{t-1} per row for
    backward, or NULL for inference. rec (N, 4H) workspace. w_pack: room
    for this part's rows of W_h packed (4 _packed_size(u1 - u0, H)), or
    NULL when the recurrent products are matmat's (at most SMALL_N
    sequences; for one, only with a W_h above ONE_PACKED_MAX_BYTES).
    barrier: two ints shared by the parts, waited at the end of every
    step.

    Only the sequences n0 <= n < n1 are run: sequences are independent, so
    threads given disjoint ranges (and all the units) need no barrier.

    pipe (2 ints) or NULL: one sequence forwards, whose gates another
    thread projects meanwhile (_pipe): step s waits until pipe[0] > s rows
    are projected, and pipe[1] counts the steps run, raised every PIPE_ROWS
    steps and at the end (the other thread's head follows it).

    by_step > 0 (x given; reverse only when every length is T): the
    projection is computed as the steps come instead, by_step steps at a
    time (one at a time when n0..n1 is not all sequences: only their rows),
    this part's columns, on the packed GEMM over this part's columns of W_x
    packed in w_x_pack (room for 4 _packed_size(u1 - u0, I)). A block's
    gates are still in cache when its cells read them, where a projection
    of all T N rows first sends them to memory and back (BLAS also zeroes
    and copies them). The packed GEMM sums each element in the same order
    whatever its rows and columns: the bits of w_x_pack's projection by
    rows. With ring (inference), gates holds a
    block's rows only (by_step steps of N rows): each block is projected to
    its start, and a step's cells read their rows there.

    in_place (x given, no w_x_pack, no by_step): the projection reads W_x
    as it is, a dot product a row and column (_matmat), for a call of a
    few rows, where packing either operand costs more than the product.
    """
    cdef Py_ssize_t G = 4 * H, nu = u1 - u0, Nb = n1 - n0
    cdef int projected = 0
    cdef Py_ssize_t s, n, t, row, g, gb, r0, r1
    cdef floating* cur
    cdef floating* nxt
    cdef bint training = c_all != NULL
    cdef bint whole = u0 == 0 and u1 == H
    cdef int sense = 0
    cdef Py_ssize_t rows, k, gr
    cdef Py_ssize_t tb = 0      # the time of the block's first rows (ring)
    if x != NULL and by_step:
        _pack_units(H, I, u0, u1, w_x, w_x_pack)
    elif x != NULL and in_place:
        _matmat_units(T * N, H, I, u0, u1, x, w_x, gates)
    elif x != NULL and w_x_pack == NULL:
        _project(T * N, I, H, u0, u1, x, w_x, gates)
    elif x != NULL:
        r0 = _share(T * N, part, nparts)
        r1 = _share(T * N, part + 1, nparts)
        if PACK_ROWS and r1 - r0 < G:
            # fewer rows than W_x: they are packed instead (_gemm_packed_a;
            # the same bits). seed_infer's part packs 200 rows, not 1280.
            _pack(r1 - r0, I, x + r0 * I, I, 1, w_x_pack)
            _gemm_packed_a(r1 - r0, G, I, w_x_pack, w_x, I, gates + r0 * G, G)
        else:
            _pack(G, I, w_x, I, 1, w_x_pack)
            _gemm_packed(r1 - r0, G, I, x + r0 * I, I, w_x_pack, gates + r0 * G, G)
        if nparts > 1:
            lstmx_barrier_wait(barrier, nparts, &sense)
    if w_pack != NULL:
        _pack_units(H, H, u0, u1, w_h, w_pack)
    if training:
        # Padded rows must be zero for backward's GEMMs over all rows.
        for n in range(n0, n1):
            for t in range(lengths[n], T):
                memset(h_prev_all + (t * N + n) * H + u0, 0, nu * sizeof(floating))
    for s in range(T):
        cur = h_buf + (s % 2) * N * H
        nxt = h_buf + ((s + 1) % 2) * N * H
        if pipe != NULL and s >= projected:
            projected = lstmx_count_wait(&pipe[0], <int>s + 1)
        # Recurrent term of all sequences, this part's rows of each gate:
        # rec = h_{t-1} W_h^T.
        if whole and w_pack == NULL:
            _matmat_zigzag(G, H, w_h, Nb, cur + n0 * H, H, rec + n0 * G, G, s % 2)
        elif w_pack != NULL and N == 1 and not whole:
            _gemv_packed(4, nu, H, cur, w_pack, rec + u0, H, s % 2)
        elif w_pack != NULL:
            # (a part's units run on all N sequences: n0 = 0, Nb = N)
            _gemm_units(Nb, H, H, u0, u1, cur + n0 * H, w_pack, rec + n0 * G, s % 2)
        else:
            for g in range(4):
                gb = 3 - g if s % 2 else g   # the gate blocks backwards too
                _matmat_zigzag(nu, H, w_h + (gb * H + u0) * H, N, cur, H,
                               rec + gb * H + u0, G, s % 2)
        if by_step and x != NULL and s % by_step == 0:
            # the input projection of this block of steps (this part's
            # columns, these sequences' rows), W_x's panels backwards every
            # other block as W_h's; reverse, the block's first step is its
            # last in time
            k = 1 if Nb < N else min(by_step, T - s)
            tb = (T - s - k) if reverse else s
            r0 = tb * N + n0
            gr = n0 if ring else r0       # where its rows go in gates
            rows = Nb if Nb < N else k * N
            _gemm_units(rows, H, I, u0, u1, x + r0 * I, w_x_pack, gates + gr * G,
                        s // by_step % 2)
        for n in range(n0, n1):
            if s >= lengths[n]:
                # finished: the final state is carried into the other half
                # of h_buf once; from then on both halves hold it
                if s == lengths[n]:
                    memcpy(nxt + n * H + u0, cur + n * H + u0, nu * sizeof(floating))
                continue
            t = _time(s, lengths[n], reverse)
            row = t * N + n
            if training:
                memcpy(h_prev_all + row * H + u0, cur + n * H + u0, nu * sizeof(floating))
            gr = ((t - tb) * N + n) if ring else row
            _cell_forward(nu, H, gates + gr * G + u0, rec + n * G + u0,
                          bias + u0, peep + u0, nxt + n * H + u0, c + n * H + u0,
                          out + row * ld_out + u0,
                          c_all + row * H + u0 if training else NULL, w_pack != NULL)
        if nparts > 1:
            # everyone's h_t is written before anyone reads it at t+1
            lstmx_barrier_wait(barrier, nparts, &sense)
        if pipe != NULL and (s + 1) % PIPE_ROWS == 0:
            lstmx_count_publish(&pipe[1], <int>s + 1)
    if pipe != NULL:
        lstmx_count_publish(&pipe[1], <int>T)


cdef Py_ssize_t _unit_bound(Py_ssize_t H, int part, int nparts,
                            Py_ssize_t itemsize) noexcept:
    """First unit of part ``part`` of ``nparts`` (H for part = nparts): H
    part / nparts rounded to a multiple of a cache line's units (16 float32
    or 8 float64; 8 when H is too small for 16 a part; exact below 8 a
    part). The parts then write no cache line in common (in rows that
    start on one: see lstm._ALIGN), every part but the last covers whole
    8-unit vectors of the cell, and the units that the cell computes one at
    a time (the last H % 8) are those that one thread computes so: the
    parts give one thread's bits (see _forward's w_x_pack) when no part
    has fewer than 8 units."""
    cdef Py_ssize_t exact = _share(H, part, nparts)
    cdef Py_ssize_t step = 64 // itemsize
    if part == 0 or part == nparts or H < 8 * nparts:
        return exact
    while step > 8 and H < step * nparts:
        step //= 2
    return (exact + step // 2) // step * step


def lstm_forward(const floating[:, :, ::1] x, const floating[:, ::1] w_x,
                 const floating[:, ::1] w_h, const floating[::1] bias,
                 const floating[::1] peep, const int[::1] lengths,
                 bint reverse, floating[:, :, ::1] h_buf, floating[:, ::1] c,
                 floating[:, :, ::1] out, Py_ssize_t out_col,
                 floating[:, :, ::1] gates, floating[:, :, ::1] c_all,
                 floating[:, :, ::1] h_prev_all, floating[:, ::1] rec,
                 int part=0, int nparts=1, int[::1] barrier=None,
                 Py_ssize_t n0=0, Py_ssize_t n1=-1, bint project_whole=False,
                 int[::1] pipe=None, Py_ssize_t by_step=0, bint ring=False,
                 bint pack_w_h=True, bint project_in_place=False, bint defer=False):
    """Run the recurrence of one direction of one layer; see ``_forward``.

    x (T, N, I), or empty (0, 0, 0) when gates already holds the input
    projection (``lstm_project``); w_x (4H, I); w_h (4H, H); bias (4H,);
    peep (3H,) (zeros for no peepholes); lengths (N,) int32; h_buf (2, N, H)
    with the initial state in h_buf[0]; c (N, H) in/out; out (T, N, D*H),
    this direction's h_t written to columns out_col:out_col+H; gates
    (T, N, 4H); c_all, h_prev_all (T, N, H) for training or empty (0, 0, 0)
    for inference; rec (N, 4H).

    With nparts > 1, call once from each of nparts threads at the same
    time, with part = 0..nparts-1 and one zeroed barrier (2,) int32 shared
    by all: part p computes the units of the p-th slice of H (see
    _unit_bound). Each part holds a slice of W_h (a whole step's weights
    may not fit one core's cache, a slice can). With project_whole, the
    input projection is shared by rows with _cell.c's packed GEMM instead
    (see _forward): with it, the parts give the bits of one thread.

    Or, with nparts == 1, run only the sequences n0 <= n < n1 (n1 = -1: to
    N): threads given disjoint ranges run at once without waiting for each
    other. x must then be empty (project first, with ``lstm_project``), or
    given with by_step = 1.

    With by_step > 0 (x given, no pipe, not project_whole, and reverse only
    when every sequence has T steps), the input projection is computed as
    the steps come, by_step steps at a time (see _forward), with
    project_whole's bits. With ring too (inference), gates (by_step, N, 4H)
    need only hold a block of steps (see _forward).

    Or, for one sequence forwards (N == 1, nparts == 1, not reverse, x
    empty), with ``pipe`` (2,) int32 zeroed and shared with an
    ``lstm_pipe`` job run at the same time (run_pair), which projects the
    gates as the steps need them and runs the head on the steps done.

    One sequence's steps take the one-row kernel on a packed W_h where
    packs_one_row allows, unless pack_w_h is False: then W_h is read as it
    is (matmat), which a call of a few steps does faster than packing it
    (see lstm.ONE_PACKED_MIN_STEPS). With project_in_place (x given,
    without pipe or by_step), the projection reads W_x as it is too, a dot
    product a row and column (see lstm.PROJECT_IN_PLACE_MAX_ROWS).

    With defer, returns the call as a Job (see run_pair) instead.
    """
    cdef Py_ssize_t T = x.shape[0] if ring else gates.shape[0]
    cdef Py_ssize_t N = gates.shape[1], H = w_h.shape[1]
    cdef Py_ssize_t I = w_x.shape[1], u0, u1
    cdef const floating* x_p = &x[0, 0, 0] if x.shape[0] else NULL
    cdef floating* c_all_p = &c_all[0, 0, 0] if c_all.shape[0] else NULL
    cdef floating* h_prev_p = &h_prev_all[0, 0, 0] if h_prev_all.shape[0] else NULL
    cdef int* barrier_p = NULL
    cdef Job job = _new_job(_FORWARD, floating is double,
                            (x, w_x, w_h, bias, peep, lengths, h_buf, c, out, gates, c_all,
                             h_prev_all, rec, barrier), part, nparts)
    if nparts > 1 and not LSTMX_HAVE_BARRIER:
        raise ValueError("nparts > 1 needs the barrier of _cell.c, not built here")
    if nparts > 1 and (barrier is None or barrier.shape[0] < 2):
        raise ValueError("barrier: expected 2 zeroed ints shared by the parts")
    if nparts > 1:
        barrier_p = &barrier[0]
    if pipe is not None and (pipe.shape[0] < 2 or N != 1 or nparts != 1 or reverse
                             or x_p != NULL):
        raise ValueError("pipe: 2 zeroed ints, for one sequence forwards with x empty "
                         "and nparts == 1")
    u0 = _unit_bound(H, part, nparts, sizeof(floating))
    u1 = _unit_bound(H, part + 1, nparts, sizeof(floating))
    if n1 < 0:
        n1 = N
    if x_p != NULL and (x.shape[0] != T or x.shape[1] != N or x.shape[2] != I) \
            or out.shape[0] != T or out.shape[1] != N:
        raise ValueError("x (T, N, I) and out (T, N, D*H) expected: T the steps of gates "
                         "(of x with ring), N their sequences")
    if by_step < 0 or by_step and (x_p == NULL or pipe is not None or project_whole
                                   or reverse and any(l != T for l in lengths)):
        raise ValueError("by_step: steps per block of projection (0: none), for x given, "
                         "without pipe or project_whole, and reverse only with every "
                         "length T")
    if project_in_place and (x_p == NULL or pipe is not None or by_step):
        raise ValueError("project_in_place: for x given, without pipe or by_step")
    if ring and (not by_step or c_all_p != NULL
                 or gates.shape[0] < min(by_step, T) or x.shape[1] != N):
        raise ValueError("ring: for inference by_step, gates (by_step, N, 4H) at least")
    if not (0 <= n0 < n1 <= N) or ((n0 or n1 != N) and (nparts > 1 or x_p != NULL
                                                        and by_step != 1)):
        raise ValueError("n0, n1: a range of sequences, with nparts == 1 and x empty "
                         "or by_step = 1")
    nseq = n1 - n0 if nparts == 1 else N
    if nseq > SMALL_N or (nseq == SMALL_N == 1 and pack_w_h
                          and packs_one_row(4 * (u1 - u0), H, sizeof(floating))):
        job.args.owned = _alloc(4 * _packed_size(u1 - u0, H, &w_h[0, 0]), &w_h[0, 0])
    job.args.T, job.args.N, job.args.I, job.args.H = T, N, I, H
    job.args.u0, job.args.u1, job.args.n0, job.args.n1 = u0, u1, n0, n1
    job.args.reverse = reverse
    if project_whole and x_p != NULL and not project_in_place:
        # room for W_x or, when fewer, the part's rows of X packed
        job.args.owned_x = _alloc(_packed_size(min(4 * H, T * N) if PACK_ROWS else 4 * H,
                                               I, &w_h[0, 0]), &w_h[0, 0])
    elif by_step:
        job.args.owned_x = _alloc(4 * _packed_size(u1 - u0, I, &w_h[0, 0]), &w_h[0, 0])
    job.args.by_step = by_step
    job.args.ring = ring
    job.args.in_place = project_in_place
    job.args.x = <void*>x_p
    job.args.w_x = <void*>&w_x[0, 0]
    job.args.w_h = <void*>&w_h[0, 0]
    job.args.bias = <void*>&bias[0]
    job.args.peep = <void*>&peep[0]
    job.args.lengths = &lengths[0]
    job.args.h_buf = <void*>&h_buf[0, 0, 0]
    job.args.c = <void*>&c[0, 0]
    job.args.out = <void*>&out[0, 0, out_col]
    job.args.ld = out.shape[2]
    job.args.gates = <void*>&gates[0, 0, 0]
    job.args.c_all = <void*>c_all_p
    job.args.h_prev_all = <void*>h_prev_p
    job.args.rec = <void*>&rec[0, 0]
    job.args.barrier = barrier_p
    if pipe is not None:
        job.args.pipe = &pipe[0]
        job.keep += (pipe,)
    return job._run_or_defer(defer)


# A pipelined single sequence hands work between its two threads in blocks
# of this many steps: the gates of the next block are projected while the
# recurrence runs, the head follows the steps run.
cdef enum:
    PIPE_ROWS = 32


cdef void _pipe(Py_ssize_t T, Py_ssize_t I, Py_ssize_t H, Py_ssize_t O,
                const floating* x, const floating* w_x, floating* w_x_pack,
                floating* gates, int* pipe, const floating* h,
                const floating* w_fc, const floating* b_fc,
                floating* y) noexcept nogil:
    """The other thread of a pipelined sequence (_forward's pipe): the
    gates (T, 4H) = X (T, I) W_x^T, PIPE_ROWS rows at a time on the packed
    GEMM (the bits of _forward's w_x_pack), each block published in pipe[0];
    then, with a head (w_fc not NULL), y (T, O) = h (T, H) w_fc^T + b_fc for
    each HEAD_ROWS steps once pipe[1] says they are run."""
    cdef Py_ssize_t G = 4 * H, r0 = 0, r1
    _pack(G, I, w_x, I, 1, w_x_pack)
    while r0 < T:
        r1 = min(r0 + PIPE_ROWS, T)
        _gemm_packed(r1 - r0, G, I, x + r0 * I, I, w_x_pack, gates + r0 * G, G)
        lstmx_count_publish(&pipe[0], <int>r1)
        r0 = r1
    r0 = 0
    while w_fc != NULL and r0 < T:
        r1 = min(r0 + HEAD_ROWS, T)
        lstmx_count_wait(&pipe[1], <int>r1)
        _linear_rows(r0, r1, H, O, h, w_fc, b_fc, y)
        r0 = r1


def lstm_pipe(const floating[:, :, ::1] x, const floating[:, ::1] w_x,
              floating[:, :, ::1] gates, int[::1] pipe, const floating[:, :, ::1] out,
              const floating[:, ::1] w_fc=None, const floating[::1] b_fc=None,
              floating[:, :, ::1] y=None, bint defer=False):
    """The partner of ``lstm_forward(..., pipe=pipe)`` for one sequence
    (see _pipe), run at the same time with run_pair: projects x (T, 1, I)
    with w_x (4H, I) into gates (T, 1, 4H) ahead of the recurrence, and with
    w_fc (O, H), b_fc (O,) and y (T, 1, O), runs the head on out (T, 1, H),
    the recurrence's h_t, behind it. pipe (2,) int32, zeroed, shared with
    the recurrence. With defer, returns the call as a Job instead."""
    cdef Py_ssize_t T = x.shape[0], I = x.shape[2], G = w_x.shape[0], H = w_x.shape[0] // 4
    cdef bint head = w_fc is not None
    if (x.shape[1] != 1 or w_x.shape[1] != I or G % 4 or gates.shape[0] != T
            or gates.shape[1] != 1 or gates.shape[2] != G or out.shape[0] != T
            or out.shape[1] != 1 or out.shape[2] != H or pipe.shape[0] < 2):
        raise ValueError("x (T, 1, I), w_x (4H, I), gates (T, 1, 4H), out (T, 1, H) and "
                         "pipe (2,) expected")
    if head != (b_fc is not None) or head != (y is not None) or head and (
            w_fc.shape[1] != H or b_fc.shape[0] != w_fc.shape[0] or y.shape[0] != T
            or y.shape[1] != 1 or y.shape[2] != w_fc.shape[0]):
        raise ValueError("w_fc (O, H), b_fc (O,) and y (T, 1, O) expected, all or none")
    if T == 0:
        raise ValueError("x: at least one step expected")
    cdef Job job = _new_job(_PIPE, floating is double, (x, w_x, gates, pipe, out, w_fc, b_fc, y))
    job.args.T, job.args.I, job.args.H = T, I, H
    job.args.owned_x = _alloc(_packed_size(G, I, &w_x[0, 0]), &w_x[0, 0])
    job.args.x = <void*>&x[0, 0, 0]
    job.args.w_x = <void*>&w_x[0, 0]
    job.args.gates = <void*>&gates[0, 0, 0]
    job.args.pipe = &pipe[0]
    job.args.out = <void*>&out[0, 0, 0]
    if head:
        job.args.R = w_fc.shape[0]
        job.args.w_h = <void*>&w_fc[0, 0]
        job.args.bias = <void*>&b_fc[0]
        job.args.dx = <void*>&y[0, 0, 0]
    return job._run_or_defer(defer)


def kernel_target():
    """The build of _cell.c's kernels in use on this CPU: "avx512",
    "avx2+fma" or "baseline" (chosen when the module loads; LSTMX_KERNELS
    set to "baseline" or "avx2" keeps a narrower one)."""
    if lstmx_uses_avx512():
        return "avx512"
    return "avx2+fma" if lstmx_uses_fma() else "baseline"


def can_split():
    """Whether a recurrence can be shared by threads (lstm_forward nparts)."""
    return bool(LSTMX_HAVE_BARRIER)


# --------------------------------------------------------------------------
# backward

cdef void _backward(Py_ssize_t T, Py_ssize_t N, Py_ssize_t H,
                    const floating* w_h, const floating* peep,
                    const int* lengths, bint reverse, const floating* c0,
                    const floating* gates, const floating* c_all,
                    const floating* dout, Py_ssize_t ld_dout,
                    const floating* dh_n, const floating* dc_n,
                    floating* dbias, floating* dpeep,
                    floating* dh0, floating* dc0,
                    floating* dgates, floating* drec,
                    floating* dh_rec, floating* w_pack,
                    Py_ssize_t n0, Py_ssize_t n1) noexcept nogil:
    """The recurrence of exact BPTT for one direction of one layer.

    Per step only the elementwise derivatives and dh_{t-1} = da W_h
    (seed 002, eq 14); dgates (T, N, 4H) gets every step's da (zero at
    padded rows) for ``lstm_backward_weights``. dbias (4H,) = sum of da
    (eq 15) and dpeep (3H,) are overwritten; dh0, dc0 (N, H) out.
    drec (N, 4H) and dh_rec (N, H) are workspaces; w_pack has room for
    W_h packed (_packed_size(H, 4H)), or is NULL when the products are
    matmat's (at most SMALL_N sequences).

    Only the sequences n0 <= n < n1 are run, and dbias and dpeep are theirs:
    sequences are independent, so threads given disjoint ranges (each with
    its own dbias and dpeep) need no barrier.
    """
    cdef Py_ssize_t G = 4 * H, Nb = n1 - n0
    cdef Py_ssize_t s, n, t, row, j, L
    cdef const floating* c_prev
    cdef const floating* dh_next
    # dc0 carries dL/dc
    memcpy(dc0 + n0 * H, dc_n + n0 * H, Nb * H * sizeof(floating))
    if w_pack != NULL:
        _pack(H, G, w_h, 1, H, w_pack)
    memset(dpeep, 0, 3 * H * sizeof(floating))
    for n in range(n0, n1):
        for t in range(lengths[n], T):
            memset(dgates + (t * N + n) * G, 0, G * sizeof(floating))
        if lengths[n] < T:
            # zero in the product until the sequence's last step; from then
            # on the cell writes it
            memset(drec + n * G, 0, G * sizeof(floating))
    for s in range(T - 1, -1, -1):
        for n in range(n0, n1):
            L = lengths[n]
            if s >= L:
                continue
            t = _time(s, L, reverse)
            row = t * N + n
            if s == 0:
                c_prev = c0 + n * H
            else:
                c_prev = c_all + (_time(s - 1, L, reverse) * N + n) * H
            # dL/dh_t through the recurrence: from step s+1, or the final state
            dh_next = dh_rec + n * H if s + 1 < L else dh_n + n * H
            _cell_backward(H, gates + row * G, c_all + row * H, c_prev, peep,
                           dout + row * ld_dout, dh_next, dc0 + n * H,
                           drec + n * G, dpeep)
            memcpy(dgates + row * G, drec + n * G, G * sizeof(floating))
        # dh_{t-1} = da W_h (seed 002, eq 14)
        if w_pack == NULL:
            _matmat_t(G, H, w_h, Nb, drec + n0 * G, G, dh_rec + n0 * H, H)
        else:
            _gemm_packed(Nb, H, G, drec + n0 * G, G, w_pack, dh_rec + n0 * H, H, s % 2)
    memcpy(dh0 + n0 * H, dh_rec + n0 * H, Nb * H * sizeof(floating))
    memset(dbias, 0, G * sizeof(floating))
    for t in range(T):
        for n in range(n0, n1):
            row = t * N + n
            for j in range(G):
                dbias[j] += dgates[row * G + j]


def lstm_backward(const floating[:, ::1] w_h, const floating[::1] peep,
                  const int[::1] lengths, bint reverse,
                  const floating[:, ::1] c0,
                  const floating[:, :, ::1] gates,
                  const floating[:, :, ::1] c_all,
                  const floating[:, :, ::1] dout, Py_ssize_t dout_col,
                  const floating[:, ::1] dh_n, const floating[:, ::1] dc_n,
                  floating[::1] dbias, floating[::1] dpeep,
                  floating[:, ::1] dh0, floating[:, ::1] dc0,
                  floating[:, :, ::1] dgates, floating[:, ::1] drec,
                  floating[:, ::1] dh_rec, Py_ssize_t n0=0, Py_ssize_t n1=-1,
                  bint defer=False):
    """The BPTT recurrence of one direction of one layer; see ``_backward``.

    gates, c_all from a training ``lstm_forward``; dout (T, N, D*H) is
    dL/d(layer output), this direction's columns start at dout_col; dh_n,
    dc_n (N, H) are dL/d(final state). Then call ``lstm_backward_weights``
    with dgates.

    Only the sequences n0 <= n < n1 (n1 = -1: to N) are run, their rows of
    dh0, dc0 and dgates written and their sums put in dbias and dpeep:
    threads given disjoint ranges and their own dbias and dpeep run at once.
    With defer, returns the call as a Job (see run_pair) instead.
    """
    cdef Py_ssize_t T = gates.shape[0], N = gates.shape[1], H = w_h.shape[1]
    if n1 < 0:
        n1 = N
    if not 0 <= n0 < n1 <= N:
        raise ValueError("n0, n1: a range of sequences")
    cdef Job job = _new_job(_BACKWARD, floating is double,
                            (w_h, peep, lengths, c0, gates, c_all, dout, dh_n, dc_n, dbias,
                             dpeep, dh0, dc0, dgates, drec, dh_rec))
    if n1 - n0 > SMALL_N:
        job.args.owned = _alloc(_packed_size(H, 4 * H, &w_h[0, 0]), &w_h[0, 0])
    job.args.T, job.args.N, job.args.H, job.args.n0, job.args.n1 = T, N, H, n0, n1
    job.args.reverse = reverse
    job.args.w_h = <void*>&w_h[0, 0]
    job.args.peep = <void*>&peep[0]
    job.args.lengths = &lengths[0]
    job.args.c0 = <void*>&c0[0, 0]
    job.args.gates = <void*>&gates[0, 0, 0]
    job.args.c_all = <void*>&c_all[0, 0, 0]
    job.args.out = <void*>&dout[0, 0, dout_col]
    job.args.ld = dout.shape[2]
    job.args.dh_n = <void*>&dh_n[0, 0]
    job.args.dc_n = <void*>&dc_n[0, 0]
    job.args.bias = <void*>&dbias[0]
    job.args.dpeep = <void*>&dpeep[0]
    job.args.h_buf = <void*>&dh0[0, 0]
    job.args.c = <void*>&dc0[0, 0]
    job.args.dgates = <void*>&dgates[0, 0, 0]
    job.args.rec = <void*>&drec[0, 0]
    job.args.dh_rec = <void*>&dh_rec[0, 0]
    return job._run_or_defer(defer)


cdef void _weights(int R, int I, int G, int H, int part, int nparts,
                   const floating* x, const floating* w_x,
                   const floating* h_prev_all, const floating* dgates,
                   floating* dw_x, floating* dw_h, floating* dx,
                   bint accumulate_dx, floating* w_pack, floating* work) noexcept nogil:
    """Part ``part`` of ``nparts`` of the rows of dW_x (4H, I) = dA^T X,
    dW_h (4H, H) = dA^T H_prev and dX (R, I) = dA W_x (dx NULL: none).
    dX is the packed GEMM's on W_x packed into w_pack (room for
    _packed_size(I, 4H)), or BLAS's where w_pack is NULL (accumulate_dx).
    work: room for lstmx_gemm_tn_work(I + H) elements, or NULL: the
    gradients that _tn_packs picks run on gemm_tn_packed, both in one call
    (dA packed once) where both are picked, the others on _weight_grad."""
    cdef int g0 = <int>_share(G, part, nparts), g1 = <int>_share(G, part + 1, nparts)
    cdef int r0 = <int>_share(R, part, nparts), r1 = <int>_share(R, part + 1, nparts)
    cdef floating beta = 1.0 if accumulate_dx else 0.0
    # dW_x = dA^T X and dW_h = dA^T H_prev: operand, its columns, dW
    cdef const floating* src[2]
    cdef floating* dst[2]
    cdef Py_ssize_t cols[2]
    src[0], cols[0], dst[0] = x, I, dw_x
    src[1], cols[1], dst[1] = h_prev_all, H, dw_h
    cdef const floating* B[2]
    cdef floating* C[2]
    cdef Py_ssize_t ldb[2]
    cdef Py_ssize_t Nc[2]
    cdef int nb = 0, i
    for i in range(2 if g1 > g0 else 0):
        if work != NULL and _tn_packs(g1 - g0, cols[i]):
            B[nb], C[nb], ldb[nb], Nc[nb] = src[i], dst[i] + g0 * cols[i], cols[i], cols[i]
            nb += 1
        else:
            _weight_grad(g1 - g0, <int>cols[i], R, dgates + g0, G, src[i], <int>cols[i],
                         dst[i] + g0 * cols[i], <int>cols[i])
    lstmx_tally(&_tn_ran[1], nb)
    if nb:
        # dW's rows ldc apart are as many as its columns (ldc = Nc)
        _gemm_tn_packed(g1 - g0, R, dgates + g0, G, nb, B, ldb, Nc, C, Nc, work)
    if r1 > r0 and dx != NULL and w_pack != NULL:
        _pack(I, G, w_x, 1, I, w_pack)
        _gemm_packed(r1 - r0, I, G, dgates + <Py_ssize_t>r0 * G, G, w_pack,
                     dx + <Py_ssize_t>r0 * I, I)
    elif r1 > r0 and dx != NULL:
        gemm(False, False, r1 - r0, I, G, <floating>1.0, dgates + <Py_ssize_t>r0 * G, G,
             w_x, I, beta, dx + <Py_ssize_t>r0 * I, I)


def lstm_backward_weights(const floating[:, :, ::1] x,
                          const floating[:, ::1] w_x,
                          const floating[:, :, ::1] h_prev_all,
                          const floating[:, :, ::1] dgates,
                          floating[:, ::1] dw_x, floating[:, ::1] dw_h,
                          floating[:, :, ::1] dx, bint accumulate_dx,
                          int part=0, int nparts=1, bint defer=False):
    """Weight and input gradients over all T*N rows at once (seed 002,
    eqs 11-13): dW_x = dA^T X, dW_h = dA^T H_prev, dX = dA W_x.

    x (T, N, I); w_x (4H, I); h_prev_all (T, N, H); dgates (T, N, 4H);
    dw_x (4H, I), dw_h (4H, H) overwritten; dx (T, N, I) overwritten, or
    added to when accumulate_dx, or empty (0, 0, 0): dX is not computed.
    BLAS may use several threads (the caller holds it to one where two
    parts run at once).

    With nparts > 1, part p computes the p-th slice of the rows of dW_x,
    dW_h and dX: the parts can run at once on threads of their own, each
    with BLAS on one thread. With defer, returns the call as a Job (see
    run_pair) instead.
    """
    cdef Py_ssize_t T = x.shape[0], N = x.shape[1], I = x.shape[2], G = dgates.shape[2]
    cdef Py_ssize_t H = h_prev_all.shape[2]
    if (G != 4 * H or w_x.shape[0] != G or w_x.shape[1] != I
            or h_prev_all.shape[0] != T or h_prev_all.shape[1] != N
            or dgates.shape[0] != T or dgates.shape[1] != N
            or dw_x.shape[0] != G or dw_x.shape[1] != I or dw_h.shape[0] != G
            or dw_h.shape[1] != H or (dx.shape[0] and (dx.shape[0] != T or dx.shape[1] != N
                                                       or dx.shape[2] != I))):
        raise ValueError("x (T, N, I), w_x (4H, I), h_prev_all (T, N, H), dgates (T, N, 4H), "
                         "dw_x (4H, I), dw_h (4H, H) and dx (T, N, I) or empty expected")
    cdef Job job = _new_job(_WEIGHTS, floating is double,
                            (x, w_x, h_prev_all, dgates, dw_x, dw_h, dx), part, nparts)
    job.args.R, job.args.I, job.args.G, job.args.H = T * N, I, G, H
    job.args.flag = accumulate_dx
    job.args.x = <void*>&x[0, 0, 0]
    job.args.w_x = <void*>&w_x[0, 0]
    job.args.h_prev_all = <void*>&h_prev_all[0, 0, 0]
    job.args.dgates = <void*>&dgates[0, 0, 0]
    job.args.dw_x = <void*>&dw_x[0, 0]
    job.args.dw_h = <void*>&dw_h[0, 0]
    job.args.dx = <void*>&dx[0, 0, 0] if dx.shape[0] else NULL
    if dx.shape[0] and not accumulate_dx:
        # dX on the packed GEMM: one core, seed_train's second layer (3200
        # rows, 4H = 1280, I = 640), packing included, 172 GFLOP/s against
        # BLAS's 145 (I = 360: 163 against 144)
        job.args.owned = _alloc(_packed_size(I, G, &w_x[0, 0]), &w_x[0, 0])
    rows = _share(G, part + 1, nparts) - _share(G, part, nparts)
    if _tn_packs(rows, I) or _tn_packs(rows, H):
        job.args.owned_x = _alloc(lstmx_gemm_tn_work(I + H), &w_x[0, 0])
    return job._run_or_defer(defer)


# --------------------------------------------------------------------------
# jobs: kernel calls prepared with the GIL and run without it, two at once

cdef void _run_typed(_Args* a, floating* like) noexcept nogil:
    """Run the call in a, its pointers to floating."""
    if a.kind == _PROJECT:
        _project(a.R, a.I, a.H, 0, a.H, <const floating*>a.x, <const floating*>a.w_x,
                 <floating*>a.gates)
    elif a.kind == _FORWARD:
        _forward(a.T, a.N, a.I, a.H, a.u0, a.u1, <const floating*>a.x,
                 <const floating*>a.w_x, <const floating*>a.w_h,
                 <const floating*>a.bias, <const floating*>a.peep, a.lengths,
                 a.reverse, <floating*>a.h_buf, <floating*>a.c, <floating*>a.out,
                 a.ld, <floating*>a.gates, <floating*>a.c_all,
                 <floating*>a.h_prev_all, <floating*>a.rec, <floating*>a.owned,
                 a.barrier, a.part, a.nparts, a.n0, a.n1, <floating*>a.owned_x, a.pipe,
                 a.by_step, a.ring, a.in_place)
    elif a.kind == _PIPE:
        # (O in R, w_fc in w_h, b_fc in bias, y in dx)
        _pipe(a.T, a.I, a.H, a.R, <const floating*>a.x, <const floating*>a.w_x,
              <floating*>a.owned_x, <floating*>a.gates, a.pipe, <const floating*>a.out,
              <const floating*>a.w_h, <const floating*>a.bias, <floating*>a.dx)
    elif a.kind == _BACKWARD:
        # (dbias in bias, dout in out, dh0 in h_buf, dc0 in c, drec in rec)
        _backward(a.T, a.N, a.H, <const floating*>a.w_h, <const floating*>a.peep,
                  a.lengths, a.reverse, <const floating*>a.c0,
                  <const floating*>a.gates, <const floating*>a.c_all,
                  <const floating*>a.out, a.ld, <const floating*>a.dh_n,
                  <const floating*>a.dc_n, <floating*>a.bias, <floating*>a.dpeep,
                  <floating*>a.h_buf, <floating*>a.c, <floating*>a.dgates,
                  <floating*>a.rec, <floating*>a.dh_rec, <floating*>a.owned,
                  a.n0, a.n1)
    elif a.kind == _WEIGHTS:
        # (dX's packed W_x in owned, gemm_tn_packed's work in owned_x)
        _weights(<int>a.R, <int>a.I, <int>a.G, <int>a.H, a.part, a.nparts,
                 <const floating*>a.x, <const floating*>a.w_x,
                 <const floating*>a.h_prev_all, <const floating*>a.dgates,
                 <floating*>a.dw_x, <floating*>a.dw_h, <floating*>a.dx, a.flag,
                 <floating*>a.owned, <floating*>a.owned_x)
    elif a.kind == _LINEAR:
        # (h in x, w in w_x, b in bias, y in out; K in I, O in G)
        _linear(a.R, a.I, a.G, a.part, a.nparts, <const floating*>a.x,
                <const floating*>a.w_x, <const floating*>a.bias, <floating*>a.out)
    elif a.kind == _SOFTMAX:
        # (z in x, dz in out; C in G)
        _softmax_xent(a.R, a.G, a.part, a.nparts, <const floating*>a.x, a.classes, a.valid,
                      <floating>a.scale, <floating*>a.out, a.total)
    elif a.kind == _LINEAR_BACK:
        # (h in x, w in w_x, dy in gates, dh in dx, dw in dw_x, db in bias)
        _linear_back(a.R, a.I, a.G, a.part, a.nparts, <const floating*>a.x,
                     <const floating*>a.w_x, <const floating*>a.gates,
                     <floating*>a.dx, <floating*>a.dw_x, <floating*>a.bias)
    elif a.kind == _MEET:
        # (rounds in T)
        _meet(a.T, a.barrier, a.nparts)


cdef void _meet(Py_ssize_t rounds, int* barrier, int nparts) noexcept nogil:
    """Only the meetings of a split recurrence, one a step (_meeting_seconds)."""
    cdef int sense = 0
    cdef Py_ssize_t r
    for r in range(rounds):
        lstmx_barrier_wait(barrier, nparts, &sense)


cdef void _run_job(void* args) noexcept nogil:
    cdef _Args* a = <_Args*>args
    cdef unsigned saved = lstmx_flush_begin(a.flush)
    if a.dbl:
        _run_typed(a, <double*>NULL)
    else:
        _run_typed(a, <float*>NULL)
    lstmx_flush_end(saved, a.flush)


cdef lstmx_worker* _worker = NULL
_worker_pid = None
_worker_lock = threading.Lock()


cdef lstmx_worker* _get_worker():
    """The second thread of run_pair, started at the first call (again in a
    forked child); NULL where there is none."""
    global _worker, _worker_pid
    cdef size_t init = 0
    if _worker_pid != os.getpid():
        from ._threads import _set_local    # OpenBLAS's per-thread setting
        if _set_local is not None:
            init = <size_t>ctypes.cast(_set_local, ctypes.c_void_p).value
        _worker = lstmx_worker_new(<int (*)(int) noexcept nogil>init)
        _worker_pid = os.getpid()
    return _worker


def run_pair(Job a, Job b):
    """Run a on this thread and b on a second one, at once, and return when
    both are done: b on lstmx's worker thread (handed over without the
    GIL), or, where there is none or another call is using it, on a new
    Python thread."""
    cdef lstmx_worker* w = NULL
    cdef _Args* a_args = &a.args
    cdef _Args* b_args = &b.args
    a._check()
    b._check()
    if a is b:
        raise ValueError("run_pair: a and b are the same job (a job runs once at a time)")
    if a_args.barrier != NULL or b_args.barrier != NULL:
        # parts of a split recurrence wait for each other at every step:
        # only the two parts of one split, sharing one barrier, can meet
        if (a_args.barrier != b_args.barrier or a_args.nparts != 2 or b_args.nparts != 2
                or a_args.part == b_args.part):
            raise ValueError("run_pair: a part of a split recurrence runs only with the other "
                             "part of the same split (nparts=2, one barrier)")
        # a fresh meeting, also when the parts run again
        a_args.barrier[0] = 0
        a_args.barrier[1] = 0
    if _worker_lock.acquire(False):
        try:
            w = _get_worker()
            if w != NULL:
                with nogil:
                    lstmx_worker_post(w, _run_job, b_args)
                    _run_job(a_args)
                    lstmx_worker_wait(w)
                return
        finally:
            _worker_lock.release()
    second = threading.Thread(target=_run_held, args=(b,), name="lstmx-pair", daemon=True)
    second.start()
    try:
        a._go()
    finally:
        second.join()


def _run_held(Job job):
    """Run job (checked by run_pair) with this thread's BLAS held to one
    thread (_threads)."""
    from ._threads import blas_held
    with blas_held():
        job._go()


# --------------------------------------------------------------------------
# fully connected head: y = h W_fc^T + b_fc (seed 001's output layer)

# The head's rows go to BLAS in blocks of this many, at multiples of it, in
# every run: a row's bits then come from the same call whichever rows a
# thread or a pipelined sequence (_pipe) computes. OpenBLAS's results for
# a row depended on the rows of the call (its kernel for small products
# sums in another order). One thread, float32, us, one call over all rows /
# blocks of 64 / of 128: R x K x O = 1000 x 64 x 44 63-65/70-71/66-77,
# 3200 x 640 x 44 1754-1793/2023-2037/1843-1978, 6400 x 512 x 44
# 2815-2831/3015-3211/2816-3171.
cdef enum:
    HEAD_ROWS = 128


cdef void _linear_rows(Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t K, Py_ssize_t O,
                       const floating* h, const floating* w, const floating* b,
                       floating* y) noexcept nogil:
    """Rows r0..r1-1 of y (R, O) = h (R, K) w^T + b, r0 a multiple of
    HEAD_ROWS and r1 one or R, in HEAD_ROWS blocks; the bias is added after
    each block's product."""
    cdef Py_ssize_t n, r, j
    cdef floating* row
    while r0 < r1:
        n = min(<Py_ssize_t>HEAD_ROWS, r1 - r0)
        gemm(False, True, <int>n, <int>O, <int>K, <floating>1.0, h + r0 * K,
             <int>K, w, <int>K, <floating>0.0, y + r0 * O, <int>O)
        for r in range(r0, r0 + n):
            row = y + r * O
            for j in range(O):
                row[j] += b[j]
        r0 += n


cdef void _linear(Py_ssize_t R, Py_ssize_t K, Py_ssize_t O, int part,
                  int nparts, const floating* h, const floating* w,
                  const floating* b, floating* y) noexcept nogil:
    """Part ``part`` of ``nparts`` of the rows of y (R, O) = h (R, K) w^T + b
    (a share of the HEAD_ROWS blocks)."""
    cdef Py_ssize_t blocks = (R + HEAD_ROWS - 1) // HEAD_ROWS
    _linear_rows(_share(blocks, part, nparts) * HEAD_ROWS,
                 min(_share(blocks, part + 1, nparts) * HEAD_ROWS, R), K, O, h, w, b, y)


cdef void _linear_back(Py_ssize_t R, Py_ssize_t K, Py_ssize_t O, int part,
                       int nparts, const floating* h, const floating* w,
                       const floating* dy, floating* dh, floating* dw,
                       floating* db) noexcept nogil:
    """Part ``part`` of ``nparts``: its slice of the rows of dh (R, K) =
    dy (R, O) w, and of the rows of dw (O, K) = dy^T h and of db (O,) =
    the column sums of dy."""
    cdef Py_ssize_t r0 = _share(R, part, nparts), r1 = _share(R, part + 1, nparts)
    cdef Py_ssize_t o0 = _share(O, part, nparts), o1 = _share(O, part + 1, nparts), r, j
    cdef const floating* row
    if r1 > r0:
        gemm(False, False, <int>(r1 - r0), <int>K, <int>O, <floating>1.0, dy + r0 * O,
             <int>O, w, <int>K, <floating>0.0, dh + r0 * K, <int>K)
    if o1 == o0:
        return
    _weight_grad(<int>(o1 - o0), <int>K, <int>R, dy + o0, <int>O, h, <int>K, dw + o0 * K,
                 <int>K)
    memset(db + o0, 0, (o1 - o0) * sizeof(floating))
    for r in range(R):
        row = dy + r * O
        for j in range(o0, o1):
            db[j] += row[j]


def linear_forward(const floating[:, ::1] h, const floating[:, ::1] w,
                   const floating[::1] b, floating[:, ::1] y, int part=0,
                   int nparts=1, bint defer=False):
    """y (R, O) = h (R, K) w^T + b, with w (O, K) and b (O,).

    With nparts > 1, part p computes the p-th slice of the rows of y: the
    parts can run at once (run_pair). With defer, returns the call as a
    Job instead."""
    if (w.shape[1] != h.shape[1] or b.shape[0] != w.shape[0]
            or y.shape[0] != h.shape[0] or y.shape[1] != w.shape[0]):
        raise ValueError("h (R, K), w (O, K), b (O,) and y (R, O) expected")
    cdef Job job = _new_job(_LINEAR, floating is double, (h, w, b, y), part, nparts)
    job.args.R, job.args.I, job.args.G = h.shape[0], h.shape[1], w.shape[0]
    job.args.x = <void*>&h[0, 0]
    job.args.w_x = <void*>&w[0, 0]
    job.args.bias = <void*>&b[0]
    job.args.out = <void*>&y[0, 0]
    return job._run_or_defer(defer)


def linear_backward(const floating[:, ::1] h, const floating[:, ::1] w,
                    const floating[:, ::1] dy, floating[:, ::1] dh,
                    floating[:, ::1] dw, floating[::1] db, int part=0,
                    int nparts=1, bint defer=False):
    """dh = dy w; dw = dy^T h; db = column sums of dy (all overwritten).

    h (R, K), w (O, K), dy (R, O), dh (R, K), dw (O, K), db (O,). With
    nparts > 1, part p computes the p-th slice of the rows of dh, of the
    rows of dw and of db: the parts can run at once (run_pair). With defer,
    returns the call as a Job instead."""
    if (w.shape[1] != h.shape[1] or dy.shape[0] != h.shape[0] or dy.shape[1] != w.shape[0]
            or dh.shape[0] != h.shape[0] or dh.shape[1] != h.shape[1]
            or dw.shape[0] != w.shape[0] or dw.shape[1] != w.shape[1]
            or db.shape[0] != w.shape[0]):
        raise ValueError("h (R, K), w (O, K), dy (R, O), dh (R, K), dw (O, K) and db (O,) expected")
    cdef Job job = _new_job(_LINEAR_BACK, floating is double, (h, w, dy, dh, dw, db), part,
                            nparts)
    job.args.R, job.args.I, job.args.G = h.shape[0], h.shape[1], w.shape[0]
    job.args.x = <void*>&h[0, 0]
    job.args.w_x = <void*>&w[0, 0]
    job.args.gates = <void*>&dy[0, 0]
    job.args.dx = <void*>&dh[0, 0]
    job.args.dw_x = <void*>&dw[0, 0]
    job.args.bias = <void*>&db[0]
    return job._run_or_defer(defer)


# --------------------------------------------------------------------------
# softmax cross-entropy of the head's rows (losses.py)

cdef void _softmax_xent(Py_ssize_t R, Py_ssize_t C, int part, int nparts,
                        const floating* z, const Py_ssize_t* classes,
                        const unsigned char* valid, floating scale, floating* dz,
                        double* total) noexcept nogil:
    """Part ``part`` of ``nparts`` of the rows of z (R, C): its rows of dz
    and, in total[part], the sum of its valid rows' losses (_cell.c)."""
    cdef Py_ssize_t r0 = _share(R, part, nparts), r1 = _share(R, part + 1, nparts)
    cdef const unsigned char* v = valid + r0 if valid != NULL else NULL
    if floating is float:
        total[part] = lstmx_softmax_xent_f32(r1 - r0, C, z + r0 * C, classes + r0, v, scale,
                                             dz + r0 * C)
    else:
        total[part] = lstmx_softmax_xent_f64(r1 - r0, C, z + r0 * C, classes + r0, v, scale,
                                             dz + r0 * C)


def softmax_xent(const floating[:, ::1] z, const Py_ssize_t[::1] classes,
                 const unsigned char[::1] valid, floating scale, floating[:, ::1] dz,
                 double[::1] total, int part=0, int nparts=1, bint defer=False):
    """Over part ``part`` of ``nparts`` of the rows of z (R, C): total[part]
    = the sum over its valid rows of -log softmax(z[r])[classes[r]], and its
    rows of dz (R, C) = (softmax - onehot) * scale at valid rows, 0 at
    others. The parts can run at once (run_pair).

    classes (R,) in [0, C) at valid rows (others are not read); valid (R,)
    0/1, or empty for every row valid; total (nparts,). Validated by
    losses.py: bounds checks are off. With defer, returns the call as a Job.
    """
    cdef Py_ssize_t R = z.shape[0], C = z.shape[1]
    if R < 1 or C < 1:
        raise ValueError(f"z: expected at least one row and one class, got shape ({R}, {C})")
    if classes.shape[0] != R:
        raise ValueError(f"classes: expected ({R},), one per row of z, got ({classes.shape[0]},)")
    if valid.shape[0] not in (0, R):
        raise ValueError(f"valid: expected ({R},) or empty, got ({valid.shape[0]},)")
    if dz.shape[0] != R or dz.shape[1] != C:
        raise ValueError(f"dz: expected z's shape ({R}, {C}), got ({dz.shape[0]}, {dz.shape[1]})")
    if total.shape[0] != nparts:
        raise ValueError(f"total: expected ({nparts},), one sum per part, got ({total.shape[0]},)")
    cdef Job job = _new_job(_SOFTMAX, floating is double, (z, classes, valid, dz, total),
                            part, nparts)
    job.args.R, job.args.G = R, C
    job.args.x = <void*>&z[0, 0]
    job.args.classes = &classes[0]
    job.args.valid = &valid[0] if valid.shape[0] else NULL
    job.args.scale = scale
    job.args.out = <void*>&dz[0, 0]
    job.args.total = &total[0]
    return job._run_or_defer(defer)


def _matvec_seconds(const floating[:, ::1] w, const floating[::1] x,
                    floating[::1] y, int repeats, bint packed=False):
    """Benchmark hook (bench/floors.py): seconds taken by ``repeats``
    products y = w x with a single sequence's step kernel, the GIL
    released: _cell.c's matmat, or with packed its packed GEMM (w packed
    once, before the clock starts), its panels backwards every other
    product as a recurrence runs them. w (M, K), x (K,), y (M,). The tests
    use it to run matmat on its own too."""
    if x.shape[0] != w.shape[1] or y.shape[0] != w.shape[0] or repeats < 1:
        raise ValueError("w (M, K), x (K,), y (M,) and repeats >= 1 expected")
    cdef Py_ssize_t M = w.shape[0], K = w.shape[1]
    cdef int r
    cdef floating* P = NULL
    try:
        if packed:
            P = _alloc(_packed_size(M, K, &w[0, 0]), &w[0, 0])
            _pack(M, K, &w[0, 0], K, 1, P)
        start = time.perf_counter()
        with nogil:
            for r in range(repeats):
                if packed:
                    _gemm_packed(1, M, K, &x[0], K, P, &y[0], M, r % 2)
                else:
                    _matmat(M, K, &w[0, 0], 1, &x[0], K, &y[0], M)
        return time.perf_counter() - start
    finally:
        _free(P)


def _cell_seconds(floating[::1] work, Py_ssize_t n, int repeats):
    """Benchmark hook (bench/floors.py): seconds taken by ``repeats``
    forward cells of n units of one sequence, as inference runs them
    (nothing kept; the AVX-512 build's cell where it runs), the GIL
    released. work (18 n elements at least, the dtype's) holds in turn the
    pre-activations a (4n), the recurrent term (4n), the bias (4n), the
    peepholes (3n), h, c (updated in place) and the output (n each).
    Subnormal numbers are flushed or kept as the dtype's jobs do (a cell
    whose state grows drives sigmoids below float32's normal range, and
    kept, they took 2-4 times as long)."""
    if n < 1 or repeats < 1 or work.shape[0] < 18 * n:
        raise ValueError("n >= 1, repeats >= 1 and work of 18 n elements expected")
    cdef floating* p = &work[0]
    cdef int r
    cdef bint flush = _flush_f64 if floating is double else _flush_f32
    cdef unsigned saved
    start = time.perf_counter()
    with nogil:
        saved = lstmx_flush_begin(flush)
        for r in range(repeats):
            _cell_forward(n, n, p, p + 4 * n, p + 8 * n, p + 12 * n, p + 15 * n,
                          p + 16 * n, p + 17 * n, NULL, True)
        lstmx_flush_end(saved, flush)
    return time.perf_counter() - start


def _meeting_seconds(Py_ssize_t rounds):
    """Benchmark hook (bench/floors.py): seconds a meeting of the two parts
    of a split recurrence takes (the barrier they wait at after every
    step, with nothing else to do), the mean of ``rounds`` of them run by
    two threads at once (run_pair). Two threads must be able to meet
    (can_split())."""
    if rounds < 1 or not can_split():
        raise ValueError("rounds >= 1 and a build that splits a recurrence expected")
    barrier = array.array("i", [0, 0])
    cdef int[::1] b = barrier
    jobs = []
    cdef Job job
    for part in range(2):
        job = _new_job(_MEET, False, (barrier,), part, 2)
        job.args.T = rounds
        job.args.barrier = &b[0]
        jobs.append(job)
    start = time.perf_counter()
    run_pair(jobs[0], jobs[1])
    return (time.perf_counter() - start) / rounds


def _tn_paths():
    """Test hook: how many weight gradients (a layer's dW_x and dW_h, the
    head's dW) have run on gemm_tn, gemm_tn_packed and BLAS in this
    process, in that order."""
    return _tn_ran[0], _tn_ran[1], _tn_ran[2]


def _set_tn_limits(Py_ssize_t max_cols, Py_ssize_t packed_min_rows):
    """Test hook: which weight gradients run on gemm_tn, gemm_tn_packed or
    BLAS (see TN_MAX_COLS, TN_PACKED_MIN_ROWS). Returns the old pair."""
    global TN_MAX_COLS, TN_PACKED_MIN_ROWS
    old = TN_MAX_COLS, TN_PACKED_MIN_ROWS
    TN_MAX_COLS, TN_PACKED_MIN_ROWS = max_cols, packed_min_rows
    return old


def _set_small_n(Py_ssize_t n):
    """Test and tuning hook: the largest N whose recurrent products use
    _cell.c's matmat rather than its packed GEMM (see SMALL_N). Returns the
    old value."""
    global SMALL_N
    old, SMALL_N = SMALL_N, n
    return old

