"""Background jobs: real ``stdiff`` commands started, listed, followed and cancelled through stdiff.jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stdiff import jobs

TRAIN_SAMPLE = "her2st-C2"


def live_group_members(group: int) -> list[int]:
    """Return the ids of processes in process group ``group`` that have not exited (zombies excluded)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


@pytest.fixture
def job_env(monkeypatch, shared_data_dir, shared_weights_dir):
    monkeypatch.setenv("STDIFF_DATA_DIR", str(shared_data_dir))
    monkeypatch.setenv("STDIFF_WEIGHTS_DIR", str(shared_weights_dir))
    monkeypatch.setenv("STDIFF_OFFLINE", "1")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, shared_data_dir) -> tuple[Path, jobs.Job]:
    """A jobs root with a finished ``prepare`` job of one small sample at 32 px."""
    if not (shared_data_dir / TRAIN_SAMPLE).is_dir():
        pytest.skip(f"sample {TRAIN_SAMPLE} not found in {shared_data_dir}")
    root = tmp_path_factory.mktemp("jobs-root")
    env = dict(os.environ, STDIFF_DATA_DIR=str(shared_data_dir), STDIFF_OFFLINE="1")
    job = jobs.start_job(root, args=["prepare", "--run-dir", str(root / "tiny"), "--train", TRAIN_SAMPLE,
                                     "--resolution", "32", "--n-genes", "16"], label="tiny", env=env)
    jobs.wait_for_job(job, {"finished", "failed", "cancelled"}, timeout=180)
    return root, job


def test_prepare_job_finishes(prepared):
    root, job = prepared
    assert jobs.job_status(job) == "finished", jobs.tail_text(job.log_path)
    assert jobs.read_exit_code(job) == 0
    assert (root / "tiny" / "prepare.json").is_file()
    stored = json.loads((job.folder / jobs.JOB_FILE).read_text())
    assert stored["status"] == "finished"
    assert stored["command"][1:4] == ["-m", "stdiff.cli", "prepare"]
    assert "spots kept" in jobs.tail_text(job.log_path)


def test_list_jobs_finds_job_from_disk(prepared):
    root, job = prepared
    listed = jobs.list_jobs(root)
    assert [found.job_id for found in listed] == [job.job_id]
    assert listed[0] == jobs.load_job(job.folder)
    assert listed[0].label == "tiny"
    assert listed[0].cli_args[0] == "prepare"


def test_prepare_log_has_tqdm_progress(prepared):
    _, job = prepared
    assert jobs.read_progress(job.log_path) == 1.0


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process groups from /proc (Linux)")
def test_cancel_running_training(prepared, job_env):
    root, _ = prepared
    job = jobs.start_job(root, args=["train-clip", str(root / "tiny"), "--steps", "1000000", "--batch-size", "32"],
                         label="tiny")
    assert jobs.job_status(job) == "running"
    time.sleep(1.0)  # let the wrapper start the command, so the cancel reaches both processes
    assert jobs.cancel_job(job) == "cancelled"
    assert jobs.job_status(job) == "cancelled"
    assert live_group_members(job.pid) == []
    stored = json.loads((job.folder / jobs.JOB_FILE).read_text())
    assert stored["status"] == "cancelled"


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads process groups from /proc (Linux)")
def test_cancel_right_after_start(prepared, job_env):
    root, _ = prepared
    job = jobs.start_job(root, args=["train-clip", str(root / "tiny"), "--steps", "1000000"], label="tiny")

    assert jobs.cancel_job(job) == "cancelled"

    assert live_group_members(job.pid) == []
    stored = json.loads((job.folder / jobs.JOB_FILE).read_text())
    assert stored["status"] == "cancelled"


def test_failed_job_and_restart(tmp_path, job_env):
    job = jobs.start_job(tmp_path, args=["evaluate", str(tmp_path / "no-such-run")], label="missing")
    assert jobs.wait_for_job(job, {"finished", "failed", "cancelled"}, timeout=120) == "failed"
    assert jobs.read_exit_code(job) == 2
    assert "no-such-run" in jobs.tail_text(job.log_path)
    assert jobs.cancel_job(job) == "failed"

    again = jobs.restart_job(tmp_path, job)
    assert again.job_id != job.job_id
    assert again.cli_args == job.cli_args
    assert again.label == "missing"
    assert jobs.wait_for_job(again, {"finished", "failed", "cancelled"}, timeout=120) == "failed"
    assert len(jobs.list_jobs(tmp_path)) == 2


def test_start_job_rejects_unknown_step(tmp_path):
    with pytest.raises(ValueError, match="train-everything"):
        jobs.start_job(tmp_path, args=["train-everything"])
    with pytest.raises(ValueError, match="nothing"):
        jobs.start_job(tmp_path, args=[])
    assert jobs.list_jobs(tmp_path) == []


def write_job(folder: Path, pid: int | None) -> jobs.Job:
    folder.mkdir(parents=True)
    command = [sys.executable, "-m", "stdiff.cli", "evaluate", "run"]
    (folder / jobs.JOB_FILE).write_text(json.dumps({"command": command, "pid": pid, "started": "2026-01-01T00:00:00"}))
    return jobs.load_job(folder)


def test_status_when_wrapper_was_killed(tmp_path):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    job = write_job(tmp_path / "jobs" / "killed", finished.pid)
    assert jobs.job_status(job) == "failed"
    (job.folder / jobs.CANCELLED_FILE).write_text("")
    assert jobs.job_status(job) == "cancelled"


def test_status_from_exit_code_file(tmp_path):
    job = write_job(tmp_path / "jobs" / "done", None)
    (job.folder / jobs.EXIT_CODE_FILE).write_text("0\n")
    assert jobs.job_status(job) == "finished"
    (job.folder / jobs.EXIT_CODE_FILE).write_text("1\n")
    assert jobs.job_status(job) == "failed"


def test_list_jobs_skips_broken_folder(tmp_path):
    good = write_job(tmp_path / "jobs" / "good", None)
    broken = tmp_path / "jobs" / "broken"
    broken.mkdir()
    (broken / jobs.JOB_FILE).write_text("{not json")
    assert [job.job_id for job in jobs.list_jobs(tmp_path)] == [good.job_id]
    assert jobs.list_jobs(tmp_path / "absent") == []


def test_read_progress_takes_last_tqdm_update(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text(
        "12:00:00 INFO stdiff: starting\n"
        "backbone features (8 views): 100%|##########| 8/8 [00:26<00:00]\n"
        "train-clip:   0%|          | 0/400 [00:00<?, ?it/s]\r"
        "train-clip:  37%|###7      | 148/400 [00:52<01:29, 2.8it/s, loss=3.1]\r"
        "train-clip:  42%|####2     | 168/400 [00:59<01:22, 2.8it/s, loss=3.0]"
    )
    assert jobs.read_progress(log) == pytest.approx(0.42)
    tail = jobs.read_log_tail(log, lines=2).splitlines()
    assert tail[0].startswith("backbone features")
    assert tail[1].startswith("train-clip:  42%")


def test_read_progress_without_bar(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("12:00:00 INFO stdiff: 50 spots, 100 genes\n")
    assert jobs.read_progress(log) is None
    assert jobs.read_progress(tmp_path / "absent.txt") is None
    assert jobs.read_log_tail(tmp_path / "absent.txt") == ""
