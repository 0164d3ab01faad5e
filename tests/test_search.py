"""steplab tune: the search space, trials that fail, resuming, dead workers, outputs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from steplab.cli.main import main
from steplab.config import RunConfig, dump_toml, load_toml
from steplab.errors import ConfigError, SteplabError
from steplab.tools.tune import (
    Objective,
    Param,
    Stopper,
    TuneSpec,
    apply,
    diverged,
    open_storage,
    open_study,
    parse_space,
    postgres_url,
    recover_dead_trials,
    run_study,
    suggest_params,
    tally,
    worker_alive,
    worker_id,
    write_outputs,
)

SPACE = """
[optim.lr]
type = "log_float"
low = 1e-3
high = 3e-2

[schedule.warmup_steps]
type = "int"
low = 0
high = 10
step = 5

[optim.name]
type = "categorical"
choices = ["adamw", "adam"]
"""

S = optuna.trial.TrialState


def spec_for(cfg: RunConfig, tmp_path: Path, space: list[Param], trials: int, **kw) -> TuneSpec:  # noqa: ANN003
    cfg.train.max_steps, cfg.eval.every, cfg.eval.max_windows = 10, 5, 16
    return TuneSpec(
        base_toml=dump_toml(cfg),
        space=space,
        study_name="t",
        study_dir=str(tmp_path / "study"),
        storage=None,
        trials=trials,
        **kw,
    )


def test_space_parses_and_samples_into_the_config() -> None:
    import tomllib

    space = parse_space(tomllib.loads(SPACE))
    assert [p.key for p in space] == ["optim.lr", "optim.name", "schedule.warmup_steps"]
    trial = optuna.trial.FixedTrial({"optim.lr": 0.005, "schedule.warmup_steps": 5, "optim.name": "adam"})
    params = suggest_params(trial, space)
    cfg = apply(RunConfig(), params)
    assert (cfg.optim.lr, cfg.schedule.warmup_steps, cfg.optim.name) == (0.005, 5, "adam")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[optim.lrr]\ntype="float"\nlow=1\nhigh=2', "optim has no field 'lrr'"),
        ('[optimizer.lr]\ntype="float"\nlow=1\nhigh=2', "not a config section"),
        ('[optim.lr]\ntype="uniform"\nlow=1\nhigh=2', "needs type = one of"),
        ('[optim.lr]\ntype="float"\nlow=2\nhigh=1', "low < high"),
        ('[optim.lr]\ntype="log_float"\nlow=0\nhigh=1', "log scale needs low > 0"),
        ('[model.norm]\ntype="categorical"\nchoices=["layernorm","batchnorm"]', "choice 'batchnorm'"),
        ('[model.n_layer]\ntype="int"\nlow=1\nhigh=4\nstride=2', "unknown keys stride"),
    ],
)
def test_bad_spaces_name_the_table(toml: str, message: str) -> None:
    import tomllib

    with pytest.raises(ConfigError, match=message):
        parse_space(tomllib.loads(toml), "space.toml")


def test_storage_choices(tmp_path: Path) -> None:
    from optuna.storages import JournalStorage

    assert isinstance(open_storage(None, tmp_path), JournalStorage)
    assert (tmp_path).exists()
    with pytest.raises(ConfigError, match="sqlite does not take concurrent writers"):
        open_storage(f"sqlite:///{tmp_path}/s.db", tmp_path, workers=2)
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="steplab\\[postgres\\]"):
            open_storage("postgresql://u@h/db", tmp_path)
    else:  # the driver is named for SQLAlchemy; an unreachable server is one line, no password
        assert postgres_url("postgresql://u@h:5432/db") == "postgresql+psycopg2://u@h:5432/db"
        assert postgres_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
        with pytest.raises(SteplabError, match=r"cannot open postgresql://u:\*\*\*@127.0.0.1:1/db: ") as e:
            open_storage("postgresql://u:secret@127.0.0.1:1/db", tmp_path)
        assert "secret" not in str(e.value) and "\n" not in str(e.value)


def test_study_runs_resumes_and_writes_a_best_config(tmp_path: Path, tiny_cfg: RunConfig) -> None:
    import tomllib

    spec = spec_for(tiny_cfg, tmp_path, parse_space(tomllib.loads(SPACE)), trials=3, pruner="none")
    study = run_study(spec, quiet=True)
    done = study.get_trials(states=(S.COMPLETE,))
    assert len(done) == 3 and all(t.value is not None and t.value < 4.5 for t in done)
    assert all(len(t.intermediate_values) == 2 for t in done)  # val loss at steps 5 and 10
    first = {t.number: t.value for t in done}
    spec.trials = 4  # the same study, asked for one more trial
    study = run_study(spec, quiet=True)
    done = study.get_trials(states=(S.COMPLETE,))
    assert len(done) == 4 and {t.number: t.value for t in done if t.number in first} == first
    out = write_outputs(study, spec)
    best = min(done, key=lambda t: t.value)
    cfg = load_toml(out["best"])
    assert (
        cfg.optim.lr == pytest.approx(best.params["optim.lr"]) and cfg.optim.name == best.params["optim.name"]
    )
    assert cfg.train.max_steps == 10 and out["history"].exists() and out["trials"].exists()
    assert not (Path(best.user_attrs["run_dir"]) / "checkpoints").exists()  # trials keep no checkpoints
    assert (Path(best.user_attrs["run_dir"]) / "metrics.jsonl").exists()


def test_diverged_trials_are_pruned_and_crashes_fail_without_stopping(
    tmp_path: Path, tiny_cfg: RunConfig
) -> None:
    tiny_cfg.optim.name, tiny_cfg.optim.grad_clip = "sgd", 0.0
    space = [Param("optim.lr", "log_float", 0.01, 1e31), Param("model.n_head", "categorical", choices=(2, 3))]
    spec = spec_for(tiny_cfg, tmp_path, space, trials=2, pruner="none")
    study = open_study(spec)
    study.enqueue_trial({"optim.lr": 0.05, "model.n_head": 3})  # 32 is not divisible by 3: a crash
    study.enqueue_trial({"optim.lr": 1e30, "model.n_head": 2})  # diverges
    study.enqueue_trial({"optim.lr": 0.05, "model.n_head": 2})
    study = run_study(spec, quiet=True)
    trials = study.get_trials()
    assert trials[0].state == S.FAIL and "divisible by --model.n-head" in trials[0].user_attrs["failure"]
    assert trials[1].state == S.PRUNED and trials[1].user_attrs["status"] == "diverged"
    assert trials[2].state == S.COMPLETE  # the study went on


def test_dead_workers_trials_are_failed_and_retried(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = worker_id(proc.pid).rsplit(":", 1)[0] + ":1"  # that pid, with a start time no process has
    assert worker_alive(worker_id()) and not worker_alive(dead)
    assert worker_alive("another-host:1:1")  # not ours to judge
    study = optuna.create_study(storage=open_storage(None, tmp_path), study_name="d")
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    trial.set_user_attr("worker", dead)
    live = study.ask()
    live.set_user_attr("worker", worker_id())
    assert recover_dead_trials(study) == [trial.number]
    trials = study.get_trials()
    assert trials[trial.number].state == S.FAIL and trials[live.number].state == S.RUNNING
    waiting = study.get_trials(states=(S.WAITING,))
    assert len(waiting) == 1 and waiting[0].system_attrs["fixed_params"] == trial.params
    assert waiting[0].user_attrs["retry_of"] == trial.number


@pytest.mark.slow
def test_sigkill_mid_trial_then_rerun_loses_no_completed_trial(tmp_path: Path) -> None:
    """The worker is killed by a hook at a fixed point (the 10th step of the second trial):
    no polling, no sleeps, the same kill point on every machine."""
    import steplab.loop.fit

    (tmp_path / "space.toml").write_text(SPACE)
    study_dir = tmp_path / "study"
    argv = ["tune", "--preset", "tiny", "--space", str(tmp_path / "space.toml"), "--trials", "3"]
    argv += ["--train.max-steps", "30", "--dir", str(study_dir), "--pruner", "none"]
    argv += ["--train.tensorboard", "false", "--train.threads", "1", "--quiet"]
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            original, calls = steplab.loop.fit.train_step, [0]

            def step_then_die(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
                calls[0] += 1
                if calls[0] == 30 + 10:  # trial 0 trains 30 steps; die inside trial 1
                    os.kill(os.getpid(), signal.SIGKILL)
                return original(*args, **kwargs)

            steplab.loop.fit.train_step = step_then_die
            sys.stdout = sys.stderr = open(tmp_path / "child.log", "w")  # noqa: SIM115
            main(argv)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status), (tmp_path / "child.log").read_text()
    storage = open_storage(str(study_dir / "journal.log"), study_dir)
    before = optuna.load_study(study_name="tiny-space", storage=storage).get_trials()
    assert [t.state for t in before] == [S.COMPLETE, S.RUNNING]
    assert main(argv) == 0
    trials = optuna.load_study(study_name="tiny-space", storage=storage).get_trials()
    after = {t.number: t.value for t in trials if t.state == S.COMPLETE}
    assert after[0] == before[0].value  # nothing completed was lost
    assert len(after) == 3 and (study_dir / "best.toml").exists()
    killed = [t for t in trials if t.state == S.FAIL]
    assert len(killed) == 1 and killed[0].number == 1 and killed[0].user_attrs["failure"] == "worker died"
    retry = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert len(retry) == 1 and retry[0].params == killed[0].params and retry[0].state == S.COMPLETE


def test_tune_command_errors_are_one_line(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    (tmp_path / "space.toml").write_text(SPACE)
    space = str(tmp_path / "space.toml")
    assert main(["tune", "--preset", "tiny", "--space", str(tmp_path / "none.toml")]) == 2
    assert "--space" in capsys.readouterr().err
    argv = ["tune", "--preset", "tiny", "--space", space, "--budget-steps", "5"]  # now --train.max-steps
    assert main(argv) == 2 and "--budget-steps is now --train.max-steps" in capsys.readouterr().err
    argv = ["tune", "--preset", "tiny", "--space", space, "--storage", "sqlite:///x.db", "--workers", "2"]
    assert main([*argv, "--dir", str(tmp_path / "s")]) == 2
    assert "sqlite" in capsys.readouterr().err


def test_workers_claim_at_most_the_trials_the_study_needs(tmp_path: Path) -> None:
    """--trials counts finished trials of all workers; running ones are claims, a trial created
    by a racing worker beyond them is surplus, and retried or surplus failures do not count."""
    study = optuna.create_study(storage=open_storage(None, tmp_path), study_name="claims")
    stopper = Stopper(target=2, max_failures=5)
    a, b = study.ask(), study.ask()
    assert not stopper.surplus(a) and not stopper.surplus(b)
    assert not stopper.room(study) and not stopper.finished(study)  # two running: wait for them
    objective = Objective(RunConfig(), [Param("optim.lr", "float", 0.1, 0.2)], tmp_path, stopper=stopper)
    study.optimize(objective, n_trials=1, catch=(Exception,))  # as a worker that raced the other two
    c = study.get_trials()[-1]
    assert c.state == S.FAIL and c.user_attrs["failure"] == "surplus" and not c.params  # not trained
    study.tell(a, 1.0)
    study.tell(b, state=S.FAIL)  # a dead worker's trial, enqueued again
    study.enqueue_trial({}, user_attrs={"retry_of": b.number})
    counts = tally(study.get_trials())
    assert (counts.done, counts.running, counts.waiting, counts.failed) == (1, 0, 1, 0)
    assert stopper.room(study) and not stopper.finished(study)
    retry = study.ask()  # the queue comes first
    assert retry.number == 3 and not stopper.surplus(retry)
    study.tell(retry, 2.0)
    assert stopper.finished(study) and "2 finished trials" in stopper.reason
    crashed = optuna.create_study(storage=open_storage(None, tmp_path), study_name="crashes")
    for _ in range(5):
        crashed.tell(crashed.ask(), state=S.FAIL)
    assert stopper.finished(crashed) and "5 trials failed" in stopper.reason


def test_tune_shows_a_line_per_trial_and_no_optuna_log(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "space.toml").write_text(SPACE)
    argv = ["tune", "--preset", "tiny", "--space", str(tmp_path / "space.toml"), "--trials", "2"]
    argv += ["--train.max-steps", "10", "--eval.every", "5", "--eval.max-windows", "8", "--pruner", "none"]
    argv += ["--dir", str(tmp_path / "study"), "--train.tensorboard", "false"]
    assert main(argv) == 0
    first = capfd.readouterr()
    assert main([*argv[:6], "3", *argv[7:]]) == 0  # resumed for one more trial
    second = capfd.readouterr()
    lines = first.err.splitlines()
    trial_lines = [line for line in lines if line.startswith("tune [")]
    assert len(trial_lines) == 2 and "\x1b" not in first.err
    pattern = r"tune \[1/2\] trial 0: \d\.\d{4}  lr=\S+ name=adam\w* warmup_steps=\d+  0:\d\d  best \d\.\d{4} \(trial 0\)  ETA \d+:\d\d"
    assert re.fullmatch(pattern, trial_lines[0]), trial_lines[0]
    assert trial_lines[1].startswith("tune [2/2] trial 1: ") and "ETA" not in trial_lines[1]
    assert not any(line.startswith("[I ") for line in lines) and "Using an existing study" not in second.err
    assert re.search(r"^tune \[3/3\] trial 2: ", second.err, re.M) and "tune [1/" not in second.err
    assert first.out.startswith("study tiny-space: 2 complete\n| trial | val_loss | optim.lr | optim.name |")


def test_a_diverged_trial_is_pruned_never_complete(
    tmp_path: Path, tiny_cfg: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lr = 5 trial that once finished "complete" at 9157: a finite loss far above ln V."""
    from steplab.loop.fit import Result, TrainState
    from steplab.tools.tune import objective

    assert diverged(9157.0, 65) and diverged(float("nan"), 65) and diverged("inf", 65)
    assert not diverged(4.3, 65) and not diverged(2.1, 65)  # near ln 65 = 4.17 at the start: a result

    def finished_at(loss: float):  # noqa: ANN202
        def fake_train(cfg: RunConfig, run_dir: Path, **kw) -> Result:  # noqa: ANN003
            cfg.model.vocab_size = 65  # what build() sets from the tokenizer
            return Result(state=TrainState(step=30), status="finished", final={"val_loss": loss})

        return fake_train

    study = optuna.create_study(storage=open_storage(None, tmp_path), study_name="d")
    obj = Objective(tiny_cfg, [Param("optim.lr", "float", 0.1, 10.0)], tmp_path)
    monkeypatch.setattr(objective, "train", finished_at(9157.0))
    study.optimize(obj, n_trials=1)
    monkeypatch.setattr(objective, "train", finished_at(2.5))
    study.optimize(obj, n_trials=1)
    blown, fine = study.get_trials()
    assert blown.state == S.PRUNED and blown.user_attrs["status"] == "diverged"
    assert fine.state == S.COMPLETE and fine.value == 2.5
    assert [t.number for t in study.get_trials(states=(S.COMPLETE,))] == [fine.number]


def test_torn_journal_is_repaired_with_a_backup(tmp_path: Path) -> None:
    journal = tmp_path / "journal.log"
    study = optuna.create_study(storage=open_storage(str(journal), tmp_path), study_name="j")
    for x in (0.1, 0.2):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        study.tell(trial, x)
    whole = journal.read_bytes()
    with open(journal, "ab") as fh:  # what a kill or a full disk leaves: half of the next record
        fh.write(b'{"op_code":5,"worker_id":"w","trial_id":2,"sta')
    with pytest.warns(UserWarning, match="dropped a torn last record"):
        storage = open_storage(str(journal), tmp_path)
    assert journal.read_bytes() == whole
    (backup,) = tmp_path.glob("journal.log.torn-*")
    assert backup.read_bytes().startswith(whole) and len(backup.read_bytes()) > len(whole)
    study = optuna.load_study(study_name="j", storage=storage)
    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 0.3)  # writes again
    again = optuna.load_study(study_name="j", storage=open_storage(str(journal), tmp_path))
    assert [t.value for t in again.get_trials()] == [0.1, 0.2, 0.3]
    # Damage with whole records after it is not a torn tail: refused, nothing changed.
    lines = journal.read_bytes().split(b"\n")
    lines[1] = lines[1][:10]
    journal.write_bytes(b"\n".join(lines))
    before = journal.read_bytes()
    with pytest.raises(
        SteplabError,
        match=r"damaged at line 2, with records after it; .*keep the 1 line before it \(head -n 1 journal.log",
    ):
        open_storage(str(journal), tmp_path)
    assert journal.read_bytes() == before


def test_missing_database_driver_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for module in ("MySQLdb", "pymysql"):
        monkeypatch.setitem(sys.modules, module, None)  # not installed, whatever this machine has
    with pytest.raises(ConfigError, match=r"mysql:// needs a MySQL driver: pip install 'steplab\[mysql\]'"):
        open_storage("mysql://u@127.0.0.1/db", tmp_path)
    with pytest.raises(
        ConfigError, match=r"mysql\+mysqldb:// needs the MySQLdb driver: pip install mysqlclient"
    ):
        open_storage("mysql+mysqldb://u@127.0.0.1/db", tmp_path)
    with pytest.raises(ConfigError, match="not a database SQLAlchemy knows"):
        open_storage("nosuchdb://u@h/db", tmp_path)
    (tmp_path / "space.toml").write_text(SPACE)
    argv = ["tune", "--preset", "tiny", "--space", str(tmp_path / "space.toml"), "--dir", str(tmp_path / "s")]
    assert main([*argv, "--storage", "mysql://u@127.0.0.1/db"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "steplab[mysql]" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()  # nothing written for a study that never opened
