"""The run record's files: written as any file the user writes, by a package whose import
changes nothing of the process."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys

import pytest
import torch

from sweeplr.errors import SweeplrError
from sweeplr.records import indented_json, json_safe


def test_importing_sweeplr_changes_no_process_state(tmp_path):
    code = """
import os, matplotlib
os.umask(0o027)
import sweeplr.plots, sweeplr.records, sweeplr.results, sweeplr.experiment, sweeplr.cli
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert os.umask(0o027) == 0o027
path = sweeplr.records.atomic_write_text(os.path.join(os.environ["OUT"], "x.json"), "{}")
print(oct(os.stat(path).st_mode & 0o777))
"""
    env = {**os.environ, "MPLBACKEND": "svg", "OUT": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0o640"  # 0666 less the umask, as any file the user writes


def test_a_records_json_is_the_standard_librarys_indented_json():
    """``metrics.json`` is spelt as ``json.dumps(json_safe(...), indent=2)`` spells it."""
    rng = random.Random(0)
    leaves = [None, True, False, 0, -7, 2**70, 0.1, -1e-300, 1e300, math.nan, math.inf]
    leaves += ["", "x", 'q"uote', "back\\slash", "ünï", "tab\tnew\nline", "\x00\x1f", "🙂"]

    def value(depth: int) -> object:
        if depth > 3 or rng.random() < 0.4:
            return rng.choice(leaves)
        if rng.random() < 0.5:
            return [value(depth + 1) for _ in range(rng.randint(0, 4))]
        items = [
            (rng.choice(["a", "b c", "ü", "1", "k"]) + str(i), value(depth + 1)) for i in range(4)
        ]
        return dict(items[: rng.randint(0, 4)])

    for _ in range(500):
        data = value(0)
        assert indented_json(data) == json.dumps(json_safe(data), indent=2, allow_nan=False)
    assert indented_json((1, [])) == json.dumps([1, []], indent=2)
    with pytest.raises(TypeError, match="not JSON serializable"):
        indented_json({"a": object()})


@pytest.mark.parametrize(
    ("payload", "kind"), [([1.0, 2.0], "list"), (torch.zeros(2), "Tensor"), ("w", "str")]
)
def test_a_model_file_that_is_no_dict_is_one_line(tmp_path, capsys, payload, kind):
    """A pickled list loads under weights_only too (issue 22, 16): one line, from the reader
    every command shares."""
    from sweeplr.cli import main
    from sweeplr.records import MODEL_FILE, load_model_payload

    torch.save(payload, tmp_path / MODEL_FILE)
    message = (
        f"{tmp_path}/{MODEL_FILE} is not a sweeplr model (a {kind}, not a dict); "
        "allowed: a run's model.pt"
    )
    with pytest.raises(SweeplrError) as error:
        load_model_payload(tmp_path)
    assert str(error.value) == message
    assert main(["predict", str(tmp_path), "1.0", "2.0"]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_a_pruned_run_names_no_best_epoch_it_did_not_keep(small_cfg, tmp_path):
    """A pruned run ends with its last epoch's weights, early stopping or not (issue 22, 15)."""
    from tests.conftest import train_and_record

    cfg = small_cfg("early_stopping.patience=100")
    outcome, record = train_and_record(cfg, tmp_path, on_log=lambda epoch, *_: epoch >= 30)
    assert outcome.status == "pruned" and outcome.best_epoch is not None
    assert record["status"] == "pruned" and record["best_epoch"] is None
