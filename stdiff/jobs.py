"""Background jobs: ``stdiff`` command-line steps started as detached processes and found again later.

Each job lives in its own folder under a jobs root (:func:`stdiff.settings.runs_dir`)::

    ROOT/jobs/JOB_ID/job.json     command, pid, started, status (the status the wrapper last wrote)
    ROOT/jobs/JOB_ID/log.txt      stdout and stderr of the command, tqdm progress bars included
    ROOT/jobs/JOB_ID/exit_code    the command's exit code, written by the wrapper when the command ends
    ROOT/jobs/JOB_ID/cancelled    present when :func:`cancel_job` stopped the job

A job is started as ``python -m stdiff.jobs JOB_DIR``: that wrapper runs the command, waits for it and writes
``exit_code``. The wrapper leads a new process group, so :func:`cancel_job` stops the wrapper and the command
together. Training steps save checkpoints atomically, so a cancelled ``train-clip`` or ``train-ldm`` resumes
from its last checkpoint when the same command is started again (:func:`restart_job`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Sequence

from .checkpoint_io import write_json_atomically

logger = logging.getLogger(__name__)

JOBS_DIR = "jobs"
JOB_FILE = "job.json"
LOG_FILE = "log.txt"
EXIT_CODE_FILE = "exit_code"
CANCELLED_FILE = "cancelled"
KILL_WAIT_SECONDS = 5.0  # how long cancel_job waits for a job to exit after SIGKILL

# The subcommands of ``stdiff.cli`` a job may run.
STEPS = ("prepare", "train-clip", "train-ldm", "reconstruct", "evaluate", "export", "reconstruct-sample")
STATUSES = ("running", "finished", "failed", "cancelled")

# tqdm writes "desc:  42%|####      | 42/100 [...]"; the percentage is the number before "%|".
_TQDM_PERCENT = re.compile(r"(\d{1,3})%\|")
_JOB_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Job:
    """A background job as stored in ``job.json``."""

    job_id: str
    folder: Path  # ROOT/jobs/JOB_ID
    command: tuple[str, ...]  # full command line, starting with the Python executable
    step: str  # the stdiff subcommand, one of STEPS
    pid: int | None  # process id of the wrapper, which leads the job's process group
    started: str  # ISO 8601 local time
    label: str | None = None  # short text in the job id, for example the run folder name

    @property
    def log_path(self) -> Path:
        return self.folder / LOG_FILE

    @property
    def cli_args(self) -> tuple[str, ...]:
        """The arguments after ``-m stdiff.cli``."""
        return self.command[3:]


def jobs_folder(root: str | Path) -> Path:
    """Return the folder containing one subfolder per job under the jobs root ``root``."""
    return Path(root) / JOBS_DIR


def _new_job_id(step: str, label: str | None) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    parts = [stamp, step] + ([label] if label else []) + [os.urandom(2).hex()]
    return _JOB_ID_UNSAFE.sub("_", "-".join(parts))


def start_job(root: str | Path, *, args: Sequence[str], label: str | None = None,
              env: dict[str, str] | None = None) -> Job:
    """Start ``python -m stdiff.cli ARGS`` as a detached background job.

    Parameters
    ----------
    root
        Jobs root; the job folder is created under ``root/jobs``.
    args
        Arguments of ``stdiff.cli``, starting with the subcommand, for example
        ``["train-clip", "runs/my-run", "--steps", "400"]``.
    label
        Short text added to the job id, for example the run folder name.
    env
        Environment of the job; defaults to this process's environment.

    Returns
    -------
    Job
        The started job. Its process keeps running when the calling process exits.

    Raises
    ------
    ValueError
        When ``args`` is empty or its first element is not one of :data:`STEPS`.
    """
    args = [str(arg) for arg in args]
    if not args or args[0] not in STEPS:
        found = args[0] if args else "nothing"
        raise ValueError(f"A job must start with one of the stdiff steps {STEPS}, got {found!r}.")
    job_id = _new_job_id(args[0], label)
    folder = jobs_folder(root) / job_id
    folder.mkdir(parents=True, exist_ok=False)
    command = [sys.executable, "-m", "stdiff.cli", *args]
    started = datetime.now().isoformat(timespec="seconds")
    payload = {"job_id": job_id, "command": command, "step": args[0], "label": label, "pid": None,
               "started": started, "status": "running"}
    write_json_atomically(folder / JOB_FILE, payload)

    job_env = dict(os.environ if env is None else env)
    job_env["PYTHONUNBUFFERED"] = "1"  # so log.txt follows the job as it runs
    with open(os.devnull, "rb") as stdin:
        process = subprocess.Popen(
            [sys.executable, "-m", "stdiff.jobs", str(folder)],
            stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=job_env, cwd=str(folder), start_new_session=True, close_fds=True,
        )
    # Reap the wrapper when it exits, so a long-lived caller (the app server) keeps no zombie processes.
    threading.Thread(target=process.wait, name=f"reap-{job_id}", daemon=True).start()
    payload["pid"] = process.pid
    write_json_atomically(folder / JOB_FILE, payload)
    logger.info("Started job %s (pid %d): %s", job_id, process.pid, " ".join(command))
    return load_job(folder)


def restart_job(root: str | Path, job: Job, *, env: dict[str, str] | None = None) -> Job:
    """Start the command of ``job`` again as a new job; training steps resume from their last checkpoint."""
    return start_job(root, args=job.cli_args, label=job.label, env=env)


def load_job(folder: str | Path) -> Job:
    """Read a job from its folder.

    Raises
    ------
    FileNotFoundError
        When ``folder/job.json`` does not exist.
    ValueError
        When ``job.json`` is not valid JSON or lacks the command.
    """
    folder = Path(folder)
    path = folder / JOB_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No {JOB_FILE} in {folder}: not a job folder.")
    try:
        payload = json.loads(path.read_text())
        command = tuple(payload["command"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is invalid ({error}); delete the folder {folder}.") from error
    return Job(
        job_id=payload.get("job_id", folder.name),
        folder=folder,
        command=command,
        step=payload.get("step", command[3] if len(command) > 3 else ""),
        pid=payload.get("pid"),
        started=payload.get("started", ""),
        label=payload.get("label"),
    )


def list_jobs(root: str | Path) -> list[Job]:
    """Return the jobs under ``root/jobs``, newest first. Unreadable job folders are logged and left out."""
    folder = jobs_folder(root)
    if not folder.is_dir():
        return []
    jobs = []
    for job_dir in folder.iterdir():
        if not (job_dir / JOB_FILE).is_file():
            continue
        try:
            jobs.append(load_job(job_dir))
        except ValueError as error:
            logger.warning("Skipping job folder %s: %s", job_dir, error)
    return sorted(jobs, key=lambda job: (job.started, job.job_id), reverse=True)


def _process_alive(pid: int | None) -> bool:
    """Return True when ``pid`` is a running process that leads its own process group, as a job wrapper does."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the process exists but belongs to another user
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.is_file():
        try:
            # Fields after the command name (which is in brackets): state, ppid, pgrp, ...
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            return False
        if fields[0] in ("Z", "X"):  # exited, not yet reaped by its parent
            return False
        # NOTE: after a reboot, an unrelated process that got the same pid and leads its own process group is
        # taken for the job. The exit_code file, when present, decides the status first.
        return int(fields[2]) == pid
    return True


def read_exit_code(job: Job) -> int | None:
    """Return the exit code the wrapper wrote, or None while the job runs or when the wrapper was killed."""
    path = job.folder / EXIT_CODE_FILE
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def job_status(job: Job) -> str:
    """Return "running", "finished", "failed" or "cancelled".

    A job is running while its wrapper process is alive. After that, it is "cancelled" when
    :func:`cancel_job` stopped it, "finished" when the command exited with 0, and "failed" otherwise,
    including when the wrapper itself was killed before it could record the exit code.
    """
    exit_code = read_exit_code(job)
    if exit_code is None and _process_alive(job.pid):
        return "running"
    if (job.folder / CANCELLED_FILE).exists():
        return "cancelled"
    if exit_code == 0:
        return "finished"
    return "failed"


def cancel_job(job: Job, *, timeout: float = 10.0) -> str:
    """Stop a running job: SIGTERM to its process group, then SIGKILL after ``timeout`` seconds.

    Returns
    -------
    str
        The job status afterwards: "cancelled", or the final status when the job had already ended.
    """
    if job_status(job) != "running":
        return job_status(job)
    (job.folder / CANCELLED_FILE).write_text(datetime.now().isoformat(timespec="seconds") + "\n")
    logger.info("Cancelling job %s (process group %d)", job.job_id, job.pid)
    try:
        os.killpg(job.pid, signal.SIGTERM)
    except ProcessLookupError:
        return job_status(job)
    # Waiting for the wrapper to exit, not only for the exit code, means job.json contains the final status too.
    deadline = time.monotonic() + timeout
    while _process_alive(job.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _process_alive(job.pid):
        logger.warning("Job %s did not stop within %.0f s of SIGTERM; sending SIGKILL", job.job_id, timeout)
        try:
            os.killpg(job.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        # SIGKILL cannot be ignored, but the process needs a moment to exit; until then the job reads as running.
        deadline = time.monotonic() + KILL_WAIT_SECONDS
        while _process_alive(job.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    _record_end(job)
    return job_status(job)


def _write_end(folder: Path, status: str, **fields) -> None:
    """Store a job's final ``status``, the end time and ``fields`` in its job.json."""
    path = folder / JOB_FILE
    payload = json.loads(path.read_text())
    payload.update(fields, status=status, ended=datetime.now().isoformat(timespec="seconds"))
    write_json_atomically(path, payload)


def _record_end(job: Job) -> None:
    """Write the final status into job.json when the wrapper was stopped before it could."""
    status = job_status(job)
    try:
        if status == "running" or json.loads((job.folder / JOB_FILE).read_text()).get("status") != "running":
            return
        _write_end(job.folder, status)
    except (OSError, json.JSONDecodeError) as error:
        logger.warning("Job %s ended as %s, but its %s could not be updated: %s", job.job_id, status, JOB_FILE, error)


def wait_for_job(job: Job, statuses: set[str], *, timeout: float, poll: float = 0.5) -> str:
    """Poll :func:`job_status` until it is one of ``statuses`` or ``timeout`` seconds pass; return the last status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = job_status(job)
        if status in statuses:
            return status
        time.sleep(poll)
    return job_status(job)


def read_progress(log: str | Path) -> float | None:
    """Return the last tqdm percentage in the log file as a fraction in [0, 1], or None when there is none."""
    text = tail_text(log, max_bytes=16_384)
    matches = _TQDM_PERCENT.findall(text)
    if not matches:
        return None
    return min(int(matches[-1]), 100) / 100.0


def tail_text(log: str | Path, *, max_bytes: int = 65_536) -> str:
    """Return the last ``max_bytes`` bytes of a log file as text ("" when the file does not exist yet)."""
    path = Path(log)
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            return handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def read_log_tail(log: str | Path, *, lines: int = 20) -> str:
    """Return the last ``lines`` lines of a log, with each tqdm bar shown at its latest state.

    tqdm redraws a bar in place with carriage returns; only the text after the last one on a line is kept.
    """
    text = tail_text(log)
    latest = [line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n")]
    latest = [line for line in latest if line.strip()]
    return "\n".join(latest[-lines:])


def _run_wrapper(folder: Path) -> int:
    """Run the command of the job in ``folder``, wait for it and write its exit code; return that code."""
    job = load_job(folder)

    def on_sigterm(signum, frame) -> None:
        # The command is in the same process group and receives the signal too; the wrapper stays to record
        # its exit code. A handler, unlike SIG_IGN, is not inherited by the command.
        logger.info("Job %s received SIGTERM", job.job_id)

    signal.signal(signal.SIGTERM, on_sigterm)
    with open(job.log_path, "ab") as log:
        try:
            process = subprocess.Popen(list(job.command), stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT)
        except OSError as error:
            log.write(f"Could not start {job.command[0]}: {error}\n".encode())
            exit_code = 127
        else:
            if (folder / CANCELLED_FILE).exists():
                # The cancel came between the wrapper's start and this command's, so the SIGTERM missed it.
                process.terminate()
            exit_code = process.wait()
    (folder / f".{EXIT_CODE_FILE}.tmp").write_text(f"{exit_code}\n")
    os.replace(folder / f".{EXIT_CODE_FILE}.tmp", folder / EXIT_CODE_FILE)

    _write_end(folder, job_status(job), pid=os.getpid(), exit_code=exit_code)
    return exit_code


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.stderr.write("usage: python -m stdiff.jobs JOB_DIR\n")
        sys.exit(2)
    sys.exit(0 if _run_wrapper(Path(sys.argv[1])) == 0 else 1)
