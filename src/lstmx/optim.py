"""Optimizers over the flat parameter buffer, and gradient clipping.

An optimizer updates ``net.flat`` (all P parameters, DESIGN.md section 2) in
place from ``grads.flat`` (same layout) with one fused Cython loop
(``_optim.pyx``); its moment buffers are (P,) arrays of the net's dtype. The
update rules are torch.optim's, operation for operation, so a step agrees
with torch's on the same parameters and gradients to rounding.

>>> import numpy as np, lstmx
>>> net = lstmx.LSTM(3, 4, output_size=2, dtype=np.float64, seed=0)
>>> opt = lstmx.optim.Adam(net, lr=1e-3)
>>> y, cache = net.forward(np.ones((5, 1, 3)))
>>> loss, dy = lstmx.losses.mse(y, np.zeros_like(y))
>>> grads = net.backward(dy, cache)
>>> norm = lstmx.optim.clip_grad_norm(grads, max_norm=5.0)
>>> opt.step(grads)
>>> opt.state_dict()["step"]
1
"""
import math
import numbers

import numpy as np

from . import _lstm, _optim
from ._validation import FLOAT_DTYPES

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "clip_grad_norm"]


def _parameter_buffer(net):
    """The flat buffer an optimizer updates: ``net.flat``, or a 1-D array."""
    flat = net if isinstance(net, np.ndarray) else getattr(net, "flat", None)
    if not isinstance(flat, np.ndarray):
        raise TypeError(f"net: expected an lstmx.LSTM (or a 1-D parameter array), got {type(net).__name__}")
    if flat.dtype not in FLOAT_DTYPES:
        raise TypeError(f"net: parameters must be float32 or float64, got dtype {flat.dtype}")
    if flat.ndim != 1 or flat.size == 0 or not flat.flags.c_contiguous or not flat.flags.writeable:
        raise ValueError("net: parameters must be one non-empty, writable, contiguous 1-D buffer, "
                         f"got shape {flat.shape}")
    return flat


def _gradient_buffer(grads, size, dtype, check_finite, writable=False):
    """grads (a Gradients, or a 1-D array) -> C-contiguous (size,) array of dtype."""
    if isinstance(grads, np.ndarray):
        flat = grads
    elif isinstance(getattr(grads, "flat", None), np.ndarray):
        flat = grads.flat   # lstmx.Gradients
    elif writable:
        raise TypeError(f"grads: expected an lstmx.Gradients or a 1-D float array, got {type(grads).__name__}")
    else:
        flat = np.asarray(grads)
    if flat.dtype.kind != "f" or (dtype is not None and flat.dtype != dtype):
        want = np.dtype(dtype).name if dtype is not None else "float32 or float64"
        raise TypeError(f"grads: expected dtype {want} (the parameters' dtype), got {flat.dtype}")
    if flat.dtype not in FLOAT_DTYPES:
        raise TypeError(f"grads: expected dtype float32 or float64, got {flat.dtype}")
    if flat.ndim != 1 or (size is not None and flat.size != size):
        want = f"({size},), one entry per parameter" if size is not None else "(P,)"
        raise ValueError(f"grads: expected shape {want}, got {flat.shape}")
    if writable:
        if not flat.flags.c_contiguous or not flat.flags.writeable:
            raise ValueError("grads: expected a writable, contiguous buffer (it is scaled in place)")
    else:
        flat = np.ascontiguousarray(flat)
    if check_finite and not np.isfinite(flat).all():
        raise ValueError("grads: contains NaN or inf (pass check_finite=False to skip this check)")
    return flat


def _real(value, name):
    """A finite real number as a float."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    return value


def _flag(value, name):
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if not isinstance(value, (bool, np.bool_, numbers.Integral)) or value not in (0, 1):
        raise TypeError(f"{name}: expected a bool, got {value!r}")
    return bool(value)


def _at_least(value, name, low=0.0):
    value = _real(value, name)
    if value < low:
        raise ValueError(f"{name}: expected a number >= {low}, got {value}")
    return value


def _positive(value, name):
    value = _real(value, name)
    if value <= 0:
        raise ValueError(f"{name}: expected a number > 0, got {value}")
    return value


def _in_unit(value, name, closed=False):
    """value in [0, 1) (or [0, 1] if closed)."""
    value = _real(value, name)
    if value < 0 or value > 1 or (value == 1 and not closed):
        raise ValueError(f"{name}: expected a number in [0, 1{']' if closed else ')'}, got {value}")
    return value


class Optimizer:
    """Base class: holds the parameter buffer, the step count and the state
    buffers, and implements :meth:`step`'s checks and the state dict.

    Subclasses name their hyperparameters in ``_hyper``, check them in
    ``_check``, say which (P,) buffers they need in ``_needed`` and update in
    ``_update``.
    """

    _hyper = ()

    def __init__(self, net):
        self.flat = _parameter_buffer(net)
        self.step_count = 0
        self._state = {}                 # name -> (P,) buffer
        # Stands in for buffers a kernel does not touch with these settings.
        self._unused = np.zeros(1, dtype=self.flat.dtype)

    @property
    def dtype(self):
        return self.flat.dtype

    def _check(self):
        raise NotImplementedError

    def _flush(self):
        """Whether updates flush subnormal numbers to zero: the setting of
        the parameters' dtype (lstmx.set_flush_denormals; see _optim.pyx
        for why)."""
        return _lstm._get_flush()[self.flat.dtype == np.float64]

    def _needed(self):
        """{buffer name: initial value} of the buffers these settings use."""
        raise NotImplementedError

    def _update(self, grad, created):
        raise NotImplementedError

    def _buffer(self, name):
        return self._state.get(name, self._unused)

    def step(self, grads, check_finite=True):
        """Update the parameters in place from one gradient.

        Parameters
        ----------
        grads : lstmx.Gradients or ndarray (P,)
            dL/dparams in ``net.flat``'s layout and dtype (``grads.flat``).
        check_finite : bool
            Refuse NaN or inf in the gradient.
        """
        self._check()    # hyperparameters may have been changed, e.g. opt.lr
        grad = _gradient_buffer(grads, self.flat.size, self.flat.dtype, check_finite)
        created = set()
        for name, initial in self._needed().items():
            if name not in self._state:
                self._state[name] = np.full(self.flat.size, initial, dtype=self.flat.dtype)
                created.add(name)
        self.step_count += 1
        self._update(grad, created)

    def state_dict(self):
        """Everything needed to resume bit-exactly, as a plain dict.

        Keys: ``"optimizer"`` (the class name), ``"step"`` (steps taken), the
        hyperparameters (numbers and bools; Adam's betas as ``"betas"``, a
        pair) and the state buffers (copies, (P,) arrays of the parameters'
        dtype; a buffer appears once it has been used). All values survive
        ``np.savez(path, **d)`` and ``dict(np.load(path))``.
        """
        d = {"optimizer": type(self).__name__, "step": self.step_count}
        for name in self._hyper:
            value = getattr(self, name)
            d[name] = tuple(value) if isinstance(value, tuple) else value
        for name, buf in self._state.items():
            d[name] = buf.copy()
        return d

    def load_state_dict(self, state_dict):
        """Restore step count, hyperparameters and buffers from :meth:`state_dict`.

        The buffers are copied into this optimizer; they must have the shape
        (P,) of this optimizer's parameters and their dtype.
        """
        d = dict(state_dict)
        kind = d.pop("optimizer", None)
        if isinstance(kind, np.ndarray):
            kind = kind.item()
        if kind not in self._loads:
            raise ValueError(f"state_dict: expected the state of a {type(self).__name__} "
                             f"(optimizer={type(self).__name__!r}), got optimizer={kind!r}")
        missing = [k for k in ("step", *self._hyper) if k not in d]
        if missing:
            raise ValueError(f"state_dict: missing {', '.join(map(repr, missing))}")
        step = d.pop("step")
        step = step.item() if isinstance(step, np.ndarray) and step.ndim == 0 else step
        if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"state_dict: 'step' must be an integer >= 0, got {step!r}")
        saved = {name: getattr(self, name) for name in self._hyper}
        try:
            for name in self._hyper:
                setattr(self, name, d.pop(name))
            self._check()
        except (TypeError, ValueError):
            for name, value in saved.items():
                setattr(self, name, value)
            raise
        buffers = {}
        for name, buf in d.items():
            if name not in self._buffer_names:
                raise ValueError(f"state_dict: unknown entry {name!r} for {type(self).__name__}")
            if not isinstance(buf, np.ndarray) or buf.shape != self.flat.shape:
                raise ValueError(f"state_dict: {name!r} must be an array of shape {self.flat.shape}, "
                                 f"got {getattr(buf, 'shape', type(buf).__name__)}")
            if buf.dtype != self.flat.dtype:
                raise TypeError(f"state_dict: {name!r} must have dtype {self.flat.dtype} "
                                f"(the parameters'), got {buf.dtype}")
            buffers[name] = np.array(buf, order="C", copy=True)
        self._state = buffers
        self.step_count = int(step)

    def __repr__(self):
        hyper = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._hyper)
        return f"{type(self).__name__}({hyper})"


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, as ``torch.optim.SGD``.

    With g = grad + weight_decay * p:

        b = g (first step), else b = momentum * b + (1 - dampening) * g
        g = g + momentum * b (nesterov), else g = b       (only if momentum != 0)
        p = p - lr * g

    Parameters
    ----------
    net : lstmx.LSTM or ndarray (P,)
        Its ``flat`` buffer is updated in place.
    lr : float >= 0
    momentum : float >= 0
    dampening : float
    nesterov : bool
        Needs momentum > 0 and dampening == 0.
    weight_decay : float >= 0
        L2 penalty added to the gradient.
    """

    _hyper = ("lr", "momentum", "dampening", "nesterov", "weight_decay")
    _buffer_names = ("momentum_buffer",)
    _loads = ("SGD",)

    def __init__(self, net, lr, momentum=0, dampening=0, nesterov=False, weight_decay=0):
        super().__init__(net)
        self.lr, self.momentum, self.dampening = lr, momentum, dampening
        self.nesterov, self.weight_decay = nesterov, weight_decay
        self._check()

    def _check(self):
        self.lr = _at_least(self.lr, "lr")
        self.momentum = _at_least(self.momentum, "momentum")
        self.dampening = _real(self.dampening, "dampening")
        self.nesterov = _flag(self.nesterov, "nesterov")
        self.weight_decay = _at_least(self.weight_decay, "weight_decay")
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(f"nesterov: needs momentum > 0 and dampening == 0, got "
                             f"momentum={self.momentum}, dampening={self.dampening}")

    def _needed(self):
        return {"momentum_buffer": 0} if self.momentum != 0 else {}

    def _update(self, grad, created):
        _optim.sgd_step(self.flat, grad, self._buffer("momentum_buffer"), self.lr, self.momentum,
                        self.dampening, self.nesterov, self.weight_decay,
                        "momentum_buffer" in created, self._flush())


class Adam(Optimizer):
    """Adam, AdamW (``decoupled=True``) and AMSGrad, as ``torch.optim.Adam``.

    At step t, with g = grad (+ weight_decay * p unless decoupled; if
    decoupled, p = p * (1 - lr * weight_decay) first):

        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        v_hat = max(v_hat, v) (amsgrad), else v_hat = v
        p = p - lr / (1 - beta1**t) * m / (sqrt(v_hat) / sqrt(1 - beta2**t) + eps)

    Parameters
    ----------
    net : lstmx.LSTM or ndarray (P,)
    lr : float >= 0
    betas : (float, float), each in [0, 1)
    eps : float > 0
    weight_decay : float >= 0
    decoupled : bool
        Decoupled weight decay (AdamW) instead of an L2 term in the gradient.
    amsgrad : bool
    """

    _hyper = ("lr", "betas", "eps", "weight_decay", "decoupled", "amsgrad")
    _buffer_names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _loads = ("Adam", "AdamW")

    def __init__(self, net, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 decoupled=False, amsgrad=False):
        super().__init__(net)
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.decoupled, self.amsgrad = decoupled, amsgrad
        self._check()

    def _check(self):
        self.lr = _at_least(self.lr, "lr")
        betas = self.betas
        if isinstance(betas, np.ndarray):
            betas = betas.tolist()
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas: expected a pair (beta1, beta2), got {self.betas!r}")
        self.betas = (_in_unit(betas[0], "betas[0]"), _in_unit(betas[1], "betas[1]"))
        self.eps = _positive(self.eps, "eps")
        self.weight_decay = _at_least(self.weight_decay, "weight_decay")
        self.decoupled = _flag(self.decoupled, "decoupled")
        self.amsgrad = _flag(self.amsgrad, "amsgrad")

    def _needed(self):
        needed = {"exp_avg": 0, "exp_avg_sq": 0}
        if self.amsgrad:
            needed["max_exp_avg_sq"] = 0
        return needed

    def _update(self, grad, created):
        beta1, beta2 = self.betas
        t = float(self.step_count)
        # In Python doubles, as torch computes them.
        step_size = self.lr / (1 - beta1 ** t)
        bias_correction2_sqrt = (1 - beta2 ** t) ** 0.5
        _optim.adam_step(self.flat, grad, self._state["exp_avg"], self._state["exp_avg_sq"],
                         self._buffer("max_exp_avg_sq"), beta1, beta2, self.eps,
                         self.weight_decay, 1 - self.lr * self.weight_decay, self.decoupled,
                         self.amsgrad, step_size, bias_correction2_sqrt, self._flush())


class AdamW(Adam):
    """Adam with decoupled weight decay, as ``torch.optim.AdamW``:
    ``Adam(..., decoupled=True)`` with torch's default weight_decay=1e-2."""

    def __init__(self, net, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False):
        super().__init__(net, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         decoupled=True, amsgrad=amsgrad)


class RMSprop(Optimizer):
    """RMSprop, as ``torch.optim.RMSprop``.

    With g = grad + weight_decay * p:

        s = alpha * s + (1 - alpha) * g**2
        a = alpha * a + (1 - alpha) * g                       (centered only)
        d = sqrt(s - a**2) (centered), else sqrt(s); then d = d + eps
        b = momentum * b + g / d; p = p - lr * b             (momentum > 0)
        p = p - lr * g / d                                    (otherwise)

    Parameters
    ----------
    net : lstmx.LSTM or ndarray (P,)
    lr : float >= 0
    alpha : float in [0, 1]
    eps : float > 0
    weight_decay : float >= 0
    momentum : float >= 0
    centered : bool
    """

    _hyper = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")
    _buffer_names = ("square_avg", "grad_avg", "momentum_buffer")
    _loads = ("RMSprop",)

    def __init__(self, net, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False):
        super().__init__(net)
        self.lr, self.alpha, self.eps, self.weight_decay = lr, alpha, eps, weight_decay
        self.momentum, self.centered = momentum, centered
        self._check()

    def _check(self):
        self.lr = _at_least(self.lr, "lr")
        self.alpha = _in_unit(self.alpha, "alpha", closed=True)
        self.eps = _positive(self.eps, "eps")
        self.weight_decay = _at_least(self.weight_decay, "weight_decay")
        self.momentum = _at_least(self.momentum, "momentum")
        self.centered = _flag(self.centered, "centered")

    def _needed(self):
        needed = {"square_avg": 0}
        if self.centered:
            needed["grad_avg"] = 0
        if self.momentum > 0:
            needed["momentum_buffer"] = 0
        return needed

    def _update(self, grad, created):
        _optim.rmsprop_step(self.flat, grad, self._state["square_avg"], self._buffer("grad_avg"),
                            self._buffer("momentum_buffer"), self.lr, self.alpha, self.eps,
                            self.weight_decay, self.momentum, self.centered, self._flush())


class Adagrad(Optimizer):
    """Adagrad, as ``torch.optim.Adagrad``.

    At step t, with g = grad + weight_decay * p:

        s = s + g**2                      (s starts at initial_accumulator_value)
        p = p - lr / (1 + (t - 1) * lr_decay) * g / (sqrt(s) + eps)

    Parameters
    ----------
    net : lstmx.LSTM or ndarray (P,)
    lr : float >= 0
    lr_decay : float >= 0
    weight_decay : float >= 0
    initial_accumulator_value : float >= 0
    eps : float > 0
    """

    _hyper = ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps")
    _buffer_names = ("state_sum",)
    _loads = ("Adagrad",)

    def __init__(self, net, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10):
        super().__init__(net)
        self.lr, self.lr_decay, self.weight_decay = lr, lr_decay, weight_decay
        self.initial_accumulator_value, self.eps = initial_accumulator_value, eps
        self._check()
        # torch fills the accumulator when the optimizer is made.
        self._state["state_sum"] = np.full(self.flat.size, self.initial_accumulator_value,
                                           dtype=self.flat.dtype)

    def _check(self):
        self.lr = _at_least(self.lr, "lr")
        self.lr_decay = _at_least(self.lr_decay, "lr_decay")
        self.weight_decay = _at_least(self.weight_decay, "weight_decay")
        self.initial_accumulator_value = _at_least(self.initial_accumulator_value,
                                                   "initial_accumulator_value")
        self.eps = _positive(self.eps, "eps")

    def _needed(self):
        return {"state_sum": self.initial_accumulator_value}

    def _update(self, grad, created):
        clr = self.lr / (1 + (float(self.step_count) - 1) * self.lr_decay)
        _optim.adagrad_step(self.flat, grad, self._state["state_sum"], clr, self.eps,
                            self.weight_decay, self._flush())


def clip_grad_norm(grads, max_norm, error_if_nonfinite=False):
    """Scale the gradient in place so its global L2 norm is at most max_norm.

    As ``torch.nn.utils.clip_grad_norm_``: with n = ||grads.flat||_2 over all
    parameters, the gradient is multiplied by max_norm / (n + 1e-6) when that
    is below 1, and left alone otherwise.

    Parameters
    ----------
    grads : lstmx.Gradients or ndarray (P,)
        Its flat buffer (writable, contiguous, float32/float64) is scaled.
    max_norm : float >= 0
    error_if_nonfinite : bool
        Raise ValueError when the norm is NaN or inf. Otherwise such a
        gradient is left unscaled and the non-finite norm returned, so the
        caller can skip the step.

    Returns
    -------
    float
        The norm before clipping (accumulated in double precision).
    """
    flat = _gradient_buffer(grads, None, None, check_finite=False, writable=True)
    if not (isinstance(max_norm, numbers.Real) and max_norm == math.inf):   # inf: never clip
        max_norm = _at_least(max_norm, "max_norm")
    norm = math.sqrt(_optim.sum_of_squares(flat)) if flat.size else 0.0
    if not math.isfinite(norm):
        if error_if_nonfinite:
            raise ValueError(f"grads: the total norm is {norm} (pass error_if_nonfinite=False to allow)")
        return norm
    coef = max_norm / (norm + 1e-6)
    if coef < 1:
        flat *= flat.dtype.type(coef)
    return norm
