# Fused float/double BLAS helpers over scipy.linalg.cython_blas, in row-major
# (C order) terms so kernels read like the maths. No BLAS is linked: scipy's
# is used through its Cython function-pointer API.
from cython cimport floating

cdef void gemm(bint trans_a, bint trans_b, int m, int n, int k,
               floating alpha, const floating* a, int lda,
               const floating* b, int ldb,
               floating beta, floating* c, int ldc) noexcept nogil
