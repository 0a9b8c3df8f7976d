"""Subnormal numbers in lstmx's kernels: flushed to zero, or kept.

An arithmetic operation whose operand or result is subnormal (nonzero and
below the smallest normal number: 1.2e-38 in float32, 2.2e-308 in float64)
takes a microcode assist on x86 CPUs, of the order of a hundred cycles
instead of one. Training on a loss at the last step of a long sequence
drives the cell state's gradient through them: dc shrinks by the forget
gate at every step back. bench/denormals.py on this project's development
machine (H = 64, T = 2000, N = 4, two threads), a backward pass with dL/dy
at the last step only against one at every step, subnormals kept: float32
26.2 against 6.6 ms, float64 81.9 against 19.1 ms; flushed to zero, the
last step's took 7.0 and 19.3 ms. torch.nn.LSTM, which keeps them by
default, took 29.7 against 15.6 ms in float32 (18.6 with
``torch.set_flush_denormal(True)``), 262 against 177 ms in float64.

Flushing changes only values below the smallest normal number, which become
zero (and such inputs are read as zero): far below float32's resolution of
anything a network adds them to. So float32 runs flush by default, and
float64, the reference precision (exact to libm, subnormal results
included), keeps them by default.

The setting applies to lstmx's forward, backward, head and loss kernels,
and to the BLAS calls they make on lstmx's threads, while they run, and to
the optimizers' updates (see _optim.pyx: a moment that no gradient feeds
decays through the subnormals): the caller's floating-point environment is
left as it was. It is taken when a call starts. Where the CPU is not
x86-64, nothing is flushed.
"""
from . import _lstm


def set_flush_denormals(float32=None, float64=None):
    """Flush subnormal numbers to zero in the kernels of this dtype's runs
    (True) or keep them (False); None leaves a dtype's setting as it is.
    The defaults: float32 True, float64 False. See get_flush_denormals.

    Examples
    --------
    >>> import lstmx
    >>> lstmx.set_flush_denormals(float64=True)    # float64 training, faster
    >>> lstmx.get_flush_denormals()["float64"]
    True
    >>> lstmx.set_flush_denormals(float64=False)   # back to the default
    """
    for name, value in (("float32", float32), ("float64", float64)):
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"{name}: expected True, False or None, got {value!r}")
    old32, old64 = _lstm._get_flush()
    _lstm._set_flush(old32 if float32 is None else float32,
                     old64 if float64 is None else float64)


def get_flush_denormals():
    """{"float32": bool, "float64": bool}: whether each dtype's runs flush
    subnormal numbers to zero (see set_flush_denormals). On a CPU other than
    x86-64 the settings are kept but nothing is flushed."""
    return dict(zip(("float32", "float64"), _lstm._get_flush()))
