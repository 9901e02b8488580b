"""Train page: start ``stdiff`` steps as background jobs and follow their progress.

Jobs run as separate processes (see :mod:`stdiff.jobs`), so they go on when the browser tab is closed, and
the page finds them again on disk after a reload.
"""

import re
from pathlib import Path

import streamlit as st
import torch

from stdiff import jobs, settings
from stdiff.reconstruct import ReconstructConfig
from stdiff.training.clip import ClipTrainConfig
from stdiff.training.ldm import LdmTrainConfig
from stdiff_app.loaders import list_sample_folders
from stdiff_app.sidebar import choose_sample_and_model

PREFIX = "train_"
PAGE_STEPS = ("prepare", "train-clip", "train-ldm", "reconstruct", "evaluate", "export")
STEP_HELP = {
    "prepare": "Read samples, cut patches at spots and choose the model genes on the training samples.",
    "train-clip": "Train the contrastive model of patches against expression. Resumes from its last checkpoint.",
    "train-ldm": "Train the latent diffusion model (needs train-clip). Resumes from its last checkpoint.",
    "reconstruct": "Generate patches for every spot of the held-out samples and predict expression from them.",
    "evaluate": "Score the reconstructed patches against the real ones, beside the baselines.",
    "export": "Copy the trained run into a model folder that the app loads.",
}
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SHOWN_JOBS = 20
LOG_LINES = 12
STATUS_ICONS = {"running": ":material/hourglass_top:", "finished": ":material/check_circle:",
                "failed": ":material/error:", "cancelled": ":material/cancel:"}


def prepared_runs(root: Path) -> list[str]:
    """Names of the run folders under ``root`` that ``stdiff prepare`` has written."""
    if not root.is_dir():
        return []
    return sorted(path.name for path in root.iterdir() if (path / "prepare.json").is_file())


def running_job_for(root: Path, run_name: str) -> jobs.Job | None:
    for job in jobs.list_jobs(root):
        if job.label == run_name and jobs.job_status(job) == "running":
            return job
    return None


def step_arguments(step: str, root: Path, run_name: str, samples: list[str]) -> list[str] | None:
    """Draw the options of ``step`` and return its command-line arguments, or None after showing an error."""
    run_dir = root / run_name
    if step == "prepare":
        train = st.multiselect("Training samples", samples, key=f"{PREFIX}prepare_train",
                               help="Patches and expression of these samples train the model and pick its genes.")
        held_out = st.multiselect("Held-out samples", [s for s in samples if s not in train],
                                  key=f"{PREFIX}prepare_eval", help="Prepared the same way, for evaluation only.")
        first, second = st.columns(2)
        patch_size = first.number_input("Patch size (full-resolution pixels)", 8, 4096, 256, key=f"{PREFIX}patch_size")
        resolution = second.selectbox("Resolution (model pixels)", [32, 64, 128, 256], index=2,
                                      key=f"{PREFIX}resolution", help="Patch side after resizing.")
        n_genes = first.number_input("Genes", 1, 5000, 50, key=f"{PREFIX}n_genes",
                                     help="The most expressed genes over the training samples.")
        min_counts = second.number_input("Minimum UMIs per spot", 0, 10**7, 100, key=f"{PREFIX}min_counts")
        if not train:
            st.error("Choose at least one training sample.")
            return None
        args = ["prepare", "--run-dir", str(run_dir), "--data-dir", str(data_dir), "--train", *train]
        if held_out:
            args += ["--eval", *held_out]
        return args + ["--patch-size", str(patch_size), "--resolution", str(resolution), "--n-genes", str(n_genes),
                       "--min-counts", str(min_counts)]

    if step in ("train-clip", "train-ldm"):
        defaults = ClipTrainConfig() if step == "train-clip" else LdmTrainConfig()
        first, second, third = st.columns(3)
        steps = first.number_input("Training steps", 1, 10**7, defaults.steps, key=f"{PREFIX}{step}_steps",
                                   help="Total steps; a resumed run continues up to this number.")
        batch_size = second.number_input("Batch size", 1, 4096, defaults.batch_size, key=f"{PREFIX}{step}_batch")
        every = third.number_input("Checkpoint every (steps)", 1, 10**7, defaults.checkpoint_every,
                                   key=f"{PREFIX}{step}_every")
        return [step, str(run_dir), "--steps", str(steps), "--batch-size", str(batch_size),
                "--checkpoint-every", str(every)]

    if step == "reconstruct":
        first, second = st.columns(2)
        steps = first.number_input("Sampling steps (DDIM)", 1, 1000, ReconstructConfig.num_inference_steps,
                                   key=f"{PREFIX}reconstruct_steps")
        n_per_spot = second.number_input("Patches per spot", 1, 16, ReconstructConfig.n_per_spot,
                                         key=f"{PREFIX}reconstruct_n")
        return ["reconstruct", str(run_dir), "--num-inference-steps", str(steps), "--n-per-spot", str(n_per_spot)]

    if step == "evaluate":
        return ["evaluate", str(run_dir)]

    model_dir = st.text_input("Model folder", value=str(settings.PROJECT_DIR / "models" / run_name),
                              key=f"{PREFIX}export_model_dir",
                              help="Folder the trained model is copied into; open it in the sidebar's model folder.")
    if not model_dir.strip():
        st.error("Enter the model folder to export into.")
        return None
    return ["export", str(run_dir), model_dir.strip()]


def show_job(job: jobs.Job) -> None:
    status = jobs.job_status(job)
    run = job.label or "?"
    with st.container(border=True):
        st.markdown(f"{STATUS_ICONS[status]} **{job.step}** on `{run}` · {status} · started {job.started} · "
                    f"`{job.job_id}`")
        progress = jobs.read_progress(job.log_path)
        if status == "running" and progress is not None:
            st.progress(progress, text=f"{progress:.0%} of the current stage")
        exit_code = jobs.read_exit_code(job)
        if status == "failed" and exit_code is not None:
            st.caption(f"Exit code {exit_code}; the log below ends with the error.")
        tail = jobs.read_log_tail(job.log_path, lines=LOG_LINES)
        st.code(tail or "(no output yet)", language=None)
        if status == "running":
            if st.button("Cancel", key=f"{PREFIX}cancel_{job.job_id}"):
                jobs.cancel_job(job)
                st.rerun()
        elif status in ("cancelled", "failed"):
            label = "Resume" if job.step in ("train-clip", "train-ldm") else "Start again"
            if st.button(label, key=f"{PREFIX}restart_{job.job_id}",
                         help="Start the same command as a new job; training continues from its last checkpoint."):
                jobs.restart_job(root, job)
                st.rerun()


def show_jobs() -> None:
    listed = jobs.list_jobs(root)
    if not listed:
        st.info(f"No jobs yet in `{jobs.jobs_folder(root)}`.")
        return
    for job in listed[:SHOWN_JOBS]:
        show_job(job)
    if len(listed) > SHOWN_JOBS:
        st.caption(f"{len(listed) - SHOWN_JOBS} older jobs are not shown; their logs are in "
                   f"`{jobs.jobs_folder(root)}`.")


selection = choose_sample_and_model("Train")
st.title("Train")
if torch.cuda.is_available():
    st.caption(f"GPU in use: {torch.cuda.get_device_name(0)}.")
else:
    st.caption("No GPU found: jobs run on the CPU, so training takes long. Small step counts are fine for a trial.")

root = Path(st.text_input("Runs folder", value=str(settings.runs_dir()), key=f"{PREFIX}root",
                          help="Run folders are created here, and job logs go to its jobs/ subfolder "
                               "(STDIFF_RUNS_DIR).")).expanduser()
data_dir = Path(selection.sample_dir).parent
samples = [Path(folder).name for folder in list_sample_folders(str(data_dir))]

st.subheader("Start a step")
step = st.selectbox("Step", PAGE_STEPS, key=f"{PREFIX}step", help="The stdiff command to run.")
st.caption(STEP_HELP[step])
if step == "prepare":
    run_name = st.text_input("Run folder name", key=f"{PREFIX}run_name", placeholder="my-run",
                             help="A new folder under the runs folder; letters, digits, '-', '_' and '.'.").strip()
else:
    runs = prepared_runs(root)
    if not runs:
        st.info(f"No prepared runs in `{root}`: start with the prepare step.")
        run_name = ""
    else:
        run_name = st.selectbox("Run folder", runs, key=f"{PREFIX}run")

args = None
if run_name and not RUN_NAME.match(run_name):
    st.error(f"'{run_name}' is not a valid run folder name: use letters, digits, '-', '_' and '.', starting with "
             "a letter or digit.")
elif run_name:
    args = step_arguments(step, root, run_name, samples)

if not run_name and step == "prepare":
    st.caption("Enter a run folder name to choose samples and start.")
if st.button("Start", key=f"{PREFIX}start", type="primary", disabled=args is None):
    busy = running_job_for(root, run_name)
    if busy is not None:
        st.error(f"Job {busy.job_id} ({busy.step}) is still running on `{run_name}`; wait for it or cancel it first.")
    else:
        try:
            started = jobs.start_job(root, args=args, label=run_name)
        except (ValueError, OSError) as error:
            st.error(f"Could not start the job: {error}")
        else:
            st.success(f"Started {started.step} as job `{started.job_id}`.")

st.subheader("Jobs")
any_running = any(jobs.job_status(job) == "running" for job in jobs.list_jobs(root)[:SHOWN_JOBS])
st.fragment(show_jobs, run_every=2 if any_running else None)()
st.button("Refresh", key=f"{PREFIX}refresh", help="Read the job states and logs again.")
