"""What the commands share, tested without starting a command: the progress bar."""

from __future__ import annotations

from dask_nmf.cli_session import Progress


def test_progress_shows_what_the_stopping_rule_tests(capsys):
    bar = Progress(100, 0, False, "decrease/err0", 1e-4)
    for t, loss in enumerate([9.0, 8.0, 7.5], start=1):
        bar(t, loss)
    bar.criterion(10, 9.76e-03)
    bar(11, 7.4)
    bar.close()
    err = capsys.readouterr().err
    # The value the rule compares with tol, named, next to tol; no per-iteration decrease.
    assert "loss=7.4 decrease/err0=9.76e-03 (stops below tol=0.0001)" in err
    assert "rel.decrease" not in err


def test_quiet_progress_prints_nothing(capsys):
    bar = Progress(10, 0, True, "violation/first", 1e-4)
    bar(1, 3.0)
    bar.criterion(1, 0.5)
    bar.close()
    assert capsys.readouterr().err == ""
