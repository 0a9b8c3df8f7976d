"""``lstmx demo`` and its task generator (Measuring Spike Delays, Gers et
al. 2002)."""
import numpy as np
import pytest

from lstmx import cli, demo


def spike_steps(x, n):
    return np.flatnonzero(x[:, n, 0])


@pytest.mark.parametrize("base_interval, delays", [(10, (0, 1, 2)), (4, (0, 3)), (7, (1,))])
def test_msd_task_is_what_it_claims(base_interval, delays):
    x, y, lengths = demo.msd_task(20, 5, base_interval=base_interval, delays=delays, seed=0)
    T = int(lengths.max())
    assert x.shape == y.shape == (T, 20, 1) and lengths.shape == (20,)
    assert set(np.unique(x)) <= {0.0, 1.0}
    for n in range(20):
        steps = spike_steps(x, n)
        assert steps[0] == 0 and len(steps) == 6              # reference spike + 5 to measure
        assert lengths[n] == steps[-1] + 1                   # ends at its last spike
        gaps = np.diff(steps)
        # the target at each spike is the delay beyond F since the last spike ...
        np.testing.assert_array_equal(y[steps[1:], n, 0], gaps - base_interval)
        assert set(gaps - base_interval) <= set(delays)
        # ... and 0 at every other step, padding included
        others = np.setdiff1d(np.arange(T), steps[1:])
        assert not y[others, n, 0].any()
        assert not x[lengths[n]:, n].any()


def test_msd_task_draws_every_delay_and_is_seeded():
    x, y, lengths = demo.msd_task(200, 6, seed=1)
    at_spikes = y[x[..., 0] == 1]
    assert set(np.unique(at_spikes)) == {0, 1, 2}
    again = demo.msd_task(200, 6, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip((x, y, lengths), again))


class _Oracle:
    """Stands in for a network: predicts the given outputs."""

    def __init__(self, out):
        self.out = out

    def predict(self, x, lengths=None):
        return self.out


def test_spike_accuracy_uses_the_papers_tolerance():
    x, y, lengths = demo.msd_task(4, 3, seed=2)
    assert demo.spike_accuracy(_Oracle(y), x, y, lengths) == (12, 12)
    assert demo.spike_accuracy(_Oracle(y + 0.48), x, y, lengths) == (12, 12)
    assert demo.spike_accuracy(_Oracle(y - 0.5), x, y, lengths) == (0, 12)


def test_demo_quick_runs_and_reports(capsys):
    assert cli.main(["demo", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "Gers, Schraudolph & Schmidhuber (2002)" in out
    assert "epoch   1" in out
    for variant in ("peephole", "plain"):
        assert f"result: {variant} LSTM solved continual MSD (F=10, I in {{0, 1, 2}}) in " in out


def test_demo_setting_is_learned():
    # What the demo reports, on one run each: both variants solve the task
    # (the paper: "solved with or without peephole connections").
    lines = []
    results = demo.run(seed=0, runs=1, say=lines.append)
    assert [r["solved"] for r in results["peephole"] + results["plain"]] == [True, True]
    assert results["peephole"][0]["stream_correct"] == demo.STREAM_SPIKES


def test_demo_refuses_bad_options(capsys):
    assert cli.main(["demo", "--epochs", "0"]) == 1
    assert "--epochs" in capsys.readouterr().err
