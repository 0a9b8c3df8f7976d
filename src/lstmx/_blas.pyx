"""Row-major BLAS helpers over ``scipy.linalg.cython_blas``.

BLAS is column-major; a C-order matrix is the transpose of the column-major
one with the same memory. Row-major ``C = op(A) op(B)`` is therefore computed
as column-major ``C^T = op(B)^T op(A)^T``: the operands are swapped, nothing is
copied.
"""
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv


cdef void gemm(bint trans_a, bint trans_b, int m, int n, int k,
               floating alpha, const floating* a, int lda,
               const floating* b, int ldb,
               floating beta, floating* c, int ldc) noexcept nogil:
    """C (m, n) = alpha op(A) op(B) + beta C, all row-major.

    op(A) is (m, k): A is (m, k) with leading dimension lda, or (k, m) if
    trans_a. op(B) is (k, n): B is (k, n), or (n, k) if trans_b.
    """
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda,
              &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda,
              &beta, c, &ldc)


cdef void gemv(bint trans_a, int m, int n, floating alpha,
               const floating* a, int lda, const floating* x,
               floating beta, floating* y) noexcept nogil:
    """y = alpha op(A) x + beta y with A row-major (m, n), leading dim lda.

    op(A) = A (y has m entries, x has n) or A^T if trans_a (y n, x m).
    """
    # Row-major A is column-major A^T (n, m): flip the transpose flag.
    cdef char t = b'N' if trans_a else b'T'
    cdef int one = 1
    if floating is float:
        sgemv(&t, &n, &m, &alpha, <float*>a, &lda, <float*>x, &one, &beta, y, &one)
    else:
        dgemv(&t, &n, &m, &alpha, <double*>a, &lda, <double*>x, &one, &beta, y, &one)


def _gemm_memview(bint trans_a, bint trans_b, floating alpha,
                  const floating[:, ::1] a, const floating[:, ::1] b,
                  floating beta, floating[:, ::1] c):
    """Test hook: C = alpha op(A) op(B) + beta C on C-contiguous arrays."""
    cdef int m = c.shape[0], n = c.shape[1]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    gemm(trans_a, trans_b, m, n, k, alpha, &a[0, 0], a.shape[1],
         &b[0, 0], b.shape[1], beta, &c[0, 0], c.shape[1])


def _gemv_memview(bint trans_a, floating alpha, const floating[:, ::1] a,
                  const floating[::1] x, floating beta, floating[::1] y):
    """Test hook: y = alpha op(A) x + beta y on a C-contiguous A."""
    gemv(trans_a, a.shape[0], a.shape[1], alpha, &a[0, 0], a.shape[1],
         &x[0], beta, &y[0])
