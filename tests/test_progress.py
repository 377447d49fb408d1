"""Stage progress where stderr is not a terminal: plain log lines, not a bar nobody sees."""

from __future__ import annotations

from builder.progress import Progress


def test_log_lines_when_stderr_is_not_a_terminal(capsys, monkeypatch):
    monkeypatch.setenv("TSR_PROGRESS_SECONDS", "0")
    with Progress("judge M0", total=3) as progress:
        progress.update(1, tokens=40)
        progress.update(1, tokens=40)
        progress.update(1, tokens=40)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("[tsr] judge M0: 1/3 rows, ") and "tok/s" in lines[0] and "s left" in lines[0]
    assert lines[1].startswith("[tsr] judge M0: 2/3 rows, ")
    # the last update writes no interim line: the closing one says the stage is done
    assert len(lines) == 3 and lines[2].startswith("[tsr] judge M0: 3/3 rows, ") and lines[2].endswith("(done)")


def test_interval_limits_the_lines(capsys, monkeypatch):
    monkeypatch.setenv("TSR_PROGRESS_SECONDS", "3600")
    with Progress("generate", total=100) as progress:
        for _ in range(100):
            progress.update(1)
    (line,) = capsys.readouterr().err.splitlines()  # only the closing line within the hour
    assert line.startswith("[tsr] generate: 100/100 rows, ") and line.endswith("(done)")


def test_a_failed_stage_writes_no_done_line(capsys, monkeypatch):
    monkeypatch.setenv("TSR_PROGRESS_SECONDS", "3600")
    try:
        with Progress("judge", total=4) as progress:
            progress.update(1)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert "(done)" not in capsys.readouterr().err
