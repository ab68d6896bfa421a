"""Nothing deleted or rewritten before a command is known to be valid, and runs that stop, stop
cleanly: a refused train.py or evaluate.py leaves every run directory it names as it was (files
and contents), a replaced run goes only once the new one has started, evaluate.py's directories
are its own, and a stopped evaluation says so in one line and leaves no evaluation.json."""

from __future__ import annotations

import io
import json
import logging
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CONF, ROOT, TINY
from entry_points import env
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from lightning.pytorch.callbacks import Callback

from aligned import resolvers
from aligned.training import interruption, run_directory
from aligned.training.interruption import Interrupted
from aligned.training.run_directory import HOLDING, LOCK_FILE


def run_script(script: str, *args: str) -> tuple[int, str]:
    """``python <script> <args>`` in this process: the real Hydra main with its callbacks, its
    ``.hydra/`` files and its log, without the interpreter's start-up and imports; the exit code
    and what it printed to stderr."""
    handlers = {signum: signal.getsignal(signum) for signum in interruption.SIGNALS}
    root = logging.getLogger()
    root_handlers, root_level = root.handlers[:], root.level  # Hydra configures logging
    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", [script, *args])
        patch.setattr(sys, "stderr", stderr)
        patch.setattr(interruption, "_received", None)
        try:
            runpy.run_path(str(ROOT / script), run_name="__main__")
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            GlobalHydra.instance().clear()
            for handler in set(root.handlers) - set(root_handlers):
                handler.close()  # the run's log file
            root.handlers[:] = root_handlers
            root.setLevel(root_level)
    return code, stderr.getvalue()


def contents(directory: Path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and folder under ``directory``. The lock file is left out: it
    names the last process that held the directory, and is no part of a run."""
    return {str(path.relative_to(directory)): path.read_bytes() if path.is_file() else None
            for path in sorted(directory.rglob("*")) if path.name != LOCK_FILE}


def error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def stop_line(stderr: str) -> str:
    """The line a stopped command ends with (after its progress bars), and no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    return stderr.strip().splitlines()[-1].split("\r")[-1].strip()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished train.py run: results.json, checkpoints/, .hydra/ and train.log, and a
    mid-epoch SLURM checkpoint, which a run that starts removes."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    code, stderr = run_script("train.py", *TINY, f"hydra.run.dir={run_dir}")
    assert code == 0, stderr[-3000:]
    (run_dir / "hpc_ckpt_1.ckpt").write_bytes(b"Lightning's mid-epoch checkpoint")
    return run_dir


@pytest.fixture
def run_dir(finished_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy, symlinks=True)
    return copy


# ---------------------------------------------------------------- train.py refused


@pytest.mark.parametrize("hydra_dir, overrides, message", [
    ("run", ["overwrite=true", "seed=abc"], "Error: seed must be an integer, got 'abc'."),
    ("run", ["resume=auto", "loss=multiexit"], "Error: Cannot resume {run}: it was trained with "),
    ("run", ["seed=1"], "Error: Run directory {run} already holds a run (results.json, "),
    ("run", ["overwrite=true", "model.num_classes=3"], "Error: The model predicts 3 classes"),
    ("run", ["overwrite=true", "trainer.max_epochs=0"], "Error: Training ran no step"),
    ("run", ["resume={run}/missing.ckpt"], "Error: Cannot resume: '{run}/missing.ckpt' does not "),
    ("new", ["resume={run}", "loss=multiexit"], "Error: Cannot resume {run}: it was trained with "),
], ids=["overwrite-bad-seed", "resume-auto-changed-loss", "no-overwrite", "overwrite-refused-late",
        "overwrite-no-step", "resume-missing-file", "resume-dir-changed-loss"])
def test_a_refused_train_command_leaves_the_run_directory_as_it_was(run_dir, hydra_dir,
                                                                    overrides, message):
    """Whether refused by a setting's check, the resume check, the directory check or once the
    model is built (with the old outputs set aside), and whether the run is Hydra's directory
    (``new``: a directory of its own) or the one resumed: one line, exit 2, the same files with
    the same contents."""
    before = contents(run_dir)
    overrides = [o.format(run=run_dir) for o in overrides]
    hydra_dir = run_dir if hydra_dir == "run" else run_dir.parent / "new"
    code, stderr = run_script("train.py", *TINY, *overrides, f"hydra.run.dir={hydra_dir}")
    assert code == 2, stderr[-3000:]
    assert error_line(stderr).startswith(message.format(run=run_dir))
    assert contents(run_dir) == before


def test_what_a_killed_command_set_aside_goes_back_with_the_next_command(run_dir):
    before = contents(run_dir)
    run_directory.lock(run_dir)  # an overwrite=true killed before its run started
    run_directory.set_aside(run_dir, ["results.json", "checkpoints"])
    (run_dir / ".hydra" / "overrides.yaml").write_text("- overwrite=true\n")
    run_directory.unlock(run_dir)
    code, stderr = run_script("train.py", *TINY, "seed=abc", f"hydra.run.dir={run_dir}")
    assert code == 2
    assert contents(run_dir) == before


def test_overwrite_replaces_the_run_once_the_new_one_has_started(run_dir):
    code, stderr = run_script("train.py", *TINY, "overwrite=true", "seed=1",
                              f"hydra.run.dir={run_dir}")
    assert code == 0, stderr[-3000:]
    assert json.loads((run_dir / "results.json").read_text())["seed"] == 1
    assert "- seed=1" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert not (run_dir / HOLDING).exists() and not list(run_dir.glob("hpc_ckpt_*"))


class StopAtTheFirstStep(Callback):
    """Test helper: stops the run as SIGTERM's handler would, after its first training step."""

    def on_train_batch_end(self, *args, **kwargs) -> None:
        raise Interrupted(signal.SIGTERM)


def test_a_replacing_run_stopped_once_it_has_started_keeps_nothing_of_the_old_one(run_dir):
    code, stderr = run_script(
        "train.py", *TINY, "overwrite=true", f"hydra.run.dir={run_dir}",
        "+callbacks.stop={_target_: test_run_safety.StopAtTheFirstStep}")
    assert code == 128 + signal.SIGTERM, stderr[-3000:]
    assert stop_line(stderr).startswith("Stopped by SIGTERM in epoch 1 of ")
    assert not (run_dir / "results.json").exists() and not (run_dir / HOLDING).exists()
    assert not list(run_dir.rglob("*.ckpt"))  # the old run's, and none of its own yet
    assert "- overwrite=true" in (run_dir / ".hydra" / "overrides.yaml").read_text()


def test_train_py_refuses_an_evaluation_directory(tmp_path):
    evaluation = fake_evaluation(tmp_path / "evaluation")
    before = contents(evaluation)
    code, stderr = run_script("train.py", *TINY, "overwrite=true",
                              f"hydra.run.dir={evaluation}")
    assert code == 2
    assert error_line(stderr).startswith(
        f"Error: Run directory {evaluation} holds evaluate.py's outputs (evaluation.json, ")
    assert contents(evaluation) == before


# ---------------------------------------------------------------- sweeps into a used directory


@pytest.fixture
def sweep_dir(finished_run, tmp_path) -> Path:
    """A sweep directory whose job 0 is the finished run."""
    shutil.copytree(finished_run, tmp_path / "sweep" / "0", symlinks=True)
    return tmp_path / "sweep"


def test_a_sweep_into_a_used_sweep_directory_is_refused_before_it_writes(sweep_dir):
    before = contents(sweep_dir)
    code, stderr = run_script("train.py", "-m", *TINY, "seed=0", f"hydra.sweep.dir={sweep_dir}")
    assert code == 2
    assert error_line(stderr).startswith(
        f"Error: Run directory {sweep_dir / '0'} already holds a run (results.json, ")
    assert contents(sweep_dir) == before  # no multirun.yaml, no job's .hydra/


def test_a_refused_job_of_a_resumed_sweep_leaves_its_directory_as_it_was(sweep_dir):
    job_dir = sweep_dir / "0"
    before = contents(job_dir)
    code, stderr = run_script("train.py", "-m", *TINY, "resume=auto", "loss=multiexit",
                              f"hydra.sweep.dir={sweep_dir}")
    # The job failed and the sweep went on; the sweep's summary, which finds the earlier run's
    # results.json, is not what this test is about.
    assert f"Error: Cannot resume {job_dir}: it was trained with other" in stderr, code
    assert contents(job_dir) == before


# ---------------------------------------------------------------- evaluate.py's directories


def fake_evaluation(directory: Path) -> Path:
    """A directory as evaluate.py leaves it (the refusals read no file's contents)."""
    (directory / ".hydra").mkdir(parents=True)
    (directory / ".hydra" / "overrides.yaml").write_text("- ckpt_path=an_earlier.ckpt\n")
    (directory / "evaluate.log").write_text("an earlier evaluation's log\n")
    (directory / "evaluation.json").write_text('{"layer_accuracy": [0.5, 0.9]}\n')
    (directory / "report.md").write_text("# an earlier evaluation\n")
    (directory / "layer_accuracy.png").write_bytes(b"an earlier figure")
    return directory


@pytest.mark.parametrize("existing, overrides, message", [
    ("evaluation", [], "Error: Run directory {dir} already holds an evaluation (evaluation.json, "
                       "report.md, layer_accuracy.png). Replace it with overwrite=true"),
    ("evaluation", ["overwrite=true", "split=train"], "Error: split must be one of"),
    ("evaluation", ["overwrite=true", "ckpt_path={run}/checkpoints/missing.ckpt"],
     "Error: Checkpoint '{run}/checkpoints/missing.ckpt' does not exist."),
    ("training run", [], "Error: Run directory {dir} holds train.py's outputs (results.json, "),
    ("training run", ["overwrite=true"], "Error: Run directory {dir} holds train.py's outputs"),
])
def test_a_refused_evaluate_command_leaves_the_directory_as_it_was(finished_run, run_dir,
                                                                    tmp_path, existing,
                                                                    overrides, message):
    directory = fake_evaluation(tmp_path / "evaluation") if existing == "evaluation" else run_dir
    before = contents(directory)
    code, stderr = run_script(
        "evaluate.py", f"ckpt_path={finished_run}/checkpoints/last.ckpt",
        *(o.format(run=finished_run) for o in overrides), f"hydra.run.dir={directory}")
    assert code == 2, stderr[-3000:]
    line = error_line(stderr)
    assert line.startswith(message.format(dir=directory, run=finished_run)), line
    assert contents(directory) == before


QUICK_EVALUATION = ["early_exit.enabled=false", "similarity.measures=[cos]"]


def test_overwrite_replaces_an_evaluation_only_once_the_new_one_is_whole(finished_run, tmp_path,
                                                                        monkeypatch):
    directory = fake_evaluation(tmp_path / "evaluation")
    before = contents(directory)
    checkpoint = f"ckpt_path={finished_run}/checkpoints/last.ckpt"

    import aligned.analysis.plots as plots

    save = plots.save

    def stopped_after_one_figure(figure, path):  # Ctrl+C while the figures are written
        save(figure, path)
        raise Interrupted(signal.SIGINT)  # as stop_on_signals' handler does

    monkeypatch.setattr(plots, "save", stopped_after_one_figure)
    code, stderr = run_script("evaluate.py", checkpoint, *QUICK_EVALUATION, "overwrite=true",
                              f"hydra.run.dir={directory}")
    assert code == 128 + signal.SIGINT
    assert stop_line(stderr) == (f"Stopped by SIGINT before the evaluation finished: it wrote no "
                                  f"evaluation.json to {directory}. Run the command again.")
    assert contents(directory) == before  # the earlier evaluation, whole

    monkeypatch.setattr(plots, "save", save)
    code, stderr = run_script("evaluate.py", checkpoint, *QUICK_EVALUATION, "overwrite=true",
                              f"hydra.run.dir={directory}")
    assert code == 0, stderr[-3000:]
    assert len(json.loads((directory / "evaluation.json").read_text())["layer_accuracy"]) == 2
    assert checkpoint in (directory / ".hydra" / "overrides.yaml").read_text()
    assert not (directory / HOLDING).exists()


def test_an_interrupted_evaluation_writes_no_evaluation_json(finished_run, tmp_path,
                                                             monkeypatch):
    """Stopped while it writes the figures (evaluation.json comes last, whole or not at all),
    in a directory of its own: what it drew stays, no evaluation.json says it did not finish."""
    import aligned.evaluation.run

    def stopped(*args, **kwargs):
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(aligned.evaluation.run, "write_report", stopped)
    directory = tmp_path / "evaluation"
    code, stderr = run_script("evaluate.py", f"ckpt_path={finished_run}/checkpoints/last.ckpt",
                              *QUICK_EVALUATION, f"hydra.run.dir={directory}")
    assert code == 128 + signal.SIGTERM
    assert stop_line(stderr).startswith("Stopped by SIGTERM before the evaluation finished")
    assert (directory / "layer_accuracy.png").is_file()
    assert not (directory / "evaluation.json").exists()


def test_evaluate_directories_are_unique_per_process_also_in_a_slurm_job(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # train.py's would be slurm-4242, for requeues
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("evaluate", return_hydra_config=True)
    assert cfg.hydra.run.dir == f"outputs/evaluate/{resolvers.STARTED}_{resolvers.RUN_ID}"


@pytest.mark.slow
def test_ctrl_c_stops_evaluate_py_with_one_line_and_exit_130(finished_run, tmp_path):
    directory = tmp_path / "evaluation"
    process = subprocess.Popen(
        [sys.executable, "evaluate.py", f"ckpt_path={finished_run}/checkpoints/last.ckpt",
         f"hydra.run.dir={directory}"],
        cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (directory / ".hydra" / "config.yaml").exists() and process.poll() is None \
            and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # Ctrl+C: while the checkpoint is analysed
    assert process.wait(timeout=120) == 128 + signal.SIGINT
    stderr = process.stderr.read()
    assert stop_line(stderr).startswith(
        "Stopped by SIGINT before the evaluation finished: it wrote no evaluation.json"), stderr
    assert not (directory / "evaluation.json").exists()
