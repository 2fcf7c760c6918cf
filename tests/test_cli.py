"""The ``sweeplr`` command on damaged input: one line, no traceback."""

from __future__ import annotations

from sweeplr.cli import main
from tests.conftest import compose_config, train_and_record


def test_show_on_a_symlink_loop_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").symlink_to(run / "metrics.json")
    assert main(["show", str(run)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {run}/metrics.json cannot be read: Too many levels of symbolic links\n"


def test_an_out_file_that_cannot_be_written_is_refused_before_the_work(tmp_path, capsys):
    """``--out afile/x.csv`` (``afile`` a file) or ``--out`` a folder: one line, before the
    table or the predictions are made, and ``afile`` untouched."""
    run = tmp_path / "run"
    train_and_record(compose_config("epochs=5", "device=cpu", "progress=false"), run)
    (tmp_path / "afile").write_text("mine\n")
    (tmp_path / "points.csv").write_text("x1,x2\n1,1\n")
    points = str(tmp_path / "points.csv")
    for out in (tmp_path / "afile" / "x.csv", tmp_path):
        for args in (["summary", str(run)], ["predict", str(run), "--csv", points]):
            assert main([*args, "--out", str(out)]) == 2
            captured = capsys.readouterr()
            problem = "is a directory" if out == tmp_path else "cannot be written"
            assert captured.err.startswith(f"error: --out={out} {problem}")
            assert captured.err.count("\n") == 1 and captured.out == ""
    assert (tmp_path / "afile").read_text() == "mine\n"
    assert main(["summary", str(run), "--out", str(tmp_path / "new" / "table.txt")]) == 0
    assert str(run) in (tmp_path / "new" / "table.txt").read_text()
