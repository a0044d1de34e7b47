"""benchmarks/run_all_gpu.sh, the one script that records the GPU results, run the way the header says — with
SMOKE=1 (tiny shapes on a CPU), so a broken part is found here and not in a device session's minutes."""
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_part(part: str, out: Path):
    env = {**os.environ, "SMOKE": "1", "OUT": str(out), "PYTHON": sys.executable, "MINILORA_GIT_COMMIT": "test"}
    return subprocess.run(["bash", "benchmarks/run_all_gpu.sh", part], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("part, expected", [("context", {"ctx-mem-8b"}), ("checks", {"packing", "my-gpu"})])
def test_a_part_records_every_result_in_one_archive(tmp_path, part, expected):
    run = run_part(part, tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    log = (tmp_path / f"{part}.log").read_text()
    assert " exit 0 " in log and " exit 1" not in log and " exit 124" not in log, log[-3000:]
    with tarfile.open(tmp_path / f"{part}-results.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames() if n.endswith(".json")}
    assert {n.split("-cpu-")[0] for n in names} == expected, names


def test_an_unknown_part_names_the_parts(tmp_path):
    run = run_part("everything", tmp_path)
    assert run.returncode == 2 and "use kernels, 8b, long-cpu, frontier, context, checks or all" in run.stderr
