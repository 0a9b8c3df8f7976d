"""Kernel of losses.py: softmax cross-entropy over rows, one pass each
(_cell.c). The Python layer validates shapes, classes and finiteness first:
bounds checks are off."""
from cython cimport floating


cdef extern from "_cell.h" nogil:
    double lstmx_softmax_xent_f32(Py_ssize_t R, Py_ssize_t C, const float* z,
                                  const Py_ssize_t* classes,
                                  const unsigned char* valid, float scale,
                                  float* dz)
    double lstmx_softmax_xent_f64(Py_ssize_t R, Py_ssize_t C, const double* z,
                                  const Py_ssize_t* classes,
                                  const unsigned char* valid, double scale,
                                  double* dz)


def softmax_xent(const floating[:, ::1] z, const Py_ssize_t[::1] classes,
                 const unsigned char[::1] valid, floating scale,
                 floating[:, ::1] dz):
    """Sum over the valid rows of -log softmax(z[r])[classes[r]]; dz (R, C)
    = (softmax - onehot) * scale at valid rows, 0 elsewhere.

    z (R, C); classes (R,) in [0, C) at valid rows (others are not read);
    valid (R,) 0/1, or empty for every row valid.
    """
    cdef Py_ssize_t R = z.shape[0], C = z.shape[1]
    cdef const unsigned char* valid_p = &valid[0] if valid.shape[0] else NULL
    cdef double total
    with nogil:
        if floating is float:
            total = lstmx_softmax_xent_f32(R, C, &z[0, 0], &classes[0], valid_p, scale, &dz[0, 0])
        else:
            total = lstmx_softmax_xent_f64(R, C, &z[0, 0], &classes[0], valid_p, scale, &dz[0, 0])
    return total
