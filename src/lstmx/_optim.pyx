"""Fused optimizer updates over the flat parameter buffer (DESIGN.md section 2).

Each update is one loop over all P parameters, without the GIL, reading the
gradient and the moment buffers and writing the parameters and buffers in
place. The formulas are torch.optim's single-tensor ones, written in the same
order of operations (``add(x, alpha=a)`` is ``p + a*x``, ``addcmul`` is
``p + (v*a)*b``, ``addcdiv`` is ``p + (v*a)/b``, ``lerp`` as ATen's), so the
results agree with torch to rounding. Scalars that torch computes in Python
(bias corrections, step sizes) arrive here already computed, as doubles, and
are rounded to the buffer's dtype once, as torch does. Two departures, both
invisible for finite parameters (up to the sign of a zero): a weight decay of
0 still adds 0*p, and Adam's decoupled decay multiplies by 1 when it is off
(no branch in the loop).

The Python layer (optim.py) has checked that every buffer a kernel uses is
C-contiguous, of one dtype and of length P; bounds checks are off.

flush: subnormal numbers are flushed to zero while an update runs, as in
the network's kernels (lstmx/_denormals.py; optim.py passes the setting of
the buffer's dtype). A moment that no gradient feeds decays geometrically
through the subnormals: in float32, Adam's exp_avg (beta1 = 0.9) from
1e-3 after about 760 steps, exp_avg_sq (beta2 = 0.999) from 1e-6 after
about 74,000, each then subnormal for a further 150 and 16,000 steps.
Adam over 10^6 float32 parameters with a zero gradient took 27.7 ms with
a subnormal exp_avg kept, 0.83 with it flushed and 0.76 with exp_avg 1e-3
(float64: 58.3, 2.03 and 2.06; one run of bench/denormals.py). Flushed,
those values become zero: only values below the smallest normal number
differ from torch's, which keeps them.
"""
from cython cimport floating
from libc.math cimport sqrt, sqrtf


cdef extern from "_cell.h" nogil:
    unsigned lstmx_flush_begin(int on)
    void lstmx_flush_end(unsigned saved, int on)


cdef inline floating root(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating lerp(floating start, floating end, floating weight, bint low) noexcept nogil:
    # ATen's lerp (low: |weight| < 0.5): exact at weight 0 and 1. Both
    # forms are computed and one selected, so the loop stays branch-free.
    cdef floating near = start + weight * (end - start)
    cdef floating far = end - (end - start) * (1 - weight)
    return near if low else far


# Each update is a cdef inline loop. The flags saying which buffers exist are
# passed as literals from the dispatch in the def below, so that the C
# compiler makes one branch-free, vectorizable loop per case; every other
# choice is a select between values computed anyway.

cdef inline void _sgd(Py_ssize_t n, floating* p, const floating* grad, floating* buf,
                      floating neg_lr, floating wd, floating mom, floating keep,
                      bint nesterov, bint first_step, bint use_momentum) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating g, b
    for i in range(n):
        g = grad[i] + wd * p[i]
        if use_momentum:
            b = buf[i] * mom + keep * g
            b = g if first_step else b
            buf[i] = b
            g = (g + mom * b) if nesterov else b
        p[i] = p[i] + neg_lr * g


def sgd_step(floating[::1] param, const floating[::1] grad, floating[::1] momentum_buffer,
             double lr, double momentum, double dampening, bint nesterov,
             double weight_decay, bint first_step, bint flush=False):
    """SGD with momentum, dampening, Nesterov and L2 weight decay, in place.

    param, grad : (P,). momentum_buffer : (P,), or anything when
    momentum == 0; on the first step it is overwritten with the gradient.
    """
    cdef Py_ssize_t n = param.shape[0]
    cdef floating* p = &param[0]
    cdef const floating* g = &grad[0]
    cdef floating* buf = &momentum_buffer[0]
    cdef floating neg_lr = -lr, wd = weight_decay, mom = momentum, keep = 1 - dampening
    cdef unsigned saved
    with nogil:
        saved = lstmx_flush_begin(flush)
        if momentum != 0:
            _sgd(n, p, g, buf, neg_lr, wd, mom, keep, nesterov, first_step, True)
        else:
            _sgd(n, p, g, buf, neg_lr, wd, mom, keep, nesterov, first_step, False)
        lstmx_flush_end(saved, flush)


cdef inline void _adam(Py_ssize_t n, floating* p, const floating* grad, floating* m,
                       floating* v, floating* v_max, floating wd, floating decay,
                       floating w1, bint low1, floating b2, floating w2, floating eps,
                       floating neg_step, floating bc2_sqrt, bint amsgrad) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating g, param, second, denom
    for i in range(n):
        # wd is 0 when decoupled, decay 1 when not: torch applies one of them.
        param = p[i] * decay
        g = grad[i] + wd * param
        m[i] = lerp(m[i], g, w1, low1)
        v[i] = v[i] * b2 + w2 * g * g
        second = v[i]
        if amsgrad:
            second = second if second > v_max[i] else v_max[i]
            v_max[i] = second
        denom = root(second) / bc2_sqrt + eps
        p[i] = param + neg_step * m[i] / denom


def adam_step(floating[::1] param, const floating[::1] grad, floating[::1] exp_avg,
              floating[::1] exp_avg_sq, floating[::1] max_exp_avg_sq,
              double beta1, double beta2, double eps, double weight_decay,
              double decay_factor, bint decoupled, bint amsgrad,
              double step_size, double bias_correction2_sqrt, bint flush=False):
    """Adam / AdamW (decoupled) / AMSGrad, in place.

    param, grad, exp_avg, exp_avg_sq : (P,). max_exp_avg_sq : (P,), or
    anything unless amsgrad. step_size = lr / (1 - beta1**step),
    bias_correction2_sqrt = sqrt(1 - beta2**step), decay_factor =
    1 - lr*weight_decay (used if decoupled).
    """
    cdef Py_ssize_t n = param.shape[0]
    cdef floating* p = &param[0]
    cdef const floating* g = &grad[0]
    cdef floating* m = &exp_avg[0]
    cdef floating* v = &exp_avg_sq[0]
    cdef floating* v_max = &max_exp_avg_sq[0]
    cdef floating wd = 0 if decoupled else weight_decay
    cdef floating decay = decay_factor if decoupled and weight_decay != 0 else 1
    cdef floating w1 = 1 - beta1, b2 = beta2, w2 = 1 - beta2, eps_ = eps
    cdef floating neg_step = -step_size, bc2_sqrt = bias_correction2_sqrt
    cdef bint low1 = w1 < 0.5
    cdef unsigned saved
    with nogil:
        saved = lstmx_flush_begin(flush)
        if amsgrad:
            _adam(n, p, g, m, v, v_max, wd, decay, w1, low1, b2, w2, eps_, neg_step, bc2_sqrt, True)
        else:
            _adam(n, p, g, m, v, v_max, wd, decay, w1, low1, b2, w2, eps_, neg_step, bc2_sqrt, False)
        lstmx_flush_end(saved, flush)


cdef inline void _rmsprop(Py_ssize_t n, floating* p, const floating* grad, floating* sq,
                          floating* ga, floating* buf, floating neg_lr, floating a,
                          floating w, bint low, floating eps, floating wd, floating mom,
                          bint centered, bint use_momentum) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating g, avg
    for i in range(n):
        g = grad[i] + wd * p[i]
        sq[i] = sq[i] * a + w * g * g
        if centered:
            ga[i] = lerp(ga[i], g, w, low)
            avg = root(sq[i] + (-1) * ga[i] * ga[i])
        else:
            avg = root(sq[i])
        avg = avg + eps
        if use_momentum:
            buf[i] = buf[i] * mom + g / avg
            p[i] = p[i] + neg_lr * buf[i]
        else:
            p[i] = p[i] + neg_lr * g / avg


def rmsprop_step(floating[::1] param, const floating[::1] grad, floating[::1] square_avg,
                 floating[::1] grad_avg, floating[::1] momentum_buffer,
                 double lr, double alpha, double eps, double weight_decay,
                 double momentum, bint centered, bint flush=False):
    """RMSprop (optionally centered, with momentum), in place.

    param, grad, square_avg : (P,). grad_avg : (P,), or anything unless
    centered. momentum_buffer : (P,), or anything unless momentum > 0.
    """
    cdef Py_ssize_t n = param.shape[0]
    cdef floating* p = &param[0]
    cdef const floating* g = &grad[0]
    cdef floating* sq = &square_avg[0]
    cdef floating* ga = &grad_avg[0]
    cdef floating* buf = &momentum_buffer[0]
    cdef floating a = alpha, w = 1 - alpha, eps_ = eps, wd = weight_decay
    cdef floating mom = momentum, neg_lr = -lr
    cdef bint low = w < 0.5
    cdef unsigned saved
    with nogil:
        saved = lstmx_flush_begin(flush)
        if centered and momentum > 0:
            _rmsprop(n, p, g, sq, ga, buf, neg_lr, a, w, low, eps_, wd, mom, True, True)
        elif centered:
            _rmsprop(n, p, g, sq, ga, buf, neg_lr, a, w, low, eps_, wd, mom, True, False)
        elif momentum > 0:
            _rmsprop(n, p, g, sq, ga, buf, neg_lr, a, w, low, eps_, wd, mom, False, True)
        else:
            _rmsprop(n, p, g, sq, ga, buf, neg_lr, a, w, low, eps_, wd, mom, False, False)
        lstmx_flush_end(saved, flush)


def adagrad_step(floating[::1] param, const floating[::1] grad, floating[::1] state_sum,
                 double clr, double eps, double weight_decay, bint flush=False):
    """Adagrad, in place. clr = lr / (1 + (step - 1) * lr_decay).

    param, grad, state_sum : (P,).
    """
    cdef Py_ssize_t i, n = param.shape[0]
    cdef floating* p = &param[0]
    cdef const floating* grad_ = &grad[0]
    cdef floating* acc = &state_sum[0]
    cdef floating neg_clr = -clr, eps_ = eps, wd = weight_decay
    cdef floating g, std
    cdef unsigned saved
    with nogil:
        saved = lstmx_flush_begin(flush)
        for i in range(n):
            g = grad_[i] + wd * p[i]
            acc[i] = acc[i] + 1 * g * g
            std = root(acc[i]) + eps_
            p[i] = p[i] + neg_clr * g / std
        lstmx_flush_end(saved, flush)


def sum_of_squares(const floating[::1] x):
    """sum(x**2), accumulated in double (for clip_grad_norm)."""
    cdef Py_ssize_t i, n = x.shape[0]
    cdef const floating* a = &x[0]
    cdef double total = 0, value
    with nogil:
        for i in range(n):
            value = a[i]
            total += value * value
    return total
