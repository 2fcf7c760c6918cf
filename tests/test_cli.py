"""The ``sweeplr`` command on damaged input: one line, no traceback."""

from __future__ import annotations

from sweeplr.cli import main


def test_show_on_a_symlink_loop_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").symlink_to(run / "metrics.json")
    assert main(["show", str(run)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {run}/metrics.json cannot be read: Too many levels of symbolic links\n"
