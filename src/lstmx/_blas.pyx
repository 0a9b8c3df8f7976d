"""Row-major BLAS helpers over ``scipy.linalg.cython_blas``.

BLAS is column-major; a C-order matrix is the transpose of the column-major
one with the same memory. Row-major ``C = op(A) op(B)`` is therefore computed
as column-major ``C^T = op(B)^T op(A)^T``: the operands are swapped, nothing is
copied.
"""
from scipy.linalg.cython_blas cimport sgemm, dgemm


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
