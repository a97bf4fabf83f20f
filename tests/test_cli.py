"""The command line: one error line and exit 2 for bad input and OS faults, options checked before any write,
results on stdout and logs on stderr, global flags anywhere, one task spelling, packaged recipes."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import spinelab
from spinelab import cli
from spinelab.cli import app
from spinelab.errors import InputError
from tests._tmpfs import leftovers, small_tmpfs

REPO = Path(__file__).resolve().parents[1]


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def python_m_spinelab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "spinelab", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


# --- a tiny trained run, shared by the end-to-end checks -----------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 4-study synthetic dataset and a run trained on all of it through the CLI, under umask 022."""
    from spinelab.data.synthetic.cervical import generate_cervical_dataset

    old = os.umask(0o022)
    try:
        root = tmp_path_factory.mktemp("cli")
        data = generate_cervical_dataset(root / "data", studies=4, test_studies=2, size=64, seed=5, workers=1,
                                         progress=False)
        result = invoke("train", "cervical", "-c", "tiny", "-o", root / "run", "--fold", "full",
                        f"data.dataset_dir={data}", "data.folds=2", "stage1.train.epochs=1",
                        "stage2.train.epochs=1", "trainer.accelerator=cpu")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    return {"data": data, "run": root / "run", "train_stdout": result.stdout, "train_stderr": result.stderr}


def test_train_prints_the_run_folder_on_stdout_and_hides_lightning_tips(tiny) -> None:
    assert tiny["train_stdout"].splitlines()[-1] == f"run folder: {tiny['run']}"
    for noise in ("Tip:", "litlogger", "GPU available", "TPU available", "does not have many workers",
                  "smaller than the logging interval", "is deprecated"):
        assert noise not in tiny["train_stderr"] + tiny["train_stdout"], noise


def test_disk_full_during_predict_is_one_line_and_leaves_nothing_half_written(tiny, tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "full", "8k") as full:
        result = invoke("predict", "cervical", "--model", tiny["run"], "-i", tiny["data"], "-o", full / "pred",
                        "--device", "cpu")
        assert result.exit_code == 2, result.output
        (line,) = error_lines(result.stderr)
        assert str(full / "pred") in line and "No space left on device" in line
        assert "Traceback" not in result.output
        assert not (full / "pred" / "submission.csv").exists()
        assert leftovers(full) == []
        for written in (full / "pred").rglob("*.json"):  # what was written is complete
            assert written.read_text().rstrip().endswith("}")


def test_written_files_are_readable_by_others_under_umask_022(tiny, tmp_path: Path) -> None:
    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    run = tiny["run"]
    for name in ("config.yaml", "prior.json", "stage1/full/model.pt", "stage2/full/model.pt"):
        assert mode(run / name) == 0o644, name
    old = os.umask(0o022)
    try:
        pred = invoke("predict", "cervical", "--model", run, "-i", tiny["data"], "-o", tmp_path / "pred",
                      "--device", "cpu")
        assert pred.exit_code == 0, pred.output
        rep = invoke("report", "cervical", "-p", tmp_path / "pred", "-i", tiny["data"], "-o", tmp_path / "rep")
        assert rep.exit_code == 0, rep.output
    finally:
        os.umask(old)
    assert pred.stdout.splitlines()[0] == f"submission: {tmp_path / 'pred' / 'submission.csv'}"
    written = [tmp_path / "pred" / "submission.csv", *sorted((tmp_path / "pred" / "studies").glob("*.json")),
               tmp_path / "rep" / "index.html", *sorted((tmp_path / "rep").rglob("*.png"))]
    assert len(written) >= 5
    assert {p.name: mode(p) for p in written} == {p.name: 0o644 for p in written}


def test_truncated_model_is_one_line_naming_the_file(tiny, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run)
    weights = run / "stage2" / "full" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:200])
    result = invoke("predict", "cervical", "--model", run, "-i", tiny["data"], "-o", tmp_path / "pred",
                    "--device", "cpu")
    assert "Traceback" not in result.output
    (line,) = error_lines(result.stderr)
    assert result.exit_code == 2, line
    assert "model.pt" in line and "cannot be read" in line


# --- option checks before any work ---------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["synth", "cervical", "-o", "{out}", "--studies", "0"],
    ["synth", "lumbar", "--out", "{out}", "--size", "8"],
    ["synth", "cervical", "-o", "{out}", "--workers", "0"],
    ["cache", "build", "{tmp}", "-o", "{out}", "--workers", "0"],
    ["folds", "{tmp}", "--k", "1"],
    ["folds", "{tmp}", "-o", "{tmp}"],
    ["predict", "cervical", "--model", "{tmp}", "-i", "{tmp}", "-o", "{out}", "--folds", "a"],
    ["predict", "cervical", "--model", "{tmp}", "-i", "{tmp}", "-o", "{file}"],
    ["report", "cervical", "-p", "{tmp}", "-i", "{tmp}", "-o", "{file}"],
    ["labels", "cervical", "{tmp}", "-o", "{file}"],
    ["train", "cervical", "-o", "{file}"],
    ["score", "thoracic", "{file}", "{file}"],
    ["score", "{file}", "{file}"],
])
def test_bad_options_are_refused_before_any_write(argv: list[str], tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    args = [a.format(out=tmp_path / "out", tmp=tmp_path, file=tmp_path / "a_file") for a in argv]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "Invalid value" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_python_m_spinelab_refuses_zero_studies_without_a_traceback(tmp_path: Path) -> None:
    done = python_m_spinelab("synth", "cervical", "--out", tmp_path / "X", "--studies", "0", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "--studies" in done.stderr
    assert not (tmp_path / "X").exists()


# --- the one place errors become exit codes ------------------------------------------------------------
def test_a_read_only_output_is_one_line_from_python_m_spinelab(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "ro", "1m", readonly=True) as ro:
        done = python_m_spinelab("synth", "lumbar", "-o", ro / "x", "--studies", "1", "--test-studies", "0",
                                 "--size", "32", "--workers", "1", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert error_lines(done.stderr) == [f"error: {ro / 'x'}: Read-only file system"]


@pytest.mark.parametrize("error", [
    InputError("/data/solution.csv", "no such file"),
    OSError(28, "No space left on device", "/out/submission.csv"),
    OSError(30, "Read-only file system", "/kaggle/input/x/folds.csv"),
    PermissionError(13, "Permission denied", "/data/solution.csv"),
    IsADirectoryError(21, "Is a directory", "/data/solution.csv"),
    NotADirectoryError(20, "Not a directory", "/data/solution.csv/x"),
])
def test_errors_are_one_line_with_the_path_and_exit_2(error: Exception, monkeypatch: pytest.MonkeyPatch) -> None:
    import spinelab.metrics

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(spinelab.metrics, "score_files", fail)
    result = invoke("score", "cervical", "a.csv", "b.csv")
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    (line,) = error_lines(result.stderr)
    assert ("/data/solution.csv" in line or "/out/" in line or "/kaggle/" in line) and result.stdout == ""


def test_unexpected_errors_are_one_line_exit_1_and_v_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import spinelab.metrics

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(spinelab.metrics, "score_files", boom)
    quiet = invoke("score", "cervical", "a.csv", "b.csv")
    assert quiet.exit_code == 1 and "Traceback" not in quiet.output
    assert error_lines(quiet.stderr) == ["error: RuntimeError: boom (run with -v for the traceback)"]
    loud = invoke("score", "cervical", "a.csv", "b.csv", "-v")
    assert loud.exit_code == 1 and "Traceback" in loud.stderr and "raise RuntimeError" in loud.stderr


def test_the_console_script_entry_maps_errors(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import spinelab.metrics

    def fail(*args, **kwargs):
        raise InputError("/data/s.csv", "not a CSV")

    monkeypatch.setattr(spinelab.metrics, "score_files", fail)
    monkeypatch.setattr(sys, "argv", ["spinelab", "score", "cervical", "a.csv", "b.csv"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 2
    assert error_lines(capsys.readouterr().err) == ["error: /data/s.csv: not a CSV"]


# --- global flags, streams, warnings -------------------------------------------------------------------
def test_version_and_both_help_spellings() -> None:
    version = invoke("--version")
    assert version.exit_code == 0 and version.stdout == f"spinelab {spinelab.__version__}\n"
    for command in ([], ["predict"], ["cache", "build"], ["folds"]):
        short, long = invoke(*command, "-h"), invoke(*command, "--help")
        assert short.exit_code == long.exit_code == 0
        assert short.stdout == long.stdout and "Usage" in short.stdout


def test_quiet_and_verbose_are_accepted_after_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import spinelab.metrics

    monkeypatch.setattr(spinelab.metrics, "score_files", lambda *a, **k: 0.25)
    logger = logging.getLogger("spinelab")
    assert invoke("score", "cervical", "a.csv", "b.csv", "-q").exit_code == 0
    assert logger.level == logging.WARNING
    assert invoke("score", "cervical", "a.csv", "b.csv", "--verbose").exit_code == 0
    assert logger.level == logging.DEBUG
    assert invoke("score", "cervical", "a.csv", "b.csv").exit_code == 0
    assert logger.level == logging.INFO
    assert cli._hoist_global_flags(["train", "cervical", "-q", "x=1", "--", "-v"]) == \
        ["-q", "train", "cervical", "x=1", "--", "-v"]


def test_no_command_spells_an_option_like_a_global_flag() -> None:
    from typer.main import get_command

    def walk(command, path):
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*path, name])

    for path, command in walk(get_command(app), []):
        if path:  # the top level owns -q/-v; a subcommand option spelled so would be hoisted away from it
            spelled = {opt for param in command.params for opt in getattr(param, "opts", [])}
            assert not spelled & {"-q", "--quiet", "-v", "--verbose", "-h"}, path


def test_results_go_to_stdout_and_python_warnings_through_the_log(monkeypatch: pytest.MonkeyPatch) -> None:
    import spinelab.metrics

    def noisy(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("odd header in b.csv", UserWarning, stacklevel=1)
            warnings.warn("old_api is deprecated", DeprecationWarning, stacklevel=1)
            warnings.warn("💡 Tip: try litlogger", UserWarning, stacklevel=1)
            warnings.warn("The dataloader does not have many workers", UserWarning, stacklevel=1)
        logging.getLogger("spinelab").info("scored 3 studies")
        return 0.123456

    monkeypatch.setattr(spinelab.metrics, "score_files", noisy)
    plain = invoke("score", "cervical", "a.csv", "b.csv")
    assert plain.exit_code == 0 and plain.stdout == "0.123456\n"
    assert plain.stderr.count("UserWarning: odd header in b.csv") == 1
    assert "scored 3 studies" in plain.stderr
    for hidden in ("deprecated", "Tip", "many workers"):
        assert hidden not in plain.stderr
    quiet = invoke("score", "cervical", "a.csv", "b.csv", "-q")
    assert quiet.stdout == "0.123456\n" and "odd header" not in quiet.stderr and "scored" not in quiet.stderr
    loud = invoke("-v", "score", "cervical", "a.csv", "b.csv")
    assert "old_api is deprecated" in loud.stderr


# --- one spelling of the task and of the output --------------------------------------------------------
def test_task_is_positional_and_task_option_still_works(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import spinelab.data.folds
    import spinelab.metrics

    seen: list = []
    monkeypatch.setattr(spinelab.metrics, "score_files", lambda sol, sub, task: seen.append(task) or 0.5)
    assert invoke("score", "lumbar", "a.csv", "b.csv").exit_code == 0
    old = invoke("score", "--task", "lumbar", "a.csv", "b.csv")
    assert old.exit_code == 0 and "deprecated" in old.stderr
    assert seen == ["lumbar", "lumbar"]

    calls: list = []
    monkeypatch.setattr(spinelab.data.folds, "write_folds",
                        lambda d, **kw: calls.append((Path(d), kw)) or Path(d) / "folds.csv")
    assert invoke("folds", "cervical", tmp_path).exit_code == 0
    assert invoke("folds", tmp_path, "--k", "3", "-o", tmp_path / "f.csv").exit_code == 0
    assert calls[0] == (tmp_path, {"k": 5, "seed": 42, "task": "cervical", "out": None})
    assert calls[1] == (tmp_path, {"k": 3, "seed": 42, "task": None, "out": tmp_path / "f.csv"})


def test_packaged_recipes_are_found_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ folder here: names resolve to the packaged recipes
    for name in ("tiny", "cervical/tiny.yaml", "configs/cervical/tiny.yaml"):
        result = invoke("train", "cervical", "-c", name, "--print-config")
        assert result.exit_code == 0, result.output
        assert yaml.safe_load(result.stdout)["experiment"] == "tiny"
    (tmp_path / "tiny").write_text("experiment: mine\n")  # a file on disk wins over a recipe name
    assert yaml.safe_load(invoke("train", "cervical", "-c", "tiny", "--print-config").stdout)["experiment"] == "mine"
    missing = invoke("train", "lumbar", "-c", "nope", "--print-config")
    assert missing.exit_code == 2 and "lumbar/tiny.yaml" in missing.stderr


def test_precision_is_spelled_the_same_at_training_and_inference() -> None:
    result = invoke("train", "cervical", "--print-config", "trainer.precision=bf16", "infer.precision=bf16-mixed")
    cfg = yaml.safe_load(result.stdout)
    assert (cfg["trainer"]["precision"], cfg["infer"]["precision"]) == ("bf16-mixed", "bf16")
    bad = invoke("train", "cervical", "--print-config", "trainer.precision=fp8")
    assert bad.exit_code == 2 and "trainer.precision" in bad.stderr
    option = yaml.safe_load(invoke("train", "cervical", "--precision", "fp16", "--print-config").stdout)
    assert option["trainer"]["precision"] == "16-mixed"
    for stage, command in (("training", ["train", "cervical"]),
                           ("inference", ["predict", "cervical", "--model", "m", "-i", "i", "-o", "o"])):
        refused = invoke(*command, "--precision", "fp8")
        assert refused.exit_code == 2 and f"unknown {stage} precision 'fp8'" in refused.stderr
